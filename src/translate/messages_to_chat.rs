//! An Anthropic Messages client served by an OpenAI-compatible Chat
//! Completions upstream: the request goes Anthropic → OpenAI, the answer
//! and the stream come back OpenAI → Anthropic.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::sse::{Obj, SseEvent, write_event, write_json};
use super::{
    OpenAiMaxTokens, Options, Progress, ResponseContext, TranslateError, Translated,
    TranslatedRequest, Usage, bad, parse_event, tokens,
};
use crate::error::Error;

// ---------------------------------------------------------------- request

/// Translates an Anthropic Messages request into a Chat Completions request.
pub(super) fn request(
    req: Map<String, Value>,
    model: &str,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    let mut out = Map::new();
    out.insert("model".into(), model.into());
    let mut stream = false;
    let mut system = None;
    let mut messages = None;
    let mut max_tokens = None;
    for (key, value) in req {
        if value.is_null() || super::GATEWAY_FIELDS.contains(&key.as_str()) {
            continue; // a null field is an absent one; the gateway's own are not the upstream's
        }
        match key.as_str() {
            "model" => {}
            "messages" => messages = Some(value),
            "system" => system = Some(value),
            "max_tokens" => {
                max_tokens = Some(
                    value
                        .as_u64()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("max_tokens", "must be a positive integer"))?,
                )
            }
            "stream" => {
                stream = value
                    .as_bool()
                    .ok_or_else(|| bad("stream", "must be a boolean"))?;
                if stream {
                    // What metering needs: the upstream's own count of the stream.
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
                out.insert(key, value);
            }
            "temperature" | "top_p" => {
                if !value.is_number() {
                    return Err(bad(&key, "must be a number"));
                }
                out.insert(key, value);
            }
            "stop_sequences" => {
                if !value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string))
                {
                    return Err(bad("stop_sequences", "must be an array of strings"));
                }
                out.insert("stop".into(), value);
            }
            "metadata" => {
                let Value::Object(m) = value else {
                    return Err(bad("metadata", "must be an object"));
                };
                for (k, v) in m {
                    match (k.as_str(), v) {
                        (_, Value::Null) => {}
                        ("user_id", Value::String(user)) => {
                            out.insert("user".into(), user.into());
                        }
                        ("user_id", _) => return Err(bad("metadata.user_id", "must be a string")),
                        _ => return Err(untranslatable(&format!("metadata.{k}"))),
                    }
                }
            }
            "tools" => {
                out.insert("tools".into(), Value::Array(tools(value, options)?));
            }
            "tool_choice" => {
                let (choice, parallel) = tool_choice(value)?;
                out.insert("tool_choice".into(), choice);
                if let Some(p) = parallel {
                    out.insert("parallel_tool_calls".into(), p.into());
                }
            }
            "thinking" => {
                if let Some(effort) = thinking(&value)? {
                    out.insert("reasoning_effort".into(), effort.into());
                }
            }
            _ => return Err(untranslatable(&key)),
        }
    }
    let max = max_tokens.ok_or_else(|| bad("max_tokens", "is required"))?;
    let field = match options.openai_max_tokens {
        OpenAiMaxTokens::MaxTokens => "max_tokens",
        OpenAiMaxTokens::MaxCompletionTokens => "max_completion_tokens",
    };
    out.insert(field.into(), max.into());

    let mut chat = Vec::new();
    if let Some(system) = system {
        let content = match system {
            Value::String(s) => Value::String(s),
            Value::Array(blocks) => {
                let parts = blocks
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| text_block(b, &format!("system[{i}]"), options))
                    .collect::<Result<Vec<_>, _>>()?;
                one_or_parts(parts)
            }
            _ => return Err(bad("system", "must be a string or an array of text blocks")),
        };
        chat.push(json!({"role": "system", "content": content}));
    }
    let Some(Value::Array(messages)) = messages else {
        return Err(bad("messages", "must be an array"));
    };
    for (i, message) in messages.into_iter().enumerate() {
        turn(message, &format!("messages[{i}]"), options, &mut chat)?;
    }
    out.insert("messages".into(), Value::Array(chat));

    Ok(TranslatedRequest {
        body: super::sse::to_bytes(&out),
        stream,
        include_usage: false,
    })
}

fn untranslatable(param: &str) -> Error {
    bad(
        param,
        "has no OpenAI Chat Completions counterpart and cannot be translated; remove it or use an Anthropic deployment",
    )
}

/// Refuses any key of `m` outside `allowed`; `cache_control` is removed
/// instead when the options say so.
fn only_keys(
    m: &mut Map<String, Value>,
    at: &str,
    allowed: &[&str],
    options: &Options,
) -> Result<(), Error> {
    if options.drop_cache_control {
        m.remove("cache_control");
    }
    match m
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(untranslatable(&format!("{at}.{k}"))),
        None => Ok(()),
    }
}

/// One text part or a string: a lone text part becomes a plain string.
fn one_or_parts(mut parts: Vec<Value>) -> Value {
    if parts.len() == 1 {
        parts.swap_remove(0)["text"].take()
    } else {
        Value::Array(parts)
    }
}

/// An Anthropic `text` block → an OpenAI text part.
fn text_block(block: Value, at: &str, options: &Options) -> Result<Value, Error> {
    let Value::Object(mut b) = block else {
        return Err(bad(at, "must be an object"));
    };
    if b.get("type") != Some(&json!("text")) {
        return Err(kind_refused(&b, at));
    }
    only_keys(&mut b, at, &["type", "text"], options)?;
    let text = b
        .get("text")
        .filter(|t| t.is_string())
        .ok_or_else(|| bad(&format!("{at}.text"), "must be a string"))?;
    Ok(json!({"type": "text", "text": text}))
}

fn kind_refused(b: &Map<String, Value>, at: &str) -> Error {
    let kind = b.get("type").and_then(Value::as_str).unwrap_or("?");
    bad(
        &format!("{at}.type"),
        format!("`{kind}` blocks have no OpenAI Chat Completions counterpart here"),
    )
}

/// One Anthropic turn → one or more Chat messages (a user turn's
/// `tool_result` blocks become `tool` messages, before its other content).
fn turn(message: Value, at: &str, options: &Options, chat: &mut Vec<Value>) -> Result<(), Error> {
    let Value::Object(mut m) = message else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(&mut m, at, &["role", "content"], options)?;
    let role = match m.remove("role") {
        Some(Value::String(r)) => r,
        _ => String::new(),
    };
    let content = m.remove("content").unwrap_or(Value::Null);
    match (role.as_str(), content) {
        ("user" | "assistant", Value::String(s)) => {
            chat.push(json!({"role": role, "content": s}));
        }
        ("user", Value::Array(blocks)) => {
            let mut parts = Vec::new();
            for (j, block) in blocks.into_iter().enumerate() {
                let bat = format!("{at}.content[{j}]");
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_result") => {
                        if !parts.is_empty() {
                            return Err(bad(
                                &bat,
                                "a tool_result after other content cannot keep its place in OpenAI's order",
                            ));
                        }
                        chat.push(tool_result(block, &bat, options)?);
                    }
                    Some("image") => parts.push(image(block, &bat, options)?),
                    _ => parts.push(text_block(block, &bat, options)?),
                }
            }
            if !parts.is_empty() {
                chat.push(json!({"role": "user", "content": one_or_parts(parts)}));
            }
        }
        ("assistant", Value::Array(blocks)) => {
            let mut texts = Vec::new();
            let mut reasoning: Option<String> = None;
            let mut calls = Vec::new();
            for (j, block) in blocks.into_iter().enumerate() {
                let bat = format!("{at}.content[{j}]");
                let Value::Object(mut b) = block else {
                    return Err(bad(&bat, "must be an object"));
                };
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        only_keys(&mut b, &bat, &["type", "id", "name", "input"], options)?;
                        let (Some(id), Some(name)) = (
                            b.get("id").filter(|v| v.is_string()),
                            b.get("name").filter(|v| v.is_string()),
                        ) else {
                            return Err(bad(&bat, "a tool_use block needs `id` and `name`"));
                        };
                        let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                        calls.push(json!({
                            "id": id,
                            "type": "function",
                            "function": {"name": name, "arguments": serde_json::to_string(&input).unwrap_or_default()},
                        }));
                    }
                    Some("thinking") => {
                        only_keys(&mut b, &bat, &["type", "thinking", "signature"], options)?;
                        // Only an unsigned block (one this gateway made from an
                        // OpenAI upstream's reasoning) can go back as reasoning text;
                        // a signed one would lose what Anthropic verifies.
                        if b.get("signature")
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                        {
                            return Err(bad(
                                &format!("{bat}.signature"),
                                "a signed thinking block can only go back to an Anthropic upstream",
                            ));
                        }
                        let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
                        reasoning.get_or_insert_with(String::new).push_str(text);
                    }
                    _ => texts.push(text_block(Value::Object(b), &bat, options)?),
                }
            }
            let mut message = json!({"role": "assistant"});
            message["content"] = if texts.is_empty() {
                Value::Null
            } else {
                one_or_parts(texts)
            };
            if let Some(r) = reasoning {
                message["reasoning_content"] = r.into();
            }
            if !calls.is_empty() {
                message["tool_calls"] = calls.into();
            }
            chat.push(message);
        }
        ("user" | "assistant", _) => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or an array",
            ));
        }
        _ => return Err(bad(&format!("{at}.role"), "must be `user` or `assistant`")),
    }
    Ok(())
}

/// A `tool_result` block → a `tool` message. `is_error` has no OpenAI
/// counterpart: the result's text (which states the error) is carried alone.
fn tool_result(block: Value, at: &str, options: &Options) -> Result<Value, Error> {
    let Value::Object(mut b) = block else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(
        &mut b,
        at,
        &["type", "tool_use_id", "content", "is_error"],
        options,
    )?;
    let id = b
        .get("tool_use_id")
        .filter(|v| v.is_string())
        .ok_or_else(|| bad(&format!("{at}.tool_use_id"), "is required"))?
        .clone();
    let content = match b.remove("content") {
        None | Some(Value::Null) => Value::String(String::new()),
        Some(Value::String(s)) => Value::String(s),
        Some(Value::Array(blocks)) => {
            let parts = blocks
                .into_iter()
                .enumerate()
                .map(|(k, blk)| text_block(blk, &format!("{at}.content[{k}]"), options))
                .collect::<Result<Vec<_>, _>>()?;
            if parts.is_empty() {
                Value::String(String::new())
            } else {
                one_or_parts(parts)
            }
        }
        Some(_) => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or an array",
            ));
        }
    };
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}

/// An Anthropic `image` block → an OpenAI `image_url` part.
fn image(block: Value, at: &str, options: &Options) -> Result<Value, Error> {
    let Value::Object(mut b) = block else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(&mut b, at, &["type", "source"], options)?;
    let Some(Value::Object(src)) = b.get("source") else {
        return Err(bad(&format!("{at}.source"), "is required"));
    };
    let sat = format!("{at}.source");
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let (Some(media), Some(data)) = (
                src.get("media_type").and_then(Value::as_str),
                src.get("data").and_then(Value::as_str),
            ) else {
                return Err(bad(&sat, "a base64 source needs `media_type` and `data`"));
            };
            format!("data:{media};base64,{data}")
        }
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{sat}.url"), "is required"))?
            .to_owned(),
        _ => return Err(untranslatable(&format!("{sat}.type"))),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// Anthropic custom tools → OpenAI function tools; server tools are refused.
fn tools(tools: Value, options: &Options) -> Result<Vec<Value>, Error> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "must be an array"));
    };
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            let Value::Object(mut t) = tool else {
                return Err(bad(&at, "must be an object"));
            };
            if t.get("type").is_some_and(|k| !k.is_null() && k != "custom") {
                return Err(untranslatable(&format!("{at}.type")));
            }
            only_keys(
                &mut t,
                &at,
                &["type", "name", "description", "input_schema"],
                options,
            )?;
            let name = t
                .get("name")
                .filter(|n| n.is_string())
                .ok_or_else(|| bad(&format!("{at}.name"), "is required"))?;
            let schema = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad(&format!("{at}.input_schema"), "is required"))?;
            let mut function = json!({"name": name, "parameters": schema});
            if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                function["description"] = d.clone();
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect()
}

/// Anthropic's `tool_choice` → OpenAI's, and `parallel_tool_calls: false`
/// for `disable_parallel_tool_use: true`.
fn tool_choice(value: Value) -> Result<(Value, Option<bool>), Error> {
    let Value::Object(c) = value else {
        return Err(bad("tool_choice", "must be an object"));
    };
    if let Some((k, _)) = c.iter().find(|(k, v)| {
        !v.is_null() && !["type", "name", "disable_parallel_tool_use"].contains(&k.as_str())
    }) {
        return Err(untranslatable(&format!("tool_choice.{k}")));
    }
    let choice = match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name", "is required"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(bad("tool_choice.type", "must be auto, any, tool or none")),
    };
    let parallel = match c.get("disable_parallel_tool_use") {
        Some(Value::Bool(true)) => Some(false),
        _ => None,
    };
    Ok((choice, parallel))
}

/// Anthropic's `thinking` → OpenAI's `reasoning_effort` (by budget band),
/// or nothing when disabled.
fn thinking(value: &Value) -> Result<Option<&'static str>, Error> {
    match value.get("type").and_then(Value::as_str) {
        Some("disabled") => Ok(None),
        Some("enabled") => {
            let budget = value
                .get("budget_tokens")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("thinking.budget_tokens", "must be a positive integer"))?;
            Ok(Some(effort_for(budget)))
        }
        _ => Err(untranslatable("thinking.type")),
    }
}

/// The `reasoning_effort` band of a thinking budget: up to 2048 `low`, up
/// to 8192 `medium`, above `high` (the inverse of the budgets sent the other way).
pub(super) fn effort_for(budget: u64) -> &'static str {
    match budget {
        0..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

// ---------------------------------------------------------------- answer

/// OpenAI's `finish_reason` → Anthropic's `stop_reason`.
fn stop_reason(finish: &str) -> Result<&'static str, TranslateError> {
    Ok(match finish {
        "stop" => "end_turn",
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        other => {
            return Err(TranslateError::bad(format!(
                "unknown finish_reason `{other}`"
            )));
        }
    })
}

/// Reads an OpenAI `usage` object into Anthropic's partition.
fn read_usage(u: &Value) -> Usage {
    let prompt = tokens(u.get("prompt_tokens"));
    let cached = tokens(
        u.get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens")),
    )
    .min(prompt);
    Usage {
        input_tokens: prompt - cached,
        output_tokens: tokens(u.get("completion_tokens")),
        cache_read_tokens: cached,
        cache_creation_tokens: 0,
    }
}

fn upstream_error(e: &Value) -> TranslateError {
    let field = |k: &str| match e.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let kind = match field("type") {
        t if t.is_empty() => field("code"),
        t => t,
    };
    TranslateError::Upstream {
        kind,
        message: field("message"),
    }
}

/// The reasoning text of a message or delta (`reasoning_content` as
/// DeepSeek and vLLM send it, or `reasoning`).
fn reasoning_of(m: &Value) -> Option<&str> {
    m.get("reasoning_content")
        .and_then(Value::as_str)
        .or_else(|| m.get("reasoning").and_then(Value::as_str))
}

/// Translates a whole Chat Completions answer into an Anthropic message.
pub(super) fn response(v: &Value, ctx: &ResponseContext) -> Result<Translated, TranslateError> {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Err(upstream_error(e));
    }
    let id = v.get("id").and_then(Value::as_str).unwrap_or("");
    let choice = match v
        .get("choices")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([one]) => one,
        _ => {
            return Err(TranslateError::bad(
                "the answer must have exactly one choice",
            ));
        }
    };
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| TranslateError::bad("the choice has no message"))?;
    let reasoning = reasoning_of(message).filter(|r| !r.is_empty());
    let mut texts = Vec::with_capacity(2);
    for key in ["content", "refusal"] {
        match message.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(Value::String(s)) => texts.push(s.as_str()),
            Some(_) => {
                return Err(TranslateError::bad(format!(
                    "`message.{key}` is not a string"
                )));
            }
        }
    }
    let mut calls = Vec::new();
    if let Some(list) = message.get("tool_calls").filter(|c| !c.is_null()) {
        let list = list
            .as_array()
            .ok_or_else(|| TranslateError::bad("`tool_calls` is not an array"))?;
        for call in list {
            let f = call.get("function");
            let (Some(id), Some(name)) = (
                call.get("id").and_then(Value::as_str),
                f.and_then(|f| f.get("name")).and_then(Value::as_str),
            ) else {
                return Err(TranslateError::bad("a tool call without `id` or `name`"));
            };
            let args = f
                .and_then(|f| f.get("arguments"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let input: Value = if args.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(args)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| {
                        TranslateError::bad("a tool call's arguments are not a JSON object")
                    })?
            };
            calls.push((id, name, input));
        }
    }
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::bad("`finish_reason` is missing"))?;
    let stop = stop_reason(finish)?;
    let usage = v.get("usage").filter(|u| u.is_object()).map(read_usage);
    // Written as it is read, without building the answer as a tree.
    let mut out = BytesMut::with_capacity(
        320 + reasoning.map_or(0, str::len) + texts.iter().map(|t| t.len() + 32).sum::<usize>(),
    );
    let mut body = Obj::new(&mut out);
    body.field("id", id)
        .field("type", "message")
        .field("role", "assistant")
        .field("model", &*ctx.model);
    let content = body.key("content");
    content.put_u8(b'[');
    let mut first = true;
    let mut block = |content: &mut BytesMut, fill: &dyn Fn(&mut Obj<'_>)| {
        if !std::mem::take(&mut first) {
            content.put_u8(b',');
        }
        let mut o = Obj::new(content);
        fill(&mut o);
        o.end();
    };
    if let Some(r) = reasoning {
        block(content, &|o| {
            o.field("type", "thinking")
                .field("thinking", r)
                .field("signature", "");
        });
    }
    for text in &texts {
        block(content, &|o| {
            o.field("type", "text").field("text", *text);
        });
    }
    for (id, name, input) in &calls {
        block(content, &|o| {
            o.field("type", "tool_use")
                .field("id", *id)
                .field("name", *name)
                .field("input", input);
        });
    }
    content.put_u8(b']');
    body.field("stop_reason", stop)
        .field("stop_sequence", &Value::Null)
        .object("usage", |u| usage.unwrap_or_default().write_anthropic(u));
    body.end();
    Ok(Translated {
        body: out.freeze(),
        usage,
    })
}

// ---------------------------------------------------------------- stream

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
    /// A tool call, by its OpenAI `tool_calls[].index`.
    Tool(u64),
}

/// What a chunk that carries nothing but one delta holds, its text as its
/// JSON string literal, quotes included, validated (escapes, control
/// bytes, UTF-8) so that it can be copied as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RawDelta<'a> {
    /// `"delta":{"content":"…"}`.
    Text(&'a [u8]),
    /// `"delta":{"tool_calls":[{"index":N,"function":{"arguments":"…"}}]}`:
    /// more arguments of the call at `N` (no id, no name: not a new call).
    Arguments(u64, &'a [u8]),
}

/// A chunk that carries nothing but one text or tool-argument delta,
/// spelled as OpenAI and the servers that copy it write it:
/// `…"choices":[{"index":0,"delta":{"content":"…"},"logprobs":null,"finish_reason":null}]…`
/// (`"logprobs":null` may be left out; or the `tool_calls` delta above).
/// Around it, the chunk's other fields (`id`, `object`, `created`,
/// `model`, `system_fingerprint`, `obfuscation`, …) are skipped, so they
/// must hold no escape (no key can hide behind one), no `"choices"` or
/// `"error"`, and no `"usage"` but `"usage":null`. `None` otherwise: the
/// general reader decides.
pub(super) fn raw_delta(data: &[u8]) -> Option<RawDelta<'_>> {
    use memchr::memmem::Finder;
    static AT: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(br#""choices":[{"index":0,"delta":{""#));
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
    if data.first() != Some(&b'{') || data.last() != Some(&b'}') {
        return None;
    }
    let at = AT.find(data)?;
    let rest = &data[at + AT.needle().len()..];
    let (delta, rest, close) = if let Some(r) = rest.strip_prefix(br#"content":"#) {
        (None, r, b"}".as_slice())
    } else {
        let r = rest.strip_prefix(br#"tool_calls":[{"index":"#)?;
        let digits = r.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 || (digits > 1 && r[0] == b'0') {
            return None;
        }
        let index = r[..digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        let r = r[digits..].strip_prefix(br#","function":{"arguments":"#)?;
        (Some(index), r, b"}}]}".as_slice())
    };
    let (len, _) = crate::read_request::scan::string_len(rest)?;
    let (text, tail) = rest.split_at(len);
    let tail = tail.strip_prefix(close)?;
    // `logprobs` is OpenAI's; some servers leave it out.
    let tail = tail
        .strip_prefix(br#","logprobs":null,"finish_reason":null}]"#)
        .or_else(|| tail.strip_prefix(br#","finish_reason":null}]"#))?;
    let plain = |part: &[u8]| {
        memchr::memchr(b'\\', part).is_none()
            && memchr::memmem::find(part, b"\"choices\"").is_none()
            && memchr::memmem::find(part, b"\"error\"").is_none()
            && USAGE
                .find_iter(part)
                .all(|u| part[u + 7..].starts_with(b":null"))
    };
    (plain(&data[..at]) && plain(tail)).then_some(match delta {
        None => RawDelta::Text(text),
        Some(index) => RawDelta::Arguments(index, text),
    })
}

/// OpenAI chunks → Anthropic events. State: the open block, counters, the
/// finish reason and usage; never any content.
#[derive(Debug)]
pub(super) struct Stream {
    ctx: ResponseContext,
    started: bool,
    open: Open,
    /// The index of the next Anthropic content block.
    next_block: u64,
    /// The highest OpenAI tool-call index started so far.
    last_tool: Option<u64>,
    /// The id of the last tool call started (bounded by the event cap).
    tool_id: String,
    stop: Option<&'static str>,
    usage: Option<Usage>,
    done: bool,
}

impl Stream {
    pub(super) fn new(ctx: ResponseContext) -> Self {
        Stream {
            ctx,
            started: false,
            open: Open::None,
            next_block: 0,
            last_tool: None,
            tool_id: String::new(),
            stop: None,
            usage: None,
            done: false,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.tool_id.capacity()
    }

    pub(super) fn event(
        &mut self,
        event: SseEvent<'_>,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        if self.done {
            return Err(TranslateError::bad("data after `[DONE]`"));
        }
        if event.data.trim_ascii() == b"[DONE]" {
            if !self.started || self.stop.is_none() {
                return Err(TranslateError::bad("`[DONE]` before a finish_reason"));
            }
            self.done = true;
            return self.end(out);
        }
        // The hottest chunks, a plain text delta into the open text block
        // or more arguments of the open tool call: the text goes on as the
        // JSON literal it came in.
        if self.started && self.stop.is_none() {
            let (kind, field, text) = match raw_delta(event.data) {
                Some(RawDelta::Text(text)) if self.open == Open::Text => {
                    ("text_delta", "text", text)
                }
                Some(RawDelta::Arguments(index, text)) if self.open == Open::Tool(index) => {
                    ("input_json_delta", "partial_json", text)
                }
                _ => ("", "", b"".as_slice()),
            };
            if !kind.is_empty() {
                if text != b"\"\"" {
                    self.block_delta_with(out, kind, field, |out| out.extend_from_slice(text));
                }
                return Ok(());
            }
        }
        let chunk: Chunk<'_> = match serde_json::from_slice(event.data) {
            Ok(chunk) => chunk,
            // Not JSON at all, or JSON of another shape: say which.
            Err(_) => {
                parse_event(event.data)?;
                return Err(TranslateError::bad(
                    "a chunk does not have the Chat Completions shape",
                ));
            }
        };
        if let Some(e) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            return Err(upstream_error(e));
        }
        if !self.started {
            self.started = true;
            write_event(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": chunk.id.as_deref().unwrap_or(""), "type": "message", "role": "assistant",
                    "model": &*self.ctx.model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }}),
            );
        }
        if let Some(u) = chunk.usage.as_ref().filter(|u| u.is_object()) {
            let usage = read_usage(u);
            self.usage = Some(usage);
            progress.usage = Some(usage);
        }
        for choice in chunk.choices.iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                return Err(TranslateError::bad("a chunk for a second choice"));
            }
            if self.stop.is_some() {
                if choice.delta.as_ref().is_some_and(ChunkDelta::has_content) {
                    return Err(TranslateError::bad("content after the finish_reason"));
                }
                continue;
            }
            if let Some(delta) = &choice.delta {
                self.delta(delta, out, progress)?;
            }
            if let Some(finish) = &choice.finish_reason {
                self.close(out);
                self.stop = Some(stop_reason(finish)?);
            }
        }
        Ok(())
    }

    fn delta(
        &mut self,
        delta: &ChunkDelta<'_>,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        let reasoning = delta
            .reasoning_content
            .as_deref()
            .or(delta.reasoning.as_deref());
        if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
            self.ensure(Open::Thinking, out, progress);
            self.block_delta(out, "thinking_delta", "thinking", r);
        }
        for text in [&delta.content, &delta.refusal] {
            if let Some(t) = text.as_deref().filter(|t| !t.is_empty()) {
                self.ensure(Open::Text, out, progress);
                self.block_delta(out, "text_delta", "text", t);
            }
        }
        for call in delta.tool_calls.iter().flatten() {
            let index = call.index.unwrap_or(0);
            let f = call.function.as_ref();
            let id = call.id.as_deref().filter(|id| !id.is_empty());
            // Some servers repeat the id on every delta, some give parallel
            // calls one index and new ids: the id, when present, decides.
            let continues =
                self.open == Open::Tool(index) && id.is_none_or(|id| id == self.tool_id);
            if !continues {
                // A new tool call: it must say who it is, and come after the last one.
                let (Some(id), Some(name)) = (id, f.and_then(|f| f.name.as_deref())) else {
                    return Err(TranslateError::bad(format!(
                        "a tool call delta for call {index}, which was never started"
                    )));
                };
                if self
                    .last_tool
                    .is_some_and(|last| index < last || (index == last && id == self.tool_id))
                {
                    return Err(TranslateError::bad(format!(
                        "tool call {index} resumed after a later one began"
                    )));
                }
                self.close(out);
                write_event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": self.next_block,
                        "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                );
                self.open = Open::Tool(index);
                self.last_tool = Some(index);
                self.tool_id.clear();
                self.tool_id.push_str(id);
                progress.committed = true;
            }
            if let Some(args) = f
                .and_then(|f| f.arguments.as_deref())
                .filter(|a| !a.is_empty())
            {
                self.block_delta(out, "input_json_delta", "partial_json", args);
            }
        }
        Ok(())
    }

    /// Opens a text or thinking block unless it is the open one.
    fn ensure(&mut self, want: Open, out: &mut BytesMut, progress: &mut Progress) {
        if self.open == want {
            return;
        }
        self.close(out);
        let block = match want {
            Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        write_event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_block, "content_block": block}),
        );
        self.open = want;
        progress.committed = true;
    }

    /// Writes `content_block_delta` for the open block: `{"type": kind, field: text}`.
    fn block_delta(&self, out: &mut BytesMut, kind: &str, field: &str, text: &str) {
        self.block_delta_with(out, kind, field, |out| write_json(out, text));
    }

    /// [`block_delta`](Self::block_delta) with the text's JSON string written by `text`.
    fn block_delta_with(
        &self,
        out: &mut BytesMut,
        kind: &str,
        field: &str,
        text: impl FnOnce(&mut BytesMut),
    ) {
        let mut index = itoa::Buffer::new();
        out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        out.extend_from_slice(index.format(self.next_block).as_bytes());
        out.extend_from_slice(b",\"delta\":{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\":");
        text(out);
        out.extend_from_slice(b"}}\n\n");
    }

    fn close(&mut self, out: &mut BytesMut) {
        if self.open == Open::None {
            return;
        }
        write_event(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": self.next_block}),
        );
        self.open = Open::None;
        self.next_block += 1;
    }

    fn end(&mut self, out: &mut BytesMut) -> Result<(), TranslateError> {
        let usage = match &self.usage {
            Some(u) => u.anthropic(),
            None => json!({"output_tokens": 0}),
        };
        write_event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": self.stop, "stop_sequence": null},
                "usage": usage}),
        );
        write_event(out, "message_stop", &json!({"type": "message_stop"}));
        Ok(())
    }

    /// The upstream's stream ended: it must have ended with `[DONE]`.
    pub(super) fn finish(&self) -> Result<(), TranslateError> {
        if self.done {
            Ok(())
        } else {
            Err(TranslateError::Truncated)
        }
    }
}

/// A Chat Completions chunk, read without building a tree (strings borrowed
/// from the event unless escaped).
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDelta<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallDelta<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<FunctionDelta<'a>>,
}

#[derive(Deserialize)]
struct FunctionDelta<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

impl ChunkDelta<'_> {
    /// Whether the delta carries text, reasoning or tool calls.
    fn has_content(&self) -> bool {
        [
            &self.content,
            &self.refusal,
            &self.reasoning_content,
            &self.reasoning,
        ]
        .iter()
        .any(|t| t.as_deref().is_some_and(|s| !s.is_empty()))
            || self.tool_calls.as_ref().is_some_and(|c| !c.is_empty())
    }
}
