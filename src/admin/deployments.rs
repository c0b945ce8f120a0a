//! `GET /deployments`: every model group's deployments, live — requests in
//! flight against capacity, cooldowns with their reason and time left,
//! failed attempts by reason over the last minutes, the fair queue's depth
//! and the fallback chains: [`Health::to_json`](crate::router::Health::to_json),
//! taken when the request arrives.
//!
//! The admin API does not own the [`Router`](crate::router::Router): the
//! application gives it a [`HealthSource`] ([`AdminOptions::deployments`](super::AdminOptions::deployments)),
//! which the reference gateway points at the router of the configuration in
//! place. Without one the route answers 404 saying so.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;

use super::{Admin, Answer, Params, bad, ok, query};
use crate::error::{Error, Reason};
use crate::router::Health;

/// Takes a [`Health`] snapshot of the deployments the gateway routes to,
/// e.g. `Arc::new(move || router.health().with_fallbacks(&chains))`.
pub type HealthSource = Arc<dyn Fn() -> Health + Send + Sync>;

/// `GET /deployments?model_group=`: every group's deployments, or one group's.
pub(super) async fn deployments(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let mut only = None;
    for (k, v) in &query(q)? {
        match k.as_str() {
            "model_group" if !v.is_empty() => only = Some(v.clone()),
            "model_group" => {}
            _ => return Err(bad(k, "unknown parameter; use model_group").into()),
        }
    }
    let Some(source) = &a.deployments else {
        return Err(Error::new(
            Reason::NotFound,
            "This admin API was given no deployments to show (the application passes them with `AdminOptions::deployments`).",
        )
        .into());
    };
    let mut health = source();
    if let Some(group) = only {
        health.groups.retain(|g| g.name == group);
        if health.groups.is_empty() {
            return Err(bad("model_group", format!("no model group is named `{group}`")).into());
        }
    }
    ok(health.to_json())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MASTER, call};
    use super::super::{AdminOptions, router_with_options};
    use super::*;
    use crate::keys::{Keyring, MemoryStore};
    use crate::router::{CooldownReason, Deployment, ManualClock, Router};
    use crate::{Body, LlmRequest};
    use tower::ServiceExt;

    type Svc = tower::util::BoxCloneSyncService<LlmRequest, http::Response<Body>, Error>;

    fn failing(status: u16) -> Svc {
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |_r: LlmRequest| async move {
            Err::<http::Response<Body>, _>(Error::from_upstream(
                http::StatusCode::from_u16(status).unwrap(),
                &http::HeaderMap::new(),
                br#"{"error":{"message":"no"}}"#,
                "fake".into(),
                &crate::sanitize::Secrets::none(),
            ))
        }))
    }

    fn answering() -> Svc {
        tower::util::BoxCloneSyncService::new(tower::service_fn(|_r: LlmRequest| async {
            Ok::<_, Error>(http::Response::new(Body::full("{}")))
        }))
    }

    fn chat(model: &str) -> LlmRequest {
        let body = format!(r#"{{"model":"{model}"}}"#);
        http::Request::post("/v1/chat/completions")
            .body(crate::read_request::Parsed::parse("/v1/chat/completions", body.into()).unwrap())
            .unwrap()
    }

    async fn admin(router: Option<Router<Svc>>) -> axum::Router {
        let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let mut options = AdminOptions::new();
        if let Some(r) = router {
            options = options.deployments(Arc::new(move || r.health()));
        }
        router_with_options(ring, MASTER, options)
    }

    #[tokio::test]
    async fn shows_each_deployments_state_live() {
        let clock = ManualClock::default();
        let r = Router::builder()
            .clock(Arc::new(clock.clone()))
            .group(
                "g",
                vec![
                    Deployment::new("a", failing(401), 1),
                    Deployment::new("b", answering(), 1),
                ],
            )
            .unwrap()
            .group("h", vec![Deployment::new("c", answering(), 1)])
            .unwrap()
            .build();
        let app = admin(Some(r.clone())).await;
        let (s, v) = call(&app, "GET", "/deployments", "", Some(MASTER)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["groups"][0]["model_group"], "g");
        assert_eq!(v["groups"][0]["deployments"][0]["state"], "ok");
        assert_eq!(v["groups"][1]["deployments"][0]["deployment"], "c");
        // `a` refuses the gateway's credential once it is tried.
        while r.cooldown("g", "a").is_none() {
            r.clone().oneshot(chat("g")).await.unwrap();
        }
        let (_, v) = call(&app, "GET", "/deployments?model_group=g", "", Some(MASTER)).await;
        assert_eq!(v["groups"].as_array().unwrap().len(), 1);
        let a = &v["groups"][0]["deployments"][0];
        assert_eq!(a["state"], "cooldown");
        assert_eq!(a["cooldown"]["reason"], CooldownReason::Credential.as_str());
        assert_eq!(a["cooldown"]["remaining_ms"], 300_000);
        assert_eq!(a["errors"]["upstream_auth_failed"], 1);
        clock.advance(std::time::Duration::from_secs(300));
        let (_, v) = call(&app, "GET", "/deployments", "", Some(MASTER)).await;
        assert_eq!(v["groups"][0]["deployments"][0]["state"], "ok");
    }

    #[tokio::test]
    async fn refuses_without_the_master_key_a_bad_parameter_or_a_source() {
        let r = Router::builder()
            .group("g", vec![Deployment::new("a", answering(), 1)])
            .unwrap()
            .build();
        let app = admin(Some(r)).await;
        let (s, v) = call(&app, "GET", "/deployments", "", None).await;
        assert_eq!(s, 401, "{v}");
        let (s, v) = call(&app, "GET", "/deployments", "", Some("not-the-master")).await;
        assert_eq!(s, 401, "{v}");
        let (s, v) = call(&app, "GET", "/deployments?group=g", "", Some(MASTER)).await;
        assert_eq!(s, 400);
        assert_eq!(v["error"]["metadata"]["param"], "group", "{v}");
        let (s, v) = call(&app, "GET", "/deployments?model_group=x", "", Some(MASTER)).await;
        assert_eq!(s, 400);
        assert!(
            v["error"]["message"].as_str().unwrap().contains("`x`"),
            "{v}"
        );
        let (s, v) = call(&admin(None).await, "GET", "/deployments", "", Some(MASTER)).await;
        assert_eq!(s, 404);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no deployments"),
            "{v}"
        );
    }
}
