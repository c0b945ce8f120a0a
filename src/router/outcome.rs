//! What an upstream failure means for routing, decided on the typed
//! [`Error`] (its [`Reason`] and the upstream's status), never on text.
//! Which body shapes turn a status into which reason is one table,
//! [`classify`](super::classify); what the client sees for each reason is
//! in [`crate::error`].
//!
//! | upstream outcome | [`Outcome`] | retry elsewhere | cool down |
//! |---|---|---|---|
//! | 400, 422, … (client's fault), a content filter (400/403/422 of a known shape) | `ClientFault` | no | no |
//! | context length exceeded | `ContextLength` | no (the fallback may use `context_window_fallbacks`) | no |
//! | 413 (this upstream's or its proxy's size limit) | `TooLargeHere` | yes | no |
//! | 401, 403 (our upstream credential) | `Credential` | yes | the deployment, long |
//! | 400/404/410 whose body says the model is unknown or retired | `ModelGone` | yes | the deployment, long |
//! | any other 404, 405, 410, 501 (this route is not served there) | `RouteNotServed` | yes | that route on that deployment only, local to the replica |
//! | 408, timeout, connect error, 5xx, bad or cut answer | `Transient` | yes | the deployment, after N failures in a window, or at once until a 5xx's own `Retry-After` |
//! | 429 | `RateLimited` | yes | the deployment, until `Retry-After` (or a default) |
//! | anything else (the gateway's own failures) | `Gateway` | no | no |

use serde_json::{Map, Value};

use crate::error::{Error, Reason};

/// How the router treats one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The request itself is wrong: returned at once, nobody cools down.
    ClientFault,
    /// The prompt does not fit this model: returned at once.
    ContextLength,
    /// The upstream refused the gateway's credential.
    Credential,
    /// The upstream says the model does not exist or was retired.
    ModelGone,
    /// The upstream does not serve this route (its other routes may work).
    RouteNotServed,
    /// The upstream refused the request's size; another deployment (behind
    /// another proxy) may take it.
    TooLargeHere,
    /// The upstream rate-limited the request.
    RateLimited,
    /// A timeout, a connection failure, a 5xx, a bad or cut answer.
    Transient,
    /// Not an upstream outcome (an internal failure): returned at once.
    Gateway,
}

impl Outcome {
    /// Classifies a failure by its reason, then by the upstream's status.
    pub fn of(e: &Error) -> Outcome {
        match e.reason() {
            Reason::BodyTooLarge if e.upstream_status().is_some() => Outcome::TooLargeHere,
            Reason::UpstreamRejected | Reason::UpstreamContentFiltered | Reason::BodyTooLarge => {
                Outcome::ClientFault
            }
            Reason::UpstreamRouteNotServed => Outcome::RouteNotServed,
            Reason::ContextLengthExceeded => Outcome::ContextLength,
            Reason::UpstreamAuthFailed => Outcome::Credential,
            Reason::UpstreamModelNotFound => Outcome::ModelGone,
            Reason::UpstreamRateLimited => Outcome::RateLimited,
            Reason::UpstreamTimeout
            | Reason::UpstreamUnreachable
            | Reason::UpstreamError
            | Reason::UpstreamBadResponse
            | Reason::UpstreamStreamCut
            | Reason::UpstreamUnavailable => Outcome::Transient,
            _ => match e.upstream_status().map(|s| s.as_u16()) {
                Some(429) => Outcome::RateLimited,
                Some(401 | 403) => Outcome::Credential,
                Some(404 | 405 | 410 | 501) => Outcome::RouteNotServed,
                Some(408 | 500..=599) => Outcome::Transient,
                Some(400..=499) => Outcome::ClientFault,
                _ => Outcome::Gateway,
            },
        }
    }

    /// Whether another deployment may be tried.
    pub fn retries(self) -> bool {
        matches!(
            self,
            Outcome::Credential
                | Outcome::ModelGone
                | Outcome::RouteNotServed
                | Outcome::TooLargeHere
                | Outcome::RateLimited
                | Outcome::Transient
        )
    }

    /// Whether the *same* deployment may be tried again (after a backoff)
    /// when no other is left. Only for passing failures; never for a timeout,
    /// which already cost the whole timeout once.
    pub fn retries_same(self, e: &Error) -> bool {
        self == Outcome::Transient && e.reason() != Reason::UpstreamTimeout
    }
}

/// How useful an error is to the client as the final answer, when every
/// attempt failed: one that says when to come back beats a passing failure,
/// which beats a configuration problem, which beats "this model is gone"
/// (a client can act on the first; the last is only true of the last group).
fn usefulness(e: &Error) -> u8 {
    match e.reason() {
        Reason::UpstreamRateLimited
        | Reason::UpstreamUnavailable
        | Reason::NoAvailableDeployment => 4,
        Reason::UpstreamTimeout
        | Reason::UpstreamUnreachable
        | Reason::UpstreamError
        | Reason::UpstreamBadResponse
        | Reason::UpstreamStreamCut => 3,
        Reason::UpstreamAuthFailed | Reason::UpstreamRouteNotServed | Reason::BodyTooLarge => 2,
        _ => 1,
    }
}

/// The most useful of `errors` (ties: the later one). `None` when empty.
pub fn most_useful(errors: Vec<Error>) -> Option<Error> {
    let mut best: Option<Error> = None;
    for e in errors {
        if best
            .as_ref()
            .is_none_or(|b| usefulness(&e) >= usefulness(b))
        {
            best = Some(e);
        }
    }
    best
}

/// One failed attempt as listed in `metadata.attempts`: where it went and
/// the upstream's error, without its raw body (the final error keeps its
/// own). Messages were sanitized by the provider, and the whole metadata is
/// redacted again when the error is rendered.
pub fn attempt_record(group: &str, deployment: &str, e: &Error) -> Value {
    let mut m = Map::new();
    m.insert("model_group".into(), group.into());
    m.insert("deployment".into(), deployment.into());
    if let Some(p) = e.provider() {
        m.insert("provider_name".into(), p.into());
    }
    m.insert("reason".into(), e.reason().as_str().into());
    m.insert("code".into(), e.status().as_u16().into());
    if let Some(s) = e.upstream_status() {
        m.insert("upstream_status".into(), s.as_u16().into());
    }
    if let Some(p) = e.phase() {
        m.insert("phase".into(), p.as_str().into());
    }
    if let Some(r) = e.retry_after() {
        m.insert("retry_after_ms".into(), (r.as_millis() as u64).into());
    }
    m.insert("message".into(), e.message().into());
    Value::Object(m)
}

/// The attempts an error already lists in `metadata.attempts`.
pub fn attempts_of(e: &Error) -> &[Value] {
    match e.metadata().get(ATTEMPTS) {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

/// The metadata key listing every failed attempt.
pub const ATTEMPTS: &str = "attempts";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutPhase;
    use crate::sanitize::Secrets;
    use http::{HeaderMap, StatusCode};
    use std::time::Duration;

    fn upstream(status: u16) -> Error {
        Error::from_upstream(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            b"",
            "p".into(),
            &Secrets::none(),
        )
    }

    #[test]
    fn the_design_table() {
        for s in [400, 409, 422] {
            assert_eq!(Outcome::of(&upstream(s)), Outcome::ClientFault, "{s}");
        }
        assert_eq!(Outcome::of(&upstream(413)), Outcome::TooLargeHere);
        assert!(Outcome::TooLargeHere.retries());
        let own = Error::new(Reason::BodyTooLarge, "the gateway's own limit");
        assert_eq!(Outcome::of(&own), Outcome::ClientFault);
        for s in [401, 403] {
            assert_eq!(Outcome::of(&upstream(s)), Outcome::Credential, "{s}");
        }
        for s in [404, 405, 410, 501] {
            assert_eq!(Outcome::of(&upstream(s)), Outcome::RouteNotServed, "{s}");
        }
        assert!(Outcome::RouteNotServed.retries());
        for row in crate::router::classify::MODEL_GONE {
            let e = Error::from_upstream(
                StatusCode::from_u16(row.status).unwrap(),
                &HeaderMap::new(),
                row.example.as_bytes(),
                "p".into(),
                &Secrets::none(),
            );
            assert_eq!(Outcome::of(&e), Outcome::ModelGone, "{}", row.provider);
        }
        for row in crate::router::classify::CONTENT_FILTERED {
            let e = Error::from_upstream(
                StatusCode::from_u16(row.status).unwrap(),
                &HeaderMap::new(),
                row.example.as_bytes(),
                "p".into(),
                &Secrets::none(),
            );
            assert_eq!(Outcome::of(&e), Outcome::ClientFault, "{}", row.provider);
        }
        for s in [408, 500, 502, 503, 504] {
            assert_eq!(Outcome::of(&upstream(s)), Outcome::Transient, "{s}");
        }
        assert_eq!(Outcome::of(&upstream(429)), Outcome::RateLimited);
        let t = Error::timeout(TimeoutPhase::FirstByte, Duration::from_secs(1));
        assert_eq!(Outcome::of(&t), Outcome::Transient);
        assert!(!Outcome::Transient.retries_same(&t), "no second timeout");
        assert!(Outcome::Transient.retries_same(&upstream(500)));
        let cut = Error::new(Reason::UpstreamStreamCut, "cut");
        assert_eq!(Outcome::of(&cut), Outcome::Transient);
        let ctx = Error::new(Reason::ContextLengthExceeded, "long");
        assert_eq!(Outcome::of(&ctx), Outcome::ContextLength);
        assert!(!Outcome::ContextLength.retries());
        assert!(!Outcome::ClientFault.retries());
        let internal = Error::new(Reason::Internal, "x");
        assert_eq!(Outcome::of(&internal), Outcome::Gateway);
        assert!(!Outcome::Gateway.retries());
    }

    #[test]
    fn a_429_is_a_429_whatever_its_body_says() {
        // The LiteLLM bug: a 429 whose body reads like a connection error.
        let e = Error::from_upstream(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"error":"APIConnectionError: connection reset"}"#,
            "openai-like".into(),
            &Secrets::none(),
        );
        assert_eq!(Outcome::of(&e), Outcome::RateLimited);
    }

    #[test]
    fn most_useful_prefers_a_retry_after() {
        let gone = upstream(410);
        let rl = upstream(429);
        let boom = upstream(500);
        let pick = most_useful(vec![rl.clone(), boom.clone(), gone.clone()]).unwrap();
        assert_eq!(pick.reason(), Reason::UpstreamRateLimited);
        let pick = most_useful(vec![gone, boom]).unwrap();
        assert_eq!(pick.reason(), Reason::UpstreamError);
        assert!(most_useful(vec![]).is_none());
    }

    #[test]
    fn records_carry_no_raw_body() {
        let e = Error::from_upstream(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            br#"{"error":{"message":"boom","detail":"x"}}"#,
            "p".into(),
            &Secrets::none(),
        );
        let r = attempt_record("g", "d", &e);
        assert_eq!(r["model_group"], "g");
        assert_eq!(r["deployment"], "d");
        assert_eq!(r["reason"], "upstream_error");
        assert_eq!(r["upstream_status"], 500);
        assert!(r.get("raw").is_none());
    }
}
