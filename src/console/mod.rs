//! The operator's console: keys, teams, spend, budgets and deployments in
//! the browser, as an axum [`Router`](axum::Router) served under `/ui`.
//!
//! The console is a client of the admin API, in process: every page reads
//! and every form writes through the admin [`Router`](axum::Router) it is
//! given, with the master key, so it shows what the admin API shows and
//! every form error is the admin API's own message, next to the field its
//! `param` names. It reads no state of its own and adds nothing to the
//! inference path.
//!
//! Pages are rendered on the server (maud) and work without JavaScript;
//! two small scripts served by the console add a copy button and the live
//! refresh of the deployments page.
//!
//! ## Security
//!
//! - **Login** is a form that takes the master key (`POST /ui/login`),
//!   compared in constant time with the admin API's own check. A virtual
//!   key, or anything else, is refused. Login attempts are rate limited
//!   (5 a second, bursts of 10, over all clients), checked before the key:
//!   while the limit holds, the right key is refused too.
//! - **Sessions** live on the server ([`Sessions`]): the browser holds a
//!   random 256-bit id in the cookie `tollgate_console` (`HttpOnly`,
//!   `SameSite=Strict`, `Path=/ui`, and `Secure` when
//!   [`ConsoleOptions::secure_cookie`] says so). The master key is never
//!   put in a cookie, a URL or a page. A session ends at logout, after 30
//!   minutes without a request (the deployments page's automatic refreshes
//!   do not count), after 12 hours in any case, and when the master key
//!   changes.
//! - **Without a session**, a `GET` is sent to the login page (303) and
//!   anything else is refused (403).
//! - **Forms are CSRF-safe**: every `POST` carries the session's token in a
//!   hidden field (compared in constant time), and a request whose
//!   `Sec-Fetch-Site` is not `same-origin` (or, from a client that sends no
//!   `Sec-Fetch-Site`, whose `Origin` is not this host) is refused (403)
//!   before the token is looked at.
//! - **Every answer** has a strict `Content-Security-Policy` (no inline
//!   script or style, nothing from another origin, no framing), plus
//!   `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin` (no
//!   other site learns a console URL; `no-referrer` would make browsers send
//!   `Origin: null` on the console's own forms) and `Cache-Control: no-store`.
//!
//! ```
//! use tollgate::console::{self, ConsoleOptions, Sessions};
//! use tollgate::keys::{Keyring, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keyring = Keyring::builder(MemoryStore::new()).build().await.unwrap();
//! let master = "master-key-from-the-environment";
//! let admin = tollgate::admin::router(keyring, master);
//! // Sessions outlive the routes: keep one `Sessions` across config reloads.
//! let sessions = Sessions::new();
//! let app: axum::Router = admin
//!     .clone()
//!     .merge(console::router(admin, master, sessions, ConsoleOptions::default()));
//! # let _ = app; }
//! ```

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::ServiceExt;

mod budgets;
mod deployments;
mod keys;
mod spend;
mod teams;

/// Where the console is served.
pub const BASE: &str = "/ui";

/// The session cookie's name.
pub const COOKIE: &str = "tollgate_console";

/// The most live sessions kept; logging in beyond it ends the oldest.
const MAX_SESSIONS: usize = 1024;

/// Sent by a page's script on its automatic refreshes (which do not keep a
/// session from going idle).
pub(crate) const REFRESH_HEADER: &str = "x-tollgate-refresh";

/// The largest form body accepted (a key's metadata included).
const MAX_FORM_BYTES: usize = 64 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the console is served.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    /// Mark the session cookie `Secure` (send it over HTTPS only): set it
    /// when the gateway is reached over TLS. Off by default, so the console
    /// works on `http://127.0.0.1`.
    pub secure_cookie: bool,
    /// A session ends after this long without a request (30 minutes).
    pub idle: Duration,
    /// A session ends this long after its login, whatever it does (12 hours).
    pub lifetime: Duration,
    /// How many login attempts are taken, over all clients (5 a second,
    /// bursts of 10); beyond, every attempt gets a 429, the right key too.
    pub logins: governor::Quota,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            secure_cookie: false,
            idle: Duration::from_secs(30 * 60),
            lifetime: Duration::from_secs(12 * 3600),
            logins: governor::Quota::per_second(NonZeroU32::new(5).expect("5 > 0"))
                .allow_burst(NonZeroU32::new(10).expect("10 > 0")),
        }
    }
}

struct Session {
    /// The master key's digest when it logged in: a new master key ends it.
    master: [u8; 32],
    csrf: Arc<str>,
    created: Instant,
    last: Instant,
}

/// The console's sessions, kept on the server. Cheap to clone (shared);
/// keep one for the process so a configuration reload logs nobody out.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.lock().len())
            .finish()
    }
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Self {
        Sessions::default()
    }

    /// How many sessions are live (expired ones are dropped at the next login).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody is logged in.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for the holder of `master`: its cookie value.
    fn open(&self, master: [u8; 32], options: &ConsoleOptions) -> Result<String, getrandom::Error> {
        let id = random_hex()?;
        let csrf: Arc<str> = random_hex()?.into();
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, s| alive(s, now, options));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&id),
            Session {
                master,
                csrf,
                created: now,
                last: now,
            },
        );
        Ok(id)
    }

    /// The live session `id` names, touched (unless `touch` is false: a
    /// page's automatic refresh is no sign of a person); `None` when there
    /// is none or it has expired (then it is dropped).
    fn find(
        &self,
        id: &str,
        master: &[u8; 32],
        options: &ConsoleOptions,
        touch: bool,
    ) -> Option<Arc<str>> {
        let key = digest(id);
        let now = Instant::now();
        let mut sessions = self.lock();
        let s = sessions.get_mut(&key)?;
        if !alive(s, now, options) || !bool::from(s.master.ct_eq(master)) {
            sessions.remove(&key);
            return None;
        }
        if touch {
            s.last = now;
        }
        Some(s.csrf.clone())
    }

    fn close(&self, id: &str) {
        self.lock().remove(&digest(id));
    }
}

fn alive(s: &Session, now: Instant, options: &ConsoleOptions) -> bool {
    now.duration_since(s.last) < options.idle && now.duration_since(s.created) < options.lifetime
}

fn digest(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(text.as_bytes()));
    out
}

fn random_hex() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    Ok(out)
}

type LoginLimiter = governor::DefaultDirectRateLimiter;

/// The console's state, shared by its pages: the admin API to call, and
/// the sessions.
#[derive(Clone)]
pub(crate) struct Console {
    admin: axum::Router,
    /// Sent to the admin API in process (never to a browser).
    master_key: Arc<str>,
    master: [u8; 32],
    sessions: Sessions,
    options: Arc<ConsoleOptions>,
    logins: Arc<LoginLimiter>,
}

/// The session a page is served in: its CSRF token, for the page's forms.
#[derive(Clone, Debug)]
pub(crate) struct SessionInfo {
    csrf: Arc<str>,
}

impl SessionInfo {
    /// The hidden field every form of the page carries.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }
}

/// A refusal of the admin API, as the console shows it.
#[derive(Clone, Debug)]
pub(crate) struct AdminError {
    pub(crate) status: StatusCode,
    /// The admin API's message.
    pub(crate) message: String,
    /// The field it names (its `param`), to show the message next to.
    pub(crate) param: Option<String>,
}

impl AdminError {
    /// The message when it is about `field`.
    pub(crate) fn about(&self, field: &str) -> Option<&str> {
        (self.param.as_deref() == Some(field)).then_some(self.message.as_str())
    }

    /// The message for the top of the form: when it names no field of
    /// `fields` (which show it next to themselves).
    pub(crate) fn general(&self, fields: &[&str]) -> Option<&str> {
        match &self.param {
            Some(p) if fields.contains(&p.as_str()) => None,
            _ => Some(&self.message),
        }
    }
}

impl Console {
    /// `GET` an admin API route (`path_and_query`, e.g. `/key/list?page=1`).
    pub(crate) async fn admin_get(&self, path_and_query: &str) -> Result<Value, AdminError> {
        self.admin_call(Method::GET, path_and_query, None).await
    }

    /// `POST` `body` to an admin API route.
    pub(crate) async fn admin_post(&self, path: &str, body: Value) -> Result<Value, AdminError> {
        self.admin_call(Method::POST, path, Some(body)).await
    }

    async fn admin_call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.master_key));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = match body {
            Some(v) => Body::from(serde_json::to_vec(&v).unwrap_or_default()),
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| AdminError {
            status: StatusCode::BAD_REQUEST,
            message: format!("not a valid request: {e}"),
            param: None,
        })?;
        let res = match self.admin.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .map_err(|e| AdminError {
                status: StatusCode::BAD_GATEWAY,
                message: format!("the admin API's answer could not be read: {e}"),
                param: None,
            })?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let error = &v["error"];
        let message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the admin API answered {status}"));
        let param = error["param"]
            .as_str()
            .or_else(|| error["metadata"]["param"].as_str())
            .map(str::to_owned);
        Err(AdminError {
            status,
            message,
            param,
        })
    }
}

/// The console over `admin` (the admin API's router, e.g.
/// [`admin::router_with_models`](crate::admin::router_with_models)), for the
/// holder of `master_key`, serving its pages under [`BASE`] (merge it into
/// the application's router).
pub fn router(
    admin: axum::Router,
    master_key: &str,
    sessions: Sessions,
    options: ConsoleOptions,
) -> axum::Router {
    let console = Console {
        admin,
        master_key: master_key.into(),
        master: digest(master_key),
        sessions,
        logins: Arc::new(governor::RateLimiter::direct(options.logins)),
        options: Arc::new(options),
    };
    let pages = axum::Router::new()
        .route("/", get(|| async { Redirect::to("/ui/keys") }))
        .route("/logout", axum::routing::post(logout))
        .merge(keys::routes())
        .merge(teams::routes())
        .merge(spend::routes())
        .merge(budgets::routes())
        .merge(deployments::routes())
        .route_layer(middleware::from_fn_with_state(console.clone(), guard));
    let open = axum::Router::new()
        .route("/login", get(login_page).post(login))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .route_layer(middleware::from_fn(same_origin));
    let ui = pages
        .merge(open)
        .fallback(not_found)
        .with_state(console)
        .layer(middleware::from_fn(headers));
    axum::Router::new().nest(BASE, ui)
}

/// The security headers on every answer of the console.
async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Refuses a state-changing request sent from another site. A browser says
/// where a request comes from in `Sec-Fetch-Site`: only `same-origin`
/// passes. Without it (an older browser, a script), an `Origin` header, if
/// any, must be this host.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() != b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    let origin = origin.as_bytes();
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    match (authority, host) {
        (Some(a), Some(h)) => a != h,
        _ => true,
    }
}

fn forbidden(why: &str) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Refused — tollgate" } link rel="stylesheet" href="/ui/static/console.css"; }
            body { main.narrow { h1 { "Refused" } p { (why) } p { a href="/ui/login" { "Log in" } } } }
        }
    };
    (StatusCode::FORBIDDEN, page).into_response()
}

/// The same-origin check on the pages without a session (the login form).
async fn same_origin(req: Request, next: Next) -> Response {
    if req.method() != Method::GET && cross_site(req.headers()) {
        return forbidden("This form was sent from another site.");
    }
    next.run(req).await
}

/// Lets through a request with a live session (giving the page its
/// [`SessionInfo`]) and, for a `POST`, the session's CSRF token from this
/// site; sends anything else to the login page or refuses it.
async fn guard(State(console): State<Console>, req: Request, next: Next) -> Response {
    // A page's own automatic refresh (the deployments page's script says
    // so) keeps the session, but does not count as activity: a tab left
    // open still ends after the idle time.
    let touch = !req.headers().contains_key(REFRESH_HEADER);
    let csrf = cookie(req.headers()).and_then(|id| {
        console
            .sessions
            .find(id, &console.master, &console.options, touch)
    });
    let Some(csrf) = csrf else {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return Redirect::to("/ui/login").into_response();
        }
        return forbidden("You are not logged in (or your session has ended).");
    };
    let req = if req.method() == Method::GET || req.method() == Method::HEAD {
        req
    } else {
        if cross_site(req.headers()) {
            return forbidden("This form was sent from another site.");
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "This form is too large.").into_response();
        };
        let sent = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
            return forbidden(
                "This form's token is not this session's: reload the page and send it again.",
            );
        }
        Request::from_parts(parts, Body::from(bytes))
    };
    let mut req = req;
    req.extensions_mut().insert(SessionInfo { csrf });
    next.run(req).await
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    master_key: String,
}

async fn login_page(State(console): State<Console>, headers: HeaderMap) -> Response {
    if cookie(&headers)
        .and_then(|id| {
            console
                .sessions
                .find(id, &console.master, &console.options, true)
        })
        .is_some()
    {
        return Redirect::to("/ui/keys").into_response();
    }
    login_form(None, StatusCode::OK)
}

fn login_form(error: Option<&str>, status: StatusCode) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in — tollgate" }
                link rel="stylesheet" href="/ui/static/console.css";
            }
            body {
                main.narrow {
                    h1 { "tollgate console" }
                    form method="post" action="/ui/login" {
                        label for="master_key" { "Master key" }
                        input id="master_key" name="master_key" type="password" autocomplete="current-password" required autofocus;
                        @if let Some(e) = error { p.error role="alert" { (e) } }
                        button type="submit" { "Log in" }
                    }
                    p.hint { "The gateway's master key (the admin API's). A client's virtual key cannot open the console." }
                }
            }
        }
    };
    (status, page).into_response()
}

async fn login(
    State(console): State<Console>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // Every attempt counts, and the limit is checked before the key is:
    // while it holds, the right key is refused too, so guessing faster
    // than the limit learns nothing.
    if console.logins.check().is_err() {
        return login_form(
            Some("Too many logins: wait a few seconds and try again."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    if !bool::from(digest(form.master_key.trim()).ct_eq(&console.master)) {
        tracing::info!("console login refused: not the master key");
        return login_form(
            Some("This is not the master key; the console needs the master key."),
            StatusCode::UNAUTHORIZED,
        );
    }
    let id = match console.sessions.open(console.master, &console.options) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "console login: no randomness for a session id");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "No session could be opened.",
            )
                .into_response();
        }
    };
    let secure = if console.options.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        console.options.lifetime.as_secs()
    );
    let mut res = Redirect::to("/ui/keys").into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    res
}

async fn logout(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        console.sessions.close(id);
    }
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tollgate_console=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    res
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "No such page in the console.").into_response()
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("console.js"),
    )
        .into_response()
}

/// The console's pages, for the navigation bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nav {
    Keys,
    Teams,
    Spend,
    Logs,
    Budgets,
    Deployments,
}

const NAV: [(Nav, &str, &str); 6] = [
    (Nav::Keys, "/ui/keys", "Keys"),
    (Nav::Teams, "/ui/teams", "Teams"),
    (Nav::Spend, "/ui/spend", "Spend"),
    (Nav::Logs, "/ui/logs", "Request log"),
    (Nav::Budgets, "/ui/budgets", "Budgets"),
    (Nav::Deployments, "/ui/deployments", "Deployments"),
];

/// A whole page: the navigation bar (`active` marked), the logout form,
/// `title` and `body`. `head` is anything more for the `<head>` (a page's
/// own script, as `<script src=… defer>`; never an inline one).
pub(crate) fn page(
    title: &str,
    active: Nav,
    session: &SessionInfo,
    head: Markup,
    body: Markup,
) -> Response {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — tollgate" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
                (head)
            }
            body {
                header.top {
                    a.brand href="/ui/keys" { "tollgate" }
                    nav {
                        @for (nav, href, label) in NAV {
                            @if nav == active {
                                a.active href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                    form.logout method="post" action="/ui/logout" {
                        (session.csrf_field())
                        button type="submit" { "Log out" }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    };
    page.into_response()
}

/// A message next to a field, when the admin API's refusal names it.
pub(crate) fn field_error(error: Option<&AdminError>, field: &str) -> Markup {
    html! {
        @if let Some(message) = error.and_then(|e| e.about(field)) {
            span.error role="alert" data-field=(field) { (message) }
        }
    }
}

/// The admin API's refusal at the top of a form, when it names none of
/// `fields` (those show it next to themselves).
pub(crate) fn form_error(error: Option<&AdminError>, fields: &[&str]) -> Markup {
    html! {
        @if let Some(message) = error.and_then(|e| e.general(fields)) {
            p.error role="alert" { (message) }
        }
    }
}

/// A refusal when a form's `confirm` box was not ticked (`why`: what
/// cannot be undone), for the field `confirm`.
pub(crate) fn unconfirmed(form: &HashMap<String, String>, why: &str) -> Option<AdminError> {
    form.get("confirm")
        .is_none_or(|c| c.is_empty())
        .then(|| AdminError {
            status: StatusCode::BAD_REQUEST,
            message: format!("Tick the box to confirm: {why}"),
            param: Some("confirm".into()),
        })
}

/// Back to `page` (a key's or a team's) after a form did `what` (a word
/// from the page's fixed list of notices: never data).
pub(crate) fn done(page: &str, what: &str) -> Response {
    Redirect::to(&format!("{page}?done={what}")).into_response()
}

/// A USD amount as the console writes it.
pub(crate) fn usd(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("${v:.6}")
    } else {
        format!("${v:.2}")
    }
}

/// Percent-encodes `s` for a URL's query.
pub(crate) fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Markup kept as it is: only for markup the console itself wrote (an SVG
/// chart from the plotting crate), never for data.
pub(crate) fn trusted(markup: String) -> Markup {
    PreEscaped(markup)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
