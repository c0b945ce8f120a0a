//! The console's teams: the list and the form for a new team, and a team's
//! page — its settings and edit form, its members, its keys, and deletion
//! (which deletes the team's keys too, as the admin API does) — all through
//! the admin API (`/team/*`).
//!
//! - `GET /ui/teams`, `POST /ui/teams/new` (`/team/new`).
//! - `GET /ui/teams/{id}`, `POST /ui/teams/{id}` (`/team/update`: a field
//!   left blank removes that setting, a field left as shown is not sent).
//! - `POST /ui/teams/{id}/members/add|role|remove`
//!   (`/team/member_add|member_update|member_delete`).
//! - `POST /ui/teams/{id}/delete` (`/team/delete`; the `confirm` box ticked).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::budgets::{at, until};
use super::keys::{
    BUDGET_DURATION, Field, Kind, MAX_BUDGET, METADATA, MODELS, RPM, TPM, budget_text, create_body,
    inputs, limit, names, notice, on_field, refused, segment, text_of, update_body, with_status,
};
use super::{
    AdminError, Console, Nav, SessionInfo, field_error, form_error, page, query_value, unconfirmed,
};

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/teams", get(list))
        .route("/teams/new", get(to_list).post(create))
        .route("/teams/{id}", get(show).post(edit))
        .route("/teams/{id}/members/add", post(member_add))
        .route("/teams/{id}/members/role", post(member_role))
        .route("/teams/{id}/members/remove", post(member_remove))
        .route("/teams/{id}/delete", post(delete))
}

const TEAM_ID: Field = Field {
    name: "team_id",
    label: "Team id",
    kind: Kind::Text,
    hint: "Blank: one is made up.",
};
const TEAM_ALIAS: Field = Field {
    name: "team_alias",
    label: "Alias",
    kind: Kind::Text,
    hint: "",
};

const NEW_FIELDS: [Field; 8] = [
    TEAM_ID,
    TEAM_ALIAS,
    MODELS,
    RPM,
    TPM,
    MAX_BUDGET,
    BUDGET_DURATION,
    METADATA,
];

const EDIT_FIELDS: [Field; 7] = [
    TEAM_ALIAS,
    MODELS,
    RPM,
    TPM,
    MAX_BUDGET,
    BUDGET_DURATION,
    METADATA,
];

fn team_href(id: &str) -> String {
    format!("/ui/teams/{}", segment(id))
}

async fn to_list() -> Redirect {
    Redirect::to("/ui/teams")
}

async fn list(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_page(&console, &session, q.get("done"), None, None).await
}

async fn list_page(
    console: &Console,
    session: &SessionInfo,
    done: Option<&String>,
    sent: Option<&HashMap<String, String>>,
    error: Option<&AdminError>,
) -> Response {
    let teams = console.admin_get("/team/list").await;
    let value = |f: &Field| {
        sent.map_or(String::new(), |s| {
            s.get(f.name).map_or("", |v| v.trim()).to_owned()
        })
    };
    let fields = names(&NEW_FIELDS);
    let body = html! {
        (notice(done))
        @match &teams {
            Err(e) => { (form_error(Some(e), &[])) }
            Ok(v) => { (team_table(v)) }
        }
        form.card #new-team-form method="post" action="/ui/teams/new" {
            h2 { "New team" }
            (session.csrf_field())
            (form_error(error, &fields))
            div.grid { (inputs("new", &NEW_FIELDS, &value, None, error)) }
            p.hint { "Blank fields are not set. Members are added on the team's page." }
            button type="submit" { "Create team" }
        }
    };
    let status = match (&teams, error) {
        (_, Some(e)) => e.status,
        (Err(e), None) => e.status,
        _ => StatusCode::OK,
    };
    with_status(page("Teams", Nav::Teams, session, html! {}, body), status)
}

fn count(v: &Value) -> usize {
    v.as_array().map_or(0, Vec::len)
}

fn team_table(v: &Value) -> Markup {
    let teams = v.as_array().map_or(&[][..], Vec::as_slice);
    html! {
        @if teams.is_empty() {
            p.muted { "No teams yet." }
        } @else {
            table.teams {
                thead { tr {
                    th { "Alias" } th { "Id" } th.num { "Members" } th.num { "Keys" }
                    th { "Budget" } th.num { "Limits (rpm / tpm)" } th { "Status" }
                } }
                tbody {
                    @for t in teams {
                        @let id = t["team_id"].as_str().unwrap_or_default();
                        tr data-team-id=(id) {
                            td { a href=(team_href(id)) { (t["team_alias"].as_str().unwrap_or("(no alias)")) } }
                            td.mono { (id) }
                            td.num { (count(&t["members_with_roles"])) }
                            td.num { (count(&t["keys"])) }
                            td { (budget_text(t).unwrap_or_else(|| "—".into())) }
                            td.num { (limit(&t["rpm_limit"])) " / " (limit(&t["tpm_limit"])) }
                            td { @if t["blocked"] == true { span.pill.blocked { "blocked" } } @else { span.pill.ok { "active" } } }
                        }
                    }
                }
            }
        }
    }
}

async fn create(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let body = create_body(&NEW_FIELDS, &form);
    match console.admin_post("/team/new", Value::Object(body)).await {
        Ok(v) => done(v["team_id"].as_str().unwrap_or_default(), "created"),
        Err(e) => {
            let e = on_field(e);
            list_page(&console, &session, None, Some(&form), Some(&e)).await
        }
    }
}

fn done(id: &str, what: &str) -> Response {
    super::done(&team_href(id), what)
}

/// What a failed form on the team's page sent, to fill that form again.
enum Sent<'a> {
    Edit(&'a HashMap<String, String>),
    Member(&'a HashMap<String, String>),
}

async fn show(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    team_page(&console, &session, &id, q.get("done"), None, None).await
}

async fn team_page(
    console: &Console,
    session: &SessionInfo,
    id: &str,
    done: Option<&String>,
    sent: Option<Sent<'_>>,
    error: Option<&AdminError>,
) -> Response {
    let v = match console
        .admin_get(&format!("/team/info?team_id={}", query_value(id)))
        .await
    {
        Ok(v) => v,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return refused("No such team", Nav::Teams, session, &e);
        }
        Err(e) => return refused("Team", Nav::Teams, session, &e),
    };
    let info = &v["team_info"];
    let href = team_href(id);
    let key_ids = count(&v["keys"]);
    let keys = console
        .admin_get(&format!(
            "/key/list?team_id={}&return_full_object=true&size=100",
            query_value(id)
        ))
        .await;
    let title = match info["team_alias"].as_str() {
        Some(a) => format!("Team {a}"),
        None => format!("Team {id}"),
    };
    let now = jiff::Timestamp::now();
    let current = |f: &Field| text_of(f.kind, &info[f.name]);
    let (edit_sent, member_sent) = match sent {
        Some(Sent::Edit(s)) => (Some(s), None),
        Some(Sent::Member(s)) => (None, Some(s)),
        None => (None, None),
    };
    let text =
        |s: &HashMap<String, String>, name: &str| s.get(name).map_or("", |v| v.trim()).to_owned();
    let value = |f: &Field| match edit_sent {
        Some(s) => text(s, f.name),
        None => current(f),
    };
    let shown_then =
        |f: &Field| edit_sent.map_or(String::new(), |s| text(s, &format!("was.{}", f.name)));
    let shown: &dyn Fn(&Field) -> String = if edit_sent.is_some() {
        &shown_then
    } else {
        &current
    };
    let member_value = |name: &str| member_sent.map_or(String::new(), |s| text(s, name));
    let members = info["members_with_roles"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let fields = names(&EDIT_FIELDS);
    // A refusal of the member form is shown in that form, next to the
    // field its `param` names (`member.role` → `role`).
    let (error, member_error) = match (sent, error) {
        (Some(Sent::Member(_)), Some(e)) => {
            let mut e = e.clone();
            e.param = e
                .param
                .as_deref()
                .and_then(|p| p.strip_prefix("member."))
                .map(str::to_owned);
            (None, Some(e))
        }
        (_, e) => (e, None),
    };
    let member_error = member_error.as_ref();
    let status = error.or(member_error).map_or(StatusCode::OK, |e| e.status);
    let body = html! {
        (notice(done))
        (form_error(error, &fields))
        section.card {
            table.settings { tbody {
                tr { th { "Id" } td.mono { (id) } }
                tr { th { "Alias" } td { (info["team_alias"].as_str().unwrap_or("—")) } }
                tr { th { "Status" } td { @if info["blocked"] == true { span.pill.blocked { "blocked" } } @else { span.pill.ok { "active" } } } }
                tr { th { "Models" } td {
                    @match text_of(Kind::List, &info["models"]) {
                        m if m.is_empty() => { "no restriction (its keys' own grants)" }
                        m => { (m) }
                    }
                } }
                tr { th { "Limits" } td {
                    (limit(&info["rpm_limit"])) " requests / " (limit(&info["tpm_limit"])) " tokens a minute"
                } }
                tr { th { "Budget" } td {
                    (budget_text(info).unwrap_or_else(|| "none".into()))
                    @if let Some(r) = info["budget_reset_at"].as_str() { " · resets " (until(r, now)) " (" (at(r)) ")" }
                } }
                tr { th { "Created" } td { (info["created_at"].as_str().map_or_else(String::new, at)) } }
            } }
            p {
                a href=(format!("/ui/spend?team_id={}", query_value(id))) { "Spend" }
                " · "
                a href=(format!("/ui/logs?team_id={}", query_value(id))) { "Request log" }
                " · "
                a href="/ui/budgets" { "Budgets" }
            }
        }
        h2 { "Edit" }
        form.card #edit-team method="post" action=(href) {
            (session.csrf_field())
            div.grid { (inputs("edit", &EDIT_FIELDS, &value, Some(shown), error)) }
            p.hint {
                "A field left blank removes that setting: the budget, a limit, the models. "
                "A field left as it is is not sent."
            }
            button type="submit" { "Save" }
        }
        h2 { "Members" }
        @if members.is_empty() {
            p.muted { "No members." }
        } @else {
            table.members {
                thead { tr { th { "User id" } th { "Email" } th { "Role" } th { "" } } }
                tbody {
                    @for m in members {
                        @let (name, who) = match m["user_id"].as_str() {
                            Some(u) => ("user_id", u),
                            None => ("user_email", m["user_email"].as_str().unwrap_or_default()),
                        };
                        @let role = m["role"].as_str().unwrap_or("user");
                        tr data-member=(who) {
                            td { (m["user_id"].as_str().unwrap_or("—")) }
                            td { (m["user_email"].as_str().unwrap_or("—")) }
                            td {
                                form.inline method="post" action=(format!("{href}/members/role")) {
                                    (session.csrf_field())
                                    input type="hidden" name=(name) value=(who);
                                    select name="role" aria-label="role" {
                                        @for r in ["user", "admin"] {
                                            option value=(r) selected[r == role] { (r) }
                                        }
                                    }
                                    " "
                                    button.secondary type="submit" { "Set role" }
                                }
                            }
                            td {
                                form.inline method="post" action=(format!("{href}/members/remove")) {
                                    (session.csrf_field())
                                    input type="hidden" name=(name) value=(who);
                                    button.danger type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
        form.card #add-member method="post" action=(format!("{href}/members/add")) {
            (session.csrf_field())
            (form_error(member_error, &["user_id", "user_email", "role"]))
            div.grid {
                div.field {
                    label for="member-user_id" { "User id" }
                    input id="member-user_id" type="text" name="user_id" value=(member_value("user_id"));
                    (field_error(member_error, "user_id"))
                }
                div.field {
                    label for="member-user_email" { "Email" }
                    input id="member-user_email" type="text" name="user_email" value=(member_value("user_email"));
                    span.hint { "A user id, an email, or both." }
                    (field_error(member_error, "user_email"))
                }
                div.field {
                    label for="member-role" { "Role" }
                    select id="member-role" name="role" {
                        @for r in ["user", "admin"] {
                            option value=(r) selected[member_value("role") == r] { (r) }
                        }
                    }
                    (field_error(member_error, "role"))
                }
            }
            button type="submit" { "Add member" }
        }
        h2 { "Keys" }
        @match &keys {
            Err(e) => { (form_error(Some(e), &[])) }
            Ok(k) => {
                @let list = k["keys"].as_array().map_or(&[][..], Vec::as_slice);
                @if list.is_empty() {
                    p.muted { "No keys." }
                } @else {
                    ul.keys {
                        @for key in list {
                            @let kid = key["key_id"].as_str().unwrap_or_default();
                            li {
                                a href=(format!("/ui/keys/{}", segment(kid))) {
                                    (key["key_alias"].as_str().unwrap_or(kid))
                                }
                                " " span.mono.muted { (kid) }
                                @if key["blocked"] == true { " " span.pill.blocked { "blocked" } }
                            }
                        }
                    }
                    @if key_ids > list.len() { p.muted { "The first " (list.len()) " of " (key_ids) " keys." } }
                }
            }
        }
        h2 { "Delete" }
        form.danger method="post" action=(format!("{href}/delete")) {
            (session.csrf_field())
            label.check {
                input type="checkbox" name="confirm" value="yes";
                " I understand this deletes the team and its keys (" (key_ids) "), which are refused from the next request."
            }
            (field_error(error, "confirm"))
            button.danger type="submit" { "Delete" }
        }
    };
    with_status(page(&title, Nav::Teams, session, html! {}, body), status)
}

async fn edit(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut body = update_body(&EDIT_FIELDS, &form);
    body.insert("team_id".into(), json!(id));
    match console
        .admin_post("/team/update", Value::Object(body))
        .await
    {
        Ok(_) => done(&id, "saved"),
        Err(e) => {
            let e = on_field(e);
            team_page(
                &console,
                &session,
                &id,
                None,
                Some(Sent::Edit(&form)),
                Some(&e),
            )
            .await
        }
    }
}

/// The member a form names: `user_id`, else `user_email` (blank: not sent).
fn member_ident(form: &HashMap<String, String>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for name in ["user_id", "user_email"] {
        if let Some(v) = form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            m.insert(name.into(), json!(v));
        }
    }
    m
}

async fn member_add(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut member = member_ident(&form);
    if let Some(r) = form.get("role") {
        member.insert("role".into(), json!(r));
    }
    let body = json!({"team_id": id, "member": member});
    match console.admin_post("/team/member_add", body).await {
        Ok(_) => done(&id, "member-added"),
        Err(e) => {
            team_page(
                &console,
                &session,
                &id,
                None,
                Some(Sent::Member(&form)),
                Some(&e),
            )
            .await
        }
    }
}

async fn member_role(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut body = member_ident(&form);
    body.insert("team_id".into(), json!(id));
    if let Some(r) = form.get("role") {
        body.insert("role".into(), json!(r));
    }
    match console
        .admin_post("/team/member_update", Value::Object(body))
        .await
    {
        Ok(_) => done(&id, "member-updated"),
        Err(e) => team_page(&console, &session, &id, None, None, Some(&e)).await,
    }
}

async fn member_remove(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut body = member_ident(&form);
    body.insert("team_id".into(), json!(id));
    match console
        .admin_post("/team/member_delete", Value::Object(body))
        .await
    {
        Ok(_) => done(&id, "member-removed"),
        Err(e) => team_page(&console, &session, &id, None, None, Some(&e)).await,
    }
}

async fn delete(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(e) = unconfirmed(&form, "the team and its keys cannot be brought back.") {
        return team_page(&console, &session, &id, None, None, Some(&e)).await;
    }
    match console
        .admin_post("/team/delete", json!({ "team_ids": [id] }))
        .await
    {
        Ok(_) => Redirect::to("/ui/teams?done=deleted").into_response(),
        Err(e) => team_page(&console, &session, &id, None, None, Some(&e)).await,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use super::super::keys::tests::{form_fields, post_fields, set};
    use super::super::testing::Browser;

    async fn team(b: &Browser, id: &str) -> Value {
        b.admin("GET", &format!("/team/info?team_id={id}"), Value::Null)
            .await
    }

    #[tokio::test]
    async fn a_team_is_created_listed_and_edited_in_the_forms() {
        let b = Browser::logged_in().await;
        let page = b
            .post(
                "/ui/teams/new",
                &[
                    ("team_id", "ml"),
                    ("team_alias", "Machine <learning>"),
                    ("max_budget", "3"),
                    ("budget_duration", "monthly"),
                    ("rpm_limit", ""),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), Some("/ui/teams/ml?done=created"));
        let t = team(&b, "ml").await;
        assert_eq!(t["team_info"]["max_budget"], 3.0);
        assert!(t["team_info"]["rpm_limit"].is_null());
        b.admin(
            "POST",
            "/key/generate",
            json!({"team_id": "ml", "key_alias": "ml-key"}),
        )
        .await;
        let list = b.get("/ui/teams").await;
        let at = list.body.find(r#"data-team-id="ml""#).expect("listed");
        let row = &list.body[at..at + list.body[at..].find("</tr>").unwrap()];
        assert!(row.contains("Machine &lt;learning&gt;"), "escaped: {row}");
        assert!(row.contains("$3.00 monthly"), "{row}");
        assert!(!list.body.contains("<learning>"));

        // A refusal: by its field, nothing created; an existing id: the admin's word.
        let page = b
            .post("/ui/teams/new", &[("team_id", "ops"), ("max_budget", "-1")])
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(
            page.body.contains(r#"data-field="max_budget""#),
            "{}",
            page.body
        );
        assert!(page.body.contains(r#"value="ops""#), "the values are kept");
        let teams = b.admin("GET", "/team/list", Value::Null).await;
        assert_eq!(teams.as_array().unwrap().len(), 1);
        let again = b.post("/ui/teams/new", &[("team_id", "ml")]).await;
        assert!(again.status.is_client_error(), "{}", again.status);
        assert!(again.body.contains("ml"), "{}", again.body);

        // Edit: a limit set, the budget removed (blank), the alias kept.
        let page = b.get("/ui/teams/ml").await;
        assert!(page.body.contains("ml-key"), "its keys are listed");
        assert!(page.body.contains("/ui/spend?team_id=ml"));
        let mut fields = form_fields(&page.body, "edit-team");
        set(&mut fields, "rpm_limit", "5");
        set(&mut fields, "max_budget", "");
        let saved = post_fields(&b, "/ui/teams/ml", &fields).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
        let t = &team(&b, "ml").await["team_info"];
        assert_eq!(t["rpm_limit"], 5);
        assert!(t["max_budget"].is_null(), "{t}");
        assert_eq!(t["team_alias"], "Machine <learning>");
        // A refused edit shows the message by its field.
        let page = b.get("/ui/teams/ml").await;
        let mut fields = form_fields(&page.body, "edit-team");
        set(&mut fields, "tpm_limit", "lots");
        let refused = post_fields(&b, "/ui/teams/ml", &fields).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(
            refused.body.contains(r#"data-field="tpm_limit""#),
            "{}",
            refused.body
        );
        assert_eq!(b.get("/ui/teams/nope").await.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn members_are_added_changed_and_removed() {
        let b = Browser::logged_in().await;
        b.admin("POST", "/team/new", json!({"team_id": "ops"}))
            .await;
        let page = b
            .post(
                "/ui/teams/ops/members/add",
                &[("user_id", "u1"), ("user_email", ""), ("role", "admin")],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        let members = |t: &Value| t["team_info"]["members_with_roles"].clone();
        assert_eq!(
            members(&team(&b, "ops").await),
            json!([{"user_id": "u1", "user_email": null, "role": "admin"}])
        );
        assert!(
            b.get("/ui/teams/ops")
                .await
                .body
                .contains(r#"data-member="u1""#)
        );
        // Neither an id nor an email: the admin API's refusal, nothing added.
        let page = b
            .post(
                "/ui/teams/ops/members/add",
                &[("user_id", ""), ("role", "user")],
            )
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
        let form = &page.body[page.body.find(r#"id="add-member""#).unwrap()..];
        let form = &form[..form.find("</form>").unwrap()];
        assert!(
            form.contains("role=\"alert\""),
            "not in the member form: {}",
            page.body
        );
        // A bad role is shown next to the role.
        let page = b
            .post(
                "/ui/teams/ops/members/add",
                &[("user_id", "u9"), ("role", "owner")],
            )
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
        assert!(page.body.contains(r#"data-field="role""#), "{}", page.body);
        assert_eq!(members(&team(&b, "ops").await).as_array().unwrap().len(), 1);

        let page = b
            .post(
                "/ui/teams/ops/members/role",
                &[("user_id", "u1"), ("role", "user")],
            )
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(members(&team(&b, "ops").await)[0]["role"], "user");
        let page = b
            .post("/ui/teams/ops/members/remove", &[("user_id", "u1")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(members(&team(&b, "ops").await), json!([]));
        let page = b
            .post("/ui/teams/ops/members/remove", &[("user_id", "u1")])
            .await;
        assert!(
            page.status.is_client_error(),
            "removing a non-member: {}",
            page.status
        );
    }

    #[tokio::test]
    async fn deleting_a_team_needs_the_box_and_takes_its_keys() {
        let b = Browser::logged_in().await;
        b.admin("POST", "/team/new", json!({"team_id": "gone"}))
            .await;
        let k = b
            .admin("POST", "/key/generate", json!({"team_id": "gone"}))
            .await;
        let key_id = k["key_id"].as_str().unwrap();
        let page = b.post("/ui/teams/gone/delete", &[]).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(page.body.contains(r#"data-field="confirm""#));
        assert_eq!(
            team(&b, "gone").await["keys"],
            json!([key_id]),
            "not deleted"
        );
        let page = b.post("/ui/teams/gone/delete", &[("confirm", "yes")]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), Some("/ui/teams?done=deleted"));
        assert_eq!(b.get("/ui/teams/gone").await.status, StatusCode::NOT_FOUND);
        assert_eq!(
            b.get(&format!("/ui/keys/{key_id}")).await.status,
            StatusCode::NOT_FOUND,
            "its keys are deleted too"
        );
    }
}
