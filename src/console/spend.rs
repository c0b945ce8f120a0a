//! The console's spend pages: `GET /ui/spend`, a chart of spend over time
//! per key, team, model or deployment, and `GET /ui/logs`, the request log.
//!
//! Both read the admin API: `/spend/series` (sums made by the spend store,
//! see [`crate::budget::spend::series`]) and `/spend/logs` (pages of
//! records, newest first, by its cursor). Their filters are GET forms, so a
//! chart or a page of the log is a link. A filter the admin API refuses is
//! shown next to its field, in the admin API's words.
//!
//! The chart is SVG drawn on the server by plotters and inlined in the
//! page: presentation attributes only (plotters' SVG backend writes no
//! `style` attribute or element, which the console's CSP would block),
//! and every text in it (a model's name) escaped by plotters. Filtered to
//! one key (`key_id`) or one team (`team_id`, without `key_id`) with a
//! budget, it draws the budget as a horizontal line labelled "budget", and
//! the spend as cumulative from the start of the budget's current period
//! (its `period_start` in `/key/info`, else the start computed from
//! `budget_reset_at` and `budget_duration`), so the line shows how close
//! each group took the budget; for a `total` budget, from the chart's start.

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use jiff::{SignedDuration, Timestamp, ToSpan};
use maud::{Markup, html};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use super::{AdminError, Console, Nav, SessionInfo, field_error, form_error, page, trusted, usd};
use crate::budget::{Bucket, GroupBy, MAX_BUCKETS, SeriesQuery};
use crate::duration::Length;
use crate::keys::BudgetPeriod;

pub(super) fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/spend", get(spend))
        .route("/logs", get(logs))
}

type Params = Query<Vec<(String, String)>>;

/// The query's pairs with a value (a form's empty fields are "any").
fn given(params: Vec<(String, String)>) -> Vec<(String, String)> {
    params
        .into_iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .collect()
}

fn get_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `path?pairs`, every name and value percent-encoded.
fn url(path: &str, pairs: &[(String, String)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

/// The fields of the spend page's form.
const SPEND_FIELDS: [&str; 6] = [
    "group_by",
    "bucket",
    "key_id",
    "team_id",
    "model",
    "deployment",
];

/// `GET /ui/spend`.
async fn spend(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Query(params): Params,
) -> Response {
    let mut params = given(params);
    for (name, default) in [("group_by", "model"), ("bucket", "day")] {
        if get_param(&params, name).is_none() {
            params.push((name.to_owned(), default.to_owned()));
        }
    }
    let budget = match budget_of(&console, &params).await {
        Ok(b) => b,
        Err(e) => {
            return spend_page(&session, &params, None, Some(&e), None);
        }
    };
    let mut query = params.clone();
    let mut budget = budget;
    if let Some(b) = &mut budget
        && get_param(&params, "start_time").is_none()
        && let Some(start) = b.period_start
    {
        // The current period, as far back as one chart reaches (a bucket
        // spare: the first one is the one containing the start, and the
        // end is taken a moment later).
        let bucket = get_param(&params, "bucket").and_then(Bucket::parse);
        let reach = bucket.map_or(start, |bucket| {
            let span = SignedDuration::from_micros(bucket.micros() * (MAX_BUCKETS as i64 - 2));
            Timestamp::now()
                .checked_sub(span)
                .map_or(start, |earliest| start.max(earliest))
        });
        b.clipped = reach > start;
        query.push(("start_time".to_owned(), reach.to_string()));
    }
    match console.admin_get(&url("/spend/series", &query)).await {
        Ok(answer) => spend_page(&session, &params, Some(&answer), None, budget.as_ref()),
        Err(e) => spend_page(&session, &params, None, Some(&e), None),
    }
}

/// The budget drawn on a chart filtered to one key or team.
#[derive(Clone, Debug, PartialEq)]
struct BudgetLine {
    /// Whose: `key` or `team`.
    scope: &'static str,
    /// USD.
    max: f64,
    /// `monthly`, `2h`, …
    duration: Option<String>,
    /// Where the current period starts (`None`: a `total` budget).
    period_start: Option<Timestamp>,
    resets_at: Option<String>,
    /// The period began before the chart can reach (too many buckets):
    /// the chart starts later, and the page says so.
    clipped: bool,
}

/// The budget of the key (`key_id`) or else the team (`team_id`) the page
/// is filtered to, if it has one.
async fn budget_of(
    console: &Console,
    params: &[(String, String)],
) -> Result<Option<BudgetLine>, AdminError> {
    let (scope, param, path, field) = if let Some(key) = get_param(params, "key_id") {
        let path = url("/key/info", &[("key".into(), key.into())]);
        ("key", "key_id", path, "info")
    } else if let Some(team) = get_param(params, "team_id") {
        let path = url("/team/info", &[("team_id".into(), team.into())]);
        ("team", "team_id", path, "team_info")
    } else {
        return Ok(None);
    };
    let v = console.admin_get(&path).await.map_err(|e| AdminError {
        // "No such key/team" is about the filter; anything else (the admin
        // API down, a 500) stays as it came.
        param: if e.status.is_client_error() {
            Some(param.into())
        } else {
            e.param
        },
        ..e
    })?;
    let info = &v[field];
    let Some(max) = info["max_budget"].as_f64() else {
        return Ok(None);
    };
    let duration = info["budget_duration"].as_str().map(str::to_owned);
    let resets_at = info["budget_reset_at"].as_str().map(str::to_owned);
    // The ledger's own start of the period, when the admin API shows it.
    let shown = info["budgets"].as_array().and_then(|list| {
        list.iter()
            .find(|b| b["scope"] == scope)
            .and_then(|b| b["period_start"].as_str())
            .and_then(|s| s.parse().ok())
    });
    let period_start =
        shown.or_else(|| period_start(duration.as_deref()?, resets_at.as_deref()?.parse().ok()?));
    Ok(Some(BudgetLine {
        scope,
        max,
        duration,
        period_start,
        resets_at,
        clipped: false,
    }))
}

/// The start of the budget period `duration` (as the admin API writes it)
/// that ends at `resets_at`, counted back in UTC; `None` for `total`.
fn period_start(duration: &str, resets_at: Timestamp) -> Option<Timestamp> {
    let end = resets_at.to_zoned(jiff::tz::TimeZone::UTC);
    let start = match duration.parse::<BudgetPeriod>().ok()? {
        BudgetPeriod::Total => return None,
        BudgetPeriod::Daily => end.checked_sub(1.day()),
        BudgetPeriod::Weekly => end.checked_sub(1.week()),
        BudgetPeriod::Monthly => end.checked_sub(1.month()),
        BudgetPeriod::Every(e) => match e.length {
            Length::Seconds(s) => end.checked_sub(SignedDuration::from_secs(s as i64)),
            Length::Months(m) => end.checked_sub(i64::from(m).months()),
        },
    };
    start.ok().map(|z| z.timestamp())
}

fn spend_page(
    session: &SessionInfo,
    params: &[(String, String)],
    answer: Option<&Value>,
    error: Option<&AdminError>,
    budget: Option<&BudgetLine>,
) -> Response {
    let chosen = |name: &str| get_param(params, name).unwrap_or_default();
    let group_by = chosen("group_by");
    let (chart, note) = match answer.map(|a| draw(a, budget)) {
        Some(Ok(svg)) => (Some(svg), None),
        Some(Err(e)) => {
            tracing::error!(error = %e, "console: the spend chart could not be drawn");
            (
                None,
                Some("The chart could not be drawn; see the gateway's log."),
            )
        }
        None => (None, None),
    };
    let series = answer
        .and_then(|a| a["series"].as_array())
        .cloned()
        .unwrap_or_default();
    let text = |name: &str| {
        html! {
            label for=(name) { (name) }
            input id=(name) name=(name) type="text" value=(chosen(name)) placeholder="any";
            (field_error(error, name))
        }
    };
    let body = html! {
        form.filters method="get" action="/ui/spend" {
            div {
                label for="group_by" { "group by" }
                select id="group_by" name="group_by" {
                    @for g in GroupBy::ALL {
                        option value=(g.as_str()) selected[group_by == g.as_str()] { (g.as_str()) }
                    }
                }
                (field_error(error, "group_by"))
            }
            div {
                label for="bucket" { "bucket" }
                select id="bucket" name="bucket" {
                    @for b in [Bucket::Hour, Bucket::Day] {
                        option value=(b.as_str()) selected[chosen("bucket") == b.as_str()] { (b.as_str()) }
                    }
                }
                (field_error(error, "bucket"))
            }
            div { (text("key_id")) }
            div { (text("team_id")) }
            div { (text("model")) }
            div { (text("deployment")) }
            button type="submit" { "Show" }
        }
        (form_error(error, &SPEND_FIELDS))
        @if let Some(a) = answer {
            p.hint {
                "Spend per " (a["group_by"].as_str().unwrap_or_default())
                " from " (minute(&a["start_time"]))
                " to " (minute(&a["end_time"]))
                ", by the " (a["bucket"].as_str().unwrap_or_default()) "."
                @if let Some(b) = budget {
                    " Cumulative"
                    @if b.clipped {
                        " from the chart's start: the current budget period began earlier than a chart by the "
                        (a["bucket"].as_str().unwrap_or_default())
                        " reaches (choose day to see it whole), so spend before the chart is not in the line"
                    } @else if b.period_start.is_some() { " over the current budget period" }
                    ", against the " (b.scope) "'s budget of " (usd(b.max))
                    @if let Some(d) = &b.duration { " (" (d) ")" }
                    @if let Some(r) = &b.resets_at { ", which resets at " (r) }
                    "."
                }
            }
        }
        @if let Some(n) = note { p.error role="alert" { (n) } }
        @if let Some(svg) = chart { div.chart { (trusted(svg)) } }
        @if answer.is_some() && series.is_empty() {
            p.muted { "No requests in this range." }
        }
        @if !series.is_empty() {
            h2 { "Totals" }
            table {
                thead { tr { th { (group_by) } th.num { "requests" } th.num { "spend" } th { } } }
                tbody {
                    @for s in &series {
                        tr {
                            td { (series_label(s, group_by)) }
                            td.num { (s["requests"].as_u64().unwrap_or(0)) }
                            td.num { (usd(s["spend"].as_f64().unwrap_or(0.0))) }
                            td { (log_link(s, group_by, params)) }
                        }
                    }
                    tr {
                        th { "all" }
                        th.num { (series.iter().map(|s| s["requests"].as_u64().unwrap_or(0)).sum::<u64>()) }
                        th.num { (usd(series.iter().map(|s| s["spend"].as_f64().unwrap_or(0.0)).sum::<f64>())) }
                        th { }
                    }
                }
            }
        }
    };
    let mut res = page("Spend", Nav::Spend, session, html! {}, body);
    if let Some(e) = error
        && (e.status.is_client_error() || e.status.is_server_error())
    {
        *res.status_mut() = e.status;
    }
    res
}

/// An RFC 3339 time of an answer, to the minute (UTC).
fn minute(v: &Value) -> String {
    match v.as_str().map(|s| s.parse::<Timestamp>()) {
        Some(Ok(t)) => t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
        _ => v.as_str().unwrap_or_default().to_owned(),
    }
}

/// A series' name as the page shows it.
fn series_label(s: &Value, group_by: &str) -> String {
    match (s["kind"].as_str(), s["name"].as_str()) {
        (Some("value"), Some(name)) => name.to_owned(),
        (Some("other"), _) => "(all others)".to_owned(),
        _ => format!("(no {group_by})"),
    }
}

/// A link to the request log of a series' group, when the log can filter by it.
fn log_link(s: &Value, group_by: &str, params: &[(String, String)]) -> Markup {
    let field = match group_by {
        "key" => "key_id",
        "team" => "team_id",
        "model" => "model",
        _ => return html! {},
    };
    let (Some("value"), Some(name)) = (s["kind"].as_str(), s["name"].as_str()) else {
        return html! {};
    };
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| ["key_id", "team_id", "model"].contains(&k.as_str()) && k != field)
        .cloned()
        .collect();
    pairs.push((field.to_owned(), name.to_owned()));
    html! { a href=(url("/ui/logs", &pairs)) { "requests" } }
}

/// The chart (SVG) of an answer of `/spend/series`.
fn draw(answer: &Value, budget: Option<&BudgetLine>) -> Result<String, String> {
    let parse = |name: &str| -> Result<Timestamp, String> {
        answer[name]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("the answer has no `{name}`"))
    };
    let bucket = answer["bucket"]
        .as_str()
        .and_then(Bucket::parse)
        .ok_or("the answer has no `bucket`")?;
    let range = SeriesQuery::new(
        GroupBy::Key,
        bucket,
        parse("start_time")?,
        parse("end_time")?,
    );
    let (first, buckets) = range.buckets().map_err(|e| e.to_string())?;
    let step = bucket.micros() / 1_000_000;
    let group_by = answer["group_by"].as_str().unwrap_or_default();
    let mut lines = Vec::new();
    for s in answer["series"].as_array().into_iter().flatten() {
        let mut values = vec![0.0; buckets];
        for p in s["points"].as_array().into_iter().flatten() {
            let at: Timestamp = p["start"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .ok_or("a point has no `start`")?;
            let i = (at.as_second() - first.as_second()) / step;
            if let Some(v) = usize::try_from(i).ok().and_then(|i| values.get_mut(i)) {
                *v += p["spend"].as_f64().unwrap_or(0.0);
            }
        }
        if budget.is_some() {
            let mut sum = 0.0;
            for v in &mut values {
                sum += *v;
                *v = sum;
            }
        }
        lines.push(Line {
            label: series_label(s, group_by),
            values,
        });
    }
    let chart = Chart {
        first: first.as_second(),
        step,
        buckets,
        hourly: bucket == Bucket::Hour,
        lines,
        budget: budget.map(|b| b.max),
    };
    chart.svg()
}

/// One line of the chart: its legend and one value (USD) per bucket.
struct Line {
    label: String,
    values: Vec<f64>,
}

/// A chart of spend over time.
struct Chart {
    /// The first bucket's start, in seconds since the epoch.
    first: i64,
    /// A bucket's length in seconds.
    step: i64,
    buckets: usize,
    hourly: bool,
    lines: Vec<Line>,
    /// The budget (USD), drawn as a horizontal line labelled "budget";
    /// the lines are then cumulative.
    budget: Option<f64>,
}

/// The lines' colours, in legend order (Tableau's 10, without its red).
const COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The budget line's colour.
const BUDGET: RGBColor = RGBColor(214, 39, 40);

impl Chart {
    /// The chart as an SVG document (see the [module docs](self)).
    fn svg(&self) -> Result<String, String> {
        let mut out = String::new();
        self.draw(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn draw(&self, out: &mut String) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(out, (960, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        // x: the buckets' indexes (ticks fall on whole hours or days).
        let n = self.buckets.max(1) as i64;
        let top = self
            .lines
            .iter()
            .flat_map(|l| l.values.iter().copied())
            .chain(self.budget)
            .fold(0.0_f64, f64::max);
        let y1 = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .margin(16)
            .margin_right(48)
            .x_label_area_size(48)
            .y_label_area_size(84)
            .build_cartesian_2d(0..n, 0.0..y1)?;
        let (first, step, hourly) = (self.first, self.step, self.hourly);
        let x_label = move |i: &i64| {
            let t = Timestamp::from_second(first + step * i).unwrap_or(Timestamp::UNIX_EPOCH);
            t.strftime(if hourly { "%m-%d %H:%M" } else { "%Y-%m-%d" })
                .to_string()
        };
        let y_label = |v: &f64| usd(*v);
        let y_desc = match (self.budget.is_some(), hourly) {
            (true, _) => "cumulative spend (USD)",
            (false, true) => "spend per hour (USD)",
            (false, false) => "spend per day (USD)",
        };
        chart
            .configure_mesh()
            .x_labels(10)
            .y_labels(8)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .x_desc("time (UTC)")
            .y_desc(y_desc)
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.15))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        for (i, line) in self.lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points = line.values.iter().enumerate().map(|(j, v)| (j as i64, *v));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)).point_size(2))?
                .label(line.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        if let Some(b) = self.budget {
            chart
                .draw_series(LineSeries::new([(0, b), (n, b)], BUDGET.stroke_width(2)))?
                .label("budget")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BUDGET.stroke_width(2)));
            chart.draw_series(std::iter::once(Text::new(
                format!("budget {}", usd(b)),
                (n, b),
                ("sans-serif", 13)
                    .into_font()
                    .color(&BUDGET)
                    .pos(Pos::new(HPos::Right, VPos::Bottom)),
            )))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// Records on one page of the log.
const LOG_PAGE: usize = 50;

const LOG_FIELDS: [&str; 5] = ["key_id", "team_id", "model", "start_time", "end_time"];

/// `GET /ui/logs`.
async fn logs(
    State(console): State<Console>,
    Extension(session): Extension<SessionInfo>,
    Query(params): Params,
) -> Response {
    let params = given(params);
    let mut query = params.clone();
    query.push(("limit".to_owned(), LOG_PAGE.to_string()));
    let (answer, error) = match console.admin_get(&url("/spend/logs", &query)).await {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let error = error.as_ref();
    let chosen = |name: &str| get_param(&params, name).unwrap_or_default();
    let filters: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "cursor")
        .cloned()
        .collect();
    let records = answer
        .as_ref()
        .and_then(|a| a["data"].as_array())
        .cloned()
        .unwrap_or_default();
    let next = answer
        .as_ref()
        .and_then(|a| a["next_cursor"].as_str())
        .map(|c| {
            let mut pairs = filters.clone();
            pairs.push(("cursor".to_owned(), c.to_owned()));
            url("/ui/logs", &pairs)
        });
    let text = |name: &str, placeholder: &str| {
        html! {
            div {
                label for=(name) { (name) }
                input id=(name) name=(name) type="text" value=(chosen(name)) placeholder=(placeholder);
                (field_error(error, name))
            }
        }
    };
    let body = html! {
        form.filters method="get" action="/ui/logs" {
            (text("key_id", "any"))
            (text("team_id", "any"))
            (text("model", "any"))
            (text("start_time", "2026-05-01T00:00:00Z"))
            (text("end_time", "2026-05-02T00:00:00Z"))
            button type="submit" { "Show" }
        }
        (form_error(error, &LOG_FIELDS))
        @if answer.is_some() {
            @if records.is_empty() {
                p.muted { "No requests." }
            } @else {
                table {
                    thead {
                        tr {
                            th { "time (UTC)" } th { "request id" } th { "key" } th { "team" }
                            th { "model" } th { "deployment" } th.num { "status" }
                            th.num { "tokens in / out" } th.num { "cost" } th.num { "latency" }
                        }
                    }
                    tbody {
                        @for r in &records { (log_row(r)) }
                    }
                }
            }
            nav.pages {
                @if get_param(&params, "cursor").is_some() {
                    a href=(url("/ui/logs", &filters)) { "Newest" }
                }
                @if let Some(next) = &next {
                    a href=(next) rel="next" { "Older" }
                }
            }
        }
    };
    let mut res = page("Request log", Nav::Logs, &session, html! {}, body);
    if let Some(e) = error
        && (e.status.is_client_error() || e.status.is_server_error())
    {
        *res.status_mut() = e.status;
    }
    res
}

fn log_row(r: &Value) -> Markup {
    let text = |name: &str| r[name].as_str().unwrap_or_default().to_owned();
    let time = r["start_time"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    let key = text("key_id");
    let team = text("team_id");
    html! {
        tr data-request-id=(text("request_id")) {
            td.mono { (time) }
            td.mono { (text("request_id")) }
            td.mono {
                @if !key.is_empty() { a href={ "/ui/keys/" (super::keys::segment(&key)) } { (key) } }
            }
            td { (team) }
            td { (text("model")) }
            td { (text("deployment")) }
            td.num { (r["status"].as_u64().unwrap_or(0)) }
            td.num {
                (r["prompt_tokens"].as_u64().unwrap_or(0)) " / " (r["completion_tokens"].as_u64().unwrap_or(0))
                @if r["tokens_estimated"].as_bool() == Some(true) { " (estimated)" }
            }
            td.num { (usd(r["spend"].as_f64().unwrap_or(0.0))) }
            td.num { (format!("{:.0} ms", r["latency_ms"].as_f64().unwrap_or(0.0))) }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use serde_json::json;

    use super::super::testing::{Browser, MASTER};
    use super::*;
    use crate::admin::SpendView;
    use crate::budget::{Ledger, MemorySpendStore, SpendRecord, SpendStore};
    use crate::keys::{Keyring, MemoryStore};

    #[tokio::test]
    async fn a_budget_period_longer_than_the_chart_reaches_is_said() {
        let session = SessionInfo { csrf: "t".into() };
        let answer = json!({
            "group_by": "model", "bucket": "hour", "series": [],
            "start_time": "2026-01-01T00:00:00Z", "end_time": "2026-02-11T00:00:00Z",
        });
        let mut line = BudgetLine {
            scope: "key",
            max: 10.0,
            duration: Some("60d".into()),
            period_start: Some(Timestamp::from_second(1_764_000_000).unwrap()),
            resets_at: None,
            clipped: true,
        };
        let text = |line: &BudgetLine| {
            let res = spend_page(&session, &[], Some(&answer), None, Some(line));
            async move {
                let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                    .await
                    .unwrap();
                String::from_utf8(bytes.to_vec()).unwrap()
            }
        };
        let clipped = text(&line).await;
        assert!(
            clipped.contains("began earlier than a chart by the hour"),
            "{clipped}"
        );
        assert!(!clipped.contains("over the current budget period"));
        line.clipped = false;
        let whole = text(&line).await;
        assert!(whole.contains("over the current budget period"), "{whole}");
        assert!(!whole.contains("began earlier"));
    }

    async fn browser(store: Arc<MemorySpendStore>) -> Browser {
        let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        let admin = crate::admin::router_with_spend(
            keyring,
            MASTER,
            SpendView {
                store: Some(store),
                ledger: Some(Arc::new(Ledger::default())),
                global: None,
            },
        );
        Browser::logged_in_over(admin).await
    }

    fn record(
        id: &str,
        key: &str,
        model: &str,
        deployment: Option<&str>,
        cost: u64,
        ago: SignedDuration,
    ) -> SpendRecord {
        let mut r = SpendRecord::new(id, model, Timestamp::now().checked_sub(ago).unwrap());
        r.key_id = Some(key.into());
        r.deployment = deployment.map(Into::into);
        r.cost = cost;
        r.status = if deployment.is_some() { 200 } else { 402 };
        r
    }

    /// The page's inline SVG.
    fn svg(body: &str) -> &str {
        let start = body.find("<svg").expect("no chart");
        let end = body[start..].find("</svg>").expect("an unclosed chart");
        &body[start..start + end + "</svg>".len()]
    }

    /// The lines (`<polyline>`) drawn in `colour`: its line and its legend.
    fn lines_in(svg: &str, colour: RGBColor) -> usize {
        let stroke = format!(
            "stroke=\"#{:02X}{:02X}{:02X}\"",
            colour.0, colour.1, colour.2
        );
        svg.lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .count()
    }

    #[tokio::test]
    async fn the_chart_draws_a_line_per_group_and_the_budget_of_a_key_that_has_one() {
        let store = Arc::new(MemorySpendStore::new());
        let b = browser(store.clone()).await;
        let with_budget = b
            .admin(
                "POST",
                "/key/generate",
                json!({"max_budget": 5, "budget_duration": "total"}),
            )
            .await["key_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let without = b.admin("POST", "/key/generate", json!({})).await["key_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let minutes = SignedDuration::from_mins;
        store
            .write(vec![
                record("r1", &with_budget, "m-a", Some("d1"), 600_000, minutes(90)),
                record("r2", &with_budget, "m-a", Some("d1"), 400_000, minutes(30)),
                record(
                    "r3",
                    &with_budget,
                    "<b>m-x</b>",
                    Some("d1"),
                    500_000,
                    minutes(30),
                ),
                record("r4", &without, "m-b", Some("d2"), 2_000_000, minutes(30)),
                // A budget's refusal: no deployment, nothing charged.
                record("r5", &without, "m-b", None, 0, minutes(20)),
            ])
            .await
            .unwrap();

        let all = b.get("/ui/spend?group_by=model&bucket=hour").await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.body);
        let chart = svg(&all.body);
        // m-b ($2), m-a ($1), <b>m-x</b> ($0.50): one colour each, in order.
        for (i, colour) in COLOURS.iter().take(3).enumerate() {
            assert!(lines_in(chart, *colour) >= 1, "no line {i}: {chart}");
        }
        assert_eq!(lines_in(chart, COLOURS[3]), 0, "a fourth group: {chart}");
        assert_eq!(lines_in(chart, BUDGET), 0, "a budget line unfiltered");
        assert!(chart.contains("spend per hour (USD)") && chart.contains("time (UTC)"));
        // The CSP allows no inline style, and the chart carries no script.
        assert!(!all.body.contains("style="), "a style attribute");
        assert!(!all.body.contains("<style"), "a style element");
        assert!(!chart.contains("<script"), "a script in the chart");
        // Names from records are escaped, in the chart and in the table.
        assert!(!all.body.contains("<b>m-x</b>"), "unescaped");
        assert!(chart.contains("&lt;b&gt;m-x&lt;/b&gt;"), "{chart}");
        assert!(all.body.contains("<td>&lt;b&gt;m-x&lt;/b&gt;</td>"));
        assert!(all.body.contains("$2.00") && all.body.contains("$3.50"));

        // By deployment: the refusal has none.
        let by_deployment = b.get("/ui/spend?group_by=deployment&bucket=day").await;
        assert!(by_deployment.body.contains("(no deployment)"));

        // Filtered to the key with a budget: its line, cumulative.
        let key = b
            .get(&format!("/ui/spend?key_id={with_budget}&bucket=hour"))
            .await;
        assert_eq!(key.status, StatusCode::OK, "{}", key.body);
        let chart = svg(&key.body);
        assert!(lines_in(chart, BUDGET) >= 1, "no budget line: {chart}");
        assert!(chart.contains("budget $5.00"), "{chart}");
        assert!(chart.contains("cumulative spend (USD)"));
        assert_eq!(lines_in(chart, COLOURS[2]), 0, "only the key's two models");
        assert!(
            key.body.contains("key&#39;s budget of $5.00")
                || key.body.contains("key's budget of $5.00")
        );
        // A team's budget, over its current (monthly) period.
        b.admin(
            "POST",
            "/team/new",
            json!({"team_id": "t1", "max_budget": 10, "budget_duration": "monthly"}),
        )
        .await;
        let month_start = || {
            let now = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
            let first = now.first_of_month().unwrap().start_of_day().unwrap();
            format!("from {}", first.strftime("%Y-%m-%d %H:%M UTC"))
        };
        let before = month_start();
        let team = b.get("/ui/spend?team_id=t1&bucket=hour").await;
        let after = month_start();
        assert!(
            team.body.contains(&before) || team.body.contains(&after),
            "not from the period's start ({before}): {}",
            team.body
        );
        assert_eq!(team.status, StatusCode::OK, "{}", team.body);
        assert!(
            lines_in(svg(&team.body), BUDGET) >= 1,
            "no team budget line"
        );
        assert!(svg(&team.body).contains("budget $10.00"));
        assert!(team.body.contains("over the current budget period"));
        // The other key has no budget: no line.
        let other = b
            .get(&format!("/ui/spend?key_id={without}&bucket=hour"))
            .await;
        assert_eq!(lines_in(svg(&other.body), BUDGET), 0);
        assert!(other.body.contains("m-b"));
    }

    #[tokio::test]
    async fn bad_filters_are_shown_next_to_their_field() {
        let b = browser(Arc::new(MemorySpendStore::new())).await;
        for (uri, field) in [
            ("/ui/spend?bucket=minute", "bucket"),
            ("/ui/spend?group_by=user", "group_by"),
            ("/ui/spend?key_id=no-such-key", "key_id"),
            ("/ui/logs?start_time=yesterday", "start_time"),
        ] {
            let page = b.get(uri).await;
            assert!(page.status.is_client_error(), "{uri}: {}", page.status);
            assert!(
                page.body.contains(&format!("data-field=\"{field}\"")),
                "{uri}: {}",
                page.body
            );
            assert!(!page.body.contains("<svg"), "{uri}: a chart");
        }
        // An empty field of the form is "any".
        let page = b
            .get("/ui/logs?key_id=&team_id=&model=&start_time=&end_time=")
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("No requests."));
    }

    #[tokio::test]
    async fn the_log_shows_records_newest_first_and_pages_through_them() {
        let store = Arc::new(MemorySpendStore::new());
        let b = browser(store.clone()).await;
        let records = (0..LOG_PAGE as i64 + 5)
            .map(|i| {
                let mut r = record(
                    &format!("req-{i:03}"),
                    "k1",
                    "gpt-4o-mini",
                    Some("mock"),
                    1_500,
                    SignedDuration::from_secs(1_000 - i),
                );
                r.prompt_tokens = 12;
                r.completion_tokens = 34;
                r.latency_us = 250_000;
                r
            })
            .chain([record(
                "someone-else",
                "k2",
                "gpt-4o-mini",
                Some("mock"),
                1,
                SignedDuration::from_secs(1),
            )])
            .collect();
        store.write(records).await.unwrap();
        let first = b.get("/ui/logs?key_id=k1").await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        let rows = |body: &str| -> Vec<String> {
            body.split("data-request-id=\"")
                .skip(1)
                .map(|s| s[..s.find('"').unwrap()].to_owned())
                .collect()
        };
        let ids = rows(&first.body);
        assert_eq!(ids.len(), LOG_PAGE);
        assert_eq!(ids[0], format!("req-{:03}", LOG_PAGE + 4), "newest first");
        for cell in ["12 / 34", "$0.0015", "250 ms", "mock", "gpt-4o-mini"] {
            assert!(first.body.contains(cell), "{cell} missing");
        }
        let at = first.body.find("rel=\"next\"").expect("no next page");
        let href_at = first.body[..at].rfind("href=\"").unwrap() + "href=\"".len();
        let href = &first.body[href_at..];
        let next = href[..href.find('"').unwrap()].replace("&amp;", "&");
        assert!(next.starts_with("/ui/logs?key_id=k1&cursor="), "{next}");
        let second = b.get(&next).await;
        assert_eq!(second.status, StatusCode::OK, "{}", second.body);
        let ids = rows(&second.body);
        assert_eq!(ids, ["req-004", "req-003", "req-002", "req-001", "req-000"]);
        assert!(
            !second.body.contains("rel=\"next\""),
            "a page after the last"
        );
        assert!(!second.body.contains("someone-else"));
        assert!(
            second.body.contains("href=\"/ui/logs?key_id=k1\""),
            "no way back"
        );
    }

    #[test]
    fn a_period_starts_one_length_before_it_resets() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let reset = at("2026-12-01T00:00:00Z");
        for (duration, start) in [
            ("monthly", Some("2026-11-01T00:00:00Z")),
            ("daily", Some("2026-11-30T00:00:00Z")),
            ("weekly", Some("2026-11-24T00:00:00Z")),
            ("2h", Some("2026-11-30T22:00:00Z")),
            ("3mo", Some("2026-09-01T00:00:00Z")),
            ("total", None),
            ("nonsense", None),
        ] {
            assert_eq!(period_start(duration, reset), start.map(at), "{duration}");
        }
    }
}
