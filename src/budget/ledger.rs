//! The ledger: spent and reserved money per scope and period, in integer
//! micro-USD, with all-or-nothing reservations across scopes.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::period::{Clock, Period, SystemClock, Window, Windows};
use crate::error::{Error, Reason};

/// Money in micro-USD (a millionth of a dollar): sums never drift.
pub type Micros = u64;

/// How many independently locked parts the ledger's counters are spread over.
const SHARDS: usize = 64;

/// What a budget belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One virtual key, by its public id.
    Key(Arc<str>),
    /// One team, by its id.
    Team(Arc<str>),
    /// One user (the user a key was made for), by its id.
    User(Arc<str>),
    /// One end user (a customer, named by the request), by its id.
    EndUser(Arc<str>),
    /// The whole gateway.
    Global,
}

impl Scope {
    /// `key`, `team`, `user`, `end_user` or `global`.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Key(_) => "key",
            Scope::Team(_) => "team",
            Scope::User(_) => "user",
            Scope::EndUser(_) => "end_user",
            Scope::Global => "global",
        }
    }

    /// The id of the key, team, user or end user (`None`: global).
    pub fn id(&self) -> Option<&str> {
        match self {
            Scope::Key(id) | Scope::Team(id) | Scope::User(id) | Scope::EndUser(id) => Some(id),
            Scope::Global => None,
        }
    }
}

/// One budget a request is checked and charged against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Whose budget.
    pub scope: Scope,
    /// The most that may be spent (and reserved) in one period.
    pub max: Micros,
    /// When spending starts again at zero.
    pub period: Period,
}

#[cfg(feature = "keys")]
impl Limit {
    /// A key's or team's budget (USD over a period) as a limit of `scope`;
    /// `None` when the amount is not a number of dollars, 0 or more.
    pub fn from_budget(scope: Scope, budget: crate::keys::Budget) -> Option<Limit> {
        Some(Limit {
            scope,
            max: super::usage::Price::micros_from_usd(budget.max_usd)?,
            period: budget.period.into(),
        })
    }
}

/// What a scope has spent and holds reserved in the current period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Settled cost.
    pub spent: Micros,
    /// Reserved by requests still running.
    pub reserved: Micros,
    /// The current period.
    pub window: Window,
}

/// A request the budget refused: which scope and when it resets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The budget that would be exceeded.
    pub limit: Limit,
    /// Already spent in this period.
    pub spent: Micros,
    /// Reserved by running requests.
    pub reserved: Micros,
    /// What this request needed reserved.
    pub requested: Micros,
    /// When the period resets (`None`: never).
    pub resets_at: Option<Timestamp>,
}

impl From<Refusal> for Error {
    /// 402 `budget_exceeded`, naming the scope's kind (never its id) and the reset.
    fn from(r: Refusal) -> Error {
        let kind = r.limit.scope.kind();
        let period = r.limit.period.to_string();
        let whose = if kind == "end_user" { "end user" } else { kind };
        let mut message = format!(
            "the {whose}'s {period} budget of {} cannot cover this request \
             ({} spent, {} reserved by running requests, {} needed)",
            usd(r.limit.max),
            usd(r.spent),
            usd(r.reserved),
            usd(r.requested),
        );
        if let Some(at) = r.resets_at {
            message.push_str(&format!("; it resets at {at}"));
        } else {
            message.push_str("; it does not reset");
        }
        let error = Error::new(Reason::BudgetExceeded, message)
            .with_meta("scope", kind)
            .with_meta("period", period)
            .with_meta("max_budget_usd", usd_value(r.limit.max))
            .with_meta("spent_usd", usd_value(r.spent))
            .with_meta("reserved_usd", usd_value(r.reserved))
            .with_meta("requested_usd", usd_value(r.requested));
        match r.resets_at {
            Some(at) => error.with_meta("resets_at", at.to_string()),
            None => error,
        }
    }
}

/// `$1.50`, `$0.000123`: dollars with at least two decimals, no trailing zeros beyond.
pub fn usd(micros: Micros) -> String {
    let frac = format!("{:06}", micros % 1_000_000);
    let trimmed = frac.trim_end_matches('0');
    let frac = if trimmed.len() < 2 {
        &frac[..2]
    } else {
        trimmed
    };
    format!("${}.{frac}", micros / 1_000_000)
}

/// Micro-USD as a JSON number of dollars (exact for any realistic amount).
pub fn usd_value(micros: Micros) -> serde_json::Value {
    serde_json::Value::from(micros as f64 / 1e6)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CounterId {
    scope: Scope,
    period: Period,
    /// The period's start (seconds since the epoch): part of the identity,
    /// so a new period is a new counter that starts at zero.
    start: Option<i64>,
}

#[derive(Debug, Default)]
struct Counter {
    spent: Micros,
    reserved: Micros,
    /// When the counter's period ends (seconds since the epoch).
    end: Option<i64>,
}

/// Counters of one shard. foldhash rather than SipHash: hashing the
/// counters' ids was a third of the layer's instructions (callgrind), and
/// ids are the gateway's own key and team ids, each map with its own seed.
type Counters = HashMap<CounterId, Counter, foldhash::fast::RandomState>;

struct Shards {
    shards: Box<[Mutex<Counters>]>,
    /// Picks a shard; seeded apart from the maps, whose buckets would
    /// otherwise share their low bits within a shard.
    hasher: foldhash::fast::RandomState,
}

impl Shards {
    fn index(&self, id: &CounterId) -> usize {
        (self.hasher.hash_one(id) as usize) % self.shards.len()
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Counters> {
        // A panic while holding a shard cannot leave a counter half-updated
        // (every update is a plain assignment), so poisoning is ignored.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Spent and reserved money per scope and period.
///
/// Counters are spread over independently locked shards; a reservation
/// locks only the shards of its own counters (in a fixed order), checks
/// every scope and reserves on all of them or none, so
/// `spent + reserved <= max` holds on every counter at every instant.
#[derive(Clone)]
pub struct Ledger {
    shards: Arc<Shards>,
    tz: TimeZone,
    windows: Arc<Windows>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("time_zone", &self.tz.iana_name().unwrap_or("fixed"))
            .finish_non_exhaustive()
    }
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(TimeZone::UTC)
    }
}

impl Ledger {
    /// A ledger whose periods follow the calendar of `tz`, on the system clock.
    pub fn new(tz: TimeZone) -> Self {
        Ledger::with_clock(tz, SystemClock)
    }

    /// A ledger that reads the time from `clock`.
    pub fn with_clock(tz: TimeZone, clock: impl Clock) -> Self {
        Ledger {
            shards: Arc::new(Shards {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: foldhash::fast::RandomState::default(),
            }),
            tz,
            windows: Arc::default(),
            clock: Arc::new(clock),
        }
    }

    /// The time zone periods are aligned in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The current instant by the ledger's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn id(&self, scope: &Scope, period: Period, now: Timestamp) -> (CounterId, Window) {
        let window = self.windows.window(period, now, &self.tz);
        let id = CounterId {
            scope: scope.clone(),
            period,
            start: window.start.map(Timestamp::as_second),
        };
        (id, window)
    }

    /// Reserves `amount` on every budget in `limits`, in the periods that
    /// contain now, or on none of them: the first budget it would exceed
    /// is the refusal. Dropping the [`Reservation`] releases it.
    pub fn reserve(&self, limits: &[Limit], amount: Micros) -> Result<Reservation, Refusal> {
        let now = self.clock.now();
        let ids: Vec<(CounterId, Window, usize)> = limits
            .iter()
            .map(|l| {
                let (id, window) = self.id(&l.scope, l.period, now);
                let shard = self.shards.index(&id);
                (id, window, shard)
            })
            .collect();
        let mut order: Vec<usize> = ids.iter().map(|(_, _, s)| *s).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<MutexGuard<'_, Counters>> =
            order.iter().map(|&i| self.shards.lock(i)).collect();
        let positions: Vec<usize> = ids
            .iter()
            .map(|(_, _, s)| order.binary_search(s).unwrap_or(0))
            .collect();

        for ((limit, (id, window, _)), &pos) in limits.iter().zip(&ids).zip(&positions) {
            let (spent, reserved) = guards[pos]
                .get(id)
                .map_or((0, 0), |c| (c.spent, c.reserved));
            let total = spent.saturating_add(reserved).saturating_add(amount);
            if total > limit.max {
                return Err(Refusal {
                    limit: limit.clone(),
                    spent,
                    reserved,
                    requested: amount,
                    resets_at: window.end,
                });
            }
        }
        let now_s = now.as_second();
        for ((id, window, _), &pos) in ids.iter().zip(&positions) {
            let map = &mut guards[pos];
            if !map.contains_key(id) {
                // A new counter: forget the shard's finished periods first.
                map.retain(|_, c| c.reserved > 0 || c.end.is_none_or(|end| end > now_s));
            }
            let counter = map.entry(id.clone()).or_insert_with(|| Counter {
                end: window.end.map(Timestamp::as_second),
                ..Counter::default()
            });
            counter.reserved += amount;
        }
        drop(guards);
        Ok(Reservation {
            held: Held::Memory {
                shards: self.shards.clone(),
                counters: ids.into_iter().map(|(id, _, s)| (id, s)).collect(),
            },
            amount,
            open: true,
        })
    }

    /// Adds `spent` to what `scope` spent in the `period` that contains now,
    /// without any check: for rebuilding the ledger at start from persisted
    /// spend ([`restore_ledger`](super::restore_ledger)).
    pub fn restore_spent(&self, scope: &Scope, period: Period, spent: Micros) {
        if spent == 0 {
            return;
        }
        let (id, window) = self.id(scope, period, self.clock.now());
        let mut shard = self.shards.lock(self.shards.index(&id));
        let counter = shard.entry(id).or_insert_with(|| Counter {
            end: window.end.map(Timestamp::as_second),
            ..Counter::default()
        });
        counter.spent = counter.spent.saturating_add(spent);
    }

    /// What `scope` has spent and holds reserved in the `period` that contains now.
    pub fn usage(&self, scope: &Scope, period: Period) -> Usage {
        let (id, window) = self.id(scope, period, self.clock.now());
        let shard = self.shards.lock(self.shards.index(&id));
        let (spent, reserved) = shard.get(&id).map_or((0, 0), |c| (c.spent, c.reserved));
        Usage {
            spent,
            reserved,
            window,
        }
    }
}

/// Money held for one running request on each of its budgets.
///
/// [`settle`](Reservation::settle) charges the real cost and releases the
/// rest; dropping it unsettled releases everything. A [`Ledger`]'s
/// reservation settles in place; a shared store's
/// ([`Reservation::from_fn`]) hands the charge to its own closer, which may
/// finish in the background.
#[must_use = "dropping a reservation releases it"]
pub struct Reservation {
    held: Held,
    amount: Micros,
    open: bool,
}

/// Called once with the charge (0: released) when a store's reservation closes.
type Closer = Box<dyn FnOnce(Micros) + Send>;

enum Held {
    Memory {
        shards: Arc<Shards>,
        counters: Vec<(CounterId, usize)>,
    },
    Store(Option<Closer>),
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scopes = match &self.held {
            Held::Memory { counters, .. } => Some(counters.len()),
            Held::Store(_) => None,
        };
        f.debug_struct("Reservation")
            .field("amount", &self.amount)
            .field("scopes", &scopes)
            .field("open", &self.open)
            .finish()
    }
}

impl Reservation {
    /// A reservation of `amount` held by another store (Redis, …): `close`
    /// is called exactly once, with the charge (at most `amount`; 0 when the
    /// reservation is released or dropped). It must not block: a store that
    /// talks to the network spawns the work.
    pub fn from_fn(amount: Micros, close: impl FnOnce(Micros) + Send + 'static) -> Self {
        Reservation {
            held: Held::Store(Some(Box::new(close))),
            amount,
            open: true,
        }
    }

    /// The amount held.
    pub fn amount(&self) -> Micros {
        self.amount
    }

    /// Charges `cost` to every budget, in the period the reservation was
    /// made in, and releases the rest. A reservation is the most a request
    /// can be charged (the worst case admitted), so a larger `cost` is
    /// charged as the whole reservation; the charge is returned.
    pub fn settle(mut self, cost: Micros) -> Micros {
        let charged = cost.min(self.amount);
        self.close(charged);
        charged
    }

    /// Releases the whole reservation, charging nothing.
    pub fn release(mut self) {
        self.close(0);
    }

    fn close(&mut self, charged: Micros) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        match &mut self.held {
            Held::Memory { shards, counters } => {
                for (id, shard) in counters.iter() {
                    let mut map = shards.lock(*shard);
                    if let Some(c) = map.get_mut(id) {
                        c.reserved = c.reserved.saturating_sub(self.amount);
                        c.spent = c.spent.saturating_add(charged);
                    }
                }
            }
            Held::Store(close) => {
                if let Some(close) = close.take() {
                    close(charged);
                }
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.close(0);
    }
}

/// The operations the ledgers' property tests interleave (the in-process
/// ledger's here, Redis' in `state::budget`).
#[cfg(test)]
pub(crate) mod prop {
    use super::Micros;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    pub(crate) enum Op {
        Reserve { scopes: u8, amount: Micros },
        Settle { which: usize, cost: Micros },
        Release { which: usize },
    }

    pub(crate) fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..8, 0u64..400).prop_map(|(scopes, amount)| Op::Reserve { scopes, amount }),
            (any::<usize>(), 0u64..500).prop_map(|(which, cost)| Op::Settle { which, cost }),
            any::<usize>().prop_map(|which| Op::Release { which }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::ManualClock;
    use proptest::prelude::*;

    fn key(id: &str, max: Micros) -> Limit {
        Limit {
            scope: Scope::Key(id.into()),
            max,
            period: Period::Monthly,
        }
    }

    #[test]
    fn reserve_settle_release() {
        let ledger = Ledger::default();
        let k = key("a", 100);
        let r1 = ledger.reserve(std::slice::from_ref(&k), 60).unwrap();
        let refused = ledger.reserve(std::slice::from_ref(&k), 50).unwrap_err();
        assert_eq!(
            (refused.spent, refused.reserved, refused.requested),
            (0, 60, 50)
        );
        assert_eq!(r1.settle(10), 10);
        let u = ledger.usage(&k.scope, k.period);
        assert_eq!((u.spent, u.reserved), (10, 0));
        let r2 = ledger.reserve(std::slice::from_ref(&k), 90).unwrap();
        drop(r2);
        assert_eq!(ledger.usage(&k.scope, k.period).reserved, 0);
        // A cost above the reservation is charged as the reservation.
        assert_eq!(
            ledger
                .reserve(std::slice::from_ref(&k), 5)
                .unwrap()
                .settle(99),
            5
        );
        assert_eq!(ledger.usage(&k.scope, k.period).spent, 15);
    }

    #[test]
    fn all_scopes_or_none() {
        let ledger = Ledger::default();
        let team = Limit {
            scope: Scope::Team("t".into()),
            max: 100,
            period: Period::Daily,
        };
        let global = Limit {
            scope: Scope::Global,
            max: 1000,
            period: Period::Total,
        };
        let _a = ledger
            .reserve(&[key("a", 50), team.clone(), global.clone()], 50)
            .unwrap();
        // Key b has room; the team has not: nothing is reserved anywhere.
        let e = ledger
            .reserve(&[key("b", 500), team.clone(), global.clone()], 60)
            .unwrap_err();
        assert_eq!(e.limit.scope, Scope::Team("t".into()));
        assert!(e.resets_at.is_some());
        assert_eq!(
            ledger
                .usage(&Scope::Key("b".into()), Period::Monthly)
                .reserved,
            0
        );
        assert_eq!(ledger.usage(&Scope::Global, Period::Total).reserved, 50);
        let err = Error::from(e);
        assert_eq!(err.status(), 402);
        assert_eq!(err.metadata()["scope"], "team");
        assert!(
            err.message().contains("daily budget of $0.0001"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("resets at"), "{}", err.message());
    }

    #[test]
    fn a_new_month_starts_at_zero_and_the_old_one_keeps_its_late_settlement() {
        let tz = TimeZone::get("Europe/Paris").unwrap();
        let april_30 = "2026-04-30T23:59[Europe/Paris]"
            .parse::<jiff::Zoned>()
            .unwrap();
        let clock = ManualClock::new(april_30.timestamp());
        let ledger = Ledger::with_clock(tz, clock.clone());
        let k = key("a", 100);
        let late = ledger.reserve(std::slice::from_ref(&k), 80).unwrap();
        // Midnight passes while the request runs.
        let may_1 = "2026-05-01T00:00:01[Europe/Paris]"
            .parse::<jiff::Zoned>()
            .unwrap();
        clock.set(may_1.timestamp());
        let may = ledger.usage(&k.scope, k.period);
        assert_eq!((may.spent, may.reserved), (0, 0), "May starts at zero");
        assert_eq!(late.settle(70), 70);
        assert_eq!(
            ledger.usage(&k.scope, k.period).spent,
            0,
            "April's cost stays April's"
        );
        // Read April's before May's first counter is made: making a counter
        // forgets its shard's finished periods, and April's may share it.
        clock.set(april_30.timestamp());
        assert_eq!(ledger.usage(&k.scope, k.period).spent, 70);
        clock.set(may_1.timestamp());
        assert_eq!(
            ledger
                .reserve(std::slice::from_ref(&k), 100)
                .unwrap()
                .settle(100),
            100,
            "May's whole budget is free"
        );
        // June: month-to-date is zero again.
        clock.set("2026-06-01T00:00Z".parse().unwrap());
        assert_eq!(ledger.usage(&k.scope, k.period).spent, 0);
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        let ledger = Ledger::default();
        let limits = [
            key("a", 1_000),
            Limit {
                scope: Scope::Global,
                max: 1_500,
                period: Period::Daily,
            },
        ];
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        if let Ok(r) = ledger.reserve(&limits, 10) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let u = ledger.usage(&limits[0].scope, limits[0].period);
                            assert!(u.spent + u.reserved <= 1_000);
                            r.settle(7);
                        }
                    }
                });
            }
        });
        let u = ledger.usage(&limits[0].scope, limits[0].period);
        assert_eq!(u.reserved, 0);
        assert_eq!(u.spent, 7 * admitted.into_inner());
        assert!(u.spent <= 1_000);
    }

    #[test]
    fn dollars() {
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(1_500_000), "$1.50");
        assert_eq!(usd(123), "$0.000123");
        assert_eq!(usd(10_000_000), "$10.00");
    }

    use super::prop::{Op, op};

    proptest! {
        #[test]
        fn any_interleaving_keeps_the_invariant_and_loses_no_money(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let ledger = Ledger::default();
            let all = [
                key("k", 1_000),
                Limit { scope: Scope::Team("t".into()), max: 1_500, period: Period::Weekly },
                Limit { scope: Scope::Global, max: 2_000, period: Period::Total },
            ];
            let mut open: Vec<(Reservation, u8)> = Vec::new();
            let mut charged = [0u64; 3];
            for op in ops {
                match op {
                    Op::Reserve { scopes, amount } => {
                        let picked: Vec<Limit> = (0..3)
                            .filter(|i| scopes & (1 << i) != 0)
                            .map(|i| all[i].clone())
                            .collect();
                        if let Ok(r) = ledger.reserve(&picked, amount) {
                            open.push((r, scopes));
                        }
                    }
                    Op::Settle { which, cost } if !open.is_empty() => {
                        let (r, scopes) = open.swap_remove(which % open.len());
                        let c = r.settle(cost);
                        prop_assert!(c <= cost);
                        for (i, sum) in charged.iter_mut().enumerate() {
                            if scopes & (1 << i) != 0 { *sum += c; }
                        }
                    }
                    Op::Release { which } if !open.is_empty() => {
                        open.swap_remove(which % open.len()).0.release();
                    }
                    _ => {}
                }
                for (i, l) in all.iter().enumerate() {
                    let u = ledger.usage(&l.scope, l.period);
                    prop_assert!(u.spent + u.reserved <= l.max);
                    prop_assert_eq!(u.spent, charged[i]);
                    let held: u64 = open
                        .iter()
                        .filter(|(_, s)| s & (1 << i) != 0)
                        .map(|(r, _)| r.amount())
                        .sum();
                    prop_assert_eq!(u.reserved, held);
                }
            }
            drop(open);
            for l in &all {
                prop_assert_eq!(ledger.usage(&l.scope, l.period).reserved, 0);
            }
        }
    }
}
