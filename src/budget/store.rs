//! Where budgets live: the [`BudgetStore`] trait, implemented by the
//! in-process [`Ledger`] and, with the `redis` feature, by
//! [`RedisLedger`](crate::state::RedisLedger) (one truth for several
//! gateway replicas).

use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project::pin_project;

use super::ledger::{Ledger, Limit, Micros, Reservation, Scope, Usage};
use super::period::{Period, Window};
use crate::error::Error;

/// Keeps budgets: reserves a request's worst case on all of its budgets or
/// none, and hands back a [`Reservation`] that settles (or releases, also
/// when dropped) without blocking.
///
/// The [`Ledger`] answers at once (its future is [`Ready`]: no allocation,
/// no wait); a shared store answers after a round trip. A refusal is 402
/// `budget_exceeded` (an [`Error`] from a
/// [`Refusal`](super::Refusal)); a store that cannot answer says 503
/// `state_unavailable`, and the request is never served unbudgeted.
///
/// ```
/// use tollgate::budget::{BudgetStore, Ledger, Limit, Period, Scope};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let store = Ledger::default();
/// let key = Limit { scope: Scope::Key("k1".into()), max: 100, period: Period::Daily };
/// let held = BudgetStore::reserve(&store, std::slice::from_ref(&key), 80).await.unwrap();
/// let refused = BudgetStore::reserve(&store, &[key], 30).await.unwrap_err();
/// assert_eq!(refused.status(), 402);
/// assert_eq!(held.settle(10), 10);
/// # }
/// ```
pub trait BudgetStore: Clone + fmt::Debug + Send + Sync + 'static {
    /// The answer to [`reserve`](Self::reserve).
    type Reserve: Future<Output = Result<Reservation, Error>> + Send + 'static;

    /// Reserves `amount` on every budget in `limits` (in the periods that
    /// contain now), or on none.
    fn reserve(&self, limits: &[Limit], amount: Micros) -> Self::Reserve;

    /// The same decision made at once, if this store can decide without
    /// waiting (the [`Ledger`] always can; a shared store cannot: `None`,
    /// the default). The `Budget` layer then calls its inner service
    /// directly instead of moving a clone of it into its future.
    fn reserve_now(&self, limits: &[Limit], amount: Micros) -> Option<Result<Reservation, Error>> {
        let _ = (limits, amount);
        None
    }

    /// The current instant by the store's clock (a request's start, as its
    /// spend record says; periods are computed from the same clock).
    fn now(&self) -> jiff::Timestamp;
}

impl BudgetStore for Ledger {
    type Reserve = Ready<Result<Reservation, Error>>;

    fn reserve(&self, limits: &[Limit], amount: Micros) -> Self::Reserve {
        ready(Ledger::reserve(self, limits, amount).map_err(Error::from))
    }

    fn reserve_now(&self, limits: &[Limit], amount: Micros) -> Option<Result<Reservation, Error>> {
        Some(Ledger::reserve(self, limits, amount).map_err(Error::from))
    }

    fn now(&self) -> jiff::Timestamp {
        Ledger::now(self)
    }
}

/// What a scope has spent and holds reserved in its current period,
/// wherever budgets live: the admin API's view (`GET /key/info`), object
/// safe so it can be shared as `Arc<dyn UsageSource>`.
pub trait UsageSource: Send + Sync + 'static {
    /// `scope`'s spend and reservations in the `period` that contains now;
    /// 503 `state_unavailable` when a shared store cannot answer.
    fn usage<'a>(
        &'a self,
        scope: &'a Scope,
        period: Period,
    ) -> Pin<Box<dyn Future<Output = Result<Usage, Error>> + Send + 'a>>;

    /// The window of `period` that contains now, by this source's clock
    /// and time zone (when a budget resets: `budget_reset_at`).
    fn window(&self, period: Period) -> Window;
}

impl UsageSource for Ledger {
    fn usage<'a>(
        &'a self,
        scope: &'a Scope,
        period: Period,
    ) -> Pin<Box<dyn Future<Output = Result<Usage, Error>> + Send + 'a>> {
        Box::pin(ready(Ok(Ledger::usage(self, scope, period))))
    }

    fn window(&self, period: Period) -> Window {
        period.window(self.now(), self.time_zone())
    }
}

impl<A: UsageSource, B: UsageSource> UsageSource for EitherStore<A, B> {
    fn usage<'a>(
        &'a self,
        scope: &'a Scope,
        period: Period,
    ) -> Pin<Box<dyn Future<Output = Result<Usage, Error>> + Send + 'a>> {
        match self {
            EitherStore::Left(a) => a.usage(scope, period),
            EitherStore::Right(b) => b.usage(scope, period),
        }
    }

    fn window(&self, period: Period) -> Window {
        match self {
            EitherStore::Left(a) => a.window(period),
            EitherStore::Right(b) => b.window(period),
        }
    }
}

/// One of two stores, chosen at run time (the reference gateway: the
/// [`Ledger`] or Redis, by its config).
#[derive(Clone, Debug)]
pub enum EitherStore<A, B> {
    /// The first kind.
    Left(A),
    /// The second kind.
    Right(B),
}

/// The future of [`EitherStore::reserve`].
#[pin_project(project = EitherProj)]
#[derive(Debug)]
pub enum EitherReserve<A, B> {
    /// The first store's.
    Left(#[pin] A),
    /// The second store's.
    Right(#[pin] B),
}

impl<A, B> Future for EitherReserve<A, B>
where
    A: Future<Output = Result<Reservation, Error>>,
    B: Future<Output = Result<Reservation, Error>>,
{
    type Output = Result<Reservation, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            EitherProj::Left(f) => f.poll(cx),
            EitherProj::Right(f) => f.poll(cx),
        }
    }
}

impl<A: BudgetStore, B: BudgetStore> BudgetStore for EitherStore<A, B> {
    type Reserve = EitherReserve<A::Reserve, B::Reserve>;

    fn reserve(&self, limits: &[Limit], amount: Micros) -> Self::Reserve {
        match self {
            EitherStore::Left(a) => EitherReserve::Left(a.reserve(limits, amount)),
            EitherStore::Right(b) => EitherReserve::Right(b.reserve(limits, amount)),
        }
    }

    fn reserve_now(&self, limits: &[Limit], amount: Micros) -> Option<Result<Reservation, Error>> {
        match self {
            EitherStore::Left(a) => a.reserve_now(limits, amount),
            EitherStore::Right(b) => b.reserve_now(limits, amount),
        }
    }

    fn now(&self) -> jiff::Timestamp {
        match self {
            EitherStore::Left(a) => a.now(),
            EitherStore::Right(b) => b.now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Period, Scope};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn either_store_reserves_in_the_chosen_ledger() {
        let (a, b) = (Ledger::default(), Ledger::default());
        let limit = Limit {
            scope: Scope::Global,
            max: 10,
            period: Period::Total,
        };
        let store: EitherStore<Ledger, Ledger> = EitherStore::Right(b.clone());
        let r = store
            .reserve(std::slice::from_ref(&limit), 10)
            .await
            .unwrap();
        assert_eq!(b.usage(&Scope::Global, Period::Total).reserved, 10);
        assert_eq!(a.usage(&Scope::Global, Period::Total).reserved, 0);
        let e = store.reserve(&[limit], 1).await.unwrap_err();
        assert_eq!(e.status(), 402);
        drop(r);
        assert_eq!(b.usage(&Scope::Global, Period::Total).reserved, 0);
    }

    #[test]
    fn a_store_reservation_closes_once_with_the_charge() {
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let s = seen.clone();
        let r = Reservation::from_fn(50, move |c| s.store(c, Ordering::SeqCst));
        assert_eq!(r.settle(70), 50, "never more than the reservation");
        assert_eq!(seen.load(Ordering::SeqCst), 50);
        let s = seen.clone();
        drop(Reservation::from_fn(50, move |c| {
            s.store(c, Ordering::SeqCst)
        }));
        assert_eq!(seen.load(Ordering::SeqCst), 0, "dropped: released");
    }
}
