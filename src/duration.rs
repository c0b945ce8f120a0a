//! Durations in LiteLLM's syntax (`30s`, `30m`, `1h`, `2d`, `2w`, `3mo`) and
//! fixed windows anchored at an instant: the budget windows of keys and
//! teams whose `budget_duration` is not a calendar period.
//!
//! A [`Length`] is a number of seconds or of calendar months; an [`Every`]
//! is a length and the instant its first window starts (the anchor). The
//! window containing an instant is `anchor + k × length` for the `k` that
//! puts it there (`budget::Period::window` computes it, months in the
//! ledger's time zone). Needs no feature: keys store it, budgets count in it.
//!
//! ```
//! use tollgate::duration::{Every, Length};
//!
//! let l: Length = "90m".parse().unwrap();
//! assert_eq!(l, Length::Seconds(5_400));
//! assert_eq!(l.to_string(), "90m");
//! assert_eq!("3mo".parse::<Length>().unwrap(), Length::Months(3));
//! assert!("30x".parse::<Length>().is_err());
//!
//! // Stored with its anchor (Unix seconds), so the window survives a restart.
//! let every = Every { length: Length::Seconds(3_600), anchor: 1_700_000_000 };
//! assert_eq!(every.to_string(), "1h@1700000000");
//! assert_eq!("1h@1700000000".parse::<Every>().unwrap(), every);
//! ```

use std::fmt;
use std::str::FromStr;

/// The longest length accepted: a hundred years.
const MAX_SECONDS: u64 = 100 * 366 * 86_400;

/// How long one window lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Length {
    /// A fixed number of seconds (`s`, `m`, `h`, `d`, `w` units).
    Seconds(u64),
    /// A number of calendar months (`mo`): the same day of the
    /// month (or the month's last day) at the same local time.
    Months(u32),
}

impl Length {
    /// The length in seconds when it is fixed (`None` for months).
    pub fn seconds(self) -> Option<u64> {
        match self {
            Length::Seconds(s) => Some(s),
            Length::Months(_) => None,
        }
    }
}

impl fmt::Display for Length {
    /// The largest unit that divides it exactly: `90m`, `2d`, `3mo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Length::Months(n) => write!(f, "{n}mo"),
            Length::Seconds(s) => {
                let (n, unit) = [(86_400, "d"), (3_600, "h"), (60, "m")]
                    .into_iter()
                    .find(|(u, _)| s % u == 0)
                    .map_or((s, "s"), |(u, name)| (s / u, name));
                write!(f, "{n}{unit}")
            }
        }
    }
}

impl FromStr for Length {
    type Err = String;

    /// A whole number and a unit: `s`, `m`, `h`, `d`, `w` or `mo` (`0s`
    /// is a length, e.g. a key that expires at once; not a window).
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (n, unit) = t.split_at(split);
        let bad = || {
            format!(
                "`{text}` is not a duration; write a whole number and a unit s, m, h, d, w or mo, e.g. `30m`, `12h`, `3mo`"
            )
        };
        let n: u64 = n.parse().map_err(|_| bad())?;
        let too_long = || format!("`{text}` is longer than a hundred years");
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 604_800,
            "mo" => {
                return u32::try_from(n)
                    .ok()
                    .filter(|m| *m <= 1_200)
                    .map(Length::Months)
                    .ok_or_else(too_long);
            }
            _ => return Err(bad()),
        };
        n.checked_mul(secs)
            .filter(|s| *s <= MAX_SECONDS)
            .map(Length::Seconds)
            .ok_or_else(too_long)
    }
}

/// Fixed windows of one [`Length`], the first starting at `anchor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Every {
    /// How long each window lasts.
    pub length: Length,
    /// When the first window starts, in Unix seconds (the budget's
    /// creation; 0 for budgets of the config file, aligned to the epoch).
    pub anchor: i64,
}

impl fmt::Display for Every {
    /// `<length>@<anchor>`, the form keys' stores keep.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.length, self.anchor)
    }
}

impl FromStr for Every {
    type Err = String;

    /// `<length>@<anchor>`, or a length alone (anchored at the epoch).
    fn from_str(text: &str) -> Result<Self, String> {
        let (length, anchor) = match text.split_once('@') {
            Some((l, a)) => (
                l,
                a.parse::<i64>()
                    .map_err(|_| format!("`{text}`: the anchor after `@` must be Unix seconds"))?,
            ),
            None => (text, 0),
        };
        let length: Length = length.parse()?;
        if matches!(length, Length::Seconds(0) | Length::Months(0)) {
            return Err(format!("`{text}`: a budget window must last at least 1s"));
        }
        Ok(Every { length, anchor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litellms_spellings_parse_and_print_back() {
        for (text, length) in [
            ("30s", Length::Seconds(30)),
            ("30m", Length::Seconds(1_800)),
            ("1h", Length::Seconds(3_600)),
            ("1d", Length::Seconds(86_400)),
            ("7d", Length::Seconds(604_800)),
            ("30d", Length::Seconds(2_592_000)),
            ("1mo", Length::Months(1)),
            ("12mo", Length::Months(12)),
        ] {
            assert_eq!(text.parse::<Length>(), Ok(length), "{text}");
            assert_eq!(length.to_string(), text);
        }
        assert_eq!("2w".parse::<Length>().unwrap().to_string(), "14d");
        assert_eq!("90s".parse::<Length>().unwrap().to_string(), "90s");
    }

    #[test]
    fn bad_lengths_say_why() {
        assert_eq!("0s".parse::<Length>(), Ok(Length::Seconds(0)));
        for bad in ["", "d", "30", "30x", "-1d", "1.5h", "1 mo", "h1"] {
            let e = bad.parse::<Length>().unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        for long in ["99999999999999w", "1201mo", "36601d"] {
            let e = long.parse::<Length>().unwrap_err();
            assert!(e.contains("hundred years"), "{long}: {e}");
        }
    }

    #[test]
    fn anchors_round_trip() {
        let e: Every = "3mo@-86400".parse().unwrap();
        assert_eq!(e.length, Length::Months(3));
        assert_eq!(e.anchor, -86_400);
        assert_eq!(e.to_string().parse::<Every>(), Ok(e));
        assert_eq!("2h".parse::<Every>().unwrap().anchor, 0);
        assert!("2h@x".parse::<Every>().unwrap_err().contains("anchor"));
        for empty in ["0s", "0mo", "0d@5"] {
            let e = empty.parse::<Every>().unwrap_err();
            assert!(e.contains("at least 1s"), "{empty}: {e}");
        }
    }
}
