//! The request path through `NormalizeErrors` + `ReadRequest` (+ provider).
//!
//! ```text
//! cargo bench --bench request_path
//! ```
//!
//! - `read_request/{1KiB,1MiB}`: `ReadRequest` over an instant inner service,
//!   bytes in, summary out (throughput in bytes).
//! - `stack_instant/{1KiB,1MiB}`: `NormalizeErrors` + `ReadRequest` over an
//!   instant inner service that answers a fixed JSON (the layers' own cost).
//! - `stack_metrics/{noop,prometheus}`: `Overhead` + `NormalizeErrors` +
//!   `ReadRequest` + `RequestMetrics` over the instant service, 1 KiB body:
//!   built without a recorder (the metric handles are no-ops), and built
//!   with a Prometheus recorder (`metrics-exporter-prometheus`) current, so
//!   the overhead and request histograms and the request counter are really
//!   recorded. Compare with `stack_instant/1KiB`.
//! - `stack_provider/1KiB`: the same over the real `Provider`, forwarding
//!   over pooled loopback HTTP/1.1 to an in-process instant upstream (the
//!   whole in-process path, sockets included).
//!
//! Each iteration builds the request, runs it and reads the whole answer.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::BodyExt;
use tollgate::metrics::RequestMetricsLayer;
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::overhead::OverheadLayer;
use tollgate::provider::{HttpClient, Provider};
use tollgate::read_request::{Parsed, ReadRequestLayer};
use tollgate::{Body, Error};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

/// A chat request of about `size` bytes: `model` first, long message content.
fn body(size: usize) -> Bytes {
    let head = r#"{"model":"gpt-4o-mini","stream":false,"max_tokens":256,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let filler =
        "The quick brown fox jumps over the lazy dog. \\\"Quoted\\\" text, unicode \u{e9}\u{e8}. ";
    let mut s = String::with_capacity(size + 256);
    s.push_str(head);
    while s.len() + tail.len() < size {
        s.push_str(filler);
    }
    s.push_str(tail);
    Bytes::from(s)
}

fn request(bytes: &Bytes) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", bytes.len())
        .body(Body::full(bytes.clone()))
        .unwrap()
}

fn instant()
-> impl Service<Request<Parsed>, Response = Response<Body>, Error = Error, Future: Send> + Clone {
    service_fn(|req: Request<Parsed>| async move {
        black_box(req.body().summary());
        Ok::<_, Error>(Response::new(Body::full(Bytes::from_static(
            ANSWER.as_bytes(),
        ))))
    })
}

/// Runs `iters` requests through `svc`, reading each answer whole; the time taken.
fn timed<S>(rt: &tokio::runtime::Runtime, svc: &S, bytes: &Bytes, iters: u64) -> Duration
where
    S: Service<Request<Body>, Error = Infallible> + Clone,
    S::Response: IntoBody,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let res = svc.clone().oneshot(request(bytes)).await.unwrap();
            black_box(res.read().await);
        }
        start.elapsed()
    })
}

/// The answers of the stacks measured, read whole.
trait IntoBody {
    async fn read(self) -> Bytes;
}

impl<B: http_body::Body<Data = Bytes>> IntoBody for Response<B>
where
    B::Error: std::fmt::Debug,
{
    async fn read(self) -> Bytes {
        self.into_body().collect().await.unwrap().to_bytes()
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sizes = [("1KiB", body(1024)), ("1MiB", body(1 << 20))];

    let mut g = c.benchmark_group("read_request");
    for (name, bytes) in &sizes {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let svc = ServiceBuilder::new()
            .map_err(|e: Error| -> Infallible { panic!("{e}") })
            .layer(ReadRequestLayer::new(8 << 20))
            .service(instant());
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| timed(&rt, &svc, bytes, iters))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("stack_instant");
    for (name, bytes) in &sizes {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        let svc = ServiceBuilder::new()
            .layer(NormalizeErrorsLayer::new())
            .layer(ReadRequestLayer::new(8 << 20))
            .service(instant());
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| timed(&rt, &svc, bytes, iters))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("stack_metrics");
    let bytes = &sizes[0].1;
    let stack = || {
        ServiceBuilder::new()
            .layer(OverheadLayer::new())
            .layer(NormalizeErrorsLayer::new())
            .layer(ReadRequestLayer::new(8 << 20))
            .layer(RequestMetricsLayer::new(["gpt-4o-mini"]))
            .service(instant())
    };
    let noop = stack();
    g.bench_function("noop", |b| {
        b.iter_custom(|iters| timed(&rt, &noop, bytes, iters))
    });
    let mut builder = metrics_exporter_prometheus::PrometheusBuilder::new();
    for (name, buckets) in tollgate::metrics::BUCKETS {
        builder = builder
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full((*name).to_owned()),
                buckets,
            )
            .unwrap();
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    let measured = metrics::with_local_recorder(&recorder, stack);
    g.bench_function("prometheus", |b| {
        b.iter_custom(|iters| timed(&rt, &measured, bytes, iters))
    });
    // The handles really record: the scrape counts the requests.
    assert!(
        handle
            .render()
            .contains("tollgate_requests_total{model_group=\"gpt-4o-mini\",status=\"2xx\"}")
    );
    g.finish();

    // An in-process instant upstream on loopback.
    let addr = rt.block_on(async {
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(|| async {
                Ok::<_, Infallible>(([("content-type", "application/json")], ANSWER))
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    });
    let provider = Provider::builder("instant", &format!("http://{addr}/v1"))
        .unwrap()
        .model("m")
        .client(HttpClient::builder().build().unwrap())
        .build();
    let svc = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(ReadRequestLayer::new(8 << 20))
        .service(provider);
    let mut g = c.benchmark_group("stack_provider");
    g.measurement_time(Duration::from_secs(5));
    let bytes = &sizes[0].1;
    // The measured path must really reach the upstream and succeed.
    rt.block_on(async {
        let res = svc.clone().oneshot(request(bytes)).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.read().await, ANSWER);
    });
    g.bench_function("1KiB", |b| {
        b.iter_custom(|iters| timed(&rt, &svc, bytes, iters))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
