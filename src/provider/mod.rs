//! The provider `Service`: an OpenAI-compatible upstream.
//!
//! [`Provider`] takes `Request<`[`Parsed`]`>` and forwards it to
//! `base_url` + the request's path after `/v1` (so `/v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings` and `/v1/responses` all work) over a
//! pooled [`HttpClient`] (hyper-util; HTTP/1.1, and HTTP/2 by ALPN over
//! rustls TLS). The body goes out as the client's bytes with only the `model`
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
//!   429 stays 429 with its `Retry-After`, a 401 is 502 `upstream_auth_failed`.
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

mod body;

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

pub use body::UpstreamBody;

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
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<Connector, Chunks>,
    connect_timeout: Duration,
}

/// Builds an [`HttpClient`].
#[derive(Debug)]
pub struct HttpClientBuilder {
    connect_timeout: Duration,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
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

    /// Also trusts the certificates in this PEM (for a private CA or a
    /// self-signed upstream).
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut found = 0;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            match cert {
                Ok(c) => {
                    self.extra_roots.push(c);
                    found += 1;
                }
                Err(e) => {
                    self.error = Some(BuildError(format!(
                        "a root certificate PEM is invalid: {e}"
                    )));
                    return self;
                }
            }
        }
        if found == 0 {
            self.error = Some(BuildError(
                "the root certificate PEM holds no certificate".into(),
            ));
        }
        self
    }

    /// The client.
    pub fn build(self) -> Result<HttpClient, BuildError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in self.extra_roots {
            roots
                .add(cert)
                .map_err(|e| BuildError(format!("a root certificate is not usable: {e}")))?;
        }
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
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .build(connector);
        Ok(HttpClient {
            client,
            connect_timeout: self.connect_timeout,
        })
    }
}

/// An OpenAI-compatible upstream as a `Service<Request<Parsed>>`. Cheap to clone.
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
    headers: HeaderMap,
    /// The upstream model name and its JSON literal, when it is rewritten.
    model: Option<(Arc<str>, Bytes)>,
    include_usage: bool,
    timeouts: Timeouts,
    max_response_bytes: usize,
    client: Option<HttpClient>,
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
                headers: HeaderMap::new(),
                model: None,
                include_usage: false,
                timeouts: Timeouts::default(),
                max_response_bytes: 64 << 20,
                client: None,
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
    /// The upstream's API key, sent as `Authorization: Bearer`.
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
    fn secrets<R>(&self, f: impl FnOnce(&Secrets<'_>) -> R) -> R {
        let list = [self.api_key.as_deref().unwrap_or("")];
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
    ) -> Result<(Request<Chunks>, Parsed<I>), Error> {
        let (parts, parsed) = req.into_parts();
        let path = parts.uri.path();
        let rest = path
            .strip_prefix("/v1")
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .unwrap_or(path);
        let mut pq = String::with_capacity(self.base_path.len() + rest.len() + 16);
        pq.push_str(&self.base_path);
        pq.push_str(rest);
        if let Some(q) = parts.uri.query() {
            pq.push('?');
            pq.push_str(q);
        }
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
        let summary = parsed.summary();
        let include_usage = self.include_usage && summary.endpoint.stream_ends_with_done();
        let body = parsed.rewrite(self.model.as_ref().map(|m| &m.1), include_usage);
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
            HeaderValue::from_static(if summary.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        if let Some(key) = &self.api_key {
            let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Error::new(
                    Reason::Internal,
                    "The upstream API key is not a valid header value.",
                )
            })?;
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        for (k, v) in &self.headers {
            h.append(k, v.clone());
        }
        Ok((out, parsed))
    }

    async fn send<I>(self: Arc<Self>, req: Request<Parsed<I>>) -> Result<Response<Body>, Error> {
        let start = Instant::now();
        let deadline = start + self.timeouts.total;
        let (out, parsed) = self.upstream_request(req)?;
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| Error::new(Reason::Internal, "The provider has no HTTP client."))?;
        let first_byte = self.timeouts.first_byte.min(self.timeouts.total);
        let phase = if first_byte < self.timeouts.total {
            TimeoutPhase::FirstByte
        } else {
            TimeoutPhase::Total
        };
        let res = match tokio::time::timeout(first_byte, client.client.request(out)).await {
            Err(_) => return Err(self.tag(Error::timeout(phase, first_byte))),
            Ok(Err(e)) => return Err(self.tag(classify(&e, client.connect_timeout))),
            Ok(Ok(res)) => res,
        };
        let (parts, incoming) = res.into_parts();
        let mut body = UpstreamBody::new(incoming, self.timeouts.idle, deadline, false);
        if !parts.status.is_success() {
            let raw = read_bounded(body, RAW_LIMIT).await.unwrap_or_default();
            let e = self.secrets(|s| {
                Error::from_upstream(parts.status, &parts.headers, &raw, self.name.clone(), s)
            });
            return Err(e);
        }
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let is_sse = content_type
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        let out_body = if is_sse {
            body.expect_done(parsed.summary().endpoint.stream_ends_with_done());
            Body::new(body)
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
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
                return Err(self.tag(Error::new(
                    Reason::UpstreamBadResponse,
                    "The upstream answered with something that is not valid JSON.",
                )));
            }
            Body::full(bytes)
        };
        let mut res = Response::new(out_body);
        *res.status_mut() = parts.status;
        if let Some(ct) = content_type {
            res.headers_mut().insert(CONTENT_TYPE, ct);
        }
        res.extensions_mut().insert(self.served(&parsed));
        res.extensions_mut().insert(UpstreamTime(start.elapsed()));
        Ok(res)
    }

    fn tag(&self, e: Error) -> Error {
        e.with_provider(self.name.clone())
    }
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
/// refused connection, TLS failure, or a connection closed early.
fn classify(e: &hyper_util::client::legacy::Error, connect_timeout: Duration) -> Error {
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

    #[test]
    fn path_mapping() {
        let p = Provider::builder("x", "http://127.0.0.1:1/openai/v1")
            .unwrap()
            .build();
        let parsed =
            Parsed::parse("/v1/embeddings", Bytes::from_static(br#"{"model":"m"}"#)).unwrap();
        let req = Request::post("/v1/embeddings?x=1").body(parsed).unwrap();
        let (out, _) = p.inner.upstream_request(req).unwrap();
        assert_eq!(out.uri(), "http://127.0.0.1:1/openai/v1/embeddings?x=1");
        assert!(out.headers().get(AUTHORIZATION).is_none());
    }
}
