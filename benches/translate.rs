//! What translation between API families costs, alone (`tollgate::translate`).
//!
//! ```text
//! cargo bench --bench translate -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Both pairs: `chat_to_messages` (an OpenAI chat client, an Anthropic
//! upstream) and `messages_to_chat` (an Anthropic client, an
//! OpenAI-compatible upstream).
//!
//! - `translate/request/<pair>/{text_1KiB,tools}`: `Pair::request` on the
//!   client's body: a ~1 KiB chat (system prompt and one user message), and
//!   a multi-turn chat with two tool definitions (one with a JSON schema),
//!   an assistant turn with two tool calls, their two results and a last
//!   user turn (~1.3 KiB). `translate/request/json_value/*` parses the same
//!   bodies into a `serde_json::Value` and nothing else: the floor a
//!   translation that reads the whole body cannot go under.
//! - `translate/response/<pair>/{text,tools}`: `Pair::response` on the
//!   upstream's whole answer: a text answer with usage, and one with text
//!   and two tool calls.
//! - `translate/stream/<pair>/{text,tools}`: one stream through
//!   `Pair::stream` → `StreamTranslator::feed` (each upstream event its own
//!   chunk, as an upstream's frames arrive; what it writes split off after
//!   each, as the provider's body does) → `finish`. `text`: 100 text deltas
//!   of ~8 bytes between the family's opening and closing events; `tools`:
//!   a tool call whose arguments come in 100 deltas of ~40 bytes. Throughput
//!   is in upstream events, so criterion prints events per second; the time
//!   per event is the iteration's time divided by the event count printed
//!   beside each group.
//!
//! Instruction counts, steady on a busy machine where wall time is not
//! (`TOLLGATE_BENCH_COUNT=<group>/<name> TOLLGATE_BENCH_ITERS=N` runs one
//! case N times and nothing else):
//!
//! ```text
//! cargo build --release --bench translate      # prints nothing; the binary is target/release/deps/translate-…
//! TOLLGATE_BENCH_COUNT=translate/request/chat_to_messages/tools TOLLGATE_BENCH_ITERS=1000 \
//!   valgrind --tool=callgrind --toggle-collect='*counted*' target/release/deps/translate-… --bench
//! # the summary line's count / 1000 = instructions per translation
//! ```

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tollgate::translate::{Options, Pair, ResponseContext};

/// The ~1 KiB user message of the text requests (the stack bench's filler).
fn filler(size: usize) -> String {
    let unit =
        "The quick brown fox jumps over the lazy dog. \"Quoted\" text, unicode \u{e9}\u{e8}. ";
    let mut s = String::new();
    while s.len() + unit.len() <= size {
        s.push_str(unit);
    }
    s
}

fn chat_text() -> Bytes {
    body(json!({"model": "fast", "max_tokens": 256, "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": filler(900)}]}))
}

fn messages_text() -> Bytes {
    body(
        json!({"model": "fast", "max_tokens": 256, "system": "You are terse.",
        "messages": [{"role": "user", "content": filler(900)}]}),
    )
}

const SCHEMA: &str = r#"{"type":"object","properties":{"city":{"type":"string","description":"The city, in English"},"unit":{"type":"string","enum":["celsius","fahrenheit"]}},"required":["city"]}"#;

fn chat_tools() -> Bytes {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    body(
        json!({"model": "fast", "max_tokens": 500, "temperature": 0.2,
        "tools": [
            {"type": "function", "function": {"name": "weather",
                "description": "The current weather of a city", "parameters": schema}},
            {"type": "function", "function": {"name": "now", "description": "The time now"}}],
        "tool_choice": "auto",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Use the tools when a question needs live data."},
            {"role": "user", "content": "What is the weather in Paris and in Rome right now, and which is warmer?"},
            {"role": "assistant", "content": "Let me check both cities.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\",\"unit\":\"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\":18,\"sky\":\"overcast\",\"wind_kmh\":12}"},
            {"role": "tool", "tool_call_id": "call_2", "content": "{\"temperature\":22,\"sky\":\"clear\",\"wind_kmh\":5}"},
            {"role": "user", "content": "Thanks. And tomorrow?"}]}),
    )
}

fn messages_tools() -> Bytes {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    body(
        json!({"model": "fast", "max_tokens": 500, "temperature": 0.2,
        "system": "You are a helpful assistant. Use the tools when a question needs live data.",
        "tools": [
            {"name": "weather", "description": "The current weather of a city", "input_schema": schema},
            {"name": "now", "description": "The time now", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto"},
        "messages": [
            {"role": "user", "content": "What is the weather in Paris and in Rome right now, and which is warmer?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Let me check both cities."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris", "unit": "celsius"}},
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome", "unit": "celsius"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "{\"temperature\":18,\"sky\":\"overcast\",\"wind_kmh\":12}"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "{\"temperature\":22,\"sky\":\"clear\",\"wind_kmh\":5}"},
                {"type": "text", "text": "Thanks. And tomorrow?"}]}]}),
    )
}

fn body(v: Value) -> Bytes {
    Bytes::from(v.to_string())
}

fn anthropic_answer(tools: bool) -> Bytes {
    let mut content = vec![json!({"type": "text", "text": "Hello! How can I help you today?"})];
    if tools {
        content.push(json!({"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris", "unit": "celsius"}}));
        content.push(json!({"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome", "unit": "celsius"}}));
    }
    body(
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": content, "stop_reason": if tools { "tool_use" } else { "end_turn" },
        "stop_sequence": null,
        "usage": {"input_tokens": 260, "output_tokens": 9, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}),
    )
}

fn openai_answer(tools: bool) -> Bytes {
    let mut message = json!({"role": "assistant", "content": "Hello! How can I help you today?"});
    if tools {
        message["tool_calls"] = json!([
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\",\"unit\":\"celsius\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\",\"unit\":\"celsius\"}"}}]);
    }
    body(
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-x",
        "choices": [{"index": 0, "message": message,
            "finish_reason": if tools { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": 260, "completion_tokens": 9, "total_tokens": 269}}),
    )
}

/// Deltas per stream.
const DELTAS: usize = 100;

fn anthropic_event(data: Value) -> Bytes {
    let name = data["type"].as_str().unwrap().to_owned();
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// An Anthropic stream, one event per element.
fn anthropic_stream(tools: bool) -> Vec<Bytes> {
    let mut events = vec![anthropic_event(
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
        "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 260, "output_tokens": 1}}}),
    )];
    let block = if tools {
        json!({"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}})
    } else {
        json!({"type": "text", "text": ""})
    };
    events.push(anthropic_event(
        json!({"type": "content_block_start", "index": 0, "content_block": block}),
    ));
    // Deltas spelled as Anthropic writes them (fields in its order, no
    // spaces), as the translator's fast path expects them.
    for i in 0..DELTAS {
        let (kind, field, text) = if tools {
            (
                "input_json_delta",
                "partial_json",
                format!("{{\"part_{i:03}\":\"lorem ipsum dolor sit\"}},"),
            )
        } else {
            ("text_delta", "text", format!(" tok{i:03}"))
        };
        let text = serde_json::to_string(&text).unwrap();
        events.push(Bytes::from(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"{kind}\",\"{field}\":{text}}}}}\n\n"
        )));
    }
    events.push(anthropic_event(
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(anthropic_event(json!({"type": "message_delta",
        "delta": {"stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null},
        "usage": {"output_tokens": DELTAS}})));
    events.push(anthropic_event(json!({"type": "message_stop"})));
    events
}

fn openai_chunk(delta: Value, finish: Option<&str>) -> Bytes {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
        "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// An OpenAI chat stream with its usage chunk, one event per element.
fn openai_stream(tools: bool) -> Vec<Bytes> {
    let mut events = vec![if tools {
        openai_chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
            None,
        )
    } else {
        openai_chunk(json!({"role": "assistant", "content": ""}), None)
    }];
    for i in 0..DELTAS {
        events.push(if tools {
            let args = serde_json::to_string(&format!("{{\"part_{i:03}\":\"lorem ipsum dolor sit\"}},")).unwrap();
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{args}}}}}]}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            ))
        } else {
            // Spelled as OpenAI writes it (fields in its order), as the
            // translator's fast path expects it.
            let text = serde_json::to_string(&format!(" tok{i:03}")).unwrap();
            Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text}}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            ))
        });
    }
    events.push(openai_chunk(
        json!({}),
        Some(if tools { "tool_calls" } else { "stop" }),
    ));
    let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
        "model": "gpt-x", "choices": [],
        "usage": {"prompt_tokens": 260, "completion_tokens": DELTAS, "total_tokens": 260 + DELTAS}});
    events.push(Bytes::from(format!("data: {usage}\n\n")));
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// Translates one whole stream, event by event; the bytes written.
fn translate_stream(
    pair: Pair,
    ctx: &ResponseContext,
    options: &Options,
    events: &[Bytes],
) -> usize {
    let mut t = pair.stream(ctx.clone(), options);
    let mut out = BytesMut::new();
    let mut written = 0;
    for e in events {
        t.feed(e, &mut out).unwrap();
        written += black_box(out.split().freeze()).len();
    }
    t.finish(&mut out).unwrap();
    written + black_box(out.split().freeze()).len()
}

/// One measured case: its criterion group and name, its throughput unit,
/// and one run of it.
struct Case {
    group: &'static str,
    name: String,
    throughput: Throughput,
    run: Box<dyn Fn()>,
}

fn cases() -> Vec<Case> {
    let options = Options::default();
    let ctx = ResponseContext::new("fast", 1_700_000_000).include_usage(true);
    let mut out = Vec::new();
    for (pair_name, pair, bodies) in [
        (
            "chat_to_messages",
            Pair::ChatToMessages,
            [("text_1KiB", chat_text()), ("tools", chat_tools())],
        ),
        (
            "messages_to_chat",
            Pair::MessagesToChat,
            [("text_1KiB", messages_text()), ("tools", messages_tools())],
        ),
    ] {
        for (name, body) in bodies {
            // The translation must succeed, or the bench measures an error path.
            pair.request(&body, "upstream-model", &options).unwrap();
            let throughput = Throughput::Bytes(body.len() as u64);
            let (b, o) = (body.clone(), options.clone());
            out.push(Case {
                group: "translate/request",
                name: format!("{pair_name}/{name}"),
                throughput: throughput.clone(),
                run: Box::new(move || {
                    black_box(pair.request(black_box(&b), "upstream-model", &o).unwrap());
                }),
            });
            out.push(Case {
                group: "translate/request",
                name: format!("json_value/{pair_name}/{name}"),
                throughput,
                run: Box::new(move || {
                    black_box(serde_json::from_slice::<Value>(black_box(&body)).unwrap());
                }),
            });
        }
    }
    for (pair_name, pair, answer) in [
        (
            "chat_to_messages",
            Pair::ChatToMessages,
            anthropic_answer as fn(bool) -> Bytes,
        ),
        ("messages_to_chat", Pair::MessagesToChat, openai_answer),
    ] {
        for (name, tools) in [("text", false), ("tools", true)] {
            let body = answer(tools);
            pair.response(&body, &ctx).unwrap();
            let c = ctx.clone();
            out.push(Case {
                group: "translate/response",
                name: format!("{pair_name}/{name}"),
                throughput: Throughput::Bytes(body.len() as u64),
                run: Box::new(move || {
                    black_box(pair.response(black_box(&body), &c).unwrap());
                }),
            });
        }
    }
    for (pair_name, pair, stream) in [
        (
            "chat_to_messages",
            Pair::ChatToMessages,
            anthropic_stream as fn(bool) -> Vec<Bytes>,
        ),
        ("messages_to_chat", Pair::MessagesToChat, openai_stream),
    ] {
        for (name, tools) in [("text", false), ("tools", true)] {
            let events = stream(tools);
            let bytes: usize = events.iter().map(Bytes::len).sum();
            let written = translate_stream(pair, &ctx, &options, &events);
            println!(
                "translate/stream/{pair_name}/{name}: {} upstream events ({bytes} bytes) -> {written} bytes",
                events.len()
            );
            let (c, o) = (ctx.clone(), options.clone());
            out.push(Case {
                group: "translate/stream",
                name: format!("{pair_name}/{name}"),
                throughput: Throughput::Elements(events.len() as u64),
                run: Box::new(move || {
                    black_box(translate_stream(pair, &c, &o, black_box(&events)));
                }),
            });
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    if let Ok(name) = std::env::var("TOLLGATE_BENCH_COUNT") {
        return count(&name);
    }
    for case in cases() {
        let mut g = c.benchmark_group(case.group);
        g.throughput(case.throughput);
        g.bench_function(&case.name, |b| b.iter(&case.run));
        g.finish();
    }
}

/// The instruction-count mode: `TOLLGATE_BENCH_COUNT=<group>/<name>
/// TOLLGATE_BENCH_ITERS=N` runs that case once, then N times inside
/// [`counted`], and nothing else, so that
/// `valgrind --tool=callgrind --toggle-collect='*counted*'` counts N runs
/// exactly (divide by N).
fn count(full: &str) {
    let n: u64 = std::env::var("TOLLGATE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("TOLLGATE_BENCH_COUNT needs TOLLGATE_BENCH_ITERS=N");
    let cases = cases();
    let Some(case) = cases
        .iter()
        .find(|c| format!("{}/{}", c.group, c.name) == full)
    else {
        let names: Vec<_> = cases
            .iter()
            .map(|c| format!("{}/{}", c.group, c.name))
            .collect();
        panic!("TOLLGATE_BENCH_COUNT={full}: not a case (one of {names:?})");
    };
    (case.run)();
    counted(&case.run, n);
}

#[inline(never)]
fn counted(run: &dyn Fn(), n: u64) {
    for _ in 0..n {
        run();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
