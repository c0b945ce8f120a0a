//! Azure OpenAI (`api = "azure"`) through the reference gateway, against the
//! bundled mock's Azure routes and Entra ID token endpoints, all on
//! 127.0.0.1: both URL styles, `api-key` and Entra ID tokens (client
//! credentials, managed identity, workload identity) from one shared cache,
//! an Anthropic client translated to an Azure deployment, budgets under
//! concurrency, Azure's faults and what the router does with them, tokens
//! refreshed across expiry under load, a token endpoint that fails, and no
//! secret anywhere.

mod common;

use std::sync::Once;
use std::time::{Duration, Instant};

use common::mock_upstream::azure::{
    API_KEY, ASSERTION, CLIENT_SECRET, IDENTITY_HEADER, TokenFault,
};
use common::*;
use serde_json::{Value, json};

const KEY_ENV: &str = "TOLLGATE_TEST_AZURE_KEY";
const TENANT_ENV: &str = "TOLLGATE_TEST_AZURE_TENANT";
const CLIENT_ID_ENV: &str = "TOLLGATE_TEST_AZURE_CLIENT_ID";
const SECRET_ENV: &str = "TOLLGATE_TEST_AZURE_SECRET";
const TOKEN_FILE_ENV: &str = "TOLLGATE_TEST_AZURE_TOKEN_FILE";
const IDENTITY_HEADER_ENV: &str = "TOLLGATE_TEST_AZURE_IDENTITY_HEADER";
const WRONG_IDENTITY_HEADER_ENV: &str = "TOLLGATE_TEST_AZURE_WRONG_IDENTITY_HEADER";

static AZURE_ENV: Once = Once::new();

/// The mock, with the Azure credentials in the environment.
async fn azure_mock() -> MockServer {
    init();
    AZURE_ENV.call_once(|| {
        let file = std::env::temp_dir().join(format!("tollgate-azure-{}.jwt", std::process::id()));
        std::fs::write(&file, format!("{ASSERTION}\n")).unwrap();
        // SAFETY: once, before any test of this binary reads these variables
        // (every test calls `azure_mock()` before building a gateway).
        unsafe {
            std::env::set_var(KEY_ENV, API_KEY);
            std::env::set_var(TENANT_ENV, "tenant-0000-mock");
            std::env::set_var(CLIENT_ID_ENV, "client-1111-mock");
            std::env::set_var(SECRET_ENV, CLIENT_SECRET);
            std::env::set_var(TOKEN_FILE_ENV, &file);
            std::env::set_var(IDENTITY_HEADER_ENV, IDENTITY_HEADER);
            std::env::set_var(WRONG_IDENTITY_HEADER_ENV, "n0tTh3Id3nt1tyH34d3r");
        }
    });
    mock().await
}

/// A gateway whose config says `{azure}` for the mock's Azure endpoint.
async fn azure_gateway(toml: &str, mock: &MockServer) -> Gateway {
    gateway(
        &toml.replace("{azure}", &format!("http://{}", mock.addr)),
        mock,
    )
    .await
}

/// A priced group of one Azure deployment (`auth` and style lines in `azure`,
/// deployment-level lines such as `headers` in `extra`).
fn group(name: &str, deployment: &str, extra: &str, azure: &str) -> String {
    format!(
        r#"
[[groups]]
name = "{name}"
price_in_per_mtok = 2.5
price_out_per_mtok = 10.0
[[groups.deployments]]
provider = "azure-{name}"
api = "azure"
base_url = "{{azure}}"
{extra}
[groups.deployments.azure]
deployment = "{deployment}"
{azure}
"#
    )
}

fn keyed(name: &str, deployment: &str, extra: &str) -> String {
    group(
        name,
        deployment,
        &format!("api_key_env = \"{KEY_ENV}\"\n{extra}"),
        "api_version = \"2024-10-21\"",
    )
}

fn client_credentials(name: &str, extra: &str, azure: &str) -> String {
    group(
        name,
        "gpt-4o-entra",
        extra,
        &format!(
            r#"style = "v1"
auth = "client_credentials"
authority = "{{azure}}"
tenant_id_env = "{TENANT_ENV}"
client_id_env = "{CLIENT_ID_ENV}"
client_secret_env = "{SECRET_ENV}"
{azure}"#
        ),
    )
}

/// No Azure secret (the API key, the client secret, the federated token,
/// any token the mock issued) in `text`; nor any of the common ones.
fn assert_no_azure_secrets(what: &str, text: &str, mock: &MockServer) {
    assert_no_secrets(what, text);
    let mut needles = vec![
        API_KEY.to_owned(),
        CLIENT_SECRET.to_owned(),
        ASSERTION.to_owned(),
        IDENTITY_HEADER.to_owned(),
    ];
    needles.extend(mock.azure.issued_tokens());
    for n in needles {
        assert!(!text.contains(&n), "{what} leaks a secret ({n})");
    }
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn chunks(body: &str) -> Vec<Value> {
    events(body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

const ANSWER: &str =
    "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8 tok9 tok10 tok11 tok12 tok13 tok14 tok15";

#[tokio::test]
async fn deployment_style_with_an_api_key_passes_through() {
    let mock = azure_mock().await;
    let gw = azure_gateway(&keyed("gpt-4o", "gpt-4o-prod", ""), &mock).await;

    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o", r#""temperature":0.2"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["message"]["content"], ANSWER);
    let seen = mock.log.last().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    assert_eq!(seen.headers["api-key"], API_KEY);
    assert!(seen.headers.get("authorization").is_none());
    // The deployment style reads the URL: the body is the client's, byte for byte.
    assert_eq!(
        String::from_utf8_lossy(&seen.body),
        chat("gpt-4o", r#""temperature":0.2"#)
    );

    // A stream to its end: Azure's `prompt_filter_results` chunk passes,
    // the text arrives whole, `[DONE]` ends it; usage was asked for metering.
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = events(&a.body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{}", a.body);
    let c = chunks(&a.body);
    assert!(c[0].get("prompt_filter_results").is_some(), "{}", a.body);
    assert_eq!(text_of(&c), ANSWER);
    let sent: Value = serde_json::from_slice(&mock.log.last().unwrap().body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    // Embeddings go to the deployment's embeddings route.
    let a = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"gpt-4o","input":"hello"}"#.to_owned(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        mock.log.last().unwrap().path,
        "/openai/deployments/gpt-4o-prod/embeddings"
    );
    // Anthropic's token counting has no Azure counterpart: not served.
    let res = anonymous()
        .post(gw.url("/v1/messages/count_tokens"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .body(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hi"}]}"#)
        .send()
        .await
        .unwrap();
    let a = read_answer(res).await;
    assert!(a.status >= 500, "{}", a.body);
    assert!(a.body.contains("azure"), "{}", a.body);
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

#[tokio::test]
async fn v1_style_with_client_credentials_fetches_one_token_for_a_burst() {
    let mock = azure_mock().await;
    mock.azure.set_token_latency(Duration::from_millis(100));
    let gw = azure_gateway(&client_credentials("gpt-4o", "", ""), &mock).await;
    // 50 concurrent first requests: one token fetch, shared.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = gw.url("/v1/chat/completions");
        tasks.push(tokio::spawn(
            async move { post(&url, chat("gpt-4o", "")).await },
        ));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(mock.azure.token_fetches(), 1);
    let used = mock.azure.used_tokens();
    assert_eq!(used.len(), 1);
    let seen = mock
        .log
        .all()
        .into_iter()
        .rfind(|r| r.path.starts_with("/openai/"))
        .unwrap();
    assert_eq!(seen.path, "/openai/v1/chat/completions");
    assert_eq!(seen.headers["authorization"], format!("Bearer {}", used[0]));
    assert!(seen.headers.get("api-key").is_none());
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        sent["model"], "gpt-4o-entra",
        "v1: the deployment is the model"
    );
    // The token request: client credentials for Cognitive Services.
    let token_req = mock
        .log
        .all()
        .into_iter()
        .find(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .unwrap();
    assert_eq!(token_req.path, "/tenant-0000-mock/oauth2/v2.0/token");
    let form = String::from_utf8_lossy(&token_req.body).into_owned();
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default"));
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

#[tokio::test]
async fn managed_identity_and_workload_identity_get_their_tokens() {
    let mock = azure_mock().await;
    let toml = format!(
        "{}{}",
        group(
            "mi",
            "gpt-4o-mi",
            "",
            "style = \"v1\"\nauth = \"managed_identity\"\nidentity_endpoint = \"{azure}/metadata/identity/oauth2/token\""
        ),
        group(
            "wi",
            "gpt-4o-wi",
            "",
            &format!(
                "api_version = \"2024-10-21\"\nauth = \"workload_identity\"\nauthority = \"{{azure}}\"\ntenant_id_env = \"{TENANT_ENV}\"\nclient_id_env = \"{CLIENT_ID_ENV}\"\nfederated_token_file_env = \"{TOKEN_FILE_ENV}\""
            )
        ),
    );
    let gw = azure_gateway(&toml, &mock).await;
    for model in ["mi", "wi", "mi", "wi"] {
        let a = post(&gw.url("/v1/chat/completions"), chat(model, "")).await;
        assert_eq!(a.status, 200, "{model}: {}", a.body);
    }
    assert_eq!(mock.azure.token_fetches(), 2, "one token per deployment");
    let log = mock.log.all();
    let imds = log
        .iter()
        .find(|r| r.path == "/metadata/identity/oauth2/token")
        .unwrap();
    assert_eq!(imds.method, "GET");
    assert_eq!(imds.headers["metadata"], "true");
    let wi = log
        .iter()
        .find(|r| r.path.ends_with("/oauth2/v2.0/token"))
        .unwrap();
    let form = String::from_utf8_lossy(&wi.body).into_owned();
    assert!(
        form.contains(
            "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        ),
        "{form}"
    );
    assert!(
        log.iter()
            .any(|r| r.path == "/openai/deployments/gpt-4o-wi/chat/completions")
    );
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

#[tokio::test]
async fn tool_call_arguments_stream_intact() {
    let mock = azure_mock().await;
    let gw = azure_gateway(&keyed("gpt-4o", "gpt-4o-prod", ""), &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("gpt-4o", r#""stream":true,"mock_fault":"tool_args:64KiB""#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let c = chunks(&a.body);
    let args: String = c
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args.len(), 64 << 10);
    let parsed: Value = serde_json::from_str(&args).expect("the arguments are whole JSON");
    assert!(parsed["data"].is_string());
    assert!(
        c.iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

fn messages(model: &str, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"Say hello."}}]{extra}}}"#
    )
}

async fn post_messages(gw: &Gateway, body: String) -> Answer {
    post_messages_as(&gw.url("/v1/messages"), CLIENT_KEY, body).await
}

#[tokio::test]
async fn an_anthropic_client_is_served_by_an_azure_deployment() {
    let mock = azure_mock().await;
    let toml = format!(
        "{}{}",
        keyed("gpt-4o", "gpt-4o-prod", ""),
        keyed(
            "gpt-4o-tools",
            "gpt-4o-prod",
            "headers = { \"x-mock-fault\" = \"tool_args:20KiB\" }"
        )
    );
    let gw = azure_gateway(&toml, &mock).await;
    let a = post_messages(&gw, messages("gpt-4o", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], ANSWER);
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["usage"]["output_tokens"], 16);
    let seen = mock.log.last().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["messages"][0]["content"], "Say hello.");
    assert!(sent.get("tool_choice").is_none(), "{sent}");

    // Streamed (Azure's empty-choices first chunk included): Anthropic's events.
    let a = post_messages(&gw, messages("gpt-4o", r#","stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = named_events(&a.body);
    assert_eq!(ev.first().unwrap().0, "message_start", "{}", a.body);
    assert_eq!(ev.last().unwrap().0, "message_stop", "{}", a.body);
    let text: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, ANSWER);

    // Tool use streamed: the `input_json_delta`s add up to the whole input.
    let a = post_messages(&gw, messages("gpt-4o-tools", r#","stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = named_events(&a.body);
    let input: String = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(input.len(), 20 << 10);
    serde_json::from_str::<Value>(&input).expect("whole JSON");
    assert!(
        ev.iter()
            .any(|(_, d)| d["delta"]["stop_reason"] == "tool_use")
    );
}

/// 200 concurrent streams against one key's budget on an Azure deployment:
/// no overspend, each admitted stream charged its usage chunk.
#[tokio::test]
async fn concurrent_streams_cannot_overspend() {
    let mock = azure_mock().await;
    let ledger = tollgate::budget::Ledger::new(tollgate::budget::TimeZone::UTC);
    let toml = format!(
        "{}\n[keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n",
        keyed("gpt-4o", "gpt-4o-prod", "")
    )
    .replace("{azure}", &format!("http://{}", mock.addr));
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let (key, id) = generate_key(&gw, json!({"models": ["*"], "max_budget": 0.005})).await;
    // The reservation (prompt estimate + 64 output tokens) covers the cost.
    let body = chat("gpt-4o", r#""stream":true,"max_tokens":64"#);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (url, key, body) = (gw.url("/v1/chat/completions"), key.clone(), body.clone());
        tasks.push(tokio::spawn(async move { post_as(&url, &key, body).await }));
    }
    let mut served = 0u64;
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            200 => {
                assert_eq!(events(&a.body).last().map(String::as_str), Some("[DONE]"));
                served += 1;
            }
            402 => {
                a.error(402, "budget_exceeded");
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert!(served > 0 && served < 200, "served {served}");
    let upstream_len = mock.log.last().unwrap().body.len() as u64;
    let usage = tollgate::budget::TokenUsage {
        prompt_tokens: (upstream_len / 4).max(1),
        completion_tokens: 16,
        cached_tokens: 0,
        cache_creation_tokens: 0,
    };
    let price = tollgate::budget::Price {
        input_per_mtok: 2_500_000,
        output_per_mtok: 10_000_000,
        cached_input_per_mtok: None,
        cache_write_per_mtok: None,
    };
    let each = price.cost(&usage);
    let spent = ledger.usage(
        &tollgate::budget::Scope::Key(id.as_str().into()),
        tollgate::budget::Period::Total,
    );
    assert_eq!(spent.reserved, 0, "every reservation settled");
    assert!(spent.spent <= 5_000, "overspent: {}", spent.spent);
    assert_eq!(
        spent.spent,
        served * each,
        "each stream charged its usage ({each})"
    );
}

#[tokio::test]
async fn azure_faults_become_their_reasons_and_router_behaviour() {
    let mock = azure_mock().await;
    let toml = [
        keyed("gpt-4o", "gpt-4o-prod", ""),
        keyed("rl-ms", "d", "headers = { \"x-mock-fault\" = \"azure_429:1500\" }"),
        keyed("rl-reset", "d", "headers = { \"x-mock-fault\" = \"azure_reset:7\" }"),
        keyed("auth", "d", "headers = { \"x-mock-fault\" = \"azure_401\" }"),
        // One rate-limited deployment and a healthy twin: the twin serves.
        keyed("twins", "a", "name = \"limited\"\nweight = 100\nheaders = { \"x-mock-fault\" = \"azure_429:60000\" }"),
    ]
    .concat()
        + "[[groups.deployments]]\nprovider = \"azure-twin\"\nname = \"healthy\"\napi = \"azure\"\nbase_url = \"{azure}\"\napi_key_env = \"TOLLGATE_TEST_AZURE_KEY\"\n[groups.deployments.azure]\ndeployment = \"b\"\napi_version = \"2024-10-21\"\n";
    let gw = azure_gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");

    // A content filter: the client's answer, not retried, nothing cooled.
    let a = post(
        &url,
        chat("gpt-4o", r#""mock_fault":"content_filter:azure""#),
    )
    .await;
    let v = a.error(400, "upstream_content_filtered");
    assert!(
        v["error"]["metadata"]["raw"]["error"]["innererror"].is_object(),
        "{}",
        a.body
    );
    let a = post(&url, chat("gpt-4o", "")).await;
    assert_eq!(a.status, 200, "not cooled down: {}", a.body);
    // A 200 that the filter ended is an answer: passed through as Azure sent it.
    let a = post(
        &url,
        chat("gpt-4o", r#""mock_fault":"content_filter_finish""#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["finish_reason"], "content_filter");
    let a = post(
        &url,
        chat(
            "gpt-4o",
            r#""stream":true,"mock_fault":"content_filter_finish""#,
        ),
    )
    .await;
    assert!(
        chunks(&a.body)
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "content_filter")
    );

    // 429 with `retry-after-ms`: honoured (1.5 s, 2 s rounded up), then cooled.
    let a = post(&url, chat("rl-ms", "")).await;
    let v = a.error(429, "upstream_rate_limited");
    assert_eq!(v["error"]["metadata"]["retry_after_s"], 2, "{}", a.body);
    let a = post(&url, chat("rl-ms", "")).await;
    a.error(503, "no_available_deployment");
    assert!(a.headers.contains_key("retry-after"));
    // 429 with only `x-ratelimit-reset-requests: 7s`.
    let a = post(&url, chat("rl-reset", "")).await;
    let v = a.error(429, "upstream_rate_limited");
    assert_eq!(v["error"]["metadata"]["retry_after_s"], 7, "{}", a.body);

    // Azure refusing the gateway's key: 502, never 401, and the deployment cooled.
    let a = post(&url, chat("auth", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not your key"),
        "{}",
        a.body
    );
    let a = post(&url, chat("auth", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert_eq!(
        v["error"]["metadata"]["cooling"][0]["reason"], "credential",
        "{}",
        a.body
    );

    // The rate-limited twin is cooled; the healthy one serves every request.
    for _ in 0..5 {
        let a = post(&url, chat("twins", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-tollgate-deployment"], "healthy");
    }
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

#[tokio::test]
async fn a_stream_cut_midway_ends_in_the_clients_family() {
    let mock = azure_mock().await;
    let gw = azure_gateway(
        &keyed(
            "cut",
            "gpt-4o-prod",
            "headers = { \"x-mock-fault\" = \"cut:3\" }",
        ),
        &mock,
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("cut", r#""stream":true"#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_ended_by_error(&a.body, "upstream_stream_cut");

    let a = post_messages(&gw, messages("cut", r#","stream":true"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ev = named_events(&a.body);
    let (name, data) = ev.last().unwrap();
    assert_eq!(name, "error", "{}", a.body);
    assert_eq!(data["type"], "error");
    assert_eq!(
        data["error"]["metadata"]["reason"], "upstream_stream_cut",
        "{}",
        a.body
    );
    assert!(!a.body.contains("[DONE]"));
}

/// Tokens living 2 s, refreshed ahead (at half their life) by one task while
/// 16 clients send requests without pause for 5 s: every request served,
/// none with an expired token, one fetch per token lifetime at most.
#[tokio::test]
async fn tokens_are_refreshed_across_expiry_under_load() {
    let mock = azure_mock().await;
    mock.azure.set_token_ttl(Duration::from_secs(2));
    mock.azure.set_token_latency(Duration::from_millis(50));
    let gw = azure_gateway(&client_credentials("gpt-4o", "", ""), &mock).await;
    let start = Instant::now();
    let run = Duration::from_secs(5);
    let mut workers = Vec::new();
    for _ in 0..16 {
        let url = gw.url("/v1/chat/completions");
        workers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while start.elapsed() < run {
                let a = post(&url, chat("gpt-4o", "")).await;
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
    let fetches = mock.azure.token_fetches();
    let used = mock.azure.used_tokens().len() as u64;
    assert!(total > 16, "served {total}");
    assert_eq!(mock.azure.rejected(), 0, "no request refused");
    assert_eq!(mock.azure.expired_token_uses(), 0);
    // Several lifetimes crossed, and never a herd: a fetch per half-life at
    // most (the refresh point), each token fetched was used (the last one
    // may have landed after the run).
    assert!(used >= 3, "tokens used: {used}");
    assert!(fetches <= used + 1, "fetches {fetches}, used {used}");
    assert!(
        (fetches as f64) <= elapsed + 2.0,
        "fetches {fetches} in {elapsed:.1} s"
    );
}

#[tokio::test]
async fn a_failing_token_endpoint_is_502_cools_the_deployment_and_another_serves() {
    let mock = azure_mock().await;
    let toml = [
        client_credentials("solo", "", ""),
        client_credentials("pair", "name = \"entra\"\nweight = 100", ""),
    ]
    .concat()
        + "[[groups.deployments]]\nprovider = \"azure-keyed\"\nname = \"keyed\"\napi = \"azure\"\nbase_url = \"{azure}\"\napi_key_env = \"TOLLGATE_TEST_AZURE_KEY\"\n[groups.deployments.azure]\ndeployment = \"b\"\napi_version = \"2024-10-21\"\n";
    let gw = azure_gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");
    mock.azure.set_token_fault(Some(TokenFault::InvalidClient));

    // Alone: the client sees 502 upstream_auth_failed (never 401), naming
    // Entra's error code but no secret.
    let a = post(&url, chat("solo", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("Entra ID token"), "{message}");
    assert!(message.contains("invalid_client"), "{message}");
    assert_eq!(mock.azure.token_fetches(), 1);
    // Cooled down: not tried again, the token endpoint not called again.
    let a = post(&url, chat("solo", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    assert_eq!(
        v["error"]["metadata"]["cooling"][0]["reason"], "credential",
        "{}",
        a.body
    );
    assert_eq!(mock.azure.token_fetches(), 1);

    // With a twin on an API key: every request served, the failing one
    // tried at most once before its cooldown.
    for _ in 0..10 {
        let a = post(&url, chat("pair", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-tollgate-deployment"], "keyed");
    }
    assert!(mock.azure.token_fetches() <= 2);
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_fetched_again_once() {
    let mock = azure_mock().await;
    let toml = client_credentials("gpt-4o", "", "")
        + "[router]\ncredential_cooldown_ms = 1\nnum_retries = 0\n";
    let gw = azure_gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");
    let a = post(&url, chat("gpt-4o", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.azure.token_fetches(), 1);
    // Azure refuses every token: the first is dropped and the request sent
    // once more with a fresh one, refused too: the client gets 502.
    let a = post(&url, chat("gpt-4o", r#""mock_fault":"azure_401""#)).await;
    a.error(502, "upstream_auth_failed");
    assert_eq!(mock.azure.token_fetches(), 2);
    assert_eq!(mock.azure.rejected(), 2, "one retry, not more");
    // Past the (1 ms) cooldown, concurrent requests fetch one new token.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { post(&url, chat("gpt-4o", "")).await },
        ));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // The fresh token was kept (refused at once, it was not the token's
    // age): the burst uses it, no third fetch.
    assert_eq!(mock.azure.token_fetches(), 2);
    assert_eq!(mock.azure.used_tokens().len(), 2);
}

/// A token Azure refuses (revoked before its stated expiry) is replaced
/// inside the same request: one new fetch, the request sent once more, the
/// client served; an API key is never sent twice.
#[tokio::test]
async fn a_revoked_token_is_retried_once_with_a_fresh_one() {
    let mock = azure_mock().await;
    let toml = client_credentials("gpt-4o", "", "")
        + &keyed(
            "keyed",
            "d",
            "headers = { \"x-mock-fault\" = \"azure_401\" }",
        )
        + "[router]\ncredential_cooldown_ms = 1\nnum_retries = 0\n";
    let gw = azure_gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");
    let a = post(&url, chat("gpt-4o", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(mock.azure.token_fetches(), 1);
    mock.azure.revoke_tokens();
    // Concurrent requests, streams among them: each refused once, all
    // served after one new fetch.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = url.clone();
        let extra = if i % 2 == 0 { r#""stream":true"# } else { "" };
        let body = chat("gpt-4o", extra);
        tasks.push(tokio::spawn(async move { post(&url, body).await }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body.contains("tok15"), "{}", a.body);
    }
    assert_eq!(mock.azure.token_fetches(), 2, "one new fetch");
    let refused = mock.azure.rejected();
    assert!((1..=10).contains(&refused), "refused {refused}");
    assert_eq!(mock.azure.used_tokens().len(), 2);
    // An API key refused: 502 at once, sent once, no token fetched.
    let before = mock.azure.rejected();
    let a = post(&url, chat("keyed", "")).await;
    a.error(502, "upstream_auth_failed");
    assert_eq!(mock.azure.rejected(), before + 1);
    assert_eq!(mock.azure.token_fetches(), 2);
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

/// An App Service / Functions managed identity: `X-IDENTITY-HEADER`,
/// `api-version=2019-08-01`, `resource=`, and an answer with `expires_on`
/// only; a wrong identity header is 502 `upstream_auth_failed`.
#[tokio::test]
async fn an_app_service_identity_gets_its_token() {
    let mock = azure_mock().await;
    let app_service = |header_env: &str| {
        format!(
            "style = \"v1\"\nauth = \"app_service\"\nidentity_endpoint = \"{{azure}}/msi/token\"\nidentity_header_env = \"{header_env}\""
        )
    };
    let toml = group("as", "gpt-4o-as", "", &app_service(IDENTITY_HEADER_ENV))
        + &group(
            "as-wrong",
            "gpt-4o-as",
            "",
            &app_service(WRONG_IDENTITY_HEADER_ENV),
        );
    let gw = azure_gateway(&toml, &mock).await;
    let url = gw.url("/v1/chat/completions");
    for _ in 0..3 {
        let a = post(&url, chat("as", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(mock.azure.token_fetches(), 1, "cached by its expires_on");
    let log = mock.log.all();
    let fetch = log.iter().find(|r| r.path == "/msi/token").unwrap();
    assert_eq!(fetch.method, "GET");
    assert_eq!(fetch.headers["x-identity-header"], IDENTITY_HEADER);
    let a = post(&url, chat("as-wrong", "")).await;
    let v = a.error(502, "upstream_auth_failed");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("App Service identity endpoint"),
        "{message}"
    );
    assert!(message.contains("HTTP 401"), "{message}");
    assert_no_azure_secrets("the logs", &logs(), &mock);
}

/// A 200 that Azure's content filter ended (`finish_reason:
/// "content_filter"`) is an answer: passed through, charged for the tokens
/// it used (whole and streamed), and the deployment stays in service.
#[tokio::test]
async fn a_content_filtered_answer_is_charged_and_not_cooled() {
    let mock = azure_mock().await;
    let ledger = tollgate::budget::Ledger::new(tollgate::budget::TimeZone::UTC);
    let toml = format!(
        "{}\n[router]\nnum_retries = 0\n[keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n",
        keyed("gpt-4o", "gpt-4o-prod", "")
    )
    .replace("{azure}", &format!("http://{}", mock.addr));
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let (key, id) = generate_key(&gw, json!({"models": ["*"], "max_budget": 10.0})).await;
    let url = gw.url("/v1/chat/completions");
    let a = post_as(
        &url,
        &key,
        chat("gpt-4o", r#""mock_fault":"content_filter_finish""#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["choices"][0]["finish_reason"], "content_filter");
    let a = post_as(
        &url,
        &key,
        chat(
            "gpt-4o",
            r#""stream":true,"mock_fault":"content_filter_finish""#,
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        chunks(&a.body)
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "content_filter"),
        "{}",
        a.body
    );
    // The mock's filtered answers use 5 prompt and 1 completion tokens.
    let usage = tollgate::budget::TokenUsage {
        prompt_tokens: 5,
        completion_tokens: 1,
        cached_tokens: 0,
        cache_creation_tokens: 0,
    };
    let price = tollgate::budget::Price {
        input_per_mtok: 2_500_000,
        output_per_mtok: 10_000_000,
        cached_input_per_mtok: None,
        cache_write_per_mtok: None,
    };
    let spent = ledger.usage(
        &tollgate::budget::Scope::Key(id.as_str().into()),
        tollgate::budget::Period::Total,
    );
    assert_eq!(spent.reserved, 0);
    assert_eq!(spent.spent, 2 * price.cost(&usage), "both answers charged");
    // Not a fault of the deployment: its one deployment still serves.
    let a = post_as(&url, &key, chat("gpt-4o", "")).await;
    assert_eq!(a.status, 200, "not cooled down: {}", a.body);
}

#[tokio::test]
async fn azure_settings_are_checked_at_start() {
    let _mock = azure_mock().await;
    let err = |toml: &str| {
        tollgate::config::Config::from_toml("gw.toml", toml)
            .unwrap_err()
            .to_string()
    };
    let base = "[[groups]]\nname = \"g\"\n[[groups.deployments]]\nprovider = \"az\"\napi = \"azure\"\nbase_url = \"https://r.openai.azure.com\"\n";
    let e = err(&format!("{base}api_key_env = \"{KEY_ENV}\"\n"));
    assert!(
        e.contains("groups[0].deployments[0].azure") && e.contains("needs"),
        "{e}"
    );
    let e = err(&format!(
        "{base}api_key_env = \"{KEY_ENV}\"\n[groups.deployments.azure]\ndeployment = \"d\"\n"
    ));
    assert!(e.contains("azure.api_version"), "{e}");
    let e = err(&format!(
        "{base}api_key_env = \"{KEY_ENV}\"\n[groups.deployments.azure]\nstyle = \"v1\"\nauth = \"client_credentials\"\n"
    ));
    assert!(e.contains("api_key_env") && e.contains("remove"), "{e}");
    let e = err(&format!(
        "{base}[groups.deployments.azure]\nstyle = \"v1\"\nauth = \"client_credentials\"\nclient_secret_env = \"TOLLGATE_SURELY_UNSET\"\ntenant_id_env = \"{TENANT_ENV}\"\nclient_id_env = \"{CLIENT_ID_ENV}\"\n"
    ));
    assert!(
        e.contains("azure.client_secret_env") && e.contains("TOLLGATE_SURELY_UNSET"),
        "{e}"
    );
    let e = err(&format!(
        "{base}[groups.deployments.azure]\nstyle = \"v1\"\nauth = \"password\"\n"
    ));
    assert!(e.contains("azure.auth"), "{e}");
    let e = err(
        "[[groups]]\nname = \"g\"\n[[groups.deployments]]\nprovider = \"o\"\nbase_url = \"http://h/v1\"\n[groups.deployments.azure]\nstyle = \"v1\"\n",
    );
    assert!(e.contains("is for `api = \"azure\"`"), "{e}");
}

/// A deployment's own price is found by its `model` (the model Azure runs),
/// not by Azure's deployment name.
#[tokio::test]
async fn a_deployment_price_is_found_by_its_model() {
    let mock = azure_mock().await;
    let ledger = tollgate::budget::Ledger::new(tollgate::budget::TimeZone::UTC);
    let toml = format!(
        r#"
[[groups]]
name = "gpt-4o"
[[groups.deployments]]
provider = "azure-east"
api = "azure"
base_url = "http://{}"
api_key_env = "{KEY_ENV}"
model = "gpt-4o-2024-11-20"
price_in_per_mtok = 1000.0
price_out_per_mtok = 2000.0
[groups.deployments.azure]
deployment = "gpt-4o-prod"
api_version = "2024-10-21"

[keys]
store = "memory"
master_key_env = "{{master_env}}"
"#,
        mock.addr
    );
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let (key, id) = generate_key(&gw, json!({"models": ["*"], "max_budget": 100.0})).await;
    let (key, id) = (key.as_str(), id.as_str());
    let a = post_as(&gw.url("/v1/chat/completions"), key, chat("gpt-4o", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = mock.log.last().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    let usage = &a.json()["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    let spent = ledger.usage(
        &tollgate::budget::Scope::Key(id.into()),
        tollgate::budget::Period::Total,
    );
    assert_eq!(spent.spent, p * 1000 + c * 2000, "the deployment's price");
}
