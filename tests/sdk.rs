//! The official SDKs as clients, through real sockets: the Python
//! `anthropic` and `openai` packages, and LiteLLM's admin CLI, pinned in
//! `tests/sdk/requirements.txt`, drive the reference gateway in front of the
//! bundled mock. A client that cannot parse one of the gateway's answers or
//! errors fails the test.
//!
//! The SDKs live in a virtual environment made on first use under Cargo's
//! test temporary directory (`python3 -m venv`, then `pip install -r
//! tests/sdk/requirements.txt` from PyPI), or in the one
//! `TOLLGATE_SDK_PYTHON` names (its `python`). No Python, no venv module or
//! no PyPI is a failure, never a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `claude-sonnet` answers; each fault the SDK meets has a group of its own
/// (a fault cools its deployment down).
const CONFIG: &str = r#"
[router]
num_retries = 0

[[groups]]
name = "claude-sonnet"
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{mock}"
api_key_env = "{key_env}"
model = "mock-claude"

[[groups]]
name = "claude-limited"
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{mock}"
api_key_env = "{key_env}"

[[groups]]
name = "claude-broken"
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{mock}"
api_key_env = "{key_env}"

[[groups]]
name = "gpt-4o-mini"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"
api_key_env = "{key_env}"
model = "mock-small"

[[groups]]
name = "gpt-limited"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"

[[groups]]
name = "gpt-broken"
[[groups.deployments]]
provider = "mock"
base_url = "{mock}"

[[groups]]
name = "claude-overloaded"
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{mock}"
api_key_env = "{key_env}"

[[groups]]
name = "claude-tools"
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{mock}"
api_key_env = "{key_env}"
headers = { "x-mock-fault" = "tool_use:4KiB" }

[[groups]]
name = "claude-cut"
[[groups.deployments]]
provider = "anthropic"
api = "anthropic"
base_url = "{mock}"
api_key_env = "{key_env}"
"#;

/// The venv's Python with the pinned SDKs, made once per test binary.
fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Ok(p) = std::env::var("TOLLGATE_SDK_PYTHON") {
                return PathBuf::from(p);
            }
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv");
            let python = dir.join("bin/python");
            let requirements =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/requirements.txt");
            let stamp = dir.join("requirements.txt");
            let wanted = std::fs::read_to_string(&requirements).unwrap();
            if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
                return python;
            }
            let run = |cmd: &mut Command, what: &str| {
                let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    out.status.success(),
                    "{what} failed:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(
                Command::new("python3")
                    .args(["-m", "venv", "--clear"])
                    .arg(&dir),
                "python3 -m venv (the SDK tests need Python 3 with venv)",
            );
            run(
                Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(&requirements),
                "pip install -r tests/sdk/requirements.txt",
            );
            std::fs::write(&stamp, wanted).unwrap();
            python
        })
        .clone()
}

/// Runs `script` with the gateway's base URL and the client key; its output
/// must end with `N passed, 0 failed`.
async fn run(script: &str, base: &str) {
    run_as(script, base, CLIENT_KEY).await
}

/// Runs `script` with the gateway's base URL and `key`.
async fn run_as(script: &str, base: &str, key: &str) {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .arg(base)
        .arg(key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}:\n{stdout}\n{stderr}",
        script.display()
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with("passed, 0 failed") && !last.starts_with("0 passed"),
        "{stdout}"
    );
    assert_no_secrets("the SDK's output", &format!("{stdout}{stderr}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_drives_messages_streams_tools_and_errors() {
    let mock = mock().await;
    let gw = gateway(CONFIG, &mock).await;
    run("anthropic_client.py", &format!("http://{}", gw.addr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_drives_chat_responses_embeddings_and_errors() {
    let mock = mock().await;
    let gw = gateway(CONFIG, &mock).await;
    run("openai_client.py", &format!("http://{}", gw.addr)).await;
}

/// Two Bedrock (Converse) groups on the mock's root, signed with temporary
/// credentials from its container credentials endpoint.
fn bedrock_config(mock: &MockServer) -> String {
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        // SAFETY: once, before the gateway that reads it is built.
        unsafe {
            std::env::set_var(
                "TOLLGATE_SDK_AWS_CONTAINER_TOKEN",
                mock_upstream::bedrock::CONTAINER_TOKEN,
            )
        };
    });
    let deployment = |fault: &str| {
        format!(
            "[[groups.deployments]]\nprovider = \"bedrock\"\napi = \"bedrock\"\nbase_url = \"http://{addr}\"\nmodel = \"anthropic.mock-claude-v1:0\"\n{fault}bedrock = {{ region = \"us-east-1\", credentials = \"container\", container_credentials_uri = \"http://{addr}/v2/credentials/sdk\", container_authorization_token_env = \"TOLLGATE_SDK_AWS_CONTAINER_TOKEN\" }}\n",
            addr = mock.addr
        )
    };
    format!(
        "[router]\nnum_retries = 0\n[[groups]]\nname = \"bedrock-claude\"\n{}[[groups]]\nname = \"bedrock-tools\"\n{}",
        deployment(""),
        deployment("headers = { \"x-mock-fault\" = \"tool_use:4KiB\" }\n")
    )
}

/// Both SDKs through Bedrock deployments: each family whole, streamed, and
/// with a tool call (its streamed arguments intact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sdks_drive_a_bedrock_deployment() {
    let mock = mock().await;
    let gw = gateway(&bedrock_config(&mock), &mock).await;
    run("bedrock_client.py", &format!("http://{}", gw.addr)).await;
    assert_eq!(mock.bedrock.credential_fetches(), 2, "one per deployment");
    assert_eq!(mock.bedrock.rejected(), 0);
}

/// LiteLLM's own admin CLI drives the admin API: keys generate, list and
/// delete (by key and by alias), teams list, users create, list, get and
/// delete, version, and raw requests as LiteLLM's docs show them (keys,
/// teams, team members and team delete, customers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn litellms_admin_cli_manages_keys_and_teams() {
    let mock = mock().await;
    let gw = gateway(
        &format!("{CONFIG}\n[keys]\nstore = \"memory\"\nmaster_key_env = \"{{master_env}}\"\n"),
        &mock,
    )
    .await;
    run_as("litellm_cli.py", &format!("http://{}", gw.addr), MASTER_KEY).await;
}
