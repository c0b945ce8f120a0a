//! Google's Gemini API and Vertex AI through the reference gateway, all on
//! 127.0.0.1 against the bundled mock (whose token endpoint verifies every
//! service-account JWT's RS256 signature): an OpenAI Chat client and an
//! Anthropic client, answers and streams translated, function calls with
//! long arguments intact and their results sent back by name, usage
//! (cached and thought tokens) charged to a budget under 200 concurrent
//! streams, each Google error status to its reason and router behaviour,
//! cuts and mid-stream errors in the client family's framing, Vertex tokens
//! refreshed across expiry under load, a failing token endpoint, and no
//! secret anywhere.

mod common;

use std::sync::Once;
use std::time::{Duration, Instant};

use common::mock_upstream::gemini as mockg;
use common::*;
use serde_json::{Value, json};

const API_KEY_ENV: &str = "TOLLGATE_TEST_GEMINI_KEY";
const WRONG_KEY_ENV: &str = "TOLLGATE_TEST_GEMINI_WRONG_KEY";
const WRONG_KEY: &str = "AIzaWr0ngG3m1n1K3yTh4tMustN3v3rL34kXYZ9876";
const MODEL: &str = "gemini-mock-flash";
const TEXT: &str =
    "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15";

fn env() {
    static ENV: Once = Once::new();
    init();
    ENV.call_once(|| {
        // SAFETY: once, before any gateway of this binary reads them (every
        // test calls `env()` before it builds one).
        unsafe {
            std::env::set_var(API_KEY_ENV, mockg::API_KEY);
            std::env::set_var(WRONG_KEY_ENV, WRONG_KEY);
        }
    });
}

/// The private key's base64 body, as it appears in the key file.
fn private_key_material() -> String {
    let v: Value = serde_json::from_str(mockg::service_account_json()).unwrap();
    let pem = v["private_key"].as_str().unwrap();
    pem.lines().nth(3).unwrap().to_owned()
}

/// The key file, written where the gateway reads it (one per test binary).
fn key_file() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tollgate-test-only-gemini-sa-{}.json",
        std::process::id()
    ));
    if !path.exists() {
        std::fs::write(&path, mockg::service_account_json()).unwrap();
    }
    path
}

/// A deployment on the mock: `gemini` (the key), `wrong` (a wrong key) or
/// `vertex` (the service account), with an optional mock fault.
fn deployment(mock: &MockServer, auth: &str, fault: Option<&str>) -> String {
    let headers = fault.map_or(String::new(), |f| {
        format!("headers = {{ \"x-mock-fault\" = \"{f}\" }}\n")
    });
    let auth = match auth {
        "vertex" => format!(
            "api = \"vertex\"\nvertex = {{ project = \"tollgate-test-only\", location = \"europe-west4\", credentials_file = \"{}\", token_url = \"http://{}/token\" }}\n",
            key_file().display(),
            mock.addr
        ),
        "wrong" => format!("api = \"gemini\"\napi_key_env = \"{WRONG_KEY_ENV}\"\n"),
        _ => format!("api = \"gemini\"\napi_key_env = \"{API_KEY_ENV}\"\n"),
    };
    format!(
        "[[groups.deployments]]\nprovider = \"google\"\nbase_url = \"http://{}\"\nmodel = \"{MODEL}\"\n{auth}{headers}",
        mock.addr
    )
}

/// A priced group `gemini`, and one group per `(name, auth, fault)`.
fn config(mock: &MockServer, groups: &[(&str, &str, Option<&str>)], extra: &str) -> String {
    let mut out = format!(
        "[router]\nnum_retries = 0\n[[groups]]\nname = \"gemini\"\nprice_in_per_mtok = 0.3\nprice_out_per_mtok = 2.5\nprice_cached_in_per_mtok = 0.03\n{}",
        deployment(mock, "gemini", None)
    );
    for (name, auth, fault) in groups {
        out.push_str(&format!(
            "[[groups]]\nname = \"{name}\"\n{}",
            deployment(mock, auth, *fault)
        ));
    }
    out.push_str(extra);
    out
}

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

async fn post_messages(gw: &Gateway, body: String) -> Answer {
    post_messages_as(&gw.url("/v1/messages"), CLIENT_KEY, body).await
}

/// Fails if a text holds a Google secret the tests gave the gateway (the
/// API keys, the private key, an issued token).
fn assert_no_google_secrets(what: &str, text: &str, mock: &MockServer) {
    let mut needles = vec![
        mockg::API_KEY.to_owned(),
        WRONG_KEY.to_owned(),
        private_key_material(),
        "PRIVATE KEY".to_owned(),
    ];
    needles.extend(mock.gemini.issued_tokens());
    for needle in needles {
        assert!(
            !text.contains(&needle),
            "{what} leaks a Google secret ({needle}):\n{text}"
        );
    }
    assert_no_secrets(what, text);
}

/// Checks an Anthropic-shaped error: status, `type: "error"`, the reason.
fn anthropic_error(a: &Answer, status: u16, reason: &str) -> Value {
    assert_eq!(a.status, status, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "error", "{}", a.body);
    assert_eq!(v["error"]["metadata"]["reason"], reason, "{}", a.body);
    v
}

/// The chunks of an OpenAI stream, `[DONE]` checked and removed.
fn chunks(body: &str) -> Vec<Value> {
    let ev = events(body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{body}");
    ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn last_sent(mock: &MockServer) -> Value {
    serde_json::from_slice(&mock.log.last().unwrap().body).unwrap()
}

#[tokio::test]
async fn an_openai_chat_client_is_served_by_the_gemini_api() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[], ""), &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"gemini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}],"max_tokens":100,"temperature":0.5,"top_p":0.9,"stop":["END"]}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gemini");
    assert_eq!(v["choices"][0]["message"]["content"], TEXT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, format!("/v1beta/models/{MODEL}:generateContent"));
    assert_eq!(seen.headers["x-goog-api-key"], mockg::API_KEY);
    assert!(seen.headers.get("authorization").is_none());
    let sent = last_sent(&mock);
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        sent["contents"][1],
        json!({"role": "model", "parts": [{"text": "Hello"}]})
    );
    assert_eq!(
        sent["contents"][2]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"maxOutputTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]})
    );
    assert!(
        sent.get("model").is_none() && sent.get("tools").is_none(),
        "{sent}"
    );
    assert!(!format!("{:?}", seen.headers).contains(CLIENT_KEY));
}

#[tokio::test]
async fn an_anthropic_client_is_served_with_tools_and_its_choice() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[], ""), &mock).await;
    let tools = r#""tools":[{"name":"get_weather","description":"Weather","input_schema":{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}],"tool_choice":{"type":"tool","name":"get_weather"},"system":"Be brief.","top_k":5"#;
    let a = post_messages(&gw, messages("gemini", tools)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0], json!({"type": "text", "text": TEXT}));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["model"], "gemini");
    assert_eq!(v["usage"]["output_tokens"], 16);
    let sent = last_sent(&mock);
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
            "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    assert_eq!(sent["generationConfig"]["topK"], 5);
    // Without a choice from the client, none is sent.
    let a = post_messages(
        &gw,
        messages(
            "gemini",
            &tools.replace(r#""tool_choice":{"type":"tool","name":"get_weather"},"#, ""),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(last_sent(&mock).get("toolConfig").is_none());
}

#[tokio::test]
async fn streams_reach_both_families_to_the_end() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[("gemini-thinking", "gemini", Some("thinking"))],
            "",
        ),
        &mock,
    )
    .await;
    // OpenAI Chat, with the usage chunk asked for.
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat(
            "gemini",
            r#""stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        mock.log.last().unwrap().path,
        format!("/v1beta/models/{MODEL}:streamGenerateContent")
    );
    // (The mock answers a stream only when asked for `alt=sse`.)
    let c = chunks(&a.body);
    let text: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, TEXT);
    assert_eq!(
        c.iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str()),
        Some("stop")
    );
    assert_eq!(
        c.last().unwrap()["usage"]["completion_tokens"],
        16,
        "{}",
        a.body
    );
    // Anthropic, with reasoning before the text (asked for: `thinkingConfig`).
    let a = post_messages(
        &gw,
        messages(
            "gemini-thinking",
            r#""stream":true,"thinking":{"type":"enabled","budget_tokens":1024}"#,
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        last_sent(&mock)["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024, "includeThoughts": true})
    );
    let ev = named_events(&a.body);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let thinking: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "Let me think.");
    let sig: Vec<&str> = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["signature"].as_str())
        .collect();
    assert_eq!(sig, ["c2lnLW1vY2stdGhvdWdodA=="]);
    let text: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, TEXT);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
    // Thought tokens are output tokens.
    assert_eq!(delta.1["usage"]["output_tokens"], 16 + 7);
}

#[tokio::test]
async fn function_calls_arrive_whole_and_their_results_go_back_by_name() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[("gemini-tool", "gemini", Some("function_call:20KiB"))],
            "",
        ),
        &mock,
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gemini-tool", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let c = chunks(&a.body);
    let args: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    let parsed: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed["data"].as_str().unwrap().len(), 20 * 1024 - 11);
    assert_eq!(
        c.iter()
            .find_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"].as_str()),
        Some("mock_tool")
    );
    assert_eq!(
        c.iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str()),
        Some("tool_calls")
    );

    let a = post_messages(&gw, messages("gemini-tool", r#""stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = named_events(&a.body);
    let start = ev
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap();
    assert!(
        start.1["content_block"]["id"]
            .as_str()
            .unwrap()
            .starts_with("toolu_gemini_"),
        "{}",
        start.1
    );
    let input: Vec<&str> = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(input.len(), 1, "whole arguments, one delta");
    assert_eq!(
        serde_json::from_str::<Value>(input[0]).unwrap()["data"]
            .as_str()
            .unwrap()
            .len(),
        20 * 1024 - 11
    );
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");

    // A whole answer, then the conversation sent back with the result: the
    // function's name and its thought signature go back to Gemini.
    let a = post_messages(&gw, messages("gemini-tool", "")).await;
    let v = a.json();
    let content = v["content"].as_array().unwrap();
    assert_eq!(content[0]["type"], "thinking", "{v}");
    assert_eq!(content[0]["signature"], "c2lnLW1vY2stY2FsbA==");
    assert_eq!(content[1]["type"], "tool_use");
    assert_eq!(
        content[1]["input"]["data"].as_str().unwrap().len(),
        20 * 1024 - 11
    );
    let id = content[1]["id"].as_str().unwrap();
    let follow = json!({"model": "gemini", "max_tokens": 64, "messages": [
        {"role": "user", "content": "Call the tool."},
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "42"}]},
    ]});
    let a = post_messages(&gw, follow.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let sent = last_sent(&mock);
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        "c2lnLW1vY2stY2FsbA=="
    );
    assert_eq!(
        sent["contents"][1]["parts"][0]["functionCall"]["name"],
        "mock_tool"
    );
    assert_eq!(
        sent["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "mock_tool", "response": {"output": "42"}}})
    );
    // A result for a call the request does not contain cannot be named.
    let orphan = json!({"model": "gemini", "max_tokens": 64, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_unknown", "content": "42"}]},
    ]});
    let a = post_messages(&gw, orphan.to_string()).await;
    let v = anthropic_error(&a, 400, "invalid_request");
    assert_eq!(
        v["error"]["metadata"]["param"],
        "messages[0].content[0].tool_use_id"
    );
}

#[tokio::test]
async fn each_google_error_status_has_its_reason() {
    env();
    let mock = mock().await;
    let faults = [
        ("resource_exhausted", 429, "upstream_rate_limited"),
        ("unavailable", 503, "upstream_unavailable"),
        ("permission_denied", 502, "upstream_auth_failed"),
        ("not_found", 404, "upstream_model_not_found"),
        ("invalid_argument", 400, "upstream_rejected_request"),
        ("internal", 502, "upstream_error"),
    ];
    let mut groups: Vec<(String, &str, Option<&str>)> = faults
        .iter()
        .map(|(f, _, _)| (format!("gemini-{f}"), "gemini", Some(*f)))
        .collect();
    groups.push((
        "anthropic-exhausted".into(),
        "gemini",
        Some("resource_exhausted"),
    ));
    groups.push(("gemini-wrong-key".into(), "wrong", None));
    groups.push(("gemini-safety".into(), "gemini", Some("safety")));
    let groups: Vec<(&str, &str, Option<&str>)> = groups
        .iter()
        .map(|(n, a, f)| (n.as_str(), *a, *f))
        .collect();
    let gw = gateway(&config(&mock, &groups, ""), &mock).await;
    for (fault, status, reason) in faults {
        let a = post(
            &gw.url("/v1/chat/completions"),
            chat(&format!("gemini-{fault}"), ""),
        )
        .await;
        let v = a.error(status, reason);
        assert_eq!(v["error"]["metadata"]["provider_name"], "google", "{fault}");
        if status == 404 {
            assert_eq!(
                v["error"]["metadata"]["permanent"], true,
                "{fault}: a model gone is permanent"
            );
        }
        if fault == "resource_exhausted" {
            assert_eq!(a.headers["retry-after"], "7", "Google's RetryInfo");
        }
        if status == 503 {
            assert!(a.headers.contains_key("retry-after"), "{fault}");
        }
        assert_no_google_secrets(fault, &a.body, &mock);
    }
    // Anthropic's shape for the same status (another group: the first
    // one's deployment is cooling down now).
    let a = post_messages(&gw, messages("anthropic-exhausted", "")).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    assert_eq!(
        a.json()["error"]["metadata"]["raw"]["error"]["status"],
        "RESOURCE_EXHAUSTED"
    );
    // A key Google refuses (400 INVALID_ARGUMENT, API_KEY_INVALID) is the
    // gateway's credential, never the client's request.
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gemini-wrong-key", ""),
    )
    .await;
    a.error(502, "upstream_auth_failed");
    assert_no_google_secrets("the wrong key's answer", &a.body, &mock);
    // A safety stop is a content-filter outcome in each family.
    let a = post(&gw.url("/v1/chat/completions"), chat("gemini-safety", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["finish_reason"], "content_filter");
    let a = post_messages(&gw, messages("gemini-safety", r#""stream":true"#)).await;
    let ev = named_events(&a.body);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "refusal", "{}", a.body);
}

/// An exhausted deployment is retried on its healthy twin and cooled down;
/// a rejected request is not retried.
#[tokio::test]
async fn the_router_retries_an_exhausted_deployment_on_its_twin() {
    env();
    let mock = mock().await;
    let named = |name: &str, fault: Option<&str>| {
        deployment(&mock, "gemini", fault).replacen(
            "provider = \"google\"",
            &format!("provider = \"google\"\nname = \"{name}\""),
            1,
        )
    };
    let toml = format!(
        "[router]\nnum_retries = 2\n[[groups]]\nname = \"twins\"\n{}{}[[groups]]\nname = \"rejected\"\n{}{}",
        named("exhausted", Some("resource_exhausted")),
        named("healthy", None),
        named("r1", Some("invalid_argument")),
        named("r2", None),
    );
    let gw = gateway(&toml, &mock).await;
    for _ in 0..4 {
        let a = post(&gw.url("/v1/chat/completions"), chat("twins", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["choices"][0]["message"]["content"], TEXT);
    }
    let exhausted = mock
        .log
        .all()
        .iter()
        .filter(|r| {
            r.headers
                .get("x-mock-fault")
                .is_some_and(|v| v == "resource_exhausted")
        })
        .count();
    assert!(
        exhausted <= 1,
        "the exhausted deployment is cooled down after its 429 ({exhausted} calls)"
    );
    let mut rejected = 0;
    for _ in 0..6 {
        let a = post(&gw.url("/v1/chat/completions"), chat("rejected", "")).await;
        if a.status == 400 {
            a.error(400, "upstream_rejected_request");
            rejected += 1;
        } else {
            assert_eq!(a.status, 200, "{}", a.body);
        }
    }
    assert!(
        rejected > 0,
        "one of six requests meets the rejecting deployment"
    );
}

#[tokio::test]
async fn cuts_and_mid_stream_errors_end_in_the_client_familys_framing() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[
                ("gemini-cut", "gemini", Some("cut:3")),
                ("gemini-stream-error", "gemini", Some("stream_error:3")),
                (
                    "gemini-stream-exhausted",
                    "gemini",
                    Some("stream_exhausted"),
                ),
            ],
            "",
        ),
        &mock,
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gemini-cut", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("tok0"), "{}", a.body);
    assert_ended_by_error(&a.body, "upstream_stream_cut");
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gemini-stream-error", r#""stream":true"#),
    )
    .await;
    let ev = assert_ended_by_error(&a.body, "upstream_error");
    let err: Value = serde_json::from_str(&ev[ev.len() - 3]).unwrap();
    assert_eq!(
        err["error"]["metadata"]["upstream_type"], "INTERNAL",
        "{}",
        a.body
    );
    for (group, reason) in [
        ("gemini-cut", "upstream_stream_cut"),
        ("gemini-stream-error", "upstream_error"),
    ] {
        let a = post_messages(&gw, messages(group, r#""stream":true"#)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let ev = named_events(&a.body);
        assert!(
            ev.iter().any(|(n, _)| n == "content_block_delta"),
            "{}",
            a.body
        );
        let (name, data) = ev.last().unwrap();
        assert_eq!(name, "error", "{}", a.body);
        assert_eq!(data["error"]["metadata"]["reason"], reason, "{}", a.body);
        assert!(
            !a.body.contains("[DONE]") && !a.body.contains("message_stop"),
            "{}",
            a.body
        );
    }
    // An error before any content: the stream has not started, so the
    // client gets an ordinary error (which the router could have retried).
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gemini-stream-exhausted", r#""stream":true"#),
    )
    .await;
    let v = a.error(429, "upstream_rate_limited");
    assert_eq!(
        v["error"]["metadata"]["upstream_type"],
        "RESOURCE_EXHAUSTED"
    );
}

#[tokio::test]
async fn what_cannot_be_carried_is_refused_by_name() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[], ""), &mock).await;
    let before = mock.log.len();
    let a = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"gemini","messages":[{"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]}"#,
    )
    .await;
    let v = a.error(400, "invalid_request");
    assert_eq!(
        v["error"]["metadata"]["param"], "messages[0].content[1].image_url.url",
        "{v}"
    );
    for (extra, param) in [
        (
            r#""tools":[{"name":"t","input_schema":{"type":"object","properties":{"a":{"type":"string","not":{"const":"x"}}}}}]"#,
            "tools[0].input_schema.properties.a.not",
        ),
        (
            r#""tools":[{"name":"t","input_schema":{"type":"object"}}],"tool_choice":{"type":"auto","disable_parallel_tool_use":true}"#,
            "tool_choice.disable_parallel_tool_use",
        ),
        (r#""metadata":{"user_id":"u1"}"#, "metadata"),
        (
            r#""system":[{"type":"text","text":"x","cache_control":{"type":"ephemeral"}}]"#,
            "system[0].cache_control",
        ),
    ] {
        let a = post_messages(&gw, messages("gemini", extra)).await;
        let v = anthropic_error(&a, 400, "invalid_request");
        assert_eq!(v["error"]["metadata"]["param"], param, "{}", a.body);
    }
    let a = post_messages(
        &gw,
        r#"{"model":"gemini","max_tokens":9,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"https://example.com/cat.png"}}]}]}"#.into(),
    )
    .await;
    let v = anthropic_error(&a, 400, "invalid_request");
    assert_eq!(
        v["error"]["metadata"]["param"],
        "messages[0].content[0].source.url"
    );
    // Routes Gemini has no counterpart of are not served.
    let a = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"gemini","input":"hi"}"#,
    )
    .await;
    a.error(502, "upstream_route_not_served");
    assert_eq!(mock.log.len(), before, "nothing refused was sent");
}

/// 200 concurrent streams against one key's budget: no overspend, and each
/// admitted stream charged exactly its usage from `usageMetadata` (input,
/// cached input, output).
#[tokio::test]
async fn concurrent_streams_cannot_overspend_and_are_charged_their_usage() {
    env();
    let mock = mock().await;
    let ledger = tollgate::budget::Ledger::new(tollgate::budget::TimeZone::UTC);
    let toml = config(
        &mock,
        &[],
        "[keys]\nstore = \"memory\"\nmaster_key_env = \"{master_env}\"\n",
    )
    .replace(
        "[[groups.deployments]]\nprovider = \"google\"",
        "[[groups.deployments]]\nheaders = { \"x-mock-fault\" = \"cache\" }\nprovider = \"google\"",
    );
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let (key, id) = generate_key(&gw, json!({"models": ["*"], "max_budget": 0.001})).await;
    let body = messages("gemini", r#""stream":true"#);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (url, key, body) = (gw.url("/v1/messages"), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let a = post_messages_as(&url, &key, body).await;
            (a.status, a.body)
        }));
    }
    let mut served = 0u64;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        match status {
            200 => {
                assert!(text.contains("event: message_stop"), "{text}");
                served += 1;
            }
            402 => assert!(text.contains("billing_error"), "{text}"),
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert!(served > 0 && served < 200, "served {served}");
    let upstream_len = mock.log.last().unwrap().body.len() as u64;
    let usage = tollgate::budget::TokenUsage {
        prompt_tokens: (upstream_len / 4).max(1) + 100,
        completion_tokens: 16,
        cached_tokens: 100,
        cache_creation_tokens: 0,
    };
    let price = tollgate::budget::Price {
        input_per_mtok: 300_000,
        output_per_mtok: 2_500_000,
        cached_input_per_mtok: Some(30_000),
        cache_write_per_mtok: None,
    };
    let each = price.cost(&usage);
    let spent = ledger.usage(
        &tollgate::budget::Scope::Key(id.as_str().into()),
        tollgate::budget::Period::Total,
    );
    assert_eq!(spent.reserved, 0, "every reservation settled");
    assert!(spent.spent <= 1_000, "overspent: {}", spent.spent);
    assert_eq!(
        spent.spent,
        served * each,
        "each stream charged its usage ({each})"
    );
}

#[tokio::test]
async fn vertex_is_served_with_a_service_account_token_fetched_once() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[("vertex", "vertex", None)], ""), &mock).await;
    // A burst before any token: one fetch for all of them.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = gw.url(if i % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/v1/messages"
        });
        let body = if i % 2 == 0 {
            chat("vertex", if i % 4 == 0 { r#""stream":true"# } else { "" })
        } else {
            messages("vertex", "")
        };
        tasks.push(tokio::spawn(async move {
            let res = anonymous()
                .post(url)
                .bearer_auth(CLIENT_KEY)
                .header("x-api-key", CLIENT_KEY)
                .header("anthropic-version", "2023-06-01")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("tok15"), "{text}");
    }
    assert_eq!(mock.gemini.token_fetches(), 1, "one fetch for the burst");
    assert_eq!(mock.gemini.most_concurrent_fetches(), 1);
    assert_eq!(mock.gemini.refused_assertions(), 0, "the JWT verified");
    let seen = mock
        .log
        .all()
        .into_iter()
        .rev()
        .find(|r| r.path.contains("/publishers/"))
        .unwrap();
    assert!(
        seen.path.starts_with(&format!(
            "/v1/projects/tollgate-test-only/locations/europe-west4/publishers/google/models/{MODEL}:"
        )),
        "{}",
        seen.path
    );
    let auth = seen.headers["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Bearer ya29.m0ck-"), "{auth}");
    assert!(seen.headers.get("x-goog-api-key").is_none());
    let token = mock
        .log
        .all()
        .into_iter()
        .find(|r| r.path == "/token")
        .unwrap();
    let form = String::from_utf8(token.body.to_vec()).unwrap();
    assert!(
        form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{form}"
    );
}

#[tokio::test]
async fn vertex_tokens_are_refreshed_across_expiry_under_load() {
    env();
    let mock = mock().await;
    mock.gemini.set_token_ttl(Duration::from_secs(2));
    mock.gemini.set_token_latency(Duration::from_millis(50));
    let gw = gateway(&config(&mock, &[("vertex", "vertex", None)], ""), &mock).await;
    let start = Instant::now();
    let run = Duration::from_secs(5);
    let mut workers = Vec::new();
    for _ in 0..16 {
        let url = gw.url("/v1/chat/completions");
        workers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while start.elapsed() < run {
                let a = post(&url, chat("vertex", "")).await;
                assert_eq!(a.status, 200, "{}", a.body);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let fetches = mock.gemini.token_fetches();
    let used = mock.gemini.used_tokens() as u64;
    assert!(total > 16, "served {total}");
    assert_eq!(mock.gemini.expired_token_uses(), 0);
    assert_eq!(mock.gemini.refused_assertions(), 0);
    // Several lifetimes crossed, and never a herd: never two fetches at
    // once (each takes 50 ms at the mock, so a herd would overlap), and each
    // token fetched was used (the last one may have landed after the run).
    assert!(used >= 3, "tokens used: {used}");
    assert!(fetches <= used + 1, "fetches {fetches}, used {used}");
    assert_eq!(
        mock.gemini.most_concurrent_fetches(),
        1,
        "{fetches} fetches in {elapsed:.1} s"
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_is_502_cools_the_deployment_and_another_serves() {
    env();
    let mock = mock().await;
    let toml = config(&mock, &[("solo", "vertex", None)], "")
        .replace("num_retries = 0", "num_retries = 2")
        + "[[groups]]\nname = \"pair\"\n"
        + &deployment(&mock, "vertex", None).replacen(
            "provider = \"google\"",
            "provider = \"google\"\nname = \"vertex\"\nweight = 100",
            1,
        )
        + &deployment(&mock, "gemini", None).replacen(
            "provider = \"google\"",
            "provider = \"google\"\nname = \"keyed\"",
            1,
        );
    let gw = gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");
    mock.gemini
        .set_token_fault(Some(mockg::TokenFault::InvalidGrant));
    let a = post(&url, chat("solo", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("Vertex AI access token"), "{message}");
    assert!(message.contains("invalid_grant"), "{message}");
    assert_eq!(mock.gemini.token_fetches(), 1);
    // Cooled down: not tried again, the token endpoint not called again.
    let a = post(&url, chat("solo", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert_eq!(
        v["error"]["metadata"]["cooling"][0]["reason"], "credential",
        "{}",
        a.body
    );
    assert_eq!(mock.gemini.token_fetches(), 1);
    // With a twin on an API key: every request served.
    for _ in 0..10 {
        let a = post(&url, chat("pair", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-tollgate-deployment"], "keyed");
    }
    assert!(mock.gemini.token_fetches() <= 2);
    // Unavailable, then healed: the next fetch after the pause works.
    mock.gemini
        .set_token_fault(Some(mockg::TokenFault::Unavailable));
    let gw2 = gateway(&config(&mock, &[("solo", "vertex", None)], ""), &mock).await;
    let a = post(&gw2.url("/v1/chat/completions"), chat("solo", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("temporarily_unavailable"),
        "{v}"
    );
    assert_no_google_secrets("the logs", &logs(), &mock);
}

/// A token Vertex refuses is dropped: past the cooldown, concurrent
/// requests fetch one new token.
#[tokio::test]
async fn a_refused_vertex_token_is_dropped_and_fetched_again_once() {
    env();
    let mock = mock().await;
    let toml = config(&mock, &[("vertex", "vertex", None)], "").replace(
        "num_retries = 0",
        "num_retries = 0\ncredential_cooldown_ms = 1",
    );
    let gw = gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");
    let a = post(&url, chat("vertex", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.gemini.token_fetches(), 1);
    // Revoked: the requests that meet the refusal send themselves again,
    // once, with the one fresh token fetched for all of them.
    mock.gemini.revoke_tokens();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { post(&url, chat("vertex", "")).await },
        ));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(mock.gemini.token_fetches(), 2);
    assert_eq!(mock.gemini.used_tokens(), 2);
    // Refused, and no fresh token to be had: the gateway's problem, 502, never a 401.
    mock.gemini.revoke_tokens();
    mock.gemini
        .set_token_fault(Some(mockg::TokenFault::Unavailable));
    let a = post(&url, chat("vertex", "")).await;
    a.error(502, "upstream_auth_failed");
}

/// The mock's token endpoint refuses what the signature does not cover: a
/// tampered claim, a JWT signed by another key, a stale clock.
#[test]
fn the_mock_verifies_the_jwt_signature_and_claims() {
    use tollgate::provider::gemini::ServiceAccount;
    let account = ServiceAccount::from_json(mockg::service_account_json())
        .unwrap()
        .with_token_uri("http://127.0.0.1:1/token")
        .unwrap();
    let now = std::time::SystemTime::now();
    let jwt = account.assertion(now).unwrap();
    let jwt = jwt.expose();
    assert_eq!(mockg::verify_jwt(jwt, now), Ok(()));
    let parts: Vec<&str> = jwt.split('.').collect();
    // Another issuer in the claims, the signature kept.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    claims["iss"] = "attacker@evil.iam.gserviceaccount.com".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(
        mockg::verify_jwt(&tampered, now),
        Err("Invalid JWT Signature.")
    );
    // A flipped signature byte.
    let mut sig = b64.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let bad = format!("{}.{}.{}", parts[0], parts[1], b64.encode(sig));
    assert_eq!(mockg::verify_jwt(&bad, now), Err("Invalid JWT Signature."));
    // Signed six minutes ago (or ahead): out of the accepted window.
    for skew in [-360i64, 360] {
        let at = if skew < 0 {
            now - Duration::from_secs(360)
        } else {
            now + Duration::from_secs(360)
        };
        let stale = account.assertion(at).unwrap();
        assert!(mockg::verify_jwt(stale.expose(), now).is_err(), "{skew}");
    }
    // An HS256 token is refused whatever it says.
    let hs = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"HS256"}"#),
        parts[1],
        parts[2]
    );
    assert!(mockg::verify_jwt(&hs, now).is_err());
}

/// No Google secret (API key, private key, token) in any answer, log line
/// or `Debug` output, whatever the outcome.
#[tokio::test]
async fn no_google_secret_in_any_body_log_or_debug() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[
                ("gemini-wrong", "wrong", None),
                ("gemini-denied", "gemini", Some("permission_denied")),
                ("gemini-cut", "gemini", Some("cut:2")),
                ("vertex", "vertex", None),
                ("vertex-denied", "vertex", Some("permission_denied")),
            ],
            "",
        ),
        &mock,
    )
    .await;
    let mut bodies = String::new();
    for (model, stream) in [
        ("gemini", false),
        ("gemini", true),
        ("gemini-wrong", false),
        ("gemini-denied", false),
        ("gemini-cut", true),
        ("vertex", false),
        ("vertex", true),
        ("vertex-denied", false),
    ] {
        let extra = if stream { r#""stream":true"# } else { "" };
        let a = post(&gw.url("/v1/chat/completions"), chat(model, extra)).await;
        bodies.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
        let a = post_messages(&gw, messages(model, extra)).await;
        bodies.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
    }
    assert!(!mock.gemini.issued_tokens().is_empty());
    assert_no_google_secrets("the answers", &bodies, &mock);
    assert_no_google_secrets("the logs", &logs(), &mock);
    let config = tollgate::config::Config::from_toml(
        "g.toml",
        &config(&mock, &[("vertex", "vertex", None)], ""),
    )
    .unwrap();
    let router = config.router().unwrap();
    assert_no_google_secrets(
        "the router's Debug",
        &format!("{router:?} {config:?}"),
        &mock,
    );
}

/// A Google deployment is checked whole at start, each problem named by its field.
#[test]
fn the_config_refuses_incomplete_google_deployments() {
    env();
    let with = |deployment: &str| {
        tollgate::config::Config::from_toml(
            "g.toml",
            &format!(
                "[[groups]]\nname = \"g\"\n[[groups.deployments]]\nprovider = \"google\"\n{deployment}\n"
            ),
        )
    };
    let at = |f: &str| format!("groups[0].deployments[0].{f}");
    let e = with("api = \"gemini\"").unwrap_err();
    assert_eq!(e.field(), at("api_key_env"), "{e}");
    let e = with("api = \"gemini\"\napi_key_env = \"TOLLGATE_TEST_SURELY_UNSET\"").unwrap_err();
    assert_eq!(e.field(), at("api_key_env"), "{e}");
    let e = with("api = \"vertex\"").unwrap_err();
    assert_eq!(e.field(), at("vertex"), "{e}");
    let key = key_file();
    let key = key.display();
    let e = with(&format!(
        "api = \"vertex\"\nvertex = {{ project = \"\", location = \"us-central1\", credentials_file = \"{key}\" }}"
    ))
    .unwrap_err();
    assert_eq!(e.field(), at("vertex.project"), "{e}");
    let e = with(&format!(
        "api = \"vertex\"\nvertex = {{ project = \"p\", location = \"\", credentials_file = \"{key}\" }}"
    ))
    .unwrap_err();
    assert_eq!(e.field(), at("vertex.location"), "{e}");
    let e = with("api = \"vertex\"\nvertex = { project = \"p\", location = \"us-central1\", credentials_file = \"/nonexistent/sa.json\" }")
        .unwrap_err();
    assert_eq!(e.field(), at("vertex.credentials_file"), "{e}");
    let e = with("api = \"vertex\"\nvertex = { project = \"p\", location = \"us-central1\", credentials_file_env = \"TOLLGATE_TEST_SURELY_UNSET\" }")
        .unwrap_err();
    assert_eq!(e.field(), at("vertex.credentials_file_env"), "{e}");
    let e = with(&format!(
        "api = \"vertex\"\napi_key_env = \"{API_KEY_ENV}\"\nvertex = {{ project = \"p\", location = \"us-central1\", credentials_file = \"{key}\" }}"
    ))
    .unwrap_err();
    assert_eq!(e.field(), at("api_key_env"), "{e}");
    let e = with(&format!(
        "api = \"vertex\"\nvertex = {{ project = \"p\", location = \"us-central1\", credentials_file = \"{key}\", token_url = \"not a url\" }}"
    ))
    .unwrap_err();
    assert_eq!(e.field(), at("vertex.token_url"), "{e}");
    let e = with(&format!(
        "base_url = \"http://127.0.0.1:1\"\nvertex = {{ project = \"p\", location = \"us-central1\", credentials_file = \"{key}\" }}"
    ))
    .unwrap_err();
    assert_eq!(e.field(), at("vertex"), "{e}");
    // Without a base URL: Google's endpoints (the Gemini API's, Vertex's for the location).
    let ok = with(&format!(
        "api = \"gemini\"\napi_key_env = \"{API_KEY_ENV}\"\nmodel = \"gemini-2.5-flash\""
    ))
    .unwrap();
    assert!(ok.router().unwrap().has_model("g"));
    let ok = with(&format!(
        "api = \"vertex\"\nmodel = \"gemini-2.5-pro\"\nvertex = {{ project = \"p\", location = \"global\", credentials_file = \"{key}\" }}"
    ))
    .unwrap();
    let router = ok.router().unwrap();
    assert!(router.has_model("g"));
    let dbg = format!("{router:?}");
    assert!(!dbg.contains(&private_key_material()), "{dbg}");
    // The built-in price table knows Gemini's models: a group of one is priced.
    assert!(ok.unpriced().is_empty(), "{:?}", ok.unpriced());
}
