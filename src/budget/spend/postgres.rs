//! [`PostgresSpendStore`]: spend records in PostgreSQL, one history for
//! every gateway replica.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use jiff::Timestamp;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::series::{Row as SeriesRow, SeriesSql};
use super::{
    Cursor, PageArg, Series, SeriesQuery, SpendError, SpendFuture, SpendPage, SpendQuery,
    SpendRecord, SpendStore, SpendTotals, micros, series,
};
use crate::budget::Micros;
use crate::keys::postgres::{MigrateError, PostgresOptions, migrate};

/// The spend store's migrations, recorded in `tollgate_schema` under
/// `component = 'spend'`: `(version, SQL)`, in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        // `id` orders records started in the same microsecond; each index ends
        // in (start_us, id), so a page under any one filter is read backwards
        // from an index, never sorted.
        "CREATE TABLE tollgate_spend (
        id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        request_id        TEXT NOT NULL,
        key_id            TEXT,
        team_id           TEXT,
        model             TEXT NOT NULL,
        model_group       TEXT,
        deployment        TEXT,
        served_model      TEXT,
        prompt_tokens     BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        estimated         BOOLEAN NOT NULL,
        cost              BIGINT NOT NULL,
        status            INTEGER NOT NULL,
        start_us          BIGINT NOT NULL,
        latency_us        BIGINT NOT NULL,
        attempts          BIGINT NOT NULL
    );
    CREATE INDEX tollgate_spend_by_start ON tollgate_spend (start_us, id);
    CREATE INDEX tollgate_spend_by_key ON tollgate_spend (key_id, start_us, id);
    CREATE INDEX tollgate_spend_by_team ON tollgate_spend (team_id, start_us, id);
    CREATE INDEX tollgate_spend_by_model ON tollgate_spend (model, start_us, id);
    CREATE TABLE tollgate_spend_batches (
        token BYTEA PRIMARY KEY,
        at    TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX tollgate_spend_batches_by_at ON tollgate_spend_batches (at);",
    ),
    // The key's user and the request's end user.
    (
        2,
        "ALTER TABLE tollgate_spend ADD COLUMN user_id TEXT;
        ALTER TABLE tollgate_spend ADD COLUMN end_user TEXT;
        CREATE INDEX tollgate_spend_by_user ON tollgate_spend (user_id, start_us, id);
        CREATE INDEX tollgate_spend_by_end_user ON tollgate_spend (end_user, start_us, id);",
    ),
    // LiteLLM's `/spend/logs?request_id=`: one request's record.
    (
        3,
        "CREATE INDEX tollgate_spend_by_request ON tollgate_spend (request_id, start_us, id);",
    ),
];

const COLUMNS: &str = "id, request_id, key_id, team_id, model, model_group, deployment, served_model, \
     prompt_tokens, completion_tokens, estimated, cost, status, start_us, latency_us, attempts, \
     user_id, end_user";

/// Spend records in table `tollgate_spend` of a PostgreSQL database,
/// normally the keys' (`[keys] url`), shared by every replica.
///
/// A batch is one transaction of one multi-row `INSERT … SELECT FROM
/// unnest(…)` (one round trip whatever its size), together with its token
/// in `tollgate_spend_batches`: a batch tried again after its answer was
/// lost (the connection died after `COMMIT`) finds its token and is not
/// stored twice (tokens are kept a day). Errors of the data (SQLSTATE
/// classes 22 and 23) are [permanent](SpendError::is_permanent); any other
/// (the server away, a timeout) lets the [`SpendWriter`](super::SpendWriter)
/// keep the batch and try again. Pages are keyset-paginated over indexes
/// ending in `(start_us, id)`; totals are one `GROUP BY` per scope.
#[derive(Clone)]
pub struct PostgresSpendStore {
    pool: Pool,
    name: Arc<str>,
    /// Bound on a whole call (waiting for a connection included).
    timeout: Duration,
}

impl fmt::Debug for PostgresSpendStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSpendStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    v.max(0) as u64
}

fn row(r: &Row) -> Result<(Cursor, SpendRecord), String> {
    let seq: i64 = r.get(0);
    let start_us: i64 = r.get(13);
    let record = SpendRecord {
        request_id: r.get(1),
        key_id: r.get(2),
        team_id: r.get(3),
        user_id: r.get(16),
        end_user: r.get(17),
        model: r.get(4),
        model_group: r.get(5),
        deployment: r.get(6),
        served_model: r.get(7),
        prompt_tokens: u(r.get(8)),
        completion_tokens: u(r.get(9)),
        estimated: r.get(10),
        cost: u(r.get(11)),
        status: r.get::<_, i32>(12).clamp(0, u16::MAX as i32) as u16,
        start: Timestamp::from_microsecond(start_us).map_err(|e| e.to_string())?,
        latency_us: u(r.get(14)),
        attempts: u(r.get(15)).min(u32::MAX as u64) as u32,
    };
    Ok((Cursor { start_us, seq }, record))
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// One page of `q`, with PostgreSQL's placeholders and values.
fn page_sql(q: &SpendQuery) -> (String, Params) {
    let (sql, args) = super::page_sql(q, "tollgate_spend", COLUMNS, '$');
    (sql, values(args))
}

fn values(args: Vec<PageArg>) -> Params {
    args.into_iter()
        .map(|a| -> Box<dyn ToSql + Sync + Send> {
            match a {
                PageArg::Text(t) => Box::new(t),
                PageArg::Int(i) => Box::new(i),
            }
        })
        .collect()
}

/// Group names ordered by byte, as SQLite and the memory store order them.
const SERIES: SeriesSql<'static> = SeriesSql {
    table: "tollgate_spend",
    mark: '$',
    collate: " COLLATE \"C\"",
};

fn refs(args: &Params) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| &**a as &(dyn ToSql + Sync))
        .collect::<Vec<_>>()
}

impl PostgresSpendStore {
    /// Connects to `url` with the default [`PostgresOptions`] and migrates
    /// the spend schema.
    pub async fn connect(url: &str) -> Result<Self, SpendError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options` (its own pool of `pool_size` connections) and
    /// migrates the spend schema.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, SpendError> {
        let crate::keys::postgres::Connection { pool, name, .. } =
            crate::keys::postgres::pool(url, &options).map_err(SpendError::new)?;
        let store = PostgresSpendStore {
            pool,
            name,
            timeout: options.timeout * 4,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// An error of the store: permanent for errors of the data.
    fn err(&self, e: impl fmt::Display) -> SpendError {
        SpendError::new(format!("spend store `{}`: {e}", self.name))
    }

    fn pg(&self, e: tokio_postgres::Error) -> SpendError {
        let permanent = e
            .code()
            .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"));
        let message = format!("spend store `{}`: {e}", self.name);
        if permanent {
            SpendError::permanent(message)
        } else {
            SpendError::new(message)
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, SpendError> {
        self.pool
            .get()
            .await
            .map_err(|e| self.err(crate::keys::postgres::Causes(&e)))
    }

    /// Runs `f` bounded by the store's timeout (a timeout may be tried again).
    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, SpendError>>,
    ) -> Result<T, SpendError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(self.err(format!("no answer within {} ms", self.timeout.as_millis())))
            })
    }

    async fn migrate(&self) -> Result<(), SpendError> {
        let mut client = self.client().await?;
        migrate(&mut client, "spend", MIGRATIONS, &self.name)
            .await
            .map_err(|e| match e {
                MigrateError::Newer { current, latest } => SpendError::permanent(format!(
                    "spend store `{}`: the database has spend schema version {current}, newer than this build knows ({latest}); use a newer tollgate",
                    self.name
                )),
                MigrateError::Pg(e) => self.pg(e),
                MigrateError::Step(v, e) => self.err(format!("migration {v}: {e}")),
            })
    }

    /// The spend schema's version in the database.
    pub async fn schema_version(&self) -> Result<i32, SpendError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT version FROM tollgate_schema WHERE component = 'spend'",
                &[],
            )
            .await
            .map_err(|e| self.pg(e))?;
        Ok(row.get(0))
    }

    /// The plan PostgreSQL picks for a page of `q`, with sequential scans
    /// and bitmap scans priced out (for tests: every page shape must have an
    /// index that returns it in order, without a `Sort`).
    pub async fn page_plan(&self, q: &SpendQuery) -> Result<String, SpendError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.pg(e))?;
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            .await
            .map_err(|e| self.pg(e))?;
        let (sql, args) = page_sql(q);
        let rows = tx
            .query(&format!("EXPLAIN {sql}"), &refs(&args))
            .await
            .map_err(|e| self.pg(e))?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    async fn insert(&self, batch: &[SpendRecord], token: u128) -> Result<(), SpendError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.pg(e))?;
        let fresh = tx
            .execute(
                "INSERT INTO tollgate_spend_batches (token) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&token.to_be_bytes().as_slice()],
            )
            .await
            .map_err(|e| self.pg(e))?;
        if fresh == 0 {
            // Committed by an earlier try whose answer was lost.
            return Ok(());
        }
        let text = |f: fn(&SpendRecord) -> &str| batch.iter().map(f).collect::<Vec<_>>();
        let opt = |f: fn(&SpendRecord) -> Option<&str>| batch.iter().map(f).collect::<Vec<_>>();
        let num = |f: fn(&SpendRecord) -> u64| batch.iter().map(|r| i(f(r))).collect::<Vec<_>>();
        let request_id = text(|r| &r.request_id);
        let model = text(|r| &r.model);
        let key_id = opt(|r| r.key_id.as_deref());
        let team_id = opt(|r| r.team_id.as_deref());
        let user_id = opt(|r| r.user_id.as_deref());
        let end_user = opt(|r| r.end_user.as_deref());
        let model_group = opt(|r| r.model_group.as_deref());
        let deployment = opt(|r| r.deployment.as_deref());
        let served_model = opt(|r| r.served_model.as_deref());
        let prompt = num(|r| r.prompt_tokens);
        let completion = num(|r| r.completion_tokens);
        let cost = num(|r| r.cost);
        let latency = num(|r| r.latency_us);
        let attempts = num(|r| r.attempts as u64);
        let estimated: Vec<bool> = batch.iter().map(|r| r.estimated).collect();
        let status: Vec<i32> = batch.iter().map(|r| r.status as i32).collect();
        let start: Vec<i64> = batch.iter().map(|r| micros(r.start)).collect();
        // unnest WITH ORDINALITY, ordered: ids follow the batch's order.
        tx.execute(
            "INSERT INTO tollgate_spend (request_id, key_id, team_id, model, model_group, deployment, \
             served_model, prompt_tokens, completion_tokens, estimated, cost, status, start_us, \
             latency_us, attempts, user_id, end_user) \
             SELECT a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q FROM unnest(\
             $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
             $8::bigint[], $9::bigint[], $10::boolean[], $11::bigint[], $12::integer[], \
             $13::bigint[], $14::bigint[], $15::bigint[], $16::text[], $17::text[]) WITH ORDINALITY \
             AS t(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, ord) ORDER BY ord",
            &[
                &request_id,
                &key_id,
                &team_id,
                &model,
                &model_group,
                &deployment,
                &served_model,
                &prompt,
                &completion,
                &estimated,
                &cost,
                &status,
                &start,
                &latency,
                &attempts,
                &user_id,
                &end_user,
            ],
        )
        .await
        .map_err(|e| self.pg(e))?;
        if fastrand::u8(..) == 0 {
            tx.execute(
                "DELETE FROM tollgate_spend_batches WHERE at < now() - interval '1 day'",
                &[],
            )
            .await
            .map_err(|e| self.pg(e))?;
        }
        tx.commit().await.map_err(|e| self.pg(e))
    }
}

impl SpendStore for PostgresSpendStore {
    fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
        Box::pin(async move { self.bounded(self.insert(&batch, fastrand::u128(..))).await })
    }

    fn write_once<'a>(&'a self, batch: &'a [SpendRecord], token: u128) -> SpendFuture<'a, ()> {
        Box::pin(self.bounded(self.insert(batch, token)))
    }

    fn query(&self, q: SpendQuery) -> SpendFuture<'_, SpendPage> {
        Box::pin(self.bounded(async move {
            let client = self.client().await?;
            let (sql, args) = page_sql(&q);
            let limit = q.limit.max(1);
            let rows = client
                .query(&sql, &refs(&args))
                .await
                .map_err(|e| self.pg(e))?;
            let mut page = SpendPage::default();
            let mut last = None;
            for r in &rows {
                if page.records.len() == limit {
                    page.next = last;
                    break;
                }
                let (at, record) = row(r).map_err(|e| self.err(e))?;
                page.records.push(record);
                last = Some(at);
            }
            Ok(page)
        }))
    }

    fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
        let since = since.map_or(i64::MIN, micros);
        Box::pin(self.bounded(async move {
            let client = self.client().await?;
            let mut sums = Vec::new();
            for column in ["key_id", "team_id", "user_id", "end_user"] {
                let rows = client
                    .query(
                        &format!(
                            "SELECT {column}, SUM(cost)::BIGINT FROM tollgate_spend \
                             WHERE {column} IS NOT NULL AND start_us >= $1 \
                             GROUP BY {column} HAVING SUM(cost) > 0 ORDER BY {column}"
                        ),
                        &[&since],
                    )
                    .await
                    .map_err(|e| self.pg(e))?;
                sums.push(
                    rows.iter()
                        .map(|r| (r.get::<_, String>(0), u(r.get(1))))
                        .collect::<Vec<(String, Micros)>>(),
                );
            }
            let global: i64 = client
                .query_one(
                    "SELECT COALESCE(SUM(cost), 0)::BIGINT FROM tollgate_spend WHERE start_us >= $1",
                    &[&since],
                )
                .await
                .map_err(|e| self.pg(e))?
                .get(0);
            let end_users = sums.pop().unwrap_or_default();
            let users = sums.pop().unwrap_or_default();
            let teams = sums.pop().unwrap_or_default();
            let keys = sums.pop().unwrap_or_default();
            Ok(SpendTotals {
                keys,
                teams,
                users,
                end_users,
                global: u(global),
            })
        }))
    }

    fn series(&self, q: SeriesQuery) -> SpendFuture<'_, Vec<Series>> {
        Box::pin(self.bounded(async move {
            let (first, _) = q
                .buckets()
                .map_err(|e| SpendError::permanent(e.to_string()))?;
            let client = self.client().await?;
            let (sql, args) = SERIES.rank(&q);
            let ranked = client
                .query(&sql, &refs(&values(args)))
                .await
                .map_err(|e| self.pg(e))?
                .iter()
                .map(|r| r.get::<_, Option<String>>(0))
                .collect();
            let named = series::named(ranked);
            let (sql, args) = SERIES.sums(&q, &named, first);
            let rows = client
                .query(&sql, &refs(&values(args)))
                .await
                .map_err(|e| self.pg(e))?;
            let rows = rows
                .iter()
                .map(|r| {
                    let n = |i: usize| u(r.get::<_, Option<i64>>(i).unwrap_or(0));
                    Ok(SeriesRow {
                        name: series::row_name(i64::from(r.get::<_, i32>(0)), r.get(1))?,
                        bucket_us: r.get(2),
                        cost: n(3),
                        requests: n(4),
                        prompt_tokens: n(5),
                        completion_tokens: n(6),
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| self.err(e))?;
            series::assemble(&named, rows).map_err(|e| self.err(e))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::spend::tests::{contract, page_shapes, same_history_as_the_memory_store};
    use crate::keys::postgres::tests::test_db;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_store_keeps_the_contract_beside_the_key_store() {
        let db = test_db("spend_contract").await;
        // Two replicas start together with the key store: each component
        // migrates once, under the same lock.
        let (a, b, keys) = tokio::join!(
            PostgresSpendStore::connect(&db.url),
            PostgresSpendStore::connect(&db.url),
            crate::keys::PostgresStore::connect(&db.url),
        );
        let (a, b, keys) = (a.unwrap(), b.unwrap(), keys.unwrap());
        assert_eq!(
            a.schema_version().await.unwrap(),
            MIGRATIONS.last().unwrap().0
        );
        assert_eq!(
            keys.schema_version().await.unwrap(),
            crate::keys::postgres::MIGRATIONS.last().unwrap().0
        );
        contract(&a).await;
        // The other replica reads the same history.
        same_history_as_the_memory_store(&b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_tried_again_with_its_token_is_stored_once() {
        let db = test_db("spend_token").await;
        let store = PostgresSpendStore::connect(&db.url).await.unwrap();
        let batch: Vec<SpendRecord> = (0..3)
            .map(|n| {
                let mut r = SpendRecord::new(
                    format!("q{n}"),
                    "m",
                    Timestamp::from_second(1_700_000_000 + n).unwrap(),
                );
                r.cost = 5;
                r
            })
            .collect();
        store.write_once(&batch, 42).await.unwrap();
        store.write_once(&batch, 42).await.unwrap();
        assert_eq!(store.totals(None).await.unwrap().global, 15);
        store.write_once(&batch, 43).await.unwrap();
        assert_eq!(store.totals(None).await.unwrap().global, 30);
        // A record the database refuses (a NUL byte in text) is permanent.
        let mut bad = batch[0].clone();
        bad.request_id = "a\0b".into();
        let e = store.write(vec![bad]).await.unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert_eq!(store.totals(None).await.unwrap().global, 30);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_page_is_read_from_an_index_never_sorted() {
        let db = test_db("spend_plan").await;
        let store = PostgresSpendStore::connect(&db.url).await.unwrap();
        for q in page_shapes() {
            let plan = store.page_plan(&q).await.unwrap();
            assert!(plan.contains("Index Scan"), "{q:?}: {plan}");
            assert!(!plan.contains("Sort"), "{q:?} sorts: {plan}");
        }
    }

    /// Both queries of a series read the range (or the filtered key, team
    /// or model within it) from an index, with sequential scans priced out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_series_query_reads_an_index() {
        use crate::budget::{Bucket, GroupBy};
        let db = test_db("spend_series_plan").await;
        let store = PostgresSpendStore::connect(&db.url).await.unwrap();
        let mut client = store.client().await.unwrap();
        let tx = client.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL enable_seqscan = off")
            .await
            .unwrap();
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let end: Timestamp = "2026-01-31T00:00:00Z".parse().unwrap();
        for group_by in GroupBy::ALL {
            for (key, team, model) in [
                (None, None, None),
                (Some("k"), None, None),
                (None, Some("t"), None),
                (None, None, Some("m")),
            ] {
                let q = SeriesQuery {
                    key_id: key.map(Into::into),
                    team_id: team.map(Into::into),
                    model: model.map(Into::into),
                    ..SeriesQuery::new(group_by, Bucket::Day, start, end)
                };
                let (rank, rank_args) = SERIES.rank(&q);
                let (sums, sums_args) = SERIES.sums(&q, &[Some("a".into()), None], start);
                for (sql, args) in [(rank, rank_args), (sums, sums_args)] {
                    let plan = tx
                        .query(&format!("EXPLAIN {sql}"), &refs(&values(args)))
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect::<Vec<_>>()
                        .join("\n");
                    assert!(plan.contains("Index"), "{q:?}: {plan}");
                    assert!(!plan.contains("Seq Scan"), "{q:?}: {plan}");
                }
            }
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_is_a_retryable_error_naming_no_password() {
        // Nothing listens on port 1 of 127.0.0.1.
        let e = PostgresSpendStore::connect_with(
            "postgres://tollgate:s3cret@127.0.0.1:1/db",
            PostgresOptions {
                timeout: Duration::from_millis(500),
                ..PostgresOptions::default()
            },
        )
        .await
        .unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1/db"), "{e}");
    }
}
