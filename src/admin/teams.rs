//! `POST /team/delete` and team members (`/team/member_add`,
//! `/team/member_delete`, `/team/member_update`), with LiteLLM's bodies.
//!
//! - `/team/delete` `{"team_ids": [...]}`: deletes the teams and, as
//!   LiteLLM does, every key of theirs, all or none (an unknown id is a 404
//!   naming it, and nothing is deleted). Answers `deleted_teams` and
//!   `deleted_keys`. Budgets' counters and spend records stay.
//! - `/team/member_add` `{"team_id", "member": {"role", "user_id",
//!   "user_email"}}` or `"member": [...]`: all or none; a member needs a
//!   `user_id` or a `user_email`, and `role` is `admin` or `user`. Answers the
//!   team (with `members_with_roles`), and LiteLLM's `updated_users` and
//!   `updated_team_memberships`, empty: tollgate keeps no user records here.
//! - `/team/member_delete` `{"team_id", "user_id"}` (or `"user_email"`):
//!   answers the team and the `removed_member`.
//! - `/team/member_update` `{"team_id", "user_id"|"user_email", "role"}`:
//!   answers LiteLLM's member object (`team_id`, `user_id`, `user_email`,
//!   `role`, `max_budget_in_team`).
//!
//! Per-member budgets (`max_budget_in_team`) are not enforced by tollgate:
//! the field is accepted when `null` and refused with a 400 naming it
//! otherwise. Roles are recorded and shown; they grant nothing here, where
//! the admin API answers the master key alone.

use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{Admin, Answer, Fields, bad, ok, team_json};
use crate::error::Error;
use crate::keys::record::members_to_json;
use crate::keys::{MemberRole, TeamMember};

/// LiteLLM's `members_with_roles`: `[{"user_id", "user_email", "role"}]`.
pub(super) fn members_json(members: &[TeamMember]) -> Value {
    members_to_json(members)
}

/// One member object at `path` (`member`, `member[1]`, `members_with_roles[0]`).
fn member(v: &Value, path: &str) -> Result<TeamMember, Error> {
    let Value::Object(m) = v else {
        return Err(bad(
            path,
            "must be an object: {\"role\": \"admin\"|\"user\", \"user_id\", \"user_email\"}",
        ));
    };
    if let Some(k) = m
        .keys()
        .find(|k| !["role", "user_id", "user_email"].contains(&k.as_str()))
    {
        let at = format!("{path}.{k}");
        return Err(bad(
            &at,
            "unknown field; a member has role, user_id, user_email",
        ));
    }
    let text = |name: &str| -> Result<Option<String>, Error> {
        match m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(&format!("{path}.{name}"), "must be a string or null")),
        }
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => r
            .parse::<MemberRole>()
            .map_err(|e| bad(&format!("{path}.role"), e))?,
        _ => {
            return Err(bad(
                &format!("{path}.role"),
                "is required: `admin` or `user`",
            ));
        }
    };
    Ok(TeamMember {
        user_id: text("user_id")?,
        user_email: text("user_email")?,
        role,
    })
}

/// A list of members under `name` (`null` or absent: none).
pub(super) fn members_field(f: &Fields, name: &str) -> Result<Vec<TeamMember>, Error> {
    match f.0.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| member(v, &format!("{name}[{i}]")))
            .collect(),
        Some(_) => Err(bad(name, "must be a list of members")),
    }
}

/// `max_budget_in_team`: only `null` (per-member budgets are not enforced).
fn refuse_member_budget(f: &Fields) -> Result<(), Error> {
    match f.0.get("max_budget_in_team") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(bad(
            "max_budget_in_team",
            "per-member budgets are not enforced by this gateway: send null, and set a budget on the team or on the member's keys",
        )),
    }
}

/// An optional string field: absent, `null` or empty are `None`.
fn optional(f: &Fields, name: &str) -> Result<Option<String>, Error> {
    match f.0.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(name, "must be a string or null")),
    }
}

/// `POST /team/delete` `{"team_ids": [...]}`.
pub(super) async fn team_delete(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["team_ids"])?;
    let ids: Vec<String> = match f.0.get("team_ids") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| bad(&format!("team_ids[{i}]"), "must be a team id"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad("team_ids", "is required: a non-empty list of team ids").into());
        }
    };
    let deleted = a.keyring.delete_teams(&ids).await?;
    ok(json!({"deleted_teams": deleted.teams, "deleted_keys": deleted.keys}))
}

/// `POST /team/member_add` `{"team_id", "member": {...} | [...]}`.
pub(super) async fn member_add(State(a): State<Admin>, headers: HeaderMap, body: Bytes) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["team_id", "member", "max_budget_in_team"])?;
    let team_id = f.required("team_id")?;
    let members = match f.0.get("member") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| member(v, &format!("member[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(v @ Value::Object(_)) => vec![member(v, "member")?],
        _ => {
            return Err(bad(
                "member",
                "is required: {\"role\": \"admin\"|\"user\", \"user_id\", \"user_email\"}, or a non-empty list of them",
            )
            .into());
        }
    };
    refuse_member_budget(&f)?;
    let added = members.clone();
    let t = a.keyring.add_team_members(&team_id, members).await?;
    let mut v = team_json(&a, &t);
    v["added_members"] = members_json(&added);
    v["updated_users"] = json!([]);
    v["updated_team_memberships"] = json!([]);
    ok(v)
}

/// The member a `/team/member_delete` or `/team/member_update` body names.
fn named(f: &Fields) -> Result<(String, Option<String>, Option<String>), Error> {
    let team_id = f.required("team_id")?;
    let (user_id, user_email) = (optional(f, "user_id")?, optional(f, "user_email")?);
    if user_id.is_none() && user_email.is_none() {
        return Err(bad(
            "user_id",
            "is required (or `user_email`): the member to change",
        ));
    }
    Ok((team_id, user_id, user_email))
}

/// `POST /team/member_delete` `{"team_id", "user_id" | "user_email"}`.
pub(super) async fn member_delete(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(&body, &["team_id", "user_id", "user_email"])?;
    let (team_id, user_id, user_email) = named(&f)?;
    let (t, removed) = a
        .keyring
        .remove_team_member(&team_id, user_id.as_deref(), user_email.as_deref())
        .await?;
    let mut v = team_json(&a, &t);
    v["removed_member"] = json!(removed);
    ok(v)
}

/// `POST /team/member_update` `{"team_id", "user_id" | "user_email", "role"}`.
pub(super) async fn member_update(
    State(a): State<Admin>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    a.check(&headers)?;
    let f = Fields::parse(
        &body,
        &[
            "team_id",
            "user_id",
            "user_email",
            "role",
            "max_budget_in_team",
        ],
    )?;
    let (team_id, user_id, user_email) = named(&f)?;
    let role = match f.0.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.parse::<MemberRole>().map_err(|e| bad("role", e))?),
        Some(_) => return Err(bad("role", "must be `admin` or `user`").into()),
    };
    refuse_member_budget(&f)?;
    let (t, m) = a
        .keyring
        .update_team_member(&team_id, user_id.as_deref(), user_email.as_deref(), role)
        .await?;
    let mut v = Map::new();
    v.insert("team_id".into(), json!(t.id));
    v.insert("user_id".into(), json!(m.user_id));
    v.insert("user_email".into(), json!(m.user_email));
    v.insert("role".into(), json!(m.role.as_str()));
    v.insert("max_budget_in_team".into(), Value::Null);
    v.insert("members_with_roles".into(), members_json(&t.members));
    ok(Value::Object(v))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MASTER, app, call};
    use serde_json::{Value, json};

    fn param(v: &Value) -> Option<&str> {
        v["error"]["metadata"]["param"].as_str()
    }

    #[tokio::test]
    async fn team_delete_takes_the_keys_all_or_none() {
        let (app, ring) = app().await;
        let m = Some(MASTER);
        for team in ["ml", "ops"] {
            let (s, v) = call(
                &app,
                "POST",
                "/team/new",
                &format!(r#"{{"team_id":"{team}"}}"#),
                m,
            )
            .await;
            assert_eq!(s, 200, "{v}");
        }
        let mut keys = Vec::new();
        for team in ["ml", "ml", "ops"] {
            let (s, v) = call(
                &app,
                "POST",
                "/key/generate",
                &format!(r#"{{"team_id":"{team}"}}"#),
                m,
            )
            .await;
            assert_eq!(s, 200, "{v}");
            keys.push(v["key_id"].as_str().unwrap().to_owned());
        }
        // An unknown id: 404 naming it, and nothing is deleted.
        let (s, v) = call(
            &app,
            "POST",
            "/team/delete",
            r#"{"team_ids":["ml","ghost"]}"#,
            m,
        )
        .await;
        assert_eq!((s, param(&v)), (404, Some("team_ids")), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("ghost"),
            "{v}"
        );
        assert_eq!(ring.len(), 3);
        for (body, at) in [
            ("{}", "team_ids"),
            (r#"{"team_ids":[]}"#, "team_ids"),
            (r#"{"team_ids":"ml"}"#, "team_ids"),
            (r#"{"team_ids":["ml", 7]}"#, "team_ids[1]"),
            (r#"{"team_id":"ml"}"#, "team_id"),
        ] {
            let (s, v) = call(&app, "POST", "/team/delete", body, m).await;
            assert_eq!((s, param(&v)), (400, Some(at)), "{body}: {v}");
        }
        let (s, _) = call(&app, "POST", "/team/delete", r#"{"team_ids":["ml"]}"#, None).await;
        assert_eq!(s, 401);

        let (s, v) = call(&app, "POST", "/team/delete", r#"{"team_ids":["ml"]}"#, m).await;
        assert_eq!(s, 200, "{v}");
        let mut ml = keys[..2].to_vec();
        ml.sort_unstable();
        assert_eq!(v, json!({"deleted_teams": ["ml"], "deleted_keys": ml}));
        let (s, _) = call(&app, "GET", "/team/info?team_id=ml", "", m).await;
        assert_eq!(s, 404);
        let (s, _) = call(&app, "GET", &format!("/key/info?key={}", keys[0]), "", m).await;
        assert_eq!(s, 404, "the team's keys went with it");
        let (s, v) = call(&app, "GET", &format!("/key/info?key={}", keys[2]), "", m).await;
        assert_eq!(s, 200, "another team's key stays: {v}");
        let (_, v) = call(&app, "GET", "/team/list", "", m).await;
        assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    }

    #[tokio::test]
    async fn members_as_litellms_clients_send_them() {
        let (app, _) = app().await;
        let m = Some(MASTER);
        let (s, v) = call(
            &app,
            "POST",
            "/team/new",
            r#"{"team_id":"ml","members_with_roles":[{"role":"admin","user_id":"alice"}]}"#,
            m,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["members_with_roles"],
            json!([{"role": "admin", "user_id": "alice", "user_email": null}])
        );
        for (body, at) in [
            (
                r#"{"team_id":"x","members_with_roles":[{"role":"owner","user_id":"a"}]}"#,
                "members_with_roles[0].role",
            ),
            (
                r#"{"team_id":"x","members_with_roles":[{"role":"user","user_id":"a"},{"role":"admin","user_id":"a"}]}"#,
                "members_with_roles",
            ),
            (
                r#"{"team_id":"x","members_with_roles":{"role":"user","user_id":"a"}}"#,
                "members_with_roles",
            ),
        ] {
            let (s, v) = call(&app, "POST", "/team/new", body, m).await;
            assert_eq!((s, param(&v)), (400, Some(at)), "{body}: {v}");
        }
        let (s, _) = call(&app, "GET", "/team/info?team_id=x", "", m).await;
        assert_eq!(s, 404, "no team was made");
        // LiteLLM's docs: one member; then a list.
        let (s, v) = call(
            &app,
            "POST",
            "/team/member_add",
            r#"{"team_id":"ml","member":{"role":"user","user_id":"bob"},"max_budget_in_team":null}"#,
            m,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["added_members"][0]["user_id"], "bob");
        assert_eq!(v["members_with_roles"].as_array().unwrap().len(), 2);
        assert_eq!(
            (v["updated_users"].clone(), v["team_id"].as_str()),
            (json!([]), Some("ml"))
        );
        let (s, v) = call(
            &app,
            "POST",
            "/team/member_add",
            r#"{"team_id":"ml","member":[{"role":"user","user_email":"carol@example.com"},{"role":"user","user_id":"dan"}]}"#,
            m,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["members_with_roles"].as_array().unwrap().len(), 4);

        // Refusals name the field; nothing changes.
        for (body, status, at) in [
            (
                r#"{"team_id":"ml","member":{"role":"user","user_id":"bob"}}"#,
                400,
                "member",
            ),
            (
                r#"{"team_id":"ml","member":{"role":"owner","user_id":"eve"}}"#,
                400,
                "member.role",
            ),
            (
                r#"{"team_id":"ml","member":{"user_id":"eve"}}"#,
                400,
                "member.role",
            ),
            (
                r#"{"team_id":"ml","member":[{"role":"user","user_id":"eve"},{"role":"boss","user_id":"fay"}]}"#,
                400,
                "member[1].role",
            ),
            (
                r#"{"team_id":"ml","member":{"role":"user","user_id":"eve","nick":"e"}}"#,
                400,
                "member.nick",
            ),
            (
                r#"{"team_id":"ml","member":{"role":"user"}}"#,
                400,
                "member",
            ),
            (
                r#"{"team_id":"ml","member":{"role":"user","user_id":5}}"#,
                400,
                "member.user_id",
            ),
            (r#"{"team_id":"ml","member":[]}"#, 400, "member"),
            (r#"{"team_id":"ml"}"#, 400, "member"),
            (
                r#"{"member":{"role":"user","user_id":"eve"}}"#,
                400,
                "team_id",
            ),
            (
                r#"{"team_id":"ml","member":{"role":"user","user_id":"eve"},"max_budget_in_team":100}"#,
                400,
                "max_budget_in_team",
            ),
            (
                r#"{"team_id":"ghost","member":{"role":"user","user_id":"eve"}}"#,
                404,
                "team_id",
            ),
        ] {
            let (s, v) = call(&app, "POST", "/team/member_add", body, m).await;
            assert_eq!((s, param(&v)), (status, Some(at)), "{body}: {v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(status == 404 || message.contains(at), "{v}");
        }
        let (_, v) = call(&app, "GET", "/team/info?team_id=ml", "", m).await;
        assert_eq!(
            v["team_info"]["members_with_roles"]
                .as_array()
                .unwrap()
                .len(),
            4,
            "{v}"
        );

        // member_update: the role; a per-member budget only null.
        let (s, v) = call(
            &app,
            "POST",
            "/team/member_update",
            r#"{"team_id":"ml","user_email":"carol@example.com","role":"admin","max_budget_in_team":null}"#,
            m,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (
                v["team_id"].as_str(),
                v["user_email"].as_str(),
                v["role"].as_str()
            ),
            (Some("ml"), Some("carol@example.com"), Some("admin"))
        );
        for (body, status, at) in [
            (
                r#"{"team_id":"ml","user_id":"bob","max_budget_in_team":5}"#,
                400,
                "max_budget_in_team",
            ),
            (
                r#"{"team_id":"ml","user_id":"bob","role":"root"}"#,
                400,
                "role",
            ),
            (r#"{"team_id":"ml","role":"admin"}"#, 400, "user_id"),
            (
                r#"{"team_id":"ml","user_id":"nobody","role":"admin"}"#,
                404,
                "user_id",
            ),
            (
                r#"{"team_id":"ghost","user_id":"bob","role":"admin"}"#,
                404,
                "team_id",
            ),
        ] {
            let (s, v) = call(&app, "POST", "/team/member_update", body, m).await;
            assert_eq!((s, param(&v)), (status, Some(at)), "{body}: {v}");
        }

        // member_delete by id, by email; unknown member or team: 404.
        let (s, v) = call(
            &app,
            "POST",
            "/team/member_delete",
            r#"{"team_id":"ml","user_id":"bob"}"#,
            m,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["removed_member"]["user_id"], "bob");
        let (s, v) = call(
            &app,
            "POST",
            "/team/member_delete",
            r#"{"team_id":"ml","user_email":"carol@example.com"}"#,
            m,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        for (body, status, at) in [
            (r#"{"team_id":"ml","user_id":"bob"}"#, 404, "user_id"),
            (
                r#"{"team_id":"ml","user_email":"zed@example.com"}"#,
                404,
                "user_email",
            ),
            (r#"{"team_id":"ghost","user_id":"dan"}"#, 404, "team_id"),
            (r#"{"team_id":"ml"}"#, 400, "user_id"),
        ] {
            let (s, v) = call(&app, "POST", "/team/member_delete", body, m).await;
            assert_eq!((s, param(&v)), (status, Some(at)), "{body}: {v}");
        }
        let (_, v) = call(&app, "GET", "/team/list", "", m).await;
        let names: Vec<&str> = v[0]["members_with_roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["alice", "dan"], "{v}");
        // LiteLLM's `user_id` filter: the teams the user is a member of.
        let (s, _) = call(&app, "POST", "/team/new", r#"{"team_id":"ops"}"#, m).await;
        assert_eq!(s, 200);
        let (_, v) = call(&app, "GET", "/team/list?user_id=dan", "", m).await;
        assert_eq!(
            (v.as_array().unwrap().len(), v[0]["team_id"].as_str()),
            (1, Some("ml")),
            "{v}"
        );
        let (_, v) = call(&app, "GET", "/team/list?user_id=bob", "", m).await;
        assert_eq!(v, json!([]), "bob was removed");
        let (_, v) = call(&app, "GET", "/team/list?user_id=", "", m).await;
        assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
        let (s, _) = call(
            &app,
            "POST",
            "/team/member_add",
            r#"{"team_id":"ml","member":{"role":"user","user_id":"x"}}"#,
            None,
        )
        .await;
        assert_eq!(s, 401);
    }
}
