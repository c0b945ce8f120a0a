//! `examples/bring_your_own_auth.rs` through real sockets: the app's own
//! axum middleware authenticates, tollgate's layers act on its identity
//! type, against the bundled mock upstream on 127.0.0.1. Built without
//! virtual keys (`--no-default-features --features layers` runs it too).

#[allow(dead_code)]
#[path = "../examples/bring_your_own_auth.rs"]
mod byo;
#[path = "../examples/mock_upstream.rs"]
mod mock_upstream;

use std::net::SocketAddr;

use serde_json::Value;

struct App {
    addr: SocketAddr,
    mock: mock_upstream::MockServer,
    client: reqwest::Client,
}

async fn start() -> App {
    let mock = mock_upstream::spawn(mock_upstream::MockConfig::default())
        .await
        .expect("mock upstream starts");
    let app = byo::app(&mock.base_url()).expect("the app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    App {
        addr,
        mock,
        client: reqwest::Client::new(),
    }
}

impl App {
    async fn chat(
        &self,
        token: Option<&str>,
        model: &str,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .client
            .post(format!("http://{}/v1/chat/completions", self.addr))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
            ));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        (status, body, headers)
    }

    async fn models(&self, token: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("http://{}/v1/models", self.addr))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

/// A refusal in the OpenAI shape with this status and reason, whose
/// message speaks neither of keys nor of anything the caller sent.
fn refusal(status: u16, body: &Value, reason: &str) -> String {
    assert_eq!(body["error"]["code"], status, "{body}");
    assert_eq!(body["error"]["metadata"]["reason"], reason, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.to_lowercase().contains("key"), "{message}");
    assert!(
        !body.to_string().contains("-session"),
        "a token leaks: {body}"
    );
    message
}

#[tokio::test]
async fn the_apps_own_identity_reaches_the_upstream_and_the_policy_layers() {
    let app = start().await;
    let (status, body, _) = app.chat(Some("alice-session"), "gpt-4o-mini").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    let seen = app.mock.log.last().expect("the upstream was called");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert!(
        !seen.headers.contains_key("authorization"),
        "the app's session token is not forwarded"
    );

    // The listing and the check use the same grants: alice's team has `small`.
    let (status, list) = app.models("alice-session").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini", "mock-small"]);
    let (_, bobs) = app.models("bob-session").await;
    assert_eq!(bobs["data"].as_array().unwrap().len(), byo::MODELS.len());
}

#[tokio::test]
async fn refusals_are_neutral_about_how_the_caller_authenticated() {
    let app = start().await;
    let calls = app.mock.log.len();

    // No credentials, and a session the app does not know: 401 `unauthenticated`.
    for token in [None, Some("mallory-session")] {
        let (status, body, _) = app.chat(token, "gpt-4o-mini").await;
        assert_eq!(status, 401, "{body}");
        refusal(401, &body, "unauthenticated");
    }
    let res = app
        .client
        .get(format!("http://{}/v1/models", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A model the team may not use: 403, advice in the app's words.
    let (status, body, _) = app.chat(Some("alice-session"), "gpt-4o").await;
    assert_eq!(status, 403, "{body}");
    let message = refusal(403, &body, "model_not_allowed");
    assert_eq!(
        message,
        "You may not use the model `gpt-4o`. GET /v1/models lists the models your team may use; ask #ml-platform for more."
    );

    // The trial team's one request per minute, then 429.
    let (status, body, _) = app.chat(Some("tina-session"), "gpt-4o-mini").await;
    assert_eq!(status, 200, "{body}");
    let (status, body, headers) = app.chat(Some("tina-session"), "gpt-4o-mini").await;
    assert_eq!(status, 429, "{body}");
    let message = refusal(429, &body, "rate_limited");
    assert!(message.contains("1 requests per minute"), "{message}");
    assert!(headers.contains_key("retry-after"));

    assert_eq!(
        app.mock.log.len(),
        calls + 1,
        "no refused request reached the upstream"
    );
}
