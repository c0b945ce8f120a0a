//! `mock_upstream`: an OpenAI-compatible mock upstream server with per-request fault
//! injection, used by tollgate's tests, demos and load benchmarks.
//!
//! # Running it
//!
//! ```text
//! cargo run --example mock_upstream -- --listen 127.0.0.1:9000
//! ```
//!
//! | flag | default | meaning |
//! |---|---|---|
//! | `--listen ADDR` | `127.0.0.1:9000` | socket address to listen on |
//! | `--latency-ms N` | `0` | delay before the response headers of every `/v1/*` request |
//! | `--tokens N` | `16` | content tokens per answer / per stream (`tok0 tok1 ...`) |
//! | `--chunk-interval-ms N` | `0` | delay between two SSE events of a stream |
//! | `--require-key KEY` | unset | `/v1/*` requests without `Authorization: Bearer KEY` get 401 |
//! | `--help` | | print usage |
//!
//! Flags also accept the `--flag=value` form. The server prints
//! `mock_upstream listening on http://ADDR/v1` once it accepts connections, speaks
//! HTTP/1.1 and HTTP/2 (prior knowledge, h2c; no limit on concurrent streams per
//! connection), and stops on Ctrl-C.
//!
//! # Using it from tests, benches and other examples
//!
//! ```ignore
//! #[path = "../examples/mock_upstream.rs"]
//! mod mock_upstream;
//!
//! let mock = mock_upstream::spawn(mock_upstream::MockConfig::default()).await?;
//! let url = mock.base_url(); // "http://127.0.0.1:PORT/v1"
//! // ... drive the gateway against `url` ...
//! let seen = mock.log.all(); // every request the mock received
//! ```
//!
//! Keep the [`MockServer`] in a variable: dropping it shuts the server down (the listener
//! closes, keep-alive connections are closed gracefully, in-flight streams are aborted).
//!
//! # Endpoints (OpenAI wire format)
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/chat/completions` | `chat.completion`, or SSE `chat.completion.chunk`s + `data: [DONE]` with `"stream": true` |
//! | `POST /v1/completions` | `text_completion`, streaming too |
//! | `POST /v1/embeddings` | `list` of 8-float embeddings (`"encoding_format": "base64"` honoured) |
//! | `POST /v1/responses` | `response`, or SSE `response.created`, `response.output_item.added` and `response.content_part.added`, `response.output_text.delta`s, the `.done` events, `response.completed` (no `[DONE]`): the sequence the SDKs' stream helpers need |
//! | `GET /v1/models`, `GET /v1/models/{id}` | `mock-small`, `mock-large` |
//! | `POST /v1/messages`, `POST /v1/messages/count_tokens` | Anthropic's Messages API, its stream events and its faults: see `examples/mock/anthropic.rs` |
//! | `POST /openai/deployments/{d}/…`, `POST /openai/v1/…`, `POST /{tenant}/oauth2/v2.0/token`, `GET /metadata/identity/oauth2/token`, `GET /msi/token` | Azure OpenAI (both URL styles, `api-key` or Entra ID tokens) and its token endpoints, with their faults: see `examples/mock/azure.rs` |
//! | `POST /model/{modelId}/converse`, `POST /model/{modelId}/converse-stream`, `GET /v2/credentials/{id}`, `POST /sts` | AWS Bedrock's Converse API (JSON and the binary event stream), SigV4 verified, its exceptions, a container credentials endpoint and STS's `AssumeRoleWithWebIdentity` issuing short-lived credentials: see `examples/mock/bedrock.rs` |
//! | `POST /v1beta/models/{model}:generateContent` (and `:streamGenerateContent?alt=sse`), `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:…`, `POST /token` | Google's Gemini API (`x-goog-api-key`), Vertex AI (OAuth bearer tokens) and the OAuth token endpoint that verifies service-account JWTs, with Google's error shapes: see `examples/mock/gemini.rs` |
//! | `GET /health` | `200 ok` (never faulted, never delayed, no key needed) |
//! | anything else | 404 OpenAI-style error (`unknown_url`); a wrong method on a known route gets 405 |
//!
//! The answer text is `tok0 tok1 ... tok{N-1}` (`--tokens N`); a stream sends one event
//! per token (`"tok0"`, `" tok1"`, ...; the first chat chunk also carries
//! `delta.role`), then a chunk with the finish reason, then a `"choices": []` usage chunk
//! only if `stream_options.include_usage` is true, then `data: [DONE]`. Usage is
//! `prompt_tokens` = request body length / 4 (at least 1), `completion_tokens` = tokens.
//! The model is echoed as received (`mock-small` when the body has none). Every request,
//! whatever its route or outcome, is recorded in the [`RequestLog`] (last 1000 kept;
//! `path` is the URI path without the query string; `body` the exact bytes received;
//! `version` the HTTP version it came in).
//! A body that is not a JSON object gets a 400 `invalid_request_error`.
//!
//! # Faults, chosen per request
//!
//! The fault comes from the request header `x-mock-fault`, or else from the top-level
//! string body field `"mock_fault"`. The first-byte latency comes from the header
//! `x-mock-latency-ms`, or else the numeric body field `"mock_latency_ms"`, or else
//! `--latency-ms`. The `Authorization` check of `--require-key` runs before any fault
//! and before the latency (a rejected key is answered at once).
//!
//! | fault | behaviour |
//! |---|---|
//! | `429`, `429:S` | 429, `Retry-After: S` (default 6), `{"error":{"message":"Rate limit exceeded. Retry in Ss.","type":"rate_limit","param":null,"code":"rate_limit_exceeded"}}` |
//! | `429-odd` | 429, `retry-after-ms: 6000` (no `Retry-After`), `{"detail":"Too Many Requests","status":429}` |
//! | `500` | 500, OpenAI-style `server_error` JSON |
//! | `500-html` | 500, `text/html`, `<html><body><h1>500 Internal Server Error</h1></body></html>` |
//! | `502-text` | 502, `text/plain`, `Bad Gateway` |
//! | `503` | 503, empty body |
//! | `404` | 404, ``The model `<model>` does not exist or you do not have access to it.`` (`model_not_found`) |
//! | `401` | 401, `Incorrect API key provided: <the full bearer token received>. ...` (`invalid_api_key`); same answer as a failed `--require-key` check |
//! | `403` | 403, `{"error":{"message":"Project does not have access to model","type":"invalid_request_error","code":"model_access_denied"}}` |
//! | `400` | 400, OpenAI-style `invalid_request_error` |
//! | `context_length` | 400, `This model's maximum context length is 8192 tokens...` (`param: "messages"`, `context_length_exceeded`) |
//! | `delay:MS` | wait MS ms before the response headers (replaces the configured latency), then answer normally |
//! | `cut:N` | stream: N content events, then (after a 20 ms pause that lets them reach the client) the connection is aborted: no chunked terminator on HTTP/1.1, `RST_STREAM` on HTTP/2, so the client sees a body error, not a clean end. Non-streaming: the first half of the JSON answer, then the same abort |
//! | `stall:N` | stream: N content events, then nothing while the connection stays open; after 10 minutes (or on shutdown) the connection is aborted. Non-streaming: the first half of the JSON answer, then the same stall |
//! | `no_done` | stream: normal events, then a clean end without `data: [DONE]` (Responses API: without `response.completed`). Non-streaming: ignored |
//! | `garbage` | 200 `application/json` `{"id": "chatcmpl-broken", "choices": [`; stream: 200 SSE `data: {not json\n\n` then `data: [DONE]\n\n` |
//! | `fractional` | usage counts are floats: `prompt_tokens` P+0.5, `completion_tokens` C.0, `total_tokens` P+C+0.5 (stream: in the usage chunk / `response.completed`) |
//! | `unserved`, `unserved:ROUTE` | on ROUTE (`chat`, `completions`, `embeddings`, `responses`; every route when absent): 404 `text/html`, nginx's page, as a server that does not serve the path answers; other routes answer normally |
//! | `unserved-text:ROUTE`, `unserved-json:ROUTE` | the same with Go's `text/plain` `404 page not found`, or OpenAI's JSON ``Invalid URL (POST <path>)`` (`code: null`) |
//! | `405`, `405:ROUTE` | 405 `{"detail":"Method Not Allowed"}` on ROUTE (every route when absent) |
//! | `501` | 501 `text/plain` `Not Implemented` |
//! | `gone:SHAPE` | the model is unknown or retired, as SHAPE says it: `openai` (404 `model_not_found`), `groq` (400 `model_decommissioned`), `anthropic` (404 `not_found_error`, `model: <model>`), `vllm` (404, top-level `"object":"error"`, `NotFoundError`), `vllm-nested` (404, under `error`, `param: "model"`), `azure` (404 `DeploymentNotFound`), `gemini` (404 `NOT_FOUND`, `models/<model> is not found…`), `ollama` (404 `{"error":"model '<model>' not found…"}`), `mistral` (400 `invalid_model`), `410` (410 with a JSON error body) |
//! | `content_filter:SHAPE` | a content filter refused the request: `openai` (400 `content_policy_violation`), `azure` (400 `content_filter` with `innererror`), `openrouter` (403, `metadata.reasons` and `flagged_input`) |
//! | `413-html` | 413 `text/html`, nginx's `413 Request Entity Too Large` page |
//! | `422` | 422, FastAPI's `{"detail":[{"loc":["body","messages"],"msg":"field required","type":"value_error.missing"}]}` |
//! | `408-html` | 408 `text/html`, a proxy's `408 Request Time-out` page |
//! | `500:S`, `503:S` | 500 (OpenAI-style `server_error`) or 503 (empty), with `Retry-After: S` |
//! | `tool_args:BYTES` | chat stream whose deltas are `tool_calls[0].function.arguments` fragments of 4 KiB (the first also carries `id`, `"type":"function"`, `function.name` = `mock_tool`), BYTES in all (suffix `KiB`, `MiB`, `GiB` accepted), then `finish_reason: "tool_calls"`, usage if asked, `[DONE]`. Generated lazily, memory stays flat. The arguments are the JSON text `{"data":"lorem ipsum..."}` (plain filler if BYTES < 11); `completion_tokens` = ceil(BYTES/4) |
//!
//! Per-endpoint fallbacks:
//! - Status faults (`429` ... `context_length`), `delay:MS` and `garbage` apply to every
//!   `/v1/*` route. A status fault given by header is answered even when the body is not
//!   valid JSON (`404` then names the model `unknown`).
//! - `cut:N` / `stall:N` on a non-streaming request (including embeddings and models)
//!   send the first half of the body. On a stream, N counts content events only: the
//!   Responses API `response.created` (and `response.output_item.added`) come first.
//!   If N >= the number of content events, all of them are sent and the cut / stall
//!   happens right after the last one (before the finish chunk / `response.completed`).
//! - `no_done` and `fractional` are ignored where there is nothing to change (models;
//!   `no_done` on non-streaming answers). `fractional` on embeddings makes both counts `P.5`.
//! - `tool_args:BYTES` on a non-streaming chat completion returns one `chat.completion`
//!   with `message.tool_calls[0].function.arguments` of BYTES bytes (streamed out lazily,
//!   `finish_reason: "tool_calls"`). On `/v1/completions` the text is the BYTES-long
//!   arguments text instead. On `/v1/responses` the output is a `function_call` item
//!   (streaming: `response.output_item.added`, `response.function_call_arguments.delta`
//!   events, then `response.completed` whose `output` is `[]`, not repeating the
//!   arguments). Ignored on embeddings and models.
//! - An unknown or malformed fault (or latency) value gets a 400 `invalid_request_error`
//!   from the mock, code `unknown_mock_fault` / `invalid_mock_latency`, saying so.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{any, get};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tokio::sync::watch;

#[path = "mock/anthropic.rs"]
mod anthropic;
#[path = "mock/azure.rs"]
pub mod azure;
#[path = "mock/bedrock.rs"]
pub mod bedrock;
#[path = "mock/gemini.rs"]
pub mod gemini;

/// Configuration of the mock (the CLI flags).
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Delay before the response headers of every `/v1/*` request.
    pub latency: Duration,
    /// Content tokens per answer / per stream.
    pub tokens: usize,
    /// Delay between two SSE events.
    pub chunk_interval: Duration,
    /// If set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub require_key: Option<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            tokens: 16,
            chunk_interval: Duration::ZERO,
            require_key: None,
        }
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The URI path, without the query string.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The HTTP version the request came in (`HTTP/1.1`, or `HTTP/2` over h2c).
    pub version: http::Version,
}

const LOG_CAPACITY: usize = 1000;

/// The requests the mock received, oldest first; keeps the last 1000.
#[derive(Clone, Default)]
pub struct RequestLog {
    inner: Arc<Mutex<VecDeque<Recorded>>>,
}

impl RequestLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Recorded>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, rec: Recorded) {
        let mut log = self.lock();
        if log.len() >= LOG_CAPACITY {
            log.pop_front();
        }
        log.push_back(rec);
    }

    /// A copy of every recorded request, oldest first.
    pub fn all(&self) -> Vec<Recorded> {
        self.lock().iter().cloned().collect()
    }

    /// The most recent request, if any.
    pub fn last(&self) -> Option<Recorded> {
        self.lock().back().cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// A mock served in a background tokio task. Dropping it (or calling
/// [`MockServer::shutdown`]) stops the server.
pub struct MockServer {
    pub addr: SocketAddr,
    pub log: RequestLog,
    /// The Azure routes' token endpoints and counters (see `mock/azure.rs`).
    pub azure: azure::AzureMock,
    /// Bedrock's container credentials endpoint and counters (see `mock/bedrock.rs`).
    pub bedrock: bedrock::BedrockMock,
    /// Google's token endpoint's settings and counters (see `mock/gemini.rs`).
    pub gemini: gemini::GeminiMock,
    shutdown: watch::Sender<bool>,
}

impl MockServer {
    /// `http://{addr}/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops serving: the listener closes, idle keep-alive connections are closed,
    /// in-flight responses finish and in-flight streams are aborted.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Binds `127.0.0.1:0` and serves the mock in a tokio task.
pub async fn spawn(cfg: MockConfig) -> std::io::Result<MockServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let log = RequestLog::default();
    let (tx, rx) = watch::channel(false);
    let azure = azure::AzureMock::default();
    let bedrock = bedrock::BedrockMock::default();
    let gemini = gemini::GeminiMock::default();
    let app = build_router_with(
        cfg,
        log.clone(),
        Some(rx.clone()),
        (azure.clone(), bedrock.clone(), gemini.clone()),
    );
    tokio::spawn(serve(listener, app, rx));
    Ok(MockServer {
        addr,
        log,
        azure,
        bedrock,
        gemini,
        shutdown: tx,
    })
}

/// All the mock's routes, recording into `log`.
pub fn router(cfg: MockConfig, log: RequestLog) -> Router {
    build_router(cfg, log, None)
}

/// Serves HTTP/1.1 and h2c (prior knowledge) on every accepted connection,
/// with no limit on concurrent HTTP/2 streams per connection (hyper's default
/// of 200 would make a gateway that multiplexes over one connection queue
/// its 201st stream). On `stop`: no new connections, open ones are shut down
/// gracefully, and this returns when they are all closed.
async fn serve(listener: tokio::net::TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    // Each connection task holds a clone of `open`; `closed()` resolves when
    // every clone is gone.
    let (open, _) = watch::channel(());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of file descriptors and the like: let it pass.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // Streams are many small writes: do not let Nagle delay them.
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        let open = open.subscribe();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http2().max_concurrent_streams(None);
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return drop(open),
                () = stopped(&mut stop) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            drop(open);
        });
    }
    drop(listener);
    open.closed().await;
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

// ---------------------------------------------------------------------------------------
// Shared state and routing
// ---------------------------------------------------------------------------------------

struct Inner {
    cfg: MockConfig,
    log: RequestLog,
    next_id: AtomicU64,
    /// `tok0 tok1 ... tok{N-1}`, pre-built (plain ASCII: no JSON escaping needed).
    content: String,
    /// `Bearer KEY` when `--require-key` is set.
    expected_auth: Option<String>,
    shutdown: Option<watch::Receiver<bool>>,
    azure: azure::AzureMock,
    bedrock: bedrock::BedrockMock,
    gemini: gemini::GeminiMock,
}

type AppState = Arc<Inner>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
    Models,
    Model,
}

fn build_router(
    cfg: MockConfig,
    log: RequestLog,
    shutdown: Option<watch::Receiver<bool>>,
) -> Router {
    build_router_with(cfg, log, shutdown, Default::default())
}

fn build_router_with(
    cfg: MockConfig,
    log: RequestLog,
    shutdown: Option<watch::Receiver<bool>>,
    (azure, bedrock, gemini): (azure::AzureMock, bedrock::BedrockMock, gemini::GeminiMock),
) -> Router {
    let mut content = String::with_capacity(cfg.tokens * 6);
    for i in 0..cfg.tokens {
        if i > 0 {
            content.push(' ');
        }
        let _ = write!(content, "tok{i}");
    }
    let expected_auth = cfg.require_key.as_ref().map(|k| format!("Bearer {k}"));
    let state: AppState = Arc::new(Inner {
        cfg,
        log,
        next_id: AtomicU64::new(1),
        content,
        expected_auth,
        shutdown,
        azure,
        bedrock,
        gemini,
    });
    Router::new()
        .route(
            "/v1/chat/completions",
            any(|State(st): State<AppState>, req: Request| handle(st, req, Endpoint::Chat)),
        )
        .route(
            "/v1/completions",
            any(|State(st): State<AppState>, req: Request| handle(st, req, Endpoint::Completions)),
        )
        .route(
            "/v1/embeddings",
            any(|State(st): State<AppState>, req: Request| handle(st, req, Endpoint::Embeddings)),
        )
        .route(
            "/v1/responses",
            any(|State(st): State<AppState>, req: Request| handle(st, req, Endpoint::Responses)),
        )
        .route(
            "/v1/models",
            any(|State(st): State<AppState>, req: Request| handle(st, req, Endpoint::Models)),
        )
        .route(
            "/v1/models/{model}",
            any(|State(st): State<AppState>, req: Request| handle(st, req, Endpoint::Model)),
        )
        .route(
            "/v1/messages",
            any(|st: State<AppState>, req: Request| {
                anthropic::handle(st, req, anthropic::Route::Messages)
            }),
        )
        .route(
            "/v1/messages/count_tokens",
            any(|st: State<AppState>, req: Request| {
                anthropic::handle(st, req, anthropic::Route::CountTokens)
            }),
        )
        // Azure OpenAI's URL styles and Entra ID's token endpoints (mock/azure.rs).
        .route(
            "/openai/deployments/{deployment}/{*rest}",
            any(
                |st: State<AppState>, Path((_, rest)): Path<(String, String)>, req: Request| {
                    azure::api(st, req, azure::Style::Deployment, rest)
                },
            ),
        )
        .route(
            "/openai/responses",
            any(|st: State<AppState>, req: Request| {
                azure::api(st, req, azure::Style::Deployment, "responses".into())
            }),
        )
        .route(
            "/openai/v1/{*rest}",
            any(
                |st: State<AppState>, Path(rest): Path<String>, req: Request| {
                    azure::api(st, req, azure::Style::V1, rest)
                },
            ),
        )
        .route("/{tenant}/oauth2/v2.0/token", any(azure::token))
        .route("/metadata/identity/oauth2/token", any(azure::imds))
        .route("/msi/token", any(azure::app_service))
        .route("/v2/credentials/{id}", any(bedrock::container_credentials))
        .route("/sts", any(bedrock::sts))
        .route(
            "/model/{model}/converse",
            any(|st: State<AppState>, req: Request| bedrock::handle(st, req, false)),
        )
        .route(
            "/model/{model}/converse-stream",
            any(|st: State<AppState>, req: Request| bedrock::handle(st, req, true)),
        )
        // Google's Gemini API, Vertex AI and OAuth token endpoint (mock/gemini.rs).
        .route("/v1beta/models/{call}", any(gemini::gemini_api))
        .route(
            "/v1/projects/{project}/locations/{location}/publishers/google/models/{call}",
            any(gemini::vertex),
        )
        .route("/token", any(gemini::token))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

/// Reads the whole body and records the request.
async fn record(st: &Inner, req: Request) -> Result<(http::request::Parts, Bytes), Response> {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(err) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                &format!("Could not read the request body: {err}"),
                "invalid_request_error",
                None,
                None,
            ));
        }
    };
    st.log.push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
        version: parts.version,
    });
    Ok((parts, body))
}

async fn health(State(st): State<AppState>, req: Request) -> Response {
    if let Err(resp) = record(&st, req).await {
        return resp;
    }
    let mut resp = Response::new(Body::from("ok"));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn not_found(State(st): State<AppState>, req: Request) -> Response {
    let (parts, _) = match record(&st, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    error_response(
        StatusCode::NOT_FOUND,
        &format!(
            "Unknown request URL: {} {}. Please check the URL for typos.",
            parts.method,
            parts.uri.path()
        ),
        "invalid_request_error",
        None,
        Some("unknown_url"),
    )
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    RateLimit {
        retry_after: u64,
    },
    RateLimitOdd,
    Server500,
    Html500,
    Text502,
    Unavailable503,
    NotFound404,
    Unauthorized401,
    Forbidden403,
    BadRequest400,
    ContextLength,
    Delay(u64),
    Cut(u64),
    Stall(u64),
    NoDone,
    Garbage,
    Fractional,
    ToolArgs(u64),
    /// The upstream outcome faults (see the "Upstream outcome faults" block).
    Outcome(OutcomeFault),
}

impl Fault {
    fn parse(raw: &str) -> Result<Fault, String> {
        let raw = raw.trim();
        let (name, arg) = match raw.split_once(':') {
            Some((name, arg)) => (name.trim(), Some(arg.trim())),
            None => (raw, None),
        };
        let bad = || format!("Invalid mock fault `{raw}`.");
        let number = |arg: Option<&str>| -> Result<u64, String> {
            arg.and_then(|a| a.parse::<u64>().ok()).ok_or_else(bad)
        };
        let fault = match (name, arg) {
            ("429", None) => Fault::RateLimit { retry_after: 6 },
            ("429", arg) => Fault::RateLimit {
                retry_after: number(arg)?,
            },
            ("429-odd", None) => Fault::RateLimitOdd,
            ("500", None) => Fault::Server500,
            ("500-html", None) => Fault::Html500,
            ("502-text", None) => Fault::Text502,
            ("503", None) => Fault::Unavailable503,
            ("404", None) => Fault::NotFound404,
            ("401", None) => Fault::Unauthorized401,
            ("403", None) => Fault::Forbidden403,
            ("400", None) => Fault::BadRequest400,
            ("context_length", None) => Fault::ContextLength,
            ("delay", arg) => Fault::Delay(number(arg)?),
            ("cut", arg) => Fault::Cut(number(arg)?),
            ("stall", arg) => Fault::Stall(number(arg)?),
            ("no_done", None) => Fault::NoDone,
            ("garbage", None) => Fault::Garbage,
            ("fractional", None) => Fault::Fractional,
            ("tool_args", Some(size)) => Fault::ToolArgs(parse_size(size).ok_or_else(bad)?),
            (name, arg) if OutcomeFault::names(name) => {
                Fault::Outcome(OutcomeFault::parse(name, arg).ok_or_else(bad)?)
            }
            _ => {
                return Err(format!(
                    "Unknown mock fault `{raw}`. Known: 429, 429:S, 429-odd, 500, 500-html, \
                     502-text, 503, 404, 401, 403, 400, context_length, delay:MS, cut:N, \
                     stall:N, no_done, garbage, fractional, tool_args:BYTES, {}.",
                    OutcomeFault::KNOWN
                ));
            }
        };
        Ok(fault)
    }

    /// Faults answered with an error status before any use of the body.
    fn is_status(self) -> bool {
        matches!(
            self,
            Fault::RateLimit { .. }
                | Fault::RateLimitOdd
                | Fault::Server500
                | Fault::Html500
                | Fault::Text502
                | Fault::Unavailable503
                | Fault::NotFound404
                | Fault::Unauthorized401
                | Fault::Forbidden403
                | Fault::BadRequest400
                | Fault::ContextLength
        )
    }
}

/// `4096`, `4KiB`, `5MiB`, `1GiB` (suffix case-insensitive, optional space).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits);
    let num: u64 = num.parse().ok()?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    num.checked_mul(mult)
}

// ---------------------------------------------------------------------------------------
// The request handler
// ---------------------------------------------------------------------------------------

/// Per-request identity used in every answer.
struct Ids {
    n: u64,
    created: u64,
    /// The model as a JSON string literal, quotes included.
    model: String,
}

#[derive(Clone, Copy)]
struct Usage {
    prompt: u64,
    completion: u64,
    fractional: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum UsageNames {
    Chat,
    Responses,
    Embeddings,
}

impl Usage {
    fn write(&self, buf: &mut BytesMut, names: UsageNames) {
        let (p, c, t) = (self.prompt, self.completion, self.prompt + self.completion);
        let _ = match (names, self.fractional) {
            (UsageNames::Chat, false) => write!(
                buf,
                r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{t}}}"#
            ),
            (UsageNames::Chat, true) => write!(
                buf,
                r#"{{"prompt_tokens":{p}.5,"completion_tokens":{c}.0,"total_tokens":{t}.5}}"#
            ),
            (UsageNames::Responses, false) => write!(
                buf,
                r#"{{"input_tokens":{p},"output_tokens":{c},"total_tokens":{t}}}"#
            ),
            (UsageNames::Responses, true) => write!(
                buf,
                r#"{{"input_tokens":{p}.5,"output_tokens":{c}.0,"total_tokens":{t}.5}}"#
            ),
            (UsageNames::Embeddings, false) => {
                write!(buf, r#"{{"prompt_tokens":{p},"total_tokens":{p}}}"#)
            }
            (UsageNames::Embeddings, true) => {
                write!(buf, r#"{{"prompt_tokens":{p}.5,"total_tokens":{p}.5}}"#)
            }
        };
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What a request asks of the mock, besides the answer itself.
struct Controls {
    /// The parsed body (`Null` for GET routes, or an unparsable body with a status fault).
    json: Value,
    fault: Option<Fault>,
    /// First-byte delay.
    latency: Duration,
}

fn bad_json(message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
        None,
    )
}

/// Parses the body, the fault and the latency (header first, then body field).
fn controls(
    cfg: &MockConfig,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Controls, Box<Response>> {
    let header_fault = match header_str(headers, "x-mock-fault") {
        Some(raw) => Some(
            Fault::parse(raw)
                .map_err(|msg| Box::new(mock_usage_error(&msg, "unknown_mock_fault")))?,
        ),
        None => None,
    };
    let json = match body.map(serde_json::from_slice::<Value>) {
        None => Value::Null,
        Some(Ok(v @ Value::Object(_))) => v,
        // A status fault given by header does not need the body.
        Some(_) if header_fault.is_some_and(Fault::is_status) => Value::Null,
        Some(Ok(_)) => {
            return Err(Box::new(bad_json(
                "The request body must be a JSON object.",
            )));
        }
        Some(Err(err)) => {
            return Err(Box::new(bad_json(&format!(
                "We could not parse the JSON body of your request. ({err}) (HINT: This likely \
                 means you aren't using your HTTP library correctly. The OpenAI API expects a \
                 JSON payload.)"
            ))));
        }
    };
    let fault = match (header_fault, json.get("mock_fault")) {
        (Some(f), _) => Some(f),
        (None, None | Some(Value::Null)) => None,
        (None, Some(Value::String(raw))) => Some(
            Fault::parse(raw)
                .map_err(|msg| Box::new(mock_usage_error(&msg, "unknown_mock_fault")))?,
        ),
        (None, Some(_)) => {
            return Err(Box::new(mock_usage_error(
                "`mock_fault` must be a string.",
                "unknown_mock_fault",
            )));
        }
    };
    let latency = if let Some(Fault::Delay(ms)) = fault {
        Duration::from_millis(ms)
    } else if let Some(raw) = header_str(headers, "x-mock-latency-ms") {
        let ms = raw.trim().parse::<u64>().map_err(|_| {
            Box::new(mock_usage_error(
                &format!("Invalid x-mock-latency-ms `{raw}`: expected milliseconds."),
                "invalid_mock_latency",
            ))
        })?;
        Duration::from_millis(ms)
    } else {
        match json.get("mock_latency_ms") {
            None | Some(Value::Null) => cfg.latency,
            Some(v) => match v.as_f64() {
                Some(ms) if ms >= 0.0 && ms.is_finite() => Duration::from_secs_f64(ms / 1000.0),
                _ => {
                    return Err(Box::new(mock_usage_error(
                        "`mock_latency_ms` must be a non-negative number.",
                        "invalid_mock_latency",
                    )));
                }
            },
        }
    };
    Ok(Controls {
        json,
        fault,
        latency,
    })
}

async fn handle(st: AppState, req: Request, endpoint: Endpoint) -> Response {
    let (parts, body) = match record(&st, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let expected_method = match endpoint {
        Endpoint::Models | Endpoint::Model => Method::GET,
        _ => Method::POST,
    };
    if parts.method != expected_method {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!(
                "Invalid method for URL ({} {}). Use {expected_method}.",
                parts.method,
                parts.uri.path()
            ),
            "invalid_request_error",
            None,
            None,
        );
    }

    // Authentication comes first, as on a real API.
    let auth = header_str(&parts.headers, "authorization");
    if st.expected_auth.is_some() && auth != st.expected_auth.as_deref() {
        return unauthorized(auth);
    }

    let post_body = (expected_method == Method::POST).then_some(&body[..]);
    let Controls {
        json,
        fault,
        latency,
    } = match controls(&st.cfg, &parts.headers, post_body) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    if !latency.is_zero() && !sleep_or_shutdown(latency, st.shutdown.clone()).await {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "The mock upstream is shutting down.",
            "server_error",
            None,
            None,
        );
    }

    let model = match endpoint {
        Endpoint::Model => parts.uri.path().rsplit('/').next().unwrap_or("unknown"),
        _ => match json.get("model") {
            Some(Value::String(m)) => m.as_str(),
            _ if post_body.is_some() && json.is_null() => "unknown",
            _ => "mock-small",
        },
    };
    if let Some(Fault::Outcome(f)) = fault
        && let Some(resp) = f.answer(endpoint, &parts.uri, model)
    {
        return resp;
    }
    if let Some(f) = fault.filter(|f| f.is_status()) {
        return status_fault(f, auth, model, body.len());
    }
    let stream = json.get("stream").and_then(Value::as_bool) == Some(true);
    if fault == Some(Fault::Garbage) {
        return garbage(stream);
    }

    let ids = Ids {
        n: st.next_id.fetch_add(1, Ordering::Relaxed),
        created: unix_now(),
        model: json_str(model),
    };
    let usage = Usage {
        prompt: (body.len() as u64 / 4).max(1),
        completion: match fault {
            Some(Fault::ToolArgs(total)) => total.div_ceil(4),
            _ => st.cfg.tokens as u64,
        },
        fractional: fault == Some(Fault::Fractional),
    };
    let body_fault = match fault {
        Some(Fault::Cut(_)) => BodyFault::Cut,
        Some(Fault::Stall(_)) => BodyFault::Stall,
        _ => BodyFault::None,
    };
    let flavor = match endpoint {
        Endpoint::Chat => Flavor::Chat,
        Endpoint::Completions => Flavor::Completion,
        Endpoint::Responses => Flavor::Responses,
        Endpoint::Embeddings => {
            return match embeddings(&json, &ids, usage) {
                Ok(bytes) => json_body(bytes, body_fault, st.shutdown.clone()),
                Err(msg) => error_response(
                    StatusCode::BAD_REQUEST,
                    msg,
                    "invalid_request_error",
                    Some("input"),
                    None,
                ),
            };
        }
        Endpoint::Models => {
            let bytes = Bytes::from_static(MODELS_JSON.as_bytes());
            return json_body(bytes, body_fault, st.shutdown.clone());
        }
        Endpoint::Model => {
            return match model_object(model) {
                Some(obj) => json_body(Bytes::from(obj), body_fault, st.shutdown.clone()),
                None => status_fault(Fault::NotFound404, auth, model, body.len()),
            };
        }
    };
    let payload = match fault {
        Some(Fault::ToolArgs(total)) => Payload::Args(ArgsGen::new(total)),
        _ => Payload::Text,
    };

    if stream {
        let include_usage = json
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true);
        let stop = match fault {
            Some(Fault::Cut(n)) => Stop::Cut(n),
            Some(Fault::Stall(n)) => Stop::Stall(n),
            Some(Fault::NoDone) => Stop::NoDone,
            _ => Stop::None,
        };
        let sse = Sse::new(&st, flavor, payload, ids, include_usage, usage, stop);
        return sse_response(Body::from_stream(sse.into_stream()));
    }
    match payload {
        Payload::Text => {
            let bytes = text_answer(flavor, &ids, &st.content, usage);
            json_body(bytes, body_fault, st.shutdown.clone())
        }
        Payload::Args(args) => {
            // Generated lazily, fragment by fragment, like the stream.
            let (prefix, suffix) = args_answer_parts(flavor, &ids, usage);
            let pieces = stream::iter(0..args.count())
                .map(move |k| Ok::<_, std::io::Error>(args.piece_bytes(k)));
            let body = stream::iter([Ok(prefix)])
                .chain(pieces)
                .chain(stream::iter([Ok(suffix)]));
            with_content_type(StatusCode::OK, Body::from_stream(body), "application/json")
        }
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: Option<watch::Receiver<bool>>) -> bool {
    match shutdown {
        None => {
            tokio::time::sleep(d).await;
            true
        }
        Some(mut rx) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = rx.wait_for(|stopped| *stopped) => false,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Upstream outcome faults: routes not served, models gone in each provider's shape,
// content filters, proxies' 413/408 pages, 5xx with Retry-After.
// ---------------------------------------------------------------------------------------

/// An upstream outcome fault, optionally on one route only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OutcomeFault {
    kind: OutcomeKind,
    /// The route it applies to; every route when `None`.
    only: Option<Endpoint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutcomeKind {
    UnservedHtml,
    UnservedText,
    UnservedJson,
    MethodNotAllowed,
    NotImplemented,
    Gone(&'static str),
    ContentFilter(&'static str),
    TooLargeHtml,
    Unprocessable,
    TimeoutHtml,
    ServerRetryAfter(u16, u64),
}

const GONE_SHAPES: [&str; 10] = [
    "openai",
    "groq",
    "anthropic",
    "vllm",
    "vllm-nested",
    "azure",
    "gemini",
    "ollama",
    "mistral",
    "410",
];
const FILTER_SHAPES: [&str; 3] = ["openai", "azure", "openrouter"];

impl OutcomeFault {
    const KNOWN: &'static str = "unserved[:ROUTE], unserved-text:ROUTE, unserved-json:ROUTE, \
         405[:ROUTE], 501, gone:SHAPE, content_filter:SHAPE, 413-html, 422, 408-html, 500:S, 503:S";

    fn names(name: &str) -> bool {
        matches!(
            name,
            "unserved"
                | "unserved-text"
                | "unserved-json"
                | "405"
                | "501"
                | "gone"
                | "content_filter"
                | "413-html"
                | "422"
                | "408-html"
                | "500"
                | "503"
        )
    }

    fn parse(name: &str, arg: Option<&str>) -> Option<OutcomeFault> {
        let route = |arg: Option<&str>| -> Option<Option<Endpoint>> {
            Some(match arg {
                None => None,
                Some("chat") => Some(Endpoint::Chat),
                Some("completions") => Some(Endpoint::Completions),
                Some("embeddings") => Some(Endpoint::Embeddings),
                Some("responses") => Some(Endpoint::Responses),
                Some(_) => return None,
            })
        };
        let shape = |list: &[&'static str]| list.iter().copied().find(|s| Some(*s) == arg);
        let every = |kind| Some(OutcomeFault { kind, only: None });
        match (name, arg) {
            ("unserved", _) => Some(OutcomeFault {
                kind: OutcomeKind::UnservedHtml,
                only: route(arg)?,
            }),
            ("unserved-text", _) => Some(OutcomeFault {
                kind: OutcomeKind::UnservedText,
                only: route(arg)?,
            }),
            ("unserved-json", _) => Some(OutcomeFault {
                kind: OutcomeKind::UnservedJson,
                only: route(arg)?,
            }),
            ("405", _) => Some(OutcomeFault {
                kind: OutcomeKind::MethodNotAllowed,
                only: route(arg)?,
            }),
            ("501", None) => every(OutcomeKind::NotImplemented),
            ("gone", Some(_)) => every(OutcomeKind::Gone(shape(&GONE_SHAPES)?)),
            ("content_filter", Some(_)) => {
                every(OutcomeKind::ContentFilter(shape(&FILTER_SHAPES)?))
            }
            ("413-html", None) => every(OutcomeKind::TooLargeHtml),
            ("422", None) => every(OutcomeKind::Unprocessable),
            ("408-html", None) => every(OutcomeKind::TimeoutHtml),
            ("500", Some(s)) => every(OutcomeKind::ServerRetryAfter(500, s.parse().ok()?)),
            ("503", Some(s)) => every(OutcomeKind::ServerRetryAfter(503, s.parse().ok()?)),
            _ => None,
        }
    }

    /// The fault's answer, or `None` on a route it does not apply to.
    fn answer(self, endpoint: Endpoint, uri: &http::Uri, model: &str) -> Option<Response> {
        if self.only.is_some_and(|only| only != endpoint) {
            return None;
        }
        let json = |status: u16, body: String| {
            with_content_type(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
                "application/json",
            )
        };
        let m = json_str(model);
        let bare = model.replace(['"', '\\', '\''], "");
        Some(match self.kind {
            OutcomeKind::UnservedHtml => with_content_type(
                StatusCode::NOT_FOUND,
                "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n",
                "text/html",
            ),
            OutcomeKind::UnservedText => {
                with_content_type(StatusCode::NOT_FOUND, "404 page not found\n", "text/plain; charset=utf-8")
            }
            OutcomeKind::UnservedJson => json(
                404,
                format!(
                    r#"{{"error":{{"message":{},"type":"invalid_request_error","param":null,"code":null}}}}"#,
                    json_str(&format!("Invalid URL (POST {})", uri.path()))
                ),
            ),
            OutcomeKind::MethodNotAllowed => json(405, r#"{"detail":"Method Not Allowed"}"#.into()),
            OutcomeKind::NotImplemented => {
                with_content_type(StatusCode::NOT_IMPLEMENTED, "Not Implemented", "text/plain")
            }
            OutcomeKind::Gone(shape) => match shape {
                "openai" => json(
                    404,
                    format!(
                        r#"{{"error":{{"message":"The model `{bare}` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}}}"#
                    ),
                ),
                "groq" => json(
                    400,
                    format!(
                        r#"{{"error":{{"message":"The model `{bare}` has been decommissioned and is no longer supported.","type":"invalid_request_error","code":"model_decommissioned"}}}}"#
                    ),
                ),
                "anthropic" => json(
                    404,
                    format!(
                        r#"{{"type":"error","error":{{"type":"not_found_error","message":"model: {bare}"}}}}"#
                    ),
                ),
                "vllm" => json(
                    404,
                    format!(
                        r#"{{"object":"error","message":"The model `{bare}` does not exist.","type":"NotFoundError","param":null,"code":404}}"#
                    ),
                ),
                "vllm-nested" => json(
                    404,
                    format!(
                        r#"{{"error":{{"message":"The model `{bare}` does not exist.","type":"NotFoundError","param":"model","code":404}}}}"#
                    ),
                ),
                "azure" => json(
                    404,
                    r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#.into(),
                ),
                "gemini" => json(
                    404,
                    format!(
                        r#"{{"error":{{"code":404,"message":"models/{bare} is not found for API version v1beta, or is not supported for generateContent.","status":"NOT_FOUND"}}}}"#
                    ),
                ),
                "ollama" => json(
                    404,
                    format!(r#"{{"error":"model '{bare}' not found, try pulling it first"}}"#),
                ),
                "mistral" => json(
                    400,
                    format!(
                        r#"{{"object":"error","message":{},"type":"invalid_model","param":null,"code":"1500"}}"#,
                        json_str(&format!("Invalid model: {model}"))
                    ),
                ),
                _ => json(
                    410,
                    format!(
                        r#"{{"error":{{"message":"The model `{bare}` was retired.","type":"invalid_request_error"}}}}"#
                    ),
                ),
            },
            OutcomeKind::ContentFilter(shape) => match shape {
                "openai" => json(
                    400,
                    r#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#.into(),
                ),
                "azure" => json(
                    400,
                    r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"},"violence":{"filtered":false,"severity":"safe"}}}}}"#.into(),
                ),
                _ => json(
                    403,
                    format!(
                        r#"{{"error":{{"code":403,"message":"Input was flagged by moderation.","metadata":{{"reasons":["violence"],"flagged_input":"...","provider_name":"mock","model_slug":{m}}}}}}}"#
                    ),
                ),
            },
            OutcomeKind::TooLargeHtml => with_content_type(
                StatusCode::PAYLOAD_TOO_LARGE,
                "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
                "text/html",
            ),
            OutcomeKind::Unprocessable => json(
                422,
                r#"{"detail":[{"loc":["body","messages"],"msg":"field required","type":"value_error.missing"}]}"#.into(),
            ),
            OutcomeKind::TimeoutHtml => with_content_type(
                StatusCode::REQUEST_TIMEOUT,
                "<html><body><h1>408 Request Time-out</h1>\nYour browser didn't send a complete request in time.\n</body></html>\n",
                "text/html",
            ),
            OutcomeKind::ServerRetryAfter(status, after) => {
                let mut resp = if status == 503 {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                } else {
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "The server had an error while processing your request. Sorry about that!",
                        "server_error",
                        None,
                        None,
                    )
                };
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(after));
                resp
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// Error and fault responses
// ---------------------------------------------------------------------------------------

fn with_content_type(status: StatusCode, body: impl Into<Body>, ct: &'static str) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp
}

/// A JSON string literal (quotes included).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

/// An OpenAI-style error body, keys in OpenAI's order: message, type, param, code.
fn error_response(
    status: StatusCode,
    message: &str,
    typ: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = format!(
        r#"{{"error":{{"message":{},"type":{},"param":{},"code":{}}}}}"#,
        json_str(message),
        json_str(typ),
        json_opt_str(param),
        json_opt_str(code)
    );
    with_content_type(status, body, "application/json")
}

fn mock_usage_error(message: &str, code: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
        Some(code),
    )
}

fn unauthorized(auth: Option<&str>) -> Response {
    let key = auth
        .map(|a| a.strip_prefix("Bearer ").unwrap_or(a))
        .unwrap_or("");
    error_response(
        StatusCode::UNAUTHORIZED,
        &format!(
            "Incorrect API key provided: {key}. You can find your API key at \
             https://platform.example/account/api-keys."
        ),
        "invalid_request_error",
        None,
        Some("invalid_api_key"),
    )
}

fn status_fault(fault: Fault, auth: Option<&str>, model: &str, body_len: usize) -> Response {
    match fault {
        Fault::RateLimit { retry_after } => {
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit exceeded. Retry in {retry_after}s."),
                "rate_limit",
                None,
                Some("rate_limit_exceeded"),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            resp
        }
        Fault::RateLimitOdd => {
            let mut resp = with_content_type(
                StatusCode::TOO_MANY_REQUESTS,
                r#"{"detail":"Too Many Requests","status":429}"#,
                "application/json",
            );
            resp.headers_mut()
                .insert("retry-after-ms", HeaderValue::from_static("6000"));
            resp
        }
        Fault::Server500 => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        Fault::Html500 => with_content_type(
            StatusCode::INTERNAL_SERVER_ERROR,
            "<html><body><h1>500 Internal Server Error</h1></body></html>",
            "text/html",
        ),
        Fault::Text502 => with_content_type(StatusCode::BAD_GATEWAY, "Bad Gateway", "text/plain"),
        Fault::Unavailable503 => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            resp
        }
        Fault::NotFound404 => error_response(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        ),
        Fault::Unauthorized401 => unauthorized(auth),
        Fault::Forbidden403 => with_content_type(
            StatusCode::FORBIDDEN,
            r#"{"error":{"message":"Project does not have access to model","type":"invalid_request_error","code":"model_access_denied"}}"#,
            "application/json",
        ),
        Fault::BadRequest400 => error_response(
            StatusCode::BAD_REQUEST,
            "Invalid request (mock fault 400).",
            "invalid_request_error",
            None,
            None,
        ),
        Fault::ContextLength => error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "This model's maximum context length is 8192 tokens. However, your messages \
                 resulted in {} tokens. Please reduce the length of the messages.",
                (body_len / 4).max(8193)
            ),
            "invalid_request_error",
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        _ => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "mock: not a status fault",
            "server_error",
            None,
            None,
        ),
    }
}

fn garbage(stream: bool) -> Response {
    if stream {
        sse_response(Body::from("data: {not json\n\ndata: [DONE]\n\n"))
    } else {
        with_content_type(
            StatusCode::OK,
            r#"{"id": "chatcmpl-broken", "choices": ["#,
            "application/json",
        )
    }
}

fn sse_response(body: Body) -> Response {
    let mut resp = with_content_type(StatusCode::OK, body, "text/event-stream");
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyFault {
    None,
    Cut,
    Stall,
}

fn cut_error() -> std::io::Error {
    std::io::Error::other("mock_upstream: connection cut (fault)")
}

/// A complete JSON answer, or its first half followed by an abort / a stall.
fn json_body(bytes: Bytes, fault: BodyFault, shutdown: Option<watch::Receiver<bool>>) -> Response {
    let body = match fault {
        BodyFault::None => Body::from(bytes),
        BodyFault::Cut | BodyFault::Stall => {
            let half = bytes.slice(..bytes.len() / 2);
            let stall = fault == BodyFault::Stall;
            let tail = stream::once(async move {
                abort_pause(stall, shutdown).await;
                Err::<Bytes, _>(cut_error())
            });
            Body::from_stream(stream::iter([Ok(half)]).chain(tail))
        }
    };
    with_content_type(StatusCode::OK, body, "application/json")
}

/// How long to wait before aborting a connection: a short pause so that the bytes
/// already written are flushed to the client, or up to 10 minutes for a stall.
async fn abort_pause(stall: bool, shutdown: Option<watch::Receiver<bool>>) {
    let d = if stall {
        Duration::from_secs(600)
    } else {
        Duration::from_millis(20)
    };
    sleep_or_shutdown(d, shutdown).await;
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

const MODELS_JSON: &str = r#"{"object":"list","data":[{"id":"mock-small","object":"model","created":0,"owned_by":"mock"},{"id":"mock-large","object":"model","created":0,"owned_by":"mock"}]}"#;

fn model_object(id: &str) -> Option<String> {
    matches!(id, "mock-small" | "mock-large")
        .then(|| format!(r#"{{"id":"{id}","object":"model","created":0,"owned_by":"mock"}}"#))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Chat,
    Completion,
    Responses,
}

fn write_response_object(
    buf: &mut BytesMut,
    ids: &Ids,
    status: &str,
    output_text: Option<&str>,
    usage: Option<Usage>,
) {
    let _ = write!(
        buf,
        r#"{{"id":"resp_mock_{}","object":"response","created_at":{},"model":{},"status":"{status}","output":["#,
        ids.n, ids.created, ids.model
    );
    if let Some(text) = output_text {
        let _ = write!(
            buf,
            r#"{{"type":"message","id":"msg_mock_{}","role":"assistant","status":"completed","content":[{{"type":"output_text","text":"{text}","annotations":[]}}]}}"#,
            ids.n
        );
    }
    buf.put_slice(b"],\"usage\":");
    match usage {
        Some(u) => u.write(buf, UsageNames::Responses),
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(b"}");
}

/// A non-streaming text answer (`content` is plain ASCII, no escaping needed).
fn text_answer(flavor: Flavor, ids: &Ids, content: &str, usage: Usage) -> Bytes {
    let mut buf = BytesMut::with_capacity(content.len() + 512);
    match flavor {
        Flavor::Chat => {
            let _ = write!(
                buf,
                r#"{{"id":"chatcmpl-mock-{}","object":"chat.completion","created":{},"model":{},"choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":"#,
                ids.n, ids.created, ids.model
            );
            usage.write(&mut buf, UsageNames::Chat);
            buf.put_slice(b"}");
        }
        Flavor::Completion => {
            let _ = write!(
                buf,
                r#"{{"id":"cmpl-mock-{}","object":"text_completion","created":{},"model":{},"choices":[{{"index":0,"text":"{content}","logprobs":null,"finish_reason":"stop"}}],"usage":"#,
                ids.n, ids.created, ids.model
            );
            usage.write(&mut buf, UsageNames::Chat);
            buf.put_slice(b"}");
        }
        Flavor::Responses => {
            write_response_object(&mut buf, ids, "completed", Some(content), Some(usage));
        }
    }
    buf.freeze()
}

/// The JSON around the lazily generated arguments of a non-streaming `tool_args` answer.
fn args_answer_parts(flavor: Flavor, ids: &Ids, usage: Usage) -> (Bytes, Bytes) {
    let mut prefix = BytesMut::with_capacity(512);
    let mut suffix = BytesMut::with_capacity(256);
    match flavor {
        Flavor::Chat => {
            let _ = write!(
                prefix,
                r#"{{"id":"chatcmpl-mock-{}","object":"chat.completion","created":{},"model":{},"choices":[{{"index":0,"message":{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_mock_{}","type":"function","function":{{"name":"mock_tool","arguments":""#,
                ids.n, ids.created, ids.model, ids.n
            );
            suffix.put_slice(br#""}}]},"finish_reason":"tool_calls"}],"usage":"#);
            usage.write(&mut suffix, UsageNames::Chat);
        }
        Flavor::Completion => {
            let _ = write!(
                prefix,
                r#"{{"id":"cmpl-mock-{}","object":"text_completion","created":{},"model":{},"choices":[{{"index":0,"text":""#,
                ids.n, ids.created, ids.model
            );
            suffix.put_slice(br#"","logprobs":null,"finish_reason":"stop"}],"usage":"#);
            usage.write(&mut suffix, UsageNames::Chat);
        }
        Flavor::Responses => {
            let _ = write!(
                prefix,
                r#"{{"id":"resp_mock_{}","object":"response","created_at":{},"model":{},"status":"completed","output":[{{"type":"function_call","id":"fc_mock_{}","call_id":"call_mock_{}","name":"mock_tool","status":"completed","arguments":""#,
                ids.n, ids.created, ids.model, ids.n, ids.n
            );
            suffix.put_slice(br#""}],"usage":"#);
            usage.write(&mut suffix, UsageNames::Responses);
        }
    }
    suffix.put_slice(b"}");
    (prefix.freeze(), suffix.freeze())
}

/// The embeddings answer, or the message of a 400 about `input`.
fn embeddings(json: &Value, ids: &Ids, usage: Usage) -> Result<Bytes, &'static str> {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    match json.get("input") {
        Some(Value::String(s)) => inputs.push(s.as_bytes().to_vec()),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_number) {
                // One input given as token ids.
                inputs.push(Value::Array(items.clone()).to_string().into_bytes());
            } else {
                for item in items {
                    match item {
                        Value::String(s) => inputs.push(s.as_bytes().to_vec()),
                        Value::Array(_) => inputs.push(item.to_string().into_bytes()),
                        _ => return Err("'input' items must be strings."),
                    }
                }
            }
        }
        Some(_) => return Err("'input' must be a string or an array of strings."),
        None => return Err("'input' is a required property."),
    }
    let base64 = json.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut buf = BytesMut::with_capacity(128 + inputs.len() * 160);
    buf.put_slice(br#"{"object":"list","data":["#);
    for (i, input) in inputs.iter().enumerate() {
        if i > 0 {
            buf.put_slice(b",");
        }
        let vector = embed(input);
        let _ = write!(buf, r#"{{"object":"embedding","index":{i},"embedding":"#);
        if base64 {
            let mut raw = [0u8; 32];
            for (chunk, x) in raw.chunks_exact_mut(4).zip(vector) {
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            buf.put_slice(b"\"");
            base64_encode(&raw, &mut buf);
            buf.put_slice(b"\"");
        } else {
            buf.put_slice(b"[");
            for (j, x) in vector.iter().enumerate() {
                if j > 0 {
                    buf.put_slice(b",");
                }
                let _ = write!(buf, "{x}");
            }
            buf.put_slice(b"]");
        }
        buf.put_slice(b"}");
    }
    let _ = write!(buf, r#"],"model":{},"usage":"#, ids.model);
    usage.write(&mut buf, UsageNames::Embeddings);
    buf.put_slice(b"}");
    Ok(buf.freeze())
}

/// A deterministic 8-dimensional "embedding" of `input`, values in [-0.5, 0.5].
fn embed(input: &[u8]) -> [f32; 8] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in input {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    std::array::from_fn(|j| f32::from(((h >> (j * 8)) & 0xff) as u8) / 255.0 - 0.5)
}

fn base64_encode(data: &[u8], out: &mut BytesMut) {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.put_u8(TABLE[(n >> 18) as usize & 63]);
        out.put_u8(TABLE[(n >> 12) as usize & 63]);
        out.put_u8(if chunk.len() > 1 {
            TABLE[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.put_u8(if chunk.len() > 2 {
            TABLE[n as usize & 63]
        } else {
            b'='
        });
    }
}

// ---------------------------------------------------------------------------------------
// Lazily generated tool-call arguments
// ---------------------------------------------------------------------------------------

/// Unescaped bytes of arguments per fragment.
const ARGS_FRAGMENT: u64 = 4096;
const ARGS_HEAD: &[u8] = br#"{"data":""#;
const ARGS_TAIL: &[u8] = br#""}"#;
/// 64 bytes, so that every 4 KiB fragment of pure filler is the same.
const ARGS_FILLER: &[u8; 64] = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do ei";

/// The arguments `{"data":"<filler>"}` of exactly `total` bytes, cut into fragments.
struct ArgsGen {
    total: u64,
    /// One fragment of pure filler (it needs no JSON escaping).
    middle: Bytes,
}

impl ArgsGen {
    fn new(total: u64) -> Self {
        let mut middle = Vec::with_capacity(ARGS_FRAGMENT as usize);
        while middle.len() < ARGS_FRAGMENT as usize {
            middle.extend_from_slice(ARGS_FILLER);
        }
        Self {
            total,
            middle: Bytes::from(middle),
        }
    }

    /// Number of fragments (at least one, possibly empty).
    fn count(&self) -> u64 {
        self.total.div_ceil(ARGS_FRAGMENT).max(1)
    }

    fn structured(&self) -> bool {
        self.total >= (ARGS_HEAD.len() + ARGS_TAIL.len()) as u64
    }

    /// Fragment `k`, JSON-escaped (ready to sit inside a JSON string).
    fn piece_bytes(&self, k: u64) -> Bytes {
        let start = k * ARGS_FRAGMENT;
        let end = (start + ARGS_FRAGMENT).min(self.total);
        if start >= end {
            return Bytes::new();
        }
        let len = (end - start) as usize;
        let filler_only = !self.structured()
            || (start >= ARGS_HEAD.len() as u64 && end <= self.total - ARGS_TAIL.len() as u64);
        if filler_only {
            // `start` is a multiple of 64: the filler phase is 0.
            return self.middle.slice(..len);
        }
        let tail_start = self.total - ARGS_TAIL.len() as u64;
        let mut out = BytesMut::with_capacity(len + 8);
        for p in start..end {
            let c = if p < ARGS_HEAD.len() as u64 {
                ARGS_HEAD[p as usize]
            } else if p >= tail_start {
                ARGS_TAIL[(p - tail_start) as usize]
            } else {
                ARGS_FILLER[(p % 64) as usize]
            };
            if c == b'"' {
                out.put_slice(b"\\\"");
            } else {
                out.put_u8(c);
            }
        }
        out.freeze()
    }
}

// ---------------------------------------------------------------------------------------
// Server-sent event streams
// ---------------------------------------------------------------------------------------

enum Payload {
    Text,
    Args(ArgsGen),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    None,
    Cut(u64),
    Stall(u64),
    NoDone,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Responses API `response.created`.
    Created,
    /// Responses API `response.output_item.added` (function call only).
    ItemAdded,
    Content(u64),
    /// Chat / completions chunk carrying `finish_reason`.
    Finish,
    /// Chat / completions `"choices": []` usage chunk.
    UsageChunk,
    /// `data: [DONE]`, or Responses API `response.completed`.
    Done,
    End,
}

struct Sse {
    flavor: Flavor,
    payload: Payload,
    /// The shared state (for the pre-built `tok0 tok1 ...` text).
    state: AppState,
    ids: Ids,
    /// `data: {"id":...,"choices":[` for chat / completions.
    chunk_prefix: String,
    count: u64,
    include_usage: bool,
    usage: Usage,
    stop: Stop,
    interval: Duration,
    shutdown: Option<watch::Receiver<bool>>,
    phase: Phase,
    seq: u64,
    buf: BytesMut,
    first: bool,
    done: bool,
}

impl Sse {
    fn new(
        st: &AppState,
        flavor: Flavor,
        payload: Payload,
        ids: Ids,
        include_usage: bool,
        usage: Usage,
        stop: Stop,
    ) -> Self {
        let count = match &payload {
            Payload::Text => st.cfg.tokens as u64,
            Payload::Args(args) => args.count(),
        };
        let chunk_prefix = match flavor {
            Flavor::Chat => format!(
                r#"data: {{"id":"chatcmpl-mock-{}","object":"chat.completion.chunk","created":{},"model":{},"choices":["#,
                ids.n, ids.created, ids.model
            ),
            Flavor::Completion => format!(
                r#"data: {{"id":"cmpl-mock-{}","object":"text_completion","created":{},"model":{},"choices":["#,
                ids.n, ids.created, ids.model
            ),
            Flavor::Responses => String::new(),
        };
        Self {
            flavor,
            payload,
            state: Arc::clone(st),
            ids,
            chunk_prefix,
            count,
            include_usage,
            usage,
            stop,
            interval: st.cfg.chunk_interval,
            shutdown: st.shutdown.clone(),
            phase: Phase::Created,
            seq: 0,
            buf: BytesMut::with_capacity(8 * 1024),
            first: true,
            done: false,
        }
    }

    fn successor(&self, p: Phase) -> Phase {
        match p {
            Phase::Created => Phase::ItemAdded,
            Phase::ItemAdded => Phase::Content(0),
            Phase::Content(i) if i + 1 < self.count => Phase::Content(i + 1),
            Phase::Content(_) => Phase::Finish,
            Phase::Finish => Phase::UsageChunk,
            Phase::UsageChunk => Phase::Done,
            Phase::Done | Phase::End => Phase::End,
        }
    }

    fn applies(&self, p: Phase) -> bool {
        let responses = self.flavor == Flavor::Responses;
        match p {
            Phase::Created => responses,
            Phase::ItemAdded => responses,
            Phase::Content(i) => i < self.count,
            Phase::Finish => !responses,
            Phase::UsageChunk => !responses && self.include_usage,
            Phase::Done => self.stop != Stop::NoDone,
            Phase::End => true,
        }
    }

    /// The next phase to emit, or `None` at the end.
    fn next_phase(&mut self) -> Option<Phase> {
        loop {
            let p = self.phase;
            if p == Phase::End {
                return None;
            }
            self.phase = self.successor(p);
            if self.applies(p) {
                return Some(p);
            }
        }
    }

    /// Whether a cut / stall fault triggers instead of emitting `p`.
    fn stops_at(&self, p: Phase) -> Option<bool> {
        let (n, stall) = match self.stop {
            Stop::Cut(n) => (n, false),
            Stop::Stall(n) => (n, true),
            _ => return None,
        };
        let triggers = match p {
            Phase::Created | Phase::ItemAdded => false,
            Phase::Content(i) => i >= n,
            _ => true,
        };
        triggers.then_some(stall)
    }

    fn shutting_down(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|rx| *rx.borrow())
    }

    fn write_piece(&mut self, i: u64) {
        match &self.payload {
            Payload::Text => {
                if i > 0 {
                    self.buf.put_u8(b' ');
                }
                let _ = write!(self.buf, "tok{i}");
            }
            Payload::Args(args) => {
                let piece = args.piece_bytes(i);
                self.buf.put_slice(&piece);
            }
        }
    }

    fn encode(&mut self, p: Phase) {
        let args = matches!(self.payload, Payload::Args(_));
        let n = self.ids.n;
        match (self.flavor, p) {
            (Flavor::Responses, Phase::Created) => {
                let _ = write!(
                    self.buf,
                    "event: response.created\ndata: {{\"type\":\"response.created\",\"sequence_number\":{},\"response\":",
                    self.seq
                );
                write_response_object(&mut self.buf, &self.ids, "in_progress", None, None);
                self.buf.put_slice(b"}\n\n");
            }
            (Flavor::Responses, Phase::ItemAdded) if !args => {
                // The message item and its text part, before any delta: the
                // SDKs' stream helpers index into them.
                let _ = write!(
                    self.buf,
                    "event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"sequence_number\":{},\"output_index\":0,\"item\":{{\"type\":\"message\",\"id\":\"msg_mock_{n}\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}}}\n\n",
                    self.seq
                );
                self.seq += 1;
                let _ = write!(
                    self.buf,
                    "event: response.content_part.added\ndata: {{\"type\":\"response.content_part.added\",\"sequence_number\":{},\"item_id\":\"msg_mock_{n}\",\"output_index\":0,\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}}}\n\n",
                    self.seq
                );
            }
            (Flavor::Responses, Phase::ItemAdded) => {
                let _ = write!(
                    self.buf,
                    "event: response.output_item.added\ndata: {{\"type\":\"response.output_item.added\",\"sequence_number\":{},\"output_index\":0,\"item\":{{\"type\":\"function_call\",\"id\":\"fc_mock_{n}\",\"call_id\":\"call_mock_{n}\",\"name\":\"mock_tool\",\"arguments\":\"\",\"status\":\"in_progress\"}}}}\n\n",
                    self.seq
                );
            }
            (Flavor::Responses, Phase::Content(i)) => {
                if args {
                    let _ = write!(
                        self.buf,
                        "event: response.function_call_arguments.delta\ndata: {{\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":{},\"item_id\":\"fc_mock_{n}\",\"output_index\":0,\"delta\":\"",
                        self.seq
                    );
                } else {
                    let _ = write!(
                        self.buf,
                        "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{},\"item_id\":\"msg_mock_{n}\",\"output_index\":0,\"content_index\":0,\"delta\":\"",
                        self.seq
                    );
                }
                self.write_piece(i);
                self.buf.put_slice(b"\"}\n\n");
            }
            (Flavor::Responses, Phase::Done) => {
                let text = (!args).then_some(self.state.content.as_str());
                if let Some(text) = text {
                    // The text's `.done` events close what `ItemAdded` opened.
                    let _ = write!(
                        self.buf,
                        "event: response.output_text.done\ndata: {{\"type\":\"response.output_text.done\",\"sequence_number\":{},\"item_id\":\"msg_mock_{n}\",\"output_index\":0,\"content_index\":0,\"text\":\"{text}\"}}\n\nevent: response.content_part.done\ndata: {{\"type\":\"response.content_part.done\",\"sequence_number\":{},\"item_id\":\"msg_mock_{n}\",\"output_index\":0,\"content_index\":0,\"part\":{{\"type\":\"output_text\",\"text\":\"{text}\",\"annotations\":[]}}}}\n\nevent: response.output_item.done\ndata: {{\"type\":\"response.output_item.done\",\"sequence_number\":{},\"output_index\":0,\"item\":{{\"type\":\"message\",\"id\":\"msg_mock_{n}\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{{\"type\":\"output_text\",\"text\":\"{text}\",\"annotations\":[]}}]}}}}\n\n",
                        self.seq,
                        self.seq + 1,
                        self.seq + 2
                    );
                    self.seq += 3;
                }
                let _ = write!(
                    self.buf,
                    "event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":{},\"response\":",
                    self.seq
                );
                write_response_object(
                    &mut self.buf,
                    &self.ids,
                    "completed",
                    text,
                    Some(self.usage),
                );
                self.buf.put_slice(b"}\n\n");
            }
            (_, Phase::Done) => self.buf.put_slice(b"data: [DONE]\n\n"),
            (flavor, Phase::Content(i)) => {
                self.buf.put_slice(self.chunk_prefix.as_bytes());
                match (flavor, args, i) {
                    (Flavor::Chat, false, 0) => self
                        .buf
                        .put_slice(br#"{"index":0,"delta":{"role":"assistant","content":""#),
                    (Flavor::Chat, false, _) => {
                        self.buf.put_slice(br#"{"index":0,"delta":{"content":""#)
                    }
                    (Flavor::Chat, true, 0) => {
                        let _ = write!(
                            self.buf,
                            r#"{{"index":0,"delta":{{"role":"assistant","content":null,"tool_calls":[{{"index":0,"id":"call_mock_{n}","type":"function","function":{{"name":"mock_tool","arguments":""#
                        );
                    }
                    (Flavor::Chat, true, _) => self.buf.put_slice(
                        br#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":""#,
                    ),
                    _ => self.buf.put_slice(br#"{"index":0,"text":""#),
                }
                self.write_piece(i);
                match (flavor, args) {
                    (Flavor::Chat, false) => {
                        self.buf.put_slice(b"\"},\"finish_reason\":null}]}\n\n")
                    }
                    (Flavor::Chat, true) => {
                        self.buf.put_slice(b"\"}}]},\"finish_reason\":null}]}\n\n")
                    }
                    _ => self
                        .buf
                        .put_slice(b"\",\"logprobs\":null,\"finish_reason\":null}]}\n\n"),
                }
            }
            (flavor, Phase::Finish) => {
                self.buf.put_slice(self.chunk_prefix.as_bytes());
                let reason = if args { "tool_calls" } else { "stop" };
                if flavor == Flavor::Chat {
                    let _ = write!(
                        self.buf,
                        r#"{{"index":0,"delta":{{}},"finish_reason":"{reason}"}}]}}"#
                    );
                } else {
                    self.buf.put_slice(
                        br#"{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]}"#,
                    );
                }
                self.buf.put_slice(b"\n\n");
            }
            (_, Phase::UsageChunk) => {
                self.buf.put_slice(self.chunk_prefix.as_bytes());
                self.buf.put_slice(b"],\"usage\":");
                self.usage.write(&mut self.buf, UsageNames::Chat);
                self.buf.put_slice(b"}\n\n");
            }
            // Not emitted for these flavors (see `applies`).
            (_, Phase::Created | Phase::ItemAdded | Phase::End) => {}
        }
        self.seq += 1;
    }

    async fn step(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let Some(phase) = self.next_phase() else {
            self.done = true;
            return None;
        };
        if !self.first
            && !self.interval.is_zero()
            && !sleep_or_shutdown(self.interval, self.shutdown.clone()).await
        {
            self.done = true;
            return Some(Err(std::io::Error::other("mock_upstream: shutting down")));
        }
        self.first = false;
        if self.shutting_down() {
            self.done = true;
            return Some(Err(std::io::Error::other("mock_upstream: shutting down")));
        }
        if let Some(stall) = self.stops_at(phase) {
            abort_pause(stall, self.shutdown.clone()).await;
            self.done = true;
            return Some(Err(cut_error()));
        }
        self.encode(phase);
        Some(Ok(self.buf.split().freeze()))
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        stream::unfold(self, |mut sse| async move {
            let item = sse.step().await?;
            Some((item, sse))
        })
    }
}

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

const USAGE: &str = "\
mock_upstream: an OpenAI-compatible mock upstream with per-request fault injection

USAGE:
    cargo run --example mock_upstream -- [OPTIONS]

OPTIONS:
    --listen ADDR            address to listen on [default: 127.0.0.1:9000]
    --latency-ms N           delay before the response headers [default: 0]
    --tokens N               content tokens per answer / stream [default: 16]
    --chunk-interval-ms N    delay between stream events [default: 0]
    --require-key KEY        require `Authorization: Bearer KEY` on /v1/* (else 401)
    -h, --help               print this help

Faults per request: header `x-mock-fault` or body field \"mock_fault\":
    429 | 429:S | 429-odd | 500 | 500-html | 502-text | 503 | 404 | 401 | 403 | 400 |
    context_length | delay:MS | cut:N | stall:N | no_done | garbage | fractional |
    tool_args:BYTES (e.g. tool_args:200MiB)
Latency per request: header `x-mock-latency-ms` or body field \"mock_latency_ms\".
See the header of examples/mock_upstream.rs for the full table.";

struct Cli {
    listen: SocketAddr,
    cfg: MockConfig,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Cli>, String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 9000).into();
    let mut cfg = MockConfig::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("missing value for {flag}"))?,
        };
        let number = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("invalid value for {flag}: `{v}` (expected a number)"))
        };
        match flag.as_str() {
            "--listen" => {
                listen = value
                    .parse()
                    .map_err(|_| format!("invalid value for --listen: `{value}`"))?;
            }
            "--latency-ms" => cfg.latency = Duration::from_millis(number(&value)?),
            "--tokens" => cfg.tokens = number(&value)? as usize,
            "--chunk-interval-ms" => cfg.chunk_interval = Duration::from_millis(number(&value)?),
            "--require-key" => cfg.require_key = Some(value),
            _ => return Err(format!("unknown argument `{arg}`")),
        }
    }
    Ok(Some(Cli { listen, cfg }))
}

/// Runs the mock until Ctrl-C (the example's and `tollgate-mock`'s entry).
#[tokio::main]
pub async fn main() {
    let cli = match parse_args(std::env::args().skip(1)) {
        Ok(Some(cli)) => cli,
        Ok(None) => {
            println!("{USAGE}");
            return;
        }
        Err(err) => {
            eprintln!("error: {err}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", cli.listen);
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(cli.listen);
    let (tx, rx) = watch::channel(false);
    let app = build_router(cli.cfg, RequestLog::default(), Some(rx.clone()));
    println!("mock_upstream listening on http://{addr}/v1");
    let server = tokio::spawn(serve(listener, app, rx));
    let _ = tokio::signal::ctrl_c().await;
    tx.send_replace(true);
    let _ = server.await;
}
