//! `Fallback` over a real `Router` of fake deployments that record the
//! bodies they receive.

use super::*;
use crate::read_request::Parsed;
use crate::router::{Deployment, MODEL_GROUP_HEADER, Router, TokioClock};
use crate::sanitize::Secrets;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

type Answer = Result<Response<Body>, Error>;

/// A fake deployment answering `status` (200: a JSON answer naming
/// `upstream-model`), recording the bodies it received.
#[derive(Clone)]
struct Fake {
    status: u16,
    seen: Arc<Mutex<Vec<Bytes>>>,
}

impl Fake {
    fn new(status: u16) -> Self {
        Fake {
            status,
            seen: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Bytes> {
        self.seen.lock().unwrap().clone()
    }
}

impl Service<LlmRequest> for Fake {
    type Response = Response<Body>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlmRequest) -> Self::Future {
        let body = req.body().rewrite(None, false).to_bytes();
        self.seen.lock().unwrap().push(body);
        let status = self.status;
        Box::pin(async move {
            if status == 200 {
                let mut res = Response::new(Body::full(
                    r#"{"id":"x","object":"chat.completion","model":"upstream-model","choices":[]}"#,
                ));
                res.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(res);
            }
            let body: &[u8] = if status == 400 {
                br#"{"error":{"message":"too long","code":"context_length_exceeded"}}"#
            } else if status == 404 {
                br#"{"error":{"message":"The model `m` does not exist.","code":"model_not_found"}}"#
            } else {
                br#"{"error":{"message":"no"}}"#
            };
            let mut h = HeaderMap::new();
            if status == 429 {
                h.insert("retry-after", HeaderValue::from_static("7"));
            }
            Err(Error::from_upstream(
                StatusCode::from_u16(status).unwrap(),
                &h,
                body,
                "fake".into(),
                &Secrets::none(),
            ))
        })
    }
}

/// `(group, [(deployment, status)])`
fn stack(
    groups: &[(&str, &[(&str, u16)])],
    chains: impl FnOnce(ChainsBuilder) -> ChainsBuilder,
) -> (Fallback<Router<Fake>>, HashMap<String, Fake>) {
    let mut fakes = HashMap::new();
    let mut b = Router::builder().clock(Arc::new(TokioClock::new()));
    for (g, ds) in groups {
        let ds = ds
            .iter()
            .map(|(name, status)| {
                let f = Fake::new(*status);
                fakes.insert(name.to_string(), f.clone());
                Deployment::new(name, f, 1)
            })
            .collect();
        b = b.group(g, ds).unwrap();
    }
    let router = b.build();
    let chains = chains(Chains::builder(router.model_names()))
        .build()
        .unwrap();
    (FallbackLayer::new(chains).layer(router), fakes)
}

fn req(body: &str) -> LlmRequest {
    Request::post("/v1/chat/completions")
        .body(Parsed::parse("/v1/chat/completions", Bytes::from(body.to_owned())).unwrap())
        .unwrap()
}

const CHAT: &str = r#"{"model":"primary","messages":[{"role":"user","content":"hi"}]}"#;

async fn json(res: Response<Body>) -> Value {
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[test]
fn chains_are_checked_and_flattened() {
    let groups = ["a", "b", "c", "d"];
    let c = Chains::builder(groups)
        .fallbacks("a", ["b", "c"])
        .fallbacks("b", ["d", "c"])
        .build()
        .unwrap();
    assert_eq!(c.fallbacks_of("a"), ["b", "d", "c"]);
    assert_eq!(c.fallbacks_of("b"), ["d", "c"]);
    assert!(c.fallbacks_of("d").is_empty());

    let e = Chains::builder(groups)
        .fallbacks("a", ["b", "gpt-5-typo"])
        .build()
        .unwrap_err();
    assert_eq!(
        e,
        ChainError::UnknownGroup {
            kind: "fallbacks",
            group: "a".into(),
            missing: "gpt-5-typo".into()
        }
    );
    assert!(e.to_string().contains("`gpt-5-typo`"), "{e}");
    assert!(e.to_string().contains("`a`"), "{e}");

    let e = Chains::builder(groups)
        .context_window_fallbacks("nope", ["a"])
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), "context_window_fallbacks");
    assert_eq!(e.group(), "nope");

    let e = Chains::builder(groups)
        .fallbacks("a", ["a"])
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("`a` → `a`"), "{e}");
    let e = Chains::builder(groups)
        .fallbacks("a", ["b"])
        .fallbacks("b", ["c"])
        .fallbacks("c", ["a"])
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, ChainError::Cycle { path, .. } if path.len() == 4),
        "{e}"
    );
    // A diamond is not a cycle.
    Chains::builder(groups)
        .fallbacks("a", ["b", "c"])
        .fallbacks("b", ["d"])
        .fallbacks("c", ["d"])
        .build()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_gone_group_falls_back_and_the_answer_names_the_next() {
    let (svc, fakes) = stack(
        &[
            ("primary", &[("p1", 404), ("p2", 404)]),
            ("backup", &[("b1", 200)]),
        ],
        |c| c.fallbacks("primary", ["backup"]),
    );
    let res = svc.oneshot(req(CHAT)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[MODEL_GROUP_HEADER], "backup");
    assert_eq!(res.headers()[ATTEMPTS_HEADER], "3");
    assert_eq!(json(res).await["model"], "backup");
    // The backup got the client's bytes with only `model` changed.
    assert_eq!(
        fakes["b1"].seen(),
        [Bytes::from_static(
            br#"{"model":"backup","messages":[{"role":"user","content":"hi"}]}"#
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn rate_limits_and_5xx_after_retries_fall_back() {
    for status in [429, 500, 503, 401] {
        let (svc, _) = stack(
            &[("primary", &[("p1", status)]), ("backup", &[("b1", 200)])],
            |c| c.fallbacks("primary", ["backup"]),
        );
        let res = svc.oneshot(req(CHAT)).await.unwrap();
        assert_eq!(res.headers()[MODEL_GROUP_HEADER], "backup", "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn other_client_errors_never_fall_back() {
    for status in [422, 413] {
        let (svc, fakes) = stack(
            &[("primary", &[("p1", status)]), ("backup", &[("b1", 200)])],
            |c| c.fallbacks("primary", ["backup"]),
        );
        let e = svc.oneshot(req(CHAT)).await.unwrap_err();
        assert_eq!(e.status().as_u16(), status);
        assert!(fakes["b1"].seen().is_empty(), "{status}");
        assert_eq!(attempts_of(&e).len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn context_length_goes_to_the_context_window_chain_only() {
    let groups: &[(&str, &[(&str, u16)])] = &[
        ("primary", &[("p1", 400)]),
        ("backup", &[("b1", 200)]),
        ("long", &[("l1", 200)]),
    ];
    let (svc, fakes) = stack(groups, |c| {
        c.fallbacks("primary", ["backup"])
            .context_window_fallbacks("primary", ["long"])
    });
    let res = svc.oneshot(req(CHAT)).await.unwrap();
    assert_eq!(res.headers()[MODEL_GROUP_HEADER], "long");
    assert!(fakes["b1"].seen().is_empty());

    // Without a context-window chain the error is the client's answer.
    let (svc, fakes) = stack(groups, |c| c.fallbacks("primary", ["backup"]));
    let e = svc.oneshot(req(CHAT)).await.unwrap_err();
    assert_eq!(e.reason(), Reason::ContextLengthExceeded);
    assert!(fakes["b1"].seen().is_empty() && fakes["l1"].seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_requests_own_list_replaces_the_chain() {
    let (svc, fakes) = stack(
        &[
            ("primary", &[("p1", 503)]),
            ("backup", &[("b1", 200)]),
            ("other", &[("o1", 200)]),
        ],
        |c| c.fallbacks("primary", ["backup"]),
    );
    let body = r#"{"model":"primary","models":["primary","not-a-group","other"],"messages":[]}"#;
    let res = svc.oneshot(req(body)).await.unwrap();
    assert_eq!(res.headers()[MODEL_GROUP_HEADER], "other");
    assert!(fakes["b1"].seen().is_empty());
}

#[tokio::test(start_paused = true)]
async fn when_everything_fails_the_most_useful_error_lists_every_attempt() {
    let (svc, _) = stack(
        &[
            ("primary", &[("p1", 404), ("p2", 404)]),
            ("backup", &[("b1", 429)]),
            ("last", &[("l1", 500)]),
        ],
        |c| c.fallbacks("primary", ["backup", "last"]),
    );
    let e = svc.oneshot(req(CHAT)).await.unwrap_err();
    assert_eq!(
        e.reason(),
        Reason::UpstreamRateLimited,
        "it says when to come back"
    );
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(7)));
    let list = attempts_of(&e);
    let groups: Vec<&str> = list
        .iter()
        .map(|a| a["model_group"].as_str().unwrap())
        .collect();
    // primary: p1, p2; backup: b1 (cooling after it: no second try);
    // last: l1 three times (a passing failure may retry the same deployment).
    assert_eq!(groups[..3], ["primary", "primary", "backup"]);
    assert!(
        groups[3..].iter().all(|g| *g == "last") && groups.len() == 6,
        "{groups:?}"
    );
}

/// `tollgate_fallbacks_total` by `from` and `to`; a name from a request's
/// own `models` list that is not a configured group is `other`.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_each_fallback_with_bounded_labels() {
    use crate::metrics::tests::Seen;
    use crate::metrics::{FALLBACKS_TOTAL, FROM, OTHER, TO};
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let (svc, _) = stack(
        &[("primary", &[("p1", 503)]), ("backup", &[("b1", 200)])],
        |c| c.fallbacks("primary", ["backup"]),
    );
    for _ in 0..2 {
        let res = svc.clone().oneshot(req(CHAT)).await.unwrap();
        assert_eq!(res.headers()[MODEL_GROUP_HEADER], "backup");
    }
    // The request's own list: an unknown name first, then the backup.
    let own = r#"{"model":"primary","models":["made-up","backup"],"messages":[]}"#;
    let res = svc.clone().oneshot(req(own)).await.unwrap();
    assert_eq!(res.headers()[MODEL_GROUP_HEADER], "backup");

    let mut seen = Seen::default();
    let seen = seen.update(&snapshotter);
    let n = |from, to| seen.counter(FALLBACKS_TOTAL, &[(FROM, from), (TO, to)]);
    assert_eq!(n("primary", "backup"), 2);
    assert_eq!(n("primary", OTHER), 1);
    assert_eq!(n(OTHER, "backup"), 1);
    assert_eq!(n("primary", "made-up"), 0, "no series for a client's name");
}
