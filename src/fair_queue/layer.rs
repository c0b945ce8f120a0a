//! [`FairQueueLayer`].

use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::scheduler::Scheduler;
use super::{FairQueue, GroupStats, QueueSettings};

/// Applies [`FairQueue`]. Clones (and every service they build) share one
/// scheduler: one capacity per model group, one queue per tenant.
pub struct FairQueueLayer<T> {
    tenant_of: T,
    sched: Arc<Scheduler>,
}

impl<T> FairQueueLayer<T> {
    /// Queues by `tenant_of`'s tenant (see [`TenantOf`](super::TenantOf)) under `settings`.
    pub fn new(settings: QueueSettings, tenant_of: T) -> Self {
        FairQueueLayer {
            tenant_of,
            sched: Arc::new(Scheduler::new(settings)),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &QueueSettings {
        &self.sched.settings
    }

    /// In-flight and waiting requests per group and tenant, now. Groups with
    /// nothing in flight and nothing waiting are not listed.
    pub fn stats(&self) -> Vec<GroupStats> {
        self.sched.stats()
    }
}

impl<T: Clone> Clone for FairQueueLayer<T> {
    fn clone(&self) -> Self {
        FairQueueLayer {
            tenant_of: self.tenant_of.clone(),
            sched: self.sched.clone(),
        }
    }
}

impl<T> fmt::Debug for FairQueueLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FairQueueLayer")
            .field("settings", &self.sched.settings)
            .finish_non_exhaustive()
    }
}

impl<S, T: Clone> Layer<S> for FairQueueLayer<T> {
    type Service = FairQueue<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        FairQueue {
            inner,
            tenant_of: self.tenant_of.clone(),
            sched: self.sched.clone(),
        }
    }
}
