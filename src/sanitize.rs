//! Redaction of secrets from anything that leaves the gateway.
//!
//! Two nets, both applied to every error body and every logged error:
//!
//! 1. The exact secrets known at the point of rendering ([`Secrets`]): the
//!    client's presented key, the upstream's key.
//! 2. Shapes that are credentials whatever their source: the word after
//!    `Bearer`, words starting with `sk-`, `sk_` or `tg-` (OpenAI-style and
//!    tollgate keys), hex runs of 32 or more (key hashes), and runs of 24 or
//!    more letters and digits mixed (API keys, tokens). Model names, ids with
//!    hyphens and prose pass untouched. JSON fields named like credentials
//!    (`authorization`, `api_key`, `secret`, …) are blanked whatever they hold.

use std::borrow::Cow;

use serde_json::Value;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Secrets known at the point of rendering, to be removed wherever they appear.
#[derive(Clone, Copy, Debug, Default)]
pub struct Secrets<'a> {
    list: &'a [&'a str],
}

impl<'a> Secrets<'a> {
    /// No exact secrets; only the shape rules apply.
    pub const fn none() -> Self {
        Secrets { list: &[] }
    }

    /// These exact strings (those shorter than 8 bytes are ignored: too
    /// likely to match ordinary text, and no real key is that short).
    pub const fn new(list: &'a [&'a str]) -> Self {
        Secrets { list }
    }
}

const MIN_SECRET: usize = 8;

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'=' | b'.')
}

/// Whether a word (a run of key-like characters) looks like a credential.
fn looks_secret(word: &str) -> bool {
    let w = word.trim_end_matches('.');
    let lower_prefix =
        |p: &str| w.len() >= 12 && w.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
    if lower_prefix("sk-") || lower_prefix("sk_") || lower_prefix("tg-") {
        return true;
    }
    if w.len() >= 32 && w.bytes().all(|b| b.is_ascii_hexdigit()) {
        return true;
    }
    // A long run of mixed letters and digits with no separators.
    let (mut run, mut letters, mut digits) = (0usize, false, false);
    for b in w.bytes() {
        if b.is_ascii_alphanumeric() {
            run += 1;
            letters |= b.is_ascii_alphabetic();
            digits |= b.is_ascii_digit();
            if run >= 24 && letters && digits {
                return true;
            }
        } else {
            (run, letters, digits) = (0, false, false);
        }
    }
    false
}

/// `text` with every secret replaced by [`REDACTED`]; borrowed when clean.
pub fn redact<'t>(text: &'t str, secrets: &Secrets<'_>) -> Cow<'t, str> {
    let mut out: Cow<'t, str> = Cow::Borrowed(text);
    for s in secrets.list.iter().filter(|s| s.len() >= MIN_SECRET) {
        if out.contains(*s) {
            out = Cow::Owned(out.replace(*s, REDACTED));
        }
    }
    match redact_shapes(&out) {
        Some(clean) => Cow::Owned(clean),
        None => out,
    }
}

/// Applies the shape rules; `None` when nothing had to change.
fn redact_shapes(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    let mut after_bearer = false;
    while i < bytes.len() {
        if !is_word_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_word_byte(bytes[i]) {
            i += 1;
        }
        let word = &text[start..i];
        let secret = after_bearer || looks_secret(word);
        after_bearer = word.eq_ignore_ascii_case("bearer") || word.eq_ignore_ascii_case("basic");
        if secret {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[copied..start]);
            o.push_str(REDACTED);
            copied = i;
        }
    }
    let mut o = out?;
    o.push_str(&text[copied..]);
    Some(o)
}

fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization"
            | "proxy-authorization"
            | "api_key"
            | "api-key"
            | "apikey"
            | "x-api-key"
            | "key"
            | "secret"
            | "client_secret"
            | "token"
            | "access_token"
            | "password"
            | "key_hash"
            | "hashed_token"
    )
}

/// Redacts every string in a JSON value in place, object keys included;
/// blanks credential-named fields.
pub fn redact_json(value: &mut Value, secrets: &Secrets<'_>) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = redact(s, secrets) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_json(v, secrets)),
        Value::Object(map) => {
            // A key is text the upstream chose too (`{"<the key>": …}`).
            let dirty: Vec<String> = map
                .keys()
                .filter(|k| matches!(redact(k, secrets), Cow::Owned(_)))
                .cloned()
                .collect();
            for k in dirty {
                if let Some(v) = map.remove(&k) {
                    map.insert(redact(&k, secrets).into_owned(), v);
                }
            }
            for (k, v) in map.iter_mut() {
                if is_secret_field(k) && !v.is_null() {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_json(v, secrets);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_borrowed() {
        let t = "Rate limit exceeded for model gpt-4o-mini-2024-07-18. Retry in 6s.";
        assert!(matches!(redact(t, &Secrets::none()), Cow::Borrowed(_)));
        let t = "meta-llama/Llama-3.1-70B-Instruct-Turbo and anthropic/claude-3-5-sonnet-20241022";
        assert_eq!(redact(t, &Secrets::none()), t);
    }

    #[test]
    fn shapes() {
        let cases = [
            (
                "Incorrect API key provided: sk-proj-abcDEF123456.",
                "Incorrect API key provided: [redacted]",
            ),
            (
                "Authorization: Bearer abc.def.ghi rest",
                "Authorization: Bearer [redacted] rest",
            ),
            (
                "key tg-7f3a-0123456789abcdef denied",
                "key [redacted] denied",
            ),
            (
                "hash 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 seen",
                "hash [redacted] seen",
            ),
            (
                "token AbCdEfGh1234567890IjKlMnOp here",
                "token [redacted] here",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input, &Secrets::none()), want, "{input}");
        }
    }

    #[test]
    fn exact_secrets() {
        let s = ["upstream-key-zz"];
        let got = redact("the key upstream-key-zz was refused", &Secrets::new(&s));
        assert_eq!(got, "the key [redacted] was refused");
        // Too short to be a secret: ignored.
        let s = ["abc"];
        assert_eq!(redact("abc", &Secrets::new(&s)), "abc");
    }

    #[test]
    fn json_fields_and_strings() {
        let mut v = serde_json::json!({
            "error": {"message": "bad key sk-live-1234567890abcdef", "api_key": "anything",
                      "nested": [{"authorization": "Basic Zm9vOmJhcg=="}]},
            "n": 3
        });
        redact_json(&mut v, &Secrets::none());
        let text = v.to_string();
        assert!(!text.contains("1234567890abcdef"));
        assert!(!text.contains("anything"));
        assert!(!text.contains("Zm9vOmJhcg"));
        assert_eq!(v["n"], 3);
    }

    /// Found writing the `error_body` fuzz target (its check fails on
    /// such a body): keys were not redacted, so an upstream body
    /// `{"<client key>": …}` carried the key to the client.
    #[test]
    fn object_keys_are_redacted_too() {
        let key = "abcdefgh-ijklmnop-qr";
        let mut v = serde_json::json!({
            key: 1,
            "nested": [{"invalid key sk-proj-0123456789abcdefXYZ": {"a": key}}],
            "fine": "x",
        });
        redact_json(&mut v, &Secrets::new(&[key]));
        let text = v.to_string();
        assert!(!text.contains(key), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert_eq!(v[REDACTED], 1);
        assert_eq!(v["fine"], "x");
        assert_eq!(v["nested"][0]["invalid key [redacted]"]["a"], REDACTED);
    }
}
