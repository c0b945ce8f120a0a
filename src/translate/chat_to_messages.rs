//! An OpenAI Chat Completions client served by an Anthropic Messages
//! upstream: the request goes OpenAI → Anthropic, the answer and the stream
//! come back Anthropic → OpenAI.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::raw::{
    self, Members, ObjectItems, Raw, as_bool, as_f64, as_str, as_u64, checked, comma, is_empty_str,
    is_null, is_object, is_str, items, numbers_in_range, str_is,
};
use super::sse::{Json, Obj, SseEvent, write_json, write_str};
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

/// Where in the request a value is, built only when an error names it.
type At<'p> = &'p dyn Fn() -> String;

/// Anthropic's `tool_choice`, as translated.
enum Choice<'a> {
    Auto,
    None,
    Any,
    Tool(Raw<'a>),
}

/// Translates an OpenAI Chat Completions request into an Anthropic Messages
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
    let mut include_usage = false;
    let (mut max_tokens, mut max_completion) = (None, None);
    let mut effort = None;
    let mut tool_choice = None;
    let mut parallel = None;
    let mut messages = None;
    let mut numbers: Vec<(&'static str, Raw<'_>)> = Vec::new();
    let mut stop = None;
    let mut tools = None;
    let mut has_tools = false;
    let mut user = None;
    for (key, value) in req.sorted() {
        if is_null(value) || super::GATEWAY_FIELDS.contains(&key.as_ref()) {
            continue; // a null field is an absent one; the gateway's own are not the upstream's
        }
        match key.as_ref() {
            "model" => {}
            "messages" => messages = Some(value),
            "stream" => {
                stream = Some(as_bool(value).ok_or_else(|| bad("stream", "must be a boolean"))?)
            }
            "stream_options" => {
                let o =
                    Members::of(value).ok_or_else(|| bad("stream_options", "must be an object"))?;
                for (k, v) in o.sorted() {
                    match k.as_ref() {
                        "include_usage" => {
                            include_usage = !is_null(v)
                                && as_bool(v).ok_or_else(|| {
                                    bad("stream_options.include_usage", "must be a boolean")
                                })?
                        }
                        _ => return Err(untranslatable(&format!("stream_options.{k}"))),
                    }
                }
            }
            "max_tokens" => max_tokens = Some(count(value, "max_tokens")?),
            "max_completion_tokens" => {
                max_completion = Some(count(value, "max_completion_tokens")?)
            }
            "temperature" => {
                let t = as_f64(value).ok_or_else(|| bad("temperature", "must be a number"))?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(bad(
                        "temperature",
                        "Anthropic accepts 0 to 1; a temperature above 1 cannot be carried",
                    ));
                }
                numbers.push(("temperature", value));
            }
            "top_p" | "top_k" => {
                if as_f64(value).is_none() {
                    return Err(bad(&key, "must be a number"));
                }
                numbers.push((if key == "top_p" { "top_p" } else { "top_k" }, value));
            }
            "stop" => {
                let one = is_str(value);
                if !one && !items(value).is_some_and(|a| a.iter().all(|s| is_str(*s))) {
                    return Err(bad("stop", "must be a string or an array of strings"));
                }
                stop = Some((value, one));
            }
            "tools" => {
                let (written, n) = self::tools(value)?;
                has_tools = n > 0;
                tools = Some(written);
            }
            "tool_choice" => tool_choice = Some(value),
            "parallel_tool_calls" => {
                parallel = Some(
                    as_bool(value)
                        .ok_or_else(|| bad("parallel_tool_calls", "must be a boolean"))?,
                )
            }
            "user" => {
                if !is_str(value) {
                    return Err(bad("user", "must be a string"));
                }
                user = Some(value);
            }
            "reasoning_effort" => effort = Some(value),
            // Accepted only at the value that means "nothing asked".
            "n" if value.is("1") => {}
            "logprobs" | "store" if value.is("false") => {}
            "presence_penalty" | "frequency_penalty" if as_f64(value) == Some(0.0) => {}
            "response_format" if parsed(value) == Some(json!({"type": "text"})) => {}
            "modalities" if parsed(value) == Some(json!(["text"])) => {}
            _ => return Err(untranslatable(&key)),
        }
    }

    let messages = messages.ok_or_else(|| bad("messages", "is required"))?;
    let mut turns = BytesMut::with_capacity(messages.bytes().len() + 64);
    let system = self::messages(split.object_items(messages), &mut turns)?;

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

    let thinking = match effort {
        None => None,
        Some(effort) => {
            let effort =
                as_str(effort).ok_or_else(|| bad("reasoning_effort", "must be a string"))?;
            if effort == "none" {
                Some(None)
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
                Some(Some(budget))
            }
        }
    };

    let mut choice = match tool_choice {
        None => None,
        Some(v) if is_str(v) => Some(match as_str(v).as_deref() {
            Some("auto") => Choice::Auto,
            Some("none") => Choice::None,
            Some("required") => Choice::Any,
            s => {
                return Err(bad(
                    "tool_choice",
                    format!("`{}` is not a tool choice", s.unwrap_or_default()),
                ));
            }
        }),
        Some(v) if is_object(v) => {
            let o = Members::of(v).unwrap_or_default();
            let name = str_is(o.get("type"), "function")
                .then(|| {
                    o.get("function")
                        .and_then(Members::of)
                        .and_then(|f| f.get("name"))
                        .filter(|n| is_str(*n))
                })
                .flatten()
                .ok_or_else(|| untranslatable("tool_choice"))?;
            Some(Choice::Tool(name))
        }
        Some(_) => return Err(bad("tool_choice", "must be a string or an object")),
    };
    // Anthropic carries "at most one tool call" on its tool choice; `auto`
    // is its default, so the choice added here means what the client asked.
    let mut disable_parallel = false;
    if parallel == Some(false) && has_tools {
        let c = choice.get_or_insert(Choice::Auto);
        disable_parallel = !matches!(c, Choice::None);
    }

    let mut out = BytesMut::with_capacity(
        turns.len() + tools.as_ref().map_or(0, BytesMut::len) + model.len() + 256,
    );
    let mut o = Obj::new(&mut out);
    o.field("model", model).field("max_tokens", &max);
    if let Some(s) = stream {
        o.field("stream", &s);
    }
    match system {
        System::None => {}
        System::One(text) => {
            o.field("system", &text);
        }
        System::Blocks(texts) => write_text_blocks(o.key("system"), &texts),
    }
    o.key("messages").extend_from_slice(&turns);
    for (name, value) in numbers {
        o.field(name, &value);
    }
    match stop {
        None => {}
        Some((one, true)) => {
            let list = o.key("stop_sequences");
            list.put_u8(b'[');
            one.write_to(list);
            list.put_u8(b']');
        }
        Some((list, false)) => {
            o.field("stop_sequences", &list);
        }
    }
    if let Some(tools) = &tools {
        o.key("tools").extend_from_slice(tools);
    }
    if let Some(c) = &choice {
        o.object("tool_choice", |t| {
            match c {
                Choice::Auto => t.field("type", "auto"),
                Choice::None => t.field("type", "none"),
                Choice::Any => t.field("type", "any"),
                Choice::Tool(name) => t.field("type", "tool").field("name", name),
            };
            if disable_parallel {
                t.field("disable_parallel_tool_use", &true);
            }
        });
    }
    match thinking {
        None => {}
        Some(None) => {
            o.object("thinking", |t| {
                t.field("type", "disabled");
            });
        }
        Some(Some(budget)) => {
            o.object("thinking", |t| {
                t.field("type", "enabled").field("budget_tokens", &budget);
            });
        }
    }
    if let Some(user) = user {
        o.object("metadata", |m| {
            m.field("user_id", &user);
        });
    }
    o.end();

    let stream = stream.unwrap_or(false);
    Ok(TranslatedRequest {
        body: out.freeze(),
        stream,
        include_usage: stream && include_usage,
    })
}

/// [`request`] of a body already read as a tree: the Converse and Gemini
/// translators, which take the Messages request this one makes as their pivot.
pub(super) fn request_tree(
    req: Map<String, Value>,
    model: &str,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    let body = super::sse::to_bytes(&req);
    let req = raw::body(&body, Some("messages"))
        .map_err(|_| bad("", "the body must be a JSON object"))?;
    request(req, model, options)
}

fn untranslatable(param: &str) -> Error {
    bad(
        param,
        "has no Anthropic Messages counterpart and cannot be translated; remove it or use an OpenAI-compatible deployment",
    )
}

/// A value compared whole (the rare fields accepted only at one value).
fn parsed(v: Raw<'_>) -> Option<Value> {
    serde_json::from_slice(v.bytes()).ok()
}

fn count(v: Raw<'_>, param: &str) -> Result<u64, Error> {
    as_u64(v)
        .filter(|n| *n > 0)
        .ok_or_else(|| bad(param, "must be a positive integer"))
}

/// The top-level `system` the leading system messages make.
enum System<'a> {
    None,
    /// One system message with a string: the string.
    One(Raw<'a>),
    /// Anything else: text blocks.
    Blocks(Vec<Raw<'a>>),
}

/// A `tool` message's content.
enum ToolContent<'a> {
    /// None given: `""`.
    Empty,
    Text(Raw<'a>),
    Blocks(Vec<Raw<'a>>),
}

/// Writes `[{"type":"text","text":…},…]`.
fn write_text_blocks(out: &mut BytesMut, texts: &[Raw<'_>]) {
    out.put_u8(b'[');
    for (k, text) in texts.iter().enumerate() {
        if k > 0 {
            out.put_u8(b',');
        }
        write_text_block(out, *text);
    }
    out.put_u8(b']');
}

fn write_text_block(out: &mut BytesMut, text: Raw<'_>) {
    out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
    text.write_to(out);
    out.put_u8(b'}');
}

/// Leading `system`/`developer` messages become the top-level `system`; the
/// rest become Anthropic turns (consecutive `tool` messages one user turn of
/// `tool_result` blocks), written into `out` as the `messages` array.
fn messages<'a>(
    messages: Option<ObjectItems<'a>>,
    out: &mut BytesMut,
) -> Result<System<'a>, Error> {
    let messages = messages.ok_or_else(|| bad("messages", "must be an array"))?;
    let mut system: Vec<Raw<'a>> = Vec::new();
    let mut system_is_one_string = true;
    let mut started = false;
    let mut turns = 0;
    // The open user turn of `tool_result` blocks, and how many it holds.
    let mut tool_turn: Option<usize> = None;
    out.put_u8(b'[');
    for (i, (_, m)) in messages.into_iter().enumerate() {
        let at = || format!("messages[{i}]");
        let field = |key: &str| format!("messages[{i}].{key}");
        let m = m.ok_or_else(|| bad(&at(), "must be an object"))?;
        let role = m
            .get("role")
            .and_then(as_str)
            .ok_or_else(|| bad(&field("role"), "is required"))?;
        // Fields every role may carry at their empty value.
        for key in ["name", "refusal", "function_call", "audio"] {
            if m.get_some(key).is_some() {
                return Err(untranslatable(&field(key)));
            }
        }
        if role != "tool" && tool_turn.take().is_some() {
            out.extend_from_slice(b"]}");
        }
        match role.as_ref() {
            "system" | "developer" => {
                if started {
                    return Err(bad(
                        &field("role"),
                        "a system message after the conversation started has no place in Anthropic's top-level `system`",
                    ));
                }
                only_keys(&m, &at, &["role", "content"])?;
                match m.get("content") {
                    Some(c) if is_str(c) => system.push(c),
                    Some(c) => {
                        system_is_one_string = false;
                        system.extend(text_parts(c, &|| field("content"))?);
                    }
                    None => return Err(bad(&field("content"), "is required")),
                }
                continue;
            }
            "user" => {
                only_keys(&m, &at, &["role", "content"])?;
                let content = m.get("content").unwrap_or(raw::NULL);
                comma(out, &mut turns);
                out.extend_from_slice(b"{\"role\":\"user\",\"content\":");
                if is_str(content) {
                    content.write_to(out);
                } else if let Some(parts) = items(content) {
                    user_parts(parts, &at, out)?;
                } else {
                    return Err(bad(&field("content"), "must be a string or an array"));
                }
                out.put_u8(b'}');
            }
            "assistant" => {
                // An unsigned reasoning text cannot become an Anthropic thinking
                // block, and Anthropic ignores earlier turns' thinking anyway.
                only_keys(
                    &m,
                    &at,
                    &["role", "content", "tool_calls", "reasoning_content"],
                )?;
                let mut texts = Vec::new();
                match m.get("content") {
                    None => {}
                    Some(c) if is_null(c) || is_empty_str(c) => {}
                    Some(c) if is_str(c) => texts.push(c),
                    Some(c) => texts = text_parts(c, &|| field("content"))?,
                }
                let calls = match m.get_some("tool_calls") {
                    None => None,
                    Some(c) => Some(
                        items(c).ok_or_else(|| bad(&field("tool_calls"), "must be an array"))?,
                    ),
                };
                comma(out, &mut turns);
                out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":");
                match (calls, texts.as_slice()) {
                    (None, [text]) => text.write_to(out),
                    (calls, _) => {
                        out.put_u8(b'[');
                        let mut n = 0;
                        for text in &texts {
                            comma(out, &mut n);
                            write_text_block(out, *text);
                        }
                        for (j, call) in calls.into_iter().flatten().enumerate() {
                            comma(out, &mut n);
                            tool_use(call, &|| format!("messages[{i}].tool_calls[{j}]"), out)?;
                        }
                        out.put_u8(b']');
                    }
                }
                out.put_u8(b'}');
            }
            "tool" => {
                only_keys(&m, &at, &["role", "content", "tool_call_id"])?;
                let id = m
                    .get("tool_call_id")
                    .filter(|v| is_str(*v))
                    .ok_or_else(|| bad(&field("tool_call_id"), "is required"))?;
                let content = match m.get("content") {
                    Some(c) if is_str(c) => ToolContent::Text(c),
                    Some(c) => ToolContent::Blocks(text_parts(c, &|| field("content"))?),
                    None => ToolContent::Empty,
                };
                let n = match &mut tool_turn {
                    Some(n) => n,
                    None => {
                        comma(out, &mut turns);
                        out.extend_from_slice(b"{\"role\":\"user\",\"content\":[");
                        tool_turn.insert(0)
                    }
                };
                comma(out, n);
                out.extend_from_slice(b"{\"type\":\"tool_result\",\"tool_use_id\":");
                id.write_to(out);
                out.extend_from_slice(b",\"content\":");
                match content {
                    ToolContent::Empty => out.extend_from_slice(b"\"\""),
                    ToolContent::Text(text) => text.write_to(out),
                    ToolContent::Blocks(texts) => write_text_blocks(out, &texts),
                }
                out.put_u8(b'}');
            }
            other => {
                return Err(bad(
                    &field("role"),
                    format!("`{other}` has no Anthropic counterpart"),
                ));
            }
        }
        started = true;
    }
    if tool_turn.is_some() {
        out.extend_from_slice(b"]}");
    }
    out.put_u8(b']');
    Ok(match system.len() {
        0 => System::None,
        1 if system_is_one_string => System::One(system[0]),
        _ => System::Blocks(system),
    })
}

fn only_keys(m: &Members<'_>, at: At<'_>, allowed: &[&str]) -> Result<(), Error> {
    match m.unknown(allowed, None) {
        Some(k) => Err(untranslatable(&format!("{}.{k}", at()))),
        None => Ok(()),
    }
}

/// Content that may only hold text: a string or `text` parts → the texts.
fn text_parts<'a>(content: Raw<'a>, at: At<'_>) -> Result<Vec<Raw<'a>>, Error> {
    if is_str(content) {
        return Ok(vec![content]);
    }
    let Some(parts) = items(content) else {
        return Err(bad(&at(), "must be a string or an array of text parts"));
    };
    parts
        .into_iter()
        .enumerate()
        .map(|(j, part)| {
            let at = || format!("{}[{j}]", at());
            let p = Members::of(part).ok_or_else(|| bad(&at(), "must be an object"))?;
            text_part(&p, &at)
        })
        .collect()
}

/// One `text` part → its text; any other part type is refused by name.
fn text_part<'a>(p: &Members<'a>, at: At<'_>) -> Result<Raw<'a>, Error> {
    let kind = p.get("type").and_then(as_str);
    if kind.as_deref() != Some("text") {
        return Err(bad(
            &format!("{}.type", at()),
            format!(
                "`{}` content parts have no Anthropic counterpart here",
                kind.as_deref().unwrap_or("?")
            ),
        ));
    }
    only_keys(p, at, &["type", "text"])?;
    p.get("text")
        .filter(|t| is_str(*t))
        .ok_or_else(|| bad(&format!("{}.text", at()), "must be a string"))
}

/// A user message's parts → Anthropic blocks, written as an array.
fn user_parts(parts: Vec<Raw<'_>>, at: At<'_>, out: &mut BytesMut) -> Result<(), Error> {
    out.put_u8(b'[');
    for (j, part) in parts.into_iter().enumerate() {
        let at = || format!("{}.content[{j}]", at());
        let p = Members::of(part).ok_or_else(|| bad(&at(), "must be an object"))?;
        if j > 0 {
            out.put_u8(b',');
        }
        if str_is(p.get("type"), "image_url") {
            image(&p, &at, out)?;
        } else {
            write_text_block(out, text_part(&p, &at)?);
        }
    }
    out.put_u8(b']');
    Ok(())
}

/// An OpenAI `image_url` part → an Anthropic `image` block (base64 for a
/// `data:` URL, `url` for http(s)).
fn image(p: &Members<'_>, at: At<'_>, out: &mut BytesMut) -> Result<(), Error> {
    only_keys(p, at, &["type", "image_url"])?;
    let field = |key: &str| format!("{}.image_url{key}", at());
    let (url, detail) = match p.get("image_url") {
        Some(u) if is_str(u) => (as_str(u).unwrap_or_default(), None),
        Some(o) if is_object(o) => {
            let o = Members::of(o).unwrap_or_default();
            only_keys(&o, &|| field(""), &["url", "detail"])?;
            let url = o
                .get("url")
                .and_then(as_str)
                .ok_or_else(|| bad(&field(".url"), "is required"))?;
            (url, o.get("detail").and_then(as_str))
        }
        _ => return Err(bad(&field(""), "is required")),
    };
    if detail.is_some_and(|d| d != "auto") {
        return Err(untranslatable(&field(".detail")));
    }
    let mut block = Obj::new(out);
    block.field("type", "image");
    if let Some(rest) = url.strip_prefix("data:") {
        let (media, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| bad(&field(".url"), "a data: URL must be base64"))?;
        block.object("source", |s| {
            s.field("type", "base64")
                .field("media_type", media)
                .field("data", data);
        });
    } else if url.starts_with("https://") || url.starts_with("http://") {
        block.object("source", |s| {
            s.field("type", "url").field("url", url.as_ref());
        });
    } else {
        return Err(bad(&field(".url"), "must be a data: or http(s) URL"));
    }
    block.end();
    Ok(())
}

/// An assistant's `tool_calls[j]` → a `tool_use` block, written.
fn tool_use(call: Raw<'_>, at: At<'_>, out: &mut BytesMut) -> Result<(), Error> {
    let field = |key: &str| format!("{}.{key}", at());
    let c = Members::of(call).ok_or_else(|| bad(&at(), "must be an object"))?;
    only_keys(&c, at, &["id", "type", "function"])?;
    if c.get("type").is_some_and(|t| !str_is(Some(t), "function")) {
        return Err(untranslatable(&field("type")));
    }
    let id = c
        .get("id")
        .filter(|v| is_str(*v))
        .ok_or_else(|| bad(&field("id"), "is required"))?;
    let f = c
        .get("function")
        .and_then(Members::of)
        .ok_or_else(|| bad(&field("function"), "is required"))?;
    let name = f
        .get("name")
        .filter(|v| is_str(*v))
        .ok_or_else(|| bad(&field("function.name"), "is required"))?;
    let args = f.get("arguments").and_then(as_str).unwrap_or_default();
    let not_json = || {
        bad(
            &field("function.arguments"),
            "is not valid JSON; Anthropic's tool_use input must be an object",
        )
    };
    // The arguments' text, one JSON object, becomes the input as it is.
    let input = args.trim();
    if !input.is_empty() && !raw::is_json_object(input.as_bytes()) {
        return Err(match serde_json::from_str::<Value>(input) {
            Ok(_) => bad(
                &field("function.arguments"),
                "must encode a JSON object (Anthropic's tool_use input)",
            ),
            Err(_) => not_json(),
        });
    }
    let mut block = Obj::new(out);
    block
        .field("type", "tool_use")
        .field("id", &id)
        .field("name", &name);
    if input.is_empty() {
        block.object("input", |_| {});
    } else {
        block.key("input").extend_from_slice(input.as_bytes());
    }
    block.end();
    Ok(())
}

/// OpenAI function tools → Anthropic tools, written as an array; and how many.
fn tools(tools: Raw<'_>) -> Result<(BytesMut, usize), Error> {
    let tools = items(tools).ok_or_else(|| bad("tools", "must be an array"))?;
    let mut out = BytesMut::with_capacity(tools.iter().map(|t| t.bytes().len()).sum::<usize>() + 2);
    out.put_u8(b'[');
    let n = tools.len();
    for (i, tool) in tools.into_iter().enumerate() {
        let at = || format!("tools[{i}]");
        let field = |key: &str| format!("tools[{i}].{key}");
        let t = Members::of(tool).ok_or_else(|| bad(&at(), "must be an object"))?;
        only_keys(&t, &at, &["type", "function"])?;
        if !str_is(t.get("type"), "function") {
            return Err(untranslatable(&field("type")));
        }
        let f = t
            .get("function")
            .and_then(Members::of)
            .ok_or_else(|| bad(&field("function"), "is required"))?;
        only_keys(
            &f,
            &|| field("function"),
            &["name", "description", "parameters", "strict"],
        )?;
        if f.get("strict").is_some_and(|s| s.is("true")) {
            return Err(untranslatable(&field("function.strict")));
        }
        let name = f
            .get("name")
            .filter(|n| is_str(*n))
            .ok_or_else(|| bad(&field("function.name"), "is required"))?;
        if i > 0 {
            out.put_u8(b',');
        }
        let mut o = Obj::new(&mut out);
        o.field("name", &name);
        match f.get_some("parameters") {
            Some(p) => o.field(
                "input_schema",
                &checked(p, &|| field("function.parameters"))?,
            ),
            None => o.object("input_schema", |s| {
                s.field("type", "object").object("properties", |_| {});
            }),
        };
        if let Some(d) = f.get_some("description") {
            o.field(
                "description",
                &checked(d, &|| field("function.description"))?,
            );
        }
        o.end();
    }
    out.put_u8(b']');
    Ok((out, n))
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

/// Reads an Anthropic `usage` object from its text (missing or null fields
/// leave the count as it was), as [`read_usage`] reads one from a tree.
fn read_usage_raw(u: Raw<'_>, into: &mut Usage) {
    let u = Members::of(u).unwrap_or_default();
    for (key, count) in [
        ("input_tokens", &mut into.input_tokens),
        ("output_tokens", &mut into.output_tokens),
        ("cache_read_input_tokens", &mut into.cache_read_tokens),
        (
            "cache_creation_input_tokens",
            &mut into.cache_creation_tokens,
        ),
    ] {
        if let Some(v) = u.get_some(key) {
            *count = raw::tokens(Some(v));
        }
    }
}

/// Translates a whole Anthropic answer (its members, read without a tree)
/// into a Chat Completions answer; the texts are copied as the JSON
/// literals they came in.
pub(super) fn response(
    mut m: Members<'_>,
    size: usize,
    ctx: &ResponseContext,
) -> Result<Translated, TranslateError> {
    // `content`'s items, if split as the answer was read.
    let split = m.take_split();
    let kind = m.get("type").and_then(as_str);
    if kind.as_deref() == Some("error") {
        let e: Value = m
            .get("error")
            .and_then(|e| serde_json::from_slice(e.bytes()).ok())
            .unwrap_or_default();
        let field = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        return Err(TranslateError::Upstream {
            kind: field("type"),
            message: field("message"),
        });
    }
    if kind.as_deref() != Some("message") {
        return Err(TranslateError::bad("the answer is not a message"));
    }
    fn string<'a>(v: Option<Raw<'a>>, key: &str) -> Result<Raw<'a>, TranslateError> {
        v.filter(|v| is_str(*v))
            .ok_or_else(|| TranslateError::bad(format!("`{key}` is missing or not a string")))
    }
    let id = string(m.get("id"), "id")?;
    let content = m
        .get("content")
        .and_then(|c| split.object_items(c))
        .ok_or_else(|| TranslateError::bad("`content` is missing"))?;
    // The texts of the text and thinking blocks, joined as literals.
    let (mut text, mut reasoning): (Option<Vec<Raw<'_>>>, Option<Vec<Raw<'_>>>) = (None, None);
    let mut calls = Vec::new();
    fn text_of<'a>(b: &Members<'a>, key: &str) -> Option<Raw<'a>> {
        b.get(key).filter(|t| is_str(*t) && !is_empty_str(*t))
    }
    for (_, b) in content {
        let b = b.unwrap_or_default();
        let kind = b.get("type").and_then(as_str).unwrap_or_default();
        match kind.as_ref() {
            "text" => text
                .get_or_insert_with(Vec::new)
                .extend(text_of(&b, "text")),
            "thinking" => reasoning
                .get_or_insert_with(Vec::new)
                .extend(text_of(&b, "thinking")),
            // Encrypted reasoning has no readable text for an OpenAI client.
            "redacted_thinking" => {}
            "tool_use" => {
                let input = match b.get("input") {
                    Some(input) if !numbers_in_range(input) => {
                        return Err(TranslateError::bad("a tool_use input is not JSON"));
                    }
                    Some(input) => input.text(),
                    None => "{}",
                };
                calls.push((
                    string(b.get("id"), "id")?,
                    string(b.get("name"), "name")?,
                    input,
                ));
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
        .and_then(as_str)
        .ok_or_else(|| TranslateError::bad("`stop_reason` is missing"))?;
    let finish = finish_reason(&stop)?;
    let mut usage = Usage::default();
    let reported = m.get("usage").filter(|u| is_object(*u));
    if let Some(u) = reported {
        read_usage_raw(u, &mut usage);
    }
    // Written as it is read, without building the answer as a tree.
    let mut out = BytesMut::with_capacity(320 + size + calls.len() * 16);
    let mut msg_body = Obj::new(&mut out);
    msg_body
        .field("id", &id)
        .field("object", "chat.completion")
        .field("created", &ctx.created)
        .field("model", &*ctx.model);
    let choices = msg_body.key("choices");
    choices.put_u8(b'[');
    let mut choice = Obj::new(&mut *choices);
    choice.field("index", &0).object("message", |msg| {
        msg.field("role", "assistant");
        match &text {
            Some(parts) => raw::write_joined(msg.key("content"), parts),
            None => {
                msg.field("content", &Value::Null);
            }
        }
        msg.field("refusal", &Value::Null);
        if let Some(parts) = &reasoning {
            raw::write_joined(msg.key("reasoning_content"), parts);
        }
        if !calls.is_empty() {
            let list = msg.key("tool_calls");
            list.put_u8(b'[');
            for (k, (id, name, arguments)) in calls.iter().enumerate() {
                if k > 0 {
                    list.put_u8(b',');
                }
                let mut call = Obj::new(&mut *list);
                call.field("id", id)
                    .field("type", "function")
                    .object("function", |f| {
                        f.field("name", name);
                        // The input's JSON text, as an OpenAI `arguments` string.
                        write_str(f.key("arguments"), arguments);
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
    msg_body.object("usage", |u| write_openai_usage(u, &usage));
    msg_body.end();
    Ok(Translated {
        body: out.freeze(),
        usage: reported.map(|_| usage),
    })
}

/// [`response`] of an answer already read as a tree (the Messages answer the
/// Converse and Gemini translators make as their pivot).
pub(super) fn response_tree(
    v: &Value,
    ctx: &ResponseContext,
) -> Result<Translated, TranslateError> {
    let body = super::sse::to_bytes(v);
    let m = raw::body(&body, Some("content"))
        .map_err(|_| TranslateError::bad("the answer is not a JSON object"))?;
    response(m, body.len(), ctx)
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
    let (index, rest) = super::sse::leading_index(rest)?;
    let rest = rest.strip_prefix(br#","delta":{"type":""#)?;
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
        // The other deltas (a named event of another kind is not tried:
        // reading it as a delta would read it whole for nothing).
        if matches!(event.name, "" | "content_block_delta")
            && let Ok(fast) = serde_json::from_slice::<DeltaEvent<'_>>(event.data)
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
