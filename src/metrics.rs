//! Metrics: every name, label and bucket in one place, and the layer that
//! counts requests.
//!
//! tollgate records through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`, on by default); the application chooses the recorder.
//! The reference gateway installs `metrics-exporter-prometheus` and serves
//! `GET /metrics` (`[server] metrics = true`, the default). Without a
//! recorder every call is a no-op; without the feature they compile to
//! nothing.
//!
//! | name | kind | labels | recorded by |
//! |---|---|---|---|
//! | `tollgate_requests_total` | counter | `model_group`, `status` | [`RequestMetrics`]: every request that reached it, by the answer's status class |
//! | `tollgate_request_duration_seconds` | histogram | `model_group` | [`RequestMetrics`]: until the response headers (a stream's first byte) |
//! | `tollgate_overhead_seconds` | histogram | — | [`Overhead`](crate::overhead::Overhead): the gateway's own time, as in `x-tollgate-overhead-ms` |
//! | `tollgate_upstream_errors_total` | counter | `deployment`, `reason` | [`Router`](crate::router::Router): each failed upstream attempt, and each stream that fails after its commit point |
//! | `tollgate_cooldowns_total` | counter | `deployment`, `reason` | [`Router`](crate::router::Router): each cooldown started (`rate_limited`, `credential`, `model_gone`, `failures`, and `route_not_served` for one route on one deployment) |
//! | `tollgate_retries_total` | counter | `model_group` | [`Router`](crate::router::Router): each attempt after a request's first |
//! | `tollgate_fallbacks_total` | counter | `from`, `to` | [`Fallback`](crate::fallback::Fallback): each move to the next model group |
//! | `tollgate_deployment_in_flight` | gauge | `deployment` | [`Router`](crate::router::Router): requests in flight (until their bodies end) |
//! | `tollgate_queue_depth` | gauge | `tenant` | `FairQueue`: the tenant's requests waiting for a slot (all model groups) |
//! | `tollgate_queue_wait_seconds` | histogram | `tenant` | `FairQueue`: the wait of each request that queued (granted or timed out; one admitted at once is not recorded) |
//! | `tollgate_queue_rejected_total` | counter | `tenant`, `reason` | `FairQueue`: `queue_full`, `queue_timeout` |
//! | `tollgate_spend_micros_total` | counter | — | `Budget`: micro-USD charged by each settlement (what the spend records say) |
//! | `tollgate_spend_records_dropped_total` | counter | — | `SpendWriter`: records dropped on a full queue (never expected; a `warn` line too) |
//! | `tollgate_spend_write_errors_total` | counter | — | `SpendWriter`: records in a batch the store refused (an `error` line too) |
//! | `tollgate_config_reloads_total` | counter | `outcome` | the application, through [`config_reload`]: each configuration reload, `ok` (in place) or `refused` (the running configuration stays) |
//!
//! **Labels, and why their number stays bounded.**
//!
//! - `model_group`, `from`, `to`: a configured model group's name. A name
//!   the client sent that is not a configured group (an unknown `model`, an
//!   entry of a request's `models` list) is recorded as `other`, so a client
//!   cannot create series.
//! - `deployment`: `<model group>/<deployment name>`, the router's key for
//!   the deployment (the cooldown store's too); fixed by the configuration.
//! - `outcome`: `ok` or `refused`.
//! - `status`: `1xx` … `5xx`. `reason`: the stable
//!   [`Reason`](crate::Reason) word of the error (`upstream_rate_limited`, …)
//!   or the cooldown reason; a closed set.
//! - `tenant`: the fair queue's tenant, a virtual key's public id or
//!   `team:<team id>`. It is the only per-client label, on the queue's
//!   metrics only: their series grow with the number of keys (or teams)
//!   that ever queued. Public ids only: no key, hash or upstream credential
//!   is ever a label value. The queue's metrics carry no model group: the
//!   queue sits above the router and would see any name a client sends.
//!
//! **Cost.** Hot-path metrics are handles registered once, when the layer
//! or router is built (an atomic add per event, no allocation, no map
//! lookup in the recorder): install the recorder *before* building the
//! stack. Failure paths (errors, cooldowns, retries, fallbacks, queueing)
//! build their label set on the spot.
//!
//! Histograms are in seconds; [`BUCKETS`] gives the buckets the reference
//! gateway configures for each.
//!
//! ```
//! use http::{Request, Response};
//! use tollgate::metrics::RequestMetricsLayer;
//! use tollgate::read_request::ReadRequestLayer;
//! use tollgate::{Body, Error, LlmRequest};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // Install a recorder first (e.g. metrics-exporter-prometheus), then build.
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(RequestMetricsLayer::new(["gpt-4o-mini"]))
//!     .service(service_fn(|_req: LlmRequest| async {
//!         Ok::<_, Error>(Response::new(Body::full("hi")))
//!     }));
//! let req = Request::post("/v1/chat/completions")
//!     .body(Body::full(r#"{"model":"gpt-4o-mini"}"#))
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Response, StatusCode};
use pin_project::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::LlmRequest;
use crate::error::Error;

/// Requests by `model_group` and `status` class.
pub const REQUESTS_TOTAL: &str = "tollgate_requests_total";
/// Time until the response headers, by `model_group` (seconds).
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
/// The gateway's own time per request (seconds).
pub const OVERHEAD: &str = "tollgate_overhead_seconds";
/// Failed upstream attempts by `deployment` and `reason`.
pub const UPSTREAM_ERRORS_TOTAL: &str = "tollgate_upstream_errors_total";
/// Cooldowns started by `deployment` and `reason`.
pub const COOLDOWNS_TOTAL: &str = "tollgate_cooldowns_total";
/// Attempts after a request's first, by `model_group`.
pub const RETRIES_TOTAL: &str = "tollgate_retries_total";
/// Moves to the next model group, by `from` and `to`.
pub const FALLBACKS_TOTAL: &str = "tollgate_fallbacks_total";
/// Requests in flight at a `deployment`.
pub const DEPLOYMENT_IN_FLIGHT: &str = "tollgate_deployment_in_flight";
/// Requests waiting in the fair queue, by `tenant`.
pub const QUEUE_DEPTH: &str = "tollgate_queue_depth";
/// The fair-queue wait of requests that queued, by `tenant` (seconds).
pub const QUEUE_WAIT: &str = "tollgate_queue_wait_seconds";
/// Fair-queue refusals by `tenant` and `reason`.
pub const QUEUE_REJECTED_TOTAL: &str = "tollgate_queue_rejected_total";
/// Counter: micro-USD charged by budget settlements (the spend records' cost).
pub const SPEND_MICROS_TOTAL: &str = "tollgate_spend_micros_total";
/// Counter: spend records dropped because the writer's queue was full.
pub const SPEND_RECORDS_DROPPED_TOTAL: &str = "tollgate_spend_records_dropped_total";
/// Counter: spend records lost because the store refused their batch.
pub const SPEND_WRITE_ERRORS_TOTAL: &str = "tollgate_spend_write_errors_total";
/// Counter: configuration reloads, by [`OUTCOME`].
pub const CONFIG_RELOADS_TOTAL: &str = "tollgate_config_reloads_total";

/// Label: a configured model group, or [`OTHER`].
pub const MODEL_GROUP: &str = "model_group";
/// Label: the answer's status class, `1xx` … `5xx`.
pub const STATUS: &str = "status";
/// Label: `<model group>/<deployment name>`.
pub const DEPLOYMENT: &str = "deployment";
/// Label: an error's [`Reason`](crate::Reason) word, or a cooldown reason.
pub const REASON: &str = "reason";
/// Label: the group a fallback left.
pub const FROM: &str = "from";
/// Label: the group a fallback went to.
pub const TO: &str = "to";
/// Label: a fair-queue tenant (a key's public id, or `team:<id>`).
pub const TENANT: &str = "tenant";
/// Label: a configuration reload's outcome, `ok` or `refused`.
pub const OUTCOME: &str = "outcome";
/// The label value for a model name that is not a configured group.
pub const OTHER: &str = "other";

/// Histogram buckets, in seconds, by metric name.
pub const BUCKETS: &[(&str, &[f64])] = &[
    (
        REQUEST_DURATION,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 120.0,
        ],
    ),
    (
        OVERHEAD,
        &[
            0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
            0.1,
        ],
    ),
    (
        QUEUE_WAIT,
        &[
            0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ],
    ),
];

/// Registers a description (and unit) for each metric with the current
/// recorder; call it once after installing one.
pub fn describe() {
    record::describe();
}

/// Counts one configuration reload in `tollgate_config_reloads_total`:
/// `applied` (the new configuration is in place, `outcome="ok"`) or refused
/// (`outcome="refused"`: the running configuration stays). Recorded by the
/// application that reloads (the reference gateway on `SIGHUP`), which alone
/// knows whether a new configuration was accepted.
pub fn config_reload(applied: bool) {
    record::config_reload(applied);
}

#[cfg(feature = "metrics")]
pub(crate) use ::metrics::{Counter, Gauge, Histogram};

#[cfg(not(feature = "metrics"))]
pub(crate) use noop::{Counter, Gauge, Histogram};

/// Without the feature: handles and events that do nothing.
#[cfg(not(feature = "metrics"))]
pub(crate) mod noop {
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Clone, Debug, Default)]
    pub(crate) struct Counter;
    impl Counter {
        pub(crate) fn increment(&self, _: u64) {}
    }
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Gauge;
    impl Gauge {
        pub(crate) fn increment(&self, _: f64) {}
        pub(crate) fn decrement(&self, _: f64) {}
    }
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Histogram;
    impl Histogram {
        pub(crate) fn record(&self, _: f64) {}
    }

    pub(crate) fn describe() {}
    pub(crate) fn overhead() -> Histogram {
        Histogram
    }
    pub(crate) fn in_flight(_: &str) -> Gauge {
        Gauge
    }
    pub(crate) fn requests(_: &Arc<str>, _: &'static str) -> Counter {
        Counter
    }
    pub(crate) fn request_duration(_: &Arc<str>) -> Histogram {
        Histogram
    }
    pub(crate) fn upstream_error(_: &str, _: &'static str) {}
    pub(crate) fn cooldown(_: &str, _: &'static str) {}
    pub(crate) fn retry(_: &Arc<str>) {}
    pub(crate) fn fallback(_: Arc<str>, _: Arc<str>) {}
    #[cfg_attr(not(feature = "fair-queue"), allow(dead_code))]
    pub(crate) fn queue_depth(_: &Arc<str>, _: f64) {}
    #[cfg_attr(not(feature = "fair-queue"), allow(dead_code))]
    pub(crate) fn queue_wait(_: &Arc<str>, _: Duration) {}
    #[cfg_attr(not(feature = "fair-queue"), allow(dead_code))]
    pub(crate) fn queue_rejected(_: &Arc<str>, _: &'static str) {}
    #[cfg_attr(not(feature = "budget"), allow(dead_code))]
    pub(crate) fn spent() -> Counter {
        Counter
    }
    #[cfg_attr(not(feature = "budget"), allow(dead_code))]
    pub(crate) fn spend_records_dropped() {}
    #[cfg_attr(not(feature = "budget"), allow(dead_code))]
    pub(crate) fn spend_write_errors(_: u64) {}
    pub(crate) fn config_reload(_: bool) {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) use noop as record;

/// The events the layers record; each builds its labels here, so the label
/// rules above live in this one file.
#[cfg(feature = "metrics")]
pub(crate) mod record {
    use std::sync::Arc;
    use std::time::Duration;

    use ::metrics::{
        Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge,
        describe_histogram, gauge, histogram,
    };

    use super::*;

    pub(crate) fn describe() {
        describe_counter!(REQUESTS_TOTAL, "Requests by model group and status class.");
        describe_histogram!(
            REQUEST_DURATION,
            Unit::Seconds,
            "Time until the response headers, by model group."
        );
        describe_histogram!(
            OVERHEAD,
            Unit::Seconds,
            "The gateway's own time per request: total minus the upstream's."
        );
        describe_counter!(
            UPSTREAM_ERRORS_TOTAL,
            "Failed upstream attempts by deployment and reason."
        );
        describe_counter!(
            COOLDOWNS_TOTAL,
            "Deployment cooldowns started, by deployment and reason."
        );
        describe_counter!(
            RETRIES_TOTAL,
            "Upstream attempts after a request's first, by model group."
        );
        describe_counter!(FALLBACKS_TOTAL, "Moves from one model group to the next.");
        describe_counter!(
            SPEND_MICROS_TOTAL,
            "Micro-USD charged by budget settlements."
        );
        describe_counter!(
            SPEND_RECORDS_DROPPED_TOTAL,
            "Spend records dropped because the writer's queue was full."
        );
        describe_counter!(
            SPEND_WRITE_ERRORS_TOTAL,
            "Spend records lost because the store refused their batch."
        );
        describe_counter!(
            CONFIG_RELOADS_TOTAL,
            "Configuration reloads, by outcome (ok, refused)."
        );
        describe_gauge!(DEPLOYMENT_IN_FLIGHT, "Requests in flight per deployment.");
        describe_gauge!(
            QUEUE_DEPTH,
            "Requests waiting in the fair queue, by tenant."
        );
        describe_histogram!(
            QUEUE_WAIT,
            Unit::Seconds,
            "Fair-queue wait of requests that queued, by tenant."
        );
        describe_counter!(
            QUEUE_REJECTED_TOTAL,
            "Fair-queue refusals by tenant and reason."
        );
    }

    /// The overhead histogram's handle.
    pub(crate) fn overhead() -> Histogram {
        histogram!(OVERHEAD)
    }

    /// A deployment's in-flight gauge handle (`key`: `group/deployment`).
    pub(crate) fn in_flight(key: &str) -> Gauge {
        gauge!(DEPLOYMENT_IN_FLIGHT, DEPLOYMENT => key.to_owned())
    }

    /// A group's request counter handle for a status class.
    pub(crate) fn requests(group: &Arc<str>, class: &'static str) -> Counter {
        counter!(REQUESTS_TOTAL, MODEL_GROUP => group.clone(), STATUS => class)
    }

    /// A group's request duration handle.
    pub(crate) fn request_duration(group: &Arc<str>) -> Histogram {
        histogram!(REQUEST_DURATION, MODEL_GROUP => group.clone())
    }

    /// A failed upstream attempt at `deployment` (`group/deployment`).
    pub(crate) fn upstream_error(deployment: &str, reason: &'static str) {
        counter!(UPSTREAM_ERRORS_TOTAL, DEPLOYMENT => deployment.to_owned(), REASON => reason)
            .increment(1);
    }

    /// A cooldown started at `deployment`.
    pub(crate) fn cooldown(deployment: &str, reason: &'static str) {
        counter!(COOLDOWNS_TOTAL, DEPLOYMENT => deployment.to_owned(), REASON => reason)
            .increment(1);
    }

    /// An attempt after the first, in a configured `group`.
    pub(crate) fn retry(group: &Arc<str>) {
        counter!(RETRIES_TOTAL, MODEL_GROUP => group.clone()).increment(1);
    }

    /// A fallback; `from` and `to` already bounded (configured groups or [`OTHER`]).
    pub(crate) fn fallback(from: Arc<str>, to: Arc<str>) {
        counter!(FALLBACKS_TOTAL, FROM => from, TO => to).increment(1);
    }

    /// The handle settlements add their charge to.
    #[cfg_attr(not(feature = "budget"), allow(dead_code))]
    pub(crate) fn spent() -> Counter {
        counter!(SPEND_MICROS_TOTAL)
    }

    /// A spend record was dropped on a full queue.
    #[cfg_attr(not(feature = "budget"), allow(dead_code))]
    pub(crate) fn spend_records_dropped() {
        counter!(SPEND_RECORDS_DROPPED_TOTAL).increment(1);
    }

    /// The store refused a batch of `n` spend records.
    #[cfg_attr(not(feature = "budget"), allow(dead_code))]
    pub(crate) fn spend_write_errors(n: u64) {
        counter!(SPEND_WRITE_ERRORS_TOTAL).increment(n);
    }

    /// A configuration reload was applied or refused.
    pub(crate) fn config_reload(applied: bool) {
        let outcome = if applied { "ok" } else { "refused" };
        counter!(CONFIG_RELOADS_TOTAL, OUTCOME => outcome).increment(1);
    }

    /// `delta` more (or fewer) of `tenant`'s requests wait.
    #[cfg_attr(not(feature = "fair-queue"), allow(dead_code))]
    pub(crate) fn queue_depth(tenant: &Arc<str>, delta: f64) {
        gauge!(QUEUE_DEPTH, TENANT => tenant.clone()).increment(delta);
    }

    /// A queued request stopped waiting after `waited`.
    #[cfg_attr(not(feature = "fair-queue"), allow(dead_code))]
    pub(crate) fn queue_wait(tenant: &Arc<str>, waited: Duration) {
        histogram!(QUEUE_WAIT, TENANT => tenant.clone()).record(waited.as_secs_f64());
    }

    /// The fair queue refused a request (`queue_full`, `queue_timeout`).
    #[cfg_attr(not(feature = "fair-queue"), allow(dead_code))]
    pub(crate) fn queue_rejected(tenant: &Arc<str>, reason: &'static str) {
        counter!(QUEUE_REJECTED_TOTAL, TENANT => tenant.clone(), REASON => reason).increment(1);
    }
}

/// The configured model groups, for bounding a label: a known name as a
/// shared string, anything else [`OTHER`].
#[derive(Clone, Debug, Default)]
pub(crate) struct KnownGroups(crate::Map<Box<str>, Arc<str>>);

impl KnownGroups {
    pub(crate) fn new<T: AsRef<str>>(groups: impl IntoIterator<Item = T>) -> Self {
        KnownGroups(
            groups
                .into_iter()
                .map(|g| (Box::from(g.as_ref()), Arc::from(g.as_ref())))
                .collect(),
        )
    }

    /// The label value for `name`.
    pub(crate) fn label(&self, name: &str) -> Arc<str> {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER))
    }
}

/// One model group's request handles.
struct GroupHandles {
    /// By status class, `1xx` at 0.
    status: [Counter; 5],
    duration: Histogram,
}

impl GroupHandles {
    fn new(group: &str) -> Self {
        let g: Arc<str> = Arc::from(group);
        GroupHandles {
            status: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| record::requests(&g, c)),
            duration: record::request_duration(&g),
        }
    }

    fn done(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.status[class].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

struct Groups {
    by_name: crate::Map<Box<str>, Arc<GroupHandles>>,
    other: Arc<GroupHandles>,
}

/// Applies [`RequestMetrics`]: counts requests by model group and status
/// class, and times them until their response headers.
///
/// The handles are registered with the recorder current when the layer is
/// built (one series per configured group and status class, plus
/// [`OTHER`]).
#[derive(Clone)]
pub struct RequestMetricsLayer {
    groups: Arc<Groups>,
}

impl fmt::Debug for RequestMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.groups.by_name.keys().map(|k| &**k).collect();
        names.sort_unstable();
        f.debug_struct("RequestMetricsLayer")
            .field("groups", &names)
            .finish()
    }
}

impl RequestMetricsLayer {
    /// The layer, for the configured model `groups` (any other requested
    /// name is recorded as [`OTHER`]).
    pub fn new<T: AsRef<str>>(groups: impl IntoIterator<Item = T>) -> Self {
        let by_name = groups
            .into_iter()
            .map(|g| {
                let g = g.as_ref();
                (Box::from(g), Arc::new(GroupHandles::new(g)))
            })
            .collect();
        RequestMetricsLayer {
            groups: Arc::new(Groups {
                by_name,
                other: Arc::new(GroupHandles::new(OTHER)),
            }),
        }
    }
}

impl<S> Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            groups: self.groups.clone(),
        }
    }
}

/// Records `tollgate_requests_total` and `tollgate_request_duration_seconds`
/// for each request (see [`RequestMetricsLayer`]). Stack it under
/// `ReadRequest`: it reads the parsed `model`.
#[derive(Clone)]
pub struct RequestMetrics<S> {
    inner: S,
    groups: Arc<Groups>,
}

impl<S: fmt::Debug> fmt::Debug for RequestMetrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, I, RB> Service<LlmRequest<I>> for RequestMetrics<S>
where
    S: Service<LlmRequest<I>, Response = Response<RB>, Error = Error>,
{
    type Response = Response<RB>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: LlmRequest<I>) -> Self::Future {
        let handles = self
            .groups
            .by_name
            .get(req.body().model())
            .unwrap_or(&self.groups.other)
            .clone();
        ResponseFuture {
            fut: self.inner.call(req),
            start: Instant::now(),
            handles,
        }
    }
}

/// The future of [`RequestMetrics`].
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    fut: F,
    start: Instant,
    handles: Arc<GroupHandles>,
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, RB> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, Error>>,
{
    type Output = Result<Response<RB>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        let status = match &out {
            Ok(res) => res.status(),
            Err(e) => e.status(),
        };
        this.handles.done(status, this.start.elapsed());
        Poll::Ready(out)
    }
}

#[cfg(all(test, feature = "metrics"))]
pub(crate) mod tests {
    use super::*;
    use crate::body::Body;
    use crate::read_request::ReadRequestLayer;
    use crate::{Reason, read_request::Parsed};
    use http::Request;
    use metrics_util::MetricKind;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use std::collections::HashMap;
    use tower::{ServiceExt, service_fn};

    type Series = (u8, String, Vec<(String, String)>);

    /// Everything a [`DebuggingRecorder`] saw, summed over snapshots (a
    /// snapshot drains the recorder: counters and gauges restart at zero,
    /// histograms empty).
    #[derive(Default)]
    pub(crate) struct Seen {
        values: HashMap<Series, Value>,
    }

    enum Value {
        Counter(u64),
        Gauge(f64),
        Histogram(Vec<f64>),
    }

    fn series(kind: u8, name: &str, labels: &[(&str, &str)]) -> Series {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.sort_unstable();
        (kind, name.to_owned(), l)
    }

    impl Seen {
        /// Adds what was recorded since the last snapshot.
        pub(crate) fn update(&mut self, s: &Snapshotter) -> &Self {
            for (k, _, _, v) in s.snapshot().into_vec() {
                let labels: Vec<(&str, &str)> =
                    k.key().labels().map(|l| (l.key(), l.value())).collect();
                let kind = match k.kind() {
                    MetricKind::Counter => 0,
                    MetricKind::Gauge => 1,
                    MetricKind::Histogram => 2,
                };
                let at = series(kind, k.key().name(), &labels);
                match (
                    self.values.entry(at).or_insert(match kind {
                        0 => Value::Counter(0),
                        1 => Value::Gauge(0.0),
                        _ => Value::Histogram(Vec::new()),
                    }),
                    v,
                ) {
                    (Value::Counter(n), DebugValue::Counter(d)) => *n += d,
                    (Value::Gauge(n), DebugValue::Gauge(d)) => *n += d.into_inner(),
                    (Value::Histogram(h), DebugValue::Histogram(d)) => {
                        h.extend(d.into_iter().map(|f| f.into_inner()))
                    }
                    _ => panic!("a series changed kind"),
                }
            }
            self
        }

        /// The counter `name` with exactly `labels`; 0 if never recorded.
        pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
            match self.values.get(&series(0, name, labels)) {
                Some(Value::Counter(n)) => *n,
                _ => 0,
            }
        }

        /// The gauge `name` with exactly `labels`, if it was registered.
        pub(crate) fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            match self.values.get(&series(1, name, labels)) {
                Some(Value::Gauge(n)) => Some(*n),
                _ => None,
            }
        }

        /// The observations of histogram `name` with exactly `labels`.
        pub(crate) fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
            match self.values.get(&series(2, name, labels)) {
                Some(Value::Histogram(h)) => h.clone(),
                _ => Vec::new(),
            }
        }
    }

    #[tokio::test]
    async fn counts_by_known_group_and_status_class_and_times_each_request() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = ::metrics::set_default_local_recorder(&recorder);
        let svc = ReadRequestLayer::new(1 << 20).layer(RequestMetricsLayer::new(["known"]).layer(
            service_fn(|req: Request<Parsed>| async move {
                match req.body().summary().max_output_tokens {
                    Some(_) => Err(Error::new(Reason::UpstreamError, "upstream failed")),
                    None => Ok::<_, Error>(Response::new(Body::full("ok"))),
                }
            }),
        ));
        let call = |body: &'static str| {
            svc.clone().oneshot(
                Request::post("/v1/chat/completions")
                    .body(Body::full(body))
                    .unwrap(),
            )
        };
        assert!(call(r#"{"model":"known"}"#).await.is_ok());
        assert!(call(r#"{"model":"known"}"#).await.is_ok());
        assert!(call(r#"{"model":"known","max_tokens":1}"#).await.is_err());
        // A name the client made up is not a series of its own.
        assert!(call(r#"{"model":"made-up-1"}"#).await.is_ok());
        assert!(call(r#"{"model":"made-up-2"}"#).await.is_ok());
        // Refused by ReadRequest before the layer: not counted here.
        assert!(call(r#"{"no_model":1}"#).await.is_err());

        let mut seen = Seen::default();
        let seen = seen.update(&snapshotter);
        let g = |g, s| seen.counter(REQUESTS_TOTAL, &[(MODEL_GROUP, g), (STATUS, s)]);
        assert_eq!(g("known", "2xx"), 2);
        assert_eq!(g("known", "5xx"), 1);
        assert_eq!(g("known", "4xx"), 0);
        assert_eq!(g(OTHER, "2xx"), 2);
        assert_eq!(g("made-up-1", "2xx"), 0);
        let durations = |g| seen.histogram(REQUEST_DURATION, &[(MODEL_GROUP, g)]).len();
        assert_eq!(durations("known"), 3);
        assert_eq!(durations(OTHER), 2);
        assert_eq!(durations("made-up-1"), 0);
    }

    #[test]
    fn known_groups_bound_the_label() {
        let k = KnownGroups::new(["a", "b"]);
        assert_eq!(&*k.label("a"), "a");
        assert_eq!(&*k.label("zzz"), OTHER);
        assert_eq!(&*KnownGroups::default().label("a"), OTHER);
    }

    #[test]
    fn every_histogram_has_increasing_buckets() {
        for (name, b) in BUCKETS {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{name}");
            assert!(name.ends_with("_seconds"), "{name}");
        }
    }
}
