//! Spend records through real sockets: the reference gateway with
//! `[budgets]` on a SQLite file, in front of the bundled mock upstream, all
//! on 127.0.0.1; records read back through `GET /spend/logs`.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use tollgate::budget::{Ledger, SpendRecord, SpendStore, SqliteSpendStore, Timestamp};

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-spend-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tollgate.db")
}

fn deployment(name: &str, mock: &MockServer, fault: Option<&str>) -> String {
    let headers = fault
        .map(|f| format!("headers = {{ \"x-mock-fault\" = \"{f}\" }}\n"))
        .unwrap_or_default();
    format!(
        "[[groups.deployments]]\nprovider = \"mock\"\nname = \"{name}\"\nbase_url = \"{}\"\n{headers}\n",
        mock.base_url()
    )
}

/// `m` at $1 per million tokens in and out (a token costs a micro-dollar);
/// `boom`, whose one deployment always answers 500, falls back to `m`;
/// `down` always answers 500 and has no fallback. One retry per group.
fn config(mock: &MockServer, db: &Path, key_budget: Option<f64>) -> String {
    let budget = key_budget
        .map(|b| format!("max_budget = {b}\nbudget_duration = \"monthly\"\n"))
        .unwrap_or_default();
    format!(
        "[upstream]\nconnect_timeout_ms = 1000\nfirst_byte_timeout_ms = 2000\n\n\
         [router]\nnum_retries = 1\nbackoff_ms = 1\nmax_backoff_ms = 2\n\n\
         [budgets]\ntime_zone = \"UTC\"\n\n\
         [spend]\nqueue = 10000\nbatch = 64\n\n\
         [[groups]]\nname = \"m\"\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\nmax_output_tokens = 1000\n{}\
         [[groups]]\nname = \"boom\"\nfallbacks = [\"m\"]\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\n{}\
         [[groups]]\nname = \"down\"\n{}\
         [keys]\nstore = \"sqlite\"\nsqlite_path = \"{}\"\nmaster_key_env = \"{{master_env}}\"\n\
         [[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n{budget}",
        deployment("good", mock, None),
        deployment("boom-500", mock, Some("500")),
        deployment("down-500", mock, Some("500")),
        db.display()
    )
}

async fn start(mock: &MockServer, db: &Path, key_budget: Option<f64>) -> (Gateway, Ledger) {
    let ledger = Ledger::default();
    let gw = gateway_with_ledger(&config(mock, db, key_budget), mock, ledger.clone()).await;
    (gw, ledger)
}

/// POSTs `body` with the client key and `x-request-id: id`.
async fn post_with_id(gw: &Gateway, id: &str, body: String) -> Answer {
    let res = http()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", id)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

async fn admin_get(gw: &Gateway, path_and_query: &str) -> (u16, String) {
    let res = anonymous()
        .get(gw.url(path_and_query))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// Every record of `query` (without `cursor`), walking `next_cursor`;
/// checks each page's size and that pages are newest first.
async fn walk(gw: &Gateway, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last: Option<Timestamp> = None;
    loop {
        let mut q = format!("/spend/logs?limit={limit}");
        if !query.is_empty() {
            q.push('&');
            q.push_str(query);
        }
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = admin_get(gw, &q).await;
        assert_eq!(status, 200, "{q}: {body}");
        assert_no_secrets("/spend/logs", &body);
        let v: Value = serde_json::from_str(&body).unwrap();
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        for r in data {
            let start: Timestamp = r["start_time"].as_str().unwrap().parse().unwrap();
            assert!(last.is_none_or(|l| start <= l), "newest first");
            last = Some(start);
        }
        out.extend(data.iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(data.len(), limit, "only the last page is short");
                cursor = Some(c.to_owned());
            }
            None => return out,
        }
    }
}

/// Waits until the gateway's writer has stored everything queued so far.
async fn flushed(gw: &Gateway) {
    gw.spend
        .as_ref()
        .expect("spend records are on")
        .flush()
        .await;
}

/// The records of `query` once there are `n` of them (bodies settle, and
/// their records are queued, a moment after the client has read them).
async fn records(gw: &Gateway, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        flushed(gw).await;
        let got = walk(gw, query, 100).await;
        if got.len() >= n {
            assert_eq!(got.len(), n, "{got:#?}");
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("fewer than {n} records of `{query}`");
}

fn by_id<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["request_id"] == id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_per_request_through_retries_fallbacks_failures_and_refusals() {
    let mock = mock().await;
    let db = temp_db("one-per-request");
    let (gw, ledger) = start(&mock, &db, Some(0.5)).await;

    // Answered at once.
    let a = post_with_id(&gw, "plain-1", chat("m", r#""max_tokens":20"#)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // `boom` fails twice (a retry), then falls back to `m`: three attempts, one record.
    let before = mock.log.len();
    let b = post_with_id(&gw, "fallback-1", chat("boom", r#""max_tokens":20"#)).await;
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.headers["x-tollgate-attempts"], "3");
    assert_eq!(mock.log.len() - before, 3, "three upstream calls");
    // `down` fails twice and has nowhere to go: one record of the failure.
    let c = post_with_id(&gw, "failed-1", chat("down", r#""max_tokens":20"#)).await;
    assert!(c.status >= 500, "{}", c.body);
    // Refused by the key's budget ($0.50; 10^6 output tokens cost $1).
    let d = post_with_id(&gw, "refused-1", chat("m", r#""max_tokens":1000000"#)).await;
    d.error(402, "budget_exceeded");
    // A stream: one record when it ends.
    let e = post_with_id(
        &gw,
        "stream-1",
        chat("m", r#""stream":true,"max_tokens":50"#),
    )
    .await;
    assert_eq!(e.status, 200);
    let records = records(&gw, "", 5).await;
    for id in ["plain-1", "fallback-1", "failed-1", "refused-1", "stream-1"] {
        assert_eq!(by_id(&records, id).len(), 1, "one record of {id}");
    }
    let plain = by_id(&records, "plain-1")[0];
    assert_eq!(plain["status"], 200);
    assert_eq!(plain["key_id"], "client01");
    assert_eq!(
        (plain["model"].as_str(), plain["model_group"].as_str()),
        (Some("m"), Some("m"))
    );
    assert_eq!(plain["deployment"], "mock");
    assert_eq!(plain["attempts"], 1);
    assert_eq!(plain["tokens_estimated"], false);
    let usage = a.json()["usage"].clone();
    let cost =
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
    // A token costs a micro-dollar; the charge is at most the reservation
    // (prompt estimate + 20 output tokens).
    let charged = plain["spend_micros"].as_u64().unwrap();
    assert!(
        charged > 20 && charged <= cost,
        "charged {charged}, cost {cost}"
    );
    assert_eq!(plain["prompt_tokens"], usage["prompt_tokens"]);

    let fb = by_id(&records, "fallback-1")[0];
    assert_eq!(
        (fb["status"].as_u64(), fb["attempts"].as_u64()),
        (Some(200), Some(3))
    );
    assert_eq!(
        (fb["model"].as_str(), fb["model_group"].as_str()),
        (Some("boom"), Some("m"))
    );
    assert!(fb["spend_micros"].as_u64().unwrap() > 0);

    let failed = by_id(&records, "failed-1")[0];
    assert_eq!(failed["status"].as_u64(), Some(c.status as u64));
    assert_eq!(
        (failed["spend_micros"].as_u64(), failed["attempts"].as_u64()),
        (Some(0), Some(2))
    );

    let refused = by_id(&records, "refused-1")[0];
    assert_eq!(
        (refused["status"].as_u64(), refused["spend_micros"].as_u64()),
        (Some(402), Some(0))
    );
    assert_eq!(refused["attempts"], 0);

    let stream = by_id(&records, "stream-1")[0];
    assert!(stream["spend_micros"].as_u64().unwrap() > 0);
    // The key's ledger spend is exactly the sum of its records' spend.
    let sum: u64 = records
        .iter()
        .map(|r| r["spend_micros"].as_u64().unwrap())
        .sum();
    let spent = ledger
        .usage(
            &tollgate::budget::Scope::Key("client01".into()),
            tollgate::budget::Period::Monthly,
        )
        .spent;
    assert_eq!(spent, sum);
    assert_eq!(gw.spend.as_ref().unwrap().dropped(), 0);
    // Nothing secret in the records, in the answers, in the database, in the logs.
    let raw = std::fs::read(&db).unwrap();
    assert_no_secrets("the database", &String::from_utf8_lossy(&raw));
    assert_no_secrets("the logs", &logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_a_restart_and_the_budget_still_refuses() {
    let mock = mock().await;
    let db = temp_db("restart");
    // $0.0002 a month: a few small requests use it up.
    let (mut gw, _ledger) = start(&mock, &db, Some(0.0002)).await;
    let body = chat("m", r#""max_tokens":10"#);
    let mut answered = 0;
    loop {
        let a = post(&gw.url("/v1/chat/completions"), body.clone()).await;
        if a.status == 402 {
            break;
        }
        assert_eq!(a.status, 200, "{}", a.body);
        answered += 1;
        assert!(answered < 100, "the budget never refused");
    }
    assert!(answered >= 1);
    // The refusal is recorded too.
    let before = records(&gw, "", answered + 1).await;
    // A graceful stop writes what is queued; a new process starts on the same file.
    gw.shutdown();
    (&mut gw.task).await.unwrap().unwrap();
    drop(gw);
    let (gw, ledger) = start(&mock, &db, Some(0.0002)).await;
    let key = tollgate::budget::Scope::Key("client01".into());
    let spent: u64 = before
        .iter()
        .map(|r| r["spend_micros"].as_u64().unwrap())
        .sum();
    assert!(spent > 0);
    assert_eq!(
        ledger.usage(&key, tollgate::budget::Period::Monthly).spent,
        spent,
        "the month's spend is rebuilt from the records"
    );
    post(&gw.url("/v1/chat/completions"), body)
        .await
        .error(402, "budget_exceeded");
    // Old records kept, the new refusal added.
    records(&gw, "", before.len() + 1).await;
    // `/key/info` shows the rebuilt spend of the current period.
    let (status, body) = admin_get(&gw, "/key/info?key=client01").await;
    assert_eq!(status, 200, "{body}");
    assert_no_secrets("/key/info", &body);
    let info: Value = serde_json::from_str(&body).unwrap();
    let budgets = info["info"]["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 1, "{body}");
    assert_eq!(budgets[0]["scope"], "key");
    assert_eq!(budgets[0]["spend_micros"], spent);
    assert_eq!(budgets[0]["reserved_micros"], 0);
    assert_eq!(budgets[0]["budget_duration"], "monthly");
    assert!(
        budgets[0]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00Z"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_logs_filter_and_page_2500_records_each_exactly_once() {
    let mock = mock().await;
    let db = temp_db("logs");
    // 2,500 records of history, written into the file before the gateway starts.
    let store = SqliteSpendStore::open(&db).unwrap();
    let base = 1_790_000_000; // 2026-09-21
    let history: Vec<SpendRecord> = (0..2_500i64)
        .map(|i| {
            let mut r = SpendRecord::new(
                format!("h{i}"),
                ["m", "boom", "other"][(i % 3) as usize],
                Timestamp::from_second(base + i / 2).unwrap(),
            );
            r.key_id = Some(format!("k{}", i % 4));
            r.team_id = (i % 5 == 0).then(|| "t".to_owned());
            r.cost = 1;
            r.status = 200;
            r
        })
        .collect();
    for chunk in history.chunks(500) {
        store.write(chunk.to_vec()).await.unwrap();
    }
    let (gw, _ledger) = start(&mock, &db, None).await;

    let all = walk(&gw, "", 100).await;
    assert_eq!(all.len(), 2_500);
    let ids: HashSet<&str> = all
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2_500, "every record exactly once");
    assert_eq!(walk(&gw, "", 1000).await.len(), 2_500);
    // Filters, alone and together, against what the history holds.
    let count = |f: &dyn Fn(i64) -> bool| (0..2_500i64).filter(|&i| f(i)).count();
    let t = |s: i64| Timestamp::from_second(base + s).unwrap().to_string();
    let cases: Vec<(String, usize)> = vec![
        ("key_id=k1".into(), count(&|i| i % 4 == 1)),
        ("team_id=t".into(), count(&|i| i % 5 == 0)),
        ("model=boom".into(), count(&|i| i % 3 == 1)),
        (
            format!("start_time={}&end_time={}", t(100), t(200)),
            count(&|i| (100..200).contains(&(i / 2))),
        ),
        (
            format!("key_id=k0&team_id=t&model=m&start_time={}", t(300)),
            count(&|i| i % 4 == 0 && i % 5 == 0 && i % 3 == 0 && i / 2 >= 300),
        ),
        ("key_id=nobody".into(), 0),
    ];
    for (query, expected) in cases {
        let got = walk(&gw, &query, 37).await;
        assert_eq!(got.len(), expected, "{query}");
        let unique: HashSet<&str> = got
            .iter()
            .map(|r| r["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(unique.len(), expected, "{query}: each once");
    }
    // Bad parameters: 400 in the contract's shape, naming the parameter.
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("start_time=2026-13-01T00:00:00Z", "start_time"),
        ("end_time=tomorrow", "end_time"),
        ("cursor=not-a-cursor", "cursor"),
        ("team=t", "team"),
    ] {
        let (status, body) = admin_get(&gw, &format!("/spend/logs?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["metadata"]["param"], param, "{query}: {body}");
        assert_eq!(v["error"]["metadata"]["reason"], "invalid_request");
    }
    // The master key is needed.
    let res = anonymous().get(gw.url("/spend/logs")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = anonymous()
        .get(gw.url("/spend/logs"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_team_budget_with_null_lets_the_next_request_through() {
    let mock = mock().await;
    let db = temp_db("team-null");
    let (gw, _ledger) = start(&mock, &db, None).await;
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
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            assert_eq!(status, 200, "{v}");
            v
        }
    };
    admin(
        "/team/new",
        json!({"team_id": "tiny", "max_budget": 0.000001}),
    )
    .await;
    let made = admin("/key/generate", json!({"models": ["*"], "team_id": "tiny"})).await;
    let key = made["key"].as_str().unwrap().to_owned();
    let body = chat("m", r#""max_tokens":10"#);
    let refused = post_as(&gw.url("/v1/chat/completions"), &key, body.clone()).await;
    let e = refused.error(402, "budget_exceeded");
    assert_eq!(e["error"]["metadata"]["scope"], "team");
    // Left out: kept.
    admin(
        "/team/update",
        json!({"team_id": "tiny", "team_alias": "still tiny"}),
    )
    .await;
    post_as(&gw.url("/v1/chat/completions"), &key, body.clone())
        .await
        .error(402, "budget_exceeded");
    // `null`: removed.
    let t = admin(
        "/team/update",
        json!({"team_id": "tiny", "max_budget": null}),
    )
    .await;
    assert!(t["max_budget"].is_null(), "{t}");
    let a = post_as(&gw.url("/v1/chat/completions"), &key, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let records = records(&gw, "team_id=tiny", 3).await;
    let statuses: Vec<u64> = records
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 402, 402], "newest first");
}

/// Reads a field of `/proc/self/status` in KiB (0 where there is none).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_tool_call_stream_through_the_metered_gateway_in_flat_memory() {
    let mock = mock().await;
    let db = temp_db("big-stream");
    let (gw, ledger) = start(&mock, &db, Some(1_000.0)).await;
    let peak_before = proc_status_kib("VmHWM:");
    let mib = 200u64;
    let max_tokens = 100_000_000u64;
    let mut res = http()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", "big-1")
        .body(chat(
            "m",
            &format!(
                r#""stream":true,"max_tokens":{max_tokens},"mock_fault":"tool_args:{mib}MiB""#
            ),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (mut bytes, mut tail) = (0u64, Vec::new());
    let mut peak_during = 0;
    let mut chunks = 0u64;
    while let Some(chunk) = res.chunk().await.unwrap() {
        bytes += chunk.len() as u64;
        chunks += 1;
        if chunks.is_multiple_of(1024) {
            peak_during = peak_during.max(proc_status_kib("VmRSS:"));
        }
        tail.extend_from_slice(&chunk);
        if tail.len() > 256 {
            tail.drain(..tail.len() - 256);
        }
    }
    let peak_after = proc_status_kib("VmHWM:");
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.trim_end().ends_with("data: [DONE]"), "{tail}");
    assert!(
        !tail.contains("\"usage\""),
        "the usage chunk the client did not ask for is hidden"
    );
    // The whole 200 MiB of arguments arrived, with the SSE framing around them.
    assert!(bytes > mib << 20, "{bytes} bytes");
    let record = records(&gw, "", 1).await;
    let key = tollgate::budget::Scope::Key("client01".into());
    let spent = ledger.usage(&key, tollgate::budget::Period::Monthly).spent;
    // The mock reports completion_tokens = ceil(bytes / 4): 52,428,800.
    let reservation = max_tokens; // at $1 per million: a micro-dollar per token
    assert!(
        spent > (mib << 20) / 4 && spent < reservation,
        "spent {spent}"
    );
    assert_eq!(record[0]["spend_micros"], spent);
    assert_eq!(record[0]["completion_tokens"], (mib << 20) / 4);
    let growth_mib = peak_after.saturating_sub(peak_before) / 1024;
    eprintln!(
        "200 MiB tool-call stream: {bytes} bytes in {chunks} chunks; test process VmHWM {:.1} -> {:.1} MiB (+{growth_mib} MiB), highest sampled VmRSS {:.1} MiB",
        peak_before as f64 / 1024.0,
        peak_after as f64 / 1024.0,
        peak_during as f64 / 1024.0
    );
    // Whatever else runs in this process, a stream held in memory would
    // add its 200 MiB: the peak grows by far less.
    if peak_before > 0 {
        assert!(growth_mib < 100, "peak RSS grew by {growth_mib} MiB");
    }
}
