//! The fairness experiment: a heavy and a light client through the real
//! gateway (`FairQueue` over the mock upstream with latency), all on
//! 127.0.0.1, through real sockets.
//!
//! ```text
//! cargo run --release --example fairness
//! ```
//!
//! Starts the mock upstream (40 ms before every answer) and the reference
//! gateway with `[fair_queue] capacity = 8`, then measures, printing as it
//! goes:
//!
//! 1. the light client's latency alone (40 requests, one after another);
//! 2. the same while the heavy client has 4,000 requests in the queue at
//!    once (100 for each light request), and the ratio of the two p99s
//!    (goal: within 2x) — once with every request taking 40 ms, so that the
//!    8 slots free in lockstep waves (the worst case: a light request that
//!    just missed a wave waits a whole 40 ms), once with the heavy client's
//!    requests taking 20-60 ms (the `mock_latency_ms` body field), as real
//!    upstream latencies vary;
//! 3. for contrast, first-come-first-served: both clients under one key (one
//!    tenant), the light one's next request behind a burst of 400;
//! 4. two backlogged clients of weights 3 and 1 (800 requests each at
//!    once): how the first 800 answers split, and Jain's fairness index over
//!    the weighted throughputs (served / weight; goal: at least 0.99).
//!
//! `FAIRNESS_DEBUG=1` also prints each light latency under the bursts.
//!
//! Everything is bounded: about 15 s and at most ~6,000 requests; the
//! requests left waiting at the end of a phase are dropped (the clients
//! hang up, which frees their places in the queue).

#[path = "gateway.rs"]
mod gateway;
#[path = "mock_upstream.rs"]
mod mock_upstream;

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

const LATENCY: Duration = Duration::from_millis(40);
const CAPACITY: usize = 8;
const LIGHT_REQUESTS: usize = 40;
const BURST_PER_LIGHT: usize = 100;

const HEAVY: &str = "tg-heavy-experimentSecretHeavy000000000";
const LIGHT: &str = "tg-light-experimentSecretLight000000000";
const THREE: &str = "tg-three-experimentSecretThree000000000";
const ONE: &str = "tg-one-experimentSecretOne00000000000000";

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    /// One chat completion presenting `key`; its latency, or what went wrong.
    async fn call(&self, key: &str) -> Result<Duration, String> {
        self.call_with(key, None).await
    }

    /// The same, asking the mock for `latency` instead of its default
    /// (through the `mock_latency_ms` body field, which the gateway forwards).
    async fn call_with(&self, key: &str, latency: Option<u64>) -> Result<Duration, String> {
        let body = match latency {
            None => {
                r#"{"model":"g","messages":[{"role":"user","content":"Say hello."}]}"#.to_owned()
            }
            Some(ms) => format!(
                r#"{{"model":"g","mock_latency_ms":{ms},"messages":[{{"role":"user","content":"Say hello."}}]}}"#
            ),
        };
        let start = Instant::now();
        let res = self
            .http
            .post(&self.url)
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res.bytes().await.map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(start.elapsed())
    }

    /// `n` requests one after another; their latencies.
    async fn sequential(&self, key: &str, n: usize) -> Vec<Duration> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            match self.call(key).await {
                Ok(d) => out.push(d),
                Err(e) => panic!("a light request failed: {e}"),
            }
        }
        out
    }

    /// `n` requests at once, each in its own task; with `jitter`, each asks
    /// the mock for a latency drawn uniformly from that range (in ms).
    fn burst(
        &self,
        key: &'static str,
        n: usize,
        jitter: Option<std::ops::RangeInclusive<u64>>,
    ) -> Vec<JoinHandle<Result<Duration, String>>> {
        (0..n)
            .map(|_| {
                let c = self.clone();
                let latency = jitter.clone().map(fastrand::u64);
                tokio::spawn(async move { c.call_with(key, latency).await })
            })
            .collect()
    }
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Hangs up every request still waiting and lets the gateway drain.
async fn cancel(tasks: Vec<JoinHandle<Result<Duration, String>>>) -> usize {
    let mut done = 0;
    for t in &tasks {
        if t.is_finished() {
            done += 1;
        }
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(LATENCY * 3).await;
    done
}

/// Waits (bounded) until the upstream has received `n` requests since the
/// log was last cleared (it keeps the last 1,000).
async fn upstream_saw(mock: &mock_upstream::MockServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.log.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Jain's fairness index of `x`: 1 when all are equal, 1/n at worst.
fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    sum * sum / (x.len() as f64 * squares)
}

/// The experiment's keys, by the environment variable the config reads them
/// from (loopback-only experiment keys, not secrets).
const KEYS: [(&str, &str); 4] = [
    ("TOLLGATE_FAIRNESS_HEAVY", HEAVY),
    ("TOLLGATE_FAIRNESS_LIGHT", LIGHT),
    ("TOLLGATE_FAIRNESS_THREE", THREE),
    ("TOLLGATE_FAIRNESS_ONE", ONE),
];

fn main() {
    for (var, key) in KEYS {
        // SAFETY: before the runtime starts, the process has one thread.
        unsafe { std::env::set_var(var, key) };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(run());
}

async fn run() {
    let mock = mock_upstream::spawn(mock_upstream::MockConfig {
        latency: LATENCY,
        ..Default::default()
    })
    .await
    .expect("the mock upstream starts");
    let toml = format!(
        r#"
        [fair_queue]
        capacity = {CAPACITY}
        max_queue_per_tenant = 10000
        max_wait_ms = 120000
        [keys]
        store = "memory"
        [[keys.static]]
        key_env = "TOLLGATE_FAIRNESS_HEAVY"
        models = ["*"]
        [[keys.static]]
        key_env = "TOLLGATE_FAIRNESS_LIGHT"
        models = ["*"]
        [[keys.static]]
        key_env = "TOLLGATE_FAIRNESS_THREE"
        models = ["*"]
        weight = 3
        [[keys.static]]
        key_env = "TOLLGATE_FAIRNESS_ONE"
        models = ["*"]
        weight = 1
        [[groups]]
        name = "g"
        [[groups.deployments]]
        provider = "mock"
        base_url = "{}"
        "#,
        mock.base_url()
    );
    let config = tollgate::config::Config::from_toml("fairness.toml", &toml)
        .unwrap_or_else(|e| panic!("{e}"));
    let app = gateway::app(&config).await.expect("the gateway builds");
    // A deep accept queue: the burst opens 4,000 connections at once, and
    // with the default (1,024) the kernel would drop some to be retried a
    // second later, a second storm in the middle of the measurement.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind 127.0.0.1:0");
    let listener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Each client has its own connection pool, as separate programs would:
    // the heavy one's thousands of connections never take the light one's.
    let new_client = || Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client"),
        url: format!("http://{addr}/v1/chat/completions"),
    };
    let (client, heavy_client) = (new_client(), new_client());
    println!(
        "fairness experiment: mock upstream latency {}, FairQueue capacity {CAPACITY} per model group",
        ms(LATENCY)
    );

    // Warm up connections and code paths.
    for _ in 0..20 {
        client.call(LIGHT).await.expect("warm-up");
    }

    // 1. Light alone.
    let alone = client.sequential(LIGHT, LIGHT_REQUESTS).await;
    let (alone50, alone99) = (percentile(&alone, 50.0), percentile(&alone, 99.0));
    println!(
        "light alone:                     n={LIGHT_REQUESTS:<4}  p50={}  p99={}",
        ms(alone50),
        ms(alone99)
    );

    // 2. Light under the heavy client's 100:1 burst: once with every
    // request taking the same 40 ms (the slots then free in lockstep waves,
    // the worst case for a newcomer), once with the heavy client's requests
    // taking 20-60 ms (40 on average), as real upstream latencies vary.
    let burst_size = LIGHT_REQUESTS * BURST_PER_LIGHT;
    for (label, jitter) in [
        ("heavy 40 ms each", None),
        ("heavy 20-60 ms", Some(20..=60)),
    ] {
        mock.log.clear();
        let heavy = heavy_client.burst(HEAVY, burst_size, jitter);
        // Let the burst arrive whole: its 4,000 connections are accepted and
        // its requests read and queued (about half a second here, where the
        // clients, the gateway and the mock share 2 cores).
        upstream_saw(&mock, 2 * CAPACITY).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let started = Instant::now();
        let under = client.sequential(LIGHT, LIGHT_REQUESTS).await;
        let took = started.elapsed();
        if std::env::var_os("FAIRNESS_DEBUG").is_some() {
            let v: Vec<u128> = under.iter().map(|d| d.as_millis()).collect();
            eprintln!("{v:?}");
        }
        let heavy_done = cancel(heavy).await;
        let (under50, under99) = (percentile(&under, 50.0), percentile(&under, 99.0));
        println!(
            "light under a {burst_size}-request burst ({label}): n={LIGHT_REQUESTS}  p50={}  p99={}  (heavy answered {heavy_done} meanwhile; light took {:.2} s)",
            ms(under50),
            ms(under99),
            took.as_secs_f64()
        );
        let ratio = under99.as_secs_f64() / alone99.as_secs_f64();
        println!(
            "  p99 under burst / p99 alone = {ratio:.2}  (goal <= 2: {})",
            if ratio <= 2.0 { "met" } else { "NOT met" }
        );
    }

    // 3. Contrast: one tenant for both (first come, first served).
    let fifo_burst = 4 * BURST_PER_LIGHT;
    mock.log.clear();
    let heavy = heavy_client.burst(LIGHT, fifo_burst, None);
    upstream_saw(&mock, CAPACITY).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fifo = client.sequential(LIGHT, 1).await;
    cancel(heavy).await;
    println!(
        "first-come-first-served (same key), light behind a {fifo_burst}-request burst: its first request took {}",
        ms(fifo[0])
    );

    // 4. Weights 3:1, both backlogged: how the first 800 answers split.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut tasks = Vec::new();
    for _ in 0..800 {
        for (i, (key, c)) in [(THREE, &heavy_client), (ONE, &client)]
            .into_iter()
            .enumerate()
        {
            let c = c.clone();
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                let r = c.call(key).await;
                if r.is_ok() {
                    let _ = tx.send(i);
                }
                r
            }));
        }
    }
    drop(tx);
    let mut served = [0usize; 2];
    let window = 800;
    let started = Instant::now();
    while served.iter().sum::<usize>() < window {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(i)) => served[i] += 1,
            _ => break,
        }
    }
    let took = started.elapsed();
    cancel(tasks).await;
    let weighted = [served[0] as f64 / 3.0, served[1] as f64 / 1.0];
    let index = jain(&weighted);
    println!(
        "weights 3:1, both backlogged, first {window} answers: {} : {} (ratio {:.3}; {:.2} s)",
        served[0],
        served[1],
        served[0] as f64 / served[1].max(1) as f64,
        took.as_secs_f64()
    );
    println!(
        "  Jain's fairness index over served/weight = {index:.4}  (goal >= 0.99: {})",
        if index >= 0.99 { "met" } else { "NOT met" }
    );
}
