//! The mock's Anthropic Messages API: `POST /v1/messages` (JSON or SSE with
//! Anthropic's real event names) and `POST /v1/messages/count_tokens`, with
//! Anthropic's fault shapes. A module of `mock_upstream.rs`.
//!
//! The answer is a text block `tok0 tok1 … tok{N-1}` (`--tokens N`), streamed
//! as `message_start`, `content_block_start`, `ping`, one `content_block_delta`
//! per token, `content_block_stop`, `message_delta` (`stop_reason:
//! "end_turn"`, `usage.output_tokens`) and `message_stop`. Usage:
//! `input_tokens` = body length / 4 (at least 1), `output_tokens` = N. With
//! `--require-key KEY`, a request without `x-api-key: KEY` gets 401. The
//! client's `anthropic-version` is required, as Anthropic requires it.
//!
//! Faults (header `x-mock-fault` or body field `mock_fault`):
//!
//! | fault | behaviour |
//! |---|---|
//! | `429`, `429:S` | 429, `retry-after: S` (default 6), `rate_limit_error` |
//! | `529` | 529, `overloaded_error` |
//! | `500` | 500, `api_error` |
//! | `401` | 401, `authentication_error` (`invalid x-api-key`) |
//! | `403` | 403, `permission_error` |
//! | `404` | 404, `not_found_error` naming the model (`model: <model>`) |
//! | `400` | 400, `invalid_request_error` |
//! | `delay:MS` | wait MS ms before the headers, then answer normally |
//! | `thinking` | a `thinking` block (with a `signature`) before the text block; streamed as `thinking_delta`s and a `signature_delta` |
//! | `tool_use:BYTES` | a `tool_use` block (`mock_tool`) whose input is a JSON object of BYTES bytes, streamed as `input_json_delta`s of 4 KiB, generated lazily; `stop_reason: "tool_use"` |
//! | `cache` | usage with `cache_read_input_tokens: 100` and `cache_creation_input_tokens: 50` |
//! | `error_event:N` | stream: N text deltas, then `event: error` (`overloaded_error`) and the end |
//! | `cut:N` | stream: N text deltas, then the connection is aborted |
//! | `no_stop` | stream: everything but `message_stop`, then a clean end |
//! | `garbage` | stream: `message_start`, then an event whose data is not JSON, then `message_stop`; JSON: a truncated object |

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::{AppState, abort_pause, cut_error, record, sleep_or_shutdown, sse_response};

/// Which Anthropic route.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Messages,
    CountTokens,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Status(u16, Option<u64>),
    Delay(u64),
    Thinking,
    ToolUse(u64),
    Cache,
    ErrorEvent(u64),
    Cut(u64),
    NoStop,
    Garbage,
}

impl Fault {
    fn parse(raw: &str) -> Option<Fault> {
        let (name, arg) = match raw.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (raw, None),
        };
        let n = || arg.and_then(|a| a.parse::<u64>().ok());
        Some(match (name, arg) {
            ("429", _) => Fault::Status(429, Some(n().unwrap_or(6))),
            ("529" | "500" | "401" | "403" | "404" | "400", None) => {
                Fault::Status(name.parse().ok()?, None)
            }
            ("delay", Some(_)) => Fault::Delay(n()?),
            ("thinking", None) => Fault::Thinking,
            ("tool_use", Some(a)) => Fault::ToolUse(super::parse_size(a)?),
            ("cache", None) => Fault::Cache,
            ("error_event", Some(_)) => Fault::ErrorEvent(n()?),
            ("cut", Some(_)) => Fault::Cut(n()?),
            ("no_stop", None) => Fault::NoStop,
            ("garbage", None) => Fault::Garbage,
            _ => return None,
        })
    }
}

/// An error in Anthropic's shape.
fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("request-id", HeaderValue::from_static("req_mock"));
    resp
}

fn status_fault(status: u16, retry_after: Option<u64>, model: &str) -> Response {
    let mut resp = match status {
        429 => error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit.",
        ),
        529 => error(529, "overloaded_error", "Overloaded"),
        500 => error(500, "api_error", "Internal server error"),
        401 => error(401, "authentication_error", "invalid x-api-key"),
        403 => error(
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => error(404, "not_found_error", &format!("model: {model}")),
        _ => error(
            400,
            "invalid_request_error",
            "messages: at least one message is required",
        ),
    };
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(s));
    }
    resp
}

pub(super) async fn handle(State(st): State<AppState>, req: Request, route: Route) -> Response {
    let (parts, body) = match record(&st, req).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    if parts.method != Method::POST {
        return error(405, "invalid_request_error", "Method not allowed.");
    }
    if let Some(key) = &st.cfg.require_key {
        let sent = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if sent != Some(key.as_str()) {
            return error(401, "authentication_error", "invalid x-api-key");
        }
    }
    if !parts.headers.contains_key("anthropic-version") {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error(
                400,
                "invalid_request_error",
                "The request body is not valid JSON.",
            );
        }
    };
    let raw_fault = parts
        .headers
        .get("x-mock-fault")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            json.get("mock_fault")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let fault = match raw_fault.as_deref().map(Fault::parse) {
        None => None,
        Some(Some(f)) => Some(f),
        Some(None) => {
            return error(
                400,
                "invalid_request_error",
                &format!("unknown mock fault `{}`", raw_fault.unwrap_or_default()),
            );
        }
    };
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-small")
        .to_owned();
    let latency = match fault {
        Some(Fault::Delay(ms)) => Duration::from_millis(ms),
        _ => st.cfg.latency,
    };
    if !latency.is_zero() && !sleep_or_shutdown(latency, st.shutdown.clone()).await {
        return error(500, "api_error", "shutting down");
    }
    if let Some(Fault::Status(status, retry_after)) = fault {
        return status_fault(status, retry_after, &model);
    }
    let input_tokens = (body.len() as u64 / 4).max(1);
    if route == Route::CountTokens {
        let mut resp = Response::new(Body::from(
            json!({"input_tokens": input_tokens}).to_string(),
        ));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    let id = format!(
        "msg_mock_{}",
        st.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut usage = json!({"input_tokens": input_tokens, "output_tokens": st.cfg.tokens});
    if fault == Some(Fault::Cache) {
        usage["cache_read_input_tokens"] = json!(100);
        usage["cache_creation_input_tokens"] = json!(50);
    }
    let stream = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let tokens: Vec<String> = st
        .content
        .split(' ')
        .enumerate()
        .map(|(i, t)| {
            if i == 0 {
                t.to_owned()
            } else {
                format!(" {t}")
            }
        })
        .collect();
    if !stream {
        if fault == Some(Fault::Garbage) {
            let mut resp = Response::new(Body::from(r#"{"id":"msg_broken","content":["#));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return resp;
        }
        let mut content = Vec::new();
        if fault == Some(Fault::Thinking) {
            content.push(json!({"type": "thinking", "thinking": "Let me think.", "signature": "sig-mock-0001"}));
        }
        let stop_reason = match fault {
            Some(Fault::ToolUse(bytes)) => {
                content.push(
                    json!({"type": "tool_use", "id": "toolu_mock_1", "name": "mock_tool",
                    "input": {"data": "x".repeat(bytes.saturating_sub(11) as usize)}}),
                );
                "tool_use"
            }
            _ => {
                content.push(json!({"type": "text", "text": st.content}));
                "end_turn"
            }
        };
        let answer = json!({"id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null, "usage": usage});
        let mut resp = Response::new(Body::from(answer.to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut head = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": start_usage}}),
    )];
    if fault == Some(Fault::Garbage) {
        head.push(Bytes::from_static(
            b"event: content_block_delta\ndata: {not json\n\n",
        ));
        head.push(event("message_stop", json!({"type": "message_stop"})));
        return sse_response(Body::from_stream(stream::iter(
            head.into_iter().map(Ok::<_, std::io::Error>),
        )));
    }
    let mut index = 0;
    if fault == Some(Fault::Thinking) {
        head.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ));
        for t in ["Let me", " think."] {
            head.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": t}}),
            ));
        }
        head.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig-mock-0001"}}),
        ));
        head.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    }
    head.push(event("ping", json!({"type": "ping"})));
    let (block_start, deltas, stop_reason, output_tokens): (
        Bytes,
        Box<dyn Iterator<Item = Bytes> + Send>,
        &str,
        u64,
    ) = match fault {
        Some(Fault::ToolUse(total)) => {
            let start = event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": "toolu_mock_1", "name": "mock_tool", "input": {}}}),
            );
            // `{"data":"xxxx…"}` in 4 KiB `partial_json` pieces, made lazily.
            let filler = total.saturating_sub(11);
            let pieces = std::iter::once("{\"data\":\"".to_owned())
                .chain(
                    (0..filler.div_ceil(4096))
                        .map(move |i| "x".repeat((filler - i * 4096).min(4096) as usize)),
                )
                .chain(std::iter::once("\"}".to_owned()))
                .map(move |p| {
                    event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": p}}),
                    )
                });
            (start, Box::new(pieces), "tool_use", total.div_ceil(4))
        }
        _ => {
            let start = event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}}),
            );
            let n = match fault {
                Some(Fault::ErrorEvent(n) | Fault::Cut(n)) => n as usize,
                _ => tokens.len(),
            };
            let deltas: Vec<Bytes> = tokens.iter().take(n).map(|t| event("content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}}))).collect();
            (
                start,
                Box::new(deltas.into_iter()),
                "end_turn",
                st.cfg.tokens as u64,
            )
        }
    };
    head.push(block_start);
    let mut tail = Vec::new();
    match fault {
        Some(Fault::ErrorEvent(_)) => {
            tail.push(event("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
        }
        Some(Fault::Cut(_)) => {}
        _ => {
            tail.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
            tail.push(event(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": output_tokens}}),
            ));
            if fault != Some(Fault::NoStop) {
                tail.push(event("message_stop", json!({"type": "message_stop"})));
            }
        }
    }
    let interval = st.cfg.chunk_interval;
    let shutdown = st.shutdown.clone();
    let body = stream::iter(head.into_iter().chain(deltas).chain(tail)).then(move |b| async move {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        Ok::<_, std::io::Error>(b)
    });
    if matches!(fault, Some(Fault::Cut(_))) {
        let cut = stream::once(async move {
            abort_pause(false, shutdown).await;
            Err::<Bytes, _>(cut_error())
        });
        return sse_response(Body::from_stream(body.chain(cut)));
    }
    sse_response(Body::from_stream(body))
}
