//! Deployments' live health: a read-only snapshot of a [`Router`](super::Router)
//! ([`Router::health`](super::Router::health)), for operators (the admin
//! API's `GET /deployments`, the console's deployments page).
//!
//! Per model group, per deployment: requests in flight (and the capacity),
//! the cooldown with its reason and the time left, the route families
//! cooling on it, and the failed attempts by [`Reason`] over the last
//! [`ERROR_WINDOW_MINUTES`] minutes. The application adds what the router
//! does not own: each group's fallback chains ([`Health::with_fallbacks`])
//! and the fair queue's depth ([`Health::with_queue`]).
//!
//! Where it comes from:
//!
//! - **Cooldowns** are read through the router's own [`CooldownStore`](super::CooldownStore)
//!   and clock, exactly as the router reads them when it picks a
//!   deployment: with a shared store (Redis) that is the replica's local
//!   mirror, so the snapshot shows what *this* replica decides (a cooldown
//!   another replica set shows once its publication arrived, as it does
//!   for routing). Route-family cooldowns are local to the replica anyway.
//! - **In-flight** counts are the router's own counters (a stream counts
//!   until it ends), shared across a reload like the router's.
//! - **Errors** are counted in this replica only, per deployment, in a
//!   ring of one bucket per minute of atomic counters ([`ErrorCounts`]),
//!   written only where a failed attempt is already being handled: a
//!   successful request writes none (a stream carries one more reference
//!   count to them, cloned with the cooldown store's, for a failure
//!   mid-stream). A reload's router keeps the counts of the deployments it
//!   keeps.
//!
//! Nothing here takes a lock on the inference path; taking a snapshot is a
//! handful of atomic loads per deployment (and a lock only while some route
//! family is cooling).
//!
//! ```
//! use tollgate::provider::Provider;
//! use tollgate::router::{Deployment, Router};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = Provider::builder("east", "http://127.0.0.1:9001/v1")?.build();
//! let router = Router::builder()
//!     .group("gpt-4o-mini", vec![Deployment::new("east", a, 1).capacity(8)])?
//!     .build();
//! let health = router.health();
//! let d = &health.groups[0].deployments[0];
//! assert_eq!((d.name.as_str(), d.in_flight, d.capacity), ("east", 0, Some(8)));
//! assert!(d.cooldown.is_none() && d.errors.is_empty());
//! assert_eq!(health.to_json()["groups"][0]["deployments"][0]["state"], "ok");
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::cooldown::{CooldownReason, Millis};
use crate::error::Reason;
use crate::read_request::Endpoint;

/// How many minutes of failed attempts [`DeploymentHealth::errors`] counts:
/// the current minute (on the router's clock) and the ones before it.
pub const ERROR_WINDOW_MINUTES: u64 = 5;

const MINUTE_MS: u64 = 60_000;
const REASONS: usize = Reason::ALL.len();

/// Failed attempts of one deployment, per [`Reason`], in a ring of
/// [`ERROR_WINDOW_MINUTES`] one-minute buckets.
///
/// Each counter is one `AtomicU64` holding the minute it counts (high 32
/// bits) and the count (low 32): a failure in a new minute restarts the
/// counter in the same compare-and-swap that counts it, so no count is lost
/// to a reset and no lock is taken.
pub struct ErrorCounts {
    buckets: [[AtomicU64; REASONS]; ERROR_WINDOW_MINUTES as usize],
}

impl Default for ErrorCounts {
    fn default() -> Self {
        ErrorCounts {
            buckets: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl std::fmt::Debug for ErrorCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorCounts").finish_non_exhaustive()
    }
}

impl ErrorCounts {
    /// No failure counted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one failed attempt for `reason` at `now` (ms on the router's clock).
    pub fn record(&self, reason: Reason, now: Millis) {
        let minute = (now / MINUTE_MS) & 0xFFFF_FFFF;
        let slot = &self.buckets[(minute % ERROR_WINDOW_MINUTES) as usize][reason as usize];
        let mut v = slot.load(Ordering::Relaxed);
        loop {
            let next = match (v >> 32).cmp(&minute) {
                std::cmp::Ordering::Equal => v.saturating_add(1).min(v | 0xFFFF_FFFF),
                std::cmp::Ordering::Less => (minute << 32) | 1,
                // The slot holds a later minute (the wall clock stepped back,
                // or this thread was held up a whole turn of the ring): this
                // failure is older than the window the slot counts; drop it
                // rather than wipe newer counts.
                std::cmp::Ordering::Greater => return,
            };
            match slot.compare_exchange_weak(v, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => v = seen,
            }
        }
    }

    /// The failures of the last [`ERROR_WINDOW_MINUTES`] minutes at `now`,
    /// by reason (those with none left out), in [`Reason::ALL`]'s order.
    pub fn recent(&self, now: Millis) -> Vec<(Reason, u32)> {
        let minute = (now / MINUTE_MS) & 0xFFFF_FFFF;
        let oldest = minute.saturating_sub(ERROR_WINDOW_MINUTES - 1);
        let mut out = Vec::new();
        for (i, &reason) in Reason::ALL.iter().enumerate() {
            let n: u32 = self
                .buckets
                .iter()
                .map(|b| b[i].load(Ordering::Relaxed))
                .filter(|v| (oldest..=minute).contains(&(v >> 32)))
                .map(|v| v as u32)
                .fold(0, u32::saturating_add);
            if n > 0 {
                out.push((reason, n));
            }
        }
        out
    }
}

/// A snapshot of a router's deployments ([`Router::health`](super::Router::health)),
/// with what the application adds (fallback chains, queue depth).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// When it was taken, on the router's clock (ms; since the Unix epoch
    /// with the default [`SystemClock`](super::SystemClock)).
    pub now: Millis,
    /// Every model group, sorted by name.
    pub groups: Vec<GroupHealth>,
}

/// One model group in a [`Health`] snapshot.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct GroupHealth {
    /// The group's name (the `model` clients send).
    pub name: String,
    /// Its deployments, in configuration order.
    pub deployments: Vec<DeploymentHealth>,
    /// The groups tried, in order, when this one is exhausted (flattened;
    /// empty when none, or when [`Health::with_fallbacks`] was not given).
    pub fallbacks: Vec<String>,
    /// The groups tried when a prompt does not fit this one.
    pub context_window_fallbacks: Vec<String>,
    /// The fair queue in front of the group, when there is one
    /// ([`Health::with_queue`]).
    pub queue: Option<QueueDepth>,
}

/// One deployment in a [`Health`] snapshot.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeploymentHealth {
    /// The deployment's name.
    pub name: String,
    /// Its relative weight.
    pub weight: u32,
    /// Requests in flight there now (a stream until it ends).
    pub in_flight: u32,
    /// At most this many in flight (`None`: unbounded).
    pub capacity: Option<u32>,
    /// The cooldown it is in now, if any: the router sends it nothing.
    pub cooldown: Option<Cooling>,
    /// Route families cooling on it (the upstream does not serve them);
    /// its other routes take traffic.
    pub route_cooldowns: Vec<RouteCooling>,
    /// Failed attempts in the last [`ERROR_WINDOW_MINUTES`] minutes, by
    /// reason (in [`Reason::ALL`]'s order; none: left out).
    pub errors: Vec<(Reason, u32)>,
}

/// A deployment's cooldown at the time of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooling {
    /// Why.
    pub reason: CooldownReason,
    /// Until when, on the router's clock.
    pub until: Millis,
    /// How long from the snapshot.
    pub remaining: Duration,
}

/// A route family cooling on a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteCooling {
    /// The route family.
    pub route: Endpoint,
    /// Until when, on the router's clock.
    pub until: Millis,
    /// How long from the snapshot.
    pub remaining: Duration,
}

/// The fair queue in front of a model group (its capacity is the group's,
/// across all its deployments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Requests of the group the queue lets run at once.
    pub capacity: usize,
    /// Requests holding one of those slots now.
    pub in_flight: usize,
    /// Requests waiting for a slot, per tenant (tenants with none left
    /// out), sorted by tenant.
    pub waiting: Vec<(String, usize)>,
}

impl QueueDepth {
    /// Requests waiting, over every tenant.
    pub fn waiting_total(&self) -> usize {
        self.waiting.iter().map(|(_, n)| n).sum()
    }
}

impl DeploymentHealth {
    /// `"cooldown"` while the deployment is cooling down, else `"ok"`.
    pub fn state(&self) -> &'static str {
        if self.cooldown.is_some() {
            "cooldown"
        } else {
            "ok"
        }
    }

    /// Failed attempts in the window, over every reason.
    pub fn errors_total(&self) -> u32 {
        self.errors
            .iter()
            .map(|(_, n)| n)
            .fold(0, |a, b| a.saturating_add(*b))
    }
}

/// The word a route family goes by in a snapshot: its client-facing path.
pub fn route_path(route: Endpoint) -> &'static str {
    match route {
        Endpoint::ChatCompletions => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
        Endpoint::Embeddings => "/v1/embeddings",
        Endpoint::Responses => "/v1/responses",
        Endpoint::Messages => "/v1/messages",
        Endpoint::CountTokens => "/v1/messages/count_tokens",
        _ => "other",
    }
}

impl Health {
    /// The group named `name`.
    pub fn group(&self, name: &str) -> Option<&GroupHealth> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The deployment `deployment` of group `group`.
    pub fn deployment(&self, group: &str, deployment: &str) -> Option<&DeploymentHealth> {
        self.group(group)?
            .deployments
            .iter()
            .find(|d| d.name == deployment)
    }

    /// Each group's fallback chains from `chains` (the ones the
    /// [`FallbackLayer`](crate::fallback::FallbackLayer) in front of the
    /// router follows).
    pub fn with_fallbacks(mut self, chains: &crate::fallback::Chains) -> Self {
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
        for g in &mut self.groups {
            g.fallbacks = owned(chains.fallbacks_of(&g.name));
            g.context_window_fallbacks = owned(chains.context_window_fallbacks_of(&g.name));
        }
        self
    }

    /// Each group's fair-queue depth: `depth(group)` (`None`: no queue in
    /// front of that group).
    pub fn with_queue(mut self, mut depth: impl FnMut(&str) -> Option<QueueDepth>) -> Self {
        for g in &mut self.groups {
            g.queue = depth(&g.name);
        }
        self
    }

    /// Each group's depth in `queue`'s scheduler (the
    /// [`FairQueueLayer`](crate::fair_queue::FairQueueLayer) in front of the router).
    #[cfg(feature = "fair-queue")]
    pub fn with_fair_queue<T>(self, queue: &crate::fair_queue::FairQueueLayer<T>) -> Self {
        let stats = queue.stats();
        let settings = queue.settings();
        self.with_queue(|group| {
            Some(match stats.iter().find(|s| s.group == group) {
                Some(s) => QueueDepth {
                    capacity: s.capacity,
                    in_flight: s.in_flight,
                    waiting: s.waiting.clone(),
                },
                // The scheduler lists only groups with something in it.
                None => QueueDepth {
                    capacity: settings.capacity_for(group),
                    ..QueueDepth::default()
                },
            })
        })
    }

    /// The snapshot as JSON (the admin API's `GET /deployments`):
    ///
    /// ```json
    /// {"now_ms": 1700000000000, "error_window_minutes": 5, "groups": [{
    ///   "model_group": "gpt-4o", "fallbacks": ["gpt-4o-mini"], "context_window_fallbacks": [],
    ///   "queue": {"capacity": 8, "in_flight": 8, "waiting": 3, "waiting_by_tenant": {"team:search": 3}},
    ///   "deployments": [{
    ///     "deployment": "east", "state": "cooldown", "weight": 1, "in_flight": 0, "capacity": 64,
    ///     "cooldown": {"reason": "rate_limited", "until_ms": 1700000012000, "remaining_ms": 12000},
    ///     "route_cooldowns": [{"route": "/v1/responses", "until_ms": 1700000300000, "remaining_ms": 300000}],
    ///     "errors": {"upstream_rate_limited": 2}, "errors_total": 2}]}]}
    /// ```
    ///
    /// `cooldown` and `queue` are `null` when there is none; `capacity`
    /// is `null` when unbounded.
    pub fn to_json(&self) -> Value {
        let groups: Vec<Value> = self.groups.iter().map(group_json).collect();
        json!({
            "now_ms": self.now,
            "error_window_minutes": ERROR_WINDOW_MINUTES,
            "groups": groups,
        })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn group_json(g: &GroupHealth) -> Value {
    let queue = g.queue.as_ref().map(|q| {
        let tenants: Map<String, Value> = q
            .waiting
            .iter()
            .map(|(t, n)| (t.clone(), (*n).into()))
            .collect();
        json!({
            "capacity": q.capacity,
            "in_flight": q.in_flight,
            "waiting": q.waiting_total(),
            "waiting_by_tenant": tenants,
        })
    });
    json!({
        "model_group": g.name,
        "fallbacks": g.fallbacks,
        "context_window_fallbacks": g.context_window_fallbacks,
        "queue": queue,
        "deployments": g.deployments.iter().map(deployment_json).collect::<Vec<_>>(),
    })
}

fn deployment_json(d: &DeploymentHealth) -> Value {
    let errors: Map<String, Value> = d
        .errors
        .iter()
        .map(|(r, n)| (r.as_str().to_owned(), (*n).into()))
        .collect();
    let routes: Vec<Value> = d
        .route_cooldowns
        .iter()
        .map(|r| {
            json!({
                "route": route_path(r.route),
                "until_ms": r.until,
                "remaining_ms": ms(r.remaining),
            })
        })
        .collect();
    json!({
        "deployment": d.name,
        "state": d.state(),
        "weight": d.weight,
        "in_flight": d.in_flight,
        "capacity": d.capacity,
        "cooldown": d.cooldown.map(|c| json!({
            "reason": c.reason.as_str(),
            "until_ms": c.until,
            "remaining_ms": ms(c.remaining),
        })),
        "route_cooldowns": routes,
        "errors": errors,
        "errors_total": d.errors_total(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_count_per_reason_within_the_window() {
        let e = ErrorCounts::new();
        let t0 = 10 * MINUTE_MS;
        assert!(e.recent(t0).is_empty());
        e.record(Reason::UpstreamRateLimited, t0);
        e.record(Reason::UpstreamRateLimited, t0 + 1);
        e.record(Reason::UpstreamTimeout, t0 + MINUTE_MS);
        let mut got = e.recent(t0 + MINUTE_MS);
        got.sort_by_key(|(r, _)| r.as_str());
        assert_eq!(
            got,
            [
                (Reason::UpstreamRateLimited, 2),
                (Reason::UpstreamTimeout, 1)
            ]
        );
        // Still counted four minutes later, gone in the fifth.
        let later = t0 + 4 * MINUTE_MS;
        assert!(e.recent(later).contains(&(Reason::UpstreamRateLimited, 2)));
        let gone = t0 + 5 * MINUTE_MS;
        assert_eq!(e.recent(gone), [(Reason::UpstreamTimeout, 1)]);
    }

    #[test]
    fn a_bucket_reused_a_ring_later_starts_from_zero() {
        let e = ErrorCounts::new();
        let t0 = 3 * MINUTE_MS;
        for _ in 0..3 {
            e.record(Reason::UpstreamError, t0);
        }
        // The same bucket, one turn of the ring later.
        let t1 = t0 + ERROR_WINDOW_MINUTES * MINUTE_MS;
        e.record(Reason::UpstreamError, t1);
        assert_eq!(e.recent(t1), [(Reason::UpstreamError, 1)]);
        // A failure stamped a turn earlier (the wall clock stepped back)
        // does not wipe the newer count.
        e.record(Reason::UpstreamError, t0);
        assert_eq!(e.recent(t1), [(Reason::UpstreamError, 1)]);
    }
}
