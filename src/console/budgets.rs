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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use jiff::Timestamp;
    use serde_json::{Value, json};

    use super::super::testing::{Browser, MASTER};
    use super::{at, until};
    use crate::admin::SpendView;
    use crate::budget::{Ledger, Limit, Period, Scope};
    use crate::keys::{Keyring, MemoryStore};

    #[test]
    fn times_are_written_from_now() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(until("2026-01-01T03:12:30Z", now), "in 3 h 12 min");
        assert_eq!(until("2026-01-03T04:00:00Z", now), "in 2 d 4 h");
        assert_eq!(until("2026-01-01T00:07:00Z", now), "in 7 min");
        assert_eq!(until("2026-01-01T00:00:40Z", now), "in 40 s");
        assert_eq!(until("2025-12-31T23:00:00Z", now), "now");
        assert_eq!(at("2026-01-01T03:12:30Z"), "2026-01-01 03:12 UTC");
        assert_eq!(at("not a time"), "not a time");
    }

    /// The body from `data-holder="{holder}"` to the end of its row.
    fn row<'a>(body: &'a str, holder: &str) -> (usize, &'a str) {
        let at = body
            .find(&format!(r#"data-holder="{holder}""#))
            .unwrap_or_else(|| panic!("no row {holder}: {body}"));
        (at, &body[at..at + body[at..].find("</tr>").unwrap()])
    }

    #[tokio::test]
    async fn budgets_are_sorted_by_the_share_used_with_when_they_reset() {
        let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let ledger = Ledger::default();
        let admin = crate::admin::router_with_spend(
            ring,
            MASTER,
            SpendView {
                ledger: Some(Arc::new(ledger.clone())),
                global: Some(Limit {
                    scope: Scope::Global,
                    max: 1_000_000_000,
                    period: Period::Monthly,
                }),
                store: None,
            },
        );
        let b = Browser::logged_in_over(admin).await;
        let key = |alias: &str, budget: Value, period: &str| {
            let b = &b;
            let body = json!({"key_alias": alias, "max_budget": budget, "budget_duration": period});
            async move {
                b.admin("POST", "/key/generate", body).await["key_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        let low = key("low", json!(100), "daily").await;
        let over = key("<over>", json!(2), "total").await;
        let high = key("high", json!(10), "weekly").await;
        let unbudgeted = b
            .admin("POST", "/key/generate", json!({"key_alias": "free"}))
            .await["key_id"]
            .as_str()
            .unwrap()
            .to_owned();
        b.admin(
            "POST",
            "/team/new",
            json!({"team_id": "ml", "max_budget": 20, "budget_duration": "monthly"}),
        )
        .await;
        ledger.restore_spent(&Scope::Key(low.as_str().into()), Period::Daily, 1_000_000);
        ledger.restore_spent(&Scope::Key(over.as_str().into()), Period::Total, 3_000_000);
        ledger.restore_spent(&Scope::Key(high.as_str().into()), Period::Weekly, 9_000_000);
        ledger.restore_spent(&Scope::Team("ml".into()), Period::Monthly, 10_000_000);

        let page = b.get("/ui/budgets").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let (a, over_row) = row(&page.body, &format!("key:{over}"));
        let (h, high_row) = row(&page.body, &format!("key:{high}"));
        let (t, team_row) = row(&page.body, "team:ml");
        let (l, low_row) = row(&page.body, &format!("key:{low}"));
        let (g, global_row) = row(&page.body, "global");
        assert!(a < h && h < t && t < l && l < g, "sorted by the share used");
        assert!(
            over_row.contains("150%") && over_row.contains("over budget"),
            "{over_row}"
        );
        assert!(over_row.contains("never (total)"), "{over_row}");
        assert!(over_row.contains("&lt;over&gt;") && !page.body.contains("<over>"));
        assert!(
            high_row.contains("90%") && !high_row.contains("over budget"),
            "{high_row}"
        );
        assert!(
            high_row.contains("$9.00") && high_row.contains("$10.00"),
            "{high_row}"
        );
        assert!(high_row.contains("weekly"));
        assert!(team_row.contains("50%") && team_row.contains("/ui/teams/ml"));
        assert!(
            low_row.contains("1%") && low_row.contains("daily"),
            "{low_row}"
        );
        // A daily budget resets within the day, at a time shown.
        assert!(
            low_row.contains(" in ") || low_row.contains(">in "),
            "{low_row}"
        );
        assert!(low_row.contains(" UTC"), "{low_row}");
        assert!(global_row.contains(">0%<"), "{global_row}");
        assert!(
            !page
                .body
                .contains(&format!(r#"data-holder="key:{unbudgeted}""#)),
            "keys without a budget are not listed"
        );
    }

    #[tokio::test]
    async fn without_a_ledger_the_page_says_why() {
        let b = Browser::logged_in().await;
        let page = b.get("/ui/budgets").await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.body.contains("[budgets]"), "{}", page.body);
    }
}
