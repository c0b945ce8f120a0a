//! The one table of upstream error bodies whose *shape* changes what a
//! status means: "this model does not exist or was retired" and "a content
//! filter refused this request".
//!
//! An upstream status alone does not say enough. A 404 is a retired model
//! when the body says so, but the same 404 from an nginx page, a FastAPI
//! `{"detail":"Not Found"}` or OpenAI's own "Invalid URL" answer only means
//! that this upstream does not serve the path the gateway called. A 400 is
//! the client's fault, unless its body names a content filter (still the
//! client's, but worth its own reason). [`Error::from_upstream`] asks this
//! table, on the bounded, sanitized copy of the body it keeps (`raw`), which
//! is parsed JSON: rows match fields of that JSON, never substrings of
//! arbitrary text or HTML.
//!
//! It also reads a retry delay that a body carries instead of a
//! `Retry-After` header ([`retry_delay`]: Google's `RetryInfo`).
//!
//! [`MODEL_GONE`] is consulted for upstream statuses 400, 404 and 410;
//! [`CONTENT_FILTERED`] for 400, 403 and 422. Each row carries an example
//! body, which a unit test checks the row matches (and every other row of
//! the other table does not).
//!
//! [`Error::from_upstream`]: crate::error::Error::from_upstream

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

/// One known body shape: who sends it, an example, and its matcher.
#[derive(Clone, Copy)]
pub struct Shape {
    /// The provider (or server) that answers this way.
    pub provider: &'static str,
    /// The status it comes with.
    pub status: u16,
    /// An example body of that shape.
    pub example: &'static str,
    matches: fn(StatusCode, &Value) -> bool,
}

impl Shape {
    /// Whether a parsed body (with its status) has this shape.
    pub fn matches(&self, status: StatusCode, raw: &Value) -> bool {
        (self.matches)(status, raw)
    }
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shape")
            .field("provider", &self.provider)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Answers that say the model is unknown or retired: 404
/// `upstream_model_not_found`, `permanent: true`, the long cooldown.
pub const MODEL_GONE: &[Shape] = &[
    Shape {
        provider: "OpenAI (and Groq, Together, DeepInfra, … OpenAI-compatible APIs)",
        status: 404,
        example: r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
        matches: |_, v| code(v) == Some("model_not_found"),
    },
    Shape {
        provider: "Groq (a retired model)",
        status: 400,
        example: r#"{"error":{"message":"The model `mixtral-8x7b-32768` has been decommissioned and is no longer supported.","type":"invalid_request_error","code":"model_decommissioned"}}"#,
        matches: |_, v| code(v) == Some("model_decommissioned"),
    },
    Shape {
        provider: "Anthropic",
        status: 404,
        example: r#"{"type":"error","error":{"type":"not_found_error","message":"model: claude-9-opus"}}"#,
        matches: |_, v| not_found_naming_a_model(v),
    },
    Shape {
        provider: "vLLM (top-level error object)",
        status: 404,
        example: r#"{"object":"error","message":"The model `llama-9` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
        matches: |_, v| not_found_naming_a_model(v),
    },
    Shape {
        provider: "vLLM (nested `error`)",
        status: 404,
        example: r#"{"error":{"message":"The model `llama-9` does not exist.","type":"NotFoundError","param":"model","code":404}}"#,
        matches: |_, v| not_found_naming_a_model(v),
    },
    Shape {
        provider: "Azure OpenAI",
        status: 404,
        example: r#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}"#,
        matches: |_, v| code(v) == Some("DeploymentNotFound"),
    },
    Shape {
        provider: "Gemini / Vertex AI",
        status: 404,
        example: r#"{"error":{"code":404,"message":"models/gemini-9-pro is not found for API version v1beta, or is not supported for generateContent.","status":"NOT_FOUND"}}"#,
        matches: |_, v| {
            let e = &v["error"];
            e["status"].as_str() == Some("NOT_FOUND") && names_a_model(e["message"].as_str())
        },
    },
    Shape {
        provider: "Ollama",
        status: 404,
        example: r#"{"error":"model 'llama9' not found, try pulling it first"}"#,
        matches: |_, v| {
            v["error"].as_str().is_some_and(|m| {
                let m = m.trim_start().to_ascii_lowercase();
                m.starts_with("model") && m.contains("not found")
            })
        },
    },
    Shape {
        provider: "Mistral",
        status: 400,
        example: r#"{"object":"error","message":"Invalid model: mistral-9","type":"invalid_model","param":null,"code":"1500"}"#,
        matches: |_, v| {
            v["type"].as_str() == Some("invalid_model")
                || v["error"]["type"].as_str() == Some("invalid_model")
        },
    },
    Shape {
        provider: "AWS Bedrock (an unknown model id)",
        status: 404,
        example: r#"{"message":"Could not resolve the foundation model from the provided model identifier.","__type":"ResourceNotFoundException"}"#,
        matches: |_, v| {
            aws_type(v) == Some("ResourceNotFoundException") && names_a_model(v["message"].as_str())
        },
    },
    Shape {
        provider: "AWS Bedrock (an invalid or retired model id)",
        status: 400,
        example: r#"{"message":"The provided model identifier is invalid.","__type":"ValidationException"}"#,
        matches: |_, v| {
            aws_type(v) == Some("ValidationException")
                && v["message"].as_str().is_some_and(|m| {
                    let m = m.to_ascii_lowercase();
                    m.contains("model identifier is invalid")
                        || (m.contains("model")
                            && (m.contains("end of its life") || m.contains("legacy")))
                })
        },
    },
    Shape {
        provider: "any: 410 Gone with a JSON error body",
        status: 410,
        example: r#"{"error":{"message":"This model was retired on 2025-01-01."}}"#,
        matches: |status, v| {
            status == StatusCode::GONE
                && v.as_object()
                    .is_some_and(|o| o.contains_key("error") || o.contains_key("message"))
        },
    },
];

/// Answers that say a content filter refused the request: reason
/// `upstream_content_filtered` with the upstream's status, not retried, no
/// cooldown (another deployment of the same model would refuse it too).
pub const CONTENT_FILTERED: &[Shape] = &[
    Shape {
        provider: "OpenAI",
        status: 400,
        example: r#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#,
        matches: |_, v| code(v) == Some("content_policy_violation"),
    },
    Shape {
        provider: "Azure OpenAI",
        status: 400,
        example: r#"{"error":{"message":"The response was filtered due to the prompt triggering Azure OpenAI's content management policy.","type":null,"param":"prompt","code":"content_filter","status":400,"innererror":{"code":"ResponsibleAIPolicyViolation","content_filter_result":{"hate":{"filtered":true,"severity":"high"}}}}}"#,
        matches: |_, v| {
            code(v) == Some("content_filter")
                || v["error"]["innererror"]["code"].as_str() == Some("ResponsibleAIPolicyViolation")
        },
    },
    Shape {
        provider: "OpenRouter (moderation: input flagged)",
        status: 403,
        example: r#"{"error":{"code":403,"message":"Input was flagged by moderation.","metadata":{"reasons":["violence"],"flagged_input":"…","provider_name":"openai","model_slug":"openai/gpt-4o"}}}"#,
        matches: |_, v| {
            let m = &v["error"]["metadata"];
            m["reasons"].is_array() && m.get("flagged_input").is_some()
        },
    },
];

/// Upstream statuses whose body is checked against [`MODEL_GONE`].
pub fn may_say_model_gone(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 404 | 410)
}

/// Upstream statuses whose body is checked against [`CONTENT_FILTERED`].
pub fn may_say_content_filtered(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 403 | 422)
}

/// Whether the upstream says the model does not exist or was retired.
pub fn model_gone(status: StatusCode, raw: Option<&Value>) -> bool {
    may_say_model_gone(status)
        && raw.is_some_and(|v| MODEL_GONE.iter().any(|s| s.matches(status, v)))
}

/// Whether the upstream says a content filter refused the request.
pub fn content_filtered(status: StatusCode, raw: Option<&Value>) -> bool {
    may_say_content_filtered(status)
        && raw.is_some_and(|v| CONTENT_FILTERED.iter().any(|s| s.matches(status, v)))
}

/// A retry delay carried in the body rather than in a `Retry-After` header:
/// Google's `RetryInfo` (Gemini, Vertex AI) in `error.details`, as
/// `{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}`.
/// [`Error::from_upstream`](crate::error::Error::from_upstream) uses it for a
/// 429 or a 5xx without the header.
pub fn retry_delay(raw: &Value) -> Option<Duration> {
    raw["error"]["details"].as_array()?.iter().find_map(|d| {
        if !d["@type"].as_str()?.ends_with("google.rpc.RetryInfo") {
            return None;
        }
        let secs: f64 = d["retryDelay"].as_str()?.strip_suffix('s')?.parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
    })
}

/// The AWS exception name a Bedrock body carries as `__type` (the provider
/// folds in the `x-amzn-ErrorType` header's), without a namespace prefix.
fn aws_type(v: &Value) -> Option<&str> {
    let t = v["__type"].as_str()?;
    Some(t.rsplit('#').next().unwrap_or(t))
}

/// `error.code`, or a top-level `code`, when it is a string.
fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str().or_else(|| v["code"].as_str())
}

/// A "not found" typed error (Anthropic's `not_found_error`, vLLM's
/// `NotFoundError`), top-level or under `error`, whose `param` is `model` or
/// whose message names a model.
fn not_found_naming_a_model(v: &Value) -> bool {
    [v, &v["error"]].into_iter().any(|e| {
        matches!(
            e["type"].as_str(),
            Some("not_found_error" | "NotFoundError")
        ) && (e["param"].as_str() == Some("model") || names_a_model(e["message"].as_str()))
    })
}

fn names_a_model(message: Option<&str>) -> bool {
    message.is_some_and(|m| m.to_ascii_lowercase().contains("model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn every_row_matches_its_own_example_and_no_row_of_the_other_table() {
        for row in MODEL_GONE {
            let status = StatusCode::from_u16(row.status).unwrap();
            let v = parse(row.example);
            assert!(model_gone(status, Some(&v)), "{}", row.provider);
            assert!(!content_filtered(status, Some(&v)), "{}", row.provider);
        }
        for row in CONTENT_FILTERED {
            let status = StatusCode::from_u16(row.status).unwrap();
            let v = parse(row.example);
            assert!(content_filtered(status, Some(&v)), "{}", row.provider);
            assert!(!model_gone(status, Some(&v)), "{}", row.provider);
        }
    }

    #[test]
    fn a_route_that_is_not_served_is_not_a_model_gone() {
        let not_found = StatusCode::NOT_FOUND;
        for body in [
            // OpenAI's own unknown path.
            r#"{"error":{"message":"Invalid URL (POST /v1/responses)","type":"invalid_request_error","param":null,"code":null}}"#,
            // FastAPI (vLLM, TGI, …) without the route.
            r#"{"detail":"Not Found"}"#,
            // Anthropic's unknown path.
            r#"{"type":"error","error":{"type":"not_found_error","message":"Not Found"}}"#,
            // Gemini without the method.
            r#"{"error":{"code":404,"message":"Method not found.","status":"NOT_FOUND"}}"#,
            // Ollama's unknown path.
            r#"{"error":"404 page not found"}"#,
        ] {
            assert!(!model_gone(not_found, Some(&parse(body))), "{body}");
        }
        // Text and HTML pages are kept as a JSON string: never a model gone,
        // whatever words they contain.
        let page = Value::String("404 Not Found: the model route does not exist".into());
        assert!(!model_gone(not_found, Some(&page)));
        assert!(!model_gone(not_found, None));
        assert!(!model_gone(StatusCode::GONE, Some(&page)), "410 needs JSON");
    }

    #[test]
    fn retry_delays_in_google_bodies() {
        let v = parse(
            r#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure"},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"1.5s"}]}}"#,
        );
        assert_eq!(retry_delay(&v), Some(Duration::from_millis(1500)));
        for body in [
            r#"{"error":{"details":[{"@type":"x.RetryInfo","retryDelay":"5s"}]}}"#,
            r#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"-5s"}]}}"#,
            r#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"soon"}]}}"#,
            r#"{"error":{"message":"no details"}}"#,
        ] {
            assert_eq!(retry_delay(&parse(body)), None, "{body}");
        }
    }

    #[test]
    fn the_table_is_asked_only_for_its_statuses() {
        let gone = parse(MODEL_GONE[0].example);
        assert!(!model_gone(StatusCode::INTERNAL_SERVER_ERROR, Some(&gone)));
        assert!(!model_gone(StatusCode::FORBIDDEN, Some(&gone)));
        let filtered = parse(CONTENT_FILTERED[0].example);
        assert!(!content_filtered(StatusCode::NOT_FOUND, Some(&filtered)));
        // A plain 400 is neither.
        let plain = parse(r#"{"error":{"message":"bad field","code":"invalid_value"}}"#);
        assert!(!model_gone(StatusCode::BAD_REQUEST, Some(&plain)));
        assert!(!content_filtered(StatusCode::BAD_REQUEST, Some(&plain)));
    }
}
