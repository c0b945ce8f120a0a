//! TLS to the shared state: PostgreSQL by libpq's `sslmode` and
//! `sslrootcert`, Redis by `rediss://` and `[state] ca_file`, each against
//! a loopback server of its own with a certificate signed by a CA made
//! here (rcgen), and a second CA that signed nothing (the wrong one).
//!
//! PostgreSQL: a temporary cluster (`initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/*/bin`, as the `postgres` user when run as root),
//! `ssl = on`, on a free loopback port and a socket in its own directory;
//! stopped when the test ends, panic or not. Redis: `redis-server
//! --tls-port` on a free loopback port. Neither is ever skipped: a missing
//! binary fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tollgate::budget::{Period, PostgresSpendStore, Scope, SpendRecord, SpendStore, TimeZone};
use tollgate::config::Config;
use tollgate::keys::postgres::PostgresOptions;
use tollgate::keys::{KeyHash, KeyRecord, KeyStore, Keyring, PostgresStore};
use tollgate::state::{RedisLedger, RedisState};

/// A CA, a server certificate it signed (for `127.0.0.1` and `localhost`),
/// and a CA that signed nothing, as PEM files in `dir`.
struct Certs {
    dir: PathBuf,
    ca: PathBuf,
    wrong_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Certs {
    fn new(dir: &Path) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("tollgate test CA");
        let (wrong_pem, _) = ca("some other CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let certs = Certs {
            dir: dir.to_owned(),
            ca: dir.join("ca.pem"),
            wrong_ca: dir.join("wrong-ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        std::fs::write(&certs.ca, ca_pem).unwrap();
        std::fs::write(&certs.wrong_ca, wrong_pem).unwrap();
        std::fs::write(&certs.cert, cert.pem()).unwrap();
        std::fs::write(&certs.key, key.serialize_pem()).unwrap();
        certs
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-{tag}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("`id -u` runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The newest PostgreSQL server's `bin` directory.
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)",
        )
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
        .1
}

/// A temporary PostgreSQL cluster with `ssl = on` (trust authentication,
/// loopback TCP and a socket in its directory), stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: TempDir,
}

impl Cluster {
    fn start(dir: TempDir, certs: &Certs) -> Cluster {
        let as_postgres = is_root();
        let root = dir.0.clone();
        let cluster = Cluster {
            bin: postgres_bin(),
            data: root.join("data"),
            socket_dir: root.clone(),
            port: free_port(),
            as_postgres,
            _dir: dir,
        };
        if as_postgres {
            // `postgres` refuses to run as root: the cluster is the postgres user's.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .unwrap();
            assert!(ok.success(), "chown to postgres failed");
        }
        let mode = |path: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        mode(&root, 0o700);
        // PostgreSQL refuses a key file that others can read.
        mode(&certs.key, 0o600);
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&cluster.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let conf = format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nfsync = off\n",
            cluster.port,
            root.display(),
            certs.cert.display(),
            certs.key.display()
        );
        let file = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(&conf);
        std::fs::write(&file, text).unwrap();
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                path(&cluster.data),
                "-l",
                path(&root.join("log")),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        cluster
    }

    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program} cannot start: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL to database `postgres` over loopback TCP with `query`.
    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres:s3cretPw@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// A client over the cluster's socket (no TLS), for the test's own looks.
    async fn admin(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host={} port={} user=postgres dbname=postgres",
                self.socket_dir.display(),
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("the temporary cluster answers on its socket");
        tokio::spawn(conn);
        client
    }

    /// Whether each connection of `application_name` is encrypted.
    async fn encrypted(&self, application_name: &str) -> Vec<bool> {
        self.admin()
            .await
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = $1",
                &[&application_name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn options() -> PostgresOptions {
    PostgresOptions {
        pool_size: 2,
        timeout: Duration::from_secs(10),
    }
}

async fn connect_err(url: &str) -> String {
    let e = PostgresStore::connect_with(url, options())
        .await
        .expect_err("the connection must be refused")
        .to_string();
    assert!(!e.contains("s3cretPw"), "an error names the password: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sslmodes_against_a_cluster_with_its_own_ca() {
    init();
    let dir = TempDir::new("pg-tls");
    let certs = Certs::new(&dir.0);
    let cluster = Cluster::start(dir, &certs);
    let ca = path(&certs.ca);

    // verify-full with the CA: the key store and the spend store work, and
    // every connection they hold (the pool's, the listener's) is encrypted.
    let full = cluster.url(&format!("sslmode=verify-full&sslrootcert={ca}"));
    let store = PostgresStore::connect_with(&full, options())
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {e}"));
    let mut key = KeyRecord::new("tlskey", KeyHash::of("tlskey", "s3cretKeyS3cretKey"));
    key.alias = Some("over tls".into());
    store.put_key(key.clone()).await.unwrap();
    let other = PostgresStore::connect_with(&full, options()).await.unwrap();
    let read = other
        .get_key("tlskey")
        .expect("the PostgreSQL store reads one key")
        .await
        .unwrap()
        .expect("the key is there");
    assert_eq!(read.alias.as_deref(), Some("over tls"));
    assert!(read.hash.matches(&key.hash));
    let keyring = Keyring::builder(other.clone()).build().await.unwrap();
    let follower = other.follow(&keyring, Duration::from_millis(100));
    for _ in 0..500 {
        if follower.is_listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        follower.is_listening(),
        "the change listener connects over TLS"
    );
    let spend = PostgresSpendStore::connect_with(&full, options())
        .await
        .unwrap_or_else(|e| panic!("the spend store over verify-full: {e}"));
    let mut record = SpendRecord::new("req-tls", "m", tollgate::budget::Timestamp::now());
    record.cost = 42;
    spend.write(vec![record]).await.unwrap();
    assert_eq!(spend.totals(None).await.unwrap().global, 42);
    for app in ["tollgate", "tollgate-listener"] {
        let seen = cluster.encrypted(app).await;
        assert!(
            !seen.is_empty() && seen.iter().all(|&ssl| ssl),
            "{app}: connections encrypted {seen:?}"
        );
    }
    follower.stop();

    // The same through the gateway's config: `[keys] url` with TLS.
    let toml = format!(
        "[budgets]\n[[groups]]\nname = \"m\"\nprice_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\n\
         [[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         [keys]\nurl = \"{full}\"\n"
    );
    let config = Config::from_toml("tls.toml", &toml).unwrap_or_else(|e| panic!("{e}"));
    config.key_store().await.unwrap_or_else(|e| panic!("{e}"));
    let spend = config.spend_store().await.unwrap_or_else(|e| panic!("{e}"));
    let totals = spend.expect("spend records on").totals(None).await.unwrap();
    assert_eq!(
        totals.global, 42,
        "the config's spend store is the same database"
    );

    // The wrong CA is refused, saying why.
    let e = connect_err(&cluster.url(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        path(&certs.wrong_ca)
    )))
    .await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    // So are the webpki roots (no `sslrootcert`): they never signed it.
    let e = connect_err(&cluster.url("sslmode=verify-full")).await;
    assert!(e.contains("UnknownIssuer"), "{e}");

    // verify-full compares the host name; verify-ca does not. The server
    // is reached at 127.0.0.1 (`hostaddr`) under a name not in its cert.
    let misnamed = |mode: &str| {
        format!(
            "postgres://postgres@db.invalid:{}/postgres?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={ca}",
            cluster.port
        )
    };
    let e = connect_err(&misnamed("verify-full")).await;
    assert!(e.contains("not valid for name \"db.invalid\""), "{e}");
    PostgresStore::connect_with(&misnamed("verify-ca"), options())
        .await
        .unwrap_or_else(|e| panic!("verify-ca ignores the name: {e}"));

    // require without a CA encrypts and checks nothing (libpq's meaning);
    // with the wrong CA it checks the chain, as verify-ca.
    PostgresStore::connect_with(&cluster.url("sslmode=require"), options())
        .await
        .unwrap_or_else(|e| panic!("require, no CA: {e}"));
    let e = connect_err(&cluster.url(&format!(
        "sslmode=require&sslrootcert={}",
        path(&certs.wrong_ca)
    )))
    .await;
    assert!(e.contains("UnknownIssuer"), "{e}");
    // prefer (the default) takes TLS when the server offers it.
    let _prefer =
        PostgresStore::connect_with(&cluster.url("application_name=tg-prefer"), options())
            .await
            .unwrap();
    let seen = cluster.encrypted("tg-prefer").await;
    assert!(
        !seen.is_empty() && seen.iter().all(|&ssl| ssl),
        "prefer: {seen:?}"
    );

    // The server stops offering TLS: require refuses to go on in the
    // clear, prefer and disable connect unencrypted.
    let admin = cluster.admin().await;
    admin
        .batch_execute("ALTER SYSTEM SET ssl = off")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let mut refused = String::new();
    for _ in 0..100 {
        match PostgresStore::connect_with(&cluster.url("sslmode=require"), options()).await {
            Err(e) => {
                refused = e.to_string();
                break;
            }
            // The reload is asynchronous: until it lands, TLS is still offered.
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(
        refused.contains("server does not support TLS"),
        "require against a server without TLS: {refused:?}"
    );
    assert!(!refused.contains("s3cretPw"));
    for (mode, app) in [
        ("prefer", "tg-plain-prefer"),
        ("disable", "tg-plain-disable"),
    ] {
        let _store = PostgresStore::connect_with(
            &cluster.url(&format!("sslmode={mode}&application_name={app}")),
            options(),
        )
        .await
        .unwrap_or_else(|e| panic!("{mode} without TLS on the server: {e}"));
        let seen = cluster.encrypted(app).await;
        assert!(
            !seen.is_empty() && seen.iter().all(|&ssl| !ssl),
            "{mode}: {seen:?}"
        );
    }
}

/// A `redis-server` speaking only TLS on a free loopback port, killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(certs: &Certs) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&certs.cert)
            .arg("--tls-key-file")
            .arg(&certs.key)
            .arg("--tls-ca-cert-file")
            .arg(&certs.ca)
            .args(["--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(&certs.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (built with TLS, as Debian's is)");
        TlsRedis { child, port }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[state]` on `url`, trusting `ca`, each call bounded by `timeout_ms`.
fn state_section(url: &str, prefix: &str, ca: Option<&Path>, timeout_ms: u64) -> String {
    let ca = ca.map_or(String::new(), |p| {
        format!("ca_file = \"{}\"\n", p.display())
    });
    format!("\n[state]\nurl = \"{url}\"\nprefix = \"{prefix}\"\ntimeout_ms = {timeout_ms}\n{ca}")
}

/// One group at $1 per million tokens, five requests a minute, and the
/// client key with a budget.
fn limited() -> String {
    format!(
        "[budgets]\n[rate_limits]\nrequests_per_minute = 5\n\n[[groups]]\nname = \"m\"\n\
         price_in_per_mtok = 1.0\nprice_out_per_mtok = 1.0\nmax_output_tokens = 1000\n\
         [[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"{{mock}}\"\n\
         \n[keys]\nstore = \"memory\"\n[[keys.static]]\nkey_env = \"{CLIENT_KEY_ENV}\"\nmodels = [\"*\"]\n\
         max_budget = 10.0\nbudget_duration = \"monthly\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_ca_file() {
    init();
    let dir = TempDir::new("redis-tls");
    let certs = Certs::new(&dir.0);
    let redis = TlsRedis::start(&certs);
    let url = redis.url();
    let prefix = format!("tollgate-tls:{}:{}:", std::process::id(), fastrand::u64(..));
    let ca_pem = std::fs::read(&certs.ca).unwrap();
    let state =
        RedisState::open_with_root_certificates(&url, &ca_pem, &prefix, Duration::from_secs(2))
            .unwrap();
    let mut up = false;
    for _ in 0..200 {
        if state.ping().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        up,
        "the TLS redis-server at {url} never answered over TLS with the CA"
    );

    // A gateway with `[state] url = "rediss://…"` and `ca_file`: budgets
    // and rate limits are kept in Redis, over TLS.
    let mock = mock().await;
    let toml = format!(
        "{}{}",
        limited(),
        state_section(&url, &prefix, Some(&certs.ca), 10_000)
    );
    let gw = gateway(&toml, &mock).await;
    let (mut ok, mut limited_out, mut charged) = (0, 0, 0u64);
    for _ in 0..8 {
        let a = post(
            &gw.url("/v1/chat/completions"),
            chat("m", r#""max_tokens":10"#),
        )
        .await;
        if a.status == 200 {
            ok += 1;
            assert_eq!(a.headers["x-ratelimit-limit-requests"], "5");
            let usage = &a.json()["usage"];
            charged += usage["prompt_tokens"].as_u64().unwrap()
                + usage["completion_tokens"].as_u64().unwrap();
        } else {
            a.error(429, "rate_limited");
            limited_out += 1;
        }
    }
    assert_eq!((ok, limited_out), (5, 3), "five a minute, kept in Redis");
    let ledger = RedisLedger::new(state, TimeZone::UTC);
    let scope = Scope::Key("client01".into());
    let mut spent = None;
    for _ in 0..500 {
        let u = ledger.usage(&scope, Period::Monthly).await.unwrap();
        if u.reserved == 0 {
            spent = Some(u.spent);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each answer is charged what it cost, at most what it reserved.
    let spent = spent.expect("no reservation left held");
    assert!(
        (5..=charged).contains(&spent),
        "charged in Redis, over TLS: {spent} of {charged}"
    );
    assert_eq!(mock.log.len(), 5);

    // The wrong CA, or the webpki roots (no `ca_file`): the gateway starts
    // (Redis may be down at start), every request is refused in the
    // contract's shape, and the log says why.
    for (ca, what) in [
        (Some(certs.wrong_ca.as_path()), "wrong CA"),
        (None, "webpki roots"),
    ] {
        let prefix = format!("{prefix}{}:", what.replace(' ', "-"));
        let toml = format!("{}{}", limited(), state_section(&url, &prefix, ca, 1_000));
        let gw = gateway(&toml, &mock).await;
        let a = post(&gw.url("/v1/chat/completions"), chat("m", "")).await;
        a.error(503, "state_unavailable");
    }
    assert_eq!(mock.log.len(), 5, "nothing refused reached the upstream");
    let logs = logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("shared state (Redis) call failed")
                && l.contains("invalid peer certificate: UnknownIssuer")),
        "the log names the certificate problem"
    );
    assert_no_secrets("the logs", &logs);
}
