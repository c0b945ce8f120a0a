//! The reference gateway's configuration (TOML), checked whole at start.
//!
//! A bad file is refused before anything listens, with a message naming the
//! file, the field and the problem: a TOML syntax error, an unknown field, a
//! wrong type, a group with no deployments, a base URL that is not one, an
//! API-key variable that is not set, a fallback chain naming an unknown group
//! or forming a cycle. See docs/configuration.md.
//!
//! ```
//! let config = tollgate::config::Config::from_toml("demo.toml", r#"
//!     [router]
//!     num_retries = 2
//!     [[groups]]
//!     name = "gpt-4o-mini"
//!     fallbacks = ["backup"]
//!     [[groups.deployments]]
//!     provider = "mock"
//!     base_url = "http://127.0.0.1:9000/v1"
//!     model = "mock-small"
//!     [[groups]]
//!     name = "backup"
//!     [[groups.deployments]]
//!     provider = "mock"
//!     base_url = "http://127.0.0.1:9000/v1"
//! "#).unwrap();
//! let router = config.router().unwrap();
//! assert!(router.has_model("gpt-4o-mini"));
//! let _fallback = config.fallback_layer().unwrap();
//!
//! let e = tollgate::config::Config::from_toml("bad.toml", r#"
//!     [[groups]]
//!     name = "a"
//!     fallbacks = ["gpt-5-typo"]
//!     [[groups.deployments]]
//!     provider = "mock"
//!     base_url = "http://127.0.0.1:9000/v1"
//! "#).unwrap_err();
//! assert_eq!(e.field(), "groups[0].fallbacks");
//! assert!(e.to_string().contains("`gpt-5-typo`"));
//! ```

mod price_table;

pub use price_table::PriceTable;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::access::AccessGroups;
use crate::budget::{
    Ledger, Limit, MemorySpendStore, ModelPrice, Period, Price, Prices, Scope, SpendStore,
    SpendWriter, TimeZone, restore_ledger, restore_windows,
};
use crate::fair_queue::QueueSettings;
use crate::fallback::{Chains, FallbackLayer};
use crate::keys::{BudgetPeriod, KeyStore, Keyring, Limits, MemoryStore, StaticKey, token};
use crate::provider::{Api, HttpClient, Provider, Timeouts};
use crate::rate_limit::{Limits as RateQuota, OnUnavailable};
use crate::router::cooldown::MAX_THRESHOLD;
use crate::router::{
    Clock, CooldownStore, Deployment, FailureWindow, RetryPolicy, Router, SystemClock,
};

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
    /// `[router]`
    #[serde(default)]
    pub router: RouterSettings,
    /// `[[groups]]`
    #[serde(default)]
    pub groups: Vec<Group>,
    /// `[keys]`: virtual keys, their store, the admin API's master key.
    #[serde(default)]
    pub keys: Keys,
    /// `[access_groups]`: a name for a list of model names and patterns,
    /// usable as one grant (`fast = ["gpt-4o-mini", "mistral/*"]`).
    #[serde(default)]
    pub access_groups: BTreeMap<String, Vec<String>>,
    /// `[rate_limits]`: defaults for keys without their own limits (absent:
    /// none; keys' and teams' own rpm/tpm limits hold either way).
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
    /// `[fair_queue]`: absent, requests are not queued (no capacity bound),
    /// and a fair-queuing `weight` is refused where it is set.
    #[serde(default)]
    pub fair_queue: Option<FairQueueConfig>,
    /// `[budgets]`: the global budget and the periods' time zone (absent:
    /// none, UTC; keys' and teams' own budgets hold either way).
    #[serde(default)]
    pub budgets: Option<Budgets>,
    /// `[state]`: where budgets, rate limits and cooldowns live (absent or
    /// no `url`: in this process).
    #[serde(default)]
    pub state: State,
    /// `[spend]`: the spend records the `Budget` layer writes (with `[budgets]`).
    #[serde(default)]
    pub spend: SpendConfig,
    /// `[pricing]`: the price table for deployments without a configured
    /// price, and whether an unpriced group is refused.
    #[serde(default)]
    pub pricing: Pricing,
    /// `[telemetry]`: one OpenTelemetry span per request, exported by OTLP
    /// (absent: off; needs the `otel` feature).
    #[serde(default)]
    pub telemetry: Option<TelemetryConfig>,
    /// `[console]`: the operator's console under `/ui` (feature `console`),
    /// served with the admin API (when `keys.master_key_env` is set);
    /// absent: the defaults ([`Config::console`]).
    #[serde(default, rename = "console")]
    pub console_section: Option<ConsoleConfig>,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    price_table: PriceTable,
}

/// `[console]`: the operator's console (`docs/console.md`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console under `/ui` with the admin API (default `true`).
    pub enabled: bool,
    /// Mark the session cookie `Secure`, sent over HTTPS only (default
    /// `false`): set it when clients reach the gateway over HTTPS, e.g.
    /// through a proxy that terminates TLS.
    pub secure_cookie: bool,
    /// A console session ends after this long without a request (default
    /// 1 800 000: 30 minutes).
    pub session_idle_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            secure_cookie: false,
            session_idle_ms: 30 * 60 * 1000,
        }
    }
}

/// `[pricing]`: where prices come from when a group does not set them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pricing {
    /// A price-table file (relative to the config file's folder) whose
    /// entries add to, or replace, the built-in table's: see [`PriceTable`].
    pub table: Option<PathBuf>,
    /// Whether the built-in table is used (default `true`).
    pub builtin: bool,
    /// Refuse to start when a group has no price, in the config or the
    /// table (default `false`: such groups are reported at start, by
    /// [`Config::unpriced`], and free).
    pub require: bool,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            table: None,
            builtin: true,
            require: false,
        }
    }
}

/// `[rate_limits]`: requests and tokens per minute, per key. A key's own
/// `rpm_limit`/`tpm_limit` (set through the admin API or on a static key)
/// win; these defaults apply to keys without their own.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Requests per minute of every key without its own (0: unlimited).
    pub requests_per_minute: u32,
    /// Tokens per minute of every key without its own (0: unlimited).
    pub tokens_per_minute: u32,
    /// The output tokens charged for a request that sets no `max_tokens` (default 1024).
    pub default_max_output_tokens: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests_per_minute: 0,
            tokens_per_minute: 0,
            default_max_output_tokens: 1024,
        }
    }
}

impl RateLimits {
    /// The limits of a key with these own limits (`None`: the defaults).
    pub fn limits_for(&self, own_rpm: Option<u64>, own_tpm: Option<u64>) -> RateQuota {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        RateQuota::per_minute(
            own_rpm.map_or(self.requests_per_minute, clamp),
            own_tpm.map_or(self.tokens_per_minute, clamp),
        )
    }
}

/// What a fair-queue tenant is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantBy {
    /// Each key is a tenant, weighted by the key's `weight`.
    #[default]
    Key,
    /// Each team is a tenant, weighted by the team's `weight` (a key without
    /// a team is its own tenant).
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
}

/// `[keys]`: where keys live and who administers them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keys {
    /// Where keys and teams are kept, as a URL: `sqlite://PATH` (the
    /// default, `sqlite://tollgate.db`: an embedded file, nothing lost on
    /// restart), `postgres://USER@HOST:PORT/DB` (shared by several
    /// replicas, with the `postgres` feature; TLS by libpq's `sslmode` and
    /// `sslrootcert` in its query, see `docs/tls-state.md`) or `memory`
    /// (keys made through the admin API are lost on restart). Exclusive
    /// with `url_env` and with the older `store`/`sqlite_path`.
    pub url: Option<String>,
    /// The environment variable holding the URL (for a URL with a password).
    pub url_env: Option<String>,
    /// The older spelling of `url`: `"sqlite"` or `"memory"`.
    pub store: Option<StoreKind>,
    /// With `store = "sqlite"`: the file (default `tollgate.db`, relative to
    /// the working directory).
    pub sqlite_path: Option<PathBuf>,
    /// With a PostgreSQL store: how often each replica polls the change log
    /// for changes its listener missed (default 500 ms; at least 10).
    pub change_poll_ms: u64,
    /// With a PostgreSQL store: connections in the pool (default 8).
    pub pool_size: usize,
    /// The environment variable holding the admin API's master key (at least
    /// 16 characters). Unset: no admin API.
    pub master_key_env: Option<String>,
    /// Grants given to a key created without `models` (and not in a team).
    /// Empty (the default): such a key may use nothing until granted.
    pub default_models: Vec<String>,
    /// `[[keys.static]]`: keys defined here, read-only at run time.
    #[serde(rename = "static")]
    pub static_keys: Vec<StaticKeyConfig>,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            url: None,
            url_env: None,
            store: None,
            sqlite_path: None,
            change_poll_ms: 500,
            pool_size: 8,
            master_key_env: None,
            default_models: Vec::new(),
            static_keys: Vec::new(),
        }
    }
}

/// Which key store the gateway uses (the older `keys.store` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// [`SqliteStore`](crate::keys::SqliteStore) at `keys.sqlite_path`.
    Sqlite,
    /// [`MemoryStore`].
    Memory,
}

/// Where keys are kept, resolved from `[keys]` ([`Config::key_location`]).
#[derive(Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// In this process's memory.
    Memory,
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database (the URL may hold a password: never shown).
    Postgres(String),
}

impl fmt::Debug for KeyLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLocation::Memory => f.write_str("Memory"),
            KeyLocation::Sqlite(p) => f.debug_tuple("Sqlite").field(p).finish(),
            KeyLocation::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// `[[keys.static]]`: a key defined in the file; the whole key
/// (`tg-<id>-<secret>`) is read from an environment variable.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKeyConfig {
    /// The environment variable holding the whole key.
    pub key_env: String,
    /// A human name.
    pub alias: Option<String>,
    /// Grants: model names, access groups, patterns (default `keys.default_models`).
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    pub rpm_limit: Option<u64>,
    /// Tokens per minute.
    pub tpm_limit: Option<u64>,
    /// Budget in USD.
    pub max_budget: Option<f64>,
    /// Budget period: `daily`, `weekly`, `monthly` or `total` (default).
    pub budget_duration: Option<String>,
    /// Fair-queuing weight (default 1).
    pub weight: Option<u32>,
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
    /// Serve Prometheus metrics on `GET /metrics` of the same listener,
    /// without authentication (default true; `false`: no route, a 404).
    pub metrics: bool,
    /// Threads of the reference gateway's async runtime (default: one per
    /// core). 1 serves more requests per CPU second where the gateway shares
    /// its cores with other busy processes (see docs/performance.md).
    pub worker_threads: Option<usize>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 4000)),
            max_body_bytes: 4 << 20,
            shutdown_grace_ms: 30_000,
            metrics: true,
            worker_threads: None,
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
    /// Speak HTTP/2 with prior knowledge (h2c) to `http://` upstreams
    /// (default false: HTTP/1.1); `https://` upstreams negotiate by ALPN
    /// either way. See [`HttpClientBuilder::http2_prior_knowledge`](crate::provider::HttpClientBuilder::http2_prior_knowledge).
    pub http2_prior_knowledge: bool,
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
            http2_prior_knowledge: false,
        }
    }
}

/// `[router]`: retries and cooldowns (see [`RetryPolicy`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    /// Retries per request after the first attempt (default 2).
    pub num_retries: u32,
    /// First backoff before the same deployment is tried again (default 100 ms).
    pub backoff_ms: u64,
    /// Longest backoff (default 2 000 ms).
    pub max_backoff_ms: u64,
    /// Shortest cooldown after a 429 (default 1 000 ms).
    pub min_rate_limit_cooldown_ms: u64,
    /// Longest cooldown after a 429, whatever `Retry-After` says (default 300 000 ms).
    pub max_rate_limit_cooldown_ms: u64,
    /// Cooldown after an upstream 401/403 (default 300 000 ms).
    pub credential_cooldown_ms: u64,
    /// Cooldown after an upstream says the model is unknown or retired (default 3 600 000 ms).
    pub model_gone_cooldown_ms: u64,
    /// Cooldown of one route on one deployment after the upstream answered
    /// that it does not serve it (a 404 not naming a model, 405, 501; default 300 000 ms).
    pub route_not_served_cooldown_ms: u64,
    /// Timeouts / 5xx / connection failures that cool a deployment down (default 3).
    pub failure_threshold: u32,
    /// … within this window (default 60 000 ms).
    pub failure_window_ms: u64,
    /// … for this long (default 30 000 ms).
    pub failure_cooldown_ms: u64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        let p = RetryPolicy::default();
        let ms = |d: Duration| d.as_millis() as u64;
        RouterSettings {
            num_retries: p.num_retries,
            backoff_ms: ms(p.backoff),
            max_backoff_ms: ms(p.max_backoff),
            min_rate_limit_cooldown_ms: ms(p.min_rate_limit_cooldown),
            max_rate_limit_cooldown_ms: ms(p.max_rate_limit_cooldown),
            credential_cooldown_ms: ms(p.credential_cooldown),
            model_gone_cooldown_ms: ms(p.model_gone_cooldown),
            route_not_served_cooldown_ms: ms(p.route_cooldown),
            failure_threshold: p.failures.threshold,
            failure_window_ms: ms(p.failures.window),
            failure_cooldown_ms: ms(p.failure_cooldown),
        }
    }
}

/// `[budgets]`: spending limits per key, team and globally. Keys' and
/// teams' own budgets are set through the admin API (or on static keys);
/// prices come from `[[groups]]` (and deployment overrides).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Budgets {
    /// The IANA time zone periods are aligned in (midnight, Monday, the 1st).
    pub time_zone: String,
    /// The whole gateway's budget in USD (none: no global budget).
    pub global_max_usd: Option<f64>,
    /// The global budget's period: `total`, `daily`, `weekly` or `monthly`.
    pub global_period: String,
    /// The output cap reserved for a request without `max_tokens` to a group
    /// without its own `max_output_tokens`.
    pub default_max_output_tokens: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            time_zone: "UTC".into(),
            global_max_usd: None,
            global_period: "monthly".into(),
            default_max_output_tokens: 4096,
        }
    }
}

/// `[state]`: shared state for several replicas. With `url`, budgets, rate
/// limits and router cooldowns live in Redis (feature `redis`), one truth
/// for every gateway using the same Redis and `prefix`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct State {
    /// `redis://host:port/db`, or `rediss://host:port/db` for TLS
    /// (absent: state in this process). See `docs/tls-state.md`.
    pub url: Option<String>,
    /// With a `rediss://` url: a PEM file of the CA certificates that sign
    /// the server's certificate (a private CA, a self-signed server),
    /// trusted instead of the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// The prefix of every key (default `tollgate:`): replicas sharing a
    /// prefix share state; tests and tenants isolate by it.
    pub prefix: String,
    /// When Redis does not answer, budgeted requests are refused (503
    /// `state_unavailable`): only `"closed"` is accepted, since the
    /// alternative would serve requests unbudgeted.
    pub on_unavailable_budget: OnUnavailable,
    /// When Redis does not answer, rate-limited requests are refused
    /// (`"closed"`, 503 `state_unavailable`, the default) or let through
    /// unchecked (`"open"`).
    pub on_unavailable_rate_limit: OnUnavailable,
    /// The longest any one Redis call may take (default 500 ms): past it the
    /// request gets 503, it never hangs.
    pub timeout_ms: u64,
    /// How long a budget reservation is held at most (default 900 000 ms,
    /// longer than any request): the holds of a replica that died are
    /// reclaimed after this.
    pub reservation_ttl_ms: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            url: None,
            ca_file: None,
            prefix: "tollgate:".into(),
            on_unavailable_budget: OnUnavailable::Closed,
            on_unavailable_rate_limit: OnUnavailable::Closed,
            timeout_ms: 500,
            reservation_ttl_ms: 900_000,
        }
    }
}

/// `[telemetry]`: export each request's GenAI span by OTLP
/// (`tollgate::telemetry`, feature `otel`). The section present turns it on
/// (unless `enabled = false` or `OTEL_SDK_DISABLED=true`); every field left
/// out is read from the standard `OTEL_*` variables, else its default.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export spans (default `true` when the section is present).
    pub enabled: bool,
    /// The collector's base URL, `http://host:4318` (HTTP) or
    /// `http://host:4317` (gRPC); else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc`; else `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf`.
    pub protocol: Option<String>,
    /// Headers sent with every export (added to `OTEL_EXPORTER_OTLP_HEADERS`,
    /// the better place for a token). Values are never logged.
    pub headers: BTreeMap<String, String>,
    /// `service.name`; else `OTEL_SERVICE_NAME`, else `tollgate`.
    pub service_name: Option<String>,
    /// The share of requests traced, 0 to 1; else `OTEL_TRACES_SAMPLER(_ARG)`, else all.
    pub sampling_ratio: Option<f64>,
    /// Record the prompts (`gen_ai.input.messages`, `gen_ai.system_instructions`). Off by default.
    pub capture_content: bool,
    /// The time one export may take; else `OTEL_EXPORTER_OTLP_TIMEOUT`, else 10 s.
    pub timeout_ms: Option<u64>,
    /// How long spans are batched before an export; else `OTEL_BSP_SCHEDULE_DELAY`, else 5 s.
    pub batch_delay_ms: Option<u64>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            endpoint: None,
            protocol: None,
            headers: BTreeMap::new(),
            service_name: None,
            sampling_ratio: None,
            capture_content: false,
            timeout_ms: None,
            batch_delay_ms: None,
        }
    }
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: their values are credentials.
        f.debug_struct("TelemetryConfig")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("service_name", &self.service_name)
            .field("sampling_ratio", &self.sampling_ratio)
            .field("capture_content", &self.capture_content)
            .field("timeout_ms", &self.timeout_ms)
            .field("batch_delay_ms", &self.batch_delay_ms)
            .finish()
    }
}

/// `[spend]`: one spend record per request that reaches the `Budget` layer
/// (always in the reference stack), written by a bounded background writer into
/// the key store's database (`keys.store = "sqlite"`: the same file, table
/// `spend`; `"memory"`: in memory, lost on restart).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpendConfig {
    /// Write spend records (and rebuild budgets' spend from them at start).
    pub enabled: bool,
    /// Records waiting to be written; when full, a record is dropped,
    /// counted and logged, never waited for.
    pub queue: usize,
    /// The most records written in one transaction.
    pub batch: usize,
}

impl Default for SpendConfig {
    fn default() -> Self {
        SpendConfig {
            enabled: true,
            queue: 10_000,
            batch: 256,
        }
    }
}

/// `[[groups]]`: a model group, the name clients ask for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// The model name clients send.
    pub name: String,
    /// Groups to try, in order, when this one is exhausted or gone (followed
    /// transitively; checked at start: unknown groups and cycles are refused).
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Groups to try when this one says the prompt exceeds its context window.
    #[serde(default)]
    pub context_window_fallbacks: Vec<String>,
    /// `[[groups.deployments]]`
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// USD per million input tokens (no price of the group's own: each
    /// deployment's, or the price table's for its upstream model; see
    /// [`Pricing`]).
    pub price_in_per_mtok: Option<f64>,
    /// USD per million output tokens (likewise).
    pub price_out_per_mtok: Option<f64>,
    /// USD per million cached input tokens, where the provider reports them
    /// (none: the input price).
    pub price_cached_in_per_mtok: Option<f64>,
    /// USD per million input tokens written to the prompt cache, where the
    /// provider reports them (Anthropic's cache writes; none: the input price).
    pub price_cache_write_per_mtok: Option<f64>,
    /// The output cap a budget reserves when a request gives no `max_tokens`
    /// (none: `[budgets].default_max_output_tokens`).
    pub max_output_tokens: Option<u64>,
}

/// `[[groups.deployments]]`: one upstream serving a group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The provider's name, as errors and logs show it (e.g. `openai`).
    pub provider: String,
    /// A name for this deployment (default `provider/model`).
    pub name: Option<String>,
    /// The API the upstream speaks: `"openai"` (the default: OpenAI and
    /// every compatible server) or `"anthropic"` (Anthropic's Messages API).
    #[serde(default)]
    pub api: Option<String>,
    /// The base URL, with the API version: e.g. `https://api.openai.com/v1`,
    /// `https://api.anthropic.com/v1`. For `api = "bedrock"` it may be left
    /// out: `https://bedrock-runtime.{region}.amazonaws.com`.
    #[serde(default)]
    pub base_url: String,
    /// The environment variable holding the upstream API key (none: no key sent).
    pub api_key_env: Option<String>,
    /// The upstream model name (default: the group's name, unchanged).
    pub model: Option<String>,
    /// Relative share of the group's traffic (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// At most this many requests in flight here (default: no limit).
    pub capacity: Option<u32>,
    /// Extra headers sent upstream with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// This deployment's price per million input tokens, in USD, if not the group's.
    pub price_in_per_mtok: Option<f64>,
    /// This deployment's price per million output tokens, in USD, if not the group's.
    pub price_out_per_mtok: Option<f64>,
    /// This deployment's price per million cached input tokens, in USD.
    pub price_cached_in_per_mtok: Option<f64>,
    /// This deployment's price per million cache-write input tokens, in USD.
    pub price_cache_write_per_mtok: Option<f64>,
    /// `[groups.deployments.azure]`: the URL style and credentials of an
    /// `api = "azure"` deployment (required there, refused elsewhere).
    #[serde(default)]
    pub azure: Option<crate::provider::azure::AzureConfig>,
    /// AWS Bedrock's settings (required with `api = "bedrock"`). With
    /// `api_key_env`, that variable holds a Bedrock API key (sent as a
    /// bearer token); without it, requests are SigV4-signed with the
    /// credentials these settings name.
    pub bedrock: Option<BedrockConfig>,
    /// Google Vertex AI's settings (required with `api = "vertex"`, refused
    /// elsewhere): the project, the location and the service account.
    pub vertex: Option<VertexConfig>,
}

/// `vertex = { project = "my-project", location = "us-central1" }`: a
/// Vertex AI deployment's project, location and service account key file
/// (read once, at start; its token is fetched and refreshed by the gateway).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VertexConfig {
    /// The Google Cloud project id.
    pub project: String,
    /// The location (`us-central1`, `europe-west4`, `global`, …): the
    /// endpoint's region when `base_url` is left out.
    pub location: String,
    /// The service account's JSON key file.
    pub credentials_file: Option<PathBuf>,
    /// Without `credentials_file`: the variable holding the key file's path
    /// (default `GOOGLE_APPLICATION_CREDENTIALS`).
    pub credentials_file_env: Option<String>,
    /// Where the signed JWT is exchanged for a token, instead of the key
    /// file's `token_uri` (a private endpoint, a test's mock).
    pub token_url: Option<String>,
}

/// `bedrock = { region = "us-east-1" }`: a Bedrock deployment's region and
/// where its AWS credentials come from: static ones read from environment
/// variables (once, at start), or temporary ones from the container
/// credentials endpoint (refreshed ahead of expiry). See `docs/providers.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockConfig {
    /// The AWS region (e.g. `us-east-1`): the signature's scope and the default endpoint's.
    pub region: String,
    /// `"environment"` (static credentials from the variables below),
    /// `"web_identity"` (an OIDC token file exchanged at STS: EKS IRSA) or
    /// `"container"` (the ECS / EKS Pod Identity credentials endpoint).
    /// Default, in this order: `"environment"` when the access key id's
    /// variable is set, `"web_identity"` when the role ARN's and the token
    /// file's variables are, `"container"` when `container_credentials_uri`
    /// or `AWS_CONTAINER_CREDENTIALS_FULL_URI` / `…_RELATIVE_URI` is.
    pub credentials: Option<String>,
    /// The variable holding the access key id (default `AWS_ACCESS_KEY_ID`).
    pub access_key_id_env: Option<String>,
    /// The variable holding the secret access key (default `AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key_env: Option<String>,
    /// The variable holding a session token, read when set (default `AWS_SESSION_TOKEN`).
    pub session_token_env: Option<String>,
    /// The container credentials endpoint (default
    /// `$AWS_CONTAINER_CREDENTIALS_FULL_URI`, else `http://169.254.170.2` and
    /// `$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`).
    pub container_credentials_uri: Option<String>,
    /// The variable holding the endpoint's authorization token (default
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`), read when set.
    pub container_authorization_token_env: Option<String>,
    /// The variable holding the path of a file with that token, re-read at
    /// every fetch and preferred to the token (default
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
    pub container_authorization_token_file_env: Option<String>,
    /// Web identity: the variable holding the role to assume (default `AWS_ROLE_ARN`).
    pub role_arn_env: Option<String>,
    /// Web identity: the variable holding the OIDC token file's path
    /// (default `AWS_WEB_IDENTITY_TOKEN_FILE`; re-read at every fetch).
    pub web_identity_token_file_env: Option<String>,
    /// Web identity: the session name (default `$AWS_ROLE_SESSION_NAME`, else `tollgate`).
    pub role_session_name: Option<String>,
    /// Web identity: STS's endpoint (default `https://sts.{region}.amazonaws.com`).
    pub sts_endpoint: Option<String>,
    /// Seconds before expiry temporary credentials are refreshed in the
    /// background (default 300, at most half their lifetime).
    pub refresh_ahead_s: Option<u64>,
    /// After a failed credentials fetch, milliseconds until the next (default 2000).
    pub retry_after_failure_ms: Option<u64>,
}

impl DeploymentConfig {
    fn is_bedrock(&self) -> bool {
        self.api.as_deref() == Some("bedrock")
    }

    /// A Gemini API or Vertex AI deployment's settings, checked: the Vertex
    /// AI service account read (`None` for the Gemini API and other APIs).
    /// An error names the field.
    fn vertex(&self) -> Result<Option<crate::provider::gemini::Vertex>, (&'static str, String)> {
        use crate::provider::gemini::{ServiceAccount, Vertex};
        match (self.api.as_deref(), &self.vertex) {
            (Some("gemini"), None) if self.api_key_env.is_none() => Err((
                "api_key_env",
                "is required with `api = \"gemini\"`: the variable holding the Gemini API key".into(),
            )),
            (Some("vertex"), None) => Err((
                "vertex",
                "is required with `api = \"vertex\"` (project, location, credentials_file)".into(),
            )),
            (Some("vertex"), Some(_)) if self.api_key_env.is_some() => Err((
                "api_key_env",
                "is not used with `api = \"vertex\"`: it authenticates with its service account (`vertex.credentials_file`)".into(),
            )),
            (Some("vertex"), Some(v)) => {
                if v.project.is_empty() {
                    return Err(("vertex.project", "must name a Google Cloud project".into()));
                }
                if v.location.is_empty() {
                    return Err(("vertex.location", "must name a location (e.g. us-central1, global)".into()));
                }
                let path = match (&v.credentials_file, &v.credentials_file_env) {
                    (Some(p), _) => p.clone(),
                    (None, var) => {
                        let var = var.as_deref().unwrap_or("GOOGLE_APPLICATION_CREDENTIALS");
                        match std::env::var(var) {
                            Ok(p) if !p.is_empty() => PathBuf::from(p),
                            _ => {
                                return Err((
                                    "vertex.credentials_file_env",
                                    format!("environment variable `{var}` (the service account key file's path) is not set; or set `vertex.credentials_file`"),
                                ));
                            }
                        }
                    }
                };
                let mut account = ServiceAccount::from_file(&path)
                    .map_err(|e| ("vertex.credentials_file", e.to_string()))?;
                if let Some(url) = &v.token_url {
                    account = account
                        .with_token_uri(url)
                        .map_err(|e| ("vertex.token_url", e.to_string()))?;
                }
                Ok(Some(Vertex::new(
                    &v.project,
                    &v.location,
                    account,
                    crate::credentials::RefreshPolicy::default(),
                )))
            }
            (_, Some(_)) => Err(("vertex", "is only for `api = \"vertex\"`".into())),
            (_, None) => Ok(None),
        }
    }

    /// The base URL, or Bedrock's regional default, the Gemini API's, or
    /// Vertex AI's for its location.
    fn upstream_base_url(&self) -> std::borrow::Cow<'_, str> {
        if !self.base_url.is_empty() {
            return self.base_url.as_str().into();
        }
        match (self.api.as_deref(), &self.bedrock, &self.vertex) {
            (Some("bedrock"), Some(b), _) => {
                crate::provider::bedrock_default_base_url(&b.region).into()
            }
            (Some("gemini"), _, _) => crate::provider::gemini::GEMINI_BASE_URL.into(),
            (Some("vertex"), _, Some(v)) if !v.location.is_empty() => {
                crate::provider::gemini::vertex_base_url(&v.location).into()
            }
            _ => self.base_url.as_str().into(),
        }
    }

    /// Bedrock's credentials, read from the environment: (field, problem) on failure.
    fn bedrock_auth(&self) -> Result<crate::provider::BedrockAuth, (&'static str, String)> {
        let Some(b) = &self.bedrock else {
            return Err((
                "bedrock",
                "is required with `api = \"bedrock\"` (at least `region`)".into(),
            ));
        };
        if b.region.is_empty() {
            return Err(("bedrock.region", "must name an AWS region".into()));
        }
        b.auth(
            self.api_key_env.as_deref(),
            &crate::provider::bedrock::read_env,
        )
    }
}

impl BedrockConfig {
    /// The credentials these settings name, the environment read through
    /// `get`; `api_key_env` is the deployment's (a Bedrock API key).
    fn auth(
        &self,
        api_key_env: Option<&str>,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::provider::BedrockAuth, (&'static str, String)> {
        use crate::provider::{BedrockAuth, bedrock};
        if let Some(var) = api_key_env {
            if self.credentials.is_some() {
                return Err((
                    "bedrock.credentials",
                    "a Bedrock API key (`api_key_env`) takes no AWS credentials".into(),
                ));
            }
            return BedrockAuth::api_key_from_env(var).map_err(|e| ("api_key_env", e.to_string()));
        }
        let key_id = self
            .access_key_id_env
            .as_deref()
            .unwrap_or(bedrock::ENV_ACCESS_KEY_ID);
        let container = || {
            bedrock::AwsSource::container_from(
                self.container_credentials_uri.as_deref(),
                self.container_authorization_token_env
                    .as_deref()
                    .unwrap_or(bedrock::ENV_CONTAINER_TOKEN),
                self.container_authorization_token_file_env
                    .as_deref()
                    .unwrap_or(bedrock::ENV_CONTAINER_TOKEN_FILE),
                get,
            )
            .map_err(|e| ("bedrock.container_credentials_uri", e.to_string()))
        };
        let sts = self
            .sts_endpoint
            .clone()
            .unwrap_or_else(|| bedrock::sts_endpoint(&self.region));
        let web_identity = || {
            bedrock::AwsSource::web_identity_from(
                &sts,
                self.role_arn_env
                    .as_deref()
                    .unwrap_or(bedrock::ENV_ROLE_ARN),
                self.web_identity_token_file_env
                    .as_deref()
                    .unwrap_or(bedrock::ENV_WEB_IDENTITY_TOKEN_FILE),
                self.role_session_name.as_deref(),
                get,
            )
            .map_err(|e| ("bedrock.sts_endpoint", e.to_string()))
        };
        let source = match self.credentials.as_deref() {
            Some("environment") => None,
            None if get(key_id).is_some() => None,
            None => match web_identity()? {
                Some(w) => Some(w),
                None => container()?,
            },
            Some("web_identity") => Some(web_identity()?.ok_or((
                "bedrock.role_arn_env",
                "`credentials = \"web_identity\"` needs the role ARN's and the token file's variables set (`role_arn_env`, `web_identity_token_file_env`)".to_owned(),
            ))?),
            Some("container") => Some(container()?.ok_or((
                "bedrock.container_credentials_uri",
                format!(
                    "`credentials = \"container\"` needs the endpoint: set it here or in `{}`",
                    bedrock::ENV_CONTAINER_FULL_URI
                ),
            ))?),
            Some(other) => {
                return Err((
                    "bedrock.credentials",
                    format!(
                        "`{other}` is not a credentials source; use \"environment\", \"web_identity\" or \"container\""
                    ),
                ));
            }
        };
        let Some(source) = source else {
            return BedrockAuth::aws_from(
                key_id,
                self.secret_access_key_env
                    .as_deref()
                    .unwrap_or(bedrock::ENV_SECRET_ACCESS_KEY),
                self.session_token_env
                    .as_deref()
                    .unwrap_or(bedrock::ENV_SESSION_TOKEN),
                get,
            )
            .map_err(|e| ("bedrock", e.to_string()));
        };
        let defaults = crate::credentials::RefreshPolicy::default();
        let policy = crate::credentials::RefreshPolicy {
            refresh_ahead: self
                .refresh_ahead_s
                .map_or(defaults.refresh_ahead, Duration::from_secs),
            retry_after_failure: self
                .retry_after_failure_ms
                .map_or(defaults.retry_after_failure, Duration::from_millis),
        };
        Ok(BedrockAuth::refreshing(source, policy))
    }
}

fn one() -> u32 {
    1
}

/// Why a fair-queuing weight is refused without `[fair_queue]`.
const NO_FAIR_QUEUE: &str = "a fair-queuing weight needs `[fair_queue]`: without it requests are not queued, so the weight would be ignored";

/// A key's or team's budget period as the ledger's.
pub fn period_of(p: BudgetPeriod) -> Period {
    p.into()
}

/// A TOML syntax or shape error as a config error naming the file and line.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e
        .span()
        .map(|s| {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    ConfigError::new(path, "", format!("{}{at}", e.message()))
}

/// Whether a group sets any price of its own.
fn group_priced(g: &Group) -> bool {
    g.price_in_per_mtok.is_some()
        || g.price_out_per_mtok.is_some()
        || g.price_cached_in_per_mtok.is_some()
        || g.price_cache_write_per_mtok.is_some()
}

/// Whether a deployment sets any price of its own.
fn deployment_priced(d: &DeploymentConfig) -> bool {
    d.price_in_per_mtok.is_some()
        || d.price_out_per_mtok.is_some()
        || d.price_cached_in_per_mtok.is_some()
        || d.price_cache_write_per_mtok.is_some()
}

/// A deployment's name: its `name`, or `provider/model`.
fn deployment_name(group: &str, d: &DeploymentConfig) -> String {
    d.name
        .clone()
        .unwrap_or_else(|| format!("{}/{}", d.provider, d.model.as_deref().unwrap_or(group)))
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

/// The key store a gateway opened at start ([`Config::key_backend`]), kept
/// for the keyrings its reloads build ([`Config::keyring_on`]).
#[derive(Clone)]
pub struct KeyBackend {
    store: Arc<dyn KeyStore>,
    #[cfg(feature = "postgres")]
    postgres: Option<crate::keys::PostgresStore>,
}

impl fmt::Debug for KeyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBackend").finish_non_exhaustive()
    }
}

impl KeyBackend {
    /// The store.
    pub fn store(&self) -> &Arc<dyn KeyStore> {
        &self.store
    }
}

/// The model groups a reload adds, removes and changes, by name
/// ([`Config::group_changes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupChanges {
    /// Groups only the new configuration has.
    pub added: Vec<String>,
    /// Groups only the running configuration has.
    pub removed: Vec<String>,
    /// Groups in both whose settings (deployments, prices, fallbacks, …) differ.
    pub changed: Vec<String>,
}

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
        let mut config: Config = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        config.path = path.to_owned();
        config.price_table = config.load_price_table()?;
        config.check()?;
        Ok(config)
    }

    /// The built-in table (unless `[pricing] builtin = false`) with the
    /// `[pricing] table` file's entries over it.
    fn load_price_table(&self) -> Result<PriceTable, ConfigError> {
        let mut table = if self.pricing.builtin {
            PriceTable::builtin().clone()
        } else {
            PriceTable::new()
        };
        if let Some(file) = &self.pricing.table {
            let file = match self.path.parent() {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file.clone(),
            };
            let text = std::fs::read_to_string(&file).map_err(|e| {
                self.err(
                    "pricing.table",
                    format!("`{}` cannot be read: {e}", file.display()),
                )
            })?;
            table = table.with(PriceTable::from_toml(&file, &text)?);
        }
        Ok(table)
    }

    /// The price table in use (the built-in one and `[pricing] table`).
    pub fn price_table(&self) -> &PriceTable {
        &self.price_table
    }

    /// The groups no price covers: neither the group, nor one of its
    /// deployments, nor the price table for that deployment's upstream
    /// model. Their calls are free to budgets; the reference gateway
    /// reports them at start, and `[pricing] require = true` refuses them.
    pub fn unpriced(&self) -> Vec<&str> {
        self.groups
            .iter()
            .filter(|g| {
                !group_priced(g)
                    && g.deployments.iter().any(|d| {
                        !deployment_priced(d)
                            && self
                                .price_table
                                .get(d.model.as_deref().unwrap_or(&g.name))
                                .is_none()
                    })
            })
            .map(|g| g.name.as_str())
            .collect()
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
        let r = &self.router;
        if !(1..=MAX_THRESHOLD).contains(&r.failure_threshold) {
            return Err(self.err(
                "router.failure_threshold",
                format!("must be between 1 and {MAX_THRESHOLD}"),
            ));
        }
        if r.failure_window_ms == 0 {
            return Err(self.err("router.failure_window_ms", "must be greater than 0"));
        }
        if r.min_rate_limit_cooldown_ms > r.max_rate_limit_cooldown_ms {
            return Err(self.err(
                "router.min_rate_limit_cooldown_ms",
                "must not be greater than router.max_rate_limit_cooldown_ms",
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(self.err("server.max_body_bytes", "must be greater than 0"));
        }
        if self.server.worker_threads == Some(0) {
            return Err(self.err("server.worker_threads", "must be at least 1"));
        }
        if let Some(c) = &self.console_section {
            // A section that would do nothing is refused, not ignored.
            if !cfg!(feature = "console") {
                return Err(self.err(
                    "console",
                    "this build has no console (build with the `console` feature)",
                ));
            }
            if c.enabled && self.keys.master_key_env.is_none() {
                return Err(self.err(
                    "console",
                    "the console is served with the admin API: set keys.master_key_env (or enabled = false)",
                ));
            }
            if c.session_idle_ms == 0 {
                return Err(self.err("console.session_idle_ms", "must be greater than 0"));
            }
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
            if g.deployments.len() > crate::router::MAX_DEPLOYMENTS {
                return Err(self.err(
                    format!("groups[{gi}].deployments"),
                    format!(
                        "model group `{}` has more than {} deployments",
                        g.name,
                        crate::router::MAX_DEPLOYMENTS
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for (di, d) in g.deployments.iter().enumerate() {
                let at = |f: &str| format!("groups[{gi}].deployments[{di}].{f}");
                if d.weight == 0 {
                    return Err(self.err(at("weight"), "must be at least 1"));
                }
                if d.capacity == Some(0) {
                    return Err(self.err(at("capacity"), "must be at least 1"));
                }
                if !seen.insert(deployment_name(&g.name, d)) {
                    return Err(self.err(
                        at("name"),
                        format!(
                            "model group `{}` has two deployments named `{}`; set distinct `name`s",
                            g.name,
                            deployment_name(&g.name, d)
                        ),
                    ));
                }
                if d.is_bedrock() {
                    d.bedrock_auth().map_err(|(f, e)| self.err(at(f), e))?;
                } else if d.bedrock.is_some() {
                    return Err(self.err(at("bedrock"), "is only for `api = \"bedrock\"`"));
                }
                d.vertex().map_err(|(f, e)| self.err(at(f), e))?;
                if d.upstream_base_url().is_empty() {
                    return Err(self.err(at("base_url"), "is required"));
                }
                Provider::builder(&d.provider, &d.upstream_base_url())
                    .map_err(|e| self.err(at("base_url"), e.to_string()))?;
                if let Some(var) = &d.api_key_env
                    && std::env::var(var).map_or(true, |v| v.is_empty())
                {
                    return Err(self.err(
                        at("api_key_env"),
                        format!("environment variable `{var}` is not set"),
                    ));
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
        self.chains()?;
        if let Some(ca) = &u.ca_file
            && !ca.exists()
        {
            return Err(self.err(
                "upstream.ca_file",
                format!("`{}` does not exist", ca.display()),
            ));
        }
        self.check_rate_limits()?;
        self.check_fair_queue()?;
        self.check_budgets()?;
        self.check_state()?;
        self.check_spend()?;
        self.check_telemetry()?;
        self.check_pricing()?;
        self.check_keys()
    }

    fn check_pricing(&self) -> Result<(), ConfigError> {
        if !self.pricing.require {
            return Ok(());
        }
        match self.unpriced().first() {
            None => Ok(()),
            Some(name) => {
                let i = self
                    .groups
                    .iter()
                    .position(|g| g.name == *name)
                    .unwrap_or(0);
                Err(self.err(
                    format!("groups[{i}]"),
                    format!(
                        "model group `{name}` has no price (`[pricing] require = true`): set its \
                         price_in_per_mtok and price_out_per_mtok, or add its deployments' upstream \
                         models to the price table (`[pricing] table`)"
                    ),
                ))
            }
        }
    }

    fn check_budgets(&self) -> Result<(), ConfigError> {
        let usd = |field: String, v: Option<f64>| match v {
            Some(v) if Price::micros_from_usd(v).is_none() => {
                Err(self.err(field, "must be a number of dollars, 0 or more"))
            }
            _ => Ok(()),
        };
        for (gi, g) in self.groups.iter().enumerate() {
            let at = |f: &str| format!("groups[{gi}].{f}");
            usd(at("price_in_per_mtok"), g.price_in_per_mtok)?;
            usd(at("price_out_per_mtok"), g.price_out_per_mtok)?;
            usd(at("price_cached_in_per_mtok"), g.price_cached_in_per_mtok)?;
            usd(
                at("price_cache_write_per_mtok"),
                g.price_cache_write_per_mtok,
            )?;
            if g.max_output_tokens == Some(0) {
                return Err(self.err(at("max_output_tokens"), "must be at least 1"));
            }
            for (di, d) in g.deployments.iter().enumerate() {
                let at = |f: &str| format!("groups[{gi}].deployments[{di}].{f}");
                usd(at("price_in_per_mtok"), d.price_in_per_mtok)?;
                usd(at("price_out_per_mtok"), d.price_out_per_mtok)?;
                usd(at("price_cached_in_per_mtok"), d.price_cached_in_per_mtok)?;
                usd(
                    at("price_cache_write_per_mtok"),
                    d.price_cache_write_per_mtok,
                )?;
                if let Some(api) = &d.api
                    && Api::from_name(api).is_none()
                {
                    return Err(self.err(
                            at("api"),
                            format!("`{api}` is not an API tollgate speaks; use \"openai\", \"anthropic\", \"azure\", \"bedrock\", \"gemini\" or \"vertex\""),
                        ));
                }
                self.azure_deployment(d, &g.name)
                    .map_err(|(f, m)| self.err(at(&f), m))?;
            }
        }
        let Some(b) = &self.budgets else {
            return Ok(());
        };
        TimeZone::get(&b.time_zone).map_err(|_| {
            self.err(
                "budgets.time_zone",
                format!(
                    "`{}` is not an IANA time zone (e.g. `Europe/Paris`)",
                    b.time_zone
                ),
            )
        })?;
        usd("budgets.global_max_usd".into(), b.global_max_usd)?;
        b.global_period
            .parse::<BudgetPeriod>()
            .map_err(|e| self.err("budgets.global_period", e))?;
        if b.default_max_output_tokens == 0 {
            return Err(self.err("budgets.default_max_output_tokens", "must be at least 1"));
        }
        Ok(())
    }

    fn check_state(&self) -> Result<(), ConfigError> {
        let st = &self.state;
        let Some(url) = &st.url else {
            return Ok(());
        };
        if !cfg!(feature = "redis") {
            return Err(self.err(
                "state.url",
                "this build has no Redis support (build with the `redis` feature)",
            ));
        }
        // Never echo the URL: it may hold a password.
        let tls = url.starts_with("rediss://");
        if !tls && !url.starts_with("redis://") {
            return Err(self.err(
                "state.url",
                "must be a `redis://host:port/db` or `rediss://host:port/db` (TLS) URL",
            ));
        }
        if url.contains('#') {
            return Err(self.err(
                "state.url",
                "takes no `#` fragment (`#insecure`, no certificate check, is not supported: \
                 give the server's CA as `state.ca_file` instead)",
            ));
        }
        #[cfg(feature = "redis")]
        if redis::Client::open(url.as_str()).is_err() {
            return Err(self.err("state.url", "is not a valid `redis://` URL"));
        }
        #[cfg(feature = "redis")]
        if let Some(ca) = &st.ca_file {
            if !tls {
                return Err(self.err(
                    "state.ca_file",
                    "is only for a `rediss://` (TLS) url; `state.url` is `redis://`",
                ));
            }
            crate::tls::read_pem_file(ca).map_err(|e| self.err("state.ca_file", e))?;
        }
        if st.on_unavailable_budget == OnUnavailable::Open {
            return Err(self.err(
                "state.on_unavailable_budget",
                "must be `closed`: budgets never let a request through unbudgeted",
            ));
        }
        if st.timeout_ms == 0 {
            return Err(self.err("state.timeout_ms", "must be greater than 0"));
        }
        if st.reservation_ttl_ms < 1_000 {
            return Err(self.err("state.reservation_ttl_ms", "must be at least 1000"));
        }
        Ok(())
    }

    /// Whether `[telemetry]` turns export on: the section is present, not
    /// `enabled = false`, and `OTEL_SDK_DISABLED` is not `true`.
    pub fn telemetry_on(&self) -> bool {
        self.telemetry.as_ref().is_some_and(|t| t.enabled)
            && !std::env::var("OTEL_SDK_DISABLED")
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    fn check_telemetry(&self) -> Result<(), ConfigError> {
        if !self.telemetry_on() {
            return Ok(());
        }
        #[cfg(not(feature = "otel"))]
        return Err(self.err(
            "telemetry",
            "this build has no OpenTelemetry support (build with the `otel` feature)",
        ));
        #[cfg(feature = "otel")]
        self.otlp_settings()?.check().map_err(|e| self.otlp_err(e))
    }

    #[cfg(feature = "otel")]
    fn otlp_err(&self, e: crate::telemetry::otlp::OtlpError) -> ConfigError {
        // A setting of the file, or the variable it was left to.
        let field = if e.field.starts_with("OTEL_") {
            e.field
        } else if e.field == "timeout" || e.field == "batch_delay" {
            format!("telemetry.{}_ms", e.field)
        } else {
            format!("telemetry.{}", e.field)
        };
        self.err(field, e.problem)
    }

    #[cfg(feature = "otel")]
    fn otlp_settings(&self) -> Result<crate::telemetry::otlp::Otlp, ConfigError> {
        use crate::telemetry::otlp::{Otlp, Protocol};
        let t = self.telemetry.clone().unwrap_or_default();
        let mut o = Otlp::new();
        if let Some(e) = t.endpoint {
            o = o.endpoint(e);
        }
        if let Some(p) = &t.protocol {
            let p = Protocol::from_name(p).ok_or_else(|| {
                self.err(
                    "telemetry.protocol",
                    format!("`{p}` is not supported: use `http/protobuf` or `grpc`"),
                )
            })?;
            o = o.protocol(p);
        }
        for (k, v) in t.headers {
            o = o.header(k, v);
        }
        if let Some(n) = t.service_name {
            o = o.service_name(n);
        }
        if let Some(r) = t.sampling_ratio {
            o = o.sampling_ratio(r);
        }
        if let Some(ms) = t.timeout_ms {
            o = o.timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = t.batch_delay_ms {
            o = o.batch_delay(Duration::from_millis(ms));
        }
        Ok(o)
    }

    /// The OTLP exporter's settings when [`telemetry_on`](Self::telemetry_on).
    #[cfg(feature = "otel")]
    pub fn otlp(&self) -> Option<crate::telemetry::otlp::Otlp> {
        if self.telemetry_on() {
            self.otlp_settings().ok()
        } else {
            None
        }
    }

    /// The OTLP exporter, built (inside the Tokio runtime, which batches
    /// its spans) when [`telemetry_on`](Self::telemetry_on).
    #[cfg(feature = "otel")]
    pub fn otlp_provider(
        &self,
    ) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, ConfigError> {
        match self.otlp() {
            Some(o) => o.build().map(Some).map_err(|e| self.otlp_err(e)),
            None => Ok(None),
        }
    }

    /// The span layer for the gateway's virtual keys, over `tracer`: every
    /// deployment's API as its `gen_ai.provider.name`, the budgets' prices
    /// for `tollgate.cost_usd`, and `capture_content` as configured.
    #[cfg(feature = "otel")]
    pub fn telemetry_layer<T>(
        &self,
        tracer: T,
    ) -> crate::telemetry::GenAiSpanLayer<T, crate::telemetry::VirtualKeyCaller> {
        let mut layer = crate::telemetry::GenAiSpanLayer::new(tracer)
            .capture_content(self.telemetry.as_ref().is_some_and(|t| t.capture_content))
            .prices(self.prices());
        for g in &self.groups {
            for d in &g.deployments {
                let api = d
                    .api
                    .as_deref()
                    .and_then(Api::from_name)
                    .unwrap_or_default();
                layer = layer.provider(d.provider.as_str(), api);
            }
        }
        layer.caller(crate::telemetry::VirtualKeyCaller)
    }

    fn check_spend(&self) -> Result<(), ConfigError> {
        let s = &self.spend;
        if !(1..=10_000_000).contains(&s.queue) {
            return Err(self.err("spend.queue", "must be from 1 to 10000000"));
        }
        if !(1..=100_000).contains(&s.batch) {
            return Err(self.err("spend.batch", "must be from 1 to 100000"));
        }
        Ok(())
    }

    /// The connection to `[state].url`, when set (lazy: Redis may be down
    /// now). Call within a tokio runtime.
    #[cfg(feature = "redis")]
    pub fn redis_state(&self) -> Result<Option<crate::state::RedisState>, ConfigError> {
        let Some(url) = &self.state.url else {
            return Ok(None);
        };
        let timeout = Duration::from_millis(self.state.timeout_ms);
        let state = match &self.state.ca_file {
            None => crate::state::RedisState::open(url, &self.state.prefix, timeout),
            Some(ca) => {
                let pem =
                    crate::tls::read_pem_file(ca).map_err(|e| self.err("state.ca_file", e))?;
                crate::state::RedisState::open_with_root_certificates(
                    url,
                    &pem,
                    &self.state.prefix,
                    timeout,
                )
            }
        };
        state
            .map(Some)
            .map_err(|_| self.err("state.url", "is not a valid `redis://` URL"))
    }

    /// How many deployments all groups have together.
    pub fn deployment_count(&self) -> usize {
        self.groups.iter().map(|g| g.deployments.len()).sum()
    }

    /// Spend records as configured, for budgets kept in `ledger`: the store
    /// ([`spend_store`](Self::spend_store)), `ledger`'s spend in the current
    /// periods rebuilt from it ([`restore_ledger`]), and the background
    /// writer (`[spend].queue`, `[spend].batch`) started on it. `None` when
    /// spend records are off.
    pub async fn spend(
        &self,
        ledger: &Ledger,
    ) -> Result<Option<(Arc<dyn SpendStore>, SpendWriter)>, ConfigError> {
        let Some(store) = self.spend_store().await? else {
            return Ok(None);
        };
        restore_ledger(ledger, &*store).await.map_err(|e| {
            self.err(
                "keys.url",
                format!("cannot rebuild the budgets' spend from the spend records: {e}"),
            )
        })?;
        let writer = SpendWriter::spawn(store.clone(), self.spend.queue, self.spend.batch);
        Ok(Some((store, writer)))
    }

    /// Rebuilds `ledger`'s spend in the current window of every key's and
    /// team's fixed-window budget (`budget_duration = "2h"`, …) from
    /// `store` ([`restore_windows`]): call after [`spend`](Self::spend),
    /// once the keyring is loaded.
    pub async fn restore_windows(
        &self,
        ledger: &Ledger,
        store: &dyn SpendStore,
        keyring: &Keyring,
    ) -> Result<(), ConfigError> {
        let windowed = |l: &Limits| {
            l.budget()
                .map(|b| Period::from(b.period))
                .filter(|p| matches!(p, Period::Every(_)))
        };
        let fail = |e: String| {
            self.err(
                "keys.url",
                format!("cannot rebuild the budgets' spend from the spend records: {e}"),
            )
        };
        let mut budgets: Vec<(Scope, Period)> = Vec::new();
        for (k, _) in keyring
            .find_keys(|k| windowed(&k.limits).is_some())
            .map_err(|e| fail(e.to_string()))?
        {
            budgets.extend(windowed(&k.limits).map(|p| (Scope::Key(k.id.into()), p)));
        }
        for (t, _) in keyring.list_teams().map_err(|e| fail(e.to_string()))? {
            budgets.extend(windowed(&t.limits).map(|p| (Scope::Team(t.id.into()), p)));
        }
        let every = |b: Option<crate::keys::Budget>| {
            b.map(|b| Period::from(b.period))
                .filter(|p| matches!(p, Period::Every(_)))
        };
        for u in keyring
            .list_users(1, usize::MAX)
            .map_err(|e| fail(e.to_string()))?
            .0
        {
            budgets.extend(every(u.budget()).map(|p| (Scope::User(u.id.into()), p)));
        }
        for c in keyring.list_customers().map_err(|e| fail(e.to_string()))? {
            budgets.extend(every(c.budget()).map(|p| (Scope::EndUser(c.id.into()), p)));
        }
        restore_windows(ledger, store, &budgets)
            .await
            .map_err(|e| fail(e.to_string()))
    }

    /// The spend store, when spend records are on (`[spend].enabled`, the
    /// default, with or without `[budgets]`): the key store's SQLite file, its PostgreSQL
    /// database (table `tollgate_spend`, a pool of its own of
    /// `keys.pool_size` connections to the same URL), or memory.
    pub async fn spend_store(&self) -> Result<Option<Arc<dyn SpendStore>>, ConfigError> {
        if !self.spend.enabled {
            return Ok(None);
        }
        match self.key_location()? {
            KeyLocation::Memory => Ok(Some(Arc::new(MemorySpendStore::new()))),
            #[cfg(feature = "sqlite")]
            KeyLocation::Sqlite(path) => {
                let store = tokio::task::spawn_blocking(move || {
                    crate::budget::SqliteSpendStore::open(path)
                })
                .await
                .map_err(|e| self.err("keys.url", e.to_string()))?
                .map_err(|e| self.err("keys.url", e.to_string()))?;
                Ok(Some(Arc::new(store)))
            }
            #[cfg(not(feature = "sqlite"))]
            KeyLocation::Sqlite(_) => {
                Err(self.err("keys.url", "this build has no `sqlite` feature"))
            }
            #[cfg(feature = "postgres")]
            KeyLocation::Postgres(url) => {
                let field = if self.keys.url_env.is_some() {
                    "keys.url_env"
                } else {
                    "keys.url"
                };
                let store = crate::budget::PostgresSpendStore::connect_with(
                    &url,
                    crate::keys::postgres::PostgresOptions {
                        pool_size: self.keys.pool_size,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| self.err(field, e.to_string()))?;
                Ok(Some(Arc::new(store)))
            }
            #[cfg(not(feature = "postgres"))]
            KeyLocation::Postgres(_) => {
                Err(self.err("keys.url", "this build has no `postgres` feature"))
            }
        }
    }

    /// The budget ledger, periods in `[budgets].time_zone` (UTC without
    /// `[budgets]`). There is always one: a key's or team's own budget is
    /// enforced whether or not the config has a `[budgets]` section.
    pub fn ledger(&self) -> Ledger {
        let zone = self.budgets.as_ref().map(|b| b.time_zone.as_str());
        Ledger::new(
            zone.and_then(|z| TimeZone::get(z).ok())
                .unwrap_or(TimeZone::UTC),
        )
    }

    /// The global budget, when `[budgets].global_max_usd` is set.
    pub fn global_budget(&self) -> Option<Limit> {
        let b = self.budgets.as_ref()?;
        Some(Limit {
            scope: Scope::Global,
            max: Price::micros_from_usd(b.global_max_usd?)?,
            period: period_of(b.global_period.parse().ok()?),
        })
    }

    /// Every group's price and output cap, with the deployments' overrides.
    pub fn prices(&self) -> Prices {
        let m = |v: Option<f64>| v.and_then(Price::micros_from_usd);
        let default_max = self
            .budgets
            .as_ref()
            .map_or(Budgets::default().default_max_output_tokens, |b| {
                b.default_max_output_tokens
            });
        let mut prices = Prices::new();
        for g in &self.groups {
            let base = Price {
                input_per_mtok: m(g.price_in_per_mtok).unwrap_or(0),
                output_per_mtok: m(g.price_out_per_mtok).unwrap_or(0),
                cached_input_per_mtok: m(g.price_cached_in_per_mtok),
                cache_write_per_mtok: m(g.price_cache_write_per_mtok),
            };
            prices = prices.group(
                &g.name,
                ModelPrice {
                    price: base,
                    max_output_tokens: g.max_output_tokens.unwrap_or(default_max),
                },
            );
            let from_table = !group_priced(g);
            for d in &g.deployments {
                if from_table && !deployment_priced(d) {
                    // Neither the group nor the deployment says: the
                    // table's price of the upstream model, if it has one.
                    if let Some(price) = self.price_table.get(d.model.as_deref().unwrap_or(&g.name))
                    {
                        prices = prices.deployment(
                            &g.name,
                            &d.provider,
                            d.model.as_deref().unwrap_or(&g.name),
                            price,
                        );
                    }
                } else if deployment_priced(d) {
                    let price = Price {
                        input_per_mtok: m(d.price_in_per_mtok).unwrap_or(base.input_per_mtok),
                        output_per_mtok: m(d.price_out_per_mtok).unwrap_or(base.output_per_mtok),
                        cached_input_per_mtok: m(d.price_cached_in_per_mtok)
                            .or(base.cached_input_per_mtok),
                        cache_write_per_mtok: m(d.price_cache_write_per_mtok)
                            .or(base.cache_write_per_mtok),
                    };
                    prices = prices.deployment(
                        &g.name,
                        &d.provider,
                        d.model.as_deref().unwrap_or(&g.name),
                        price,
                    );
                }
            }
        }
        prices
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
            if !self.is_model(group) {
                return Err(self.err(field, format!("no model group `{group}` is configured")));
            }
            if *n == 0 {
                return Err(self.err(field, "must be at least 1"));
            }
        }
        Ok(())
    }

    fn is_model(&self, name: &str) -> bool {
        self.groups.iter().any(|g| g.name == name)
    }

    /// Each grant is a model group, an access group or a pattern.
    fn check_grants(&self, field: &str, grants: &[String]) -> Result<(), ConfigError> {
        for (i, g) in grants.iter().enumerate() {
            if g.trim().is_empty() {
                return Err(self.err(format!("{field}[{i}]"), "must not be empty"));
            }
            if !g.contains('*') && !self.is_model(g) && !self.access_groups.contains_key(g) {
                return Err(self.err(
                    format!("{field}[{i}]"),
                    format!(
                        "`{g}` is neither a model group, an access group, nor a pattern with `*`"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_keys(&self) -> Result<(), ConfigError> {
        for (name, members) in &self.access_groups {
            let field = format!("access_groups.{name}");
            if name.trim().is_empty() || name.contains('*') {
                return Err(self.err(field, "an access group's name must be a plain word"));
            }
            if self.is_model(name) {
                return Err(self.err(
                    field,
                    format!("`{name}` is also a model group; give the access group another name"),
                ));
            }
            for (i, m) in members.iter().enumerate() {
                if !m.contains('*') && !self.is_model(m) {
                    return Err(self.err(
                        format!("{field}[{i}]"),
                        format!("`{m}` is not a model group (access groups hold model groups and patterns)"),
                    ));
                }
            }
        }
        let k = &self.keys;
        let location = self.key_location()?;
        #[cfg(not(feature = "sqlite"))]
        if let KeyLocation::Sqlite(_) = location {
            let field = if k.store.is_some() {
                "keys.store"
            } else {
                "keys.url"
            };
            return Err(self.err(
                field,
                "this build has no `sqlite` feature; use `memory` or rebuild with it",
            ));
        }
        if let KeyLocation::Postgres(_url) = &location {
            #[cfg(not(feature = "postgres"))]
            return Err(self.err(
                "keys.url",
                "this build has no `postgres` feature; rebuild with it (or `full`)",
            ));
            #[cfg(feature = "postgres")]
            if let Err(e) = crate::keys::postgres::check_url(_url) {
                let field = if k.url_env.is_some() {
                    "keys.url_env"
                } else {
                    "keys.url"
                };
                return Err(self.err(field, e));
            }
        }
        if k.change_poll_ms < 10 {
            return Err(self.err("keys.change_poll_ms", "must be at least 10"));
        }
        if k.pool_size == 0 {
            return Err(self.err("keys.pool_size", "must be at least 1"));
        }
        if let Some(var) = &k.master_key_env {
            match std::env::var(var) {
                Ok(v) if v.len() >= 16 => {}
                Ok(v) if !v.is_empty() => {
                    return Err(self.err(
                        "keys.master_key_env",
                        format!(
                            "the master key in `{var}` is too short; use at least 16 characters"
                        ),
                    ));
                }
                _ => {
                    return Err(self.err(
                        "keys.master_key_env",
                        format!("environment variable `{var}` is not set"),
                    ));
                }
            }
        }
        self.check_grants("keys.default_models", &k.default_models)?;
        let mut ids = HashSet::new();
        for (i, s) in k.static_keys.iter().enumerate() {
            let at = |f: &str| format!("keys.static[{i}].{f}");
            let value = std::env::var(&s.key_env).unwrap_or_default();
            if value.is_empty() {
                return Err(self.err(
                    at("key_env"),
                    format!("environment variable `{}` is not set", s.key_env),
                ));
            }
            let Ok((id, _)) = token::parse(value.trim()) else {
                return Err(self.err(
                    at("key_env"),
                    format!(
                        "`{}` does not hold a key of the form `tg-<id>-<secret>` (id: letters, digits, `_`; secret: at least 16 of them)",
                        s.key_env
                    ),
                ));
            };
            if !ids.insert(id.to_owned()) {
                return Err(self.err(
                    at("key_env"),
                    format!("a second static key with the id `{id}`"),
                ));
            }
            if let Some(models) = &s.models {
                self.check_grants(&at("models"), models)?;
            }
            if let Some(b) = s.max_budget
                && !(b >= 0.0 && b.is_finite())
            {
                return Err(self.err(at("max_budget"), "must be 0 or more"));
            }
            if let Some(p) = &s.budget_duration {
                p.parse::<BudgetPeriod>()
                    .map_err(|e| self.err(at("budget_duration"), e))?;
            }
            if s.weight == Some(0) {
                return Err(self.err(at("weight"), "must be at least 1"));
            }
            if s.weight.is_some_and(|w| w != 1) && self.fair_queue.is_none() {
                return Err(self.err(at("weight"), NO_FAIR_QUEUE));
            }
        }
        Ok(())
    }

    /// The limit fields this config's stack would not enforce, for the
    /// admin API to refuse ([`crate::admin::Unenforced`]). The reference
    /// stack always has `RateLimit` and `Budget`, so only fair-queuing
    /// weights depend on the config: on `[fair_queue]`, and on whose weight
    /// its `tenant` reads.
    #[cfg(feature = "admin")]
    pub fn unenforced(&self) -> crate::admin::Unenforced {
        use crate::admin::{Holder, Unenforced};
        let u = Unenforced::new();
        match self.fair_queue.as_ref().map(|q| q.tenant) {
            None => u
                .field(Holder::Key, "weight", NO_FAIR_QUEUE)
                .field(Holder::Team, "weight", NO_FAIR_QUEUE),
            Some(TenantBy::Key) => u.field(
                Holder::Team,
                "weight",
                "the fair queue's tenants are keys (`[fair_queue] tenant = \"key\"`), each queued with its own weight; set `tenant = \"team\"` to queue by team",
            ),
            Some(TenantBy::Team) => u.field(
                Holder::KeyInTeam,
                "weight",
                "the fair queue's tenants are teams (`[fair_queue] tenant = \"team\"`): a key in a team is queued with its team's weight; set the team's",
            ),
        }
    }

    /// The configured access groups.
    pub fn access_groups(&self) -> AccessGroups {
        AccessGroups::new(self.access_groups.clone())
    }

    /// The `[console]` settings (the defaults when the section is absent).
    pub fn console(&self) -> ConsoleConfig {
        self.console_section.clone().unwrap_or_default()
    }

    /// The admin API's master key, when `keys.master_key_env` is set.
    pub fn master_key(&self) -> Option<String> {
        let var = self.keys.master_key_env.as_ref()?;
        std::env::var(var).ok().filter(|v| !v.is_empty())
    }

    /// The static keys, read from the environment.
    pub fn static_keys(&self) -> Result<Vec<StaticKey>, ConfigError> {
        let mut out = Vec::with_capacity(self.keys.static_keys.len());
        for (i, s) in self.keys.static_keys.iter().enumerate() {
            let key = std::env::var(&s.key_env).map_err(|_| {
                self.err(
                    format!("keys.static[{i}].key_env"),
                    format!("environment variable `{}` is not set", s.key_env),
                )
            })?;
            out.push(StaticKey {
                key: key.trim().to_owned(),
                alias: s.alias.clone(),
                grants: s.models.clone(),
                limits: Limits {
                    rpm: s.rpm_limit,
                    tpm: s.tpm_limit,
                    max_budget: s.max_budget,
                    budget_period: s.budget_duration.as_deref().and_then(|p| p.parse().ok()),
                    weight: s.weight.unwrap_or(1).max(1),
                },
            });
        }
        Ok(out)
    }

    /// Where keys are kept: `keys.url` (or the variable `keys.url_env`
    /// names), else the older `keys.store`/`keys.sqlite_path`, else
    /// `sqlite://tollgate.db`.
    pub fn key_location(&self) -> Result<KeyLocation, ConfigError> {
        let k = &self.keys;
        let older = k.store.is_some() || k.sqlite_path.is_some();
        let url = match (&k.url, &k.url_env) {
            (Some(_), Some(_)) => {
                return Err(self.err("keys.url_env", "give `url` or `url_env`, not both"));
            }
            (Some(u), None) => Some((u.clone(), "keys.url")),
            (None, Some(var)) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Some((v.trim().to_owned(), "keys.url_env")),
                _ => {
                    return Err(self.err(
                        "keys.url_env",
                        format!("environment variable `{var}` is not set"),
                    ));
                }
            },
            (None, None) => None,
        };
        let Some((url, field)) = url else {
            return match (k.store, &k.sqlite_path) {
                (Some(StoreKind::Memory), Some(_)) => Err(self.err(
                    "keys.sqlite_path",
                    "is for `store = \"sqlite\"`; remove it or the `store` line",
                )),
                (Some(StoreKind::Memory), None) => Ok(KeyLocation::Memory),
                (_, Some(p)) if p.as_os_str().is_empty() => {
                    Err(self.err("keys.sqlite_path", "must not be empty"))
                }
                (_, path) => Ok(KeyLocation::Sqlite(
                    path.clone().unwrap_or_else(|| PathBuf::from("tollgate.db")),
                )),
            };
        };
        if older {
            let other = if k.store.is_some() {
                "store"
            } else {
                "sqlite_path"
            };
            return Err(self.err(
                field,
                format!("give the store as `url` alone; remove `keys.{other}` (`url = \"sqlite://PATH\"` replaces `store`/`sqlite_path`)"),
            ));
        }
        if url == "memory" || url == "memory://" {
            return Ok(KeyLocation::Memory);
        }
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(self.err(
                    field,
                    "`sqlite://` needs a file path, e.g. `sqlite://tollgate.db`",
                ));
            }
            return Ok(KeyLocation::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(KeyLocation::Postgres(url));
        }
        // Name only the scheme: the rest may hold a password.
        let scheme = url.split_once("://").map_or("(no scheme)", |(s, _)| s);
        Err(self.err(
            field,
            format!("a key store URL with the scheme `{scheme}` is not supported; use `sqlite://PATH`, `postgres://USER@HOST:PORT/DB` or `memory`"),
        ))
    }

    /// Opens the configured key store (SQLite work runs on the blocking pool).
    pub async fn key_store(&self) -> Result<Arc<dyn KeyStore>, ConfigError> {
        let field = if self.keys.url_env.is_some() {
            "keys.url_env"
        } else {
            "keys.url"
        };
        match self.key_location()? {
            KeyLocation::Memory => Ok(Arc::new(MemoryStore::new())),
            #[cfg(feature = "sqlite")]
            KeyLocation::Sqlite(path) => {
                let field = if self.keys.url.is_some() || self.keys.url_env.is_some() {
                    field
                } else {
                    "keys.sqlite_path"
                };
                let store =
                    tokio::task::spawn_blocking(move || crate::keys::SqliteStore::open(path))
                        .await
                        .map_err(|e| self.err(field, e.to_string()))?
                        .map_err(|e| self.err(field, e.to_string()))?;
                Ok(Arc::new(store))
            }
            #[cfg(not(feature = "sqlite"))]
            KeyLocation::Sqlite(_) => {
                Err(self.err("keys.store", "this build has no `sqlite` feature"))
            }
            #[cfg(feature = "postgres")]
            KeyLocation::Postgres(url) => Ok(Arc::new(self.postgres_store(&url).await?)),
            #[cfg(not(feature = "postgres"))]
            KeyLocation::Postgres(_) => {
                Err(self.err(field, "this build has no `postgres` feature"))
            }
        }
    }

    #[cfg(feature = "postgres")]
    async fn postgres_store(&self, url: &str) -> Result<crate::keys::PostgresStore, ConfigError> {
        let field = if self.keys.url_env.is_some() {
            "keys.url_env"
        } else {
            "keys.url"
        };
        crate::keys::PostgresStore::connect_with(
            url,
            crate::keys::postgres::PostgresOptions {
                pool_size: self.keys.pool_size,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| self.err(field, e.to_string()))
    }

    /// The keyring: the store loaded into memory, the static keys, the
    /// access groups, the default grants, grants checked against the groups.
    /// With a PostgreSQL store, the keyring also follows the database's
    /// change feed (other replicas' writes), polling every `keys.change_poll_ms`.
    pub async fn keyring(&self) -> Result<Keyring, ConfigError> {
        let backend = self.key_backend().await?;
        self.keyring_on(&backend).await
    }

    /// The configured key store, opened once: a reload builds its keyring
    /// over the same store ([`keyring_on`](Self::keyring_on)).
    pub async fn key_backend(&self) -> Result<KeyBackend, ConfigError> {
        #[cfg(feature = "postgres")]
        if let KeyLocation::Postgres(url) = self.key_location()? {
            let store = self.postgres_store(&url).await?;
            return Ok(KeyBackend {
                store: Arc::new(store.clone()),
                postgres: Some(store),
            });
        }
        Ok(KeyBackend {
            store: self.key_store().await?,
            #[cfg(feature = "postgres")]
            postgres: None,
        })
    }

    /// A keyring over `backend`'s store with this configuration's access
    /// groups, model names, default grants and static keys (see
    /// [`keyring`](Self::keyring)); with PostgreSQL, following the change feed.
    pub async fn keyring_on(&self, backend: &KeyBackend) -> Result<Keyring, ConfigError> {
        let keyring = self.keyring_over(backend.store.clone()).await?;
        #[cfg(feature = "postgres")]
        if let Some(store) = &backend.postgres {
            store.follow(&keyring, Duration::from_millis(self.keys.change_poll_ms));
        }
        Ok(keyring)
    }

    /// Whether `next` may replace this running configuration without a
    /// restart: an error names the first setting that differs and needs one
    /// (`server.listen`, `server.worker_threads`, `server.metrics`,
    /// `server.shutdown_grace_ms`, every `[keys]` field but `default_models`
    /// and `static`, `[state]`, `[spend]`, `[telemetry]`,
    /// `budgets.time_zone`). Everything else (groups, deployments, prices,
    /// access groups, fallbacks, `[router]`, `[upstream]`, `[rate_limits]`,
    /// `[fair_queue]`, the global budget, `[pricing]`,
    /// `server.max_body_bytes`, the keys' default grants and static keys)
    /// takes effect. `next` must have been checked ([`from_file`](Self::from_file)).
    ///
    /// ```
    /// use tollgate::config::Config;
    /// let group = "[[groups]]\nname = \"m\"\n[[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"http://127.0.0.1:9000/v1\"\n";
    /// let running = Config::from_toml("gw.toml", group).unwrap();
    /// let more = Config::from_toml("gw.toml", &format!("{group}[rate_limits]\nrequests_per_minute = 60\n")).unwrap();
    /// running.reload_check(&more).unwrap();
    /// let moved = Config::from_toml("gw.toml", &format!("[server]\nlisten = \"127.0.0.1:4001\"\n{group}")).unwrap();
    /// assert_eq!(running.reload_check(&moved).unwrap_err().field(), "server.listen");
    /// ```
    pub fn reload_check(&self, next: &Config) -> Result<(), ConfigError> {
        let restart = |field: &str| {
            Err(next.err(
                field,
                "cannot change without a restart; the running configuration stays (put the old \
                 value back to reload the rest, or restart the gateway)",
            ))
        };
        macro_rules! same {
            ($($field:ident).+) => {
                if self.$($field).+ != next.$($field).+ {
                    return restart(stringify!($($field).+));
                }
            };
        }
        same!(server.listen);
        same!(server.worker_threads);
        same!(server.metrics);
        same!(server.shutdown_grace_ms);
        same!(keys.url);
        same!(keys.url_env);
        same!(keys.store);
        same!(keys.sqlite_path);
        same!(keys.change_poll_ms);
        same!(keys.pool_size);
        same!(keys.master_key_env);
        same!(state.url);
        same!(state.ca_file);
        same!(state.prefix);
        same!(state.on_unavailable_budget);
        same!(state.on_unavailable_rate_limit);
        same!(state.timeout_ms);
        same!(state.reservation_ttl_ms);
        same!(spend);
        same!(telemetry);
        let zone = |c: &Config| {
            c.budgets
                .as_ref()
                .map_or_else(|| Budgets::default().time_zone, |b| b.time_zone.clone())
        };
        if zone(self) != zone(next) {
            return restart("budgets.time_zone");
        }
        Ok(())
    }

    /// What `next` changes in the model groups, by name (for the log line of
    /// a reload; no URL, header or credential).
    pub fn group_changes(&self, next: &Config) -> GroupChanges {
        let names = |c: &Config| -> BTreeMap<String, String> {
            // The whole group's settings as text, only to compare them.
            c.groups
                .iter()
                .map(|g| (g.name.clone(), format!("{g:?}")))
                .collect()
        };
        let (old, new) = (names(self), names(next));
        GroupChanges {
            added: new
                .keys()
                .filter(|n| !old.contains_key(*n))
                .cloned()
                .collect(),
            removed: old
                .keys()
                .filter(|n| !new.contains_key(*n))
                .cloned()
                .collect(),
            changed: new
                .iter()
                .filter(|(n, g)| old.get(*n).is_some_and(|o| o != *g))
                .map(|(n, _)| n.clone())
                .collect(),
        }
    }

    async fn keyring_over(&self, store: Arc<dyn KeyStore>) -> Result<Keyring, ConfigError> {
        let mut b = Keyring::builder_arc(store)
            .access_groups(self.access_groups())
            .models(self.groups.iter().map(|g| g.name.clone()))
            .default_grants(self.keys.default_models.clone());
        for s in self.static_keys()? {
            b = b.static_key(s);
        }
        b.build().await.map_err(|e| self.err("keys", e.to_string()))
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
            .connect_timeout(Duration::from_millis(self.upstream.connect_timeout_ms))
            .http2_prior_knowledge(self.upstream.http2_prior_knowledge);
        if let Some(ca) = &self.upstream.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| self.err("upstream.ca_file", format!("cannot be read: {e}")))?;
            b = b.add_root_certificates_pem(&pem);
        }
        b.build()
            .map_err(|e| self.err("upstream.ca_file", e.to_string()))
    }

    /// The router's retry and cooldown policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        let r = &self.router;
        let ms = Duration::from_millis;
        RetryPolicy {
            num_retries: r.num_retries,
            backoff: ms(r.backoff_ms),
            max_backoff: ms(r.max_backoff_ms),
            min_rate_limit_cooldown: ms(r.min_rate_limit_cooldown_ms),
            max_rate_limit_cooldown: ms(r.max_rate_limit_cooldown_ms),
            credential_cooldown: ms(r.credential_cooldown_ms),
            model_gone_cooldown: ms(r.model_gone_cooldown_ms),
            route_cooldown: ms(r.route_not_served_cooldown_ms),
            failures: FailureWindow {
                threshold: r.failure_threshold,
                window: ms(r.failure_window_ms),
            },
            failure_cooldown: ms(r.failure_cooldown_ms),
        }
    }

    /// Every group's fallback chains, checked: an unknown group or a cycle
    /// is an error naming the chain's field.
    pub fn chains(&self) -> Result<Chains, ConfigError> {
        let mut b = Chains::builder(self.groups.iter().map(|g| g.name.as_str()));
        for g in &self.groups {
            if !g.fallbacks.is_empty() {
                b = b.fallbacks(&g.name, &g.fallbacks);
            }
            if !g.context_window_fallbacks.is_empty() {
                b = b.context_window_fallbacks(&g.name, &g.context_window_fallbacks);
            }
        }
        b.build().map_err(|e| {
            let gi = self
                .groups
                .iter()
                .position(|g| g.name == e.group())
                .unwrap_or(0);
            self.err(format!("groups[{gi}].{}", e.kind()), e.to_string())
        })
    }

    /// The `Fallback` layer over the checked chains.
    pub fn fallback_layer(&self) -> Result<FallbackLayer, ConfigError> {
        Ok(FallbackLayer::new(self.chains()?))
    }

    /// The router over every group's deployments, sharing one client, on
    /// the system clock.
    pub fn router(&self) -> Result<Router<Provider>, ConfigError> {
        self.router_with_clock(Arc::new(SystemClock))
    }

    /// The router with cooldowns measured on `clock` (tests move it by hand).
    pub fn router_with_clock(
        &self,
        clock: Arc<dyn Clock>,
    ) -> Result<Router<Provider>, ConfigError> {
        self.router_with_cooldowns(clock, None)
    }

    /// An `api = "azure"` deployment's [`Azure`](crate::provider::azure::Azure)
    /// settings (checked, the environment read); `None` for other APIs. An
    /// error names the field under the deployment.
    fn azure_deployment(
        &self,
        d: &DeploymentConfig,
        group: &str,
    ) -> Result<Option<crate::provider::azure::Azure>, (String, String)> {
        match (d.api.as_deref().and_then(Api::from_name), &d.azure) {
            (Some(Api::Azure), Some(az)) => az
                .build(d.model.as_deref().unwrap_or(group), d.api_key_env.is_some())
                .map(Some),
            (Some(Api::Azure), None) => Err((
                "azure".into(),
                "`api = \"azure\"` needs `[groups.deployments.azure]` (style, deployment, api_version, auth)".into(),
            )),
            (_, Some(_)) => Err((
                "azure".into(),
                "`[groups.deployments.azure]` is for `api = \"azure\"` deployments".into(),
            )),
            (_, None) => Ok(None),
        }
    }

    /// The router with cooldowns on `clock`, kept in `store` (`None`: in
    /// this process).
    pub fn router_with_cooldowns(
        &self,
        clock: Arc<dyn Clock>,
        store: Option<Arc<dyn CooldownStore>>,
    ) -> Result<Router<Provider>, ConfigError> {
        let mut router = Router::builder();
        if let Some(store) = store {
            router = router.cooldown_store(store);
        }
        self.router_from(router, clock)
    }

    /// The router of this configuration replacing `prev` (a reload): the
    /// deployments both have (same group, same name) keep their cooldowns
    /// and in-flight counts, in `prev`'s cooldown store
    /// ([`RouterBuilder::carry_over`](crate::router::RouterBuilder::carry_over)).
    pub fn router_after(
        &self,
        clock: Arc<dyn Clock>,
        prev: &Router<Provider>,
    ) -> Result<Router<Provider>, ConfigError> {
        self.router_from(Router::builder().carry_over(prev), clock)
    }

    fn router_from(
        &self,
        router: crate::router::RouterBuilder<Provider>,
        clock: Arc<dyn Clock>,
    ) -> Result<Router<Provider>, ConfigError> {
        let client = self.http_client()?;
        let timeouts = self.timeouts();
        let mut router = router.policy(self.retry_policy()).clock(clock);
        for (gi, g) in self.groups.iter().enumerate() {
            let mut deployments = Vec::with_capacity(g.deployments.len());
            for (di, d) in g.deployments.iter().enumerate() {
                let at = |f: &str| format!("groups[{gi}].deployments[{di}].{f}");
                let model = d.model.as_deref().unwrap_or(&g.name);
                let name = deployment_name(&g.name, d);
                let mut b = Provider::builder(&d.provider, &d.upstream_base_url())
                    .map_err(|e| self.err(at("base_url"), e.to_string()))?
                    .client(client.clone())
                    .timeouts(timeouts)
                    .max_response_bytes(self.upstream.max_response_bytes)
                    // `Budget` is always in the reference stack (a key's
                    // own budget needs no `[budgets]`): it meters streams.
                    .include_usage(true)
                    .api(
                        d.api
                            .as_deref()
                            .and_then(Api::from_name)
                            .unwrap_or_default(),
                    );
                if d.model.is_some() {
                    b = b.model(model);
                }
                if let Some(azure) = self
                    .azure_deployment(d, &g.name)
                    .map_err(|(f, m)| self.err(at(&f), m))?
                {
                    b = b.azure(azure);
                }
                if d.is_bedrock() {
                    let auth = d.bedrock_auth().map_err(|(f, e)| self.err(at(f), e))?;
                    let region = d.bedrock.as_ref().map_or("", |b| b.region.as_str());
                    b = b.bedrock(region, auth);
                } else if let Some(vertex) = d.vertex().map_err(|(f, e)| self.err(at(f), e))? {
                    b = b.vertex(vertex);
                } else if let Some(var) = &d.api_key_env {
                    b = b
                        .api_key_env(var)
                        .map_err(|e| self.err(at("api_key_env"), e.to_string()))?;
                }
                for (k, v) in &d.headers {
                    b = b
                        .header(k, v)
                        .map_err(|e| self.err(at("headers"), e.to_string()))?;
                }
                let mut dep = Deployment::new(&name, b.build(), d.weight);
                if let Some(n) = d.capacity {
                    dep = dep.capacity(n);
                }
                deployments.push(dep);
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
        assert!(c.server.metrics, "/metrics is served by default");
        assert_eq!(c.server.worker_threads, None, "one thread per core");
        let one = Config::from_toml("gw.toml", &format!("[server]\nworker_threads = 1\n{OK}"));
        assert_eq!(one.unwrap().server.worker_threads, Some(1));
        let e = err(&format!("[server]\nworker_threads = 0\n{OK}"));
        assert!(e.to_string().contains("server.worker_threads"), "{e}");
        assert_eq!(c.groups[0].deployments[0].weight, 1);
        assert!(c.router().unwrap().has_model("g"));
    }

    #[test]
    fn the_console_section_has_defaults_and_refuses_bad_fields() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        assert!(c.console().enabled, "on by default, with the admin API");
        assert!(!c.console().secure_cookie);
        assert_eq!(c.console().session_idle_ms, 30 * 60 * 1000);
        let admin = "[keys]\nmaster_key_env = \"PATH\"\n";
        let text = format!(
            "[console]\nenabled = false\nsecure_cookie = true\nsession_idle_ms = 60000\n{admin}{OK}"
        );
        let c = Config::from_toml("gw.toml", &text).unwrap();
        assert!(!c.console().enabled && c.console().secure_cookie);
        assert_eq!(c.console().session_idle_ms, 60_000);
        let e = err(&format!("[console]\nsession_idle_ms = 0\n{admin}{OK}"));
        assert!(e.to_string().contains("console.session_idle_ms"), "{e}");
        let e = err(&format!("[console]\nport = 8080\n{admin}{OK}"));
        assert!(e.to_string().contains("port"), "{e}");
        // Without the admin API the console would not be served: the
        // section is refused, not ignored (`enabled = false` says so itself).
        let e = err(&format!("[console]\nsecure_cookie = true\n{OK}"));
        assert!(e.to_string().contains("keys.master_key_env"), "{e}");
        Config::from_toml("gw.toml", &format!("[console]\nenabled = false\n{OK}")).unwrap();
    }

    #[test]
    fn a_reload_may_change_the_groups_and_limits_but_not_what_needs_a_restart() {
        let at = |text: &str| Config::from_toml("gw.toml", text).unwrap();
        let running = at(&format!("[budgets]\nglobal_max_usd = 10.0\n{OK}"));
        // Reloadable: groups, prices, access groups, limits, queue, global budget.
        let next = at(&format!(
            "[budgets]\nglobal_max_usd = 20.0\n[rate_limits]\nrequests_per_minute = 5\n\
             [fair_queue]\ncapacity = 8\n[access_groups]\nfast = [\"g\"]\n\
             [keys]\ndefault_models = [\"fast\"]\n\
             [router]\nnum_retries = 0\n[upstream]\nidle_timeout_ms = 1000\n{OK}\
             price_in_per_mtok = 1.0\n\
             [[groups]]\nname = \"h\"\n[[groups.deployments]]\nprovider = \"mock\"\n\
             base_url = \"http://127.0.0.1:9001/v1\"\n"
        ));
        running.reload_check(&next).unwrap();
        let changes = running.group_changes(&next);
        assert_eq!(changes.added, ["h"]);
        assert!(changes.removed.is_empty());
        assert_eq!(changes.changed, ["g"], "g's deployment has a price now");
        let back = next.group_changes(&running);
        assert_eq!(
            (back.added.len(), back.removed.as_slice()),
            (0, &["h".to_owned()][..])
        );

        // Each needs a restart: refused naming the field and the new file.
        for (section, field) in [
            ("[server]\nlisten = \"127.0.0.1:4001\"", "server.listen"),
            ("[server]\nworker_threads = 2", "server.worker_threads"),
            ("[server]\nmetrics = false", "server.metrics"),
            (
                "[server]\nshutdown_grace_ms = 1",
                "server.shutdown_grace_ms",
            ),
            ("[keys]\nurl = \"memory\"", "keys.url"),
            ("[keys]\nmaster_key_env = \"PATH\"", "keys.master_key_env"),
            ("[keys]\npool_size = 2", "keys.pool_size"),
            ("[state]\nprefix = \"other:\"", "state.prefix"),
            ("[spend]\nqueue = 5", "spend"),
            (
                if cfg!(feature = "otel") {
                    "[telemetry]\nenabled = false"
                } else {
                    "[spend]\nbatch = 5"
                },
                if cfg!(feature = "otel") {
                    "telemetry"
                } else {
                    "spend"
                },
            ),
            (
                "[budgets]\nglobal_max_usd = 10.0\ntime_zone = \"Europe/Paris\"",
                "budgets.time_zone",
            ),
        ] {
            let text = if section.starts_with("[budgets]") {
                format!("{section}\n{OK}")
            } else {
                format!("[budgets]\nglobal_max_usd = 10.0\n{section}\n{OK}")
            };
            let next = Config::from_toml("new.toml", &text).unwrap();
            let e = running.reload_check(&next).unwrap_err();
            assert_eq!(e.field(), field, "{e}");
            assert!(e.to_string().starts_with("new.toml: "), "{e}");
            assert!(e.to_string().contains("restart"), "{e}");
        }
    }

    #[test]
    fn http2_prior_knowledge_is_off_by_default_and_reaches_the_client() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        assert!(!c.upstream.http2_prior_knowledge);
        assert!(!c.http_client().unwrap().http2_prior_knowledge());
        let on = format!("[upstream]\nhttp2_prior_knowledge = true\n{OK}");
        let c = Config::from_toml("gw.toml", &on).unwrap();
        assert!(c.upstream.http2_prior_knowledge);
        assert!(c.http_client().unwrap().http2_prior_knowledge());
        let e = err(&format!(
            "[upstream]\nhttp2_prior_knowledge = \"yes\"\n{OK}"
        ));
        assert!(e.to_string().contains("expected a boolean (line 2)"), "{e}");
        let e = err(&format!("[upstream]\nhttp2_prior_knowlege = true\n{OK}"));
        assert!(
            e.to_string()
                .contains("unknown field `http2_prior_knowlege`"),
            "{e}"
        );
    }

    #[test]
    fn metrics_can_be_switched_off_and_must_be_a_bool() {
        let c = Config::from_toml("gw.toml", &format!("[server]\nmetrics = false\n{OK}")).unwrap();
        assert!(!c.server.metrics);
        let e = err(&format!("[server]\nmetrics = \"yes\"\n{OK}"));
        assert!(e.to_string().contains("expected a boolean (line 2)"), "{e}");
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

        let e = err(&format!("[router]\nfailure_threshold = 0\n{OK}"));
        assert_eq!(e.field(), "router.failure_threshold");
        let e = err(&format!("{OK}\ncapacity = 0\n"));
        assert_eq!(e.field(), "groups[0].deployments[0].capacity");
        let e = err(&format!(
            "{OK}{}",
            OK.replace("[[groups]]\n        name = \"g\"", "")
        ));
        assert!(
            e.to_string().contains("two deployments named `mock/g`"),
            "{e}"
        );
    }

    fn two_groups(extra_a: &str, extra_b: &str) -> String {
        format!(
            r#"
            [[groups]]
            name = "a"
            {extra_a}
            [[groups.deployments]]
            provider = "mock"
            base_url = "http://127.0.0.1:9000/v1"

            [[groups]]
            name = "b"
            {extra_b}
            [[groups.deployments]]
            provider = "mock"
            base_url = "http://127.0.0.1:9000/v1"
            "#
        )
    }

    #[test]
    fn fallback_chains_are_checked_at_start() {
        let c = Config::from_toml(
            "gw.toml",
            &two_groups(
                r#"fallbacks = ["b"]"#,
                r#"context_window_fallbacks = ["a"]"#,
            ),
        )
        .unwrap();
        assert_eq!(c.chains().unwrap().fallbacks_of("a"), ["b"]);
        c.fallback_layer().unwrap();

        let e = err(&two_groups("", r#"fallbacks = ["gpt-4o-typo"]"#));
        assert_eq!(e.field(), "groups[1].fallbacks");
        assert!(e.to_string().contains("`gpt-4o-typo`"), "{e}");
        assert!(e.to_string().starts_with("gw.toml: "), "{e}");

        let e = err(&two_groups(r#"fallbacks = ["b"]"#, r#"fallbacks = ["a"]"#));
        assert_eq!(e.field(), "groups[0].fallbacks");
        assert!(e.to_string().contains("`a` → `b` → `a`"), "{e}");

        let e = err(&two_groups(r#"context_window_fallbacks = ["a"]"#, ""));
        assert_eq!(e.field(), "groups[0].context_window_fallbacks");
    }

    #[test]
    fn router_settings_become_the_policy() {
        let c = Config::from_toml(
            "gw.toml",
            &format!(
                "[router]\nnum_retries = 5\nfailure_threshold = 4\nfailure_window_ms = 500\nmodel_gone_cooldown_ms = 10\n{OK}\ncapacity = 8\n"
            ),
        )
        .unwrap();
        let p = c.retry_policy();
        assert_eq!(p.num_retries, 5);
        assert_eq!(p.failures.threshold, 4);
        assert_eq!(p.failures.window, Duration::from_millis(500));
        assert_eq!(p.model_gone_cooldown, Duration::from_millis(10));
        assert_eq!(
            p.credential_cooldown,
            RetryPolicy::default().credential_cooldown
        );
        assert_eq!(c.router().unwrap().policy(), &p);
        assert_eq!(
            Config::from_toml("gw.toml", OK).unwrap().retry_policy(),
            RetryPolicy::default()
        );
    }

    #[test]
    fn keys_and_access_groups_are_checked() {
        let e = err(&format!(
            "{OK}\n[access_groups]\nfast = [\"g\", \"nope\"]\n"
        ));
        assert_eq!(e.field(), "access_groups.fast[1]");
        let e = err(&format!("{OK}\n[access_groups]\ng = [\"g\"]\n"));
        assert!(e.to_string().contains("also a model group"), "{e}");
        let e = err(&format!("{OK}\n[keys]\ndefault_models = [\"gg\"]\n"));
        assert_eq!(e.field(), "keys.default_models[0]");
        let e = err(&format!("{OK}\n[keys]\nstore = \"redis\"\n"));
        assert!(e.to_string().contains("redis"), "{e}");
        let e = err(&format!(
            "{OK}\n[keys]\nmaster_key_env = \"TOLLGATE_TEST_SURELY_UNSET\"\n"
        ));
        assert_eq!(e.field(), "keys.master_key_env");
        let e = err(&format!(
            "{OK}\n[[keys.static]]\nkey_env = \"TOLLGATE_TEST_SURELY_UNSET\"\n"
        ));
        assert_eq!(e.field(), "keys.static[0].key_env");
        let c = Config::from_toml(
            "gw.toml",
            &format!("{OK}\n[access_groups]\nfast = [\"g\", \"x/*\"]\n[keys]\nstore = \"memory\"\ndefault_models = [\"fast\"]\n"),
        )
        .unwrap();
        assert_eq!(c.keys.store, Some(StoreKind::Memory));
        assert_eq!(c.key_location().unwrap(), KeyLocation::Memory);
        assert!(c.access_groups().contains("fast"));
        assert_eq!(
            Config::from_toml("gw.toml", OK)
                .unwrap()
                .key_location()
                .unwrap(),
            KeyLocation::Sqlite(PathBuf::from("tollgate.db"))
        );
    }

    #[test]
    fn key_store_urls() {
        let at = |keys: &str| Config::from_toml("gw.toml", &format!("{OK}\n[keys]\n{keys}\n"));
        let loc = |keys: &str| at(keys).unwrap().key_location().unwrap();
        assert_eq!(loc("url = \"memory\""), KeyLocation::Memory);
        assert_eq!(
            loc("url = \"sqlite:///var/lib/tg.db\""),
            KeyLocation::Sqlite(PathBuf::from("/var/lib/tg.db"))
        );
        assert_eq!(
            loc("url = \"sqlite://tg.db\""),
            KeyLocation::Sqlite(PathBuf::from("tg.db"))
        );
        assert_eq!(
            loc("store = \"sqlite\"\nsqlite_path = \"x.db\""),
            KeyLocation::Sqlite(PathBuf::from("x.db"))
        );
        let e = at("url = \"redis://u:hunter2hunter2@h/0\"").unwrap_err();
        assert_eq!(e.field(), "keys.url");
        assert!(
            e.to_string().contains("`redis`") && !e.to_string().contains("hunter2"),
            "{e}"
        );
        let e = at("url = \"sqlite://\"").unwrap_err();
        assert_eq!(e.field(), "keys.url");
        let e = at("url = \"memory\"\nstore = \"sqlite\"").unwrap_err();
        assert!(e.to_string().contains("remove `keys.store`"), "{e}");
        let e = at("store = \"memory\"\nsqlite_path = \"x.db\"").unwrap_err();
        assert_eq!(e.field(), "keys.sqlite_path");
        let e = at("url_env = \"TOLLGATE_TEST_SURELY_UNSET\"").unwrap_err();
        assert_eq!(e.field(), "keys.url_env");
        let e = at("url = \"memory\"\nchange_poll_ms = 1").unwrap_err();
        assert_eq!(e.field(), "keys.change_poll_ms");
        let e = at("url = \"memory\"\npool_size = 0").unwrap_err();
        assert_eq!(e.field(), "keys.pool_size");
        let e = at("uri = \"memory\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `uri`"), "{e}");
        #[cfg(feature = "postgres")]
        {
            let c = at("url = \"postgres://tg:pw@127.0.0.1:5432/tg\"").unwrap();
            assert!(matches!(
                c.key_location().unwrap(),
                KeyLocation::Postgres(_)
            ));
            assert!(!format!("{:?}", c.key_location().unwrap()).contains("pw"));
            let e = at("url = \"postgres://u:pw0rdpw0rd@h:notaport/db\"").unwrap_err();
            assert_eq!(e.field(), "keys.url");
            assert!(
                e.to_string().contains("`port`") && !e.to_string().contains("pw0rd"),
                "{e}"
            );
            // libpq's TLS parameters are read (tokio-postgres alone refuses them).
            at("url = \"postgres://tg:pw@db.internal/tg?sslmode=verify-full\"").unwrap();
            let e = at(
                "url = \"postgres://tg:pw@h/tg?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem\"",
            )
            .unwrap_err();
            assert_eq!(e.field(), "keys.url");
            let msg = e.to_string();
            assert!(
                msg.contains("sslrootcert")
                    && msg.contains("/nonexistent/ca.pem")
                    && !msg.contains("pw@"),
                "{msg}"
            );
            let e = at("url = \"postgres://tg:pw@h/tg?sslmode=verify\"").unwrap_err();
            assert!(e.to_string().contains("sslmode `verify`"), "{e}");
        }
    }

    #[test]
    fn state_section_is_checked() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        assert!(c.state.url.is_none(), "absent: state in process");
        let state = |body: &str| format!("[state]\n{body}\n{OK}");
        let e = err(&state(
            "url = \"redis://127.0.0.1:6379\"\non_unavailable_budget = \"open\"",
        ));
        assert_eq!(e.field(), "state.on_unavailable_budget");
        assert!(e.to_string().contains("unbudgeted"), "{e}");
        let e = err(&state("url = \"http://user:pw@127.0.0.1\""));
        assert_eq!(e.field(), "state.url");
        assert!(!e.to_string().contains("pw"), "never echoes the URL: {e}");
        let e = err(&state("url = \"redis://127.0.0.1\"\ntimeout_ms = 0"));
        assert_eq!(e.field(), "state.timeout_ms");
        let e = err(&state(
            "url = \"redis://127.0.0.1\"\non_unavailable_rate_limit = \"maybe\"",
        ));
        assert!(e.to_string().contains("`closed` or `open`"), "{e}");
        let c = Config::from_toml(
            "gw.toml",
            &state("url = \"redis://127.0.0.1:6379/0\"\nprefix = \"t:\"\non_unavailable_rate_limit = \"open\""),
        )
        .unwrap();
        assert_eq!(c.state.on_unavailable_rate_limit, OnUnavailable::Open);
        assert_eq!(c.state.timeout_ms, 500);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn state_tls_is_checked() {
        let state = |body: &str| format!("[state]\n{body}\n{OK}");
        Config::from_toml(
            "gw.toml",
            &state("url = \"rediss://:pw@cache.internal:6380/0\""),
        )
        .unwrap();
        let e = err(&state("url = \"rediss://:hunter2@h:6380/#insecure\""));
        assert_eq!(e.field(), "state.url");
        assert!(
            e.to_string().contains("state.ca_file") && !e.to_string().contains("hunter2"),
            "{e}"
        );
        let e = err(&state(
            "url = \"redis://h:6379\"\nca_file = \"/etc/ssl/ca.pem\"",
        ));
        assert_eq!(e.field(), "state.ca_file");
        assert!(e.to_string().contains("rediss://"), "{e}");
        let e = err(&state(
            "url = \"rediss://h:6380\"\nca_file = \"/nonexistent/ca.pem\"",
        ));
        assert_eq!(e.field(), "state.ca_file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("tollgate-state-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "no certificate here").unwrap();
        let e = err(&state(&format!(
            "url = \"rediss://h:6380\"\nca_file = \"{}\"",
            not_pem.display()
        )));
        assert_eq!(e.field(), "state.ca_file");
        assert!(e.to_string().contains("no certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
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
                [fair_queue]
                capacity = 8
                max_wait_ms = 500
                tenant = "team"
                [fair_queue.group_capacity]
                g = 2
                {OK}"#
            ),
        )
        .unwrap();
        let r = c.rate_limits.as_ref().unwrap();
        assert_eq!(r.limits_for(None, None), RateQuota::per_minute(60, 10_000));
        assert_eq!(
            r.limits_for(Some(5), None),
            RateQuota::per_minute(5, 10_000)
        );
        assert_eq!(
            r.limits_for(None, Some(1 << 40)),
            RateQuota::per_minute(60, u32::MAX)
        );
        assert_eq!(r.default_max_output_tokens, 1024);
        let q = c.fair_queue.as_ref().unwrap();
        assert_eq!(q.tenant, TenantBy::Team);
        let s = q.settings();
        assert_eq!((s.capacity_for("g"), s.capacity_for("h")), (2, 8));
        assert_eq!(q.max_queue_per_tenant, 1000);

        let e = err(&format!("[fair_queue]\ncapacity = 0\n{OK}"));
        assert_eq!(e.field(), "fair_queue.capacity");
        let e = err(&format!("[fair_queue.group_capacity]\nnope = 2\n{OK}"));
        assert_eq!(e.field(), "fair_queue.group_capacity.nope");
        assert!(e.to_string().contains("no model group `nope`"), "{e}");
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

    #[test]
    fn budgets_and_prices() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        // Without `[budgets]`: a ledger in UTC (keys' own budgets are
        // enforced), no global budget.
        assert_eq!(c.ledger().time_zone().iana_name(), Some("UTC"));
        assert!(c.global_budget().is_none());
        let priced = r#"
            [budgets]
            time_zone = "America/New_York"
            global_max_usd = 250.5
            global_period = "weekly"
            [[groups]]
            name = "g"
            price_in_per_mtok = 2.5
            price_out_per_mtok = 10
            max_output_tokens = 100
            [[groups.deployments]]
            provider = "cheap"
            base_url = "http://127.0.0.1:9000/v1"
            price_out_per_mtok = 8
        "#;
        let c = Config::from_toml("gw.toml", priced).unwrap();
        let ledger = c.ledger();
        assert_eq!(ledger.time_zone().iana_name(), Some("America/New_York"));
        let g = c.global_budget().unwrap();
        assert_eq!(
            (g.scope, g.max, g.period),
            (Scope::Global, 250_500_000, Period::Weekly)
        );
        let prices = format!("{:?}", c.prices());
        assert!(prices.contains("input_per_mtok: 2500000"), "{prices}");
        assert!(prices.contains("output_per_mtok: 8000000"), "{prices}");

        let e = err(&format!("[budgets]\ntime_zone = \"Mars/Olympus\"\n{OK}"));
        assert_eq!(e.field(), "budgets.time_zone");
        let e = err(&format!("[budgets]\nglobal_period = \"hourly\"\n{OK}"));
        assert_eq!(e.field(), "budgets.global_period");
        let e = err(&format!("[budgets]\nglobal_max_usd = -1\n{OK}"));
        assert_eq!(e.field(), "budgets.global_max_usd");
        let e = err(&priced.replace("price_in_per_mtok = 2.5", "price_in_per_mtok = -2.5"));
        assert_eq!(e.field(), "groups[0].price_in_per_mtok");
        let e = err(&priced.replace("price_out_per_mtok = 8", "price_out_per_mtok = nan"));
        assert_eq!(e.field(), "groups[0].deployments[0].price_out_per_mtok");
    }

    #[test]
    fn prices_come_from_the_table_when_the_config_sets_none() {
        let groups = r#"
            [[groups]]
            name = "gpt-4o-mini"
            [[groups.deployments]]
            provider = "openai"
            base_url = "http://127.0.0.1:9000/v1"
            [[groups]]
            name = "claude"
            [[groups.deployments]]
            provider = "anthropic"
            api = "anthropic"
            base_url = "http://127.0.0.1:9000/v1"
            model = "claude-sonnet-4-5"
            [[groups]]
            name = "local"
            [[groups.deployments]]
            provider = "vllm"
            base_url = "http://127.0.0.1:9000/v1"
            model = "llama-local"
            [[groups]]
            name = "set"
            price_in_per_mtok = 1
            price_out_per_mtok = 2
            [[groups.deployments]]
            provider = "vllm"
            base_url = "http://127.0.0.1:9000/v1"
            model = "gpt-4o"
        "#;
        let c = Config::from_toml("gw.toml", groups).unwrap();
        assert_eq!(c.unpriced(), ["local"]);
        let prices = format!("{:?}", c.prices());
        // gpt-4o-mini by the group's name, claude by its upstream model.
        assert!(prices.contains("input_per_mtok: 150000"), "{prices}");
        assert!(
            prices.contains("cache_write_per_mtok: Some(3750000)"),
            "{prices}"
        );
        // A group's own price wins over the table's (gpt-4o's is 2.5).
        assert!(!prices.contains("input_per_mtok: 2500000"), "{prices}");

        let c =
            Config::from_toml("gw.toml", &format!("[pricing]\nbuiltin = false\n{groups}")).unwrap();
        assert_eq!(c.unpriced(), ["gpt-4o-mini", "claude", "local"]);
        let e = err(&format!("[pricing]\nrequire = true\n{groups}"));
        assert_eq!(e.field(), "groups[2]");
        assert!(e.to_string().contains("`local` has no price"), "{e}");

        // A table file beside the config adds the missing model.
        let dir = std::env::temp_dir().join(format!("tollgate-prices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prices.toml"),
            "source = \"ours\"\nas_of = \"2026-12-01\"\n[models]\n\"llama-local\" = { input = 0.2, output = 0.4 }\n",
        )
        .unwrap();
        let c = Config::from_toml(
            dir.join("gw.toml"),
            &format!("[pricing]\ntable = \"prices.toml\"\nrequire = true\n{groups}"),
        )
        .unwrap();
        assert!(c.unpriced().is_empty());
        assert_eq!(c.price_table().sources().len(), 2);
        assert!(format!("{:?}", c.prices()).contains("input_per_mtok: 200000"));
        let e = Config::from_toml(
            dir.join("gw.toml"),
            &format!("[pricing]\ntable = \"missing.toml\"\n{groups}"),
        )
        .unwrap_err();
        assert_eq!(e.field(), "pricing.table");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spend_section() {
        let c = Config::from_toml("gw.toml", OK).unwrap();
        assert!(c.spend.enabled);
        assert_eq!((c.spend.queue, c.spend.batch), (10_000, 256));
        let c = Config::from_toml(
            "gw.toml",
            &format!("[spend]\nqueue = 50\nbatch = 5\nenabled = false\n{OK}"),
        )
        .unwrap();
        assert_eq!(
            (c.spend.queue, c.spend.batch, c.spend.enabled),
            (50, 5, false)
        );
        let e = err(&format!("[spend]\nqueue = 0\n{OK}"));
        assert_eq!(e.field(), "spend.queue");
        let e = err(&format!("[spend]\nbatch = 0\n{OK}"));
        assert_eq!(e.field(), "spend.batch");
        let e = err(&format!("[spend]\nqeue = 5\n{OK}"));
        assert!(e.to_string().contains("unknown field `qeue`"), "{e}");
    }

    /// Which AWS credentials a Bedrock deployment picks, the environment
    /// given: static ones when the access key id is set, else the container
    /// endpoint when its variables are set (the token file preferred), and
    /// field-named errors.
    #[test]
    fn bedrock_credentials_are_picked_from_the_environment() {
        use crate::provider::BedrockAuth;
        let bedrock = |toml: &str| -> BedrockConfig {
            toml::from_str(&format!("region = \"us-east-1\"\n{toml}")).unwrap()
        };
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let kind = |r: Result<BedrockAuth, (&'static str, String)>| match r {
            Ok(BedrockAuth::Aws(_)) => "static".to_owned(),
            Ok(BedrockAuth::Refreshing(source, _)) => format!("{source:?}"),
            Ok(BedrockAuth::ApiKey(_)) => "api_key".to_owned(),
            Err((field, message)) => format!("error {field}: {message}"),
        };
        let both: &[(&str, &str)] = &[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok3n-value"),
        ];
        let plain = bedrock("");
        assert_eq!(kind(plain.auth(None, &env(both))), "static");
        // No static key: the container endpoint, with its token.
        let container_only: &[(&str, &str)] = &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok3n-value"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token"),
        ];
        let picked = kind(plain.auth(None, &env(container_only)));
        assert!(picked.contains("http://127.0.0.1:9/creds"), "{picked}");
        assert!(picked.contains("/var/run/token"), "{picked}");
        assert!(!picked.contains("tok3n-value"), "{picked}");
        // The role and token file's variables: web identity, before the container.
        let irsa: &[(&str, &str)] = &[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/irsa/token"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
        ];
        let picked = kind(plain.auth(None, &env(irsa)));
        assert!(picked.contains("web_identity"), "{picked}");
        assert!(
            picked.contains("https://sts.us-east-1.amazonaws.com"),
            "{picked}"
        );
        assert!(picked.contains("/var/run/irsa/token"), "{picked}");
        let none = kind(bedrock("credentials = \"web_identity\"").auth(None, &env(&[])));
        assert!(none.starts_with("error bedrock.role_arn_env:"), "{none}");
        let plaintext = kind(
            bedrock("credentials = \"web_identity\"\nsts_endpoint = \"http://192.0.2.1/\"")
                .auth(None, &env(irsa)),
        );
        assert!(
            plaintext.starts_with("error bedrock.sts_endpoint:"),
            "{plaintext}"
        );
        // ECS's relative URI.
        let ecs: &[(&str, &str)] = &[(
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "/v2/credentials/abc",
        )];
        let picked = kind(plain.auth(None, &env(ecs)));
        assert!(
            picked.contains("169.254.170.2/v2/credentials/abc"),
            "{picked}"
        );
        // Forced either way.
        let forced = bedrock("credentials = \"container\"");
        assert!(kind(forced.auth(None, &env(both))).contains("AwsSource"));
        let forced = bedrock("credentials = \"environment\"");
        assert!(kind(forced.auth(None, &env(container_only))).starts_with("error bedrock:"));
        // Neither: the access key's variable is named.
        let none = kind(plain.auth(None, &env(&[])));
        assert!(none.contains("AWS_ACCESS_KEY_ID"), "{none}");
        let none = kind(bedrock("credentials = \"container\"").auth(None, &env(&[])));
        assert!(
            none.starts_with("error bedrock.container_credentials_uri:"),
            "{none}"
        );
        let plaintext = kind(
            bedrock("container_credentials_uri = \"http://192.0.2.1/creds\"").auth(None, &env(&[])),
        );
        assert!(
            plaintext.starts_with("error bedrock.container_credentials_uri:"),
            "{plaintext}"
        );
        assert!(
            kind(
                bedrock("container_credentials_uri = \"https://creds.example/x\"")
                    .auth(None, &env(&[]))
            )
            .contains("https://creds.example/x")
        );
        let policy =
            bedrock("credentials = \"container\"\nrefresh_ahead_s = 7\nretry_after_failure_ms = 9")
                .auth(None, &env(container_only));
        let Ok(BedrockAuth::Refreshing(_, p)) = policy else {
            panic!("{:?}", policy.err())
        };
        assert_eq!(p.refresh_ahead, Duration::from_secs(7));
        assert_eq!(p.retry_after_failure, Duration::from_millis(9));
    }
}
