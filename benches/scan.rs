//! Throughput of the request-body scanner against serde_json and the memchr
//! floor, on realistic chat-completion bodies.
//!
//! Run with `cargo bench --bench scan -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::de::IgnoredAny;
use serde_json::Value;
use tollgate::read_request::scan::scan;

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "request",
    "model",
    "token",
    "stream",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "was",
    "on",
    "be",
    "latency",
    "budget",
    "upstream",
    "response",
    "JSON",
    "parser",
    "middleware",
    "quota",
    "policy",
    "tenant",
    "prompt",
    "completion",
    "function",
    "value",
    "error",
    "retry",
    "timeout",
    "cache",
];

/// Deterministic English-like text: lines of 40-110 bytes (so a `\n` escape
/// every line), an occasional quoted word, and a sprinkling of non-ASCII
/// punctuation (`’`, `—`, `é`) as real chat content has.
fn prose(len: usize, seed: u64) -> String {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = String::with_capacity(len + 16);
    let mut line = 0;
    while out.len() < len {
        let word = WORDS[(next() % WORDS.len() as u64) as usize];
        match next() % 64 {
            0 => out.push_str(&format!("\"{word}\"")),
            1 => out.push_str(&format!("{word}’s")),
            2 => out.push_str(&format!("{word} —")),
            3 => out.push_str("café"),
            _ => out.push_str(word),
        }
        line += word.len() + 1;
        if line > 40 + (next() % 70) as usize {
            out.push('\n');
            line = 0;
        } else {
            out.push(' ');
        }
    }
    out
}

/// Content in Cyrillic and CJK: mostly multi-byte UTF-8.
fn non_ascii(len: usize) -> String {
    let phrase = "Шлюз проверяет запрос перед отправкой. 网关在转发之前检查请求。\n";
    phrase.repeat(len / phrase.len() + 1)
}

fn message(role: &str, content: &str) -> String {
    format!(
        r#"{{"role":"{role}","content":{}}}"#,
        serde_json::to_string(content).unwrap()
    )
}

fn chat_body(messages: &[String], model_last: bool) -> Vec<u8> {
    let model = r#""model":"gpt-4o-mini""#;
    let rest = format!(
        r#""messages":[{}],"stream":true,"stream_options":{{"include_usage":true}},"max_tokens":1024,"temperature":0.7"#,
        messages.join(",")
    );
    if model_last {
        format!("{{{rest},{model}}}").into_bytes()
    } else {
        format!("{{{model},{rest}}}").into_bytes()
    }
}

fn conversation(total: usize, content: impl Fn(usize) -> String) -> Vec<String> {
    let per = 16 * 1024;
    let mut messages = vec![message("system", "You are a helpful assistant.")];
    for i in 0..total / per {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(message(role, &content(i)));
    }
    messages
}

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let small = chat_body(
        &[
            message(
                "system",
                "You are a concise assistant for an API gateway team.",
            ),
            message("user", &prose(760, 7)),
        ],
        false,
    );
    let mib = 1 << 20;
    let english = conversation(mib, |i| prose(16 * 1024 - 64, i as u64 + 1));
    let foreign = conversation(mib, |_| non_ascii(16 * 1024 - 64));
    let ascii = conversation(mib, |i| {
        prose(16 * 1024 - 64, i as u64 + 1)
            .replace('’', "'")
            .replace('—', "-")
            .replace('é', "e")
    });
    let flat = conversation(mib, |i| "lorem ipsum ".repeat(1365 - 5 + i % 2));
    vec![
        ("1MiB_ascii", chat_body(&ascii, false)),
        ("1MiB_no_escapes", chat_body(&flat, false)),
        ("1KiB", small),
        ("1MiB", chat_body(&english, false)),
        ("1MiB_model_last", chat_body(&english, true)),
        ("1MiB_non_ascii", chat_body(&foreign, false)),
    ]
}

fn bench(c: &mut Criterion) {
    for (name, body) in bodies() {
        let fields = scan(&body).expect("benchmark body scans");
        assert_eq!(fields.model.as_ref().unwrap().value, "gpt-4o-mini");
        assert_eq!((fields.stream, fields.max_tokens), (Some(true), Some(1024)));
        assert!(fields.prompt_bytes > body.len() * 9 / 10 || body.len() < 4096);

        let mut group = c.benchmark_group(format!("scan/{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("scan", |b| b.iter(|| scan(black_box(&body))));
        group.bench_function("serde_json_ignored_any", |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(&body)))
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)))
        });
        group.bench_function("from_utf8", |b| {
            b.iter(|| std::str::from_utf8(black_box(&body)).is_ok())
        });
        group.bench_function("memchr_quote_count", |b| {
            b.iter(|| memchr::memchr_iter(b'"', black_box(&body)).count())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
