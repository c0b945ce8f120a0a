//! Azure OpenAI: its two URL styles, the `api-key` header, and Microsoft
//! Entra ID bearer tokens held in a shared [`CredentialCache`].
//!
//! Azure OpenAI speaks OpenAI's wire format, so every OpenAI route passes
//! through and an Anthropic `/v1/messages` client is translated as for any
//! OpenAI-compatible upstream ([`translate::plan`](crate::translate::plan)
//! decides it, with the [`Api::Azure`](crate::family::Api::Azure) arms).
//! What differs is where requests go and how they are authenticated:
//!
//! | style | URL of a chat completion | body `model` |
//! |---|---|---|
//! | [`Azure::deployment_style`] | `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version={v}` | untouched (Azure reads the URL), unless the deployment sets `model` |
//! | [`Azure::v1`] | `{endpoint}/openai/v1/chat/completions` | the deployment name |
//!
//! In the deployment style, `/v1/responses` goes to
//! `{endpoint}/openai/responses?api-version={v}` with the deployment as
//! `model` (Azure serves the Responses API outside the deployment path).
//!
//! Authentication is one of:
//! - an API key, sent as `api-key: <key>`
//!   ([`ProviderBuilder::api_key`](super::ProviderBuilder::api_key));
//! - an Entra ID token, sent as `Authorization: Bearer <token>`, from an
//!   [`Entra`] source: client credentials (tenant, client id and secret),
//!   a managed identity's token endpoint (IMDS-style `GET` with
//!   `Metadata: true`, or App Service's with `X-IDENTITY-HEADER`), or
//!   workload identity (a federated token file sent as `client_assertion`).
//!   The token is fetched once, cached and refreshed ahead of expiry by one
//!   task ([`crate::credentials`]); a fetch that fails is 502
//!   `upstream_auth_failed` for the request (the router cools the
//!   deployment down and tries another). A 401 from Azure drops the cached
//!   token and the request is sent once more with a fresh one (its body is
//!   buffered bytes); refused again, it is 502 `upstream_auth_failed`.
//!
//! ```
//! use tollgate::provider::Provider;
//! use tollgate::provider::azure::{Azure, Entra};
//! use tollgate::credentials::{RefreshPolicy, Secret};
//!
//! # fn main() -> Result<(), tollgate::provider::BuildError> {
//! // Deployment style with an API key.
//! let keyed = Provider::builder("azure-east", "https://my-resource.openai.azure.com")?
//!     .azure(Azure::deployment_style("gpt-4o-prod", "2024-10-21"))
//!     .api_key("the-key-from-the-environment")
//!     .build();
//!
//! // v1 style with Entra ID client credentials.
//! let entra = Entra::client_credentials(
//!     "https://login.microsoftonline.com",
//!     "my-tenant-id",
//!     "my-client-id",
//!     Secret::new("the-secret-from-the-environment"),
//! )?;
//! let token = Provider::builder("azure-west", "https://other.openai.azure.com")?
//!     .azure(Azure::v1("gpt-4o-prod").entra(entra, RefreshPolicy::default()))
//!     .build();
//! # let _ = (keyed, token); Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use serde_json::Value;

use super::{BuildError, HttpClient};
use crate::body::Chunks;
use crate::credentials::{
    Credential, CredentialCache, CredentialError, Fetched, RefreshPolicy, Secret, exchange,
    upstream_auth_failed,
};
use crate::error::Error;
use crate::read_request::{Endpoint, json_string};
use crate::sanitize::{Secrets, redact};

/// The scope of Azure OpenAI (Cognitive Services) tokens.
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// Microsoft Entra ID's public authority.
pub const AUTHORITY: &str = "https://login.microsoftonline.com";

/// The Azure Instance Metadata Service's token endpoint (managed identity).
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// How long one token fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Azure OpenAI requests go and how they are authenticated (see the
/// module docs). Given to [`ProviderBuilder::azure`](super::ProviderBuilder::azure).
#[derive(Clone)]
pub struct Azure {
    style: Style,
    deployment: Arc<str>,
    /// The deployment name as a JSON string literal, for the body's `model`.
    deployment_json: Bytes,
    entra: Option<(Entra, RefreshPolicy)>,
    pub(super) tokens: Option<CredentialCache<Bearer>>,
}

/// Azure's URL styles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Style {
    /// `{endpoint}/openai/deployments/{deployment}/{route}?api-version={api_version}`.
    Deployment {
        /// The `api-version` query parameter (e.g. `2024-10-21`).
        api_version: String,
    },
    /// `{endpoint}/openai/v1/{route}`, the deployment named in the body's `model`.
    V1,
}

impl fmt::Debug for Azure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azure")
            .field("style", &self.style)
            .field("deployment", &self.deployment)
            .field("entra", &self.entra.as_ref().map(|e| &e.0))
            .finish()
    }
}

impl Azure {
    /// The deployment style, at `api_version`.
    pub fn deployment_style(deployment: &str, api_version: &str) -> Self {
        Azure::new(
            deployment,
            Style::Deployment {
                api_version: api_version.to_owned(),
            },
        )
    }

    /// The v1 style (no `api-version`; the deployment is the body's `model`).
    pub fn v1(deployment: &str) -> Self {
        Azure::new(deployment, Style::V1)
    }

    fn new(deployment: &str, style: Style) -> Self {
        Azure {
            style,
            deployment: deployment.into(),
            deployment_json: json_string(deployment),
            entra: None,
            tokens: None,
        }
    }

    /// Authenticates with Entra ID tokens from `source`, cached and refreshed
    /// by `policy`, instead of an API key.
    pub fn entra(mut self, source: Entra, policy: RefreshPolicy) -> Self {
        self.entra = Some((source, policy));
        self
    }

    /// The deployment name.
    pub fn deployment(&self) -> &str {
        &self.deployment
    }

    /// The URL style.
    pub fn style(&self) -> &Style {
        &self.style
    }

    /// Builds the token cache over the provider's HTTP client (called once,
    /// by the provider's builder).
    pub(super) fn start(&mut self, provider: &str, client: Option<&HttpClient>) {
        if let (Some((source, policy)), Some(client)) = (&self.entra, client) {
            self.tokens = Some(source.clone().cache(provider, client.clone(), *policy));
        }
    }

    /// The path and query of a request to `endpoint` (`rest` is its path
    /// under `/v1`, `query` the client's query string), under the
    /// endpoint's `base_path`.
    pub(super) fn path_and_query(
        &self,
        base_path: &str,
        endpoint: Endpoint,
        rest: &str,
        query: Option<&str>,
    ) -> String {
        let mut pq = String::with_capacity(base_path.len() + rest.len() + 96);
        pq.push_str(base_path);
        match &self.style {
            Style::V1 => pq.push_str("/openai/v1"),
            Style::Deployment { .. } if endpoint == Endpoint::Responses => pq.push_str("/openai"),
            Style::Deployment { .. } => {
                pq.push_str("/openai/deployments/");
                pq.extend(percent_encoding(&self.deployment));
            }
        }
        pq.push_str(rest);
        let mut sep = '?';
        if let Style::Deployment { api_version } = &self.style {
            pq.push('?');
            pq.push_str("api-version=");
            pq.extend(percent_encoding(api_version));
            sep = '&';
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            // The gateway's own api-version wins over a client's.
            for pair in q.split('&') {
                if matches!(self.style, Style::Deployment { .. })
                    && pair.split('=').next() == Some("api-version")
                {
                    continue;
                }
                pq.push(sep);
                pq.push_str(pair);
                sep = '&';
            }
        }
        pq
    }

    /// The body's `model` for `endpoint`: the deployment where the style
    /// needs it (v1, and the deployment style's Responses route), else `None`
    /// (the body is left as the client sent it, or as the provider's `model`).
    pub(super) fn body_model(&self, endpoint: Endpoint) -> Option<&Bytes> {
        match self.style {
            Style::V1 => Some(&self.deployment_json),
            Style::Deployment { .. } if endpoint == Endpoint::Responses => {
                Some(&self.deployment_json)
            }
            Style::Deployment { .. } => None,
        }
    }
}

/// Percent-encodes what is not safe in a path segment or a query value.
fn percent_encoding(s: &str) -> impl Iterator<Item = char> + '_ {
    s.bytes().flat_map(|b| {
        let safe = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        let hex = |n: u8| char::from(b"0123456789ABCDEF"[usize::from(n)]);
        let out: [Option<char>; 3] = if safe {
            [Some(char::from(b)), None, None]
        } else {
            [Some('%'), Some(hex(b >> 4)), Some(hex(b & 0xf))]
        };
        out.into_iter().flatten()
    })
}

/// Where Entra ID tokens come from.
#[derive(Clone)]
pub struct Entra {
    kind: Kind,
    scope: String,
    timeout: Duration,
}

#[derive(Clone)]
enum Kind {
    ClientCredentials {
        token_url: Uri,
        client_id: String,
        client_secret: Secret,
    },
    ManagedIdentity {
        endpoint: String,
        client_id: Option<String>,
    },
    AppService {
        endpoint: String,
        header: Secret,
        client_id: Option<String>,
    },
    WorkloadIdentity {
        token_url: Uri,
        client_id: String,
        token_file: std::path::PathBuf,
    },
}

impl fmt::Debug for Entra {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Entra");
        match &self.kind {
            Kind::ClientCredentials {
                token_url,
                client_id,
                ..
            } => d
                .field("kind", &"client_credentials")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &"[redacted]"),
            Kind::ManagedIdentity {
                endpoint,
                client_id,
            } => d
                .field("kind", &"managed_identity")
                .field("endpoint", endpoint)
                .field("client_id", client_id),
            Kind::AppService {
                endpoint,
                client_id,
                ..
            } => d
                .field("kind", &"app_service")
                .field("endpoint", endpoint)
                .field("client_id", client_id)
                .field("identity_header", &"[redacted]"),
            Kind::WorkloadIdentity {
                token_url,
                client_id,
                token_file,
            } => d
                .field("kind", &"workload_identity")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("token_file", token_file),
        };
        d.field("scope", &self.scope).finish()
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`.
fn token_url(authority: &str, tenant: &str) -> Result<Uri, BuildError> {
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        authority.trim_end_matches('/'),
        percent_encoding(tenant).collect::<String>()
    );
    let uri: Uri = url
        .parse()
        .map_err(|e| BuildError(format!("authority `{authority}` is not a URL: {e}")))?;
    http_url(uri, "authority")
}

fn http_url(uri: Uri, what: &str) -> Result<Uri, BuildError> {
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => Ok(uri),
        _ => Err(BuildError(format!(
            "{what} `{uri}` must be an http:// or https:// URL with a host"
        ))),
    }
}

impl Entra {
    /// Client credentials: a POST of the client id and secret to
    /// `{authority}/{tenant}/oauth2/v2.0/token` ([`AUTHORITY`] is Entra ID's).
    pub fn client_credentials(
        authority: &str,
        tenant: &str,
        client_id: &str,
        client_secret: Secret,
    ) -> Result<Self, BuildError> {
        Ok(Entra {
            kind: Kind::ClientCredentials {
                token_url: token_url(authority, tenant)?,
                client_id: client_id.to_owned(),
                client_secret,
            },
            scope: SCOPE.to_owned(),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// A managed identity: a `GET {endpoint}?api-version=2018-02-01&resource=…`
    /// with `Metadata: true` ([`IMDS_ENDPOINT`] on an Azure VM), naming a
    /// user-assigned identity by `client_id` when given.
    pub fn managed_identity(endpoint: &str, client_id: Option<&str>) -> Result<Self, BuildError> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| BuildError(format!("endpoint `{endpoint}` is not a URL: {e}")))?;
        http_url(uri, "endpoint")?;
        if endpoint.contains('?') {
            return Err(BuildError(format!(
                "endpoint `{endpoint}` must not have a query"
            )));
        }
        Ok(Entra {
            kind: Kind::ManagedIdentity {
                endpoint: endpoint.to_owned(),
                client_id: client_id.map(str::to_owned),
            },
            scope: SCOPE.to_owned(),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// An App Service or Azure Functions managed identity: a `GET
    /// {endpoint}?api-version=2019-08-01&resource=…` with the secret
    /// `X-IDENTITY-HEADER` (the platform sets both in `IDENTITY_ENDPOINT`
    /// and `IDENTITY_HEADER`), naming a user-assigned identity by
    /// `client_id` when given. Its answer says when the token expires as
    /// `expires_on`, seconds since the epoch.
    pub fn app_service(
        endpoint: &str,
        identity_header: Secret,
        client_id: Option<&str>,
    ) -> Result<Self, BuildError> {
        let Entra { scope, timeout, .. } = Entra::managed_identity(endpoint, None)?;
        if HeaderValue::from_str(identity_header.expose()).is_err() {
            return Err(BuildError(
                "the identity header is not a valid header value".into(),
            ));
        }
        Ok(Entra {
            kind: Kind::AppService {
                endpoint: endpoint.to_owned(),
                header: identity_header,
                client_id: client_id.map(str::to_owned),
            },
            scope,
            timeout,
        })
    }

    /// Workload identity (AKS): the federated token in `token_file` (re-read
    /// at every fetch, as the kubelet rotates it) is sent as
    /// `client_assertion` to `{authority}/{tenant}/oauth2/v2.0/token`.
    pub fn workload_identity(
        authority: &str,
        tenant: &str,
        client_id: &str,
        token_file: impl Into<std::path::PathBuf>,
    ) -> Result<Self, BuildError> {
        Ok(Entra {
            kind: Kind::WorkloadIdentity {
                token_url: token_url(authority, tenant)?,
                client_id: client_id.to_owned(),
                token_file: token_file.into(),
            },
            scope: SCOPE.to_owned(),
            timeout: FETCH_TIMEOUT,
        })
    }

    /// The scope asked for (default [`SCOPE`]); a managed identity asks for
    /// its resource, the scope without `/.default`.
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_owned();
        self
    }

    /// How long one fetch may take (default [`FETCH_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A token cache named after `provider` over this source, holding each
    /// token as its ready `Authorization` header value.
    pub fn cache(
        self,
        provider: &str,
        client: HttpClient,
        policy: RefreshPolicy,
    ) -> CredentialCache<Bearer> {
        let source = Arc::new(self);
        CredentialCache::new(&format!("{provider}/entra"), policy, move || {
            let source = source.clone();
            let client = client.clone();
            async move {
                let f = source.fetch(&client).await?;
                Ok(Fetched {
                    value: Bearer::new(&f.value)?,
                    lifetime: f.lifetime,
                })
            }
        })
    }

    /// One token from the endpoint.
    pub async fn fetch(&self, client: &HttpClient) -> Result<Fetched<Secret>, CredentialError> {
        let what = match &self.kind {
            Kind::ClientCredentials { .. } => "the Entra ID token endpoint (client credentials)",
            Kind::ManagedIdentity { .. } => "the managed identity endpoint",
            Kind::AppService { .. } => "the App Service identity endpoint",
            Kind::WorkloadIdentity { .. } => "the Entra ID token endpoint (workload identity)",
        };
        let mut secrets: Vec<String> = Vec::new();
        let request = self.request(&mut secrets)?;
        let list: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let (status, body) = exchange(client, request, self.timeout, what, &list).await?;
        let secrets = Secrets::new(&list);
        let fail = |m: String| CredentialError::new(redact(&m, &secrets).into_owned());
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            // Entra's `error` (`invalid_client`, …) and the first line of
            // its `error_description` (`AADSTS7000215: Invalid client
            // secret provided. …`); never the request.
            let code = json["error"].as_str().unwrap_or("no error code");
            let mut detail: String = json["error_description"]
                .as_str()
                .or_else(|| json["message"].as_str())
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            if !detail.is_empty() {
                detail = format!(": {detail}");
            }
            return Err(fail(format!(
                "{what} answered HTTP {}: {code}{detail}",
                status.as_u16()
            )));
        }
        let Some(token) = json["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(fail(format!("{what} answered without an access_token")));
        };
        // `expires_in` is a number from Entra ID and a string from IMDS;
        // App Service sends only `expires_on` (seconds since the epoch, a
        // string or a number).
        let seconds = |v: &Value| match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        let expires_in = seconds(&json["expires_in"]).or_else(|| {
            let on = seconds(&json["expires_on"])?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            Some(on.saturating_sub(now))
        });
        let Some(expires_in) = expires_in.filter(|s| *s > 0) else {
            return Err(fail(format!(
                "{what} answered without a future expires_in or expires_on"
            )));
        };
        Ok(Fetched::expiring(
            Secret::new(token),
            Duration::from_secs(expires_in),
        ))
    }

    /// The token request; the secrets it carries are pushed to `secrets`.
    fn request(&self, secrets: &mut Vec<String>) -> Result<Request<Chunks>, CredentialError> {
        let form = |pairs: &[(&str, &str)]| {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                s.append_pair(k, v);
            }
            Bytes::from(s.finish())
        };
        let (method, uri, body, header) = match &self.kind {
            Kind::ClientCredentials {
                token_url,
                client_id,
                client_secret,
            } => {
                secrets.push(client_secret.expose().to_owned());
                let body = form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("client_secret", client_secret.expose()),
                    ("scope", &self.scope),
                ]);
                (Method::POST, token_url.clone(), Some(body), None)
            }
            Kind::WorkloadIdentity {
                token_url,
                client_id,
                token_file,
            } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|e| {
                    CredentialError::new(format!(
                        "the federated token file `{}` could not be read: {e}",
                        token_file.display()
                    ))
                })?;
                let assertion = assertion.trim().to_owned();
                secrets.push(assertion.clone());
                let body = form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                    ("scope", &self.scope),
                ]);
                (Method::POST, token_url.clone(), Some(body), None)
            }
            Kind::ManagedIdentity {
                endpoint,
                client_id,
            } => {
                let uri = self.identity_uri(endpoint, "2018-02-01", client_id.as_deref())?;
                (Method::GET, uri, None, Some(("metadata", "true")))
            }
            Kind::AppService {
                endpoint,
                header,
                client_id,
            } => {
                secrets.push(header.expose().to_owned());
                let uri = self.identity_uri(endpoint, "2019-08-01", client_id.as_deref())?;
                (
                    Method::GET,
                    uri,
                    None,
                    Some(("x-identity-header", header.expose())),
                )
            }
        };
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(h) = req.headers_mut() {
            h.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            );
            if let Some((name, value)) = header {
                let mut v = HeaderValue::from_str(value).map_err(|_| {
                    CredentialError::new("the identity header is not a valid header value")
                })?;
                v.set_sensitive(true);
                h.insert(name, v);
            }
            if body.is_some() {
                h.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
            }
        }
        req.body(Chunks::new(body.into_iter().collect()))
            .map_err(|_| CredentialError::new("the token request could not be built"))
    }

    /// `{endpoint}?api-version=…&resource=…[&client_id=…]`: a managed
    /// identity endpoint's token URL (the resource is the scope without
    /// `/.default`).
    fn identity_uri(
        &self,
        endpoint: &str,
        api_version: &str,
        client_id: Option<&str>,
    ) -> Result<Uri, CredentialError> {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("api-version", api_version);
        q.append_pair("resource", self.scope.trim_end_matches("/.default"));
        if let Some(id) = client_id {
            q.append_pair("client_id", id);
        }
        format!("{endpoint}?{}", q.finish())
            .parse()
            .map_err(|_| CredentialError::new("the managed identity endpoint is not a valid URL"))
    }
}

/// A token as the `Authorization: Bearer <token>` header value, built once
/// per fetch (a sensitive value): a request clones it, a reference count.
#[derive(Clone)]
pub struct Bearer {
    header: HeaderValue,
}

impl Bearer {
    /// The header value for `token` (refused if the token is not a valid
    /// header value).
    pub fn new(token: &Secret) -> Result<Self, CredentialError> {
        let mut header = HeaderValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| CredentialError::new("the token is not a valid header value"))?;
        header.set_sensitive(true);
        Ok(Bearer { header })
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// The token itself (to redact it from an error body).
    pub(super) fn token(&self) -> &str {
        let v = self.header.to_str().unwrap_or("");
        v.strip_prefix("Bearer ").unwrap_or(v)
    }
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer [redacted]")
    }
}

/// Puts a cached token (Entra ID's, or Vertex AI's: `what` names it in the
/// error) on `headers` as `Authorization: Bearer`, fetching one if none is
/// valid. A failure is 502 `upstream_auth_failed` for this deployment (the
/// router cools it down and tries another).
pub(super) async fn authorize(
    tokens: &CredentialCache<Bearer>,
    provider: &str,
    what: &str,
    headers: &mut HeaderMap,
) -> Result<Credential<Bearer>, Error> {
    let token = tokens
        .get()
        .await
        .map_err(|e| upstream_auth_failed(provider, what, &e))?;
    headers.insert(AUTHORIZATION, token.value().header().clone());
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_style_paths() {
        let az = Azure::deployment_style("gpt 4o/prod", "2024-10-21");
        assert_eq!(
            az.path_and_query("", Endpoint::ChatCompletions, "/chat/completions", None),
            "/openai/deployments/gpt%204o%2Fprod/chat/completions?api-version=2024-10-21"
        );
        // The client's query is kept, but not its api-version.
        assert_eq!(
            az.path_and_query(
                "/base",
                Endpoint::Embeddings,
                "/embeddings",
                Some("api-version=1999&x=1")
            ),
            "/base/openai/deployments/gpt%204o%2Fprod/embeddings?api-version=2024-10-21&x=1"
        );
        assert_eq!(
            az.path_and_query("", Endpoint::Responses, "/responses", None),
            "/openai/responses?api-version=2024-10-21"
        );
        assert!(az.body_model(Endpoint::ChatCompletions).is_none());
        assert_eq!(
            &az.body_model(Endpoint::Responses).unwrap()[..],
            br#""gpt 4o/prod""#
        );
    }

    #[test]
    fn v1_style_paths() {
        let az = Azure::v1("gpt-4o");
        assert_eq!(
            az.path_and_query(
                "",
                Endpoint::ChatCompletions,
                "/chat/completions",
                Some("a=b")
            ),
            "/openai/v1/chat/completions?a=b"
        );
        assert_eq!(
            &az.body_model(Endpoint::ChatCompletions).unwrap()[..],
            br#""gpt-4o""#
        );
    }

    #[test]
    fn a_bearer_is_a_sensitive_header_never_shown() {
        let b = Bearer::new(&Secret::new("eyJ0.t0k3nV4lu3.sig")).unwrap();
        assert_eq!(b.header(), "Bearer eyJ0.t0k3nV4lu3.sig");
        assert!(b.header().is_sensitive());
        assert_eq!(b.token(), "eyJ0.t0k3nV4lu3.sig");
        assert!(!format!("{b:?}").contains("t0k3n"));
        assert!(Bearer::new(&Secret::new("bad\ntoken")).is_err());
    }

    #[test]
    fn entra_sources_check_their_urls_and_hide_secrets() {
        assert!(Entra::client_credentials("not a url", "t", "c", Secret::new("s")).is_err());
        assert!(Entra::client_credentials("ftp://x", "t", "c", Secret::new("s")).is_err());
        assert!(Entra::managed_identity("http://h/x?y=1", None).is_err());
        let e = Entra::client_credentials(
            "http://127.0.0.1:1/",
            "tenant-1",
            "client-1",
            Secret::new("cl13ntS3cr3t"),
        )
        .unwrap();
        let shown = format!("{e:?}");
        assert!(!shown.contains("cl13nt"), "{shown}");
        assert!(shown.contains("http://127.0.0.1:1/tenant-1/oauth2/v2.0/token"));
        let mut secrets = Vec::new();
        let req = e.request(&mut secrets).unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(secrets, ["cl13ntS3cr3t"]);
        let mi = Entra::managed_identity(
            "http://127.0.0.1:1/metadata/identity/oauth2/token",
            Some("id-1"),
        )
        .unwrap();
        let req = mi.request(&mut Vec::new()).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.headers()["metadata"], "true");
        assert_eq!(
            req.uri().query(),
            Some(
                "api-version=2018-02-01&resource=https%3A%2F%2Fcognitiveservices.azure.com&client_id=id-1"
            )
        );
        let app = Entra::app_service(
            "http://127.0.0.1:1/msi/token",
            Secret::new("h34d3rS3cr3t"),
            None,
        )
        .unwrap();
        assert!(!format!("{app:?}").contains("h34d3r"));
        let mut secrets = Vec::new();
        let req = app.request(&mut secrets).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.headers()["x-identity-header"], "h34d3rS3cr3t");
        assert!(req.headers()["x-identity-header"].is_sensitive());
        assert_eq!(secrets, ["h34d3rS3cr3t"]);
        assert_eq!(
            req.uri().query(),
            Some("api-version=2019-08-01&resource=https%3A%2F%2Fcognitiveservices.azure.com")
        );
        assert!(Entra::app_service("http://h/x", Secret::new("a\nb"), None).is_err());
        let wi =
            Entra::workload_identity("http://127.0.0.1:1", "t", "c", "/surely/not/here").unwrap();
        let e = wi.request(&mut Vec::new()).unwrap_err();
        assert!(e.message().contains("/surely/not/here"), "{e}");
    }
}

/// `[groups.deployments.azure]`: an Azure OpenAI deployment's settings (with
/// `api = "azure"`; `base_url` is the resource's endpoint, e.g.
/// `https://my-resource.openai.azure.com`). See `docs/providers.md`.
#[cfg(feature = "config")]
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    /// `"deployment"` (the default: `/openai/deployments/{deployment}/…?api-version=…`)
    /// or `"v1"` (`/openai/v1/…`, the deployment as the body's `model`).
    pub style: Option<String>,
    /// The Azure deployment name (default: the deployment's `model`, else the group's name).
    pub deployment: Option<String>,
    /// The `api-version` of the deployment style (required there; refused with `v1`).
    pub api_version: Option<String>,
    /// `"api_key"` (the default: `api_key_env` sent as `api-key`),
    /// `"client_credentials"`, `"managed_identity"`, `"app_service"` or
    /// `"workload_identity"` (Microsoft Entra ID tokens).
    pub auth: Option<String>,
    /// The Entra ID authority (default `https://login.microsoftonline.com`;
    /// for workload identity, `$AZURE_AUTHORITY_HOST` when set).
    pub authority: Option<String>,
    /// The variable holding the tenant id (default `AZURE_TENANT_ID`).
    pub tenant_id_env: Option<String>,
    /// The variable holding the client id (default `AZURE_CLIENT_ID`; for a
    /// managed identity, optional: names a user-assigned identity).
    pub client_id_env: Option<String>,
    /// The variable holding the client secret (default `AZURE_CLIENT_SECRET`).
    pub client_secret_env: Option<String>,
    /// The variable holding the federated token file's path (default
    /// `AZURE_FEDERATED_TOKEN_FILE`).
    pub federated_token_file_env: Option<String>,
    /// The managed identity token endpoint (default: IMDS,
    /// `http://169.254.169.254/metadata/identity/oauth2/token`; for
    /// `app_service`, `$IDENTITY_ENDPOINT`).
    pub identity_endpoint: Option<String>,
    /// For `app_service`: the variable holding the identity header's secret
    /// (default `IDENTITY_HEADER`).
    pub identity_header_env: Option<String>,
    /// The token scope (default `https://cognitiveservices.azure.com/.default`).
    pub scope: Option<String>,
    /// Seconds before expiry a token is refreshed in the background
    /// (default 300, at most half its lifetime).
    pub refresh_ahead_s: Option<u64>,
    /// After a failed token fetch, milliseconds until the next (default 2000).
    pub retry_after_failure_ms: Option<u64>,
}

#[cfg(feature = "config")]
impl AzureConfig {
    /// Checks the settings and reads the environment, into the provider's
    /// [`Azure`]. `model` is the deployment's upstream model name or the
    /// group's; `api_key_env` whether the deployment names a key. An error
    /// names the field (under `azure.`) and what is wrong.
    pub fn build(&self, model: &str, has_api_key: bool) -> Result<Azure, (String, String)> {
        let bad = |f: &str, m: String| Err((format!("azure.{f}"), m));
        let deployment = self.deployment.as_deref().unwrap_or(model);
        if deployment.is_empty() {
            return bad("deployment", "must not be empty".into());
        }
        let mut azure = match (
            self.style.as_deref().unwrap_or("deployment"),
            &self.api_version,
        ) {
            ("deployment", Some(v)) if !v.is_empty() => Azure::deployment_style(deployment, v),
            ("deployment", _) => {
                return bad(
                    "api_version",
                    "the deployment style needs an `api_version` (e.g. \"2024-10-21\")".into(),
                );
            }
            ("v1", None) => Azure::v1(deployment),
            ("v1", Some(_)) => {
                return bad("api_version", "the v1 style takes no `api_version`".into());
            }
            (other, _) => {
                return bad(
                    "style",
                    format!("`{other}` is not a URL style; use \"deployment\" or \"v1\""),
                );
            }
        };
        let env = |field: &str, var: &Option<String>, default: &str| {
            let var = var.as_deref().unwrap_or(default);
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(v),
                _ => Err((
                    format!("azure.{field}"),
                    format!("environment variable `{var}` is not set"),
                )),
            }
        };
        let authority = self.authority.as_deref().unwrap_or(AUTHORITY);
        let built = |r: Result<Entra, BuildError>, field: &str| {
            r.map_err(|e| (format!("azure.{field}"), e.to_string()))
        };
        let auth = self.auth.as_deref().unwrap_or("api_key");
        let entra = match auth {
            "api_key" => {
                if !has_api_key {
                    return Err((
                        "api_key_env".into(),
                        "Azure with `auth = \"api_key\"` (the default) needs `api_key_env`".into(),
                    ));
                }
                None
            }
            _ if has_api_key => {
                return Err((
                    "api_key_env".into(),
                    format!("`auth = \"{auth}\"` uses Entra ID tokens: remove `api_key_env`"),
                ));
            }
            "client_credentials" => Some(built(
                Entra::client_credentials(
                    authority,
                    &env("tenant_id_env", &self.tenant_id_env, "AZURE_TENANT_ID")?,
                    &env("client_id_env", &self.client_id_env, "AZURE_CLIENT_ID")?,
                    Secret::new(env(
                        "client_secret_env",
                        &self.client_secret_env,
                        "AZURE_CLIENT_SECRET",
                    )?),
                ),
                "authority",
            )?),
            "managed_identity" => Some(built(
                Entra::managed_identity(
                    self.identity_endpoint.as_deref().unwrap_or(IMDS_ENDPOINT),
                    self.user_assigned(&env)?.as_deref(),
                ),
                "identity_endpoint",
            )?),
            "app_service" => {
                let endpoint = match &self.identity_endpoint {
                    Some(e) => e.clone(),
                    None => env("identity_endpoint", &None, "IDENTITY_ENDPOINT")?,
                };
                let header = env(
                    "identity_header_env",
                    &self.identity_header_env,
                    "IDENTITY_HEADER",
                )?;
                Some(built(
                    Entra::app_service(
                        &endpoint,
                        Secret::new(header),
                        self.user_assigned(&env)?.as_deref(),
                    ),
                    "identity_endpoint",
                )?)
            }
            "workload_identity" => {
                let host = std::env::var("AZURE_AUTHORITY_HOST").ok();
                let authority = match (&self.authority, &host) {
                    (None, Some(h)) if !h.is_empty() => h.as_str(),
                    _ => authority,
                };
                Some(built(
                    Entra::workload_identity(
                        authority,
                        &env("tenant_id_env", &self.tenant_id_env, "AZURE_TENANT_ID")?,
                        &env("client_id_env", &self.client_id_env, "AZURE_CLIENT_ID")?,
                        env(
                            "federated_token_file_env",
                            &self.federated_token_file_env,
                            "AZURE_FEDERATED_TOKEN_FILE",
                        )?,
                    ),
                    "authority",
                )?)
            }
            other => {
                return bad(
                    "auth",
                    format!(
                        "`{other}` is not an Azure authentication; use \"api_key\", \"client_credentials\", \"managed_identity\", \"app_service\" or \"workload_identity\""
                    ),
                );
            }
        };
        if self.identity_header_env.is_some() && auth != "app_service" {
            return bad(
                "identity_header_env",
                "is only for `auth = \"app_service\"`".into(),
            );
        }
        if let Some(mut entra) = entra {
            if let Some(scope) = &self.scope {
                entra = entra.scope(scope);
            }
            let defaults = RefreshPolicy::default();
            let policy = RefreshPolicy {
                refresh_ahead: self
                    .refresh_ahead_s
                    .map_or(defaults.refresh_ahead, Duration::from_secs),
                retry_after_failure: self
                    .retry_after_failure_ms
                    .map_or(defaults.retry_after_failure, Duration::from_millis),
            };
            azure = azure.entra(entra, policy);
        }
        Ok(azure)
    }

    /// A managed identity's user-assigned client id, when `client_id_env`
    /// names its variable (none: the system-assigned identity).
    fn user_assigned<E>(&self, env: &E) -> Result<Option<String>, (String, String)>
    where
        E: Fn(&str, &Option<String>, &str) -> Result<String, (String, String)>,
    {
        match &self.client_id_env {
            Some(_) => env("client_id_env", &self.client_id_env, "").map(Some),
            None => Ok(None),
        }
    }
}
