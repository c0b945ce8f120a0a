//! Router cooldowns shared through Redis, read locally.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;
use redis::Script;
use tokio::sync::{mpsc, watch};

use super::RedisState;
use crate::router::{
    Clock, Cooldown, CooldownReason, CooldownStore, DeploymentId, FailureWindow, InMemoryCooldowns,
    Millis,
};

/// Keeps the later expiry, then tells every replica.
/// KEYS[1]: the cooldown's key. ARGV: until, reason, ttl ms, channel, message.
const PUBLISH: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local u = tonumber(string.match(cur, '^(%d+)'))
  if u and u >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"#;

/// A [`CooldownStore`] shared by every replica on the same Redis and prefix.
///
/// The router's hot path never waits on the network: [`get`](CooldownStore::get)
/// reads a local mirror. [`cool_down`](CooldownStore::cool_down) writes the
/// mirror and queues a publish (a key that lives as long as the cooldown,
/// and a `PUBLISH`); a subscriber task applies the other replicas'
/// cooldowns as they come, and loads every current one when it
/// (re)connects, so a replica that was cut off catches up. Failure counting
/// (N failures in a window) stays per replica.
///
/// Cooldown times are on the router's [`Clock`]; replicas share them as
/// milliseconds since the Unix epoch, so use the
/// [`SystemClock`](crate::router::SystemClock) (and synchronized clocks).
#[derive(Clone)]
pub struct RedisCooldowns {
    shared: Arc<Shared>,
    /// Failure counting is per replica, indexed: a reload maps it.
    failures: Arc<InMemoryCooldowns>,
}

struct Shared {
    mirror: DashMap<Arc<str>, Cooldown>,
    publish: mpsc::UnboundedSender<(Arc<str>, Cooldown)>,
    synced: watch::Receiver<u64>,
}

impl fmt::Debug for RedisCooldowns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCooldowns")
            .field("cooling", &self.shared.mirror.len())
            .finish_non_exhaustive()
    }
}

fn parse(value: &str) -> Option<Cooldown> {
    let (until, reason) = value.split_once(':')?;
    let reason = match reason {
        "rate_limited" => CooldownReason::RateLimited,
        "failures" => CooldownReason::Failures,
        "credential" => CooldownReason::Credential,
        "model_gone" => CooldownReason::ModelGone,
        _ => return None,
    };
    Some(Cooldown {
        until: until.parse().ok()?,
        reason,
    })
}

impl RedisCooldowns {
    /// A store in `state` for a router of `deployments` deployments (failure
    /// counting is local and indexed), with cooldowns on `clock`. Starts the
    /// publisher and subscriber tasks: call within a tokio runtime.
    pub fn new(state: RedisState, deployments: usize, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (synced_tx, synced) = watch::channel(0);
        let shared = Arc::new(Shared {
            mirror: DashMap::new(),
            publish: tx,
            synced,
        });
        tokio::spawn(publisher(state.clone(), rx, clock));
        tokio::spawn(subscriber(state, Arc::downgrade(&shared), synced_tx));
        RedisCooldowns {
            shared,
            failures: Arc::new(InMemoryCooldowns::new(deployments)),
        }
    }

    /// Resolves once the subscriber is listening and has loaded the current
    /// cooldowns (at start; again after each reconnect).
    pub async fn synced(&self) {
        let mut rx = self.shared.synced.clone();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    fn apply(&self, key: &str, c: Cooldown) {
        apply(&self.shared, key, c);
    }
}

/// Keeps the later expiry.
fn apply(shared: &Shared, key: &str, c: Cooldown) {
    if let Some(mut cur) = shared.mirror.get_mut(key) {
        if c.until > cur.until {
            *cur = c;
        }
        return;
    }
    let mut cur = shared.mirror.entry(Arc::from(key)).or_insert(c);
    if c.until > cur.until {
        *cur = c;
    }
}

impl CooldownStore for RedisCooldowns {
    fn get(&self, id: &DeploymentId) -> Option<Cooldown> {
        self.shared.mirror.get(id.key()).map(|c| *c)
    }

    fn cool_down(&self, id: &DeploymentId, cooldown: Cooldown) {
        self.apply(id.key(), cooldown);
        let _ = self.shared.publish.send((id.key().into(), cooldown));
    }

    fn record_failure(&self, id: &DeploymentId, now: Millis, window: FailureWindow) -> bool {
        self.failures.record_failure(id, now, window)
    }

    /// The same mirror, publisher and subscriber; the failure counts mapped
    /// to the new router's indexes.
    fn carry_over(
        &self,
        prev: &[DeploymentId],
        next: &[DeploymentId],
    ) -> Option<Arc<dyn CooldownStore>> {
        Some(Arc::new(RedisCooldowns {
            shared: self.shared.clone(),
            failures: Arc::new(self.failures.carried_over(prev, next)),
        }))
    }
}

fn channel(state: &RedisState) -> String {
    format!("{}cooldowns", state.prefix())
}

/// Writes each local cooldown to Redis and publishes it; a failure is
/// logged (the local mirror has it anyway).
async fn publisher(
    state: RedisState,
    mut rx: mpsc::UnboundedReceiver<(Arc<str>, Cooldown)>,
    clock: Arc<dyn Clock>,
) {
    let script = Script::new(PUBLISH);
    let channel = channel(&state);
    while let Some((key, c)) = rx.recv().await {
        let ttl = c.until.saturating_sub(clock.now_ms());
        if ttl == 0 {
            continue;
        }
        let mut call = script.prepare_invoke();
        call.key(format!("{}cooldown:{key}", state.prefix()))
            .arg(c.until)
            .arg(c.reason.as_str())
            .arg(ttl)
            .arg(&channel)
            .arg(format!("{}:{}:{key}", c.until, c.reason.as_str()));
        let mut conn = state.conn();
        let sent: Result<i64, _> = state
            .run(
                "cooldown",
                async move { call.invoke_async(&mut conn).await },
            )
            .await;
        if sent.is_err() {
            tracing::warn!(deployment = %key, "could not share a cooldown through Redis");
        }
    }
}

/// Listens for other replicas' cooldowns; on every (re)connect, subscribes
/// first, then loads the current ones (so none is missed in between).
async fn subscriber(state: RedisState, shared: Weak<Shared>, synced: watch::Sender<u64>) {
    let channel = channel(&state);
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.strong_count() == 0 {
            return;
        }
        let started = tokio::time::Instant::now();
        match listen(&state, &channel, &shared, &synced).await {
            Ok(()) => return,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(10) {
                    // It had been up for a while: a fresh outage.
                    backoff = Duration::from_millis(50);
                }
                tracing::warn!(error = %e, "cooldown subscription to Redis lost; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One subscription's life: `Ok` when the store is gone, `Err` when Redis is.
async fn listen(
    state: &RedisState,
    channel: &str,
    shared: &Weak<Shared>,
    synced: &watch::Sender<u64>,
) -> Result<(), String> {
    let connect = async {
        let mut pubsub = state.client().get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let mut pubsub = tokio::time::timeout(state.timeout(), connect)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    load(state, shared).await?;
    synced.send_modify(|n| *n += 1);
    let mut messages = pubsub.on_message();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = messages.next() => {
                let Some(msg) = msg else {
                    return Err("connection closed".to_owned());
                };
                let Some(shared) = shared.upgrade() else { return Ok(()) };
                let Ok(payload) = msg.get_payload::<String>() else { continue };
                let Some((until, rest)) = payload.split_once(':') else { continue };
                let Some((reason, key)) = rest.split_once(':') else { continue };
                if let Some(c) = parse(&format!("{until}:{reason}")) {
                    apply(&shared, key, c);
                }
            }
            _ = tick.tick() => {
                if shared.strong_count() == 0 {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads every current cooldown into the mirror.
async fn load(state: &RedisState, shared: &Weak<Shared>) -> Result<(), String> {
    let prefix = format!("{}cooldown:", state.prefix());
    let mut conn = state.conn();
    // The prefix is matched literally, whatever glob characters it holds.
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for ch in prefix.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('*');
    let found: Vec<(String, Option<String>)> = state
        .run("cooldown", async move {
            let mut keys: Vec<String> = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
            Ok(keys.into_iter().zip(values).collect())
        })
        .await
        .map_err(|e| e.message().to_owned())?;
    let Some(shared) = shared.upgrade() else {
        return Ok(());
    };
    for (key, value) in found {
        if let (Some(dep), Some(c)) = (key.strip_prefix(&prefix), value.as_deref().and_then(parse))
        {
            apply(&shared, dep, c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::SystemClock;
    use crate::state::test_redis;

    fn id(i: u32) -> DeploymentId {
        DeploymentId::new(i, &format!("g/d{i}"))
    }

    #[tokio::test]
    async fn a_cooldown_on_one_replica_reaches_the_others() {
        let state = test_redis::state("cooldowns").await;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let a = RedisCooldowns::new(state.clone(), 2, clock.clone());
        let b = RedisCooldowns::new(state.clone(), 2, clock.clone());
        a.synced().await;
        b.synced().await;
        let c = Cooldown {
            until: clock.now_ms() + 60_000,
            reason: CooldownReason::RateLimited,
        };
        a.cool_down(&id(1), c);
        assert_eq!(a.get(&id(1)), Some(c), "local at once");
        let mut waited = 0;
        while b.get(&id(1)).is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            waited += 1;
            assert!(waited < 1000, "never arrived");
        }
        assert_eq!(b.get(&id(1)), Some(c));
        assert_eq!(b.get(&id(0)), None);
        // An earlier expiry does not shorten it, here or there.
        let shorter = Cooldown {
            until: c.until - 30_000,
            reason: CooldownReason::Failures,
        };
        b.cool_down(&id(1), shorter);
        assert_eq!(b.get(&id(1)), Some(c));
        // A replica that starts later loads what is cooling now.
        let late = RedisCooldowns::new(state, 2, clock);
        late.synced().await;
        assert_eq!(late.get(&id(1)), Some(c));
    }

    #[test]
    fn values_parse_back() {
        assert_eq!(
            parse("123:model_gone"),
            Some(Cooldown {
                until: 123,
                reason: CooldownReason::ModelGone
            })
        );
        assert_eq!(parse("x:failures"), None);
        assert_eq!(parse("1:other"), None);
    }
}
