//! `Router`: dispatch a model group to one of its deployments.
//!
//! A model group is the name clients ask for (`"model": "gpt-4o-mini"`); a
//! deployment is a provider `Service` behind it with a weight. The router
//! looks the group up (404 `model_not_found` for a name it does not know,
//! naming only the name asked for) and sends the request to one deployment,
//! chosen at random in proportion to the weights. The response carries
//! `x-tollgate-deployment` naming the deployment that served.
//!
//! ```
//! use tollgate::provider::Provider;
//! use tollgate::router::{Deployment, Router};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = Provider::builder("east", "http://127.0.0.1:9001/v1")?.model("gpt-4o-mini").build();
//! let b = Provider::builder("west", "http://127.0.0.1:9002/v1")?.model("gpt-4o-mini").build();
//! let router = Router::builder()
//!     .group("gpt-4o-mini", vec![Deployment::new("east", a, 1), Deployment::new("west", b, 2)])?
//!     .build();
//! assert_eq!(router.model_names().collect::<Vec<_>>(), ["gpt-4o-mini"]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Response};
use pin_project::pin_project;
use tower::Service;
use tower::util::Oneshot;

use crate::LlmRequest;
use crate::body::Body;
use crate::error::{Error, Reason};

/// The response header naming the deployment that served.
pub const DEPLOYMENT_HEADER: &str = "x-tollgate-deployment";

/// One deployment of a model group.
#[derive(Clone)]
pub struct Deployment<S> {
    name: Arc<str>,
    header: HeaderValue,
    service: S,
    weight: u32,
}

impl<S> Deployment<S> {
    /// A deployment named `name` (logs, headers) with a relative `weight` (0 is taken as 1).
    pub fn new(name: &str, service: S, weight: u32) -> Self {
        let header =
            HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("unnamed"));
        Deployment {
            name: name.into(),
            header,
            service,
            weight: weight.max(1),
        }
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<S> fmt::Debug for Deployment<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployment")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .finish()
    }
}

#[derive(Debug)]
struct Group<S> {
    deployments: Vec<Deployment<S>>,
    total_weight: u64,
}

/// Routes requests to a deployment of the model group they name.
pub struct Router<S> {
    groups: Arc<HashMap<String, Group<S>>>,
}

impl<S> Clone for Router<S> {
    fn clone(&self) -> Self {
        Router {
            groups: self.groups.clone(),
        }
    }
}

impl<S> fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.groups.iter().map(|(k, g)| (k, &g.deployments)))
            .finish()
    }
}

/// A router could not be built (an empty or repeated group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterError(String);

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouterError {}

/// Builds a [`Router`].
pub struct RouterBuilder<S> {
    groups: HashMap<String, Group<S>>,
}

impl<S> Router<S> {
    /// An empty builder.
    pub fn builder() -> RouterBuilder<S> {
        RouterBuilder {
            groups: HashMap::new(),
        }
    }

    /// The model groups, sorted.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.groups.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Whether a model group of this name exists.
    pub fn has_model(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }
}

impl<S> RouterBuilder<S> {
    /// Adds a model group with its deployments.
    pub fn group(
        mut self,
        name: &str,
        deployments: Vec<Deployment<S>>,
    ) -> Result<Self, RouterError> {
        if deployments.is_empty() {
            return Err(RouterError(format!(
                "model group `{name}` has no deployments"
            )));
        }
        if self.groups.contains_key(name) {
            return Err(RouterError(format!(
                "model group `{name}` is defined twice"
            )));
        }
        let total_weight = deployments.iter().map(|d| u64::from(d.weight)).sum();
        self.groups.insert(
            name.to_owned(),
            Group {
                deployments,
                total_weight,
            },
        );
        Ok(self)
    }

    /// The router.
    pub fn build(self) -> Router<S> {
        Router {
            groups: Arc::new(self.groups),
        }
    }
}

impl<S> Group<S> {
    /// A deployment at random, in proportion to the weights.
    fn pick(&self) -> &Deployment<S> {
        if self.deployments.len() == 1 {
            return &self.deployments[0];
        }
        let mut at = fastrand::u64(0..self.total_weight);
        for d in &self.deployments {
            let w = u64::from(d.weight);
            if at < w {
                return d;
            }
            at -= w;
        }
        &self.deployments[self.deployments.len() - 1]
    }
}

impl<S, I> Service<LlmRequest<I>> for Router<S>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error> + Clone,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture<S, I>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness is per deployment; it is driven inside the future.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlmRequest<I>) -> Self::Future {
        let Some(group) = self.groups.get(req.body().model()) else {
            let e = Error::new(
                Reason::ModelNotFound,
                format!(
                    "No model `{}` is served here; GET /v1/models lists the models you can use.",
                    req.body().model()
                ),
            )
            .permanent();
            return ResponseFuture {
                state: State::Failed(Some(e)),
            };
        };
        let d = group.pick();
        ResponseFuture {
            state: State::Calling {
                fut: Oneshot::new(d.service.clone(), req),
                header: d.header.clone(),
            },
        }
    }
}

/// The future of [`Router`].
#[pin_project]
pub struct ResponseFuture<S: Service<LlmRequest<I>>, I> {
    #[pin]
    state: State<S, I>,
}

#[allow(clippy::large_enum_variant)] // inline in the request's future, never moved
#[pin_project(project = StateProj)]
enum State<S: Service<LlmRequest<I>>, I> {
    Failed(Option<Error>),
    Calling {
        #[pin]
        fut: Oneshot<S, LlmRequest<I>>,
        header: HeaderValue,
    },
}

impl<S, I> Future for ResponseFuture<S, I>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error>,
{
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Failed(e) => Poll::Ready(Err(e.take().expect("polled after completion"))),
            StateProj::Calling { fut, header } => {
                let mut res = ready!(fut.poll(cx))?;
                res.headers_mut().insert(DEPLOYMENT_HEADER, header.clone());
                Poll::Ready(Ok(res))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_request::Parsed;
    use bytes::Bytes;
    use http::Request;
    use tower::{ServiceExt, service_fn};

    fn req(model: &str) -> LlmRequest {
        let body = format!(r#"{{"model":"{model}"}}"#);
        Request::post("/v1/chat/completions")
            .body(Parsed::parse("/v1/chat/completions", Bytes::from(body)).unwrap())
            .unwrap()
    }

    fn echo(
        tag: &'static str,
    ) -> impl Service<LlmRequest, Response = Response<Body>, Error = Error, Future: Send> + Clone
    {
        service_fn(
            move |_r: LlmRequest| async move { Ok::<_, Error>(Response::new(Body::full(tag))) },
        )
    }

    #[tokio::test]
    async fn unknown_model_is_404_naming_only_it() {
        let r = Router::builder()
            .group("a", vec![Deployment::new("d", echo("d"), 1)])
            .unwrap()
            .build();
        let e = r.oneshot(req("nope")).await.unwrap_err();
        assert_eq!(e.status(), 404);
        assert_eq!(e.reason(), Reason::ModelNotFound);
        assert!(e.message().contains("`nope`"));
        assert!(!e.message().contains("`a`"));
    }

    #[tokio::test]
    async fn weights_split_traffic() {
        let r = Router::builder()
            .group(
                "g",
                vec![
                    Deployment::new("one", echo("one"), 1),
                    Deployment::new("three", echo("three"), 3),
                ],
            )
            .unwrap()
            .build();
        let mut three = 0;
        for _ in 0..4000 {
            let res = r.clone().oneshot(req("g")).await.unwrap();
            if res.headers()[DEPLOYMENT_HEADER] == "three" {
                three += 1;
            }
        }
        // Expected 3000; a 5-sigma band around it (sigma ~ 27).
        assert!((2860..=3140).contains(&three), "{three}");
    }

    #[test]
    fn builder_refuses_empty_and_repeated_groups() {
        assert!(Router::<()>::builder().group("g", vec![]).is_err());
        let b = Router::builder()
            .group("g", vec![Deployment::new("d", (), 1)])
            .unwrap();
        assert!(b.group("g", vec![Deployment::new("d", (), 1)]).is_err());
    }
}
