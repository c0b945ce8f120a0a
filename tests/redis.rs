//! Several replicas sharing one Redis, through real sockets: three reference
//! gateways (separate `app`s, each with its own in-process state) in front
//! of the bundled mock upstream, sharing nothing but Redis.
//!
//! Redis comes from `TOLLGATE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`); a Redis that does not answer FAILS these
//! tests, they are never skipped. Each test uses its own key prefix. The
//! stop/restart test starts its own `redis-server` on a free port.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tollgate::budget::{BudgetStore, Period, Scope, TimeZone};
use tollgate::router::{Clock, CooldownStore, DeploymentId, SystemClock};
use tollgate::state::{RedisCooldowns, RedisLedger, RedisState};

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A prefix no other test (or run) shares.
fn prefix(name: &str) -> String {
    format!(
        "tollgate-it:{name}:{}:{}:",
        std::process::id(),
        fastrand::u64(..)
    )
}

/// The shared state a test reads from, checked to answer (else the test fails).
async fn state_at(url: &str, prefix: &str) -> RedisState {
    let s = RedisState::open(url, prefix, Duration::from_secs(2)).expect("a redis:// URL");
    s.ping()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} does not answer ({e}); these tests need it"));
    s
}

/// `[state]` on `url` under `prefix`. Each Redis call may take 10 s: the
/// tests run hundreds of clients and 3 gateways per test, several tests at
/// once, on 2 shared cores, where a busy runtime can delay a call's answer
/// by seconds (a dead Redis is still refused at once: connection refused).
fn state_section(url: &str, prefix: &str, extra: &str) -> String {
    format!("\n[state]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout_ms = 10000\n{extra}\n")
}

/// One group at $1 per million tokens in and out (a token costs a
/// micro-dollar), and the client key with a monthly budget of `max_usd`.
fn priced(max_usd: f64) -> String {
    format!(
        "[budgets]\n\n[[groups]]\nname = \"m\"\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\n\
         max_output_tokens = 1000\n[[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"{{mock}}\"\n\
         \n[keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n[[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n\
         max_budget = {max_usd}\nbudget_duration = \"monthly\"\n"
    )
}

async fn three(toml: &str, mock: &MockServer) -> Vec<Gateway> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(gateway(toml, mock).await);
    }
    out
}

/// Waits until no reservation of `scope` is held any more (bodies settle
/// in the background a moment after the client has read them).
async fn settled(ledger: &RedisLedger, scope: &Scope) -> u64 {
    for _ in 0..500 {
        let u = ledger.usage(scope, Period::Monthly).await.unwrap();
        if u.reserved == 0 {
            return u.spent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("money still reserved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_requests_over_three_gateways_never_overspend() {
    let url = redis_url();
    let prefix = prefix("budget");
    let state = state_at(&url, &prefix).await;
    let mock = mock().await;
    // Each request reserves 1 prompt token + 100 output = 101 micros; the
    // budget, $0.0101, holds about 100 of them at once.
    let toml = format!("{}{}", priced(0.0101), state_section(&url, &prefix, ""));
    let gws = three(&toml, &mock).await;
    let body = chat("m", r#""max_tokens":100"#);
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let (url, body) = (gws[i % 3].url("/v1/chat/completions"), body.clone());
            tokio::spawn(async move { post(&url, body).await })
        })
        .collect();
    let (mut ok, mut refused, mut charged) = (0u64, 0u64, 0u64);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            200 => {
                ok += 1;
                let usage = &a.json()["usage"];
                let cost = usage["prompt_tokens"].as_u64().unwrap()
                    + usage["completion_tokens"].as_u64().unwrap();
                // Never more than the reservation.
                charged += cost.min(101);
            }
            _ => {
                let e = a.error(402, "budget_exceeded");
                assert_eq!(e["error"]["metadata"]["scope"], "key");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 600);
    assert!(ok >= 100 && refused >= 1, "ok {ok}, refused {refused}");
    let ledger = RedisLedger::new(state, TimeZone::UTC);
    let spent = settled(&ledger, &Scope::Key("client01".into())).await;
    assert!(spent <= 10_100, "spent {spent} over the $0.0101 budget");
    assert_eq!(
        spent, charged,
        "every answer charged once, by whichever replica"
    );
    assert_eq!(
        mock.log.len() as u64,
        ok,
        "no refused request reached upstream"
    );
    // Every replica's `/key/info` reads the key's spend from Redis: the
    // same figure whichever replica is asked.
    for gw in &gws {
        let res = anonymous()
            .get(gw.url("/key/info?key=client01"))
            .bearer_auth(MASTER_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let info: serde_json::Value = res.json().await.unwrap();
        let budgets = &info["info"]["budgets"];
        assert_eq!(budgets[0]["scope"], "key", "{info}");
        assert_eq!(budgets[0]["spend_micros"], spent, "{info}");
        assert_eq!(budgets[0]["reserved_micros"], 0, "{info}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_requests_per_minute_hold_across_three_gateways() {
    let url = redis_url();
    let prefix = prefix("rpm");
    state_at(&url, &prefix).await;
    let mock = mock().await;
    let toml = format!(
        "[rate_limits]\nrequests_per_minute = 60\n\n[[groups]]\nname = \"m\"\n\
         [[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"{{mock}}\"\n{}",
        state_section(&url, &prefix, "")
    );
    let gws = three(&toml, &mock).await;
    // A fast burst of 150 (far less than a minute): only the bucket's 60
    // pass, whichever replica they reach; perhaps one more as a cell refills.
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let url = gws[i % 3].url("/v1/chat/completions");
            tokio::spawn(async move { post(&url, chat("m", "")).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == 200 {
            ok += 1;
            assert_eq!(a.headers["x-ratelimit-limit-requests"], "60");
        } else {
            a.error(429, "rate_limited");
            assert!(a.headers.contains_key("retry-after"));
            assert_eq!(a.headers["x-ratelimit-remaining-requests"], "0");
        }
    }
    assert!((60..=61).contains(&ok), "{ok} of 150 passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_gateway_cools_the_deployment_for_all() {
    let url = redis_url();
    let prefix = prefix("cooldown");
    let state = state_at(&url, &prefix).await;
    let a = mock().await;
    let b = mock().await;
    let toml = format!(
        "[[groups]]\nname = \"g\"\n\
         [[groups.deployments]]\nprovider = \"mock\"\nname = \"a\"\nbase_url = \"{}\"\n\
         headers = {{ \"x-mock-fault\" = \"429:60\" }}\n\
         [[groups.deployments]]\nprovider = \"mock\"\nname = \"b\"\nbase_url = \"{}\"\n{}",
        a.base_url(),
        b.base_url(),
        state_section(&url, &prefix, "")
    );
    let gws = three(&toml, &a).await;
    // A replica that only watches, to know when the news is out.
    let watcher = RedisCooldowns::new(state, 2, Arc::new(SystemClock));
    watcher.synced().await;
    let dep_a = DeploymentId::new(0, "g/a");
    // Gateway 0 meets the 429 (sooner or later P2C picks a) and retries on b.
    let mut tries = 0;
    while a.log.is_empty() {
        let ans = post(&gws[0].url("/v1/chat/completions"), chat("g", "")).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(ans.headers["x-tollgate-deployment"], "b");
        tries += 1;
        assert!(tries < 100, "a was never tried");
    }
    let mut waited = 0;
    while watcher
        .get(&dep_a)
        .is_none_or(|c| c.until <= SystemClock.now_ms())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
        assert!(waited < 1000, "the cooldown was never published");
    }
    // Every subscriber got the same PUBLISH at the same moment; let the
    // others apply it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for gw in &gws[1..] {
        for _ in 0..10 {
            let ans = post(&gw.url("/v1/chat/completions"), chat("g", "")).await;
            assert_eq!(ans.status, 200, "{}", ans.body);
            assert_eq!(ans.headers["x-tollgate-deployment"], "b");
            assert_eq!(ans.headers["x-tollgate-attempts"], "1", "never tried a");
        }
    }
    assert_eq!(a.log.len(), 1, "only gateway 0 ever sent to a");
    // A replica started now loads the cooldown from Redis.
    let late = gateway(&toml, &a).await;
    for _ in 0..10 {
        let ans = post(&late.url("/v1/chat/completions"), chat("g", "")).await;
        assert_eq!(ans.headers["x-tollgate-deployment"], "b");
    }
    assert_eq!(a.log.len(), 1);
}

/// A private `redis-server` (no persistence) on `port`.
fn redis_server(port: u16) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (the stop/restart test starts its own)")
}

async fn until_up(url: &str) {
    let s = RedisState::open(url, "x:", Duration::from_millis(200)).unwrap();
    for _ in 0..200 {
        if s.ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the private redis-server at {url} never answered");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_load_refuses_with_503_and_recovers_when_it_is_back() {
    let port = closed_port().await;
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = Killed(redis_server(port));
    until_up(&url).await;
    let prefix = prefix("outage");
    let mock = mock().await;
    let toml = format!(
        "{}\n[rate_limits]\nrequests_per_minute = 100000\n{}",
        priced(100.0),
        state_section(&url, &prefix, "on_unavailable_rate_limit = \"closed\"")
    );
    let gws = Arc::new(three(&toml, &mock).await);
    let endpoint = |i: usize| gws[i % 3].url("/v1/chat/completions");
    // Load before the outage: served and budgeted.
    for i in 0..30 {
        let a = post(&endpoint(i), chat("m", r#""max_tokens":10"#)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Load running while Redis dies.
    let load: Vec<_> = (0..90)
        .map(|i| {
            let url = endpoint(i);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i as u64)).await;
                post(&url, chat("m", r#""max_tokens":10"#)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let _ = server.0.kill();
    let _ = server.0.wait();
    for t in load {
        let a = t.await.expect("answered: none hang");
        if a.status != 200 {
            let e = a.error(503, "state_unavailable");
            assert!(
                e["error"]["message"].as_str().unwrap().contains("Redis"),
                "{}",
                a.body
            );
        }
    }
    // Redis is down now: no request is served, budgeted or not.
    let served_before = mock.log.len();
    for i in 0..30 {
        let a = post(&endpoint(i), chat("m", r#""max_tokens":10"#)).await;
        let e = a.error(503, "state_unavailable");
        assert_eq!(a.headers["retry-after"], "1");
        assert!(!a.body.contains(&port.to_string()), "{}", a.body);
        assert!(e["error"]["metadata"]["state"].is_string());
    }
    assert_eq!(
        mock.log.len(),
        served_before,
        "none reached upstream unbudgeted"
    );
    // Redis comes back (empty: no persistence) on the same port; the
    // gateways reconnect by themselves.
    let _server = Killed(redis_server(port));
    until_up(&url).await;
    for i in 0..3 {
        let mut tries = 0;
        loop {
            let a = post(&endpoint(i), chat("m", r#""max_tokens":10"#)).await;
            if a.status == 200 {
                break;
            }
            a.error(503, "state_unavailable");
            tries += 1;
            assert!(tries < 100, "gateway {i} never recovered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ledger = RedisLedger::new(state_at(&url, &prefix).await, TimeZone::UTC);
    let spent = settled(&ledger, &Scope::Key("client01".into())).await;
    assert!(spent > 0, "the requests after the restart were charged");
}

/// Found by the chaos soak (`examples/soak.rs`): a request admitted just
/// before Redis went away settled after it, and the settlement gave up after
/// five quick tries, so Redis never charged what the spend record says was
/// spent, and the budget let later requests spend it again. A settlement
/// now waits out the outage (up to the reservation's hold) and is charged
/// once when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_waits_out_a_redis_outage_and_is_charged_once() {
    let port = closed_port().await;
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = Killed(redis_server(port));
    until_up(&url).await;
    let state = RedisState::open(&url, &prefix("late-settle"), Duration::from_millis(200)).unwrap();
    let ledger = RedisLedger::new(state, TimeZone::UTC).hold(Duration::from_secs(120));
    let limit = tollgate::budget::Limit {
        scope: Scope::Key("k".into()),
        max: 1_000,
        period: Period::Monthly,
    };
    let held = ledger
        .reserve(std::slice::from_ref(&limit), 100)
        .await
        .unwrap();
    let _ = server.0.kill();
    let _ = server.0.wait();
    // Settled while Redis is away: every try fails until it is back.
    held.settle(40);
    // Longer than the five tries (200 ms each at most, 750 ms of backoff)
    // the ledger used to make before giving the charge up; not a timing
    // assertion: the settlement must land however long the outage lasts
    // within the hold.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Back empty (no persistence): the charge still lands, on a new counter.
    let _server = Killed(redis_server(port));
    until_up(&url).await;
    tokio::time::timeout(Duration::from_secs(60), ledger.settled())
        .await
        .expect("the settlement lands once Redis is back");
    // The ledger's own connection may still be coming back.
    let mut tries = 0;
    let u = loop {
        match ledger.usage(&limit.scope, limit.period).await {
            Ok(u) => break u,
            Err(e) => {
                tries += 1;
                assert!(tries < 200, "Redis never answered the ledger again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!((u.spent, u.reserved), (40, 0), "charged once, nothing held");
}
