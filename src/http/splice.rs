//! Splicing an upgraded client connection (a websocket) to its twin's, byte for byte in
//! both directions, until either side closes.
//!
//! A client that stops reading would hold both connections for good: the twin's bytes
//! wait for room on the client's side. So once a write to the client has waited for room
//! for [`IDLE`], with no byte taken meanwhile, both are closed, as an HTTP request that
//! waits on its client is (`idle`). A connection on which nothing is sent either way is
//! not cut off: a quiet websocket is normal.

use super::idle::{CHECK, IDLE};
use super::watched::{Observer, Watched, Wrote};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};

/// Copies between `client` and `twin` until one closes, an error, or the client has taken
/// nothing for [`IDLE`] while bytes waited for it (`TimedOut`).
pub async fn splice<C, T>(client: C, mut twin: T) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let waiting = Arc::new(Waiting::default());
    let mut client = Watched {
        inner: client,
        observer: waiting.clone(),
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut twin) => r.map(drop),
        _ = waiting.lasts(IDLE) => Err(io::Error::new(io::ErrorKind::TimedOut, "the client took nothing")),
    }
}

/// Since when a write to the client has waited for room, if one is waiting.
#[derive(Default)]
struct Waiting(Mutex<Option<Instant>>);

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // Plain data, consistent between any two statements.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocked(&self) {
        self.lock().get_or_insert_with(Instant::now);
    }

    fn moved(&self) {
        *self.lock() = None;
    }

    /// Returns once a wait has lasted `limit` (looked at every [`CHECK`]).
    async fn lasts(&self, limit: std::time::Duration) {
        let mut checks = tokio::time::interval(CHECK);
        loop {
            checks.tick().await;
            if self.lock().is_some_and(|since| since.elapsed() >= limit) {
                return;
            }
        }
    }
}

/// The client's side: a write that waits for room starts a wait, and any write or flush
/// that finishes ends it.
impl Observer for Arc<Waiting> {
    fn wrote(&self, wrote: Wrote) {
        match wrote {
            Wrote::Waiting => self.blocked(),
            Wrote::Bytes | Wrote::Nothing => self.moved(),
        }
    }
}
