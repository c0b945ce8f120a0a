//! Cooldown state: which deployments the router must not use until when.
//!
//! The [`Router`](super::Router) reads and writes cooldowns only through the
//! [`CooldownStore`] trait, so several gateway replicas can share one truth
//! (a Redis store keeps a local mirror and publishes changes; the trait is
//! synchronous so that the hot path never waits on the network). Time comes
//! from a [`Clock`], in milliseconds, so tests can move it by hand
//! ([`ManualClock`]) or with `tokio::time::pause` ([`TokioClock`]).
//!
//! [`InMemoryCooldowns`] is the in-process store: one slot per deployment,
//! all atomics, no lock. Reading a deployment's state is one atomic load.
//!
//! [`RouteCooldowns`] holds the narrower cooldowns of one route family on
//! one deployment (an upstream that does not serve `/v1/responses` keeps
//! serving chat). They are local to each replica: a route an upstream does
//! not serve is a configuration problem that each replica learns with one
//! retried request, not worth a round trip to shared state.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::read_request::Endpoint;

/// Milliseconds on a [`Clock`].
pub type Millis = u64;

/// A source of time for cooldowns, in milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> Millis;
}

/// Wall-clock time: milliseconds since the Unix epoch. The right clock for a
/// store shared across replicas.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Tokio's clock, so `tokio::time::pause` and `advance` move cooldowns too.
/// Counts from its creation (plus one, so it never reads 0).
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock starting now.
    pub fn new() -> Self {
        TokioClock {
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> Millis {
        self.base.elapsed().as_millis() as u64 + 1
    }
}

/// A clock that moves only when told to (tests through real sockets, where
/// pausing tokio's clock would fire every network timeout at once).
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start` ms.
    pub fn new(start: Millis) -> Self {
        ManualClock {
            now: Arc::new(AtomicU64::new(start)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new(1_000_000)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// Why a deployment is cooling down. The reason decides what a request gets
/// when every deployment of its group is cooling: only temporary reasons make
/// that a 503 worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CooldownReason {
    /// The upstream answered 429 (cooling until its `Retry-After`).
    RateLimited = 1,
    /// Too many timeouts / 5xx / connection failures in the failure window.
    Failures = 2,
    /// The upstream refused the gateway's credential (401/403).
    Credential = 3,
    /// The upstream says the model does not exist or was retired (404/410).
    ModelGone = 4,
}

impl CooldownReason {
    /// The stable word used in metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            CooldownReason::RateLimited => "rate_limited",
            CooldownReason::Failures => "failures",
            CooldownReason::Credential => "credential",
            CooldownReason::ModelGone => "model_gone",
        }
    }

    /// Whether waiting is expected to help (a rate limit, passing failures),
    /// as opposed to a problem an operator must fix (a key, a retired model).
    pub fn is_temporary(self) -> bool {
        matches!(self, CooldownReason::RateLimited | CooldownReason::Failures)
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => CooldownReason::RateLimited,
            2 => CooldownReason::Failures,
            3 => CooldownReason::Credential,
            4 => CooldownReason::ModelGone,
            _ => return None,
        })
    }
}

/// A deployment is cooling down until `until` (on the router's [`Clock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cooldown {
    /// When it may take traffic again.
    pub until: Millis,
    /// Why.
    pub reason: CooldownReason,
}

/// Names a deployment to a [`CooldownStore`]: a dense `index` (0..n over the
/// whole router, for in-process stores) and a `key` unique across replicas
/// (`group/deployment`, for shared stores).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeploymentId {
    index: u32,
    key: Arc<str>,
}

impl DeploymentId {
    /// An id; the router assigns them when it is built.
    pub fn new(index: u32, key: &str) -> Self {
        DeploymentId {
            index,
            key: key.into(),
        }
    }

    /// The dense index, 0..the router's deployment count.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// `group/deployment`, stable across replicas.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The sliding failure window: `threshold` failures within `window` cool a
/// deployment down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureWindow {
    /// How many failures (1..=[`MAX_THRESHOLD`]).
    pub threshold: u32,
    /// Within how long.
    pub window: Duration,
}

/// The largest failure threshold the in-memory store tracks.
pub const MAX_THRESHOLD: u32 = 32;

/// Where cooldowns live. Implementations must be cheap to read: the router
/// calls [`get`](Self::get) for the deployments of a group on every request.
pub trait CooldownStore: Send + Sync + fmt::Debug + 'static {
    /// The deployment's latest cooldown, possibly already expired (the caller
    /// compares `until` with its clock).
    fn get(&self, id: &DeploymentId) -> Option<Cooldown>;

    /// Cools the deployment down; an existing later expiry is kept.
    fn cool_down(&self, id: &DeploymentId, cooldown: Cooldown);

    /// Records a counted failure (timeout, 5xx, connection) at `now`. Returns
    /// `true` when this failure completes `threshold` failures within the
    /// window; the window then starts empty again.
    fn record_failure(&self, id: &DeploymentId, now: Millis, window: FailureWindow) -> bool;

    /// The store for a router rebuilt with other deployments (a
    /// configuration reload, [`RouterBuilder::carry_over`](super::RouterBuilder::carry_over)):
    /// `prev` are the ids of the router it replaces, `next` the new one's.
    /// A deployment whose [`key`](DeploymentId::key) is in both keeps its
    /// cooldown and failure count; both routers then share that state (the
    /// old one still serves the requests that started on it).
    ///
    /// `None` (the default): this very store serves the new router as it
    /// is, right for a store that names deployments by `key`. A store
    /// indexed by [`DeploymentId::index`] must map its entries to the new
    /// indexes, as [`InMemoryCooldowns`] does.
    fn carry_over(
        &self,
        prev: &[DeploymentId],
        next: &[DeploymentId],
    ) -> Option<Arc<dyn CooldownStore>> {
        let _ = (prev, next);
        None
    }
}

/// The in-process [`CooldownStore`]: a fixed array of atomic slots indexed by
/// [`DeploymentId::index`]. Ids beyond its capacity are never cooling. A
/// reload's router shares the slots of the deployments it keeps
/// ([`carried_over`](Self::carried_over)).
pub struct InMemoryCooldowns {
    slots: Box<[Arc<Slot>]>,
}

struct Slot {
    /// `until << 8 | reason`, so `fetch_max` keeps the later expiry.
    state: AtomicU64,
    /// The last `threshold` failure times (a ring).
    failures: [AtomicU64; MAX_THRESHOLD as usize],
    next: AtomicU32,
}

impl InMemoryCooldowns {
    /// A store for deployments with indexes `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        InMemoryCooldowns {
            slots: (0..capacity).map(|_| Arc::new(Slot::new())).collect(),
        }
    }

    /// A store for the deployments `next` that shares this store's slot
    /// (cooldown and failures) for each deployment of `prev` with the same
    /// [`key`](DeploymentId::key); the others start cool.
    pub fn carried_over(&self, prev: &[DeploymentId], next: &[DeploymentId]) -> Self {
        let kept: HashMap<&str, &Arc<Slot>> = prev
            .iter()
            .filter_map(|id| Some((id.key(), self.slots.get(id.index())?)))
            .collect();
        let capacity = next.iter().map(|id| id.index() + 1).max().unwrap_or(0);
        let mut slots: Vec<Option<Arc<Slot>>> = vec![None; capacity];
        for id in next {
            slots[id.index()] = kept.get(id.key()).map(|s| Arc::clone(s));
        }
        InMemoryCooldowns {
            slots: slots
                .into_iter()
                .map(|s| s.unwrap_or_else(|| Arc::new(Slot::new())))
                .collect(),
        }
    }
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: AtomicU64::new(0),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            next: AtomicU32::new(0),
        }
    }
}

impl fmt::Debug for InMemoryCooldowns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryCooldowns")
            .field("capacity", &self.slots.len())
            .finish()
    }
}

impl CooldownStore for InMemoryCooldowns {
    fn get(&self, id: &DeploymentId) -> Option<Cooldown> {
        let v = self.slots.get(id.index())?.state.load(Ordering::Acquire);
        Some(Cooldown {
            until: v >> 8,
            reason: CooldownReason::from_u8(v as u8)?,
        })
    }

    fn cool_down(&self, id: &DeploymentId, cooldown: Cooldown) {
        if let Some(slot) = self.slots.get(id.index()) {
            let packed = (cooldown.until << 8) | cooldown.reason as u64;
            slot.state.fetch_max(packed, Ordering::AcqRel);
        }
    }

    fn carry_over(
        &self,
        prev: &[DeploymentId],
        next: &[DeploymentId],
    ) -> Option<Arc<dyn CooldownStore>> {
        Some(Arc::new(self.carried_over(prev, next)))
    }

    fn record_failure(&self, id: &DeploymentId, now: Millis, window: FailureWindow) -> bool {
        let Some(slot) = self.slots.get(id.index()) else {
            return false;
        };
        let n = window.threshold.clamp(1, MAX_THRESHOLD);
        let at = slot.next.fetch_add(1, Ordering::AcqRel) % n;
        // 0 marks an empty entry; a clock reading 0 still counts.
        slot.failures[at as usize].store(now.max(1), Ordering::Release);
        let since = now.saturating_sub(window.window.as_millis() as u64);
        let recent = slot.failures[..n as usize]
            .iter()
            .filter(|t| {
                let t = t.load(Ordering::Acquire);
                t != 0 && t >= since
            })
            .count();
        if recent as u32 >= n {
            for t in &slot.failures[..n as usize] {
                t.store(0, Ordering::Release);
            }
            true
        } else {
            false
        }
    }
}

/// Cooldowns of one route family ([`Endpoint`]) on one deployment, local to
/// this process, by the deployment's [`key`](DeploymentId::key) (so a
/// reload's router can share them). Reading is one atomic load while none is
/// running (the usual case); a lock is taken only while some route is cooling.
#[derive(Default)]
pub struct RouteCooldowns {
    /// The latest expiry of any entry: once it has passed, nothing is cooling.
    latest: AtomicU64,
    entries: Mutex<HashMap<(Arc<str>, Endpoint), Millis>>,
}

impl RouteCooldowns {
    /// No route cooling.
    pub fn new() -> Self {
        Self::default()
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<(Arc<str>, Endpoint), Millis>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Until when `endpoint` on the deployment is cooling, if it is at `now`.
    pub fn get(&self, id: &DeploymentId, endpoint: Endpoint, now: Millis) -> Option<Millis> {
        if self.latest.load(Ordering::Acquire) <= now {
            return None;
        }
        self.entries()
            .get(&(id.key.clone(), endpoint))
            .copied()
            .filter(|&until| until > now)
    }

    /// Every route family cooling on the deployment at `now`, with its
    /// expiry, in [`Endpoint`] order.
    pub fn cooling(&self, id: &DeploymentId, now: Millis) -> Vec<(Endpoint, Millis)> {
        if self.latest.load(Ordering::Acquire) <= now {
            return Vec::new();
        }
        let mut out: Vec<(Endpoint, Millis)> = self
            .entries()
            .iter()
            .filter(|((key, _), until)| *key == id.key && **until > now)
            .map(|((_, endpoint), until)| (*endpoint, *until))
            .collect();
        out.sort_by_key(|(e, _)| *e as u8);
        out
    }

    /// Cools `endpoint` on the deployment down until `until`; a later
    /// expiry already set is kept. Expired entries are dropped.
    pub fn cool_down(&self, id: &DeploymentId, endpoint: Endpoint, until: Millis, now: Millis) {
        let mut entries = self.entries();
        entries.retain(|_, t| *t > now);
        let t = entries.entry((id.key.clone(), endpoint)).or_insert(until);
        *t = (*t).max(until);
        self.latest.fetch_max(until, Ordering::AcqRel);
    }
}

impl fmt::Debug for RouteCooldowns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCooldowns")
            .field("entries", &self.entries().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> DeploymentId {
        DeploymentId::new(i, &format!("g/d{i}"))
    }

    #[test]
    fn later_expiry_wins_and_reason_travels_with_it() {
        let s = InMemoryCooldowns::new(2);
        assert_eq!(s.get(&id(0)), None);
        let a = Cooldown {
            until: 5_000,
            reason: CooldownReason::RateLimited,
        };
        s.cool_down(&id(0), a);
        assert_eq!(s.get(&id(0)), Some(a));
        s.cool_down(
            &id(0),
            Cooldown {
                until: 4_000,
                reason: CooldownReason::ModelGone,
            },
        );
        assert_eq!(
            s.get(&id(0)),
            Some(a),
            "an earlier expiry does not shorten it"
        );
        let b = Cooldown {
            until: 9_000,
            reason: CooldownReason::Credential,
        };
        s.cool_down(&id(0), b);
        assert_eq!(s.get(&id(0)), Some(b));
        assert_eq!(s.get(&id(1)), None, "slots are independent");
        assert_eq!(s.get(&id(7)), None, "beyond capacity: never cooling");
    }

    #[test]
    fn failures_count_in_a_sliding_window() {
        let s = InMemoryCooldowns::new(1);
        let w = FailureWindow {
            threshold: 3,
            window: Duration::from_millis(1_000),
        };
        assert!(!s.record_failure(&id(0), 100, w));
        assert!(!s.record_failure(&id(0), 200, w));
        // The first failure slid out of the window before the third.
        assert!(!s.record_failure(&id(0), 1_150, w));
        // And the second before the fourth.
        assert!(!s.record_failure(&id(0), 1_300, w));
        assert!(s.record_failure(&id(0), 1_400, w), "three within 1 s");
        // The window starts empty again.
        assert!(!s.record_failure(&id(0), 1_410, w));
        assert!(!s.record_failure(&id(0), 1_420, w));
        assert!(s.record_failure(&id(0), 1_430, w));
    }

    #[test]
    fn threshold_one_cools_at_once() {
        let s = InMemoryCooldowns::new(1);
        let w = FailureWindow {
            threshold: 1,
            window: Duration::from_secs(1),
        };
        assert!(s.record_failure(&id(0), 0, w));
    }

    #[test]
    fn manual_and_tokio_clocks() {
        let c = ManualClock::new(10);
        c.advance(Duration::from_secs(6));
        assert_eq!(c.now_ms(), 6_010);
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_pause_and_advance() {
        let c = TokioClock::new();
        let t0 = c.now_ms();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(c.now_ms() - t0, 6_000);
    }

    #[test]
    fn a_route_cools_down_alone() {
        let r = RouteCooldowns::new();
        assert_eq!(r.get(&id(0), Endpoint::Responses, 0), None);
        r.cool_down(&id(0), Endpoint::Responses, 5_000, 1_000);
        assert_eq!(r.get(&id(0), Endpoint::Responses, 1_000), Some(5_000));
        assert_eq!(r.get(&id(0), Endpoint::ChatCompletions, 1_000), None);
        assert_eq!(r.get(&id(1), Endpoint::Responses, 1_000), None);
        r.cool_down(&id(0), Endpoint::Responses, 3_000, 1_000);
        assert_eq!(
            r.get(&id(0), Endpoint::Responses, 1_000),
            Some(5_000),
            "an earlier expiry does not shorten it"
        );
        assert_eq!(r.get(&id(0), Endpoint::Responses, 5_000), None, "expired");
        r.cool_down(&id(0), Endpoint::Embeddings, 6_000, 1_000);
        assert_eq!(
            r.cooling(&id(0), 4_000),
            [(Endpoint::Embeddings, 6_000), (Endpoint::Responses, 5_000)]
        );
        assert_eq!(r.cooling(&id(0), 5_500), [(Endpoint::Embeddings, 6_000)]);
        assert_eq!(r.cooling(&id(1), 4_000), []);
        // An expired entry is dropped when another is set.
        r.cool_down(&id(1), Endpoint::Embeddings, 9_000, 6_000);
        assert_eq!(r.entries().len(), 1);
    }

    #[test]
    fn a_reload_shares_the_slots_of_the_deployments_it_keeps() {
        let old = Arc::new(InMemoryCooldowns::new(3));
        let prev = [
            DeploymentId::new(0, "a/x"),
            DeploymentId::new(1, "a/y"),
            DeploymentId::new(2, "b/z"),
        ];
        let c = Cooldown {
            until: 9_000,
            reason: CooldownReason::RateLimited,
        };
        old.cool_down(&prev[1], c);
        let w = FailureWindow {
            threshold: 2,
            window: Duration::from_secs(10),
        };
        assert!(!old.record_failure(&prev[2], 100, w));
        // `a/y` moves to index 0, `c/new` takes 1, `b/z` stays at 2, `a/x` is gone.
        let next = [
            DeploymentId::new(0, "a/y"),
            DeploymentId::new(1, "c/new"),
            DeploymentId::new(2, "b/z"),
        ];
        let new = old.carry_over(&prev, &next).unwrap();
        assert_eq!(new.get(&next[0]), Some(c), "the cooldown followed its key");
        assert_eq!(new.get(&next[1]), None, "a new deployment starts cool");
        assert!(
            new.record_failure(&next[2], 200, w),
            "the failure count carried over: this is the second of two"
        );
        // Shared, not copied: what the old router still writes, the new one reads.
        let later = Cooldown {
            until: 20_000,
            reason: CooldownReason::Credential,
        };
        old.cool_down(&prev[1], later);
        assert_eq!(new.get(&next[0]), Some(later));
        // Route cooldowns are by key, so one store serves both routers.
        let routes = RouteCooldowns::new();
        routes.cool_down(&prev[1], Endpoint::Responses, 5_000, 0);
        assert_eq!(routes.get(&next[0], Endpoint::Responses, 0), Some(5_000));
    }
}
