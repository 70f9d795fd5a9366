//! Ending a hyper-served client connection that has gone quiet. An HTTP/1.1 connection
//! must send each request head within [`super::HEAD_TIMEOUT`] (hyper's
//! `header_read_timeout`), but HTTP/2 has no such bound: a client that sends the preface
//! and nothing more would hold its connection for good. So a connection with no request
//! in flight on which no byte moved either way for [`IDLE`] is ended: shut down
//! gracefully (HTTP/2's GOAWAY), then closed. A request in flight is never cut off,
//! however long its twin takes to answer (the route's `timeout` bounds that).

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// No byte in either direction for this long ends a connection.
pub const IDLE: Duration = super::HEAD_TIMEOUT;
/// How often a connection's activity is looked at: it ends between [`IDLE`] and
/// `IDLE + CHECK` after its last byte.
const CHECK: Duration = Duration::from_secs(5);

/// What a connection is doing: the reads and writes that moved bytes, and the requests
/// in flight.
#[derive(Default)]
pub struct Activity {
    moved: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }
}

/// A client connection's I/O, counting the reads and writes that moved bytes.
struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    fn new(inner: T) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        (
            Counted {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }

    fn note(&self) {
        self.activity.moved.fetch_add(1, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.note();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.note();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.note();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request in flight on a connection: from when the service takes it until its
/// response body is done with (sent in full, or dropped).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }

    /// `body`, holding this request in flight until it is dropped.
    fn hold(self, body: Body) -> Body {
        Body::new(Held { body, _in: self })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Held {
    body: Body,
    _in: InFlight,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one client connection through hyper (HTTP/1.1 or HTTP/2, as the client speaks),
/// each request answered by `handle`, until it ends or is ended by [`serve`]'s rules.
pub async fn serve_http<I, F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    stopping: watch::Receiver<bool>,
    handle: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let (io, activity) = Counted::new(io);
    let on_conn = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::enter(&on_conn);
        let resp = handle(req);
        async move { Ok::<_, Infallible>(resp.await.map(|b| in_flight.hold(b))) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = serve(conn.into_owned(), activity, stopping).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Serves `conn` to its end. Once no request is in flight and no byte moved for [`IDLE`],
/// it is shut down gracefully, and closed outright if after [`CHECK`] more it is still
/// open with none in flight: an HTTP/2 client that never answers the PING of a graceful
/// shutdown would otherwise keep it. When `stopping` turns true (the gateway's shutdown)
/// it is shut down gracefully and served to its end.
async fn serve<C: GracefulConnection>(
    conn: C,
    activity: Arc<Activity>,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), C::Error> {
    let mut conn = pin!(conn);
    let mut checks = tokio::time::interval(CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = activity.moved();
    let mut still_since = tokio::time::Instant::now();
    let idle = loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = stopping.wait_for(|s| *s) => break false,
            now = checks.tick() => {
                let moved = activity.moved();
                if moved != seen || activity.busy() {
                    seen = moved;
                    still_since = now;
                } else if now.duration_since(still_since) >= IDLE {
                    break true;
                }
            }
        }
    };
    if !idle {
        conn.as_mut().graceful_shutdown();
        return conn.await;
    }
    conn.as_mut().graceful_shutdown();
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = checks.tick() => {
                if !activity.busy() {
                    // Dropping the connection closes it.
                    return Ok(());
                }
            }
        }
    }
}
