//! An incremental Server-Sent Events decoder over arbitrary byte chunks, and
//! the writers of the two families' frames.
//!
//! The decoder holds at most one event (its `event:` name, its `data:` lines
//! and the unfinished line) and refuses an event larger than its cap, so a
//! stream of any length is read in bounded memory. (`budget::meter` has its
//! own line splitter, specialised to counting usage without an error path;
//! this one is the general form.)

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::TranslateError;
use crate::read_request::scan::escape_stop;

/// Buffer capacity kept between events; a larger buffer is released.
const KEEP: usize = 16 * 1024;

/// One decoded event: its `event:` name (empty when none was given) and its
/// `data:` lines joined with `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, or `""`.
    pub name: &'a str,
    /// The `data:` payload.
    pub data: &'a [u8],
}

/// Splits a byte stream into SSE events, one event buffered at a time.
#[derive(Debug)]
pub struct SseDecoder {
    cap: usize,
    /// The current, unfinished line.
    line: Vec<u8>,
    /// The current event's data lines, joined with `\n`.
    data: Vec<u8>,
    /// Whether the current event has a data line (an empty one counts).
    has_data: bool,
    /// The current event's name.
    name: String,
}

impl SseDecoder {
    /// A decoder that refuses an event (name, data and one line) larger than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        SseDecoder {
            cap,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            name: String::new(),
        }
    }

    /// Reads `chunk`, calling `on_event` for every event it completes.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        while !chunk.is_empty() {
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    self.take(&chunk[..i])?;
                    self.end_line(on_event)?;
                    chunk = &chunk[i + 1..];
                }
                None => {
                    self.take(chunk)?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The input ended: an unfinished line and event are completed (a server
    /// that omits the last blank line is read leniently).
    pub fn finish(
        &mut self,
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        if !self.line.is_empty() {
            self.end_line(on_event)?;
        }
        self.dispatch(on_event)
    }

    /// Bytes held now: a small multiple of the cap at most while an event
    /// is read, and at most a few KiB between events, whatever the stream's length.
    pub fn buffered(&self) -> usize {
        self.line.capacity() + self.data.capacity() + self.name.capacity()
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), TranslateError> {
        if self.line.len() + self.data.len() + self.name.len() + bytes.len() > self.cap {
            return Err(TranslateError::EventTooLarge { cap: self.cap });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(
        &mut self,
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let result = self.read_line(&line, on_event);
        line.clear();
        if line.capacity() <= KEEP {
            self.line = line;
        }
        result
    }

    fn read_line(
        &mut self,
        line: &[u8],
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        if line.is_empty() {
            return self.dispatch(on_event);
        }
        if line[0] == b':' {
            return Ok(()); // a comment (keep-alive)
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                let name = std::str::from_utf8(value)
                    .map_err(|_| TranslateError::bad("an SSE event name is not UTF-8"))?;
                self.name.clear();
                self.name.push_str(name);
            }
            // `id:`, `retry:` and unknown fields are ignored, as the SSE spec says.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        on_event: &mut dyn FnMut(SseEvent<'_>) -> Result<(), TranslateError>,
    ) -> Result<(), TranslateError> {
        let result = if self.has_data {
            on_event(SseEvent {
                name: &self.name,
                data: &self.data,
            })
        } else {
            Ok(())
        };
        self.data.clear();
        self.name.clear();
        self.has_data = false;
        // One large event must not pin its buffer for the rest of the stream.
        if self.data.capacity() > KEEP {
            self.data = Vec::new();
        }
        result
    }
}

/// A value the translators write as JSON: the bytes `serde_json` writes for
/// it, produced without its string escaper, which looks at one byte at a
/// time (~10 instructions a byte, most of a request's translation): plain
/// runs of a string are found 32 bytes at a time
/// ([`escape_stop`](crate::read_request::scan::escape_stop)) and copied.
pub(crate) trait Json {
    /// Appends the JSON text of `self` to `out`.
    fn write_to(&self, out: &mut BytesMut);
}

impl Json for str {
    fn write_to(&self, out: &mut BytesMut) {
        write_str(out, self)
    }
}

impl Json for String {
    fn write_to(&self, out: &mut BytesMut) {
        write_str(out, self)
    }
}

impl Json for Value {
    fn write_to(&self, out: &mut BytesMut) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            // Numbers have no strings to escape: serde_json's own writer.
            Value::Number(n) => {
                let _ = serde_json::to_writer(out.writer(), n);
            }
            Value::String(s) => write_str(out, s),
            Value::Array(items) => {
                out.put_u8(b'[');
                for (k, item) in items.iter().enumerate() {
                    if k > 0 {
                        out.put_u8(b',');
                    }
                    item.write_to(out);
                }
                out.put_u8(b']');
            }
            Value::Object(map) => map.write_to(out),
        }
    }
}

impl Json for Map<String, Value> {
    fn write_to(&self, out: &mut BytesMut) {
        out.put_u8(b'{');
        for (k, (key, value)) in self.iter().enumerate() {
            if k > 0 {
                out.put_u8(b',');
            }
            write_str(out, key);
            out.put_u8(b':');
            value.write_to(out);
        }
        out.put_u8(b'}');
    }
}

impl<T: Json + ?Sized> Json for &T {
    fn write_to(&self, out: &mut BytesMut) {
        (**self).write_to(out)
    }
}

impl Json for bool {
    fn write_to(&self, out: &mut BytesMut) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl Json for u64 {
    fn write_to(&self, out: &mut BytesMut) {
        out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
    }
}

impl<T: Json> Json for Option<T> {
    fn write_to(&self, out: &mut BytesMut) {
        match self {
            Some(v) => v.write_to(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

/// A JSON object written field by field, in the order written, without a
/// tree: `Obj::new(out).field("id", id).object("usage", |u| …).end()`.
pub(crate) struct Obj<'a> {
    out: &'a mut BytesMut,
    empty: bool,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(out: &'a mut BytesMut) -> Self {
        out.put_u8(b'{');
        Obj { out, empty: true }
    }

    /// Writes `"key":` (after a comma unless first) and returns the buffer
    /// for its value. Keys are the translators' own field names, which
    /// need no escaping: written as they are.
    pub(crate) fn key(&mut self, key: &str) -> &mut BytesMut {
        debug_assert!(
            key.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\'),
            "{key:?} needs escaping"
        );
        if !self.empty {
            self.out.put_u8(b',');
        }
        self.empty = false;
        self.out.put_u8(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub(crate) fn field(&mut self, key: &str, value: &(impl Json + ?Sized)) -> &mut Self {
        value.write_to(self.key(key));
        self
    }

    /// A field whose value is an object written by `fill`.
    pub(crate) fn object(&mut self, key: &str, fill: impl FnOnce(&mut Obj<'_>)) -> &mut Self {
        let mut inner = Obj::new(self.key(key));
        fill(&mut inner);
        inner.end();
        self
    }

    pub(crate) fn end(self) {
        self.out.put_u8(b'}');
    }
}

/// A typed value written by `serde_json` itself (the Converse stream's events).
pub(crate) struct Serialized<'a, T: ?Sized>(pub(crate) &'a T);

impl<T: serde::Serialize + ?Sized> Json for Serialized<'_, T> {
    fn write_to(&self, out: &mut BytesMut) {
        // Writing into a `BytesMut` cannot fail, and our values always serialize.
        let _ = serde_json::to_writer(out.writer(), self.0);
    }
}

/// Writes `value` as JSON into `out`.
pub(crate) fn write_json<T: Json + ?Sized>(out: &mut BytesMut, value: &T) {
    value.write_to(out)
}

/// `value` as JSON bytes.
pub(crate) fn to_bytes<T: Json + ?Sized>(value: &T) -> Bytes {
    let mut out = BytesMut::new();
    value.write_to(&mut out);
    out.freeze()
}

/// Writes `s` as a JSON string, escaped exactly as `serde_json` escapes it
/// (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other control bytes as
/// `\u00xx`; nothing else).
pub(crate) fn write_str(out: &mut BytesMut, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.put_u8(b'"');
    let mut rest = s.as_bytes();
    loop {
        let stop = escape_stop(rest);
        out.extend_from_slice(&rest[..stop]);
        let Some(&byte) = rest.get(stop) else { break };
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            c => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(c >> 4)],
                HEX[usize::from(c & 0xf)],
            ]),
        }
        rest = &rest[stop + 1..];
    }
    out.put_u8(b'"');
}

/// The block or tool-call index a hand-read event spells at the start of
/// `b` (one to nine digits, no leading zero), and what follows it: for the
/// stream fast paths of both directions.
pub(crate) fn leading_index(b: &[u8]) -> Option<(u64, &[u8])> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 9 || (digits > 1 && b[0] == b'0') {
        return None;
    }
    let index = b[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((index, &b[digits..]))
}

/// Writes one Anthropic frame: `event: <name>\ndata: <json>\n\n`.
pub(crate) fn write_event(out: &mut BytesMut, name: &str, value: &(impl Json + ?Sized)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    write_json(out, value);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]], cap: usize) -> Result<Vec<(String, String)>, TranslateError> {
        let mut d = SseDecoder::new(cap);
        let mut got = Vec::new();
        let mut push = |e: SseEvent<'_>| {
            got.push((
                e.name.to_owned(),
                String::from_utf8(e.data.to_vec()).unwrap(),
            ));
            Ok(())
        };
        for c in chunks {
            d.feed(c, &mut push)?;
        }
        d.finish(&mut push)?;
        Ok(got)
    }

    /// The writer's bytes are serde_json's, for every byte that may need
    /// escaping at every position around the 32-byte blocks of the scan.
    #[test]
    fn the_json_writer_writes_what_serde_json_writes() {
        let mut strings: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "é😀 \u{7f}\u{80}\u{2028}".into(),
        ];
        for len in [0usize, 1, 7, 8, 31, 32, 33, 63, 64, 65, 100] {
            for c in (0u8..0x80).chain([b'"', b'\\']) {
                for at in [0, len / 2, len.saturating_sub(1)] {
                    let mut b = vec![b'a'; len];
                    if len > 0 {
                        b[at] = c;
                    } else {
                        b.push(c);
                    }
                    strings.push(String::from_utf8(b).unwrap());
                }
            }
        }
        for s in &strings {
            let v =
                serde_json::json!({"k\"\n": [s, 1, -2, 2.5, null, true, false, {"s": s}], "é": s});
            let mut out = BytesMut::new();
            write_json(&mut out, &v);
            assert_eq!(
                std::str::from_utf8(&out).unwrap(),
                serde_json::to_string(&v).unwrap(),
                "{s:?}"
            );
            let mut out = BytesMut::new();
            write_json(&mut out, s.as_str());
            assert_eq!(out, serde_json::to_string(s).unwrap().as_bytes());
        }
    }

    #[test]
    fn events_names_comments_crlf_and_multiline_data() {
        let got = decode(
            &[
                b"event: a\r\ndata: {\"x\"",
                b":1}\r\n\r\n: ping\n\ndata: one\ndata:two\n\nid: 3\n\ndata: [DONE]",
            ],
            1024,
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                ("a".into(), "{\"x\":1}".into()),
                ("".into(), "one\ntwo".into()),
                ("".into(), "[DONE]".into()),
            ]
        );
    }

    #[test]
    fn an_event_over_the_cap_is_an_error_and_the_buffer_stays_bounded() {
        let mut d = SseDecoder::new(64);
        let mut none = |_: SseEvent<'_>| Ok(());
        for _ in 0..100 {
            d.feed(b"data: short\n\n", &mut none).unwrap();
        }
        assert!(d.buffered() <= 4 * 64);
        let long = [b'x'; 65];
        let err = d
            .feed(b"data: ", &mut none)
            .and_then(|()| d.feed(&long, &mut none));
        assert!(matches!(
            err,
            Err(TranslateError::EventTooLarge { cap: 64 })
        ));
    }
}
