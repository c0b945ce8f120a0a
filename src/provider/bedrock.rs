//! AWS Bedrock's Converse API ([`Api::Bedrock`](crate::family::Api::Bedrock)):
//! the upstream path, the request's signature, the credentials, and
//! Bedrock's error type carried to [`Error::from_upstream`].
//!
//! - Path: `{base}/model/{modelId}/converse`, or `…/converse-stream` for a
//!   stream, the model id percent-encoded as one path segment (`:` in
//!   `anthropic.claude-…-v1:0` becomes `%3A`, `/` in an ARN `%2F`). The base
//!   defaults to `https://bedrock-runtime.{region}.amazonaws.com`
//!   ([`default_base_url`]).
//! - Authentication ([`BedrockAuth`]): AWS Signature Version 4 by the
//!   `aws-sigv4` crate (service `bedrock`, the configured region; the
//!   signed payload hash is of the exact bytes sent), with static credentials
//!   read from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!   and `AWS_SESSION_TOKEN` when set; the names are configurable), or a
//!   Bedrock API key sent as `Authorization: Bearer`
//!   (`AWS_BEARER_TOKEN_BEDROCK`). Temporary credentials are used as read;
//!   they are not refreshed here.
//! - Errors: Bedrock names its exception in the `x-amzn-ErrorType` header
//!   (`ThrottlingException:http://internal.amazon.com/…`) beside a body
//!   `{"message": "…"}`; the name is folded into the body as `__type` (as
//!   AWS's JSON protocols write it) so the one outcome table
//!   ([`crate::router::classify`]) can read it.
//!
//! ```
//! use tollgate::provider::{BedrockAuth, Provider, bedrock_default_base_url};
//!
//! # fn main() -> Result<(), tollgate::provider::BuildError> {
//! let auth = BedrockAuth::aws("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None);
//! let provider = Provider::builder("bedrock-us", &bedrock_default_base_url("us-east-1"))?
//!     .bedrock("us-east-1", auth)
//!     .model("anthropic.claude-3-5-haiku-20241022-v1:0")
//!     .build();
//! assert!(!format!("{provider:?}").contains("wJalr"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use serde_json::Value;

use super::BuildError;
use crate::error::{Error, Reason};

/// The signing name of Bedrock's runtime API.
pub const SIGNING_NAME: &str = "bedrock";

/// The default names of the environment variables credentials are read from.
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// See [`ENV_ACCESS_KEY_ID`].
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// See [`ENV_ACCESS_KEY_ID`].
pub const ENV_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// The default name of the environment variable holding a Bedrock API key.
pub const ENV_BEARER_TOKEN: &str = "AWS_BEARER_TOKEN_BEDROCK";

/// Bedrock's runtime endpoint in `region`: `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// How a Bedrock provider authenticates. Its `Debug` shows no secret.
#[derive(Clone)]
pub enum BedrockAuth {
    /// SigV4 with these AWS credentials.
    Aws(Credentials),
    /// A Bedrock API key, sent as `Authorization: Bearer`.
    ApiKey(String),
}

impl fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `Credentials`' own Debug shows the key id, never the secret or token.
            BedrockAuth::Aws(c) => f.debug_tuple("Aws").field(&c.access_key_id()).finish(),
            BedrockAuth::ApiKey(_) => f.write_str("ApiKey([redacted])"),
        }
    }
}

impl BedrockAuth {
    /// SigV4 with static credentials (`session_token` for temporary ones).
    pub fn aws(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        BedrockAuth::Aws(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token.map(str::to_owned),
            None,
            "tollgate",
        ))
    }

    /// SigV4 with credentials read from the environment variables named
    /// (the session token's is read when set). An unset key id or secret is
    /// an error naming the variable.
    pub fn aws_from_env(
        access_key_id: &str,
        secret_access_key: &str,
        session_token: &str,
    ) -> Result<Self, BuildError> {
        let id = env(access_key_id, "the AWS access key id")?;
        let secret = env(secret_access_key, "the AWS secret access key")?;
        let token = std::env::var(session_token).ok().filter(|t| !t.is_empty());
        Ok(Self::aws(&id, &secret, token.as_deref()))
    }

    /// A Bedrock API key read from the environment variable named.
    pub fn api_key_from_env(var: &str) -> Result<Self, BuildError> {
        Ok(BedrockAuth::ApiKey(env(var, "the Bedrock API key")?))
    }

    /// The secret strings, for redaction wherever text leaves.
    pub(crate) fn secrets(&self) -> [&str; 2] {
        match self {
            BedrockAuth::Aws(c) => [c.secret_access_key(), c.session_token().unwrap_or("")],
            BedrockAuth::ApiKey(k) => [k.as_str(), ""],
        }
    }
}

fn env(var: &str, what: &str) -> Result<String, BuildError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(BuildError(format!(
            "environment variable `{var}` ({what}) is not set"
        ))),
    }
}

/// A Bedrock deployment's region and credentials: authenticates each
/// request (the provider uses one; public for benchmarks and for callers
/// that send their own requests to Bedrock).
pub struct Signer {
    region: String,
    auth: BedrockAuth,
    /// The identity `aws-sigv4` signs with, made once.
    identity: Option<Identity>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("region", &self.region)
            .field("auth", &self.auth)
            .finish()
    }
}

impl Signer {
    /// Signs for `region` with `auth`.
    pub fn new(region: &str, auth: BedrockAuth) -> Self {
        let identity = match &auth {
            BedrockAuth::Aws(c) => Some(Identity::from(c.clone())),
            BedrockAuth::ApiKey(_) => None,
        };
        Signer {
            region: region.to_owned(),
            auth,
            identity,
        }
    }

    pub(crate) fn secrets(&self) -> [&str; 2] {
        self.auth.secrets()
    }

    /// Authenticates `req`, whose body is exactly `body`: a SigV4
    /// signature (`authorization`, `x-amz-date`, and `x-amz-security-token`
    /// for temporary credentials) over its method, URI, headers and the
    /// payload's hash, or the API key as a bearer token.
    pub fn authenticate<B>(
        &self,
        req: &mut Request<B>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Error> {
        let internal = |what: &str| {
            Error::new(
                Reason::Internal,
                format!("The Bedrock request could not be signed: {what}."),
            )
        };
        let identity = match (&self.auth, &self.identity) {
            (BedrockAuth::ApiKey(key), _) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| internal("the API key is not a valid header value"))?;
                v.set_sensitive(true);
                req.headers_mut().insert(AUTHORIZATION, v);
                return Ok(());
            }
            (_, Some(identity)) => identity,
            (_, None) => return Err(internal("no identity")),
        };
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| internal("incomplete signing parameters"))?
            .into();
        let uri = req.uri().to_string();
        let headers = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new("POST", uri, headers, SignableBody::Bytes(body))
            .map_err(|_| internal("the request is not signable"))?;
        // `aws-sigv4` traces its canonical request, which carries the session
        // token: it signs with no subscriber, so no log can hold the token.
        let signed = tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            sign(signable, &params)
        });
        let (instructions, _) = signed.map_err(|_| internal("signing failed"))?.into_parts();
        let (headers, _) = instructions.into_parts();
        for h in headers {
            let mut v =
                HeaderValue::from_str(h.value()).map_err(|_| internal("a bad header value"))?;
            // The signature and the session token are kept out of any Debug output.
            v.set_sensitive(
                h.sensitive() || matches!(h.name(), "authorization" | "x-amz-security-token"),
            );
            req.headers_mut()
                .insert(HeaderName::from_static(h.name()), v);
        }
        Ok(())
    }
}

/// The Converse path under the base path: `/model/{modelId}/converse` or
/// `/model/{modelId}/converse-stream`.
pub(crate) fn path(base_path: &str, model: &str, stream: bool) -> String {
    let mut p = String::with_capacity(base_path.len() + model.len() * 3 + 24);
    p.push_str(base_path);
    p.push_str("/model/");
    encode_segment(model, &mut p);
    p.push_str(if stream {
        "/converse-stream"
    } else {
        "/converse"
    });
    p
}

/// Percent-encodes one path segment: every byte but RFC 3986's unreserved
/// characters. (Six lines; the one crate that does it, `percent-encoding`,
/// would need an encode set spelled out all the same.)
pub(super) fn encode_segment(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Bedrock's error body with the exception named in `x-amzn-ErrorType`
/// folded in as `__type` (when the body is a JSON object without one), for
/// [`Error::from_upstream`] and the outcome table to read.
pub(crate) fn error_body(headers: &HeaderMap, raw: Bytes) -> Bytes {
    let Some(kind) = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(':').next().unwrap_or(t).trim())
        .filter(|t| !t.is_empty())
    else {
        return raw;
    };
    match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(mut m)) => {
            if !m.contains_key("__type") {
                m.insert("__type".into(), kind.into());
            }
            Bytes::from(serde_json::to_vec(&Value::Object(m)).unwrap_or_default())
        }
        _ if raw.iter().all(u8::is_ascii_whitespace) => Bytes::from(
            serde_json::to_vec(&serde_json::json!({"__type": kind})).unwrap_or_default(),
        ),
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even at `trace`, signing logs nothing that holds a secret.
    #[test]
    fn signing_logs_no_secret_even_at_trace() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        let signer = Signer::new(
            "us-east-1",
            BedrockAuth::aws(
                "AKIDEXAMPLE",
                "secretKeyNeverLogged0123456789",
                Some("sessionTokenNeverLogged0123"),
            ),
        );
        let mut req = Request::builder()
            .method("POST")
            .uri("https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse")
            .body(())
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!("before");
            signer
                .authenticate(&mut req, b"{}", SystemTime::now())
                .unwrap();
        });
        let logged = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("before"), "the capture works: {logged}");
        assert!(!logged.contains("NeverLogged"), "{logged}");
    }

    #[test]
    fn the_model_id_is_one_encoded_segment() {
        assert_eq!(
            path("", "anthropic.claude-3-haiku-20240307-v1:0", false),
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
        );
        assert_eq!(
            path(
                "/base",
                "arn:aws:bedrock:us-east-1:1:inference-profile/us.x",
                true
            ),
            "/base/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse-stream"
        );
    }

    #[test]
    fn the_error_type_is_folded_into_the_body() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(
                "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
            ),
        );
        let body = error_body(
            &h,
            Bytes::from_static(br#"{"message":"Too many requests"}"#),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["__type"], "ThrottlingException");
        assert_eq!(v["message"], "Too many requests");
        // An empty body still says which exception; a non-JSON one is kept.
        let v: Value = serde_json::from_slice(&error_body(&h, Bytes::new())).unwrap();
        assert_eq!(v["__type"], "ThrottlingException");
        assert_eq!(&error_body(&h, Bytes::from_static(b"<html>")), "<html>");
        assert_eq!(
            &error_body(&HeaderMap::new(), Bytes::from_static(b"{}")),
            "{}"
        );
    }

    #[test]
    fn no_secret_in_debug_and_the_signature_is_added() {
        let auth = BedrockAuth::aws(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
            Some("the-session-token-value"),
        );
        let b = Signer::new("us-east-1", auth);
        let dbg = format!("{b:?}");
        assert!(
            !dbg.contains("wJalr") && !dbg.contains("session-token-value"),
            "{dbg}"
        );
        let mut req = Request::builder()
            .method("POST")
            .uri("https://bedrock-runtime.us-east-1.amazonaws.com/model/m%3A0/converse")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        b.authenticate(
            &mut req,
            b"{}",
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_440_938_160),
        )
        .unwrap();
        let h = req.headers();
        let auth = h[AUTHORIZATION].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request"
            ),
            "{auth}"
        );
        assert_eq!(h["x-amz-date"], "20150830T123600Z");
        assert_eq!(h["x-amz-security-token"], "the-session-token-value");
        assert!(h[AUTHORIZATION].is_sensitive());
        let key = Signer::new(
            "us-east-1",
            BedrockAuth::ApiKey("bedrock-api-key-123".into()),
        );
        assert!(!format!("{key:?}").contains("bedrock-api-key-123"));
    }
}
