//! Virtual keys, model access and the admin API through real sockets: the
//! reference gateway with an embedded SQLite key store, in front of the
//! bundled mock upstream, all on 127.0.0.1.
//!
//! Every answer these tests receive, and every log line, is checked for the
//! secrets and hashes of every key involved.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use common::*;
use serde_json::{Value, json};
use tollgate::keys::KeyHash;

/// Four model groups, an access group, SQLite, and the admin API.
const CONFIG: &str = r#"
[[groups]]
name = "gpt-4o-mini"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-small"

[[groups]]
name = "gpt-4o"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-large"

[[groups]]
name = "openai/o3"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-large"

[[groups]]
name = "mistral-small"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-small"

[access_groups]
cheap = ["gpt-4o-mini", "mistral-small"]

# Keys here carry fair-queuing weights: the queue that enforces them.
[fair_queue]

[keys]
store = "sqlite"
sqlite_path = "{db}"
master_key_env = "{master_env}"

[[keys.static]]
key_env = "TOLLGATE_TEST_CLIENT_KEY"
models = ["*"]
"#;

const ALL: [&str; 4] = ["gpt-4o", "gpt-4o-mini", "mistral-small", "openai/o3"];

/// Every key secret and hash seen by any test, checked against every answer and the logs.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn remember(key: &str) {
    let rest = key.strip_prefix("tg-").unwrap();
    let (id, secret) = rest.split_once('-').unwrap();
    let hex = KeyHash::of(id, secret).to_hex();
    let mut s = SECRETS.lock().unwrap();
    s.extend([
        key.to_owned(),
        secret.to_owned(),
        hex.to_uppercase(),
        hex[..32].to_owned(),
        hex,
    ]);
}

fn assert_clean(what: &str, text: &str) {
    assert_no_secrets(what, text);
    for s in SECRETS.lock().unwrap().iter() {
        assert!(
            !text.contains(s.as_str()),
            "{what} leaks a key secret or hash ({s}):\n{text}"
        );
    }
}

fn db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-keys-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("keys.db")
}

async fn start(db: &std::path::Path, mock: &MockServer) -> Gateway {
    remember(CLIENT_KEY);
    gateway(&CONFIG.replace("{db}", &db.display().to_string()), mock).await
}

async fn answer(res: reqwest::Response) -> Answer {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap_or_default();
    let a = Answer {
        status,
        headers,
        body,
    };
    assert_clean("an answer", &format!("{:?}\n{}", a.headers, a.body));
    a
}

/// An admin call with the master key (`None`: no key; `Some(k)`: that key).
async fn admin_as(
    gw: &Gateway,
    auth: Option<&str>,
    method: &str,
    path: &str,
    body: Value,
) -> Answer {
    let url = gw.url(path);
    let mut req = match method {
        "GET" => anonymous().get(url),
        _ => anonymous().post(url).json(&body),
    };
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    answer(req.send().await.unwrap()).await
}

async fn admin(gw: &Gateway, method: &str, path: &str, body: Value) -> Value {
    let a = admin_as(gw, Some(MASTER_KEY), method, path, body).await;
    assert_eq!(a.status, 200, "{method} {path}: {}", a.body);
    a.json()
}

/// Makes a key through the admin API; returns the whole key and its id.
async fn generate(gw: &Gateway, body: Value) -> (String, String) {
    let url = gw.url("/key/generate");
    let res = anonymous()
        .post(url)
        .bearer_auth(MASTER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let key = v["key"].as_str().unwrap().to_owned();
    remember(&key);
    // LiteLLM's `token` names the key by its public id, never by its hash.
    assert!(v.get("hash").is_none(), "{v}");
    assert_eq!(v["token"], v["key_id"], "{v}");
    (key, v["key_id"].as_str().unwrap().to_owned())
}

async fn chat_as(gw: &Gateway, key: &str, model: &str, extra: &str) -> Answer {
    let res = anonymous()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(chat(model, extra))
        .send()
        .await
        .unwrap();
    answer(res).await
}

async fn models_as(gw: &Gateway, key: &str) -> Vec<String> {
    let res = anonymous()
        .get(gw.url("/v1/models"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let a = answer(res).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["object"], "list");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            m["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn logs_are_clean() {
    assert_clean("the logs", &logs());
}

#[tokio::test]
async fn grants_on_two_of_four_models_decide_listing_and_inference() {
    let mock = mock().await;
    let gw = start(&db("two-of-four"), &mock).await;
    let (key, _) = generate(&gw, json!({"models": ["gpt-4o-mini", "openai/o3"]})).await;

    assert_eq!(models_as(&gw, &key).await, ["gpt-4o-mini", "openai/o3"]);
    for allowed in ["gpt-4o-mini", "openai/o3"] {
        let a = chat_as(&gw, &key, allowed, "").await;
        assert_eq!(a.status, 200, "{allowed}: {}", a.body);
    }
    let before = mock.log.len();
    for refused in ["gpt-4o", "mistral-small"] {
        let a = chat_as(&gw, &key, refused, "").await;
        let v = a.error(403, "model_not_allowed");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{refused}`")), "{message}");
        for other in ALL.iter().filter(|m| **m != refused) {
            assert!(
                !a.body.contains(other),
                "names only the model asked for: {}",
                a.body
            );
        }
    }
    assert_eq!(
        mock.log.len(),
        before,
        "refused requests never reach the upstream"
    );

    // An upstream 429 for this key (known failure #2) carries neither its secret
    // nor its hash: `answer` checks every body and header against both.
    chat_as(&gw, &key, "gpt-4o-mini", r#""mock_fault":"429""#)
        .await
        .error(429, "upstream_rate_limited");

    // A model the gateway does not serve is refused the same way: the key
    // learns nothing about what exists beyond its grants.
    chat_as(&gw, &key, "gpt-9", "")
        .await
        .error(403, "model_not_allowed");
    // The wildcard client key sees everything.
    assert_eq!(models_as(&gw, CLIENT_KEY).await, ALL);
    logs_are_clean();
}

#[tokio::test]
async fn access_groups_patterns_and_team_ceilings() {
    let mock = mock().await;
    let gw = start(&db("groups"), &mock).await;
    let (cheap, _) = generate(&gw, json!({"models": ["cheap"]})).await;
    assert_eq!(
        models_as(&gw, &cheap).await,
        ["gpt-4o-mini", "mistral-small"]
    );
    assert_eq!(chat_as(&gw, &cheap, "mistral-small", "").await.status, 200);
    chat_as(&gw, &cheap, "gpt-4o", "")
        .await
        .error(403, "model_not_allowed");

    let (openai, _) = generate(&gw, json!({"models": ["openai/*"]})).await;
    assert_eq!(models_as(&gw, &openai).await, ["openai/o3"]);
    assert_eq!(chat_as(&gw, &openai, "openai/o3", "").await.status, 200);
    chat_as(&gw, &openai, "gpt-4o-mini", "")
        .await
        .error(403, "model_not_allowed");

    let (mixed, _) = generate(&gw, json!({"models": ["gpt-4o*", "cheap"]})).await;
    assert_eq!(
        models_as(&gw, &mixed).await,
        ["gpt-4o", "gpt-4o-mini", "mistral-small"]
    );

    // A team's grants are a ceiling; a key with none of its own takes them.
    admin(
        &gw,
        "POST",
        "/team/new",
        json!({"team_id": "ml", "models": ["cheap"]}),
    )
    .await;
    let (wide, _) = generate(&gw, json!({"team_id": "ml", "models": ["*"]})).await;
    let (inherits, _) = generate(&gw, json!({"team_id": "ml"})).await;
    for k in [&wide, &inherits] {
        assert_eq!(models_as(&gw, k).await, ["gpt-4o-mini", "mistral-small"]);
        chat_as(&gw, k, "openai/o3", "")
            .await
            .error(403, "model_not_allowed");
    }
    admin(
        &gw,
        "POST",
        "/team/update",
        json!({"team_id": "ml", "models": null}),
    )
    .await;
    assert_eq!(
        models_as(&gw, &wide).await,
        ALL,
        "the ceiling is gone at once"
    );
    assert!(
        models_as(&gw, &inherits).await.is_empty(),
        "no grants, nothing"
    );

    // No grants and no default set: nothing.
    let (bare, _) = generate(&gw, json!({})).await;
    assert!(models_as(&gw, &bare).await.is_empty());
    chat_as(&gw, &bare, "gpt-4o-mini", "")
        .await
        .error(403, "model_not_allowed");
    logs_are_clean();
}

#[tokio::test]
async fn the_per_request_models_list_cannot_reach_a_forbidden_model() {
    let mock = mock().await;
    let gw = start(&db("models-list"), &mock).await;
    let (key, _) = generate(&gw, json!({"models": ["gpt-4o-mini", "mistral-small"]})).await;
    let before = mock.log.len();
    for list in [r#"["gpt-4o"]"#, r#"["mistral-small","openai/o3"]"#] {
        let a = chat_as(&gw, &key, "gpt-4o-mini", &format!(r#""models":{list}"#)).await;
        let v = a.error(403, "model_not_allowed");
        assert_eq!(v["error"]["metadata"]["param"], "models");
    }
    assert_eq!(mock.log.len(), before, "nothing reached the upstream");
    let a = chat_as(&gw, &key, "gpt-4o-mini", r#""models":["mistral-small"]"#).await;
    assert_eq!(a.status, 200, "{}", a.body);
    logs_are_clean();
}

#[tokio::test]
async fn every_401_has_its_reason_and_revoke_holds_for_the_very_next_request() {
    let mock = mock().await;
    let gw = start(&db("revoke"), &mock).await;
    let (key, id) = generate(&gw, json!({"models": ["*"]})).await;
    let secret = key.rsplit('-').next().unwrap().to_owned();

    let res = anonymous().get(gw.url("/v1/models")).send().await.unwrap();
    answer(res).await.error(401, "missing_key");
    for bad in ["Basic dXNlcjpwYXNz", "Bearer sk-not-ours-0123456789abcdef"] {
        let res = anonymous()
            .get(gw.url("/v1/models"))
            .header("authorization", bad)
            .send()
            .await
            .unwrap();
        answer(res).await.error(401, "malformed_key");
    }
    let wrong = format!("tg-{id}-{}", secret.chars().rev().collect::<String>());
    chat_as(&gw, &wrong, "gpt-4o-mini", "")
        .await
        .error(401, "unknown_key");

    assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", "").await.status, 200);
    admin(&gw, "POST", "/key/block", json!({"key": id})).await;
    let v = chat_as(&gw, &key, "gpt-4o-mini", "")
        .await
        .error(401, "key_revoked");
    assert_eq!(
        v["error"]["metadata"]["key_id"],
        id.as_str(),
        "the public id is named"
    );
    admin(&gw, "POST", "/key/unblock", json!({"key": key})).await;
    assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", "").await.status, 200);
    admin(
        &gw,
        "POST",
        "/key/update",
        json!({"key": id, "blocked": true}),
    )
    .await;
    chat_as(&gw, &key, "gpt-4o-mini", "")
        .await
        .error(401, "key_revoked");

    let v = admin(&gw, "POST", "/key/delete", json!({"keys": [id]})).await;
    assert_eq!(v["deleted_keys"], json!([id]));
    chat_as(&gw, &key, "gpt-4o-mini", "")
        .await
        .error(401, "unknown_key");
    let a = admin_as(
        &gw,
        Some(MASTER_KEY),
        "GET",
        &format!("/key/info?key={id}"),
        Value::Null,
    )
    .await;
    a.error(404, "not_found");
    logs_are_clean();
}

#[tokio::test]
async fn an_expired_key_is_401_key_expired() {
    let mock = mock().await;
    let gw = start(&db("expiry"), &mock).await;
    let (key, id) = generate(&gw, json!({"models": ["*"], "duration": "1h"})).await;
    assert_eq!(chat_as(&gw, &key, "gpt-4o", "").await.status, 200);
    admin(
        &gw,
        "POST",
        "/key/update",
        json!({"key": id, "duration": "0s"}),
    )
    .await;
    let v = chat_as(&gw, &key, "gpt-4o", "")
        .await
        .error(401, "key_expired");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired at"),
        "{v}"
    );
    // `null` removes the expiry.
    let v = admin(
        &gw,
        "POST",
        "/key/update",
        json!({"key": id, "duration": null}),
    )
    .await;
    assert!(v["expires"].is_null(), "{v}");
    assert_eq!(chat_as(&gw, &key, "gpt-4o", "").await.status, 200);
    logs_are_clean();
}

#[tokio::test]
async fn a_restarted_gateway_still_knows_the_keys_and_null_removes_only_what_it_names() {
    let mock = mock().await;
    let path = db("restart");
    let gw = start(&path, &mock).await;
    admin(
        &gw,
        "POST",
        "/team/new",
        json!({"team_id": "search", "team_alias": "Search", "tpm_limit": 50000}),
    )
    .await;
    let (key, id) = generate(
        &gw,
        json!({
            "key_alias": "indexer", "team_id": "search", "user_id": "ana",
            "models": ["cheap", "openai/*"], "duration": "30d",
            "max_budget": 25.5, "budget_duration": "monthly",
            "rpm_limit": 60, "tpm_limit": 10000, "weight": 3,
            "metadata": {"owner": "search-infra"}
        }),
    )
    .await;
    let before =
        admin(&gw, "GET", &format!("/key/info?key={id}"), Value::Null).await["info"].clone();
    drop(gw);

    // Same SQLite file, a new gateway.
    let gw = start(&path, &mock).await;
    assert_eq!(
        models_as(&gw, &key).await,
        ["gpt-4o-mini", "mistral-small", "openai/o3"]
    );
    let after = admin(&gw, "GET", &format!("/key/info?key={key}"), Value::Null).await;
    assert_eq!(
        after["key"],
        id.as_str(),
        "the answer names the id, never the key"
    );
    assert_eq!(after["info"], before);
    let team = admin(&gw, "GET", "/team/info?team_id=search", Value::Null).await;
    assert_eq!(team["team_info"]["tpm_limit"], 50000);
    assert_eq!(team["keys"], json!([id]));

    // `null` removes the budget and the rpm limit; everything else stays.
    let updated = admin(
        &gw,
        "POST",
        "/key/update",
        json!({"key": id, "max_budget": null, "rpm_limit": null}),
    )
    .await;
    let mut expected = before.clone();
    // `/key/info` shows the budgets' spend; `/key/update` answers the record.
    expected.as_object_mut().unwrap().remove("budgets");
    expected["max_budget"] = Value::Null;
    // Without a budget, nothing resets.
    assert!(expected["budget_reset_at"].is_string(), "{expected}");
    expected["budget_reset_at"] = Value::Null;
    expected["rpm_limit"] = Value::Null;
    expected["updated_at"] = updated["updated_at"].clone();
    assert_eq!(updated, expected);
    assert_eq!(updated["tpm_limit"], 10000);
    assert_eq!(updated["budget_duration"], "monthly");
    assert_eq!(updated["weight"], 3);
    assert_eq!(updated["key_alias"], "indexer");
    assert_eq!(updated["metadata"]["owner"], "search-infra");
    assert!(updated["expires"].is_string());
    drop(gw);

    // And the removal itself survives a restart.
    let gw = start(&path, &mock).await;
    let mut info =
        admin(&gw, "GET", &format!("/key/info?key={id}"), Value::Null).await["info"].clone();
    // No budget left to show (the key's was removed, it has no team budget).
    assert_eq!(
        info.as_object_mut().unwrap().remove("budgets"),
        Some(json!([]))
    );
    assert_eq!(info, updated);
    let list = admin(&gw, "GET", "/key/list?page=1&size=10", Value::Null).await;
    assert!(
        list["keys"].as_array().unwrap().contains(&json!(id)),
        "{list}"
    );
    logs_are_clean();
}

#[tokio::test]
async fn the_admin_api_needs_the_master_key_and_names_bad_fields() {
    let mock = mock().await;
    let gw = start(&db("admin"), &mock).await;
    let (key, id) = generate(&gw, json!({"models": ["cheap"]})).await;
    let info_path = format!("/key/info?key={id}");
    let routes = [
        ("POST", "/key/generate", json!({})),
        ("POST", "/key/update", json!({"key": id, "rpm_limit": 1})),
        ("GET", info_path.as_str(), Value::Null),
        ("POST", "/key/delete", json!({"keys": [id]})),
        ("GET", "/key/list", Value::Null),
        ("POST", "/key/block", json!({"key": id})),
        ("POST", "/team/new", json!({"team_id": "x"})),
        ("POST", "/team/update", json!({"team_id": "x"})),
        ("GET", "/team/info?team_id=x", Value::Null),
    ];
    for (method, path, body) in &routes {
        let a = admin_as(&gw, None, method, path, body.clone()).await;
        a.error(401, "missing_key");
        for wrong in [key.as_str(), CLIENT_KEY, "not-the-master-key-at-all"] {
            let a = admin_as(&gw, Some(wrong), method, path, body.clone()).await;
            a.error(401, "unknown_key");
        }
    }
    // Nothing above changed the key.
    assert_eq!(models_as(&gw, &key).await, ["gpt-4o-mini", "mistral-small"]);

    let before = admin(&gw, "GET", &info_path, Value::Null).await;
    for (body, param) in [
        (
            json!({"key": id, "key_alias": "x", "rpm_limt": 5}),
            "rpm_limt",
        ),
        (
            json!({"key": id, "key_alias": "x", "rpm_limit": "5"}),
            "rpm_limit",
        ),
        (
            json!({"key": id, "key_alias": "x", "max_budget": -3}),
            "max_budget",
        ),
        (
            json!({"key": id, "key_alias": "x", "team_id": "ghost"}),
            "team_id",
        ),
        (
            json!({"key": id, "key_alias": "x", "duration": "a while"}),
            "duration",
        ),
        (
            json!({"key": id, "key_alias": "x", "models": ["gpt-5"]}),
            "models[0]",
        ),
        (json!({"key_alias": "x"}), "key"),
    ] {
        let a = admin_as(&gw, Some(MASTER_KEY), "POST", "/key/update", body.clone()).await;
        let v = a.error(400, "invalid_request");
        assert_eq!(v["error"]["metadata"]["param"], param, "{body}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{v}"
        );
    }
    assert_eq!(
        admin(&gw, "GET", &info_path, Value::Null).await,
        before,
        "nothing was half-written"
    );
    let a = admin_as(
        &gw,
        Some(MASTER_KEY),
        "POST",
        "/team/new",
        json!({"team_id": "t", "tpm_limit": -1}),
    )
    .await;
    assert_eq!(
        a.error(400, "invalid_request")["error"]["metadata"]["param"],
        "tpm_limit"
    );
    let a = admin_as(
        &gw,
        Some(MASTER_KEY),
        "GET",
        "/team/info?team_id=t",
        Value::Null,
    )
    .await;
    a.error(404, "not_found");
    let a = admin_as(
        &gw,
        Some(MASTER_KEY),
        "GET",
        "/key/list?size=1000",
        Value::Null,
    )
    .await;
    a.error(400, "invalid_request");
    logs_are_clean();
}

#[tokio::test]
async fn key_list_is_paginated() {
    let mock = mock().await;
    let gw = start(&db("list"), &mock).await;
    admin(&gw, "POST", "/team/new", json!({"team_id": "listed"})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({"key_alias": format!("k{i}"), "team_id": "listed"});
        ids.push(generate(&gw, body).await.1);
    }
    let all = admin(&gw, "GET", "/key/list", Value::Null).await;
    assert_eq!(all["total_count"], 6, "five keys and the static one: {all}");
    let mut seen = Vec::new();
    for page in 1..=3 {
        let path = format!("/key/list?page={page}&size=2&team_id=listed");
        let v = admin(&gw, "GET", &path, Value::Null).await;
        assert_eq!(v["total_count"], 5);
        assert_eq!(v["total_pages"], 3);
        assert_eq!(v["current_page"], page);
        for k in v["keys"].as_array().unwrap() {
            seen.push(k.as_str().unwrap().to_owned());
        }
    }
    ids.sort();
    seen.sort();
    assert_eq!(seen, ids);
    // Full objects: within the team every key has an alias. (Across all keys
    // the first by creation may be the static key, which has none.)
    let v = admin(
        &gw,
        "GET",
        "/key/list?size=1&team_id=listed&return_full_object=true",
        Value::Null,
    )
    .await;
    assert!(v["keys"][0]["key_alias"].is_string(), "{v}");
    assert_eq!(v["keys"][0]["team_id"], "listed", "{v}");
    logs_are_clean();
}

/// LiteLLM's read-only admin endpoints and the client's `models.retrieve`:
/// `/model/info` (never an upstream URL or key), `/models`,
/// `GET /v1/models/{id}` decided by the key's grants, `/global/spend`,
/// `/spend/logs` with LiteLLM's parameters, and the 404 for an unknown
/// route naming the surfaces, in the path's family's shape.
#[tokio::test]
async fn litellms_read_endpoints_and_model_retrieval() {
    let mock = mock().await;
    let path = db("litellm-read");
    let gw = start(&path, &mock).await;

    for route in ["/model/info", "/v1/model/info"] {
        let a = admin_as(&gw, Some(MASTER_KEY), "GET", route, Value::Null).await;
        assert_eq!(a.status, 200, "{route}: {}", a.body);
        assert!(
            !a.body.contains(&mock.base_url()),
            "no upstream URL: {}",
            a.body
        );
        let v = a.json();
        let names: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["model_name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["gpt-4o-mini", "gpt-4o", "openai/o3", "mistral-small"]
        );
        assert_eq!(v["data"][0]["model_info"]["upstream_model"], "mock-small");
        assert_eq!(v["data"][0]["litellm_params"]["model"], "mock/mock-small");
    }
    let one = admin(
        &gw,
        "GET",
        "/model/info?litellm_model_id=mock/mock-large",
        Value::Null,
    )
    .await;
    assert_eq!(one["data"].as_array().unwrap().len(), 2, "{one}");
    let e = admin_as(
        &gw,
        Some(MASTER_KEY),
        "GET",
        "/model/info?litellm_model_id=nope",
        Value::Null,
    )
    .await
    .error(400, "invalid_request");
    assert_eq!(e["error"]["metadata"]["param"], "litellm_model_id");
    admin_as(&gw, None, "GET", "/model/info", Value::Null)
        .await
        .error(401, "missing_key");
    let all = admin(&gw, "GET", "/models", Value::Null).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 4, "{all}");

    // A client key retrieves only what its grants allow, by the list's rule.
    let (key, id) = generate(&gw, json!({"models": ["cheap"], "user_id": "ada"})).await;
    let retrieve = |model: &str| {
        let url = gw.url(&format!("/v1/models/{model}"));
        let key = key.clone();
        async move { answer(anonymous().get(url).bearer_auth(key).send().await.unwrap()).await }
    };
    let m = retrieve("gpt-4o-mini").await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.json()["id"], "gpt-4o-mini");
    let listed = models_as(&gw, &key).await;
    for model in ALL {
        let a = retrieve(model).await;
        assert_eq!(
            a.status == 200,
            listed.contains(&model.to_owned()),
            "{model}: {}",
            a.body
        );
    }
    retrieve("gpt-4o").await.error(403, "model_not_allowed");
    retrieve("no-such-model")
        .await
        .error(403, "model_not_allowed");

    // Spend: one request, then LiteLLM's filters find it.
    assert_eq!(chat_as(&gw, &key, "gpt-4o-mini", "").await.status, 200);
    let mut logs = Value::Null;
    for _ in 0..200 {
        logs = admin(
            &gw,
            "GET",
            &format!("/spend/logs?api_key={key}"),
            Value::Null,
        )
        .await;
        if !logs["data"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(logs["data"][0]["key_id"], id.as_str(), "{logs}");
    let by_id = admin(
        &gw,
        "GET",
        &format!("/spend/logs?api_key={id}&start_date=2000-01-01"),
        Value::Null,
    )
    .await;
    assert_eq!(by_id["data"], logs["data"]);
    let by_user = admin(&gw, "GET", "/spend/logs?user_id=ada", Value::Null).await;
    assert_eq!(by_user["data"], logs["data"]);
    let nobody = admin(&gw, "GET", "/spend/logs?user_id=nobody", Value::Null).await;
    assert_eq!(nobody["data"], json!([]));
    let before = admin(
        &gw,
        "GET",
        &format!("/spend/logs?api_key={id}&end_date=2000-01-01"),
        Value::Null,
    )
    .await;
    assert_eq!(before["data"], json!([]));
    // LiteLLM's `request_id`: that request's record (its `x-request-id`).
    let rid = logs["data"][0]["request_id"].as_str().unwrap().to_owned();
    let by_request = admin(
        &gw,
        "GET",
        &format!("/spend/logs?request_id={rid}"),
        Value::Null,
    )
    .await;
    assert_eq!(by_request["data"], logs["data"], "{by_request}");
    let unknown = admin(&gw, "GET", "/spend/logs?request_id=abc", Value::Null).await;
    assert_eq!(unknown["data"], json!([]));
    for (query, param) in [
        ("start_date=yesterday", "start_date"),
        ("request_id=", "request_id"),
        ("api_key=tg-nokey-nosecret", "api_key"),
        ("key_id=x&api_key=", "api_key"),
    ] {
        let e = admin_as(
            &gw,
            Some(MASTER_KEY),
            "GET",
            &format!("/spend/logs?{query}"),
            Value::Null,
        )
        .await
        .error(400, "invalid_request");
        assert_eq!(e["error"]["metadata"]["param"], param, "{query}");
    }
    let global = admin(&gw, "GET", "/global/spend", Value::Null).await;
    assert!(global["spend"].as_f64().unwrap() >= 0.0, "{global}");
    assert_eq!(
        global["spend_micros"], logs["data"][0]["spend_micros"],
        "{global}"
    );

    // Unknown routes: the surfaces named, in the family's shape.
    let a = answer(anonymous().get(gw.url("/v2/chat")).send().await.unwrap()).await;
    let e = a.error(404, "not_found");
    let message = e["error"]["message"].as_str().unwrap();
    for surface in ["/v1/", "/key/", "/health", "/metrics"] {
        assert!(message.contains(surface), "{message}");
    }
    for (path, header) in [
        ("/v1/messages/batches", None),
        ("/v1/files", Some("2023-06-01")),
    ] {
        let mut req = anonymous().post(gw.url(path));
        if let Some(v) = header {
            req = req.header("anthropic-version", v);
        }
        let a = answer(req.send().await.unwrap()).await;
        assert_eq!(a.status, 404);
        assert_eq!(a.headers["content-type"], "application/json");
        let v = a.json();
        assert_eq!(v["type"], "error", "Anthropic's shape: {v}");
        assert_eq!(v["error"]["type"], "not_found_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("/v1/"),
            "{v}"
        );
    }
    logs_are_clean();
}
