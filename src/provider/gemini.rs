//! Google's Gemini models, by the Gemini API
//! ([`Api::Gemini`]) or by Vertex AI
//! ([`Api::Vertex`]): the upstream paths, the
//! credentials, and Google's errors carried to
//! [`Error::from_upstream`](crate::Error::from_upstream). The bodies are
//! translated from and to both client families by
//! [`crate::translate`] (`generateContent`, Anthropic Messages as the pivot).
//!
//! - **Gemini API**: `POST {base}/v1beta/models/{model}:generateContent`,
//!   or `:streamGenerateContent?alt=sse` for a stream (SSE whose events are
//!   whole `GenerateContentResponse`s); the base defaults to
//!   [`GEMINI_BASE_URL`]. The API key (from the deployment's
//!   `api_key_env`) goes in `x-goog-api-key`, never in the URL.
//! - **Vertex AI**: `POST {base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent`
//!   (or `:streamGenerateContent?alt=sse`); the base defaults to the
//!   regional endpoint `https://{location}-aiplatform.googleapis.com`, or
//!   `https://aiplatform.googleapis.com` for the `global` location
//!   ([`vertex_base_url`]). Requests carry `Authorization: Bearer <token>`,
//!   an OAuth access token obtained for a service account
//!   ([`ServiceAccount`]): an RS256 JWT signed with the account's private key
//!   (by the `jsonwebtoken` crate) is exchanged at the key's `token_uri`
//!   (overridable) for a token, which is cached and refreshed ahead of
//!   expiry by one task in a [`CredentialCache`] (one fetch under any
//!   concurrency; a failed fetch is 502 `upstream_auth_failed` and the
//!   router's cooldown, never a 401 to the client).
//! - **Errors**: Google's `{"error": {"code", "message", "status"}}` come
//!   with matching HTTP statuses (429 `RESOURCE_EXHAUSTED`, 503
//!   `UNAVAILABLE`, 403 `PERMISSION_DENIED`, 401 `UNAUTHENTICATED`, 404
//!   `NOT_FOUND`, 400 `INVALID_ARGUMENT`), so the one outcome table reads
//!   them as it reads any upstream's; the one exception, an invalid API key
//!   answered as 400 `INVALID_ARGUMENT` with the reason `API_KEY_INVALID`,
//!   is read as the 401 it is ([`error_status`]): the gateway's credential,
//!   not the client's request.
//!
//! The private key, the JWT and the tokens appear in no `Debug` output, log,
//! metric or error message.
//!
//! ```
//! use tollgate::credentials::RefreshPolicy;
//! use tollgate::provider::Provider;
//! use tollgate::provider::gemini::{ServiceAccount, Vertex, vertex_base_url};
//!
//! # fn main() -> Result<(), tollgate::provider::BuildError> {
//! // The Gemini API: the key as `x-goog-api-key`.
//! let gemini = Provider::builder("gemini", tollgate::provider::gemini::GEMINI_BASE_URL)?
//!     .api(tollgate::translate::Api::Gemini)
//!     .api_key("AIza-from-the-environment")
//!     .model("gemini-2.5-flash")
//!     .build();
//! # let _ = gemini;
//! // Vertex AI: a service account's key file (`ServiceAccount::from_file` reads one).
//! # let key = include_str!("../../examples/mock/gemini_test_only_service_account.json");
//! let account = ServiceAccount::from_json(key)?;
//! let vertex = Vertex::new("my-project", "europe-west4", account, RefreshPolicy::default());
//! let provider = Provider::builder("vertex", &vertex_base_url("europe-west4"))?
//!     .vertex(vertex)
//!     .model("gemini-2.5-pro")
//!     .build();
//! assert!(!format!("{provider:?}").contains("PRIVATE KEY"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::Value;

use super::azure::Bearer;
use super::bedrock::encode_segment;
use super::{BuildError, HttpClient};
use crate::body::Chunks;
use crate::credentials::{CredentialCache, CredentialError, Fetched, RefreshPolicy, Secret};
use crate::family::Api;
use crate::sanitize::{Secrets, redact};

/// The Gemini API's endpoint.
pub const GEMINI_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The OAuth scope Vertex AI's tokens are asked for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// How long one token fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest token endpoint answer read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// How long a signed JWT assertion is valid (Google's maximum: one hour).
const ASSERTION_LIFETIME: u64 = 3600;

/// Vertex AI's endpoint for `location`: regional
/// (`https://{location}-aiplatform.googleapis.com`), or
/// `https://aiplatform.googleapis.com` for `global`.
pub fn vertex_base_url(location: &str) -> String {
    match location {
        "global" => "https://aiplatform.googleapis.com".into(),
        _ => format!("https://{location}-aiplatform.googleapis.com"),
    }
}

/// The path and query of a `generateContent` request for `model` (a stream
/// asks for `streamGenerateContent?alt=sse`): the Gemini API's
/// `{base}/v1beta/models/{model}:…`, or Vertex AI's
/// `{base}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:…`.
pub(super) fn path(
    api: Api,
    vertex: Option<&Vertex>,
    base_path: &str,
    model: &str,
    stream: bool,
) -> String {
    let mut p = String::with_capacity(base_path.len() + model.len() * 3 + 128);
    p.push_str(base_path);
    match (api, vertex) {
        (Api::Vertex, Some(v)) => {
            p.push_str("/v1/projects/");
            encode_segment(&v.project, &mut p);
            p.push_str("/locations/");
            encode_segment(&v.location, &mut p);
            p.push_str("/publishers/google/models/");
        }
        _ => p.push_str("/v1beta/models/"),
    }
    encode_segment(model, &mut p);
    p.push_str(if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    });
    p
}

/// The HTTP status Google's error body means: an invalid API key comes as
/// 400 `INVALID_ARGUMENT` with the reason `API_KEY_INVALID` (in
/// `error.details`), which is the gateway's credential (401); any other
/// status is kept.
pub fn error_status(status: StatusCode, body: &[u8]) -> StatusCode {
    if status != StatusCode::BAD_REQUEST {
        return status;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return status;
    };
    let key_invalid = v["error"]["details"].as_array().is_some_and(|d| {
        d.iter()
            .any(|d| d["reason"].as_str() == Some("API_KEY_INVALID"))
    });
    if key_invalid {
        StatusCode::UNAUTHORIZED
    } else {
        status
    }
}

/// A Google Cloud service account's key (the JSON key file): its email,
/// its private key (held ready to sign, never shown) and its token URI.
#[derive(Clone)]
pub struct ServiceAccount {
    client_email: String,
    private_key_id: Option<String>,
    token_uri: String,
    key: Arc<jsonwebtoken::EncodingKey>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("private_key", &format_args!("[redacted]"))
            .finish()
    }
}

impl ServiceAccount {
    /// Reads a key file's JSON (`type = "service_account"`, with
    /// `client_email`, `private_key` and `token_uri`). An error names the
    /// missing or bad field, never the key.
    pub fn from_json(text: &str) -> Result<Self, BuildError> {
        let v: Value = serde_json::from_str(text).map_err(|_| {
            BuildError("the service account key is not JSON (a Google key file)".into())
        })?;
        let field = |name: &str| {
            v[name]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    BuildError(format!(
                        "the service account key has no `{name}` (a Google key file of type service_account)"
                    ))
                })
        };
        if let Some(kind) = v["type"].as_str().filter(|t| *t != "service_account") {
            return Err(BuildError(format!(
                "the key file's `type` is `{kind}`, not `service_account`"
            )));
        }
        let client_email = field("client_email")?;
        let pem = Secret::new(field("private_key")?);
        let token_uri = field("token_uri")?;
        token_uri
            .parse::<Uri>()
            .map_err(|_| BuildError("the service account key's `token_uri` is not a URL".into()))?;
        let key =
            jsonwebtoken::EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|_| {
                BuildError(
                    "the service account key's `private_key` is not an RSA private key in PEM"
                        .into(),
                )
            })?;
        Ok(ServiceAccount {
            client_email,
            private_key_id: v["private_key_id"].as_str().map(str::to_owned),
            token_uri,
            key: Arc::new(key),
        })
    }

    /// Reads a key file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BuildError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            BuildError(format!(
                "the service account key file `{}` could not be read: {e}",
                path.display()
            ))
        })?;
        Self::from_json(&text)
    }

    /// The account's email (the JWT's issuer).
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    /// Where its JWT is exchanged for a token (the key file's `token_uri`).
    pub fn token_uri(&self) -> &str {
        &self.token_uri
    }

    /// Exchanges JWTs at `uri` instead of the key file's `token_uri` (a
    /// private endpoint, or a test's loopback mock).
    pub fn with_token_uri(mut self, uri: &str) -> Result<Self, BuildError> {
        uri.parse::<Uri>()
            .map_err(|_| BuildError(format!("the token URL `{uri}` is not a URL")))?;
        self.token_uri = uri.to_owned();
        Ok(self)
    }

    /// The RS256 JWT assertion of Google's OAuth 2.0 service-account flow,
    /// issued at `now`: `iss` the account, `scope`, `aud` the token URI,
    /// valid one hour.
    pub fn assertion(&self, now: SystemTime) -> Result<Secret, CredentialError> {
        let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.private_key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|_| CredentialError::new("the service account's JWT could not be signed"))
    }

    /// One access token from the token endpoint.
    pub async fn fetch(
        &self,
        client: &HttpClient,
        timeout: Duration,
    ) -> Result<Fetched<Secret>, CredentialError> {
        let what = "Google's token endpoint";
        let assertion = self.assertion(SystemTime::now())?;
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", assertion.expose())
            .finish();
        let uri: Uri = self
            .token_uri
            .parse()
            .map_err(|_| CredentialError::new("the token URI is not a URL"))?;
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTPS);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(Chunks::new(vec![Bytes::from(form)]))
            .map_err(|_| CredentialError::new("the token request could not be built"))?;
        let exchange = async {
            let res = client
                .pick(&scheme)
                .request(request)
                .await
                .map_err(|e| format!("could not reach {what}: {e}"))?;
            let status = res.status();
            let body = http_body_util::Limited::new(res.into_body(), MAX_TOKEN_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("{what}'s answer could not be read: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let list = [assertion.expose()];
        let secrets = Secrets::new(&list);
        let fail = |m: String| CredentialError::new(redact(&m, &secrets).into_owned());
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(fail(format!("{what} did not answer within {timeout:?}"))),
            Ok(Err(m)) => return Err(fail(m)),
            Ok(Ok(v)) => v,
        };
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // OAuth's `error` (`invalid_grant`, …) and its description; never the request.
            let code = json["error"].as_str().unwrap_or("no error code");
            let detail: String = json["error_description"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            };
            return Err(fail(format!(
                "{what} answered HTTP {}: {code}{detail}",
                status.as_u16()
            )));
        }
        let Some(token) = json["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(fail(format!("{what} answered without an access_token")));
        };
        let Some(expires_in) = json["expires_in"].as_u64() else {
            return Err(fail(format!("{what} answered without expires_in")));
        };
        Ok(Fetched::expiring(
            Secret::new(token),
            Duration::from_secs(expires_in),
        ))
    }
}

/// A Vertex AI deployment's project, location and service account; the
/// token cache is built by the provider's builder.
#[derive(Clone)]
pub struct Vertex {
    project: String,
    location: String,
    account: ServiceAccount,
    policy: RefreshPolicy,
    timeout: Duration,
    pub(super) tokens: Option<CredentialCache<Bearer>>,
}

impl fmt::Debug for Vertex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vertex")
            .field("project", &self.project)
            .field("location", &self.location)
            .field("account", &self.account)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl Vertex {
    /// Vertex AI in `project` and `location` (`us-central1`, `europe-west4`,
    /// `global`, …), authenticated as `account`, its tokens refreshed by `policy`.
    pub fn new(
        project: &str,
        location: &str,
        account: ServiceAccount,
        policy: RefreshPolicy,
    ) -> Self {
        Vertex {
            project: project.to_owned(),
            location: location.to_owned(),
            account,
            policy,
            timeout: FETCH_TIMEOUT,
            tokens: None,
        }
    }

    /// How long one token fetch may take (default [`FETCH_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The token cache, once the provider is built (its counters: fetches, failures).
    pub fn tokens(&self) -> Option<&CredentialCache<Bearer>> {
        self.tokens.as_ref()
    }

    /// Builds the token cache over the provider's HTTP client (called once,
    /// by the provider's builder).
    pub(super) fn start(&mut self, provider: &str, client: Option<&HttpClient>) {
        let Some(client) = client.cloned() else {
            return;
        };
        let account = self.account.clone();
        let timeout = self.timeout;
        self.tokens = Some(CredentialCache::new(
            &format!("{provider}/vertex"),
            self.policy,
            move || {
                let account = account.clone();
                let client = client.clone();
                async move {
                    let f = account.fetch(&client, timeout).await?;
                    Ok(Fetched {
                        value: Bearer::new(&f.value)?,
                        lifetime: f.lifetime,
                    })
                }
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../examples/mock/gemini_test_only_service_account.json");

    #[test]
    fn paths_of_both_apis() {
        assert_eq!(
            path(Api::Gemini, None, "", "gemini-2.5-flash", false),
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(
            path(Api::Gemini, None, "/g", "tuned/x", true),
            "/g/v1beta/models/tuned%2Fx:streamGenerateContent?alt=sse"
        );
        let v = Vertex::new(
            "my-proj",
            "europe-west4",
            ServiceAccount::from_json(KEY).unwrap(),
            RefreshPolicy::default(),
        );
        assert_eq!(
            path(Api::Vertex, Some(&v), "", "gemini-2.5-pro", true),
            "/v1/projects/my-proj/locations/europe-west4/publishers/google/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            vertex_base_url("us-central1"),
            "https://us-central1-aiplatform.googleapis.com"
        );
        assert_eq!(
            vertex_base_url("global"),
            "https://aiplatform.googleapis.com"
        );
    }

    #[test]
    fn an_invalid_api_key_is_the_gateways_credential() {
        let body = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
        assert_eq!(
            error_status(StatusCode::BAD_REQUEST, body),
            StatusCode::UNAUTHORIZED
        );
        let other = br#"{"error":{"code":400,"message":"Invalid JSON payload","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            error_status(StatusCode::BAD_REQUEST, other),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(error_status(StatusCode::TOO_MANY_REQUESTS, body), 429);
        assert_eq!(error_status(StatusCode::BAD_REQUEST, b"<html>"), 400);
    }

    #[test]
    fn a_key_file_is_read_and_bad_ones_are_refused_by_field() {
        let account = ServiceAccount::from_json(KEY).unwrap();
        assert!(account.client_email().ends_with(".iam.gserviceaccount.com"));
        let dbg = format!("{account:?}");
        assert!(
            !dbg.contains("PRIVATE KEY") && !dbg.contains("MII"),
            "{dbg}"
        );
        let mut v: Value = serde_json::from_str(KEY).unwrap();
        v.as_object_mut().unwrap().remove("client_email");
        let e = ServiceAccount::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("`client_email`"), "{e}");
        let mut v: Value = serde_json::from_str(KEY).unwrap();
        v["private_key"] =
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n".into();
        let e = ServiceAccount::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("`private_key`"), "{e}");
        assert!(!e.to_string().contains("not a key"), "{e}");
        let mut v: Value = serde_json::from_str(KEY).unwrap();
        v["type"] = "authorized_user".into();
        assert!(ServiceAccount::from_json(&v.to_string()).is_err());
        assert!(ServiceAccount::from_json("nope").is_err());
        let e = ServiceAccount::from_file("/nonexistent/key.json").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/key.json"), "{e}");
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_with_googles_claims() {
        use base64::Engine;
        let account = ServiceAccount::from_json(KEY).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jwt = account.assertion(at).unwrap();
        assert_eq!(format!("{jwt:?}"), "[redacted]");
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], "test-only-key-id");
        let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], account.client_email());
        assert_eq!(claims["aud"], account.token_uri());
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_003_600u64);
        // The signature verifies with the key's public half (ring, not jsonwebtoken).
        let public = b64
            .decode(
                serde_json::from_str::<Value>(KEY).unwrap()["test_only_public_key_pkcs1_base64url"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let key = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            public,
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        key.verify(signed.as_bytes(), &b64.decode(parts[2]).unwrap())
            .unwrap();
    }
}
