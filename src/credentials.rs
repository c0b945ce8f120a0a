//! A shared cache for upstream credentials that expire: fetched once, shared
//! by every request, refreshed ahead of expiry by one task.
//!
//! Cloud upstreams are not called with a fixed key but with a credential that
//! must be obtained from somewhere else and that expires: a Microsoft Entra
//! ID access token for Azure OpenAI (see [`crate::provider::azure`]), an
//! OAuth token exchanged for a signed JWT for Google's Vertex AI, temporary
//! AWS credentials (access key, secret key, session token) for Bedrock. What
//! differs between them is only *how one is fetched*; what a gateway needs
//! from all of them is the same, and is what [`CredentialCache`] does:
//!
//! - **Fetched once.** The first request starts the fetch; every request that
//!   arrives while it runs waits for that same fetch (single flight: a burst
//!   of a thousand requests is one call to the token endpoint, not a
//!   thousand).
//! - **Refreshed ahead, by one task.** Once a credential enters its refresh
//!   window ([`RefreshPolicy::refresh_ahead`], at most half its lifetime
//!   before expiry) the next look-up starts *one* background refresh and
//!   still returns the valid credential at once: requests holding a valid
//!   credential never wait for a refresh. The fetch runs in its own task, so
//!   a client that goes away does not cancel it for the others.
//! - **Failures are the gateway's.** A failed fetch is a [`CredentialError`]
//!   for the requests that needed it; the provider turns it into 502
//!   `upstream_auth_failed` (the router then cools that deployment down and
//!   tries another), never a 401 that would make a client doubt its own key.
//!   While a still-valid credential is held a failed background refresh only
//!   delays the next attempt by [`RefreshPolicy::retry_after_failure`]; after
//!   a failure with no valid credential, requests within that pause get the
//!   same error without calling the token endpoint again.
//! - **Dropped when refused.** When the upstream refuses a credential (an
//!   HTTP 401), [`CredentialCache::invalidate`] drops exactly that one, so
//!   the next request fetches a new one (once, whatever the concurrency).
//! - **Never shown.** The cache's `Debug` shows its state and counters, never
//!   the value; [`Secret`] is the string type for tokens and keys, whose
//!   `Debug` is `[redacted]` and which has no `Display`.
//!
//! The look-up of a valid credential is one atomic load (`arc-swap`) and a
//! clock read: no lock, no allocation (see `benches/credentials.rs` and
//! `docs/providers.md` for its measured cost).
//!
//! The fetch is any async function returning [`Fetched`]; a closure works:
//!
//! ```
//! use std::time::Duration;
//! use tollgate::credentials::{CredentialCache, Fetched, RefreshPolicy, Secret};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cache = CredentialCache::new("entra", RefreshPolicy::default(), || async {
//!     // Call the token endpoint here; say how long the token lives.
//!     Ok(Fetched::expiring(Secret::new("eyJ0eXAi…"), Duration::from_secs(3600)))
//! });
//! let token = cache.get().await.unwrap();
//! assert_eq!(token.value().expose(), "eyJ0eXAi…");
//! assert_eq!(cache.fetches(), 1);
//! let again = cache.get().await.unwrap(); // served from the cache
//! assert_eq!(cache.fetches(), 1);
//! assert!(!format!("{cache:?}{again:?}").contains("eyJ0"));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tokio::time::Instant;

/// A string that must never be shown: a token, a key, a client secret.
///
/// `Debug` prints `[redacted]`; there is no `Display`. Read it with
/// [`expose`](Self::expose) only where it is put on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a secret string.
    pub fn new(s: impl Into<Box<str>>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, to put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a fetch returns: the credential and how long it may be used.
#[derive(Clone)]
pub struct Fetched<T> {
    /// The credential.
    pub value: T,
    /// How long it is valid from now (`None`: it does not expire).
    pub lifetime: Option<Duration>,
}

impl<T> Fetched<T> {
    /// A credential valid for `lifetime` from now.
    pub fn expiring(value: T, lifetime: Duration) -> Self {
        Fetched {
            value,
            lifetime: Some(lifetime),
        }
    }

    /// A credential that does not expire (an API key read once).
    pub fn forever(value: T) -> Self {
        Fetched {
            value,
            lifetime: None,
        }
    }
}

impl<T> fmt::Debug for Fetched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("value", &format_args!("[redacted]"))
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// A credential could not be fetched. The message must not contain the
/// secret material (the fetcher builds it from the endpoint's status and
/// error code, not from the request it sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialError {
    message: Arc<str>,
}

impl CredentialError {
    /// An error saying `message`.
    pub fn new(message: impl Into<Arc<str>>) -> Self {
        CredentialError {
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for CredentialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CredentialError {}

/// The future a [`Fetch`] returns.
pub type FetchFuture<T> =
    Pin<Box<dyn Future<Output = Result<Fetched<T>, CredentialError>> + Send + 'static>>;

/// How a credential is obtained: Entra ID's token endpoint, a managed
/// identity endpoint, Google's OAuth exchange, AWS's credential chain, ….
///
/// Implemented for every `Fn() -> impl Future<Output = Result<Fetched<T>,
/// CredentialError>>`, so a closure is a fetcher.
pub trait Fetch<T>: Send + Sync + 'static {
    /// Starts one fetch.
    fn fetch(&self) -> FetchFuture<T>;
}

impl<T, F, Fut> Fetch<T> for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Fetched<T>, CredentialError>> + Send + 'static,
{
    fn fetch(&self) -> FetchFuture<T> {
        Box::pin(self())
    }
}

/// When a cached credential is refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// How long before expiry a background refresh starts (capped at half
    /// the credential's lifetime, so a short-lived one is not refreshed on
    /// every request). Default 5 minutes.
    pub refresh_ahead: Duration,
    /// After a failed fetch, how long until the next attempt. Requests that
    /// find no valid credential within this pause get the same error at once
    /// (the token endpoint is not hammered); with a valid one they are served
    /// as usual. Default 2 seconds.
    pub retry_after_failure: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            refresh_ahead: Duration::from_secs(300),
            retry_after_failure: Duration::from_secs(2),
        }
    }
}

/// One cached credential.
struct Entry<T> {
    value: T,
    /// When it stops being used.
    expires_at: Option<Instant>,
    /// When a background refresh starts.
    refresh_at: Option<Instant>,
    /// Which fetch it came from (1, 2, …), to drop exactly this one.
    generation: u64,
}

impl<T> Entry<T> {
    fn valid(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    fn due(&self, now: Instant) -> bool {
        self.refresh_at.is_some_and(|at| now >= at)
    }
}

/// A credential from the cache. Cheap to clone; `Debug` never shows it.
pub struct Credential<T>(Arc<Entry<T>>);

impl<T> Clone for Credential<T> {
    fn clone(&self) -> Self {
        Credential(self.0.clone())
    }
}

impl<T> Credential<T> {
    /// The credential itself.
    pub fn value(&self) -> &T {
        &self.0.value
    }

    /// Which fetch it came from (1 for the first): give it back to
    /// [`CredentialCache::invalidate`] when the upstream refuses it.
    pub fn generation(&self) -> u64 {
        self.0.generation
    }
}

impl<T> fmt::Debug for Credential<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("value", &format_args!("[redacted]"))
            .field("generation", &self.0.generation)
            .finish()
    }
}

type Outcome<T> = Option<Result<Credential<T>, CredentialError>>;

#[derive(Default)]
struct Flight<T> {
    /// The fetch running now, if one is.
    running: Option<watch::Receiver<Outcome<T>>>,
    /// The last fetch's failure and when it ended (cleared by a success).
    failed: Option<(Instant, CredentialError)>,
    /// The generation of the last fetch started.
    generation: u64,
}

struct Shared<T> {
    name: Arc<str>,
    policy: RefreshPolicy,
    fetch: Box<dyn Fetch<T>>,
    current: ArcSwapOption<Entry<T>>,
    flight: Mutex<Flight<T>>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

/// A credential shared by every request to one upstream (see the module
/// docs). Cheap to clone: clones share the cache.
pub struct CredentialCache<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for CredentialCache<T> {
    fn clone(&self) -> Self {
        CredentialCache {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for CredentialCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        let held = s.current.load();
        f.debug_struct("CredentialCache")
            .field("name", &s.name)
            .field("value", &held.as_ref().map(|_| "[redacted]"))
            .field("generation", &held.as_ref().map(|e| e.generation))
            .field("fetches", &s.fetches.load(Ordering::Relaxed))
            .field("failures", &s.failures.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Send + Sync + 'static> CredentialCache<T> {
    /// A cache named `name` (for errors and logs) over `fetch`. Nothing is
    /// fetched until the first [`get`](Self::get).
    pub fn new(name: &str, policy: RefreshPolicy, fetch: impl Fetch<T>) -> Self {
        CredentialCache {
            shared: Arc::new(Shared {
                name: name.into(),
                policy,
                fetch: Box::new(fetch),
                current: ArcSwapOption::empty(),
                flight: Mutex::new(Flight {
                    running: None,
                    failed: None,
                    generation: 0,
                }),
                fetches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// A valid credential: the cached one at once (starting a background
    /// refresh when it is due), or the result of the one fetch in flight.
    /// Must be called within a tokio runtime (the fetch is spawned).
    pub async fn get(&self) -> Result<Credential<T>, CredentialError> {
        if let Some(held) = self.cached(Instant::now()) {
            return Ok(held);
        }
        let mut rx = {
            let mut flight = self.lock();
            // Re-checked under the lock: a fetch may have just ended.
            let now = Instant::now();
            if let Some(entry) = self.shared.current.load_full().filter(|e| e.valid(now)) {
                return Ok(Credential(entry));
            }
            match &flight.running {
                Some(rx) => rx.clone(),
                None => {
                    if let Some((at, e)) = &flight.failed
                        && now < *at + self.shared.policy.retry_after_failure
                    {
                        return Err(e.clone());
                    }
                    self.start(&mut flight)
                }
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            // The fetch task panicked or the runtime is going down.
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| {
            Err(CredentialError::new(format!(
                "the credential fetch for `{}` did not complete",
                self.shared.name
            )))
        })
    }

    /// The cached credential if it is valid now, starting a background
    /// refresh when one is due. Never waits.
    fn cached(&self, now: Instant) -> Option<Credential<T>> {
        let guard = self.shared.current.load();
        let entry = guard.as_ref().filter(|e| e.valid(now))?;
        if entry.due(now) {
            self.refresh_in_background(now);
        }
        Some(Credential(entry.clone()))
    }

    fn refresh_in_background(&self, now: Instant) {
        let mut flight = self.lock();
        if flight.running.is_some() {
            return;
        }
        if let Some((at, _)) = &flight.failed
            && now < *at + self.shared.policy.retry_after_failure
        {
            return;
        }
        drop(self.start(&mut flight));
    }

    /// Spawns the one fetch; the caller holds the flight lock.
    fn start(&self, flight: &mut Flight<T>) -> watch::Receiver<Outcome<T>> {
        let (tx, rx) = watch::channel(None);
        flight.running = Some(rx.clone());
        flight.generation += 1;
        let generation = flight.generation;
        let shared = self.shared.clone();
        shared.fetches.fetch_add(1, Ordering::Relaxed);
        let fetch = shared.fetch.fetch();
        tokio::spawn(async move {
            // A lifetime counts from when the fetch started: the credential
            // was issued after that, so it is never used past its expiry.
            let started = Instant::now();
            let result = fetch.await;
            let now = Instant::now();
            let outcome = match result {
                Ok(fetched) => {
                    let (expires_at, refresh_at) = match fetched.lifetime {
                        Some(life) => {
                            let ahead = shared.policy.refresh_ahead.min(life / 2);
                            (Some(started + life), Some(started + life - ahead))
                        }
                        None => (None, None),
                    };
                    let entry = Arc::new(Entry {
                        value: fetched.value,
                        expires_at,
                        refresh_at,
                        generation,
                    });
                    shared.current.store(Some(entry.clone()));
                    Ok(Credential(entry))
                }
                Err(e) => {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(credential = %shared.name, error = %e, "credential fetch failed");
                    Err(e)
                }
            };
            {
                let mut flight = shared.flight.lock().unwrap_or_else(|p| p.into_inner());
                flight.running = None;
                flight.failed = outcome.as_ref().err().map(|e| (now, e.clone()));
            }
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flight<T>> {
        self.shared.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the cached credential if it is still the one of `generation`
    /// (the upstream refused it), so the next [`get`](Self::get) fetches a
    /// new one. A later credential is kept: many requests refused with the
    /// same old one cause one fetch, not one each.
    pub fn invalidate(&self, generation: u64) {
        let current = self.shared.current.load();
        if current.as_ref().is_some_and(|e| e.generation == generation) {
            // Only if it was not replaced meanwhile.
            let _ = self.shared.current.compare_and_swap(&*current, None);
        }
    }

    /// How many fetches were started (successful or not).
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }

    /// How many fetches failed.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// The largest answer of a credential endpoint that is read.
const MAX_CREDENTIAL_ANSWER: usize = 64 << 10;

/// Sends one request to a credential endpoint (a token endpoint, AWS's
/// container credentials endpoint) and reads its whole answer, within
/// `timeout` (connection included). `what` names the endpoint in errors;
/// `secrets` (what the request carries) are redacted from any message.
pub(crate) async fn exchange(
    client: &crate::provider::HttpClient,
    request: http::Request<crate::body::Chunks>,
    timeout: Duration,
    what: &str,
    secrets: &[&str],
) -> Result<(http::StatusCode, bytes::Bytes), CredentialError> {
    use http_body_util::BodyExt;
    let scheme = request
        .uri()
        .scheme()
        .cloned()
        .unwrap_or(http::uri::Scheme::HTTP);
    let call = async {
        let res = client
            .pick(&scheme)
            .request(request)
            .await
            .map_err(|e| format!("could not reach {what}: {e}"))?;
        let status = res.status();
        let body = http_body_util::Limited::new(res.into_body(), MAX_CREDENTIAL_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("{what} answer could not be read: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let secrets = crate::sanitize::Secrets::new(secrets);
    let fail = |m: String| CredentialError::new(crate::sanitize::redact(&m, &secrets).into_owned());
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(fail(format!("{what} did not answer within {timeout:?}"))),
        Ok(Err(m)) => Err(fail(m)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// The error a request gets when its deployment's credential could not be
/// obtained: 502 `upstream_auth_failed` (the router cools the deployment
/// down and tries another), never a 401 that would make the client doubt
/// its own key. `what` names the credential ("its Entra ID token").
pub(crate) fn upstream_auth_failed(
    provider: &str,
    what: &str,
    e: &CredentialError,
) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::Reason::UpstreamAuthFailed,
        format!(
            "Upstream '{provider}': the gateway could not obtain {what} ({e}); this is a gateway configuration problem, not your key, and other deployments are tried."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use tokio::sync::Notify;

    /// A fetcher that counts calls, can be held at its start by a gate, and
    /// fails while `fail` is set.
    #[derive(Clone, Default)]
    struct Probe {
        calls: Arc<AtomicU64>,
        gate: Arc<Mutex<Option<Arc<Notify>>>>,
        fail: Arc<AtomicBool>,
    }

    impl Probe {
        fn cache(&self, lifetime: Duration, policy: RefreshPolicy) -> CredentialCache<Secret> {
            let p = self.clone();
            CredentialCache::new("test", policy, move || {
                let p = p.clone();
                async move {
                    let n = p.calls.fetch_add(1, Ordering::SeqCst) + 1;
                    let gate = p.gate.lock().unwrap().clone();
                    if let Some(g) = gate {
                        g.notified().await;
                    }
                    if p.fail.load(Ordering::SeqCst) {
                        return Err(CredentialError::new("the token endpoint said 500"));
                    }
                    Ok(Fetched::expiring(
                        Secret::new(format!("token-{n}")),
                        lifetime,
                    ))
                }
            })
        }

        fn hold(&self) -> Arc<Notify> {
            let n = Arc::new(Notify::new());
            *self.gate.lock().unwrap() = Some(n.clone());
            n
        }

        fn release(&self, n: &Notify) {
            *self.gate.lock().unwrap() = None;
            n.notify_waiters();
        }
    }

    fn policy(ahead: u64) -> RefreshPolicy {
        RefreshPolicy {
            refresh_ahead: Duration::from_secs(ahead),
            retry_after_failure: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_first_requests_share_one_fetch() {
        let probe = Probe::default();
        let cache = probe.cache(Duration::from_secs(3600), policy(300));
        let gate = probe.hold();
        let waiting: Vec<_> = (0..200)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get().await })
            })
            .collect();
        // Let every task reach the flight before the fetch ends.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        probe.release(&gate);
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().value().expose(), "token-1");
        }
        assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.fetches(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_refresh_runs_once_in_the_background_and_never_blocks() {
        let probe = Probe::default();
        // Lives 100 s; refreshed from 50 s on (half the lifetime caps 300 s).
        let cache = probe.cache(Duration::from_secs(100), policy(300));
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-1");
        tokio::time::advance(Duration::from_secs(60)).await;
        // The refresh is held at its start: look-ups still get token-1 at once.
        let gate = probe.hold();
        for _ in 0..100 {
            let now = tokio::time::timeout(Duration::ZERO, cache.get()).await;
            let held = now.expect("a valid credential never waits").unwrap();
            assert_eq!(held.value().expose(), "token-1");
        }
        tokio::task::yield_now().await;
        assert_eq!(
            probe.calls.load(Ordering::SeqCst),
            2,
            "one background refresh"
        );
        probe.release(&gate);
        // Once it lands, the new token is served.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-2");
        assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_credential_is_fetched_again_once() {
        let probe = Probe::default();
        let cache = probe.cache(Duration::from_secs(10), policy(0));
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-1");
        tokio::time::advance(Duration::from_secs(11)).await;
        let gate = probe.hold();
        let waiting: Vec<_> = (0..50)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get().await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        probe.release(&gate);
        for w in waiting {
            assert_eq!(w.await.unwrap().unwrap().value().expose(), "token-2");
        }
        assert_eq!(cache.fetches(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_fails_its_waiters_and_pauses_before_the_next() {
        let probe = Probe::default();
        probe.fail.store(true, Ordering::SeqCst);
        let cache = probe.cache(Duration::from_secs(10), policy(0));
        let e = cache.get().await.unwrap_err();
        assert!(e.message().contains("500"), "{e}");
        // Within the pause: the same error, no new fetch.
        let e2 = cache.get().await.unwrap_err();
        assert_eq!(e, e2);
        assert_eq!(cache.fetches(), 1);
        assert_eq!(cache.failures(), 1);
        // After it, and with the endpoint healthy again: fetched.
        probe.fail.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_background_refresh_keeps_the_valid_credential() {
        let probe = Probe::default();
        let cache = probe.cache(Duration::from_secs(100), policy(40));
        cache.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(70)).await;
        probe.fail.store(true, Ordering::SeqCst);
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-1");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.failures(), 1);
        // Still valid: served, and no second attempt within the pause.
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-1");
        assert_eq!(cache.fetches(), 2);
        // Expired with the endpoint still failing: the error.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(cache.get().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_drops_only_the_refused_generation() {
        let probe = Probe::default();
        let cache = probe.cache(Duration::from_secs(3600), policy(300));
        let first = cache.get().await.unwrap();
        cache.invalidate(first.generation());
        let second = cache.get().await.unwrap();
        assert_eq!(second.value().expose(), "token-2");
        // Another request refused with the old one: the new one stays.
        cache.invalidate(first.generation());
        assert_eq!(cache.get().await.unwrap().value().expose(), "token-2");
        assert_eq!(cache.fetches(), 2);
    }

    #[tokio::test]
    async fn nothing_secret_in_debug() {
        let cache = CredentialCache::new("entra", RefreshPolicy::default(), || async {
            Ok(Fetched::forever(Secret::new("s3cr3t-token-value")))
        });
        let c = cache.get().await.unwrap();
        let shown = format!(
            "{cache:?} {c:?} {:?} {:?}",
            c.value(),
            Fetched::forever(Secret::new("s3cr3t-token-value"))
        );
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
