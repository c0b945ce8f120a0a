//! Spend over time: the cost, requests and tokens of the records per group
//! (key, team, model or deployment) and per time bucket (an hour or a day,
//! UTC), summed by the store itself ([`SpendStore::series`]).
//!
//! The answer is bounded whatever the history's size: a query covers at
//! most [`MAX_BUCKETS`] buckets (a longer range is refused), and names at
//! most [`MAX_SERIES`] groups, the costliest over the range; every other
//! group's records are summed into one more series, [`SeriesName::Other`].
//! Records without a value for the grouped field (no team; no deployment,
//! as a budget's refusal has none) are a group of their own,
//! [`SeriesName::Missing`], ranked like any other. The SQL stores answer
//! with two `GROUP BY` queries (the ranking of the groups, then the sums
//! per group and bucket), so no record is paged through memory.
//!
//! Buckets are aligned to the hour or to midnight UTC: the first one is
//! the one containing the query's `start` (records before `start` are not
//! counted in it), and the range's `end` is exclusive. A series has a
//! point only for the buckets in which it has records (oldest first): a
//! bucket without one is zero.
//!
//! ```
//! use tollgate::budget::{Bucket, GroupBy, MemorySpendStore, SeriesName, SeriesQuery, SpendRecord, SpendStore, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = MemorySpendStore::new();
//! let t0: Timestamp = "2026-05-01T00:00:00Z".parse().unwrap();
//! let mut r = SpendRecord::new("req-1", "gpt-4o", t0);
//! r.cost = 1_500; // micro-USD
//! store.write(vec![r.clone(), SpendRecord { request_id: "req-2".into(), cost: 500, ..r }]).await.unwrap();
//! let end: Timestamp = "2026-05-02T00:00:00Z".parse().unwrap();
//! let series = store.series(SeriesQuery::new(GroupBy::Model, Bucket::Hour, t0, end)).await.unwrap();
//! assert_eq!(series[0].name, SeriesName::Value("gpt-4o".into()));
//! assert_eq!((series[0].points[0].cost, series[0].points[0].requests), (2_000, 2));
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use jiff::Timestamp;

use super::{SpendRecord, micros};
use crate::budget::Micros;

#[cfg(doc)]
use super::SpendStore;

/// The most buckets one query may cover.
pub const MAX_BUCKETS: usize = 1000;

/// The most groups named in one answer (the costliest); the others are
/// summed into [`SeriesName::Other`].
pub const MAX_SERIES: usize = 8;

/// What a series groups records by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// The key's public id.
    Key,
    /// The key's team.
    Team,
    /// The model the client asked for.
    Model,
    /// The deployment that served.
    Deployment,
}

impl GroupBy {
    /// Every grouping.
    pub const ALL: [GroupBy; 4] = [
        GroupBy::Key,
        GroupBy::Team,
        GroupBy::Model,
        GroupBy::Deployment,
    ];

    /// Its name in the admin API: `key`, `team`, `model`, `deployment`.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
        }
    }

    /// Reads a name made by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == name)
    }

    /// The record's column (for the SQL stores).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "key_id",
            GroupBy::Team => "team_id",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
        }
    }

    fn of(self, r: &SpendRecord) -> Option<&str> {
        match self {
            GroupBy::Key => r.key_id.as_deref(),
            GroupBy::Team => r.team_id.as_deref(),
            GroupBy::Model => Some(&r.model),
            GroupBy::Deployment => r.deployment.as_deref(),
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a bucket is: an hour, or a day (both aligned in UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// An hour from `hh:00:00Z`.
    Hour,
    /// A day from midnight UTC.
    Day,
}

impl Bucket {
    /// Its name in the admin API: `hour`, `day`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    /// Reads a name made by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<Bucket> {
        [Bucket::Hour, Bucket::Day]
            .into_iter()
            .find(|b| b.as_str() == name)
    }

    /// Its length in microseconds.
    pub fn micros(self) -> i64 {
        match self {
            Bucket::Hour => 3_600_000_000,
            Bucket::Day => 86_400_000_000,
        }
    }

    /// The start of the bucket containing `t`.
    pub fn floor(self, t: Timestamp) -> Timestamp {
        let us = micros(t);
        Timestamp::from_microsecond(us - us.rem_euclid(self.micros())).unwrap_or(t)
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which records to sum, and how: those started in `[start, end)` that
/// match every filter given, per [`group_by`](Self::group_by) and
/// [`bucket`](Self::bucket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesQuery {
    /// What each series is.
    pub group_by: GroupBy,
    /// How long each point is.
    pub bucket: Bucket,
    /// Only requests started at or after this instant.
    pub start: Timestamp,
    /// Only requests started before this instant.
    pub end: Timestamp,
    /// Only this key's.
    pub key_id: Option<String>,
    /// Only this team's.
    pub team_id: Option<String>,
    /// Only requests that asked for this model.
    pub model: Option<String>,
    /// Only requests this deployment served.
    pub deployment: Option<String>,
}

/// A [`SeriesQuery`] whose range is empty or covers more than
/// [`MAX_BUCKETS`] buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesRangeError(String);

impl fmt::Display for SeriesRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SeriesRangeError {}

impl SeriesQuery {
    /// Every record of `[start, end)`, per `group_by` and `bucket`.
    pub fn new(group_by: GroupBy, bucket: Bucket, start: Timestamp, end: Timestamp) -> Self {
        SeriesQuery {
            group_by,
            bucket,
            start,
            end,
            key_id: None,
            team_id: None,
            model: None,
            deployment: None,
        }
    }

    /// The buckets the range covers: the first one's start and how many.
    /// Refuses an empty range (`end` not after `start`) and one of more
    /// than [`MAX_BUCKETS`] buckets.
    pub fn buckets(&self) -> Result<(Timestamp, usize), SeriesRangeError> {
        if self.end <= self.start {
            return Err(SeriesRangeError(format!(
                "the range is empty: its end ({}) must be later than its start ({})",
                self.end, self.start
            )));
        }
        let first = self.bucket.floor(self.start);
        let w = i128::from(self.bucket.micros());
        let span = i128::from(micros(self.end)) - i128::from(micros(first));
        let n = (span + w - 1) / w;
        if n > MAX_BUCKETS as i128 {
            return Err(SeriesRangeError(format!(
                "the range covers {n} buckets of one {}; at most {MAX_BUCKETS} are answered: shorten it, or use `day` buckets",
                self.bucket
            )));
        }
        Ok((first, n as usize))
    }

    /// Whether `r` is counted (its start in the range, every filter matches).
    pub fn matches(&self, r: &SpendRecord) -> bool {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        r.start >= self.start
            && r.start < self.end
            && eq(&self.key_id, r.key_id.as_ref())
            && eq(&self.team_id, r.team_id.as_ref())
            && eq(&self.model, Some(&r.model))
            && eq(&self.deployment, r.deployment.as_ref())
    }
}

/// Whose records a [`Series`] sums.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeriesName {
    /// The records whose grouped field has this value.
    Value(String),
    /// The records without a value for it (no team; no deployment).
    Missing,
    /// The records of every group beyond the [`MAX_SERIES`] costliest.
    Other,
}

/// The records of one bucket of a [`Series`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeriesPoint {
    /// The bucket's start.
    pub start: Timestamp,
    /// Their cost, in micro-USD.
    pub cost: Micros,
    /// How many records (requests).
    pub requests: u64,
    /// Their input tokens.
    pub prompt_tokens: u64,
    /// Their output tokens.
    pub completion_tokens: u64,
}

/// One group's spend over time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    /// Whose records.
    pub name: SeriesName,
    /// One point per bucket that has records, oldest first.
    pub points: Vec<SeriesPoint>,
}

impl Series {
    /// The cost of every point.
    pub fn cost(&self) -> Micros {
        self.points.iter().map(|p| p.cost).sum()
    }
}

/// One summed row of a store: a group (by rank), a bucket, the sums.
pub(crate) struct Row {
    pub(crate) name: SeriesName,
    pub(crate) bucket_us: i64,
    pub(crate) cost: Micros,
    pub(crate) requests: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

/// The answer from `ranked` (the named groups, costliest first: a `None`
/// is [`SeriesName::Missing`]) and the store's summed rows: one series
/// per ranked group, in that order, then [`SeriesName::Other`] if it has
/// rows; points oldest first, rows of the same bucket added.
pub(crate) fn assemble(
    ranked: &[Option<String>],
    rows: impl IntoIterator<Item = Row>,
) -> Result<Vec<Series>, String> {
    let mut order: Vec<SeriesName> = ranked
        .iter()
        .map(|n| n.clone().map_or(SeriesName::Missing, SeriesName::Value))
        .collect();
    let mut points: HashMap<SeriesName, BTreeMap<i64, SeriesPoint>> = HashMap::new();
    for r in rows {
        if r.name == SeriesName::Other && !order.contains(&SeriesName::Other) {
            order.push(SeriesName::Other);
        }
        let start = Timestamp::from_microsecond(r.bucket_us).map_err(|e| e.to_string())?;
        let p = points
            .entry(r.name)
            .or_default()
            .entry(r.bucket_us)
            .or_insert(SeriesPoint {
                start,
                cost: 0,
                requests: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
            });
        p.cost = p.cost.saturating_add(r.cost);
        p.requests = p.requests.saturating_add(r.requests);
        p.prompt_tokens = p.prompt_tokens.saturating_add(r.prompt_tokens);
        p.completion_tokens = p.completion_tokens.saturating_add(r.completion_tokens);
    }
    Ok(order
        .into_iter()
        .map(|name| Series {
            points: points
                .remove(&name)
                .map(|m| m.into_values().collect())
                .unwrap_or_default(),
            name,
        })
        .collect())
}

/// The memory store's answer: every record of the range read once.
pub(crate) fn from_records<'a>(
    q: &SeriesQuery,
    records: impl IntoIterator<Item = &'a SpendRecord>,
) -> Result<Vec<Series>, String> {
    let (first, _) = q.buckets().map_err(|e| e.to_string())?;
    let (base, w) = (micros(first), q.bucket.micros());
    let mut sums: BTreeMap<(Option<&str>, i64), Row> = BTreeMap::new();
    let mut totals: HashMap<Option<&str>, Micros> = HashMap::new();
    for r in records.into_iter().filter(|r| q.matches(r)) {
        let group = q.group_by.of(r);
        let bucket_us = base + (micros(r.start) - base) / w * w;
        let row = sums.entry((group, bucket_us)).or_insert(Row {
            name: SeriesName::Other,
            bucket_us,
            cost: 0,
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
        });
        row.cost = row.cost.saturating_add(r.cost);
        row.requests += 1;
        row.prompt_tokens = row.prompt_tokens.saturating_add(r.prompt_tokens);
        row.completion_tokens = row.completion_tokens.saturating_add(r.completion_tokens);
        *totals.entry(group).or_insert(0) += r.cost;
    }
    // Costliest first; on a tie, named groups before the missing one, by name.
    let mut ranked: Vec<(Option<&str>, Micros)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(a.0.is_none().cmp(&b.0.is_none()))
            .then(a.0.cmp(&b.0))
    });
    ranked.truncate(MAX_SERIES);
    let named: Vec<Option<String>> = ranked.iter().map(|g| g.0.map(str::to_owned)).collect();
    let rows = sums.into_iter().map(|((group, _), mut row)| {
        if ranked.iter().any(|g| g.0 == group) {
            row.name = group.map_or(SeriesName::Missing, |g| SeriesName::Value(g.to_owned()));
        }
        row
    });
    assemble(&named, rows)
}

/// The two queries of a SQL store, with placeholders `{mark}1`, … (`?`
/// for SQLite, `$` for PostgreSQL) and `collate` after the group's column
/// where names are ordered (PostgreSQL's `COLLATE "C"`: byte order, as
/// SQLite's and Rust's).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) struct SeriesSql<'a> {
    pub(crate) table: &'a str,
    pub(crate) mark: char,
    pub(crate) collate: &'a str,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl SeriesSql<'_> {
    /// `WHERE` over the range and the filters, its values pushed on `args`.
    fn filter(&self, q: &SeriesQuery, args: &mut Vec<super::PageArg>) -> String {
        use super::PageArg;
        let mark = self.mark;
        args.push(PageArg::Int(micros(q.start)));
        args.push(PageArg::Int(micros(q.end)));
        let mut sql = format!(
            " WHERE start_us >= {mark}{} AND start_us < {mark}{}",
            args.len() - 1,
            args.len()
        );
        for (column, value) in [
            ("key_id", &q.key_id),
            ("team_id", &q.team_id),
            ("model", &q.model),
            ("deployment", &q.deployment),
        ] {
            if let Some(v) = value {
                args.push(PageArg::Text(v.clone()));
                sql.push_str(&format!(" AND {column} = {mark}{}", args.len()));
            }
        }
        sql
    }

    /// The groups' ranking: `(name or NULL, cost)`, costliest first, one
    /// more than [`MAX_SERIES`] (to know whether others follow).
    pub(crate) fn rank(&self, q: &SeriesQuery) -> (String, Vec<super::PageArg>) {
        let mut args = Vec::new();
        let col = q.group_by.column();
        let filter = self.filter(q, &mut args);
        let sql = format!(
            "SELECT {col}, CAST(SUM(cost) AS BIGINT) FROM {table}{filter} GROUP BY {col} \
             ORDER BY SUM(cost) DESC, ({col} IS NULL), {col}{collate} LIMIT {limit}",
            table = self.table,
            collate = self.collate,
            limit = MAX_SERIES + 1,
        );
        (sql, args)
    }

    /// The sums per group and bucket: `(kind, name, bucket start, cost,
    /// requests, prompt tokens, completion tokens)`, where kind is 0 for a
    /// group in `named` (its value as name), 1 for the missing one (if in
    /// `named`), 2 for every other record (name NULL).
    pub(crate) fn sums(
        &self,
        q: &SeriesQuery,
        named: &[Option<String>],
        first: Timestamp,
    ) -> (String, Vec<super::PageArg>) {
        use super::PageArg;
        let mark = self.mark;
        let mut args = Vec::new();
        let col = q.group_by.column();
        let filter = self.filter(q, &mut args);
        let mut list = Vec::new();
        for n in named.iter().flatten() {
            args.push(PageArg::Text(n.clone()));
            list.push(format!("{mark}{}", args.len()));
        }
        let missing = if named.contains(&None) { 1 } else { 2 };
        let (kind, name) = if list.is_empty() {
            (
                format!("CASE WHEN {col} IS NULL THEN {missing} ELSE 2 END"),
                "CAST(NULL AS TEXT)".to_owned(),
            )
        } else {
            let list = list.join(", ");
            (
                format!(
                    "CASE WHEN {col} IS NULL THEN {missing} WHEN {col} IN ({list}) THEN 0 ELSE 2 END"
                ),
                format!("CASE WHEN {col} IN ({list}) THEN {col} END"),
            )
        };
        args.push(PageArg::Int(micros(first)));
        let base = format!("CAST({mark}{} AS BIGINT)", args.len());
        args.push(PageArg::Int(q.bucket.micros()));
        let w = format!("CAST({mark}{} AS BIGINT)", args.len());
        let sql = format!(
            "SELECT {kind}, {name}, {base} + (start_us - {base}) / {w} * {w}, \
             CAST(SUM(cost) AS BIGINT), COUNT(*), CAST(SUM(prompt_tokens) AS BIGINT), \
             CAST(SUM(completion_tokens) AS BIGINT) FROM {table}{filter} \
             GROUP BY 1, 2, 3 ORDER BY 1, 3",
            table = self.table,
        );
        (sql, args)
    }
}

/// The name of a row of [`SeriesSql::sums`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn row_name(kind: i64, name: Option<String>) -> Result<SeriesName, String> {
    match (kind, name) {
        (0, Some(n)) => Ok(SeriesName::Value(n)),
        (1, _) => Ok(SeriesName::Missing),
        (2, _) => Ok(SeriesName::Other),
        (k, n) => Err(format!("unexpected series row ({k}, {n:?})")),
    }
}

/// The named groups of a ranking's rows: at most [`MAX_SERIES`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn named(mut ranked: Vec<Option<String>>) -> Vec<Option<String>> {
    ranked.truncate(MAX_SERIES);
    ranked
}
