//! Google's Gemini `generateContent` (the Gemini API and Vertex AI speak the
//! same body) for both client families, with Anthropic Messages as the
//! pivot, as for Bedrock: an Anthropic request → a `GenerateContentRequest`,
//! a `GenerateContentResponse` → an Anthropic message, and a
//! `streamGenerateContent?alt=sse` stream (SSE whose every event is a whole
//! `GenerateContentResponse` carrying the next parts) → Anthropic events,
//! written as SSE for an Anthropic client or handed to the Anthropic →
//! OpenAI stream translator for an OpenAI one. An OpenAI Chat request goes
//! Chat → Messages (`chat_to_messages`, with its refusals) → Gemini.
//!
//! Gemini has no tool-call ids: an answer's `functionCall` gets a generated
//! id (`toolu_gemini_…`), and a later request's `tool_result` is sent back
//! as a `functionResponse` named after the function its `tool_use_id`
//! names *in that same request* (the assistant turn that called it): the
//! gateway keeps no state between requests.
//!
//! A function call arrives whole (`args` is an object, never streamed in
//! pieces): a stream writes it as one tool-call start and one argument
//! delta. Thought parts (`"thought": true`) are thinking blocks; a
//! `thoughtSignature` Gemini attaches to another part (a function call, a
//! text) becomes an empty thinking block carrying that signature just
//! before it, and is attached back to the part that follows it when the
//! client sends the conversation again, as Gemini requires.
//!
//! The full mapping and the list of refusals are in `docs/translation.md`.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::converse::Sink;
use super::messages_request::{Fields, Thinking, text_of};
use super::sse::{SseEvent, write_json};
use super::{
    Options, Progress, ResponseContext, TranslateError, Translated, TranslatedRequest, Usage, bad,
    chat_to_messages, tokens,
};
use crate::error::{Error, Reason};

// ---------------------------------------------------------------- request

fn untranslatable(param: &str) -> Error {
    bad(
        param,
        "has no Gemini counterpart and cannot be translated; remove it or use another deployment",
    )
}

/// The refusal of an image or document given by URL: Gemini's `fileData`
/// needs the file's MIME type, which the URL does not say, and fetches only
/// some URLs; the bytes are always faithful.
pub(super) fn url_image(param: &str) -> Error {
    bad(
        param,
        "Gemini takes images here as bytes only: send the image base64-encoded (a data: URL or a base64 source), not a URL",
    )
}

fn only_keys(m: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), Error> {
    super::messages_request::only_keys(m, at, allowed, untranslatable)
}

/// Translates an OpenAI Chat Completions request into a Gemini request,
/// through Anthropic Messages.
pub(super) fn request_from_chat(
    req: Map<String, Value>,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    super::chat_to_converse::refuse_url_images(&req, url_image)?;
    // Anthropic requires `max_tokens` (the pivot adds a default); Gemini
    // does not: without the client's own cap, none is sent.
    let capped = ["max_tokens", "max_completion_tokens"]
        .iter()
        .any(|k| req.get(*k).is_some_and(|v| !v.is_null()));
    let pivot = chat_to_messages::request_tree(req, "", options)?;
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&pivot.body) else {
        return Err(Error::new(
            Reason::Internal,
            "the request could not be translated",
        ));
    };
    if !capped {
        map.remove("max_tokens");
    }
    let mut out = request(map, options)?;
    out.include_usage = pivot.include_usage;
    Ok(out)
}

/// Translates a request in Anthropic Messages' shape into a
/// `GenerateContentRequest` (the model goes in the URL, the stream flag
/// picks `generateContent` or `streamGenerateContent`). Field names in
/// errors are the Anthropic request's.
pub(super) fn request(
    req: Map<String, Value>,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    let f = Fields::read(req, untranslatable)?;
    if f.user_id.is_some() {
        return Err(untranslatable("metadata"));
    }
    let mut out = Map::new();
    let mut generation = Map::new();
    if let Some(n) = f.max_tokens {
        generation.insert("maxOutputTokens".into(), n.into());
    }
    if let Some(t) = f.temperature {
        generation.insert("temperature".into(), t);
    }
    if let Some(p) = f.top_p {
        generation.insert("topP".into(), p);
    }
    if let Some(k) = f.top_k {
        generation.insert("topK".into(), k.into());
    }
    if let Some(stop) = f.stop_sequences {
        generation.insert("stopSequences".into(), stop);
    }
    match f.thinking {
        Some(Thinking::Disabled) => {
            generation.insert("thinkingConfig".into(), json!({"thinkingBudget": 0}));
        }
        Some(Thinking::Enabled(budget)) => {
            generation.insert(
                "thinkingConfig".into(),
                json!({"thinkingBudget": budget, "includeThoughts": true}),
            );
        }
        None => {}
    }
    let (stream, system, tools, mut choice) = (f.stream, f.system, f.tools, f.tool_choice);
    let drop_cache = options.drop_cache_control;
    if let Some(system) = system {
        let parts = match system {
            Value::String(s) => vec![json!({ "text": s })],
            Value::Array(blocks) => {
                let mut parts = Vec::with_capacity(blocks.len());
                for (i, b) in blocks.into_iter().enumerate() {
                    let at = format!("system[{i}]");
                    let Value::Object(mut b) = b else {
                        return Err(bad(&at, "must be an object"));
                    };
                    cache_control(&mut b, &at, drop_cache)?;
                    if b.get("type").and_then(Value::as_str) != Some("text") {
                        return Err(bad(&format!("{at}.type"), "must be `text`"));
                    }
                    only_keys(&b, &at, &["type", "text"])?;
                    parts.push(json!({ "text": text_of(&b, &at)? }));
                }
                parts
            }
            _ => return Err(bad("system", "must be a string or an array of text blocks")),
        };
        out.insert("systemInstruction".into(), json!({ "parts": parts }));
    }
    // The function each tool_use id called, from this request's own turns.
    let mut calls: HashMap<String, String> = HashMap::new();
    let mut contents = Vec::with_capacity(f.messages.len());
    for (i, m) in f.messages.into_iter().enumerate() {
        contents.push(turn(m, &format!("messages[{i}]"), &mut calls, drop_cache)?);
    }
    out.insert("contents".into(), Value::Array(contents));
    if let Some(tools) = tools {
        let declarations = function_declarations(tools, drop_cache)?;
        out.insert(
            "tools".into(),
            json!([{ "functionDeclarations": declarations }]),
        );
        // A choice goes up only when the client sent one.
        if let Some(c) = choice.take() {
            out.insert(
                "toolConfig".into(),
                json!({ "functionCallingConfig": tool_choice(c)? }),
            );
        }
    }
    if !generation.is_empty() {
        out.insert("generationConfig".into(), Value::Object(generation));
    }
    Ok(TranslatedRequest {
        body: super::sse::to_bytes(&out),
        stream,
        include_usage: false,
    })
}

/// Removes a block's `cache_control`: refused unless the deployment drops
/// the markers (Gemini caches implicitly; its explicit cache is a separate
/// resource, not a marker).
fn cache_control(b: &mut Map<String, Value>, at: &str, drop: bool) -> Result<(), Error> {
    match b.remove("cache_control") {
        None | Some(Value::Null) => Ok(()),
        Some(_) if drop => Ok(()),
        Some(_) => Err(untranslatable(&format!("{at}.cache_control"))),
    }
}

/// One Anthropic turn → one Gemini `Content`.
fn turn(
    message: Value,
    at: &str,
    calls: &mut HashMap<String, String>,
    drop_cache: bool,
) -> Result<Value, Error> {
    let Value::Object(m) = message else {
        return Err(bad(at, "must be an object"));
    };
    only_keys(&m, at, &["role", "content"])?;
    let role = match m.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "model",
        _ => return Err(bad(&format!("{at}.role"), "must be `user` or `assistant`")),
    };
    let parts = match m.get("content") {
        Some(Value::String(s)) => vec![json!({ "text": s })],
        Some(Value::Array(blocks)) => {
            let mut parts = Vec::with_capacity(blocks.len());
            // A signature-only thinking block: the signature of the part after it.
            let mut signature: Option<String> = None;
            for (j, b) in blocks.iter().enumerate() {
                let bat = format!("{at}.content[{j}]");
                let Some(mut part) = block(b.clone(), &bat, calls, drop_cache, &mut signature)?
                else {
                    continue;
                };
                if let Some(sig) = signature.take() {
                    part["thoughtSignature"] = sig.into();
                }
                parts.push(part);
            }
            // The signature Gemini sent on an empty last part goes back on one.
            if let Some(sig) = signature {
                parts.push(json!({"text": "", "thoughtSignature": sig}));
            }
            parts
        }
        _ => {
            return Err(bad(
                &format!("{at}.content"),
                "must be a string or an array",
            ));
        }
    };
    Ok(json!({"role": role, "parts": parts}))
}

/// One Anthropic content block → one Gemini part (`None`: a thinking block
/// that only carries the next part's signature, left in `signature`).
fn block(
    b: Value,
    at: &str,
    calls: &mut HashMap<String, String>,
    drop_cache: bool,
    signature: &mut Option<String>,
) -> Result<Option<Value>, Error> {
    let Value::Object(mut b) = b else {
        return Err(bad(at, "must be an object"));
    };
    cache_control(&mut b, at, drop_cache)?;
    Ok(Some(match b.get("type").and_then(Value::as_str) {
        Some("text") => {
            only_keys(&b, at, &["type", "text", "citations"])?;
            if b.get("citations")
                .is_some_and(|c| c.as_array().is_some_and(|a| !a.is_empty()))
            {
                return Err(untranslatable(&format!("{at}.citations")));
            }
            json!({ "text": text_of(&b, at)? })
        }
        Some("image") | Some("document") => {
            only_keys(&b, at, &["type", "source"])?;
            inline_data(&b, at)?
        }
        Some("tool_use") => {
            only_keys(&b, at, &["type", "id", "name", "input"])?;
            let (Some(id), Some(name)) = (
                b.get("id").and_then(Value::as_str),
                b.get("name").and_then(Value::as_str),
            ) else {
                return Err(bad(at, "a tool_use block needs `id` and `name`"));
            };
            let args = match b.get("input") {
                None | Some(Value::Null) => json!({}),
                Some(v @ Value::Object(_)) => v.clone(),
                Some(_) => return Err(bad(&format!("{at}.input"), "must be an object")),
            };
            calls.insert(id.to_owned(), name.to_owned());
            json!({"functionCall": {"name": name, "args": args}})
        }
        Some("tool_result") => {
            only_keys(&b, at, &["type", "tool_use_id", "content", "is_error"])?;
            let id = b
                .get("tool_use_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.tool_use_id"), "is required"))?;
            let name = calls.get(id).ok_or_else(|| {
                bad(
                    &format!("{at}.tool_use_id"),
                    format!(
                        "`{id}` names no tool_use of an earlier assistant turn of this request: Gemini answers a function by its name, which only that turn says"
                    ),
                )
            })?;
            let output = match b.get("content") {
                None | Some(Value::Null) => Value::String(String::new()),
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (k, p) in parts.iter().enumerate() {
                        let pat = format!("{at}.content[{k}]");
                        let p = p
                            .as_object()
                            .ok_or_else(|| bad(&pat, "must be an object"))?;
                        if p.get("type").and_then(Value::as_str) != Some("text") {
                            return Err(untranslatable(&format!("{pat}.type")));
                        }
                        only_keys(p, &pat, &["type", "text"])?;
                        texts.push(Value::String(text_of(p, &pat)?.to_owned()));
                    }
                    match texts.len() {
                        1 => texts.pop().unwrap_or_default(),
                        _ => Value::Array(texts),
                    }
                }
                Some(_) => {
                    return Err(bad(
                        &format!("{at}.content"),
                        "must be a string or an array",
                    ));
                }
            };
            // Google's convention: `output` for a result, `error` for a failure.
            let key = match b.get("is_error") {
                None | Some(Value::Null) | Some(Value::Bool(false)) => "output",
                Some(Value::Bool(true)) => "error",
                Some(_) => return Err(bad(&format!("{at}.is_error"), "must be a boolean")),
            };
            json!({"functionResponse": {"name": name, "response": { key: output }}})
        }
        Some("thinking") => {
            only_keys(&b, at, &["type", "thinking", "signature"])?;
            let text = b.get("thinking").and_then(Value::as_str).unwrap_or("");
            let sig = b
                .get("signature")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            if text.is_empty() {
                // The signature Gemini put on the part that follows.
                if let Some(s) = sig {
                    *signature = Some(s.to_owned());
                }
                return Ok(None);
            }
            let mut part = json!({"text": text, "thought": true});
            if let Some(s) = sig {
                part["thoughtSignature"] = s.into();
            }
            part
        }
        _ => return Err(untranslatable(&format!("{at}.type"))),
    }))
}

/// An Anthropic `image` or `document` block → Gemini `inlineData` (base64
/// bytes only).
fn inline_data(b: &Map<String, Value>, at: &str) -> Result<Value, Error> {
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
            let data = src
                .get("data")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{sat}.data"), "is required"))?;
            Ok(json!({"inlineData": {"mimeType": media, "data": data}}))
        }
        Some("url") => Err(url_image(&format!("{sat}.url"))),
        _ => Err(untranslatable(&format!("{sat}.type"))),
    }
}

/// The JSON Schema keywords Gemini's `parametersJsonSchema` takes (the
/// subset Google documents, and annotations it accepts); any other keyword
/// is refused by its path, so a constraint is never silently lost.
const SCHEMA_KEYWORDS: [&str; 27] = [
    "type",
    "format",
    "title",
    "description",
    "enum",
    "const",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "anyOf",
    "oneOf",
    "properties",
    "additionalProperties",
    "required",
    "$ref",
    "$defs",
    "$id",
    "$anchor",
    "default",
    "nullable",
    "propertyOrdering",
];

/// Checks one schema (recursively) against [`SCHEMA_KEYWORDS`]; `$schema`
/// (an annotation Gemini refuses) is removed.
fn schema(s: &mut Value, at: &str) -> Result<(), Error> {
    let Value::Object(m) = s else {
        return match s {
            Value::Bool(_) => Ok(()),
            _ => Err(bad(at, "must be a JSON Schema object")),
        };
    };
    m.remove("$schema");
    for (k, v) in m.iter_mut() {
        let kat = format!("{at}.{k}");
        if !SCHEMA_KEYWORDS.contains(&k.as_str()) {
            return Err(bad(
                &kat,
                "is a JSON Schema keyword Gemini's function declarations do not take; remove it (see docs/translation.md for the keywords taken)",
            ));
        }
        match (k.as_str(), v) {
            ("properties" | "$defs", Value::Object(children)) => {
                for (name, child) in children.iter_mut() {
                    schema(child, &format!("{kat}.{name}"))?;
                }
            }
            ("anyOf" | "oneOf" | "prefixItems", Value::Array(list)) => {
                for (i, child) in list.iter_mut().enumerate() {
                    schema(child, &format!("{kat}[{i}]"))?;
                }
            }
            ("items" | "additionalProperties", child @ Value::Object(_)) => schema(child, &kat)?,
            _ => {}
        }
    }
    Ok(())
}

/// Anthropic custom tools → Gemini `functionDeclarations`, each schema as
/// `parametersJsonSchema`.
fn function_declarations(tools: Value, drop_cache: bool) -> Result<Vec<Value>, Error> {
    let Value::Array(tools) = tools else {
        return Err(bad("tools", "must be an array"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.into_iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(mut t) = tool else {
            return Err(bad(&at, "must be an object"));
        };
        cache_control(&mut t, &at, drop_cache)?;
        if t.get("type").is_some_and(|k| !k.is_null() && k != "custom") {
            return Err(untranslatable(&format!("{at}.type")));
        }
        only_keys(&t, &at, &["type", "name", "description", "input_schema"])?;
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&format!("{at}.name"), "is required"))?
            .to_owned();
        let mut parameters = t
            .remove("input_schema")
            .filter(Value::is_object)
            .ok_or_else(|| bad(&format!("{at}.input_schema"), "is required"))?;
        schema(&mut parameters, &format!("{at}.input_schema"))?;
        let mut decl = json!({"name": name, "parametersJsonSchema": parameters});
        if let Some(d) = t.remove("description").filter(|d| !d.is_null()) {
            decl["description"] = d;
        }
        out.push(decl);
    }
    Ok(out)
}

/// Anthropic's `tool_choice` → Gemini's `functionCallingConfig`.
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
        Some("auto") => json!({"mode": "AUTO"}),
        Some("any") => json!({"mode": "ANY"}),
        Some("none") => json!({"mode": "NONE"}),
        Some("tool") => {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.name", "is required"))?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
        _ => return Err(bad("tool_choice.type", "must be auto, any, tool or none")),
    })
}

// ---------------------------------------------------------------- answer

/// What a Gemini `finishReason` means for the client.
enum Finish {
    /// An Anthropic `stop_reason`.
    Stop(&'static str),
    /// The model failed (a malformed function call, …): the upstream's error.
    Failed,
}

/// Gemini's `finishReason` → an Anthropic `stop_reason` (`tool_use` when
/// the answer called a function: Gemini says `STOP` then). Every safety,
/// recitation or policy stop is a refusal (OpenAI: `content_filter`).
fn finish(reason: &str, called: bool) -> Result<Finish, TranslateError> {
    Ok(Finish::Stop(match reason {
        "STOP" if called => "tool_use",
        "STOP" => "end_turn",
        "MAX_TOKENS" => "max_tokens",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "LANGUAGE" => "refusal",
        "MALFORMED_FUNCTION_CALL"
        | "UNEXPECTED_TOOL_CALL"
        | "TOO_MANY_TOOL_CALLS"
        | "OTHER"
        | "IMAGE_OTHER"
        | "NO_IMAGE"
        | "FINISH_REASON_UNSPECIFIED" => return Ok(Finish::Failed),
        other => {
            return Err(TranslateError::bad(format!(
                "unknown Gemini finishReason `{other}`"
            )));
        }
    }))
}

fn failed(reason: &str) -> TranslateError {
    TranslateError::Upstream {
        kind: reason.to_owned(),
        message: format!("the model stopped with finishReason {reason}"),
    }
}

/// The reason of a Google canonical error status (`error.status` of a
/// Gemini or Vertex error, in a body or mid-stream).
pub(crate) fn status_reason(status: &str) -> Option<Reason> {
    Some(match status {
        "RESOURCE_EXHAUSTED" => Reason::UpstreamRateLimited,
        "UNAVAILABLE" => Reason::UpstreamUnavailable,
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => Reason::UpstreamAuthFailed,
        "NOT_FOUND" => Reason::UpstreamModelNotFound,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => Reason::UpstreamRejected,
        "DEADLINE_EXCEEDED" => Reason::UpstreamTimeout,
        "INTERNAL" | "UNKNOWN" | "ABORTED" | "CANCELLED" | "DATA_LOSS" | "UNIMPLEMENTED" => {
            Reason::UpstreamError
        }
        // A refusal by the model's own filters (the answer's finishReason).
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            Reason::UpstreamContentFiltered
        }
        "MALFORMED_FUNCTION_CALL"
        | "UNEXPECTED_TOOL_CALL"
        | "TOO_MANY_TOOL_CALLS"
        | "OTHER"
        | "IMAGE_OTHER"
        | "NO_IMAGE"
        | "FINISH_REASON_UNSPECIFIED" => Reason::UpstreamError,
        _ => return None,
    })
}

/// Reads Gemini's `usageMetadata`: `promptTokenCount` includes the cached
/// tokens (`cachedContentTokenCount`), which Anthropic's `input_tokens`
/// excludes; output is `candidatesTokenCount` plus `thoughtsTokenCount`
/// (reasoning is output, as everywhere else); a built-in tool's prompt
/// (`toolUsePromptTokenCount`) is input.
pub(super) fn read_usage(u: &Value) -> Usage {
    let cached = tokens(u.get("cachedContentTokenCount"));
    let prompt = tokens(u.get("promptTokenCount")) + tokens(u.get("toolUsePromptTokenCount"));
    Usage {
        input_tokens: prompt.saturating_sub(cached),
        output_tokens: tokens(u.get("candidatesTokenCount")) + tokens(u.get("thoughtsTokenCount")),
        cache_read_tokens: cached,
        cache_creation_tokens: 0,
    }
}

/// A message id: Gemini's `responseId` when it sent one.
fn message_id(response_id: Option<&str>) -> String {
    match response_id.filter(|r| !r.is_empty()) {
        Some(r) => format!("msg_gemini_{r}"),
        None => format!(
            "msg_gemini_{:016x}{:08x}",
            fastrand::u64(..),
            fastrand::u32(..)
        ),
    }
}

/// A generated tool-call id (Gemini has none): unique, and stable for the
/// call once written.
fn tool_id(prefix: u64, n: u64) -> String {
    format!("toolu_gemini_{prefix:016x}_{n}")
}

/// The error object Gemini sends in place of an answer (a stream event).
fn upstream_error(e: &Value) -> TranslateError {
    TranslateError::Upstream {
        kind: e
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN")
            .to_owned(),
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    }
}

/// Translates a whole `GenerateContentResponse` into an Anthropic message
/// (as a JSON value) and the usage it reported.
fn to_message(v: &Value, ctx: &ResponseContext) -> Result<(Value, Option<Usage>), TranslateError> {
    if let Some(e) = v.get("error") {
        return Err(upstream_error(e));
    }
    let usage = v.get("usageMetadata").map(read_usage);
    let candidate = v.pointer("/candidates/0");
    let mut blocks = Vec::new();
    let prefix = fastrand::u64(..);
    let mut calls = 0u64;
    let stop = match candidate {
        // The prompt itself was blocked: no candidate, a `blockReason`.
        None => match v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            Some(_) => "refusal",
            None => return Err(TranslateError::bad("the answer has no candidate")),
        },
        Some(c) => {
            let parts = match c.pointer("/content/parts") {
                Some(Value::Array(parts)) => parts.as_slice(),
                None | Some(Value::Null) => &[],
                Some(_) => return Err(TranslateError::bad("`content.parts` is not an array")),
            };
            for p in parts {
                let p: Part<'_> = Part::deserialize(p)
                    .map_err(|_| TranslateError::bad("a part is not an object of its shape"))?;
                match p.kind()? {
                    PartKind::Thought(text) => blocks.push(json!({"type": "thinking",
                        "thinking": text, "signature": p.signature.as_deref().unwrap_or("")})),
                    PartKind::Text(text) => {
                        if let Some(sig) = &p.signature {
                            blocks.push(
                                json!({"type": "thinking", "thinking": "", "signature": sig}),
                            );
                        }
                        if text.is_empty() {
                            continue;
                        }
                        // Consecutive text parts are one text block.
                        match blocks.last_mut() {
                            Some(Value::Object(last))
                                if p.signature.is_none()
                                    && last.get("type").and_then(Value::as_str) == Some("text") =>
                            {
                                if let Some(Value::String(t)) = last.get_mut("text") {
                                    t.push_str(text);
                                }
                            }
                            _ => blocks.push(json!({"type": "text", "text": text})),
                        }
                    }
                    PartKind::Call(call) => {
                        if let Some(sig) = &p.signature {
                            blocks.push(
                                json!({"type": "thinking", "thinking": "", "signature": sig}),
                            );
                        }
                        blocks.push(json!({"type": "tool_use", "id": tool_id(prefix, calls),
                            "name": call.name, "input": call.args}));
                        calls += 1;
                    }
                    PartKind::Skip => {}
                }
            }
            match c.get("finishReason").and_then(Value::as_str) {
                None => return Err(TranslateError::bad("the candidate has no finishReason")),
                Some(r) => match finish(r, calls > 0)? {
                    Finish::Stop(s) => s,
                    Finish::Failed => return Err(failed(r)),
                },
            }
        }
    };
    let message = json!({
        "id": message_id(v.get("responseId").and_then(Value::as_str)),
        "type": "message", "role": "assistant", "model": &*ctx.model,
        "content": blocks, "stop_reason": stop, "stop_sequence": null,
        "usage": usage.unwrap_or_default().anthropic(),
    });
    Ok((message, usage))
}

/// A whole Gemini answer for an Anthropic client.
pub(super) fn response_to_messages(
    v: &Value,
    ctx: &ResponseContext,
) -> Result<Translated, TranslateError> {
    let (message, usage) = to_message(v, ctx)?;
    let mut out = BytesMut::new();
    write_json(&mut out, &message);
    Ok(Translated {
        body: out.freeze(),
        usage,
    })
}

/// A whole Gemini answer for an OpenAI Chat client.
pub(super) fn response_to_chat(
    v: &Value,
    ctx: &ResponseContext,
) -> Result<Translated, TranslateError> {
    let (message, _) = to_message(v, ctx)?;
    chat_to_messages::response_tree(&message, ctx)
}

// ---------------------------------------------------------------- stream

/// One part of a candidate's content, read without building a tree.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(rename = "thoughtSignature", borrow, default)]
    signature: Option<Cow<'a, str>>,
    #[serde(rename = "functionCall", default)]
    function_call: Option<Call>,
    #[serde(rename = "inlineData", default)]
    inline_data: Option<serde::de::IgnoredAny>,
    #[serde(rename = "executableCode", default)]
    executable_code: Option<serde::de::IgnoredAny>,
    #[serde(rename = "codeExecutionResult", default)]
    code_result: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Call {
    name: String,
    #[serde(default)]
    args: Option<Map<String, Value>>,
}

enum PartKind<'p> {
    Thought(&'p str),
    Text(&'p str),
    Call(CallRef<'p>),
    /// A part that only carries a signature (an empty text).
    Skip,
}

struct CallRef<'p> {
    name: &'p str,
    args: Value,
}

impl Part<'_> {
    fn kind(&self) -> Result<PartKind<'_>, TranslateError> {
        if self.inline_data.is_some()
            || self.executable_code.is_some()
            || self.code_result.is_some()
        {
            // Gemini answers with these only for features a translated
            // request cannot ask for (image output, code execution).
            return Err(TranslateError::bad(
                "a part the client's family has no counterpart of (inlineData, executableCode or codeExecutionResult)",
            ));
        }
        if let Some(c) = &self.function_call {
            return Ok(PartKind::Call(CallRef {
                name: &c.name,
                args: Value::Object(c.args.clone().unwrap_or_default()),
            }));
        }
        match (&self.text, self.thought) {
            (Some(t), Some(true)) => Ok(PartKind::Thought(t)),
            (Some(t), _) if !t.is_empty() => Ok(PartKind::Text(t)),
            (Some(_), _) if self.signature.is_some() => Ok(PartKind::Text("")),
            (Some(_), _) => Ok(PartKind::Skip),
            (None, _) if self.signature.is_some() => Ok(PartKind::Text("")),
            (None, _) => Err(TranslateError::bad("a part of an unknown kind")),
        }
    }
}

/// One streamed `GenerateContentResponse`, read without building a tree.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(rename = "usageMetadata", default)]
    usage: Option<Value>,
    #[serde(rename = "promptFeedback", default)]
    prompt_feedback: Option<Value>,
    #[serde(rename = "responseId", borrow, default)]
    response_id: Option<Cow<'a, str>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(rename = "finishReason", borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first chunk.
    Start,
    /// Chunks arrive.
    Body,
    /// A chunk carried the finishReason (usage may still follow).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
}

/// Gemini stream chunks → the client's events. State: the phase, the open
/// block, counters, the stop reason and the usage; never any content.
#[derive(Debug)]
pub(super) struct Stream {
    ctx: ResponseContext,
    sink: Sink,
    phase: Phase,
    open: Option<Block>,
    /// The index of the next Anthropic content block.
    next_block: u64,
    /// Function calls written so far (their ids' suffix).
    calls: u64,
    /// The ids' random prefix, one per stream.
    prefix: u64,
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
            calls: 0,
            prefix: fastrand::u64(..),
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
        let chunk: Chunk<'_> = serde_json::from_slice(event.data).map_err(|_| {
            TranslateError::bad("a stream event is not a GenerateContentResponse object")
        })?;
        if let Some(e) = &chunk.error {
            return Err(upstream_error(e));
        }
        if let Some(u) = &chunk.usage {
            // Cumulative: the last one seen is the answer's.
            progress.usage = Some(read_usage(u));
        }
        if self.phase == Phase::Start {
            self.phase = Phase::Body;
            let start = json!({"type": "message_start", "message": {
                "id": message_id(chunk.response_id.as_deref()), "type": "message",
                "role": "assistant", "model": &*self.ctx.model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }});
            self.sink.emit("message_start", &start, out, progress)?;
        }
        let Some(candidate) = chunk.candidates.first() else {
            return match chunk
                .prompt_feedback
                .as_ref()
                .and_then(|f| f.get("blockReason"))
            {
                // The prompt was blocked: the answer ends, refused.
                Some(_) if self.phase == Phase::Body => {
                    self.stop = Some("refusal");
                    self.phase = Phase::Stopped;
                    Ok(())
                }
                // A usage-only chunk.
                _ => Ok(()),
            };
        };
        if self.phase == Phase::Stopped {
            if candidate
                .content
                .as_ref()
                .is_some_and(|c| !c.parts.is_empty())
            {
                return Err(TranslateError::bad("content after the finishReason"));
            }
            return Ok(());
        }
        for p in candidate.content.iter().flat_map(|c| &c.parts) {
            if let Some(sig) = p.signature.as_deref().filter(|_| p.thought != Some(true)) {
                // The signature of the part it is on, as its own thinking block.
                self.open_block(Block::Thinking, out, progress)?;
                self.delta(
                    json!({"type": "signature_delta", "signature": sig}),
                    out,
                    progress,
                )?;
                self.close(out, progress)?;
            }
            match p.kind()? {
                PartKind::Thought(text) => {
                    if self.open != Some(Block::Thinking) {
                        self.open_block(Block::Thinking, out, progress)?;
                    }
                    if !text.is_empty() {
                        self.delta(
                            json!({"type": "thinking_delta", "thinking": text}),
                            out,
                            progress,
                        )?;
                    }
                    if let Some(sig) = &p.signature {
                        self.delta(
                            json!({"type": "signature_delta", "signature": sig}),
                            out,
                            progress,
                        )?;
                    }
                }
                PartKind::Text(text) if !text.is_empty() => {
                    if self.open != Some(Block::Text) {
                        self.open_block(Block::Text, out, progress)?;
                    }
                    self.delta(json!({"type": "text_delta", "text": text}), out, progress)?;
                }
                PartKind::Text(_) | PartKind::Skip => {}
                PartKind::Call(call) => {
                    self.close(out, progress)?;
                    let id = tool_id(self.prefix, self.calls);
                    self.calls += 1;
                    progress.committed = true;
                    let start = json!({"type": "content_block_start", "index": self.next_block,
                        "content_block": {"type": "tool_use", "id": id, "name": call.name, "input": {}}});
                    self.sink
                        .emit("content_block_start", &start, out, progress)?;
                    // Whole arguments: one delta.
                    let args = serde_json::to_string(&call.args).unwrap_or_else(|_| "{}".into());
                    self.delta(
                        json!({"type": "input_json_delta", "partial_json": args}),
                        out,
                        progress,
                    )?;
                    self.close_open(out, progress)?;
                }
            }
        }
        if let Some(r) = candidate.finish_reason.as_deref() {
            self.close(out, progress)?;
            self.stop = Some(match finish(r, self.calls > 0)? {
                Finish::Stop(s) => s,
                Finish::Failed => return Err(failed(r)),
            });
            self.phase = Phase::Stopped;
        }
        Ok(())
    }

    fn open_block(
        &mut self,
        want: Block,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        self.close(out, progress)?;
        let block = match want {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::Text => json!({"type": "text", "text": ""}),
        };
        self.open = Some(want);
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

    /// Closes the open text or thinking block, if any.
    fn close(&mut self, out: &mut BytesMut, progress: &mut Progress) -> Result<(), TranslateError> {
        if self.open.take().is_none() {
            return Ok(());
        }
        self.close_open(out, progress)
    }

    /// Writes the stop of the current block (a tool call's, or the one `close` took).
    fn close_open(
        &mut self,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        let stop = json!({"type": "content_block_stop", "index": self.next_block});
        self.next_block += 1;
        self.sink.emit("content_block_stop", &stop, out, progress)
    }

    /// The upstream's stream ended: it must have sent its finishReason; the
    /// client's closing events carry the last usage seen.
    pub(super) fn finish(
        &mut self,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        if self.phase != Phase::Stopped {
            return Err(TranslateError::Truncated);
        }
        let usage = progress.usage.unwrap_or_default();
        progress.usage = Some(usage);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family::Api;
    use crate::translate::{Pair, SseDecoder};

    const MSG: Pair = Pair::MessagesToGemini(Api::Gemini);
    const CHAT: Pair = Pair::ChatToGemini(Api::Vertex);

    fn ctx() -> ResponseContext {
        ResponseContext::new("client-model", 1_700_000_000)
    }

    fn gemini_request(pair: Pair, body: Value) -> Result<Value, Error> {
        let t = pair.request(body.to_string().as_bytes(), "ignored", &Options::default())?;
        Ok(serde_json::from_slice(&t.body).unwrap())
    }

    fn param(e: Error) -> String {
        assert_eq!(e.reason(), Reason::InvalidRequest, "{e:?}");
        e.metadata()
            .get("param")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    }

    #[test]
    fn an_anthropic_request_becomes_a_gemini_request() {
        let sent = gemini_request(
            MSG,
            json!({"model": "m", "max_tokens": 100, "temperature": 0.2, "top_p": 0.9, "top_k": 3,
                "stop_sequences": ["END"], "system": [{"type": "text", "text": "Be brief."}],
                "thinking": {"type": "enabled", "budget_tokens": 2048},
                "tools": [{"name": "get", "description": "Get it", "input_schema": {
                    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                    "properties": {"city": {"type": ["string", "null"], "description": "City"},
                        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}},
                    "required": ["city"], "additionalProperties": false}}],
                "tool_choice": {"type": "any"},
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
                        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "Hmm", "signature": "c2ln"},
                        {"type": "thinking", "thinking": "", "signature": "Y2FsbA=="},
                        {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
                        {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "content": "boom"}]},
                ]}),
        )
        .unwrap();
        assert_eq!(
            sent["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(
            sent["generationConfig"],
            json!({"maxOutputTokens": 100, "temperature": 0.2, "topP": 0.9, "topK": 3,
                "stopSequences": ["END"], "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}})
        );
        let decl = &sent["tools"][0]["functionDeclarations"][0];
        assert_eq!(decl["name"], "get");
        assert_eq!(decl["description"], "Get it");
        assert!(decl["parametersJsonSchema"].get("$schema").is_none());
        assert_eq!(decl["parametersJsonSchema"]["additionalProperties"], false);
        assert_eq!(
            sent["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY"}})
        );
        let c = &sent["contents"];
        assert_eq!(c[0]["role"], "user");
        assert_eq!(
            c[0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}})
        );
        assert_eq!(
            c[0]["parts"][2],
            json!({"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}})
        );
        assert_eq!(c[1]["role"], "model");
        assert_eq!(
            c[1]["parts"],
            json!([{"text": "Hmm", "thought": true, "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "get", "args": {"city": "Paris"}}, "thoughtSignature": "Y2FsbA=="}])
        );
        assert_eq!(
            c[2]["parts"],
            json!([{"functionResponse": {"name": "get", "response": {"output": "Sunny"}}},
                {"functionResponse": {"name": "get", "response": {"error": "boom"}}}])
        );
        assert!(sent.get("model").is_none());
        // Each choice.
        for (choice, want) in [
            (json!({"type": "auto"}), json!({"mode": "AUTO"})),
            (json!({"type": "none"}), json!({"mode": "NONE"})),
            (
                json!({"type": "tool", "name": "get"}),
                json!({"mode": "ANY", "allowedFunctionNames": ["get"]}),
            ),
        ] {
            let sent = gemini_request(
                MSG,
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"name": "get", "input_schema": {"type": "object"}}], "tool_choice": choice}),
            )
            .unwrap();
            assert_eq!(sent["toolConfig"]["functionCallingConfig"], want);
        }
        let off = gemini_request(
            MSG,
            json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "disabled"}}),
        )
        .unwrap();
        assert_eq!(
            off["generationConfig"]["thinkingConfig"],
            json!({"thinkingBudget": 0})
        );
    }

    #[test]
    fn a_chat_request_becomes_a_gemini_request_through_the_pivot() {
        let t = CHAT
            .request(
                json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
                    "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get", "arguments": "{\"q\":1}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "done"}],
                    "tools": [{"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}]})
                .to_string()
                .as_bytes(),
                "ignored",
                &Options::default(),
            )
            .unwrap();
        assert!(t.stream && t.include_usage);
        let sent: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(sent["systemInstruction"]["parts"][0]["text"], "S");
        assert_eq!(
            sent["contents"][1]["parts"][0],
            json!({"functionCall": {"name": "get", "args": {"q": 1}}})
        );
        assert_eq!(
            sent["contents"][2],
            json!({"role": "user", "parts": [{"functionResponse": {"name": "get", "response": {"output": "done"}}}]})
        );
        // No tool_choice from the client: none sent; no cap: none sent.
        assert!(sent.get("toolConfig").is_none());
        assert!(sent.get("generationConfig").is_none(), "{sent}");
        let capped = gemini_request(
            CHAT,
            json!({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 77}),
        )
        .unwrap();
        assert_eq!(capped["generationConfig"]["maxOutputTokens"], 77);
    }

    #[test]
    fn what_gemini_cannot_carry_is_refused_by_name() {
        let base = |extra: Value| {
            let mut b = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        for (extra, want) in [
            (json!({"metadata": {"user_id": "u"}}), "metadata"),
            (json!({"service_tier": "auto"}), "service_tier"),
            (
                json!({"tools": [{"name": "t", "input_schema": {"type": "object", "patternProperties": {}}}]}),
                "tools[0].input_schema.patternProperties",
            ),
            (
                json!({"tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"a": {"anyOf": [{"type": "string", "uniqueItems": true}]}}}}]}),
                "tools[0].input_schema.properties.a.anyOf[0].uniqueItems",
            ),
            (
                json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"tools": [{"name": "t", "input_schema": {"type": "object"}}], "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}),
                "tool_choice.disable_parallel_tool_use",
            ),
            (json!({"tool_choice": {"type": "auto"}}), "tool_choice"),
            (
                json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}),
                "system[0].cache_control",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]}),
                "messages[0].content[0].source.url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]}),
                "messages[0].content[0].tool_use_id",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "redacted_thinking", "data": "x"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"thinking": {"type": "adaptive"}}), "thinking.type"),
        ] {
            let e = gemini_request(MSG, base(extra.clone())).unwrap_err();
            assert_eq!(param(e), want, "{extra}");
        }
        // Chat clients' own names: an image by URL.
        let e = gemini_request(
            CHAT,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
        )
        .unwrap_err();
        assert_eq!(param(e), "messages[0].content[0].image_url.url");
        // Dropping cache markers is the deployment's choice.
        let options = Options {
            drop_cache_control: true,
            ..Options::default()
        };
        let body = base(
            json!({"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}),
        );
        assert!(
            MSG.request(body.to_string().as_bytes(), "m", &options)
                .is_ok()
        );
    }

    fn answer() -> Value {
        json!({"candidates": [{"content": {"role": "model", "parts": [
            {"text": "Hmm", "thought": true, "thoughtSignature": "c2ln"},
            {"text": "Hi "}, {"text": "there"},
            {"functionCall": {"name": "get", "args": {"city": "Paris"}}, "thoughtSignature": "Y2FsbA=="}]},
            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 110, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                "cachedContentTokenCount": 100, "totalTokenCount": 118},
            "responseId": "abc"})
    }

    #[test]
    fn whole_answers_are_translated_for_both_families() {
        let body = answer().to_string();
        let t = MSG.response(body.as_bytes(), &ctx()).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["id"], "msg_gemini_abc");
        assert_eq!(v["model"], "client-model");
        assert_eq!(
            v["content"][0],
            json!({"type": "thinking", "thinking": "Hmm", "signature": "c2ln"})
        );
        assert_eq!(v["content"][1], json!({"type": "text", "text": "Hi there"}));
        assert_eq!(
            v["content"][2],
            json!({"type": "thinking", "thinking": "", "signature": "Y2FsbA=="})
        );
        assert_eq!(v["content"][3]["type"], "tool_use");
        assert_eq!(v["content"][3]["name"], "get");
        assert_eq!(v["content"][3]["input"], json!({"city": "Paris"}));
        assert!(
            v["content"][3]["id"]
                .as_str()
                .unwrap()
                .starts_with("toolu_gemini_")
        );
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(
            t.usage,
            Some(Usage {
                input_tokens: 10,
                output_tokens: 8,
                cache_read_tokens: 100,
                cache_creation_tokens: 0
            })
        );
        let t = CHAT.response(body.as_bytes(), &ctx()).unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], "Hi there");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["prompt_tokens"], 110);
        assert_eq!(v["usage"]["completion_tokens"], 8);
        for (reason, finish) in [
            ("SAFETY", "content_filter"),
            ("RECITATION", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("MAX_TOKENS", "length"),
        ] {
            let a = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]});
            let t = CHAT.response(a.to_string().as_bytes(), &ctx()).unwrap();
            let v: Value = serde_json::from_slice(&t.body).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{reason}");
        }
        // A blocked prompt: no candidate, a refusal.
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}});
        let t = MSG
            .response(blocked.to_string().as_bytes(), &ctx())
            .unwrap();
        let v: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(v["stop_reason"], "refusal");
        assert_eq!(v["content"], json!([]));
        // A model failure is the upstream's error, not an answer.
        let malformed = json!({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL"}]});
        let e = MSG
            .response(malformed.to_string().as_bytes(), &ctx())
            .unwrap_err();
        assert_eq!(e.into_error().reason(), Reason::UpstreamError);
        for bad in [
            json!({"candidates": [{"content": {"parts": [{"text": "x"}]}}]}),
            json!({"candidates": [{"content": {"parts": [{"executableCode": {}}]}, "finishReason": "STOP"}]}),
            json!({"candidates": [{"finishReason": "NEW_REASON"}]}),
            json!({}),
        ] {
            assert!(
                matches!(
                    MSG.response(bad.to_string().as_bytes(), &ctx()),
                    Err(TranslateError::BadResponse(_))
                ),
                "{bad}"
            );
        }
    }

    fn sse(chunks: &[Value]) -> Vec<u8> {
        chunks
            .iter()
            .map(|c| format!("data: {c}\r\n\r\n"))
            .collect::<String>()
            .into_bytes()
    }

    fn stream_chunks() -> Vec<Value> {
        let u = json!({"promptTokenCount": 110, "totalTokenCount": 110});
        vec![
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hm", "thought": true}]}}], "usageMetadata": u, "responseId": "r1"}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "m", "thought": true, "thoughtSignature": "c2ln"}]}}], "usageMetadata": u}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "usageMetadata": u}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "lo \"there\""}]}}], "usageMetadata": u}),
            json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "get", "args": {"city": "Paris"}}}]}}], "usageMetadata": u}),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 110, "candidatesTokenCount": 5, "thoughtsTokenCount": 3, "cachedContentTokenCount": 100}}),
        ]
    }

    fn run(pair: Pair, pieces: &[&[u8]]) -> (Result<(), TranslateError>, String) {
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
        let mut text = String::from_utf8(out.to_vec()).unwrap();
        // Ids are random: make them comparable.
        while let Some(i) = text.find("toolu_gemini_") {
            text.replace_range(i..i + 13 + 16, "toolu_ID");
        }
        while let Some(i) = text.find("msg_gemini_0") {
            text.replace_range(i..i + 11, "msg_ID");
        }
        (r, text)
    }

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
    fn a_gemini_stream_becomes_anthropic_events() {
        let input = sse(&stream_chunks());
        let (r, out) = run(MSG, &[&input]);
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
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ],
            "{out}"
        );
        assert_eq!(ev[0].1["message"]["id"], "msg_gemini_r1");
        assert_eq!(ev[1].1["content_block"]["type"], "thinking");
        assert_eq!(
            ev[4].1["delta"],
            json!({"type": "signature_delta", "signature": "c2ln"})
        );
        assert_eq!(ev[8].1["delta"]["text"], "lo \"there\"");
        assert_eq!(ev[10].1["index"], 2);
        assert_eq!(ev[10].1["content_block"]["name"], "get");
        assert_eq!(
            ev[11].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"city\":\"Paris\"}"})
        );
        assert_eq!(ev[13].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(
            ev[13].1["usage"],
            json!({"input_tokens": 10, "output_tokens": 8, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0})
        );
    }

    #[test]
    fn a_gemini_stream_becomes_openai_chunks() {
        let input = sse(&stream_chunks());
        let (r, out) = run(CHAT, &[&input]);
        r.unwrap();
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().1, "[DONE]");
        let text: String = ev
            .iter()
            .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello \"there\"");
        let args: String = ev
            .iter()
            .filter_map(|(_, c)| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, "{\"city\":\"Paris\"}");
        assert!(
            ev.iter()
                .any(|(_, c)| c["choices"][0]["finish_reason"] == "tool_calls")
        );
        let usage = &ev[ev.len() - 2].1["usage"];
        assert_eq!(usage["prompt_tokens"], 110);
        assert_eq!(usage["completion_tokens"], 8);
    }

    #[test]
    fn any_split_of_a_stream_gives_the_same_output() {
        let input = sse(&stream_chunks());
        let (_, whole) = run(MSG, &[&input]);
        for cut in (1..input.len()).step_by(7) {
            let (r, out) = run(MSG, &[&input[..cut], &input[cut..]]);
            r.unwrap();
            // Message ids differ only where Gemini gave none (here it did).
            assert_eq!(out, whole, "split at {cut}");
        }
    }

    #[test]
    fn cuts_errors_and_bad_chunks_are_errors() {
        let chunks = stream_chunks();
        // No finishReason: cut.
        let (r, out) = run(MSG, &[&sse(&chunks[..3])]);
        assert_eq!(r, Err(TranslateError::Truncated));
        assert!(out.contains("thinking_delta") && !out.contains("message_stop"));
        // An error event mid-stream: Google's status.
        let err = json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}});
        let mut input = sse(&chunks[..3]);
        input.extend(sse(&[err]));
        let (r, _) = run(CHAT, &[&input]);
        let e = r.unwrap_err();
        assert_eq!(
            e,
            TranslateError::Upstream {
                kind: "UNAVAILABLE".into(),
                message: "overloaded".into()
            }
        );
        assert_eq!(e.into_error().reason(), Reason::UpstreamUnavailable);
        for (status, reason) in [
            ("RESOURCE_EXHAUSTED", Reason::UpstreamRateLimited),
            ("PERMISSION_DENIED", Reason::UpstreamAuthFailed),
            ("NOT_FOUND", Reason::UpstreamModelNotFound),
            ("INVALID_ARGUMENT", Reason::UpstreamRejected),
            ("INTERNAL", Reason::UpstreamError),
        ] {
            let e = TranslateError::Upstream {
                kind: status.into(),
                message: String::new(),
            };
            assert_eq!(e.into_error().reason(), reason, "{status}");
        }
        // A model failure mid-stream.
        let mut input = sse(&chunks[..3]);
        input.extend(sse(&[
            json!({"candidates": [{"finishReason": "MALFORMED_FUNCTION_CALL"}]}),
        ]));
        let (r, _) = run(MSG, &[&input]);
        assert!(matches!(r, Err(TranslateError::Upstream { .. })), "{r:?}");
        // Not JSON, content after the end, a part of no known kind.
        for bad in [
            b"data: nope\r\n\r\n".to_vec(),
            [sse(&chunks), sse(&chunks[2..3])].concat(),
            sse(&[json!({"candidates": [{"content": {"parts": [{"unknownPart": 1}]}}]})]),
        ] {
            let (r, _) = run(MSG, &[&bad]);
            assert!(matches!(r, Err(TranslateError::BadResponse(_))), "{r:?}");
        }
        // A blocked prompt mid-stream is a refusal, not an error.
        let blocked = sse(&[json!({"promptFeedback": {"blockReason": "SAFETY"}})]);
        let (r, out) = run(MSG, &[&blocked]);
        r.unwrap();
        assert!(out.contains("\"stop_reason\":\"refusal\""), "{out}");
    }

    #[test]
    fn memory_stays_bounded_over_a_long_stream() {
        let mut t = MSG.stream(ctx(), &Options::default());
        let mut out = BytesMut::new();
        let chunk =
            sse(&[json!({"candidates": [{"content": {"parts": [{"text": "x".repeat(1000)}]}}]})]);
        let mut most = 0;
        for _ in 0..2000 {
            t.feed(&chunk, &mut out).unwrap();
            out.clear();
            most = most.max(t.buffered());
        }
        assert!(most < 64 * 1024, "buffered {most}");
    }
}
