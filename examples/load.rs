//! End-to-end load harness: the same load straight at the mock upstream,
//! through a bare forwarding proxy and through the reference gateway,
//! alternating, in one run.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/load                       # closed loop, 64 in flight, 10 s per phase
//! target/release/examples/load --rate 2000           # open loop at 2,000 requests/s
//! target/release/examples/load --stream              # streaming: time to first and last byte
//! target/release/examples/load --concurrency 16 --seconds 5 --rounds 3 --body-bytes 4096
//! target/release/examples/load --hold 9000             # memory: 9,000 streams held open at once
//! target/release/examples/load --hold 10000 --upstream-h2   # the same, gateway to mock in h2c
//! target/release/examples/load --big-stream 200        # memory: one 200 MiB tool-call stream
//! target/release/examples/load --budget --big-stream 200   # the same through Budget + spend records
//! ```
//!
//! It starts `mock_upstream`, `gateway` and `bare_proxy` (the release
//! binaries beside this one) as child processes on 127.0.0.1, writes the
//! gateway a config with the full stack as it exists, then runs `rounds`
//! times: a phase straight at the mock, then a phase through the bare proxy
//! and one through the gateway (the two take turns going first). It prints
//! per phase the throughput, latency percentiles (p50/p90/p99/max), errors,
//! and the CPU time the load generator, the mock, the bare proxy and the
//! gateway each spent per request (from `/proc/<pid>/stat`); then the
//! gateway's added latency at each percentile (gateway minus direct,
//! medians over rounds), throughput through the gateway as a share of
//! direct, the ceiling the CPU puts on that share when the client, mock and
//! gateway share the machine's cores ((client + mock) /
//! (client + mock + gateway) CPU per request), and the gateway's peak RSS
//! (`VmHWM`). Last, the floor: the gateway against the bare proxy
//! (`examples/bare_proxy.rs`: hyper-util's auto server and legacy pooled
//! client, no layers, no parsing), medians over rounds of each round's
//! throughput ratio, added latency at p50 and p99 (each minus direct) with
//! their ratio and difference, and CPU per request — issue 19's goal is
//! throughput ≥ 85 % of the bare proxy's at 64 in flight and an added p50
//! within +15 µs of its own at one in flight (`--concurrency 1`). With
//! `--stream`, every request asks for `stream_options.include_usage` itself
//! (as the gateway asks the upstream for it), so the mock's answer is the
//! same in all three phases. Open-loop latency is measured from each
//! request's scheduled start, so a stall is not hidden (no coordinated
//! omission); it is also reported from when each request was really sent,
//! without the up to one millisecond by which tokio's timer lets a send lag
//! its schedule ("from the send": the gateway's added latency without that
//! noise). Everything is bounded: phases end after `--seconds`, the
//! children are killed at the end. Only loopback addresses are used.
//!
//! Memory modes: `--hold N` opens N streaming requests through the gateway
//! (the mock sends one event a second), waits until every one has its first
//! byte, and reports the gateway's RSS before and with all N open, and the
//! difference per stream. `--big-stream MIB` streams one answer of MIB MiB of
//! tool-call arguments through the gateway while sampling its RSS. Each
//! process may hold at most 20,000 file descriptors on this machine, and the
//! gateway holds two per proxied stream over HTTP/1.1, so `--hold` tops out
//! near 9,500 there; with `--upstream-h2` it holds one per stream (and one
//! connection to the mock), as does this process, so 10,000 fit.
//!
//! `--upstream-h2` (with any mode) sets `[upstream] http2_prior_knowledge =
//! true` in the gateway's config: the gateway speaks HTTP/2 (h2c) to the
//! mock, all streams multiplexed over one connection.
//!
//! `--hold N --client-h2`: the held streams reach the gateway over HTTP/2
//! (h2c), 150 streams per connection, instead of one HTTP/1.1 connection
//! each.
//!
//! `--bare-read-body`: the bare proxy reads each request's body whole
//! before sending it on (`bare_proxy --read-body`), as the gateway must to
//! parse it; the gateway's difference to that floor is then its own work
//! (docs/performance-guard.md, "the one-request hop").
//!
//! `--family anthropic`: Anthropic Messages (`/v1/messages`) in every
//! phase, passed through by the gateway to an Anthropic-API deployment on
//! the mock. `--family chat-to-anthropic`: the gateway gets OpenAI chat
//! requests and translates them (and the answers) for an Anthropic-API
//! deployment, while the direct and bare-proxy phases send the Messages
//! request itself: the floor for the same upstream work.
//!
//! `--workers N` (with any mode) sets `[server] worker_threads = N` in the
//! gateway's config (default: one runtime thread per core).
//!
//! `--budget` (with any mode) adds `[budgets]` to the gateway's config: the
//! load key gets a $1,000,000 monthly budget, the group a price, keys and
//! spend records go to a SQLite file in the run's temporary directory, so
//! every request is reserved, metered, settled and recorded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone, Debug)]
struct Args {
    seconds: u64,
    rounds: usize,
    concurrency: usize,
    rate: Option<u64>,
    stream: bool,
    body_bytes: usize,
    hold: Option<usize>,
    big_stream_mib: Option<u64>,
    budget: bool,
    upstream_h2: bool,
    workers: Option<u64>,
    client_h2: bool,
    bare_read_body: bool,
    family: Family,
}

/// Which API the load speaks (`--family`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// OpenAI chat completions, to an OpenAI-API deployment (the default).
    Chat,
    /// Anthropic Messages, passed through to an Anthropic-API deployment.
    Anthropic,
    /// OpenAI chat to the gateway, translated to Messages for an
    /// Anthropic-API deployment; the direct and bare-proxy phases send the
    /// Messages request itself, the floor for the same upstream work.
    ChatToAnthropic,
}

/// Requests carry `anthropic-version` (the mock requires it on Messages).
static ANTHROPIC_VERSION: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn parse_args() -> Args {
    let mut a = Args {
        seconds: 10,
        rounds: 2,
        concurrency: 64,
        rate: None,
        stream: false,
        body_bytes: 1024,
        hold: None,
        big_stream_mib: None,
        budget: false,
        upstream_h2: false,
        workers: None,
        client_h2: false,
        bare_read_body: false,
        family: Family::Chat,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("load: {name} needs a number");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--seconds" => a.seconds = num("--seconds").max(1),
            "--rounds" => a.rounds = num("--rounds").max(1) as usize,
            "--concurrency" => a.concurrency = num("--concurrency").max(1) as usize,
            "--rate" => a.rate = Some(num("--rate").max(1)),
            "--body-bytes" => a.body_bytes = num("--body-bytes") as usize,
            "--stream" => a.stream = true,
            "--budget" => a.budget = true,
            "--upstream-h2" => a.upstream_h2 = true,
            "--workers" => a.workers = Some(num("--workers").max(1)),
            "--client-h2" => a.client_h2 = true,
            "--bare-read-body" => a.bare_read_body = true,
            "--family" => {
                a.family = match it.next().as_deref() {
                    Some("chat") => Family::Chat,
                    Some("anthropic") => Family::Anthropic,
                    Some("chat-to-anthropic") => Family::ChatToAnthropic,
                    _ => {
                        eprintln!("load: --family needs chat, anthropic or chat-to-anthropic");
                        std::process::exit(2)
                    }
                }
            }
            "--hold" => a.hold = Some(num("--hold").max(1) as usize),
            "--big-stream" => a.big_stream_mib = Some(num("--big-stream").max(1)),
            "--help" | "-h" => {
                println!(
                    "usage: load [--seconds N] [--rounds N] [--concurrency N] [--rate RPS] [--stream] [--body-bytes N] [--budget] [--upstream-h2] [--workers N] [--bare-read-body] [--family chat|anthropic|chat-to-anthropic] | --hold N [--client-h2] | --big-stream MIB"
                );
                std::process::exit(0)
            }
            other => {
                eprintln!("load: unknown flag {other} (see --help)");
                std::process::exit(2)
            }
        }
    }
    a
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Children(Vec<Child>);

impl Drop for Children {
    /// SIGTERM first (the gateway shuts down gracefully, and a profiler
    /// wrapping it writes its output), SIGKILL after two seconds.
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for c in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let p = exe.with_file_name(name);
    if !p.exists() {
        eprintln!(
            "load: {} not found; run `cargo build --release --examples` first",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

async fn wait_healthy(client: &HttpClient, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = http::Request::get(format!("http://{addr}/health"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(res) = client.request(req).await
            && res.status().is_success()
        {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("load: {addr} did not become healthy");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Peak and current resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time a process has used (user + system), in microseconds; `pid`
/// `None` is this process (the load generator).
fn cpu_us(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses:
    // utime and stime are the 12th and 13th of those, in clock ticks.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // USER_HZ: 100 on Linux (the kernel's ABI for /proc, whatever CONFIG_HZ).
    ticks * 10_000
}

/// The child processes whose CPU a phase measures.
#[derive(Clone, Copy)]
struct Pids {
    mock: u32,
    gateway: u32,
    bare: u32,
}

/// CPU used by the load generator, the mock, the gateway and the bare proxy
/// during a phase.
#[derive(Clone, Copy, Default)]
struct Cpu {
    client: u64,
    mock: u64,
    gateway: u64,
    bare: u64,
}

impl Cpu {
    fn now(pids: Pids) -> Cpu {
        Cpu {
            client: cpu_us(None),
            mock: cpu_us(Some(pids.mock)),
            gateway: cpu_us(Some(pids.gateway)),
            bare: cpu_us(Some(pids.bare)),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            client: self.client - before.client,
            mock: self.mock - before.mock,
            gateway: self.gateway - before.gateway,
            bare: self.bare - before.bare,
        }
    }

    /// Microseconds of CPU per answered request, per process.
    fn per_request(self, ok: u64) -> CpuPer {
        let n = ok.max(1) as f64;
        CpuPer {
            client: self.client as f64 / n,
            mock: self.mock as f64 / n,
            gateway: self.gateway as f64 / n,
            bare: self.bare as f64 / n,
        }
    }
}

/// [`Cpu`] per answered request, in microseconds.
struct CpuPer {
    client: f64,
    mock: f64,
    gateway: f64,
    bare: f64,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The virtual key the harness presents (a loopback-only load key, not a
/// secret); the gateway reads it from `TOLLGATE_LOAD_KEY`. The mock ignores it.
const LOAD_KEY: &str = "tg-load-LoadKeyForLoopbackOnly0000000";
const AUTHORIZATION: &str = "Bearer tg-load-LoadKeyForLoopbackOnly0000000";

struct PhaseResult {
    cpu: Cpu,
    total: Histogram<u64>,
    first_byte: Option<Histogram<u64>>,
    /// Last and first byte from when each request was really sent.
    sent_total: Histogram<u64>,
    sent_first: Histogram<u64>,
    ok: u64,
    errors: u64,
    elapsed: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// One request; returns (time to first byte, time to last byte) in µs from `start`.
/// What one request took, in µs: (first byte, last byte) from when it was
/// due, and the same from when it was really sent (a closed loop sends
/// when due; an open loop's sends lag their schedule by up to a timer tick).
type Timing = ((u64, u64), (u64, u64));

async fn one(client: &HttpClient, url: &str, body: &Bytes, due: Instant) -> Result<Timing, ()> {
    let start = Instant::now();
    let lag = start.saturating_duration_since(due).as_micros() as u64;
    let mut req = http::Request::post(url)
        .header("authorization", AUTHORIZATION)
        .header("content-type", "application/json");
    if ANTHROPIC_VERSION.get().copied().unwrap_or(false) {
        req = req.header("anthropic-version", "2023-06-01");
    }
    let req = req.body(Full::new(body.clone())).unwrap();
    let res = client.request(req).await.map_err(|_| ())?;
    let ok = res.status().is_success();
    let mut body = res.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ())?;
        if first.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first = Some(start.elapsed().as_micros() as u64);
        }
    }
    let last = start.elapsed().as_micros() as u64;
    let first = first.unwrap_or(last);
    if ok {
        Ok(((lag + first, lag + last), (first, last)))
    } else {
        Err(())
    }
}

async fn phase(
    client: &HttpClient,
    url: &str,
    body: Bytes,
    args: &Args,
    pids: Pids,
) -> PhaseResult {
    let cpu_before = Cpu::now(pids);
    let total = Arc::new(std::sync::Mutex::new(histogram()));
    let first = Arc::new(std::sync::Mutex::new(histogram()));
    let sent = Arc::new(std::sync::Mutex::new([histogram(), histogram()]));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(args.seconds);
    let began = Instant::now();
    let record = {
        let (total, first, sent, ok, errors) = (
            total.clone(),
            first.clone(),
            sent.clone(),
            ok.clone(),
            errors.clone(),
        );
        move |r: Result<Timing, ()>| match r {
            Ok(((fb, lb), (sent_fb, sent_lb))) => {
                ok.fetch_add(1, Ordering::Relaxed);
                let _ = total.lock().unwrap().record(lb.max(1));
                let _ = first.lock().unwrap().record(fb.max(1));
                let mut sent = sent.lock().unwrap();
                let _ = sent[0].record(sent_fb.max(1));
                let _ = sent[1].record(sent_lb.max(1));
            }
            Err(()) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    match args.rate {
        None => {
            let mut tasks = Vec::new();
            for _ in 0..args.concurrency {
                let (client, url, body, stop, record) = (
                    client.clone(),
                    url.to_owned(),
                    body.clone(),
                    stop.clone(),
                    record.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        record(one(&client, &url, &body, start).await);
                    }
                }));
            }
            tokio::time::sleep(run_for).await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                let _ = t.await;
            }
        }
        Some(rate) => {
            let interval = Duration::from_nanos(1_000_000_000 / rate);
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = tokio::task::JoinSet::new();
            let mut n: u64 = 0;
            while began.elapsed() < run_for {
                tick.tick().await;
                // Measured from when the request was due, not when it was sent.
                let due = began + interval * (n as u32);
                n += 1;
                let (client, url, body, record) =
                    (client.clone(), url.to_owned(), body.clone(), record.clone());
                tasks.spawn(async move { record(one(&client, &url, &body, due).await) });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    let elapsed = began.elapsed();
    let cpu = Cpu::now(pids).since(cpu_before);
    let total = total.lock().unwrap().clone();
    let first = first.lock().unwrap().clone();
    let [sent_first, sent_total] = sent.lock().unwrap().clone();
    PhaseResult {
        cpu,
        total,
        sent_total,
        sent_first,
        first_byte: args.stream.then_some(first),
        ok: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed,
    }
}

const QUANTILES: [(&str, f64); 4] = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)];

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{us}µs")
    }
}

fn report(name: &str, r: &PhaseResult) {
    let rps = r.ok as f64 / r.elapsed.as_secs_f64();
    let q: Vec<String> = QUANTILES
        .iter()
        .map(|(n, q)| format!("{n} {}", fmt_us(r.total.value_at_quantile(*q))))
        .collect();
    print!(
        "{name:<8} {rps:>9.0} req/s  {}  errors {}",
        q.join("  "),
        r.errors
    );
    if let Some(fb) = &r.first_byte {
        print!(
            "  | first byte p50 {} p99 {}",
            fmt_us(fb.value_at_quantile(0.5)),
            fmt_us(fb.value_at_quantile(0.99))
        );
    }
    if r.sent_total.value_at_quantile(0.5) != r.total.value_at_quantile(0.5) {
        print!(
            "\n         from the send: p50 {} p99 {}",
            fmt_us(r.sent_total.value_at_quantile(0.5)),
            fmt_us(r.sent_total.value_at_quantile(0.99))
        );
        if r.first_byte.is_some() {
            print!(
                ", first byte p50 {} p99 {}",
                fmt_us(r.sent_first.value_at_quantile(0.5)),
                fmt_us(r.sent_first.value_at_quantile(0.99))
            );
        }
    }
    let cpu = r.cpu.per_request(r.ok);
    println!();
    println!(
        "         CPU per request: client {:.1} µs, mock {:.1} µs, bare proxy {:.1} µs, gateway {:.1} µs",
        cpu.client, cpu.mock, cpu.bare, cpu.gateway
    );
}

/// Open file descriptors of a process (`self` for this one).
fn fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Opens `n` streams through the gateway and reports its RSS per open stream.
async fn hold(clients: &[HttpClient], url: &str, n: usize, gw_pid: u32, upstream: &str) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, before) = rss_kib(gw_pid);
    println!(
        "tollgate load --hold {n}, gateway to mock in {upstream}, clients to gateway in {}: gateway RSS before: {:.1} MiB",
        if clients.len() > 1 {
            format!("HTTP/2 (h2c, {} connections)", clients.len())
        } else {
            "HTTP/1.1 (a connection per stream)".to_owned()
        },
        before as f64 / 1024.0
    );
    let body = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hold"}]}"#,
    );
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        let (client, url, body, opened, failed, release) = (
            clients[i % clients.len()].clone(),
            url.to_owned(),
            body.clone(),
            opened.clone(),
            failed.clone(),
            release.clone(),
        );
        tasks.spawn(async move {
            let req = http::Request::post(url)
                .header("authorization", AUTHORIZATION)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap();
            let res = match tokio::time::timeout(Duration::from_secs(60), client.request(req)).await
            {
                Ok(Ok(res)) if res.status().is_success() => res,
                other => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    // The first failure of each kind, to say why.
                    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
                    let kind = match &other {
                        Ok(Ok(res)) => res.status().to_string(),
                        Ok(Err(_)) => "connection".to_owned(),
                        Err(_) => "timeout".to_owned(),
                    };
                    let first = {
                        let mut seen = SEEN.lock().unwrap();
                        !seen.contains(&kind) && {
                            seen.push(kind);
                            true
                        }
                    };
                    if first {
                        let why = match other {
                            Ok(Ok(res)) => {
                                let status = res.status();
                                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                                format!(
                                    "status {status}: {}",
                                    String::from_utf8_lossy(&body.unwrap_or_default())
                                )
                            }
                            Ok(Err(e)) => format!("{e:?}"),
                            Err(_) => "no answer in 60 s".to_owned(),
                        };
                        eprintln!("  a failure: {why}");
                    }
                    return;
                }
            };
            let mut body = res.into_body();
            match tokio::time::timeout(Duration::from_secs(60), body.frame()).await {
                Ok(Some(Ok(_))) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            // Hold the stream open (reading nothing more) until released.
            release.notified().await;
            drop(body);
        });
        if i % 250 == 249 {
            // Let the accept queues drain between batches.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while (opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, with) = rss_kib(gw_pid);
    let open = opened.load(Ordering::Relaxed);
    println!(
        "  {open} streams open ({} failed) after {:.1} s; gateway RSS {:.1} MiB; {:.2} KiB per open stream",
        failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        with as f64 / 1024.0,
        (with.saturating_sub(before)) as f64 / open.max(1) as f64
    );
    println!(
        "  open file descriptors: gateway {}, load generator {}",
        fds(&gw_pid.to_string()),
        fds("self")
    );
    release.notify_waiters();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Streams one `mib` MiB tool-call answer through the gateway, sampling its RSS.
async fn big_stream(client: &HttpClient, url: &str, mib: u64, gw_pid: u32) {
    let (_, before) = rss_kib(gw_pid);
    let body = format!(
        r#"{{"model":"gpt-4o-mini","stream":true,"mock_fault":"tool_args:{mib}MiB","messages":[{{"role":"user","content":"call"}}]}}"#
    );
    let req = http::Request::post(url)
        .header("authorization", AUTHORIZATION)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let started = Instant::now();
    let res = client.request(req).await.expect("gateway answers");
    let mut body = res.into_body();
    let (mut bytes, mut max_rss, mut samples) = (0u64, before, Vec::new());
    let mut next_sample = Instant::now();
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("stream intact").into_data() {
            bytes += data.len() as u64;
            tail = data.to_vec();
        }
        if Instant::now() >= next_sample {
            let (_, rss) = rss_kib(gw_pid);
            max_rss = max_rss.max(rss);
            samples.push(rss);
            next_sample = Instant::now() + Duration::from_millis(100);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (peak, after) = rss_kib(gw_pid);
    let ended = String::from_utf8_lossy(&tail)
        .trim_end()
        .ends_with("data: [DONE]");
    println!(
        "tollgate load --big-stream {mib}: {:.1} MiB through the gateway in {secs:.1} s ({:.0} MiB/s), ended with [DONE]: {ended}",
        bytes as f64 / 1048576.0,
        bytes as f64 / 1048576.0 / secs
    );
    println!(
        "  gateway RSS: before {:.1} MiB, highest sampled during {:.1} MiB ({} samples), after {:.1} MiB, peak (VmHWM) {:.1} MiB",
        before as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        samples.len(),
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}

/// The gateway against the bare proxy, round by round (issue 19's goal:
/// throughput at least 85 % of the bare proxy's, added p50 within +15 µs).
#[derive(Default)]
struct Floor {
    /// Throughput through the gateway / through the bare proxy.
    throughput: Vec<f64>,
    /// Throughput through the bare proxy / direct.
    bare_share: Vec<f64>,
    /// Added latency (minus direct) at p50 and p99: (gateway, bare proxy).
    added: [Vec<(f64, f64)>; 2],
    /// CPU per request: (gateway, bare proxy).
    cpu: Vec<(f64, f64)>,
}

impl Floor {
    fn add(&mut self, d: &PhaseResult, b: &PhaseResult, g: &PhaseResult) {
        let rps = |r: &PhaseResult| r.ok as f64 / r.elapsed.as_secs_f64();
        self.throughput.push(rps(g) / rps(b).max(1e-9));
        self.bare_share.push(rps(b) / rps(d).max(1e-9));
        for (i, q) in [0.5, 0.99].into_iter().enumerate() {
            let at = |r: &PhaseResult| r.total.value_at_quantile(q) as f64;
            self.added[i].push((at(g) - at(d), at(b) - at(d)));
        }
        self.cpu.push((
            g.cpu.per_request(g.ok).gateway,
            b.cpu.per_request(b.ok).bare,
        ));
    }

    fn print(&self) {
        let med = |v: &[f64]| median(v.to_vec());
        println!(
            "-- gateway / bare proxy (medians over rounds; goal: throughput ≥ 85 %, added p50 within +15 µs)"
        );
        println!(
            "  throughput: gateway / bare proxy {:.0} % (bare proxy / direct {:.0} %)",
            med(&self.throughput) * 100.0,
            med(&self.bare_share) * 100.0
        );
        for (i, name) in ["p50", "p99"].into_iter().enumerate() {
            let g: Vec<f64> = self.added[i].iter().map(|a| a.0).collect();
            let b: Vec<f64> = self.added[i].iter().map(|a| a.1).collect();
            let diff: Vec<f64> = self.added[i].iter().map(|a| a.0 - a.1).collect();
            let (g, b) = (med(&g), med(&b));
            let ratio = if b > 0.0 && g > 0.0 {
                format!("{:.2}×", g / b)
            } else {
                "n/a (one of them added nothing)".to_owned()
            };
            println!(
                "  added latency {name}: gateway {g:+.0} µs, bare proxy {b:+.0} µs: ratio {ratio}, gateway − bare proxy {:+.0} µs",
                med(&diff)
            );
        }
        let g: Vec<f64> = self.cpu.iter().map(|c| c.0).collect();
        let b: Vec<f64> = self.cpu.iter().map(|c| c.1).collect();
        let (g, b) = (med(&g), med(&b));
        println!(
            "  CPU per request: gateway {g:.1} µs, bare proxy {b:.1} µs: ratio {:.2}×",
            g / b.max(1e-9)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let mock_port = free_port();
    let gw_port = free_port();
    let bare_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mock_addr: SocketAddr = ([127, 0, 0, 1], mock_port).into();
    let gw_addr: SocketAddr = ([127, 0, 0, 1], gw_port).into();
    let dir = std::env::temp_dir().join(format!("tollgate-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("load.toml");
    let (store, budget, price, budgets) = if args.budget {
        (
            format!(
                "store = \"sqlite\"\nsqlite_path = \"{}\"",
                dir.join("load.db").display()
            ),
            "max_budget = 1000000.0\nbudget_duration = \"monthly\"\n",
            "price_in_per_mtok = 0.15\nprice_out_per_mtok = 0.6\n",
            "[budgets]\ntime_zone = \"UTC\"\n\n",
        )
    } else {
        ("store = \"memory\"".to_owned(), "", "", "")
    };
    let upstream = if args.upstream_h2 {
        "[upstream]\nhttp2_prior_knowledge = true\n\n"
    } else {
        ""
    };
    let workers = args
        .workers
        .map_or(String::new(), |n| format!("worker_threads = {n}\n"));
    let (upstream_model, api) = match args.family {
        Family::Chat => ("mock-small", ""),
        Family::Anthropic | Family::ChatToAnthropic => ("mock-claude", "api = \"anthropic\"\n"),
    };
    let _ = ANTHROPIC_VERSION.set(args.family != Family::Chat);
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{gw_addr}\"\nshutdown_grace_ms = 1000\n{workers}\n{upstream}{budgets}\
             [keys]\n{store}\n[[keys.static]]\nkey_env = \"TOLLGATE_LOAD_KEY\"\nmodels = [\"*\"]\n{budget}\n\
             [[groups]]\nname = \"gpt-4o-mini\"\n{price}\
             [[groups.deployments]]\nprovider = \"mock\"\n{api}base_url = \"http://{mock_addr}/v1\"\nmodel = \"{upstream_model}\"\n"
        ),
    )
    .unwrap();
    let quiet = || Stdio::null();
    let mut children = Children(Vec::new());
    let mut mock_args = vec!["--listen".to_owned(), mock_addr.to_string()];
    if args.hold.is_some() {
        // Long, slow streams: one event a second for two minutes.
        mock_args.extend(["--chunk-interval-ms", "1000", "--tokens", "120"].map(String::from));
    }
    children.0.push(
        Command::new(sibling("mock_upstream"))
            .args(&mock_args)
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .expect("mock starts"),
    );
    children.0.push(
        Command::new(sibling("gateway"))
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env("TOLLGATE_LOAD_KEY", LOAD_KEY)
            .stdout(quiet())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway starts"),
    );
    children.0.push(
        Command::new(sibling("bare_proxy"))
            .args(["--listen", &bare_addr.to_string()])
            .args(["--upstream", &mock_addr.to_string()])
            .args(args.bare_read_body.then_some("--read-body"))
            .stdout(quiet())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bare proxy starts"),
    );
    let gw_pid = children.0[1].id();
    let pids = Pids {
        mock: children.0[0].id(),
        gateway: gw_pid,
        bare: children.0[2].id(),
    };

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency.max(64) * 2)
        .build(connector);
    wait_healthy(&client, mock_addr).await;
    wait_healthy(&client, gw_addr).await;
    wait_healthy(&client, bare_addr).await;

    let pad = "x".repeat(args.body_bytes.saturating_sub(120));
    // A stream asks for the usage chunk itself, as the gateway would ask
    // for it: the mock sends the same answer in every phase.
    let usage = if args.stream {
        r#","stream_options":{"include_usage":true}"#
    } else {
        ""
    };
    let chat = format!(
        r#"{{"model":"{{M}}","stream":{}{usage},"messages":[{{"role":"user","content":"{pad}"}}]}}"#,
        args.stream
    );
    // What an Anthropic client sends, and what the gateway sends upstream
    // for a translated chat request (`max_tokens`: the mock answers in a
    // few tokens either way).
    let messages = format!(
        r#"{{"model":"{{M}}","max_tokens":1024,"stream":{},"messages":[{{"role":"user","content":"{pad}"}}]}}"#,
        args.stream
    );
    let (upstream_body, upstream_path, gateway_body, gateway_path) = match args.family {
        Family::Chat => (&chat, "/v1/chat/completions", &chat, "/v1/chat/completions"),
        Family::Anthropic => (&messages, "/v1/messages", &messages, "/v1/messages"),
        Family::ChatToAnthropic => (&messages, "/v1/messages", &chat, "/v1/chat/completions"),
    };
    let direct_body = Bytes::from(upstream_body.replace("{M}", upstream_model));
    let gateway_body = Bytes::from(gateway_body.replace("{M}", "gpt-4o-mini"));
    let direct_url = format!("http://{mock_addr}{upstream_path}");
    let gateway_url = format!("http://{gw_addr}{gateway_path}");
    let bare_url = format!("http://{bare_addr}{upstream_path}");
    if let Some(n) = args.hold {
        let upstream = if args.upstream_h2 {
            "HTTP/2 (h2c)"
        } else {
            "HTTP/1.1"
        };
        let clients = if args.client_h2 {
            // hyper's HTTP/2 server takes 200 concurrent streams per
            // connection (axum::serve does not change it), and a hyper-util
            // client keeps one HTTP/2 connection per host: one client per
            // 150 streams.
            (0..n.div_ceil(150))
                .map(|_| {
                    let mut connector = HttpConnector::new();
                    connector.set_nodelay(true);
                    Client::builder(TokioExecutor::new())
                        .http2_only(true)
                        .build(connector)
                })
                .collect()
        } else {
            vec![client.clone()]
        };
        hold(&clients, &gateway_url, n, gw_pid, upstream).await;
        return;
    }
    if let Some(mib) = args.big_stream_mib {
        big_stream(&client, &gateway_url, mib, gw_pid).await;
        return;
    }

    println!(
        "tollgate load: {} for {} s per phase, {} rounds, {}-byte body{}, {}; mock, bare proxy{} and gateway as separate processes on 127.0.0.1, {} cores",
        match args.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => format!("closed loop, {} in flight", args.concurrency),
        },
        args.seconds,
        args.rounds,
        direct_body.len(),
        if args.stream { ", streaming" } else { "" },
        match args.family {
            Family::Chat => "OpenAI chat",
            Family::Anthropic => "Anthropic Messages passed through",
            Family::ChatToAnthropic =>
                "OpenAI chat translated to Anthropic Messages (direct and bare proxy: the Messages request)",
        },
        if args.bare_read_body {
            " (reading each body whole)"
        } else {
            ""
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    // Warm both paths (connections, allocator) before measuring.
    let warm = Args {
        seconds: 1,
        ..args.clone()
    };
    phase(&client, &direct_url, direct_body.clone(), &warm, pids).await;
    phase(&client, &bare_url, direct_body.clone(), &warm, pids).await;
    phase(&client, &gateway_url, gateway_body.clone(), &warm, pids).await;

    let mut added: Vec<Vec<f64>> = vec![Vec::new(); QUANTILES.len()];
    let mut share = Vec::new();
    let mut added_fb = Vec::new();
    let mut added_sent: [Vec<f64>; 2] = Default::default();
    let mut added_sent_fb: [Vec<f64>; 2] = Default::default();
    let mut ceiling = Vec::new();
    let mut gateway_cpu = Vec::new();
    let mut floor = Floor::default();
    for round in 1..=args.rounds {
        println!("-- round {round}");
        let d = phase(&client, &direct_url, direct_body.clone(), &args, pids).await;
        report("direct", &d);
        // The bare proxy and the gateway take turns going first, so a drift
        // in the machine's speed within a round favours neither.
        let run_bare = || phase(&client, &bare_url, direct_body.clone(), &args, pids);
        let run_gateway = || phase(&client, &gateway_url, gateway_body.clone(), &args, pids);
        let (b, g) = if round % 2 == 1 {
            let b = run_bare().await;
            report("bare", &b);
            let g = run_gateway().await;
            report("gateway", &g);
            (b, g)
        } else {
            let g = run_gateway().await;
            report("gateway", &g);
            let b = run_bare().await;
            report("bare", &b);
            (b, g)
        };
        floor.add(&d, &b, &g);
        // With every process on the same cores, throughput is bounded by
        // the CPU all of them spend per request: direct costs client +
        // mock, through the gateway client + mock + gateway.
        let dc = d.cpu.per_request(d.ok);
        let gc = g.cpu.per_request(g.ok);
        ceiling.push((dc.client + dc.mock) / (gc.client + gc.mock + gc.gateway).max(1e-9));
        gateway_cpu.push(gc.gateway);
        for (i, (_, q)) in QUANTILES.iter().enumerate() {
            added[i]
                .push(g.total.value_at_quantile(*q) as f64 - d.total.value_at_quantile(*q) as f64);
        }
        share.push(
            (g.ok as f64 / g.elapsed.as_secs_f64())
                / (d.ok as f64 / d.elapsed.as_secs_f64()).max(1e-9),
        );
        for (i, q) in [0.5, 0.99].into_iter().enumerate() {
            added_sent[i].push(
                g.sent_total.value_at_quantile(q) as f64 - d.sent_total.value_at_quantile(q) as f64,
            );
            added_sent_fb[i].push(
                g.sent_first.value_at_quantile(q) as f64 - d.sent_first.value_at_quantile(q) as f64,
            );
        }
        if let (Some(gf), Some(df)) = (&g.first_byte, &d.first_byte) {
            added_fb.push(gf.value_at_quantile(0.5) as f64 - df.value_at_quantile(0.5) as f64);
        }
    }
    println!("-- gateway added latency (median over rounds)");
    for (i, (name, _)) in QUANTILES.iter().enumerate() {
        println!("  {name}: {:+.0} µs", median(added[i].clone()));
    }
    if args.rate.is_some() {
        println!(
            "  from the send (no schedule lag): p50 {:+.0} µs, p99 {:+.0} µs",
            median(added_sent[0].clone()),
            median(added_sent[1].clone())
        );
    }
    if !added_fb.is_empty() {
        println!("  time to first byte, p50: {:+.0} µs", median(added_fb));
        println!(
            "  time to first byte from the send: p50 {:+.0} µs, p99 {:+.0} µs",
            median(added_sent_fb[0].clone()),
            median(added_sent_fb[1].clone())
        );
    }
    println!(
        "-- gateway throughput / direct: {:.0} %",
        median(share) * 100.0
    );
    if args.rate.is_none() {
        // Closed loop: the cores are saturated, so CPU is the bound.
        println!(
            "-- gateway CPU per request {:.1} µs; with every process on these cores, CPU alone caps throughput / direct at {:.0} %",
            median(gateway_cpu),
            median(ceiling) * 100.0
        );
    } else {
        println!(
            "-- gateway CPU per request {:.1} µs (open loop: includes idle wake-ups)",
            median(gateway_cpu)
        );
    }
    floor.print();
    let (peak, now) = rss_kib(gw_pid);
    println!(
        "-- gateway RSS: peak {:.1} MiB, now {:.1} MiB",
        peak as f64 / 1024.0,
        now as f64 / 1024.0
    );
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
