//! `RateLimit`: per-key requests per minute and tokens per minute, on
//! [governor](https://docs.rs/governor)'s GCRA.
//!
//! A [`RateLimitKey`] hook names the key a request is limited by and that
//! key's [`Limits`]; any closure `Fn(&LlmRequest<I>) -> Option<(K, Limits)>`
//! is one, so a gateway can limit by virtual key, team, client IP or anything
//! else it can read from the request and its identity `I`. `None` means "not
//! limited". Each key has its own limits: a key's requests are counted one
//! per request, its tokens with the request's worst case, `prompt estimate +
//! output cap × n` ([`token_cost`]), charged at once through governor's
//! `check_n`.
//!
//! Refusals are 429 `rate_limited` with `Retry-After` (when the request
//! could pass) and OpenAI's headers, which successful answers carry too:
//!
//! | header | value |
//! |---|---|
//! | `x-ratelimit-limit-requests`, `x-ratelimit-limit-tokens` | the key's limit per minute |
//! | `x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens` | what is left now |
//! | `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens` | until the limit is whole again, in OpenAI's format (`6s`, `1m0s`, `20ms`) |
//!
//! A request whose token cost is larger than the key's whole per-minute
//! limit can never pass: it is refused at once (429, `metadata.permanent`,
//! no `Retry-After`), saying so, rather than queued or retried forever.
//! Requests are checked before tokens; a request refused for its tokens
//! still counts one request.
//!
//! Memory stays bounded: a key unseen for a minute has its bucket full
//! again, so it is forgotten (a sweep runs at most once a minute) and comes
//! back exactly as it left. Changing a key's limits starts its count afresh.
//!
//! ```
//! use http::{Request, Response};
//! use tollgate::rate_limit::{Limits, RateLimitLayer};
//! use tollgate::read_request::{Identified, Parsed, ReadRequestLayer};
//! use tollgate::{Body, Error, LlmRequest};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Limit by the caller's identity: here a plain team name.
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(RateLimitLayer::new(|req: &LlmRequest<&'static str>| {
//!         Some((*req.body().identity(), Limits::per_minute(1, 10_000)))
//!     }))
//!     .service(service_fn(|_req: LlmRequest<&'static str>| async {
//!         Ok::<_, Error>(Response::new(Body::empty()))
//!     }));
//! let call = || {
//!     let req = Request::post("/v1/chat/completions")
//!         .body(Identified { identity: "search-team", body: Body::full(r#"{"model":"m"}"#) })
//!         .unwrap();
//!     svc.clone().oneshot(req)
//! };
//! let ok = call().await.unwrap();
//! assert_eq!(ok.headers()["x-ratelimit-remaining-requests"], "0");
//! let refused = call().await.unwrap_err();
//! assert_eq!(refused.status(), 429);
//! assert_eq!(refused.headers()["x-ratelimit-reset-requests"], "1m0s");
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota};
use http::Response;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::LlmRequest;
use crate::error::{Error, Reason};
use crate::read_request::Summary;

/// How long a key may sit unused before it is forgotten: every per-minute
/// bucket is whole again after a minute, so forgetting it then loses nothing.
const IDLE_AFTER: Duration = Duration::from_secs(60);
const MINUTE: Duration = Duration::from_secs(60);

/// `x-ratelimit-limit-requests`
pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
/// `x-ratelimit-remaining-requests`
pub const REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
/// `x-ratelimit-reset-requests`
pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
/// `x-ratelimit-limit-tokens`
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
/// `x-ratelimit-remaining-tokens`
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
/// `x-ratelimit-reset-tokens`
pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// A key's limits. `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Requests per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens per minute (prompt estimate + output cap × n, per request).
    pub tokens_per_minute: Option<NonZeroU32>,
}

impl Limits {
    /// No limit at all.
    pub const UNLIMITED: Limits = Limits {
        requests_per_minute: None,
        tokens_per_minute: None,
    };

    /// `requests` and `tokens` per minute; 0 means unlimited.
    pub fn per_minute(requests: u32, tokens: u32) -> Self {
        Limits {
            requests_per_minute: NonZeroU32::new(requests),
            tokens_per_minute: NonZeroU32::new(tokens),
        }
    }
}

/// Names the key a request is limited by, and its limits; `None`: not limited.
///
/// Implemented by every `Fn(&LlmRequest<I>) -> Option<(K, Limits)>`.
pub trait RateLimitKey<I> {
    /// The key (a key id, a team, an IP address, …).
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `req` and its limits.
    fn key(&self, req: &LlmRequest<I>) -> Option<(Self::Key, Limits)>;
}

impl<F, I, K> RateLimitKey<I> for F
where
    F: Fn(&LlmRequest<I>) -> Option<(K, Limits)>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn key(&self, req: &LlmRequest<I>) -> Option<(K, Limits)> {
        self(req)
    }
}

/// What a shared limiter does when its store (Redis) does not answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Refuse the request: 503 `state_unavailable` (the default).
    #[default]
    Closed,
    /// Let the request through unchecked.
    Open,
}

/// The tokens a request is charged: the prompt estimate plus the output cap
/// (or `default_max_output` when the request sets none) times `n`.
pub fn token_cost(summary: &Summary, default_max_output: u64) -> u64 {
    let output = summary.max_output_tokens.unwrap_or(default_max_output);
    summary
        .prompt_tokens_estimate()
        .saturating_add(output.saturating_mul(summary.n.max(1)))
}

/// A duration in OpenAI's `x-ratelimit-reset-*` format: `20ms`, `6s`,
/// `1.5s`, `1m0s`, `1h2m3s`.
pub fn openai_duration(d: Duration) -> String {
    let mut out = Vec::with_capacity(16);
    write_openai_duration(&mut out, d);
    // Only ASCII digits and unit letters were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`openai_duration`], appended to `out` (with `itoa`: this runs twice
/// per request, and `fmt` would cost more than the rest of the headers).
fn write_openai_duration(out: &mut Vec<u8>, d: Duration) {
    let mut n = itoa::Buffer::new();
    let ms = d.as_nanos().div_ceil(1_000_000) as u64;
    if ms < 1000 {
        out.extend_from_slice(n.format(ms).as_bytes());
        out.extend_from_slice(b"ms");
        return;
    }
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    if h > 0 {
        out.extend_from_slice(n.format(h).as_bytes());
        out.push(b'h');
    }
    if h > 0 || m > 0 {
        out.extend_from_slice(n.format(m).as_bytes());
        out.push(b'm');
    }
    out.extend_from_slice(n.format(s).as_bytes());
    if frac > 0 {
        // Milliseconds without trailing zeros: .5, .25, .125.
        let (mut digits, mut width) = (frac, 3);
        while digits % 10 == 0 {
            digits /= 10;
            width -= 1;
        }
        let digits = n.format(digits);
        out.push(b'.');
        out.extend(std::iter::repeat_n(b'0', width - digits.len()));
        out.extend_from_slice(digits.as_bytes());
    }
    out.push(b's');
}

type Limiter<C> = governor::RateLimiter<NotKeyed, InMemoryState, C, StateInformationMiddleware>;

struct Entry<C: Clock> {
    limits: Limits,
    requests: Option<Limiter<C>>,
    tokens: Option<Limiter<C>>,
    /// Nanoseconds since the limiters' start, of the last check.
    last_seen: AtomicU64,
}

impl<C: Clock + Clone> Entry<C> {
    fn new(limits: Limits, clock: &C, now: u64) -> Self {
        let limiter = |n: Option<NonZeroU32>| {
            n.map(|n| {
                governor::RateLimiter::direct_with_clock(Quota::per_minute(n), clock.clone())
                    .with_middleware::<StateInformationMiddleware>()
            })
        };
        Entry {
            limits,
            requests: limiter(limits.requests_per_minute),
            tokens: limiter(limits.tokens_per_minute),
            last_seen: AtomicU64::new(now),
        }
    }
}

/// One limit's state as the headers tell it.
#[derive(Clone, Copy, Debug)]
struct Window {
    limit: u32,
    remaining: u32,
    reset: Duration,
}

impl Window {
    fn allowed(snapshot: &StateSnapshot, limit: NonZeroU32) -> Self {
        let limit = limit.get();
        let remaining = snapshot.remaining_burst_capacity().min(limit);
        Window {
            limit,
            remaining,
            reset: MINUTE * (limit - remaining) / limit,
        }
    }

    /// A refusal of `n` cells: the bucket is whole at `wait + (limit - n)`
    /// cells' time; what is left now follows from that.
    fn refused(wait: Duration, limit: NonZeroU32, n: u32) -> Self {
        let limit = limit.get();
        let cell = MINUTE / limit;
        let reset = wait + cell * (limit - n.min(limit));
        let used = reset.as_nanos().div_ceil(cell.as_nanos().max(1));
        Window {
            limit,
            remaining: limit.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
            reset,
        }
    }
}

/// The windows a request is told about in its `x-ratelimit-*` headers:
/// kept as numbers until the response comes, then written into it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Granted {
    requests: Option<Window>,
    tokens: Option<Window>,
}

impl Granted {
    /// Writes the headers. The (up to six) values are formatted into one
    /// buffer and each header value is a slice of it: two allocations in
    /// all, not one per value.
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        // Names made once: a `HeaderName` constant is rebuilt where used.
        static REQUESTS: [HeaderName; 3] = [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS];
        static TOKENS: [HeaderName; 3] = [LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS];
        let windows = [(&REQUESTS, self.requests), (&TOKENS, self.tokens)];
        let mut buf = Vec::with_capacity(96);
        let mut ends = [0usize; 6];
        for (k, (_, w)) in windows.iter().enumerate() {
            if let Some(w) = w {
                let mut n = itoa::Buffer::new();
                buf.extend_from_slice(n.format(w.limit).as_bytes());
                ends[3 * k] = buf.len();
                buf.extend_from_slice(n.format(w.remaining).as_bytes());
                ends[3 * k + 1] = buf.len();
                write_openai_duration(&mut buf, w.reset);
                ends[3 * k + 2] = buf.len();
            }
        }
        let mut all = bytes::Bytes::from(buf);
        let mut at = 0;
        for (k, (names, w)) in windows.iter().enumerate() {
            if w.is_none() {
                continue;
            }
            for (i, name) in names.iter().enumerate() {
                let value = all.split_to(ends[3 * k + i] - at);
                at = ends[3 * k + i];
                // Digits, letters and a dot: always a valid value.
                if let Ok(v) = HeaderValue::from_maybe_shared(value) {
                    headers.insert(name, v);
                }
            }
        }
    }

    /// The headers, in a map of their own.
    pub(crate) fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.write(&mut headers);
        headers
    }
}

/// Every key's limiters, shared by all clones of a layer and its services.
struct Limiters<K, C: Clock> {
    /// Read on every request; foldhash, like the budget ledger's counters.
    map: DashMap<K, Entry<C>, foldhash::fast::RandomState>,
    clock: C,
    start: C::Instant,
    next_sweep: AtomicU64,
    sweeping: AtomicBool,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> Limiters<K, C> {
    fn now(&self) -> u64 {
        let nanos: Duration = self.clock.now().duration_since(self.start).into();
        u64::try_from(nanos.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Checks and charges `key`; the windows to report, or the refusal.
    fn check(&self, key: K, limits: Limits, tokens: u64) -> Result<Granted, Error> {
        let now = self.now();
        self.sweep(now);
        let entry = match self.map.get(&key) {
            Some(e) if e.limits == limits => e,
            other => {
                drop(other);
                self.map
                    .insert(key.clone(), Entry::new(limits, &self.clock, now));
                match self.map.get(&key) {
                    Some(e) => e,
                    // Swept in between by another thread: check a fresh entry.
                    None => return self.check(key, limits, tokens),
                }
            }
        };
        entry.last_seen.fetch_max(now, Ordering::Relaxed);
        let mut granted = Granted::default();
        if let (Some(limiter), Some(limit)) = (&entry.requests, limits.requests_per_minute) {
            match limiter.check() {
                Ok(snapshot) => granted.requests = Some(Window::allowed(&snapshot, limit)),
                Err(not_until) => {
                    return Err(requests_refused(limit, self.wait(&not_until), granted));
                }
            }
        }
        if let (Some(limiter), Some(limit)) = (&entry.tokens, limits.tokens_per_minute) {
            let n = u32::try_from(tokens).unwrap_or(u32::MAX).max(1);
            let n_nz = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            match limiter.check_n(n_nz) {
                Ok(Ok(snapshot)) => granted.tokens = Some(Window::allowed(&snapshot, limit)),
                Ok(Err(not_until)) => {
                    let wait = self.wait(&not_until);
                    return Err(tokens_refused(limit, tokens, wait, granted));
                }
                Err(_insufficient) => return Err(tokens_never(limit, tokens, granted)),
            }
        }
        Ok(granted)
    }

    fn wait(&self, not_until: &NotUntil<C::Instant>) -> Duration {
        not_until.wait_time_from(self.clock.now())
    }

    /// At most once per [`IDLE_AFTER`], forgets the keys unseen for that long.
    fn sweep(&self, now: u64) {
        if now < self.next_sweep.load(Ordering::Relaxed)
            || self.sweeping.swap(true, Ordering::Acquire)
        {
            return;
        }
        let idle = IDLE_AFTER.as_nanos() as u64;
        self.map
            .retain(|_, e| now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) < idle);
        self.map.shrink_to_fit();
        self.next_sweep
            .store(now.saturating_add(idle), Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

/// 429: the key's requests per minute are used up for `wait`.
fn requests_refused(limit: NonZeroU32, wait: Duration, mut granted: Granted) -> Error {
    granted.requests = Some(Window::refused(wait, limit, 1));
    let err = Error::new(
        Reason::RateLimited,
        format!(
            "Rate limit reached for requests: the limit is {} requests per minute. Try again in {}.",
            limit,
            openai_duration(wait)
        ),
    )
    .with_retry_after(wait)
    .with_meta("limit", "requests")
    .with_meta("limit_requests_per_minute", limit.get());
    with_headers(err, granted, None)
}

/// 429: the key's tokens per minute cannot cover `tokens` for `wait`.
fn tokens_refused(limit: NonZeroU32, tokens: u64, wait: Duration, mut granted: Granted) -> Error {
    let n = u32::try_from(tokens).unwrap_or(u32::MAX).max(1);
    granted.tokens = Some(Window::refused(wait, limit, n));
    let err = Error::new(
        Reason::RateLimited,
        format!(
            "Rate limit reached for tokens: the limit is {limit} tokens per minute and this request may use up to {tokens}. Try again in {}.",
            openai_duration(wait)
        ),
    )
    .with_retry_after(wait)
    .with_meta("limit", "tokens")
    .with_meta("limit_tokens_per_minute", limit.get())
    .with_meta("requested_tokens", tokens);
    with_headers(err, granted, None)
}

/// 429, permanent: `tokens` is more than the key's whole per-minute limit.
fn tokens_never(limit: NonZeroU32, tokens: u64, mut granted: Granted) -> Error {
    // Larger than the whole bucket: waiting cannot help (no reset header).
    granted.tokens = Some(Window {
        limit: limit.get(),
        remaining: 0,
        reset: Duration::ZERO,
    });
    let err = Error::new(
        Reason::RateLimited,
        format!(
            "This request may use up to {tokens} tokens (prompt estimate + max output tokens × n), more than the whole limit of {limit} tokens per minute, so it can never pass. Lower `max_tokens` (or `n`) or shorten the prompt."
        ),
    )
    .permanent()
    .with_meta("limit", "tokens")
    .with_meta("limit_tokens_per_minute", limit.get())
    .with_meta("requested_tokens", tokens);
    with_headers(err, granted, Some(RESET_TOKENS))
}

/// One limit's answer from a shared limiter (GCRA run elsewhere).
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Passed; the bucket is whole again after `reset`.
    Allowed { reset: Duration },
    /// Refused; it could pass after `wait`.
    Refused { wait: Duration },
    /// Larger than the whole limit: never.
    Never,
}

/// The windows (or the refusal) for a shared limiter's verdicts, exactly as
/// the in-process limiter reports them.
#[cfg(feature = "redis")]
pub(crate) fn shared_verdict(
    limits: Limits,
    tokens: u64,
    requests: Option<Verdict>,
    token_verdict: Option<Verdict>,
) -> Result<Granted, Error> {
    let allowed = |limit: NonZeroU32, reset: Duration| {
        let cell = MINUTE / limit.get();
        let used = reset.as_nanos().div_ceil(cell.as_nanos().max(1));
        Window {
            limit: limit.get(),
            remaining: limit
                .get()
                .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX)),
            reset,
        }
    };
    let mut granted = Granted::default();
    if let (Some(limit), Some(v)) = (limits.requests_per_minute, requests) {
        match v {
            Verdict::Allowed { reset } => granted.requests = Some(allowed(limit, reset)),
            Verdict::Refused { wait } => return Err(requests_refused(limit, wait, granted)),
            Verdict::Never => return Err(requests_refused(limit, MINUTE, granted)),
        }
    }
    if let (Some(limit), Some(v)) = (limits.tokens_per_minute, token_verdict) {
        match v {
            Verdict::Allowed { reset } => granted.tokens = Some(allowed(limit, reset)),
            Verdict::Refused { wait } => return Err(tokens_refused(limit, tokens, wait, granted)),
            Verdict::Never => return Err(tokens_never(limit, tokens, granted)),
        }
    }
    Ok(granted)
}

/// A refusal with the windows' headers (less `without`).
fn with_headers(mut err: Error, granted: Granted, without: Option<HeaderName>) -> Error {
    let mut headers = granted.headers();
    if let Some(name) = without {
        headers.remove(name);
    }
    for (name, value) in &headers {
        err = err.with_header(name.clone(), value.clone());
    }
    err
}

/// A shared limiter and how it names a key.
#[cfg(feature = "redis")]
type Shared<K> = Option<(crate::state::RedisRateLimiter, fn(&K) -> String)>;

/// Applies [`RateLimit`]. Clones share the counters.
pub struct RateLimitLayer<X, K, C: Clock = DefaultClock> {
    extract: X,
    limiters: Arc<Limiters<K, C>>,
    default_max_output: u64,
    #[cfg(feature = "redis")]
    shared: Shared<K>,
}

impl<X, K> RateLimitLayer<X, K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// Limits by `extract`'s key, on the real clock.
    pub fn new<I>(extract: X) -> Self
    where
        X: RateLimitKey<I, Key = K>,
    {
        Self::with_clock(extract, DefaultClock::default())
    }
}

impl<X, K, C> RateLimitLayer<X, K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Clone,
{
    /// Limits by `extract`'s key, on `clock` (governor's `FakeRelativeClock` in tests).
    pub fn with_clock<I>(extract: X, clock: C) -> Self
    where
        X: RateLimitKey<I, Key = K>,
    {
        let start = clock.now();
        RateLimitLayer {
            extract,
            limiters: Arc::new(Limiters {
                map: DashMap::default(),
                clock,
                start,
                next_sweep: AtomicU64::new(IDLE_AFTER.as_nanos() as u64),
                sweeping: AtomicBool::new(false),
            }),
            default_max_output: 1024,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }

    /// The output cap charged for a request that sets none (default 1024).
    pub fn default_max_output_tokens(mut self, tokens: u64) -> Self {
        self.default_max_output = tokens;
        self
    }

    /// This layer's counters (and shared limiter) with another key hook: a
    /// configuration reload's new defaults, without forgetting anyone's
    /// usage. A key whose limits are unchanged keeps its buckets; one whose
    /// limits changed starts fresh ones, as when an admin changes them.
    ///
    /// ```
    /// use tollgate::rate_limit::{Limits, RateLimitLayer};
    /// # use tollgate::LlmRequest;
    /// let per_key = |_: &LlmRequest| Some(("k".to_owned(), Limits::per_minute(60, 0)));
    /// let layer = RateLimitLayer::new(per_key);
    /// let reloaded = layer.clone().with_extract(|_: &LlmRequest| Some(("k".to_owned(), Limits::per_minute(60, 0))));
    /// assert_eq!(reloaded.tracked_keys(), layer.tracked_keys());
    /// ```
    pub fn with_extract<Y>(self, extract: Y) -> RateLimitLayer<Y, K, C> {
        RateLimitLayer {
            extract,
            limiters: self.limiters,
            default_max_output: self.default_max_output,
            #[cfg(feature = "redis")]
            shared: self.shared,
        }
    }

    /// How many keys are remembered now.
    pub fn tracked_keys(&self) -> usize {
        self.limiters.map.len()
    }

    /// Forgets the keys unseen for a minute now, not at the next sweep.
    pub fn evict_idle(&self) {
        let l = &self.limiters;
        l.next_sweep.store(0, Ordering::Relaxed);
        l.sweep(l.now());
    }
}

#[cfg(feature = "redis")]
impl<X, K> RateLimitLayer<X, K>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Display + 'static,
{
    /// Limits by `extract`'s key in Redis, shared by every replica (see
    /// [`RedisRateLimiter`](crate::state::RedisRateLimiter)); the key is
    /// named there by its `Display`. Same refusals and headers as in process.
    pub fn shared<I>(extract: X, limiter: crate::state::RedisRateLimiter) -> Self
    where
        X: RateLimitKey<I, Key = K>,
    {
        let mut layer = Self::new(extract);
        layer.shared = Some((limiter, |k: &K| k.to_string()));
        layer
    }
}

impl<X: Clone, K, C: Clock> Clone for RateLimitLayer<X, K, C> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            extract: self.extract.clone(),
            limiters: self.limiters.clone(),
            default_max_output: self.default_max_output,
            #[cfg(feature = "redis")]
            shared: self.shared.clone(),
        }
    }
}

impl<X, K: Hash + Eq, C: Clock> fmt::Debug for RateLimitLayer<X, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("keys", &self.limiters.map.len())
            .field("default_max_output_tokens", &self.default_max_output)
            .finish_non_exhaustive()
    }
}

impl<S, X: Clone, K, C: Clock> Layer<S> for RateLimitLayer<X, K, C> {
    type Service = RateLimit<S, X, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            extract: self.extract.clone(),
            limiters: self.limiters.clone(),
            default_max_output: self.default_max_output,
            #[cfg(feature = "redis")]
            shared: self.shared.clone(),
        }
    }
}

/// Refuses requests over their key's limits (see the module docs).
pub struct RateLimit<S, X, K, C: Clock = DefaultClock> {
    inner: S,
    extract: X,
    limiters: Arc<Limiters<K, C>>,
    default_max_output: u64,
    #[cfg(feature = "redis")]
    shared: Shared<K>,
}

impl<S: Clone, X: Clone, K, C: Clock> Clone for RateLimit<S, X, K, C> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            extract: self.extract.clone(),
            limiters: self.limiters.clone(),
            default_max_output: self.default_max_output,
            #[cfg(feature = "redis")]
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, X, K: Hash + Eq, C: Clock> fmt::Debug for RateLimit<S, X, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("keys", &self.limiters.map.len())
            .finish_non_exhaustive()
    }
}

impl<S, X, K, C, I, B> Service<LlmRequest<I>> for RateLimit<S, X, K, C>
where
    S: Service<LlmRequest<I>, Response = Response<B>, Error = Error> + Clone,
    X: RateLimitKey<I, Key = K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock + Clone,
{
    type Response = Response<B>;
    type Error = Error;
    type Future = ResponseFuture<S, LlmRequest<I>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: LlmRequest<I>) -> Self::Future {
        let Some((key, limits)) = self.extract.key(&req) else {
            return ResponseFuture {
                kind: Kind::Calling {
                    fut: self.inner.call(req),
                    granted: Granted::default(),
                },
            };
        };
        let tokens = token_cost(req.body().summary(), self.default_max_output);
        #[cfg(feature = "redis")]
        if let Some((limiter, name)) = &self.shared {
            // One round trip: the readied service waits in the future.
            let check = limiter.check(name(&key), limits, tokens);
            let inner = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, inner);
            return ResponseFuture {
                kind: Kind::Checking {
                    check,
                    call: Some((inner, req)),
                },
            };
        }
        match self.limiters.check(key, limits, tokens) {
            Ok(granted) => ResponseFuture {
                kind: Kind::Calling {
                    fut: self.inner.call(req),
                    granted,
                },
            },
            Err(error) => {
                log_refusal(req.body().model(), &error);
                ResponseFuture {
                    kind: Kind::Refused { error: Some(error) },
                }
            }
        }
    }
}

fn log_refusal(model: &str, error: &Error) {
    tracing::info!(
        model = %model,
        limit = error.metadata().get("limit").and_then(|v| v.as_str()).unwrap_or(""),
        reason = %error.reason(),
        retry_after_ms = error.retry_after().map(|d| d.as_millis() as u64),
        "rate limit refused a request"
    );
}

/// A shared limiter's answer: the windows to report, or the refusal.
#[cfg(feature = "redis")]
pub(crate) type Check = Pin<Box<dyn Future<Output = Result<Granted, Error>> + Send>>;

/// The future of [`RateLimit`].
#[pin_project]
pub struct ResponseFuture<S: Service<R>, R> {
    #[pin]
    kind: Kind<S, R>,
}

#[pin_project(project = KindProj)]
enum Kind<S: Service<R>, R> {
    Refused {
        error: Option<Error>,
    },
    #[cfg(feature = "redis")]
    Checking {
        check: Check,
        call: Option<(S, R)>,
    },
    Calling {
        #[pin]
        fut: S::Future,
        granted: Granted,
    },
}

impl<S, I, B> Future for ResponseFuture<S, LlmRequest<I>>
where
    S: Service<LlmRequest<I>, Response = Response<B>, Error = Error>,
{
    type Output = Result<Response<B>, Error>;

    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        #[cfg(feature = "redis")]
        if let KindProj::Checking { check, call } = self.as_mut().project().kind.project() {
            let checked = ready!(check.as_mut().poll(cx));
            let (mut inner, req) = call.take().expect("polled after completion");
            let granted = match checked {
                Ok(granted) => granted,
                Err(error) => {
                    log_refusal(req.body().model(), &error);
                    return Poll::Ready(Err(error));
                }
            };
            let fut = inner.call(req);
            self.as_mut()
                .project()
                .kind
                .set(Kind::Calling { fut, granted });
        }
        match self.project().kind.project() {
            #[cfg(feature = "redis")]
            KindProj::Checking { .. } => unreachable!("left above"),
            KindProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            KindProj::Calling { fut, granted } => {
                let mut res = ready!(fut.poll(cx))?;
                granted.write(res.headers_mut());
                Poll::Ready(Ok(res))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::normalize::NormalizeErrorsLayer;
    use crate::read_request::{Identified, Parsed, ReadRequestLayer};
    use governor::clock::FakeRelativeClock;
    use http::Request;
    use http::header::RETRY_AFTER;
    use tower::{ServiceExt, service_fn};

    /// The test's own identity: a key id with its limits.
    #[derive(Clone, Debug)]
    struct Key {
        id: &'static str,
        limits: Limits,
    }

    type Svc = RateLimit<
        tower::util::ServiceFn<
            fn(LlmRequest<Key>) -> std::future::Ready<Result<Response<Body>, Error>>,
        >,
        fn(&LlmRequest<Key>) -> Option<(&'static str, Limits)>,
        &'static str,
        FakeRelativeClock,
    >;

    type ByKey = fn(&LlmRequest<Key>) -> Option<(&'static str, Limits)>;
    type TestLayer = RateLimitLayer<ByKey, &'static str, FakeRelativeClock>;

    fn by_key(req: &LlmRequest<Key>) -> Option<(&'static str, Limits)> {
        let k = req.body().identity();
        Some((k.id, k.limits))
    }

    fn ok(_req: LlmRequest<Key>) -> std::future::Ready<Result<Response<Body>, Error>> {
        std::future::ready(Ok(Response::new(Body::empty())))
    }

    fn layer(clock: &FakeRelativeClock) -> TestLayer {
        RateLimitLayer::with_clock(
            by_key as fn(&LlmRequest<Key>) -> Option<(&'static str, Limits)>,
            clock.clone(),
        )
        .default_max_output_tokens(100)
    }

    fn svc(layer: &TestLayer) -> Svc {
        layer.layer(service_fn(
            ok as fn(LlmRequest<Key>) -> std::future::Ready<Result<Response<Body>, Error>>,
        ))
    }

    fn req(key: &Key, body: &str) -> LlmRequest<Key> {
        let parsed = Parsed::parse("/v1/chat/completions", bytes::Bytes::from(body.to_owned()))
            .unwrap()
            .with_identity(key.clone());
        Request::post("/v1/chat/completions").body(parsed).unwrap()
    }

    fn key(id: &'static str, rpm: u32, tpm: u32) -> Key {
        Key {
            id,
            limits: Limits::per_minute(rpm, tpm),
        }
    }

    #[tokio::test]
    async fn requests_per_minute_refuse_with_retry_after_and_headers() {
        let clock = FakeRelativeClock::default();
        let layer = layer(&clock);
        let k = key("k1", 2, 0);
        let body = r#"{"model":"m"}"#;

        let res = svc(&layer).oneshot(req(&k, body)).await.unwrap();
        assert_eq!(res.headers()[LIMIT_REQUESTS], "2");
        assert_eq!(res.headers()[REMAINING_REQUESTS], "1");
        assert_eq!(res.headers()[RESET_REQUESTS], "30s");
        assert!(
            res.headers().get(LIMIT_TOKENS).is_none(),
            "no token limit, no token headers"
        );

        let res = svc(&layer).oneshot(req(&k, body)).await.unwrap();
        assert_eq!(res.headers()[REMAINING_REQUESTS], "0");
        assert_eq!(res.headers()[RESET_REQUESTS], "1m0s");

        clock.advance(Duration::from_secs(10));
        let e = svc(&layer).oneshot(req(&k, body)).await.unwrap_err();
        assert_eq!(e.reason(), Reason::RateLimited);
        assert_eq!(e.status(), 429);
        // 2 per minute: one request back every 30 s; 10 s have passed.
        assert_eq!(e.retry_after(), Some(Duration::from_secs(20)));
        assert_eq!(e.headers()[LIMIT_REQUESTS], "2");
        assert_eq!(e.headers()[REMAINING_REQUESTS], "0");
        assert_eq!(e.headers()[RESET_REQUESTS], "50s");
        assert_eq!(e.metadata()["limit"], "requests");
        assert!(
            e.message().contains("2 requests per minute"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("20s"), "{}", e.message());
        assert!(!e.is_permanent());

        // Another key is not affected.
        assert!(
            svc(&layer)
                .oneshot(req(&key("k2", 2, 0), body))
                .await
                .is_ok()
        );

        clock.advance(Duration::from_secs(20));
        let res = svc(&layer).oneshot(req(&k, body)).await.unwrap();
        assert_eq!(res.headers()[REMAINING_REQUESTS], "0");
    }

    #[tokio::test]
    async fn tokens_per_minute_charge_the_estimate() {
        let clock = FakeRelativeClock::default();
        let layer = layer(&clock);
        let k = key("k1", 0, 1000);
        // 8 prompt bytes → 2 tokens; max_tokens 398 → 400 tokens per request.
        let body = r#"{"model":"m","messages":"123456","max_tokens":398}"#;
        let r = req(&k, body);
        assert_eq!(token_cost(r.body().summary(), 100), 400);

        let res = svc(&layer).oneshot(r).await.unwrap();
        assert_eq!(res.headers()[LIMIT_TOKENS], "1000");
        assert_eq!(res.headers()[REMAINING_TOKENS], "600");
        assert_eq!(res.headers()[RESET_TOKENS], "24s");
        assert!(res.headers().get(LIMIT_REQUESTS).is_none());
        svc(&layer).oneshot(req(&k, body)).await.unwrap();

        // 200 left; 400 asked: 200 more tokens come back in 12 s.
        let e = svc(&layer).oneshot(req(&k, body)).await.unwrap_err();
        assert_eq!(e.status(), 429);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
        assert_eq!(e.metadata()["limit"], "tokens");
        assert_eq!(e.metadata()["requested_tokens"], 400);
        assert_eq!(e.headers()[REMAINING_TOKENS], "200");
        assert_eq!(e.headers()[RESET_TOKENS], "48s");

        // Without max_tokens the configured default (100) is charged, times n.
        let small = r#"{"model":"m","messages":"123456","n":2}"#;
        assert_eq!(token_cost(req(&k, small).body().summary(), 100), 202);
        assert!(svc(&layer).oneshot(req(&k, small)).await.is_err());
        clock.advance(Duration::from_secs(13));
        let res = svc(&layer).oneshot(req(&k, small)).await.unwrap();
        // 200 left + 13 s × 1000/60 back = 416, less 202.
        assert_eq!(res.headers()[REMAINING_TOKENS], "214");
    }

    #[tokio::test]
    async fn a_request_larger_than_the_limit_is_refused_for_good() {
        let clock = FakeRelativeClock::default();
        let layer = layer(&clock);
        let k = key("k1", 10, 1000);
        let e = svc(&layer)
            .oneshot(req(&k, r#"{"model":"m","max_tokens":5000}"#))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 429);
        assert!(e.is_permanent());
        assert_eq!(e.retry_after(), None);
        assert!(e.message().contains("can never pass"), "{}", e.message());
        assert_eq!(e.headers()[LIMIT_TOKENS], "1000");
        // The bucket is untouched: a fitting request still passes whole.
        let res = svc(&layer)
            .oneshot(req(&k, r#"{"model":"m","max_tokens":999}"#))
            .await
            .unwrap();
        assert_eq!(res.headers()[REMAINING_TOKENS], "0");
    }

    #[tokio::test]
    async fn unlimited_and_unkeyed_requests_pass_without_headers() {
        let clock = FakeRelativeClock::default();
        let layer = layer(&clock);
        for _ in 0..100 {
            let res = svc(&layer)
                .oneshot(req(&key("free", 0, 0), r#"{"model":"m"}"#))
                .await
                .unwrap();
            assert!(res.headers().is_empty());
        }
        let none =
            RateLimitLayer::with_clock(|_r: &LlmRequest<Key>| None::<((), Limits)>, clock.clone())
                .layer(service_fn(ok));
        assert!(
            none.oneshot(req(&key("k", 1, 1), r#"{"model":"m"}"#))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn changed_limits_take_effect() {
        let clock = FakeRelativeClock::default();
        let layer = layer(&clock);
        let body = r#"{"model":"m"}"#;
        svc(&layer)
            .oneshot(req(&key("k", 1, 0), body))
            .await
            .unwrap();
        assert!(
            svc(&layer)
                .oneshot(req(&key("k", 1, 0), body))
                .await
                .is_err()
        );
        let res = svc(&layer)
            .oneshot(req(&key("k", 5, 0), body))
            .await
            .unwrap();
        assert_eq!(res.headers()[LIMIT_REQUESTS], "5");
    }

    #[tokio::test]
    async fn idle_keys_are_evicted_and_come_back_whole() {
        let clock = FakeRelativeClock::default();
        let layer = layer(&clock);
        let body = r#"{"model":"m"}"#;
        let ids: Vec<&'static str> = (0..1000)
            .map(|i| &*Box::leak(format!("key-{i}").into_boxed_str()))
            .collect();
        for id in &ids {
            svc(&layer)
                .oneshot(req(&key(id, 1, 0), body))
                .await
                .unwrap();
        }
        assert_eq!(layer.tracked_keys(), 1000);
        clock.advance(Duration::from_secs(30));
        svc(&layer)
            .oneshot(req(&key("busy", 1, 0), body))
            .await
            .unwrap();
        assert_eq!(
            layer.tracked_keys(),
            1001,
            "nothing is idle for a minute yet"
        );
        clock.advance(Duration::from_secs(31));
        // The sweep runs by itself, on a request a minute after the last sweep.
        svc(&layer)
            .oneshot(req(&key("new", 1, 0), body))
            .await
            .unwrap();
        assert_eq!(layer.tracked_keys(), 2, "{layer:?}");
        // A forgotten key starts whole, as its bucket would be anyway...
        let res = svc(&layer)
            .oneshot(req(&key(ids[0], 1, 0), body))
            .await
            .unwrap();
        assert_eq!(res.headers()[REMAINING_REQUESTS], "0");
        // ...and a key seen within the minute was kept, with its count.
        assert!(
            svc(&layer)
                .oneshot(req(&key("busy", 1, 0), body))
                .await
                .is_err()
        );
        clock.advance(Duration::from_secs(59));
        layer.evict_idle();
        assert_eq!(layer.tracked_keys(), 3);
        clock.advance(Duration::from_secs(1));
        layer.evict_idle();
        assert_eq!(layer.tracked_keys(), 0);
    }

    #[tokio::test]
    async fn refusals_render_429_with_headers_through_the_stack() {
        let clock = FakeRelativeClock::default();
        let svc = tower::ServiceBuilder::new()
            .layer(NormalizeErrorsLayer::new())
            .layer(ReadRequestLayer::new(1024))
            .layer(layer(&clock))
            .service(service_fn(ok));
        let k = key("k", 1, 0);
        let call = || {
            let req = Request::post("/v1/chat/completions")
                .body(Identified {
                    identity: k.clone(),
                    body: Body::full(r#"{"model":"m"}"#),
                })
                .unwrap();
            svc.clone().oneshot(req)
        };
        assert_eq!(call().await.unwrap().status(), 200);
        let res = call().await.unwrap();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[RETRY_AFTER], "60");
        assert_eq!(res.headers()[LIMIT_REQUESTS], "1");
        assert_eq!(res.headers()[REMAINING_REQUESTS], "0");
        assert_eq!(res.headers()[RESET_REQUESTS], "1m0s");
        use http_body_util::BodyExt;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["metadata"]["reason"], "rate_limited");
        assert_eq!(v["error"]["metadata"]["retry_after_s"], 60);
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn durations_in_openai_format() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_micros(1)), "1ms");
        assert_eq!(openai_duration(Duration::ZERO), "0ms");
        assert_eq!(openai_duration(Duration::from_secs(6)), "6s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(openai_duration(Duration::from_millis(61_250)), "1m1.25s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(openai_duration(Duration::from_secs(3600)), "1h0m0s");
        // Leading zeros of the fraction are kept.
        assert_eq!(openai_duration(Duration::from_millis(1050)), "1.05s");
        assert_eq!(openai_duration(Duration::from_millis(2007)), "2.007s");
    }

    #[test]
    fn granted_headers_are_slices_of_one_buffer_with_the_right_values() {
        let granted = Granted {
            requests: Some(Window {
                limit: 600,
                remaining: 599,
                reset: Duration::from_millis(100),
            }),
            tokens: Some(Window {
                limit: 90_000,
                remaining: 88_976,
                reset: Duration::from_millis(61_250),
            }),
        };
        let h = granted.headers();
        assert_eq!(h.len(), 6);
        assert_eq!(h[LIMIT_REQUESTS], "600");
        assert_eq!(h[REMAINING_REQUESTS], "599");
        assert_eq!(h[RESET_REQUESTS], "100ms");
        assert_eq!(h[LIMIT_TOKENS], "90000");
        assert_eq!(h[REMAINING_TOKENS], "88976");
        assert_eq!(h[RESET_TOKENS], "1m1.25s");
        let only_tokens = Granted {
            requests: None,
            ..granted
        };
        let h = only_tokens.headers();
        assert_eq!(h.len(), 3);
        assert_eq!(h[REMAINING_TOKENS], "88976");
        assert!(Granted::default().headers().is_empty());
    }
}
