//! The weighted fair queuing scheduler: start-time fair queuing (SFQ) over
//! per-tenant FIFO queues, one scheduler state per model group.
//!
//! Every request costs one slot. A tenant of weight `w` is charged
//! `SCALE / w` of virtual time per slot it gets. When a tenant becomes
//! backlogged its head request's start tag is `max(V, finish)`, where `V`
//! is the group's virtual time (the start tag of the last request granted)
//! and `finish` the tenant's own last finish tag; after each grant its next
//! head starts at its new finish tag. A freed slot goes to the head with the
//! smallest start tag (the older arrival on a tie). So while tenants are
//! backlogged, each gets slots in proportion to its weight, and a newly
//! arriving tenant starts at the current virtual time: it waits behind at
//! most one request of each other tenant per slot it is owed, never behind
//! another tenant's whole backlog.
//!
//! A request that finds a free slot and nobody waiting runs at once (the
//! scheduler is work-conserving) and is charged like any other, so a burst
//! that was let through on free capacity counts against its tenant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{GroupStats, QueueSettings, Tenant};

/// Virtual time one slot costs a tenant of weight 1.
const SCALE: u64 = 1 << 20;
/// Weights above this are taken as it (a slot then still costs 16 units).
pub(crate) const MAX_WEIGHT: u32 = 1 << 16;

fn cost(weight: u32) -> u64 {
    SCALE / u64::from(weight.clamp(1, MAX_WEIGHT))
}

pub(crate) struct Scheduler {
    pub(crate) settings: QueueSettings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    groups: crate::Map<Arc<str>, Group>,
    next_seq: u64,
}

struct Group {
    capacity: usize,
    in_flight: usize,
    /// Virtual time: the start tag of the last request granted.
    vtime: u64,
    /// The backlogged tenants' heads: (start tag, arrival, tenant).
    ready: BTreeSet<(u64, u64, Arc<str>)>,
    tenants: crate::Map<Arc<str>, TenantState>,
    /// Requests waiting, over all tenants.
    waiting: usize,
    /// Tenant count above which idle tenants are swept.
    sweep_at: usize,
}

struct TenantState {
    weight: u32,
    /// The finish tag of its last request granted.
    finish: u64,
    /// The start tag of its head request, while it has one.
    head_start: u64,
    queue: BTreeMap<u64, oneshot::Sender<()>>,
}

/// A waiting request's place.
#[derive(Debug)]
pub(crate) struct Ticket {
    pub(crate) group: Arc<str>,
    pub(crate) tenant: Arc<str>,
    seq: u64,
}

/// What [`Scheduler::admit`] decided.
pub(crate) enum Admission {
    /// A slot is free: run now.
    Now(Permit),
    /// Wait for the receiver to fire (the slot is then handed over).
    Wait(Ticket, oneshot::Receiver<()>),
    /// The tenant's queue is full; its depth.
    Full(usize),
}

/// One in-flight slot of a group; dropping it frees the slot (or hands it
/// to the next waiting request).
pub struct Permit {
    sched: Arc<Scheduler>,
    group: Arc<str>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("group", &self.group)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.sched.release(&self.group);
    }
}

impl Scheduler {
    pub(crate) fn new(settings: QueueSettings) -> Self {
        Scheduler {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent between statements that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request of `tenant` for `group` arrives.
    pub(crate) fn admit(self: &Arc<Self>, group: &str, tenant: &Tenant) -> Admission {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let (group_key, g) = match st.groups.get_key_value(group) {
            Some((k, _)) => {
                let k = k.clone();
                let g = st.groups.get_mut(&k).expect("present");
                (k, g)
            }
            None => {
                let k: Arc<str> = Arc::from(group);
                let g = st.groups.entry(k.clone()).or_insert_with(|| Group {
                    capacity: self.settings.capacity_for(group),
                    in_flight: 0,
                    vtime: 0,
                    ready: BTreeSet::new(),
                    tenants: crate::Map::default(),
                    waiting: 0,
                    sweep_at: 64,
                });
                (k, g)
            }
        };
        let vtime = g.vtime;
        let t = g
            .tenants
            .entry(tenant.id.clone())
            .or_insert_with(|| TenantState {
                weight: 1,
                finish: 0,
                head_start: 0,
                queue: BTreeMap::new(),
            });
        t.weight = tenant.weight.clamp(1, MAX_WEIGHT);
        if t.queue.is_empty() {
            t.head_start = vtime.max(t.finish);
        }
        if g.ready.is_empty() && g.in_flight < g.capacity {
            g.vtime = t.head_start;
            t.finish = t.head_start + cost(t.weight);
            g.in_flight += 1;
            return Admission::Now(Permit {
                sched: self.clone(),
                group: group_key,
            });
        }
        if t.queue.len() >= self.settings.max_queue_per_tenant {
            return Admission::Full(t.queue.len());
        }
        let (tx, rx) = oneshot::channel();
        if t.queue.is_empty() {
            g.ready.insert((t.head_start, seq, tenant.id.clone()));
        }
        t.queue.insert(seq, tx);
        let depth = t.queue.len();
        g.waiting += 1;
        if g.tenants.len() > g.sweep_at {
            g.sweep_idle_tenants();
        }
        tracing::debug!(
            tenant = %tenant.id,
            group = %group_key,
            depth,
            waiting = g.waiting,
            in_flight = g.in_flight,
            "fair queue: waiting for a slot"
        );
        Admission::Wait(
            Ticket {
                group: group_key,
                tenant: tenant.id.clone(),
                seq,
            },
            rx,
        )
    }

    /// The permit of a ticket whose grant was received.
    pub(crate) fn permit(self: &Arc<Self>, ticket: &Ticket) -> Permit {
        Permit {
            sched: self.clone(),
            group: ticket.group.clone(),
        }
    }

    /// Takes a waiting request out of its queue. `false` if it was not
    /// waiting any more: it has been granted a slot, which it now owns.
    pub(crate) fn leave(&self, ticket: &Ticket) -> bool {
        let mut st = self.lock();
        let Some(g) = st.groups.get_mut(&ticket.group) else {
            return false;
        };
        let Some(t) = g.tenants.get_mut(&ticket.tenant) else {
            return false;
        };
        let head = t.queue.first_key_value().map(|(k, _)| *k);
        if t.queue.remove(&ticket.seq).is_none() {
            return false;
        }
        g.waiting -= 1;
        if head == Some(ticket.seq) {
            g.ready
                .remove(&(t.head_start, ticket.seq, ticket.tenant.clone()));
            if let Some((&next, _)) = t.queue.first_key_value() {
                g.ready.insert((t.head_start, next, ticket.tenant.clone()));
            }
        }
        true
    }

    /// A slot of `group` is free: hand it to the next waiting request, or
    /// give it back.
    pub(crate) fn release(&self, group: &str) {
        let mut st = self.lock();
        let Some(g) = st.groups.get_mut(group) else {
            return;
        };
        while let Some((start, seq, id)) = g.ready.pop_first() {
            let Some(t) = g.tenants.get_mut(&id) else {
                continue;
            };
            let Some((first, tx)) = t.queue.pop_first() else {
                continue;
            };
            debug_assert_eq!(first, seq);
            g.waiting -= 1;
            g.vtime = start;
            t.finish = start + cost(t.weight);
            if let Some((&next, _)) = t.queue.first_key_value() {
                t.head_start = t.finish;
                g.ready.insert((t.finish, next, id));
            }
            if tx.send(()).is_ok() {
                return;
            }
        }
        g.in_flight = g.in_flight.saturating_sub(1);
        if g.in_flight == 0 && g.waiting == 0 {
            // Idle: forget the group (its virtual time starts over).
            st.groups.remove(group);
        }
    }

    pub(crate) fn stats(&self) -> Vec<GroupStats> {
        let st = self.lock();
        let mut out: Vec<GroupStats> = st
            .groups
            .iter()
            .map(|(name, g)| {
                let mut waiting: Vec<(String, usize)> = g
                    .tenants
                    .iter()
                    .filter(|(_, t)| !t.queue.is_empty())
                    .map(|(id, t)| (id.to_string(), t.queue.len()))
                    .collect();
                waiting.sort();
                GroupStats {
                    group: name.to_string(),
                    capacity: g.capacity,
                    in_flight: g.in_flight,
                    waiting,
                }
            })
            .collect();
        out.sort_by(|a, b| a.group.cmp(&b.group));
        out
    }

    pub(crate) fn retry_after(&self) -> Duration {
        self.settings.retry_after
    }

    #[cfg(test)]
    pub(crate) fn tenants_tracked(&self, group: &str) -> usize {
        self.lock().groups.get(group).map_or(0, |g| g.tenants.len())
    }
}

impl Group {
    /// Forgets tenants that wait for nothing and whose tags the virtual time
    /// has passed: they would start afresh at `V` anyway.
    fn sweep_idle_tenants(&mut self) {
        let v = self.vtime;
        self.tenants
            .retain(|_, t| !t.queue.is_empty() || t.finish > v);
        self.sweep_at = (self.tenants.len() * 2).max(64);
    }
}
