//! The reference gateway through real sockets: a real OpenAI client library
//! (async-openai) and raw HTTP against the gateway, which forwards to the
//! bundled mock upstream, all on 127.0.0.1.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use common::*;
use futures_util::StreamExt;

/// A healthy group, a pass-through group (no model rewrite), and one group
/// per upstream fault: its deployment sends the mock's `x-mock-fault` header.
const FAULT_GROUPS: [(&str, &str, &str); 7] = [
    ("rate-limited", "openai-like", "429"),
    ("rate-limited-odd", "openai-like", "429-odd"),
    ("bad-upstream-key", "mock", "401"),
    ("retired", "mock", "404"),
    ("slow", "mock", "delay:3000"),
    ("html-500", "mock", "500-html"),
    ("unavailable", "mock", "503"),
];

fn deployment(group: &str, provider: &str, model: Option<&str>, fault: Option<&str>) -> String {
    let model = model
        .map(|m| format!("model = \"{m}\"\n"))
        .unwrap_or_default();
    let fault = fault
        .map(|f| format!("headers = {{ \"x-mock-fault\" = \"{f}\" }}\n"))
        .unwrap_or_default();
    format!(
        "[[groups]]\nname = \"{group}\"\n[[groups.deployments]]\nprovider = \"{provider}\"\n\
         base_url = \"{{mock}}\"\napi_key_env = \"{{key_env}}\"\n{model}{fault}\n"
    )
}

/// No retries: these tests pin how one upstream outcome reaches the client
/// (retries, cooldowns and fallbacks are `tests/router.rs`'s).
fn config() -> String {
    let mut c = String::from(
        "[server]\nmax_body_bytes = 65536\n\n[router]\nnum_retries = 0\n\n[upstream]\n\
         connect_timeout_ms = 1000\nfirst_byte_timeout_ms = 700\nidle_timeout_ms = 700\n\n",
    );
    c += &deployment("gpt-4o-mini", "mock", Some("mock-small"), None);
    c += &deployment("passthrough", "mock", None, None);
    for (group, provider, fault) in FAULT_GROUPS {
        c += &deployment(group, provider, None, Some(fault));
    }
    c
}

fn client(base: String) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(base)
            .with_api_key(CLIENT_KEY),
    )
}

fn chat_request(model: &str) -> async_openai::types::chat::CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Say hello.")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

fn expected_content(tokens: usize) -> String {
    (0..tokens)
        .map(|i| format!("tok{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn chat_completion_arrives_intact_through_async_openai() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let res = client(gw.base())
        .chat()
        .create(chat_request("gpt-4o-mini"))
        .await
        .unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(expected_content(16).as_str())
    );
    assert_eq!(
        res.model, "gpt-4o-mini",
        "the answer names the group that served"
    );
    let usage = res.usage.unwrap();
    assert_eq!(usage.completion_tokens, 16);

    // What the upstream received: the client's bytes with only `model`
    // rewritten, the gateway's upstream key, and nothing of the client's key.
    let seen = mock.log.all();
    let last = seen.last().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(
        last.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert!(
        String::from_utf8_lossy(&last.body).contains(r#""model":"mock-small""#),
        "the upstream saw the deployment's model"
    );
    let forwarded = format!("{:?}{}", last.headers, String::from_utf8_lossy(&last.body));
    assert!(
        !forwarded.contains(CLIENT_KEY),
        "the client's key reached the upstream"
    );
}

#[tokio::test]
async fn forwarded_body_is_the_clients_bytes_with_only_model_rewritten() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let body = r#"{ "messages": [{"role":"user","content":"model: \"gpt-4o-mini\" \u00e9"}],
        "model" : "gpt-4o-mini", "temperature": 0.25, "x_unknown": {"kept": [1, 2.50, null]} }"#;
    let ans = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.headers["x-tollgate-deployment"], "mock/mock-small");
    let got = mock.log.all().last().unwrap().body.clone();
    let want = body.replacen(r#""model" : "gpt-4o-mini""#, r#""model" : "mock-small""#, 1);
    assert_eq!(String::from_utf8_lossy(&got), want);
    assert!(
        !String::from_utf8_lossy(&got).contains("tool_choice"),
        "nothing added"
    );

    // A deployment without `model` forwards the bytes untouched.
    let body = chat("passthrough", r#""n":1"#);
    let ans = post(&gw.url("/v1/chat/completions"), body.clone()).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(mock.log.all().last().unwrap().body, body.as_bytes());
}

#[tokio::test]
async fn streaming_chat_arrives_intact_through_async_openai() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let mut req = chat_request("gpt-4o-mini");
    req.stream = Some(true); // with async-openai's `byot` feature, not forced by create_stream
    let mut stream = client(gw.base()).chat().create_stream(req).await.unwrap();
    let mut content = String::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        for c in chunk.choices {
            if let Some(t) = c.delta.content {
                content.push_str(&t);
            }
        }
    }
    assert_eq!(
        content.split_whitespace().collect::<Vec<_>>().join(" "),
        expected_content(16)
    );
    assert!(chunks >= 17);
}

#[tokio::test]
async fn completions_embeddings_and_responses_are_forwarded() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let c = client(gw.base());
    let res = c
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model("gpt-4o-mini")
                .prompt("Say")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(!res.choices[0].text.is_empty());
    let res = c
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("gpt-4o-mini")
                .input(["a", "b"])
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.data.len(), 2);
    let ans = post(
        &gw.url("/v1/responses"),
        r#"{"model":"gpt-4o-mini","input":"hi"}"#,
    )
    .await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.json()["object"], "response");
    let ans = post(
        &gw.url("/v1/responses"),
        r#"{"model":"gpt-4o-mini","input":"hi","stream":true}"#,
    )
    .await;
    assert_eq!(ans.status, 200);
    assert!(ans.body.contains("response.completed"), "{}", ans.body);
    assert!(
        !ans.body.contains("\"error\""),
        "a Responses stream ends without [DONE], and that is fine"
    );
    let paths: Vec<String> = mock.log.all().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.contains(&"/v1/embeddings".to_owned())
            && paths.contains(&"/v1/completions".to_owned())
    );
}

#[tokio::test]
async fn upstream_429_reaches_the_client_as_429_with_retry_after() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let ans = post(&gw.url("/v1/chat/completions"), chat("rate-limited", "")).await;
    let v = ans.error(429, "upstream_rate_limited");
    assert_eq!(ans.headers["retry-after"], "6");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["metadata"]["retry_after_s"], 6);
    assert_eq!(v["error"]["metadata"]["provider_name"], "openai-like");
    assert_eq!(
        v["error"]["metadata"]["raw"]["error"]["code"],
        "rate_limit_exceeded"
    );

    // An OpenAI-like provider's unusual body and `retry-after-ms` header.
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("rate-limited-odd", ""),
    )
    .await;
    let v = ans.error(429, "upstream_rate_limited");
    assert_eq!(ans.headers["retry-after"], "6");
    assert_eq!(v["error"]["metadata"]["raw"]["detail"], "Too Many Requests");

    // The OpenAI client library sees the 429 (see README: async-openai 0.43
    // types `error.code` as a string, so it reports our numeric `code` as a
    // deserialization failure carrying the whole contract body). A fresh
    // gateway: this one's deployment is cooling down now (a 503).
    let gw = gateway(&config(), &mock).await;
    let err = client(gw.base())
        .chat()
        .create(chat_request("rate-limited"))
        .await
        .unwrap_err();
    match err {
        OpenAIError::JSONDeserialize(_, content) => {
            let v: serde_json::Value = serde_json::from_str(&content).unwrap();
            assert_eq!(v["error"]["type"], "rate_limit_error");
            assert_eq!(v["error"]["code"], 429);
        }
        OpenAIError::ApiError(api) => {
            assert_eq!(api.status_code.as_u16(), 429);
            assert_eq!(api.api_error.r#type.as_deref(), Some("rate_limit_error"));
        }
        other => panic!("not surfaced as the 429: {other:?}"),
    }
}

#[tokio::test]
async fn upstream_credential_failure_is_502_never_401() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("bad-upstream-key", ""),
    )
    .await;
    let v = ans.error(502, "upstream_auth_failed");
    assert_eq!(v["error"]["metadata"]["upstream_status"], 401);
    // The mock echoes the key it received; the gateway redacted it.
    assert!(v.to_string().contains("[redacted]"), "{v}");
    // Through the client library: a server error, not an auth error.
    let err = client(gw.base())
        .chat()
        .create(chat_request("bad-upstream-key"))
        .await
        .unwrap_err();
    match err {
        OpenAIError::ApiError(api) => {
            assert_eq!(api.status_code.as_u16(), 502);
            assert_no_secrets("async-openai's error", &api.api_error.message);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn retired_model_is_404_permanent_and_unavailable_is_503_temporary() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let ans = post(&gw.url("/v1/chat/completions"), chat("retired", "")).await;
    let v = ans.error(404, "upstream_model_not_found");
    assert_eq!(v["error"]["metadata"]["permanent"], true);
    assert!(ans.headers.get("retry-after").is_none());

    let ans = post(&gw.url("/v1/chat/completions"), chat("unavailable", "")).await;
    let v = ans.error(503, "upstream_unavailable");
    assert!(v["error"]["metadata"].get("permanent").is_none());
    assert!(ans.headers.get("retry-after").is_some());

    // A model the gateway does not serve at all: 404 naming only that name.
    let ans = post(&gw.url("/v1/chat/completions"), chat("gpt-9", "")).await;
    let v = ans.error(404, "model_not_found");
    assert!(!v.to_string().contains("gpt-4o-mini"));
}

#[tokio::test]
async fn first_byte_timeout_is_408_naming_the_phase() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let started = std::time::Instant::now();
    let ans = post(&gw.url("/v1/chat/completions"), chat("slow", "")).await;
    let v = ans.error(408, "upstream_timeout");
    assert_eq!(v["error"]["metadata"]["phase"], "first_byte");
    assert_eq!(v["error"]["type"], "timeout_error");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(2900),
        "did not wait for the upstream"
    );
}

#[tokio::test]
async fn odd_upstream_answers_become_the_contract() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let ans = post(&gw.url("/v1/chat/completions"), chat("html-500", "")).await;
    let v = ans.error(502, "upstream_error");
    assert_eq!(v["error"]["metadata"]["raw"], "500 Internal Server Error");

    // Garbage with a 200: a 502 before any header went out.
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""mock_fault":"garbage""#),
    )
    .await;
    ans.error(502, "upstream_bad_response");
    // Known failure #18: a stream whose event is not JSON is never passed
    // on as it is: before the first content it is a 502 (and retried).
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true,"mock_fault":"garbage""#),
    )
    .await;
    assert!(!ans.body.contains("not json"), "{}", ans.body);
    ans.error(502, "upstream_bad_response");

    // A non-streaming answer cut in the middle: a 502 too, not a broken 200.
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""mock_fault":"cut:3""#),
    )
    .await;
    ans.error(502, "upstream_stream_cut");

    // Nothing listening upstream.
    let port = closed_port().await;
    let down = format!(
        "[[groups]]\nname = \"down\"\n[[groups.deployments]]\nprovider = \"gone\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    );
    let gw2 = gateway(&down, &mock).await;
    let ans = post(&gw2.url("/v1/chat/completions"), chat("down", "")).await;
    let v = ans.error(502, "upstream_unreachable");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("refused"),
        "{v}"
    );
}

#[tokio::test]
async fn stream_cut_mid_way_ends_with_error_event_and_done() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true,"mock_fault":"cut:3""#),
    )
    .await;
    assert_eq!(ans.status, 200);
    let ev = assert_ended_by_error(&ans.body, "upstream_stream_cut");
    assert!(ev.len() >= 6, "{}", ans.body);
    let content: Vec<&String> = ev.iter().filter(|e| e.contains("\"content\"")).collect();
    assert_eq!(
        content.len(),
        3,
        "the three chunks before the cut arrived: {}",
        ans.body
    );
    assert_no_secrets("a cut stream", &ans.body);

    // The client library does not take it for a clean end.
    let mut s = client(gw.base())
        .chat()
        .create_stream_byot::<_, serde_json::Value>(serde_json::json!({
            "model": "gpt-4o-mini", "stream": true, "mock_fault": "cut:3",
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .await
        .unwrap();
    let mut saw_error = false;
    while let Some(item) = s.next().await {
        match item {
            Ok(v) if v.get("error").is_some() => saw_error = true,
            Ok(_) => {}
            Err(_) => saw_error = true,
        }
    }
    assert!(saw_error);
}

#[tokio::test]
async fn stream_without_done_and_stalled_stream_end_with_error_events() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true,"mock_fault":"no_done""#),
    )
    .await;
    let ev = events(&ans.body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    assert!(ans.body.contains("upstream_stream_cut"), "{}", ans.body);

    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true,"mock_fault":"stall:2""#),
    )
    .await;
    let ev = events(&ans.body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let err: serde_json::Value = serde_json::from_str(&ev[ev.len() - 3]).unwrap();
    assert_eq!(err["error"]["code"], 408);
    assert_eq!(err["error"]["metadata"]["phase"], "idle");
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_contract_shape() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let url = gw.url("/v1/chat/completions");
    let ans = post(
        &url,
        "{\n  \"model\": \"gpt-4o-mini\",\n  \"messages\": [}\n",
    )
    .await;
    let v = ans.error(400, "invalid_json");
    assert_eq!(v["error"]["metadata"]["line"], 3);
    assert!(v["error"]["message"].as_str().unwrap().contains("line 3"));

    let ans = post(&url, r#"{"messages":[]}"#).await;
    ans.error(400, "missing_model");

    let big = chat("gpt-4o-mini", &format!(r#""pad":"{}""#, "x".repeat(70_000)));
    let ans = post(&url, big).await;
    let v = ans.error(413, "body_too_large");
    assert_eq!(v["error"]["metadata"]["limit_bytes"], 65536);

    // Chunked, with no Content-Length: refused while reading.
    let stream =
        futures_util::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b' '; 8192])));
    let ans = post(&url, reqwest::Body::wrap_stream(stream)).await;
    ans.error(413, "body_too_large");

    let res = http()
        .post(&url)
        .header("content-type", "text/plain")
        .body(chat("gpt-4o-mini", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);

    let res = http().get(&url).send().await.unwrap();
    assert_eq!(res.status(), 405);
    let res = http().get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], 404);
    assert!(mock.log.is_empty(), "nothing bad reached the upstream");
}

#[tokio::test]
async fn models_and_health() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    let v: serde_json::Value = http()
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini") && ids.contains(&"retired"));
    assert_eq!(
        http()
            .get(gw.url("/health"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_a_stream_finish() {
    let mock = mock_upstream::spawn(MockConfig {
        chunk_interval: std::time::Duration::from_millis(50),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut gw = gateway(&config(), &mock).await;
    let res = http()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat("gpt-4o-mini", r#""stream":true"#))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    gw.shutdown();
    let body = res.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(!body.contains("\"error\""), "{body}");
    // Once the stream is done the server stops; new connections are refused.
    let done = tokio::time::timeout(std::time::Duration::from_secs(5), &mut gw.task).await;
    assert!(done.is_ok(), "the server stopped after its last request");
}

/// Runs last by name order is not guaranteed, so every test checks its own
/// answers; this one checks the logs all tests wrote so far.
#[tokio::test]
async fn no_secret_in_any_log_line() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    for model in ["bad-upstream-key", "rate-limited", "html-500", "slow"] {
        post(&gw.url("/v1/chat/completions"), chat(model, "")).await;
    }
    let logs = logs();
    assert!(logs.contains("request failed"), "errors are logged: {logs}");
    assert_no_secrets("the logs", &logs);
}

/// A loopback listener that never accepts, with its backlog filled, so a new
/// connection attempt gets no answer (SYNs dropped) and must time out.
async fn unanswering_port() -> Option<(u16, Vec<std::net::TcpStream>, tokio::net::TcpListener)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Some((addr.port(), held, listener));
            }
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test]
async fn connect_timeout_is_408_naming_the_phase() {
    let mock = mock().await;
    let Some((port, _held, _listener)) = unanswering_port().await else {
        panic!("could not make a loopback port that leaves SYNs unanswered");
    };
    let cfg = format!(
        "[upstream]\nconnect_timeout_ms = 300\n[[groups]]\nname = \"blackhole\"\n[[groups.deployments]]\n\
         provider = \"blackhole\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    );
    let gw = gateway(&cfg, &mock).await;
    let ans = post(&gw.url("/v1/chat/completions"), chat("blackhole", "")).await;
    let v = ans.error(408, "upstream_timeout");
    assert_eq!(v["error"]["metadata"]["phase"], "connect");
    assert_eq!(v["error"]["metadata"]["provider_name"], "blackhole");
}

#[tokio::test]
async fn total_timeout_ends_a_slow_stream_naming_the_phase() {
    // Events every 150 ms keep the idle timer happy; the 600 ms total ends it.
    let mock = mock_upstream::spawn(MockConfig {
        chunk_interval: std::time::Duration::from_millis(150),
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = "[upstream]\nidle_timeout_ms = 400\ntotal_timeout_ms = 600\n".to_owned()
        + &deployment("gpt-4o-mini", "mock", Some("mock-small"), None);
    let gw = gateway(&cfg, &mock).await;
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true"#),
    )
    .await;
    assert_eq!(ans.status, 200);
    let ev = events(&ans.body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let err: serde_json::Value = serde_json::from_str(&ev[ev.len() - 3]).unwrap();
    assert_eq!(err["error"]["code"], 408, "{}", ans.body);
    assert_eq!(err["error"]["metadata"]["phase"], "total");
    assert!(
        ev.iter().filter(|e| e.contains("\"content\"")).count() < 16,
        "cut before the end"
    );
}

#[test]
fn the_demo_config_loads() {
    init(); // sets the demo's key variables, as `cargo run --example demo` does
    let c = tollgate::config::Config::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/demo.toml"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.chains().unwrap().fallbacks_of("gpt-4o"), ["gpt-4o-mini"]);
    assert_eq!(c.retry_policy(), tollgate::router::RetryPolicy::default());
    assert!(c.router().unwrap().has_model("gpt-4o-mini"));
}

#[tokio::test]
async fn request_ids_and_the_overhead_header() {
    let mock = mock().await;
    let gw = gateway(&config(), &mock).await;
    // Generated when the client sends none, on answers and on refusals alike.
    let ok = post(&gw.url("/v1/chat/completions"), chat("gpt-4o-mini", "")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let id = ok.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let overhead: f64 = ok.headers["x-tollgate-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(overhead >= 0.0);
    let refused = post(&gw.url("/v1/chat/completions"), "{nope").await;
    refused.error(400, "invalid_json");
    assert!(refused.headers.contains_key("x-request-id"));
    assert!(refused.headers.contains_key("x-tollgate-overhead-ms"));
    // Propagated when the client sends one.
    let res = http()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .header("x-request-id", "client-chosen-id-42")
        .body(chat("gpt-4o-mini", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-chosen-id-42");
    assert!(
        logs().contains("client-chosen-id-42"),
        "the request id names the request's log lines"
    );
}

/// `[upstream] http2_prior_knowledge = true`: the gateway speaks HTTP/2
/// (h2c) to the plain-HTTP mock, answers arrive intact, and a stream the
/// upstream cuts (an `RST_STREAM` on HTTP/2) still ends with the SSE error
/// event and `[DONE]`. Without it, the same mock sees HTTP/1.1.
#[tokio::test]
async fn h2c_to_a_plain_http_upstream_keeps_answers_and_stream_cuts_intact() {
    let mock = mock().await;
    let h2c = config().replace("[upstream]\n", "[upstream]\nhttp2_prior_knowledge = true\n");
    let gw = gateway(&h2c, &mock).await;

    let res = client(gw.base())
        .chat()
        .create(chat_request("gpt-4o-mini"))
        .await
        .unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(expected_content(16).as_str())
    );
    let last = mock.log.last().unwrap();
    assert_eq!(last.version, http::Version::HTTP_2);
    assert!(String::from_utf8_lossy(&last.body).contains(r#""model":"mock-small""#));

    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true"#),
    )
    .await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    let ev = events(&ans.body);
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let content: String = ev[..ev.len() - 1]
        .iter()
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, expected_content(16));
    assert_eq!(mock.log.last().unwrap().version, http::Version::HTTP_2);

    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""stream":true,"mock_fault":"cut:3""#),
    )
    .await;
    assert_eq!(ans.status, 200);
    let ev = assert_ended_by_error(&ans.body, "upstream_stream_cut");
    let content = ev.iter().filter(|e| e.contains("\"content\"")).count();
    assert_eq!(content, 3, "the three chunks before the cut: {}", ans.body);
    assert_eq!(mock.log.last().unwrap().version, http::Version::HTTP_2);

    // A non-streaming answer cut half-way: a clean 502, as over HTTP/1.1.
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o-mini", r#""mock_fault":"cut:3""#),
    )
    .await;
    ans.error(502, "upstream_stream_cut");

    // Off by default: the same mock is spoken to in HTTP/1.1.
    let gw11 = gateway(&config(), &mock).await;
    let ans = post(&gw11.url("/v1/chat/completions"), chat("gpt-4o-mini", "")).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(mock.log.last().unwrap().version, http::Version::HTTP_11);
}

/// Issue 13 item 3: a stack mounted under a prefix forwards to the
/// endpoint's upstream path (`{base}/chat/completions`), never to the mount
/// path — with the endpoint read from the path's last segments, or named on
/// `ReadRequestLayer` for a mount path that names none.
#[tokio::test]
async fn a_stack_mounted_under_a_prefix_forwards_the_endpoints_path() {
    use tollgate::normalize::NormalizeErrorsLayer;
    use tollgate::provider::{HttpClient, Provider};
    use tollgate::read_request::{Endpoint, ReadRequestLayer};
    use tower::ServiceBuilder;

    let mock = mock().await;
    let provider = Provider::builder("mock", &mock.base_url())
        .unwrap()
        .client(HttpClient::builder().build().unwrap())
        .build();
    let stack = |endpoint: Option<Endpoint>| {
        let read = ReadRequestLayer::new(1 << 20);
        ServiceBuilder::new()
            .layer(NormalizeErrorsLayer::new())
            .layer(match endpoint {
                Some(e) => read.endpoint(e),
                None => read,
            })
            .service(provider.clone())
    };
    let app = axum::Router::new()
        .route_service("/ai/v1/chat/completions", stack(None))
        .route_service("/ai/v1/embeddings", stack(None))
        .route_service("/team-a/ask", stack(Some(Endpoint::ChatCompletions)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    spawn_server(listener, app).await;

    // The official-style client, pointed at the prefixed base.
    let client = client(format!("http://{addr}/ai/v1"));
    let res = client
        .chat()
        .create(chat_request("mock-small"))
        .await
        .unwrap();
    assert_eq!(
        res.choices[0].message.content.as_deref(),
        Some(expected_content(16).as_str())
    );
    assert_eq!(mock.log.last().unwrap().path, "/v1/chat/completions");
    let emb = client
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("mock-small")
                .input("hello")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(!emb.data.is_empty());
    assert_eq!(mock.log.last().unwrap().path, "/v1/embeddings");

    // A mount path that names no endpoint: the layer names it.
    let ans = post(&format!("http://{addr}/team-a/ask"), chat("mock-small", "")).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(mock.log.last().unwrap().path, "/v1/chat/completions");
    assert_eq!(mock.log.len(), 3, "one upstream request each, no retries");
}
