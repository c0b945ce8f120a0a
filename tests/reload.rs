//! Configuration reloads on the running gateway process: the built `gateway`
//! binary with the bundled mock upstream, its config file rewritten and
//! `kill -HUP` sent, under continuous load (requests and streams). No
//! request may fail because of a reload; a stream in flight finishes on the
//! config it started with; a bad or restart-only change is refused and the
//! running config keeps serving; cooldowns, budgets' spend and rate-limit
//! state of what remains carry over.
//!
//! Build the binary first when running this target alone:
//! `cargo build --all-features --example gateway`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::processes::{GatewayProcess, fill, spawn_gateway, within};
use common::{
    CLIENT_KEY, MASTER_KEY, MockConfig, anonymous, chat, events, generate_key, mock_upstream,
    post_as,
};
use serde_json::{Value, json};

/// Waits until the gateway has counted `n` reloads with `outcome`
/// (`tollgate_config_reloads_total`): the reload is then in place.
async fn reloads(gw: &GatewayProcess, outcome: &str, n: u64) {
    let url = gw.url("/metrics");
    let logs = std::sync::Arc::new(std::sync::Mutex::new(gw.logs()));
    let series = format!("tollgate_config_reloads_total{{outcome=\"{outcome}\"}} ");
    within(
        &format!("{n} reload(s) {outcome}"),
        Duration::from_secs(30),
        || {
            let url = url.clone();
            let series = series.clone();
            *logs.lock().unwrap() = gw.logs();
            let logs = logs.clone();
            async move {
                let text = anonymous()
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                let seen = text
                    .lines()
                    .find_map(|l| l.strip_prefix(series.as_str()))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0) as u64;
                if seen >= n {
                    Ok(())
                } else {
                    let said: Vec<String> = logs
                        .lock()
                        .unwrap()
                        .lines()
                        .filter(|l| l.contains("reload"))
                        .map(str::to_owned)
                        .collect();
                    Err(format!("{seen} so far; the log says: {said:#?}"))
                }
            }
        },
    )
    .await;
}

/// Rewrites the config file and sends SIGHUP.
fn reload_with(gw: &GatewayProcess, toml: &str) {
    std::fs::write(gw.config_path(), toml).expect("config rewritten");
    gw.hangup();
}

/// A static client key with every grant and the admin API, in memory.
const KEYS: &str = r#"
[server]
listen = "127.0.0.1:0"
[keys]
url = "memory"
master_key_env = "{master_env}"
[[keys.static]]
key_env = "{client_env}"
models = ["*"]
"#;

fn group(name: &str, deployments: &[&str], base: &str, extra: &str) -> String {
    let mut out = format!("[[groups]]\nname = \"{name}\"\n{extra}\n");
    for d in deployments {
        out.push_str(&format!(
            "[[groups.deployments]]\nname = \"{d}\"\nprovider = \"mock\"\nbase_url = \"{base}\"\napi_key_env = \"{{key_env}}\"\n"
        ));
    }
    out
}

/// One streamed chat answer through the gateway: `Ok` only when it is a 200
/// whose stream ends with `[DONE]` after its content.
async fn stream_ok(url: &str, model: &str) -> Result<(), String> {
    let res = anonymous()
        .post(url)
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(chat(model, r#""stream":true"#))
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = res.status();
    let body = res.text().await.map_err(|e| format!("body: {e}"))?;
    let ev = events(&body);
    if status != 200 || ev.last().map(String::as_str) != Some("[DONE]") || ev.len() < 3 {
        return Err(format!("{status}: {body}"));
    }
    if body.contains("\"error\"") {
        return Err(format!("an error event: {body}"));
    }
    Ok(())
}

async fn spend_of(gw: &GatewayProcess, key_id: &str) -> f64 {
    let info: Value = anonymous()
        .get(gw.url(&format!("/key/info?key={key_id}")))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The key's own budget's spend, in micro-USD (exact).
    info["info"]["budgets"][0]["spend_micros"]
        .as_f64()
        .unwrap_or_else(|| panic!("no budget spend: {info}"))
}

/// Waits until the key's spend differs from `before`; returns it.
async fn spend_after(gw: &GatewayProcess, key_id: &str, before: f64) -> f64 {
    let (spent, _) = within("the spend settled", Duration::from_secs(30), || async {
        let now = spend_of(gw, key_id).await;
        if now != before {
            Ok(now)
        } else {
            Err(format!("still {now}"))
        }
    })
    .await;
    spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_under_load_and_no_request_fails() {
    common::init();
    let fast = common::mock().await;
    // A slow stream: 120 events, 50 ms apart (6 s), so it spans a reload.
    let slow = mock_upstream::spawn(MockConfig {
        tokens: 120,
        chunk_interval: Duration::from_millis(50),
        ..MockConfig::default()
    })
    .await
    .expect("the slow mock starts");
    let base = fast.base_url();
    let prices = |p: f64| format!("price_in_per_mtok = {p}\nprice_out_per_mtok = {p}");
    let config = |steady: &[&str], added: bool, price: f64, slow_group: bool| {
        let mut t = KEYS.to_owned();
        t.push_str(&group("steady", steady, &base, ""));
        t.push_str(&group("priced", &["p"], &base, &prices(price)));
        if slow_group {
            t.push_str(&group("slow", &["s"], &slow.base_url(), ""));
        }
        if added {
            t.push_str(&group("added", &["n"], &base, ""));
        }
        fill(&t, &fast)
    };
    let gw = spawn_gateway(&config(&["a", "b"], false, 1000.0, true)).await;
    let chat_url = gw.url("/v1/chat/completions");

    // Continuous load on `steady`: non-streaming and streaming, concurrently.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..6)
        .map(|i| {
            let (stop, served, url) = (stop.clone(), served.clone(), chat_url.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let outcome = if i % 2 == 0 {
                        stream_ok(&url, "steady").await
                    } else {
                        let a = post_as(&url, CLIENT_KEY, chat("steady", "")).await;
                        if a.status == 200 {
                            Ok(())
                        } else {
                            Err(format!("{}: {}", a.status, a.body))
                        }
                    };
                    match outcome {
                        Ok(()) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e),
                    }
                }
                failures
            })
        })
        .collect();

    // Keys written through the admin API while the reloads happen: every
    // one must work on whatever config is in place afterwards.
    let writer = {
        let (stop, base) = (stop.clone(), gw.url(""));
        tokio::spawn(async move {
            let mut keys = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let res = anonymous()
                    .post(format!("{base}/key/generate"))
                    .bearer_auth(MASTER_KEY)
                    .json(&json!({"models": ["steady"]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 200);
                let v: Value = res.json().await.unwrap();
                keys.push(v["key"].as_str().unwrap().to_owned());
            }
            keys
        })
    };

    // Before: `added` is not a model here.
    let before = post_as(&chat_url, CLIENT_KEY, chat("added", "")).await;
    before.error(404, "model_not_found");

    // Reload 1: a group added, then served.
    reload_with(&gw, &config(&["a", "b"], true, 1000.0, true));
    reloads(&gw, "ok", 1).await;
    let added = post_as(&chat_url, CLIENT_KEY, chat("added", "")).await;
    assert_eq!(added.status, 200, "{}", added.body);
    let listed: Value = anonymous()
        .get(gw.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.to_string().contains("\"added\""), "{listed}");

    // Reload 2: a price changed, then charged at the new price. The same
    // request costs ten times as much after it.
    let (key, key_id) =
        generate_key(&gw, json!({"models": ["priced"], "max_budget": 1000.0})).await;
    let body = chat("priced", r#""max_tokens":16"#);
    assert_eq!(post_as(&chat_url, &key, body.clone()).await.status, 200);
    let first = spend_after(&gw, &key_id, 0.0).await;
    reload_with(&gw, &config(&["a", "b"], true, 10_000.0, true));
    reloads(&gw, "ok", 2).await;
    assert_eq!(post_as(&chat_url, &key, body.clone()).await.status, 200);
    let second = spend_after(&gw, &key_id, first).await - first;
    assert_eq!(
        second,
        10.0 * first,
        "micro-USD charged at the old price, then at the new one"
    );

    // A stream on `slow`, in flight across the reload that removes its group.
    let slow_stream = {
        let url = chat_url.clone();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut res = anonymous()
                .post(&url)
                .bearer_auth(CLIENT_KEY)
                .header("content-type", "application/json")
                .body(chat("slow", r#""stream":true"#))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let deployment = res.headers()["x-tollgate-deployment"].clone();
            let mut body = String::new();
            let mut first = Some(first_tx);
            while let Some(chunk) = res.chunk().await.unwrap() {
                body.push_str(std::str::from_utf8(&chunk).unwrap());
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
            (deployment, body)
        });
        first_rx.await.expect("the slow stream started");
        task
    };

    // Reload 3: deployment `b` removed from `steady`, group `slow` removed
    // while its stream is in flight.
    reload_with(&gw, &config(&["a"], true, 10_000.0, false));
    reloads(&gw, "ok", 3).await;
    assert!(
        !slow_stream.is_finished(),
        "the slow stream should still be in flight after the reload"
    );
    for _ in 0..20 {
        let a = post_as(&chat_url, CLIENT_KEY, chat("steady", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-tollgate-deployment"], "a", "b was removed");
    }
    post_as(&chat_url, CLIENT_KEY, chat("slow", ""))
        .await
        .error(404, "model_not_found");
    // The stream that started on the old config ends whole on it.
    let (deployment, body) = slow_stream.await.unwrap();
    assert_eq!(deployment, "s");
    let ev = events(&body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert!(
        body.contains("tok119"),
        "every event of the old stream: {body}"
    );
    assert!(!body.contains("\"error\""), "{body}");

    // A bad config (a fallback to a group that does not exist) is refused,
    // naming the file and the field; the running config keeps serving.
    let mut bad = config(&["a"], true, 10_000.0, false);
    bad = bad.replacen(
        "name = \"steady\"\n",
        "name = \"steady\"\nfallbacks = [\"gpt-5-typo\"]\n",
        1,
    );
    reload_with(&gw, &bad);
    reloads(&gw, "refused", 1).await;
    let path = gw.config_path().display().to_string();
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{logs}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains(&path), "names the file: {line}");
    assert!(
        line.contains("groups[0].fallbacks"),
        "names the field: {line}"
    );
    assert!(line.contains("gpt-5-typo"), "{line}");
    let still = post_as(&chat_url, CLIENT_KEY, chat("added", "")).await;
    assert_eq!(still.status, 200, "{}", still.body);

    // A setting only a restart can change is refused whole, naming it: the
    // group it would also have added is not served.
    let moved = config(&["a", "b"], true, 10_000.0, false).replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:1\"",
        1,
    );
    reload_with(&gw, &moved);
    reloads(&gw, "refused", 2).await;
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("reload refused") && l.contains("server.listen")),
        "{logs}"
    );
    let after = post_as(&chat_url, CLIENT_KEY, chat("steady", "")).await;
    assert_eq!(
        after.headers["x-tollgate-deployment"], "a",
        "nothing applied"
    );

    // A valid config again: reloads resume.
    reload_with(&gw, &config(&["a", "b"], true, 10_000.0, false));
    reloads(&gw, "ok", 4).await;
    assert!(
        logs_have(&gw, "configuration reloaded", "added=[]"),
        "{}",
        gw.logs()
    );

    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the reloads: {:?}",
        failures.len(),
        failures.len() + served.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(served.load(Ordering::Relaxed) > 50, "the load ran");
    let written = writer.await.unwrap();
    assert!(!written.is_empty());
    for key in &written {
        let a = post_as(&chat_url, key, chat("steady", "")).await;
        assert_eq!(
            a.status, 200,
            "a key written during the reloads: {}",
            a.body
        );
    }
    // The first reload's log line says what changed.
    assert!(
        logs_have(&gw, "configuration reloaded", "added=[\"added\"]"),
        "{}",
        gw.logs()
    );
    assert!(
        logs_have(&gw, "configuration reloaded", "removed=[\"slow\"]"),
        "{}",
        gw.logs()
    );
}

fn logs_have(gw: &GatewayProcess, message: &str, part: &str) -> bool {
    gw.logs()
        .lines()
        .any(|l| l.contains(message) && l.contains(part))
}

/// What the old config learned holds in the new one: a deployment's
/// cooldown, a key's budget spend and its rate-limit bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldowns_spend_and_rate_limits_survive_a_reload() {
    survive_a_reload("").await;
}

/// The same with budgets, rate limits and cooldowns in Redis (`[state]`).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_in_redis_survives_a_reload() {
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let prefix = format!("tollgate-test-reload-{}-{nanos}:", std::process::id());
    survive_a_reload(&format!(
        "[state]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout_ms = 10000\n"
    ))
    .await;
}

async fn survive_a_reload(state: &str) {
    common::init();
    let mock = common::mock().await;
    let base = mock.base_url();
    let config = |more_groups: &str| {
        let mut t = KEYS.to_owned();
        t.push_str(state);
        // No retry: a failed attempt is the answer, naming its deployment.
        t.push_str("[router]\nnum_retries = 0\n");
        t.push_str(&group("cool", &["x", "y"], &base, ""));
        t.push_str(&group(
            "paid",
            &["p"],
            &base,
            "price_in_per_mtok = 1000.0\nprice_out_per_mtok = 1000.0",
        ));
        t.push_str(more_groups);
        fill(&t, &mock)
    };
    let gw = spawn_gateway(&config("[access_groups]\nteam = [\"paid\"]\n")).await;
    let chat_url = gw.url("/v1/chat/completions");

    // A key granted an access group: `cool` is not in it yet.
    let (member, _) = generate_key(&gw, json!({"models": ["team"]})).await;
    post_as(&chat_url, &member, chat("cool", ""))
        .await
        .error(403, "model_not_allowed");

    // A 429 with a long Retry-After cools one deployment of `cool` down.
    let limited = post_as(
        &chat_url,
        CLIENT_KEY,
        chat("cool", r#""mock_fault":"429:600""#),
    )
    .await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    let cooled = limited.json()["error"]["metadata"]["attempts"][0]["deployment"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", limited.body))
        .to_owned();
    let other = if cooled == "x" { "y" } else { "x" };

    // A budget spent to its limit: the second request cannot be reserved.
    let (budgeted, budgeted_id) =
        generate_key(&gw, json!({"models": ["paid"], "max_budget": 0.05})).await;
    let body = chat("paid", r#""max_tokens":16"#);
    assert_eq!(
        post_as(&chat_url, &budgeted, body.clone()).await.status,
        200
    );
    let spent = spend_after(&gw, &budgeted_id, 0.0).await;
    post_as(&chat_url, &budgeted, body.clone())
        .await
        .error(402, "budget_exceeded");

    // A rate limit used up: one request a minute.
    let (limited_key, _) = generate_key(&gw, json!({"models": ["paid"], "rpm_limit": 1})).await;
    let cheap = chat("paid", r#""max_tokens":1"#);
    assert_eq!(
        post_as(&chat_url, &limited_key, cheap.clone()).await.status,
        200
    );
    post_as(&chat_url, &limited_key, cheap.clone())
        .await
        .error(429, "rate_limited");

    // The reload adds a group before the others (every deployment's index
    // moves) and changes `[rate_limits]` defaults.
    let next = config("[access_groups]\nteam = [\"paid\", \"cool\"]\n").replacen(
        "[router]",
        &format!(
            "{}[rate_limits]\nrequests_per_minute = 1000\n[router]",
            fill(&group("first", &["f"], &base, ""), &mock)
        ),
        1,
    );
    reload_with(&gw, &next);
    reloads(&gw, "ok", 1).await;
    assert_eq!(
        post_as(&chat_url, CLIENT_KEY, chat("first", ""))
            .await
            .status,
        200
    );

    // The access group grows: the key may use `cool` now.
    let granted = post_as(&chat_url, &member, chat("cool", "")).await;
    assert_eq!(granted.status, 200, "{}", granted.body);

    // The cooled deployment is still cooling: every request goes to the other.
    for _ in 0..10 {
        let a = post_as(&chat_url, CLIENT_KEY, chat("cool", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.headers["x-tollgate-deployment"], other,
            "{cooled} still cools"
        );
    }
    // The spend is the same and still refuses.
    assert_eq!(spend_of(&gw, &budgeted_id).await, spent);
    post_as(&chat_url, &budgeted, body)
        .await
        .error(402, "budget_exceeded");
    // The bucket is the same: still empty.
    post_as(&chat_url, &limited_key, cheap)
        .await
        .error(429, "rate_limited");
}
