//! Observability through real sockets: the reference gateway's `/metrics`
//! (scraped with reqwest, the Prometheus text format parsed line by line)
//! after a scenario of retries, cooldowns, a fallback and plain requests
//! against mock upstreams on 127.0.0.1; the request spans' fields in the
//! captured logs; and `/metrics` switched off.
//!
//! Counters are checked for exact values. The recorder is global to this
//! test binary, so the scenario uses model groups of its own (`obs-*`) and
//! the other test sends no inference request.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::*;
use tollgate::router::ManualClock;

/// One series: its name and its labels.
type Series = (String, BTreeMap<String, String>);

/// A parsed scrape: the samples by series, and each metric family's `# TYPE`.
#[derive(Debug, Default)]
struct Scrape {
    samples: HashMap<Series, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// Parses the Prometheus text exposition format (0.0.4).
    fn parse(text: &str) -> Scrape {
        let mut out = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                out.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = parse_sample(line);
            assert!(
                out.samples.insert(series.clone(), value).is_none(),
                "series {series:?} twice"
            );
        }
        out
    }

    /// The sample of `name` with exactly `labels`; 0 when absent.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Every series of `name`.
    fn all(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect()
    }
}

/// `name{k="v",…} value` (labels optional; values may escape `\\`, `\"`, `\n`).
fn parse_sample(line: &str) -> (Series, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed: {line}"));
            match c {
                '}' => break i,
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next().unwrap_or_else(|| panic!("open value: {line}"));
                        match c {
                            '"' => break,
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => panic!("bad escape: {line}"),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &body[end + 1..];
    }
    let value = rest.split_whitespace().next().expect("a value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|e| panic!("{e}: {line}")),
    };
    ((name, labels), value)
}

#[test]
fn the_parser_reads_labels_escapes_and_bare_samples() {
    let s = Scrape::parse(
        "# HELP x_total help text\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"u\\\\o\"} 3\nbare 4.5\nh_bucket{le=\"+Inf\"} 2\n",
    );
    assert_eq!(s.get("x_total", &[("a", "1"), ("b", "q\"u\\o")]), 3.0);
    assert_eq!(s.get("x_total", &[("a", "1")]), 0.0, "labels match exactly");
    assert_eq!(s.get("bare", &[]), 4.5);
    assert_eq!(s.get("h_bucket", &[("le", "+Inf")]), 2.0);
    assert_eq!(s.types["x_total"], "counter");
}

fn deployment(name: &str, mock: &MockServer, fault: Option<&str>) -> String {
    let headers = fault
        .map(|f| format!("headers = {{ \"x-mock-fault\" = \"{f}\" }}\n"))
        .unwrap_or_default();
    format!(
        "[[groups.deployments]]\nprovider = \"mock\"\nname = \"{name}\"\nbase_url = \"{}\"\napi_key_env = \"{{key_env}}\"\n{headers}\n",
        mock.base_url()
    )
}

async fn scrape(gw: &Gateway) -> (Scrape, String) {
    let res = anonymous()
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = res.text().await.unwrap();
    (Scrape::parse(&text), text)
}

/// A 429 with `Retry-After` on one deployment (retried on its twin, which
/// cools it down), a group whose only deployment says the model is gone
/// (fallback to the next group), plain requests, an unknown model and an
/// unauthenticated request: then every counter holds exactly what happened.
#[tokio::test]
async fn metrics_count_exactly_what_the_scenario_did() {
    let good = mock().await;
    let limited = mock().await;
    let gone = mock().await;
    let config = format!(
        "[[groups]]\nname = \"obs-a\"\n{}{}\
         [[groups]]\nname = \"obs-b\"\nfallbacks = [\"obs-c\"]\n{}\
         [[groups]]\nname = \"obs-c\"\n{}",
        deployment("a1", &limited, Some("429:6")),
        deployment("a2", &good, None),
        deployment("b1", &gone, Some("404")),
        deployment("c1", &good, None),
    );
    // The clock never moves: a cooldown, once started, lasts the whole test.
    let gw = gateway_with_clock(&config, &good, Arc::new(ManualClock::default())).await;
    let url = gw.url("/v1/chat/completions");

    // Nothing yet: every request series is there at zero.
    let (before, _) = scrape(&gw).await;
    assert_eq!(
        before.get(
            "tollgate_requests_total",
            &[("model_group", "obs-a"), ("status", "2xx")]
        ),
        0.0
    );

    let mut retried = 0;
    for _ in 0..4 {
        let ans = post(&url, chat("obs-a", "")).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(ans.headers["x-tollgate-deployment"], "a2");
        retried += u32::from(ans.headers["x-tollgate-attempts"] == "2");
    }
    assert_eq!(retried, 1, "one request met a1's 429 and was retried on a2");
    assert_eq!(limited.log.len(), 1, "a1 cooled down after its 429");
    for _ in 0..3 {
        let ans = post(&url, chat("obs-b", "")).await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(ans.headers["x-tollgate-model-group"], "obs-c");
    }
    assert_eq!(gone.log.len(), 1, "b1 cooled down after its 404");
    for _ in 0..3 {
        assert_eq!(post(&url, chat("obs-c", "")).await.status, 200);
    }
    post(&url, chat("no-such-group-xyz", ""))
        .await
        .error(404, "model_not_found");
    let unauth = anonymous()
        .post(&url)
        .header("content-type", "application/json")
        .body(chat("obs-a", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let (m, text) = scrape(&gw).await;
    let requests = |g: &str, s: &str| {
        m.get(
            "tollgate_requests_total",
            &[("model_group", g), ("status", s)],
        )
    };
    assert_eq!(requests("obs-a", "2xx"), 4.0);
    assert_eq!(
        requests("obs-b", "2xx"),
        3.0,
        "labelled by the group asked for"
    );
    assert_eq!(requests("obs-c", "2xx"), 3.0);
    assert_eq!(requests("other", "4xx"), 1.0);
    for s in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(requests("obs-a", s), 0.0, "{s}");
    }
    assert!(
        m.all("tollgate_requests_total")
            .iter()
            .all(|(l, _)| l["model_group"] != "no-such-group-xyz"),
        "a client's made-up model is no series"
    );

    assert_eq!(
        m.get("tollgate_retries_total", &[("model_group", "obs-a")]),
        1.0
    );
    assert_eq!(
        m.get("tollgate_retries_total", &[("model_group", "obs-b")]),
        0.0
    );
    assert_eq!(
        m.get(
            "tollgate_upstream_errors_total",
            &[
                ("deployment", "obs-a/a1"),
                ("reason", "upstream_rate_limited")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "tollgate_upstream_errors_total",
            &[
                ("deployment", "obs-b/b1"),
                ("reason", "upstream_model_not_found")
            ]
        ),
        1.0
    );
    assert_eq!(
        m.all("tollgate_upstream_errors_total")
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>(),
        2.0
    );
    assert_eq!(
        m.get(
            "tollgate_cooldowns_total",
            &[("deployment", "obs-a/a1"), ("reason", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "tollgate_cooldowns_total",
            &[("deployment", "obs-b/b1"), ("reason", "model_gone")]
        ),
        1.0
    );
    assert_eq!(
        m.get(
            "tollgate_fallbacks_total",
            &[("from", "obs-b"), ("to", "obs-c")]
        ),
        3.0
    );

    // Histograms: one observation per request.
    assert_eq!(
        m.types["tollgate_request_duration_seconds"], "histogram",
        "{text}"
    );
    for (g, n) in [
        ("obs-a", 4.0),
        ("obs-b", 3.0),
        ("obs-c", 3.0),
        ("other", 1.0),
    ] {
        let l = [("model_group", g)];
        assert_eq!(
            m.get("tollgate_request_duration_seconds_count", &l),
            n,
            "{g}"
        );
        let inf = [("model_group", g), ("le", "+Inf")];
        assert_eq!(
            m.get("tollgate_request_duration_seconds_bucket", &inf),
            n,
            "{g}"
        );
        assert!(
            m.get("tollgate_request_duration_seconds_sum", &l) > 0.0,
            "{g}"
        );
    }
    // The overhead covers every inference request, the 401 included.
    assert_eq!(m.types["tollgate_overhead_seconds"], "histogram");
    assert_eq!(m.get("tollgate_overhead_seconds_count", &[]), 12.0);
    assert_eq!(
        m.get("tollgate_overhead_seconds_bucket", &[("le", "+Inf")]),
        12.0
    );

    // In flight: a gauge per deployment, back to zero once every body is
    // read (the server drops a body just after its last byte is written).
    // The recorder is the process's: this scenario's deployments only (the
    // other tests of this binary register theirs in it too).
    let ours = |m: &Scrape| -> Vec<(BTreeMap<String, String>, f64)> {
        m.all("tollgate_deployment_in_flight")
            .into_iter()
            .filter(|(l, _)| l["deployment"].starts_with("obs-"))
            .map(|(l, v)| (l.clone(), v))
            .collect()
    };
    let mut settled = m;
    for _ in 0..100 {
        let in_flight = ours(&settled);
        if in_flight.len() == 4 && in_flight.iter().all(|(_, v)| *v == 0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        settled = scrape(&gw).await.0;
    }
    let in_flight = ours(&settled);
    let mut names: Vec<&str> = in_flight
        .iter()
        .map(|(l, _)| l["deployment"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["obs-a/a1", "obs-a/a2", "obs-b/b1", "obs-c/c1"]);
    assert!(in_flight.iter().all(|(_, v)| *v == 0.0), "{in_flight:?}");

    // No secret in any label or value.
    assert_no_secrets("/metrics", &text);

    // The spans: the request's own fields, the group tried and each attempt.
    let logs = logs();
    assert!(logs.contains("key_id=client01"), "{logs}");
    assert!(logs.contains("model=obs-a"), "{logs}");
    assert!(
        logs.contains("attempt{deployment=a1 attempt=1}"),
        "the failed attempt's span: {logs}"
    );
    assert!(
        logs.contains("model_group{model_group=obs-b}"),
        "the group's span: {logs}"
    );
    assert!(
        logs.contains("model_group{model_group=obs-c}:attempt{deployment=c1 attempt=1}"),
        "the fallback group's span: {logs}"
    );
    assert_no_secrets("the logs", &logs);
}

#[tokio::test]
async fn metrics_off_is_a_404_and_the_rest_still_serves() {
    let m = mock().await;
    let config = format!(
        "[server]\nmetrics = false\n[[groups]]\nname = \"quiet\"\n{}",
        deployment("q1", &m, None)
    );
    let gw = gateway(&config, &m).await;
    let res = anonymous().get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["metadata"]["reason"], "not_found");
    let health = anonymous().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}
