//! The bounded background writer of spend records.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{SpendRecord, SpendStore};

/// At most one warning about dropped records this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// After a batch smaller than the most, the task waits this long before
/// taking the next: records gather into batches, and the response path's
/// `try_send` rarely has a sleeping task to wake (a cross-thread wake-up
/// costs more than the rest of a record).
const LINGER: Duration = Duration::from_millis(10);
/// The first wait before a failed batch is tried again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between two tries of a failed batch.
const RETRY_MAX: Duration = Duration::from_secs(2);

enum Msg {
    /// Boxed: a queue slot is a pointer, however large a record is.
    Record(Box<SpendRecord>),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    dropped: AtomicU64,
    failed: AtomicU64,
    written: AtomicU64,
    /// Records queued or being written (in a batch that may be retrying).
    pending: AtomicU64,
    /// Failed tries of batches that were then tried again.
    retries: AtomicU64,
    /// Milliseconds after `epoch` of the last warning (`u64::MAX`: none yet).
    last_warn_ms: AtomicU64,
    epoch: Instant,
    queue: usize,
}

/// Hands spend records to a background task that stores them in batches.
///
/// [`record`](Self::record) never waits: it puts the record in a bounded
/// queue, or drops and counts it when the queue is full. The task takes
/// whatever is queued, up to `batch` records, and stores it as one
/// [`SpendStore::write_once`] (one transaction); after a smaller batch it waits
/// 10 ms for more (a record is stored within about that much of being
/// queued, when the store keeps up). A batch the store fails to write is
/// kept and tried again (backoff from 50 ms doubling to 2 s, each try with
/// the same token so it is stored once) until the store takes it; in the
/// meantime new records wait in the queue, so at most `queue + batch`
/// records are held in memory, and only records that find the queue full
/// are dropped (counted, as above). A batch refused for good
/// ([`SpendError::is_permanent`](super::SpendError::is_permanent)) is counted in
/// [`failed`](Self::failed) and logged. Needs a tokio runtime with time. Clones share the queue; the
/// task ends when the last clone is dropped, after writing what is queued.
#[derive(Clone)]
pub struct SpendWriter {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl fmt::Debug for SpendWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpendWriter")
            .field("queue", &self.shared.queue)
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl SpendWriter {
    /// Starts the writer's task on the current tokio runtime: a queue of
    /// `queue` records (at least 1), batches of at most `batch` (at least 1).
    pub fn spawn(store: impl SpendStore, queue: usize, batch: usize) -> Self {
        let queue = queue.max(1);
        let batch = batch.max(1);
        let (tx, rx) = mpsc::channel(queue);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            last_warn_ms: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            queue,
        });
        tokio::spawn(run(store, rx, batch, shared.clone()));
        SpendWriter { tx, shared }
    }

    /// Queues `record` for the store, without ever waiting: when the queue
    /// is full the record is dropped, counted, and reported (a `warn` line
    /// at most every 10 s, and the `tollgate_spend_records_dropped_total` metric).
    pub fn record(&self, record: SpendRecord) {
        self.record_boxed(Box::new(record));
    }

    pub(crate) fn record_boxed(&self, record: Box<SpendRecord>) {
        // Counted first: the task may write the record before `try_send` returns.
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Msg::Record(record)).is_ok() {
            return;
        }
        self.shared.pending.fetch_sub(1, Ordering::Relaxed);
        let total = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::record::spend_records_dropped();
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        let last = self.shared.last_warn_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .shared
                .last_warn_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = total,
                queue = self.shared.queue,
                "spend records dropped: the spend writer's queue is full (the store is slower than the traffic); \
                 raise `[spend].queue` or check the store"
            );
        }
    }

    /// Waits until every record queued before this call is stored (or
    /// refused for good by the store). Waits for room in the queue if it is
    /// full. While the store is away this waits until it is back: see
    /// [`flush_within`](Self::flush_within) for a bounded wait.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// [`flush`](Self::flush), waiting at most `limit` (for a shutdown that
    /// must end while the store is away). Returns whether everything was
    /// stored; if not, an `error` line tells how many records are left
    /// unwritten (they are lost if the process then exits).
    pub async fn flush_within(&self, limit: Duration) -> bool {
        if tokio::time::timeout(limit, self.flush()).await.is_ok() {
            return true;
        }
        tracing::error!(
            unwritten = self.pending(),
            waited_ms = limit.as_millis() as u64,
            "spend records not written: the spend store did not take them in time"
        );
        false
    }

    /// Records queued or being written (a batch the store failed is kept
    /// and tried again; these are not yet stored).
    pub fn pending(&self) -> u64 {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// Failed tries of batches that were kept and tried again.
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    /// Records dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records the store accepted.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records lost because the store refused their batch for good (a
    /// [permanent](super::SpendError::is_permanent) error). A store that is
    /// away loses nothing: its batch is kept and tried again.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }
}

async fn run(store: impl SpendStore, mut rx: mpsc::Receiver<Msg>, max: usize, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(max);
    let mut acks = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < max {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            write(&store, &batch, &shared).await;
            batch.clear();
        }
        let acked = !acks.is_empty();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if !acked && rx.len() < max {
            tokio::time::sleep(LINGER).await;
        }
    }
}

/// Writes `batch`, trying again with capped backoff (50 ms doubling to
/// 2 s) for as long as the store fails and may recover; meanwhile new
/// records wait in the bounded queue (and are dropped, counted, once it is
/// full). Every try carries the same token, so a store that committed a try
/// whose answer was lost skips the batch instead of storing it twice.
async fn write(store: &impl SpendStore, batch: &[SpendRecord], shared: &Shared) {
    let n = batch.len() as u64;
    let token = fastrand::u128(..);
    let mut delay = RETRY_FIRST;
    let mut tries = 0u64;
    let mut last_warn: Option<Instant> = None;
    loop {
        match store.write_once(batch, token).await {
            Ok(()) => {
                shared.written.fetch_add(n, Ordering::Relaxed);
                if tries > 0 {
                    tracing::info!(
                        records = n,
                        tries = tries + 1,
                        "spend store back: a kept batch of spend records is written"
                    );
                }
                break;
            }
            Err(e) if e.is_permanent() => {
                shared.failed.fetch_add(n, Ordering::Relaxed);
                crate::metrics::record::spend_write_errors(n);
                tracing::error!(records = n, error = %e, "spend records lost: the spend store refused a batch");
                break;
            }
            Err(e) => {
                tries += 1;
                shared.retries.fetch_add(1, Ordering::Relaxed);
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    last_warn = Some(Instant::now());
                    tracing::warn!(
                        records = n,
                        tries,
                        queued = shared.pending.load(Ordering::Relaxed).saturating_sub(n),
                        error = %e,
                        "spend store unavailable: the batch is kept and tried again; new records wait in the queue"
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
    shared.pending.fetch_sub(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::spend::{
        MemorySpendStore, SpendError, SpendFuture, SpendPage, SpendQuery, SpendTotals,
    };
    use jiff::Timestamp;
    use tokio::sync::{Notify, Semaphore};

    /// A store whose writes wait until the test lets them through.
    #[derive(Clone)]
    struct Blocking {
        inner: MemorySpendStore,
        gate: Arc<Semaphore>,
        started: Arc<Notify>,
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl SpendStore for Blocking {
        fn write(&self, batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
            Box::pin(async move {
                self.started.notify_one();
                self.gate.acquire().await.unwrap().forget();
                self.batches.lock().unwrap().push(batch.len());
                self.inner.write(batch).await
            })
        }
        fn query(&self, q: SpendQuery) -> SpendFuture<'_, SpendPage> {
            self.inner.query(q)
        }
        fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
            self.inner.totals(since)
        }
    }

    fn rec(i: u32) -> SpendRecord {
        SpendRecord::new(format!("r{i}"), "m", Timestamp::UNIX_EPOCH)
    }

    /// Log lines written on this thread, for as long as the guard lives.
    fn capture() -> (
        Arc<std::sync::Mutex<Vec<u8>>>,
        tracing::subscriber::DefaultGuard,
    ) {
        #[derive(Clone)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = Buf(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (buf, tracing::subscriber::set_default(subscriber))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let (logs, _guard) = capture();
        let store = Blocking {
            inner: MemorySpendStore::new(),
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
            batches: Arc::default(),
        };
        let writer = SpendWriter::spawn(store.clone(), 4, 2);
        writer.record(rec(0));
        // The task takes record 0 and waits in the store.
        store.started.notified().await;
        // 100 more while the store is stuck: 4 fit in the queue, 96 are
        // dropped; none of these calls waits (they are not even async).
        for i in 1..=100 {
            writer.record(rec(i));
        }
        assert_eq!(writer.dropped(), 96);
        assert_eq!(writer.written(), 0);
        // One clear warning, not 96.
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert_eq!(text.matches("spend records dropped").count(), 1, "{text}");
        assert!(
            text.contains("WARN") && text.contains("dropped_total=1"),
            "{text}"
        );
        store.gate.add_permits(1_000);
        writer.flush().await;
        assert_eq!(writer.written(), 5);
        assert_eq!(store.inner.len(), 5);
        // Batches of at most 2: [r0], then the queued four in two.
        assert_eq!(*store.batches.lock().unwrap(), vec![1, 2, 2]);
        let ids: Vec<String> = store
            .inner
            .all()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
        // Room again: nothing more is dropped.
        writer.record(rec(200));
        writer.flush().await;
        assert_eq!((writer.written(), writer.dropped()), (6, 96));
    }

    struct Failing;

    impl SpendStore for Failing {
        fn write(&self, _batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
            Box::pin(async { Err(SpendError::permanent("record refused")) })
        }
        fn query(&self, _q: SpendQuery) -> SpendFuture<'_, SpendPage> {
            Box::pin(async { Ok(SpendPage::default()) })
        }
        fn totals(&self, _since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
            Box::pin(async { Ok(SpendTotals::default()) })
        }
    }

    /// A store that fails its first `fails` writes (committing none of
    /// them, or, with `commit_then_fail`, committing them and losing the
    /// answer), then works; it skips a token it already committed.
    #[derive(Clone, Default)]
    struct Flaky {
        inner: MemorySpendStore,
        fails: Arc<AtomicU64>,
        commit_then_fail: bool,
        tries: Arc<AtomicU64>,
        tokens: Arc<std::sync::Mutex<std::collections::HashSet<u128>>>,
    }

    impl SpendStore for Flaky {
        fn write(&self, _batch: Vec<SpendRecord>) -> SpendFuture<'_, ()> {
            unreachable!("the writer writes with a token")
        }
        fn write_once<'a>(&'a self, batch: &'a [SpendRecord], token: u128) -> SpendFuture<'a, ()> {
            Box::pin(async move {
                self.tries.fetch_add(1, Ordering::SeqCst);
                let fail = self
                    .fails
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail && !self.commit_then_fail {
                    return Err(SpendError::new("connection refused"));
                }
                if self.tokens.lock().unwrap().insert(token) {
                    self.inner.write(batch.to_vec()).await?;
                }
                if fail {
                    return Err(SpendError::new("connection reset after commit"));
                }
                Ok(())
            })
        }
        fn query(&self, q: SpendQuery) -> SpendFuture<'_, SpendPage> {
            self.inner.query(q)
        }
        fn totals(&self, since: Option<Timestamp>) -> SpendFuture<'_, SpendTotals> {
            self.inner.totals(since)
        }
    }

    async fn kept_and_retried(commit_then_fail: bool) {
        let (logs, _guard) = capture();
        let store = Flaky {
            fails: Arc::new(AtomicU64::new(7)),
            commit_then_fail,
            ..Flaky::default()
        };
        let writer = SpendWriter::spawn(store.clone(), 1_000, 8);
        for i in 0..50 {
            writer.record(rec(i));
        }
        // Paused time: the backoff sleeps pass at once, in order.
        writer.flush().await;
        assert_eq!(
            (writer.written(), writer.failed(), writer.dropped()),
            (50, 0, 0)
        );
        assert_eq!((writer.retries(), writer.pending()), (7, 0));
        let ids: Vec<String> = store
            .inner
            .all()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        let want: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        assert_eq!(ids, want, "every record exactly once, in order");
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(text.contains("spend store unavailable"), "{text}");
        assert!(text.contains("spend store back"), "{text}");
        assert!(!text.contains("spend records lost"), "{text}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_failed_batch_is_kept_and_written_once_when_the_store_returns() {
        kept_and_retried(false).await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_batch_committed_but_unanswered_is_not_written_twice() {
        kept_and_retried(true).await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn while_the_store_is_away_the_queue_bound_holds_and_shutdown_is_bounded() {
        let (logs, _guard) = capture();
        let store = Flaky {
            fails: Arc::new(AtomicU64::new(u64::MAX)),
            ..Flaky::default()
        };
        let writer = SpendWriter::spawn(store.clone(), 10, 4);
        writer.record(rec(0));
        // The task takes record 0 and keeps failing with it.
        while store.tries.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for i in 1..=100 {
            writer.record(rec(i));
        }
        // 1 being retried + 10 queued; 90 dropped, counted, one warn line.
        assert_eq!((writer.pending(), writer.dropped()), (11, 90));
        assert!(!writer.flush_within(Duration::from_secs(30)).await);
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert_eq!(text.matches("spend records dropped").count(), 1, "{text}");
        assert!(
            text.contains("spend records not written") && text.contains("unwritten=11"),
            "{text}"
        );
        assert_eq!((writer.written(), writer.failed()), (0, 0));
        // The store comes back: everything held is written, once, in order.
        store.fails.store(0, Ordering::SeqCst);
        assert!(writer.flush_within(Duration::from_secs(30)).await);
        assert_eq!((writer.written(), writer.pending()), (11, 0));
        let ids: Vec<String> = store
            .inner
            .all()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        let want: Vec<String> = (0..=10).map(|i| format!("r{i}")).collect();
        assert_eq!(ids, want);
    }

    #[tokio::test]
    async fn a_store_refusing_for_good_is_counted_as_lost_and_the_writer_goes_on() {
        let writer = SpendWriter::spawn(Failing, 16, 8);
        for i in 0..3 {
            writer.record(rec(i));
        }
        writer.flush().await;
        assert_eq!(
            (writer.failed(), writer.written(), writer.dropped()),
            (3, 0, 0)
        );
        writer.record(rec(9));
        writer.flush().await;
        assert_eq!(writer.failed(), 4);
    }
}
