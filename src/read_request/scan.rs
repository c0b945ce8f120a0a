//! A validating, tree-free JSON scanner for OpenAI-style request bodies.
//!
//! [`scan`] walks a request body once and extracts the handful of top-level
//! fields a gateway has to act on (`model`, `stream`, the token limits, `n`,
//! `stream_options.include_usage`, the `models` fallback list, the end
//! user (`user`, `metadata.user_id`), and the size of the prompt) without
//! building a JSON tree.
//!
//! # What is validated
//!
//! The whole body must be a valid JSON text (RFC 8259) whose top level is an
//! object, followed by nothing but whitespace. Everything is checked,
//! including the values that are skipped: string contents (no raw control
//! characters, only the escapes `\" \\ \/ \b \f \n \r \t \uXXXX`), the strict
//! number grammar `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the
//! literals, nesting, commas and colons, and UTF-8. Nesting deeper than
//! [`MAX_DEPTH`] levels (the top-level object counts as one) is refused with
//! [`ErrorKind::TooDeep`]; no recursion is involved, so hostile input can't
//! exhaust the stack.
//!
//! Errors come in two classes. [`ErrorKind::Syntax`], [`ErrorKind::TooDeep`]
//! and [`ErrorKind::NotAnObject`] mean the body is not an acceptable JSON
//! object and are reported at the first offending byte.
//! [`ErrorKind::DuplicateField`] and [`ErrorKind::FieldType`] are reported only
//! for bodies that are otherwise valid JSON (the first one in document order
//! wins), so a caller can tell "not JSON" from "JSON with a bad field".
//!
//! # Keys are unescaped, duplicates are refused
//!
//! Only keys of the top-level object are recognised; the same names nested
//! anywhere else are ignored. Keys are compared after unescaping, so
//! `"mod\u0065l"` is the `model` key, and a recognised key that appears twice
//! is an error ([`ErrorKind::DuplicateField`]). Both rules exist for the same
//! reason: the upstream that eventually serves the request will parse the
//! body with its own JSON parser. If the gateway checked one `model` (say the
//! first of two, or a plain `"model"` next to an escaped one) while the
//! upstream used another, every policy keyed on the model (allow lists,
//! quotas, routing, pricing) could be bypassed. Refusing the ambiguity is the
//! only answer that is safe whatever the upstream does.
//!
//! Decoded values (`model`, the entries of `models`) handle every escape,
//! surrogate pairs included; a lone surrogate in a decoded value is a
//! [`ErrorKind::Syntax`] error because it has no UTF-8 form. In strings that
//! are only validated, and in keys, `\uXXXX` escapes are checked for shape
//! only, so lone surrogates are accepted there, as serde_json accepts them in
//! values it ignores.
//!
//! # Speed
//!
//! The cost is one pass over the body, dominated by long strings of chat
//! content. Strings are scanned 32 bytes at a time: each `u64` word is
//! tested with SWAR bit tricks (the classic "has zero byte" and "has byte
//! less than" expressions) for a `"`, `\` or control byte, so the scanner
//! jumps from one such byte to the next without a per-byte loop, and the
//! common two-byte escapes cost one table look-up. Non-ASCII bytes don't
//! stop the scan: the words passed over are OR-ed together, and only a
//! string that turns out to hold non-ASCII bytes is UTF-8-validated, once,
//! by a checker that also jumps over ASCII runs 32 bytes at a time; an ASCII
//! body is never validated twice. (Jumping with `memchr2` and checking the
//! skipped run for control bytes separately measured slower on chat content,
//! whose `\n` escapes make runs short.) Line and column are computed only
//! when an error is reported. Skipping arrays and objects is iterative and
//! keeps the kind of each open container in one bit of a `u128`, so it never
//! allocates; the happy path allocates only the decoded `model` string,
//! the `models` list and, when present, the end user's id.

use std::fmt;
use std::ops::Range;

use memchr::{memchr, memchr_iter, memrchr};

/// The deepest nesting [`scan`] accepts; the top-level object is level 1.
pub const MAX_DEPTH: usize = 128;

/// A JSON string value found at the top level: where its literal sits
/// (including both quotes) and its decoded value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrField {
    /// Byte range of the string literal in the body, both quotes included.
    pub span: Range<usize>,
    /// The decoded value, escapes resolved.
    pub value: String,
}

/// The `stream_options` object of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Span of the whole `stream_options` object value, `{` to `}` inclusive.
    pub span: Range<usize>,
    /// `include_usage` inside it: its boolean and the span of the
    /// `true`/`false` literal.
    pub include_usage: Option<(bool, Range<usize>)>,
    /// The span of the `null` literal when `include_usage` is `null` (so a
    /// rewrite replaces it instead of adding a second key).
    pub include_usage_null: Option<Range<usize>>,
}

/// The top-level fields of a request body that a gateway acts on.
///
/// A field that is absent, or present with the value `null`, is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// `model`: the requested model.
    pub model: Option<StrField>,
    /// `stream`: whether the response is streamed.
    pub stream: Option<bool>,
    /// `max_tokens` (Chat Completions, legacy).
    pub max_tokens: Option<u64>,
    /// `max_completion_tokens` (Chat Completions).
    pub max_completion_tokens: Option<u64>,
    /// `max_output_tokens` (Responses API).
    pub max_output_tokens: Option<u64>,
    /// `n`: how many choices to generate.
    pub n: Option<u64>,
    /// `stream_options`.
    pub stream_options: Option<StreamOptions>,
    /// The span of the `null` literal when `stream_options` is `null` (so a
    /// rewrite replaces it instead of adding a second key).
    pub stream_options_null: Option<Range<usize>>,
    /// OpenRouter-style per-request fallback list `"models": ["a","b"]`.
    pub models: Option<Vec<String>>,
    /// `user`: the end user the request is for (the OpenAI families).
    pub user: Option<String>,
    /// `metadata.user_id`: the end user (Anthropic Messages). `metadata`
    /// that is not an object is skipped.
    pub metadata_user_id: Option<String>,
    /// Total byte length of the values of `messages`, `prompt`, `input`,
    /// `system` (Anthropic's system prompt), `instructions` (the Responses
    /// API's) and `tools` (whose definitions are prompt tokens too): the
    /// prompt-size estimate's input. Each value counts as the length of its
    /// JSON text, so `null` counts 4.
    pub prompt_bytes: usize,
    /// Byte index of the top-level object's closing `}`.
    pub object_end: usize,
}

/// What kind of problem [`scan`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not valid JSON (or not valid UTF-8, or a decoded string
    /// holds a lone surrogate).
    Syntax,
    /// Arrays and objects are nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The body is valid JSON but its top level is not an object.
    NotAnObject,
    /// A recognised top-level key (or `stream_options.include_usage`)
    /// appears more than once; carries the field's name.
    DuplicateField(&'static str),
    /// A recognised field has a value of the wrong type.
    FieldType {
        /// The field, e.g. `"max_tokens"` or `"stream_options.include_usage"`.
        field: &'static str,
        /// What was expected, e.g. `"a non-negative integer"`.
        expected: &'static str,
    },
}

/// Why a body was refused, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanError {
    /// The class of the problem.
    pub kind: ErrorKind,
    /// Byte offset of the problem in the body (the body's length if the
    /// body ended too early).
    pub offset: usize,
    /// 1-based line of `offset`.
    pub line: usize,
    /// 1-based column of `offset`, counted in bytes (as serde_json does).
    pub column: usize,
    /// A human-readable description, without the position.
    pub message: String,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for ScanError {}

/// Validates `body` as a JSON object and extracts the recognised top-level
/// fields (see the [module documentation](self)).
pub fn scan(body: &[u8]) -> Result<Fields, ScanError> {
    let mut scanner = Scanner {
        b: body,
        pos: 0,
        key_buf: Vec::new(),
        deferred: None,
    };
    match scanner.document() {
        Ok(fields) => match scanner.deferred {
            Some(err) => Err(*err),
            None => Ok(fields),
        },
        Err(err) => Err(*err),
    }
}

/// Whether `b` is one JSON value of any type, with nothing but whitespace
/// around it: the scanner's checks (RFC 8259 grammar, UTF-8, at most
/// [`MAX_DEPTH`] levels), nothing extracted, nothing allocated. For data that
/// is checked and passed on unread (an upstream's answer or stream events),
/// so that what the gateway calls JSON is decided in one place. It accepts
/// what `serde_json::from_slice::<IgnoredAny>` accepts in valid UTF-8 (the
/// property tests `is_json_agrees_with_serde_on_any_value` and
/// `differential_mutated_documents`), at about its cost on short events.
pub(crate) fn is_json(b: &[u8]) -> bool {
    one_value(b, false)
}

/// Whether `body` is one JSON object that [`scan`] reads as JSON (`Ok`, or
/// a [`ErrorKind::DuplicateField`] or [`ErrorKind::FieldType`] error: valid
/// JSON with a bad request field), validated exactly as [`scan`] validates
/// it, but without recognising, decoding or keeping any field. For JSON
/// that is not a request (an upstream's answer, the JSON a tool call's
/// arguments carry), where [`scan`]'s fields are work for nothing.
///
/// The one difference: [`scan`] refuses a lone surrogate escape in the
/// values it decodes (`model`, `models`, the end user), this accepts it as
/// it accepts it anywhere else; a caller that cares looks for lone
/// surrogates in the whole body (as the translators do).
pub(crate) fn is_object(body: &[u8]) -> bool {
    one_value(body, true)
}

/// [`is_json`], or [`is_object`] when `object`.
fn one_value(b: &[u8], object: bool) -> bool {
    let mut s = Scanner {
        b,
        pos: 0,
        key_buf: Vec::new(),
        deferred: None,
    };
    s.skip_ws();
    let first = s.peek();
    if first.is_none() || (object && first != Some(b'{')) || s.skip_value(0).is_err() {
        return false;
    }
    s.skip_ws();
    s.pos == b.len()
}

/// The top-level string `model` of a JSON object, read only as far as that
/// member: nothing after it is scanned or validated. For an upstream's
/// answer (already validated, with `model` ahead of its `choices`), where the
/// router renames the model without reading the rest. `None` when the body
/// is not an object, has no top-level string `model`, or is malformed before
/// it.
pub fn top_level_model(body: &[u8]) -> Option<StrField> {
    let mut s = Scanner {
        b: body,
        pos: 0,
        key_buf: Vec::new(),
        deferred: None,
    };
    s.skip_ws();
    if s.peek() != Some(b'{') {
        return None;
    }
    s.pos += 1;
    s.skip_ws();
    while s.peek() == Some(b'"') {
        let model = s.key(|k| k == b"model").ok()?;
        s.colon().ok()?;
        if model {
            if s.peek() != Some(b'"') {
                return None;
            }
            let start = s.pos;
            let value = s.decoded_string().ok()?;
            return Some(StrField {
                span: start..s.pos,
                value,
            });
        }
        s.skip_value(1).ok()?;
        s.skip_ws();
        if s.peek() != Some(b',') {
            return None;
        }
        s.pos += 1;
        s.skip_ws();
    }
    None
}

/// The JSON string that starts `b` (at its opening quote): how many bytes
/// it spans, quotes included, and its decoded length in bytes. `None` when
/// the scan would refuse it (unterminated, a control byte, a bad escape, a
/// lone surrogate, invalid UTF-8). Decodes (into a scratch buffer) only a
/// string that has escapes.
pub(crate) fn string_len(b: &[u8]) -> Option<(usize, u64)> {
    let mut s = Scanner {
        b,
        pos: 0,
        key_buf: Vec::new(),
        deferred: None,
    };
    if s.peek() != Some(b'"') {
        return None;
    }
    let escaped = s.skip_string().ok()?;
    let (from, to) = (1, s.pos - 1);
    if !escaped {
        return Some((s.pos, (to - from) as u64));
    }
    let mut out = Vec::with_capacity(to - from);
    s.decode_into(from, to, true, &mut out).ok()?;
    Some((s.pos, out.len() as u64))
}

/// The index of the first byte of `b` that a JSON string must escape (`"`,
/// `\\` or a control byte below 0x20), or `b.len()`: the scan that skips a
/// string's plain bytes 32 at a time, used to write strings
/// ([`translate`](crate::translate)'s JSON writer) as well as to read them.
pub(crate) fn escape_stop(b: &[u8]) -> usize {
    let mut high = 0;
    let mut i = 0;
    loop {
        let Some(block) = b.get(i..).and_then(|r| r.first_chunk::<32>()) else {
            return tail_stop(&b[i..], &mut high) + i;
        };
        let words = words(block);
        let masks = words.map(string_stops);
        if masks[0] | masks[1] | masks[2] | masks[3] != 0 {
            return i + first_stop(words, masks, &mut high);
        }
        i += 32;
    }
}

/// Internal result: boxed so that `Ok` paths stay small and cheap.
type Res<T> = Result<T, Box<ScanError>>;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;
const QUOTES: u64 = LO * b'"' as u64;
const BACKSLASHES: u64 = LO * b'\\' as u64;
const SPACES: u64 = LO * 0x20;

/// High bit of each byte that is zero. The lowest set bit is always exact;
/// bits above a zero byte may be spurious (borrow propagation).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

/// High bit of each byte below 0x20 (same exactness as [`zero_bytes`]).
#[inline(always)]
fn control_bytes(x: u64) -> u64 {
    x.wrapping_sub(SPACES) & !x & HI
}

/// Bytes at which a string scan has to stop: `"`, `\` and control bytes.
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    zero_bytes(w ^ QUOTES) | zero_bytes(w ^ BACKSLASHES) | control_bytes(w)
}

/// The bytes that may follow `\` as a two-byte escape.
const SIMPLE_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut k = 0;
    let escapes = b"\"\\/bfnrt";
    while k < escapes.len() {
        table[escapes[k] as usize] = true;
        k += 1;
    }
    table
};

/// Whether `s` is valid UTF-8: the same answer as `str::from_utf8(s).is_ok()`,
/// faster on text whose non-ASCII characters are sparse, because it jumps
/// over ASCII runs 32 unaligned bytes at a time straight to the next
/// non-ASCII byte (std's checker steps byte by byte around each non-ASCII
/// character to get back to word alignment).
fn is_utf8(s: &[u8]) -> bool {
    const HIGH: u128 = (HI as u128) << 64 | HI as u128;
    let mut i = 0;
    while let Some(&lead) = s.get(i) {
        if lead < 0x80 {
            i += 1;
            // Between words of non-Latin text: no run to jump over.
            if s.get(i).is_some_and(|&c| c >= 0x80) {
                continue;
            }
            while let Some(chunk) = s.get(i..).and_then(|r| r.first_chunk::<32>()) {
                let (a, b) = chunk.split_at(16);
                let a = u128::from_le_bytes(a.try_into().unwrap());
                let b = u128::from_le_bytes(b.try_into().unwrap());
                if (a | b) & HIGH != 0 {
                    i += if a & HIGH != 0 {
                        ((a & HIGH).trailing_zeros() / 8) as usize
                    } else {
                        16 + ((b & HIGH).trailing_zeros() / 8) as usize
                    };
                    break;
                }
                i += 32;
            }
            continue;
        }
        // RFC 3629: the second byte's range depends on the lead byte (this
        // rules out overlong forms, surrogates and code points past U+10FFFF).
        let (len, second) = match lead {
            0xC2..=0xDF => (2, 0x80..=0xBF),
            0xE0 => (3, 0xA0..=0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (3, 0x80..=0xBF),
            0xED => (3, 0x80..=0x9F),
            0xF0 => (4, 0x90..=0xBF),
            0xF1..=0xF3 => (4, 0x80..=0xBF),
            0xF4 => (4, 0x80..=0x8F),
            _ => return false,
        };
        let Some(seq) = s.get(i..i + len) else {
            return false;
        };
        if !second.contains(&seq[1]) || seq[2..].iter().any(|&c| c & 0xC0 != 0x80) {
            return false;
        }
        i += len;
    }
    true
}

/// A 32-byte block as four little-endian words.
#[inline(always)]
fn words(block: &[u8; 32]) -> [u64; 4] {
    std::array::from_fn(|k| u64::from_le_bytes(block[8 * k..8 * k + 8].try_into().unwrap()))
}

/// [`first_stop`] for the last bytes of the body (fewer than 32): scans a
/// copy padded with zeros, which read as control bytes and so stop the
/// scan. The result is at most `rest.len()`.
#[inline(never)]
fn tail_stop(rest: &[u8], high: &mut u64) -> usize {
    let mut padded = [0u8; 32];
    let rest = &rest[..rest.len().min(32)];
    padded[..rest.len()].copy_from_slice(rest);
    let words = words(&padded);
    first_stop(words, words.map(string_stops), high).min(rest.len())
}

/// Index in a 32-byte block of the first byte flagged in `masks` (not all
/// zero); ORs the bytes before it into `high`.
#[inline(always)]
fn first_stop(words: [u64; 4], masks: [u64; 4], high: &mut u64) -> usize {
    if masks[0] | masks[1] != 0 {
        if masks[0] != 0 {
            *high |= before_first(words[0], masks[0]);
            return first_byte(masks[0]);
        }
        *high |= words[0] | before_first(words[1], masks[1]);
        return 8 + first_byte(masks[1]);
    }
    *high |= words[0] | words[1];
    if masks[2] != 0 {
        *high |= before_first(words[2], masks[2]);
        return 16 + first_byte(masks[2]);
    }
    *high |= words[2] | before_first(words[3], masks[3]);
    24 + first_byte(masks[3])
}

/// Index of the first flagged byte of a non-zero mask.
#[inline(always)]
fn first_byte(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

/// The bytes of `w` before the first flagged byte of the non-zero `mask`.
#[inline(always)]
fn before_first(w: u64, mask: u64) -> u64 {
    w & ((mask & mask.wrapping_neg()) - 1)
}

/// The recognised top-level keys.
#[derive(Clone, Copy)]
enum Key {
    Model,
    Stream,
    MaxTokens,
    MaxCompletionTokens,
    MaxOutputTokens,
    N,
    StreamOptions,
    Models,
    Messages,
    Prompt,
    Input,
    System,
    Instructions,
    Tools,
    User,
    Metadata,
}

impl Key {
    #[inline]
    fn lookup(key: &[u8]) -> Option<Key> {
        Some(match key {
            b"model" => Key::Model,
            b"stream" => Key::Stream,
            b"max_tokens" => Key::MaxTokens,
            b"max_completion_tokens" => Key::MaxCompletionTokens,
            b"max_output_tokens" => Key::MaxOutputTokens,
            b"n" => Key::N,
            b"stream_options" => Key::StreamOptions,
            b"models" => Key::Models,
            b"messages" => Key::Messages,
            b"prompt" => Key::Prompt,
            b"input" => Key::Input,
            b"system" => Key::System,
            b"instructions" => Key::Instructions,
            b"tools" => Key::Tools,
            b"user" => Key::User,
            b"metadata" => Key::Metadata,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::Model => "model",
            Key::Stream => "stream",
            Key::MaxTokens => "max_tokens",
            Key::MaxCompletionTokens => "max_completion_tokens",
            Key::MaxOutputTokens => "max_output_tokens",
            Key::N => "n",
            Key::StreamOptions => "stream_options",
            Key::Models => "models",
            Key::Messages => "messages",
            Key::Prompt => "prompt",
            Key::Input => "input",
            Key::System => "system",
            Key::Instructions => "instructions",
            Key::Tools => "tools",
            Key::User => "user",
            Key::Metadata => "metadata",
        }
    }

    #[inline]
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

const INCLUDE_USAGE: &str = "stream_options.include_usage";
const METADATA_USER_ID: &str = "metadata.user_id";

const EXPECT_STRING: &str = "a string";
const EXPECT_BOOL: &str = "a boolean";
const EXPECT_UINT: &str = "a non-negative integer";
const EXPECT_OBJECT: &str = "an object";
const EXPECT_STRINGS: &str = "an array of strings";

/// What a value starting with `c` is, for type errors.
fn describe(c: u8) -> &'static str {
    match c {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        b'-' => "a negative number",
        _ => "a number",
    }
}

/// Value of four hex digits.
#[inline]
fn hex4(digits: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in digits.get(..4)? {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u32::from(d);
    }
    Some(v)
}

/// Index of the first byte at or after `i` that is not an ASCII digit.
#[inline]
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

struct Scanner<'a> {
    b: &'a [u8],
    pos: usize,
    /// Reused buffer for keys that contain escapes.
    key_buf: Vec<u8>,
    /// The first type or duplicate error, reported if the body is valid JSON.
    deferred: Option<Box<ScanError>>,
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.pos) {
            self.pos += 1;
        }
    }

    // ----- errors (cold) -----

    #[cold]
    #[inline(never)]
    fn error(&self, kind: ErrorKind, offset: usize, message: String) -> Box<ScanError> {
        let offset = offset.min(self.b.len());
        let before = &self.b[..offset];
        let line_start = memrchr(b'\n', before).map_or(0, |i| i + 1);
        Box::new(ScanError {
            kind,
            offset,
            line: 1 + memchr_iter(b'\n', before).count(),
            column: offset - line_start + 1,
            message,
        })
    }

    #[cold]
    #[inline(never)]
    fn syntax(&self, offset: usize, message: &str) -> Box<ScanError> {
        let message = if offset >= self.b.len() {
            format!("{message}, found end of input")
        } else {
            message.to_owned()
        };
        self.error(ErrorKind::Syntax, offset, message)
    }

    /// "expected ..." at the current position.
    #[cold]
    #[inline(never)]
    fn expected(&self, what: &str) -> Box<ScanError> {
        self.syntax(self.pos, &format!("expected {what}"))
    }

    #[cold]
    #[inline(never)]
    fn too_deep(&self, offset: usize) -> Box<ScanError> {
        self.error(
            ErrorKind::TooDeep,
            offset,
            format!("nesting deeper than {MAX_DEPTH} levels"),
        )
    }

    /// Records a type or duplicate error; the first one wins (and later
    /// ones don't even format a message, so hostile bodies full of them stay
    /// cheap).
    #[cold]
    #[inline(never)]
    fn defer(&mut self, kind: ErrorKind, offset: usize, message: impl FnOnce() -> String) {
        if self.deferred.is_none() {
            self.deferred = Some(self.error(kind, offset, message()));
        }
    }

    #[cold]
    #[inline(never)]
    fn duplicate(&mut self, field: &'static str, key_at: usize) {
        self.defer(ErrorKind::DuplicateField(field), key_at, || {
            format!("duplicate field `{field}`")
        });
    }

    /// The value at the current position has the wrong type for `field`:
    /// validate and skip it, then record the error.
    #[cold]
    #[inline(never)]
    fn wrong_type(
        &mut self,
        field: &'static str,
        expected: &'static str,
        depth: usize,
        element: bool,
    ) -> Res<()> {
        let start = self.pos;
        let found = self.peek().map_or("nothing", describe);
        self.skip_value(depth)?;
        let element = if element { "an element that is " } else { "" };
        self.defer(ErrorKind::FieldType { field, expected }, start, || {
            format!("invalid type for `{field}`: expected {expected}, found {element}{found}")
        });
        Ok(())
    }

    /// The string whose contents start at `from` can't go on at `at`: a
    /// control byte, or the end of the body, or `err` (an escape problem).
    /// Invalid UTF-8 before `at` is reported instead, since it comes first.
    #[cold]
    #[inline(never)]
    fn string_error(&self, from: usize, at: usize, err: Option<Box<ScanError>>) -> Box<ScanError> {
        if let Err(e) = std::str::from_utf8(&self.b[from..at]) {
            return self.syntax(from + e.valid_up_to(), "invalid UTF-8");
        }
        match (err, self.b.get(at)) {
            (Some(err), _) => err,
            (None, None) => self.syntax(at, "unterminated string"),
            (None, Some(_)) => self.syntax(
                at,
                "control character (\\u0000-\\u001F) found while parsing a string",
            ),
        }
    }

    // ----- strings -----

    /// Validates the escape whose `\` is at `i`; returns the index after it.
    #[inline]
    fn escape(&self, i: usize) -> Res<usize> {
        match self.b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                for k in i + 2..i + 6 {
                    match self.b.get(k) {
                        Some(c) if c.is_ascii_hexdigit() => {}
                        _ => return Err(self.syntax(k, "expected a hex digit in a \\u escape")),
                    }
                }
                Ok(i + 6)
            }
            _ => Err(self.syntax(i + 1, "invalid escape in a string")),
        }
    }

    /// Validates the string whose opening quote is at `self.pos` and moves
    /// past it. Returns whether it contains escapes.
    ///
    /// Runs 32 bytes (four `u64` words) at a time to the next `"`, `\` or
    /// control byte, OR-ing the bytes it passes into `high`; only a string
    /// that holds non-ASCII bytes is UTF-8-checked ([`is_utf8`]), once, when
    /// it closes. The common two-byte escapes cost one table look-up.
    #[inline]
    fn skip_string(&mut self) -> Res<bool> {
        let b = self.b;
        let from = self.pos + 1;
        let mut i = from;
        let mut high = 0u64;
        let mut escaped = false;
        loop {
            let stop = loop {
                let Some(block) = b.get(i..).and_then(|r| r.first_chunk::<32>()) else {
                    break tail_stop(&b[i.min(b.len())..], &mut high) + i;
                };
                // Most strings (keys, short values) end in their first 8
                // bytes: one word tested before the whole block.
                let first = u64::from_le_bytes(*block.first_chunk::<8>().unwrap());
                let stops = string_stops(first);
                if stops != 0 {
                    high |= before_first(first, stops);
                    break i + first_byte(stops);
                }
                let words = words(block);
                let masks = words.map(string_stops);
                if masks[0] | masks[1] | masks[2] | masks[3] == 0 {
                    high |= words[0] | words[1] | words[2] | words[3];
                    i += 32;
                    continue;
                }
                break i + first_stop(words, masks, &mut high);
            };
            match b.get(stop) {
                Some(b'\\') => {
                    escaped = true;
                    // Most escapes are one of `\n`, `\"`, ...: one table look-up.
                    if let Some(&next) = b.get(stop + 1)
                        && SIMPLE_ESCAPE[usize::from(next)]
                    {
                        i = stop + 2;
                        continue;
                    }
                    i = match self.escape(stop) {
                        Ok(next) => next,
                        Err(e) => return Err(self.string_error(from, stop, Some(e))),
                    };
                }
                Some(b'"') => {
                    if high & HI != 0 && !is_utf8(&b[from..stop]) {
                        return Err(self.string_error(from, stop, None));
                    }
                    self.pos = stop + 1;
                    return Ok(escaped);
                }
                _ => return Err(self.string_error(from, stop, None)),
            }
        }
    }

    /// Decodes the validated string contents `from..to` into `out`. A lone
    /// surrogate is an error if `strict`, U+FFFD otherwise.
    fn decode_into(&self, from: usize, to: usize, strict: bool, out: &mut Vec<u8>) -> Res<()> {
        let b = self.b;
        let mut i = from;
        while let Some(k) = memchr(b'\\', &b[i..to]) {
            out.extend_from_slice(&b[i..i + k]);
            let at = i + k;
            i = at + 2;
            let byte = match b.get(at + 1) {
                Some(b'"') => b'"',
                Some(b'\\') => b'\\',
                Some(b'/') => b'/',
                Some(b'b') => 0x08,
                Some(b'f') => 0x0c,
                Some(b'n') => b'\n',
                Some(b'r') => b'\r',
                Some(b't') => b'\t',
                _ => {
                    let bad = || self.syntax(at, "invalid \\u escape");
                    let unit = hex4(&b[i..to]).ok_or_else(bad)?;
                    i += 4;
                    let code = match unit {
                        0xD800..=0xDBFF => {
                            let low = if b.get(i..i + 2) == Some(b"\\u") && i + 6 <= to {
                                hex4(&b[i + 2..to]).filter(|l| (0xDC00..=0xDFFF).contains(l))
                            } else {
                                None
                            };
                            match low {
                                Some(low) => {
                                    i += 6;
                                    Some(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
                                }
                                None => None,
                            }
                        }
                        0xDC00..=0xDFFF => None,
                        _ => Some(unit),
                    };
                    let ch = match code.and_then(char::from_u32) {
                        Some(ch) => ch,
                        None if strict => {
                            return Err(self.syntax(at, "lone surrogate in a \\u escape"));
                        }
                        None => char::REPLACEMENT_CHARACTER,
                    };
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    continue;
                }
            };
            out.push(byte);
        }
        out.extend_from_slice(&b[i..to]);
        Ok(())
    }

    /// Reads the string at `self.pos` and returns its decoded value.
    fn decoded_string(&mut self) -> Res<String> {
        let start = self.pos;
        let escaped = self.skip_string()?;
        let (from, to) = (start + 1, self.pos - 1);
        let bytes = if escaped {
            let mut out = Vec::with_capacity(to - from);
            self.decode_into(from, to, true, &mut out)?;
            out
        } else {
            self.b[from..to].to_vec()
        };
        // Always valid: the run was checked and escapes decode to UTF-8.
        String::from_utf8(bytes).map_err(|_| self.syntax(start, "invalid UTF-8"))
    }

    /// Reads the key string at `self.pos` and classifies its unescaped form.
    #[inline]
    fn key<T>(&mut self, classify: impl Fn(&[u8]) -> T) -> Res<T> {
        let start = self.pos;
        let escaped = self.skip_string()?;
        let (from, to) = (start + 1, self.pos - 1);
        if !escaped {
            return Ok(classify(&self.b[from..to]));
        }
        let mut buf = std::mem::take(&mut self.key_buf);
        buf.clear();
        let result = self
            .decode_into(from, to, false, &mut buf)
            .map(|()| classify(&buf));
        self.key_buf = buf;
        result
    }

    /// After a key: whitespace, `:`, whitespace.
    #[inline]
    fn colon(&mut self) -> Res<()> {
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.expected("`:`"));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(())
    }

    // ----- scalars -----

    #[inline]
    fn literal(&mut self, lit: &'static [u8]) -> Res<()> {
        let rest = &self.b[self.pos..];
        if rest.starts_with(lit) {
            self.pos += lit.len();
            return Ok(());
        }
        let bad = rest.iter().zip(lit).take_while(|(a, b)| a == b).count();
        let lit = std::str::from_utf8(lit).unwrap_or_default();
        Err(self.syntax(self.pos + bad, &format!("expected `{lit}`")))
    }

    fn skip_number(&mut self) -> Res<()> {
        let b = self.b;
        let mut i = self.pos;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits_end(b, i + 1),
            _ => return Err(self.syntax(i, "expected a digit")),
        }
        if b.get(i) == Some(&b'.') {
            let j = digits_end(b, i + 1);
            if j == i + 1 {
                return Err(self.syntax(j, "expected a digit after the decimal point"));
            }
            i = j;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let j = digits_end(b, i);
            if j == i {
                return Err(self.syntax(j, "expected a digit in the exponent"));
            }
            i = j;
        }
        self.pos = i;
        Ok(())
    }

    /// A number starting with a digit at `self.pos`: its value if it is an
    /// integer that fits `u64`, else a description of what it is.
    #[inline]
    fn number_u64(&mut self) -> Res<Result<u64, &'static str>> {
        let b = self.b;
        let start = self.pos;
        let mut i = start;
        let mut value = 0u64;
        let mut overflow = false;
        if b.get(i) == Some(&b'0') {
            i += 1;
        } else {
            while let Some(&c @ b'0'..=b'9') = b.get(i) {
                match value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(c - b'0')))
                {
                    Some(v) => value = v,
                    None => overflow = true,
                }
                i += 1;
            }
        }
        if let Some(b'.' | b'e' | b'E') = b.get(i) {
            self.skip_number()?;
            return Ok(Err("a number with a fraction or exponent"));
        }
        self.pos = i;
        if overflow {
            return Ok(Err("an integer too large for 64 bits"));
        }
        Ok(Ok(value))
    }

    // ----- typed fields -----

    fn opt_bool(&mut self, field: &'static str, depth: usize) -> Res<Option<(bool, Range<usize>)>> {
        let start = self.pos;
        match self.peek() {
            Some(b't') => {
                self.literal(b"true")?;
                Ok(Some((true, start..self.pos)))
            }
            Some(b'f') => {
                self.literal(b"false")?;
                Ok(Some((false, start..self.pos)))
            }
            Some(b'n') => self.literal(b"null").map(|()| None),
            _ => self
                .wrong_type(field, EXPECT_BOOL, depth, false)
                .map(|()| None),
        }
    }

    fn opt_u64(&mut self, field: &'static str) -> Res<Option<u64>> {
        let start = self.pos;
        match self.peek() {
            Some(b'0'..=b'9') => match self.number_u64()? {
                Ok(v) => Ok(Some(v)),
                Err(found) => {
                    self.defer(
                        ErrorKind::FieldType {
                            field,
                            expected: EXPECT_UINT,
                        },
                        start,
                        || {
                            format!(
                                "invalid type for `{field}`: expected {EXPECT_UINT}, found {found}"
                            )
                        },
                    );
                    Ok(None)
                }
            },
            Some(b'n') => self.literal(b"null").map(|()| None),
            _ => self.wrong_type(field, EXPECT_UINT, 1, false).map(|()| None),
        }
    }

    /// The `stream_options` object at `self.pos` (depth 2).
    fn stream_options(&mut self) -> Res<StreamOptions> {
        let open = self.pos;
        self.pos += 1;
        let mut include_usage = None;
        let mut include_usage_null = None;
        let mut seen = false;
        self.skip_ws();
        if self.peek() != Some(b'}') {
            let mut first = true;
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.expected(if first {
                        "a string key or `}`"
                    } else {
                        "a string key"
                    }));
                }
                first = false;
                let key_at = self.pos;
                let is_include_usage = self.key(|k| k == b"include_usage")?;
                self.colon()?;
                if !is_include_usage {
                    self.skip_value(2)?;
                } else if seen {
                    self.skip_value(2)?;
                    self.duplicate(INCLUDE_USAGE, key_at);
                } else {
                    seen = true;
                    let at = self.pos;
                    include_usage = self.opt_bool(INCLUDE_USAGE, 2)?;
                    if include_usage.is_none() && self.b.get(at) == Some(&b'n') {
                        include_usage_null = Some(at..self.pos);
                    }
                }
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                    }
                    Some(b'}') => break,
                    _ => return Err(self.expected("`,` or `}`")),
                }
            }
        }
        self.pos += 1;
        Ok(StreamOptions {
            span: open..self.pos,
            include_usage,
            include_usage_null,
        })
    }

    /// `user_id` of the `metadata` object at `self.pos` (depth 2); the
    /// object's other members are skipped.
    fn metadata_user_id(&mut self) -> Res<Option<String>> {
        self.pos += 1;
        let mut user_id = None;
        let mut seen = false;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(None);
        }
        let mut first = true;
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.expected(if first {
                    "a string key or `}`"
                } else {
                    "a string key"
                }));
            }
            first = false;
            let key_at = self.pos;
            let is_user_id = self.key(|k| k == b"user_id")?;
            self.colon()?;
            if !is_user_id {
                self.skip_value(2)?;
            } else if seen {
                self.skip_value(2)?;
                self.duplicate(METADATA_USER_ID, key_at);
            } else {
                seen = true;
                match self.peek() {
                    Some(b'"') => user_id = Some(self.decoded_string()?),
                    Some(b'n') => self.literal(b"null")?,
                    _ => self.wrong_type(METADATA_USER_ID, EXPECT_STRING, 2, false)?,
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(user_id);
                }
                _ => return Err(self.expected("`,` or `}`")),
            }
        }
    }

    /// The `models` array at `self.pos` (depth 2).
    fn models(&mut self) -> Res<Vec<String>> {
        self.pos += 1;
        let mut out = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(out);
        }
        loop {
            if self.peek() == Some(b'"') {
                out.push(self.decoded_string()?);
            } else {
                self.wrong_type("models", EXPECT_STRINGS, 2, true)?;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(out);
                }
                _ => return Err(self.expected("`,` or `]`")),
            }
        }
    }

    /// The value of the recognised top-level key `key`, at `self.pos`.
    fn field(&mut self, key: Key, f: &mut Fields) -> Res<()> {
        let start = self.pos;
        let name = key.name();
        match key {
            Key::Model => match self.peek() {
                Some(b'"') => {
                    let value = self.decoded_string()?;
                    f.model = Some(StrField {
                        span: start..self.pos,
                        value,
                    });
                }
                Some(b'n') => self.literal(b"null")?,
                _ => self.wrong_type(name, EXPECT_STRING, 1, false)?,
            },
            Key::Stream => f.stream = self.opt_bool(name, 1)?.map(|(v, _)| v),
            Key::MaxTokens => f.max_tokens = self.opt_u64(name)?,
            Key::MaxCompletionTokens => f.max_completion_tokens = self.opt_u64(name)?,
            Key::MaxOutputTokens => f.max_output_tokens = self.opt_u64(name)?,
            Key::N => f.n = self.opt_u64(name)?,
            Key::StreamOptions => match self.peek() {
                Some(b'{') => f.stream_options = Some(self.stream_options()?),
                Some(b'n') => {
                    let at = self.pos;
                    self.literal(b"null")?;
                    f.stream_options_null = Some(at..self.pos);
                }
                _ => self.wrong_type(name, EXPECT_OBJECT, 1, false)?,
            },
            Key::Models => match self.peek() {
                Some(b'[') => f.models = Some(self.models()?),
                Some(b'n') => self.literal(b"null")?,
                _ => self.wrong_type(name, EXPECT_STRINGS, 1, false)?,
            },
            Key::User => match self.peek() {
                Some(b'"') => f.user = Some(self.decoded_string()?),
                Some(b'n') => self.literal(b"null")?,
                _ => self.wrong_type(name, EXPECT_STRING, 1, false)?,
            },
            Key::Metadata => match self.peek() {
                Some(b'{') => f.metadata_user_id = self.metadata_user_id()?,
                _ => self.skip_value(1)?,
            },
            Key::Messages
            | Key::Prompt
            | Key::Input
            | Key::System
            | Key::Instructions
            | Key::Tools => {
                self.skip_value(1)?;
                f.prompt_bytes += self.pos - start;
            }
        }
        Ok(())
    }

    // ----- structure -----

    /// Validates and skips the value at `self.pos` (whitespace already
    /// skipped), which sits inside containers nested `depth` deep.
    ///
    /// Iterative: bit `l - 1` of `objects` says whether the container opened
    /// at relative level `l` is an object (1) or an array (0).
    fn skip_value(&mut self, depth: usize) -> Res<()> {
        let max_level = MAX_DEPTH.saturating_sub(depth);
        let mut level = 0usize;
        let mut objects = 0u128;
        'value: loop {
            match self.peek() {
                Some(b'"') => {
                    self.skip_string()?;
                }
                Some(b'{') => {
                    if level == max_level {
                        return Err(self.too_deep(self.pos));
                    }
                    self.pos += 1;
                    objects |= 1 << level;
                    level += 1;
                    self.skip_ws();
                    match self.peek() {
                        Some(b'}') => {
                            self.pos += 1;
                            level -= 1;
                        }
                        Some(b'"') => {
                            self.skip_string()?;
                            self.colon()?;
                            continue 'value;
                        }
                        _ => return Err(self.expected("a string key or `}`")),
                    }
                }
                Some(b'[') => {
                    if level == max_level {
                        return Err(self.too_deep(self.pos));
                    }
                    self.pos += 1;
                    objects &= !(1 << level);
                    level += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        level -= 1;
                    } else {
                        continue 'value;
                    }
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                _ => return Err(self.expected("a JSON value")),
            }
            // After a complete value: close containers until a `,` follows.
            loop {
                if level == 0 {
                    return Ok(());
                }
                self.skip_ws();
                let in_object = objects & (1 << (level - 1)) != 0;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if in_object {
                            if self.peek() != Some(b'"') {
                                return Err(self.expected("a string key"));
                            }
                            self.skip_string()?;
                            self.colon()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        level -= 1;
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        level -= 1;
                    }
                    _ => {
                        return Err(self.expected(if in_object {
                            "`,` or `}`"
                        } else {
                            "`,` or `]`"
                        }));
                    }
                }
            }
        }
    }

    /// The top-level object at `self.pos`.
    fn top_object(&mut self) -> Res<Fields> {
        let mut f = Fields::default();
        let mut seen = 0u16;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            f.object_end = self.pos;
            self.pos += 1;
            return Ok(f);
        }
        let mut first = true;
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.expected(if first {
                    "a string key or `}`"
                } else {
                    "a string key"
                }));
            }
            first = false;
            let key_at = self.pos;
            let key = self.key(Key::lookup)?;
            self.colon()?;
            match key {
                None => self.skip_value(1)?,
                Some(key) if seen & key.bit() != 0 => {
                    self.skip_value(1)?;
                    self.duplicate(key.name(), key_at);
                }
                Some(key) => {
                    seen |= key.bit();
                    self.field(key, &mut f)?;
                }
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    f.object_end = self.pos;
                    self.pos += 1;
                    return Ok(f);
                }
                _ => return Err(self.expected("`,` or `}`")),
            }
        }
    }

    /// The body's top level is a value other than an object: validate it
    /// anyway, so that `NotAnObject` is only reported for valid JSON.
    #[cold]
    #[inline(never)]
    fn not_an_object(&mut self) -> Box<ScanError> {
        let start = self.pos;
        let found = self.peek().map_or("nothing", describe);
        if let Err(e) = self.skip_value(0) {
            return e;
        }
        self.skip_ws();
        if self.pos != self.b.len() {
            return self.expected("end of input");
        }
        self.error(
            ErrorKind::NotAnObject,
            start,
            format!("expected a JSON object, found {found}"),
        )
    }

    fn document(&mut self) -> Res<Fields> {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => {}
            Some(_) => return Err(self.not_an_object()),
            None => return Err(self.expected("a JSON object")),
        }
        let fields = self.top_object()?;
        self.skip_ws();
        if self.pos != self.b.len() {
            return Err(self.expected("end of input after the top-level object"));
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;
    use serde_json::{Map, Value};
    use std::collections::HashSet;

    #[track_caller]
    fn ok(body: &str) -> Fields {
        scan(body.as_bytes()).unwrap_or_else(|e| panic!("{body:?}: {e}"))
    }

    #[track_caller]
    fn err(body: impl AsRef<[u8]>) -> ScanError {
        let body = body.as_ref();
        match scan(body) {
            Ok(f) => panic!("{:?} scanned as {f:?}", String::from_utf8_lossy(body)),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn kind(body: impl AsRef<[u8]>) -> ErrorKind {
        err(body).kind
    }

    fn serde_accepts(body: &[u8]) -> bool {
        serde_json::from_slice::<IgnoredAny>(body).is_ok() && std::str::from_utf8(body).is_ok()
    }

    fn field_type(field: &'static str, expected: &'static str) -> ErrorKind {
        ErrorKind::FieldType { field, expected }
    }

    #[test]
    fn string_len_spans_and_decodes() {
        assert_eq!(string_len(br#""abc",1"#), Some((5, 3)));
        // `a"bé😀`: 1 + 1 + 1 + 2 + 4 decoded bytes.
        let s = br#""a\"b\u00e9\ud83d\ude00"}"#;
        assert_eq!(string_len(s), Some((s.len() - 1, 9)));
        assert_eq!(string_len("\"é\"".as_bytes()), Some((4, 2)));
        for bad in [
            &br#""\ud83d""#[..],
            br#""\x""#,
            b"\"a\x01\"",
            br#""open"#,
            b"\"\xff\"",
            b"x",
        ] {
            assert_eq!(string_len(bad), None, "{bad:?}");
        }
    }

    proptest! {
        /// On valid JSON objects, the early exit finds what the whole scan finds.
        #[test]
        fn top_level_model_agrees_with_the_scan(
            keys in proptest::collection::vec(
                prop_oneof![Just("model"), Just("id"), Just("choices"), Just("x\\u006d")], 0..5),
            values in proptest::collection::vec(
                prop_oneof![
                    Just(r#""gpt""#), Just(r#""a\"b""#), Just("null"), Just("3"),
                    Just(r#"{"model":"in"}"#), Just(r#"[{"model":"in"},1]"#),
                ], 5),
        ) {
            let mut seen = std::collections::HashSet::new();
            let members: Vec<String> = keys
                .iter()
                .zip(&values)
                .filter(|(k, _)| seen.insert(**k))
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            let body = format!("{{{}}}", members.join(","));
            if let Ok(fields) = scan(body.as_bytes()) {
                prop_assert_eq!(top_level_model(body.as_bytes()), fields.model, "{}", body);
            }
        }
    }

    #[test]
    fn top_level_model_stops_at_the_member() {
        let answer = r#"{"id":"x","meta":{"model":"inner"},"list":[{"model":"no"}],"model":"m\u00e9",
            "choices":[{"message":{"content":"broken after the model"#;
        let m = top_level_model(answer.as_bytes()).unwrap();
        assert_eq!(m.value, "mé");
        assert_eq!(&answer[m.span], r#""m\u00e9""#);
        assert_eq!(top_level_model(br#"{"id":1,"model":null}"#), None);
        assert_eq!(top_level_model(br#"{"id":1}"#), None);
        assert_eq!(top_level_model(br#"["model"]"#), None);
        assert_eq!(top_level_model(br#"{"a":tru,"model":"x"}"#), None);
        assert_eq!(top_level_model(b""), None);
    }

    // ----- fields -----

    #[test]
    fn extracts_every_field() {
        let body = r#"{"model":"gpt-4o","stream":true,"max_tokens":100,"max_completion_tokens":200,
            "max_output_tokens":300,"n":2,"stream_options":{"include_usage":false},
            "models":["a","b\"c"],"messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;
        let f = ok(body);
        let model = f.model.clone().unwrap();
        assert_eq!(model.value, "gpt-4o");
        assert_eq!(&body[model.span], "\"gpt-4o\"");
        assert_eq!(f.stream, Some(true));
        assert_eq!(f.max_tokens, Some(100));
        assert_eq!(f.max_completion_tokens, Some(200));
        assert_eq!(f.max_output_tokens, Some(300));
        assert_eq!(f.n, Some(2));
        let so = f.stream_options.clone().unwrap();
        assert_eq!(&body[so.span.clone()], r#"{"include_usage":false}"#);
        let (usage, span) = so.include_usage.unwrap();
        assert!(!usage);
        assert_eq!(&body[span], "false");
        assert_eq!(f.models, Some(vec!["a".to_owned(), "b\"c".to_owned()]));
        assert_eq!(f.prompt_bytes, r#"[{"role":"user","content":"hi"}]"#.len());
        assert_eq!(f.object_end, body.len() - 1);
        assert_eq!((f.user, f.metadata_user_id), (None, None));
    }

    #[test]
    fn end_users_are_read_from_user_and_metadata() {
        let f = ok(
            r#"{"model":"m","user":"end-\u00e9","metadata":{"a":[1,{"user_id":2}],"user_id":"anth-1","b":null}}"#,
        );
        assert_eq!(f.user.as_deref(), Some("end-\u{e9}"));
        assert_eq!(f.metadata_user_id.as_deref(), Some("anth-1"));
        for body in [
            r#"{"user":null,"metadata":null}"#,
            r#"{"metadata":{}}"#,
            r#"{"metadata":"not an object"}"#,
            r#"{"metadata":[{"user_id":"x"}]}"#,
            r#"{"metadata":{"user_id":null}}"#,
        ] {
            let f = ok(body);
            assert_eq!((f.user, f.metadata_user_id), (None, None), "{body}");
        }
        assert_eq!(kind(r#"{"user":5}"#), field_type("user", "a string"));
        assert_eq!(
            kind(r#"{"metadata":{"user_id":["x"]}}"#),
            field_type("metadata.user_id", "a string")
        );
        assert_eq!(
            kind(r#"{"metadata":{"user_id":"a","user_id":"b"}}"#),
            ErrorKind::DuplicateField("metadata.user_id")
        );
        assert_eq!(
            kind(r#"{"user":"a","user":"b"}"#),
            ErrorKind::DuplicateField("user")
        );
        assert_eq!(kind(r#"{"metadata":{"user_id" "a"}}"#), ErrorKind::Syntax);
    }

    #[test]
    fn absent_fields_are_none() {
        let f = ok("{}");
        assert_eq!(
            f,
            Fields {
                object_end: 1,
                ..Fields::default()
            }
        );
        let f = ok(r#" { "temperature" : 1 , "user" : "x" } "#);
        assert_eq!(f.model, None);
        assert_eq!(f.object_end, 36);
    }

    #[test]
    fn null_means_absent() {
        let body = r#"{"model":null,"stream":null,"max_tokens":null,"max_completion_tokens":null,
            "max_output_tokens":null,"n":null,"stream_options":null,"models":null,"messages":null}"#;
        let f = ok(body);
        let null_at = body.find(r#""stream_options":null"#).unwrap() + r#""stream_options":"#.len();
        assert_eq!(
            f,
            Fields {
                prompt_bytes: 4,
                object_end: body.len() - 1,
                stream_options_null: Some(null_at..null_at + 4),
                ..Fields::default()
            }
        );
        assert_eq!(&body[null_at..null_at + 4], "null");
        let body = r#"{"stream_options":{"include_usage":null}}"#;
        let so = ok(body).stream_options.unwrap();
        assert_eq!(so.include_usage, None);
        assert_eq!(&body[so.include_usage_null.unwrap()], "null");
    }

    #[test]
    fn integer_bounds() {
        assert_eq!(ok(r#"{"n":0}"#).n, Some(0));
        assert_eq!(
            ok(r#"{"max_tokens":18446744073709551615}"#).max_tokens,
            Some(u64::MAX)
        );
        assert_eq!(
            kind(r#"{"max_tokens":18446744073709551616}"#),
            field_type("max_tokens", "a non-negative integer")
        );
        assert_eq!(
            kind(r#"{"max_tokens":99999999999999999999999}"#),
            field_type("max_tokens", "a non-negative integer")
        );
    }

    #[test]
    fn type_errors() {
        let cases: &[(&str, &str, &str)] = &[
            (r#"{"model":5}"#, "model", "a string"),
            (r#"{"model":true}"#, "model", "a string"),
            (r#"{"model":["gpt"]}"#, "model", "a string"),
            (r#"{"model":{"id":"gpt"}}"#, "model", "a string"),
            (r#"{"stream":"true"}"#, "stream", "a boolean"),
            (r#"{"stream":1}"#, "stream", "a boolean"),
            (r#"{"stream":[]}"#, "stream", "a boolean"),
            (
                r#"{"max_tokens":100.0}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_tokens":1e3}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_tokens":1E+3}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_tokens":-1}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_tokens":-0}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_tokens":"100"}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_tokens":true}"#,
                "max_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_completion_tokens":0.5}"#,
                "max_completion_tokens",
                "a non-negative integer",
            ),
            (
                r#"{"max_output_tokens":[1]}"#,
                "max_output_tokens",
                "a non-negative integer",
            ),
            (r#"{"n":{}}"#, "n", "a non-negative integer"),
            (r#"{"stream_options":true}"#, "stream_options", "an object"),
            (r#"{"stream_options":[]}"#, "stream_options", "an object"),
            (r#"{"stream_options":"{}"}"#, "stream_options", "an object"),
            (
                r#"{"stream_options":{"include_usage":"yes"}}"#,
                INCLUDE_USAGE,
                "a boolean",
            ),
            (
                r#"{"stream_options":{"include_usage":0}}"#,
                INCLUDE_USAGE,
                "a boolean",
            ),
            (r#"{"models":"gpt"}"#, "models", "an array of strings"),
            (r#"{"models":{}}"#, "models", "an array of strings"),
            (r#"{"models":["a",1]}"#, "models", "an array of strings"),
            (r#"{"models":[null]}"#, "models", "an array of strings"),
            (r#"{"models":[["a"]]}"#, "models", "an array of strings"),
        ];
        for &(body, field, expected) in cases {
            let e = err(body);
            assert_eq!(e.kind, field_type(field, expected), "{body}");
            assert!(serde_accepts(body.as_bytes()), "{body}");
            assert!(
                e.message.contains(field) && e.message.contains(expected),
                "{e}"
            );
        }
        let e = err(r#"{"max_tokens":-5}"#);
        assert_eq!(e.offset, 14);
        assert_eq!(
            e.to_string(),
            "invalid type for `max_tokens`: expected a non-negative integer, \
             found a negative number at line 1 column 15"
        );
    }

    #[test]
    fn first_semantic_error_in_document_order_wins() {
        assert_eq!(
            kind(r#"{"n":-1,"model":5}"#),
            field_type("n", "a non-negative integer")
        );
        assert_eq!(
            kind(r#"{"model":5,"n":-1}"#),
            field_type("model", "a string")
        );
        assert_eq!(
            kind(r#"{"model":5,"model":"x"}"#),
            field_type("model", "a string")
        );
        assert_eq!(
            kind(r#"{"model":"x","model":5,"n":-1}"#),
            ErrorKind::DuplicateField("model")
        );
    }

    #[test]
    fn syntax_errors_win_over_semantic_errors() {
        for body in [
            r#"{"model":5,"x":tru}"#,
            r#"{"model":"a","model":"b","x":[}"#,
            r#"{"model":5,"x":1} x"#,
            r#"{"n":1.5,"#,
            r#"{"models":[1,],"n":1}"#,
        ] {
            assert_eq!(kind(body), ErrorKind::Syntax, "{body}");
            assert!(!serde_accepts(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let cases: &[(&str, &str)] = &[
            (r#"{"model":"a","model":"b"}"#, "model"),
            (r#"{"model":null,"model":"b"}"#, "model"),
            (r#"{"model":"a","mod\u0065l":"b"}"#, "model"),
            (
                r#"{"\u006d\u006f\u0064\u0065\u006c":"a","model":"b"}"#,
                "model",
            ),
            (r#"{"stream":true,"stream":false}"#, "stream"),
            (r#"{"max_tokens":1,"max_tokens":1}"#, "max_tokens"),
            (r#"{"n":1,"n":2}"#, "n"),
            (r#"{"models":[],"models":["a"]}"#, "models"),
            (r#"{"messages":[],"messages":[]}"#, "messages"),
            (r#"{"prompt":"a","prompt":"b"}"#, "prompt"),
            (r#"{"input":"a","input":"b"}"#, "input"),
            (
                r#"{"stream_options":{},"stream_options":{}}"#,
                "stream_options",
            ),
            (
                r#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
                INCLUDE_USAGE,
            ),
            (
                r#"{"stream_options":{"include_usage":true,"include\u005fusage":null}}"#,
                INCLUDE_USAGE,
            ),
        ];
        for &(body, field) in cases {
            let e = err(body);
            assert_eq!(e.kind, ErrorKind::DuplicateField(field), "{body}");
            assert_eq!(e.message, format!("duplicate field `{field}`"));
        }
        // The error points at the second key.
        assert_eq!(err(r#"{"n":1, "n":2}"#).offset, 8);
        // Unrecognised and nested duplicates are none of our business.
        ok(r#"{"a":1,"a":2,"messages":[{"role":"user","role":"user"}]}"#);
        ok(r#"{"stream_options":{"x":1,"x":2}}"#);
    }

    #[test]
    fn keys_are_compared_unescaped() {
        let f = ok(r#"{"mod\u0065l":"gpt","max\u005Ftokens":7,"\u006e":3}"#);
        assert_eq!(f.model.unwrap().value, "gpt");
        assert_eq!(f.max_tokens, Some(7));
        assert_eq!(f.n, Some(3));
        let f =
            ok(r#"{"stream\u005foptions":{"include\u005fusage":true},"\u006d\u006fdels":["x"]}"#);
        assert!(f.stream_options.unwrap().include_usage.unwrap().0);
        assert_eq!(f.models, Some(vec!["x".to_owned()]));
        assert_eq!(
            kind(r#"{"str\u0065am":"yes"}"#),
            field_type("stream", "a boolean")
        );
        // Near misses are other keys.
        let f = ok(r#"{"Model":"a","model\u0000":"b","model ":"c","\"model\"":"d","mode":"e"}"#);
        assert_eq!(f.model, None);
        // A lone surrogate in a key is accepted (it can't name a field).
        assert_eq!(
            ok(r#"{"\ud800":"x","model":"m"}"#).model.unwrap().value,
            "m"
        );
    }

    #[test]
    fn nested_keys_with_recognised_names_are_ignored() {
        let body = r#"{"messages":[{"role":"user","content":"x","model":"evil","stream":"y",
            "n":-1,"max_tokens":1.5}],"metadata":{"model":5,"models":7,"stream_options":1},
            "tools":[{"model":{"model":"z"}}],"model":"real"}"#;
        let f = ok(body);
        assert_eq!(f.model.unwrap().value, "real");
        assert_eq!(
            (f.stream, f.n, f.max_tokens, f.models),
            (None, None, None, None)
        );
        assert_eq!(f.stream_options, None);
        // include_usage only counts inside stream_options.
        let f = ok(r#"{"include_usage":true,"stream_options":{"x":{"include_usage":"no"}}}"#);
        assert_eq!(f.stream_options.unwrap().include_usage, None);
    }

    #[test]
    fn decoded_strings() {
        let f = ok(r#"{"model":"a\"b\\c\/d\be\ff\ng\rh\ti\u00e9\u00E9\u4e2d\ud83d\ude00é😀"}"#);
        assert_eq!(
            f.model.unwrap().value,
            "a\"b\\c/d\u{8}e\u{c}f\ng\rh\tiéé中😀é😀"
        );
        let f = ok(r#"{"models":["\ud83d\ude00x","","\u0000"]}"#);
        assert_eq!(
            f.models.unwrap(),
            vec!["😀x".to_owned(), String::new(), "\0".to_owned()]
        );
        for body in [
            r#"{"model":"\ud800"}"#,
            r#"{"model":"\udc00"}"#,
            r#"{"model":"x\ud83d"}"#,
            r#"{"model":"\ud83d\u0041"}"#,
            r#"{"model":"\ud83d\ud83d"}"#,
            r#"{"model":"\ude00\ud83d"}"#,
            r#"{"models":["ok","\udfff"]}"#,
        ] {
            let e = err(body);
            assert_eq!(e.kind, ErrorKind::Syntax, "{body}");
            assert!(e.message.contains("lone surrogate"), "{e}");
            // serde_json's tree parser refuses them too; its validating
            // skipper does not.
            assert!(serde_json::from_str::<Value>(body).is_err());
            assert!(serde_accepts(body.as_bytes()));
        }
        assert_eq!(err(r#"{"model":"ab\ud800"}"#).offset, 12);
        // In skipped strings lone surrogates pass, as in serde_json::IgnoredAny.
        ok(r#"{"messages":"\ud800","x":["\udc00\ud800"]}"#);
    }

    #[test]
    fn spans_slice_literals_and_can_be_rewritten() {
        let body = r#"{ "messages": [{"role": "user", "content": "hello"}],
  "model" : "gpt-4o\u002dmini", "stream": true,
  "stream_options": { "include_usage" : false } }"#;
        let f = ok(body);
        let model = f.model.unwrap();
        assert_eq!(model.value, "gpt-4o-mini");
        assert_eq!(&body[model.span.clone()], r#""gpt-4o\u002dmini""#);
        let so = f.stream_options.unwrap();
        assert_eq!(&body[so.span.clone()], r#"{ "include_usage" : false }"#);
        let usage = so.include_usage.unwrap().1;
        assert_eq!(&body[usage.clone()], "false");

        // Rewrite the model, then include_usage (later spans first).
        let mut rewritten = body.to_owned();
        rewritten.replace_range(usage, "true");
        rewritten.replace_range(model.span, r#""other/model \"x\"""#);
        let f = ok(&rewritten);
        assert_eq!(f.model.unwrap().value, r#"other/model "x""#);
        assert!(f.stream_options.unwrap().include_usage.unwrap().0);
        let v: Value = serde_json::from_str(&rewritten).unwrap();
        assert_eq!(v["model"], r#"other/model "x""#);
        assert_eq!(v["stream_options"]["include_usage"], true);

        // Replacing the whole stream_options object.
        let f = ok(body);
        let mut rewritten = body.to_owned();
        rewritten.replace_range(f.stream_options.unwrap().span, r#"{"include_usage":true}"#);
        let v: Value = serde_json::from_str(&rewritten).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "gpt-4o-mini");
    }

    #[test]
    fn object_end_and_prompt_bytes() {
        let body = "\n { \"a\": 1 } \r\n\t";
        assert_eq!(ok(body).object_end, 11);
        assert_eq!(&body[11..12], "}");

        let messages = r#"[ {"role":"user","content":"0123456789"} ]"#;
        let prompt = r#""a prompt""#;
        let input = r#"["x", {"y": null}]"#;
        let body = format!(
            r#"{{"messages": {messages}, "model":"m", "prompt":{prompt},"input" : {input} ,"other":"{}"}}"#,
            "z".repeat(100)
        );
        let f = ok(&body);
        assert_eq!(f.prompt_bytes, messages.len() + prompt.len() + input.len());
        assert_eq!(f.object_end, body.len() - 1);
        assert_eq!(ok(r#"{"input":12.5e3}"#).prompt_bytes, 6);
        // Anthropic's system prompt, the Responses API's instructions and
        // tool definitions are prompt too.
        let system = r#"[{"type":"text","text":"Be brief."}]"#;
        let tools = r#"[{"name":"f","input_schema":{"type":"object"}}]"#;
        let body = format!(
            r#"{{"system":{system},"model":"m","tools":{tools},"instructions":"x","messages":[]}}"#
        );
        assert_eq!(
            ok(&body).prompt_bytes,
            system.len() + tools.len() + r#""x""#.len() + 2
        );
        // Nested ones don't count.
        assert_eq!(ok(r#"{"x":{"messages":"abc"}}"#).prompt_bytes, 0);
    }

    // ----- structure -----

    fn nested(levels: usize) -> String {
        // The top-level object is level 1; `levels - 1` arrays inside it.
        format!(
            "{{\"messages\":{}1{}}}",
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
    }

    #[test]
    fn is_object_validates_as_scan_does_without_fields() {
        assert!(is_object(nested(MAX_DEPTH).as_bytes()));
        assert!(!is_object(nested(MAX_DEPTH + 1).as_bytes()));
        for yes in [
            " {} ",
            r#"{"model":5,"model":"x","stream":"no","models":"\ud800"}"#,
            r#"{"a":[1,-2.5e3,true,null,{"b":"\u00e9\n"}]}"#,
        ] {
            assert!(is_object(yes.as_bytes()), "{yes}");
        }
        for no in [
            "[]",
            "1",
            "",
            "{",
            "{}}",
            "{} x",
            r#"{"a":01}"#,
            r#"{"a":"\x"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1,}"#,
            r#"{a:1}"#,
        ] {
            assert!(!is_object(no.as_bytes()), "{no}");
        }
        assert!(!is_object(b"{\"a\":\"\xff\"}"));
    }

    #[test]
    fn depth_limit() {
        ok(&nested(MAX_DEPTH));
        let e = err(nested(MAX_DEPTH + 1));
        assert_eq!(e.kind, ErrorKind::TooDeep);
        assert_eq!(e.offset, 12 + MAX_DEPTH - 1);
        // Objects count too, and so do stream_options and models.
        let deep_objects = format!(
            "{{{}1{}}}",
            "\"a\":{".repeat(MAX_DEPTH - 1).trim_end_matches('{'),
            "}".repeat(MAX_DEPTH - 2)
        );
        ok(&deep_objects);
        let too_deep = format!(
            "{{{}1{}}}",
            "\"a\":{".repeat(MAX_DEPTH),
            "}".repeat(MAX_DEPTH)
        );
        assert_eq!(kind(too_deep), ErrorKind::TooDeep);
        let so = format!(
            "{{\"stream_options\":{{\"x\":{}{}}}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(kind(so), ErrorKind::TooDeep);
        let models = format!(
            "{{\"models\":[{}{}]}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(kind(models), ErrorKind::TooDeep);
        // Hostile depth fails fast and without recursion, wherever it is.
        let hostile = "[".repeat(1 << 20);
        assert_eq!(kind(format!("{{\"x\":{hostile}")), ErrorKind::TooDeep);
        assert_eq!(kind(format!("{{\"model\":{hostile}")), ErrorKind::TooDeep);
        assert_eq!(kind(&hostile), ErrorKind::TooDeep);
        let hostile = "{\"a\":".repeat(1 << 18);
        assert_eq!(kind(hostile), ErrorKind::TooDeep);
        // A top level that is not an object may nest MAX_DEPTH deep too.
        let arrays = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(kind(&arrays), ErrorKind::NotAnObject);
        assert_eq!(kind(format!("[{arrays}]")), ErrorKind::TooDeep);
    }

    #[test]
    fn hostile_bodies_stay_linear() {
        let many_errors = format!("{{\"models\":[{}1]}}", "1,".repeat(200_000));
        assert_eq!(
            kind(many_errors),
            field_type("models", "an array of strings")
        );
        let escapes = format!("{{\"a\":\"{}\"}}", "\\n\\u0041".repeat(100_000));
        ok(&escapes);
        let keys = format!("{{{}\"x\":1}}", "\"mod\\u0065l\":null,".repeat(50_000));
        assert_eq!(kind(keys), ErrorKind::DuplicateField("model"));
        let digits = format!("{{\"n\":{}}}", "9".repeat(100_000));
        assert_eq!(kind(digits), field_type("n", "a non-negative integer"));
    }

    #[test]
    fn depth_agrees_with_serde_json_up_to_its_limit() {
        // serde_json's tree parser allows 127 levels, one fewer than we do.
        assert!(serde_json::from_str::<Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(128)).is_err());
        ok(&nested(127));
    }

    #[test]
    fn trailing_garbage() {
        ok("{}");
        ok(" \t\r\n{} \t\r\n");
        for body in [
            "{} x",
            "{}{}",
            "{},",
            "{}]",
            "{}\0",
            "{} \u{a0}",
            "{}}",
            "{} //",
        ] {
            let e = err(body);
            assert_eq!(e.kind, ErrorKind::Syntax, "{body:?}");
            assert!(e.message.starts_with("expected end of input"), "{e}");
            assert!(!serde_accepts(body.as_bytes()));
        }
        assert_eq!(err("{}  x").offset, 4);
    }

    #[test]
    fn not_an_object() {
        for (body, found) in [
            ("[]", "an array"),
            (" [1, {\"model\": 2}] ", "an array"),
            ("\"model\"", "a string"),
            ("1", "a number"),
            ("-1.5", "a negative number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let e = err(body);
            assert_eq!(e.kind, ErrorKind::NotAnObject, "{body}");
            assert_eq!(e.message, format!("expected a JSON object, found {found}"));
            assert!(serde_accepts(body.as_bytes()));
        }
        // Only valid JSON is "not an object"; the rest is a syntax error.
        for body in [
            "",
            "   ",
            "\n",
            "[1,",
            "[] x",
            "x",
            "nul",
            "'a'",
            "\u{feff}{}",
        ] {
            assert_eq!(kind(body), ErrorKind::Syntax, "{body:?}");
            assert!(!serde_accepts(body.as_bytes()));
        }
        let e = err("");
        assert_eq!(
            e.to_string(),
            "expected a JSON object, found end of input at line 1 column 1"
        );
        assert_eq!(
            err(" \n ").to_string(),
            "expected a JSON object, found end of input at line 2 column 2"
        );
    }

    #[test]
    fn syntax_errors_agree_with_serde_json() {
        let bad: &[&[u8]] = &[
            b"{",
            b"{\"a\"",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{,}",
            b"{\"a\" 1}",
            b"{\"a\":1 \"b\":2}",
            b"{'a':1}",
            b"{a:1}",
            b"{1:1}",
            b"{\"a\":01}",
            b"{\"a\":-01}",
            b"{\"a\":1.}",
            b"{\"a\":.5}",
            b"{\"a\":1.e5}",
            b"{\"a\":1e}",
            b"{\"a\":1e+}",
            b"{\"a\":+1}",
            b"{\"a\":-}",
            b"{\"a\":- 1}",
            b"{\"a\":0x10}",
            b"{\"a\":NaN}",
            b"{\"a\":Infinity}",
            b"{\"a\":tru}",
            b"{\"a\":truee}",
            b"{\"a\":nul}",
            b"{\"a\":False}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12\"}",
            b"{\"a\":\"\\u12G4\"}",
            b"{\"a\":\"\\U1234\"}",
            b"{\"a\":\"\\",
            b"{\"a\":\"\\u",
            b"{\"a\":\"abc",
            b"{\"a\":\"abcdefghijklmnopqrstuvwxyz",
            b"{\"a\":\"x\ny\"}",
            b"{\"a\":\"x\ty\"}",
            b"{\"a\":\"\x00\"}",
            b"{\"a\":\"\x1f\"}",
            b"{\"a\":[1,]}",
            b"{\"a\":[,1]}",
            b"{\"a\":[1 2]}",
            b"{\"a\":[}",
            b"{\"a\":{]}",
            b"{\"a\":{\"b\"}}",
            b"{\"a\":{\"b\":1,}}",
            b"{\"a\":{\"b\":1]}",
            b"{\"a\":[1}",
            b"{\"a\":[[]]]}",
            b"{\"model\":\"gpt",
            b"{\"model\":\"gpt\"",
            b"{\"model\" \"gpt\"}",
            b"{\"model\":gpt}",
            b"{\"n\":1.}",
            b"{\"n\":01}",
            b"{\"n\":-}",
            b"{\"stream\":tru}",
            b"{\"stream_options\":{\"include_usage\":tru}}",
            b"{\"stream_options\":{\"include_usage\":true,}}",
            b"{\"stream_options\":{include_usage:true}}",
            b"{\"models\":[\"a\",]}",
            b"{\"models\":[\"a\" \"b\"]}",
            b"{\"models\":[\"a\"}",
            b"{\"messages\":[{\"role\":\"user\"]}",
            // UTF-8: invalid bytes, overlong, surrogate code points, truncated.
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"\xc0\xaf\"}",
            b"{\"a\":\"\xed\xa0\x80\"}",
            b"{\"a\":\"\xe4\xb8\"}",
            b"{\"\xff\":1}",
            b"{\"model\":\"\x80\"}",
            b"{\"a\":1\xc2\xa0}",
            b"\xef\xbb\xbf{}",
        ];
        for &body in bad {
            let e = err(body);
            assert_eq!(
                e.kind,
                ErrorKind::Syntax,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(!serde_accepts(body), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn valid_oddities_agree_with_serde_json() {
        let good: &[&[u8]] = &[
            b"{\"a\":-0.0e+00,\"b\":0,\"c\":1E-7,\"d\":-12.5e10,\"e\":123456789012345678901234567890}",
            b"{\"a\":\"\\/\\b\\f\\n\\r\\t\\\"\\\\\\uABCD\\uabcd\"}",
            b"{\"a\":[],\"b\":{},\"c\":[[],{}],\"d\":[{\"\":\"\"}]}",
            b" {\n\t\"a\" :\r\n [ 1 , 2 ] \n} \n",
            b"{\"\":\"\x7f\",\"\xc3\xa9\":\"\xe4\xb8\xad\xf0\x9f\x98\x80\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"model\":\"\"}",
            b"{\"messages\":\"\\u0000\"}",
        ];
        for &body in good {
            assert!(scan(body).is_ok(), "{:?}", String::from_utf8_lossy(body));
            assert!(serde_accepts(body), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn string_scanning_at_every_word_offset() {
        // Exercise the SWAR word and the memchr path at every alignment.
        for len in 0..80 {
            let prefix = "{\"messages\":\"";
            let base = prefix.len();
            for p in 0..len {
                let mut s = vec![b'a'; len];
                s[p] = 0x01;
                let body = [prefix.as_bytes(), &s, b"\"}"].concat();
                let e = err(&body);
                assert_eq!(
                    (e.kind, e.offset),
                    (ErrorKind::Syntax, base + p),
                    "len {len} at {p}"
                );
                assert!(e.message.starts_with("control character"));

                s[p] = 0xff;
                let e = err([prefix.as_bytes(), &s, b"\"}"].concat());
                assert_eq!((e.offset, e.message.as_str()), (base + p, "invalid UTF-8"));

                // Invalid UTF-8 before a control byte: the first one is reported.
                if p + 1 < len {
                    s[p + 1] = b'\n';
                    assert_eq!(
                        err([prefix.as_bytes(), &s, b"\"}"].concat()).offset,
                        base + p
                    );
                    s[p] = b'x';
                    assert_eq!(
                        err([prefix.as_bytes(), &s, b"\"}"].concat()).offset,
                        base + p + 1
                    );
                    s[p + 1] = b'a';
                }

                // Non-ASCII and escapes at every offset decode correctly.
                let mut text: Vec<char> = vec!['a'; len];
                text[p] = 'é';
                if p + 2 < len {
                    text[p + 2] = '\n';
                }
                let text: String = text.into_iter().collect();
                let body = format!("{{\"model\":{}}}", serde_json::to_string(&text).unwrap());
                let f = ok(&body);
                assert_eq!(f.model.unwrap().value, text);
                assert_eq!(f.object_end, body.len() - 1);
            }
            // An unterminated string of every length.
            let e = err(format!("{prefix}{}", "b".repeat(len)));
            assert_eq!(e.offset, base + len);
            assert_eq!(e.message, "unterminated string, found end of input");
        }
    }

    #[test]
    fn error_positions() {
        let body = "{\n  \"model\": \"gpt\",\n  \"stream\": true\n  \"n\": 1\n}";
        let e = err(body);
        assert_eq!(e.kind, ErrorKind::Syntax);
        assert_eq!((e.line, e.column), (4, 3));
        assert_eq!(e.to_string(), "expected `,` or `}` at line 4 column 3");
        let se = serde_json::from_str::<Value>(body).unwrap_err();
        assert_eq!((se.line(), se.column()), (e.line, e.column));

        let body = "{\n\"a\": [\n  1,\n  2,\n  3\n \n}";
        let e = err(body);
        assert_eq!((e.line, e.column, e.offset), (7, 1, body.len() - 1));
        assert_eq!(e.message, "expected `,` or `]`");

        // The end of input: one past the last byte.
        let e = err("{\"a\":\n 1,");
        assert_eq!((e.offset, e.line, e.column), (9, 2, 4));
        assert_eq!(
            e.to_string(),
            "expected a string key, found end of input at line 2 column 4"
        );

        // Semantic errors point at the value or the duplicate key.
        let body = "{\r\n  \"model\": \"a\",\r\n  \"max_tokens\": 1.5,\r\n  \"model\": \"b\"\r\n}";
        let e = err(body);
        assert_eq!((e.line, e.column), (3, 17));
        assert_eq!(&body[e.offset..e.offset + 3], "1.5");
        let body = "{\n  \"model\": \"a\",\n  \"model\": \"b\"\n}";
        let e = err(body);
        assert_eq!((e.line, e.column), (3, 3));
        assert_eq!(e.to_string(), "duplicate field `model` at line 3 column 3");

        // Multi-byte characters count as their bytes.
        let e = err("{\"é\":\"中\" x}");
        assert_eq!((e.line, e.column, e.offset), (1, 13, 12));
    }

    #[test]
    fn is_utf8_agrees_with_std() {
        let check = |s: &[u8]| {
            assert_eq!(is_utf8(s), std::str::from_utf8(s).is_ok(), "{s:x?}");
        };
        let mut buf = Vec::new();
        // Every lead and second byte, at the start and straddling the
        // 32-byte jump, truncated at every length.
        for lead in 0..=255u8 {
            for second in 0..=255u8 {
                for prefix in [0, 31] {
                    buf.clear();
                    buf.extend(std::iter::repeat_n(b'a', prefix));
                    buf.extend([lead, second, 0x80, 0x80]);
                    for end in prefix..=buf.len() {
                        check(&buf[..end]);
                    }
                }
            }
        }
        // Every third and fourth byte after plausible first two.
        for lead in 0xe0..=0xf4u8 {
            for second in [0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf] {
                for last in 0..=255u8 {
                    check(&[lead, second, last, 0x80]);
                    check(&[lead, second, 0x80, last]);
                    check(&[lead, second, last]);
                }
            }
        }
    }

    // ----- differential tests against serde_json -----

    const RECOGNISED: [&str; 14] = [
        "model",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "n",
        "stream_options",
        "models",
        "messages",
        "prompt",
        "input",
        "system",
        "instructions",
        "tools",
    ];
    const COUNTED: [&str; 6] = [
        "messages",
        "prompt",
        "input",
        "system",
        "instructions",
        "tools",
    ];

    /// xorshift64*: drives the renderer's whitespace and escaping choices.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Layout {
        Compact,
        Pretty,
        Random,
    }

    /// A top-level object as a member list (duplicates possible) plus how to
    /// render it.
    #[derive(Clone, Debug)]
    struct Doc {
        members: Vec<(String, Value)>,
        seed: u64,
        layout: Layout,
        escape_percent: u64,
    }

    struct Rendered {
        text: String,
        /// Span of each top-level member's value.
        spans: Vec<Range<usize>>,
        object_end: usize,
    }

    /// A JSON writer that picks escapes and whitespace at random.
    struct Writer {
        out: String,
        rng: Rng,
        layout: Layout,
        escape_percent: u64,
    }

    impl Writer {
        fn newline(&mut self, indent: usize) {
            match self.layout {
                Layout::Compact => {}
                Layout::Pretty => {
                    self.out.push('\n');
                    self.out.extend(std::iter::repeat_n("  ", indent));
                }
                Layout::Random => self.gap(),
            }
        }

        fn gap(&mut self) {
            if let Layout::Random = self.layout {
                for _ in 0..self.rng.below(3) {
                    let ws = [' ', '\t', '\n', '\r'][self.rng.below(4) as usize];
                    self.out.push(ws);
                }
            }
        }

        fn unicode_escape(&mut self, unit: u32) {
            let s = if self.rng.percent(50) {
                format!("\\u{unit:04x}")
            } else {
                format!("\\u{unit:04X}")
            };
            self.out.push_str(&s);
        }

        fn string(&mut self, s: &str) {
            self.out.push('"');
            for c in s.chars() {
                let escape = self.rng.percent(self.escape_percent);
                match c {
                    '"' => self.out.push_str("\\\""),
                    '\\' => self.out.push_str("\\\\"),
                    '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' if !escape => {
                        let short = match c {
                            '\u{8}' => "\\b",
                            '\u{c}' => "\\f",
                            '\n' => "\\n",
                            '\r' => "\\r",
                            _ => "\\t",
                        };
                        self.out.push_str(short);
                    }
                    '/' if escape && self.rng.percent(50) => self.out.push_str("\\/"),
                    c if c < ' ' || escape => {
                        let mut units = [0u16; 2];
                        for &unit in c.encode_utf16(&mut units).iter() {
                            self.unicode_escape(u32::from(unit));
                        }
                    }
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }

        fn value(&mut self, v: &Value, indent: usize) {
            match v {
                Value::Null => self.out.push_str("null"),
                Value::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
                Value::Number(n) => self.out.push_str(&n.to_string()),
                Value::String(s) => self.string(s),
                Value::Array(items) => {
                    self.out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            self.gap();
                            self.out.push(',');
                        }
                        self.newline(indent + 1);
                        self.value(item, indent + 1);
                    }
                    if items.is_empty() {
                        self.gap();
                    } else {
                        self.newline(indent);
                    }
                    self.out.push(']');
                }
                Value::Object(map) => {
                    self.object(map.iter(), indent);
                }
            }
        }

        /// Writes an object; returns the span of each member's value.
        fn object<'a>(
            &mut self,
            members: impl Iterator<Item = (&'a String, &'a Value)>,
            indent: usize,
        ) -> Vec<Range<usize>> {
            let mut spans = Vec::new();
            self.out.push('{');
            for (i, (key, value)) in members.enumerate() {
                if i > 0 {
                    self.gap();
                    self.out.push(',');
                }
                self.newline(indent + 1);
                self.string(key);
                self.gap();
                self.out.push(':');
                if let Layout::Pretty = self.layout {
                    self.out.push(' ');
                }
                self.gap();
                let start = self.out.len();
                self.value(value, indent + 1);
                spans.push(start..self.out.len());
            }
            if spans.is_empty() {
                self.gap();
            } else {
                self.newline(indent);
            }
            self.out.push('}');
            spans
        }
    }

    fn render(doc: &Doc) -> Rendered {
        let mut w = Writer {
            out: String::new(),
            rng: Rng(doc.seed | 1),
            layout: doc.layout,
            escape_percent: doc.escape_percent,
        };
        w.gap();
        let spans = w.object(doc.members.iter().map(|(k, v)| (k, v)), 0);
        let object_end = w.out.len() - 1;
        w.gap();
        Rendered {
            text: w.out,
            spans,
            object_end,
        }
    }

    fn arb_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => prop::sample::select(vec![
                'a', 'z', ' ', '"', '\\', '/', '\0', '\u{8}', '\t', '\n', '\u{c}', '\r', '\u{1f}',
                '\u{7f}', '\u{80}', 'é', '\u{7ff}', '\u{800}', '中', '\u{2028}', '\u{d7ff}',
                '\u{e000}', '\u{fffd}', '\u{ffff}', '\u{10000}', '😀', '\u{10ffff}',
            ]),
            1 => any::<char>(),
        ]
    }

    fn arb_string() -> BoxedStrategy<String> {
        prop_oneof![
            4 => "[a-z0-9 ._/-]{0,12}",
            3 => prop::collection::vec(arb_char(), 0..12).prop_map(String::from_iter),
            1 => "[a-zA-Z ,.]{8,120}",
        ]
        .boxed()
    }

    fn arb_key() -> BoxedStrategy<String> {
        prop_oneof![
            3 => prop::sample::select(RECOGNISED.to_vec()).prop_map(str::to_owned),
            2 => prop::sample::select(vec!["model", "stream_options", "models"])
                .prop_map(str::to_owned),
            1 => Just("include_usage".to_owned()),
            3 => arb_string(),
        ]
        .boxed()
    }

    fn arb_number() -> BoxedStrategy<Value> {
        prop_oneof![
            3 => (0u64..5000).prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => any::<i64>().prop_map(Value::from),
            // Floats that survive a text round trip exactly.
            1 => (-100_000i32..100_000, 0i32..6).prop_map(|(m, e)| {
                Value::from(f64::from(m) / f64::from(1 << e))
            }),
        ]
        .boxed()
    }

    fn arb_value() -> BoxedStrategy<Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            arb_number(),
            arb_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((arb_key(), inner), 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .boxed()
    }

    fn or_null(s: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
        prop_oneof![6 => s, 1 => Just(Value::Null)].boxed()
    }

    /// Mostly well-typed values for recognised keys; anything for the rest.
    fn value_for(key: &str) -> BoxedStrategy<Value> {
        let typed = match key {
            "model" => or_null(arb_string().prop_map(Value::String).boxed()),
            "stream" => or_null(any::<bool>().prop_map(Value::Bool).boxed()),
            "max_tokens" | "max_completion_tokens" | "max_output_tokens" | "n" => {
                or_null(arb_number())
            }
            "stream_options" => or_null(
                prop::collection::vec(
                    (
                        prop_oneof![3 => Just("include_usage".to_owned()), 1 => arb_key()],
                        prop_oneof![
                            4 => any::<bool>().prop_map(Value::Bool),
                            1 => Just(Value::Null),
                            1 => arb_value(),
                        ],
                    ),
                    0..4,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect()))
                .boxed(),
            ),
            "models" => or_null(
                prop::collection::vec(arb_string().prop_map(Value::String), 0..4)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
            _ => return arb_value(),
        };
        prop_oneof![8 => typed, 1 => arb_value()].boxed()
    }

    fn arb_doc() -> impl Strategy<Value = Doc> {
        let member = arb_key().prop_flat_map(|k| {
            let v = value_for(&k);
            (Just(k), v)
        });
        (
            prop::collection::vec(member, 0..10),
            prop::bool::weighted(0.2),
            any::<u64>(),
            prop_oneof![
                Just(Layout::Compact),
                Just(Layout::Pretty),
                Just(Layout::Random)
            ],
            prop_oneof![Just(0u64), Just(10), Just(60)],
        )
            .prop_map(
                |(mut members, keep_duplicates, seed, layout, escape_percent)| {
                    if !keep_duplicates {
                        let mut seen = HashSet::new();
                        members.retain(|(k, _)| seen.insert(k.clone()));
                    }
                    Doc {
                        members,
                        seed,
                        layout,
                        escape_percent,
                    }
                },
            )
    }

    /// What `scan` should say about an object with these members, in
    /// document order, judged by serde_json's view of each value.
    fn expected_outcome<'a>(
        members: impl Iterator<Item = (&'a String, &'a Value)>,
    ) -> Result<(), ErrorKind> {
        let mut seen = HashSet::new();
        for (key, value) in members {
            let Some(&name) = RECOGNISED.iter().find(|&&r| r == key) else {
                continue;
            };
            if !seen.insert(name) {
                return Err(ErrorKind::DuplicateField(name));
            }
            let expected = match name {
                "model" if !(value.is_string() || value.is_null()) => "a string",
                "stream" if !(value.is_boolean() || value.is_null()) => "a boolean",
                "max_tokens" | "max_completion_tokens" | "max_output_tokens" | "n"
                    if !(value.is_u64() || value.is_null()) =>
                {
                    "a non-negative integer"
                }
                "stream_options" if !(value.is_object() || value.is_null()) => "an object",
                "stream_options" => match value.get("include_usage") {
                    Some(v) if !(v.is_boolean() || v.is_null()) => {
                        return Err(field_type(INCLUDE_USAGE, "a boolean"));
                    }
                    _ => continue,
                },
                "models"
                    if !(value.is_null()
                        || value
                            .as_array()
                            .is_some_and(|a| a.iter().all(Value::is_string))) =>
                {
                    "an array of strings"
                }
                _ => continue,
            };
            return Err(field_type(name, expected));
        }
        Ok(())
    }

    /// Checks `scan(text)` against the expected outcome and serde_json's
    /// parse of `text`. `spans` (value spans by member) are checked exactly
    /// when given.
    fn check_against_serde(
        text: &str,
        members: &[(&String, &Value)],
        spans: Option<&[Range<usize>]>,
        object_end: usize,
    ) -> Result<(), TestCaseError> {
        let outcome = expected_outcome(members.iter().copied());
        let parsed: Value = serde_json::from_str(text)
            .map_err(|e| TestCaseError::fail(format!("serde_json rejects {text:?}: {e}")))?;
        let scanned = scan(text.as_bytes());
        let fields = match (scanned, outcome) {
            (Err(e), Err(kind)) => {
                prop_assert_eq!(e.kind, kind, "{}", text);
                return Ok(());
            }
            (Ok(f), Ok(())) => f,
            (scanned, outcome) => {
                return Err(TestCaseError::fail(format!(
                    "scan gave {scanned:?}, expected {outcome:?}, for {text:?}"
                )));
            }
        };
        let obj = parsed.as_object().unwrap();
        let span_of = |name: &str| {
            let i = members.iter().position(|(k, _)| *k == name)?;
            spans.map(|s| s[i].clone())
        };

        let model = obj.get("model").and_then(Value::as_str);
        prop_assert_eq!(fields.model.as_ref().map(|m| m.value.as_str()), model);
        if let Some(m) = &fields.model {
            let literal = &text[m.span.clone()];
            prop_assert_eq!(
                serde_json::from_str::<Value>(literal).ok(),
                Some(Value::from(model))
            );
            if let Some(span) = span_of("model") {
                prop_assert_eq!(&m.span, &span);
            }
        }
        prop_assert_eq!(fields.stream, obj.get("stream").and_then(Value::as_bool));
        let uint = |name: &str| obj.get(name).and_then(Value::as_u64);
        prop_assert_eq!(fields.max_tokens, uint("max_tokens"));
        prop_assert_eq!(fields.max_completion_tokens, uint("max_completion_tokens"));
        prop_assert_eq!(fields.max_output_tokens, uint("max_output_tokens"));
        prop_assert_eq!(fields.n, uint("n"));

        let so = obj.get("stream_options").filter(|v| v.is_object());
        prop_assert_eq!(fields.stream_options.is_some(), so.is_some());
        if let (Some(got), Some(so)) = (&fields.stream_options, so) {
            let literal = &text[got.span.clone()];
            prop_assert_eq!(&serde_json::from_str::<Value>(literal).unwrap(), so);
            if let Some(span) = span_of("stream_options") {
                prop_assert_eq!(&got.span, &span);
            }
            let usage = so.get("include_usage").and_then(Value::as_bool);
            prop_assert_eq!(got.include_usage.as_ref().map(|u| u.0), usage);
            if let Some((b, span)) = &got.include_usage {
                prop_assert_eq!(&text[span.clone()], if *b { "true" } else { "false" });
            }
        }

        let models = obj.get("models").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(&fields.models, &models);

        if let Some(spans) = spans {
            let prompt: usize = members
                .iter()
                .zip(spans)
                .filter(|((k, _), _)| COUNTED.contains(&k.as_str()))
                .map(|(_, s)| s.len())
                .sum();
            prop_assert_eq!(fields.prompt_bytes, prompt);
        }
        prop_assert_eq!(fields.object_end, object_end);
        Ok(())
    }

    /// `scan` and serde_json agree on whether `body` is syntactically valid
    /// JSON (type and duplicate errors count as valid syntax); and
    /// `is_object` with `scan` on whether it is a valid JSON object.
    fn check_syntax_agreement(body: &[u8]) -> Result<(), TestCaseError> {
        let valid = serde_accepts(body);
        let tree = serde_json::from_slice::<Value>(body);
        let show = String::from_utf8_lossy(body);
        prop_assert_eq!(is_json(body), valid, "is_json on {:?}", show);
        let object = is_object(body);
        match scan(body) {
            Ok(_) => prop_assert!(object, "is_object refuses {:?}", show),
            Err(e) => match e.kind {
                ErrorKind::DuplicateField(_) | ErrorKind::FieldType { .. } => {
                    prop_assert!(object, "is_object refuses {:?}", show);
                }
                // Its one documented difference: a lone surrogate in a
                // value `scan` decodes is accepted as anywhere else.
                ErrorKind::Syntax if e.message.contains("lone surrogate") => {}
                _ => prop_assert!(!object, "is_object accepts {:?} ({})", show, e),
            },
        }
        match scan(body) {
            Ok(_) => prop_assert!(valid, "scan accepts {:?}", show),
            Err(e) => match e.kind {
                ErrorKind::DuplicateField(_) | ErrorKind::FieldType { .. } => {
                    prop_assert!(valid, "{} for {:?}", e, show);
                }
                ErrorKind::NotAnObject => {
                    prop_assert!(valid, "{} for {:?}", e, show);
                    prop_assert!(!tree.as_ref().is_ok_and(Value::is_object));
                }
                ErrorKind::TooDeep => prop_assert!(tree.is_err()),
                // The one documented difference: a lone surrogate in a
                // decoded value, which serde_json's skipper lets through.
                ErrorKind::Syntax if valid => {
                    prop_assert!(e.message.contains("lone surrogate"), "{} for {:?}", e, show);
                    prop_assert!(tree.is_err());
                }
                ErrorKind::Syntax => {}
            },
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn differential_generated_documents(doc in arb_doc()) {
            let rendered = render(&doc);
            let members: Vec<_> = doc.members.iter().map(|(k, v)| (k, v)).collect();
            check_against_serde(
                &rendered.text,
                &members,
                Some(&rendered.spans),
                rendered.object_end,
            )?;

            // serde_json's own serialisations (which sort keys), when the
            // members form a map.
            let map: Map<String, Value> = doc.members.iter().cloned().collect();
            if map.len() == doc.members.len() {
                // The renderer round-trips through serde_json.
                let parsed: Value = serde_json::from_str(&rendered.text).unwrap();
                prop_assert_eq!(parsed.as_object(), Some(&map));
                let members: Vec<_> = map.iter().collect();
                let compact = serde_json::to_string(&map).unwrap();
                check_against_serde(&compact, &members, None, compact.len() - 1)?;
                let pretty = serde_json::to_string_pretty(&map).unwrap();
                check_against_serde(&pretty, &members, None, pretty.len() - 1)?;
            }
        }

        #[test]
        fn differential_mutated_documents(
            doc in arb_doc(),
            op in 0u8..4,
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![
                3 => prop::sample::select(
                    b"{}[]\":,\\ 0123456789eE.-+tfnulrsaxuD\n\t\x00\x1f\x7f\x80\xbf\xc3\xed\xff".to_vec()
                ),
                1 => any::<u8>(),
            ],
        ) {
            let mut body = render(&doc).text.into_bytes();
            let i = at.index(body.len() + 1);
            match op {
                0 => body.truncate(i),
                1 if i < body.len() => body[i] = byte,
                2 => body.insert(i, byte),
                _ if i < body.len() => {
                    body.remove(i);
                }
                _ => body.pop().map_or((), drop),
            }
            check_syntax_agreement(&body)?;
        }

        /// `is_json` accepts exactly what serde_json's `IgnoredAny` accepts
        /// in valid UTF-8 for any value at the top: the members' values
        /// alone, with whitespace around, and every tail of a document
        /// (mutated documents: [`check_syntax_agreement`]).
        #[test]
        fn is_json_agrees_with_serde_on_any_value(
            doc in arb_doc(),
            at in any::<prop::sample::Index>(),
        ) {
            let text = render(&doc).text.into_bytes();
            let mut bodies = vec![text[at.index(text.len() + 1)..].to_vec()];
            for (_, v) in &doc.members {
                bodies.push(serde_json::to_vec(v).unwrap());
                bodies.push(format!(" {v}\n").into_bytes());
            }
            for b in &bodies {
                prop_assert_eq!(is_json(b), serde_accepts(b), "{:?}", String::from_utf8_lossy(b));
            }
        }

        #[test]
        fn is_utf8_agrees_with_std_on_random_text(
            text in prop::collection::vec(
                prop_oneof![
                    4 => Just(b'a'),
                    1 => any::<u8>(),
                    1 => prop::sample::select(vec![0x80u8, 0xbf, 0xc2, 0xe0, 0xed, 0xf0, 0xf4]),
                ],
                0..80,
            ),
            chars in "\\PC{0,40}",
        ) {
            prop_assert_eq!(is_utf8(&text), std::str::from_utf8(&text).is_ok());
            prop_assert!(is_utf8(chars.as_bytes()));
            let mut bytes = chars.into_bytes();
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x40;
            }
            prop_assert_eq!(is_utf8(&bytes), std::str::from_utf8(&bytes).is_ok());
        }

        #[test]
        fn differential_random_bytes(
            body in prop::collection::vec(
                prop::sample::select(b"{}[]\":,\\ 01-eE.tfnrulsa\n\xc3\xa9".to_vec()),
                0..24,
            )
        ) {
            check_syntax_agreement(&body)?;
        }
    }
}
