//! The upstream's response body, passed through with its timeouts kept.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
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
    #[pin]
    idle: Sleep,
    #[pin]
    total: Sleep,
    idle_after: Duration,
    total_after: Duration,
    end: StreamEnd,
    /// The last bytes of data seen (right-aligned), to find the last event.
    tail: [u8; TAIL],
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
            idle_after: idle,
            total_after: deadline.saturating_duration_since(now),
            end,
            tail: [0; TAIL],
            finished: false,
        }
    }

    pub(crate) fn expect_end(&mut self, end: StreamEnd) {
        self.end = end;
    }

    fn expects_an_end(&self) -> bool {
        self.end != StreamEnd::Any
    }
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
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !data.is_empty() {
                        push_tail(this.tail, data);
                        this.idle.as_mut().reset(Instant::now() + *this.idle_after);
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(_))) => {
                *this.finished = true;
                return Poll::Ready(Some(Err(Error::new(
                    Reason::UpstreamStreamCut,
                    "The upstream connection broke in the middle of the answer.",
                ))));
            }
            Poll::Ready(None) => {
                *this.finished = true;
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
        if this.idle.poll(cx).is_ready() {
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
