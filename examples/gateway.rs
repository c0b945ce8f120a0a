//! The tollgate reference gateway: the crate's layers wired together behind axum.
//!
//! ```text
//! cargo run --example gateway -- examples/demo.toml
//! ```
//!
//! Reads the TOML config named by the first argument (default
//! `examples/demo.toml`), refuses a bad one naming the file, field and problem,
//! and serves:
//!
//! - `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//!   `/v1/responses` through `NormalizeErrors` → (identify the caller) →
//!   `ReadRequest` → `RateLimit` (with `[rate_limits]`) → `FairQueue` (with
//!   `[fair_queue]`) → `Router` → provider;
//! - `GET /v1/models`, the configured model groups in OpenAI's list shape;
//! - `GET /health`.
//!
//! SIGINT/SIGTERM stop accepting, let in-flight requests (streams too) finish
//! for `server.shutdown_grace_ms`, then exit. Logs go through `tracing`
//! (`RUST_LOG=tollgate=debug` for more). For a demo with the bundled mock
//! upstream, run `cargo run --example demo`.
#![allow(dead_code)]

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use http::Request;
use tollgate::config::{Config, ConfigError, TenantBy};
use tollgate::fair_queue::{FairQueueLayer, Tenant};
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::rate_limit::{Limits, RateLimitLayer};
use tollgate::read_request::{Identified, ReadRequestLayer};
use tollgate::sanitize::Secrets;
use tollgate::{Error, LlmRequest, Reason};
use tower::ServiceBuilder;

/// Who is calling, until the virtual-keys layer authenticates callers: the
/// public id of the `tg-<id>-<secret>` key the client presents (never the
/// secret), or `anonymous`. Nothing here is verified: rate limits and fair
/// queuing work per presented id, which only trusted callers should rely on.
///
/// When `VirtualKeys` lands it replaces [`identify`] and hands the stack its
/// key type instead; the two closures in [`app`] then read the key's own
/// limits, team and weight rather than the config's tables.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key's public id.
    pub key_id: Arc<str>,
    /// The key's team (none until virtual keys carry one).
    pub team: Option<Arc<str>>,
}

/// The public id of a presented `tg-<id>-<secret>` key.
pub fn key_id(headers: &http::HeaderMap) -> Option<&str> {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))?;
    let (id, secret) = presented.trim().strip_prefix("tg-")?.split_once('-')?;
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '_';
    (!id.is_empty() && id.len() <= 64 && id.chars().all(plain) && !secret.is_empty()).then_some(id)
}

/// Attaches the [`Caller`] to the request, for `ReadRequest` to pass down.
pub fn identify<B>(req: Request<B>) -> Request<Identified<Caller, B>> {
    let key_id: Arc<str> = Arc::from(key_id(req.headers()).unwrap_or("anonymous"));
    req.map(|body| Identified {
        identity: Caller { key_id, team: None },
        body,
    })
}

/// The gateway's routes for a checked config.
pub fn app(config: &Config) -> Result<axum::Router, ConfigError> {
    let router = config.router()?;
    let models: Vec<serde_json::Value> = router
        .model_names()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate"}))
        .collect();
    let models = serde_json::json!({"object": "list", "data": models});
    // Rate-limit key: the caller's key id, with its limits from the config.
    let rate_limit = config.rate_limits.clone().map(|limits| {
        let default_max_output = limits.default_max_output_tokens;
        let limits = Arc::new(limits);
        RateLimitLayer::new(move |req: &LlmRequest<Caller>| {
            let id = &req.body().identity().key_id;
            let own = limits.limits_for(id);
            (own != Limits::UNLIMITED).then(|| (id.clone(), own))
        })
        .default_max_output_tokens(default_max_output)
    });
    // Tenant: the caller's key or team, with its weight from the config.
    let fair_queue = config.fair_queue.clone().map(|queue| {
        let settings = queue.settings();
        let queue = Arc::new(queue);
        FairQueueLayer::new(settings, move |req: &LlmRequest<Caller>| {
            let caller = req.body().identity();
            let id = match (queue.tenant, &caller.team) {
                (TenantBy::Team, Some(team)) => team.clone(),
                _ => caller.key_id.clone(),
            };
            let weight = queue.weight_for(&id);
            Tenant { id, weight }
        })
    });
    // The documented order; VirtualKeys, ModelAccess, Budget and Fallback
    // take their places here as they land.
    let inference = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .map_request(identify::<axum::body::Body>)
        .layer(ReadRequestLayer::new(config.server.max_body_bytes))
        .option_layer(rate_limit)
        .option_layer(fair_queue)
        .service(router);
    Ok(axum::Router::new()
        .route_service("/v1/chat/completions", inference.clone())
        .route_service("/v1/completions", inference.clone())
        .route_service("/v1/embeddings", inference.clone())
        .route_service("/v1/responses", inference)
        .route(
            "/v1/models",
            get(move || std::future::ready(Json(models.clone()))),
        )
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            Error::new(Reason::NotFound, "No such route; the API lives under /v1/.")
                .to_response(&Secrets::none())
        }))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests run on for at most `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "shutting down: no new connections, in-flight requests may finish"
        );
        let _ = stopping_tx.send(true);
    });
    tokio::select! {
        r = server.into_future() => r,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("grace period over: cutting the requests still in flight");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Loads `path`, binds and serves until a signal.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let app = app(&config)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    tracing::info!(listen = %listener.local_addr()?, config = %config.path().display(), models = config.groups.len(), "tollgate gateway listening");
    serve(
        listener,
        app,
        signal(),
        Duration::from_millis(config.server.shutdown_grace_ms),
    )
    .await?;
    Ok(())
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

#[tokio::main]
async fn main() {
    init_tracing();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/demo.toml".to_owned());
    let config = match Config::from_file(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: refusing to start: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(config).await {
        eprintln!("tollgate: {e}");
        std::process::exit(1);
    }
}
