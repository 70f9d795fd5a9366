//! How many client connections the gateway serves at once.
//!
//! Every client connection holds a file descriptor, and most hold a second one towards
//! their twin, while storage, policy and key files and the admin listener need theirs too.
//! A gateway out of descriptors fails every client's requests and its own upkeep alike,
//! and one that admits connections without bound can be made to hold them all by anyone
//! who opens enough. So it serves at most `server.max_connections` client connections at
//! once, fewer where the open-file limit would not cover them ([`budget`]). An HTTP/2
//! connection's streams beyond the first in flight take places too, since each may hold a
//! twin connection of its own (200 of them on one client connection; see
//! [`StreamPlaces`]).
//!
//! Past the limit a connection waits, unserved, until one closes, as with HAProxy's
//! `maxconn`: each worker holds one such connection and stops accepting, and the rest wait
//! in the listen backlog. Quiet connections close after 75 s (`idle`), so a limit reached
//! by idle connections frees itself.

use crate::metrics::ConnectionMetrics;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for everything but client connections and one twin connection each:
/// storage, policy and key files, the admin listener and its connections, pooled idle
/// connections to twins.
pub const RESERVED_FDS: u64 = 256;

/// The client connections `open_files` descriptors cover, at most `configured`: two each
/// (the client's and one towards its twin) after [`RESERVED_FDS`], and at least one.
pub fn budget(configured: usize, open_files: u64) -> usize {
    let covered = open_files.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(covered)
        .map_or(configured, |c| c.min(configured))
        .max(1)
}

/// Raises the soft open-file limit as far as the hard one allows and returns the soft
/// limit in force: distributions start services with 1,024, which would cap the gateway
/// near 400 connections.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // An unlimited hard limit is still capped by the kernel's `fs.nr_open` (2^20 by
    // default), above which setrlimit fails: try the hard limit, then that cap.
    for target in [lim.rlim_max, lim.rlim_max.min(1 << 20)] {
        if target <= lim.rlim_cur {
            break;
        }
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(target);
        }
    }
    Ok(lim.rlim_cur)
}

/// The gateway-wide count of client connections, shared by the workers.
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    metrics: ConnectionMetrics,
    /// When the last "limit reached" warning was logged (ms since `started`), so a long
    /// spell at the limit logs once a minute rather than once a connection.
    warned_at_ms: AtomicU64,
    started: Instant,
}

/// Held for a client connection's life (a websocket takes it over from its connection),
/// or for an HTTP/2 stream's until its response is done.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    /// The gauge this place counts in.
    open: Gauge,
}

/// The places of one HTTP/2 connection's streams. The connection's own place covers one
/// stream in flight, as it covers an HTTP/1.1 connection's request; each further stream
/// in flight takes a place of its own, or is refused (503) when none is free. Refused
/// rather than made to wait: connections holding every place, each with a stream waiting
/// for one more, would wait on each other for good.
pub struct StreamPlaces {
    limit: Arc<ConnectionLimit>,
    own_free: Arc<AtomicBool>,
}

/// A stream's place, held until its response is done with.
pub enum StreamPlace {
    /// The connection's own; freed for the next stream when dropped.
    Own(Arc<AtomicBool>),
    /// A place of its own, held for its drop.
    Extra(#[allow(dead_code)] Admitted),
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        if let StreamPlace::Own(free) = self {
            free.store(true, Ordering::Release);
        }
    }
}

impl StreamPlace {
    /// `body`, holding this place until it is dropped.
    pub fn hold(self, body: axum::body::Body) -> axum::body::Body {
        use http_body_util::BodyExt;
        axum::body::Body::new(body.map_frame(move |frame| {
            let _held = &self;
            frame
        }))
    }
}

impl StreamPlaces {
    pub fn new(limit: Arc<ConnectionLimit>) -> Self {
        StreamPlaces {
            limit,
            own_free: Arc::new(AtomicBool::new(true)),
        }
    }

    /// A place for one more stream in flight on this connection, if there is one.
    pub fn take(&self) -> Option<StreamPlace> {
        if self.own_free.swap(false, Ordering::AcqRel) {
            return Some(StreamPlace::Own(self.own_free.clone()));
        }
        self.limit.try_admit_extra().map(StreamPlace::Extra)
    }
}

/// A connection's [`Admitted`], in the extensions of a request that may upgrade: the
/// websocket it turns into holds the connection's place.
#[derive(Clone)]
pub struct ConnectionSlot(pub Arc<Admitted>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

const WARN_EVERY: Duration = Duration::from_secs(60);

impl ConnectionLimit {
    pub fn new(max: usize, metrics: ConnectionMetrics) -> Self {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            metrics,
            warned_at_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for a further HTTP/2 stream, if one is free now.
    fn try_admit_extra(&self) -> Option<Admitted> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.streams.inc();
                Some(Admitted {
                    _permit: permit,
                    open: self.metrics.streams.clone(),
                })
            }
            Err(_) => {
                self.metrics.limited.inc();
                self.warn();
                None
            }
        }
    }

    /// Room for one more connection, waiting for one to close when there is none.
    pub async fn admit(&self) -> Admitted {
        let open = &self.metrics.open;
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.metrics.limited.inc();
                self.warn();
                // The semaphore is never closed.
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => std::future::pending().await,
                }
            }
        };
        open.inc();
        Admitted {
            _permit: permit,
            open: open.clone(),
        }
    }

    fn warn(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.warned_at_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .warned_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_connections = self.max,
                "connection limit reached: new connections wait until one closes (server.max_connections, and the open-file limit)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_descriptors_for_twins_and_upkeep() {
        assert_eq!(budget(10_000, 1_048_576), 10_000);
        assert_eq!(budget(10_000, 1024), 384);
        assert_eq!(budget(10_000, 4096), 1920);
        assert_eq!(budget(50, 4096), 50);
        assert_eq!(budget(10_000, 100), 1);
        assert_eq!(budget(10_000, u64::MAX), 10_000);
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_one_to_close() {
        let metrics = ConnectionMetrics::default();
        let limit = Arc::new(ConnectionLimit::new(2, metrics.clone()));
        let a = limit.admit().await;
        let _b = limit.admit().await;
        assert_eq!(metrics.open.get(), 2);
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.admit().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third connection was admitted");
        assert_eq!(metrics.limited.get(), 1);
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("admitted once one closed")
            .unwrap();
        assert_eq!(metrics.open.get(), 2);
    }

    #[tokio::test]
    async fn an_http2_connection_serves_one_stream_in_its_own_place_and_more_in_free_ones() {
        let metrics = ConnectionMetrics::default();
        let limit = Arc::new(ConnectionLimit::new(2, metrics.clone()));
        let _connection = limit.admit().await;
        let streams = StreamPlaces::new(limit.clone());
        let first = streams.take().expect("the connection's own place");
        assert!(matches!(first, StreamPlace::Own(_)));
        let second = streams.take().expect("the one free place");
        assert!(matches!(second, StreamPlace::Extra(_)));
        assert_eq!(metrics.streams.get(), 1);
        assert!(streams.take().is_none(), "no place is left");
        assert_eq!(metrics.limited.get(), 1);
        drop(first);
        assert!(matches!(streams.take(), Some(StreamPlace::Own(_))));
        drop(second);
        assert_eq!(metrics.streams.get(), 0);
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_file_limit.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) },
            0
        );
        let now = raise_open_file_limit().unwrap();
        assert!(now >= before.rlim_cur);
        assert!(now == before.rlim_max || now == 1 << 20);
    }
}
