//! The mock's Azure OpenAI: both URL styles, `api-key` or Entra ID bearer
//! tokens, an Entra ID token endpoint (client credentials and workload
//! identity) and a managed identity endpoint issuing expiring tokens, with
//! Azure's fault shapes. A module of `mock_upstream.rs`.
//!
//! | route | answer |
//! |---|---|
//! | `POST /openai/deployments/{deployment}/{chat/completions, completions, embeddings}?api-version=V` | the OpenAI answer of that route (every fault of the OpenAI routes works); without `api-version`, 400 `MissingApiVersionParameter` |
//! | `POST /openai/responses?api-version=V`, `POST /openai/v1/{route}` | the same, the deployment in the body's `model` |
//! | `POST /{tenant}/oauth2/v2.0/token` | Entra ID: a form with `grant_type=client_credentials`, `client_id`, `scope`, and `client_secret` = [`CLIENT_SECRET`] or `client_assertion` = [`ASSERTION`] (with its `client_assertion_type`); answers `{"token_type":"Bearer","expires_in":TTL,"access_token":…}` |
//! | `GET /metadata/identity/oauth2/token?api-version=…&resource=…` | a managed identity (IMDS): needs `Metadata: true`; `expires_in` as a string, as IMDS sends it |
//! | `GET /msi/token?api-version=2019-08-01&resource=…` | an App Service / Functions managed identity: needs `X-IDENTITY-HEADER: `[`IDENTITY_HEADER`]; answers `expires_on` (seconds since the epoch, a string) and no `expires_in`, as App Service does |
//!
//! Authentication of the API routes: `api-key: `[`API_KEY`], or
//! `Authorization: Bearer <a token this mock issued and that has not
//! expired>`; otherwise 401 in Azure's shape (`{"error":{"code":"401",…}}`).
//! Streams start with Azure's `prompt_filter_results` chunk (`"choices": []`).
//!
//! Azure's own faults (header `x-mock-fault` or body field `mock_fault`; any
//! other fault is the OpenAI routes'):
//!
//! | fault | behaviour |
//! |---|---|
//! | `azure_429:MS` | 429 in Azure's shape with `retry-after-ms: MS`, `retry-after` (seconds, rounded up) and `x-ratelimit-remaining-requests: 0` |
//! | `azure_reset:S` | 429 with no `retry-after*`, only `x-ratelimit-reset-requests: {S}s` and `x-ratelimit-remaining-requests: 0` |
//! | `azure_401` | 401 whatever the credential |
//! | `content_filter_finish` | 200 whose choice ends with `finish_reason: "content_filter"` and `content_filter_results` (streamed: the last chunk) |
//!
//! The token endpoints' behaviour is set on the [`AzureMock`] handle
//! (`MockServer::azure`): the tokens' lifetime, a latency, failures; it
//! counts the token fetches and what the API routes saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::{AppState, Endpoint, Recorded, sse_response};

/// The API key the Azure routes accept in `api-key`.
pub const API_KEY: &str = "azk-4zur3Ap1K3yTh4tMustN3v3rL34kAbCdEf0123";
/// The client secret the token endpoint accepts.
pub const CLIENT_SECRET: &str = "cs~Entr4Cl13ntS3cr3tTh4tMustN3v3rL34k9876";
/// The federated token (workload identity) the token endpoint accepts.
pub const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.F3d3r4t3dT0k3nS1gn4tur3";
/// The secret `X-IDENTITY-HEADER` the App Service identity endpoint requires.
pub const IDENTITY_HEADER: &str = "4ppS3rv1c3Id3nt1tyH34d3rMustN3v3rL34k5555";
/// The scope the token endpoint requires (the resource, for IMDS, without `/.default`).
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// How the token endpoints fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// 503 `temporarily_unavailable` (AADSTS90033).
    Unavailable,
    /// 401 `invalid_client` (AADSTS7000215), as for a wrong secret.
    InvalidClient,
}

#[derive(Default)]
struct TokenState {
    /// Issued tokens and when each expires.
    issued: HashMap<String, Instant>,
    /// Tokens the API routes accepted, in order of first use.
    used: Vec<String>,
}

struct Shared {
    ttl_ms: AtomicU64,
    latency_ms: AtomicU64,
    fault: Mutex<Option<TokenFault>>,
    fetches: AtomicU64,
    expired: AtomicU64,
    rejected: AtomicU64,
    tokens: Mutex<TokenState>,
    next: AtomicU64,
}

/// The Azure mock's handle: settings of the token endpoints and counters.
/// Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct AzureMock(Arc<Shared>);

impl Default for AzureMock {
    fn default() -> Self {
        AzureMock(Arc::new(Shared {
            ttl_ms: AtomicU64::new(3_600_000),
            latency_ms: AtomicU64::new(0),
            fault: Mutex::new(None),
            fetches: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            tokens: Mutex::new(TokenState::default()),
            next: AtomicU64::new(1),
        }))
    }
}

impl AzureMock {
    /// Tokens issued from now on live this long (default 1 hour).
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.0
            .ttl_ms
            .store(ttl.as_millis() as u64, Ordering::SeqCst);
    }

    /// The token endpoints wait this long before answering (default 0).
    pub fn set_token_latency(&self, d: Duration) {
        self.0
            .latency_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The token endpoints fail this way from now on (`None`: they work).
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        *self.0.fault.lock().unwrap() = fault;
    }

    /// Calls to the token endpoints (every form, failed ones included).
    pub fn token_fetches(&self) -> u64 {
        self.0.fetches.load(Ordering::SeqCst)
    }

    /// API requests that came with an expired token.
    pub fn expired_token_uses(&self) -> u64 {
        self.0.expired.load(Ordering::SeqCst)
    }

    /// API requests refused for their credential (expired tokens included).
    pub fn rejected(&self) -> u64 {
        self.0.rejected.load(Ordering::SeqCst)
    }

    /// Every token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.0
            .tokens
            .lock()
            .unwrap()
            .issued
            .keys()
            .cloned()
            .collect()
    }

    /// Every token issued so far stops being accepted (as when Entra ID
    /// revokes a token before its expiry): the API routes answer 401.
    pub fn revoke_tokens(&self) {
        let now = Instant::now();
        for at in self.0.tokens.lock().unwrap().issued.values_mut() {
            *at = now;
        }
    }

    /// The distinct tokens the API routes accepted, in order of first use.
    pub fn used_tokens(&self) -> Vec<String> {
        self.0.tokens.lock().unwrap().used.clone()
    }

    fn issue(&self) -> (String, u64) {
        let n = self.0.next.fetch_add(1, Ordering::SeqCst);
        let ttl = Duration::from_millis(self.0.ttl_ms.load(Ordering::SeqCst));
        // JWT-shaped: three base64url parts; the middle one unique and long.
        let token = format!(
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJtb2NrIjoi{n:08}{:016x}In0.c2lnbmF0dXJlMock{n}",
            fastrand::u64(..)
        );
        self.0
            .tokens
            .lock()
            .unwrap()
            .issued
            .insert(token.clone(), Instant::now() + ttl);
        (token, ttl.as_secs().max(1))
    }

    /// Whether `token` was issued here and is still valid (counting uses).
    fn check(&self, token: &str) -> Result<(), &'static str> {
        let mut st = self.0.tokens.lock().unwrap();
        match st.issued.get(token) {
            None => Err("invalid"),
            Some(at) if Instant::now() >= *at => {
                self.0.expired.fetch_add(1, Ordering::SeqCst);
                Err("expired")
            }
            Some(_) => {
                if !st.used.iter().any(|t| t == token) {
                    st.used.push(token.to_owned());
                }
                Ok(())
            }
        }
    }
}

/// Azure's error shape: `{"error": {"code": …, "message": …}}`.
fn azure_error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        "apim-request-id",
        HeaderValue::from_static("mock-apim-0001"),
    );
    resp
}

/// An Entra ID error: `{"error": …, "error_description": "AADSTS…", …}`.
fn entra_error(status: u16, error: &str, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!("{description}\r\nTrace ID: 0000-mock\r\nCorrelation ID: 1111-mock\r\nTimestamp: 2026-01-01 00:00:00Z"),
        "error_codes": [0],
        "trace_id": "0000-mock",
        "correlation_id": "1111-mock",
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Which URL style a request came in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    /// `/openai/deployments/{deployment}/…` and `/openai/responses`.
    Deployment,
    /// `/openai/v1/…`.
    V1,
}

fn endpoint_of(rest: &str) -> Option<Endpoint> {
    Some(match rest.trim_end_matches('/') {
        "chat/completions" => Endpoint::Chat,
        "completions" => Endpoint::Completions,
        "embeddings" => Endpoint::Embeddings,
        "responses" => Endpoint::Responses,
        _ => return None,
    })
}

fn record(st: &AppState, parts: &http::request::Parts, body: &Bytes) {
    st.log.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
        version: parts.version,
    });
}

fn fault_of(parts: &http::request::Parts, json: &Value) -> Option<String> {
    parts
        .headers
        .get("x-mock-fault")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            json.get("mock_fault")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
}

/// An API route in `style`; `rest` is the route after the style's prefix.
pub(super) async fn api(
    State(st): State<AppState>,
    req: Request,
    style: Style,
    rest: String,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let az = st.azure.clone();
    // Authentication first, as on Azure.
    let key = parts.headers.get("api-key").and_then(|v| v.to_str().ok());
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = match (key, bearer) {
        (Some(k), _) => (k == API_KEY).then_some(()).ok_or("invalid"),
        (None, Some(t)) => az.check(t),
        (None, None) => Err("missing"),
    };
    if let Err(why) = authorized {
        record(&st, &parts, &body);
        az.0.rejected.fetch_add(1, Ordering::SeqCst);
        return if bearer.is_some() && key.is_none() {
            azure_error(
                401,
                "401",
                &format!(
                    "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), or have expired. ({why})"
                ),
            )
        } else {
            azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.",
            )
        };
    }
    let has_version = parts.uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("api-version=") && p.len() > 12)
    });
    if style == Style::Deployment && !has_version {
        record(&st, &parts, &body);
        return azure_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let Some(endpoint) = endpoint_of(&rest) else {
        record(&st, &parts, &body);
        return azure_error(404, "404", "Resource not found");
    };
    if parts.method != Method::POST {
        record(&st, &parts, &body);
        return azure_error(405, "405", "Method not allowed");
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fault = fault_of(&parts, &json);
    let stream = json["stream"].as_bool() == Some(true);
    match fault
        .as_deref()
        .map(|f| f.split_once(':').unwrap_or((f, "")))
    {
        Some(("azure_429", ms)) => {
            record(&st, &parts, &body);
            let ms: u64 = ms.parse().unwrap_or(6000);
            let mut resp = azure_error(
                429,
                "429",
                &format!(
                    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after {} seconds.",
                    ms.div_ceil(1000)
                ),
            );
            let h = resp.headers_mut();
            h.insert("retry-after-ms", HeaderValue::from(ms));
            h.insert("retry-after", HeaderValue::from(ms.div_ceil(1000)));
            h.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
            return resp;
        }
        Some(("azure_reset", s)) => {
            record(&st, &parts, &body);
            let s: u64 = s.parse().unwrap_or(6);
            let mut resp = azure_error(429, "429", "Rate limit is exceeded.");
            let h = resp.headers_mut();
            h.insert(
                "x-ratelimit-reset-requests",
                HeaderValue::try_from(format!("{s}s")).unwrap(),
            );
            h.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
            return resp;
        }
        Some(("azure_401", _)) => {
            record(&st, &parts, &body);
            az.0.rejected.fetch_add(1, Ordering::SeqCst);
            return azure_error(
                401,
                "401",
                "Access denied due to invalid subscription key or wrong API endpoint.",
            );
        }
        Some(("content_filter_finish", _)) => {
            record(&st, &parts, &body);
            return content_filter_finish(&json, stream);
        }
        _ => {}
    }
    // Everything else is the OpenAI route's answer; Azure's streams begin
    // with a `prompt_filter_results` chunk whose `choices` is empty.
    let mut req = Request::from_parts(parts, Body::from(body));
    if st.expected_auth.is_some() {
        // `--require-key` checks OpenAI's bearer key: Azure's was checked above.
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    let resp = super::handle(st, req, endpoint).await;
    let is_sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_sse || endpoint != Endpoint::Chat {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let first = Bytes::from_static(
        b"data: {\"choices\":[],\"created\":0,\"id\":\"\",\"model\":\"\",\"object\":\"\",\"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{\"hate\":{\"filtered\":false,\"severity\":\"safe\"}}}]}\n\n",
    );
    let body =
        stream::once(async move { Ok::<_, axum::Error>(first) }).chain(body.into_data_stream());
    Response::from_parts(parts, Body::from_stream(body))
}

/// A 200 that a content filter ended: `finish_reason: "content_filter"`.
fn content_filter_finish(json: &Value, stream: bool) -> Response {
    let model = json["model"].as_str().unwrap_or("mock-small");
    let filter = json!({"hate": {"filtered": true, "severity": "high"}});
    if !stream {
        let body = json!({
            "id": "chatcmpl-filtered", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "content_filter",
                         "message": {"role": "assistant", "content": "tok0"},
                         "content_filter_results": filter}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        });
        let mut resp = Response::new(Body::from(body.to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": "chatcmpl-filtered", "object": "chat.completion.chunk", "created": 0,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
            "content_filter_results": filter}]});
        format!("data: {v}\n\n")
    };
    let mut text = chunk(json!({"role": "assistant", "content": "tok0"}), Value::Null);
    text.push_str(&chunk(json!({}), json!("content_filter")));
    if json["stream_options"]["include_usage"].as_bool() == Some(true) {
        let usage = json!({"id": "chatcmpl-filtered", "object": "chat.completion.chunk",
            "created": 0, "model": model, "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}});
        text.push_str(&format!("data: {usage}\n\n"));
    }
    text.push_str("data: [DONE]\n\n");
    sse_response(Body::from(text))
}

async fn token_latency(az: &AzureMock) {
    let ms = az.0.latency_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

fn token_fault(az: &AzureMock) -> Option<Response> {
    match *az.0.fault.lock().unwrap() {
        None => None,
        Some(TokenFault::Unavailable) => Some(entra_error(
            503,
            "temporarily_unavailable",
            "AADSTS90033: A transient error has occurred. Please try again.",
        )),
        Some(TokenFault::InvalidClient) => Some(entra_error(
            401,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        )),
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`: client credentials, or a client assertion.
pub(super) async fn token(State(st): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    record(&st, &parts, &body);
    let az = st.azure.clone();
    az.0.fetches.fetch_add(1, Ordering::SeqCst);
    token_latency(&az).await;
    if let Some(resp) = token_fault(&az) {
        return resp;
    }
    if parts.method != Method::POST {
        return entra_error(
            405,
            "invalid_request",
            "AADSTS900561: The endpoint only accepts POST requests.",
        );
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str);
    if get("grant_type") != Some("client_credentials") {
        return entra_error(
            400,
            "unsupported_grant_type",
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    if get("client_id").is_none_or(str::is_empty) {
        return entra_error(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    }
    if get("scope") != Some(SCOPE) {
        return entra_error(
            400,
            "invalid_scope",
            "AADSTS70011: The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let ok = match (get("client_secret"), get("client_assertion")) {
        (Some(s), None) => s == CLIENT_SECRET,
        (None, Some(a)) => {
            a == ASSERTION
                && get("client_assertion_type")
                    == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        }
        _ => false,
    };
    if !ok {
        return entra_error(
            401,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    let (token, ttl) = az.issue();
    json_ok(
        json!({"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token}),
    )
}

/// `GET /metadata/identity/oauth2/token`: a managed identity, IMDS-style.
pub(super) async fn imds(st: State<AppState>, req: Request) -> Response {
    identity(st, req, false).await
}

/// `GET /msi/token`: an App Service / Functions managed identity.
pub(super) async fn app_service(st: State<AppState>, req: Request) -> Response {
    identity(st, req, true).await
}

/// A managed identity endpoint: IMDS's, or App Service's (`app_service`).
async fn identity(State(st): State<AppState>, req: Request, app_service: bool) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    record(&st, &parts, &body);
    let az = st.azure.clone();
    az.0.fetches.fetch_add(1, Ordering::SeqCst);
    token_latency(&az).await;
    if let Some(resp) = token_fault(&az) {
        return resp;
    }
    let (header, expected, version) = if app_service {
        ("x-identity-header", IDENTITY_HEADER, Some("2019-08-01"))
    } else {
        ("metadata", "true", None)
    };
    if parts.headers.get(header).map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
        return entra_error(
            if app_service { 401 } else { 400 },
            "invalid_request",
            &format!("Required {header} header not specified or wrong"),
        );
    }
    let query: HashMap<String, String> =
        form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let resource = SCOPE.trim_end_matches("/.default");
    let version_ok = match version {
        Some(v) => query.get("api-version").map(String::as_str) == Some(v),
        None => query.contains_key("api-version"),
    };
    if !version_ok || query.get("resource").map(String::as_str) != Some(resource) {
        return entra_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' or 'resource' is missing or wrong",
        );
    }
    let (token, ttl) = az.issue();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let client_id = query
        .get("client_id")
        .cloned()
        .unwrap_or_else(|| "system-assigned".into());
    if app_service {
        return json_ok(json!({
            "access_token": token,
            "client_id": client_id,
            "expires_on": (now + ttl).to_string(),
            "resource": resource,
            "token_type": "Bearer"
        }));
    }
    json_ok(json!({
        "access_token": token,
        "client_id": client_id,
        "expires_in": ttl.to_string(),
        "expires_on": (now + ttl).to_string(),
        "ext_expires_in": ttl.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer"
    }))
}

fn json_ok(v: Value) -> Response {
    let mut resp = Response::new(Body::from(v.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
