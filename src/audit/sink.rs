//! The audit writer: a bounded queue and threads of its own that append events in
//! batches. They run off the async runtime, so hashing and database work never delay a
//! worker's requests, and with a backend's blocking appender they talk to the database
//! directly.
//!
//! Appending costs a few microseconds of CPU per event; the threads are about where that
//! time comes from.
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
//! - The *housekeeping* thread, also idle-class, runs the storage's upkeep (SQLite's
//!   checkpoints), which would otherwise run inside some commit. What of it has to run
//!   between two transactions (the frames committed while it copied) it leaves to the
//!   pressure writer, which it raises for that.
//!
//! Both writers share one [`Drain`] (the queue's receiving end, the events taken from it and
//! the appender) behind a mutex, so events are appended in the order they were queued by
//! one chain writer. What the background writer does while holding it is kept short,
//! because a preempted idle-class thread may wait long for a core, and the pressure writer
//! waits for it meanwhile (a priority inversion): it holds the drain only to take events
//! and append one transaction, in steps of [`IDLE_STEP`] events, going on to the next step
//! only while the pressure writer is not waiting; it waits for events, lingers and yields without
//! it; and no checkpoint, with its copying and `fsync`, runs inside its commits. (When it
//! held the drain while it waited, lingered and checkpointed, 3 of 32 full-load runs had a
//! p99 of 187–571 ms: the pressure writer waited until the queue was full.)
//!
//! Scheduling never loses an event: when the queue is full, requests wait for room
//! (backpressure), the workers go idle and a writer runs. The queue bound is also what can
//! be waiting in memory at any time.

use super::AuditEvent;
use crate::metrics::AuditMetrics;
use crate::storage::{AuditHousekeeper, StorageError, Store};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 16_384;
const BATCH: usize = 2048;
const LINGER: Duration = Duration::from_millis(20);
/// Events per transaction of the pressure writer: it is taking a core from the workers
/// anyway, so transactions are sized for cost (512-event ones cost about 5% less CPU per
/// event than 128-event ones: less of the WAL rewritten per commit).
const CHUNK: usize = 512;
/// Events per step of the background writer, which holds the drain meanwhile: a short step
/// leaves little to finish when it is preempted mid-step on a busy machine, where a takeover
/// waits for that. Between steps it looks whether the pressure writer wants the drain, and
/// if not goes on in the same transaction, up to [`CHUNK`] (a commit per step would
/// rewrite the chain's last pages four times as often; see [`CHUNK`]).
const IDLE_STEP: usize = 128;
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
    idle: Arc<IdleWait>,
    failing: Arc<AtomicBool>,
}

/// The background writer parked on an empty queue, holding nothing; `record` wakes it.
struct IdleWait {
    parked: AtomicBool,
    stopping: AtomicBool,
    writer: OnceLock<Thread>,
}

impl IdleWait {
    /// After queueing an event. The fences pair with those in [`IdleWait::park`]: either
    /// the writer's last look at the queue saw the event, or this sees it parked.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }

    /// The background writer, once it found the queue empty: parks unless `still_empty`,
    /// checked after announcing it, says an event came in meanwhile.
    fn park(&self, still_empty: impl FnOnce() -> bool) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if still_empty() && !self.stopping.load(Ordering::Acquire) {
            // Spurious returns only cost a look at the queue.
            std::thread::park();
        }
        self.parked.store(false, Ordering::Release);
    }
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

/// What a writer asks of the storage.
enum Call<'a> {
    /// Append a chunk in one transaction, a step at a time while the predicate holds; the
    /// answer is how many events were committed (see
    /// [`crate::storage::AuditAppender::append_in_steps`]).
    Append(&'a [AuditEvent], usize, &'a dyn Fn() -> bool),
    /// [`crate::storage::AuditAppender::finish_upkeep`]; the answer is 0.
    FinishUpkeep,
}

type AppendFn = Box<dyn FnMut(Call<'_>) -> Result<usize, StorageError> + Send>;

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
    /// The storage's upkeep, and the thread that runs it when due.
    upkeep: Option<(Arc<dyn AuditHousekeeper>, Thread)>,
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
        self.report_queued();
    }

    /// Events taken but not appended, and those still in the queue.
    fn report_queued(&self) {
        let waiting = self.taken.len() - self.done + self.rx.len();
        self.metrics.queued.set(waiting as i64);
    }

    /// Appends the next `n` taken events in one transaction.
    fn append_chunk(&mut self, n: usize) {
        self.append_steps(n, n, &|| true);
    }

    /// Appends up to the next `n` taken events in one transaction, `step` at a time while
    /// `go_on()` holds, retrying until storage takes them: events are delayed, not lost,
    /// while the database is briefly unavailable.
    fn append_steps(&mut self, n: usize, step: usize, go_on: &dyn Fn() -> bool) {
        let end = (self.done + n).min(self.taken.len());
        let chunk = &self.taken[self.done..end];
        let mut delay = Duration::from_millis(50);
        let appended = loop {
            match (self.append)(Call::Append(chunk, step, go_on)) {
                Ok(appended) => break appended,
                Err(e) => {
                    self.failing.store(true, Ordering::Release);
                    tracing::error!(error = %e, pending = chunk.len(), "audit append failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.failing.store(false, Ordering::Release);
        self.metrics.appended.inc_by(appended as u64);
        self.done += appended;
        self.report_queued();
        if let Some((h, thread)) = &self.upkeep {
            if h.is_due() {
                thread.unpark();
            }
        }
    }
}

impl Drain {
    /// Runs the part of the upkeep that appending waits for, if the housekeeper left one.
    /// Only the pressure writer calls this: at normal priority, it gets a core back soon
    /// after the `fsync`s it may wait through while holding the drain.
    fn finish_upkeep(&mut self) {
        let Some((h, _)) = &self.upkeep else {
            return;
        };
        if !h.wants_finish() {
            return;
        }
        if let Err(e) = (self.append)(Call::FinishUpkeep) {
            // Nothing is lost: the housekeeper is due again and the round repeats.
            tracing::warn!(error = %e, "audit storage upkeep failed; retrying when next due");
        }
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
fn background_writer(drain: &Mutex<Drain>, pressure: &Pressure, idle: &IdleWait) {
    lower_priority();
    // Before it can first park: a `wake` that sees it parked must find whom to unpark.
    let _ = idle.writer.set(std::thread::current());
    loop {
        if idle.stopping.load(Ordering::Acquire) {
            // The load has stopped: wait on the queue itself until every sender is gone,
            // appending what still comes.
            let mut d = lock(drain);
            if !d.has_pending() && !d.take_waiting() {
                return;
            }
            d.append_chunk(CHUNK);
            continue;
        }
        let appended = idle_turn(&mut lock(drain), pressure);
        if appended {
            // Outside the lock: a pressure writer blocked on it gets it now, and the
            // background writer waits until it is done.
            while pressure.is_raised() && !pressure.stopping.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::yield_now();
            continue;
        }
        idle.park(|| lock(drain).rx.is_empty());
        // Woken by the first event after a quiet spell: let a trickle gather so that it
        // shares one transaction instead of paying a commit each.
        std::thread::sleep(LINGER);
    }
}

/// One turn of the background writer with the drain: takes what is queued and appends one
/// transaction of it, a step at a time while the pressure writer is not waiting; false when
/// nothing was queued.
fn idle_turn(d: &mut Drain, pressure: &Pressure) -> bool {
    if !d.has_pending() {
        d.take_ready();
    }
    let any = d.has_pending();
    if any {
        d.append_steps(CHUNK, IDLE_STEP, &|| !pressure.is_raised());
    }
    any
}

/// Runs the storage's upkeep whenever a writer finds it due, in the idle class: a
/// checkpoint copies and syncs for up to tens of milliseconds, and nothing waits for it.
fn housekeeping_thread(housekeeper: &dyn AuditHousekeeper, idle: &IdleWait, pressure: &Pressure) {
    lower_priority();
    let mut failed = false;
    loop {
        std::thread::park();
        if idle.stopping.load(Ordering::Acquire) {
            return;
        }
        if !housekeeper.is_due() {
            continue;
        }
        match housekeeper.tidy() {
            Ok(()) => {
                failed = false;
                if housekeeper.wants_finish() {
                    // The rest has to run between two transactions: the pressure writer
                    // takes the drain at the background writer's next step and runs it.
                    pressure.raise();
                }
            }
            Err(e) if !failed => {
                // Appending goes on; the appender does the upkeep itself if this falls far
                // behind.
                tracing::warn!(error = %e, "audit storage upkeep failed; retrying when next due");
                failed = true;
            }
            Err(_) => {}
        }
    }
}

/// Waits until the queue passes [`PRESSURE`] (or the housekeeper leaves it the rest of its
/// upkeep), then finishes the upkeep, appends at normal priority until no more than
/// [`CALM`] events are queued, and lowers the pressure again.
fn pressure_writer(
    drain: &Mutex<Drain>,
    pressure: &Pressure,
    housekeeper: Option<&dyn AuditHousekeeper>,
) {
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
            d.finish_upkeep();
            if d.has_pending() || d.rx.len() > CALM {
                d.metrics.takeovers.inc();
            }
            while !d.finished {
                if !d.has_pending() {
                    if d.rx.len() <= CALM {
                        break;
                    }
                    d.take_ready();
                }
                d.append_chunk(CHUNK);
            }
        }
        // A raise while this ran found the pressure already raised and woke nobody. The
        // workers raise again while the queue stays long; the housekeeper raises once, so
        // its request is looked at again here. Reading the flag as it is lowered pairs
        // with the housekeeper's raise: whichever comes second sees the other.
        pressure.raised.swap(false, Ordering::AcqRel);
        if housekeeper.is_some_and(|h| h.wants_finish())
            && !pressure.stopping.load(Ordering::Acquire)
        {
            pressure.raised.store(true, Ordering::Release);
        }
    }
}

/// The writer threads; [`AuditSink::shutdown`] waits for them to drain the queue.
pub struct AuditTask {
    background: JoinHandle<()>,
    pressure: JoinHandle<()>,
    housekeeping: Option<JoinHandle<()>>,
    signal: Arc<Pressure>,
    idle: Arc<IdleWait>,
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
        let housekeeper = match appender.as_mut() {
            Some(a) => a.housekeeper()?,
            None => None,
        };
        let runtime = tokio::runtime::Handle::current();
        let append: AppendFn = Box::new(move |call: Call<'_>| match (appender.as_mut(), call) {
            (Some(a), Call::Append(events, step, go_on)) => a.append_in_steps(events, step, go_on),
            (Some(a), Call::FinishUpkeep) => a.finish_upkeep().map(|()| 0),
            (None, Call::Append(events, step, _)) => {
                let first = crate::storage::first_step(events, step);
                runtime
                    .block_on(store.append_audit(first))
                    .map(|()| first.len())
            }
            (None, Call::FinishUpkeep) => Ok(0),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StorageError::Unavailable(format!("audit writer thread: {e}")))
        };
        let idle = Arc::new(IdleWait {
            parked: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        });
        let pressure = Arc::new(Pressure {
            raised: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        });
        // Thread names are cut at 15 bytes: "h" for housekeeping, "p" for pressure.
        let (housekeeping, upkeep) = match housekeeper {
            Some(h) => {
                let (shared, i, p) = (h.clone(), idle.clone(), pressure.clone());
                let t = spawn(
                    "twinward-audith",
                    Box::new(move || housekeeping_thread(shared.as_ref(), &i, &p)),
                )?;
                let thread = t.thread().clone();
                (Some(t), Some((h, thread)))
            }
            None => (None, None),
        };
        let upkeep_handle = upkeep.as_ref().map(|(h, _)| h.clone());
        let failing = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(Mutex::new(Drain {
            rx,
            append,
            metrics,
            taken: Vec::with_capacity(BATCH),
            done: 0,
            finished: false,
            failing: failing.clone(),
            upkeep,
        }));
        let (d, p) = (drain.clone(), pressure.clone());
        let pressure_thread = spawn(
            "twinward-auditp",
            Box::new(move || pressure_writer(&d, &p, upkeep_handle.as_deref())),
        )?;
        let _ = pressure.writer.set(pressure_thread.thread().clone());
        let (p, i) = (pressure.clone(), idle.clone());
        let background = spawn(
            "twinward-audit",
            Box::new(move || background_writer(&drain, &p, &i)),
        )?;
        Ok((
            AuditSink {
                tx,
                pressure: pressure.clone(),
                idle: idle.clone(),
                failing,
            },
            AuditTask {
                background,
                pressure: pressure_thread,
                housekeeping,
                signal: pressure,
                idle,
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
                self.idle.wake();
            }
            Err(mpsc::error::TrySendError::Full(ev)) => {
                self.pressure.raise();
                if self.tx.send(ev).await.is_err() {
                    tracing::error!("audit writer has stopped; event dropped");
                }
                self.idle.wake();
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
        drop(self.idle);
        let _ = tokio::task::spawn_blocking(move || {
            task.idle.stopping.store(true, Ordering::Release);
            task.background.thread().unpark();
            let _ = task.background.join();
            task.signal.stopping.store(true, Ordering::Release);
            task.pressure.thread().unpark();
            let _ = task.pressure.join();
            if let Some(h) = task.housekeeping {
                h.thread().unpark();
                let _ = h.join();
            }
        })
        .await;
    }
}

/// Puts the calling thread (the background writer, the housekeeping thread) in the idle
/// scheduling class. Leaving normal priority needs no privilege; where it still fails the
/// thread runs at normal priority, which costs only latency.
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
        // A thread may end between listing and reading (a runtime's blocking threads do):
        // skip it rather than give up on the search.
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let dir = task.path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
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

    /// Waits up to two seconds for the thread `name` to run with `expected` (nice,
    /// policy) and gives what it last saw. A new thread names itself and lowers its own
    /// class once it first runs, which on a busy machine comes well after it is spawned.
    async fn scheduling_settles(name: &str, expected: (i64, i64)) -> Option<(i64, i64)> {
        let mut seen = None;
        for _ in 0..200 {
            seen = scheduling_of(name);
            if seen == Some(expected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen
    }

    /// An allowed access event at second `at`: the order of these is what tests check.
    fn event(at: i64) -> AuditEvent {
        AuditEvent::new("access", "allow", Timestamp::from_unix_secs(at))
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
            sink.record(event(i)).await;
        }
        let idle = (0, libc::SCHED_IDLE as i64);
        assert_eq!(scheduling_settles("twinward-audit", idle).await, Some(idle));
        assert_eq!(
            scheduling_settles("twinward-audith", idle).await,
            Some(idle)
        );
        // The pressure writer stays at normal priority, and a queue that never passed a
        // quarter full never woke it.
        let normal = (0, libc::SCHED_OTHER as i64);
        assert_eq!(
            scheduling_settles("twinward-auditp", normal).await,
            Some(normal)
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
            sink.record(event(i)).await;
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

    /// Events recorded at a steady pace: the housekeeper moves the log's bulk, the pressure
    /// writer the rest between two transactions, and the log starts over each round instead
    /// of growing with every event. A start-over writes a new log header with new salts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_write_ahead_log_starts_over_under_steady_recording() {
        let (d, store) = store().await;
        let metrics = AuditMetrics::default();
        let (sink, task) = AuditSink::start(store.clone(), metrics.clone()).unwrap();
        let salts = || {
            use std::io::Read;
            let mut header = [0u8; 24];
            let mut wal = std::fs::File::open(d.path().join("a.db-wal")).ok()?;
            wal.read_exact(&mut header).ok()?;
            Some(header[16..].to_vec())
        };
        let (mut last, mut restarts) = (None, 0);
        // Below the appender's own fallback (65,536 rows): only the rounds start it over.
        let n = 60_000i64;
        for i in 0..n {
            sink.record(event(i)).await;
            if i % 25 == 0 {
                // A steady pace with idle time, rather than a flood: the queue stays short
                // and the idle-class threads get a core.
                tokio::time::sleep(Duration::from_millis(1)).await;
                let now = salts();
                if last.is_some() && now.is_some() && now != last {
                    restarts += 1;
                }
                last = now.or(last);
            }
            if restarts >= 2 {
                break;
            }
        }
        sink.shutdown(task).await;
        assert!(
            restarts >= 2,
            "the log started over {restarts} times in {} events",
            metrics.appended.get()
        );
    }

    /// A background turn goes on step by step while no takeover waits, and ends its
    /// transaction at the next step once one does.
    #[test]
    fn a_background_turn_ends_its_transaction_at_a_step_once_a_takeover_waits() {
        let (tx, rx) = mpsc::channel(QUEUE);
        for i in 0..1000 {
            tx.try_send(event(i)).unwrap();
        }
        let pressure = Arc::new(Pressure {
            raised: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        });
        // Appends as a backend does, asking between steps; the first transaction's first
        // step is where a takeover starts waiting.
        let transactions = Arc::new(Mutex::new(Vec::new()));
        let (p, seen) = (pressure.clone(), transactions.clone());
        let append: AppendFn = Box::new(move |call| {
            let Call::Append(events, step, go_on) = call else {
                return Ok(0);
            };
            let mut appended = 0;
            for (i, _) in events.iter().enumerate() {
                if i > 0 && i % step == 0 && !go_on() {
                    break;
                }
                appended += 1;
                if seen.lock().unwrap().is_empty() && appended == step {
                    p.raise();
                }
            }
            seen.lock().unwrap().push(appended);
            Ok(appended)
        });
        let mut d = Drain {
            rx,
            append,
            metrics: AuditMetrics::default(),
            taken: Vec::new(),
            done: 0,
            finished: false,
            failing: Arc::new(AtomicBool::new(false)),
            upkeep: None,
        };
        assert!(idle_turn(&mut d, &pressure));
        pressure.raised.store(false, Ordering::Release);
        assert!(idle_turn(&mut d, &pressure));
        assert!(idle_turn(&mut d, &pressure));
        assert!(!idle_turn(&mut d, &pressure));
        // One step while a takeover waited, then whole transactions of CHUNK.
        assert_eq!(
            *transactions.lock().unwrap(),
            [IDLE_STEP, CHUNK, 1000 - IDLE_STEP - CHUNK]
        );
        assert_eq!(d.metrics.appended.get(), 1000);
    }

    /// The background writer parks on an empty queue holding nothing, and every event that
    /// comes after a quiet spell wakes it: none is left waiting for the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn each_event_after_a_quiet_spell_wakes_the_parked_writer() {
        let (_d, store) = store().await;
        let metrics = AuditMetrics::default();
        let (sink, task) = AuditSink::start(store.clone(), metrics.clone()).unwrap();
        for i in 0..10u64 {
            // Parked by now: the last event was appended a linger ago.
            tokio::time::sleep(LINGER * 2).await;
            sink.record(event(i as i64)).await;
            let mut waited = Duration::ZERO;
            while metrics.appended.get() < i + 1 {
                assert!(
                    waited < Duration::from_secs(5),
                    "event {i} was not appended: the writer slept through it"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += Duration::from_millis(5);
            }
        }
        sink.shutdown(task).await;
        assert_eq!(store.audit_events(0, 100).await.unwrap().len(), 10);
    }
}
