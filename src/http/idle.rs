//! Ending a hyper-served client connection that has gone quiet, or on which the gateway
//! waits for the client in vain.
//!
//! - An HTTP/1.1 connection must send each request head within [`super::HEAD_TIMEOUT`]
//!   (hyper's `header_read_timeout`), but HTTP/2 has no such bound: a client that sends the
//!   preface and nothing more would hold its connection for good. So a connection with no
//!   request in flight on which no byte moved either way for [`IDLE`] is ended: shut down
//!   gracefully (HTTP/2's GOAWAY), then closed.
//! - A request in flight is not cut off while it waits for its twin, however long that
//!   takes (the route's `timeout` bounds the wait for the response head). But a request
//!   can also wait for its client: for it to send more of an upload, or to take more of a
//!   response (an HTTP/1.1 client that does not read, an HTTP/2 client that grants no
//!   flow-control window). Each such request holds a twin connection and buffers, so a
//!   connection on which a request waits for the client and no byte moved either way for
//!   [`IDLE`] is closed outright (nginx's `client_body_timeout` and `send_timeout` bound
//!   the same waits). A client that keeps sending or taking bytes, however slowly, is not
//!   cut off.

use super::watched::{Observer, Watched, Wrote};
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// No byte in either direction for this long ends a connection.
pub const IDLE: Duration = super::HEAD_TIMEOUT;
/// How often a connection's activity is looked at: it ends between [`IDLE`] and
/// `IDLE + CHECK` after its last byte.
pub(super) const CHECK: Duration = Duration::from_secs(5);

/// What a connection is doing: the reads and writes that moved bytes, the requests in
/// flight, and the waits for the client among them.
#[derive(Default)]
pub struct Activity {
    moved: AtomicU64,
    in_flight: AtomicUsize,
    /// Response bodies whose last frame the client has not taken yet, and request bodies
    /// waiting for the client's next bytes.
    on_client: AtomicUsize,
}

impl Activity {
    fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    fn waits_on_client(&self) -> bool {
        self.on_client.load(Ordering::Relaxed) > 0
    }
}

/// One wait for the client, counted in its connection's [`Activity`] while it lasts.
struct ClientWait {
    activity: Arc<Activity>,
    waiting: bool,
}

impl ClientWait {
    fn new(activity: Arc<Activity>) -> Self {
        ClientWait {
            activity,
            waiting: false,
        }
    }

    fn begin(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.activity.on_client.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn end(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.activity.on_client.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ClientWait {
    fn drop(&mut self) {
        self.end();
    }
}

/// A connection's activity counts the reads and writes that moved bytes.
impl Observer for Arc<Activity> {
    fn read(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    fn wrote(&self, wrote: Wrote) {
        if wrote == Wrote::Bytes {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
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
        let taking = ClientWait::new(self.0.clone());
        Body::new(Held {
            body,
            taking,
            _in: self,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Held {
    body: Body,
    /// From a frame handed to hyper until hyper asks for the next: hyper asks as soon as
    /// it has room for more (HTTP/1.1: its write buffer; HTTP/2: the client's flow-control
    /// window), so a wait that lasts is a client not taking what it was sent.
    taking: ClientWait,
    _in: InFlight,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.taking.end();
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(Some(Ok(_)))) {
            self.taking.begin();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request's body as the client sends it, counted as a wait for the client from a read
/// that found no bytes until the next read. Its readers (hyper's client towards the twin,
/// the gateway's own endpoints) read again as soon as hyper wakes them for new bytes, so a
/// wait that lasts is a client not sending; a reader held up by a slow twin is between
/// reads that found bytes, and waits on no one here.
pub struct ClientBody {
    inner: Incoming,
    sending: ClientWait,
}

impl http_body::Body for ClientBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.sending.end();
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if frame.is_pending() {
            self.sending.begin();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
    F: Fn(Request<ClientBody>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = Watched {
        inner: io,
        observer: activity.clone(),
    };
    let on_conn = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = InFlight::enter(&on_conn);
        let resp = handle(req.map(|inner| ClientBody {
            inner,
            sending: ClientWait::new(on_conn.clone()),
        }));
        async move { Ok::<_, Infallible>(resp.await.map(|b| in_flight.hold(b))) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    if let Err(e) = serve(conn.into_owned(), activity, stopping).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Why [`serve`] stopped serving a connection as usual.
enum End {
    /// No request in flight and no byte moved for [`IDLE`].
    Quiet,
    /// A request waits on the client and no byte moved for [`IDLE`].
    Stalled,
    /// The gateway is shutting down.
    Stopping,
}

/// Serves `conn` to its end. Once no request is in flight and no byte moved for [`IDLE`],
/// it is shut down gracefully, and closed outright if after [`CHECK`] more it is still
/// open with none in flight: an HTTP/2 client that never answers the PING of a graceful
/// shutdown would otherwise keep it. Once a request waits on the client and no byte moved
/// for [`IDLE`], it is closed outright. When `stopping` turns true (the gateway's
/// shutdown) it is shut down gracefully and served to its end.
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
    let end = loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = stopping.wait_for(|s| *s) => break End::Stopping,
            now = checks.tick() => {
                let moved = activity.moved();
                let on_twin = activity.busy() && !activity.waits_on_client();
                if moved != seen || on_twin {
                    seen = moved;
                    still_since = now;
                } else if now.duration_since(still_since) >= IDLE {
                    break if activity.busy() { End::Stalled } else { End::Quiet };
                }
            }
        }
    };
    match end {
        End::Stopping => {
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        End::Stalled => {
            // A graceful shutdown would wait for the very request the client holds up.
            tracing::debug!("closing a connection whose client took and sent nothing for {IDLE:?} while a request waited on it");
            return Ok(());
        }
        End::Quiet => {}
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
