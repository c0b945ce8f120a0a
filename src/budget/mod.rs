//! Budgets: money per virtual key, team and the whole gateway, in integer
//! micro-USD, over calendar periods in a configured time zone.
//!
//! The [`Ledger`] holds, per scope ([`Scope::Key`], [`Scope::Team`],
//! [`Scope::Global`]) and per period ([`Period`]: total, daily, weekly from
//! Monday, monthly from the 1st, all aligned to midnight in the ledger's
//! time zone; or [`Period::Every`], fixed windows of a
//! [`duration`](crate::duration) from an anchor, such as a `2h` budget
//! set at 10:17 that resets at 12:17), what was spent and what running
//! requests hold reserved.
//! The period's start is part of a counter's identity, so a new period is
//! a new counter that starts at zero, and a request's cost always lands in
//! the period that contained its start, however late it settles.
//!
//! A request reserves its worst case on every budget it belongs to, all or
//! none; the first budget it would exceed refuses it (402
//! `budget_exceeded`, naming the scope's kind and when it resets, see
//! [`Refusal`]). `spent + reserved <= max` holds on every counter at every
//! instant, under any concurrency, so concurrent requests cannot overspend.
//! Settling charges the real cost (at most the reservation) and releases
//! the rest; dropping an unsettled [`Reservation`] releases it all.
//!
//! ```
//! use tollgate::budget::{Ledger, Limit, Period, Scope};
//!
//! let ledger = Ledger::default(); // UTC, system clock
//! let key = Limit { scope: Scope::Key("k1".into()), max: 1_000_000, period: Period::Monthly };
//! let global = Limit { scope: Scope::Global, max: 50_000_000, period: Period::Daily };
//!
//! let held = ledger.reserve(&[key.clone(), global.clone()], 800_000).unwrap();
//! // Another $0.30 would take the key past its $1.00: refused, nothing held.
//! let refused = ledger.reserve(&[key.clone(), global], 300_000).unwrap_err();
//! assert_eq!(refused.limit.scope.kind(), "key");
//! assert_eq!(tollgate::Error::from(refused).status(), 402);
//!
//! assert_eq!(held.settle(120_000), 120_000); // the real cost; the rest is freed
//! let usage = ledger.usage(&key.scope, Period::Monthly);
//! assert_eq!((usage.spent, usage.reserved), (120_000, 0));
//! ```
//!
//! # Spend records
//!
//! With a [`SpendWriter`] ([`BudgetLayer::spend`]), the layer also writes one
//! [`SpendRecord`] per request into a [`SpendStore`], in the background;
//! [`restore_ledger`] rebuilds the ledger's spend from the store at start.
//! See [`spend`].
//!
//! # The `Budget` layer
//!
//! [`BudgetLayer`] sits after `ReadRequest` (it prices the parsed request)
//! and in front of whatever calls the upstream. A [`BudgetsOf`] hook (any
//! closure `Fn(&LlmRequest<I>) -> Vec<Limit>`) names the budgets of each
//! request; [`Prices`] give each model group's price and output cap, with
//! per-deployment overrides. Before the call it reserves the worst case,
//! `prompt estimate × input price + output cap × n × output price` (the
//! output cap is the request's `max_tokens`, or the group's configured
//! maximum), on every budget at once, or refuses with 402
//! `budget_exceeded`. A failed call releases the reservation. A successful
//! answer's body is wrapped in [`Metered`]: every chunk is forwarded at once,
//! unchanged, while a [`Meter`] reads the usage the upstream reports (token
//! counts as floats are rounded, missing fields count zero). When the body
//! ends, the real cost is charged and the rest released; when the stream is
//! cut or the client goes away (the body is dropped), the charge is an
//! estimate from the content streamed so far: never zero, and never more
//! than the reservation.
//!
//! ```
//! use http::{Request, Response};
//! use tollgate::budget::{BudgetLayer, Ledger, Limit, ModelPrice, Period, Price, Prices, Scope};
//! use tollgate::read_request::{Identified, ReadRequestLayer};
//! use tollgate::{Body, Error, LlmRequest};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let prices = Prices::new().group("m", ModelPrice {
//!     price: Price { input_per_mtok: 1_000_000, output_per_mtok: 4_000_000, cached_input_per_mtok: None, cache_write_per_mtok: None },
//!     max_output_tokens: 1_000,
//! });
//! // Each team may spend $0.01 a day.
//! let budgets = |req: &LlmRequest<&'static str>| {
//!     vec![Limit { scope: Scope::Team((*req.body().identity()).into()), max: 10_000, period: Period::Daily }]
//! };
//! let layer = BudgetLayer::new(Ledger::default(), budgets, prices);
//! let svc = ServiceBuilder::new()
//!     .layer(ReadRequestLayer::new(1 << 20))
//!     .layer(layer.clone())
//!     .service(service_fn(|_req: LlmRequest<&'static str>| async {
//!         Ok::<_, Error>(Response::new(Body::full(r#"{"usage":{"prompt_tokens":3,"completion_tokens":10}}"#)))
//!     }));
//! let call = |max_tokens: u32| {
//!     let body = format!(r#"{{"model":"m","max_tokens":{max_tokens}}}"#);
//!     let req = Request::post("/v1/chat/completions")
//!         .body(Identified { identity: "search", body: Body::full(body) })
//!         .unwrap();
//!     svc.clone().oneshot(req)
//! };
//! // $0.004 reserved for 1000 output tokens; 43 micro-dollars charged.
//! let answer = call(1_000).await.unwrap();
//! http_body_util::BodyExt::collect(answer.into_body()).await.unwrap();
//! let usage = layer.ledger().usage(&Scope::Team("search".into()), Period::Daily);
//! assert_eq!((usage.spent, usage.reserved), (43, 0));
//! // 3000 output tokens would need $0.012: more than the whole budget.
//! assert_eq!(call(3_000).await.unwrap_err().status(), 402);
//! # }
//! ```

mod layer;
mod ledger;
pub(crate) mod meter;
pub(crate) mod period;
pub mod spend;
mod store;
pub(crate) mod usage;

pub use jiff::{Timestamp, tz::TimeZone};
pub use layer::{Budget, BudgetLayer, BudgetsOf, ModelPrice, Prices, ResponseFuture};
#[cfg(all(test, feature = "redis"))]
pub(crate) use ledger::prop;
pub use ledger::{Ledger, Limit, Micros, Refusal, Reservation, Scope, Usage, usd, usd_value};
pub use meter::{EVENT_CAP, Meter, Metered, Settlement};
pub use period::{Clock, ManualClock, Period, SystemClock, Window};
#[cfg(feature = "postgres")]
pub use spend::PostgresSpendStore;
#[cfg(feature = "sqlite")]
pub use spend::SqliteSpendStore;
pub use spend::{
    Bucket, Cursor, GroupBy, MAX_BUCKETS, MAX_SERIES, MemorySpendStore, PendingSpend, Series,
    SeriesName, SeriesPoint, SeriesQuery, SeriesRangeError, SpendError, SpendFuture, SpendPage,
    SpendQuery, SpendRecord, SpendStore, SpendTotals, SpendWriter, Spender, restore_ledger,
    restore_windows,
};
pub use store::{BudgetStore, EitherReserve, EitherStore, UsageSource};
pub use usage::{Price, TokenUsage};
