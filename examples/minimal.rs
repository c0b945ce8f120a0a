//! The smallest gateway: one route, errors in the contract's shape, the body
//! read and checked once, forwarded to one upstream.
//!
//! ```text
//! cargo run --example mock_upstream &    # an upstream on 127.0.0.1:9000
//! cargo run --example minimal            # this gateway on 127.0.0.1:4000
//! curl -s localhost:4000/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"model":"mock-small","messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:4000`), `--upstream URL`
//! (default `http://127.0.0.1:9000/v1`; any OpenAI-compatible base URL, with
//! its key in `UPSTREAM_API_KEY` when it needs one). Needs only the
//! `provider` feature.
//!
//! `NormalizeErrors` outermost, so every failure — a body that is not JSON,
//! an upstream that is down — leaves as `{"error": {"code", "message",
//! "type", "metadata": {"reason"}}}` with the status equal to `code`; then
//! `ReadRequest`, which buffers the body (4 MiB at most) and parses `model`,
//! `stream` and the token caps once; then the provider. Add layers between
//! `ReadRequest` and the provider as your gateway needs them (see
//! `bring_your_own_auth` and `router_in_code`).

use std::net::SocketAddr;

use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::provider::{BuildError, HttpClient, Provider};
use tollgate::read_request::ReadRequestLayer;
use tower::ServiceBuilder;

/// The gateway's routes, forwarding to `upstream` (a base URL ending in
/// `/v1`) with `api_key`, if any.
pub fn app(upstream: &str, api_key: Option<String>) -> Result<axum::Router, BuildError> {
    let mut provider =
        Provider::builder("upstream", upstream)?.client(HttpClient::builder().build()?);
    if let Some(key) = api_key {
        provider = provider.api_key(key);
    }
    let stack = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(ReadRequestLayer::new(4 << 20))
        .service(provider.build());
    Ok(axum::Router::new().route_service("/v1/chat/completions", stack))
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 4000).into();
    let mut upstream = "http://127.0.0.1:9000/v1".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(v)) => {
                listen = v.parse().unwrap_or_else(|e| {
                    eprintln!("minimal: --listen {v}: {e}");
                    std::process::exit(2)
                })
            }
            ("--upstream", Some(v)) => upstream = v,
            _ => {
                eprintln!("usage: minimal [--listen ADDR] [--upstream URL]");
                std::process::exit(2)
            }
        }
    }
    let app = app(&upstream, std::env::var("UPSTREAM_API_KEY").ok()).unwrap_or_else(|e| {
        eprintln!("minimal: {e}");
        std::process::exit(2)
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("minimal: {listen}: {e}");
            std::process::exit(2)
        });
    println!("minimal listening on http://{listen}/v1");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("minimal: {e}");
        std::process::exit(1)
    }
}
