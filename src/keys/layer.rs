//! The `VirtualKeys` layer.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::key::Key;
use super::keyring::Keyring;
use crate::access::ResponseFuture;
use crate::error::Error;
use crate::read_request::Identified;

/// Applies [`VirtualKeys`] with a [`Keyring`].
#[derive(Clone, Debug)]
pub struct VirtualKeysLayer {
    keyring: Keyring,
}

impl VirtualKeysLayer {
    /// Authenticates against `keyring`.
    pub fn new(keyring: Keyring) -> Self {
        VirtualKeysLayer { keyring }
    }
}

impl<S> Layer<S> for VirtualKeysLayer {
    type Service = VirtualKeys<S>;

    fn layer(&self, inner: S) -> VirtualKeys<S> {
        VirtualKeys {
            inner,
            keyring: self.keyring.clone(),
        }
    }
}

/// Authenticates the request's key and hands the inner service
/// `Request<Identified<Key, B>>` (see the module docs).
#[derive(Clone, Debug)]
pub struct VirtualKeys<S> {
    inner: S,
    keyring: Keyring,
}

impl<S, B> Service<Request<B>> for VirtualKeys<S>
where
    S: Service<Request<Identified<Key, B>>, Error = Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.keyring.authenticate(req.headers()) {
            Ok(key) => {
                tracing::trace!(key_id = key.id(), "authenticated");
                // Called at once: the readied service itself, no clone.
                ResponseFuture::calling(self.inner.call(req.map(|body| Identified {
                    identity: key,
                    body,
                })))
            }
            Err(e) => ResponseFuture::refused(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::error::Reason;
    use crate::keys::{MemoryStore, NewKey};
    use http::Response;
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn inner_sees_the_key_and_refusals_never_reach_it() {
        let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let (key, rec) = ring
            .generate(NewKey {
                alias: Some("ci".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let svc = VirtualKeysLayer::new(ring).layer(service_fn(
            |req: Request<Identified<Key, Body>>| async move {
                let k = &req.body().identity;
                Ok::<_, Error>(Response::new(Body::full(format!(
                    "{}/{:?}",
                    k.id(),
                    k.alias()
                ))))
            },
        ));
        let req = Request::get("/v1/models")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::empty())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        let text = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(text, format!("{}/Some(\"ci\")", rec.id));

        let req = Request::get("/v1/models").body(Body::empty()).unwrap();
        let e = svc.oneshot(req).await.unwrap_err();
        assert_eq!(e.reason(), Reason::MissingKey);
    }
}
