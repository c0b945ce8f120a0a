//! The cost of virtual keys and model access on the hot path.
//!
//! ```text
//! cargo bench --bench keys -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! A keyring of 100,000 keys (an in-memory store; the hot path is the same
//! for SQLite, which is only read at start), and a key with 100 grants: 60
//! model names, 30 prefixes (`vendor-N/*`) and 10 general patterns
//! (`*-tierN-*`).
//!
//! - `keys/authenticate`: header → parse → SHA-256 → map lookup under a
//!   read lock → expiry/revocation → an `Arc` clone.
//! - `keys/allows/{exact,last_pattern}`: the grant check, for a model named
//!   exactly, and for one only the last pattern matches (every rule tried).
//! - `keys/stack/{without,with}`: `ReadRequest` over an instant inner
//!   service, without and with `VirtualKeys` (outside) and `ModelAccess`
//!   (inside); the difference is what keys and access add to a request.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tollgate::access::{Grants, ModelAccessLayer};
use tollgate::keys::{KeyHash, KeyRecord, KeyStore, Keyring, MemoryStore, VirtualKeysLayer};
use tollgate::read_request::{Parsed, ReadRequestLayer};
use tollgate::{Body, Error};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const KEYS: usize = 100_000;

fn grants() -> Vec<String> {
    let mut g: Vec<String> = (0..60).map(|i| format!("model-{i}")).collect();
    g.extend((0..30).map(|i| format!("vendor-{i}/*")));
    g.extend((0..10).map(|i| format!("*-tier{i}-*")));
    g
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (keyring, key) = rt.block_on(async {
        let store = MemoryStore::new();
        for i in 0..KEYS {
            let id = format!("k{i:07}");
            let mut r = KeyRecord::new(id.clone(), KeyHash::of(&id, "0123456789abcdefghijklmnop"));
            r.grants = vec![format!("model-{}", i % 60)];
            store.put_key(r).await.unwrap();
        }
        let id = "bench100";
        let secret = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3t12";
        let mut r = KeyRecord::new(id, KeyHash::of(id, secret));
        r.grants = grants();
        store.put_key(r).await.unwrap();
        let ring = Keyring::builder(store).build().await.unwrap();
        (ring, format!("tg-{id}-{secret}"))
    });
    assert_eq!(keyring.len(), KEYS + 1);
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());

    let mut g = c.benchmark_group("keys");
    g.bench_function("hash", |b| {
        b.iter(|| {
            black_box(KeyHash::of(
                black_box("bench100"),
                black_box("S3cr3tS3cr3tS3cr3tS3cr3tS3cr3t12"),
            ))
        })
    });
    g.bench_function("authenticate", |b| {
        b.iter(|| black_box(keyring.authenticate(black_box(&headers)).unwrap()))
    });
    let k = keyring.authenticate(&headers).unwrap();
    let grants: &Grants = k.grants();
    assert!(grants.allows("model-59") && grants.allows("x-tier9-y"));
    g.bench_function("allows/exact", |b| {
        b.iter(|| black_box(grants.allows(black_box("model-59"))))
    });
    g.bench_function("allows/last_pattern", |b| {
        b.iter(|| black_box(grants.allows(black_box("x-tier9-y"))))
    });

    let body = Bytes::from_static(
        br#"{"model":"x-tier9-y","messages":[{"role":"user","content":"Say hello."}]}"#,
    );
    let request = || {
        Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(Body::full(body.clone()))
            .unwrap()
    };
    let without = ServiceBuilder::new()
        .layer(ReadRequestLayer::new(1 << 20))
        .service(service_fn(|req: Request<Parsed>| async move {
            black_box(req.body().model());
            Ok::<_, Error>(Response::new(Body::empty()))
        }));
    let with = ServiceBuilder::new()
        .layer(VirtualKeysLayer::new(keyring.clone()))
        .layer(ReadRequestLayer::new(1 << 20))
        .layer(ModelAccessLayer::new())
        .service(service_fn(
            |req: Request<Parsed<tollgate::keys::Key>>| async move {
                black_box(req.body().identity().id());
                Ok::<_, Error>(Response::new(Body::empty()))
            },
        ));
    g.bench_function("stack/without", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(without.clone().oneshot(request()).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("stack/with", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(with.clone().oneshot(request()).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
