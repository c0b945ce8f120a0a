//! An Anthropic Messages request read once, for the translators that take
//! Messages as their pivot (Bedrock Converse, Gemini): each top-level field
//! checked in one place, with the same refusals whatever the upstream; what
//! each upstream does with a field stays in its translator.

use serde_json::{Map, Value};

use super::bad;
use crate::error::Error;

/// How a translator words "this field has no counterpart upstream": its
/// own refusal, naming the field.
pub(super) type Untranslatable = fn(&str) -> Error;

/// Anthropic's `thinking`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Thinking {
    /// `{"type": "disabled"}`.
    Disabled,
    /// `{"type": "enabled", "budget_tokens": n}`.
    Enabled(u64),
}

/// The top-level fields of a Messages request, checked; `messages` and
/// `system` as they came (their blocks are the translator's to read).
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) stream: bool,
    pub(super) messages: Vec<Value>,
    pub(super) system: Option<Value>,
    pub(super) max_tokens: Option<u64>,
    /// `temperature` and `top_p`, numbers, as given.
    pub(super) temperature: Option<Value>,
    pub(super) top_p: Option<Value>,
    pub(super) top_k: Option<u64>,
    /// An array of strings.
    pub(super) stop_sequences: Option<Value>,
    pub(super) tools: Option<Value>,
    /// Only with `tools` (refused without them).
    pub(super) tool_choice: Option<Value>,
    pub(super) thinking: Option<Thinking>,
    /// `metadata.user_id` (the only metadata Anthropic defines).
    pub(super) user_id: Option<String>,
}

impl Fields {
    /// Reads `req`: a null field is an absent one and the gateway's own
    /// fields are skipped; a field of the wrong type is refused by name; a
    /// field Messages' pivot does not carry is refused with `untranslatable`.
    pub(super) fn read(
        req: Map<String, Value>,
        untranslatable: Untranslatable,
    ) -> Result<Self, Error> {
        let mut f = Fields::default();
        let mut messages = None;
        for (key, value) in req {
            if value.is_null() || super::GATEWAY_FIELDS.contains(&key.as_str()) {
                continue;
            }
            match key.as_str() {
                "model" => {}
                "stream" => {
                    f.stream = value
                        .as_bool()
                        .ok_or_else(|| bad("stream", "must be a boolean"))?
                }
                "messages" => messages = Some(value),
                "system" => f.system = Some(value),
                "max_tokens" => {
                    f.max_tokens = Some(
                        value
                            .as_u64()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| bad("max_tokens", "must be a positive integer"))?,
                    )
                }
                "temperature" | "top_p" => {
                    if !value.is_number() {
                        return Err(bad(&key, "must be a number"));
                    }
                    if key == "top_p" {
                        f.top_p = Some(value);
                    } else {
                        f.temperature = Some(value);
                    }
                }
                "top_k" => {
                    f.top_k = Some(
                        value
                            .as_u64()
                            .ok_or_else(|| bad("top_k", "must be a non-negative integer"))?,
                    )
                }
                "stop_sequences" => {
                    if !value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string))
                    {
                        return Err(bad("stop_sequences", "must be an array of strings"));
                    }
                    f.stop_sequences = Some(value);
                }
                "metadata" => {
                    let Value::Object(m) = value else {
                        return Err(bad("metadata", "must be an object"));
                    };
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            (_, Value::Null) => {}
                            ("user_id", Value::String(user)) => f.user_id = Some(user),
                            ("user_id", _) => {
                                return Err(bad("metadata.user_id", "must be a string"));
                            }
                            _ => return Err(untranslatable(&format!("metadata.{k}"))),
                        }
                    }
                }
                "tools" => f.tools = Some(value),
                "tool_choice" => f.tool_choice = Some(value),
                "thinking" => {
                    f.thinking = Some(match value.get("type").and_then(Value::as_str) {
                        Some("disabled") => Thinking::Disabled,
                        Some("enabled") => Thinking::Enabled(
                            value
                                .get("budget_tokens")
                                .and_then(Value::as_u64)
                                .ok_or_else(|| {
                                    bad("thinking.budget_tokens", "must be a positive integer")
                                })?,
                        ),
                        _ => return Err(untranslatable("thinking.type")),
                    })
                }
                _ => return Err(untranslatable(&key)),
            }
        }
        let Some(Value::Array(list)) = messages else {
            return Err(bad("messages", "must be an array"));
        };
        f.messages = list;
        if f.tool_choice.is_some() && f.tools.is_none() {
            return Err(bad("tool_choice", "is given without `tools`"));
        }
        Ok(f)
    }
}

/// Refuses (with `untranslatable`) the first non-null key of `m` outside `allowed`.
pub(super) fn only_keys(
    m: &Map<String, Value>,
    at: &str,
    allowed: &[&str],
    untranslatable: Untranslatable,
) -> Result<(), Error> {
    match m
        .iter()
        .find(|(k, v)| !v.is_null() && !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(untranslatable(&format!("{at}.{k}"))),
        None => Ok(()),
    }
}

/// A text block's `text`, or a refusal naming `{at}.text`.
pub(super) fn text_of<'a>(b: &'a Map<String, Value>, at: &str) -> Result<&'a str, Error> {
    b.get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{at}.text"), "must be a string"))
}
