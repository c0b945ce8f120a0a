//! The bundled mock upstream as a binary (`tollgate-mock`, feature
//! `mock-server`): started as a user would start it, it listens where it is
//! told, says so, and answers an OpenAI chat request and an Anthropic one.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn the_mock_binary_listens_and_answers() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-mock"))
        .args(["--listen", "127.0.0.1:0", "--tokens", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tollgate-mock starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("mock_upstream listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    let client = reqwest::Client::new();
    let chat: serde_json::Value = client
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chat["choices"][0]["message"]["content"], "tok0 tok1 tok2");
    let message: serde_json::Value = client
        .post(format!("{base}/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&serde_json::json!({"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(message["content"][0]["text"], "tok0 tok1 tok2", "{message}");
    child.kill().unwrap();
    child.wait().unwrap();
}
