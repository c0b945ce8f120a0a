//! One OpenTelemetry span per request, following the GenAI semantic
//! conventions, and its export by OTLP (feature `otel`).
//!
//! [`GenAiSpanLayer`] sits under [`ReadRequest`](crate::read_request::ReadRequest)
//! (it reads the parsed request by type) and opens a span of kind `CLIENT`
//! named `"{gen_ai.operation.name} {gen_ai.request.model}"` when the request
//! reaches it. The span ends when the response body ends: at a stream's last
//! byte, at its failure, or when the client drops it (then
//! `tollgate.cancelled = true`). An error answer (a refusal of an inner
//! layer, an upstream failure) ends it at once. A W3C `traceparent` header
//! the client sent makes the span a child of the client's span.
//!
//! | attribute | when | value |
//! |---|---|---|
//! | `gen_ai.operation.name` | always | `chat` (chat completions, responses, messages), `text_completion`, `embeddings`, `generate_content` (other routes) |
//! | `gen_ai.request.model` | always | the model (group) the client asked for |
//! | `gen_ai.request.max_tokens` | when the request sets it | `max_tokens` / `max_completion_tokens` / `max_output_tokens` |
//! | `gen_ai.provider.name` | always | the serving deployment's API (`openai`, `anthropic`, `azure.ai.openai`, `aws.bedrock`) as declared with [`GenAiSpanLayer::provider`]; else the route's family (`anthropic` on `/v1/messages`, `openai` elsewhere) |
//! | `gen_ai.response.model` | when served | the upstream model name that answered ([`Served`]) |
//! | `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens` | when the answer ended | the upstream's reported usage; without one, an estimate from the prompt's and the answer's bytes, and `tollgate.usage_estimated = true` |
//! | `http.response.status_code` | always | the answer's status (an error's status for a failure) |
//! | `error.type` | on failure | the error's stable [`Reason`](crate::Reason) word (`upstream_rate_limited`, `budget_exceeded`, …), also after a stream's commit point; the status code for a non-2xx answer that is not a tollgate error |
//! | `tollgate.stream` | always | whether the client asked for a stream |
//! | `tollgate.deployment`, `tollgate.model_group`, `tollgate.attempts` | when the router served | the deployment, the group that served (after a fallback, not the one asked for), the attempts it took |
//! | `tollgate.cost_usd` | with [`GenAiSpanLayer::prices`], when served | the cost of those tokens at the price `Budget` settles at ([`Prices::price_of`]) |
//! | `tollgate.key_id`, `tollgate.team` | with a [`Caller`] hook | the caller's public ids ([`VirtualKeyCaller`] for virtual keys) |
//! | `tollgate.cancelled` | when the client went away | `true` |
//! | `gen_ai.input.messages`, `gen_ai.system_instructions` | only with [`GenAiSpanLayer::capture_content`] | the request's `messages` / `prompt` / `input` and `system`, as JSON in the caller's wire format, at most [`CAPTURE_LIMIT`] bytes each |
//!
//! Never a key, a hash, an upstream credential, a header, an error message
//! (the status description is the reason word) or, unless content capture
//! is on, any text of the prompt or the answer. The answer's content is never
//! captured: a stream is read in O(1) memory.
//!
//! Usage is read from the bytes as they pass with the budget's
//! [`Meter`] (O(1) state per stream). Put the layer above `Budget` to span
//! its refusals too: then a stream whose client did not ask for
//! `stream_options.include_usage` has its usage chunk removed by `Budget`
//! before this layer sees it, and the output tokens are the estimate
//! (`tollgate.usage_estimated`).
//!
//! **Cost.** Without the layer, nothing. With it: the span's attributes, one
//! extra boxed body per response, and the meter reading each frame. A
//! sampled-out span ([`Sampler`](opentelemetry_sdk::trace::Sampler)) records
//! nothing and leaves the body unwrapped.
//!
//! [`otlp`] builds the tracer: OTLP over HTTP (protobuf) or gRPC, batched
//! on the Tokio runtime.
//!
//! ```
//! use http::{Request, Response};
//! use opentelemetry::trace::noop::NoopTracer;
//! use tollgate::read_request::ReadRequestLayer;
//! use tollgate::telemetry::GenAiSpanLayer;
//! use tollgate::{Body, Error, LlmRequest};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A real program passes `otlp::Otlp::new().build()?.tracer("tollgate")`.
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(GenAiSpanLayer::new(NoopTracer::new()))
//!     .service(service_fn(|_req: LlmRequest| async {
//!         Ok::<_, Error>(Response::new(Body::full(r#"{"usage":{"prompt_tokens":3,"completion_tokens":5}}"#)))
//!     }));
//! let req = Request::post("/v1/chat/completions")
//!     .body(Body::full(r#"{"model":"gpt-4o-mini","messages":[]}"#))
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

pub mod otlp;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Frame, SizeHint};
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, Status, Tracer};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project::pin_project;
use tower::{Layer, Service};

use crate::budget::{Meter, Price, Prices, TokenUsage};
use crate::error::Error;
use crate::family::{Api, Family};
use crate::read_request::Endpoint;
use crate::router::{ATTEMPTS_HEADER, DEPLOYMENT_HEADER, MODEL_GROUP_HEADER};
use crate::{Body, LlmRequest, Map, Served};

/// `gen_ai.operation.name`
pub const OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.provider.name`
pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
/// `gen_ai.request.model`
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.request.max_tokens`
pub const REQUEST_MAX_TOKENS: &str = "gen_ai.request.max_tokens";
/// `gen_ai.response.model`
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.usage.input_tokens`
pub const USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`
pub const USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `gen_ai.input.messages` (content capture only)
pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
/// `gen_ai.system_instructions` (content capture only)
pub const SYSTEM_INSTRUCTIONS: &str = "gen_ai.system_instructions";
/// `error.type`
pub const ERROR_TYPE: &str = "error.type";
/// `http.response.status_code`
pub const HTTP_STATUS: &str = "http.response.status_code";
/// `tollgate.key_id`: the caller key's public id.
pub const KEY_ID: &str = "tollgate.key_id";
/// `tollgate.team`: the caller's team id.
pub const TEAM: &str = "tollgate.team";
/// `tollgate.deployment`: the deployment that served.
pub const DEPLOYMENT: &str = "tollgate.deployment";
/// `tollgate.model_group`: the model group that served.
pub const MODEL_GROUP: &str = "tollgate.model_group";
/// `tollgate.attempts`: upstream attempts the router made.
pub const ATTEMPTS: &str = "tollgate.attempts";
/// `tollgate.stream`: whether the client asked for a stream.
pub const STREAM: &str = "tollgate.stream";
/// `tollgate.usage_estimated`: the token counts are estimates.
pub const USAGE_ESTIMATED: &str = "tollgate.usage_estimated";
/// `tollgate.cancelled`: the client dropped the answer before its end.
pub const CANCELLED: &str = "tollgate.cancelled";
/// `tollgate.cost_usd`: what the request cost at the configured prices.
pub const COST_USD: &str = "tollgate.cost_usd";

/// The most bytes of one captured attribute (content capture only); a
/// longer value is cut at a character boundary and ends with `…`.
pub const CAPTURE_LIMIT: usize = 16 * 1024;

/// The GenAI conventions' `gen_ai.provider.name` of an upstream API.
pub fn provider_name(api: Api) -> &'static str {
    match api {
        Api::OpenAi => "openai",
        Api::Anthropic => "anthropic",
        Api::Azure => "azure.ai.openai",
        Api::Bedrock => "aws.bedrock",
        Api::Gemini => "gcp.gemini",
        Api::Vertex => "gcp.vertex_ai",
    }
}

/// The GenAI conventions' `gen_ai.operation.name` of a route.
pub fn operation_name(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
        _ => "generate_content",
    }
}

/// Adds the caller's attributes (public ids only) to a request's span.
///
/// Implemented by every `Fn(&I, &mut Vec<KeyValue>)`, by [`NoCaller`] (the
/// default: nothing) and, with the feature `keys`, by [`VirtualKeyCaller`].
pub trait Caller<I> {
    /// Pushes `identity`'s attributes (e.g. [`KEY_ID`], [`TEAM`]).
    fn attributes(&self, identity: &I, out: &mut Vec<KeyValue>);
}

impl<F, I> Caller<I> for F
where
    F: Fn(&I, &mut Vec<KeyValue>),
{
    fn attributes(&self, identity: &I, out: &mut Vec<KeyValue>) {
        self(identity, out)
    }
}

/// A [`Caller`] that adds nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCaller;

impl<I> Caller<I> for NoCaller {
    fn attributes(&self, _: &I, _: &mut Vec<KeyValue>) {}
}

/// A [`Caller`] for virtual keys: [`KEY_ID`] (the key's public id) and
/// [`TEAM`] (its team's id), never the secret or its hash.
#[cfg(feature = "keys")]
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtualKeyCaller;

#[cfg(feature = "keys")]
impl Caller<crate::keys::Key> for VirtualKeyCaller {
    fn attributes(&self, key: &crate::keys::Key, out: &mut Vec<KeyValue>) {
        out.push(KeyValue::new(KEY_ID, key.id_arc().clone()));
        if let Some(team) = key.team() {
            out.push(KeyValue::new(TEAM, team.id().to_owned()));
        }
    }
}

struct Shared<T, C> {
    tracer: T,
    caller: C,
    capture: bool,
    providers: Map<Arc<str>, &'static str>,
    prices: Option<Prices>,
    propagator: TraceContextPropagator,
}

/// Opens one GenAI span per request, ended with its response body
/// (see the [module docs](self)).
pub struct GenAiSpanLayer<T, C = NoCaller> {
    shared: Arc<Shared<T, C>>,
}

impl<T, C> Clone for GenAiSpanLayer<T, C> {
    fn clone(&self) -> Self {
        GenAiSpanLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<T, C> fmt::Debug for GenAiSpanLayer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenAiSpanLayer")
            .field("capture_content", &self.shared.capture)
            .field("providers", &self.shared.providers.len())
            .finish_non_exhaustive()
    }
}

impl<T> GenAiSpanLayer<T, NoCaller> {
    /// Spans started on `tracer`, without caller attributes or content.
    pub fn new(tracer: T) -> Self {
        GenAiSpanLayer {
            shared: Arc::new(Shared {
                tracer,
                caller: NoCaller,
                capture: false,
                providers: Map::default(),
                prices: None,
                propagator: TraceContextPropagator::new(),
            }),
        }
    }
}

impl<T, C> GenAiSpanLayer<T, C> {
    fn shared_mut(&mut self) -> &mut Shared<T, C> {
        Arc::get_mut(&mut self.shared).expect("configured before the layer is cloned")
    }

    /// Adds the caller's attributes with `caller` (e.g. [`VirtualKeyCaller`]).
    pub fn caller<C2>(self, caller: C2) -> GenAiSpanLayer<T, C2> {
        let shared = Arc::into_inner(self.shared).expect("configured before the layer is cloned");
        GenAiSpanLayer {
            shared: Arc::new(Shared {
                tracer: shared.tracer,
                caller,
                capture: shared.capture,
                providers: shared.providers,
                prices: shared.prices,
                propagator: shared.propagator,
            }),
        }
    }

    /// Records the request's messages and system instructions
    /// ([`INPUT_MESSAGES`], [`SYSTEM_INSTRUCTIONS`]). Off by default: prompts
    /// are the users' data.
    ///
    /// # Panics
    ///
    /// When the layer was already cloned (configure it first).
    pub fn capture_content(mut self, on: bool) -> Self {
        self.shared_mut().capture = on;
        self
    }

    /// Prices the request at `prices` (the `Budget` layer's): its span's
    /// [`COST_USD`], from the same usage as its token counts.
    ///
    /// # Panics
    ///
    /// When the layer was already cloned (configure it first).
    pub fn prices(mut self, prices: Prices) -> Self {
        self.shared_mut().prices = Some(prices);
        self
    }

    /// Says that the provider (deployment) named `name` (the name in its
    /// [`Served`] extension) speaks `api`: its spans' `gen_ai.provider.name`.
    ///
    /// # Panics
    ///
    /// When the layer was already cloned (configure it first).
    pub fn provider(mut self, name: impl Into<Arc<str>>, api: Api) -> Self {
        self.shared_mut()
            .providers
            .insert(name.into(), provider_name(api));
        self
    }
}

impl<S, T, C> Layer<S> for GenAiSpanLayer<T, C> {
    type Service = GenAiSpan<S, T, C>;

    fn layer(&self, inner: S) -> Self::Service {
        GenAiSpan {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`GenAiSpanLayer`].
pub struct GenAiSpan<S, T, C = NoCaller> {
    inner: S,
    shared: Arc<Shared<T, C>>,
}

impl<S: Clone, T, C> Clone for GenAiSpan<S, T, C> {
    fn clone(&self) -> Self {
        GenAiSpan {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, T, C> fmt::Debug for GenAiSpan<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenAiSpan")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

impl<S, I, T, C> Service<LlmRequest<I>> for GenAiSpan<S, T, C>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error>,
    T: Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
    C: Caller<I> + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, T::Span>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: LlmRequest<I>) -> Self::Future {
        let shared = &*self.shared;
        let parsed = req.body();
        let summary = parsed.summary();
        let operation = operation_name(summary.endpoint);
        let mut attributes = Vec::with_capacity(8);
        attributes.push(KeyValue::new(OPERATION_NAME, operation));
        attributes.push(KeyValue::new(REQUEST_MODEL, summary.model.clone()));
        attributes.push(KeyValue::new(STREAM, summary.stream));
        if let Some(max) = summary.max_output_tokens {
            attributes.push(KeyValue::new(REQUEST_MAX_TOKENS, clamp(max)));
        }
        shared.caller.attributes(parsed.identity(), &mut attributes);
        if shared.capture {
            capture(parsed.bytes(), &mut attributes);
        }
        let parent = shared.propagator.extract(&Headers(req.headers()));
        let span = shared
            .tracer
            .span_builder(format!("{operation} {}", summary.model))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&shared.tracer, &parent);
        let lookup = if shared.providers.is_empty() && shared.prices.is_none() {
            None
        } else {
            Some(self.shared.clone() as Arc<dyn Lookup>)
        };
        let group = shared.prices.as_ref().map(|_| summary.model.clone());
        let recording = Recording {
            span,
            endpoint: summary.endpoint,
            prompt_tokens: summary.prompt_tokens_estimate(),
            lookup,
            group,
            price: None,
            done: false,
        };
        ResponseFuture {
            inner: self.inner.call(req),
            recording: Some(recording),
        }
    }
}

/// The provider names and prices a layer knows, without its tracer's type.
trait Lookup: Send + Sync {
    fn provider_of(&self, served: &str) -> Option<&'static str>;
    fn price_of(&self, group: &str, served: &Served) -> Option<Price>;
}

impl<T: Send + Sync, C: Send + Sync> Lookup for Shared<T, C> {
    fn provider_of(&self, served: &str) -> Option<&'static str> {
        self.providers.get(served).copied()
    }

    fn price_of(&self, group: &str, served: &Served) -> Option<Price> {
        Some(self.prices.as_ref()?.price_of(group, Some(served)))
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Records the request's content (capture on): `messages` (chat, messages),
/// `prompt` (completions) or `input` (responses, embeddings), and `system`.
fn capture(bytes: &Bytes, out: &mut Vec<KeyValue>) {
    let Ok(serde_json::Value::Object(body)) = serde_json::from_slice(bytes) else {
        return;
    };
    if let Some(v) = ["messages", "prompt", "input"]
        .iter()
        .find_map(|k| body.get(*k))
    {
        out.push(KeyValue::new(INPUT_MESSAGES, bounded(v.to_string())));
    }
    if let Some(v) = body.get("system").or_else(|| body.get("instructions")) {
        out.push(KeyValue::new(SYSTEM_INSTRUCTIONS, bounded(v.to_string())));
    }
}

fn bounded(mut s: String) -> String {
    if s.len() > CAPTURE_LIMIT {
        let mut at = CAPTURE_LIMIT;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
    s
}

/// A span in flight, ended once (by the answer's end, its failure, or drop).
struct Recording<Sp: Span> {
    span: Sp,
    endpoint: Endpoint,
    prompt_tokens: u64,
    lookup: Option<Arc<dyn Lookup>>,
    /// The group asked for, when prices are known (`Budget` settles by it).
    group: Option<String>,
    price: Option<Price>,
    done: bool,
}

impl<Sp: Span> Recording<Sp> {
    /// The family's default provider name, when the deployment's API is not known.
    fn default_provider(&self) -> &'static str {
        match self.endpoint.family() {
            Family::Anthropic => "anthropic",
            _ => "openai",
        }
    }

    /// What the response's head says: who served, how, with which status.
    fn answered(&mut self, res: &Response<Body>) {
        let mut provider = None;
        let status = res.status();
        self.span
            .set_attribute(KeyValue::new(HTTP_STATUS, i64::from(status.as_u16())));
        if let Some(served) = res.extensions().get::<Served>() {
            self.span
                .set_attribute(KeyValue::new(RESPONSE_MODEL, served.model.clone()));
            if let Some(lookup) = &self.lookup {
                provider = lookup.provider_of(&served.provider);
                if let Some(group) = &self.group {
                    self.price = lookup.price_of(group, served);
                }
            }
        }
        self.span.set_attribute(KeyValue::new(
            PROVIDER_NAME,
            provider.unwrap_or_else(|| self.default_provider()),
        ));
        let headers = res.headers();
        for (header, key) in [
            (DEPLOYMENT_HEADER, DEPLOYMENT),
            (MODEL_GROUP_HEADER, MODEL_GROUP),
        ] {
            if let Some(v) = headers.get(header).and_then(|v| v.to_str().ok()) {
                self.span.set_attribute(KeyValue::new(key, v.to_owned()));
            }
        }
        if let Some(n) = headers
            .get(ATTEMPTS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
        {
            self.span.set_attribute(KeyValue::new(ATTEMPTS, n));
        }
        if !status.is_success() {
            self.span
                .set_attribute(KeyValue::new(ERROR_TYPE, status.as_u16().to_string()));
            self.span
                .set_status(Status::error(status.as_str().to_owned()));
        }
    }

    /// A failure: its reason word as `error.type` and the span's status.
    fn failed(&mut self, e: &Error) {
        let reason = e.reason().as_str();
        self.span.set_attribute(KeyValue::new(ERROR_TYPE, reason));
        self.span.set_status(Status::error(reason));
    }

    fn usage(&mut self, meter: &Meter) {
        let (usage, estimated) = match meter.usage() {
            Some(u) => (u, false),
            None => (
                TokenUsage {
                    prompt_tokens: self.prompt_tokens,
                    completion_tokens: meter.output_tokens_estimate(),
                    ..TokenUsage::default()
                },
                true,
            ),
        };
        let (input, output) = (usage.prompt_tokens, usage.completion_tokens);
        if let Some(price) = &self.price {
            let usd = price.cost(&usage) as f64 / 1e6;
            self.span.set_attribute(KeyValue::new(COST_USD, usd));
        }
        self.span
            .set_attribute(KeyValue::new(USAGE_INPUT_TOKENS, clamp(input)));
        self.span
            .set_attribute(KeyValue::new(USAGE_OUTPUT_TOKENS, clamp(output)));
        if estimated {
            self.span
                .set_attribute(KeyValue::new(USAGE_ESTIMATED, true));
        }
    }

    fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.span.end();
        }
    }
}

impl<Sp: Span> Drop for Recording<Sp> {
    fn drop(&mut self) {
        if !self.done {
            self.span.set_attribute(KeyValue::new(CANCELLED, true));
            self.end();
        }
    }
}

/// The future of [`GenAiSpan`]: the inner answer, its body wrapped to end
/// the span.
#[pin_project]
pub struct ResponseFuture<F, Sp: Span> {
    #[pin]
    inner: F,
    recording: Option<Recording<Sp>>,
}

impl<F: fmt::Debug, Sp: Span> fmt::Debug for ResponseFuture<F, Sp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, Sp> Future for ResponseFuture<F, Sp>
where
    F: Future<Output = Result<Response<Body>, Error>>,
    Sp: Span + Send + Sync + 'static,
{
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut recording = this.recording.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(res) if !recording.span.is_recording() => {
                // Sampled out: nothing to record, the body is left as it is.
                recording.end();
                Ok(res)
            }
            Ok(res) => {
                recording.answered(&res);
                let sse = res
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let meter = if sse { Meter::sse() } else { Meter::json() };
                Ok(res.map(|inner| {
                    Body::new(SpanBody {
                        inner,
                        meter,
                        recording: Some(recording),
                    })
                }))
            }
            Err(e) => {
                recording
                    .span
                    .set_attribute(KeyValue::new(HTTP_STATUS, i64::from(e.status().as_u16())));
                let provider = recording.default_provider();
                recording
                    .span
                    .set_attribute(KeyValue::new(PROVIDER_NAME, provider));
                recording.failed(&e);
                recording.end();
                Err(e)
            }
        })
    }
}

/// A response body that ends its request's span at its end.
#[pin_project]
struct SpanBody<Sp: Span> {
    #[pin]
    inner: Body,
    meter: Meter,
    recording: Option<Recording<Sp>>,
}

impl<Sp: Span> SpanBody<Sp> {
    fn finish(meter: &mut Meter, recording: &mut Option<Recording<Sp>>, error: Option<&Error>) {
        if let Some(mut r) = recording.take() {
            meter.finish();
            r.usage(meter);
            if let Some(e) = error {
                r.failed(e);
            }
            r.end();
        }
    }
}

impl<Sp: Span> http_body::Body for SpanBody<Sp> {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.meter.feed(data);
                }
                // hyper stops polling a body that says it has ended.
                if this.inner.is_end_stream() {
                    Self::finish(this.meter, this.recording, None);
                }
            }
            Some(Err(e)) => Self::finish(this.meter, this.recording, Some(e)),
            None => Self::finish(this.meter, this.recording, None),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
