//! The admin API: keys and teams over HTTP, as an axum [`Router`](axum::Router).
//!
//! Compatible with LiteLLM's key and team endpoints for the common subset,
//! so scripts written for it keep working:
//!
//! | route | does |
//! |---|---|
//! | `POST /key/generate` | creates a key; the answer's `key` is the only time the whole key is shown |
//! | `POST /key/update` | changes a key: a field set to `null` removes it (a limit, the budget, the expiry), a field left out is kept |
//! | `GET /key/info?key=` | one key (by public id or whole key) |
//! | `POST /key/delete` | `{"keys": [...], "key_aliases": [...]}` (either may be `null`): deletes all of them or none |
//! | `GET /key/list?page=&size=&team_id=&user_id=&key_alias=&search=&return_full_object=&include_team_keys=` | keys, paginated (`size` at most 100); `search` (tollgate's own) keeps the keys whose alias or public id contains it, in any case; LiteLLM's other parameters (`organization_id`, `key_hash`, `sort_by`, `sort_order`, `expand`) only empty |
//! | `POST /key/block`, `POST /key/unblock` | `{"key": ...}`: revokes / restores a key |
//! | `POST /key/regenerate` | `{"key": ...}`: a new secret, the id, settings and spend kept; the old key is refused from the next request |
//! | `POST /team/new`, `POST /team/update`, `GET /team/info?team_id=` | teams (with their `members_with_roles`) |
//! | `GET /team/list?user_id=` | every team (or those `user_id` is a member of), each with its keys' ids (LiteLLM's list of team objects) |
//! | `POST /team/delete` | `{"team_ids": [...]}`: deletes the teams and their keys, all or none |
//! | `POST /team/member_add`, `/team/member_delete`, `/team/member_update` | a team's members (`{"team_id", "member": {"role", "user_id", "user_email"}}`, roles `admin` or `user`; `max_budget_in_team` only `null`) |
//! | `GET /health/liveliness`, `GET /health/readiness` | probes, no key needed; readiness names the server (`litellm_version: "tollgate <version>"`, which LiteLLM's `version` command shows) |
//! | `GET /spend/logs?key_id=&team_id=&model=&start_time=&end_time=&limit=&cursor=` | spend records, newest first, one page at a time (feature `budget`, with [`router_with_spend`]); LiteLLM's `api_key`, `user_id`, `request_id`, `start_date`, `end_date` too |
//! | `GET /spend/series?group_by=key\|team\|model\|deployment&bucket=hour\|day&start_time=&end_time=&key_id=&team_id=&model=&deployment=` | tollgate's own: spend over time, per group and hour or day (UTC), summed by the store; the [`MAX_SERIES`](crate::budget::MAX_SERIES) costliest groups, the rest as one `other` series (feature `budget`) |
//! | `GET /global/spend` | LiteLLM's `{"spend", "max_budget"}`: every record's cost, and the global budget |
//! | `GET /budget/list?limit=` | tollgate's own (feature `budget`, with a ledger): every budget of a key, team or user, and the global one, with the current period's spend and reset, the most used first (`limit` of them, at most 500) |
//! | `GET /model/info`, `GET /v1/model/info`, `GET /models` | the deployments and model groups given to [`router_with_models`] ([`ModelInfo`]: names, API, prices; never a URL or credential) |
//! | `GET /deployments?model_group=` | each model group's deployments, live, from the [`HealthSource`] given to [`AdminOptions::deployments`]: in flight and capacity, cooldown (reason, time left), route families cooling, failed attempts by reason over the last 5 minutes, the fair queue's depth, the fallback chains ([`Health::to_json`](crate::router::Health::to_json)) |
//! | `/user/new\|update\|info\|list\|delete`, `/customer/new\|update\|info\|list\|delete\|block\|unblock` (and `/end_user/…`) | users, whose budgets cap their keys (team keys too), and customers (end users named by the request), with LiteLLM's fields: see the `people` routes in `docs/keys-and-admin.md` |
//!
//! `GET /key/info` also shows, with [`router_with_spend`] and a ledger, each
//! budget the key is charged on (its own, its team's, the global one): the
//! spend and reservations of the current period and when it resets (and
//! its user's budget, when the key's `user_id` names a user).
//!
//! `GET /spend/logs`: every filter given must match (`key_id`, `team_id`,
//! `model` as the client asked for it, `start_time` ≤ start < `end_time`,
//! both RFC 3339); `limit` records (1 to 1000, default 100), and
//! `next_cursor` to pass as `cursor` for the next page (`null` on the last).
//! Pages are read by keyset from the store's indexes: memory stays bounded
//! by `limit`, whatever the history's size. A bad parameter is a 400 naming it.
//!
//! `GET /spend/series`: `group_by` and `bucket` are required; the range is
//! `start_time` ≤ start < `end_time` (RFC 3339; by default `end_time` is
//! now and the range the last 24 hours for `hour`, the last 30 days for
//! `day`), at most [`MAX_BUCKETS`](crate::budget::MAX_BUCKETS) buckets.
//! The answer: `{"group_by", "bucket", "start_time", "end_time", "series":
//! [{"name", "kind", "spend", "spend_micros", "requests", "points":
//! [{"start", "spend", "spend_micros", "requests", "prompt_tokens",
//! "completion_tokens"}]}]}`, the costliest series first. `kind` is
//! `value` (`name` is the key, team, model or deployment), `missing` (the
//! records without one, such as budget refusals, which have no
//! deployment; `name` null) or `other` (every group beyond the costliest,
//! summed; `name` null). A series has a point for each bucket with
//! records, oldest first; a bucket without one is zero.
//!
//! Every route but the probes needs the master key (`Authorization: Bearer
//! <master key>`, `x-api-key` or LiteLLM's `x-litellm-api-key`): 401 without it. Bad input — an unknown field, a wrong type,
//! a negative budget, an unknown team, a malformed duration — is a 400
//! `invalid_request` whose `metadata.param` names the field, and nothing is
//! written. Errors have the contract's shape (`NormalizeErrors` wraps the
//! router). Writes go through the [`Keyring`]: the store first, then memory,
//! so a change holds for the very next request.
//!
//! Fields (LiteLLM's names): `key_alias`, `team_id`, `user_id`, `models`
//! (model names, access groups, patterns), `duration` (`30s`, `12h`, `30d`,
//! `2w`; the key expires that long after the call), `blocked`, `rpm_limit`,
//! `tpm_limit`, `max_budget` (USD), `budget_duration` (calendar periods
//! `daily`/`1d`, `weekly`/`7d`, `monthly`/`30d`/`1mo`, `total`; any other
//! duration, `30m`, `2h`, `14d`, `3mo`, is a fixed window starting now, and
//! answers carry its `budget_reset_at`), `metadata` (an object), and tollgate's
//! `weight` (fair queuing). Teams: `team_id`, `team_alias`, and the same
//! limits, `models` and `metadata`.
//!
//! ```
//! use tollgate::keys::{Keyring, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
//! let admin: axum::Router = tollgate::admin::router(keyring, "master-key-from-the-environment");
//! # let _ = admin; }
//! ```
//!
//! ## A limit the API accepts is a limit the gateway enforces
//!
//! The admin API stores limits; the inference stack enforces them. When the
//! stack it fronts lacks the layer a field needs (no `FairQueue` for
//! `weight`, no `RateLimit` for `rpm_limit`, …), declare it with
//! [`Unenforced`] and [`router_with_policy`]: setting such a field is then a
//! 400 whose message says what would enable it, instead of a limit stored,
//! shown by `/key/info`, and silently skipped.
//!
//! ```
//! use tollgate::admin::{Holder, Unenforced};
//! use tollgate::keys::{Keyring, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
//! // This app stacks no `FairQueue`: weights would be ignored.
//! let unenforced = Unenforced::new()
//!     .field(Holder::Key, "weight", "this gateway has no fair queue")
//!     .field(Holder::Team, "weight", "this gateway has no fair queue");
//! let admin = tollgate::admin::router_with_policy(
//!     keyring,
//!     "master-key-from-the-environment",
//!     Default::default(),
//!     unenforced,
//! );
//! # let _ = admin; }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Reason};
use crate::keys::record::{parse_duration, rfc3339, unix_now};
use crate::keys::{
    BudgetPeriod, KeyRecord, KeyUpdate, Keyring, Limits, NewKey, NewTeam, Patch, Source,
    TeamRecord, TeamUpdate, presented_key,
};
use crate::normalize::NormalizeErrorsLayer;
use crate::sanitize::Secrets;

#[derive(Clone)]
struct Admin {
    keyring: Keyring,
    master: Arc<[u8; 32]>,
    #[cfg(feature = "budget")]
    spend: SpendView,
    unenforced: Arc<Unenforced>,
    models: Arc<[ModelInfo]>,
    deployments: Option<HealthSource>,
}

/// Who holds a limit field: a key, a key that belongs to a team, a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Any key.
    Key,
    /// A key that belongs to a team (e.g. a fair queue whose tenants are
    /// teams ignores such a key's own `weight`).
    KeyInTeam,
    /// A team.
    Team,
}

/// The limit fields the stack behind this admin API does not enforce: the
/// admin API refuses to set them (400 naming the field and what would
/// enable it), so no limit is stored and then silently skipped. A field set
/// to `null`, or to its neutral default (`weight` 1), is still accepted.
#[derive(Clone, Debug, Default)]
pub struct Unenforced {
    rules: Vec<(Holder, &'static str, String)>,
}

impl Unenforced {
    /// Every field is enforced.
    pub fn new() -> Self {
        Self::default()
    }

    /// `field` of `holder` is not enforced; `why` says what would enable it
    /// (e.g. "configure `[fair_queue]`").
    pub fn field(mut self, holder: Holder, field: &'static str, why: impl Into<String>) -> Self {
        self.rules.push((holder, field, why.into()));
        self
    }

    /// Whether nothing is declared unenforced.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Refuses the first field of `holder` that `value_of` gives a value
    /// other than `null` or the field's neutral default.
    fn check(&self, holder: Holder, value_of: impl Fn(&str) -> Option<Value>) -> Result<(), Error> {
        for (h, field, why) in &self.rules {
            if *h != holder {
                continue;
            }
            match value_of(field) {
                None | Some(Value::Null) => {}
                Some(v) if *field == "weight" && v.as_u64() == Some(1) => {}
                Some(_) => {
                    let whose = match holder {
                        Holder::Key => "a key",
                        Holder::KeyInTeam => "a key in a team",
                        Holder::Team => "a team",
                    };
                    return Err(bad(
                        field,
                        format!("this gateway does not enforce it on {whose}: {why}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Where the admin API reads spend from (feature `budget`): the ledger for
/// the current periods (`GET /key/info`), the store for the history
/// (`GET /spend/logs`), and the global budget, if any.
#[cfg(feature = "budget")]
#[derive(Clone, Default)]
pub struct SpendView {
    /// Where the budgets' current spend is read: the in-process
    /// [`Ledger`](crate::budget::Ledger), or the shared store (Redis).
    pub ledger: Option<Arc<dyn crate::budget::UsageSource>>,
    /// The spend records' store.
    pub store: Option<Arc<dyn crate::budget::SpendStore>>,
    /// The global budget.
    pub global: Option<crate::budget::Limit>,
}

fn digest(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(text.as_bytes()));
    out
}

/// The admin API over `keyring`, protected by `master_key`.
pub fn router(keyring: Keyring, master_key: &str) -> axum::Router {
    router_with_options(keyring, master_key, AdminOptions::new())
}

/// What the admin API shows and enforces besides keys, teams, users and
/// customers: the argument of [`router_with_options`]. Each part is
/// optional; a route whose part is missing answers with empty data
/// (`/model/info`) or an error that says so (`/deployments`).
///
/// ```
/// use std::sync::Arc;
/// use tollgate::admin::AdminOptions;
/// use tollgate::keys::{Keyring, MemoryStore};
/// use tollgate::provider::Provider;
/// use tollgate::router::{Deployment, Router};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
/// let east = Provider::builder("east", "http://127.0.0.1:9001/v1").unwrap().build();
/// let router = Router::builder()
///     .group("gpt-4o-mini", vec![Deployment::new("east", east, 1)])
///     .unwrap()
///     .build();
/// // `GET /deployments` shows the router's deployments, live.
/// let options = AdminOptions::new().deployments(Arc::new(move || router.health()));
/// let admin = tollgate::admin::router_with_options(keyring, "master-key-from-the-environment", options);
/// # let _ = admin; }
/// ```
#[derive(Clone, Default)]
pub struct AdminOptions {
    #[cfg(feature = "budget")]
    spend: SpendView,
    unenforced: Unenforced,
    models: Vec<ModelInfo>,
    deployments: Option<HealthSource>,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("unenforced", &self.unenforced)
            .field("models", &self.models.len())
            .field("deployments", &self.deployments.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminOptions {
    /// Nothing beyond keys and teams.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spend: `GET /spend/logs` from `spend.store`, budgets' current spend
    /// in `GET /key/info` from `spend.ledger`, `GET /global/spend`.
    #[cfg(feature = "budget")]
    pub fn spend(mut self, spend: SpendView) -> Self {
        self.spend = spend;
        self
    }

    /// Refuse to set the limit fields the stack does not enforce (see [`Unenforced`]).
    pub fn unenforced(mut self, unenforced: Unenforced) -> Self {
        self.unenforced = unenforced;
        self
    }

    /// `GET /model/info` (and `/v1/model/info`) and `GET /models` answer
    /// with `models`: the deployments the gateway serves.
    pub fn models(mut self, models: Vec<ModelInfo>) -> Self {
        self.models = models;
        self
    }

    /// `GET /deployments` answers with what `source` returns when asked:
    /// the deployments' live health ([`Health`](crate::router::Health)).
    pub fn deployments(mut self, source: HealthSource) -> Self {
        self.deployments = Some(source);
        self
    }
}

/// The admin API over `keyring`, protected by `master_key`, with `options`.
pub fn router_with_options(
    keyring: Keyring,
    master_key: &str,
    options: AdminOptions,
) -> axum::Router {
    routes(Admin {
        keyring,
        master: Arc::new(digest(master_key)),
        #[cfg(feature = "budget")]
        spend: options.spend,
        unenforced: Arc::new(options.unenforced),
        models: options.models.into(),
        deployments: options.deployments,
    })
}

/// The admin API with spend: `GET /spend/logs` from `spend.store`, and
/// budgets' current spend in `GET /key/info` from `spend.ledger`.
#[cfg(feature = "budget")]
pub fn router_with_spend(keyring: Keyring, master_key: &str, spend: SpendView) -> axum::Router {
    router_with_policy(keyring, master_key, spend, Unenforced::new())
}

/// [`router_with_spend`] that refuses to set the limit fields the stack
/// does not enforce (see [`Unenforced`]).
#[cfg(feature = "budget")]
pub fn router_with_policy(
    keyring: Keyring,
    master_key: &str,
    spend: SpendView,
    unenforced: Unenforced,
) -> axum::Router {
    router_with_models(keyring, master_key, spend, unenforced, Vec::new())
}

/// [`router_with_policy`] that also answers `GET /model/info` (and
/// `/v1/model/info`) and `GET /models` with `models`: the deployments the
/// gateway serves (names, API, prices; never a URL or credential).
#[cfg(feature = "budget")]
pub fn router_with_models(
    keyring: Keyring,
    master_key: &str,
    spend: SpendView,
    unenforced: Unenforced,
    models: Vec<ModelInfo>,
) -> axum::Router {
    router_with_options(
        keyring,
        master_key,
        AdminOptions::new()
            .spend(spend)
            .unenforced(unenforced)
            .models(models),
    )
}

fn routes(state: Admin) -> axum::Router {
    let router = axum::Router::new()
        .route("/key/generate", post(key_generate))
        .route("/key/update", post(key_update))
        .route("/key/info", get(key_info))
        .route("/key/delete", post(key_delete))
        .route("/key/list", get(key_list))
        .route("/key/block", post(key_block))
        .route("/key/regenerate", post(key_regenerate))
        .route("/key/unblock", post(key_unblock))
        .route("/team/new", post(team_new))
        .route("/team/update", post(team_update))
        .route("/team/info", get(team_info))
        .route("/team/list", get(team_list))
        .route("/team/delete", post(teams::team_delete))
        .route("/team/member_add", post(teams::member_add))
        .route("/team/member_delete", post(teams::member_delete))
        .route("/team/member_update", post(teams::member_update))
        .route("/health/liveliness", get(liveliness))
        .route("/health/readiness", get(readiness))
        .route("/model/info", get(models::info))
        .route("/v1/model/info", get(models::info))
        .route("/models", get(models::list))
        .route("/deployments", get(deployments::deployments))
        .route("/user/new", post(people::user_new))
        .route("/user/update", post(people::user_update))
        .route("/user/info", get(people::user_info))
        .route("/user/list", get(people::user_list))
        .route("/user/delete", post(people::user_delete))
        .route("/customer/new", post(people::customer_new))
        .route("/customer/update", post(people::customer_update))
        .route("/customer/info", get(people::customer_info))
        .route("/customer/list", get(people::customer_list))
        .route("/customer/delete", post(people::customer_delete))
        .route("/customer/block", post(people::customer_block))
        .route("/customer/unblock", post(people::customer_unblock))
        .route("/end_user/new", post(people::customer_new))
        .route("/end_user/update", post(people::customer_update))
        .route("/end_user/info", get(people::customer_info))
        .route("/end_user/list", get(people::customer_list))
        .route("/end_user/delete", post(people::customer_delete))
        .route("/end_user/block", post(people::customer_block))
        .route("/end_user/unblock", post(people::customer_unblock));
    #[cfg(feature = "budget")]
    let router = router
        .route("/spend/logs", get(spend::logs))
        .route("/spend/series", get(spend::series))
        .route("/global/spend", get(spend::global))
        .route("/budget/list", get(budgets::list));
    router.with_state(state).layer(NormalizeErrorsLayer::new())
}

/// A refusal in the contract's shape.
struct Refusal(Error);

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        tracing::debug!(status = self.0.status().as_u16(), reason = self.0.reason().as_str(), error = %self.0, "admin request refused");
        self.0.to_response(&Secrets::none()).into_response()
    }
}

type Answer = Result<(StatusCode, axum::Json<Value>), Refusal>;

fn ok(v: Value) -> Answer {
    Ok((StatusCode::OK, axum::Json(v)))
}

impl Admin {
    /// Refuses the fields of `f` that the stack does not enforce on `holder`.
    fn refuse_unenforced(&self, holder: Holder, f: &Fields) -> Result<(), Error> {
        self.unenforced
            .check(holder, |field| f.0.get(field).cloned())
    }

    fn check(&self, headers: &HeaderMap) -> Result<(), Error> {
        // LiteLLM's own header for the key, which its clients may send
        // instead of `Authorization`.
        let litellm = headers
            .get("x-litellm-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let presented = litellm.map_or_else(|| presented_key(headers), Ok).map_err(|e| {
            Error::new(
                e.reason(),
                "The admin API needs the master key: send it in `x-api-key`, or in `Authorization` with the scheme Bearer.",
            )
        })?;
        if bool::from(digest(presented).ct_eq(&*self.master)) {
            Ok(())
        } else {
            Err(Error::new(
                Reason::UnknownKey,
                "This is not the master key; the admin API needs the master key.",
            ))
        }
    }
}

fn bad(param: &str, message: impl std::fmt::Display) -> Error {
    Error::new(Reason::InvalidRequest, format!("`{param}`: {message}")).with_meta("param", param)
}

/// LiteLLM's key and team fields that tollgate does not implement, with
/// their LiteLLM defaults: accepted (and ignored) when `null` or the
/// default, refused by name otherwise, so nothing is silently dropped.
const LITELLM_DEFAULTS: &[(&str, &str)] = &[
    ("spend", "0"),
    ("aliases", "{}"),
    ("config", "{}"),
    ("permissions", "{}"),
    ("model_max_budget", "{}"),
    ("model_rpm_limit", "{}"),
    ("model_tpm_limit", "{}"),
    ("allowed_cache_controls", "[]"),
    ("tags", "[]"),
    ("guardrails", "[]"),
    ("soft_budget", "null"),
    ("max_parallel_requests", "null"),
    ("budget_id", "null"),
    ("organization_id", "null"),
    ("send_invite_email", "false"),
];

/// Whether `v` is `null` or LiteLLM's `default` (JSON text; `0` and `0.0` alike).
fn is_default(v: &Value, default: &str) -> bool {
    let d: Value = serde_json::from_str(default).unwrap_or(Value::Null);
    v.is_null() || *v == d || (v.as_f64().is_some() && v.as_f64() == d.as_f64())
}

/// A JSON object body whose fields are checked one by one, naming the field.
struct Fields(Map<String, Value>);

impl Fields {
    /// An empty body is taken as `{}`.
    fn parse(body: &Bytes, allowed: &[&str]) -> Result<Self, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields(Map::new()));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Error::new(
                Reason::InvalidJson,
                format!(
                    "The body is not valid JSON: {e}. Send a JSON object with `Content-Type: application/json`."
                ),
            )
        })?;
        let Value::Object(map) = value else {
            return Err(Error::new(
                Reason::InvalidRequest,
                "The body must be a JSON object.",
            ));
        };
        let mut map = map;
        for (name, default) in LITELLM_DEFAULTS {
            match map.get(*name) {
                Some(v) if !allowed.contains(name) && is_default(v, default) => {
                    map.remove(*name);
                }
                Some(_) if !allowed.contains(name) => {
                    return Err(bad(
                        name,
                        format!(
                            "LiteLLM's field is not supported by this gateway: only null or {default} is accepted"
                        ),
                    ));
                }
                _ => {}
            }
        }
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(
                k,
                format!("unknown field; the fields are {}", allowed.join(", ")),
            ));
        }
        Ok(Fields(map))
    }

    fn patch<T>(
        &self,
        name: &str,
        what: &str,
        f: impl FnOnce(&Value) -> Option<Result<T, String>>,
    ) -> Result<Patch<T>, Error> {
        match self.0.get(name) {
            None => Ok(Patch::Keep),
            Some(Value::Null) => Ok(Patch::Clear),
            Some(v) => match f(v) {
                Some(Ok(t)) => Ok(Patch::Set(t)),
                Some(Err(problem)) => Err(bad(name, problem)),
                None => Err(bad(name, format!("must be {what} or null"))),
            },
        }
    }

    fn string(&self, name: &str) -> Result<Patch<String>, Error> {
        self.patch(name, "a string", |v| v.as_str().map(|s| Ok(s.to_owned())))
    }

    fn count(&self, name: &str) -> Result<Patch<u64>, Error> {
        self.patch(name, "a whole number, 0 or more", |v| v.as_u64().map(Ok))
    }

    /// A number of USD; a string holding one is taken too, as LiteLLM
    /// (pydantic) does: its own docs send `"max_budget": "0"`.
    fn usd(&self, name: &str) -> Result<Patch<f64>, Error> {
        self.patch(name, "a number of USD", |v| {
            let number = v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()));
            number.map(|f| {
                if f >= 0.0 && f.is_finite() {
                    Ok(f)
                } else {
                    Err(format!("must be 0 or more, not {f}"))
                }
            })
        })
    }

    fn weight(&self) -> Result<Patch<u32>, Error> {
        self.patch("weight", "a whole number from 1", |v| {
            v.as_u64().map(|w| {
                u32::try_from(w)
                    .ok()
                    .filter(|w| *w >= 1)
                    .ok_or_else(|| "must be a whole number from 1 to 4294967295".to_owned())
            })
        })
    }

    fn grants(&self) -> Result<Patch<Vec<String>>, Error> {
        let name = "models";
        match self.0.get(name) {
            None => Ok(Patch::Keep),
            Some(Value::Null) => Ok(Patch::Clear),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(&format!("models[{i}]"), "must be a string"))
                })
                .collect::<Result<_, _>>()
                .map(Patch::Set),
            Some(_) => Err(bad(
                name,
                "must be a list of model names, access groups or patterns",
            )),
        }
    }

    fn duration(&self) -> Result<Patch<std::time::Duration>, Error> {
        self.patch("duration", "a duration such as `30d`", |v| {
            v.as_str().map(parse_duration)
        })
    }

    /// A window (`2h`, `14d`, `3mo`) starts now; see [`BudgetPeriod::parse_at`].
    fn period(&self) -> Result<Patch<BudgetPeriod>, Error> {
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        self.patch(
            "budget_duration",
            "a duration such as `30d`, `12h` or `monthly`",
            |v| v.as_str().map(|s| BudgetPeriod::parse_at(s, now)),
        )
    }

    fn metadata(&self) -> Result<Patch<Map<String, Value>>, Error> {
        self.patch("metadata", "an object", |v| v.as_object().cloned().map(Ok))
    }

    fn blocked(&self) -> Result<Option<bool>, Error> {
        match self.0.get("blocked") {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(bad("blocked", "must be true or false")),
        }
    }

    fn required(&self, name: &str) -> Result<String, Error> {
        match self.string(name)? {
            Patch::Set(s) if !s.is_empty() => Ok(s),
            _ => Err(bad(name, "is required")),
        }
    }

    fn limits(&self) -> Result<LimitPatches, Error> {
        Ok(LimitPatches {
            rpm: self.count("rpm_limit")?,
            tpm: self.count("tpm_limit")?,
            max_budget: self.usd("max_budget")?,
            budget_period: self.period()?,
            weight: self.weight()?,
        })
    }
}

struct LimitPatches {
    rpm: Patch<u64>,
    tpm: Patch<u64>,
    max_budget: Patch<f64>,
    budget_period: Patch<BudgetPeriod>,
    weight: Patch<u32>,
}

impl LimitPatches {
    fn new_limits(self) -> Limits {
        let set = |p: Patch<u64>| match p {
            Patch::Set(v) => Some(v),
            _ => None,
        };
        Limits {
            rpm: set(self.rpm),
            tpm: set(self.tpm),
            max_budget: match self.max_budget {
                Patch::Set(v) => Some(v),
                _ => None,
            },
            budget_period: match self.budget_period {
                Patch::Set(v) => Some(v),
                _ => None,
            },
            weight: match self.weight {
                Patch::Set(v) => v,
                _ => 1,
            },
        }
    }
}

fn set<T>(p: Patch<T>) -> Option<T> {
    match p {
        Patch::Set(v) => Some(v),
        _ => None,
    }
}

const LIMIT_FIELDS: [&str; 8] = [
    "models",
    "rpm_limit",
    "tpm_limit",
    "max_budget",
    "budget_duration",
    "weight",
    "metadata",
    "blocked",
];

fn fields(extra: &[&'static str]) -> Vec<&'static str> {
    extra.iter().chain(LIMIT_FIELDS.iter()).copied().collect()
}

fn limits_json(a: &Admin, l: &Limits) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("rpm_limit".into(), json!(l.rpm));
    m.insert("tpm_limit".into(), json!(l.tpm));
    m.insert("max_budget".into(), json!(l.max_budget));
    m.insert(
        "budget_duration".into(),
        json!(l.budget_period.map(|p| p.to_string())),
    );
    m.insert("budget_reset_at".into(), budget_reset_at(a, l));
    m.insert("weight".into(), json!(l.weight));
    m
}

/// When a budget resets: the end of its current period or window, by the
/// ledger's clock and time zone (`null`: no budget, or a total one).
fn budget_reset_at(a: &Admin, l: &Limits) -> Value {
    #[cfg(feature = "budget")]
    if let Some(b) = l.budget() {
        let period = crate::budget::Period::from(b.period);
        let window = match &a.spend.ledger {
            Some(ledger) => ledger.window(period),
            None => period.window(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC),
        };
        return json!(window.end.map(|t| t.to_string()));
    }
    let _ = (a, l);
    Value::Null
}

/// A key as the admin API shows it: never its secret or hash.
fn key_json(a: &Admin, r: &KeyRecord, source: Source) -> Value {
    let mut m = Map::new();
    m.insert("key_id".into(), json!(r.id));
    // LiteLLM's name for a key's identifier (there its hash): what its
    // clients show and pass back to `/key/info`, `/key/delete`.
    m.insert("token".into(), json!(r.id));
    m.insert("key_alias".into(), json!(r.alias));
    m.insert("team_id".into(), json!(r.team_id));
    m.insert("user_id".into(), json!(r.user_id));
    m.insert("models".into(), json!(r.grants));
    m.insert("expires".into(), json!(r.expires_at.map(rfc3339)));
    m.insert("blocked".into(), json!(r.blocked));
    m.extend(limits_json(a, &r.limits));
    m.insert("metadata".into(), Value::Object(r.metadata.clone()));
    m.insert("created_at".into(), json!(rfc3339(r.created_at)));
    m.insert("updated_at".into(), json!(rfc3339(r.updated_at)));
    m.insert(
        "source".into(),
        json!(match source {
            Source::Store => "store",
            Source::Config => "config",
        }),
    );
    Value::Object(m)
}

fn team_json(a: &Admin, t: &TeamRecord) -> Value {
    let mut m = Map::new();
    m.insert("team_id".into(), json!(t.id));
    m.insert("team_alias".into(), json!(t.alias));
    m.insert("models".into(), json!(t.grants));
    m.insert("blocked".into(), json!(t.blocked));
    m.extend(limits_json(a, &t.limits));
    m.insert("metadata".into(), Value::Object(t.metadata.clone()));
    m.insert("members_with_roles".into(), teams::members_json(&t.members));
    m.insert("created_at".into(), json!(rfc3339(t.created_at)));
    m.insert("updated_at".into(), json!(rfc3339(t.updated_at)));
    Value::Object(m)
}

type Params = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;

fn query(q: Params) -> Result<HashMap<String, String>, Error> {
    q.map(|Query(q)| q).map_err(|_| {
        Error::new(
            Reason::InvalidRequest,
            "The query string could not be read.",
        )
    })
}

async fn key_generate(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(
        &body,
        &fields(&["key_alias", "team_id", "user_id", "duration"]),
    )?;
    let in_team = matches!(f.0.get("team_id"), Some(Value::String(_)));
    a.refuse_unenforced(Holder::Key, &f)?;
    if in_team {
        a.refuse_unenforced(Holder::KeyInTeam, &f)?;
    }
    let new = NewKey {
        alias: set(f.string("key_alias")?),
        team_id: set(f.string("team_id")?),
        user_id: set(f.string("user_id")?),
        grants: set(f.grants()?),
        expires_in: set(f.duration()?),
        blocked: f.blocked()?.unwrap_or(false),
        metadata: set(f.metadata()?).unwrap_or_default(),
        limits: f.limits()?.new_limits(),
    };
    let (key, record) = a.keyring.generate(new).await?;
    let mut v = key_json(&a, &record, Source::Store);
    v["key"] = json!(key);
    ok(v)
}

async fn key_update(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(
        &body,
        &fields(&["key", "key_alias", "team_id", "user_id", "duration"]),
    )?;
    let ident = f.required("key")?;
    let l = f.limits()?;
    a.refuse_unenforced(Holder::Key, &f)?;
    if !a.unenforced.is_empty() {
        // A key in a team after this update: the fields it sets, or keeps.
        let (record, _) = a.keyring.key_info(&ident)?;
        let current = key_json(&a, &record, Source::Store);
        let after = |field: &str| match f.0.get(field) {
            Some(v) => Some(v.clone()),
            None => current.get(field).cloned(),
        };
        if !after("team_id").unwrap_or(Value::Null).is_null() {
            a.unenforced.check(Holder::KeyInTeam, after)?;
        }
    }
    let update = KeyUpdate {
        alias: f.string("key_alias")?,
        team_id: f.string("team_id")?,
        user_id: f.string("user_id")?,
        grants: f.grants()?,
        expires_in: f.duration()?,
        blocked: f.blocked()?,
        rpm: l.rpm,
        tpm: l.tpm,
        max_budget: l.max_budget,
        budget_period: l.budget_period,
        weight: l.weight,
        metadata: f.metadata()?,
    };
    let r = a.keyring.update_key(&ident, update).await?;
    ok(key_json(&a, &r, Source::Store))
}

async fn set_blocked(a: Admin, headers: HeaderMap, body: Bytes, blocked: bool) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["key"])?;
    let ident = f.required("key")?;
    let update = KeyUpdate {
        blocked: Some(blocked),
        ..KeyUpdate::default()
    };
    let r = a.keyring.update_key(&ident, update).await?;
    ok(key_json(&a, &r, Source::Store))
}

/// `POST /key/regenerate` `{"key": ...}`: a new secret for the key, its id,
/// settings and spend kept; the answer's `key` is the only time it is shown.
async fn key_regenerate(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["key"])?;
    let ident = f.required("key")?;
    let (whole, r) = a.keyring.regenerate(&ident).await?;
    let mut v = key_json(&a, &r, Source::Store);
    v["key"] = json!(whole);
    ok(v)
}

async fn key_block(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    set_blocked(a, headers, body, true).await
}

async fn key_unblock(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    set_blocked(a, headers, body, false).await
}

async fn key_info(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    let ident = q
        .get("key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("key", "is required: `GET /key/info?key=<key id>`"))?;
    let (r, source) = a.keyring.key_info(ident)?;
    #[allow(unused_mut)]
    let mut info = key_json(&a, &r, source);
    #[cfg(feature = "budget")]
    if let Some(budgets) = spend::budgets_of(&a, &r).await? {
        info["budgets"] = budgets;
    }
    ok(json!({"key": r.id, "info": info}))
}

async fn key_delete(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["keys", "key_aliases"])?;
    let list = |name: &str| -> Result<Vec<String>, Error> {
        match f.0.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(&format!("{name}[{i}]"), "must be a string"))
                })
                .collect(),
            Some(_) => Err(bad(name, "must be a list of strings")),
        }
    };
    let mut keys = list("keys")?;
    // LiteLLM's clients name keys by alias too (`"key_aliases": null` when not).
    for alias in list("key_aliases")? {
        let found = a
            .keyring
            .find_keys(|r| r.alias.as_deref() == Some(alias.as_str()))?;
        if found.is_empty() {
            return Err(bad("key_aliases", format!("no key has the alias `{alias}`")).into());
        }
        keys.extend(found.into_iter().map(|(r, _)| r.id));
    }
    if keys.is_empty() {
        return Err(bad(
            "keys",
            "is required: a non-empty list of keys or key ids (or `key_aliases`)",
        )
        .into());
    }
    let deleted = a.keyring.delete_keys(&keys).await?;
    ok(json!({"deleted_keys": deleted}))
}

fn number(
    q: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, Error> {
    match q.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| bad(name, format!("must be a whole number from 1 to {max}"))),
    }
}

/// LiteLLM's `/key/list` parameters that tollgate accepts only at their
/// default (empty or as shown): anything else is refused by name.
const KEY_LIST_DEFAULTS: [(&str, &str); 5] = [
    ("organization_id", ""),
    ("key_hash", ""),
    ("sort_by", ""),
    ("sort_order", ""),
    ("expand", ""),
];

async fn key_list(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    const KNOWN: [&str; 8] = [
        "page",
        "size",
        "team_id",
        "user_id",
        "key_alias",
        "search",
        "return_full_object",
        "include_team_keys",
    ];
    for (k, v) in &q {
        if KNOWN.contains(&k.as_str()) {
            continue;
        }
        match KEY_LIST_DEFAULTS.iter().find(|(name, _)| name == k) {
            Some((_, default)) if v == default => {}
            Some(_) => {
                return Err(bad(
                    k,
                    "is not supported by this gateway's /key/list (only empty)",
                )
                .into());
            }
            None => {
                return Err(bad(
                    k,
                    "unknown parameter; use page, size, team_id, user_id, key_alias, search, return_full_object, include_team_keys",
                )
                .into());
            }
        }
    }
    let page = number(&q, "page", 1, usize::MAX)?;
    let size = number(&q, "size", 10, 100)?;
    let flag = |name: &str| match q.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(bad(name, "must be true or false")),
    };
    let full = flag("return_full_object")?;
    // The master key sees every key, team keys included, whatever this says.
    flag("include_team_keys")?;
    let wanted = |name: &str| q.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let (team, user, alias) = (wanted("team_id"), wanted("user_id"), wanted("key_alias"));
    // tollgate's own: a part of the alias or of the public id, in any case.
    let search = wanted("search").map(str::to_lowercase);
    let (keys, total) = a.keyring.list_keys_where(
        |r| {
            team.is_none_or(|t| r.team_id.as_deref() == Some(t))
                && user.is_none_or(|u| r.user_id.as_deref() == Some(u))
                && alias.is_none_or(|al| r.alias.as_deref() == Some(al))
                && search.as_deref().is_none_or(|s| {
                    r.id.to_lowercase().contains(s)
                        || r.alias
                            .as_deref()
                            .is_some_and(|al| al.to_lowercase().contains(s))
                })
        },
        page,
        size,
    )?;
    let keys: Vec<Value> = keys
        .iter()
        .map(|(r, s)| {
            if full {
                key_json(&a, r, *s)
            } else {
                json!(r.id)
            }
        })
        .collect();
    ok(json!({
        "keys": keys,
        "total_count": total,
        "current_page": page,
        "total_pages": total.div_ceil(size),
    }))
}

async fn team_new(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(
        &body,
        &fields(&["team_id", "team_alias", "members_with_roles"]),
    )?;
    a.refuse_unenforced(Holder::Team, &f)?;
    let new = NewTeam {
        id: set(f.string("team_id")?),
        alias: set(f.string("team_alias")?),
        grants: set(f.grants()?).unwrap_or_default(),
        blocked: f.blocked()?.unwrap_or(false),
        metadata: set(f.metadata()?).unwrap_or_default(),
        limits: f.limits()?.new_limits(),
        members: teams::members_field(&f, "members_with_roles")?,
    };
    let t = a.keyring.create_team(new).await?;
    ok(team_json(&a, &t))
}

async fn team_update(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &fields(&["team_id", "team_alias"]))?;
    let id = f.required("team_id")?;
    let l = f.limits()?;
    a.refuse_unenforced(Holder::Team, &f)?;
    let update = TeamUpdate {
        alias: f.string("team_alias")?,
        grants: f.grants()?,
        blocked: f.blocked()?,
        rpm: l.rpm,
        tpm: l.tpm,
        max_budget: l.max_budget,
        budget_period: l.budget_period,
        weight: l.weight,
        metadata: f.metadata()?,
    };
    let t = a.keyring.update_team(&id, update).await?;
    ok(team_json(&a, &t))
}

async fn team_info(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    let id = q
        .get("team_id")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| bad("team_id", "is required: `GET /team/info?team_id=<id>`"))?;
    let (t, keys) = a.keyring.team_info(id)?;
    ok(json!({"team_id": t.id, "team_info": team_json(&a, &t), "keys": keys}))
}

/// `GET /team/list`: every team (LiteLLM's answer: a list of team objects,
/// each with its keys' ids); `user_id=`: the teams it is a member of.
async fn team_list(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    for (k, v) in &q {
        if !["user_id", "organization_id"].contains(&k.as_str()) {
            return Err(bad(k, "unknown parameter").into());
        }
        if k == "organization_id" && !v.is_empty() {
            return Err(bad(
                k,
                "is not supported by this gateway's /team/list (only empty)",
            )
            .into());
        }
    }
    let member = q.get("user_id").filter(|u| !u.is_empty());
    let teams: Vec<Value> = a
        .keyring
        .list_teams()?
        .into_iter()
        .filter(|(t, _)| member.is_none_or(|u| t.members.iter().any(|m| m.is(Some(u), None))))
        .map(|(t, keys)| {
            let mut v = team_json(&a, &t);
            v["keys"] = json!(keys);
            v
        })
        .collect();
    ok(Value::Array(teams))
}

/// `GET /health/liveliness`: the process answers (no key needed).
async fn liveliness() -> Answer {
    ok(json!("I'm alive!"))
}

/// `GET /health/readiness`: the admin API is serving (no key needed);
/// `litellm_version` says what answers, for LiteLLM's `version` command.
async fn readiness() -> Answer {
    let version = env!("CARGO_PKG_VERSION");
    ok(json!({
        "status": "healthy",
        "litellm_version": format!("tollgate {version}"),
        "tollgate_version": version,
    }))
}

#[cfg(feature = "budget")]
mod budgets;
mod deployments;
mod models;
mod people;
#[cfg(feature = "budget")]
mod spend;
mod teams;

pub use deployments::HealthSource;
pub use models::ModelInfo;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemoryStore;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    pub(super) const MASTER: &str = "master-0123456789abcdef";

    pub(super) async fn app() -> (axum::Router, Keyring) {
        let ring = Keyring::builder(MemoryStore::new())
            .models(["a", "b"])
            .build()
            .await
            .unwrap();
        (router(ring.clone(), MASTER), ring)
    }

    pub(super) async fn call(
        app: &axum::Router,
        method: &str,
        uri: &str,
        body: &str,
        auth: Option<&str>,
    ) -> (u16, Value) {
        let mut req = axum::http::Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header("authorization", format!("Bearer {a}"));
        }
        let res = app
            .clone()
            .oneshot(req.body(axum::body::Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// What LiteLLM's own clients send (its `litellm-proxy` CLI, 1.110):
    /// accepted, answered in LiteLLM's shapes.
    #[tokio::test]
    async fn litellms_clients_are_answered() {
        let (app, _) = app().await;
        let new_key = |alias: &str, team: Option<&str>| {
            let team = team.map_or(String::new(), |t| format!(r#","team_id":"{t}""#));
            format!(r#"{{"models":["a"],"key_alias":"{alias}","user_id":"u-{alias}"{team}}}"#)
        };
        let (s, _) = call(
            &app,
            "POST",
            "/team/new",
            r#"{"team_id":"t1"}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 200);
        for (alias, team) in [("one", None), ("two", Some("t1")), ("three", None)] {
            let (s, v) = call(
                &app,
                "POST",
                "/key/generate",
                &new_key(alias, team),
                Some(MASTER),
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        // The CLI's `keys list`.
        let (s, v) = call(
            &app,
            "GET",
            "/key/list?return_full_object=true&include_team_keys=false",
            "",
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["total_count"], 3,
            "team keys included for the master key: {v}"
        );
        let mut aliases: Vec<&str> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key_alias"].as_str().unwrap())
            .collect();
        aliases.sort_unstable();
        assert_eq!(aliases, ["one", "three", "two"]);
        assert_eq!(
            v["keys"][0]["token"], v["keys"][0]["key_id"],
            "LiteLLM's name too"
        );
        // LiteLLM's filters.
        let (_, v) = call(&app, "GET", "/key/list?key_alias=two", "", Some(MASTER)).await;
        assert_eq!(v["total_count"], 1, "{v}");
        let (_, v) = call(&app, "GET", "/key/list?user_id=u-three", "", Some(MASTER)).await;
        assert_eq!(v["total_count"], 1, "{v}");
        let (_, v) = call(&app, "GET", "/key/list?organization_id=", "", Some(MASTER)).await;
        assert_eq!(v["total_count"], 3, "{v}");
        // A filter tollgate does not implement is refused by name, not ignored.
        let (s, v) = call(
            &app,
            "GET",
            "/key/list?organization_id=org1",
            "",
            Some(MASTER),
        )
        .await;
        assert_eq!(
            (s, v["error"]["metadata"]["param"].as_str()),
            (400, Some("organization_id"))
        );
        let (s, v) = call(
            &app,
            "GET",
            "/key/list?include_team_keys=maybe",
            "",
            Some(MASTER),
        )
        .await;
        assert_eq!(
            (s, v["error"]["metadata"]["param"].as_str()),
            (400, Some("include_team_keys"))
        );
        // The CLI's `keys delete`: `key_aliases` null, or aliases.
        let (_, v) = call(&app, "GET", "/key/list?key_alias=one", "", Some(MASTER)).await;
        let one = v["keys"][0].as_str().unwrap().to_owned();
        let (s, v) = call(
            &app,
            "POST",
            "/key/delete",
            &format!(r#"{{"keys":["{one}"],"key_aliases":null}}"#),
            Some(MASTER),
        )
        .await;
        assert_eq!((s, v["deleted_keys"].clone()), (200, json!([one])), "{v}");
        let (s, v) = call(
            &app,
            "POST",
            "/key/delete",
            r#"{"keys":null,"key_aliases":["three"]}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["deleted_keys"].as_array().unwrap().len(), 1);
        let (s, v) = call(
            &app,
            "POST",
            "/key/delete",
            r#"{"key_aliases":["nobody"]}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(
            (s, v["error"]["metadata"]["param"].as_str()),
            (400, Some("key_aliases"))
        );
        let (s, _) = call(
            &app,
            "POST",
            "/key/delete",
            r#"{"keys":null,"key_aliases":null}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 400);
        // `/key/regenerate`: a new secret, the same id and settings.
        let (_, v) = call(
            &app,
            "GET",
            "/key/list?key_alias=two&return_full_object=true",
            "",
            Some(MASTER),
        )
        .await;
        let two = v["keys"][0]["key_id"].as_str().unwrap().to_owned();
        let (s, v) = call(
            &app,
            "POST",
            "/key/regenerate",
            &format!(r#"{{"key":"{two}"}}"#),
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (v["key_id"].as_str(), v["key_alias"].as_str()),
            (Some(two.as_str()), Some("two"))
        );
        assert!(
            v["key"]
                .as_str()
                .unwrap()
                .starts_with(&format!("tg-{two}-"))
        );
        let (s, v) = call(
            &app,
            "POST",
            "/key/regenerate",
            r#"{"key":"nope"}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 404, "{v}");
        // `teams list`.
        let (s, v) = call(&app, "GET", "/team/list", "", Some(MASTER)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v[0]["team_id"], "t1");
        assert_eq!(v[0]["keys"].as_array().unwrap().len(), 1, "{v}");
        let (s, _) = call(&app, "GET", "/team/list", "", None).await;
        assert_eq!(s, 401);
        // `version` reads the readiness probe; neither probe needs a key.
        let (s, v) = call(&app, "GET", "/health/readiness", "", None).await;
        assert_eq!(s, 200);
        assert!(
            v["litellm_version"]
                .as_str()
                .unwrap()
                .starts_with("tollgate "),
            "{v}"
        );
        let (s, v) = call(&app, "GET", "/health/liveliness", "", None).await;
        assert_eq!((s, v), (200, json!("I'm alive!")));
        // LiteLLM's key header.
        let req = axum::http::Request::builder()
            .uri("/team/list")
            .header("x-litellm-api-key", MASTER)
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
        let req = axum::http::Request::builder()
            .uri("/team/list")
            .header("x-litellm-api-key", "not-the-master-key-at-all")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 401);
    }

    /// tollgate's `search`: a part of the alias or of the public id, in
    /// any case, with the other filters and the pages.
    #[tokio::test]
    async fn key_list_searches_alias_and_id() {
        let (app, _) = app().await;
        let m = Some(MASTER);
        let mut ids = Vec::new();
        for alias in ["Billing-Prod", "billing-dev", "search-bot"] {
            let (s, v) = call(
                &app,
                "POST",
                "/key/generate",
                &format!(r#"{{"key_alias":"{alias}"}}"#),
                m,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            ids.push(v["key_id"].as_str().unwrap().to_owned());
        }
        let found = |v: &Value| -> Vec<String> {
            v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect()
        };
        let (s, v) = call(&app, "GET", "/key/list?search=BILLING", "", m).await;
        assert_eq!(s, 200, "{v}");
        // Listed by creation, then id (the same second here).
        let billing = found(&v);
        let mut sorted = billing.clone();
        sorted.sort_unstable();
        let mut expected = ids[..2].to_vec();
        expected.sort_unstable();
        assert_eq!(sorted, expected, "{v}");
        assert_eq!(v["total_count"], 2);
        let (_, v) = call(&app, "GET", "/key/list?search=billing&size=1&page=2", "", m).await;
        assert_eq!(
            (found(&v), v["total_pages"].as_u64()),
            (vec![billing[1].clone()], Some(2))
        );
        // A part of the public id, upper-cased.
        let part = ids[2][1..5].to_uppercase();
        let (_, v) = call(&app, "GET", &format!("/key/list?search={part}"), "", m).await;
        assert!(found(&v).contains(&ids[2]), "{part}: {v}");
        let (_, v) = call(&app, "GET", "/key/list?search=nothing-like-it", "", m).await;
        assert_eq!((v["total_count"].as_u64(), found(&v).len()), (Some(0), 0));
        // Empty: no filter.
        let (_, v) = call(&app, "GET", "/key/list?search=", "", m).await;
        assert_eq!(v["total_count"], 3);
    }

    #[tokio::test]
    async fn master_key_is_required() {
        let (app, _) = app().await;
        let (s, v) = call(&app, "POST", "/key/generate", "{}", None).await;
        assert_eq!(
            (s, v["error"]["metadata"]["reason"].as_str()),
            (401, Some("missing_key"))
        );
        let (s, v) = call(
            &app,
            "POST",
            "/key/generate",
            "{}",
            Some("wrong-master-key-xx"),
        )
        .await;
        assert_eq!(
            (s, v["error"]["metadata"]["reason"].as_str()),
            (401, Some("unknown_key"))
        );
        let (s, _) = call(&app, "GET", "/key/list", "", Some("nope-nope-nope-nope")).await;
        assert_eq!(s, 401);
        let (s, v) = call(&app, "POST", "/key/generate", "", Some(MASTER)).await;
        assert_eq!(s, 200, "an empty body is `{{}}`: {v}");
        assert!(v["key"].as_str().unwrap().starts_with("tg-"));
    }

    #[tokio::test]
    async fn bad_input_names_the_field() {
        let (app, ring) = app().await;
        let m = Some(MASTER);
        for (body, param) in [
            (r#"{"rpm_limit": "ten"}"#, "rpm_limit"),
            (r#"{"max_budget": -1}"#, "max_budget"),
            (r#"{"team_id": "ghost"}"#, "team_id"),
            (r#"{"duration": "soon"}"#, "duration"),
            (r#"{"budget_duration": "30x"}"#, "budget_duration"),
            (r#"{"modles": ["a"]}"#, "modles"),
            (r#"{"spend": 2.5}"#, "spend"),
            (r#"{"aliases": {"a": "b"}}"#, "aliases"),
            (r#"{"soft_budget": 1}"#, "soft_budget"),
            (r#"{"models": ["a", 3]}"#, "models[1]"),
            (r#"{"models": ["zzz"]}"#, "models[0]"),
            (r#"{"weight": 0}"#, "weight"),
            (r#"{"blocked": "yes"}"#, "blocked"),
        ] {
            let (s, v) = call(&app, "POST", "/key/generate", body, m).await;
            assert_eq!(s, 400, "{body}: {v}");
            assert_eq!(v["error"]["metadata"]["param"], param, "{body}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(param),
                "{v}"
            );
        }
        let (s, v) = call(&app, "POST", "/key/generate", "{not json", m).await;
        assert_eq!(
            (s, v["error"]["metadata"]["reason"].as_str()),
            (400, Some("invalid_json"))
        );
        assert!(ring.is_empty(), "nothing was written");
        let (s, _) = call(&app, "GET", "/key/generate", "", m).await;
        assert_eq!(s, 405);
    }

    /// LiteLLM's fields tollgate does not implement pass at their defaults
    /// (what LiteLLM's clients send when unset), and are not stored.
    #[tokio::test]
    async fn litellms_unimplemented_fields_pass_only_at_their_defaults() {
        let (app, _) = app().await;
        let body = r#"{"models": ["a"], "spend": 0.0, "aliases": {}, "config": {}, "tags": null,
            "soft_budget": null, "max_parallel_requests": null, "send_invite_email": false}"#;
        let (s, v) = call(&app, "POST", "/key/generate", body, Some(MASTER)).await;
        assert_eq!(s, 200, "{v}");
        assert!(
            v.get("aliases").is_none() && v.get("soft_budget").is_none(),
            "{v}"
        );
        let (s, v) = call(
            &app,
            "POST",
            "/team/new",
            r#"{"team_id": "t", "tags": []}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = call(
            &app,
            "POST",
            "/team/new",
            r#"{"team_id": "u", "tags": ["x"]}"#,
            Some(MASTER),
        )
        .await;
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["metadata"]["param"], "tags");
        // Team ids are letters, digits and underscores: `.` and `..`, which
        // a URL path (`/ui/teams/{id}`) would read as folders, are refused.
        for id in [".", ".."] {
            let body = json!({ "team_id": id }).to_string();
            let (s, v) = call(&app, "POST", "/team/new", &body, Some(MASTER)).await;
            assert_eq!(s, 400, "{v}");
            assert_eq!(v["error"]["metadata"]["param"], "team_id");
        }
    }
}
