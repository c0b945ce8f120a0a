//! The keyring's users and customers (end users): their write path and the
//! hot path's lookups, in memory like keys and teams.

use serde_json::{Map, Value};

use super::super::key::Customer;
use super::super::record::{BudgetPeriod, CustomerRecord, Patch, UserRecord, unix_now};
use super::super::token;
use super::{Change, Index, Keyring, bad, not_found, poisoned, snapshot_of, store_failed};
use crate::error::Error;

/// Settings of a new user (admin `POST /user/new`).
#[derive(Clone, Debug, Default)]
pub struct NewUser {
    /// The user's id; `None`: generated.
    pub id: Option<String>,
    /// The email address.
    pub email: Option<String>,
    /// A human name.
    pub alias: Option<String>,
    /// LiteLLM's role (kept, grants nothing).
    pub role: Option<String>,
    /// The budget's maximum in USD.
    pub max_budget: Option<f64>,
    /// The budget's period.
    pub budget_period: Option<BudgetPeriod>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
}

/// A change to a user (admin `POST /user/update`): `Keep` leaves a field,
/// `Clear` removes it.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    /// The email address.
    pub email: Patch<String>,
    /// The alias.
    pub alias: Patch<String>,
    /// The role.
    pub role: Patch<String>,
    /// The budget's maximum in USD (`Clear`: no budget).
    pub max_budget: Patch<f64>,
    /// The budget's period.
    pub budget_period: Patch<BudgetPeriod>,
    /// The metadata, replaced whole (`Clear`: empty).
    pub metadata: Patch<Map<String, Value>>,
}

/// Settings of a new customer (admin `POST /customer/new`).
#[derive(Clone, Debug, Default)]
pub struct NewCustomer {
    /// The end user's id, as requests send it (required).
    pub id: String,
    /// A human name.
    pub alias: Option<String>,
    /// Created blocked.
    pub blocked: bool,
    /// The budget's maximum in USD.
    pub max_budget: Option<f64>,
    /// The budget's period.
    pub budget_period: Option<BudgetPeriod>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
}

/// A change to a customer (admin `POST /customer/update`).
#[derive(Clone, Debug, Default)]
pub struct CustomerUpdate {
    /// The alias.
    pub alias: Patch<String>,
    /// Block (`true`) or unblock (`false`).
    pub blocked: Option<bool>,
    /// The budget's maximum in USD (`Clear`: no budget).
    pub max_budget: Patch<f64>,
    /// The budget's period.
    pub budget_period: Patch<BudgetPeriod>,
    /// The metadata, replaced whole (`Clear`: empty).
    pub metadata: Patch<Map<String, Value>>,
}

/// The longest user or customer id accepted.
pub const MAX_ID: usize = 256;

fn check_id(param: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID || id.chars().any(char::is_control) {
        return Err(bad(
            param,
            format!("must be 1 to {MAX_ID} bytes of text without control characters"),
        ));
    }
    Ok(())
}

fn check_budget(max: Option<f64>) -> Result<(), Error> {
    match max {
        Some(b) if !b.is_finite() || b < 0.0 => {
            Err(bad("max_budget", "must be a number of USD, 0 or more"))
        }
        _ => Ok(()),
    }
}

fn metadata(p: Patch<Map<String, Value>>, current: &mut Map<String, Value>) {
    match p {
        Patch::Keep => {}
        Patch::Clear => current.clear(),
        Patch::Set(m) => *current = m,
    }
}

impl Keyring {
    // ----- the hot path -----

    /// The customer (end user) `id` names, when it has a record: memory
    /// only, an `Arc` clone under a read lock.
    pub fn customer(&self, id: &str) -> Option<Customer> {
        let index = self.inner.index.read().ok()?;
        index.customers.get(id).map(|(_, c)| c.clone())
    }

    // ----- users -----

    /// A user's record and the ids of its keys.
    pub fn user_info(&self, id: &str) -> Result<(UserRecord, Vec<String>), Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let user = index
            .users
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(&format!("user `{id}`")).with_meta("param", "user_id"))?;
        let mut keys: Vec<String> = index
            .keys
            .values()
            .filter(|e| e.record.user_id.as_deref() == Some(id))
            .map(|e| e.record.id.clone())
            .collect();
        keys.sort_unstable();
        Ok((user, keys))
    }

    /// A page of users (1-based `page`), ordered by creation then id, and
    /// how many there are.
    pub fn list_users(&self, page: usize, size: usize) -> Result<(Vec<UserRecord>, usize), Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let mut all: Vec<&UserRecord> = index.users.values().collect();
        all.sort_unstable_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let total = all.len();
        let page = all
            .into_iter()
            .skip(page.saturating_sub(1).saturating_mul(size))
            .take(size)
            .cloned()
            .collect();
        Ok((page, total))
    }

    /// With a store other processes write too: brings user `id` up to date.
    async fn refresh_user(&self, id: &str) -> Result<(), Error> {
        if let Some(read) = self.inner.store.get_user(id) {
            match read.await.map_err(store_failed)? {
                Some(user) => self.apply(Change::User(user))?,
                None => self.apply(Change::UserDeleted(id.to_owned()))?,
            }
        }
        Ok(())
    }

    /// Creates a user; keys whose `user_id` names it are charged on its
    /// budget from their next request.
    pub async fn create_user(&self, new: NewUser) -> Result<UserRecord, Error> {
        let _write = self.inner.write.lock().await;
        let id = match new.id {
            Some(id) => {
                check_id("user_id", &id)?;
                self.refresh_user(&id).await?;
                let index = self.inner.index.read().map_err(|_| poisoned())?;
                if index.users.contains_key(&id) {
                    return Err(bad("user_id", format!("a user `{id}` already exists")));
                }
                id
            }
            None => {
                token::generate()
                    .map_err(|_| {
                        Error::new(crate::Reason::Internal, "Could not draw a random id.")
                    })?
                    .0
            }
        };
        check_budget(new.max_budget)?;
        let mut u = UserRecord::new(id);
        u.email = new.email;
        u.alias = new.alias;
        u.role = new.role;
        u.max_budget = new.max_budget;
        u.budget_period = new.budget_period;
        u.metadata = new.metadata;
        self.inner
            .store
            .put_user(u.clone())
            .await
            .map_err(store_failed)?;
        self.install_user(u.clone())?;
        tracing::info!(user = %u.id, "user created");
        Ok(u)
    }

    /// Changes a user, whole or not at all; its keys see it on their next request.
    pub async fn update_user(&self, id: &str, up: UserUpdate) -> Result<UserRecord, Error> {
        let _write = self.inner.write.lock().await;
        self.refresh_user(id).await?;
        let mut u = self.user_info(id)?.0;
        up.email.apply(&mut u.email);
        up.alias.apply(&mut u.alias);
        up.role.apply(&mut u.role);
        up.max_budget.apply(&mut u.max_budget);
        up.budget_period.apply(&mut u.budget_period);
        metadata(up.metadata, &mut u.metadata);
        check_budget(u.max_budget)?;
        u.updated_at = unix_now();
        self.inner
            .store
            .put_user(u.clone())
            .await
            .map_err(store_failed)?;
        self.install_user(u.clone())?;
        tracing::info!(user = %u.id, "user updated");
        Ok(u)
    }

    /// Deletes users and their keys (as LiteLLM does), all or none: an
    /// unknown id is a 404 and nothing is deleted. Returns the ids of the
    /// keys deleted with them.
    pub async fn delete_users(&self, ids: &[String]) -> Result<Vec<String>, Error> {
        let _write = self.inner.write.lock().await;
        for id in ids {
            self.refresh_user(id).await?;
        }
        let mut keys = Vec::new();
        for id in ids {
            keys.extend(self.user_info(id)?.1);
        }
        self.inner
            .store
            .delete_users(ids.to_vec())
            .await
            .map_err(store_failed)?;
        {
            let mut index = self.inner.index.write().map_err(|_| poisoned())?;
            index
                .keys
                .retain(|_, e| e.record.user_id.as_ref().is_none_or(|u| !ids.contains(u)));
        }
        for id in ids {
            self.remove_user(id)?;
        }
        tracing::info!(users = ?ids, keys = ?keys, "users deleted with their keys");
        Ok(keys)
    }

    /// Puts a user into memory and rebuilds its keys' snapshots.
    pub(super) fn install_user(&self, user: UserRecord) -> Result<(), Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        let id = user.id.clone();
        index.users.insert(id.clone(), user);
        self.relink(&mut index, &id);
        Ok(())
    }

    /// Takes a user out of memory; its keys (if any are left) lose its budget.
    pub(super) fn remove_user(&self, id: &str) -> Result<(), Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        if index.users.remove(id).is_some() {
            self.relink(&mut index, id);
        }
        Ok(())
    }

    fn relink(&self, index: &mut Index, user: &str) {
        let Index {
            keys, teams, users, ..
        } = index;
        for e in keys
            .values_mut()
            .filter(|e| e.record.user_id.as_deref() == Some(user))
        {
            e.key = snapshot_of(&e.record, teams, users, &self.inner.groups);
        }
    }

    // ----- customers -----

    /// A customer's record.
    pub fn customer_info(&self, id: &str) -> Result<CustomerRecord, Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        index
            .customers
            .get(id)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| not_found(&format!("customer `{id}`")).with_meta("param", "end_user_id"))
    }

    /// Every customer, ordered by creation then id.
    pub fn list_customers(&self) -> Result<Vec<CustomerRecord>, Error> {
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        let mut all: Vec<CustomerRecord> =
            index.customers.values().map(|(r, _)| r.clone()).collect();
        all.sort_unstable_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn refresh_customer(&self, id: &str) -> Result<(), Error> {
        if let Some(read) = self.inner.store.get_customer(id) {
            match read.await.map_err(store_failed)? {
                Some(c) => self.apply(Change::Customer(c))?,
                None => self.apply(Change::CustomerDeleted(id.to_owned()))?,
            }
        }
        Ok(())
    }

    /// Creates a customer: from the next request naming it, its budget
    /// applies (and, blocked, it is refused).
    pub async fn create_customer(&self, new: NewCustomer) -> Result<CustomerRecord, Error> {
        let _write = self.inner.write.lock().await;
        check_id("user_id", &new.id)?;
        self.refresh_customer(&new.id).await?;
        if self.customer(&new.id).is_some() {
            return Err(bad(
                "user_id",
                format!("a customer `{}` already exists", new.id),
            ));
        }
        check_budget(new.max_budget)?;
        let mut c = CustomerRecord::new(new.id);
        c.alias = new.alias;
        c.blocked = new.blocked;
        c.max_budget = new.max_budget;
        c.budget_period = new.budget_period;
        c.metadata = new.metadata;
        self.save_customer(&c).await?;
        tracing::info!(customer = %c.id, "customer created");
        Ok(c)
    }

    /// Changes a customer, whole or not at all; it holds for the next request.
    pub async fn update_customer(
        &self,
        id: &str,
        up: CustomerUpdate,
    ) -> Result<CustomerRecord, Error> {
        let _write = self.inner.write.lock().await;
        self.refresh_customer(id).await?;
        let mut c = self.customer_info(id)?;
        up.alias.apply(&mut c.alias);
        if let Some(b) = up.blocked {
            c.blocked = b;
        }
        up.max_budget.apply(&mut c.max_budget);
        up.budget_period.apply(&mut c.budget_period);
        metadata(up.metadata, &mut c.metadata);
        check_budget(c.max_budget)?;
        c.updated_at = unix_now();
        self.save_customer(&c).await?;
        tracing::info!(customer = %c.id, blocked = c.blocked, "customer updated");
        Ok(c)
    }

    /// Deletes customers, all or none (an unknown id is a 404).
    pub async fn delete_customers(&self, ids: &[String]) -> Result<(), Error> {
        let _write = self.inner.write.lock().await;
        for id in ids {
            self.refresh_customer(id).await?;
            self.customer_info(id)?;
        }
        self.inner
            .store
            .delete_customers(ids.to_vec())
            .await
            .map_err(store_failed)?;
        for id in ids {
            self.remove_customer(id)?;
        }
        tracing::info!(customers = ?ids, "customers deleted");
        Ok(())
    }

    async fn save_customer(&self, c: &CustomerRecord) -> Result<(), Error> {
        self.inner
            .store
            .put_customer(c.clone())
            .await
            .map_err(store_failed)?;
        self.install_customer(c.clone())
    }

    pub(super) fn install_customer(&self, c: CustomerRecord) -> Result<(), Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        let snapshot = Customer::from_record(&c);
        index.customers.insert(c.id.clone(), (c, snapshot));
        Ok(())
    }

    pub(super) fn remove_customer(&self, id: &str) -> Result<(), Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        index.customers.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{MemoryStore, NewKey};

    async fn ring() -> Keyring {
        Keyring::builder(MemoryStore::new()).build().await.unwrap()
    }

    #[tokio::test]
    async fn a_users_budget_reaches_its_keys_whenever_either_is_made() {
        let ring = ring().await;
        // A key made for a user that does not exist yet has no user budget.
        let (early, _) = ring
            .generate(NewKey {
                user_id: Some("ann".into()),
                ..NewKey::default()
            })
            .await
            .unwrap();
        assert!(ring.check(&early).unwrap().user().is_none());
        ring.create_user(NewUser {
            id: Some("ann".into()),
            max_budget: Some(2.0),
            ..NewUser::default()
        })
        .await
        .unwrap();
        let budget = |key: &str| {
            ring.check(key)
                .unwrap()
                .user()
                .and_then(|u| u.budget())
                .map(|b| b.max_usd)
        };
        assert_eq!(budget(&early), Some(2.0), "linked when the user appears");
        let (late, _) = ring
            .generate(NewKey {
                user_id: Some("ann".into()),
                ..NewKey::default()
            })
            .await
            .unwrap();
        assert_eq!(budget(&late), Some(2.0));
        ring.update_user(
            "ann",
            UserUpdate {
                max_budget: Patch::Clear,
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(budget(&late), None, "null removes the budget");
        let gone = ring.delete_users(&["ann".into()]).await.unwrap();
        assert_eq!(gone.len(), 2);
        assert!(ring.check(&early).is_err() && ring.check(&late).is_err());
        assert!(ring.user_info("ann").is_err());
    }

    #[tokio::test]
    async fn bad_input_and_unknown_ids_change_nothing() {
        let ring = ring().await;
        for bad_id in ["", "a\nb", &"x".repeat(MAX_ID + 1)] {
            let e = ring
                .create_user(NewUser {
                    id: Some(bad_id.into()),
                    ..NewUser::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.metadata()["param"], "user_id");
        }
        let e = ring
            .create_customer(NewCustomer {
                id: "c".into(),
                max_budget: Some(f64::NAN),
                ..NewCustomer::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["param"], "max_budget");
        assert!(ring.customer("c").is_none());
        ring.create_user(NewUser {
            id: Some("ann".into()),
            ..NewUser::default()
        })
        .await
        .unwrap();
        // One unknown id among several: nothing is deleted.
        let e = ring
            .delete_users(&["ann".into(), "nobody".into()])
            .await
            .unwrap_err();
        assert_eq!(e.status(), 404);
        assert!(ring.user_info("ann").is_ok());
        let e = ring.delete_customers(&["nobody".into()]).await.unwrap_err();
        assert_eq!(e.status(), 404);
    }

    #[tokio::test]
    async fn customers_are_looked_up_from_memory() {
        let ring = ring().await;
        ring.create_customer(NewCustomer {
            id: "end-1".into(),
            max_budget: Some(0.5),
            ..NewCustomer::default()
        })
        .await
        .unwrap();
        let c = ring.customer("end-1").unwrap();
        assert_eq!((c.id(), c.is_blocked()), ("end-1", false));
        assert_eq!(c.budget().map(|b| b.max_usd), Some(0.5));
        ring.update_customer(
            "end-1",
            CustomerUpdate {
                blocked: Some(true),
                ..CustomerUpdate::default()
            },
        )
        .await
        .unwrap();
        assert!(ring.customer("end-1").unwrap().is_blocked());
        let e = ring
            .create_customer(NewCustomer {
                id: "end-1".into(),
                ..NewCustomer::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["param"], "user_id");
        ring.delete_customers(&["end-1".into()]).await.unwrap();
        assert!(ring.customer("end-1").is_none());
        assert!(ring.customer("never").is_none());
    }
}
