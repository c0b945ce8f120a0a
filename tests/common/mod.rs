//! Shared scaffolding for the integration tests: the real mock upstream and
//! the real reference gateway (both included from `examples/`), on 127.0.0.1
//! with port 0, a log capture, and the secret-leak check.
#![allow(dead_code)]

#[path = "../../examples/gateway.rs"]
pub mod gateway;
#[path = "../../examples/mock_upstream.rs"]
pub mod mock_upstream;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

pub use mock_upstream::{MockConfig, MockServer};
use tollgate::config::Config;

/// The key clients present. The gateway has no key store yet; it must still
/// never forward or echo what the client sent.
pub const CLIENT_KEY: &str = "tg-client01-c1i3ntS3cr3tV4lu3Th4tMustN3v3rL34k";
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
        unsafe { std::env::set_var(UPSTREAM_KEY_ENV, UPSTREAM_KEY) };
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
    for needle in [CLIENT_KEY, client_secret, UPSTREAM_KEY, upstream_secret] {
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
/// the mock's base URL) on 127.0.0.1:0.
pub async fn gateway(toml: &str, mock: &MockServer) -> Gateway {
    gateway_with_grace(toml, mock, Duration::from_secs(5)).await
}

pub async fn gateway_with_grace(toml: &str, mock: &MockServer, grace: Duration) -> Gateway {
    init();
    let text = toml
        .replace("{mock}", &mock.base_url())
        .replace("{key_env}", UPSTREAM_KEY_ENV);
    let config = Config::from_toml("test.toml", &text).unwrap_or_else(|e| panic!("{e}"));
    let app = gateway::app(&config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway::serve(
        listener,
        app,
        async move {
            let _ = rx.await;
        },
        grace,
    ));
    Gateway {
        addr,
        stop: Some(tx),
        task,
    }
}

pub fn http() -> reqwest::Client {
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
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
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
