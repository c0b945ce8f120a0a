//! The Bedrock Converse side shared by both client families: a request in
//! Anthropic Messages' shape → a Converse request, a Converse answer → an
//! Anthropic message, and a ConverseStream (binary
//! `application/vnd.amazon.eventstream` frames) → Anthropic events, written
//! as SSE for an Anthropic client or handed to the Anthropic → OpenAI
//! stream translator for an OpenAI one.
//!
//! Anthropic Messages is the pivot because Converse is its near twin
//! (content blocks, `toolUse`/`toolResult`, a top-level `system`, the same
//! stop reasons, cache points, signed reasoning): an OpenAI Chat client's
//! request goes Chat → Messages (`chat_to_messages`, with its refusals) →
//! Converse, and the answer comes back the same way. The cost is one more
//! JSON encode and parse per request and per stream event; the stream stays
//! O(1) (no content is accumulated on either step).
//!
//! The event stream's framing (prelude, headers, CRCs) is decoded by
//! `aws-smithy-eventstream`; [`EventStreamDecoder`] only holds the bytes of
//! the one frame being read, capped.

use std::borrow::Cow;

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::messages_request::{Fields, Thinking, text_of};
use super::sse::{Serialized, SseEvent, write_event, write_json};
use super::{
    Options, Progress, ResponseContext, TranslateError, TranslatedRequest, Usage, bad, tokens,
};
use crate::error::{Error, Reason};

// ---------------------------------------------------------------- request

fn untranslatable(param: &str) -> Error {
    bad(
        param,
        "has no Bedrock Converse counterpart and cannot be translated; remove it or use another deployment",
    )
}

/// Translates a request in Anthropic Messages' shape into a Converse
/// request body (the model goes in the URL, the stream flag picks
/// `converse` or `converse-stream`). Field names in errors are the
/// Anthropic request's.
pub(super) fn request(
    req: Map<String, Value>,
    _options: &Options,
) -> Result<TranslatedRequest, Error> {
    let f = Fields::read(req, untranslatable)?;
    if f.top_k.is_some() {
        return Err(untranslatable("top_k"));
    }
    let mut out = Map::new();
    let mut inference = Map::new();
    let mut additional = Map::new();
    if let Some(n) = f.max_tokens {
        inference.insert("maxTokens".into(), n.into());
    }
    if let Some(t) = f.temperature {
        inference.insert("temperature".into(), t);
    }
    if let Some(p) = f.top_p {
        inference.insert("topP".into(), p);
    }
    if let Some(stop) = f.stop_sequences {
        inference.insert("stopSequences".into(), stop);
    }
    if let Some(user) = f.user_id {
        out.insert("requestMetadata".into(), json!({ "user_id": user }));
    }
    if let Some(Thinking::Enabled(budget)) = f.thinking {
        // Bedrock carries a model's own reasoning switch in
        // `additionalModelRequestFields` (Anthropic models: `thinking`).
        additional.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget}),
        );
    }
    let (stream, system, tools, mut choice) = (f.stream, f.system, f.tools, f.tool_choice);
    if let Some(system) = system {
        let blocks = match system {
            Value::String(s) => vec![json!({ "text": s })],
            Value::Array(blocks) => {
                let mut out = Vec::new();
                for (i, b) in blocks.into_iter().enumerate() {
                    let at = format!("system[{i}]");
                    let Value::Object(mut b) = b else {
                        return Err(bad(&at, "must be an object"));
                    };
                    let cache = cache_point(&mut b, &at)?;
                    if b.get("type").and_then(Value::as_str) != Some("text") {
                        return Err(bad(&format!("{at}.type"), "must be `text`"));
                    }
                    only_keys(&b, &at, &["type", "text"])?;
                    out.push(json!({ "text": text_of(&b, &at)? }));
                    out.extend(cache);
                }
                out
            }
            _ => return Err(bad("system", "must be a string or an array of text blocks")),
        };
        out.insert("system".into(), Value::Array(blocks));
    }
    let mut turns = Vec::with_capacity(f.messages.len());
    for (i, m) in f.messages.into_iter().enumerate() {
        turns.push(turn(m, &format!("messages[{i}]"))?);
    }
    out.insert("messages".into(), Value::Array(turns));
    if !inference.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(inference));
    }
    if let Some(tools) = tools {
        let mut config = Map::new();
        config.insert("tools".into(), Value::Array(tool_specs(tools)?));
        // A choice goes up only when the client sent one.
        if let Some(c) = choice.take() {
            config.insert("toolChoice".into(), tool_choice(c)?);
        }
        out.insert("toolConfig".into(), Value::Object(config));
    }
    if !additional.is_empty() {
        out.insert(
            "additionalModelRequestFields".into(),
            Value::Object(additional),
        );
    }
    Ok(TranslatedRequest {
        body: super::sse::to_bytes(&out),
        stream,
        include_usage: false,
    })
}

fn only_keys(m: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), Error> {
    super::messages_request::only_keys(m, at, allowed, untranslatable)
}

/// Removes a block's `cache_control` and returns the Converse cache point
/// that follows the block for it (`ephemeral` only).
fn cache_point(b: &mut Map<String, Value>, at: &str) -> Result<Option<Value>, Error> {
    match b.remove("cache_control") {
        None | Some(Value::Null) => Ok(None),
        Some(c) if c.get("type").and_then(Value::as_str) == Some("ephemeral") => {
            if c.get("ttl").is_some_and(|t| !t.is_null()) {
                return Err(untranslatable(&format!("{at}.cache_control.ttl")));
            }
            Ok(Some(json!({"cachePoint": {"type": "default"}})))
        }
        Some(_) => Err(untranslatable(&format!("{at}.cache_control.type"))),
    }
}

/// One Anthropic turn → one Converse message.
fn turn(message: Value, at: &str) -> Result<Value, Error> {
    let Value::Object(m) = message else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(&m, at, &["role", "content"])?;
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        _ => return Err(bad(&format!("{at}.role"), "must be `user` or `assistant`")),
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => vec![json!({ "text": s })],
        Some(Value::Array(blocks)) => {
            let mut out = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                block(b.clone(), &format!("{at}.content[{j}]"), &mut out)?;
            }
            out
        }
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or an array",
            ));
        }
    };
    Ok(json!({"role": role, "content": content}))
}

/// One Anthropic content block → Converse content block(s).
fn block(b: Value, at: &str, out: &mut Vec<Value>) -> Result<(), Error> {
    let Value::Object(mut b) = b else {
        return Err(bad(at, "must be an object"));
    };
    let cache = cache_point(&mut b, at)?;
    match b.get("type").and_then(Value::as_str) {
        Some("text") => {
            only_keys(&b, at, &["type", "text"])?;
            out.push(json!({ "text": text_of(&b, at)? }));
        }
        Some("image") => {
            only_keys(&b, at, &["type", "source"])?;
            out.push(image(&b, at)?);
        }
        Some("tool_use") => {
            only_keys(&b, at, &["type", "id", "name", "input"])?;
            let (Some(id), Some(name)) = (
                b.get("id").and_then(Value::as_str),
                b.get("name").and_then(Value::as_str),
            ) else {
                return Err(bad(at, "a tool_use block needs `id` and `name`"));
            };
            let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
            out.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
        }
        Some("tool_result") => {
            only_keys(&b, at, &["type", "tool_use_id", "content", "is_error"])?;
            let id = b
                .get("tool_use_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.tool_use_id"), "is required"))?;
            let content = match b.get("content") {
                None | Some(Value::Null) => vec![],
                Some(Value::String(s)) => vec![json!({ "text": s })],
                Some(Value::Array(parts)) => {
                    let mut content = Vec::new();
                    for (k, p) in parts.iter().enumerate() {
                        let pat = format!("{at}.content[{k}]");
                        match p.get("type").and_then(Value::as_str) {
                            Some("text") => {
                                let p = p
                                    .as_object()
                                    .ok_or_else(|| bad(&pat, "must be an object"))?;
                                only_keys(p, &pat, &["type", "text"])?;
                                content.push(json!({ "text": text_of(p, &pat)? }));
                            }
                            Some("image") => {
                                let p = p
                                    .as_object()
                                    .ok_or_else(|| bad(&pat, "must be an object"))?;
                                only_keys(p, &pat, &["type", "source"])?;
                                content.push(image(p, &pat)?);
                            }
                            _ => return Err(untranslatable(&format!("{pat}.type"))),
                        }
                    }
                    content
                }
                Some(_) => {
                    return Err(bad(
                        &format!("{at}.content"),
                        "must be a string or an array",
                    ));
                }
            };
            let mut result = json!({"toolUseId": id, "content": content});
            match b.get("is_error") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => result["status"] = "error".into(),
                Some(_) => return Err(bad(&format!("{at}.is_error"), "must be a boolean")),
            }
            out.push(json!({ "toolResult": result }));
        }
        Some("thinking") => {
            only_keys(&b, at, &["type", "thinking", "signature"])?;
            let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
            let mut reasoning = json!({ "text": text });
            if let Some(s) = b
                .get("signature")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
            {
                reasoning["signature"] = s.into();
            }
            out.push(json!({"reasoningContent": {"reasoningText": reasoning}}));
        }
        Some("redacted_thinking") => {
            only_keys(&b, at, &["type", "data"])?;
            let data = b
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.data"), "must be a string"))?;
            out.push(json!({"reasoningContent": {"redactedContent": data}}));
        }
        _ => return Err(untranslatable(&format!("{at}.type"))),
    }
    out.extend(cache);
    Ok(())
}

/// The image formats Converse takes, by media type.
const IMAGE_FORMATS: [(&str, &str); 4] = [
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
];

/// An Anthropic `image` block → a Converse `image` (bytes only: a URL
/// source is refused, Converse cannot fetch it).
fn image(b: &Map<String, Value>, at: &str) -> Result<Value, Error> {
    let sat = format!("{at}.source");
    let Some(Value::Object(src)) = b.get("source") else {
        return Err(bad(&sat, "is required"));
    };
    match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            only_keys(src, &sat, &["type", "media_type", "data"])?;
            let media = src
                .get("media_type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{sat}.media_type"), "is required"))?;
            let format = IMAGE_FORMATS
                .iter()
                .find(|(m, _)| *m == media)
                .map(|(_, f)| *f)
                .ok_or_else(|| {
                    bad(
                        &format!("{sat}.media_type"),
                        format!(
                            "`{media}` is not an image format Bedrock takes (png, jpeg, gif, webp)"
                        ),
                    )
                })?;
            let data = src
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{sat}.data"), "is required"))?;
            Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
        }
        Some("url") => Err(url_image(&format!("{sat}.url"))),
        _ => Err(untranslatable(&format!("{sat}.type"))),
    }
}

/// The refusal of an image given by URL (Converse takes the image's bytes only).
pub(super) fn url_image(param: &str) -> Error {
    bad(
        param,
        "Bedrock Converse takes images as bytes only: send the image base64-encoded (a data: URL or a base64 source), not a URL",
    )
}

/// Anthropic custom tools → Converse `toolSpec`s (a tool's `cache_control`
/// becomes a cache point after it).
fn tool_specs(tools: Value) -> Result<Vec<Value>, Error> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(mut t) = tool else {
            return Err(bad(&at, "must be an object"));
        };
        let cache = cache_point(&mut t, &at)?;
        if t.get("type").is_some_and(|k| !k.is_null() && k != "custom") {
            return Err(untranslatable(&format!("{at}.type")));
        }
        only_keys(&t, &at, &["type", "name", "description", "input_schema"])?;
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{at}.name"), "is required"))?;
        let schema = t
            .get("input_schema")
            .filter(|s| s.is_object())
            .ok_or_else(|| bad(&format!("{at}.input_schema"), "is required"))?;
        let mut spec = json!({"name": name, "inputSchema": {"json": schema}});
        if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
            spec["description"] = d.clone();
        }
        out.push(json!({ "toolSpec": spec }));
        out.extend(cache);
    }
    Ok(out)
}

/// Anthropic's `tool_choice` → Converse's `toolChoice`.
fn tool_choice(c: Value) -> Result<Value, Error> {
    let Value::Object(c) = c else {
        return Err(bad("tool_choice", "must be an object"));
    };
    if c.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        return Err(untranslatable("tool_choice.disable_parallel_tool_use"));
    }
    only_keys(
        &c,
        "tool_choice",
        &["type", "name", "disable_parallel_tool_use"],
    )?;
    Ok(match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!({"auto": {}}),
        Some("any") => json!({"any": {}}),
        Some("tool") => {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name", "is required"))?;
            json!({"tool": {"name": name}})
        }
        Some("none") => {
            return Err(bad(
                "tool_choice.type",
                "Bedrock Converse has no `none` tool choice; send the request without `tools` instead",
            ));
        }
        _ => return Err(bad("tool_choice.type", "must be auto, any, tool or none")),
    })
}

// ---------------------------------------------------------------- answer

/// Converse's `stopReason` → Anthropic's `stop_reason`.
pub(super) fn stop_reason(stop: &str) -> Result<&'static str, TranslateError> {
    Ok(match stop {
        "end_turn" => "end_turn",
        "tool_use" => "tool_use",
        "max_tokens" => "max_tokens",
        "stop_sequence" => "stop_sequence",
        "model_context_window_exceeded" => "model_context_window_exceeded",
        // A guardrail or a content filter stopped the answer.
        "guardrail_intervened" | "content_filtered" => "refusal",
        other => {
            return Err(TranslateError::bad(format!(
                "unknown Converse stopReason `{other}`"
            )));
        }
    })
}

/// Reads a Converse `usage` object: `inputTokens` excludes the cache reads
/// (`cacheReadInputTokens`) and writes (`cacheWriteInputTokens`), as
/// Anthropic's `input_tokens` does.
pub(super) fn read_usage(u: &Value) -> Usage {
    Usage {
        input_tokens: tokens(u.get("inputTokens")),
        output_tokens: tokens(u.get("outputTokens")),
        cache_read_tokens: tokens(u.get("cacheReadInputTokens")),
        cache_creation_tokens: tokens(u.get("cacheWriteInputTokens")),
    }
}

/// A message id: Converse answers carry none.
fn message_id() -> String {
    format!(
        "msg_bdrk_{:016x}{:08x}",
        fastrand::u64(..),
        fastrand::u32(..)
    )
}

/// Translates a whole Converse answer into an Anthropic message (as a
/// JSON value) and the usage it reported.
pub(super) fn response(
    v: &Value,
    ctx: &ResponseContext,
) -> Result<(Value, Option<Usage>), TranslateError> {
    let content = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::bad("`output.message.content` is missing"))?;
    let mut blocks = Vec::with_capacity(content.len());
    for b in content {
        let b = b
            .as_object()
            .ok_or_else(|| TranslateError::bad("a content block is not an object"))?;
        if let Some(t) = b.get("text") {
            let t = t
                .as_str()
                .ok_or_else(|| TranslateError::bad("a `text` block is not a string"))?;
            blocks.push(json!({"type": "text", "text": t}));
        } else if let Some(t) = b.get("toolUse") {
            let (Some(id), Some(name)) = (
                t.get("toolUseId").and_then(Value::as_str),
                t.get("name").and_then(Value::as_str),
            ) else {
                return Err(TranslateError::bad(
                    "a toolUse without `toolUseId` or `name`",
                ));
            };
            let input = t.get("input").cloned().unwrap_or_else(|| json!({}));
            blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
        } else if let Some(r) = b.get("reasoningContent") {
            if let Some(t) = r.get("reasoningText") {
                blocks.push(json!({"type": "thinking",
                    "thinking": t.get("text").and_then(Value::as_str).unwrap_or(""),
                    "signature": t.get("signature").and_then(Value::as_str).unwrap_or("")}));
            } else if let Some(d) = r.get("redactedContent").and_then(Value::as_str) {
                blocks.push(json!({"type": "redacted_thinking", "data": d}));
            } else {
                return Err(TranslateError::bad(
                    "a reasoningContent block of an unknown kind",
                ));
            }
        } else {
            let kind = b.keys().next().map_or("?", String::as_str);
            return Err(TranslateError::bad(format!(
                "a `{kind}` content block has no counterpart in the client's API"
            )));
        }
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::bad("`stopReason` is missing"))?;
    let usage = v.get("usage").filter(|u| u.is_object()).map(read_usage);
    let message = json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": &*ctx.model,
        "content": blocks,
        "stop_reason": stop_reason(stop)?,
        "stop_sequence": null,
        "usage": usage.unwrap_or_default().anthropic(),
    });
    Ok((message, usage))
}

/// The reason of a Bedrock exception (its `x-amzn-ErrorType`, or an event
/// stream's `:exception-type`, whose first letter is lower case), for the
/// errors a stream ends with. `None`: not a Bedrock exception name.
pub(crate) fn exception_reason(kind: &str) -> Option<Reason> {
    let mut name = kind.split(':').next().unwrap_or(kind).to_owned();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    Some(match name.as_str() {
        "ThrottlingException" | "ModelNotReadyException" | "ServiceQuotaExceededException" => {
            Reason::UpstreamRateLimited
        }
        "ServiceUnavailableException" => Reason::UpstreamUnavailable,
        "ModelTimeoutException" => Reason::UpstreamTimeout,
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException" => Reason::UpstreamAuthFailed,
        "ResourceNotFoundException" => Reason::UpstreamModelNotFound,
        "ValidationException" => Reason::UpstreamRejected,
        "InternalServerException" | "ModelStreamErrorException" | "ModelErrorException" => {
            Reason::UpstreamError
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------- event stream

/// The shortest frame: the prelude (total length, headers length, CRC) and the message CRC.
const MIN_FRAME: usize = 16;

/// Splits an `application/vnd.amazon.eventstream` byte stream into
/// messages with `aws-smithy-eventstream` (which checks the prelude and
/// message CRCs), holding at most one frame, capped: an `event` message is
/// handed on as its `:event-type` and JSON payload; an `exception` or
/// `error` message is the upstream's error.
#[derive(Debug)]
pub struct EventStreamDecoder {
    cap: usize,
    frames: MessageFrameDecoder,
    buf: BytesMut,
}

impl EventStreamDecoder {
    /// A decoder that refuses a frame larger than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        EventStreamDecoder {
            cap,
            frames: MessageFrameDecoder::new(),
            buf: BytesMut::new(),
        }
    }

    /// Reads `chunk`, calling `on_event` for every event message it completes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        self.buf.extend_from_slice(chunk);
        // The prelude's first field is the frame's total length: a frame
        // over the cap is refused before it is held, and the decoder is
        // handed whole frames only (it checks the prelude and message CRCs).
        while let Some(len) = self.buf.first_chunk::<4>() {
            let total = u32::from_be_bytes(*len) as usize;
            if total > self.cap {
                return Err(TranslateError::EventTooLarge { cap: self.cap });
            }
            if total < MIN_FRAME {
                return Err(TranslateError::bad(
                    "a malformed event-stream frame (too short)",
                ));
            }
            if self.buf.len() < total {
                break;
            }
            let frame = self.frames.decode_frame(&mut self.buf).map_err(|e| {
                TranslateError::bad(format!("a malformed event-stream frame ({e})"))
            })?;
            match frame {
                DecodedFrame::Complete(message) => dispatch(&message, on_event)?,
                DecodedFrame::Incomplete => {
                    return Err(TranslateError::bad("a malformed event-stream frame"));
                }
            }
        }
        if self.buf.is_empty() && self.buf.capacity() > 16 * 1024 {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// The input ended: bytes of an unfinished frame are a cut.
    pub fn finish(&mut self) -> Result<(), TranslateError> {
        if self.buf.has_remaining() {
            return Err(TranslateError::Truncated);
        }
        Ok(())
    }

    /// Bytes held now: at most the cap (one unfinished frame) plus one chunk.
    pub fn buffered(&self) -> usize {
        self.buf.capacity()
    }
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

fn dispatch(
    message: &Message,
    on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
) -> Result<(), TranslateError> {
    match header(message, ":message-type") {
        Some("event") => {
            let name = header(message, ":event-type")
                .ok_or_else(|| TranslateError::bad("an event without `:event-type`"))?;
            on_event(SseEvent {
                name,
                data: message.payload(),
            })
        }
        Some("exception") => {
            let kind = header(message, ":exception-type").unwrap_or("exception");
            let text = serde_json::from_slice::<Value>(message.payload())
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .or_else(|| v.get("Message"))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            Err(TranslateError::Upstream {
                kind: kind.to_owned(),
                message: text,
            })
        }
        Some("error") => Err(TranslateError::Upstream {
            kind: header(message, ":error-code").unwrap_or("error").to_owned(),
            message: header(message, ":error-message").unwrap_or("").to_owned(),
        }),
        _ => Err(TranslateError::bad(
            "an event-stream message without a known `:message-type`",
        )),
    }
}

// ---------------------------------------------------------------- stream

/// A ConverseStream event's payload, read without building a tree.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "contentBlockIndex", default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(default)]
    start: Option<Value>,
    #[serde(rename = "stopReason", borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(rename = "toolUse", borrow, default)]
    tool_use: Option<ToolUseDelta<'a>>,
    #[serde(rename = "reasoningContent", borrow, default)]
    reasoning: Option<ReasoningDelta<'a>>,
}

#[derive(Deserialize)]
struct ToolUseDelta<'a> {
    #[serde(borrow, default)]
    input: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ReasoningDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(rename = "redactedContent", borrow, default)]
    redacted: Option<Cow<'a, str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before `messageStart`.
    Start,
    /// Between `messageStart` and `messageStop`.
    Body,
    /// After `messageStop`, before `metadata`.
    Stopped,
    /// After `metadata`: the stream is complete.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Redacted,
    Tool,
}

/// Where the Anthropic events go (shared with the Gemini translator).
#[derive(Debug)]
pub(super) enum Sink {
    /// An Anthropic client: written as SSE.
    Anthropic,
    /// An OpenAI client: through the Anthropic → OpenAI translator (the
    /// event's JSON written into `scratch`, reused).
    Chat {
        inner: Box<super::chat_to_messages::Stream>,
        scratch: BytesMut,
    },
}

impl Sink {
    /// A sink for an OpenAI Chat client.
    pub(super) fn chat(ctx: ResponseContext) -> Self {
        Sink::Chat {
            inner: Box::new(super::chat_to_messages::Stream::new(ctx)),
            scratch: BytesMut::new(),
        }
    }

    /// Bytes held between events.
    pub(super) fn buffered(&self) -> usize {
        match self {
            Sink::Anthropic => 0,
            Sink::Chat { inner, scratch } => inner.buffered() + scratch.capacity(),
        }
    }

    pub(super) fn emit(
        &mut self,
        name: &str,
        value: &impl Serialize,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        match self {
            Sink::Anthropic => {
                write_event(out, name, &Serialized(value));
                Ok(())
            }
            Sink::Chat { inner, scratch } => {
                scratch.clear();
                write_json(scratch, &Serialized(value));
                let r = inner.event(
                    SseEvent {
                        name,
                        data: scratch,
                    },
                    out,
                    progress,
                );
                if scratch.capacity() > 16 * 1024 {
                    *scratch = BytesMut::new();
                }
                r
            }
        }
    }
}

/// ConverseStream events → the client's events. State: the phase, the open
/// block, counters, the stop reason and usage; never any content.
#[derive(Debug)]
pub(super) struct Stream {
    ctx: ResponseContext,
    sink: Sink,
    phase: Phase,
    /// The open block: its Converse `contentBlockIndex` and kind.
    open: Option<(u64, Block)>,
    /// The index of the next Anthropic content block.
    next_block: u64,
    stop: Option<&'static str>,
}

impl Stream {
    /// A stream for an Anthropic client.
    pub(super) fn to_messages(ctx: ResponseContext) -> Self {
        Stream::new(ctx, Sink::Anthropic)
    }

    /// A stream for an OpenAI Chat client.
    pub(super) fn to_chat(ctx: ResponseContext) -> Self {
        let sink = Sink::chat(ctx.clone());
        Stream::new(ctx, sink)
    }

    fn new(ctx: ResponseContext, sink: Sink) -> Self {
        Stream {
            ctx,
            sink,
            phase: Phase::Start,
            open: None,
            next_block: 0,
            stop: None,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.sink.buffered()
    }

    pub(super) fn event(
        &mut self,
        event: SseEvent<'_>,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        let ev: Event<'_> = serde_json::from_slice(event.data).map_err(|_| {
            TranslateError::bad(format!(
                "a `{}` event's payload is not a JSON object of its shape",
                event.name
            ))
        })?;
        match (self.phase, event.name) {
            (Phase::Start, "messageStart") => {
                self.phase = Phase::Body;
                let start = json!({"type": "message_start", "message": {
                    "id": message_id(), "type": "message", "role": "assistant",
                    "model": &*self.ctx.model, "content": [], "stop_reason": null,
                    "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0},
                }});
                self.sink.emit("message_start", &start, out, progress)
            }
            (Phase::Body, "contentBlockStart") => {
                let index = index(&ev)?;
                let tool = ev
                    .start
                    .as_ref()
                    .and_then(|s| s.get("toolUse"))
                    .ok_or_else(|| {
                        TranslateError::bad("a contentBlockStart that is not a toolUse")
                    })?;
                let (Some(id), Some(name)) = (
                    tool.get("toolUseId").and_then(Value::as_str),
                    tool.get("name").and_then(Value::as_str),
                ) else {
                    return Err(TranslateError::bad(
                        "a toolUse start without `toolUseId` or `name`",
                    ));
                };
                self.close(out, progress)?;
                let start = json!({"type": "content_block_start", "index": self.next_block,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}});
                self.open = Some((index, Block::Tool));
                progress.committed = true;
                self.sink.emit("content_block_start", &start, out, progress)
            }
            (Phase::Body, "contentBlockDelta") => {
                let index = index(&ev)?;
                let d = ev
                    .delta
                    .as_ref()
                    .ok_or_else(|| TranslateError::bad("a contentBlockDelta without a delta"))?;
                if let Some(text) = &d.text {
                    self.ensure(index, Block::Text, out, progress)?;
                    self.delta(json!({"type": "text_delta", "text": text}), out, progress)
                } else if let Some(t) = &d.tool_use {
                    if self.open != Some((index, Block::Tool)) {
                        return Err(TranslateError::bad(format!(
                            "a toolUse delta for content block {index}, which was never started"
                        )));
                    }
                    match t.input.as_deref().filter(|s| !s.is_empty()) {
                        Some(part) => self.delta(
                            json!({"type": "input_json_delta", "partial_json": part}),
                            out,
                            progress,
                        ),
                        None => Ok(()),
                    }
                } else if let Some(r) = &d.reasoning {
                    if let Some(data) = &r.redacted {
                        self.close(out, progress)?;
                        let start = json!({"type": "content_block_start", "index": self.next_block,
                            "content_block": {"type": "redacted_thinking", "data": data}});
                        self.open = Some((index, Block::Redacted));
                        progress.committed = true;
                        return self.sink.emit("content_block_start", &start, out, progress);
                    }
                    self.ensure(index, Block::Thinking, out, progress)?;
                    if let Some(text) = &r.text {
                        self.delta(
                            json!({"type": "thinking_delta", "thinking": text}),
                            out,
                            progress,
                        )?;
                    }
                    if let Some(sig) = &r.signature {
                        self.delta(
                            json!({"type": "signature_delta", "signature": sig}),
                            out,
                            progress,
                        )?;
                    }
                    Ok(())
                } else {
                    Err(TranslateError::bad(
                        "a contentBlockDelta of an unknown kind",
                    ))
                }
            }
            (Phase::Body, "contentBlockStop") => {
                let index = index(&ev)?;
                match self.open {
                    Some((i, _)) if i == index => self.close(out, progress),
                    // An empty block (no delta, so never opened here): nothing to close.
                    None => Ok(()),
                    Some((i, _)) => Err(TranslateError::bad(format!(
                        "content block {index} stopped while block {i} is open"
                    ))),
                }
            }
            (Phase::Body, "messageStop") => {
                self.close(out, progress)?;
                let stop = ev
                    .stop_reason
                    .as_deref()
                    .ok_or_else(|| TranslateError::bad("messageStop without a stopReason"))?;
                self.stop = Some(stop_reason(stop)?);
                self.phase = Phase::Stopped;
                Ok(())
            }
            (Phase::Stopped, "metadata") => {
                let usage = ev.usage.as_ref().map(read_usage).unwrap_or_default();
                progress.usage = Some(usage);
                self.phase = Phase::Done;
                let delta = json!({"type": "message_delta",
                    "delta": {"stop_reason": self.stop, "stop_sequence": null},
                    "usage": usage.anthropic()});
                self.sink.emit("message_delta", &delta, out, progress)?;
                self.sink.emit(
                    "message_stop",
                    &json!({"type": "message_stop"}),
                    out,
                    progress,
                )
            }
            // Bedrock may add event types; an unknown one is skipped, as its SDKs do.
            (Phase::Body | Phase::Stopped, name)
                if !matches!(
                    name,
                    "messageStart"
                        | "contentBlockStart"
                        | "contentBlockDelta"
                        | "contentBlockStop"
                        | "messageStop"
                        | "metadata"
                ) =>
            {
                Ok(())
            }
            (phase, name) => Err(TranslateError::bad(format!(
                "a `{name}` event {}",
                match phase {
                    Phase::Start => "before messageStart",
                    Phase::Body => "out of order",
                    Phase::Stopped => "after messageStop",
                    Phase::Done => "after metadata",
                }
            ))),
        }
    }

    /// Opens a text or thinking block for Converse block `index` unless it is the open one.
    fn ensure(
        &mut self,
        index: u64,
        want: Block,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        if self.open == Some((index, want)) {
            return Ok(());
        }
        self.close(out, progress)?;
        let block = match want {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            _ => json!({"type": "text", "text": ""}),
        };
        self.open = Some((index, want));
        progress.committed = true;
        self.sink.emit(
            "content_block_start",
            &json!({"type": "content_block_start", "index": self.next_block, "content_block": block}),
            out,
            progress,
        )
    }

    fn delta(
        &mut self,
        delta: Value,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        let ev = json!({"type": "content_block_delta", "index": self.next_block, "delta": delta});
        self.sink.emit("content_block_delta", &ev, out, progress)
    }

    fn close(&mut self, out: &mut BytesMut, progress: &mut Progress) -> Result<(), TranslateError> {
        if self.open.take().is_none() {
            return Ok(());
        }
        let stop = json!({"type": "content_block_stop", "index": self.next_block});
        self.next_block += 1;
        self.sink.emit("content_block_stop", &stop, out, progress)
    }

    /// The upstream's stream ended: it must have ended with `metadata`.
    pub(super) fn finish(&self) -> Result<(), TranslateError> {
        match self.phase {
            Phase::Done => Ok(()),
            _ => Err(TranslateError::Truncated),
        }
    }
}

fn index(ev: &Event<'_>) -> Result<u64, TranslateError> {
    ev.index
        .ok_or_else(|| TranslateError::bad("an event without its `contentBlockIndex`"))
}

#[cfg(test)]
mod tests {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use proptest::prelude::*;

    use super::*;
    use crate::translate::{Pair, SseDecoder, TranslateError};

    fn frame(kind: &str, name: &str, payload: Value) -> Vec<u8> {
        let (type_header, name_header) = match kind {
            "event" => (":event-type", name),
            _ => (":exception-type", name),
        };
        let message = Message::new(Bytes::from(payload.to_string()))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String(kind.to_owned().into()),
            ))
            .add_header(Header::new(
                type_header,
                HeaderValue::String(name_header.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut out = Vec::new();
        write_message_to(&message, &mut out).unwrap();
        out
    }

    use bytes::Bytes;

    fn ev(name: &str, payload: Value) -> Vec<u8> {
        frame("event", name, payload)
    }

    /// A ConverseStream with reasoning, text and a tool call, and usage with cache tokens.
    fn full_stream() -> Vec<u8> {
        [
            ev("messageStart", json!({"role": "assistant"})),
            ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hmm"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "c2ln"}}})),
            ev("contentBlockStop", json!({"contentBlockIndex": 0})),
            ev("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"text": "Hel"}})),
            ev("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"text": "lo \"there\""}})),
            ev("contentBlockStop", json!({"contentBlockIndex": 1})),
            ev("contentBlockStart", json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tu_1", "name": "get"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"city\":"}}})),
            ev("contentBlockDelta", json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "\"Paris\"}"}}})),
            ev("contentBlockStop", json!({"contentBlockIndex": 2})),
            ev("messageStop", json!({"stopReason": "tool_use"})),
            ev("metadata", json!({"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 165,
                "cacheReadInputTokens": 100, "cacheWriteInputTokens": 50}, "metrics": {"latencyMs": 3}, "p": "abcdef"})),
        ]
        .concat()
    }

    fn ctx() -> ResponseContext {
        ResponseContext::new("client-model", 1_700_000_000)
    }

    fn run(
        pair: Pair,
        pieces: &[&[u8]],
    ) -> (
        Result<(), TranslateError>,
        String,
        crate::translate::StreamTranslator,
    ) {
        let mut t = pair.stream(ctx().include_usage(true), &Options::default());
        let mut out = BytesMut::new();
        let mut r = Ok(());
        for p in pieces {
            r = t.feed(p, &mut out);
            if r.is_err() {
                break;
            }
        }
        if r.is_ok() {
            r = t.finish(&mut out);
        }
        // Message ids are random: make them comparable.
        let mut text = String::from_utf8(out.to_vec()).unwrap();
        while let Some(i) = text.find("msg_bdrk_") {
            text.replace_range(i..i + 9 + 24, "msg_ID");
        }
        (r, text, t)
    }

    /// `(event name, data)` of an SSE output.
    fn events(out: &str) -> Vec<(String, Value)> {
        let mut d = SseDecoder::new(usize::MAX);
        let mut got = Vec::new();
        let mut push = |e: SseEvent<'_>| {
            let v = match e.data {
                b"[DONE]" => json!("[DONE]"),
                d => serde_json::from_slice(d).unwrap(),
            };
            got.push((e.name.to_owned(), v));
            Ok(())
        };
        d.feed(out.as_bytes(), &mut push).unwrap();
        d.finish(&mut push).unwrap();
        got
    }

    #[test]
    fn a_converse_stream_becomes_anthropic_events() {
        let input = full_stream();
        let (r, out, t) = run(Pair::MessagesToConverse, &[&input]);
        r.unwrap();
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(ev[0].1["message"]["model"], "client-model");
        assert_eq!(ev[1].1["content_block"]["type"], "thinking");
        assert_eq!(
            ev[3].1["delta"],
            json!({"type": "signature_delta", "signature": "c2ln"})
        );
        assert_eq!(
            ev[6].1,
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hel"}})
        );
        assert_eq!(
            ev[9].1["content_block"],
            json!({"type": "tool_use", "id": "tu_1", "name": "get", "input": {}})
        );
        assert_eq!(
            ev[11].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "\"Paris\"}"})
        );
        assert_eq!(ev[13].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            ev[13].1["usage"],
            json!({"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50})
        );
        assert!(t.committed());
        assert_eq!(
            t.usage(),
            Some(Usage {
                input_tokens: 10,
                output_tokens: 5,
                cache_read_tokens: 100,
                cache_creation_tokens: 50
            })
        );
    }

    #[test]
    fn a_converse_stream_becomes_openai_chunks() {
        let input = full_stream();
        let (r, out, _) = run(Pair::ChatToConverse, &[&input]);
        r.unwrap();
        let ev: Vec<Value> = events(&out).into_iter().map(|(_, v)| v).collect();
        assert_eq!(ev.last().unwrap(), &json!("[DONE]"));
        let delta = |k: &str| -> String {
            ev.iter()
                .filter_map(|c| c["choices"][0]["delta"][k].as_str())
                .collect()
        };
        assert_eq!(delta("reasoning_content"), "Hmm");
        assert_eq!(delta("content"), "Hello \"there\"");
        let args: String = ev
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"city\":\"Paris\"}");
        assert_eq!(
            ev.iter()
                .find_map(|c| c["choices"][0]["finish_reason"].as_str()),
            Some("tool_calls")
        );
        let usage = &ev[ev.len() - 2]["usage"];
        assert_eq!(usage["prompt_tokens"], 160);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(usage["completion_tokens"], 5);
    }

    #[test]
    fn exceptions_cuts_and_bad_frames_are_errors() {
        // A mid-stream exception: the upstream's reason, by its name.
        let input = [
            ev("messageStart", json!({"role": "assistant"})),
            ev(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "a"}}),
            ),
            frame(
                "exception",
                "modelStreamErrorException",
                json!({"message": "boom"}),
            ),
        ]
        .concat();
        let (r, out, t) = run(Pair::MessagesToConverse, &[&input]);
        assert!(out.contains("text_delta") && t.committed());
        let e = r.unwrap_err();
        assert_eq!(
            e,
            TranslateError::Upstream {
                kind: "modelStreamErrorException".into(),
                message: "boom".into()
            }
        );
        assert_eq!(e.into_error().reason(), Reason::UpstreamError);
        for (kind, reason) in [
            ("throttlingException", Reason::UpstreamRateLimited),
            ("serviceUnavailableException", Reason::UpstreamUnavailable),
            ("modelTimeoutException", Reason::UpstreamTimeout),
            ("validationException", Reason::UpstreamRejected),
            ("internalServerException", Reason::UpstreamError),
        ] {
            let (r, _, _) = run(
                Pair::ChatToConverse,
                &[&frame("exception", kind, json!({"message": "x"}))],
            );
            assert_eq!(r.unwrap_err().into_error().reason(), reason, "{kind}");
        }
        // Ended before `metadata`, or inside a frame: a cut.
        let full = full_stream();
        let stop = full.len() - ev("metadata", json!({"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 165,
            "cacheReadInputTokens": 100, "cacheWriteInputTokens": 50}, "metrics": {"latencyMs": 3}, "p": "abcdef"})).len();
        assert_eq!(
            run(Pair::MessagesToConverse, &[&full[..stop]]).0,
            Err(TranslateError::Truncated)
        );
        assert_eq!(
            run(Pair::MessagesToConverse, &[&full[..stop + 5]]).0,
            Err(TranslateError::Truncated)
        );
        // A corrupted frame (its CRC no longer matches).
        let mut bad = full.clone();
        bad[20] ^= 0xff;
        assert!(matches!(
            run(Pair::MessagesToConverse, &[&bad]).0,
            Err(TranslateError::BadResponse(_))
        ));
        // An event out of order.
        let early = ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "a"}}),
        );
        assert!(matches!(
            run(Pair::ChatToConverse, &[&early]).0,
            Err(TranslateError::BadResponse(_))
        ));
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_and_memory_stays_bounded() {
        let mut t = Pair::MessagesToConverse.stream(
            ctx(),
            &Options {
                event_cap: 4096,
                ..Options::default()
            },
        );
        let mut out = BytesMut::new();
        t.feed(&ev("messageStart", json!({"role": "assistant"})), &mut out)
            .unwrap();
        // A long text in many frames: the translator's memory does not grow.
        for _ in 0..2000 {
            let d = ev(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "x".repeat(1000)}}),
            );
            t.feed(&d, &mut out).unwrap();
            out.clear();
            assert!(t.buffered() <= 64 * 1024, "{}", t.buffered());
        }
        let big = ev(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "x".repeat(5000)}}),
        );
        assert_eq!(
            t.feed(&big, &mut out),
            Err(TranslateError::EventTooLarge { cap: 4096 })
        );
    }

    #[test]
    fn whole_answers_are_translated_for_both_families() {
        let answer = json!({"output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Hmm", "signature": "c2ln"}}},
            {"text": "Hi"},
            {"toolUse": {"toolUseId": "tu_1", "name": "get", "input": {"city": "Paris"}}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 165, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 50}});
        let body = answer.to_string();
        let t = Pair::MessagesToConverse
            .response(body.as_bytes(), &ctx())
            .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(
            v["content"][0],
            json!({"type": "thinking", "thinking": "Hmm", "signature": "c2ln"})
        );
        assert_eq!(v["content"][1], json!({"type": "text", "text": "Hi"}));
        assert_eq!(
            v["content"][2],
            json!({"type": "tool_use", "id": "tu_1", "name": "get", "input": {"city": "Paris"}})
        );
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["model"], "client-model");
        assert_eq!(v["usage"]["cache_creation_input_tokens"], 50);
        assert_eq!(t.usage.unwrap().cache_read_tokens, 100);
        let t = Pair::ChatToConverse
            .response(body.as_bytes(), &ctx())
            .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Hi");
        assert_eq!(m["reasoning_content"], "Hmm");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["prompt_tokens"], 160);
        for (stop, finish) in [
            ("guardrail_intervened", "content_filter"),
            ("max_tokens", "length"),
            ("stop_sequence", "stop"),
        ] {
            let mut a = answer.clone();
            a["stopReason"] = stop.into();
            let t = Pair::ChatToConverse
                .response(a.to_string().as_bytes(), &ctx())
                .unwrap();
            let v: Value = serde_json::from_slice(&t.body).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{stop}");
        }
        let bad =
            json!({"output": {"message": {"content": [{"video": {}}]}}, "stopReason": "end_turn"});
        assert!(
            Pair::MessagesToConverse
                .response(bad.to_string().as_bytes(), &ctx())
                .is_err()
        );
    }

    fn converse_request(pair: Pair, body: Value) -> Result<Value, Error> {
        let t = pair.request(body.to_string().as_bytes(), "ignored", &Options::default())?;
        Ok(serde_json::from_slice(&t.body).unwrap())
    }

    #[test]
    fn an_anthropic_request_becomes_a_converse_request() {
        let got = converse_request(Pair::MessagesToConverse, json!({
            "model": "m", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"],
            "stream": true, "metadata": {"user_id": "u1"},
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "tools": [{"name": "get", "description": "Get", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "Hmm", "signature": "c2ln"},
                    {"type": "tool_use", "id": "tu_1", "name": "get", "input": {"q": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "42", "is_error": true}]},
            ],
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "system": [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}],
                "messages": [
                    {"role": "user", "content": [{"text": "Hi"}, {"image": {"format": "jpeg", "source": {"bytes": "AAAA"}}}]},
                    {"role": "assistant", "content": [{"reasoningContent": {"reasoningText": {"text": "Hmm", "signature": "c2ln"}}},
                        {"toolUse": {"toolUseId": "tu_1", "name": "get", "input": {"q": 1}}}]},
                    {"role": "user", "content": [{"toolResult": {"toolUseId": "tu_1", "content": [{"text": "42"}], "status": "error"}}]},
                ],
                "inferenceConfig": {"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]},
                "toolConfig": {"tools": [{"toolSpec": {"name": "get", "description": "Get", "inputSchema": {"json": {"type": "object"}}}}],
                    "toolChoice": {"any": {}}},
                "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 2048}},
                "requestMetadata": {"user_id": "u1"},
            })
        );
    }

    #[test]
    fn a_chat_request_becomes_a_converse_request_through_the_pivot() {
        let got = converse_request(Pair::ChatToConverse, json!({
            "model": "m", "max_tokens": 4000, "stop": "END", "user": "u1", "reasoning_effort": "low",
            "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklG"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ],
        }))
        .unwrap();
        assert_eq!(got["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            got["messages"][0]["content"][0],
            json!({"image": {"format": "webp", "source": {"bytes": "UklG"}}})
        );
        assert_eq!(
            got["messages"][1]["content"][0],
            json!({"toolUse": {"toolUseId": "c1", "name": "get", "input": {"q": 1}}})
        );
        assert_eq!(
            got["messages"][2]["content"][0],
            json!({"toolResult": {"toolUseId": "c1", "content": [{"text": "42"}]}})
        );
        assert_eq!(
            got["inferenceConfig"],
            json!({"maxTokens": 4000, "stopSequences": ["END"]})
        );
        assert!(
            got["toolConfig"].get("toolChoice").is_none(),
            "none the client did not send: {got}"
        );
        assert_eq!(
            got["additionalModelRequestFields"]["thinking"]["type"],
            "enabled"
        );
        assert_eq!(got["requestMetadata"], json!({"user_id": "u1"}));
    }

    #[test]
    fn what_converse_cannot_carry_is_refused_by_name() {
        let param = |pair: Pair, body: Value| -> String {
            let e = converse_request(pair, body).unwrap_err();
            assert_eq!(e.reason(), Reason::InvalidRequest);
            e.to_json(&crate::sanitize::Secrets::none()).pipe(|b| {
                serde_json::from_slice::<Value>(&b).unwrap()["error"]["metadata"]["param"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
        };
        let msgs = json!([{"role": "user", "content": "Hi"}]);
        assert_eq!(
            param(
                Pair::ChatToConverse,
                json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]})
            ),
            "messages[0].content[1].image_url.url"
        );
        assert_eq!(
            param(
                Pair::MessagesToConverse,
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}]}]})
            ),
            "messages[0].content[0].source.url"
        );
        assert_eq!(
            param(
                Pair::MessagesToConverse,
                json!({"model": "m", "max_tokens": 5, "messages": msgs, "top_k": 3})
            ),
            "top_k"
        );
        assert_eq!(
            param(
                Pair::MessagesToConverse,
                json!({"model": "m", "max_tokens": 5, "messages": msgs,
                "tools": [{"name": "t", "input_schema": {"type": "object"}}], "tool_choice": {"type": "none"}})
            ),
            "tool_choice.type"
        );
        assert_eq!(
            param(
                Pair::MessagesToConverse,
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {}}]}]})
            ),
            "messages[0].content[0].type"
        );
        assert_eq!(
            param(
                Pair::MessagesToConverse,
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "AA"}}]}]})
            ),
            "messages[0].content[0].source.media_type"
        );
        assert_eq!(
            param(
                Pair::ChatToConverse,
                json!({"model": "m", "messages": msgs, "logit_bias": {"1": 2}})
            ),
            "logit_bias"
        );
    }

    trait Pipe: Sized {
        fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
            f(self)
        }
    }
    impl<T> Pipe for T {}

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any split of the event stream's bytes gives the same output,
        /// usage and commit point, for both client families.
        #[test]
        fn any_split_of_an_event_stream_gives_the_same_output(
            chat in any::<bool>(),
            cuts in prop::collection::vec(0..4096usize, 0..24),
        ) {
            let pair = if chat { Pair::ChatToConverse } else { Pair::MessagesToConverse };
            let input = full_stream();
            let (r, whole, t_whole) = run(pair, &[&input]);
            prop_assert!(r.is_ok());
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for p in points {
                pieces.push(&input[from..p]);
                from = p;
            }
            pieces.push(&input[from..]);
            let (r, split, t_split) = run(pair, &pieces);
            prop_assert!(r.is_ok());
            prop_assert_eq!(split, whole);
            prop_assert_eq!(t_split.usage(), t_whole.usage());
            prop_assert_eq!(t_split.committed(), t_whole.committed());
        }
    }
}
