//! Writing to the client. A client that takes none of a response for [`STALL`] is given up
//! on, as on hyper's connections (`idle`): it would otherwise hold the twin connection the
//! response comes from, and this connection, for good. A client that takes bytes, however
//! slowly, is not cut off.

use crate::http::deadline::Deadlines;
use crate::http::idle::IDLE as STALL;
use std::io;
use std::time::Instant;
use tokio::net::TcpStream;

/// Writes all of `buf` to `stream`; fails with `TimedOut` once a wait for the client to
/// take more lasts [`STALL`] (fired by the worker's head-deadline watchdog, `stalls`).
pub async fn all(stalls: &Deadlines, stream: &mut TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // A write that does not have to wait (nearly all of them) registers no deadline.
        match stream.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let deadline = Instant::now() + STALL;
                stalls
                    .within(deadline, stream.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "the client took nothing")
                    })??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
