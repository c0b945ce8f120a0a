//! Borrowed reading for the translators of Chat Completions ↔ Messages:
//! a body is read once into objects whose members are the keys (borrowed
//! unless escaped) and each value's raw JSON text ([`RawValue`]), and a
//! value is looked into only where a translator needs to: a string passed
//! on is copied as the JSON literal it came in, a sub-object passed on
//! (a tool's schema, a tool call's input) as its text. Nothing is decoded
//! and re-encoded, and no tree (no `BTreeMap` per object, no `String` per
//! string) is built.
//!
//! Two things serde_json's raw reading does not check and its `Value` parse
//! does, and that a copy would carry on: a lone surrogate escape (`"\ud800"`)
//! and a number out of `f64`'s range (`1e400`). [`body`] refuses a body
//! with the first, as the `Value` parse did; every sub-value copied that may
//! hold a number is checked with [`strict`] (strings and scalar numbers
//! copied are checked by their readers).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One JSON value, unread: its text, as it came.
pub(super) type Raw<'a> = &'a RawValue;

/// A JSON object's members in the order written: the key, decoded (borrowed
/// unless it had escapes), and the value's raw text.
#[derive(Debug, Default)]
pub(super) struct Members<'a>(pub(super) Vec<(Cow<'a, str>, Raw<'a>)>);

/// An object key, borrowed from the input unless escaped.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    members.push((k, map.next_value::<Raw<'de>>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    /// The members of `raw`, or `None` when it is not an object.
    pub(super) fn of(raw: Raw<'a>) -> Option<Self> {
        if !is_object(raw) {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// The value at `key` (null included); of a key given twice, the last,
    /// as a `serde_json::Value` reads it.
    pub(super) fn get(&self, key: &str) -> Option<Raw<'a>> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The value at `key` unless it is absent or null.
    pub(super) fn get_some(&self, key: &str) -> Option<Raw<'a>> {
        self.get(key).filter(|v| !is_null(v))
    }

    /// The members in key order, a key given twice once with its last
    /// value: the order (and so the first refusal) of a
    /// `serde_json::Map`, which these readers replace.
    pub(super) fn sorted(mut self) -> impl Iterator<Item = (Cow<'a, str>, Raw<'a>)> {
        self.0.sort_by(|a, b| a.0.cmp(&b.0)); // stable: the last of equal keys stays last
        let mut members = self.0.into_iter().peekable();
        std::iter::from_fn(move || {
            loop {
                let m = members.next()?;
                if members.peek().is_none_or(|next| next.0 != m.0) {
                    return Some(m);
                }
            }
        })
    }

    /// The first key in key order (as a `serde_json::Map` iterates) whose
    /// value is not null and that is not in `allowed`; `skip` is ignored.
    pub(super) fn unknown(&self, allowed: &[&str], skip: Option<&str>) -> Option<&str> {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, (k, v))| {
                !allowed.contains(&k.as_ref())
                    && Some(k.as_ref()) != skip
                    && !is_null(v)
                    && !self.0[i + 1..].iter().any(|(later, _)| later == k)
            })
            .map(|(_, (k, _))| k.as_ref())
            .min()
    }
}

/// The items of `raw`, or `None` when it is not an array.
pub(super) fn items(raw: Raw<'_>) -> Option<Vec<Raw<'_>>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

pub(super) fn is_null(raw: Raw<'_>) -> bool {
    raw.get() == "null"
}

pub(super) fn is_object(raw: Raw<'_>) -> bool {
    raw.get().starts_with('{')
}

pub(super) fn is_str(raw: Raw<'_>) -> bool {
    raw.get().starts_with('"')
}

pub(super) fn is_number(raw: Raw<'_>) -> bool {
    raw.get()
        .as_bytes()
        .first()
        .is_some_and(|c| *c == b'-' || c.is_ascii_digit())
}

pub(super) fn as_bool(raw: Raw<'_>) -> Option<bool> {
    match raw.get() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// An integer `serde_json::Value::as_u64` reads: digits only, in range.
pub(super) fn as_u64(raw: Raw<'_>) -> Option<u64> {
    let s = raw.get().as_bytes();
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A number as `f64`, `None` for anything else or one out of range.
pub(super) fn as_f64(raw: Raw<'_>) -> Option<f64> {
    if !is_number(raw) {
        return None;
    }
    raw.get().parse::<f64>().ok().filter(|f| f.is_finite())
}

/// A token count, as [`super::tokens`] reads one: integers, floats rounded,
/// anything else 0.
pub(super) fn tokens(raw: Option<Raw<'_>>) -> u64 {
    let Some(raw) = raw else { return 0 };
    as_u64(raw)
        .or_else(|| as_f64(raw).filter(|f| *f > 0.0).map(|f| f.round() as u64))
        .unwrap_or(0)
}

/// The string `raw` holds, decoded: borrowed when it has no escapes.
pub(super) fn as_str(raw: Raw<'_>) -> Option<Cow<'_, str>> {
    let s = raw.get();
    if !s.starts_with('"') {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(s).ok().map(Cow::Owned)
}

/// Whether `raw` is the string `want`.
pub(super) fn str_is(raw: Option<Raw<'_>>, want: &str) -> bool {
    raw.and_then(as_str).is_some_and(|s| s == want)
}

/// Whether `raw` is the empty string.
pub(super) fn is_empty_str(raw: Raw<'_>) -> bool {
    raw.get() == "\"\""
}

/// The JSON string literals `parts` concatenated into one literal: each
/// one's text between its quotes is already escaped, so they join as they are.
pub(super) fn write_joined(out: &mut bytes::BytesMut, parts: &[Raw<'_>]) {
    if let [one] = parts {
        out.extend_from_slice(one.get().as_bytes());
        return;
    }
    out.extend_from_slice(b"\"");
    for p in parts {
        let s = p.get();
        out.extend_from_slice(&s.as_bytes()[1..s.len() - 1]);
    }
    out.extend_from_slice(b"\"");
}

/// Whether every `\u` escape in `text` is a character `serde_json` decodes
/// into a string (no lone surrogate). Only escapes are looked at: a body
/// that has none costs one `memchr` pass. Meant for valid JSON, where a
/// backslash only occurs in a string.
pub(super) fn no_lone_surrogate(text: &[u8]) -> bool {
    let hex = |at: usize| -> Option<u16> {
        let h = text.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', &text[i..]) {
        let at = i + k;
        match text.get(at + 1) {
            Some(b'u') => {
                let Some(c) = hex(at + 2) else { return false };
                i = at + 6;
                match c {
                    0xD800..=0xDBFF => {
                        if text.get(i..i + 2) != Some(b"\\u") {
                            return false;
                        }
                        if !hex(i + 2).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo)) {
                            return false;
                        }
                        i += 6;
                    }
                    0xDC00..=0xDFFF => return false,
                    _ => {}
                }
            }
            Some(_) => i = at + 2,
            None => return false,
        }
    }
    true
}

/// Whether `raw` reads as a `serde_json::Value` would: every number in
/// `f64`'s range and every string decodable (no lone surrogate). For the
/// sub-values copied whole (a tool's schema, a tool call's input); reads
/// without building anything.
pub(super) fn strict(raw: Raw<'_>) -> bool {
    struct Checked;
    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Checked)
        }
    }
    impl<'de> Visitor<'de> for Checked {
        type Value = Checked;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_unit<E>(self) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
            while seq.next_element::<Checked>()?.is_some() {}
            Ok(Checked)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
            while map.next_key::<Checked>()?.is_some() {
                map.next_value::<Checked>()?;
            }
            Ok(Checked)
        }
    }
    serde_json::from_str::<Checked>(raw.get()).is_ok()
}

/// A whole body read as an object's members, or why not: `Err(None)` when
/// it is JSON but not an object, `Err(Some(e))` with the error a
/// `serde_json::Value` parse gives when it is not JSON (a lone surrogate
/// escape included).
pub(super) fn body(body: &[u8]) -> Result<Members<'_>, Option<serde_json::Error>> {
    let parsed = std::str::from_utf8(body)
        .ok()
        .filter(|_| no_lone_surrogate(body))
        .and_then(|text| serde_json::from_str::<Members<'_>>(text).ok());
    match parsed {
        Some(members) => Ok(members),
        // Not an object, or not JSON: which one, and the parser's own words.
        None => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(_) => Err(None),
            Err(e) => Err(Some(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> &RawValue {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn members_keep_the_last_of_a_key_and_sort_as_a_map_does() {
        let m: Members<'_> =
            serde_json::from_str(r#"{"b":1,"a\u0041":2,"b":null,"c":[1,{"x":"y"}]}"#).unwrap();
        assert_eq!(m.get("b").unwrap().get(), "null");
        assert!(m.get_some("b").is_none());
        assert_eq!(m.get("aA").unwrap().get(), "2");
        let keys: Vec<_> = m
            .sorted()
            .map(|(k, v)| format!("{k}={}", v.get()))
            .collect();
        assert_eq!(keys, ["aA=2", "b=null", "c=[1,{\"x\":\"y\"}]"]);
    }

    #[test]
    fn unknown_names_the_first_key_in_order_ignoring_nulls_and_overridden_values() {
        let m: Members<'_> =
            serde_json::from_str(r#"{"z":1,"y":1,"ok":2,"n":null,"w":3,"w":null}"#).unwrap();
        assert_eq!(m.unknown(&["ok"], None), Some("y"));
        assert_eq!(m.unknown(&["ok"], Some("y")), Some("z"));
        assert_eq!(m.unknown(&["ok", "y", "z"], None), None);
    }

    #[test]
    fn scalars_read_as_a_value_reads_them() {
        assert_eq!(as_u64(raw("42")), Some(42));
        for no in ["-1", "1.0", "1e3", "\"1\"", "18446744073709551616"] {
            assert_eq!(as_u64(raw(no)), None, "{no}");
        }
        assert_eq!(as_f64(raw("-0.5e1")), Some(-5.0));
        assert_eq!(as_f64(raw("1e400")), None);
        assert_eq!(tokens(Some(raw("2.6"))), 3);
        assert_eq!(tokens(Some(raw("\"x\""))), 0);
        assert_eq!(as_str(raw(r#""plain""#)).unwrap(), "plain");
        assert_eq!(as_str(raw(r#""a\"b\u00e9""#)).unwrap(), "a\"bé");
        assert!(str_is(Some(raw(r#""\u0066unction""#)), "function"));
        assert_eq!(as_bool(raw("true")), Some(true));
    }

    #[test]
    fn lone_surrogates_and_out_of_range_numbers_are_found() {
        assert!(no_lone_surrogate(br#"{"a":"\\ud800 \ud83d\ude00 \u00e9"}"#));
        assert!(!no_lone_surrogate(br#"{"a":"\ud800"}"#));
        assert!(!no_lone_surrogate(br#"{"a":"\ude00\ud800"}"#));
        assert!(!no_lone_surrogate(br#"{"a":"\ud83d\u0041"}"#));
        assert!(strict(raw(r#"{"a":[1,-2,2.5e10,"\u00e9",null,true]}"#)));
        assert!(!strict(raw(r#"{"a":[1e400]}"#)));
        assert!(!strict(raw(r#"{"a":"\ud800"}"#)));
        assert!(matches!(body(br#"{"a":"\ud800"}"#), Err(Some(_))));
        assert!(matches!(body(b"[1]"), Err(None)));
        assert!(matches!(body(b"{"), Err(Some(_))));
        assert!(matches!(body(b"{\"a\":\"\xff\"}"), Err(Some(_))));
    }

    #[test]
    fn joined_literals_are_one_literal() {
        let mut out = bytes::BytesMut::new();
        write_joined(&mut out, &[raw(r#""a\n""#), raw(r#""\"b""#)]);
        assert_eq!(
            serde_json::from_slice::<String>(&out).unwrap(),
            "a\n\"b".to_owned()
        );
    }
}
