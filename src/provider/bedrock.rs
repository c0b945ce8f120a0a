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
//!   and `AWS_SESSION_TOKEN` when set; the names are configurable), with
//!   temporary credentials from a refreshing [`AwsSource`] (the ECS / EKS Pod
//!   Identity container credentials endpoint, or web identity: an OIDC token
//!   exchanged at STS), or a Bedrock API key sent as
//!   `Authorization: Bearer` (`AWS_BEARER_TOKEN_BEDROCK`).
//! - Refreshing credentials live in one [`CredentialCache`] per deployment:
//!   fetched once, refreshed ahead of their `Expiration` by one task, each
//!   request signed with the current ones. A fetch that fails is 502
//!   `upstream_auth_failed` for the request (the router cools the deployment
//!   down), never a 401; a 403 from Bedrock drops the credentials the refused
//!   request was signed with, so the next request fetches new ones.
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
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use serde_json::Value;

use super::{BuildError, HttpClient};
use crate::body::Chunks;
use crate::credentials::{
    Credential, CredentialCache, CredentialError, Fetched, RefreshPolicy, Secret, exchange,
    upstream_auth_failed,
};
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
/// The container credentials endpoint's full URL (EKS Pod Identity, ECS).
pub const ENV_CONTAINER_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
/// The container credentials endpoint's path on [`ECS_HOST`] (ECS tasks).
pub const ENV_CONTAINER_RELATIVE_URI: &str = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
/// The default name of the variable holding the endpoint's authorization token.
pub const ENV_CONTAINER_TOKEN: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN";
/// The default name of the variable holding the path of a file with that
/// token (re-read at every fetch: EKS rotates it); it wins over the token.
pub const ENV_CONTAINER_TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
/// ECS's credentials endpoint, which a relative URI is a path on.
pub const ECS_HOST: &str = "http://169.254.170.2";
/// How long one credentials fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Bedrock's runtime endpoint in `region`: `https://bedrock-runtime.{region}.amazonaws.com`.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// How a Bedrock provider authenticates. Its `Debug` shows no secret.
#[derive(Clone)]
pub enum BedrockAuth {
    /// SigV4 with these AWS credentials.
    Aws(Credentials),
    /// SigV4 with temporary credentials from `source`, cached and refreshed
    /// ahead of their expiry by `policy` (see [`AwsSource`]).
    Refreshing(AwsSource, RefreshPolicy),
    /// A Bedrock API key, sent as `Authorization: Bearer`.
    ApiKey(String),
}

impl fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `Credentials`' own Debug shows the key id, never the secret or token.
            BedrockAuth::Aws(c) => f.debug_tuple("Aws").field(&c.access_key_id()).finish(),
            BedrockAuth::Refreshing(source, policy) => f
                .debug_tuple("Refreshing")
                .field(source)
                .field(policy)
                .finish(),
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
        Self::aws_from(access_key_id, secret_access_key, session_token, &read_env)
    }

    /// [`aws_from_env`](Self::aws_from_env), the environment read through `get`.
    pub(crate) fn aws_from(
        access_key_id: &str,
        secret_access_key: &str,
        session_token: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, BuildError> {
        let id = required(get, access_key_id, "the AWS access key id")?;
        let secret = required(get, secret_access_key, "the AWS secret access key")?;
        Ok(Self::aws(&id, &secret, get(session_token).as_deref()))
    }

    /// A Bedrock API key read from the environment variable named.
    pub fn api_key_from_env(var: &str) -> Result<Self, BuildError> {
        Ok(BedrockAuth::ApiKey(required(
            &read_env,
            var,
            "the Bedrock API key",
        )?))
    }

    /// SigV4 with temporary credentials from `source`, refreshed by `policy`.
    pub fn refreshing(source: AwsSource, policy: RefreshPolicy) -> Self {
        BedrockAuth::Refreshing(source, policy)
    }

    /// The secret strings, for redaction wherever text leaves (a refreshing
    /// source's are those of the credential a request was signed with).
    pub(crate) fn secrets(&self) -> [&str; 2] {
        match self {
            BedrockAuth::Aws(c) => secrets_of(c),
            BedrockAuth::Refreshing(..) => ["", ""],
            BedrockAuth::ApiKey(k) => [k.as_str(), ""],
        }
    }
}

fn secrets_of(c: &Credentials) -> [&str; 2] {
    [c.secret_access_key(), c.session_token().unwrap_or("")]
}

/// Temporary AWS credentials from a refreshing source, with the identity
/// `aws-sigv4` signs with (made once per fetch). `Debug` shows the key id
/// only.
#[derive(Clone)]
pub struct AwsCredentials {
    credentials: Credentials,
    identity: Identity,
}

impl AwsCredentials {
    /// Wraps `credentials` for signing.
    pub fn new(credentials: Credentials) -> Self {
        AwsCredentials {
            identity: Identity::from(credentials.clone()),
            credentials,
        }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub(crate) fn secrets(&self) -> [&str; 2] {
        secrets_of(&self.credentials)
    }
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AwsCredentials")
            .field(&self.credentials.access_key_id())
            .finish()
    }
}

/// Where temporary AWS credentials come from: the container credentials
/// endpoint of ECS tasks and EKS Pod Identity (`GET` the URL, with the
/// authorization token when one is given; the answer is
/// `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`), or web
/// identity (EKS IRSA: STS `AssumeRoleWithWebIdentity` with the token
/// file's OIDC token; the XML answer's `Credentials`).
///
/// Over `http://` only a loopback address (and, for the container endpoint,
/// the ECS / EKS link-local endpoints) is accepted, as AWS's SDKs do:
/// credentials never travel in clear text to anywhere else.
///
/// ```
/// use tollgate::credentials::{RefreshPolicy, Secret};
/// use tollgate::provider::bedrock::AwsSource;
/// use tollgate::provider::BedrockAuth;
///
/// # fn main() -> Result<(), tollgate::provider::BuildError> {
/// let source = AwsSource::container(
///     "http://169.254.170.23/v1/credentials",
///     Some(Secret::new("the-pod-identity-token")),
///     None,
/// )?;
/// let auth = BedrockAuth::refreshing(source, RefreshPolicy::default());
/// assert!(!format!("{auth:?}").contains("pod-identity-token"));
/// assert!(AwsSource::container("http://example.com/creds", None, None).is_err());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AwsSource {
    kind: SourceKind,
    timeout: Duration,
}

#[derive(Clone)]
enum SourceKind {
    Container {
        uri: Uri,
        token: Option<Secret>,
        token_file: Option<PathBuf>,
    },
    WebIdentity {
        sts: Uri,
        role_arn: String,
        session_name: String,
        token_file: PathBuf,
    },
}

impl fmt::Debug for AwsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("AwsSource");
        match &self.kind {
            SourceKind::Container {
                uri,
                token,
                token_file,
            } => d
                .field("kind", &"container")
                .field("uri", uri)
                .field("token", &token.as_ref().map(|_| "[redacted]"))
                .field("token_file", token_file),
            SourceKind::WebIdentity {
                sts,
                role_arn,
                session_name,
                token_file,
            } => d
                .field("kind", &"web_identity")
                .field("sts", sts)
                .field("role_arn", role_arn)
                .field("session_name", session_name)
                .field("token_file", token_file),
        };
        d.finish()
    }
}

/// `uri` if it is `https://`, or `http://` on a loopback address (or, with
/// `link_local`, the ECS / EKS credentials endpoints).
fn checked_url(uri: &str, link_local: bool) -> Result<Uri, BuildError> {
    let parsed: Uri = uri
        .parse()
        .map_err(|e| BuildError(format!("`{uri}` is not a URL: {e}")))?;
    let host = parsed.host().unwrap_or("");
    let allowed = match parsed.scheme_str() {
        Some("https") => !host.is_empty(),
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || (link_local && matches!(ip, "169.254.170.2" | "169.254.170.23" | "fd00:ec2::23"))
                || ip
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback())
        }
        _ => false,
    };
    if allowed {
        Ok(parsed)
    } else if link_local {
        Err(BuildError(format!(
            "`{uri}` must be https://, or http:// on a loopback address or the ECS/EKS credentials endpoint"
        )))
    } else {
        Err(BuildError(format!(
            "`{uri}` must be https://, or http:// on a loopback address"
        )))
    }
}

/// AWS STS's regional endpoint: `https://sts.{region}.amazonaws.com`.
pub fn sts_endpoint(region: &str) -> String {
    format!("https://sts.{region}.amazonaws.com")
}

impl AwsSource {
    /// The container credentials endpoint at `uri`, sending `token` (or the
    /// content of `token_file`, re-read at every fetch, which wins) as
    /// `Authorization`.
    pub fn container(
        uri: &str,
        token: Option<Secret>,
        token_file: Option<PathBuf>,
    ) -> Result<Self, BuildError> {
        let uri = checked_url(uri, true)?;
        if let Some(t) = &token
            && HeaderValue::from_str(t.expose()).is_err()
        {
            return Err(BuildError(
                "the container authorization token is not a valid header value".into(),
            ));
        }
        Ok(AwsSource {
            kind: SourceKind::Container {
                uri,
                token,
                token_file,
            },
            timeout: FETCH_TIMEOUT,
        })
    }

    /// Web identity (EKS IRSA): the OIDC token in `token_file` (re-read at
    /// every fetch: the kubelet rotates it) exchanged at STS
    /// (`sts_endpoint`, e.g. [`sts_endpoint`](fn@sts_endpoint)`(region)`) by
    /// `AssumeRoleWithWebIdentity` for `role_arn`'s temporary credentials.
    pub fn web_identity(
        sts_endpoint: &str,
        role_arn: &str,
        session_name: &str,
        token_file: impl Into<PathBuf>,
    ) -> Result<Self, BuildError> {
        let sts = checked_url(sts_endpoint, false)?;
        if role_arn.is_empty() || session_name.is_empty() {
            return Err(BuildError(
                "web identity needs a role ARN and a session name".into(),
            ));
        }
        Ok(AwsSource {
            kind: SourceKind::WebIdentity {
                sts,
                role_arn: role_arn.to_owned(),
                session_name: session_name.to_owned(),
                token_file: token_file.into(),
            },
            timeout: FETCH_TIMEOUT,
        })
    }

    /// The container credentials endpoint named by the standard variables
    /// ([`ENV_CONTAINER_FULL_URI`], else [`ECS_HOST`] with
    /// [`ENV_CONTAINER_RELATIVE_URI`]; the token from
    /// [`ENV_CONTAINER_TOKEN_FILE`] or [`ENV_CONTAINER_TOKEN`]), or `None`
    /// when neither URI variable is set.
    pub fn container_from_env() -> Result<Option<Self>, BuildError> {
        Self::container_from(
            None,
            ENV_CONTAINER_TOKEN,
            ENV_CONTAINER_TOKEN_FILE,
            &read_env,
        )
    }

    /// [`container_from_env`](Self::container_from_env) with the URL given
    /// (`uri`, else the variables), the token's variables named, and the
    /// environment read through `get`.
    pub(crate) fn container_from(
        uri: Option<&str>,
        token_var: &str,
        token_file_var: &str,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, BuildError> {
        let uri = match uri {
            Some(u) => u.to_owned(),
            None => match (get(ENV_CONTAINER_FULL_URI), get(ENV_CONTAINER_RELATIVE_URI)) {
                (Some(full), _) => full,
                (None, Some(rel)) => format!("{ECS_HOST}{rel}"),
                (None, None) => return Ok(None),
            },
        };
        let token = get(token_var).map(Secret::new);
        let token_file = get(token_file_var).map(PathBuf::from);
        Self::container(&uri, token, token_file).map(Some)
    }

    /// Web identity as EKS IRSA sets it up: [`ENV_ROLE_ARN`] and
    /// [`ENV_WEB_IDENTITY_TOKEN_FILE`] (the session name from
    /// [`ENV_ROLE_SESSION_NAME`], else `tollgate`), at `region`'s STS; `None`
    /// when either variable is unset.
    pub fn web_identity_from_env(region: &str) -> Result<Option<Self>, BuildError> {
        Self::web_identity_from(
            &sts_endpoint(region),
            ENV_ROLE_ARN,
            ENV_WEB_IDENTITY_TOKEN_FILE,
            None,
            &read_env,
        )
    }

    /// Web identity from the variables named (`role_arn_var`,
    /// `token_file_var`; the session name `session_name`, else
    /// `$AWS_ROLE_SESSION_NAME`, else `tollgate`), the environment read
    /// through `get`; `None` when either variable is unset.
    pub(crate) fn web_identity_from(
        sts: &str,
        role_arn_var: &str,
        token_file_var: &str,
        session_name: Option<&str>,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, BuildError> {
        let (Some(role), Some(file)) = (get(role_arn_var), get(token_file_var)) else {
            return Ok(None);
        };
        let session = session_name
            .map(str::to_owned)
            .or_else(|| get(ENV_ROLE_SESSION_NAME))
            .unwrap_or_else(|| "tollgate".to_owned());
        Self::web_identity(sts, &role, &session, file).map(Some)
    }

    /// How long one fetch may take (default [`FETCH_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A credentials cache named after `provider` over this source.
    pub fn cache(
        self,
        provider: &str,
        client: HttpClient,
        policy: RefreshPolicy,
    ) -> CredentialCache<AwsCredentials> {
        let source = std::sync::Arc::new(self);
        CredentialCache::new(&format!("{provider}/aws"), policy, move || {
            let source = source.clone();
            let client = client.clone();
            async move { source.fetch(&client).await }
        })
    }

    /// One set of credentials from the source.
    pub async fn fetch(
        &self,
        client: &HttpClient,
    ) -> Result<Fetched<AwsCredentials>, CredentialError> {
        match &self.kind {
            SourceKind::Container {
                uri,
                token,
                token_file,
            } => {
                let token = match (token_file, token) {
                    (Some(file), _) => Some(read_token_file(
                        file,
                        "the container authorization token file",
                    )?),
                    (None, Some(t)) => Some(t.expose().to_owned()),
                    (None, None) => None,
                };
                self.container_fetch(client, uri, token.as_deref()).await
            }
            SourceKind::WebIdentity {
                sts,
                role_arn,
                session_name,
                token_file,
            } => {
                let token = read_token_file(token_file, "the web identity token file")?;
                self.sts_fetch(client, sts, role_arn, session_name, &token)
                    .await
            }
        }
    }

    async fn container_fetch(
        &self,
        client: &HttpClient,
        uri: &Uri,
        token: Option<&str>,
    ) -> Result<Fetched<AwsCredentials>, CredentialError> {
        const WHAT: &str = "the container credentials endpoint";
        let mut req = Request::get(uri.clone()).header(http::header::ACCEPT, "application/json");
        if let Some(t) = token {
            let mut v = HeaderValue::from_str(t).map_err(|_| {
                CredentialError::new(
                    "the container authorization token is not a valid header value",
                )
            })?;
            v.set_sensitive(true);
            req = req.header(AUTHORIZATION, v);
        }
        let req = req
            .body(Chunks::default())
            .map_err(|_| CredentialError::new("the credentials request could not be built"))?;
        let list = [token.unwrap_or("")];
        let (status, body) = exchange(client, req, self.timeout, WHAT, &list).await?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let field = |k: &str| json[k].as_str().filter(|v| !v.is_empty());
        if !status.is_success() {
            // The endpoint's `code` and `message` (ECS and EKS spell them
            // either way); never the request.
            let code = field("code").or(field("Code"));
            let message = field("message").or(field("Message"));
            return Err(refused(WHAT, status, code, message, &list));
        }
        issued(
            WHAT,
            field("AccessKeyId"),
            field("SecretAccessKey"),
            field("Token"),
            field("Expiration"),
        )
    }

    async fn sts_fetch(
        &self,
        client: &HttpClient,
        sts: &Uri,
        role_arn: &str,
        session_name: &str,
        token: &str,
    ) -> Result<Fetched<AwsCredentials>, CredentialError> {
        const WHAT: &str = "STS (AssumeRoleWithWebIdentity)";
        // Made in one go: the serializer is not `Send`, the fetch must be.
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", role_arn)
            .append_pair("RoleSessionName", session_name)
            .append_pair("WebIdentityToken", token)
            .finish();
        let req = Request::post(sts.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Chunks::new(vec![Bytes::from(form)]))
            .map_err(|_| CredentialError::new("the STS request could not be built"))?;
        let list = [token];
        let (status, body) = exchange(client, req, self.timeout, WHAT, &list).await?;
        let xml = String::from_utf8_lossy(&body);
        let text = |tag: &str| xml_text(&xml, tag).filter(|v| !v.is_empty());
        if !status.is_success() {
            // `<ErrorResponse><Error><Code>…</Code><Message>…</Message>`.
            let (code, message) = (text("Code"), text("Message"));
            return Err(refused(
                WHAT,
                status,
                code.as_deref(),
                message.as_deref(),
                &list,
            ));
        }
        issued(
            WHAT,
            text("AccessKeyId").as_deref(),
            text("SecretAccessKey").as_deref(),
            text("SessionToken").as_deref(),
            text("Expiration").as_deref(),
        )
    }
}

/// The environment variable AWS's SDKs read the web identity session name from.
pub const ENV_ROLE_SESSION_NAME: &str = "AWS_ROLE_SESSION_NAME";
/// The default name of the variable holding the role to assume (web identity).
pub const ENV_ROLE_ARN: &str = "AWS_ROLE_ARN";
/// The default name of the variable holding the web identity token file's path.
pub const ENV_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";

/// A token file's content, trimmed (the error names the file, never its content).
fn read_token_file(file: &std::path::Path, what: &str) -> Result<String, CredentialError> {
    std::fs::read_to_string(file)
        .map(|t| t.trim().to_owned())
        .map_err(|e| {
            CredentialError::new(format!(
                "{what} `{}` could not be read: {e}",
                file.display()
            ))
        })
}

/// A credentials endpoint's refusal: its status, error code and the first
/// line of its message (at most 200 characters), `secrets` redacted.
fn refused(
    what: &str,
    status: http::StatusCode,
    code: Option<&str>,
    message: Option<&str>,
    secrets: &[&str],
) -> CredentialError {
    let message: String = message
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect();
    let text = format!(
        "{what} answered HTTP {}: {}: {message}",
        status.as_u16(),
        code.unwrap_or("no error code")
    );
    let secrets = crate::sanitize::Secrets::new(secrets);
    CredentialError::new(crate::sanitize::redact(&text, &secrets).into_owned())
}

/// The credentials an endpoint answered, with their lifetime until
/// `expiration` (RFC 3339).
fn issued(
    what: &str,
    id: Option<&str>,
    secret: Option<&str>,
    token: Option<&str>,
    expiration: Option<&str>,
) -> Result<Fetched<AwsCredentials>, CredentialError> {
    let (Some(id), Some(secret)) = (id, secret) else {
        return Err(CredentialError::new(format!(
            "{what} answered without AccessKeyId and SecretAccessKey"
        )));
    };
    let expiration = expiration
        .and_then(|e| {
            aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::DateTime)
                .ok()
        })
        .and_then(|d| SystemTime::try_from(d).ok());
    let Some(expiration) = expiration else {
        return Err(CredentialError::new(format!(
            "{what} answered without an RFC 3339 Expiration"
        )));
    };
    let Ok(lifetime) = expiration.duration_since(SystemTime::now()) else {
        return Err(CredentialError::new(format!(
            "{what} answered credentials that have already expired"
        )));
    };
    let credentials = Credentials::new(
        id,
        secret,
        token.map(str::to_owned),
        Some(expiration),
        "tollgate",
    );
    Ok(Fetched::expiring(
        AwsCredentials::new(credentials),
        lifetime,
    ))
}

/// The text of the first `<tag>…</tag>` element of an XML document, its
/// five predefined entities unescaped. STS answers in XML; the few values
/// read here (keys, a token, a date, an error code and message) are plain
/// text elements, so this is all the XML reading it needs — not a parser
/// for anything else.
fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc[start..].find(&format!("</{tag}>"))?;
    Some(
        doc[start..end]
            .trim()
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// A variable of the process's environment, unless unset or empty.
pub(crate) fn read_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

fn required(
    get: &dyn Fn(&str) -> Option<String>,
    var: &str,
    what: &str,
) -> Result<String, BuildError> {
    get(var).ok_or_else(|| BuildError(format!("environment variable `{var}` ({what}) is not set")))
}

/// A Bedrock deployment's region and credentials: authenticates each
/// request (the provider uses one; public for benchmarks and for callers
/// that send their own requests to Bedrock).
pub struct Signer {
    region: String,
    auth: BedrockAuth,
    /// The identity `aws-sigv4` signs with, made once.
    identity: Option<Identity>,
    /// A refreshing source's credentials (made by [`Signer::start`]).
    credentials: Option<CredentialCache<AwsCredentials>>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("region", &self.region)
            .field("auth", &self.auth)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl Signer {
    /// Signs for `region` with `auth`.
    pub fn new(region: &str, auth: BedrockAuth) -> Self {
        let identity = match &auth {
            BedrockAuth::Aws(c) => Some(Identity::from(c.clone())),
            BedrockAuth::Refreshing(..) | BedrockAuth::ApiKey(_) => None,
        };
        Signer {
            region: region.to_owned(),
            auth,
            identity,
            credentials: None,
        }
    }

    /// Builds a refreshing source's credentials cache over `client`
    /// (called once, by the provider's builder; `provider` names the cache).
    pub fn start(&mut self, provider: &str, client: &HttpClient) {
        if let BedrockAuth::Refreshing(source, policy) = &self.auth {
            self.credentials = Some(source.clone().cache(provider, client.clone(), *policy));
        }
    }

    /// A refreshing source's credentials cache, once [started](Self::start):
    /// sign with [`sign`](Self::sign) and what it gives.
    pub fn credentials(&self) -> Option<&CredentialCache<AwsCredentials>> {
        self.credentials.as_ref()
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
            (BedrockAuth::Refreshing(..), None) => {
                return Err(internal(
                    "refreshing credentials are signed with `sign`, a credential from `credentials()`",
                ));
            }
            (_, None) => return Err(internal("no identity")),
        };
        self.sign(req, body, now, identity)
    }

    /// Signs `req`, whose body is exactly `body`, with SigV4 as `identity`
    /// (see [`authenticate`](Self::authenticate)).
    pub fn sign<B>(
        &self,
        req: &mut Request<B>,
        body: &[u8],
        now: SystemTime,
        identity: &Identity,
    ) -> Result<(), Error> {
        let internal = |what: &str| {
            Error::new(
                Reason::Internal,
                format!("The Bedrock request could not be signed: {what}."),
            )
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

/// Signs `req` with the current credentials of a refreshing source (fetched
/// if none is valid). A fetch that fails is 502 `upstream_auth_failed` for
/// this deployment. The credential is returned: a 403 from Bedrock drops it
/// ([`CredentialCache::invalidate`]).
pub(super) async fn sign_current<B>(
    signer: &Signer,
    cache: &CredentialCache<AwsCredentials>,
    provider: &str,
    req: &mut Request<B>,
    body: &[u8],
) -> Result<Credential<AwsCredentials>, Error> {
    let current = cache
        .get()
        .await
        .map_err(|e| upstream_auth_failed(provider, "its AWS credentials", &e))?;
    signer.sign(req, body, SystemTime::now(), &current.value().identity)?;
    Ok(current)
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
    fn a_container_endpoint_never_carries_credentials_in_clear_text_elsewhere() {
        for ok in [
            "http://127.0.0.1:8080/creds",
            "http://localhost/creds",
            "http://[::1]:9/creds",
            "http://169.254.170.2/v2/credentials/x",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "https://creds.example.com/x",
        ] {
            assert!(AwsSource::container(ok, None, None).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/creds",
            "http://example.com/creds",
            "ftp://127.0.0.1/x",
            "not a url",
        ] {
            assert!(AwsSource::container(bad, None, None).is_err(), "{bad}");
        }
        assert!(
            AwsSource::container("http://127.0.0.1/x", Some(Secret::new("bad\ntoken")), None)
                .is_err()
        );
        let get =
            |k: &str| (k == ENV_CONTAINER_RELATIVE_URI).then(|| "/v2/credentials/id".to_owned());
        let s = AwsSource::container_from(None, "T", "F", &get)
            .unwrap()
            .unwrap();
        assert!(format!("{s:?}").contains("http://169.254.170.2/v2/credentials/id"));
        assert!(
            AwsSource::container_from(None, "T", "F", &|_| None)
                .unwrap()
                .is_none()
        );
    }

    /// The fetcher reads the endpoint's answer: the credentials and their
    /// lifetime, or an error naming what is wrong and no secret.
    #[tokio::test]
    async fn the_container_answer_is_read_or_refused_by_name() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let in_an_hour =
            aws_smithy_types::DateTime::from(SystemTime::now() + Duration::from_secs(3600))
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .unwrap();
        let answers = [
            ("200 OK", format!(r#"{{"AccessKeyId":"ASIAX","SecretAccessKey":"s3cr3tK3y","Token":"s3ss10n","Expiration":"{in_an_hour}"}}"#)),
            ("500 Internal Server Error", r#"{"code":"InternalError","message":"boom for s3cr3tT0k3n"}"#.to_owned()),
            ("200 OK", r#"{"AccessKeyId":"ASIAX","SecretAccessKey":"s3cr3tK3y","Expiration":"2001-01-01T00:00:00Z"}"#.to_owned()),
            ("200 OK", r#"{"AccessKeyId":"ASIAX","SecretAccessKey":"s3cr3tK3y","Expiration":"tomorrow"}"#.to_owned()),
        ];
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = tcp.read(&mut buf).await.unwrap();
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                tcp.write_all(head.as_bytes()).await.unwrap();
                tcp.write_all(body.as_bytes()).await.unwrap();
            }
        });
        let source = AwsSource::container(
            &format!("http://{addr}/creds"),
            Some(Secret::new("s3cr3tT0k3n")),
            None,
        )
        .unwrap();
        let client = HttpClient::builder().build().unwrap();
        let ok = source.fetch(&client).await.unwrap();
        assert_eq!(ok.value.credentials().access_key_id(), "ASIAX");
        assert_eq!(ok.value.credentials().session_token(), Some("s3ss10n"));
        let life = ok.lifetime.unwrap();
        assert!(life > Duration::from_secs(3500) && life <= Duration::from_secs(3600));
        assert!(seen.lock().unwrap()[0].contains("authorization: s3cr3tT0k3n"));
        let e = source.fetch(&client).await.unwrap_err();
        assert!(e.message().contains("HTTP 500: InternalError"), "{e}");
        assert!(!e.message().contains("s3cr3tT0k3n"), "{e}");
        let e = source.fetch(&client).await.unwrap_err();
        assert!(e.message().contains("already expired"), "{e}");
        let e = source.fetch(&client).await.unwrap_err();
        assert!(e.message().contains("Expiration"), "{e}");
        let shown = format!("{ok:?} {:?} {source:?}", ok.value);
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("s3ss10n"),
            "{shown}"
        );
    }

    #[test]
    fn xml_text_reads_one_element_and_unescapes() {
        let doc = "<R><Credentials><AccessKeyId> ASIA1 </AccessKeyId><Message>Couldn&apos;t &amp; &lt;x&gt;</Message></Credentials></R>";
        assert_eq!(xml_text(doc, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_text(doc, "Message").as_deref(), Some("Couldn't & <x>"));
        assert_eq!(xml_text(doc, "SessionToken"), None);
        assert_eq!(xml_text("<A>unclosed", "A"), None);
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
