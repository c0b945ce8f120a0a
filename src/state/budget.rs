//! Budgets in Redis: all-or-nothing reservations across scopes in one Lua
//! script, idempotent settlement in another, holds that expire.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use redis::Script;
use tokio::sync::Notify;

use super::RedisState;
use crate::budget::period::Windows;
use crate::budget::{
    BudgetStore, Clock, Limit, Micros, Period, Refusal, Reservation, Scope, SystemClock, Usage,
};
use crate::error::Error;

/// How long a counter outlives its period (late settlements still land).
const AFTER_PERIOD: i64 = 86_400;
/// How long a settlement is remembered, so a retried one is not charged twice.
const SETTLED_TTL_S: u64 = 86_400;
/// The longest wait between two tries of a settlement while Redis is away.
const SETTLE_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Checks every scope, then reserves on all or none. Reclaims first the
/// holds whose expiry passed (a replica that died holding them). A new
/// counter gets its expiry (a day after its period).
///
/// KEYS: per scope, the counter hash then its holds zset.
/// ARGV: amount, reservation id, hold ms, then per scope: max, expire-at (0: never).
/// Returns `{1}` or `{0, scope index (1-based), spent, reserved}`.
const RESERVE: &str = r#"
local amount = ARGV[1]
local rid = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
local new = {}
for i = 1, n do
  local c, h = KEYS[2 * i - 1], KEYS[2 * i]
  local stale = redis.call('ZRANGEBYSCORE', h, '-inf', now, 'LIMIT', 0, 64)
  for _, r in ipairs(stale) do
    local a = redis.call('HGET', c, 'h:' .. r)
    if a then
      redis.call('HINCRBY', c, 'reserved', '-' .. a)
      redis.call('HDEL', c, 'h:' .. r)
    end
    redis.call('ZREM', h, r)
  end
  local v = redis.call('HMGET', c, 'spent', 'reserved')
  local spent = tonumber(v[1]) or 0
  local reserved = tonumber(v[2]) or 0
  new[i] = v[1] == false and v[2] == false
  if spent + reserved + tonumber(amount) > tonumber(ARGV[2 * i + 2]) then
    return {0, i, spent, reserved}
  end
end
local expiry = now + tonumber(ARGV[3])
for i = 1, n do
  local c, h = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('HINCRBY', c, 'reserved', amount)
  redis.call('HSET', c, 'h:' .. rid, amount)
  redis.call('ZADD', h, expiry, rid)
  local at = ARGV[2 * i + 3]
  if new[i] and at ~= '0' then
    redis.call('EXPIREAT', c, at)
    redis.call('EXPIREAT', h, at)
  end
end
return {1}
"#;

/// Charges the real cost on every scope and releases the hold, once: the
/// last key remembers that this reservation was settled, so a retry after a
/// lost answer changes nothing. A hold already reclaimed (expired) is still
/// charged: money spent is never lost (a counter recreated so gets its
/// expiry again).
///
/// KEYS: per scope, the counter hash then its holds zset; then the settled marker.
/// ARGV: reservation id, charge, marker ttl (s), then per scope: expire-at (0: never).
/// Returns 1 if applied now, 0 if it already was.
const SETTLE: &str = r#"
local marker = KEYS[#KEYS]
if redis.call('SET', marker, '1', 'NX', 'EX', ARGV[3]) == false then
  return 0
end
local rid = ARGV[1]
local charged = ARGV[2]
local n = (#KEYS - 1) / 2
for i = 1, n do
  local c, h = KEYS[2 * i - 1], KEYS[2 * i]
  local a = redis.call('HGET', c, 'h:' .. rid)
  if a then
    redis.call('HINCRBY', c, 'reserved', '-' .. a)
    redis.call('HDEL', c, 'h:' .. rid)
    redis.call('ZREM', h, rid)
  end
  local existed = a or redis.call('EXISTS', c) == 1
  if charged ~= '0' then
    redis.call('HINCRBY', c, 'spent', charged)
  end
  local at = ARGV[i + 3]
  if not existed and at ~= '0' then
    redis.call('EXPIREAT', c, at)
    redis.call('EXPIREAT', h, at)
  end
end
return 1
"#;

/// A [`BudgetStore`] in Redis, shared by every replica that uses the same
/// Redis and prefix: see the [module docs](super).
///
/// Periods are computed by the gateway in its time zone (the clock of the
/// replica that reserves); the period's start is part of each counter's
/// key, so a new period starts at zero. A reservation settles in the
/// background (settling never blocks a response body), tried again while
/// Redis is away for as long as the [`hold`](RedisLedger::hold) lasts (the
/// hold keeps the money reserved meanwhile); only if Redis stays away
/// longer is the charge logged as lost.
#[derive(Clone)]
pub struct RedisLedger {
    inner: Arc<Inner>,
    hold: Duration,
}

struct Inner {
    state: RedisState,
    tz: TimeZone,
    windows: Windows,
    clock: Arc<dyn Clock>,
    reserve: Script,
    settle: Script,
    settling: AtomicUsize,
    idle: Notify,
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("state", &self.inner.state)
            .field("time_zone", &self.inner.tz.iana_name().unwrap_or("fixed"))
            .field("hold", &self.hold)
            .finish_non_exhaustive()
    }
}

/// One counter's keys and its expiry.
struct CounterKeys {
    hash: String,
    holds: String,
    expire_at: i64,
}

impl RedisLedger {
    /// Budgets in `state`, periods in `tz`, on the system clock; holds last
    /// 15 minutes.
    pub fn new(state: RedisState, tz: TimeZone) -> Self {
        RedisLedger::with_clock(state, tz, SystemClock)
    }

    /// Budgets whose periods are read from `clock`.
    pub fn with_clock(state: RedisState, tz: TimeZone, clock: impl Clock) -> Self {
        RedisLedger {
            inner: Arc::new(Inner {
                state,
                tz,
                windows: Windows::default(),
                clock: Arc::new(clock),
                reserve: Script::new(RESERVE),
                settle: Script::new(SETTLE),
                settling: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
            hold: Duration::from_secs(900),
        }
    }

    /// How long a reservation holds its money at most: longer than any
    /// request runs (default 15 minutes). A replica that dies holding
    /// reservations has them reclaimed after this; a settlement that cannot
    /// reach Redis is tried again for this long.
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// The time zone periods are aligned in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.inner.tz
    }

    fn keys(&self, scope: &Scope, period: Period, now: Timestamp) -> (CounterKeys, Option<i64>) {
        let window = self.inner.windows.window(period, now, &self.inner.tz);
        let start = window.start.map(Timestamp::as_second);
        let (kind, id) = (scope.kind(), scope.id().unwrap_or(""));
        // The id comes last, so no id can make two counters' keys equal.
        let hash = format!(
            "{}budget:{}:{}:{kind}:{id}",
            self.inner.state.prefix(),
            period,
            start.map_or_else(|| "-".to_owned(), |s| s.to_string()),
        );
        let end = window.end.map(Timestamp::as_second);
        let keys = CounterKeys {
            holds: format!("{hash}:holds"),
            hash,
            expire_at: end.map_or(0, |e| e + AFTER_PERIOD),
        };
        (keys, end)
    }

    /// What `scope` has spent and holds reserved in the `period` that
    /// contains now (holds not yet reclaimed included).
    pub async fn usage(&self, scope: &Scope, period: Period) -> Result<Usage, Error> {
        let now = self.inner.clock.now();
        let (keys, _) = self.keys(scope, period, now);
        let mut conn = self.inner.state.conn();
        let (spent, reserved): (Option<u64>, Option<i64>) = self
            .inner
            .state
            .run("budget", async move {
                redis::cmd("HMGET")
                    .arg(&keys.hash)
                    .arg("spent")
                    .arg("reserved")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(Usage {
            spent: spent.unwrap_or(0),
            reserved: reserved.unwrap_or(0).max(0) as u64,
            window: period.window(now, &self.inner.tz),
        })
    }

    /// Resolves when no settlement is running in the background (tests and
    /// graceful shutdown).
    pub async fn settled(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.settling.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl crate::budget::UsageSource for RedisLedger {
    fn usage<'a>(
        &'a self,
        scope: &'a Scope,
        period: Period,
    ) -> Pin<Box<dyn Future<Output = Result<Usage, Error>> + Send + 'a>> {
        Box::pin(RedisLedger::usage(self, scope, period))
    }

    fn window(&self, period: Period) -> crate::budget::Window {
        period.window(self.inner.clock.now(), &self.inner.tz)
    }
}

impl BudgetStore for RedisLedger {
    type Reserve = Pin<Box<dyn Future<Output = Result<Reservation, Error>> + Send>>;

    fn now(&self) -> jiff::Timestamp {
        self.inner.clock.now()
    }

    fn reserve(&self, limits: &[Limit], amount: Micros) -> Self::Reserve {
        let now = self.inner.clock.now();
        let rid = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut counters = Vec::with_capacity(limits.len());
        let mut ends = Vec::with_capacity(limits.len());
        for l in limits {
            let (keys, end) = self.keys(&l.scope, l.period, now);
            counters.push(keys);
            ends.push(end);
        }
        let limits = limits.to_vec();
        let ledger = self.clone();
        Box::pin(async move {
            let inner = &ledger.inner;
            let mut call = inner.reserve.prepare_invoke();
            call.arg(amount)
                .arg(&rid)
                .arg(ledger.hold.as_millis() as u64);
            for (keys, limit) in counters.iter().zip(&limits) {
                call.key(&keys.hash).key(&keys.holds);
                call.arg(limit.max).arg(keys.expire_at);
            }
            let mut conn = inner.state.conn();
            let answer: Vec<i64> = inner
                .state
                .run("budget", async move { call.invoke_async(&mut conn).await })
                .await?;
            if answer.first() == Some(&1) {
                return Ok(ledger.reservation(rid, counters, amount));
            }
            let at = answer.get(1).map_or(1, |i| (*i).max(1) as usize) - 1;
            let (Some(limit), Some(end)) = (limits.get(at), ends.get(at)) else {
                return Err(super::unavailable("budget"));
            };
            let field = |i: usize| answer.get(i).map_or(0, |v| (*v).max(0) as u64);
            Err(Error::from(Refusal {
                limit: limit.clone(),
                spent: field(2),
                reserved: field(3),
                requested: amount,
                resets_at: end.and_then(|s| Timestamp::from_second(s).ok()),
            }))
        })
    }
}

impl RedisLedger {
    fn reservation(&self, rid: String, counters: Vec<CounterKeys>, amount: Micros) -> Reservation {
        let ledger = self.clone();
        let runtime = tokio::runtime::Handle::try_current().ok();
        Reservation::from_fn(amount, move |charged| {
            let Some(runtime) = runtime else {
                tracing::error!(
                    charged,
                    "budget settlement outside a tokio runtime: left to expire"
                );
                return;
            };
            ledger.inner.settling.fetch_add(1, Ordering::AcqRel);
            runtime.spawn(async move {
                ledger.settle(&rid, &counters, charged).await;
                if ledger.inner.settling.fetch_sub(1, Ordering::AcqRel) == 1 {
                    ledger.inner.idle.notify_waiters();
                }
            });
        })
    }

    /// Settles, trying again (backoff from 50 ms doubling to 2 s) for as
    /// long as the reservation's hold lasts: a request admitted before Redis
    /// went away and finished while it was away is charged when it is back,
    /// not forgotten (its spend record says it was spent; a charge given up
    /// on lets the budget be spent twice). The script is idempotent, so a
    /// try whose answer was lost is never charged twice.
    async fn settle(&self, rid: &str, counters: &[CounterKeys], charged: Micros) {
        let inner = &self.inner;
        let mut call = inner.settle.prepare_invoke();
        for keys in counters {
            call.key(&keys.hash).key(&keys.holds);
        }
        call.key(format!("{}budget:settled:{rid}", inner.state.prefix()));
        call.arg(rid).arg(charged).arg(SETTLED_TTL_S);
        for keys in counters {
            call.arg(keys.expire_at);
        }
        let give_up = tokio::time::Instant::now() + self.hold;
        let mut backoff = Duration::from_millis(50);
        let mut tries = 0u32;
        loop {
            let mut conn = inner.state.conn();
            let call = &call;
            let done: Result<i64, Error> = inner
                .state
                .run("budget", async move { call.invoke_async(&mut conn).await })
                .await;
            tries += 1;
            if done.is_ok() {
                if tries > 1 {
                    tracing::info!(
                        charged_micros = charged,
                        tries,
                        "budget reservation settled in Redis after it came back"
                    );
                }
                return;
            }
            if tokio::time::Instant::now() + backoff >= give_up {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(SETTLE_MAX_BACKOFF);
        }
        tracing::error!(
            charged_micros = charged,
            tries,
            "could not settle a budget reservation in Redis for as long as its hold lasts: this charge is lost"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::ManualClock;
    use crate::state::test_redis;
    use proptest::prelude::*;

    fn key(id: &str, max: Micros) -> Limit {
        Limit {
            scope: Scope::Key(id.into()),
            max,
            period: Period::Monthly,
        }
    }

    #[tokio::test]
    async fn reserves_on_all_scopes_or_none_and_settles_once() {
        let ledger = RedisLedger::new(test_redis::state("all-or-none").await, TimeZone::UTC);
        let team = Limit {
            scope: Scope::Team("t".into()),
            max: 100,
            period: Period::Daily,
        };
        let a = ledger
            .reserve(&[key("a", 50), team.clone()], 50)
            .await
            .unwrap();
        let e = ledger
            .reserve(&[key("b", 500), team.clone()], 60)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 402);
        assert_eq!(e.metadata()["scope"], "team");
        assert!(e.message().contains("resets at"), "{}", e.message());
        let b = ledger
            .usage(&Scope::Key("b".into()), Period::Monthly)
            .await
            .unwrap();
        assert_eq!((b.spent, b.reserved), (0, 0), "nothing held on key b");
        let t = ledger.usage(&team.scope, Period::Daily).await.unwrap();
        assert_eq!((t.spent, t.reserved), (0, 50));
        // The day's counter expires a day after the day ends, the total one never.
        let (day, _) = ledger.keys(&team.scope, Period::Daily, Timestamp::now());
        let mut conn = ledger.inner.state.conn();
        let ttl: i64 = redis::cmd("TTL")
            .arg(&day.hash)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 86_400 && ttl <= 2 * 86_400, "ttl {ttl}");
        assert_eq!(a.settle(80), 50, "never more than the reservation");
        ledger.settled().await;
        let t = ledger.usage(&team.scope, Period::Daily).await.unwrap();
        assert_eq!((t.spent, t.reserved), (50, 0));
        // A dropped reservation releases everything.
        drop(
            ledger
                .reserve(std::slice::from_ref(&team), 50)
                .await
                .unwrap(),
        );
        ledger.settled().await;
        let t = ledger.usage(&team.scope, Period::Daily).await.unwrap();
        assert_eq!((t.spent, t.reserved), (50, 0));
    }

    /// A user's and an end user's counters are their own, even under the
    /// same id as a key, and refuse by their kind.
    #[tokio::test]
    async fn user_and_end_user_scopes_have_counters_of_their_own() {
        let ledger = RedisLedger::new(test_redis::state("people").await, TimeZone::UTC);
        let limit = |scope: Scope, max| Limit {
            scope,
            max,
            period: Period::Total,
        };
        let user = limit(Scope::User("x".into()), 100);
        let end_user = limit(Scope::EndUser("x".into()), 60);
        let r = ledger
            .reserve(&[key("x", 1_000), user.clone(), end_user.clone()], 50)
            .await
            .unwrap();
        let e = ledger
            .reserve(&[key("x", 1_000), user.clone(), end_user.clone()], 20)
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["scope"], "end_user");
        assert!(e.message().contains("end user's"), "{}", e.message());
        assert_eq!(r.settle(30), 30);
        ledger.settled().await;
        for (scope, period) in [
            (&user.scope, Period::Total),
            (&end_user.scope, Period::Total),
            (&Scope::Key("x".into()), Period::Monthly),
        ] {
            let u = ledger.usage(scope, period).await.unwrap();
            assert_eq!((u.spent, u.reserved), (30, 0), "{scope:?}");
        }
        let e = ledger
            .reserve(std::slice::from_ref(&user), 80)
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["scope"], "user");
    }

    #[tokio::test]
    async fn a_retried_settlement_is_charged_once() {
        let ledger = RedisLedger::new(test_redis::state("settle-once").await, TimeZone::UTC);
        let k = key("a", 100);
        let (keys, _) = ledger.keys(&k.scope, k.period, Timestamp::now());
        let r = ledger.reserve(std::slice::from_ref(&k), 40).await.unwrap();
        let rid = "fixed-id";
        // Settle a made-up reservation twice (as a retry after a lost answer would).
        ledger.settle(rid, std::slice::from_ref(&keys), 7).await;
        ledger.settle(rid, std::slice::from_ref(&keys), 7).await;
        let u = ledger.usage(&k.scope, k.period).await.unwrap();
        assert_eq!((u.spent, u.reserved), (7, 40));
        r.release();
        ledger.settled().await;
        let u = ledger.usage(&k.scope, k.period).await.unwrap();
        assert_eq!((u.spent, u.reserved), (7, 0));
    }

    #[tokio::test]
    async fn a_dead_replicas_holds_expire_and_its_late_charge_still_lands() {
        let state = test_redis::state("holds-expire").await;
        let short = RedisLedger::new(state.clone(), TimeZone::UTC).hold(Duration::from_millis(50));
        let k = key("a", 100);
        // A replica reserves, then "dies": its reservation is never settled.
        let lost = short.reserve(std::slice::from_ref(&k), 90).await.unwrap();
        let ghost = std::mem::ManuallyDrop::new(lost);
        let other = RedisLedger::new(state, TimeZone::UTC);
        assert_eq!(
            other
                .reserve(std::slice::from_ref(&k), 20)
                .await
                .unwrap_err()
                .status(),
            402
        );
        // Redis' clock, not ours, expires the hold: wait until it has.
        let mut tries = 0;
        let r = loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            match other.reserve(std::slice::from_ref(&k), 20).await {
                Ok(r) => break r,
                Err(e) => assert_eq!(e.status(), 402),
            }
            tries += 1;
            assert!(tries < 500, "the hold never expired");
        };
        let u = other.usage(&k.scope, k.period).await.unwrap();
        assert_eq!(u.reserved, 20, "the dead hold was reclaimed");
        r.settle(5);
        // The "dead" one settles after all: charged, never releasing twice.
        std::mem::ManuallyDrop::into_inner(ghost).settle(9);
        other.settled().await;
        short.settled().await;
        let u = other.usage(&k.scope, k.period).await.unwrap();
        assert_eq!((u.spent, u.reserved), (14, 0));
    }

    #[tokio::test]
    async fn a_new_month_starts_at_zero() {
        let state = test_redis::state("new-month").await;
        let clock = ManualClock::new("2030-04-30T23:59:00Z".parse().unwrap());
        // In the future: counters expire a day after their period (on
        // Redis' clock), so a month in the past would be gone at once.
        let ledger = RedisLedger::with_clock(state, TimeZone::UTC, clock.clone());
        let k = key("a", 100);
        let late = ledger.reserve(std::slice::from_ref(&k), 80).await.unwrap();
        clock.set("2030-05-01T00:00:01Z".parse().unwrap());
        let may = ledger.usage(&k.scope, k.period).await.unwrap();
        assert_eq!((may.spent, may.reserved), (0, 0));
        late.settle(70);
        ledger.settled().await;
        let r = ledger.reserve(std::slice::from_ref(&k), 100).await.unwrap();
        r.settle(100);
        ledger.settled().await;
        clock.set("2030-04-30T23:59:30Z".parse().unwrap());
        assert_eq!(ledger.usage(&k.scope, k.period).await.unwrap().spent, 70);
    }

    #[tokio::test]
    async fn a_fixed_window_starts_at_zero_when_it_rolls_over() {
        let state = test_redis::state("fixed-window").await;
        let anchor: Timestamp = "2030-04-30T10:17:00Z".parse().unwrap();
        let clock = ManualClock::new("2030-04-30T12:16:00Z".parse().unwrap());
        let ledger = RedisLedger::with_clock(state, TimeZone::UTC, clock.clone());
        let k = Limit {
            period: Period::Every(crate::duration::Every {
                length: crate::duration::Length::Seconds(7_200),
                anchor: anchor.as_second(),
            }),
            ..key("w", 100)
        };
        let late = ledger.reserve(std::slice::from_ref(&k), 80).await.unwrap();
        let refused = ledger
            .reserve(std::slice::from_ref(&k), 30)
            .await
            .unwrap_err();
        assert_eq!(refused.status(), 402);
        // 12:17 is the window's end (anchor + 2 h), not 14:00 or midnight.
        clock.set("2030-04-30T12:17:00Z".parse().unwrap());
        let next = ledger.usage(&k.scope, k.period).await.unwrap();
        assert_eq!((next.spent, next.reserved), (0, 0));
        assert_eq!(
            next.window.start,
            Some("2030-04-30T12:17:00Z".parse().unwrap())
        );
        let r = ledger.reserve(std::slice::from_ref(&k), 100).await.unwrap();
        // The late one lands in the window it started in.
        late.settle(70);
        r.settle(100);
        ledger.settled().await;
        assert_eq!(ledger.usage(&k.scope, k.period).await.unwrap().spent, 100);
        clock.set("2030-04-30T12:16:59Z".parse().unwrap());
        assert_eq!(ledger.usage(&k.scope, k.period).await.unwrap().spent, 70);
    }

    #[tokio::test]
    async fn redis_away_is_503_state_unavailable_within_the_timeout() {
        // Nothing listens on port 1.
        let state =
            RedisState::open("redis://127.0.0.1:1", "t:", Duration::from_millis(200)).unwrap();
        let ledger = RedisLedger::new(state, TimeZone::UTC);
        let e = ledger.reserve(&[key("a", 100)], 1).await.unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(e.reason(), crate::Reason::StateUnavailable);
        assert!(e.message().contains("not served"), "{}", e.message());
        assert!(!e.message().contains("127.0.0.1"), "{}", e.message());
    }

    #[tokio::test]
    async fn concurrent_replicas_never_overspend() {
        let state = test_redis::state("concurrent").await;
        let replicas: Vec<RedisLedger> = (0..3)
            .map(|_| RedisLedger::new(state.clone(), TimeZone::UTC))
            .collect();
        let limits = [
            key("a", 1_000),
            Limit {
                scope: Scope::Global,
                max: 1_500,
                period: Period::Daily,
            },
        ];
        let mut tasks = Vec::new();
        for i in 0..300 {
            let ledger = replicas[i % 3].clone();
            let limits = limits.clone();
            tasks.push(tokio::spawn(async move {
                match ledger.reserve(&limits, 10).await {
                    Ok(r) => {
                        tokio::task::yield_now().await;
                        r.settle(7);
                        1u64
                    }
                    Err(e) => {
                        assert_eq!(e.status(), 402);
                        0
                    }
                }
            }));
        }
        let mut admitted = 0;
        for t in tasks {
            admitted += t.await.unwrap();
        }
        for r in &replicas {
            r.settled().await;
        }
        let u = replicas[0]
            .usage(&limits[0].scope, limits[0].period)
            .await
            .unwrap();
        assert_eq!(u.reserved, 0);
        assert_eq!(u.spent, 7 * admitted);
        assert!(
            admitted >= 100,
            "at least the budget's worth was admitted: {admitted}"
        );
    }

    use crate::budget::prop::{Op, op};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn the_scripts_keep_the_invariant_and_lose_no_money(
            ops in proptest::collection::vec(op(), 1..60)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let ledger = RedisLedger::new(test_redis::state("prop").await, TimeZone::UTC);
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
                            match ledger.reserve(&picked, amount).await {
                                Ok(r) => open.push((r, scopes)),
                                Err(e) => assert_eq!(e.status(), 402),
                            }
                        }
                        Op::Settle { which, cost } if !open.is_empty() => {
                            let (r, scopes) = open.swap_remove(which % open.len());
                            let c = r.settle(cost);
                            for (i, sum) in charged.iter_mut().enumerate() {
                                if scopes & (1 << i) != 0 { *sum += c; }
                            }
                        }
                        Op::Release { which } if !open.is_empty() => {
                            open.swap_remove(which % open.len()).0.release();
                        }
                        _ => {}
                    }
                    ledger.settled().await;
                    for (i, l) in all.iter().enumerate() {
                        let u = ledger.usage(&l.scope, l.period).await.unwrap();
                        assert!(u.spent + u.reserved <= l.max);
                        assert_eq!(u.spent, charged[i]);
                        let held: u64 = open
                            .iter()
                            .filter(|(_, s)| s & (1 << i) != 0)
                            .map(|(r, _)| r.amount())
                            .sum();
                        assert_eq!(u.reserved, held);
                    }
                }
                drop(open);
                ledger.settled().await;
                for l in &all {
                    assert_eq!(ledger.usage(&l.scope, l.period).await.unwrap().reserved, 0);
                }
            });
        }
    }
}
