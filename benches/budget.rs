//! The cost of budgets on the hot path, in memory.
//!
//! ```text
//! cargo bench --bench budget -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `budget/ledger/reserve_settle`: reserving on three budgets (key, team,
//!   global: three counters in up to three shards) and settling, among
//!   10,000 keys.
//! - `budget/meter/chat_event`: reading one 200-byte chat SSE event.
//! - `budget/layer/{none,three_budgets,three_budgets_and_spend}`: one chat
//!   request through an instant inner service that answers a JSON with
//!   usage, its body read to the end (where settlement happens): without the
//!   `Budget` layer, with it on three budgets, and with it also writing a
//!   spend record (handed to the background writer, whose store discards it). The
//!   layer's added cost per request is the difference to `none`.
//! - `budget/spend/sqlite_writer`: records through the `SpendWriter` into
//!   the embedded SQLite store (queue 100,000, batches of 256, WAL, one
//!   transaction per batch), measured until they are stored: the writer's
//!   sustained records per second (criterion's throughput).
//! - `budget/spend/postgres_writer` (feature `postgres`): the same into
//!   `PostgresSpendStore`, on a fresh database of the server at
//!   `TOLLGATE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::Discard;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use tollgate::budget::{
    BudgetLayer, Ledger, Limit, Meter, ModelPrice, Period, Price, Prices, Scope, SpendRecord,
    SpendWriter, SqliteSpendStore, Timestamp,
};
use tollgate::read_request::Parsed;
use tollgate::{Body, Error, LlmRequest};
use tower::{Layer, Service, ServiceExt, service_fn};

fn ledger(c: &mut Criterion) {
    let ledger = Ledger::default();
    let keys: Vec<Arc<str>> = (0..10_000).map(|i| Arc::from(format!("key-{i}"))).collect();
    let limits: Vec<[Limit; 3]> = keys
        .iter()
        .map(|k| {
            [
                Limit {
                    scope: Scope::Key(k.clone()),
                    max: u64::MAX / 4,
                    period: Period::Monthly,
                },
                Limit {
                    scope: Scope::Team("team".into()),
                    max: u64::MAX / 4,
                    period: Period::Daily,
                },
                Limit {
                    scope: Scope::Global,
                    max: u64::MAX / 4,
                    period: Period::Total,
                },
            ]
        })
        .collect();
    let mut i = 0;
    c.bench_function("budget/ledger/reserve_settle", |b| {
        b.iter(|| {
            i = (i + 1) % limits.len();
            let r = ledger.reserve(black_box(&limits[i]), 1_000).unwrap();
            black_box(r.settle(400))
        })
    });
}

fn meter(c: &mut Criterion) {
    let event = br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hello world"},"finish_reason":null}]}

"#;
    let mut m = Meter::sse();
    c.bench_function("budget/meter/chat_event", |b| {
        b.iter(|| m.feed(black_box(event)))
    });
}

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

fn three(req: &LlmRequest<Arc<str>>) -> Vec<Limit> {
    vec![
        Limit {
            scope: Scope::Key(req.body().identity().clone()),
            max: u64::MAX / 4,
            period: Period::Monthly,
        },
        Limit {
            scope: Scope::Team("team".into()),
            max: u64::MAX / 4,
            period: Period::Daily,
        },
        Limit {
            scope: Scope::Global,
            max: u64::MAX / 4,
            period: Period::Total,
        },
    ]
}

/// Runs one request through `svc` and reads its body; every future here is
/// ready at once, so no executor is needed.
fn once<S>(svc: &S, req: LlmRequest<Arc<str>>)
where
    S: Service<LlmRequest<Arc<str>>, Response = Response<Body>, Error = Error> + Clone,
{
    let res = svc.clone().oneshot(req).now_or_never().unwrap().unwrap();
    black_box(res.into_body().collect().now_or_never().unwrap().unwrap());
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let parsed = Parsed::parse(
        "/v1/chat/completions",
        bytes::Bytes::from_static(br#"{"model":"m","max_tokens":256,"messages":[{"role":"user","content":"Say hello."}]}"#),
    )
    .unwrap()
    .with_identity(Arc::<str>::from("key-1"));
    let req = || {
        Request::post("/v1/chat/completions")
            .header("x-request-id", "3f1b0c1e-8d1a-4c7e-9a55-1f0f5b2a9c11")
            .body(parsed.clone())
            .unwrap()
    };
    let inner = service_fn(|_req: LlmRequest<Arc<str>>| async {
        Ok::<_, Error>(Response::new(Body::full(ANSWER)))
    });
    let prices = Prices::new().group(
        "m",
        ModelPrice {
            price: Price {
                input_per_mtok: 2_500_000,
                output_per_mtok: 10_000_000,
                cached_input_per_mtok: None,
                cache_write_per_mtok: None,
            },
            max_output_tokens: 4096,
        },
    );
    let budgets = three as fn(&LlmRequest<Arc<str>>) -> Vec<Limit>;
    let budgeted = BudgetLayer::new(Ledger::default(), budgets, prices.clone()).layer(inner);
    let writer = SpendWriter::spawn(Discard, 100_000, 256);
    let recorded = BudgetLayer::new(Ledger::default(), budgets, prices)
        .spend(writer.clone())
        .layer(inner);
    c.bench_function("budget/layer/none", |b| b.iter(|| once(&inner, req())));
    c.bench_function("budget/layer/three_budgets", |b| {
        b.iter(|| once(&budgeted, req()))
    });
    c.bench_function("budget/layer/three_budgets_and_spend", |b| {
        b.iter(|| once(&recorded, req()))
    });
    rt.block_on(writer.flush());
    eprintln!(
        "spend records: {} written, {} dropped",
        writer.written(),
        writer.dropped()
    );
}

fn spend_writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tollgate-bench-spend-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteSpendStore::open(dir.join("bench.db")).unwrap();
    let writer = rt.block_on(async { SpendWriter::spawn(store, 100_000, 256) });
    let mut record = SpendRecord::new(
        "3f1b0c1e-8d1a-4c7e-9a55-1f0f5b2a9c11",
        "gpt-4o-mini",
        Timestamp::now(),
    );
    record.key_id = Some("k3x9abcd".into());
    record.team_id = Some("search".into());
    record.model_group = Some("gpt-4o-mini".into());
    record.deployment = Some("openai-east".into());
    record.served_model = Some("gpt-4o-mini-2024-07-18".into());
    (record.prompt_tokens, record.completion_tokens, record.cost) = (1200, 300, 480);
    (record.status, record.latency_us, record.attempts) = (200, 812_000, 1);
    let mut g = c.benchmark_group("budget/spend");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("sqlite_writer", |b| write_all(b, &rt, &writer, &record));
    assert_eq!(writer.dropped(), 0);
    #[cfg(feature = "postgres")]
    {
        // A database of its own on TOLLGATE_TEST_POSTGRES_URL's server, dropped after.
        let base = std::env::var("TOLLGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("tollgate_bench_spend_{}", std::process::id());
        let admin = |sql: String| {
            let base = base.clone();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                    .await
                    .expect("PostgreSQL at TOLLGATE_TEST_POSTGRES_URL");
                tokio::spawn(conn);
                client.batch_execute(&sql).await.unwrap();
            })
        };
        admin(format!("DROP DATABASE IF EXISTS {name}"));
        admin(format!("CREATE DATABASE {name}"));
        let (head, _) = base.split('?').next().unwrap().rsplit_once('/').unwrap();
        let url = format!("{head}/{name}");
        let store = rt
            .block_on(tollgate::budget::PostgresSpendStore::connect(&url))
            .unwrap();
        let pg = rt.block_on(async { SpendWriter::spawn(store, 100_000, 256) });
        g.bench_function("postgres_writer", |b| write_all(b, &rt, &pg, &record));
        assert_eq!((pg.dropped(), pg.failed()), (0, 0));
        drop(pg);
        admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `iters` records through `writer` and waits until they are stored.
fn write_all(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    writer: &SpendWriter,
    record: &SpendRecord,
) {
    b.iter_custom(|iters| {
        rt.block_on(async {
            let started = Instant::now();
            let mut sent = 0;
            while sent < iters {
                // Half the queue at a time: nothing is dropped, and
                // the writer never runs dry between two rounds.
                let n = (iters - sent).min(50_000);
                for _ in 0..n {
                    writer.record(record.clone());
                }
                writer.flush().await;
                sent += n;
            }
            started.elapsed()
        })
    })
}

criterion_group!(benches, ledger, meter, layer, spend_writer);
criterion_main!(benches);
