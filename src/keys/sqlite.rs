//! [`SqliteStore`]: keys and teams in an embedded SQLite database.
//!
//! The reference gateway's default store: one file, nothing to run beside
//! the gateway, nothing lost on restart. SQLite is compiled in (rusqlite's
//! `bundled`), the file is in WAL mode with `synchronous = FULL` (a write
//! the admin API acknowledged survives a crash), and every statement runs on
//! tokio's blocking pool, never on the async runtime. Only hashes are stored.
//!
//! The schema changes through numbered [`MIGRATIONS`], applied in order, each
//! in its own transaction with the `schema_version` row. A database written by
//! a newer build (a higher version) is refused rather than misread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Map, Value};

use super::record::{
    BudgetPeriod, CustomerRecord, KeyRecord, Limits, TeamMember, TeamRecord, UserRecord,
    members_from_json, members_to_json,
};
use super::store::{KeyStore, Snapshot, StoreError, StoreFuture};
use super::token::KeyHash;

/// The schema's migrations: `(version, SQL)`, in order.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (
        1,
        "CREATE TABLE teams (
            id            TEXT PRIMARY KEY,
            alias         TEXT,
            grants        TEXT NOT NULL,
            blocked       INTEGER NOT NULL DEFAULT 0,
            rpm_limit     INTEGER,
            tpm_limit     INTEGER,
            max_budget    REAL,
            budget_period TEXT,
            weight        INTEGER NOT NULL DEFAULT 1,
            metadata      TEXT NOT NULL DEFAULT '{}',
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        );
        CREATE TABLE keys (
            id            TEXT PRIMARY KEY,
            hash          BLOB NOT NULL,
            alias         TEXT,
            team_id       TEXT,
            user_id       TEXT,
            grants        TEXT NOT NULL,
            expires_at    INTEGER,
            blocked       INTEGER NOT NULL DEFAULT 0,
            rpm_limit     INTEGER,
            tpm_limit     INTEGER,
            max_budget    REAL,
            budget_period TEXT,
            weight        INTEGER NOT NULL DEFAULT 1,
            metadata      TEXT NOT NULL DEFAULT '{}',
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        );",
    ),
    (2, "CREATE INDEX keys_by_team ON keys (team_id);"),
    // Spend records (`tollgate::budget::SqliteSpendStore`). `id` is the
    // rowid, so each index below also orders by it: a page of
    // `ORDER BY start_us DESC, id DESC` under any one filter is read from an
    // index, never sorted in memory.
    (
        3,
        "CREATE TABLE spend (
            id                INTEGER PRIMARY KEY,
            request_id        TEXT NOT NULL,
            key_id            TEXT,
            team_id           TEXT,
            model             TEXT NOT NULL,
            model_group       TEXT,
            deployment        TEXT,
            served_model      TEXT,
            prompt_tokens     INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            estimated         INTEGER NOT NULL,
            cost              INTEGER NOT NULL,
            status            INTEGER NOT NULL,
            start_us          INTEGER NOT NULL,
            latency_us        INTEGER NOT NULL,
            attempts          INTEGER NOT NULL
        );
        CREATE INDEX spend_by_start ON spend (start_us);
        CREATE INDEX spend_by_key ON spend (key_id, start_us);
        CREATE INDEX spend_by_team ON spend (team_id, start_us);
        CREATE INDEX spend_by_model ON spend (model, start_us);",
    ),
    // Users and customers (end users); spend records name both.
    (
        4,
        "CREATE TABLE users (
            id            TEXT PRIMARY KEY,
            email         TEXT,
            alias         TEXT,
            role          TEXT,
            max_budget    REAL,
            budget_period TEXT,
            metadata      TEXT NOT NULL DEFAULT '{}',
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        );
        CREATE TABLE customers (
            id            TEXT PRIMARY KEY,
            alias         TEXT,
            blocked       INTEGER NOT NULL DEFAULT 0,
            max_budget    REAL,
            budget_period TEXT,
            metadata      TEXT NOT NULL DEFAULT '{}',
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL
        );
        CREATE INDEX keys_by_user ON keys (user_id);
        ALTER TABLE spend ADD COLUMN user_id TEXT;
        ALTER TABLE spend ADD COLUMN end_user TEXT;
        CREATE INDEX spend_by_user ON spend (user_id, start_us);
        CREATE INDEX spend_by_end_user ON spend (end_user, start_us);",
    ),
    // Team members (LiteLLM's `members_with_roles`): a JSON list in the
    // team's row, written with the team.
    (
        5,
        "ALTER TABLE teams ADD COLUMN members TEXT NOT NULL DEFAULT '[]';",
    ),
    // LiteLLM's `/spend/logs?request_id=`: one request's record.
    (
        6,
        "CREATE INDEX spend_by_request ON spend (request_id, start_us);",
    ),
];

/// Keys and teams in a SQLite file (see the module docs).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(format!("key store `{}`: {e}", path.display()))
}

impl SqliteStore {
    /// Opens (creating it if needed) and migrates the database at `path`.
    /// Blocking: call it at start, or from `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let conn = open_connection(path, "FULL").map_err(|e| db_err(path, e))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| db_err(&self.path, "lock poisoned"))?;
        version(&conn).map_err(|e| db_err(&self.path, e))
    }

    /// Runs `f` with the connection on tokio's blocking pool.
    fn run<T, F>(&self, f: F) -> StoreFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, String> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        Box::pin(async move {
            let p = path.clone();
            tokio::task::spawn_blocking(move || {
                let mut conn = conn.lock().map_err(|_| db_err(&p, "lock poisoned"))?;
                f(&mut conn).map_err(|e| db_err(&p, e))
            })
            .await
            .map_err(|e| db_err(&path, e))?
        })
    }
}

/// Opens (creating it if needed) and migrates the database at `path`, in
/// WAL mode with this `synchronous` setting: the one way every table of the
/// file (keys, teams, spend) is opened, so whichever store opens it first
/// brings the whole schema up to date.
pub(crate) fn open_connection(path: &Path, synchronous: &str) -> Result<Connection, String> {
    let mut conn = Connection::open(path).map_err(|e| e.to_string())?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA busy_timeout = 5000;"
    ))
    .map_err(|e| e.to_string())?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    Ok(conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current = version(conn).map_err(|e| e.to_string())?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(format!(
            "the database has schema version {current}, newer than this build knows ({latest}); use a newer tollgate"
        ));
    }
    for &(v, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        // IMMEDIATE: two connections opening the file at once (the key
        // store's and the spend store's) take turns; the second sees the
        // first's migrations and skips them.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        if version(&tx).map_err(|e| e.to_string())? >= v {
            continue;
        }
        tx.execute_batch(sql)
            .map_err(|e| format!("migration {v}: {e}"))?;
        tx.execute("DELETE FROM schema_version", [])
            .and_then(|_| tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [v]))
            .map_err(|e| format!("migration {v}: {e}"))?;
        tx.commit().map_err(|e| format!("migration {v}: {e}"))?;
    }
    Ok(())
}

fn json_list(text: String) -> rusqlite::Result<Vec<String>> {
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn json_map(text: String) -> rusqlite::Result<Map<String, Value>> {
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn period(text: Option<String>) -> rusqlite::Result<Option<BudgetPeriod>> {
    text.map(|t| {
        t.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
    })
    .transpose()
}

fn u64_col(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
}

const KEY_COLUMNS: &str = "id, hash, alias, team_id, user_id, grants, expires_at, blocked, rpm_limit, tpm_limit, max_budget, budget_period, weight, metadata, created_at, updated_at";
const TEAM_COLUMNS: &str = "id, alias, grants, blocked, rpm_limit, tpm_limit, max_budget, budget_period, weight, metadata, created_at, updated_at, members";

fn key_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let hash: Vec<u8> = row.get(1)?;
    Ok(KeyRecord {
        id: row.get(0)?,
        hash: KeyHash::from_bytes(&hash).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Blob,
                "a key hash is not 32 bytes".into(),
            )
        })?,
        alias: row.get(2)?,
        team_id: row.get(3)?,
        user_id: row.get(4)?,
        grants: json_list(row.get(5)?)?,
        expires_at: u64_col(row, 6)?,
        blocked: row.get(7)?,
        limits: Limits {
            rpm: u64_col(row, 8)?,
            tpm: u64_col(row, 9)?,
            max_budget: row.get(10)?,
            budget_period: period(row.get(11)?)?,
            weight: row.get::<_, i64>(12)?.clamp(1, i64::from(u32::MAX)) as u32,
        },
        metadata: json_map(row.get(13)?)?,
        created_at: u64_col(row, 14)?.unwrap_or(0),
        updated_at: u64_col(row, 15)?.unwrap_or(0),
    })
}

fn team_row(row: &Row<'_>) -> rusqlite::Result<TeamRecord> {
    Ok(TeamRecord {
        id: row.get(0)?,
        alias: row.get(1)?,
        grants: json_list(row.get(2)?)?,
        blocked: row.get(3)?,
        limits: Limits {
            rpm: u64_col(row, 4)?,
            tpm: u64_col(row, 5)?,
            max_budget: row.get(6)?,
            budget_period: period(row.get(7)?)?,
            weight: row.get::<_, i64>(8)?.clamp(1, i64::from(u32::MAX)) as u32,
        },
        metadata: json_map(row.get(9)?)?,
        created_at: u64_col(row, 10)?.unwrap_or(0),
        updated_at: u64_col(row, 11)?.unwrap_or(0),
        members: json_members(row.get(12)?)?,
    })
}

fn json_members(text: String) -> rusqlite::Result<Vec<TeamMember>> {
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(12, rusqlite::types::Type::Text, Box::new(e))
    })?;
    members_from_json(v).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(12, rusqlite::types::Type::Text, e.into())
    })
}

const USER_COLUMNS: &str =
    "id, email, alias, role, max_budget, budget_period, metadata, created_at, updated_at";
const CUSTOMER_COLUMNS: &str =
    "id, alias, blocked, max_budget, budget_period, metadata, created_at, updated_at";

fn user_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: row.get(0)?,
        email: row.get(1)?,
        alias: row.get(2)?,
        role: row.get(3)?,
        max_budget: row.get(4)?,
        budget_period: period(row.get(5)?)?,
        metadata: json_map(row.get(6)?)?,
        created_at: u64_col(row, 7)?.unwrap_or(0),
        updated_at: u64_col(row, 8)?.unwrap_or(0),
    })
}

fn customer_row(row: &Row<'_>) -> rusqlite::Result<CustomerRecord> {
    Ok(CustomerRecord {
        id: row.get(0)?,
        alias: row.get(1)?,
        blocked: row.get(2)?,
        max_budget: row.get(3)?,
        budget_period: period(row.get(4)?)?,
        metadata: json_map(row.get(5)?)?,
        created_at: u64_col(row, 6)?.unwrap_or(0),
        updated_at: u64_col(row, 7)?.unwrap_or(0),
    })
}

fn i(v: Option<u64>) -> Option<i64> {
    v.map(|v| v.min(i64::MAX as u64) as i64)
}

fn text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

impl KeyStore for SqliteStore {
    fn load(&self) -> StoreFuture<'_, Snapshot> {
        self.run(|conn| {
            let load = || -> rusqlite::Result<Snapshot> {
                let mut st = conn.prepare(&format!("SELECT {TEAM_COLUMNS} FROM teams"))?;
                let teams = st.query_map([], team_row)?.collect::<Result<_, _>>()?;
                let mut st = conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys"))?;
                let keys = st.query_map([], key_row)?.collect::<Result<_, _>>()?;
                let mut st = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users"))?;
                let users = st.query_map([], user_row)?.collect::<Result<_, _>>()?;
                let mut st = conn.prepare(&format!("SELECT {CUSTOMER_COLUMNS} FROM customers"))?;
                let customers = st.query_map([], customer_row)?.collect::<Result<_, _>>()?;
                Ok(Snapshot {
                    keys,
                    teams,
                    users,
                    customers,
                })
            };
            load().map_err(|e| e.to_string())
        })
    }

    fn put_key(&self, k: KeyRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                params![
                    k.id,
                    &k.hash.as_bytes()[..],
                    k.alias,
                    k.team_id,
                    k.user_id,
                    text(&k.grants),
                    i(k.expires_at),
                    k.blocked,
                    i(k.limits.rpm),
                    i(k.limits.tpm),
                    k.limits.max_budget,
                    k.limits.budget_period.map(|p| p.stored()),
                    i64::from(k.limits.weight),
                    text(&k.metadata),
                    i(Some(k.created_at)),
                    i(Some(k.updated_at)),
                ],
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn delete_keys(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let mut delete = || -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                for id in &ids {
                    tx.execute("DELETE FROM keys WHERE id = ?1", [id])?;
                }
                tx.commit()
            };
            delete().map_err(|e| e.to_string())
        })
    }

    fn put_team(&self, t: TeamRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO teams ({TEAM_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    t.id,
                    t.alias,
                    text(&t.grants),
                    t.blocked,
                    i(t.limits.rpm),
                    i(t.limits.tpm),
                    t.limits.max_budget,
                    t.limits.budget_period.map(|p| p.stored()),
                    i64::from(t.limits.weight),
                    text(&t.metadata),
                    i(Some(t.created_at)),
                    i(Some(t.updated_at)),
                    members_to_json(&t.members).to_string(),
                ],
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn put_user(&self, u: UserRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    u.id,
                    u.email,
                    u.alias,
                    u.role,
                    u.max_budget,
                    u.budget_period.map(|p| p.stored()),
                    text(&u.metadata),
                    i(Some(u.created_at)),
                    i(Some(u.updated_at)),
                ],
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn delete_users(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let mut delete = || -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                for id in &ids {
                    tx.execute("DELETE FROM keys WHERE user_id = ?1", [id])?;
                    tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
                }
                tx.commit()
            };
            delete().map_err(|e| e.to_string())
        })
    }

    fn put_customer(&self, c: CustomerRecord) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO customers ({CUSTOMER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    c.id,
                    c.alias,
                    c.blocked,
                    c.max_budget,
                    c.budget_period.map(|p| p.stored()),
                    text(&c.metadata),
                    i(Some(c.created_at)),
                    i(Some(c.updated_at)),
                ],
            )
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn delete_customers(&self, ids: Vec<String>) -> StoreFuture<'_, ()> {
        self.run(move |conn| {
            let mut delete = || -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                for id in &ids {
                    tx.execute("DELETE FROM customers WHERE id = ?1", [id])?;
                }
                tx.commit()
            };
            delete().map_err(|e| e.to_string())
        })
    }

    fn delete_teams(&self, ids: Vec<String>) -> StoreFuture<'_, Vec<String>> {
        self.run(move |conn| {
            let mut delete = || -> rusqlite::Result<Vec<String>> {
                let tx = conn.transaction()?;
                let mut gone = Vec::new();
                for id in &ids {
                    let mut st = tx.prepare("DELETE FROM keys WHERE team_id = ?1 RETURNING id")?;
                    for key in st.query_map([id], |r| r.get::<_, String>(0))? {
                        gone.push(key?);
                    }
                    drop(st);
                    tx.execute("DELETE FROM teams WHERE id = ?1", [id])?;
                }
                tx.commit()?;
                Ok(gone)
            };
            delete().map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemberRole;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tollgate-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("keys.db")
    }

    #[tokio::test]
    async fn round_trip_survives_reopen() {
        let path = temp("roundtrip");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            MIGRATIONS.last().unwrap().0
        );
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
        store.put_key(k.clone()).await.unwrap();
        let mut t = TeamRecord::new("t1");
        t.grants = vec!["cheap".into()];
        t.limits.tpm = Some(1000);
        // A fixed window keeps its anchor across a restart.
        t.limits.budget_period = Some(BudgetPeriod::parse_at("90m", 1_764_000_123).unwrap());
        store.put_team(t.clone()).await.unwrap();
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.keys, vec![k.clone()]);
        assert_eq!(snap.teams, vec![t]);
        store.delete_keys(vec!["abc".into()]).await.unwrap();
        assert!(store.load().await.unwrap().keys.is_empty());
    }

    #[tokio::test]
    async fn users_and_customers_survive_reopen_and_a_users_delete_takes_its_keys() {
        let path = temp("people");
        let store = SqliteStore::open(&path).unwrap();
        let mut u = UserRecord::new("ann@example.com");
        u.email = Some("ann@example.com".into());
        u.role = Some("internal_user".into());
        u.max_budget = Some(2.5);
        u.budget_period = Some(BudgetPeriod::parse_at("2h", 1_764_000_000).unwrap());
        u.metadata.insert("dept".into(), "ops".into());
        store.put_user(u.clone()).await.unwrap();
        let mut c = CustomerRecord::new("end-1");
        c.blocked = true;
        c.max_budget = Some(0.5);
        store.put_customer(c.clone()).await.unwrap();
        let mut k = KeyRecord::new("abc", KeyHash::of("abc", "0123456789abcdefgh"));
        k.user_id = Some(u.id.clone());
        store.put_key(k).await.unwrap();
        let other = KeyRecord::new("xyz", KeyHash::of("xyz", "0123456789abcdefgh"));
        store.put_key(other.clone()).await.unwrap();
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!((snap.users, snap.customers), (vec![u.clone()], vec![c]));
        store.delete_users(vec![u.id.clone()]).await.unwrap();
        store.delete_customers(vec!["end-1".into()]).await.unwrap();
        let snap = store.load().await.unwrap();
        assert!(snap.users.is_empty() && snap.customers.is_empty());
        assert_eq!(snap.keys, vec![other], "the user's key went with it");
    }

    #[tokio::test]
    async fn members_survive_reopen_and_a_deleted_team_takes_its_keys() {
        let path = temp("teams");
        let store = SqliteStore::open(&path).unwrap();
        let mut t = TeamRecord::new("ml");
        t.members = vec![
            TeamMember {
                user_id: Some("alice".into()),
                user_email: Some("alice@example.com".into()),
                role: MemberRole::Admin,
            },
            TeamMember {
                user_id: None,
                user_email: Some("bob@example.com".into()),
                role: MemberRole::User,
            },
        ];
        store.put_team(t.clone()).await.unwrap();
        store.put_team(TeamRecord::new("ops")).await.unwrap();
        for (id, team) in [
            ("k1", Some("ml")),
            ("k2", Some("ml")),
            ("k3", Some("ops")),
            ("k4", None),
        ] {
            let mut k = KeyRecord::new(id, KeyHash::of(id, "0123456789abcdefgh"));
            k.team_id = team.map(Into::into);
            store.put_key(k).await.unwrap();
        }
        drop(store);
        let store = SqliteStore::open(&path).unwrap();
        let snap = store.load().await.unwrap();
        assert_eq!(snap.teams.iter().find(|x| x.id == "ml"), Some(&t));
        let mut gone = store.delete_teams(vec!["ml".into()]).await.unwrap();
        gone.sort_unstable();
        assert_eq!(gone, ["k1", "k2"]);
        let snap = store.load().await.unwrap();
        let mut keys: Vec<&str> = snap.keys.iter().map(|k| k.id.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["k3", "k4"]);
        let teams: Vec<&str> = snap.teams.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(teams, ["ops"]);
    }

    /// A database made before members existed gains the column, its teams
    /// with no members.
    #[tokio::test]
    async fn a_database_from_before_members_is_migrated_with_empty_member_lists() {
        let path = temp("v3");
        let members_at = MIGRATIONS
            .iter()
            .find(|m| m.1.contains("ADD COLUMN members"))
            .unwrap()
            .0;
        {
            let mut conn = Connection::open(&path).unwrap();
            version(&conn).unwrap();
            let tx = conn.transaction().unwrap();
            for (_, sql) in MIGRATIONS.iter().filter(|m| m.0 < members_at) {
                tx.execute_batch(sql).unwrap();
            }
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [members_at - 1],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO teams (id, grants, created_at, updated_at) VALUES ('old', '[]', 1, 1)",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            MIGRATIONS.last().unwrap().0
        );
        let snap = store.load().await.unwrap();
        assert_eq!(snap.teams[0].id, "old");
        assert!(snap.teams[0].members.is_empty());
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let path = temp("newer");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 999", [])
            .unwrap();
        drop(conn);
        let e = SqliteStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("newer than this build"), "{e}");
    }
}
