//! # tollgate
//!
//! Composable [Tower](https://docs.rs/tower) middleware for LLM API gateways.
//! Each concern of a gateway is its own `Layer`; stack the ones you want over
//! a provider `Service` and mount the result in your own axum or hyper server.
//!
//! | layer | job | rejects with |
//! |---|---|---|
//! | [`normalize::NormalizeErrors`] | every failure leaves in one JSON shape; mid-stream failures become SSE error events | — |
//! | [`identify::Identify`] | your own authentication (a closure over the request's parts, or an identity an outer middleware put in the extensions); the identity travels to inner layers by type | 401 |
//! | `keys::VirtualKeys` | or: authenticate virtual keys (`Authorization: Bearer` / `x-api-key`); an `Identify` over the keyring (feature `keys`) | 401 |
//! | [`read_request::ReadRequest`] | buffer the body (size-limited), parse `model`, `stream`, … once | 400, 405, 413, 415 |
//! | [`access::ModelAccess`] | the caller may use this model (and every entry of `models`); `GET /v1/models` uses the same check | 403 |
//! | `rate_limit::RateLimit` | per-key requests/min and tokens/min (governor), `x-ratelimit-*` headers (feature `rate-limit`) | 429 |
//! | `fair_queue::FairQueue` | weighted fair queuing across tenants in front of bounded capacity per model group (feature `fair-queue`) | 429 queue full, 503 queue timeout |
//! | [`fallback::Fallback`] | try the next model group when one is exhausted or gone (checked chains, per-request `models`) | — |
//! | [`router::Router`] | pick a healthy deployment by load, retry elsewhere, cool failing ones down | 404 unknown model, 503 no deployment |
//! | [`provider::Provider`] | send to an upstream ([`family::Api`]: OpenAI-compatible or Anthropic) over pooled hyper connections, stream back; translate when the route's family differs ([`translate`]) | 408, 429, 502, 503 |
//!
//! ```
//! use tollgate::normalize::NormalizeErrorsLayer;
//! use tollgate::read_request::ReadRequestLayer;
//! use tollgate::provider::{HttpClient, Provider};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), tollgate::provider::BuildError> {
//! let provider = Provider::builder("mock", "http://127.0.0.1:9000/v1")?
//!     .client(HttpClient::builder().build()?)
//!     .build();
//! let stack = ServiceBuilder::new()
//!     .layer(NormalizeErrorsLayer::new())
//!     .layer(ReadRequestLayer::new(4 << 20))
//!     .service(provider);
//! // `stack` is a `Service<http::Request<B>, Error = Infallible>`: mount it with
//! // `axum::Router::route_service("/v1/chat/completions", stack)`.
//! # let _ = stack; Ok(()) }
//! ```
//!
//! Errors: every layer fails with [`Error`], rendered by `NormalizeErrors`
//! into the contract described in [`error`], in the shape of the route's API
//! family ([`family`]: OpenAI's, or Anthropic's on `/v1/messages`).
//!
//! One OpenTelemetry span per request (GenAI semantic conventions), exported
//! by OTLP over HTTP or gRPC: `telemetry` (feature `otel`).
//!
//! State for several replicas (budgets, rate limits, router cooldowns) can
//! live in Redis: `state` (feature `redis`).
//!
//! A stack can be replaced while it serves (a configuration reload), each
//! request finishing on the stack it started with: `reload` (feature
//! `reload`).
//!
//! # Who is calling
//!
//! The policy layers read the caller's identity by type (`LlmRequest<I>`).
//! [`identify::Identify`] attaches your own (from a closure over the
//! request's parts, or from an extension your axum middleware inserted);
//! `keys::VirtualKeys` (feature `keys`) attaches a virtual key. See the
//! [`identify`] module and the `bring_your_own_auth` example.
//!
//! # The boundary: what flows between layers, and plain tower layers
//!
//! - **Requests.** Any `http::Request<B>` with `B: http_body::Body<Data =
//!   Bytes>` enters; an identifying layer makes it
//!   `Request<`[`Identified`](read_request::Identified)`<I, B>>`; below
//!   [`ReadRequest`](read_request::ReadRequest) it is
//!   `Request<`[`Parsed`](read_request::Parsed)`<I>>`, [`LlmRequest<I>`].
//! - **Responses.** `http::Response<`[`Body`]`>` from the provider up:
//!   one boxed body whose errors are [`Error`], so a mid-stream failure
//!   stays typed until `NormalizeErrors`. The layers that read answers
//!   (`RateLimit`, `Budget`, `FairQueue`, [`Fallback`](fallback::Fallback),
//!   [`Router`](router::Router)) take `Response<Body>` from their inner service.
//! - **Errors.** [`Error`] in every layer below `NormalizeErrors`,
//!   `Infallible` above it (so the stack mounts with `axum::Router::route_service`
//!   or `layer`).
//!
//! [`NormalizeErrors`](normalize::NormalizeErrors) accepts any inner service
//! whose error is `Into<tower::BoxError>` ([`Error`], a `BoxError`, any
//! `std::error::Error + Send + Sync`) and whose response body is any
//! `http_body::Body<Data = Bytes>` with errors `Into<BoxError>`; it renders
//! every error, every non-2xx answer not already in the contract's shape, and
//! every mid-stream failure. So a plain tower layer directly under it needs
//! nothing.
//!
//! Deeper in the stack, a plain tower layer (`timeout`, `concurrency_limit`,
//! `load_shed`, …) fails with `tower::BoxError`, which the tollgate layers
//! around it do not take: put `.map_err(`[`error::from_boxed`]`)` just outside
//! it. Our own errors pass through it unchanged, tower's `Elapsed` becomes
//! 408 `timeout`, anything else a 500 `internal_error` whose text is logged
//! (redacted), never sent.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::BodyExt;
//! use tollgate::normalize::NormalizeErrorsLayer;
//! use tollgate::read_request::ReadRequestLayer;
//! use tollgate::{Body, Error, LlmRequest, error::from_boxed};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let stack = ServiceBuilder::new()
//!     .layer(NormalizeErrorsLayer::new())
//!     .layer(ReadRequestLayer::new(1 << 20)) // its inner service must fail with `Error`
//!     .map_err(from_boxed)                   // `BoxError` -> `Error`
//!     .timeout(Duration::from_millis(20))    // a plain tower layer: fails with `BoxError`
//!     .service(service_fn(|_req: LlmRequest| {
//!         std::future::pending::<Result<Response<Body>, Error>>() // an upstream that never answers
//!     }));
//! let req = Request::post("/v1/chat/completions").body(Body::full(r#"{"model":"m"}"#)).unwrap();
//! let res = stack.oneshot(req).await.unwrap(); // the stack's error is `Infallible`
//! assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
//! assert_eq!(json["error"]["metadata"]["reason"], "timeout");
//! # }
//! ```
//!
//! **Deployments of different types in one router.** A [`Router`](router::Router)
//! holds one service type `S`. To mix them (a plain provider, a provider
//! behind its own `FairQueue` or `timeout`, a test double), box
//! each as `tower::util::BoxCloneSyncService<LlmRequest<I>, Response<Body>,
//! Error>`. tower's `BoxCloneService` does not fit: it is not `Sync`, and the
//! router shares its deployments with every request's future. The
//! `router_in_code` example builds such a router, with fallback chains, in
//! code.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tollgate::read_request::ReadRequestLayer;
//! use tollgate::router::{Deployment, Router};
//! use tollgate::{Body, Error, LlmRequest, error::from_boxed};
//! use tower::util::BoxCloneSyncService;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! type Upstream = BoxCloneSyncService<LlmRequest, Response<Body>, Error>;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let answer = |name: &'static str| {
//!     service_fn(move |_req: LlmRequest| async move { Ok::<_, Error>(Response::new(Body::full(name))) })
//! };
//! // Two different service types...
//! let plain: Upstream = BoxCloneSyncService::new(answer("plain"));
//! let bounded: Upstream = BoxCloneSyncService::new(
//!     ServiceBuilder::new()
//!         .map_err(from_boxed)
//!         .timeout(Duration::from_secs(30))
//!         .service(answer("bounded")),
//! );
//! // ...as deployments of one group.
//! let router = Router::builder()
//!     .group("m", vec![Deployment::new("plain", plain, 1), Deployment::new("bounded", bounded, 1)])
//!     .unwrap()
//!     .build();
//! let svc = ServiceBuilder::new().layer(ReadRequestLayer::new(1 << 20)).service(router);
//! let req = Request::post("/v1/chat/completions").body(Body::full(r#"{"model":"m"}"#)).unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod duration;
pub mod error;
pub mod fallback;
pub mod family;
pub mod identify;
pub mod metrics;
pub mod normalize;
pub mod overhead;
pub mod read_request;
pub mod router;
pub mod sanitize;
pub mod translate;

#[cfg(feature = "provider")]
pub mod credentials;
#[cfg(feature = "provider")]
pub mod provider;

#[cfg(any(feature = "provider", feature = "postgres", feature = "redis"))]
mod tls;

#[cfg(feature = "config")]
pub mod config;

pub mod access;
#[cfg(feature = "keys")]
pub mod keys;

#[cfg(feature = "admin")]
pub mod admin;

#[cfg(feature = "console")]
pub mod console;

#[cfg(feature = "rate-limit")]
pub mod rate_limit;

#[cfg(feature = "fair-queue")]
pub mod fair_queue;

#[cfg(feature = "budget")]
pub mod budget;

#[cfg(feature = "redis")]
pub mod state;

#[cfg(feature = "reload")]
pub mod reload;

#[cfg(feature = "otel")]
pub mod telemetry;

// Property checks for the fuzz targets and their corpus replay (docs/fuzzing.md).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

use std::sync::Arc;

pub use body::Body;
pub use family::Family;

/// The hash maps read on every request (model groups, chains, prices,
/// tenants, grants, keys): foldhash, seeded per map, where SipHash cost
/// ~150 instructions a look-up.
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A set read on every request (see [`Map`]).
pub(crate) type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
pub use error::{Error, Reason, TimeoutPhase};

/// A request after [`ReadRequest`](read_request::ReadRequest): the parsed
/// body and the caller's identity `I` travel by type.
pub type LlmRequest<I = ()> = http::Request<read_request::Parsed<I>>;

/// Response extension: how long the provider waited on the upstream that
/// served (until its headers for a stream, until its whole answer
/// otherwise). [`overhead::Overhead`] subtracts it from the total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamTime(pub std::time::Duration);

/// Response extension: which provider (deployment) served, and under which
/// upstream model name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The provider's (deployment's) name.
    pub provider: Arc<str>,
    /// The upstream model name it was asked for.
    pub model: Arc<str>,
}
