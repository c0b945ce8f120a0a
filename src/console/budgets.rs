//! The console's budgets at a glance (`GET /ui/budgets`): the keys, teams
//! and users closest to their limits, and the global budget, the most used
//! first — spend against maximum as a bar and a percentage, the period,
//! and when it resets — from one call to the admin API's `/budget/list`.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use jiff::Timestamp;
use maud::{Markup, html};
use serde_json::Value;

use super::keys::{holder, refused, segment};
use super::{Console, Nav, SessionInfo, page, usd};

/// The most rows the page shows.
const ROWS: usize = 100;

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/budgets", get(show))
}

/// An RFC 3339 time as the console writes it (`2026-12-06 17:00 UTC`);
/// text that is not one is shown as it is.
pub(super) fn at(rfc3339: &str) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

/// How long from `now` until the RFC 3339 time: `in 3 h 12 min`, `in 2 d 4 h`,
/// `in 40 s`; `now` once it has passed.
pub(super) fn until(rfc3339: &str, now: Timestamp) -> String {
    let Ok(end) = rfc3339.parse::<Timestamp>() else {
        return rfc3339.to_owned();
    };
    let secs = end.as_second() - now.as_second();
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3_600, secs % 3_600 / 60);
    match secs {
        s if s <= 0 => "now".to_owned(),
        _ if d > 0 => format!("in {d} d {h} h"),
        _ if h > 0 => format!("in {h} h {m} min"),
        _ if m > 0 => format!("in {m} min"),
        s => format!("in {s} s"),
    }
}

async fn show(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
) -> Response {
    let v = match console
        .admin_get(&format!("/budget/list?limit={ROWS}"))
        .await
    {
        Ok(v) => v,
        Err(e) => return refused("Budgets", Nav::Budgets, &session, &e),
    };
    let rows = v["budgets"].as_array().map_or(&[][..], Vec::as_slice);
    let total = v["total"].as_u64().unwrap_or(0);
    let now = Timestamp::now();
    let body = html! {
        p.hint {
            "Every budget of a key, a team or a user, and the gateway's, the most used first: "
            "what the current period has spent of its maximum."
            @if total as usize > rows.len() { " The first " (rows.len()) " of " (total) "." }
        }
        @if rows.is_empty() {
            p.muted { "No budgets: no key, team or user has a max_budget, and there is no global budget." }
        } @else {
            table.budgets {
                thead { tr {
                    th { "Whose" } th { "Used" } th.num { "Spent" } th.num { "Budget" }
                    th { "Period" } th { "Resets" }
                } }
                tbody { @for b in rows { (row(b, now)) } }
            }
        }
    };
    page("Budgets", Nav::Budgets, &session, html! {}, body)
}

fn row(b: &Value, now: Timestamp) -> Markup {
    let scope = b["scope"].as_str().unwrap_or_default();
    let id = ["key_id", "team_id", "user_id"]
        .iter()
        .find_map(|f| b[*f].as_str());
    let data = match id {
        Some(id) => format!("{scope}:{id}"),
        None => scope.to_owned(),
    };
    let alias = ["key_alias", "team_alias", "user_alias"]
        .iter()
        .find_map(|f| b[*f].as_str());
    let href = match (scope, id) {
        ("key", Some(id)) => Some(format!("/ui/keys/{}", segment(id))),
        ("team", Some(id)) => Some(format!("/ui/teams/{}", segment(id))),
        _ => None,
    };
    let used = b["used"].as_f64().unwrap_or(0.0);
    let over = b["over_budget"] == true;
    let class = if over || used >= 1.0 {
        "bad"
    } else if used >= 0.8 {
        "warn"
    } else {
        "ok"
    };
    html! {
        tr data-holder=(data) class=[over.then_some("over")] {
            td {
                @match href {
                    Some(h) => { a href=(h) { (holder(b)) } }
                    None => { (holder(b)) }
                }
                @if let Some(a) = alias { " " span.muted { (a) } }
            }
            td {
                meter min="0" max="1" low="0.8" high="0.99" optimum="0" value=(used.min(1.0)) {
                    (percent(used))
                }
                " " span.(class) { (percent(used)) }
                @if over { " " span.pill.bad { "over budget" } }
            }
            td.num { (usd(b["spend"].as_f64().unwrap_or(0.0))) }
            td.num { (usd(b["max_budget"].as_f64().unwrap_or(0.0))) }
            td { (b["budget_duration"].as_str().unwrap_or("total")) }
            td { @match b["resets_at"].as_str() {
                Some(r) => { (until(r, now)) span.muted { " · " (at(r)) } }
                None => { "never (total)" }
            } }
        }
    }
}

fn percent(used: f64) -> String {
    format!("{:.0}%", used * 100.0)
}
