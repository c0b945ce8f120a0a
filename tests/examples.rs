//! `examples/minimal.rs` and `examples/router_in_code.rs` through real
//! sockets, against the bundled mock upstream on 127.0.0.1.

#[allow(dead_code)]
#[path = "../examples/minimal.rs"]
mod minimal;
#[path = "../examples/mock_upstream.rs"]
mod mock_upstream;
#[allow(dead_code)]
#[path = "../examples/router_in_code.rs"]
mod router_in_code;

use std::net::SocketAddr;

use serde_json::Value;

async fn mock() -> mock_upstream::MockServer {
    mock_upstream::spawn(mock_upstream::MockConfig::default())
        .await
        .expect("mock upstream starts")
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn chat(addr: SocketAddr, body: &str) -> Answer {
    let res = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    Answer {
        status,
        headers,
        body,
    }
}

const HELLO: &str = r#"{"model":"MODEL","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test]
async fn minimal_forwards_and_refuses_in_the_contracts_shape() {
    let mock = mock().await;
    let addr =
        serve(minimal::app(&mock.base_url(), Some("sk-upstream-test-0000".into())).unwrap()).await;

    let ok = chat(addr, &HELLO.replace("MODEL", "mock-small")).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["object"], "chat.completion");
    let seen = mock.log.last().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(
        seen.headers["authorization"],
        "Bearer sk-upstream-test-0000"
    );

    let calls = mock.log.len();
    let bad = chat(addr, r#"{"model": "m", "messages": [}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], 400);
    assert_eq!(bad.body["error"]["metadata"]["reason"], "invalid_json");
    let none = chat(addr, r#"{"messages":[]}"#).await;
    assert_eq!(none.body["error"]["metadata"]["reason"], "missing_model");
    assert_eq!(mock.log.len(), calls, "refused before the upstream");

    // The upstream down: a 502 in the same shape, naming no secret.
    let down = serve(
        minimal::app(
            &format!("http://127.0.0.1:{}/v1", closed_port().await),
            Some("sk-upstream-test-0000".into()),
        )
        .unwrap(),
    )
    .await;
    let failed = chat(down, &HELLO.replace("MODEL", "mock-small")).await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert_eq!(
        failed.body["error"]["metadata"]["reason"],
        "upstream_unreachable"
    );
    assert!(!failed.body.to_string().contains("sk-upstream-test-0000"));
}

#[tokio::test]
async fn router_in_code_routes_mixed_deployments_and_falls_back() {
    let mock = mock().await;
    let upstreams = router_in_code::Upstreams {
        fast: mock.base_url(),
        big: mock.base_url(),
    };
    let addr = serve(router_in_code::app(&upstreams).unwrap()).await;

    // Both deployment types of `fast` serve (weights 3:1, so 8 requests reach both).
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let a = chat(addr, &HELLO.replace("MODEL", "fast")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["x-tollgate-model-group"], "fast");
        assert_eq!(a.body["model"], "fast");
        served.insert(
            a.headers["x-tollgate-deployment"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        ["primary", "secondary"]
    );
    let upstream_body: Value = serde_json::from_slice(&mock.log.last().unwrap().body).unwrap();
    assert_eq!(
        upstream_body["model"], "mock-small",
        "the deployment's model upstream"
    );

    // An unknown group: 404 `model_not_found`, permanent, in the contract's shape.
    let unknown = chat(addr, &HELLO.replace("MODEL", "gpt-9")).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert_eq!(
        unknown.body["error"]["metadata"]["reason"],
        "model_not_found"
    );
    assert_eq!(unknown.body["error"]["metadata"]["permanent"], true);

    // `fast` unreachable: its deployments fail, and `big` serves.
    let broken = router_in_code::Upstreams {
        fast: format!("http://127.0.0.1:{}/v1", closed_port().await),
        big: mock.base_url(),
    };
    let addr = serve(router_in_code::app(&broken).unwrap()).await;
    let a = chat(addr, &HELLO.replace("MODEL", "fast")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-tollgate-model-group"], "big");
    assert_eq!(a.headers["x-tollgate-deployment"], "big");
    let upstream_body: Value = serde_json::from_slice(&mock.log.last().unwrap().body).unwrap();
    assert_eq!(upstream_body["model"], "mock-large");
}
