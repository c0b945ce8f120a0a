//! The mock's Google Gemini: the Gemini API (`POST
//! /v1beta/models/{model}:generateContent`, `…:streamGenerateContent?alt=sse`,
//! authenticated by `x-goog-api-key: `[`API_KEY`]), Vertex AI (`POST
//! /v1/projects/{project}/locations/{location}/publishers/google/models/{model}:…`,
//! authenticated by `Authorization: Bearer <a token this mock issued and
//! that has not expired>`), and Google's OAuth token endpoint (`POST
//! /token`), with Google's fault shapes. A module of `mock_upstream.rs`;
//! the gateway's base URL for it is `http://{addr}`.
//!
//! The token endpoint takes the service-account flow's form
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
//! `assertion=<JWT>`) and **verifies the JWT**: an RS256 signature checked
//! with `ring` against the public half of the test-only key
//! (`mock/gemini_test_only_service_account.json`, [`service_account_json`]),
//! `iss` = that account, `aud` ending in `/token`, the cloud-platform
//! `scope`, `iat` within 5 minutes of the mock's clock and a lifetime of at
//! most an hour; anything else is 400 `invalid_grant`. It answers
//! `{"access_token", "expires_in", "token_type": "Bearer"}`; the lifetime,
//! a latency and failures are set on the [`GeminiMock`] handle
//! (`MockServer::gemini`), which counts fetches and expired uses.
//!
//! A request body must be a `GenerateContentRequest`: `contents` an array,
//! and no field Google does not know (400 `INVALID_ARGUMENT` "Unknown name",
//! as Google answers). The answer is `tok0 tok1 … tok{N-1}`; usage
//! `promptTokenCount` = body length / 4 (at least 1), `candidatesTokenCount`
//! = N. Streams (SSE, events separated by `\r\n\r\n` as Google's): one chunk
//! per token, the last with `finishReason` and the usage.
//!
//! Faults (header `x-mock-fault`):
//!
//! | fault | behaviour |
//! |---|---|
//! | `resource_exhausted` | 429 `RESOURCE_EXHAUSTED` with a `RetryInfo` of 7 s |
//! | `unavailable` | 503 `UNAVAILABLE` |
//! | `permission_denied` | 403 `PERMISSION_DENIED` |
//! | `not_found` | 404 `NOT_FOUND` (`models/{model} is not found …`) |
//! | `invalid_argument` | 400 `INVALID_ARGUMENT` about the request |
//! | `internal` | 500 `INTERNAL` |
//! | `thinking` | a thought part (`"thought": true`, with a `thoughtSignature`) before the text; `thoughtsTokenCount: 7` |
//! | `function_call:BYTES` | a `functionCall` (`mock_tool`) whose `args` is a JSON object of BYTES bytes, with a `thoughtSignature` |
//! | `cache` | `cachedContentTokenCount: 100` (included in `promptTokenCount`, as Google counts) |
//! | `safety` | `finishReason: "SAFETY"` with no content |
//! | `cut:N` | stream: N chunks, then the connection is aborted |
//! | `stream_error:N` | stream: N chunks, then an `{"error": …}` event (`INTERNAL`) |
//! | `stream_exhausted` | stream: an `{"error": …}` event (`RESOURCE_EXHAUSTED`) before any content |

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::{AppState, abort_pause, cut_error, record, sse_response};

/// The Gemini API key the mock accepts.
pub const API_KEY: &str = "AIzaM0ckG3m1n1K3yTh4tMustN3v3rL34k0123456";

/// The test-only service account key file (JSON) whose JWTs the token endpoint accepts.
pub fn service_account_json() -> &'static str {
    include_str!("gemini_test_only_service_account.json")
}

/// The service account's email.
pub const CLIENT_EMAIL: &str = "tollgate-test-only@tollgate-test-only.iam.gserviceaccount.com";

/// The scope the token endpoint requires.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How the token endpoint fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// 503 `{"error": "temporarily_unavailable"}`.
    Unavailable,
    /// 400 `invalid_grant`, as for a revoked key.
    InvalidGrant,
}

struct Shared {
    ttl_ms: AtomicU64,
    latency_ms: AtomicU64,
    fault: Mutex<Option<TokenFault>>,
    fetches: AtomicU64,
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
    refused: AtomicU64,
    expired: AtomicU64,
    issued: Mutex<HashMap<String, Instant>>,
    used: Mutex<std::collections::HashSet<String>>,
    next: AtomicU64,
}

/// The Gemini mock's handle: the token endpoint's settings and counters.
/// Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct GeminiMock(Arc<Shared>);

impl Default for GeminiMock {
    fn default() -> Self {
        GeminiMock(Arc::new(Shared {
            ttl_ms: AtomicU64::new(3_600_000),
            latency_ms: AtomicU64::new(0),
            fault: Mutex::new(None),
            fetches: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            issued: Mutex::new(HashMap::new()),
            used: Mutex::new(std::collections::HashSet::new()),
            next: AtomicU64::new(1),
        }))
    }
}

impl GeminiMock {
    /// Tokens issued from now on live this long (default 1 hour; Google's
    /// `expires_in` is whole seconds, so at least 1 s).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.0
            .ttl_ms
            .store(ttl.as_millis() as u64, Ordering::SeqCst);
    }

    /// The token endpoint waits this long before answering (default 0).
    pub fn set_token_latency(&self, d: Duration) {
        self.0
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The token endpoint fails this way from now on (`None`: it works).
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        *self.0.fault.lock().unwrap() = fault;
    }

    /// Calls to the token endpoint (failed ones included).
    pub fn token_fetches(&self) -> u64 {
        self.0.fetches.load(Ordering::SeqCst)
    }

    /// The most token requests the endpoint was answering at once (1 when
    /// the gateway never fetched two tokens concurrently).
    pub fn most_concurrent_fetches(&self) -> u64 {
        self.0.most_in_flight.load(Ordering::SeqCst)
    }

    /// JWTs the token endpoint refused (a bad signature, claim or form).
    pub fn refused_assertions(&self) -> u64 {
        self.0.refused.load(Ordering::SeqCst)
    }

    /// Vertex requests that came with an expired token.
    pub fn expired_token_uses(&self) -> u64 {
        self.0.expired.load(Ordering::SeqCst)
    }

    /// The tokens Vertex requests were accepted with.
    pub fn used_tokens(&self) -> usize {
        self.0.used.lock().unwrap().len()
    }

    /// Revokes every token issued so far: Vertex refuses them from now on
    /// (401 `UNAUTHENTICATED`), as after a key rotation.
    pub fn revoke_tokens(&self) {
        let mut issued = self.0.issued.lock().unwrap();
        for exp in issued.values_mut() {
            *exp = Instant::now();
        }
    }

    /// Every token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.0.issued.lock().unwrap().keys().cloned().collect()
    }
}

fn google_error(status: u16, code: &str, message: &str) -> Response {
    google_error_with(status, code, message, None)
}

fn google_error_with(status: u16, code: &str, message: &str, details: Option<Value>) -> Response {
    let mut e = json!({"error": {"code": status, "message": message, "status": code}});
    if let Some(d) = details {
        e["error"]["details"] = d;
    }
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &e,
    )
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut resp = Response::new(Body::from(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Status(u16, &'static str, &'static str),
    NotFound,
    Thinking,
    FunctionCall(u64),
    Cache,
    Safety,
    Cut(u64),
    StreamError(u64),
    StreamExhausted,
}

fn parse_fault(s: &str) -> Option<Fault> {
    let (name, arg) = s.split_once(':').unwrap_or((s, ""));
    let n = || arg.parse::<u64>().ok();
    Some(match name {
        "resource_exhausted" => Fault::Status(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        "unavailable" => Fault::Status(
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        "permission_denied" => Fault::Status(
            403,
            "PERMISSION_DENIED",
            "Permission denied on resource project tollgate-test-only.",
        ),
        "invalid_argument" => Fault::Status(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
        ),
        "internal" => Fault::Status(500, "INTERNAL", "An internal error has occurred."),
        "not_found" => Fault::NotFound,
        "thinking" => Fault::Thinking,
        "function_call" => Fault::FunctionCall(super::parse_size(arg)?),
        "cache" => Fault::Cache,
        "safety" => Fault::Safety,
        "cut" => Fault::Cut(n()?),
        "stream_error" => Fault::StreamError(n()?),
        "stream_exhausted" => Fault::StreamExhausted,
        _ => return None,
    })
}

/// The fields of a `GenerateContentRequest`.
const REQUEST_FIELDS: [&str; 8] = [
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
    "labels",
];

/// `POST /v1beta/models/{model}:{method}` (the Gemini API).
pub(super) async fn gemini_api(
    st: State<AppState>,
    Path(call): Path<String>,
    req: Request,
) -> Response {
    handle(st, call, req, false).await
}

/// `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:{method}` (Vertex AI).
pub(super) async fn vertex(
    st: State<AppState>,
    Path((_, _, call)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    handle(st, call, req, true).await
}

async fn handle(State(st): State<AppState>, call: String, req: Request, vertex: bool) -> Response {
    let query = req.uri().query().unwrap_or("").to_owned();
    let (parts, body) = match record(&st, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    if parts.method != Method::POST {
        return google_error(405, "INVALID_ARGUMENT", "Method not allowed.");
    }
    if vertex {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = token.and_then(|t| st.gemini.0.issued.lock().unwrap().get(t).copied());
        match valid {
            Some(exp) if exp > Instant::now() => {
                let token = token.unwrap_or_default().to_owned();
                st.gemini.0.used.lock().unwrap().insert(token);
            }
            Some(_) => {
                st.gemini.0.expired.fetch_add(1, Ordering::SeqCst);
                return google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                );
            }
            None => {
                return google_error(
                    401,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token.",
                );
            }
        }
    } else {
        match parts.headers.get("x-goog-api-key") {
            Some(k) if k == API_KEY => {}
            Some(_) => {
                return google_error_with(
                    400,
                    "INVALID_ARGUMENT",
                    "API key not valid. Please pass a valid API key.",
                    Some(json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID", "domain": "googleapis.com"}])),
                );
            }
            None => {
                return google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers. Please use API Key or other form of API consumer identity to call this API.",
                );
            }
        }
    }
    let Some((model, method)) = call.split_once(':') else {
        return google_error(404, "NOT_FOUND", "Requested entity was not found.");
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" if query.split('&').any(|q| q == "alt=sse") => true,
        "streamGenerateContent" => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "the mock answers streams as SSE only (alt=sse)",
            );
        }
        _ => return google_error(404, "NOT_FOUND", "Requested entity was not found."),
    };
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."),
    };
    if let Some(k) = json
        .as_object()
        .and_then(|m| m.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())))
    {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            &format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot find field."),
        );
    }
    if !json.get("contents").is_some_and(Value::is_array) {
        return google_error(
            400,
            "INVALID_ARGUMENT",
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    let raw_fault = parts
        .headers
        .get("x-mock-fault")
        .and_then(|v| v.to_str().ok());
    let fault = match raw_fault.map(parse_fault) {
        None => None,
        Some(Some(f)) => Some(f),
        Some(None) => {
            return google_error(
                400,
                "INVALID_ARGUMENT",
                &format!("unknown mock fault `{}`", raw_fault.unwrap_or("")),
            );
        }
    };
    match fault {
        Some(Fault::Status(429, code, message)) => {
            return google_error_with(
                429,
                code,
                message,
                Some(
                    json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]),
                ),
            );
        }
        Some(Fault::Status(status, code, message)) => return google_error(status, code, message),
        Some(Fault::NotFound) => {
            return google_error(
                404,
                "NOT_FOUND",
                &format!(
                    "models/{model} is not found for API version v1beta, or is not supported for generateContent."
                ),
            );
        }
        _ => {}
    }
    let cached = if fault == Some(Fault::Cache) { 100 } else { 0 };
    let prompt = (body.len() as u64 / 4).max(1) + cached;
    let thoughts = if fault == Some(Fault::Thinking) { 7 } else { 0 };
    let output = if matches!(fault, Some(Fault::Safety)) {
        0
    } else {
        st.cfg.tokens as u64
    };
    let mut usage = json!({"promptTokenCount": prompt, "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts});
    if cached > 0 {
        usage["cachedContentTokenCount"] = json!(cached);
    }
    if thoughts > 0 {
        usage["thoughtsTokenCount"] = json!(thoughts);
    }
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let chunk = |parts: Value, finish: Option<&str>, usage: &Value| {
        let mut c = json!({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "usageMetadata": usage, "modelVersion": model, "responseId": format!("mock-{id}")});
        if let Some(f) = finish {
            c["candidates"][0]["finishReason"] = f.into();
        }
        c
    };
    let thought = json!({"text": "Let me think.", "thought": true, "thoughtSignature": "c2lnLW1vY2stdGhvdWdodA=="});
    let call_part = |bytes: u64| {
        json!({"functionCall": {"name": "mock_tool",
            "args": {"data": "x".repeat(bytes.saturating_sub(11) as usize)}},
            "thoughtSignature": "c2lnLW1vY2stY2FsbA=="})
    };
    if !stream {
        let answer = match fault {
            Some(Fault::Safety) => {
                json!({"candidates": [{"finishReason": "SAFETY", "index": 0,
                    "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]}],
                    "usageMetadata": usage, "modelVersion": model, "responseId": format!("mock-{id}")})
            }
            Some(Fault::FunctionCall(bytes)) => {
                chunk(json!([call_part(bytes)]), Some("STOP"), &usage)
            }
            Some(Fault::Thinking) => {
                chunk(json!([thought, {"text": st.content}]), Some("STOP"), &usage)
            }
            _ => chunk(json!([{"text": st.content}]), Some("STOP"), &usage),
        };
        return json_response(StatusCode::OK, &answer);
    }
    let sse = |v: &Value| Bytes::from(format!("data: {v}\r\n\r\n"));
    let first_usage = json!({"promptTokenCount": prompt, "totalTokenCount": prompt});
    let mut events: Vec<Bytes> = Vec::new();
    let mut tail_cut = false;
    match fault {
        Some(Fault::StreamExhausted) => {
            events.push(sse(&json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}})));
        }
        Some(Fault::Safety) => {
            events.push(sse(
                &json!({"candidates": [{"finishReason": "SAFETY", "index": 0}],
                "usageMetadata": usage, "modelVersion": model, "responseId": format!("mock-{id}")}),
            ));
        }
        Some(Fault::FunctionCall(bytes)) => {
            events.push(sse(&chunk(json!([call_part(bytes)]), None, &first_usage)));
            events.push(sse(&chunk(json!([{"text": ""}]), Some("STOP"), &usage)));
        }
        _ => {
            if fault == Some(Fault::Thinking) {
                events.push(sse(&chunk(
                    json!([{"text": "Let me", "thought": true}]),
                    None,
                    &first_usage,
                )));
                events.push(sse(&chunk(json!([{"text": " think.", "thought": true, "thoughtSignature": "c2lnLW1vY2stdGhvdWdodA=="}]), None, &first_usage)));
            }
            let limit = match fault {
                Some(Fault::Cut(n) | Fault::StreamError(n)) => n as usize,
                _ => usize::MAX,
            };
            for (i, t) in st.content.split(' ').enumerate().take(limit) {
                let t = if i == 0 {
                    t.to_owned()
                } else {
                    format!(" {t}")
                };
                events.push(sse(&chunk(json!([{ "text": t }]), None, &first_usage)));
            }
            match fault {
                Some(Fault::Cut(_)) => tail_cut = true,
                Some(Fault::StreamError(_)) => events.push(sse(&json!({"error": {"code": 500,
                    "message": "An internal error has occurred.", "status": "INTERNAL"}}))),
                _ => events.push(sse(&chunk(json!([{"text": ""}]), Some("STOP"), &usage))),
            }
        }
    }
    let shutdown = st.shutdown.clone();
    let body = stream::iter(events.into_iter().map(Ok::<_, std::io::Error>));
    let body = if tail_cut {
        body.chain(stream::once(async move {
            abort_pause(false, shutdown).await;
            Err(cut_error())
        }))
        .boxed()
    } else {
        body.boxed()
    };
    sse_response(Body::from_stream(body))
}

/// `POST /token`: Google's OAuth 2.0 token endpoint for the service-account flow.
pub(super) async fn token(State(st): State<AppState>, req: Request) -> Response {
    let (parts, body) = match record(&st, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let g = &st.gemini.0;
    g.fetches.fetch_add(1, Ordering::SeqCst);
    let now_in_flight = g.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    g.most_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
    // Counts this request out however it ends.
    struct Leaving<'a>(&'a AtomicU64);
    impl Drop for Leaving<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _leaving = Leaving(&g.in_flight);
    let latency = g.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let oauth = |status: StatusCode, error: &str, description: &str| {
        json_response(
            status,
            &json!({"error": error, "error_description": description}),
        )
    };
    let fault = *g.fault.lock().unwrap();
    match fault {
        Some(TokenFault::Unavailable) => {
            return oauth(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The service is temporarily unavailable.",
            );
        }
        Some(TokenFault::InvalidGrant) => {
            return oauth(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid grant: account not found",
            );
        }
        None => {}
    }
    if parts.method != Method::POST {
        return oauth(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "POST only",
        );
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        g.refused.fetch_add(1, Ordering::SeqCst);
        return oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        );
    }
    let Some(assertion) = form.get("assertion") else {
        g.refused.fetch_add(1, Ordering::SeqCst);
        return oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    if let Err(why) = verify_jwt(assertion, SystemTime::now()) {
        g.refused.fetch_add(1, Ordering::SeqCst);
        return oauth(StatusCode::BAD_REQUEST, "invalid_grant", why);
    }
    let ttl = g.ttl_ms.load(Ordering::SeqCst);
    let n = g.next.fetch_add(1, Ordering::SeqCst);
    let token = format!("ya29.m0ck-{n:08}-{:016x}", fastrand::u64(..));
    g.issued
        .lock()
        .unwrap()
        .insert(token.clone(), Instant::now() + Duration::from_millis(ttl));
    json_response(
        StatusCode::OK,
        &json!({"access_token": token, "expires_in": (ttl / 1000).max(1), "token_type": "Bearer"}),
    )
}

/// Verifies a service-account JWT assertion: its RS256 signature (with
/// `ring`, against the test-only key's public half) and its claims.
pub fn verify_jwt(jwt: &str, now: SystemTime) -> Result<(), &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut it = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err("Invalid JWT: not three segments.");
    };
    let header: Value = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Invalid JWT header.")?;
    if header["alg"] != "RS256" {
        return Err("Invalid JWT: the algorithm must be RS256.");
    }
    let key: Value = serde_json::from_str(service_account_json()).map_err(|_| "no test key")?;
    let public = b64
        .decode(
            key["test_only_public_key_pkcs1_base64url"]
                .as_str()
                .unwrap_or(""),
        )
        .map_err(|_| "no test key")?;
    let signature = b64.decode(s).map_err(|_| "Invalid JWT Signature.")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public)
        .verify(format!("{h}.{c}").as_bytes(), &signature)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: Value = b64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("Invalid JWT claims.")?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err("Invalid JWT: unknown issuer.");
    }
    if !claims["aud"]
        .as_str()
        .is_some_and(|a| a.ends_with("/token"))
    {
        return Err("Invalid JWT: the audience is not this token endpoint.");
    }
    if !claims["scope"]
        .as_str()
        .is_some_and(|s| s.split(' ').any(|s| s == SCOPE))
    {
        return Err("Invalid JWT: the scope is missing.");
    }
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("Invalid JWT: iat and exp are required.");
    };
    if (iat - now).abs() > 300 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    if exp <= iat || exp - iat > 3600 {
        return Err("Invalid JWT: the lifetime must be at most one hour.");
    }
    Ok(())
}
