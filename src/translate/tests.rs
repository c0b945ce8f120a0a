use bytes::BytesMut;
use serde_json::{Value, json};

use super::*;

const CTX_MODEL: &str = "client-model";

fn ctx() -> ResponseContext {
    ResponseContext::new(CTX_MODEL, 1_700_000_000)
}

fn anthropic_event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

fn openai_chunk(delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "gpt-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {chunk}\n\n")
}

fn message_start() -> String {
    anthropic_event(
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
        "role": "assistant", "content": [], "model": "claude-x", "stop_reason": null,
        "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    )
}

/// The data payloads of an SSE output, parsed (`[DONE]` as a string).
fn datas(out: &[u8]) -> Vec<Value> {
    let mut d = SseDecoder::new(usize::MAX);
    let mut got = Vec::new();
    let mut push = |e: SseEvent<'_>| {
        got.push(match e.data {
            b"[DONE]" => json!("[DONE]"),
            d => serde_json::from_slice(d).unwrap(),
        });
        Ok(())
    };
    d.feed(out, &mut push).unwrap();
    d.finish(&mut push).unwrap();
    got
}

fn feed_all(pair: Pair, input: &str) -> (Result<(), TranslateError>, BytesMut, StreamTranslator) {
    let mut t = pair.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    let r = t
        .feed(input.as_bytes(), &mut out)
        .and_then(|()| t.finish(&mut out));
    (r, out, t)
}

#[test]
fn plan_passes_matching_families_through_and_translates_the_others() {
    use crate::read_request::Endpoint as E;
    for e in [
        E::ChatCompletions,
        E::Completions,
        E::Embeddings,
        E::Responses,
        E::Other,
    ] {
        assert_eq!(plan(e, Api::OpenAi), Plan::PassThrough, "{e:?}");
    }
    for e in [E::Messages, E::CountTokens] {
        assert_eq!(plan(e, Api::Anthropic), Plan::PassThrough, "{e:?}");
    }
    for (endpoint, api, pair) in [
        (E::ChatCompletions, Api::Anthropic, Pair::ChatToMessages),
        (E::Messages, Api::OpenAi, Pair::MessagesToChat),
    ] {
        assert_eq!(plan(endpoint, api), Plan::Translate(pair));
        assert_eq!((pair.client(), pair.upstream()), (endpoint, api));
        assert_eq!(plan(pair.upstream_endpoint(), api), Plan::PassThrough);
    }
    for e in [E::Completions, E::Embeddings, E::Responses, E::Other] {
        assert_eq!(plan(e, Api::Anthropic), Plan::NotServed, "{e:?}");
    }
    assert_eq!(plan(E::CountTokens, Api::OpenAi), Plan::NotServed);
}

#[test]
fn azure_is_planned_as_openai_is() {
    use crate::read_request::Endpoint as E;
    for e in [
        E::ChatCompletions,
        E::Completions,
        E::Embeddings,
        E::Responses,
        E::Other,
        E::Messages,
        E::CountTokens,
    ] {
        assert_eq!(plan(e, Api::Azure), plan(e, Api::OpenAi), "{e:?}");
    }
}

// ------------------------------------------------------- known failure: thinking then text

#[test]
fn the_first_text_delta_after_a_thinking_block_arrives_to_an_openai_client() {
    let input = [
        message_start(),
        anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}})),
        anthropic_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hmm"}})),
        anthropic_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "c2ln"}})),
        anthropic_event(json!({"type": "content_block_stop", "index": 0})),
        // A text block whose start already carries text, then its first delta.
        anthropic_event(json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "text", "text": "A"}})),
        anthropic_event(json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "text_delta", "text": "B"}})),
        anthropic_event(json!({"type": "content_block_stop", "index": 1})),
        anthropic_event(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 5}}),
        ),
        anthropic_event(json!({"type": "message_stop"})),
    ]
    .concat();
    // Fed one byte at a time: the worst split.
    let mut t = Pair::ChatToMessages.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    for b in input.as_bytes() {
        t.feed(std::slice::from_ref(b), &mut out).unwrap();
    }
    t.finish(&mut out).unwrap();
    let texts: Vec<String> = datas(&out)
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(texts, ["A", "B"]);
}

#[test]
fn the_first_text_delta_after_reasoning_arrives_to_an_anthropic_client() {
    // One chunk ends the reasoning and starts the text.
    let input = [
        openai_chunk(
            json!({"role": "assistant", "reasoning_content": "hmm"}),
            None,
        ),
        openai_chunk(json!({"reasoning_content": "!", "content": "First"}), None),
        openai_chunk(json!({}), Some("stop")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (r, out, _) = feed_all(Pair::MessagesToChat, &input);
    r.unwrap();
    let events = datas(&out);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(events[5]["content_block"]["type"], "text");
    assert_eq!(
        events[6]["delta"],
        json!({"type": "text_delta", "text": "First"})
    );
    assert_eq!(events[6]["index"], 1);
}

// ------------------------------------------------------- known failure: tool_use input in streams

const MIB: usize = 1 << 20;
/// The most a translator may hold while a 1 MiB argument streams through
/// in 4 KiB deltas: a few events' worth, nothing proportional to the argument.
const BOUND: usize = 64 * 1024;

/// A 1 MiB JSON argument: `{"blob":"xxxx…"}`.
fn big_argument() -> String {
    format!("{{\"blob\":\"{}\"}}", "x".repeat(MIB))
}

#[test]
fn a_1_mib_tool_use_input_streams_to_an_openai_client_in_bounded_memory() {
    let arg = big_argument();
    let mut t = Pair::ChatToMessages.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    let mut rebuilt = String::new();
    let mut max_buffered = 0;
    let mut outputs = 0;
    let drain = |out: &mut BytesMut, rebuilt: &mut String, outputs: &mut usize| {
        // The caller forwards what was written; keep only the arguments to check them.
        let bytes = out.split();
        for c in datas(&bytes) {
            if let Some(a) = c.pointer("/choices/0/delta/tool_calls/0/function/arguments") {
                rebuilt.push_str(a.as_str().unwrap());
                *outputs += 1;
            }
        }
    };
    let mut feed = |t: &mut StreamTranslator, s: &str, out: &mut BytesMut| {
        // Split every event into 1000-byte network chunks.
        for piece in s.as_bytes().chunks(1000) {
            t.feed(piece, out).unwrap();
            max_buffered = max_buffered.max(t.buffered());
        }
    };
    feed(&mut t, &message_start(), &mut out);
    feed(
        &mut t,
        &anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "store", "input": {}}})),
        &mut out,
    );
    let mut deltas = 0;
    for part in arg.as_bytes().chunks(4096) {
        let part = std::str::from_utf8(part).unwrap();
        let event = anthropic_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": part}}));
        feed(&mut t, &event, &mut out);
        drain(&mut out, &mut rebuilt, &mut outputs);
        deltas += 1;
    }
    for e in [
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        json!({"type": "message_stop"}),
    ] {
        feed(&mut t, &anthropic_event(e), &mut out);
    }
    t.finish(&mut out).unwrap();
    drain(&mut out, &mut rebuilt, &mut outputs);
    assert_eq!(rebuilt, arg, "the tool input arrives whole");
    assert_eq!(
        outputs,
        deltas + 1,
        "one output delta per input delta (+ the start)"
    );
    assert!(
        max_buffered < BOUND,
        "held {max_buffered} bytes for a 1 MiB argument"
    );
}

#[test]
fn a_1_mib_tool_call_argument_streams_to_an_anthropic_client_in_bounded_memory() {
    let arg = big_argument();
    let mut t = Pair::MessagesToChat.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    let mut rebuilt = String::new();
    let mut max_buffered = 0;
    let mut inputs = Vec::new();
    inputs.push(openai_chunk(
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "store", "arguments": ""}}]}),
        None,
    ));
    for part in arg.as_bytes().chunks(4096) {
        let part = std::str::from_utf8(part).unwrap();
        inputs.push(openai_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
            None,
        ));
    }
    inputs.push(openai_chunk(json!({}), Some("tool_calls")));
    inputs.push("data: [DONE]\n\n".to_owned());
    let mut deltas = 0;
    for input in &inputs {
        for piece in input.as_bytes().chunks(1000) {
            t.feed(piece, &mut out).unwrap();
            max_buffered = max_buffered.max(t.buffered());
        }
        let bytes = out.split();
        for e in datas(&bytes) {
            if e["delta"]["type"] == "input_json_delta" {
                rebuilt.push_str(e["delta"]["partial_json"].as_str().unwrap());
                deltas += 1;
            }
        }
    }
    t.finish(&mut out).unwrap();
    assert_eq!(rebuilt, arg);
    assert_eq!(deltas, MIB.div_ceil(4096) + 1);
    assert!(
        max_buffered < BOUND,
        "held {max_buffered} bytes for a 1 MiB argument"
    );
}

/// Content blocks in the long-stream tests: half text, half tool calls
/// (their ids of one width, so a longer id is not mistaken for growth).
const BLOCKS: usize = 4000;

/// Feeds `events` one by one; the most `buffered()` was in the first
/// quarter of them and after it, and everything written.
fn buffered_over(pair: Pair, events: &[String]) -> (usize, usize, BytesMut) {
    let mut t = pair.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    let (mut early, mut late) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        t.feed(e.as_bytes(), &mut out).unwrap();
        let held = t.buffered();
        if i < events.len() / 4 {
            early = early.max(held);
        } else {
            late = late.max(held);
        }
    }
    t.finish(&mut out).unwrap();
    (early, late, out)
}

#[test]
fn a_long_stream_of_many_blocks_and_tool_calls_holds_no_more_to_an_openai_client() {
    let mut events = vec![message_start()];
    for b in 0..BLOCKS {
        let block = if b % 2 == 0 {
            json!({"type": "text", "text": ""})
        } else {
            json!({"type": "tool_use", "id": format!("toolu_{b:05}"), "name": "f", "input": {}})
        };
        events.push(anthropic_event(
            json!({"type": "content_block_start", "index": b, "content_block": block}),
        ));
        for k in 0..3 {
            let delta = if b % 2 == 0 {
                json!({"type": "text_delta", "text": format!(" t{b}.{k}")})
            } else {
                json!({"type": "input_json_delta", "partial_json": format!("{{\"k{k}\":{b}}}")})
            };
            events.push(anthropic_event(
                json!({"type": "content_block_delta", "index": b, "delta": delta}),
            ));
        }
        events.push(anthropic_event(
            json!({"type": "content_block_stop", "index": b}),
        ));
    }
    events.push(anthropic_event(json!({"type": "message_delta",
        "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}})));
    events.push(anthropic_event(json!({"type": "message_stop"})));
    let (early, late, out) = buffered_over(Pair::ChatToMessages, &events);
    assert!(
        late <= early && late < BOUND,
        "held {early} bytes early in the stream and {late} later"
    );
    let chunks = datas(&out);
    let calls = chunks
        .iter()
        .filter(|c| c.pointer("/choices/0/delta/tool_calls/0/id").is_some())
        .count();
    assert_eq!(calls, BLOCKS / 2, "every tool call went out");
    let last = chunks
        .iter()
        .rev()
        .find_map(|c| c.pointer("/choices/0/delta/tool_calls/0/index"));
    assert_eq!(last, Some(&json!(BLOCKS / 2 - 1)));
}

#[test]
fn a_long_stream_of_many_blocks_and_tool_calls_holds_no_more_to_an_anthropic_client() {
    let mut events = vec![openai_chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    for b in 0..BLOCKS {
        for k in 0..3 {
            events.push(if b % 2 == 0 {
                openai_chunk(json!({"content": format!(" t{b}.{k}")}), None)
            } else if k == 0 {
                openai_chunk(
                    json!({"tool_calls": [{"index": b / 2, "id": format!("call_{b:05}"), "type": "function",
                        "function": {"name": "f", "arguments": ""}}]}),
                    None,
                )
            } else {
                openai_chunk(
                    json!({"tool_calls": [{"index": b / 2, "function": {"arguments": format!("{{\"k{k}\":{b}}}")}}]}),
                    None,
                )
            });
        }
    }
    events.push(openai_chunk(json!({}), Some("tool_calls")));
    events.push("data: [DONE]\n\n".to_owned());
    let (early, late, out) = buffered_over(Pair::MessagesToChat, &events);
    assert!(
        late <= early && late < BOUND,
        "held {early} bytes early in the stream and {late} later"
    );
    let starts: Vec<Value> = datas(&out)
        .into_iter()
        .filter(|e| e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use")
        .collect();
    assert_eq!(starts.len(), BLOCKS / 2, "every tool call went out");
    assert_eq!(
        starts.last().unwrap()["content_block"]["id"],
        format!("call_{:05}", BLOCKS - 1)
    );
}

#[test]
fn parallel_tool_calls_sharing_one_index_are_told_apart_by_id() {
    // Some OpenAI-compatible servers give every parallel call index 0, and
    // some repeat the id on every delta: both must come out right.
    let call = |id: Option<&str>, args: &str| {
        let mut c = json!({"index": 0, "function": {"arguments": args}});
        if let Some(id) = id {
            c["id"] = id.into();
            c["function"]["name"] = "f".into();
        }
        openai_chunk(json!({"tool_calls": [c]}), None)
    };
    let input = [
        call(Some("a"), "{\"x\":"),
        call(Some("a"), "1}"),
        call(Some("b"), "{}"),
        call(None, ""),
        openai_chunk(json!({}), Some("tool_calls")),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (r, out, _) = feed_all(Pair::MessagesToChat, &input);
    r.unwrap();
    let events = datas(&out);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .map(|e| &e["content_block"]["id"])
        .collect();
    assert_eq!(starts, [&json!("a"), &json!("b")]);
    let args: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e["delta"]["type"] == "input_json_delta")
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["delta"]["partial_json"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(args, [(0, "{\"x\":"), (0, "1}"), (1, "{}")]);
}

#[test]
fn an_event_over_the_cap_is_an_error_not_a_buffer() {
    let options = Options {
        event_cap: 16 * 1024,
        ..Options::default()
    };
    let mut t = Pair::ChatToMessages.stream(ctx(), &options);
    let mut out = BytesMut::new();
    t.feed(message_start().as_bytes(), &mut out).unwrap();
    let huge = format!("data: {}", "y".repeat(20 * 1024));
    let err = t.feed(huge.as_bytes(), &mut out).unwrap_err();
    assert_eq!(err, TranslateError::EventTooLarge { cap: 16 * 1024 });
    assert_eq!(err.into_error().reason(), Reason::UpstreamBadResponse);
    assert!(t.buffered() <= 4 * 16 * 1024);
}

#[test]
fn a_large_event_does_not_pin_its_buffer() {
    let mut t = Pair::ChatToMessages.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    t.feed(message_start().as_bytes(), &mut out).unwrap();
    for e in [
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "z".repeat(512 * 1024)}}),
    ] {
        t.feed(anthropic_event(e).as_bytes(), &mut out).unwrap();
    }
    assert!(out.len() > 512 * 1024, "the large delta went out");
    assert!(
        t.buffered() < 64 * 1024,
        "held {} after the event",
        t.buffered()
    );
}

// ------------------------------------------------------- known failure: nothing added

fn keys(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn nothing_is_added_that_the_client_did_not_send() {
    let o = Options::default();
    // OpenAI client → Anthropic: only what Anthropic requires (`max_tokens`).
    let t = Pair::ChatToMessages
        .request(
            br#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#,
            "c",
            &o,
        )
        .unwrap();
    assert_eq!(keys(&t.body), ["max_tokens", "messages", "model"]);
    let with_tools = br#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"stream":true,
        "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
        "parallel_tool_calls":true}"#;
    let t = Pair::ChatToMessages.request(with_tools, "c", &o).unwrap();
    assert_eq!(
        keys(&t.body),
        ["max_tokens", "messages", "model", "stream", "tools"]
    );
    // Anthropic client → OpenAI: exactly its fields; a stream adds only include_usage.
    let t = Pair::MessagesToChat
        .request(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#,
            "g",
            &o,
        )
        .unwrap();
    assert_eq!(keys(&t.body), ["max_tokens", "messages", "model"]);
    let t = Pair::MessagesToChat
        .request(
            br#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"Hi"}],
                "tools":[{"name":"f","input_schema":{"type":"object"}}]}"#,
            "g",
            &o,
        )
        .unwrap();
    assert_eq!(
        keys(&t.body),
        [
            "max_tokens",
            "messages",
            "model",
            "stream",
            "stream_options",
            "tools"
        ]
    );
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
    // Not even a prefill: the last message is the client's.
    assert_eq!(
        v["messages"].as_array().unwrap().last().unwrap()["role"],
        "user"
    );
}

#[test]
fn the_gateway_fallback_list_is_not_sent_upstream() {
    let o = Options::default();
    for (pair, body) in [
        (
            Pair::ChatToMessages,
            &br#"{"model":"a","models":["a","b"],"messages":[{"role":"user","content":"q"}]}"#[..],
        ),
        (
            Pair::MessagesToChat,
            br#"{"model":"a","models":["a","b"],"max_tokens":3,"messages":[{"role":"user","content":"q"}]}"#,
        ),
    ] {
        let t = pair.request(body, "u", &o).unwrap();
        assert!(!keys(&t.body).contains(&"models".to_owned()));
    }
}

// ------------------------------------------------------- known failure: refusals name the field

#[test]
fn an_untranslatable_field_is_refused_by_name() {
    let user = r#"[{"role":"user","content":"Hi"}]"#;
    let chat = |extra: &str| format!(r#"{{"model":"m","messages":{user}{extra}}}"#);
    let cases: Vec<(Pair, String, &str)> = vec![
        (Pair::ChatToMessages, chat(r#","n":2"#), "n"),
        (Pair::ChatToMessages, chat(r#","logprobs":true"#), "logprobs"),
        (Pair::ChatToMessages, chat(r#","seed":7"#), "seed"),
        (Pair::ChatToMessages, chat(r#","audio":{"voice":"x"}"#), "audio"),
        (Pair::ChatToMessages, chat(r#","presence_penalty":0.5"#), "presence_penalty"),
        (
            Pair::ChatToMessages,
            chat(r#","response_format":{"type":"json_schema","json_schema":{}}"#),
            "response_format",
        ),
        (Pair::ChatToMessages, chat(r#","temperature":1.5"#), "temperature"),
        (Pair::ChatToMessages, chat(r#","max_tokens":10,"max_completion_tokens":20"#), "max_tokens"),
        (Pair::ChatToMessages, chat(r#","max_tokens":1000,"reasoning_effort":"high""#), "reasoning_effort"),
        (Pair::ChatToMessages, chat(r#","stream_options":{"continuous_usage_stats":true}"#), "stream_options.continuous_usage_stats"),
        (
            Pair::ChatToMessages,
            chat(r#","tools":[{"type":"function","function":{"name":"f","strict":true}}]"#),
            "tools[0].function.strict",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#.into(),
            "messages[0].content[0].type",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"high"}}]}]}"#.into(),
            "messages[0].content[0].image_url.detail",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"system","content":"b"}]}"#.into(),
            "messages[1].role",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"user","name":"bob","content":"a"}]}"#.into(),
            "messages[0].name",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#.into(),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"top_k":5,"messages":[]}"#.into(),
            "top_k",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"service_tier":"auto","messages":[]}"#.into(),
            "service_tier",
        ),
        (Pair::MessagesToChat, r#"{"model":"m","messages":[]}"#.into(), "max_tokens"),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"metadata":{"team":"x"},"messages":[]}"#.into(),
            "metadata.team",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"thinking":{"type":"adaptive"},"messages":[]}"#.into(),
            "thinking.type",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"tools":[{"type":"web_search_20250305","name":"web_search"}],"messages":[]}"#.into(),
            "tools[0].type",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"a","cache_control":{"type":"ephemeral"}}]}]}"#.into(),
            "messages[0].content[0].cache_control",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"document","source":{}}]}]}"#.into(),
            "messages[0].content[0].type",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"file","file_id":"f"}}]}]}"#.into(),
            "messages[0].content[0].source.type",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"q"},{"role":"assistant","content":[{"type":"thinking","thinking":"t","signature":"EqQB"},{"type":"text","text":"a"}]}]}"#.into(),
            "messages[1].content[0].signature",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"redacted_thinking","data":"x"}]}]}"#.into(),
            "messages[0].content[0].type",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"tool_result","tool_use_id":"t"}]}]}"#.into(),
            "messages[0].content[1]",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":[{"type":"image","source":{}}]}]}]}"#.into(),
            "messages[0].content[0].content[0].type",
        ),
    ];
    for (pair, body, param) in cases {
        let err = pair
            .request(body.as_bytes(), "upstream", &Options::default())
            .expect_err(&body);
        assert_eq!(err.reason(), Reason::InvalidRequest, "{body}");
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            err.metadata().get("param"),
            Some(&json!(param)),
            "{body}: {}",
            err.message()
        );
        assert!(err.message().contains(param), "{}", err.message());
    }
}

#[test]
fn cache_control_is_dropped_only_when_the_options_say_so() {
    let body = br#"{"model":"m","max_tokens":5,"tools":[{"name":"f","input_schema":{"type":"object"},"cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"q"}]}"#;
    let err = Pair::MessagesToChat
        .request(body, "g", &Options::default())
        .unwrap_err();
    assert_eq!(err.metadata()["param"], "tools[0].cache_control");
    let options = Options {
        drop_cache_control: true,
        ..Options::default()
    };
    let t = Pair::MessagesToChat.request(body, "g", &options).unwrap();
    assert!(!String::from_utf8_lossy(&t.body).contains("cache_control"));
}

#[test]
fn reasoning_effort_maps_to_a_thinking_budget_below_max_tokens() {
    let o = Options::default();
    let req = |extra: &str| {
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"q"}}]{extra}}}"#);
        let t = Pair::ChatToMessages
            .request(body.as_bytes(), "c", &o)
            .unwrap();
        serde_json::from_slice::<Value>(&t.body).unwrap()["thinking"].clone()
    };
    assert_eq!(
        req(r#","reasoning_effort":"low""#),
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    // The default max_tokens (4096) caps "high" (16384) at 4095.
    assert_eq!(
        req(r#","reasoning_effort":"high""#),
        json!({"type": "enabled", "budget_tokens": 4095})
    );
    assert_eq!(
        req(r#","reasoning_effort":"none""#),
        json!({"type": "disabled"})
    );
    assert_eq!(req(""), Value::Null);
    // And back: the bands invert the budgets.
    for (effort, budget) in chat_to_messages::EFFORT_BUDGETS {
        let expect = if effort == "minimal" { "low" } else { effort };
        assert_eq!(messages_to_chat::effort_for(budget), expect);
    }
}

// ------------------------------------------------------- known failure: garbage is an error

#[test]
fn garbage_or_forbidden_sequences_from_an_anthropic_upstream_are_errors() {
    let start = message_start();
    let text_start = anthropic_event(json!({"type": "content_block_start", "index": 0,
        "content_block": {"type": "text", "text": ""}}));
    let stop = anthropic_event(json!({"type": "message_stop"}));
    let cases = [
        format!("{start}event: content_block_delta\ndata: <html>502 Bad Gateway</html>\n\n"),
        format!("{start}data: [1,2]\n\n"),
        // A delta for a block never started.
        format!(
            "{start}{}",
            anthropic_event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "x"}}))
        ),
        // A delta whose text is not a string.
        format!(
            "{start}{text_start}{}",
            anthropic_event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": 5}}))
        ),
        // A delta without its text.
        format!(
            "{start}{text_start}{}",
            anthropic_event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta"}}))
        ),
        // A block before message_start.
        text_start.clone(),
        // A second block while one is open.
        format!(
            "{start}{text_start}{}",
            anthropic_event(json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "text", "text": ""}}))
        ),
        // A delta type that does not belong to its block.
        format!(
            "{start}{text_start}{}",
            anthropic_event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": "{"}}))
        ),
        // message_stop without a stop_reason.
        format!("{start}{stop}"),
        // An event name that contradicts its data.
        "event: message_stop\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\n"
            .into(),
        // An unknown stop reason.
        format!(
            "{start}{}",
            anthropic_event(json!({"type": "message_delta", "delta": {"stop_reason": "bogus"}}))
        ),
    ];
    for input in cases {
        let (r, out, _) = feed_all(Pair::ChatToMessages, &input);
        let err = r.expect_err(&input);
        assert!(
            matches!(err, TranslateError::BadResponse(_)),
            "{input}: {err:?}"
        );
        assert_eq!(err.into_error().reason(), Reason::UpstreamBadResponse);
        let out = String::from_utf8_lossy(&out);
        assert!(
            !out.contains("html") && !out.contains("[1,2]"),
            "garbage forwarded: {out}"
        );
    }
}

#[test]
fn garbage_or_forbidden_sequences_from_an_openai_upstream_are_errors() {
    let role = openai_chunk(json!({"role": "assistant", "content": ""}), None);
    let finish = openai_chunk(json!({}), Some("stop"));
    let cases = [
        format!("{role}data: not json\n\n"),
        // Arguments for a tool call never started.
        format!(
            "{role}{}",
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
                None
            )
        ),
        // Going back to an earlier tool call.
        format!(
            "{role}{}{}{}",
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]}),
                None
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "f", "arguments": ""}}]}),
                None
            ),
            openai_chunk(
                json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}),
                None
            ),
        ),
        // [DONE] before any finish_reason.
        format!("{role}data: [DONE]\n\n"),
        // Data after [DONE].
        format!("{role}{finish}data: [DONE]\n\n{role}"),
        // Content after the finish reason.
        format!(
            "{role}{finish}{}",
            openai_chunk(json!({"content": "late"}), None)
        ),
        // A second choice (n > 1 was refused).
        format!(
            "{role}data: {}\n\n",
            json!({"id": "c", "choices": [{"index": 1, "delta": {"content": "x"}}]})
        ),
        format!("{role}{}", openai_chunk(json!({}), Some("sideways"))),
    ];
    for input in cases {
        let (r, out, _) = feed_all(Pair::MessagesToChat, &input);
        let err = r.expect_err(&input);
        assert!(
            matches!(err, TranslateError::BadResponse(_)),
            "{input}: {err:?}"
        );
        assert_eq!(err.into_error().reason(), Reason::UpstreamBadResponse);
        assert!(!String::from_utf8_lossy(&out).contains("not json"));
    }
}

#[test]
fn a_cut_stream_is_an_error_in_both_directions() {
    let anthropic = [
        message_start(),
        anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}})),
        anthropic_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "par"}})),
    ]
    .concat();
    let openai = [
        openai_chunk(json!({"role": "assistant", "content": "par"}), None),
        openai_chunk(json!({}), Some("stop")),
    ]
    .concat();
    for (pair, input) in [
        (Pair::ChatToMessages, anthropic),
        (Pair::MessagesToChat, openai),
    ] {
        let (r, _, t) = feed_all(pair, &input);
        assert_eq!(r, Err(TranslateError::Truncated));
        assert_eq!(
            TranslateError::Truncated.into_error().reason(),
            Reason::UpstreamStreamCut
        );
        assert!(t.committed(), "content had been sent: no retry may follow");
    }
    // An empty answer is cut too.
    for pair in [Pair::ChatToMessages, Pair::MessagesToChat] {
        assert_eq!(feed_all(pair, "").0, Err(TranslateError::Truncated));
    }
}

#[test]
fn an_upstream_error_event_carries_its_type_and_message() {
    let input = format!(
        "{}{}",
        message_start(),
        anthropic_event(json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    );
    let err = feed_all(Pair::ChatToMessages, &input).0.unwrap_err();
    assert_eq!(
        err,
        TranslateError::Upstream {
            kind: "overloaded_error".into(),
            message: "Overloaded".into()
        }
    );
    let e = err.into_error();
    assert_eq!(e.reason(), Reason::UpstreamUnavailable);
    assert_eq!(e.metadata()["upstream_type"], "overloaded_error");
    assert!(e.message().contains("Overloaded"));

    let input = format!(
        "{}data: {}\n\n",
        openai_chunk(json!({"role": "assistant", "content": "x"}), None),
        json!({"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded", "code": 429}})
    );
    let err = feed_all(Pair::MessagesToChat, &input).0.unwrap_err();
    assert_eq!(
        err.clone().into_error().reason(),
        Reason::UpstreamRateLimited
    );
    assert!(
        matches!(err, TranslateError::Upstream { message, .. } if message == "Rate limit reached")
    );

    // In a whole answer too.
    let body =
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}});
    let err = Pair::ChatToMessages
        .response(body.to_string().as_bytes(), &ctx())
        .unwrap_err();
    assert_eq!(err.into_error().reason(), Reason::UpstreamRateLimited);
}

#[test]
fn bad_whole_answers_are_errors() {
    for (pair, body) in [
        (Pair::ChatToMessages, "<html>"),
        (
            Pair::ChatToMessages,
            r#"{"type":"message","id":"m","content":[{"type":"server_tool_use"}],"stop_reason":"end_turn"}"#,
        ),
        (
            Pair::ChatToMessages,
            r#"{"type":"message","id":"m","content":[]}"#,
        ),
        (Pair::MessagesToChat, r#"{"choices":[]}"#),
        (
            Pair::MessagesToChat,
            r#"{"choices":[{"message":{"content":"a"},"finish_reason":"stop"},{"message":{"content":"b"},"finish_reason":"stop"}]}"#,
        ),
        (
            Pair::MessagesToChat,
            r#"{"choices":[{"message":{"tool_calls":[{"id":"1","function":{"name":"f","arguments":"{cut"}}]},"finish_reason":"length"}]}"#,
        ),
    ] {
        let err = pair.response(body.as_bytes(), &ctx()).expect_err(body);
        assert_eq!(
            err.into_error().reason(),
            Reason::UpstreamBadResponse,
            "{body}"
        );
    }
}

// ------------------------------------------------------- commit point

#[test]
fn the_commit_point_is_the_first_content_event() {
    // Anthropic → OpenAI: message_start and a ping commit nothing; an empty
    // text block start neither; the first text does.
    let mut t = Pair::ChatToMessages.stream(ctx(), &Options::default());
    let mut out = BytesMut::new();
    t.feed(message_start().as_bytes(), &mut out).unwrap();
    t.feed(b"event: ping\ndata: {\"type\":\"ping\"}\n\n", &mut out)
        .unwrap();
    t.feed(
        anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}))
        .as_bytes(),
        &mut out,
    )
    .unwrap();
    assert!(!t.committed());
    assert_eq!(
        t.usage(),
        Some(Usage {
            input_tokens: 12,
            output_tokens: 1,
            ..Usage::default()
        })
    );
    t.feed(
        anthropic_event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "x"}}))
        .as_bytes(),
        &mut out,
    )
    .unwrap();
    assert!(t.committed());

    // OpenAI → Anthropic: the role-only chunk commits nothing; a tool call does.
    let mut t = Pair::MessagesToChat.stream(ctx(), &Options::default());
    t.feed(
        openai_chunk(json!({"role": "assistant", "content": ""}), None).as_bytes(),
        &mut out,
    )
    .unwrap();
    assert!(!t.committed());
    t.feed(
        openai_chunk(
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]}),
            None,
        )
        .as_bytes(),
        &mut out,
    )
    .unwrap();
    assert!(t.committed());
}

#[test]
fn the_usage_chunk_is_sent_only_when_the_client_asked() {
    let input = [
        message_start(),
        anthropic_event(
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2}}),
        ),
        anthropic_event(json!({"type": "message_stop"})),
    ]
    .concat();
    for asked in [false, true] {
        let mut t = Pair::ChatToMessages.stream(ctx().include_usage(asked), &Options::default());
        let mut out = BytesMut::new();
        t.feed(input.as_bytes(), &mut out).unwrap();
        t.finish(&mut out).unwrap();
        let chunks = datas(&out);
        let usage_chunks = chunks.iter().filter(|c| c.get("usage").is_some()).count();
        assert_eq!(usage_chunks, usize::from(asked));
        assert_eq!(chunks.last().unwrap(), "[DONE]");
        // The gateway meters either way.
        assert_eq!(t.usage().unwrap().output_tokens, 2);
    }
    // And the request says whether it was asked.
    let t = Pair::ChatToMessages
        .request(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"q"}]}"#,
            "c",
            &Options::default(),
        )
        .unwrap();
    assert!(t.include_usage && t.stream);
}

/// A text delta exactly as Anthropic writes it takes the fast path, which
/// copies the text's JSON literal; the output is byte for byte what the
/// general reader writes for the same event spelled another way, and a
/// delta the fast path cannot vouch for (a bad escape, a raw control byte,
/// another block) gets the general reader's verdict.
#[test]
fn a_text_delta_as_anthropic_writes_it_is_copied_as_the_general_reader_writes_it() {
    let texts = [
        "",
        "Hello",
        "quote \" backslash \\ newline \n tab \t nul \u{0} unicode é😀 \u{2028}",
        &"long text ".repeat(40),
    ];
    let stream = |delta: &dyn Fn(&str) -> String| {
        let mut s = message_start();
        s += &anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}));
        for t in texts {
            s += &delta(t);
        }
        s += &anthropic_event(json!({"type": "content_block_stop", "index": 0}));
        s += &anthropic_event(json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}));
        s += &anthropic_event(json!({"type": "message_stop"}));
        s
    };
    let canonical = |t: &str| {
        format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
            serde_json::to_string(t).unwrap()
        )
    };
    let spaced = |t: &str| {
        format!(
            "event: content_block_delta\ndata: {{\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {{\"type\": \"text_delta\", \"text\": {}}}}}\n\n",
            serde_json::to_string(t).unwrap()
        )
    };
    let data = |event: String| event.split_once("data: ").unwrap().1.trim_end().to_owned();
    assert!(chat_to_messages::raw_delta(data(canonical("x")).as_bytes()).is_some());
    assert!(chat_to_messages::raw_delta(data(spaced("x")).as_bytes()).is_none());
    let (fast, fast_out, _) = feed_all(Pair::ChatToMessages, &stream(&canonical));
    let (slow, slow_out, _) = feed_all(Pair::ChatToMessages, &stream(&spaced));
    fast.unwrap();
    slow.unwrap();
    assert_eq!(
        String::from_utf8(fast_out.to_vec()).unwrap(),
        String::from_utf8(slow_out.to_vec()).unwrap()
    );
    let text: String = datas(&fast_out)
        .iter()
        .filter_map(|d| d["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, texts.concat());

    // The same for a tool's input.
    let tool_stream = |spelled: &dyn Fn(&str) -> String| {
        let mut s = message_start();
        s += &anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}));
        for part in ["", "{\"city\": ", "\"Par\\\"is\"}"] {
            s += &spelled(part);
        }
        s += &anthropic_event(json!({"type": "content_block_stop", "index": 0}));
        s += &anthropic_event(json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}));
        s += &anthropic_event(json!({"type": "message_stop"}));
        s
    };
    let canonical = |t: &str| {
        format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}\n\n",
            serde_json::to_string(t).unwrap()
        )
    };
    let spaced = |t: &str| {
        format!(
            "event: content_block_delta\ndata: {{\"index\":0,\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}\n\n",
            serde_json::to_string(t).unwrap()
        )
    };
    assert!(chat_to_messages::raw_delta(data(canonical("x")).as_bytes()).is_some());
    assert!(chat_to_messages::raw_delta(data(spaced("x")).as_bytes()).is_none());
    let (fast, fast_out, _) = feed_all(Pair::ChatToMessages, &tool_stream(&canonical));
    let (slow, slow_out, _) = feed_all(Pair::ChatToMessages, &tool_stream(&spaced));
    fast.unwrap();
    slow.unwrap();
    assert_eq!(fast_out, slow_out);
    let arguments: String = datas(&fast_out)
        .iter()
        .filter_map(|d| d["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"city\": \"Par\\\"is\"}");

    // What the fast path refuses to vouch for is the general reader's to judge.
    for (data, valid) in [
        (
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\qb"}}"#,
            false,
        ),
        (
            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\u{1}b\"}}",
            false,
        ),
        (
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\ud800"}}"#,
            false,
        ),
        (
            r#"{"type":"content_block_delta","index":00,"delta":{"type":"text_delta","text":"a"}}"#,
            false,
        ),
        (
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"a"}}"#,
            false,
        ),
    ] {
        assert!(
            chat_to_messages::raw_delta(data.as_bytes()).is_none() || data.contains("\"index\":1"),
            "{data}"
        );
        let mut s = message_start();
        s += &anthropic_event(json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}));
        s += &format!("event: content_block_delta\ndata: {data}\n\n");
        let mut t = Pair::ChatToMessages.stream(ctx(), &Options::default());
        let mut out = BytesMut::new();
        assert_eq!(t.feed(s.as_bytes(), &mut out).is_ok(), valid, "{data}");
    }
}

/// A plain text chunk as OpenAI writes it takes the fast path to an
/// Anthropic client; the events are byte for byte what the general reader
/// writes for the same chunks spelled another way, and a chunk that carries
/// anything more (usage, an error, an escape outside the text) is left to
/// the general reader.
#[test]
fn a_text_chunk_as_openai_writes_it_is_copied_as_the_general_reader_writes_it() {
    let texts = [
        "Hello",
        "",
        "quote \" backslash \\ newline \n nul \u{0} unicode é😀",
        &"long text ".repeat(40),
    ];
    let canonical = |t: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"system_fingerprint\":\"fp_1\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null,\"obfuscation\":\"Kx3\"}}\n\n",
            serde_json::to_string(t).unwrap()
        )
    };
    let stream = |spelled: &dyn Fn(&str) -> String| {
        let mut s = openai_chunk(json!({"role": "assistant", "content": ""}), None);
        for t in texts {
            s += &spelled(t);
        }
        s += &openai_chunk(json!({}), Some("stop"));
        s += "data: [DONE]\n\n";
        s
    };
    let spaced = |t: &str| openai_chunk(json!({ "content": t }), None);
    let data = |event: String| event.split_once("data: ").unwrap().1.trim_end().to_owned();
    assert!(messages_to_chat::raw_delta(data(canonical("x")).as_bytes()).is_some());
    assert!(messages_to_chat::raw_delta(data(spaced("x")).as_bytes()).is_none());
    let (fast, fast_out, _) = feed_all(Pair::MessagesToChat, &stream(&canonical));
    let (slow, slow_out, _) = feed_all(Pair::MessagesToChat, &stream(&spaced));
    fast.unwrap();
    slow.unwrap();
    assert_eq!(
        String::from_utf8(fast_out.to_vec()).unwrap(),
        String::from_utf8(slow_out.to_vec()).unwrap()
    );
    let text: String = datas(&fast_out)
        .iter()
        .filter_map(|d| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, texts.concat());

    // The same for a tool call's arguments.
    let parts = ["", "{\"city\": ", "\"Par\\\"is\"}"];
    let tool_stream = |spelled: &dyn Fn(&str) -> String| {
        let mut s = openai_chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
            None,
        );
        for p in parts {
            s += &spelled(p);
        }
        s += &openai_chunk(json!({}), Some("tool_calls"));
        s += "data: [DONE]\n\n";
        s
    };
    let canonical = |t: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-x\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{}}}}}]}},\"finish_reason\":null}}]}}\n\n",
            serde_json::to_string(t).unwrap()
        )
    };
    let spaced = |t: &str| {
        openai_chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": t}}]}),
            None,
        )
    };
    assert!(matches!(
        messages_to_chat::raw_delta(data(canonical("x")).as_bytes()),
        Some(messages_to_chat::RawDelta::Arguments(0, b"\"x\""))
    ));
    assert!(messages_to_chat::raw_delta(data(spaced("x")).as_bytes()).is_none());
    let (fast, fast_out, _) = feed_all(Pair::MessagesToChat, &tool_stream(&canonical));
    let (slow, slow_out, _) = feed_all(Pair::MessagesToChat, &tool_stream(&spaced));
    fast.unwrap();
    slow.unwrap();
    assert_eq!(fast_out, slow_out);
    let arguments: String = datas(&fast_out)
        .iter()
        .filter_map(|d| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(arguments, parts.concat());
    // Arguments for a call that is not the open one go to the general reader, which refuses them.
    let stray = canonical("x").replace("\"index\":0,\"function\"", "\"index\":3,\"function\"");
    assert!(matches!(
        messages_to_chat::raw_delta(data(stray.clone()).as_bytes()),
        Some(messages_to_chat::RawDelta::Arguments(3, _))
    ));
    let mut s = tool_stream(&canonical);
    let last = s
        .rfind("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1")
        .unwrap();
    s.insert_str(last, &stray);
    assert!(feed_all(Pair::MessagesToChat, &s).0.is_err());

    let choices =
        r#""choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]"#;
    for refused in [
        format!(r#"{{"id":"c","usage":{{"prompt_tokens":3}},{choices}}}"#),
        format!(r#"{{"id":"c",{choices},"usage":{{"prompt_tokens":3}}}}"#),
        format!(r#"{{"id":"c","error":{{"message":"x"}},{choices}}}"#),
        format!(r#"{{"id":"c\u0022,{choices}}}"#),
        format!(r#"{{"id":"c",{choices},"choices":[]}}"#),
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a\qb"},"logprobs":null,"finish_reason":null}]}"#.to_owned(),
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":"stop"}]}"#.to_owned(),
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi","role":"assistant"},"logprobs":null,"finish_reason":null}]}"#.to_owned(),
    ] {
        assert!(
            messages_to_chat::raw_delta(refused.as_bytes()).is_none(),
            "{refused}"
        );
    }
    assert!(
        messages_to_chat::raw_delta(format!(r#"{{"id":"c",{choices},"usage":null}}"#).as_bytes())
            .is_some()
    );
}

// ------------------------------------------------------- borrowed reading

/// The request readers copy strings and sub-objects as the JSON text they
/// came in: escapes, unicode, numbers as written, schemas and tool inputs
/// mean on arrival what they meant, both ways.
#[test]
fn strings_and_sub_objects_are_copied_as_they_came_and_mean_the_same() {
    let o = Options::default();
    let chat = br#"{"model":"m","temperature":0.50,"top_p":1e-1,"messages":[
        {"role":"system","content":"sys \"q\" \u00e9 \ud83d\ude00 \/"},
        {"role":"user","content":[{"type":"text","text":"a\nb"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AA\/A"}}]},
        {"role":"assistant","content":"x","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"k\": [1, 2.5e3, \"\\u00e9\"]}"}}]},
        {"role":"tool","tool_call_id":"c1","content":"r"}],
        "tools":[{"type":"function","function":{"name":"f","description":"d\te","parameters":{"type":"object","properties":{"k":{"type":"array","maxItems":1e2}}}}}]}"#;
    let t = Pair::ChatToMessages.request(chat, "c", &o).unwrap();
    let got: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(got["system"], "sys \"q\" é 😀 /");
    assert_eq!(got["temperature"], json!(0.5));
    assert_eq!(got["top_p"], json!(0.1));
    assert_eq!(got["messages"][0]["content"][0]["text"], "a\nb");
    assert_eq!(
        got["messages"][0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "AA/A"})
    );
    assert_eq!(
        got["messages"][1]["content"][1]["input"],
        json!({"k": [1, 2500.0, "é"]})
    );
    assert_eq!(got["tools"][0]["description"], "d\te");
    assert_eq!(
        got["tools"][0]["input_schema"]["properties"]["k"]["maxItems"],
        json!(100.0)
    );

    // And back: the Anthropic request this made, translated to an OpenAI one.
    let mut anthropic = got.clone();
    anthropic["model"] = json!("m");
    let t = Pair::MessagesToChat
        .request(&serde_json::to_vec(&anthropic).unwrap(), "g", &o)
        .unwrap();
    let back: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(
        back["messages"][0],
        json!({"role": "system", "content": "sys \"q\" é 😀 /"})
    );
    assert_eq!(
        back["messages"][1]["content"],
        json!([{"type": "text", "text": "a\nb"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA/A"}}])
    );
    let args = back["messages"][2]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"k": [1, 2500.0, "é"]})
    );
    assert_eq!(
        back["messages"][3],
        json!({"role": "tool", "tool_call_id": "c1", "content": "r"})
    );
    assert_eq!(
        back["tools"][0]["function"]["parameters"],
        got["tools"][0]["input_schema"]
    );
}

/// A key given twice counts once, with its last value, and the first
/// refusal is the first unknown key in key order: what the `serde_json::Map`
/// these readers replace did.
#[test]
fn a_repeated_key_counts_once_with_its_last_value() {
    let o = Options::default();
    let t = Pair::ChatToMessages
        .request(
            br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a","content":"b"}],"stream":false}"#,
            "c",
            &o,
        )
        .unwrap();
    assert!(!t.stream);
    let got: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(got["messages"][0]["content"], "b");
    let err = Pair::ChatToMessages
        .request(
            br#"{"model":"m","seed":1,"messages":[],"logit_bias":{"1":2}}"#,
            "c",
            &o,
        )
        .unwrap_err();
    assert_eq!(err.metadata()["param"], "logit_bias");
    let err = Pair::MessagesToChat
        .request(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"text","text":"a","z":1,"citations":[]}]}]}"#,
            "g",
            &o,
        )
        .unwrap_err();
    assert_eq!(err.metadata()["param"], "messages[0].content[0].citations");
}

/// What a `serde_json::Value` could not hold (a lone surrogate escape, a
/// number out of range) is never copied on: the client's request is
/// refused with a 400, the upstream's answer is a bad response.
#[test]
fn what_a_tree_could_not_hold_is_not_copied() {
    let o = Options::default();
    for (pair, body) in [
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"user","content":"\ud800"}]}"#,
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"a\udc00"}]}"#,
        ),
    ] {
        let err = pair.request(body.as_bytes(), "u", &o).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidJson, "{body}");
    }
    for (pair, body, param) in [
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[],"top_p":1e400}"#,
            "top_p",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":{"maximum":1e400}}}]}"#,
            "tools[0].function.parameters",
        ),
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{\"a\":\"\\ud800\"}"}}]}]}"#,
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"assistant","content":[{"type":"tool_use","id":"1","name":"f","input":{"a":-1e999}}]}]}"#,
            "messages[0].content[0].input",
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":5,"messages":[],"tools":[{"name":"f","input_schema":{"minimum":1e400}}]}"#,
            "tools[0].input_schema",
        ),
    ] {
        let err = pair.request(body.as_bytes(), "u", &o).unwrap_err();
        assert_eq!(err.reason(), Reason::InvalidRequest, "{body}");
        assert_eq!(err.metadata()["param"], param, "{body}");
    }
    for (pair, body) in [
        (
            Pair::ChatToMessages,
            r#"{"type":"message","id":"m","content":[{"type":"text","text":"\ud800"}],"stop_reason":"end_turn"}"#,
        ),
        (
            Pair::ChatToMessages,
            r#"{"type":"message","id":"m","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":1e400}}],"stop_reason":"tool_use"}"#,
        ),
        (
            Pair::MessagesToChat,
            r#"{"choices":[{"message":{"tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"a\":\"\\udfff\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        ),
    ] {
        let err = pair.response(body.as_bytes(), &ctx()).unwrap_err();
        assert_eq!(
            err.into_error().reason(),
            Reason::UpstreamBadResponse,
            "{body}"
        );
    }
}

/// A user turn of one image block stays an image part (a lone text block
/// becomes a plain string; an image never does).
#[test]
fn a_lone_image_block_goes_on_as_an_image_part() {
    let t = Pair::MessagesToChat
        .request(
            br#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]}]}"#,
            "g",
            &Options::default(),
        )
        .unwrap();
    let got: Value = serde_json::from_slice(&t.body).unwrap();
    assert_eq!(
        got["messages"][0]["content"],
        json!([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])
    );
}

/// The provider's entry for a body the request scanner already accepted
/// translates exactly as the validating one.
#[test]
fn a_scanned_body_translates_as_an_unscanned_one() {
    let o = Options::default();
    for (pair, body) in [
        (
            Pair::ChatToMessages,
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"q \"x\" \u00e9"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"stream":true}"#,
        ),
        (
            Pair::MessagesToChat,
            r#"{"model":"m","max_tokens":9,"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":[{"type":"text","text":"a\\b"}]},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"k":[1,2]}}]}]}"#,
        ),
    ] {
        crate::read_request::scan::scan(body.as_bytes()).unwrap();
        let a = pair.request(body.as_bytes(), "u", &o).unwrap();
        let b = pair.request_scanned(body.as_bytes(), "u", &o).unwrap();
        assert_eq!(a.body, b.body, "{body}");
    }
}
