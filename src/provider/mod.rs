//! The provider `Service`: an OpenAI-compatible upstream (or Anthropic's
//! Messages API, Azure OpenAI, AWS Bedrock, or Google's Gemini API and
//! Vertex AI: see [`azure`], [`bedrock`], [`gemini`]).
//!
//! [`Provider`] takes `Request<`[`Parsed`]`>` and forwards it to
//! `base_url` + the path of the request's endpoint
//! ([`Endpoint::upstream_path`](crate::read_request::Endpoint::upstream_path):
//! `/chat/completions`, `/completions`, `/embeddings`, `/responses`), wherever
//! the stack is mounted (`/ai/v1/chat/completions` included), over a
//! pooled [`HttpClient`] (hyper-util; HTTP/1.1, and HTTP/2 by ALPN over
//! rustls TLS; optionally HTTP/2 with prior knowledge, h2c, to plain
//! `http://` upstreams: see [`HttpClientBuilder::http2_prior_knowledge`]).
//! The body goes out as the client's bytes with only the `model`
//! value rewritten: nothing the client did not send is added, and none of the
//! client's headers (its key above all) are forwarded.
//!
//! Timeouts, each reported as 408 `upstream_timeout` naming its phase:
//! connect (on the [`HttpClient`]), first byte (until response headers), idle
//! (between body chunks) and total (the whole exchange).
//!
//! Answers:
//! - 2xx streams (`text/event-stream`) pass through chunk by chunk, as the
//!   upstream's own `Bytes`, never copied or re-encoded. A stream the upstream
//!   cuts (a broken connection, or a chat stream that ends without
//!   `data: [DONE]`) fails with 502 `upstream_stream_cut`, which
//!   [`NormalizeErrors`](crate::normalize::NormalizeErrors) turns into the
//!   SSE error event, a `finish_reason: "error"` chunk and `[DONE]`.
//! - 2xx non-streaming answers are read whole (up to a limit) and checked to
//!   be JSON before the headers go out, so a cut or garbage answer is a clean
//!   502 the router can still retry, not a 200 with a broken body.
//! - Non-2xx answers become a typed [`Error`] by [`Error::from_upstream`]: a
//!   429 stays 429 with its `Retry-After`, a 401 is 502 `upstream_auth_failed`,
//!   a 404 that does not name a model is 502 `upstream_route_not_served`
//!   naming the upstream path (`metadata.upstream_path`).
//!
//! ```
//! use http::Request;
//! use tollgate::provider::{HttpClient, Provider, Timeouts};
//! use tollgate::read_request::ReadRequestLayer;
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), tollgate::provider::BuildError> {
//! let client = HttpClient::builder().connect_timeout(Duration::from_secs(2)).build()?;
//! let provider = Provider::builder("openai", "https://api.openai.com/v1")?
//!     .api_key("sk-from-the-environment")
//!     .model("gpt-4o-mini")
//!     .timeouts(Timeouts { first_byte: Duration::from_secs(30), ..Timeouts::default() })
//!     .client(client)
//!     .build();
//! let svc = ServiceBuilder::new().layer(ReadRequestLayer::new(4 << 20)).service(provider);
//! # let _ = svc; Ok(()) }
//! ```

pub mod azure;
pub mod bedrock;
mod body;
pub mod gemini;
mod translated;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service;

use crate::body::{Body, Chunks};
use crate::error::{Error, RAW_LIMIT, Reason, TimeoutPhase};
use crate::read_request::{Parsed, json_string};
use crate::sanitize::Secrets;
use crate::{Served, UpstreamTime};

pub use bedrock::{BedrockAuth, default_base_url as bedrock_default_base_url};
use body::StreamEnd;
pub use body::UpstreamBody;
use translated::TranslatedBody;

use crate::translate::Plan;

/// A provider could not be built: the message names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for BuildError {}

/// Upstream timeouts other than connect (which is the [`HttpClient`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Until the response headers arrive.
    pub first_byte: Duration,
    /// Between two chunks of the response body.
    pub idle: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
}

impl Default for Timeouts {
    /// 60 s to first byte, 30 s idle, 10 min total.
    fn default() -> Self {
        Timeouts {
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        }
    }
}

type Connector = HttpsConnector<HttpConnector>;

/// A pooled HTTP client for upstreams: hyper-util's legacy pool over rustls.
/// Cheap to clone; share one between providers so they share connections.
///
/// `https://` upstreams negotiate HTTP/2 or HTTP/1.1 by ALPN; `http://`
/// upstreams get HTTP/1.1, or HTTP/2 with prior knowledge (h2c) when the
/// builder's [`http2_prior_knowledge`](HttpClientBuilder::http2_prior_knowledge)
/// is on. Both kinds share one connector (TCP_NODELAY, the connect timeout,
/// the TLS roots) and the HTTP/2 settings below; each has its own pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// `https://` (ALPN) and, without prior knowledge, `http://` (HTTP/1.1).
    client: Client<Connector, Chunks>,
    /// `http://` with HTTP/2 prior knowledge, when switched on.
    h2c: Option<Client<Connector, Chunks>>,
    connect_timeout: Duration,
}

/// The HTTP/2 receive window of one stream. A client that stops reading its
/// stream lets at most this much of the upstream's answer wait in the
/// gateway; then flow control holds back that stream alone.
pub const HTTP2_STREAM_WINDOW: u32 = 1 << 20;

/// The HTTP/2 receive window of a whole connection. Data a slow client has not
/// read yet holds connection window too, so it is set far above the stream
/// window: it takes 1,024 fully stalled streams before the other streams
/// sharing an upstream connection are slowed.
pub const HTTP2_CONNECTION_WINDOW: u32 = 1 << 30;

/// How long an HTTP/2 connection may stay silent before the client pings it.
pub const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is declared dead
/// (every stream on it then fails: a stream already answering ends with
/// `upstream_stream_cut`, one waiting for headers is `upstream_unreachable`).
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds an [`HttpClient`].
#[derive(Debug)]
pub struct HttpClientBuilder {
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    http2_prior_knowledge: bool,
    http2_keep_alive: (Duration, Duration),
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    error: Option<BuildError>,
}

impl HttpClient {
    /// A builder with defaults: 5 s connect timeout, webpki roots.
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            http2_prior_knowledge: false,
            http2_keep_alive: (HTTP2_KEEP_ALIVE_INTERVAL, HTTP2_KEEP_ALIVE_TIMEOUT),
            extra_roots: Vec::new(),
            error: None,
        }
    }
}

impl HttpClientBuilder {
    /// Time allowed to open a TCP connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long an idle pooled connection is kept.
    pub fn pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = d;
        self
    }

    /// How many idle connections per host are kept.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// Speaks HTTP/2 with prior knowledge (h2c) to plain `http://`
    /// upstreams instead of HTTP/1.1 (off by default). `https://` upstreams
    /// are unaffected: they keep negotiating HTTP/2 or HTTP/1.1 by ALPN.
    ///
    /// Turn it on only when every `http://` upstream this client reaches
    /// speaks h2c (an HTTP/1.1-only server refuses the HTTP/2 preface, and
    /// every request to it fails as `upstream_unreachable`). What it buys:
    /// all concurrent requests to one upstream share one TCP connection (one
    /// file descriptor, one set of buffers) instead of one connection each,
    /// which is most of the gateway's memory per open stream. What it costs:
    /// the pool opens one HTTP/2 connection per upstream host and port and
    /// never a second, so the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`
    /// (hyper's default is 200, nginx's 128) caps the requests in flight to
    /// it; more wait inside the client, counted against the first-byte
    /// timeout. Raise the upstream's limit to the concurrency you expect.
    pub fn http2_prior_knowledge(mut self, on: bool) -> Self {
        self.http2_prior_knowledge = on;
        self
    }

    /// HTTP/2 keep-alive (by ALPN or prior knowledge): a connection silent
    /// for `interval` is pinged, idle or not, and one whose ping goes
    /// unanswered for `timeout` is closed, so the pool opens a new one
    /// instead of sending requests into a dead connection (defaults
    /// [`HTTP2_KEEP_ALIVE_INTERVAL`] and [`HTTP2_KEEP_ALIVE_TIMEOUT`]).
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.http2_keep_alive = (interval, timeout);
        self
    }

    /// Also trusts the certificates in this PEM (for a private CA or a
    /// self-signed upstream).
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Self {
        match crate::tls::pem_certificates(pem) {
            Ok(certs) => self.extra_roots.extend(certs),
            Err(e) => self.error = Some(BuildError(e)),
        }
        self
    }

    /// The client.
    pub fn build(self) -> Result<HttpClient, BuildError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut roots = crate::tls::webpki_root_store();
        crate::tls::add_roots(&mut roots, self.extra_roots).map_err(BuildError)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| BuildError(format!("TLS set-up failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            // HTTP/2, whether by ALPN or prior knowledge: many streams share a
            // connection, so one slow reader must not hold the connection's
            // window, and a dead connection must be noticed without waiting
            // for the kernel.
            .http2_initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .http2_initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .http2_keep_alive_interval(self.http2_keep_alive.0)
            .http2_keep_alive_timeout(self.http2_keep_alive.1)
            .http2_keep_alive_while_idle(true)
            // When many clients go away at once, the gateway cancels their
            // upstream streams, and the upstream's DATA already on the wire
            // for them is answered with RST_STREAM(STREAM_CLOSED). h2 counts
            // those as the peer's protocol errors and, past 1,024, closes the
            // connection (`too_many_internal_resets`) with every other stream
            // on it. An upstream is a configured, trusted peer: no limit.
            .http2_max_local_error_reset_streams(None);
        let client = builder.build(connector.clone());
        let h2c = self
            .http2_prior_knowledge
            .then(|| builder.http2_only(true).build(connector));
        Ok(HttpClient {
            client,
            h2c,
            connect_timeout: self.connect_timeout,
        })
    }
}

impl HttpClient {
    /// Whether an upstream of this scheme is spoken to in h2c.
    fn is_h2c(&self, scheme: &http::uri::Scheme) -> bool {
        self.h2c.is_some() && *scheme == http::uri::Scheme::HTTP
    }

    /// The client for an upstream of this scheme.
    pub(crate) fn pick(&self, scheme: &http::uri::Scheme) -> &Client<Connector, Chunks> {
        match &self.h2c {
            Some(h2c) if self.is_h2c(scheme) => h2c,
            _ => &self.client,
        }
    }

    /// Whether `http://` upstreams get HTTP/2 with prior knowledge (h2c).
    pub fn http2_prior_knowledge(&self) -> bool {
        self.h2c.is_some()
    }
}

pub use crate::family::Api;

/// The `anthropic-version` sent when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An upstream as a `Service<Request<Parsed>>`. Cheap to clone.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The base URL's path without a trailing slash, e.g. `/v1`.
    base_path: String,
    api_key: Option<String>,
    api: Api,
    headers: HeaderMap,
    /// The upstream model name and its JSON literal, when it is rewritten.
    model: Option<(Arc<str>, Bytes)>,
    include_usage: bool,
    /// How requests of another family are translated for this upstream.
    translate: crate::translate::Options,
    timeouts: Timeouts,
    max_response_bytes: usize,
    client: Option<HttpClient>,
    /// Azure OpenAI's URL style and credentials ([`Api::Azure`]).
    azure: Option<azure::Azure>,
    /// Bedrock's region and credentials ([`Api::Bedrock`]).
    bedrock: Option<bedrock::Signer>,
    /// Vertex AI's project, location and service account ([`Api::Vertex`]).
    vertex: Option<gemini::Vertex>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.inner.name)
            .field(
                "base",
                &format_args!(
                    "{}://{}{}",
                    self.inner.scheme, self.inner.authority, self.inner.base_path
                ),
            )
            .field("model", &self.inner.model.as_ref().map(|m| &m.0))
            .field(
                "api_key",
                &self.inner.api_key.as_ref().map(|_| "[redacted]"),
            )
            .field("azure", &self.inner.azure)
            .field("vertex", &self.inner.vertex)
            .finish()
    }
}

/// Builds a [`Provider`].
pub struct ProviderBuilder {
    inner: Inner,
}

impl Provider {
    /// A provider named `name` (used in errors, logs and headers) at `base_url`
    /// (e.g. `https://api.openai.com/v1`).
    pub fn builder(name: &str, base_url: &str) -> Result<ProviderBuilder, BuildError> {
        let uri: Uri = base_url
            .parse()
            .map_err(|e| BuildError(format!("base_url `{base_url}` is not a URL: {e}")))?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == http::uri::Scheme::HTTP || **s == http::uri::Scheme::HTTPS)
            .cloned()
            .ok_or_else(|| {
                BuildError(format!(
                    "base_url `{base_url}` must start with http:// or https://"
                ))
            })?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| BuildError(format!("base_url `{base_url}` has no host")))?;
        if uri.query().is_some() {
            return Err(BuildError(format!(
                "base_url `{base_url}` must not have a query"
            )));
        }
        Ok(ProviderBuilder {
            inner: Inner {
                name: name.into(),
                scheme,
                authority,
                base_path: uri.path().trim_end_matches('/').to_owned(),
                api_key: None,
                api: Api::OpenAi,
                headers: HeaderMap::new(),
                model: None,
                include_usage: false,
                translate: crate::translate::Options::default(),
                timeouts: Timeouts::default(),
                max_response_bytes: 64 << 20,
                client: None,
                azure: None,
                bedrock: None,
                vertex: None,
            },
        })
    }

    /// The provider's name.
    pub fn name(&self) -> &Arc<str> {
        &self.inner.name
    }

    /// The upstream model name requests are rewritten to, if any.
    pub fn upstream_model(&self) -> Option<&str> {
        self.inner.model.as_ref().map(|m| &*m.0)
    }
}

impl ProviderBuilder {
    /// The API the upstream speaks (default [`Api::OpenAi`]).
    pub fn api(mut self, api: Api) -> Self {
        self.inner.api = api;
        self
    }

    /// An AWS Bedrock upstream ([`Api::Bedrock`]) in `region`, authenticated
    /// by `auth` (SigV4 or a Bedrock API key; see [`bedrock`]).
    pub fn bedrock(mut self, region: &str, auth: BedrockAuth) -> Self {
        self.inner.api = Api::Bedrock;
        self.inner.bedrock = Some(bedrock::Signer::new(region, auth));
        self
    }

    /// Google's Vertex AI ([`Api::Vertex`]) in `vertex`'s project and
    /// location, authenticated by its service account's tokens (see
    /// [`gemini`]); `base_url` is [`gemini::vertex_base_url`] or a private
    /// endpoint.
    pub fn vertex(mut self, vertex: gemini::Vertex) -> Self {
        self.inner.api = Api::Vertex;
        self.inner.vertex = Some(vertex);
        self
    }

    /// The upstream's API key, sent as `Authorization: Bearer` (or, to an
    /// [`Api::Anthropic`] upstream, as `x-api-key`; to [`Api::Azure`], as
    /// `api-key`; to [`Api::Gemini`], as `x-goog-api-key`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.inner.api_key = Some(key.into()).filter(|k| !k.is_empty());
        self
    }

    /// Reads the API key from an environment variable (an error if unset).
    pub fn api_key_env(self, var: &str) -> Result<Self, BuildError> {
        match std::env::var(var) {
            Ok(key) if !key.is_empty() => Ok(self.api_key(key)),
            _ => Err(BuildError(format!(
                "environment variable `{var}` (the API key) is not set"
            ))),
        }
    }

    /// A header sent with every request (e.g. `OpenAI-Organization`).
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, BuildError> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| BuildError(format!("`{name}` is not a valid header name")))?;
        let mut v = HeaderValue::from_str(value)
            .map_err(|_| BuildError(format!("the value of header `{name}` is not valid")))?;
        v.set_sensitive(true);
        self.inner.headers.append(n, v);
        Ok(self)
    }

    /// Rewrites the request's `model` to this upstream model name.
    pub fn model(mut self, model: &str) -> Self {
        self.inner.model = Some((model.into(), json_string(model)));
        self
    }

    /// Asks the upstream for `stream_options.include_usage` on streams (for
    /// metering). Off by default: nothing is added that the client did not send.
    pub fn include_usage(mut self, on: bool) -> Self {
        self.inner.include_usage = on;
        self
    }

    /// How requests of another family are translated for this upstream
    /// (e.g. the `max_tokens` an Anthropic upstream gets when an OpenAI
    /// client sent none; see [`crate::translate`]).
    pub fn translate_options(mut self, options: crate::translate::Options) -> Self {
        self.inner.translate = options;
        self
    }

    /// First-byte, idle and total timeouts.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.inner.timeouts = t;
        self
    }

    /// The largest non-streaming answer read (64 MiB by default).
    pub fn max_response_bytes(mut self, n: usize) -> Self {
        self.inner.max_response_bytes = n;
        self
    }

    /// An Azure OpenAI upstream ([`Api::Azure`]): `base_url` is the
    /// resource's endpoint (`https://NAME.openai.azure.com`), `azure` says
    /// the URL style and, for Entra ID, where tokens come from (see [`azure`]).
    pub fn azure(mut self, azure: azure::Azure) -> Self {
        self.inner.api = Api::Azure;
        self.inner.azure = Some(azure);
        self
    }

    /// The pooled client to use (share one across providers).
    pub fn client(mut self, client: HttpClient) -> Self {
        self.inner.client = Some(client);
        self
    }

    /// The provider. Without [`client`](Self::client), one is made with defaults.
    pub fn build(mut self) -> Provider {
        if self.inner.client.is_none() {
            self.inner.client = HttpClient::builder().build().ok();
        }
        if let Some(az) = &mut self.inner.azure {
            az.start(&self.inner.name, self.inner.client.as_ref());
        }
        if let (Some(b), Some(client)) = (&mut self.inner.bedrock, &self.inner.client) {
            b.start(&self.inner.name, client);
        }
        if let Some(v) = &mut self.inner.vertex {
            v.start(&self.inner.name, self.inner.client.as_ref());
        }
        Provider {
            inner: Arc::new(self.inner),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Error>> + Send>>;

impl<I: Send + 'static> Service<Request<Parsed<I>>> for Provider {
    type Response = Response<Body>;
    type Error = Error;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // hyper-util's pooled client is always ready; capacity is the
        // fair queue's and the router's business.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Parsed<I>>) -> BoxFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(req).await })
    }
}

impl Inner {
    /// The provider's secrets and `extra` (the credential a request was
    /// sent with), for redaction.
    fn secrets<R>(&self, extra: [&str; 2], f: impl FnOnce(&Secrets<'_>) -> R) -> R {
        let [a, b] = self.bedrock.as_ref().map_or(["", ""], |b| b.secrets());
        let list = [
            self.api_key.as_deref().unwrap_or(""),
            a,
            b,
            extra[0],
            extra[1],
        ];
        f(&Secrets::new(&list))
    }

    fn served<I>(&self, parsed: &Parsed<I>) -> Served {
        Served {
            provider: self.name.clone(),
            model: match &self.model {
                Some((m, _)) => m.clone(),
                None => parsed.model().into(),
            },
        }
    }

    fn upstream_request<I>(
        &self,
        req: Request<Parsed<I>>,
    ) -> Result<(Request<Chunks>, Parsed<I>, Plan), Error> {
        let (parts, parsed) = req.into_parts();
        // How this route meets this upstream's API: passed through,
        // translated, or not served at all (decided in one place).
        let endpoint = parsed.summary().endpoint;
        let plan = crate::translate::plan(endpoint, self.api);
        let upstream_endpoint = match plan {
            Plan::PassThrough => endpoint,
            Plan::Translate(pair) => pair.upstream_endpoint(),
            Plan::NotServed => {
                let path = parts.uri.path();
                return Err(self.tag(
                    Error::new(
                        Reason::UpstreamRouteNotServed,
                        format!(
                            "Upstream '{}' speaks the {} API, which has no counterpart of POST {path}; this is a gateway configuration problem for this deployment, and other deployments are tried.",
                            self.name,
                            self.api.as_str()
                        ),
                    )
                    .with_meta("upstream_api", self.api.as_str()),
                ));
            }
        };
        // The endpoint decides the upstream path, not where the stack is
        // mounted (`/ai/v1/chat/completions` is still
        // `{base}/chat/completions`); other paths go under the base as
        // they are after `/v1`.
        let path = parts.uri.path();
        let rest = upstream_endpoint.upstream_path().unwrap_or_else(|| {
            path.strip_prefix("/v1")
                .filter(|r| r.is_empty() || r.starts_with('/'))
                .unwrap_or(path)
        });
        let summary = parsed.summary();
        // The translated body, kept (a reference count) for Bedrock's
        // signature, which covers the exact bytes sent.
        let mut translated = None;
        let body = match plan {
            Plan::Translate(pair) => {
                let model = match &self.azure {
                    Some(az) => az.deployment(),
                    None => self.model.as_ref().map_or(parsed.model(), |m| &*m.0),
                };
                // The body the request scanner read: not validated again.
                let t = pair.request_scanned(parsed.bytes(), model, &self.translate)?;
                translated = Some((t.body.clone(), t.stream));
                Chunks::new(vec![t.body])
            }
            _ => {
                let include_usage = self.include_usage
                    && matches!(self.api, Api::OpenAi | Api::Azure)
                    && summary.endpoint.stream_ends_with_done();
                let azure_model = self.azure.as_ref().and_then(|az| az.body_model(endpoint));
                let model = azure_model.or(self.model.as_ref().map(|m| &m.1));
                parsed.rewrite(model, include_usage)
            }
        };
        let pq = match (&self.azure, self.api, &translated) {
            (Some(az), _, _) => {
                az.path_and_query(&self.base_path, upstream_endpoint, rest, parts.uri.query())
            }
            // Converse names the model in its path: `/model/{modelId}/converse[-stream]`.
            (None, Api::Bedrock, Some((_, stream))) => {
                let model = self.model.as_ref().map_or(parsed.model(), |m| &*m.0);
                bedrock::path(&self.base_path, model, *stream)
            }
            // Gemini names the model and the method in its path.
            (None, Api::Gemini | Api::Vertex, Some((_, stream))) => {
                let model = self.model.as_ref().map_or(parsed.model(), |m| &*m.0);
                gemini::path(
                    self.api,
                    self.vertex.as_ref(),
                    &self.base_path,
                    model,
                    *stream,
                )
            }
            _ => {
                let mut pq = String::with_capacity(self.base_path.len() + rest.len() + 16);
                pq.push_str(&self.base_path);
                pq.push_str(rest);
                if let Some(q) = parts.uri.query().filter(|_| self.api != Api::Bedrock) {
                    pq.push('?');
                    pq.push_str(q);
                }
                pq
            }
        };
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| {
                Error::new(
                    Reason::InvalidRequest,
                    "The request path cannot be forwarded.",
                )
            })?;
        let mut out = Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .body(body)
            .map_err(|_| {
                Error::new(Reason::Internal, "The upstream request could not be built.")
            })?;
        let h = out.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static(match (summary.stream, self.api) {
                (true, Api::Bedrock) => "application/vnd.amazon.eventstream",
                (true, _) => "text/event-stream",
                (false, _) => "application/json",
            }),
        );
        if let Some(key) = self.api_key.as_ref().filter(|_| self.api != Api::Bedrock) {
            let (name, value) = match self.api {
                Api::Anthropic => (HeaderName::from_static("x-api-key"), key.clone()),
                Api::Gemini => (HeaderName::from_static("x-goog-api-key"), key.clone()),
                Api::Azure => (HeaderName::from_static("api-key"), key.clone()),
                _ => (AUTHORIZATION, format!("Bearer {key}")),
            };
            let mut v = HeaderValue::from_str(&value).map_err(|_| {
                Error::new(
                    Reason::Internal,
                    "The upstream API key is not a valid header value.",
                )
            })?;
            v.set_sensitive(true);
            h.insert(name, v);
        }
        if self.api == Api::Anthropic {
            // The client's `anthropic-*` headers say which API version and
            // betas it speaks: they go along (never its credentials).
            for (k, v) in &parts.headers {
                if k.as_str().starts_with("anthropic-") {
                    h.append(k, v.clone());
                }
            }
            if !h.contains_key("anthropic-version") {
                h.insert(
                    "anthropic-version",
                    HeaderValue::from_static(ANTHROPIC_VERSION),
                );
            }
        }
        for (k, v) in &self.headers {
            h.append(k, v.clone());
        }
        if self.api == Api::Vertex && self.vertex.is_none() {
            return Err(self.tag(Error::new(
                Reason::Internal,
                "The Vertex AI deployment has no project, location and service account.",
            )));
        }
        if self.api == Api::Bedrock {
            // Signed last, over every header set above and the exact body.
            let (Some(b), Some((bytes, _))) = (&self.bedrock, &translated) else {
                return Err(self.tag(Error::new(
                    Reason::Internal,
                    "The Bedrock deployment has no region and credentials.",
                )));
            };
            // A refreshing source's request is signed by `send`, once it
            // holds the current credentials.
            if b.credentials().is_none() {
                b.authenticate(&mut out, bytes, std::time::SystemTime::now())?;
            }
        }
        Ok((out, parsed, plan))
    }

    async fn send<I>(self: Arc<Self>, req: Request<Parsed<I>>) -> Result<Response<Body>, Error> {
        let start = Instant::now();
        let deadline = start + self.timeouts.total;
        let (mut out, parsed, plan) = self.upstream_request(req)?;
        // An Entra ID or Vertex AI token, from the shared cache (fetched only
        // when none is valid).
        let bearer = match (
            self.azure.as_ref().and_then(|az| az.tokens.as_ref()),
            self.vertex.as_ref().and_then(|v| v.tokens.as_ref()),
        ) {
            (Some(tokens), _) => Some((tokens, "its Entra ID token")),
            (None, Some(tokens)) => Some((tokens, "its Vertex AI access token")),
            (None, None) => None,
        };
        let mut token = match bearer {
            Some((tokens, what)) => Some((
                tokens,
                what,
                azure::authorize(tokens, &self.name, what, out.headers_mut())
                    .await
                    .map_err(|e| self.tag(e))?,
            )),
            None => None,
        };
        // Bedrock's temporary credentials, likewise, signed over the exact body.
        let aws = match self.bedrock.as_ref().map(|b| (b, b.credentials())) {
            Some((b, Some(cache))) => {
                let body = out.body().to_bytes();
                let current = bedrock::sign_current(b, cache, &self.name, &mut out, &body)
                    .await
                    .map_err(|e| self.tag(e))?;
                Some((cache, current))
            }
            _ => None,
        };
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| Error::new(Reason::Internal, "The provider has no HTTP client."))?;
        let first_byte = self.timeouts.first_byte.min(self.timeouts.total);
        // Kept (a reference count) to name the path when the upstream does not serve it.
        let sent_path = out.uri().path_and_query().cloned();
        // With an Entra ID or Vertex AI token, a copy (the body is buffered
        // bytes: reference counts) to send once more with a fresh token if the
        // upstream refuses this one.
        let replay = token.as_ref().map(|_| copy_request(&out));
        let mut res = self.exchange(client, out, first_byte).await?;
        let mut retried = false;
        if let (http::StatusCode::UNAUTHORIZED, Some((tokens, what, used)), Some(mut again)) =
            (res.status(), &mut token, replay)
        {
            tokens.invalidate(used.generation());
            let fresh = azure::authorize(tokens, &self.name, what, again.headers_mut())
                .await
                .map_err(|e| self.tag(e))?;
            if fresh.generation() != used.generation() {
                *used = fresh;
                retried = true;
                res = self.exchange(client, again, first_byte).await?;
            }
        }
        let (parts, incoming) = res.into_parts();
        let mut body = UpstreamBody::new(incoming, self.timeouts.idle, deadline, StreamEnd::Any);
        if !parts.status.is_success() {
            let mut raw = read_bounded(body, RAW_LIMIT).await.unwrap_or_default();
            if self.api == Api::Bedrock {
                raw = bedrock::error_body(&parts.headers, raw);
            }
            let status = match self.api {
                Api::Gemini | Api::Vertex => gemini::error_status(parts.status, &raw),
                _ => parts.status,
            };
            let extra = match (&token, &aws) {
                (Some((tokens, _, t)), _) => {
                    // Refused again with a fresh token: not the token's age;
                    // kept (the router cools the deployment down).
                    if status == http::StatusCode::UNAUTHORIZED && !retried {
                        tokens.invalidate(t.generation());
                    }
                    [t.value().token(), ""]
                }
                (_, Some((cache, c))) => {
                    if status == http::StatusCode::FORBIDDEN {
                        // Refused (expired, revoked): the next request fetches new ones.
                        cache.invalidate(c.generation());
                    }
                    c.value().secrets()
                }
                _ => ["", ""],
            };
            let e = self.secrets(extra, |s| {
                Error::from_upstream(status, &parts.headers, &raw, self.name.clone(), s)
            });
            return Err(match (e.reason(), &sent_path) {
                (Reason::UpstreamRouteNotServed, Some(pq)) => e.not_served_at("POST", pq.path()),
                _ => e,
            });
        }
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let is_sse = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.starts_with("text/event-stream")
                    // Bedrock's ConverseStream: binary frames, read by the translator.
                    || (self.api == Api::Bedrock
                        && ct.starts_with("application/vnd.amazon.eventstream"))
            });
        let upstream_endpoint = match plan {
            Plan::Translate(pair) => pair.upstream_endpoint(),
            _ => parsed.summary().endpoint,
        };
        // A translated answer names the model the client asked for; an
        // OpenAI client gets the usage chunk it asked for, or that metering
        // asked for on its behalf (the `Budget` layer hides it then).
        let translation = match plan {
            Plan::Translate(pair) => {
                let created = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let context = crate::translate::ResponseContext::new(parsed.model(), created)
                    .include_usage(
                        self.include_usage || parsed.summary().include_usage == Some(true),
                    );
                Some((pair, context))
            }
            _ => None,
        };
        let out_body = if is_sse {
            body.expect_end(match self.api {
                Api::Anthropic => StreamEnd::MessageStop,
                Api::OpenAi | Api::Azure if upstream_endpoint.stream_ends_with_done() => {
                    StreamEnd::Done
                }
                Api::OpenAi | Api::Azure => StreamEnd::Any,
                // The translator checks that the event stream ended with `metadata`.
                Api::Bedrock => StreamEnd::Any,
                // The translator checks that the last chunk had its finishReason.
                Api::Gemini | Api::Vertex => StreamEnd::Any,
            });
            // Passed through, each event is checked to be JSON on its way
            // (translated, the translator reads every event anyway).
            if translation.is_none() {
                body.check_events();
            }
            match translation {
                Some((pair, context)) => Body::new(TranslatedBody::new(
                    body,
                    pair.stream(context, &self.translate),
                    self.name.clone(),
                )),
                None => Body::new(body),
            }
        } else {
            let bytes = match read_bounded(body, self.max_response_bytes).await {
                Ok(b) if b.len() >= self.max_response_bytes => {
                    return Err(self.tag(Error::new(
                        Reason::UpstreamBadResponse,
                        format!(
                            "The upstream's answer is larger than {} bytes.",
                            self.max_response_bytes
                        ),
                    )));
                }
                Ok(b) => b,
                Err(e) => return Err(self.tag(e)),
            };
            // Translated, the translator reads the answer first: one it
            // translates is valid JSON (it validates what it reads, more
            // strictly than this check), so the check runs only for an
            // answer passed through or one the translator refused, which
            // it then tells apart as before (not JSON at all, or JSON the
            // translator cannot take). The answer is not read twice.
            let translated = translation.map(|(pair, context)| pair.response(&bytes, &context));
            if !matches!(translated, Some(Ok(_))) && !crate::read_request::scan::is_json(&bytes) {
                return Err(self.tag(Error::new(
                    Reason::UpstreamBadResponse,
                    "The upstream answered with something that is not valid JSON.",
                )));
            }
            match translated {
                Some(Ok(t)) => Body::full(t.body),
                Some(Err(e)) => return Err(self.tag(e.into_error())),
                None => Body::full(bytes),
            }
        };
        let mut res = Response::new(out_body);
        *res.status_mut() = parts.status;
        // Bedrock's event stream reaches the client translated into SSE.
        let content_type = match (self.api, is_sse) {
            (Api::Bedrock, true) => Some(HeaderValue::from_static("text/event-stream")),
            _ => content_type,
        };
        if let Some(ct) = content_type {
            res.headers_mut().insert(CONTENT_TYPE, ct);
        }
        res.extensions_mut().insert(self.served(&parsed));
        res.extensions_mut().insert(UpstreamTime(start.elapsed()));
        Ok(res)
    }

    /// Sends `out` and waits (at most `first_byte`) for the answer's head.
    async fn exchange(
        &self,
        client: &HttpClient,
        out: Request<Chunks>,
        first_byte: Duration,
    ) -> Result<Response<hyper::body::Incoming>, Error> {
        let phase = if first_byte < self.timeouts.total {
            TimeoutPhase::FirstByte
        } else {
            TimeoutPhase::Total
        };
        let request = client.pick(&self.scheme).request(out);
        match tokio::time::timeout(first_byte, request).await {
            Err(_) => Err(self.tag(Error::timeout(phase, first_byte))),
            Ok(Err(e)) => {
                let h2c = client.is_h2c(&self.scheme);
                Err(self.tag(classify(&e, client.connect_timeout, h2c)))
            }
            Ok(Ok(res)) => Ok(res),
        }
    }

    fn tag(&self, e: Error) -> Error {
        e.with_provider(self.name.clone())
    }
}

/// A copy of a request to send again (the body's parts are reference counts).
fn copy_request(req: &Request<Chunks>) -> Request<Chunks> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Reads a body to its end, keeping at most `limit` bytes (one more byte
/// than allowed is read to tell "exactly at the limit" from "over").
async fn read_bounded(body: UpstreamBody, limit: usize) -> Result<Bytes, Error> {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if have >= limit {
            break;
        }
        if first.is_none() && buf.is_empty() {
            first = Some(data);
        } else {
            if let Some(f) = first.take() {
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&data);
        }
    }
    let out = first.unwrap_or_else(|| buf.freeze());
    Ok(if out.len() > limit {
        out.slice(..limit)
    } else {
        out
    })
}

/// Classifies a failure before the response headers: connect timeout,
/// refused connection, TLS failure, or a connection closed early (which, over
/// h2c, is also how an upstream that speaks only HTTP/1.1 answers the HTTP/2
/// preface: the message says so).
fn classify(e: &hyper_util::client::legacy::Error, connect_timeout: Duration, h2c: bool) -> Error {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    let mut io_kind = None;
    let mut tls: Option<String> = None;
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            tls.get_or_insert_with(|| t.to_string());
        }
        // `io::Error::source` skips the error it wraps: step into it by hand.
        source = match s.downcast_ref::<std::io::Error>() {
            Some(io) => {
                io_kind.get_or_insert(io.kind());
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => s.source(),
                }
            }
            None => s.source(),
        };
    }
    if e.is_connect() && io_kind == Some(std::io::ErrorKind::TimedOut) {
        return Error::timeout(TimeoutPhase::Connect, connect_timeout);
    }
    let why = if let Some(t) = tls {
        format!("the TLS handshake failed ({t})")
    } else if e.is_connect() {
        match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => "the connection was refused".to_owned(),
            Some(kind) => format!("the connection failed ({kind})"),
            None => "the connection failed".to_owned(),
        }
    } else if h2c {
        "the connection closed before an answer (spoken to in HTTP/2 with prior \
         knowledge, h2c: an upstream that speaks only HTTP/1.1 fails this way)"
            .to_owned()
    } else {
        "the connection closed before an answer".to_owned()
    };
    Error::new(
        Reason::UpstreamUnreachable,
        format!("Could not reach the upstream: {why}."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_refuses_bad_urls() {
        assert!(Provider::builder("x", "not a url").is_err());
        assert!(Provider::builder("x", "ftp://h/v1").is_err());
        assert!(Provider::builder("x", "http://h/v1?q=1").is_err());
        let p = Provider::builder("x", "http://127.0.0.1:1/v1/")
            .unwrap()
            .model("m")
            .build();
        assert_eq!(p.upstream_model(), Some("m"));
        assert_eq!(p.inner.base_path, "/v1");
        assert!(!format!("{p:?}").contains("secret"));
    }

    #[test]
    fn api_key_is_not_in_debug() {
        let p = Provider::builder("x", "http://127.0.0.1:1/v1")
            .unwrap()
            .api_key("sk-verysecret")
            .build();
        assert!(!format!("{p:?}").contains("verysecret"));
    }

    #[test]
    fn bad_root_pem_is_refused() {
        assert!(
            HttpClient::builder()
                .add_root_certificates_pem(b"nope")
                .build()
                .is_err()
        );
    }

    /// A loopback upstream built on hyper's auto server (HTTP/1.1 and h2c
    /// prior knowledge, or HTTP/1.1 only). The path picks the behaviour; it
    /// records each request's HTTP version and counts connections.
    mod loopback {
        use std::convert::Infallible;
        use std::net::SocketAddr;
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use bytes::Bytes;
        use futures_util::stream::{self, StreamExt};
        use http::{Request, Response, Version};
        use http_body_util::{BodyExt, StreamBody};
        use hyper::body::{Frame, Incoming};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto;

        use super::*;

        #[derive(Default)]
        pub struct Seen {
            pub versions: Mutex<Vec<Version>>,
            pub connections: AtomicUsize,
        }

        type Out = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

        fn sse(events: Vec<Result<&'static str, ()>>, then_stall: bool) -> Out {
            let s = stream::iter(events)
                .then(|e| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    match e {
                        Ok(text) => Ok(Frame::data(Bytes::from_static(text.as_bytes()))),
                        Err(()) => Err(std::io::Error::other("cut")),
                    }
                })
                .chain(stream::iter(then_stall.then_some(())).then(|()| async {
                    std::future::pending::<()>().await;
                    Ok(Frame::data(Bytes::new()))
                }));
            BodyExt::boxed(StreamBody::new(s))
        }

        async fn answer(
            req: Request<Incoming>,
            seen: Arc<Seen>,
        ) -> Result<Response<Out>, Infallible> {
            seen.versions.lock().unwrap().push(req.version());
            let path = req.uri().path().to_owned();
            let _ = req.into_body().collect().await;
            const EVENTS: [&str; 3] = [
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
                "data: [DONE]\n\n",
            ];
            let (ct, body) = match path.as_str() {
                "/v1/json" => (
                    "application/json",
                    sse(vec![Ok("{\"id\":\"x\",\"ok\":true}")], false),
                ),
                "/v1/stream" => ("text/event-stream", sse(EVENTS.map(Ok).to_vec(), false)),
                "/v1/cut" => (
                    "text/event-stream",
                    sse(vec![Ok(EVENTS[0]), Err(())], false),
                ),
                "/v1/cut-json" => (
                    "application/json",
                    sse(vec![Ok("{\"id\":"), Err(())], false),
                ),
                "/v1/stall" => ("text/event-stream", sse(vec![Ok(EVENTS[0])], true)),
                "/v1/slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    ("application/json", sse(vec![Ok("{}")], false))
                }
                // Answers a little every 100 ms, for ever.
                "/v1/drip" => {
                    let s = stream::unfold((), |()| async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Ok(Frame::data(Bytes::from_static(b": ping\n\n"))), ()))
                    });
                    ("text/event-stream", BodyExt::boxed(StreamBody::new(s)))
                }
                _ => ("application/json", sse(vec![Ok("{}")], false)),
            };
            Ok(Response::builder()
                .header("content-type", ct)
                .body(body)
                .unwrap())
        }

        /// Serves on 127.0.0.1:0 until the test ends.
        pub async fn upstream(h2c: bool) -> (SocketAddr, Arc<Seen>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Seen::default());
            let seen2 = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    seen2.connections.fetch_add(1, Ordering::SeqCst);
                    let seen = seen2.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                        let mut b = auto::Builder::new(TokioExecutor::new());
                        if h2c {
                            b.http2().max_concurrent_streams(None);
                        } else {
                            b = b.http1_only();
                        }
                        let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
                    });
                }
            });
            (addr, seen)
        }

        pub fn provider(addr: SocketAddr, client: HttpClient, t: Timeouts) -> Provider {
            Provider::builder("loop", &format!("http://{addr}/v1"))
                .unwrap()
                .timeouts(t)
                .client(client)
                .build()
        }

        pub async fn call(p: &Provider, path: &str, stream: bool) -> Result<Response<Body>, Error> {
            let body = format!(r#"{{"model":"m","stream":{stream}}}"#);
            let parsed = Parsed::parse(path, Bytes::from(body)).unwrap();
            let req = Request::post(path).body(parsed).unwrap();
            p.clone().call(req).await
        }

        /// The whole body, or the error that ended it.
        pub async fn read(res: Response<Body>) -> Result<Bytes, Error> {
            Ok(res.into_body().collect().await?.to_bytes())
        }
    }

    fn h2c_client() -> HttpClient {
        HttpClient::builder()
            .http2_prior_knowledge(true)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn prior_knowledge_speaks_http2_to_http_upstreams_and_answers_arrive_intact() {
        let (addr, seen) = loopback::upstream(true).await;
        assert!(h2c_client().http2_prior_knowledge());
        let p = loopback::provider(addr, h2c_client(), Timeouts::default());
        let res = loopback::call(&p, "/v1/json", false).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            &loopback::read(res).await.unwrap()[..],
            br#"{"id":"x","ok":true}"#
        );
        let res = loopback::call(&p, "/v1/stream", true).await.unwrap();
        let body = loopback::read(res).await.unwrap();
        assert!(body.starts_with(b"data: {"), "{body:?}");
        assert!(body.ends_with(b"data: [DONE]\n\n"), "{body:?}");
        assert_eq!(*seen.versions.lock().unwrap(), [http::Version::HTTP_2; 2]);

        // Off (the default): HTTP/1.1 to the same h2c-capable upstream.
        let client = HttpClient::builder().build().unwrap();
        assert!(!client.http2_prior_knowledge());
        let p = loopback::provider(addr, client, Timeouts::default());
        let res = loopback::call(&p, "/v1/json", false).await.unwrap();
        loopback::read(res).await.unwrap();
        assert_eq!(seen.versions.lock().unwrap()[2], http::Version::HTTP_11);
    }

    #[tokio::test]
    async fn concurrent_streams_share_one_h2c_connection() {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering;
        for (h2c, connections) in [(true, 1), (false, 20)] {
            let (addr, seen) = loopback::upstream(true).await;
            let client = HttpClient::builder()
                .http2_prior_knowledge(h2c)
                .build()
                .unwrap();
            let p = loopback::provider(addr, client, Timeouts::default());
            // Twenty streams open at once (each stalls after its first event).
            let mut open = Vec::new();
            for _ in 0..20 {
                let mut res = loopback::call(&p, "/v1/stall", true).await.unwrap();
                let first = res.body_mut().frame().await.unwrap().unwrap();
                assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
                open.push(res);
            }
            assert_eq!(
                seen.connections.load(Ordering::SeqCst),
                connections,
                "h2c: {h2c}"
            );
        }
    }

    #[tokio::test]
    async fn timeouts_hold_over_h2c() {
        let (addr, _) = loopback::upstream(true).await;
        let t = Timeouts {
            first_byte: Duration::from_millis(200),
            idle: Duration::from_millis(200),
            total: Duration::from_secs(60),
        };
        let p = loopback::provider(addr, h2c_client(), t);
        let e = loopback::call(&p, "/v1/slow", false).await.unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamTimeout);
        assert_eq!(e.phase(), Some(TimeoutPhase::FirstByte));

        let res = loopback::call(&p, "/v1/stall", true).await.unwrap();
        let e = loopback::read(res).await.unwrap_err();
        assert_eq!(e.phase(), Some(TimeoutPhase::Idle));

        let t = Timeouts {
            total: Duration::from_millis(400),
            ..t
        };
        let p = loopback::provider(addr, h2c_client(), t);
        let res = loopback::call(&p, "/v1/drip", true).await.unwrap();
        let e = loopback::read(res).await.unwrap_err();
        assert_eq!(e.phase(), Some(TimeoutPhase::Total));
    }

    /// A loopback TCP relay that can go silent: the connections open when
    /// `freeze` is called stop carrying bytes either way (they stay open, as
    /// behind a dead NAT entry); later ones pass.
    struct FreezingRelay {
        addr: std::net::SocketAddr,
        connections: Arc<std::sync::atomic::AtomicUsize>,
        open: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    }

    impl FreezingRelay {
        async fn start(target: std::net::SocketAddr) -> FreezingRelay {
            use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let open = Arc::new(std::sync::Mutex::new(Vec::<Arc<AtomicBool>>::new()));
            let (n, o) = (connections.clone(), open.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    n.fetch_add(1, Ordering::SeqCst);
                    let frozen = Arc::new(AtomicBool::new(false));
                    o.lock().unwrap().push(frozen.clone());
                    let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::spawn(Self::carry(ri, wo, frozen.clone()));
                    tokio::spawn(Self::carry(ro, wi, frozen));
                }
            });
            FreezingRelay {
                addr,
                connections,
                open,
            }
        }

        /// Copies `from` to `to` until either ends, dropping the bytes once frozen.
        async fn carry(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            frozen: Arc<std::sync::atomic::AtomicBool>,
        ) {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0; 16 << 10];
            while let Ok(k @ 1..) = from.read(&mut buf).await {
                let silent = frozen.load(std::sync::atomic::Ordering::SeqCst);
                if !silent && to.write_all(&buf[..k]).await.is_err() {
                    return;
                }
            }
        }

        fn freeze(&self) {
            for f in self.open.lock().unwrap().iter() {
                f.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// HTTP/2 keep-alive: a pooled h2c connection that goes silent is pinged,
    /// declared dead and replaced, so the next request is served on a new
    /// connection; without it (an hour between pings) the next request is
    /// sent into the silent connection and gets no answer.
    #[tokio::test]
    async fn a_silent_h2c_connection_is_pinged_dead_and_replaced() {
        let (upstream, _) = loopback::upstream(true).await;
        for (interval, replaced) in [
            (Duration::from_millis(100), true),
            (Duration::from_secs(3600), false),
        ] {
            let relay = FreezingRelay::start(upstream).await;
            let client = HttpClient::builder()
                .http2_prior_knowledge(true)
                .http2_keep_alive(interval, Duration::from_millis(200))
                .build()
                .unwrap();
            let p = loopback::provider(relay.addr, client, Timeouts::default());
            let res = loopback::call(&p, "/v1/json", false).await.unwrap();
            loopback::read(res).await.unwrap();
            assert_eq!(relay.connections(), 1);
            relay.freeze();
            // Two pings' worth of silence and then some.
            tokio::time::sleep(Duration::from_millis(900)).await;
            let wait = Duration::from_secs(if replaced { 5 } else { 1 });
            let next = tokio::time::timeout(wait, loopback::call(&p, "/v1/json", false)).await;
            if replaced {
                let res = next.expect("served on a new connection").unwrap();
                assert_eq!(
                    &loopback::read(res).await.unwrap()[..],
                    br#"{"id":"x","ok":true}"#
                );
                assert_eq!(relay.connections(), 2, "the dead connection was replaced");
            } else {
                assert!(next.is_err(), "sent into the silent connection: no answer");
                assert_eq!(relay.connections(), 1);
            }
        }
    }

    #[tokio::test]
    async fn connect_timeout_over_h2c_names_the_connect_phase() {
        // A loopback listener that never accepts, its accept queue filled:
        // Linux then drops further SYNs, so the connect goes unanswered (were
        // the kernel to refuse it instead, that must be a clean error too).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let _listener = socket.listen(0).unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let connect = tokio::net::TcpStream::connect(addr);
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                queued.push(s);
            }
        }
        let client = HttpClient::builder()
            .http2_prior_knowledge(true)
            .connect_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        let p = Provider::builder("loop", &format!("http://{addr}/v1"))
            .unwrap()
            .client(client)
            .build();
        let e = loopback::call(&p, "/v1/json", false).await.unwrap_err();
        match e.reason() {
            Reason::UpstreamTimeout => assert_eq!(e.phase(), Some(TimeoutPhase::Connect)),
            Reason::UpstreamUnreachable => {}
            other => panic!("{other:?}: {e:?}"),
        }
    }

    #[tokio::test]
    async fn a_cut_over_h2c_is_upstream_stream_cut() {
        let (addr, _) = loopback::upstream(true).await;
        let p = loopback::provider(addr, h2c_client(), Timeouts::default());
        let res = loopback::call(&p, "/v1/cut", true).await.unwrap();
        let e = loopback::read(res).await.unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamStreamCut);
        let e = loopback::call(&p, "/v1/cut-json", false).await.unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamStreamCut);
        // The connection survives a reset stream: the next request is served.
        let res = loopback::call(&p, "/v1/json", false).await.unwrap();
        loopback::read(res).await.unwrap();
    }

    #[tokio::test]
    async fn connection_failures_over_h2c_are_classified() {
        // Refused.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = loopback::provider(addr, h2c_client(), Timeouts::default());
        let e = loopback::call(&p, "/v1/json", false).await.unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamUnreachable);
        assert!(e.message().contains("refused"), "{}", e.message());

        // An upstream that speaks only HTTP/1.1 refuses the HTTP/2 preface.
        let (addr, seen) = loopback::upstream(false).await;
        let p = loopback::provider(addr, h2c_client(), Timeouts::default());
        let e = loopback::call(&p, "/v1/json", false).await.unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamUnreachable);
        assert!(e.message().contains("HTTP/2"), "{}", e.message());
        assert!(seen.versions.lock().unwrap().is_empty());
    }

    #[test]
    fn path_mapping() {
        let p = Provider::builder("x", "http://127.0.0.1:1/openai/v1")
            .unwrap()
            .build();
        let parsed =
            Parsed::parse("/v1/embeddings", Bytes::from_static(br#"{"model":"m"}"#)).unwrap();
        let req = Request::post("/v1/embeddings?x=1").body(parsed).unwrap();
        let (out, _, _) = p.inner.upstream_request(req).unwrap();
        assert_eq!(out.uri(), "http://127.0.0.1:1/openai/v1/embeddings?x=1");
        // Mounted under a prefix: the endpoint decides the upstream path.
        let body = || Bytes::from_static(br#"{"model":"m"}"#);
        let mounted = Parsed::parse("/ai/v1/chat/completions", body()).unwrap();
        let req = Request::post("/ai/v1/chat/completions")
            .body(mounted)
            .unwrap();
        let (out, _, _) = p.inner.upstream_request(req).unwrap();
        assert_eq!(out.uri(), "http://127.0.0.1:1/openai/v1/chat/completions");
        // A mount path that names no endpoint, with the endpoint given.
        let chat = Parsed::parse_for(crate::read_request::Endpoint::Responses, body()).unwrap();
        let req = Request::post("/team-a/ask").body(chat).unwrap();
        let (out, _, _) = p.inner.upstream_request(req).unwrap();
        assert_eq!(out.uri(), "http://127.0.0.1:1/openai/v1/responses");
    }

    #[test]
    fn the_plan_decides_path_body_and_headers() {
        use crate::read_request::Endpoint;
        let p = Provider::builder("claude", "http://127.0.0.1:1/v1")
            .unwrap()
            .api(Api::Anthropic)
            .api_key("sk-ant-key")
            .model("claude-x")
            .build();
        let chat =
            Bytes::from_static(br#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#);
        // An OpenAI chat client: translated to Messages, with its required max_tokens.
        let parsed = Parsed::parse_for(Endpoint::ChatCompletions, chat.clone()).unwrap();
        let req = Request::post("/v1/chat/completions").body(parsed).unwrap();
        let (out, _, plan) = p.inner.upstream_request(req).unwrap();
        assert_eq!(
            plan,
            Plan::Translate(crate::translate::Pair::ChatToMessages)
        );
        assert_eq!(out.uri(), "http://127.0.0.1:1/v1/messages");
        assert_eq!(out.headers()["x-api-key"], "sk-ant-key");
        assert_eq!(out.headers()["anthropic-version"], ANTHROPIC_VERSION);
        assert!(out.headers().get(AUTHORIZATION).is_none());
        let sent: serde_json::Value = serde_json::from_slice(&out.body().to_bytes()).unwrap();
        assert_eq!(sent["model"], "claude-x");
        assert_eq!(sent["max_tokens"], 4096);
        // Embeddings have no Anthropic counterpart: not served, nothing sent.
        let parsed = Parsed::parse_for(Endpoint::Embeddings, chat).unwrap();
        let req = Request::post("/v1/embeddings").body(parsed).unwrap();
        let e = p.inner.upstream_request(req).unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamRouteNotServed);
        assert_eq!(e.provider(), Some("claude"));
        assert!(e.message().contains("anthropic"), "{}", e.message());
        assert!(out.headers().get(AUTHORIZATION).is_none());
    }
}
