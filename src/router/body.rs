//! The router's response body: the frames read before the commit point,
//! replayed, then the upstream's body; an in-flight guard that lives as long
//! as the body; and a report to the cooldown store if the stream fails after
//! the commit point.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use memchr::memmem;

use crate::body::Body;
use crate::error::Error;
use crate::metrics::Gauge;

/// How many bytes of a stream may be held back before the commit point;
/// past it the stream commits anyway (memory stays bounded).
pub(crate) const PEEK_LIMIT: usize = 64 * 1024;

/// Counts a deployment's in-flight requests (and its
/// `tollgate_deployment_in_flight` gauge); released when dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    load: Arc<AtomicU32>,
    gauge: Gauge,
}

impl InFlight {
    pub(crate) fn acquire(load: &Arc<AtomicU32>, gauge: &Gauge) -> Self {
        load.fetch_add(1, Ordering::Relaxed);
        gauge.increment(1.0);
        InFlight {
            load: load.clone(),
            gauge: gauge.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }
}

/// Called once if the body fails after the commit point.
pub(crate) type OnFailure = Box<dyn FnOnce(&Error) + Send>;

/// Replays `buffered`, then continues with `inner`; holds the in-flight
/// guard until the end (or until the client goes away and the body is dropped).
pub(crate) struct RouterBody {
    buffered: VecDeque<Frame<Bytes>>,
    inner: Body,
    _guard: InFlight,
    on_failure: Option<OnFailure>,
}

impl RouterBody {
    pub(crate) fn new(
        buffered: VecDeque<Frame<Bytes>>,
        inner: Body,
        guard: InFlight,
        on_failure: Option<OnFailure>,
    ) -> Self {
        RouterBody {
            buffered,
            inner,
            _guard: guard,
            on_failure,
        }
    }
}

impl HttpBody for RouterBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let Some(f) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled
            && let Some(report) = this.on_failure.take()
        {
            report(e);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .buffered
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let inner = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + held);
        if let Some(u) = inner.upper() {
            h.set_upper(u + held);
        }
        h
    }
}

/// A body that fails at once (an in-memory answer that could not be read).
pub(crate) struct Failed(pub(crate) Option<Error>);

impl HttpBody for Failed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

/// Watches the start of an SSE stream for its first content event.
///
/// The commit point is the first event that carries content for the
/// client: a chat delta with non-empty `content` or any `tool_calls`, a
/// completions chunk with non-empty `text`, a Responses-API `*.delta` event,
/// a `refusal`, or an Anthropic `content_block_delta` (text, thinking or
/// tool input). Events before it (the role-only first chunk OpenAI sends,
/// `response.created`, Anthropic's `message_start` and `content_block_start`,
/// `ping`, keep-alive comments) carry nothing a retry would
/// contradict, so an error among them is still retried invisibly. The search
/// is a byte search over what was seen, which stays below [`PEEK_LIMIT`];
/// a false positive only commits earlier, which is always safe.
#[derive(Default)]
pub(crate) struct CommitWatch {
    seen: BytesMut,
    scanned: usize,
    /// Where a marker was seen whose value had not arrived yet (only
    /// whitespace after it): the next frame is searched from there.
    undecided: Option<usize>,
}

const CONTENT_MARKERS: [&[u8]; 6] = [
    b"\"content\":",
    b"\"text\":",
    b"\"refusal\":",
    b"\"tool_calls\":",
    b".delta\"",
    b"content_block_delta\"",
];

impl CommitWatch {
    /// Feeds one data frame; returns whether content has been seen.
    pub(crate) fn feed(&mut self, data: &[u8]) -> bool {
        self.seen.extend_from_slice(data);
        // Re-scan a little of the previous frames (a marker may straddle),
        // and from a marker whose value had not arrived.
        let from = self
            .scanned
            .saturating_sub(24)
            .min(self.undecided.take().unwrap_or(usize::MAX));
        self.scanned = self.seen.len();
        let hay = &self.seen[from..];
        // Searchers built once: building one costs more than searching a frame.
        static FINDERS: LazyLock<[memmem::Finder<'static>; 6]> =
            LazyLock::new(|| CONTENT_MARKERS.map(memmem::Finder::new));
        for (m, finder) in CONTENT_MARKERS.iter().zip(FINDERS.iter()) {
            for at in finder.find_iter(hay) {
                match carries_content(m, &hay[at + m.len()..]) {
                    Some(true) => return true,
                    Some(false) => {}
                    None => {
                        let at = from + at;
                        self.undecided = Some(self.undecided.map_or(at, |u| u.min(at)));
                    }
                }
            }
        }
        false
    }

    /// Bytes held so far.
    pub(crate) fn held(&self) -> usize {
        self.seen.len()
    }
}

/// Whether the value after a marker is content: a non-empty string (or,
/// for `tool_calls`, an array; for a `.delta"` event type, anything).
/// `None` while only whitespace (or a lone opening quote) has arrived.
fn carries_content(marker: &[u8], after: &[u8]) -> Option<bool> {
    if marker == b".delta\"" || marker == b"content_block_delta\"" {
        return Some(true);
    }
    let v = after.trim_ascii_start();
    if marker == b"\"tool_calls\":" {
        return v.first().map(|&b| b == b'[');
    }
    match v {
        [] | [b'"'] => None,
        [first, second, ..] => Some(*first == b'"' && *second != b'"'),
        [_] => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn anthropic_commit_point_is_the_first_block_delta() {
        let mut w = CommitWatch::default();
        // `message_start` has `"content":[]` and a text block starts with
        // `"text":""`: neither is content yet.
        assert!(!w.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":3}}}\n\n"));
        assert!(!w.feed(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: ping\ndata: {\"type\": \"ping\"}\n\n"));
        assert!(w.feed(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let\"}}\n\n"));
    }

    #[test]
    fn commit_point_is_the_first_content() {
        let mut w = CommitWatch::default();
        assert!(!w.feed(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
        ));
        assert!(!w.feed(b": keep-alive\n\n"));
        assert!(!w.feed(b"data: {\"choices\":[{\"delta\":{\"content\":null}}]}\n\n"));
        assert!(w.feed(b"data: {\"choices\":[{\"delta\":{\"content\": \"Hi\"}}]}\n\n"));

        let mut w = CommitWatch::default();
        assert!(w.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0}]}}]}\n\n"
        ));

        let mut w = CommitWatch::default();
        assert!(!w.feed(b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n"));
        assert!(w.feed(
            b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\n"
        ));

        // A marker split across two frames.
        let mut w = CommitWatch::default();
        assert!(!w.feed(b"data: {\"choices\":[{\"text\":\"\"}]}\n\ndata: {\"choices\":[{\"te"));
        assert!(w.feed(b"xt\":\"tok\"}]}\n\n"));
        assert!(w.held() > 0);
    }

    /// Found by fuzzing (fuzz target `sse`): a marker at the end of one
    /// frame whose value comes after more whitespace than the re-scanned
    /// margin was missed, so content could go out uncommitted.
    #[test]
    fn a_value_after_long_whitespace_in_a_later_frame_is_content() {
        let mut w = CommitWatch::default();
        assert!(!w.feed(b"data: {\"choices\":[{\"delta\":{\"content\":"));
        assert!(!w.feed(&[b' '; 40]));
        assert!(w.feed(b"\"Hi\"}}]}\n\n"));

        let mut w = CommitWatch::default();
        assert!(!w.feed(b"data: {\"choices\":[{\"delta\":{\"tool_calls\":   "));
        assert!(!w.feed(&[b'\n'; 30]));
        assert!(w.feed(b"[{\"index\":0}]}}]}\n\n"));

        // An empty string cut after its opening quote is still no content.
        let mut w = CommitWatch::default();
        assert!(!w.feed(b"data: {\"choices\":[{\"delta\":{\"content\": \""));
        assert!(!w.feed(b"\"}}]}\n\n"));
        assert!(!w.feed(&[b' '; 30]));
    }

    #[tokio::test]
    async fn replays_then_continues_and_releases_the_guard() {
        let load = Arc::new(AtomicU32::new(0));
        let guard = InFlight::acquire(&load, &crate::metrics::record::in_flight("g/d"));
        assert_eq!(load.load(Ordering::Relaxed), 1);
        let buffered = VecDeque::from([
            Frame::data(Bytes::from_static(b"a")),
            Frame::data(Bytes::from_static(b"b")),
        ]);
        let body = RouterBody::new(buffered, Body::full("c"), guard, None);
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, "abc");
        assert_eq!(load.load(Ordering::Relaxed), 0, "released with the body");
    }
}
