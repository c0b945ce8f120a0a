//! Golden fixtures of the OpenAI Chat ↔ Anthropic Messages translators
//! (`tests/fixtures/translate/*.json`, format in its README), and property
//! tests over them: any split of a stream's bytes gives the same output,
//! and a stream translated event by event says what the translation of the
//! same answer whole says.

use std::sync::LazyLock;

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tollgate::translate::{
    OpenAiMaxTokens, Options, Pair, ResponseContext, SseDecoder, StreamTranslator, Usage,
};

const CREATED: u64 = 1_700_000_000;

struct Fixture {
    name: String,
    pair: Pair,
    kind: String,
    model: String,
    options: Options,
    include_usage: bool,
    input: Value,
    expected: Value,
    raw: Value,
}

static FIXTURES: LazyLock<Vec<Fixture>> = LazyLock::new(|| {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/translate");
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|path| {
            let raw: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let mut options = Options::default();
            if let Some(o) = raw.get("options") {
                if let Some(n) = o.get("default_max_tokens").and_then(Value::as_u64) {
                    options.default_max_tokens = n;
                }
                if o.get("openai_max_tokens") == Some(&json!("max_completion_tokens")) {
                    options.openai_max_tokens = OpenAiMaxTokens::MaxCompletionTokens;
                }
                if let Some(b) = o.get("drop_cache_control").and_then(Value::as_bool) {
                    options.drop_cache_control = b;
                }
            }
            Fixture {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                pair: match raw["pair"].as_str().unwrap() {
                    "chat_to_messages" => Pair::ChatToMessages,
                    "messages_to_chat" => Pair::MessagesToChat,
                    other => panic!("unknown pair {other}"),
                },
                kind: raw["kind"].as_str().unwrap().to_owned(),
                model: raw["model"].as_str().unwrap().to_owned(),
                options,
                include_usage: raw.get("include_usage") == Some(&json!(true)),
                input: raw["input"].clone(),
                expected: raw["expected"].clone(),
                raw,
            }
        })
        .collect()
});

fn streams() -> Vec<&'static Fixture> {
    FIXTURES.iter().filter(|f| f.kind == "stream").collect()
}

fn ctx(f: &Fixture) -> ResponseContext {
    ResponseContext::new(&f.model, CREATED).include_usage(f.include_usage)
}

fn usage_json(u: Option<Usage>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => json!({
            "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cache_read_input_tokens": u.cache_read_tokens,
            "cache_creation_input_tokens": u.cache_creation_tokens,
        }),
    }
}

/// A stream fixture's input as SSE bytes.
fn sse(events: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events.as_array().unwrap() {
        if let Some(name) = e.get("event").and_then(Value::as_str) {
            out.extend_from_slice(format!("event: {name}\n").as_bytes());
        }
        let data = match &e["data"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.extend_from_slice(format!("data: {data}\n\n").as_bytes());
    }
    out
}

/// SSE bytes back into `[{event?, data}]` (data parsed unless `[DONE]`).
fn events(bytes: &[u8]) -> Vec<Value> {
    let mut d = SseDecoder::new(usize::MAX);
    let mut got = Vec::new();
    let mut push = |e: tollgate::translate::SseEvent<'_>| {
        let data = match e.data {
            b"[DONE]" => json!("[DONE]"),
            d => serde_json::from_slice(d).expect("translator output is JSON"),
        };
        let mut ev = Map::new();
        if !e.name.is_empty() {
            ev.insert("event".into(), e.name.into());
        }
        ev.insert("data".into(), data);
        got.push(Value::Object(ev));
        Ok(())
    };
    d.feed(bytes, &mut push).unwrap();
    d.finish(&mut push).unwrap();
    got
}

/// Runs a stream through a translator in the given pieces.
fn run(f: &Fixture, pieces: &[&[u8]]) -> (Vec<u8>, StreamTranslator) {
    let mut t = f.pair.stream(ctx(f), &f.options);
    let mut out = BytesMut::new();
    for p in pieces {
        t.feed(p, &mut out)
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
    }
    t.finish(&mut out)
        .unwrap_or_else(|e| panic!("{}: {e}", f.name));
    (out.to_vec(), t)
}

#[test]
fn golden_fixtures() {
    let mut seen = std::collections::HashMap::<(String, Pair), usize>::new();
    for f in FIXTURES.iter() {
        *seen.entry((f.kind.clone(), f.pair)).or_default() += 1;
        match f.kind.as_str() {
            "request" => {
                let body = serde_json::to_vec(&f.input).unwrap();
                let t = f
                    .pair
                    .request(&body, &f.model, &f.options)
                    .unwrap_or_else(|e| panic!("{}: {}", f.name, e.message()));
                let got: Value = serde_json::from_slice(&t.body).unwrap();
                assert_eq!(got, f.expected, "{}", f.name);
                assert_eq!(t.stream, f.raw["stream"] == json!(true), "{}", f.name);
                assert_eq!(t.include_usage, f.include_usage, "{}", f.name);
            }
            "response" => {
                let body = serde_json::to_vec(&f.input).unwrap();
                let t = f
                    .pair
                    .response(&body, &ctx(f))
                    .unwrap_or_else(|e| panic!("{}: {e}", f.name));
                let got: Value = serde_json::from_slice(&t.body).unwrap();
                assert_eq!(got, f.expected, "{}", f.name);
                assert_eq!(usage_json(t.usage), f.raw["usage"], "{}", f.name);
            }
            "stream" => {
                let input = sse(&f.input);
                let (out, t) = run(f, &[&input]);
                assert_eq!(Value::Array(events(&out)), f.expected, "{}", f.name);
                assert_eq!(usage_json(t.usage()), f.raw["usage"], "{}", f.name);
                assert!(t.committed(), "{}", f.name);
            }
            other => panic!("{}: unknown kind {other}", f.name),
        }
    }
    // Both directions of every kind are covered.
    for kind in ["request", "response", "stream"] {
        for pair in [Pair::ChatToMessages, Pair::MessagesToChat] {
            assert!(
                seen.get(&(kind.to_owned(), pair)).copied().unwrap_or(0) >= 3,
                "too few {kind} fixtures for {pair:?}"
            );
        }
    }
}

// ------------------------------------------------------------ whole vs stream

/// Folds Anthropic stream events into the whole message they describe.
fn fold_anthropic(events: &[Value]) -> Value {
    let mut message = Value::Null;
    let mut blocks: Vec<Value> = Vec::new();
    let mut json_parts: Vec<String> = Vec::new();
    for e in events {
        let d = &e["data"];
        match d["type"].as_str().unwrap() {
            "message_start" => message = d["message"].clone(),
            "content_block_start" => {
                blocks.push(d["content_block"].clone());
                json_parts.push(String::new());
            }
            "content_block_delta" => {
                let i = d["index"].as_u64().unwrap() as usize;
                let delta = &d["delta"];
                let b = &mut blocks[i];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => {
                        b["text"] = (b["text"].as_str().unwrap().to_owned()
                            + delta["text"].as_str().unwrap())
                        .into()
                    }
                    "thinking_delta" => {
                        b["thinking"] = (b["thinking"].as_str().unwrap().to_owned()
                            + delta["thinking"].as_str().unwrap())
                        .into()
                    }
                    "signature_delta" => b["signature"] = delta["signature"].clone(),
                    "input_json_delta" => {
                        json_parts[i].push_str(delta["partial_json"].as_str().unwrap())
                    }
                    other => panic!("delta {other}"),
                }
            }
            "content_block_stop" => {
                let i = d["index"].as_u64().unwrap() as usize;
                if blocks[i]["type"] == "tool_use" && !json_parts[i].is_empty() {
                    blocks[i]["input"] = serde_json::from_str(&json_parts[i]).unwrap();
                }
            }
            "message_delta" => {
                message["stop_reason"] = d["delta"]["stop_reason"].clone();
                for (k, v) in d["usage"].as_object().unwrap() {
                    message["usage"][k] = v.clone();
                }
            }
            _ => {}
        }
    }
    message["content"] = blocks.into();
    message
}

/// Folds OpenAI chunks into the whole completion they describe.
fn fold_openai(events: &[Value]) -> Value {
    let mut id = Value::Null;
    let (mut content, mut reasoning, mut refusal): (
        Option<String>,
        Option<String>,
        Option<String>,
    ) = (None, None, None);
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = Value::Null;
    let mut usage = Value::Null;
    for e in events {
        let d = &e["data"];
        if d == "[DONE]" {
            continue;
        }
        id = d["id"].clone();
        if d.get("usage").is_some_and(|u| u.is_object()) {
            usage = d["usage"].clone();
        }
        for c in d["choices"].as_array().unwrap() {
            let delta = &c["delta"];
            for (key, acc) in [
                ("content", &mut content),
                ("reasoning_content", &mut reasoning),
                ("refusal", &mut refusal),
            ] {
                if let Some(s) = delta
                    .get(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    acc.get_or_insert_with(String::new).push_str(s);
                }
            }
            for tc in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = tc["index"].as_u64().unwrap() as usize;
                if i == calls.len() {
                    calls.push(json!({"id": tc["id"], "type": "function",
                        "function": {"name": tc["function"]["name"], "arguments": ""}}));
                }
                if let Some(a) = tc["function"].get("arguments").and_then(Value::as_str) {
                    let args = calls[i]["function"]["arguments"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                        + a;
                    calls[i]["function"]["arguments"] = args.into();
                }
            }
            if !c["finish_reason"].is_null() {
                finish = c["finish_reason"].clone();
            }
        }
    }
    let mut message = json!({"role": "assistant", "content": content, "refusal": refusal});
    if let Some(r) = reasoning {
        message["reasoning_content"] = r.into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    let mut whole = json!({"id": id, "object": "chat.completion", "created": CREATED,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}]});
    if !usage.is_null() {
        whole["usage"] = usage;
    }
    whole
}

/// Tool arguments compared as JSON, not as text (spacing may differ).
fn normalize(mut v: Value) -> Value {
    if let Some(calls) = v
        .pointer_mut("/choices/0/message/tool_calls")
        .and_then(Value::as_array_mut)
    {
        for c in calls {
            let args = c["function"]["arguments"].as_str().unwrap();
            c["function"]["arguments"] = serde_json::from_str::<Value>(args).unwrap_or(json!({}));
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("model");
    }
    v
}

#[test]
fn a_translated_stream_says_what_the_translated_whole_answer_says() {
    for f in streams() {
        let input_events = f.input.as_array().unwrap();
        let (out, _) = run(f, &[&sse(&f.input)]);
        let out_events = events(&out);
        match f.pair {
            Pair::ChatToMessages => {
                // Anthropic in: fold the input into one message, translate it whole.
                let whole = fold_anthropic(input_events);
                let mut expected: Value = serde_json::from_slice(
                    &f.pair
                        .response(whole.to_string().as_bytes(), &ctx(f))
                        .unwrap()
                        .body,
                )
                .unwrap();
                if !f.include_usage {
                    expected.as_object_mut().unwrap().remove("usage");
                }
                assert_eq!(
                    normalize(fold_openai(&out_events)),
                    normalize(expected),
                    "{}",
                    f.name
                );
            }
            Pair::MessagesToChat => {
                let whole = fold_openai(input_events);
                let expected: Value = serde_json::from_slice(
                    &f.pair
                        .response(whole.to_string().as_bytes(), &ctx(f))
                        .unwrap()
                        .body,
                )
                .unwrap();
                let mut got = fold_anthropic(&out_events);
                // The stream's usage names only what it knows; the whole answer all four fields.
                for k in [
                    "input_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                ] {
                    if got["usage"].get(k).is_none() {
                        got["usage"][k] = 0.into();
                    }
                }
                assert_eq!(got, expected, "{}", f.name);
            }
            _ => unreachable!(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any split of the upstream's bytes into chunks gives the same output,
    /// usage and commit point as the unsplit stream.
    #[test]
    fn any_split_of_a_stream_gives_the_same_output(
        which in 0..64usize,
        cuts in prop::collection::vec(0..4096usize, 0..24),
    ) {
        let all = streams();
        let f = all[which % all.len()];
        let input = sse(&f.input);
        let (whole, t_whole) = run(f, &[&input]);
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for p in points {
            pieces.push(&input[from..p]);
            from = p;
        }
        pieces.push(&input[from..]);
        let (split, t_split) = run(f, &pieces);
        prop_assert_eq!(split, whole);
        prop_assert_eq!(t_split.usage(), t_whole.usage());
        prop_assert_eq!(t_split.committed(), t_whole.committed());
    }
}
