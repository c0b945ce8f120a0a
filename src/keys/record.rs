//! What a store keeps about keys and teams, and the small value types they use.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::token::KeyHash;
pub use crate::duration::{Every, Length};

/// How often a budget starts again at zero: a calendar period, or fixed
/// windows anchored at the budget's creation ([`Every`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BudgetPeriod {
    /// Never: the budget is for the key's (or team's) whole life.
    Total,
    /// Every calendar day.
    Daily,
    /// Every calendar week, from Monday.
    Weekly,
    /// Every calendar month, from the 1st.
    Monthly,
    /// Fixed windows (`30m`, `2h`, `14d`, `3mo`, …) from an anchor.
    Every(Every),
}

impl BudgetPeriod {
    /// Parses a `budget_duration` given now, through the admin API: a
    /// window starts now. The calendar words and LiteLLM's spellings of
    /// them (`1d`, `24h`, `7d`, `1w`, `30d`, `1mo`: LiteLLM resets those at
    /// midnight, on Monday, on the 1st) are calendar periods; any other
    /// duration is a window anchored at `now` (Unix seconds).
    pub fn parse_at(text: &str, now: i64) -> Result<Self, String> {
        Ok(match text.parse::<BudgetPeriod>()? {
            BudgetPeriod::Every(e) => BudgetPeriod::Every(Every { anchor: now, ..e }),
            calendar => calendar,
        })
    }

    /// The form keys' stores keep (a window with its anchor: `2h@1764…`).
    pub fn stored(&self) -> String {
        match self {
            BudgetPeriod::Every(e) => e.to_string(),
            calendar => calendar.to_string(),
        }
    }
}

impl fmt::Display for BudgetPeriod {
    /// `total`, `daily`, `weekly`, `monthly`, or a window's length (`2h`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetPeriod::Total => "total",
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Weekly => "weekly",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Every(e) => return e.length.fmt(f),
        })
    }
}

impl FromStr for BudgetPeriod {
    type Err = String;

    /// The words; LiteLLM's spellings of the calendar periods (`1d`, `24h`,
    /// `7d`, `1w`, `30d`, `1mo`); any other duration as a window, with
    /// its anchor when stored (`2h@1764…`), else aligned to the epoch (the
    /// config file's budgets: the same windows on every start and replica).
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "total" | "none" => BudgetPeriod::Total,
            "daily" | "1d" | "24h" => BudgetPeriod::Daily,
            "weekly" | "7d" | "1w" => BudgetPeriod::Weekly,
            "monthly" | "1mo" | "30d" => BudgetPeriod::Monthly,
            other => BudgetPeriod::Every(other.parse::<Every>().map_err(|e| {
                format!(
                    "{e}; or a calendar period: `daily` (`1d`), `weekly` (`7d`), `monthly` (`30d`, `1mo`), `total`"
                )
            })?),
        })
    }
}

/// A spending limit in US dollars over a period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    /// The most that may be spent in one period, in USD.
    pub max_usd: f64,
    /// The period after which spending starts again at zero.
    pub period: BudgetPeriod,
}

/// Limits and settings that keys and teams both have.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Requests per minute (none: unlimited).
    pub rpm: Option<u64>,
    /// Tokens per minute (none: unlimited).
    pub tpm: Option<u64>,
    /// The budget's maximum in USD (none: no budget).
    pub max_budget: Option<f64>,
    /// The budget's period (none: [`BudgetPeriod::Total`]).
    pub budget_period: Option<BudgetPeriod>,
    /// The fair-queuing weight (at least 1).
    pub weight: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rpm: None,
            tpm: None,
            max_budget: None,
            budget_period: None,
            weight: 1,
        }
    }
}

impl Limits {
    /// The budget, when a maximum is set.
    pub fn budget(&self) -> Option<Budget> {
        self.max_budget.map(|max_usd| Budget {
            max_usd,
            period: self.budget_period.unwrap_or(BudgetPeriod::Total),
        })
    }
}

/// Where a key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The key store (created through the admin API or [`Keyring`](super::Keyring)).
    Store,
    /// The configuration file (read-only at run time).
    Config,
}

/// A key as a store keeps it: no secret, only its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRecord {
    /// The public id (`<id>` in `tg-<id>-<secret>`).
    pub id: String,
    /// The hash of id and secret.
    pub hash: KeyHash,
    /// A human name.
    pub alias: Option<String>,
    /// The team the key belongs to.
    pub team_id: Option<String>,
    /// The user the key was made for (free text, as LiteLLM's `user_id`).
    pub user_id: Option<String>,
    /// Model names, access-group names and patterns (`openai/*`).
    pub grants: Vec<String>,
    /// When the key stops working, in Unix seconds.
    pub expires_at: Option<u64>,
    /// Revoked: refused with 401 `key_revoked` until unblocked.
    pub blocked: bool,
    /// Rate limits, budget, weight.
    pub limits: Limits,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// When the key was made, in Unix seconds.
    pub created_at: u64,
    /// When the key was last changed, in Unix seconds.
    pub updated_at: u64,
}

impl KeyRecord {
    /// A key with no grants and no limits, created now.
    pub fn new(id: impl Into<String>, hash: KeyHash) -> Self {
        let now = unix_now();
        KeyRecord {
            id: id.into(),
            hash,
            alias: None,
            team_id: None,
            user_id: None,
            grants: Vec::new(),
            expires_at: None,
            blocked: false,
            limits: Limits::default(),
            metadata: Map::new(),
            created_at: now,
            updated_at: now,
        }
    }
}

/// A team: keys that share grants (as a ceiling), limits and a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct TeamRecord {
    /// The team's id.
    pub id: String,
    /// A human name.
    pub alias: Option<String>,
    /// The team's grants: the most any of its keys may use (empty: no ceiling).
    pub grants: Vec<String>,
    /// Revoked: every key of the team is refused with 401 `key_revoked`.
    pub blocked: bool,
    /// Rate limits, budget, weight.
    pub limits: Limits,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// The team's members (LiteLLM's `members_with_roles`).
    pub members: Vec<TeamMember>,
    /// When the team was made, in Unix seconds.
    pub created_at: u64,
    /// When the team was last changed, in Unix seconds.
    pub updated_at: u64,
}

impl TeamRecord {
    /// A team with no grants and no limits, created now.
    pub fn new(id: impl Into<String>) -> Self {
        let now = unix_now();
        TeamRecord {
            id: id.into(),
            alias: None,
            grants: Vec::new(),
            blocked: false,
            limits: Limits::default(),
            metadata: Map::new(),
            members: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }
}

/// A user (LiteLLM's internal user): a person or service that keys are
/// made for. A key whose `user_id` names a user is charged on the user's
/// budget too, whether or not the key has a team.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    /// The user's id (what keys name as their `user_id`).
    pub id: String,
    /// The user's email address.
    pub email: Option<String>,
    /// A human name (LiteLLM's `user_alias`).
    pub alias: Option<String>,
    /// LiteLLM's `user_role`, kept and shown (tollgate's admin API has one
    /// master key; roles grant nothing here).
    pub role: Option<String>,
    /// The user's budget's maximum in USD (none: no budget).
    pub max_budget: Option<f64>,
    /// The budget's period (none: [`BudgetPeriod::Total`]).
    pub budget_period: Option<BudgetPeriod>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// When the user was made, in Unix seconds.
    pub created_at: u64,
    /// When the user was last changed, in Unix seconds.
    pub updated_at: u64,
}

impl UserRecord {
    /// A user with no budget, created now.
    pub fn new(id: impl Into<String>) -> Self {
        let now = unix_now();
        UserRecord {
            id: id.into(),
            email: None,
            alias: None,
            role: None,
            max_budget: None,
            budget_period: None,
            metadata: Map::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The budget, when a maximum is set.
    pub fn budget(&self) -> Option<Budget> {
        self.max_budget.map(|max_usd| Budget {
            max_usd,
            period: self.budget_period.unwrap_or(BudgetPeriod::Total),
        })
    }
}

/// A customer (LiteLLM's end user): whoever a request is made for, named by
/// the request itself (`user` in the OpenAI families, `metadata.user_id` in
/// Anthropic Messages), not by the key. A record with a budget caps that
/// end user's spend across every key; a blocked one is refused.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomerRecord {
    /// The end user's id, as requests send it.
    pub id: String,
    /// A human name.
    pub alias: Option<String>,
    /// Refused (403 `end_user_blocked`) until unblocked.
    pub blocked: bool,
    /// The budget's maximum in USD (none: no budget).
    pub max_budget: Option<f64>,
    /// The budget's period (none: [`BudgetPeriod::Total`]).
    pub budget_period: Option<BudgetPeriod>,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// When the customer was made, in Unix seconds.
    pub created_at: u64,
    /// When the customer was last changed, in Unix seconds.
    pub updated_at: u64,
}

impl CustomerRecord {
    /// A customer with no budget, created now.
    pub fn new(id: impl Into<String>) -> Self {
        let now = unix_now();
        CustomerRecord {
            id: id.into(),
            alias: None,
            blocked: false,
            max_budget: None,
            budget_period: None,
            metadata: Map::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The budget, when a maximum is set.
    pub fn budget(&self) -> Option<Budget> {
        self.max_budget.map(|max_usd| Budget {
            max_usd,
            period: self.budget_period.unwrap_or(BudgetPeriod::Total),
        })
    }
}

/// A member's role in a team, as LiteLLM names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// `admin`.
    Admin,
    /// `user`.
    User,
}

impl MemberRole {
    /// `admin` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Admin => "admin",
            MemberRole::User => "user",
        }
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(MemberRole::Admin),
            "user" => Ok(MemberRole::User),
            other => Err(format!(
                "`{other}` is not a role; the roles are `admin` and `user`"
            )),
        }
    }
}

/// A member of a team: a person named by a user id, an email, or both, and
/// their role. Recorded and shown with the team (LiteLLM's
/// `members_with_roles`); it is not a user record and grants nothing by
/// itself: the admin API answers the master key only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TeamMember {
    /// The user's id (free text, as a key's `user_id`).
    pub user_id: Option<String>,
    /// The user's email.
    pub user_email: Option<String>,
    /// `admin` or `user`.
    pub role: MemberRole,
}

impl TeamMember {
    /// Whether this member is the person `user_id` names, or, when no
    /// `user_id` is given, the one `user_email` names.
    pub fn is(&self, user_id: Option<&str>, user_email: Option<&str>) -> bool {
        match (user_id, user_email) {
            (Some(id), _) => self.user_id.as_deref() == Some(id),
            (None, Some(email)) => self.user_email.as_deref() == Some(email),
            (None, None) => false,
        }
    }

    /// Whether `other` names the same person: the same user id, or the
    /// same email.
    pub fn same_person(&self, other: &TeamMember) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        same(&self.user_id, &other.user_id) || same(&self.user_email, &other.user_email)
    }
}

/// Members as stores keep them: a JSON list of `{user_id, user_email, role}`.
pub fn members_to_json(members: &[TeamMember]) -> Value {
    serde_json::to_value(members).unwrap_or_else(|_| Value::Array(Vec::new()))
}

/// Members from a store's JSON list.
pub fn members_from_json(v: Value) -> Result<Vec<TeamMember>, String> {
    serde_json::from_value(v).map_err(|e| format!("team members are not a list of members: {e}"))
}

/// A change to one field: keep it, remove it (`null`), or set it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Patch<T> {
    /// The field was left out: keep the current value.
    #[default]
    Keep,
    /// The field was `null`: remove the value (the limit, the budget, the expiry).
    Clear,
    /// The field was given.
    Set(T),
}

impl<T> Patch<T> {
    /// Applies the change to an optional value.
    pub fn apply(self, current: &mut Option<T>) {
        match self {
            Patch::Keep => {}
            Patch::Clear => *current = None,
            Patch::Set(v) => *current = Some(v),
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses a LiteLLM-style duration of fixed length: a whole number and a
/// unit `s`, `m`, `h`, `d` or `w` (`30d`, `12h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.parse::<Length>()? {
        Length::Seconds(s) => Ok(Duration::from_secs(s)),
        Length::Months(_) => Err(format!(
            "`{text}`: months have no fixed length here; write days, e.g. `30d`"
        )),
    }
}

/// Unix seconds as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(1_209_600)
        );
        for bad in [
            "",
            "d",
            "30",
            "30x",
            "-1d",
            "1.5h",
            "99999999999999w",
            "1mo",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn periods() {
        assert_eq!("1mo".parse::<BudgetPeriod>(), Ok(BudgetPeriod::Monthly));
        assert_eq!("weekly".parse::<BudgetPeriod>(), Ok(BudgetPeriod::Weekly));
        assert_eq!("30d".parse::<BudgetPeriod>(), Ok(BudgetPeriod::Monthly));
        let window = BudgetPeriod::parse_at("2h", 1_700_000_000).unwrap();
        let every = Every {
            length: Length::Seconds(7_200),
            anchor: 1_700_000_000,
        };
        assert_eq!(window, BudgetPeriod::Every(every));
        assert_eq!(window.to_string(), "2h");
        assert_eq!(window.stored(), "2h@1700000000");
        assert_eq!(window.stored().parse::<BudgetPeriod>(), Ok(window));
        assert_eq!(BudgetPeriod::parse_at("1d", 5), Ok(BudgetPeriod::Daily));
        assert_eq!(BudgetPeriod::Monthly.stored(), "monthly");
        let e = "fortnightly".parse::<BudgetPeriod>().unwrap_err();
        assert!(
            e.contains("not a duration") && e.contains("calendar"),
            "{e}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(784_111_777), "1994-11-06T08:49:37Z");
        assert_eq!(rfc3339(1_709_208_000), "2024-02-29T12:00:00Z");
    }

    #[test]
    fn members() {
        let alice = TeamMember {
            user_id: Some("alice".into()),
            user_email: Some("alice@example.com".into()),
            role: MemberRole::Admin,
        };
        let by_mail = TeamMember {
            user_id: None,
            user_email: Some("alice@example.com".into()),
            role: MemberRole::User,
        };
        let bob = TeamMember {
            user_id: Some("bob".into()),
            user_email: None,
            role: MemberRole::User,
        };
        assert!(alice.same_person(&by_mail) && by_mail.same_person(&alice));
        assert!(!alice.same_person(&bob) && !bob.same_person(&by_mail));
        assert!(alice.is(Some("alice"), None));
        assert!(alice.is(None, Some("alice@example.com")));
        assert!(
            !alice.is(Some("bob"), Some("alice@example.com")),
            "the id decides"
        );
        assert!(!bob.is(None, None));
        let v = members_to_json(&[alice.clone(), bob.clone()]);
        assert_eq!(v[0]["role"], "admin");
        assert_eq!(v[1]["user_email"], Value::Null);
        assert_eq!(members_from_json(v).unwrap(), vec![alice, bob]);
        assert!(members_from_json(serde_json::json!([{"role": "owner"}])).is_err());
        assert_eq!("user".parse::<MemberRole>(), Ok(MemberRole::User));
        assert!(
            "Admin"
                .parse::<MemberRole>()
                .unwrap_err()
                .contains("`admin` and `user`")
        );
    }

    #[test]
    fn patches() {
        let mut v = Some(3);
        Patch::Keep.apply(&mut v);
        assert_eq!(v, Some(3));
        Patch::Set(4).apply(&mut v);
        assert_eq!(v, Some(4));
        Patch::Clear.apply(&mut v);
        assert_eq!(v, None);
    }
}
