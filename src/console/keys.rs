//! The console's keys: the list (searchable by alias or id, paginated), a
//! key's page with the budgets it is charged on, and the forms that create,
//! edit, block, unblock, regenerate and delete keys — all through the admin
//! API (`/key/*`), whose refusals are shown next to the field they name.
//!
//! - `GET /ui/keys?page=&q=`: the list, and the form for a new key.
//! - `POST /ui/keys/new`: `/key/generate`; the whole key is shown on the
//!   answer's page (200, never in a URL), this once.
//! - `GET /ui/keys/{id}`, `POST /ui/keys/{id}`: the key, and its edit form
//!   (`/key/update`). A field left blank removes that setting (`null`); a
//!   field left as the page showed it is not sent, so a change made
//!   meanwhile by someone else is kept.
//! - `POST /ui/keys/{id}/block`, `…/unblock`, `…/regenerate`, `…/delete`
//!   (the last needs the `confirm` box ticked).
//!
//! The forms of the teams page share this module's fields
//! ([`Field`], [`inputs`], [`create_body`], [`update_body`]).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form};
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::budgets::{at, until};
use super::{
    AdminError, Console, Nav, SessionInfo, field_error, form_error, page, query_value, unconfirmed,
    usd,
};

/// Keys on one page of the list.
const PAGE_SIZE: usize = 25;

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/keys", get(list))
        .route("/keys/new", get(to_list).post(create))
        .route("/keys/{id}", get(show).post(edit))
        .route("/keys/{id}/block", post(block))
        .route("/keys/{id}/unblock", post(unblock))
        .route("/keys/{id}/regenerate", post(regenerate))
        .route("/keys/{id}/delete", post(delete))
}

// ----- form fields, shared with the teams page -----

/// How a field's text becomes the admin API's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// A string.
    Text,
    /// A list of names, separated by commas or spaces.
    List,
    /// A number (text that is not one is sent as text: the admin API says
    /// what it must be).
    Number,
    /// A JSON value (an object, for `metadata`).
    Json,
}

/// A form field named as the admin API's field.
#[derive(Clone, Copy, Debug)]
pub(super) struct Field {
    pub(super) name: &'static str,
    pub(super) label: &'static str,
    pub(super) kind: Kind,
    pub(super) hint: &'static str,
}

const fn field(name: &'static str, label: &'static str, kind: Kind, hint: &'static str) -> Field {
    Field {
        name,
        label,
        kind,
        hint,
    }
}

/// The limit fields keys and teams share.
pub(super) const MODELS: Field = field(
    "models",
    "Models",
    Kind::List,
    "Model names, access groups or patterns with *, separated by commas or spaces.",
);
pub(super) const RPM: Field = field("rpm_limit", "Requests a minute", Kind::Number, "");
pub(super) const TPM: Field = field("tpm_limit", "Tokens a minute", Kind::Number, "");
pub(super) const MAX_BUDGET: Field = field("max_budget", "Budget (USD)", Kind::Number, "");
pub(super) const BUDGET_DURATION: Field = field(
    "budget_duration",
    "Budget period",
    Kind::Text,
    "daily, weekly, monthly, total (the default), or a window such as 2h or 14d.",
);
pub(super) const METADATA: Field = field("metadata", "Metadata (JSON object)", Kind::Json, "");

const KEY_FIELDS: [Field; 10] = [
    field("key_alias", "Alias", Kind::Text, ""),
    field("team_id", "Team id", Kind::Text, ""),
    field("user_id", "User id", Kind::Text, ""),
    MODELS,
    RPM,
    TPM,
    MAX_BUDGET,
    BUDGET_DURATION,
    field(
        "duration",
        "Expires after",
        Kind::Text,
        "From now: 30s, 12h, 30d, 2w. Blank: never.",
    ),
    METADATA,
];

/// The names of `fields`, for [`form_error`].
pub(super) fn names(fields: &[Field]) -> Vec<&'static str> {
    fields.iter().map(|f| f.name).collect()
}

/// The admin API's value for a field's (non-blank) text.
fn value_of(kind: Kind, text: &str) -> Value {
    match kind {
        Kind::Text => json!(text),
        Kind::List => json!(
            text.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        ),
        Kind::Number => match serde_json::from_str::<Value>(text) {
            Ok(n @ Value::Number(_)) => n,
            _ => json!(text),
        },
        Kind::Json => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
    }
}

/// The text a field shows for the admin API's value `v`.
pub(super) fn text_of(kind: Kind, v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if kind == Kind::List => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(m) if m.is_empty() => String::new(),
        other if kind == Kind::Json => {
            serde_json::to_string_pretty(other).unwrap_or_else(|_| other.to_string())
        }
        other => other.to_string(),
    }
}

/// The hidden field that carries what a field showed when the page was
/// rendered.
fn was(name: &str) -> String {
    format!("was.{name}")
}

fn form_text<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |s| s.trim())
}

/// The body for a new key or team: every field that is not blank.
pub(super) fn create_body(fields: &[Field], form: &HashMap<String, String>) -> Map<String, Value> {
    let mut body = Map::new();
    for f in fields {
        let text = form_text(form, f.name);
        if !text.is_empty() {
            body.insert(f.name.into(), value_of(f.kind, text));
        }
    }
    body
}

/// The body of an update: every field whose text is not what the page
/// showed (blank: `null`, which removes the setting); a field left as it
/// was is not sent.
pub(super) fn update_body(fields: &[Field], form: &HashMap<String, String>) -> Map<String, Value> {
    let mut body = Map::new();
    for f in fields {
        let Some(sent) = form.get(f.name) else {
            continue;
        };
        let text = sent.trim();
        // Browsers send a textarea's lines ended by CR LF.
        let same = |w: &String| w.trim().replace("\r\n", "\n") == text.replace("\r\n", "\n");
        if form.get(&was(f.name)).is_some_and(same) {
            continue;
        }
        let v = if text.is_empty() {
            Value::Null
        } else {
            value_of(f.kind, text)
        };
        body.insert(f.name.into(), v);
    }
    body
}

/// The admin API's refusal, its `param` cut to the field it is about
/// (`models[1]` → `models`, `member.role` → `member`).
pub(super) fn on_field(mut e: AdminError) -> AdminError {
    if let Some(p) = &e.param
        && let Some(cut) = p.find(['[', '.'])
    {
        e.param = Some(p[..cut].to_owned());
    }
    e
}

/// A form's inputs: each field with its label, `value(name)`, hint and the
/// admin API's message when it names the field. With `shown`, each field
/// also carries what it shows ([`update_body`] sends only the changed ones).
pub(super) fn inputs(
    form_id: &str,
    fields: &[Field],
    value: &dyn Fn(&Field) -> String,
    shown: Option<&dyn Fn(&Field) -> String>,
    error: Option<&AdminError>,
) -> Markup {
    html! {
        @for f in fields {
            @let id = format!("{form_id}-{}", f.name);
            @let v = value(f);
            div.field {
                label for=(id) { (f.label) }
                @if f.kind == Kind::Json {
                    textarea id=(id) name=(f.name) rows="3" { (v) }
                } @else if f.kind == Kind::Number {
                    input id=(id) type="text" inputmode="decimal" name=(f.name) value=(v);
                } @else {
                    input id=(id) type="text" name=(f.name) value=(v);
                }
                @if let Some(shown) = shown {
                    input type="hidden" name=(was(f.name)) value=(shown(f));
                }
                @if !f.hint.is_empty() { span.hint { (f.hint) } }
                (field_error(error, f.name))
            }
        }
    }
}

/// A path segment, percent-encoded (team ids are free text).
pub(super) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A page that only says what the admin API refused, with its status.
pub(super) fn refused(title: &str, nav: Nav, session: &SessionInfo, e: &AdminError) -> Response {
    with_status(
        page(title, nav, session, html! {}, form_error(Some(e), &[])),
        e.status,
    )
}

pub(super) fn with_status(mut res: Response, status: StatusCode) -> Response {
    *res.status_mut() = status;
    res
}

/// The notice after a successful form, from the redirect's `done`: only
/// these words are shown (nothing from the URL is echoed).
pub(super) fn notice(done: Option<&String>) -> Markup {
    let text = match done.map(String::as_str) {
        Some("saved") => "Saved.",
        Some("blocked") => "The key is blocked: it is refused from the next request.",
        Some("unblocked") => "The key is unblocked.",
        Some("deleted") => "Deleted.",
        Some("created") => "Created.",
        Some("member-added") => "Member added.",
        Some("member-removed") => "Member removed.",
        Some("member-updated") => "Role changed.",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

/// A budget's maximum and period, as a cell shows them.
pub(super) fn budget_text(v: &Value) -> Option<String> {
    let max = v["max_budget"].as_f64()?;
    let period = v["budget_duration"].as_str().unwrap_or("total");
    Some(format!("{} {period}", usd(max)))
}

// ----- the list -----

fn key_href(id: &str) -> String {
    format!("/ui/keys/{}", segment(id))
}

async fn to_list() -> Redirect {
    Redirect::to("/ui/keys")
}

async fn list(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_page(&console, &session, &q, None, None).await
}

/// The list of keys (`q`: the page, the search, a notice) and the form for
/// a new key (with what was sent and the refusal, after a failed one).
async fn list_page(
    console: &Console,
    session: &SessionInfo,
    q: &HashMap<String, String>,
    sent: Option<&HashMap<String, String>>,
    error: Option<&AdminError>,
) -> Response {
    let search = q.get("q").map_or("", |s| s.trim());
    let mut uri = format!("/key/list?return_full_object=true&size={PAGE_SIZE}");
    if let Some(p) = q.get("page").filter(|p| !p.is_empty()) {
        uri.push_str(&format!("&page={}", query_value(p)));
    }
    if !search.is_empty() {
        uri.push_str(&format!("&search={}", query_value(search)));
    }
    let listed = console.admin_get(&uri).await;
    let mut spend: HashMap<String, f64> = HashMap::new();
    if let Ok(v) = &listed {
        // The page's budgeted keys' spend (at most a page of them), read
        // at once rather than one after another: each may be a round trip
        // to a shared ledger.
        let mut reads = tokio::task::JoinSet::new();
        for k in v["keys"].as_array().into_iter().flatten() {
            let Some(id) = k["key_id"].as_str() else {
                continue;
            };
            if k["max_budget"].is_null() {
                continue;
            }
            let (console, id) = (console.clone(), id.to_owned());
            reads.spawn(async move {
                let s = own_spend(&console, &id).await;
                (id, s)
            });
        }
        while let Some(read) = reads.join_next().await {
            if let Ok((id, Some(s))) = read {
                spend.insert(id, s);
            }
        }
    }
    let fields = names(&KEY_FIELDS);
    let value = |f: &Field| sent.map_or(String::new(), |s| form_text(s, f.name).to_owned());
    let body = html! {
        (notice(q.get("done")))
        form.filters method="get" action="/ui/keys" role="search" {
            label for="q" { "Search" }
            input id="q" type="search" name="q" value=(search) placeholder="alias or id";
            button type="submit" { "Search" }
            @if !search.is_empty() { a href="/ui/keys" { "Show all" } }
        }
        @match &listed {
            Err(e) => { (form_error(Some(e), &[])) }
            Ok(v) => { (key_table(v, &spend, search)) }
        }
        form.card #new-key-form method="post" action="/ui/keys/new" {
            h2 { "New key" }
            (session.csrf_field())
            (form_error(error, &fields))
            div.grid {
                (inputs("new", &KEY_FIELDS, &value, None, error))
            }
            p.hint { "Blank fields are not set. The whole key is shown once, on the next page." }
            button type="submit" { "Create key" }
        }
    };
    let status = match (&listed, error) {
        (_, Some(e)) => e.status,
        (Err(e), None) => e.status,
        _ => StatusCode::OK,
    };
    with_status(page("Keys", Nav::Keys, session, html! {}, body), status)
}

/// The spend of the key's own budget in its current period, when the
/// gateway counts it.
async fn own_spend(console: &Console, id: &str) -> Option<f64> {
    let info = console
        .admin_get(&format!("/key/info?key={}", query_value(id)))
        .await
        .ok()?;
    info["info"]["budgets"]
        .as_array()?
        .iter()
        .find(|b| b["scope"] == "key")
        .and_then(|b| b["spend"].as_f64())
}

fn key_table(v: &Value, spend: &HashMap<String, f64>, search: &str) -> Markup {
    let keys = v["keys"].as_array().map_or(&[][..], Vec::as_slice);
    let page = v["current_page"].as_u64().unwrap_or(1);
    let pages = v["total_pages"].as_u64().unwrap_or(1);
    let total = v["total_count"].as_u64().unwrap_or(0);
    let link = |p: u64| {
        let mut href = format!("/ui/keys?page={p}");
        if !search.is_empty() {
            href.push_str(&format!("&q={}", query_value(search)));
        }
        href
    };
    let now = jiff::Timestamp::now();
    html! {
        @if keys.is_empty() {
            p.muted {
                @if page > 1 && total > 0 { "No keys on this page. " a href=(link(1)) { "First page" } }
                @else if search.is_empty() { "No keys yet." }
                @else { "No key's alias or id contains this." }
            }
        } @else {
            table.keys {
                thead { tr {
                    th { "Alias" } th { "Id" } th { "Team" } th { "User" } th { "Models" }
                    th.num { "Limits (rpm / tpm)" } th { "Budget" } th { "Status" } th { "Expires" }
                } }
                tbody {
                    @for k in keys {
                        @let id = k["key_id"].as_str().unwrap_or_default();
                        @let alias = k["key_alias"].as_str();
                        tr data-key-id=(id) data-alias=(alias.unwrap_or_default()) {
                            td { a href=(key_href(id)) { (alias.unwrap_or("(no alias)")) } }
                            td.mono { (id) }
                            td { @if let Some(t) = k["team_id"].as_str() {
                                a href=(format!("/ui/teams/{}", segment(t))) { (t) }
                            } @else { "—" } }
                            td { (k["user_id"].as_str().unwrap_or("—")) }
                            td { (models_text(&k["models"])) }
                            td.num { (limit(&k["rpm_limit"])) " / " (limit(&k["tpm_limit"])) }
                            td { @match budget_text(k) {
                                Some(b) => {
                                    @if let Some(s) = spend.get(id) { (usd(*s)) " of " }
                                    (b)
                                }
                                None => { "—" }
                            } }
                            td { (status(k, now)) }
                            td { (k["expires"].as_str().map_or_else(|| "never".to_owned(), at)) }
                        }
                    }
                }
            }
            nav.pages aria-label="pages" {
                @if page > 1 { a href=(link(page - 1)) rel="prev" { "← Previous" } }
                span.muted { "Page " (page) " of " (pages.max(1)) " · " (total) " keys" }
                @if page < pages { a href=(link(page + 1)) rel="next" { "Next →" } }
            }
        }
    }
}

fn models_text(v: &Value) -> String {
    match v.as_array() {
        Some(m) if !m.is_empty() => text_of(Kind::List, v),
        _ => "none".to_owned(),
    }
}

pub(super) fn limit(v: &Value) -> String {
    v.as_u64().map_or_else(|| "—".to_owned(), |n| n.to_string())
}

fn expired(k: &Value, now: jiff::Timestamp) -> bool {
    k["expires"]
        .as_str()
        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
        .is_some_and(|e| e <= now)
}

fn status(k: &Value, now: jiff::Timestamp) -> Markup {
    html! {
        @if k["blocked"] == true {
            span.pill.blocked { "blocked" }
        } @else if expired(k, now) {
            span.pill.warn { "expired" }
        } @else {
            span.pill.ok { "active" }
        }
    }
}

/// What a new (or regenerated) key's page shows: the whole key, this once.
fn shown_once(session: &SessionInfo, title: &str, v: &Value, what: &str) -> Response {
    let key = v["key"].as_str().unwrap_or_default();
    let id = v["key_id"].as_str().unwrap_or_default();
    let alias = v["key_alias"].as_str();
    let body = html! {
        section.secret {
            p { strong { "Copy this key now: it is not shown again." } " " (what) }
            p { code #new-key { (key) } }
            button type="button" data-copy="new-key" hidden { "Copy" }
        }
        p {
            a href=(key_href(id)) { "The key's page" }
            @if let Some(a) = alias { " (" (a) ")" }
            " · " a href="/ui/keys" { "All keys" }
        }
    };
    page(title, Nav::Keys, session, html! {}, body)
}

async fn create(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let body = create_body(&KEY_FIELDS, &form);
    match console
        .admin_post("/key/generate", Value::Object(body))
        .await
    {
        Ok(v) => shown_once(
            &session,
            "New key",
            &v,
            "The gateway keeps only its hash; a lost key can be regenerated, not recovered.",
        ),
        Err(e) => {
            let e = on_field(e);
            list_page(&console, &session, &HashMap::new(), Some(&form), Some(&e)).await
        }
    }
}

// ----- one key -----

async fn show(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    key_page(&console, &session, &id, q.get("done"), None, None).await
}

/// What the expiry field shows: the time left, in its largest whole unit.
fn time_left(expires: &Value) -> String {
    let Some(end) = expires
        .as_str()
        .and_then(|e| e.parse::<jiff::Timestamp>().ok())
    else {
        return String::new();
    };
    let secs = end.as_second() - jiff::Timestamp::now().as_second();
    match secs {
        s if s <= 0 => "0s".to_owned(),
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What a field of the edit form shows for the key `info`.
fn current(info: &Value, f: &Field) -> String {
    if f.name == "duration" {
        time_left(&info["expires"])
    } else {
        text_of(f.kind, &info[f.name])
    }
}

/// A key's page; after a failed form, `sent` (what it sent) fills the edit
/// form and `error` is shown (next to its field when it names one).
async fn key_page(
    console: &Console,
    session: &SessionInfo,
    id: &str,
    done: Option<&String>,
    sent: Option<&HashMap<String, String>>,
    error: Option<&AdminError>,
) -> Response {
    let v = match console
        .admin_get(&format!("/key/info?key={}", query_value(id)))
        .await
    {
        Ok(v) => v,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return refused("No such key", Nav::Keys, session, &e);
        }
        Err(e) => return refused("Key", Nav::Keys, session, &e),
    };
    let info = &v["info"];
    let id = info["key_id"].as_str().unwrap_or(id);
    let href = key_href(id);
    let title = match info["key_alias"].as_str() {
        Some(a) => format!("Key {a}"),
        None => format!("Key {id}"),
    };
    let now = jiff::Timestamp::now();
    let fields = names(&KEY_FIELDS);
    let value = |f: &Field| match sent {
        Some(s) => form_text(s, f.name).to_owned(),
        None => current(info, f),
    };
    let shown_now = |f: &Field| current(info, f);
    let shown_then =
        |f: &Field| sent.map_or(String::new(), |s| form_text(s, &was(f.name)).to_owned());
    let shown: &dyn Fn(&Field) -> String = if sent.is_some() {
        &shown_then
    } else {
        &shown_now
    };
    let blocked = info["blocked"] == true;
    let body = html! {
        (notice(done))
        (form_error(error, &fields))
        section.card {
            table.settings {
                tbody {
                    tr { th { "Id" } td.mono { (id) } }
                    tr { th { "Alias" } td { (info["key_alias"].as_str().unwrap_or("—")) } }
                    tr { th { "Status" } td { (status(info, now)) } }
                    tr { th { "Team" } td { @if let Some(t) = info["team_id"].as_str() {
                        a href=(format!("/ui/teams/{}", segment(t))) { (t) }
                    } @else { "—" } } }
                    tr { th { "User" } td { (info["user_id"].as_str().unwrap_or("—")) } }
                    tr { th { "Models" } td { (models_text(&info["models"])) } }
                    tr { th { "Limits" } td {
                        (limit(&info["rpm_limit"])) " requests / " (limit(&info["tpm_limit"])) " tokens a minute"
                    } }
                    tr { th { "Budget" } td { (budget_text(info).unwrap_or_else(|| "none".into())) } }
                    tr { th { "Expires" } td {
                        @match info["expires"].as_str() {
                            Some(e) => { (at(e)) " (" (until(e, now)) ")" }
                            None => { "never" }
                        }
                    } }
                    tr { th { "Created" } td { (info["created_at"].as_str().map_or_else(String::new, at)) } }
                    tr { th { "Source" } td { (info["source"].as_str().unwrap_or("store")) } }
                }
            }
            p {
                a href=(format!("/ui/spend?key_id={}", query_value(id))) { "Spend" }
                " · "
                a href=(format!("/ui/logs?key_id={}", query_value(id))) { "Request log" }
            }
        }
        h2 { "Budgets it is charged on" }
        (budgets_table(info, now))
        h2 { "Edit" }
        form.card #edit-key method="post" action=(href) {
            (session.csrf_field())
            div.grid {
                (inputs("edit", &KEY_FIELDS, &value, Some(shown), error))
            }
            p.hint {
                "A field left blank removes that setting: the budget, a limit, the expiry, the team. "
                "A field left as it is is not sent."
            }
            button type="submit" { "Save" }
        }
        h2 { "Actions" }
        div.actions {
            @if blocked {
                form.inline method="post" action=(format!("{href}/unblock")) {
                    (session.csrf_field())
                    button.secondary type="submit" { "Unblock" }
                }
            } @else {
                form.inline method="post" action=(format!("{href}/block")) {
                    (session.csrf_field())
                    button.secondary type="submit" { "Block" }
                }
            }
            form.inline method="post" action=(format!("{href}/regenerate")) {
                (session.csrf_field())
                button.secondary type="submit" { "Regenerate" }
                span.hint { " A new secret; the old key is refused from the next request." }
            }
            form.danger method="post" action=(format!("{href}/delete")) {
                (session.csrf_field())
                label.check {
                    input type="checkbox" name="confirm" value="yes";
                    " I understand the key is refused from the next request, for good."
                }
                (field_error(error, "confirm"))
                button.danger type="submit" { "Delete" }
            }
        }
    };
    let status = error.map_or(StatusCode::OK, |e| e.status);
    with_status(page(&title, Nav::Keys, session, html! {}, body), status)
}

/// The budgets `/key/info` lists for a key (its own, its team's, its
/// user's, the global one), with the current period's spend.
fn budgets_table(info: &Value, now: jiff::Timestamp) -> Markup {
    let Some(budgets) = info["budgets"].as_array() else {
        return html! {
            p.muted {
                @if info["max_budget"].is_null() { "No budget of its own." }
                " This gateway counts no spend (no [budgets]), so none is shown."
            }
        };
    };
    html! {
        @if budgets.is_empty() {
            p.muted { "None: no budget of its own, its team's, its user's or the gateway's." }
        } @else {
            table {
                thead { tr {
                    th { "Whose" } th.num { "Spent" } th.num { "Reserved" } th.num { "Budget" }
                    th { "Period" } th { "Resets" }
                } }
                tbody {
                    @for b in budgets {
                        tr {
                            td { (holder(b)) }
                            td.num { (usd(b["spend"].as_f64().unwrap_or(0.0))) }
                            td.num { (usd(b["reserved"].as_f64().unwrap_or(0.0))) }
                            td.num { (usd(b["max_budget"].as_f64().unwrap_or(0.0))) }
                            td { (b["budget_duration"].as_str().unwrap_or("total")) }
                            td { @match b["resets_at"].as_str() {
                                Some(r) => { (until(r, now)) " · " (at(r)) }
                                None => { "never (total)" }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// Whose budget an entry of `/key/info`'s or `/budget/list`'s budgets is.
pub(super) fn holder(b: &Value) -> String {
    match b["scope"].as_str().unwrap_or_default() {
        "key" => format!("key {}", b["key_id"].as_str().unwrap_or_default()),
        "team" => format!("team {}", b["team_id"].as_str().unwrap_or_default()),
        "user" => format!("user {}", b["user_id"].as_str().unwrap_or_default()),
        "global" => "the gateway (global)".to_owned(),
        other => other.to_owned(),
    }
}

async fn edit(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut body = update_body(&KEY_FIELDS, &form);
    body.insert("key".into(), json!(id));
    match console.admin_post("/key/update", Value::Object(body)).await {
        Ok(_) => done(&id, "saved"),
        Err(e) => {
            let e = on_field(e);
            key_page(&console, &session, &id, None, Some(&form), Some(&e)).await
        }
    }
}

fn done(id: &str, what: &str) -> Response {
    super::done(&key_href(id), what)
}

/// Sends `{"key": id}` to `path`, then back to the key's page.
async fn act(
    console: &Console,
    session: &SessionInfo,
    id: &str,
    path: &str,
    what: &str,
) -> Response {
    match console.admin_post(path, json!({ "key": id })).await {
        Ok(_) => done(id, what),
        Err(e) => key_page(console, session, id, None, None, Some(&e)).await,
    }
}

async fn block(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
) -> Response {
    act(&console, &session, &id, "/key/block", "blocked").await
}

async fn unblock(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
) -> Response {
    act(&console, &session, &id, "/key/unblock", "unblocked").await
}

async fn regenerate(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
) -> Response {
    match console
        .admin_post("/key/regenerate", json!({ "key": id }))
        .await
    {
        Ok(v) => shown_once(
            &session,
            "Key regenerated",
            &v,
            "The old key is refused from the next request; the id, settings and spend are kept.",
        ),
        Err(e) => key_page(&console, &session, &id, None, None, Some(&e)).await,
    }
}

async fn delete(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(e) = unconfirmed(&form, "a deleted key cannot be brought back.") {
        return key_page(&console, &session, &id, None, None, Some(&e)).await;
    }
    match console
        .admin_post("/key/delete", json!({ "keys": [id] }))
        .await
    {
        Ok(_) => Redirect::to("/ui/keys?done=deleted").into_response(),
        Err(e) => key_page(&console, &session, &id, None, None, Some(&e)).await,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use super::super::testing::{Browser, Page};

    #[tokio::test]
    async fn a_page_past_the_last_links_back_to_the_first() {
        let b = Browser::logged_in().await;
        b.admin("POST", "/key/generate", json!({"key_alias": "only"}))
            .await;
        let page = b.get("/ui/keys?page=9").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("No keys on this page."), "{}", page.body);
        assert!(
            page.body.contains(r#"href="/ui/keys?page=1""#),
            "{}",
            page.body
        );
        let first = b.get("/ui/keys?page=1").await;
        assert!(first.body.contains(r#"data-alias="only""#));
    }

    /// Undoes the escaping of a page's text.
    pub(crate) fn unescape(s: &str) -> String {
        s.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    }

    /// The whole key a page shows in `#new-key`.
    pub(crate) fn new_key(body: &str) -> Option<String> {
        let at = body.find(r#"id="new-key">"#)? + r#"id="new-key">"#.len();
        let end = body[at..].find('<')?;
        Some(unescape(&body[at..at + end]))
    }

    fn attr(tag: &str, name: &str) -> Option<String> {
        let pat = format!(" {name}=\"");
        let at = tag.find(&pat)? + pat.len();
        let end = tag[at..].find('"')?;
        Some(unescape(&tag[at..at + end]))
    }

    /// The fields the form `id` would send as the page shows it (its
    /// inputs and textareas, but the CSRF token and unticked boxes).
    pub(crate) fn form_fields(body: &str, id: &str) -> Vec<(String, String)> {
        let start = body
            .find(&format!(r#"id="{id}""#))
            .unwrap_or_else(|| panic!("no form #{id}"));
        let form = &body[start..start + body[start..].find("</form>").unwrap()];
        let mut out = Vec::new();
        for part in form.split('<').skip(1) {
            let tag = &part[..part.find('>').unwrap_or(part.len())];
            let Some(name) = attr(tag, "name") else {
                continue;
            };
            if name == "csrf" || attr(tag, "type").as_deref() == Some("checkbox") {
                continue;
            }
            if tag.starts_with("input") {
                out.push((name, attr(tag, "value").unwrap_or_default()));
            } else if tag.starts_with("textarea") {
                let text = &part[part.find('>').unwrap() + 1..];
                out.push((name, unescape(text)));
            }
        }
        out
    }

    pub(crate) fn set(fields: &mut [(String, String)], name: &str, value: &str) {
        let f = fields
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no field {name}"));
        f.1 = value.to_owned();
    }

    pub(crate) async fn post_fields(b: &Browser, path: &str, fields: &[(String, String)]) -> Page {
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        b.post(path, &pairs).await
    }

    /// The row of key `id` on a list page.
    fn row<'a>(body: &'a str, id: &str) -> Option<&'a str> {
        let at = body.find(&format!(r#"data-key-id="{id}""#))?;
        Some(&body[at..at + body[at..].find("</tr>")?])
    }

    async fn info(b: &Browser, id: &str) -> Value {
        b.admin("GET", &format!("/key/info?key={id}"), Value::Null)
            .await["info"]
            .clone()
    }

    #[tokio::test]
    async fn a_key_made_in_the_form_is_listed_found_and_shown_once() {
        let b = Browser::logged_in().await;
        let other = b
            .admin("POST", "/key/generate", json!({"key_alias": "other"}))
            .await;
        let page = b
            .post(
                "/ui/keys/new",
                &[
                    ("key_alias", "Billing-Prod"),
                    ("team_id", ""),
                    ("models", "gpt-4o, claude-3  mini"),
                    ("rpm_limit", "60"),
                    ("tpm_limit", ""),
                    ("max_budget", "5"),
                    ("budget_duration", "daily"),
                    ("metadata", r#"{"owner": "ops"}"#),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let key = new_key(&page.body).expect("the new key on the page");
        assert!(key.starts_with("tg-"), "{key}");
        assert!(page.body.contains(r#"data-copy="new-key""#));
        assert!(page.body.contains("not shown again"));
        let id = key.split('-').nth(1).unwrap().to_owned();
        let i = info(&b, &id).await;
        assert_eq!(i["key_alias"], "Billing-Prod");
        assert_eq!(i["models"], json!(["gpt-4o", "claude-3", "mini"]));
        assert_eq!(
            (i["rpm_limit"].as_u64(), i["tpm_limit"].as_u64()),
            (Some(60), None)
        );
        assert_eq!(
            (i["max_budget"].as_f64(), i["budget_duration"].as_str()),
            (Some(5.0), Some("daily"))
        );
        assert_eq!(i["metadata"], json!({"owner": "ops"}));
        assert!(i["team_id"].is_null(), "a blank field is not sent");

        let list = b.get("/ui/keys").await;
        assert_eq!(list.status, StatusCode::OK);
        let r = row(&list.body, &id).expect("listed");
        assert!(r.contains(r#"data-alias="Billing-Prod""#), "{r}");
        assert!(r.contains("$5.00 daily") && r.contains("60 / —"), "{r}");
        assert!(!list.body.contains(&key), "the whole key on the list");
        let other_id = other["key_id"].as_str().unwrap();
        assert!(row(&list.body, other_id).is_some());
        // Searched by a part of the alias, in any case, or of the id.
        let found = b.get("/ui/keys?q=billing").await;
        assert!(row(&found.body, &id).is_some(), "{}", found.body);
        assert!(row(&found.body, other_id).is_none());
        let found = b.get(&format!("/ui/keys?q={}", &id[2..8])).await;
        assert!(row(&found.body, &id).is_some());
        let none = b.get("/ui/keys?q=no-such-thing").await;
        assert!(row(&none.body, &id).is_none() && none.body.contains("No key"));
        let one = b.get(&format!("/ui/keys/{id}")).await;
        assert_eq!(one.status, StatusCode::OK);
        assert!(one.body.contains(&id) && !one.body.contains(&key));
        assert!(one.body.contains(&format!("/ui/spend?key_id={id}")));
        assert!(one.body.contains(&format!("/ui/logs?key_id={id}")));
    }

    #[tokio::test]
    async fn the_list_is_paginated() {
        let b = Browser::logged_in().await;
        for i in 0..27 {
            b.admin(
                "POST",
                "/key/generate",
                json!({"key_alias": format!("k{i}")}),
            )
            .await;
        }
        let first = b.get("/ui/keys").await;
        assert_eq!(first.body.matches("data-key-id=").count(), 25);
        assert!(
            first.body.contains(r#"href="/ui/keys?page=2""#),
            "{}",
            first.body
        );
        let second = b.get("/ui/keys?page=2").await;
        assert_eq!(second.body.matches("data-key-id=").count(), 2);
        assert!(second.body.contains(r#"href="/ui/keys?page=1""#));
        // A bad page is the admin API's refusal.
        let bad = b.get("/ui/keys?page=zero").await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.body.contains("`page`"), "{}", bad.body);
    }

    #[tokio::test]
    async fn a_refused_field_shows_the_admins_message_next_to_it_and_creates_nothing() {
        let b = Browser::logged_in().await;
        for (field, value, says) in [
            ("max_budget", "-1", "must be 0 or more"),
            ("team_id", "ghost", "no team `ghost`"),
            ("rpm_limit", "ten", "must be a whole number"),
            ("metadata", "not json", "must be an object"),
            ("duration", "soon", "`duration`"),
        ] {
            let page = b
                .post(
                    "/ui/keys/new",
                    &[("key_alias", "kept-alias"), (field, value)],
                )
                .await;
            assert_eq!(
                page.status,
                StatusCode::BAD_REQUEST,
                "{field}: {}",
                page.body
            );
            let at = page
                .body
                .find(&format!(r#"data-field="{field}""#))
                .unwrap_or_else(|| panic!("{field}: no message by the field: {}", page.body));
            let message = &page.body[at..at + page.body[at..].find("</span>").unwrap()];
            assert!(unescape(message).contains(says), "{field}: {message}");
            assert!(
                page.body.contains(r#"value="kept-alias""#),
                "the values are kept"
            );
            assert!(new_key(&page.body).is_none());
        }
        let listed = b.admin("GET", "/key/list", Value::Null).await;
        assert_eq!(listed["total_count"], 0, "nothing was created");
    }

    #[tokio::test]
    async fn the_edit_form_sets_and_removes_a_budget_and_keeps_what_it_does_not_change() {
        let b = Browser::logged_in().await;
        let v = b
            .admin(
                "POST",
                "/key/generate",
                json!({"key_alias": "edited", "rpm_limit": 10, "metadata": {"owner": "a"}, "duration": "30d"}),
            )
            .await;
        let id = v["key_id"].as_str().unwrap().to_owned();
        let path = format!("/ui/keys/{id}");
        let page = b.get(&path).await;
        let mut fields = form_fields(&page.body, "edit-key");
        set(&mut fields, "max_budget", "7");
        set(&mut fields, "budget_duration", "weekly");
        // As a browser sends a textarea: lines ended by CR LF.
        let metadata = fields
            .iter()
            .find(|(n, _)| n == "metadata")
            .unwrap()
            .1
            .clone();
        assert!(metadata.contains('\n'), "{metadata}");
        set(&mut fields, "metadata", &metadata.replace('\n', "\r\n"));
        // Meanwhile, the rate limit and the metadata change elsewhere: the
        // form, which did not change them, does not undo that.
        b.admin(
            "POST",
            "/key/update",
            json!({"key": id, "rpm_limit": 99, "metadata": {"owner": "b"}}),
        )
        .await;
        let saved = post_fields(&b, &path, &fields).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
        assert_eq!(
            saved.location(),
            Some(format!("{path}?done=saved").as_str())
        );
        let i = info(&b, &id).await;
        assert_eq!(
            (i["max_budget"].as_f64(), i["budget_duration"].as_str()),
            (Some(7.0), Some("weekly"))
        );
        assert_eq!(i["rpm_limit"], 99, "a field left as shown is not sent");
        assert_eq!(i["metadata"], json!({"owner": "b"}));
        assert_eq!(i["expires"], v["expires"], "the expiry is kept");
        assert!(
            b.get(&format!("{path}?done=saved"))
                .await
                .body
                .contains("Saved.")
        );

        // A refused value: the admin's message by the field, the value kept, nothing changed.
        let page = b.get(&path).await;
        let mut fields = form_fields(&page.body, "edit-key");
        set(&mut fields, "max_budget", "-3");
        let refused = post_fields(&b, &path, &fields).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(
            refused.body.contains(r#"data-field="max_budget""#),
            "{}",
            refused.body
        );
        assert!(refused.body.contains(r#"name="max_budget" value="-3""#));
        assert_eq!(info(&b, &id).await["max_budget"], 7.0);

        // Blank removes: the budget and the expiry.
        let page = b.get(&path).await;
        let mut fields = form_fields(&page.body, "edit-key");
        set(&mut fields, "max_budget", "");
        set(&mut fields, "duration", "");
        let saved = post_fields(&b, &path, &fields).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.body);
        let i = info(&b, &id).await;
        assert!(i["max_budget"].is_null(), "{i}");
        assert!(i["expires"].is_null(), "{i}");
        assert_eq!(i["key_alias"], "edited");
    }

    #[tokio::test]
    async fn block_unblock_regenerate_and_delete() {
        let b = Browser::logged_in().await;
        let v = b
            .admin("POST", "/key/generate", json!({"key_alias": "acted-on"}))
            .await;
        let id = v["key_id"].as_str().unwrap().to_owned();
        let old = v["key"].as_str().unwrap().to_owned();
        let path = format!("/ui/keys/{id}");
        assert!(b.get(&path).await.body.contains(">Block<"));

        let page = b.post(&format!("{path}/block"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(
            page.location(),
            Some(format!("{path}?done=blocked").as_str())
        );
        assert_eq!(info(&b, &id).await["blocked"], true);
        let list = b.get("/ui/keys").await;
        assert!(row(&list.body, &id).unwrap().contains("blocked"));
        assert!(b.get(&path).await.body.contains(">Unblock<"));
        b.post(&format!("{path}/unblock"), &[]).await;
        assert_eq!(info(&b, &id).await["blocked"], false);
        assert!(
            !row(&b.get("/ui/keys").await.body, &id)
                .unwrap()
                .contains("blocked")
        );

        let page = b.post(&format!("{path}/regenerate"), &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let new = new_key(&page.body).unwrap();
        assert_ne!(new, old);
        assert!(new.starts_with(&format!("tg-{id}-")), "{new}");
        assert!(!b.get(&path).await.body.contains(&new));

        // Delete needs the box ticked.
        let page = b.post(&format!("{path}/delete"), &[]).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(
            page.body.contains(r#"data-field="confirm""#),
            "{}",
            page.body
        );
        assert_eq!(info(&b, &id).await["key_alias"], "acted-on", "not deleted");
        let page = b
            .post(&format!("{path}/delete"), &[("confirm", "yes")])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert_eq!(page.location(), Some("/ui/keys?done=deleted"));
        let gone = b.get(&path).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
        assert!(
            gone.body.contains(&format!("key `{id}`")),
            "the admin's message: {}",
            gone.body
        );
    }

    #[tokio::test]
    async fn an_unknown_key_is_a_404_and_the_pages_escape_what_they_show() {
        let b = Browser::logged_in().await;
        let page = b.get("/ui/keys/nosuchkey").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.body.contains("nosuchkey"), "{}", page.body);

        let evil = "<img src=x onerror=alert(1)>";
        let made = b
            .post(
                "/ui/keys/new",
                &[("key_alias", evil), ("user_id", "\"><script>x</script>")],
            )
            .await;
        assert_eq!(made.status, StatusCode::OK, "{}", made.body);
        let id = new_key(&made.body)
            .unwrap()
            .split('-')
            .nth(1)
            .unwrap()
            .to_owned();
        for path in [
            "/ui/keys".to_owned(),
            format!("/ui/keys/{id}"),
            format!("/ui/keys?q={id}"),
        ] {
            let page = b.get(&path).await;
            assert!(!page.body.contains("<img src=x"), "{path}: {}", page.body);
            assert!(!page.body.contains("<script>x"), "{path}");
            assert!(
                page.body.contains("&lt;img src=x onerror=alert(1)&gt;"),
                "{path}"
            );
        }
        assert!(!made.body.contains("<img src=x"));
        // A refusal that repeats the sent value is escaped too.
        let refused = b.post("/ui/keys/new", &[("team_id", "<b>ghost</b>")]).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(!refused.body.contains("<b>ghost"), "{}", refused.body);
    }
}
