//! A logged-in browser for the console's unit tests: requests go through
//! the router in process, with the session cookie, the CSRF token and this
//! site's `Origin`, as a browser would send them.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use tower::ServiceExt;

use super::{COOKIE, ConsoleOptions, Sessions, router};
use crate::keys::{Keyring, MemoryStore};

pub(crate) const MASTER: &str = "console-master-0123456789";
pub(crate) const HOST: &str = "console.test";

/// What a page answered.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Page {
    /// The redirect's target.
    pub(crate) fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }
}

/// The console and the admin API it calls, as one app, and a session in it.
pub(crate) struct Browser {
    pub(crate) app: axum::Router,
    pub(crate) cookie: Option<String>,
    pub(crate) csrf: Option<String>,
}

impl Browser {
    /// The admin API over `admin` merged with the console over it, not
    /// logged in.
    pub(crate) fn over(admin: axum::Router) -> Browser {
        let console = router(
            admin.clone(),
            MASTER,
            Sessions::new(),
            ConsoleOptions::default(),
        );
        Browser {
            app: admin.merge(console),
            cookie: None,
            csrf: None,
        }
    }

    /// The admin API over an empty in-memory keyring (master key
    /// [`MASTER`]), with the console, logged in.
    pub(crate) async fn logged_in() -> Browser {
        let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
        Browser::logged_in_over(crate::admin::router(keyring, MASTER)).await
    }

    /// [`Browser::over`] `admin`, logged in with [`MASTER`].
    pub(crate) async fn logged_in_over(admin: axum::Router) -> Browser {
        let mut b = Browser::over(admin);
        let page = b.login(MASTER).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "login: {}", page.body);
        assert!(b.cookie.is_some(), "login set no cookie");
        let keys = b.get("/ui/keys").await;
        b.csrf = csrf_of(&keys.body);
        assert!(b.csrf.is_some(), "no CSRF token on the keys page");
        b
    }

    /// Sends the login form with `key`, keeping the cookie it sets.
    pub(crate) async fn login(&mut self, key: &str) -> Page {
        let body = format!("master_key={}", super::query_value(key));
        let page = self
            .send(
                Request::post("/ui/login")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::HOST, HOST)
                    .header(header::ORIGIN, format!("http://{HOST}"))
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await;
        if let Some(set) = page
            .headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
        {
            let value = set
                .split(';')
                .next()
                .and_then(|kv| kv.strip_prefix(&format!("{COOKIE}=")))
                .unwrap_or_default();
            self.cookie = (!value.is_empty()).then(|| value.to_owned());
        }
        page
    }

    /// `GET path` in the session.
    pub(crate) async fn get(&self, path: &str) -> Page {
        let mut req = Request::get(path).header(header::HOST, HOST);
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, format!("{COOKIE}={c}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    /// Posts the form `fields` to `path` in the session, with its CSRF
    /// token, from this site.
    pub(crate) async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut form = form_urlencoded::Serializer::new(String::new());
        if let Some(t) = &self.csrf {
            form.append_pair("csrf", t);
        }
        for (k, v) in fields {
            form.append_pair(k, v);
        }
        self.post_raw(path, form.finish(), Some(&format!("http://{HOST}")))
            .await
    }

    /// Posts `body` as it is, with `origin` (none when `None`).
    pub(crate) async fn post_raw(&self, path: &str, body: String, origin: Option<&str>) -> Page {
        let mut req = Request::post(path)
            .header(header::HOST, HOST)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        if let Some(c) = &self.cookie {
            req = req.header(header::COOKIE, format!("{COOKIE}={c}"));
        }
        self.send(req.body(Body::from(body)).unwrap()).await
    }

    /// Calls the admin API directly with the master key (to set up or
    /// check what a page did).
    pub(crate) async fn admin(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {MASTER}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(if method == "GET" {
                Body::empty()
            } else {
                Body::from(body.to_string())
            })
            .unwrap();
        let page = self.send(req).await;
        assert!(
            page.status.is_success(),
            "{method} {path}: {} {}",
            page.status,
            page.body
        );
        serde_json::from_str(&page.body).unwrap()
    }

    pub(crate) async fn send(&self, req: Request) -> Page {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
            .await
            .unwrap();
        Page {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }
}

/// The CSRF token in a page's forms.
pub(crate) fn csrf_of(body: &str) -> Option<String> {
    let at = body.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    let end = body[at..].find('"')?;
    Some(body[at..at + end].to_owned())
}
