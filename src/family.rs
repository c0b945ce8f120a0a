//! API families: the wire format an inbound route speaks, errors included.
//!
//! Every inbound route belongs to one family, and everything the gateway
//! writes on that route — an answer, an error, the end of a stream that
//! failed after it started — is in that family's shape. The family comes
//! from the route's [`Endpoint`](crate::read_request::Endpoint); errors are
//! rendered for it in one place ([`Error::to_json_in`](crate::Error::to_json_in),
//! [`Error::to_sse_tail_in`](crate::Error::to_sse_tail_in)), chosen by
//! [`NormalizeErrors`](crate::normalize::NormalizeErrors) from the route.
//!
//! | family | routes | an error | a stream that fails after it started |
//! |---|---|---|---|
//! | [`Family::OpenAi`] | `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, any other | `{"error": {"code", "message", "type", "metadata"}}` | `data: {"error": …}`, a chunk with `finish_reason: "error"`, `data: [DONE]` |
//! | [`Family::OpenAiResponses`] | `/v1/responses` | as OpenAI's | `event: error` (`{"type": "error", "code", "message"}`), then `event: response.failed`; no `[DONE]` |
//! | [`Family::Anthropic`] | `/v1/messages`, `/v1/messages/count_tokens` | `{"type": "error", "error": {"type", "message", "metadata"}}` | `event: error` with the same body |
//!
//! The HTTP status and `Retry-After` are the same in every family;
//! tollgate's machine-readable `reason` (and the rest of its metadata) is in
//! `metadata`, which the official SDKs keep on the exception's body.

/// The API family of an inbound route (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// OpenAI's Chat Completions, Completions and Embeddings.
    #[default]
    OpenAi,
    /// OpenAI's Responses API.
    OpenAiResponses,
    /// Anthropic's Messages API.
    Anthropic,
}

impl Family {
    /// The family of a request path, by its last segments (so a prefix
    /// mount such as `/ai/v1/messages` is still Anthropic's).
    pub fn from_path(path: &str) -> Self {
        crate::read_request::Endpoint::from_path(path).family()
    }
}
