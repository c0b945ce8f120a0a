//! [`FairQueue`], the service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use tower::Service;

use super::future::ResponseFuture;
use super::scheduler::{Admission, Scheduler};
use super::{GroupStats, TenantOf};
use crate::LlmRequest;
use crate::body::Body;
use crate::error::{Error, Reason};

/// Queues requests per tenant in front of each model group's capacity (see
/// the [module docs](super)).
pub struct FairQueue<S, T> {
    pub(super) inner: S,
    pub(super) tenant_of: T,
    pub(super) sched: Arc<Scheduler>,
}

impl<S, T> FairQueue<S, T> {
    /// In-flight and waiting requests per group and tenant, now.
    pub fn stats(&self) -> Vec<GroupStats> {
        self.sched.stats()
    }
}

impl<S: Clone, T: Clone> Clone for FairQueue<S, T> {
    fn clone(&self) -> Self {
        FairQueue {
            inner: self.inner.clone(),
            tenant_of: self.tenant_of.clone(),
            sched: self.sched.clone(),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for FairQueue<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueue")
            .field("inner", &self.inner)
            .field("settings", &self.sched.settings)
            .finish_non_exhaustive()
    }
}

impl<S, T, I> Service<LlmRequest<I>> for FairQueue<S, T>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error> + Clone,
    T: TenantOf<I>,
{
    type Response = Response<Body>;
    type Error = Error;
    type Future = ResponseFuture<S, I>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Never wait here (axum does not): requests queue inside the future,
        // and the inner service's readiness is driven there too.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: LlmRequest<I>) -> Self::Future {
        let tenant = self.tenant_of.tenant(&req);
        let group = req.body().model();
        match self.sched.admit(group, &tenant) {
            Admission::Now(permit) => {
                ResponseFuture::calling(self.sched.clone(), self.inner.clone(), req, permit)
            }
            Admission::Wait(ticket, rx) => {
                ResponseFuture::waiting(self.sched.clone(), self.inner.clone(), req, ticket, rx)
            }
            Admission::Full(depth) => {
                let max = self.sched.settings.max_queue_per_tenant;
                tracing::info!(
                    tenant = %tenant.id,
                    group = %group,
                    depth,
                    reason = "queue_full",
                    "fair queue refused a request"
                );
                crate::metrics::record::queue_rejected(&tenant.id, "queue_full");
                let e = Error::new(
                    Reason::QueueFull,
                    format!(
                        "Too many of your requests are already waiting for `{group}` ({max} is the limit per client); retry when some have finished."
                    ),
                )
                .with_retry_after(self.sched.retry_after())
                .with_meta("queue_limit", max);
                ResponseFuture::refused(self.sched.clone(), e)
            }
        }
    }
}
