//! An upstream stream translated into the client's family as it passes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project::pin_project;

use super::body::UpstreamBody;
use crate::error::Error;
use crate::translate::StreamTranslator;

/// The upstream's stream, each chunk fed to a [`StreamTranslator`] and what
/// it writes passed on at once: O(1) memory per stream (the translator's
/// bounded state and one output buffer, split off as it fills). A chunk that
/// completes no client event yields nothing and the next one is read. An
/// upstream failure (a cut, a timeout) ends the stream with that error; a
/// stream the translator finds malformed or truncated ends with its error
/// ([`TranslateError::into_error`](crate::translate::TranslateError::into_error)),
/// tagged with the provider, for `NormalizeErrors` to close in the client's
/// family.
#[pin_project]
pub(crate) struct TranslatedBody {
    #[pin]
    inner: UpstreamBody,
    translator: StreamTranslator,
    out: BytesMut,
    provider: Arc<str>,
    /// An error to end with once the output written before it has gone.
    pending: Option<Error>,
    done: bool,
}

impl TranslatedBody {
    pub(crate) fn new(
        inner: UpstreamBody,
        translator: StreamTranslator,
        provider: Arc<str>,
    ) -> Self {
        TranslatedBody {
            inner,
            translator,
            out: BytesMut::new(),
            provider,
            pending: None,
            done: false,
        }
    }
}

impl HttpBody for TranslatedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let mut this = self.project();
        loop {
            if let Some(e) = this.pending.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            let step = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.translator.feed(&data, this.out),
                    Err(_) => continue,
                },
                Some(Err(e)) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    *this.done = true;
                    this.translator.finish(this.out)
                }
            };
            if let Err(e) = step {
                *this.done = true;
                let e = e.into_error().with_provider(this.provider.clone());
                // What the translator wrote before the fault goes first;
                // the error follows on the next poll.
                if !this.out.is_empty() {
                    *this.pending = Some(e);
                    return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
                }
                return Poll::Ready(Some(Err(e)));
            }
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}
