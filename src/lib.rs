//! # tollgate
//!
//! Composable [Tower](https://docs.rs/tower) middleware for LLM API gateways.
//! Each concern of a gateway is its own `Layer`; stack the ones you want over
//! a provider `Service` and mount the result in your own axum or hyper server.
//!
//! | layer | job | rejects with |
//! |---|---|---|
//! | [`normalize::NormalizeErrors`] | every failure leaves in one JSON shape; mid-stream failures become SSE error events | — |
//! | `keys::VirtualKeys` | authenticate `Authorization: Bearer` / `x-api-key`; the key travels to inner layers by type (feature `keys`) | 401 |
//! | [`read_request::ReadRequest`] | buffer the body (size-limited), parse `model`, `stream`, … once | 400, 405, 413, 415 |
//! | `access::ModelAccess` | the key may use this model (and every entry of `models`); `GET /v1/models` uses the same check (feature `keys`) | 403 |
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
//! State for several replicas (budgets, rate limits, router cooldowns) can
//! live in Redis: `state` (feature `redis`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod error;
pub mod fallback;
pub mod family;
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

#[cfg(feature = "keys")]
pub mod access;
#[cfg(feature = "keys")]
pub mod keys;

#[cfg(feature = "admin")]
pub mod admin;

#[cfg(feature = "rate-limit")]
pub mod rate_limit;

#[cfg(feature = "fair-queue")]
pub mod fair_queue;

#[cfg(feature = "budget")]
pub mod budget;

#[cfg(feature = "redis")]
pub mod state;

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
