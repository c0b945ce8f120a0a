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

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::budget::{Ledger, Limit, Meter, Period, Scope};

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

criterion_group!(benches, ledger, meter);
criterion_main!(benches);
