//! The full stack over the real `Provider`, against an in-process upstream
//! on loopback that answers both families at once: what the provider's own
//! work (the body's `model` rewrite, `SseCheck`, the stream-end check, the
//! translation) costs per family, measured side by side.
//!
//! - `stack/upstream/<variant>` (criterion): the gateway's inference stack
//!   (`inference_stack!`, as `build()` makes it) over `Config::router()`,
//!   whose providers forward over pooled loopback HTTP/1.1 to the canned
//!   upstream below. Variants, each a ~1 KiB request, answer (`json`) or
//!   stream (`sse`):
//!   - `openai_*`: an OpenAI chat client on an OpenAI-API deployment (pass-through);
//!   - `anthropic_*`: an Anthropic Messages client on an Anthropic-API
//!     deployment (pass-through);
//!   - `chat_to_anthropic_*`: an OpenAI chat client on an Anthropic-API
//!     deployment (translated both ways);
//!   - `messages_to_openai_*`: an Anthropic client on an OpenAI-API
//!     deployment (translated both ways).
//! - `stack/ratio` (after criterion, in the same run): each pair of
//!   [`PAIRS`] timed in alternating rounds (`TOLLGATE_BENCH_RATIO_ROUNDS`
//!   rounds, default 12, of `TOLLGATE_BENCH_RATIO_REQUESTS` requests per
//!   side, default 2,000; the side that goes first alternates), printing
//!   each side's time per request (median over rounds), the ratio of the
//!   two (median, min and max of the rounds' ratios) and the difference in
//!   µs per request.
//!
//! The upstream answers the same content in both families: the text
//! "Hello! How can I help you today?", 260 input and 9 output tokens; a
//! stream sends it as 5 text deltas, one HTTP chunk (so one frame at the
//! gateway) per event: OpenAI's 9 events (role, 5 content, finish, usage,
//! `[DONE]`) and Anthropic's 10 (`message_start`, `content_block_start`, 5
//! `content_block_delta`, `content_block_stop`, `message_delta`,
//! `message_stop`; no `ping`). It runs on the bench's current-thread
//! runtime, so its own work (hyper's server, reading the request) is in
//! every figure, about the same on every path.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tollgate::Body;
use tollgate::config::Config;
use tollgate::keys::Keyring;

use crate::{BENCH_KEY, chat_body};

const OPENAI_ANSWER: &str = crate::ANSWER;

const ANTHROPIC_ANSWER: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"upstream-model","content":[{"type":"text","text":"Hello! How can I help you today?"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":260,"output_tokens":9}}"#;

const OPENAI_EVENTS: [&str; 9] = crate::EVENTS;

const ANTHROPIC_EVENTS: [&str; 10] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"upstream-model\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":260,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! How\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" can I\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" help you\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" today?\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

/// A body of one frame per part (one HTTP chunk each on the wire).
struct Parts(std::collections::VecDeque<&'static [u8]>);

impl http_body::Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|part| Ok(http_body::Frame::data(Bytes::from_static(part)))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// The canned upstream's answer to one request: by path (`/v1/messages` is
/// Anthropic's, anything else OpenAI's chat), a stream when the body asks
/// for one.
async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Parts>, Infallible> {
    let anthropic = req.uri().path().ends_with("/messages");
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let stream = body
        .as_ref()
        .is_ok_and(|b| memchr::memmem::find(b, b"\"stream\":true").is_some());
    let (content_type, parts): (&str, Vec<&'static str>) = match (anthropic, stream) {
        (false, false) => ("application/json", vec![OPENAI_ANSWER]),
        (true, false) => ("application/json", vec![ANTHROPIC_ANSWER]),
        (false, true) => ("text/event-stream", OPENAI_EVENTS.to_vec()),
        (true, true) => ("text/event-stream", ANTHROPIC_EVENTS.to_vec()),
    };
    let mut res = Response::builder().header(CONTENT_TYPE, content_type);
    if !stream {
        res = res.header(CONTENT_LENGTH, parts[0].len());
    }
    Ok(res
        .body(Parts(parts.into_iter().map(str::as_bytes).collect()))
        .unwrap())
}

/// Serves the canned upstream on 127.0.0.1 (HTTP/1.1) on the current
/// runtime until the process ends.
pub async fn spawn() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(answer);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http1_only()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// The gateway's config for the upstream paths: the instant stack's (key,
/// rate limits, budgets, fair queue) with two groups, `openai` and
/// `anthropic`, of one deployment each on the canned upstream, each
/// rewriting `model` to `upstream-model`.
fn config(upstream: SocketAddr) -> Config {
    let text = format!(
        r#"
[keys]
store = "memory"
[[keys.static]]
key_env = "TOLLGATE_BENCH_KEY"
models = ["openai", "anthropic"]
max_budget = 1000000000.0
budget_duration = "monthly"

[rate_limits]
requests_per_minute = 4000000000
tokens_per_minute = 4294967295
default_max_output_tokens = 1024

[budgets]
global_max_usd = 1000000000.0
global_period = "monthly"

[fair_queue]
capacity = 64

[[groups]]
name = "openai"
price_in_per_mtok = 2.5
price_out_per_mtok = 10.0
[[groups.deployments]]
provider = "openai-api"
api = "openai"
base_url = "http://{upstream}/v1"
model = "upstream-model"

[[groups]]
name = "anthropic"
price_in_per_mtok = 3.0
price_out_per_mtok = 15.0
[[groups.deployments]]
provider = "anthropic-api"
api = "anthropic"
base_url = "http://{upstream}/v1"
model = "upstream-model"
"#
    );
    Config::from_toml("bench-upstream.toml", &text).unwrap()
}

/// A Messages request of about `size` bytes for model group `model`,
/// carrying the same text as [`chat_body`]'s.
fn messages_body(model: &str, size: usize, stream: bool) -> Bytes {
    let chat = chat_body(size, stream);
    let chat: serde_json::Value = serde_json::from_slice(&chat).unwrap();
    let text = chat["messages"][1]["content"].as_str().unwrap();
    let body = serde_json::json!({
        "model": model,
        "stream": stream,
        "max_tokens": 256,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": text}],
    });
    Bytes::from(body.to_string())
}

/// A chat request like [`chat_body`]'s for model group `model`.
fn chat_for(model: &str, size: usize, stream: bool) -> Bytes {
    let body = chat_body(size, stream);
    let s = std::str::from_utf8(&body).unwrap();
    Bytes::from(s.replacen("\"model\":\"g\"", &format!("\"model\":\"{model}\""), 1))
}

/// One upstream path: its name, route and body.
pub struct Variant {
    pub name: &'static str,
    path: &'static str,
    body: Bytes,
}

/// Every upstream path, each ~1 KiB, answer and stream.
pub fn variants() -> Vec<Variant> {
    let mut out = Vec::new();
    for stream in [false, true] {
        let v = |name: &'static str, path, body| Variant { name, path, body };
        let pick = |json, sse| if stream { sse } else { json };
        out.push(v(
            pick("openai_json", "openai_sse"),
            "/v1/chat/completions",
            chat_for("openai", 1024, stream),
        ));
        out.push(v(
            pick("anthropic_json", "anthropic_sse"),
            "/v1/messages",
            messages_body("anthropic", 1024, stream),
        ));
        out.push(v(
            pick("chat_to_anthropic_json", "chat_to_anthropic_sse"),
            "/v1/chat/completions",
            chat_for("anthropic", 1024, stream),
        ));
        out.push(v(
            pick("messages_to_openai_json", "messages_to_openai_sse"),
            "/v1/messages",
            messages_body("openai", 1024, stream),
        ));
    }
    out
}

/// The pairs the ratio pass compares: (measured, against), each ratio
/// measured / against.
pub const PAIRS: [(&str, &str); 6] = [
    ("anthropic_json", "openai_json"),
    ("anthropic_sse", "openai_sse"),
    ("chat_to_anthropic_json", "openai_json"),
    ("chat_to_anthropic_sse", "openai_sse"),
    ("messages_to_openai_json", "anthropic_json"),
    ("messages_to_openai_sse", "anthropic_sse"),
];

/// What the upstream stacks are built from (the spend writer and the
/// recorder are the instant stack's `Env`'s).
pub struct UpEnv {
    config: Config,
    keyring: Keyring,
    auth: HeaderValue,
}

impl UpEnv {
    /// Starts the canned upstream and reads the config pointing at it.
    pub async fn start() -> UpEnv {
        let upstream = spawn().await;
        let config = config(upstream);
        let keyring = config.keyring().await.unwrap();
        UpEnv {
            config,
            keyring,
            auth: HeaderValue::from_str(&format!("Bearer {BENCH_KEY}")).unwrap(),
        }
    }

    /// The client's request of `v`.
    pub fn http(&self, v: &Variant) -> Request<Body> {
        let mut req = Request::post(v.path)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, v.body.len())
            .header(AUTHORIZATION, self.auth.clone());
        if v.path == "/v1/messages" {
            req = req.header("anthropic-version", "2023-06-01");
        }
        req.body(Body::full(v.body.clone())).unwrap()
    }

    /// The config the upstream stacks are built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The keyring of the config's static key.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }
}

/// The gateway's inference stack over the config's real providers, as
/// `build()` makes it (`record_key` must be in scope where it is used).
macro_rules! upstream_stack {
    ($env:expr, $up:expr) => {{
        let env: &$crate::Env = $env;
        let up: &$crate::upstream::UpEnv = $up;
        let config = up.config();
        env.with_recorder(|| {
            let fair_queue = $crate::gateway::fair_queue(config);
            assert!(fair_queue.is_some());
            #[cfg(feature = "redis")]
            let rate_limit = $crate::gateway::rate_limit(config, None);
            #[cfg(not(feature = "redis"))]
            let rate_limit = $crate::gateway::rate_limit(config);
            inference_stack!(
                tollgate::keys::VirtualKeysLayer::new(up.keyring().clone()),
                config.server.max_body_bytes,
                $crate::gateway::telemetry(config).unwrap().0,
                rate_limit,
                $crate::gateway::budget(
                    config,
                    $crate::store(config.ledger()),
                    Some(env.writer.clone())
                ),
                fair_queue,
                config.fallback_layer().unwrap(),
                config.router().unwrap()
            )
        })
    }};
}

/// Checks that `svc` answers `v` as it should: the whole text, in the
/// client's family, ending with its family's last event, no error. A path
/// that broke would otherwise be timed as a fast error.
pub async fn check<S, B>(svc: &S, up: &UpEnv, v: &Variant)
where
    S: tower::Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let res = svc.clone().oneshot(up.http(v)).await.unwrap();
    assert_eq!(res.status(), 200, "{}", v.name);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    let anthropic_client = v.path == "/v1/messages";
    let whole = if v.name.ends_with("_sse") {
        let deltas = ["Hello", "! How", " can I", " help you", " today?"];
        let last = if anthropic_client {
            "event: message_stop"
        } else {
            "data: [DONE]"
        };
        deltas.iter().all(|d| text.contains(&format!("\"{d}\"")))
            && text
                .trim_end()
                .rsplit("\n\n")
                .next()
                .unwrap()
                .starts_with(last)
    } else {
        let shape = if anthropic_client {
            "\"type\":\"message\""
        } else {
            "\"object\":\"chat.completion\""
        };
        text.contains("Hello! How can I help you today?") && text.contains(shape)
    };
    assert!(whole && !text.contains("error"), "{}: {text}", v.name);
}

/// The variant named `name`.
pub fn variant(name: &str) -> Option<Variant> {
    variants().into_iter().find(|v| v.name == name)
}
