//! Known failure #15: a limit the admin API accepts is a limit the gateway
//! enforces, whatever sections the config has.
//!
//! A matrix through real sockets: minimal configs (no limit section at all,
//! each of `[rate_limits]`, `[budgets]`, `[fair_queue]` with each kind of
//! tenant, Redis state, everything) × every limit-like field of keys and
//! teams set through the admin API (rpm, tpm, budget with and without a
//! period, blocked, expiry, model grants, weight). Each field is either
//! enforced on the very next requests or refused where it is set with a 400
//! naming it; never stored and skipped. Static keys are checked the same way
//! at start.

mod common;

use common::*;
use serde_json::{Value, json};

/// Two priced model groups on the mock, keys in memory, the admin API: no
/// limit section at all.
const BASE: &str = r#"
[[groups]]
name = "m"
price_in_per_mtok = 1000.0
price_out_per_mtok = 1000.0
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-small"

[[groups]]
name = "n"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
model = "mock-small"
"#;

const KEYS: &str = r#"
[keys]
store = "memory"
master_key_env = "{master_env}"
"#;

/// What a config's sections make of a fair-queuing weight.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Queue {
    /// No `[fair_queue]`: every weight is refused.
    None,
    /// Tenants are keys: a team's weight is refused.
    ByKey,
    /// Tenants are teams: a weight on a key in a team is refused.
    ByTeam,
}

/// The minimal configs of the matrix: a name, the sections added to
/// [`BASE`], and what they make of weights.
fn configs() -> Vec<(&'static str, String, Queue)> {
    let mut out = vec![
        ("no limit section", String::new(), Queue::None),
        (
            "[rate_limits] only",
            "[rate_limits]\nrequests_per_minute = 1000\n".into(),
            Queue::None,
        ),
        (
            "[budgets] only",
            "[budgets]\nglobal_max_usd = 1000.0\n".into(),
            Queue::None,
        ),
        (
            "[fair_queue] by key",
            "[fair_queue]\ncapacity = 8\n".into(),
            Queue::ByKey,
        ),
        (
            "[fair_queue] by team",
            "[fair_queue]\ncapacity = 8\ntenant = \"team\"\n".into(),
            Queue::ByTeam,
        ),
        (
            "every section",
            "[rate_limits]\nrequests_per_minute = 1000\n[budgets]\n[fair_queue]\ncapacity = 8\n"
                .into(),
            Queue::ByKey,
        ),
    ];
    #[cfg(feature = "redis")]
    {
        let url = std::env::var("TOLLGATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!(
            "tollgate-limits-{}-{}:",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        out.push((
            "[state] in Redis, no other section",
            format!("[state]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"),
            Queue::None,
        ));
    }
    out
}

async fn admin(gw: &Gateway, path: &str, body: Value) -> Answer {
    let res = anonymous()
        .post(gw.url(path))
        .bearer_auth(MASTER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    read_answer(res).await
}

async fn ok(gw: &Gateway, path: &str, body: Value) -> Value {
    let a = admin(gw, path, body.clone()).await;
    assert_eq!(a.status, 200, "{path} {body}: {}", a.body);
    a.json()
}

/// A new key with `fields` (every model granted unless `fields` says).
async fn key(gw: &Gateway, mut fields: Value) -> String {
    if fields.get("models").is_none() {
        fields["models"] = json!(["*"]);
    }
    ok(gw, "/key/generate", fields).await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn team(gw: &Gateway, fields: Value) -> String {
    ok(gw, "/team/new", fields).await["team_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn chat(gw: &Gateway, key: &str, model: &str, extra: &str) -> Answer {
    let res = anonymous()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(common::chat(model, extra))
        .send()
        .await
        .unwrap();
    read_answer(res).await
}

/// The first request passes, the second is refused with `status`/`reason`.
async fn second_refused(
    gw: &Gateway,
    key: &str,
    extra: &str,
    status: u16,
    reason: &str,
    what: &str,
) {
    let first = chat(gw, key, "m", extra).await;
    assert_eq!(
        first.status, 200,
        "{what}: the first request: {}",
        first.body
    );
    let second = chat(gw, key, "m", extra).await;
    assert_eq!(
        (
            second.status,
            second.json()["error"]["metadata"]["reason"].as_str()
        ),
        (status, Some(reason)),
        "{what}: the second request: {}",
        second.body
    );
}

/// The refusal of a limit field: 400 naming it.
fn refused(a: &Answer, field: &str, what: &str) {
    assert_eq!(a.status, 400, "{what}: {}", a.body);
    let v = a.json();
    assert_eq!(
        v["error"]["metadata"]["reason"], "invalid_request",
        "{what}: {v}"
    );
    assert_eq!(v["error"]["metadata"]["param"], field, "{what}: {v}");
}

#[tokio::test]
async fn every_limit_field_is_enforced_or_refused_under_every_config() {
    let mock = mock().await;
    for (name, sections, queue) in configs() {
        let gw = gateway(&format!("{BASE}{KEYS}{sections}"), &mock).await;
        let what = |field: &str| format!("{name}: {field}");

        // Requests per minute: the key's own, then a team's.
        let k = key(&gw, json!({"rpm_limit": 1})).await;
        second_refused(&gw, &k, "", 429, "rate_limited", &what("key rpm_limit")).await;
        let t = team(&gw, json!({"rpm_limit": 1})).await;
        let k = key(&gw, json!({"team_id": t})).await;
        second_refused(&gw, &k, "", 429, "rate_limited", &what("team rpm_limit")).await;

        // Tokens per minute: 600 output tokens each, 1,000 a minute.
        let cap = r#""max_tokens":600"#;
        let k = key(&gw, json!({"tpm_limit": 1000})).await;
        second_refused(&gw, &k, cap, 429, "rate_limited", &what("key tpm_limit")).await;
        let t = team(&gw, json!({"tpm_limit": 1000})).await;
        let k = key(&gw, json!({"team_id": t})).await;
        second_refused(&gw, &k, cap, 429, "rate_limited", &what("team tpm_limit")).await;

        // Budgets at $1,000/Mtok: with `max_tokens` 10 a request reserves
        // $0.02 (its prompt estimate and 10 output tokens) and is charged
        // at most that, so a $0.03 budget admits the first request and
        // refuses the second.
        let cap = r#""max_tokens":10"#;
        for period in [Value::Null, json!("daily"), json!("monthly")] {
            let k = key(
                &gw,
                json!({"max_budget": 0.03, "budget_duration": period.clone()}),
            )
            .await;
            let w = what(&format!("key max_budget, period {period}"));
            second_refused(&gw, &k, cap, 402, "budget_exceeded", &w).await;
            let t = team(
                &gw,
                json!({"max_budget": 0.03, "budget_duration": period.clone()}),
            )
            .await;
            let k = key(&gw, json!({"team_id": t})).await;
            let w = what(&format!("team max_budget, period {period}"));
            second_refused(&gw, &k, cap, 402, "budget_exceeded", &w).await;
        }
        // A free group spends nothing: the budget does not refuse it.
        let k = key(&gw, json!({"max_budget": 0.0})).await;
        assert_eq!(
            chat(&gw, &k, "n", "").await.status,
            200,
            "{name}: free group"
        );
        assert_eq!(
            chat(&gw, &k, "m", "").await.status,
            402,
            "{name}: a $0 budget on a priced group"
        );

        // Blocked, expired, grants: refused at once.
        let k = key(&gw, json!({"blocked": true})).await;
        let a = chat(&gw, &k, "m", "").await;
        assert_eq!(a.status, 401, "{}", what("key blocked"));
        let t = team(&gw, json!({"blocked": true})).await;
        let k = key(&gw, json!({"team_id": t})).await;
        assert_eq!(
            chat(&gw, &k, "m", "").await.status,
            401,
            "{}",
            what("team blocked")
        );
        let k = key(&gw, json!({"duration": "0s"})).await;
        let a = chat(&gw, &k, "m", "").await;
        assert_eq!(
            (a.status, a.json()["error"]["metadata"]["reason"].as_str()),
            (401, Some("key_expired")),
            "{}",
            what("duration")
        );
        let k = key(&gw, json!({"models": ["n"]})).await;
        assert_eq!(
            chat(&gw, &k, "n", "").await.status,
            200,
            "{}",
            what("models")
        );
        let a = chat(&gw, &k, "m", "").await;
        assert_eq!(a.status, 403, "{}: {}", what("models"), a.body);
        let t = team(&gw, json!({"models": ["n"]})).await;
        let k = key(&gw, json!({"team_id": t, "models": ["*"]})).await;
        assert_eq!(
            chat(&gw, &k, "m", "").await.status,
            403,
            "{}",
            what("team models")
        );

        // Weights: accepted only where the fair queue reads them.
        let a = admin(&gw, "/key/generate", json!({"models": ["*"], "weight": 3})).await;
        match queue {
            Queue::None => refused(&a, "weight", &what("key weight")),
            Queue::ByKey | Queue::ByTeam => {
                assert_eq!(a.status, 200, "{}: {}", what("key weight"), a.body);
                assert_eq!(a.json()["weight"], 3);
            }
        }
        // The neutral weight is accepted everywhere (and `null`).
        let a = admin(&gw, "/key/generate", json!({"weight": 1})).await;
        assert_eq!(a.status, 200, "{}: {}", what("weight 1"), a.body);
        let a = admin(&gw, "/team/new", json!({"weight": null})).await;
        assert_eq!(a.status, 200, "{}: {}", what("team weight null"), a.body);

        let a = admin(&gw, "/team/new", json!({"weight": 3})).await;
        match queue {
            Queue::None | Queue::ByKey => refused(&a, "weight", &what("team weight")),
            Queue::ByTeam => assert_eq!(a.status, 200, "{}: {}", what("team weight"), a.body),
        }
        // A team with the neutral weight, then a key in it with its own.
        let t = team(&gw, json!({})).await;
        let a = admin(&gw, "/key/generate", json!({"team_id": t, "weight": 3})).await;
        match queue {
            Queue::None | Queue::ByTeam => {
                refused(&a, "weight", &what("weight of a key in a team"))
            }
            Queue::ByKey => assert_eq!(
                a.status,
                200,
                "{}: {}",
                what("weight of a key in a team"),
                a.body
            ),
        }
        // Updates are held to the same rule, including moving a weighted
        // key into a team.
        if queue == Queue::ByTeam {
            let v = ok(&gw, "/key/generate", json!({"weight": 3})).await;
            let id = v["key_id"].as_str().unwrap();
            let a = admin(&gw, "/key/update", json!({"key": id, "team_id": t})).await;
            refused(&a, "weight", &what("moving a weighted key into a team"));
            let a = admin(
                &gw,
                "/key/update",
                json!({"key": id, "team_id": t, "weight": 1}),
            )
            .await;
            assert_eq!(
                a.status,
                200,
                "{}: {}",
                what("moving with weight 1"),
                a.body
            );
        } else if queue == Queue::None {
            let v = ok(&gw, "/key/generate", json!({})).await;
            let id = v["key_id"].as_str().unwrap();
            let a = admin(&gw, "/key/update", json!({"key": id, "weight": 2})).await;
            refused(&a, "weight", &what("key update weight"));
            let a = admin(&gw, "/team/update", json!({"team_id": t, "weight": 2})).await;
            refused(&a, "weight", &what("team update weight"));
        }
    }
}

/// Static keys: their rpm, tpm and budget hold without any limit section;
/// a weight without `[fair_queue]` is refused at start, naming the field.
#[tokio::test]
async fn static_keys_limits_hold_without_sections_and_a_weight_needs_a_fair_queue() {
    let mock = mock().await;
    let (env, whole) = EXTRA_KEYS[0];
    let (env2, whole2) = EXTRA_KEYS[1];
    let statics = format!(
        "[keys]\nstore = \"memory\"\n\
         [[keys.static]]\nkey_env = \"{env}\"\nmodels = [\"*\"]\nrpm_limit = 1\n\
         [[keys.static]]\nkey_env = \"{env2}\"\nmodels = [\"*\"]\nmax_budget = 0.03\nbudget_duration = \"daily\"\n"
    );
    let gw = gateway(&format!("{BASE}{statics}"), &mock).await;
    second_refused(&gw, whole, "", 429, "rate_limited", "static rpm_limit").await;
    second_refused(
        &gw,
        whole2,
        r#""max_tokens":10"#,
        402,
        "budget_exceeded",
        "static max_budget",
    )
    .await;

    let weighted =
        format!("[keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"{env}\"\nweight = 4\n");
    let text = format!("{BASE}{weighted}").replace("{mock}", &mock.base_url());
    let e = tollgate::config::Config::from_toml("t.toml", &text).unwrap_err();
    assert_eq!(e.field(), "keys.static[0].weight", "{e}");
    assert!(e.to_string().contains("[fair_queue]"), "{e}");
    let with_queue = format!("{text}\n[fair_queue]\n");
    tollgate::config::Config::from_toml("t.toml", &with_queue).unwrap();
}
