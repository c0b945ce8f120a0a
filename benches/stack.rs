//! Each layer alone and the whole gateway stack, in process, over an instant
//! provider (no sockets): what the gateway adds to a request.
//!
//! ```text
//! cargo bench --all-features --bench stack -- --warm-up-time 1 --measurement-time 3
//! cargo bench --all-features --bench stack -- stack/layer     # criterion only, no percentile pass
//! cargo bench --all-features --bench stack -- percentiles     # the percentile pass only
//! cargo bench --all-features --bench stack -- stack/percentiles/small_sse   # one variant of it
//! cargo bench --all-features --bench stack -- stack/upstream  # over the real provider, per family
//! cargo bench --all-features --bench stack -- stack/ratio     # the alternating ratio pass only
//! ```
//!
//! The provider is a `service_fn` that answers at once: a canned OpenAI chat
//! completion with usage, or (when the parsed request asks for a stream) a
//! canned SSE stream of 9 frames, one event each as an upstream's events
//! arrive — the role chunk, 5 content chunks, the finish chunk, the usage
//! chunk and `data: [DONE]`. Four request variants:
//! a chat body of ~1 KiB (`small`) or ~256 KiB (`large`), non-streaming
//! (`json`) or streaming (`sse`). Each iteration builds the request, calls
//! the stack and reads the whole response body, frame by frame (so metering,
//! settlement and the release of the fair queue's slot run). Every stack is
//! built with a Prometheus recorder current (`metrics-exporter-prometheus`,
//! not installed globally), so every metric is really recorded, and the
//! gateway's tracing subscriber is installed (filter `info` unless
//! `RUST_LOG` says otherwise, output discarded), so spans and events cost
//! what they cost in the gateway.
//!
//! The configuration is the reference gateway's (`examples/gateway.rs`, whose
//! hooks this bench reuses): a static virtual key allowed `g` and `h` with a
//! monthly key budget; `[rate_limits]` on (4,000,000,000 requests and
//! `u32::MAX` tokens a minute); `[budgets]` with a global monthly budget and
//! prices on every group, spend records handed to a writer whose store
//! discards them; `[fair_queue]` on (capacity 64); group `g` with two
//! deployments and the fallback chain `g → h` (never taken).
//!
//! - `stack/provider/<variant>`: the instant provider called directly with a
//!   request already parsed (the baseline of the percentile pass).
//! - `stack/layer/read_request/<variant>`: `ReadRequest` over the provider,
//!   the request carrying an already authenticated key (the baseline of the
//!   layers below `ReadRequest`).
//! - `stack/layer/<name>/<variant>`: one layer with `ReadRequest` in front
//!   (`overhead`, `normalize_errors`, `virtual_keys`: outside it, as in the
//!   gateway; `request_metrics`, `model_access`, `rate_limit`, `budget`,
//!   `fair_queue`, `fallback`, `router`: inside it) over the provider; the
//!   layer's cost is its time minus `stack/layer/read_request`. `router` is a
//!   `Router` over the configured deployments of `g` and `h`.
//! - `stack/full/<variant>`: the gateway's inference stack as `build()` makes
//!   it — `Overhead` → `NormalizeErrors` → `VirtualKeys` → `ReadRequest` →
//!   `RequestMetrics` → `ModelAccess` → `RateLimit` → `Budget` → `FairQueue` →
//!   `Fallback` → `Router` → provider (axum's routing, the request-id and
//!   trace layers are not included).
//!
//! - `stack/upstream/<variant>`: the same stack over `Config::router()`'s
//!   real providers, forwarding over pooled loopback HTTP/1.1 to a canned
//!   upstream in this process that answers both API families: OpenAI and
//!   Anthropic clients passed through, and translated both ways
//!   (benches/stack/upstream.rs says which variants and what they send).
//!
//! After criterion, the percentile pass times individual requests
//! (`Instant::now()` around each, on a current-thread runtime) through the
//! full stack and through the provider alone into HDR histograms, and prints
//! p50/p90/p99/p99.9/max of each and what the stack adds at p50 and p99:
//! 100,000 requests per small variant and 20,000 per large one, after a
//! tenth as many unmeasured. `TOLLGATE_BENCH_REQUESTS=N` sets the small
//! count (the large one is a fifth of it); `0` skips the pass. It is also
//! skipped when a criterion filter is given that `percentiles` does not
//! contain, and under `cargo test --benches`.
//!
//! Then the ratio pass (`stack/ratio`, benches/stack/upstream.rs) times
//! pairs of those upstream paths in alternating rounds on this thread's CPU
//! time and prints each pair's ratio: Anthropic pass-through against
//! OpenAI pass-through, and each translated path against pass-through.
//! `TOLLGATE_BENCH_RATIO_ROUNDS` and `TOLLGATE_BENCH_RATIO_REQUESTS` set its
//! size (`0` skips it); `-- stack/ratio` runs it alone.
//!
//! The instruction-count guard (`.ci/perf-guard`, docs/performance-guard.md)
//! runs this bench under callgrind in its own mode:
//! `TOLLGATE_BENCH_GUARD=<variant> TOLLGATE_BENCH_REQUESTS=N` drives N
//! requests of that variant through the full stack, one after another, and
//! nothing else (no criterion, no provider-alone pass, no clock reads but
//! the loop's two), so the count over 2N requests minus the count over N
//! is exactly N full-stack requests. The upstream variants run in that
//! mode too, over the real provider (`TOLLGATE_BENCH_GUARD=anthropic_sse`).
//! A new path the guard should watch is a new variant here or in
//! benches/stack/upstream.rs and a line in `benches/instructions.baseline`.
//!
//! Rate limits: the large body is charged ~66,000 tokens a request, so a
//! single stack would exhaust `u32::MAX` tokens a minute after ~7 s of
//! back-to-back large requests; each benchmark and each percentile run
//! builds a fresh stack, and every answer is checked to be a 200, so a
//! refusal fails the bench instead of being measured.

mod common;
#[macro_use]
#[path = "../examples/gateway.rs"]
mod gateway;
#[macro_use]
#[path = "stack/upstream.rs"]
mod upstream;

use std::fmt::Debug;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Discard;
use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusRecorder;
use tollgate::access::ModelAccessLayer;
use tollgate::budget::SpendWriter;
use tollgate::config::Config;
use tollgate::keys::{Key, Keyring, VirtualKeysLayer};
use tollgate::metrics::RequestMetricsLayer;
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::overhead::OverheadLayer;
use tollgate::read_request::{Identified, Parsed, ReadRequestLayer};
use tollgate::router::{Deployment, Router};
use tollgate::{Body, Error, LlmRequest};
// Used by `inference_stack!`.
use gateway::record_key;
use tower::{Layer, Service, ServiceExt, service_fn};
use upstream::UpEnv;

/// The bench's static virtual key (an in-process bench key, not a secret).
const BENCH_KEY: &str = "tg-bench-BenchKeyInProcessOnly0000000000";

const CONFIG: &str = r#"
[keys]
store = "memory"
[[keys.static]]
key_env = "TOLLGATE_BENCH_KEY"
models = ["g", "h"]
max_budget = 1000000000.0
budget_duration = "monthly"

[rate_limits]
requests_per_minute = 4000000000
tokens_per_minute = 4294967295
default_max_output_tokens = 1024

[budgets]
global_max_usd = 1000000000.0
global_period = "monthly"

[fair_queue]
capacity = 64

[[groups]]
name = "g"
fallbacks = ["h"]
price_in_per_mtok = 2.5
price_out_per_mtok = 10.0
max_output_tokens = 4096
[[groups.deployments]]
provider = "instant"
name = "a"
base_url = "http://127.0.0.1:9/v1"
[[groups.deployments]]
provider = "instant"
name = "b"
base_url = "http://127.0.0.1:9/v1"

[[groups]]
name = "h"
price_in_per_mtok = 0.15
price_out_per_mtok = 0.6
[[groups.deployments]]
provider = "instant"
name = "c"
base_url = "http://127.0.0.1:9/v1"
"#;

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"upstream-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":260,"completion_tokens":9,"total_tokens":269}}"#;

/// The canned stream, one frame per SSE event.
const EVENTS: [&str; 9] = [
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"! How\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" can I\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" help you\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" today?\"},\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"upstream-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":260,\"completion_tokens\":9,\"total_tokens\":269}}\n\n",
    "data: [DONE]\n\n",
];

/// The instant provider: the canned answer, or the canned stream when the
/// parsed request asks for one.
fn instant<I: Send + 'static>()
-> impl Service<LlmRequest<I>, Response = Response<Body>, Error = Error, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(|req: LlmRequest<I>| async move {
        let res = if req.body().summary().stream {
            Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .body(Body::new(Frames(
                    EVENTS.iter().map(|e| e.as_bytes()).collect(),
                )))
        } else {
            Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(Body::full(Bytes::from_static(ANSWER.as_bytes())))
        };
        Ok::<_, Error>(res.unwrap())
    })
}

/// A body of one frame per part, as an upstream's stream arrives event by
/// event (`Chunks` would send so small a body as one frame).
struct Frames(std::collections::VecDeque<&'static [u8]>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        std::task::Poll::Ready(
            self.0
                .pop_front()
                .map(|part| Ok(http_body::Frame::data(Bytes::from_static(part)))),
        )
    }
}

/// A chat request of about `size` bytes for model group `g`.
fn chat_body(size: usize, stream: bool) -> Bytes {
    let head = format!(
        r#"{{"model":"g","stream":{stream},"max_tokens":256,"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":""#
    );
    let tail = r#""}]}"#;
    let filler =
        "The quick brown fox jumps over the lazy dog. \\\"Quoted\\\" text, unicode \u{e9}\u{e8}. ";
    let mut s = String::with_capacity(size + 256);
    s.push_str(&head);
    while s.len() + filler.len() + tail.len() <= size {
        s.push_str(filler);
    }
    s.push_str(tail);
    Bytes::from(s)
}

/// One request shape: its name and its body.
struct Variant {
    name: &'static str,
    body: Bytes,
    large: bool,
}

fn variants() -> Vec<Variant> {
    let v = |name, size, stream| Variant {
        name,
        body: chat_body(size, stream),
        large: size > 4096,
    };
    vec![
        v("small_json", 1024, false),
        v("small_sse", 1024, true),
        v("large_json", 256 << 10, false),
        v("large_sse", 256 << 10, true),
    ]
}

/// What every stack of the bench is built from.
struct Env {
    config: Config,
    keyring: Keyring,
    key: Key,
    auth: HeaderValue,
    writer: SpendWriter,
    recorder: PrometheusRecorder,
}

impl Env {
    /// A client's request: method, path, headers, the body bytes.
    fn http(&self, body: &Bytes) -> Request<Body> {
        Request::post("/v1/chat/completions")
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .header(AUTHORIZATION, self.auth.clone())
            .body(Body::full(body.clone()))
            .unwrap()
    }

    /// The same request as `VirtualKeys` hands it on: the key authenticated.
    fn identified(&self, body: &Bytes) -> Request<Identified<Key, Body>> {
        self.http(body).map(|b| Identified {
            identity: self.key.clone(),
            body: b,
        })
    }

    /// Builds a stack with the bench's recorder current, so its metric
    /// handles really record.
    fn with_recorder<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// The router of the config's groups, every deployment instant.
    fn router<I: Send + 'static>(
        &self,
    ) -> Router<
        impl Service<LlmRequest<I>, Response = Response<Body>, Error = Error, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static,
    > {
        let mut b = Router::builder().policy(self.config.retry_policy());
        for g in &self.config.groups {
            let deployments = g
                .deployments
                .iter()
                .map(|d| Deployment::new(d.name.as_deref().unwrap(), instant::<I>(), d.weight))
                .collect();
            b = b.group(&g.name, deployments).unwrap();
        }
        b.build()
    }

    /// `Budget` as the gateway configures it, writing spend records.
    fn budget(&self) -> tollgate::budget::BudgetLayer<gateway::KeyBudgets, gateway::Store> {
        gateway::budget(
            &self.config,
            store(self.config.ledger()),
            Some(self.writer.clone()),
        )
    }

    fn rate_limit(&self) -> tollgate::rate_limit::RateLimitLayer<gateway::KeyLimits, Arc<str>> {
        #[cfg(feature = "redis")]
        return gateway::rate_limit(&self.config, None);
        #[cfg(not(feature = "redis"))]
        return gateway::rate_limit(&self.config);
    }
}

#[cfg(feature = "redis")]
fn store(ledger: tollgate::budget::Ledger) -> gateway::Store {
    tollgate::budget::EitherStore::Left(ledger)
}

#[cfg(not(feature = "redis"))]
fn store(ledger: tollgate::budget::Ledger) -> gateway::Store {
    ledger
}

/// The gateway's inference stack, by the same macro as `build()`, over
/// the instant router.
macro_rules! full_stack {
    ($env:expr) => {{
        let env: &Env = $env;
        env.with_recorder(|| {
            let fair_queue = gateway::fair_queue(&env.config);
            let rate_limit = env.rate_limit();
            assert!(fair_queue.is_some());
            inference_stack!(
                VirtualKeysLayer::new(env.keyring.clone()),
                env.config.server.max_body_bytes,
                gateway::telemetry(&env.config).unwrap().0,
                rate_limit,
                env.budget(),
                fair_queue,
                env.config.fallback_layer().unwrap(),
                env.router::<Key>()
            )
        })
    }};
}

/// Calls `svc` once with `req` and reads the answer's body frame by frame;
/// the answer must be a 200.
async fn call<S, R, B>(svc: &S, req: R)
where
    S: Service<R, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = std::pin::pin!(res.into_body());
    while let Some(frame) = body.frame().await {
        black_box(frame.unwrap());
    }
}

/// Every this many requests the loops yield, so the spend writer's task
/// (on the same current-thread runtime) takes its records.
const YIELD_EVERY: u64 = 64;

/// `iters` requests made by `make` through `svc`; the time they took.
async fn drive<S, R, B>(svc: &S, make: &impl Fn() -> R, iters: u64) -> Duration
where
    S: Service<R, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    let start = Instant::now();
    for i in 0..iters {
        call(svc, make()).await;
        if i % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
    }
    start.elapsed()
}

fn bench_one<S, R, B>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
    make: impl Fn() -> R,
) where
    S: Service<R, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    g.bench_function(name, |b| {
        b.iter_custom(|n| rt.block_on(drive(&svc, &make, n)))
    });
}

fn criterion_benches(c: &mut Criterion, rt: &tokio::runtime::Runtime, env: &Env, up: &UpEnv) {
    let variants = variants();

    let mut g = c.benchmark_group("stack/provider");
    for v in &variants {
        let parsed = Parsed::parse("/v1/chat/completions", v.body.clone())
            .unwrap()
            .with_identity(env.key.clone());
        let make = || {
            Request::post("/v1/chat/completions")
                .header(CONTENT_TYPE, "application/json")
                .body(parsed.clone())
                .unwrap()
        };
        bench_one(&mut g, rt, v.name, instant::<Key>(), make);
    }
    g.finish();

    let max_body = env.config.server.max_body_bytes;
    let read = || ReadRequestLayer::new(max_body);
    // One group per layer, the four variants in each; every stack fresh.
    macro_rules! layer {
        ($name:literal, $request:ident, |$v:ident| $stack:expr) => {{
            let mut g = c.benchmark_group(concat!("stack/layer/", $name));
            for $v in &variants {
                let svc = env.with_recorder(|| $stack);
                bench_one(&mut g, rt, $v.name, svc, || env.$request(&$v.body));
            }
            g.finish();
        }};
    }
    layer!("read_request", identified, |v| read()
        .layer(instant::<Key>()));
    layer!("overhead", identified, |v| OverheadLayer::new()
        .layer(read().layer(instant::<Key>())));
    layer!("normalize_errors", identified, |v| {
        NormalizeErrorsLayer::new().layer(read().layer(instant::<Key>()))
    });
    layer!("virtual_keys", http, |v| VirtualKeysLayer::new(
        env.keyring.clone()
    )
    .layer(read().layer(instant::<Key>())));
    layer!("request_metrics", identified, |v| read().layer(
        RequestMetricsLayer::new(["g", "h"]).layer(instant::<Key>())
    ));
    layer!("model_access", identified, |v| read()
        .layer(ModelAccessLayer::new().layer(instant::<Key>())));
    layer!("rate_limit", identified, |v| read()
        .layer(env.rate_limit().layer(instant::<Key>())));
    layer!("budget", identified, |v| read()
        .layer(env.budget().layer(instant::<Key>())));
    layer!("fair_queue", identified, |v| read().layer(
        gateway::fair_queue(&env.config)
            .unwrap()
            .layer(instant::<Key>())
    ));
    layer!("fallback", identified, |v| read().layer(
        env.config.fallback_layer().unwrap().layer(instant::<Key>())
    ));
    layer!("router", identified, |v| read().layer(env.router::<Key>()));

    let mut g = c.benchmark_group("stack/full");
    for v in &variants {
        bench_one(&mut g, rt, v.name, full_stack!(env), || env.http(&v.body));
    }
    g.finish();

    // The full stack over the real providers (benches/stack/upstream.rs).
    let mut g = c.benchmark_group("stack/upstream");
    for v in upstream::variants() {
        let svc = upstream_stack!(env, up);
        rt.block_on(upstream::check(&svc, up, &v));
        bench_one(&mut g, rt, v.name, svc, || up.http(&v));
    }
    g.finish();
}

/// The ratio pass (benches/stack/upstream.rs): each pair's two paths timed
/// in alternating rounds of `n` requests, over fresh stacks. Everything
/// runs on this thread (current-thread runtime, the upstream included), so
/// the thread's time on a CPU (`/proc/thread-self/schedstat`, in ns, kernel
/// time included) is the requests' whole cost, whatever else the machine
/// runs; wall time is printed beside it.
fn ratios(rt: &tokio::runtime::Runtime, env: &Env, up: &UpEnv, rounds: usize, n: u64) {
    println!(
        "\nstack/ratio: full stack over the real provider, {rounds} alternating rounds of {n} requests per side (load average {})",
        load_average()
    );
    println!(
        "  {:<24} {:<16} {:>9} {:>9} {:>7} {:>13} {:>8}   {:>9} {:>9} {:>7}",
        "path",
        "against",
        "CPU µs",
        "against",
        "ratio",
        "min..max",
        "added",
        "wall µs",
        "against",
        "ratio"
    );
    for (a, b) in upstream::PAIRS {
        let (va, vb) = (upstream::variant(a).unwrap(), upstream::variant(b).unwrap());
        let sa = upstream_stack!(env, up);
        let sb = upstream_stack!(env, up);
        let (ma, mb) = (|| up.http(&va), || up.http(&vb));
        rt.block_on(upstream::check(&sa, up, &va));
        rt.block_on(upstream::check(&sb, up, &vb));
        // Warm both (connections, lazy set-ups).
        rt.block_on(drive(&sa, &ma, n / 10 + 1));
        rt.block_on(drive(&sb, &mb, n / 10 + 1));
        // Per round: (CPU a, CPU b, wall a, wall b), µs per request.
        let mut r: Vec<[f64; 4]> = Vec::new();
        let timed = |svc: &dyn Fn() -> Duration| {
            let cpu = thread_cpu_ns();
            let wall = svc();
            let per = |ns: f64| ns / 1e3 / n as f64;
            (
                per((thread_cpu_ns() - cpu) as f64),
                per(wall.as_nanos() as f64),
            )
        };
        let run_a = || rt.block_on(drive(&sa, &ma, n));
        let run_b = || rt.block_on(drive(&sb, &mb, n));
        for round in 0..rounds {
            let ((ca, wa), (cb, wb)) = if round % 2 == 0 {
                let ta = timed(&run_a);
                (ta, timed(&run_b))
            } else {
                let tb = timed(&run_b);
                (timed(&run_a), tb)
            };
            r.push([ca, cb, wa, wb]);
        }
        let med = |f: &dyn Fn(&[f64; 4]) -> f64| {
            let mut v: Vec<f64> = r.iter().map(f).collect();
            v.sort_by(|x, y| x.total_cmp(y));
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (ca, cb) = (med(&|x| x[0]).0, med(&|x| x[1]).0);
        let (cr, cmin, cmax) = med(&|x| x[0] / x[1]);
        let (wa, wb) = (med(&|x| x[2]).0, med(&|x| x[3]).0);
        let wr = med(&|x| x[2] / x[3]).0;
        println!(
            "  {a:<24} {b:<16} {ca:>9.2} {cb:>9.2} {cr:>7.3} {:>13} {:>+8.2}   {wa:>9.2} {wb:>9.2} {wr:>7.3}",
            format!("{cmin:.3}..{cmax:.3}"),
            ca - cb
        );
    }
}

/// This thread's time on a CPU so far, in nanoseconds (Linux).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat (Linux)")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Times `n` requests one by one (after `n / 10` unmeasured) into a
/// histogram of nanoseconds.
async fn sample<S, R, B>(svc: &S, make: impl Fn() -> R, n: u64) -> Histogram<u64>
where
    S: Service<R, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for i in 0..(n + n / 10) {
        let req = make();
        let start = Instant::now();
        call(svc, req).await;
        let ns = start.elapsed().as_nanos() as u64;
        if i >= n / 10 {
            h.record(ns.max(1)).unwrap();
        }
        if i % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
    }
    h
}

const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn row(what: &str, h: &Histogram<u64>) {
    let mut line = format!("  {what:<10}");
    for (name, q) in QUANTILES {
        line.push_str(&format!(" {name} {:>8.2} µs", us(h.value_at_quantile(q))));
    }
    line.push_str(&format!(" max {:>9.2} µs", us(h.max())));
    println!("{line}");
}

fn percentiles(rt: &tokio::runtime::Runtime, env: &Env, small: u64, only: Option<&str>) {
    println!(
        "\nstack/percentiles: time per request, {small} small / {} large requests each after a tenth as many unmeasured (load average {})",
        small / 5,
        load_average()
    );
    for v in variants() {
        if only.is_some_and(|only| only != v.name) {
            continue;
        }
        let n = if v.large { small / 5 } else { small };
        let parsed = Parsed::parse("/v1/chat/completions", v.body.clone())
            .unwrap()
            .with_identity(env.key.clone());
        let provider = rt.block_on(sample(
            &instant::<Key>(),
            || {
                Request::post("/v1/chat/completions")
                    .header(CONTENT_TYPE, "application/json")
                    .body(parsed.clone())
                    .unwrap()
            },
            n,
        ));
        let full = full_stack!(env);
        let full = rt.block_on(sample(&full, || env.http(&v.body), n));
        println!("{} ({} bytes):", v.name, v.body.len());
        row("provider", &provider);
        row("full", &full);
        let added = |q| us(full.value_at_quantile(q)) - us(provider.value_at_quantile(q));
        println!(
            "  added      p50 {:>8.2} µs p99 {:>8.2} µs",
            added(0.5),
            added(0.99)
        );
    }
}

/// The guard's mode: `n` requests of the variant `name` through a fresh
/// full stack, back to back (yielding every [`YIELD_EVERY`], as everywhere
/// here, so the spend writer keeps up), after one uncounted request.
fn guard(rt: &tokio::runtime::Runtime, env: &Env, name: &str, n: u64) {
    if let Some(v) = upstream::variant(name) {
        // A path over the real provider (benches/stack/upstream.rs).
        let up = &rt.block_on(UpEnv::start());
        let full = upstream_stack!(env, up);
        let make = || up.http(&v);
        rt.block_on(upstream::check(&full, up, &v));
        guard_requests(rt, &full, &make, n);
        return;
    }
    let Some(v) = variants().into_iter().find(|v| v.name == name) else {
        let names: Vec<_> = variants()
            .iter()
            .map(|v| v.name)
            .chain(upstream::variants().iter().map(|v| v.name))
            .collect();
        panic!("TOLLGATE_BENCH_GUARD={name}: not a variant (one of {names:?})");
    };
    let full = full_stack!(env);
    let make = || env.http(&v.body);
    // One-time costs (the first request's lazy set-ups) before the count.
    rt.block_on(drive(&full, &make, 1));
    guard_requests(rt, &full, &make, n);
}

/// The requests the guard counts: `.ci/perf-guard` has callgrind collect
/// only inside this function (`--toggle-collect`), so what the process does
/// before and after (among it quanta's clock calibration, whose instruction
/// count depends on how long it takes) stays out of the count.
#[inline(never)]
fn guard_requests<S, R, B>(rt: &tokio::runtime::Runtime, svc: &S, make: &impl Fn() -> R, n: u64)
where
    S: Service<R, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    rt.block_on(drive(svc, make, n));
}

/// The criterion filter given on the command line (the first argument that
/// is neither an option nor an option's value); `Some("--test")` under
/// `cargo test --benches` or `--list`, so no extra pass runs then.
fn criterion_filter() -> Option<String> {
    // Criterion's options that take a value.
    const VALUED: [&str; 16] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--output-format",
        "--plotting-backend",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--profile-time",
        "--color",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return Some("--test".into());
    }
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if VALUED.contains(&a.as_str()) {
            i += 2;
            continue;
        }
        if !a.starts_with('-') {
            return Some(a.clone());
        }
        i += 1;
    }
    None
}

/// Whether the percentile pass runs, how many small requests it times, and
/// the one variant it is limited to (`stack/percentiles/small_sse`).
fn percentile_requests(filter: Option<&str>) -> Option<(u64, Option<String>)> {
    let only = filter
        .and_then(|f| f.strip_prefix("stack/percentiles/"))
        .map(str::to_owned);
    if only.is_none() && filter.is_some_and(|f| !"stack/percentiles".contains(f)) {
        return None;
    }
    let n = std::env::var("TOLLGATE_BENCH_REQUESTS")
        .ok()
        .map(|v| v.parse::<u64>().expect("TOLLGATE_BENCH_REQUESTS: a number"))
        .unwrap_or(100_000);
    (n > 0).then_some((n, only))
}

/// Whether the ratio pass runs (no filter, or one that `stack/ratio`
/// contains), with its rounds and requests per side and round.
fn ratio_requests(filter: Option<&str>) -> Option<(usize, u64)> {
    if filter.is_some_and(|f| !"stack/ratio".contains(f)) {
        return None;
    }
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}: a number"))
            })
            .unwrap_or(default)
    };
    let rounds = var("TOLLGATE_BENCH_RATIO_ROUNDS", 12) as usize;
    let n = var("TOLLGATE_BENCH_RATIO_REQUESTS", 2000);
    (rounds > 0 && n > 0).then_some((rounds, n))
}

fn main() {
    // SAFETY: set before this bench starts any other thread.
    unsafe { std::env::set_var("TOLLGATE_BENCH_KEY", BENCH_KEY) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // The gateway's subscriber (`info` unless RUST_LOG says otherwise), its
    // output discarded: disabled spans and events cost what they cost there.
    gateway::log_subscriber().with_writer(std::io::sink).init();
    let config = Config::from_toml("bench.toml", CONFIG).unwrap();
    let keyring = rt.block_on(config.keyring()).unwrap();
    let auth = HeaderValue::from_str(&format!("Bearer {BENCH_KEY}")).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert(AUTHORIZATION, auth.clone());
    let key = keyring.authenticate(&headers).unwrap();
    let recorder = gateway::prometheus_builder().build_recorder();
    let handle = recorder.handle();
    let env = Env {
        writer: SpendWriter::spawn(Discard, config.spend.queue, config.spend.batch),
        config,
        keyring,
        key,
        auth,
        recorder,
    };

    if let Ok(name) = std::env::var("TOLLGATE_BENCH_GUARD") {
        let n = std::env::var("TOLLGATE_BENCH_REQUESTS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .expect("TOLLGATE_BENCH_GUARD needs TOLLGATE_BENCH_REQUESTS=N");
        guard(&rt, &env, &name, n);
    } else {
        let up = rt.block_on(UpEnv::start());
        let mut c = Criterion::default().configure_from_args();
        criterion_benches(&mut c, &rt, &env, &up);
        c.final_summary();
        let filter = criterion_filter();
        if let Some((n, only)) = percentile_requests(filter.as_deref()) {
            percentiles(&rt, &env, n, only.as_deref());
        }
        if let Some((rounds, n)) = ratio_requests(filter.as_deref()) {
            ratios(&rt, &env, &up, rounds, n);
        }
    }

    rt.block_on(env.writer.flush());
    assert_eq!(env.writer.dropped(), 0, "spend records dropped");
    if env.writer.written() > 0 {
        // The full stack really recorded its metrics and settled its spend.
        let scrape = handle.render();
        assert!(["g", "openai", "anthropic"].iter().any(|g| {
            scrape.contains(&format!(
                "tollgate_requests_total{{model_group=\"{g}\",status=\"2xx\"}}"
            ))
        }));
    }
}
