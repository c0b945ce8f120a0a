//! `bare_proxy`: the floor the load harness measures the gateway against.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/bare_proxy --listen 127.0.0.1:8081 --upstream 127.0.0.1:9000
//! ```
//!
//! A forwarding proxy built from the same pieces as the gateway's hot path
//! and nothing else: hyper-util's `server-auto` connection builder on every
//! accepted connection (what `axum::serve` runs), TCP_NODELAY on both sides,
//! hyper-util's legacy pooled client with the provider's pool settings
//! (`tollgate::provider::HttpClient`: 90 s idle timeout, 256 idle connections
//! per host, the tokio pool timer), a multi-threaded tokio runtime with one
//! worker per core and mimalloc, as the reference gateway. No layers, no
//! parsing: each request's URI is pointed at `--upstream` (plain HTTP), its
//! headers and body go on untouched, and the upstream's answer streams back
//! frame by frame as it arrives. An upstream failure is an empty 502.
//!
//! `--read-body`: each request's body is read whole before it is sent on
//! (as any gateway must, to parse it), and nothing else changes. Reading a
//! request body inside the connection's own task makes hyper wake that task
//! while it runs (its body channel's "want" signal), and tokio's
//! multi-threaded scheduler answers a task woken during its own poll by
//! waking a parked sibling worker: one futex wake and one more park per
//! request (docs/performance-guard.md, "the one-request hop"). With this
//! flag the floor pays that too, so the gateway's difference to it is
//! what the gateway itself adds.
//!
//! `examples/load.rs` starts it as a child process beside the gateway (the
//! gateway is one too, so both pay the same process and scheduling costs)
//! and alternates it with the gateway in every round. It listens only where
//! `--listen` says (the harness: 127.0.0.1). It runs until killed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

/// The gateway's allocator (`examples/gateway.rs`): the floor should not
/// differ from the gateway in what is not the gateway's own code.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Answer = Response<Either<Incoming, Empty<Bytes>>>;
/// What the client sends upstream: the request's body as it streams in, or
/// read whole first (`--read-body`).
type Sent = Either<Incoming, Full<Bytes>>;

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut upstream: Option<SocketAddr> = None;
    let mut read_body = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut addr = |name: &str| -> SocketAddr {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("bare_proxy: {name} needs an address (127.0.0.1:PORT)");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--listen" => listen = Some(addr("--listen")),
            "--upstream" => upstream = Some(addr("--upstream")),
            "--read-body" => read_body = true,
            _ => {
                eprintln!("usage: bare_proxy --listen ADDR --upstream ADDR [--read-body]");
                std::process::exit(2)
            }
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        eprintln!("usage: bare_proxy --listen ADDR --upstream ADDR [--read-body]");
        std::process::exit(2)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(listen, upstream, read_body)) {
        eprintln!("bare_proxy: {e}");
        std::process::exit(1);
    }
}

async fn run(listen: SocketAddr, upstream: SocketAddr, read_body: bool) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Sent> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector);
    let authority: Authority = upstream
        .to_string()
        .parse()
        .expect("a socket address is an authority");
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of file descriptors and the like: let it pass.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (client, authority) = (client.clone(), authority.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                forward(client.clone(), authority.clone(), read_body, req)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// Sends `req` on to `authority` as it came and hands back the answer.
async fn forward(
    client: Client<HttpConnector, Sent>,
    authority: Authority,
    read_body: bool,
    req: Request<Incoming>,
) -> Result<Answer, std::convert::Infallible> {
    let (head, body) = req.into_parts();
    let body = if read_body {
        match body.collect().await {
            Ok(whole) => Either::Right(Full::new(whole.to_bytes())),
            Err(_) => return Ok(empty(StatusCode::BAD_REQUEST)),
        }
    } else {
        Either::Left(body)
    };
    let mut req = Request::from_parts(head, body);
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path");
    Ok(match client.request(req).await {
        Ok(res) => res.map(Either::Left),
        Err(_) => empty(StatusCode::BAD_GATEWAY),
    })
}

fn empty(status: StatusCode) -> Answer {
    let mut res = Response::new(Either::Right(Empty::new()));
    *res.status_mut() = status;
    res
}
