//! The router over `service_fn`-style fake deployments, on tokio's paused
//! clock where cooldowns or backoffs matter.

use super::*;
use crate::read_request::Parsed;
use crate::sanitize::Secrets;
use http::{HeaderMap, Request, StatusCode};
use std::sync::atomic::AtomicUsize;

type Answer = Result<Response<Body>, Error>;
type BoxFut = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A fake deployment: counts its calls, answers by `behave(call number)`.
#[derive(Clone)]
struct Fake {
    calls: Arc<AtomicUsize>,
    behave: Arc<dyn Fn(usize) -> BoxFut + Send + Sync>,
    /// A path this upstream does not serve: answered with an HTML 404 page.
    unserved: Option<&'static str>,
}

impl Fake {
    fn new(behave: impl Fn(usize) -> BoxFut + Send + Sync + 'static) -> Self {
        Fake {
            calls: Arc::new(AtomicUsize::new(0)),
            behave: Arc::new(behave),
            unserved: None,
        }
    }

    /// Answers `path` with a web server's HTML 404 page, and the rest by `self`.
    fn not_serving(mut self, path: &'static str) -> Self {
        self.unserved = Some(path);
        self
    }

    /// Fails with `status` and this exact body.
    fn failing_body(status: u16, body: &'static str) -> Self {
        Fake::new(move |_| Box::pin(async move { Err(upstream_body(status, &[], body)) }))
    }

    /// Says the model does not exist (OpenAI's `model_not_found`).
    fn gone() -> Self {
        Fake::failing_body(404, classify::MODEL_GONE[0].example)
    }

    fn ok() -> Self {
        Fake::new(|_| Box::pin(async { Ok(json_answer("upstream-model")) }))
    }

    fn failing(status: u16, headers: &'static [(&'static str, &'static str)]) -> Self {
        Fake::new(move |_| Box::pin(async move { Err(upstream(status, headers)) }))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<LlmRequest> for Fake {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlmRequest) -> BoxFut {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.unserved == Some(req.uri().path()) {
            let page = "<html><head><title>404 Not Found</title></head><body><h1>404 Not Found</h1><hr>nginx</body></html>";
            let e = upstream_body(404, &[("content-type", "text/html")], page)
                .not_served_at("POST", req.uri().path());
            return Box::pin(async move { Err(e) });
        }
        (self.behave)(n)
    }
}

fn json_answer(model: &str) -> Response<Body> {
    let mut res = Response::new(Body::full(format!(
        r#"{{"id":"x","object":"chat.completion","model":"{model}","choices":[]}}"#
    )));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn upstream(status: u16, headers: &[(&str, &str)]) -> Error {
    upstream_body(
        status,
        headers,
        r#"{"error":{"message":"upstream says no"}}"#,
    )
}

fn upstream_body(status: u16, headers: &[(&str, &str)], body: &str) -> Error {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Error::from_upstream(
        StatusCode::from_u16(status).unwrap(),
        &h,
        body.as_bytes(),
        "fake".into(),
        &Secrets::none(),
    )
}

fn req(model: &str) -> LlmRequest {
    req_body(&format!(r#"{{"model":"{model}"}}"#))
}

fn req_body(body: &str) -> LlmRequest {
    req_at("/v1/chat/completions", body)
}

fn req_at(path: &str, body: &str) -> LlmRequest {
    Request::post(path)
        .body(Parsed::parse(path, Bytes::from(body.to_owned())).unwrap())
        .unwrap()
}

/// `(deployment name, fake, weight)`
type Spec<'a> = (&'a str, Fake, u32);

fn router(groups: Vec<(&str, Vec<Spec<'_>>)>) -> Router<Fake> {
    let mut b = Router::builder().clock(Arc::new(TokioClock::new()));
    for (g, ds) in groups {
        let ds = ds
            .into_iter()
            .map(|(n, f, w)| Deployment::new(n, f, w))
            .collect();
        b = b.group(g, ds).unwrap();
    }
    b.build()
}

fn served_by(res: &Response<Body>) -> &str {
    res.headers()[DEPLOYMENT_HEADER].to_str().unwrap()
}

fn attempts(res: &Response<Body>) -> &str {
    res.headers()[ATTEMPTS_HEADER].to_str().unwrap()
}

async fn text(res: Response<Body>) -> String {
    let b = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

#[tokio::test]
async fn unknown_model_is_404_naming_only_it() {
    let r = router(vec![("a", vec![("d", Fake::ok(), 1)])]);
    let e = r.oneshot(req("nope")).await.unwrap_err();
    assert_eq!(e.status(), 404);
    assert_eq!(e.reason(), Reason::ModelNotFound);
    assert!(e.message().contains("`nope`"));
    assert!(!e.message().contains("`a`"));
}

#[tokio::test]
async fn idle_router_splits_exactly_by_weight() {
    let r = router(vec![(
        "g",
        vec![("one", Fake::ok(), 1), ("three", Fake::ok(), 3)],
    )]);
    let mut three = 0;
    for _ in 0..4000 {
        let res = r.clone().oneshot(req("g")).await.unwrap();
        if served_by(&res) == "three" {
            three += 1;
        }
    }
    assert_eq!(three, 3000);
}

/// The issue's load test: 2 000 requests over weights 1:1:2, in proportion
/// within 5 %, both one at a time and 50 at a time with uneven latencies.
#[tokio::test(start_paused = true)]
async fn two_thousand_requests_split_1_1_2_within_5_percent() {
    for concurrency in [1usize, 50] {
        let slow = |ms: u64| {
            Fake::new(move |_| {
                Box::pin(async move {
                    let jitter = fastrand::u64(0..ms);
                    tokio::time::sleep(Duration::from_millis(ms + jitter)).await;
                    Ok(json_answer("m"))
                })
            })
        };
        let (a, b, c) = (slow(10), slow(10), slow(10));
        let r = router(vec![(
            "g",
            vec![
                ("a", a.clone(), 1),
                ("b", b.clone(), 1),
                ("c", c.clone(), 2),
            ],
        )]);
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = Vec::new();
        for _ in 0..2000 {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                let res = r.oneshot(req("g")).await.unwrap();
                text(res).await;
                drop(permit);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let (na, nb, nc) = (a.calls() as f64, b.calls() as f64, c.calls() as f64);
        assert_eq!(na + nb + nc, 2000.0);
        for (got, want) in [(na, 500.0), (nb, 500.0), (nc, 1000.0)] {
            assert!(
                (got - want).abs() <= want * 0.05,
                "concurrency {concurrency}: {na}/{nb}/{nc}"
            );
        }
        assert_eq!(r.in_flight("g", "a"), Some(0));
    }
}

#[tokio::test]
async fn load_aware_picks_the_less_busy_deployment() {
    let r = router(vec![(
        "g",
        vec![("a", Fake::ok(), 1), ("b", Fake::ok(), 1)],
    )]);
    // Keep answers alive (bodies not read) until three of them are `a`'s,
    // then let `b`'s go: three in flight at `a`, none at `b`.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(r.clone().oneshot(req("g")).await.unwrap());
        if held.iter().filter(|res| served_by(res) == "a").count() == 3 {
            break;
        }
    }
    held.retain(|res| served_by(res) == "a");
    assert_eq!(r.in_flight("g", "a"), Some(3));
    assert_eq!(r.in_flight("g", "b"), Some(0));
    for _ in 0..20 {
        let res = r.clone().oneshot(req("g")).await.unwrap();
        assert_eq!(served_by(&res), "b", "b has nothing in flight");
    }
    drop(held);
    assert_eq!(
        r.in_flight("g", "a"),
        Some(0),
        "guards live as long as the bodies"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_cools_down_until_retry_after_and_the_twin_serves() {
    let a = Fake::failing(429, &[("retry-after", "6")]);
    let b = Fake::ok();
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    // Until `a` is picked once, it serves nothing; after that, `b` serves all.
    for _ in 0..10 {
        let res = r.clone().oneshot(req("g")).await.unwrap();
        assert_eq!(served_by(&res), "b");
    }
    assert_eq!(a.calls(), 1, "a cooled down after its 429");
    let c = r.cooldown("g", "a").unwrap();
    assert_eq!(c.reason, CooldownReason::RateLimited);
    tokio::time::advance(Duration::from_millis(5_900)).await;
    for _ in 0..4 {
        r.clone().oneshot(req("g")).await.unwrap();
    }
    assert_eq!(a.calls(), 1, "still cooling at 5.9 s");
    tokio::time::advance(Duration::from_millis(200)).await;
    for _ in 0..4 {
        r.clone().oneshot(req("g")).await.unwrap();
    }
    assert_eq!(a.calls(), 2, "traffic again after 6 s");
}

#[tokio::test(start_paused = true)]
async fn retried_answer_says_where_and_after_how_many_attempts() {
    let a = Fake::failing(500, &[]);
    let b = Fake::ok();
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    // The wheel offers `a` first on an idle router.
    let res = r.clone().oneshot(req("g")).await.unwrap();
    assert_eq!(served_by(&res), "b");
    assert_eq!(attempts(&res), "2");
    assert_eq!(res.headers()[MODEL_GROUP_HEADER], "g");
    let v: Value = serde_json::from_str(&text(res).await).unwrap();
    assert_eq!(v["model"], "g", "the answer names the group that served");
}

#[tokio::test(start_paused = true)]
async fn client_faults_are_returned_at_once() {
    for status in [400, 422] {
        let a = Fake::failing(status, &[]);
        let b = Fake::failing(status, &[]);
        let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
        let e = r.clone().oneshot(req("g")).await.unwrap_err();
        assert_eq!(e.status().as_u16(), status);
        assert_eq!(a.calls() + b.calls(), 1, "{status}: no retry");
        assert!(r.cooldown("g", "a").is_none() && r.cooldown("g", "b").is_none());
        assert_eq!(e.metadata()[ATTEMPTS].as_array().unwrap().len(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn credential_and_model_gone_cool_down_long() {
    for (status, reason, long) in [
        (401, CooldownReason::Credential, 300),
        (403, CooldownReason::Credential, 300),
        (404, CooldownReason::ModelGone, 3600),
    ] {
        let a = match status {
            404 => Fake::gone(),
            _ => Fake::failing(status, &[]),
        };
        let b = Fake::ok();
        let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
        for _ in 0..5 {
            let res = r.clone().oneshot(req("g")).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(served_by(&res), "b");
        }
        assert_eq!(a.calls(), 1);
        let c = r.cooldown("g", "a").unwrap();
        assert_eq!(c.reason, reason);
        tokio::time::advance(Duration::from_secs(long - 1)).await;
        assert!(r.cooldown("g", "a").is_some(), "{status}");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.cooldown("g", "a").is_none(), "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn failures_cool_down_after_the_threshold_in_the_window() {
    let a = Fake::failing(500, &[]);
    let b = Fake::ok();
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    let mut n = 0;
    while a.calls() < 2 {
        r.clone().oneshot(req("g")).await.unwrap();
        n += 1;
        assert!(n < 100);
    }
    assert!(r.cooldown("g", "a").is_none(), "two failures: not yet");
    while a.calls() < 3 {
        r.clone().oneshot(req("g")).await.unwrap();
    }
    let c = r.cooldown("g", "a").unwrap();
    assert_eq!(c.reason, CooldownReason::Failures);
    for _ in 0..10 {
        r.clone().oneshot(req("g")).await.unwrap();
    }
    assert_eq!(a.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_same_deployment_is_retried_with_backoff_but_not_after_a_timeout() {
    let a = Fake::new(|n| {
        Box::pin(async move {
            if n < 2 {
                Err(upstream(502, &[]))
            } else {
                Ok(json_answer("m"))
            }
        })
    });
    let r = router(vec![("g", vec![("a", a.clone(), 1)])]);
    let started = tokio::time::Instant::now();
    let res = r.clone().oneshot(req("g")).await.unwrap();
    assert_eq!(attempts(&res), "3");
    // Backoffs of 50..100 ms then 100..200 ms.
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(150)..=Duration::from_millis(300)).contains(&waited),
        "{waited:?}"
    );

    let t = Fake::new(|_| {
        Box::pin(async {
            Err(Error::timeout(
                crate::TimeoutPhase::FirstByte,
                Duration::from_secs(1),
            ))
        })
    });
    let r = router(vec![("g", vec![("t", t.clone(), 1)])]);
    let e = r.oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.reason(), Reason::UpstreamTimeout);
    assert_eq!(
        t.calls(),
        1,
        "a timeout is not tried again on the same deployment"
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_bounds_attempts() {
    let fakes: Vec<Fake> = (0..5).map(|_| Fake::failing(503, &[])).collect();
    let r = Router::builder()
        .clock(Arc::new(TokioClock::new()))
        .policy(RetryPolicy {
            num_retries: 2,
            ..RetryPolicy::default()
        })
        .group(
            "g",
            fakes
                .iter()
                .enumerate()
                .map(|(i, f)| Deployment::new(&format!("d{i}"), f.clone(), 1))
                .collect(),
        )
        .unwrap()
        .build();
    let e = r.oneshot(req("g")).await.unwrap_err();
    assert_eq!(fakes.iter().map(Fake::calls).sum::<usize>(), 3);
    assert_eq!(e.reason(), Reason::UpstreamUnavailable);
    let list = e.metadata()[ATTEMPTS].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let names: std::collections::HashSet<&str> = list
        .iter()
        .map(|a| a["deployment"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "three different deployments: {list:?}");
}

#[tokio::test(start_paused = true)]
async fn every_deployment_cooling_is_503_with_the_soonest_expiry() {
    let a = Fake::failing(429, &[("retry-after", "6")]);
    let b = Fake::failing(429, &[("retry-after", "9")]);
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(
        e.reason(),
        Reason::UpstreamRateLimited,
        "attempts were made"
    );
    assert_eq!(e.metadata()[ATTEMPTS].as_array().unwrap().len(), 2);
    tokio::time::advance(Duration::from_secs(2)).await;
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.reason(), Reason::NoAvailableDeployment);
    assert_eq!(e.status(), 503);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
    assert!(!e.is_permanent());
    assert_eq!(
        a.calls() + b.calls(),
        2,
        "no upstream call while all cool down"
    );
}

#[tokio::test(start_paused = true)]
async fn a_group_whose_model_is_gone_stays_404_permanent() {
    let a = Fake::gone();
    let b = Fake::gone();
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    for _ in 0..3 {
        let e = r.clone().oneshot(req("g")).await.unwrap_err();
        assert_eq!(e.status(), 404);
        assert_eq!(e.reason(), Reason::UpstreamModelNotFound);
        assert!(e.is_permanent());
        assert!(e.retry_after().is_none());
    }
    assert_eq!(a.calls() + b.calls(), 2);

    let k = Fake::failing(401, &[]);
    let r = router(vec![("k", vec![("k", k.clone(), 1)])]);
    for _ in 0..2 {
        let e = r.clone().oneshot(req("k")).await.unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamAuthFailed);
        assert_eq!(e.status(), 502, "never a 401");
    }
    assert_eq!(k.calls(), 1);
}

#[tokio::test]
async fn full_deployments_are_skipped_then_503() {
    let r = Router::builder()
        .group(
            "g",
            vec![
                Deployment::new("a", Fake::ok(), 1).capacity(1),
                Deployment::new("b", Fake::ok(), 1).capacity(1),
            ],
        )
        .unwrap()
        .build();
    let one = r.clone().oneshot(req("g")).await.unwrap();
    let two = r.clone().oneshot(req("g")).await.unwrap();
    assert_ne!(served_by(&one), served_by(&two));
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.reason(), Reason::NoAvailableDeployment);
    assert!(e.retry_after().is_some());
    drop(one);
    r.clone().oneshot(req("g")).await.unwrap();
}

fn sse(frames: Vec<Result<&'static str, Error>>) -> Response<Body> {
    let stream = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|f| f.map(|s| Frame::data(Bytes::from_static(s.as_bytes())))),
    );
    let mut res = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    res
}

const ROLE: &str =
    "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
const TOK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"tok\"}}]}\n\n";

#[tokio::test(start_paused = true)]
async fn a_stream_cut_before_content_is_retried_invisibly() {
    let a = Fake::new(|_| {
        Box::pin(async {
            Ok(sse(vec![
                Ok(ROLE),
                Err(Error::new(Reason::UpstreamStreamCut, "cut")),
            ]))
        })
    });
    let b =
        Fake::new(|_| Box::pin(async { Ok(sse(vec![Ok(ROLE), Ok(TOK), Ok("data: [DONE]\n\n")])) }));
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    let res = r
        .clone()
        .oneshot(req_body(r#"{"model":"g","stream":true}"#))
        .await
        .unwrap();
    assert_eq!(served_by(&res), "b");
    assert_eq!(attempts(&res), "2");
    assert_eq!(text(res).await, format!("{ROLE}{TOK}data: [DONE]\n\n"));
    assert_eq!(a.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_content_is_the_clients_and_counts_as_a_failure() {
    let a = Fake::new(|_| {
        Box::pin(async {
            Ok(sse(vec![
                Ok(ROLE),
                Ok(TOK),
                Ok(TOK),
                Err(Error::new(Reason::UpstreamStreamCut, "cut")),
            ]))
        })
    });
    let r = Router::builder()
        .clock(Arc::new(TokioClock::new()))
        .policy(RetryPolicy {
            failures: FailureWindow {
                threshold: 1,
                window: Duration::from_secs(60),
            },
            ..RetryPolicy::default()
        })
        .group("g", vec![Deployment::new("a", a.clone(), 1)])
        .unwrap()
        .build();
    let res = r
        .clone()
        .oneshot(req_body(r#"{"model":"g","stream":true}"#))
        .await
        .unwrap();
    assert_eq!(attempts(&res), "1");
    let mut body = res.into_body();
    let mut got = String::new();
    let err = loop {
        match body.frame().await {
            Some(Ok(f)) => got.push_str(std::str::from_utf8(f.data_ref().unwrap()).unwrap()),
            Some(Err(e)) => break e,
            None => panic!("the cut must surface"),
        }
    };
    assert_eq!(got, format!("{ROLE}{TOK}{TOK}"));
    assert_eq!(err.reason(), Reason::UpstreamStreamCut);
    assert_eq!(a.calls(), 1, "no retry after the commit point");
    assert_eq!(
        r.cooldown("g", "a").map(|c| c.reason),
        Some(CooldownReason::Failures)
    );
}

#[test]
fn wheel_is_smooth_and_proportional() {
    assert_eq!(&*wheel(&[1, 1, 2]), &[2, 0, 1, 2]);
    assert_eq!(&*wheel(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
    let big = wheel(&[1_000_000, 3_000_000]);
    assert!(big.len() <= 4096);
    let ones = big.iter().filter(|&&i| i == 1).count() as f64;
    assert!((ones / big.len() as f64 - 0.75).abs() < 0.001, "{ones}");
    assert_eq!(wheel(&[1, 100_000]).iter().filter(|&&i| i == 0).count(), 1);
}

#[test]
fn builder_refuses_empty_repeated_and_ambiguous_groups() {
    assert!(Router::<()>::builder().group("g", vec![]).is_err());
    let b = Router::builder()
        .group("g", vec![Deployment::new("d", (), 1)])
        .unwrap();
    assert!(b.group("g", vec![Deployment::new("d", (), 1)]).is_err());
    let Err(e) = Router::builder().group(
        "h",
        vec![Deployment::new("d", (), 1), Deployment::new("d", (), 1)],
    ) else {
        panic!("two deployments of one name");
    };
    assert!(e.to_string().contains("two deployments named `d`"), "{e}");
}

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    let p = RetryPolicy::default();
    for _ in 0..100 {
        let b0 = p.backoff_for(0);
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&b0));
        let b3 = p.backoff_for(3);
        assert!((Duration::from_millis(400)..=Duration::from_millis(800)).contains(&b3));
        assert!(p.backoff_for(30) <= p.max_backoff);
    }
}

/// Metrics through a local recorder: each failed attempt, cooldown and retry
/// is counted once, by deployment and reason; the in-flight gauge follows
/// the body.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_count_errors_cooldowns_retries_and_in_flight() {
    use crate::metrics::tests::Seen;
    use crate::metrics::*;
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let limited = Fake::failing(429, &[("retry-after", "6")]);
    let r = router(vec![
        ("g", vec![("a", limited.clone(), 1), ("b", Fake::ok(), 1)]),
        ("h", vec![("x", Fake::failing(500, &[]), 1)]),
    ]);
    for _ in 0..4 {
        let res = r.clone().oneshot(req("g")).await.unwrap();
        assert_eq!(served_by(&res), "b");
        text(res).await;
    }
    assert_eq!(limited.calls(), 1, "cooling down after its 429");
    // One deployment, failing 5xx: retried twice on itself, then given up.
    assert_eq!(r.clone().oneshot(req("h")).await.unwrap_err().status(), 502);
    // A body still being read keeps its deployment in flight.
    let held = r.clone().oneshot(req("g")).await.unwrap();

    let mut seen = Seen::default();
    seen.update(&snapshotter);
    let errors =
        |d, reason| seen.counter(UPSTREAM_ERRORS_TOTAL, &[(DEPLOYMENT, d), (REASON, reason)]);
    assert_eq!(errors("g/a", "upstream_rate_limited"), 1);
    assert_eq!(errors("h/x", "upstream_error"), 3);
    let cooldowns = |d, reason| seen.counter(COOLDOWNS_TOTAL, &[(DEPLOYMENT, d), (REASON, reason)]);
    assert_eq!(cooldowns("g/a", "rate_limited"), 1);
    assert_eq!(
        cooldowns("h/x", "failures"),
        1,
        "the third failure in the window"
    );
    assert_eq!(seen.counter(RETRIES_TOTAL, &[(MODEL_GROUP, "g")]), 1);
    assert_eq!(seen.counter(RETRIES_TOTAL, &[(MODEL_GROUP, "h")]), 2);
    let in_flight = |seen: &Seen, d| seen.gauge(DEPLOYMENT_IN_FLIGHT, &[(DEPLOYMENT, d)]);
    assert_eq!(in_flight(&seen, "g/b"), Some(1.0));
    assert_eq!(in_flight(&seen, "g/a"), Some(0.0));
    assert_eq!(in_flight(&seen, "h/x"), Some(0.0));
    text(held).await;
    seen.update(&snapshotter);
    assert_eq!(in_flight(&seen, "g/b"), Some(0.0), "released with the body");
}

#[tokio::test]
async fn an_answers_model_is_renamed_in_one_buffer_or_in_slices() {
    use http_body_util::BodyExt;
    // Below and above `Chunks::COALESCE_BELOW`: one buffer, or three slices.
    for filler in [10, 40_000] {
        let body = format!(
            r#"{{"id":"x","model":"up\u002dstream","choices":[{{"text":"{}"}}]}}"#,
            "a".repeat(filler)
        );
        let out = set_model(Body::full(body.clone()), &json_string("g"), "g").await;
        let got = out.collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["model"], "g");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap().len(), filler);
        assert_eq!(
            got.len(),
            body.len() - r#""up\u002dstream""#.len() + r#""g""#.len()
        );
    }
    // An answer already named after the group is forwarded as it came.
    let same = r#"{"model":"g","choices":[]}"#;
    let out = set_model(Body::full(same), &json_string("g"), "g").await;
    assert_eq!(out.collect().await.unwrap().to_bytes(), same);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_413_is_tried_elsewhere_and_cools_nothing() {
    let a = Fake::failing_body(
        413,
        "<html><body><h1>413 Request Entity Too Large</h1></body></html>",
    );
    let b = Fake::ok();
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    for _ in 0..4 {
        let res = r.clone().oneshot(req("g")).await.unwrap();
        assert_eq!(served_by(&res), "b");
    }
    assert!(a.calls() >= 1, "a was tried");
    assert!(r.cooldown("g", "a").is_none(), "a 413 cools nothing");
    // Refused everywhere: the client's 413.
    let c = Fake::failing(413, &[]);
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("c", c.clone(), 1)])]);
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.status(), 413);
    assert_eq!(e.reason(), Reason::BodyTooLarge);
    assert_eq!(e.metadata()[ATTEMPTS].as_array().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_content_filter_is_the_clients_answer_and_cools_nothing() {
    for row in classify::CONTENT_FILTERED {
        let a = Fake::failing_body(row.status, row.example);
        let b = Fake::failing_body(row.status, row.example);
        let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
        let e = r.clone().oneshot(req("g")).await.unwrap_err();
        assert_eq!(
            e.reason(),
            Reason::UpstreamContentFiltered,
            "{}",
            row.provider
        );
        assert_eq!(e.status().as_u16(), row.status);
        assert_eq!(a.calls() + b.calls(), 1, "{}: not retried", row.provider);
        assert!(r.cooldown("g", "a").is_none() && r.cooldown("g", "b").is_none());
    }
}

/// Known failure #16: a route the upstream does not serve takes only that
/// route on that deployment away, and says which.
#[tokio::test(start_paused = true)]
async fn a_route_not_served_cools_only_that_route_on_that_deployment() {
    let a = Fake::ok().not_serving("/v1/responses");
    let b = Fake::ok();
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    let responses = || req_at("/v1/responses", r#"{"model":"g","input":"hi"}"#);
    for _ in 0..4 {
        let res = r.clone().oneshot(responses()).await.unwrap();
        assert_eq!(served_by(&res), "b");
    }
    assert_eq!(
        a.calls(),
        1,
        "a got one responses request, then that route cooled"
    );
    assert!(
        r.cooldown("g", "a").is_none(),
        "the deployment itself is not cooling"
    );
    let until = r.route_cooldown("g", "a", Endpoint::Responses).unwrap();
    assert!(
        r.route_cooldown("g", "a", Endpoint::ChatCompletions)
            .is_none()
    );
    assert!(r.route_cooldown("g", "b", Endpoint::Responses).is_none());
    // Chat still goes to a.
    let mut on_a = 0;
    for _ in 0..6 {
        let res = r.clone().oneshot(req("g")).await.unwrap();
        on_a += usize::from(served_by(&res) == "a");
    }
    assert!(on_a >= 2, "a keeps serving chat ({on_a} of 6)");
    // The route comes back after `route_cooldown` (300 s by default).
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(r.route_cooldown("g", "a", Endpoint::Responses), Some(until));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(r.route_cooldown("g", "a", Endpoint::Responses).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_route_no_deployment_serves_is_a_502_naming_deployment_and_path() {
    let a = Fake::ok().not_serving("/v1/responses");
    let b = Fake::ok().not_serving("/v1/responses");
    let r = router(vec![("g", vec![("a", a.clone(), 1), ("b", b.clone(), 1)])]);
    let responses = || req_at("/v1/responses", r#"{"model":"g","input":"hi"}"#);
    let e = r.clone().oneshot(responses()).await.unwrap_err();
    assert_eq!(e.reason(), Reason::UpstreamRouteNotServed);
    assert_eq!(e.status(), 502);
    assert!(!e.is_permanent());
    assert!(e.retry_after().is_none());
    let d = e.metadata()["deployment"].as_str().unwrap();
    assert!(
        e.message().contains(&format!("Deployment `{d}`")),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("POST /v1/responses"),
        "{}",
        e.message()
    );
    assert_eq!(e.metadata()["upstream_path"], "/v1/responses");
    assert_eq!(e.metadata()[ATTEMPTS].as_array().unwrap().len(), 2);
    // Now both routes cool: no upstream call, still a 502 that lists them.
    let e = r.clone().oneshot(responses()).await.unwrap_err();
    assert_eq!(e.reason(), Reason::UpstreamRouteNotServed);
    let cooling = e.metadata()["cooling"].as_array().unwrap();
    assert_eq!(cooling.len(), 2);
    assert!(cooling.iter().all(|c| c["reason"] == "route_not_served"));
    assert_eq!(a.calls() + b.calls(), 2);
    // Chat is untouched.
    r.clone().oneshot(req("g")).await.unwrap();
    assert_eq!(a.calls() + b.calls(), 3);
}

fn one_failure_cools(threshold_one: bool) -> RetryPolicy {
    RetryPolicy {
        failures: FailureWindow {
            threshold: if threshold_one { 1 } else { 3 },
            window: Duration::from_secs(60),
        },
        ..RetryPolicy::default()
    }
}

fn router_with(policy: RetryPolicy, ds: Vec<(&str, Fake)>) -> Router<Fake> {
    Router::builder()
        .clock(Arc::new(TokioClock::new()))
        .policy(policy)
        .group(
            "g",
            ds.into_iter()
                .map(|(n, f)| Deployment::new(n, f, 1))
                .collect(),
        )
        .unwrap()
        .build()
}

/// Sends requests until one reaches an upstream or is refused without an
/// attempt; returns whether it was refused with 503 `no_available_deployment`.
async fn refused_without_attempt(r: &Router<Fake>) -> bool {
    match r.clone().oneshot(req("g")).await {
        Err(e) => e.reason() == Reason::NoAvailableDeployment,
        Ok(_) => false,
    }
}

/// The issue's scenario: a 429 with `Retry-After: 1` on one deployment
/// while the other was just put in a 30 s failure cooldown. The client is
/// told 1 s, and after 1 s its request reaches an upstream again.
#[tokio::test(start_paused = true)]
async fn a_429_retry_after_is_kept_when_it_is_true() {
    let a = Fake::failing(429, &[("retry-after", "1")]);
    let b = Fake::failing(500, &[]);
    let r = router_with(
        one_failure_cools(true),
        vec![("a", a.clone()), ("b", b.clone())],
    );
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.reason(), Reason::UpstreamRateLimited);
    assert_eq!(
        r.cooldown("g", "b").unwrap().reason,
        CooldownReason::Failures
    );
    let told = e.retry_after().unwrap();
    assert_eq!(told, Duration::from_secs(1));
    tokio::time::advance(told).await;
    assert!(
        !refused_without_attempt(&r).await,
        "told 1 s, served (by a) after 1 s"
    );
    assert_eq!(a.calls(), 2);
}

/// The issue's scenario where it bites: the upstream says "retry in 1 s"
/// but the gateway has just cooled every deployment for 30 s (a 503 with
/// `Retry-After: 1` that completes the failure window, and a 500). The
/// client is told 30 s, and is not refused after that.
#[tokio::test(start_paused = true)]
async fn the_clients_retry_after_is_never_sooner_than_every_cooldown() {
    let a = Fake::failing(503, &[("retry-after", "1")]);
    let b = Fake::failing(500, &[]);
    let r = router_with(
        one_failure_cools(true),
        vec![("a", a.clone()), ("b", b.clone())],
    );
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.reason(), Reason::UpstreamUnavailable);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(refused_without_attempt(&r).await, "still cooling at 29 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        !refused_without_attempt(&r).await,
        "an upstream is tried at 30 s"
    );

    // A 429 shorter than the gateway's own shortest rate-limit cooldown.
    let a = Fake::failing(429, &[("retry-after", "1")]);
    let policy = RetryPolicy {
        min_rate_limit_cooldown: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let r = router_with(policy, vec![("a", a.clone())]);
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(5)));

    // When the upstream's value is the gateway's own cooldown, it stands.
    let a = Fake::failing(503, &[("retry-after", "1")]);
    let r = router_with(one_failure_cools(false), vec![("a", a.clone())]);
    let e = r.clone().oneshot(req("g")).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_5xx_that_says_when_to_come_back_cools_its_deployment_until_then() {
    let a = Fake::failing(500, &[("retry-after", "20")]);
    let b = Fake::ok();
    let r = router_with(
        one_failure_cools(false),
        vec![("a", a.clone()), ("b", b.clone())],
    );
    for _ in 0..4 {
        assert_eq!(served_by(&r.clone().oneshot(req("g")).await.unwrap()), "b");
    }
    assert_eq!(a.calls(), 1, "one 500 with Retry-After: 20 is enough");
    assert_eq!(
        r.cooldown("g", "a").unwrap().reason,
        CooldownReason::Failures
    );
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(r.cooldown("g", "a").is_some());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(r.cooldown("g", "a").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_router_carries_over_cooldowns_and_in_flight_counts() {
    let limited = Fake::failing(429, &[("retry-after", "60")]);
    let old = Router::builder()
        .clock(Arc::new(TokioClock::new()))
        .group(
            "g",
            vec![
                Deployment::new("a", limited.clone(), 1),
                Deployment::new("b", Fake::ok(), 1).capacity(1),
            ],
        )
        .unwrap()
        .build();
    // `a` cools down for 60 s once it is picked.
    while limited.calls() == 0 {
        old.clone().oneshot(req("g")).await.unwrap();
    }
    // A response held open counts against `b`'s capacity.
    let held = old.clone().oneshot(req("g")).await.unwrap();
    assert_eq!(served_by(&held), "b");
    assert!(old.cooldown("g", "a").is_some());
    assert_eq!(old.in_flight("g", "b"), Some(1));

    // A new group before `g` moves every index; `a` and `b` keep their names.
    let fresh = Fake::ok();
    let new = Router::builder()
        .clock(Arc::new(TokioClock::new()))
        .group("first", vec![Deployment::new("f", Fake::ok(), 1)])
        .unwrap()
        .group(
            "g",
            vec![
                Deployment::new("a", Fake::ok(), 1),
                Deployment::new("b", Fake::ok(), 1).capacity(1),
                Deployment::new("c", fresh.clone(), 1),
            ],
        )
        .unwrap()
        .carry_over(&old)
        .build();
    let c = new.cooldown("g", "a").expect("a's cooldown carried over");
    assert_eq!(c.reason, CooldownReason::RateLimited);
    assert_eq!(new.cooldown("g", "c"), None, "a new deployment starts cool");
    assert_eq!(
        new.in_flight("g", "b"),
        Some(1),
        "the old request counts here"
    );
    // `a` cools and `b` is full: `c` serves everything.
    for _ in 0..5 {
        let res = new.clone().oneshot(req("g")).await.unwrap();
        assert_eq!(served_by(&res), "c");
    }
    assert_eq!(fresh.calls(), 5);
    // The old router's request ends: `b` is free in the new one.
    drop(held);
    assert_eq!(new.in_flight("g", "b"), Some(0));
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(new.cooldown("g", "a"), None, "expired on time");
}

/// `Router::health` over a manual clock: in flight against capacity, the
/// cooldown with its reason and time left, the failed attempts of the
/// last minutes, and a route family cooling alone.
#[tokio::test]
async fn health_shows_in_flight_cooldowns_and_recent_errors() {
    let clock = ManualClock::default();
    let limited = Fake::failing(429, &[("retry-after", "6")]);
    let r = Router::builder()
        .clock(Arc::new(clock.clone()))
        .group(
            "g",
            vec![
                Deployment::new("a", limited.clone(), 1),
                Deployment::new("b", Fake::ok().not_serving("/v1/responses"), 2).capacity(4),
            ],
        )
        .unwrap()
        .group("other", vec![Deployment::new("z", Fake::ok(), 1)])
        .unwrap()
        .build();
    let h = r.health();
    assert_eq!(
        h.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        ["g", "other"]
    );
    let a = h.deployment("g", "a").unwrap();
    assert_eq!((a.state(), a.in_flight, a.capacity), ("ok", 0, None));
    assert!(a.errors.is_empty());
    let b = h.deployment("g", "b").unwrap();
    assert_eq!((b.weight, b.capacity), (2, Some(4)));

    // `a` meets a 429 (sooner or later it is picked); `b` serves the retry
    // and keeps its answer open.
    let mut held = Vec::new();
    while limited.calls() == 0 {
        held.push(r.clone().oneshot(req("g")).await.unwrap());
    }
    let h = r.health();
    let a = h.deployment("g", "a").unwrap();
    assert_eq!(a.state(), "cooldown");
    let c = a.cooldown.unwrap();
    assert_eq!(c.reason, CooldownReason::RateLimited);
    assert_eq!(c.until, h.now + 6_000);
    assert_eq!(c.remaining, Duration::from_secs(6));
    assert_eq!(a.errors, [(Reason::UpstreamRateLimited, 1)]);
    assert_eq!(a.errors_total(), 1);
    let b = h.deployment("g", "b").unwrap();
    assert_eq!(b.in_flight as usize, held.len(), "the open answers count");
    assert!(b.errors.is_empty() && b.cooldown.is_none());
    drop(held);
    assert_eq!(r.health().deployment("g", "b").unwrap().in_flight, 0);

    // Time left shrinks with the clock, then the cooldown is over; its
    // error still counts.
    clock.advance(Duration::from_millis(4_500));
    let c = r.health().deployment("g", "a").unwrap().cooldown.unwrap();
    assert_eq!(c.remaining, Duration::from_millis(1_500));
    clock.advance(Duration::from_millis(1_500));
    let a = r.health().deployment("g", "a").unwrap().clone();
    assert_eq!((a.state(), a.cooldown), ("ok", None));
    assert_eq!(a.errors, [(Reason::UpstreamRateLimited, 1)]);

    // `b` does not serve /v1/responses: that route cools on it, alone.
    r.clone()
        .oneshot(req_at("/v1/responses", r#"{"model":"g","input":"hi"}"#))
        .await
        .unwrap_err();
    let h = r.health();
    let b = h.deployment("g", "b").unwrap();
    assert_eq!(b.state(), "ok");
    assert_eq!(b.route_cooldowns.len(), 1);
    assert_eq!(b.route_cooldowns[0].route, Endpoint::Responses);
    assert_eq!(b.route_cooldowns[0].remaining, Duration::from_secs(300));
    assert_eq!(b.errors, [(Reason::UpstreamRouteNotServed, 1)]);

    // Five minutes on, the errors have left the window.
    clock.advance(Duration::from_secs(5 * 60));
    let h = r.health();
    assert!(h.deployment("g", "a").unwrap().errors.is_empty());
    assert!(h.deployment("g", "b").unwrap().route_cooldowns.is_empty());
}

/// Two routers over one cooldown store (two replicas sharing state): a
/// cooldown set by one shows in the other's snapshot, as it steers the
/// other's routing; failures are counted where they happened.
#[tokio::test]
async fn health_reads_cooldowns_through_the_shared_store() {
    let clock = ManualClock::default();
    let store: Arc<dyn CooldownStore> = Arc::new(InMemoryCooldowns::new(2));
    let replica = |a: Fake, b: Fake| {
        Router::builder()
            .clock(Arc::new(clock.clone()))
            .cooldown_store(store.clone())
            .group(
                "g",
                vec![Deployment::new("a", a, 1), Deployment::new("b", b, 1)],
            )
            .unwrap()
            .build()
    };
    let failing = Fake::failing(401, &[]);
    let one = replica(failing.clone(), Fake::ok());
    let two = replica(Fake::ok(), Fake::ok());
    while failing.calls() == 0 {
        one.clone().oneshot(req("g")).await.unwrap();
    }
    let seen = two.health();
    let a = seen.deployment("g", "a").unwrap();
    assert_eq!(
        a.cooldown.map(|c| c.reason),
        Some(CooldownReason::Credential)
    );
    assert!(a.errors.is_empty(), "replica two met no failure");
    assert_eq!(
        one.health().deployment("g", "a").unwrap().errors,
        [(Reason::UpstreamAuthFailed, 1)]
    );
    // And replica two routes as its snapshot says.
    for _ in 0..4 {
        assert_eq!(
            served_by(&two.clone().oneshot(req("g")).await.unwrap()),
            "b"
        );
    }
}

#[tokio::test]
async fn a_rebuilt_router_keeps_the_recent_errors_of_the_deployments_it_keeps() {
    let clock = ManualClock::default();
    let failing = Fake::failing(500, &[]);
    let old = Router::builder()
        .clock(Arc::new(clock.clone()))
        .group(
            "g",
            vec![
                Deployment::new("a", failing.clone(), 1),
                Deployment::new("b", Fake::ok(), 1),
            ],
        )
        .unwrap()
        .build();
    while failing.calls() == 0 {
        old.clone().oneshot(req("g")).await.unwrap();
    }
    let new = Router::builder()
        .clock(Arc::new(clock.clone()))
        .group("n", vec![Deployment::new("x", Fake::ok(), 1)])
        .unwrap()
        .group("g", vec![Deployment::new("a", Fake::ok(), 1)])
        .unwrap()
        .carry_over(&old)
        .build();
    assert_eq!(
        new.health().deployment("g", "a").unwrap().errors,
        [(Reason::UpstreamError, 1)]
    );
    assert!(new.health().deployment("n", "x").unwrap().errors.is_empty());
}

#[test]
fn health_json_names_every_field_with_chains_and_queue() {
    let clock = ManualClock::new(120_000);
    let r = Router::builder()
        .clock(Arc::new(clock.clone()))
        .group("g", vec![Deployment::new("a", Fake::ok(), 1).capacity(3)])
        .unwrap()
        .group("h", vec![Deployment::new("b", Fake::ok(), 1)])
        .unwrap()
        .build();
    let id = DeploymentId::new(0, "g/a");
    r.shared.store.cool_down(
        &id,
        Cooldown {
            until: 150_000,
            reason: CooldownReason::Failures,
        },
    );
    r.shared.groups["g"].slots[0]
        .errors
        .record(Reason::UpstreamTimeout, 110_000);
    let chains = crate::fallback::Chains::builder(["g", "h"])
        .fallbacks("g", ["h"])
        .build()
        .unwrap();
    let json = r
        .health()
        .with_fallbacks(&chains)
        .with_queue(|g| {
            (g == "g").then(|| QueueDepth {
                capacity: 8,
                in_flight: 8,
                waiting: vec![("team:x".into(), 2), ("team:y".into(), 1)],
            })
        })
        .to_json();
    assert_eq!(
        json,
        serde_json::json!({
            "now_ms": 120_000,
            "error_window_minutes": 5,
            "groups": [
                {
                    "model_group": "g",
                    "fallbacks": ["h"],
                    "context_window_fallbacks": [],
                    "queue": {"capacity": 8, "in_flight": 8, "waiting": 3,
                              "waiting_by_tenant": {"team:x": 2, "team:y": 1}},
                    "deployments": [{
                        "deployment": "a", "state": "cooldown", "weight": 1,
                        "in_flight": 0, "capacity": 3,
                        "cooldown": {"reason": "failures", "until_ms": 150_000, "remaining_ms": 30_000},
                        "route_cooldowns": [],
                        "errors": {"upstream_timeout": 1}, "errors_total": 1,
                    }],
                },
                {
                    "model_group": "h",
                    "fallbacks": [],
                    "context_window_fallbacks": [],
                    "queue": null,
                    "deployments": [{
                        "deployment": "b", "state": "ok", "weight": 1,
                        "in_flight": 0, "capacity": null, "cooldown": null,
                        "route_cooldowns": [], "errors": {}, "errors_total": 0,
                    }],
                },
            ],
        })
    );
}
