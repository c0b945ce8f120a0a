//! `GET /spend/logs`, `GET /spend/series` and the budgets shown by
//! `GET /key/info`.

use axum::extract::State;
use axum::http::HeaderMap;
use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{Admin, Answer, Params, bad, number, ok, query};
use crate::budget::{
    Bucket, Cursor, GroupBy, Limit, Micros, Scope, Series, SeriesName, SeriesQuery, SpendQuery,
    SpendRecord, usd_value,
};
use crate::error::{Error, Reason};
use crate::keys::KeyRecord;

const PARAMS: [&str; 13] = [
    "key_id",
    "team_id",
    "end_user",
    "model",
    "start_time",
    "end_time",
    "limit",
    "cursor",
    // LiteLLM's names.
    "api_key",
    "user_id",
    "request_id",
    "start_date",
    "end_date",
];

/// A LiteLLM `start_date` / `end_date`: `YYYY-MM-DD` (midnight UTC) or an
/// RFC 3339 time.
fn date(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<Timestamp>, Error> {
    q.get(name)
        .map(|v| {
            v.parse::<jiff::civil::Date>()
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp())
                .or_else(|| v.parse::<Timestamp>().ok())
                .ok_or_else(|| {
                    bad(
                        name,
                        "must be a date `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time",
                    )
                })
        })
        .transpose()
}

/// One of two spellings of the same filter (tollgate's, LiteLLM's): both
/// given and different is a 400 naming the second.
fn either<T: PartialEq>(
    ours: Option<T>,
    theirs: Option<T>,
    theirs_name: &str,
) -> Result<Option<T>, Error> {
    match (ours, theirs) {
        (Some(a), Some(b)) if a != b => Err(bad(
            theirs_name,
            "contradicts the filter of the same meaning given beside it",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// The most records in one page.
pub const MAX_LIMIT: usize = 1000;

fn time(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<Timestamp>, Error> {
    q.get(name)
        .map(|v| {
            v.parse::<Timestamp>().map_err(|_| {
                bad(
                    name,
                    "must be an RFC 3339 time with an offset, such as `2026-05-01T00:00:00Z`",
                )
            })
        })
        .transpose()
}

fn filter(
    q: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<String>, Error> {
    match q.get(name) {
        Some(v) if v.is_empty() => Err(bad(name, "must not be empty; leave it out to match all")),
        v => Ok(v.cloned()),
    }
}

fn record_json(r: &SpendRecord) -> Value {
    let end = r
        .start
        .checked_add(jiff::SignedDuration::from_micros(r.latency_us as i64))
        .unwrap_or(r.start);
    let mut m = Map::new();
    m.insert("request_id".into(), json!(r.request_id));
    m.insert("key_id".into(), json!(r.key_id));
    m.insert("team_id".into(), json!(r.team_id));
    m.insert("user_id".into(), json!(r.user_id));
    // LiteLLM's name for the end user a request was for.
    m.insert("end_user".into(), json!(r.end_user));
    m.insert("model".into(), json!(r.model));
    m.insert("model_group".into(), json!(r.model_group));
    m.insert("deployment".into(), json!(r.deployment));
    m.insert("served_model".into(), json!(r.served_model));
    m.insert("prompt_tokens".into(), json!(r.prompt_tokens));
    m.insert("completion_tokens".into(), json!(r.completion_tokens));
    m.insert(
        "total_tokens".into(),
        json!(r.prompt_tokens.saturating_add(r.completion_tokens)),
    );
    m.insert("tokens_estimated".into(), json!(r.estimated));
    m.insert("spend".into(), usd_value(r.cost));
    m.insert("spend_micros".into(), json!(r.cost));
    m.insert("status".into(), json!(r.status));
    m.insert("start_time".into(), json!(r.start.to_string()));
    m.insert("end_time".into(), json!(end.to_string()));
    m.insert("latency_ms".into(), json!(r.latency_us as f64 / 1000.0));
    m.insert("attempts".into(), json!(r.attempts));
    Value::Object(m)
}

/// `GET /spend/logs`.
pub(super) async fn logs(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    if let Some(k) = q.keys().find(|k| !PARAMS.contains(&k.as_str())) {
        return Err(bad(k, format!("unknown parameter; use {}", PARAMS.join(", "))).into());
    }
    let start = either(
        time(&q, "start_time")?,
        date(&q, "start_date")?,
        "start_date",
    )?;
    let end = either(time(&q, "end_time")?, date(&q, "end_date")?, "end_date")?;
    // LiteLLM's `api_key`: a whole key or its public id.
    let api_key = match filter(&q, "api_key")? {
        None => None,
        Some(k) => Some(
            a.keyring
                .key_info(&k)
                .map_err(|_| bad("api_key", "no such key"))?
                .0
                .id,
        ),
    };
    let key_id = either(filter(&q, "key_id")?, api_key, "api_key")?;
    if let (Some(s), Some(e)) = (start, end)
        && e <= s
    {
        return Err(bad("end_time", "must be later than `start_time`").into());
    }
    let after = match q.get("cursor") {
        None => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
            bad(
                "cursor",
                "is not a cursor this API gave; pass the `next_cursor` of the previous page",
            )
        })?),
    };
    let spend_query = SpendQuery {
        key_id,
        team_id: filter(&q, "team_id")?,
        // LiteLLM's `user_id`: the records of every key made for the user.
        user_id: filter(&q, "user_id")?,
        end_user: filter(&q, "end_user")?,
        request_id: filter(&q, "request_id")?,
        model: filter(&q, "model")?,
        start,
        end,
        after,
        limit: number(&q, "limit", 100, MAX_LIMIT)?,
    };
    let store = spend_store(&a)?;
    let page = store.query(spend_query).await.map_err(unreadable)?;
    let data: Vec<Value> = page.records.iter().map(record_json).collect();
    ok(json!({
        "data": data,
        "next_cursor": page.next.map(Cursor::encode),
    }))
}

const SERIES_PARAMS: [&str; 8] = [
    "group_by",
    "bucket",
    "start_time",
    "end_time",
    "key_id",
    "team_id",
    "model",
    "deployment",
];

/// `GET /spend/series`: spend over time per group and bucket, summed by
/// the store (see [`crate::budget::spend::series`]).
pub(super) async fn series(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    if let Some(k) = q.keys().find(|k| !SERIES_PARAMS.contains(&k.as_str())) {
        return Err(bad(
            k,
            format!("unknown parameter; use {}", SERIES_PARAMS.join(", ")),
        )
        .into());
    }
    let group_by = q
        .get("group_by")
        .and_then(|v| GroupBy::parse(v))
        .ok_or_else(|| bad("group_by", "must be `key`, `team`, `model` or `deployment`"))?;
    let bucket = q
        .get("bucket")
        .and_then(|v| Bucket::parse(v))
        .ok_or_else(|| bad("bucket", "must be `hour` or `day`"))?;
    // By default the last 24 hours by the hour, the last 30 days by the day.
    let span = jiff::SignedDuration::from_hours(match bucket {
        Bucket::Hour => 24,
        Bucket::Day => 30 * 24,
    });
    let end = time(&q, "end_time")?.unwrap_or_else(Timestamp::now);
    let start = match time(&q, "start_time")? {
        Some(s) => s,
        None => end
            .checked_sub(span)
            .map_err(|_| bad("end_time", "is too early"))?,
    };
    if end <= start {
        return Err(bad("end_time", "must be later than `start_time`").into());
    }
    let series_query = SeriesQuery {
        key_id: filter(&q, "key_id")?,
        team_id: filter(&q, "team_id")?,
        model: filter(&q, "model")?,
        deployment: filter(&q, "deployment")?,
        ..SeriesQuery::new(group_by, bucket, start, end)
    };
    series_query.buckets().map_err(|e| bad("start_time", e))?;
    let store = spend_store(&a)?;
    let series = store.series(series_query).await.map_err(unreadable)?;
    ok(json!({
        "group_by": group_by.as_str(),
        "bucket": bucket.as_str(),
        "start_time": start.to_string(),
        "end_time": end.to_string(),
        "series": series.iter().map(series_json).collect::<Vec<_>>(),
    }))
}

fn series_json(s: &Series) -> Value {
    let (name, kind) = match &s.name {
        SeriesName::Value(v) => (json!(v), "value"),
        SeriesName::Missing => (Value::Null, "missing"),
        SeriesName::Other => (Value::Null, "other"),
    };
    let points: Vec<Value> = s
        .points
        .iter()
        .map(|p| {
            json!({
                "start": p.start.to_string(),
                "spend": usd_value(p.cost),
                "spend_micros": p.cost,
                "requests": p.requests,
                "prompt_tokens": p.prompt_tokens,
                "completion_tokens": p.completion_tokens,
            })
        })
        .collect();
    let cost: Micros = s.cost();
    json!({
        "name": name,
        "kind": kind,
        "spend": usd_value(cost),
        "spend_micros": cost,
        "requests": s.points.iter().map(|p| p.requests).sum::<u64>(),
        "points": points,
    })
}

/// `GET /global/spend`: LiteLLM's `{"spend", "max_budget"}`, every
/// record's cost summed by the spend store (an aggregate: memory bounded),
/// and the global budget with its current period when there is one.
pub(super) async fn global(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    if let Some(k) = query(q)?.keys().next() {
        return Err(bad(k, "unknown parameter; /global/spend takes none").into());
    }
    let store = spend_store(&a)?;
    let totals = store.totals(None).await.map_err(unreadable)?;
    let mut m = Map::new();
    m.insert("spend".into(), usd_value(totals.global));
    m.insert("spend_micros".into(), json!(totals.global));
    m.insert("max_budget".into(), Value::Null);
    if let (Some(l), Some(ledger)) = (&a.spend.global, &a.spend.ledger) {
        let u = ledger.usage(&l.scope, l.period).await?;
        m.insert("max_budget".into(), usd_value(l.max));
        m.insert("budget_duration".into(), json!(l.period.to_string()));
        m.insert("period_spend".into(), usd_value(u.spent));
        m.insert(
            "budget_reset_at".into(),
            json!(u.window.end.map(|t| t.to_string())),
        );
    }
    ok(Value::Object(m))
}

/// The spend store, or the 404 that says this gateway keeps none.
fn spend_store(a: &Admin) -> Result<&std::sync::Arc<dyn crate::budget::SpendStore>, Error> {
    a.spend.store.as_ref().ok_or_else(no_records)
}

/// A read of the spend store that failed: logged, and a 500 that points at
/// the log (the store's own words may name its host or path).
pub(super) fn unreadable(e: crate::budget::SpendError) -> Error {
    tracing::error!(error = %e, "spend store query failed");
    Error::new(
        Reason::Internal,
        "The spend records could not be read; see the gateway's log.",
    )
}

fn no_records() -> Error {
    Error::new(
        Reason::NotFound,
        "This gateway keeps no spend records (they need `[budgets]`, and `[spend] enabled` not false).",
    )
}

/// Each budget `key` is charged on, with the current period's spend, or
/// `None` without a ledger.
pub(super) async fn budgets_of(a: &Admin, key: &KeyRecord) -> Result<Option<Value>, Error> {
    if a.spend.ledger.is_none() {
        return Ok(None);
    }
    let mut limits: Vec<Limit> = Vec::with_capacity(4);
    limits.extend(
        key.limits
            .budget()
            .and_then(|b| Limit::from_budget(Scope::Key(key.id.as_str().into()), b)),
    );
    if let Some(team) = &key.team_id
        && let Ok((t, _)) = a.keyring.team_info(team)
    {
        limits.extend(
            t.limits
                .budget()
                .and_then(|b| Limit::from_budget(Scope::Team(team.as_str().into()), b)),
        );
    }
    if let Some(user) = &key.user_id
        && let Ok((u, _)) = a.keyring.user_info(user)
    {
        limits.extend(
            u.budget()
                .and_then(|b| Limit::from_budget(Scope::User(user.as_str().into()), b)),
        );
    }
    limits.extend(a.spend.global.clone());
    usage_of(a, &limits).await
}

/// Each of `limits` with the current period's spend, reservations and
/// reset, or `None` without a ledger.
pub(super) async fn usage_of(a: &Admin, limits: &[Limit]) -> Result<Option<Value>, Error> {
    let Some(ledger) = a.spend.ledger.as_ref() else {
        return Ok(None);
    };
    let mut out: Vec<Value> = Vec::with_capacity(limits.len());
    for l in limits {
        {
            let u = ledger.usage(&l.scope, l.period).await?;
            let mut m = Map::new();
            m.insert("scope".into(), json!(l.scope.kind()));
            match &l.scope {
                Scope::Key(id) => m.insert("key_id".into(), json!(&**id)),
                Scope::Team(id) => m.insert("team_id".into(), json!(&**id)),
                Scope::User(id) => m.insert("user_id".into(), json!(&**id)),
                Scope::EndUser(id) => m.insert("end_user_id".into(), json!(&**id)),
                Scope::Global => None,
            };
            m.insert("max_budget".into(), usd_value(l.max));
            m.insert("budget_duration".into(), json!(l.period.to_string()));
            m.insert("spend".into(), usd_value(u.spent));
            m.insert("reserved".into(), usd_value(u.reserved));
            m.insert("spend_micros".into(), json!(u.spent));
            m.insert("reserved_micros".into(), json!(u.reserved));
            m.insert(
                "period_start".into(),
                json!(u.window.start.map(|t| t.to_string())),
            );
            m.insert(
                "resets_at".into(),
                json!(u.window.end.map(|t| t.to_string())),
            );
            out.push(Value::Object(m));
        }
    }
    Ok(Some(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    use super::super::SpendView;
    use super::*;
    use crate::budget::{Ledger, MemorySpendStore, Period, SpendStore};
    use crate::keys::{Keyring, MemoryStore};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tower::ServiceExt;

    const MASTER: &str = "master-0123456789abcdef";

    async fn get(app: &axum::Router, uri: &str) -> (u16, Value) {
        let req = axum::http::Request::get(uri)
            .header("authorization", format!("Bearer {MASTER}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// The admin API over a store holding `records`.
    async fn app_with_records(records: Vec<SpendRecord>) -> axum::Router {
        let ring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let store = Arc::new(MemorySpendStore::new());
        store.write(records).await.unwrap();
        super::super::router_with_spend(
            ring,
            MASTER,
            SpendView {
                store: Some(store),
                ..SpendView::default()
            },
        )
    }

    #[tokio::test]
    async fn logs_filter_page_and_refuse_bad_parameters() {
        let batch = (0..25)
            .map(|i| {
                let mut r = SpendRecord::new(
                    format!("r{i}"),
                    if i % 2 == 0 { "a" } else { "b" },
                    Timestamp::from_second(1_800_000_000 + i).unwrap(),
                );
                r.key_id = Some("k".into());
                r.cost = 1_500;
                r
            })
            .collect();
        let app = app_with_records(batch).await;
        let mut seen = Vec::new();
        let mut uri = "/spend/logs?model=a&limit=5".to_owned();
        loop {
            let (s, v) = get(&app, &uri).await;
            assert_eq!(s, 200, "{v}");
            for r in v["data"].as_array().unwrap() {
                assert_eq!(r["model"], "a");
                assert_eq!(r["spend"], 0.0015);
                seen.push(r["request_id"].as_str().unwrap().to_owned());
            }
            match v["next_cursor"].as_str() {
                Some(c) => uri = format!("/spend/logs?model=a&limit=5&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 13);
        assert_eq!(seen[0], "r24");
        let (_, v) = get(
            &app,
            "/spend/logs?start_time=2027-01-15T08:00:10Z&end_time=2027-01-15T08:00:12%2B00:00",
        )
        .await;
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["r11", "r10"]);
        // LiteLLM's `request_id`: that request's record, and only it.
        let (s, v) = get(&app, "/spend/logs?request_id=r11").await;
        assert_eq!(s, 200, "{v}");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["r11"]);
        let (_, v) = get(&app, "/spend/logs?request_id=r999").await;
        assert_eq!(v["data"], json!([]), "{v}");
        for (uri, param) in [
            ("/spend/logs?limit=0", "limit"),
            ("/spend/logs?limit=1001", "limit"),
            ("/spend/logs?start_time=yesterday", "start_time"),
            ("/spend/logs?end_time=2026-01-01", "end_time"),
            (
                "/spend/logs?start_time=2026-02-01T00:00:00Z&end_time=2026-01-01T00:00:00Z",
                "end_time",
            ),
            ("/spend/logs?cursor=nope", "cursor"),
            ("/spend/logs?key_id=", "key_id"),
            ("/spend/logs?user=x", "user"),
        ] {
            let (s, v) = get(&app, uri).await;
            assert_eq!(s, 400, "{uri}: {v}");
            assert_eq!(v["error"]["metadata"]["param"], param, "{uri}: {v}");
        }
    }

    #[tokio::test]
    async fn series_sum_per_group_and_bucket_and_refuse_bad_parameters() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let batch = [
            ("2027-03-01T10:00:00Z", "k1", Some("d1"), 1_500_000),
            ("2027-03-01T10:59:00Z", "k1", Some("d1"), 500_000),
            ("2027-03-01T11:00:00Z", "k2", Some("d2"), 250_000),
            // A budget's refusal: no deployment.
            ("2027-03-01T11:10:00Z", "k2", None, 0),
            // At the end: not counted.
            ("2027-03-01T12:00:00Z", "k1", Some("d1"), 9_000_000),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (start, key, deployment, cost))| {
            let mut r = SpendRecord::new(format!("r{i}"), "m", at(start));
            r.key_id = Some(key.into());
            r.deployment = deployment.map(Into::into);
            r.cost = cost;
            r.prompt_tokens = 100;
            r.completion_tokens = 10;
            r
        })
        .collect();
        let app = app_with_records(batch).await;
        let range = "start_time=2027-03-01T10:00:00Z&end_time=2027-03-01T12:00:00Z";
        let (s, v) = get(
            &app,
            &format!("/spend/series?group_by=key&bucket=hour&{range}"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            (
                &v["group_by"],
                &v["bucket"],
                &v["start_time"],
                &v["end_time"]
            ),
            (
                &json!("key"),
                &json!("hour"),
                &json!("2027-03-01T10:00:00Z"),
                &json!("2027-03-01T12:00:00Z")
            )
        );
        let series = v["series"].as_array().unwrap();
        assert_eq!(series.len(), 2, "{v}");
        assert_eq!(
            (&series[0]["name"], &series[0]["kind"], &series[0]["spend"]),
            (&json!("k1"), &json!("value"), &json!(2.0))
        );
        assert_eq!(
            series[0]["points"],
            json!([{"start": "2027-03-01T10:00:00Z", "spend": 2.0, "spend_micros": 2_000_000,
                    "requests": 2, "prompt_tokens": 200, "completion_tokens": 20}])
        );
        assert_eq!(series[1]["name"], "k2");
        assert_eq!(series[1]["points"][0]["start"], "2027-03-01T11:00:00Z");
        assert_eq!(series[1]["points"][0]["requests"], 2);
        // By deployment: the refusal is the `missing` series, name null.
        let (s, v) = get(
            &app,
            &format!("/spend/series?group_by=deployment&bucket=day&key_id=k2&{range}"),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let kinds: Vec<(&Value, &Value, &Value)> = v["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (&s["name"], &s["kind"], &s["requests"]))
            .collect();
        assert_eq!(
            kinds,
            [
                (&json!("d2"), &json!("value"), &json!(1)),
                (&Value::Null, &json!("missing"), &json!(1))
            ]
        );
        assert_eq!(v["series"][0]["points"][0]["start"], "2027-03-01T00:00:00Z");
        // Without times: the last 24 hours (hour) or 30 days (day), to now.
        let (s, v) = get(&app, "/spend/series?group_by=model&bucket=day").await;
        assert_eq!(s, 200, "{v}");
        let start: Timestamp = v["start_time"].as_str().unwrap().parse().unwrap();
        let end: Timestamp = v["end_time"].as_str().unwrap().parse().unwrap();
        assert_eq!(end.duration_since(start).as_hours(), 30 * 24);
        assert_eq!(v["series"], json!([]), "nothing in the last 30 days");
        for (uri, param) in [
            ("/spend/series?bucket=hour", "group_by"),
            ("/spend/series?group_by=user&bucket=hour", "group_by"),
            ("/spend/series?group_by=key", "bucket"),
            ("/spend/series?group_by=key&bucket=minute", "bucket"),
            (
                "/spend/series?group_by=key&bucket=hour&start_time=yesterday",
                "start_time",
            ),
            (
                "/spend/series?group_by=key&bucket=hour&start_time=2027-03-02T00:00:00Z&end_time=2027-03-01T00:00:00Z",
                "end_time",
            ),
            // 1001 hours.
            (
                "/spend/series?group_by=key&bucket=hour&start_time=2027-01-01T00:00:00Z&end_time=2027-02-11T17:00:00Z",
                "start_time",
            ),
            ("/spend/series?group_by=key&bucket=hour&model=", "model"),
            ("/spend/series?group_by=key&bucket=hour&limit=5", "limit"),
        ] {
            let (s, v) = get(&app, uri).await;
            assert_eq!(s, 400, "{uri}: {v}");
            assert_eq!(v["error"]["metadata"]["param"], param, "{uri}: {v}");
        }
        // 1000 hours are answered.
        let (s, v) = get(
            &app,
            "/spend/series?group_by=key&bucket=hour&start_time=2027-01-01T00:00:00Z&end_time=2027-02-11T16:00:00Z",
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let (s, _) = get(
            &super::super::router(
                Keyring::builder(MemoryStore::new()).build().await.unwrap(),
                MASTER,
            ),
            "/spend/series?group_by=key&bucket=hour",
        )
        .await;
        assert_eq!(s, 404, "no store, no series");
    }

    #[tokio::test]
    async fn without_a_store_logs_are_404_and_key_info_has_no_budgets() {
        let ring = Keyring::builder(MemoryStore::new())
            .models(["m"])
            .build()
            .await
            .unwrap();
        let (key, _) = ring
            .generate(crate::keys::NewKey {
                grants: Some(vec!["m".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        let app = super::super::router(ring.clone(), MASTER);
        let (s, _) = get(&app, "/spend/logs").await;
        assert_eq!(s, 404);
        let (s, v) = get(&app, &format!("/key/info?key={key}")).await;
        assert_eq!(s, 200);
        assert!(v["info"].get("budgets").is_none(), "{v}");
        // With a ledger: the global budget is listed even for a key without its own.
        let ledger = Ledger::default();
        let global = Limit {
            scope: Scope::Global,
            max: 5_000_000,
            period: Period::Daily,
        };
        let held = ledger
            .reserve(std::slice::from_ref(&global), 1_234)
            .unwrap();
        let app = super::super::router_with_spend(
            ring,
            MASTER,
            SpendView {
                ledger: Some(Arc::new(ledger)),
                global: Some(global),
                store: None,
            },
        );
        let (_, v) = get(&app, &format!("/key/info?key={key}")).await;
        let b = &v["info"]["budgets"][0];
        assert_eq!(b["scope"], "global");
        assert_eq!(
            (b["reserved_micros"].as_u64(), b["spend_micros"].as_u64()),
            (Some(1_234), Some(0))
        );
        assert!(
            b["resets_at"].is_string() && b["period_start"].is_string(),
            "{b}"
        );
        drop(held);
    }
}
