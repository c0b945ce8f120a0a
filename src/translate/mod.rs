//! Translation between API families: OpenAI Chat Completions ↔ Anthropic
//! Messages, requests, answers and streams.
//!
//! One place decides how a (route endpoint, upstream [`Api`]) pair is
//! served: [`plan`]. A matching pair is [`Plan::PassThrough`] (the bytes go on with
//! only `model` rewritten, by the caller); a differing pair is
//! [`Plan::Translate`] with the [`Pair`] that knows how to convert the
//! request ([`Pair::request`]), a whole answer ([`Pair::response`]) and a
//! stream, event by event ([`Pair::stream`] → [`StreamTranslator`]). Later
//! upstream APIs (Azure OpenAI, Bedrock, Gemini) add variants to
//! [`Api`] and [`Pair`], and arms to [`plan`]; nothing else changes
//! shape.
//!
//! What cannot be carried faithfully is refused, never dropped: a request
//! field with no counterpart is an [`Error`] with [`Reason::InvalidRequest`]
//! and `metadata.param` naming the field; an upstream answer that breaks its
//! family's rules is a [`TranslateError`], which the caller turns into
//! `upstream_bad_response` (or, for an upstream `error` event, the matching
//! upstream reason) with [`TranslateError::into_error`].
//!
//! Streams are translated with O(1) state per stream: each input event
//! becomes at most a few output events as it arrives; no text or tool-call
//! argument is ever accumulated, and one event's buffered size is capped
//! ([`Options::event_cap`]).
//!
//! ```
//! use tollgate::read_request::Endpoint;
//! use tollgate::translate::{plan, Api, Options, Plan, ResponseContext};
//!
//! let Plan::Translate(pair) = plan(Endpoint::ChatCompletions, Api::Anthropic) else {
//!     unreachable!()
//! };
//! let client = br#"{"model": "fast", "messages": [{"role": "user", "content": "Hi"}], "stream": true}"#;
//! let request = pair.request(client, "claude-sonnet-4-5", &Options::default()).unwrap();
//! assert!(request.stream);
//!
//! let mut stream = pair.stream(ResponseContext::new("fast", 1_700_000_000), &Options::default());
//! let mut out = bytes::BytesMut::new();
//! stream.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n", &mut out).unwrap();
//! assert!(!stream.committed());
//! ```
//!
//! The mapping tables, the `max_tokens` rule and the list of refusals are in
//! `docs/translation.md`.

mod chat_to_converse;
mod chat_to_messages;
mod converse;
mod gemini;
mod messages_request;
mod messages_to_chat;
mod messages_to_converse;
mod raw;
pub mod sse;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::error::{Error, Reason};
pub use crate::family::Api;
use crate::read_request::Endpoint;

pub use converse::EventStreamDecoder;
pub(crate) use converse::exception_reason;
pub use sse::{SseDecoder, SseEvent};

/// How a (route endpoint, upstream API) pair is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The families match: the body is forwarded as bytes, only `model` rewritten.
    PassThrough,
    /// The families differ: the pair's translator converts request and answer.
    Translate(Pair),
    /// The upstream API has no counterpart of this endpoint (embeddings
    /// from an Anthropic upstream, Anthropic's token counting from an
    /// OpenAI one, …): the deployment does not serve the route.
    NotServed,
}

/// A translator between two different families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pair {
    /// An OpenAI Chat Completions client served by an Anthropic Messages upstream.
    ChatToMessages,
    /// An Anthropic Messages client served by an OpenAI-compatible Chat Completions upstream.
    MessagesToChat,
    /// An OpenAI Chat Completions client served by a Bedrock Converse upstream
    /// (through Anthropic Messages as the pivot).
    ChatToConverse,
    /// An Anthropic Messages client served by a Bedrock Converse upstream.
    MessagesToConverse,
    /// An OpenAI Chat Completions client served by Google's Gemini
    /// `generateContent` (the Gemini API or Vertex AI, as `api` says;
    /// through Anthropic Messages as the pivot).
    ChatToGemini(Api),
    /// An Anthropic Messages client served by Google's Gemini `generateContent`.
    MessagesToGemini(Api),
}

/// The one place that decides how a route's endpoint is served by an
/// upstream API.
pub fn plan(endpoint: Endpoint, api: Api) -> Plan {
    match (endpoint, api) {
        (
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::Other,
            Api::OpenAi,
        )
        | (Endpoint::Messages | Endpoint::CountTokens, Api::Anthropic) => Plan::PassThrough,
        (Endpoint::ChatCompletions, Api::Anthropic) => Plan::Translate(Pair::ChatToMessages),
        (Endpoint::Messages, Api::OpenAi) => Plan::Translate(Pair::MessagesToChat),
        // Azure OpenAI speaks OpenAI's wire format: the same arms as OpenAI's.
        (
            Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::Other,
            Api::Azure,
        ) => Plan::PassThrough,
        (Endpoint::Messages, Api::Azure) => Plan::Translate(Pair::MessagesToChat),
        (Endpoint::CountTokens, Api::Azure) => Plan::NotServed,
        (
            Endpoint::Completions | Endpoint::Embeddings | Endpoint::Responses | Endpoint::Other,
            Api::Anthropic,
        )
        | (Endpoint::CountTokens, Api::OpenAi) => Plan::NotServed,
        (Endpoint::ChatCompletions, Api::Bedrock) => Plan::Translate(Pair::ChatToConverse),
        (Endpoint::Messages, Api::Bedrock) => Plan::Translate(Pair::MessagesToConverse),
        (
            Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::CountTokens
            | Endpoint::Other,
            Api::Bedrock,
        ) => Plan::NotServed,
        // Google's Gemini API and Vertex AI speak the same `generateContent`.
        (Endpoint::ChatCompletions, Api::Gemini | Api::Vertex) => {
            Plan::Translate(Pair::ChatToGemini(api))
        }
        (Endpoint::Messages, Api::Gemini | Api::Vertex) => {
            Plan::Translate(Pair::MessagesToGemini(api))
        }
        (
            Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::CountTokens
            | Endpoint::Other,
            Api::Gemini | Api::Vertex,
        ) => Plan::NotServed,
    }
}

/// Which field carries Anthropic's `max_tokens` to an OpenAI-compatible upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OpenAiMaxTokens {
    /// `max_tokens`: understood by vLLM, DeepSeek, Ollama, llama.cpp and
    /// OpenAI's non-reasoning models.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: required by OpenAI's reasoning models.
    MaxCompletionTokens,
}

/// What the caller decides for a deployment's translations.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `max_tokens` sent to an Anthropic upstream when an OpenAI client
    /// gave neither `max_completion_tokens` nor `max_tokens` (Anthropic
    /// requires one). Default 4096.
    pub default_max_tokens: u64,
    /// The field that carries `max_tokens` to an OpenAI-compatible upstream.
    pub openai_max_tokens: OpenAiMaxTokens,
    /// Anthropic `cache_control` markers have no OpenAI counterpart: by
    /// default a request carrying one is refused; with `true` they are
    /// removed (they only steer the upstream's prompt cache, never the
    /// answer). Default `false`.
    pub drop_cache_control: bool,
    /// The largest single upstream SSE event a stream translator buffers;
    /// a larger one is an error. Default 1 MiB.
    pub event_cap: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            default_max_tokens: 4096,
            openai_max_tokens: OpenAiMaxTokens::default(),
            drop_cache_control: false,
            event_cap: 1 << 20,
        }
    }
}

/// A translated request.
#[derive(Clone, Debug)]
pub struct TranslatedRequest {
    /// The upstream's JSON body.
    pub body: Bytes,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether a streaming client asked for a final usage chunk (OpenAI
    /// `stream_options.include_usage`); pass it on in [`ResponseContext`].
    pub include_usage: bool,
}

/// What a translated answer says about the request it answers.
#[derive(Clone, Debug)]
pub struct ResponseContext {
    /// The model name the client asked for (answers name it, not the upstream's).
    pub model: Arc<str>,
    /// The `created` timestamp (Unix seconds) of OpenAI-shaped answers.
    pub created: u64,
    /// Whether an OpenAI streaming client asked for the final usage chunk.
    pub include_usage: bool,
}

impl ResponseContext {
    /// A context for the client's `model`, created at `created` (Unix seconds), without a usage chunk.
    pub fn new(model: &str, created: u64) -> Self {
        ResponseContext {
            model: model.into(),
            created,
            include_usage: false,
        }
    }

    /// Sets whether the final usage chunk is sent (OpenAI clients).
    pub fn include_usage(mut self, yes: bool) -> Self {
        self.include_usage = yes;
        self
    }
}

/// Tokens an answer used, in Anthropic's partition: `input_tokens` excludes
/// the cache reads and writes, which are counted apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens neither read from nor written to the prompt cache.
    pub input_tokens: u64,
    /// Output tokens (reasoning included).
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_tokens: u64,
}

impl Usage {
    /// All input tokens: OpenAI's `prompt_tokens`.
    pub fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens
    }

    /// The fields of Anthropic's `usage`, written into an object.
    pub(crate) fn write_anthropic(&self, o: &mut sse::Obj<'_>) {
        o.field("input_tokens", &self.input_tokens)
            .field("output_tokens", &self.output_tokens)
            .field("cache_read_input_tokens", &self.cache_read_tokens)
            .field("cache_creation_input_tokens", &self.cache_creation_tokens);
    }

    /// Anthropic's `usage` as a value, for the events built as trees.
    pub(crate) fn anthropic(&self) -> Value {
        serde_json::json!({
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
            "cache_creation_input_tokens": self.cache_creation_tokens,
        })
    }
}

/// An upstream answer or stream that cannot be translated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranslateError {
    /// The upstream broke its family's rules (not JSON, a forbidden event
    /// sequence, a missing field): `upstream_bad_response`.
    BadResponse(Cow<'static, str>),
    /// One SSE event exceeded the cap: `upstream_bad_response`.
    EventTooLarge {
        /// The cap, in bytes.
        cap: usize,
    },
    /// The stream ended before its family's last event: `upstream_stream_cut`.
    Truncated,
    /// The upstream sent an error (an Anthropic `error` event, an OpenAI
    /// `{"error": …}` chunk), with its type and message.
    Upstream {
        /// The upstream's error type (`overloaded_error`, `rate_limit_error`, …).
        kind: String,
        /// The upstream's message.
        message: String,
    },
}

impl TranslateError {
    pub(crate) fn bad(message: impl Into<Cow<'static, str>>) -> Self {
        TranslateError::BadResponse(message.into())
    }

    /// The error in the stack's contract: `upstream_bad_response`,
    /// `upstream_stream_cut`, or for an upstream error its matching reason
    /// (`rate_limit_error` → `upstream_rate_limited`, `overloaded_error` →
    /// `upstream_unavailable`, …) with `metadata.upstream_type`.
    pub fn into_error(self) -> Error {
        match self {
            TranslateError::BadResponse(m) => Error::new(
                Reason::UpstreamBadResponse,
                format!("the upstream sent an invalid answer: {m}"),
            ),
            TranslateError::EventTooLarge { cap } => Error::new(
                Reason::UpstreamBadResponse,
                format!("the upstream sent a stream event larger than {cap} bytes"),
            ),
            TranslateError::Truncated => Error::new(
                Reason::UpstreamStreamCut,
                "the upstream's stream ended before its last event",
            ),
            TranslateError::Upstream { kind, message } => {
                let reason = match kind.as_str() {
                    "rate_limit_error" | "rate_limit_exceeded" => Reason::UpstreamRateLimited,
                    "overloaded_error" | "service_unavailable" => Reason::UpstreamUnavailable,
                    "authentication_error" | "permission_error" => Reason::UpstreamAuthFailed,
                    "invalid_request_error" => Reason::UpstreamRejected,
                    "request_too_large" => Reason::BodyTooLarge,
                    "not_found_error" => Reason::UpstreamModelNotFound,
                    other => exception_reason(other)
                        .or_else(|| gemini::status_reason(other))
                        .unwrap_or(Reason::UpstreamError),
                };
                let mut message = message;
                if message.len() > 400 {
                    let mut end = 400;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                }
                Error::new(reason, format!("the upstream failed: {message}"))
                    .with_meta("upstream_type", kind)
            }
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TranslateError::BadResponse(m) => write!(f, "invalid upstream answer: {m}"),
            TranslateError::EventTooLarge { cap } => {
                write!(f, "an upstream stream event exceeded {cap} bytes")
            }
            TranslateError::Truncated => f.write_str("the upstream stream ended early"),
            TranslateError::Upstream { kind, message } => write!(f, "upstream {kind}: {message}"),
        }
    }
}

impl std::error::Error for TranslateError {}

impl From<TranslateError> for Error {
    fn from(e: TranslateError) -> Self {
        e.into_error()
    }
}

impl Pair {
    /// The endpoint of the client this pair serves.
    pub fn client(self) -> Endpoint {
        match self {
            Pair::ChatToMessages | Pair::ChatToConverse | Pair::ChatToGemini(_) => {
                Endpoint::ChatCompletions
            }
            Pair::MessagesToChat | Pair::MessagesToConverse | Pair::MessagesToGemini(_) => {
                Endpoint::Messages
            }
        }
    }

    /// The upstream API this pair sends to.
    pub fn upstream(self) -> Api {
        match self {
            Pair::ChatToMessages => Api::Anthropic,
            Pair::MessagesToChat => Api::OpenAi,
            Pair::ChatToConverse | Pair::MessagesToConverse => Api::Bedrock,
            Pair::ChatToGemini(api) | Pair::MessagesToGemini(api) => api,
        }
    }

    /// The upstream endpoint this pair sends to: [`Endpoint::Other`] for
    /// Converse and Gemini, whose paths (`/model/{modelId}/converse`,
    /// `…/models/{model}:generateContent`) their providers build themselves.
    pub fn upstream_endpoint(self) -> Endpoint {
        match self {
            Pair::ChatToMessages => Endpoint::Messages,
            Pair::MessagesToChat => Endpoint::ChatCompletions,
            Pair::ChatToConverse
            | Pair::MessagesToConverse
            | Pair::ChatToGemini(_)
            | Pair::MessagesToGemini(_) => Endpoint::Other,
        }
    }

    /// Translates the client's JSON body into the upstream's, naming
    /// `upstream_model`. A field that cannot be carried faithfully is an
    /// `invalid_request` error whose `metadata.param` names it.
    pub fn request(
        self,
        body: &[u8],
        upstream_model: &str,
        options: &Options,
    ) -> Result<TranslatedRequest, Error> {
        self.request_from(body, upstream_model, options, false)
    }

    /// [`request`](Self::request) of a body the request scanner has already
    /// accepted (a [`Parsed`](crate::read_request::Parsed) request's bytes,
    /// as the provider has them): not validated a second time.
    pub(crate) fn request_scanned(
        self,
        body: &[u8],
        upstream_model: &str,
        options: &Options,
    ) -> Result<TranslatedRequest, Error> {
        self.request_from(body, upstream_model, options, true)
    }

    fn request_from(
        self,
        body: &[u8],
        upstream_model: &str,
        options: &Options,
        scanned: bool,
    ) -> Result<TranslatedRequest, Error> {
        // Chat Completions ↔ Messages read the body without building a tree.
        if let Pair::ChatToMessages | Pair::MessagesToChat = self {
            let read = if scanned {
                raw::scanned_body
            } else {
                raw::body
            };
            // Both families' requests: `messages` is read next.
            let req = read(body, Some("messages")).map_err(|e| match e {
                Some(e) => Error::new(
                    Reason::InvalidJson,
                    format!("the body is not valid JSON: {e}"),
                ),
                None => bad("", "the body must be a JSON object"),
            })?;
            return match self {
                Pair::ChatToMessages => chat_to_messages::request(req, upstream_model, options),
                _ => messages_to_chat::request(req, upstream_model, options),
            };
        }
        let Value::Object(map) = serde_json::from_slice::<Value>(body).map_err(|e| {
            Error::new(
                Reason::InvalidJson,
                format!("the body is not valid JSON: {e}"),
            )
        })?
        else {
            return Err(bad("", "the body must be a JSON object"));
        };
        match self {
            Pair::ChatToMessages | Pair::MessagesToChat => unreachable!("read above"),
            Pair::ChatToConverse => chat_to_converse::request(map, options),
            Pair::MessagesToConverse => messages_to_converse::request(map, options),
            Pair::ChatToGemini(_) => gemini::request_from_chat(map, options),
            Pair::MessagesToGemini(_) => gemini::request(map, options),
        }
    }

    /// Translates a whole (non-stream) upstream answer into the client's family.
    ///
    /// An answer translated is valid JSON: every pair reads it with a
    /// validating reader (the request scanner, or a `serde_json::Value`
    /// parse) before anything else, so the provider does not check it
    /// again.
    pub fn response(
        self,
        body: &[u8],
        ctx: &ResponseContext,
    ) -> Result<Translated, TranslateError> {
        // Chat Completions ↔ Messages read the answer without building a tree.
        if let Pair::ChatToMessages | Pair::MessagesToChat = self {
            // The array of the answer read next: an Anthropic message's
            // `content`, an OpenAI answer's `choices`.
            let array = match self {
                Pair::ChatToMessages => "content",
                _ => "choices",
            };
            let answer = raw::body(body, Some(array)).map_err(|e| match e {
                Some(e) => TranslateError::bad(format!("the answer is not JSON: {e}")),
                None => TranslateError::bad("the answer is not a JSON object"),
            })?;
            return match self {
                Pair::ChatToMessages => chat_to_messages::response(answer, body.len(), ctx),
                _ => messages_to_chat::response(answer, body.len(), ctx),
            };
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| TranslateError::bad(format!("the answer is not JSON: {e}")))?;
        match self {
            Pair::ChatToMessages | Pair::MessagesToChat => unreachable!("read above"),
            Pair::ChatToConverse => chat_to_converse::response(&value, ctx),
            Pair::MessagesToConverse => messages_to_converse::response(&value, ctx),
            Pair::ChatToGemini(_) => gemini::response_to_chat(&value, ctx),
            Pair::MessagesToGemini(_) => gemini::response_to_messages(&value, ctx),
        }
    }

    /// A translator of the upstream's stream into the client's framing.
    pub fn stream(self, ctx: ResponseContext, options: &Options) -> StreamTranslator {
        let state = match self {
            Pair::ChatToMessages => State::FromMessages(chat_to_messages::Stream::new(ctx)),
            Pair::MessagesToChat => State::FromChat(messages_to_chat::Stream::new(ctx)),
            Pair::ChatToConverse => State::Converse(chat_to_converse::stream(ctx)),
            Pair::MessagesToConverse => State::Converse(messages_to_converse::stream(ctx)),
            Pair::ChatToGemini(_) => State::Gemini(gemini::Stream::to_chat(ctx)),
            Pair::MessagesToGemini(_) => State::Gemini(gemini::Stream::to_messages(ctx)),
        };
        let decoder = match self.upstream() {
            Api::Bedrock => Decoder::EventStream(EventStreamDecoder::new(options.event_cap)),
            _ => Decoder::Sse(SseDecoder::new(options.event_cap)),
        };
        StreamTranslator {
            decoder,
            state,
            progress: Progress::default(),
        }
    }
}

/// A translated whole answer and the usage it reported.
#[derive(Clone, Debug)]
pub struct Translated {
    /// The client's JSON body.
    pub body: Bytes,
    /// The usage the upstream reported, if it did.
    pub usage: Option<Usage>,
}

/// What a stream translator has seen: the commit point and the usage.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Progress {
    pub(crate) committed: bool,
    pub(crate) usage: Option<Usage>,
}

#[derive(Debug)]
enum State {
    FromMessages(chat_to_messages::Stream),
    FromChat(messages_to_chat::Stream),
    Converse(converse::Stream),
    Gemini(gemini::Stream),
}

/// How the upstream's stream is framed: SSE, or (Bedrock) binary event-stream messages.
#[derive(Debug)]
enum Decoder {
    Sse(SseDecoder),
    EventStream(EventStreamDecoder),
}

impl Decoder {
    fn feed(
        &mut self,
        chunk: &[u8],
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        match self {
            Decoder::Sse(d) => d.feed(chunk, on_event),
            Decoder::EventStream(d) => d.feed(chunk, on_event),
        }
    }

    fn finish(
        &mut self,
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        match self {
            Decoder::Sse(d) => d.finish(on_event),
            Decoder::EventStream(d) => d.finish(),
        }
    }

    fn buffered(&self) -> usize {
        match self {
            Decoder::Sse(d) => d.buffered(),
            Decoder::EventStream(d) => d.buffered(),
        }
    }
}

/// Translates one upstream stream (SSE, or Bedrock's binary event stream)
/// into the client's framing, event by event, in O(1) memory: [`feed`](Self::feed) each chunk as it arrives,
/// [`finish`](Self::finish) at the end.
#[derive(Debug)]
pub struct StreamTranslator {
    decoder: Decoder,
    state: State,
    progress: Progress,
}

impl StreamTranslator {
    /// Reads the next bytes of the upstream stream, writing whatever client
    /// events they complete into `out`. After an error the stream is broken:
    /// the caller ends it (before the commit point it can retry instead).
    pub fn feed(&mut self, chunk: &[u8], out: &mut BytesMut) -> Result<(), TranslateError> {
        let StreamTranslator {
            decoder,
            state,
            progress,
        } = self;
        decoder.feed(chunk, &mut |event| state.event(event, out, progress))
    }

    /// The upstream stream ended: reads what the decoder still holds and
    /// checks that the stream ended as its family requires, or fails with
    /// [`TranslateError::Truncated`]. The client's closing events (for an
    /// OpenAI client the usage chunk if asked and `data: [DONE]`; for an
    /// Anthropic client `message_delta` and `message_stop`) are written as
    /// soon as the upstream's last event arrives.
    pub fn finish(&mut self, out: &mut BytesMut) -> Result<(), TranslateError> {
        let StreamTranslator {
            decoder,
            state,
            progress,
        } = self;
        decoder.finish(&mut |event| state.event(event, out, progress))?;
        match state {
            State::FromMessages(s) => s.finish(),
            State::FromChat(s) => s.finish(),
            State::Converse(s) => s.finish(),
            // Gemini's stream has no last event: the end is its last chunk.
            State::Gemini(s) => s.finish(out, progress),
        }
    }

    /// Whether content (text, reasoning or a tool call) has been written:
    /// the stream's commit point, after which no retry or fallback may happen.
    pub fn committed(&self) -> bool {
        self.progress.committed
    }

    /// The usage the upstream reported so far (complete once the stream ended).
    pub fn usage(&self) -> Option<Usage> {
        self.progress.usage
    }

    /// Bytes the translator holds now: a small multiple of the event cap
    /// while one event is read, a few KiB between events, whatever the
    /// stream's length.
    pub fn buffered(&self) -> usize {
        self.decoder.buffered()
            + match &self.state {
                State::FromMessages(s) => s.buffered(),
                State::FromChat(s) => s.buffered(),
                State::Converse(s) => s.buffered(),
                State::Gemini(s) => s.buffered(),
            }
    }
}

impl State {
    fn event(
        &mut self,
        event: SseEvent<'_>,
        out: &mut BytesMut,
        progress: &mut Progress,
    ) -> Result<(), TranslateError> {
        match self {
            State::FromMessages(s) => s.event(event, out, progress),
            State::FromChat(s) => s.event(event, out, progress),
            State::Converse(s) => s.event(event, out, progress),
            State::Gemini(s) => s.event(event, out, progress),
        }
    }
}

/// Request fields the gateway itself acts on (the per-request fallback list,
/// OpenRouter style): consumed by the stack, never sent to the upstream.
pub const GATEWAY_FIELDS: [&str; 1] = ["models"];

/// An `invalid_request` error naming `param` (as the admin API's `bad()` does).
pub(crate) fn bad(param: &str, message: impl fmt::Display) -> Error {
    if param.is_empty() {
        return Error::new(Reason::InvalidRequest, message.to_string());
    }
    Error::new(Reason::InvalidRequest, format!("`{param}`: {message}")).with_meta("param", param)
}

/// A token count, tolerating floats (rounded) and missing or null fields (0).
pub(crate) fn tokens(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f > 0.0).map(|f| f.round() as u64))
            .unwrap_or(0),
        _ => 0,
    }
}

/// Parses one SSE data payload as a JSON object.
pub(crate) fn parse_event(data: &[u8]) -> Result<serde_json::Map<String, Value>, TranslateError> {
    match serde_json::from_slice::<Value>(data) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TranslateError::bad("a stream event is not a JSON object")),
        Err(_) => Err(TranslateError::bad("a stream event's data is not JSON")),
    }
}

/// The string at `map[key]`, or a bad-response error naming it.
pub(crate) fn str_field<'a>(
    map: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a str, TranslateError> {
    map.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::bad(format!("`{key}` is missing or not a string")))
}
