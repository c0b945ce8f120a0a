//! [`Key`]: the authenticated caller, as the inner layers see it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::record::{Budget, CustomerRecord, KeyRecord, TeamRecord, UserRecord};
use crate::access::{AccessGroups, Grants, HasGrants};

/// The authenticated key: a cheap-to-clone (`Arc`) snapshot of everything
/// the inner layers read — grants, rate limits, budgets, fair-queuing weight,
/// team, metadata. `VirtualKeys` attaches it to the request by type; after
/// `ReadRequest` it is `req.body().identity()`.
///
/// It holds no secret and no hash: its `Debug` shows the public id, the alias
/// and the team.
#[derive(Clone)]
pub struct Key(Arc<Inner>);

struct Inner {
    id: Arc<str>,
    alias: Option<Arc<str>>,
    user_id: Option<Arc<str>>,
    user: Option<User>,
    team: Option<Team>,
    grants: Grants,
    expires_at: Option<u64>,
    blocked: bool,
    rpm: Option<u64>,
    tpm: Option<u64>,
    budget: Option<Budget>,
    weight: u32,
    metadata: Map<String, Value>,
}

/// The team of a [`Key`], as the inner layers see it.
#[derive(Clone, Debug)]
pub struct Team {
    id: Arc<str>,
    alias: Option<Arc<str>>,
    blocked: bool,
    rpm: Option<u64>,
    tpm: Option<u64>,
    budget: Option<Budget>,
    weight: u32,
    metadata: Arc<Map<String, Value>>,
}

/// The user of a [`Key`] (the [`UserRecord`] its `user_id` names), as the
/// inner layers see it: the user's id and budget, resolved from memory.
#[derive(Clone, Debug)]
pub struct User {
    id: Arc<str>,
    budget: Option<Budget>,
}

impl User {
    /// The user's snapshot.
    pub fn from_record(record: &UserRecord) -> Self {
        User {
            id: record.id.as_str().into(),
            budget: record.budget(),
        }
    }

    /// The user's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user's id, shared.
    pub fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The user's budget, shared by every key of the user.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }
}

/// A customer (end user) with a record, as the budget hook sees it: its
/// id, budget and whether it is blocked. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Customer {
    id: Arc<str>,
    budget: Option<Budget>,
    blocked: bool,
}

impl Customer {
    /// The customer's snapshot.
    pub fn from_record(record: &CustomerRecord) -> Self {
        Customer {
            id: record.id.as_str().into(),
            budget: record.budget(),
            blocked: record.blocked,
        }
    }

    /// The end user's id, as requests send it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The id, shared.
    pub fn id_arc(&self) -> &Arc<str> {
        &self.id
    }

    /// The end user's budget, across every key.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    /// Whether requests for this end user are refused.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }
}

impl Team {
    /// The team's snapshot.
    pub fn from_record(record: &TeamRecord) -> Self {
        Team {
            id: record.id.as_str().into(),
            alias: record.alias.as_deref().map(Into::into),
            blocked: record.blocked,
            rpm: record.limits.rpm,
            tpm: record.limits.tpm,
            budget: record.limits.budget(),
            weight: record.limits.weight.max(1),
            metadata: Arc::new(record.metadata.clone()),
        }
    }

    /// The team's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The team's human name.
    pub fn alias(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// Whether the whole team is revoked.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The team's requests per minute, shared by its keys.
    pub fn rpm_limit(&self) -> Option<u64> {
        self.rpm
    }

    /// The team's tokens per minute, shared by its keys.
    pub fn tpm_limit(&self) -> Option<u64> {
        self.tpm
    }

    /// The team's budget, shared by its keys.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    /// The team's fair-queuing weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The team's free-form metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }
}

impl Key {
    /// The snapshot of a stored key: its grants compiled (access groups
    /// expanded; a key with no grants of its own takes its team's, and the
    /// team's grants, when it has any, are a ceiling on the key's).
    pub fn from_record(
        record: &KeyRecord,
        team: Option<&TeamRecord>,
        groups: &AccessGroups,
    ) -> Self {
        Self::from_parts(record, team, None, groups)
    }

    /// As [`from_record`](Self::from_record), with the user the key's
    /// `user_id` names (when that user exists).
    pub fn from_parts(
        record: &KeyRecord,
        team: Option<&TeamRecord>,
        user: Option<&UserRecord>,
        groups: &AccessGroups,
    ) -> Self {
        let team_grants = team
            .filter(|t| !t.grants.is_empty())
            .map(|t| Grants::compile(&t.grants, groups));
        let grants = match (record.grants.is_empty(), team_grants) {
            (true, Some(t)) => t,
            (true, None) => Grants::none(),
            (false, Some(t)) => Grants::compile(&record.grants, groups).within(&t),
            (false, None) => Grants::compile(&record.grants, groups),
        };
        Key(Arc::new(Inner {
            id: record.id.as_str().into(),
            alias: record.alias.as_deref().map(Into::into),
            user_id: record.user_id.as_deref().map(Into::into),
            user: user.map(User::from_record),
            team: team.map(Team::from_record),
            grants,
            expires_at: record.expires_at,
            blocked: record.blocked,
            rpm: record.limits.rpm,
            tpm: record.limits.tpm,
            budget: record.limits.budget(),
            weight: record.limits.weight.max(1),
            metadata: record.metadata.clone(),
        }))
    }

    /// The public id (`<id>` in `tg-<id>-<secret>`): what logs, spend
    /// records and metrics name.
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The public id, shared.
    pub fn id_arc(&self) -> &Arc<str> {
        &self.0.id
    }

    /// The key's human name.
    pub fn alias(&self) -> Option<&str> {
        self.0.alias.as_deref()
    }

    /// The user the key was made for.
    pub fn user_id(&self) -> Option<&str> {
        self.0.user_id.as_deref()
    }

    /// The user the key's `user_id` names, when that user exists.
    pub fn user(&self) -> Option<&User> {
        self.0.user.as_ref()
    }

    /// The key's team.
    pub fn team(&self) -> Option<&Team> {
        self.0.team.as_ref()
    }

    /// What the key may use (see [`Grants::allows`]).
    pub fn grants(&self) -> &Grants {
        &self.0.grants
    }

    /// The key's own requests per minute.
    pub fn rpm_limit(&self) -> Option<u64> {
        self.0.rpm
    }

    /// The key's own tokens per minute.
    pub fn tpm_limit(&self) -> Option<u64> {
        self.0.tpm
    }

    /// The key's own budget (the team's is [`Team::budget`]).
    pub fn budget(&self) -> Option<Budget> {
        self.0.budget
    }

    /// The key's fair-queuing weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.0.weight
    }

    /// Free-form metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.0.metadata
    }

    /// When the key stops working.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.0
            .expires_at
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }

    /// Whether the key (or its team) is revoked.
    pub fn is_blocked(&self) -> bool {
        self.0.blocked || self.0.team.as_ref().is_some_and(|t| t.blocked)
    }

    /// Whether the key has expired at `now` (Unix seconds).
    pub(crate) fn expired_at(&self, now: u64) -> Option<u64> {
        self.0.expires_at.filter(|e| *e <= now)
    }
}

impl HasGrants for Key {
    fn grants(&self) -> &Grants {
        &self.0.grants
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.0.id)
            .field("alias", &self.0.alias)
            .field("team", &self.0.team.as_ref().map(|t| &t.id))
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.id)
    }
}
