//! A router and fallback chains built in code, without a config file; and
//! deployments of different service types in one router.
//!
//! ```text
//! cargo run --example mock_upstream &     # an upstream on 127.0.0.1:9000
//! cargo run --example router_in_code      # this gateway on 127.0.0.1:4000
//! curl -si localhost:4000/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"model":"fast","messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:4000`), `--fast URL` and
//! `--big URL` (the upstreams of the two groups, default
//! `http://127.0.0.1:9000/v1`). Point `--fast` at a port where nothing
//! listens to watch `fast` fall back to `big`. Needs the `provider` and
//! `fair-queue` features.
//!
//! Two model groups, the names clients ask for:
//!
//! - `fast`: two deployments of the upstream's `mock-small`. `primary`
//!   (weight 3) has its own `FairQueue` holding it to 4 requests in flight;
//!   `secondary` (weight 1) is the plain provider. Their service types
//!   differ, so both are boxed as `BoxCloneSyncService` (tower's
//!   `BoxCloneService` is not `Sync`, which the router needs to share its
//!   deployments between requests).
//! - `big`: one deployment of `mock-large`, and `fast`'s fallback: when
//!   every deployment of `fast` fails or cools down, the request goes to
//!   `big`. Chains are checked when they are built: naming an unknown group
//!   or a cycle is an error here, not at request time.
//!
//! Answers say which group and deployment served (`x-tollgate-model-group`,
//! `x-tollgate-deployment`) and after how many attempts. Add identity and
//! policy layers between `ReadRequest` and `Fallback` (see
//! `bring_your_own_auth`).

use std::net::SocketAddr;

use http::Response;
use tollgate::fair_queue::{FairQueueLayer, QueueSettings, Tenant};
use tollgate::fallback::{Chains, FallbackLayer};
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::provider::{HttpClient, Provider};
use tollgate::read_request::ReadRequestLayer;
use tollgate::router::{Deployment, RetryPolicy, Router};
use tollgate::{Body, Error, LlmRequest};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder};

/// A deployment's service, whatever its layers: one type for the router.
pub type Upstream = BoxCloneSyncService<LlmRequest, Response<Body>, Error>;

/// The upstreams of the two groups.
#[derive(Clone, Debug)]
pub struct Upstreams {
    /// Base URL (ending in `/v1`) of the `fast` group's deployments.
    pub fast: String,
    /// Base URL of the `big` group's deployment.
    pub big: String,
}

/// The gateway's routes: `/v1/chat/completions` through `NormalizeErrors`
/// → `ReadRequest` → `Fallback` → `Router`.
pub fn app(upstreams: &Upstreams) -> Result<axum::Router, Box<dyn std::error::Error>> {
    let client = HttpClient::builder().build()?;
    let provider =
        |name: &str, url: &str, model: &str| -> Result<Provider, Box<dyn std::error::Error>> {
            Ok(Provider::builder(name, url)?
                .model(model)
                .client(client.clone())
                .build())
        };

    // `primary` behind its own fair queue: at most 4 requests in flight.
    let queued = FairQueueLayer::new(QueueSettings::new(4), |_req: &LlmRequest| {
        Tenant::new("everyone", 1)
    })
    .layer(provider("primary", &upstreams.fast, "mock-small")?);
    let primary: Upstream = BoxCloneSyncService::new(queued);
    let secondary: Upstream =
        BoxCloneSyncService::new(provider("secondary", &upstreams.fast, "mock-small")?);
    let big: Upstream = BoxCloneSyncService::new(provider("big", &upstreams.big, "mock-large")?);

    let router = Router::builder()
        .group(
            "fast",
            vec![
                Deployment::new("primary", primary, 3),
                Deployment::new("secondary", secondary, 1),
            ],
        )?
        .group("big", vec![Deployment::new("big", big, 1)])?
        .policy(RetryPolicy {
            num_retries: 2,
            ..RetryPolicy::default()
        })
        .build();
    let chains = Chains::builder(router.model_names())
        .fallbacks("fast", ["big"])
        .build()?;

    let stack = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(ReadRequestLayer::new(4 << 20))
        .layer(FallbackLayer::new(chains))
        .service(router);
    Ok(axum::Router::new().route_service("/v1/chat/completions", stack))
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 4000).into();
    let default = "http://127.0.0.1:9000/v1".to_owned();
    let mut upstreams = Upstreams {
        fast: default.clone(),
        big: default,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(v)) => {
                listen = v.parse().unwrap_or_else(|e| {
                    eprintln!("router_in_code: --listen {v}: {e}");
                    std::process::exit(2)
                })
            }
            ("--fast", Some(v)) => upstreams.fast = v,
            ("--big", Some(v)) => upstreams.big = v,
            _ => {
                eprintln!("usage: router_in_code [--listen ADDR] [--fast URL] [--big URL]");
                std::process::exit(2)
            }
        }
    }
    let app = app(&upstreams).unwrap_or_else(|e| {
        eprintln!("router_in_code: {e}");
        std::process::exit(2)
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("router_in_code: {listen}: {e}");
            std::process::exit(2)
        });
    println!("router_in_code listening on http://{listen}/v1");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("router_in_code: {e}");
        std::process::exit(1)
    }
}
