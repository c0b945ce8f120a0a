//! `GET /model/info` (and `/v1/model/info`), `GET /models`: what the
//! gateway serves, for the master key, in LiteLLM's shapes. Never an
//! upstream's URL, key, header or other credential: only names, the API
//! spoken, prices and the output cap.

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{Admin, Answer, Params, bad, ok, query};

/// One deployment of a model group, as `/model/info` shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelInfo {
    /// The model name clients send (the group).
    pub model_name: String,
    /// The deployment's name (`provider/model` unless configured).
    pub deployment: String,
    /// The provider's name (`openai`, `anthropic`, …).
    pub provider: String,
    /// The API the upstream speaks (`openai`, `anthropic`, `azure`, `bedrock`, …).
    pub api: String,
    /// The upstream's model name.
    pub upstream_model: String,
    /// USD per input token, when priced.
    pub input_cost_per_token: Option<f64>,
    /// USD per output token, when priced.
    pub output_cost_per_token: Option<f64>,
    /// The output cap a budget reserves without `max_tokens`.
    pub max_output_tokens: Option<u64>,
}

fn info_json(m: &ModelInfo) -> Value {
    json!({
        "model_name": m.model_name,
        "litellm_params": {
            "model": format!("{}/{}", m.provider, m.upstream_model),
        },
        "model_info": {
            "id": m.deployment,
            "deployment": m.deployment,
            "provider": m.provider,
            "litellm_provider": m.provider,
            "api": m.api,
            "upstream_model": m.upstream_model,
            "input_cost_per_token": m.input_cost_per_token,
            "output_cost_per_token": m.output_cost_per_token,
            "max_output_tokens": m.max_output_tokens,
        },
    })
}

/// `GET /model/info?litellm_model_id=`: every deployment, or one by its id.
pub(super) async fn info(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    let q = query(q)?;
    let mut id = None;
    for (k, v) in &q {
        match k.as_str() {
            "litellm_model_id" if !v.is_empty() => id = Some(v.as_str()),
            "litellm_model_id" => {}
            _ => return Err(bad(k, "unknown parameter; use litellm_model_id").into()),
        }
    }
    let data: Vec<Value> = a
        .models
        .iter()
        .filter(|m| id.is_none_or(|id| m.deployment == id))
        .map(info_json)
        .collect();
    if let (Some(_), true) = (id, data.is_empty()) {
        return Err(bad("litellm_model_id", "no deployment has this id").into());
    }
    ok(json!({ "data": data }))
}

/// `GET /models`: every model group, in OpenAI's list shape (the master
/// key's view; a client key's is `GET /v1/models`, filtered by its grants).
pub(super) async fn list(State(a): State<Admin>, headers: HeaderMap, q: Params) -> Answer {
    a.check(&headers)?;
    // LiteLLM's clients may ask for `return_wildcard_routes` and the like:
    // only their defaults.
    for (k, v) in &query(q)? {
        if !v.is_empty() && v != "false" {
            return Err(bad(
                k,
                "is not supported by this gateway's /models (only empty or false)",
            )
            .into());
        }
    }
    let mut names: Vec<&str> = a.models.iter().map(|m| m.model_name.as_str()).collect();
    names.dedup();
    let data: Vec<Value> = names
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"}))
        .collect();
    ok(json!({"object": "list", "data": data}))
}
