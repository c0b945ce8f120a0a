//! Property checks over arbitrary bytes, shared by the `cargo fuzz` targets
//! (`fuzz/fuzz_targets/*.rs`) and the replay of their committed corpora
//! (`tests/fuzz_corpora.rs`). Not a public API: each function reads bytes the
//! way a client or an upstream could send them to one of the gateway's
//! parsers, and panics when a property of that parser does not hold. See
//! `docs/fuzzing.md`.
//!
//! The functions are thin: they call the parsers and compare what they
//! return with an independent reading (serde_json's), with the same input
//! fed in other chunkings, or with what must never appear in an output.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::budget::meter::{UsageFilter, is_usage_only};
use crate::budget::usage::Event;
use crate::budget::{EVENT_CAP, Meter, TokenUsage};
use crate::read_request::{Parsed, json_string, scan};
use crate::router::body::CommitWatch;
use crate::sanitize::{REDACTED, Secrets};

/// The fuzz targets, by name: each target's corpus lives in
/// `fuzz/corpus/<name>/` and is replayed by [`check`].
pub const TARGETS: [&str; 6] = [
    "request",
    "sse",
    "json_answer",
    "error_body",
    "config",
    "translate",
];

/// Runs the check of the target `name` (one of [`TARGETS`]) over `data`.
pub fn check(name: &str, data: &[u8]) {
    match name {
        "request" => request(data),
        "sse" => sse(data),
        "json_answer" => json_answer(data),
        "error_body" => error_body(data),
        "config" => config(data),
        "translate" => translate(data),
        _ => panic!("no fuzz target named {name}"),
    }
}

/// Splits fuzz input into cut points and the bytes to cut: the first byte
/// says how many cuts (0 to 8), each then takes two bytes (a position,
/// modulo the payload's length + 1); the rest is the payload.
fn cuts(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (vec![], data);
    };
    let n = usize::from(n % 9).min(rest.len() / 2);
    let (heads, payload) = rest.split_at(2 * n);
    let mut at: Vec<usize> = heads
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (payload.len() + 1))
        .collect();
    at.push(0);
    at.push(payload.len());
    at.sort_unstable();
    let pieces = at.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
    (pieces, payload)
}

/// Whether serde_json refused `data` only for its recursion limit, which
/// is not the scanner's [`scan::MAX_DEPTH`].
fn too_deep_for_serde(e: &serde_json::Error) -> bool {
    e.to_string().contains("recursion limit")
}

/// The request scanner and `Parsed`: over any body,
///
/// - the scanner accepts exactly the JSON objects serde_json accepts
///   (refusing, among those, only duplicated or mistyped recognised fields
///   and decoded values with a lone surrogate), and when both accept,
///   `model`, `stream`, `models`, `user` and `metadata.user_id` are
///   serde_json's;
/// - `top_level_model` finds the scanner's `model`;
/// - `Parsed::rewrite` (with a new model, with `include_usage`, and after
///   `retarget`) produces valid JSON that the scanner accepts, with the new
///   model and, for a stream, `stream_options.include_usage: true`; without
///   edits it is the client's bytes.
pub fn request(data: &[u8]) {
    let scanned = scan::scan(data);
    let valid = serde_json::from_slice::<IgnoredAny>(data);
    let tree = serde_json::from_slice::<Value>(data);
    let is_object = data.trim_ascii_start().first() == Some(&b'{');
    match (&scanned, &valid) {
        (Ok(_), Err(e)) if !too_deep_for_serde(e) => {
            panic!("the scanner accepted what serde_json refuses: {e}")
        }
        (Ok(_), Ok(_)) => assert!(is_object, "the scanner accepted a non-object"),
        (Err(e), Ok(_)) => {
            use scan::ErrorKind::*;
            let allowed = match e.kind {
                DuplicateField(_) | FieldType { .. } => is_object,
                NotAnObject => !is_object,
                // A lone surrogate in a decoded value: serde_json's tree
                // cannot hold it either.
                Syntax => tree.is_err(),
                TooDeep => false,
            };
            assert!(allowed, "the scanner refused valid JSON: {e:?}");
        }
        (Err(e), Err(_)) => assert!(
            !matches!(
                e.kind,
                scan::ErrorKind::DuplicateField(_) | scan::ErrorKind::FieldType { .. }
            ),
            "a field error for a body that is not JSON: {e:?}"
        ),
        (Ok(_), Err(_)) => {}
    }
    let Ok(fields) = scanned else { return };
    if let Ok(tree) = &tree {
        let model = tree.get("model").and_then(Value::as_str);
        assert_eq!(
            fields.model.as_ref().map(|m| m.value.as_str()),
            model,
            "model"
        );
        assert_eq!(
            fields.stream,
            tree.get("stream").and_then(Value::as_bool),
            "stream"
        );
        let models = tree.get("models").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|m| m.as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        });
        assert_eq!(fields.models, models, "models");
        let user = tree.get("user").and_then(Value::as_str);
        assert_eq!(fields.user.as_deref(), user, "user");
        let user_id = tree
            .get("metadata")
            .filter(|m| m.is_object())
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str);
        assert_eq!(
            fields.metadata_user_id.as_deref(),
            user_id,
            "metadata.user_id"
        );
    }
    let top = scan::top_level_model(data);
    assert_eq!(
        top.as_ref().map(|m| (&m.value, &m.span)),
        fields.model.as_ref().map(|m| (&m.value, &m.span)),
        "top_level_model"
    );

    let bytes = Bytes::copy_from_slice(data);
    let Ok(parsed) = Parsed::parse("/v1/chat/completions", bytes.clone()) else {
        return;
    };
    assert_eq!(parsed.rewrite(None, false).to_bytes(), bytes, "no edit");
    const NEW: &str = "fuzz/\"group\"\\\u{e9}\n\u{2028}";
    let literal = json_string(NEW);
    let stream = parsed.summary().stream;
    for (what, out) in [
        ("model", parsed.rewrite(Some(&literal), false)),
        ("model and usage", parsed.rewrite(Some(&literal), true)),
        ("retarget", parsed.retarget(NEW).rewrite(None, true)),
    ] {
        let out = out.to_bytes();
        let fields = match scan::scan(&out) {
            Ok(f) => f,
            Err(e) => panic!(
                "rewrite ({what}) made an unacceptable body: {e:?}: {}",
                String::from_utf8_lossy(&out)
            ),
        };
        if valid.is_ok() {
            assert!(
                serde_json::from_slice::<IgnoredAny>(&out).is_ok(),
                "rewrite ({what}) made invalid JSON"
            );
        }
        assert_eq!(
            fields.model.map(|m| m.value).as_deref(),
            Some(NEW),
            "rewrite ({what}): model"
        );
        if stream && what != "model" {
            let usage = fields.stream_options.and_then(|o| o.include_usage);
            assert_eq!(
                usage.map(|(b, _)| b),
                Some(true),
                "rewrite ({what}): include_usage"
            );
        }
    }
}

/// What a meter made of the pieces: usage and output estimate.
fn meter(mut meter: Meter, pieces: &[&[u8]]) -> (Option<TokenUsage>, u64) {
    for p in pieces {
        meter.feed(p);
        assert!(
            meter.buffered() <= 2 * EVENT_CAP,
            "the meter holds {} bytes",
            meter.buffered()
        );
    }
    meter.finish();
    (meter.usage(), meter.output_tokens_estimate())
}

/// A usage as read must be coherent: cached tokens are part of the prompt.
fn coherent(usage: Option<TokenUsage>) {
    if let Some(u) = usage {
        assert!(u.cached_tokens <= u.prompt_tokens, "{u:?}");
    }
}

/// The byte search of chat chunks ([`Event::chat_text`]) never hides a
/// usage that reading the event finds.
fn chat_text_hides_no_usage(payload: &[u8]) {
    if Event::chat_text(payload).is_some()
        && let Some(event) = Event::read(payload)
    {
        assert_eq!(
            event.usage(),
            None,
            "chat_text took an event with usage for a plain chunk"
        );
    }
}

/// A streamed answer (`data:` lines), cut into pieces by the input's first
/// bytes (see `cuts`):
///
/// - the SSE meter reads the same usage and output estimate whatever the
///   cuts, and holds at most twice [`EVENT_CAP`];
/// - the chat-chunk byte search never hides a usage;
/// - the usage-chunk filter passes the same bytes whatever the cuts:
///   every line but the usage-only ones;
/// - the router's commit watch sees content whatever the cuts if it does
///   when fed whole.
pub fn sse(data: &[u8]) {
    let (pieces, body) = cuts(data);
    let whole = meter(Meter::sse(), &[body]);
    assert_eq!(meter(Meter::sse(), &pieces), whole, "SSE meter over cuts");
    coherent(whole.0);

    let mut longest = 0;
    let mut expected = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        longest = longest.max(line.len());
        if !line.ends_with(b"\n") || !is_usage_only(line) {
            expected.extend_from_slice(line);
        }
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(payload) = line.strip_prefix(b"data:") {
            chat_text_hides_no_usage(payload.trim_ascii());
        }
    }
    if longest <= EVENT_CAP {
        let filtered = |pieces: &[&[u8]]| {
            let mut f = UsageFilter::default();
            let mut out = Vec::new();
            for p in pieces {
                out.extend_from_slice(&f.pass(&Bytes::copy_from_slice(p)));
            }
            out.extend_from_slice(&f.rest());
            out
        };
        assert_eq!(filtered(&[body]), expected, "usage filter, whole");
        assert_eq!(filtered(&pieces), expected, "usage filter over cuts");
    }

    let mut watch = CommitWatch::default();
    let whole = watch.feed(body);
    let mut watch = CommitWatch::default();
    let mut split = false;
    for p in &pieces {
        split |= watch.feed(p);
    }
    assert_eq!(split, whole, "commit watch over cuts");
}

/// A JSON answer, cut as in [`sse`]:
///
/// - the JSON meter reads the same usage whatever the cuts;
/// - the usage reader (`TokenUsage::read_at`, `Event::read`, straight
///   from bytes) agrees with `TokenUsage::from_json` / `in_event` over
///   serde_json's tree of the same bytes;
/// - the chat-chunk byte search never hides a usage.
pub fn json_answer(data: &[u8]) {
    let (pieces, body) = cuts(data);
    let whole = meter(Meter::json(), &[body]);
    assert_eq!(meter(Meter::json(), &pieces), whole, "JSON meter over cuts");
    coherent(whole.0);

    let first = serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next();
    let at = TokenUsage::read_at(body);
    coherent(at);
    if let Some(Ok(value)) = first {
        assert_eq!(at, TokenUsage::from_json(&value), "read_at vs from_json");
    }
    let event = Event::read(body);
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let Some(event) = &event else {
            panic!("Event::read refused JSON")
        };
        assert_eq!(
            event.usage(),
            TokenUsage::in_event(&value),
            "Event::read vs in_event"
        );
    }
    coherent(event.and_then(|e| e.usage()));
    chat_text_hides_no_usage(body);
}

/// A secret for [`error_body`]: key-like bytes (letters, digits, `-_.+/=`,
/// a letter among them: a JSON number is not text to redact), at least 8
/// of them (shorter ones are not redacted by design).
fn secret(b: &[u8]) -> Option<&str> {
    let ok = b.len() >= 8
        && b.iter().any(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.+/=".contains(c));
    ok.then(|| std::str::from_utf8(b).ok()).flatten()
}

/// Every string of a JSON value, object keys included, as a client's
/// parser decodes them (so the escapes of the serialized text cannot fake
/// a secret), each with `[redacted]` replaced by a byte no secret holds.
fn texts(v: &Value, out: &mut Vec<String>) {
    let clean = |s: &str| s.replace(REDACTED, "\u{1}");
    match v {
        Value::String(s) => out.push(clean(s)),
        Value::Array(items) => items.iter().for_each(|v| texts(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(clean(k));
                texts(v, out);
            }
        }
        _ => {}
    }
}

/// An upstream's error answer: status (400 to 599 from the first byte),
/// an HTML content type or not (second byte), a `Retry-After` (length in
/// the third byte), two exact secrets (lengths in the fourth and fifth),
/// then the body. `Error::from_upstream` and `Error::from_response` must
/// not panic, and the contract's JSON body and SSE tail they render must be
/// valid JSON with the status as `code`, and hold neither secret.
pub fn error_body(data: &[u8]) {
    let [s, html, ra, k1, k2, rest @ ..] = data else {
        return;
    };
    let status = StatusCode::from_u16(400 + u16::from(*s) % 200).expect("400..600");
    fn take<'a>(rest: &mut &'a [u8], n: u8) -> &'a [u8] {
        let n = usize::from(n).min(rest.len());
        let (a, b) = rest.split_at(n);
        *rest = b;
        a
    }
    let mut rest = rest;
    let retry = take(&mut rest, *ra % 32);
    let key1 = take(&mut rest, *k1 % 48);
    let key2 = take(&mut rest, *k2 % 48);
    let body = rest;
    let mut headers = HeaderMap::new();
    if html % 2 == 1 {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html"),
        );
    }
    if let Ok(v) = HeaderValue::from_bytes(retry) {
        let name = if html & 2 == 2 {
            http::HeaderName::from_static("retry-after-ms")
        } else {
            http::header::RETRY_AFTER
        };
        headers.insert(name, v);
    }
    let keys: Vec<&str> = [key1, key2].into_iter().filter_map(secret).collect();
    let secrets = Secrets::new(&keys);
    let provider: Arc<str> = Arc::from("fuzz");
    let errors = |body: &[u8]| {
        [
            crate::Error::from_upstream(status, &headers, body, provider.clone(), &secrets),
            crate::Error::from_response(status, &headers, body, &secrets),
        ]
    };
    let rendered = |e: &crate::Error| {
        let json = e.to_json(&secrets);
        let v: Value = serde_json::from_slice(&json).expect("to_json is JSON");
        let mut out = Vec::new();
        texts(&v, &mut out);
        (json, v, out)
    };
    // The gateway's own words (a secret may happen to be one of them).
    let own: Vec<String> = errors(b"").iter().map(|e| rendered(e).2.concat()).collect();
    for (e, own) in errors(body).iter().zip(&own) {
        let (json, v, out) = rendered(e);
        assert_eq!(v["error"]["code"], u16::from(e.status()), "code");
        let tail = e.to_sse_tail("m", &secrets);
        assert!(tail.starts_with(b"data: ") && tail[6..].starts_with(&json));
        for k in keys.iter().filter(|k| !own.contains(*k)) {
            assert!(
                out.iter().all(|s| !s.contains(k)),
                "secret {k:?} left in {}",
                String::from_utf8_lossy(&json)
            );
        }
    }
}

/// A configuration file: `Config::from_toml` never panics over any text,
/// and what it accepts builds its prices, policies, keys and chains without
/// panicking.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = crate::config::Config::from_toml("fuzz.toml", text) else {
        return;
    };
    let _ = c.deployment_count();
    let _ = c.prices();
    let _ = c.retry_policy();
    let _ = c.timeouts();
    let _ = c.access_groups();
    let _ = c.ledger();
    let _ = c.global_budget();
    let _ = c.master_key();
    let _ = c.static_keys();
    let _ = c.key_location();
    let _ = c.fallback_layer();
}

/// The family translators (`crate::translate`), both directions. The first
/// byte picks the pair (bit 0) and what the rest is (bits 1–2): a client's
/// request body, an upstream's whole answer, or an upstream stream cut as
/// in [`sse`]. Over any bytes:
///
/// - a request is translated into a JSON object or refused as
///   `invalid_request` / `invalid_json`, never a panic;
/// - a whole answer is translated into a JSON object or refused as a
///   [`TranslateError`](crate::translate::TranslateError);
/// - a stream gives the same output, commit point, usage and outcome
///   whatever the cuts, and the translator's buffers stay bounded by the
///   event cap.
pub fn translate(data: &[u8]) {
    use crate::translate::{Options, Pair, ResponseContext};
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let pair = if head & 1 == 0 {
        Pair::ChatToMessages
    } else {
        Pair::MessagesToChat
    };
    let options = Options {
        event_cap: 4096,
        ..Options::default()
    };
    let ctx = || ResponseContext::new("client-model", 1_700_000_000).include_usage(head & 8 != 0);
    let object = |b: &[u8]| matches!(serde_json::from_slice::<Value>(b), Ok(Value::Object(_)));
    match (head >> 1) & 3 {
        0 => match pair.request(rest, "upstream-model", &options) {
            Ok(t) => assert!(object(&t.body), "a translated request is a JSON object"),
            Err(e) => assert!(
                matches!(
                    e.reason(),
                    crate::Reason::InvalidRequest | crate::Reason::InvalidJson
                ),
                "a refused request is the client's fault: {:?}",
                e.reason()
            ),
        },
        1 => {
            if let Ok(t) = pair.response(rest, &ctx()) {
                assert!(object(&t.body), "a translated answer is a JSON object");
            }
        }
        _ => {
            let (pieces, body) = cuts(rest);
            let run = |pieces: &[&[u8]]| {
                let mut t = pair.stream(ctx(), &options);
                let mut out = bytes::BytesMut::new();
                let mut outcome = Ok(());
                for p in pieces {
                    outcome = t.feed(p, &mut out);
                    assert!(
                        t.buffered() <= 4 * 4096 + 64 * 1024,
                        "bounded: {}",
                        t.buffered()
                    );
                    if outcome.is_err() {
                        break;
                    }
                }
                if outcome.is_ok() {
                    outcome = t.finish(&mut out);
                }
                (
                    out,
                    outcome.map_err(|e| e.to_string()),
                    t.committed(),
                    t.usage(),
                )
            };
            let whole = run(&[body]);
            let split = run(&pieces);
            assert_eq!(split.1, whole.1, "the same outcome whatever the cuts");
            if whole.1.is_ok() {
                assert_eq!(split.0, whole.0, "the same output whatever the cuts");
                assert_eq!(
                    (split.2, split.3),
                    (whole.2, whole.3),
                    "commit point and usage"
                );
            }
        }
    }
}
