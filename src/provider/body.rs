//! The upstream's response body, passed through with its timeouts kept.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::{Error, Reason, TimeoutPhase};

/// How a complete stream ends, so an early end is told from a finished one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Any end is an end (non-streaming answers, the Responses API).
    Any,
    /// OpenAI's chat and completions streams: `data: [DONE]`.
    Done,
    /// Anthropic's Messages streams: the `message_stop` event.
    MessageStop,
}

/// The upstream's body, frame by frame, unchanged: it adds the idle and total
/// timeouts, and turns a broken connection (or a stream that ends without
/// its API's last event: `data: [DONE]`, Anthropic's `message_stop`) into
/// 502 `upstream_stream_cut`. State is O(1): the last few bytes seen, two timers.
#[pin_project]
pub struct UpstreamBody {
    #[pin]
    inner: Incoming,
    /// Fires at the idle deadline as it was when last set; the deadline
    /// itself moves with `last_data` and the timer catches up only when it
    /// fires (moving a timer in tokio's wheel on every frame cost more than
    /// the rest of passing the frame on).
    #[pin]
    idle: Sleep,
    #[pin]
    total: Sleep,
    /// When the last data frame arrived.
    last_data: Instant,
    idle_after: Duration,
    total_after: Duration,
    end: StreamEnd,
    /// The last bytes of data seen (right-aligned), to find the last event.
    tail: [u8; TAIL],
    /// For an SSE stream passed through: each event is checked to be JSON
    /// before it goes on ([`SseCheck`]).
    check: Option<SseCheck>,
    finished: bool,
}

const TAIL: usize = 32;

impl UpstreamBody {
    pub(crate) fn new(inner: Incoming, idle: Duration, deadline: Instant, end: StreamEnd) -> Self {
        let now = Instant::now();
        UpstreamBody {
            inner,
            idle: tokio::time::sleep_until(now + idle),
            total: tokio::time::sleep_until(deadline),
            last_data: now,
            idle_after: idle,
            total_after: deadline.saturating_duration_since(now),
            end,
            tail: [0; TAIL],
            check: None,
            finished: false,
        }
    }

    pub(crate) fn expect_end(&mut self, end: StreamEnd) {
        self.end = end;
    }

    /// Checks every event of this SSE stream before passing it on: one
    /// whose data is not JSON (`[DONE]` excepted) ends the stream with 502
    /// `upstream_bad_response` instead of reaching the client.
    pub(crate) fn check_events(&mut self) {
        self.check = Some(SseCheck::default());
    }

    fn expects_an_end(&self) -> bool {
        self.end != StreamEnd::Any
    }
}

/// Checks the events of an SSE stream as they pass: each event's data (its
/// `data:` lines, joined) must be JSON or `[DONE]`. Complete events go on as
/// slices of the upstream's chunk (no copy); an event split across chunks is
/// held (one copy) until it is complete and checked, so a malformed one
/// never reaches the client, even in part. O(1): at most one event is held,
/// up to [`EVENT_CAP`](crate::budget::EVENT_CAP)-sized; a larger event is
/// passed on unchecked as it comes (it is, in practice, a long tool-call
/// argument or text delta, which the meter counts the same way).
#[derive(Debug, Default)]
pub(crate) struct SseCheck {
    /// The unfinished event held back.
    held: BytesMut,
    /// Passing an oversized event through unchecked, until it ends.
    unchecked: bool,
}

/// The most of one event held back to be checked.
const HOLD_CAP: usize = 64 * 1024;

impl SseCheck {
    /// What of `chunk` goes on now (`None`: nothing yet), or the error of a
    /// malformed event.
    pub(crate) fn pass(&mut self, chunk: Bytes) -> Result<Option<Bytes>, Error> {
        if self.unchecked {
            let first_end = event_ends(&[], &chunk).next();
            match first_end {
                None => return Ok(Some(chunk)),
                Some(end) => {
                    self.unchecked = false;
                    let (head, rest) = (chunk.slice(..end), chunk.slice(end..));
                    let more = self.pass(rest)?;
                    return Ok(Some(match more {
                        None => head,
                        Some(more) => {
                            let mut out = BytesMut::with_capacity(head.len() + more.len());
                            out.extend_from_slice(&head);
                            out.extend_from_slice(&more);
                            out.freeze()
                        }
                    }));
                }
            }
        }
        // The end of the last complete event in what is held and the chunk.
        let complete = event_ends(&self.held, &chunk).last();
        let out = if self.held.is_empty() {
            let end = complete.unwrap_or(0);
            check_events(&chunk[..end])?;
            let out = chunk.slice(..end);
            self.hold(&chunk[end..]);
            out
        } else {
            match complete {
                None => {
                    self.hold(&chunk);
                    return Ok(self.release_if_unchecked());
                }
                Some(end) => {
                    self.held.extend_from_slice(&chunk[..end]);
                    let out = self.held.split().freeze();
                    check_events(&out)?;
                    self.hold(&chunk[end..]);
                    out
                }
            }
        };
        if let Some(big) = self.release_if_unchecked() {
            let mut both = BytesMut::with_capacity(out.len() + big.len());
            both.extend_from_slice(&out);
            both.extend_from_slice(&big);
            return Ok(Some(both.freeze()));
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// The stream ended: what is held (an event without its blank line),
    /// checked.
    pub(crate) fn rest(&mut self) -> Result<Option<Bytes>, Error> {
        if self.held.is_empty() {
            return Ok(None);
        }
        let out = self.held.split().freeze();
        if !self.unchecked {
            check_events(&out)?;
        }
        Ok(Some(out))
    }

    fn hold(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
    }

    /// An event held past the cap goes on unchecked, with the rest of it.
    fn release_if_unchecked(&mut self) -> Option<Bytes> {
        (self.held.len() > HOLD_CAP).then(|| {
            self.unchecked = true;
            let out = self.held.split().freeze();
            self.held = BytesMut::new();
            out
        })
    }
}

/// The ends (just past the blank line) of the events that complete in
/// `chunk`, when `held` came before it: a blank line is a newline right
/// after a newline, with an optional `\r` between.
fn event_ends<'a>(held: &'a [u8], chunk: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    let mut prev: Option<usize> = None;
    memchr::memchr_iter(b'\n', chunk).filter_map(move |nl| {
        let blank = match prev {
            Some(p) => nl == p + 1 || (nl == p + 2 && chunk[p + 1] == b'\r'),
            None => {
                (nl == 0 && (held.ends_with(b"\n") || held.ends_with(b"\n\r")))
                    || (nl == 1 && chunk[0] == b'\r' && held.ends_with(b"\n"))
            }
        };
        prev = Some(nl);
        blank.then_some(nl + 1)
    })
}

/// Checks complete events: each one's data lines, joined, are JSON or
/// `[DONE]`. An event of one data line (every API's) is checked in place;
/// only an event of several is joined into a buffer.
fn check_events(events: &[u8]) -> Result<(), Error> {
    let mut single: Option<&[u8]> = None;
    let mut joined: Option<Vec<u8>> = None;
    let flush = |single: &mut Option<&[u8]>, joined: &mut Option<Vec<u8>>| match (
        joined.take(),
        single.take(),
    ) {
        (Some(j), _) => check_data(&j),
        (None, Some(d)) => check_data(d),
        (None, None) => Ok(()),
    };
    // Lines found with memchr: a byte-at-a-time split cost more than the
    // check itself.
    let mut rest = Some(events);
    while let Some(text) = rest {
        let (line, next) = match memchr::memchr(b'\n', text) {
            Some(nl) => (&text[..nl], Some(&text[nl + 1..])),
            None => (text, None),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            flush(&mut single, &mut joined)?;
        } else if let Some(d) = line.strip_prefix(b"data:") {
            let d = d.strip_prefix(b" ").unwrap_or(d);
            match (joined.as_mut(), single.take()) {
                (Some(j), _) => {
                    j.push(b'\n');
                    j.extend_from_slice(d);
                }
                (None, Some(first)) => {
                    let mut j = Vec::with_capacity(first.len() + 1 + d.len());
                    j.extend_from_slice(first);
                    j.push(b'\n');
                    j.extend_from_slice(d);
                    joined = Some(j);
                }
                (None, None) => single = Some(d),
            }
        }
    }
    flush(&mut single, &mut joined)
}

fn check_data(data: &[u8]) -> Result<(), Error> {
    let data = data.trim_ascii();
    if data == b"[DONE]" || crate::read_request::scan::is_json(data) {
        return Ok(());
    }
    Err(Error::new(
        Reason::UpstreamBadResponse,
        "The upstream sent a stream event whose data is not JSON; it was not passed on.",
    ))
}

/// Whether the stream's last bytes are its API's last event.
fn ended(end: StreamEnd, tail: &[u8; TAIL]) -> bool {
    let last = tail
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    let tail = &tail[..last];
    match end {
        StreamEnd::Any => true,
        StreamEnd::Done => tail.ends_with(b"data: [DONE]") || tail.ends_with(b"data:[DONE]"),
        StreamEnd::MessageStop => tail.ends_with(b"\"message_stop\"}"),
    }
}

fn push_tail(tail: &mut [u8; TAIL], data: &[u8]) {
    if data.len() >= TAIL {
        tail.copy_from_slice(&data[data.len() - TAIL..]);
    } else {
        tail.copy_within(data.len().., 0);
        tail[TAIL - data.len()..].copy_from_slice(data);
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        // A checked frame that completes no event yields nothing: read on.
        let polled = loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref()
                        && !data.is_empty()
                    {
                        push_tail(this.tail, data);
                        *this.last_data = Instant::now();
                    }
                    let Some(check) = this.check.as_mut() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    match check.pass(data) {
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) => continue,
                        Err(e) => {
                            *this.finished = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                other => break other,
            }
        };
        match polled {
            Poll::Ready(Some(Ok(_))) => unreachable!("data frames are handled above"),
            Poll::Ready(Some(Err(_))) => {
                *this.finished = true;
                return Poll::Ready(Some(Err(Error::new(
                    Reason::UpstreamStreamCut,
                    "The upstream connection broke in the middle of the answer.",
                ))));
            }
            Poll::Ready(None) => {
                *this.finished = true;
                // What is held of an unfinished last event: checked, then sent.
                if let Some(rest) = this.check.as_mut().map(SseCheck::rest) {
                    match rest {
                        Ok(Some(out)) => {
                            // The end is checked when the caller polls again.
                            *this.finished = false;
                            this.check.take();
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
                if !ended(*this.end, this.tail) {
                    let last = match this.end {
                        StreamEnd::MessageStop => "`message_stop`",
                        _ => "`data: [DONE]`",
                    };
                    return Poll::Ready(Some(Err(Error::new(
                        Reason::UpstreamStreamCut,
                        format!("The upstream ended the stream without {last}."),
                    ))));
                }
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.total.poll(cx).is_ready() {
            *this.finished = true;
            return Poll::Ready(Some(Err(Error::timeout(
                TimeoutPhase::Total,
                *this.total_after,
            ))));
        }
        while this.idle.as_mut().poll(cx).is_ready() {
            let due = *this.last_data + *this.idle_after;
            if due > this.idle.deadline() {
                // Data came since the timer was set: wait for the new deadline.
                this.idle.as_mut().reset(due);
                continue;
            }
            *this.finished = true;
            return Poll::Ready(Some(Err(Error::timeout(
                TimeoutPhase::Idle,
                *this.idle_after,
            ))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.finished || (!self.expects_an_end() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.expects_an_end() {
            // Might end in an error instead: no exact length.
            let mut h = SizeHint::new();
            h.set_lower(self.inner.size_hint().lower());
            h
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_detection_across_chunks() {
        let done = |t: &[u8; TAIL]| ended(StreamEnd::Done, t);
        let mut t = [0u8; TAIL];
        push_tail(&mut t, b"data: {\"x\":1}\n\ndata: [DO");
        assert!(!done(&t));
        push_tail(&mut t, b"NE]\n\n");
        assert!(done(&t));
        push_tail(&mut t, b"data: more\n\n");
        assert!(!done(&t));
        let mut t = [0u8; TAIL];
        push_tail(&mut t, b"data:[DONE]\r\n\r\n");
        assert!(done(&t));
    }

    /// What an `SseCheck` passes on for `chunks`, or the first error.
    fn checked(chunks: &[&[u8]]) -> Result<Vec<u8>, Error> {
        let mut c = SseCheck::default();
        let mut out = Vec::new();
        for chunk in chunks {
            if let Some(b) = c.pass(Bytes::copy_from_slice(chunk))? {
                out.extend_from_slice(&b);
            }
        }
        if let Some(b) = c.rest()? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    #[test]
    fn events_are_checked_whole_however_the_stream_is_cut() {
        let good: &[u8] = b"event: a\ndata: {\"x\":1}\n\n: keep-alive\n\ndata: {\"y\":\r\ndata: 2}\r\n\r\ndata: [DONE]\n\n";
        let bad: &[u8] = b"data: {\"x\":1}\n\ndata: {not json\n\ndata: [DONE]\n\n";
        for cut in 0..=good.len() {
            let (a, b) = good.split_at(cut);
            assert_eq!(checked(&[a, b]).unwrap(), good, "cut at {cut}");
        }
        for cut in 0..=bad.len() {
            let (a, b) = bad.split_at(cut);
            let e = checked(&[a, b]).unwrap_err();
            assert_eq!(e.reason(), Reason::UpstreamBadResponse, "cut at {cut}");
        }
        // Nothing of the malformed event goes on, even split in three.
        let mut c = SseCheck::default();
        let first = c
            .pass(Bytes::from_static(b"data: {\"x\":1}\n\ndata: {no"))
            .unwrap();
        assert_eq!(first.as_deref(), Some(&b"data: {\"x\":1}\n\n"[..]));
        assert_eq!(c.pass(Bytes::from_static(b"t json")).unwrap(), None);
        assert!(c.pass(Bytes::from_static(b"\n\n")).is_err());
        // A complete chunk goes on as the upstream's own bytes: no copy.
        let mut c = SseCheck::default();
        let chunk = Bytes::from_static(b"data: {}\n\n");
        let out = c.pass(chunk.clone()).unwrap().unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        // A last event without its blank line is checked at the end.
        assert!(checked(&[b"data: {}\n\ndata: {"]).is_err());
        assert_eq!(
            checked(&[b"data: {}\n\ndata: [DONE]"]).unwrap(),
            b"data: {}\n\ndata: [DONE]"
        );
    }

    #[test]
    fn an_event_over_the_cap_passes_unchecked_in_bounded_memory() {
        let mut c = SseCheck::default();
        let mut out = Vec::new();
        let piece = vec![b'x'; 16 * 1024];
        out.extend_from_slice(
            &c.pass(Bytes::from_static(b"data: {\"a\":\""))
                .unwrap()
                .unwrap_or_default(),
        );
        for _ in 0..64 {
            if let Some(b) = c.pass(Bytes::copy_from_slice(&piece)).unwrap() {
                out.extend_from_slice(&b);
            }
            assert!(c.held.len() <= HOLD_CAP + piece.len(), "{}", c.held.len());
        }
        let end = c.pass(Bytes::from_static(b"\"}\n\ndata: {oops\n\n"));
        assert!(end.is_err(), "checking resumes after the long event");
        assert!(
            out.len() >= 60 * 16 * 1024,
            "the long event went on as it came"
        );
    }

    #[test]
    fn message_stop_detection_across_chunks() {
        let stop = |t: &[u8; TAIL]| ended(StreamEnd::MessageStop, t);
        let mut t = [0u8; TAIL];
        push_tail(
            &mut t,
            b"event: message_delta\ndata: {\"type\":\"message_delta\"}\n\n",
        );
        assert!(!stop(&t));
        push_tail(&mut t, b"event: message_stop\ndata: {\"type\":\"mess");
        assert!(!stop(&t));
        push_tail(&mut t, b"age_stop\"}\n\n");
        assert!(stop(&t));
        let mut t = [0u8; TAIL];
        push_tail(&mut t, b"data: {\"type\": \"message_stop\"}\r\n\r\n");
        assert!(stop(&t));
        assert!(ended(StreamEnd::Any, &[0; TAIL]));
    }
}
