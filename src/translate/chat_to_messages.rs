//! An OpenAI Chat Completions client served by an Anthropic Messages
//! upstream: the request goes OpenAI → Anthropic, the answer and the stream
//! come back Anthropic → OpenAI.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::sse::{Obj, SseEvent, write_json, write_str};
use super::{
    Options, Progress, ResponseContext, TranslateError, Translated, TranslatedRequest, Usage, bad,
    parse_event, str_field, tokens,
};
use crate::error::Error;

/// Thinking budgets sent for OpenAI's `reasoning_effort`.
pub(super) const EFFORT_BUDGETS: [(&str, u64); 4] = [
    ("minimal", 1024),
    ("low", 2048),
    ("medium", 8192),
    ("high", 16384),
];
/// Anthropic's smallest thinking budget.
const MIN_BUDGET: u64 = 1024;

// ---------------------------------------------------------------- request

/// Translates an OpenAI Chat Completions request into an Anthropic Messages request.
pub(super) fn request(
    req: Map<String, Value>,
    model: &str,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    let mut out = Map::new();
    out.insert("model".into(), model.into());
    let mut stream = false;
    let mut include_usage = false;
    let (mut max_tokens, mut max_completion) = (None, None);
    let mut effort = None;
    let mut tool_choice = None;
    let mut parallel = None;
    let mut has_tools = false;
    let mut messages = None;
    for (key, value) in req {
        if value.is_null() || super::GATEWAY_FIELDS.contains(&key.as_str()) {
            continue; // a null field is an absent one; the gateway's own are not the upstream's
        }
        match key.as_str() {
            "model" => {}
            "messages" => messages = Some(value),
            "stream" => {
                stream = as_bool(&value, "stream")?;
                out.insert(key, value);
            }
            "stream_options" => {
                let Value::Object(o) = value else {
                    return Err(bad("stream_options", "must be an object"));
                };
                for (k, v) in o {
                    match k.as_str() {
                        "include_usage" => {
                            include_usage =
                                !v.is_null() && as_bool(&v, "stream_options.include_usage")?
                        }
                        _ => return Err(untranslatable(&format!("stream_options.{k}"))),
                    }
                }
            }
            "max_tokens" => max_tokens = Some(count(&value, "max_tokens")?),
            "max_completion_tokens" => {
                max_completion = Some(count(&value, "max_completion_tokens")?)
            }
            "temperature" => {
                let t = value
                    .as_f64()
                    .ok_or_else(|| bad("temperature", "must be a number"))?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(bad(
                        "temperature",
                        "Anthropic accepts 0 to 1; a temperature above 1 cannot be carried",
                    ));
                }
                out.insert(key, value);
            }
            "top_p" | "top_k" => {
                if !value.is_number() {
                    return Err(bad(&key, "must be a number"));
                }
                out.insert(key, value);
            }
            "stop" => {
                let list = match value {
                    Value::String(s) => vec![Value::String(s)],
                    Value::Array(a) if a.iter().all(Value::is_string) => a,
                    _ => return Err(bad("stop", "must be a string or an array of strings")),
                };
                out.insert("stop_sequences".into(), Value::Array(list));
            }
            "tools" => {
                let tools = tools(value)?;
                has_tools = !tools.is_empty();
                out.insert("tools".into(), Value::Array(tools));
            }
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => parallel = Some(as_bool(&value, "parallel_tool_calls")?),
            "user" => {
                let Value::String(user) = value else {
                    return Err(bad("user", "must be a string"));
                };
                out.insert("metadata".into(), json!({ "user_id": user }));
            }
            "reasoning_effort" => effort = Some(value),
            // Accepted only at the value that means "nothing asked".
            "n" if value == json!(1) => {}
            "logprobs" | "store" if value == Value::Bool(false) => {}
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            "response_format" if value == json!({"type": "text"}) => {}
            "modalities" if value == json!(["text"]) => {}
            _ => return Err(untranslatable(&key)),
        }
    }

    let messages = messages.ok_or_else(|| bad("messages", "is required"))?;
    let (system, messages) = self::messages(messages)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));

    let max = match (max_completion, max_tokens) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                "max_tokens",
                "differs from `max_completion_tokens`; send one of them",
            ));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => options.default_max_tokens,
    };
    out.insert("max_tokens".into(), max.into());

    if let Some(effort) = effort {
        let effort = effort
            .as_str()
            .ok_or_else(|| bad("reasoning_effort", "must be a string"))?;
        let thinking = if effort == "none" {
            json!({"type": "disabled"})
        } else {
            let budget = EFFORT_BUDGETS
                .iter()
                .find(|(name, _)| *name == effort)
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    bad(
                        "reasoning_effort",
                        format!("`{effort}` has no Anthropic thinking budget"),
                    )
                })?;
            // Anthropic's budget is part of `max_tokens` and must stay below it.
            let budget = budget.min(max.saturating_sub(1));
            if budget < MIN_BUDGET {
                return Err(bad(
                    "reasoning_effort",
                    format!(
                        "Anthropic thinking needs at least {MIN_BUDGET} tokens below `max_tokens` ({max})"
                    ),
                ));
            }
            json!({"type": "enabled", "budget_tokens": budget})
        };
        out.insert("thinking".into(), thinking);
    }

    let mut choice = match tool_choice {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "none" => json!({"type": "none"}),
            "required" => json!({"type": "any"}),
            _ => return Err(bad("tool_choice", format!("`{s}` is not a tool choice"))),
        }),
        Some(Value::Object(o)) => {
            let name = (o.get("type") == Some(&json!("function")))
                .then(|| {
                    o.get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                })
                .flatten()
                .ok_or_else(|| untranslatable("tool_choice"))?;
            Some(json!({"type": "tool", "name": name}))
        }
        Some(_) => return Err(bad("tool_choice", "must be a string or an object")),
    };
    if parallel == Some(false) && has_tools {
        // Anthropic carries "at most one tool call" on its tool choice; `auto`
        // is its default, so the choice added here means what the client asked.
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if c["type"] != "none" {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice);
    }

    Ok(TranslatedRequest {
        body: super::sse::to_bytes(&out),
        stream,
        include_usage: stream && include_usage,
    })
}

fn untranslatable(param: &str) -> Error {
    bad(
        param,
        "has no Anthropic Messages counterpart and cannot be translated; remove it or use an OpenAI-compatible deployment",
    )
}

fn as_bool(v: &Value, param: &str) -> Result<bool, Error> {
    v.as_bool().ok_or_else(|| bad(param, "must be a boolean"))
}

fn count(v: &Value, param: &str) -> Result<u64, Error> {
    v.as_u64()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(param, "must be a positive integer"))
}

/// Leading `system`/`developer` messages become the top-level `system`; the
/// rest become Anthropic turns (consecutive `tool` messages one user turn of
/// `tool_result` blocks).
fn messages(messages: Value) -> Result<(Option<Value>, Vec<Value>), Error> {
    let Value::Array(messages) = messages else {
        return Err(bad("messages", "must be an array"));
    };
    let mut system: Vec<Value> = Vec::new();
    let mut system_is_one_string = true;
    let mut out: Vec<Value> = Vec::new();
    let mut tool_turn: Vec<Value> = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(mut m) = message else {
            return Err(bad(&at, "must be an object"));
        };
        let role = m
            .remove("role")
            .and_then(|r| r.as_str().map(str::to_owned))
            .ok_or_else(|| bad(&format!("{at}.role"), "is required"))?;
        // Fields every role may carry at their empty value.
        for key in ["name", "refusal", "function_call", "audio"] {
            if m.get(key).is_some_and(|v| !v.is_null()) {
                return Err(untranslatable(&format!("{at}.{key}")));
            }
            m.remove(key);
        }
        if role != "tool" && !tool_turn.is_empty() {
            out.push(json!({"role": "user", "content": std::mem::take(&mut tool_turn)}));
        }
        match role.as_str() {
            "system" | "developer" => {
                if !out.is_empty() || !tool_turn.is_empty() {
                    return Err(bad(
                        &format!("{at}.role"),
                        "a system message after the conversation started has no place in Anthropic's top-level `system`",
                    ));
                }
                only_keys(&m, &at, &["content"])?;
                match m.remove("content") {
                    Some(Value::String(s)) => system.push(json!({"type": "text", "text": s})),
                    Some(c) => {
                        system_is_one_string = false;
                        system.extend(text_parts(c, &format!("{at}.content"))?);
                    }
                    None => return Err(bad(&format!("{at}.content"), "is required")),
                }
            }
            "user" => {
                only_keys(&m, &at, &["content"])?;
                let content = match m.remove("content") {
                    Some(Value::String(s)) => Value::String(s),
                    Some(Value::Array(parts)) => Value::Array(user_parts(parts, &at)?),
                    _ => {
                        return Err(bad(
                            &format!("{at}.content"),
                            "must be a string or an array",
                        ));
                    }
                };
                out.push(json!({"role": "user", "content": content}));
            }
            "assistant" => {
                only_keys(&m, &at, &["content", "tool_calls", "reasoning_content"])?;
                // An unsigned reasoning text cannot become an Anthropic thinking
                // block, and Anthropic ignores earlier turns' thinking anyway.
                m.remove("reasoning_content");
                let mut blocks = Vec::new();
                match m.remove("content") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => {
                        if !s.is_empty() {
                            blocks.push(json!({"type": "text", "text": s}));
                        }
                    }
                    Some(c) => blocks.extend(text_parts(c, &format!("{at}.content"))?),
                }
                let plain_text = blocks.len() == 1;
                match m.remove("tool_calls") {
                    None | Some(Value::Null) => {
                        if plain_text {
                            out.push(json!({"role": "assistant", "content": blocks[0]["text"]}));
                            continue;
                        }
                    }
                    Some(Value::Array(calls)) => {
                        for (j, call) in calls.into_iter().enumerate() {
                            blocks.push(tool_use(call, &format!("{at}.tool_calls[{j}]"))?);
                        }
                    }
                    Some(_) => return Err(bad(&format!("{at}.tool_calls"), "must be an array")),
                }
                out.push(json!({"role": "assistant", "content": blocks}));
            }
            "tool" => {
                only_keys(&m, &at, &["content", "tool_call_id"])?;
                let id = m
                    .remove("tool_call_id")
                    .filter(Value::is_string)
                    .ok_or_else(|| bad(&format!("{at}.tool_call_id"), "is required"))?;
                let content = match m.remove("content") {
                    Some(Value::String(s)) => Value::String(s),
                    Some(c) => Value::Array(text_parts(c, &format!("{at}.content"))?),
                    None => Value::String(String::new()),
                };
                tool_turn
                    .push(json!({"type": "tool_result", "tool_use_id": id, "content": content}));
            }
            other => {
                return Err(bad(
                    &format!("{at}.role"),
                    format!("`{other}` has no Anthropic counterpart"),
                ));
            }
        }
    }
    if !tool_turn.is_empty() {
        out.push(json!({"role": "user", "content": tool_turn}));
    }
    let system = match system.len() {
        0 => None,
        1 if system_is_one_string => Some(system.swap_remove(0)["text"].take()),
        _ => Some(Value::Array(system)),
    };
    Ok((system, out))
}

fn only_keys(m: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), Error> {
    match m
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(untranslatable(&format!("{at}.{k}"))),
        None => Ok(()),
    }
}

/// Content that may only hold text: a string or `text` parts → text blocks.
fn text_parts(content: Value, at: &str) -> Result<Vec<Value>, Error> {
    match content {
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| text_part(part, &format!("{at}[{j}]")))
            .collect(),
        _ => Err(bad(at, "must be a string or an array of text parts")),
    }
}

/// One `text` part → a text block; any other part type is refused by name.
fn text_part(part: Value, at: &str) -> Result<Value, Error> {
    let Value::Object(p) = part else {
        return Err(bad(at, "must be an object"));
    };
    match p.get("type").and_then(Value::as_str) {
        Some("text") => {
            only_keys(&p, at, &["type", "text"])?;
            let text = p
                .get("text")
                .filter(|t| t.is_string())
                .ok_or_else(|| bad(&format!("{at}.text"), "must be a string"))?;
            Ok(json!({"type": "text", "text": text}))
        }
        kind => Err(bad(
            &format!("{at}.type"),
            format!(
                "`{}` content parts have no Anthropic counterpart here",
                kind.unwrap_or("?")
            ),
        )),
    }
}

fn user_parts(parts: Vec<Value>, at: &str) -> Result<Vec<Value>, Error> {
    parts
        .into_iter()
        .enumerate()
        .map(|(j, part)| {
            let at = format!("{at}.content[{j}]");
            if part.get("type") == Some(&json!("image_url")) {
                image(part, &at)
            } else {
                text_part(part, &at)
            }
        })
        .collect()
}

/// An OpenAI `image_url` part → an Anthropic `image` block (base64 for a
/// `data:` URL, `url` for http(s)).
fn image(part: Value, at: &str) -> Result<Value, Error> {
    let Value::Object(p) = part else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(&p, at, &["type", "image_url"])?;
    let (url, detail) = match p.get("image_url") {
        Some(Value::String(u)) => (u.as_str(), None),
        Some(Value::Object(o)) => {
            only_keys(o, &format!("{at}.image_url"), &["url", "detail"])?;
            let url = o
                .get("url")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.image_url.url"), "is required"))?;
            (url, o.get("detail").and_then(Value::as_str))
        }
        _ => return Err(bad(&format!("{at}.image_url"), "is required")),
    };
    if detail.is_some_and(|d| d != "auto") {
        return Err(untranslatable(&format!("{at}.image_url.detail")));
    }
    if let Some(rest) = url.strip_prefix("data:") {
        let (media, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| bad(&format!("{at}.image_url.url"), "a data: URL must be base64"))?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}),
        );
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    Err(bad(
        &format!("{at}.image_url.url"),
        "must be a data: or http(s) URL",
    ))
}

/// An assistant's `tool_calls[j]` → a `tool_use` block.
fn tool_use(call: Value, at: &str) -> Result<Value, Error> {
    let Value::Object(c) = call else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(&c, at, &["id", "type", "function"])?;
    if c.get("type").is_some_and(|t| t != "function") {
        return Err(untranslatable(&format!("{at}.type")));
    }
    let id = c
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{at}.id"), "is required"))?;
    let f = c
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| bad(&format!("{at}.function"), "is required"))?;
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{at}.function.name"), "is required"))?;
    let args = f.get("arguments").and_then(Value::as_str).unwrap_or("");
    let input: Value = if args.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(args).map_err(|_| {
            bad(
                &format!("{at}.function.arguments"),
                "is not valid JSON; Anthropic's tool_use input must be an object",
            )
        })?
    };
    if !input.is_object() {
        return Err(bad(
            &format!("{at}.function.arguments"),
            "must encode a JSON object (Anthropic's tool_use input)",
        ));
    }
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

/// OpenAI function tools → Anthropic tools.
fn tools(tools: Value) -> Result<Vec<Value>, Error> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "must be an array"));
    };
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let at = format!("tools[{i}]");
            let Value::Object(t) = tool else {
                return Err(bad(&at, "must be an object"));
            };
            only_keys(&t, &at, &["type", "function"])?;
            if t.get("type") != Some(&json!("function")) {
                return Err(untranslatable(&format!("{at}.type")));
            }
            let Some(Value::Object(f)) = t.get("function") else {
                return Err(bad(&format!("{at}.function"), "is required"));
            };
            let fat = format!("{at}.function");
            only_keys(f, &fat, &["name", "description", "parameters", "strict"])?;
            if f.get("strict") == Some(&Value::Bool(true)) {
                return Err(untranslatable(&format!("{fat}.strict")));
            }
            let name = f
                .get("name")
                .filter(|n| n.is_string())
                .ok_or_else(|| bad(&format!("{fat}.name"), "is required"))?;
            let mut out = json!({
                "name": name,
                "input_schema": f.get("parameters").filter(|p| !p.is_null()).cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(d) = f.get("description").filter(|d| !d.is_null()) {
                out["description"] = d.clone();
            }
            Ok(out)
        })
        .collect()
}

// ---------------------------------------------------------------- answer

/// Anthropic's `stop_reason` → OpenAI's `finish_reason`.
pub(super) fn finish_reason(stop: &str) -> Result<&'static str, TranslateError> {
    Ok(match stop {
        "end_turn" | "stop_sequence" | "pause_turn" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => {
            return Err(TranslateError::bad(format!(
                "unknown Anthropic stop_reason `{other}`"
            )));
        }
    })
}

/// Reads an Anthropic `usage` object (missing fields count zero).
pub(super) fn read_usage(u: &Value, into: &mut Usage) {
    let get = |k: &str| u.get(k).filter(|v| !v.is_null());
    if let Some(v) = get("input_tokens") {
        into.input_tokens = tokens(Some(v));
    }
    if let Some(v) = get("output_tokens") {
        into.output_tokens = tokens(Some(v));
    }
    if let Some(v) = get("cache_read_input_tokens") {
        into.cache_read_tokens = tokens(Some(v));
    }
    if let Some(v) = get("cache_creation_input_tokens") {
        into.cache_creation_tokens = tokens(Some(v));
    }
}

/// A usage in OpenAI's shape: all input in `prompt_tokens`, cache reads in
/// `prompt_tokens_details.cached_tokens`, and cache writes (which OpenAI's
/// shape has no field for, and which cost more than input) in
/// `cache_creation_input_tokens` beside them when there were any, as
/// LiteLLM writes it: a part of `prompt_tokens`, so that a meter reading
/// the translated answer prices them as writes.
pub(super) fn write_openai_usage(o: &mut Obj<'_>, u: &Usage) {
    o.field("prompt_tokens", &u.prompt_tokens())
        .field("completion_tokens", &u.output_tokens)
        .field("total_tokens", &(u.prompt_tokens() + u.output_tokens))
        .object("prompt_tokens_details", |d| {
            d.field("cached_tokens", &u.cache_read_tokens);
        });
    if u.cache_creation_tokens > 0 {
        o.field("cache_creation_input_tokens", &u.cache_creation_tokens);
    }
}

/// Translates a whole Anthropic answer into a Chat Completions answer.
pub(super) fn response(v: &Value, ctx: &ResponseContext) -> Result<Translated, TranslateError> {
    let Value::Object(m) = v else {
        return Err(TranslateError::bad("the answer is not a JSON object"));
    };
    if m.get("type") == Some(&json!("error")) {
        return Err(upstream_error(m));
    }
    if m.get("type") != Some(&json!("message")) {
        return Err(TranslateError::bad("the answer is not a message"));
    }
    let id = str_field(m, "id")?;
    let Some(Value::Array(content)) = m.get("content") else {
        return Err(TranslateError::bad("`content` is missing"));
    };
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut calls = Vec::new();
    for block in content {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "text" => text
                .get_or_insert_with(String::new)
                .push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            "thinking" => reasoning
                .get_or_insert_with(String::new)
                .push_str(block.get("thinking").and_then(Value::as_str).unwrap_or("")),
            // Encrypted reasoning has no readable text for an OpenAI client.
            "redacted_thinking" => {}
            "tool_use" => {
                let b = block
                    .as_object()
                    .ok_or_else(|| TranslateError::bad("a block is not an object"))?;
                let mut arguments = BytesMut::new();
                write_json(&mut arguments, b.get("input").unwrap_or(&json!({})));
                calls.push((str_field(b, "id")?, str_field(b, "name")?, arguments));
            }
            other => {
                return Err(TranslateError::bad(format!(
                    "a `{other}` content block has no Chat Completions counterpart"
                )));
            }
        }
    }
    let stop = m
        .get("stop_reason")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::bad("`stop_reason` is missing"))?;
    let finish = finish_reason(stop)?;
    let mut usage = Usage::default();
    let reported = m.get("usage").filter(|u| u.is_object());
    if let Some(u) = reported {
        read_usage(u, &mut usage);
    }
    // Written as it is read, without building the answer as a tree.
    let mut out = BytesMut::with_capacity(
        320 + text.as_ref().map_or(0, String::len)
            + reasoning.as_ref().map_or(0, String::len)
            + calls.iter().map(|c| c.2.len() + 64).sum::<usize>(),
    );
    let mut body = Obj::new(&mut out);
    body.field("id", id)
        .field("object", "chat.completion")
        .field("created", &ctx.created)
        .field("model", &*ctx.model);
    let choices = body.key("choices");
    choices.put_u8(b'[');
    let mut choice = Obj::new(&mut *choices);
    choice.field("index", &0).object("message", |msg| {
        msg.field("role", "assistant")
            .field("content", &text)
            .field("refusal", &Value::Null);
        if let Some(r) = &reasoning {
            msg.field("reasoning_content", r);
        }
        if !calls.is_empty() {
            let list = msg.key("tool_calls");
            list.put_u8(b'[');
            for (k, (id, name, arguments)) in calls.iter().enumerate() {
                if k > 0 {
                    list.put_u8(b',');
                }
                let mut call = Obj::new(&mut *list);
                call.field("id", *id)
                    .field("type", "function")
                    .object("function", |f| {
                        f.field("name", *name);
                        // The input's JSON text, as an OpenAI `arguments` string.
                        write_str(
                            f.key("arguments"),
                            std::str::from_utf8(arguments).unwrap_or("{}"),
                        );
                    });
                call.end();
            }
            list.put_u8(b']');
        }
    });
    choice
        .field("logprobs", &Value::Null)
        .field("finish_reason", finish);
    choice.end();
    choices.put_u8(b']');
    body.object("usage", |u| write_openai_usage(u, &usage));
    body.end();
    Ok(Translated {
        body: out.freeze(),
        usage: reported.map(|_| usage),
    })
}

fn upstream_error(m: &Map<String, Value>) -> TranslateError {
    let e = m.get("error");
    let field = |k: &str| {
        e.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    TranslateError::Upstream {
        kind: field("type"),
        message: field("message"),
    }
}

// ---------------------------------------------------------------- stream

/// An event read without building a tree: enough for `content_block_delta`.
#[derive(Deserialize)]
struct DeltaEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before `message_start`.
    Start,
    /// Between `message_start` and `message_stop`.
    Body,
    /// After `message_stop`.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Block {
    Text,
    Thinking,
    Redacted,
    Tool,
}

/// A `content_block_delta` of text or of a tool's input exactly as
/// Anthropic writes it,
/// `{"type":"content_block_delta","index":N,"delta":{"type":"text_delta","text":"…"}}`
/// (or `"input_json_delta","partial_json":"…"`): the block index, the
/// block kind the delta belongs in, and the text as its JSON string
/// literal, quotes included, validated (escapes, control bytes, UTF-8) so
/// that it can be copied into the client's JSON as it is. `None` for
/// anything else (other spacing, field order or fields), which the general
/// reader takes.
pub(super) fn raw_delta(data: &[u8]) -> Option<(u64, Block, &[u8])> {
    let rest = data.strip_prefix(br#"{"type":"content_block_delta","index":"#)?;
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let index = rest[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let rest = rest[digits..].strip_prefix(br#","delta":{"type":""#)?;
    let (block, rest) = if let Some(r) = rest.strip_prefix(br#"text_delta","text":"#) {
        (Block::Text, r)
    } else {
        let r = rest.strip_prefix(br#"input_json_delta","partial_json":"#)?;
        (Block::Tool, r)
    };
    let (len, _) = crate::read_request::scan::string_len(rest)?;
    (&rest[len..] == b"}}").then_some((index, block, &rest[..len]))
}

/// Anthropic events → OpenAI chunks. State: the message id, the open block,
/// counters; never any content.
#[derive(Debug)]
pub(super) struct Stream {
    ctx: ResponseContext,
    /// Every chunk's start, fixed at `message_start`: `{"id":…,"object":…,
    /// "created":…,"model":…,"choices":[{"index":0,"delta":`.
    prefix: String,
    id: String,
    phase: Phase,
    /// The open block: its index and kind.
    open: Option<(u64, Block)>,
    /// The index the next block must have.
    next_index: u64,
    /// Tool calls started so far (the OpenAI `tool_calls[].index` of the next).
    tools: u64,
    finish: Option<&'static str>,
    usage: Usage,
}

impl Stream {
    pub(super) fn new(ctx: ResponseContext) -> Self {
        Stream {
            ctx,
            prefix: String::new(),
            id: String::new(),
            phase: Phase::Start,
            open: None,
            next_index: 0,
            tools: 0,
            finish: None,
            usage: Usage::default(),
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.id.capacity() + self.prefix.capacity()
    }

    /// Writes one chunk: the prefix fixed at `message_start` (id, created,
    /// model), the delta `write_delta` writes, and the finish reason.
    fn chunk_with(
        &self,
        out: &mut BytesMut,
        write_delta: impl FnOnce(&mut BytesMut),
        finish: Option<&str>,
    ) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(self.prefix.as_bytes());
        write_delta(out);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => write_json(out, f),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        self.chunk_with(out, |out| write_json(out, &delta), finish);
    }

    /// A chunk whose delta is `{"<field>": text}`; the first is the commit point.
    fn text_chunk(&self, out: &mut BytesMut, progress: &mut Progress, block: Block, text: &str) {
        if text.is_empty() {
            return;
        }
        self.delta_chunk(out, block, |out| write_json(out, text));
        progress.committed = true;
    }

    /// The chunk of one delta of a `block`: `{"content": …}`,
    /// `{"reasoning_content": …}` or the open tool call's `arguments`, the
    /// JSON string written by `text`.
    fn delta_chunk(&self, out: &mut BytesMut, block: Block, text: impl FnOnce(&mut BytesMut)) {
        let mut n = itoa::Buffer::new();
        let n = n.format(self.tools);
        self.chunk_with(
            out,
            |out| {
                out.extend_from_slice(match block {
                    Block::Tool => b"{\"tool_calls\":[{\"index\":",
                    Block::Thinking => b"{\"reasoning_content\":".as_slice(),
                    Block::Text | Block::Redacted => b"{\"content\":",
                });
                if block == Block::Tool {
                    out.extend_from_slice(n.as_bytes());
                    out.extend_from_slice(b",\"function\":{\"arguments\":");
                }
                text(out);
                out.extend_from_slice(if block == Block::Tool { b"}}]}" } else { b"}" });
            },
            None,
        );
    }

    /// The hot path: a `content_block_delta`, read without building a tree.
    fn delta(
        &mut self,
        ev: &DeltaEvent<'_>,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        if self.phase != Phase::Body {
            return Err(TranslateError::bad(
                "a content_block_delta outside a message",
            ));
        }
        let index = ev
            .index
            .ok_or_else(|| TranslateError::bad("an event without its block `index`"))?;
        let Some((_, block)) = self.open.filter(|(i, _)| *i == index) else {
            return Err(TranslateError::bad(format!(
                "a delta for content block {index}, which is not open"
            )));
        };
        let d = ev
            .delta
            .as_ref()
            .ok_or_else(|| TranslateError::bad("content_block_delta without a delta"))?;
        let missing = |field: &str| TranslateError::bad(format!("a delta without its `{field}`"));
        match (block, d.kind.as_deref().unwrap_or("")) {
            (Block::Text, "text_delta") => {
                let text = d.text.as_deref().ok_or_else(|| missing("text"))?;
                self.text_chunk(out, progress, Block::Text, text);
            }
            // Citations have no Chat Completions counterpart; the cited text itself arrives as text.
            (Block::Text, "citations_delta") => {}
            (Block::Thinking, "thinking_delta") => {
                let text = d.thinking.as_deref().ok_or_else(|| missing("thinking"))?;
                self.text_chunk(out, progress, Block::Thinking, text);
            }
            // A signature only means something to Anthropic.
            (Block::Thinking, "signature_delta") => {}
            (Block::Tool, "input_json_delta") => {
                let part = d
                    .partial_json
                    .as_deref()
                    .ok_or_else(|| missing("partial_json"))?;
                if !part.is_empty() {
                    self.delta_chunk(out, Block::Tool, |out| write_json(out, part));
                }
            }
            (_, other) => {
                return Err(TranslateError::bad(format!(
                    "a `{other}` delta in a {block:?} block"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn event(
        &mut self,
        event: SseEvent<'_>,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        // The hottest events, as Anthropic writes them, into the open
        // block of their kind: the text goes on as the JSON literal it came in.
        if let Some((index, block, text)) = raw_delta(event.data)
            && matches!(event.name, "" | "content_block_delta")
            && self.phase == Phase::Body
            && self.open == Some((index, block))
        {
            if text != b"\"\"" {
                self.delta_chunk(out, block, |out| out.extend_from_slice(text));
                if block == Block::Text {
                    progress.committed = true;
                }
            }
            return Ok(());
        }
        if let Ok(fast) = serde_json::from_slice::<DeltaEvent<'_>>(event.data)
            && fast.kind == "content_block_delta"
        {
            if !event.name.is_empty() && event.name != fast.kind {
                return Err(TranslateError::bad(format!(
                    "an `{}` event carries a `content_block_delta` payload",
                    event.name
                )));
            }
            return self.delta(&fast, out, progress);
        }
        let m = parse_event(event.data)?;
        let kind = str_field(&m, "type")?;
        if !event.name.is_empty() && event.name != kind {
            return Err(TranslateError::bad(format!(
                "an `{}` event carries a `{kind}` payload",
                event.name
            )));
        }
        if kind == "error" {
            return Err(upstream_error(&m));
        }
        if kind == "ping" {
            return Ok(());
        }
        match (self.phase, kind) {
            (Phase::Start, "message_start") => {
                let msg = m
                    .get("message")
                    .and_then(Value::as_object)
                    .ok_or_else(|| TranslateError::bad("message_start without a message"))?;
                self.id = str_field(msg, "id")?.to_owned();
                let head = json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.ctx.created,
                    "model": &*self.ctx.model,
                })
                .to_string();
                // `{…}` → `{…,"choices":[{"index":0,"delta":`
                self.prefix = format!(
                    "{},\"choices\":[{{\"index\":0,\"delta\":",
                    &head[..head.len() - 1]
                );
                if let Some(u) = msg.get("usage") {
                    read_usage(u, &mut self.usage);
                }
                progress.usage = Some(self.usage);
                self.phase = Phase::Body;
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            (Phase::Body, "content_block_start") => {
                let index = self.index(&m)?;
                if self.open.is_some() || index != self.next_index {
                    return Err(TranslateError::bad(format!(
                        "content block {index} started out of order"
                    )));
                }
                let b = m
                    .get("content_block")
                    .and_then(Value::as_object)
                    .ok_or_else(|| TranslateError::bad("content_block_start without a block"))?;
                let block = match str_field(b, "type")? {
                    "text" => {
                        self.content(out, progress, Block::Text, b.get("text"));
                        Block::Text
                    }
                    "thinking" => {
                        self.content(out, progress, Block::Thinking, b.get("thinking"));
                        Block::Thinking
                    }
                    "redacted_thinking" => Block::Redacted,
                    "tool_use" => {
                        let input = match b.get("input") {
                            Some(Value::Object(o)) if !o.is_empty() => {
                                serde_json::to_string(o).unwrap_or_default()
                            }
                            _ => String::new(),
                        };
                        let delta = json!({"tool_calls": [{
                            "index": self.tools,
                            "id": str_field(b, "id")?,
                            "type": "function",
                            "function": {"name": str_field(b, "name")?, "arguments": input},
                        }]});
                        self.chunk(out, delta, None);
                        progress.committed = true;
                        Block::Tool
                    }
                    other => {
                        return Err(TranslateError::bad(format!(
                            "a `{other}` content block has no Chat Completions counterpart"
                        )));
                    }
                };
                self.open = Some((index, block));
            }
            // A well-formed delta took the fast path above.
            (_, "content_block_delta") => {
                return Err(TranslateError::bad("a malformed content_block_delta"));
            }
            (Phase::Body, "content_block_stop") => {
                let index = self.index(&m)?;
                match self.open.take() {
                    Some((i, block)) if i == index => {
                        self.next_index += 1;
                        if block == Block::Tool {
                            self.tools += 1;
                        }
                    }
                    _ => {
                        return Err(TranslateError::bad(format!(
                            "content block {index} stopped but is not open"
                        )));
                    }
                }
            }
            (Phase::Body, "message_delta") => {
                if self.open.is_some() {
                    return Err(TranslateError::bad("message_delta inside a content block"));
                }
                if let Some(u) = m.get("usage") {
                    read_usage(u, &mut self.usage);
                    progress.usage = Some(self.usage);
                }
                if let Some(stop) = m
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    let reason = finish_reason(stop)?;
                    self.finish = Some(reason);
                    self.chunk(out, json!({}), Some(reason));
                }
            }
            (Phase::Body, "message_stop") => {
                if self.open.is_some() || self.finish.is_none() {
                    return Err(TranslateError::bad(
                        "message_stop without a stop_reason or inside a block",
                    ));
                }
                self.phase = Phase::Stopped;
                if self.ctx.include_usage {
                    out.extend_from_slice(b"data: ");
                    let mut chunk = Obj::new(out);
                    chunk
                        .field("id", &self.id)
                        .field("object", "chat.completion.chunk")
                        .field("created", &self.ctx.created)
                        .field("model", &*self.ctx.model)
                        .field("choices", &Value::Array(Vec::new()))
                        .object("usage", |u| write_openai_usage(u, &self.usage));
                    chunk.end();
                    out.extend_from_slice(b"\n\n");
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            // Anthropic may add event types; an unknown one is skipped, as its SDKs do.
            (Phase::Body, k)
                if !matches!(
                    k,
                    "message_start"
                        | "content_block_start"
                        | "content_block_delta"
                        | "content_block_stop"
                        | "message_delta"
                        | "message_stop"
                ) => {}
            (phase, k) => {
                return Err(TranslateError::bad(format!(
                    "a `{k}` event {}",
                    match phase {
                        Phase::Start => "before message_start",
                        Phase::Body => "out of order",
                        Phase::Stopped => "after message_stop",
                    }
                )));
            }
        }
        Ok(())
    }

    fn index(&self, m: &Map<String, Value>) -> Result<u64, TranslateError> {
        m.get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| TranslateError::bad("an event without its block `index`"))
    }

    /// Writes a text from a block start, if it carries one.
    fn content(
        &self,
        out: &mut BytesMut,
        progress: &mut Progress,
        block: Block,
        text: Option<&Value>,
    ) {
        if let Some(Value::String(s)) = text {
            self.text_chunk(out, progress, block, s);
        }
    }

    /// The upstream's stream ended: it must have ended with `message_stop`.
    pub(super) fn finish(&self) -> Result<(), TranslateError> {
        match self.phase {
            Phase::Stopped => Ok(()),
            _ => Err(TranslateError::Truncated),
        }
    }
}
