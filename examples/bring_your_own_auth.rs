//! Bring your own authentication: tollgate's policy layers keyed on your
//! application's own identity type, without virtual keys.
//!
//! ```text
//! cargo run --example mock_upstream &          # an upstream on 127.0.0.1:9000
//! cargo run --example bring_your_own_auth      # this app on 127.0.0.1:4000
//! curl -s localhost:4000/v1/chat/completions -H 'authorization: Bearer alice-session' \
//!   -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[]}'
//! curl -s localhost:4000/v1/models -H 'authorization: Bearer alice-session'
//! ```
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:4000`), `--upstream URL`
//! (default `http://127.0.0.1:9000/v1`). Built with the `layers` feature set
//! alone: no key store, no SQLite, no admin API, no TOML.
//!
//! The app already authenticates its callers: an axum middleware
//! ([`authenticate`]) looks the bearer token up in its session table and,
//! when it is valid, inserts a [`Caller`] (user and team) into the request's
//! extensions. tollgate takes it from there:
//!
//! - `identify::from_extension::<Caller>()` hands the caller to the inner
//!   layers by type, and refuses a request without one (401
//!   `unauthenticated`, in the route's error shape);
//! - `ModelAccess` takes each team's grants from a closure over `Caller`,
//!   and `ModelList` answers `GET /v1/models` from the same closure;
//! - `RateLimit` limits by team.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use tollgate::LlmRequest;
use tollgate::access::{AccessGroups, Grants, ModelAccessLayer, ModelList};
use tollgate::identify;
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::provider::{BuildError, HttpClient, Provider};
use tollgate::rate_limit::{Limits, RateLimitLayer};
use tollgate::read_request::ReadRequestLayer;
use tower::ServiceBuilder;

/// The application's own identity type.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who is calling.
    pub user: Arc<str>,
    /// The team that owns the usage.
    pub team: Arc<str>,
}

/// The application's sessions: token → caller (a database or an identity
/// provider in a real application).
pub type Sessions = HashMap<String, Caller>;

/// The demo's sessions.
pub fn sessions() -> Sessions {
    let caller = |user: &str, team: &str| Caller {
        user: user.into(),
        team: team.into(),
    };
    HashMap::from([
        ("alice-session".to_owned(), caller("alice", "search")),
        ("bob-session".to_owned(), caller("bob", "research")),
        ("tina-session".to_owned(), caller("tina", "trial")),
    ])
}

/// What each team may use and how fast, compiled once.
struct Teams {
    grants: HashMap<&'static str, Grants>,
}

impl Teams {
    fn new() -> Self {
        let groups = AccessGroups::new([("small", ["gpt-4o-mini", "mock-*"])]);
        Teams {
            grants: HashMap::from([
                ("search", Grants::compile(&["small"], &groups)),
                ("research", Grants::compile(&["*"], &groups)),
                ("trial", Grants::compile(&["gpt-4o-mini"], &groups)),
            ]),
        }
    }

    /// A team's grants; an unknown team may use nothing.
    fn grants(&self, team: &str) -> Grants {
        self.grants.get(team).cloned().unwrap_or_default()
    }

    /// A team's requests and tokens per minute.
    fn limits(team: &str) -> Limits {
        match team {
            "trial" => Limits::per_minute(1, 10_000),
            _ => Limits::per_minute(600, 1_000_000),
        }
    }
}

/// The application's own authentication middleware: a valid session puts
/// its [`Caller`] in the extensions; anything else passes on without one,
/// for tollgate to refuse in the route's error shape.
pub async fn authenticate(
    State(sessions): State<Arc<Sessions>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| sessions.get(token))
        .cloned();
    if let Some(caller) = caller {
        req.extensions_mut().insert(caller);
    }
    next.run(req).await
}

/// The model names `GET /v1/models` filters by the caller's grants.
pub const MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "mock-small"];

/// The application's routes, forwarding to the OpenAI-compatible upstream
/// at `upstream` (a base URL ending in `/v1`).
pub fn app(upstream: &str) -> Result<axum::Router, BuildError> {
    let provider = Provider::builder("upstream", upstream)?
        .client(HttpClient::builder().build()?)
        .build();
    let teams = Arc::new(Teams::new());
    // One source of grants for inference and for the listing.
    let grants = move |caller: &Caller| teams.grants(&caller.team);
    let advice = "GET /v1/models lists the models your team may use; ask #ml-platform for more.";

    let inference = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(identify::from_extension::<Caller>())
        .layer(ReadRequestLayer::new(4 << 20))
        .layer(ModelAccessLayer::with_grants(grants.clone()).advice(advice))
        .layer(RateLimitLayer::new(|req: &LlmRequest<Caller>| {
            let team = &req.body().identity().team;
            Some((team.clone(), Teams::limits(team)))
        }))
        .service(provider);
    let models = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(identify::from_extension::<Caller>())
        .service(ModelList::new(MODELS).grants(grants));

    Ok(axum::Router::new()
        .route_service("/v1/chat/completions", inference)
        .route_service("/v1/models", models)
        .layer(middleware::from_fn_with_state(
            Arc::new(sessions()),
            authenticate,
        )))
}

#[tokio::main]
async fn main() {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 4000).into();
    let mut upstream = "http://127.0.0.1:9000/v1".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(v)) => {
                listen = v.parse().unwrap_or_else(|e| {
                    eprintln!("bring_your_own_auth: --listen {v}: {e}");
                    std::process::exit(2)
                })
            }
            ("--upstream", Some(v)) => upstream = v,
            _ => {
                eprintln!("usage: bring_your_own_auth [--listen ADDR] [--upstream URL]");
                std::process::exit(2)
            }
        }
    }
    let app = app(&upstream).unwrap_or_else(|e| {
        eprintln!("bring_your_own_auth: {e}");
        std::process::exit(2)
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("bring_your_own_auth: {listen}: {e}");
            std::process::exit(2)
        });
    println!("bring_your_own_auth listening on http://{listen}/v1");
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("bring_your_own_auth: {e}");
        std::process::exit(1)
    }
}
