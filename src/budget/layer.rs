//! The `Budget` layer: reserve a request's worst case on each of its
//! budgets, refuse with 402 when one cannot cover it, settle the real cost
//! when the answer ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use http::header::CONTENT_TYPE;
use pin_project::pin_project;
use tower::{Layer, Service};

use super::ledger::{Ledger, Limit, Reservation};
use super::meter::{Meter, Metered, Settlement};
use super::spend::{PendingSpend, SpendWriter, Spender};
use super::store::BudgetStore;
use super::usage::Price;
use crate::body::Body;
use crate::error::Error;
use crate::{LlmRequest, Served};

/// The budgets a request is checked and charged against (key, team,
/// global: any it belongs to); empty means "no budget".
///
/// Implemented by every `Fn(&LlmRequest<I>) -> Vec<Limit>` (whose requests'
/// spend records then name no key or team).
pub trait BudgetsOf<I> {
    /// The budgets of `req`.
    fn budgets(&self, req: &LlmRequest<I>) -> Vec<Limit>;

    /// Whose spend `req` is, for its [`SpendRecord`](super::SpendRecord):
    /// the key's public id and its team (never the key itself). Asked only
    /// when the layer writes spend records ([`BudgetLayer::spend`]).
    fn spender(&self, req: &LlmRequest<I>) -> Spender {
        let _ = req;
        Spender::default()
    }

    /// Whether `req` may be served at all, asked before its budgets: an
    /// error refuses it as it is (e.g. 403 `end_user_blocked` for a
    /// blocked customer). The default admits every request.
    fn admit(&self, req: &LlmRequest<I>) -> Result<(), Error> {
        let _ = req;
        Ok(())
    }
}

impl<F, I> BudgetsOf<I> for F
where
    F: Fn(&LlmRequest<I>) -> Vec<Limit>,
{
    fn budgets(&self, req: &LlmRequest<I>) -> Vec<Limit> {
        self(req)
    }
}

/// A model group's price and output cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelPrice {
    /// The price.
    pub price: Price,
    /// The output cap reserved when a request gives no `max_tokens`.
    pub max_output_tokens: u64,
}

/// Prices by model group, with per-deployment overrides.
///
/// A request reserves at the dearest of its group's price and its
/// deployments' overrides (whichever serves it, the reservation covers it),
/// and settles at the price of the deployment that served (the
/// [`Served`] response extension: its provider name and upstream model), or
/// else at the group's.
#[derive(Clone, Debug, Default)]
pub struct Prices {
    groups: crate::Map<String, ModelPrice>,
    /// Per group: `(provider, upstream model, price)`.
    deployments: crate::Map<String, Vec<(String, String, Price)>>,
}

impl Prices {
    /// No prices: every model is free (budgets still refuse once used up).
    pub fn new() -> Self {
        Prices::default()
    }

    /// Sets a model group's price.
    pub fn group(mut self, name: impl Into<String>, price: ModelPrice) -> Self {
        self.groups.insert(name.into(), price);
        self
    }

    /// Overrides the price of the deployment of `group` that `provider`
    /// serves with the upstream model `model` (the names a [`Served`]
    /// extension carries: the provider's name and the model sent upstream).
    pub fn deployment(
        mut self,
        group: impl Into<String>,
        provider: impl Into<String>,
        model: impl Into<String>,
        price: Price,
    ) -> Self {
        let (provider, model) = (provider.into(), model.into());
        let list = self.deployments.entry(group.into()).or_default();
        list.retain(|(p, m, _)| *p != provider || *m != model);
        list.push((provider, model, price));
        self
    }

    /// What a request to `group` reserves: `(price, default output cap)`.
    fn reserve_price(&self, group: &str) -> (Price, u64) {
        let base = self.groups.get(group).copied().unwrap_or_default();
        let mut price = base.price;
        for (_, _, p) in self.deployments.get(group).into_iter().flatten() {
            price.input_per_mtok = price.input_per_mtok.max(p.input_per_mtok);
            price.output_per_mtok = price.output_per_mtok.max(p.output_per_mtok);
            price.cached_input_per_mtok =
                match (price.cached_input_per_mtok, p.cached_input_per_mtok) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            price.cache_write_per_mtok = match (price.cache_write_per_mtok, p.cache_write_per_mtok)
            {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        (price, base.max_output_tokens)
    }

    /// The price a call to `group` served by `served` is settled at.
    /// The price a request to `group` that `served` answered is settled
    /// at (that deployment's own price, else the group's): what `Budget`
    /// charges, for other observers of the answer (the `otel` span's cost).
    pub fn price_of(&self, group: &str, served: Option<&Served>) -> Price {
        self.settle_price(group, served)
    }

    fn settle_price(&self, group: &str, served: Option<&Served>) -> Price {
        served
            .and_then(|s| {
                self.deployments
                    .get(group)?
                    .iter()
                    .find(|(p, m, _)| **p == *s.provider && **m == *s.model)
            })
            .map(|(_, _, p)| *p)
            .or_else(|| self.groups.get(group).map(|g| g.price))
            .unwrap_or_default()
    }
}

/// Builds [`Budget`] services sharing one [`BudgetStore`] (by default the
/// in-process [`Ledger`]).
pub struct BudgetLayer<B, L = Ledger> {
    ledger: L,
    budgets: Arc<B>,
    prices: Arc<Prices>,
    upstream_usage: bool,
    spend: Option<SpendWriter>,
    /// `tollgate_spend_micros_total`, registered once (see `tollgate::metrics`).
    spent: crate::metrics::Counter,
}

impl<B, L: Clone> Clone for BudgetLayer<B, L> {
    fn clone(&self) -> Self {
        BudgetLayer {
            ledger: self.ledger.clone(),
            budgets: self.budgets.clone(),
            prices: self.prices.clone(),
            upstream_usage: self.upstream_usage,
            spend: self.spend.clone(),
            spent: self.spent.clone(),
        }
    }
}

impl<B, L: fmt::Debug> fmt::Debug for BudgetLayer<B, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetLayer")
            .field("ledger", &self.ledger)
            .field("prices", &self.prices)
            .finish_non_exhaustive()
    }
}

impl<B, L> BudgetLayer<B, L> {
    /// Budgets named by `budgets`, kept in `ledger` (a [`Ledger`], or any
    /// [`BudgetStore`]), priced by `prices`.
    pub fn new(ledger: L, budgets: B, prices: Prices) -> Self {
        BudgetLayer {
            ledger,
            budgets: Arc::new(budgets),
            prices: Arc::new(prices),
            upstream_usage: false,
            spend: None,
            spent: crate::metrics::record::spent(),
        }
    }

    /// Writes a [`SpendRecord`](super::SpendRecord) of every request that
    /// reaches the layer through `writer` (see [`spend`](super::spend)):
    /// requests without budgets are then metered too.
    pub fn spend(mut self, writer: SpendWriter) -> Self {
        self.spend = Some(writer);
        self
    }

    /// The spend writer, if the layer writes spend records.
    pub fn spend_writer(&self) -> Option<&SpendWriter> {
        self.spend.as_ref()
    }

    /// Says that the provider asks upstreams for `stream_options.include_usage`
    /// on chat and completions streams
    /// ([`ProviderBuilder::include_usage`](crate::provider::ProviderBuilder::include_usage)):
    /// streams are then charged from the reported usage, and the usage chunk
    /// is removed from the stream of a client that did not ask for it.
    pub fn upstream_includes_usage(mut self, on: bool) -> Self {
        self.upstream_usage = on;
        self
    }

    /// The ledger (for reporting spend).
    pub fn ledger(&self) -> &L {
        &self.ledger
    }
}

impl<S, B, L: Clone> Layer<S> for BudgetLayer<B, L> {
    type Service = Budget<S, B, L>;

    fn layer(&self, inner: S) -> Budget<S, B, L> {
        Budget {
            inner,
            layer: self.clone(),
        }
    }
}

/// Reserves, refuses or settles each request's cost; see the [module docs](super).
pub struct Budget<S, B, L = Ledger> {
    inner: S,
    layer: BudgetLayer<B, L>,
}

impl<S: Clone, B, L: Clone> Clone for Budget<S, B, L> {
    fn clone(&self) -> Self {
        Budget {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, B, L: fmt::Debug> fmt::Debug for Budget<S, B, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S, B, L, I> Service<LlmRequest<I>> for Budget<S, B, L>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error> + Clone,
    B: BudgetsOf<I>,
    L: BudgetStore,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture<S, LlmRequest<I>, L::Reserve>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: LlmRequest<I>) -> Self::Future {
        if let Err(error) = self.layer.budgets.admit(&req) {
            return ResponseFuture {
                kind: Kind::Refused { error: Some(error) },
            };
        }
        let limits = self.layer.budgets.budgets(&req);
        let summary = req.body().summary();
        let hide_usage = self.layer.upstream_usage
            && summary.stream
            && summary.include_usage != Some(true)
            && summary.endpoint.stream_ends_with_done();
        let record = self.layer.spend.as_ref().map(|writer| {
            PendingSpend::start(
                writer.clone(),
                req.headers(),
                self.layer.budgets.spender(&req),
                &summary.model,
                self.layer.ledger.now(),
            )
        });
        if limits.is_empty() && record.is_none() && !hide_usage {
            return ResponseFuture {
                kind: Kind::Calling {
                    fut: self.inner.call(req),
                    held: None,
                },
            };
        }
        let (price, default_output) = self.layer.prices.reserve_price(&summary.model);
        let prompt_tokens = summary.prompt_tokens_estimate();
        let pending = Pending {
            hide_usage,
            record,
            prompt_tokens,
            group: summary.model.clone(),
            prices: self.layer.prices.clone(),
            spent: self.layer.spent.clone(),
        };
        if limits.is_empty() {
            // Metered for its spend record or its hidden usage chunk only.
            return ResponseFuture {
                kind: Kind::Calling {
                    fut: self.inner.call(req),
                    held: Some(pending.held(None)),
                },
            };
        }
        let output = summary
            .max_output_tokens
            .unwrap_or(default_output)
            .saturating_mul(summary.n.max(1));
        let amount = price.worst_case(prompt_tokens, output);
        if let Some(reserved) = self.layer.ledger.reserve_now(&limits, amount) {
            // Decided at once (the in-process ledger): no clone of the inner
            // service, no waiting state.
            return ResponseFuture {
                kind: match reserved {
                    Ok(r) => Kind::Calling {
                        fut: self.inner.call(req),
                        held: Some(pending.held(Some(r))),
                    },
                    Err(error) => Kind::Refused {
                        error: Some(pending.refused(error)),
                    },
                },
            };
        }
        let reserve = self.layer.ledger.reserve(&limits, amount);
        // The reservation may take a round trip: the readied service goes
        // into the future, a clone stays for the next call.
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        ResponseFuture {
            kind: Kind::Reserving {
                reserve,
                call: Some((inner, req, pending)),
            },
        }
    }
}

/// What a request needs settled, until its reservation is made.
struct Pending {
    hide_usage: bool,
    record: Option<PendingSpend>,
    prompt_tokens: u64,
    group: String,
    prices: Arc<Prices>,
    spent: crate::metrics::Counter,
}

impl Pending {
    /// The store said no (402, or 503 when it cannot answer): logged and
    /// recorded.
    fn refused(self, error: Error) -> Error {
        tracing::info!(
            model = %self.group,
            reason = %error.reason(),
            scope = error.metadata().get("scope").and_then(|v| v.as_str()).unwrap_or(""),
            "budget refused a request"
        );
        if let Some(record) = self.record {
            record.failed(&error);
        }
        error
    }

    fn held(self, reservation: Option<Reservation>) -> Held {
        Held {
            hide_usage: self.hide_usage,
            reservation,
            record: self.record,
            prompt_tokens: self.prompt_tokens,
            group: self.group,
            prices: self.prices,
            spent: self.spent,
        }
    }
}

struct Held {
    hide_usage: bool,
    reservation: Option<Reservation>,
    record: Option<PendingSpend>,
    prompt_tokens: u64,
    group: String,
    prices: Arc<Prices>,
    spent: crate::metrics::Counter,
}

/// The future of [`Budget`]: it waits for the [`BudgetStore`]'s
/// reservation, then calls; the reservation travels inside it, then inside
/// the response body; a failed call releases it.
#[pin_project]
pub struct ResponseFuture<S: Service<R>, R, F> {
    #[pin]
    kind: Kind<S, R, F>,
}

#[pin_project(project = KindProj)]
enum Kind<S: Service<R>, R, F> {
    Refused {
        error: Option<Error>,
    },
    Reserving {
        #[pin]
        reserve: F,
        call: Option<(S, R, Pending)>,
    },
    Calling {
        #[pin]
        fut: S::Future,
        held: Option<Held>,
    },
}

impl<S, R, F> Future for ResponseFuture<S, R, F>
where
    S: Service<R, Response = Response<Body>, Error = Error>,
    F: Future<Output = Result<Reservation, Error>>,
{
    type Output = Result<Response<Body>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let KindProj::Reserving { reserve, call } = self.as_mut().project().kind.project() {
            let reserved = ready!(reserve.poll(cx));
            let (mut inner, req, pending) = call.take().expect("polled after completion");
            let reservation = match reserved {
                Ok(r) => r,
                Err(error) => return Poll::Ready(Err(pending.refused(error))),
            };
            let fut = inner.call(req);
            self.as_mut().project().kind.set(Kind::Calling {
                fut,
                held: Some(pending.held(Some(reservation))),
            });
        }
        match self.project().kind.project() {
            KindProj::Reserving { .. } => unreachable!("left above"),
            KindProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
            KindProj::Calling { fut, held } => {
                // An error releases the reservation and records the failure.
                let res = match ready!(fut.poll(cx)) {
                    Ok(res) => res,
                    Err(e) => {
                        if let Some(record) = held.take().and_then(|h| h.record) {
                            record.failed(&e);
                        }
                        return Poll::Ready(Err(e));
                    }
                };
                let Some(mut held) = held.take() else {
                    return Poll::Ready(Ok(res));
                };
                if let Some(record) = &mut held.record {
                    record.answered(&res);
                }
                let sse = res
                    .headers()
                    .get(CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                let price = held
                    .prices
                    .settle_price(&held.group, res.extensions().get::<Served>());
                let settlement = Settlement {
                    reservation: held.reservation,
                    price,
                    prompt_tokens: held.prompt_tokens,
                    record: held.record,
                    spent: held.spent,
                };
                let meter = if sse { Meter::sse() } else { Meter::json() };
                Poll::Ready(Ok(res.map(|body| {
                    let metered = Metered::new(body, meter, settlement);
                    if held.hide_usage && sse {
                        Body::new(metered.hide_usage_chunk())
                    } else {
                        Body::new(metered)
                    }
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Period, Scope};
    use crate::read_request::Parsed;
    use http::Request;
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    fn req(body: &str) -> LlmRequest<&'static str> {
        let parsed = Parsed::parse("/v1/chat/completions", bytes::Bytes::from(body.to_owned()))
            .unwrap()
            .with_identity("k1");
        Request::post("/v1/chat/completions").body(parsed).unwrap()
    }

    fn limits(req: &LlmRequest<&'static str>) -> Vec<Limit> {
        vec![
            Limit {
                scope: Scope::Key((*req.body().identity()).into()),
                max: 1_000,
                period: Period::Monthly,
            },
            Limit {
                scope: Scope::Global,
                max: 1_000_000,
                period: Period::Total,
            },
        ]
    }

    type ByKey = fn(&LlmRequest<&'static str>) -> Vec<Limit>;

    fn layer() -> BudgetLayer<ByKey> {
        let prices = Prices::new().group(
            "m",
            ModelPrice {
                price: Price {
                    input_per_mtok: 1_000_000,
                    output_per_mtok: 2_000_000,
                    cached_input_per_mtok: None,
                    cache_write_per_mtok: None,
                },
                max_output_tokens: 100,
            },
        );
        BudgetLayer::new(Ledger::default(), limits as ByKey, prices)
    }

    fn answer(_req: LlmRequest<&'static str>) -> std::future::Ready<Result<Response<Body>, Error>> {
        std::future::ready(Ok(Response::new(Body::full(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2.0}}"#,
        ))))
    }

    #[cfg(feature = "metrics")]
    #[tokio::test]
    async fn settlements_add_their_charge_to_the_spend_counter() {
        use crate::metrics::SPEND_MICROS_TOTAL;
        use crate::metrics::tests::Seen;
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let svc = layer().layer(service_fn(answer));
        for _ in 0..2 {
            let res = svc.clone().oneshot(req(r#"{"model":"m"}"#)).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
        // A refusal charges nothing: 2,000 output tokens are over the key's 1,000.
        let refused = svc.oneshot(req(r#"{"model":"m","max_tokens":2000}"#)).await;
        assert_eq!(refused.unwrap_err().status(), 402);
        let mut seen = Seen::default();
        // Each answer: 5 prompt tokens at $1/M + 2 output at $2/M = 9 micros.
        assert_eq!(
            seen.update(&snapshotter).counter(SPEND_MICROS_TOTAL, &[]),
            18
        );
    }

    #[tokio::test]
    async fn reserves_the_worst_case_and_settles_the_real_cost() {
        let layer = layer();
        let key = Scope::Key("k1".into());
        // 4 prompt tokens + 300 output (max_tokens 150 × n 2): 4 + 600 micros.
        let svc = layer.layer(service_fn(answer));
        let res = svc
            .clone()
            .oneshot(req(
                r#"{"model":"m","messages":"abcdefghijklmn","max_tokens":150,"n":2}"#,
            ))
            .await
            .unwrap();
        assert_eq!(layer.ledger().usage(&key, Period::Monthly).reserved, 604);
        // Another such request would take the key past 1000.
        let e = svc
            .clone()
            .oneshot(req(
                r#"{"model":"m","messages":"abcdefghijklmn","max_tokens":150,"n":2}"#,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 402);
        assert_eq!(e.metadata()["scope"], "key");
        res.into_body().collect().await.unwrap();
        let u = layer.ledger().usage(&key, Period::Monthly);
        assert_eq!((u.spent, u.reserved), (5 + 2 * 2, 0));
        // The default output cap (100) is reserved when the request gives none.
        let _res = svc.oneshot(req(r#"{"model":"m"}"#)).await.unwrap();
        assert_eq!(
            layer.ledger().usage(&key, Period::Monthly).reserved,
            1 + 200
        );
    }

    /// A hook's `admit` refuses before anything is reserved or called.
    #[tokio::test]
    async fn a_request_the_hook_refuses_reserves_nothing_and_calls_nothing() {
        struct Blocks;
        impl BudgetsOf<&'static str> for Blocks {
            fn budgets(&self, req: &LlmRequest<&'static str>) -> Vec<Limit> {
                limits(req)
            }
            fn admit(&self, req: &LlmRequest<&'static str>) -> Result<(), Error> {
                match req.body().summary().end_user.as_deref() {
                    Some("blocked") => Err(Error::new(crate::Reason::EndUserBlocked, "no")),
                    _ => Ok(()),
                }
            }
        }
        let called = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = called.clone();
        let layer = BudgetLayer::new(Ledger::default(), Blocks, layer().prices.as_ref().clone());
        let svc = layer.layer(service_fn(move |r: LlmRequest<&'static str>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            answer(r)
        }));
        let e = svc
            .clone()
            .oneshot(req(r#"{"model":"m","user":"blocked"}"#))
            .await
            .unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (403, crate::Reason::EndUserBlocked)
        );
        assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 0);
        let u = layer
            .ledger()
            .usage(&Scope::Key("k1".into()), Period::Monthly);
        assert_eq!((u.spent, u.reserved), (0, 0));
        let res = svc.oneshot(req(r#"{"model":"m","user":"other"}"#)).await;
        assert!(res.is_ok());
        assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failed_calls_cost_nothing_and_unbudgeted_requests_pass() {
        let layer = layer();
        let svc = layer.layer(service_fn(|_r: LlmRequest<&'static str>| async {
            Err::<Response<Body>, _>(Error::new(crate::Reason::UpstreamError, "down"))
        }));
        assert!(svc.oneshot(req(r#"{"model":"m"}"#)).await.is_err());
        let u = layer.ledger().usage(&Scope::Global, Period::Total);
        assert_eq!((u.spent, u.reserved), (0, 0));
        let free = BudgetLayer::new(
            Ledger::default(),
            |_r: &LlmRequest<&'static str>| Vec::new(),
            Prices::new(),
        )
        .layer(service_fn(answer));
        assert!(free.oneshot(req(r#"{"model":"m"}"#)).await.is_ok());
    }

    #[tokio::test]
    async fn one_spend_record_per_request_answered_refused_failed_or_unbudgeted() {
        use crate::budget::{MemorySpendStore, SpendWriter};
        let store = MemorySpendStore::new();
        let writer = SpendWriter::spawn(store.clone(), 64, 8);
        struct Owned;
        impl BudgetsOf<&'static str> for Owned {
            fn budgets(&self, req: &LlmRequest<&'static str>) -> Vec<Limit> {
                match *req.body().identity() {
                    "free" => Vec::new(),
                    _ => limits(req),
                }
            }
            fn spender(&self, req: &LlmRequest<&'static str>) -> Spender {
                Spender {
                    key_id: Some((*req.body().identity()).into()),
                    team_id: Some("t".into()),
                    ..Spender::default()
                }
            }
        }
        let layer = BudgetLayer::new(Ledger::default(), Owned, layer().prices.as_ref().clone())
            .spend(writer.clone());
        let ok = layer.layer(service_fn(|_r: LlmRequest<&'static str>| async {
            let mut res = Response::new(Body::full(
                r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2.0}}"#,
            ));
            res.headers_mut()
                .insert(crate::router::ATTEMPTS_HEADER, http::HeaderValue::from(3));
            res.extensions_mut().insert(Served {
                provider: "dep-1".into(),
                model: "upstream-m".into(),
            });
            Ok::<_, Error>(res)
        }));
        let with_id = |body: &str, who: &'static str| {
            let mut r = req(body);
            *r.body_mut() = r.body().clone().with_identity(who);
            r.headers_mut()
                .insert("x-request-id", http::HeaderValue::from_static("req-1"));
            r
        };
        // Answered: the record is written when the body settles, not before.
        let res = ok
            .clone()
            .oneshot(with_id(r#"{"model":"m","max_tokens":100}"#, "k1"))
            .await
            .unwrap();
        writer.flush().await;
        assert!(store.is_empty(), "not settled yet");
        res.into_body().collect().await.unwrap();
        // Refused: 3 + 1000 output tokens × 2 is over the key's 1000.
        let e = ok
            .clone()
            .oneshot(with_id(r#"{"model":"m","max_tokens":1000}"#, "k1"))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 402);
        // Without any budget: recorded all the same.
        let res = ok
            .clone()
            .oneshot(with_id(r#"{"model":"m"}"#, "free"))
            .await
            .unwrap();
        drop(res); // a client that went away: settled on drop, estimated
        // Failed upstream: status of the error, nothing charged.
        let failing = layer.layer(service_fn(|_r: LlmRequest<&'static str>| async {
            Err::<Response<Body>, _>(
                Error::new(crate::Reason::UpstreamError, "down").with_provider("dep-2".into()),
            )
        }));
        failing
            .oneshot(with_id(r#"{"model":"m"}"#, "k1"))
            .await
            .unwrap_err();
        writer.flush().await;
        let all = store.all();
        assert_eq!(all.len(), 4, "{all:#?}");
        let by_status = |s: u16| all.iter().filter(|r| r.status == s).collect::<Vec<_>>();
        let answered = by_status(200);
        assert_eq!(answered.len(), 2);
        let paid = answered
            .iter()
            .find(|r| r.key_id.as_deref() == Some("k1"))
            .unwrap();
        assert_eq!(paid.request_id, "req-1");
        assert_eq!(paid.team_id.as_deref(), Some("t"));
        assert_eq!((paid.prompt_tokens, paid.completion_tokens), (5, 2));
        assert_eq!(
            (paid.cost, paid.estimated, paid.attempts),
            (5 + 2 * 2, false, 3)
        );
        assert_eq!(paid.deployment.as_deref(), Some("dep-1"));
        assert_eq!(paid.served_model.as_deref(), Some("upstream-m"));
        let free = answered
            .iter()
            .find(|r| r.key_id.as_deref() == Some("free"))
            .unwrap();
        assert!(free.estimated && free.cost > 0, "{free:?}");
        let refused = by_status(402);
        assert_eq!(
            (refused.len(), refused[0].cost, refused[0].attempts),
            (1, 0, 0)
        );
        let failed = by_status(502);
        assert_eq!(
            (failed.len(), failed[0].cost, failed[0].attempts),
            (1, 0, 1)
        );
        // The ledger charged exactly what the records say.
        let spent = layer
            .ledger()
            .usage(&crate::budget::Scope::Key("k1".into()), Period::Monthly)
            .spent;
        assert_eq!(spent, paid.cost);
        assert_eq!(writer.dropped(), 0);
    }
}
