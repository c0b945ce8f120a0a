//! Memory of long translated streams: one very long tool-call stream at a
//! time through the reference gateway, translated both ways and passed
//! through, while the gateway's resident memory is sampled.
//!
//! ```text
//! cargo build --release --examples
//! target/release/examples/stream_rss                 # 200 MiB, then 1 MiB, every path
//! target/release/examples/stream_rss --mib 50 --mib 1 --rounds 2
//! ```
//!
//! It starts `mock_upstream` and `gateway` (the release binaries beside
//! this one) as child processes on 127.0.0.1, the gateway with a config of
//! four model groups on the mock, each asking the mock (through the
//! deployment's `x-mock-fault` header) for one tool call whose arguments
//! are SIZE bytes, streamed in 4 KiB deltas and generated lazily, so the
//! mock's memory stays flat:
//!
//! | path | client → gateway | gateway → mock | the mock's stream |
//! |---|---|---|---|
//! | `chat→anthropic` | OpenAI chat, `/v1/chat/completions` | Anthropic Messages (translated) | `tool_use:SIZE`: `input_json_delta`s |
//! | `messages→openai` | Anthropic, `/v1/messages` | OpenAI chat (translated) | `tool_args:SIZE`: `tool_calls` argument deltas |
//! | `chat→openai` | OpenAI chat | OpenAI chat (passed through) | `tool_args:SIZE` |
//! | `messages→anthropic` | Anthropic | Anthropic (passed through) | `tool_use:SIZE` |
//!
//! For every size (`--mib`, repeatable; default 200 and 1) and round
//! (`--rounds`, default 1), each path streams once, one after another,
//! while this process reads the answer as fast as it comes and reads the
//! gateway's `VmRSS` from `/proc/<pid>/status` every 20 ms. It prints, per
//! stream: the bytes the client received, the time and throughput, whether
//! the stream ended with its family's last event (`data: [DONE]`, or
//! `event: message_stop`) and no error event, and the gateway's RSS before,
//! highest sampled during, and after, with the growth (highest − before).
//! The gateway runs with a static key, `[rate_limits]` off and `Budget`
//! metering every stream (always in the stack); the children are killed at
//! the end. Only loopback addresses are used.
//!
//! Not a test: its figures depend on the machine (docs/performance.md
//! keeps the measured ones with this command).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The static virtual key this harness gives the gateway (loopback only, not
/// a secret); the gateway reads it from `TOLLGATE_RSS_KEY`.
const KEY: &str = "tg-rss-RssKeyForLoopbackOnly00000000000";

struct Args {
    mib: Vec<u64>,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        mib: Vec::new(),
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("stream_rss: {name} needs a number");
                std::process::exit(2)
            })
        };
        match flag.as_str() {
            "--mib" => a.mib.push(num("--mib").max(1)),
            "--rounds" => a.rounds = num("--rounds").max(1) as usize,
            "--help" | "-h" => {
                println!("usage: stream_rss [--mib N]... [--rounds N]");
                std::process::exit(0)
            }
            other => {
                eprintln!("stream_rss: unknown flag {other} (see --help)");
                std::process::exit(2)
            }
        }
    }
    if a.mib.is_empty() {
        a.mib = vec![200, 1];
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

/// The child processes, stopped when dropped (SIGTERM, then SIGKILL after
/// two seconds).
struct Children(Vec<Child>);

impl Drop for Children {
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
            "stream_rss: {} not found; run `cargo build --release --examples` first",
            p.display()
        );
        std::process::exit(2);
    }
    p
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
            eprintln!("stream_rss: {addr} did not become healthy");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One path of the table above.
struct Path {
    name: &'static str,
    /// The client speaks Anthropic's Messages API.
    messages: bool,
    /// The deployment speaks Anthropic's API.
    anthropic: bool,
}

const PATHS: [Path; 4] = [
    Path {
        name: "chat→anthropic",
        messages: false,
        anthropic: true,
    },
    Path {
        name: "messages→openai",
        messages: true,
        anthropic: false,
    },
    Path {
        name: "chat→openai",
        messages: false,
        anthropic: false,
    },
    Path {
        name: "messages→anthropic",
        messages: true,
        anthropic: true,
    },
];

/// The model group serving `anthropic`-API or OpenAI-API streams of `mib` MiB.
fn group(anthropic: bool, mib: u64) -> String {
    format!("{}-{mib}", if anthropic { "anthropic" } else { "openai" })
}

/// What one stream did.
struct Run {
    bytes: u64,
    secs: f64,
    ended: bool,
    before: u64,
    highest: u64,
    after: u64,
    samples: usize,
}

async fn stream(client: &HttpClient, gateway: SocketAddr, gw_pid: u32, p: &Path, mib: u64) -> Run {
    let model = group(p.anthropic, mib);
    let (path, body) = if p.messages {
        (
            "/v1/messages",
            format!(
                r#"{{"model":"{model}","stream":true,"max_tokens":4096,"messages":[{{"role":"user","content":"call the tool"}}]}}"#
            ),
        )
    } else {
        (
            "/v1/chat/completions",
            format!(
                r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"call the tool"}}]}}"#
            ),
        )
    };
    let req = http::Request::post(format!("http://{gateway}{path}"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let before = rss_kib(gw_pid);
    let started = Instant::now();
    let res = client.request(req).await.expect("the gateway answers");
    assert_eq!(res.status(), 200, "{}: {}", p.name, res.status());
    let mut body = res.into_body();
    let (mut bytes, mut highest, mut samples) = (0u64, before, 0usize);
    let mut next_sample = Instant::now();
    // The last bytes received, to see how the stream ended.
    let mut tail: Vec<u8> = Vec::new();
    let mut error_event = false;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the stream is intact").into_data() {
            bytes += data.len() as u64;
            // An error event or frame, in either family, is a failure.
            error_event |= memchr::memmem::find(&data, b"event: error").is_some()
                || memchr::memmem::find(&data, b"\"finish_reason\":\"error\"").is_some();
            tail.extend_from_slice(&data[data.len().saturating_sub(64)..]);
            let cut = tail.len().saturating_sub(64);
            tail.drain(..cut);
        }
        if Instant::now() >= next_sample {
            highest = highest.max(rss_kib(gw_pid));
            samples += 1;
            next_sample = Instant::now() + Duration::from_millis(20);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let after = rss_kib(gw_pid);
    let tail = String::from_utf8_lossy(&tail);
    let last = if p.messages {
        "event: message_stop"
    } else {
        "data: [DONE]"
    };
    let ended = !error_event
        && tail
            .trim_end()
            .rsplit("\n\n")
            .next()
            .is_some_and(|e| e.starts_with(last));
    Run {
        bytes,
        secs,
        ended,
        before,
        highest: highest.max(after),
        after,
        samples,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let mock: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gateway: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let dir = std::env::temp_dir().join(format!("tollgate-stream-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("stream_rss.toml");
    let mut groups = String::new();
    let mut sizes = args.mib.clone();
    sizes.sort_unstable();
    sizes.dedup();
    for &mib in &sizes {
        for anthropic in [true, false] {
            let (api, fault, model) = if anthropic {
                ("anthropic", format!("tool_use:{mib}MiB"), "mock-claude")
            } else {
                ("openai", format!("tool_args:{mib}MiB"), "mock-small")
            };
            groups.push_str(&format!(
                "[[groups]]\nname = \"{}\"\n[[groups.deployments]]\nprovider = \"mock-{api}\"\napi = \"{api}\"\n\
                 base_url = \"http://{mock}/v1\"\nmodel = \"{model}\"\nheaders = {{ \"x-mock-fault\" = \"{fault}\" }}\n\n",
                group(anthropic, mib)
            ));
        }
    }
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{gateway}\"\nshutdown_grace_ms = 1000\n\n\
             [keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"TOLLGATE_RSS_KEY\"\nmodels = [\"*\"]\n\n{groups}"
        ),
    )
    .unwrap();
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(sibling("mock_upstream"))
            .args(["--listen", &mock.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the mock starts"),
    );
    children.0.push(
        Command::new(sibling("gateway"))
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env("TOLLGATE_RSS_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the gateway starts"),
    );
    let gw_pid = children.0[1].id();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    wait_healthy(&client, mock).await;
    wait_healthy(&client, gateway).await;
    let started = rss_kib(gw_pid);
    println!(
        "tollgate stream_rss: one tool-call stream at a time through the gateway (pid {gw_pid}, RSS at start {:.1} MiB), {} cores, load average {}",
        started as f64 / 1024.0,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    println!(
        "  {:<20} {:>6} {:>10} {:>8} {:>8} {:>6}  {:>9} {:>9} {:>9} {:>8}",
        "path",
        "MiB",
        "received",
        "s",
        "MiB/s",
        "ended",
        "RSS before",
        "highest",
        "after",
        "growth"
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut failed = false;
    for &size in &args.mib {
        for _ in 0..args.rounds {
            for p in &PATHS {
                let r = stream(&client, gateway, gw_pid, p, size).await;
                let received = r.bytes as f64 / 1048576.0;
                failed |= !r.ended;
                println!(
                    "  {:<20} {size:>6} {received:>9.1}M {:>8.2} {:>8.0} {:>6}  {:>8.1}M {:>8.1}M {:>8.1}M {:>+7.1}M  ({} samples)",
                    p.name,
                    r.secs,
                    received / r.secs,
                    if r.ended { "yes" } else { "NO" },
                    mib(r.before),
                    mib(r.highest),
                    mib(r.after),
                    mib(r.highest) - mib(r.before),
                    r.samples
                );
            }
        }
    }
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
    if failed {
        eprintln!("stream_rss: a stream did not end with its family's last event");
        std::process::exit(1);
    }
}
