//! OpenTelemetry export through real sockets: the reference gateway with
//! `[telemetry]`, against the mock upstream on 127.0.0.1, exporting to an
//! OTLP receiver written here that decodes what it receives: OTLP/HTTP
//! (`POST /v1/traces`, a protobuf `ExportTraceServiceRequest`) on axum, and
//! OTLP/gRPC as a tonic `TraceService`. The spans' attributes are checked
//! for a chat request, a stream, a failure, an Anthropic `/v1/messages`
//! request, content capture on and off, the `OTEL_*` variables (a gateway
//! process), and the config's refusals.
//!
//! Every span carries the request's own model group (`m-<test>`), so tests
//! sharing nothing but the process tell their spans apart; waiting for a
//! span is a bounded poll, never a timed assertion.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::processes::{fill, spawn_gateway_with_env};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message;
use tollgate::config::Config;

/// One span as received: its name, attributes, status, times, and its
/// resource's `service.name`.
#[derive(Clone, Debug)]
struct Received {
    span: Span,
    attrs: HashMap<String, Any>,
    service: String,
}

impl Received {
    fn str(&self, key: &str) -> &str {
        match self.attrs.get(key) {
            Some(Any::StringValue(s)) => s,
            other => panic!("{key}: {other:?} in {:?}", self.attrs),
        }
    }

    fn int(&self, key: &str) -> i64 {
        match self.attrs.get(key) {
            Some(Any::IntValue(n)) => *n,
            other => panic!("{key}: {other:?} in {:?}", self.attrs),
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.attrs.get(key) {
            Some(Any::BoolValue(b)) => Some(*b),
            None => None,
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// What the receiver got: every span, every export's headers (metadata).
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    headers: Arc<Mutex<Vec<http::HeaderMap>>>,
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Receiver {
    fn take(&self, request: ExportTraceServiceRequest, headers: http::HeaderMap, raw: &[u8]) {
        self.raw.lock().unwrap().extend_from_slice(raw);
        self.headers.lock().unwrap().push(headers);
        let mut spans = self.spans.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Any::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let attrs = span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
                        .collect();
                    spans.push(Received {
                        span,
                        attrs,
                        service: service.clone(),
                    });
                }
            }
        }
    }

    /// The span of model group `model`, once it arrived (polled, at most 60 s).
    async fn span_of(&self, model: &str) -> Received {
        let (span, _) = common::processes::within(
            &format!("a span for {model}"),
            Duration::from_secs(60),
            || {
                let spans = self.spans.lock().unwrap();
                let found = spans
                    .iter()
                    .find(|s| {
                        matches!(s.attrs.get("gen_ai.request.model"), Some(Any::StringValue(m)) if m == model)
                    })
                    .cloned()
                    .ok_or_else(|| format!("{} other spans", spans.len()));
                async move { found }
            },
        )
        .await;
        span
    }

    /// Everything received, as text (for the leak checks).
    fn dump(&self) -> String {
        format!(
            "{:?}\n{}",
            self.spans.lock().unwrap(),
            String::from_utf8_lossy(&self.raw.lock().unwrap())
        )
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0; returns its base URL.
async fn http_receiver(r: Receiver) -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: Bytes| async move {
            assert_eq!(headers["content-type"], "application/x-protobuf");
            let request = ExportTraceServiceRequest::decode(body.as_ref())
                .expect("a protobuf ExportTraceServiceRequest");
            r.take(request, headers, &body);
            (
                [("content-type", "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    spawn_server(listener, app).await;
    format!("http://{addr}")
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let request = request.into_inner();
        let raw = request.encode_to_vec();
        self.take(request, headers, &raw);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver (tonic) on 127.0.0.1:0; returns its URL.
async fn grpc_receiver(r: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(r))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

/// Groups `m-<name>` (OpenAI API) and `claude-<name>` (Anthropic API) on
/// the mock, and `[telemetry]` with `telemetry` in it.
fn config(name: &str, telemetry: &str) -> String {
    format!(
        r#"
[router]
num_retries = 0
[[groups]]
name = "m-{name}"
price_in_per_mtok = 1.0
price_out_per_mtok = 2.0
[[groups.deployments]]
provider = "mock-{name}"
base_url = "{{mock}}"
api_key_env = "{{key_env}}"
model = "mock-small"

[[groups]]
name = "claude-{name}"
price_in_per_mtok = 1.0
price_out_per_mtok = 2.0
[[groups.deployments]]
provider = "anthropic-{name}"
api = "anthropic"
base_url = "{{mock}}"
api_key_env = "{{key_env}}"
model = "mock-claude"

[telemetry]
batch_delay_ms = 50
{telemetry}
"#
    )
}

const PROMPT: &str = "Tell me about the zebra in my garden";

fn chat_with_prompt(model: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(",{extra}")
    };
    format!(
        r#"{{"model":"{model}","max_tokens":32,"messages":[{{"role":"user","content":"{PROMPT}"}}]{extra}}}"#
    )
}

/// No secret, and no prompt or answer text, in anything the receiver got.
fn assert_nothing_private(r: &Receiver) {
    let dump = r.dump();
    assert_no_secrets("the exported spans", &dump);
    assert!(!dump.contains("zebra"), "the prompt was exported:\n{dump}");
    assert!(!dump.contains("tok1"), "the answer was exported:\n{dump}");
}

#[tokio::test]
async fn a_chat_request_is_exported_over_http_with_the_genai_attributes() {
    let mock = mock().await;
    let r = Receiver::default();
    let url = http_receiver(r.clone()).await;
    let toml = config(
        "http",
        &format!(
            "endpoint = \"{url}\"\nservice_name = \"gw-test\"\n[telemetry.headers]\nauthorization = \"Bearer otlp-t0ken-n0t-l0gged\"\n"
        ),
    );
    let gw = gateway(&toml, &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat_with_prompt("m-http", ""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let usage = a.json()["usage"].clone();
    let s = r.span_of("m-http").await;
    assert_eq!(s.span.name, "chat m-http");
    assert_eq!(s.service, "gw-test");
    assert_eq!(s.str("gen_ai.operation.name"), "chat");
    assert_eq!(s.str("gen_ai.provider.name"), "openai");
    assert_eq!(s.str("gen_ai.response.model"), "mock-small");
    assert_eq!(s.int("gen_ai.request.max_tokens"), 32);
    assert_eq!(
        s.int("gen_ai.usage.input_tokens"),
        usage["prompt_tokens"].as_i64().unwrap()
    );
    assert_eq!(
        s.int("gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert_eq!(s.int("http.response.status_code"), 200);
    assert_eq!(s.str("tollgate.key_id"), "client01");
    assert_eq!(s.str("tollgate.deployment"), "mock-http/mock-small");
    assert_eq!(s.str("tollgate.model_group"), "m-http");
    assert_eq!(s.int("tollgate.attempts"), 1);
    // $1 and $2 per million tokens.
    let micros = usage["prompt_tokens"].as_f64().unwrap()
        + 2.0 * usage["completion_tokens"].as_f64().unwrap();
    match s.attrs.get("tollgate.cost_usd") {
        Some(Any::DoubleValue(usd)) => {
            assert!((usd * 1e6 - micros).abs() < 1e-6, "{usd} vs {micros}")
        }
        other => panic!("tollgate.cost_usd: {other:?}"),
    }
    assert!(!s.attrs.contains_key("error.type"));
    assert!(!s.attrs.contains_key("gen_ai.input.messages"));
    assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
    // The exporter's header reached the collector, and nowhere else.
    let headers = r.headers.lock().unwrap().clone();
    assert_eq!(headers[0]["authorization"], "Bearer otlp-t0ken-n0t-l0gged");
    assert!(
        !logs().contains("otlp-t0ken"),
        "the exporter's token was logged"
    );
    assert_nothing_private(&r);
}

#[tokio::test]
async fn a_stream_is_exported_when_it_ends_with_its_streamed_usage() {
    let mock = mock().await;
    let r = Receiver::default();
    let url = http_receiver(r.clone()).await;
    let gw = gateway(&config("stream", &format!("endpoint = \"{url}\"")), &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat_with_prompt(
            "m-stream",
            r#""stream":true,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    let usage = events(&a.body)
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("the stream's usage chunk");
    let s = r.span_of("m-stream").await;
    assert_eq!(s.bool("tollgate.stream"), Some(true));
    assert_eq!(
        s.int("gen_ai.usage.output_tokens"),
        usage["completion_tokens"].as_i64().unwrap()
    );
    assert!(s.int("gen_ai.usage.output_tokens") > 0);
    assert_eq!(s.bool("tollgate.usage_estimated"), None);
    assert_eq!(s.bool("tollgate.cancelled"), None);
    assert!(!s.attrs.contains_key("error.type"));
    assert_nothing_private(&r);
}

#[tokio::test]
async fn a_failed_request_is_exported_with_its_reason_as_error_type() {
    let mock = mock().await;
    let r = Receiver::default();
    let url = http_receiver(r.clone()).await;
    let gw = gateway(&config("fail", &format!("endpoint = \"{url}\"")), &mock).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat_with_prompt("m-fail", r#""mock_fault":"500""#),
    )
    .await;
    assert!(a.status >= 500, "{}", a.body);
    let reason = a.json()["error"]["metadata"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = r.span_of("m-fail").await;
    assert_eq!(s.str("error.type"), reason);
    assert_eq!(s.int("http.response.status_code"), i64::from(a.status));
    let status = s.span.status.clone().expect("a status");
    assert_eq!(status.code, SpanStatus::Error as i32);
    assert_eq!(status.message, reason);
    assert_nothing_private(&r);
}

#[tokio::test]
async fn an_anthropic_messages_request_is_exported_over_grpc() {
    let mock = mock().await;
    let r = Receiver::default();
    let url = grpc_receiver(r.clone()).await;
    let gw = gateway(
        &config(
            "grpc",
            &format!("endpoint = \"{url}\"\nprotocol = \"grpc\"\n[telemetry.headers]\nx-collector-token = \"grpc-t0ken\"\n"),
        ),
        &mock,
    )
    .await;
    let res = http()
        .post(gw.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(chat_with_prompt("claude-grpc", ""))
        .send()
        .await
        .unwrap();
    let a = read_answer(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let usage = a.json()["usage"].clone();
    let s = r.span_of("claude-grpc").await;
    assert_eq!(s.span.name, "chat claude-grpc");
    assert_eq!(s.str("gen_ai.operation.name"), "chat");
    assert_eq!(s.str("gen_ai.provider.name"), "anthropic");
    assert_eq!(s.str("gen_ai.response.model"), "mock-claude");
    assert_eq!(s.str("tollgate.key_id"), "client01");
    assert_eq!(
        s.int("gen_ai.usage.output_tokens"),
        usage["output_tokens"].as_i64().unwrap()
    );
    assert_eq!(s.service, "tollgate");
    let headers = r.headers.lock().unwrap().clone();
    assert_eq!(headers[0]["x-collector-token"], "grpc-t0ken");
    assert_nothing_private(&r);
}

#[tokio::test]
async fn prompts_are_exported_only_when_capture_is_on() {
    let mock = mock().await;
    let r = Receiver::default();
    let url = http_receiver(r.clone()).await;
    let gw = gateway(
        &config(
            "capture",
            &format!("endpoint = \"{url}\"\ncapture_content = true"),
        ),
        &mock,
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat_with_prompt("m-capture", ""),
    )
    .await;
    assert_eq!(a.status, 200);
    let s = r.span_of("m-capture").await;
    let input: serde_json::Value =
        serde_json::from_str(s.str("gen_ai.input.messages")).expect("JSON messages");
    assert_eq!(input[0]["content"], PROMPT);
    assert_no_secrets("the exported spans", &r.dump());
}

#[tokio::test]
async fn the_otel_variables_configure_an_empty_section() {
    let mock = mock().await;
    let r = Receiver::default();
    let url = grpc_receiver(r.clone()).await;
    let toml = process_config("env", "", &mock).replace("batch_delay_ms = 50", "");
    let gw = spawn_gateway_with_env(
        &toml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "from-env"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20env-t0ken",
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat_with_prompt("m-env", ""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let s = r.span_of("m-env").await;
    assert_eq!(s.service, "from-env");
    assert_eq!(s.str("gen_ai.provider.name"), "openai");
    let headers = r.headers.lock().unwrap().clone();
    assert_eq!(headers[0]["authorization"], "Bearer env-t0ken");
    assert!(!gw.logs().contains("env-t0ken"), "{}", gw.logs());
    assert_nothing_private(&r);
}

#[tokio::test]
async fn a_bad_telemetry_section_is_refused_by_field() {
    init();
    let base = "[[groups]]\nname = \"g\"\n[[groups.deployments]]\nprovider = \"p\"\nbase_url = \"http://127.0.0.1:9/v1\"\n";
    for (section, field, word) in [
        (
            "protocol = \"http/json\"",
            "telemetry.protocol",
            "http/json",
        ),
        (
            "endpoint = \"https://collector:4318\"",
            "telemetry.endpoint",
            "https",
        ),
        ("endpoint = \"collector\"", "telemetry.endpoint", "URL"),
        ("sampling_ratio = 2.0", "telemetry.sampling_ratio", "0 to 1"),
        (
            "batch_delay_ms = 0",
            "telemetry.batch_delay_ms",
            "greater than 0",
        ),
        ("enpoint = \"http://x\"", "", "enpoint"),
        (
            "[telemetry.headers]\n\"bad header\" = \"s3cr3t-value\"",
            "telemetry.headers",
            "bad header",
        ),
    ] {
        let text = format!("{base}[telemetry]\n{section}\n");
        let e = Config::from_toml("t.toml", &text).unwrap_err();
        if !field.is_empty() {
            assert_eq!(e.field(), field, "{e}");
        }
        let msg = e.to_string();
        assert!(msg.contains(word), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }
    // Left out, or turned off: no exporter.
    let config = Config::from_toml("t.toml", base).unwrap();
    assert!(!config.telemetry_on());
    assert!(config.otlp().is_none());
    let off =
        Config::from_toml("t.toml", &format!("{base}[telemetry]\nenabled = false\n")).unwrap();
    assert!(off.otlp().is_none());
}

/// A gateway config for a process: its own listener and static key.
fn process_config(name: &str, telemetry: &str, mock: &MockServer) -> String {
    fill(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"{{client_env}}\"\nmodels = [\"*\"]\n{}",
            config(name, telemetry)
        ),
        mock,
    )
}

#[tokio::test]
async fn otel_sdk_disabled_turns_the_section_off() {
    let mock = mock().await;
    let toml = process_config("disabled", "endpoint = \"http://127.0.0.1:9\"", &mock);
    let on = spawn_gateway_with_env(&toml, &[]).await;
    assert!(
        on.logs().contains("OpenTelemetry span export on"),
        "{}",
        on.logs()
    );
    let off = spawn_gateway_with_env(&toml, &[("OTEL_SDK_DISABLED", "true")]).await;
    let a = post(
        &off.url("/v1/chat/completions"),
        chat_with_prompt("m-disabled", ""),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(!off.logs().contains("OpenTelemetry"), "{}", off.logs());
}

#[tokio::test]
async fn a_bad_otel_variable_is_refused_at_start_by_name() {
    let mock = mock().await;
    let toml = process_config("badenv", "", &mock);
    let path =
        std::env::temp_dir().join(format!("tollgate-otel-badenv-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap();
    for (var, value, word) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/json"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector:4318",
            "https",
        ),
    ] {
        let out = tokio::process::Command::new(common::processes::gateway_binary())
            .arg(&path)
            .env(var, value)
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(var) && stderr.contains(word), "{stderr}");
    }
    let _ = std::fs::remove_file(&path);
}
