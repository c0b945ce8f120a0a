//! Metering a response as it passes: usage, or an estimate of what was
//! streamed, in O(1) memory per response.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};

use super::ledger::{Micros, Reservation};
use super::spend::PendingSpend;
use super::usage::{Event, Price, TokenUsage};

/// The most of one SSE line (one `data:` event) that is buffered to be
/// read; a longer event is forwarded all the same but only counted.
pub const EVENT_CAP: usize = 64 * 1024;
/// How much of the end of a non-streaming (JSON) answer is kept to find its `usage`.
const JSON_TAIL: usize = 8 * 1024;

/// Reads usage from a response's bytes as they pass, in bounded memory:
/// SSE events one line at a time (each line buffered up to [`EVENT_CAP`]),
/// or, for a JSON answer, only its last bytes. Nothing of the content or
/// tool-call arguments is kept: only a count of their bytes, for an
/// estimate when no usage comes.
#[derive(Debug)]
pub struct Meter {
    sse: bool,
    line: Vec<u8>,
    line_len: usize,
    content_bytes: u64,
    total_bytes: u64,
    usage: Option<TokenUsage>,
}

impl Meter {
    /// A meter of a `text/event-stream` answer.
    pub fn sse() -> Self {
        Meter::new(true)
    }

    /// A meter of a JSON answer.
    pub fn json() -> Self {
        Meter::new(false)
    }

    fn new(sse: bool) -> Self {
        Meter {
            sse,
            line: Vec::new(),
            line_len: 0,
            content_bytes: 0,
            total_bytes: 0,
            usage: None,
        }
    }

    /// Reads the next bytes of the answer.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.total_bytes += chunk.len() as u64;
        if !self.sse {
            if chunk.len() >= JSON_TAIL {
                self.line.clear();
                chunk = &chunk[chunk.len() - JSON_TAIL..];
            } else if self.line.len() + chunk.len() > JSON_TAIL {
                self.line.drain(..self.line.len() + chunk.len() - JSON_TAIL);
            }
            self.line.extend_from_slice(chunk);
            return;
        }
        while !chunk.is_empty() {
            let (segment, ends) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            let room = EVENT_CAP.saturating_sub(self.line.len());
            self.line
                .extend_from_slice(&segment[..segment.len().min(room)]);
            self.line_len += segment.len();
            match ends {
                Some(next) => {
                    self.end_line();
                    chunk = &chunk[next..];
                }
                None => break,
            }
        }
    }

    fn end_line(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if let Some(payload) = line.strip_prefix(b"data:") {
            let payload = payload.trim_ascii();
            if self.line_len > EVENT_CAP {
                // Too long to read: count it as content (it is, in practice:
                // a long tool-call argument or text delta).
                self.content_bytes += self.line_len as u64;
            } else if let Some(text) = Event::chat_text(payload) {
                // A chat chunk without usage: its text counted, not parsed.
                self.content_bytes += text;
            } else if payload != b"[DONE]" {
                match Event::read(payload) {
                    Some(event) => {
                        if let Some(u) = event.usage() {
                            // Anthropic reports a stream's usage in parts.
                            self.usage = Some(match self.usage {
                                Some(seen) => seen.merge(u),
                                None => u,
                            });
                        }
                        self.content_bytes += event.content_bytes;
                    }
                    None => self.content_bytes += payload.len() as u64,
                }
            }
        }
        self.line.clear();
        if self.line.capacity() > 2 * JSON_TAIL {
            self.line = Vec::new();
        }
        self.line_len = 0;
    }

    /// The answer ended: reads what is left.
    pub fn finish(&mut self) {
        if self.sse {
            if self.line_len > 0 {
                self.end_line();
            }
            return;
        }
        let tail = &self.line;
        // Built once: building a searcher costs as much as this search.
        static USAGE: LazyLock<memchr::memmem::FinderRev<'static>> =
            LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));
        if let Some(at) = USAGE.rfind(tail) {
            let rest = &tail[at + 7..];
            let rest = rest.trim_ascii_start();
            if let Some(value) = rest.strip_prefix(b":") {
                self.usage = TokenUsage::read_at(value);
            }
        }
        self.content_bytes = self.total_bytes;
        self.line = Vec::new();
    }

    /// The usage the upstream reported, if it did.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// Output tokens estimated from the content seen so far
    /// ([`tokens_from_bytes`](crate::read_request::tokens_from_bytes)).
    pub fn output_tokens_estimate(&self) -> u64 {
        crate::read_request::tokens_from_bytes(self.content_bytes)
    }

    /// Bytes the meter holds now (bounded by [`EVENT_CAP`] whatever the answer's size).
    pub fn buffered(&self) -> usize {
        self.line.capacity()
    }
}

/// Removes, from a stream, the usage-only chunk (`"choices":[]` with a
/// `usage`) that the gateway asked the upstream for on behalf of a client
/// that did not ask for it. Every other line passes unchanged, each as soon
/// as its newline arrives (at most [`EVENT_CAP`] of one line is held back;
/// a longer line is passed through as it comes).
#[derive(Debug, Default)]
pub(crate) struct UsageFilter {
    pending: BytesMut,
    passthrough: bool,
}

impl UsageFilter {
    /// What of `chunk` goes on now. Without a line held from an earlier
    /// chunk, the chunk's complete lines go on as a slice of it (no copy)
    /// unless one of them is the usage chunk, and then as one copy without
    /// it; only an unfinished last line is copied, to be held.
    pub(crate) fn pass(&mut self, chunk: &Bytes) -> Bytes {
        if self.pending.is_empty() && !self.passthrough {
            let complete = memchr::memrchr(b'\n', chunk).map_or(0, |i| i + 1);
            if chunk.len() - complete <= EVENT_CAP {
                // Everything but the usage-only lines, copied only if there is one.
                let mut out: Option<BytesMut> = None;
                let (mut line_start, mut kept_from) = (0, 0);
                for end in memchr::memchr_iter(b'\n', &chunk[..complete]) {
                    if is_usage_only(&chunk[line_start..=end]) {
                        out.get_or_insert_with(|| BytesMut::with_capacity(complete))
                            .extend_from_slice(&chunk[kept_from..line_start]);
                        kept_from = end + 1;
                    }
                    line_start = end + 1;
                }
                self.pending.extend_from_slice(&chunk[complete..]);
                return match out {
                    None => chunk.slice(..complete),
                    Some(mut out) => {
                        out.extend_from_slice(&chunk[kept_from..complete]);
                        out.freeze()
                    }
                };
            }
        }
        self.pass_copying(chunk)
    }

    /// [`pass`](Self::pass), line by line into a new buffer.
    fn pass_copying(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(chunk.len() + self.pending.len());
        let mut rest = chunk;
        while !rest.is_empty() {
            let newline = memchr::memchr(b'\n', rest);
            if self.passthrough {
                let end = newline.map_or(rest.len(), |i| i + 1);
                out.extend_from_slice(&rest[..end]);
                self.passthrough = newline.is_none();
                rest = &rest[end..];
                continue;
            }
            match newline {
                Some(i) => {
                    self.pending.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    let line = self.pending.split();
                    if !is_usage_only(&line) {
                        out.extend_from_slice(&line);
                    }
                }
                None if self.pending.len() + rest.len() > EVENT_CAP => {
                    out.extend_from_slice(&self.pending.split());
                    out.extend_from_slice(rest);
                    self.passthrough = true;
                    break;
                }
                None => {
                    self.pending.extend_from_slice(rest);
                    break;
                }
            }
        }
        out.freeze()
    }

    /// What is held back when the stream ends (an unfinished last line).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.pending.split().freeze()
    }
}

pub(crate) fn is_usage_only(line: &[u8]) -> bool {
    // Searchers built once: building one costs more than searching a line.
    use memchr::memmem::Finder;
    static NO_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\":{"));
    line.starts_with(b"data:") && NO_CHOICES.find(line).is_some() && USAGE.find(line).is_some()
}

/// What settling needs: the reservation, the price, the prompt estimate,
/// and the spend record to finish.
#[derive(Debug)]
pub struct Settlement {
    /// The money held for the request (`None`: a request without budgets,
    /// metered for its spend record only).
    pub reservation: Option<Reservation>,
    /// The serving model's price.
    pub price: Price,
    /// The request's prompt-token estimate, charged when no usage comes.
    pub prompt_tokens: u64,
    /// The request's spend record, finished with the charge.
    pub record: Option<PendingSpend>,
    /// `tollgate_spend_micros_total`, registered once by the layer.
    pub(crate) spent: crate::metrics::Counter,
}

impl Settlement {
    /// Settles from the meter: the reported usage, or else an estimate of
    /// what was used (never zero). Returns the charge: the cost, or the
    /// reservation when the cost is larger (it never is with an honest
    /// upstream). The one place a request's cost is computed.
    ///
    /// `complete` says whether the answer reached its end. An answer that
    /// did not (a cut stream, a client that went away) may carry only a part
    /// of its usage — Anthropic's `message_start` reports the input and one
    /// output token, the final `message_delta` never came; a translated
    /// stream's opening event reports zeros — so each side is charged at
    /// least its estimate: the prompt estimate when no input was reported,
    /// and the output seen so far.
    pub fn settle(self, meter: &Meter, complete: bool) -> Micros {
        let estimated = |prompt_tokens: u64, completion_tokens: u64| TokenUsage {
            prompt_tokens,
            completion_tokens,
            ..TokenUsage::default()
        };
        let (usage, cost, estimate) = match meter.usage() {
            Some(usage) if complete => (usage, self.price.cost(&usage), false),
            Some(reported) => {
                let seen = meter.output_tokens_estimate();
                let usage = TokenUsage {
                    prompt_tokens: match reported.prompt_tokens {
                        0 => self.prompt_tokens,
                        n => n,
                    },
                    completion_tokens: reported.completion_tokens.max(seen),
                    ..reported
                };
                let adjusted = usage != reported;
                (usage, self.price.cost(&usage).max(1), adjusted)
            }
            None => {
                let usage = estimated(self.prompt_tokens, meter.output_tokens_estimate());
                (usage, self.price.cost(&usage).max(1), true)
            }
        };
        let charged = match self.reservation {
            Some(r) => r.settle(cost),
            None => cost,
        };
        self.spent.increment(charged);
        if let Some(record) = self.record {
            record.settled(usage, estimate, charged);
        }
        charged
    }
}

/// A response body that forwards every frame at once, unchanged, while a
/// [`Meter`] reads it; its [`Settlement`] is made when the body ends, fails
/// (a cut stream) or is dropped (a client that went away).
#[pin_project(PinnedDrop)]
pub struct Metered<B> {
    #[pin]
    inner: B,
    meter: Meter,
    settlement: Option<Settlement>,
    hide: Option<UsageFilter>,
    ended: bool,
    /// The inner body said, after its last frame, that it had ended.
    at_end: bool,
}

impl<B> Metered<B> {
    /// Meters `inner`.
    pub fn new(inner: B, meter: Meter, settlement: Settlement) -> Self {
        Metered {
            inner,
            meter,
            settlement: Some(settlement),
            hide: None,
            ended: false,
            at_end: false,
        }
    }

    /// Also removes the usage-only chunk from the stream: for a client that
    /// did not ask for `stream_options.include_usage` when the gateway asked
    /// the upstream for it. Lines are then forwarded as each one completes.
    pub fn hide_usage_chunk(mut self) -> Self {
        self.hide = Some(UsageFilter::default());
        self
    }
}

impl<B> HttpBody for Metered<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            if *this.ended {
                return Poll::Ready(None);
            }
            let polled = this.inner.as_mut().poll_frame(cx);
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let Some(data) = frame.data_ref() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    this.meter.feed(data);
                    *this.at_end = this.inner.is_end_stream();
                    match this.hide {
                        None => return Poll::Ready(Some(Ok(frame))),
                        Some(filter) => {
                            let out = filter.pass(data);
                            if !out.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                    }
                }
                Poll::Ready(None) => {
                    *this.ended = true;
                    this.meter.finish();
                    if let Some(s) = this.settlement.take() {
                        s.settle(this.meter, true);
                    }
                    let rest = this.hide.as_mut().map(UsageFilter::rest);
                    return Poll::Ready(rest.filter(|r| !r.is_empty()).map(|r| Ok(Frame::data(r))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.meter.finish();
                    if let Some(s) = this.settlement.take() {
                        s.settle(this.meter, false);
                    }
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.hide.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.hide {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[pinned_drop]
impl<B> PinnedDrop for Metered<B> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let Some(s) = this.settlement.take() {
            this.meter.finish();
            // A body that knows it has ended (a whole answer: hyper stops
            // polling after its one frame) was complete; any other was
            // dropped on the way (a client that went away).
            s.settle(this.meter, *this.at_end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Ledger, Limit, Period, Scope};
    use http_body_util::BodyExt;

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n"
        )
    }

    #[test]
    fn usage_in_the_last_event_split_anywhere() {
        let stream = format!(
            "{}{}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":12.5,\"completion_tokens\":4.0}}}}\n\ndata: [DONE]\n\n",
            chunk("hello"),
            chunk("world")
        );
        for split in 1..stream.len() {
            let mut m = Meter::sse();
            m.feed(&stream.as_bytes()[..split]);
            m.feed(&stream.as_bytes()[split..]);
            m.finish();
            let u = m.usage().unwrap();
            assert_eq!(
                (u.prompt_tokens, u.completion_tokens),
                (13, 4),
                "split at {split}"
            );
        }
        let mut m = Meter::sse();
        m.feed(format!("{}{}", chunk("hello"), chunk("worlds!!")).as_bytes());
        m.finish();
        assert_eq!(m.usage(), None);
        assert_eq!(m.output_tokens_estimate(), 4); // 13 bytes of content
    }

    #[test]
    fn json_answers_keep_only_their_tail() {
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"{}"}}}}],"usage":{{"prompt_tokens":3,"completion_tokens":2.4}}}}"#,
            "x".repeat(100_000)
        );
        let mut m = Meter::json();
        for part in body.as_bytes().chunks(1000) {
            m.feed(part);
        }
        assert!(m.buffered() <= 2 * JSON_TAIL);
        m.finish();
        let u = m.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 2));
    }

    #[test]
    fn two_hundred_mib_of_tool_arguments_in_flat_memory() {
        let head = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"";
        let tail = b"\"}}]}}]}\n\n";
        let args = vec![b'a'; 4096];
        let mut m = Meter::sse();
        let mut max_buffered = 0;
        let total = 200 << 20;
        for _ in 0..total / 4096 {
            m.feed(head);
            m.feed(&args);
            m.feed(tail);
            max_buffered = max_buffered.max(m.buffered());
        }
        // One huge event line, too: counted, never buffered whole.
        m.feed(b"data: {\"x\":\"");
        for _ in 0..1024 {
            m.feed(&args);
            max_buffered = max_buffered.max(m.buffered());
        }
        m.feed(b"\"}\n\n");
        m.finish();
        assert!(max_buffered <= 2 * EVENT_CAP, "{max_buffered}");
        assert!(m.output_tokens_estimate() >= (total as u64 + (4 << 20)) / 4);
    }

    fn ledger_and_settlement(amount: Micros) -> (Ledger, Limit, Settlement) {
        let ledger = Ledger::default();
        let limit = Limit {
            scope: Scope::Key("k".into()),
            max: 1_000_000,
            period: Period::Daily,
        };
        let reservation = ledger
            .reserve(std::slice::from_ref(&limit), amount)
            .unwrap();
        let price = Price {
            input_per_mtok: 1_000_000,
            output_per_mtok: 2_000_000,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
        };
        (
            ledger,
            limit,
            Settlement {
                reservation: Some(reservation),
                price,
                prompt_tokens: 10,
                record: None,
                spent: crate::metrics::record::spent(),
            },
        )
    }

    fn stream_of(
        parts: Vec<Result<Bytes, crate::Error>>,
    ) -> impl HttpBody<Data = Bytes, Error = crate::Error> {
        http_body_util::StreamBody::new(futures_util::stream::iter(
            parts.into_iter().map(|p| p.map(Frame::data)),
        ))
    }

    #[tokio::test]
    async fn a_cut_stream_is_charged_more_than_zero_and_less_than_the_reservation() {
        // Worst case: 10 prompt tokens + 1000 output tokens = 2010 micros.
        let (ledger, limit, s) = ledger_and_settlement(2010);
        let parts = vec![
            Ok(Bytes::from(chunk("0123456789abcdef"))),
            Ok(Bytes::from(chunk("0123456789abcdef"))),
            Err(crate::Error::new(crate::Reason::UpstreamError, "cut")),
        ];
        let body = Metered::new(stream_of(parts), Meter::sse(), s);
        let mut forwarded = Vec::new();
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => forwarded.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => break,
            }
        }
        assert_eq!(
            forwarded,
            format!("{}{}", chunk("0123456789abcdef"), chunk("0123456789abcdef")).as_bytes()
        );
        let u = ledger.usage(&limit.scope, limit.period);
        // 10 prompt tokens + 8 output tokens (32 bytes) at 1 and 2 micros.
        assert_eq!((u.spent, u.reserved), (26, 0));
    }

    #[tokio::test]
    async fn a_cut_stream_with_partial_usage_is_charged_at_least_what_was_seen() {
        // Price: 1 micro per input token, 2 per output token; the prompt
        // estimate is 10 tokens.
        let start = |input: u64| {
            format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{input},\"output_tokens\":1}}}}}}\n\n"
            )
        };
        let delta = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"0123456789abcdef0123456789abcdef\"}}\n\n";
        for (input, charged) in [
            // Anthropic's own `message_start`: its 50 input tokens, and 8
            // output tokens seen (32 bytes) rather than the 1 it reported.
            (50, 50 + 8 * 2),
            // A translated stream's opening event reports zeros: the
            // prompt estimate instead.
            (0, 10 + 8 * 2),
        ] {
            let (ledger, limit, s) = ledger_and_settlement(2010);
            let parts = vec![
                Ok(Bytes::from(start(input))),
                Ok(Bytes::from(delta)),
                Err(crate::Error::new(crate::Reason::UpstreamStreamCut, "cut")),
            ];
            let body = Metered::new(stream_of(parts), Meter::sse(), s);
            let mut body = std::pin::pin!(body);
            while let Some(Ok(_)) = body.frame().await {}
            let u = ledger.usage(&limit.scope, limit.period);
            assert_eq!((u.spent, u.reserved), (charged, 0), "input {input}");
        }
        // The same events completed: the reported usage, exactly.
        let (ledger, limit, s) = ledger_and_settlement(2010);
        let parts: Vec<Result<Bytes, crate::Error>> =
            vec![Ok(Bytes::from(start(50))), Ok(Bytes::from(delta))];
        Metered::new(stream_of(parts), Meter::sse(), s)
            .collect()
            .await
            .unwrap();
        assert_eq!(ledger.usage(&limit.scope, limit.period).spent, 50 + 2);
    }

    #[tokio::test]
    async fn a_dropped_body_settles_from_what_was_streamed() {
        let (ledger, limit, s) = ledger_and_settlement(2010);
        let parts: Vec<Result<Bytes, crate::Error>> =
            (0..10).map(|_| Ok(Bytes::from(chunk("abcd")))).collect();
        let mut body = Box::pin(Metered::new(stream_of(parts), Meter::sse(), s));
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        let u = ledger.usage(&limit.scope, limit.period);
        assert_eq!((u.spent, u.reserved), (10 + 2 * 2, 0));
    }

    #[tokio::test]
    async fn the_usage_chunk_the_gateway_asked_for_is_hidden_and_charged() {
        let (ledger, limit, s) = ledger_and_settlement(2010);
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        let stream = format!("{}{}{usage}", chunk("hi"), chunk("there"));
        let expected = format!("{}{}\ndata: [DONE]\n\n", chunk("hi"), chunk("there"));
        for split in 1..stream.len() {
            let (a, b) = stream.as_bytes().split_at(split);
            let parts = vec![Ok(Bytes::copy_from_slice(a)), Ok(Bytes::copy_from_slice(b))];
            let body = Metered::new(
                stream_of(parts),
                Meter::sse(),
                ledger_and_settlement(2010).2,
            )
            .hide_usage_chunk();
            let all = body.collect().await.unwrap().to_bytes();
            assert_eq!(all, expected.as_bytes(), "split at {split}");
        }
        // An unfinished last line is passed on at the end.
        let parts = vec![
            Ok(Bytes::from(stream.clone())),
            Ok(Bytes::from_static(b"data: tail")),
        ];
        let body = Metered::new(stream_of(parts), Meter::sse(), s).hide_usage_chunk();
        let all = body.collect().await.unwrap().to_bytes();
        assert!(all.ends_with(b"data: [DONE]\n\ndata: tail"));
        assert_eq!(ledger.usage(&limit.scope, limit.period).spent, 7 + 3 * 2);
    }

    /// The fast path (slices, or one copy without the usage line) forwards
    /// exactly what the line-by-line copy does, however the stream is cut.
    #[test]
    fn the_filter_fast_path_agrees_with_the_line_by_line_copy() {
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let stream = format!("{}{usage}{}{usage}data: [DONE]\n\n", chunk("a"), chunk("b"));
        let b = stream.as_bytes();
        let run = |cuts: &[usize], fast: bool| {
            let mut f = UsageFilter::default();
            let mut out = Vec::new();
            let mut from = 0;
            for &to in cuts.iter().chain([&b.len()]) {
                let part = Bytes::copy_from_slice(&b[from..to]);
                out.extend_from_slice(&if fast {
                    f.pass(&part)
                } else {
                    f.pass_copying(&part)
                });
                from = to;
            }
            out.extend_from_slice(&f.rest());
            out
        };
        let expected = format!("{}\n{}\ndata: [DONE]\n\n", chunk("a"), chunk("b"));
        assert_eq!(run(&[], true), expected.as_bytes());
        for i in (0..b.len()).step_by(3) {
            for j in (i..b.len()).step_by(7) {
                assert_eq!(run(&[i, j], true), run(&[i, j], false), "cut at {i}, {j}");
                assert_eq!(run(&[i, j], true), expected.as_bytes(), "cut at {i}, {j}");
            }
        }
    }

    #[test]
    fn long_lines_pass_through_the_filter_without_being_held() {
        let mut f = UsageFilter::default();
        let big = Bytes::from(vec![b'a'; EVENT_CAP + 1]);
        assert_eq!(f.pass(&Bytes::from_static(b"data: ")).len(), 0);
        assert_eq!(f.pass(&big).len(), 6 + big.len());
        assert_eq!(&f.pass(&Bytes::from_static(b"bc\nda"))[..], b"bc\n");
        assert_eq!(f.pending.len(), 2);
    }

    #[test]
    fn whole_events_pass_the_filter_without_a_copy() {
        let mut f = UsageFilter::default();
        let events = Bytes::from(chunk("hi") + &chunk("there"));
        let out = f.pass(&events);
        assert_eq!(out, events);
        assert_eq!(
            out.as_ptr(),
            events.as_ptr(),
            "a slice of the chunk, not a copy"
        );
        // An unfinished last line is held; the lines before it are a slice.
        let split = Bytes::from(chunk("a") + "data: {\"cho");
        let out = f.pass(&split);
        assert_eq!(out, chunk("a").as_bytes());
        assert_eq!(out.as_ptr(), split.as_ptr());
        assert_eq!(&f.pending[..], b"data: {\"cho");
        // The usage chunk is removed (copying what is kept).
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let mut f = UsageFilter::default();
        let out = f.pass(&Bytes::from(chunk("b") + usage + "data: [DONE]\n\n"));
        assert_eq!(out, (chunk("b") + "\n" + "data: [DONE]\n\n").as_bytes());
    }

    #[tokio::test]
    async fn reported_usage_wins_and_is_never_more_than_the_reservation() {
        let (ledger, limit, s) = ledger_and_settlement(2010);
        let usage = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        let body = Metered::new(
            stream_of(vec![Ok(Bytes::from(chunk("hi"))), Ok(Bytes::from(usage))]),
            Meter::sse(),
            s,
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert!(all.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(ledger.usage(&limit.scope, limit.period).spent, 7 + 3 * 2);
    }
}
