//! Token usage as providers really report it, and prices per million tokens.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::LazyLock;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::ledger::Micros;

/// Tokens a call used, as reported by the upstream (or estimated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Output tokens.
    pub completion_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of `prompt_tokens`).
    pub cached_tokens: u64,
    /// Input tokens written to the provider's prompt cache (part of
    /// `prompt_tokens`; Anthropic's `cache_creation_input_tokens`).
    pub cache_creation_tokens: u64,
}

impl TokenUsage {
    /// Reads a `usage` object in the Chat Completions shape (`prompt_tokens`,
    /// `completion_tokens`, `prompt_tokens_details.cached_tokens`), the
    /// Responses API shape (`input_tokens`, `output_tokens`,
    /// `input_tokens_details.cached_tokens`) or Anthropic's (`input_tokens`
    /// without the cache, `cache_read_input_tokens`,
    /// `cache_creation_input_tokens`, `output_tokens`: the prompt is their
    /// sum). Floats are rounded and missing fields count zero; `None` when
    /// neither input nor output is given.
    pub fn from_json(usage: &Value) -> Option<TokenUsage> {
        Lenient::<UsageField>::deserialize(usage).ok()?.0.0
    }

    /// The usage in one response JSON object or SSE event: a top-level
    /// non-null `usage` (Chat Completions, completions, embeddings,
    /// Anthropic's answers and `message_delta`), `response.usage` (Responses
    /// API `response.completed`) or `message.usage` (Anthropic's `message_start`).
    pub fn in_event(event: &Value) -> Option<TokenUsage> {
        Lenient::<Event>::deserialize(event).ok()?.0.usage()
    }

    /// The `usage` object that starts `json` (whatever follows it is not read).
    pub(crate) fn read_at(json: &[u8]) -> Option<TokenUsage> {
        let mut values =
            serde_json::Deserializer::from_slice(json).into_iter::<Lenient<UsageField>>();
        values.next()?.ok()?.0.0
    }
}

/// What the meter reads of one response JSON object or SSE event, straight
/// from its bytes: no tree is built, nothing is copied but escaped keys.
#[derive(Debug, Default)]
pub(crate) struct Event {
    usage: Option<TokenUsage>,
    response_usage: Option<TokenUsage>,
    /// Bytes of generated text: chat deltas (content, reasoning, tool-call
    /// arguments), completion text, Responses API deltas.
    pub(crate) content_bytes: u64,
}

impl Event {
    /// Reads one event's JSON; `None` when it is not JSON.
    pub(crate) fn read(json: &[u8]) -> Option<Event> {
        serde_json::from_slice::<Lenient<Event>>(json)
            .ok()
            .map(|e| e.0)
    }

    /// The event's usage ([`TokenUsage::in_event`]).
    pub(crate) fn usage(&self) -> Option<TokenUsage> {
        self.usage.or(self.response_usage)
    }
}

impl TokenUsage {
    /// `self` updated by a later report of the same answer's usage: each
    /// count is the larger of the two. Anthropic reports a stream's usage in
    /// parts (the input in `message_start`, the final output count in
    /// `message_delta`); every other API reports it once, so the later
    /// report is taken whole in practice.
    pub fn merge(self, later: TokenUsage) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens.max(later.prompt_tokens),
            completion_tokens: self.completion_tokens.max(later.completion_tokens),
            cached_tokens: self.cached_tokens.max(later.cached_tokens),
            cache_creation_tokens: self.cache_creation_tokens.max(later.cache_creation_tokens),
        }
    }
}

impl Event {
    /// The generated-text bytes of an OpenAI chat chunk without usage (the
    /// events of nearly every stream), by a byte search rather than
    /// [`Event::read`]'s parse (~2k instructions a 200-byte event instead
    /// of ~6.7k): the decoded lengths of the string values of `"content"`,
    /// `"reasoning_content"` and `"arguments"`, wherever they are in the
    /// chunk. `None` — read the event with [`Event::read`] — unless the
    /// event is one UTF-8 `{…}`, says `"object":"chat.completion.chunk"`,
    /// has no `"usage"` but `"usage":null`, every escape in it lies inside
    /// one of the strings counted (so no key hides behind an escape), and
    /// each of those strings is well formed.
    pub(crate) fn chat_text(json: &[u8]) -> Option<u64> {
        use memchr::memmem::Finder;
        static CHUNK: LazyLock<Finder<'static>> =
            LazyLock::new(|| Finder::new(b"\"object\":\"chat.completion.chunk\""));
        static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
        // One search finds both `"content"` and `"reasoning_content"`.
        static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"content\""));
        static ARGUMENTS: LazyLock<Finder<'static>> =
            LazyLock::new(|| Finder::new(b"\"arguments\""));
        if json.first() != Some(&b'{') || json.last() != Some(&b'}') {
            return None;
        }
        CHUNK.find(json)?;
        // `"usage":null` is what OpenAI puts in every chunk but the last
        // when asked for usage (as the gateway asks): no usage here.
        let null_usage = |at: usize| {
            json_ws(&json[at + 7..])
                .strip_prefix(b":")
                .is_some_and(|v| json_ws(v).starts_with(b"null"))
        };
        if !USAGE.find_iter(json).all(null_usage) {
            return None;
        }
        std::str::from_utf8(json).ok()?;
        let (mut text, mut escapes) = (0, 0);
        // The string value of the key that ends at `end`, if it is one.
        let mut value = |end: usize| -> Option<()> {
            let Some(rest) = json_ws(&json[end..]).strip_prefix(b":") else {
                return Some(()); // a string value, not a key
            };
            let value = json_ws(rest);
            if !value.starts_with(b"\"") {
                return Some(()); // `null`, an array, …: no text
            }
            let (raw, len) = crate::read_request::scan::string_len(value)?;
            text += len;
            escapes += memchr::memchr_iter(b'\\', &value[..raw]).count();
            Some(())
        };
        for at in CONTENT.find_iter(json) {
            let before = &json[..at];
            if before.ends_with(b"\"") || before.ends_with(b"\"reasoning_") {
                value(at + b"content\"".len())?;
            }
        }
        for at in ARGUMENTS.find_iter(json) {
            value(at + b"\"arguments\"".len())?;
        }
        (memchr::memchr_iter(b'\\', json).count() == escapes).then_some(text)
    }
}

/// `b` after its leading JSON whitespace.
fn json_ws(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(b.len());
    &b[n..]
}

// Reading what providers send without failing on what they add or get
// wrong: every type below reads any JSON value, takes what has its shape
// and skips the rest (unknown fields, nulls, odd types) as `Default`.

/// Any JSON value, read as `T` where it has `T`'s shape and as
/// `T::default()` where it has not.
struct Lenient<T>(T);

/// How a type reads each kind of JSON value; the defaults skip it.
trait Shape: Default {
    fn object<'de, A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
    fn array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::default())
    }
    fn string(_: &str) -> Self {
        Self::default()
    }
    fn number(_: Number) -> Self {
        Self::default()
    }
}

#[derive(Clone, Copy)]
enum Number {
    Unsigned(u64),
    Float(f64),
}

impl<'de, T: Shape> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Shape> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<T, E> {
                Ok(T::default())
            }
            fn visit_u64<E>(self, n: u64) -> Result<T, E> {
                Ok(T::number(Number::Unsigned(n)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<T, E> {
                Ok(T::number(match u64::try_from(n) {
                    Ok(n) => Number::Unsigned(n),
                    Err(_) => Number::Float(n as f64),
                }))
            }
            fn visit_f64<E>(self, n: f64) -> Result<T, E> {
                Ok(T::number(Number::Float(n)))
            }
            fn visit_str<E>(self, s: &str) -> Result<T, E> {
                Ok(T::string(s))
            }
            fn visit_unit<E>(self) -> Result<T, E> {
                Ok(T::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
                T::array(seq)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::object(map)
            }
        }
        d.deserialize_any(V(PhantomData)).map(Lenient)
    }
}

/// An object key, borrowed from the input unless it had escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads an object's fields: `field` is called with each key and must read
/// its value (`read`) or skip it (`skip`).
fn fields<'de, A: MapAccess<'de>, T: Default>(
    mut map: A,
    mut field: impl FnMut(&mut T, &str, &mut A) -> Result<(), A::Error>,
) -> Result<T, A::Error> {
    let mut out = T::default();
    while let Some(key) = map.next_key::<Key<'de>>()? {
        field(&mut out, &key.0, &mut map)?;
    }
    Ok(out)
}

fn read<'de, T: Shape, A: MapAccess<'de>>(map: &mut A) -> Result<T, A::Error> {
    Ok(map.next_value::<Lenient<T>>()?.0)
}

fn skip<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(drop)
}

/// A count as providers send it: an integer, a float (rounded: known
/// failure #12), a numeric string; anything else, negative or missing is `None`.
#[derive(Clone, Copy, Default)]
struct Count(Option<u64>);

impl Shape for Count {
    fn number(n: Number) -> Self {
        Count(match n {
            Number::Unsigned(n) => Some(n),
            Number::Float(f) => whole(f),
        })
    }
    fn string(s: &str) -> Self {
        Count(s.trim().parse::<f64>().ok().and_then(whole))
    }
}

fn whole(f: f64) -> Option<u64> {
    (f.is_finite() && f >= 0.0).then(|| f.round() as u64)
}

/// A string's length in bytes (0 for anything else).
#[derive(Default)]
struct TextLen(u64);

impl Shape for TextLen {
    fn string(s: &str) -> Self {
        TextLen(s.len() as u64)
    }
}

/// A `usage` object.
#[derive(Default)]
struct UsageField(Option<TokenUsage>);

impl Shape for UsageField {
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        #[derive(Default)]
        struct Raw {
            prompt: Count,
            completion: Count,
            input: Count,
            output: Count,
            prompt_details: Option<Count>,
            input_details: Option<Count>,
            cache_read: Count,
            cache_creation: Count,
        }
        let raw = fields(map, |r: &mut Raw, key, map| {
            match key {
                "prompt_tokens" => r.prompt = read(map)?,
                "completion_tokens" => r.completion = read(map)?,
                "input_tokens" => r.input = read(map)?,
                "output_tokens" => r.output = read(map)?,
                "prompt_tokens_details" => r.prompt_details = read::<Details, _>(map)?.0,
                "input_tokens_details" => r.input_details = read::<Details, _>(map)?.0,
                "cache_read_input_tokens" => r.cache_read = read(map)?,
                "cache_creation_input_tokens" => r.cache_creation = read(map)?,
                _ => skip(map)?,
            }
            Ok(())
        })?;
        let completion = raw.completion.0.or(raw.output.0);
        let (read, written) = (
            raw.cache_read.0.unwrap_or(0),
            raw.cache_creation.0.unwrap_or(0),
        );
        let details = raw
            .prompt_details
            .or(raw.input_details)
            .and_then(|c| c.0)
            .unwrap_or(0);
        let (prompt_tokens, cached) = match raw.prompt.0 {
            // The Chat Completions shape counts every input token in
            // `prompt_tokens`; cache fields beside it (LiteLLM's, and
            // tollgate's own translation of an Anthropic answer) are
            // parts of it, not additions.
            Some(prompt) => (prompt.max(read.saturating_add(written)), details.max(read)),
            // Anthropic counts cache reads and writes beside `input_tokens`
            // (the Responses API has neither field: nothing is added).
            None => {
                if raw.input.0.is_none() && completion.is_none() {
                    return Ok(UsageField(None));
                }
                let prompt = raw
                    .input
                    .0
                    .unwrap_or(0)
                    .saturating_add(read)
                    .saturating_add(written);
                (prompt, details.saturating_add(read))
            }
        };
        Ok(UsageField(Some(TokenUsage {
            prompt_tokens,
            completion_tokens: completion.unwrap_or(0),
            cached_tokens: cached.min(prompt_tokens),
            cache_creation_tokens: written
                .min(prompt_tokens.saturating_sub(cached.min(prompt_tokens))),
        })))
    }
}

/// `prompt_tokens_details` / `input_tokens_details`: `Some` when an object.
#[derive(Default)]
struct Details(Option<Count>);

impl Shape for Details {
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let cached = fields(map, |c: &mut Count, key, map| match key {
            "cached_tokens" => {
                *c = read(map)?;
                Ok(())
            }
            _ => skip(map),
        })?;
        Ok(Details(Some(cached)))
    }
}

impl Shape for Event {
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        fields(map, |e: &mut Event, key, map| {
            match key {
                "usage" => e.usage = read::<UsageField, _>(map)?.0,
                // Responses API `response.completed`, Anthropic `message_start`.
                "response" | "message" => {
                    e.response_usage = read::<Response, _>(map)?.0;
                }
                // A Responses API delta (a string) or an Anthropic block delta.
                "delta" => e.content_bytes += read::<AnyDelta, _>(map)?.0,
                "choices" => e.content_bytes += read::<Each<Choice>, _>(map)?.0,
                _ => skip(map)?,
            }
            Ok(())
        })
    }
}

/// A delta's generated text in bytes: a string (Responses API), or an
/// Anthropic `content_block_delta`'s `text`, `thinking` or `partial_json`.
#[derive(Default)]
struct AnyDelta(u64);

impl Shape for AnyDelta {
    fn string(s: &str) -> Self {
        AnyDelta(s.len() as u64)
    }
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        fields(map, |n: &mut AnyDelta, key, map| {
            match key {
                "text" | "thinking" | "partial_json" => n.0 += read::<TextLen, _>(map)?.0,
                _ => skip(map)?,
            }
            Ok(())
        })
    }
}

/// The Responses API's `response` object, or Anthropic's `message`: its `usage`.
#[derive(Default)]
struct Response(Option<TokenUsage>);

impl Shape for Response {
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        fields(map, |r: &mut Response, key, map| {
            match key {
                "usage" => r.0 = read::<UsageField, _>(map)?.0,
                _ => skip(map)?,
            }
            Ok(())
        })
    }
}

/// Generated text in bytes: what [`Each`] sums.
trait Text: Shape {
    fn bytes(&self) -> u64;
}

/// An array's elements' generated text, summed.
#[derive(Default)]
struct Each<T>(u64, PhantomData<T>);

impl<T: Text> Shape for Each<T> {
    fn array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut sum = 0;
        while let Some(item) = seq.next_element::<Lenient<T>>()? {
            sum += item.0.bytes();
        }
        Ok(Each(sum, PhantomData))
    }
}

macro_rules! text_object {
    ($(#[$doc:meta])* $name:ident { $($key:literal => $field:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Default)]
        struct $name(u64);

        impl Text for $name {
            fn bytes(&self) -> u64 {
                self.0
            }
        }

        impl Shape for $name {
            fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
                fields(map, |n: &mut $name, key, map| {
                    match key {
                        $($key => n.0 += read::<$field, _>(map)?.bytes(),)*
                        _ => skip(map)?,
                    }
                    Ok(())
                })
            }
        }
    };
}

impl Text for TextLen {
    fn bytes(&self) -> u64 {
        self.0
    }
}

impl<T> Text for Each<T>
where
    Each<T>: Shape,
{
    fn bytes(&self) -> u64 {
        self.0
    }
}

text_object!(
    /// One of `choices`: completion `text` or a chat `delta`.
    Choice { "text" => TextLen, "delta" => Delta }
);
text_object!(
    /// A chat delta: content, reasoning and tool-call arguments.
    Delta {
        "content" => TextLen,
        "reasoning_content" => TextLen,
        "tool_calls" => Each<ToolCall>,
    }
);
text_object!(
    /// One tool call of a delta.
    ToolCall { "function" => Function }
);
text_object!(
    /// A tool call's function: its `arguments`.
    Function { "arguments" => TextLen }
);

/// A model's price, in micro-USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    /// Per million input tokens.
    pub input_per_mtok: Micros,
    /// Per million output tokens.
    pub output_per_mtok: Micros,
    /// Per million cached input tokens, where the provider reports them
    /// (`None`: charged as ordinary input).
    pub cached_input_per_mtok: Option<Micros>,
    /// Per million input tokens written to the prompt cache, where the
    /// provider reports them (Anthropic; `None`: charged as ordinary input).
    pub cache_write_per_mtok: Option<Micros>,
}

/// `tokens × per_mtok / 1e6`, rounded up: a call is never charged less than it cost.
fn cost_of(tokens: u64, per_mtok: Micros) -> Micros {
    let micros = (u128::from(tokens) * u128::from(per_mtok)).div_ceil(1_000_000);
    u64::try_from(micros).unwrap_or(u64::MAX)
}

impl Price {
    /// Dollars per million tokens as micro-USD per million tokens (config
    /// values like `2.5`), rounded to the micro-dollar; `None` when negative
    /// or not finite.
    pub fn micros_from_usd(usd: f64) -> Option<Micros> {
        (0.0..1e12)
            .contains(&usd)
            .then(|| (usd * 1e6).round() as Micros)
    }

    /// What `usage` costs.
    pub fn cost(&self, usage: &TokenUsage) -> Micros {
        let cached = match self.cached_input_per_mtok {
            Some(p) => cost_of(usage.cached_tokens, p),
            None => cost_of(usage.cached_tokens, self.input_per_mtok),
        };
        let written = cost_of(
            usage.cache_creation_tokens,
            self.cache_write_per_mtok.unwrap_or(self.input_per_mtok),
        );
        let uncached = usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_creation_tokens);
        cost_of(uncached, self.input_per_mtok)
            .saturating_add(cached)
            .saturating_add(written)
            .saturating_add(cost_of(usage.completion_tokens, self.output_per_mtok))
    }

    /// The worst case of a request: `prompt_tokens` at the input price plus
    /// `max_output_tokens` at the output price.
    pub fn worst_case(&self, prompt_tokens: u64, max_output_tokens: u64) -> Micros {
        self.cost(&TokenUsage {
            prompt_tokens,
            completion_tokens: max_output_tokens,
            ..TokenUsage::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_as_providers_send_them() {
        let u = TokenUsage::from_json(&json!({
            "prompt_tokens": 10.5, "completion_tokens": 3.0, "total_tokens": 13.5
        }))
        .unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (11, 3));
        let u = TokenUsage::from_json(&json!({"completion_tokens": "7"})).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (0, 7));
        let u = TokenUsage::from_json(&json!({
            "input_tokens": 100, "output_tokens": 5,
            "input_tokens_details": {"cached_tokens": 400}
        }))
        .unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            (100, 5, 100)
        );
        assert_eq!(TokenUsage::from_json(&json!({"total_tokens": 4})), None);
        assert_eq!(TokenUsage::from_json(&json!({"prompt_tokens": -3})), None);
        assert_eq!(
            TokenUsage::in_event(&json!({"usage": null, "choices": []})),
            None
        );
        let done = json!({"type": "response.completed", "response": {"usage": {"input_tokens": 2, "output_tokens": 1}}});
        assert_eq!(TokenUsage::in_event(&done).unwrap().completion_tokens, 1);
    }

    #[test]
    fn cache_fields_are_inside_prompt_tokens_and_beside_input_tokens() {
        // The Chat shape with cache fields (LiteLLM's, and a translated
        // Anthropic answer): parts of `prompt_tokens`.
        let chat = json!({"usage": {"prompt_tokens": 174, "completion_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 100}, "cache_creation_input_tokens": 50}});
        let expected = TokenUsage {
            prompt_tokens: 174,
            completion_tokens: 16,
            cached_tokens: 100,
            cache_creation_tokens: 50,
        };
        assert_eq!(TokenUsage::in_event(&chat), Some(expected));
        assert_eq!(
            Event::read(chat.to_string().as_bytes()).unwrap().usage(),
            Some(expected)
        );
        // LiteLLM also repeats the reads as `cache_read_input_tokens`.
        let litellm = json!({"prompt_tokens": 174, "completion_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 100},
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50});
        assert_eq!(TokenUsage::from_json(&litellm), Some(expected));
        // Anthropic's shape: beside `input_tokens`.
        let anthropic = json!({"input_tokens": 24, "output_tokens": 16,
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50});
        assert_eq!(TokenUsage::from_json(&anthropic), Some(expected));
    }

    #[test]
    fn anthropic_usage_in_answers_and_stream_events() {
        // A Messages answer: the prompt is input + cache reads + cache writes.
        let answer = json!({"usage": {"input_tokens": 10, "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 30, "output_tokens": 7}});
        let u = TokenUsage::in_event(&answer).unwrap();
        assert_eq!(
            u,
            TokenUsage {
                prompt_tokens: 140,
                completion_tokens: 7,
                cached_tokens: 100,
                cache_creation_tokens: 30,
            }
        );
        // A stream: the input in `message_start`, the output in `message_delta`.
        let read = |j: &str| Event::read(j.as_bytes()).unwrap();
        let start = read(
            r#"{"type":"message_start","message":{"id":"msg_1","content":[],"usage":{"input_tokens":12,"cache_read_input_tokens":4,"output_tokens":1}}}"#,
        );
        let delta = read(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":42}}"#,
        );
        let total = start.usage().unwrap().merge(delta.usage().unwrap());
        assert_eq!(
            (
                total.prompt_tokens,
                total.completion_tokens,
                total.cached_tokens
            ),
            (16, 42, 4)
        );
        // Block deltas count as generated text (for an estimate on a cut).
        let text = read(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"héllo"}}"#,
        );
        assert_eq!(text.content_bytes, 6);
        let args = read(
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
        );
        assert_eq!(args.content_bytes, 5);
        let thinking = read(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
        );
        assert_eq!(thinking.content_bytes, 3);
    }

    #[test]
    fn events_are_read_from_their_bytes_whatever_their_shape() {
        let read = |j: &str| Event::read(j.as_bytes()).map(|e| (e.usage(), e.content_bytes));
        // Chat delta with escapes, reasoning and tool-call arguments.
        let chunk = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a\"b\u00e9","reasoning_content":"xy",
            "tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"k\":1}"}},{"function":{"arguments":"zz"}}]}}],"usage":null}"#;
        // `a"bé` is 5 bytes decoded (é is two), `{"k":1}` is 7.
        assert_eq!(read(chunk), Some((None, 5 + 2 + 7 + 2)));
        // Completions text, Responses delta, usage in the Responses shape.
        assert_eq!(read(r#"{"choices":[{"text":"hello"}]}"#), Some((None, 5)));
        assert_eq!(
            read(r#"{"type":"response.output_text.delta","delta":"abc"}"#),
            Some((None, 3))
        );
        let done = r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":2,"output_tokens":1.4}}}"#;
        let (usage, _) = read(done).unwrap();
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((2, 1))
        );
        // Odd types and unknown fields are skipped, never fatal.
        let odd = r#"{"choices":"none","delta":{"x":1},"usage":7,"extra":[1,{"a":[null,true]}],
            "\u0075sage":{"prompt_tokens":"3","completion_tokens":-2}}"#;
        let (usage, content) = read(odd).unwrap();
        assert_eq!(content, 0);
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 0))
        );
        assert_eq!(
            read(r#"{"choices":[1,"a",null,{"delta":null}]}"#),
            Some((None, 0))
        );
        // Not JSON.
        assert!(Event::read(b"{\"choices\":[").is_none());
        assert!(Event::read(b"not json").is_none());
        // A usage object followed by the rest of an answer.
        let tail = br#"{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9},"completion_tokens":2.0}},"x":1}"#;
        assert_eq!(
            TokenUsage::read_at(tail),
            Some(TokenUsage {
                prompt_tokens: 5,
                completion_tokens: 2,
                cached_tokens: 5,
                cache_creation_tokens: 0,
            })
        );
        assert_eq!(TokenUsage::read_at(b"null}"), None);
    }

    #[test]
    fn chat_chunks_are_counted_without_a_parse() {
        let text = |j: &str| Event::chat_text(j.as_bytes());
        let head = r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":"#;
        let chunk = |delta: &str| format!("{head}{delta}}}]}}");
        // `a"bé` is 5 bytes decoded, 😀 (a surrogate pair) 4, `{"k":1}` 7.
        let full = chunk(
            r#"{"content" : "a\"b\u00e9\ud83d\ude00","reasoning_content":"xy","tool_calls":[{"index":0,"function":{"name":"f","arguments":"{\"k\":1}"}}]}"#,
        );
        assert_eq!(text(&full), Some(5 + 4 + 2 + 7));
        assert_eq!(
            text(&full),
            Event::read(full.as_bytes()).map(|e| e.content_bytes)
        );
        assert_eq!(
            text(&chunk(r#"{"role":"assistant","content":null}"#)),
            Some(0)
        );
        assert_eq!(text(&chunk(r#"{"content":"é"}"#)), Some(2));
        // `"usage":null`, as OpenAI sends it on every chunk but the last.
        assert_eq!(
            text(&format!(r#"{head}{{"content":"abc"}}}}],"usage" : null}}"#)),
            Some(3)
        );
        // Read by the parser instead: usage, an escaped key, another object,
        // an escape outside the counted strings, malformed strings, not UTF-8.
        assert_eq!(
            text(&format!(r#"{head}{{}}}}],"usage":{{"prompt_tokens":1}}}}"#)),
            None
        );
        assert_eq!(text(&chunk(r#"{"\u0063ontent":"x"}"#)), None);
        assert_eq!(
            text(r#"{"type":"response.output_text.delta","delta":"abc"}"#),
            None
        );
        assert_eq!(
            text(r#"{"id":"\u0063","object":"chat.completion.chunk"}"#),
            None
        );
        for bad in [
            r#""\ud83d""#,
            r#""\x""#,
            "\"a\u{1}\"",
            r#""\u00e""#,
            r#""open"#,
        ] {
            assert_eq!(
                text(&chunk(&format!(r#"{{"content":{bad}}}"#))),
                None,
                "{bad}"
            );
        }
        let mut latin1 = chunk(r#"{"content":"xx"}"#).into_bytes();
        let at = latin1.iter().position(|&b| b == b'x').unwrap();
        latin1[at] = 0xe9;
        assert_eq!(Event::chat_text(&latin1), None);
    }

    /// The byte search against the parser on chat chunks as OpenAI and
    /// compatible servers send them: content, reasoning and tool-call
    /// arguments of any text, escaped every way JSON allows.
    mod chat_text_differential {
        use super::*;
        use proptest::prelude::*;

        /// `s` as a JSON string: `serde_json`'s escaping, or also every
        /// non-ASCII character and `/` escaped (surrogate pairs beyond the
        /// BMP), as some servers write it.
        fn quoted(s: &str, ascii: bool) -> String {
            let json = serde_json::to_string(s).unwrap();
            if !ascii {
                return json;
            }
            let mut out = String::new();
            for c in json.chars() {
                match c {
                    '/' => out.push_str("\\/"),
                    c if c.is_ascii() => out.push(c),
                    c => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04x}"));
                        }
                    }
                }
            }
            out
        }

        fn field() -> impl Strategy<Value = Option<(String, bool)>> {
            proptest::option::of((any::<String>(), any::<bool>()))
        }

        proptest! {
            #[test]
            fn agrees_with_the_parser(
                content in field(),
                reasoning in field(),
                arguments in proptest::collection::vec((any::<String>(), any::<bool>()), 0..3),
                spaced in any::<bool>(),
                finish in any::<bool>(),
                usage_null in any::<bool>(),
            ) {
                let colon = if spaced { " : " } else { ":" };
                let mut delta = vec![r#""role":"assistant""#.to_owned()];
                match &content {
                    Some((s, a)) => delta.push(format!(r#""content"{colon}{}"#, quoted(s, *a))),
                    None => delta.push(r#""content":null"#.to_owned()),
                }
                if let Some((s, a)) = &reasoning {
                    delta.push(format!(r#""reasoning_content"{colon}{}"#, quoted(s, *a)));
                }
                if !arguments.is_empty() {
                    let calls: Vec<String> = arguments
                        .iter()
                        .enumerate()
                        .map(|(i, (s, a))| format!(
                            r#"{{"index":{i},"id":"call_{i}","type":"function","function":{{"name":"f","arguments"{colon}{}}}}}"#,
                            quoted(s, *a)
                        ))
                        .collect();
                    delta.push(format!(r#""tool_calls":[{}]"#, calls.join(",")));
                }
                let finish = if finish { r#""stop""# } else { "null" };
                let usage = if usage_null { r#","usage":null"# } else { "" };
                let event = format!(
                    r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{{}}},"logprobs":null,"finish_reason":{finish}}}]{usage}}}"#,
                    delta.join(",")
                );
                let fast = Event::chat_text(event.as_bytes());
                prop_assert!(fast.is_some(), "{}", event);
                prop_assert_eq!(fast, Event::read(event.as_bytes()).map(|e| e.content_bytes));
            }
        }
    }

    /// The reader against the tree-based reading it replaced, on arbitrary
    /// JSON events: same usage, same generated-text bytes.
    mod differential {
        use super::*;
        use proptest::prelude::*;

        fn count(v: Option<&Value>) -> Option<u64> {
            match v? {
                Value::Number(n) => n.as_u64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f.round() as u64)
                }),
                Value::String(s) => s
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f.round() as u64),
                _ => None,
            }
        }

        fn usage_of(u: &Value) -> Option<TokenUsage> {
            let prompt = count(u.get("prompt_tokens")).or_else(|| count(u.get("input_tokens")));
            let completion =
                count(u.get("completion_tokens")).or_else(|| count(u.get("output_tokens")));
            if prompt.is_none() && completion.is_none() {
                return None;
            }
            let details = [
                u.get("prompt_tokens_details"),
                u.get("input_tokens_details"),
            ]
            .into_iter()
            .flatten()
            .find(|d| d.is_object());
            let read = count(u.get("cache_read_input_tokens")).unwrap_or(0);
            let written = count(u.get("cache_creation_input_tokens")).unwrap_or(0);
            let details = details
                .and_then(|d| count(d.get("cached_tokens")))
                .unwrap_or(0);
            // Inside `prompt_tokens` (Chat shape), beside `input_tokens` (Anthropic's).
            let (prompt_tokens, cached) = match count(u.get("prompt_tokens")) {
                Some(p) => (p.max(read + written), details.max(read)),
                None => (prompt.unwrap_or(0) + read + written, details + read),
            };
            let cached = cached.min(prompt_tokens);
            Some(TokenUsage {
                prompt_tokens,
                completion_tokens: completion.unwrap_or(0),
                cached_tokens: cached,
                cache_creation_tokens: written.min(prompt_tokens - cached),
            })
        }

        fn oracle(e: &Value) -> (Option<TokenUsage>, u64) {
            // `message` (Anthropic) and `response` (Responses API): the
            // later key in the object wins, and `response` sorts after.
            let nested = e.get("response").or_else(|| e.get("message"));
            let usage = e
                .get("usage")
                .and_then(usage_of)
                .or_else(|| nested.and_then(|r| r.get("usage")).and_then(usage_of));
            let len = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, |s| s.len() as u64);
            // A delta: a string (Responses API) or an Anthropic block delta.
            let mut n = match e.get("delta") {
                Some(d @ Value::Object(_)) => {
                    len(d.get("text")) + len(d.get("thinking")) + len(d.get("partial_json"))
                }
                d => len(d),
            };
            for c in e
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                n += len(c.get("text"));
                if let Some(d) = c.get("delta") {
                    n += len(d.get("content")) + len(d.get("reasoning_content"));
                    for call in d
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        n += len(call.get("function").and_then(|f| f.get("arguments")));
                    }
                }
            }
            (usage, n)
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<u32>().prop_map(Value::from),
                (-5i64..5).prop_map(Value::from),
                (-10.0f64..1e6).prop_map(Value::from),
                "[a-z\\\"é😀 0-9.]{0,12}".prop_map(Value::from),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            let keys = prop_oneof![
                Just("usage"),
                Just("response"),
                Just("delta"),
                Just("choices"),
                Just("text"),
                Just("content"),
                Just("reasoning_content"),
                Just("tool_calls"),
                Just("function"),
                Just("arguments"),
                Just("prompt_tokens"),
                Just("completion_tokens"),
                Just("input_tokens"),
                Just("output_tokens"),
                Just("prompt_tokens_details"),
                Just("input_tokens_details"),
                Just("cached_tokens"),
                Just("message"),
                Just("thinking"),
                Just("partial_json"),
                Just("cache_read_input_tokens"),
                Just("cache_creation_input_tokens"),
                Just("other"),
            ];
            leaf().prop_recursive(5, 64, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    proptest::collection::btree_map(
                        keys.clone().prop_map(String::from),
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn agrees_with_the_tree(event in value()) {
                let bytes = serde_json::to_vec(&event).unwrap();
                let got = Event::read(&bytes).map(|e| (e.usage(), e.content_bytes));
                prop_assert_eq!(got, Some(oracle(&event)));
                prop_assert_eq!(TokenUsage::in_event(&event), oracle(&event).0);
            }
        }
    }

    #[test]
    fn costs_in_integer_micros_rounded_up() {
        let p = Price {
            input_per_mtok: Price::micros_from_usd(2.5).unwrap(),
            output_per_mtok: Price::micros_from_usd(10.0).unwrap(),
            cached_input_per_mtok: Some(Price::micros_from_usd(1.25).unwrap()),
            cache_write_per_mtok: Some(Price::micros_from_usd(3.125).unwrap()),
        };
        // 1M prompt tokens, 400k of them cached, 100k output:
        // 0.6 × 2.5 + 0.4 × 1.25 + 0.1 × 10 = 3.0 dollars.
        let u = TokenUsage {
            prompt_tokens: 1_000_000,
            completion_tokens: 100_000,
            cached_tokens: 400_000,
            cache_creation_tokens: 0,
        };
        assert_eq!(p.cost(&u), 3_000_000);
        // 200k of the uncached ones written to the cache, at 3.125:
        // 0.4 × 2.5 + 0.4 × 1.25 + 0.2 × 3.125 + 0.1 × 10 = 3.125 dollars.
        let written = TokenUsage {
            cache_creation_tokens: 200_000,
            ..u
        };
        assert_eq!(p.cost(&written), 3_125_000);
        // Without a cache-write price, written tokens cost the input price.
        let plain = Price {
            cache_write_per_mtok: None,
            ..p
        };
        assert_eq!(plain.cost(&written), 3_000_000);
        // One token of input costs 2.5 micro-dollars: charged 3.
        assert_eq!(p.worst_case(1, 0), 3);
        assert_eq!(p.worst_case(0, 0), 0);
        assert_eq!(Price::micros_from_usd(-1.0), None);
        // A thousand calls of one token each sum exactly.
        let sum: u64 = (0..1000).map(|_| p.worst_case(1, 1)).sum();
        assert_eq!(sum, 13_000);
    }
}
