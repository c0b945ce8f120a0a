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
//!   `/v1/responses` (OpenAI) and `/v1/messages` (Anthropic) through `Overhead` → `NormalizeErrors` → `VirtualKeys` →
//!   `ReadRequest` → `RequestMetrics` → `ModelAccess` → `RateLimit` → `Budget` →
//!   `FairQueue` (with `[fair_queue]`) → `Fallback` → `Router` (retries,
//!   cooldowns) → provider;
//! - `POST /v1/messages/count_tokens` through `NormalizeErrors` →
//!   `VirtualKeys` → `ReadRequest` → `ModelAccess` → `Fallback` → `Router`:
//!   free, as upstream, so neither rate-limited nor charged;
//! - `GET /v1/models` through `NormalizeErrors` → `VirtualKeys` →
//!   `ModelList`: the model groups the key may use, in OpenAI's list shape;
//! - the admin API (`/key/*`, `/team/*`, `/spend/logs`) when `keys.master_key_env` is set,
//!   and the operator's console over it under `/ui` (feature `console`, on by
//!   default; log in with the master key: `docs/console.md`);
//!   keys live where `keys.url` says (`sqlite://…` by default, `memory`, or
//!   `postgres://…` for several replicas, which then follow each other's
//!   changes through the database's change feed: see `Config::keyring`);
//! - `GET /metrics`: Prometheus text format, when `server.metrics` is on
//!   (the default); see `tollgate::metrics` for the names and labels;
//! - with `[state].url` (feature `redis`), budgets, rate limits and
//!   cooldowns shared with every replica on the same Redis;
//! - `GET /health`.
//!
//! Every response carries `x-request-id` (the client's, or a new UUID) and,
//! on inference routes, `x-tollgate-overhead-ms` (the gateway's own time).
//!
//! `RateLimit` and `Budget` are always in the stack, so a key's or team's
//! own `rpm_limit`, `tpm_limit` and `max_budget` are enforced whatever
//! sections the config has (`[rate_limits]` and `[budgets]` only add
//! defaults and a global budget). A limit this stack cannot enforce (a
//! fair-queuing `weight` without `[fair_queue]`) is refused where it is set:
//! by the admin API with a 400 naming the section, at start for a static key.
//!
//! Every request that reaches `Budget` leaves a spend
//! record (`[spend]`), written in the background into the key store's
//! database (the same SQLite file); at start, the budgets' spend in the
//! current periods is rebuilt from those records, so a restart forgets no
//! spend.
//!
//! SIGHUP reloads the config file without a restart ([`Reloader`]): model
//! groups, deployments, prices, access groups, fallbacks, default limits,
//! fair-queue capacities and the rest that `Config::reload_check` lets
//! change. A bad file, or one that changes a setting only a restart can
//! (`server.listen`, the key store, `[state]`, …), is refused whole, logged
//! at error level naming the file and the field; the running config stays.
//! Requests and streams in flight finish on the config they started with;
//! budgets' counters, rate-limit buckets and cooldowns of the keys and
//! deployments that remain carry over (docs/configuration.md, "Reloading").
//!
//! SIGINT/SIGTERM stop accepting, let in-flight requests (streams too) finish
//! for `server.shutdown_grace_ms`, write the queued spend records, then exit. Logs go through `tracing`
//! (`RUST_LOG=tollgate=debug` for more): each request's span carries its
//! `request_id`, the key's public `key_id` and `team`, the `model`, and the
//! fair queue's `queue_wait_ms`; nested spans name the `model_group` tried
//! and each upstream `attempt` with its `deployment`. For a demo with the bundled mock
//! upstream, run `cargo run --example demo`.
#![allow(dead_code)]

use std::future::{Future, IntoFuture};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use futures_util::future::Either;
use std::convert::Infallible;
use std::task::{Context, Poll};
use tollgate::access::ModelList;
use tollgate::admin::SpendView;
use tollgate::budget::{BudgetLayer, BudgetsOf, Ledger, Limit, Scope, SpendWriter, Spender};
use tollgate::config::{Config, ConfigError, GroupChanges, RateLimits, TenantBy};
use tollgate::fair_queue::{FairQueueLayer, Tenant, TenantOf};
use tollgate::keys::VirtualKeysLayer;
use tollgate::keys::{Key, Keyring};
use tollgate::normalize::NormalizeErrorsLayer;
use tollgate::rate_limit::{Limits, RateLimitKey, RateLimitLayer};
use tollgate::read_request::Identified;
use tollgate::reload::{Reload, ReloadHandle, WeakReload};
use tollgate::router::{Clock, SystemClock};
use tollgate::{Error, LlmRequest, Reason};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The inference stack, outermost first, over `$router` (the `Router` of
/// the config's groups): one definition for the gateway and for
/// `benches/stack.rs`, which measures it over an instant provider.
macro_rules! inference_stack {
    ($auth:expr, $max_body:expr, $telemetry:expr, $rate_limit:expr, $budget:expr, $fair_queue:expr, $fallback:expr, $router:expr) => {{
        let router = $router;
        tower::ServiceBuilder::new()
            .layer(tollgate::overhead::OverheadLayer::new())
            .layer(tollgate::normalize::NormalizeErrorsLayer::new())
            .layer($auth)
            // `record_key` must be in scope where the macro is used.
            .map_request(record_key)
            .layer(tollgate::read_request::ReadRequestLayer::new($max_body))
            // `[telemetry]`: one GenAI span per request (absent: not in the stack).
            .option_layer($telemetry)
            .layer(tollgate::metrics::RequestMetricsLayer::new(
                router.model_names(),
            ))
            .layer(tollgate::access::ModelAccessLayer::new().advice(
                "GET /v1/models lists the models this key may use; ask your admin for access.",
            ))
            .layer($rate_limit)
            .layer($budget)
            .option_layer($fair_queue)
            .layer($fallback)
            .service(router)
    }};
}

/// How `ModelAccess`'s refusals end here: this gateway serves `GET /v1/models`
/// (the same words as in `inference_stack!`).
const MODELS_ADVICE: &str =
    "GET /v1/models lists the models this key may use; ask your admin for access.";

/// The 404 for a path the gateway does not serve: which surfaces exist.
const NO_SUCH_ROUTE: &str = "No such route. This gateway serves inference under /v1/ \
     (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages, \
     /v1/models), the admin API with the master key (/key/*, /team/*, /spend/logs, \
     /global/spend, /model/info, /deployments), health (/health, /health/liveliness, /health/readiness) \
     and metrics (/metrics).";

/// The 404 for an unknown route, in the caller's family's shape: an
/// Anthropic client (an `anthropic-version` header, or a path under
/// `/v1/messages`) gets Anthropic's error object, any other OpenAI's.
async fn no_such_route(req: http::Request<axum::body::Body>) -> http::Response<tollgate::Body> {
    use tollgate::family::Family;
    let anthropic = req.headers().contains_key("anthropic-version")
        || req.uri().path().contains("/v1/messages/");
    let family = if anthropic {
        Family::Anthropic
    } else {
        Family::from_path(req.uri().path())
    };
    let e = Error::new(Reason::NotFound, NO_SUCH_ROUTE);
    let body = e.to_json_in(family, &tollgate::sanitize::Secrets::none());
    let mut res = http::Response::new(tollgate::Body::full(body));
    *res.status_mut() = e.status();
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

/// The gateway's routes for a checked config. Opens the key store and loads
/// every key into memory first.
pub async fn app(config: &Config) -> Result<axum::Router, ConfigError> {
    app_with_clock(config, Arc::new(SystemClock)).await
}

/// The gateway's routes, with cooldowns measured on `clock`.
pub async fn app_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<axum::Router, ConfigError> {
    app_with_ledger(config, clock, config.ledger()).await
}

/// Where budgets live: in this process, or (with `[state].url`) in Redis.
#[cfg(feature = "redis")]
pub type Store = tollgate::budget::EitherStore<Ledger, tollgate::state::RedisLedger>;
/// Where budgets live: in this process.
#[cfg(not(feature = "redis"))]
pub type Store = Ledger;

/// The gateway's routes, with budgets kept in `ledger` (the caller may keep
/// a clone to read spend; with `[state].url` they are kept in Redis, in
/// `ledger`'s time zone).
pub async fn app_with_ledger(
    config: &Config,
    clock: Arc<dyn Clock>,
    ledger: Ledger,
) -> Result<axum::Router, ConfigError> {
    Ok(axum::Router::new().fallback_service(build(config, clock, ledger).await?.app))
}

/// The gateway, built: its routes, the spend writer and span exporter
/// that must be flushed when it stops ([`serve_and_flush`]), and its reloader.
pub struct Built {
    /// The gateway as one service: request ids and spans around the
    /// routes in place ([`serve`] serves it; [`app_with_ledger`] hands it
    /// out as an axum router).
    pub app: App,
    /// The spend records' writer, when spend records are on.
    pub spend: Option<SpendWriter>,
    /// The OTLP span exporter, with `[telemetry]`.
    pub telemetry: Option<Telemetry>,
    /// Applies a new configuration to `router` while it serves.
    pub reloader: Reloader,
}

/// The span exporter of `[telemetry]` (feature `otel`), dropped off the
/// runtime's threads (an aborted server must not hang in the SDK's shutdown).
#[cfg(feature = "otel")]
pub type Telemetry =
    tollgate::telemetry::otlp::DropOffRuntime<opentelemetry_sdk::trace::SdkTracerProvider>;
/// No span exporter: this build has no `otel` feature.
#[cfg(not(feature = "otel"))]
pub type Telemetry = std::convert::Infallible;

/// The span layer of the reference gateway (feature `otel`).
#[cfg(feature = "otel")]
pub type SpanLayer = tollgate::telemetry::GenAiSpanLayer<
    tollgate::telemetry::otlp::DropOffRuntime<opentelemetry_sdk::trace::SdkTracer>,
    tollgate::telemetry::VirtualKeyCaller,
>;

/// The span layer of the inference stack: with `[telemetry]`, a
/// `GenAiSpanLayer` over an OTLP tracer, and the provider to flush at the end.
#[cfg(feature = "otel")]
pub fn telemetry(config: &Config) -> Result<(Option<SpanLayer>, Option<Telemetry>), ConfigError> {
    use opentelemetry::trace::TracerProvider as _;
    let Some(provider) = config.otlp_provider()? else {
        return Ok((None, None));
    };
    use tollgate::telemetry::otlp::DropOffRuntime;
    let layer = config.telemetry_layer(DropOffRuntime::new(provider.tracer("tollgate")));
    tracing::info!(layer = ?layer, "OpenTelemetry span export on");
    Ok((Some(layer), Some(DropOffRuntime::new(provider))))
}

/// No span layer: this build has no `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn telemetry(
    _config: &Config,
) -> Result<(Option<tower::layer::util::Identity>, Option<Telemetry>), ConfigError> {
    Ok((None, None))
}

/// Builds the gateway with budgets kept in `ledger`. With spend records
/// on, `ledger`'s spend is first rebuilt from them.
pub async fn build(
    config: &Config,
    clock: Arc<dyn Clock>,
    ledger: Ledger,
) -> Result<Built, ConfigError> {
    let spend = config.spend(&ledger).await?;
    let restore_into = ledger.clone();
    // Before any layer is built: hot-path metric handles bind to the
    // recorder installed when they are registered.
    let metrics = if config.server.metrics {
        prometheus()
    } else {
        None
    };
    #[cfg(feature = "redis")]
    let (router, store, rate_limit) = {
        let state = config.redis_state()?;
        let cooldowns = state.clone().map(|s| {
            tollgate::state::RedisCooldowns::new(s, config.deployment_count(), clock.clone())
        });
        if let (Some(c), Some(s)) = (&cooldowns, &state) {
            // Start with what the other replicas have cooling (without
            // waiting on a Redis that is down: it is loaded when it is back).
            let _ = tokio::time::timeout(s.timeout(), c.synced()).await;
        }
        let store: Option<Arc<dyn tollgate::router::CooldownStore>> =
            cooldowns.map(|c| Arc::new(c) as _);
        let router = config.router_with_cooldowns(clock.clone(), store)?;
        let store = match &state {
            Some(s) => tollgate::budget::EitherStore::Right(
                tollgate::state::RedisLedger::new(s.clone(), ledger.time_zone().clone())
                    .hold(Duration::from_millis(config.state.reservation_ttl_ms)),
            ),
            None => tollgate::budget::EitherStore::Left(ledger),
        };
        let limiter = state.map(|s| {
            tollgate::state::RedisRateLimiter::new(s)
                .on_unavailable(config.state.on_unavailable_rate_limit)
        });
        (router, store, rate_limit(config, limiter))
    };
    #[cfg(not(feature = "redis"))]
    let (router, store, rate_limit) = (
        config.router_with_clock(clock.clone())?,
        ledger,
        rate_limit(config),
    );
    let writer = spend.as_ref().map(|(_, w)| w.clone());
    let keys = config.key_backend().await?;
    let keyring = config.keyring_on(&keys).await?;
    if let Some((store, _)) = &spend {
        // Fixed-window budgets each start at their own instant.
        config
            .restore_windows(&restore_into, &**store, &keyring)
            .await?;
    }
    let (spans, telemetry) = telemetry(config)?;
    let kept = Kept {
        clock,
        store,
        writer: writer.clone(),
        spend_store: spend.map(|(store, _)| store),
        keys,
        spans,
        metrics,
        admin_writes: Arc::new(tokio::sync::RwLock::new(())),
        in_place: Arc::new(OnceLock::new()),
        #[cfg(feature = "console")]
        sessions: tollgate::console::Sessions::new(),
    };
    let generation = Generation {
        config: config.clone(),
        router,
        rate_limit,
    };
    let (in_place, swap) = Reload::new(routes(&generation, &kept, keyring, 0)?);
    let _ = kept.in_place.set(in_place.downgrade());
    // Every request is served by the routes in place when it arrives (until
    // its response body ends); a reload swaps them.
    let app = ServiceBuilder::new()
        .map_response(axum::response::IntoResponse::into_response)
        // Outermost: every request gets an `x-request-id` (the client's, or a
        // new UUID), echoed in the response and named in every log line of
        // its span (with the path; never a header, so never a key). The
        // layers fill in the empty fields: the key's public id and team,
        // the model, the fair queue's wait.
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!(
                    "request",
                    request_id = %id,
                    method = %req.method(),
                    path = %req.uri().path(),
                    key_id = tracing::field::Empty,
                    team = tracing::field::Empty,
                    model = tracing::field::Empty,
                    queue_wait_ms = tracing::field::Empty,
                )
            }),
        )
        .service(in_place);
    Ok(Built {
        app: BoxCloneSyncService::new(app),
        spend: writer,
        telemetry,
        reloader: Reloader {
            inner: Arc::new(ReloaderInner {
                swap,
                kept,
                current: tokio::sync::Mutex::new(generation),
            }),
        },
    })
}

/// The span layer of the inference stack, when there is one.
#[cfg(feature = "otel")]
type Spans = Option<SpanLayer>;
/// No span layer: this build has no `otel` feature.
#[cfg(not(feature = "otel"))]
type Spans = Option<tower::layer::util::Identity>;

/// What the gateway builds once and every configuration shares: where
/// budgets, spend records, keys, spans and metrics go.
struct Kept {
    clock: Arc<dyn Clock>,
    store: Store,
    writer: Option<SpendWriter>,
    spend_store: Option<Arc<dyn tollgate::budget::SpendStore>>,
    keys: tollgate::config::KeyBackend,
    spans: Spans,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Held (shared) by each admin API request, taken (exclusive) by a
    /// reload while it loads the keyring and swaps the routes: no key
    /// written by the old routes can be missing from the new keyring.
    admin_writes: Arc<tokio::sync::RwLock<()>>,
    /// The routes in place (weak: the routes themselves hold it), where an
    /// admin request that waited out a reload goes instead of its old routes.
    in_place: Arc<OnceLock<WeakReload<Routes>>>,
    /// The console's sessions: a reload keeps everyone logged in (unless
    /// the master key changed).
    #[cfg(feature = "console")]
    sessions: tollgate::console::Sessions,
}

/// What one configuration builds and a reload's next one carries over: the
/// router (cooldowns, in-flight counts) and the rate limiter (buckets).
struct Generation {
    config: Config,
    router: tollgate::router::Router<tollgate::provider::Provider>,
    rate_limit: RateLimitLayer<KeyLimits, Arc<str>>,
}

/// The routes of one configuration: inference, token counting, the model
/// list, the admin API, metrics and health.
/// `number` is the routes' generation (0 at start, then one more per reload).
fn routes(
    g: &Generation,
    kept: &Kept,
    keyring: Keyring,
    number: u64,
) -> Result<Routes, ConfigError> {
    let config = &g.config;
    let router = g.router.clone();
    // `GET /key/info` reads budgets' spend where they live (here or Redis).
    let usage = Some(Arc::new(kept.store.clone()) as Arc<dyn tollgate::budget::UsageSource>);
    let fallback = config.fallback_layer()?;
    let fair_queue = fair_queue(config);
    let auth = VirtualKeysLayer::new(keyring.clone());
    let models = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(auth.clone())
        .service(ModelList::new(router.model_names()));
    // Anthropic's token counting is free and has its own limits upstream:
    // keys and grants hold, budgets and rate limits do not charge it.
    let count_tokens = ServiceBuilder::new()
        .layer(NormalizeErrorsLayer::new())
        .layer(auth.clone())
        .layer(tollgate::read_request::ReadRequestLayer::new(
            config.server.max_body_bytes,
        ))
        .layer(tollgate::access::ModelAccessLayer::new().advice(MODELS_ADVICE))
        .layer(fallback.clone())
        .service(router.clone());
    let inference = inference_stack!(
        auth,
        config.server.max_body_bytes,
        kept.spans.clone(),
        g.rate_limit.clone(),
        budget_with_customers(
            config,
            kept.store.clone(),
            kept.writer.clone(),
            Some(keyring.clone())
        ),
        fair_queue.clone(),
        fallback,
        router
    );
    let inference = route(inference);
    let count_tokens = route(count_tokens);
    let mut app = axum::Router::new()
        .route_service("/v1/models", models.clone())
        .route_service("/v1/models/{*id}", models)
        .route("/health", get(|| async { "ok" }));
    if let Some(master) = config.master_key() {
        let view = SpendView {
            ledger: usage,
            store: kept.spend_store.clone(),
            global: config.global_budget(),
        };
        let (writes, in_place) = (kept.admin_writes.clone(), kept.in_place.clone());
        let options = tollgate::admin::AdminOptions::new()
            .spend(view)
            .unenforced(config.unenforced())
            .models(model_info(config))
            .deployments(deployments(g, fair_queue)?);
        let admin = tollgate::admin::router_with_options(keyring, &master, options);
        let admin = admin.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let (writes, in_place) = (writes.clone(), in_place.clone());
                async move {
                    let held = writes.read_owned().await;
                    // A reload swapped the routes while this request waited:
                    // it goes to the new ones (and their keyring) instead.
                    let now = in_place.get().and_then(WeakReload::upgrade);
                    if let Some(now) = now.filter(|r| r.generation() != number) {
                        drop(held);
                        return match now.oneshot(req).await {
                            Ok(res) => res,
                            Err(never) => match never {},
                        };
                    }
                    next.run(req).await
                }
            },
        ));
        // The operator's console under /ui, a client of this admin API.
        #[cfg(feature = "console")]
        if let console = config.console()
            && console.enabled
        {
            let options = tollgate::console::ConsoleOptions {
                secure_cookie: console.secure_cookie,
                idle: Duration::from_millis(console.session_idle_ms),
                ..Default::default()
            };
            app = app.merge(tollgate::console::router(
                admin.clone(),
                &master,
                kept.sessions.clone(),
                options,
            ));
        }
        app = app.merge(admin);
    }
    if let Some(handle) = kept.metrics.clone() {
        app = app.route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }),
        );
    }
    Ok(Routes {
        inference,
        count_tokens,
        rest: app.fallback(no_such_route),
    })
}

/// The gateway as one service (see [`Built::app`]).
pub type App = BoxCloneSyncService<Request, Response, Infallible>;

/// A request as axum hands it on, and a response as it takes it.
type Request = axum::extract::Request;
type Response = axum::response::Response;

/// One route's service, type-erased (as axum keeps its routes).
type Route = BoxCloneSyncService<Request, Response, Infallible>;

fn route<S>(service: S) -> Route
where
    S: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    use axum::response::IntoResponse;
    BoxCloneSyncService::new(service.map_response(IntoResponse::into_response))
}

/// The routes of one configuration. The inference paths, which carry the
/// gateway's load, are found by a `match` on the path; every other path
/// (the model list, the admin API, the console, metrics, health, the 404)
/// goes to `rest`, an axum router. For each request axum's router clones
/// the URI into an extension, looks the path up, inserts the matched path
/// and its parameters (more extensions) and finds the route in a SipHash
/// map: about 5,000 instructions that a `match` does without
/// (docs/performance-guard.md, section 3).
#[derive(Clone)]
struct Routes {
    /// Chat Completions, Completions, Embeddings, Responses, Messages.
    inference: Route,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    count_tokens: Route,
    /// Everything else.
    rest: axum::Router,
}

impl Service<Request> for Routes {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Oneshot<Route, Request>, axum::routing::future::RouteFuture<Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness belongs to the clone each call takes, as in axum.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = match req.uri().path() {
            "/v1/chat/completions"
            | "/v1/completions"
            | "/v1/embeddings"
            | "/v1/responses"
            | "/v1/messages" => &self.inference,
            "/v1/messages/count_tokens" => &self.count_tokens,
            _ => return Either::Right(self.rest.call(req)),
        };
        Either::Left(route.clone().oneshot(req))
    }
}

/// What the admin API's `GET /deployments` shows: this configuration's
/// router (its deployments' in-flight counts, cooldowns and recent
/// errors), its fallback chains and its fair queue's depth, when asked.
fn deployments(
    g: &Generation,
    queue: Option<FairQueueLayer<TenantOfKey>>,
) -> Result<tollgate::admin::HealthSource, ConfigError> {
    let (router, chains) = (g.router.clone(), g.config.chains()?);
    Ok(Arc::new(move || {
        let health = router.health().with_fallbacks(&chains);
        match &queue {
            Some(q) => health.with_fair_queue(q),
            None => health,
        }
    }))
}

/// Applies a new configuration to a running gateway without a restart
/// ([`Built::reloader`]; the reference gateway calls it on `SIGHUP`).
///
/// The new configuration's routes are built whole, then swapped in at once
/// ([`Reload`]): a request or stream that started keeps the routes it
/// started on; the next one gets the new. They share what must outlive a
/// configuration: budgets' counters and spend records, the rate limiter's
/// buckets, the router's cooldowns and in-flight counts (by
/// `group/deployment`), the key store, metrics and spans. A configuration
/// that fails its check, or that changes a setting only a restart can
/// change ([`Config::reload_check`]), is refused whole: the running one stays.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<ReloaderInner>,
}

struct ReloaderInner {
    swap: ReloadHandle<Routes>,
    kept: Kept,
    /// The configuration in place; locked for a whole reload (one at a time).
    current: tokio::sync::Mutex<Generation>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.inner.swap.generation())
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// Reads, checks and applies the configuration file at `path`; logs
    /// and counts the outcome (`tollgate_config_reloads_total`).
    pub async fn reload_file(&self, path: &std::path::Path) -> Result<GroupChanges, ConfigError> {
        match Config::from_file(path) {
            Ok(next) => self.reload(next).await,
            Err(e) => Err(refused(e)),
        }
    }

    /// Applies `next` (already checked by `Config::from_*`): builds its
    /// routes over the kept state and swaps them in; logs and counts the
    /// outcome. Refused, nothing changes.
    pub async fn reload(&self, next: Config) -> Result<GroupChanges, ConfigError> {
        let mut current = self.inner.current.lock().await;
        match self.apply(&current, next).await {
            Ok(generation) => {
                let changes = current.config.group_changes(&generation.config);
                *current = generation;
                tollgate::metrics::config_reload(true);
                tracing::info!(
                    config = %current.config.path().display(),
                    added = ?changes.added,
                    removed = ?changes.removed,
                    changed = ?changes.changed,
                    models = current.config.groups.len(),
                    "configuration reloaded"
                );
                warn_unpriced(&current.config);
                Ok(changes)
            }
            Err(e) => Err(refused(e)),
        }
    }

    /// The configuration in place.
    pub async fn config(&self) -> Config {
        self.inner.current.lock().await.config.clone()
    }

    async fn apply(&self, current: &Generation, next: Config) -> Result<Generation, ConfigError> {
        let kept = &self.inner.kept;
        current.config.reload_check(&next)?;
        let router = next.router_after(kept.clock.clone(), &current.router)?;
        let (limits, max_output) = key_limits(&next);
        let rate_limit = current
            .rate_limit
            .clone()
            .with_extract(limits)
            .default_max_output_tokens(max_output);
        let generation = Generation {
            config: next,
            router,
            rate_limit,
        };
        // No admin write runs from here until the new routes are in place:
        // the new keyring has every key the old one wrote.
        let _writes = kept.admin_writes.write().await;
        let keyring = generation.config.keyring_on(&kept.keys).await?;
        let routes = routes(&generation, kept, keyring, self.inner.swap.generation() + 1)?;
        self.inner.swap.swap(routes);
        Ok(generation)
    }
}

/// A refused reload, logged (naming the file) and counted.
fn refused(e: ConfigError) -> ConfigError {
    tollgate::metrics::config_reload(false);
    tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
    e
}

/// A group no price covers is free to budgets: said at start and at each
/// reload, never silent.
fn warn_unpriced(config: &Config) {
    for group in config.unpriced() {
        tracing::warn!(
            group,
            "model group has no price (neither in the config nor in the price table): its calls are charged nothing; set price_in_per_mtok/price_out_per_mtok, add its upstream model to `[pricing] table`, or refuse such groups with `[pricing] require = true`"
        );
    }
}

/// The deployments as the admin API's `/model/info` shows them: names,
/// API and prices, never a URL, a header or a credential.
pub fn model_info(config: &Config) -> Vec<tollgate::admin::ModelInfo> {
    let per_token = |usd_per_mtok: Option<f64>| usd_per_mtok.map(|p| p / 1e6);
    config
        .groups
        .iter()
        .flat_map(|g| {
            g.deployments.iter().map(move |d| {
                let upstream = d.model.clone().unwrap_or_else(|| g.name.clone());
                tollgate::admin::ModelInfo {
                    model_name: g.name.clone(),
                    deployment: d
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}/{upstream}", d.provider)),
                    provider: d.provider.clone(),
                    api: d.api.clone().unwrap_or_else(|| "openai".into()),
                    upstream_model: upstream,
                    input_cost_per_token: per_token(d.price_in_per_mtok.or(g.price_in_per_mtok)),
                    output_cost_per_token: per_token(d.price_out_per_mtok.or(g.price_out_per_mtok)),
                    max_output_tokens: g.max_output_tokens,
                }
            })
        })
        .collect()
}

/// A Prometheus builder with `tollgate::metrics`' histogram buckets (the
/// gateway installs it; benches build local recorders from it).
pub fn prometheus_builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    tollgate::metrics::BUCKETS
        .iter()
        .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            builder
                .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                .expect("tollgate's buckets are not empty")
        })
}

/// The Prometheus recorder, installed globally on first use (once per
/// process, with `tollgate::metrics`' buckets and descriptions); `None` when
/// another recorder was installed first.
pub fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> =
        OnceLock::new();
    HANDLE
        .get_or_init(|| {
            match prometheus_builder().install_recorder() {
                Ok(handle) => {
                    tollgate::metrics::describe();
                    // Histogram samples are folded into buckets on each
                    // scrape and here, so memory stays bounded unscraped.
                    let upkeep = handle.clone();
                    std::thread::spawn(move || {
                        loop {
                            std::thread::sleep(Duration::from_secs(5));
                            upkeep.run_upkeep();
                        }
                    });
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no /metrics: another metrics recorder is installed");
                    None
                }
            }
        })
        .clone()
}

/// Names the authenticated key in the request's span: its public id and
/// team (never the secret).
pub fn record_key<B>(req: http::Request<Identified<Key, B>>) -> http::Request<Identified<Key, B>> {
    let key = &req.body().identity;
    let span = tracing::Span::current();
    span.record("key_id", tracing::field::display(key.id()));
    if let Some(team) = key.team() {
        span.record("team", tracing::field::display(team.id()));
    }
    req
}

/// `RateLimit`'s hook over the authenticated key: the key's own rpm/tpm
/// limits, else its team's (one allowance for the whole team), else
/// `[rate_limits]`'s defaults.
#[derive(Clone, Debug)]
pub struct KeyLimits(Arc<RateLimits>);

impl RateLimitKey<Key> for KeyLimits {
    type Key = Arc<str>;

    fn key(&self, req: &LlmRequest<Key>) -> Option<(Arc<str>, Limits)> {
        let key = req.body().identity();
        let own = key.rpm_limit().is_some() || key.tpm_limit().is_some();
        let (id, rpm, tpm) = match key.team() {
            Some(team) if !own && (team.rpm_limit().is_some() || team.tpm_limit().is_some()) => (
                Arc::from(format!("team:{}", team.id())),
                team.rpm_limit(),
                team.tpm_limit(),
            ),
            _ => (key.id_arc().clone(), key.rpm_limit(), key.tpm_limit()),
        };
        let limits = self.0.limits_for(rpm, tpm);
        (limits != Limits::UNLIMITED).then_some((id, limits))
    }
}

/// `FairQueue`'s hook over the authenticated key: a tenant is the key
/// (weighted by the key's `weight`) or, with `tenant = "team"`, its team
/// (weighted by the team's).
#[derive(Clone, Copy, Debug)]
pub struct TenantOfKey(TenantBy);

impl TenantOf<Key> for TenantOfKey {
    fn tenant(&self, req: &LlmRequest<Key>) -> Tenant {
        let key = req.body().identity();
        match (self.0, key.team()) {
            (TenantBy::Team, Some(team)) => Tenant {
                id: Arc::from(format!("team:{}", team.id())),
                weight: team.weight(),
            },
            _ => Tenant {
                id: key.id_arc().clone(),
                weight: key.weight(),
            },
        }
    }
}

/// `RateLimit` (in Redis when `shared`): always built, so keys' and teams'
/// own limits hold without `[rate_limits]`, whose defaults (none: unlimited)
/// apply to the others.
#[cfg(feature = "redis")]
pub fn rate_limit(
    config: &Config,
    shared: Option<tollgate::state::RedisRateLimiter>,
) -> RateLimitLayer<KeyLimits, Arc<str>> {
    let (keys, max_output) = key_limits(config);
    let layer = match shared {
        Some(limiter) => RateLimitLayer::shared(keys, limiter),
        None => RateLimitLayer::new(keys),
    };
    layer.default_max_output_tokens(max_output)
}

/// `RateLimit`: always built (see the `redis` variant).
#[cfg(not(feature = "redis"))]
pub fn rate_limit(config: &Config) -> RateLimitLayer<KeyLimits, Arc<str>> {
    let (keys, max_output) = key_limits(config);
    RateLimitLayer::new(keys).default_max_output_tokens(max_output)
}

/// `RateLimit`'s hook with `[rate_limits]`' defaults, and its output cap
/// for a request that sets none.
pub fn key_limits(config: &Config) -> (KeyLimits, u64) {
    let defaults = config.rate_limits.clone().unwrap_or_default();
    let max_output = defaults.default_max_output_tokens;
    (KeyLimits(Arc::new(defaults)), max_output)
}

/// `Budget`'s hook over the authenticated key: the key's own budget, its
/// team's, its user's (even when the key has a team), the end user's (the
/// request's `user`, or `metadata.user_id` on `/v1/messages`, when a
/// customer record names it), and the global one, each that is set; spend
/// records name the key's public id, its team, its user and the end user. A
/// blocked customer is refused (403 `end_user_blocked`).
#[derive(Clone, Debug)]
pub struct KeyBudgets {
    global: Option<Limit>,
    customers: Option<Keyring>,
}

impl KeyBudgets {
    /// The customer the request names, from memory (`None` without a
    /// `user`: no lookup, no allocation).
    fn customer(&self, req: &LlmRequest<Key>) -> Option<tollgate::keys::Customer> {
        let id = req.body().summary().end_user.as_deref()?;
        self.customers.as_ref()?.customer(id)
    }
}

impl BudgetsOf<Key> for KeyBudgets {
    fn budgets(&self, req: &LlmRequest<Key>) -> Vec<Limit> {
        let key = req.body().identity();
        let mut out = Vec::with_capacity(5);
        out.extend(
            key.budget()
                .and_then(|b| Limit::from_budget(Scope::Key(key.id_arc().clone()), b)),
        );
        if let Some(team) = key.team() {
            out.extend(
                team.budget()
                    .and_then(|b| Limit::from_budget(Scope::Team(Arc::from(team.id())), b)),
            );
        }
        if let Some(user) = key.user() {
            out.extend(
                user.budget()
                    .and_then(|b| Limit::from_budget(Scope::User(user.id_arc().clone()), b)),
            );
        }
        if let Some(c) = self.customer(req) {
            out.extend(
                c.budget()
                    .and_then(|b| Limit::from_budget(Scope::EndUser(c.id_arc().clone()), b)),
            );
        }
        out.extend(self.global.clone());
        out
    }

    fn spender(&self, req: &LlmRequest<Key>) -> Spender {
        let key = req.body().identity();
        Spender {
            key_id: Some(key.id().to_owned()),
            team_id: key.team().map(|t| t.id().to_owned()),
            user_id: key.user_id().map(str::to_owned),
            end_user: req.body().summary().end_user.clone(),
        }
    }

    fn admit(&self, req: &LlmRequest<Key>) -> Result<(), Error> {
        match self.customer(req) {
            Some(c) if c.is_blocked() => Err(Error::new(
                Reason::EndUserBlocked,
                format!(
                    "The end user `{}` this request is for is blocked on this gateway; ask your admin to unblock it.",
                    c.id()
                ),
            )
            .with_meta("end_user", c.id())),
            _ => Ok(()),
        }
    }
}

/// `Budget` over `ledger`, with `[budgets]`' global budget and the groups'
/// prices, writing spend records through `spend`.
pub fn budget(
    config: &Config,
    ledger: Store,
    spend: Option<SpendWriter>,
) -> BudgetLayer<KeyBudgets, Store> {
    budget_with_customers(config, ledger, spend, None)
}

/// [`budget`], with end users' budgets and blocks from `customers`' records.
pub fn budget_with_customers(
    config: &Config,
    ledger: Store,
    spend: Option<SpendWriter>,
    customers: Option<Keyring>,
) -> BudgetLayer<KeyBudgets, Store> {
    let layer = BudgetLayer::new(
        ledger,
        KeyBudgets {
            global: config.global_budget(),
            customers,
        },
        config.prices(),
    )
    // The config's providers always ask for usage on streams (`Config::router`).
    .upstream_includes_usage(true);
    match spend {
        Some(writer) => layer.spend(writer),
        None => layer,
    }
}

/// `FairQueue`, when `[fair_queue]` is configured.
pub fn fair_queue(config: &Config) -> Option<FairQueueLayer<TenantOfKey>> {
    let queue = config.fair_queue.as_ref()?;
    Some(FairQueueLayer::new(
        queue.settings(),
        TenantOfKey(queue.tenant),
    ))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight
/// requests run on for at most `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm
    // and the client's delayed ACK hold each one back by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    // Each connection gets a clone of the one service (an `Arc` and the
    // layers' small state).
    let app = tower::make::Shared::new(app);
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

/// How long a stopping gateway waits for the spend store to take the
/// records still queued.
pub const SPEND_FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// [`serve`]s the built gateway, then writes the spend records still queued
/// (waiting at most [`SPEND_FLUSH_LIMIT`]).
pub async fn serve_and_flush(
    listener: tokio::net::TcpListener,
    built: Built,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let served = serve(listener, built.app, shutdown, grace).await;
    if let Some(writer) = built.spend {
        // Bounded: a spend store that is away must not keep the process
        // from ending (what is left unwritten is logged as an error).
        writer.flush_within(SPEND_FLUSH_LIMIT).await;
        tracing::info!(
            written = writer.written(),
            dropped = writer.dropped(),
            failed = writer.failed(),
            unwritten = writer.pending(),
            "spend records written"
        );
    }
    #[cfg(feature = "otel")]
    if let Some(provider) = built.telemetry {
        // The batch's last spans; shutting down blocks, so off the runtime's threads.
        let provider = provider.into_inner();
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("the last spans could not be exported");
        }
    }
    served
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

/// Loads `path`, binds and serves until a signal; reloads the file on SIGHUP.
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let built = build(&config, Arc::new(SystemClock), config.ledger()).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    // Before the listening line: from then on, SIGHUP reloads (and never
    // ends the process).
    reload_on_hangup(built.reloader.clone(), config.path().to_owned())?;
    // The key store's kind and place; a PostgreSQL URL is never shown (it may hold a password).
    let keys = config.key_location().map(|l| format!("{l:?}"))?;
    tracing::info!(listen = %listener.local_addr()?, config = %config.path().display(), models = config.groups.len(), keys = %keys, "tollgate gateway listening");
    warn_unpriced(&config);
    serve_and_flush(
        listener,
        built,
        signal(),
        Duration::from_millis(config.server.shutdown_grace_ms),
    )
    .await?;
    Ok(())
}

/// On each SIGHUP, reloads the configuration file at `path` (see
/// [`Reloader`]); a refused one is logged at error level, naming the file
/// and the field, and the running configuration stays.
#[cfg(unix)]
pub fn reload_on_hangup(reloader: Reloader, path: std::path::PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
            let _ = reloader.reload_file(&path).await;
        }
    });
    Ok(())
}

/// No SIGHUP on this platform: a reload needs the [`Reloader`] in code.
#[cfg(not(unix))]
pub fn reload_on_hangup(_reloader: Reloader, _path: std::path::PathBuf) -> std::io::Result<()> {
    Ok(())
}

/// The gateway's log subscriber: `info` unless `RUST_LOG` says otherwise.
pub fn log_subscriber() -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    tracing_subscriber::EnvFilter,
> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter)
}

pub fn init_tracing() {
    let _ = log_subscriber().try_init();
}

/// mimalloc rather than the system allocator: at saturation the gateway
/// spent ~11 % of its CPU in glibc's malloc/free; with mimalloc, ~18 % less
/// CPU per request. Built without transparent huge pages (`no_thp`): with
/// them, 10,000 held streams took 31.5 KiB each instead of 19.6 (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.server.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(config)) {
        eprintln!("tollgate: {e}");
        std::process::exit(1);
    }
}
