//! `Reload`: a service whose inner service can be replaced while it serves
//! (a configuration reload), atomically, without failing a request.
//!
//! [`Reload::new`] wraps a service and returns a [`ReloadHandle`]; the
//! handle's [`swap`](ReloadHandle::swap) puts a new inner service in place
//! with one atomic pointer swap ([`arc-swap`](https://docs.rs/arc-swap)).
//! Each call clones the inner service current at that instant and drives it
//! to the end: a request, and a streaming response body the inner service
//! returned, keep the stack they started with, whatever is swapped in
//! meanwhile; the next call gets the new one. The old stack is dropped when
//! its last request ends. Nothing is refused and nothing waits: the swap is
//! lock-free for the callers.
//!
//! Readiness is the inner service's, checked inside the response future on
//! the clone the call took ([`Oneshot`]), so `poll_ready` is always ready:
//! right for the stacks axum serves (which never wait in `poll_ready`); a
//! backpressure signal from the inner service becomes a wait inside the
//! call.
//!
//! What should outlive a swap (counters, cooldowns, rate-limit buckets, key
//! stores) belongs to objects both stacks share: build the new stack from the
//! same state objects, not copies. The reference gateway does so on `SIGHUP`
//! (see docs/configuration.md, "Reloading").
//!
//! ```
//! use std::convert::Infallible;
//! use tollgate::reload::Reload;
//! use tower::{Service, ServiceExt, service_fn};
//!
//! /// A stand-in for a whole stack built from one configuration.
//! fn stack(v: &'static str) -> impl Service<&'static str, Response = String, Error = Infallible> + Clone {
//!     service_fn(move |name: &'static str| async move { Ok::<_, Infallible>(format!("{v} {name}")) })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let (svc, handle) = Reload::new(stack("v1"));
//! assert_eq!(svc.clone().oneshot("a").await.unwrap(), "v1 a");
//!
//! // A call made before the swap keeps v1, even if it runs after; the next get v2.
//! let mut caller = svc.clone();
//! let started = caller.ready().await.unwrap().call("b");
//! handle.swap(stack("v2"));
//! assert_eq!(svc.clone().oneshot("c").await.unwrap(), "v2 c");
//! assert_eq!(started.await.unwrap(), "v1 b");
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower::Service;
use tower::util::Oneshot;

struct Shared<S> {
    current: ArcSwap<S>,
    /// How many swaps so far (0: the service given to `new`).
    generation: AtomicU64,
}

/// Serves through the inner service current at each call (see the module
/// docs). Clones share the inner service and see every swap.
pub struct Reload<S> {
    shared: Arc<Shared<S>>,
}

/// Replaces the inner service of a [`Reload`] (and of all its clones).
pub struct ReloadHandle<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Reload<S> {
    /// Serves through `inner` until a [`ReloadHandle::swap`].
    pub fn new(inner: S) -> (Self, ReloadHandle<S>) {
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(inner),
            generation: AtomicU64::new(0),
        });
        (
            Reload {
                shared: shared.clone(),
            },
            ReloadHandle { shared },
        )
    }

    /// Another handle on this service.
    pub fn handle(&self) -> ReloadHandle<S> {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }

    /// How many swaps were made (0 before the first).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// A reference that does not keep the service alive: for an inner
    /// service that must reach the current one (without a cycle).
    pub fn downgrade(&self) -> WeakReload<S> {
        WeakReload(Arc::downgrade(&self.shared))
    }
}

/// A [`Reload`] that does not keep it alive ([`Reload::downgrade`]).
pub struct WeakReload<S>(Weak<Shared<S>>);

impl<S> WeakReload<S> {
    /// The service, while anything else still holds it.
    pub fn upgrade(&self) -> Option<Reload<S>> {
        self.0.upgrade().map(|shared| Reload { shared })
    }
}

impl<S> Clone for WeakReload<S> {
    fn clone(&self) -> Self {
        WeakReload(self.0.clone())
    }
}

impl<S> fmt::Debug for WeakReload<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakReload").finish_non_exhaustive()
    }
}

impl<S> ReloadHandle<S> {
    /// Puts `next` in place for every call from now on; returns the inner
    /// service it replaces (requests already started keep their own clone
    /// of it).
    pub fn swap(&self, next: S) -> Arc<S> {
        let previous = self.shared.current.swap(Arc::new(next));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        previous
    }

    /// The inner service now in place.
    pub fn current(&self) -> Arc<S> {
        self.shared.current.load_full()
    }

    /// How many swaps were made (0 before the first).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }
}

impl<S> Clone for Reload<S> {
    fn clone(&self) -> Self {
        Reload {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Clone for ReloadHandle<S> {
    fn clone(&self) -> Self {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S> fmt::Debug for Reload<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reload")
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<S> fmt::Debug for ReloadHandle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadHandle")
            .field(
                "generation",
                &self.shared.generation.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for Reload<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Oneshot<S, R>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness belongs to the clone each call takes (see the module docs).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: R) -> Self::Future {
        let inner = S::clone(&self.shared.current.load());
        Oneshot::new(inner, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tokio::sync::oneshot;
    use tower::{ServiceExt, service_fn};

    type Gate = Arc<Mutex<Option<oneshot::Receiver<()>>>>;

    /// An inner service answering `"<tag> <request>"`; the first call of
    /// one built with a gate waits for it to open.
    fn tagged(
        tag: &'static str,
        gate: Gate,
    ) -> impl Service<u32, Response = String, Error = Infallible, Future: Send> + Clone + Send {
        service_fn(move |n: u32| {
            let gate = gate.lock().unwrap().take();
            async move {
                if let Some(g) = gate {
                    let _ = g.await;
                }
                Ok::<_, Infallible>(format!("{tag} {n}"))
            }
        })
    }

    #[tokio::test]
    async fn a_call_keeps_the_service_it_started_with() {
        let (open, gate) = oneshot::channel();
        let (svc, handle) = Reload::new(tagged("old", Arc::new(Mutex::new(Some(gate)))));
        // Started (and pending) on the old service.
        let started = tokio::spawn(svc.clone().oneshot(1));
        tokio::task::yield_now().await;
        let replaced = handle.swap(tagged("new", Gate::default()));
        assert_eq!(handle.generation(), 1);
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), "new 2");
        assert!(!started.is_finished());
        open.send(()).unwrap();
        assert_eq!(started.await.unwrap().unwrap(), "old 1");
        // The old service is still usable by whoever holds it.
        assert_eq!((*replaced).clone().oneshot(3).await.unwrap(), "old 3");
    }

    #[tokio::test]
    async fn every_clone_and_handle_sees_the_swap() {
        let (svc, handle) = Reload::new(tagged("a", Gate::default()));
        let other = svc.clone();
        let second = svc.handle();
        assert_eq!(handle.generation(), 0);
        second.swap(tagged("b", Gate::default()));
        assert_eq!(other.clone().oneshot(1).await.unwrap(), "b 1");
        assert_eq!(handle.generation(), 1);
        handle.swap(tagged("c", Gate::default()));
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), "c 2");
        assert_eq!((*second.current()).clone().oneshot(3).await.unwrap(), "c 3");
        assert!(format!("{svc:?}").contains("generation: 2"));
        assert_eq!(svc.generation(), 2);
        let weak = svc.downgrade();
        assert!(weak.upgrade().is_some());
        drop((svc, other, handle, second));
        assert!(
            weak.upgrade().is_none(),
            "a weak reference keeps nothing alive"
        );
    }

    /// Not ready on its first poll (it wakes at once); a call without a
    /// ready poll before it panics.
    #[derive(Clone, Default)]
    struct Slow {
        polled: bool,
    }

    impl Service<u32> for Slow {
        type Response = u32;
        type Error = Infallible;
        type Future = std::future::Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.polled {
                Poll::Ready(Ok(()))
            } else {
                self.polled = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }

        fn call(&mut self, n: u32) -> Self::Future {
            assert!(self.polled, "called before it was ready");
            std::future::ready(Ok(n * n))
        }
    }

    #[tokio::test]
    async fn readiness_is_driven_inside_the_call() {
        let (mut svc, _handle) = Reload::new(Slow::default());
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        assert_eq!(svc.call(7).await.unwrap(), 49);
    }

    #[tokio::test]
    async fn concurrent_calls_during_swaps_all_succeed() {
        let (svc, handle) = Reload::new(tagged("g0", Gate::default()));
        let tags = ["g1", "g2", "g3", "g4", "g5"];
        let callers: Vec<_> = (0..8)
            .map(|i| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for n in 0..200u32 {
                        let answer = svc.clone().oneshot(n).await.unwrap();
                        assert!(answer.ends_with(&format!(" {n}")), "{answer}");
                        seen.push(answer.split(' ').next().unwrap().to_owned());
                        if n % 16 == i {
                            tokio::task::yield_now().await;
                        }
                    }
                    seen
                })
            })
            .collect();
        for tag in tags {
            tokio::task::yield_now().await;
            handle.swap(tagged(tag, Gate::default()));
        }
        for c in callers {
            let seen = c.await.unwrap();
            // Generations only move forward for one caller.
            let order: Vec<usize> = seen
                .iter()
                .map(|t| t[1..].parse::<usize>().unwrap())
                .collect();
            assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
        }
        assert_eq!(svc.clone().oneshot(0).await.unwrap(), "g5 0");
    }
}
