//! The cost of the shared credential cache on the request path.
//!
//! ```text
//! cargo bench --bench credentials -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `credentials/cached_get`: [`CredentialCache::get`] of a valid token,
//!   the look-up every request to an Entra ID (or, later, Vertex or
//!   temporary-AWS-credential) deployment makes: one atomic load, a clock
//!   read, an `Arc` clone. Polled once (it completes at the first poll: a
//!   valid token never waits).
//! - `credentials/bearer_header`: what the provider does per request: the
//!   look-up of a cached `Authorization: Bearer` header value (built once
//!   per fetch) and its clone (a reference count).
//! - `credentials/bearer_header_rebuilt`: the look-up plus building that
//!   header from the token on every request, the alternative not taken.
//! - `credentials/api_key_header`: the `api-key` header value built from a
//!   fixed key, what an API-key deployment pays instead (the baseline).
//! - `credentials/cached_get_contended`: the look-up while another thread does
//!   the same without pause (the cache shared by every request; this
//!   machine has 2 cores).
//! - `credentials/replay_copy`: the copy of an upstream chat request (its
//!   method, URI, six headers and a 1 KiB body of reference-counted bytes)
//!   that the provider keeps for every request holding an Entra ID token, to
//!   send it once more with a fresh token if Azure answers 401 (the same
//!   field-by-field copy as the provider's `copy_request`).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use tollgate::credentials::{Credential, CredentialCache, Fetched, RefreshPolicy, Secret};

const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2NvZ25pdGl2ZXNlcnZpY2VzLmF6dXJlLmNvbSJ9.c2lnbmF0dXJlLW9mLWEtcmVhbC1sZW5ndGgtdG9rZW4tMDEyMzQ1Njc4OQ";

/// Polls `get()` once: a valid token is there at the first poll.
fn now<T: Send + Sync + 'static>(cache: &CredentialCache<T>) -> Credential<T> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(cache.get()).as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("a valid token waited"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let cache = CredentialCache::new("bench", RefreshPolicy::default(), || async {
        Ok(Fetched::expiring(
            Secret::new(TOKEN),
            Duration::from_secs(3600),
        ))
    });
    rt.block_on(cache.get()).unwrap();
    let headers = CredentialCache::new("bench", RefreshPolicy::default(), || async {
        let mut v = HeaderValue::try_from(format!("Bearer {TOKEN}")).unwrap();
        v.set_sensitive(true);
        Ok(Fetched::expiring(v, Duration::from_secs(3600)))
    });
    rt.block_on(headers.get()).unwrap();

    let mut g = c.benchmark_group("credentials");
    g.bench_function("cached_get", |b| b.iter(|| black_box(now(&cache))));
    g.bench_function("bearer_header", |b| {
        b.iter(|| black_box(now(&headers).value().clone()))
    });
    g.bench_function("bearer_header_rebuilt", |b| {
        b.iter(|| {
            let t = now(&cache);
            let mut v = HeaderValue::try_from(format!("Bearer {}", t.value().expose())).unwrap();
            v.set_sensitive(true);
            black_box(v)
        })
    });
    let key = String::from("0123456789abcdef0123456789abcdef");
    g.bench_function("api_key_header", |b| {
        b.iter(|| {
            let mut v = HeaderValue::from_str(black_box(&key)).unwrap();
            v.set_sensitive(true);
            black_box(v)
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..1)
        .map(|_| {
            let (cache, stop) = (cache.clone(), stop.clone());
            let handle = rt.handle().clone();
            std::thread::spawn(move || {
                let _guard = handle.enter();
                while !stop.load(Ordering::Relaxed) {
                    black_box(now(&cache));
                }
            })
        })
        .collect();
    g.bench_function("cached_get_contended", |b| {
        b.iter(|| black_box(now(&cache)))
    });
    stop.store(true, Ordering::Relaxed);
    for t in others {
        t.join().unwrap();
    }
    let body = tollgate::body::Chunks::new(vec![bytes::Bytes::from(vec![b'x'; 1024])]);
    let sent =
        http::Request::post("https://my-resource.openai.azure.com/openai/v1/chat/completions")
            .header("content-type", "application/json")
            .header("accept", "text/event-stream")
            .header("authorization", now(&headers).value().clone())
            .header("x-request-id", "0123456789abcdef")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("user-agent", "tollgate")
            .body(body)
            .unwrap();
    g.bench_function("replay_copy", |b| {
        b.iter(|| {
            let req = black_box(&sent);
            let mut copy = http::Request::new(req.body().clone());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            black_box(copy)
        })
    });
    g.finish();
    assert_eq!(cache.fetches(), 1);
}

criterion_group!(benches, bench);
criterion_main!(benches);
