//! `ModelAccess`: the caller may use this model; `GET /v1/models` lists
//! exactly what the caller may use.
//!
//! Grants are model names, access-group names (each a list of model names
//! and patterns, [`AccessGroups`]) and patterns (`*` matches any run of
//! characters: `openai/*`, `*-mini`, `*` for everything). They are compiled
//! once into [`Grants`] (when a virtual key is loaded or changed, or when
//! your application builds its own), and [`Grants::allows`] is the one
//! function that decides: [`ModelAccess`] calls it for inference and
//! [`ModelList`] for `GET /v1/models`, so the two cannot disagree. Grants
//! that name nothing allow nothing.
//!
//! Where the grants come from is a [`GrantsOf`] source, the same for both:
//! the identity's own ([`ModelAccessLayer::new`], for an identity that is
//! [`HasGrants`], as the virtual key `keys::Key` is), or a
//! closure `Fn(&I) -> Grants` over your own identity type
//! ([`ModelAccessLayer::with_grants`], [`ModelList::grants`]; see
//! [`identify`](crate::identify) for how an identity gets there). The layer
//! needs no feature: it works without virtual keys.
//!
//! `ModelAccess` checks the request's `model` and every entry of its
//! per-request fallback list (`"models": [...]`): a forbidden entry refuses
//! the request with 403 `model_not_allowed`, naming only the model refused,
//! rather than being skipped, so no inner layer (fallback, router) can reach
//! a model the caller may not use. The message ends with advice in your
//! words ([`ModelAccessLayer::advice`]). It needs the parsed request and the
//! caller's identity by type (`Request<Parsed<I>>`), so it cannot be
//! stacked without `ReadRequest` and an identifying layer.
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
//!
//! With your own identity type (here a team name), the grants come from a
//! closure, and the refusal advises in your words:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use http::{Request, Response, StatusCode};
//! use tollgate::access::{AccessGroups, Grants, ModelAccessLayer};
//! use tollgate::read_request::{Identified, Parsed, ReadRequestLayer};
//! use tollgate::{Body, Error};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let groups = AccessGroups::default();
//! let by_team = Arc::new(HashMap::from([("search", Grants::compile(&["gpt-4o-mini"], &groups))]));
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(
//!         ModelAccessLayer::with_grants(move |team: &&'static str| {
//!             by_team.get(team).cloned().unwrap_or_default()
//!         })
//!         .advice("Ask #ml-platform for access."),
//!     )
//!     .service(service_fn(|_req: Request<Parsed<&'static str>>| async {
//!         Ok::<_, Error>(Response::new(Body::empty()))
//!     }));
//! let ask = |team: &'static str| {
//!     Request::post("/v1/chat/completions")
//!         .body(Identified { identity: team, body: Body::full(r#"{"model":"gpt-4o-mini"}"#) })
//!         .unwrap()
//! };
//! assert_eq!(svc.clone().oneshot(ask("search")).await.unwrap().status(), StatusCode::OK);
//! let refused = svc.oneshot(ask("ads")).await.unwrap_err();
//! assert_eq!(refused.message(), "You may not use the model `gpt-4o-mini`. Ask #ml-platform for access.");
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use tower::{Layer, Service};

use crate::body::Body;
use crate::error::{Error, Reason};
use crate::read_request::{Identified, Parsed};

/// Named lists of model names and patterns, usable as one grant.
#[derive(Clone, Debug, Default)]
pub struct AccessGroups {
    groups: Arc<crate::Map<String, Vec<String>>>,
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

/// An identity that carries grants (the authenticated virtual key, or your
/// own identity type): [`ModelAccessLayer::new`] and [`ModelList::new`] read
/// the grants from it.
pub trait HasGrants {
    /// What the caller may use.
    fn grants(&self) -> &Grants;
}

impl HasGrants for Grants {
    fn grants(&self) -> &Grants {
        self
    }
}

/// Where [`ModelAccess`] and [`ModelList`] find the caller's [`Grants`]:
/// one source for both, so inference and the listing cannot disagree.
///
/// Implemented by [`FromIdentity`] (the identity's own grants, for an
/// identity that is [`HasGrants`]) and by every closure `Fn(&I) -> Grants`
/// (grants looked up for your own identity type `I`; keep them compiled,
/// e.g. in a map of `Grants`, since cloning one is two reference counts).
pub trait GrantsOf<I> {
    /// The grants of `identity`.
    fn grants_of<'a>(&'a self, identity: &'a I) -> Cow<'a, Grants>;
}

/// The caller's grants are its identity's own ([`HasGrants`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct FromIdentity;

impl<I: HasGrants> GrantsOf<I> for FromIdentity {
    fn grants_of<'a>(&'a self, identity: &'a I) -> Cow<'a, Grants> {
        Cow::Borrowed(identity.grants())
    }
}

impl<F, I> GrantsOf<I> for F
where
    F: Fn(&I) -> Grants,
{
    fn grants_of<'a>(&'a self, identity: &'a I) -> Cow<'a, Grants> {
        Cow::Owned(self(identity))
    }
}

/// What a refusal advises when the layer is given no advice of its own.
const DEFAULT_ADVICE: &str = "Ask your admin for access.";

/// The 403 for a model the caller may not use; names only that model, and
/// ends with the default advice (see [`ModelAccessLayer::advice`]).
pub fn not_allowed(model: &str, param: &str) -> Error {
    refusal(model, param, DEFAULT_ADVICE)
}

fn refusal(model: &str, param: &str, advice: &str) -> Error {
    let hint = if param == "models" {
        " (named in `models`)"
    } else {
        ""
    };
    Error::new(
        Reason::ModelNotAllowed,
        format!("You may not use the model `{model}`{hint}. {advice}"),
    )
    .with_meta("param", param)
}

/// Checks the request's `model` and its `models` list against the grants.
pub fn check(grants: &Grants, parsed: &crate::read_request::Summary) -> Result<(), Error> {
    check_with(grants, parsed, DEFAULT_ADVICE)
}

fn check_with(
    grants: &Grants,
    parsed: &crate::read_request::Summary,
    advice: &str,
) -> Result<(), Error> {
    if !grants.allows(&parsed.model) {
        return Err(refusal(&parsed.model, "model", advice));
    }
    match parsed.models.iter().find(|m| !grants.allows(m)) {
        Some(m) => Err(refusal(m, "models", advice)),
        None => Ok(()),
    }
}

/// Applies [`ModelAccess`], with the grants from `G` ([`GrantsOf`]).
#[derive(Clone, Debug)]
pub struct ModelAccessLayer<G = FromIdentity> {
    grants: G,
    advice: Arc<str>,
}

impl ModelAccessLayer<FromIdentity> {
    /// The layer, reading the grants from the identity (`I:` [`HasGrants`]).
    pub fn new() -> Self {
        ModelAccessLayer::with_grants(FromIdentity)
    }
}

impl Default for ModelAccessLayer<FromIdentity> {
    fn default() -> Self {
        Self::new()
    }
}

impl<G> ModelAccessLayer<G> {
    /// The layer, with the grants from `grants`: a closure `Fn(&I) -> Grants`
    /// over your identity type, or any [`GrantsOf`].
    pub fn with_grants(grants: G) -> Self {
        ModelAccessLayer {
            grants,
            advice: DEFAULT_ADVICE.into(),
        }
    }

    /// The sentence that ends every refusal, in your application's words
    /// (default: "Ask your admin for access."). The reference gateway, which
    /// serves `GET /v1/models`, points there.
    pub fn advice(mut self, advice: impl Into<Arc<str>>) -> Self {
        self.advice = advice.into();
        self
    }
}

impl<S, G: Clone> Layer<S> for ModelAccessLayer<G> {
    type Service = ModelAccess<S, G>;

    fn layer(&self, inner: S) -> ModelAccess<S, G> {
        ModelAccess {
            inner,
            grants: self.grants.clone(),
            advice: self.advice.clone(),
        }
    }
}

/// Refuses (403) a request for a model, or a `models` entry, that the
/// caller's grants do not allow (see the module docs).
#[derive(Clone, Debug)]
pub struct ModelAccess<S, G = FromIdentity> {
    inner: S,
    grants: G,
    advice: Arc<str>,
}

impl<S, I, G> Service<Request<Parsed<I>>> for ModelAccess<S, G>
where
    S: Service<Request<Parsed<I>>, Error = Error>,
    G: GrantsOf<I>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Parsed<I>>) -> Self::Future {
        let parsed = req.body();
        let grants = self.grants.grants_of(parsed.identity());
        match check_with(&grants, parsed.summary(), &self.advice) {
            Ok(()) => {
                drop(grants);
                // Called at once: the readied service itself, no clone.
                ResponseFuture::calling(self.inner.call(req))
            }
            Err(e) => ResponseFuture::refused(e),
        }
    }
}

/// The future of [`ModelAccess`]: the inner service's, or an immediate
/// 403 (the same type as [`Identify`](crate::identify::Identify)'s).
pub use crate::identify::ResponseFuture;

/// `GET /v1/models`: the models the caller may use, in OpenAI's list shape;
/// `GET /v1/models/{id}` (OpenAI's `models.retrieve`): that model's object
/// when the caller may use it and it is served, 403 `model_not_allowed`
/// when not granted (served or not: the caller learns nothing beyond its
/// grants, as with inference), 404 `model_not_found` when granted but not
/// served.
///
/// Built from the full list of model names (the router's groups); the
/// caller's grants filter it with [`Grants::allows`], the same function
/// inference uses, from the same source ([`GrantsOf`]: the identity's own
/// by default, or [`ModelList::grants`]). Stack it under an identifying
/// layer, which hands it `Request<Identified<I, B>>`.
#[derive(Clone, Debug)]
pub struct ModelList<G = FromIdentity> {
    models: Arc<[Box<str>]>,
    grants: G,
}

impl ModelList<FromIdentity> {
    /// A listing over these model names (listed in the order given), for
    /// identities that are [`HasGrants`].
    pub fn new<S: Into<Box<str>>>(models: impl IntoIterator<Item = S>) -> Self {
        ModelList {
            models: models.into_iter().map(Into::into).collect(),
            grants: FromIdentity,
        }
    }
}

impl<G> ModelList<G> {
    /// The same listing, with the grants from `grants` (give it the source
    /// [`ModelAccessLayer::with_grants`] has).
    pub fn grants<H>(self, grants: H) -> ModelList<H> {
        ModelList {
            models: self.models,
            grants,
        }
    }

    /// The list's JSON for these grants.
    pub fn render(&self, grants: &Grants) -> bytes::Bytes {
        let data: Vec<serde_json::Value> = self
            .models
            .iter()
            .filter(|m| grants.allows(m))
            .map(|id| model_object(id))
            .collect();
        serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .unwrap_or_default()
            .into()
    }

    /// One model's JSON for these grants (`GET /v1/models/{id}`): decided
    /// by [`Grants::allows`], as the list and inference are.
    pub fn render_one(&self, grants: &Grants, id: &str) -> Result<bytes::Bytes, Error> {
        if !grants.allows(id) {
            return Err(refusal(id, "model", DEFAULT_ADVICE));
        }
        if !self.models.iter().any(|m| **m == *id) {
            return Err(Error::new(
                Reason::ModelNotFound,
                format!("This gateway serves no model `{id}`; `GET /v1/models` lists the ones you may use."),
            )
            .with_meta("param", "model"));
        }
        Ok(serde_json::to_vec(&model_object(id))
            .unwrap_or_default()
            .into())
    }
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"})
}

/// The `{id}` of a `…/models/{id}` path, percent-decoded (`openai%2Fgpt-4o`
/// and `openai/gpt-4o` both name `openai/gpt-4o`); `None` for the list.
fn model_id(path: &str) -> Option<String> {
    let (_, id) = path.split_once("/models/")?;
    if id.is_empty() {
        return None;
    }
    let bytes = id.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

impl<I, B, G: GrantsOf<I>> Service<Request<Identified<I, B>>> for ModelList<G> {
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
        let grants = self.grants.grants_of(&req.body().identity);
        let body = match model_id(req.uri().path()) {
            None => self.render(&grants),
            Some(id) => match self.render_one(&grants, &id) {
                Ok(body) => body,
                Err(e) => return std::future::ready(Err(e)),
            },
        };
        let mut res = Response::new(Body::full(body));
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

    #[tokio::test]
    async fn retrieving_one_model_uses_the_same_function() {
        let list = ModelList::new(["gpt-4o", "gpt-4o-mini", "mistral/small"]);
        let grants = Grants::compile(&["cheap", "ghost-*"], &groups());
        let get = |path: &str| {
            let req = Request::get(path)
                .body(Identified {
                    identity: grants.clone(),
                    body: Body::empty(),
                })
                .unwrap();
            list.clone().oneshot(req)
        };
        for path in ["/v1/models/mistral/small", "/v1/models/mistral%2Fsmall"] {
            let res = get(path).await.unwrap();
            let v: serde_json::Value =
                serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes())
                    .unwrap();
            assert_eq!(v["id"], "mistral/small", "{path}");
            assert_eq!(v["object"], "model");
        }
        // Served but not granted, and neither: the same 403.
        for id in ["gpt-4o", "claude"] {
            let e = get(&format!("/v1/models/{id}")).await.unwrap_err();
            assert_eq!(e.reason(), Reason::ModelNotAllowed, "{id}");
            assert_eq!(e.status(), 403);
        }
        // Granted (a pattern) but not served.
        let e = get("/v1/models/ghost-1").await.unwrap_err();
        assert_eq!(e.reason(), Reason::ModelNotFound);
        assert_eq!(model_id("/v1/models/"), None);
        assert_eq!(model_id("/v1/models/a%zz"), Some("a%zz".into()));
    }
}
