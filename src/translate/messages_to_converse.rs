//! An Anthropic Messages client served by a Bedrock Converse upstream: the
//! request goes Messages → Converse, the answer and the stream come back
//! Converse → Messages (the mapping is in [`super::converse`]).

use bytes::BytesMut;
use serde_json::{Map, Value};

use super::converse;
use super::sse::write_json;
use super::{Options, ResponseContext, TranslateError, Translated, TranslatedRequest};
use crate::error::Error;

/// Translates an Anthropic Messages request into a Converse request.
pub(super) fn request(
    req: Map<String, Value>,
    options: &Options,
) -> Result<TranslatedRequest, Error> {
    converse::request(req, options)
}

/// Translates a whole Converse answer into an Anthropic message.
pub(super) fn response(v: &Value, ctx: &ResponseContext) -> Result<Translated, TranslateError> {
    let (message, usage) = converse::response(v, ctx)?;
    let mut out = BytesMut::new();
    write_json(&mut out, &message);
    Ok(Translated {
        body: out.freeze(),
        usage,
    })
}

/// A translator of a ConverseStream into Anthropic events.
pub(super) fn stream(ctx: ResponseContext) -> converse::Stream {
    converse::Stream::to_messages(ctx)
}
