//! Unit tests of the fair queue, in paused time: they assert on order,
//! counts and the paused clock, never on wall-clock timing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::body::Body;
use crate::error::{Error, Reason};
use crate::read_request::Parsed;

/// The tests' own identity: a tenant name and weight.
#[derive(Clone, Copy, Debug)]
struct Who {
    name: &'static str,
    weight: u32,
}

const A: Who = Who {
    name: "a",
    weight: 1,
};
const B: Who = Who {
    name: "b",
    weight: 1,
};

fn tenant_of(req: &LlmRequest<Who>) -> Tenant {
    let who = req.body().identity();
    Tenant::new(who.name, who.weight)
}

fn req(who: Who) -> LlmRequest<Who> {
    let parsed = Parsed::parse(
        "/v1/chat/completions",
        Bytes::from_static(br#"{"model":"g"}"#),
    )
    .unwrap()
    .with_identity(who);
    Request::post("/v1/chat/completions").body(parsed).unwrap()
}

type Log = Arc<Mutex<Vec<&'static str>>>;

/// An inner service that logs who it serves, in order, and holds each
/// request for `hold` before answering; it tracks the most in flight at once.
fn recorder(
    log: Log,
    hold: Duration,
    peak: Arc<AtomicUsize>,
) -> impl Service<LlmRequest<Who>, Response = Response<Body>, Error = Error, Future: Send> + Clone {
    let now = Arc::new(AtomicUsize::new(0));
    service_fn(move |req: LlmRequest<Who>| {
        log.lock().unwrap().push(req.body().identity().name);
        let now = now.clone();
        let peak = peak.clone();
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Error>(Response::new(Body::full("done")))
        }
    })
}

fn layer(settings: QueueSettings) -> FairQueueLayer<fn(&LlmRequest<Who>) -> Tenant> {
    FairQueueLayer::new(settings, tenant_of as fn(&LlmRequest<Who>) -> Tenant)
}

/// Calls `svc` now (so the request is admitted in this order) and drives
/// the answer, body included, in a task.
async fn submit<S>(svc: &mut S, who: Who) -> JoinHandle<Result<Bytes, Error>>
where
    S: Service<LlmRequest<Who>, Response = Response<Body>, Error = Error>,
    S::Future: Send + 'static,
{
    svc.ready().await.unwrap();
    let fut = svc.call(req(who));
    tokio::spawn(async move {
        let res = fut.await?;
        Ok(res.into_body().collect().await?.to_bytes())
    })
}

async fn join_all(tasks: Vec<JoinHandle<Result<Bytes, Error>>>) -> Vec<Result<Bytes, Error>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_burst_delays_a_latecomer_by_its_share_only() {
    let log = Log::default();
    let hold = Duration::from_millis(10);
    let mut svc = layer(
        QueueSettings::new(4)
            .max_queue_per_tenant(10_000)
            .max_wait(Duration::from_secs(3600)),
    )
    .layer(recorder(log.clone(), hold, Arc::default()));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        tasks.push(submit(&mut svc, A).await);
    }
    for _ in 0..10 {
        tasks.push(submit(&mut svc, B).await);
    }
    let stats = svc.stats();
    assert_eq!(stats[0].in_flight, 4);
    assert_eq!(stats[0].waiting, vec![("a".into(), 996), ("b".into(), 10)]);

    let b_done = {
        let b_tasks: Vec<_> = tasks.split_off(1000);
        let results = join_all(b_tasks).await;
        assert!(results.iter().all(|r| r.is_ok()));
        start.elapsed()
    };
    let order = log.lock().unwrap().clone();
    let b_positions: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(_, who)| **who == "b")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(b_positions.len(), 10);
    // The bound: A's first 4 hold the 4 slots when B arrives. From then on
    // B (weight 1 of 2) is owed every other slot, so its k-th request starts
    // within the first 2k slots granted (ties go to the older arrival, A):
    // all 10 within the next 20 slots, i.e. among the first 24 starts, and
    // within 5 rounds of 10 ms. First-come-first-served would start them
    // after A's 1,000 (250 rounds).
    assert!(
        *b_positions.last().unwrap() < 4 + 20,
        "B started at {b_positions:?}"
    );
    for (k, pos) in b_positions.iter().enumerate() {
        assert!(*pos < 4 + 2 * (k + 1), "B's request {k} started at {pos}");
    }
    assert!(b_done <= 6 * hold, "B finished after {b_done:?}");

    let results = join_all(tasks).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(log.lock().unwrap().len(), 1010);
    assert!(svc.stats().is_empty(), "idle groups are forgotten");
}

#[tokio::test(start_paused = true)]
async fn weights_three_to_one_share_slots_three_to_one() {
    let log = Log::default();
    let mut svc = layer(
        QueueSettings::new(4)
            .max_queue_per_tenant(10_000)
            .max_wait(Duration::from_secs(3600)),
    )
    .layer(recorder(
        log.clone(),
        Duration::from_millis(10),
        Arc::default(),
    ));
    let heavy = Who {
        name: "a",
        weight: 3,
    };
    let light = Who {
        name: "b",
        weight: 1,
    };
    let mut tasks = Vec::new();
    for _ in 0..400 {
        tasks.push(submit(&mut svc, heavy).await);
        tasks.push(submit(&mut svc, light).await);
    }
    join_all(tasks).await;
    let order = log.lock().unwrap().clone();
    // Both are backlogged for the first 400 starts (A, owed 3/4, would run
    // out after ~533). Count the service each got in that window.
    let window = &order[..400];
    let a = window.iter().filter(|w| **w == "a").count() as f64;
    let b = window.iter().filter(|w| **w == "b").count() as f64;
    let ratio = a / b;
    assert!(
        (ratio - 3.0).abs() <= 3.0 * 0.05,
        "served {a} : {b} = {ratio:.3}, not 3:1 within 5 %"
    );
    // In every stretch of 40 starts, too: no long runs of one tenant.
    for chunk in window.chunks(40) {
        let a = chunk.iter().filter(|w| **w == "a").count();
        assert!((28..=32).contains(&a), "{a} of 40 for A");
    }
}

#[tokio::test(start_paused = true)]
async fn a_lone_tenant_uses_all_the_capacity() {
    let log = Log::default();
    let peak = Arc::new(AtomicUsize::new(0));
    let hold = Duration::from_millis(10);
    let mut svc = layer(QueueSettings::new(4)).layer(recorder(log, hold, peak.clone()));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(
            submit(
                &mut svc,
                Who {
                    name: "solo",
                    weight: 1,
                },
            )
            .await,
        );
    }
    assert!(join_all(tasks).await.iter().all(|r| r.is_ok()));
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    // 20 requests, 4 at a time, 10 ms each: 5 rounds.
    assert_eq!(start.elapsed(), 5 * hold);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_429_and_other_tenants_still_queue() {
    let mut svc = layer(QueueSettings::new(1).max_queue_per_tenant(2)).layer(recorder(
        Log::default(),
        Duration::from_secs(1),
        Arc::default(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(submit(&mut svc, A).await);
    }
    let e = submit(&mut svc, A).await.await.unwrap().unwrap_err();
    assert_eq!(e.reason(), Reason::QueueFull);
    assert_eq!(e.status(), 429);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(e.metadata()["queue_limit"], 2);
    assert!(e.message().contains("`g`"), "{}", e.message());
    tasks.push(submit(&mut svc, B).await);
    assert_eq!(
        svc.stats()[0].waiting,
        vec![("a".into(), 2), ("b".into(), 1)]
    );
    assert!(join_all(tasks).await.iter().all(|r| r.is_ok()));
}

#[tokio::test(start_paused = true)]
async fn waiting_past_the_limit_is_503_queue_timeout() {
    let mut svc = layer(QueueSettings::new(1).max_wait(Duration::from_millis(100))).layer(
        recorder(Log::default(), Duration::from_secs(1), Arc::default()),
    );
    let start = tokio::time::Instant::now();
    let holder = submit(&mut svc, A).await;
    let waiter = submit(&mut svc, B).await;
    let e = waiter.await.unwrap().unwrap_err();
    assert_eq!(e.reason(), Reason::QueueTimeout);
    assert_eq!(e.status(), 503);
    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(e.metadata()["max_wait_ms"], 100);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(svc.stats()[0].waiting, vec![], "the timed-out request left");
    assert!(holder.await.unwrap().is_ok());
    assert!(svc.stats().is_empty(), "and no slot leaked");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_request_frees_its_place_at_once() {
    let log = Log::default();
    let mut svc = layer(QueueSettings::new(1).max_queue_per_tenant(1)).layer(recorder(
        log.clone(),
        Duration::from_millis(10),
        Arc::default(),
    ));
    let holder = submit(&mut svc, A).await;
    svc.ready().await.unwrap();
    let waiting = svc.call(req(B));
    assert_eq!(svc.stats()[0].waiting, vec![("b".into(), 1)]);
    let full = submit(&mut svc, B).await.await.unwrap().unwrap_err();
    assert_eq!(full.reason(), Reason::QueueFull);
    drop(waiting);
    assert_eq!(svc.stats()[0].waiting, vec![], "its place is free at once");
    let again = submit(&mut svc, B).await;
    assert!(holder.await.unwrap().is_ok());
    assert!(again.await.unwrap().is_ok());
    assert_eq!(
        *log.lock().unwrap(),
        ["a", "b"],
        "the dropped one never ran"
    );
    assert!(svc.stats().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_after_its_grant_passes_the_slot_on() {
    let log = Log::default();
    let mut svc = layer(QueueSettings::new(1)).layer(recorder(
        log.clone(),
        Duration::from_millis(10),
        Arc::default(),
    ));
    let holder = submit(&mut svc, A).await;
    svc.ready().await.unwrap();
    let granted_but_never_polled = svc.call(req(B));
    let third = submit(&mut svc, A).await;
    assert!(holder.await.unwrap().is_ok());
    // B's request got the slot when A's ended; it was never polled.
    let s = svc.stats();
    assert_eq!(
        (s[0].in_flight, s[0].waiting.clone()),
        (1, vec![("a".into(), 1)])
    );
    drop(granted_but_never_polled);
    assert!(third.await.unwrap().is_ok());
    assert_eq!(*log.lock().unwrap(), ["a", "a"]);
    assert!(svc.stats().is_empty());
}

/// An inner service answering with a stream the test feeds through the
/// sender it gets for each request.
fn streamer(
    senders: mpsc::UnboundedSender<mpsc::Sender<Bytes>>,
) -> impl Service<LlmRequest<Who>, Response = Response<Body>, Error = Error, Future: Send> + Clone {
    service_fn(move |_req: LlmRequest<Who>| {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        senders.send(tx).unwrap();
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Error>(Frame::data(chunk)), rx))
        });
        async move { Ok::<_, Error>(Response::new(Body::new(StreamBody::new(frames)))) }
    })
}

#[tokio::test(start_paused = true)]
async fn a_stream_holds_its_slot_until_its_last_byte() {
    let (senders_tx, mut senders) = mpsc::unbounded_channel();
    let mut svc = layer(QueueSettings::new(1)).layer(streamer(senders_tx));

    svc.ready().await.unwrap();
    let first = svc.call(req(A)).await.unwrap();
    let feed = senders.recv().await.unwrap();
    let mut body = first.into_body();
    // The headers are out; the slot is still held.
    let second = submit(&mut svc, B).await;
    tokio::task::yield_now().await;
    assert_eq!(svc.stats()[0].waiting, vec![("b".into(), 1)]);

    feed.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        svc.stats()[0].waiting,
        vec![("b".into(), 1)],
        "still streaming"
    );
    assert!(!second.is_finished());

    // The last byte: the stream ends, the slot goes to B.
    drop(feed);
    assert!(body.frame().await.is_none());
    let feed_b = senders.recv().await.unwrap();
    assert_eq!(svc.stats()[0].in_flight, 1);
    assert_eq!(svc.stats()[0].waiting, vec![]);
    feed_b.send(Bytes::from_static(b"b")).await.unwrap();
    drop(feed_b);
    assert_eq!(second.await.unwrap().unwrap(), "b");
    assert!(svc.stats().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_frees_its_slot() {
    let (senders_tx, mut senders) = mpsc::unbounded_channel();
    let mut svc = layer(QueueSettings::new(1)).layer(streamer(senders_tx));
    svc.ready().await.unwrap();
    let first = svc.call(req(A)).await.unwrap();
    let _feed = senders.recv().await.unwrap();
    let second = submit(&mut svc, B).await;
    tokio::task::yield_now().await;
    assert_eq!(svc.stats()[0].waiting, vec![("b".into(), 1)]);
    // The client goes away mid-stream.
    drop(first);
    let feed_b = senders.recv().await.unwrap();
    drop(feed_b);
    assert_eq!(second.await.unwrap().unwrap(), "");
    assert!(svc.stats().is_empty());
}

#[tokio::test(start_paused = true)]
async fn errors_and_empty_bodies_free_the_slot_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |_req: LlmRequest<Who>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n.is_multiple_of(2) {
                Err(Error::new(Reason::UpstreamError, "boom"))
            } else {
                Ok(Response::new(Body::empty()))
            }
        }
    });
    let svc = layer(QueueSettings::new(1)).layer(inner);
    for i in 0..6 {
        let res = svc.clone().oneshot(req(A)).await;
        assert_eq!(res.is_ok(), i % 2 == 1);
        assert!(svc.stats().is_empty(), "slot still held after call {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn groups_have_their_own_capacity() {
    let log = Log::default();
    let peak = Arc::new(AtomicUsize::new(0));
    let svc = layer(QueueSettings::new(3).group_capacity("g", 1)).layer(recorder(
        log,
        Duration::from_millis(10),
        peak.clone(),
    ));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let s = svc.clone();
        tasks.push(tokio::spawn(async move {
            let res = s.oneshot(req(A)).await?;
            Ok::<_, Error>(res.into_body().collect().await?.to_bytes())
        }));
    }
    assert!(join_all(tasks).await.iter().all(|r| r.is_ok()));
    assert_eq!(peak.load(Ordering::SeqCst), 1, "group `g` has capacity 1");
    assert_eq!(svc.stats(), vec![]);
    assert_eq!(QueueSettings::new(3).capacity_for("other"), 3);
}

#[tokio::test(start_paused = true)]
async fn many_tenants_leave_no_state_behind() {
    let mut svc = layer(QueueSettings::new(1)).layer(recorder(
        Log::default(),
        Duration::from_millis(1),
        Arc::default(),
    ));
    let names: Vec<&'static str> = (0..2000)
        .map(|i| &*Box::leak(format!("t{i}").into_boxed_str()))
        .collect();
    let mut tasks = Vec::new();
    for name in &names {
        tasks.push(submit(&mut svc, Who { name, weight: 1 }).await);
    }
    assert_eq!(svc.stats()[0].waiting.len(), 1999);
    assert!(join_all(tasks).await.iter().all(|r| r.is_ok()));
    assert!(svc.stats().is_empty());
    assert_eq!(svc.sched.tenants_tracked("g"), 0);
}

/// Queue depth and wait per tenant, and refusals by reason, through a local
/// recorder (paused time: the waits are exact).
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_track_depth_wait_and_refusals_per_tenant() {
    use crate::metrics::tests::Seen;
    use crate::metrics::*;
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut seen = Seen::default();
    let mut svc = layer(
        QueueSettings::new(1)
            .max_queue_per_tenant(2)
            .max_wait(Duration::from_millis(250)),
    )
    .layer(recorder_svc());
    let holder = submit(&mut svc, A).await; // runs at once: no wait recorded
    let b1 = submit(&mut svc, B).await;
    let b2 = submit(&mut svc, B).await;
    let full = submit(&mut svc, B).await.await.unwrap().unwrap_err();
    assert_eq!(full.reason(), Reason::QueueFull);
    seen.update(&snapshotter);
    assert_eq!(seen.gauge(QUEUE_DEPTH, &[(TENANT, "b")]), Some(2.0));
    assert_eq!(
        seen.gauge(QUEUE_DEPTH, &[(TENANT, "a")]),
        None,
        "a never waited"
    );
    // A holds the slot 200 ms; b1 then runs 200 ms; b2 times out at 250 ms.
    assert!(holder.await.unwrap().is_ok());
    assert!(b1.await.unwrap().is_ok());
    assert_eq!(
        b2.await.unwrap().unwrap_err().reason(),
        Reason::QueueTimeout
    );
    seen.update(&snapshotter);
    assert_eq!(seen.gauge(QUEUE_DEPTH, &[(TENANT, "b")]), Some(0.0));

    let rejected = |reason| seen.counter(QUEUE_REJECTED_TOTAL, &[(TENANT, "b"), (REASON, reason)]);
    assert_eq!(rejected("queue_full"), 1);
    assert_eq!(rejected("queue_timeout"), 1);
    let mut waits = seen.histogram(QUEUE_WAIT, &[(TENANT, "b")]);
    waits.sort_by(f64::total_cmp);
    assert_eq!(
        waits,
        [0.2, 0.25],
        "b1 waited for A's 200 ms, b2 its whole 250 ms"
    );
    assert!(seen.histogram(QUEUE_WAIT, &[(TENANT, "a")]).is_empty());
}

/// Holds each request 200 ms.
fn recorder_svc()
-> impl Service<LlmRequest<Who>, Response = Response<Body>, Error = Error, Future: Send> + Clone {
    recorder(Log::default(), Duration::from_millis(200), Arc::default())
}
