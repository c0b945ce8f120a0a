//! [`PostgresStore`]: keys and teams in PostgreSQL, shared by several
//! gateway replicas, with a change feed that keeps every replica's
//! [`Keyring`] in step.
//!
//! One process is best served by the embedded `SqliteStore`; several
//! replicas behind a load balancer share one PostgreSQL database instead, so
//! a key made through one replica's admin API works on all of them and a
//! revoke holds everywhere.
//!
//! - **Driver**: tokio-postgres over a deadpool pool (connections are checked
//!   before reuse and replaced when the server restarted; connect, wait and
//!   recycle are bounded by `timeout`, so the admin API answers 503
//!   `state_unavailable` instead of hanging while the database is away).
//!   TLS as libpq's `sslmode` and `sslrootcert` in the URL say (`prefer`
//!   by default: encrypted when the server offers it), over rustls
//!   (`prefer` and `require` check the certificate only with `sslrootcert`;
//!   `verify-ca` checks that it chains to a trusted CA, `verify-full` also
//!   that it names the host).
//! - **Schema**: numbered [`MIGRATIONS`], each in its own transaction under
//!   an advisory lock (replicas starting together migrate once), recorded in
//!   `tollgate_schema` (`component = 'keys'`). A database written by a newer
//!   build is refused rather than misread. Only key hashes are stored.
//! - **Change feed**: a trigger on `tollgate_keys` and `tollgate_teams`
//!   numbers every change (`tollgate_change_counter`, whose row lock orders
//!   concurrent writers), logs it in `tollgate_changes` (the last 10 000 are
//!   kept) and sends `NOTIFY tollgate_keys` in the same transaction, so edits
//!   made with `psql` propagate too. [`PostgresStore::follow`] runs a
//!   listener on its own connection and, whatever it hears, a poll of the
//!   log every `poll` interval (500 ms by default): each round reads the
//!   changes after the last one applied, reloads those keys and teams, and
//!   hands them to [`Keyring::apply`] (a team no longer there was deleted,
//!   and its keys with it). A lost listener connection is
//!   re-opened with backoff while the poll carries on; a replica further
//!   behind than the kept log reloads everything.
//!
//! ```no_run
//! use std::time::Duration;
//! use tollgate::keys::{Keyring, PostgresStore};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::connect("postgres://postgres@127.0.0.1:5432/tollgate").await?;
//! let keyring = Keyring::builder(store.clone()).build().await?;
//! // Changes made by other replicas reach `keyring` within `poll`, usually at once.
//! let _feed = store.follow(&keyring, Duration::from_millis(500));
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::keyring::{Change, Keyring, WeakKeyring};
use super::record::{
    CustomerRecord, KeyRecord, Limits, TeamRecord, UserRecord, members_from_json, members_to_json,
};
use super::store::{KeyStore, Snapshot, StoreError, StoreFuture};
use super::token::KeyHash;

mod tls;

/// The channel the change trigger notifies and followers listen on.
pub const CHANNEL: &str = "tollgate_keys";

/// How many changes the log keeps; a follower further behind reloads all.
pub const KEPT_CHANGES: i64 = 10_000;

/// The schema's migrations: `(version, SQL)`, in order.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE tollgate_teams (
            id            TEXT PRIMARY KEY,
            alias         TEXT,
            grants        JSONB NOT NULL,
            blocked       BOOLEAN NOT NULL DEFAULT false,
            rpm_limit     BIGINT,
            tpm_limit     BIGINT,
            max_budget    DOUBLE PRECISION,
            budget_period TEXT,
            weight        BIGINT NOT NULL DEFAULT 1,
            metadata      JSONB NOT NULL DEFAULT '{}',
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL
        );
        CREATE TABLE tollgate_keys (
            id            TEXT PRIMARY KEY,
            hash          BYTEA NOT NULL,
            alias         TEXT,
            team_id       TEXT,
            user_id       TEXT,
            grants        JSONB NOT NULL,
            expires_at    BIGINT,
            blocked       BOOLEAN NOT NULL DEFAULT false,
            rpm_limit     BIGINT,
            tpm_limit     BIGINT,
            max_budget    DOUBLE PRECISION,
            budget_period TEXT,
            weight        BIGINT NOT NULL DEFAULT 1,
            metadata      JSONB NOT NULL DEFAULT '{}',
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL
        );
        CREATE INDEX tollgate_keys_by_team ON tollgate_keys (team_id);",
    ),
    (
        2,
        "CREATE TABLE tollgate_change_counter (
            singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
            version   BIGINT NOT NULL
        );
        INSERT INTO tollgate_change_counter (singleton, version) VALUES (true, 0);
        CREATE TABLE tollgate_changes (
            version BIGINT PRIMARY KEY,
            kind    TEXT NOT NULL,
            item_id TEXT NOT NULL,
            at      TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE FUNCTION tollgate_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v    BIGINT;
            kind TEXT := CASE TG_TABLE_NAME WHEN 'tollgate_keys' THEN 'key' ELSE 'team' END;
            ids  TEXT[];
            item TEXT;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                ids := ARRAY[OLD.id];
            ELSIF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
                ids := ARRAY[OLD.id, NEW.id];
            ELSE
                ids := ARRAY[NEW.id];
            END IF;
            FOREACH item IN ARRAY ids LOOP
                UPDATE tollgate_change_counter SET version = version + 1 RETURNING version INTO v;
                INSERT INTO tollgate_changes (version, kind, item_id) VALUES (v, kind, item);
                PERFORM pg_notify('tollgate_keys', v::text);
            END LOOP;
            DELETE FROM tollgate_changes WHERE version <= v - 10000;
            RETURN NULL;
        END $$;
        CREATE TRIGGER tollgate_keys_changed AFTER INSERT OR UPDATE OR DELETE ON tollgate_keys
            FOR EACH ROW EXECUTE FUNCTION tollgate_record_change();
        CREATE TRIGGER tollgate_teams_changed AFTER INSERT OR UPDATE OR DELETE ON tollgate_teams
            FOR EACH ROW EXECUTE FUNCTION tollgate_record_change();",
    ),
    // Users and customers (end users), in the change feed as `user` and
    // `customer` (the kind is the trigger's argument).
    (
        3,
        "CREATE TABLE tollgate_users (
            id            TEXT PRIMARY KEY,
            email         TEXT,
            alias         TEXT,
            role          TEXT,
            max_budget    DOUBLE PRECISION,
            budget_period TEXT,
            metadata      JSONB NOT NULL DEFAULT '{}',
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL
        );
        CREATE TABLE tollgate_customers (
            id            TEXT PRIMARY KEY,
            alias         TEXT,
            blocked       BOOLEAN NOT NULL DEFAULT false,
            max_budget    DOUBLE PRECISION,
            budget_period TEXT,
            metadata      JSONB NOT NULL DEFAULT '{}',
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL
        );
        CREATE INDEX tollgate_keys_by_user ON tollgate_keys (user_id);
        CREATE FUNCTION tollgate_record_change_as() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v    BIGINT;
            kind TEXT := TG_ARGV[0];
            ids  TEXT[];
            item TEXT;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                ids := ARRAY[OLD.id];
            ELSIF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
                ids := ARRAY[OLD.id, NEW.id];
            ELSE
                ids := ARRAY[NEW.id];
            END IF;
            FOREACH item IN ARRAY ids LOOP
                UPDATE tollgate_change_counter SET version = version + 1 RETURNING version INTO v;
                INSERT INTO tollgate_changes (version, kind, item_id) VALUES (v, kind, item);
                PERFORM pg_notify('tollgate_keys', v::text);
            END LOOP;
            DELETE FROM tollgate_changes WHERE version <= v - 10000;
            RETURN NULL;
        END $$;
        CREATE TRIGGER tollgate_users_changed AFTER INSERT OR UPDATE OR DELETE ON tollgate_users
            FOR EACH ROW EXECUTE FUNCTION tollgate_record_change_as('user');
        CREATE TRIGGER tollgate_customers_changed AFTER INSERT OR UPDATE OR DELETE ON tollgate_customers
            FOR EACH ROW EXECUTE FUNCTION tollgate_record_change_as('customer');",
    ),
    // Team members (LiteLLM's `members_with_roles`): a JSON list in the
    // team's row, so the team's trigger carries member changes too.
    (
        4,
        "ALTER TABLE tollgate_teams ADD COLUMN members JSONB NOT NULL DEFAULT '[]';",
    ),
];

/// A pool of connections to `url` as the stores use it (keepalive,
/// `application_name=tollgate`, connections checked before reuse, every
/// wait bounded by `options.timeout`, TLS as the URL's `sslmode` and
/// `sslrootcert` say: see [`tls`]), its configuration and TLS connector
/// (for the change listener's own connection), and the database's name
/// without credentials. Errors name no password.
pub(crate) fn pool(url: &str, options: &PostgresOptions) -> Result<Connection, String> {
    let tls::Target {
        mut config,
        tls,
        mode,
    } = tls::target(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(options.timeout);
    }
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    if config.get_application_name().is_none() {
        config.application_name("tollgate");
    }
    let name: Arc<str> = describe(&config).into();
    tracing::debug!(database = %name, sslmode = ?mode, "PostgreSQL pool");
    let manager = Manager::from_config(
        config.clone(),
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.timeout))
        .create_timeout(Some(options.timeout))
        .recycle_timeout(Some(options.timeout))
        .build()
        .map_err(|e| format!("PostgreSQL `{name}`: {e}"))?;
    Ok(Connection {
        pool,
        config: Arc::new(config),
        tls,
        name,
    })
}

/// What [`pool`] opens.
pub(crate) struct Connection {
    pub pool: Pool,
    pub config: Arc<tokio_postgres::Config>,
    pub tls: MakeRustlsConnect,
    /// `host:port/db`, for messages: never the password.
    pub name: Arc<str>,
}

/// An error and its causes, `: `-joined. tokio-postgres and deadpool keep
/// the reason a connection failed (rustls' `invalid peer certificate:
/// UnknownIssuer`, a refused connection) in `source()` only.
pub(crate) struct Causes<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !said.contains(&text) {
                write!(f, ": {text}")?;
                said.push_str(&text);
            }
            next = cause.source();
        }
        Ok(())
    }
}

/// Checks a connection string as [`PostgresStore::connect`] would read it
/// (`sslmode`, `sslrootcert` and its file included), without connecting.
/// The error names no password.
pub fn check_url(url: &str) -> Result<(), String> {
    tls::target(url).map(drop)
}

/// An arbitrary constant: the advisory lock replicas take to migrate one at
/// a time (every component's migrations take it: the key store's and the
/// spend store's).
const MIGRATION_LOCK: i64 = 0x7467_6b65_7973; // "tgkeys"

/// Why [`migrate`] stopped.
pub(crate) enum MigrateError {
    /// The database holds a newer schema of the component than this build.
    Newer { current: i32, latest: i32 },
    /// PostgreSQL failed before any migration ran.
    Pg(tokio_postgres::Error),
    /// PostgreSQL failed applying migration `.0`.
    Step(i32, tokio_postgres::Error),
}

/// Brings `component`'s schema up to the last of `migrations`, one
/// migration per transaction under [`MIGRATION_LOCK`] (replicas starting
/// together migrate once), its version kept in `tollgate_schema`; a newer
/// schema is refused. Shared by the key store and the spend store.
pub(crate) async fn migrate(
    client: &mut deadpool_postgres::Object,
    component: &str,
    migrations: &[(i32, &str)],
    database: &str,
) -> Result<(), MigrateError> {
    let latest = migrations.last().map_or(0, |m| m.0);
    loop {
        let tx = client.transaction().await.map_err(MigrateError::Pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(MigrateError::Pg)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS tollgate_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        )
        .await
        .map_err(MigrateError::Pg)?;
        let current: i32 = tx
            .query_opt(
                "SELECT version FROM tollgate_schema WHERE component = $1",
                &[&component],
            )
            .await
            .map_err(MigrateError::Pg)?
            .map_or(0, |r| r.get(0));
        if current > latest {
            return Err(MigrateError::Newer { current, latest });
        }
        let Some(&(v, sql)) = migrations.iter().find(|m| m.0 > current) else {
            return Ok(());
        };
        let step = |e| MigrateError::Step(v, e);
        tx.batch_execute(sql).await.map_err(step)?;
        tx.execute(
            "INSERT INTO tollgate_schema (component, version) VALUES ($1, $2)
             ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
            &[&component, &v],
        )
        .await
        .map_err(step)?;
        tx.commit().await.map_err(step)?;
        tracing::info!(database, component, version = v, "schema migrated");
    }
}

/// Settings of a [`PostgresStore`].
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Connections in the pool (default 8).
    pub pool_size: usize,
    /// Bound on connecting, waiting for a pooled connection and checking one
    /// before reuse (default 5 s): past it a write fails (503 at the admin API).
    pub timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Keys and teams in PostgreSQL (see the module docs).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustlsConnect,
    /// `host:port/db`, for messages: never the password.
    name: Arc<str>,
    /// The change version the last `load` saw (-1: none yet).
    loaded: Arc<AtomicI64>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.name)
            .finish_non_exhaustive()
    }
}

/// A name for the database without its credentials: `host:port/db`.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`, or a key=value
    /// connection string) with the default [`PostgresOptions`] and migrates.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options` and migrates the schema.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        let Connection {
            pool,
            config,
            tls,
            name,
        } = pool(url, &options).map_err(StoreError::new)?;
        let store = PostgresStore {
            pool,
            config,
            tls,
            name,
            loaded: Arc::new(AtomicI64::new(-1)),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// One row of `table` by its id, as `row` reads it (`None`: no such row).
    fn get_one<T: Send + 'static>(
        &self,
        id: &str,
        columns: &'static str,
        table: &'static str,
        row: fn(&Row) -> Result<T, String>,
    ) -> StoreFuture<'_, Option<T>> {
        let id = id.to_owned();
        Box::pin(async move {
            let client = self.client().await?;
            let found = client
                .query_opt(
                    &format!("SELECT {columns} FROM {table} WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(|e| self.err(e))?;
            found.as_ref().map(row).transpose().map_err(|e| self.err(e))
        })
    }

    fn err(&self, e: impl fmt::Display) -> StoreError {
        StoreError::new(format!("key store `{}`: {e}", self.name))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.err(Causes(&e)))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        migrate(&mut client, "keys", MIGRATIONS, &self.name)
            .await
            .map_err(|e| match e {
                MigrateError::Newer { current, latest } => self.err(format!(
                    "the database has schema version {current}, newer than this build knows ({latest}); use a newer tollgate"
                )),
                MigrateError::Pg(e) => self.err(Causes(&e)),
                MigrateError::Step(v, e) => self.err(format!("migration {v}: {e}")),
            })
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT version FROM tollgate_schema WHERE component = 'keys'",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// The number of the newest change in the database.
    pub async fn change_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT version FROM tollgate_change_counter", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get(0))
    }

    /// Everything, and the change version it is consistent with (one
    /// repeatable-read transaction).
    pub async fn snapshot(&self) -> Result<(i64, Snapshot), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.err(e))?;
        let version: i64 = tx
            .query_one("SELECT version FROM tollgate_change_counter", &[])
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        let teams = tx
            .query(&format!("SELECT {TEAM_COLUMNS} FROM tollgate_teams"), &[])
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(team_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let keys = tx
            .query(&format!("SELECT {KEY_COLUMNS} FROM tollgate_keys"), &[])
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(key_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let users = tx
            .query(&format!("SELECT {USER_COLUMNS} FROM tollgate_users"), &[])
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(user_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let customers = tx
            .query(
                &format!("SELECT {CUSTOMER_COLUMNS} FROM tollgate_customers"),
                &[],
            )
            .await
            .map_err(|e| self.err(e))?
            .iter()
            .map(customer_row)
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok((
            version,
            Snapshot {
                keys,
                teams,
                users,
                customers,
            },
        ))
    }

    /// Starts following the database's changes into `keyring` (built from
    /// this store): a listener on its own connection wakes a catch-up at
    /// once; a poll every `poll` catches up whatever the listener missed or
    /// while it is reconnecting. Both run on the current tokio runtime and
    /// stop by themselves once `keyring` is dropped everywhere (or on
    /// [`Follower::stop`]).
    pub fn follow(&self, keyring: &Keyring, poll: Duration) -> Follower {
        self.follow_with(keyring, poll, true)
    }

    /// As [`follow`](Self::follow); with `listen = false`, only the poll
    /// (what a replica falls back to while its listener is down).
    pub fn follow_with(&self, keyring: &Keyring, poll: Duration, listen: bool) -> Follower {
        let state = Arc::new(FeedState {
            version: AtomicI64::new(self.loaded.load(Ordering::SeqCst)),
            listening: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            wake: Notify::new(),
            stop: Notify::new(),
        });
        let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
        let listener = listen.then(|| {
            tokio::spawn(listen_loop(
                self.config.clone(),
                self.tls.clone(),
                self.name.clone(),
                state.clone(),
                alive_rx,
            ))
        });
        let main = tokio::spawn(follow_loop(
            self.clone(),
            keyring.downgrade(),
            poll.max(Duration::from_millis(10)),
            state.clone(),
            alive_tx,
        ));
        Follower {
            state,
            main,
            listener,
        }
    }

    /// One catch-up round: reads the changes after `state.version`, applies
    /// them to `ring`, returns how many changes were applied.
    async fn catch_up(&self, ring: &Keyring, state: &FeedState) -> Result<usize, StoreError> {
        let from = state.version.load(Ordering::SeqCst);
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.version, ch.version, ch.kind, ch.item_id
                 FROM tollgate_change_counter c
                 LEFT JOIN tollgate_changes ch ON ch.version > $1
                 ORDER BY ch.version LIMIT 1001",
                &[&from],
            )
            .await
            .map_err(|e| self.err(e))?;
        let counter: i64 = rows.first().map_or(0, |r| r.get(0));
        let changes: Vec<(i64, String, String)> = rows
            .iter()
            .filter_map(|r| Some((r.get::<_, Option<i64>>(1)?, r.get(2), r.get(3))))
            .collect();
        let gap = changes.first().is_some_and(|c| c.0 != from + 1)
            || changes.len() > 1000
            || counter < from
            || (changes.is_empty() && counter > from)
            || from < 0;
        if gap {
            drop(client);
            let (version, snapshot) = self.snapshot().await?;
            ring.apply(Change::Reload(snapshot))
                .map_err(|e| self.err(e.message()))?;
            state.version.store(version, Ordering::SeqCst);
            return Ok((version - from.max(0)).max(0) as usize);
        }
        let Some(last) = changes.last().map(|c| c.0) else {
            return Ok(0);
        };
        let mut keys = BTreeSet::new();
        let mut teams = BTreeSet::new();
        let (mut users, mut customers) = (BTreeSet::new(), BTreeSet::new());
        for (_, kind, id) in &changes {
            match kind.as_str() {
                "team" => teams.insert(id.clone()),
                "user" => users.insert(id.clone()),
                "customer" => customers.insert(id.clone()),
                _ => keys.insert(id.clone()),
            };
        }
        // Users before keys: a key made for a new user links to it; teams
        // before keys, for the same reason.
        let (c, r) = (&client, ring);
        self.reload(
            c,
            r,
            users,
            USER_COLUMNS,
            "tollgate_users",
            user_row,
            Change::User,
            Change::UserDeleted,
        )
        .await?;
        self.reload(
            c,
            r,
            customers,
            CUSTOMER_COLUMNS,
            "tollgate_customers",
            customer_row,
            Change::Customer,
            Change::CustomerDeleted,
        )
        .await?;
        // A team changed and no longer there was deleted, and its keys with it.
        self.reload(
            c,
            r,
            teams,
            TEAM_COLUMNS,
            "tollgate_teams",
            team_row,
            Change::Team,
            Change::TeamDeleted,
        )
        .await?;
        self.reload(
            c,
            r,
            keys,
            KEY_COLUMNS,
            "tollgate_keys",
            key_row,
            Change::Key,
            Change::KeyDeleted,
        )
        .await?;
        state.version.store(last, Ordering::SeqCst);
        Ok(changes.len())
    }
}

/// A record the change feed reloads by id.
trait Identified {
    fn id(&self) -> &str;
}

impl Identified for KeyRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Identified for TeamRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Identified for UserRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

impl Identified for CustomerRecord {
    fn id(&self) -> &str {
        &self.id
    }
}

impl PostgresStore {
    /// Part of a catch-up round: reloads the rows of `table` whose ids
    /// changed and applies each to `ring` (`changed`); an id no longer in the
    /// table was deleted (`deleted`).
    #[allow(clippy::too_many_arguments)]
    async fn reload<T: Identified>(
        &self,
        client: &deadpool_postgres::Object,
        ring: &Keyring,
        mut ids: BTreeSet<String>,
        columns: &str,
        table: &str,
        row: fn(&Row) -> Result<T, String>,
        changed: fn(T) -> Change,
        deleted: fn(String) -> Change,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let wanted: Vec<String> = ids.iter().cloned().collect();
        let rows = client
            .query(
                &format!("SELECT {columns} FROM {table} WHERE id = ANY($1)"),
                &[&wanted],
            )
            .await
            .map_err(|e| self.err(e))?;
        for r in &rows {
            let record = row(r).map_err(|e| self.err(e))?;
            ids.remove(record.id());
            ring.apply(changed(record))
                .map_err(|e| self.err(e.message()))?;
        }
        for gone in ids {
            ring.apply(deleted(gone))
                .map_err(|e| self.err(e.message()))?;
        }
        Ok(())
    }
}

struct FeedState {
    /// The last change applied.
    version: AtomicI64,
    /// The listener is subscribed right now.
    listening: AtomicBool,
    /// The last catch-up round succeeded.
    healthy: AtomicBool,
    wake: Notify,
    stop: Notify,
}

/// The running change feed of one [`Keyring`] (see [`PostgresStore::follow`]).
/// Dropping it leaves the feed running; it ends with the keyring.
pub struct Follower {
    state: Arc<FeedState>,
    main: tokio::task::JoinHandle<()>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for Follower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower")
            .field("version", &self.version())
            .field("listening", &self.is_listening())
            .finish()
    }
}

impl Follower {
    /// The number of the last change applied.
    pub fn version(&self) -> i64 {
        self.state.version.load(Ordering::SeqCst)
    }

    /// Whether the listener is subscribed right now.
    pub fn is_listening(&self) -> bool {
        self.state.listening.load(Ordering::SeqCst)
    }

    /// Whether the last catch-up round reached the database.
    pub fn is_healthy(&self) -> bool {
        self.state.healthy.load(Ordering::SeqCst)
    }

    /// Stops the feed (the keyring keeps what it has).
    pub fn stop(&self) {
        self.state.stop.notify_one();
        if let Some(l) = &self.listener {
            l.abort();
        }
    }

    /// Whether the feed has stopped.
    pub fn is_finished(&self) -> bool {
        self.main.is_finished()
    }
}

async fn follow_loop(
    store: PostgresStore,
    ring: WeakKeyring,
    poll: Duration,
    state: Arc<FeedState>,
    // Dropped when this loop ends: the listener stops with it.
    _alive: tokio::sync::watch::Sender<()>,
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.wake.notified() => {}
            _ = state.stop.notified() => return,
        }
        let Some(keyring) = ring.upgrade() else {
            return;
        };
        match store.catch_up(&keyring, &state).await {
            Ok(n) => {
                if !state.healthy.swap(true, Ordering::SeqCst) {
                    tracing::info!(database = %store.name, "key change feed reaches the database again");
                }
                if n > 0 {
                    tracing::debug!(
                        changes = n,
                        version = state.version.load(Ordering::SeqCst),
                        "key changes applied"
                    );
                }
            }
            Err(e) => {
                if state.healthy.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "key change feed cannot read the database; this replica keeps its keys and retries");
                }
            }
        }
    }
}

async fn listen_loop(
    config: Arc<tokio_postgres::Config>,
    tls: MakeRustlsConnect,
    name: Arc<str>,
    state: Arc<FeedState>,
    mut alive: tokio::sync::watch::Receiver<()>,
) {
    let mut config = (*config).clone();
    config.application_name("tollgate-listener");
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let (client, mut connection) = config.connect(tls.clone()).await?;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(_))) => {
                            if tx.send(()).is_err() {
                                return Ok(());
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    }
                }
            });
            let subscribed = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
            if let Err(e) = subscribed {
                driver.abort();
                return Err(e);
            }
            state.listening.store(true, Ordering::SeqCst);
            tracing::info!(database = %name, channel = CHANNEL, "key change listener subscribed");
            // Whatever happened while unsubscribed: catch up now.
            state.wake.notify_one();
            while rx.recv().await.is_some() {
                state.wake.notify_one();
            }
            drop(client);
            match driver.await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        };
        let result = tokio::select! {
            r = session => r,
            _ = alive.changed() => return,
        };
        let was = state.listening.swap(false, Ordering::SeqCst);
        match result {
            Err(e) => {
                tracing::warn!(database = %name, error = %Causes(&e), "key change listener lost; the poll carries on while it reconnects")
            }
            Ok(()) => {
                tracing::warn!(database = %name, "key change listener closed; the poll carries on while it reconnects")
            }
        }
        if was {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = alive.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

const KEY_COLUMNS: &str = "id, hash, alias, team_id, user_id, grants, expires_at, blocked, rpm_limit, tpm_limit, max_budget, budget_period, weight, metadata, created_at, updated_at";
const TEAM_COLUMNS: &str = "id, alias, grants, blocked, rpm_limit, tpm_limit, max_budget, budget_period, weight, metadata, created_at, updated_at, members";

fn u64_of(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn i64_of(v: Option<u64>) -> Option<i64> {
    v.map(|v| v.min(i64::MAX as u64) as i64)
}

fn list(v: Value) -> Result<Vec<String>, String> {
    serde_json::from_value(v).map_err(|e| format!("grants are not a list of names: {e}"))
}

fn map(v: Value) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m),
        _ => Err("metadata is not a JSON object".into()),
    }
}

fn limits(row: &Row, at: usize) -> Result<Limits, String> {
    let period: Option<String> = row.try_get(at + 3).map_err(|e| e.to_string())?;
    Ok(Limits {
        rpm: u64_of(row.try_get(at).map_err(|e| e.to_string())?),
        tpm: u64_of(row.try_get(at + 1).map_err(|e| e.to_string())?),
        max_budget: row.try_get(at + 2).map_err(|e| e.to_string())?,
        budget_period: period.map(|p| p.parse()).transpose()?,
        weight: row
            .try_get::<_, i64>(at + 4)
            .map_err(|e| e.to_string())?
            .clamp(1, i64::from(u32::MAX)) as u32,
    })
}

fn key_row(row: &Row) -> Result<KeyRecord, String> {
    let get = |e: tokio_postgres::Error| e.to_string();
    let hash: Vec<u8> = row.try_get(1).map_err(get)?;
    Ok(KeyRecord {
        id: row.try_get(0).map_err(get)?,
        hash: KeyHash::from_bytes(&hash).ok_or("a key hash is not 32 bytes")?,
        alias: row.try_get(2).map_err(get)?,
        team_id: row.try_get(3).map_err(get)?,
        user_id: row.try_get(4).map_err(get)?,
        grants: list(row.try_get(5).map_err(get)?)?,
        expires_at: u64_of(row.try_get(6).map_err(get)?),
        blocked: row.try_get(7).map_err(get)?,
        limits: limits(row, 8)?,
        metadata: map(row.try_get(13).map_err(get)?)?,
        created_at: u64_of(row.try_get(14).map_err(get)?).unwrap_or(0),
        updated_at: u64_of(row.try_get(15).map_err(get)?).unwrap_or(0),
    })
}

fn team_row(row: &Row) -> Result<TeamRecord, String> {
    let get = |e: tokio_postgres::Error| e.to_string();
    Ok(TeamRecord {
        id: row.try_get(0).map_err(get)?,
        alias: row.try_get(1).map_err(get)?,
        grants: list(row.try_get(2).map_err(get)?)?,
        blocked: row.try_get(3).map_err(get)?,
        limits: limits(row, 4)?,
        metadata: map(row.try_get(9).map_err(get)?)?,
        created_at: u64_of(row.try_get(10).map_err(get)?).unwrap_or(0),
        updated_at: u64_of(row.try_get(11).map_err(get)?).unwrap_or(0),
        members: members_from_json(row.try_get(12).map_err(get)?)?,
    })
}

const USER_COLUMNS: &str =
    "id, email, alias, role, max_budget, budget_period, metadata, created_at, updated_at";
const CUSTOMER_COLUMNS: &str =
    "id, alias, blocked, max_budget, budget_period, metadata, created_at, updated_at";

fn period_of(row: &Row, at: usize) -> Result<Option<super::record::BudgetPeriod>, String> {
    let period: Option<String> = row.try_get(at).map_err(|e| e.to_string())?;
    period.map(|p| p.parse()).transpose()
}

fn user_row(row: &Row) -> Result<UserRecord, String> {
    let get = |e: tokio_postgres::Error| e.to_string();
    Ok(UserRecord {
        id: row.try_get(0).map_err(get)?,
        email: row.try_get(1).map_err(get)?,
        alias: row.try_get(2).map_err(get)?,
        role: row.try_get(3).map_err(get)?,
        max_budget: row.try_get(4).map_err(get)?,
        budget_period: period_of(row, 5)?,
        metadata: map(row.try_get(6).map_err(get)?)?,
        created_at: u64_of(row.try_get(7).map_err(get)?).unwrap_or(0),
        updated_at: u64_of(row.try_get(8).map_err(get)?).unwrap_or(0),
    })
}

fn customer_row(row: &Row) -> Result<CustomerRecord, String> {
    let get = |e: tokio_postgres::Error| e.to_string();
    Ok(CustomerRecord {
        id: row.try_get(0).map_err(get)?,
        alias: row.try_get(1).map_err(get)?,
        blocked: row.try_get(2).map_err(get)?,
        max_budget: row.try_get(3).map_err(get)?,
        budget_period: period_of(row, 4)?,
        metadata: map(row.try_get(5).map_err(get)?)?,
        created_at: u64_of(row.try_get(6).map_err(get)?).unwrap_or(0),
        updated_at: u64_of(row.try_get(7).map_err(get)?).unwrap_or(0),
    })
}

fn upsert(table: &str, columns: &str) -> String {
    let names: Vec<&str> = columns.split(", ").collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let set: Vec<String> = names[1..]
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} ({columns}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
        params.join(", "),
        set.join(", ")
    )
}

impl KeyStore for PostgresStore {
    fn load(&self) -> StoreFuture<'_, Snapshot> {
        Box::pin(async move {
            let (version, snapshot) = self.snapshot().await?;
            self.loaded.store(version, Ordering::SeqCst);
            Ok(snapshot)
        })
    }

    fn put_key(&self, k: KeyRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let grants = serde_json::to_value(&k.grants).map_err(|e| self.err(e))?;
            let metadata = Value::Object(k.metadata.clone());
            let hash = k.hash.as_bytes().to_vec();
            let period = k.limits.budget_period.map(|p| p.stored());
            let weight = i64::from(k.limits.weight);
            let created = i64_of(Some(k.created_at));
            let updated = i64_of(Some(k.updated_at));
            let (expires, rpm, tpm) = (
                i64_of(k.expires_at),
                i64_of(k.limits.rpm),
                i64_of(k.limits.tpm),
            );
            let params: [&(dyn ToSql + Sync); 16] = [
                &k.id,
                &hash,
                &k.alias,
                &k.team_id,
                &k.user_id,
                &grants,
                &expires,
                &k.blocked,
                &rpm,
                &tpm,
                &k.limits.max_budget,
                &period,
                &weight,
                &metadata,
                &created,
                &updated,
            ];
            client
                .execute(&upsert("tollgate_keys", KEY_COLUMNS), &params)
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn get_key(&self, id: &str) -> Option<StoreFuture<'_, Option<KeyRecord>>> {
        Some(self.get_one(id, KEY_COLUMNS, "tollgate_keys", key_row))
    }

    fn get_team(&self, id: &str) -> Option<StoreFuture<'_, Option<TeamRecord>>> {
        Some(self.get_one(id, TEAM_COLUMNS, "tollgate_teams", team_row))
    }

    fn delete_keys(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            // One statement: all or none.
            client
                .execute("DELETE FROM tollgate_keys WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn put_team(&self, t: TeamRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let grants = serde_json::to_value(&t.grants).map_err(|e| self.err(e))?;
            let metadata = Value::Object(t.metadata.clone());
            let period = t.limits.budget_period.map(|p| p.stored());
            let weight = i64::from(t.limits.weight);
            let created = i64_of(Some(t.created_at));
            let updated = i64_of(Some(t.updated_at));
            let (rpm, tpm) = (i64_of(t.limits.rpm), i64_of(t.limits.tpm));
            let members = members_to_json(&t.members);
            let params: [&(dyn ToSql + Sync); 13] = [
                &t.id,
                &t.alias,
                &grants,
                &t.blocked,
                &rpm,
                &tpm,
                &t.limits.max_budget,
                &period,
                &weight,
                &metadata,
                &created,
                &updated,
                &members,
            ];
            client
                .execute(&upsert("tollgate_teams", TEAM_COLUMNS), &params)
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn put_user(&self, u: UserRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let metadata = Value::Object(u.metadata.clone());
            let period = u.budget_period.map(|p| p.stored());
            let (created, updated) = (i64_of(Some(u.created_at)), i64_of(Some(u.updated_at)));
            let params: [&(dyn ToSql + Sync); 9] = [
                &u.id,
                &u.email,
                &u.alias,
                &u.role,
                &u.max_budget,
                &period,
                &metadata,
                &created,
                &updated,
            ];
            client
                .execute(&upsert("tollgate_users", USER_COLUMNS), &params)
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn delete_users(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.err(e))?;
            tx.execute("DELETE FROM tollgate_keys WHERE user_id = ANY($1)", &[&ids])
                .await
                .map_err(|e| self.err(e))?;
            tx.execute("DELETE FROM tollgate_users WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))
        })
    }

    fn put_customer(&self, c: CustomerRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            let metadata = Value::Object(c.metadata.clone());
            let period = c.budget_period.map(|p| p.stored());
            let (created, updated) = (i64_of(Some(c.created_at)), i64_of(Some(c.updated_at)));
            let params: [&(dyn ToSql + Sync); 8] = [
                &c.id,
                &c.alias,
                &c.blocked,
                &c.max_budget,
                &period,
                &metadata,
                &created,
                &updated,
            ];
            client
                .execute(&upsert("tollgate_customers", CUSTOMER_COLUMNS), &params)
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn delete_customers(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .execute("DELETE FROM tollgate_customers WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn get_user(&self, id: &str) -> Option<StoreFuture<'_, Option<UserRecord>>> {
        Some(self.get_one(id, USER_COLUMNS, "tollgate_users", user_row))
    }

    fn get_customer(&self, id: &str) -> Option<StoreFuture<'_, Option<CustomerRecord>>> {
        Some(self.get_one(id, CUSTOMER_COLUMNS, "tollgate_customers", customer_row))
    }

    fn delete_teams(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            // One transaction: the keys and the teams go together or not at
            // all; the trigger logs each deleted row, so followers drop them.
            let tx = client.transaction().await.map_err(|e| self.err(e))?;
            let gone = tx
                .query(
                    "DELETE FROM tollgate_keys WHERE team_id = ANY($1) RETURNING id",
                    &[&ids],
                )
                .await
                .map_err(|e| self.err(e))?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect();
            tx.execute("DELETE FROM tollgate_teams WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(gone)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Reason;
    use crate::keys::record::BudgetPeriod;
    use crate::keys::{KeyUpdate, NewKey, NewTeam, TeamUpdate};

    /// `TOLLGATE_TEST_POSTGRES_URL`, or the local default. Unreachable: the
    /// test fails (never skips).
    fn base_url() -> String {
        std::env::var("TOLLGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// `url` with its database replaced by `db`.
    fn with_db(url: &str, db: &str) -> String {
        let (url, query) = url.split_once('?').map_or((url, ""), |(u, q)| (u, q));
        let rest = url.find("://").map_or(0, |i| i + 3);
        let authority_end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{}/{db}{q}", &url[..authority_end])
    }

    /// A fresh database, dropped (with its connections) when this is dropped.
    pub(crate) struct TestDb {
        pub url: String,
        name: String,
    }

    async fn admin() -> tokio_postgres::Client {
        let base = base_url();
        let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must be reachable at TOLLGATE_TEST_POSTGRES_URL ({}): {e}",
                    describe(&base.parse().unwrap())
                )
            });
        tokio::spawn(conn);
        client
    }

    pub(crate) async fn test_db(tag: &str) -> TestDb {
        let name = format!(
            "tollgate_unit_{tag}_{}_{}",
            std::process::id(),
            fastrand::u32(..)
        );
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb {
            url: with_db(&base_url(), &name),
            name,
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let name = self.name.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = admin()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                });
            })
            .join();
        }
    }

    fn sample_key() -> KeyRecord {
        let mut k = KeyRecord::new("abc", KeyHash::of("abc", "0123456789abcdefgh"));
        k.alias = Some("ci".into());
        k.team_id = Some("t1".into());
        k.grants = vec!["gpt-4o".into(), "openai/*".into()];
        k.expires_at = Some(2_000_000_000);
        k.limits = Limits {
            rpm: Some(60),
            tpm: None,
            max_budget: Some(12.5),
            budget_period: Some(BudgetPeriod::Monthly),
            weight: 3,
        };
        k.metadata.insert("owner".into(), "ops".into());
        k
    }

    #[test]
    fn urls_are_rewritten_and_described_without_credentials() {
        assert_eq!(
            with_db("postgres://u:pw@h:5433/postgres?sslmode=disable", "x"),
            "postgres://u:pw@h:5433/x?sslmode=disable"
        );
        assert_eq!(with_db("postgres://h", "x"), "postgres://h/x");
        let c: tokio_postgres::Config = "postgres://u:s3cret@db.local:6000/keys".parse().unwrap();
        assert_eq!(describe(&c), "db.local:6000/keys");
    }

    #[tokio::test]
    async fn round_trip_survives_reconnect() {
        let db = test_db("roundtrip").await;
        let store = PostgresStore::connect(&db.url).await.unwrap();
        assert_eq!(
            store.schema_version().await.unwrap(),
            MIGRATIONS.last().unwrap().0
        );
        let k = sample_key();
        store.put_key(k.clone()).await.unwrap();
        let mut t = TeamRecord::new("t1");
        t.grants = vec!["cheap".into()];
        t.limits.tpm = Some(1000);
        // A fixed window keeps its anchor across a reconnect.
        t.limits.budget_period = Some(BudgetPeriod::parse_at("3mo", 1_764_000_123).unwrap());
        store.put_team(t.clone()).await.unwrap();
        drop(store);

        let store = PostgresStore::connect(&db.url).await.unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.keys, vec![k.clone()]);
        assert_eq!(snap.teams, vec![t]);
        let mut k2 = k.clone();
        k2.blocked = true;
        k2.limits.max_budget = None;
        store.put_key(k2.clone()).await.unwrap();
        assert_eq!(store.load().await.unwrap().keys, vec![k2]);
        store.delete_keys(vec!["abc".into()]).await.unwrap();
        assert!(store.load().await.unwrap().keys.is_empty());
        // insert, team insert, update, delete: four numbered changes.
        assert_eq!(store.change_version().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn newer_schema_is_refused_and_replicas_migrate_once() {
        let db = test_db("schema").await;
        let (a, b, c) = tokio::join!(
            PostgresStore::connect(&db.url),
            PostgresStore::connect(&db.url),
            PostgresStore::connect(&db.url)
        );
        let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
        let client = a.client().await.unwrap();
        client
            .execute(
                "UPDATE tollgate_schema SET version = 999 WHERE component = 'keys'",
                &[],
            )
            .await
            .unwrap();
        let e = PostgresStore::connect(&db.url).await.unwrap_err();
        assert!(e.to_string().contains("newer than this build"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_fast_and_names_no_password() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = PostgresStore::connect_with(
            &format!("postgres://tg:pAssw0rdN0tSh0wn@127.0.0.1:{port}/x"),
            PostgresOptions {
                pool_size: 1,
                timeout: Duration::from_secs(2),
            },
        )
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}/x")), "{text}");
        assert!(!text.contains("pAssw0rd"), "{text}");
        let e = PostgresStore::connect("postgres://[").await.unwrap_err();
        assert!(
            e.to_string().contains("not a PostgreSQL connection URL"),
            "{e}"
        );
    }

    async fn replica(url: &str) -> (PostgresStore, Keyring) {
        let store = PostgresStore::connect(url).await.unwrap();
        let ring = Keyring::builder(store.clone()).build().await.unwrap();
        (store, ring)
    }

    /// Waits (bounded) until `ok` holds for `ring`; panics naming `what`.
    async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within 5 s: {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn changes_propagate(listen: bool) {
        let db = test_db(if listen { "feed_listen" } else { "feed_poll" }).await;
        let (_s1, one) = replica(&db.url).await;
        let (s2, two) = replica(&db.url).await;
        let feed = s2.follow_with(&two, Duration::from_millis(50), listen);
        if listen {
            eventually("the listener subscribes", || feed.is_listening()).await;
        }
        one.create_team(NewTeam {
            id: Some("ml".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let (key, rec) = one
            .generate(NewKey {
                team_id: Some("ml".into()),
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        eventually("a new key works on the other replica", || {
            two.check(&key).is_ok()
        })
        .await;
        assert_eq!(two.check(&key).unwrap().team().unwrap().id(), "ml");
        one.update_key(
            &rec.id,
            KeyUpdate {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        eventually("a revoke holds on the other replica", || {
            two.check(&key)
                .is_err_and(|e| e.reason() == Reason::KeyRevoked)
        })
        .await;
        one.update_key(
            &rec.id,
            KeyUpdate {
                blocked: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        eventually("a restore holds", || two.check(&key).is_ok()).await;
        one.update_team(
            "ml",
            TeamUpdate {
                rpm: Patch::Set(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        eventually("a team update reaches the key", || {
            two.check(&key)
                .is_ok_and(|k| k.team().is_some_and(|t| t.rpm_limit() == Some(7)))
        })
        .await;
        one.delete_keys(std::slice::from_ref(&rec.id))
            .await
            .unwrap();
        eventually("a delete holds", || {
            two.check(&key)
                .is_err_and(|e| e.reason() == Reason::UnknownKey)
        })
        .await;
        assert_eq!(feed.version(), s2.change_version().await.unwrap());
        assert!(feed.is_healthy());
        feed.stop();
    }

    use crate::keys::Patch;

    #[tokio::test]
    async fn changes_propagate_through_the_listener() {
        changes_propagate(true).await;
    }

    #[tokio::test]
    async fn changes_propagate_through_the_poll_alone() {
        changes_propagate(false).await;
    }

    /// Users and customers made or changed on one replica reach the
    /// other's memory through the feed: a user's budget reaches its keys, a
    /// customer's block holds, and deleting a user takes its keys.
    #[tokio::test]
    async fn users_and_customers_follow_the_feed() {
        use crate::keys::{CustomerUpdate, NewCustomer, NewUser, UserUpdate};
        let db = test_db("people").await;
        let (_s1, one) = replica(&db.url).await;
        let (s2, two) = replica(&db.url).await;
        let feed = s2.follow(&two, Duration::from_millis(50));
        let user = one
            .create_user(NewUser {
                id: Some("ann".into()),
                max_budget: Some(3.0),
                ..Default::default()
            })
            .await
            .unwrap();
        let (key, _) = one
            .generate(NewKey {
                user_id: Some(user.id.clone()),
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        eventually("the user's key carries its budget elsewhere", || {
            two.check(&key).is_ok_and(|k| {
                k.user()
                    .is_some_and(|u| u.budget().map(|b| b.max_usd) == Some(3.0))
            })
        })
        .await;
        one.update_user(
            "ann",
            UserUpdate {
                max_budget: Patch::Set(1.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        eventually("a user's update reaches its key", || {
            two.check(&key).is_ok_and(|k| {
                k.user()
                    .is_some_and(|u| u.budget().map(|b| b.max_usd) == Some(1.0))
            })
        })
        .await;
        one.create_customer(NewCustomer {
            id: "end-1".into(),
            max_budget: Some(0.5),
            ..Default::default()
        })
        .await
        .unwrap();
        eventually("a customer arrives", || two.customer("end-1").is_some()).await;
        one.update_customer(
            "end-1",
            CustomerUpdate {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        eventually("a block holds elsewhere", || {
            two.customer("end-1").is_some_and(|c| c.is_blocked())
        })
        .await;
        one.delete_customers(&["end-1".into()]).await.unwrap();
        eventually("a customer's delete holds", || {
            two.customer("end-1").is_none()
        })
        .await;
        one.delete_users(&["ann".into()]).await.unwrap();
        eventually("a user's delete takes its keys elsewhere", || {
            two.check(&key)
                .is_err_and(|e| e.reason() == Reason::UnknownKey)
                && two.user_info("ann").is_err()
        })
        .await;
        // A replica that starts now loads none of it.
        let (_s3, three) = replica(&db.url).await;
        assert!(three.list_users(1, 10).unwrap().0.is_empty());
        feed.stop();
    }

    #[tokio::test]
    async fn members_and_team_deletions_reach_the_other_replicas() {
        use crate::keys::{MemberRole, TeamMember};
        let db = test_db("teams").await;
        let (s1, one) = replica(&db.url).await;
        let (s2, two) = replica(&db.url).await;
        // A third replica with no change feed: its writes re-read the store.
        let (_s3, three) = replica(&db.url).await;
        let feed = s2.follow_with(&two, Duration::from_millis(50), false);
        one.create_team(NewTeam {
            id: Some("ml".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let (key, rec) = one
            .generate(NewKey {
                team_id: Some("ml".into()),
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        let (other, _) = one
            .generate(NewKey {
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        let alice = TeamMember {
            user_id: Some("alice".into()),
            user_email: Some("alice@example.com".into()),
            role: MemberRole::Admin,
        };
        one.add_team_members("ml", vec![alice.clone()])
            .await
            .unwrap();
        eventually("the member and the key reach the other replica", || {
            two.team_info("ml")
                .is_ok_and(|(t, _)| t.members == std::slice::from_ref(&alice))
                && two.check(&key).is_ok()
        })
        .await;
        // A member added through a replica that never heard of the team
        // starts from the store's members, not from an empty list.
        let bob = TeamMember {
            user_id: Some("bob".into()),
            user_email: None,
            role: MemberRole::User,
        };
        let t = three
            .add_team_members("ml", vec![bob.clone()])
            .await
            .unwrap();
        assert_eq!(t.members, vec![alice.clone(), bob.clone()]);
        let e = one.add_team_members("ml", vec![bob]).await.unwrap_err();
        assert_eq!(
            e.status(),
            http::StatusCode::BAD_REQUEST,
            "a duplicate made elsewhere"
        );

        // A key of the team made through a replica `one` has not heard from.
        let (key3, rec3) = three
            .generate(NewKey {
                team_id: Some("ml".into()),
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(one.check(&key3).is_err(), "one has no change feed");

        let deleted = one.delete_teams(&["ml".into()]).await.unwrap();
        assert_eq!(deleted.teams, ["ml"]);
        let mut both = vec![rec.id.clone(), rec3.id.clone()];
        both.sort_unstable();
        assert_eq!(deleted.keys, both, "the store names every key deleted");
        eventually("the other replica's key is refused too", || {
            two.check(&key3)
                .is_err_and(|e| e.reason() == Reason::UnknownKey)
        })
        .await;
        eventually(
            "a deleted team's key is refused on the other replica",
            || {
                two.check(&key)
                    .is_err_and(|e| e.reason() == Reason::UnknownKey)
            },
        )
        .await;
        assert!(two.team_info("ml").is_err());
        assert!(two.check(&other).is_ok(), "a key of no team stays");
        // The replica with no feed learns of the deletion when it writes:
        // a delete of a team deleted elsewhere is a 404, not a success.
        let e = three.delete_teams(&["ml".into()]).await.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::NOT_FOUND);
        let snap = s1.load().await.unwrap();
        assert!(snap.teams.is_empty());
        assert_eq!(snap.keys.len(), 1);
        let last = s2.change_version().await.unwrap();
        eventually("the feed records the last change", || {
            feed.version() == last
        })
        .await;
        feed.stop();
    }

    #[tokio::test]
    async fn writes_start_from_the_store_not_from_memory() {
        let db = test_db("rmw").await;
        let (_s1, one) = replica(&db.url).await;
        let (_s2, two) = replica(&db.url).await;
        // No change feed at all: each write re-reads what it changes.
        one.create_team(NewTeam {
            id: Some("ml".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let (key, rec) = two
            .generate(NewKey {
                team_id: Some("ml".into()),
                ..Default::default()
            })
            .await
            .expect("a team made on another replica is found");
        one.update_key(
            &rec.id,
            KeyUpdate {
                rpm: Patch::Set(9),
                ..Default::default()
            },
        )
        .await
        .expect("a key made on another replica is found");
        let r = two
            .update_key(
                &key,
                KeyUpdate {
                    alias: Patch::Set("ci".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (r.limits.rpm, r.alias.as_deref()),
            (Some(9), Some("ci")),
            "no lost update"
        );
        let e = one
            .create_team(NewTeam {
                id: Some("ml".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.metadata()["param"], "team_id");
        two.delete_keys(std::slice::from_ref(&rec.id))
            .await
            .unwrap();
        let e = one
            .update_key(&rec.id, KeyUpdate::default())
            .await
            .unwrap_err();
        assert_eq!(
            e.status(),
            http::StatusCode::NOT_FOUND,
            "a key deleted elsewhere is gone here too"
        );
    }

    #[tokio::test]
    async fn a_gap_in_the_log_reloads_everything_and_static_keys_stay() {
        let db = test_db("gap").await;
        let (s1, one) = replica(&db.url).await;
        let (k1, _) = one
            .generate(NewKey {
                grants: Some(vec!["*".into()]),
                ..Default::default()
            })
            .await
            .unwrap();
        let static_key = "tg-static1-0123456789abcdefghij";
        let s2 = PostgresStore::connect(&db.url).await.unwrap();
        let two = Keyring::builder(s2.clone())
            .static_key(crate::keys::StaticKey {
                key: static_key.into(),
                alias: None,
                grants: Some(vec!["*".into()]),
                limits: Limits::default(),
            })
            .build()
            .await
            .unwrap();
        assert!(two.check(&k1).is_ok());
        // Two more changes, then the log loses them: the follower cannot
        // replay, so it reloads the whole store.
        let (k2, _) = one.generate(NewKey::default()).await.unwrap();
        one.delete_keys(std::slice::from_ref(&k1)).await.unwrap();
        s1.client()
            .await
            .unwrap()
            .execute("DELETE FROM tollgate_changes", &[])
            .await
            .unwrap();
        let feed = s2.follow_with(&two, Duration::from_millis(20), false);
        eventually("the reload brings the new key", || two.check(&k2).is_ok()).await;
        assert_eq!(two.check(&k1).unwrap_err().reason(), Reason::UnknownKey);
        assert!(
            two.check(static_key).is_ok(),
            "static keys survive a reload"
        );
        // A row written with psql by hand propagates too (the trigger).
        s1.client()
            .await
            .unwrap()
            .execute("UPDATE tollgate_keys SET blocked = true", &[])
            .await
            .unwrap();
        eventually("a hand-made revoke holds", || {
            two.check(&k2)
                .is_err_and(|e| e.reason() == Reason::KeyRevoked)
        })
        .await;
        feed.stop();
    }
}
