//! `GET /deployments` on the reference gateway, through real sockets: the
//! mock upstream's faults (`x-mock-fault`) cool deployments down, and the
//! admin API shows it, on a `ManualClock` moved by hand (no wall-clock
//! assertion). With feature `redis`: two replicas sharing cooldowns show
//! the same cooldown, each with its own failure counts.
#![cfg(all(feature = "config", feature = "sqlite", feature = "admin"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tollgate::router::ManualClock;

/// `GET /deployments` (with `query`) presenting `key`: status and JSON.
async fn deployments(gw: &Gateway, query: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = anonymous().get(gw.url(&format!("/deployments{query}")));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Group `g` (`a` answers 429 with `Retry-After: 60`, `b` is fine, with a
/// capacity) falling back to `h`; a fair queue; the master key.
fn config(extra: &str) -> String {
    format!(
        "[[groups]]\nname = \"g\"\nfallbacks = [\"h\"]\n\
         [[groups.deployments]]\nprovider = \"mock\"\nname = \"a\"\nbase_url = \"{{mock}}\"\n\
         headers = {{ \"x-mock-fault\" = \"429:60\" }}\n\
         [[groups.deployments]]\nprovider = \"mock\"\nname = \"b\"\nbase_url = \"{{mock}}\"\ncapacity = 8\n\
         [[groups]]\nname = \"h\"\n\
         [[groups.deployments]]\nprovider = \"mock\"\nname = \"c\"\nbase_url = \"{{mock}}\"\n\
         [fair_queue]\ncapacity = 4\n\
         [keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n\
         [[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n{extra}"
    )
}

/// Sends chat requests to `g` until `a` has been tried (each is served by `b`).
async fn until_a_is_tried(gw: &Gateway) {
    let mut tries = 0;
    while !a_tried(gw).await {
        let ans = post(&gw.url("/v1/chat/completions"), chat("g", "")).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        tries += 1;
        assert!(tries < 100, "a was never tried");
    }
}

async fn a_tried(gw: &Gateway) -> bool {
    let (_, v) = deployments(gw, "?model_group=g", Some(MASTER_KEY)).await;
    v["groups"][0]["deployments"][0]["errors_total"] != 0
}

#[tokio::test]
async fn a_cooldown_enters_and_leaves_the_deployments_view() {
    let mock = mock().await;
    let clock = ManualClock::default();
    let gw = gateway_with_clock(&config(""), &mock, Arc::new(clock.clone())).await;

    let (s, v) = deployments(&gw, "", Some(MASTER_KEY)).await;
    assert_eq!(s, 200, "{v}");
    let g = &v["groups"][0];
    assert_eq!(g["model_group"], "g");
    assert_eq!(g["fallbacks"], serde_json::json!(["h"]));
    assert_eq!(
        g["queue"],
        serde_json::json!({"capacity": 4, "in_flight": 0, "waiting": 0, "waiting_by_tenant": {}})
    );
    let names: Vec<&str> = g["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deployment"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(g["deployments"][0]["state"], "ok");
    assert_eq!(g["deployments"][1]["capacity"], 8);
    assert_eq!(v["groups"][1]["model_group"], "h");
    assert!(
        !v.to_string().contains(&mock.base_url()),
        "no upstream URL: {v}"
    );

    until_a_is_tried(&gw).await;
    let (_, v) = deployments(&gw, "?model_group=g", Some(MASTER_KEY)).await;
    let a = &v["groups"][0]["deployments"][0];
    assert_eq!(a["state"], "cooldown", "{v}");
    assert_eq!(a["cooldown"]["reason"], "rate_limited");
    assert_eq!(a["cooldown"]["remaining_ms"], 60_000);
    assert_eq!(a["errors"]["upstream_rate_limited"], 1, "{v}");
    assert_eq!(v["groups"][0]["deployments"][1]["state"], "ok");

    clock.advance(Duration::from_secs(59));
    let (_, v) = deployments(&gw, "?model_group=g", Some(MASTER_KEY)).await;
    assert_eq!(
        v["groups"][0]["deployments"][0]["cooldown"]["remaining_ms"],
        1_000
    );
    clock.advance(Duration::from_secs(1));
    let (_, v) = deployments(&gw, "?model_group=g", Some(MASTER_KEY)).await;
    let a = &v["groups"][0]["deployments"][0];
    assert_eq!((&a["state"], &a["cooldown"]), (&"ok".into(), &Value::Null));
    assert_eq!(
        a["errors"]["upstream_rate_limited"], 1,
        "still in the window"
    );
}

#[tokio::test]
async fn the_deployments_view_needs_the_master_key_and_names_a_bad_parameter() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    let (s, v) = deployments(&gw, "", None).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = deployments(&gw, "", Some(CLIENT_KEY)).await;
    assert_eq!(s, 401, "a client key is not the master key: {v}");
    let (s, v) = deployments(&gw, "?model_group=nope", Some(MASTER_KEY)).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["metadata"]["param"], "model_group");
    let (s, v) = deployments(&gw, "?group=g", Some(MASTER_KEY)).await;
    assert_eq!(
        (s, &v["error"]["metadata"]["param"]),
        (400, &"group".into())
    );
}

/// Two replicas on one Redis: the cooldown one of them met shows in the
/// other's view (as it steers the other's routing); the failure is counted
/// by the replica that met it.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_show_the_same_cooldown() {
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "tollgate-it:deployments:{}:{}:",
        std::process::id(),
        fastrand::u64(..)
    );
    let state = format!("\n[state]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout_ms = 10000\n");
    let mock = mock().await;
    let one = gateway(&config(&state), &mock).await;
    let two = gateway(&config(&state), &mock).await;
    until_a_is_tried(&one).await;
    let mut waited = 0;
    let v = loop {
        let (_, v) = deployments(&two, "?model_group=g", Some(MASTER_KEY)).await;
        if v["groups"][0]["deployments"][0]["state"] == "cooldown" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
        assert!(waited < 1000, "the cooldown never reached replica two: {v}");
    };
    let a = &v["groups"][0]["deployments"][0];
    assert_eq!(a["cooldown"]["reason"], "rate_limited");
    assert_eq!(a["errors_total"], 0, "replica two met no failure: {v}");
    // And replica two routes as its view says: never to `a`.
    let sent = mock.log.len();
    for _ in 0..5 {
        let ans = post(&two.url("/v1/chat/completions"), chat("g", "")).await;
        assert_eq!(ans.headers["x-tollgate-deployment"], "b");
    }
    assert_eq!(mock.log.len(), sent + 5);
}
