//! Anthropic's Messages API through the reference gateway, passed through to
//! an Anthropic-API deployment (the bundled mock's `/v1/messages`), all on
//! 127.0.0.1: the body forwarded with only `model` rewritten, Anthropic's
//! headers, its stream events untouched (thinking blocks and their
//! signatures, `tool_use` input), usage charged from `message_start` and
//! `message_delta`, and every error — the gateway's own and the upstream's
//! — in Anthropic's shape.

mod common;

use common::*;
use serde_json::{Value, json};

/// A priced Anthropic-API group on the mock, and an OpenAI one.
fn config(extra: &str) -> String {
    format!(
        r#"
[[groups]]
name = "claude-sonnet"
price_in_per_mtok = 3.0
price_out_per_mtok = 15.0
price_cached_in_per_mtok = 0.3
price_cache_write_per_mtok = 3.75
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{{mock}}"
api_key_env = "{{key_env}}"
model = "mock-claude"

[[groups]]
name = "gpt-4o-mini"
[[groups.deployments]]
provider = "mock"
base_url = "{{mock}}"
model = "mock-small"
{extra}
"#
    )
}

/// A Messages request body.
fn messages(model: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(
        r#"{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"Say hello."}}]{extra}}}"#
    )
}

/// POSTs to `/v1/messages` as the Anthropic SDK does: `x-api-key`, `anthropic-version`.
async fn send(gw: &Gateway, path: &str, key: Option<&str>, body: String) -> Answer {
    let mut req = anonymous()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .body(body);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    read_answer(req.send().await.unwrap()).await
}

async fn post_messages(gw: &Gateway, body: String) -> Answer {
    send(gw, "/v1/messages", Some(CLIENT_KEY), body).await
}

/// Anthropic's error shape: `{"type":"error","error":{"type","message"}}`,
/// with tollgate's reason in `error.metadata`.
fn assert_anthropic_error(a: &Answer, status: u16, kind: &str, reason: &str) -> Value {
    assert_eq!(a.status, status, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "error", "{}", a.body);
    assert_eq!(v["error"]["type"], kind, "{}", a.body);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(v["error"]["metadata"]["reason"], reason, "{}", a.body);
    assert!(v.get("code").is_none() && v["error"].get("code").is_none());
    v
}

#[tokio::test]
async fn a_message_passes_through_with_only_the_model_rewritten() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    // Fields tollgate does not know, thinking with its signature and cache
    // control: all must reach the upstream byte for byte.
    let body = r#"{"model":"claude-sonnet","max_tokens":64,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
        "messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":[{"type":"thinking","thinking":"ok","signature":"c2ln"},{"type":"text","text":"Hello"}]},{"role":"user","content":"Again"}],
        "thinking":{"type":"enabled","budget_tokens":1024},"future_field":{"x":[1,2]}}"#;
    let a = post_messages(&gw, body.to_owned()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15"
    );
    assert_eq!(v["model"], "claude-sonnet", "the answer names the group");
    assert_eq!(v["usage"]["output_tokens"], 16);

    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    let expected = body.replacen(r#""model":"claude-sonnet""#, r#""model":"mock-claude""#, 1);
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        expected,
        "only `model` rewritten"
    );
    assert_eq!(seen.headers["x-api-key"], UPSTREAM_KEY);
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert_eq!(seen.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    let forwarded = format!("{:?}", seen.headers);
    assert!(
        !forwarded.contains(CLIENT_KEY),
        "the client's key reached the upstream"
    );

    // Without the client's `anthropic-version`, the gateway sends its own.
    let res = anonymous()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("content-type", "application/json")
        .body(messages("claude-sonnet", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        mock.log.last().unwrap().headers["anthropic-version"],
        "2023-06-01"
    );
}

#[tokio::test]
async fn a_stream_keeps_thinking_its_signature_and_the_first_text_delta() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    let a = post_messages(
        &gw,
        messages("claude-sonnet", r#""stream":true,"mock_fault":"thinking""#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = named_events(&a.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    // Known failure #17: the first text delta after a thinking block arrives.
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| &d["delta"])
        .collect();
    let thinking: String = deltas
        .iter()
        .filter_map(|d| d["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "Let me think.");
    assert!(deltas.iter().any(|d| d["signature"] == "sig-mock-0001"));
    let text: String = deltas.iter().filter_map(|d| d["text"].as_str()).collect();
    assert!(text.starts_with("tok0 tok1"), "{text}");
    assert!(text.ends_with("tok15"), "{text}");
    // Nothing added to the upstream request for metering.
    let seen = String::from_utf8_lossy(&mock.log.last().unwrap().body).into_owned();
    assert!(!seen.contains("stream_options"), "{seen}");
}

/// Known failure #17 and #10: `tool_use` input survives streaming, 1 MiB of it.
#[tokio::test]
async fn tool_use_input_survives_streaming() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    let a = post_messages(
        &gw,
        messages(
            "claude-sonnet",
            r#""stream":true,"mock_fault":"tool_use:1MiB""#,
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    let events = named_events(&a.body);
    let start = events
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .expect("a tool_use block");
    assert_eq!(start.1["content_block"]["name"], "mock_tool");
    let input: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(input.len(), 1 << 20);
    let parsed: Value = serde_json::from_str(&input).unwrap();
    assert_eq!(parsed["data"].as_str().unwrap().len(), (1 << 20) - 11);
    let stop = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn the_gateways_own_refusals_are_in_anthropics_shape() {
    let mock = mock().await;
    let gw = gateway(
        &config(
            r#"
[keys]
store = "memory"
master_key_env = "{master_env}"
[[keys.static]]
key_env = "TOLLGATE_TEST_CLIENT_KEY"
models = ["claude-sonnet"]
"#,
        ),
        &mock,
    )
    .await;
    let body = || messages("claude-sonnet", "");
    let a = send(&gw, "/v1/messages", None, body()).await;
    assert_anthropic_error(&a, 401, "authentication_error", "missing_key");
    let a = send(
        &gw,
        "/v1/messages",
        Some("tg-nobody-n0b0dyS3cr3tV4lu3Th4tMust"),
        body(),
    )
    .await;
    assert_anthropic_error(&a, 401, "authentication_error", "unknown_key");
    let a = post_messages(&gw, messages("gpt-4o-mini", "")).await;
    assert_anthropic_error(&a, 403, "permission_error", "model_not_allowed");
    let a = post_messages(&gw, "{not json".into()).await;
    assert_anthropic_error(&a, 400, "invalid_request_error", "invalid_json");
    let a = post_messages(&gw, r#"{"max_tokens":5,"messages":[]}"#.into()).await;
    assert_anthropic_error(&a, 400, "invalid_request_error", "missing_model");
    let a = post_messages(&gw, "x".repeat(5 << 20)).await;
    assert_anthropic_error(&a, 413, "request_too_large", "body_too_large");

    // A key with a rate limit and a budget, made through the admin API.
    let (key, _) = generate_key(
        &gw,
        json!({"models": ["*"], "rpm_limit": 1, "max_budget": 0.0}),
    )
    .await;
    let a = send(&gw, "/v1/messages", Some(&key), body()).await;
    assert_anthropic_error(&a, 402, "billing_error", "budget_exceeded");
    let a = send(&gw, "/v1/messages", Some(&key), body()).await;
    let v = assert_anthropic_error(&a, 429, "rate_limit_error", "rate_limited");
    assert!(a.headers.contains_key("retry-after"), "{v}");
    let a = send(
        &gw,
        "/v1/messages",
        Some(CLIENT_KEY),
        messages("claude-nope", ""),
    )
    .await;
    assert_anthropic_error(&a, 403, "permission_error", "model_not_allowed");
}

#[tokio::test]
async fn upstream_faults_reach_the_client_in_anthropics_shape() {
    let mock = mock().await;
    // One group per fault: a fault cools its deployment down.
    let mut toml = String::from("[router]\nnum_retries = 0\n");
    for g in ["429", "401", "500", "400", "529", "404"] {
        toml.push_str(&format!(
            "[[groups]]\nname = \"claude-{g}\"\n[[groups.deployments]]\nprovider = \"anthropic\"\napi = \"anthropic\"\nbase_url = \"{{mock}}\"\napi_key_env = \"{{key_env}}\"\nheaders = {{ \"x-mock-fault\" = \"{g}\" }}\n"
        ));
    }
    let gw = gateway(&toml, &mock).await;
    let fault = |f: &str| messages(&format!("claude-{f}"), "");
    let a = post_messages(&gw, fault("429")).await;
    let v = assert_anthropic_error(&a, 429, "rate_limit_error", "upstream_rate_limited");
    assert_eq!(a.headers["retry-after"], "6");
    assert_eq!(
        v["error"]["metadata"]["raw"]["error"]["type"],
        "rate_limit_error"
    );
    // Our upstream credential is the gateway's problem: never a 401.
    let a = post_messages(&gw, fault("401")).await;
    assert_anthropic_error(&a, 502, "api_error", "upstream_auth_failed");
    let a = post_messages(&gw, fault("500")).await;
    assert_anthropic_error(&a, 502, "api_error", "upstream_error");
    let a = post_messages(&gw, fault("400")).await;
    assert_anthropic_error(
        &a,
        400,
        "invalid_request_error",
        "upstream_rejected_request",
    );
    // Overloaded is temporary: a 503 the client may retry, with Retry-After.
    let a = post_messages(&gw, fault("529")).await;
    assert_anthropic_error(&a, 503, "overloaded_error", "upstream_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    // `not_found_error` naming a model: gone, permanently.
    let a = post_messages(&gw, fault("404")).await;
    let v = assert_anthropic_error(&a, 404, "not_found_error", "upstream_model_not_found");
    assert_eq!(v["error"]["metadata"]["permanent"], true);
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_anthropic_error_event() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    for (fault, reason) in [
        ("cut:3", "upstream_stream_cut"),
        ("no_stop", "upstream_stream_cut"),
    ] {
        let a = post_messages(
            &gw,
            messages(
                "claude-sonnet",
                &format!(r#""stream":true,"mock_fault":"{fault}""#),
            ),
        )
        .await;
        assert_eq!(a.status, 200, "{fault}: {}", a.body);
        let events = named_events(&a.body);
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error", "{fault}: {}", a.body);
        assert_eq!(data["type"], "error");
        assert_eq!(data["error"]["metadata"]["reason"], reason, "{fault}");
        assert!(!a.body.contains("[DONE]"), "no OpenAI framing: {}", a.body);
        assert!(
            events.iter().any(|(n, _)| n == "content_block_delta"),
            "{fault}"
        );
    }
}

/// Known failure #18: an Anthropic stream whose event is not JSON is never
/// passed on as it is; the client gets Anthropic's error instead.
#[tokio::test]
async fn a_passed_through_stream_with_garbage_is_an_error_never_forwarded() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    let a = post_messages(
        &gw,
        messages("claude-sonnet", r#""stream":true,"mock_fault":"garbage""#),
    )
    .await;
    assert!(!a.body.contains("not json"), "{}", a.body);
    assert_anthropic_error(&a, 502, "api_error", "upstream_bad_response");
}

#[tokio::test]
async fn count_tokens_is_forwarded_and_free() {
    let mock = mock().await;
    let gw = gateway(&config(""), &mock).await;
    let a = send(
        &gw,
        "/v1/messages/count_tokens",
        Some(CLIENT_KEY),
        r#"{"model":"claude-sonnet","messages":[{"role":"user","content":"Hi"}]}"#.into(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json()["input_tokens"].as_u64().unwrap() > 0);
    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, "/v1/messages/count_tokens");
    assert!(String::from_utf8_lossy(&seen.body).contains(r#""model":"mock-claude""#));
}

/// 200 concurrent streams against one key's budget: no overspend, and each
/// admitted stream charged exactly its usage from `message_start` (input,
/// cache reads and writes) and `message_delta` (output).
#[tokio::test]
async fn concurrent_streams_cannot_overspend_and_are_charged_their_usage() {
    let mock = mock().await;
    let (gw, ledger, key, id) = metered(&mock, "", 0.05).await;
    let body = messages("claude-sonnet", r#""stream":true,"mock_fault":"cache""#);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (url, key, body) = (gw.url("/v1/messages"), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let res = anonymous()
                .post(url)
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            (status, text)
        }));
    }
    let mut served = 0u64;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        match status {
            200 => {
                assert!(text.contains("message_stop"), "{text}");
                served += 1;
            }
            402 => assert!(text.contains("billing_error"), "{text}"),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(served > 0 && served < 200, "served {served}");
    // What one stream costs: the upstream body's length / 4 input tokens
    // (the mock's count) + 100 cache reads + 50 cache writes, 16 output.
    let upstream_len = mock.log.last().unwrap().body.len() as u64;
    let input = (upstream_len / 4).max(1);
    let usage = tollgate::budget::TokenUsage {
        prompt_tokens: input + 150,
        completion_tokens: 16,
        cached_tokens: 100,
        cache_creation_tokens: 50,
    };
    let price = tollgate::budget::Price {
        input_per_mtok: 3_000_000,
        output_per_mtok: 15_000_000,
        cached_input_per_mtok: Some(300_000),
        cache_write_per_mtok: Some(3_750_000),
    };
    let each = price.cost(&usage);
    let scope = tollgate::budget::Scope::Key(id.as_str().into());
    let spent = ledger.usage(&scope, tollgate::budget::Period::Total);
    assert_eq!(spent.reserved, 0, "every reservation settled");
    assert!(spent.spent <= 50_000, "overspent: {}", spent.spent);
    assert_eq!(
        spent.spent,
        served * each,
        "each stream charged its usage ({each})"
    );
}

/// Groups whose deployment asks the mock for a fault by header (a body
/// field the client sends would be refused by the translator, as any field
/// without a counterpart is): `anthropic-<fault>` on the Anthropic API,
/// `openai-<fault>` on the OpenAI one.
fn faulty_groups() -> String {
    let mut out = String::new();
    for (api, fault) in [
        ("anthropic", "tool_use:20KiB"),
        ("anthropic", "cut:3"),
        ("anthropic", "garbage"),
        ("openai", "tool_args:20KiB"),
        ("openai", "cut:3"),
    ] {
        out.push_str(&format!(
            "[[groups]]\nname = \"{api}-{fault}\"\n[[groups.deployments]]\nprovider = \"{api}\"\napi = \"{api}\"\nbase_url = \"{{mock}}\"\napi_key_env = \"{{key_env}}\"\nheaders = {{ \"x-mock-fault\" = \"{fault}\" }}\n"
        ));
    }
    out
}

/// An OpenAI Chat client served by the Anthropic-API deployment: the
/// request translated to Messages (Anthropic's required `max_tokens` set),
/// the answer and the stream translated back, usage charged.
#[tokio::test]
async fn an_openai_chat_client_is_served_by_an_anthropic_deployment() {
    let mock = mock().await;
    let gw = gateway(&config(&faulty_groups()), &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("claude-sonnet", r#""temperature":0.5"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(v["model"], "claude-sonnet");
    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, "/v1/messages");
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["model"], "mock-claude");
    assert_eq!(
        sent["max_tokens"], 4096,
        "Anthropic's required max_tokens: {sent}"
    );
    assert_eq!(sent["temperature"], 0.5);
    assert!(
        sent.get("tool_choice").is_none(),
        "nothing the client did not send: {sent}"
    );
    assert_eq!(seen.headers["x-api-key"], UPSTREAM_KEY);

    // Streamed, with tool use: OpenAI tool_calls deltas, then [DONE].
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("anthropic-tool_use:20KiB", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = events(&a.body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{}", a.body);
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args.len(), 20 * 1024);
    let name = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str());
    assert_eq!(name, Some("mock_tool"));
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
    // The usage chunk metering asked for is not shown to a client that did not ask.
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{}", a.body);

    // A stream cut mid-way ends in the client's family: OpenAI's error framing.
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("anthropic-cut:3", r#""stream":true"#),
    )
    .await;
    assert_ended_by_error(&a.body, "upstream_stream_cut");
    // Garbage from the upstream is an error, never forwarded.
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("anthropic-garbage", r#""stream":true"#),
    )
    .await;
    assert!(!a.body.contains("not json"), "{}", a.body);
    assert!(
        a.status == 502 || a.body.contains("upstream_bad_response"),
        "{}",
        a.body
    );
    // The same garbage as a whole answer: the provider's own refusal (the
    // translator reads the answer first, and a refusal of it is told apart
    // as not JSON at all), a 502 before any header went out. (A gateway
    // of its own: the deployment cools down after the stream's failure.)
    let fresh = gateway(&config(&faulty_groups()), &mock).await;
    let a = post(
        &fresh.url("/v1/chat/completions"),
        chat("anthropic-garbage", ""),
    )
    .await;
    let v = a.error(502, "upstream_bad_response");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{v}"
    );
    // An endpoint Anthropic has no counterpart of: not served, 502 naming it.
    let a = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"claude-sonnet","input":"hi"}"#,
    )
    .await;
    let v = a.error(502, "upstream_route_not_served");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("anthropic"),
        "{v}"
    );
}

/// An Anthropic client (a coding agent) served by an OpenAI-compatible
/// deployment: Messages translated to Chat, the chat stream back to
/// Anthropic's events, tool-call arguments as `input_json_delta`s.
#[tokio::test]
async fn an_anthropic_client_is_served_by_an_openai_deployment() {
    let mock = mock().await;
    let gw = gateway(&config(&faulty_groups()), &mock).await;
    let a = post_messages(&gw, messages("gpt-4o-mini", r#""system":"Be brief.""#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(
        v["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("tok0 tok1")
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 16);
    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["model"], "mock-small");
    assert!(seen.headers.get("x-api-key").is_none());

    let a = post_messages(&gw, messages("openai-tool_args:20KiB", r#""stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let events = named_events(&a.body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{}", a.body);
    assert_eq!(names.last(), Some(&"message_stop"), "{}", a.body);
    let input: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(input.len(), 20 * 1024);
    let stop = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
    assert!(
        stop.1["usage"]["output_tokens"].as_u64().unwrap() > 0,
        "{:?}",
        stop.1
    );

    // A cut upstream stream: Anthropic's error event.
    let a = post_messages(&gw, messages("openai-cut:3", r#""stream":true"#)).await;
    let (name, data) = named_events(&a.body).pop().unwrap();
    assert_eq!(name, "error", "{}", a.body);
    assert_eq!(data["error"]["metadata"]["reason"], "upstream_stream_cut");
    // A field the translator does not know is refused by name, never dropped.
    let a = post_messages(&gw, messages("gpt-4o-mini", r#""mock_fault":"500""#)).await;
    let v = assert_anthropic_error(&a, 400, "invalid_request_error", "invalid_request");
    assert_eq!(v["error"]["metadata"]["param"], "mock_fault", "{v}");
    // A field OpenAI has no counterpart of is refused by name, in Anthropic's shape.
    let a = post_messages(
        &gw,
        messages(
            "gpt-4o-mini",
            r#""system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]"#,
        ),
    )
    .await;
    let v = assert_anthropic_error(&a, 400, "invalid_request_error", "invalid_request");
    assert!(
        v["error"]["metadata"]["param"]
            .as_str()
            .unwrap()
            .contains("cache_control"),
        "{v}"
    );
}

/// Priced groups for the metering and fallback tests: the mock's faults
/// chosen by a deployment header, so the client's body stays its own.
fn priced_groups() -> String {
    let mut out = String::new();
    for (name, api, fault, fallbacks) in [
        ("claude-cache", "anthropic", "cache", ""),
        (
            "claude-cut",
            "anthropic",
            "cut:3",
            r#"fallbacks = ["claude-sonnet"]"#,
        ),
        ("gpt-cut", "openai", "cut:3", ""),
        (
            "claude-overloaded",
            "anthropic",
            "529",
            r#"fallbacks = ["claude-sonnet"]"#,
        ),
        (
            "claude-down",
            "anthropic",
            "500",
            r#"fallbacks = ["gpt-4o-mini"]"#,
        ),
    ] {
        out.push_str(&format!(
            r#"
[[groups]]
name = "{name}"
{fallbacks}
price_in_per_mtok = 3.0
price_out_per_mtok = 15.0
price_cached_in_per_mtok = 0.3
price_cache_write_per_mtok = 3.75
[[groups.deployments]]
provider = "{api}-{fault}"
api = "{api}"
base_url = "{{mock}}"
api_key_env = "{{key_env}}"
model = "mock-{name}"
headers = {{ "x-mock-fault" = "{fault}" }}
"#
        ));
    }
    out
}

const PRICE: tollgate::budget::Price = tollgate::budget::Price {
    input_per_mtok: 3_000_000,
    output_per_mtok: 15_000_000,
    cached_input_per_mtok: Some(300_000),
    cache_write_per_mtok: Some(3_750_000),
};

/// A gateway with an admin API and a key of its own budget (`max_budget`
/// USD), the key's id, and the ledger that keeps its spend.
async fn metered(
    mock: &MockServer,
    groups: &str,
    max_budget: f64,
) -> (Gateway, tollgate::budget::Ledger, String, String) {
    let ledger = tollgate::budget::Ledger::new(tollgate::budget::TimeZone::UTC);
    let gw = gateway_with_ledger(
        &config(&format!(
            "{groups}\n[keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n"
        )),
        mock,
        ledger.clone(),
    )
    .await;
    let (key, id) = generate_key(&gw, json!({"models": ["*"], "max_budget": max_budget})).await;
    (gw, ledger, key, id)
}

/// The key's spend once every reservation is settled (a stream settles as
/// its body ends, which may be just after the client read the last byte).
async fn settled(ledger: &tollgate::budget::Ledger, id: &str) -> u64 {
    let scope = tollgate::budget::Scope::Key(id.into());
    for _ in 0..200 {
        let u = ledger.usage(&scope, tollgate::budget::Period::Total);
        if u.reserved == 0 {
            return u.spent;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("a reservation was never settled");
}

/// What the mock's `cache` answer costs: input = the upstream body's length
/// / 4, 100 cache reads, 50 cache writes, 16 output tokens.
fn cache_answer_cost(upstream_body: &[u8]) -> u64 {
    let input = (upstream_body.len() as u64 / 4).max(1);
    PRICE.cost(&tollgate::budget::TokenUsage {
        prompt_tokens: input + 150,
        completion_tokens: 16,
        cached_tokens: 100,
        cache_creation_tokens: 50,
    })
}

/// An OpenAI Chat client served by an Anthropic deployment whose answer
/// wrote to the prompt cache: the translated usage names the writes
/// (`cache_creation_input_tokens`, a part of `prompt_tokens`), and the
/// budget charges them at the cache-write price, answer and stream alike.
#[tokio::test]
async fn translated_cache_writes_are_charged_at_the_cache_write_price() {
    let mock = mock().await;
    let (gw, ledger, key, id) = metered(&mock, &priced_groups(), 100.0).await;
    let a = post_as(
        &gw.url("/v1/chat/completions"),
        &key,
        chat("claude-cache", ""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let usage = &a.json()["usage"];
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 100,
        "{usage}"
    );
    assert_eq!(usage["cache_creation_input_tokens"], 50, "{usage}");
    let first = cache_answer_cost(&mock.log.last().unwrap().body);
    assert_eq!(settled(&ledger, &id).await, first);
    // With writes priced as input, the charge would be lower.
    let input = (mock.log.last().unwrap().body.len() as u64 / 4).max(1);
    let as_input = PRICE.cost(&tollgate::budget::TokenUsage {
        prompt_tokens: input + 150,
        completion_tokens: 16,
        cached_tokens: 100,
        cache_creation_tokens: 0,
    });
    assert!(first > as_input);

    let a = post_as(
        &gw.url("/v1/chat/completions"),
        &key,
        chat(
            "claude-cache",
            r#""stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = events(&a.body);
    let last: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(
        last["usage"]["cache_creation_input_tokens"], 50,
        "{}",
        a.body
    );
    let second = cache_answer_cost(&mock.log.last().unwrap().body);
    assert_eq!(settled(&ledger, &id).await, first + second);
}

/// A stream cut after it started is charged what it reported (the input
/// from `message_start`) plus an estimate of what was generated: never
/// zero, in every direction: passed through, Chat → Anthropic, Anthropic →
/// Chat.
#[tokio::test]
async fn a_cut_stream_is_charged_an_estimate_never_zero() {
    let mock = mock().await;
    let (gw, ledger, key, id) = metered(&mock, &priced_groups(), 100.0).await;
    let mut before = 0;
    // Anthropic client, Anthropic deployment (passed through).
    let a = send(
        &gw,
        "/v1/messages",
        Some(&key),
        messages("claude-cut", r#""stream":true"#),
    )
    .await;
    let (name, data) = named_events(&a.body).pop().unwrap();
    assert_eq!(name, "error", "{}", a.body);
    assert_eq!(data["error"]["metadata"]["reason"], "upstream_stream_cut");
    let input = (mock.log.last().unwrap().body.len() as u64 / 4).max(1);
    let spent = settled(&ledger, &id).await;
    let reported = PRICE.cost(&tollgate::budget::TokenUsage {
        prompt_tokens: input,
        completion_tokens: 1,
        ..Default::default()
    });
    assert!(
        spent >= reported,
        "charged {spent}, less than reported {reported}"
    );
    before += spent;
    // OpenAI client, Anthropic deployment (translated).
    let a = post_as(
        &gw.url("/v1/chat/completions"),
        &key,
        chat("claude-cut", r#""stream":true"#),
    )
    .await;
    assert_ended_by_error(&a.body, "upstream_stream_cut");
    let spent = settled(&ledger, &id).await;
    assert!(spent > before, "a translated cut stream charged nothing");
    before = spent;
    // Anthropic client, OpenAI deployment (translated; the chat stream
    // reports no usage before its end: the whole charge is the estimate).
    let a = send(
        &gw,
        "/v1/messages",
        Some(&key),
        messages("gpt-cut", r#""stream":true"#),
    )
    .await;
    let (name, _) = named_events(&a.body).pop().unwrap();
    assert_eq!(name, "error", "{}", a.body);
    let spent = settled(&ledger, &id).await;
    assert!(spent > before, "a cut stream without usage charged nothing");
}

/// Known failure: a fallback must never append an assistant prefill (which
/// Claude rejects) or change the conversation. Before the commit point the
/// next group gets the client's body with only `model` rewritten — the same
/// bytes passed through, the same messages translated — and after it there
/// is no fallback at all.
#[tokio::test]
async fn no_prefill_on_any_fallback() {
    let mock = mock().await;
    let gw = gateway(&config(&priced_groups()), &mock).await;
    let body = messages("claude-overloaded", r#""stream":true"#);
    let a = post_messages(&gw, body.clone()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        named_events(&a.body).pop().unwrap().0,
        "message_stop",
        "{}",
        a.body
    );
    let log = mock.log.all();
    let [.., failed, served] = &log[..] else {
        panic!("two upstream requests expected")
    };
    assert_eq!(
        String::from_utf8_lossy(&failed.body),
        body.replace("claude-overloaded", "mock-claude-overloaded")
    );
    assert_eq!(
        String::from_utf8_lossy(&served.body),
        body.replace("claude-overloaded", "mock-claude"),
        "the fallback got the client's bytes, only the model rewritten"
    );

    // Across families: the OpenAI group gets the same one user turn.
    let a = post_messages(&gw, messages("claude-down", r#""stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let served = mock.log.last().unwrap();
    assert_eq!(served.path, "/v1/chat/completions");
    let sent: Value = serde_json::from_slice(&served.body).unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "Say hello."}]),
        "no prefill, nothing added: {sent}"
    );

    // After the commit point: the cut stream ends in an error, no fallback.
    let n = mock.log.all().len();
    let a = post_messages(&gw, messages("claude-cut", r#""stream":true"#)).await;
    assert_eq!(
        named_events(&a.body).pop().unwrap().0,
        "error",
        "{}",
        a.body
    );
    assert_eq!(
        mock.log.all().len(),
        n + 1,
        "no request after the commit point"
    );
}
