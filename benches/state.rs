//! The added cost of shared state in Redis, and three replicas' throughput.
//!
//! ```text
//! TOLLGATE_TEST_REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo bench --features redis --bench state -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Needs a Redis (default `redis://127.0.0.1:6379`); keys go under a fresh
//! prefix and expire by themselves.
//!
//! - `state/redis_ping`: one round trip to Redis (the floor).
//! - `state/budget_{memory,redis}`: the `Budget` layer over an instant
//!   service, one request after the other, three budgets (key, team,
//!   global) per request, the answer read whole (which settles: in place
//!   in memory, in the background in Redis). The Redis path's added cost is
//!   the difference: one round trip (`EVALSHA` of the reserve script) on the
//!   request's path; settling is a second one, off the path.
//! - `state/rate_limit_{governor,redis}`: the `RateLimit` layer (rpm and
//!   tpm) the same way: one round trip (`EVALSHA` of the GCRA script).
//! - `gateways/three_replicas_redis`: three reference gateways (separate
//!   `app`s) with budgets, rate limits and cooldowns in one Redis, in front
//!   of the mock upstream, 48 requests in flight spread over the three; all
//!   in one process on a 2-thread runtime (client, gateways, upstream and
//!   Redis share the machine's 2 cores). `gateways/three_replicas_memory`:
//!   the same with in-process state (each replica its own budgets).
//!
//! Before the gateway runs it prints the Redis commands per request, from
//! `INFO commandstats` around 600 requests.

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
use http::{Request, Response};
use http_body_util::BodyExt;
use tollgate::budget::{
    BudgetLayer, BudgetStore, Ledger, Limit, ModelPrice, Period, Price, Prices, Scope, TimeZone,
};
use tollgate::rate_limit::{Limits, RateLimitLayer};
use tollgate::read_request::Parsed;
use tollgate::state::{RedisLedger, RedisRateLimiter, RedisState};
use tollgate::{Body, Error, LlmRequest};
use tower::{Layer, Service, ServiceExt, service_fn};

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;
const REQUEST: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"Say hello."}],"max_tokens":10}"#;

fn url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn prefix(name: &str) -> String {
    format!("tollgate-bench:{name}:{}:", fastrand::u64(..))
}

fn req() -> LlmRequest<&'static str> {
    let parsed = Parsed::parse(
        "/v1/chat/completions",
        Bytes::from_static(REQUEST.as_bytes()),
    )
    .unwrap()
    .with_identity("k1");
    Request::post("/v1/chat/completions").body(parsed).unwrap()
}

fn instant(_req: LlmRequest<&'static str>) -> std::future::Ready<Result<Response<Body>, Error>> {
    std::future::ready(Ok(Response::new(Body::full(ANSWER))))
}

async fn drive<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<LlmRequest<&'static str>, Response = Response<Body>, Error = Error> + Clone,
{
    let start = Instant::now();
    for _ in 0..iters {
        let res = svc.clone().oneshot(req()).await.unwrap();
        black_box(res.into_body().collect().await.unwrap().to_bytes());
    }
    start.elapsed()
}

fn budgets(_req: &LlmRequest<&'static str>) -> Vec<Limit> {
    let max = u64::MAX / 4;
    vec![
        Limit {
            scope: Scope::Key("k1".into()),
            max,
            period: Period::Monthly,
        },
        Limit {
            scope: Scope::Team("t".into()),
            max,
            period: Period::Daily,
        },
        Limit {
            scope: Scope::Global,
            max,
            period: Period::Monthly,
        },
    ]
}

type Budgets = fn(&LlmRequest<&'static str>) -> Vec<Limit>;

fn budget_layer<L: BudgetStore>(store: L) -> BudgetLayer<Budgets, L> {
    let prices = Prices::new().group(
        "m",
        ModelPrice {
            price: Price {
                input_per_mtok: 1_000_000,
                output_per_mtok: 1_000_000,
                cached_input_per_mtok: None,
                cache_write_per_mtok: None,
            },
            max_output_tokens: 100,
        },
    );
    BudgetLayer::new(store, budgets as Budgets, prices)
}

fn limits(_req: &LlmRequest<&'static str>) -> Option<(&'static str, Limits)> {
    Some(("k1", Limits::per_minute(u32::MAX, u32::MAX)))
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = rt.block_on(async {
        let s = RedisState::open(&url(), &prefix("layers"), Duration::from_secs(2)).unwrap();
        s.ping().await.expect("Redis answers");
        s
    });
    let mut g = c.benchmark_group("state");
    g.throughput(Throughput::Elements(1));
    g.bench_function("redis_ping", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    state.ping().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    let memory = budget_layer(Ledger::default()).layer(service_fn(instant));
    g.bench_function("budget_memory", |b| {
        b.iter_custom(|n| rt.block_on(drive(&memory, n)))
    });
    let redis_ledger = rt.block_on(async { RedisLedger::new(state.clone(), TimeZone::UTC) });
    let redis = budget_layer(redis_ledger.clone()).layer(service_fn(instant));
    g.bench_function("budget_redis", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let t = drive(&redis, n).await;
                // Background settlements finish outside the measured time.
                redis_ledger.settled().await;
                t
            })
        })
    });
    let governor = RateLimitLayer::new(limits).layer(service_fn(instant));
    g.bench_function("rate_limit_governor", |b| {
        b.iter_custom(|n| rt.block_on(drive(&governor, n)))
    });
    let shared = RateLimitLayer::shared(limits, RedisRateLimiter::new(state.clone()))
        .layer(service_fn(instant));
    g.bench_function("rate_limit_redis", |b| {
        b.iter_custom(|n| rt.block_on(drive(&shared, n)))
    });
    g.finish();
}

/// The bench client's virtual key (a loopback-only bench key, not a secret).
const BENCH_KEY: &str = "tg-bench-BenchKeyForLoopbackOnly000000";

/// Sends `n` requests, 48 in flight, spread over `urls`.
async fn load(client: &reqwest::Client, urls: &[String], n: u64) -> Duration {
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..48)
        .map(|w| {
            let (client, url, next) = (client.clone(), urls[w % urls.len()].clone(), next.clone());
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
}

/// `cmdstat_*` calls by command, from `INFO commandstats`.
async fn commands() -> Vec<(String, u64)> {
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn gateways(c: &mut Criterion) {
    // SAFETY: set before this bench starts any other thread of its own.
    unsafe { std::env::set_var("TOLLGATE_BENCH_KEY", BENCH_KEY) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("gateways");
    g.throughput(Throughput::Elements(1));
    for shared in [false, true] {
        let (urls, _mock) = rt.block_on(async {
            let mock = mock_upstream::spawn(mock_upstream::MockConfig::default())
                .await
                .unwrap();
            let prefix = prefix("gateways");
            let section = if shared {
                format!("[state]\nurl = \"{}\"\nprefix = \"{prefix}\"\ntimeout_ms = 2000\n", url())
            } else {
                String::new()
            };
            let config = tollgate::config::Config::from_toml(
                "bench.toml",
                &format!(
                    "{section}[budgets]\nglobal_max_usd = 1000000.0\n[rate_limits]\nrequests_per_minute = 100000000\ntokens_per_minute = 1000000000\n\
                     [keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"TOLLGATE_BENCH_KEY\"\nmodels = [\"*\"]\nmax_budget = 1000000.0\nbudget_duration = \"monthly\"\n\
                     [[groups]]\nname = \"m\"\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\n[[groups.deployments]]\nprovider = \"mock\"\nname = \"a\"\nbase_url = \"{0}\"\nmodel = \"mock-small\"\n",
                    mock.base_url()
                ),
            )
            .unwrap();
            let mut urls = Vec::new();
            for _ in 0..3 {
                let app = gateway::app(&config).await.unwrap();
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                tokio::spawn(async move { axum::serve(l, app).await });
                urls.push(format!("http://{addr}/v1/chat/completions"));
            }
            (urls, mock)
        });
        if shared {
            rt.block_on(async {
                let before = commands().await;
                load(&client, &urls, 600).await;
                // Let the background settlements land.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let after = commands().await;
                for (name, calls) in &after {
                    let was = before
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(0, |(_, c)| *c);
                    if calls > &was && ["evalsha", "eval", "script|load"].contains(&name.as_str()) {
                        println!(
                            "redis {name}: {:.2} per request (600 requests)",
                            (calls - was) as f64 / 600.0
                        );
                    }
                }
            });
        }
        let name = if shared {
            "three_replicas_redis"
        } else {
            "three_replicas_memory"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|n| rt.block_on(load(&client, &urls, n)))
        });
    }
    g.finish();
}

criterion_group!(benches, layers, gateways);
criterion_main!(benches);
