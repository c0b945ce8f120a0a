//! `ModelAccess`: the key may use this model; `GET /v1/models` lists exactly
//! what the key may use.
//!
//! A key's grants are model names, access-group names (defined in the
//! config, each a list of model names and patterns) and patterns (`*` matches
//! any run of characters: `openai/*`, `*-mini`, `*` for everything). They are
//! compiled once into [`Grants`] when a key is loaded or changed, and
//! [`Grants::allows`] is the one function that decides: [`ModelAccess`] calls
//! it for inference and [`ModelList`] for `GET /v1/models`, so the two cannot
//! disagree. A key with no grants may use nothing.
//!
//! `ModelAccess` checks the request's `model` and every entry of its
//! per-request fallback list (`"models": [...]`): a forbidden entry refuses
//! the request with 403 `model_not_allowed`, naming only the model refused,
//! rather than being skipped, so no inner layer (fallback, router) can reach
//! a model the key may not use. It needs the parsed request and the caller's
//! grants by type (`Request<Parsed<I>>` with `I:` [`HasGrants`]), so it cannot
//! be stacked without `ReadRequest` and an authentication layer.
//!
//! ```
//! use http::{Request, Response, StatusCode};
//! use tollgate::access::{AccessGroups, Grants, ModelAccessLayer};
//! use tollgate::read_request::{Identified, Parsed, ReadRequestLayer};
//! use tollgate::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(ModelAccessLayer::new())
//!     .service(service_fn(|req: Request<Parsed<Grants>>| async move {
//!         Ok::<_, Error>(Response::new(Body::full(req.body().model().to_owned())))
//!     }));
//! let grants = Grants::compile(&["openai/*"], &AccessGroups::default());
//! let ask = |model: &str| {
//!     Request::post("/v1/chat/completions")
//!         .body(Identified { identity: grants.clone(), body: Body::full(format!(r#"{{"model":"{model}"}}"#)) })
//!         .unwrap()
//! };
//! assert_eq!(svc.clone().oneshot(ask("openai/gpt-4o")).await.unwrap().status(), StatusCode::OK);
//! let refused = svc.oneshot(ask("anthropic/claude")).await.unwrap_err();
//! assert_eq!(refused.status(), StatusCode::FORBIDDEN);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::{Error, Reason};
use crate::read_request::{Identified, Parsed};

/// Named lists of model names and patterns, usable as one grant.
#[derive(Clone, Debug, Default)]
pub struct AccessGroups {
    groups: Arc<HashMap<String, Vec<String>>>,
}

impl AccessGroups {
    /// Access groups from `(name, members)` pairs.
    pub fn new<N, M, S>(groups: impl IntoIterator<Item = (N, M)>) -> Self
    where
        N: Into<String>,
        M: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AccessGroups {
            groups: Arc::new(
                groups
                    .into_iter()
                    .map(|(n, m)| (n.into(), m.into_iter().map(Into::into).collect()))
                    .collect(),
            ),
        }
    }

    /// The members of a group.
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.groups.get(name).map(Vec::as_slice)
    }

    /// Whether a group of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }
}

/// One compiled set of rules: exact names in a hash set, and patterns
/// sorted by shape so the common ones cost a `starts_with`, an `ends_with`
/// or a substring search rather than a general match.
#[derive(Clone, Default)]
struct Rules {
    all: bool,
    exact: crate::Set<Box<str>>,
    prefixes: Vec<Box<str>>,
    suffixes: Vec<Box<str>>,
    infixes: Vec<memchr::memmem::Finder<'static>>,
    patterns: Vec<Box<str>>,
}

impl Rules {
    fn add(&mut self, grant: &str) {
        let stars = grant.bytes().filter(|b| *b == b'*').count();
        let inner = grant.trim_matches('*');
        if stars == 0 {
            self.exact.insert(grant.into());
        } else if inner.is_empty() {
            self.all = true;
        } else if inner.contains('*') {
            self.patterns.push(grant.into());
        } else {
            match (grant.starts_with('*'), grant.ends_with('*')) {
                (false, true) => self.prefixes.push(inner.into()),
                (true, false) => self.suffixes.push(inner.into()),
                _ => self
                    .infixes
                    .push(memchr::memmem::Finder::new(inner.as_bytes()).into_owned()),
            }
        }
    }

    fn allows(&self, model: &str) -> bool {
        self.all
            || self.exact.contains(model)
            || self.prefixes.iter().any(|p| model.starts_with(&**p))
            || self.suffixes.iter().any(|p| model.ends_with(&**p))
            || self
                .infixes
                .iter()
                .any(|f| f.find(model.as_bytes()).is_some())
            || self.patterns.iter().any(|p| glob(p, model))
    }

    fn is_empty(&self) -> bool {
        !self.all
            && self.exact.is_empty()
            && self.prefixes.is_empty()
            && self.suffixes.is_empty()
            && self.infixes.is_empty()
            && self.patterns.is_empty()
    }
}

/// `*` matches any run of characters (possibly empty); everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// What a key may use, compiled for a constant-cost check: its own grants,
/// and its team's grants as a ceiling when the team has any.
#[derive(Clone, Default)]
pub struct Grants {
    own: Arc<Rules>,
    ceiling: Option<Arc<Rules>>,
}

impl Grants {
    /// Nothing at all.
    pub fn none() -> Self {
        Grants::default()
    }

    /// Compiles grants: each an access-group name (expanded to its members),
    /// a pattern with `*`, or a model name.
    pub fn compile<S: AsRef<str>>(grants: &[S], groups: &AccessGroups) -> Self {
        Grants {
            own: Arc::new(rules(grants, groups)),
            ceiling: None,
        }
    }

    /// These grants, limited to what `ceiling` allows as well.
    pub fn within(mut self, ceiling: &Grants) -> Self {
        self.ceiling = Some(ceiling.own.clone());
        self
    }

    /// **The** decision: whether these grants allow `model`. Inference
    /// ([`ModelAccess`]) and listing ([`ModelList`]) both call this.
    pub fn allows(&self, model: &str) -> bool {
        self.own.allows(model) && self.ceiling.as_ref().is_none_or(|c| c.allows(model))
    }

    /// Whether these grants allow nothing at all.
    pub fn is_empty(&self) -> bool {
        self.own.is_empty()
    }
}

fn rules<S: AsRef<str>>(grants: &[S], groups: &AccessGroups) -> Rules {
    let mut r = Rules::default();
    for g in grants {
        let g = g.as_ref();
        match groups.get(g) {
            Some(members) => members.iter().for_each(|m| r.add(m)),
            None => r.add(g),
        }
    }
    r
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.own;
        f.debug_struct("Grants")
            .field("all", &r.all)
            .field("names", &r.exact.len())
            .field(
                "patterns",
                &(r.prefixes.len() + r.suffixes.len() + r.infixes.len() + r.patterns.len()),
            )
            .field("team_ceiling", &self.ceiling.is_some())
            .finish()
    }
}

/// An identity that carries grants (the authenticated key).
pub trait HasGrants {
    /// What the caller may use.
    fn grants(&self) -> &Grants;
}

impl HasGrants for Grants {
    fn grants(&self) -> &Grants {
        self
    }
}

/// The 403 for a model the caller may not use; names only that model.
pub fn not_allowed(model: &str, param: &str) -> Error {
    let hint = if param == "models" {
        " (named in `models`)"
    } else {
        ""
    };
    Error::new(
        Reason::ModelNotAllowed,
        format!(
            "This key may not use the model `{model}`{hint}. GET /v1/models lists the models it may use; ask your admin for access."
        ),
    )
    .with_meta("param", param)
}

/// Checks the request's `model` and its `models` list against the grants.
pub fn check(grants: &Grants, parsed: &crate::read_request::Summary) -> Result<(), Error> {
    if !grants.allows(&parsed.model) {
        return Err(not_allowed(&parsed.model, "model"));
    }
    match parsed.models.iter().find(|m| !grants.allows(m)) {
        Some(m) => Err(not_allowed(m, "models")),
        None => Ok(()),
    }
}

/// Applies [`ModelAccess`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelAccessLayer {
    _priv: (),
}

impl ModelAccessLayer {
    /// The layer.
    pub fn new() -> Self {
        ModelAccessLayer { _priv: () }
    }
}

impl<S> Layer<S> for ModelAccessLayer {
    type Service = ModelAccess<S>;

    fn layer(&self, inner: S) -> ModelAccess<S> {
        ModelAccess { inner }
    }
}

/// Refuses (403) a request for a model, or a `models` entry, that the
/// caller's grants do not allow (see the module docs).
#[derive(Clone, Debug)]
pub struct ModelAccess<S> {
    inner: S,
}

impl<S, I> Service<Request<Parsed<I>>> for ModelAccess<S>
where
    S: Service<Request<Parsed<I>>, Error = Error>,
    I: HasGrants,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Parsed<I>>) -> Self::Future {
        let parsed = req.body();
        match check(parsed.identity().grants(), parsed.summary()) {
            Ok(()) => {
                // Called at once: the readied service itself, no clone.
                ResponseFuture::calling(self.inner.call(req))
            }
            Err(e) => ResponseFuture::refused(e),
        }
    }
}

/// The future of [`ModelAccess`] (and of [`VirtualKeys`](crate::keys::VirtualKeys)):
/// the inner service's future, or an immediate refusal.
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

/// `GET /v1/models`: the models the caller may use, in OpenAI's list shape.
///
/// Built from the full list of model names (the router's groups); the
/// caller's grants filter it with [`Grants::allows`], the same function
/// inference uses. Stack it under an authentication layer, which hands it
/// `Request<Identified<I, B>>`.
#[derive(Clone, Debug)]
pub struct ModelList {
    models: Arc<[Box<str>]>,
}

impl ModelList {
    /// A listing over these model names (listed in the order given).
    pub fn new<S: Into<Box<str>>>(models: impl IntoIterator<Item = S>) -> Self {
        ModelList {
            models: models.into_iter().map(Into::into).collect(),
        }
    }

    /// The list's JSON for these grants.
    pub fn render(&self, grants: &Grants) -> bytes::Bytes {
        let data: Vec<serde_json::Value> = self
            .models
            .iter()
            .filter(|m| grants.allows(m))
            .map(|id| {
                serde_json::json!({"id": &**id, "object": "model", "created": 0, "owned_by": "tollgate"})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default()
            .into()
    }
}

impl<I: HasGrants, B> Service<Request<Identified<I, B>>> for ModelList {
    type Response = Response<Body>;
    type Error = Error;
    type Future = std::future::Ready<Result<Response<Body>, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Identified<I, B>>) -> Self::Future {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return std::future::ready(Err(Error::new(
                Reason::MethodNotAllowed,
                format!("{} is not allowed here; use GET.", req.method()),
            )));
        }
        let mut res = Response::new(Body::full(self.render(req.body().identity.grants())));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        std::future::ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_request::ReadRequestLayer;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    fn groups() -> AccessGroups {
        AccessGroups::new([("cheap", vec!["gpt-4o-mini", "mistral/*"])])
    }

    #[test]
    fn names_groups_and_patterns() {
        let g = Grants::compile(&["gpt-4o", "cheap", "openai/*", "*-embed-*"], &groups());
        for yes in [
            "gpt-4o",
            "gpt-4o-mini",
            "mistral/small",
            "openai/o3",
            "text-embed-3",
        ] {
            assert!(g.allows(yes), "{yes}");
        }
        for no in ["gpt-4", "cheap", "anthropic/claude", "openai", "embed-3"] {
            assert!(!g.allows(no), "{no}");
        }
        assert!(Grants::compile(&["*"], &groups()).allows("anything"));
        let g = Grants::compile(&["*-mini", "a*b*c", "**"], &groups());
        assert!(g.allows("x"), "`**` is everything");
        let g = Grants::compile(&["*-mini", "a*b*c"], &groups());
        assert!(g.allows("gpt-4o-mini") && !g.allows("gpt-4o-mini-2"));
        assert!(g.allows("aXbYc") && !g.allows("aXcYb"));
        assert!(!Grants::none().allows("gpt-4o"));
        assert!(Grants::none().is_empty());
    }

    #[test]
    fn team_ceiling() {
        let team = Grants::compile(&["openai/*"], &groups());
        let key = Grants::compile(&["*"], &groups()).within(&team);
        assert!(key.allows("openai/gpt-4o"));
        assert!(!key.allows("mistral/small"));
    }

    #[test]
    fn glob_edges() {
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*b*c", "acb"));
        assert!(glob("*", ""));
        assert!(!glob("a", ""));
        assert!(glob("**x", "yx"));
    }

    async fn ask(grants: &[&str], body: &'static str) -> Result<String, Error> {
        let grants = Grants::compile(grants, &groups());
        let svc = ReadRequestLayer::new(1024).layer(
            ModelAccessLayer::new().layer(service_fn(|req: Request<Parsed<Grants>>| async move {
                Ok::<_, Error>(req.body().model().to_owned())
            })),
        );
        let req = Request::post("/v1/chat/completions")
            .body(Identified {
                identity: grants,
                body: Body::full(body),
            })
            .unwrap();
        svc.oneshot(req).await
    }

    #[tokio::test]
    async fn inference_is_checked_with_the_fallback_list() {
        assert_eq!(
            ask(&["cheap"], r#"{"model":"gpt-4o-mini"}"#).await.unwrap(),
            "gpt-4o-mini"
        );
        let e = ask(&["cheap"], r#"{"model":"gpt-4o"}"#).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.reason(), Reason::ModelNotAllowed);
        assert!(e.message().contains("`gpt-4o`"), "{}", e.message());
        assert!(
            !e.message().contains("mini"),
            "names nothing else: {}",
            e.message()
        );
        assert_eq!(e.metadata()["param"], "model");

        let e = ask(
            &["cheap"],
            r#"{"model":"gpt-4o-mini","models":["mistral/x","gpt-4o"]}"#,
        )
        .await
        .unwrap_err();
        assert_eq!(e.reason(), Reason::ModelNotAllowed);
        assert!(e.message().contains("`gpt-4o`"), "{}", e.message());
        assert_eq!(e.metadata()["param"], "models");
        assert!(
            ask(
                &["cheap"],
                r#"{"model":"gpt-4o-mini","models":["mistral/x"]}"#
            )
            .await
            .is_ok()
        );
        let e = ask(&[], r#"{"model":"gpt-4o-mini"}"#).await.unwrap_err();
        assert_eq!(e.reason(), Reason::ModelNotAllowed);
    }

    #[tokio::test]
    async fn listing_uses_the_same_function() {
        let list = ModelList::new(["gpt-4o", "gpt-4o-mini", "mistral/small", "openai/o3"]);
        let grants = Grants::compile(&["cheap"], &groups());
        let req = Request::get("/v1/models")
            .body(Identified {
                identity: grants.clone(),
                body: Body::empty(),
            })
            .unwrap();
        let res = list.clone().oneshot(req).await.unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["gpt-4o-mini", "mistral/small"]);
        for id in ["gpt-4o", "gpt-4o-mini", "mistral/small", "openai/o3"] {
            assert_eq!(ids.contains(&id), grants.allows(id));
        }
        let post = Request::post("/v1/models")
            .body(Identified {
                identity: grants,
                body: Body::empty(),
            })
            .unwrap();
        assert_eq!(
            list.oneshot(post).await.unwrap_err().reason(),
            Reason::MethodNotAllowed
        );
    }
}
