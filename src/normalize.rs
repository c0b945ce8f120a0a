//! `NormalizeErrors`: every failure leaves in one JSON shape.
//!
//! The outermost layer. It turns
//!
//! - every `Err` of the inner stack (a typed [`Error`], or any boxed error:
//!   tower's `Elapsed` becomes 408, anything unknown a 500 whose text is
//!   logged, not sent),
//! - every non-2xx answer of any shape that is not already in the contract's
//!   shape (an inner service's own JSON, plain text, HTML, empty),
//! - and every failure in the middle of a `text/event-stream` body
//!
//! into the contract described in [`crate::error`], in the shape of the route's API family
//! ([`crate::family`]: OpenAI's by default, Anthropic's on `/v1/messages`):
//! status = `code`, the SDK's error `type`, `metadata.reason`, `Retry-After`
//! where waiting helps. A stream that fails after it started stays 200 and
//! ends with the family's error events (OpenAI chat: `data: {"error": …}`, a
//! chunk with `finish_reason: "error"` and `data: [DONE]`; Responses:
//! `event: error` and `response.failed`; Anthropic: `event: error`): never
//! a silent end.
//!
//! The client's own credential (`Authorization`, `x-api-key`, `api-key`) is
//! remembered for the request and redacted from anything this layer writes,
//! on top of the shape rules of [`sanitize`](crate::sanitize). The stack's
//! error type becomes `Infallible`, so it mounts with `axum::Router::layer`
//! or `route_service`.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tollgate::{Body, Error, Reason, normalize::NormalizeErrorsLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(NormalizeErrorsLayer::new())
//!     .service(service_fn(|_req: Request<Body>| async {
//!         Err::<Response<Body>, Error>(Error::new(Reason::ModelNotFound, "No model group `gpt-9`."))
//!     }));
//! let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::Served;
use crate::error::{self, Error, Normalized, RAW_LIMIT};
use crate::family::Family;
use crate::sanitize::Secrets;

/// Applies [`NormalizeErrors`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NormalizeErrorsLayer {
    family: Option<Family>,
}

impl NormalizeErrorsLayer {
    /// The layer: errors in the family of each request's path
    /// ([`Family::from_path`]).
    pub fn new() -> Self {
        NormalizeErrorsLayer { family: None }
    }

    /// Every error in `family`'s shape, whatever the path (for a stack
    /// mounted at a path that does not end like its API's own).
    pub fn family(mut self, family: Family) -> Self {
        self.family = Some(family);
        self
    }
}

impl<S> Layer<S> for NormalizeErrorsLayer {
    type Service = NormalizeErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NormalizeErrors {
            inner,
            family: self.family,
        }
    }
}

/// Turns every failure of `S` into the contract's JSON (see the module docs).
#[derive(Clone, Debug)]
pub struct NormalizeErrors<S> {
    inner: S,
    family: Option<Family>,
}

/// The client credentials seen on the request, kept to redact them.
#[derive(Clone, Debug, Default)]
struct ClientSecrets {
    values: [Option<HeaderValue>; 2],
}

impl ClientSecrets {
    fn from_headers(headers: &HeaderMap) -> Self {
        let auth = headers.get(AUTHORIZATION).cloned();
        let key = headers
            .get("x-api-key")
            .or_else(|| headers.get("api-key"))
            .cloned();
        ClientSecrets {
            values: [auth, key],
        }
    }

    /// Calls `f` with the credentials as strings (the bearer token without its scheme).
    fn with<R>(&self, f: impl FnOnce(&Secrets<'_>) -> R) -> R {
        let mut list: [&str; 2] = [""; 2];
        for (slot, v) in list.iter_mut().zip(&self.values) {
            if let Some(s) = v.as_ref().and_then(|v| v.to_str().ok()) {
                let s = s.trim();
                *slot = s
                    .strip_prefix("Bearer ")
                    .or_else(|| s.strip_prefix("bearer "))
                    .unwrap_or(s)
                    .trim();
            }
        }
        f(&Secrets::new(&list))
    }
}

impl<S, B, RB> Service<Request<B>> for NormalizeErrors<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<tower::BoxError>,
    RB: HttpBody<Data = Bytes>,
    RB::Error: Into<tower::BoxError>,
{
    type Response = Response<NormalizedBody<RB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner service that is not ready because it failed still gets
        // called; its error then comes back through the response future.
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let secrets = ClientSecrets::from_headers(req.headers());
        let family = self
            .family
            .unwrap_or_else(|| Family::from_path(req.uri().path()));
        ResponseFuture {
            state: State::Calling {
                fut: self.inner.call(req),
            },
            secrets: Some(secrets),
            family,
        }
    }
}

/// The future of [`NormalizeErrors`].
#[pin_project]
pub struct ResponseFuture<F, RB> {
    #[pin]
    state: State<F, RB>,
    secrets: Option<ClientSecrets>,
    family: Family,
}

#[pin_project(project = StateProj)]
enum State<F, RB> {
    Calling {
        #[pin]
        fut: F,
    },
    /// Reading a non-2xx body (bounded) to normalize it.
    Reading {
        parts: Option<http::response::Parts>,
        #[pin]
        body: RB,
        buf: BytesMut,
    },
}

impl<F, RB, E> Future for ResponseFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<tower::BoxError>,
    RB: HttpBody<Data = Bytes>,
    RB::Error: Into<tower::BoxError>,
{
    type Output = Result<Response<NormalizedBody<RB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let res = match ready!(fut.poll(cx)) {
                        Ok(res) => res,
                        Err(e) => {
                            let e = error::from_boxed(e.into());
                            let secrets = this.secrets.take().unwrap_or_default();
                            return Poll::Ready(Ok(error_response(&e, &secrets, *this.family)));
                        }
                    };
                    let status = res.status();
                    if !(status.is_client_error() || status.is_server_error())
                        || res.extensions().get::<Normalized>().is_some()
                    {
                        let secrets = this.secrets.take().unwrap_or_default();
                        return Poll::Ready(Ok(wrap_success(res, secrets, *this.family)));
                    }
                    let (parts, body) = res.into_parts();
                    this.state.set(State::Reading {
                        parts: Some(parts),
                        body,
                        buf: BytesMut::new(),
                    });
                }
                StateProj::Reading {
                    parts,
                    mut body,
                    buf,
                } => {
                    // Read at most RAW_LIMIT bytes; an error or the limit ends reading.
                    loop {
                        if buf.len() >= RAW_LIMIT {
                            break;
                        }
                        match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => {
                                if let Ok(data) = frame.into_data() {
                                    buf.extend_from_slice(&data);
                                }
                            }
                            Some(Err(_)) | None => break,
                        }
                    }
                    let parts = parts.take().expect("polled after completion");
                    let secrets = this.secrets.take().unwrap_or_default();
                    let e = secrets
                        .with(|s| Error::from_response(parts.status, &parts.headers, buf, s));
                    return Poll::Ready(Ok(error_response(&e, &secrets, *this.family)));
                }
            }
        }
    }
}

fn error_response<RB>(
    e: &Error,
    secrets: &ClientSecrets,
    family: Family,
) -> Response<NormalizedBody<RB>> {
    log_error(e);
    let data = secrets.with(|s| e.to_json_in(family, s));
    let mut res = Response::new(NormalizedBody {
        kind: Kind::Full { data: Some(data) },
    });
    e.decorate(&mut res);
    res
}

fn log_error(e: &Error) {
    if e.status().is_server_error() {
        tracing::warn!(status = e.status().as_u16(), reason = e.reason().as_str(), provider = e.provider(), error = %e, "request failed");
    } else {
        tracing::debug!(status = e.status().as_u16(), reason = e.reason().as_str(), error = %e, "request refused");
    }
}

fn wrap_success<RB>(
    res: Response<RB>,
    secrets: ClientSecrets,
    family: Family,
) -> Response<NormalizedBody<RB>> {
    let sse = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let model = res.extensions().get::<Served>().map(|s| s.model.clone());
    res.map(|inner| NormalizedBody {
        kind: Kind::Stream {
            inner,
            sse: sse.then(|| {
                Box::new(SseState {
                    model,
                    secrets,
                    family,
                    last: [0; 4],
                    seen_data: false,
                })
            }),
            done: false,
        },
    })
}

/// What an SSE stream needs to end itself properly if it fails.
struct SseState {
    model: Option<Arc<str>>,
    secrets: ClientSecrets,
    family: Family,
    /// The last four bytes sent, to know whether an event was left open.
    last: [u8; 4],
    seen_data: bool,
}

impl SseState {
    fn observe(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.seen_data = true;
        if data.len() >= 4 {
            self.last.copy_from_slice(&data[data.len() - 4..]);
        } else {
            let keep = 4 - data.len();
            self.last.copy_within(4 - keep.., 0);
            self.last[keep..].copy_from_slice(data);
        }
    }

    fn at_event_boundary(&self) -> bool {
        !self.seen_data
            || self.last[2..] == *b"\n\n"
            || self.last == *b"\r\n\r\n"
            || self.last[2..] == *b"\r\r"
    }

    fn tail(&self, e: &Error) -> Bytes {
        let tail = self
            .secrets
            .with(|s| e.to_sse_tail_in(self.family, self.model.as_deref().unwrap_or(""), s));
        if self.at_event_boundary() {
            tail
        } else {
            // Close the event the upstream left half-written before ours.
            let mut out = BytesMut::with_capacity(tail.len() + 2);
            out.extend_from_slice(b"\n\n");
            out.extend_from_slice(&tail);
            out.freeze()
        }
    }
}

/// The body of a normalized response: the inner body (SSE streams end with
/// error events instead of failing), or a normalized error's JSON.
#[pin_project]
pub struct NormalizedBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project(project = KindProj)]
enum Kind<B> {
    Stream {
        #[pin]
        inner: B,
        sse: Option<Box<SseState>>,
        done: bool,
    },
    Full {
        data: Option<Bytes>,
    },
}

impl<B> HttpBody for NormalizedBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { inner, sse, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                match ready!(inner.poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let (Some(state), Some(data)) = (sse.as_mut(), frame.data_ref()) {
                            state.observe(data);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => {
                        *done = true;
                        let e = error::from_boxed(e.into());
                        log_error(&e);
                        match sse {
                            Some(state) => Poll::Ready(Some(Ok(Frame::data(state.tail(&e))))),
                            // Not a stream the client can read an error event
                            // from: abort, so the client sees an incomplete body.
                            None => Poll::Ready(Some(Err(e))),
                        }
                    }
                    None => {
                        *done = true;
                        Poll::Ready(None)
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Stream { inner, done, .. } => *done || inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            // An SSE stream may grow by its error tail: no upper bound.
            Kind::Stream {
                inner,
                sse: Some(_),
                ..
            } => {
                let mut h = SizeHint::new();
                h.set_lower(inner.size_hint().lower());
                h
            }
            Kind::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;
    use crate::body::Body;
    use http::StatusCode;
    use http_body_util::{BodyExt, StreamBody};
    use serde_json::Value;
    use tower::{ServiceExt, service_fn};

    async fn run<F, Fut>(req: Request<Body>, f: F) -> (StatusCode, HeaderMap, String)
    where
        F: FnMut(Request<Body>) -> Fut,
        Fut: Future<Output = Result<Response<Body>, Error>>,
    {
        let svc = NormalizeErrorsLayer::new().layer(service_fn(f));
        let res = svc.oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    fn plain(status: u16, ct: Option<&str>, body: &'static str) -> Response<Body> {
        let mut r = Response::new(Body::full(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(ct) = ct {
            r.headers_mut().insert(CONTENT_TYPE, ct.parse().unwrap());
        }
        r
    }

    #[tokio::test]
    async fn typed_errors_become_the_contract() {
        let (status, headers, body) = run(Request::new(Body::empty()), |_| async {
            Err(Error::new(Reason::UpstreamRateLimited, "slow down")
                .with_retry_after(std::time::Duration::from_secs(6)))
        })
        .await;
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "6");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], 429);
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["metadata"]["reason"], "upstream_rate_limited");
        assert_eq!(v["error"]["metadata"]["retry_after_s"], 6);
    }

    #[tokio::test]
    async fn odd_non_2xx_bodies_are_normalized() {
        let cases: Vec<(u16, Option<&str>, &'static str)> = vec![
            (
                500,
                Some("text/html"),
                "<html><body><h1>Oops</h1></body></html>",
            ),
            (502, Some("text/plain"), "Bad Gateway"),
            (503, None, ""),
            (
                404,
                Some("application/json"),
                r#"{"detail":"nothing here"}"#,
            ),
            (
                400,
                Some("application/json"),
                r#"{"error":{"message":"their own shape","code":"x"}}"#,
            ),
            (418, None, "\u{1}\u{2}binary"),
        ];
        for (code, ct, raw) in cases {
            let (status, headers, body) = run(Request::new(Body::empty()), move |_| async move {
                Ok(plain(code, ct, raw))
            })
            .await;
            assert_eq!(status.as_u16(), code);
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            let v: Value =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{code}: {e}: {body}"));
            assert_eq!(v["error"]["code"], code);
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
            assert_eq!(v["error"]["type"], error::error_type(status));
        }
    }

    #[tokio::test]
    async fn success_passes_untouched() {
        let (status, _, body) = run(Request::new(Body::empty()), |_| async {
            Ok(plain(200, Some("application/json"), "{\"ok\":true}"))
        })
        .await;
        assert_eq!(status, 200);
        assert_eq!(body, "{\"ok\":true}");
    }

    #[tokio::test]
    async fn client_key_never_echoed() {
        let key = "tg-abcd-0000000000secretsecret";
        let mut req = Request::new(Body::empty());
        req.headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        let (_, _, body) = run(req, move |_| async move {
            Err(Error::new(Reason::UnknownKey, format!("unknown key {key}")))
        })
        .await;
        assert!(!body.contains("secretsecret"), "{body}");
        let mut req = Request::new(Body::empty());
        req.headers_mut()
            .insert("x-api-key", "plainsecret1".parse().unwrap());
        let (_, _, body) = run(req, |_| async {
            Ok(plain(401, None, "bad key plainsecret1"))
        })
        .await;
        assert!(!body.contains("plainsecret1"), "{body}");
    }

    #[tokio::test]
    async fn boxed_errors_are_normalized() {
        let svc = NormalizeErrorsLayer::new().layer(service_fn(|_: Request<Body>| async {
            Err::<Response<Body>, tower::BoxError>("boom".into())
        }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(res.status(), 500);
    }

    fn sse_response(frames: Vec<Result<&'static str, Error>>) -> Response<Body> {
        let stream = futures_util::stream::iter(
            frames
                .into_iter()
                .map(|f| f.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))),
        );
        let mut r = Response::new(Body::new(StreamBody::new(stream)));
        r.headers_mut()
            .insert(CONTENT_TYPE, "text/event-stream".parse().unwrap());
        r.extensions_mut().insert(Served {
            provider: "p".into(),
            model: "up-model".into(),
        });
        r
    }

    #[tokio::test]
    async fn mid_stream_failure_ends_with_error_event_and_done() {
        let (status, _, body) = run(Request::new(Body::empty()), |_| async {
            Ok(sse_response(vec![
                Ok("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
                Err(Error::new(Reason::UpstreamStreamCut, "cut")),
                Ok("data: never\n\n"),
            ]))
        })
        .await;
        assert_eq!(status, 200);
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{body}");
        assert!(events[1].contains("\"upstream_stream_cut\""));
        assert!(events[2].contains("\"finish_reason\":\"error\""));
        assert!(events[2].contains("\"model\":\"up-model\""));
        assert_eq!(events[3], "data: [DONE]");
        assert!(!body.contains("never"));
    }

    #[tokio::test]
    async fn half_written_event_is_closed_before_the_error() {
        let (_, _, body) = run(Request::new(Body::empty()), |_| async {
            Ok(sse_response(vec![
                Ok("data: {\"choices\":[{\"del"),
                Err(Error::new(Reason::UpstreamStreamCut, "cut")),
            ]))
        })
        .await;
        assert!(
            body.starts_with("data: {\"choices\":[{\"del\n\ndata: {\"error\""),
            "{body}"
        );
        assert!(body.ends_with("data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn non_sse_body_failure_aborts() {
        let svc = NormalizeErrorsLayer::new().layer(service_fn(|_: Request<Body>| async {
            let stream = futures_util::stream::iter(vec![
                Ok(Frame::data(Bytes::from_static(b"{\"partial\":"))),
                Err(Error::new(Reason::UpstreamStreamCut, "cut")),
            ]);
            Ok::<_, Error>(Response::new(Body::new(StreamBody::new(stream))))
        }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        assert!(res.into_body().collect().await.is_err());
    }
}
