//! An Anthropic Messages client served by an OpenAI-compatible Chat
//! Completions upstream: the request goes Anthropic → OpenAI, the answer
//! and the stream come back OpenAI → Anthropic.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use super::raw::{
    self, Members, Raw, as_bool, as_f64, as_str, as_u64, checked, comma, is_empty_str, is_null,
    is_object, is_str, items, str_is,
};
use super::sse::{Json, Obj, SseEvent, write_event, write_json};
use super::{
    OpenAiMaxTokens, Options, Progress, ResponseContext, TranslateError, Translated,
    TranslatedRequest, Usage, bad, parse_event, tokens,
};
use crate::error::Error;

// ---------------------------------------------------------------- request

/// Where in the request a value is, built only when an error names it.
type At<'p> = &'p dyn Fn() -> String;

/// OpenAI's `tool_choice`, as translated.
enum ToolChoice<'a> {
    /// `"auto"`, `"required"` or `"none"`.
    Named(&'static str),
    /// One function, by name.
    Function(Raw<'a>),
}

/// Translates an Anthropic Messages request into a Chat Completions
/// request, read from the client's body without building a tree: strings
/// and sub-objects passed on are copied as their JSON text.
pub(super) fn request(
    mut req: Members<'_>,
    model: &str,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    // `messages`' items, if split as the body was read.
    let split = req.take_split();
    let mut stream = None;
    let mut system = None;
    let mut messages = None;
    let mut max_tokens = None;
    let mut numbers: Vec<(&'static str, Raw<'_>)> = Vec::new();
    let mut stop = None;
    let mut user = None;
    let mut tools = None;
    let mut choice = None;
    let mut effort = None;
    for (key, value) in req.sorted() {
        if is_null(value) || super::GATEWAY_FIELDS.contains(&key.as_ref()) {
            continue; // a null field is an absent one; the gateway's own are not the upstream's
        }
        match key.as_ref() {
            "model" => {}
            "messages" => messages = Some(value),
            "system" => system = Some(value),
            "max_tokens" => {
                max_tokens = Some(
                    as_u64(value)
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("max_tokens", "must be a positive integer"))?,
                )
            }
            "stream" => {
                stream = Some(as_bool(value).ok_or_else(|| bad("stream", "must be a boolean"))?)
            }
            "temperature" | "top_p" => {
                if as_f64(value).is_none() {
                    return Err(bad(&key, "must be a number"));
                }
                numbers.push((
                    if key == "top_p" {
                        "top_p"
                    } else {
                        "temperature"
                    },
                    value,
                ));
            }
            "stop_sequences" => {
                if !items(value).is_some_and(|a| a.iter().all(|s| is_str(*s))) {
                    return Err(bad("stop_sequences", "must be an array of strings"));
                }
                stop = Some(value);
            }
            "metadata" => {
                let m = Members::of(value).ok_or_else(|| bad("metadata", "must be an object"))?;
                for (k, v) in m.sorted() {
                    match k.as_ref() {
                        _ if is_null(v) => {}
                        "user_id" if is_str(v) => user = Some(v),
                        "user_id" => return Err(bad("metadata.user_id", "must be a string")),
                        _ => return Err(untranslatable(&format!("metadata.{k}"))),
                    }
                }
            }
            "tools" => tools = Some(self::tools(value, options)?),
            "tool_choice" => choice = Some(tool_choice(value)?),
            "thinking" => effort = thinking(value)?,
            _ => return Err(untranslatable(&key)),
        }
    }
    let max = max_tokens.ok_or_else(|| bad("max_tokens", "is required"))?;
    let max_field = match options.openai_max_tokens {
        OpenAiMaxTokens::MaxTokens => "max_tokens",
        OpenAiMaxTokens::MaxCompletionTokens => "max_completion_tokens",
    };

    let mut chat = BytesMut::with_capacity(
        messages.map_or(0, |m| m.bytes().len()) + system.map_or(0, |s| s.bytes().len()) + 64,
    );
    chat.put_u8(b'[');
    let mut n = 0;
    if let Some(system) = system {
        let parts = if is_str(system) {
            vec![Part::Text(system)]
        } else if let Some(blocks) = items(system) {
            blocks
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    let at = || format!("system[{i}]");
                    let b = Members::of(b).ok_or_else(|| bad(&at(), "must be an object"))?;
                    text_block(&b, &at, options).map(Part::Text)
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            return Err(bad("system", "must be a string or an array of text blocks"));
        };
        comma(&mut chat, &mut n);
        chat.extend_from_slice(b"{\"role\":\"system\",\"content\":");
        one_or_parts(&mut chat, &parts);
        chat.put_u8(b'}');
    }
    let Some(messages) = messages.and_then(|m| split.object_items(m)) else {
        return Err(bad("messages", "must be an array"));
    };
    for (i, (_, message)) in messages.into_iter().enumerate() {
        turn(
            message,
            &|| format!("messages[{i}]"),
            options,
            &mut chat,
            &mut n,
        )?;
    }
    chat.put_u8(b']');

    let mut out = BytesMut::with_capacity(
        chat.len() + tools.as_ref().map_or(0, BytesMut::len) + model.len() + 256,
    );
    let mut o = Obj::new(&mut out);
    o.field("model", model).field(max_field, &max);
    if let Some(s) = stream {
        o.field("stream", &s);
        if s {
            // What metering needs: the upstream's own count of the stream.
            o.object("stream_options", |so| {
                so.field("include_usage", &true);
            });
        }
    }
    o.key("messages").extend_from_slice(&chat);
    for (name, value) in numbers {
        o.field(name, &value);
    }
    if let Some(stop) = stop {
        o.field("stop", &stop);
    }
    if let Some(user) = user {
        o.field("user", &user);
    }
    if let Some(tools) = &tools {
        o.key("tools").extend_from_slice(tools);
    }
    if let Some((choice, parallel)) = &choice {
        match choice {
            ToolChoice::Named(name) => o.field("tool_choice", *name),
            ToolChoice::Function(name) => o.object("tool_choice", |c| {
                c.field("type", "function").object("function", |f| {
                    f.field("name", name);
                });
            }),
        };
        if let Some(p) = parallel {
            o.field("parallel_tool_calls", p);
        }
    }
    if let Some(effort) = effort {
        o.field("reasoning_effort", effort);
    }
    o.end();
    Ok(TranslatedRequest {
        body: out.freeze(),
        stream: stream.unwrap_or(false),
        include_usage: false,
    })
}

fn untranslatable(param: &str) -> Error {
    bad(
        param,
        "has no OpenAI Chat Completions counterpart and cannot be translated; remove it or use an Anthropic deployment",
    )
}

/// Refuses any key of `m` outside `allowed`; `cache_control` is passed
/// over (and so dropped) instead when the options say so.
fn only_keys(
    m: &Members<'_>,
    at: At<'_>,
    allowed: &[&str],
    options: &Options,
) -> Result<(), Error> {
    let skip = options.drop_cache_control.then_some("cache_control");
    match m.unknown(allowed, skip) {
        Some(k) => Err(untranslatable(&format!("{}.{k}", at()))),
        None => Ok(()),
    }
}

/// One OpenAI content part.
enum Part<'a> {
    /// A text part's text, as its JSON literal.
    Text(Raw<'a>),
    /// An `image_url` part's URL.
    Image(Cow<'a, str>),
}

/// One text part or a string: a lone text part becomes a plain string;
/// anything else an array of parts.
fn one_or_parts(out: &mut BytesMut, parts: &[Part<'_>]) {
    if let [Part::Text(text)] = parts {
        text.write_to(out);
        return;
    }
    out.put_u8(b'[');
    for (k, part) in parts.iter().enumerate() {
        if k > 0 {
            out.put_u8(b',');
        }
        let mut o = Obj::new(out);
        match part {
            Part::Text(text) => {
                o.field("type", "text").field("text", text);
            }
            Part::Image(url) => {
                o.field("type", "image_url").object("image_url", |u| {
                    u.field("url", url.as_ref());
                });
            }
        }
        o.end();
    }
    out.put_u8(b']');
}

/// An Anthropic `text` block → its text.
fn text_block<'a>(b: &Members<'a>, at: At<'_>, options: &Options) -> Result<Raw<'a>, Error> {
    if !str_is(b.get("type"), "text") {
        return Err(kind_refused(b, at));
    }
    only_keys(b, at, &["type", "text"], options)?;
    b.get("text")
        .filter(|t| is_str(*t))
        .ok_or_else(|| bad(&format!("{}.text", at()), "must be a string"))
}

fn kind_refused(b: &Members<'_>, at: At<'_>) -> Error {
    let kind = b.get("type").and_then(as_str);
    bad(
        &format!("{}.type", at()),
        format!(
            "`{}` blocks have no OpenAI Chat Completions counterpart here",
            kind.as_deref().unwrap_or("?")
        ),
    )
}

/// One Anthropic turn → one or more Chat messages (a user turn's
/// `tool_result` blocks become `tool` messages, before its other content),
/// written into `chat`.
fn turn(
    message: Option<Members<'_>>,
    at: At<'_>,
    options: &Options,
    chat: &mut BytesMut,
    n: &mut usize,
) -> Result<(), Error> {
    let m = message.ok_or_else(|| bad(&at(), "must be an object"))?;
    only_keys(&m, at, &["role", "content"], options)?;
    let role = m.get("role").and_then(as_str).unwrap_or_default();
    let content = m.get("content").unwrap_or(raw::NULL);
    let blocks = || format!("{}.content", at());
    match role.as_ref() {
        "user" | "assistant" if is_str(content) => {
            comma(chat, n);
            let mut o = Obj::new(chat);
            o.field("role", role.as_ref()).field("content", &content);
            o.end();
        }
        "user" if content.bytes().first() == Some(&b'[') => {
            let mut parts = Vec::new();
            for (j, block) in items(content).unwrap_or_default().into_iter().enumerate() {
                let bat = || format!("{}[{j}]", blocks());
                let b = Members::of(block).ok_or_else(|| bad(&bat(), "must be an object"))?;
                match b.get("type").and_then(as_str).as_deref() {
                    Some("tool_result") => {
                        if !parts.is_empty() {
                            return Err(bad(
                                &bat(),
                                "a tool_result after other content cannot keep its place in OpenAI's order",
                            ));
                        }
                        comma(chat, n);
                        tool_result(&b, &bat, options, chat)?;
                    }
                    Some("image") => parts.push(image(&b, &bat, options)?),
                    _ => parts.push(Part::Text(text_block(&b, &bat, options)?)),
                }
            }
            if !parts.is_empty() {
                comma(chat, n);
                chat.extend_from_slice(b"{\"role\":\"user\",\"content\":");
                one_or_parts(chat, &parts);
                chat.put_u8(b'}');
            }
        }
        "assistant" if content.bytes().first() == Some(&b'[') => {
            let mut texts = Vec::new();
            let mut reasoning: Option<Vec<Raw<'_>>> = None;
            let mut calls = Vec::new();
            for (j, block) in items(content).unwrap_or_default().into_iter().enumerate() {
                let bat = || format!("{}[{j}]", blocks());
                let b = Members::of(block).ok_or_else(|| bad(&bat(), "must be an object"))?;
                match b.get("type").and_then(as_str).as_deref() {
                    Some("tool_use") => {
                        only_keys(&b, &bat, &["type", "id", "name", "input"], options)?;
                        let (Some(id), Some(name)) = (
                            b.get("id").filter(|v| is_str(*v)),
                            b.get("name").filter(|v| is_str(*v)),
                        ) else {
                            return Err(bad(&bat(), "a tool_use block needs `id` and `name`"));
                        };
                        let input = match b.get("input") {
                            Some(input) => checked(input, &|| format!("{}.input", bat()))?.text(),
                            None => "{}",
                        };
                        calls.push((id, name, input));
                    }
                    Some("thinking") => {
                        only_keys(&b, &bat, &["type", "thinking", "signature"], options)?;
                        // Only an unsigned block (one this gateway made from an
                        // OpenAI upstream's reasoning) can go back as reasoning text;
                        // a signed one would lose what Anthropic verifies.
                        if b.get("signature")
                            .is_some_and(|s| is_str(s) && !is_empty_str(s))
                        {
                            return Err(bad(
                                &format!("{}.signature", bat()),
                                "a signed thinking block can only go back to an Anthropic upstream",
                            ));
                        }
                        let text = b
                            .get("thinking")
                            .filter(|t| is_str(*t) && !is_empty_str(*t));
                        reasoning.get_or_insert_with(Vec::new).extend(text);
                    }
                    _ => texts.push(Part::Text(text_block(&b, &bat, options)?)),
                }
            }
            comma(chat, n);
            let mut message = Obj::new(chat);
            message.field("role", "assistant");
            if texts.is_empty() {
                message.field("content", &Value::Null);
            } else {
                one_or_parts(message.key("content"), &texts);
            }
            if let Some(parts) = &reasoning {
                raw::write_joined(message.key("reasoning_content"), parts);
            }
            if !calls.is_empty() {
                let list = message.key("tool_calls");
                list.put_u8(b'[');
                for (k, (id, name, input)) in calls.iter().enumerate() {
                    if k > 0 {
                        list.put_u8(b',');
                    }
                    let mut call = Obj::new(&mut *list);
                    call.field("id", id)
                        .field("type", "function")
                        .object("function", |f| {
                            f.field("name", name).field("arguments", *input);
                        });
                    call.end();
                }
                list.put_u8(b']');
            }
            message.end();
        }
        "user" | "assistant" => {
            return Err(bad(&blocks(), "must be a string or an array"));
        }
        _ => {
            return Err(bad(
                &format!("{}.role", at()),
                "must be `user` or `assistant`",
            ));
        }
    }
    Ok(())
}

/// A `tool_result` block → a `tool` message, written. `is_error` has no
/// OpenAI counterpart: the result's text (which states the error) is
/// carried alone.
fn tool_result(
    b: &Members<'_>,
    at: At<'_>,
    options: &Options,
    out: &mut BytesMut,
) -> Result<(), Error> {
    only_keys(
        b,
        at,
        &["type", "tool_use_id", "content", "is_error"],
        options,
    )?;
    let id = b
        .get("tool_use_id")
        .filter(|v| is_str(*v))
        .ok_or_else(|| bad(&format!("{}.tool_use_id", at()), "is required"))?;
    let content = b.get("content").unwrap_or(raw::NULL);
    let parts = if is_null(content) || is_str(content) {
        None
    } else if let Some(blocks) = items(content) {
        Some(
            blocks
                .into_iter()
                .enumerate()
                .map(|(k, blk)| {
                    let at = || format!("{}.content[{k}]", at());
                    let blk = Members::of(blk).ok_or_else(|| bad(&at(), "must be an object"))?;
                    text_block(&blk, &at, options).map(Part::Text)
                })
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        return Err(bad(
            &format!("{}.content", at()),
            "must be a string or an array",
        ));
    };
    out.extend_from_slice(b"{\"role\":\"tool\",\"tool_call_id\":");
    id.write_to(out);
    out.extend_from_slice(b",\"content\":");
    match parts {
        None if is_null(content) => out.extend_from_slice(b"\"\""),
        None => content.write_to(out),
        Some(parts) if parts.is_empty() => out.extend_from_slice(b"\"\""),
        Some(parts) => one_or_parts(out, &parts),
    }
    out.put_u8(b'}');
    Ok(())
}

/// An Anthropic `image` block → an OpenAI `image_url` part.
fn image<'a>(b: &Members<'a>, at: At<'_>, options: &Options) -> Result<Part<'a>, Error> {
    only_keys(b, at, &["type", "source"], options)?;
    let src = b
        .get("source")
        .and_then(Members::of)
        .ok_or_else(|| bad(&format!("{}.source", at()), "is required"))?;
    let sat = || format!("{}.source", at());
    let url = match src.get("type").and_then(as_str).as_deref() {
        Some("base64") => {
            let (Some(media), Some(data)) = (
                src.get("media_type").and_then(as_str),
                src.get("data").and_then(as_str),
            ) else {
                return Err(bad(&sat(), "a base64 source needs `media_type` and `data`"));
            };
            Cow::Owned(format!("data:{media};base64,{data}"))
        }
        Some("url") => src
            .get("url")
            .and_then(as_str)
            .ok_or_else(|| bad(&format!("{}.url", sat()), "is required"))?,
        _ => return Err(untranslatable(&format!("{}.type", sat()))),
    };
    Ok(Part::Image(url))
}

/// Anthropic custom tools → OpenAI function tools, written as an array;
/// server tools are refused.
fn tools(tools: Raw<'_>, options: &Options) -> Result<BytesMut, Error> {
    let tools = items(tools).ok_or_else(|| bad("tools", "must be an array"))?;
    let mut out =
        BytesMut::with_capacity(tools.iter().map(|t| t.bytes().len() + 32).sum::<usize>());
    out.put_u8(b'[');
    for (i, tool) in tools.into_iter().enumerate() {
        let at = || format!("tools[{i}]");
        let field = |key: &str| format!("tools[{i}].{key}");
        let t = Members::of(tool).ok_or_else(|| bad(&at(), "must be an object"))?;
        if t.get("type")
            .is_some_and(|k| !is_null(k) && !str_is(Some(k), "custom"))
        {
            return Err(untranslatable(&field("type")));
        }
        only_keys(
            &t,
            &at,
            &["type", "name", "description", "input_schema"],
            options,
        )?;
        let name = t
            .get("name")
            .filter(|n| is_str(*n))
            .ok_or_else(|| bad(&field("name"), "is required"))?;
        let schema = t
            .get("input_schema")
            .filter(|s| is_object(*s))
            .ok_or_else(|| bad(&field("input_schema"), "is required"))?;
        let schema = checked(schema, &|| field("input_schema"))?;
        let description = match t.get_some("description") {
            Some(d) => Some(checked(d, &|| field("description"))?),
            None => None,
        };
        if i > 0 {
            out.put_u8(b',');
        }
        let mut o = Obj::new(&mut out);
        o.field("type", "function").object("function", |f| {
            f.field("name", &name).field("parameters", &schema);
            if let Some(d) = description {
                f.field("description", &d);
            }
        });
        o.end();
    }
    out.put_u8(b']');
    Ok(out)
}

/// Anthropic's `tool_choice` → OpenAI's, and `parallel_tool_calls: false`
/// for `disable_parallel_tool_use: true`.
fn tool_choice(value: Raw<'_>) -> Result<(ToolChoice<'_>, Option<bool>), Error> {
    let c = Members::of(value).ok_or_else(|| bad("tool_choice", "must be an object"))?;
    if let Some(k) = c.unknown(&["type", "name", "disable_parallel_tool_use"], None) {
        return Err(untranslatable(&format!("tool_choice.{k}")));
    }
    let choice = match c.get("type").and_then(as_str).as_deref() {
        Some("auto") => ToolChoice::Named("auto"),
        Some("any") => ToolChoice::Named("required"),
        Some("none") => ToolChoice::Named("none"),
        Some("tool") => ToolChoice::Function(
            c.get("name")
                .filter(|n| is_str(*n))
                .ok_or_else(|| bad("tool_choice.name", "is required"))?,
        ),
        _ => return Err(bad("tool_choice.type", "must be auto, any, tool or none")),
    };
    let parallel = c
        .get("disable_parallel_tool_use")
        .is_some_and(|d| d.is("true"))
        .then_some(false);
    Ok((choice, parallel))
}

/// Anthropic's `thinking` → OpenAI's `reasoning_effort` (by budget band),
/// or nothing when disabled.
fn thinking(value: Raw<'_>) -> Result<Option<&'static str>, Error> {
    let t = Members::of(value).unwrap_or_default();
    match t.get("type").and_then(as_str).as_deref() {
        Some("disabled") => Ok(None),
        Some("enabled") => {
            let budget = t
                .get("budget_tokens")
                .and_then(as_u64)
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

/// Reads an OpenAI `usage` object's text into Anthropic's partition, as
/// [`read_usage`] reads one from a tree.
fn read_usage_raw(u: Raw<'_>) -> Usage {
    let u = Members::of(u).unwrap_or_default();
    let details = u
        .get("prompt_tokens_details")
        .and_then(Members::of)
        .unwrap_or_default();
    let prompt = raw::tokens(u.get("prompt_tokens"));
    let cached = raw::tokens(details.get("cached_tokens")).min(prompt);
    Usage {
        input_tokens: prompt - cached,
        output_tokens: raw::tokens(u.get("completion_tokens")),
        cache_read_tokens: cached,
        cache_creation_tokens: 0,
    }
}

/// Translates a whole Chat Completions answer (its members, read without a
/// tree) into an Anthropic message; the texts are copied as the JSON
/// literals they came in.
pub(super) fn response(
    mut v: Members<'_>,
    size: usize,
    ctx: &ResponseContext,
) -> Result<Translated, TranslateError> {
    // `choices`' items, if split as the answer was read.
    let split = v.take_split();
    if let Some(e) = v.get_some("error") {
        let e: Value = serde_json::from_slice(e.bytes()).unwrap_or_default();
        return Err(upstream_error(&e));
    }
    let id = v.get("id").filter(|id| is_str(*id));
    let choice = match v.get("choices").and_then(|c| split.object_items(c)) {
        Some(mut one) if one.len() == 1 => one.pop().and_then(|(_, c)| c).unwrap_or_default(),
        _ => {
            return Err(TranslateError::bad(
                "the answer must have exactly one choice",
            ));
        }
    };
    let message = choice
        .get("message")
        .and_then(Members::of)
        .ok_or_else(|| TranslateError::bad("the choice has no message"))?;
    // `reasoning_content` as DeepSeek and vLLM send it, or `reasoning`.
    let reasoning = [message.get("reasoning_content"), message.get("reasoning")]
        .into_iter()
        .flatten()
        .find(|r| is_str(*r))
        .filter(|r| !is_empty_str(*r));
    let mut texts = Vec::with_capacity(2);
    for key in ["content", "refusal"] {
        match message.get(key) {
            None => {}
            Some(t) if is_null(t) || is_empty_str(t) => {}
            Some(t) if is_str(t) => texts.push(t),
            Some(_) => {
                return Err(TranslateError::bad(format!(
                    "`message.{key}` is not a string"
                )));
            }
        }
    }
    let mut calls = Vec::new();
    if let Some(list) = message.get_some("tool_calls") {
        let list =
            items(list).ok_or_else(|| TranslateError::bad("`tool_calls` is not an array"))?;
        for call in list {
            let call = Members::of(call).unwrap_or_default();
            let f = call
                .get("function")
                .and_then(Members::of)
                .unwrap_or_default();
            let (Some(id), Some(name)) = (
                call.get("id").filter(|v| is_str(*v)),
                f.get("name").filter(|v| is_str(*v)),
            ) else {
                return Err(TranslateError::bad("a tool call without `id` or `name`"));
            };
            let args = f.get("arguments").and_then(as_str).unwrap_or_default();
            // The arguments' text, checked to be one JSON object, becomes the input.
            if !args.trim().is_empty() && !raw::is_json_object(args.as_bytes()) {
                return Err(TranslateError::bad(
                    "a tool call's arguments are not a JSON object",
                ));
            }
            calls.push((id, name, args));
        }
    }
    let finish = choice
        .get("finish_reason")
        .and_then(as_str)
        .ok_or_else(|| TranslateError::bad("`finish_reason` is missing"))?;
    let stop = stop_reason(&finish)?;
    let usage = v.get("usage").filter(|u| is_object(*u)).map(read_usage_raw);
    // Written as it is read, without building the answer as a tree.
    let mut out = BytesMut::with_capacity(320 + size);
    let mut answer = Obj::new(&mut out);
    match &id {
        Some(id) => answer.field("id", id),
        None => answer.field("id", ""),
    };
    answer
        .field("type", "message")
        .field("role", "assistant")
        .field("model", &*ctx.model);
    let content = answer.key("content");
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
    if let Some(r) = &reasoning {
        block(content, &|o| {
            o.field("type", "thinking")
                .field("thinking", r)
                .field("signature", "");
        });
    }
    for text in &texts {
        block(content, &|o| {
            o.field("type", "text").field("text", text);
        });
    }
    for (id, name, args) in &calls {
        block(content, &|o| {
            o.field("type", "tool_use")
                .field("id", id)
                .field("name", name);
            // Checked above: one JSON object (or nothing: `{}`), copied as its text.
            let input = args.trim();
            o.key("input").extend_from_slice(if input.is_empty() {
                b"{}"
            } else {
                input.as_bytes()
            });
        });
    }
    content.put_u8(b']');
    answer
        .field("stop_reason", stop)
        .field("stop_sequence", &Value::Null)
        .object("usage", |u| usage.unwrap_or_default().write_anthropic(u));
    answer.end();
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
        let (index, r) = super::sse::leading_index(r)?;
        let r = r.strip_prefix(br#","function":{"arguments":"#)?;
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
            let fast = match raw_delta(event.data) {
                Some(RawDelta::Text(text)) if self.open == Open::Text => {
                    Some(("text_delta", "text", text))
                }
                Some(RawDelta::Arguments(index, text)) if self.open == Open::Tool(index) => {
                    Some(("input_json_delta", "partial_json", text))
                }
                _ => None,
            };
            if let Some((kind, field, text)) = fast {
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
        out.extend_from_slice(b"event: message_delta\ndata: ");
        let mut o = Obj::new(out);
        o.field("type", "message_delta")
            .object("delta", |d| {
                d.field("stop_reason", &self.stop)
                    .field("stop_sequence", &Value::Null);
            })
            .object("usage", |u| match &self.usage {
                Some(usage) => usage.write_anthropic(u),
                None => {
                    u.field("output_tokens", &0);
                }
            });
        o.end();
        out.extend_from_slice(b"\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
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
