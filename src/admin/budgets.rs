//! `GET /budget/list` (tollgate's own): the budgets closest to their
//! limits, for the console's "budgets at a glance".
//!
//! Every key, team and user with a budget, and the global budget, with the
//! current period's spend read from the ledger — the same entries as the
//! `budgets` of `GET /key/info` (`scope`, the holder's id, `max_budget`,
//! `budget_duration`, `spend`, `reserved`, `period_start`, `resets_at`),
//! plus the holder's alias (`key_alias`, `team_alias`, `user_alias`),
//! `used` (spend ÷ maximum; a budget of 0 counts as used up) and
//! `over_budget` (spend above the maximum). Sorted by `used`, highest
//! first; `limit` entries (1 to 500, default 50), and `total`, how many
//! budgets there are. Holders without a budget are not listed.
//!
//! The holders come from the keyring's memory (where every key, team and
//! user already is); their counters are read one by one (with a shared
//! ledger in Redis, one round trip each), in chunks, keeping only the top
//! `limit` between chunks. So the work grows with the number of budgets
//! (with Redis, a round trip per budget): fine for a page an operator
//! opens, not a route to poll.
//! Without a ledger (no `[budgets]`) the route is a 404 saying so.

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{Admin, Answer, Params, bad, number, ok, query};
use crate::budget::{Limit, Scope};
use crate::error::{Error, Reason};

/// The most entries one answer lists.
pub const MAX_LIMIT: usize = 500;

/// How many counters are read before the list is cut to the top again.
const CHUNK: usize = 256;

/// A budget to list: its limit and its holder's alias.
struct Holding {
    limit: Limit,
    alias: Option<String>,
}

/// `GET /budget/list?limit=`.
pub(super) async fn list(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    if let Some(k) = q.keys().find(|k| k.as_str() != "limit") {
        return Err(bad(k, "unknown parameter; /budget/list takes `limit`").into());
    }
    let limit = number(&q, "limit", 50, MAX_LIMIT)?;
    if a.spend.ledger.is_none() {
        return Err(Error::new(
            Reason::NotFound,
            "This gateway counts no budgets' spend (that needs `[budgets]`): there is nothing to list.",
        )
        .into());
    }
    let holdings = holdings(&a)?;
    let total = holdings.len();
    let mut top: Vec<(f64, Value)> = Vec::with_capacity(limit.min(total) + CHUNK);
    for chunk in holdings.chunks(CHUNK) {
        let limits: Vec<Limit> = chunk.iter().map(|h| h.limit.clone()).collect();
        let Some(Value::Array(entries)) = super::spend::usage_of(&a, &limits).await? else {
            break;
        };
        for (h, mut entry) in chunk.iter().zip(entries) {
            let spent = entry["spend_micros"].as_u64().unwrap_or(0);
            let used = if h.limit.max == 0 {
                1.0
            } else {
                spent as f64 / h.limit.max as f64
            };
            let alias = match h.limit.scope {
                Scope::Key(_) => Some("key_alias"),
                Scope::Team(_) => Some("team_alias"),
                Scope::User(_) => Some("user_alias"),
                _ => None,
            };
            if let Some(name) = alias {
                entry[name] = json!(h.alias);
            }
            entry["used"] = json!(used);
            entry["over_budget"] = json!(spent > h.limit.max);
            top.push((used, entry));
        }
        sort(&mut top);
        top.truncate(limit);
    }
    let budgets: Vec<Value> = top.into_iter().map(|(_, v)| v).collect();
    ok(json!({"budgets": budgets, "total": total}))
}

/// Highest `used` first; then the larger spend, then the holder (stable
/// for equal ones).
fn sort(top: &mut [(f64, Value)]) {
    top.sort_by(|(a, va), (b, vb)| {
        b.total_cmp(a)
            .then_with(|| {
                let spent = |v: &Value| v["spend_micros"].as_u64().unwrap_or(0);
                spent(vb).cmp(&spent(va))
            })
            .then_with(|| holder(va).cmp(&holder(vb)))
    });
}

fn holder(v: &Value) -> (String, String) {
    let kind = v["scope"].as_str().unwrap_or_default().to_owned();
    let id = ["key_id", "team_id", "user_id"]
        .iter()
        .find_map(|f| v[*f].as_str())
        .unwrap_or_default()
        .to_owned();
    (kind, id)
}

/// Every budget: keys', teams', users' (as `/key/info` builds them), and
/// the global one.
fn holdings(a: &Admin) -> Result<Vec<Holding>, Error> {
    let mut out = Vec::new();
    for (k, _) in a.keyring.find_keys(|r| r.limits.budget().is_some())? {
        if let Some(limit) = k
            .limits
            .budget()
            .and_then(|b| Limit::from_budget(Scope::Key(k.id.as_str().into()), b))
        {
            out.push(Holding {
                limit,
                alias: k.alias,
            });
        }
    }
    for (t, _) in a.keyring.list_teams()? {
        if let Some(limit) = t
            .limits
            .budget()
            .and_then(|b| Limit::from_budget(Scope::Team(t.id.as_str().into()), b))
        {
            out.push(Holding {
                limit,
                alias: t.alias,
            });
        }
    }
    for u in a.keyring.list_users(1, usize::MAX)?.0 {
        if let Some(limit) = u
            .budget()
            .and_then(|b| Limit::from_budget(Scope::User(u.id.as_str().into()), b))
        {
            out.push(Holding {
                limit,
                alias: u.alias,
            });
        }
    }
    out.extend(
        a.spend
            .global
            .clone()
            .map(|limit| Holding { limit, alias: None }),
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::SpendView;
    use super::*;
    use crate::budget::{Ledger, Period};
    use crate::keys::{Keyring, MemoryStore};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tower::ServiceExt;

    const MASTER: &str = "master-0123456789abcdef";

    async fn call(app: &axum::Router, method: &str, uri: &str, body: Value) -> (u16, Value) {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {MASTER}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(if method == "GET" {
                String::new()
            } else {
                body.to_string()
            }))
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn budgets_are_listed_by_the_share_used_with_their_reset() {
        let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let ledger = Ledger::default();
        let global = Limit {
            scope: Scope::Global,
            max: 100_000_000,
            period: Period::Monthly,
        };
        let app = super::super::router_with_spend(
            ring,
            MASTER,
            SpendView {
                ledger: Some(Arc::new(ledger.clone())),
                global: Some(global.clone()),
                store: None,
            },
        );
        let key = |body: Value| {
            let app = app.clone();
            async move {
                let (s, v) = call(&app, "POST", "/key/generate", body).await;
                assert_eq!(s, 200, "{v}");
                v["key_id"].as_str().unwrap().to_owned()
            }
        };
        let half =
            key(json!({"key_alias": "half", "max_budget": 10, "budget_duration": "daily"})).await;
        let over =
            key(json!({"key_alias": "over", "max_budget": 1, "budget_duration": "total"})).await;
        let idle = key(json!({"key_alias": "idle", "max_budget": 5})).await;
        let _none = key(json!({"key_alias": "no budget"})).await;
        let (s, v) = call(
            &app,
            "POST",
            "/team/new",
            json!({"team_id": "ml", "team_alias": "ML", "max_budget": 4, "budget_duration": "weekly"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let spend = |scope: Scope, period: Period, micros: u64| {
            ledger.restore_spent(&scope, period, micros);
        };
        spend(Scope::Key(half.as_str().into()), Period::Daily, 5_000_000);
        spend(Scope::Key(over.as_str().into()), Period::Total, 1_500_000);
        spend(Scope::Team("ml".into()), Period::Weekly, 3_000_000);
        spend(Scope::Global, Period::Monthly, 1_000_000);

        let (s, v) = call(&app, "GET", "/budget/list", Value::Null).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["total"], 5,
            "four holders with budgets and the global one: {v}"
        );
        let rows = v["budgets"].as_array().unwrap();
        let order: Vec<(&str, Option<&str>)> = rows
            .iter()
            .map(|b| {
                let id = b["key_id"].as_str().or(b["team_id"].as_str());
                (b["scope"].as_str().unwrap(), id)
            })
            .collect();
        assert_eq!(
            order,
            [
                ("key", Some(over.as_str())),
                ("team", Some("ml")),
                ("key", Some(half.as_str())),
                ("global", None),
                ("key", Some(idle.as_str())),
            ]
        );
        assert_eq!(rows[0]["over_budget"], true);
        assert_eq!(rows[0]["used"], 1.5);
        assert_eq!(rows[0]["key_alias"], "over");
        assert!(
            rows[0]["resets_at"].is_null(),
            "a total budget never resets"
        );
        assert_eq!(rows[1]["team_alias"], "ML");
        assert_eq!(rows[1]["used"], 0.75);
        assert_eq!(rows[1]["over_budget"], false);
        assert!(rows[1]["resets_at"].is_string(), "{}", rows[1]);
        assert_eq!(
            (rows[2]["used"].as_f64(), rows[2]["spend"].as_f64()),
            (Some(0.5), Some(5.0))
        );
        assert_eq!(rows[4]["used"], 0.0);

        // `limit`: the top ones only, the total still counted.
        let (_, v) = call(&app, "GET", "/budget/list?limit=2", Value::Null).await;
        assert_eq!(v["budgets"].as_array().unwrap().len(), 2);
        assert_eq!(v["budgets"][1]["team_id"], "ml");
        assert_eq!(v["total"], 5);
        for (uri, param) in [
            ("/budget/list?limit=0", "limit"),
            ("/budget/list?limit=501", "limit"),
            ("/budget/list?sort=asc", "sort"),
        ] {
            let (s, v) = call(&app, "GET", uri, Value::Null).await;
            assert_eq!(s, 400, "{uri}: {v}");
            assert_eq!(v["error"]["metadata"]["param"], param, "{uri}: {v}");
        }
    }

    #[tokio::test]
    async fn without_a_ledger_there_is_nothing_to_list() {
        let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let app = super::super::router(ring, MASTER);
        let (s, v) = call(&app, "GET", "/budget/list", Value::Null).await;
        assert_eq!(s, 404, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("[budgets]"),
            "{v}"
        );
        let req = axum::http::Request::get("/budget/list")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 401);
    }
}
