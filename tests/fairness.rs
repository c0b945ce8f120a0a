//! Rate limits and fair queuing through real sockets: the reference gateway
//! in front of the mock upstream (with latency), all on 127.0.0.1. The
//! assertions are on outcomes, counts and order, never on how long things
//! took.

mod common;

use std::time::Duration;

use common::*;

const HEAVY: &str = EXTRA_KEYS[0].1;
const LIGHT: &str = EXTRA_KEYS[1].1;
const OTHER: &str = EXTRA_KEYS[2].1;

/// `config` with the three clients' keys registered; `other` holds the
/// `other` key's own settings (e.g. its rate limits).
fn with_keys(config: &str, other: &str) -> String {
    let mut c = String::from("[keys]\nstore = \"memory\"\n");
    for (i, (var, _)) in EXTRA_KEYS.iter().enumerate() {
        c += &format!("[[keys.static]]\nkey_env = \"{var}\"\nmodels = [\"*\"]\n");
        if i == 2 {
            c += other;
            c += "\n";
        }
    }
    c + config
}

/// A chat body that names its sender in `user` (forwarded untouched, so the
/// mock's log shows whose request reached the upstream, in order).
fn tagged(model: &str, who: &str) -> String {
    chat(model, &format!(r#""user":"{who}""#))
}

fn users_in_arrival_order(mock: &MockServer) -> Vec<String> {
    mock.log
        .all()
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            Some(v["user"].as_str()?.to_owned())
        })
        .collect()
}

/// Waits (bounded) until the mock has received `n` requests.
async fn upstream_saw(mock: &MockServer, n: usize) {
    for _ in 0..500 {
        if mock.log.len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the upstream never saw {n} requests");
}

#[tokio::test]
async fn a_burst_from_one_key_does_not_starve_another() {
    let mock = mock().await;
    let gw = gateway(
        &with_keys(
            r#"
        [fair_queue]
        capacity = 2
        [[groups]]
        name = "g"
        [[groups.deployments]]
        provider = "mock"
        base_url = "{mock}"
        headers = { "x-mock-latency-ms" = "150" }
        "#,
            "",
        ),
        &mock,
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let mut heavy = Vec::new();
    for i in 0..20 {
        let url = url.clone();
        heavy.push(tokio::spawn(async move {
            post_as(&url, HEAVY, tagged("g", &format!("heavy-{i}"))).await
        }));
    }
    // Two of the heavy key's requests are at the upstream: the rest wait.
    upstream_saw(&mock, 2).await;
    let before = mock.log.len();
    let mut light = Vec::new();
    for i in 0..3 {
        let url = url.clone();
        light.push(tokio::spawn(async move {
            post_as(&url, LIGHT, tagged("g", &format!("light-{i}"))).await
        }));
    }
    for t in light.into_iter().chain(heavy) {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let order = users_in_arrival_order(&mock);
    assert_eq!(order.len(), 23);
    let light_at: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, u)| u.starts_with("light"))
        .map(|(i, _)| i)
        .collect();
    // The light key is owed every other slot: its 3 requests reach the
    // upstream within the next 2 × 3 slots after it arrives (plus the 2 held
    // when it came, plus 2 for its requests' trip to the gateway), not
    // after the heavy key's other 18 as first-come-first-served would.
    assert_eq!(light_at.len(), 3);
    assert!(
        light_at.iter().all(|i| *i < before + 10),
        "light requests reached the upstream at {light_at:?} (of {order:?})"
    );
}

#[tokio::test]
async fn queue_full_is_429_and_waiting_too_long_is_503() {
    let mock = mock().await;
    let gw = gateway(
        &with_keys(
            r#"
        [fair_queue]
        capacity = 1
        max_queue_per_tenant = 1
        max_wait_ms = 300
        retry_after_s = 2
        [[groups]]
        name = "slow"
        [[groups.deployments]]
        provider = "mock"
        base_url = "{mock}"
        headers = { "x-mock-latency-ms" = "2000" }
        "#,
            "",
        ),
        &mock,
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let holder = {
        let url = url.clone();
        tokio::spawn(async move { post_as(&url, HEAVY, chat("slow", "")).await })
    };
    upstream_saw(&mock, 1).await;
    let (a, b) = tokio::join!(
        post_as(&url, HEAVY, chat("slow", "")),
        post_as(&url, HEAVY, chat("slow", ""))
    );
    let (full, timed_out) = if a.status == 429 { (a, b) } else { (b, a) };
    let v = full.error(429, "queue_full");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(full.headers["retry-after"], "2");
    let v = timed_out.error(503, "queue_timeout");
    assert_eq!(v["error"]["metadata"]["max_wait_ms"], 300);
    assert_eq!(timed_out.headers["retry-after"], "2");
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(
        mock.log.len(),
        1,
        "neither refused request reached the upstream"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_while_waiting_frees_its_place() {
    let mock = mock().await;
    let gw = gateway(
        &with_keys(
            r#"
        [fair_queue]
        capacity = 1
        max_queue_per_tenant = 1
        [[groups]]
        name = "slow"
        [[groups.deployments]]
        provider = "mock"
        base_url = "{mock}"
        headers = { "x-mock-latency-ms" = "1500" }
        "#,
            "",
        ),
        &mock,
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let holder = {
        let url = url.clone();
        tokio::spawn(async move { post_as(&url, OTHER, tagged("slow", "holder")).await })
    };
    upstream_saw(&mock, 1).await;
    let impatient = {
        let url = url.clone();
        tokio::spawn(async move { post_as(&url, HEAVY, tagged("slow", "impatient")).await })
    };
    // Give the request time to reach the queue, then hang up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    impatient.abort();
    let _ = impatient.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The key's one place in the queue is free again.
    let patient = post_as(&url, HEAVY, tagged("slow", "patient")).await;
    assert_eq!(patient.status, 200, "{}", patient.body);
    assert_eq!(holder.await.unwrap().status, 200);
    assert_eq!(users_in_arrival_order(&mock), ["holder", "patient"]);
}

#[tokio::test]
async fn rate_limits_per_key_with_openai_headers() {
    let mock = mock().await;
    let gw = gateway(
        &with_keys(
            r#"
        [rate_limits]
        requests_per_minute = 2
        tokens_per_minute = 100000
        [[groups]]
        name = "g"
        [[groups.deployments]]
        provider = "mock"
        base_url = "{mock}"
        "#,
            "rpm_limit = 100\ntpm_limit = 100",
        ),
        &mock,
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    let body = chat("g", r#""max_tokens":10"#);
    let first = post_as(&url, HEAVY, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers["x-ratelimit-limit-tokens"], "100000");
    assert!(first.headers.contains_key("x-ratelimit-reset-tokens"));
    let second = post_as(&url, HEAVY, body.clone()).await;
    assert_eq!(second.headers["x-ratelimit-remaining-requests"], "0");

    let refused = post_as(&url, HEAVY, body.clone()).await;
    let v = refused.error(429, "rate_limited");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["metadata"]["limit"], "requests");
    // One request comes back every 30 s.
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(v["error"]["metadata"]["retry_after_s"], retry);
    assert_eq!(refused.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(refused.headers["x-ratelimit-remaining-requests"], "0");
    let reset = refused.headers["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap();
    assert!(reset.ends_with('s') && reset.len() >= 2, "{reset}");

    // Another key has its own count; its token limit is too small for this
    // request's worst case, which can never pass.
    let other = post_as(&url, OTHER, chat("g", r#""max_tokens":500"#)).await;
    let v = other.error(429, "rate_limited");
    assert_eq!(v["error"]["metadata"]["permanent"], true);
    assert!(other.headers.get("retry-after").is_none());
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("can never pass"),
        "{}",
        other.body
    );
    let ok = post_as(&url, OTHER, body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers["x-ratelimit-limit-requests"], "100");
    assert_eq!(
        mock.log.len(),
        3,
        "refused requests never reach the upstream"
    );
}
