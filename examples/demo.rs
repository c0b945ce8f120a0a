//! The reference gateway on the demo config, with the bundled mock upstream:
//! no provider keys, everything on loopback.
//!
//! ```text
//! cargo run --example demo
//! curl -s localhost:4000/v1/chat/completions -H 'content-type: application/json' \
//!      -H "Authorization: Bearer $TOLLGATE_DEMO_KEY" \
//!      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Starts the mock upstream (`examples/mock_upstream.rs`) on 127.0.0.1:9000
//! and the gateway (`examples/gateway.rs`) with `examples/demo.toml` on
//! 127.0.0.1:4000. Ctrl-C stops both.
//!
//! When they are not set, the demo sets `TOLLGATE_DEMO_KEY` (a static key
//! with every grant) and `TOLLGATE_MASTER_KEY` (the admin API's) to the
//! loopback-only demo values [`DEMO_KEY`] and [`DEMO_MASTER_KEY`], and
//! prints them. Keys made through the admin API are kept in
//! `tollgate-demo.db` in the working directory.

#[path = "gateway.rs"]
mod gateway;
#[path = "mock_upstream.rs"]
mod mock_upstream;

use std::future::IntoFuture;
use std::time::Duration;

/// The demo's static key: public, for loopback demos only.
pub const DEMO_KEY: &str = "tg-demo-DemoKeyForLoopbackOnly0000";
/// The demo's admin master key: public, for loopback demos only.
pub const DEMO_MASTER_KEY: &str = "demo-master-key-for-loopback-only";

fn main() {
    for (var, value) in [
        ("TOLLGATE_DEMO_KEY", DEMO_KEY),
        ("TOLLGATE_MASTER_KEY", DEMO_MASTER_KEY),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: no other thread exists yet (the runtime starts below).
            unsafe { std::env::set_var(var, value) };
            eprintln!("demo: {var}={value}");
        }
    }
    eprintln!(
        "demo: the console is at http://127.0.0.1:4000/ui (log in with TOLLGATE_MASTER_KEY's value)"
    );
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(run());
}

async fn run() {
    gateway::init_tracing();
    let mock = mock_upstream::MockConfig {
        chunk_interval: Duration::from_millis(20),
        ..Default::default()
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:9000").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot start the mock upstream on 127.0.0.1:9000: {e}");
            std::process::exit(1);
        }
    };
    let app = mock_upstream::router(mock, mock_upstream::RequestLog::default());
    tokio::spawn(axum::serve(listener, app).into_future());
    tracing::info!("mock upstream listening on 127.0.0.1:9000");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml");
    let config = match tollgate::config::Config::from_file(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = gateway::run(config).await {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}
