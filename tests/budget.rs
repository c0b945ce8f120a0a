//! Budgets through real sockets: the reference gateway with `[budgets]`, in
//! front of the bundled mock upstream, all on 127.0.0.1. The test keeps a
//! clone of the gateway's ledger to read what was spent and reserved.

mod common;

use common::*;
use serde_json::{Value, json};
use tollgate::budget::{Ledger, Period, Scope};

/// One group at $1 per million tokens in and out: a token costs one micro-dollar.
const PRICED: &str = r#"
[budgets]
time_zone = "Europe/Paris"

[[groups]]
name = "m"
price_in_per_mtok = 1.0
price_out_per_mtok = 1.0
max_output_tokens = 1000
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
"#;

fn with_static_budget(max_usd: f64) -> String {
    format!(
        "{PRICED}\n[keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n\
         [[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n\
         max_budget = {max_usd}\nbudget_duration = \"monthly\"\n"
    )
}

fn client() -> Scope {
    Scope::Key("client01".into())
}

/// Waits until no request holds money any more (bodies settle as they end
/// or are dropped, a moment after the client has read them).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_never_overspend() {
    let mock = mock().await;
    let ledger = Ledger::default();
    // Each request reserves 1 prompt token + 100 output tokens = 101 micros;
    // the budget, $0.0101, admits about 100 of them at a time.
    let gw = gateway_with_ledger(&with_static_budget(0.0101), &mock, ledger.clone()).await;
    let url = gw.url("/v1/chat/completions");
    let body = chat("m", r#""max_tokens":100"#);
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post(&url, body).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            200 => ok += 1,
            _ => {
                let e = a.error(402, "budget_exceeded");
                assert_eq!(e["error"]["metadata"]["scope"], "key");
                assert!(e["error"]["metadata"]["resets_at"].is_string());
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 500);
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let spent = settled(&ledger, &client(), Period::Monthly).await;
    assert!(spent > 0 && spent <= 10_100, "spent {spent}");
    // One spend record per request, none dropped by the writer at this load.
    let writer = gw
        .spend
        .as_ref()
        .expect("spend records are on with [budgets]");
    for _ in 0..500 {
        writer.flush().await;
        if writer.written() >= 500 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        (writer.written(), writer.dropped(), writer.failed()),
        (500, 0, 0)
    );
}

#[tokio::test]
async fn fractional_usage_is_accepted_and_charged() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(&with_static_budget(1.0), &mock, ledger.clone()).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat("m", r#""max_tokens":50,"mock_fault":"fractional""#),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let usage = &a.json()["usage"];
    let p = usage["prompt_tokens"].as_f64().unwrap();
    let c = usage["completion_tokens"].as_f64().unwrap();
    assert_eq!(p.fract(), 0.5);
    let expected = (p.round() + c) as u64;
    let spent = settled(&ledger, &client(), Period::Monthly).await;
    // At most the reservation (prompt estimate + 50) is ever charged.
    assert!(
        spent > 0 && spent <= expected,
        "spent {spent}, usage {usage}"
    );
}

#[tokio::test]
async fn a_cut_stream_costs_more_than_nothing_and_less_than_the_reservation() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(&with_static_budget(1.0), &mock, ledger.clone()).await;
    let a = post(
        &gw.url("/v1/chat/completions"),
        chat(
            "m",
            r#""stream":true,"max_tokens":1000,"mock_fault":"cut:3""#,
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("\"error\""), "{}", a.body);
    let spent = settled(&ledger, &client(), Period::Monthly).await;
    // The reservation was over 1000 micros (1000 output tokens).
    assert!(spent > 0 && spent < 1000, "spent {spent}");
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_charged_what_was_streamed() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(&with_static_budget(1.0), &mock, ledger.clone()).await;
    let mut res = http()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(
            "m",
            r#""stream":true,"max_tokens":1000,"mock_fault":"stall:3""#,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(res);
    let spent = settled(&ledger, &client(), Period::Monthly).await;
    assert!(spent > 0 && spent < 1000, "spent {spent}");
}

#[tokio::test]
async fn removing_a_budget_with_null_lets_the_next_request_through() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(&with_static_budget(1.0), &mock, ledger.clone()).await;
    let admin = |path: &str, body: Value| {
        let url = gw.url(path);
        async move {
            let res = anonymous()
                .post(url)
                .bearer_auth(MASTER_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()
        }
    };
    let made = admin(
        "/key/generate",
        json!({"models": ["*"], "max_budget": 0.000001}),
    )
    .await;
    let key = made["key"].as_str().unwrap().to_owned();
    let id = made["key_id"].as_str().unwrap().to_owned();
    let body = chat("m", r#""max_tokens":10"#);
    post_as(&gw.url("/v1/chat/completions"), &key, body.clone())
        .await
        .error(402, "budget_exceeded");
    admin("/key/update", json!({"key": id, "max_budget": null})).await;
    let a = post_as(&gw.url("/v1/chat/completions"), &key, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[tokio::test]
async fn key_and_global_budgets_at_once() {
    let mock = mock().await;
    let ledger = Ledger::default();
    // Global $0.0005 a day, key $1 a month: the global one refuses first.
    let toml = with_static_budget(1.0).replace(
        "time_zone = \"Europe/Paris\"",
        "time_zone = \"Europe/Paris\"\nglobal_max_usd = 0.0005\nglobal_period = \"daily\"",
    );
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let url = gw.url("/v1/chat/completions");
    let body = chat("m", r#""max_tokens":100"#);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move { post(&url, body).await })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        let a = t.await.unwrap();
        if a.status != 200 {
            let e = a.error(402, "budget_exceeded");
            assert_eq!(e["error"]["metadata"]["scope"], "global");
            refused += 1;
        }
    }
    assert!(refused > 0);
    let global = settled(&ledger, &Scope::Global, Period::Daily).await;
    let key = settled(&ledger, &client(), Period::Monthly).await;
    assert!(global <= 500, "global {global}");
    assert_eq!(global, key, "every request was charged on both scopes");
}

#[tokio::test]
async fn streams_are_charged_from_usage_the_client_did_not_ask_to_see() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(&with_static_budget(1.0), &mock, ledger.clone()).await;
    let url = gw.url("/v1/chat/completions");
    // Asked for by the client: the usage chunk is shown, and charged.
    let asked = post(
        &url,
        chat(
            "m",
            r#""stream":true,"max_tokens":500,"stream_options":{"include_usage":true}"#,
        ),
    )
    .await;
    assert_eq!(asked.status, 200);
    let usage_line = asked
        .body
        .lines()
        .find(|l| l.contains("\"usage\":{"))
        .expect("the usage chunk");
    let event: Value = serde_json::from_str(usage_line.strip_prefix("data: ").unwrap()).unwrap();
    let charged = event["usage"]["prompt_tokens"].as_u64().unwrap()
        + event["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(settled(&ledger, &client(), Period::Monthly).await, charged);
    // Not asked for: the gateway asks upstream, charges it, and hides it.
    let plain = post(&url, chat("m", r#""stream":true,"max_tokens":500"#)).await;
    assert_eq!(plain.status, 200);
    assert!(!plain.body.contains("\"usage\""), "{}", plain.body);
    assert!(
        plain.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        plain.body
    );
    assert_eq!(
        plain.body.matches("\"content\"").count(),
        asked.body.matches("\"content\"").count()
    );
    let second = settled(&ledger, &client(), Period::Monthly).await - charged;
    assert!(second > 0 && second < 501, "second {second}");
    let requests = mock.log.all();
    assert_eq!(requests.len(), 2);
    for r in requests {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.contains("\"include_usage\":true"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_team_and_global_budgets_hold_together_under_concurrency() {
    let mock = mock().await;
    let ledger = Ledger::default();
    // Each request reserves 101 micros. Global $0.05; team $0.006 a day;
    // key a $0.004, key b $0.004 a month.
    let toml = with_static_budget(1.0).replace(
        "time_zone = \"Europe/Paris\"",
        "time_zone = \"Europe/Paris\"\nglobal_max_usd = 0.05\nglobal_period = \"monthly\"",
    );
    let gw = gateway_with_ledger(&toml, &mock, ledger.clone()).await;
    let admin = |path: &str, body: Value| {
        let url = gw.url(path);
        async move {
            let res = anonymous()
                .post(url)
                .bearer_auth(MASTER_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Value>().await.unwrap()
        }
    };
    admin(
        "/team/new",
        json!({"team_id": "t", "max_budget": 0.006, "budget_duration": "daily"}),
    )
    .await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let made = admin(
            "/key/generate",
            json!({"models": ["*"], "team_id": "t", "max_budget": 0.004, "budget_duration": "monthly"}),
        )
        .await;
        keys.push((
            made["key"].as_str().unwrap().to_owned(),
            made["key_id"].as_str().unwrap().to_owned(),
        ));
    }
    let url = gw.url("/v1/chat/completions");
    let body = chat("m", r#""max_tokens":100"#);
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let (url, body, key) = (url.clone(), body.clone(), keys[i % 2].0.clone());
            tokio::spawn(async move { post_as(&url, &key, body).await })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        let a = t.await.unwrap();
        if a.status != 200 {
            let e = a.error(402, "budget_exceeded");
            let scope = e["error"]["metadata"]["scope"].as_str().unwrap().to_owned();
            assert!(
                ["key", "team", "global"].contains(&scope.as_str()),
                "{scope}"
            );
            refused += 1;
        }
    }
    assert!(refused > 0);
    let a = settled(
        &ledger,
        &Scope::Key(keys[0].1.as_str().into()),
        Period::Monthly,
    )
    .await;
    let b = settled(
        &ledger,
        &Scope::Key(keys[1].1.as_str().into()),
        Period::Monthly,
    )
    .await;
    let team = settled(&ledger, &Scope::Team("t".into()), Period::Daily).await;
    let global = settled(&ledger, &Scope::Global, Period::Monthly).await;
    assert!(a <= 4_000 && b <= 4_000, "a {a}, b {b}");
    assert!(team <= 6_000, "team {team}");
    assert_eq!(
        team,
        a + b,
        "every request was charged on its key and its team"
    );
    assert_eq!(global, team);
}

/// A group with no price in the config is charged at the built-in price
/// table's entry for its upstream model (here gpt-4o-mini: $0.15 in, $0.60
/// out per million tokens).
#[tokio::test]
async fn a_group_without_a_configured_price_is_charged_at_the_tables() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let config = format!(
        "[[groups]]\nname = \"mini\"\n[[groups.deployments]]\nprovider = \"mock\"\n\
         base_url = \"{{mock}}\"\nmodel = \"gpt-4o-mini\"\n\
         [keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n\
         [[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n\
         max_budget = 1.0\nbudget_duration = \"monthly\"\n"
    );
    let gw = gateway_with_ledger(&config, &mock, ledger.clone()).await;
    let a = post(&gw.url("/v1/chat/completions"), chat("mini", "")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let usage = &a.json()["usage"];
    let price = tollgate::config::PriceTable::builtin()
        .get("gpt-4o-mini")
        .unwrap();
    let expected = price.cost(&tollgate::budget::TokenUsage {
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap(),
        completion_tokens: usage["completion_tokens"].as_u64().unwrap(),
        ..Default::default()
    });
    assert!(expected > 0);
    assert_eq!(settled(&ledger, &client(), Period::Monthly).await, expected);
}

/// Two deployments of one group from the same provider at different prices:
/// each call is charged at the price of the deployment that served it
/// (told apart by provider and upstream model), and reserved at the dearer.
#[tokio::test]
async fn each_call_is_charged_at_the_price_of_the_deployment_that_served_it() {
    let mock = mock().await;
    let ledger = Ledger::default();
    let config = format!(
        "[[groups]]\nname = \"m\"\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\n\
         [[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"{{mock}}\"\nmodel = \"cheap\"\n\
         [[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"{{mock}}\"\nmodel = \"dear\"\n\
         price_in_per_mtok = 10.0\nprice_out_per_mtok = 10.0\n\
         [keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n\
         [[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n\
         max_budget = 1.0\nbudget_duration = \"monthly\"\n"
    );
    let gw = gateway_with_ledger(&config, &mock, ledger.clone()).await;
    let mut seen = std::collections::BTreeSet::new();
    let mut expected = 0;
    for _ in 0..40 {
        let a = post(&gw.url("/v1/chat/completions"), chat("m", "")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json();
        let served = mock.log.last().unwrap();
        let sent: Value = serde_json::from_slice(&served.body).unwrap();
        let model = sent["model"].as_str().unwrap().to_owned();
        let per_token = if model == "dear" { 10 } else { 1 };
        expected += per_token
            * (v["usage"]["prompt_tokens"].as_u64().unwrap()
                + v["usage"]["completion_tokens"].as_u64().unwrap());
        assert_eq!(
            settled(&ledger, &client(), Period::Monthly).await,
            expected,
            "{model}"
        );
        seen.insert(model);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both deployments served: {seen:?}");
}

/// A `budget_duration` in LiteLLM's syntax that is not a calendar period
/// (`2h`) is a fixed window anchored when it was set: spent up, the key is
/// refused until the window's end (its `budget_reset_at`), and starts again
/// at zero then — time driven through the ledger's clock, no sleeping.
#[tokio::test]
async fn a_fixed_budget_window_rolls_over_at_its_reset_time() {
    use tollgate::budget::{ManualClock, TimeZone, Timestamp};
    let mock = mock().await;
    // A minute ahead of the system clock, which anchors the window when the
    // key is made just below: the ledger's now is inside the first window.
    let clock =
        ManualClock::new(Timestamp::from_second(Timestamp::now().as_second() + 60).unwrap());
    let ledger = Ledger::with_clock(TimeZone::get("Europe/Paris").unwrap(), clock.clone());
    let gw = gateway_with_ledger(&with_static_budget(1.0), &mock, ledger.clone()).await;
    let made = anonymous()
        .post(gw.url("/key/generate"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"models": ["*"], "max_budget": 0.000150, "budget_duration": "2h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 200);
    let made: Value = made.json().await.unwrap();
    assert_eq!(made["budget_duration"], "2h");
    let reset: Timestamp = made["budget_reset_at"].as_str().unwrap().parse().unwrap();
    let created: Timestamp = made["created_at"].as_str().unwrap().parse().unwrap();
    let hours = (reset.as_second() - created.as_second()) as f64 / 3600.0;
    assert!(
        (1.99..=2.01).contains(&hours),
        "resets {hours} h after creation"
    );
    let key = made["key"].as_str().unwrap().to_owned();
    let url = gw.url("/v1/chat/completions");
    // 1 prompt token + 100 output tokens reserved: 101 micros of 150.
    let body = chat("m", r#""max_tokens":100"#);
    let first = post_as(&url, &key, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let id = made["key_id"].as_str().unwrap();
    let period = tollgate::budget::Period::Every(tollgate::duration::Every {
        length: tollgate::duration::Length::Seconds(7_200),
        anchor: reset.as_second() - 7_200,
    });
    let spent = settled(&ledger, &Scope::Key(id.into()), period).await;
    assert!(spent > 0);
    // Until the window ends, what is left cannot cover another request.
    loop {
        let a = post_as(&url, &key, body.clone()).await;
        if a.status == 402 {
            let e = a.error(402, "budget_exceeded");
            assert_eq!(e["error"]["metadata"]["period"], "2h");
            let at: Timestamp = e["error"]["metadata"]["resets_at"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(at, reset, "the refusal names the same reset");
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
        settled(&ledger, &Scope::Key(id.into()), period).await;
    }
    clock.set(Timestamp::from_second(reset.as_second() - 1).unwrap());
    post_as(&url, &key, body.clone())
        .await
        .error(402, "budget_exceeded");
    // At the reset instant a new window starts at zero.
    clock.set(reset);
    let again = post_as(&url, &key, body).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let info = anonymous()
        .get(gw.url(&format!("/key/info?key={id}")))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let next: Timestamp = info["info"]["budget_reset_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(next.as_second() - reset.as_second(), 7_200);
    assert_eq!(
        info["info"]["budgets"][0]["period_start"],
        reset.to_string()
    );
}

/// LiteLLM's `budget_duration` spellings: its calendar ones stay calendar
/// periods; a malformed one is a 400 naming the field, and nothing is made.
#[tokio::test]
async fn budget_durations_in_litellms_syntax() {
    let mock = mock().await;
    let gw = gateway(&with_static_budget(1.0), &mock).await;
    let generate = |body: Value| {
        let url = gw.url("/key/generate");
        async move {
            let res = anonymous()
                .post(url)
                .bearer_auth(MASTER_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            read_answer(res).await
        }
    };
    for (given, shown) in [
        ("30s", "30s"),
        ("30m", "30m"),
        ("1h", "1h"),
        ("36h", "36h"),
        ("1d", "daily"),
        ("7d", "weekly"),
        ("30d", "monthly"),
        ("1mo", "monthly"),
        ("3mo", "3mo"),
        ("weekly", "weekly"),
    ] {
        let a = generate(json!({"max_budget": 1, "budget_duration": given})).await;
        assert_eq!(a.status, 200, "{given}: {}", a.body);
        let v = a.json();
        assert_eq!(v["budget_duration"], shown, "{given}");
        assert!(v["budget_reset_at"].is_string(), "{given}: {v}");
    }
    let total = generate(json!({"max_budget": 1})).await.json();
    assert_eq!(total["budget_reset_at"], Value::Null);
    for bad in ["30x", "0d", "1.5h", "-1d", "fortnightly", ""] {
        let e = generate(json!({"key_alias": "bad", "max_budget": 1, "budget_duration": bad}))
            .await
            .error(400, "invalid_request");
        assert_eq!(e["error"]["metadata"]["param"], "budget_duration", "{bad}");
    }
    let e = generate(json!({"budget_duration": 30}))
        .await
        .error(400, "invalid_request");
    assert_eq!(e["error"]["metadata"]["param"], "budget_duration");
    let list = anonymous()
        .get(gw.url("/key/list?key_alias=bad"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(list["total_count"], 0, "nothing written: {list}");
}
