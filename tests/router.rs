//! Retries, cooldowns and fallbacks through real sockets: the reference
//! gateway in front of several mock upstreams on 127.0.0.1, faults chosen by
//! the header each deployment sends (`x-mock-fault`). Cooldowns run on a
//! `ManualClock` moved by hand: the tests assert on who got traffic, never
//! on wall-clock timing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tollgate::router::ManualClock;

/// A deployment of `mock` named `name`, with a fault header when `fault` is set.
fn deployment(name: &str, mock: &MockServer, fault: Option<&str>, extra: &str) -> String {
    let headers = fault
        .map(|f| format!("headers = {{ \"x-mock-fault\" = \"{f}\" }}\n"))
        .unwrap_or_default();
    format!(
        "[[groups.deployments]]\nprovider = \"mock\"\nname = \"{name}\"\nbase_url = \"{}\"\napi_key_env = \"{{key_env}}\"\n{headers}{extra}\n",
        mock.base_url()
    )
}

fn group(name: &str, extra: &str, deployments: &[String]) -> String {
    format!(
        "[[groups]]\nname = \"{name}\"\n{extra}\n{}",
        deployments.concat()
    )
}

const UPSTREAM: &str = "[upstream]\nconnect_timeout_ms = 1000\nfirst_byte_timeout_ms = 400\nidle_timeout_ms = 2000\n\n";

fn served_by(ans: &Answer) -> &str {
    ans.headers["x-tollgate-deployment"].to_str().unwrap()
}

fn attempts(ans: &Answer) -> u32 {
    ans.headers["x-tollgate-attempts"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Known failure #1 (the LiteLLM bug): a 429, whatever its body looks like,
/// cools its deployment down for `Retry-After` and the twin serves.
#[tokio::test]
async fn a_429_cools_its_deployment_down_for_retry_after_and_the_twin_serves() {
    // A plain 429 with `Retry-After: 6`, and an OpenAI-like provider's odd
    // one: `{"detail":"Too Many Requests"}` with `retry-after-ms: 6000`.
    for fault in ["429:6", "429-odd"] {
        let a = mock().await;
        let b = mock().await;
        let config = format!(
            "{UPSTREAM}{}",
            group(
                "g",
                "",
                &[
                    deployment("a", &a, Some(fault), ""),
                    deployment("b", &b, None, "")
                ]
            )
        );
        let clock = ManualClock::default();
        let gw = gateway_with_clock(&config, &a, Arc::new(clock.clone())).await;
        let url = gw.url("/v1/chat/completions");
        let mut retried = 0;
        for _ in 0..6 {
            let ans = post(&url, chat("g", "")).await;
            assert_eq!(ans.status, 200, "{fault}: {}", ans.body);
            assert_eq!(served_by(&ans), "b", "{fault}");
            if attempts(&ans) == 2 {
                retried += 1;
            }
        }
        assert_eq!(a.log.len(), 1, "{fault}: a cooled down after its 429");
        assert_eq!(
            retried, 1,
            "{fault}: the one request a saw was retried on b"
        );

        clock.advance(Duration::from_millis(5_900));
        for _ in 0..4 {
            assert_eq!(post(&url, chat("g", "")).await.status, 200);
        }
        assert_eq!(a.log.len(), 1, "{fault}: still cooling at 5.9 s");

        clock.advance(Duration::from_millis(200));
        for _ in 0..4 {
            let ans = post(&url, chat("g", "")).await;
            assert_eq!(ans.status, 200);
            assert_eq!(served_by(&ans), "b");
        }
        assert_eq!(a.log.len(), 2, "{fault}: a gets traffic again after 6 s");
    }
}

#[tokio::test]
async fn refused_timed_out_and_500_attempts_retry_elsewhere() {
    let good = mock().await;
    let bad = mock().await;
    let port = closed_port().await;
    let refused = format!(
        "[[groups.deployments]]\nprovider = \"gone\"\nname = \"bad\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    );
    let config = format!(
        "{UPSTREAM}{}{}{}",
        group(
            "refused",
            "",
            &[refused, deployment("good", &good, None, "")]
        ),
        group(
            "slow",
            "",
            &[
                deployment("bad", &bad, Some("delay:3000"), ""),
                deployment("good", &good, None, "")
            ]
        ),
        group(
            "boom",
            "",
            &[
                deployment("bad", &bad, Some("500"), ""),
                deployment("good", &good, None, "")
            ]
        ),
    );
    let gw = gateway_with_clock(&config, &good, Arc::new(ManualClock::default())).await;
    for g in ["refused", "slow", "boom"] {
        let mut retried = 0;
        for _ in 0..3 {
            let ans = post(&gw.url("/v1/chat/completions"), chat(g, "")).await;
            assert_eq!(ans.status, 200, "{g}: {}", ans.body);
            assert_eq!(served_by(&ans), "good", "{g}");
            if attempts(&ans) == 2 {
                retried += 1;
            }
        }
        assert!(
            retried >= 1,
            "{g}: the bad deployment was tried and routed around"
        );
    }
    // The bad mock saw the timed-out and the 500 requests.
    assert!(bad.log.len() >= 2);
}

#[tokio::test]
async fn a_400_is_returned_at_once_without_retry() {
    let a = mock().await;
    let b = mock().await;
    let config = format!(
        "{UPSTREAM}{}",
        group(
            "g",
            "fallbacks = [\"other\"]",
            &[deployment("a", &a, None, ""), deployment("b", &b, None, "")]
        ) + &group("other", "", &[deployment("o", &b, None, "")]),
    );
    let gw = gateway_with_clock(&config, &a, Arc::new(ManualClock::default())).await;
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("g", r#""mock_fault":"400""#),
    )
    .await;
    let v = ans.error(400, "upstream_rejected_request");
    assert_eq!(
        a.log.len() + b.log.len(),
        1,
        "one upstream call, no retry, no fallback"
    );
    assert_eq!(
        v["error"]["metadata"]["attempts"].as_array().unwrap().len(),
        1
    );

    // Nor is a context-length error without `context_window_fallbacks`.
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("g", r#""mock_fault":"context_length""#),
    )
    .await;
    ans.error(400, "context_length_exceeded");
    assert_eq!(a.log.len() + b.log.len(), 2);
}

#[tokio::test]
async fn an_upstream_401_cools_its_deployment_down_and_the_client_never_sees_it() {
    let a = mock().await;
    let b = mock().await;
    let config = format!(
        "{UPSTREAM}{}",
        group(
            "g",
            "",
            &[
                deployment("a", &a, Some("401"), ""),
                deployment("b", &b, None, "")
            ]
        )
    );
    let gw = gateway_with_clock(&config, &a, Arc::new(ManualClock::default())).await;
    for _ in 0..5 {
        let ans = post(&gw.url("/v1/chat/completions"), chat("g", "")).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(served_by(&ans), "b");
        assert!(!ans.body.contains("401") && !ans.body.contains("invalid_api_key"));
        assert_no_secrets(
            "a retried answer",
            &format!("{:?}{}", ans.headers, ans.body),
        );
    }
    assert_eq!(a.log.len(), 1, "cooled down after the first 401");
}

#[tokio::test]
async fn model_not_found_on_every_deployment_falls_back_to_the_next_group() {
    let a = mock().await;
    let b = mock().await;
    let backup = mock().await;
    let config = format!(
        "{UPSTREAM}{}{}",
        group(
            "primary",
            "fallbacks = [\"backup\"]",
            &[
                deployment("a", &a, Some("404"), ""),
                deployment("b", &b, Some("404"), "")
            ]
        ),
        group(
            "backup",
            "",
            &[deployment(
                "backup-1",
                &backup,
                None,
                "model = \"mock-large\""
            )]
        ),
    );
    let gw = gateway_with_clock(&config, &a, Arc::new(ManualClock::default())).await;
    let ans = post(&gw.url("/v1/chat/completions"), chat("primary", "")).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(
        ans.json()["model"],
        "backup",
        "the answer names what served"
    );
    assert_eq!(ans.headers["x-tollgate-model-group"], "backup");
    assert_eq!(served_by(&ans), "backup-1");
    assert_eq!(attempts(&ans), 3);
    assert_eq!(a.log.len() + b.log.len(), 2);
    let sent = backup.log.last().unwrap();
    let want = chat("primary", "").replace(r#""primary""#, r#""mock-large""#);
    assert_eq!(
        String::from_utf8_lossy(&sent.body),
        want,
        "the client's bytes, only `model` changed"
    );

    // The primary's deployments now cool down (model gone): the fallback
    // goes straight to the backup.
    let ans = post(&gw.url("/v1/chat/completions"), chat("primary", "")).await;
    assert_eq!(ans.status, 200);
    assert_eq!(attempts(&ans), 1);
    assert_eq!(a.log.len() + b.log.len(), 2);
}

/// Known failure #11: 503 "come back later" and 404 "gone" are told apart.
#[tokio::test]
async fn every_deployment_cooling_is_503_with_retry_after_unlike_a_retired_model() {
    let a = mock().await;
    let b = mock().await;
    let config = format!(
        "{UPSTREAM}{}{}",
        group(
            "hot",
            "",
            &[
                deployment("a", &a, Some("429:6"), ""),
                deployment("b", &b, Some("429:9"), "")
            ]
        ),
        group(
            "retired",
            "",
            &[
                deployment("r1", &a, Some("404"), ""),
                deployment("r2", &b, Some("404"), "")
            ]
        ),
    );
    let clock = ManualClock::default();
    let gw = gateway_with_clock(&config, &a, Arc::new(clock.clone())).await;
    let url = gw.url("/v1/chat/completions");

    let ans = post(&url, chat("hot", "")).await;
    let v = ans.error(429, "upstream_rate_limited");
    assert_eq!(
        v["error"]["metadata"]["attempts"].as_array().unwrap().len(),
        2
    );
    clock.advance(Duration::from_secs(1));
    let ans = post(&url, chat("hot", "")).await;
    let v = ans.error(503, "no_available_deployment");
    assert_eq!(ans.headers["retry-after"], "5", "the soonest expiry");
    assert_eq!(v["error"]["metadata"]["retry_after_s"], 5);
    assert!(v["error"]["metadata"].get("permanent").is_none());
    assert_eq!(v["error"]["type"], "service_unavailable_error");

    for _ in 0..2 {
        let ans = post(&url, chat("retired", "")).await;
        let v = ans.error(404, "upstream_model_not_found");
        assert_eq!(v["error"]["metadata"]["permanent"], true);
        assert!(ans.headers.get("retry-after").is_none());
    }
    assert_eq!(
        a.log.len() + b.log.len(),
        4,
        "nothing sent while all cool down"
    );
}

#[tokio::test]
async fn streaming_errors_before_the_first_chunk_fall_back_invisibly() {
    // A 500 status, and a stream cut before any content.
    for fault in ["500", "cut:0"] {
        let primary = mock().await;
        let backup = mock().await;
        let config = format!(
            "{UPSTREAM}[router]\nnum_retries = 0\n\n{}{}",
            group(
                "s",
                "fallbacks = [\"s-backup\"]",
                &[deployment("p", &primary, Some(fault), "")]
            ),
            group("s-backup", "", &[deployment("bk", &backup, None, "")]),
        );
        let gw = gateway_with_clock(&config, &primary, Arc::new(ManualClock::default())).await;
        let ans = post(
            &gw.url("/v1/chat/completions"),
            chat("s", r#""stream":true"#),
        )
        .await;
        assert_eq!(ans.status, 200, "{fault}: {}", ans.body);
        assert_eq!(ans.headers["x-tollgate-model-group"], "s-backup", "{fault}");
        assert_eq!(attempts(&ans), 2, "{fault}");
        let ev = events(&ans.body);
        assert_eq!(ev.last().unwrap(), "[DONE]", "{fault}");
        assert!(
            !ans.body.contains("\"error\""),
            "{fault}: invisible: {}",
            ans.body
        );
        let text: String = ev[..ev.len() - 1]
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        let want: Vec<String> = (0..16).map(|i| format!("tok{i}")).collect();
        assert_eq!(text, want.join(" "), "{fault}");
        assert_eq!(primary.log.len(), 1);
        assert_eq!(backup.log.len(), 1);
    }
}

/// Known failure #9: after the first content chunk there is no fallback, and
/// no assistant "prefill" is ever sent upstream.
#[tokio::test]
async fn a_stream_cut_after_the_third_chunk_ends_with_an_error_event_and_no_fallback() {
    let primary = mock().await;
    let backup = mock().await;
    let config = format!(
        "{UPSTREAM}{}{}",
        group(
            "c",
            "fallbacks = [\"c-backup\"]",
            &[deployment("p", &primary, Some("cut:3"), "")]
        ),
        group("c-backup", "", &[deployment("bk", &backup, None, "")]),
    );
    let gw = gateway_with_clock(&config, &primary, Arc::new(ManualClock::default())).await;
    let body = chat("c", r#""stream":true"#);
    let ans = post(&gw.url("/v1/chat/completions"), body.clone()).await;
    assert_eq!(ans.status, 200);
    assert_eq!(attempts(&ans), 1);
    let ev = assert_ended_by_error(&ans.body, "upstream_stream_cut");
    let content = ev
        .iter()
        .filter(|e| e.contains("\"content\":\"tok") || e.contains("\"content\":\" tok"))
        .count();
    assert_eq!(content, 3, "{}", ans.body);

    assert!(backup.log.is_empty(), "no fallback after the commit point");
    let seen = primary.log.all();
    assert_eq!(seen.len(), 1, "no retry after the commit point");
    let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1);
    assert!(
        messages.iter().all(|m| m["role"] != "assistant"),
        "no prefill: {sent}"
    );
    // The client's bytes, with only what metering needs added (the
    // gateway's `Budget` asks for the usage chunk, and hides it from a
    // client that did not ask).
    let metered = body.replacen(
        r#""stream":true"#,
        r#""stream":true,"stream_options":{"include_usage":true}"#,
        1,
    );
    assert_eq!(String::from_utf8_lossy(&seen[0].body), metered);
}

/// Known failure #8: a fallback naming an unknown group is a start-up error.
#[tokio::test]
async fn a_config_whose_fallback_names_an_unknown_group_refuses_to_start() {
    init();
    let m = mock().await;
    let text = format!(
        "{}{}",
        group("a", "", &[deployment("a", &m, None, "")]),
        group(
            "b",
            "fallbacks = [\"a\", \"gpt-4o-typo\"]",
            &[deployment("b", &m, None, "")]
        ),
    )
    .replace("{key_env}", UPSTREAM_KEY_ENV);
    let e = tollgate::config::Config::from_toml("gateway.toml", &text).unwrap_err();
    assert_eq!(e.field(), "groups[1].fallbacks");
    let msg = e.to_string();
    assert!(
        msg.starts_with("gateway.toml: `groups[1].fallbacks`: "),
        "{msg}"
    );
    assert!(
        msg.contains("`gpt-4o-typo`") && msg.contains("`b`"),
        "{msg}"
    );

    let cyclic = text.replace("\"gpt-4o-typo\"", "\"b\"");
    let e = tollgate::config::Config::from_toml("gateway.toml", &cyclic).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
}

/// 2 000 requests over three deployments weighted 1:1:2, 20 at a time.
#[tokio::test]
async fn two_thousand_requests_split_by_weight_within_5_percent() {
    let mocks = [mock().await, mock().await, mock().await];
    let config = format!(
        "{UPSTREAM}{}",
        group(
            "g",
            "",
            &[
                deployment("one", &mocks[0], None, "weight = 1"),
                deployment("two", &mocks[1], None, "weight = 1"),
                deployment("four", &mocks[2], None, "weight = 2"),
            ]
        )
    );
    let gw = gateway_with_clock(&config, &mocks[0], Arc::new(ManualClock::default())).await;
    let url = gw.url("/v1/chat/completions");
    let client = http();
    let body = chat("g", "");
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    use futures_util::StreamExt;
    for i in 0..2000 {
        if i >= 20 {
            let name = pending.next().await.unwrap();
            *counts.entry(name).or_default() += 1;
        }
        let req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send();
        pending.push(async move {
            let res = req.await.unwrap();
            assert_eq!(res.status(), 200);
            let name = res.headers()["x-tollgate-deployment"]
                .to_str()
                .unwrap()
                .to_owned();
            res.bytes().await.unwrap();
            name
        });
    }
    while let Some(name) = pending.next().await {
        *counts.entry(name).or_default() += 1;
    }
    for (name, want) in [("one", 500.0), ("two", 500.0), ("four", 1000.0)] {
        let got = counts.get(name).copied().unwrap_or(0) as f64;
        assert!((got - want).abs() <= want * 0.05, "{counts:?}");
    }
}

/// How many requests `mock` received on `path`.
fn hits(mock: &MockServer, path: &str) -> usize {
    mock.log.all().iter().filter(|r| r.path == path).count()
}

fn responses(model: &str) -> String {
    format!(r#"{{"model":"{model}","input":"Say hello."}}"#)
}

/// Known failure #16: an upstream that serves chat but not `/v1/responses`
/// (an nginx 404 page, Go's plain-text 404, OpenAI's "Invalid URL" JSON, a
/// 405) loses only that route: its responses requests go to the twin, it
/// keeps serving chat, and nobody is told the model is gone.
#[tokio::test]
async fn an_upstream_without_responses_keeps_serving_chat_and_its_twin_takes_responses() {
    for fault in [
        "unserved:responses",
        "unserved-text:responses",
        "unserved-json:responses",
        "405:responses",
    ] {
        let a = mock().await;
        let b = mock().await;
        let config = format!(
            "{UPSTREAM}{}",
            group(
                "g",
                "",
                &[
                    deployment("a", &a, Some(fault), ""),
                    deployment("b", &b, None, "")
                ]
            )
        );
        let clock = ManualClock::default();
        let gw = gateway_with_clock(&config, &a, Arc::new(clock.clone())).await;
        let mut retried = 0;
        for _ in 0..6 {
            let ans = post(&gw.url("/v1/responses"), responses("g")).await;
            assert_eq!(ans.status, 200, "{fault}: {}", ans.body);
            assert_eq!(served_by(&ans), "b", "{fault}");
            retried += usize::from(attempts(&ans) == 2);
        }
        assert_eq!(
            hits(&a, "/v1/responses"),
            1,
            "{fault}: then the route cooled"
        );
        assert_eq!(retried, 1, "{fault}");
        let mut on_a = 0;
        for _ in 0..6 {
            let ans = post(&gw.url("/v1/chat/completions"), chat("g", "")).await;
            assert_eq!(ans.status, 200, "{fault}: {}", ans.body);
            on_a += usize::from(served_by(&ans) == "a");
        }
        assert!(on_a >= 2, "{fault}: a keeps serving chat ({on_a} of 6)");
        // Past the route's cooldown (300 s by default), a is asked again.
        clock.advance(Duration::from_secs(301));
        for _ in 0..4 {
            assert_eq!(
                post(&gw.url("/v1/responses"), responses("g")).await.status,
                200
            );
        }
        assert_eq!(hits(&a, "/v1/responses"), 2, "{fault}");
    }
}

#[tokio::test]
async fn a_route_no_deployment_serves_is_a_502_naming_deployment_and_path() {
    let a = mock().await;
    let b = mock().await;
    let config = format!(
        "{UPSTREAM}{}",
        group(
            "g",
            "",
            &[
                deployment("a", &a, Some("unserved:responses"), ""),
                deployment("b", &b, Some("501"), "")
            ]
        )
    );
    let gw = gateway_with_clock(&config, &a, Arc::new(ManualClock::default())).await;
    let ans = post(&gw.url("/v1/responses"), responses("g")).await;
    let v = ans.error(502, "upstream_route_not_served");
    let meta = &v["error"]["metadata"];
    assert!(meta.get("permanent").is_none());
    assert!(ans.headers.get("retry-after").is_none());
    let d = meta["deployment"].as_str().unwrap();
    assert!(d == "a" || d == "b");
    assert_eq!(meta["upstream_path"], "/v1/responses");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("Deployment `{d}`")), "{message}");
    assert!(message.contains("POST /v1/responses"), "{message}");
    assert_eq!(meta["attempts"].as_array().unwrap().len(), 2);
    // Both routes cool now: answered without an upstream call.
    let ans = post(&gw.url("/v1/responses"), responses("g")).await;
    let v = ans.error(502, "upstream_route_not_served");
    assert_eq!(
        v["error"]["metadata"]["cooling"].as_array().unwrap().len(),
        2
    );
    assert_eq!(a.log.len() + b.log.len(), 2);
    // a still serves chat (b's 501 is on every route).
    let ans = post(&gw.url("/v1/chat/completions"), chat("g", "")).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(served_by(&ans), "a");
}

/// Only an answer that says the model is unknown or retired, in any of the
/// providers' shapes, is a permanent 404.
#[tokio::test]
async fn a_model_gone_in_each_providers_shape_is_404_permanent() {
    let shapes = [
        "openai",
        "groq",
        "anthropic",
        "vllm",
        "vllm-nested",
        "azure",
        "gemini",
        "ollama",
        "mistral",
        "410",
    ];
    let a = mock().await;
    let b = mock().await;
    let groups: Vec<String> = shapes
        .iter()
        .map(|s| {
            let fault = format!("gone:{s}");
            group(
                s,
                "",
                &[
                    deployment("a", &a, Some(&fault), ""),
                    deployment("b", &b, Some(&fault), ""),
                ],
            )
        })
        .collect();
    let config = format!("{UPSTREAM}{}", groups.concat());
    let gw = gateway_with_clock(&config, &a, Arc::new(ManualClock::default())).await;
    for s in shapes {
        for _ in 0..2 {
            let ans = post(&gw.url("/v1/chat/completions"), chat(s, "")).await;
            let v = ans.error(404, "upstream_model_not_found");
            assert_eq!(v["error"]["metadata"]["permanent"], true, "{s}");
            assert!(ans.headers.get("retry-after").is_none(), "{s}");
        }
    }
    assert_eq!(
        a.log.len() + b.log.len(),
        2 * shapes.len(),
        "each deployment asked once, then cooling"
    );
}

/// The rest of the outcome table through sockets: content filters are the
/// client's answer (not retried); a proxy's 413 page and 408 page try the
/// twin; a 422 is the client's.
#[tokio::test]
async fn content_filters_413_422_and_408_from_an_upstream() {
    let a = mock().await;
    let b = mock().await;
    let mut groups = String::new();
    for (name, fault, twin) in [
        (
            "cf-openai",
            "content_filter:openai",
            Some("content_filter:openai"),
        ),
        (
            "cf-azure",
            "content_filter:azure",
            Some("content_filter:azure"),
        ),
        (
            "cf-openrouter",
            "content_filter:openrouter",
            Some("content_filter:openrouter"),
        ),
        ("unprocessable", "422", Some("422")),
        ("too-large", "413-html", None),
        ("proxy-timeout", "408-html", None),
    ] {
        groups.push_str(&group(
            name,
            "",
            &[
                deployment("a", &a, Some(fault), ""),
                deployment("b", &b, twin, ""),
            ],
        ));
    }
    let gw = gateway_with_clock(
        &format!("{UPSTREAM}{groups}"),
        &a,
        Arc::new(ManualClock::default()),
    )
    .await;
    let url = gw.url("/v1/chat/completions");
    for (name, status) in [
        ("cf-openai", 400),
        ("cf-azure", 400),
        ("cf-openrouter", 403),
    ] {
        let before = a.log.len() + b.log.len();
        let ans = post(&url, chat(name, "")).await;
        let v = ans.error(status, "upstream_content_filtered");
        assert_eq!(
            v["error"]["metadata"]["attempts"].as_array().unwrap().len(),
            1
        );
        assert_eq!(a.log.len() + b.log.len(), before + 1, "{name}: not retried");
    }
    let before = a.log.len() + b.log.len();
    let ans = post(&url, chat("unprocessable", "")).await;
    ans.error(422, "upstream_rejected_request");
    assert_eq!(a.log.len() + b.log.len(), before + 1, "422: not retried");
    for name in ["too-large", "proxy-timeout"] {
        for _ in 0..4 {
            let ans = post(&url, chat(name, "")).await;
            assert_eq!(ans.status, 200, "{name}: {}", ans.body);
            assert_eq!(served_by(&ans), "b", "{name}");
        }
    }
}

/// The issue's scenario: a 429 with `Retry-After: 1` on one deployment
/// while the other was just put in a 30 s failure cooldown. A client is
/// never told to come back before a deployment will take it.
#[tokio::test]
async fn the_clients_retry_after_is_never_sooner_than_the_cooldowns_just_set() {
    let a = mock().await;
    let b = mock().await;
    let router = "[router]\nfailure_threshold = 1\n\n";
    let config = format!(
        "{UPSTREAM}{router}{}{}",
        group(
            "limited",
            "",
            &[
                deployment("a", &a, Some("429:1"), ""),
                deployment("b", &b, Some("500"), "")
            ]
        ),
        group(
            "unavailable",
            "",
            &[
                deployment("a", &a, Some("503:1"), ""),
                deployment("b", &b, Some("500"), "")
            ]
        ),
    );
    let clock = ManualClock::default();
    let gw = gateway_with_clock(&config, &a, Arc::new(clock.clone())).await;
    let url = gw.url("/v1/chat/completions");

    // "limited": told 1 s, and after 1 s a is asked again (no 503).
    let ans = post(&url, chat("limited", "")).await;
    let v = ans.error(429, "upstream_rate_limited");
    assert_eq!(ans.headers["retry-after"], "1");
    assert_eq!(v["error"]["metadata"]["retry_after_s"], 1);
    // "unavailable": the upstream says 1 s, but both deployments now cool
    // for 30 s (failure_cooldown_ms): the client is told 30.
    let ans = post(&url, chat("unavailable", "")).await;
    let v = ans.error(503, "upstream_unavailable");
    assert_eq!(ans.headers["retry-after"], "30", "{}", ans.body);
    assert_eq!(v["error"]["metadata"]["retry_after_s"], 30);

    clock.advance(Duration::from_secs(1));
    let sent = a.log.len();
    let ans = post(&url, chat("limited", "")).await;
    ans.error(429, "upstream_rate_limited");
    assert_eq!(a.log.len(), sent + 1, "told 1 s: served again after 1 s");

    clock.advance(Duration::from_secs(28));
    let ans = post(&url, chat("unavailable", "")).await;
    ans.error(503, "no_available_deployment");
    let sent = a.log.len() + b.log.len();
    clock.advance(Duration::from_secs(1));
    let ans = post(&url, chat("unavailable", "")).await;
    ans.error(503, "upstream_unavailable");
    assert!(
        a.log.len() + b.log.len() > sent,
        "told 30 s: tried after 30 s"
    );
}
