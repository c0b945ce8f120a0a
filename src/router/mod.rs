//! `Router`: send a model group's request to a healthy deployment, retry
//! elsewhere, cool failing deployments down.
//!
//! A model group is the name clients ask for (`"model": "gpt-4o-mini"`); a
//! [`Deployment`] is a provider `Service` behind it with a weight and an
//! optional capacity. Several deployments of one group may point at
//! different providers or keys.
//!
//! **Picking.** Among the deployments that are not cooling down and not at
//! capacity, weighted power of two choices on in-flight requests: the first
//! candidate comes from a smooth weighted round-robin wheel (so an idle
//! router splits traffic exactly by weight, not just on average), the second
//! is drawn at random by weight, and the one with fewer in-flight requests
//! per unit of weight wins (ties go to the wheel). The in-flight count is
//! held by a guard that lives in the response body, so a stream counts until
//! it ends or the client goes away. Every step is an atomic load or add: no
//! lock on the hot path.
//!
//! **Outcomes.** Every failure is classified by [`Outcome::of`] on the typed
//! [`Error`] (reason and upstream status, never text) and handled by the
//! table in [`outcome`]: a client fault (400, 422, a content filter, context
//! length) is returned at once; an upstream 413 tries another deployment
//! without cooling any down; a 429 cools the deployment down until its
//! `Retry-After`; an upstream 401/403, or an answer that says the model is
//! unknown or retired ([`classify::MODEL_GONE`]), cools it down for long; a
//! route the upstream does not serve (any other 404, 405, 501) cools down
//! only that route family ([`Endpoint`]) on that deployment, in this replica
//! ([`RouteCooldowns`]); timeouts, connection failures and 5xx cool it down
//! after [`FailureWindow::threshold`] of them within the window, or at once
//! until the 5xx's own `Retry-After`. Retryable failures try another deployment, up to
//! [`RetryPolicy::num_retries`] retries per request; the *same* deployment is
//! tried again (after a backoff with jitter) only when no other is left and
//! the failure was a passing one (never a timeout). Cooldowns live in a
//! [`CooldownStore`] (in memory by default; shareable across replicas).
//!
//! **Streams.** The commit point is the first content event (see
//! [`body`]): the router reads the stream up to it, holding the few frames
//! seen (at most 64 KiB), so a status error, a timeout or a cut before any
//! content is retried invisibly. After it the stream is the client's; a
//! failure ends it with the SSE error event (by
//! [`NormalizeErrors`](crate::normalize::NormalizeErrors)) and counts as a
//! deployment failure.
//!
//! **Answers.** Success: headers `x-tollgate-deployment` (which deployment
//! served), `x-tollgate-model-group` (which group) and `x-tollgate-attempts`;
//! a non-streaming JSON answer's top-level `model` is set to the group that
//! served (a splice of the upstream's bytes, no re-serializing; stream chunks
//! keep the upstream's `model`). Failure: the failed attempt's own error when
//! it is not retryable, else the most useful of the attempts' errors (one
//! with a `Retry-After` first); either way `metadata.attempts` lists every
//! failed attempt (group, deployment, provider, reason, statuses, sanitized
//! message). A request for a group whose every deployment is cooling down
//! gets 503 `no_available_deployment` with `Retry-After` set to the soonest
//! expiry — unless they all cool down for a reason waiting does not fix:
//! every upstream said the model is gone (404 `upstream_model_not_found`,
//! `permanent`), some do not serve the route (502
//! `upstream_route_not_served`), or they refused the gateway's key (502
//! `upstream_auth_failed`). An unknown group is 404 `model_not_found`.
//!
//! **Health.** [`Router::health`] is a read-only snapshot for operators:
//! per deployment, requests in flight against capacity, the cooldown (read
//! through the same store as routing) with its reason and time left, and
//! failed attempts by reason over the last minutes, counted only where a
//! failure is handled ([`health`]).
//!
//! **Retry-After.** A client is never told to come back sooner than the
//! gateway will take its request: when every deployment of the group is
//! cooling once the attempts are over (cooldowns set by this very request
//! included), the final error's `Retry-After` is at least the soonest expiry
//! among them, whatever the upstream's own `Retry-After` said.
//!
//! ```
//! use tollgate::provider::Provider;
//! use tollgate::router::{Deployment, RetryPolicy, Router};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = Provider::builder("east", "http://127.0.0.1:9001/v1")?.model("gpt-4o-mini").build();
//! let b = Provider::builder("west", "http://127.0.0.1:9002/v1")?.model("gpt-4o-mini").build();
//! let router = Router::builder()
//!     .group("gpt-4o-mini", vec![Deployment::new("east", a, 1), Deployment::new("west", b, 2).capacity(64)])?
//!     .policy(RetryPolicy { num_retries: 3, ..RetryPolicy::default() })
//!     .build();
//! assert_eq!(router.model_names().collect::<Vec<_>>(), ["gpt-4o-mini"]);
//! # Ok(()) }
//! ```

pub mod body;
pub mod classify;
pub mod cooldown;
pub mod health;
pub mod outcome;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use crate::body::{Body, Chunks};
use crate::error::{Error, Reason};
use crate::metrics;
use crate::read_request::{Endpoint, json_string, scan};
use crate::{LlmRequest, Served};

use self::body::{CommitWatch, Failed, InFlight, OnFailure, PEEK_LIMIT, RouterBody};
pub use self::cooldown::{
    Clock, Cooldown, CooldownReason, CooldownStore, DeploymentId, FailureWindow, InMemoryCooldowns,
    ManualClock, Millis, RouteCooldowns, SystemClock, TokioClock,
};
pub use self::health::{
    Cooling, DeploymentHealth, ErrorCounts, GroupHealth, Health, QueueDepth, RouteCooling,
};
pub use self::outcome::Outcome;
use self::outcome::{ATTEMPTS, attempt_record, most_useful};

/// The response header naming the deployment that served.
pub const DEPLOYMENT_HEADER: &str = "x-tollgate-deployment";
/// The response header naming the model group that served.
pub const MODEL_GROUP_HEADER: &str = "x-tollgate-model-group";
/// The response header counting the upstream attempts made for the request.
pub const ATTEMPTS_HEADER: &str = "x-tollgate-attempts";

/// The most deployments one group may have.
pub const MAX_DEPLOYMENTS: usize = 128;

/// Retries, backoff and cooldowns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries per request after the first attempt (default 2).
    pub num_retries: u32,
    /// First backoff before trying the same deployment again (default 100 ms;
    /// doubles each time, with jitter; never before trying another one).
    pub backoff: Duration,
    /// The longest backoff (default 2 s).
    pub max_backoff: Duration,
    /// The shortest 429 cooldown (default 1 s; an upstream 429 without
    /// `Retry-After` is taken as 1 s).
    pub min_rate_limit_cooldown: Duration,
    /// The longest 429 cooldown, whatever `Retry-After` says (default 300 s).
    pub max_rate_limit_cooldown: Duration,
    /// Cooldown after the upstream refused our credential (default 300 s).
    pub credential_cooldown: Duration,
    /// Cooldown after the upstream said the model is gone (default 3 600 s).
    pub model_gone_cooldown: Duration,
    /// Cooldown of one route family on one deployment after the upstream
    /// answered that it does not serve it (default 300 s; local to the replica).
    pub route_cooldown: Duration,
    /// Failures (timeouts, 5xx, connection) that cool a deployment down
    /// (default 3 within 60 s).
    pub failures: FailureWindow,
    /// Cooldown after that many failures (default 30 s).
    pub failure_cooldown: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            num_retries: 2,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            min_rate_limit_cooldown: Duration::from_secs(1),
            max_rate_limit_cooldown: Duration::from_secs(300),
            credential_cooldown: Duration::from_secs(300),
            model_gone_cooldown: Duration::from_secs(3600),
            route_cooldown: Duration::from_secs(300),
            failures: FailureWindow {
                threshold: 3,
                window: Duration::from_secs(60),
            },
            failure_cooldown: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The backoff before the `k`-th retry of the same deployment (from 0):
    /// `backoff * 2^k`, capped, then a uniform draw from its upper half.
    pub fn backoff_for(&self, k: u32) -> Duration {
        let full = self
            .backoff
            .saturating_mul(1u32 << k.min(16))
            .min(self.max_backoff);
        let half = full / 2;
        half + full.mul_f64(fastrand::f64()) / 2
    }

    /// What an outcome does to the deployment (or to one of its routes), if
    /// anything, at `now`.
    fn penalize(&self, at: &Penalty<'_>, e: &Error, now: Millis) {
        let ms = |d: Duration| d.as_millis() as u64;
        let id = at.id;
        metrics::record::upstream_error(id.key(), e.reason().as_str());
        at.errors.record(e.reason(), now);
        let asked = || {
            e.retry_after()
                .unwrap_or(self.min_rate_limit_cooldown)
                .clamp(self.min_rate_limit_cooldown, self.max_rate_limit_cooldown)
        };
        let cooldown = match Outcome::of(e) {
            Outcome::RateLimited => Some((asked(), CooldownReason::RateLimited)),
            Outcome::Credential => Some((self.credential_cooldown, CooldownReason::Credential)),
            Outcome::ModelGone => Some((self.model_gone_cooldown, CooldownReason::ModelGone)),
            Outcome::RouteNotServed => {
                tracing::info!(
                    deployment = id.key(),
                    route = ?at.endpoint,
                    reason = "route_not_served",
                    cooldown_ms = ms(self.route_cooldown),
                    "deployment route cooling down"
                );
                metrics::record::cooldown(id.key(), "route_not_served");
                at.routes
                    .cool_down(id, at.endpoint, now + ms(self.route_cooldown), now);
                None
            }
            Outcome::Transient => {
                let tripped = at
                    .store
                    .record_failure(id, now, self.failures)
                    .then_some(self.failure_cooldown);
                // A 5xx that says when to come back is believed at once.
                let told = (e.upstream_asked_to_wait()
                    && e.upstream_status().is_some_and(|s| s.is_server_error()))
                .then(asked);
                tripped.max(told).map(|d| (d, CooldownReason::Failures))
            }
            Outcome::ClientFault
            | Outcome::ContextLength
            | Outcome::TooLargeHere
            | Outcome::Gateway => None,
        };
        if let Some((after, reason)) = cooldown {
            tracing::info!(
                deployment = id.key(),
                reason = reason.as_str(),
                cooldown_ms = ms(after),
                "deployment cooling down"
            );
            metrics::record::cooldown(id.key(), reason.as_str());
            at.store.cool_down(
                id,
                Cooldown {
                    until: now + ms(after),
                    reason,
                },
            );
        }
    }
}

/// Where a failed attempt's cooldown goes: the deployment, in `store`, or
/// only the request's route family on it, in `routes`.
struct Penalty<'a> {
    store: &'a dyn CooldownStore,
    routes: &'a RouteCooldowns,
    id: &'a DeploymentId,
    endpoint: Endpoint,
    /// The deployment's failed attempts, for [`Router::health`].
    errors: &'a ErrorCounts,
}

/// One deployment of a model group.
#[derive(Clone)]
pub struct Deployment<S> {
    name: Arc<str>,
    service: S,
    weight: u32,
    capacity: Option<u32>,
}

impl<S> Deployment<S> {
    /// A deployment named `name` (logs, headers) with a relative `weight` (0 is taken as 1).
    pub fn new(name: &str, service: S, weight: u32) -> Self {
        Deployment {
            name: name.into(),
            service,
            weight: weight.max(1),
            capacity: None,
        }
    }

    /// At most this many requests in flight here (0 is taken as 1); when
    /// every deployment of the group is full, requests get 503.
    pub fn capacity(mut self, n: u32) -> Self {
        self.capacity = Some(n.max(1));
        self
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<S> fmt::Debug for Deployment<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// A deployment inside a built router.
struct Slot<S> {
    name: Arc<str>,
    header: HeaderValue,
    service: S,
    weight: u64,
    capacity: u32,
    id: DeploymentId,
    load: Arc<AtomicU32>,
    /// Mirrors `load` in `tollgate_deployment_in_flight`.
    gauge: metrics::Gauge,
    /// Failed attempts per minute and reason (written only on failures).
    errors: Arc<ErrorCounts>,
}

struct Group<S> {
    name: Arc<str>,
    header: HeaderValue,
    literal: Bytes,
    slots: Vec<Slot<S>>,
    /// Slot indexes in smooth weighted round-robin order.
    wheel: Box<[u8]>,
    cursor: AtomicUsize,
}

/// Which deployment to try next.
enum Pick {
    /// One not tried yet for this request.
    Fresh(usize),
    /// Every live one was tried already: this one again.
    Again(usize),
    /// None can take the request now.
    None(Unavailable),
}

/// Why no deployment can take a request.
struct Unavailable {
    /// The soonest expiry among the deployments' own cooldowns.
    soonest: Option<Millis>,
    any_temporary: bool,
    /// Every deployment is cooling because its model is gone.
    all_gone: bool,
    /// Some deployment does not serve the request's route.
    any_route: bool,
    /// Some deployment is at capacity (it may take a request any moment).
    any_busy: bool,
    cooling: Vec<Value>,
}

type Mask = u128;

impl<S> Group<S> {
    /// Which deployments can take a request for `endpoint` at `now`, and
    /// why the others cannot.
    fn scan(&self, now: Millis, at: &Shared<S>, endpoint: Endpoint) -> (Mask, Unavailable) {
        let mut live: Mask = 0;
        let mut why = Unavailable {
            soonest: None,
            any_temporary: false,
            all_gone: true,
            any_route: false,
            any_busy: false,
            cooling: Vec::new(),
        };
        for (i, s) in self.slots.iter().enumerate() {
            match at.store.get(&s.id) {
                Some(c) if c.until > now => {
                    why.soonest = Some(why.soonest.map_or(c.until, |t| t.min(c.until)));
                    why.any_temporary |= c.reason.is_temporary();
                    why.all_gone &= c.reason == CooldownReason::ModelGone;
                    why.cooling.push(serde_json::json!({
                        "deployment": &*s.name,
                        "reason": c.reason.as_str(),
                        "retry_after_ms": c.until - now,
                    }));
                    continue;
                }
                _ => {}
            }
            if let Some(until) = at.routes.get(&s.id, endpoint, now) {
                why.all_gone = false;
                why.any_route = true;
                why.cooling.push(serde_json::json!({
                    "deployment": &*s.name,
                    "reason": "route_not_served",
                    "route": format!("{endpoint:?}"),
                    "retry_after_ms": until - now,
                }));
            } else if s.load.load(Ordering::Relaxed) >= s.capacity {
                why.any_temporary = true;
                why.any_busy = true;
                why.all_gone = false;
            } else {
                live |= 1 << i;
            }
        }
        (live, why)
    }

    fn pick(&self, now: Millis, tried: Mask, at: &Shared<S>, endpoint: Endpoint) -> Pick {
        let (live, why) = self.scan(now, at, endpoint);
        if live & !tried != 0 {
            Pick::Fresh(self.choose(live & !tried))
        } else if live != 0 {
            Pick::Again(self.choose(live))
        } else {
            Pick::None(why)
        }
    }

    /// Weighted power of two choices among `mask` (non-empty): two distinct
    /// candidates, the one with fewer in-flight requests per weight wins.
    fn choose(&self, mask: Mask) -> usize {
        if mask.count_ones() == 1 {
            return mask.trailing_zeros() as usize;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let n = self.wheel.len();
        let first = (0..n)
            .map(|k| self.wheel[(start + k) % n] as usize)
            .find(|&i| mask & (1 << i) != 0)
            .unwrap_or(mask.trailing_zeros() as usize);
        // The second candidate: by weight among the others.
        let others = mask & !(1 << first);
        let total: u64 = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, _)| others & (1 << i) != 0)
            .map(|(_, s)| s.weight)
            .sum();
        let mut at = fastrand::u64(0..total.max(1));
        let mut second = first;
        for (i, s) in self.slots.iter().enumerate() {
            if others & (1 << i) == 0 {
                continue;
            }
            if at < s.weight {
                second = i;
                break;
            }
            at -= s.weight;
        }
        let (a, b) = (&self.slots[first], &self.slots[second]);
        let la = u64::from(a.load.load(Ordering::Relaxed));
        let lb = u64::from(b.load.load(Ordering::Relaxed));
        // lb / wb < la / wa, without division.
        if lb * a.weight < la * b.weight {
            second
        } else {
            first
        }
    }
}

/// Smooth weighted round-robin order of slot indexes (nginx's), weights
/// scaled down so the wheel has at most 4 096 entries, each slot at least once.
fn wheel(weights: &[u64]) -> Box<[u8]> {
    let total: u64 = weights.iter().sum();
    let scale = total.div_ceil(4096).max(1);
    let w: Vec<i64> = weights.iter().map(|w| (w / scale).max(1) as i64).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&w) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .unwrap_or((0, &0));
        current[best] -= total;
        out.push(best as u8);
    }
    out.into_boxed_slice()
}

struct Shared<S> {
    groups: crate::Map<String, Group<S>>,
    policy: RetryPolicy,
    store: Arc<dyn CooldownStore>,
    routes: Arc<RouteCooldowns>,
    clock: Arc<dyn Clock>,
}

/// Routes requests to a healthy deployment of the model group they name,
/// retrying and cooling down by the [`outcome`] table (see the module docs).
pub struct Router<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Router<S> {
    fn clone(&self) -> Self {
        Router {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, g) in &self.shared.groups {
            let names: Vec<&str> = g.slots.iter().map(|s| &*s.name).collect();
            m.entry(k, &names);
        }
        m.finish()
    }
}

/// A router could not be built (an empty, repeated or oversized group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterError(String);

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouterError {}

/// Builds a [`Router`].
pub struct RouterBuilder<S> {
    groups: Vec<(String, Vec<Deployment<S>>)>,
    policy: RetryPolicy,
    store: Option<Arc<dyn CooldownStore>>,
    clock: Arc<dyn Clock>,
    prev: Option<Router<S>>,
}

impl<S> fmt::Debug for RouterBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field(
                "groups",
                &self.groups.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S> Router<S> {
    /// An empty builder.
    pub fn builder() -> RouterBuilder<S> {
        RouterBuilder {
            groups: Vec::new(),
            policy: RetryPolicy::default(),
            store: None,
            clock: Arc::new(SystemClock),
            prev: None,
        }
    }

    /// Every deployment's id, by index.
    fn ids(&self) -> Vec<DeploymentId> {
        let mut ids: Vec<DeploymentId> = self
            .shared
            .groups
            .values()
            .flat_map(|g| g.slots.iter().map(|s| s.id.clone()))
            .collect();
        ids.sort_unstable_by_key(DeploymentId::index);
        ids
    }

    /// The model groups, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.shared.groups.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Whether a model group of this name exists.
    pub fn has_model(&self, name: &str) -> bool {
        self.shared.groups.contains_key(name)
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    fn slot(&self, group: &str, deployment: &str) -> Option<&Slot<S>> {
        self.shared
            .groups
            .get(group)?
            .slots
            .iter()
            .find(|s| &*s.name == deployment)
    }

    /// The deployment's cooldown, if it is cooling down now.
    pub fn cooldown(&self, group: &str, deployment: &str) -> Option<Cooldown> {
        let s = self.slot(group, deployment)?;
        let now = self.shared.clock.now_ms();
        self.shared.store.get(&s.id).filter(|c| c.until > now)
    }

    /// Until when `endpoint` is cooling on the deployment (on the router's
    /// clock) because the upstream does not serve it, if it is now.
    pub fn route_cooldown(
        &self,
        group: &str,
        deployment: &str,
        endpoint: Endpoint,
    ) -> Option<Millis> {
        let s = self.slot(group, deployment)?;
        let now = self.shared.clock.now_ms();
        self.shared.routes.get(&s.id, endpoint, now)
    }

    /// Requests in flight at the deployment (until their bodies end).
    pub fn in_flight(&self, group: &str, deployment: &str) -> Option<u32> {
        Some(self.slot(group, deployment)?.load.load(Ordering::Relaxed))
    }

    /// A snapshot of every deployment: in flight, cooldowns (read through
    /// the cooldown store, as routing reads them), failed attempts of the
    /// last minutes ([`health`] module docs). Groups sorted by name.
    pub fn health(&self) -> Health {
        let now = self.shared.clock.now_ms();
        let remaining = |until: Millis| Duration::from_millis(until.saturating_sub(now));
        let groups =
            self.model_names()
                .filter_map(|name| self.shared.groups.get(name))
                .map(|g| GroupHealth {
                    name: g.name.to_string(),
                    deployments: g
                        .slots
                        .iter()
                        .map(|s| DeploymentHealth {
                            name: s.name.to_string(),
                            weight: s.weight as u32,
                            in_flight: s.load.load(Ordering::Relaxed),
                            capacity: (s.capacity != u32::MAX).then_some(s.capacity),
                            cooldown: self.shared.store.get(&s.id).filter(|c| c.until > now).map(
                                |c| Cooling {
                                    reason: c.reason,
                                    until: c.until,
                                    remaining: remaining(c.until),
                                },
                            ),
                            route_cooldowns: self
                                .shared
                                .routes
                                .cooling(&s.id, now)
                                .into_iter()
                                .map(|(route, until)| RouteCooling {
                                    route,
                                    until,
                                    remaining: remaining(until),
                                })
                                .collect(),
                            errors: s.errors.recent(now),
                        })
                        .collect(),
                    fallbacks: Vec::new(),
                    context_window_fallbacks: Vec::new(),
                    queue: None,
                })
                .collect();
        Health { now, groups }
    }
}

impl<S> RouterBuilder<S> {
    /// Adds a model group with its deployments (at most [`MAX_DEPLOYMENTS`],
    /// names unique within the group).
    pub fn group(
        mut self,
        name: &str,
        deployments: Vec<Deployment<S>>,
    ) -> Result<Self, RouterError> {
        if deployments.is_empty() {
            return Err(RouterError(format!(
                "model group `{name}` has no deployments"
            )));
        }
        if deployments.len() > MAX_DEPLOYMENTS {
            return Err(RouterError(format!(
                "model group `{name}` has {} deployments; at most {MAX_DEPLOYMENTS} are supported",
                deployments.len()
            )));
        }
        if self.groups.iter().any(|(n, _)| n == name) {
            return Err(RouterError(format!(
                "model group `{name}` is defined twice"
            )));
        }
        for (i, d) in deployments.iter().enumerate() {
            if deployments[..i].iter().any(|o| o.name == d.name) {
                return Err(RouterError(format!(
                    "model group `{name}` has two deployments named `{}`; give them distinct names",
                    d.name
                )));
            }
        }
        self.groups.push((name.to_owned(), deployments));
        Ok(self)
    }

    /// Retries, backoff and cooldowns.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Where cooldowns live (default: an [`InMemoryCooldowns`] sized for
    /// the router). A store of your own is indexed by [`DeploymentId`]s
    /// `0..n` in the order the groups and deployments were added.
    pub fn cooldown_store(mut self, store: Arc<dyn CooldownStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The clock cooldowns are measured on (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds the router that replaces `prev` (a configuration reload): a
    /// deployment of the same group and name (`group/deployment`, its
    /// [`DeploymentId::key`]) keeps its cooldown, failure count, cooling
    /// routes and in-flight count (so its `capacity` counts the requests
    /// still running on `prev`), shared with `prev` rather than copied.
    /// Cooldowns stay in `prev`'s store ([`CooldownStore::carry_over`]),
    /// which takes the place of [`cooldown_store`](Self::cooldown_store).
    ///
    /// ```
    /// use tollgate::router::{Deployment, ManualClock, Router};
    /// use tower::service_fn;
    /// # use tollgate::{Body, Error, LlmRequest};
    /// # fn svc() -> impl tower::Service<LlmRequest, Response = http::Response<Body>, Error = Error> + Clone {
    /// #     service_fn(|_r: LlmRequest| async { Ok::<_, Error>(http::Response::new(Body::full("hi"))) })
    /// # }
    /// let old = Router::builder()
    ///     .group("m", vec![Deployment::new("a", svc(), 1), Deployment::new("b", svc(), 1)])
    ///     .unwrap()
    ///     .build();
    /// let new = Router::builder()
    ///     .group("n", vec![Deployment::new("c", svc(), 1)])
    ///     .unwrap()
    ///     .group("m", vec![Deployment::new("b", svc(), 1)])
    ///     .unwrap()
    ///     .carry_over(&old)
    ///     .build();
    /// assert!(new.has_model("n") && new.has_model("m"));
    /// ```
    pub fn carry_over(mut self, prev: &Router<S>) -> Self {
        self.prev = Some(prev.clone());
        self
    }

    /// The router.
    pub fn build(self) -> Router<S> {
        let mut groups =
            crate::Map::with_capacity_and_hasher(self.groups.len(), Default::default());
        let mut index = 0u32;
        let prev = self.prev.as_ref();
        for (name, deployments) in self.groups {
            let weights: Vec<u64> = deployments.iter().map(|d| u64::from(d.weight)).collect();
            let slots = deployments
                .into_iter()
                .map(|d| {
                    let id = DeploymentId::new(index, &format!("{name}/{}", d.name));
                    index += 1;
                    // A deployment the replaced router had counts its requests still there.
                    let kept = prev.and_then(|p| p.slot(&name, &d.name));
                    let load = kept.map_or_else(|| Arc::new(AtomicU32::new(0)), |s| s.load.clone());
                    let errors = kept.map_or_else(Arc::default, |s| s.errors.clone());
                    Slot {
                        gauge: metrics::record::in_flight(id.key()),
                        header: HeaderValue::from_str(&d.name)
                            .unwrap_or_else(|_| HeaderValue::from_static("unnamed")),
                        name: d.name,
                        service: d.service,
                        weight: u64::from(d.weight),
                        capacity: d.capacity.unwrap_or(u32::MAX),
                        id,
                        load,
                        errors,
                    }
                })
                .collect();
            let group = Group {
                header: HeaderValue::from_str(&name)
                    .unwrap_or_else(|_| HeaderValue::from_static("unnamed")),
                literal: json_string(&name),
                name: name.as_str().into(),
                slots,
                wheel: wheel(&weights),
                cursor: AtomicUsize::new(0),
            };
            groups.insert(name, group);
        }
        let (store, routes) = match &self.prev {
            Some(prev) => {
                let mut next: Vec<DeploymentId> = groups
                    .values()
                    .flat_map(|g: &Group<S>| g.slots.iter().map(|s| s.id.clone()))
                    .collect();
                next.sort_unstable_by_key(DeploymentId::index);
                let store = prev
                    .shared
                    .store
                    .carry_over(&prev.ids(), &next)
                    .unwrap_or_else(|| prev.shared.store.clone());
                (store, prev.shared.routes.clone())
            }
            None => (
                self.store
                    .unwrap_or_else(|| Arc::new(InMemoryCooldowns::new(index as usize))),
                Arc::new(RouteCooldowns::new()),
            ),
        };
        Router {
            shared: Arc::new(Shared {
                groups,
                policy: self.policy,
                store,
                routes,
                clock: self.clock,
            }),
        }
    }
}

impl<S, I> Service<LlmRequest<I>> for Router<S>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    I: Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness is per deployment; it is driven inside the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlmRequest<I>) -> ResponseFuture {
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(async move { shared.route(req).await }),
        }
    }
}

/// The future of [`Router`] (and of [`Fallback`](crate::fallback::Fallback)):
/// the retry loop, boxed once per request.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>,
}

impl ResponseFuture {
    pub(crate) fn new(
        f: impl Future<Output = Result<Response<Body>, Error>> + Send + 'static,
    ) -> Self {
        ResponseFuture { inner: Box::pin(f) }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S> Shared<S> {
    async fn route<I>(self: Arc<Self>, req: LlmRequest<I>) -> Result<Response<Body>, Error>
    where
        S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error> + Clone,
        I: Clone,
    {
        let Some(group) = self.groups.get(req.body().model()) else {
            return Err(Error::new(
                Reason::ModelNotFound,
                format!(
                    "No model `{}` is served here; check the model name.",
                    req.body().model()
                ),
            )
            .permanent());
        };
        let stream = req.body().summary().stream;
        let endpoint = req.body().summary().endpoint;
        let max_attempts = 1 + self.policy.num_retries;
        let mut tried: Mask = 0;
        let mut errors: Vec<Error> = Vec::new();
        let mut records: Vec<Value> = Vec::new();
        let mut again = 0u32;
        loop {
            let now = self.clock.now_ms();
            let i = match group.pick(now, tried, &self, endpoint) {
                Pick::Fresh(i) => i,
                Pick::Again(i) => {
                    let passing = errors
                        .last()
                        .is_some_and(|e| Outcome::of(e).retries_same(e));
                    if !passing {
                        return Err(self.give_up(group, endpoint, errors, records));
                    }
                    tokio::time::sleep(self.policy.backoff_for(again)).await;
                    again += 1;
                    i
                }
                Pick::None(why) if errors.is_empty() => {
                    return Err(unavailable(group, why, now, endpoint));
                }
                Pick::None(_) => return Err(self.give_up(group, endpoint, errors, records)),
            };
            tried |= 1 << i;
            let slot = &group.slots[i];
            let attempts = records.len() as u32 + 1;
            if attempts > 1 {
                metrics::record::retry(&group.name);
            }
            let guard = InFlight::acquire(&slot.load, &slot.gauge);
            let span = tracing::debug_span!("attempt", deployment = %slot.name, attempt = attempts);
            let result = async {
                match slot.service.clone().oneshot(req.clone()).await {
                    Ok(res) => {
                        tracing::debug!(status = res.status().as_u16(), "upstream answered");
                        if stream && is_event_stream(&res) {
                            commit(res).await
                        } else {
                            Ok((res, VecDeque::new()))
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            .instrument(span.clone())
            .await;
            let e = match result {
                Ok((res, held)) => {
                    return Ok(self
                        .finish(group, slot, endpoint, res, held, guard, attempts)
                        .await);
                }
                Err(e) => e,
            };
            drop(guard);
            let penalty = Penalty {
                store: &*self.store,
                routes: &self.routes,
                id: &slot.id,
                endpoint,
                errors: &slot.errors,
            };
            span.in_scope(|| {
                self.policy.penalize(&penalty, &e, self.clock.now_ms());
                tracing::debug!(group = %group.name, deployment = %slot.name, reason = %e.reason(), attempt = attempts, "upstream attempt failed");
            });
            records.push(attempt_record(&group.name, &slot.name, &e));
            let outcome = Outcome::of(&e);
            let e = if outcome == Outcome::RouteNotServed {
                let message = format!(
                    "Deployment `{}` of model group `{}`: {}",
                    slot.name,
                    group.name,
                    e.message()
                );
                e.with_message(message)
                    .with_meta("deployment", &*slot.name)
                    .with_meta("model_group", &*group.name)
            } else {
                e
            };
            if !outcome.retries() {
                return Err(e.with_meta(ATTEMPTS, records));
            }
            errors.push(e);
            if attempts >= max_attempts {
                return Err(self.give_up(group, endpoint, errors, records));
            }
        }
    }

    /// Every attempt failed: the most useful error, listing them all, told
    /// to come back no sooner than a deployment will take the request.
    fn give_up(
        &self,
        group: &Group<S>,
        endpoint: Endpoint,
        errors: Vec<Error>,
        records: Vec<Value>,
    ) -> Error {
        let e = give_up(errors, records);
        let now = self.clock.now_ms();
        let (live, why) = group.scan(now, self, endpoint);
        let floor = match why.soonest {
            Some(t) if live == 0 && why.any_temporary && !why.any_busy => {
                Duration::from_millis(t - now)
            }
            _ => return e,
        };
        match e.retry_after() {
            Some(after) if after >= floor => e,
            Some(_) => e.with_retry_after(floor),
            None if matches!(Outcome::of(&e), Outcome::Transient | Outcome::RateLimited) => {
                e.with_retry_after(floor)
            }
            None => e,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        group: &Group<S>,
        slot: &Slot<S>,
        endpoint: Endpoint,
        res: Response<Body>,
        held: VecDeque<Frame<Bytes>>,
        guard: InFlight,
        attempts: u32,
    ) -> Response<Body> {
        let (mut parts, body) = res.into_parts();
        let streaming = !held.is_empty() || body.size_hint().exact().is_none();
        let body = if !streaming && parts.status.is_success() && is_json(&parts.headers) {
            set_model(body, &group.literal, &group.name).await
        } else {
            body
        };
        let on_failure: Option<OnFailure> = streaming.then(|| {
            let (store, routes, clock, policy, id, errors) = (
                self.store.clone(),
                self.routes.clone(),
                self.clock.clone(),
                self.policy,
                slot.id.clone(),
                slot.errors.clone(),
            );
            Box::new(move |e: &Error| {
                let at = Penalty {
                    store: &*store,
                    routes: &routes,
                    id: &id,
                    endpoint,
                    errors: &errors,
                };
                policy.penalize(&at, e, clock.now_ms())
            }) as OnFailure
        });
        // Names made once: a `&str` name is parsed on every insert.
        static DEPLOYMENT_NAME: HeaderName = HeaderName::from_static(DEPLOYMENT_HEADER);
        static MODEL_GROUP_NAME: HeaderName = HeaderName::from_static(MODEL_GROUP_HEADER);
        static ATTEMPTS_NAME: HeaderName = HeaderName::from_static(ATTEMPTS_HEADER);
        let h = &mut parts.headers;
        h.insert(&DEPLOYMENT_NAME, slot.header.clone());
        h.insert(&MODEL_GROUP_NAME, group.header.clone());
        h.insert(&ATTEMPTS_NAME, count(attempts));
        Response::from_parts(
            parts,
            Body::new(RouterBody::new(held, body, guard, on_failure)),
        )
    }
}

/// A small count as a header value, without an allocation for the usual ones.
fn count(n: u32) -> HeaderValue {
    match n {
        1 => HeaderValue::from_static("1"),
        2 => HeaderValue::from_static("2"),
        3 => HeaderValue::from_static("3"),
        n => HeaderValue::from(n),
    }
}

fn is_event_stream<B>(res: &Response<B>) -> bool {
    res.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

fn is_json(headers: &http::HeaderMap) -> bool {
    // A window compare: `str::contains` builds a searcher per call.
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().windows(4).any(|w| w == b"json"))
}

/// Reads a stream up to its commit point. An `Err` frame before it is the
/// attempt's error (tagged with the provider), so it can be retried.
async fn commit(res: Response<Body>) -> Result<(Response<Body>, VecDeque<Frame<Bytes>>), Error> {
    let (parts, mut body) = res.into_parts();
    let mut watch = CommitWatch::default();
    let mut held = VecDeque::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => {
                return Err(match parts.extensions.get::<Served>() {
                    Some(s) if e.provider().is_none() => e.with_provider(s.provider.clone()),
                    _ => e,
                });
            }
            Some(Ok(frame)) => {
                let content = frame.data_ref().is_some_and(|d| watch.feed(d));
                held.push_back(frame);
                if content || watch.held() >= PEEK_LIMIT {
                    break;
                }
            }
        }
    }
    Ok((Response::from_parts(parts, body), held))
}

/// Sets the top-level `model` of an in-memory JSON answer to the group's
/// name: the upstream's bytes around a new literal, nothing re-serialized.
/// An answer without a top-level string `model` ahead of any malformed
/// part is left as is.
async fn set_model(body: Body, literal: &Bytes, group: &str) -> Body {
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Body::new(Failed(Some(e))),
    };
    // Read only up to the top-level `model` (the provider validated the
    // answer; whatever follows is forwarded as it came).
    match scan::top_level_model(&bytes) {
        Some(m) if m.value != group => Body::new(Chunks::new(vec![
            bytes.slice(..m.span.start),
            literal.clone(),
            bytes.slice(m.span.end..),
        ])),
        _ => Body::full(bytes),
    }
}

/// Every attempt failed: the most useful error, listing them all.
fn give_up(errors: Vec<Error>, records: Vec<Value>) -> Error {
    match most_useful(errors) {
        Some(e) => e.with_meta(ATTEMPTS, records),
        None => Error::new(Reason::Internal, "The router made no attempt."),
    }
}

/// No deployment could take the request, before any attempt.
fn unavailable<S>(group: &Group<S>, why: Unavailable, now: Millis, endpoint: Endpoint) -> Error {
    let g = &group.name;
    let e = if why.any_temporary {
        let after = why
            .soonest
            .map_or(Duration::from_secs(1), |t| Duration::from_millis(t - now));
        Error::new(
            Reason::NoAvailableDeployment,
            format!(
                "Every deployment of model group `{g}` is cooling down or busy; try again in {} s.",
                after.as_millis().div_ceil(1000).max(1)
            ),
        )
        .with_retry_after(after)
    } else if why.all_gone {
        Error::new(
            Reason::UpstreamModelNotFound,
            format!(
                "Every deployment of model group `{g}` says the model does not exist or was retired."
            ),
        )
        .permanent()
    } else if why.any_route {
        Error::new(
            Reason::UpstreamRouteNotServed,
            format!(
                "No deployment of model group `{g}` serves this route ({endpoint:?}) now; this is a gateway configuration problem (metadata.cooling names each deployment and why)."
            ),
        )
    } else {
        Error::new(
            Reason::UpstreamAuthFailed,
            format!(
                "Every deployment of model group `{g}` refused the gateway's credential; this is a gateway configuration problem, not your key."
            ),
        )
    };
    e.with_meta("model_group", &**g)
        .with_meta("cooling", why.cooling)
}

#[cfg(test)]
mod tests;
