//! [`Keyring`]: the keys in memory, served to the hot path, written through
//! to a [`KeyStore`].

use std::fmt;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde_json::{Map, Value};

use super::key::{Customer, Key};
use super::record::{
    BudgetPeriod, CustomerRecord, KeyRecord, Limits, Patch, Source, TeamMember, TeamRecord,
    UserRecord, unix_now,
};
use super::store::{KeyStore, Snapshot, StoreError};
use super::token::{self, KeyHash};
use crate::access::AccessGroups;
use crate::error::{Error, Reason};

mod teams;

pub use teams::TeamsDeleted;

/// Settings of a new key (admin `POST /key/generate`).
#[derive(Clone, Debug, Default)]
pub struct NewKey {
    /// A human name.
    pub alias: Option<String>,
    /// The team (must exist).
    pub team_id: Option<String>,
    /// The user it is made for.
    pub user_id: Option<String>,
    /// Grants; `None`: the configured default grants (none for a team's key,
    /// which then takes its team's).
    pub grants: Option<Vec<String>>,
    /// Lifetime from now; `None`: no expiry.
    pub expires_in: Option<Duration>,
    /// Created revoked.
    pub blocked: bool,
    /// Rate limits, budget, weight.
    pub limits: Limits,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
}

/// A change to a key (admin `POST /key/update`): `Keep` leaves a field as it
/// is, `Clear` removes it (a limit, the budget, the expiry).
#[derive(Clone, Debug, Default)]
pub struct KeyUpdate {
    /// The alias.
    pub alias: Patch<String>,
    /// The team (must exist).
    pub team_id: Patch<String>,
    /// The user.
    pub user_id: Patch<String>,
    /// The grants (`Clear`: none).
    pub grants: Patch<Vec<String>>,
    /// A new lifetime from now (`Clear`: never expires).
    pub expires_in: Patch<Duration>,
    /// Revoke (`true`) or restore (`false`).
    pub blocked: Option<bool>,
    /// Requests per minute.
    pub rpm: Patch<u64>,
    /// Tokens per minute.
    pub tpm: Patch<u64>,
    /// The budget's maximum in USD (`Clear`: no budget).
    pub max_budget: Patch<f64>,
    /// The budget's period.
    pub budget_period: Patch<BudgetPeriod>,
    /// The fair-queuing weight (`Clear`: 1).
    pub weight: Patch<u32>,
    /// The metadata, replaced whole (`Clear`: empty).
    pub metadata: Patch<Map<String, Value>>,
}

/// Settings of a new team (admin `POST /team/new`).
#[derive(Clone, Debug, Default)]
pub struct NewTeam {
    /// The team's id; `None`: generated.
    pub id: Option<String>,
    /// A human name.
    pub alias: Option<String>,
    /// The team's grants: a ceiling for its keys (empty: none).
    pub grants: Vec<String>,
    /// Created revoked.
    pub blocked: bool,
    /// Rate limits, budget, weight.
    pub limits: Limits,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Its first members (LiteLLM's `members_with_roles`).
    pub members: Vec<TeamMember>,
}

/// A change to a team (admin `POST /team/update`); see [`KeyUpdate`].
#[derive(Clone, Debug, Default)]
pub struct TeamUpdate {
    /// The alias.
    pub alias: Patch<String>,
    /// The grants (`Clear`: no ceiling).
    pub grants: Patch<Vec<String>>,
    /// Revoke every key of the team (`true`) or restore them (`false`).
    pub blocked: Option<bool>,
    /// Requests per minute.
    pub rpm: Patch<u64>,
    /// Tokens per minute.
    pub tpm: Patch<u64>,
    /// The budget's maximum in USD.
    pub max_budget: Patch<f64>,
    /// The budget's period.
    pub budget_period: Patch<BudgetPeriod>,
    /// The fair-queuing weight.
    pub weight: Patch<u32>,
    /// The metadata, replaced whole.
    pub metadata: Patch<Map<String, Value>>,
}

/// A key defined in the configuration file (its whole key from the environment).
#[derive(Clone)]
pub struct StaticKey {
    /// The whole key, `tg-<id>-<secret>`.
    pub key: String,
    /// A human name.
    pub alias: Option<String>,
    /// Grants; `None`: the default grants.
    pub grants: Option<Vec<String>>,
    /// Rate limits, budget, weight.
    pub limits: Limits,
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey")
            .field("alias", &self.alias)
            .finish_non_exhaustive()
    }
}

/// A change made elsewhere (by another replica, through a shared store),
/// for [`Keyring::apply`] to bring into this process's memory. A change
/// feed (such as [`PostgresStore::follow`](crate::keys::postgres::PostgresStore::follow))
/// reads the changed rows from the store and sends them here; records carry
/// the store's current state, so applying a change twice, or late, is
/// harmless: the next change of the same key brings its newest state.
///
/// ```
/// use tollgate::keys::{Change, Keyring, KeyUpdate, MemoryStore, NewKey};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Two replicas: `here` learns of `there`'s writes only through `apply`.
/// let (here, there) = (
///     Keyring::builder(MemoryStore::new()).build().await.unwrap(),
///     Keyring::builder(MemoryStore::new()).build().await.unwrap(),
/// );
/// let (key, record) = there.generate(NewKey::default()).await.unwrap();
/// assert!(here.check(&key).is_err());
/// here.apply(Change::Key(record.clone())).unwrap();
/// assert!(here.check(&key).is_ok());
/// let revoked = there
///     .update_key(&record.id, KeyUpdate { blocked: Some(true), ..Default::default() })
///     .await
///     .unwrap();
/// here.apply(Change::Key(revoked)).unwrap();
/// assert_eq!(here.check(&key).unwrap_err().status(), 401);
/// # }
/// ```
#[derive(Clone, Debug)]
pub enum Change {
    /// A key was created or changed: its record as the store now has it.
    Key(KeyRecord),
    /// A key was deleted (its public id).
    KeyDeleted(String),
    /// A team was created or changed: its record as the store now has it.
    Team(TeamRecord),
    /// A user was created or changed: its record as the store now has it.
    User(UserRecord),
    /// A user was deleted (its id); its keys' deletions are changes of their own.
    UserDeleted(String),
    /// A customer was created or changed: its record as the store now has it.
    Customer(CustomerRecord),
    /// A customer was deleted (its id).
    CustomerDeleted(String),
    /// A team was deleted, and its keys with it (its id).
    TeamDeleted(String),
    /// Everything the store has, replacing every stored key and team (after
    /// a gap in the feed). Keys from the configuration file stay.
    Reload(Snapshot),
}

/// A [`Keyring`] that does not keep it alive: for background tasks (a
/// change feed) that should stop when the gateway drops its keyring.
#[derive(Clone, Debug)]
pub struct WeakKeyring(Weak<Inner>);

impl WeakKeyring {
    /// The keyring, while anything else still holds it.
    pub fn upgrade(&self) -> Option<Keyring> {
        self.0.upgrade().map(|inner| Keyring { inner })
    }
}

struct Entry {
    hash: KeyHash,
    key: Key,
    record: KeyRecord,
    source: Source,
}

#[derive(Default)]
struct Index {
    keys: crate::Map<Box<str>, Entry>,
    teams: crate::Map<String, TeamRecord>,
    users: crate::Map<String, UserRecord>,
    customers: crate::Map<String, (CustomerRecord, Customer)>,
}

/// A stored key's snapshot, with its team and its user from the index.
fn snapshot_of(
    record: &KeyRecord,
    teams: &crate::Map<String, TeamRecord>,
    users: &crate::Map<String, UserRecord>,
    groups: &AccessGroups,
) -> Key {
    Key::from_parts(
        record,
        record.team_id.as_ref().and_then(|t| teams.get(t)),
        record.user_id.as_ref().and_then(|u| users.get(u)),
        groups,
    )
}

struct Inner {
    index: RwLock<Index>,
    store: Arc<dyn KeyStore>,
    groups: AccessGroups,
    models: Option<Vec<String>>,
    default_grants: Vec<String>,
    write: tokio::sync::Mutex<()>,
}

/// Every key and team in memory, for the hot path (no I/O: a hash, a map
/// lookup under a read lock, an `Arc` clone), and the write path the admin
/// API uses: validate, write to the store, then swap into memory, so a revoke
/// or an update holds for the very next request on this process.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inner.index.read().map_or(0, |i| i.keys.len());
        f.debug_struct("Keyring")
            .field("keys", &n)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Keyring`].
pub struct KeyringBuilder {
    store: Arc<dyn KeyStore>,
    groups: AccessGroups,
    models: Option<Vec<String>>,
    default_grants: Vec<String>,
    statics: Vec<StaticKey>,
}

impl fmt::Debug for KeyringBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringBuilder").finish_non_exhaustive()
    }
}

impl KeyringBuilder {
    /// The access groups grants may name.
    pub fn access_groups(mut self, groups: AccessGroups) -> Self {
        self.groups = groups;
        self
    }

    /// The model names served: when given, a grant that is neither one of
    /// these, an access group nor a pattern is refused by the write path.
    pub fn models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Grants given to a new key created without any (and not in a team).
    pub fn default_grants(mut self, grants: Vec<String>) -> Self {
        self.default_grants = grants;
        self
    }

    /// A key from the configuration file: served like the others, changed
    /// only by changing the file.
    pub fn static_key(mut self, key: StaticKey) -> Self {
        self.statics.push(key);
        self
    }

    /// Loads the store into memory.
    pub async fn build(self) -> Result<Keyring, StoreError> {
        let snapshot = self.store.load().await?;
        let mut index = Index::default();
        for t in snapshot.teams {
            index.teams.insert(t.id.clone(), t);
        }
        for u in snapshot.users {
            index.users.insert(u.id.clone(), u);
        }
        for c in snapshot.customers {
            index
                .customers
                .insert(c.id.clone(), (c.clone(), Customer::from_record(&c)));
        }
        let groups = self.groups;
        for record in snapshot.keys {
            let key = snapshot_of(&record, &index.teams, &index.users, &groups);
            index.keys.insert(
                record.id.as_str().into(),
                Entry {
                    hash: record.hash,
                    key,
                    record,
                    source: Source::Store,
                },
            );
        }
        for s in self.statics {
            let (id, secret) = token::parse(&s.key)
                .map_err(|e| StoreError::new(format!("a static key: {}", e.message())))?;
            if index.keys.contains_key(id) {
                return Err(StoreError::new(format!(
                    "the static key `{id}` has the id of a key already in the store (or of another static key)"
                )));
            }
            let mut record = KeyRecord::new(id, KeyHash::of(id, secret));
            record.alias = s.alias;
            record.grants = s.grants.unwrap_or_else(|| self.default_grants.clone());
            record.limits = s.limits;
            let key = Key::from_record(&record, None, &groups);
            index.keys.insert(
                id.into(),
                Entry {
                    hash: record.hash,
                    key,
                    record,
                    source: Source::Config,
                },
            );
        }
        Ok(Keyring {
            inner: Arc::new(Inner {
                index: RwLock::new(index),
                store: self.store,
                groups,
                models: self.models,
                default_grants: self.default_grants,
                write: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

fn bad(param: &str, message: impl Into<String>) -> Error {
    let message = message.into();
    Error::new(Reason::InvalidRequest, format!("`{param}`: {message}")).with_meta("param", param)
}

fn not_found(what: &str) -> Error {
    Error::new(Reason::NotFound, format!("No {what} here.")).with_meta("param", "key")
}

fn store_failed(e: StoreError) -> Error {
    tracing::error!(error = %e, "key store write failed");
    Error::new(
        Reason::StateUnavailable,
        "The key store could not be written; nothing was changed. Try again.",
    )
}

fn poisoned() -> Error {
    Error::new(Reason::Internal, "The key index is unavailable.")
}

/// A new key's id and secret, from the system's randomness.
fn draw_key() -> Result<(String, String), Error> {
    token::generate().map_err(|e| {
        tracing::error!(error = %e, "no randomness for a new key");
        Error::new(Reason::Internal, "Could not draw a random key.")
    })
}

/// The credential a request presents: `Authorization: Bearer …`, else `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Result<&str, Error> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let v = v.to_str().map_err(|_| {
            Error::new(
                Reason::MalformedKey,
                "The Authorization header is not readable text.",
            )
        })?;
        let v = v.trim();
        let token = v
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        return token.filter(|t| !t.is_empty()).ok_or_else(|| {
            Error::new(
                Reason::MalformedKey,
                "The Authorization header must carry the key with the scheme Bearer.",
            )
        });
    }
    if let Some(v) = headers.get("x-api-key") {
        return v
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::new(
                    Reason::MalformedKey,
                    "The x-api-key header is empty or not text.",
                )
            });
    }
    Err(Error::new(
        Reason::MissingKey,
        "No API key was sent. Send it in the `x-api-key` header, or in `Authorization` with the scheme Bearer.",
    ))
}

impl Keyring {
    /// A builder over `store`.
    pub fn builder(store: impl KeyStore) -> KeyringBuilder {
        Self::builder_arc(Arc::new(store))
    }

    /// A builder over a shared store.
    pub fn builder_arc(store: Arc<dyn KeyStore>) -> KeyringBuilder {
        KeyringBuilder {
            store,
            groups: AccessGroups::default(),
            models: None,
            default_grants: Vec::new(),
            statics: Vec::new(),
        }
    }

    /// The hot path: the key a request presents, or the 401 that says why
    /// not. Memory only; the key, its secret and its hash appear in no error.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Key, Error> {
        self.check(presented_key(headers)?)
    }

    /// Checks one presented key string (see [`authenticate`](Self::authenticate)).
    pub fn check(&self, presented: &str) -> Result<Key, Error> {
        let (id, secret) = token::parse(presented)?;
        let hash = KeyHash::of(id, secret);
        let key = {
            let index = self.inner.index.read().map_err(|_| poisoned())?;
            match index.keys.get(id) {
                Some(e) if e.hash.matches(&hash) => e.key.clone(),
                _ => {
                    return Err(Error::new(
                        Reason::UnknownKey,
                        "This API key is not known here: it may have been deleted or mistyped. Check it, or ask your admin for a new one.",
                    ));
                }
            }
        };
        if key.is_blocked() {
            let whose = if key.team().is_some_and(|t| t.is_blocked()) {
                "Its team was revoked"
            } else {
                "It was revoked"
            };
            return Err(Error::new(
                Reason::KeyRevoked,
                format!(
                    "The API key `{}` no longer works: {whose}. Ask your admin for a new key.",
                    key.id()
                ),
            )
            .with_meta("key_id", key.id()));
        }
        if let Some(at) = key.expired_at(unix_now()) {
            return Err(Error::new(
                Reason::KeyExpired,
                format!(
                    "The API key `{}` expired at {}. Ask your admin to extend it or for a new key.",
                    key.id(),
                    super::record::rfc3339(at)
                ),
            )
            .with_meta("key_id", key.id()));
        }
        Ok(key)
    }

    /// A handle that does not keep the keyring alive.
    pub fn downgrade(&self) -> WeakKeyring {
        WeakKeyring(Arc::downgrade(&self.inner))
    }

    /// Brings a change made elsewhere into memory (see [`Change`]): the
    /// entry point of change feeds. Keys from the configuration file are
    /// never replaced or removed by it (a stored key with a static key's id
    /// is skipped, with a warning).
    pub fn apply(&self, change: Change) -> Result<(), Error> {
        match change {
            Change::Key(record) => {
                if self.is_static(&record.id)? {
                    tracing::warn!(key_id = %record.id, "a stored key has the id of a static key; skipped");
                    return Ok(());
                }
                tracing::debug!(key_id = %record.id, blocked = record.blocked, "key changed elsewhere");
                self.install(record)
            }
            Change::KeyDeleted(id) => {
                let mut index = self.inner.index.write().map_err(|_| poisoned())?;
                if index
                    .keys
                    .get(id.as_str())
                    .is_some_and(|e| e.source == Source::Store)
                {
                    index.keys.remove(id.as_str());
                    tracing::debug!(key_id = %id, "key deleted elsewhere");
                }
                Ok(())
            }
            Change::Team(team) => {
                tracing::debug!(team = %team.id, blocked = team.blocked, "team changed elsewhere");
                self.install_team(team)
            }
            Change::User(user) => {
                tracing::debug!(user = %user.id, "user changed elsewhere");
                self.install_user(user)
            }
            Change::UserDeleted(id) => {
                tracing::debug!(user = %id, "user deleted elsewhere");
                self.remove_user(&id)
            }
            Change::Customer(customer) => {
                tracing::debug!(customer = %customer.id, blocked = customer.blocked, "customer changed elsewhere");
                self.install_customer(customer)
            }
            Change::CustomerDeleted(id) => {
                tracing::debug!(customer = %id, "customer deleted elsewhere");
                self.remove_customer(&id)
            }
            Change::TeamDeleted(id) => {
                let keys = self.uninstall_team(&id)?;
                tracing::debug!(team = %id, keys = keys.len(), "team deleted elsewhere");
                Ok(())
            }
            Change::Reload(snapshot) => {
                let mut index = self.inner.index.write().map_err(|_| poisoned())?;
                let Index {
                    keys,
                    teams,
                    users,
                    customers,
                } = &mut *index;
                teams.clear();
                for t in snapshot.teams {
                    teams.insert(t.id.clone(), t);
                }
                users.clear();
                for u in snapshot.users {
                    users.insert(u.id.clone(), u);
                }
                customers.clear();
                for c in snapshot.customers {
                    customers.insert(c.id.clone(), (c.clone(), Customer::from_record(&c)));
                }
                keys.retain(|_, e| e.source == Source::Config);
                for record in snapshot.keys {
                    if keys.contains_key(record.id.as_str()) {
                        tracing::warn!(key_id = %record.id, "a stored key has the id of a static key; skipped");
                        continue;
                    }
                    let key = snapshot_of(&record, teams, users, &self.inner.groups);
                    keys.insert(
                        record.id.as_str().into(),
                        Entry {
                            hash: record.hash,
                            key,
                            record,
                            source: Source::Store,
                        },
                    );
                }
                tracing::info!(
                    keys = keys.len(),
                    teams = teams.len(),
                    "keys reloaded from the store"
                );
                Ok(())
            }
        }
    }

    fn is_static(&self, id: &str) -> Result<bool, Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        Ok(index
            .keys
            .get(id)
            .is_some_and(|e| e.source == Source::Config))
    }

    /// The access groups grants may name.
    pub fn access_groups(&self) -> &AccessGroups {
        &self.inner.groups
    }

    /// How many keys are loaded.
    pub fn len(&self) -> usize {
        self.inner.index.read().map_or(0, |i| i.keys.len())
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_grants(&self, grants: &[String], param: &str) -> Result<(), Error> {
        for (i, g) in grants.iter().enumerate() {
            let at = format!("{param}[{i}]");
            if g.trim().is_empty() {
                return Err(bad(&at, "must not be empty"));
            }
            if let Some(models) = &self.inner.models
                && !g.contains('*')
                && !self.inner.groups.contains(g)
                && !models.contains(g)
            {
                return Err(bad(
                    &at,
                    format!(
                        "`{g}` is neither a model served here, an access group, nor a pattern with `*`"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_limits(&self, limits: &Limits) -> Result<(), Error> {
        if let Some(b) = limits.max_budget
            && (!b.is_finite() || b < 0.0)
        {
            return Err(bad("max_budget", "must be a number of USD, 0 or more"));
        }
        if limits.weight == 0 {
            return Err(bad("weight", "must be at least 1"));
        }
        Ok(())
    }

    /// Finds a key by its public id, or by the whole key (checked against its hash).
    fn resolve<'a>(&self, index: &'a Index, ident: &str) -> Result<&'a Entry, Error> {
        let id = match token::parse(ident) {
            Ok((id, secret)) => {
                let e = index.keys.get(id).ok_or_else(|| not_found("such key"))?;
                if !e.hash.matches(&KeyHash::of(id, secret)) {
                    return Err(not_found("such key"));
                }
                return Ok(e);
            }
            Err(_) => ident.strip_prefix(token::PREFIX).unwrap_or(ident),
        };
        index.keys.get(id).ok_or_else(|| {
            let shown = if token::valid_id(id) {
                id
            } else {
                "(not a key id)"
            };
            not_found(&format!("key `{shown}`"))
        })
    }

    /// A key's record and where it comes from, by public id or whole key.
    pub fn key_info(&self, ident: &str) -> Result<(KeyRecord, Source), Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let e = self.resolve(&index, ident)?;
        Ok((e.record.clone(), e.source))
    }

    /// A page of keys (1-based `page`), ordered by creation, optionally of one
    /// team, and the total count.
    pub fn list_keys(
        &self,
        team: Option<&str>,
        page: usize,
        size: usize,
    ) -> Result<(Vec<(KeyRecord, Source)>, usize), Error> {
        self.list_keys_where(
            |r| team.is_none_or(|t| r.team_id.as_deref() == Some(t)),
            page,
            size,
        )
    }

    /// A page of the keys `keep` accepts (1-based `page`), ordered by
    /// creation, and how many it accepts in all.
    pub fn list_keys_where(
        &self,
        keep: impl Fn(&KeyRecord) -> bool,
        page: usize,
        size: usize,
    ) -> Result<(Vec<(KeyRecord, Source)>, usize), Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let mut all: Vec<&Entry> = index.keys.values().filter(|e| keep(&e.record)).collect();
        all.sort_unstable_by(|a, b| {
            (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
        });
        let total = all.len();
        let page = all
            .into_iter()
            .skip(page.saturating_sub(1).saturating_mul(size))
            .take(size)
            .map(|e| (e.record.clone(), e.source))
            .collect();
        Ok((page, total))
    }

    /// Every key `keep` accepts, ordered by creation.
    pub fn find_keys(
        &self,
        keep: impl Fn(&KeyRecord) -> bool,
    ) -> Result<Vec<(KeyRecord, Source)>, Error> {
        Ok(self.list_keys_where(keep, 1, usize::MAX)?.0)
    }

    /// Every team, ordered by id, with the ids of its keys.
    pub fn list_teams(&self) -> Result<Vec<(TeamRecord, Vec<String>)>, Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let mut keys: crate::Map<&str, Vec<String>> = crate::Map::default();
        for e in index.keys.values() {
            if let Some(t) = e.record.team_id.as_deref() {
                keys.entry(t).or_default().push(e.record.id.clone());
            }
        }
        let mut teams: Vec<(TeamRecord, Vec<String>)> = index
            .teams
            .values()
            .map(|t| {
                let mut ids = keys.remove(t.id.as_str()).unwrap_or_default();
                ids.sort_unstable();
                (t.clone(), ids)
            })
            .collect();
        teams.sort_unstable_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(teams)
    }

    /// A team's record and the ids of its keys.
    pub fn team_info(&self, id: &str) -> Result<(TeamRecord, Vec<String>), Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let team = index
            .teams
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(&format!("team `{id}`")).with_meta("param", "team_id"))?;
        let mut keys: Vec<String> = index
            .keys
            .values()
            .filter(|e| e.record.team_id.as_deref() == Some(id))
            .map(|e| e.record.id.clone())
            .collect();
        keys.sort_unstable();
        Ok((team, keys))
    }

    fn team_exists(&self, id: &str) -> Result<(), Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        if index.teams.contains_key(id) {
            Ok(())
        } else {
            Err(bad(
                "team_id",
                format!("no team `{id}`; create it first with POST /team/new"),
            ))
        }
    }

    /// With a store other processes write too: brings the key `ident`
    /// names up to date from the store before a write reads it.
    async fn refresh_key(&self, ident: &str) -> Result<(), Error> {
        let id = match token::parse(ident) {
            Ok((id, _)) => id,
            Err(_) => ident.strip_prefix(token::PREFIX).unwrap_or(ident),
        };
        if !token::valid_id(id) {
            return Ok(());
        }
        if let Some(read) = self.inner.store.get_key(id) {
            match read.await.map_err(store_failed)? {
                Some(record) => self.apply(Change::Key(record))?,
                None => self.apply(Change::KeyDeleted(id.to_owned()))?,
            }
        }
        Ok(())
    }

    /// As [`refresh_key`](Self::refresh_key), for a team (gone from the
    /// store: deleted here too, with its keys).
    async fn refresh_team(&self, id: &str) -> Result<(), Error> {
        if let Some(read) = self.inner.store.get_team(id) {
            match read.await.map_err(store_failed)? {
                Some(team) => self.apply(Change::Team(team))?,
                None => self.apply(Change::TeamDeleted(id.to_owned()))?,
            }
        }
        Ok(())
    }

    /// Puts a key into memory (after the store took it).
    /// Writes a key to the store, then to memory: it holds for the next request.
    async fn save_key(&self, r: &KeyRecord) -> Result<(), Error> {
        self.inner
            .store
            .put_key(r.clone())
            .await
            .map_err(store_failed)?;
        self.install(r.clone())
    }

    fn install(&self, record: KeyRecord) -> Result<(), Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        let key = snapshot_of(&record, &index.teams, &index.users, &self.inner.groups);
        index.keys.insert(
            record.id.as_str().into(),
            Entry {
                hash: record.hash,
                key,
                record,
                source: Source::Store,
            },
        );
        Ok(())
    }

    /// Creates a key; returns the whole key (the only time it is ever known)
    /// and its record.
    pub async fn generate(&self, new: NewKey) -> Result<(String, KeyRecord), Error> {
        let _write = self.inner.write.lock().await;
        if let Some(t) = &new.team_id {
            self.refresh_team(t).await?;
            self.team_exists(t)?;
        }
        if let Some(g) = &new.grants {
            self.check_grants(g, "models")?;
        }
        self.check_limits(&new.limits)?;
        let (id, secret) = draw_key()?;
        let mut r = KeyRecord::new(id.clone(), KeyHash::of(&id, &secret));
        r.alias = new.alias;
        r.user_id = new.user_id;
        r.grants = match (new.grants, &new.team_id) {
            (Some(g), _) => g,
            (None, Some(_)) => Vec::new(),
            (None, None) => self.inner.default_grants.clone(),
        };
        r.team_id = new.team_id;
        r.expires_at = new.expires_in.map(|d| r.created_at + d.as_secs());
        r.blocked = new.blocked;
        r.limits = new.limits;
        r.metadata = new.metadata;
        self.save_key(&r).await?;
        tracing::info!(key_id = %r.id, team = r.team_id.as_deref(), "key created");
        Ok((token::format_key(&id, &secret), r))
    }

    fn stored_record(&self, ident: &str) -> Result<KeyRecord, Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let e = self.resolve(&index, ident)?;
        if e.source == Source::Config {
            return Err(bad(
                "key",
                format!(
                    "the key `{}` is defined in the configuration file; change it there",
                    e.record.id
                ),
            ));
        }
        Ok(e.record.clone())
    }

    /// Changes a key, whole or not at all; the change holds for the next request.
    pub async fn update_key(&self, ident: &str, u: KeyUpdate) -> Result<KeyRecord, Error> {
        let _write = self.inner.write.lock().await;
        self.refresh_key(ident).await?;
        let mut r = self.stored_record(ident)?;
        if let Patch::Set(t) = &u.team_id {
            self.refresh_team(t).await?;
            self.team_exists(t)?;
        }
        if let Patch::Set(g) = &u.grants {
            self.check_grants(g, "models")?;
        }
        let now = unix_now();
        u.alias.apply(&mut r.alias);
        u.team_id.apply(&mut r.team_id);
        u.user_id.apply(&mut r.user_id);
        match u.grants {
            Patch::Keep => {}
            Patch::Clear => r.grants.clear(),
            Patch::Set(g) => r.grants = g,
        }
        match u.expires_in {
            Patch::Keep => {}
            Patch::Clear => r.expires_at = None,
            Patch::Set(d) => r.expires_at = Some(now + d.as_secs()),
        }
        if let Some(b) = u.blocked {
            r.blocked = b;
        }
        apply_limits(
            &mut r.limits,
            u.rpm,
            u.tpm,
            u.max_budget,
            u.budget_period,
            u.weight,
        );
        match u.metadata {
            Patch::Keep => {}
            Patch::Clear => r.metadata.clear(),
            Patch::Set(m) => r.metadata = m,
        }
        self.check_limits(&r.limits)?;
        r.updated_at = now;
        self.save_key(&r).await?;
        tracing::info!(key_id = %r.id, blocked = r.blocked, "key updated");
        Ok(r)
    }

    /// Gives a key a new secret, keeping its id, settings and spend: returns
    /// the new whole key (the only time it is known) and the record. The old
    /// key is refused (401) from the next request on.
    pub async fn regenerate(&self, ident: &str) -> Result<(String, KeyRecord), Error> {
        let _write = self.inner.write.lock().await;
        self.refresh_key(ident).await?;
        let mut r = self.stored_record(ident)?;
        let (_, secret) = draw_key()?;
        r.hash = KeyHash::of(&r.id, &secret);
        r.updated_at = unix_now();
        self.save_key(&r).await?;
        tracing::info!(key_id = %r.id, "key regenerated");
        Ok((token::format_key(&r.id, &secret), r))
    }

    /// Deletes keys, all or none; the next request with any of them is 401.
    pub async fn delete_keys(&self, idents: &[String]) -> Result<Vec<String>, Error> {
        let _write = self.inner.write.lock().await;
        for ident in idents {
            self.refresh_key(ident).await?;
        }
        let mut ids = Vec::with_capacity(idents.len());
        for ident in idents {
            let id = self.stored_record(ident)?.id;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        self.inner
            .store
            .delete_keys(ids.clone())
            .await
            .map_err(store_failed)?;
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        for id in &ids {
            index.keys.remove(id.as_str());
        }
        drop(index);
        tracing::info!(keys = ?ids, "keys deleted");
        Ok(ids)
    }

    /// Creates a team.
    pub async fn create_team(&self, new: NewTeam) -> Result<TeamRecord, Error> {
        let _write = self.inner.write.lock().await;
        let id = match new.id {
            Some(id) => {
                if !token::valid_id(&id) {
                    return Err(bad(
                        "team_id",
                        "must be 1 to 64 letters, digits or underscores",
                    ));
                }
                self.refresh_team(&id).await?;
                let index = self.inner.index.read().map_err(|_| poisoned())?;
                if index.teams.contains_key(&id) {
                    return Err(bad("team_id", format!("a team `{id}` already exists")));
                }
                id
            }
            None => {
                token::generate()
                    .map_err(|_| Error::new(Reason::Internal, "Could not draw a random id."))?
                    .0
            }
        };
        self.check_grants(&new.grants, "models")?;
        self.check_limits(&new.limits)?;
        teams::check_new_members(&id, &[], &new.members, "members_with_roles")?;
        let mut t = TeamRecord::new(id);
        t.alias = new.alias;
        t.grants = new.grants;
        t.blocked = new.blocked;
        t.limits = new.limits;
        t.metadata = new.metadata;
        t.members = new.members;
        self.inner
            .store
            .put_team(t.clone())
            .await
            .map_err(store_failed)?;
        self.install_team(t.clone())?;
        tracing::info!(team = %t.id, "team created");
        Ok(t)
    }

    /// Changes a team, whole or not at all; its keys see it on their next request.
    pub async fn update_team(&self, id: &str, u: TeamUpdate) -> Result<TeamRecord, Error> {
        let _write = self.inner.write.lock().await;
        self.refresh_team(id).await?;
        let mut t = self.team_info(id)?.0;
        if let Patch::Set(g) = &u.grants {
            self.check_grants(g, "models")?;
        }
        u.alias.apply(&mut t.alias);
        match u.grants {
            Patch::Keep => {}
            Patch::Clear => t.grants.clear(),
            Patch::Set(g) => t.grants = g,
        }
        if let Some(b) = u.blocked {
            t.blocked = b;
        }
        apply_limits(
            &mut t.limits,
            u.rpm,
            u.tpm,
            u.max_budget,
            u.budget_period,
            u.weight,
        );
        match u.metadata {
            Patch::Keep => {}
            Patch::Clear => t.metadata.clear(),
            Patch::Set(m) => t.metadata = m,
        }
        self.check_limits(&t.limits)?;
        t.updated_at = unix_now();
        self.inner
            .store
            .put_team(t.clone())
            .await
            .map_err(store_failed)?;
        self.install_team(t.clone())?;
        tracing::info!(team = %t.id, "team updated");
        Ok(t)
    }

    /// Puts a team into memory and rebuilds its keys' snapshots.
    fn install_team(&self, team: TeamRecord) -> Result<(), Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        let Index {
            keys, teams, users, ..
        } = &mut *index;
        let id = team.id.clone();
        teams.insert(team.id.clone(), team);
        for e in keys
            .values_mut()
            .filter(|e| e.record.team_id.as_deref() == Some(id.as_str()))
        {
            e.key = snapshot_of(&e.record, teams, users, &self.inner.groups);
        }
        Ok(())
    }
}

mod people;
pub use people::{CustomerUpdate, NewCustomer, NewUser, UserUpdate};

fn apply_limits(
    limits: &mut Limits,
    rpm: Patch<u64>,
    tpm: Patch<u64>,
    max_budget: Patch<f64>,
    budget_period: Patch<BudgetPeriod>,
    weight: Patch<u32>,
) {
    rpm.apply(&mut limits.rpm);
    tpm.apply(&mut limits.tpm);
    max_budget.apply(&mut limits.max_budget);
    budget_period.apply(&mut limits.budget_period);
    match weight {
        Patch::Keep => {}
        Patch::Clear => limits.weight = 1,
        Patch::Set(w) => limits.weight = w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemoryStore;
    use http::StatusCode;

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
        h
    }

    async fn ring() -> Keyring {
        Keyring::builder(MemoryStore::new())
            .models(["a", "b", "c"])
            .access_groups(AccessGroups::new([("ab", ["a", "b"])]))
            .default_grants(vec!["a".into()])
            .build()
            .await
            .unwrap()
    }

    fn reason(r: Result<Key, Error>) -> Reason {
        r.unwrap_err().reason()
    }

    #[tokio::test]
    async fn each_failure_has_its_reason_and_no_secret() {
        let ring = ring().await;
        let (key, rec) = ring.generate(NewKey::default()).await.unwrap();
        let got = ring.authenticate(&headers(&key)).unwrap();
        assert_eq!(got.id(), rec.id);
        assert!(
            got.grants().allows("a") && !got.grants().allows("b"),
            "default grants"
        );

        assert_eq!(
            reason(ring.authenticate(&HeaderMap::new())),
            Reason::MissingKey
        );
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, "Basic Zm9vOmJhcg==".parse().unwrap());
        assert_eq!(reason(ring.authenticate(&h)), Reason::MalformedKey);
        assert_eq!(
            reason(ring.authenticate(&headers("sk-nope"))),
            Reason::MalformedKey
        );
        // Change the secret's last character to a different one (a fixed
        // replacement would equal it once in 62 generated keys).
        let last = if key.ends_with('X') { 'Y' } else { 'X' };
        let wrong = format!("{}{last}", &key[..key.len() - 1]);
        assert_ne!(wrong, key);
        let e = ring.authenticate(&headers(&wrong)).unwrap_err();
        assert_eq!(e.reason(), Reason::UnknownKey);
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", key.parse().unwrap());
        assert!(ring.authenticate(&h).is_ok());

        let secret = key.rsplit('-').next().unwrap();
        let hex = rec.hash.to_hex();
        for bad in [&wrong, &key] {
            ring.update_key(
                &rec.id,
                KeyUpdate {
                    blocked: Some(bad == &key),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            if let Err(e) = ring.authenticate(&headers(bad)) {
                let text = format!("{e:?} {e} {}", e.message());
                assert!(!text.contains(secret) && !text.contains(&hex), "{text}");
            }
        }
        assert_eq!(
            reason(ring.authenticate(&headers(&key))),
            Reason::KeyRevoked
        );
    }

    #[tokio::test]
    async fn a_regenerated_key_keeps_its_id_and_settings_and_the_old_one_stops() {
        let ring = ring().await;
        let (old, rec) = ring
            .generate(NewKey {
                alias: Some("ci".into()),
                ..NewKey::default()
            })
            .await
            .unwrap();
        let (new, r) = ring.regenerate(&rec.id).await.unwrap();
        assert_ne!(new, old);
        assert_eq!(
            (r.id.as_str(), r.alias.as_deref()),
            (rec.id.as_str(), Some("ci"))
        );
        assert_eq!(ring.authenticate(&headers(&new)).unwrap().id(), rec.id);
        assert_eq!(
            reason(ring.authenticate(&headers(&old))),
            Reason::UnknownKey
        );
        // The store holds the new hash: a keyring loaded from it agrees.
        let stored = ring.inner.store.load().await.unwrap();
        let hash = stored.keys.iter().find(|k| k.id == rec.id).unwrap().hash;
        assert_eq!(hash, r.hash);
        assert_ne!(hash, rec.hash);
    }

    #[tokio::test]
    async fn expiry_and_null_removes_limits() {
        let ring = ring().await;
        let new = NewKey {
            expires_in: Some(Duration::from_secs(3600)),
            limits: Limits {
                rpm: Some(10),
                tpm: Some(99),
                max_budget: Some(5.0),
                ..Limits::default()
            },
            alias: Some("ci".into()),
            ..NewKey::default()
        };
        let (key, rec) = ring.generate(new).await.unwrap();
        assert!(ring.check(&key).is_ok());
        let r = ring
            .update_key(
                &rec.id,
                KeyUpdate {
                    rpm: Patch::Clear,
                    max_budget: Patch::Clear,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (
                r.limits.rpm,
                r.limits.tpm,
                r.limits.max_budget,
                r.alias.as_deref()
            ),
            (None, Some(99), None, Some("ci"))
        );
        let k = ring.check(&key).unwrap();
        assert_eq!((k.rpm_limit(), k.budget()), (None, None));
        ring.update_key(
            &rec.id,
            KeyUpdate {
                expires_in: Patch::Set(Duration::ZERO),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(reason(ring.check(&key)), Reason::KeyExpired);
        ring.update_key(
            &rec.id,
            KeyUpdate {
                expires_in: Patch::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(ring.check(&key).is_ok());
    }

    #[tokio::test]
    async fn bad_input_changes_nothing() {
        let ring = ring().await;
        let (key, rec) = ring.generate(NewKey::default()).await.unwrap();
        let e = ring
            .update_key(
                &rec.id,
                KeyUpdate {
                    alias: Patch::Set("changed".into()),
                    grants: Patch::Set(vec!["a".into(), "nope".into()]),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["param"], "models[1]");
        let e = ring
            .update_key(
                &rec.id,
                KeyUpdate {
                    alias: Patch::Set("changed".into()),
                    team_id: Patch::Set("ghost".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["param"], "team_id");
        let e = ring
            .update_key(
                &rec.id,
                KeyUpdate {
                    alias: Patch::Set("changed".into()),
                    max_budget: Patch::Set(-1.0),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["param"], "max_budget");
        assert_eq!(ring.key_info(&key).unwrap().0, rec);
    }

    #[tokio::test]
    async fn teams_are_a_ceiling_and_revoke_their_keys() {
        let ring = ring().await;
        let team = ring
            .create_team(NewTeam {
                id: Some("ml".into()),
                grants: vec!["ab".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let (inherit, _) = ring
            .generate(NewKey {
                team_id: Some(team.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let (own, _) = ring
            .generate(NewKey {
                team_id: Some(team.id.clone()),
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        for k in [&inherit, &own] {
            let g = ring.check(k).unwrap();
            assert!(g.grants().allows("a") && g.grants().allows("b") && !g.grants().allows("c"));
            assert_eq!(g.team().unwrap().id(), "ml");
        }
        ring.update_team(
            "ml",
            TeamUpdate {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(reason(ring.check(&own)), Reason::KeyRevoked);
        ring.update_team(
            "ml",
            TeamUpdate {
                blocked: Some(false),
                grants: Patch::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(ring.check(&own).unwrap().grants().allows("c"));
        assert!(ring.check(&inherit).unwrap().grants().is_empty());
        assert_eq!(ring.team_info("ml").unwrap().1.len(), 2);
    }

    #[tokio::test]
    async fn delete_and_list() {
        let ring = ring().await;
        let mut keys = Vec::new();
        for _ in 0..5 {
            keys.push(ring.generate(NewKey::default()).await.unwrap());
        }
        let (page, total) = ring.list_keys(None, 2, 2).unwrap();
        assert_eq!((page.len(), total), (2, 5));
        let e = ring
            .delete_keys(&[keys[0].1.id.clone(), "ghost".into()])
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert!(ring.check(&keys[0].0).is_ok(), "all or none");
        ring.delete_keys(&[keys[0].0.clone()]).await.unwrap();
        assert_eq!(reason(ring.check(&keys[0].0)), Reason::UnknownKey);
        assert_eq!(ring.len(), 4);
    }

    #[tokio::test]
    async fn changes_from_elsewhere_are_applied_and_spare_static_keys() {
        let static_key = "tg-static1-0123456789abcdefghij";
        let here = Keyring::builder(MemoryStore::new())
            .static_key(StaticKey {
                key: static_key.into(),
                alias: None,
                grants: Some(vec!["*".into()]),
                limits: Limits::default(),
            })
            .build()
            .await
            .unwrap();
        let there = ring().await;
        let team = there
            .create_team(NewTeam {
                id: Some("ml".into()),
                grants: vec!["a".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let (key, rec) = there
            .generate(NewKey {
                team_id: Some("ml".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        here.apply(Change::Team(team)).unwrap();
        here.apply(Change::Key(rec.clone())).unwrap();
        assert!(here.check(&key).unwrap().grants().allows("a"));
        let blocked = there
            .update_team(
                "ml",
                TeamUpdate {
                    blocked: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        here.apply(Change::Team(blocked)).unwrap();
        assert_eq!(reason(here.check(&key)), Reason::KeyRevoked);

        // A stored key may not replace or remove a static one.
        let mut impostor = KeyRecord::new("static1", KeyHash::of("static1", "another-secret-0000"));
        impostor.blocked = true;
        here.apply(Change::Key(impostor)).unwrap();
        here.apply(Change::KeyDeleted("static1".into())).unwrap();
        assert!(here.check(static_key).is_ok());

        here.apply(Change::KeyDeleted(rec.id.clone())).unwrap();
        assert_eq!(reason(here.check(&key)), Reason::UnknownKey);
        here.apply(Change::Key(rec.clone())).unwrap();
        // A reload replaces every stored key and team, and keeps static keys.
        here.apply(Change::Reload(Snapshot::default())).unwrap();
        assert_eq!(reason(here.check(&key)), Reason::UnknownKey);
        assert!(here.team_info("ml").is_err());
        assert!(here.check(static_key).is_ok());
        assert_eq!(here.len(), 1);
        // A handle that does not keep the keyring alive.
        let weak = here.downgrade();
        assert!(weak.upgrade().is_some());
        drop(here);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test]
    async fn static_keys_are_read_only() {
        let key = "tg-static1-0123456789abcdefghij";
        let ring = Keyring::builder(MemoryStore::new())
            .static_key(StaticKey {
                key: key.into(),
                alias: Some("ci".into()),
                grants: Some(vec!["*".into()]),
                limits: Limits::default(),
            })
            .build()
            .await
            .unwrap();
        assert!(ring.check(key).unwrap().grants().allows("anything"));
        let e = ring
            .update_key("static1", KeyUpdate::default())
            .await
            .unwrap_err();
        assert!(
            e.message().contains("configuration file"),
            "{}",
            e.message()
        );
        assert!(format!("{ring:?}").contains("keys: 1"));
    }
}
