//! Throughput of the request-body scanner against serde_json and the memchr
//! floor, on realistic chat-completion bodies; and the scanner against the
//! libraries that could replace it, on the same guarantees, alone and on the
//! request path.
//!
//! ```text
//! cargo bench --bench scan -- --warm-up-time 1 --measurement-time 3
//! cargo bench --no-default-features --features layers --bench scan -- \
//!     --warm-up-time 1 --measurement-time 3 '^(parse|path)/'
//! ```
//!
//! - `scan/*`: the scanner against `serde_json` into `IgnoredAny` and
//!   `Value`, `from_utf8` and a memchr count (floors, not replacements).
//! - `parse/{1KiB,100KiB_tools,1MiB}`: what `ReadRequest` needs from a body
//!   (the decoded `model` and its span, `stream`, the output caps, `n`,
//!   `stream_options.include_usage` and its span, `models`, the prompt's
//!   size, the object's end) by the scanner (`Parsed::parse_for`, which
//!   also builds the summary), by a `#[derive(Deserialize)]` summary over
//!   `serde_json` (borrowed `&RawValue` fields for the spans, everything
//!   else ignored, UTF-8 checked first), and by the same derive over
//!   `sonic-rs` (`LazyValue` fields); `serde_json_derive_depth` adds the
//!   depth bound serde_json lacks (a memchr pass refusing nesting deeper
//!   than `scan::MAX_DEPTH`): the variant with the scanner's guarantees.
//! - `path/{1KiB,100KiB_tools,1MiB}`: the request path in process:
//!   `NormalizeErrors`, the body read, the parse, an instant inner service
//!   and the answer read whole; `read_request` is the crate's own layer,
//!   the others the same read with each parser.
//!
//! Before measuring, each replacement is run over a table of hostile
//! bodies (printed): what it refuses that the scanner refuses.

use std::convert::Infallible;
use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;
use sonic_rs::LazyValue;
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::read_request::scan::scan;
use tollgate::read_request::{Endpoint, Parsed, ReadRequestLayer};
use tollgate::{Body, Error, Reason};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

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

/// A chat request of about 100 KiB with 28 tool definitions (JSON Schemas)
/// and a conversation that calls them (arguments as escaped JSON strings).
fn tools_body() -> Vec<u8> {
    let mut tools = Vec::new();
    for i in 0..28 {
        let props: Vec<String> = (0..8)
            .map(|p| {
                format!(
                    r#""field_{p}":{{"type":"object","description":{},"properties":{{"value":{{"type":"string","enum":["a","b","c"]}},"limit":{{"type":"integer","minimum":0,"maximum":1000}}}},"required":["value"]}}"#,
                    serde_json::to_string(&prose(120, (i * 8 + p) as u64 + 3)).unwrap()
                )
            })
            .collect();
        tools.push(format!(
            r#"{{"type":"function","function":{{"name":"tool_{i}","description":{},"parameters":{{"type":"object","properties":{{{}}},"required":["field_0"]}}}}}}"#,
            serde_json::to_string(&prose(200, i as u64 + 11)).unwrap(),
            props.join(",")
        ));
    }
    let mut messages = vec![message("system", "You are an agent; call tools as needed.")];
    for i in 0..13 {
        let args = serde_json::to_string(&format!(
            r#"{{"field_0":{{"value":"a","limit":{i}}},"query":{}}}"#,
            serde_json::to_string(&prose(300, i as u64 + 5)).unwrap()
        ))
        .unwrap();
        messages.push(message("user", &prose(600, i as u64 + 100)));
        messages.push(format!(
            r#"{{"role":"assistant","content":null,"tool_calls":[{{"id":"call_{i}","type":"function","function":{{"name":"tool_{i}","arguments":{args}}}}}]}}"#
        ));
        messages.push(format!(
            r#"{{"role":"tool","tool_call_id":"call_{i}","content":{}}}"#,
            serde_json::to_string(&prose(500, i as u64 + 200)).unwrap()
        ));
    }
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{}],"tools":[{}],"tool_choice":"auto","stream":true,"stream_options":{{"include_usage":true}},"max_tokens":1024,"temperature":0.7}}"#,
        messages.join(","),
        tools.join(",")
    )
    .into_bytes()
}

/// What `ReadRequest` needs from a body, as a replacement would produce it.
#[derive(Debug, PartialEq)]
struct Needed {
    model: String,
    /// `None` when the parser copied the literal (no span to splice).
    model_span: Option<Range<usize>>,
    stream: bool,
    max_output_tokens: Option<u64>,
    n: u64,
    include_usage: Option<(bool, Range<usize>)>,
    stream_options_span: Option<Range<usize>>,
    models: Vec<String>,
    prompt_bytes: usize,
    object_end: usize,
}

impl Needed {
    /// The same, from the crate's own parse.
    fn of(parsed: &Parsed) -> Needed {
        let s = parsed.summary();
        let fields = scan(parsed.bytes()).unwrap();
        let opts = fields.stream_options.as_ref();
        Needed {
            model: s.model.clone(),
            model_span: Some(fields.model.as_ref().unwrap().span.clone()),
            stream: s.stream,
            max_output_tokens: s.max_output_tokens,
            n: s.n,
            include_usage: opts.and_then(|o| o.include_usage.clone()),
            stream_options_span: opts.map(|o| o.span.clone()),
            models: s.models.clone(),
            prompt_bytes: s.prompt_bytes,
            object_end: fields.object_end,
        }
    }
}

/// Where `raw` sits in `body`; `None` when it is not borrowed from it.
fn borrowed_span(body: &[u8], raw: &str) -> Option<Range<usize>> {
    let start = (raw.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|s| s + raw.len() <= body.len())?;
    Some(start..start + raw.len())
}

/// Where `raw`, borrowed from `body`, sits in it.
fn span_in(body: &[u8], raw: &str) -> Range<usize> {
    borrowed_span(body, raw).expect("the raw value is borrowed from the body")
}

fn object_end(body: &[u8]) -> usize {
    body.iter().rposition(|b| *b == b'}').unwrap_or(0)
}

/// The `#[derive(Deserialize)]` summary over serde_json: recognised fields
/// borrowed (`&RawValue` where a span is needed), everything else ignored
/// (`IgnoredAny`, which the derive uses for unknown fields); duplicates of
/// a recognised field are refused by the derive, keys are unescaped.
#[derive(Deserialize)]
struct SerdeRequest<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    n: Option<u64>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    models: Option<Vec<String>>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SerdeStreamOptions<'a> {
    #[serde(borrow)]
    include_usage: Option<&'a RawValue>,
}

fn serde_parse(body: &[u8]) -> Result<Needed, String> {
    // serde_json does not check UTF-8 in strings it ignores: check it first.
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let r: SerdeRequest = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let model = r.model.ok_or("no model")?;
    let (include_usage, stream_options_span) = match r.stream_options {
        Some(raw) => {
            let o: SerdeStreamOptions =
                serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            let usage = match o.include_usage {
                Some(u) => Some((
                    serde_json::from_str::<bool>(u.get()).map_err(|e| e.to_string())?,
                    span_in(body, u.get()),
                )),
                None => None,
            };
            (usage, Some(span_in(body, raw.get())))
        }
        None => (None, None),
    };
    let len = |v: Option<&RawValue>| v.map_or(0, |v| v.get().len());
    Ok(Needed {
        model: serde_json::from_str(model.get()).map_err(|e| e.to_string())?,
        model_span: Some(span_in(body, model.get())),
        stream: r.stream.unwrap_or(false),
        max_output_tokens: r
            .max_completion_tokens
            .or(r.max_tokens)
            .or(r.max_output_tokens),
        n: r.n.unwrap_or(1).max(1),
        include_usage,
        stream_options_span,
        models: r.models.unwrap_or_default(),
        prompt_bytes: len(r.messages) + len(r.prompt) + len(r.input),
        object_end: object_end(body),
    })
}

/// The same derive over sonic-rs (`LazyValue` for the borrowed fields).
#[derive(Deserialize)]
struct SonicRequest<'a> {
    #[serde(borrow)]
    model: Option<LazyValue<'a>>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    n: Option<u64>,
    #[serde(borrow)]
    stream_options: Option<LazyValue<'a>>,
    models: Option<Vec<String>>,
    #[serde(borrow)]
    messages: Option<LazyValue<'a>>,
    #[serde(borrow)]
    prompt: Option<LazyValue<'a>>,
    #[serde(borrow)]
    input: Option<LazyValue<'a>>,
}

#[derive(Deserialize)]
struct SonicStreamOptions<'a> {
    #[serde(borrow)]
    include_usage: Option<LazyValue<'a>>,
}

fn sonic_parse(body: &[u8]) -> Result<Needed, String> {
    let r: SonicRequest = sonic_rs::from_slice(body).map_err(|e| e.to_string())?;
    let model = r.model.as_ref().ok_or("no model")?;
    let (include_usage, stream_options_span) = match &r.stream_options {
        Some(raw) => {
            let o: SonicStreamOptions =
                sonic_rs::from_str(raw.as_raw_str()).map_err(|e| e.to_string())?;
            let usage = match &o.include_usage {
                Some(u) => Some((
                    sonic_rs::from_str::<bool>(u.as_raw_str()).map_err(|e| e.to_string())?,
                    span_in(body, u.as_raw_str()),
                )),
                None => None,
            };
            (usage, Some(span_in(body, raw.as_raw_str())))
        }
        None => (None, None),
    };
    let len = |v: &Option<LazyValue>| v.as_ref().map_or(0, |v| v.as_raw_str().len());
    Ok(Needed {
        model: sonic_rs::from_str(model.as_raw_str()).map_err(|e| e.to_string())?,
        model_span: borrowed_span(body, model.as_raw_str()),
        stream: r.stream.unwrap_or(false),
        max_output_tokens: r
            .max_completion_tokens
            .or(r.max_tokens)
            .or(r.max_output_tokens),
        n: r.n.unwrap_or(1).max(1),
        include_usage,
        stream_options_span,
        models: r.models.unwrap_or_default(),
        prompt_bytes: len(&r.messages) + len(&r.prompt) + len(&r.input),
        object_end: object_end(body),
    })
}

/// Refuses nesting deeper than the scanner's limit, in one pass that jumps
/// through strings with memchr: what serde_json does not bound in the
/// values it skips or borrows. Run before the parse, which validates the
/// rest (so an unbalanced body is the parser's error, not this one's).
fn depth_ok(body: &[u8]) -> Result<(), String> {
    let (mut i, mut depth) = (0, 0usize);
    while i < body.len() {
        match body[i] {
            b'"' => {
                // Jump to the closing quote, past escapes.
                let mut j = i + 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[j..]) {
                        Some(k) if body[j + k] == b'\\' => j += k + 2,
                        Some(k) => {
                            j += k;
                            break;
                        }
                        None => return Ok(()),
                    }
                }
                i = j;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > tollgate::read_request::scan::MAX_DEPTH {
                    return Err("nesting too deep".into());
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// serde_json with the depth bound: the same guarantees as the scanner.
fn serde_bounded_parse(body: &[u8]) -> Result<Needed, String> {
    depth_ok(body)?;
    serde_parse(body)
}

fn scanner_parse(body: &Bytes) -> Result<Parsed, String> {
    Parsed::parse_for(Endpoint::ChatCompletions, body.clone()).map_err(|e| e.to_string())
}

/// Bodies the scanner refuses (or reads in one way only), and what each
/// replacement does with them. Printed; a replacement must match every row
/// to offer the same guarantees.
fn guarantees() {
    let deep = format!(
        r#"{{"model":"m","messages":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid UTF-8 in an ignored string",
            b"{\"model\":\"m\",\"messages\":[\"\xff\"]}".to_vec(),
        ),
        (
            "bad escape in an ignored string",
            br#"{"model":"m","x":"\q"}"#.to_vec(),
        ),
        (
            "raw control byte in an ignored string",
            b"{\"model\":\"m\",\"x\":\"\x01\"}".to_vec(),
        ),
        (
            "bad number in an ignored value",
            br#"{"model":"m","x":01}"#.to_vec(),
        ),
        ("trailing bytes", br#"{"model":"m"} x"#.to_vec()),
        (
            "duplicate `model`",
            br#"{"model":"a","model":"b"}"#.to_vec(),
        ),
        (
            "duplicate `model`, one escaped",
            br#"{"model":"a","mod\u0065l":"b"}"#.to_vec(),
        ),
        ("200 levels of nesting in `messages`", deep.into_bytes()),
    ];
    eprintln!(
        "{:<40} {:>10} {:>10} {:>10} {:>10}",
        "body", "scanner", "serde_json", "+depth", "sonic-rs"
    );
    let word = |refused: bool| if refused { "refused" } else { "ACCEPTED" };
    for (name, body) in &cases {
        let scanner = scanner_parse(&Bytes::from(body.clone())).is_err();
        eprintln!(
            "{name:<40} {:>10} {:>10} {:>10} {:>10}",
            word(scanner),
            word(serde_parse(body).is_err()),
            word(serde_bounded_parse(body).is_err()),
            word(sonic_parse(body).is_err())
        );
        assert!(scanner, "the scanner refuses {name}");
    }
    let escaped = br#"{"mod\u0065l":"a\u00e9"}"#;
    let want = Needed::of(&scanner_parse(&Bytes::from_static(escaped)).unwrap());
    assert_eq!(
        (want.model.as_str(), want.model_span.clone()),
        ("aé", Some(14..23))
    );
    let read = |n: Needed| if n == want { "read" } else { "MISREAD" };
    eprintln!(
        "{:<40} {:>10} {:>10} {:>10} {:>10}",
        "escaped key and `model`: value and span",
        "read",
        read(serde_parse(escaped).unwrap()),
        read(serde_bounded_parse(escaped).unwrap()),
        read(sonic_parse(escaped).unwrap())
    );
}

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#;

fn answer() -> Response<Body> {
    Response::new(Body::full(Bytes::from_static(ANSWER.as_bytes())))
}

/// The request path in process with `parse` in place of `ReadRequest`'s:
/// `NormalizeErrors`, the body read whole, the parse, an instant answer.
fn path_with<T: Send + 'static>(
    parse: fn(&Bytes) -> Result<T, String>,
) -> impl Service<
    Request<Body>,
    Response = Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .service(service_fn(move |req: Request<Body>| async move {
            let bytes = req
                .into_body()
                .collect()
                .await
                .map_err(|_| Error::new(Reason::InvalidRequest, "unreadable"))?
                .to_bytes();
            let parsed = parse(&bytes).map_err(|e| Error::new(Reason::InvalidJson, e))?;
            black_box(&parsed);
            Ok::<_, Error>(answer())
        }))
}

fn run_path<S, RB>(rt: &tokio::runtime::Runtime, svc: &S, body: &Bytes, iters: u64) -> Duration
where
    S: Service<Request<Body>, Response = Response<RB>, Error = Infallible> + Clone,
    RB: http_body::Body<Data = Bytes, Error: std::fmt::Debug>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let req = Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .body(Body::full(body.clone()))
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            assert!(res.status().is_success());
            black_box(res.into_body().collect().await.unwrap().to_bytes());
        }
        start.elapsed()
    })
}

fn alternatives(c: &mut Criterion) {
    guarantees();
    let all = bodies();
    let pick = |name: &str| all.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let bodies: Vec<(&str, Bytes)> = vec![
        ("1KiB", Bytes::from(pick("1KiB"))),
        ("100KiB_tools", Bytes::from(tools_body())),
        ("1MiB", Bytes::from(pick("1MiB"))),
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (name, body) in &bodies {
        // All read the same summary from the body.
        let want = Needed::of(&scanner_parse(body).unwrap());
        assert_eq!(serde_parse(body).unwrap(), want, "serde_json on {name}");
        assert_eq!(
            serde_bounded_parse(body).unwrap(),
            want,
            "serde_json+depth on {name}"
        );
        assert_eq!(sonic_parse(body).unwrap(), want, "sonic-rs on {name}");
        eprintln!("{name}: {} bytes", body.len());

        let mut g = c.benchmark_group(format!("parse/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("scanner", |b| b.iter(|| scanner_parse(black_box(body))));
        g.bench_function("serde_json_derive", |b| {
            b.iter(|| serde_parse(black_box(body)))
        });
        g.bench_function("serde_json_derive_depth", |b| {
            b.iter(|| serde_bounded_parse(black_box(body)))
        });
        g.bench_function("sonic_rs_derive", |b| {
            b.iter(|| sonic_parse(black_box(body)))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("path/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        let real = ServiceBuilder::new()
            .layer(NormalizeErrorsLayer::new())
            .layer(ReadRequestLayer::new(8 << 20))
            .service(service_fn(|req: Request<Parsed>| async move {
                black_box(req.body().summary());
                Ok::<_, Error>(answer())
            }));
        g.bench_function("read_request", |b| {
            b.iter_custom(|iters| run_path(&rt, &real, body, iters))
        });
        let scanner = path_with(scanner_parse);
        g.bench_function("scanner", |b| {
            b.iter_custom(|iters| run_path(&rt, &scanner, body, iters))
        });
        let serde = path_with(|b: &Bytes| serde_parse(b));
        g.bench_function("serde_json_derive", |b| {
            b.iter_custom(|iters| run_path(&rt, &serde, body, iters))
        });
        let bounded = path_with(|b: &Bytes| serde_bounded_parse(b));
        g.bench_function("serde_json_derive_depth", |b| {
            b.iter_custom(|iters| run_path(&rt, &bounded, body, iters))
        });
        let sonic = path_with(|b: &Bytes| sonic_parse(b));
        g.bench_function("sonic_rs_derive", |b| {
            b.iter_custom(|iters| run_path(&rt, &sonic, body, iters))
        });
        g.finish();
    }
}

criterion_group!(benches, bench, alternatives);
criterion_main!(benches);
