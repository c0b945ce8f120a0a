//! What a request's GenAI span costs (feature `otel`).
//!
//! ```text
//! cargo bench --features otel --bench telemetry -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `NormalizeErrors` + `ReadRequest` (+ `GenAiSpan`) over an instant inner
//! service answering a fixed JSON with usage, 1 KiB body; each iteration
//! builds the request, runs it and reads the whole answer (the span ends
//! with it):
//!
//! - `telemetry/off`: no span layer (what the reference gateway stacks
//!   without `[telemetry]`).
//! - `telemetry/noop_tracer`: the layer over `NoopTracer` (attributes built,
//!   the body wrapped and metered, nothing recorded).
//! - `telemetry/sdk_sampled`: the layer over the SDK's tracer with the batch
//!   processor on Tokio, every span sampled, exported to an exporter that
//!   drops them (recording and batching, without the network).
//! - `telemetry/sdk_unsampled`: the same with `sampling_ratio` 0.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::noop::NoopTracer;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::read_request::{Parsed, ReadRequestLayer};
use tollgate::telemetry::GenAiSpanLayer;
use tollgate::{Body, Error};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

fn body() -> Bytes {
    let head = r#"{"model":"gpt-4o-mini","stream":false,"max_tokens":256,"messages":[{"role":"user","content":""#;
    let tail = r#""}]}"#;
    let mut s = String::from(head);
    while s.len() + tail.len() < 1024 {
        s.push_str("The quick brown fox jumps over the lazy dog. ");
    }
    s.push_str(tail);
    Bytes::from(s)
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

/// Drops what it is given.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn timed<S, B>(rt: &tokio::runtime::Runtime, svc: &S, bytes: &Bytes, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let req = Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Body::full(bytes.clone()))
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            black_box(res.into_body().collect().await.unwrap().to_bytes());
        }
        start.elapsed()
    })
}

fn sdk(rt: &tokio::runtime::Runtime, ratio: f64) -> SdkTracerProvider {
    let _guard = rt.enter();
    SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(Discard, Tokio).build())
        .with_sampler(Sampler::TraceIdRatioBased(ratio))
        .build()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bytes = body();
    let mut g = c.benchmark_group("telemetry");
    let off = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(ReadRequestLayer::new(1 << 20))
        .service(instant());
    g.bench_function("off", |b| b.iter_custom(|n| timed(&rt, &off, &bytes, n)));
    let noop = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(ReadRequestLayer::new(1 << 20))
        .layer(GenAiSpanLayer::new(NoopTracer::new()))
        .service(instant());
    g.bench_function("noop_tracer", |b| {
        b.iter_custom(|n| timed(&rt, &noop, &bytes, n))
    });
    for (name, ratio) in [("sdk_sampled", 1.0), ("sdk_unsampled", 0.0)] {
        let provider = sdk(&rt, ratio);
        let svc = ServiceBuilder::new()
            .layer(NormalizeErrorsLayer::new())
            .layer(ReadRequestLayer::new(1 << 20))
            .layer(GenAiSpanLayer::new(provider.tracer("bench")))
            .service(instant());
        g.bench_function(name, |b| b.iter_custom(|n| timed(&rt, &svc, &bytes, n)));
        drop(svc);
        let _ = rt.block_on(rt.spawn_blocking(move || provider.shutdown()));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
