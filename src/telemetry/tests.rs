//! `GenAiSpan` over `service_fn` upstreams, its spans collected in memory.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::read_request::ReadRequestLayer;
use crate::{Error, Reason};

/// Keeps every exported span.
#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Collect {
    fn spans(&self) -> Vec<SpanData> {
        self.0.lock().unwrap().clone()
    }
}

fn tracer() -> (SdkTracer, Collect, SdkTracerProvider) {
    let spans = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    (provider.tracer("test"), spans, provider)
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn int(span: &SpanData, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::I64(n)) => *n,
        other => panic!("{key}: {other:?}"),
    }
}

fn string(span: &SpanData, key: &str) -> String {
    match attr(span, key) {
        Some(v) => v.as_str().into_owned(),
        None => panic!("{key} missing in {:?}", span.attributes),
    }
}

const JSON_ANSWER: &str = r#"{"id":"x","choices":[{"message":{"role":"assistant","content":"Hi there"}}],"usage":{"prompt_tokens":11,"completion_tokens":7}}"#;

fn served(body: Body) -> Response<Body> {
    let mut res = Response::new(body);
    res.extensions_mut().insert(Served {
        provider: "openai-east".into(),
        model: "gpt-4o-mini-2024-07-18".into(),
    });
    let h = res.headers_mut();
    h.insert(DEPLOYMENT_HEADER, "openai-east".parse().unwrap());
    h.insert(MODEL_GROUP_HEADER, "fast".parse().unwrap());
    h.insert(ATTEMPTS_HEADER, "2".parse().unwrap());
    res
}

#[tokio::test]
async fn a_chat_request_is_one_span_with_the_genai_attributes() {
    let (tracer, spans, _p) = tracer();
    let price = crate::budget::Price {
        input_per_mtok: 1_000_000,
        output_per_mtok: 2_000_000,
        ..Default::default()
    };
    let prices = crate::budget::Prices::new()
        .group(
            "fast",
            crate::budget::ModelPrice {
                price,
                max_output_tokens: 100,
            },
        )
        // The serving deployment's own price wins, as when `Budget` settles.
        .deployment(
            "fast",
            "openai-east",
            "gpt-4o-mini-2024-07-18",
            crate::budget::Price {
                output_per_mtok: 3_000_000,
                ..price
            },
        );
    let layer = GenAiSpanLayer::new(tracer)
        .provider("openai-east", Api::Azure)
        .prices(prices)
        .caller(|who: &&'static str, out: &mut Vec<KeyValue>| {
            out.push(KeyValue::new(KEY_ID, *who));
        });
    let svc = ServiceBuilder::new()
        .map_request(|req: Request<Body>| {
            req.map(|b| crate::read_request::Identified {
                identity: "client01",
                body: b,
            })
        })
        .layer(ReadRequestLayer::new(1 << 20))
        .layer(layer)
        .service(service_fn(|_req: LlmRequest<&'static str>| async {
            Ok::<_, Error>(served(Body::full(JSON_ANSWER)))
        }));
    let req = Request::post("/v1/chat/completions")
        .body(Body::full(
            r#"{"model":"fast","max_tokens":64,"messages":[{"role":"user","content":"Say hello secretly."}]}"#,
        ))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert!(spans.spans().is_empty(), "the span ends with the body");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, JSON_ANSWER.as_bytes());
    let all = spans.spans();
    assert_eq!(all.len(), 1);
    let span = &all[0];
    assert_eq!(span.name, "chat fast");
    assert_eq!(span.span_kind, SpanKind::Client);
    assert_eq!(string(span, OPERATION_NAME), "chat");
    assert_eq!(string(span, REQUEST_MODEL), "fast");
    assert_eq!(int(span, REQUEST_MAX_TOKENS), 64);
    assert_eq!(string(span, RESPONSE_MODEL), "gpt-4o-mini-2024-07-18");
    assert_eq!(string(span, PROVIDER_NAME), "azure.ai.openai");
    assert_eq!(int(span, USAGE_INPUT_TOKENS), 11);
    assert_eq!(int(span, USAGE_OUTPUT_TOKENS), 7);
    assert_eq!(int(span, HTTP_STATUS), 200);
    assert_eq!(int(span, ATTEMPTS), 2);
    // 11 input tokens at $1/Mtok + 7 output tokens at $3/Mtok = 32 micro-USD.
    assert_eq!(attr(span, COST_USD), Some(&Value::F64(32.0 / 1e6)));
    assert_eq!(string(span, DEPLOYMENT), "openai-east");
    assert_eq!(string(span, MODEL_GROUP), "fast");
    assert_eq!(string(span, KEY_ID), "client01");
    assert!(attr(span, ERROR_TYPE).is_none());
    assert!(attr(span, USAGE_ESTIMATED).is_none());
    assert!(
        attr(span, INPUT_MESSAGES).is_none(),
        "no content unless capture is on"
    );
    let all_text = format!("{:?}", span.attributes);
    assert!(!all_text.contains("secretly"), "{all_text}");
    assert!(!all_text.contains("Hi there"), "{all_text}");
}

type Frames = tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, Error>>;

/// An SSE answer whose frames the test sends one by one.
fn sse_upstream() -> (Frames, Response<Body>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut res = served(Body::new(StreamBody::new(stream)));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "text/event-stream".parse().unwrap(),
    );
    (tx, res)
}

fn data(s: &str) -> Result<http_body::Frame<Bytes>, Error> {
    Ok(http_body::Frame::data(Bytes::from(s.to_owned())))
}

/// The one answer a test's upstream gives.
type Answer = Arc<Mutex<Option<Result<Response<Body>, Error>>>>;

fn stack_over<T>(
    layer: GenAiSpanLayer<T>,
    answer: Answer,
) -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = Error>
where
    T: opentelemetry::trace::Tracer + Send + Sync + 'static,
    T::Span: Send + Sync + 'static,
{
    ServiceBuilder::new()
        .layer(ReadRequestLayer::new(1 << 20))
        .layer(layer)
        .service(service_fn(move |_req: LlmRequest| {
            let answer = answer.lock().unwrap().take().expect("one request");
            async move { answer }
        }))
}

#[tokio::test]
async fn a_stream_span_ends_after_its_last_event_with_the_streamed_usage() {
    let (tracer, spans, _p) = tracer();
    let (tx, res) = sse_upstream();
    let svc = stack_over(
        GenAiSpanLayer::new(tracer),
        Arc::new(Mutex::new(Some(Ok(res)))),
    );
    let req = Request::post("/v1/chat/completions")
        .body(Body::full(
            r#"{"model":"fast","stream":true,"stream_options":{"include_usage":true}}"#,
        ))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let mut body = res.into_body();
    tx.send(data(
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    tx.send(data(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":42}}\n\n",
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    tx.send(data("data: [DONE]\n\n")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    assert!(spans.spans().is_empty(), "open until the stream ends");
    drop(tx);
    assert!(body.frame().await.is_none());
    let all = spans.spans();
    assert_eq!(all.len(), 1);
    assert_eq!(int(&all[0], USAGE_OUTPUT_TOKENS), 42);
    assert_eq!(int(&all[0], USAGE_INPUT_TOKENS), 5);
    assert_eq!(attr(&all[0], STREAM), Some(&Value::Bool(true)));
    assert!(attr(&all[0], CANCELLED).is_none());
    assert_eq!(all[0].status, Status::Unset);
}

#[tokio::test]
async fn a_stream_failing_after_its_start_ends_the_span_with_the_reason() {
    let (tracer, spans, _p) = tracer();
    let (tx, res) = sse_upstream();
    let svc = stack_over(
        GenAiSpanLayer::new(tracer),
        Arc::new(Mutex::new(Some(Ok(res)))),
    );
    let req = Request::post("/v1/chat/completions")
        .body(Body::full(r#"{"model":"fast","stream":true}"#))
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    tx.send(data(
        "data: {\"choices\":[{\"delta\":{\"content\":\"0123456789abcdef\"}}]}\n\n",
    ))
    .await
    .unwrap();
    body.frame().await.unwrap().unwrap();
    tx.send(Err(Error::new(Reason::UpstreamError, "cut")))
        .await
        .unwrap();
    assert!(body.frame().await.unwrap().is_err());
    let all = spans.spans();
    assert_eq!(all.len(), 1);
    assert_eq!(string(&all[0], ERROR_TYPE), "upstream_error");
    assert!(
        matches!(&all[0].status, Status::Error { description } if description == "upstream_error")
    );
    // No usage came: estimates, said so.
    assert_eq!(attr(&all[0], USAGE_ESTIMATED), Some(&Value::Bool(true)));
    assert!(int(&all[0], USAGE_OUTPUT_TOKENS) > 0);
}

#[tokio::test]
async fn a_client_gone_mid_stream_ends_the_span_as_cancelled() {
    let (tracer, spans, _p) = tracer();
    let (tx, res) = sse_upstream();
    let svc = stack_over(
        GenAiSpanLayer::new(tracer),
        Arc::new(Mutex::new(Some(Ok(res)))),
    );
    let req = Request::post("/v1/chat/completions")
        .body(Body::full(r#"{"model":"fast","stream":true}"#))
        .unwrap();
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    tx.send(data("data: {\"choices\":[]}\n\n")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    assert!(spans.spans().is_empty());
    drop(body);
    let all = spans.spans();
    assert_eq!(all.len(), 1);
    assert_eq!(attr(&all[0], CANCELLED), Some(&Value::Bool(true)));
}

#[tokio::test]
async fn a_refusal_is_a_span_with_its_reason_and_status() {
    let (tracer, spans, _p) = tracer();
    let err = Error::new(Reason::BudgetExceeded, "over budget");
    let svc = stack_over(
        GenAiSpanLayer::new(tracer),
        Arc::new(Mutex::new(Some(Err(err)))),
    );
    let req = Request::post("/v1/messages")
        .body(Body::full(
            r#"{"model":"claude","max_tokens":10,"messages":[]}"#,
        ))
        .unwrap();
    let e = svc.oneshot(req).await.unwrap_err();
    assert_eq!(e.reason(), Reason::BudgetExceeded);
    let all = spans.spans();
    assert_eq!(all.len(), 1);
    let span = &all[0];
    assert_eq!(span.name, "chat claude");
    assert_eq!(string(span, ERROR_TYPE), "budget_exceeded");
    assert_eq!(int(span, HTTP_STATUS), 402);
    assert_eq!(string(span, PROVIDER_NAME), "anthropic");
    assert!(
        !format!("{span:?}").contains("over budget"),
        "no error message"
    );
}

#[tokio::test]
async fn content_is_captured_only_when_asked_and_bounded() {
    let (tracer, spans, _p) = tracer();
    let layer = GenAiSpanLayer::new(tracer).capture_content(true);
    let answer = Arc::new(Mutex::new(Some(Ok(served(Body::full(JSON_ANSWER))))));
    let svc = stack_over(layer, answer);
    let long = "é".repeat(CAPTURE_LIMIT);
    let body = format!(
        r#"{{"model":"fast","system":"Be terse.","messages":[{{"role":"user","content":"{long}"}}]}}"#
    );
    let res = svc
        .oneshot(
            Request::post("/v1/messages")
                .body(Body::full(body))
                .unwrap(),
        )
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
    let all = spans.spans();
    assert_eq!(string(&all[0], SYSTEM_INSTRUCTIONS), r#""Be terse.""#);
    let input = string(&all[0], INPUT_MESSAGES);
    assert!(
        input.starts_with(r#"[{"content":"éé"#) || input.starts_with(r#"[{"role":"user""#),
        "{input}"
    );
    assert!(input.len() <= CAPTURE_LIMIT + '…'.len_utf8());
    assert!(input.ends_with('…'));
}

#[tokio::test]
async fn a_client_traceparent_makes_the_span_its_child() {
    let (tracer, spans, _p) = tracer();
    let answer = Arc::new(Mutex::new(Some(Ok(served(Body::full(JSON_ANSWER))))));
    let svc = stack_over(GenAiSpanLayer::new(tracer), answer);
    let req = Request::post("/v1/embeddings")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::full(r#"{"model":"embed","input":"x"}"#))
        .unwrap();
    svc.oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let all = spans.spans();
    let span = &all[0];
    assert_eq!(
        span.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(string(span, OPERATION_NAME), "embeddings");
    let _ = opentelemetry::Context::current().span();
}

#[tokio::test]
async fn a_non_2xx_answer_that_is_no_tollgate_error_has_its_status_as_error_type() {
    let (tracer, spans, _p) = tracer();
    let mut res = Response::new(Body::full("{}"));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let svc = stack_over(
        GenAiSpanLayer::new(tracer),
        Arc::new(Mutex::new(Some(Ok(res)))),
    );
    let req = Request::post("/v1/completions")
        .body(Body::full(r#"{"model":"m","prompt":"p"}"#))
        .unwrap();
    svc.oneshot(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let all = spans.spans();
    assert_eq!(string(&all[0], ERROR_TYPE), "503");
    assert_eq!(string(&all[0], OPERATION_NAME), "text_completion");
}

mod otlp_settings {
    use super::super::otlp::{DropOffRuntime, Otlp, Protocol};
    use super::Collect;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::runtime::Tokio;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

    /// Without `DropOffRuntime`, the last drop shuts the provider down on
    /// this (current-thread) runtime's only thread, blocking on the batch
    /// task that thread should run: this test would never end.
    #[tokio::test]
    async fn the_last_handle_dropped_on_the_runtime_does_not_block_it() {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(spans.clone(), Tokio).build())
            .build();
        let tracer = DropOffRuntime::new(provider.tracer("t"));
        let provider = DropOffRuntime::new(provider);
        let mut span = tracer.start("s");
        span.end();
        drop(span);
        drop(tracer);
        drop(provider);
        tokio::task::yield_now().await;
    }

    #[test]
    fn bad_settings_are_refused_by_name_without_header_values() {
        let e = Otlp::new()
            .endpoint("https://collector:4318")
            .check()
            .unwrap_err();
        assert_eq!(e.field, "endpoint");
        assert!(e.problem.contains("https"), "{e}");
        let e = Otlp::new().endpoint("not a url").check().unwrap_err();
        assert_eq!(e.field, "endpoint");
        let e = Otlp::new().sampling_ratio(1.5).check().unwrap_err();
        assert_eq!(e.field, "sampling_ratio");
        let e = Otlp::new()
            .header("authorization", "Bearer t0k3n\n")
            .check()
            .unwrap_err();
        assert_eq!(e.field, "headers");
        assert!(!e.to_string().contains("t0k3n"), "{e}");
        let debug = format!("{:?}", Otlp::new().header("authorization", "Bearer t0k3n"));
        assert!(!debug.contains("t0k3n"), "{debug}");
        assert!(
            Otlp::new()
                .endpoint("http://127.0.0.1:4317")
                .protocol(Protocol::Grpc)
                .check()
                .is_ok()
        );
        assert_eq!(Protocol::from_name("grpc"), Some(Protocol::Grpc));
        assert_eq!(Protocol::from_name("http/json"), None);
    }
}
