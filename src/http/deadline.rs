//! Deadlines of one worker's requests, watched by one timer per worker instead of one tokio
//! timer per request: the upstream deadlines of the fast path's requests (every [`TICK`]),
//! and, on a coarser tick, the time its client connections have to send a request head or
//! to take more of a response.
//!
//! Registering a tokio timer that expires before the runtime's next planned wake-up makes
//! the runtime wake its own I/O driver: a `write` system call to its eventfd. A worker that
//! has just gone idle has no timer planned, so under load about one request in five paid
//! that call for a timeout that almost never fires. Here a request only puts its deadline in a list; the worker's
//! watchdog looks at the list every [`TICK`] while requests are coming in, so a deadline
//! fires at most one tick late, and the watchdog's own timer is re-armed once per tick, not
//! per request.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the watchdog looks for expired deadlines: the most a timeout fires late.
pub const TICK: Duration = Duration::from_millis(10);

/// The deadline passed before the request finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// One worker's deadlines. Cheap to share: requests and the watchdog hold an `Arc`.
pub struct Deadlines {
    state: Mutex<State>,
    /// How often the watchdog looks: the most a deadline fires late.
    tick: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::with_tick(TICK)
    }
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// Indices of unused slots.
    free: Vec<usize>,
    /// Deadlines registered since the watchdog last looked: while there are some it keeps
    /// ticking; after a tick without any it waits for the next one.
    registered_since_tick: bool,
    /// The watchdog, when it waits for a registration.
    watchdog: Option<Waker>,
}

struct Slot {
    at: Instant,
    /// `None` once the slot is free or its deadline has fired.
    waker: Option<Waker>,
    fired: bool,
    used: bool,
}

impl Deadlines {
    /// Deadlines that may fire up to `tick` late, for long timeouts where a watchdog
    /// waking every [`TICK`] would buy nothing.
    pub fn with_tick(tick: Duration) -> Self {
        Deadlines {
            state: Mutex::default(),
            tick,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent between any two statements that touch it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` until it finishes or `at` passes (then `Err(Elapsed)`, at most a tick
    /// late, and `f` is dropped). Needs [`Deadlines::watch`] running for the deadline to
    /// fire.
    pub async fn within<F: Future>(&self, at: Instant, f: F) -> Result<F::Output, Elapsed> {
        let mut f = pin!(f);
        let mut entry = Entry {
            deadlines: self,
            slot: None,
        };
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(v) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            entry.pending(at, cx)
        })
        .await
    }

    /// The watchdog: fires expired deadlines every tick while deadlines are being
    /// registered. Runs until dropped (the worker aborts it when it stops).
    pub async fn watch(self: Arc<Self>) {
        let mut sleep = pin!(tokio::time::sleep(self.tick));
        loop {
            std::future::poll_fn(|cx| {
                let mut s = self.lock();
                let in_flight = s.slots.len() > s.free.len();
                if std::mem::take(&mut s.registered_since_tick) || in_flight {
                    Poll::Ready(())
                } else {
                    s.watchdog = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.tick);
            sleep.as_mut().await;
            self.fire_expired(Instant::now());
        }
    }

    fn fire_expired(&self, now: Instant) {
        let mut wake = Vec::new();
        {
            let mut s = self.lock();
            for slot in s.slots.iter_mut().filter(|s| s.used && !s.fired) {
                if slot.at <= now {
                    slot.fired = true;
                    wake.extend(slot.waker.take());
                }
            }
        }
        // Outside the lock: a woken task may run (and register) at once.
        for w in wake {
            w.wake();
        }
    }
}

/// A request's place in the list, freed when the request ends either way.
struct Entry<'a> {
    deadlines: &'a Deadlines,
    slot: Option<usize>,
}

impl Entry<'_> {
    fn pending<T>(&mut self, at: Instant, cx: &mut Context<'_>) -> Poll<Result<T, Elapsed>> {
        let mut s = self.deadlines.lock();
        match self.slot {
            Some(i) => {
                let slot = &mut s.slots[i];
                if slot.fired {
                    return Poll::Ready(Err(Elapsed));
                }
                match &mut slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
            }
            None => {
                let slot = Slot {
                    at,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                    used: true,
                };
                let i = match s.free.pop() {
                    Some(i) => {
                        s.slots[i] = slot;
                        i
                    }
                    None => {
                        s.slots.push(slot);
                        s.slots.len() - 1
                    }
                };
                self.slot = Some(i);
                s.registered_since_tick = true;
                if let Some(w) = s.watchdog.take() {
                    drop(s);
                    w.wake();
                }
            }
        }
        Poll::Pending
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut s = self.deadlines.lock();
            let slot = &mut s.slots[i];
            slot.used = false;
            slot.waker = None;
            s.free.push(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_deadline_fires_within_a_tick_and_a_quick_future_is_not_disturbed() {
        let d = Arc::new(Deadlines::default());
        let watchdog = tokio::spawn(d.clone().watch());

        let started = Instant::now();
        let r = d
            .within(
                started + Duration::from_millis(50),
                std::future::pending::<()>(),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(r, Err(Elapsed));
        assert!(took >= Duration::from_millis(50), "fired early: {took:?}");
        assert!(
            took < Duration::from_millis(50) + 5 * TICK,
            "fired late: {took:?}"
        );

        let r = d
            .within(Instant::now() + Duration::from_secs(60), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                7
            })
            .await;
        assert_eq!(r, Ok(7));
        // Every slot is free again once its request ended, fired or not.
        {
            let s = d.lock();
            assert_eq!(s.slots.len(), s.free.len());
        }
        watchdog.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_expired_deadlines_fire_and_slots_are_reused() {
        let d = Arc::new(Deadlines::default());
        let watchdog = tokio::spawn(d.clone().watch());
        let now = Instant::now();
        let short = d.within(
            now + Duration::from_millis(30),
            std::future::pending::<()>(),
        );
        let long = d.within(now + Duration::from_secs(60), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "done"
        });
        let (short, long) = tokio::join!(short, long);
        assert_eq!(short, Err(Elapsed));
        assert_eq!(long, Ok("done"));
        // A deadline that has already passed fires at the next tick.
        let r = d.within(now, std::future::pending::<()>()).await;
        assert_eq!(r, Err(Elapsed));
        let s = d.lock();
        assert_eq!(s.slots.len(), 2, "slots were not reused");
        assert_eq!(s.free.len(), 2);
        drop(s);
        watchdog.abort();
    }
}
