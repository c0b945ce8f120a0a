//! Several gateway replicas sharing one PostgreSQL key store: real gateway
//! processes (the built `gateway` example), one fresh database per test, the
//! bundled mock upstream, real HTTP clients, all on 127.0.0.1.
//!
//! PostgreSQL is found at `TOLLGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); if it is unreachable the
//! tests fail, they never skip. Propagation is awaited with bounded wait
//! loops (5 s) that report the delay they observed; no test asserts a time.

mod common;

use std::time::Duration;

use common::processes::*;
use common::*;
use serde_json::{Value, json};

const REPLICA: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 100

[[groups]]
name = "gpt-4o-mini"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-small"

[keys]
url = "{pg}"
change_poll_ms = 500
master_key_env = "{master_env}"
"#;

const LIMIT: Duration = Duration::from_secs(5);

async fn replicas(n: usize, mock: &MockServer, pg_url: &str) -> Vec<GatewayProcess> {
    spawn_replicas(n, &fill(REPLICA, mock).replace("{pg}", pg_url)).await
}

async fn admin_call(gw: &GatewayProcess, path: &str, body: Value) -> Answer {
    let res = anonymous()
        .post(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .json(&body)
        .send()
        .await
        .expect("admin request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

async fn admin(gw: &GatewayProcess, path: &str, body: Value) -> Value {
    let a = admin_call(gw, path, body).await;
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    a.json()
}

async fn generate(gw: &GatewayProcess, body: Value) -> (String, String) {
    let v = admin(gw, "/key/generate", body).await;
    (
        v["key"].as_str().unwrap().to_owned(),
        v["key_id"].as_str().unwrap().to_owned(),
    )
}

async fn chat_on(gw: &GatewayProcess, key: &str) -> Answer {
    post_as(
        &format!("{}/chat/completions", gw.base()),
        key,
        chat("gpt-4o-mini", ""),
    )
    .await
}

/// Waits until `gw` answers a chat with `key` with `status` (and, for an
/// error, `reason`); returns the delay observed.
async fn until(gw: &GatewayProcess, key: &str, status: u16, reason: Option<&str>) -> Duration {
    let what = format!("replica {} answers {status} {reason:?}", gw.addr);
    within(&what, LIMIT, || async {
        let a = chat_on(gw, key).await;
        let seen = a.json()["error"]["metadata"]["reason"].clone();
        if a.status == status && reason.is_none_or(|r| seen == r) {
            Ok(a)
        } else {
            Err(format!("{} {}", a.status, a.body))
        }
    })
    .await
    .1
}

fn report(what: &str, delays: &[Duration]) {
    let ms: Vec<String> = delays
        .iter()
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .collect();
    eprintln!("observed {what}: {}", ms.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_made_on_one_replica_works_on_all_and_its_revocation_follows() {
    let db = TestDatabase::create("revoke").await;
    let mock = mock().await;
    let gws = replicas(3, &mock, &db.url).await;

    let (key, id) = generate(&gws[0], json!({"models": ["gpt-4o-mini"]})).await;
    let mut delays = Vec::new();
    for gw in &gws {
        delays.push(until(gw, &key, 200, None).await);
    }
    report("new-key delay on replicas 1, 2, 3", &delays);

    admin(&gws[0], "/key/block", json!({"key": id})).await;
    // Replica 1 refuses at once (it wrote the change); the others follow.
    chat_on(&gws[0], &key).await.error(401, "key_revoked");
    let (r2, r3) = tokio::join!(
        until(&gws[1], &key, 401, Some("key_revoked")),
        until(&gws[2], &key, 401, Some("key_revoked"))
    );
    report("revocation delay on replicas 2, 3", &[r2, r3]);
    for gw in &gws[1..] {
        let v = chat_on(gw, &key).await.error(401, "key_revoked");
        assert_eq!(v["error"]["metadata"]["key_id"], id.as_str());
    }

    // Twenty more revocations and restorations, each written through a
    // different replica, each awaited on the other two.
    let mut seen = Vec::new();
    for round in 0..20 {
        let writer = round % 3;
        let (path, status, reason) = if round % 2 == 0 {
            ("/key/unblock", 200, None)
        } else {
            ("/key/block", 401, Some("key_revoked"))
        };
        admin(&gws[writer], path, json!({"key": id})).await;
        for (i, gw) in gws.iter().enumerate() {
            if i != writer {
                seen.push(until(gw, &key, status, reason).await);
            }
        }
    }
    seen.sort();
    report(
        "propagation delay over 40 observations (min, median, max)",
        &[seen[0], seen[seen.len() / 2], seen[seen.len() - 1]],
    );

    // Restored through replica 3: every replica serves it again.
    admin(&gws[2], "/key/unblock", json!({"key": id})).await;
    for gw in &gws {
        until(gw, &key, 200, None).await;
    }
    // Deleted through replica 2: unknown everywhere.
    admin(&gws[1], "/key/delete", json!({"keys": [id]})).await;
    for gw in &gws {
        until(gw, &key, 401, Some("unknown_key")).await;
    }
    for gw in &gws {
        assert_no_secrets("a replica's logs", &gw.logs());
        assert!(!gw.logs().contains(&key), "a replica logged a whole key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_update_propagates_to_every_replica() {
    let db = TestDatabase::create("team").await;
    let mock = mock().await;
    let gws = replicas(3, &mock, &db.url).await;

    admin(
        &gws[0],
        "/team/new",
        json!({"team_id": "ml", "models": ["gpt-4o-mini"]}),
    )
    .await;
    let (key, _) = generate(&gws[1], json!({"team_id": "ml"})).await;
    for gw in &gws {
        until(gw, &key, 200, None).await;
    }
    admin(
        &gws[0],
        "/team/update",
        json!({"team_id": "ml", "blocked": true}),
    )
    .await;
    let mut delays = Vec::new();
    for gw in &gws {
        delays.push(until(gw, &key, 401, Some("key_revoked")).await);
    }
    report("team-revocation delay on replicas 1, 2, 3", &delays);
    // A narrower ceiling: the team's grants no longer cover the model.
    admin(
        &gws[2],
        "/team/update",
        json!({"team_id": "ml", "blocked": false, "models": ["other/*"]}),
    )
    .await;
    for gw in &gws {
        until(gw, &key, 403, None).await;
    }
}

/// `GET` an admin route on one replica.
async fn admin_get(gw: &GatewayProcess, path: &str) -> Answer {
    let res = anonymous()
        .get(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .expect("admin request sent");
    read_answer(res).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_team_deleted_on_one_replica_takes_its_keys_on_the_other() {
    let db = TestDatabase::create("teamdel").await;
    let mock = mock().await;
    let gws = replicas(2, &mock, &db.url).await;

    admin(
        &gws[0],
        "/team/new",
        json!({"team_id": "ml", "models": ["gpt-4o-mini"]}),
    )
    .await;
    let (key, key_id) = generate(&gws[1], json!({"team_id": "ml"})).await;
    let (other, _) = generate(&gws[1], json!({"models": ["gpt-4o-mini"]})).await;
    for gw in &gws {
        until(gw, &key, 200, None).await;
        until(gw, &other, 200, None).await;
    }
    // Members written on one replica are shown by the other.
    admin(
        &gws[0],
        "/team/member_add",
        json!({"team_id": "ml", "member": {"role": "admin", "user_id": "alice"}}),
    )
    .await;
    let (members, delay) = within("replica 2 shows the member", LIMIT, || async {
        let a = admin_get(&gws[1], "/team/info?team_id=ml").await;
        let m = a.json()["team_info"]["members_with_roles"].clone();
        if m.as_array().is_some_and(|l| l.len() == 1) {
            Ok(m)
        } else {
            Err(a.body)
        }
    })
    .await;
    report("member delay on replica 2", &[delay]);
    assert_eq!(members[0]["user_id"], "alice");

    // Deleted through replica 2: refused there at once, on replica 1 within the poll.
    let deleted = admin(&gws[1], "/team/delete", json!({"team_ids": ["ml"]})).await;
    assert_eq!(deleted["deleted_teams"], json!(["ml"]));
    assert_eq!(deleted["deleted_keys"], json!([key_id]));
    chat_on(&gws[1], &key).await.error(401, "unknown_key");
    let delay = until(&gws[0], &key, 401, Some("unknown_key")).await;
    report("team-deletion delay on replica 1", &[delay]);
    for gw in &gws {
        until(gw, &other, 200, None).await;
        let a = admin_get(gw, "/team/info?team_id=ml").await;
        a.error(404, "not_found");
    }
    // Deleting it again through the other replica: 404, nothing deleted.
    let again = admin_call(&gws[0], "/team/delete", json!({"team_ids": ["ml"]})).await;
    assert_eq!(again.json()["error"]["metadata"]["param"], "team_ids");
    again.error(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_listener_falls_back_to_the_poll_and_resubscribes() {
    let db = TestDatabase::create("listener").await;
    let mock = mock().await;
    let gws = replicas(3, &mock, &db.url).await;
    let (listeners, _) = within("three listeners subscribe", LIMIT, || async {
        let pids = db.backends("tollgate-listener").await;
        if pids.len() == 3 {
            Ok(pids)
        } else {
            Err(format!("{pids:?}"))
        }
    })
    .await;

    let (key, id) = generate(&gws[0], json!({"models": ["gpt-4o-mini"]})).await;
    for gw in &gws {
        until(gw, &key, 200, None).await;
    }
    // Every listener connection ends; the revoke right after must still
    // reach replicas 2 and 3 (through the poll, or a listener already back).
    db.terminate(&listeners).await;
    admin(&gws[0], "/key/block", json!({"key": id})).await;
    let (r2, r3) = tokio::join!(
        until(&gws[1], &key, 401, Some("key_revoked")),
        until(&gws[2], &key, 401, Some("key_revoked"))
    );
    report("revocation delay with the listeners killed", &[r2, r3]);

    let (again, _) = within("three new listeners subscribe", LIMIT, || async {
        let pids = db.backends("tollgate-listener").await;
        if pids.len() == 3 && pids.iter().all(|p| !listeners.contains(p)) {
            Ok(pids)
        } else {
            Err(format!("{pids:?} (killed: {listeners:?})"))
        }
    })
    .await;
    assert_eq!(again.len(), 3);
    for gw in &gws {
        assert!(
            gw.logs().contains("key change listener lost")
                || gw.logs().contains("key change listener closed"),
            "a replica did not notice its listener go:\n{}",
            gw.logs()
        );
    }
    // Every pooled connection killed too (what a server restart does to
    // them): the pool checks a connection before reuse, so the next write
    // goes through at once on a new one.
    let pooled = db.backends("tollgate").await;
    assert!(!pooled.is_empty(), "the replicas hold pooled connections");
    db.terminate(&pooled).await;
    admin(&gws[0], "/key/unblock", json!({"key": id})).await;
    for gw in &gws {
        until(gw, &key, 200, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_survive_the_database_going_away_and_coming_back() {
    let db = TestDatabase::create("outage").await;
    let mock = mock().await;
    let target: std::net::SocketAddr = {
        let c: tokio_postgres::Config = db.url.parse().unwrap();
        let host = match &c.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            _ => panic!("TOLLGATE_TEST_POSTGRES_URL must name a TCP host"),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = TcpProxy::start(target).await;
    let gws = replicas(2, &mock, &with_addr(&db.url, proxy.addr)).await;
    let (key, id) = generate(&gws[0], json!({"models": ["gpt-4o-mini"]})).await;
    until(&gws[1], &key, 200, None).await;

    proxy.cut();
    // Keys already loaded keep working on every replica.
    for gw in &gws {
        assert_eq!(chat_on(gw, &key).await.status, 200);
    }
    // A write cannot be stored: 503, promptly, and nothing changes.
    let a = admin_call(&gws[0], "/key/block", json!({"key": id})).await;
    a.error(503, "state_unavailable");
    assert_eq!(chat_on(&gws[0], &key).await.status, 200);

    proxy.restore();
    // The pool reconnects without a restart: the write goes through.
    let (_, reconnect) = within("an admin write succeeds again", LIMIT, || async {
        let a = admin_call(&gws[0], "/key/block", json!({"key": id})).await;
        if a.status == 200 {
            Ok(())
        } else {
            Err(format!("{} {}", a.status, a.body))
        }
    })
    .await;
    report(
        "admin write success after the database came back",
        &[reconnect],
    );
    // And the change feed resumes: replica 2 follows.
    let d = until(&gws[1], &key, 401, Some("key_revoked")).await;
    report("revocation delay after the database came back", &[d]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_writes_through_postgres_and_sqlite_report_their_latency() {
    let db = TestDatabase::create("latency").await;
    let mock = mock().await;
    let sqlite = std::env::temp_dir().join(format!("tollgate-latency-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&sqlite);
    let pg = replicas(2, &mock, &db.url).await;
    let lite = spawn_gateway(
        &fill(REPLICA, &mock).replace("{pg}", &format!("sqlite://{}", sqlite.display())),
    )
    .await;
    for (name, gw, other) in [("postgres", &pg[0], Some(&pg[1])), ("sqlite", &lite, None)] {
        let (key, id) = generate(gw, json!({"models": ["gpt-4o-mini"]})).await;
        let mut times = Vec::new();
        for rpm in 1..=50u64 {
            let start = std::time::Instant::now();
            admin(gw, "/key/update", json!({"key": id, "rpm_limit": rpm})).await;
            times.push(start.elapsed());
        }
        times.sort();
        report(
            &format!("admin /key/update latency, {name} (min, median, p90, max of 50)"),
            &[times[0], times[25], times[45], times[49]],
        );
        if let Some(other) = other {
            // The last write is what the other replica has.
            within(
                "the last update reaches the other replica",
                LIMIT,
                || async {
                    let res = anonymous()
                        .get(other.url(&format!("/key/info?key={id}")))
                        .bearer_auth(MASTER_KEY)
                        .send()
                        .await
                        .unwrap();
                    let v: Value = res.json().await.unwrap();
                    if v["info"]["rpm_limit"] == 50 {
                        Ok(())
                    } else {
                        Err(v.to_string())
                    }
                },
            )
            .await;
        }
        assert_eq!(chat_on(gw, &key).await.status, 200);
    }
    drop(lite);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sqlite.display()));
    }
}

#[tokio::test]
async fn an_unreachable_database_refuses_the_start_naming_the_field() {
    let mock = mock().await;
    let port = closed_port().await;
    let text = fill(REPLICA, &mock).replace(
        "{pg}",
        &format!("postgres://tg:s3cretPassw0rd@127.0.0.1:{port}/tollgate"),
    );
    let config = tollgate::config::Config::from_toml("replica.toml", &text).unwrap();
    let e = config.keyring().await.unwrap_err();
    assert_eq!(e.field(), "keys.url", "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(
        e.to_string()
            .contains(&format!("127.0.0.1:{port}/tollgate")),
        "{e}"
    );
}

/// Spend records shared by the replicas: keys and spend in PostgreSQL,
/// budgets in Redis (`[state]`, a prefix of the test's own).
#[cfg(feature = "redis")]
mod spend {
    use super::*;
    use std::collections::HashSet;
    use tollgate::budget::{Period, Scope, TimeZone};
    use tollgate::state::{RedisLedger, RedisState};

    fn redis_url() -> String {
        std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    /// A group at $1 per million tokens in and out (a token costs a
    /// micro-dollar), the static client key (`client01`) with a monthly
    /// budget of `max_usd`, keys and spend in `{pg}`, budgets in Redis.
    const PRICED: &str = r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 100

[budgets]

[[groups]]
name = "m"
price_in_per_mtok = 1.0
price_out_per_mtok = 1.0
max_output_tokens = 1000
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"

[keys]
url = "{pg}"
change_poll_ms = 500
master_key_env = "{master_env}"
[[keys.static]]
key_env = "{client_env}"
models = ["*"]
max_budget = {max_usd}
budget_duration = "monthly"

[state]
url = "{redis}"
prefix = "{prefix}"
timeout_ms = 10000
"#;

    struct Setup {
        gws: Vec<GatewayProcess>,
        ledger: RedisLedger,
    }

    async fn setup(mock: &MockServer, pg_url: &str, max_usd: f64) -> Setup {
        setup_with(mock, pg_url, max_usd, "").await
    }

    /// [`setup`], with `extra` appended to the replicas' config.
    async fn setup_with(mock: &MockServer, pg_url: &str, max_usd: f64, extra: &str) -> Setup {
        let url = redis_url();
        let prefix = format!(
            "tollgate-it:pgspend:{}:{}:",
            std::process::id(),
            fastrand::u64(..)
        );
        let state = RedisState::open(&url, &prefix, Duration::from_secs(2)).expect("redis URL");
        state
            .ping()
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} does not answer ({e}); this test needs it"));
        let toml = fill(&format!("{PRICED}{extra}"), mock)
            .replace("{pg}", pg_url)
            .replace("{redis}", &url)
            .replace("{prefix}", &prefix)
            .replace("{max_usd}", &max_usd.to_string());
        Setup {
            gws: spawn_replicas(3, &toml).await,
            ledger: RedisLedger::new(state, TimeZone::UTC),
        }
    }

    /// The key's spend in Redis once no reservation is held any more.
    async fn settled(ledger: &RedisLedger) -> u64 {
        let scope = Scope::Key("client01".into());
        within(
            "every reservation settled",
            Duration::from_secs(30),
            || async {
                let u = ledger.usage(&scope, Period::Monthly).await.unwrap();
                if u.reserved == 0 {
                    Ok(u.spent)
                } else {
                    Err(format!("{u:?}"))
                }
            },
        )
        .await
        .0
    }

    /// Every spend record of `client01`, read page by page (100 a page),
    /// each page from the next replica: the cursor is the shared store's.
    async fn records(gws: &[GatewayProcess]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0.. {
            let gw = &gws[page % gws.len()];
            let mut url = gw.url("/spend/logs?key_id=client01&limit=100");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let res = anonymous()
                .get(url)
                .bearer_auth(MASTER_KEY)
                .send()
                .await
                .expect("/spend/logs answers");
            assert_eq!(res.status(), 200);
            let v: Value = res.json().await.unwrap();
            out.extend(v["data"].as_array().unwrap().iter().cloned());
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        out
    }

    /// Waits until the records number `n` (the writers write in the
    /// background), then returns them.
    async fn all_records(gws: &[GatewayProcess], n: usize) -> Vec<Value> {
        within(
            "every spend record is in PostgreSQL",
            Duration::from_secs(60),
            || async {
                let r = records(gws).await;
                if r.len() >= n {
                    Ok(r)
                } else {
                    Err(format!("{} of {n}", r.len()))
                }
            },
        )
        .await
        .0
    }

    /// Checks `records` against the answers: one per request (ids unique),
    /// statuses as answered, and their costs summing to what Redis charged.
    fn check(records: &[Value], sent: usize, ok: u64, refused: u64, spent: u64) {
        assert_eq!(records.len(), sent, "exactly one record per request");
        let ids: HashSet<&str> = records
            .iter()
            .map(|r| r["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), sent, "no record stored twice");
        let count = |s: u64| records.iter().filter(|r| r["status"] == s).count() as u64;
        assert_eq!((count(200), count(402)), (ok, refused));
        let sum: u64 = records
            .iter()
            .map(|r| r["spend_micros"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, spent, "the records' costs are what Redis charged");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn six_hundred_requests_over_three_processes_one_record_each_in_postgres() {
        let db = TestDatabase::create("spend600").await;
        let mock = mock().await;
        // Each request reserves 1 prompt token + 100 output = 101 micros;
        // $0.0101 admits about 100 of them.
        let Setup { gws, ledger } = setup(&mock, &db.url, 0.0101).await;
        let body = chat("m", r#""max_tokens":100"#);
        let tasks: Vec<_> = (0..600)
            .map(|i| {
                let (url, body) = (gws[i % 3].url("/v1/chat/completions"), body.clone());
                tokio::spawn(async move { post(&url, body).await })
            })
            .collect();
        let (mut ok, mut refused) = (0u64, 0u64);
        for t in tasks {
            let a = t.await.unwrap();
            if a.status == 200 {
                ok += 1;
            } else {
                a.error(402, "budget_exceeded");
                refused += 1;
            }
        }
        assert_eq!(ok + refused, 600);
        assert!(ok >= 100 && refused >= 1, "ok {ok}, refused {refused}");
        let spent = settled(&ledger).await;
        assert!(spent <= 10_100, "spent {spent} over the $0.0101 budget");
        let records = all_records(&gws, 600).await;
        check(&records, 600, ok, refused, spent);
        eprintln!("observed: {ok} served, {refused} refused, {spent} µUSD charged and recorded");
        for gw in &gws {
            assert_no_secrets("a replica's logs", &gw.logs());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sixty_requests_per_minute_hold_across_three_processes() {
        let db = TestDatabase::create("rpm60").await;
        let mock = mock().await;
        let Setup { gws, .. } = setup_with(
            &mock,
            &db.url,
            100.0,
            "\n[rate_limits]\nrequests_per_minute = 60\n",
        )
        .await;
        // A burst of 150 spread over the three processes, far shorter than a
        // minute: the one shared bucket lets 60 through (61 if a cell refills
        // during the burst), whichever process each request reaches.
        let tasks: Vec<_> = (0..150)
            .map(|i| {
                let url = gws[i % 3].url("/v1/chat/completions");
                tokio::spawn(async move { post(&url, chat("m", "")).await })
            })
            .collect();
        let (mut ok, mut per_process) = (0, [0; 3]);
        for (i, t) in tasks.into_iter().enumerate() {
            let a = t.await.unwrap();
            if a.status == 200 {
                ok += 1;
                per_process[i % 3] += 1;
                assert_eq!(a.headers["x-ratelimit-limit-requests"], "60");
            } else {
                a.error(429, "rate_limited");
                assert!(a.headers.contains_key("retry-after"));
            }
        }
        assert!(
            (60..=61).contains(&ok),
            "{ok} of 150 passed: {per_process:?}"
        );
        assert_eq!(mock.log.len(), ok, "no refused request reached upstream");
    }

    /// The address of the test PostgreSQL server (for a proxy in front of it).
    async fn postgres_addr(url: &str) -> std::net::SocketAddr {
        let c: tokio_postgres::Config = url.parse().unwrap();
        let host = match &c.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            _ => panic!("TOLLGATE_TEST_POSTGRES_URL must name a TCP host"),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_replica_stopped_while_postgres_is_away_exits_and_says_what_is_unwritten() {
        let db = TestDatabase::create("spendstop").await;
        let mock = mock().await;
        let proxy = TcpProxy::start(postgres_addr(&db.url).await).await;
        let Setup { mut gws, .. } = setup(&mock, &with_addr(&db.url, proxy.addr), 100.0).await;
        proxy.cut();
        let url = gws[0].url("/v1/chat/completions");
        for _ in 0..20 {
            assert_eq!(post(&url, chat("m", "")).await.status, 200);
        }
        // The flush waits at most 10 s for the store; the test allows 60 s
        // before calling it a hang (a bound, not a timing assertion).
        let status = gws[0].terminate(Duration::from_secs(60)).await;
        assert!(status.success(), "{status}\n{}", gws[0].logs());
        let logs = gws[0].logs();
        assert!(logs.contains("spend store unavailable"), "{logs}");
        assert!(
            logs.contains("spend records not written") && logs.contains("unwritten=20"),
            "{logs}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_spend_record_is_lost_while_postgres_is_away() {
        let db = TestDatabase::create("spendcut").await;
        let mock = mock().await;
        let target = postgres_addr(&db.url).await;
        let proxy = TcpProxy::start(target).await;
        let Setup { gws, ledger } = setup(&mock, &with_addr(&db.url, proxy.addr), 100.0).await;
        const SENT: usize = 450;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        // 30 clients, 15 requests each, round robin over the replicas.
        let clients: Vec<_> = (0..30)
            .map(|c| {
                let urls: Vec<String> = gws.iter().map(|g| g.url("/v1/chat/completions")).collect();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    for i in 0..SENT / 30 {
                        let a = post(&urls[(c + i) % 3], chat("m", r#""max_tokens":50"#)).await;
                        done.send(a).unwrap();
                    }
                })
            })
            .collect();
        drop(done_tx);
        let mut answers = Vec::new();
        while let Some(a) = done_rx.recv().await {
            answers.push(a);
            if answers.len() == 100 {
                // PostgreSQL goes away mid-load: its connections close and
                // new ones are dropped at once.
                proxy.cut();
            }
            if answers.len() == 300 {
                proxy.restore();
            }
        }
        for c in clients {
            c.await.unwrap();
        }
        assert_eq!(answers.len(), SENT);
        for a in &answers {
            // Keys are in memory and budgets in Redis: serving goes on.
            assert_eq!(a.status, 200, "{}", a.body);
        }
        let spent = settled(&ledger).await;
        let records = all_records(&gws, SENT).await;
        check(&records, SENT, SENT as u64, 0, spent);
        let logs: Vec<String> = gws.iter().map(|g| g.logs()).collect();
        assert!(
            logs.iter().any(|l| l.contains("spend store unavailable")),
            "no writer saw PostgreSQL away: the cut came too late to test anything"
        );
        for l in &logs {
            if l.contains("spend store unavailable") {
                assert!(l.contains("spend store back"), "{l}");
            }
            assert!(!l.contains("spend records dropped"), "{l}");
            assert!(!l.contains("spend records lost"), "{l}");
        }
        eprintln!(
            "observed: {SENT} requests, {} records, {spent} µUSD; {} of 3 writers retried",
            records.len(),
            logs.iter()
                .filter(|l| l.contains("spend store unavailable"))
                .count()
        );
    }
}
