//! Shared scaffolding for the integration tests: the real mock upstream and
//! the real reference gateway (both included from `examples/`), on 127.0.0.1
//! with port 0, a log capture, and the secret-leak check.
#![allow(dead_code)]

#[path = "../../examples/gateway.rs"]
pub mod gateway;
#[path = "../../examples/mock_upstream.rs"]
pub mod mock_upstream;
pub mod processes;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

pub use mock_upstream::{MockConfig, MockServer};
use tollgate::config::Config;
use tollgate::router::{Clock, SystemClock};

/// The key clients present: a static key with every grant, added to a test
/// config that has no `[keys]` section of its own (see [`gateway`]). It must
/// never be forwarded or echoed.
pub const CLIENT_KEY: &str = "tg-client01-c1i3ntS3cr3tV4lu3Th4tMustN3v3rL34k";
pub const CLIENT_KEY_ENV: &str = "TOLLGATE_TEST_CLIENT_KEY";
/// The admin API's master key, for configs with `master_key_env = "{master_env}"`.
pub const MASTER_KEY: &str = "master-m4st3rK3yTh4tMustN3v3rL34k";
pub const MASTER_KEY_ENV: &str = "TOLLGATE_TEST_MASTER_KEY";

/// More clients' keys, for tests with several tenants, by the variable a
/// `[[keys.static]]` entry reads them from (`key_env`).
pub const EXTRA_KEYS: [(&str, &str); 3] = [
    (
        "TOLLGATE_TEST_KEY_HEAVY",
        "tg-heavy-h3avyS3cr3tV4lu3Th4tMustN3v3rL34kXyZ",
    ),
    (
        "TOLLGATE_TEST_KEY_LIGHT",
        "tg-light-l1ghtS3cr3tV4lu3Th4tMustN3v3rL34kXyZ",
    ),
    (
        "TOLLGATE_TEST_KEY_OTHER",
        "tg-other-0th3rS3cr3tV4lu3Th4tMustN3v3rL34kXyZ",
    ),
];
/// The upstream key the gateway holds (from the environment).
pub const UPSTREAM_KEY: &str = "sk-upstream-0pen41Upstr34mK3yTh4tMustN3v3rL34k";
pub const UPSTREAM_KEY_ENV: &str = "TOLLGATE_TEST_UPSTREAM_KEY";

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
static INIT: Once = Once::new();

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get_or_init(Default::default)
            .lock()
            .unwrap()
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Once per test binary: capture every log line (debug and up, every crate),
/// and put the upstream key in the environment before any config reads it.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: runs once, before any test reads the environment: every
        // test calls `init()` first, and `call_once` blocks them until done.
        unsafe {
            std::env::set_var(UPSTREAM_KEY_ENV, UPSTREAM_KEY);
            std::env::set_var(CLIENT_KEY_ENV, CLIENT_KEY);
            std::env::set_var(MASTER_KEY_ENV, MASTER_KEY);
            for (var, key) in EXTRA_KEYS {
                std::env::set_var(var, key);
            }
            // What `cargo run --example demo` sets, so `examples/demo.toml` loads.
            std::env::set_var("TOLLGATE_DEMO_KEY", "tg-demo-DemoKeyForLoopbackOnly0000");
            std::env::set_var("TOLLGATE_MASTER_KEY", "demo-master-key-for-loopback-only");
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get_or_init(Default::default).lock().unwrap()).into_owned()
}

/// Fails if any text (bodies, headers, logs) contains a secret or a part of one.
pub fn assert_no_secrets(what: &str, text: &str) {
    let client_secret = CLIENT_KEY.rsplit('-').next().unwrap();
    let upstream_secret = UPSTREAM_KEY.rsplit('-').next().unwrap();
    let master_secret = MASTER_KEY.rsplit('-').next().unwrap();
    for needle in [
        CLIENT_KEY,
        client_secret,
        UPSTREAM_KEY,
        upstream_secret,
        master_secret,
    ] {
        assert!(
            !text.contains(needle),
            "{what} leaks a secret ({needle}):\n{text}"
        );
    }
}

pub async fn mock() -> MockServer {
    init();
    mock_upstream::spawn(MockConfig::default())
        .await
        .expect("mock upstream starts")
}

/// A port on 127.0.0.1 where nothing listens.
pub async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The spend writer (with `[budgets]`): flushed by a graceful shutdown.
    pub spend: Option<tollgate::budget::SpendWriter>,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Asks for a graceful shutdown (as SIGTERM would).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the reference gateway with `toml` (where `{mock}` is replaced by
/// the mock's base URL) on 127.0.0.1:0. A config without `[keys]` gets an
/// in-memory store and [`CLIENT_KEY`] as a static key with every grant.
pub async fn gateway(toml: &str, mock: &MockServer) -> Gateway {
    gateway_with_grace(toml, mock, Duration::from_secs(5)).await
}

pub async fn gateway_with_grace(toml: &str, mock: &MockServer, grace: Duration) -> Gateway {
    start_gateway(toml, mock, grace, Arc::new(SystemClock)).await
}

/// Starts the reference gateway with its cooldowns measured on `clock`.
pub async fn gateway_with_clock(toml: &str, mock: &MockServer, clock: Arc<dyn Clock>) -> Gateway {
    start_gateway(toml, mock, Duration::from_secs(5), clock).await
}

/// Starts the reference gateway with its budgets kept in `ledger` (a clone
/// the test keeps reads the spend).
pub async fn gateway_with_ledger(
    toml: &str,
    mock: &MockServer,
    ledger: tollgate::budget::Ledger,
) -> Gateway {
    start(
        toml,
        mock,
        Duration::from_secs(5),
        Arc::new(SystemClock),
        Some(ledger),
    )
    .await
}

async fn start_gateway(
    toml: &str,
    mock: &MockServer,
    grace: Duration,
    clock: Arc<dyn Clock>,
) -> Gateway {
    start(toml, mock, grace, clock, None).await
}

async fn start(
    toml: &str,
    mock: &MockServer,
    grace: Duration,
    clock: Arc<dyn Clock>,
    ledger: Option<tollgate::budget::Ledger>,
) -> Gateway {
    init();
    let mut text = toml
        .replace("{mock}", &mock.base_url())
        .replace("{key_env}", UPSTREAM_KEY_ENV)
        .replace("{master_env}", MASTER_KEY_ENV);
    if !text.contains("[keys]") {
        text.push_str(&format!(
            "\n[keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n"
        ));
    }
    let config = Config::from_toml("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let ledger = ledger.unwrap_or_else(|| config.ledger());
    let built = gateway::build(&config, clock, ledger)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let spend = built.spend.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway::serve_and_flush(
        listener,
        built,
        async move {
            let _ = rx.await;
        },
        grace,
    ));
    Gateway {
        addr,
        stop: Some(tx),
        task,
        spend,
    }
}

/// A client that presents [`CLIENT_KEY`] unless a request sets its own
/// `Authorization`.
pub fn http() -> reqwest::Client {
    let mut auth: reqwest::header::HeaderValue = format!("Bearer {CLIENT_KEY}").parse().unwrap();
    auth.set_sensitive(true);
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(
            [(reqwest::header::AUTHORIZATION, auth)]
                .into_iter()
                .collect(),
        )
        .build()
        .unwrap()
}

/// A client that presents no key.
pub fn anonymous() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Checks the error contract: status = code, a type, a reason.
    pub fn error(&self, status: u16, reason: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["error"]["code"], status, "{}", self.body);
        assert_eq!(v["error"]["metadata"]["reason"], reason, "{}", self.body);
        assert!(
            v["error"]["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("_error") || t == "insufficient_quota")
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(self.headers["content-type"], "application/json");
        let all = format!("{:?}\n{}", self.headers, self.body);
        assert_no_secrets("an error answer", &all);
        v
    }
}

/// Reads a whole answer, checking it for every secret the tests know.
pub async fn read_answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap_or_default();
    assert_no_secrets("an answer", &format!("{headers:?}\n{body}"));
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs raw bytes with the client key, reading the whole answer.
pub async fn post(url: &str, body: impl Into<reqwest::Body>) -> Answer {
    post_as(url, CLIENT_KEY, body).await
}

/// POSTs raw bytes presenting `key`, reading the whole answer.
pub async fn post_as(url: &str, key: &str, body: impl Into<reqwest::Body>) -> Answer {
    let res = http()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request sent");
    read_answer(res).await
}

/// An Anthropic client's request: `body` posted to `url` with `key` as
/// `x-api-key` and an `anthropic-version`.
pub async fn post_messages_as(url: &str, key: &str, body: impl Into<reqwest::Body>) -> Answer {
    let res = anonymous()
        .post(url)
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    read_answer(res).await
}

/// A gateway's address: in this process ([`Gateway`]) or another
/// ([`processes::GatewayProcess`]).
pub trait GatewayUrl {
    /// `http://ADDR` + `path`.
    fn url(&self, path: &str) -> String;
}

impl GatewayUrl for Gateway {
    fn url(&self, path: &str) -> String {
        Gateway::url(self, path)
    }
}

/// A virtual key made through the admin API with the master key, from
/// `/key/generate`'s JSON `fields`: its secret and its id.
pub async fn generate_key(gw: &impl GatewayUrl, fields: serde_json::Value) -> (String, String) {
    let res = anonymous()
        .post(gw.url("/key/generate"))
        .bearer_auth(MASTER_KEY)
        .json(&fields)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = res.json().await.unwrap();
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k}: {v}"))
            .to_owned()
    };
    (field("key"), field("key_id"))
}

/// A chat body for `model`, with optional extra top-level JSON members.
pub fn chat(model: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say hello."}}]{extra}}}"#)
}

pub async fn spawn_server(listener: tokio::net::TcpListener, app: axum::Router) {
    tokio::spawn(axum::serve(listener, app).into_future());
}

/// The `data:` payloads of an SSE body, in order.
pub fn events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.trim().strip_prefix("data:").map(|d| d.trim().to_owned()))
        .collect()
}

/// Asserts that a stream failed after its content the way the contract
/// says: an error event (code 502, `reason`), a chunk with
/// `finish_reason: "error"`, then `[DONE]`. Returns the events.
pub fn assert_ended_by_error(body: &str, reason: &str) -> Vec<String> {
    let ev = events(body);
    let n = ev.len();
    assert!(n >= 3, "{body}");
    assert_eq!(ev[n - 1], "[DONE]", "{body}");
    let finish: serde_json::Value = serde_json::from_str(&ev[n - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "error", "{body}");
    let err: serde_json::Value = serde_json::from_str(&ev[n - 3]).unwrap();
    assert_eq!(err["error"]["code"], 502, "{body}");
    assert_eq!(err["error"]["metadata"]["reason"], reason, "{body}");
    ev
}

/// The SSE events of a stream in Anthropic's framing (also any framing
/// with `event:` lines): `(event name, data)`, every data JSON.
pub fn named_events(body: &str) -> Vec<(String, serde_json::Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = serde_json::Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = serde_json::from_str(d.trim())
                        .unwrap_or_else(|err| panic!("not JSON ({err}): {d}"));
                }
            }
            (name, data)
        })
        .collect()
}
