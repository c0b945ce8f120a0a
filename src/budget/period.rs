//! Budget periods — calendar periods aligned to midnight in a time zone,
//! and fixed windows anchored at a budget's creation — and the clock they
//! are read from.

use std::sync::{Arc, Mutex};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::duration::{Every, Length};

/// How long a budget lasts before spending starts again at zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// Never resets.
    Total,
    /// Resets at midnight.
    Daily,
    /// Resets on Monday at midnight.
    Weekly,
    /// Resets on the 1st of the month at midnight.
    Monthly,
    /// Fixed windows of one length from an anchor (`anchor + k × length`),
    /// not aligned to the calendar: a `2h` budget made at 10:17 resets at
    /// 12:17, 14:17, …; a `1mo` window on the anchor's day of the month.
    Every(Every),
}

impl std::fmt::Display for Period {
    /// `total`, `daily`, `weekly`, `monthly`, or a window's length (`2h`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Period::Total => "total",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Every(e) => return e.length.fmt(f),
        })
    }
}

impl Period {
    /// The window of this period that contains `now`, in `tz`.
    pub fn window(self, now: Timestamp, tz: &TimeZone) -> Window {
        let today = now.to_zoned(tz.clone()).date();
        let (first, next) = match self {
            Period::Total => {
                return Window {
                    start: None,
                    end: None,
                };
            }
            Period::Daily => (today, today.checked_add(1.day())),
            Period::Weekly => {
                let back = i64::from(today.weekday().to_monday_zero_offset());
                let monday = today.checked_sub(back.days()).unwrap_or(today);
                (monday, monday.checked_add(1.week()))
            }
            Period::Monthly => {
                let first = today.first_of_month();
                (first, first.checked_add(1.month()))
            }
            Period::Every(every) => return window_of(every, now, tz),
        };
        Window {
            start: Some(midnight(first, tz)),
            end: next.ok().map(|d| midnight(d, tz)),
        }
    }
}

#[cfg(feature = "keys")]
impl From<crate::keys::BudgetPeriod> for Period {
    fn from(p: crate::keys::BudgetPeriod) -> Period {
        use crate::keys::BudgetPeriod;
        match p {
            BudgetPeriod::Total => Period::Total,
            BudgetPeriod::Daily => Period::Daily,
            BudgetPeriod::Weekly => Period::Weekly,
            BudgetPeriod::Monthly => Period::Monthly,
            BudgetPeriod::Every(e) => Period::Every(e),
        }
    }
}

/// The window of `every` that contains `now`: `anchor + k × length` for
/// the `k` (negative before the anchor) that puts `now` inside. Months are
/// added to the anchor in `tz` (the same local time, the day clamped to
/// the month's last), always from the anchor, so windows do not drift.
fn window_of(every: Every, now: Timestamp, tz: &TimeZone) -> Window {
    let at = |secs: i64| Timestamp::from_second(secs).unwrap_or(Timestamp::MAX);
    match every.length {
        Length::Seconds(n) => {
            let n = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
            let k = now.as_second().saturating_sub(every.anchor).div_euclid(n);
            let start = every.anchor.saturating_add(k.saturating_mul(n));
            Window {
                start: Some(at(start)),
                end: Some(at(start.saturating_add(n))),
            }
        }
        Length::Months(m) => {
            let anchor = at(every.anchor).to_zoned(tz.clone());
            let m = i64::from(m.max(1));
            let nth = |k: i64| {
                anchor
                    .checked_add(k.saturating_mul(m).months())
                    .map_or(Timestamp::MAX, |z| z.timestamp())
            };
            let here = now.to_zoned(tz.clone());
            let months = (i64::from(here.year()) - i64::from(anchor.year())) * 12
                + i64::from(here.month())
                - i64::from(anchor.month());
            // The estimate is off by at most one window either way.
            let mut k = months.div_euclid(m);
            while k > i64::MIN / 2 && nth(k) > now {
                k -= 1;
            }
            while nth(k + 1) <= now && nth(k + 1) != Timestamp::MAX {
                k += 1;
            }
            Window {
                start: Some(nth(k)),
                end: Some(nth(k + 1)),
            }
        }
    }
}

/// The first instant of `date` in `tz` (the first valid one where a DST
/// change skips midnight).
fn midnight(date: Date, tz: &TimeZone) -> Timestamp {
    date.to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .unwrap_or(Timestamp::MAX)
}

/// One period's span: from `start` (inclusive) to `end` (exclusive);
/// `None` on both sides for [`Period::Total`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    /// The first instant of the period.
    pub start: Option<Timestamp>,
    /// The first instant of the next period: when this one resets.
    pub end: Option<Timestamp>,
}

impl Window {
    /// Whether `now` lies in this window (never for [`Period::Total`]'s).
    fn contains(&self, now: Timestamp) -> bool {
        self.start.is_some_and(|s| s <= now) && self.end.is_some_and(|e| now < e)
    }
}

/// The last window of each calendar period (daily, weekly, monthly) a
/// ledger computed, handed out again while the time stays in it: a window
/// converts the instant to civil time in the zone and back (~1,300
/// instructions), and nearly every request falls in the window of the one
/// before. The time zone is the ledger's own, fixed when it is made.
/// Contended, it computes rather than waits.
#[derive(Debug, Default)]
pub(crate) struct Windows([Mutex<Option<Window>>; 3]);

impl Windows {
    /// `period.window(now, tz)`, from the cache when it holds it.
    pub(crate) fn window(&self, period: Period, now: Timestamp, tz: &TimeZone) -> Window {
        let slot = match period {
            Period::Daily => 0,
            Period::Weekly => 1,
            Period::Monthly => 2,
            Period::Total | Period::Every(_) => return period.window(now, tz),
        };
        let Ok(mut cached) = self.0[slot].try_lock() else {
            return period.window(now, tz);
        };
        if let Some(w) = *cached
            && w.contains(now)
        {
            return w;
        }
        let w = period.window(now, tz);
        *cached = Some(w);
        w
    }
}

/// Where budgets read the time from.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to, for tests. Clones share the time.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<Timestamp>>);

impl ManualClock {
    /// A clock that reads `now` until set.
    pub fn new(now: Timestamp) -> Self {
        ManualClock(Arc::new(Mutex::new(now)))
    }

    /// Sets the time.
    pub fn set(&self, now: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(tz: &TimeZone, s: &str) -> Timestamp {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(tz.clone())
            .unwrap()
            .timestamp()
    }

    /// The cache hands out what computing gives, for every instant of a
    /// walk across day, week, month and DST boundaries, forwards and back.
    #[test]
    fn cached_windows_are_the_computed_ones() {
        for zone in [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
            "UTC",
        ] {
            let tz = TimeZone::get(zone).unwrap();
            let windows = Windows::default();
            let start = at(&tz, "2026-03-27T20:00");
            // 97-minute steps over twelve days, then back again.
            let steps: Vec<i64> = (0..180).chain((0..180).rev()).collect();
            for k in steps {
                let now = start + jiff::SignedDuration::from_mins(97 * k);
                for period in [
                    Period::Daily,
                    Period::Weekly,
                    Period::Monthly,
                    Period::Total,
                    Period::Every("3d".parse().unwrap()),
                ] {
                    assert_eq!(
                        windows.window(period, now, &tz),
                        period.window(now, &tz),
                        "{zone} {period:?} at {now}"
                    );
                }
            }
        }
    }

    #[test]
    fn april_30_late_evening_in_the_zone_is_april() {
        let tz = TimeZone::get("America/New_York").unwrap();
        // 23:59 on April 30 in New York is already May 1 in UTC.
        let now = at(&tz, "2026-04-30T23:59");
        assert_eq!(now.to_string(), "2026-05-01T03:59:00Z");
        let w = Period::Monthly.window(now, &tz);
        assert_eq!(w.start, Some(at(&tz, "2026-04-01T00:00")));
        assert_eq!(w.end, Some(at(&tz, "2026-05-01T00:00")));
        // A minute later it is May's.
        let may = Period::Monthly.window(at(&tz, "2026-05-01T00:00"), &tz);
        assert_eq!(may.start, w.end);
        // In UTC the same instant is May's.
        let utc = Period::Monthly.window(now, &TimeZone::UTC);
        assert_eq!(utc.start, Some("2026-05-01T00:00Z".parse().unwrap()));
    }

    #[test]
    fn weeks_start_on_monday_in_the_zone() {
        let tz = TimeZone::get("Asia/Tokyo").unwrap();
        // Monday 2026-11-23 00:30 in Tokyo is Sunday 15:30 in UTC.
        let monday = at(&tz, "2026-11-23T00:30");
        assert_eq!(monday.to_string(), "2026-11-22T15:30:00Z");
        let w = Period::Weekly.window(monday, &tz);
        assert_eq!(w.start, Some(at(&tz, "2026-11-23T00:00")));
        assert_eq!(w.end, Some(at(&tz, "2026-11-30T00:00")));
        let sunday = Period::Weekly.window(at(&tz, "2026-11-22T23:59"), &tz);
        assert_eq!(sunday.start, Some(at(&tz, "2026-11-16T00:00")));
        assert_eq!(sunday.end, w.start);
    }

    #[test]
    fn fixed_windows_start_at_the_anchor_not_at_midnight() {
        let anchor: Timestamp = "2026-12-06T10:17:00Z".parse().unwrap();
        let every = |length| {
            Period::Every(Every {
                length,
                anchor: anchor.as_second(),
            })
        };
        let two_hours = every(Length::Seconds(7_200));
        let w = two_hours.window("2026-12-06T13:00:00Z".parse().unwrap(), &TimeZone::UTC);
        assert_eq!(w.start, Some("2026-12-06T12:17:00Z".parse().unwrap()));
        assert_eq!(w.end, Some("2026-12-06T14:17:00Z".parse().unwrap()));
        // The anchor itself opens the first window; before it, earlier ones.
        assert_eq!(two_hours.window(anchor, &TimeZone::UTC).start, Some(anchor));
        let before = two_hours.window("2026-12-06T10:16:59Z".parse().unwrap(), &TimeZone::UTC);
        assert_eq!(before.end, Some(anchor));
        assert_eq!(two_hours.to_string(), "2h");

        // Months from the 31st: clamped to the month's end, never drifting.
        let tz = TimeZone::get("Europe/Paris").unwrap();
        let jan31 = at(&tz, "2026-01-31T09:00");
        let monthly = Period::Every(Every {
            length: Length::Months(1),
            anchor: jan31.as_second(),
        });
        let feb = monthly.window(at(&tz, "2026-03-01T00:00"), &tz);
        assert_eq!(feb.start, Some(at(&tz, "2026-02-28T09:00")));
        assert_eq!(feb.end, Some(at(&tz, "2026-03-31T09:00")));
        let late = monthly.window(at(&tz, "2026-03-31T09:00"), &tz);
        assert_eq!(late.start, Some(at(&tz, "2026-03-31T09:00")));
        let quarter = Period::Every(Every {
            length: Length::Months(3),
            anchor: jan31.as_second(),
        });
        let q = quarter.window(at(&tz, "2026-12-06T00:00"), &tz);
        assert_eq!(q.start, Some(at(&tz, "2026-10-31T09:00")));
        assert_eq!(q.end, Some(at(&tz, "2027-01-31T09:00")));
        let early = quarter.window(at(&tz, "2025-12-01T00:00"), &tz);
        assert_eq!(early.end, Some(jan31));
    }

    #[test]
    fn days_across_a_dst_change_and_total() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // 2026-03-29 has 23 hours in Berlin.
        let w = Period::Daily.window(at(&tz, "2026-03-29T12:00"), &tz);
        let (start, end) = (w.start.unwrap(), w.end.unwrap());
        assert_eq!(end.as_second() - start.as_second(), 23 * 3600);
        let t = Period::Total.window(start, &tz);
        assert_eq!((t.start, t.end), (None, None));
    }
}
