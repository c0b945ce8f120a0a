//! Spend records: one per client request, written in the background.
//!
//! The [`Budget`](super::Budget) layer, given a [`SpendWriter`]
//! ([`BudgetLayer::spend`](super::BudgetLayer::spend)), makes one
//! [`SpendRecord`] per request that reaches it: answered, failed upstream,
//! or refused by a budget (cost 0 and the refusal's status), with or
//! without any budget. It sits above `Fallback` and `Router`, so the
//! retries and fallbacks of one request make one record (with their count
//! in [`attempts`](SpendRecord::attempts)). A record is finished when the
//! answer's body settles (it ends, is cut, or is dropped by a client that
//! went away), or when the call fails; its cost is the one the settlement
//! charged, computed in one place ([`Settlement::settle`](super::Settlement::settle)).
//! Requests refused before the layer (401, 400, 403, 429 of the layers in
//! front of it) are not recorded: they never reach it, and cost nothing.
//!
//! The response path never waits for a record to be stored: the
//! [`SpendWriter`] hands it to a bounded queue with `try_send`, and a
//! background task writes the queue in batches, one transaction per batch,
//! into a [`SpendStore`]. When the queue is full, the record is dropped,
//! counted ([`SpendWriter::dropped`] and the metric
//! `tollgate_spend_records_dropped_total`) and reported by a `warn` log line
//! (at most one every 10 seconds, with the count). [`SpendWriter::flush`]
//! waits until everything queued before it is stored (the reference
//! gateway calls it on graceful shutdown).
//!
//! Stores: [`MemorySpendStore`] (tests, nothing survives a restart) and,
//! with the `sqlite` feature, [`SqliteSpendStore`] (the keys' database
//! file, table `spend`). The trait is small and object-safe, to be used as
//! `Arc<dyn SpendStore>`: write a batch atomically, read one page of a
//! filtered query by keyset pagination (newest first), sum the cost per
//! key, per team and overall since an instant ([`restore_ledger`] rebuilds
//! a ledger's spend in the current periods from it after a restart), and
//! sum spend over time per group and hour or day ([`series`]). A store
//! must answer a page in memory bounded by the page's size, and a series
//! in memory bounded by its buckets, whatever the history's size.
//!
//! ```
//! use std::sync::Arc;
//! use tollgate::budget::{MemorySpendStore, SpendQuery, SpendRecord, SpendStore, SpendWriter, Timestamp};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = Arc::new(MemorySpendStore::new());
//! let writer = SpendWriter::spawn(store.clone(), 10_000, 256);
//! for i in 0..3 {
//!     let mut r = SpendRecord::new(format!("req-{i}"), "gpt-4o", Timestamp::from_second(1_700_000_000 + i).unwrap());
//!     r.key_id = Some("k1".into());
//!     r.cost = 120;
//!     writer.record(r); // never waits
//! }
//! writer.flush().await;
//! let page = store.query(SpendQuery { key_id: Some("k1".into()), limit: 2, ..SpendQuery::default() }).await.unwrap();
//! assert_eq!(page.records[0].request_id, "req-2"); // newest first
//! let rest = store.query(SpendQuery { after: page.next, limit: 2, ..SpendQuery::default() }).await.unwrap();
//! assert_eq!((rest.records.len(), rest.next), (1, None));
//! assert_eq!(writer.dropped(), 0);
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use jiff::Timestamp;

use super::ledger::{Ledger, Micros, Scope};
use super::period::Period;
use super::usage::TokenUsage;
use crate::{Error, Served};

#[cfg(feature = "postgres")]
mod postgres;
pub mod series;
#[cfg(feature = "sqlite")]
mod sqlite;
mod writer;

#[cfg(feature = "postgres")]
pub use postgres::PostgresSpendStore;
pub use series::{
    Bucket, GroupBy, MAX_BUCKETS, MAX_SERIES, Series, SeriesName, SeriesPoint, SeriesQuery,
    SeriesRangeError,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteSpendStore;
pub use writer::SpendWriter;

/// The longest request id kept in a record (a longer client-sent
/// `x-request-id` is cut).
pub const MAX_REQUEST_ID: usize = 128;

/// What one client request cost, and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendRecord {
    /// The request's `x-request-id` (the client's, or the one the gateway
    /// set), at most [`MAX_REQUEST_ID`] visible ASCII characters.
    pub request_id: String,
    /// The public id of the key that called (never the key or its hash).
    pub key_id: Option<String>,
    /// The key's team.
    pub team_id: Option<String>,
    /// The key's user (its `user_id`).
    pub user_id: Option<String>,
    /// The end user the request named (`user`, or `metadata.user_id`).
    pub end_user: Option<String>,
    /// The model the client asked for.
    pub model: String,
    /// The model group that served (after fallbacks).
    pub model_group: Option<String>,
    /// The deployment (provider) that served.
    pub deployment: Option<String>,
    /// The upstream model name the deployment was asked for.
    pub served_model: Option<String>,
    /// Input tokens (reported by the upstream, or estimated).
    pub prompt_tokens: u64,
    /// Output tokens (reported, or estimated from what was streamed).
    pub completion_tokens: u64,
    /// True when the tokens are the gateway's estimate (no usage reported:
    /// a cut stream, a client that left, an upstream that reports none).
    pub estimated: bool,
    /// What was charged, in micro-USD.
    pub cost: Micros,
    /// The HTTP status the client got.
    pub status: u16,
    /// When the request reached the budget layer.
    pub start: Timestamp,
    /// From the start until the answer settled (its body ended, was cut or
    /// dropped), or the call failed, in microseconds.
    pub latency_us: u64,
    /// Upstream attempts made, over every retry and fallback (0: none, e.g.
    /// a budget refusal).
    pub attempts: u32,
}

impl SpendRecord {
    /// A record of a request to `model` started at `start`; everything
    /// else empty or zero.
    pub fn new(request_id: impl Into<String>, model: impl Into<String>, start: Timestamp) -> Self {
        SpendRecord {
            request_id: request_id.into(),
            key_id: None,
            team_id: None,
            user_id: None,
            end_user: None,
            model: model.into(),
            model_group: None,
            deployment: None,
            served_model: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            estimated: false,
            cost: 0,
            status: 0,
            start,
            latency_us: 0,
            attempts: 0,
        }
    }
}

/// Who a request's spend belongs to, for its record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spender {
    /// The key's public id.
    pub key_id: Option<String>,
    /// The key's team.
    pub team_id: Option<String>,
    /// The key's user.
    pub user_id: Option<String>,
    /// The end user the request named.
    pub end_user: Option<String>,
}

/// Where a page of records starts: after this record (opaque to clients,
/// see [`Cursor::encode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// The record's start, in microseconds since the Unix epoch.
    pub start_us: i64,
    /// The store's sequence number of the record (ties on `start_us`).
    pub seq: i64,
}

impl Cursor {
    /// The cursor as an opaque token for clients.
    pub fn encode(self) -> String {
        format!("{:x}.{:x}", self.start_us as u64, self.seq as u64)
    }

    /// Reads a token made by [`encode`](Self::encode).
    pub fn decode(token: &str) -> Option<Cursor> {
        let (a, b) = token.split_once('.')?;
        let start = u64::from_str_radix(a, 16).ok()? as i64;
        let seq = u64::from_str_radix(b, 16).ok()? as i64;
        Some(Cursor {
            start_us: start,
            seq,
        })
    }
}

/// Which records to read: every filter given must match. Pages are newest
/// first (by start, then by arrival).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpendQuery {
    /// Only this key's.
    pub key_id: Option<String>,
    /// Only this team's.
    pub team_id: Option<String>,
    /// Only this user's (the records of every key made for it).
    pub user_id: Option<String>,
    /// Only this end user's.
    pub end_user: Option<String>,
    /// Only the record of this request (its `x-request-id`; LiteLLM's
    /// `request_id`). A request retried by its client under the same id has
    /// one record per try.
    pub request_id: Option<String>,
    /// Only requests that asked for this model.
    pub model: Option<String>,
    /// Only requests started at or after this instant.
    pub start: Option<Timestamp>,
    /// Only requests started before this instant.
    pub end: Option<Timestamp>,
    /// The page after this cursor (`None`: the first page).
    pub after: Option<Cursor>,
    /// The most records in the page (0 is taken as 1).
    pub limit: usize,
}

impl SpendQuery {
    /// Whether `r` passes the filters (not the cursor).
    pub fn matches(&self, r: &SpendRecord) -> bool {
        let eq = |want: &Option<String>, have: Option<&String>| {
            want.as_ref().is_none_or(|w| have == Some(w))
        };
        eq(&self.key_id, r.key_id.as_ref())
            && eq(&self.team_id, r.team_id.as_ref())
            && eq(&self.user_id, r.user_id.as_ref())
            && eq(&self.end_user, r.end_user.as_ref())
            && eq(&self.request_id, Some(&r.request_id))
            && eq(&self.model, Some(&r.model))
            && self.start.is_none_or(|s| r.start >= s)
            && self.end.is_none_or(|e| r.start < e)
    }
}

/// One page of records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpendPage {
    /// The records, newest first.
    pub records: Vec<SpendRecord>,
    /// Where the next page starts (`None`: this was the last).
    pub next: Option<Cursor>,
}

/// Cost summed per key, per team and overall.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpendTotals {
    /// Per key id.
    pub keys: Vec<(String, Micros)>,
    /// Per team id.
    pub teams: Vec<(String, Micros)>,
    /// Per user id.
    pub users: Vec<(String, Micros)>,
    /// Per end user id.
    pub end_users: Vec<(String, Micros)>,
    /// Every request's.
    pub global: Micros,
}

/// A spend store failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendError {
    message: String,
    permanent: bool,
}

impl SpendError {
    /// An error with this description (never put a secret in it): a store
    /// that may work again later (the [`SpendWriter`] retries the batch).
    pub fn new(message: impl Into<String>) -> Self {
        SpendError {
            message: message.into(),
            permanent: false,
        }
    }

    /// An error that retrying cannot cure (the store refuses these records
    /// as they are): the [`SpendWriter`] counts the batch as lost.
    pub fn permanent(message: impl Into<String>) -> Self {
        SpendError {
            message: message.into(),
            permanent: true,
        }
    }

    /// Whether retrying cannot cure this error.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for SpendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpendError {}

/// A spend store's future: boxed, since stores are behind `dyn` and off the
/// response path.
pub type SpendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SpendError>> + Send + 'a>>;

/// Durable storage of spend records (see the [module docs](self)).
///
/// Object-safe: use it as `Arc<dyn SpendStore>`. Implementations for a
/// shared database (PostgreSQL) implement the same calls.
pub trait SpendStore: Send + Sync + 'static {
    /// Stores `batch` atomically (one transaction), in order.
    fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()>;
    /// Stores `batch` as [`write`](Self::write) does, at most once per
    /// `token`: the [`SpendWriter`] retries a failed batch with the same
    /// token, and a store that can tell a batch it already committed (whose
    /// answer was lost with the connection) skips it. The default forgets
    /// the token (fine for stores whose failed write never committed).
    fn write_once<'a>(&'a self, batch: &'a [SpendRecord], token: u128) -> SpendFuture<'a, ()> {
        let _ = token;
        self.write(batch.to_vec())
    }
    /// One page of `query`, newest first, in memory bounded by `query.limit`.
    fn query(&self, query: SpendQuery) -> SpendFuture<'_, SpendPage>;
    /// The cost of the requests started at or after `since` (`None`: ever),
    /// per key, per team and overall.
    fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals>;
    /// Spend over time: the records of `query`'s range summed per group and
    /// bucket by the store (an aggregation: memory bounded by the answer,
    /// at most [`MAX_SERIES`] + 1 series of [`MAX_BUCKETS`] points; see
    /// [`series`]). A range the query refuses
    /// ([`SeriesQuery::buckets`]) is a [permanent](SpendError::is_permanent)
    /// error. The default refuses every query, for a store that cannot sum
    /// (every store of this crate can).
    fn series(&self, query: SeriesQuery) -> SpendFuture<'_, Vec<Series>> {
        let _ = query;
        Box::pin(std::future::ready(Err(SpendError::permanent(
            "this spend store cannot sum spend over time",
        ))))
    }
}

impl<S: SpendStore + ?Sized> SpendStore for Arc<S> {
    fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
        (**self).write(batch)
    }
    fn write_once<'a>(&'a self, batch: &'a [SpendRecord], token: u128) -> SpendFuture<'a, ()> {
        (**self).write_once(batch, token)
    }
    fn query(&self, query: SpendQuery) -> SpendFuture<'_, SpendPage> {
        (**self).query(query)
    }
    fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
        (**self).totals(since)
    }
    fn series(&self, query: SeriesQuery) -> SpendFuture<'_, Vec<Series>> {
        (**self).series(query)
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

/// A value bound in a page query of the SQL stores.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) enum PageArg {
    Text(String),
    Int(i64),
}

/// The SQL of one page of `q` from `table`, for both SQL stores: only the
/// filters given, the cursor as a row-value bound, newest first, one row
/// more than the page (to know whether another follows). Placeholders are
/// `{mark}1`, `{mark}2`, … (`?` for SQLite, `$` for PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn page_sql(
    q: &SpendQuery,
    table: &str,
    columns: &str,
    mark: char,
) -> (String, Vec<PageArg>) {
    let mut sql = format!("SELECT {columns} FROM {table} WHERE true");
    let mut args: Vec<PageArg> = Vec::new();
    let mut bind = |sql: &mut String, condition: &str, arg: PageArg| {
        args.push(arg);
        sql.push_str(&format!(" AND {condition} {mark}{}", args.len()));
    };
    for (column, value) in [
        ("key_id", &q.key_id),
        ("team_id", &q.team_id),
        ("user_id", &q.user_id),
        ("end_user", &q.end_user),
        ("request_id", &q.request_id),
        ("model", &q.model),
    ] {
        if let Some(v) = value {
            bind(&mut sql, &format!("{column} ="), PageArg::Text(v.clone()));
        }
    }
    if let Some(s) = q.start {
        bind(&mut sql, "start_us >=", PageArg::Int(micros(s)));
    }
    if let Some(e) = q.end {
        bind(&mut sql, "start_us <", PageArg::Int(micros(e)));
    }
    if let Some(c) = q.after {
        args.push(PageArg::Int(c.start_us));
        args.push(PageArg::Int(c.seq));
        let n = args.len();
        sql.push_str(&format!(
            " AND (start_us, id) < ({mark}{}, {mark}{n})",
            n - 1
        ));
    }
    args.push(PageArg::Int(q.limit.max(1) as i64 + 1));
    sql.push_str(&format!(
        " ORDER BY start_us DESC, id DESC LIMIT {mark}{}",
        args.len()
    ));
    (sql, args)
}

/// Records in this process's memory, for tests and setups that keep no
/// history. Nothing survives a restart.
#[derive(Clone, Debug, Default)]
pub struct MemorySpendStore {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Debug, Default)]
struct Memory {
    seq: i64,
    records: BTreeMap<Cursor, SpendRecord>,
}

impl MemorySpendStore {
    /// An empty store.
    pub fn new() -> Self {
        MemorySpendStore::default()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record, oldest first.
    pub fn all(&self) -> Vec<SpendRecord> {
        self.lock().records.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SpendStore for MemorySpendStore {
    fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
        let mut m = self.lock();
        for r in batch {
            m.seq += 1;
            let at = Cursor {
                start_us: micros(r.start),
                seq: m.seq,
            };
            m.records.insert(at, r);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn query(&self, q: SpendQuery) -> SpendFuture<'_, SpendPage> {
        let m = self.lock();
        let limit = q.limit.max(1);
        let upper = q
            .after
            .map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut page = SpendPage::default();
        let mut last = None;
        for (at, r) in m
            .records
            .range((std::ops::Bound::Unbounded, upper))
            .rev()
            .filter(|(_, r)| q.matches(r))
        {
            if page.records.len() == limit {
                page.next = last;
                break;
            }
            page.records.push(r.clone());
            last = Some(*at);
        }
        Box::pin(std::future::ready(Ok(page)))
    }

    fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
        let m = self.lock();
        let (mut keys, mut teams) = (BTreeMap::new(), BTreeMap::new());
        let (mut users, mut end_users) = (BTreeMap::new(), BTreeMap::new());
        let mut global: Micros = 0;
        for r in m
            .records
            .values()
            .filter(|r| since.is_none_or(|s| r.start >= s))
        {
            if let Some(k) = &r.key_id {
                *keys.entry(k.clone()).or_insert(0u64) += r.cost;
            }
            if let Some(t) = &r.team_id {
                *teams.entry(t.clone()).or_insert(0u64) += r.cost;
            }
            if let Some(u) = &r.user_id {
                *users.entry(u.clone()).or_insert(0u64) += r.cost;
            }
            if let Some(e) = &r.end_user {
                *end_users.entry(e.clone()).or_insert(0u64) += r.cost;
            }
            global += r.cost;
        }
        Box::pin(std::future::ready(Ok(SpendTotals {
            keys: keys.into_iter().collect(),
            teams: teams.into_iter().collect(),
            users: users.into_iter().collect(),
            end_users: end_users.into_iter().collect(),
            global,
        })))
    }

    fn series(&self, query: SeriesQuery) -> SpendFuture<'_, Vec<Series>> {
        let m = self.lock();
        let at = |t: Timestamp| Cursor {
            start_us: micros(t),
            seq: i64::MIN,
        };
        // Checked first: a range whose end is before its start cannot be read.
        let answer = query.buckets().map_err(|e| e.to_string()).and_then(|_| {
            series::from_records(
                &query,
                m.records.range(at(query.start)..at(query.end)).map(|e| e.1),
            )
        });
        Box::pin(std::future::ready(answer.map_err(SpendError::permanent)))
    }
}

/// Rebuilds `ledger`'s spend in the current periods from `store`, at start
/// (before serving): for each period (total, daily, weekly, monthly), the
/// records started in the window that contains now are summed per key, per
/// team and overall, by the store (an aggregation: memory bounded by the
/// number of keys and teams, not of records), and charged to the matching
/// counters. Reservations of requests that were running when the process
/// stopped are gone with it; records still queued then are lost (a
/// graceful shutdown flushes them).
///
/// Counters are rebuilt for every key and team that spent, with a budget
/// or not; a budget of that period then starts from what was really spent.
pub async fn restore_ledger(ledger: &Ledger, store: &dyn SpendStore) -> Result<(), SpendError> {
    let now = ledger.now();
    for period in [
        Period::Total,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
    ] {
        let window = period.window(now, ledger.time_zone());
        let totals = store.totals(window.start).await?;
        for (key, spent) in totals.keys {
            ledger.restore_spent(&Scope::Key(key.into()), period, spent);
        }
        for (team, spent) in totals.teams {
            ledger.restore_spent(&Scope::Team(team.into()), period, spent);
        }
        for (user, spent) in totals.users {
            ledger.restore_spent(&Scope::User(user.into()), period, spent);
        }
        for (end_user, spent) in totals.end_users {
            ledger.restore_spent(&Scope::EndUser(end_user.into()), period, spent);
        }
        ledger.restore_spent(&Scope::Global, period, totals.global);
    }
    Ok(())
}

/// Rebuilds `ledger`'s spend in the current window of each fixed-window
/// budget in `budgets` ([`Period::Every`]: each has its own start, so
/// [`restore_ledger`] cannot know them): one aggregation per distinct
/// window start, charged to the budgets whose window starts there. Other
/// periods in `budgets` are skipped ([`restore_ledger`] rebuilt them).
pub async fn restore_windows(
    ledger: &Ledger,
    store: &dyn SpendStore,
    budgets: &[(Scope, Period)],
) -> Result<(), SpendError> {
    let now = ledger.now();
    let mut by_start: Vec<(Timestamp, Vec<&(Scope, Period)>)> = Vec::new();
    for b in budgets
        .iter()
        .filter(|(_, p)| matches!(p, Period::Every(_)))
    {
        let Some(start) = b.1.window(now, ledger.time_zone()).start else {
            continue;
        };
        match by_start.iter_mut().find(|(s, _)| *s == start) {
            Some((_, list)) => list.push(b),
            None => by_start.push((start, vec![b])),
        }
    }
    for (start, list) in by_start {
        let totals = store.totals(Some(start)).await?;
        for (scope, period) in list {
            let of = |list: &[(String, Micros)], id: &str| {
                list.iter().find(|(k, _)| k == id).map(|e| e.1)
            };
            let spent = match scope {
                Scope::Key(id) => of(&totals.keys, id),
                Scope::Team(id) => of(&totals.teams, id),
                Scope::User(id) => of(&totals.users, id),
                Scope::EndUser(id) => of(&totals.end_users, id),
                Scope::Global => Some(totals.global),
            };
            ledger.restore_spent(scope, *period, spent.unwrap_or(0));
        }
    }
    Ok(())
}

/// A record being made: it travels with the request, then inside the
/// response body, and is handed to the writer when the request settles.
#[derive(Debug)]
pub struct PendingSpend {
    /// Boxed: the request's future and body carry a pointer, not the record.
    record: Box<SpendRecord>,
    started: tokio::time::Instant,
    writer: SpendWriter,
}

/// The request id from `x-request-id`: visible ASCII only, at most
/// [`MAX_REQUEST_ID`] characters.
fn request_id(headers: &HeaderMap) -> String {
    const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
    let Some(v) = headers.get(&REQUEST_ID) else {
        return String::new();
    };
    let bytes = v.as_bytes();
    match std::str::from_utf8(bytes) {
        // Every id the gateway makes (a UUID), and most clients' ids.
        Ok(id) if id.len() <= MAX_REQUEST_ID && bytes.iter().all(u8::is_ascii_graphic) => {
            id.to_owned()
        }
        _ => bytes
            .iter()
            .filter(|b| b.is_ascii_graphic())
            .take(MAX_REQUEST_ID)
            .map(|&b| b as char)
            .collect(),
    }
}

impl PendingSpend {
    pub(crate) fn start(
        writer: SpendWriter,
        headers: &HeaderMap,
        spender: Spender,
        model: &str,
        start: Timestamp,
    ) -> Self {
        let mut record = Box::new(SpendRecord::new(request_id(headers), model, start));
        record.key_id = spender.key_id;
        record.team_id = spender.team_id;
        record.user_id = spender.user_id;
        record.end_user = spender.end_user;
        PendingSpend {
            record,
            started: tokio::time::Instant::now(),
            writer,
        }
    }

    /// The call answered: who served, after how many attempts, with which status.
    pub(crate) fn answered<B>(&mut self, res: &http::Response<B>) {
        let r = &mut self.record;
        r.status = res.status().as_u16();
        static MODEL_GROUP: http::HeaderName =
            http::HeaderName::from_static(crate::router::MODEL_GROUP_HEADER);
        static ATTEMPTS: http::HeaderName =
            http::HeaderName::from_static(crate::router::ATTEMPTS_HEADER);
        let header = |name| res.headers().get(name).and_then(|v| v.to_str().ok());
        r.model_group = header(&MODEL_GROUP).map(str::to_owned);
        r.attempts = header(&ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(1);
        if let Some(s) = res.extensions().get::<Served>() {
            r.deployment = Some(s.provider.to_string());
            r.served_model = Some(s.model.to_string());
        }
    }

    /// The call failed (or was refused) with `e`: nothing charged.
    pub(crate) fn failed(mut self, e: &Error) {
        let listed = crate::router::outcome::attempts_of(e).len() as u32;
        self.record.status = e.status().as_u16();
        self.record.attempts = if listed > 0 {
            listed
        } else {
            u32::from(e.provider().is_some() || e.upstream_status().is_some())
        };
        self.finish();
    }

    /// The answer settled: `usage` (or its estimate) cost `charged`.
    pub(crate) fn settled(mut self, usage: TokenUsage, estimated: bool, charged: Micros) {
        let r = &mut self.record;
        r.prompt_tokens = usage.prompt_tokens;
        r.completion_tokens = usage.completion_tokens;
        r.estimated = estimated;
        r.cost = charged;
        self.finish();
    }

    fn finish(mut self) {
        self.record.latency_us = self.started.elapsed().as_micros() as u64;
        self.writer.record_boxed(self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: i64, key: &str, team: Option<&str>, model: &str, cost: Micros) -> SpendRecord {
        let mut r = SpendRecord::new(
            format!("r{i}"),
            model,
            Timestamp::from_second(1_700_000_000 + i / 3).unwrap(),
        );
        r.key_id = Some(key.into());
        r.team_id = team.map(Into::into);
        r.cost = cost;
        r
    }

    /// Walks every page of `q` and returns the request ids, checking order.
    pub(crate) async fn walk(store: &dyn SpendStore, mut q: SpendQuery) -> Vec<String> {
        let mut ids = Vec::new();
        let mut last: Option<Timestamp> = None;
        loop {
            let page = store.query(q.clone()).await.unwrap();
            assert!(page.records.len() <= q.limit.max(1));
            for r in &page.records {
                assert!(q.matches(r));
                assert!(last.is_none_or(|l| r.start <= l), "newest first");
                last = Some(r.start);
                ids.push(r.request_id.clone());
            }
            match page.next {
                Some(c) => q.after = Some(c),
                None => return ids,
            }
        }
    }

    /// One page query of each shape (every filter, the cursor, a time
    /// range): each SQL store must answer all of them from an index, unsorted.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn page_shapes() -> Vec<SpendQuery> {
        let at = Some(Cursor {
            start_us: 1,
            seq: 2,
        });
        let t = Some(Timestamp::UNIX_EPOCH);
        vec![
            SpendQuery::default(),
            SpendQuery {
                after: at,
                start: t,
                end: t,
                ..SpendQuery::default()
            },
            SpendQuery {
                key_id: Some("k".into()),
                after: at,
                ..SpendQuery::default()
            },
            SpendQuery {
                team_id: Some("t".into()),
                start: t,
                ..SpendQuery::default()
            },
            SpendQuery {
                model: Some("m".into()),
                after: at,
                end: t,
                ..SpendQuery::default()
            },
            SpendQuery {
                user_id: Some("u".into()),
                after: at,
                ..SpendQuery::default()
            },
            SpendQuery {
                end_user: Some("e".into()),
                start: t,
                ..SpendQuery::default()
            },
        ]
    }

    /// `store`, after [`contract`], holds what the memory store holds
    /// after it: the same totals, the same newest page, the same record at
    /// a time bound.
    pub(crate) async fn same_history_as_the_memory_store(store: &dyn SpendStore) {
        let reference = MemorySpendStore::new();
        contract(&reference).await;
        assert_eq!(
            store.totals(None).await.unwrap(),
            reference.totals(None).await.unwrap()
        );
        let newest = SpendQuery {
            limit: 20,
            ..SpendQuery::default()
        };
        let page = store.query(newest.clone()).await.unwrap();
        assert_eq!(page.records, reference.query(newest).await.unwrap().records);
        let before_2030 = SpendQuery {
            end: Some("2029-01-01T00:00:00Z".parse().unwrap()),
            limit: 1,
            ..SpendQuery::default()
        };
        let first = store.query(before_2030).await.unwrap();
        let r = &first.records[0];
        assert_eq!(
            (r.request_id.as_str(), r.cost, r.key_id.as_deref()),
            ("r249", 10, Some("b"))
        );
    }

    /// The shared contract of every store: filters, pages, totals.
    pub(crate) async fn contract(store: &dyn SpendStore) {
        let batch: Vec<SpendRecord> = (0..250)
            .map(|i| {
                let key = if i % 2 == 0 { "a" } else { "b" };
                let team = (i % 5 == 0).then_some("t");
                let model = if i % 3 == 0 { "big" } else { "small" };
                let mut r = rec(i, key, team, model, 10);
                r.user_id = (i % 10 == 0).then(|| "u".to_owned());
                r.end_user = (i % 25 == 0).then(|| "e".to_owned());
                r
            })
            .collect();
        for chunk in batch.chunks(64) {
            store.write(chunk.to_vec()).await.unwrap();
        }
        let all = walk(
            store,
            SpendQuery {
                limit: 7,
                ..SpendQuery::default()
            },
        )
        .await;
        assert_eq!(all.len(), 250);
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 250, "each record exactly once");
        let a = walk(
            store,
            SpendQuery {
                key_id: Some("a".into()),
                limit: 10,
                ..SpendQuery::default()
            },
        )
        .await;
        assert_eq!(a.len(), 125);
        let t_big = walk(
            store,
            SpendQuery {
                team_id: Some("t".into()),
                model: Some("big".into()),
                limit: 3,
                ..SpendQuery::default()
            },
        )
        .await;
        // i % 15 == 0 in 0..250: 17 records.
        assert_eq!(t_big.len(), 17);
        let start = Timestamp::from_second(1_700_000_010).unwrap();
        let end = Timestamp::from_second(1_700_000_020).unwrap();
        let range = walk(
            store,
            SpendQuery {
                start: Some(start),
                end: Some(end),
                limit: 4,
                ..SpendQuery::default()
            },
        )
        .await;
        assert_eq!(range.len(), 30, "seconds 10..20, three records each");
        let none = store
            .query(SpendQuery {
                key_id: Some("nobody".into()),
                limit: 5,
                ..SpendQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(none, SpendPage::default());

        let totals = store.totals(None).await.unwrap();
        assert_eq!(totals.global, 2_500);
        assert_eq!(
            totals.keys,
            vec![("a".to_owned(), 1_250), ("b".to_owned(), 1_250)]
        );
        assert_eq!(totals.teams, vec![("t".to_owned(), 500)]);
        assert_eq!(totals.users, vec![("u".to_owned(), 250)]);
        assert_eq!(totals.end_users, vec![("e".to_owned(), 100)]);
        let mine = walk(
            store,
            SpendQuery {
                user_id: Some("u".into()),
                limit: 6,
                ..SpendQuery::default()
            },
        )
        .await;
        assert_eq!(mine.len(), 25, "the user's records");
        let theirs = walk(
            store,
            SpendQuery {
                end_user: Some("e".into()),
                limit: 6,
                ..SpendQuery::default()
            },
        )
        .await;
        assert_eq!(theirs.len(), 10, "the end user's records");
        let since = store.totals(Some(end)).await.unwrap();
        // Records 60..250 start at second 20 or later.
        assert_eq!(since.global, 1_900);
        series_contract(store).await;
    }

    /// A point of a series: (bucket start, cost, requests, prompt, completion).
    type Pt = (&'static str, Micros, u64, u64, u64);
    /// A series as compared: its name, its points with RFC 3339 starts.
    type Shape = Vec<(SeriesName, Vec<(String, Micros, u64, u64, u64)>)>;

    fn named(v: &str) -> SeriesName {
        SeriesName::Value(v.to_owned())
    }

    /// The series as (name, points) with RFC 3339 bucket starts.
    fn shape(series: &[Series]) -> Shape {
        series
            .iter()
            .map(|s| {
                let points = s
                    .points
                    .iter()
                    .map(|p| {
                        (
                            p.start.to_string(),
                            p.cost,
                            p.requests,
                            p.prompt_tokens,
                            p.completion_tokens,
                        )
                    })
                    .collect();
                (s.name.clone(), points)
            })
            .collect()
    }

    fn expect(series: Vec<(SeriesName, Vec<Pt>)>) -> Shape {
        series
            .into_iter()
            .map(|(n, pts)| {
                (
                    n,
                    pts.into_iter()
                        .map(|(t, c, r, p, o)| (t.to_owned(), c, r, p, o))
                        .collect(),
                )
            })
            .collect()
    }

    /// Spend over time, identical in every store: bucket edges (a record
    /// at a boundary, the range's end excluded), hours and days, each
    /// grouping with the records that lack its field, filters, the top
    /// groups with the rest summed, and ranges refused.
    async fn series_contract(store: &dyn SpendStore) {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        #[allow(clippy::type_complexity)]
        let rows: [(&str, &str, Option<&str>, &str, Option<&str>, Micros); 8] = [
            // (start, key, team, model, deployment, cost)
            (
                "2030-01-01T00:00:00Z",
                "a",
                Some("t"),
                "m1",
                Some("d1"),
                100,
            ),
            (
                "2030-01-01T00:59:59.999999Z",
                "a",
                Some("t"),
                "m1",
                Some("d1"),
                200,
            ),
            // A budget's refusal: no deployment, nothing charged.
            ("2030-01-01T01:00:00Z", "b", None, "m2", None, 0),
            ("2030-01-01T01:30:00Z", "b", None, "m2", Some("d2"), 50),
            ("2030-01-01T23:59:00Z", "a", None, "m2", Some("d2"), 7),
            ("2030-01-02T00:00:00Z", "a", None, "m1", Some("d1"), 1_000),
            // Outside [2030-01-01, 2030-01-03): the end is exclusive.
            (
                "2030-01-03T00:00:00Z",
                "a",
                Some("t"),
                "m1",
                Some("d1"),
                9_999,
            ),
            (
                "2029-12-31T23:59:59.999999Z",
                "a",
                Some("t"),
                "m1",
                Some("d1"),
                5_555,
            ),
        ];
        let batch: Vec<SpendRecord> = rows
            .iter()
            .enumerate()
            .map(|(i, (start, key, team, model, deployment, cost))| {
                let mut r = SpendRecord::new(format!("s{i}"), *model, at(start));
                r.key_id = Some((*key).into());
                r.team_id = team.map(Into::into);
                r.deployment = deployment.map(Into::into);
                r.cost = *cost;
                r.prompt_tokens = 10 * (i as u64 + 1);
                r.completion_tokens = i as u64 + 1;
                r.status = if deployment.is_some() { 200 } else { 402 };
                r
            })
            .collect();
        store.write(batch).await.unwrap();
        let (t0, t2) = (at("2030-01-01T00:00:00Z"), at("2030-01-03T00:00:00Z"));
        let run = |q: SeriesQuery| async move { shape(&store.series(q).await.unwrap()) };

        let hourly = run(SeriesQuery::new(GroupBy::Model, Bucket::Hour, t0, t2)).await;
        assert_eq!(
            hourly,
            expect(vec![
                (
                    named("m1"),
                    vec![
                        ("2030-01-01T00:00:00Z", 300, 2, 30, 3),
                        ("2030-01-02T00:00:00Z", 1_000, 1, 60, 6),
                    ]
                ),
                (
                    named("m2"),
                    vec![
                        ("2030-01-01T01:00:00Z", 50, 2, 70, 7),
                        ("2030-01-01T23:00:00Z", 7, 1, 50, 5),
                    ]
                ),
            ])
        );
        let daily = run(SeriesQuery::new(GroupBy::Model, Bucket::Day, t0, t2)).await;
        assert_eq!(
            daily,
            expect(vec![
                (
                    named("m1"),
                    vec![
                        ("2030-01-01T00:00:00Z", 300, 2, 30, 3),
                        ("2030-01-02T00:00:00Z", 1_000, 1, 60, 6),
                    ]
                ),
                (named("m2"), vec![("2030-01-01T00:00:00Z", 57, 3, 120, 12)]),
            ])
        );
        // The refusal has no deployment: its own group, ranked last (0).
        let by_deployment = run(SeriesQuery::new(GroupBy::Deployment, Bucket::Day, t0, t2)).await;
        assert_eq!(
            by_deployment,
            expect(vec![
                (
                    named("d1"),
                    vec![
                        ("2030-01-01T00:00:00Z", 300, 2, 30, 3),
                        ("2030-01-02T00:00:00Z", 1_000, 1, 60, 6),
                    ]
                ),
                (named("d2"), vec![("2030-01-01T00:00:00Z", 57, 2, 90, 9)]),
                (
                    SeriesName::Missing,
                    vec![("2030-01-01T00:00:00Z", 0, 1, 30, 3)]
                ),
            ])
        );
        // Key a's records without a team cost more than team t's: first.
        let a_by_team = run(SeriesQuery {
            key_id: Some("a".into()),
            ..SeriesQuery::new(GroupBy::Team, Bucket::Day, t0, t2)
        })
        .await;
        assert_eq!(
            a_by_team,
            expect(vec![
                (
                    SeriesName::Missing,
                    vec![
                        ("2030-01-01T00:00:00Z", 7, 1, 50, 5),
                        ("2030-01-02T00:00:00Z", 1_000, 1, 60, 6),
                    ]
                ),
                (named("t"), vec![("2030-01-01T00:00:00Z", 300, 2, 30, 3)]),
            ])
        );
        let m2_by_key = expect(vec![
            (named("b"), vec![("2030-01-01T00:00:00Z", 50, 2, 70, 7)]),
            (named("a"), vec![("2030-01-01T00:00:00Z", 7, 1, 50, 5)]),
        ]);
        let q = SeriesQuery::new(GroupBy::Key, Bucket::Day, t0, t2);
        let m2 = SeriesQuery {
            model: Some("m2".into()),
            ..q.clone()
        };
        assert_eq!(run(m2).await, m2_by_key);
        let team_t = SeriesQuery {
            team_id: Some("t".into()),
            ..q.clone()
        };
        assert_eq!(
            run(team_t).await,
            expect(vec![(
                named("a"),
                vec![("2030-01-01T00:00:00Z", 300, 2, 30, 3)]
            )])
        );
        let d2 = SeriesQuery {
            deployment: Some("d2".into()),
            ..q.clone()
        };
        let d2_by_key = expect(vec![
            (named("b"), vec![("2030-01-01T00:00:00Z", 50, 1, 40, 4)]),
            (named("a"), vec![("2030-01-01T00:00:00Z", 7, 1, 50, 5)]),
        ]);
        assert_eq!(run(d2).await, d2_by_key);
        let nobody = SeriesQuery {
            key_id: Some("nobody".into()),
            ..q.clone()
        };
        assert_eq!(run(nobody).await, vec![]);
        // The end is exclusive: the record at 2030-01-02T00:00Z is out.
        let first_day = run(SeriesQuery::new(
            GroupBy::Model,
            Bucket::Hour,
            t0,
            at("2030-01-02T00:00:00Z"),
        ))
        .await;
        assert_eq!(
            first_day[0].1,
            vec![("2030-01-01T00:00:00Z".into(), 300, 2, 30, 3)]
        );
        // The start is inclusive (the refusal at 01:00 is in), and a start
        // inside a bucket counts only the records from it on.
        let from_one = run(SeriesQuery::new(
            GroupBy::Model,
            Bucket::Hour,
            at("2030-01-01T01:00:00Z"),
            t2,
        ))
        .await;
        assert_eq!(
            from_one,
            expect(vec![
                (named("m1"), vec![("2030-01-02T00:00:00Z", 1_000, 1, 60, 6)]),
                (
                    named("m2"),
                    vec![
                        ("2030-01-01T01:00:00Z", 50, 2, 70, 7),
                        ("2030-01-01T23:00:00Z", 7, 1, 50, 5),
                    ]
                ),
            ])
        );
        let mid_bucket = run(SeriesQuery::new(
            GroupBy::Model,
            Bucket::Day,
            at("2030-01-01T00:30:00Z"),
            t2,
        ))
        .await;
        assert_eq!(
            mid_bucket[0],
            expect(vec![(
                named("m1"),
                vec![
                    ("2030-01-01T00:00:00Z", 200, 1, 20, 2),
                    ("2030-01-02T00:00:00Z", 1_000, 1, 60, 6),
                ]
            )])[0]
        );

        // More groups than MAX_SERIES: the costliest named, the rest summed.
        let t3 = at("2031-06-01T00:00:00Z");
        let many: Vec<SpendRecord> = (0..MAX_SERIES as u64 + 3)
            .map(|i| {
                let mut r = SpendRecord::new(format!("g{i}"), format!("model-{i:02}"), t3);
                r.cost = 100 + i;
                r.prompt_tokens = 1;
                r
            })
            .collect();
        store.write(many).await.unwrap();
        let top = store
            .series(SeriesQuery::new(
                GroupBy::Model,
                Bucket::Hour,
                t3,
                at("2031-06-01T01:00:00Z"),
            ))
            .await
            .unwrap();
        assert_eq!(top.len(), MAX_SERIES + 1);
        let names: Vec<SeriesName> = top.iter().map(|s| s.name.clone()).collect();
        let mut want: Vec<SeriesName> = (3..MAX_SERIES as u64 + 3)
            .rev()
            .map(|i| named(&format!("model-{i:02}")))
            .collect();
        want.push(SeriesName::Other);
        assert_eq!(names, want, "costliest first, the rest last");
        let other = &top[MAX_SERIES].points;
        assert_eq!(
            (
                other.len(),
                other[0].cost,
                other[0].requests,
                other[0].prompt_tokens
            ),
            (1, 100 + 101 + 102, 3, 3)
        );

        // Ranges refused: empty, reversed, over MAX_BUCKETS buckets.
        let hours = |n: i64| t0.checked_add(jiff::SignedDuration::from_hours(n)).unwrap();
        for (bucket, start, end) in [
            (Bucket::Hour, t0, t0),
            (Bucket::Day, t2, t0),
            (Bucket::Hour, t0, hours(MAX_BUCKETS as i64 + 1)),
            (Bucket::Day, t0, hours(24 * MAX_BUCKETS as i64 + 1)),
        ] {
            let e = store
                .series(SeriesQuery::new(GroupBy::Key, bucket, start, end))
                .await
                .unwrap_err();
            assert!(e.is_permanent(), "{e}");
        }
        // Exactly MAX_BUCKETS is answered.
        let longest = store
            .series(SeriesQuery::new(
                GroupBy::Key,
                Bucket::Hour,
                t0,
                hours(MAX_BUCKETS as i64),
            ))
            .await
            .unwrap();
        // Key a's records of the first two days, and the one at the third's start.
        assert_eq!(longest[0].cost(), 1_307 + 9_999);
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        contract(&MemorySpendStore::new()).await;
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            start_us: 1_700_000_000_000_000,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "x", "12", "zz.1", "1.", ".1", "1.2.3"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_are_bounded_and_visible() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "a b\tc".parse().unwrap());
        assert_eq!(request_id(&h), "abc");
        h.insert("x-request-id", "x".repeat(500).parse().unwrap());
        assert_eq!(request_id(&h).len(), MAX_REQUEST_ID);
        assert_eq!(request_id(&HeaderMap::new()), "");
        let uuid = "3f1b0c1e-8d1a-4c7e-9a55-1f0f5b2a9c11";
        h.insert("x-request-id", uuid.parse().unwrap());
        assert_eq!(request_id(&h), uuid);
        h.insert(
            "x-request-id",
            "é1"
                .parse()
                .unwrap_or(http::HeaderValue::from_bytes(b"\xc3\xa91").unwrap()),
        );
        assert_eq!(request_id(&h), "1", "non-ASCII bytes are left out");
    }

    #[tokio::test]
    async fn a_restored_ledger_refuses_what_was_spent() {
        use crate::budget::Limit;
        let ledger = Ledger::default();
        let store = MemorySpendStore::new();
        let now = ledger.now();
        let mut old = rec(0, "a", Some("t"), "m", 700);
        old.start = Timestamp::from_second(0).unwrap(); // long ago: only in `total`
        old.user_id = Some("u".into());
        let mut fresh = rec(1, "a", Some("t"), "m", 300);
        fresh.start = now;
        fresh.user_id = Some("u".into());
        fresh.end_user = Some("e".into());
        store.write(vec![old, fresh]).await.unwrap();
        restore_ledger(&ledger, &store).await.unwrap();
        let key = Scope::Key("a".into());
        assert_eq!(ledger.usage(&key, Period::Total).spent, 1_000);
        let user = Scope::User("u".into());
        assert_eq!(ledger.usage(&user, Period::Total).spent, 1_000);
        assert_eq!(ledger.usage(&user, Period::Monthly).spent, 300);
        assert_eq!(
            ledger
                .usage(&Scope::EndUser("e".into()), Period::Daily)
                .spent,
            300
        );
        assert_eq!(ledger.usage(&key, Period::Monthly).spent, 300);
        assert_eq!(
            ledger.usage(&Scope::Team("t".into()), Period::Daily).spent,
            300
        );
        assert_eq!(ledger.usage(&Scope::Global, Period::Total).spent, 1_000);
        let limit = Limit {
            scope: key,
            max: 1_050,
            period: Period::Total,
        };
        assert!(ledger.reserve(std::slice::from_ref(&limit), 100).is_err());
        assert!(ledger.reserve(&[limit], 50).is_ok());
    }

    #[tokio::test]
    async fn fixed_windows_are_restored_from_their_own_start() {
        use crate::budget::ManualClock;
        use crate::duration::{Every, Length};
        let now: Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let ledger = Ledger::with_clock(jiff::tz::TimeZone::UTC, ManualClock::new(now));
        let store = MemorySpendStore::new();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut records = Vec::new();
        for (i, (key, start, cost)) in [
            ("a", "2026-12-06T09:59:00Z", 1), // before a's window
            ("a", "2026-12-06T10:30:00Z", 20),
            ("b", "2026-12-06T11:45:00Z", 300),
            ("b", "2026-12-06T11:00:00Z", 4_000), // before b's window
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = rec(i as i64, key, None, "m", cost);
            r.start = at(start);
            // Key a's requests are user u's, key b's are for end user e.
            if key == "a" {
                r.user_id = Some("u".into());
            } else {
                r.end_user = Some("e".into());
            }
            records.push(r);
        }
        store.write(records).await.unwrap();
        let window = |anchor: &str, secs| {
            Period::Every(Every {
                length: Length::Seconds(secs),
                anchor: at(anchor).as_second(),
            })
        };
        // At 12:00, a's current window is 10:00-13:00, b's 11:15-12:15.
        let a = window("2026-12-06T10:00:00Z", 3 * 3_600);
        let b = window("2026-12-06T11:15:00Z", 3_600);
        let budgets = [
            (Scope::Key("a".into()), a),
            (Scope::Key("b".into()), b),
            (Scope::Key("none".into()), a),
            (Scope::User("u".into()), a),
            (Scope::EndUser("e".into()), b),
            (Scope::Global, Period::Monthly),
        ];
        restore_windows(&ledger, &store, &budgets).await.unwrap();
        assert_eq!(ledger.usage(&Scope::Key("a".into()), a).spent, 20);
        assert_eq!(ledger.usage(&Scope::Key("b".into()), b).spent, 300);
        assert_eq!(ledger.usage(&Scope::Key("none".into()), a).spent, 0);
        assert_eq!(ledger.usage(&Scope::User("u".into()), a).spent, 20);
        assert_eq!(ledger.usage(&Scope::EndUser("e".into()), b).spent, 300);
        // Calendar periods are left to `restore_ledger`.
        assert_eq!(ledger.usage(&Scope::Global, Period::Monthly).spent, 0);
    }
}
