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
//! An upstream speaks one [`Api`]; how a route's endpoint meets it — passed
//! through, translated, or not served — is decided in one place,
//! [`translate::plan`](crate::translate::plan).
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

/// The API an upstream speaks (a deployment's `api`): how the provider
/// authenticates, which client headers it forwards, and how a stream ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Api {
    /// OpenAI's API and every compatible one (vLLM, DeepSeek, Ollama, …):
    /// `Authorization: Bearer <key>`; no client header forwarded.
    #[default]
    OpenAi,
    /// Anthropic's Messages API: `x-api-key: <key>`, the client's
    /// `anthropic-*` headers (`anthropic-version`, `anthropic-beta`, …)
    /// forwarded, `anthropic-version: 2023-06-01` when the client sent none.
    Anthropic,
    /// Azure OpenAI: OpenAI's wire format at Azure's URLs (deployment style
    /// `{endpoint}/openai/deployments/{deployment}/…?api-version=…`, or v1
    /// style `{endpoint}/openai/v1/…`), authenticated by `api-key: <key>` or
    /// a Microsoft Entra ID bearer token (see [`crate::provider::azure`]).
    Azure,
    /// AWS Bedrock's Converse API (`/model/{modelId}/converse`, and
    /// `converse-stream` with binary event-stream framing): SigV4-signed
    /// with AWS credentials, or a Bedrock API key as `Authorization: Bearer`;
    /// no client header forwarded. Every route is translated.
    Bedrock,
    /// Google's Gemini API (`{base}/v1beta/models/{model}:generateContent`,
    /// and `:streamGenerateContent?alt=sse`), authenticated by
    /// `x-goog-api-key: <key>`; no client header forwarded. Chat and
    /// Messages are translated (see [`crate::provider::gemini`]).
    Gemini,
    /// Google Cloud's Vertex AI serving Gemini models (the same
    /// `generateContent` body at `{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:…`),
    /// authenticated by an OAuth token a service account's signed JWT is
    /// exchanged for (see [`crate::provider::gemini`]).
    Vertex,
}

impl Api {
    /// The API named in a config (`"openai"`, `"anthropic"`, `"azure"`,
    /// `"bedrock"`, `"gemini"`, `"vertex"`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "openai" => Some(Api::OpenAi),
            "anthropic" => Some(Api::Anthropic),
            "azure" => Some(Api::Azure),
            "bedrock" => Some(Api::Bedrock),
            "gemini" => Some(Api::Gemini),
            "vertex" => Some(Api::Vertex),
            _ => None,
        }
    }

    /// Its name in a config.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::OpenAi => "openai",
            Api::Anthropic => "anthropic",
            Api::Azure => "azure",
            Api::Bedrock => "bedrock",
            Api::Gemini => "gemini",
            Api::Vertex => "vertex",
        }
    }
}
