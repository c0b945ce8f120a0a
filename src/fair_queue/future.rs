//! The future of [`FairQueue`](super::FairQueue), and the response body that
//! holds the slot until the answer ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project::{pin_project, pinned_drop};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower::util::Oneshot;

use super::scheduler::{Permit, Scheduler, Ticket};
use crate::LlmRequest;
use crate::body::Body;
use crate::error::{Error, Reason};
use crate::metrics::record;

/// The future of [`FairQueue`](super::FairQueue): waits for a slot (bounded
/// by the configured wait), then calls the inner service; the response body
/// holds the slot.
#[pin_project(PinnedDrop)]
pub struct ResponseFuture<S, I>
where
    S: Service<LlmRequest<I>>,
{
    #[pin]
    state: State<S, I>,
    sched: Arc<Scheduler>,
}

#[allow(clippy::large_enum_variant)] // inline in the request's future, never moved
#[pin_project(project = StateProj)]
enum State<S, I>
where
    S: Service<LlmRequest<I>>,
{
    Refused {
        error: Option<Error>,
    },
    Waiting {
        rx: oneshot::Receiver<()>,
        #[pin]
        deadline: Sleep,
        since: Instant,
        ticket: Ticket,
        call: Option<(S, LlmRequest<I>)>,
    },
    Calling {
        #[pin]
        fut: Oneshot<S, LlmRequest<I>>,
        permit: Option<Permit>,
    },
}

impl<S, I> ResponseFuture<S, I>
where
    S: Service<LlmRequest<I>>,
{
    pub(super) fn refused(sched: Arc<Scheduler>, error: Error) -> Self {
        ResponseFuture {
            state: State::Refused { error: Some(error) },
            sched,
        }
    }

    pub(super) fn calling(
        sched: Arc<Scheduler>,
        inner: S,
        req: LlmRequest<I>,
        permit: Permit,
    ) -> Self {
        ResponseFuture {
            state: State::Calling {
                fut: Oneshot::new(inner, req),
                permit: Some(permit),
            },
            sched,
        }
    }

    pub(super) fn waiting(
        sched: Arc<Scheduler>,
        inner: S,
        req: LlmRequest<I>,
        ticket: Ticket,
        rx: oneshot::Receiver<()>,
    ) -> Self {
        let since = Instant::now();
        let deadline = tokio::time::sleep_until(since + sched.settings.max_wait);
        record::queue_depth(&ticket.tenant, 1.0);
        ResponseFuture {
            state: State::Waiting {
                rx,
                deadline,
                since,
                ticket,
                call: Some((inner, req)),
            },
            sched,
        }
    }
}

impl<S, I> Future for ResponseFuture<S, I>
where
    S: Service<LlmRequest<I>, Response = Response<Body>, Error = Error>,
{
    type Output = Result<Response<Body>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
                StateProj::Waiting {
                    rx,
                    deadline,
                    since,
                    ticket,
                    call,
                } => {
                    let outcome = match Pin::new(rx).poll(cx) {
                        Poll::Ready(Ok(())) => Ok(()),
                        // The scheduler never drops a waiter it did not grant.
                        Poll::Ready(Err(_)) => Err(Error::new(
                            Reason::Internal,
                            "The fair queue lost a waiting request.",
                        )),
                        Poll::Pending => {
                            ready!(deadline.poll(cx));
                            if this.sched.leave(ticket) {
                                Err(timeout(this.sched, ticket, since.elapsed()))
                            } else {
                                // Granted at the deadline: the slot is ours.
                                Ok(())
                            }
                        }
                    };
                    let waited = since.elapsed();
                    record::queue_depth(&ticket.tenant, -1.0);
                    record::queue_wait(&ticket.tenant, waited);
                    tracing::Span::current().record("queue_wait_ms", waited.as_millis() as u64);
                    let next = match outcome {
                        Ok(()) => {
                            tracing::debug!(
                                tenant = %ticket.tenant,
                                group = %ticket.group,
                                wait_ms = waited.as_millis() as u64,
                                "fair queue: slot granted"
                            );
                            let permit = this.sched.permit(ticket);
                            let (inner, req) = call.take().expect("polled after completion");
                            State::Calling {
                                fut: Oneshot::new(inner, req),
                                permit: Some(permit),
                            }
                        }
                        Err(e) => State::Refused { error: Some(e) },
                    };
                    this.state.set(next);
                }
                StateProj::Calling { fut, permit } => {
                    let res = ready!(fut.poll(cx));
                    let permit = permit.take().expect("polled after completion");
                    return Poll::Ready(res.map(|res| {
                        res.map(|body| {
                            if body.is_end_stream() {
                                drop(permit);
                                body
                            } else {
                                Body::new(HeldBody {
                                    inner: body,
                                    permit: Some(permit),
                                })
                            }
                        })
                    }));
                }
            }
        }
    }
}

fn timeout(sched: &Scheduler, ticket: &Ticket, waited: std::time::Duration) -> Error {
    tracing::info!(
        tenant = %ticket.tenant,
        group = %ticket.group,
        wait_ms = waited.as_millis() as u64,
        reason = "queue_timeout",
        "fair queue: gave up waiting for a slot"
    );
    record::queue_rejected(&ticket.tenant, "queue_timeout");
    let max = sched.settings.max_wait;
    Error::new(
        Reason::QueueTimeout,
        format!(
            "`{}` is busy: the request waited {} ms for a free slot, the most this gateway allows; retry later.",
            ticket.group,
            max.as_millis()
        ),
    )
    .with_retry_after(sched.retry_after())
    .with_meta("max_wait_ms", max.as_millis() as u64)
}

#[pinned_drop]
impl<S, I> PinnedDrop for ResponseFuture<S, I>
where
    S: Service<LlmRequest<I>>,
{
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        if let StateProj::Waiting { ticket, .. } = this.state.project() {
            record::queue_depth(&ticket.tenant, -1.0);
            // Dropped while waiting (the client went away): give up the
            // place at once; if a slot was granted meanwhile, pass it on.
            if this.sched.leave(ticket) {
                tracing::debug!(
                    tenant = %ticket.tenant,
                    group = %ticket.group,
                    "fair queue: a waiting request was dropped"
                );
            } else {
                this.sched.release(&ticket.group);
            }
        }
    }
}

/// A response body that holds its request's slot until its last frame, an
/// error, or its drop.
struct HeldBody {
    inner: Body,
    permit: Option<Permit>,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if matches!(frame, None | Some(Err(_))) || this.inner.is_end_stream() {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
