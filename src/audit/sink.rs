//! The audit writer: a bounded queue and two threads of its own that append events in
//! batches. They run off the async runtime, so hashing and database work never delay a
//! worker's requests, and with a backend's blocking appender they talk to the database
//! directly.
//!
//! Appending costs a few microseconds of CPU per event; the two threads are about where
//! that time comes from.
//!
//! - The *background* writer runs under `SCHED_IDLE`: it gets a core only when nothing
//!   else wants one, a worker that wakes takes the core back at once, and the scheduler
//!   counts a core running only idle-class work as free when it places a waking worker. At
//!   the loads a gateway is sized for, appending then fills idle time instead of delaying
//!   requests.
//! - A saturated machine has no idle time: the background writer stops getting a core and
//!   the queue fills. Past [`PRESSURE`] queued events the *pressure* writer, at normal
//!   priority, takes over at the background writer's next chunk boundary and appends
//!   until the queue is short again. Without it the workers would stall on a full queue
//!   until the background writer caught up, with the other cores idle meanwhile.
//!
//! Both share one [`Drain`] (the queue's receiving end, the events taken from it and the
//! appender) behind a mutex, so events are appended in the order they were queued by one
//! chain writer. Scheduling never loses an event: when the queue is full, requests wait
//! for room (backpressure), the workers go idle and a writer runs. The queue bound is also
//! what can be waiting in memory at any time.

use super::AuditEvent;
use crate::metrics::AuditMetrics;
use crate::storage::{StorageError, Store};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 16_384;
const BATCH: usize = 2048;
const LINGER: Duration = Duration::from_millis(20);
/// Events per transaction. Between transactions the background writer steps aside if the
/// pressure writer is waiting. In the idle class it is preempted at once whatever the chunk
/// size, so chunks are sized for cost: 512-event transactions cost about 5% less CPU per
/// event than 128-event ones (less of the WAL rewritten per commit) and delay a takeover by
/// about 2 ms at most.
const CHUNK: usize = 512;
/// Queued events above which the pressure writer takes over: a quarter of the queue, far
/// above what builds up between the background writer's turns at a load it keeps up with
/// (one linger's worth: about 500 events at 25k req/s).
const PRESSURE: usize = QUEUE / 4;
/// The pressure writer hands back once no more than this is queued.
const CALM: usize = CHUNK;

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
    pressure: Arc<Pressure>,
    failing: Arc<AtomicBool>,
}

/// Raised when the queue grows past [`PRESSURE`]; the pressure writer waits for it.
struct Pressure {
    raised: AtomicBool,
    stopping: AtomicBool,
    writer: OnceLock<Thread>,
}

impl Pressure {
    fn raise(&self) {
        if !self.raised.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }

    fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }
}

type AppendFn = Box<dyn FnMut(&[AuditEvent]) -> Result<(), StorageError> + Send>;

/// The receiving end of the queue and the appending state, used by whichever writer holds
/// the lock.
struct Drain {
    rx: mpsc::Receiver<AuditEvent>,
    append: AppendFn,
    metrics: AuditMetrics,
    /// Taken from the queue; `taken[done..]` are not appended yet.
    taken: Vec<AuditEvent>,
    done: usize,
    /// The queue is closed and everything that was in it appended.
    finished: bool,
    /// The last append failed: storage is not taking events.
    failing: Arc<AtomicBool>,
}

impl Drain {
    fn has_pending(&self) -> bool {
        self.done < self.taken.len()
    }

    /// Waits for events, lingering briefly so that a trickle of events shares one
    /// transaction instead of paying a commit each; false once the queue is closed and
    /// empty.
    fn take_waiting(&mut self) -> bool {
        self.taken.clear();
        self.done = 0;
        if self.rx.blocking_recv_many(&mut self.taken, BATCH) == 0 {
            self.finished = true;
            return false;
        }
        if self.taken.len() < BATCH {
            std::thread::sleep(LINGER);
            self.take_ready();
        }
        self.report_queued();
        true
    }

    /// Takes what is queued now, up to a batch, without waiting.
    fn take_ready(&mut self) {
        if !self.has_pending() {
            self.taken.clear();
            self.done = 0;
        }
        while self.taken.len() < BATCH {
            match self.rx.try_recv() {
                Ok(e) => self.taken.push(e),
                Err(_) => break,
            }
        }
    }

    /// Events taken but not appended, and those still in the queue.
    fn report_queued(&self) {
        let waiting = self.taken.len() - self.done + self.rx.len();
        self.metrics.queued.set(waiting as i64);
    }

    /// Appends the next chunk of taken events, retrying until storage takes it: events are
    /// delayed, not lost, while the database is briefly unavailable.
    fn append_chunk(&mut self) {
        let end = (self.done + CHUNK).min(self.taken.len());
        let chunk = &self.taken[self.done..end];
        let mut delay = Duration::from_millis(50);
        while let Err(e) = (self.append)(chunk) {
            self.failing.store(true, Ordering::Release);
            tracing::error!(error = %e, pending = chunk.len(), "audit append failed; retrying");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        self.failing.store(false, Ordering::Release);
        self.metrics.appended.inc_by(chunk.len() as u64);
        self.done = end;
        self.report_queued();
    }
}

fn lock(drain: &Mutex<Drain>) -> MutexGuard<'_, Drain> {
    // A writer that panicked left the drain as it was between two chunks; carry on with it.
    drain
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Appends whenever events are queued, one chunk per turn of the lock, stepping aside
/// while the pressure writer is raised. It alone waits on an empty queue, and it alone
/// sees the queue close: it returns once everything queued has been appended.
fn background_writer(drain: &Mutex<Drain>, pressure: &Pressure) {
    lower_priority();
    loop {
        {
            let mut d = lock(drain);
            if !d.has_pending() && !d.take_waiting() {
                return;
            }
            d.append_chunk();
        }
        // Outside the lock: a pressure writer blocked on it gets it now, and the
        // background writer waits until it is done.
        while pressure.is_raised() && !pressure.stopping.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::yield_now();
    }
}

/// Waits until the queue passes [`PRESSURE`], then appends at normal priority until no
/// more than [`CALM`] events are queued, and lowers the pressure again.
fn pressure_writer(drain: &Mutex<Drain>, pressure: &Pressure) {
    loop {
        while !pressure.is_raised() {
            if pressure.stopping.load(Ordering::Acquire) {
                return;
            }
            std::thread::park();
        }
        {
            // At full load the background writer may hold the lock while it has no core;
            // it gets one, finishes its chunk and lets go at the latest when the queue is
            // full and the workers wait.
            let mut d = lock(drain);
            d.metrics.takeovers.inc();
            while !d.finished {
                if !d.has_pending() {
                    if d.rx.len() <= CALM {
                        break;
                    }
                    d.take_ready();
                }
                d.append_chunk();
            }
        }
        pressure.raised.store(false, Ordering::Release);
    }
}

/// The writer threads; [`AuditSink::shutdown`] waits for them to drain the queue.
pub struct AuditTask {
    background: JoinHandle<()>,
    pressure: JoinHandle<()>,
    signal: Arc<Pressure>,
}

impl AuditSink {
    /// Starts the writers (call within the runtime: backends without a blocking appender
    /// are driven on it).
    pub fn start(
        store: Arc<dyn Store>,
        metrics: AuditMetrics,
    ) -> Result<(AuditSink, AuditTask), StorageError> {
        let (tx, rx) = mpsc::channel::<AuditEvent>(QUEUE);
        let mut appender = store.audit_appender()?;
        let runtime = tokio::runtime::Handle::current();
        let append: AppendFn = Box::new(move |events: &[AuditEvent]| match appender.as_mut() {
            Some(a) => a.append(events),
            None => runtime.block_on(store.append_audit(events)),
        });
        let failing = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(Mutex::new(Drain {
            rx,
            append,
            metrics,
            taken: Vec::with_capacity(BATCH),
            done: 0,
            finished: false,
            failing: failing.clone(),
        }));
        let pressure = Arc::new(Pressure {
            raised: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StorageError::Unavailable(format!("audit writer thread: {e}")))
        };
        let (d, p) = (drain.clone(), pressure.clone());
        // Thread names are cut at 15 bytes: "p" for pressure.
        let pressure_thread = spawn("twinward-auditp", Box::new(move || pressure_writer(&d, &p)))?;
        let _ = pressure.writer.set(pressure_thread.thread().clone());
        let p = pressure.clone();
        let background = spawn(
            "twinward-audit",
            Box::new(move || background_writer(&drain, &p)),
        )?;
        Ok((
            AuditSink {
                tx,
                pressure: pressure.clone(),
                failing,
            },
            AuditTask {
                background,
                pressure: pressure_thread,
                signal: pressure,
            },
        ))
    }

    /// Storage is refusing events (the writer is retrying). Decisions are refused meanwhile
    /// (fail closed): one that cannot be recorded is not made, and the events already
    /// queued are the most that a crash in that time could lose.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Queues an event; waits only when the queue is full (backpressure, never loss).
    pub async fn record(&self, event: AuditEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {
                if self.tx.capacity() < QUEUE - PRESSURE {
                    self.pressure.raise();
                }
            }
            Err(mpsc::error::TrySendError::Full(ev)) => {
                self.pressure.raise();
                if self.tx.send(ev).await.is_err() {
                    tracing::error!("audit writer has stopped; event dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer has stopped; event dropped")
            }
        }
    }

    /// Closes the queue and waits for the writers to drain it.
    pub async fn shutdown(self, task: AuditTask) {
        drop(self.tx);
        drop(self.pressure);
        let _ = tokio::task::spawn_blocking(move || {
            let _ = task.background.join();
            task.signal.stopping.store(true, Ordering::Release);
            task.pressure.thread().unpark();
            let _ = task.pressure.join();
        })
        .await;
    }
}

/// Puts the calling thread (the background writer) in the idle scheduling class. Leaving
/// normal priority needs no privilege; where it still fails the writer runs at normal
/// priority, which costs only latency.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which only reads it;
    // pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "could not move the audit writer to the idle scheduling class");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::audit::AuditEvent;
    use crate::clock::Timestamp;
    use crate::storage::sqlite::SqliteStore;

    /// The numeric fields of the stat line of this process's thread named `name`, from
    /// field 4 on (after the command name, which may hold spaces, and the state letter).
    fn stat_of(name: &str) -> Option<Vec<i64>> {
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                let rest = &stat[stat.rfind(')')? + 4..];
                return Some(
                    rest.split(' ')
                        .map(|f| f.trim().parse().unwrap_or(-1))
                        .collect(),
                );
            }
        }
        None
    }

    /// (nice, scheduling policy) of a thread: stat fields 19 and 41.
    fn scheduling_of(name: &str) -> Option<(i64, i64)> {
        let f = stat_of(name)?;
        Some((*f.get(19 - 4)?, *f.get(41 - 4)?))
    }

    #[allow(clippy::unwrap_used)]
    async fn store() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let d = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&format!("sqlite://{}/a.db", d.path().display()))
            .await
            .unwrap();
        (d, Arc::new(store))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_background_writer_runs_in_the_idle_class_and_commits_every_event() {
        let (_d, store) = store().await;
        let metrics = AuditMetrics::default();
        let (sink, task) = AuditSink::start(store.clone(), metrics.clone()).unwrap();
        for i in 0..1500 {
            sink.record(AuditEvent::new(
                "access",
                "allow",
                Timestamp::from_unix_secs(i),
            ))
            .await;
        }
        let mut seen = None;
        for _ in 0..100 {
            seen = scheduling_of("twinward-audit");
            if seen == Some((0, libc::SCHED_IDLE as i64)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, Some((0, libc::SCHED_IDLE as i64)));
        // The pressure writer stays at normal priority, and a queue that never passed a
        // quarter full never woke it.
        assert_eq!(
            scheduling_of("twinward-auditp"),
            Some((0, libc::SCHED_OTHER as i64))
        );
        sink.shutdown(task).await;
        assert_eq!(metrics.appended.get(), 1500);
        assert_eq!(metrics.queued.get(), 0);
        assert_eq!(metrics.takeovers.get(), 0);
        let stored = store.audit_events(0, 10_000).await.unwrap();
        assert_eq!(stored.len(), 1500);
        crate::audit::verify_chain(&stored, 0, crate::audit::GENESIS).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_flood_is_taken_over_at_normal_priority_and_appended_in_queue_order() {
        let (_d, store) = store().await;
        let metrics = AuditMetrics::default();
        let (sink, task) = AuditSink::start(store.clone(), metrics.clone()).unwrap();
        // Queued far faster than one writer appends: the queue passes a quarter full
        // within the first few thousand events.
        let n = 3 * QUEUE as i64;
        for i in 0..n {
            sink.record(AuditEvent::new(
                "access",
                "allow",
                Timestamp::from_unix_secs(i),
            ))
            .await;
        }
        sink.shutdown(task).await;
        assert!(
            metrics.takeovers.get() >= 1,
            "the pressure writer never took over"
        );
        assert_eq!(metrics.appended.get(), n as u64);
        let stored = store.audit_events(0, n + 1).await.unwrap();
        assert_eq!(stored.len(), n as usize);
        crate::audit::verify_chain(&stored, 0, crate::audit::GENESIS).unwrap();
        // Handing the drain back and forth never reorders: the chain holds the events in
        // the order they were queued.
        for (i, e) in stored.iter().enumerate() {
            assert_eq!(
                e.event().unwrap().at_ms,
                i as i64 * 1000,
                "event {i} out of order"
            );
        }
    }
}
