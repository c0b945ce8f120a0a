//! An OpenAI Chat Completions client served by a Bedrock Converse upstream,
//! through Anthropic Messages as the pivot (see [`super::converse`]): the
//! request goes Chat → Messages → Converse, with both steps' refusals; the
//! answer and the stream come back Converse → Messages → Chat.

use serde_json::{Map, Value};

use super::converse;
use super::{
    Options, ResponseContext, TranslateError, Translated, TranslatedRequest, chat_to_messages,
};
use crate::error::Error;

/// Translates a Chat Completions request into a Converse request.
pub(super) fn request(
    req: Map<String, Value>,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    refuse_url_images(&req, converse::url_image)?;
    // The model goes in the URL; the pivot's own `model` is dropped.
    let pivot = chat_to_messages::request_tree(req, "", options)?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&pivot.body) else {
        return Err(Error::new(
            crate::error::Reason::Internal,
            "the request could not be translated",
        ));
    };
    let mut out = converse::request(map, options)?;
    out.include_usage = pivot.include_usage;
    Ok(out)
}

/// An image given by URL is refused under the Chat client's own field name
/// (the pivot would otherwise name its Anthropic counterpart), with the
/// upstream's own refusal (`refuse`; Gemini's translator uses it too).
pub(super) fn refuse_url_images(
    req: &Map<String, Value>,
    refuse: fn(&str) -> Error,
) -> Result<(), Error> {
    let Some(Value::Array(messages)) = req.get("messages") else {
        return Ok(());
    };
    for (i, m) in messages.iter().enumerate() {
        let Some(Value::Array(parts)) = m.get("content") else {
            continue;
        };
        for (j, p) in parts.iter().enumerate() {
            if p.get("type").and_then(Value::as_str) != Some("image_url") {
                continue;
            }
            let url = match p.get("image_url") {
                Some(Value::String(u)) => Some(u.as_str()),
                Some(o) => o.get("url").and_then(Value::as_str),
                None => None,
            };
            if url.is_some_and(|u| !u.starts_with("data:")) {
                return Err(refuse(&format!("messages[{i}].content[{j}].image_url.url")));
            }
        }
    }
    Ok(())
}

/// Translates a whole Converse answer into a Chat Completions answer.
pub(super) fn response(v: &Value, ctx: &ResponseContext) -> Result<Translated, TranslateError> {
    let (message, _) = converse::response(v, ctx)?;
    chat_to_messages::response_tree(&message, ctx)
}

/// A translator of a ConverseStream into Chat Completions chunks.
pub(super) fn stream(ctx: ResponseContext) -> converse::Stream {
    converse::Stream::to_chat(ctx)
}
