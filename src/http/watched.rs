//! A client connection's I/O with an observer told what each read and write did: how the
//! gateway sees that a connection has gone quiet (`idle`) or that its client takes nothing
//! (`splice`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a write (or flush) to the connection did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// Moved bytes.
    Bytes,
    /// Finished without moving bytes (a flush, an error, a zero-length write).
    Nothing,
    /// Waits for room.
    Waiting,
}

/// Told of the connection's reads and writes; both default to ignoring them.
pub trait Observer {
    /// A read that moved bytes.
    fn read(&self) {}
    fn wrote(&self, _: Wrote) {}
}

/// `inner`, with `observer` told of its reads and writes.
pub struct Watched<T, O> {
    pub inner: T,
    pub observer: O,
}

fn outcome<T>(r: &Poll<io::Result<T>>, moved: impl FnOnce(&T) -> bool) -> Wrote {
    match r {
        Poll::Pending => Wrote::Waiting,
        Poll::Ready(Ok(v)) if moved(v) => Wrote::Bytes,
        Poll::Ready(_) => Wrote::Nothing,
    }
}

impl<T: AsyncRead + Unpin, O: Observer + Unpin> AsyncRead for Watched<T, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.observer.read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, O: Observer + Unpin> AsyncWrite for Watched<T, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.observer.wrote(outcome(&r, |n| *n > 0));
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.observer.wrote(outcome(&r, |n| *n > 0));
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.observer.wrote(outcome(&r, |_| false));
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
