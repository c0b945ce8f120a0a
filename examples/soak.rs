//! Chaos soak across replicas: three reference gateways sharing one Redis
//! and one PostgreSQL, under steady mixed load, while Redis is stopped and
//! restarted, PostgreSQL is stopped and restarted, and one upstream flaps
//! between healthy, 429 and cut streams.
//!
//! ```text
//! cargo build --release --all-features --example soak
//! nice -n 19 target/release/examples/soak                 # 240 s of load
//! nice -n 19 target/release/examples/soak --seconds 60 --clients 8
//! ```
//!
//! Needs `redis-server` on `PATH` and PostgreSQL's server binaries
//! (`/usr/lib/postgresql/*/bin/initdb`, `pg_ctl`); the process must be root
//! (PostgreSQL runs as the `postgres` OS user, through `runuser`). It starts
//! its OWN Redis (a free loopback port, append-only file fsynced on every
//! write unless `--redis-persistence none`) and its OWN PostgreSQL cluster
//! (`initdb` into a temporary directory, a free loopback port), so stopping
//! them disturbs no shared service; both are stopped and their directories
//! removed on exit, on a failed assertion, on a panic and on Ctrl-C (drop
//! guards). Everything listens on 127.0.0.1.
//!
//! In this one process: two mock upstreams (`steady`, always healthy, and
//! `flappy`, which cycles every 30 s through 15 s healthy, 7.5 s answering
//! 429 with `Retry-After: 2`, 7.5 s cutting every answer after 4 events),
//! three gateways (each its own `gateway::build` and listener), model group
//! `chat` (steady + flappy) and `solo` (flappy alone). Five keys are made
//! through the admin API: two with roomy budgets, three with budgets that
//! run out during the run. `--clients` tasks (default 16) send requests in
//! a closed loop (random key, replica, group, stream or not), each with its
//! own `x-request-id`. At 25 % of the run Redis is killed (SIGKILL) for 10 s
//! and restarted; at 55 % PostgreSQL is stopped (`pg_ctl stop -m immediate`)
//! for 20 s and restarted.
//!
//! At the end, after every reservation has settled and every spend writer
//! has flushed, it checks and prints, and exits 1 if any check fails:
//!
//! 1. no budget overspent: per key, Redis' `spent + reserved` ≤ the limit,
//!    the sum of the key's spend records in PostgreSQL ≤ the limit, and the
//!    two sums equal (both are sums of the same integer micro-USD charges:
//!    each settlement charges Redis once and writes one record);
//! 2. no spend record lost or doubled: the records' request ids are exactly
//!    the requests the clients sent (every request reaches `Budget`: no
//!    rate limits, valid keys), each with the status the client saw;
//! 3. every failure a client saw (non-2xx, or an error event inside a 200
//!    stream) is in the contract's shape (`error.code` = status, `type`,
//!    `message`, `metadata.reason`, `Retry-After` on 429 and 503, streams
//!    ending with `finish_reason: "error"` and `[DONE]`), with a reason
//!    explained by what was happening when it ran (Redis away:
//!    `state_unavailable`; flappy's 429s: `upstream_rate_limited` or
//!    `no_available_deployment` on `solo`; flappy's cuts:
//!    `upstream_stream_cut` and, on `solo`, `no_available_deployment`;
//!    tight keys: `budget_exceeded`), and no answer is missing;
//! 4. recovery after each restart: per replica, the first admitted answer
//!    after Redis is back; the time until every spend writer has written
//!    its backlog after PostgreSQL is back;
//! 5. the process's RSS (three gateways, two mocks and the clients), sampled
//!    every second: the last third's peak may exceed the first third's end
//!    by at most 25 % + 16 MiB.
//!
//! `--redis-persistence none` runs Redis without persistence (as a cache):
//! a restart then forgets every budget's spend, and check 1 reports the
//! overspend that follows. Warnings and errors are logged to a file in the
//! temporary directory, whose path is printed (kept after the run).
#![allow(dead_code)]

#[path = "gateway.rs"]
mod gateway;
#[path = "mock_upstream.rs"]
mod mock_upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate::budget::{BudgetStore, Limit, Period, Scope, SpendWriter, TimeZone};
use tollgate::config::Config;
use tollgate::router::SystemClock;
use tollgate::state::{RedisLedger, RedisState};

const MASTER_KEY_ENV: &str = "TOLLGATE_SOAK_MASTER_KEY";
const MASTER_KEY: &str = "soak-master-S0akM4st3rK3yForLoopbackOnly";
const REDIS_PREFIX: &str = "soak:";
/// Flappy's cycle: healthy, then 429, then cut.
const FLAP_CYCLE: Duration = Duration::from_secs(30);
const FLAP_HEALTHY: Duration = Duration::from_millis(15_000);
const FLAP_429: Duration = Duration::from_millis(7_500);
/// How long after a flap window ends its effects may still be seen
/// (429 cooldown `Retry-After: 2`, failure cooldown 3 s, plus the answer's
/// own time).
const FLAP_SLACK: Duration = Duration::from_secs(5);
/// A `state_unavailable` may still be seen this long after a replica's
/// first admitted answer once Redis is back (requests already waiting on
/// the old connection).
const REDIS_SLACK: Duration = Duration::from_secs(2);
const REDIS_DOWN: Duration = Duration::from_secs(10);
const PG_DOWN: Duration = Duration::from_secs(20);
/// The reservation hold (`[state] reservation_ttl_ms`): longer than any
/// request of this soak runs.
const HOLD: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
struct Args {
    seconds: u64,
    clients: usize,
    redis_persistence: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        seconds: 240,
        clients: 16,
        redis_persistence: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next().unwrap_or_else(|| {
                eprintln!("soak: {flag} needs a value");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().unwrap_or(0),
            "--clients" => a.clients = value().parse().unwrap_or(0),
            "--redis-persistence" => {
                a.redis_persistence = match value().as_str() {
                    "aof" => true,
                    "none" => false,
                    other => {
                        eprintln!("soak: --redis-persistence is `aof` or `none`, not `{other}`");
                        std::process::exit(2)
                    }
                }
            }
            "--help" | "-h" => {
                println!(
                    "soak [--seconds N (default 240, at least 60)] [--clients N (default 16)] \
                     [--redis-persistence aof|none]"
                );
                std::process::exit(0)
            }
            other => {
                eprintln!("soak: unknown flag {other} (see --help)");
                std::process::exit(2)
            }
        }
    }
    if a.seconds < 60 || a.clients == 0 {
        eprintln!("soak: --seconds must be at least 60 and --clients at least 1");
        std::process::exit(2)
    }
    a
}

// ---------------------------------------------------------------------------
// Private services: Redis and PostgreSQL, stopped and removed when dropped.

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().unwrap().port()
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-soak-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private `redis-server` on a free loopback port.
struct Redis {
    port: u16,
    dir: PathBuf,
    persist: bool,
    child: Option<std::process::Child>,
}

impl Redis {
    fn new(dir: &Path, persist: bool) -> Redis {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("redis directory");
        Redis {
            port: free_port(),
            dir,
            persist,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", ""]);
        if self.persist {
            // Every write on disk before Redis answers: a killed Redis
            // comes back with every counter it acknowledged.
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
    }

    /// SIGKILL: a crash, not a shutdown.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn until_up(&self) {
        let s = RedisState::open(&self.url(), "x:", Duration::from_millis(200)).unwrap();
        for _ in 0..400 {
            if s.ping().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the private redis-server never answered");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private PostgreSQL cluster in a temporary directory, run as the
/// `postgres` OS user.
struct Postgres {
    port: u16,
    data: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    running: bool,
}

impl Postgres {
    fn init(dir: &Path) -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .max()
            .expect("/usr/lib/postgresql/*/bin/pg_ctl");
        let root = dir.join("pg");
        std::fs::create_dir_all(&root).expect("pg directory");
        run_ok(Command::new("chown").arg("postgres:").arg(&root));
        // The temporary directory must be traversable by `postgres`.
        run_ok(Command::new("chmod").arg("755").arg(dir));
        let data = root.join("data");
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        Postgres {
            port: free_port(),
            log: root.join("server.log"),
            data,
            bin,
            running: false,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&mut self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=200",
            self.port,
            self.data.parent().unwrap().display()
        );
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["start", "-w", "-t", "60", "-D"])
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-o", &opts]),
        );
        self.running = true;
    }

    /// `immediate`: the server processes quit at once, without a checkpoint
    /// (a crash to PostgreSQL; it recovers from its WAL when started).
    fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    async fn until_up(&self) {
        for _ in 0..400 {
            if tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the private PostgreSQL never answered");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The timeline: what was happening when.

/// Seconds since the soak started.
#[derive(Clone)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Event {
    RedisDown,
    RedisBack,
    PgDown,
    PgBack,
    /// Flappy starts answering 429.
    Flap429,
    /// Flappy starts cutting every answer.
    FlapCut,
    /// Flappy is healthy again.
    FlapHealthy,
}

#[derive(Default)]
struct Timeline(Mutex<Vec<(f64, Event)>>);

impl Timeline {
    fn mark(&self, at: f64, e: Event) {
        self.0.lock().unwrap().push((at, e));
    }

    /// The windows `[from, to)` opened by `open` and closed by `close`
    /// (an unclosed window ends at infinity).
    fn windows(&self, open: Event, close: Event) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut start = None;
        for &(t, e) in self.0.lock().unwrap().iter() {
            if e == open && start.is_none() {
                start = Some(t);
            } else if e == close
                && let Some(s) = start.take()
            {
                out.push((s, t));
            }
        }
        if let Some(s) = start {
            out.push((s, f64::INFINITY));
        }
        out
    }

    fn first(&self, e: Event) -> Option<f64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, x)| *x == e)
            .map(|(t, _)| *t)
    }
}

fn overlaps(start: f64, end: f64, windows: &[(f64, f64)], slack: f64) -> bool {
    windows
        .iter()
        .any(|&(from, to)| start < to + slack && end >= from)
}

// ---------------------------------------------------------------------------
// The flapping upstream: the bundled mock behind a layer that sets its
// fault header from a switch.

const HEALTHY: u8 = 0;
const RATE_LIMITED: u8 = 1;
const CUT: u8 = 2;

async fn flappy(cfg: mock_upstream::MockConfig, state: Arc<AtomicU8>) -> SocketAddr {
    let log = mock_upstream::RequestLog::default();
    let app = mock_upstream::router(cfg, log).layer(tower::util::MapRequestLayer::new(
        move |mut req: axum::extract::Request| {
            let fault = match state.load(Ordering::Relaxed) {
                RATE_LIMITED => Some("429:2"),
                CUT => Some("cut:4"),
                _ => None,
            };
            if let Some(f) = fault {
                req.headers_mut()
                    .insert("x-mock-fault", http::HeaderValue::from_static(f));
            }
            req
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// ---------------------------------------------------------------------------
// The gateways.

struct Replica {
    addr: SocketAddr,
    spend: SpendWriter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn replica_config(steady: &str, flappy: &str, pg: &str, redis: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace_ms = 5000
metrics = false

[router]
failure_cooldown_ms = 3000
max_rate_limit_cooldown_ms = 2000

[budgets]

[[groups]]
name = "chat"
price_in_per_mtok = 1.0
price_out_per_mtok = 1.0
max_output_tokens = 64
[[groups.deployments]]
provider = "mock"
name = "steady"
base_url = "{steady}"
[[groups.deployments]]
provider = "mock"
name = "flappy"
base_url = "{flappy}"

[[groups]]
name = "solo"
price_in_per_mtok = 1.0
price_out_per_mtok = 1.0
max_output_tokens = 64
[[groups.deployments]]
provider = "mock"
name = "flappy"
base_url = "{flappy}"

[keys]
url = "{pg}"
change_poll_ms = 500
master_key_env = "{MASTER_KEY_ENV}"

[state]
url = "{redis}"
prefix = "{REDIS_PREFIX}"
timeout_ms = 2000
reservation_ttl_ms = {hold}
"#,
        hold = HOLD.as_millis()
    )
}

async fn start_replica(toml: &str) -> Replica {
    let config = Config::from_toml("soak.toml", toml).unwrap_or_else(|e| panic!("{e}"));
    let built = gateway::build(&config, Arc::new(SystemClock), config.ledger())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let spend = built.spend.clone().expect("spend records are on");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway::serve_and_flush(
        listener,
        built,
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(5),
    ));
    Replica {
        addr,
        spend,
        stop: Some(tx),
        task,
    }
}

// ---------------------------------------------------------------------------
// Keys.

#[derive(Clone, Debug)]
struct SoakKey {
    name: &'static str,
    id: String,
    secret: String,
    /// Micro-USD.
    limit: u64,
    tight: bool,
}

async fn make_keys(client: &reqwest::Client, replicas: &[Replica], seconds: u64) -> Vec<SoakKey> {
    // Tight budgets scale with the run, so each runs out at a different
    // point at this machine's rate (a key spends about 500 micro-USD/s here).
    let specs: [(&str, f64, bool); 5] = [
        ("roomy-a", 100.0, false),
        ("roomy-b", 100.0, false),
        ("tight-a", seconds as f64 * 0.000_08, true),
        ("tight-b", seconds as f64 * 0.000_18, true),
        ("tight-c", seconds as f64 * 0.000_32, true),
    ];
    let mut keys = Vec::new();
    for (name, usd, tight) in specs {
        let res = client
            .post(format!("http://{}/key/generate", replicas[0].addr))
            .bearer_auth(MASTER_KEY)
            .json(&json!({
                "key_alias": name,
                "models": ["*"],
                "max_budget": usd,
                "budget_duration": "monthly",
            }))
            .send()
            .await
            .expect("the admin API answers");
        assert_eq!(res.status(), 200, "/key/generate {name}");
        let v: Value = res.json().await.unwrap();
        keys.push(SoakKey {
            name,
            id: v["key_id"].as_str().unwrap().to_owned(),
            secret: v["key"].as_str().unwrap().to_owned(),
            limit: (usd * 1e6).round() as u64,
            tight,
        });
    }
    // Every replica knows every key (the change feed) before load starts.
    for r in replicas {
        for k in &keys {
            let mut tries = 0;
            loop {
                let res = client
                    .get(format!("http://{}/key/info?key={}", r.addr, k.id))
                    .bearer_auth(MASTER_KEY)
                    .send()
                    .await
                    .unwrap();
                if res.status() == 200 {
                    break;
                }
                tries += 1;
                assert!(tries < 400, "replica {} never saw key {}", r.addr, k.name);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    keys
}

// ---------------------------------------------------------------------------
// Load and what each request saw.

#[derive(Clone, Debug)]
struct Outcome {
    client: u16,
    seq: u32,
    key: u8,
    replica: u8,
    solo: bool,
    stream: bool,
    start: f64,
    end: f64,
    status: u16,
    /// `metadata.reason` of the error (an error answer or a mid-stream error event).
    reason: Option<String>,
    /// The error arrived inside a 200 stream.
    midstream: bool,
    /// A contract violation seen in the answer itself.
    violation: Option<String>,
}

fn request_id(client: u16, seq: u32) -> String {
    format!("soak-{client}-{seq}")
}

/// Checks one error object of the contract; returns its reason.
fn check_error(v: &Value, status: u16) -> Result<String, String> {
    let e = &v["error"];
    if e["code"] != status {
        return Err(format!("error.code {} is not {status}", e["code"]));
    }
    if e["type"].as_str().is_none_or(str::is_empty) {
        return Err("error.type missing".into());
    }
    if e["message"].as_str().is_none_or(str::is_empty) {
        return Err("error.message missing".into());
    }
    e["metadata"]["reason"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "error.metadata.reason missing".into())
}

/// Reads one answer as the contract says it must look.
fn judge(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    stream: bool,
) -> (Option<String>, bool, Option<String>) {
    if status == 200 {
        if !stream {
            return match serde_json::from_str::<Value>(body) {
                Ok(v) if v["choices"].is_array() => (None, false, None),
                _ => (
                    None,
                    false,
                    Some(format!("200 but not a completion: {body:.200}")),
                ),
            };
        }
        let events: Vec<&str> = body
            .split("\n\n")
            .filter_map(|e| e.trim().strip_prefix("data:").map(str::trim))
            .collect();
        if events.last() != Some(&"[DONE]") {
            return (
                None,
                false,
                Some(format!("a 200 stream without [DONE]: …{}", tail(body))),
            );
        }
        let Some(at) = events.iter().position(|e| e.contains("\"error\"")) else {
            return (None, false, None);
        };
        // After the content: the error event, a finish_reason "error"
        // chunk, then [DONE].
        let err: Value = serde_json::from_str(events[at]).unwrap_or(Value::Null);
        let reason = match check_error(&err, 502) {
            Ok(r) => r,
            Err(e) => {
                return (
                    None,
                    true,
                    Some(format!("mid-stream error: {e}: {}", events[at])),
                );
            }
        };
        let finish: Value = events
            .get(at + 1)
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or(Value::Null);
        let violation = (finish["choices"][0]["finish_reason"] != "error"
            || at + 3 != events.len())
        .then(|| {
            format!(
                "mid-stream error not followed by finish_reason error + [DONE]: …{}",
                tail(body)
            )
        });
        return (Some(reason), true, violation);
    }
    let json = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let reason = match check_error(&v, status) {
        Ok(r) => r,
        Err(e) => return (None, false, Some(format!("{status}: {e}: {body:.300}"))),
    };
    let mut violation = None;
    if !json {
        violation = Some(format!("{status} {reason} is not application/json"));
    } else if (status == 429 || status == 503) && !headers.contains_key("retry-after") {
        violation = Some(format!("{status} {reason} without Retry-After"));
    }
    (Some(reason), false, violation)
}

fn tail(s: &str) -> &str {
    let mut i = s.len().saturating_sub(300);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

struct Load {
    clock: Clock,
    http: reqwest::Client,
    urls: Vec<String>,
    keys: Vec<SoakKey>,
    outcomes: Mutex<Vec<Outcome>>,
    stop: AtomicBool,
}

async fn client_loop(load: Arc<Load>, client: u16) {
    let mut seq = 0u32;
    let mut rng = fastrand::Rng::with_seed(0x50a4 + client as u64);
    while !load.stop.load(Ordering::Relaxed) {
        let key = rng.usize(..load.keys.len());
        let replica = rng.usize(..load.urls.len());
        let solo = rng.u8(..100) < 15;
        let stream = rng.bool();
        let body = format!(
            r#"{{"model":"{}","messages":[{{"role":"user","content":"Count from one to sixteen, please."}}],"max_tokens":48,"stream":{stream}}}"#,
            if solo { "solo" } else { "chat" }
        );
        let start = load.clock.now();
        let sent = load
            .http
            .post(&load.urls[replica])
            .bearer_auth(&load.keys[key].secret)
            .header("content-type", "application/json")
            .header("x-request-id", request_id(client, seq))
            .body(body)
            .send()
            .await;
        let (status, reason, midstream, violation) = match sent {
            Err(e) => (0, None, false, Some(format!("no answer: {e}"))),
            Ok(res) => {
                let status = res.status().as_u16();
                let headers = res.headers().clone();
                match res.text().await {
                    Err(e) => (status, None, false, Some(format!("body broken off: {e}"))),
                    Ok(body) => {
                        let (reason, midstream, violation) = judge(status, &headers, &body, stream);
                        (status, reason, midstream, violation)
                    }
                }
            }
        };
        load.outcomes.lock().unwrap().push(Outcome {
            client,
            seq,
            key: key as u8,
            replica: replica as u8,
            solo,
            stream,
            start,
            end: load.clock.now(),
            status,
            reason,
            midstream,
            violation,
        });
        seq += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------
// Logs: warnings and errors to a file, counting the lines that matter.

#[derive(Clone)]
struct LogFile {
    file: Arc<Mutex<std::fs::File>>,
    lost_settlements: Arc<AtomicU64>,
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if memchr::memmem::find(buf, b"could not settle a budget reservation").is_some() {
            self.lost_settlements.fetch_add(1, Ordering::Relaxed);
        }
        self.file.lock().unwrap().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().unwrap().flush()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------

struct Report {
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        println!("  [{}] {what}", if ok { "ok" } else { "FAIL" });
        if !ok {
            self.failures.push(what);
        }
    }
}

fn main() {
    let args = parse_args();
    // SAFETY: before the runtime and any other thread exist.
    unsafe { std::env::set_var(MASTER_KEY_ENV, MASTER_KEY) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let failures = runtime.block_on(async {
        tokio::select! {
            f = soak(args) => f,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("soak: interrupted; stopping Redis and PostgreSQL");
                vec!["interrupted".to_owned()]
            }
        }
    });
    // Every guard (Redis, PostgreSQL, the directory) is dropped by now.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if failures.is_empty() {
        println!("soak: every check passed");
    } else {
        println!("soak: {} check(s) FAILED:", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
        std::process::exit(1);
    }
}

async fn soak(args: Args) -> Vec<String> {
    let dir = TempDir::new();
    let log_path = std::env::temp_dir().join(format!("tollgate-soak-{}.log", std::process::id()));
    let log = LogFile {
        file: Arc::new(Mutex::new(
            std::fs::File::create(&log_path).expect("log file"),
        )),
        lost_settlements: Arc::new(AtomicU64::new(0)),
    };
    {
        let log = log.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_ansi(false)
            .with_writer(move || log.clone())
            .try_init();
    }
    println!(
        "soak: {} s of load, {} clients, Redis {} persistence; warnings and errors in {}",
        args.seconds,
        args.clients,
        if args.redis_persistence {
            "with append-only"
        } else {
            "WITHOUT"
        },
        log_path.display()
    );

    // Services.
    let mut redis = Redis::new(&dir.0, args.redis_persistence);
    redis.start();
    redis.until_up().await;
    let mut pg = Postgres::init(&dir.0);
    pg.start();
    pg.until_up().await;
    println!(
        "  Redis on 127.0.0.1:{}, PostgreSQL on 127.0.0.1:{} ({})",
        redis.port,
        pg.port,
        pg.bin.display()
    );

    let mock_cfg = mock_upstream::MockConfig {
        latency: Duration::from_millis(20),
        tokens: 16,
        chunk_interval: Duration::from_millis(5),
        require_key: None,
    };
    let steady = mock_upstream::spawn(mock_cfg.clone())
        .await
        .expect("the steady mock starts");
    let flap = Arc::new(AtomicU8::new(HEALTHY));
    let flappy_addr = flappy(mock_cfg, flap.clone()).await;

    let toml = replica_config(
        &steady.base_url(),
        &format!("http://{flappy_addr}/v1"),
        &pg.url(),
        &redis.url(),
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(start_replica(&toml).await);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let keys = make_keys(&http, &replicas, args.seconds).await;
    println!(
        "  3 replicas on {}; keys: {}",
        replicas
            .iter()
            .map(|r| r.addr.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        keys.iter()
            .map(|k| format!("{} (${:.4})", k.name, k.limit as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Load.
    let clock = Clock(Instant::now());
    let timeline = Arc::new(Timeline::default());
    let load = Arc::new(Load {
        clock: clock.clone(),
        http: http.clone(),
        urls: replicas
            .iter()
            .map(|r| format!("http://{}/v1/chat/completions", r.addr))
            .collect(),
        keys: keys.clone(),
        outcomes: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..args.clients)
        .map(|c| tokio::spawn(client_loop(load.clone(), c as u16)))
        .collect();

    // RSS every second; the spend writers' backlog every 50 ms.
    let rss = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let (rss, clock) = (rss.clone(), clock.clone());
        tokio::spawn(async move {
            loop {
                rss.lock().unwrap().push((clock.now(), rss_kib()));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let writers: Vec<SpendWriter> = replicas.iter().map(|r| r.spend.clone()).collect();
    let backlog = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let watcher = {
        let (backlog, clock, writers) = (backlog.clone(), clock.clone(), writers.clone());
        tokio::spawn(async move {
            loop {
                let pending: u64 = writers.iter().map(SpendWriter::pending).sum();
                backlog.lock().unwrap().push((clock.now(), pending));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Flappy's cycle.
    let flapper = {
        let (flap, timeline, clock) = (flap.clone(), timeline.clone(), clock.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLAP_HEALTHY).await;
                flap.store(RATE_LIMITED, Ordering::Relaxed);
                timeline.mark(clock.now(), Event::Flap429);
                tokio::time::sleep(FLAP_429).await;
                flap.store(CUT, Ordering::Relaxed);
                timeline.mark(clock.now(), Event::FlapCut);
                tokio::time::sleep(FLAP_CYCLE - FLAP_HEALTHY - FLAP_429).await;
                flap.store(HEALTHY, Ordering::Relaxed);
                timeline.mark(clock.now(), Event::FlapHealthy);
            }
        })
    };

    // The outages.
    let total = Duration::from_secs(args.seconds);
    let at = |share: f64| total.mul_f64(share);
    let sleep_until = |t: Duration| {
        let deadline = clock.0 + t;
        tokio::time::sleep_until(deadline.into())
    };
    sleep_until(at(0.25)).await;
    println!("  {:6.1} s  Redis killed", clock.now());
    timeline.mark(clock.now(), Event::RedisDown);
    redis.kill();
    tokio::time::sleep(REDIS_DOWN).await;
    redis.start();
    redis.until_up().await;
    let redis_back = clock.now();
    timeline.mark(redis_back, Event::RedisBack);
    println!("  {redis_back:6.1} s  Redis back");

    sleep_until(at(0.55)).await;
    println!("  {:6.1} s  PostgreSQL stopped (immediate)", clock.now());
    timeline.mark(clock.now(), Event::PgDown);
    pg.stop();
    tokio::time::sleep(PG_DOWN).await;
    pg.start();
    pg.until_up().await;
    let pg_back = clock.now();
    timeline.mark(pg_back, Event::PgBack);
    println!("  {pg_back:6.1} s  PostgreSQL back");

    sleep_until(total).await;
    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let load_end = clock.now();
    flapper.abort();
    flap.store(HEALTHY, Ordering::Relaxed);
    println!("  {load_end:6.1} s  load stopped");

    // Settle and flush.
    let state = RedisState::open(&redis.url(), REDIS_PREFIX, Duration::from_secs(2)).unwrap();
    let ledger = RedisLedger::new(state, TimeZone::UTC);
    let limit_of = |k: &SoakKey| Limit {
        scope: Scope::Key(k.id.as_str().into()),
        max: k.limit,
        period: Period::Monthly,
    };
    let mut usages = Vec::new();
    for k in &keys {
        let scope = Scope::Key(k.id.as_str().into());
        let mut u = ledger.usage(&scope, Period::Monthly).await.expect("Redis");
        let waited = Instant::now();
        while u.reserved > 0 && waited.elapsed() < HOLD + Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            u = ledger.usage(&scope, Period::Monthly).await.expect("Redis");
        }
        let mut swept = 0;
        if u.reserved > 0 {
            // Holds whose answer Redis never gave (it died between doing
            // and answering): reclaimed by the next reservation after
            // their expiry. Make one of nothing and let it go.
            swept = u.reserved;
            drop(ledger.reserve(&[limit_of(k)], 0).await);
            ledger.settled().await;
            u = ledger.usage(&scope, Period::Monthly).await.expect("Redis");
            swept -= u.reserved.min(swept);
        }
        usages.push((u, swept));
    }
    let mut flushed = true;
    for w in &writers {
        flushed &= w.flush_within(Duration::from_secs(60)).await;
    }
    watcher.abort();
    sampler.abort();
    let (pg_client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL");
    tokio::spawn(conn);
    let rows = pg_client
        .query(
            "SELECT request_id, key_id, status, cost FROM tollgate_spend",
            &[],
        )
        .await
        .expect("the spend records");

    let rows = rows
        .iter()
        .map(|r| Row {
            request_id: r.get(0),
            key_id: r.get(1),
            status: r.get::<_, i32>(2) as u16,
            cost: r.get::<_, i64>(3) as u64,
        })
        .collect();
    let findings = Findings {
        clients: args.clients,
        replicas: replicas.len(),
        keys,
        outcomes: std::mem::take(&mut *load.outcomes.lock().unwrap()),
        rows,
        usages,
        flushed,
        lost: log.lost_settlements.load(Ordering::Relaxed),
        timeline: std::mem::take(&mut *timeline.0.lock().unwrap()),
        backlog: std::mem::take(&mut *backlog.lock().unwrap()),
        rss: std::mem::take(&mut *rss.lock().unwrap()),
        writers: writers
            .iter()
            .map(|w| {
                (
                    w.written(),
                    w.dropped(),
                    w.failed(),
                    w.pending(),
                    w.retries(),
                )
            })
            .collect(),
        redis_back,
        pg_back,
        load_end,
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
    };
    // Stop the replicas (their writers are flushed already).
    for r in &mut replicas {
        if let Some(stop) = r.stop.take() {
            let _ = stop.send(());
        }
    }
    for r in replicas {
        let _ = tokio::time::timeout(Duration::from_secs(20), r.task).await;
    }
    drop(steady);
    check(&findings)
}

/// Everything the run left to check, gathered once the load stopped, every
/// reservation settled and every spend writer flushed.
struct Findings {
    clients: usize,
    replicas: usize,
    keys: Vec<SoakKey>,
    outcomes: Vec<Outcome>,
    /// The spend records, read straight from PostgreSQL.
    rows: Vec<Row>,
    /// Per key: its counter in Redis, and the holds reclaimed at the end.
    usages: Vec<(tollgate::budget::Usage, u64)>,
    flushed: bool,
    /// "could not settle" lines logged.
    lost: u64,
    timeline: Vec<(f64, Event)>,
    /// The spend writers' records not yet written, summed, over time.
    backlog: Vec<(f64, u64)>,
    /// The process's RSS (KiB) over time.
    rss: Vec<(f64, u64)>,
    /// Per writer: written, dropped, failed, pending, retries.
    writers: Vec<(u64, u64, u64, u64, u64)>,
    redis_back: f64,
    pg_back: f64,
    load_end: f64,
    /// The gateways' log (warnings and errors).
    log: String,
}

/// One spend record.
struct Row {
    request_id: String,
    key_id: Option<String>,
    status: u16,
    cost: u64,
}

/// Prints every check; returns the failed ones.
fn check(f: &Findings) -> Vec<String> {
    let Findings {
        clients,
        replicas,
        keys,
        outcomes,
        rows,
        usages,
        flushed,
        lost,
        backlog,
        rss,
        redis_back,
        pg_back,
        load_end,
        ..
    } = f;
    let (clients, replicas, flushed, lost) = (*clients, *replicas, *flushed, *lost);
    let (redis_back, pg_back, load_end) = (*redis_back, *pg_back, *load_end);
    let timeline = Timeline(Mutex::new(f.timeline.clone()));
    let mut report = Report {
        failures: Vec::new(),
    };
    let n = outcomes.len();
    let ok = outcomes
        .iter()
        .filter(|o| o.status == 200 && !o.midstream)
        .count();
    let streams = outcomes.iter().filter(|o| o.stream).count();
    println!(
        "\nload: {n} requests in {load_end:.0} s ({:.0}/s), {streams} streams, {ok} complete 200s",
        n as f64 / load_end
    );
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes.iter() {
        if let Some(r) = &o.reason {
            let tag = if o.midstream {
                format!("200 stream + {r}")
            } else {
                format!("{} {r}", o.status)
            };
            *by_reason.entry(tag).or_default() += 1;
        }
    }
    for (r, c) in &by_reason {
        println!("  {c:>7}  {r}");
    }

    println!("\n1. budgets (micro-USD), Redis vs PostgreSQL:");
    let mut per_key: HashMap<&str, (u64, u64)> = HashMap::new();
    for r in rows.iter() {
        let e = per_key
            .entry(r.key_id.as_deref().unwrap_or(""))
            .or_default();
        e.0 += 1;
        e.1 += r.cost;
    }
    for (k, (u, swept)) in keys.iter().zip(usages.iter()) {
        let (records, pg_sum) = per_key.get(k.id.as_str()).copied().unwrap_or_default();
        let refused = outcomes
            .iter()
            .filter(|o| keys[o.key as usize].id == k.id && o.status == 402)
            .count();
        println!(
            "  {:8} limit {:>9}  Redis spent {:>9} reserved {:>3} (holds reclaimed {swept})  records {records:>6} sum {pg_sum:>9}  402s {refused}",
            k.name, k.limit, u.spent, u.reserved
        );
        report.check(
            u.spent + u.reserved <= k.limit,
            format!("{}: Redis spent + reserved ≤ limit", k.name),
        );
        report.check(
            pg_sum <= k.limit,
            format!(
                "{}: spend records' sum {pg_sum} ≤ limit {}",
                k.name, k.limit
            ),
        );
        report.check(
            pg_sum == u.spent,
            format!(
                "{}: spend records' sum {pg_sum} = Redis' spent {} (difference {})",
                k.name,
                u.spent,
                pg_sum as i64 - u.spent as i64
            ),
        );
        if k.tight {
            report.check(
                refused > 0,
                format!("{}: its budget ran out (402s seen)", k.name),
            );
        }
    }
    report.check(
        lost == 0,
        format!("no settlement given up on (\"could not settle\" lines: {lost})"),
    );

    println!("\n2. spend records:");
    let mut by_id: HashMap<&str, (u16, usize)> = HashMap::with_capacity(rows.len());
    for r in rows.iter() {
        by_id.entry(&r.request_id).or_insert((r.status, 0)).1 += 1;
    }
    let ids: Vec<String> = outcomes
        .iter()
        .map(|o| request_id(o.client, o.seq))
        .collect();
    let mut missing = 0;
    let mut wrong_status = 0;
    let mut examples = Vec::new();
    for (o, id) in outcomes.iter().zip(&ids) {
        match by_id.get(id.as_str()) {
            None => {
                missing += 1;
                if examples.len() < 5 {
                    examples.push(format!(
                        "{id} ({} at {:.1} s) has no record",
                        o.status, o.start
                    ));
                }
            }
            Some((status, _)) if *status != o.status => {
                wrong_status += 1;
                if examples.len() < 5 {
                    examples.push(format!(
                        "{id}: record says {status}, client saw {}",
                        o.status
                    ));
                }
            }
            _ => {}
        }
    }
    let doubled = by_id.values().filter(|(_, c)| *c > 1).count();
    let known: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let strays = by_id.keys().filter(|id| !known.contains(*id)).count();
    let admitted = outcomes
        .iter()
        .filter(|o| o.status != 402 && o.reason.as_deref() != Some("state_unavailable"))
        .count();
    let writer_stats: Vec<String> = f
        .writers
        .iter()
        .map(|(written, dropped, failed, pending, retries)| {
            format!(
                "written {written} dropped {dropped} failed {failed} pending {pending} retries {retries}"
            )
        })
        .collect();
    println!(
        "  {} records for {n} requests ({admitted} admitted past Budget, the rest refused by it: 402 or 503 state_unavailable)",
        rows.len()
    );
    for (i, s) in writer_stats.iter().enumerate() {
        println!("  writer {i}: {s}");
    }
    for e in &examples {
        println!("    {e}");
    }
    report.check(flushed, "every spend writer flushed");
    report.check(
        missing == 0 && strays == 0 && doubled == 0,
        format!("one record per request: {missing} missing, {doubled} doubled, {strays} unknown"),
    );
    report.check(
        wrong_status == 0,
        format!("each record has the status the client saw ({wrong_status} differ)"),
    );
    report.check(
        f.writers.iter().all(|w| w.1 == 0 && w.2 == 0),
        "no record dropped or refused by a writer",
    );

    println!("\n3. client-visible failures:");
    let redis_down = timeline.windows(Event::RedisDown, Event::RedisBack);
    let flap_429 = timeline.windows(Event::Flap429, Event::FlapCut);
    let flap_cut = timeline.windows(Event::FlapCut, Event::FlapHealthy);
    let redis_stop = timeline.first(Event::RedisDown).unwrap_or(f64::INFINITY);
    // Per replica: the first answer admitted past Budget that started
    // after Redis was killed.
    let recovered: Vec<Option<f64>> = (0..replicas)
        .map(|r| {
            outcomes
                .iter()
                .filter(|o| {
                    o.replica as usize == r
                        && o.start > redis_stop
                        && o.status != 0
                        && o.reason.as_deref() != Some("state_unavailable")
                })
                .map(|o| o.end)
                .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.min(e))))
        })
        .collect();
    let slack = FLAP_SLACK.as_secs_f64();
    let mut unexplained: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut violations: BTreeMap<String, usize> = BTreeMap::new();
    for o in outcomes.iter() {
        if let Some(v) = &o.violation {
            let short: String = v.chars().take(160).collect();
            *violations.entry(short).or_default() += 1;
        }
        let Some(reason) = o.reason.as_deref() else {
            continue;
        };
        let during_429 = overlaps(o.start, o.end, &flap_429, slack);
        let during_cut = overlaps(o.start, o.end, &flap_cut, slack);
        let explained = match (o.status, reason) {
            (402, "budget_exceeded") => keys[o.key as usize].tight,
            (503, "state_unavailable") => {
                let back = recovered[o.replica as usize].unwrap_or(f64::INFINITY);
                overlaps(o.start, o.end, &redis_down, 0.0)
                    || (o.end >= redis_stop && o.start < back + REDIS_SLACK.as_secs_f64())
            }
            (429, "upstream_rate_limited") => o.solo && during_429,
            (503, "no_available_deployment") => o.solo && (during_429 || during_cut),
            (200, "upstream_stream_cut") => o.midstream && during_cut,
            (502, "upstream_stream_cut") => o.solo && during_cut,
            _ => false,
        };
        if !explained {
            let tag = format!(
                "{} {reason}{} on {}",
                o.status,
                if o.midstream { " (mid-stream)" } else { "" },
                if o.solo { "solo" } else { "chat" }
            );
            let e = unexplained.entry(tag).or_insert((0, String::new()));
            e.0 += 1;
            if e.1.is_empty() {
                e.1 = format!(
                    "{} {:.1}–{:.1} s, {}",
                    request_id(o.client, o.seq),
                    o.start,
                    o.end,
                    keys[o.key as usize].name
                );
            }
        }
    }
    for (v, c) in &violations {
        println!("    {c} × {v}");
    }
    for (tag, (c, first)) in &unexplained {
        println!("    {c} × {tag} not explained by what was happening (first: {first})");
    }
    report.check(
        violations.is_empty(),
        format!(
            "every answer in the contract's shape, none missing ({} not)",
            violations.values().sum::<usize>()
        ),
    );
    report.check(
        unexplained.is_empty(),
        format!(
            "every failure's reason explained by the phase it ran in ({} not)",
            unexplained.values().map(|(c, _)| c).sum::<usize>()
        ),
    );

    println!("\n4. recovery:");
    let state_503 = outcomes
        .iter()
        .filter(|o| o.reason.as_deref() == Some("state_unavailable"))
        .count();
    println!(
        "  Redis down {:.1}–{redis_back:.1} s: {state_503} answers 503 state_unavailable",
        redis_stop
    );
    for (r, at) in recovered.iter().enumerate() {
        match at {
            Some(t) => println!(
                "  replica {r}: first admitted answer {:.0} ms after Redis answered again",
                (t - redis_back) * 1e3
            ),
            None => println!("  replica {r}: never admitted a request again"),
        }
    }
    report.check(
        recovered.iter().all(Option::is_some),
        "every replica admits again after Redis is back, unrestarted",
    );
    let pg_stop = timeline.first(Event::PgDown).unwrap_or(f64::INFINITY);
    let peak = backlog
        .iter()
        .filter(|(t, _)| *t >= pg_stop)
        .map(|(_, p)| *p)
        .max()
        .unwrap_or(0);
    // Under load a few records always wait for the next batch: the backlog
    // is written when it is back to what it was in the 10 s before the stop.
    let usual = backlog
        .iter()
        .filter(|(t, _)| *t >= pg_stop - 10.0 && *t < pg_stop)
        .map(|(_, p)| *p)
        .max()
        .unwrap_or(0);
    let drained = backlog
        .iter()
        .find(|(t, p)| *t >= pg_back && *p <= usual)
        .map(|(t, _)| *t);
    let during_pg = outcomes
        .iter()
        .filter(|o| o.start >= pg_stop && o.end <= pg_back)
        .count();
    let failed_pg = outcomes
        .iter()
        .filter(|o| {
            o.start >= pg_stop && o.end <= pg_back && o.status != 200 && o.status != 402 && !o.solo
        })
        .count();
    println!(
        "  PostgreSQL down {pg_stop:.1}–{pg_back:.1} s: {during_pg} requests answered meanwhile, \
         spend backlog peaked at {peak} records"
    );
    match drained {
        Some(t) => println!(
            "  spend writers' backlog written {:.0} ms after PostgreSQL answered again \
             (back to the {usual} records waiting before the stop)",
            (t - pg_back) * 1e3
        ),
        None => println!("  spend writers' backlog never drained while sampled"),
    }
    report.check(
        drained.is_some(),
        "the spend backlog drains after PostgreSQL is back",
    );
    report.check(
        failed_pg == 0,
        format!("PostgreSQL away costs clients nothing on `chat` ({failed_pg} failures)"),
    );

    println!(
        "\n5. memory (process RSS: 3 gateways, 2 mocks, {} clients; of it, the soak's own \
         log of {n} answers: {:.1} MiB, growing by design):",
        clients,
        (n * std::mem::size_of::<Outcome>()) as f64 / (1024.0 * 1024.0)
    );
    let third = load_end / 3.0;
    let first_end = rss
        .iter()
        .rev()
        .find(|(t, _)| *t <= third)
        .map(|(_, k)| *k)
        .unwrap_or(0);
    let last_peak = rss
        .iter()
        .filter(|(t, _)| *t >= 2.0 * third)
        .map(|(_, k)| *k)
        .max()
        .unwrap_or(0);
    let all_peak = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let line: Vec<String> = rss
        .iter()
        .step_by((rss.len() / 12).max(1))
        .map(|(t, k)| format!("{t:.0}s:{:.1}", *k as f64 / 1024.0))
        .collect();
    println!("  MiB over time: {}", line.join(" "));
    println!(
        "  end of first third {:.1} MiB, peak of last third {:.1} MiB, peak {:.1} MiB",
        first_end as f64 / 1024.0,
        last_peak as f64 / 1024.0,
        all_peak as f64 / 1024.0
    );
    report.check(
        (last_peak as f64) <= first_end as f64 * 1.25 + 16.0 * 1024.0,
        "RSS flat after warm-up (last third's peak ≤ first third's end × 1.25 + 16 MiB)",
    );

    // Secrets: no key (or its secret part) in any log line.
    let leaked = keys.iter().any(|k| {
        let secret = k.secret.rsplit('-').next().unwrap_or(&k.secret);
        f.log.contains(secret)
    }) || f.log.contains(MASTER_KEY);
    report.check(!leaked, "no key or secret in the logs");
    report.failures
}
