//! Requests and tokens per minute in Redis: GCRA in Lua on Redis' clock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::{OnUnavailable, RedisState};
use crate::rate_limit::{Check, Granted, Limits, Verdict, shared_verdict};

/// GCRA (as governor's `check` / `check_n`) for requests, then tokens, on
/// Redis' clock. A key's state is its theoretical arrival time (µs).
///
/// KEYS: requests key, tokens key. ARGV: rpm (0: none), tpm (0: none), tokens.
/// Returns `{req_state, req_µs, tok_state, tok_µs}`; state 0: not limited,
/// 1: allowed (µs until whole), 2: refused (µs to wait), 3: never.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local minute = 60000000
local function gcra(key, limit, n)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new_tat = tat + math.ceil(n * minute / limit)
  local allow_at = new_tat - minute
  if allow_at > now then
    return 2, allow_at - now
  end
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
  return 1, new_tat - now
end
local rpm, tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rs, rv, ts, tv = 0, 0, 0, 0
if rpm > 0 then
  rs, rv = gcra(KEYS[1], rpm, 1)
  if rs == 2 then return {rs, rv, 0, 0} end
end
if tpm > 0 then
  if n > tpm then return {rs, rv, 3, 0} end
  ts, tv = gcra(KEYS[2], tpm, n)
end
return {rs, rv, ts, tv}
"#;

/// Per-key requests and tokens per minute kept in Redis, shared by every
/// replica on the same Redis and prefix; use it through
/// [`RateLimitLayer::shared`](crate::rate_limit::RateLimitLayer::shared).
///
/// Each check is one round trip (`EVALSHA`) running GCRA on Redis' clock, so
/// the replicas' clocks do not matter. Refusals and headers are the same as
/// the in-process limiter's. When Redis does not answer within the timeout
/// the request is refused with 503 `state_unavailable`
/// ([`OnUnavailable::Closed`], the default) or let through unchecked
/// ([`OnUnavailable::Open`]).
#[derive(Clone)]
pub struct RedisRateLimiter {
    state: RedisState,
    script: Arc<Script>,
    on_unavailable: OnUnavailable,
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("state", &self.state)
            .field("on_unavailable", &self.on_unavailable)
            .finish()
    }
}

fn verdict(state: i64, micros: i64) -> Option<Verdict> {
    let d = Duration::from_micros(micros.max(0) as u64);
    match state {
        1 => Some(Verdict::Allowed { reset: d }),
        2 => Some(Verdict::Refused { wait: d }),
        3 => Some(Verdict::Never),
        _ => None,
    }
}

impl RedisRateLimiter {
    /// Limits kept in `state`, failing closed.
    pub fn new(state: RedisState) -> Self {
        RedisRateLimiter {
            state,
            script: Arc::new(Script::new(GCRA)),
            on_unavailable: OnUnavailable::Closed,
        }
    }

    /// What to do when Redis does not answer.
    pub fn on_unavailable(mut self, mode: OnUnavailable) -> Self {
        self.on_unavailable = mode;
        self
    }

    /// Checks and charges `key` (one request, `tokens` tokens).
    pub(crate) fn check(&self, key: String, limits: Limits, tokens: u64) -> Check {
        let this = self.clone();
        Box::pin(async move {
            let rpm = limits.requests_per_minute.map_or(0, |n| n.get());
            let tpm = limits.tokens_per_minute.map_or(0, |n| n.get());
            // The limits are part of the key: changing them starts afresh.
            let base = format!("{}rl:{rpm}:{tpm}:{key}", this.state.prefix());
            let mut call = this.script.prepare_invoke();
            call.key(format!("{base}:req"))
                .key(format!("{base}:tok"))
                .arg(rpm)
                .arg(tpm)
                .arg(tokens);
            let mut conn = this.state.conn();
            let answer: Result<Vec<i64>, _> = this
                .state
                .run(
                    "rate limit",
                    async move { call.invoke_async(&mut conn).await },
                )
                .await;
            match answer {
                Ok(v) if v.len() == 4 => {
                    shared_verdict(limits, tokens, verdict(v[0], v[1]), verdict(v[2], v[3]))
                }
                Ok(_) => Err(super::unavailable("rate limit")),
                Err(e) if this.on_unavailable == OnUnavailable::Open => {
                    tracing::warn!("rate limit not checked: Redis did not answer (failing open)");
                    drop(e);
                    Ok(Granted::default())
                }
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_redis;

    #[tokio::test]
    async fn requests_then_tokens_with_openai_headers() {
        let limiter = RedisRateLimiter::new(test_redis::state("gcra").await);
        let limits = Limits::per_minute(2, 100);
        let h = limiter
            .check("k".into(), limits, 30)
            .await
            .unwrap()
            .headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "70");
        // 80 more tokens do not fit (70 left): refused for tokens, the request still counted.
        let e = limiter.check("k".into(), limits, 80).await.unwrap_err();
        assert_eq!(e.status(), 429);
        assert_eq!(e.metadata()["limit"], "tokens");
        assert!(e.retry_after().is_some());
        let e = limiter.check("k".into(), limits, 1).await.unwrap_err();
        assert_eq!(e.metadata()["limit"], "requests");
        assert_eq!(e.headers()["x-ratelimit-remaining-requests"], "0");
        // Another key is not affected; more than the whole limit never passes.
        let e = limiter
            .check("other".into(), limits, 101)
            .await
            .unwrap_err();
        assert!(e.is_permanent());
        assert!(e.retry_after().is_none());
    }

    #[tokio::test]
    async fn unavailable_fails_closed_or_open_as_configured() {
        let state =
            RedisState::open("redis://127.0.0.1:1", "t:", Duration::from_millis(200)).unwrap();
        let closed = RedisRateLimiter::new(state.clone());
        let e = closed
            .check("k".into(), Limits::per_minute(1, 0), 1)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(e.reason(), crate::Reason::StateUnavailable);
        let open = RedisRateLimiter::new(state).on_unavailable(OnUnavailable::Open);
        let h = open
            .check("k".into(), Limits::per_minute(1, 0), 1)
            .await
            .unwrap()
            .headers();
        assert!(h.is_empty());
    }

    #[tokio::test]
    async fn sixty_per_minute_hold_across_replicas() {
        let state = test_redis::state("rpm").await;
        let replicas: Vec<RedisRateLimiter> = (0..3)
            .map(|_| RedisRateLimiter::new(state.clone()))
            .collect();
        let mut tasks = Vec::new();
        for i in 0..150 {
            let l = replicas[i % 3].clone();
            tasks.push(tokio::spawn(async move {
                l.check("k".into(), Limits::per_minute(60, 0), 1)
                    .await
                    .is_ok()
            }));
        }
        let mut passed = 0;
        for t in tasks {
            passed += usize::from(t.await.unwrap());
        }
        // A burst of 150 in far less than a second: the 60 of the bucket
        // pass (perhaps one more, as a cell refills during the burst).
        assert!((60..=61).contains(&passed), "{passed} passed");
    }
}
