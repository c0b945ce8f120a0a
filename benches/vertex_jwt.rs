//! The cost of a Vertex AI token's JWT: signing the RS256 assertion that is
//! exchanged for an access token. It is paid once per token lifetime (in
//! the fetch, then in the background refresh), never by a request that holds
//! a valid token; a request pays only the cache look-up that
//! `benches/credentials.rs` measures.
//!
//! ```text
//! cargo bench --bench vertex_jwt -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `vertex/assertion`: [`ServiceAccount::assertion`]: the claims, their
//!   JSON and base64url, and one RSA-2048 PKCS#1 v1.5 SHA-256 signature
//!   (the test-only key of the bundled mock).

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate::provider::gemini::ServiceAccount;

fn bench(c: &mut Criterion) {
    let account = ServiceAccount::from_json(include_str!(
        "../examples/mock/gemini_test_only_service_account.json"
    ))
    .unwrap();
    let now = SystemTime::now();
    c.bench_function("vertex/assertion", |b| {
        b.iter(|| black_box(account.assertion(black_box(now)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
