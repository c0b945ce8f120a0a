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

/// The upstream's body, frame by frame, unchanged: it adds the idle and total
/// timeouts, and turns a broken connection (or, for chat and completion
/// streams, an end without `data: [DONE]`) into 502 `upstream_stream_cut`.
/// State is O(1): the last few bytes seen, two timers.
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
    expect_done: bool,
    /// The last bytes of data seen (right-aligned), to find `[DONE]` at the end.
    tail: [u8; TAIL],
    finished: bool,
}

const TAIL: usize = 16;

impl UpstreamBody {
    pub(crate) fn new(
        inner: Incoming,
        idle: Duration,
        deadline: Instant,
        expect_done: bool,
    ) -> Self {
        let now = Instant::now();
        UpstreamBody {
            inner,
            idle: tokio::time::sleep_until(now + idle),
            total: tokio::time::sleep_until(deadline),
            idle_after: idle,
            total_after: deadline.saturating_duration_since(now),
            expect_done,
            tail: [0; TAIL],
            finished: false,
        }
    }

    pub(crate) fn expect_done(&mut self, on: bool) {
        self.expect_done = on;
    }
}

fn ends_with_done(tail: &[u8; TAIL]) -> bool {
    let end = tail
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    tail[..end].ends_with(b"data: [DONE]") || tail[..end].ends_with(b"data:[DONE]")
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
                if *this.expect_done && !ends_with_done(this.tail) {
                    return Poll::Ready(Some(Err(Error::new(
                        Reason::UpstreamStreamCut,
                        "The upstream ended the stream without `data: [DONE]`.",
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
        self.finished || (!self.expect_done && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.expect_done {
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
        let mut t = [0u8; TAIL];
        push_tail(&mut t, b"data: {\"x\":1}\n\ndata: [DO");
        assert!(!ends_with_done(&t));
        push_tail(&mut t, b"NE]\n\n");
        assert!(ends_with_done(&t));
        push_tail(&mut t, b"data: more\n\n");
        assert!(!ends_with_done(&t));
        let mut t = [0u8; TAIL];
        push_tail(&mut t, b"data:[DONE]\r\n\r\n");
        assert!(ends_with_done(&t));
    }
}
