//! `FairQueue`: weighted fair queuing across tenants in front of bounded
//! upstream capacity.
//!
//! Each model group (the request's `model`) has a capacity: how many of its
//! requests may be in flight at once ([`QueueSettings`]). A request that
//! finds a free slot runs at once; the others wait in their tenant's queue.
//! A tenant is whatever the [`TenantOf`] hook says (a virtual key, a team,
//! …), with a weight; any closure `Fn(&LlmRequest<I>) -> Tenant` is one.
//!
//! Guarantees:
//!
//! - **Fair.** A freed slot goes to the waiting tenant that is furthest
//!   behind its weighted share (start-time fair queuing: each tenant's head
//!   request carries a virtual start tag, a tenant of weight `w` advancing
//!   by `1/w` per slot, and the smallest tag is served first): while
//!   tenants are backlogged they
//!   are served in proportion to their weights, and a tenant that arrives
//!   behind another's burst of 1,000 waits for about one of that tenant's
//!   requests per request of its own, not for the whole burst.
//! - **Work-conserving.** Nobody waits while a slot is free; a tenant alone
//!   uses all the capacity.
//! - **Bounded.** At most `max_queue_per_tenant` requests of one tenant wait
//!   per group; more are refused with 429 `queue_full` and `Retry-After`. A
//!   request that waits longer than `max_wait` gets 503 `queue_timeout`
//!   with `Retry-After`.
//! - **Honest slots.** A slot is held until the response body ends, fails
//!   or is dropped, not until the headers are sent: a long stream counts for
//!   its whole length. A waiting request whose client goes away (its future
//!   is dropped) leaves the queue at once.
//! - **Never in `poll_ready`.** The service is always ready (axum does not
//!   wait for readiness); waiting happens inside the response future.
//!
//! Queue depth, wait times and refusals per tenant are `tracing` events
//! (`tenant`, `group`, `depth`, `wait_ms`, `reason` fields), and
//! [`FairQueueLayer::stats`] shows in-flight and waiting counts now.
//!
//! Capacity per deployment rather than per group: wrap each deployment's
//! service in its own `FairQueueLayer` (each layer has its own scheduler),
//! below the router.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tollgate::fair_queue::{FairQueueLayer, QueueSettings, Tenant};
//! use tollgate::read_request::{Identified, ReadRequestLayer};
//! use tollgate::{Body, Error, LlmRequest};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let settings = QueueSettings::new(8)            // 8 in flight per model group
//!     .group_capacity("gpt-4o", 2)
//!     .max_queue_per_tenant(100)
//!     .max_wait(Duration::from_secs(30));
//! // The identity here is a (team, weight) pair; a real one is a virtual key.
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(FairQueueLayer::new(settings, |req: &LlmRequest<(&'static str, u32)>| {
//!         let (team, weight) = *req.body().identity();
//!         Tenant::new(team, weight)
//!     }))
//!     .service(service_fn(|_req: LlmRequest<(&'static str, u32)>| async {
//!         Ok::<_, Error>(Response::new(Body::full("hi")))
//!     }));
//! let req = Request::post("/v1/chat/completions")
//!     .body(Identified { identity: ("search", 3), body: Body::full(r#"{"model":"gpt-4o"}"#) })
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

mod future;
mod layer;
mod scheduler;
mod service;

use std::sync::Arc;
use std::time::Duration;

pub use future::ResponseFuture;
pub use layer::FairQueueLayer;
pub use scheduler::Permit;
pub use service::FairQueue;

use crate::LlmRequest;

/// Who a request is queued as, and with what weight.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tenant {
    /// The tenant's name (a key's public id, a team, …). Shown in logs:
    /// never a secret.
    pub id: Arc<str>,
    /// Its share relative to other tenants (0 is taken as 1; at most 65,536).
    pub weight: u32,
}

impl Tenant {
    /// A tenant named `id` with `weight`.
    pub fn new(id: impl Into<Arc<str>>, weight: u32) -> Self {
        Tenant {
            id: id.into(),
            weight,
        }
    }
}

/// Says which tenant a request belongs to.
///
/// Implemented by every `Fn(&LlmRequest<I>) -> Tenant`.
pub trait TenantOf<I>: Clone {
    /// The tenant of `req`.
    fn tenant(&self, req: &LlmRequest<I>) -> Tenant;
}

impl<F, I> TenantOf<I> for F
where
    F: Fn(&LlmRequest<I>) -> Tenant + Clone,
{
    fn tenant(&self, req: &LlmRequest<I>) -> Tenant {
        self(req)
    }
}

/// Capacities and bounds of a [`FairQueueLayer`].
#[derive(Clone, Debug)]
pub struct QueueSettings {
    capacity: usize,
    group_capacity: crate::Map<String, usize>,
    pub(crate) max_queue_per_tenant: usize,
    pub(crate) max_wait: Duration,
    pub(crate) retry_after: Duration,
}

impl QueueSettings {
    /// `capacity` requests in flight per model group (at least 1); 1,000
    /// waiting per tenant and group; 30 s of waiting at most; `Retry-After: 1`.
    pub fn new(capacity: usize) -> Self {
        QueueSettings {
            capacity: capacity.max(1),
            group_capacity: crate::Map::default(),
            max_queue_per_tenant: 1000,
            max_wait: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
        }
    }

    /// The capacity of one model group (at least 1).
    pub fn group_capacity(mut self, group: &str, capacity: usize) -> Self {
        self.group_capacity
            .insert(group.to_owned(), capacity.max(1));
        self
    }

    /// How many requests of one tenant may wait per group (at least 1).
    pub fn max_queue_per_tenant(mut self, n: usize) -> Self {
        self.max_queue_per_tenant = n.max(1);
        self
    }

    /// How long a request may wait for a slot.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The `Retry-After` of `queue_full` and `queue_timeout` refusals.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// The capacity of `group`.
    pub fn capacity_for(&self, group: &str) -> usize {
        self.group_capacity
            .get(group)
            .copied()
            .unwrap_or(self.capacity)
    }
}

/// One model group's state, from [`FairQueueLayer::stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    /// The model group.
    pub group: String,
    /// Its capacity.
    pub capacity: usize,
    /// Requests holding a slot (until their body ends).
    pub in_flight: usize,
    /// Waiting requests per tenant (tenants with none are left out), sorted.
    pub waiting: Vec<(String, usize)>,
}

#[cfg(test)]
mod tests;
