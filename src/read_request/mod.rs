//! `ReadRequest`: buffer the body once, parse what the gateway needs once.
//!
//! The layer reads the request body up to a limit (413 `body_too_large`
//! above it, refused from `Content-Length` before reading when it says so),
//! checks that it is JSON (415 `unsupported_media_type` for another content
//! type; a missing one is taken as JSON), and scans it with
//! [`scan`](scan::scan) — a validating scanner that builds no JSON tree — for
//! `model`, `stream`, the output-token cap, `n`, `stream_options` and the
//! per-request `models` list. Malformed JSON is a 400 `invalid_json` naming
//! line and column; no `model` a 400 `missing_model`; a recognised field of
//! the wrong type or given twice a 400 `invalid_request` naming the field.
//!
//! The inner stack receives `Request<`[`Parsed`]`<I>>`: the body's [`Bytes`],
//! the parsed [`Summary`] and the caller's identity `I`, by type. A layer
//! that needs the summary cannot be stacked without `ReadRequest` (it does not
//! compile), and retries or fallbacks clone the request cheaply (a reference
//! count, no copy).
//!
//! The identity comes from the request body's type through [`WithIdentity`]:
//! an authentication layer outside `ReadRequest` hands it
//! `Request<`[`Identified`]`<I, B>>`, and the inner stack gets `Parsed<I>`;
//! any plain body gives `Parsed<()>`. So a layer that needs an authenticated
//! key asks for `Parsed<Key>` and cannot be stacked without authentication.
//!
//! [`Parsed::rewrite`] gives the provider the body with only the `model`
//! value replaced (and, for metering, `stream_options.include_usage` set),
//! as a few shared slices of the original bytes: nothing is re-serialized.
//!
//! ```
//! use http::{Request, Response};
//! use tollgate::{Body, Error, read_request::{Parsed, ReadRequestLayer}};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(4 * 1024 * 1024))
//!     .service(service_fn(|req: Request<Parsed>| async move {
//!         Ok::<_, Error>(Response::new(Body::full(req.body().model().to_owned())))
//!     }));
//! let req = Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Body::full(r#"{"model":"gpt-4o-mini","messages":[]}"#))
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! # use http_body_util::BodyExt;
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "gpt-4o-mini");
//! # }
//! ```

pub mod scan;

use std::future::Future;
use std::mem;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request};
use http_body::Body as HttpBody;
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::body::Chunks;
use crate::error::{Error, Reason};

/// Applies [`ReadRequest`] with a body size limit in bytes.
#[derive(Clone, Copy, Debug)]
pub struct ReadRequestLayer {
    limit: usize,
    endpoint: Option<Endpoint>,
}

impl ReadRequestLayer {
    /// Bodies larger than `limit` bytes are refused with 413.
    pub fn new(limit: usize) -> Self {
        ReadRequestLayer {
            limit,
            endpoint: None,
        }
    }

    /// Every request through this layer is for `endpoint`, whatever its
    /// path. Without it, the endpoint is read from the path's last segments
    /// ([`Endpoint::from_path`]), so a stack mounted at
    /// `/ai/v1/chat/completions` is still Chat Completions; name it here when
    /// the mount path does not end like the API's own (e.g. `/chat`). The
    /// provider forwards to the endpoint's upstream path
    /// ([`Endpoint::upstream_path`]), never to the mount path.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }
}

impl<S> Layer<S> for ReadRequestLayer {
    type Service = ReadRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadRequest {
            inner,
            limit: self.limit,
            endpoint: self.endpoint,
        }
    }
}

/// Buffers and parses the body, then calls `S` with `Request<Parsed>`.
#[derive(Clone, Debug)]
pub struct ReadRequest<S> {
    inner: S,
    limit: usize,
    endpoint: Option<Endpoint>,
}

/// Which API a request is for, from its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/completions`
    Completions,
    /// `/v1/embeddings`
    Embeddings,
    /// `/v1/responses`
    Responses,
    /// `/v1/messages` (Anthropic)
    Messages,
    /// `/v1/messages/count_tokens` (Anthropic)
    CountTokens,
    /// Any other path.
    Other,
}

impl Endpoint {
    /// The endpoint a path names.
    pub fn from_path(path: &str) -> Self {
        let path = path.trim_end_matches('/');
        if path.ends_with("/messages/count_tokens") {
            Endpoint::CountTokens
        } else if path.ends_with("/messages") {
            Endpoint::Messages
        } else if path.ends_with("/chat/completions") {
            Endpoint::ChatCompletions
        } else if path.ends_with("/completions") {
            Endpoint::Completions
        } else if path.ends_with("/embeddings") {
            Endpoint::Embeddings
        } else if path.ends_with("/responses") {
            Endpoint::Responses
        } else {
            Endpoint::Other
        }
    }

    /// The path an upstream serves this endpoint at, relative to its base
    /// URL (which ends with the API version, e.g. `https://api.openai.com/v1`):
    /// `/chat/completions`, … `None` for [`Endpoint::Other`], which the
    /// provider forwards under the request's own path after `/v1`.
    pub fn upstream_path(self) -> Option<&'static str> {
        match self {
            Endpoint::ChatCompletions => Some("/chat/completions"),
            Endpoint::Completions => Some("/completions"),
            Endpoint::Embeddings => Some("/embeddings"),
            Endpoint::Responses => Some("/responses"),
            Endpoint::Messages => Some("/messages"),
            Endpoint::CountTokens => Some("/messages/count_tokens"),
            Endpoint::Other => None,
        }
    }

    /// The API family the endpoint belongs to: the shape of its answers
    /// and errors.
    pub fn family(self) -> crate::family::Family {
        use crate::family::Family;
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Family::Anthropic,
            Endpoint::Responses => Family::OpenAiResponses,
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Other => Family::OpenAi,
        }
    }

    /// Whether its streams end with `data: [DONE]` (OpenAI's chat and
    /// completions streams do; the Responses API's do not).
    pub fn stream_ends_with_done(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// What the gateway needs to know about a request, parsed once.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The model (group) asked for.
    pub model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The output-token cap: `max_completion_tokens`, `max_tokens` or `max_output_tokens`.
    pub max_output_tokens: Option<u64>,
    /// `n`, the number of choices (1 when absent).
    pub n: u64,
    /// `stream_options.include_usage` as the client sent it.
    pub include_usage: Option<bool>,
    /// The per-request fallback list (`"models": [...]`), empty when absent.
    pub models: Vec<String>,
    /// The end user the request is for: `user` in the OpenAI families,
    /// `metadata.user_id` in Anthropic Messages (`None` when absent: no
    /// allocation).
    pub end_user: Option<String>,
    /// Bytes of the prompt's parts: `messages`, `prompt`, `input`, `system`,
    /// `instructions` and `tools`.
    pub prompt_bytes: usize,
    /// The API the request is for.
    pub endpoint: Endpoint,
    model_span: Range<usize>,
    stream_options: Option<scan::StreamOptions>,
    stream_options_null: Option<Range<usize>>,
    object_end: usize,
    /// Set by [`Parsed::retarget`]: the JSON literal of the model group the
    /// request was re-aimed at, written in place of the client's `model`.
    retargeted: Option<Bytes>,
}

/// The gateway's one token estimate from text size: a token per four bytes,
/// at least one. Used for prompts before a call and for streamed output when
/// the upstream reports no usage.
pub fn tokens_from_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1)
}

impl Summary {
    /// A cheap prompt-token estimate: [`tokens_from_bytes`] of the prompt.
    pub fn prompt_tokens_estimate(&self) -> u64 {
        tokens_from_bytes(self.prompt_bytes as u64)
    }
}

/// A request body with the identity of its caller, as an authentication
/// layer hands it to [`ReadRequest`].
#[derive(Debug)]
pub struct Identified<I, B> {
    /// Who is calling (e.g. the authenticated key).
    pub identity: I,
    /// The request body.
    pub body: B,
}

/// A request body that may carry its caller's identity: [`Identified`] does;
/// every plain body carries `()`.
pub trait WithIdentity {
    /// The identity carried.
    type Identity;
    /// The body carried.
    type Body: HttpBody<Data = Bytes>;
    /// Separates the two.
    fn split(self) -> (Self::Identity, Self::Body);
}

impl<B: HttpBody<Data = Bytes>> WithIdentity for B {
    type Identity = ();
    type Body = B;
    fn split(self) -> ((), B) {
        ((), self)
    }
}

impl<I, B: HttpBody<Data = Bytes>> WithIdentity for Identified<I, B> {
    type Identity = I;
    type Body = B;
    fn split(self) -> (I, B) {
        (self.identity, self.body)
    }
}

/// A buffered request body, its [`Summary`] and its caller's identity.
/// Cloning shares the bytes and the summary.
#[derive(Clone, Debug)]
pub struct Parsed<I = ()> {
    bytes: Bytes,
    summary: Arc<Summary>,
    identity: I,
}

impl Parsed<()> {
    /// Parses `bytes` for `path` (the same checks as the layer, less the
    /// transport ones). Useful to build requests in tests and benches.
    pub fn parse(path: &str, bytes: Bytes) -> Result<Self, Error> {
        Self::parse_for(Endpoint::from_path(path), bytes)
    }

    /// Parses `bytes` as a request for `endpoint`.
    pub fn parse_for(endpoint: Endpoint, bytes: Bytes) -> Result<Self, Error> {
        let fields = scan::scan(&bytes).map_err(scan_error)?;
        let model = match fields.model {
            Some(m) if !m.value.trim().is_empty() => m,
            Some(_) => {
                return Err(Error::new(
                    Reason::MissingModel,
                    "`model` is empty; name the model to use.",
                ));
            }
            None => {
                return Err(Error::new(
                    Reason::MissingModel,
                    "The request has no `model`; name the model to use.",
                ));
            }
        };
        let summary = Summary {
            model: model.value,
            stream: fields.stream.unwrap_or(false),
            max_output_tokens: fields
                .max_completion_tokens
                .or(fields.max_tokens)
                .or(fields.max_output_tokens),
            n: fields.n.unwrap_or(1).max(1),
            include_usage: fields
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage.as_ref().map(|(b, _)| *b)),
            models: fields.models.unwrap_or_default(),
            end_user: match endpoint {
                Endpoint::Messages | Endpoint::CountTokens => fields.metadata_user_id,
                _ => fields.user,
            },
            prompt_bytes: fields.prompt_bytes,
            endpoint,
            model_span: model.span,
            stream_options: fields.stream_options,
            stream_options_null: fields.stream_options_null,
            object_end: fields.object_end,
            retargeted: None,
        };
        Ok(Parsed {
            bytes,
            summary: Arc::new(summary),
            identity: (),
        })
    }
}

impl<I> Parsed<I> {
    /// The same body with a caller's identity attached.
    pub fn with_identity<J>(self, identity: J) -> Parsed<J> {
        Parsed {
            bytes: self.bytes,
            summary: self.summary,
            identity,
        }
    }

    /// Who is calling.
    pub fn identity(&self) -> &I {
        &self.identity
    }

    /// The body exactly as the client sent it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The parsed summary.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The model asked for.
    pub fn model(&self) -> &str {
        &self.summary.model
    }

    /// The same request aimed at another model group (what a fallback
    /// does): [`model`](Self::model) becomes `model`, and
    /// [`rewrite`](Self::rewrite) writes it in place of the client's `model`
    /// value when the provider does not set its own upstream model name.
    /// Nothing else changes: the messages are the client's, untouched.
    pub fn retarget(&self, model: &str) -> Self
    where
        I: Clone,
    {
        let mut summary = Summary::clone(&self.summary);
        summary.model = model.to_owned();
        summary.retargeted = Some(json_string(model));
        Parsed {
            bytes: self.bytes.clone(),
            summary: Arc::new(summary),
            identity: self.identity.clone(),
        }
    }

    /// The body to send upstream: the client's bytes with the `model` value
    /// replaced by `model` (a JSON string literal, quotes included, see
    /// [`json_string`]) when given (else by the group a
    /// [`retarget`](Self::retarget) aimed it at), and `stream_options.include_usage` set to
    /// `true` when `include_usage` is set and the request streams. Built from
    /// shared slices of the original: no copy, no re-serializing.
    pub fn rewrite(&self, model: Option<&Bytes>, include_usage: bool) -> Chunks {
        let s = &*self.summary;
        let mut edits: Vec<(Range<usize>, Bytes)> = Vec::with_capacity(2);
        if let Some(m) = model.or(s.retargeted.as_ref()) {
            edits.push((s.model_span.clone(), m.clone()));
        }
        if include_usage && s.stream && s.include_usage != Some(true) {
            edits.push(self.include_usage_edit());
        }
        if edits.is_empty() {
            return Chunks::new(vec![self.bytes.clone()]);
        }
        edits.sort_by_key(|(r, _)| r.start);
        let mut parts = Vec::with_capacity(edits.len() * 2 + 1);
        let mut at = 0;
        for (range, with) in edits {
            parts.push(self.bytes.slice(at..range.start));
            parts.push(with);
            at = range.end;
        }
        parts.push(self.bytes.slice(at..));
        Chunks::new(parts)
    }

    fn include_usage_edit(&self) -> (Range<usize>, Bytes) {
        let s = &*self.summary;
        match &s.stream_options {
            // `"stream_options": null`: replace the null, never add a second key.
            None => match &s.stream_options_null {
                Some(null) => (
                    null.clone(),
                    Bytes::from_static(br#"{"include_usage":true}"#),
                ),
                None => (
                    s.object_end..s.object_end,
                    Bytes::from_static(br#","stream_options":{"include_usage":true}"#),
                ),
            },
            Some(scan::StreamOptions {
                include_usage: Some((_, span)),
                ..
            }) => (span.clone(), Bytes::from_static(b"true")),
            Some(scan::StreamOptions {
                include_usage_null: Some(null),
                ..
            }) => (null.clone(), Bytes::from_static(b"true")),
            Some(scan::StreamOptions { span, .. }) => {
                let inside = &self.bytes[span.start + 1..span.end - 1];
                let empty = inside.iter().all(u8::is_ascii_whitespace);
                let at = span.start + 1;
                let text: &'static [u8] = if empty {
                    br#""include_usage":true"#
                } else {
                    br#""include_usage":true,"#
                };
                (at..at, Bytes::from_static(text))
            }
        }
    }
}

/// `value` as a JSON string literal (quotes included), for [`Parsed::rewrite`].
pub fn json_string(value: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"\"\"".to_vec()))
}

fn scan_error(e: scan::ScanError) -> Error {
    let (reason, message) = match &e.kind {
        scan::ErrorKind::Syntax | scan::ErrorKind::TooDeep => (
            Reason::InvalidJson,
            format!("The request body is not valid JSON: {e}."),
        ),
        scan::ErrorKind::NotAnObject => (
            Reason::InvalidJson,
            "The request body must be a JSON object.".to_owned(),
        ),
        scan::ErrorKind::DuplicateField(field) => (
            Reason::InvalidRequest,
            format!("`{field}` is given more than once; give it once."),
        ),
        scan::ErrorKind::FieldType { field, expected } => (
            Reason::InvalidRequest,
            format!("`{field}` must be {expected}."),
        ),
    };
    let mut err = Error::new(reason, message)
        .with_meta("line", e.line)
        .with_meta("column", e.column);
    if let scan::ErrorKind::DuplicateField(field) | scan::ErrorKind::FieldType { field, .. } =
        &e.kind
    {
        err = err.with_meta("param", *field);
    }
    err
}

impl<S, B> Service<Request<B>> for ReadRequest<S>
where
    B: WithIdentity,
    S: Service<Request<Parsed<B::Identity>>, Error = Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The ready service goes into the future; a clone stays here.
        let inner = self.inner.clone();
        let inner = mem::replace(&mut self.inner, inner);
        let (parts, body) = req.into_parts();
        let (identity, body) = body.split();
        let state = match check_head(&parts, self.limit) {
            Err(e) => State::Failed { error: Some(e) },
            Ok(expected) => State::Reading {
                body,
                identity: Some(identity),
                first: None,
                buf: BytesMut::new(),
                expected,
                parts: Some(parts),
                inner: Some(inner),
            },
        };
        ResponseFuture {
            state,
            limit: self.limit,
            endpoint: self.endpoint,
        }
    }
}

/// Method, content type and declared length; returns the declared length.
fn check_head(parts: &http::request::Parts, limit: usize) -> Result<usize, Error> {
    if parts.method != Method::POST {
        return Err(Error::new(
            Reason::MethodNotAllowed,
            format!("{} is not allowed here; use POST.", parts.method),
        ));
    }
    if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Error::new(
                Reason::UnsupportedMediaType,
                "The body must be JSON; send `Content-Type: application/json`.",
            ));
        }
    }
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        Some(n) => Ok(n as usize),
        None => Ok(0),
    }
}

fn too_large(limit: usize) -> Error {
    Error::new(
        Reason::BodyTooLarge,
        format!("The request body is larger than this gateway's limit of {limit} bytes."),
    )
    .with_meta("limit_bytes", limit)
}

/// The future of [`ReadRequest`].
#[pin_project]
pub struct ResponseFuture<S, B>
where
    B: WithIdentity,
    S: Service<Request<Parsed<B::Identity>>>,
{
    #[pin]
    state: State<S, B>,
    limit: usize,
    endpoint: Option<Endpoint>,
}

// The states live inline in the one future of a request: boxing the large
// one would add an allocation per request to save bytes nobody copies.
#[allow(clippy::large_enum_variant)]
#[pin_project(project = StateProj)]
enum State<S, B>
where
    B: WithIdentity,
    S: Service<Request<Parsed<B::Identity>>>,
{
    Reading {
        #[pin]
        body: B::Body,
        identity: Option<B::Identity>,
        /// The first frame, kept without copying while it is the only one.
        first: Option<Bytes>,
        buf: BytesMut,
        expected: usize,
        parts: Option<http::request::Parts>,
        inner: Option<S>,
    },
    Calling {
        #[pin]
        fut: S::Future,
    },
    Failed {
        error: Option<Error>,
    },
}

impl<S, B> Future for ResponseFuture<S, B>
where
    B: WithIdentity,
    S: Service<Request<Parsed<B::Identity>>, Error = Error>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Calling { fut } => return fut.poll(cx),
                StateProj::Reading {
                    mut body,
                    identity,
                    first,
                    buf,
                    expected,
                    parts,
                    inner,
                } => {
                    let next = loop {
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                let Ok(data) = frame.into_data() else {
                                    continue;
                                };
                                if data.is_empty() {
                                    continue;
                                }
                                let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
                                if have + data.len() > *this.limit {
                                    break Err(too_large(*this.limit));
                                }
                                if first.is_none() && buf.is_empty() {
                                    *first = Some(data);
                                } else {
                                    if let Some(f) = first.take() {
                                        buf.reserve((*expected).max(f.len() + data.len()));
                                        buf.extend_from_slice(&f);
                                    }
                                    buf.extend_from_slice(&data);
                                }
                            }
                            Some(Err(_)) => {
                                break Err(Error::new(
                                    Reason::InvalidRequest,
                                    "The request body could not be read to its end.",
                                ));
                            }
                            None => {
                                let bytes = first.take().unwrap_or_else(|| mem::take(buf).freeze());
                                let parts = parts.take().expect("polled after completion");
                                let mut inner = inner.take().expect("polled after completion");
                                let identity = identity.take().expect("polled after completion");
                                let endpoint = this
                                    .endpoint
                                    .unwrap_or_else(|| Endpoint::from_path(parts.uri.path()));
                                break Parsed::parse_for(endpoint, bytes).map(|parsed| {
                                    // The request span (if the caller opened one
                                    // with a `model` field) names the model.
                                    tracing::Span::current()
                                        .record("model", tracing::field::display(parsed.model()));
                                    inner.call(Request::from_parts(
                                        parts,
                                        parsed.with_identity(identity),
                                    ))
                                });
                            }
                        }
                    };
                    match next {
                        Ok(fut) => this.state.set(State::Calling { fut }),
                        Err(e) => this.state.set(State::Failed { error: Some(e) }),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use http::{Response, StatusCode};
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tower::{ServiceExt, service_fn};

    async fn call(req: Request<Body>) -> Result<Parsed, Error> {
        let svc =
            ReadRequestLayer::new(1024).layer(service_fn(|req: Request<Parsed>| async move {
                Ok::<_, Error>(req.into_body())
            }));
        svc.oneshot(req).await
    }

    fn post(body: &'static str) -> Request<Body> {
        Request::post("/v1/chat/completions")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::full(body))
            .unwrap()
    }

    #[tokio::test]
    async fn parses_the_summary() {
        let p = call(post(
            r#"{"model":"gpt-4o","stream":true,"max_tokens":50,"n":2,"messages":[{"role":"user","content":"hello"}],"models":["a","b"]}"#,
        ))
        .await
        .unwrap();
        let s = p.summary();
        assert_eq!(s.model, "gpt-4o");
        assert!(s.stream);
        assert_eq!(s.max_output_tokens, Some(50));
        assert_eq!(s.n, 2);
        assert_eq!(s.models, vec!["a", "b"]);
        assert_eq!(s.endpoint, Endpoint::ChatCompletions);
        assert!(s.prompt_bytes > 0);
        assert!(s.prompt_tokens_estimate() >= 1);
    }

    #[tokio::test]
    async fn max_completion_tokens_wins() {
        let p = call(post(
            r#"{"model":"m","max_tokens":5,"max_completion_tokens":7}"#,
        ))
        .await
        .unwrap();
        assert_eq!(p.summary().max_output_tokens, Some(7));
    }

    #[tokio::test]
    async fn refusals() {
        let e = call(post(r#"{"model": "m", "messages": [}"#))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.reason()),
            (StatusCode::BAD_REQUEST, Reason::InvalidJson)
        );
        assert_eq!(e.metadata()["line"], 1);
        assert!(e.message().contains("line 1"), "{}", e.message());

        let e = call(post(r#"{"messages": []}"#)).await.unwrap_err();
        assert_eq!(e.reason(), Reason::MissingModel);
        let e = call(post(r#"{"model": ""}"#)).await.unwrap_err();
        assert_eq!(e.reason(), Reason::MissingModel);
        let e = call(post(r#"[1,2]"#)).await.unwrap_err();
        assert_eq!(e.reason(), Reason::InvalidJson);

        let mut req = post(r#"{"model":"m"}"#);
        req.headers_mut()
            .insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        let e = call(req).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let mut req = post(r#"{"model":"m"}"#);
        *req.method_mut() = Method::GET;
        assert_eq!(
            call(req).await.unwrap_err().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );

        let mut req = post(r#"{"model":"m"}"#);
        req.headers_mut().insert(
            CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(call(req).await.is_ok());
    }

    #[tokio::test]
    async fn missing_content_type_is_taken_as_json() {
        let req = Request::post("/v1/embeddings")
            .body(Body::full(r#"{"model":"e","input":"x"}"#))
            .unwrap();
        let p = call(req).await.unwrap();
        assert_eq!(p.summary().endpoint, Endpoint::Embeddings);
    }

    #[tokio::test]
    async fn oversized_by_header_and_by_stream() {
        let big = "x".repeat(2000);
        let req = Request::post("/v1/chat/completions")
            .header(CONTENT_LENGTH, big.len())
            .body(Body::full(big.clone()))
            .unwrap();
        let e = call(req).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.metadata()["limit_bytes"], 1024);

        // No Content-Length: counted while reading, across frames.
        let frames = (0..10).map(|_| Ok::<_, Error>(Frame::data(Bytes::from(vec![b' '; 200]))));
        let req = Request::post("/v1/chat/completions")
            .body(Body::new(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap();
        assert_eq!(
            call(req).await.unwrap_err().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn many_frames_are_joined() {
        let parts = [r#"{"mod"#, r#"el":"m"#, r#"x","messages":[]}"#];
        let frames = parts.map(|p| Ok::<_, Error>(Frame::data(Bytes::from_static(p.as_bytes()))));
        let req = Request::post("/v1/chat/completions")
            .body(Body::new(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap();
        let p = call(req).await.unwrap();
        assert_eq!(p.model(), "mx");
        assert_eq!(&p.bytes()[..], br#"{"model":"mx","messages":[]}"#);
    }

    #[tokio::test]
    async fn identity_travels_by_type() {
        let svc = ReadRequestLayer::new(1024).layer(service_fn(
            |req: Request<Parsed<&'static str>>| async move {
                Ok::<_, Error>(Response::new(Body::full(*req.body().identity())))
            },
        ));
        let req = post(r#"{"model":"m"}"#).map(|body| Identified {
            identity: "key-7",
            body,
        });
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "key-7");
    }

    #[tokio::test]
    async fn endpoint_from_the_path_or_the_layer() {
        let body = r#"{"model":"m"}"#;
        let at = |path: &str| {
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::full(body))
                .unwrap()
        };
        let endpoint = |p: Parsed| p.summary().endpoint;
        // From the path's last segments, whatever the mount prefix.
        assert_eq!(
            endpoint(call(at("/ai/v1/chat/completions")).await.unwrap()),
            Endpoint::ChatCompletions
        );
        assert_eq!(endpoint(call(at("/chat")).await.unwrap()), Endpoint::Other);
        // Named on the layer: every path is that endpoint.
        let svc = ReadRequestLayer::new(1024)
            .endpoint(Endpoint::Embeddings)
            .layer(service_fn(|req: Request<Parsed>| async move {
                Ok::<_, Error>(req.into_body())
            }));
        let parsed = svc.oneshot(at("/chat")).await.unwrap();
        assert_eq!(parsed.summary().endpoint, Endpoint::Embeddings);
        assert_eq!(Endpoint::Embeddings.upstream_path(), Some("/embeddings"));
        assert_eq!(Endpoint::Other.upstream_path(), None);
    }

    #[tokio::test]
    async fn inner_sees_request_parts() {
        let svc =
            ReadRequestLayer::new(1024).layer(service_fn(|req: Request<Parsed>| async move {
                assert_eq!(req.uri().path(), "/v1/chat/completions");
                assert_eq!(req.headers()["x-custom"], "1");
                Ok::<_, Error>(Response::new(Body::empty()))
            }));
        let mut req = post(r#"{"model":"m"}"#);
        req.headers_mut().insert("x-custom", "1".parse().unwrap());
        svc.oneshot(req).await.unwrap();
    }

    async fn rewritten(body: &'static str, model: Option<&str>, usage: bool) -> serde_json::Value {
        let p = Parsed::parse("/v1/chat/completions", Bytes::from_static(body.as_bytes())).unwrap();
        let m = model.map(json_string);
        let out = p
            .rewrite(m.as_ref(), usage)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    #[tokio::test]
    async fn retarget_aims_the_request_at_another_group() {
        let body = r#"{"model":"primary","messages":[{"role":"user","content":"hi"}]}"#;
        let p = Parsed::parse("/v1/chat/completions", Bytes::from_static(body.as_bytes())).unwrap();
        let q = p.retarget("backup");
        assert_eq!(q.model(), "backup");
        assert_eq!(p.model(), "primary", "the original is unchanged");
        let out = q.rewrite(None, false).to_bytes();
        assert_eq!(
            &out[..],
            br#"{"model":"backup","messages":[{"role":"user","content":"hi"}]}"#
        );
        // A provider's own upstream model still wins.
        let out = q.rewrite(Some(&json_string("up")), false).to_bytes();
        assert_eq!(
            &out[..],
            br#"{"model":"up","messages":[{"role":"user","content":"hi"}]}"#
        );
    }

    #[tokio::test]
    async fn rewrite_replaces_only_the_model() {
        let body = r#"{"messages":[{"role":"user","content":"model \"x\""}],"model":"group","tool_choice":null}"#;
        let v = rewritten(body, Some("up/model-\"1\""), false).await;
        assert_eq!(v["model"], "up/model-\"1\"");
        assert_eq!(v["messages"][0]["content"], "model \"x\"");
        assert!(v["tool_choice"].is_null());
        let p = Parsed::parse("/v1/chat/completions", Bytes::from_static(body.as_bytes())).unwrap();
        let untouched = p.rewrite(None, true).to_bytes();
        assert_eq!(
            &untouched[..],
            body.as_bytes(),
            "not streaming: include_usage adds nothing"
        );
    }

    #[tokio::test]
    async fn rewrite_sets_include_usage_for_streams() {
        let v = rewritten(r#"{"model":"g","stream":true}"#, Some("u"), true).await;
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "u");
        let v = rewritten(
            r#"{"model":"g","stream":true,"stream_options":{}}"#,
            None,
            true,
        )
        .await;
        assert_eq!(v["stream_options"]["include_usage"], true);
        let v = rewritten(
            r#"{"stream_options":{"x":1},"model":"g","stream":true}"#,
            Some("u"),
            true,
        )
        .await;
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        // `null` values are replaced, never shadowed by a second key (the
        // rewritten body must still pass our own duplicate check).
        for body in [
            r#"{"model":"g","stream":true,"stream_options":null}"#,
            r#"{"model":"g","stream":true,"stream_options":{"include_usage":null,"x":1}}"#,
        ] {
            let p =
                Parsed::parse("/v1/chat/completions", Bytes::from_static(body.as_bytes())).unwrap();
            let out = p.rewrite(None, true).to_bytes();
            let again = Parsed::parse("/v1/chat/completions", out.clone())
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
            assert_eq!(again.summary().include_usage, Some(true));
        }
        let v = rewritten(
            r#"{"model":"g","stream":true,"stream_options":{"include_usage":false}}"#,
            None,
            true,
        )
        .await;
        assert_eq!(v["stream_options"]["include_usage"], true);
    }
}
