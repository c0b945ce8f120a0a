//! Users and customers (end users) through real sockets: the reference
//! gateway with `[budgets]` in front of the bundled mock upstream, their
//! admin routes over HTTP, and their budgets beside the key's, the team's
//! and the global one.

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate::budget::{Ledger, Period, Scope};

/// One group at $1 per million tokens in and out: a token costs one micro-dollar.
const PRICED: &str = r#"
[budgets]
global_max_usd = 0.05
global_period = "monthly"

[[groups]]
name = "m"
price_in_per_mtok = 1.0
price_out_per_mtok = 1.0
max_output_tokens = 1000
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"

[keys]
store = "memory"
master_key_env = "{master_env}"
"#;

async fn admin(gw: &Gateway, method: &str, path: &str, body: Value) -> (u16, Value) {
    let req = match method {
        "GET" => anonymous().get(gw.url(path)),
        _ => anonymous().post(gw.url(path)).json(&body),
    };
    let res = req.bearer_auth(MASTER_KEY).send().await.unwrap();
    let a = read_answer(res).await;
    let v = serde_json::from_str(&a.body).unwrap_or(Value::Null);
    (a.status, v)
}

async fn admin_ok(gw: &Gateway, path: &str, body: Value) -> Value {
    let (s, v) = admin(gw, "POST", path, body).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

/// Waits until no request holds money on `scope` any more.
async fn settled(ledger: &Ledger, scope: &Scope, period: Period) -> u64 {
    for _ in 0..500 {
        let u = ledger.usage(scope, period);
        if u.reserved == 0 {
            return u.spent;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("money still reserved: {:?}", ledger.usage(scope, period));
}

/// Every spend record `query` selects, all pages.
async fn records(gw: &Gateway, query: &str) -> Vec<Value> {
    if let Some(w) = &gw.spend {
        w.flush().await;
    }
    let mut out = Vec::new();
    let mut uri = format!("/spend/logs?{query}&limit=1000");
    loop {
        let (s, v) = admin(gw, "GET", &uri, Value::Null).await;
        assert_eq!(s, 200, "{v}");
        out.extend(v["data"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => uri = format!("/spend/logs?{query}&limit=1000&cursor={c}"),
            None => return out,
        }
    }
}

fn cost(records: &[Value]) -> u64 {
    records
        .iter()
        .map(|r| r["spend_micros"].as_u64().unwrap())
        .sum()
}

/// LiteLLM's bug #11962: a user's budget is skipped for keys in a team.
/// Here it caps every key made for the user, in a team or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_budget_caps_its_keys_even_when_they_are_in_a_team() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(PRICED, &mock, ledger.clone()).await;
    admin_ok(&gw, "/team/new", json!({"team_id": "t"})).await;
    let made = admin_ok(
        &gw,
        "/user/new",
        json!({"user_id": "ann", "user_email": "ann@example.com", "user_role": "internal_user",
               "max_budget": 0.0004, "budget_duration": "30d", "models": [], "tpm_limit": null}),
    )
    .await;
    // LiteLLM's default: a key for the new user comes with it.
    let auto_key = made["key"].as_str().unwrap().to_owned();
    assert_eq!(made["user_id"], "ann");
    assert_eq!(made["budget_duration"], "monthly");
    assert!(made["budget_reset_at"].is_string(), "{made}");
    assert!(auto_key.starts_with("tg-"), "{made}");
    let (team_key, team_key_id) = generate_key(
        &gw,
        json!({"models": ["*"], "team_id": "t", "user_id": "ann"}),
    )
    .await;
    let (no_team_key, no_team_key_id) =
        generate_key(&gw, json!({"models": ["*"], "user_id": "ann"})).await;
    let url = gw.url("/v1/chat/completions");
    let body = chat("m", r#""max_tokens":50"#);
    let mut served = 0;
    let refusal = loop {
        assert!(served < 200, "the user's $0.0004 never ran out");
        let a = post_as(&url, &team_key, body.clone()).await;
        if a.status != 200 {
            break a;
        }
        served += 1;
    };
    let e = refusal.error(402, "budget_exceeded");
    assert_eq!(e["error"]["metadata"]["scope"], "user", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("user's"),
        "{e}"
    );
    assert!(
        served >= 1,
        "the budget admitted requests before it ran out"
    );
    // The user's other key (no team) is refused on the same budget.
    let a = post_as(&url, &no_team_key, body.clone()).await;
    assert_eq!(
        a.error(402, "budget_exceeded")["error"]["metadata"]["scope"],
        "user"
    );
    // A key of nobody in particular is not.
    let (other, _) = generate_key(&gw, json!({"models": ["*"], "team_id": "t"})).await;
    assert_eq!(post_as(&url, &other, body.clone()).await.status, 200);

    let user = Scope::User("ann".into());
    let spent = settled(&ledger, &user, Period::Monthly).await;
    assert!(spent > 0 && spent <= 400, "spent {spent}");
    // Records name the user; `/spend/logs?user_id=` is every key of it.
    let mine = records(&gw, "user_id=ann").await;
    assert_eq!(
        mine.iter().filter(|r| r["status"] == 200).count(),
        served,
        "one record per served request"
    );
    assert!(mine.iter().all(|r| r["user_id"] == "ann"));
    assert_eq!(cost(&mine), spent, "the user was charged its records' cost");
    // `/user/info`: spend, budget, keys.
    let (s, v) = admin(&gw, "GET", "/user/info?user_id=ann", Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["user_info"]["spend_micros"].as_u64(), Some(spent), "{v}");
    assert_eq!(v["user_info"]["max_budget"], 0.0004);
    assert_eq!(v["user_info"]["budgets"][0]["scope"], "user");
    assert_eq!(v["keys"].as_array().unwrap().len(), 3, "{v}");
    // `/key/info` of the team key shows the user's budget among its scopes.
    let (_, v) = admin(
        &gw,
        "GET",
        &format!("/key/info?key={team_key_id}"),
        Value::Null,
    )
    .await;
    let scopes: Vec<&str> = v["info"]["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["scope"].as_str().unwrap())
        .collect();
    assert_eq!(scopes, ["user", "global"], "{v}");
    // Raising the user's budget lets its keys through again.
    admin_ok(
        &gw,
        "/user/update",
        json!({"user_id": "ann", "max_budget": 1.0}),
    )
    .await;
    assert_eq!(post_as(&url, &team_key, body.clone()).await.status, 200);
    // Deleting the user deletes its keys, as LiteLLM does.
    let v = admin_ok(&gw, "/user/delete", json!({"user_ids": ["ann"]})).await;
    let mut deleted: Vec<String> = v["deleted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    deleted.sort();
    assert!(deleted.contains(&team_key_id) && deleted.contains(&no_team_key_id));
    assert_eq!(deleted.len(), 3);
    post_as(&url, &team_key, body)
        .await
        .error(401, "unknown_key");
    let (s, v) = admin(&gw, "GET", "/user/info?user_id=ann", Value::Null).await;
    assert_eq!(
        (s, v["error"]["metadata"]["reason"].as_str()),
        (404, Some("not_found"))
    );
}

/// The admin routes refuse bad input by name and unknown ids with 404.
#[tokio::test]
async fn user_and_customer_routes_refuse_bad_input_by_name() {
    let mock = mock().await;
    let gw = gateway(PRICED, &mock).await;
    for (path, body, param) in [
        ("/user/new", json!({"max_budget": -1}), "max_budget"),
        (
            "/user/new",
            json!({"budget_duration": "fortnight"}),
            "budget_duration",
        ),
        ("/user/new", json!({"tpm_limit": 10}), "tpm_limit"),
        ("/user/new", json!({"models": ["m"]}), "models"),
        ("/user/new", json!({"user_email": 3}), "user_email"),
        ("/user/new", json!({"nickname": "x"}), "nickname"),
        (
            "/user/new",
            json!({"auto_create_key": "yes"}),
            "auto_create_key",
        ),
        ("/user/update", json!({"max_budget": 1}), "user_id"),
        ("/user/delete", json!({"user_ids": []}), "user_ids"),
        ("/customer/new", json!({"alias": "no id"}), "user_id"),
        (
            "/customer/new",
            json!({"user_id": "c", "rpm_limit": 5}),
            "rpm_limit",
        ),
        (
            "/customer/new",
            json!({"user_id": "c", "blocked": "no"}),
            "blocked",
        ),
        ("/customer/block", json!({"user_ids": "c"}), "user_ids"),
    ] {
        let (s, v) = admin(&gw, "POST", path, body.clone()).await;
        assert_eq!(s, 400, "{path} {body}: {v}");
        assert_eq!(v["error"]["metadata"]["param"], param, "{path} {body}: {v}");
    }
    let (s, v) = admin(&gw, "GET", "/user/list", Value::Null).await;
    assert_eq!(
        (s, v["total"].as_u64()),
        (200, Some(0)),
        "nothing was written: {v}"
    );
    for (method, path, body) in [
        ("GET", "/user/info?user_id=nobody", Value::Null),
        (
            "POST",
            "/user/update",
            json!({"user_id": "nobody", "max_budget": 1}),
        ),
        ("POST", "/user/delete", json!({"user_ids": ["nobody"]})),
        ("GET", "/customer/info?end_user_id=nobody", Value::Null),
        (
            "POST",
            "/customer/update",
            json!({"user_id": "nobody", "blocked": true}),
        ),
        ("POST", "/customer/delete", json!({"user_ids": ["nobody"]})),
        ("POST", "/end_user/block", json!({"user_ids": ["nobody"]})),
    ] {
        let (s, v) = admin(&gw, method, path, body).await;
        assert_eq!(
            (s, v["error"]["metadata"]["reason"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
    }
    let (s, _) = anonymous()
        .get(gw.url("/user/list"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(s, 401);
    // A second user of the same id is refused by name.
    admin_ok(
        &gw,
        "/user/new",
        json!({"user_id": "bo", "auto_create_key": false}),
    )
    .await;
    let (s, v) = admin(&gw, "POST", "/user/new", json!({"user_id": "bo"})).await;
    assert_eq!(
        (s, v["error"]["metadata"]["param"].as_str()),
        (400, Some("user_id"))
    );
    let (_, v) = admin(
        &gw,
        "GET",
        "/user/list?page=1&page_size=10&role=",
        Value::Null,
    )
    .await;
    assert_eq!(v["users"][0]["user_id"], "bo", "{v}");
    assert!(v["users"][0].get("key").is_none());
}

/// A customer's budget caps the requests that name it (`user`, or
/// `metadata.user_id` on `/v1/messages`) across keys; a blocked customer
/// is refused; an end user without a record is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_budgets_and_blocks_hold_through_sockets() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(PRICED, &mock, ledger.clone()).await;
    let made = admin_ok(
        &gw,
        "/customer/new",
        json!({"user_id": "end-1", "alias": "Acme", "max_budget": 0.0003, "budget_id": null}),
    )
    .await;
    assert_eq!(
        (made["user_id"].as_str(), made["blocked"].as_bool()),
        (Some("end-1"), Some(false))
    );
    let (k1, _) = generate_key(&gw, json!({"models": ["*"]})).await;
    let (k2, _) = generate_key(&gw, json!({"models": ["*"]})).await;
    let url = gw.url("/v1/chat/completions");
    let for_end_1 = chat("m", r#""max_tokens":50,"user":"end-1""#);
    let mut served = 0;
    let refusal = loop {
        assert!(served < 200, "the customer's $0.0003 never ran out");
        let key = if served % 2 == 0 { &k1 } else { &k2 };
        let a = post_as(&url, key, for_end_1.clone()).await;
        if a.status != 200 {
            break a;
        }
        served += 1;
    };
    let e = refusal.error(402, "budget_exceeded");
    assert_eq!(e["error"]["metadata"]["scope"], "end_user", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("end user's"),
        "{e}"
    );
    // Anthropic's clients name the end user in `metadata.user_id`: the same
    // budget, refused in Anthropic's shape.
    let a = post_messages_as(
        &gw.url("/v1/messages"),
        &k1,
        r#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}],"metadata":{"user_id":"end-1"}}"#,
    )
    .await;
    assert_eq!(a.status, 402, "{}", a.body);
    let v = a.json();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str().is_some()),
        (Some("error"), true),
        "{v}"
    );
    // Another end user, with no record, is served.
    let other = chat("m", r#""max_tokens":50,"user":"end-2""#);
    assert_eq!(post_as(&url, &k1, other.clone()).await.status, 200);
    // Blocked: refused whatever its budget; unblocked: served again.
    admin_ok(&gw, "/customer/new", json!({"user_id": "end-2"})).await;
    let v = admin_ok(&gw, "/end_user/block", json!({"user_ids": ["end-2"]})).await;
    assert_eq!(v["blocked_users"][0]["blocked"], true, "{v}");
    let e = post_as(&url, &k1, other.clone())
        .await
        .error(403, "end_user_blocked");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("end-2"),
        "{e}"
    );
    admin_ok(&gw, "/customer/unblock", json!({"user_ids": ["end-2"]})).await;
    assert_eq!(post_as(&url, &k1, other).await.status, 200);

    let spent = settled(&ledger, &Scope::EndUser("end-1".into()), Period::Total).await;
    assert!(spent > 0 && spent <= 300, "spent {spent}");
    let mine = records(&gw, "end_user=end-1").await;
    assert_eq!(mine.iter().filter(|r| r["status"] == 200).count(), served);
    assert_eq!(cost(&mine), spent);
    let (s, v) = admin(&gw, "GET", "/customer/info?end_user_id=end-1", Value::Null).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["spend_micros"].as_u64(), Some(spent), "{v}");
    assert_eq!(v["alias"], "Acme");
    let (_, v) = admin(&gw, "GET", "/customer/list", Value::Null).await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    admin_ok(&gw, "/customer/delete", json!({"user_ids": ["end-1"]})).await;
    // Without its record, the end user is no longer capped.
    assert_eq!(post_as(&url, &k1, for_end_1).await.status, 200);
}

/// 200 concurrent requests against key, team, user, end-user and global
/// budgets at once: no scope is overspent, and each is charged exactly the
/// requests that belong to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_scopes_hold_together_under_concurrency() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let toml = PRICED.replace("global_max_usd = 0.05", "global_max_usd = 0.01");
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    admin_ok(
        &gw,
        "/team/new",
        json!({"team_id": "t", "max_budget": 0.004}),
    )
    .await;
    admin_ok(
        &gw,
        "/user/new",
        json!({"user_id": "u", "max_budget": 0.003, "auto_create_key": false}),
    )
    .await;
    admin_ok(
        &gw,
        "/customer/new",
        json!({"user_id": "e", "max_budget": 0.002}),
    )
    .await;
    // k1: team and user; k2: team only; k3: user only; each $0.0025.
    let mut keys = Vec::new();
    for fields in [
        json!({"team_id": "t", "user_id": "u"}),
        json!({"team_id": "t"}),
        json!({"user_id": "u"}),
    ] {
        let mut f = fields;
        f["models"] = json!(["*"]);
        f["max_budget"] = json!(0.0025);
        keys.push(generate_key(&gw, f).await);
    }
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let key = keys[i % 3].0.clone();
            let end_user = if i % 2 == 0 { "e" } else { "f" };
            let body = chat("m", &format!(r#""max_tokens":50,"user":"{end_user}""#));
            let url = url.clone();
            tokio::spawn(async move { post_as(&url, &key, body).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        if a.status == 200 {
            ok += 1;
        } else {
            let e = a.error(402, "budget_exceeded");
            let scope = e["error"]["metadata"]["scope"].as_str().unwrap().to_owned();
            assert!(
                ["key", "team", "user", "end_user", "global"].contains(&scope.as_str()),
                "{scope}"
            );
            refused += 1;
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let key = |i: usize| Scope::Key(keys[i].1.as_str().into());
    let (k1, k2, k3) = (
        settled(&ledger, &key(0), Period::Total).await,
        settled(&ledger, &key(1), Period::Total).await,
        settled(&ledger, &key(2), Period::Total).await,
    );
    let team = settled(&ledger, &Scope::Team("t".into()), Period::Total).await;
    let user = settled(&ledger, &Scope::User("u".into()), Period::Total).await;
    let end_user = settled(&ledger, &Scope::EndUser("e".into()), Period::Total).await;
    let global = settled(&ledger, &Scope::Global, Period::Monthly).await;
    for (what, spent, max) in [
        ("k1", k1, 2_500),
        ("k2", k2, 2_500),
        ("k3", k3, 2_500),
        ("team", team, 4_000),
        ("user", user, 3_000),
        ("end user", end_user, 2_000),
        ("global", global, 10_000),
    ] {
        assert!(spent <= max, "{what} overspent: {spent} > {max}");
    }
    assert_eq!(team, k1 + k2, "the team is charged its keys' requests");
    assert_eq!(user, k1 + k3, "the user is charged its keys' requests");
    assert_eq!(global, k1 + k2 + k3, "global is charged every request");
    // Each scope's charge is its requests' recorded cost.
    let all = records(&gw, "model=m").await;
    assert_eq!(all.len(), 200, "one record per request");
    assert_eq!(cost(&all), global);
    assert_eq!(cost(&records(&gw, "end_user=e").await), end_user);
    assert_eq!(cost(&records(&gw, "user_id=u").await), user);
    assert_eq!(cost(&records(&gw, "team_id=t").await), team);
}
