//! The tracer behind [`GenAiSpanLayer`](super::GenAiSpanLayer): spans
//! batched on the Tokio runtime and exported by OTLP over HTTP (protobuf, on
//! hyper) or gRPC (tonic).
//!
//! Each setting left unset is read from the standard environment variables,
//! as the OpenTelemetry SDKs do; a setting made here wins over the variable:
//!
//! | setting | variables | default |
//! |---|---|---|
//! | [`Otlp::endpoint`] (the collector's base URL; `/v1/traces` is added for HTTP) | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT` (a base) | `http://localhost:4318` (HTTP), `http://localhost:4317` (gRPC) |
//! | [`Otlp::protocol`] | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, `grpc`) | `http/protobuf` |
//! | [`Otlp::header`] (added to the variables' headers) | `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`) | none |
//! | [`Otlp::service_name`] | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | `tollgate` |
//! | [`Otlp::sampling_ratio`] (parent-based: a sampled client's span is kept) | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | every span |
//! | [`Otlp::timeout`] | `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT` | 10 s |
//! | [`Otlp::batch_delay`] | `OTEL_BSP_SCHEDULE_DELAY` | 5 s |
//!
//! The collector is reached over plain `http://` (a local collector or a
//! sidecar): TLS to the collector is not built in, and an `https://`
//! endpoint is refused by [`Otlp::check`]. Header values (tokens) are never
//! logged or put in an error.
//!
//! ```no_run
//! use opentelemetry::trace::TracerProvider as _;
//! use tollgate::telemetry::GenAiSpanLayer;
//! use tollgate::telemetry::otlp::{DropOffRuntime, Otlp, Protocol};
//!
//! # #[tokio::main] async fn main() -> Result<(), tollgate::telemetry::otlp::OtlpError> {
//! // Inside the Tokio runtime: the batch processor runs on it.
//! let provider = Otlp::new()
//!     .endpoint("http://127.0.0.1:4317")
//!     .protocol(Protocol::Grpc)
//!     .service_name("my-gateway")
//!     .build()?;
//! // The last handle must not drop on a runtime thread: see `DropOffRuntime`.
//! let layer = GenAiSpanLayer::new(DropOffRuntime::new(provider.tracer("tollgate")));
//! // ... serve; when stopping, flush what is batched, off the runtime's threads:
//! tokio::task::spawn_blocking(move || provider.shutdown()).await.ok();
//! # let _ = layer; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{SpanBuilder, Tracer};

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracerProvider};

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), `POST {endpoint}/v1/traces`.
    HttpProtobuf,
    /// OTLP/gRPC (`grpc`), `TraceService/Export`.
    Grpc,
}

impl Protocol {
    /// The protocol an `OTEL_EXPORTER_OTLP_PROTOCOL` value names.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim() {
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }

    /// Its name in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }
}

/// A setting that cannot be used: which one (a builder setting's name, or
/// the environment variable it came from) and why. Never holds a header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpError {
    /// `endpoint`, `protocol`, `headers`, `sampling_ratio`, … or the variable's name.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

impl OtlpError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        OtlpError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for OtlpError {}

/// The OTLP exporter's settings (see the [module docs](self)).
#[derive(Clone, Default)]
pub struct Otlp {
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    headers: Vec<(String, String)>,
    service_name: Option<String>,
    sampling_ratio: Option<f64>,
    timeout: Option<Duration>,
    batch_delay: Option<Duration>,
}

impl fmt::Debug for Otlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: their values are credentials.
        f.debug_struct("Otlp")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("service_name", &self.service_name)
            .field("sampling_ratio", &self.sampling_ratio)
            .field("timeout", &self.timeout)
            .field("batch_delay", &self.batch_delay)
            .finish()
    }
}

const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
const PROTOCOL_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Otlp {
    /// Every setting from the environment (or its default).
    pub fn new() -> Self {
        Otlp::default()
    }

    /// The collector's base URL (`http://host:4318` for HTTP,
    /// `http://host:4317` for gRPC).
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// HTTP (protobuf) or gRPC.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// A header (gRPC: metadata) sent with every export, e.g. a token.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The `service.name` resource attribute.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// The share of traces kept, from 0 to 1 (parent-based: a request whose
    /// `traceparent` says sampled is kept whatever the ratio).
    pub fn sampling_ratio(mut self, ratio: f64) -> Self {
        self.sampling_ratio = Some(ratio);
        self
    }

    /// How long one export may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long spans wait in the batch before an export.
    pub fn batch_delay(mut self, delay: Duration) -> Self {
        self.batch_delay = Some(delay);
        self
    }

    /// The protocol in use: this setting, else the variables', else HTTP.
    pub fn resolved_protocol(&self) -> Result<Protocol, OtlpError> {
        if let Some(p) = self.protocol {
            return Ok(p);
        }
        for var in PROTOCOL_VARS {
            if let Some(v) = env(var) {
                return Protocol::from_name(&v).ok_or_else(|| {
                    OtlpError::new(
                        var,
                        format!(
                            "`{}` is not supported: use `http/protobuf` or `grpc`",
                            v.trim()
                        ),
                    )
                });
            }
        }
        Ok(Protocol::HttpProtobuf)
    }

    /// The endpoint as given (not the variables'), with `/v1/traces` added
    /// for HTTP; `None` leaves it to the variables.
    fn resolved_endpoint(&self, protocol: Protocol) -> Option<String> {
        let url = self.endpoint.as_deref()?.trim().trim_end_matches('/');
        Some(match protocol {
            Protocol::HttpProtobuf if !url.ends_with("/v1/traces") => format!("{url}/v1/traces"),
            _ => url.to_owned(),
        })
    }

    /// Checks every setting and the variables they leave to (the
    /// endpoint's URL, the protocol, the headers, the ratio, the durations).
    pub fn check(&self) -> Result<(), OtlpError> {
        self.resolved_protocol()?;
        let endpoint = match &self.endpoint {
            Some(url) => Some(("endpoint", url.clone())),
            None => ENDPOINT_VARS
                .iter()
                .find_map(|var| env(var).map(|v| (*var, v))),
        };
        if let Some((field, url)) = endpoint {
            check_url(field, &url)?;
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(OtlpError::new(
                    "headers",
                    format!("`{name}` is not a valid header name"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(OtlpError::new(
                    "headers",
                    format!("the value of `{name}` is not a valid header value"),
                ));
            }
        }
        if let Some(r) = self.sampling_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(OtlpError::new("sampling_ratio", "must be from 0 to 1"));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(OtlpError::new("timeout", "must be greater than 0"));
        }
        if self.batch_delay == Some(Duration::ZERO) {
            return Err(OtlpError::new("batch_delay", "must be greater than 0"));
        }
        Ok(())
    }

    /// Checks the settings, builds the exporter and a tracer provider
    /// batching on the Tokio runtime. Call it inside the runtime; shut the
    /// provider down (off the runtime's threads: `spawn_blocking`) to
    /// flush the last spans.
    pub fn build(self) -> Result<SdkTracerProvider, OtlpError> {
        self.check()?;
        let protocol = self.resolved_protocol()?;
        let endpoint = self.resolved_endpoint(protocol);
        let exporter = match protocol {
            Protocol::HttpProtobuf => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(url) = endpoint {
                    b = b.with_endpoint(url);
                }
                if let Some(t) = self.timeout {
                    b = b.with_timeout(t);
                }
                if !self.headers.is_empty() {
                    b = b.with_headers(self.headers.iter().cloned().collect::<HashMap<_, _>>());
                }
                b.build()
            }
            Protocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                if let Some(url) = endpoint {
                    b = b.with_endpoint(url);
                }
                if let Some(t) = self.timeout {
                    b = b.with_timeout(t);
                }
                if !self.headers.is_empty() {
                    let mut map = http::HeaderMap::new();
                    for (k, v) in &self.headers {
                        // Checked above.
                        if let (Ok(k), Ok(v)) = (
                            http::HeaderName::from_bytes(k.as_bytes()),
                            http::HeaderValue::from_str(v),
                        ) {
                            map.append(k, v);
                        }
                    }
                    b = b.with_metadata(
                        opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map),
                    );
                }
                b.build()
            }
        }
        // The exporter's own errors name settings, never header values.
        .map_err(|e| OtlpError::new("exporter", e.to_string()))?;
        let mut batch = BatchConfigBuilder::default();
        if let Some(d) = self.batch_delay {
            batch = batch.with_scheduled_delay(d);
        }
        let processor = BatchSpanProcessor::builder(exporter, Tokio)
            .with_batch_config(batch.build())
            .build();
        let mut resource = Resource::builder();
        match self.service_name {
            Some(name) => resource = resource.with_service_name(name),
            None if env("OTEL_SERVICE_NAME").is_none() => {
                resource = resource.with_service_name("tollgate")
            }
            None => {}
        }
        let mut provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build());
        if let Some(r) = self.sampling_ratio {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(
                Sampler::TraceIdRatioBased(r),
            )));
        }
        Ok(provider.build())
    }
}

fn check_url(field: &str, url: &str) -> Result<(), OtlpError> {
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|_| OtlpError::new(field, "is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(OtlpError::new(
                field,
                "`https://` is not supported: TLS to the collector is not built in; \
                 send to a local collector or sidecar over `http://`",
            ));
        }
        _ => return Err(OtlpError::new(field, "must be an `http://host:port` URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(OtlpError::new(field, "has no host"));
    }
    Ok(())
}

/// Holds a tracer or a tracer provider and drops it off the Tokio runtime's
/// threads.
///
/// The SDK shuts a provider down when its last handle (the provider, a
/// tracer, a span) drops, and with the batch processor on Tokio that
/// shutdown blocks until the batch task answers: on a runtime thread (a
/// current-thread runtime, or a server future aborted with its stack) the
/// task never runs and the thread hangs. Wrap the provider and the layer's
/// tracer in this, and the last drop happens on a thread of its own.
/// [`into_inner`](Self::into_inner) takes the value back (to shut it down
/// explicitly, e.g. in `spawn_blocking`).
#[derive(Clone, Debug)]
pub struct DropOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> DropOffRuntime<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        DropOffRuntime(Some(value))
    }

    /// The value, to be dropped by the caller.
    pub fn into_inner(mut self) -> T {
        self.0.take().expect("present until dropped")
    }

    fn get(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<T: Send + 'static> Drop for DropOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            std::thread::spawn(move || drop(value));
        }
    }
}

impl<T: Tracer + Send + 'static> Tracer for DropOffRuntime<T> {
    type Span = T::Span;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> Self::Span {
        self.get().build_with_context(builder, parent_cx)
    }
}
