//! The console's deployments page (`GET /ui/deployments`): one table per
//! model group — each deployment's state (ok, or cooling down with the
//! reason and the seconds left), requests in flight against its capacity,
//! failed attempts by reason in the last minutes — with the group's fair
//! queue and fallback chains, from the admin API's `GET /deployments`.
//!
//! It refreshes live: `deployments.js` (served by the console; the CSP
//! allows no inline script) fetches the tables alone from
//! `GET /ui/deployments/table` every 2 seconds and swaps them in. Without
//! JavaScript the page reloads itself every 5 seconds (a `<noscript>`
//! meta refresh) and has a refresh link. Each deployment's row carries
//! `data-deployment="group/name"` and `data-state="ok"|"cooldown"` (and
//! `data-reason` while cooling), for tests and scripts to wait on.

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde_json::Value;

use super::{Console, Nav, SessionInfo, page};

/// How often the script fetches the tables again.
const REFRESH_MS: u32 = 2_000;

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/deployments", get(show))
        .route("/deployments/table", get(table))
        .route("/static/deployments.js", get(script))
}

async fn show(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
) -> Response {
    let tables = tables(&console).await;
    page(
        "Deployments",
        Nav::Deployments,
        &session,
        html! {
            script src="/ui/static/deployments.js" defer {}
            noscript { meta http-equiv="refresh" content="5"; }
        },
        html! {
            p.hint {
                "Live: refreshed every " (REFRESH_MS / 1000) " seconds. "
                span #refresh-status role="status" {}
                " "
                a href="/ui/deployments" { "Refresh now" }
            }
            div #deployments data-refresh="/ui/deployments/table" data-interval=(REFRESH_MS) {
                (tables)
            }
        },
    )
}

/// The tables alone, for the live refresh.
async fn table(State(console): State<Console>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        tables(&console).await,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("deployments.js"),
    )
        .into_response()
}

/// Every group's table, or the admin API's refusal.
async fn tables(console: &Console) -> Markup {
    let health = match console.admin_get("/deployments").await {
        Ok(v) => v,
        Err(e) => return html! { p.error role="alert" { (e.message) } },
    };
    let window = health["error_window_minutes"].as_u64().unwrap_or(5);
    let groups = health["groups"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    html! {
        @if groups.is_empty() {
            p { "No model groups are configured." }
        }
        @for g in groups {
            (group(g, window))
        }
    }
}

fn group(g: &Value, window: u64) -> Markup {
    let name = g["model_group"].as_str().unwrap_or("");
    let chain = |key: &str| -> Vec<&str> {
        g[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    };
    let (fallbacks, context) = (chain("fallbacks"), chain("context_window_fallbacks"));
    let deployments = g["deployments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    html! {
        section.group data-group=(name) {
            h2 { code { (name) } }
            p.muted {
                (queue(&g["queue"]))
                " · Falls back to: "
                @if fallbacks.is_empty() { "nothing" } @else { code { (fallbacks.join(" → ")) } }
                @if !context.is_empty() {
                    " · Prompts too long for it go to: " code { (context.join(" → ")) }
                }
            }
            table {
                thead {
                    tr {
                        th { "Deployment" }
                        th { "State" }
                        th.num { "In flight / capacity" }
                        th { "Errors, last " (window) " minutes" }
                    }
                }
                tbody {
                    @for d in deployments {
                        (deployment(name, d))
                    }
                }
            }
        }
    }
}

fn queue(q: &Value) -> Markup {
    if q.is_null() {
        return html! { "Fair queue: none" };
    }
    let n = |k: &str| q[k].as_u64().unwrap_or(0);
    html! {
        "Fair queue: "
        span data-queue-waiting=(n("waiting")) { (n("waiting")) " waiting" }
        ", " (n("in_flight")) " of " (n("capacity")) " running"
    }
}

fn deployment(group: &str, d: &Value) -> Markup {
    let name = d["deployment"].as_str().unwrap_or("");
    let state = d["state"].as_str().unwrap_or("ok");
    let cooldown = &d["cooldown"];
    let reason = cooldown["reason"].as_str();
    let in_flight = d["in_flight"].as_u64().unwrap_or(0);
    let capacity = d["capacity"].as_u64();
    let errors = d["errors"].as_object();
    let routes = d["route_cooldowns"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    html! {
        tr data-deployment=(format!("{group}/{name}")) data-state=(state) data-reason=[reason] {
            td { code { (name) } }
            td {
                @if let Some(reason) = reason {
                    span.pill.cooldown { "cooling down" }
                    " " (reason_words(reason)) ", "
                    span.mono data-seconds-left { (seconds(&cooldown["remaining_ms"])) } " s left"
                } @else {
                    span.pill.ok { "ok" }
                }
                @for r in routes {
                    br;
                    span.pill.warn { "route cooling" }
                    " " code { (r["route"].as_str().unwrap_or("")) }
                    " not served there, " (seconds(&r["remaining_ms"])) " s left"
                }
            }
            td.num {
                (in_flight) " / "
                @match capacity {
                    Some(c) => { (c) }
                    None => { "unbounded" }
                }
            }
            td {
                @match errors {
                    Some(e) if !e.is_empty() => {
                        @for (reason, n) in e {
                            span.mono data-error=(reason) { (reason) ": " (n) } " "
                        }
                    }
                    _ => { span.muted { "none" } }
                }
            }
        }
    }
}

/// Whole seconds left, rounded up (a cooldown with 200 ms left is "1 s").
fn seconds(ms: &Value) -> u64 {
    ms.as_u64().unwrap_or(0).div_ceil(1000)
}

/// What a cooldown reason means, for an operator.
fn reason_words(reason: &str) -> &str {
    match reason {
        "rate_limited" => "rate limited by the upstream (429)",
        "failures" => "repeated failures (timeouts, 5xx, connection errors)",
        "credential" => "the upstream refused the gateway's credential",
        "model_gone" => "the upstream says the model does not exist",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use tower::ServiceExt;

    use super::super::testing::{Browser, MASTER};
    use crate::admin::{AdminOptions, router_with_options};
    use crate::keys::{Keyring, MemoryStore};
    use crate::router::{Deployment, ManualClock, QueueDepth, Router};
    use crate::{Body, Error, LlmRequest};

    type Svc = tower::util::BoxCloneSyncService<LlmRequest, http::Response<Body>, Error>;

    fn rate_limited() -> Svc {
        Svc::new(tower::service_fn(|_r: LlmRequest| async {
            let mut h = http::HeaderMap::new();
            h.insert("retry-after", http::HeaderValue::from_static("30"));
            Err::<http::Response<Body>, _>(Error::from_upstream(
                http::StatusCode::TOO_MANY_REQUESTS,
                &h,
                br#"{"error":{"message":"slow down"}}"#,
                "fake".into(),
                &crate::sanitize::Secrets::none(),
            ))
        }))
    }

    fn answering() -> Svc {
        Svc::new(tower::service_fn(|_r: LlmRequest| async {
            Ok::<_, Error>(http::Response::new(Body::full("{}")))
        }))
    }

    fn chat(model: &str) -> LlmRequest {
        let body = format!(r#"{{"model":"{model}"}}"#);
        http::Request::post("/v1/chat/completions")
            .body(crate::read_request::Parsed::parse("/v1/chat/completions", body.into()).unwrap())
            .unwrap()
    }

    fn gateway(clock: &ManualClock) -> Router<Svc> {
        Router::builder()
            .clock(Arc::new(clock.clone()))
            .group(
                "chat",
                vec![
                    Deployment::new("east", rate_limited(), 1),
                    Deployment::new("west", answering(), 1).capacity(16),
                ],
            )
            .unwrap()
            .group("embed", vec![Deployment::new("solo", answering(), 1)])
            .unwrap()
            .build()
    }

    async fn admin(router: Option<Router<Svc>>) -> axum::Router {
        let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let mut options = AdminOptions::new();
        if let Some(r) = router {
            let chains = crate::fallback::Chains::builder(["chat", "embed"])
                .fallbacks("chat", ["embed"])
                .build()
                .unwrap();
            // A fair queue in front of `chat` only, with three requests waiting.
            let queue = |g: &str| {
                (g == "chat").then(|| QueueDepth {
                    capacity: 8,
                    in_flight: 8,
                    waiting: vec![("team:a".into(), 2), ("team:b".into(), 1)],
                })
            };
            options = options.deployments(Arc::new(move || {
                r.health().with_fallbacks(&chains).with_queue(queue)
            }));
        }
        router_with_options(keyring, MASTER, options)
    }

    #[tokio::test]
    async fn the_page_lists_every_group_and_deployment_with_its_state() {
        let r = gateway(&ManualClock::default());
        let b = Browser::logged_in_over(admin(Some(r)).await).await;
        let page = b.get("/ui/deployments").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for row in ["chat/east", "chat/west", "embed/solo"] {
            assert!(
                page.body
                    .contains(&format!(r#"data-deployment="{row}" data-state="ok""#)),
                "{row} missing or not ok: {}",
                page.body
            );
        }
        assert!(
            page.body.contains("0 / 16"),
            "in flight / capacity: {}",
            page.body
        );
        assert!(page.body.contains("0 / unbounded"));
        assert!(
            page.body.contains("Falls back to: <code>embed</code>"),
            "the fallback chain: {}",
            page.body
        );
        assert!(
            page.body.contains(
                r#"Fair queue: <span data-queue-waiting="3">3 waiting</span>, 8 of 8 running"#
            ),
            "chat's queue: {}",
            page.body
        );
        assert!(page.body.contains("Fair queue: none"), "embed has none");
        // Live without an inline script: the console's own file, a fragment
        // route, and a refresh without JavaScript.
        assert!(
            page.body
                .contains(r#"<script src="/ui/static/deployments.js" defer>"#)
        );
        assert!(!page.body.contains("<script>"));
        assert!(
            page.body
                .contains(r#"data-refresh="/ui/deployments/table""#)
        );
        assert!(page.body.contains(r#"http-equiv="refresh""#));
        let js = b.get("/ui/static/deployments.js").await;
        assert_eq!(js.status, StatusCode::OK);
        assert!(
            js.headers[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(js.body.contains("/ui/deployments/table") || js.body.contains("dataset.refresh"));
    }

    #[tokio::test]
    async fn a_cooldown_shows_with_its_reason_and_time_left_then_ends() {
        let clock = ManualClock::default();
        let r = gateway(&clock);
        let b = Browser::logged_in_over(admin(Some(r.clone())).await).await;
        // `east` answers 429 with `Retry-After: 30` once it is tried.
        while r.cooldown("chat", "east").is_none() {
            r.clone().oneshot(chat("chat")).await.unwrap();
        }
        let table = b.get("/ui/deployments/table").await;
        assert_eq!(table.status, StatusCode::OK);
        assert!(
            table.headers[http::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(!table.body.contains("<html"), "a fragment, not a page");
        assert!(
            table.body.contains(
                r#"data-deployment="chat/east" data-state="cooldown" data-reason="rate_limited""#
            ),
            "{}",
            table.body
        );
        assert!(table.body.contains("rate limited by the upstream (429)"));
        assert!(table.body.contains("30</span> s left"), "{}", table.body);
        assert!(
            table
                .body
                .contains(r#"data-error="upstream_rate_limited">upstream_rate_limited: 1"#),
            "{}",
            table.body
        );
        assert!(
            table
                .body
                .contains(r#"data-deployment="chat/west" data-state="ok""#)
        );
        clock.advance(std::time::Duration::from_millis(29_100));
        let table = b.get("/ui/deployments/table").await;
        assert!(
            table.body.contains("1</span> s left"),
            "rounded up: {}",
            table.body
        );
        clock.advance(std::time::Duration::from_secs(1));
        let page = b.get("/ui/deployments").await;
        assert!(
            page.body
                .contains(r#"data-deployment="chat/east" data-state="ok""#),
            "the cooldown ended: {}",
            page.body
        );
        assert!(
            page.body.contains("upstream_rate_limited: 1"),
            "the error still counts"
        );
    }

    #[tokio::test]
    async fn the_table_needs_a_session_like_every_page() {
        let b = Browser::over(admin(Some(gateway(&ManualClock::default()))).await);
        for path in ["/ui/deployments", "/ui/deployments/table"] {
            let page = b.get(path).await;
            assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
            assert_eq!(page.location(), Some("/ui/login"), "{path}");
            assert!(!page.body.contains("chat/east"), "{path}");
        }
    }

    #[tokio::test]
    async fn without_deployments_the_admin_apis_message_shows() {
        let b = Browser::logged_in_over(admin(None).await).await;
        let page = b.get("/ui/deployments").await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.body.contains("given no deployments"), "{}", page.body);
    }
}
