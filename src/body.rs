//! The one response body type of the stack.
//!
//! Streams are rarely `Sync`, so this is an `UnsyncBoxBody` whose error is the
//! typed [`Error`]: a mid-stream failure stays typed until
//! [`NormalizeErrors`](crate::normalize::NormalizeErrors) turns it into SSE
//! error events. One box per response, at the edge.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::Error;

/// A response body: bytes, failing with [`Error`].
pub struct Body(UnsyncBoxBody<Bytes, Error>);

impl Body {
    /// Boxes any body whose errors convert into [`Error`].
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Error>,
    {
        Body(body.map_err(Into::into).boxed_unsync())
    }

    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::new(Full::new(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Body::new(Empty::new())
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A request body made of a few shared slices, sent one after another without
/// copying: how the provider forwards the client's bytes with only the
/// `model` value replaced.
#[derive(Clone, Debug, Default)]
pub struct Chunks {
    parts: Vec<Bytes>,
    next: usize,
    remaining: u64,
}

impl Chunks {
    /// The body made of `parts` in order (empty parts are skipped). A body of
    /// several parts and at most [`Chunks::COALESCE_BELOW`] bytes in all is
    /// copied into one part, so it goes out as one frame: HTTP/2 servers built
    /// on h2 0.4.20 or later charge every DATA frame under 256 bytes against a
    /// per-connection budget until the application reads it, and close the
    /// connection (`GOAWAY ENHANCE_YOUR_CALM`, `too_many_data_frames`) when a
    /// burst of requests, each split in three small frames around the `model`
    /// value, exhausts it. Larger bodies keep their shared slices.
    pub fn new(mut parts: Vec<Bytes>) -> Self {
        parts.retain(|p| !p.is_empty());
        let remaining: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if parts.len() > 1 && remaining < Self::COALESCE_BELOW as u64 {
            // One copy into one buffer; the parts' vector is reused.
            let one = Bytes::from(parts.concat());
            parts.clear();
            parts.push(one);
        }
        Chunks {
            parts,
            next: 0,
            remaining,
        }
    }

    /// Bodies shorter than this (16 KiB, one HTTP/2 frame at the default
    /// frame size) are sent as one contiguous part.
    pub const COALESCE_BELOW: usize = 16 << 10;

    /// The total length in bytes.
    pub fn len(&self) -> u64 {
        self.remaining
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// The bytes as one contiguous buffer (copies unless there is one part).
    pub fn to_bytes(&self) -> Bytes {
        match &self.parts[self.next..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match this.parts.get_mut(this.next) {
            Some(part) => {
                let part = std::mem::take(part);
                this.next += 1;
                this.remaining -= part.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(part))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn chunks_concatenate_with_exact_size() {
        let c = Chunks::new(vec![
            Bytes::from_static(b"{\"model\":"),
            Bytes::new(),
            Bytes::from_static(b"\"x\"}"),
        ]);
        assert_eq!(c.size_hint().exact(), Some(13));
        assert_eq!(c.to_bytes(), Bytes::from_static(b"{\"model\":\"x\"}"));
        let collected = c.collect().await.unwrap().to_bytes();
        assert_eq!(collected, Bytes::from_static(b"{\"model\":\"x\"}"));
    }

    #[tokio::test]
    async fn small_bodies_go_out_as_one_frame_large_ones_as_shared_slices() {
        let mut c = Chunks::new(vec![
            Bytes::from_static(b"{\"model\":"),
            Bytes::from_static(b"\"x\""),
            Bytes::from_static(b"}"),
        ]);
        let one = c.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(one, Bytes::from_static(b"{\"model\":\"x\"}"));
        assert!(c.frame().await.is_none());

        let big = Bytes::from(vec![b' '; Chunks::COALESCE_BELOW]);
        let mut c = Chunks::new(vec![
            Bytes::from_static(b"{\"model\":"),
            Bytes::from_static(b"\"x\""),
            big.clone(),
        ]);
        let mut frames = Vec::new();
        while let Some(f) = c.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].as_ptr(), big.as_ptr(), "not copied");
    }

    #[tokio::test]
    async fn body_boxes_and_reports_errors_typed() {
        let b = Body::full("hi");
        assert_eq!(b.size_hint().exact(), Some(2));
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hi");
        assert!(Body::empty().is_end_stream());
    }
}
