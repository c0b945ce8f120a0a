//! `Identify`: who is calling, decided by your own authentication.
//!
//! The policy layers ([`ModelAccess`](crate::access::ModelAccess),
//! `RateLimit`, `Budget`, `FairQueue`) read the caller's identity by type:
//! after [`ReadRequest`](crate::read_request::ReadRequest) a request is
//! `Request<`[`Parsed`](crate::read_request::Parsed)`<I>>`, and `I` is
//! whatever the layer outside `ReadRequest` attached through
//! [`Identified`]. `Identify` is that layer, for any identity type:
//!
//! - [`IdentifyLayer::new`] with an [`Identifier`]: any closure
//!   `Fn(&http::request::Parts) -> Result<I, Error>` is one, so an identity
//!   can come from a header, a client certificate's subject your TLS
//!   acceptor put in the extensions, a session, a JWT you verify;
//! - [`from_extension`]: the identity an outer middleware (an
//!   axum `middleware::from_fn`, your OIDC layer) inserted into the
//!   request's extensions, cloned from there;
//! - `keys::VirtualKeysLayer` (feature `keys`) is `IdentifyLayer<Keyring>`:
//!   the `keys::Keyring` is the identifier, and its identity the virtual
//!   `keys::Key`.
//!
//! A refusal is the identifier's [`Error`], answered before the inner
//! service sees the request. For a caller-supplied check, use
//! [`Reason::Unauthenticated`] (401 `unauthenticated`): it says nothing of
//! keys or headers, and your message says what the caller should do.
//! [`unauthenticated`] builds one. Like every error of the stack it is
//! rendered by [`NormalizeErrors`](crate::normalize::NormalizeErrors) in the
//! route's family shape.
//!
//! ```
//! use http::{Request, Response, StatusCode, request::Parts};
//! use tollgate::identify::{IdentifyLayer, unauthenticated};
//! use tollgate::read_request::{Parsed, ReadRequestLayer};
//! use tollgate::{Body, Error, Reason};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! /// Your own identity type.
//! #[derive(Clone, Debug)]
//! struct Caller {
//!     team: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(IdentifyLayer::new(|parts: &Parts| {
//!         match parts.headers.get("x-team").and_then(|v| v.to_str().ok()) {
//!             Some(team) => Ok(Caller { team: team.to_owned() }),
//!             None => Err(unauthenticated("Send your team in `x-team`.")),
//!         }
//!     }))
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .service(service_fn(|req: Request<Parsed<Caller>>| async move {
//!         Ok::<_, Error>(Response::new(Body::full(req.body().identity().team.clone())))
//!     }));
//! let req = Request::post("/v1/chat/completions")
//!     .header("x-team", "search")
//!     .body(Body::full(r#"{"model":"m"}"#))
//!     .unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
//! let anonymous = Request::post("/v1/chat/completions").body(Body::full("{}")).unwrap();
//! let refused = svc.oneshot(anonymous).await.unwrap_err();
//! assert_eq!((refused.status(), refused.reason()), (StatusCode::UNAUTHORIZED, Reason::Unauthenticated));
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use http::request::Parts;
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::error::{Error, Reason};
pub use crate::read_request::Identified;

/// Decides who is calling from the request's parts (method, URI, headers,
/// extensions), or refuses the request.
///
/// Implemented by every `Fn(&Parts) -> Result<I, Error>`, by
/// [`FromExtension`], and (feature `keys`) by `keys::Keyring`.
pub trait Identifier {
    /// The identity the inner layers receive.
    type Identity;

    /// The caller of the request with these parts, or why it is refused.
    fn identify(&self, parts: &Parts) -> Result<Self::Identity, Error>;
}

impl<F, I> Identifier for F
where
    F: Fn(&Parts) -> Result<I, Error>,
{
    type Identity = I;

    fn identify(&self, parts: &Parts) -> Result<I, Error> {
        self(parts)
    }
}

/// The 401 `unauthenticated` refusal of a caller-supplied check, with your
/// message (say what the caller should do; name no secret).
pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Error {
    Error::new(Reason::Unauthenticated, message)
}

/// The identity an outer middleware inserted into the request's extensions
/// (`req.extensions_mut().insert(identity)`), cloned from there. A request
/// without one is refused with 401 `unauthenticated`: the outer middleware
/// let it through without deciding who it is, or is not stacked.
pub struct FromExtension<I> {
    _identity: PhantomData<fn() -> I>,
}

impl<I> FromExtension<I> {
    /// Takes an `I` from the extensions.
    pub fn new() -> Self {
        FromExtension {
            _identity: PhantomData,
        }
    }
}

impl<I> Default for FromExtension<I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I> Clone for FromExtension<I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I> Copy for FromExtension<I> {}

impl<I> fmt::Debug for FromExtension<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FromExtension")
            .field(&std::any::type_name::<I>())
            .finish()
    }
}

impl<I: Clone + Send + Sync + 'static> Identifier for FromExtension<I> {
    type Identity = I;

    fn identify(&self, parts: &Parts) -> Result<I, Error> {
        parts.extensions.get::<I>().cloned().ok_or_else(|| {
            unauthenticated(
                "This request is not authenticated; send the credentials this service expects.",
            )
        })
    }
}

/// Applies [`Identify`] with an [`Identifier`].
#[derive(Clone)]
pub struct IdentifyLayer<F> {
    identifier: F,
}

impl<F> IdentifyLayer<F> {
    /// Identifies callers with `identifier` (a closure over the request's
    /// [`Parts`], or any [`Identifier`]).
    pub fn new(identifier: F) -> Self {
        IdentifyLayer { identifier }
    }

    /// The identifier.
    pub fn identifier(&self) -> &F {
        &self.identifier
    }
}

/// The layer that takes the identity (`I`) an outer middleware inserted
/// into the request's extensions; 401 `unauthenticated` when there is none
/// (see [`FromExtension`]).
pub fn from_extension<I>() -> IdentifyLayer<FromExtension<I>> {
    IdentifyLayer::new(FromExtension::new())
}

impl<F> fmt::Debug for IdentifyLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyLayer")
            .field("identifier", &std::any::type_name::<F>())
            .finish()
    }
}

impl<S, F: Clone> Layer<S> for IdentifyLayer<F> {
    type Service = Identify<S, F>;

    fn layer(&self, inner: S) -> Identify<S, F> {
        Identify {
            inner,
            identifier: self.identifier.clone(),
        }
    }
}

/// Identifies the caller and hands the inner service
/// `Request<Identified<I, B>>`, or refuses (see the module docs).
#[derive(Clone)]
pub struct Identify<S, F> {
    inner: S,
    identifier: F,
}

impl<S: fmt::Debug, F> fmt::Debug for Identify<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identify")
            .field("inner", &self.inner)
            .field("identifier", &std::any::type_name::<F>())
            .finish()
    }
}

impl<S, F, B> Service<Request<B>> for Identify<S, F>
where
    F: Identifier,
    S: Service<Request<Identified<F::Identity, B>>, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        match self.identifier.identify(&parts) {
            // Called at once: the readied service itself, no clone.
            Ok(identity) => ResponseFuture::calling(
                self.inner
                    .call(Request::from_parts(parts, Identified { identity, body })),
            ),
            Err(e) => ResponseFuture::refused(e),
        }
    }
}

/// The future of [`Identify`] (and of
/// [`ModelAccess`](crate::access::ModelAccess)): the inner service's
/// future, or an immediate refusal.
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    state: State<F>,
}

#[pin_project(project = StateProj)]
enum State<F> {
    Refused(Option<Error>),
    Calling(#[pin] F),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn calling(fut: F) -> Self {
        ResponseFuture {
            state: State::Calling(fut),
        }
    }

    pub(crate) fn refused(e: Error) -> Self {
        ResponseFuture {
            state: State::Refused(Some(e)),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, R> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, Error>>,
{
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling(fut) => fut.poll(cx),
            StateProj::Refused(e) => Poll::Ready(Err(e
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::read_request::{Parsed, ReadRequestLayer};
    use http::{Response, StatusCode};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{ServiceExt, service_fn};

    #[derive(Clone, Debug, PartialEq)]
    struct User(&'static str);

    fn by_header(parts: &Parts) -> Result<User, Error> {
        match parts.headers.get("x-user").map(|v| v.as_bytes()) {
            Some(b"ada") => Ok(User("ada")),
            Some(_) => Err(unauthenticated("Unknown user.")),
            None => Err(unauthenticated("Send `x-user`.")),
        }
    }

    /// The inner service: echoes the identity; counts its calls.
    fn echo(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<
        Request<Parsed<User>>,
        Response = Response<Body>,
        Error = Error,
        Future = impl Future<Output = Result<Response<Body>, Error>>,
    > + Clone {
        service_fn(move |req: Request<Parsed<User>>| {
            calls.fetch_add(1, Ordering::Relaxed);
            let who = req.body().identity().0;
            async move { Ok::<_, Error>(Response::new(Body::full(who))) }
        })
    }

    fn post(user: Option<&str>) -> Request<Body> {
        let mut req = Request::post("/v1/chat/completions");
        if let Some(u) = user {
            req = req.header("x-user", u);
        }
        req.body(Body::full(r#"{"model":"m"}"#)).unwrap()
    }

    #[tokio::test]
    async fn a_closure_identifies_and_refusals_never_reach_the_inner_service() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = IdentifyLayer::new(by_header)
            .layer(ReadRequestLayer::new(1024).layer(echo(calls.clone())));
        let res = svc.clone().oneshot(post(Some("ada"))).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ada");
        for (user, message) in [(None, "Send `x-user`."), (Some("eve"), "Unknown user.")] {
            let e = svc.clone().oneshot(post(user)).await.unwrap_err();
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(e.reason(), Reason::Unauthenticated);
            assert_eq!(e.reason().as_str(), "unauthenticated");
            assert_eq!(e.message(), message);
        }
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn from_an_extension_an_outer_middleware_inserted() {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc =
            from_extension::<User>().layer(ReadRequestLayer::new(1024).layer(echo(calls.clone())));
        let mut req = post(None);
        req.extensions_mut().insert(User("ada"));
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ada");

        // Another type in the extensions is not an identity.
        let mut req = post(None);
        req.extensions_mut().insert("ada");
        let e = svc.oneshot(req).await.unwrap_err();
        assert_eq!(e.reason(), Reason::Unauthenticated);
        assert!(!e.message().contains("key"), "{}", e.message());
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn debug_names_the_identifier_not_its_state() {
        let layer = IdentifyLayer::new(FromExtension::<User>::new());
        let text = format!("{layer:?}");
        assert!(text.contains("FromExtension"), "{text}");
    }
}
