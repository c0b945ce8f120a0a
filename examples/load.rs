//! End-to-end load harness: the same load straight at the mock upstream and
//! through the reference gateway, alternating, in one run.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/load                       # closed loop, 64 in flight, 10 s per phase
//! target/release/examples/load --rate 2000           # open loop at 2,000 requests/s
//! target/release/examples/load --stream              # streaming: time to first and last byte
//! target/release/examples/load --concurrency 16 --seconds 5 --rounds 3 --body-bytes 4096
//! ```
//!
//! It starts `mock_upstream` and `gateway` (the release binaries beside this
//! one) as child processes on 127.0.0.1, writes the gateway a config with
//! the full stack as it exists, then runs `rounds` times: a phase straight at
//! the mock, a phase through the gateway. It prints per phase the
//! throughput, latency percentiles (p50/p90/p99/max) and errors; then the
//! gateway's added latency at each percentile (gateway minus direct, medians
//! over rounds), throughput through the gateway as a share of direct, and the
//! gateway's peak RSS (`VmHWM`). Open-loop latency is measured from each
//! request's scheduled start, so a stall is not hidden (no coordinated
//! omission). Everything is bounded: phases end after `--seconds`, the
//! children are killed at the end. Only loopback addresses are used.

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
}

fn parse_args() -> Args {
    let mut a = Args {
        seconds: 10,
        rounds: 2,
        concurrency: 64,
        rate: None,
        stream: false,
        body_bytes: 1024,
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
            "--help" | "-h" => {
                println!(
                    "usage: load [--seconds N] [--rounds N] [--concurrency N] [--rate RPS] [--stream] [--body-bytes N]"
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
    fn drop(&mut self) {
        for c in &mut self.0 {
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
        if let Ok(res) = client.request(req).await {
            if res.status().is_success() {
                return;
            }
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

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct PhaseResult {
    total: Histogram<u64>,
    first_byte: Option<Histogram<u64>>,
    ok: u64,
    errors: u64,
    elapsed: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// One request; returns (time to first byte, time to last byte) in µs from `start`.
async fn one(
    client: &HttpClient,
    url: &str,
    body: &Bytes,
    start: Instant,
) -> Result<(u64, u64), ()> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
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
    if ok {
        Ok((first.unwrap_or(last), last))
    } else {
        Err(())
    }
}

async fn phase(client: &HttpClient, url: &str, body: Bytes, args: &Args) -> PhaseResult {
    let total = Arc::new(std::sync::Mutex::new(histogram()));
    let first = Arc::new(std::sync::Mutex::new(histogram()));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let run_for = Duration::from_secs(args.seconds);
    let began = Instant::now();
    let record = {
        let (total, first, ok, errors) = (total.clone(), first.clone(), ok.clone(), errors.clone());
        move |r: Result<(u64, u64), ()>| match r {
            Ok((fb, lb)) => {
                ok.fetch_add(1, Ordering::Relaxed);
                let _ = total.lock().unwrap().record(lb.max(1));
                let _ = first.lock().unwrap().record(fb.max(1));
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
    let total = total.lock().unwrap().clone();
    let first = first.lock().unwrap().clone();
    PhaseResult {
        total,
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
    println!();
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
    let mock_addr: SocketAddr = ([127, 0, 0, 1], mock_port).into();
    let gw_addr: SocketAddr = ([127, 0, 0, 1], gw_port).into();
    let dir = std::env::temp_dir().join(format!("tollgate-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("load.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{gw_addr}\"\nshutdown_grace_ms = 1000\n\n[[groups]]\nname = \"gpt-4o-mini\"\n\
             [[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"http://{mock_addr}/v1\"\nmodel = \"mock-small\"\n"
        ),
    )
    .unwrap();
    let quiet = || Stdio::null();
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(sibling("mock_upstream"))
            .args(["--listen", &mock_addr.to_string()])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .expect("mock starts"),
    );
    children.0.push(
        Command::new(sibling("gateway"))
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(quiet())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gateway starts"),
    );
    let gw_pid = children.0[1].id();

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency.max(64) * 2)
        .build(connector);
    wait_healthy(&client, mock_addr).await;
    wait_healthy(&client, gw_addr).await;

    let pad = "x".repeat(args.body_bytes.saturating_sub(120));
    let body = Bytes::from(format!(
        r#"{{"model":"{{M}}","stream":{},"messages":[{{"role":"user","content":"{pad}"}}]}}"#,
        args.stream
    ));
    let direct_body = Bytes::from(String::from_utf8_lossy(&body).replace("{M}", "mock-small"));
    let gateway_body = Bytes::from(String::from_utf8_lossy(&body).replace("{M}", "gpt-4o-mini"));
    let direct_url = format!("http://{mock_addr}/v1/chat/completions");
    let gateway_url = format!("http://{gw_addr}/v1/chat/completions");

    println!(
        "tollgate load: {} for {} s per phase, {} rounds, {}-byte body{}; mock and gateway as separate processes on 127.0.0.1, {} cores",
        match args.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => format!("closed loop, {} in flight", args.concurrency),
        },
        args.seconds,
        args.rounds,
        direct_body.len(),
        if args.stream { ", streaming" } else { "" },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    // Warm both paths (connections, allocator) before measuring.
    let warm = Args {
        seconds: 1,
        ..args.clone()
    };
    phase(&client, &direct_url, direct_body.clone(), &warm).await;
    phase(&client, &gateway_url, gateway_body.clone(), &warm).await;

    let mut added: Vec<Vec<f64>> = vec![Vec::new(); QUANTILES.len()];
    let mut share = Vec::new();
    let mut added_fb = Vec::new();
    for round in 1..=args.rounds {
        println!("-- round {round}");
        let d = phase(&client, &direct_url, direct_body.clone(), &args).await;
        report("direct", &d);
        let g = phase(&client, &gateway_url, gateway_body.clone(), &args).await;
        report("gateway", &g);
        for (i, (_, q)) in QUANTILES.iter().enumerate() {
            added[i]
                .push(g.total.value_at_quantile(*q) as f64 - d.total.value_at_quantile(*q) as f64);
        }
        share.push(
            (g.ok as f64 / g.elapsed.as_secs_f64())
                / (d.ok as f64 / d.elapsed.as_secs_f64()).max(1e-9),
        );
        if let (Some(gf), Some(df)) = (&g.first_byte, &d.first_byte) {
            added_fb.push(gf.value_at_quantile(0.5) as f64 - df.value_at_quantile(0.5) as f64);
        }
    }
    println!("-- gateway added latency (median over rounds)");
    for (i, (name, _)) in QUANTILES.iter().enumerate() {
        println!("  {name}: {:+.0} µs", median(added[i].clone()));
    }
    if !added_fb.is_empty() {
        println!("  time to first byte, p50: {:+.0} µs", median(added_fb));
    }
    println!(
        "-- gateway throughput / direct: {:.0} %",
        median(share) * 100.0
    );
    let (peak, now) = rss_kib(gw_pid);
    println!(
        "-- gateway RSS: peak {:.1} MiB, now {:.1} MiB",
        peak as f64 / 1024.0,
        now as f64 / 1024.0
    );
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
