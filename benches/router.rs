//! The router's own cost, and the full gateway's throughput.
//!
//! ```text
//! cargo bench --bench router -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `router/direct`: an instant deployment called directly with a cloned
//!   request, its answer read whole (the baseline).
//! - `router/{1,3}_deployments`: the same through `Router` (pick, in-flight
//!   guard, cooldown reads, headers, the `model` splice of the answer).
//! - `router/fallback_3_deployments`: `Fallback` over that router (no
//!   fallback taken).
//! - `router/failover_429`: every request meets a 429 on one deployment
//!   (`num_retries` > 0, the 429 cooldown set to 0) and is served by the next.
//!
//! The router's added cost per request is `router/3_deployments` minus
//! `router/direct`.
//!
//! - `router/{3_deployments,failover_429}_prometheus`: the same with a
//!   Prometheus recorder (`metrics-exporter-prometheus`) current while the
//!   router is built and run, so every metric is really recorded (the other
//!   cases run without a recorder: the metric calls are no-ops).
//!
//! - `gateway/full_stack`: the reference gateway (`NormalizeErrors` →
//!   `ReadRequest` → `Fallback` → `Router` → provider) on 127.0.0.1 in front
//!   of the bundled mock upstream, driven by a keep-alive HTTP client with 32
//!   requests in flight; all in one process on a 2-thread runtime, so client,
//!   gateway and upstream share the machine's cores. Reported as requests/s.

#[path = "../examples/gateway.rs"]
mod gateway;
#[path = "../examples/mock_upstream.rs"]
mod mock_upstream;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tollgate::fallback::{Chains, FallbackLayer};
use tollgate::read_request::Parsed;
use tollgate::router::{Deployment, RetryPolicy, Router};
use tollgate::sanitize::Secrets;
use tollgate::{Body, Error, LlmRequest};
use tower::{Layer, Service, ServiceExt, service_fn};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"upstream-model","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
const REQUEST: &str = r#"{"model":"g","messages":[{"role":"user","content":"Say hello."}]}"#;

fn answer() -> Response<Body> {
    let mut res = Response::new(Body::full(Bytes::from_static(ANSWER.as_bytes())));
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    res
}

fn instant()
-> impl Service<LlmRequest, Response = Response<Body>, Error = Error, Future: Send> + Clone + Sync {
    service_fn(|req: LlmRequest| async move {
        black_box(req.body().model());
        Ok::<_, Error>(answer())
    })
}

async fn drive<S>(svc: &S, req: &LlmRequest, iters: u64) -> Duration
where
    S: Service<LlmRequest, Response = Response<Body>, Error = Error> + Clone,
{
    let start = Instant::now();
    for _ in 0..iters {
        let res = svc.clone().oneshot(req.clone()).await.unwrap();
        black_box(res.into_body().collect().await.unwrap().to_bytes());
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req: LlmRequest = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(
            Parsed::parse(
                "/v1/chat/completions",
                Bytes::from_static(REQUEST.as_bytes()),
            )
            .unwrap(),
        )
        .unwrap();

    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    let direct = instant();
    g.bench_function("direct", |b| {
        b.iter_custom(|n| rt.block_on(drive(&direct, &req, n)))
    });
    let one = Router::builder()
        .group("g", vec![Deployment::new("a", instant(), 1)])
        .unwrap()
        .build();
    g.bench_function("1_deployment", |b| {
        b.iter_custom(|n| rt.block_on(drive(&one, &req, n)))
    });
    let three = Router::builder()
        .group(
            "g",
            vec![
                Deployment::new("a", instant(), 1),
                Deployment::new("b", instant(), 1),
                Deployment::new("c", instant(), 2),
            ],
        )
        .unwrap()
        .build();
    g.bench_function("3_deployments", |b| {
        b.iter_custom(|n| rt.block_on(drive(&three, &req, n)))
    });
    let prometheus = prometheus();
    let three_prometheus = metrics::with_local_recorder(&prometheus, || {
        Router::builder()
            .group(
                "g",
                vec![
                    Deployment::new("a", instant(), 1),
                    Deployment::new("b", instant(), 1),
                    Deployment::new("c", instant(), 2),
                ],
            )
            .unwrap()
            .build()
    });
    g.bench_function("3_deployments_prometheus", |b| {
        b.iter_custom(|n| rt.block_on(drive(&three_prometheus, &req, n)))
    });
    let chains = Chains::builder(["g", "h"])
        .fallbacks("g", ["h"])
        .build()
        .unwrap();
    let fallback = FallbackLayer::new(chains).layer(three.clone());
    g.bench_function("fallback_3_deployments", |b| {
        b.iter_custom(|n| rt.block_on(drive(&fallback, &req, n)))
    });

    // Every other call of the shared fake answers 429: one attempt fails,
    // the retry elsewhere serves (the cooldown is 0 so it never settles).
    let calls = Arc::new(AtomicUsize::new(0));
    let flaky = {
        let calls = calls.clone();
        service_fn(move |_req: LlmRequest| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if n.is_multiple_of(2) {
                    let mut h = http::HeaderMap::new();
                    h.insert("retry-after", "0".parse().unwrap());
                    Err(Error::from_upstream(
                        StatusCode::TOO_MANY_REQUESTS,
                        &h,
                        br#"{"error":{"message":"slow down"}}"#,
                        "p".into(),
                        &Secrets::none(),
                    ))
                } else {
                    Ok(answer())
                }
            }
        })
    };
    let failover = || {
        Router::builder()
            .policy(RetryPolicy {
                min_rate_limit_cooldown: Duration::ZERO,
                ..RetryPolicy::default()
            })
            .group(
                "g",
                vec![
                    Deployment::new("a", flaky.clone(), 1),
                    Deployment::new("b", flaky.clone(), 1),
                ],
            )
            .unwrap()
            .build()
    };
    let plain = failover();
    g.bench_function("failover_429", |b| {
        b.iter_custom(|n| rt.block_on(drive(&plain, &req, n)))
    });
    let measured = metrics::with_local_recorder(&prometheus, failover);
    g.bench_function("failover_429_prometheus", |b| {
        b.iter_custom(|n| {
            // Failure-path metrics use the recorder current when they happen.
            let _local = metrics::set_default_local_recorder(&prometheus);
            rt.block_on(drive(&measured, &req, n))
        })
    });
    g.finish();

    full_stack(c);
}

/// The bench client's virtual key (a loopback-only bench key, not a secret).
const BENCH_KEY: &str = "tg-bench-BenchKeyForLoopbackOnly000000";

fn full_stack(c: &mut Criterion) {
    // SAFETY: set before this bench starts any other thread.
    unsafe { std::env::set_var("TOLLGATE_BENCH_KEY", BENCH_KEY) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (url, _mock) = rt.block_on(async {
        let mock = mock_upstream::spawn(mock_upstream::MockConfig::default())
            .await
            .unwrap();
        let config = tollgate::config::Config::from_toml(
            "bench.toml",
            &format!(
                "[keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"TOLLGATE_BENCH_KEY\"\nmodels = [\"*\"]\n\
                 [[groups]]\nname = \"g\"\n[[groups.deployments]]\nprovider = \"mock\"\nname = \"a\"\nbase_url = \"{0}\"\nmodel = \"mock-small\"\n[[groups.deployments]]\nprovider = \"mock\"\nname = \"b\"\nbase_url = \"{0}\"\nmodel = \"mock-small\"\n",
                mock.base_url()
            ),
        )
        .unwrap();
        let app = gateway::app(&config).await.unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("http://{addr}/v1/chat/completions"), mock)
    });
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("gateway");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full_stack", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                let next = Arc::new(AtomicUsize::new(0));
                let workers: Vec<_> = (0..32)
                    .map(|_| {
                        let (client, url, next) = (client.clone(), url.clone(), next.clone());
                        tokio::spawn(async move {
                            while (next.fetch_add(1, Ordering::Relaxed) as u64) < n {
                                let res = client
                                    .post(&url)
                                    .header("content-type", "application/json")
                                    .bearer_auth(BENCH_KEY)
                                    .body(REQUEST)
                                    .send()
                                    .await
                                    .unwrap();
                                assert_eq!(res.status(), 200);
                                black_box(res.bytes().await.unwrap());
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    w.await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

/// A Prometheus recorder with tollgate's buckets (not installed globally).
fn prometheus() -> metrics_exporter_prometheus::PrometheusRecorder {
    gateway::prometheus_builder().build_recorder()
}

criterion_group!(benches, bench);
criterion_main!(benches);
