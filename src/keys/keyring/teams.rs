//! Deleting teams and changing teams' members: the write path behind the
//! admin API's `/team/delete` and `/team/member_add|member_delete|member_update`.
//!
//! As every write of the [`Keyring`]: validated first, written to the store,
//! then into memory, so a deleted team's keys are refused from the next
//! request on this process, and other replicas follow through the store's
//! change feed ([`Change::TeamDeleted`](crate::keys::Change::TeamDeleted)).

use super::{Entry, Index, Keyring, bad, not_found, poisoned, store_failed};
use crate::error::{Error, Reason};
use crate::keys::record::{MemberRole, Source, TeamMember, TeamRecord, unix_now};

/// What [`Keyring::delete_teams`] deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeamsDeleted {
    /// The teams' ids, in the order asked, each once.
    pub teams: Vec<String>,
    /// The ids of the keys that belonged to them, sorted: deleted with them
    /// (as the store reports them, so a key made through another replica
    /// and not yet seen here is named too).
    pub keys: Vec<String>,
}

fn unknown_team(id: &str, param: &str) -> Error {
    not_found(&format!("team `{id}`")).with_meta("param", param)
}

/// How a member is named in messages: its id, else its email.
fn who(user_id: Option<&str>, user_email: Option<&str>) -> String {
    match (user_id, user_email) {
        (Some(id), _) => format!("user_id `{id}`"),
        (None, Some(email)) => format!("user_email `{email}`"),
        (None, None) => "(nobody)".into(),
    }
}

/// Checks members about to join a team that has `existing`: each names a
/// person (a non-empty `user_id` or `user_email`), and nobody is in twice;
/// a refusal names `param`, the field that brought them.
pub(super) fn check_new_members(
    team: &str,
    existing: &[TeamMember],
    new: &[TeamMember],
    param: &str,
) -> Result<(), Error> {
    for (i, m) in new.iter().enumerate() {
        let empty = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
        if empty(&m.user_id) && empty(&m.user_email) {
            return Err(bad(
                param,
                "each member needs a `user_id` or a `user_email`",
            ));
        }
        let named = who(m.user_id.as_deref(), m.user_email.as_deref());
        if existing.iter().any(|e| e.same_person(m)) {
            return Err(bad(
                param,
                format!(
                    "{named} is already a member of team `{team}`; change a role with POST /team/member_update"
                ),
            ));
        }
        if new[..i].iter().any(|e| e.same_person(m)) {
            return Err(bad(param, format!("{named} is listed twice")));
        }
    }
    Ok(())
}

impl Keyring {
    /// Deletes teams and every key that belongs to them, all or none: an
    /// unknown id is a 404 naming it, and nothing is deleted. The keys are
    /// refused (401 `unknown_key`) from the next request. Budgets' counters
    /// and spend records are left as they are (spend records are history).
    ///
    /// ```
    /// use tollgate::keys::{Keyring, MemoryStore, NewKey, NewTeam};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
    /// let team = ring.create_team(NewTeam { id: Some("ml".into()), ..Default::default() }).await.unwrap();
    /// let (key, record) = ring
    ///     .generate(NewKey { team_id: Some(team.id.clone()), ..Default::default() })
    ///     .await
    ///     .unwrap();
    /// let e = ring.delete_teams(&["ml".into(), "ghost".into()]).await.unwrap_err();
    /// assert_eq!(e.status(), 404);
    /// assert!(ring.check(&key).is_ok(), "all or none");
    /// let deleted = ring.delete_teams(&["ml".into()]).await.unwrap();
    /// assert_eq!((deleted.teams, deleted.keys), (vec!["ml".to_owned()], vec![record.id]));
    /// assert_eq!(ring.check(&key).unwrap_err().status(), 401);
    /// # }
    /// ```
    pub async fn delete_teams(&self, ids: &[String]) -> Result<TeamsDeleted, Error> {
        let _write = self.inner.write.lock().await;
        let mut teams: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            if !teams.contains(id) {
                teams.push(id.clone());
            }
        }
        if teams.is_empty() {
            return Err(bad("team_ids", "is required: a non-empty list of team ids"));
        }
        for id in &teams {
            self.refresh_team(id).await?;
        }
        {
            let index = self.inner.index.read().map_err(|_| poisoned())?;
            if let Some(gone) = teams.iter().find(|id| !index.teams.contains_key(*id)) {
                return Err(unknown_team(gone, "team_ids"));
            }
        }
        let mut keys = self
            .inner
            .store
            .delete_teams(teams.clone())
            .await
            .map_err(store_failed)?;
        keys.sort_unstable();
        for id in &teams {
            self.uninstall_team(id)?;
        }
        tracing::info!(teams = ?teams, keys = keys.len(), "teams deleted with their keys");
        Ok(TeamsDeleted { teams, keys })
    }

    /// Removes a team and its stored keys from memory (after the store
    /// deleted them); returns the keys' ids.
    pub(super) fn uninstall_team(&self, id: &str) -> Result<Vec<String>, Error> {
        let mut index = self.inner.index.write().map_err(|_| poisoned())?;
        let Index { keys, teams, .. } = &mut *index;
        teams.remove(id);
        let mut gone = Vec::new();
        keys.retain(|k, e: &mut Entry| {
            let of_team = e.source == Source::Store && e.record.team_id.as_deref() == Some(id);
            if of_team {
                gone.push(k.to_string());
            }
            !of_team
        });
        Ok(gone)
    }

    /// A team's record for a change of members, up to date with the store.
    async fn team_for_members(&self, team_id: &str) -> Result<TeamRecord, Error> {
        self.refresh_team(team_id).await?;
        let index = self.inner.index.read().map_err(|_| poisoned())?;
        index
            .teams
            .get(team_id)
            .cloned()
            .ok_or_else(|| unknown_team(team_id, "team_id"))
    }

    /// Writes a team whose members changed: the store, then memory.
    async fn save_members(&self, mut t: TeamRecord) -> Result<TeamRecord, Error> {
        t.updated_at = unix_now();
        self.inner
            .store
            .put_team(t.clone())
            .await
            .map_err(store_failed)?;
        self.install_team(t.clone())?;
        Ok(t)
    }

    /// Adds members to a team, all or none: each names a person (a user id,
    /// an email, or both) not already in the team (400 naming `member`);
    /// an unknown team is a 404. Returns the team as stored.
    ///
    /// ```
    /// use tollgate::keys::{Keyring, MemberRole, MemoryStore, NewTeam, TeamMember};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
    /// ring.create_team(NewTeam { id: Some("ml".into()), ..Default::default() }).await.unwrap();
    /// let alice = TeamMember { user_id: Some("alice".into()), user_email: None, role: MemberRole::Admin };
    /// let team = ring.add_team_members("ml", vec![alice.clone()]).await.unwrap();
    /// assert_eq!(team.members, vec![alice.clone()]);
    /// assert_eq!(ring.add_team_members("ml", vec![alice]).await.unwrap_err().status(), 400);
    /// let (_, changed) = ring.update_team_member("ml", Some("alice"), None, Some(MemberRole::User)).await.unwrap();
    /// assert_eq!(changed.role, MemberRole::User);
    /// let (team, _) = ring.remove_team_member("ml", Some("alice"), None).await.unwrap();
    /// assert!(team.members.is_empty());
    /// # }
    /// ```
    pub async fn add_team_members(
        &self,
        team_id: &str,
        members: Vec<TeamMember>,
    ) -> Result<TeamRecord, Error> {
        let _write = self.inner.write.lock().await;
        let mut t = self.team_for_members(team_id).await?;
        if members.is_empty() {
            return Err(bad(
                "member",
                "is required: a member or a non-empty list of them",
            ));
        }
        check_new_members(team_id, &t.members, &members, "member")?;
        t.members.extend(members);
        let t = self.save_members(t).await?;
        tracing::info!(team = %t.id, members = t.members.len(), "team members added");
        Ok(t)
    }

    /// The position of the member `user_id` names (else `user_email`), or
    /// the 404 that names who is missing.
    fn member_at(
        t: &TeamRecord,
        user_id: Option<&str>,
        user_email: Option<&str>,
    ) -> Result<usize, Error> {
        if user_id.is_none() && user_email.is_none() {
            return Err(bad(
                "user_id",
                "or `user_email` is required: the member to change",
            ));
        }
        t.members
            .iter()
            .position(|m| m.is(user_id, user_email))
            .ok_or_else(|| {
                Error::new(
                    Reason::NotFound,
                    format!(
                        "No member with {} in team `{}`.",
                        who(user_id, user_email),
                        t.id
                    ),
                )
                .with_meta(
                    "param",
                    if user_id.is_some() {
                        "user_id"
                    } else {
                        "user_email"
                    },
                )
            })
    }

    /// Removes the member `user_id` names (or, without it, `user_email`)
    /// from a team: 404 when the team or the member is unknown. Returns the
    /// team as stored and the member removed. The member's keys stay (a key
    /// belongs to its team, not to a member).
    pub async fn remove_team_member(
        &self,
        team_id: &str,
        user_id: Option<&str>,
        user_email: Option<&str>,
    ) -> Result<(TeamRecord, TeamMember), Error> {
        let _write = self.inner.write.lock().await;
        let mut t = self.team_for_members(team_id).await?;
        let at = Self::member_at(&t, user_id, user_email)?;
        let removed = t.members.remove(at);
        let t = self.save_members(t).await?;
        tracing::info!(team = %t.id, "team member removed");
        Ok((t, removed))
    }

    /// Changes the role of the member `user_id` names (or, without it,
    /// `user_email`): 404 when the team or the member is unknown. Returns
    /// the team as stored and the member as changed.
    pub async fn update_team_member(
        &self,
        team_id: &str,
        user_id: Option<&str>,
        user_email: Option<&str>,
        role: Option<MemberRole>,
    ) -> Result<(TeamRecord, TeamMember), Error> {
        let _write = self.inner.write.lock().await;
        let mut t = self.team_for_members(team_id).await?;
        let at = Self::member_at(&t, user_id, user_email)?;
        if let Some(role) = role {
            t.members[at].role = role;
        }
        let member = t.members[at].clone();
        let t = self.save_members(t).await?;
        tracing::info!(team = %t.id, role = %member.role, "team member updated");
        Ok((t, member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Change;
    use crate::keys::store::StoreFuture;
    use crate::keys::{CustomerRecord, KeyRecord, UserRecord};
    use crate::keys::{KeyStore, MemoryStore, NewKey, NewTeam, Snapshot, StoreError};
    use http::StatusCode;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn member(id: Option<&str>, email: Option<&str>, role: MemberRole) -> TeamMember {
        TeamMember {
            user_id: id.map(Into::into),
            user_email: email.map(Into::into),
            role,
        }
    }

    async fn ring_with(store: impl KeyStore) -> Keyring {
        let ring = Keyring::builder(store).build().await.unwrap();
        for id in ["ml", "ops"] {
            ring.create_team(NewTeam {
                id: Some(id.into()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        ring
    }

    #[tokio::test]
    async fn deleting_teams_takes_their_keys_all_or_none() {
        let ring = ring_with(MemoryStore::new()).await;
        let mut made = Vec::new();
        for team in [Some("ml"), Some("ml"), Some("ops"), None] {
            made.push(
                ring.generate(NewKey {
                    team_id: team.map(Into::into),
                    ..Default::default()
                })
                .await
                .unwrap(),
            );
        }
        let e = ring
            .delete_teams(&["ml".into(), "ghost".into()])
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.metadata()["param"], "team_ids");
        assert!(e.message().contains("ghost"), "{}", e.message());
        assert!(ring.team_info("ml").is_ok() && ring.check(&made[0].0).is_ok());
        let e = ring.delete_teams(&[]).await.unwrap_err();
        assert_eq!(e.metadata()["param"], "team_ids");

        let deleted = ring
            .delete_teams(&["ml".into(), "ml".into()])
            .await
            .unwrap();
        let mut ml_keys = vec![made[0].1.id.clone(), made[1].1.id.clone()];
        ml_keys.sort_unstable();
        assert_eq!(deleted.teams, ["ml"]);
        assert_eq!(deleted.keys, ml_keys);
        for (key, _) in &made[..2] {
            assert_eq!(ring.check(key).unwrap_err().reason(), Reason::UnknownKey);
        }
        assert!(ring.check(&made[2].0).is_ok() && ring.check(&made[3].0).is_ok());
        assert_eq!(
            ring.team_info("ml").unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(ring.list_teams().unwrap().len(), 1);
        // The store agrees: a keyring loaded from it has neither.
        let snap = ring.inner.store.load().await.unwrap();
        assert!(snap.teams.iter().all(|t| t.id != "ml"));
        assert_eq!(snap.keys.len(), 2);
    }

    /// A store whose writes fail while `down` is set.
    #[derive(Clone, Default)]
    struct Flaky {
        inner: MemoryStore,
        down: Arc<AtomicBool>,
    }

    impl Flaky {
        fn gate(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::new("the test store is down"))
            } else {
                Ok(())
            }
        }
    }

    impl KeyStore for Flaky {
        fn load(&self) -> StoreFuture<'_, Snapshot> {
            self.inner.load()
        }
        fn put_key(&self, key: KeyRecord) -> StoreFuture<'_, ()> {
            match self.gate() {
                Ok(()) => self.inner.put_key(key),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        }
        fn delete_keys(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
            match self.gate() {
                Ok(()) => self.inner.delete_keys(ids),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        }
        fn put_team(&self, team: TeamRecord) -> StoreFuture<'_, ()> {
            match self.gate() {
                Ok(()) => self.inner.put_team(team),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        }
        fn delete_teams(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>> {
            match self.gate() {
                Ok(()) => self.inner.delete_teams(ids),
                Err(e) => Box::pin(std::future::ready(Err(e))),
            }
        }
        fn put_user(&self, user: UserRecord) -> StoreFuture<'_, ()> {
            self.inner.put_user(user)
        }
        fn delete_users(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
            self.inner.delete_users(ids)
        }
        fn put_customer(&self, customer: CustomerRecord) -> StoreFuture<'_, ()> {
            self.inner.put_customer(customer)
        }
        fn delete_customers(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
            self.inner.delete_customers(ids)
        }
    }

    #[tokio::test]
    async fn a_store_that_fails_changes_nothing_in_memory() {
        let store = Flaky::default();
        let ring = ring_with(store.clone()).await;
        let (key, _) = ring
            .generate(NewKey {
                team_id: Some("ml".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        store.down.store(true, Ordering::SeqCst);
        let e = ring.delete_teams(&["ml".into()]).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(ring.check(&key).is_ok() && ring.team_info("ml").is_ok());
        let alice = member(Some("alice"), None, MemberRole::User);
        let e = ring.add_team_members("ml", vec![alice]).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(ring.team_info("ml").unwrap().0.members.is_empty());
    }

    #[tokio::test]
    async fn members_are_added_changed_and_removed_with_clear_refusals() {
        let ring = ring_with(MemoryStore::new()).await;
        let alice = member(Some("alice"), Some("alice@example.com"), MemberRole::Admin);
        let bob = member(None, Some("bob@example.com"), MemberRole::User);
        let t = ring
            .add_team_members("ml", vec![alice.clone(), bob.clone()])
            .await
            .unwrap();
        assert_eq!(t.members, vec![alice.clone(), bob.clone()]);
        assert_eq!(ring.team_info("ml").unwrap().0.members.len(), 2);

        // Refusals: each names what is wrong, and nothing changes.
        let e = ring
            .add_team_members("ghost", vec![bob.clone()])
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.metadata()["param"].as_str()),
            (StatusCode::NOT_FOUND, Some("team_id"))
        );
        for (batch, says) in [
            (
                vec![member(None, Some("alice@example.com"), MemberRole::User)],
                "already a member",
            ),
            (
                vec![
                    member(Some("carol"), None, MemberRole::User),
                    member(Some("carol"), None, MemberRole::Admin),
                ],
                "listed twice",
            ),
            (
                vec![member(Some(" "), None, MemberRole::User)],
                "needs a `user_id` or a `user_email`",
            ),
            (vec![], "is required"),
        ] {
            let e = ring.add_team_members("ml", batch).await.unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.metadata()["param"], "member");
            assert!(e.message().contains(says), "{}", e.message());
        }
        assert_eq!(
            ring.team_info("ml").unwrap().0.members.len(),
            2,
            "all or none"
        );

        let (_, changed) = ring
            .update_team_member("ml", None, Some("bob@example.com"), Some(MemberRole::Admin))
            .await
            .unwrap();
        assert_eq!(changed.role, MemberRole::Admin);
        let e = ring
            .update_team_member("ml", Some("nobody"), None, Some(MemberRole::User))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status(), e.metadata()["param"].as_str()),
            (StatusCode::NOT_FOUND, Some("user_id"))
        );
        assert!(e.message().contains("nobody"), "{}", e.message());
        let e = ring.remove_team_member("ml", None, None).await.unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);

        let (t, removed) = ring
            .remove_team_member("ml", Some("alice"), None)
            .await
            .unwrap();
        assert_eq!(removed, alice);
        assert_eq!(t.members.len(), 1);
        let e = ring
            .remove_team_member("ml", Some("alice"), None)
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        // The store has what memory has.
        let snap = ring.inner.store.load().await.unwrap();
        let ml = snap.teams.iter().find(|t| t.id == "ml").unwrap();
        assert_eq!(ml.members, t.members);
    }

    #[tokio::test]
    async fn a_team_deleted_elsewhere_goes_with_its_keys() {
        let here = ring_with(MemoryStore::new()).await;
        let (key, rec) = here
            .generate(NewKey {
                team_id: Some("ml".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let (other, _) = here.generate(NewKey::default()).await.unwrap();
        here.apply(Change::TeamDeleted("ml".into())).unwrap();
        assert_eq!(here.check(&key).unwrap_err().reason(), Reason::UnknownKey);
        assert!(here.check(&other).is_ok());
        assert!(here.team_info("ml").is_err());
        // A late key change of the deleted key, then its deletion: harmless.
        here.apply(Change::KeyDeleted(rec.id)).unwrap();
        here.apply(Change::TeamDeleted("never-was".into())).unwrap();
        assert_eq!(here.len(), 1);
    }
}
