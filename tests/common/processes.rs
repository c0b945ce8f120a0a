//! Several real gateway processes for the multi-replica tests: the built
//! `gateway` example binary, each with its own generated config on
//! 127.0.0.1 port 0, the address read from its "listening" log line; a
//! cuttable loopback TCP proxy (to take a database away and bring it
//! back); and, with the `postgres` feature, a fresh PostgreSQL database per
//! test, dropped at the end.
//!
//! `cargo test` builds the examples into `target/<profile>/examples/`
//! beside the test binaries' `deps/`; a run filtered to one test target
//! (`cargo test --test replicas`) does not, so build the example first
//! (`cargo build --all-features --example gateway`), or the harness fails
//! saying so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{
    CLIENT_KEY, CLIENT_KEY_ENV, EXTRA_KEYS, MASTER_KEY, MASTER_KEY_ENV, MockServer, UPSTREAM_KEY,
    UPSTREAM_KEY_ENV,
};

/// The `gateway` example binary next to this test binary.
pub fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/gateway
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary sits in target/<profile>/deps");
    let bin = profile
        .join("examples")
        .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "the gateway binary {} is missing: `cargo test --all-features` builds it; after a run \
         filtered to one test target, build it with `cargo build --all-features --example gateway`",
        bin.display()
    );
    bin
}

/// One gateway process. Killed when dropped.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<String>>,
    config: PathBuf,
}

impl GatewayProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The config file the process was started with (a test may rewrite it
    /// and send [`hangup`](Self::hangup) to reload it).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Sends SIGHUP (`kill -HUP`): the gateway reloads its config file.
    pub fn hangup(&self) {
        let pid = self.child.id().expect("the process is running");
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGHUP not delivered");
    }

    /// Kills the process and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM, a graceful shutdown) and waits at
    /// most `limit` for it to exit; panics with its output if it does not.
    #[allow(dead_code)]
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("the process is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM not delivered");
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("the process is waited for"),
            Err(_) => panic!(
                "the gateway did not exit within {limit:?} of SIGTERM:\n{}",
                self.logs()
            ),
        }
    }
}

impl super::GatewayUrl for GatewayProcess {
    fn url(&self, path: &str) -> String {
        GatewayProcess::url(self, path)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The placeholders a replica config may use: `{mock}` (the mock's base
/// URL), `{key_env}` (the upstream key's variable), `{master_env}` (the
/// master key's variable), `{client_env}` (the static client key's).
pub fn fill(toml: &str, mock: &MockServer) -> String {
    toml.replace("{mock}", &mock.base_url())
        .replace("{key_env}", UPSTREAM_KEY_ENV)
        .replace("{master_env}", MASTER_KEY_ENV)
        .replace("{client_env}", CLIENT_KEY_ENV)
}

/// Starts one gateway process with `toml` (already filled; it should say
/// `listen = "127.0.0.1:0"` under `[server]`) and waits, at most 30 s, until
/// it listens. Fails with the process's output if it exits or never listens.
pub async fn spawn_gateway(toml: &str) -> GatewayProcess {
    spawn_gateway_with_env(toml, &[]).await
}

/// [`spawn_gateway`] with more variables in the process's environment.
pub async fn spawn_gateway_with_env(toml: &str, env: &[(&str, &str)]) -> GatewayProcess {
    static N: AtomicU32 = AtomicU32::new(0);
    let config = std::env::temp_dir().join(format!(
        "tollgate-replica-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&config, toml).expect("config written");
    let mut cmd = Command::new(gateway_binary());
    cmd.arg(&config)
        .env("RUST_LOG", "info,tollgate=debug")
        .env("NO_COLOR", "1")
        .env(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
        .env(MASTER_KEY_ENV, MASTER_KEY)
        .env(CLIENT_KEY_ENV, CLIENT_KEY)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (var, key) in EXTRA_KEYS {
        cmd.env(var, key);
    }
    for (var, value) in env {
        cmd.env(var, value);
    }
    let mut child = cmd.spawn().expect("the gateway binary starts");
    let logs = Arc::new(Mutex::new(String::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    for (stream, tx) in [
        (
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Some(tx),
        ),
        (Box::new(stderr), None),
    ] {
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = strip_ansi(&line);
                if let Some(tx) = &tx
                    && line.contains("gateway listening")
                    && let Some(addr) = line
                        .split_once("listen=")
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        .and_then(|a| a.parse().ok())
                {
                    let _ = tx.send(addr);
                }
                let mut l = logs.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let addr = loop {
        tokio::select! {
            Some(addr) = rx.recv() => break addr,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            panic!(
                "the gateway exited ({status}) before listening:\n{}",
                logs.lock().unwrap()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway did not listen within 30 s:\n{}",
            logs.lock().unwrap()
        );
    };
    GatewayProcess {
        addr,
        child,
        logs,
        config,
    }
}

/// Starts `n` gateway processes with the same config, concurrently.
pub async fn spawn_replicas(n: usize, toml: &str) -> Vec<GatewayProcess> {
    let starts = (0..n).map(|_| spawn_gateway(toml));
    futures_util::future::join_all(starts).await
}

/// Polls `probe` every 5 ms until it returns `Some`, at most `limit`;
/// returns the value and how long it took, or panics naming `what` and the
/// last observation.
pub async fn within<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return (v, start.elapsed()),
            Err(e) => e,
        };
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A loopback TCP proxy in front of `target` that a test can cut (every
/// open connection closed, new ones accepted and closed at once, as a
/// stopped server would) and restore, on the same port.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::<tokio::task::JoinHandle<()>>::new()));
        let (u, c) = (up.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut c = c.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(handle);
            }
        });
        TcpProxy {
            addr,
            up,
            conns,
            task,
        }
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

#[cfg(feature = "postgres")]
#[allow(unused_imports)]
pub use pg::*;

#[cfg(feature = "postgres")]
mod pg {
    use tokio_postgres::NoTls;

    /// `TOLLGATE_TEST_POSTGRES_URL`, or `postgres://postgres@127.0.0.1:5432/postgres`.
    pub fn postgres_url() -> String {
        std::env::var("TOLLGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// `url` with its database replaced by `db`.
    pub fn with_db(url: &str, db: &str) -> String {
        let (url, query) = url.split_once('?').unwrap_or((url, ""));
        let rest = url.find("://").map_or(0, |i| i + 3);
        let end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("{}/{db}{q}", &url[..end])
    }

    /// `url` with its host and port replaced by `addr` (to go through a proxy).
    pub fn with_addr(url: &str, addr: std::net::SocketAddr) -> String {
        let rest = url.find("://").map_or(0, |i| i + 3);
        let end = url[rest..].find('/').map_or(url.len(), |i| rest + i);
        let authority = &url[rest..end];
        let user = authority
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        format!("{}{user}{addr}{}", &url[..rest], &url[end..])
    }

    /// A client on the server's maintenance database; an unreachable server
    /// fails the test (it is never skipped).
    pub async fn admin_client() -> tokio_postgres::Client {
        let url = postgres_url();
        let (client, conn) = tokio_postgres::connect(&url, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must be reachable at TOLLGATE_TEST_POSTGRES_URL (default 127.0.0.1:5432): {e}"
                )
            });
        tokio::spawn(conn);
        client
    }

    /// A fresh database for one test, dropped (connections and all) when
    /// this is dropped, even when the test fails.
    pub struct TestDatabase {
        pub name: String,
        pub url: String,
    }

    impl TestDatabase {
        pub async fn create(tag: &str) -> TestDatabase {
            let name = format!(
                "tollgate_it_{tag}_{}_{}",
                std::process::id(),
                fastrand::u32(..)
            );
            admin_client()
                .await
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            TestDatabase {
                url: with_db(&postgres_url(), &name),
                name,
            }
        }

        /// The server's process ids of this database's connections with
        /// `application_name` (e.g. `tollgate-listener`).
        pub async fn backends(&self, application_name: &str) -> Vec<i32> {
            admin_client()
                .await
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 ORDER BY pid",
                    &[&self.name, &application_name],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }

        /// Ends these server processes (`pg_terminate_backend`).
        pub async fn terminate(&self, pids: &[i32]) {
            let client = admin_client().await;
            for pid in pids {
                client
                    .execute("SELECT pg_terminate_backend($1)", &[pid])
                    .await
                    .unwrap();
            }
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let name = self.name.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let _ = admin_client()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                });
            })
            .join();
        }
    }
}
