//! AWS Bedrock (Converse, ConverseStream) through the reference gateway, all
//! on 127.0.0.1 against the bundled mock, which verifies every SigV4
//! signature with its own implementation: an OpenAI Chat client and an
//! Anthropic client, answers and streams (binary event stream) translated,
//! tool calls with long streamed arguments, usage (cache reads and writes)
//! charged to a budget under 200 concurrent streams, each Bedrock exception
//! to its reason and router behaviour, cuts and mid-stream exceptions in
//! the client family's framing, a tampered or stale signature refused,
//! temporary credentials from the container credentials endpoint refreshed
//! across expiry under load (and what a failing endpoint or a refused
//! credential becomes), and no AWS secret anywhere.

mod common;

use std::sync::Once;
use std::time::{Duration, SystemTime};

use common::mock_upstream::bedrock as mockbr;
use common::*;
use serde_json::{Value, json};

const KEY_ID_ENV: &str = "TOLLGATE_TEST_AWS_KEY_ID";
const SECRET_ENV: &str = "TOLLGATE_TEST_AWS_SECRET";
const TOKEN_ENV: &str = "TOLLGATE_TEST_AWS_TOKEN";
const WRONG_SECRET_ENV: &str = "TOLLGATE_TEST_AWS_WRONG_SECRET";
const API_KEY_ENV: &str = "TOLLGATE_TEST_BEDROCK_API_KEY";
const CONTAINER_TOKEN_ENV: &str = "TOLLGATE_TEST_AWS_CONTAINER_TOKEN";
const ROLE_ARN_ENV: &str = "TOLLGATE_TEST_AWS_ROLE_ARN";
const WEB_TOKEN_FILE_ENV: &str = "TOLLGATE_TEST_AWS_WEB_IDENTITY_TOKEN_FILE";
const WRONG_WEB_TOKEN_FILE_ENV: &str = "TOLLGATE_TEST_AWS_WRONG_WEB_IDENTITY_TOKEN_FILE";
const MODEL: &str = "anthropic.mock-claude-v1:0";
const TEXT: &str =
    "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15";

fn env() {
    static ENV: Once = Once::new();
    init();
    ENV.call_once(|| {
        let dir = std::env::temp_dir();
        let token_file = dir.join(format!("tollgate-web-identity-{}.jwt", std::process::id()));
        std::fs::write(&token_file, format!("{}\n", mockbr::WEB_IDENTITY_TOKEN)).unwrap();
        let wrong_file = dir.join(format!(
            "tollgate-web-identity-{}-wrong.jwt",
            std::process::id()
        ));
        std::fs::write(&wrong_file, "eyJub3QiOiJ0aGlzIn0.eyJ3cm9uZyI6MX0.c2ln").unwrap();
        // SAFETY: once, before any gateway of this binary reads them (every
        // test calls `env()` before it builds one).
        unsafe {
            std::env::set_var(KEY_ID_ENV, mockbr::ACCESS_KEY_ID);
            std::env::set_var(SECRET_ENV, mockbr::SECRET_ACCESS_KEY);
            std::env::set_var(TOKEN_ENV, mockbr::SESSION_TOKEN);
            std::env::set_var(WRONG_SECRET_ENV, "notTheSecretAccessKey0123456789abcdefXYZ");
            std::env::set_var(API_KEY_ENV, mockbr::API_KEY);
            std::env::set_var(CONTAINER_TOKEN_ENV, mockbr::CONTAINER_TOKEN);
            std::env::set_var(
                ROLE_ARN_ENV,
                "arn:aws:iam::123456789012:role/mock-bedrock-caller",
            );
            std::env::set_var(WEB_TOKEN_FILE_ENV, &token_file);
            std::env::set_var(WRONG_WEB_TOKEN_FILE_ENV, &wrong_file);
        }
    });
}

/// A Bedrock deployment on the mock, SigV4 with the session token unless
/// `auth` says otherwise, with an optional mock fault.
fn deployment(mock: &MockServer, auth: &str, fault: Option<&str>) -> String {
    let headers = fault.map_or(String::new(), |f| {
        format!("headers = {{ \"x-mock-fault\" = \"{f}\" }}\n")
    });
    let auth = match auth {
        "api_key" => {
            format!("api_key_env = \"{API_KEY_ENV}\"\nbedrock = {{ region = \"us-east-1\" }}\n")
        }
        // Temporary credentials from the mock's container credentials
        // endpoint; failed fetches retried after 1 ms.
        "container" => format!(
            "bedrock = {{ region = \"us-east-1\", credentials = \"container\", container_credentials_uri = \"http://{}/v2/credentials/task-1\", container_authorization_token_env = \"{CONTAINER_TOKEN_ENV}\", retry_after_failure_ms = 1 }}\n",
            mock.addr
        ),
        // Web identity: the token file exchanged at the mock's STS.
        "web_identity" | "web_identity_wrong" => format!(
            "bedrock = {{ region = \"us-east-1\", credentials = \"web_identity\", sts_endpoint = \"http://{}/sts\", role_arn_env = \"{ROLE_ARN_ENV}\", web_identity_token_file_env = \"{}\", role_session_name = \"tollgate-test\", retry_after_failure_ms = 1 }}\n",
            mock.addr,
            if auth == "web_identity" {
                WEB_TOKEN_FILE_ENV
            } else {
                WRONG_WEB_TOKEN_FILE_ENV
            }
        ),
        "wrong" => format!(
            "bedrock = {{ region = \"us-east-1\", access_key_id_env = \"{KEY_ID_ENV}\", secret_access_key_env = \"{WRONG_SECRET_ENV}\", session_token_env = \"{TOKEN_ENV}\" }}\n"
        ),
        _ => format!(
            "bedrock = {{ region = \"us-east-1\", access_key_id_env = \"{KEY_ID_ENV}\", secret_access_key_env = \"{SECRET_ENV}\", session_token_env = \"{TOKEN_ENV}\" }}\n"
        ),
    };
    format!(
        "[[groups.deployments]]\nprovider = \"bedrock\"\napi = \"bedrock\"\nbase_url = \"http://{}\"\nmodel = \"{MODEL}\"\n{auth}{headers}",
        mock.addr
    )
}

/// A priced group `bedrock`, and one group per `(name, auth, fault)`.
fn config(mock: &MockServer, groups: &[(&str, &str, Option<&str>)], extra: &str) -> String {
    let mut out = format!(
        "[router]\nnum_retries = 0\n[[groups]]\nname = \"bedrock\"\nprice_in_per_mtok = 3.0\nprice_out_per_mtok = 15.0\nprice_cached_in_per_mtok = 0.3\nprice_cache_write_per_mtok = 3.75\n{}",
        deployment(mock, "sigv4", None)
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

/// Fails if a text holds an AWS secret the tests gave the gateway.
fn assert_no_aws_secrets(what: &str, text: &str) {
    for needle in [
        mockbr::SECRET_ACCESS_KEY,
        mockbr::SESSION_TOKEN,
        mockbr::API_KEY,
        mockbr::CONTAINER_TOKEN,
        mockbr::WEB_IDENTITY_TOKEN,
        "notTheSecretAccessKey",
        // The mock's temporary secret keys and session tokens.
        "mockTempSecret",
        "mockTempSessionToken",
    ] {
        assert!(
            !text.contains(needle),
            "{what} leaks an AWS secret ({needle}):\n{text}"
        );
    }
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

#[tokio::test]
async fn an_openai_chat_client_is_served_and_the_request_is_signed_converse() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[], ""), &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"bedrock","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]}],"max_tokens":100,"temperature":0.5,"top_p":0.9,"stop":["END"]}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "bedrock");
    assert_eq!(v["choices"][0]["message"]["content"], TEXT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 16);

    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, "/model/anthropic.mock-claude-v1%3A0/converse");
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": [{"text": "Hello"}]})
    );
    assert_eq!(
        sent["messages"][2]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    assert_eq!(
        sent["inferenceConfig"],
        json!({"maxTokens": 100, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]})
    );
    assert!(
        sent.get("model").is_none() && sent.get("toolConfig").is_none(),
        "{sent}"
    );
    // Signed by the gateway (the mock verified it), with the session token;
    // nothing of the client's key goes up.
    let auth = seen.headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={}/",
            mockbr::ACCESS_KEY_ID
        )),
        "{auth}"
    );
    assert!(auth.contains("/us-east-1/bedrock/aws4_request"), "{auth}");
    assert_eq!(seen.headers["x-amz-security-token"], mockbr::SESSION_TOKEN);
    assert!(!format!("{:?}", seen.headers).contains(CLIENT_KEY));
}

#[tokio::test]
async fn an_anthropic_client_is_served_with_tools_and_its_choice() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[], ""), &mock).await;
    let tools = r#""tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"tool_choice":{"type":"tool","name":"get_weather"},"system":"Be brief.""#;
    let a = post_messages(&gw, messages("bedrock", tools)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0], json!({"type": "text", "text": TEXT}));
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["model"], "bedrock");
    assert_eq!(v["usage"]["output_tokens"], 16);
    let sent: Value = serde_json::from_slice(&mock.log.last().unwrap().body).unwrap();
    assert_eq!(
        sent["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "get_weather", "description": "Weather",
            "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}}],
            "toolChoice": {"tool": {"name": "get_weather"}}})
    );
    // Without a choice from the client, none is sent.
    let a = post_messages(
        &gw,
        messages(
            "bedrock",
            &tools.replace(r#""tool_choice":{"type":"tool","name":"get_weather"},"#, ""),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let sent: Value = serde_json::from_slice(&mock.log.last().unwrap().body).unwrap();
    assert!(sent["toolConfig"].get("toolChoice").is_none(), "{sent}");
}

#[tokio::test]
async fn streams_reach_both_families_to_the_end() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[("bedrock-thinking", "sigv4", Some("thinking"))],
            "",
        ),
        &mock,
    )
    .await;
    // OpenAI Chat, with the usage chunk asked for.
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat(
            "bedrock",
            r#""stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        mock.log.last().unwrap().path,
        "/model/anthropic.mock-claude-v1%3A0/converse-stream"
    );
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
    // Anthropic, with reasoning before the text.
    let a = post_messages(&gw, messages("bedrock-thinking", r#""stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
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
    assert_eq!(sig, ["sig-mock-0001"]);
    let text: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(
        text, TEXT,
        "the first text delta after the reasoning arrives"
    );
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta.1["usage"]["output_tokens"], 16);
}

#[tokio::test]
async fn tool_calls_stream_their_long_arguments_intact_to_both_families() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[("bedrock-tool", "sigv4", Some("tool_use:20KiB"))],
            "",
        ),
        &mock,
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("bedrock-tool", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let c = chunks(&a.body);
    let args: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args.len(), 20 * 1024);
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

    let a = post_messages(&gw, messages("bedrock-tool", r#""stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = named_events(&a.body);
    let start = ev.iter().find(|(n, _)| n == "content_block_start").unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    assert_eq!(start.1["content_block"]["id"], "tooluse_mock_1");
    let input: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(input.len(), 20 * 1024);
    let delta = ev.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    // Whole answers too.
    let a = post_messages(&gw, messages("bedrock-tool", "")).await;
    let v = a.json();
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert_eq!(
        v["content"][0]["input"]["data"].as_str().unwrap().len(),
        20 * 1024 - 11
    );
}

#[tokio::test]
async fn each_bedrock_exception_has_its_reason() {
    env();
    let mock = mock().await;
    let faults = [
        ("throttling", 429, "upstream_rate_limited"),
        ("unavailable", 503, "upstream_unavailable"),
        ("model_timeout", 408, "upstream_timeout"),
        ("access_denied", 502, "upstream_auth_failed"),
        ("not_found", 404, "upstream_model_not_found"),
        ("invalid_model", 404, "upstream_model_not_found"),
        ("validation", 400, "upstream_rejected_request"),
        ("model_error", 502, "upstream_error"),
    ];
    let mut groups: Vec<(String, Option<&str>)> = faults
        .iter()
        .map(|(f, _, _)| (format!("bedrock-{f}"), Some(*f)))
        .collect();
    groups.push(("anthropic-throttling".into(), Some("throttling")));
    let groups: Vec<(&str, &str, Option<&str>)> = groups
        .iter()
        .map(|(n, f)| (n.as_str(), "sigv4", *f))
        .collect();
    let gw = gateway(&config(&mock, &groups, ""), &mock).await;
    for (fault, status, reason) in faults {
        let a = post(
            &gw.url("/v1/chat/completions"),
            chat(&format!("bedrock-{fault}"), ""),
        )
        .await;
        let v = a.error(status, reason);
        assert_eq!(
            v["error"]["metadata"]["provider_name"], "bedrock",
            "{fault}"
        );
        if status == 404 {
            assert_eq!(
                v["error"]["metadata"]["permanent"], true,
                "{fault}: a model gone is permanent"
            );
        }
        if matches!(status, 429 | 503) {
            assert!(a.headers.contains_key("retry-after"), "{fault}");
        }
        assert_no_aws_secrets(fault, &a.body);
    }
    // Anthropic's shape for the same exception (another group: the first
    // one's deployment is cooling down now).
    let a = post_messages(&gw, messages("anthropic-throttling", "")).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    assert_eq!(
        a.json()["error"]["metadata"]["raw"]["__type"],
        "ThrottlingException"
    );
}

/// A throttled or unavailable deployment is retried on its healthy twin and
/// cooled down; a rejected request is not retried.
#[tokio::test]
async fn the_router_retries_a_throttled_deployment_on_its_twin() {
    env();
    let mock = mock().await;
    let toml = format!(
        "[router]\nnum_retries = 2\n[[groups]]\nname = \"twins\"\n{}{}[[groups]]\nname = \"rejected\"\n{}{}",
        deployment(&mock, "sigv4", Some("throttling")).replacen(
            "provider = \"bedrock\"",
            "provider = \"bedrock\"\nname = \"throttled\"",
            1
        ),
        deployment(&mock, "sigv4", None).replacen(
            "provider = \"bedrock\"",
            "provider = \"bedrock\"\nname = \"healthy\"",
            1
        ),
        deployment(&mock, "sigv4", Some("validation")).replacen(
            "provider = \"bedrock\"",
            "provider = \"bedrock\"\nname = \"v1\"",
            1
        ),
        deployment(&mock, "sigv4", None).replacen(
            "provider = \"bedrock\"",
            "provider = \"bedrock\"\nname = \"v2\"",
            1
        ),
    );
    let gw = gateway(&toml, &mock).await;
    for _ in 0..4 {
        let a = post(&gw.url("/v1/chat/completions"), chat("twins", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.json()["choices"][0]["message"]["content"], TEXT);
    }
    let throttled = mock
        .log
        .all()
        .iter()
        .filter(|r| {
            r.headers
                .get("x-mock-fault")
                .is_some_and(|v| v == "throttling")
        })
        .count();
    assert!(
        throttled <= 1,
        "the throttled deployment is cooled down after its 429 ({throttled} calls)"
    );
    // A ValidationException is the request's fault: the same answer, not retried elsewhere.
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
async fn cuts_and_mid_stream_exceptions_end_in_the_client_familys_framing() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[
                ("bedrock-cut", "sigv4", Some("cut:3")),
                ("bedrock-stream-error", "sigv4", Some("stream_error:3")),
                (
                    "bedrock-stream-throttled",
                    "sigv4",
                    Some("stream_throttled"),
                ),
            ],
            "",
        ),
        &mock,
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("bedrock-cut", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("tok0"), "{}", a.body);
    assert_ended_by_error(&a.body, "upstream_stream_cut");
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("bedrock-stream-error", r#""stream":true"#),
    )
    .await;
    let ev = assert_ended_by_error(&a.body, "upstream_error");
    let err: Value = serde_json::from_str(&ev[ev.len() - 3]).unwrap();
    assert_eq!(
        err["error"]["metadata"]["upstream_type"], "modelStreamErrorException",
        "{}",
        a.body
    );
    for (group, reason) in [
        ("bedrock-cut", "upstream_stream_cut"),
        ("bedrock-stream-error", "upstream_error"),
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
    // An exception before any content: the stream has not started, so the
    // client gets an ordinary error (which the router could have retried).
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("bedrock-stream-throttled", r#""stream":true"#),
    )
    .await;
    let v = a.error(429, "upstream_rate_limited");
    assert_eq!(
        v["error"]["metadata"]["upstream_type"],
        "throttlingException"
    );
    assert!(a.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_bedrock_api_key_is_sent_as_a_bearer_token() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(&mock, &[("bedrock-key", "api_key", None)], ""),
        &mock,
    )
    .await;
    let a = post_messages(&gw, messages("bedrock-key", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = mock.log.last().unwrap();
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", mockbr::API_KEY)
    );
    assert!(seen.headers.get("x-amz-date").is_none());
}

/// The mock refuses what the gateway's signature does not cover: a wrong
/// secret (through the gateway: our credential, 502), a tampered body, path
/// or header, and a clock more than 5 minutes off (signed here with the
/// `aws-sigv4` crate, as the gateway signs).
#[tokio::test]
async fn a_bad_or_tampered_signature_is_refused() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(&mock, &[("bedrock-wrong", "wrong", None)], ""),
        &mock,
    )
    .await;
    let a = post(&gw.url("/v1/chat/completions"), chat("bedrock-wrong", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert_eq!(
        v["error"]["metadata"]["raw"]["__type"], "InvalidSignatureException",
        "{v}"
    );
    assert_no_aws_secrets("the answer", &a.body);

    let url = format!(
        "http://{}/model/{}/converse",
        mock.addr, "anthropic.mock-claude-v1%3A0"
    );
    let body = br#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#;
    let send = |url: String, headers: Vec<(String, String)>, body: Vec<u8>| async move {
        let mut req = anonymous().post(url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let kind = res
            .headers()
            .get("x-amzn-errortype")
            .map(|v| v.to_str().unwrap().split(':').next().unwrap().to_owned());
        (status, kind)
    };
    let now = SystemTime::now();
    let good = sign(&url, body, now);
    assert_eq!(
        send(url.clone(), good.clone(), body.to_vec()).await,
        (200, None)
    );
    let mut tampered = body.to_vec();
    tampered[30] = b'X';
    assert_eq!(
        send(url.clone(), good.clone(), tampered).await,
        (403, Some("InvalidSignatureException".into()))
    );
    let other = url.replace("converse", "converse-stream");
    assert_eq!(
        send(other, good.clone(), body.to_vec()).await.0,
        403,
        "another path"
    );
    let mut headers = good.clone();
    headers
        .iter_mut()
        .find(|(k, _)| k == "content-type")
        .unwrap()
        .1 = "text/plain".into();
    assert_eq!(
        send(url.clone(), headers, body.to_vec()).await.0,
        403,
        "a signed header changed"
    );
    for skew in [Duration::from_secs(6 * 60), Duration::from_secs(0)] {
        let stale = sign(&url, body, now - skew);
        let got = send(url.clone(), stale, body.to_vec()).await;
        if skew.is_zero() {
            assert_eq!(got, (200, None));
        } else {
            assert_eq!(
                got,
                (403, Some("InvalidSignatureException".into())),
                "a clock 6 minutes off"
            );
        }
    }
    let ahead = sign(&url, body, now + Duration::from_secs(6 * 60));
    assert_eq!(
        send(url.clone(), ahead, body.to_vec()).await.0,
        403,
        "a clock 6 minutes ahead"
    );
}

/// Signs a Converse request as the gateway does (`aws-sigv4`, service
/// `bedrock`), returning the headers to send.
fn sign(url: &str, body: &[u8], at: SystemTime) -> Vec<(String, String)> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let creds = aws_credential_types::Credentials::new(
        mockbr::ACCESS_KEY_ID,
        mockbr::SECRET_ACCESS_KEY,
        None,
        None,
        "test",
    );
    let identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    let req = SignableRequest::new(
        "POST",
        url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    for (k, v) in instructions.headers() {
        headers.push((k.to_owned(), v.to_owned()));
    }
    headers
}

#[tokio::test]
async fn what_cannot_be_carried_is_refused_by_name() {
    env();
    let mock = mock().await;
    let gw = gateway(&config(&mock, &[], ""), &mock).await;
    let before = mock.log.len();
    let a = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"bedrock","messages":[{"role":"user","content":[{"type":"text","text":"Look"},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}}]}]}"#,
    )
    .await;
    let v = a.error(400, "invalid_request");
    assert_eq!(
        v["error"]["metadata"]["param"], "messages[0].content[1].image_url.url",
        "{v}"
    );
    let a = post_messages(
        &gw,
        messages("bedrock", r#""tools":[{"name":"t","input_schema":{"type":"object"}}],"tool_choice":{"type":"none"}"#),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()["error"]["metadata"]["param"], "tool_choice.type");
    let a = post_messages(&gw, messages("bedrock", r#""top_k":5"#)).await;
    assert_eq!(
        a.json()["error"]["metadata"]["param"],
        "top_k",
        "{}",
        a.body
    );
    // Routes Converse has no counterpart of are not served.
    let a = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"bedrock","input":"hi"}"#,
    )
    .await;
    a.error(502, "upstream_route_not_served");
    assert_eq!(mock.log.len(), before, "nothing refused was sent");
}

/// 200 concurrent streams against one key's budget: no overspend, and each
/// admitted stream charged exactly its usage from the stream's `metadata`
/// event (input, cache reads and writes, output).
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
        "[[groups.deployments]]\nprovider = \"bedrock\"",
        "[[groups.deployments]]\nheaders = { \"x-mock-fault\" = \"cache\" }\nprovider = \"bedrock\"",
    );
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let (key, id) = generate_key(&gw, json!({"models": ["*"], "max_budget": 0.05})).await;
    // An Anthropic client: its usage carries cache writes apart (an OpenAI
    // client's `prompt_tokens` counts them as input).
    let body = messages("bedrock", r#""stream":true"#);
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
        prompt_tokens: (upstream_len / 4).max(1) + 150,
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
    let spent = ledger.usage(
        &tollgate::budget::Scope::Key(id.as_str().into()),
        tollgate::budget::Period::Total,
    );
    assert_eq!(spent.reserved, 0, "every reservation settled");
    assert!(spent.spent <= 50_000, "overspent: {}", spent.spent);
    assert_eq!(
        spent.spent,
        served * each,
        "each stream charged its usage ({each})"
    );
}

/// No AWS secret (secret key, session token, API key) in any answer, log
/// line or `Debug` output, whatever the outcome.
#[tokio::test]
async fn no_aws_secret_in_any_body_log_or_debug() {
    env();
    let mock = mock().await;
    let gw = gateway(
        &config(
            &mock,
            &[
                ("bedrock-wrong", "wrong", None),
                ("bedrock-key", "api_key", Some("access_denied")),
                ("bedrock-cut", "sigv4", Some("cut:2")),
            ],
            "",
        ),
        &mock,
    )
    .await;
    let mut bodies = String::new();
    for (model, stream) in [
        ("bedrock", false),
        ("bedrock", true),
        ("bedrock-wrong", false),
        ("bedrock-key", false),
        ("bedrock-cut", true),
    ] {
        let extra = if stream { r#""stream":true"# } else { "" };
        let a = post(&gw.url("/v1/chat/completions"), chat(model, extra)).await;
        bodies.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
        let a = post_messages(&gw, messages(model, extra)).await;
        bodies.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
    }
    assert_no_aws_secrets("the answers", &bodies);
    assert_no_aws_secrets("the logs", &logs());
    let auth = tollgate::provider::BedrockAuth::aws(
        mockbr::ACCESS_KEY_ID,
        mockbr::SECRET_ACCESS_KEY,
        Some(mockbr::SESSION_TOKEN),
    );
    let p = tollgate::provider::Provider::builder("b", &format!("http://{}", mock.addr))
        .unwrap()
        .bedrock("us-east-1", auth.clone())
        .build();
    assert_no_aws_secrets("Debug", &format!("{auth:?} {p:?}"));
    let key = tollgate::provider::BedrockAuth::ApiKey(mockbr::API_KEY.into());
    assert_no_aws_secrets("Debug", &format!("{key:?}"));
}

/// A Bedrock deployment is checked whole at start: its region, its
/// credentials' variables, and `bedrock` only where `api = "bedrock"`.
#[test]
fn the_config_refuses_incomplete_bedrock_deployments() {
    env();
    let with = |deployment: &str| {
        tollgate::config::Config::from_toml(
            "b.toml",
            &format!(
                "[[groups]]\nname = \"g\"\n[[groups.deployments]]\nprovider = \"bedrock\"\n{deployment}\n"
            ),
        )
    };
    let e = with("api = \"bedrock\"").unwrap_err();
    assert_eq!(e.field(), "groups[0].deployments[0].bedrock", "{e}");
    let e = with("api = \"bedrock\"\nbedrock = { region = \"\" }").unwrap_err();
    assert_eq!(e.field(), "groups[0].deployments[0].bedrock.region", "{e}");
    let e = with("api = \"bedrock\"\nbedrock = { region = \"us-east-1\", credentials = \"environment\", access_key_id_env = \"TOLLGATE_TEST_SURELY_UNSET\" }")
        .unwrap_err();
    assert!(e.to_string().contains("TOLLGATE_TEST_SURELY_UNSET"), "{e}");
    // Container credentials: a source it does not know, an endpoint that
    // would carry credentials in clear text, no endpoint at all.
    let e = with("api = \"bedrock\"\nbedrock = { region = \"us-east-1\", credentials = \"imds\" }")
        .unwrap_err();
    assert_eq!(
        e.field(),
        "groups[0].deployments[0].bedrock.credentials",
        "{e}"
    );
    let e = with("api = \"bedrock\"\nbedrock = { region = \"us-east-1\", credentials = \"container\", container_credentials_uri = \"http://10.1.2.3/creds\" }")
        .unwrap_err();
    assert_eq!(
        e.field(),
        "groups[0].deployments[0].bedrock.container_credentials_uri",
        "{e}"
    );
    assert!(e.to_string().contains("loopback"), "{e}");
    let e = with("api = \"bedrock\"\nbedrock = { region = \"us-east-1\", credentials = \"container\", container_credentials_uri = \"http://127.0.0.1:1/creds\", refresh_ahead = 3 }")
        .unwrap_err();
    assert!(e.to_string().contains("refresh_ahead"), "{e}");
    let e = with("api = \"bedrock\"\napi_key_env = \"TOLLGATE_TEST_BEDROCK_API_KEY\"\nbedrock = { region = \"us-east-1\", credentials = \"container\" }")
        .unwrap_err();
    assert_eq!(
        e.field(),
        "groups[0].deployments[0].bedrock.credentials",
        "{e}"
    );
    let e = with("api = \"bedrock\"\napi_key_env = \"TOLLGATE_TEST_SURELY_UNSET\"\nbedrock = { region = \"us-east-1\" }")
        .unwrap_err();
    assert_eq!(e.field(), "groups[0].deployments[0].api_key_env", "{e}");
    let e = with("base_url = \"http://127.0.0.1:1/v1\"\nbedrock = { region = \"us-east-1\" }")
        .unwrap_err();
    assert_eq!(e.field(), "groups[0].deployments[0].bedrock", "{e}");
    let e = with("api = \"openai\"").unwrap_err();
    assert_eq!(e.field(), "groups[0].deployments[0].base_url", "{e}");
    // Without a base URL, the region's endpoint; the secret is nowhere in Debug.
    let ok = with(&format!(
        "api = \"bedrock\"\nmodel = \"{MODEL}\"\nbedrock = {{ region = \"eu-west-3\", access_key_id_env = \"{KEY_ID_ENV}\", secret_access_key_env = \"{SECRET_ENV}\" }}"
    ))
    .unwrap();
    let router = ok.router().unwrap();
    assert!(router.has_model("g"));
    assert_no_aws_secrets("the router's Debug", &format!("{router:?}"));
    assert_eq!(
        tollgate::provider::bedrock_default_base_url("eu-west-3"),
        "https://bedrock-runtime.eu-west-3.amazonaws.com"
    );
}

/// The deployment `bedrock-temp` on temporary credentials (`auth`:
/// `container`, `web_identity`, `web_identity_wrong`), priced.
fn temporary(mock: &MockServer, auth: &str) -> String {
    format!(
        "[router]\nnum_retries = 0\ncredential_cooldown_ms = 1\n[[groups]]\nname = \"bedrock-temp\"\nprice_in_per_mtok = 3.0\nprice_out_per_mtok = 15.0\n{}",
        deployment(mock, auth, None)
    )
}

/// Credentials living 2 s, refreshed ahead (at half their life) by one task
/// while 16 clients of both families send requests and streams without
/// pause for 5 s: every request served, none signed with expired
/// credentials, never a herd of fetches (one per set of credentials used).
#[tokio::test]
async fn container_credentials_are_refreshed_across_expiry_under_load() {
    refreshed_across_expiry_under_load("container").await;
}

/// The same with web identity: the token file exchanged at STS.
#[tokio::test]
async fn web_identity_credentials_are_refreshed_across_expiry_under_load() {
    refreshed_across_expiry_under_load("web_identity").await;
}

async fn refreshed_across_expiry_under_load(auth: &str) {
    env();
    let mock = mock().await;
    mock.bedrock.set_credentials_ttl(Duration::from_secs(2));
    let gw = gateway(&temporary(&mock, auth), &mock).await;
    let start = std::time::Instant::now();
    let run = Duration::from_secs(5);
    let mut workers = Vec::new();
    for w in 0..16u32 {
        let (chat_url, messages_url) = (gw.url("/v1/chat/completions"), gw.url("/v1/messages"));
        workers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while start.elapsed() < run {
                let stream = (n + w).is_multiple_of(2);
                let extra = if stream { r#""stream":true"# } else { "" };
                let a = if w % 2 == 0 {
                    post(&chat_url, chat("bedrock-temp", extra)).await
                } else {
                    let res = anonymous()
                        .post(&messages_url)
                        .header("content-type", "application/json")
                        .header("anthropic-version", "2023-06-01")
                        .header("x-api-key", CLIENT_KEY)
                        .body(messages("bedrock-temp", extra))
                        .send()
                        .await
                        .unwrap();
                    read_answer(res).await
                };
                assert_eq!(a.status, 200, "{}", a.body);
                assert!(a.body.contains("tok15"), "{}", a.body);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    let fetches = mock.bedrock.credential_fetches();
    let used = mock.bedrock.used_credentials().len() as u64;
    assert!(total > 16, "served {total}");
    assert_eq!(mock.bedrock.rejected(), 0, "no request refused");
    assert_eq!(mock.bedrock.expired_uses(), 0);
    // Several lifetimes crossed; each fetch's credentials were used (the
    // last one may have landed after the run): one fetch per refresh.
    assert!(used >= 3, "credentials used: {used}");
    assert!(fetches <= used + 1, "fetches {fetches}, used {used}");
    assert_no_aws_secrets("the logs", &logs());
    for secret in mock.bedrock.issued_secrets() {
        assert!(!logs().contains(&secret), "the logs leak an issued secret");
    }
}

/// A credentials endpoint that fails is the gateway's problem: 502
/// `upstream_auth_failed` in each client family's shape (never a 401),
/// naming the endpoint's error and no secret; the deployment cools down;
/// once the endpoint recovers, requests are served again.
#[tokio::test]
async fn a_failing_credentials_endpoint_is_502_in_each_family() {
    env();
    let mock = mock().await;
    let gw = gateway(&temporary(&mock, "container"), &mock).await;
    mock.bedrock
        .set_credentials_fault(Some(mockbr::CredentialsFault::Unavailable));
    let a = post(&gw.url("/v1/chat/completions"), chat("bedrock-temp", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("AWS credentials"), "{message}");
    assert!(message.contains("HTTP 500: InternalError"), "{message}");
    assert!(message.contains("not your key"), "{message}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = post_messages(&gw, messages("bedrock-temp", r#""stream":true"#)).await;
    assert_eq!(a.status, 502, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "error", "{}", a.body);
    assert_eq!(v["error"]["type"], "api_error", "{}", a.body);
    assert_eq!(
        v["error"]["metadata"]["reason"], "upstream_auth_failed",
        "{}",
        a.body
    );
    // An answer that is not credentials: the same, saying so.
    mock.bedrock
        .set_credentials_fault(Some(mockbr::CredentialsFault::Garbage));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = post(&gw.url("/v1/chat/completions"), chat("bedrock-temp", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without AccessKeyId"),
        "{}",
        a.body
    );
    // Nothing was sent to Bedrock meanwhile.
    assert_eq!(mock.bedrock.rejected(), 0);
    assert!(!mock.log.all().iter().any(|r| r.path.starts_with("/model/")));
    // Recovered: served, both families.
    mock.bedrock.set_credentials_fault(None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = post(&gw.url("/v1/chat/completions"), chat("bedrock-temp", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = post_messages(&gw, messages("bedrock-temp", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.bedrock.used_credentials().len(), 1);
    assert_no_aws_secrets("the logs", &logs());
}

/// Credentials Bedrock refuses (403 `ExpiredTokenException`: revoked before
/// their stated expiry) are dropped: the request that met the refusal is 502
/// `upstream_auth_failed`, and the next requests, concurrent, share one new
/// fetch.
#[tokio::test]
async fn refused_credentials_are_dropped_and_fetched_again_once() {
    env();
    let mock = mock().await;
    let gw = gateway(&temporary(&mock, "container"), &mock).await;
    let url = gw.url("/v1/chat/completions");
    let a = post(&url, chat("bedrock-temp", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.bedrock.credential_fetches(), 1);
    mock.bedrock.revoke_credentials();
    let a = post(&url, chat("bedrock-temp", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert_eq!(
        v["error"]["metadata"]["raw"]["__type"], "ExpiredTokenException",
        "{}",
        a.body
    );
    assert_eq!(mock.bedrock.expired_uses(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post(&url, chat("bedrock-temp", r#""stream":true"#)).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(mock.bedrock.credential_fetches(), 2);
    assert_eq!(mock.bedrock.used_credentials().len(), 2);
}

/// No temporary secret key, session token or container authorization token
/// in any answer, log line, metric or `Debug` output.
#[tokio::test]
async fn no_temporary_credential_in_any_body_log_metric_or_debug() {
    env();
    let mock = mock().await;
    let gw = gateway(&temporary(&mock, "container"), &mock).await;
    let mut seen = String::new();
    for extra in ["", r#""stream":true"#] {
        let a = post(&gw.url("/v1/chat/completions"), chat("bedrock-temp", extra)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        seen.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
        let a = post_messages(&gw, messages("bedrock-temp", extra)).await;
        seen.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
    }
    mock.bedrock.revoke_credentials();
    let a = post(&gw.url("/v1/chat/completions"), chat("bedrock-temp", "")).await;
    seen.push_str(&format!("{:?}\n{}\n", a.headers, a.body));
    let metrics = anonymous()
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("bedrock"), "the scrape has the deployment");
    let source = tollgate::provider::bedrock::AwsSource::container(
        &format!("http://{}/v2/credentials/task-1", mock.addr),
        Some(tollgate::credentials::Secret::new(mockbr::CONTAINER_TOKEN)),
        None,
    )
    .unwrap();
    let auth = tollgate::provider::BedrockAuth::refreshing(
        source.clone(),
        tollgate::credentials::RefreshPolicy::default(),
    );
    let client = tollgate::provider::HttpClient::builder().build().unwrap();
    let fetched = source.fetch(&client).await.unwrap();
    let mut signer = tollgate::provider::bedrock::Signer::new("us-east-1", auth.clone());
    signer.start("b", &client);
    let held = signer.credentials().unwrap().get().await.unwrap();
    let debug = format!(
        "{auth:?} {fetched:?} {:?} {signer:?} {held:?}",
        fetched.value
    );
    let secrets = mock.bedrock.issued_secrets();
    assert!(secrets.len() >= 6, "three fetches: {}", secrets.len());
    for (what, text) in [
        ("the answers", &seen),
        ("the logs", &logs()),
        ("/metrics", &metrics),
        ("Debug", &debug),
    ] {
        assert_no_aws_secrets(what, text);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{what} leaks an issued secret");
        }
    }
}

/// Web identity's failures, from STS's XML errors: a token STS refuses, STS
/// unavailable, an answer that is not credentials; each 502
/// `upstream_auth_failed` naming STS's code, never the token.
#[tokio::test]
async fn web_identity_failures_name_sts_errors() {
    env();
    let mock = mock().await;
    let gw = gateway(&temporary(&mock, "web_identity_wrong"), &mock).await;
    let url = gw.url("/v1/chat/completions");
    let a = post(&url, chat("bedrock-temp", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("STS (AssumeRoleWithWebIdentity)"),
        "{message}"
    );
    assert!(
        message.contains("HTTP 400: InvalidIdentityToken: Couldn't retrieve"),
        "{message}"
    );
    let gw = gateway(&temporary(&mock, "web_identity"), &mock).await;
    let url = gw.url("/v1/chat/completions");
    mock.bedrock
        .set_credentials_fault(Some(mockbr::CredentialsFault::Unavailable));
    let a = post_messages(&gw, messages("bedrock-temp", "")).await;
    assert_eq!(a.status, 502, "{}", a.body);
    let message = a.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("HTTP 503: ServiceUnavailable"),
        "{message}"
    );
    mock.bedrock
        .set_credentials_fault(Some(mockbr::CredentialsFault::Garbage));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = post(&url, chat("bedrock-temp", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without AccessKeyId"),
        "{}",
        a.body
    );
    mock.bedrock.set_credentials_fault(None);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a = post(&url, chat("bedrock-temp", r#""stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // What STS received: the form, the token from the file.
    let sts = mock
        .log
        .all()
        .into_iter()
        .rfind(|r| r.path == "/sts")
        .unwrap();
    let form = String::from_utf8_lossy(&sts.body).into_owned();
    assert!(form.contains("Action=AssumeRoleWithWebIdentity"), "{form}");
    assert!(form.contains("RoleSessionName=tollgate-test"), "{form}");
    assert_no_aws_secrets("the logs", &logs());
}
