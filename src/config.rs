//! The reference gateway's configuration (TOML), checked whole at start.
//!
//! A bad file is refused before anything listens, with a message naming the
//! file, the field and the problem: a TOML syntax error, an unknown field, a
//! wrong type, a group with no deployments, a base URL that is not one, an
//! API-key variable that is not set. See the README's config reference.
//!
//! ```
//! let config = tollgate::config::Config::from_toml("demo.toml", r#"
//!     [[groups]]
//!     name = "gpt-4o-mini"
//!     [[groups.deployments]]
//!     provider = "mock"
//!     base_url = "http://127.0.0.1:9000/v1"
//!     model = "mock-small"
//! "#).unwrap();
//! let router = config.router().unwrap();
//! assert!(router.has_model("gpt-4o-mini"));
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::fair_queue::QueueSettings;
use crate::provider::{HttpClient, Provider, Timeouts};
use crate::rate_limit::Limits;
use crate::router::{Deployment, Router};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`
    #[serde(default)]
    pub server: Server,
    /// `[upstream]`
    #[serde(default)]
    pub upstream: Upstream,
    /// `[[groups]]`
    #[serde(default)]
    pub groups: Vec<Group>,
    /// `[rate_limits]`: absent, nothing is rate-limited.
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
    /// `[fair_queue]`: absent, requests are not queued (no capacity bound).
    #[serde(default)]
    pub fair_queue: Option<FairQueueConfig>,
    #[serde(skip)]
    path: PathBuf,
}

/// `[rate_limits]`: per-key requests and tokens per minute.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Requests per minute of every key without its own (0: unlimited).
    pub requests_per_minute: u32,
    /// Tokens per minute of every key without its own (0: unlimited).
    pub tokens_per_minute: u32,
    /// The output tokens charged for a request that sets no `max_tokens` (default 1024).
    pub default_max_output_tokens: u64,
    /// `[rate_limits.keys.<key id>]`: a key's own limits (by its public id).
    pub keys: BTreeMap<String, KeyLimits>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests_per_minute: 0,
            tokens_per_minute: 0,
            default_max_output_tokens: 1024,
            keys: BTreeMap::new(),
        }
    }
}

impl RateLimits {
    /// The limits of the key with public id `key_id`.
    pub fn limits_for(&self, key_id: &str) -> Limits {
        let own = self.keys.get(key_id);
        Limits::per_minute(
            own.and_then(|k| k.requests_per_minute)
                .unwrap_or(self.requests_per_minute),
            own.and_then(|k| k.tokens_per_minute)
                .unwrap_or(self.tokens_per_minute),
        )
    }
}

/// `[rate_limits.keys.<key id>]`: one key's limits; a field left out takes the default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimits {
    /// Requests per minute (0: unlimited).
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (0: unlimited).
    pub tokens_per_minute: Option<u32>,
}

/// What a fair-queue tenant is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantBy {
    /// Each key is a tenant.
    #[default]
    Key,
    /// Each team is a tenant (a key without a team is its own).
    Team,
}

/// `[fair_queue]`: bounded capacity per model group, weighted fair queuing per tenant.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FairQueueConfig {
    /// Requests in flight at once per model group (default 64).
    pub capacity: usize,
    /// `[fair_queue.group_capacity]`: a group's own capacity, by group name.
    pub group_capacity: BTreeMap<String, usize>,
    /// Requests of one tenant that may wait per group; more get 429 `queue_full` (default 1000).
    pub max_queue_per_tenant: usize,
    /// How long a request may wait for a slot; then 503 `queue_timeout` (default 30 000 ms).
    pub max_wait_ms: u64,
    /// `Retry-After` of `queue_full` and `queue_timeout` (default 1 s).
    pub retry_after_s: u64,
    /// `"key"` or `"team"` (default `"key"`).
    pub tenant: TenantBy,
    /// `[fair_queue.weights]`: a tenant's weight, by key id or team (default 1).
    pub weights: BTreeMap<String, u32>,
}

impl Default for FairQueueConfig {
    fn default() -> Self {
        FairQueueConfig {
            capacity: 64,
            group_capacity: BTreeMap::new(),
            max_queue_per_tenant: 1000,
            max_wait_ms: 30_000,
            retry_after_s: 1,
            tenant: TenantBy::Key,
            weights: BTreeMap::new(),
        }
    }
}

impl FairQueueConfig {
    /// The fair queue's settings.
    pub fn settings(&self) -> QueueSettings {
        let mut s = QueueSettings::new(self.capacity)
            .max_queue_per_tenant(self.max_queue_per_tenant)
            .max_wait(Duration::from_millis(self.max_wait_ms))
            .retry_after(Duration::from_secs(self.retry_after_s));
        for (group, n) in &self.group_capacity {
            s = s.group_capacity(group, *n);
        }
        s
    }

    /// The weight of tenant `id`.
    pub fn weight_for(&self, id: &str) -> u32 {
        self.weights.get(id).copied().unwrap_or(1)
    }
}

/// `[server]`: where and how the gateway listens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address to listen on (default `127.0.0.1:4000`).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes (default 4 MiB).
    pub max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGINT/SIGTERM (default 30 000 ms).
    pub shutdown_grace_ms: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            max_body_bytes: 4 << 20,
            shutdown_grace_ms: 30_000,
        }
    }
}

/// `[upstream]`: the shared HTTP client and the upstream timeouts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// TCP connect timeout (default 5 000 ms).
    pub connect_timeout_ms: u64,
    /// Until the upstream's response headers (default 60 000 ms).
    pub first_byte_timeout_ms: u64,
    /// Between two chunks of the upstream's body (default 30 000 ms).
    pub idle_timeout_ms: u64,
    /// The whole upstream exchange (default 600 000 ms).
    pub total_timeout_ms: u64,
    /// Largest non-streaming upstream answer, in bytes (default 64 MiB).
    pub max_response_bytes: usize,
    /// A PEM file of extra CA certificates to trust (private CAs, self-signed upstreams).
    pub ca_file: Option<PathBuf>,
}

impl Default for Upstream {
    fn default() -> Self {
        let t = Timeouts::default();
        Upstream {
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: t.first_byte.as_millis() as u64,
            idle_timeout_ms: t.idle.as_millis() as u64,
            total_timeout_ms: t.total.as_millis() as u64,
            max_response_bytes: 64 << 20,
            ca_file: None,
        }
    }
}

/// `[[groups]]`: a model group, the name clients ask for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The model name clients send.
    pub name: String,
    /// `[[groups.deployments]]`
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
}

/// `[[groups.deployments]]`: one upstream serving a group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The provider's name, as errors and logs show it (e.g. `openai`).
    pub provider: String,
    /// A name for this deployment (default `provider/model`).
    pub name: Option<String>,
    /// The OpenAI-compatible base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The environment variable holding the upstream API key (none: no key sent).
    pub api_key_env: Option<String>,
    /// The upstream model name (default: the group's name, unchanged).
    pub model: Option<String>,
    /// Relative share of the group's traffic (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Extra headers sent upstream with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// A configuration problem: the file, the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: PathBuf,
    field: String,
    problem: String,
}

impl ConfigError {
    fn new(path: &Path, field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_owned(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The field at fault (`groups[1].deployments[0].base_url`), empty for syntax errors.
    pub fn field(&self) -> &str {
        &self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.path.display(), self.problem)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.path.display(),
                self.field,
                self.problem
            )
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and checks a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "", format!("cannot be read: {e}")))?;
        Self::from_toml(path, &text)
    }

    /// Parses and checks TOML text; `path` names it in errors.
    pub fn from_toml(path: impl AsRef<Path>, text: &str) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigError::new(path, "", format!("{msg}{at}"))
        })?;
        config.path = path.to_owned();
        config.check()?;
        Ok(config)
    }

    /// The file this configuration came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.path, field, problem)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let u = &self.upstream;
        for (field, v) in [
            ("upstream.connect_timeout_ms", u.connect_timeout_ms),
            ("upstream.first_byte_timeout_ms", u.first_byte_timeout_ms),
            ("upstream.idle_timeout_ms", u.idle_timeout_ms),
            ("upstream.total_timeout_ms", u.total_timeout_ms),
        ] {
            if v == 0 {
                return Err(self.err(field, "must be greater than 0"));
            }
        }
        if self.server.max_body_bytes == 0 {
            return Err(self.err("server.max_body_bytes", "must be greater than 0"));
        }
        if self.groups.is_empty() {
            return Err(self.err(
                "groups",
                "no model group is configured; add at least one [[groups]]",
            ));
        }
        let mut names = HashSet::new();
        for (gi, g) in self.groups.iter().enumerate() {
            if g.name.trim().is_empty() {
                return Err(self.err(format!("groups[{gi}].name"), "must not be empty"));
            }
            if !names.insert(&g.name) {
                return Err(self.err(
                    format!("groups[{gi}].name"),
                    format!("model group `{}` is defined twice", g.name),
                ));
            }
            if g.deployments.is_empty() {
                return Err(self.err(
                    format!("groups[{gi}].deployments"),
                    format!("model group `{}` has no deployments", g.name),
                ));
            }
            for (di, d) in g.deployments.iter().enumerate() {
                let at = |f: &str| format!("groups[{gi}].deployments[{di}].{f}");
                if d.weight == 0 {
                    return Err(self.err(at("weight"), "must be at least 1"));
                }
                Provider::builder(&d.provider, &d.base_url)
                    .map_err(|e| self.err(at("base_url"), e.to_string()))?;
                if let Some(var) = &d.api_key_env {
                    if std::env::var(var).map_or(true, |v| v.is_empty()) {
                        return Err(self.err(
                            at("api_key_env"),
                            format!("environment variable `{var}` is not set"),
                        ));
                    }
                }
                for (k, v) in &d.headers {
                    let probe =
                        Provider::builder(&d.provider, &d.base_url).and_then(|b| b.header(k, v));
                    if let Err(e) = probe {
                        return Err(self.err(at("headers"), e.to_string()));
                    }
                }
            }
        }
        self.check_rate_limits()?;
        self.check_fair_queue()?;
        if let Some(ca) = &u.ca_file {
            if !ca.exists() {
                return Err(self.err(
                    "upstream.ca_file",
                    format!("`{}` does not exist", ca.display()),
                ));
            }
        }
        Ok(())
    }

    fn check_rate_limits(&self) -> Result<(), ConfigError> {
        let Some(r) = &self.rate_limits else {
            return Ok(());
        };
        if r.default_max_output_tokens == 0 {
            return Err(self.err(
                "rate_limits.default_max_output_tokens",
                "must be at least 1",
            ));
        }
        for id in r.keys.keys() {
            if id.trim().is_empty() {
                return Err(self.err("rate_limits.keys", "a key id must not be empty"));
            }
        }
        Ok(())
    }

    fn check_fair_queue(&self) -> Result<(), ConfigError> {
        let Some(q) = &self.fair_queue else {
            return Ok(());
        };
        if q.capacity == 0 {
            return Err(self.err("fair_queue.capacity", "must be at least 1"));
        }
        if q.max_queue_per_tenant == 0 {
            return Err(self.err("fair_queue.max_queue_per_tenant", "must be at least 1"));
        }
        if q.max_wait_ms == 0 {
            return Err(self.err("fair_queue.max_wait_ms", "must be greater than 0"));
        }
        for (group, n) in &q.group_capacity {
            let field = format!("fair_queue.group_capacity.{group}");
            if !self.groups.iter().any(|g| &g.name == group) {
                return Err(self.err(field, format!("no model group `{group}` is configured")));
            }
            if *n == 0 {
                return Err(self.err(field, "must be at least 1"));
            }
        }
        for (tenant, w) in &q.weights {
            if !(1..=65_536).contains(w) {
                return Err(self.err(
                    format!("fair_queue.weights.{tenant}"),
                    "must be between 1 and 65536",
                ));
            }
        }
        Ok(())
    }

    /// The upstream timeouts.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            first_byte: Duration::from_millis(self.upstream.first_byte_timeout_ms),
            idle: Duration::from_millis(self.upstream.idle_timeout_ms),
            total: Duration::from_millis(self.upstream.total_timeout_ms),
        }
    }

    /// The shared upstream client.
    pub fn http_client(&self) -> Result<HttpClient, ConfigError> {
        let mut b = HttpClient::builder()
            .connect_timeout(Duration::from_millis(self.upstream.connect_timeout_ms));
        if let Some(ca) = &self.upstream.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| self.err("upstream.ca_file", format!("cannot be read: {e}")))?;
            b = b.add_root_certificates_pem(&pem);
        }
        b.build()
            .map_err(|e| self.err("upstream.ca_file", e.to_string()))
    }

    /// The router over every group's deployments, sharing one client.
    pub fn router(&self) -> Result<Router<Provider>, ConfigError> {
        let client = self.http_client()?;
        let timeouts = self.timeouts();
        let mut router = Router::builder();
        for (gi, g) in self.groups.iter().enumerate() {
            let mut deployments = Vec::with_capacity(g.deployments.len());
            for (di, d) in g.deployments.iter().enumerate() {
                let at = |f: &str| format!("groups[{gi}].deployments[{di}].{f}");
                let model = d.model.as_deref().unwrap_or(&g.name);
                let name = d
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", d.provider, model));
                let mut b = Provider::builder(&d.provider, &d.base_url)
                    .map_err(|e| self.err(at("base_url"), e.to_string()))?
                    .client(client.clone())
                    .timeouts(timeouts)
                    .max_response_bytes(self.upstream.max_response_bytes);
                if d.model.is_some() {
                    b = b.model(model);
                }
                if let Some(var) = &d.api_key_env {
                    b = b
                        .api_key_env(var)
                        .map_err(|e| self.err(at("api_key_env"), e.to_string()))?;
                }
                for (k, v) in &d.headers {
                    b = b
                        .header(k, v)
                        .map_err(|e| self.err(at("headers"), e.to_string()))?;
                }
                deployments.push(Deployment::new(&name, b.build(), d.weight));
            }
            router = router
                .group(&g.name, deployments)
                .map_err(|e| self.err(format!("groups[{gi}]"), e.to_string()))?;
        }
        Ok(router.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Config::from_toml("gw.toml", text).unwrap_err()
    }

    const OK: &str = r#"
        [[groups]]
        name = "g"
        [[groups.deployments]]
        provider = "mock"
        base_url = "http://127.0.0.1:9000/v1"
    "#;

    #[test]
    fn defaults() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:4000");
        assert_eq!(c.server.max_body_bytes, 4 << 20);
        assert_eq!(c.groups[0].deployments[0].weight, 1);
        assert!(c.router().unwrap().has_model("g"));
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let e = err("[server]\nlisten = 5\n");
        assert!(e.to_string().starts_with("gw.toml: "), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");

        let e = err(&format!("{OK}\n[server]\nlistne = \"x\"\n"));
        assert!(e.to_string().contains("unknown field `listne`"), "{e}");

        let e = err(&OK.replace("http://127.0.0.1:9000/v1", "127.0.0.1:9000"));
        assert_eq!(e.field(), "groups[0].deployments[0].base_url");
        assert!(e.to_string().contains("http://"), "{e}");

        let e = err(&format!(
            "{OK}\napi_key_env = \"TOLLGATE_TEST_SURELY_UNSET\"\n"
        ));
        assert_eq!(e.field(), "groups[0].deployments[0].api_key_env");
        assert!(e.to_string().contains("TOLLGATE_TEST_SURELY_UNSET"), "{e}");

        let e = err("[[groups]]\nname = \"g\"\n");
        assert_eq!(e.field(), "groups[0].deployments");

        let e = err(&format!("{OK}{OK}"));
        assert!(e.to_string().contains("defined twice"), "{e}");

        let e = err("");
        assert_eq!(e.field(), "groups");

        let e = err(&format!("{OK}\nweight = 0\n"));
        assert_eq!(e.field(), "groups[0].deployments[0].weight");

        let e = err(&format!("[upstream]\nidle_timeout_ms = 0\n{OK}"));
        assert_eq!(e.field(), "upstream.idle_timeout_ms");
    }

    #[test]
    fn rate_limits_and_fair_queue() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        assert!(c.rate_limits.is_none() && c.fair_queue.is_none());

        let c = Config::from_toml(
            "gw.toml",
            &format!(
                r#"
                [rate_limits]
                requests_per_minute = 60
                tokens_per_minute = 10000
                [rate_limits.keys.big]
                tokens_per_minute = 0
                [fair_queue]
                capacity = 8
                max_wait_ms = 500
                tenant = "team"
                [fair_queue.group_capacity]
                g = 2
                [fair_queue.weights]
                search = 3
                {OK}"#
            ),
        )
        .unwrap();
        let r = c.rate_limits.as_ref().unwrap();
        assert_eq!(r.limits_for("someone"), Limits::per_minute(60, 10_000));
        assert_eq!(r.limits_for("big"), Limits::per_minute(60, 0));
        assert_eq!(r.default_max_output_tokens, 1024);
        let q = c.fair_queue.as_ref().unwrap();
        assert_eq!(q.tenant, TenantBy::Team);
        assert_eq!((q.weight_for("search"), q.weight_for("other")), (3, 1));
        let s = q.settings();
        assert_eq!((s.capacity_for("g"), s.capacity_for("h")), (2, 8));
        assert_eq!(q.max_queue_per_tenant, 1000);

        let e = err(&format!("[fair_queue]\ncapacity = 0\n{OK}"));
        assert_eq!(e.field(), "fair_queue.capacity");
        let e = err(&format!("[fair_queue.group_capacity]\nnope = 2\n{OK}"));
        assert_eq!(e.field(), "fair_queue.group_capacity.nope");
        assert!(e.to_string().contains("no model group `nope`"), "{e}");
        let e = err(&format!("[fair_queue.weights]\nx = 0\n{OK}"));
        assert_eq!(e.field(), "fair_queue.weights.x");
        let e = err(&format!("[fair_queue]\nmax_wait_ms = 0\n{OK}"));
        assert_eq!(e.field(), "fair_queue.max_wait_ms");
        let e = err(&format!("[fair_queue]\ntenant = \"ip\"\n{OK}"));
        assert!(e.to_string().contains("unknown variant `ip`"), "{e}");
        let e = err(&format!("[rate_limits]\nrpm = 5\n{OK}"));
        assert!(e.to_string().contains("unknown field `rpm`"), "{e}");
        let e = err(&format!(
            "[rate_limits]\ndefault_max_output_tokens = 0\n{OK}"
        ));
        assert_eq!(e.field(), "rate_limits.default_max_output_tokens");
    }
}
