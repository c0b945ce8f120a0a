//! Where keys and teams are kept: the [`KeyStore`] trait and [`MemoryStore`].
//!
//! A store is the durable copy. The hot path never reads it: a
//! [`Keyring`](super::Keyring) loads everything once at start and serves
//! requests from memory; the admin API writes through the store first and
//! then into memory, so a write the store refused changes nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use super::record::{CustomerRecord, KeyRecord, TeamRecord, UserRecord};

/// A store's future: boxed, since stores are behind `dyn` and off the hot path.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store failed (I/O, a corrupt row, a schema newer than this build).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError(String);

impl StoreError {
    /// An error with this description (never put a secret in it).
    pub fn new(message: impl Into<String>) -> Self {
        StoreError(message.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Everything a store holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every key.
    pub keys: Vec<KeyRecord>,
    /// Every team.
    pub teams: Vec<TeamRecord>,
    /// Every user.
    pub users: Vec<UserRecord>,
    /// Every customer (end user with a record).
    pub customers: Vec<CustomerRecord>,
}

/// Durable storage of keys and teams. Each write is atomic: it happens
/// whole or not at all.
pub trait KeyStore: Send + Sync + 'static {
    /// Everything, to load into memory at start.
    fn load(&self) -> StoreFuture<'_, Snapshot>;
    /// Inserts or replaces a key.
    fn put_key(&self, key: KeyRecord) -> StoreFuture<'_, ()>;
    /// Deletes these keys, all or none.
    fn delete_keys(&self, ids: Vec<String>) -> StoreFuture<'_, ()>;
    /// Inserts or replaces a team.
    fn put_team(&self, team: TeamRecord) -> StoreFuture<'_, ()>;
    /// Deletes these teams and every key that belongs to any of them, all
    /// or none (a team's keys go with it, as in LiteLLM), and returns the
    /// ids of the keys deleted. Spend records are history and are not the
    /// store's: they stay.
    fn delete_teams(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>>;
    /// For a store other processes write too: one key as the store has it
    /// now (`None` inside: no such key), read by the keyring before it
    /// changes a key, so a write starts from the newest state rather than
    /// from this process's memory. `None` (the default): this process's
    /// memory is the truth, nothing to read.
    fn get_key(&self, id: &str) -> Option<StoreFuture<'_, Option<KeyRecord>>> {
        let _ = id;
        None
    }
    /// As [`get_key`](Self::get_key), for a team.
    fn get_team(&self, id: &str) -> Option<StoreFuture<'_, Option<TeamRecord>>> {
        let _ = id;
        None
    }

    // ----- users and customers -----

    /// Inserts or replaces a user.
    fn put_user(&self, user: UserRecord) -> StoreFuture<'_, ()>;
    /// Deletes these users and every key whose `user_id` names one of
    /// them (as LiteLLM's `/user/delete` does), all or none.
    fn delete_users(&self, ids: Vec<String>) -> StoreFuture<'_, ()>;
    /// Inserts or replaces a customer.
    fn put_customer(&self, customer: CustomerRecord) -> StoreFuture<'_, ()>;
    /// Deletes these customers, all or none.
    fn delete_customers(&self, ids: Vec<String>) -> StoreFuture<'_, ()>;
    /// As [`get_key`](Self::get_key), for a user.
    fn get_user(&self, id: &str) -> Option<StoreFuture<'_, Option<UserRecord>>> {
        let _ = id;
        None
    }
    /// As [`get_key`](Self::get_key), for a customer.
    fn get_customer(&self, id: &str) -> Option<StoreFuture<'_, Option<CustomerRecord>>> {
        let _ = id;
        None
    }
}

/// Keys and teams in this process's memory: for tests and for setups whose
/// keys all come from the config file. Nothing survives a restart.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Maps>>,
}

#[derive(Debug, Default)]
struct Maps {
    keys: BTreeMap<String, KeyRecord>,
    teams: BTreeMap<String, TeamRecord>,
    users: BTreeMap<String, UserRecord>,
    customers: BTreeMap<String, CustomerRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Maps) -> T) -> Result<T, StoreError> {
        let mut maps = self
            .inner
            .lock()
            .map_err(|_| StoreError::new("the memory store's lock is poisoned"))?;
        Ok(f(&mut maps))
    }
}

impl KeyStore for MemoryStore {
    fn load(&self) -> StoreFuture<'_, Snapshot> {
        let r = self.with(|m| Snapshot {
            keys: m.keys.values().cloned().collect(),
            teams: m.teams.values().cloned().collect(),
            users: m.users.values().cloned().collect(),
            customers: m.customers.values().cloned().collect(),
        });
        Box::pin(std::future::ready(r))
    }

    fn put_key(&self, key: KeyRecord) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            m.keys.insert(key.id.clone(), key);
        });
        Box::pin(std::future::ready(r))
    }

    fn delete_keys(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            for id in ids {
                m.keys.remove(&id);
            }
        });
        Box::pin(std::future::ready(r))
    }

    fn put_team(&self, team: TeamRecord) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            m.teams.insert(team.id.clone(), team);
        });
        Box::pin(std::future::ready(r))
    }

    fn put_user(&self, user: UserRecord) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            m.users.insert(user.id.clone(), user);
        });
        Box::pin(std::future::ready(r))
    }

    fn delete_users(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            m.keys
                .retain(|_, k| k.user_id.as_ref().is_none_or(|u| !ids.contains(u)));
            for id in ids {
                m.users.remove(&id);
            }
        });
        Box::pin(std::future::ready(r))
    }

    fn put_customer(&self, customer: CustomerRecord) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            m.customers.insert(customer.id.clone(), customer);
        });
        Box::pin(std::future::ready(r))
    }

    fn delete_customers(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        let r = self.with(|m| {
            for id in ids {
                m.customers.remove(&id);
            }
        });
        Box::pin(std::future::ready(r))
    }

    fn delete_teams(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>> {
        let r = self.with(|m| {
            let mut gone = Vec::new();
            m.keys.retain(|id, k| {
                let of_team = k.team_id.as_ref().is_some_and(|t| ids.contains(t));
                if of_team {
                    gone.push(id.clone());
                }
                !of_team
            });
            for id in &ids {
                m.teams.remove(id);
            }
            gone
        });
        Box::pin(std::future::ready(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyHash, MemberRole, TeamMember};

    #[tokio::test]
    async fn deleting_teams_takes_their_keys_and_keeps_the_others() {
        let store = MemoryStore::new();
        let mut ml = TeamRecord::new("ml");
        ml.members.push(TeamMember {
            user_id: Some("alice".into()),
            user_email: None,
            role: MemberRole::Admin,
        });
        store.put_team(ml.clone()).await.unwrap();
        store.put_team(TeamRecord::new("ops")).await.unwrap();
        for (id, team) in [("k1", Some("ml")), ("k2", Some("ops")), ("k3", None)] {
            let mut k = KeyRecord::new(id, KeyHash::of(id, "0123456789abcdefgh"));
            k.team_id = team.map(Into::into);
            store.put_key(k).await.unwrap();
        }
        assert_eq!(store.load().await.unwrap().teams[0], ml, "members kept");
        let gone = store.delete_teams(vec!["ml".into()]).await.unwrap();
        assert_eq!(gone, ["k1"]);
        let snap = store.load().await.unwrap();
        let keys: Vec<&str> = snap.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(keys, ["k2", "k3"]);
        assert_eq!(snap.teams.len(), 1);
        assert_eq!(snap.teams[0].id, "ops");
    }
}
