//! The one error type of the stack, and the wire contract it renders to.
//!
//! Every layer and the provider fail with [`Error`]: a [`Reason`] (a stable,
//! machine-readable word that also fixes the HTTP status and the OpenAI SDK
//! `type`), a human message, and metadata — `retry_after`, the provider's name,
//! the upstream's status, whether the failure is permanent, and a bounded,
//! sanitized copy of the upstream's raw body. Retry, cooldown and fallback
//! decide on these typed fields, never by matching strings.
//!
//! [`Error::to_response`] renders the contract every client sees:
//!
//! ```json
//! {"error": {"code": 429, "message": "…", "type": "rate_limit_error",
//!            "metadata": {"reason": "upstream_rate_limited", "retry_after_s": 6,
//!                         "provider_name": "openai", "raw": {"…": "…"}}}}
//! ```
//!
//! with the HTTP status equal to `code` and a `Retry-After` header wherever
//! waiting helps. [`Error::from_upstream`] is the one place an upstream's
//! non-2xx answer is classified (a 429 stays a 429 with its `Retry-After`; an
//! upstream 401/403 is *our* credential's problem and becomes 502
//! `upstream_auth_failed`; only a body that says the model is unknown or
//! retired is a permanent 404 `upstream_model_not_found`, any other 404, 405
//! or 501 is 502 `upstream_route_not_served`; the body shapes are one table,
//! [`crate::router::classify`]). What the router does for each outcome
//! (retry elsewhere, cool down) is the table in [`crate::router::outcome`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use serde_json::{Map, Value};

use crate::body::Body;
use crate::family::Family;
use crate::router::classify;
use crate::sanitize::{self, Secrets};

/// How much of an upstream's error body is kept (before sanitizing).
pub const RAW_LIMIT: usize = 4 * 1024;
/// How long an upstream-provided error message may be in our `message`.
const MESSAGE_LIMIT: usize = 400;

/// The phase of an upstream call that ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeoutPhase {
    /// Opening the TCP (and TLS) connection.
    Connect,
    /// Waiting for the response headers after the request was sent.
    FirstByte,
    /// Waiting for the next chunk of a response body.
    Idle,
    /// The whole exchange, body included.
    Total,
    /// The upstream itself answered 408.
    Upstream,
}

impl TimeoutPhase {
    /// The stable word used in `metadata.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
            TimeoutPhase::Upstream => "upstream",
        }
    }
}

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = ($word:literal, $status:literal),)*) => {
        /// Why a request failed: a stable word (`metadata.reason`) and its default status.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable machine-readable word.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => $word,)* }
            }

            /// The HTTP status this reason is answered with, unless the error says otherwise.
            pub fn status(self) -> StatusCode {
                match self {
                    $(Reason::$variant => match StatusCode::from_u16($status) {
                        Ok(status) => status,
                        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    },)*
                }
            }
        }
    };
}

reasons! {
    /// The request is malformed in a way no more specific reason names.
    InvalidRequest = ("invalid_request", 400),
    /// The body is not valid JSON.
    InvalidJson = ("invalid_json", 400),
    /// The body has no `model`.
    MissingModel = ("missing_model", 400),
    /// The body is larger than the configured limit.
    BodyTooLarge = ("body_too_large", 413),
    /// The body is not `application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415),
    /// The method is not allowed on this route.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// No such route.
    NotFound = ("not_found", 404),
    /// The upstream rejected the request as the client's fault (400, 409, 422, …).
    UpstreamRejected = ("upstream_rejected_request", 400),
    /// The prompt does not fit the model's context window.
    ContextLengthExceeded = ("context_length_exceeded", 400),
    /// The upstream's content filter refused the request (the upstream's
    /// 400, 403 or 422 is kept; see [`crate::router::classify::CONTENT_FILTERED`]).
    UpstreamContentFiltered = ("upstream_content_filtered", 400),
    /// No API key was presented.
    MissingKey = ("missing_key", 401),
    /// The presented key is not in the `tg-<id>-<secret>` form.
    MalformedKey = ("malformed_key", 401),
    /// The presented key is not known.
    UnknownKey = ("unknown_key", 401),
    /// The presented key has expired.
    KeyExpired = ("key_expired", 401),
    /// The presented key was revoked or disabled.
    KeyRevoked = ("key_revoked", 401),
    /// The application's own authentication refused the caller (a check
    /// given to [`crate::identify::Identify`]); says nothing of keys.
    Unauthenticated = ("unauthenticated", 401),
    /// A budget would be exceeded.
    BudgetExceeded = ("budget_exceeded", 402),
    /// The caller may not use this model.
    ModelNotAllowed = ("model_not_allowed", 403),
    /// The end user (customer) the request names is blocked.
    EndUserBlocked = ("end_user_blocked", 403),
    /// The gateway knows no model (group) of this name.
    ModelNotFound = ("model_not_found", 404),
    /// The upstream says the model does not exist or was retired (permanent).
    UpstreamModelNotFound = ("upstream_model_not_found", 404),
    /// The gateway's own deadline for the request passed.
    Timeout = ("timeout", 408),
    /// An upstream call ran out of time (see `metadata.phase`).
    UpstreamTimeout = ("upstream_timeout", 408),
    /// The gateway's own rate limit refused the request.
    RateLimited = ("rate_limited", 429),
    /// The upstream rate-limited the request.
    UpstreamRateLimited = ("upstream_rate_limited", 429),
    /// The tenant's queue is full.
    QueueFull = ("queue_full", 429),
    /// The gateway failed in a way it did not expect.
    Internal = ("internal_error", 500),
    /// The upstream answered with a server error.
    UpstreamError = ("upstream_error", 502),
    /// The upstream refused the gateway's own credential (401/403 upstream).
    UpstreamAuthFailed = ("upstream_auth_failed", 502),
    /// The upstream does not serve the path the gateway called (a 404 that
    /// does not name a model, a 405, a 501): a configuration problem of that
    /// deployment for that route (`metadata.upstream_path`, `metadata.deployment`).
    UpstreamRouteNotServed = ("upstream_route_not_served", 502),
    /// The upstream could not be reached (connection refused, DNS, TLS).
    UpstreamUnreachable = ("upstream_unreachable", 502),
    /// The upstream sent something that is not a valid answer.
    UpstreamBadResponse = ("upstream_bad_response", 502),
    /// The upstream cut a response in the middle.
    UpstreamStreamCut = ("upstream_stream_cut", 502),
    /// The upstream says it is temporarily unavailable (503).
    UpstreamUnavailable = ("upstream_unavailable", 503),
    /// Every deployment of the model group is cooling down or failed.
    NoAvailableDeployment = ("no_available_deployment", 503),
    /// The request waited in the fair queue for too long.
    QueueTimeout = ("queue_timeout", 503),
    /// Shared state (budget counters, …) could not be reached.
    StateUnavailable = ("state_unavailable", 503),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Anthropic's error type (`error.type`) for a status: the types the
/// Anthropic API documents, so its SDK's and its clients' handling applies.
pub fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The OpenAI SDK error family (`error.type`) for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        404 => "not_found_error",
        408 => "timeout_error",
        429 => "rate_limit_error",
        503 => "service_unavailable_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// A failure anywhere in the stack, typed. Cheap to move (one box).
#[derive(Clone)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    reason: Reason,
    status: StatusCode,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
    provider: Option<Arc<str>>,
    upstream_status: Option<StatusCode>,
    phase: Option<TimeoutPhase>,
    permanent: bool,
    /// `retry_after` is the upstream's own `Retry-After`, not a default.
    upstream_retry_after: bool,
    raw: Option<Value>,
    metadata: Map<String, Value>,
    headers: HeaderMap,
}

impl Error {
    /// An error with `reason`'s status and the given message.
    pub fn new(reason: Reason, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Box::new(Inner {
                reason,
                status: reason.status(),
                message: message.into(),
                retry_after: None,
                provider: None,
                upstream_status: None,
                phase: None,
                permanent: false,
                upstream_retry_after: false,
                raw: None,
                metadata: Map::new(),
                headers: HeaderMap::new(),
            }),
        }
    }

    /// An upstream timeout in the given phase.
    pub fn timeout(phase: TimeoutPhase, after: Duration) -> Self {
        let what = match phase {
            TimeoutPhase::Connect => "connecting to the upstream",
            TimeoutPhase::FirstByte => "waiting for the upstream's first byte",
            TimeoutPhase::Idle => "waiting for the upstream's next chunk",
            TimeoutPhase::Total => "for the whole upstream exchange",
            TimeoutPhase::Upstream => "at the upstream",
        };
        let mut e = Error::new(
            Reason::UpstreamTimeout,
            format!("Timed out {what} (limit {} ms).", after.as_millis()),
        );
        e.inner.phase = Some(phase);
        e
    }

    /// Overrides the HTTP status (and `code`).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.inner.status = status;
        self
    }

    /// How long the client should wait before trying again.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.inner.retry_after = Some(after);
        self
    }

    /// The provider (deployment) this failure came from.
    pub fn with_provider(mut self, name: Arc<str>) -> Self {
        self.inner.provider = Some(name);
        self
    }

    /// Marks the failure as permanent (retrying the same thing will not help).
    pub fn permanent(mut self) -> Self {
        self.inner.permanent = true;
        self
    }

    /// Replaces the message (a layer that knows more than where the error
    /// was made: the router names the deployment).
    pub(crate) fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.inner.message = message.into();
        self
    }

    /// Adds a metadata field (`metadata.<key>`). Never put secrets here.
    pub fn with_meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.inner.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a response header to the rendered error (e.g. `x-ratelimit-*`).
    /// `Content-Type` and `Retry-After` are the contract's own and win over it.
    /// Never put secrets here.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.headers.insert(name, value);
        self
    }

    /// The extra response headers set with [`Error::with_header`].
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The reason.
    pub fn reason(&self) -> Reason {
        self.inner.reason
    }

    /// The HTTP status the client sees.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// How long to wait before trying again, if waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether [`retry_after`](Self::retry_after) is the upstream's own
    /// `Retry-After` (or `retry-after-ms`, or for a 429 its
    /// `x-ratelimit-reset-*`), rather than a default.
    pub fn upstream_asked_to_wait(&self) -> bool {
        self.inner.upstream_retry_after
    }

    /// Names the upstream path that is not served (for
    /// [`Reason::UpstreamRouteNotServed`]): `metadata.upstream_path`, and the
    /// message says it. Only the path: never a query string (some providers
    /// take their key there).
    pub fn not_served_at(mut self, method: &str, path: &str) -> Self {
        let provider = self.inner.provider.as_deref().unwrap_or("upstream");
        let status = self.inner.upstream_status.map_or(0, |s| s.as_u16());
        self.inner.message = Cow::Owned(format!(
            "Upstream '{provider}' does not serve {method} {path} (HTTP {status}); this is a gateway configuration problem for this deployment, and other deployments are tried."
        ));
        self.with_meta("upstream_path", path)
    }

    /// The provider this failure came from.
    pub fn provider(&self) -> Option<&str> {
        self.inner.provider.as_deref()
    }

    /// The status the upstream answered with, for upstream failures.
    pub fn upstream_status(&self) -> Option<StatusCode> {
        self.inner.upstream_status
    }

    /// The timeout phase, for timeouts.
    pub fn phase(&self) -> Option<TimeoutPhase> {
        self.inner.phase
    }

    /// Whether retrying the same thing cannot help.
    pub fn is_permanent(&self) -> bool {
        self.inner.permanent
    }

    /// The sanitized raw upstream body, if any.
    pub fn raw(&self) -> Option<&Value> {
        self.inner.raw.as_ref()
    }

    /// Extra metadata fields.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.inner.metadata
    }

    /// Classifies an upstream's non-2xx answer. `body` is at most [`RAW_LIMIT`]
    /// bytes of it (more is ignored); `secrets` are redacted from everything kept.
    pub fn from_upstream(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        provider: Arc<str>,
        secrets: &Secrets<'_>,
    ) -> Self {
        let parsed = ParsedBody::new(headers, body, secrets);
        let upstream_code = parsed.code();
        let raw = parsed.raw.as_ref();
        let (reason, permanent) = match status.as_u16() {
            _ if classify::model_gone(status, raw) => (Reason::UpstreamModelNotFound, true),
            _ if classify::content_filtered(status, raw) => {
                (Reason::UpstreamContentFiltered, false)
            }
            401 | 403 => (Reason::UpstreamAuthFailed, false),
            404 | 405 | 410 | 501 => (Reason::UpstreamRouteNotServed, false),
            408 => (Reason::UpstreamTimeout, false),
            413 => (Reason::BodyTooLarge, false),
            429 => (Reason::UpstreamRateLimited, false),
            // 529: Anthropic's `overloaded_error`, as temporary as a 503.
            503 | 529 => (Reason::UpstreamUnavailable, false),
            // Bedrock's ModelErrorException: the model failed, not the request.
            424 => (Reason::UpstreamError, false),
            400 if upstream_code.as_deref() == Some("context_length_exceeded") => {
                (Reason::ContextLengthExceeded, false)
            }
            400..=499 => (Reason::UpstreamRejected, false),
            _ => (Reason::UpstreamError, false),
        };
        let what = match reason {
            Reason::UpstreamAuthFailed => {
                "rejected the gateway's credential for it; this is a gateway configuration problem, not your key"
            }
            Reason::UpstreamModelNotFound => "says this model does not exist or was retired",
            Reason::UpstreamRouteNotServed => {
                "does not serve this route; this is a gateway configuration problem for this deployment"
            }
            Reason::UpstreamContentFiltered => "refused the request by its content filter",
            Reason::UpstreamTimeout => "timed out",
            Reason::BodyTooLarge => "says the request is too large",
            Reason::UpstreamRateLimited => "rate-limited the request",
            Reason::UpstreamUnavailable => "is temporarily unavailable",
            Reason::ContextLengthExceeded => "says the prompt exceeds the model's context window",
            Reason::UpstreamRejected => "rejected the request",
            _ => "failed",
        };
        let mut message = format!("Upstream '{provider}' {what} (HTTP {}).", status.as_u16());
        if let Some(detail) = parsed.message() {
            message.push(' ');
            message.push_str(&detail);
        }
        let client_status = match reason {
            Reason::UpstreamRejected | Reason::UpstreamContentFiltered => status,
            _ => reason.status(),
        };
        let mut e = Error::new(reason, message)
            .with_status(client_status)
            .with_provider(provider);
        e.inner.upstream_status = Some(status);
        e.inner.permanent = permanent;
        e.inner.raw = parsed.raw;
        if reason == Reason::UpstreamTimeout {
            e.inner.phase = Some(TimeoutPhase::Upstream);
        }
        let asked = retry_after(headers)
            .or_else(|| {
                (status == StatusCode::TOO_MANY_REQUESTS)
                    .then(|| ratelimit_reset(headers))
                    .flatten()
            })
            .or_else(|| {
                (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                    .then(|| e.inner.raw.as_ref().and_then(classify::retry_delay))
                    .flatten()
            });
        e.inner.upstream_retry_after = asked.is_some();
        e.inner.retry_after = asked.or(match reason {
            Reason::UpstreamRateLimited | Reason::UpstreamUnavailable => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        });
        e
    }

    /// Normalizes a non-2xx answer that did not come from a provider (an inner
    /// service's own 404, a plain-text 500, …): its status is kept, its body is
    /// kept as sanitized `raw`, and a message is taken from it where one exists.
    pub fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        secrets: &Secrets<'_>,
    ) -> Self {
        let parsed = ParsedBody::new(headers, body, secrets);
        let reason = match status.as_u16() {
            400 => Reason::InvalidRequest,
            401 => Reason::MissingKey,
            402 => Reason::BudgetExceeded,
            403 => Reason::ModelNotAllowed,
            404 => Reason::NotFound,
            405 => Reason::MethodNotAllowed,
            408 => Reason::Timeout,
            413 => Reason::BodyTooLarge,
            415 => Reason::UnsupportedMediaType,
            429 => Reason::RateLimited,
            503 => Reason::NoAvailableDeployment,
            _ if status.is_client_error() => Reason::InvalidRequest,
            _ => Reason::Internal,
        };
        let message = parsed.message().map(Cow::Owned).unwrap_or_else(|| {
            Cow::Owned(
                status
                    .canonical_reason()
                    .map(|r| format!("{r}."))
                    .unwrap_or_else(|| format!("HTTP {}.", status.as_u16())),
            )
        });
        let mut e = Error::new(reason, message).with_status(status);
        e.inner.raw = parsed.raw;
        e.inner.retry_after = retry_after(headers);
        e
    }

    /// The contract's JSON body, with `secrets` (and anything that looks like
    /// a credential) redacted from every string in it.
    pub fn to_json(&self, secrets: &Secrets<'_>) -> Bytes {
        let (message, meta) = self.message_and_metadata(secrets);
        let body = serde_json::json!({
            "error": {
                "code": self.inner.status.as_u16(),
                "message": message,
                "type": error_type(self.inner.status),
                "metadata": meta,
            }
        });
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// The error's JSON body in `family`'s shape (see [`crate::family`]):
    /// OpenAI's contract, or Anthropic's `{"type": "error", "error": {"type",
    /// "message", "metadata"}}`. The one place a family's error body is written.
    pub fn to_json_in(&self, family: Family, secrets: &Secrets<'_>) -> Bytes {
        match family {
            Family::OpenAi | Family::OpenAiResponses => self.to_json(secrets),
            Family::Anthropic => {
                let (message, meta) = self.message_and_metadata(secrets);
                let body = serde_json::json!({
                    "type": "error",
                    "error": {
                        "type": anthropic_error_type(self.inner.status),
                        "message": message,
                        "metadata": meta,
                    }
                });
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
            }
        }
    }

    /// The redacted message and `metadata` object every family's body carries.
    fn message_and_metadata(&self, secrets: &Secrets<'_>) -> (String, Value) {
        let i = &self.inner;
        let mut meta = Map::new();
        meta.insert("reason".into(), i.reason.as_str().into());
        if let Some(after) = i.retry_after {
            meta.insert("retry_after_s".into(), ceil_secs(after).into());
        }
        if let Some(p) = &i.provider {
            meta.insert("provider_name".into(), Value::String(p.to_string()));
        }
        if let Some(s) = i.upstream_status {
            meta.insert("upstream_status".into(), s.as_u16().into());
        }
        if let Some(phase) = i.phase {
            meta.insert("phase".into(), phase.as_str().into());
        }
        if i.permanent {
            meta.insert("permanent".into(), true.into());
        }
        for (k, v) in &i.metadata {
            meta.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let Some(raw) = &i.raw {
            meta.insert("raw".into(), raw.clone());
        }
        let mut meta = Value::Object(meta);
        sanitize::redact_json(&mut meta, secrets);
        let message = sanitize::redact(&i.message, secrets).into_owned();
        (message, meta)
    }

    /// The contract's response: status = `code`, JSON body, `Retry-After`
    /// where waiting helps. The response carries a [`Normalized`] extension.
    pub fn to_response(&self, secrets: &Secrets<'_>) -> Response<Body> {
        let mut res = Response::new(Body::full(self.to_json(secrets)));
        self.decorate(&mut res);
        res
    }

    /// Sets the status, headers and [`Normalized`] marker of an error response.
    pub(crate) fn decorate<B>(&self, res: &mut Response<B>) {
        *res.status_mut() = self.inner.status;
        let h = res.headers_mut();
        for (name, value) in &self.inner.headers {
            h.insert(name, value.clone());
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(after) = self.inner.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(ceil_secs(after)));
        }
        res.extensions_mut().insert(Normalized);
    }

    /// The SSE events that end a stream of `family` that failed after it
    /// started (see [`crate::family`]): OpenAI's [`to_sse_tail`](Self::to_sse_tail);
    /// the Responses API's `error` event and `response.failed`; Anthropic's
    /// `event: error`.
    pub fn to_sse_tail_in(&self, family: Family, model: &str, secrets: &Secrets<'_>) -> Bytes {
        match family {
            Family::OpenAi => self.to_sse_tail(model, secrets),
            Family::Anthropic => {
                let mut out = Vec::with_capacity(512);
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&self.to_json_in(family, secrets));
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
            Family::OpenAiResponses => {
                let (message, meta) = self.message_and_metadata(secrets);
                let code = match self.inner.status.as_u16() {
                    429 => "rate_limit_exceeded",
                    _ => "server_error",
                };
                let error = serde_json::json!({
                    "type": "error",
                    "code": code,
                    "message": message,
                    "param": null,
                    "metadata": meta,
                });
                let failed = serde_json::json!({
                    "type": "response.failed",
                    "response": {
                        "id": "resp_tollgate_error",
                        "object": "response",
                        "status": "failed",
                        "model": model,
                        "output": [],
                        "error": {"code": code, "message": message},
                    }
                });
                let mut out = Vec::with_capacity(768);
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&serde_json::to_vec(&error).unwrap_or_default());
                out.extend_from_slice(b"\n\nevent: response.failed\ndata: ");
                out.extend_from_slice(&serde_json::to_vec(&failed).unwrap_or_default());
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            }
        }
    }

    /// The SSE events that end a stream that failed after it started: the
    /// error event, a chunk with `finish_reason: "error"`, and `[DONE]`.
    pub fn to_sse_tail(&self, model: &str, secrets: &Secrets<'_>) -> Bytes {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let chunk = serde_json::json!({
            "id": "chatcmpl-tollgate-error",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        });
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&self.to_json(secrets));
        out.extend_from_slice(b"\n\ndata: ");
        out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        Bytes::from(out)
    }
}

/// Marks a response that already has the contract's shape, so
/// [`NormalizeErrors`](crate::normalize::NormalizeErrors) passes it through.
#[derive(Clone, Copy, Debug)]
pub struct Normalized;

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s.saturating_add(1)
    } else {
        s
    }
}

/// `Retry-After` (seconds or an HTTP date), or the `retry-after-ms` some
/// OpenAI-like providers send.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_millis(ms as u64));
    }
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        // Beyond what a `Duration` holds (1e20): the longest wait, as
        // an integer that large would be, not a panic.
        return Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(u64::MAX)));
    }
    let when = httpdate_to_unix(v)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(when.saturating_sub(now)))
}

/// The wait a 429 without `Retry-After` implies by OpenAI's and Azure
/// OpenAI's rate-limit headers: `x-ratelimit-reset-requests` and
/// `x-ratelimit-reset-tokens` (a Go duration, `1s`, `6m0s`, `20ms`, or plain
/// seconds). The reset of each limit that is used up
/// (`x-ratelimit-remaining-*` is `0`), or of every limit when none says so;
/// the longest of those.
pub fn ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    let read = |kind: &str| {
        let reset = headers
            .get(format!("x-ratelimit-reset-{kind}"))
            .and_then(|v| v.to_str().ok())
            .and_then(go_duration)?;
        let spent = headers
            .get(format!("x-ratelimit-remaining-{kind}"))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim() == "0");
        Some((reset, spent))
    };
    let both = [read("requests"), read("tokens")];
    let any_spent = both.iter().flatten().any(|(_, s)| *s == Some(true));
    both.into_iter()
        .flatten()
        .filter(|(_, spent)| !any_spent || *spent == Some(true))
        .map(|(d, _)| d)
        .max()
}

/// A Go duration (`1h2m3.5s`, `6m0s`, `20ms`, `1.5s`) or plain seconds, capped at a day.
fn go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let (mut total, mut rest) = (0f64, s);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += n * match &rest[..unit] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit..];
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(86_400.0)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
fn httpdate_to_unix(s: &str) -> Option<u64> {
    let mut it = s.split_ascii_whitespace();
    let _weekday = it.next()?;
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if it.next()? != "GMT" {
        return None;
    }
    // The fields' own ranges (a four-digit year), so the arithmetic below
    // cannot overflow whatever numbers the header holds.
    if !(1..=31).contains(&day) || !(0..=9999).contains(&year) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400)
        .ok()
        .map(|d| d + h * 3600 + m * 60 + sec)
}

/// An error body, looked at once: its sanitized `raw` and where its message is.
struct ParsedBody {
    raw: Option<Value>,
}

impl ParsedBody {
    fn new(headers: &HeaderMap, body: &[u8], secrets: &Secrets<'_>) -> Self {
        let body = &body[..body.len().min(RAW_LIMIT)];
        if body.iter().all(u8::is_ascii_whitespace) {
            return ParsedBody { raw: None };
        }
        let mut raw = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v,
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let is_html = headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| ct.contains("html"))
                    || text.trim_start().starts_with('<');
                let text = if is_html {
                    strip_tags(&text)
                } else {
                    text.into_owned()
                };
                Value::String(text.trim().to_owned())
            }
        };
        sanitize::redact_json(&mut raw, secrets);
        ParsedBody { raw: Some(raw) }
    }

    /// The upstream's own message: `error.message`, `message`, `detail`, `error` (string), or text.
    fn message(&self) -> Option<String> {
        let raw = self.raw.as_ref()?;
        let found = match raw {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o
                .get("error")
                .and_then(|e| match e {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(e) => e.get("message").and_then(Value::as_str),
                    _ => None,
                })
                .or_else(|| o.get("message").and_then(Value::as_str))
                .or_else(|| o.get("detail").and_then(Value::as_str)),
            _ => None,
        }?;
        let found = found.trim();
        if found.is_empty() {
            return None;
        }
        Some(truncate(found, MESSAGE_LIMIT))
    }

    /// The upstream's `error.code` or `code`, as a string.
    fn code(&self) -> Option<String> {
        let o = self.raw.as_ref()?.as_object()?;
        let code = o
            .get("error")
            .and_then(Value::as_object)
            .and_then(|e| e.get("code"))
            .or_else(|| o.get("code"))?;
        match code {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_owned();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Keeps the text of an HTML page, dropping tags, so `raw` stays readable.
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                if !out.ends_with(' ') && !out.is_empty() {
                    out.push(' ');
                }
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("reason", &i.reason.as_str())
            .field("status", &i.status.as_u16())
            .field("message", &sanitize::redact(&i.message, &Secrets::none()));
        if let Some(p) = &i.provider {
            d.field("provider", p);
        }
        if let Some(s) = i.upstream_status {
            d.field("upstream_status", &s.as_u16());
        }
        if let Some(p) = i.phase {
            d.field("phase", &p.as_str());
        }
        if let Some(r) = i.retry_after {
            d.field("retry_after", &r);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.inner.reason,
            self.inner.status.as_u16(),
            sanitize::redact(&self.inner.message, &Secrets::none())
        )
    }
}

impl std::error::Error for Error {}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Turns any boxed error from a stack into an [`Error`]: our own pass through,
/// tower's `Elapsed` becomes 408 `timeout`, anything else a 500 whose text is
/// logged (redacted), not sent.
pub fn from_boxed(err: tower::BoxError) -> Error {
    match err.downcast::<Error>() {
        Ok(e) => *e,
        Err(err) => {
            if err.is::<tower::timeout::error::Elapsed>() {
                return Error::new(
                    Reason::Timeout,
                    "The gateway's deadline for this request passed.",
                );
            }
            tracing::error!(error = %sanitize::redact(&err.to_string(), &Secrets::none()), "unexpected error in the stack");
            Error::new(
                Reason::Internal,
                "The gateway failed unexpectedly; the failure was logged.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &Error) -> Value {
        serde_json::from_slice(&e.to_json(&Secrets::none())).unwrap()
    }

    fn upstream(status: u16, headers: &[(&'static str, &str)], body: &str) -> Error {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        Error::from_upstream(
            StatusCode::from_u16(status).unwrap(),
            &h,
            body.as_bytes(),
            "openai".into(),
            &Secrets::none(),
        )
    }

    #[test]
    fn every_reason_renders_the_contract() {
        let all = [
            Reason::InvalidRequest,
            Reason::InvalidJson,
            Reason::MissingModel,
            Reason::BodyTooLarge,
            Reason::UnsupportedMediaType,
            Reason::MethodNotAllowed,
            Reason::NotFound,
            Reason::UpstreamRejected,
            Reason::ContextLengthExceeded,
            Reason::UpstreamContentFiltered,
            Reason::MissingKey,
            Reason::MalformedKey,
            Reason::UnknownKey,
            Reason::KeyExpired,
            Reason::KeyRevoked,
            Reason::Unauthenticated,
            Reason::BudgetExceeded,
            Reason::ModelNotAllowed,
            Reason::EndUserBlocked,
            Reason::ModelNotFound,
            Reason::UpstreamModelNotFound,
            Reason::Timeout,
            Reason::UpstreamTimeout,
            Reason::RateLimited,
            Reason::UpstreamRateLimited,
            Reason::QueueFull,
            Reason::Internal,
            Reason::UpstreamError,
            Reason::UpstreamAuthFailed,
            Reason::UpstreamRouteNotServed,
            Reason::UpstreamUnreachable,
            Reason::UpstreamBadResponse,
            Reason::UpstreamStreamCut,
            Reason::UpstreamUnavailable,
            Reason::NoAvailableDeployment,
            Reason::QueueTimeout,
            Reason::StateUnavailable,
        ];
        let expected_status = [
            400, 400, 400, 413, 415, 405, 404, 400, 400, 400, 401, 401, 401, 401, 401, 401, 402,
            403, 403, 404, 404, 408, 408, 429, 429, 429, 500, 502, 502, 502, 502, 502, 502, 503,
            503, 503, 503,
        ];
        for (reason, status) in all.iter().zip(expected_status) {
            let e = Error::new(*reason, "m");
            let res = e.to_response(&Secrets::none());
            assert_eq!(res.status().as_u16(), status, "{reason}");
            let v = json(&e);
            assert_eq!(v["error"]["code"], status, "{reason}");
            assert_eq!(v["error"]["message"], "m");
            assert_eq!(v["error"]["type"], error_type(res.status()));
            assert_eq!(v["error"]["metadata"]["reason"], reason.as_str());
            assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
            assert!(res.extensions().get::<Normalized>().is_some());
        }
    }

    #[test]
    fn types_are_the_openai_families() {
        assert_eq!(error_type(StatusCode::BAD_REQUEST), "invalid_request_error");
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(error_type(StatusCode::FORBIDDEN), "permission_error");
        assert_eq!(error_type(StatusCode::NOT_FOUND), "not_found_error");
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "rate_limit_error"
        );
        assert_eq!(
            error_type(StatusCode::PAYLOAD_TOO_LARGE),
            "invalid_request_error"
        );
        assert_eq!(error_type(StatusCode::BAD_GATEWAY), "api_error");
        assert_eq!(error_type(StatusCode::INTERNAL_SERVER_ERROR), "api_error");
    }

    #[test]
    fn upstream_429_stays_429_with_retry_after() {
        let e = upstream(
            429,
            &[("retry-after", "6")],
            r#"{"error":{"message":"Rate limit exceeded. Retry in 6s.","type":"rate_limit","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(e.reason(), Reason::UpstreamRateLimited);
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(6)));
        let res = e.to_response(&Secrets::none());
        assert_eq!(res.headers()[RETRY_AFTER], "6");
        let v = json(&e);
        assert_eq!(v["error"]["metadata"]["retry_after_s"], 6);
        assert_eq!(v["error"]["metadata"]["provider_name"], "openai");
        assert_eq!(v["error"]["metadata"]["upstream_status"], 429);
        assert_eq!(
            v["error"]["metadata"]["raw"]["error"]["code"],
            "rate_limit_exceeded"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Rate limit exceeded. Retry in 6s.")
        );
    }

    #[test]
    fn upstream_429_with_odd_body_and_retry_after_ms() {
        let e = upstream(
            429,
            &[("retry-after-ms", "2500")],
            r#"{"detail":"Too Many Requests","status":429}"#,
        );
        assert_eq!(e.reason(), Reason::UpstreamRateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(2500)));
        assert_eq!(json(&e)["error"]["metadata"]["retry_after_s"], 3);
        assert!(e.message().contains("Too Many Requests"));
    }

    #[test]
    fn upstream_429_without_header_still_says_wait() {
        let e = upstream(429, &[], "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert!(e.raw().is_none());
    }

    #[test]
    fn ratelimit_reset_headers_say_how_long_a_429_waits() {
        let e = upstream(
            429,
            &[
                ("x-ratelimit-reset-requests", "6m0s"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-tokens", "20ms"),
                ("x-ratelimit-remaining-tokens", "5000"),
            ],
            "{}",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(360)));
        assert!(e.upstream_asked_to_wait());
        // No remaining counts: the longer reset; plain seconds and fractions.
        let e = upstream(
            429,
            &[
                ("x-ratelimit-reset-requests", "1.5s"),
                ("x-ratelimit-reset-tokens", "7"),
            ],
            "{}",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        // `retry-after-ms` wins; garbage is ignored (the default applies).
        let e = upstream(
            429,
            &[
                ("retry-after-ms", "1500"),
                ("x-ratelimit-reset-tokens", "9s"),
            ],
            "{}",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        let e = upstream(429, &[("x-ratelimit-reset-tokens", "soon")], "{}");
        assert!(!e.upstream_asked_to_wait());
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(go_duration("5x"), None);
        assert_eq!(go_duration("s"), None);
    }

    #[test]
    fn retry_after_http_date() {
        let mut h = HeaderMap::new();
        h.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(httpdate_to_unix("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(httpdate_to_unix("garbage"), None);
    }

    /// Found by fuzzing (fuzz target `error_body`): a `Retry-After` in
    /// seconds too large for a `Duration` (`1e20`) panicked in
    /// `Duration::from_secs_f64` while classifying the upstream's answer.
    #[test]
    fn a_retry_after_beyond_a_duration_is_the_longest_wait_not_a_panic() {
        let e = upstream(429, &[("retry-after", "1e20")], "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(json(&e)["error"]["metadata"]["retry_after_s"], u64::MAX);
        let e = upstream(503, &[("retry-after", "18446744073709551615.5")], "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(u64::MAX)));
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
    }

    /// Out-of-range date fields overflowed the date arithmetic (a panic
    /// where overflow is checked, a wrong wait where it is not): they are
    /// not a date.
    #[test]
    fn retry_after_dates_out_of_range_are_not_dates() {
        for bad in [
            "Sun, 06 Nov 1994 99999999999999999:00:00 GMT",
            "Sun, 06 Nov 1994 08:99999999999999999:00 GMT",
            "Sun, 06 Nov 1994 08:49:99999999999999999 GMT",
            "Sun, 9223372036854775807 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 9223372036854775807 08:49:37 GMT",
            "Sun, 06 Nov -9223372036854775808 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
        ] {
            assert_eq!(httpdate_to_unix(bad), None, "{bad}");
            let e = upstream(429, &[("retry-after", bad)], "");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "{bad}");
        }
        assert_eq!(
            httpdate_to_unix("Fri, 31 Dec 9999 23:59:60 GMT"),
            Some(253_402_300_800)
        );
    }

    #[test]
    fn upstream_credential_failures_are_the_gateways_problem() {
        for status in [401, 403] {
            let e = upstream(
                status,
                &[],
                r#"{"error":{"message":"Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz012345."}}"#,
            );
            assert_eq!(e.reason(), Reason::UpstreamAuthFailed);
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
            let text = String::from_utf8(e.to_json(&Secrets::none()).to_vec()).unwrap();
            assert!(
                !text.contains("sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
                "{text}"
            );
            assert!(text.contains("upstream_auth_failed"));
        }
    }

    #[test]
    fn upstream_404_is_permanent() {
        let e = upstream(
            404,
            &[],
            r#"{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}"#,
        );
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(e.is_permanent());
        assert_eq!(json(&e)["error"]["metadata"]["permanent"], true);
        assert_eq!(json(&e)["error"]["type"], "not_found_error");
    }

    #[test]
    fn every_model_gone_shape_is_a_permanent_404() {
        for row in crate::router::classify::MODEL_GONE {
            let e = upstream(
                row.status,
                &[("content-type", "application/json")],
                row.example,
            );
            assert_eq!(
                e.reason(),
                Reason::UpstreamModelNotFound,
                "{}",
                row.provider
            );
            assert_eq!(e.status(), StatusCode::NOT_FOUND, "{}", row.provider);
            assert!(e.is_permanent(), "{}", row.provider);
            assert_eq!(json(&e)["error"]["metadata"]["upstream_status"], row.status);
        }
    }

    #[test]
    fn a_route_the_upstream_does_not_serve_is_a_502_that_is_not_permanent() {
        for (status, ct, body) in [
            (
                404,
                "text/html",
                "<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center><hr><center>nginx</center></body></html>",
            ),
            (404, "text/plain", "404 page not found"),
            (404, "application/json", r#"{"detail":"Not Found"}"#),
            (
                404,
                "application/json",
                r#"{"error":{"message":"Invalid URL (POST /v1/responses)","type":"invalid_request_error","param":null,"code":null}}"#,
            ),
            (
                405,
                "application/json",
                r#"{"detail":"Method Not Allowed"}"#,
            ),
            (410, "text/html", "<h1>Gone</h1>"),
            (501, "text/plain", "Not Implemented"),
            (404, "", ""),
        ] {
            let e = upstream(status, &[("content-type", ct)], body);
            assert_eq!(
                e.reason(),
                Reason::UpstreamRouteNotServed,
                "{status} {body}"
            );
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
            assert!(!e.is_permanent());
            assert!(e.retry_after().is_none());
            let v = json(&e);
            assert!(v["error"]["metadata"].get("permanent").is_none());
            assert_eq!(v["error"]["type"], "api_error");
            let e = e.not_served_at("POST", "/v1/responses");
            assert!(
                e.message().contains("POST /v1/responses"),
                "{}",
                e.message()
            );
            assert_eq!(
                json(&e)["error"]["metadata"]["upstream_path"],
                "/v1/responses"
            );
        }
    }

    #[test]
    fn content_filters_keep_the_upstreams_status_under_their_own_reason() {
        for row in crate::router::classify::CONTENT_FILTERED {
            let e = upstream(row.status, &[], row.example);
            assert_eq!(
                e.reason(),
                Reason::UpstreamContentFiltered,
                "{}",
                row.provider
            );
            assert_eq!(e.status().as_u16(), row.status, "{}", row.provider);
            assert!(!e.is_permanent());
        }
    }

    #[test]
    fn proxy_answers_413_and_408_and_5xx_with_retry_after() {
        let e = upstream(
            413,
            &[("content-type", "text/html")],
            "<html><body><h1>413 Request Entity Too Large</h1></body></html>",
        );
        assert_eq!(e.reason(), Reason::BodyTooLarge);
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.upstream_status(), Some(StatusCode::PAYLOAD_TOO_LARGE));
        let e = upstream(
            408,
            &[("content-type", "text/html")],
            "<h1>408 Request Time-out</h1>",
        );
        assert_eq!(e.reason(), Reason::UpstreamTimeout);
        assert_eq!(e.phase(), Some(TimeoutPhase::Upstream));
        let e = upstream(500, &[("retry-after", "20")], "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(20)));
        assert!(e.upstream_asked_to_wait());
        let e = upstream(503, &[], "");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "the default");
        assert!(!e.upstream_asked_to_wait());
    }

    #[test]
    fn a_retry_delay_in_the_body_counts_when_no_header_says_one() {
        let gemini = r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}]}}"#;
        let e = upstream(503, &[], gemini);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(12)));
        assert!(e.upstream_asked_to_wait());
        let e = upstream(503, &[("retry-after", "3")], gemini);
        assert_eq!(
            e.retry_after(),
            Some(Duration::from_secs(3)),
            "the header wins"
        );
        let e = upstream(400, &[], gemini);
        assert_eq!(e.retry_after(), None, "only on 429 and 5xx");
    }

    #[test]
    fn upstream_503_is_temporary_and_distinct_from_404() {
        let e = upstream(503, &[], "");
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.is_permanent());
        assert!(json(&e)["error"]["metadata"].get("permanent").is_none());
        assert!(e.retry_after().is_some());
    }

    #[test]
    fn upstream_client_errors_keep_status_and_context_length_is_named() {
        let e = upstream(422, &[], r#"{"error":{"message":"bad field"}}"#);
        assert_eq!(e.status().as_u16(), 422);
        assert_eq!(e.reason(), Reason::UpstreamRejected);
        let e = upstream(
            400,
            &[],
            r#"{"error":{"message":"too long","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(e.reason(), Reason::ContextLengthExceeded);
        assert_eq!(e.status().as_u16(), 400);
    }

    #[test]
    fn upstream_5xx_and_odd_bodies() {
        let e = upstream(
            500,
            &[("content-type", "text/html")],
            "<html><body><h1>500 Internal Server Error</h1></body></html>",
        );
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.reason(), Reason::UpstreamError);
        assert_eq!(
            e.raw(),
            Some(&Value::String("500 Internal Server Error".into()))
        );
        let e = upstream(502, &[("content-type", "text/plain")], "Bad Gateway");
        assert_eq!(e.raw(), Some(&Value::String("Bad Gateway".into())));
        assert!(e.message().contains("Bad Gateway"));
        let e = upstream(500, &[], "\u{0}\u{1}not json at all {");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let big = "x".repeat(100_000);
        let e = upstream(500, &[], &big);
        assert!(e.raw().unwrap().as_str().unwrap().len() <= RAW_LIMIT);
        assert!(e.message().len() < 600);
    }

    #[test]
    fn from_response_keeps_status() {
        let e = Error::from_response(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            b"",
            &Secrets::none(),
        );
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.message(), "Not Found.");
        let e = Error::from_response(
            StatusCode::IM_A_TEAPOT,
            &HeaderMap::new(),
            b"{\"message\":\"short and stout\"}",
            &Secrets::none(),
        );
        assert_eq!(e.status().as_u16(), 418);
        assert_eq!(e.message(), "short and stout");
    }

    #[test]
    fn timeouts_name_their_phase() {
        let e = Error::timeout(TimeoutPhase::FirstByte, Duration::from_millis(250));
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        let v = json(&e);
        assert_eq!(v["error"]["metadata"]["phase"], "first_byte");
        assert_eq!(v["error"]["metadata"]["reason"], "upstream_timeout");
        assert!(e.message().contains("250 ms"));
    }

    #[test]
    fn secrets_are_redacted_from_message_and_metadata() {
        let secret = "tg-abc123-supersecretvalue";
        let e = Error::new(Reason::RateLimited, format!("key {secret} is limited"))
            .with_meta("note", format!("seen {secret}"));
        let text = String::from_utf8(e.to_json(&Secrets::new(&[secret])).to_vec()).unwrap();
        assert!(!text.contains("supersecretvalue"), "{text}");
        assert!(!format!("{e:?}{e}").contains("supersecretvalue"));
    }

    #[test]
    fn sse_tail_is_error_event_finish_reason_and_done() {
        let e = Error::new(Reason::UpstreamStreamCut, "cut");
        let tail = e.to_sse_tail("m", &Secrets::none());
        let text = std::str::from_utf8(&tail).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert_eq!(events.len(), 3);
        let err: Value = serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(err["error"]["code"], 502);
        let chunk: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(chunk["choices"][0]["finish_reason"], "error");
        assert_eq!(chunk["model"], "m");
        assert_eq!(events[2], "data: [DONE]");
    }

    #[test]
    fn anthropic_shape_for_every_reason_keeps_status_reason_and_redaction() {
        let secret = "sk-ant-secretsecretsecret";
        for &reason in Reason::ALL {
            let e = Error::new(reason, format!("failed with {secret}"))
                .with_retry_after(Duration::from_secs(2));
            let v: Value =
                serde_json::from_slice(&e.to_json_in(Family::Anthropic, &Secrets::new(&[secret])))
                    .unwrap();
            assert_eq!(v["type"], "error", "{v}");
            let t = v["error"]["type"].as_str().unwrap();
            assert_eq!(t, anthropic_error_type(reason.status()), "{reason}");
            assert_eq!(v["error"]["metadata"]["reason"], reason.as_str());
            assert_eq!(v["error"]["metadata"]["retry_after_s"], 2);
            assert!(!v.to_string().contains(secret), "{v}");
            // The OpenAI families keep the contract as it was.
            let o: Value =
                serde_json::from_slice(&e.to_json_in(Family::OpenAiResponses, &Secrets::none()))
                    .unwrap();
            assert_eq!(o["error"]["code"], reason.status().as_u16());
        }
        let types = |s: u16| anthropic_error_type(StatusCode::from_u16(s).unwrap());
        assert_eq!(
            [400, 401, 402, 403, 404, 413, 429, 500, 502, 503, 529].map(types),
            [
                "invalid_request_error",
                "authentication_error",
                "billing_error",
                "permission_error",
                "not_found_error",
                "request_too_large",
                "rate_limit_error",
                "api_error",
                "api_error",
                "overloaded_error",
                "overloaded_error",
            ]
        );
    }

    #[test]
    fn sse_tails_per_family() {
        let e = Error::new(Reason::UpstreamStreamCut, "cut");
        let events = |f: Family| -> Vec<(String, Value)> {
            let tail = e.to_sse_tail_in(f, "m", &Secrets::none());
            std::str::from_utf8(&tail)
                .unwrap()
                .split("\n\n")
                .filter(|s| !s.is_empty())
                .map(|ev| {
                    let (name, data) = ev.split_once("\ndata: ").unwrap();
                    (
                        name.strip_prefix("event: ").unwrap().to_owned(),
                        serde_json::from_str(data).unwrap(),
                    )
                })
                .collect()
        };
        let a = events(Family::Anthropic);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].0, "error");
        assert_eq!(a[0].1["type"], "error");
        assert_eq!(a[0].1["error"]["type"], "api_error");
        assert_eq!(a[0].1["error"]["metadata"]["reason"], "upstream_stream_cut");
        let r = events(Family::OpenAiResponses);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].0.as_str(), &r[0].1["type"]),
            ("error", &serde_json::json!("error"))
        );
        assert_eq!(r[0].1["metadata"]["reason"], "upstream_stream_cut");
        assert_eq!(r[1].0, "response.failed");
        assert_eq!(r[1].1["response"]["status"], "failed");
        assert_eq!(r[1].1["response"]["model"], "m");
        // OpenAI chat: as `to_sse_tail`.
        assert_eq!(
            e.to_sse_tail_in(Family::OpenAi, "m", &Secrets::none())[..40],
            e.to_sse_tail("m", &Secrets::none())[..40]
        );
    }

    #[test]
    fn extra_headers_are_rendered_but_not_over_the_contracts_own() {
        let e = Error::new(Reason::RateLimited, "slow down")
            .with_retry_after(Duration::from_secs(3))
            .with_header(
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from_static("10"),
            )
            .with_header(RETRY_AFTER, HeaderValue::from_static("999"))
            .with_header(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let res = e.to_response(&Secrets::none());
        assert_eq!(res.headers()["x-ratelimit-limit-requests"], "10");
        assert_eq!(res.headers()[RETRY_AFTER], "3");
        assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn boxed_errors() {
        let e = from_boxed(Box::new(Error::new(Reason::QueueFull, "full")));
        assert_eq!(e.reason(), Reason::QueueFull);
        let e = from_boxed(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        let e = from_boxed("Bearer sk-live-0123456789abcdef0123456789".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message().contains("sk-live"));
    }
}
