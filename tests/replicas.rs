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
