//! Budgets: money per virtual key, team and the whole gateway, in integer
//! micro-USD, over calendar periods in a configured time zone.
//!
//! The [`Ledger`] holds, per scope ([`Scope::Key`], [`Scope::Team`],
//! [`Scope::Global`]) and per period ([`Period`]: total, daily, weekly from
//! Monday, monthly from the 1st, all aligned to midnight in the ledger's
//! time zone), what was spent and what running requests hold reserved.
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

mod ledger;
mod meter;
mod period;
mod usage;

pub use jiff::{Timestamp, tz::TimeZone};
pub use ledger::{Ledger, Limit, Micros, Refusal, Reservation, Scope, Usage, usd, usd_value};
pub use meter::{EVENT_CAP, Meter, Metered, Settlement};
pub use period::{Clock, ManualClock, Period, SystemClock, Window};
pub use usage::{Price, TokenUsage};
