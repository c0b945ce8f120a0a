//! Borrowed reading for the translators of Chat Completions ↔ Messages:
//! a body is validated once, by the request scanner
//! ([`read_request::scan`](crate::read_request::scan), strings 32 bytes at
//! a time), and then read into objects whose members are the keys
//! (borrowed unless escaped) and each value's raw JSON text ([`Raw`]); a
//! value is looked into only where a translator needs to. A string passed
//! on is copied as the JSON literal it came in, a sub-object passed on (a
//! tool's schema, a tool call's input) as its text. Nothing is decoded and
//! re-encoded, and no tree (no `BTreeMap` per object, no `String` per
//! string) is built.
//!
//! Two things the scanner does not refuse and a `serde_json::Value` parse
//! does, and that a copy would carry on: a lone surrogate escape
//! (`"\ud800"`) and a number out of `f64`'s range (`1e400`). [`body`]
//! refuses a body with the first, as the `Value` parse did; every sub-value
//! copied that may hold a number is checked with [`numbers_in_range`]
//! (scalar numbers copied are checked by their readers).

use std::borrow::Cow;

use bytes::BytesMut;

use crate::read_request::scan;

/// One JSON value of a validated body, unread: its text, as it came, with
/// no whitespace around it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Raw<'a>(&'a [u8]);

impl std::fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw({})", String::from_utf8_lossy(self.0))
    }
}

/// `null`.
pub(super) const NULL: Raw<'static> = Raw(b"null");

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub(super) fn bytes(self) -> &'a [u8] {
        self.0
    }

    /// The value's JSON text as a `str` (a validated body is UTF-8).
    pub(super) fn text(self) -> &'a str {
        std::str::from_utf8(self.0).unwrap_or("null")
    }

    /// Whether the value's text is exactly `lit` (`true`, `1`, …).
    pub(super) fn is(self, lit: &str) -> bool {
        self.0 == lit.as_bytes()
    }
}

impl super::sse::Json for Raw<'_> {
    /// Raw JSON text, already valid: copied as it is (a string keeps the
    /// escapes it came with).
    fn write_to(&self, out: &mut BytesMut) {
        out.extend_from_slice(self.0);
    }
}

/// A JSON object's members in the order written: the key's bytes, decoded
/// (borrowed unless it had escapes), and the value's raw text; and, for a
/// whole body, the items of the one array member its translator splits
/// next ([`Split`]).
#[derive(Debug, Default)]
pub(super) struct Members<'a>(pub(super) Vec<(Cow<'a, [u8]>, Raw<'a>)>, Split<'a>);

/// An array's items ([`object_items`]) split while its object was split:
/// the array a translator reads next (a request's `messages`, an answer's
/// `content` or `choices`) is passed over once, not once to find its end
/// and once more to split it.
#[derive(Debug, Default)]
pub(super) struct Split<'a>(Option<(Raw<'a>, ObjectItems<'a>)>);

/// An array's items, each with its members when it is an object.
pub(super) type ObjectItems<'a> = Vec<(Raw<'a>, Option<Members<'a>>)>;

impl<'a> Split<'a> {
    /// [`object_items`] of `raw`: the items split already when `raw` is
    /// the array they were split from.
    pub(super) fn object_items(self, raw: Raw<'a>) -> Option<ObjectItems<'a>> {
        match self.0 {
            Some((from, items)) if std::ptr::eq(from.0, raw.0) => Some(items),
            _ => object_items(raw),
        }
    }
}

/// A key's bytes as text (a validated body's keys are UTF-8).
fn key_str(k: &[u8]) -> &str {
    std::str::from_utf8(k).unwrap_or("?")
}

/// The bytes a key literal (quotes included) decodes to.
fn key_bytes(lit: &[u8]) -> Cow<'_, [u8]> {
    let inner = &lit[1..lit.len().max(2) - 1];
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    Cow::Owned(
        serde_json::from_slice::<String>(lit)
            .unwrap_or_default()
            .into_bytes(),
    )
}

/// The first byte at or after `i` that is not JSON whitespace.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// The end (one past the closing quote) of the string that opens at `i`,
/// in a validated body: the first `"` not escaped (not after an odd run of
/// backslashes), found with `memchr` — in valid JSON nothing else can end
/// a string.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr(b'"', b.get(j..)?)?;
        let run = b[i + 1..j]
            .iter()
            .rev()
            .take_while(|c| **c == b'\\')
            .count();
        if run % 2 == 0 {
            return Some(j + 1);
        }
        j += 1;
    }
}

/// The end of the value that starts at `i`, in a validated body.
fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match *b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
            {
                i += 1;
            }
            Some(i)
        }
    }
}

/// Walks the container (`{…}` or `[…]`, validated) that opens at `b[at]`:
/// for each item, `each` gets its key (an object's, as its raw string
/// literal; `None` in an array) and where its value starts, reads the value
/// as it needs and returns where it ends. Returns the container's end (one
/// past its closing bracket).
fn split<'a>(
    b: &'a [u8],
    at: usize,
    mut each: impl FnMut(Option<Raw<'a>>, usize) -> Option<usize>,
) -> Option<usize> {
    let object = *b.get(at)? == b'{';
    let mut i = skip_ws(b, at + 1);
    if matches!(b.get(i), Some(b'}' | b']')) {
        return Some(i + 1);
    }
    loop {
        let key = if object {
            let end = string_end(b, i)?;
            let key = Raw(&b[i..end]);
            i = skip_ws(b, skip_ws(b, end) + 1); // past the colon
            Some(key)
        } else {
            None
        };
        i = skip_ws(b, each(key, i)?);
        if b.get(i) != Some(&b',') {
            return Some(i + 1); // the closing bracket
        }
        i = skip_ws(b, i + 1);
    }
}

/// The members of the object that opens at `b[at]`, and its end.
fn members_at(b: &[u8], at: usize) -> Option<(Members<'_>, usize)> {
    members_splitting(b, at, None)
}

/// [`members_at`], splitting the items of the array member named `array`
/// (the last, if it is given twice) as it goes ([`Split`]).
fn members_splitting<'a>(
    b: &'a [u8],
    at: usize,
    array: Option<&str>,
) -> Option<(Members<'a>, usize)> {
    let mut members = Vec::with_capacity(8);
    let mut split_items = Split::default();
    let end = split(b, at, |key, i| {
        let key = key.map_or(Cow::Borrowed(&b""[..]), |k| key_bytes(k.0));
        let end = if b.get(i) == Some(&b'[') && array.is_some_and(|a| *key == *a.as_bytes()) {
            let (items, end) = object_items_at(b, i)?;
            split_items = Split(Some((Raw(&b[i..end]), items)));
            end
        } else {
            value_end(b, i)?
        };
        members.push((key, Raw(&b[i..end])));
        Some(end)
    })?;
    Some((Members(members, split_items), end))
}

/// The items of an array, each with its members when it is an object, read
/// in one pass (an object's end is where its members end): the messages
/// of a request, without reading each message twice.
pub(super) fn object_items(raw: Raw<'_>) -> Option<ObjectItems<'_>> {
    if raw.0.first() != Some(&b'[') {
        return None;
    }
    object_items_at(raw.0, 0).map(|(items, _)| items)
}

/// [`object_items`] of the array that opens at `b[at]`, and its end.
fn object_items_at(b: &[u8], at: usize) -> Option<(ObjectItems<'_>, usize)> {
    let mut out = Vec::with_capacity(4);
    let end = split(b, at, |_, i| {
        let (members, end) = if b.get(i) == Some(&b'{') {
            let (members, end) = members_at(b, i)?;
            (Some(members), end)
        } else {
            (None, value_end(b, i)?)
        };
        out.push((Raw(&b[i..end]), members));
        Some(end)
    })?;
    Some((out, end))
}

impl<'a> Members<'a> {
    /// The array items split while these members were read ([`Split`]),
    /// taken.
    pub(super) fn take_split(&mut self) -> Split<'a> {
        std::mem::take(&mut self.1)
    }

    /// The members of `raw`, or `None` when it is not an object.
    pub(super) fn of(raw: Raw<'a>) -> Option<Self> {
        if !is_object(raw) {
            return None;
        }
        members_at(raw.0, 0).map(|(m, _)| m)
    }

    /// The value at `key` (null included); of a key given twice, the last,
    /// as a `serde_json::Value` reads it.
    pub(super) fn get(&self, key: &str) -> Option<Raw<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| *v)
    }

    /// The value at `key` unless it is absent or null.
    pub(super) fn get_some(&self, key: &str) -> Option<Raw<'a>> {
        self.get(key).filter(|v| !is_null(*v))
    }

    /// The members in key order, a key given twice once with its last
    /// value: the order (and so the first refusal) of a
    /// `serde_json::Map`, which these readers replace.
    pub(super) fn sorted(mut self) -> impl Iterator<Item = (Cow<'a, str>, Raw<'a>)> {
        self.0.sort_by(|a, b| a.0.cmp(&b.0)); // stable: the last of equal keys stays last
        let mut members = self.0.into_iter().peekable();
        std::iter::from_fn(move || {
            loop {
                let (k, v) = members.next()?;
                if members.peek().is_none_or(|next| next.0 != k) {
                    let k = match k {
                        Cow::Borrowed(b) => Cow::Borrowed(key_str(b)),
                        Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
                    };
                    return Some((k, v));
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
                let name = key_str(k);
                !allowed.contains(&name)
                    && Some(name) != skip
                    && !is_null(*v)
                    && !self.0[i + 1..].iter().any(|(later, _)| later == k)
            })
            .map(|(_, (k, _))| key_str(k))
            .min()
    }
}

/// The items of `raw`, or `None` when it is not an array.
pub(super) fn items(raw: Raw<'_>) -> Option<Vec<Raw<'_>>> {
    if raw.0.first() != Some(&b'[') {
        return None;
    }
    let b = raw.0;
    let mut items = Vec::with_capacity(4);
    split(b, 0, |_, i| {
        let end = value_end(b, i)?;
        items.push(Raw(&b[i..end]));
        Some(end)
    })?;
    Some(items)
}

pub(super) fn is_null(raw: Raw<'_>) -> bool {
    raw.is("null")
}

pub(super) fn is_object(raw: Raw<'_>) -> bool {
    raw.0.first() == Some(&b'{')
}

pub(super) fn is_str(raw: Raw<'_>) -> bool {
    raw.0.first() == Some(&b'"')
}

pub(super) fn is_number(raw: Raw<'_>) -> bool {
    raw.0
        .first()
        .is_some_and(|c| *c == b'-' || c.is_ascii_digit())
}

pub(super) fn as_bool(raw: Raw<'_>) -> Option<bool> {
    match raw.0 {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// An integer `serde_json::Value::as_u64` reads: digits only, in range.
pub(super) fn as_u64(raw: Raw<'_>) -> Option<u64> {
    let s = raw.0;
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
    raw.text().parse::<f64>().ok().filter(|f| f.is_finite())
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
    let s = raw.0;
    if !is_str(raw) || s.len() < 2 {
        return None;
    }
    let inner = &s[1..s.len() - 1];
    if !has_escape(inner) {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    unescape(inner).map(Cow::Owned)
}

/// The text of a validated JSON string's literal between its quotes,
/// decoded as `serde_json` decodes a `String` (`None` where it refuses one:
/// a lone surrogate). One pass that copies the runs between escapes: a
/// tool call's `arguments` (a `\"` every few bytes) is decoded without a
/// parser's per-escape machinery.
fn unescape(inner: &[u8]) -> Option<String> {
    let hex = |at: usize| -> Option<u32> {
        let h = inner.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut out = Vec::with_capacity(inner.len());
    // The start of the run of plain bytes not yet copied; a plain loop to
    // each backslash (escaped JSON has one every few bytes: a search
    // started again after each would cost more).
    let mut run = 0;
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            i += 1;
            continue;
        }
        out.extend_from_slice(&inner[run..i]);
        let c = match *inner.get(i + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0C,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = hex(i + 2)?;
                i += 6;
                if (0xD800..0xDC00).contains(&code) {
                    // A high surrogate: its low half must follow.
                    if inner.get(i..i + 2) != Some(b"\\u") {
                        return None;
                    }
                    let low = hex(i + 2).filter(|lo| (0xDC00..0xE000).contains(lo))?;
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    i += 6;
                }
                let ch = char::from_u32(code)?; // a lone low surrogate: None
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                run = i;
                continue;
            }
            _ => return None,
        };
        out.push(c);
        i += 2;
        run = i;
    }
    out.extend_from_slice(&inner[run..]);
    String::from_utf8(out).ok()
}

/// Whether a string's text has a backslash: a plain loop for the short
/// names a translator reads (`role`, `type`), `memchr` for longer ones.
fn has_escape(inner: &[u8]) -> bool {
    if inner.len() < 32 {
        inner.contains(&b'\\')
    } else {
        memchr::memchr(b'\\', inner).is_some()
    }
}

/// Whether `raw` is the string `want`: compared as bytes unless escaped.
pub(super) fn str_is(raw: Option<Raw<'_>>, want: &str) -> bool {
    let Some(raw) = raw.filter(|r| is_str(*r)) else {
        return false;
    };
    let inner = &raw.0[1..raw.0.len() - 1];
    if inner == want.as_bytes() {
        return true;
    }
    has_escape(inner) && as_str(raw).is_some_and(|s| s == want)
}

/// Whether `raw` is the empty string.
pub(super) fn is_empty_str(raw: Raw<'_>) -> bool {
    raw.is("\"\"")
}

/// The JSON string literals `parts` concatenated into one literal (`""`
/// for none): each one's text between its quotes is already escaped, so
/// they join as they are.
pub(super) fn write_joined(out: &mut BytesMut, parts: &[Raw<'_>]) {
    if let [one] = parts {
        out.extend_from_slice(one.0);
        return;
    }
    out.extend_from_slice(b"\"");
    for p in parts {
        out.extend_from_slice(&p.0[1..p.0.len() - 1]);
    }
    out.extend_from_slice(b"\"");
}

/// Whether every `\u` escape in `text` is a character `serde_json` decodes
/// into a string (no lone surrogate). Only `\u` sequences are looked at
/// (`memmem`): a body that has none costs one pass that stops nowhere.
/// Meant for valid JSON, where a backslash only occurs in a string.
pub(super) fn no_lone_surrogate(text: &[u8]) -> bool {
    let hex = |at: usize| -> Option<u16> {
        let h = text.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut after = 0;
    for p in memchr::memmem::find_iter(text, b"\\u") {
        if p < after {
            continue; // the low half of a pair already read
        }
        // An escape only after an even run of backslashes (`\\u` is a
        // backslash, then `u`).
        let run = text[..=p].iter().rev().take_while(|c| **c == b'\\').count();
        if run % 2 == 0 {
            continue;
        }
        match hex(p + 2) {
            None => return false,
            Some(0xD800..=0xDBFF) => {
                let low = text.get(p + 6..p + 8) == Some(b"\\u")
                    && hex(p + 8).is_some_and(|lo| (0xDC00..=0xDFFF).contains(&lo));
                if !low {
                    return false;
                }
                after = p + 12;
            }
            Some(0xDC00..=0xDFFF) => return false,
            Some(_) => {}
        }
    }
    true
}

/// Whether every number in `raw` (validated JSON) is one a
/// `serde_json::Value` holds: in `f64`'s range. For the sub-values copied
/// whole (a tool's schema, a tool call's input). Only numbers with an
/// exponent or over 300 digits can be out of range; only they are parsed.
pub(super) fn numbers_in_range(raw: Raw<'_>) -> bool {
    let b = raw.0;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => match string_end(b, i) {
                Some(end) => i = end,
                None => return false,
            },
            b'-' | b'0'..=b'9' => {
                let start = i;
                while b
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                let number = &b[start..i];
                if (number.len() > 300 || number.iter().any(|c| matches!(c, b'e' | b'E')))
                    && !std::str::from_utf8(number)
                        .ok()
                        .and_then(|n| n.parse::<f64>().ok())
                        .is_some_and(f64::is_finite)
                {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// A sub-value copied as its text: it must read as a `serde_json::Value`
/// would (no number out of range), or the copy would not; refused naming
/// `param` otherwise.
pub(super) fn checked<'a>(
    v: Raw<'a>,
    param: &dyn Fn() -> String,
) -> Result<Raw<'a>, crate::error::Error> {
    if is_str(v) || numbers_in_range(v) {
        Ok(v)
    } else {
        Err(super::bad(&param(), "holds a number out of range"))
    }
}

/// A comma before every item of a list but the first.
pub(super) fn comma(out: &mut BytesMut, n: &mut usize) {
    if *n > 0 {
        out.extend_from_slice(b",");
    }
    *n += 1;
}

/// Whether `text` is one JSON object a `serde_json::Value` reads: valid
/// (the scanner's checks), no lone surrogate, every number in range. For
/// the JSON a string carries (a tool call's `arguments`).
pub(super) fn is_json_object(text: &[u8]) -> bool {
    valid(text) && no_lone_surrogate(text) && numbers_in_range(Raw(text.trim_ascii()))
}

/// Whether `body` is one valid JSON object (the request scanner's checks:
/// RFC 8259, UTF-8, nesting), without the scanner's request fields (a bad
/// one is still valid JSON, and an answer has none to read); lone
/// surrogates are looked for by the callers.
fn valid(body: &[u8]) -> bool {
    scan::is_object(body)
}

/// A whole body read as an object's members, or why not: `Err(None)` when
/// it is JSON but not an object, `Err(Some(e))` with the error a
/// `serde_json::Value` parse gives when it is not JSON (a lone surrogate
/// escape included). The items of the array member named `array`, if any,
/// are split as it is read ([`Members::take_split`]).
pub(super) fn body<'a>(
    body: &'a [u8],
    array: Option<&str>,
) -> Result<Members<'a>, Option<serde_json::Error>> {
    read(body, valid(body), array)
}

/// [`body`] of a body the request scanner has already accepted (a
/// [`Parsed`](crate::read_request::Parsed) request's bytes): not validated twice.
pub(super) fn scanned_body<'a>(
    body: &'a [u8],
    array: Option<&str>,
) -> Result<Members<'a>, Option<serde_json::Error>> {
    read(body, true, array)
}

fn read<'a>(
    body: &'a [u8],
    valid: bool,
    array: Option<&str>,
) -> Result<Members<'a>, Option<serde_json::Error>> {
    if valid && no_lone_surrogate(body) {
        let start = skip_ws(body, 0);
        let end = body.trim_ascii_end().len();
        if let Some(text) = body.get(start..end).filter(|b| b.first() == Some(&b'{'))
            && let Some((members, _)) = members_splitting(text, 0, array)
        {
            return Ok(members);
        }
    }
    // Not an object, or not JSON: which one, and the parser's own words.
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(_) => Err(None),
        Err(e) => Err(Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Raw<'_> {
        Raw(s.as_bytes())
    }

    fn members(s: &str) -> Members<'_> {
        Members::of(raw(s)).unwrap()
    }

    #[test]
    fn members_keep_the_last_of_a_key_and_sort_as_a_map_does() {
        let m = members(r#"{ "b" : 1 ,"a\u0041":2,"b":null,"c":[ 1, {"x":"y]"} ] }"#);
        assert_eq!(m.get("b").unwrap(), NULL);
        assert!(m.get_some("b").is_none());
        assert_eq!(m.get("aA").unwrap().text(), "2");
        let keys: Vec<_> = m
            .sorted()
            .map(|(k, v)| format!("{k}={}", v.text()))
            .collect();
        assert_eq!(keys, ["aA=2", "b=null", "c=[ 1, {\"x\":\"y]\"} ]"]);
        assert_eq!(
            items(raw(r#"[ "a\"]" ,{"k":[{}]},-1.5e3 , true,[]]"#)).unwrap(),
            [
                raw(r#""a\"]""#),
                raw(r#"{"k":[{}]}"#),
                raw("-1.5e3"),
                raw("true"),
                raw("[]")
            ]
        );
        assert!(members("{}").0.is_empty());
        assert!(items(raw("[ ]")).unwrap().is_empty());
    }

    #[test]
    fn an_array_split_as_its_body_is_read_is_the_array_split_again() {
        // `messages` twice: the last is the one read, and the one split.
        let text = br#" { "messages" : [1, {"a":"x\"]"} ,[{}]], "m":{}, "messages":[ {"role":"user" , "k" : [ ] } , "s" ] } "#;
        let mut m = body(text, Some("messages")).unwrap();
        let last = m.get("messages").unwrap();
        let split = m.take_split();
        assert!(split.0.is_some());
        let taken = split.object_items(last).unwrap();
        let again = object_items(last).unwrap();
        assert_eq!(taken.len(), 2);
        for ((r1, m1), (r2, m2)) in taken.iter().zip(&again) {
            assert_eq!(r1, r2);
            assert_eq!(m1.as_ref().map(|m| &m.0), m2.as_ref().map(|m| &m.0));
        }
        assert_eq!(taken[0].1.as_ref().unwrap().get("k").unwrap().text(), "[ ]");
        assert_eq!(taken[1].0.text(), r#""s""#);
        // Taken once; another array (here the first `messages`, the same
        // text elsewhere) is split anew.
        assert!(m.take_split().0.is_none());
        let mut m = body(text, Some("messages")).unwrap();
        let first = m.0[0].1;
        assert_eq!(
            m.take_split().object_items(first).unwrap().len(),
            object_items(first).unwrap().len()
        );
        // Not an array, or no such member: nothing split, read as before.
        for (text, array) in [
            (&br#"{"messages":{}}"#[..], "messages"),
            (br#"{"a":[]}"#, "b"),
        ] {
            let mut m = body(text, Some(array)).unwrap();
            assert!(m.take_split().0.is_none());
        }
        let empty = body(br#"{"c":[ ]}"#, Some("c")).unwrap();
        assert_eq!(empty.1.0.as_ref().map(|(_, items)| items.len()), Some(0));
    }

    #[test]
    fn unknown_names_the_first_key_in_order_ignoring_nulls_and_overridden_values() {
        let m = members(r#"{"z":1,"y":1,"ok":2,"n":null,"w":3,"w":null,"\u0078":1}"#);
        assert_eq!(m.unknown(&["ok"], None), Some("x"));
        assert_eq!(m.unknown(&["ok", "x"], Some("y")), Some("z"));
        assert_eq!(m.unknown(&["ok", "x", "y", "z"], None), None);
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
    fn strings_decode_as_serde_json_decodes_them() {
        for lit in [
            r#""a\"b\\c\/d\b\f\n\r\t""#,
            r#""\u00e9\u20ac\ud83d\ude00 \u0000 \uFFFF \\u0041""#,
            r#""{\"city\":\"Paris\",\"unit\":\"celsius\"}""#,
            r#""plain é \"""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
        ] {
            assert_eq!(
                as_str(raw(lit)).map(Cow::into_owned),
                serde_json::from_str::<String>(lit).ok(),
                "{lit}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_written_by_serde_json_reads_back(s in ".*", ascii in proptest::bool::ANY) {
            let lit = if ascii {
                // Every non-ASCII character as `\u` escapes (surrogate pairs too).
                serde_json::to_string(&s).unwrap().chars().fold(String::new(), |mut out, c| {
                    if c.is_ascii() {
                        out.push(c);
                    } else {
                        for unit in c.encode_utf16(&mut [0; 2]) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                    out
                })
            } else {
                serde_json::to_string(&s).unwrap()
            };
            proptest::prop_assert_eq!(as_str(raw(&lit)).map(Cow::into_owned), Some(s));
        }
    }

    #[test]
    fn lone_surrogates_and_out_of_range_numbers_are_found() {
        assert!(no_lone_surrogate(
            br#"{"a":"\\ud800 \ud83d\ude00 \u00e9 \\\u0041"}"#
        ));
        assert!(!no_lone_surrogate(br#"{"a":"\\\ud800"}"#));
        assert!(!no_lone_surrogate(br#"{"a":"\ud800"}"#));
        assert!(!no_lone_surrogate(br#"{"a":"\ude00\ud800"}"#));
        assert!(!no_lone_surrogate(br#"{"a":"\ud83d\u0041"}"#));
        assert!(numbers_in_range(raw(
            r#"{"a":[1,-2,2.5e10,"1e400",1e-400,null,true]}"#
        )));
        assert!(!numbers_in_range(raw(r#"{"a":[1e400]}"#)));
        assert!(!numbers_in_range(raw(&"9".repeat(400))));
        assert!(is_json_object(br#" {"a":"\u00e9"} "#));
        assert!(!is_json_object(br#"{"a":"\ud800"}"#));
        assert!(!is_json_object(br#"{"a":1e999}"#));
        assert!(!is_json_object(b"[1]"));
        assert!(!is_json_object(b"{"));
        assert!(matches!(body(br#"{"a":"\ud800"}"#, None), Err(Some(_))));
        assert!(matches!(body(b"[1]", None), Err(None)));
        assert!(matches!(body(b"{", None), Err(Some(_))));
        assert!(matches!(body(b"{\"a\":\"\xff\"}", None), Err(Some(_))));
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
