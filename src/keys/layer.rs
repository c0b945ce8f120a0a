//! The `VirtualKeys` layer: [`Identify`] with the [`Keyring`] as the
//! identifier.

use http::request::Parts;

use super::key::Key;
use super::keyring::Keyring;
use crate::error::Error;
use crate::identify::{Identifier, Identify, IdentifyLayer};
#[cfg(test)]
use crate::read_request::Identified;

/// Applies [`VirtualKeys`] with a [`Keyring`]: `VirtualKeysLayer::new(keyring)`.
pub type VirtualKeysLayer = IdentifyLayer<Keyring>;

/// Authenticates the request's key and hands the inner service
/// `Request<Identified<Key, B>>` (see the module docs).
pub type VirtualKeys<S> = Identify<S, Keyring>;

/// The keyring identifies a caller by the virtual key it presents
/// (`Authorization: Bearer` or `x-api-key`): [`Keyring::authenticate`].
impl Identifier for Keyring {
    type Identity = Key;

    fn identify(&self, parts: &Parts) -> Result<Key, Error> {
        let key = self.authenticate(&parts.headers)?;
        tracing::trace!(key_id = key.id(), "authenticated");
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::error::Reason;
    use crate::keys::{MemoryStore, NewKey};
    use http::Request;
    use http::Response;
    use http_body_util::BodyExt;
    use tower::Layer;
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
