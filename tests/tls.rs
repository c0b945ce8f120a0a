//! HTTPS upstreams: the provider talks TLS (rustls) to a loopback upstream
//! with a self-signed certificate, trusted through `upstream.ca_file`, and
//! negotiates HTTP/2 by ALPN.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

struct TlsMock {
    port: u16,
    cert_pem: String,
    /// ALPN protocols negotiated, one per connection.
    alpn: Arc<Mutex<Vec<String>>>,
    log: mock_upstream::RequestLog,
}

async fn tls_mock() -> TlsMock {
    tls_mock_offering(&[b"h2", b"http/1.1"]).await
}

/// A TLS mock whose ALPN offers only `protocols`.
async fn tls_mock_offering(protocols: &[&[u8]]) -> TlsMock {
    init();
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert_der = certified.cert.der().clone();
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .unwrap();
    server.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = mock_upstream::RequestLog::default();
    let app = mock_upstream::router(MockConfig::default(), log.clone());
    let alpn: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = alpn.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app, seen) = (acceptor.clone(), app.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let proto = tls
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned());
                seen.lock().unwrap().push(proto.unwrap_or_default());
                let svc = TowerToHyperService::new(app);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsMock {
        port,
        cert_pem: certified.cert.pem(),
        alpn,
        log,
    }
}

fn config(port: u16, ca_file: Option<&std::path::Path>) -> String {
    let ca = ca_file
        .map(|p| format!("ca_file = {:?}\n", p.display().to_string()))
        .unwrap_or_default();
    config_with(port, &ca)
}

/// The config with `upstream` as the `[upstream]` table's body.
fn config_with(port: u16, upstream: &str) -> String {
    let ca = upstream;
    format!(
        "[upstream]\n{ca}\n[[groups]]\nname = \"secure\"\n[[groups.deployments]]\nprovider = \"tls-mock\"\n\
         base_url = \"https://127.0.0.1:{port}/v1\"\napi_key_env = \"{{key_env}}\"\nmodel = \"mock-small\"\n"
    )
}

#[tokio::test]
async fn https_upstream_with_a_trusted_self_signed_certificate() {
    let tls = tls_mock().await;
    let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", tls.port));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.cert_pem).unwrap();
    let plain = mock().await; // only to fill the `{mock}` placeholder; unused
    let gw = gateway(&config(tls.port, Some(&ca)), &plain).await;

    let ans = post(&gw.url("/v1/chat/completions"), chat("secure", "")).await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(ans.json()["model"], "secure", "the answer names the group");
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("secure", r#""stream":true"#),
    )
    .await;
    assert_eq!(ans.status, 200);
    assert!(
        ans.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        ans.body
    );

    assert_eq!(tls.log.len(), 2);
    assert!(plain.log.is_empty());
    let alpn = tls.alpn.lock().unwrap().clone();
    assert!(
        !alpn.is_empty() && alpn.iter().all(|p| p == "h2"),
        "HTTP/2 by ALPN: {alpn:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn untrusted_certificate_is_a_clear_502() {
    let tls = tls_mock().await;
    let plain = mock().await;
    let gw = gateway(&config(tls.port, None), &plain).await;
    let ans = post(&gw.url("/v1/chat/completions"), chat("secure", "")).await;
    let v = ans.error(502, "upstream_unreachable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("TLS"), "{msg}");
    assert!(tls.log.is_empty());
}

/// `http2_prior_knowledge` is for `http://` upstreams only: an `https://`
/// upstream whose ALPN offers only HTTP/1.1 is still spoken to in HTTP/1.1.
#[tokio::test]
async fn prior_knowledge_leaves_https_to_alpn() {
    let tls = tls_mock_offering(&[b"http/1.1"]).await;
    let dir = std::env::temp_dir().join(format!("tollgate-tls-alpn-{}", tls.port));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &tls.cert_pem).unwrap();
    let plain = mock().await;
    let upstream = format!(
        "ca_file = {:?}\nhttp2_prior_knowledge = true\n",
        ca.display().to_string()
    );
    let gw = gateway(&config_with(tls.port, &upstream), &plain).await;
    let ans = post(
        &gw.url("/v1/chat/completions"),
        chat("secure", r#""stream":true"#),
    )
    .await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert!(
        ans.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        ans.body
    );
    assert_eq!(*tls.alpn.lock().unwrap(), ["http/1.1"]);
    assert_eq!(tls.log.last().unwrap().version, http::Version::HTTP_11);
    let _ = std::fs::remove_dir_all(&dir);
}
