//! `Fallback`: when a model group is exhausted or gone, try the next group.
//!
//! Chains are ordered lists of model groups. A group's configured chain is
//! followed transitively (if `a` falls back to `b` and `b` to `c`, `a`'s
//! chain is `b, c`), so [`Chains::builder`] refuses, when the stack is built,
//! a chain that names an unknown group or forms a cycle — with a message
//! naming the chain — instead of failing at request time. A request's own
//! list (`"models": [...]`, OpenRouter style, already filtered by the key's
//! grants) replaces the configured chain for that request.
//!
//! Triggers, decided on the inner [`Router`](crate::router::Router)'s typed
//! error after its own retries:
//!
//! | the group's answer | next |
//! |---|---|
//! | 503 `no_available_deployment`, 404 `model_not_found` / `upstream_model_not_found` | next group in the chain |
//! | rate-limited, 5xx, timeouts, unreachable, cut before content, our credential refused, the route not served (502 `upstream_route_not_served`) | next group in the chain |
//! | an upstream 413 on every deployment tried | returned at once |
//! | `context_length_exceeded` | the group's `context_window_fallbacks`, when configured; else returned |
//! | any other 4xx, and the gateway's own failures | returned at once |
//!
//! A stream is never fallen back after its first content chunk: the router
//! only returns a stream once it has committed, so nothing here can append
//! an assistant "prefill" or rewrite the conversation — each group gets the
//! client's own bytes, only `model` changed ([`Parsed::retarget`](crate::read_request::Parsed::retarget)).
//!
//! The answer that succeeds carries `x-tollgate-model-group` (the group that
//! served; a non-streaming answer's `model` says the same) and
//! `x-tollgate-attempts`, counting attempts in every group. When every group
//! fails, the client gets the most useful error (one that says when to come
//! back first) with `metadata.attempts` listing every attempt in every group.
//!
//! ```
//! use tollgate::fallback::{Chains, FallbackLayer};
//!
//! let chains = Chains::builder(["gpt-4o", "gpt-4o-mini", "gpt-4o-long"])
//!     .fallbacks("gpt-4o", ["gpt-4o-mini"])
//!     .context_window_fallbacks("gpt-4o", ["gpt-4o-long"])
//!     .build()
//!     .unwrap();
//! assert_eq!(chains.fallbacks_of("gpt-4o"), ["gpt-4o-mini"]);
//! let layer = FallbackLayer::new(chains);
//! # let _ = layer;
//!
//! let bad = Chains::builder(["a", "b"]).fallbacks("a", ["b"]).fallbacks("b", ["a"]).build();
//! assert!(bad.unwrap_err().to_string().contains("`a` → `b` → `a`"));
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Response};
use serde_json::Value;
use tower::{Layer, Service, ServiceExt};
use tracing::Instrument;

use crate::LlmRequest;
use crate::body::Body;
use crate::error::{Error, Reason};
use crate::metrics::{KnownGroups, record};
use crate::router::outcome::{ATTEMPTS, Outcome, attempts_of, most_useful};
use crate::router::{ATTEMPTS_HEADER, ResponseFuture};

/// Which chain a failure sends the request down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Chain,
    ContextWindow,
    Stop,
}

fn next_for(e: &Error) -> Next {
    match e.reason() {
        Reason::NoAvailableDeployment | Reason::ModelNotFound => Next::Chain,
        _ => match Outcome::of(e) {
            Outcome::ModelGone
            | Outcome::RouteNotServed
            | Outcome::RateLimited
            | Outcome::Transient
            | Outcome::Credential => Next::Chain,
            Outcome::ContextLength => Next::ContextWindow,
            Outcome::ClientFault | Outcome::TooLargeHere | Outcome::Gateway => Next::Stop,
        },
    }
}

/// A chain could not be built: it names an unknown group, or loops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// `group`'s `kind` chain names `missing`, which is not a model group.
    UnknownGroup {
        /// `fallbacks` or `context_window_fallbacks`.
        kind: &'static str,
        /// The group whose chain it is.
        group: String,
        /// The name that is not a group.
        missing: String,
    },
    /// Following `kind` chains from `path[0]` comes back to a group on the path.
    Cycle {
        /// `fallbacks` or `context_window_fallbacks`.
        kind: &'static str,
        /// The groups on the loop, first and last equal.
        path: Vec<String>,
    },
}

impl ChainError {
    /// The group whose chain is at fault.
    pub fn group(&self) -> &str {
        match self {
            ChainError::UnknownGroup { group, .. } => group,
            ChainError::Cycle { path, .. } => &path[0],
        }
    }

    /// `fallbacks` or `context_window_fallbacks`.
    pub fn kind(&self) -> &'static str {
        match self {
            ChainError::UnknownGroup { kind, .. } | ChainError::Cycle { kind, .. } => kind,
        }
    }
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::UnknownGroup {
                kind,
                group,
                missing,
            } => write!(
                f,
                "the {kind} chain of model group `{group}` names `{missing}`, which is not a model group"
            ),
            ChainError::Cycle { kind, path } => {
                let path: Vec<String> = path.iter().map(|g| format!("`{g}`")).collect();
                write!(f, "the {kind} chains form a cycle: {}", path.join(" → "))
            }
        }
    }
}

impl std::error::Error for ChainError {}

/// A flattened chain of model groups.
type Chain = Arc<[Arc<str>]>;

/// Every group's chains, flattened and checked.
#[derive(Clone, Debug, Default)]
pub struct Chains {
    fallbacks: crate::Map<String, Chain>,
    context: crate::Map<String, Chain>,
    /// The groups, for the `from`/`to` labels of `tollgate_fallbacks_total`.
    known: KnownGroups,
}

/// Builds [`Chains`] over a known set of groups.
#[derive(Debug)]
pub struct ChainsBuilder {
    known: HashSet<String>,
    fallbacks: Vec<(String, Vec<String>)>,
    context: Vec<(String, Vec<String>)>,
}

impl Chains {
    /// A builder that accepts only `groups` as names.
    pub fn builder<T: AsRef<str>>(groups: impl IntoIterator<Item = T>) -> ChainsBuilder {
        ChainsBuilder {
            known: groups.into_iter().map(|g| g.as_ref().to_owned()).collect(),
            fallbacks: Vec::new(),
            context: Vec::new(),
        }
    }

    /// `group`'s flattened fallback chain.
    pub fn fallbacks_of(&self, group: &str) -> Vec<&str> {
        self.fallbacks
            .get(group)
            .map(|c| c.iter().map(|g| &**g).collect())
            .unwrap_or_default()
    }

    /// `group`'s flattened context-window fallback chain.
    pub fn context_window_fallbacks_of(&self, group: &str) -> Vec<&str> {
        self.context
            .get(group)
            .map(|c| c.iter().map(|g| &**g).collect())
            .unwrap_or_default()
    }
}

impl ChainsBuilder {
    /// `group` falls back to `to`, in order (then to their own fallbacks).
    pub fn fallbacks<T: AsRef<str>>(
        mut self,
        group: &str,
        to: impl IntoIterator<Item = T>,
    ) -> Self {
        let to = to.into_iter().map(|g| g.as_ref().to_owned()).collect();
        self.fallbacks.push((group.to_owned(), to));
        self
    }

    /// On a context-length error, `group` falls back to `to`, in order.
    pub fn context_window_fallbacks<T: AsRef<str>>(
        mut self,
        group: &str,
        to: impl IntoIterator<Item = T>,
    ) -> Self {
        let to = to.into_iter().map(|g| g.as_ref().to_owned()).collect();
        self.context.push((group.to_owned(), to));
        self
    }

    /// Checks every chain and flattens it.
    pub fn build(self) -> Result<Chains, ChainError> {
        Ok(Chains {
            fallbacks: flatten("fallbacks", &self.known, self.fallbacks)?,
            context: flatten("context_window_fallbacks", &self.known, self.context)?,
            known: KnownGroups::new(&self.known),
        })
    }
}

fn flatten(
    kind: &'static str,
    known: &HashSet<String>,
    lists: Vec<(String, Vec<String>)>,
) -> Result<crate::Map<String, Chain>, ChainError> {
    let mut direct: HashMap<&str, Vec<&str>> = HashMap::new();
    for (group, to) in &lists {
        for name in std::iter::once(group).chain(to) {
            if !known.contains(name) {
                return Err(ChainError::UnknownGroup {
                    kind,
                    group: group.clone(),
                    missing: name.clone(),
                });
            }
        }
        direct
            .entry(group)
            .or_default()
            .extend(to.iter().map(String::as_str));
    }
    // Depth-first from each group: a group met again on the current path is a cycle.
    fn walk<'a>(
        kind: &'static str,
        g: &'a str,
        direct: &HashMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        out: &mut Vec<Arc<str>>,
    ) -> Result<(), ChainError> {
        for &next in direct.get(g).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(at) = path.iter().position(|p| *p == next) {
                let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
                cycle.push(next.to_owned());
                return Err(ChainError::Cycle { kind, path: cycle });
            }
            if !out.iter().any(|o| &**o == next) {
                out.push(next.into());
            }
            path.push(next);
            walk(kind, next, direct, path, out)?;
            path.pop();
        }
        Ok(())
    }
    let mut groups: Vec<&str> = direct.keys().copied().collect();
    groups.sort_unstable();
    let mut flat = crate::Map::default();
    for g in groups {
        let mut out = Vec::new();
        walk(kind, g, &direct, &mut vec![g], &mut out)?;
        flat.insert(g.to_owned(), out.into());
    }
    Ok(flat)
}

/// Applies [`Fallback`] with checked [`Chains`].
#[derive(Clone, Debug)]
pub struct FallbackLayer {
    chains: Arc<Chains>,
}

impl FallbackLayer {
    /// The layer.
    pub fn new(chains: Chains) -> Self {
        FallbackLayer {
            chains: Arc::new(chains),
        }
    }
}

impl<S> Layer<S> for FallbackLayer {
    type Service = Fallback<S>;

    fn layer(&self, inner: S) -> Fallback<S> {
        Fallback {
            inner,
            chains: self.chains.clone(),
        }
    }
}

/// Tries the next model group when one is exhausted or gone (module docs).
#[derive(Clone, Debug)]
pub struct Fallback<S> {
    inner: S,
    chains: Arc<Chains>,
}

impl<S, I> Service<LlmRequest<I>> for Fallback<S>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error> + Clone + Send + 'static,
    S::Future: Send,
    I: Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Each group's call drives the inner service's readiness (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlmRequest<I>) -> ResponseFuture {
        let inner = self.inner.clone();
        let chains = self.chains.clone();
        ResponseFuture::new(run(inner, chains, req))
    }
}

async fn run<S, I>(
    inner: S,
    chains: Arc<Chains>,
    req: LlmRequest<I>,
) -> Result<Response<Body>, Error>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error> + Clone,
    I: Clone,
{
    let asked: Arc<str> = req.body().model().into();
    let own = &req.body().summary().models;
    let mut plan: Vec<Arc<str>> = if own.is_empty() {
        chains
            .fallbacks
            .get(&*asked)
            .map(|c| c.to_vec())
            .unwrap_or_default()
    } else {
        own.iter().map(|m| Arc::from(m.as_str())).collect()
    };
    let mut visited: Vec<Arc<str>> = vec![asked.clone()];
    let mut current = asked.clone();
    let mut errors: Vec<Error> = Vec::new();
    let mut attempts: Vec<Value> = Vec::new();
    let mut count: u32 = 0;
    let mut next_req = None;
    loop {
        let r = next_req.take().unwrap_or_else(|| req.clone());
        let span = tracing::debug_span!("model_group", model_group = %current);
        match inner.clone().oneshot(r).instrument(span).await {
            Ok(mut res) => {
                if count > 0 {
                    let here = res
                        .headers()
                        .get(ATTEMPTS_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(1);
                    res.headers_mut()
                        .insert(ATTEMPTS_HEADER, HeaderValue::from(count + here));
                }
                return Ok(res);
            }
            Err(e) => {
                let listed = attempts_of(&e);
                if listed.is_empty() {
                    attempts.push(serde_json::json!({
                        "model_group": &*current,
                        "reason": e.reason().as_str(),
                        "code": e.status().as_u16(),
                        "message": e.message(),
                    }));
                } else {
                    count += listed.len() as u32;
                    attempts.extend(listed.iter().cloned());
                }
                let alone = visited.len() == 1 && listed.is_empty();
                match next_for(&e) {
                    // Nothing was tried anywhere: the router's error as it is.
                    Next::Stop if alone => return Err(e),
                    Next::Stop => return Err(finish(vec![e], attempts)),
                    Next::Chain => {}
                    Next::ContextWindow => match chains.context.get(&*current) {
                        Some(c) => plan = c.to_vec(),
                        None => return Err(finish(vec![e], attempts)),
                    },
                }
                let Some(next) = plan.iter().find(|g| !visited.contains(g)).cloned() else {
                    if alone {
                        return Err(e);
                    }
                    errors.push(e);
                    return Err(finish(errors, attempts));
                };
                errors.push(e);
                tracing::info!(from = %current, to = %next, "falling back to the next model group");
                record::fallback(chains.known.label(&current), chains.known.label(&next));
                visited.push(next.clone());
                let mut r = req.clone();
                *r.body_mut() = req.body().retarget(&next);
                next_req = Some(r);
                current = next;
            }
        }
    }
}

fn finish(errors: Vec<Error>, attempts: Vec<Value>) -> Error {
    let e = most_useful(errors)
        .unwrap_or_else(|| Error::new(Reason::Internal, "The fallback made no attempt."));
    e.with_meta(ATTEMPTS, attempts)
}

#[cfg(test)]
mod tests;
