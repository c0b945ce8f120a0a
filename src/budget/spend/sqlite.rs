//! [`SqliteSpendStore`]: spend records in the keys' SQLite file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, Row, params};

use super::series::{Row as SeriesRow, SeriesSql};
use super::{
    Cursor, PageArg, Series, SeriesQuery, SpendError, SpendFuture, SpendPage, SpendQuery,
    SpendRecord, SpendStore, SpendTotals, micros, series,
};
use crate::budget::Micros;

/// Spend records in table `spend` of an embedded SQLite database, normally
/// the keys' file (`keys.sqlite_path`; the schema is migrated by whichever
/// of the two stores opens the file first, see
/// [`keys::sqlite::MIGRATIONS`](crate::keys::sqlite::MIGRATIONS)).
///
/// Two connections: one writes (a batch is one transaction), one reads
/// (WAL mode: pages are read while a batch is written). The writing
/// connection runs with `synchronous = NORMAL`: a batch survives a crash of
/// the process, and may be lost only with the machine's power, like the
/// records still queued in memory. Pages are keyset-paginated over
/// indexes that end in the record's start and rowid, so a page reads only
/// its own rows, whatever the table's size; totals are one `GROUP BY` per
/// scope, streamed by SQLite.
#[derive(Clone, Debug)]
pub struct SqliteSpendStore {
    write: Arc<Mutex<Connection>>,
    read: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

fn err(path: &Path, e: impl std::fmt::Display) -> SpendError {
    SpendError::new(format!("spend store `{}`: {e}", path.display()))
}

const COLUMNS: &str = "id, request_id, key_id, team_id, model, model_group, deployment, served_model, \
     prompt_tokens, completion_tokens, estimated, cost, status, start_us, latency_us, attempts, \
     user_id, end_user";

fn row(r: &Row<'_>) -> rusqlite::Result<(Cursor, SpendRecord)> {
    let seq: i64 = r.get(0)?;
    let start_us: i64 = r.get(13)?;
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let record = SpendRecord {
        request_id: r.get(1)?,
        key_id: r.get(2)?,
        team_id: r.get(3)?,
        user_id: r.get(16)?,
        end_user: r.get(17)?,
        model: r.get(4)?,
        model_group: r.get(5)?,
        deployment: r.get(6)?,
        served_model: r.get(7)?,
        prompt_tokens: u(8)?,
        completion_tokens: u(9)?,
        estimated: r.get::<_, i64>(10)? != 0,
        cost: u(11)?,
        status: u(12)? as u16,
        start: Timestamp::from_microsecond(start_us).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Integer, e.into())
        })?,
        latency_us: u(14)?,
        attempts: u(15)? as u32,
    };
    Ok((Cursor { start_us, seq }, record))
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteSpendStore {
    /// Opens (creating and migrating it if needed) the database at `path`.
    /// Blocking: call it at start, or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SpendError> {
        let path = path.as_ref();
        let open =
            |sync| crate::keys::sqlite::open_connection(path, sync).map_err(|e| err(path, e));
        let write = open("NORMAL")?;
        let read = open("NORMAL")?;
        Ok(SqliteSpendStore {
            write: Arc::new(Mutex::new(write)),
            read: Arc::new(Mutex::new(read)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Runs `f` with one of the connections on tokio's blocking pool.
    fn run<T, F>(&self, conn: &Arc<Mutex<Connection>>, f: F) -> SpendFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = conn.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut conn).map_err(|e| err(&p, e))
            })
            .await
            .map_err(|e| err(&path, e))?
        })
    }

    /// The query plan SQLite picks for a page of `q` (for tests: a page
    /// must be read from an index, never sorted in a temporary b-tree).
    pub fn page_plan(&self, q: &SpendQuery) -> Result<String, SpendError> {
        let (sql, args) = page_sql(q);
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .map_err(|e| err(&self.path, e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
            .map_err(|e| err(&self.path, e))?;
        let mut plan = Vec::new();
        for r in rows {
            plan.push(r.map_err(|e| err(&self.path, e))?);
        }
        Ok(plan.join("\n"))
    }
}

/// One page of `q`, with SQLite's placeholders and values.
fn page_sql(q: &SpendQuery) -> (String, Vec<Sql>) {
    let (sql, args) = super::page_sql(q, "spend", COLUMNS, '?');
    (sql, values(args))
}

fn values(args: Vec<PageArg>) -> Vec<Sql> {
    args.into_iter()
        .map(|a| match a {
            PageArg::Text(t) => Sql::Text(t),
            PageArg::Int(i) => Sql::Integer(i),
        })
        .collect()
}

const SERIES: SeriesSql<'static> = SeriesSql {
    table: "spend",
    mark: '?',
    collate: "",
};

impl SpendStore for SqliteSpendStore {
    fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
        self.run(&self.write, move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO spend (request_id, key_id, team_id, model, model_group, deployment, \
                     served_model, prompt_tokens, completion_tokens, estimated, cost, status, start_us, \
                     latency_us, attempts, user_id, end_user) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                )?;
                for r in &batch {
                    stmt.execute(params![
                        r.request_id,
                        r.key_id,
                        r.team_id,
                        r.model,
                        r.model_group,
                        r.deployment,
                        r.served_model,
                        i(r.prompt_tokens),
                        i(r.completion_tokens),
                        r.estimated,
                        i(r.cost),
                        r.status,
                        micros(r.start),
                        i(r.latency_us),
                        r.attempts,
                        r.user_id,
                        r.end_user,
                    ])?;
                }
            }
            tx.commit()
        })
    }

    fn query(&self, q: SpendQuery) -> SpendFuture<'_, SpendPage> {
        self.run(&self.read, move |conn| {
            let (sql, args) = page_sql(&q);
            let limit = q.limit.max(1);
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
            let mut page = SpendPage::default();
            let mut last = None;
            while let Some(r) = rows.next()? {
                if page.records.len() == limit {
                    page.next = last;
                    break;
                }
                let (at, record) = row(r)?;
                page.records.push(record);
                last = Some(at);
            }
            Ok(page)
        })
    }

    fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
        let since = since.map_or(i64::MIN, micros);
        self.run(&self.read, move |conn| {
            let sums = |column: &str| -> rusqlite::Result<Vec<(String, Micros)>> {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {column}, SUM(cost) FROM spend \
                     WHERE {column} IS NOT NULL AND start_us >= ?1 \
                     GROUP BY {column} HAVING SUM(cost) > 0 ORDER BY {column}"
                ))?;
                let rows = stmt.query_map([since], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                })?;
                rows.collect()
            };
            let keys = sums("key_id")?;
            let teams = sums("team_id")?;
            let users = sums("user_id")?;
            let end_users = sums("end_user")?;
            let global: i64 = conn.query_row(
                "SELECT COALESCE(SUM(cost), 0) FROM spend WHERE start_us >= ?1",
                [since],
                |r| r.get(0),
            )?;
            Ok(SpendTotals {
                keys,
                teams,
                users,
                end_users,
                global: global.max(0) as u64,
            })
        })
    }

    fn series(&self, q: SeriesQuery) -> SpendFuture<'_, Vec<Series>> {
        let first = match q.buckets() {
            Ok((first, _)) => first,
            Err(e) => {
                return Box::pin(std::future::ready(Err(SpendError::permanent(
                    e.to_string(),
                ))));
            }
        };
        let path = self.path.clone();
        let sums = self.run(&self.read, move |conn| {
            let (sql, args) = SERIES.rank(&q);
            let mut stmt = conn.prepare_cached(&sql)?;
            let ranked = stmt
                .query_map(rusqlite::params_from_iter(values(args)), |r| {
                    r.get::<_, Option<String>>(0)
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let named = series::named(ranked);
            let (sql, args) = SERIES.sums(&q, &named, first);
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values(args)), |r| {
                    let n = |i: usize| -> rusqlite::Result<u64> {
                        Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0).max(0) as u64)
                    };
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        SeriesRow {
                            name: series::SeriesName::Other,
                            bucket_us: r.get(2)?,
                            cost: n(3)?,
                            requests: n(4)?,
                            prompt_tokens: n(5)?,
                            completion_tokens: n(6)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((named, rows))
        });
        Box::pin(async move {
            let (named, rows) = sums.await?;
            let rows = rows
                .into_iter()
                .map(|(kind, name, row)| {
                    Ok(SeriesRow {
                        name: series::row_name(kind, name)?,
                        ..row
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| err(&path, e))?;
            series::assemble(&named, rows).map_err(|e| err(&path, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::spend::tests::{contract, page_shapes, same_history_as_the_memory_store};

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-spend-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("tollgate.db")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_keeps_the_contract_and_survives_reopening() {
        let path = temp("contract");
        contract(&SqliteSpendStore::open(&path).unwrap()).await;
        // Reopened (as after a restart), with the key store on the same file.
        let keys = crate::keys::SqliteStore::open(&path).unwrap();
        assert_eq!(
            keys.schema_version().unwrap(),
            crate::keys::sqlite::MIGRATIONS.last().unwrap().0
        );
        let again = SqliteSpendStore::open(&path).unwrap();
        same_history_as_the_memory_store(&again).await;
    }

    #[test]
    fn every_page_is_read_from_an_index_never_sorted() {
        let store = SqliteSpendStore::open(temp("plan")).unwrap();
        for q in page_shapes() {
            let plan = store.page_plan(&q).unwrap();
            assert!(
                plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"),
                "{q:?}: {plan}"
            );
            assert!(
                !plan.contains("TEMP B-TREE"),
                "{q:?} sorts in memory: {plan}"
            );
        }
    }

    fn plan(store: &SqliteSpendStore, sql: &str, args: Vec<PageArg>) -> String {
        let conn = store.read.lock().unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(values(args)), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
    }

    /// Both queries of a series read the range (or the filtered key, team
    /// or model within it) from an index, never the whole table.
    #[test]
    fn every_series_query_reads_an_index() {
        use crate::budget::{Bucket, GroupBy};
        let path = std::env::temp_dir().join(format!(
            "tollgate-spend-series-plan-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = SqliteSpendStore::open(&path).unwrap();
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2026-01-31T00:00:00Z".parse().unwrap();
        for group_by in GroupBy::ALL {
            for (key, team, model, deployment) in [
                (None, None, None, None),
                (Some("k"), None, None, None),
                (None, Some("t"), None, None),
                (None, None, Some("m"), None),
                (None, None, None, Some("d")),
            ] {
                let q = SeriesQuery {
                    key_id: key.map(Into::into),
                    team_id: team.map(Into::into),
                    model: model.map(Into::into),
                    deployment: deployment.map(Into::into),
                    ..SeriesQuery::new(group_by, Bucket::Day, start, end)
                };
                let (rank, args) = SERIES.rank(&q);
                let (sums, sums_args) = SERIES.sums(&q, &[Some("a".into()), None], start);
                for plan in [plan(&store, &rank, args), plan(&store, &sums, sums_args)] {
                    let lines: Vec<&str> = plan.lines().collect();
                    assert!(
                        lines
                            .iter()
                            .any(|l| l.starts_with("SEARCH spend USING INDEX")),
                        "{q:?}: {plan}"
                    );
                    assert!(
                        !lines.iter().any(|l| l.starts_with("SCAN spend")),
                        "{q:?} reads the whole table: {plan}"
                    );
                }
            }
        }
    }
}
