//! The cost Bedrock's authentication adds to one request: a SigV4 signature
//! (`aws-sigv4`: canonical request, payload hash, derived key, HMAC) over a
//! Converse request of 1 KiB and 32 KiB, with and without a session token,
//! and the bearer API key for comparison.
//!
//! Run with `cargo bench --bench bedrock_sign -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use tollgate::provider::BedrockAuth;
use tollgate::provider::bedrock::Signer;

fn body(len: usize) -> Vec<u8> {
    let text = "x".repeat(len.saturating_sub(60));
    format!(r#"{{"messages":[{{"role":"user","content":[{{"text":"{text}"}}]}}]}}"#).into_bytes()
}

fn request() -> Request<()> {
    Request::builder()
        .method("POST")
        .uri("https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body(())
        .unwrap()
}

fn sign(c: &mut Criterion) {
    let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    let signers = [
        (
            "sigv4",
            Signer::new("us-east-1", BedrockAuth::aws("AKIDEXAMPLE", secret, None)),
        ),
        (
            "sigv4+session_token",
            Signer::new(
                "us-east-1",
                BedrockAuth::aws(
                    "AKIDEXAMPLE",
                    secret,
                    Some("FwoGZXIvYXdzEXAMPLESESSIONTOKEN0123456789"),
                ),
            ),
        ),
        (
            "api_key",
            Signer::new(
                "us-east-1",
                BedrockAuth::ApiKey("ABSKexampleBedrockApiKey0123456789".into()),
            ),
        ),
    ];
    let mut g = c.benchmark_group("bedrock_authenticate");
    for len in [1024, 32 * 1024] {
        let body = body(len);
        g.throughput(Throughput::Bytes(body.len() as u64));
        for (name, signer) in &signers {
            g.bench_with_input(BenchmarkId::new(*name, len), &body, |b, body| {
                b.iter_batched_ref(
                    request,
                    |req| {
                        signer
                            .authenticate(req, black_box(body), SystemTime::now())
                            .unwrap()
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
