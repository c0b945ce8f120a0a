//! Shared state for several gateway replicas, in Redis (feature `redis`).
//!
//! One [`RedisState`] (a URL, a key prefix, a timeout) is one lazily
//! connected, self-reconnecting [`ConnectionManager`] shared by:
//!
//! - [`RedisLedger`]: budgets. One Lua script checks every scope of a
//!   request and reserves on all of them or none (`spent + reserved +
//!   amount <= max` on each), so N replicas can never admit N times a
//!   budget; a second script settles (charges the real cost, releases the
//!   rest, once, even if retried). Each reservation is also a hold with an
//!   expiry, so the holds of a replica that crashed are reclaimed by the
//!   next reservation on the same counter. Counter keys carry the period's
//!   start (computed by the gateway in its time zone) and expire after the
//!   period ends.
//! - [`RedisRateLimiter`]: requests and tokens per minute as GCRA in Lua, on
//!   Redis' own clock (`TIME`), so replicas' clocks do not matter.
//! - [`RedisCooldowns`]: router cooldowns. The hot path stays local (a
//!   mirror in memory); a cooldown is published (`PUBLISH`, plus a key that
//!   lives as long as the cooldown) and every replica's subscriber applies
//!   it, and loads the current ones at start and after each reconnect.
//!
//! Every call is one round trip (`EVALSHA`) bounded by the timeout. When
//! Redis cannot answer, budgets fail closed: 503 `state_unavailable`, and
//! the request is not served; rate limits fail closed too unless told to
//! fail open ([`OnUnavailable`]). The connection comes back by itself when
//! Redis does: no restart.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::budget::{BudgetStore, Limit, Period, Scope, TimeZone};
//! use tollgate::state::{RedisLedger, RedisState};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let state = RedisState::open("redis://127.0.0.1:6379/0", "tollgate:", Duration::from_millis(500)).unwrap();
//! let ledger = RedisLedger::new(state, TimeZone::UTC);
//! let key = Limit { scope: Scope::Key("k1".into()), max: 1_000_000, period: Period::Monthly };
//! let held = ledger.reserve(&[key], 800_000).await.unwrap();
//! held.settle(120_000); // charged in the background, never blocking
//! ledger.settled().await;
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::error::{Error, Reason};

mod budget;
mod cooldown;
mod rate_limit;

pub use crate::rate_limit::OnUnavailable;
pub use budget::RedisLedger;
pub use cooldown::RedisCooldowns;
pub use rate_limit::RedisRateLimiter;

/// A connection to the Redis that replicas share, a key prefix and a
/// timeout for each call. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct RedisState {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisState")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisState {
    /// A state at `url` (`redis://host:port/db`, or `rediss://` for TLS,
    /// trusting the webpki roots), with every key under `prefix`, each call
    /// bounded by `timeout`. Connects lazily (a gateway starts while Redis
    /// is down, and answers 503 until it is up); must be called within a
    /// tokio runtime.
    pub fn open(url: &str, prefix: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        tls_provider(url);
        Self::with_client(redis::Client::open(url)?, prefix, timeout)
    }

    /// As [`open`](Self::open), for a `rediss://` URL whose server's
    /// certificate is checked against the CA certificates in `ca_pem` (a
    /// PEM, e.g. a private CA's or a self-signed server's) instead of the
    /// webpki roots. A PEM without a usable certificate, or a `redis://`
    /// URL, is refused here.
    pub fn open_with_root_certificates(
        url: &str,
        ca_pem: &[u8],
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        crate::tls::pem_certificates(ca_pem)
            .and_then(crate::tls::root_store)
            .map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "bad CA certificates",
                    e,
                ))
            })?;
        tls_provider(url);
        let client = redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca_pem.to_vec()),
            },
        )?;
        Self::with_client(client, prefix, timeout)
    }

    fn with_client(
        client: redis::Client,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(RedisState {
            client,
            conn,
            prefix: prefix.into(),
            timeout,
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Answers when Redis does (a `PING` within the timeout).
    pub async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.conn.clone();
        self.run("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(drop)
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Runs one call within the timeout; a Redis error or a timeout is 503
    /// `state_unavailable` naming `what` could not be checked.
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(what, error = %e, "shared state (Redis) call failed");
                Err(unavailable(what))
            }
            Err(_) => {
                tracing::warn!(
                    what,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "shared state (Redis) call timed out"
                );
                Err(unavailable(what))
            }
        }
    }
}

/// The redis crate builds its rustls configuration on the process's
/// default crypto provider; for a TLS URL, make it ring (what the rest of
/// the crate uses) unless the application installed one.
fn tls_provider(url: &str) {
    if url.starts_with("rediss://") && rustls::crypto::CryptoProvider::get_default().is_none() {
        // Lost a race with another installer: theirs is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// 503 `state_unavailable`: the shared state did not answer, so `what`
/// could not be checked and the request was not served.
pub fn unavailable(what: &str) -> Error {
    Error::new(
        Reason::StateUnavailable,
        format!(
            "The gateway's shared state (Redis) did not answer, so this request's {what} \
             could not be checked; it was not served. Try again shortly."
        ),
    )
    .with_meta("state", what.to_owned())
    .with_retry_after(Duration::from_secs(1))
}

#[cfg(test)]
pub(crate) mod test_redis {
    //! Tests run against a real Redis: `TOLLGATE_TEST_REDIS_URL` (default
    //! `redis://127.0.0.1:6379`); a Redis that does not answer fails the
    //! test, it is never skipped.
    use super::*;

    pub fn url() -> String {
        std::env::var("TOLLGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    /// A state under a prefix no other test uses.
    pub async fn state(name: &str) -> RedisState {
        let prefix = format!(
            "tollgate-test:{name}:{}:{}:",
            std::process::id(),
            fastrand::u64(..)
        );
        let s = RedisState::open(&url(), &prefix, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("bad TOLLGATE_TEST_REDIS_URL {}: {e}", url()));
        s.ping().await.unwrap_or_else(|e| {
            panic!(
                "Redis at {} does not answer ({e}); the redis tests need it running",
                url()
            )
        });
        s
    }
}
