//! The reference gateway on the demo config, with the bundled mock upstream:
//! no provider keys, everything on loopback.
//!
//! ```text
//! cargo run --example demo
//! curl -s localhost:4000/v1/chat/completions -H 'content-type: application/json' \
//!      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Starts the mock upstream (`examples/mock_upstream.rs`) on 127.0.0.1:9000
//! and the gateway (`examples/gateway.rs`) with `examples/demo.toml` on
//! 127.0.0.1:4000. Ctrl-C stops both.

#[path = "gateway.rs"]
mod gateway;
#[path = "mock_upstream.rs"]
mod mock_upstream;

use std::future::IntoFuture;
use std::time::Duration;

#[tokio::main]
async fn main() {
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
