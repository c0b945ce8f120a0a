//! `Overhead`: how much time the gateway itself added to a request.
//!
//! Measures from the call until the response headers are ready, subtracts
//! the time the provider spent waiting on the upstream that served (the
//! [`UpstreamTime`] response extension: until the upstream's headers for a
//! stream, until its whole answer otherwise), and reports the rest in the
//! `x-tollgate-overhead-ms` response header (milliseconds, three decimals),
//! like LiteLLM's `x-litellm-overhead-duration-ms`. Failed attempts the
//! router retried count as overhead: the client waited for them. An answer
//! no upstream served (a refusal, an error) reports its whole time.
//!
//! Stack it outermost, so the figure covers every layer:
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tollgate::{Body, UpstreamTime, overhead::{OVERHEAD_HEADER, OverheadLayer}};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(OverheadLayer::new())
//!     .service(service_fn(|_req: Request<Body>| async {
//!         let mut res = Response::new(Body::empty());
//!         res.extensions_mut().insert(UpstreamTime(Duration::ZERO));
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//! let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
//! assert!(res.headers().contains_key(OVERHEAD_HEADER));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::UpstreamTime;
use crate::metrics::{Histogram, record};

/// The response header with the gateway's own time, in milliseconds.
pub const OVERHEAD_HEADER: &str = "x-tollgate-overhead-ms";

/// Applies [`Overhead`].
///
/// Each answer's overhead is also recorded in the
/// [`tollgate_overhead_seconds`](crate::metrics::OVERHEAD) histogram, whose
/// handle is registered with the recorder current when the layer is built.
#[derive(Clone, Debug)]
pub struct OverheadLayer {
    histogram: Histogram,
}

impl Default for OverheadLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl OverheadLayer {
    /// The layer.
    pub fn new() -> Self {
        OverheadLayer {
            histogram: record::overhead(),
        }
    }
}

impl<S> Layer<S> for OverheadLayer {
    type Service = Overhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Overhead {
            inner,
            histogram: self.histogram.clone(),
        }
    }
}

/// Adds `x-tollgate-overhead-ms` to every response of `S`.
#[derive(Clone, Debug)]
pub struct Overhead<S> {
    inner: S,
    histogram: Histogram,
}

impl<S, B, RB> Service<Request<B>> for Overhead<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            fut: self.inner.call(req),
            start: Instant::now(),
            histogram: self.histogram.clone(),
        }
    }
}

/// The future of [`Overhead`].
#[pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    fut: F,
    start: Instant,
    histogram: Histogram,
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.fut.poll(cx))?;
        let total = this.start.elapsed();
        let upstream = res
            .extensions()
            .get::<UpstreamTime>()
            .map(|u| u.0)
            .unwrap_or_default();
        let own = total.saturating_sub(upstream);
        this.histogram.record(own.as_secs_f64());
        static NAME: HeaderName = HeaderName::from_static(OVERHEAD_HEADER);
        res.headers_mut().insert(&NAME, milliseconds(own));
        tracing::debug!(
            overhead_us = own.as_micros() as u64,
            upstream_us = upstream.as_micros() as u64,
            "gateway overhead"
        );
        Poll::Ready(Ok(res))
    }
}

/// `d` in milliseconds with three decimals (`1.234`), by integers: float
/// formatting cost more than the rest of this layer.
fn milliseconds(d: std::time::Duration) -> HeaderValue {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    let mut n = itoa::Buffer::new();
    let whole = n.format(us / 1000).as_bytes();
    let mut out = [0u8; 24];
    out[..whole.len()].copy_from_slice(whole);
    let dot = whole.len();
    let frac = us % 1000;
    out[dot] = b'.';
    out[dot + 1] = b'0' + (frac / 100) as u8;
    out[dot + 2] = b'0' + (frac / 10 % 10) as u8;
    out[dot + 3] = b'0' + (frac % 10) as u8;
    HeaderValue::from_bytes(&out[..dot + 4]).unwrap_or(HeaderValue::from_static("0.000"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::{ServiceExt, service_fn};

    fn header(res: &Response<Body>) -> f64 {
        res.headers()[OVERHEAD_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn subtracts_the_upstreams_time() {
        let svc = OverheadLayer::new().layer(service_fn(|_req: Request<Body>| async {
            // 20 ms of the gateway's own, then 30 ms waiting on the upstream.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut res = Response::new(Body::empty());
            res.extensions_mut()
                .insert(UpstreamTime(Duration::from_millis(30)));
            Ok::<_, Infallible>(res)
        }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(header(&res), 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn unserved_answers_report_their_whole_time() {
        let svc = OverheadLayer::new().layer(service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_millis(7)).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(header(&res), 7.0);
    }

    #[test]
    fn milliseconds_with_three_decimals() {
        let ms = |us| milliseconds(Duration::from_micros(us));
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(5), "0.005");
        assert_eq!(ms(1_234), "1.234");
        assert_eq!(ms(20_000), "20.000");
        assert_eq!(ms(98_765_432), "98765.432");
        assert_eq!(milliseconds(Duration::MAX), "18446744073709551.615");
        // Nanoseconds are cut, not rounded.
        assert_eq!(milliseconds(Duration::from_nanos(1_999)), "0.001");
    }

    #[tokio::test(start_paused = true)]
    async fn never_negative() {
        let svc = OverheadLayer::new().layer(service_fn(|_req: Request<Body>| async {
            let mut res = Response::new(Body::empty());
            res.extensions_mut()
                .insert(UpstreamTime(Duration::from_secs(5)));
            Ok::<_, Infallible>(res)
        }));
        let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
        assert_eq!(header(&res), 0.0);
    }

    /// The histogram gets the same figure as the header, once per answer.
    #[cfg(feature = "metrics")]
    #[tokio::test(start_paused = true)]
    async fn records_the_overhead_histogram() {
        use crate::metrics::OVERHEAD;
        use crate::metrics::tests::Seen;
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _local = ::metrics::set_default_local_recorder(&recorder);
        let svc = OverheadLayer::new().layer(service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut res = Response::new(Body::empty());
            res.extensions_mut()
                .insert(UpstreamTime(Duration::from_millis(30)));
            Ok::<_, Infallible>(res)
        }));
        for _ in 0..3 {
            svc.clone()
                .oneshot(Request::new(Body::empty()))
                .await
                .unwrap();
        }
        let mut seen = Seen::default();
        assert_eq!(
            seen.update(&snapshotter).histogram(OVERHEAD, &[]),
            [0.02, 0.02, 0.02]
        );
    }
}
