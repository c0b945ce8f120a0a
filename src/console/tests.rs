//! The console's login, sessions, CSRF and headers.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use serde_json::json;

use super::testing::{Browser, HOST, MASTER, csrf_of};
use super::{COOKIE, ConsoleOptions, Sessions, router};
use crate::keys::{Keyring, MemoryStore};

async fn admin() -> axum::Router {
    let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
    crate::admin::router(keyring, MASTER)
}

#[tokio::test]
async fn the_master_key_logs_in_to_an_http_only_strict_session() {
    let mut b = Browser::over(admin().await);
    let page = b.login(MASTER).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), Some("/ui/keys"));
    let set = page.headers[header::SET_COOKIE].to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "Secure on by default: {set}");
    assert!(!set.contains(MASTER), "the master key in the cookie: {set}");
    let id = b.cookie.clone().unwrap();
    assert_eq!(id.len(), 64, "256 random bits, hex");
    let keys = b.get("/ui/keys").await;
    assert_eq!(keys.status, StatusCode::OK, "{}", keys.body);
    assert!(!keys.body.contains(MASTER));
    // A second login is another session.
    let mut other = Browser {
        app: b.app.clone(),
        cookie: None,
        csrf: None,
    };
    other.login(MASTER).await;
    assert_ne!(other.cookie, b.cookie);
}

#[tokio::test]
async fn a_virtual_key_or_a_wrong_key_cannot_log_in() {
    let mut b = Browser::over(admin().await);
    let generated = b.admin("POST", "/key/generate", json!({})).await;
    let virtual_key = generated["key"].as_str().unwrap().to_owned();
    for key in [virtual_key.as_str(), "not-the-master", ""] {
        let page = b.login(key).await;
        assert_eq!(
            page.status,
            StatusCode::UNAUTHORIZED,
            "{key}: {}",
            page.body
        );
        assert!(page.headers.get(header::SET_COOKIE).is_none());
        assert!(page.body.contains("not the master key"), "{}", page.body);
        assert!(!page.body.contains(MASTER));
        if !key.is_empty() {
            assert!(!page.body.contains(key), "the key sent is echoed");
        }
        assert!(b.cookie.is_none());
    }
    // A virtual key sent as a bearer token does not open a page either.
    let req = Request::get("/ui/keys")
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, format!("Bearer {virtual_key}"))
        .body(Body::empty())
        .unwrap();
    let page = b.send(req).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), Some("/ui/login"));
    // Nor does the master key sent as a header: the console takes only its session.
    let req = Request::get("/ui/keys")
        .header(header::HOST, HOST)
        .header(header::AUTHORIZATION, format!("Bearer {MASTER}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(b.send(req).await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn without_a_session_a_get_goes_to_login_and_a_post_is_refused() {
    let b = Browser::over(admin().await);
    for path in [
        "/ui",
        "/ui/keys",
        "/ui/teams",
        "/ui/spend",
        "/ui/budgets",
        "/ui/deployments",
    ] {
        let page = b.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.location(), Some("/ui/login"), "{path}");
    }
    let page = b.post("/ui/logout", &[]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // A forged or unknown cookie is no session.
    let mut forged = Browser {
        app: b.app.clone(),
        cookie: Some("ab".repeat(32)),
        csrf: None,
    };
    assert_eq!(forged.get("/ui/keys").await.status, StatusCode::SEE_OTHER);
    forged.cookie = Some("<script>".into());
    assert_eq!(forged.get("/ui/keys").await.status, StatusCode::SEE_OTHER);
    // The login page itself is open.
    let login = b.get("/ui/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains(r#"type="password""#));
}

#[tokio::test]
async fn a_post_needs_the_sessions_token_from_this_site() {
    let b = Browser::logged_in().await;
    let token = b.csrf.clone().unwrap();
    // No token, a wrong token: refused, and the session is still there.
    let page = b
        .post_raw("/ui/logout", String::new(), Some("http://console.test"))
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    let page = b
        .post_raw(
            "/ui/logout",
            format!("csrf={}", "0".repeat(64)),
            Some("http://console.test"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // The right token from another site: refused.
    let page = b
        .post_raw(
            "/ui/logout",
            format!("csrf={token}"),
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.body.contains("another site"), "{}", page.body);
    let mut req = Request::post("/ui/logout")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .header(
            header::COOKIE,
            format!("{COOKIE}={}", b.cookie.clone().unwrap()),
        );
    req = req.header(header::ORIGIN, "http://console.test");
    let page = b
        .send(req.body(Body::from(format!("csrf={token}"))).unwrap())
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // `same-site` (another port or subdomain) is another origin: refused.
    let req = Request::post("/ui/logout")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-site")
        .header(
            header::COOKIE,
            format!("{COOKIE}={}", b.cookie.clone().unwrap()),
        );
    let page = b
        .send(req.body(Body::from(format!("csrf={token}"))).unwrap())
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(
        b.get("/ui/keys").await.status,
        StatusCode::OK,
        "still logged in"
    );
    // A browser's own form says `same-origin`, which passes whatever
    // `Origin` says (`null` under some referrer policies).
    let req = Request::post("/ui/logout")
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .header(header::ORIGIN, "null")
        .header(
            header::COOKIE,
            format!("{COOKIE}={}", b.cookie.clone().unwrap()),
        );
    let page = b
        .send(
            req.body(Body::from(format!("csrf={}", "f".repeat(64))))
                .unwrap(),
        )
        .await;
    assert_eq!(
        page.status,
        StatusCode::FORBIDDEN,
        "same-origin still needs the token"
    );
    assert!(
        page.body.contains("token"),
        "refused for its token, not its site: {}",
        page.body
    );
    // The login form from another site is refused too.
    let page = b
        .post_raw(
            "/ui/login",
            format!("master_key={MASTER}"),
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(page.headers.get(header::SET_COOKIE).is_none());
    // An oversized form is refused before it is read whole.
    let big = format!("csrf={token}&x={}", "a".repeat(super::MAX_FORM_BYTES));
    let page = b
        .post_raw("/ui/logout", big, Some("http://console.test"))
        .await;
    assert_eq!(page.status, StatusCode::PAYLOAD_TOO_LARGE);
    // The token, from this site (no `Origin` header also counts as this
    // site: same-origin GET-less clients): logs out.
    let page = b.post("/ui/logout", &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), Some("/ui/login"));
    assert!(
        page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        b.get("/ui/keys").await.status,
        StatusCode::SEE_OTHER,
        "logged out"
    );
}

#[tokio::test]
async fn every_answer_has_the_strict_headers() {
    let b = Browser::logged_in().await;
    for path in [
        "/ui/login",
        "/ui/keys",
        "/ui/static/console.css",
        "/ui/nope",
    ] {
        let page = b.get(path).await;
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}");
        assert_eq!(
            page.headers[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{path}"
        );
        assert_eq!(
            page.headers[header::REFERRER_POLICY],
            "same-origin",
            "{path}"
        );
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store", "{path}");
    }
    let keys = b.get("/ui/keys").await;
    assert!(!keys.body.contains("<script>"), "an inline script");
    assert!(!keys.body.contains(" style="), "an inline style");
}

#[tokio::test]
async fn a_session_ends_when_idle_and_when_the_master_key_changes() {
    let admin = admin().await;
    let sessions = Sessions::new();
    let idle = ConsoleOptions {
        idle: Duration::ZERO,
        ..ConsoleOptions::default()
    };
    let console = router(admin.clone(), MASTER, sessions.clone(), idle);
    let mut b = Browser::over(admin.clone());
    b.app = admin.clone().merge(console);
    b.login(MASTER).await;
    assert!(b.cookie.is_some());
    assert_eq!(
        b.get("/ui/keys").await.status,
        StatusCode::SEE_OTHER,
        "idle 0: ended"
    );
    assert!(sessions.is_empty(), "the ended session is dropped");

    // A session opened under one master key ends when the key changes (a
    // reload with a new key): the same `Sessions`, a console over the new key.
    let sessions = Sessions::new();
    let mut b = Browser::over(admin.clone());
    b.app = admin.clone().merge(router(
        admin.clone(),
        MASTER,
        sessions.clone(),
        ConsoleOptions::default(),
    ));
    b.login(MASTER).await;
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::OK);
    let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
    let rotated = crate::admin::router(keyring, "a-new-master-key");
    b.app = rotated.clone().merge(router(
        rotated,
        "a-new-master-key",
        sessions.clone(),
        ConsoleOptions::default(),
    ));
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::SEE_OTHER);
    assert_eq!(sessions.len(), 0);
}

#[tokio::test]
async fn the_secure_option_marks_the_cookie() {
    let admin = admin().await;
    let options = ConsoleOptions {
        secure_cookie: true,
        ..ConsoleOptions::default()
    };
    let mut b = Browser::over(admin.clone());
    b.app = admin
        .clone()
        .merge(router(admin, MASTER, Sessions::new(), options));
    let page = b.login(MASTER).await;
    assert!(
        page.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
}

#[tokio::test]
async fn logins_are_rate_limited_before_the_key_is_compared() {
    let admin = admin().await;
    let options = ConsoleOptions {
        // Three attempts, then one an hour: deterministic whatever the machine's speed.
        logins: governor::Quota::per_hour(std::num::NonZeroU32::new(1).unwrap())
            .allow_burst(std::num::NonZeroU32::new(3).unwrap()),
        ..ConsoleOptions::default()
    };
    let mut b = Browser::over(admin.clone());
    b.app = admin
        .clone()
        .merge(router(admin, MASTER, Sessions::new(), options));
    for _ in 0..3 {
        assert_eq!(b.login("guess").await.status, StatusCode::UNAUTHORIZED);
    }
    let page = b.login("guess").await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.body.contains("Too many logins"), "{}", page.body);
    // While the limit holds, the right key is refused too: guessing faster
    // than the limit cannot tell a right guess from a wrong one.
    let page = b.login(MASTER).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.headers.get(header::SET_COOKIE).is_none());
    assert!(b.cookie.is_none());
}

#[tokio::test]
async fn the_admin_apis_refusal_names_its_field() {
    let b = Browser::logged_in().await;
    let page = b.get("/ui/keys").await;
    assert!(csrf_of(&page.body).is_some());
    let console = super::Console {
        admin: admin().await,
        master_key: MASTER.into(),
        master: super::digest(MASTER),
        sessions: Sessions::new(),
        options: Default::default(),
        logins: std::sync::Arc::new(governor::RateLimiter::direct(
            ConsoleOptions::default().logins,
        )),
    };
    let e = console
        .admin_post("/key/generate", json!({"max_budget": -1}))
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert_eq!(e.param.as_deref(), Some("max_budget"), "{e:?}");
    assert_eq!(e.about("max_budget"), Some(e.message.as_str()));
    assert_eq!(e.general(&["max_budget"]), None);
    assert!(e.general(&["key_alias"]).is_some());
    let ok = console
        .admin_post("/key/generate", json!({}))
        .await
        .unwrap();
    assert!(ok["key"].as_str().is_some());
}

#[tokio::test]
async fn an_automatic_refresh_keeps_the_session_but_is_not_activity() {
    let admin = admin().await;
    let sessions = Sessions::new();
    let mut b = Browser::over(admin.clone());
    b.app = admin.clone().merge(router(
        admin,
        MASTER,
        sessions.clone(),
        ConsoleOptions::default(),
    ));
    b.login(MASTER).await;
    let old = std::time::Instant::now()
        .checked_sub(Duration::from_secs(60))
        .unwrap();
    sessions.lock().values_mut().for_each(|s| s.last = old);
    let last = || sessions.lock().values().next().unwrap().last;
    let req = Request::get("/ui/deployments/table")
        .header(header::HOST, HOST)
        .header(super::REFRESH_HEADER, "1")
        .header(
            header::COOKIE,
            format!("{COOKIE}={}", b.cookie.clone().unwrap()),
        )
        .body(Body::empty())
        .unwrap();
    let page = b.send(req).await;
    assert_ne!(page.status, StatusCode::SEE_OTHER, "still logged in");
    assert_eq!(last(), old, "a refresh is not activity");
    assert_eq!(b.get("/ui/keys").await.status, StatusCode::OK);
    assert!(last() > old, "a page the operator opens is");
}
