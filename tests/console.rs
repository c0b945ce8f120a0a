//! The operator's console in a real browser: `tests/browser/console.mjs`
//! drives Debian's Chromium with `playwright-core` (pinned in
//! `tests/browser/package-lock.json`) against the reference gateway in
//! front of the bundled mock. It logs in, creates a key and sees it listed,
//! sends requests with it, sees their spend in the chart and the request
//! log, sets and removes a budget, watches a deployment enter and leave a
//! cooldown, blocks the key and sees its next request refused, and checks
//! that cross-site forms are refused. It saves a screenshot of each page
//! under `target/console-screenshots/` (not committed).
//!
//! Needs `node` and Chromium (`/usr/bin/chromium`, or the one
//! `TOLLGATE_CHROMIUM` names); `.ci/run` installs both. The npm package is
//! installed on first use (`npm ci` in `tests/browser`). A missing browser
//! or Node.js is a failure, never a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// One group that answers, priced so a few requests cost cents; one whose
/// deployment always answers 429 with `Retry-After: 3` (a 3 s cooldown).
const CONFIG: &str = r#"
[router]
num_retries = 0

[budgets]
time_zone = "UTC"

[spend]
queue = 1000
batch = 16

[[groups]]
name = "gpt-4o-mini"
price_in_per_mtok = 1500.0
price_out_per_mtok = 6000.0
[[groups.deployments]]
provider = "mock"
name = "mock-small-a"
base_url = "{mock}"
api_key_env = "{key_env}"
model = "mock-small"

[[groups]]
name = "flaky"
[[groups.deployments]]
provider = "mock"
name = "flaky-a"
base_url = "{mock}"
api_key_env = "{key_env}"
headers = { "x-mock-fault" = "429:3" }

[keys]
store = "sqlite"
sqlite_path = "{db}"
master_key_env = "{master_env}"
"#;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `npm ci` once per lock file (a stamp in `node_modules` remembers which).
fn npm_ci() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let dir = browser_dir();
        let lock = std::fs::read_to_string(dir.join("package-lock.json")).unwrap();
        let stamp = dir.join("node_modules/.tollgate-lock");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm (Node.js) runs: the console's browser tests need Node.js and npm");
        assert!(
            out.status.success(),
            "npm ci in tests/browser failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, lock).unwrap();
    });
}

fn chromium() -> String {
    let path = std::env::var("TOLLGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "no Chromium at {path}: install Debian's `chromium` (apt-get install chromium) or set TOLLGATE_CHROMIUM"
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_keys_spend_budgets_and_deployments_in_the_console() {
    let chromium = chromium();
    tokio::task::spawn_blocking(npm_ci).await.unwrap();
    let dir = tempdir();
    let db = dir.join("console.db");
    let mock = mock().await;
    let gw = gateway(&CONFIG.replace("{db}", db.to_str().unwrap()), &mock).await;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    // Only this run's screenshots (a failed check leaves `failed-….png`).
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(browser_dir().join("console.mjs"))
        .env("GATEWAY", format!("http://{}", gw.addr))
        .env("MASTER_KEY", MASTER_KEY)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &shots)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "console.mjs failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with("passed, 0 failed") && !last.starts_with("0 passed"),
        "{stdout}\n{stderr}"
    );
    // What the browser saw is checked by the script (no master key in a
    // page or a URL); the gateway's own log is checked here.
    assert_no_secrets("the gateway's log", &logs());
    for shot in [
        "login",
        "keys",
        "key",
        "spend",
        "logs",
        "budgets",
        "deployments",
        "teams",
    ] {
        let file = shots.join(format!("{shot}.png"));
        let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 10_000,
            "screenshot {} is missing or empty",
            file.display()
        );
    }
}

/// `[console]`: `enabled = false` serves no `/ui` (the admin API stays);
/// `secure_cookie` marks the session cookie `Secure`.
#[tokio::test]
async fn the_console_section_turns_it_off_or_marks_its_cookie_secure() {
    let mock = mock().await;
    let admin_only = "[keys]\nstore = \"memory\"\nmaster_key_env = \"{master_env}\"\n";
    let groups = "[[groups]]\nname = \"m\"\n[[groups.deployments]]\nprovider = \"mock\"\nbase_url = \"{mock}\"\n";
    let off = gateway(
        &format!("[console]\nenabled = false\n{groups}{admin_only}"),
        &mock,
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = client.get(off.url("/ui/login")).send().await.unwrap();
    assert_eq!(res.status(), 404, "the console is off");
    let res = client
        .get(off.url("/key/list"))
        .bearer_auth(MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the admin API is still there");

    let secure = gateway(
        &format!("[console]\nsecure_cookie = true\n{groups}{admin_only}"),
        &mock,
    )
    .await;
    let res = client
        .post(secure.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("master_key={MASTER_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(!cookie.contains(MASTER_KEY));
}

/// A fresh directory under Cargo's test temporary directory.
fn tempdir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "console-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
