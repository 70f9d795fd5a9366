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
//! - On HTTP/2 the bytes that move tell nothing of one stream: a client can keep its
//!   connection busy (PINGs, other streams) while it grants one stream no window or stops
//!   its upload, and so hold up to `max_concurrent_streams` twin connections. So each
//!   HTTP/2 wait for the client is timed on its own, and a connection on which one has
//!   lasted [`IDLE`] is closed outright (hyper gives no handle to reset the one stream;
//!   nginx resets the stream). A response is handed to hyper in pieces of at most
//!   [`SLICE`] bytes, so that a wait for the client is a wait for that much of the
//!   stream's window: a client taking a stream's bytes slowly, but more than [`SLICE`]
//!   in [`IDLE`], is not cut off however large the twin's chunks are.

use super::watched::{Observer, Watched, Wrote};
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// No byte in either direction for this long ends a connection.
pub const IDLE: Duration = super::HEAD_TIMEOUT;
/// How often a connection's activity is looked at: it ends between [`IDLE`] and
/// `IDLE + CHECK` after its last byte.
pub(super) const CHECK: Duration = Duration::from_secs(5);
/// The check intervals an HTTP/2 wait may span before its connection is closed, plus the
/// one it began in: a wait that began in interval `i` is found still waiting at the start
/// of interval `i + AGES`, when it has lasted at least `AGES - 1` whole intervals.
const AGES: usize = (IDLE.as_secs() / CHECK.as_secs()) as usize + 1;
/// The most of a response handed to hyper at once on HTTP/2 (one default DATA frame).
pub(super) const SLICE: usize = 16 * 1024;

/// What a connection is doing: the reads and writes that moved bytes, the requests in
/// flight, and the waits for the client among them.
#[derive(Default)]
pub struct Activity {
    moved: AtomicU64,
    in_flight: AtomicUsize,
    /// Response bodies whose last frame the client has not taken yet, and request bodies
    /// waiting for the client's next bytes.
    on_client: AtomicUsize,
    /// The check interval the connection is in, counted from its start.
    interval: AtomicUsize,
    /// HTTP/2 waits for the client by the interval they began in, modulo [`AGES`].
    began_in: [AtomicUsize; AGES],
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

    /// Starts the next check interval; false when a wait begun [`AGES`] intervals ago
    /// still lasts, the slot it counts in being the one the new interval reuses.
    fn next_interval(&self) -> bool {
        let next = self.interval.load(Ordering::Relaxed).wrapping_add(1);
        if self.began_in[next % AGES].load(Ordering::Relaxed) > 0 {
            return false;
        }
        self.interval.store(next, Ordering::Relaxed);
        true
    }
}

/// One wait for the client, counted in its connection's [`Activity`] while it lasts, and
/// on HTTP/2 also by the interval it began in.
struct ClientWait {
    activity: Arc<Activity>,
    timed: bool,
    waiting: Waiting,
}

#[derive(Clone, Copy)]
enum Waiting {
    No,
    Yes,
    /// Counted in `began_in[slot]`.
    Since(usize),
}

impl ClientWait {
    /// A wait on a stream of an HTTP/2 connection (`timed`) or on an HTTP/1.1 one.
    fn new(activity: Arc<Activity>, timed: bool) -> Self {
        ClientWait {
            activity,
            timed,
            waiting: Waiting::No,
        }
    }

    fn begin(&mut self) {
        if !matches!(self.waiting, Waiting::No) {
            return;
        }
        let a = &self.activity;
        a.on_client.fetch_add(1, Ordering::Relaxed);
        self.waiting = if self.timed {
            // A wait that reads a stale interval counts in the slot that interval shares
            // with the current one, or in an older one: never as younger than it is.
            let slot = a.interval.load(Ordering::Relaxed) % AGES;
            a.began_in[slot].fetch_add(1, Ordering::Relaxed);
            Waiting::Since(slot)
        } else {
            Waiting::Yes
        };
    }

    fn end(&mut self) {
        let a = &self.activity;
        match std::mem::replace(&mut self.waiting, Waiting::No) {
            Waiting::No => return,
            Waiting::Yes => {}
            Waiting::Since(slot) => {
                a.began_in[slot].fetch_sub(1, Ordering::Relaxed);
            }
        }
        a.on_client.fetch_sub(1, Ordering::Relaxed);
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

    /// `body`, holding this request in flight until it is dropped; on HTTP/2 (`h2`) in
    /// pieces of at most [`SLICE`] bytes, each wait for the client timed.
    fn hold(self, body: Body, h2: bool) -> Body {
        let taking = ClientWait::new(self.0.clone(), h2);
        Body::new(Held {
            body,
            taking,
            slices: h2,
            rest: None,
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
    /// Hand data to hyper in pieces of at most [`SLICE`] bytes.
    slices: bool,
    /// What is left of the last data frame, handed on before the body is read again.
    rest: Option<Bytes>,
    _in: InFlight,
}

impl Held {
    fn slice(&mut self, mut data: Bytes) -> Bytes {
        if self.slices && data.len() > SLICE {
            self.rest = Some(data.split_off(SLICE));
        }
        data
    }
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.taking.end();
        let frame = match self.rest.take() {
            Some(rest) => Frame::data(self.slice(rest)),
            None => match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Frame::data(self.slice(data)),
                    Err(trailers) => trailers,
                },
                other => return Poll::Ready(other),
            },
        };
        self.taking.begin();
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let hint = self.body.size_hint();
        let Some(rest) = &self.rest else { return hint };
        let rest = rest.len() as u64;
        let mut with_rest = http_body::SizeHint::new();
        if let Some(upper) = hint.upper() {
            with_rest.set_upper(upper.saturating_add(rest));
        }
        with_rest.set_lower(hint.lower().saturating_add(rest));
        with_rest
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
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
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
        let h2 = req.version() == http::Version::HTTP_2;
        let resp = handle(req.map(|inner| ClientBody {
            inner,
            sending: ClientWait::new(on_conn.clone(), h2),
        }));
        async move { Ok::<_, Infallible>(resp.await.map(|b| in_flight.hold(b, h2))) }
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
    /// An HTTP/2 stream has waited on the client for [`IDLE`].
    Starved,
    /// The gateway is shutting down.
    Stopping,
}

/// Serves `conn` to its end. Once no request is in flight and no byte moved for [`IDLE`],
/// it is shut down gracefully, and closed outright if after [`CHECK`] more it is still
/// open with none in flight: an HTTP/2 client that never answers the PING of a graceful
/// shutdown would otherwise keep it. Once a request waits on the client and no byte moved
/// for [`IDLE`], or one HTTP/2 wait for the client has lasted that long, it is closed
/// outright. When `stopping` turns true (the gateway's
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
                if !activity.next_interval() {
                    break End::Starved;
                }
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
        End::Starved => {
            tracing::debug!(
                "closing an HTTP/2 connection on which a stream waited {IDLE:?} for its client"
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn held(body: Body, h2: bool) -> (Arc<Activity>, Body) {
        let activity = Arc::new(Activity::default());
        let body = InFlight::enter(&activity).hold(body, h2);
        (activity, body)
    }

    /// On HTTP/2 a twin's large chunk reaches hyper in pieces of at most [`SLICE`] bytes,
    /// in order, with the trailers after them; on HTTP/1.1 as it came.
    #[tokio::test]
    async fn http2_responses_are_handed_on_in_slices() {
        let chunk: Vec<u8> = (0..(2 * SLICE + 100)).map(|i| i as u8).collect();
        let stream = || {
            let frames = [
                Frame::data(Bytes::from(chunk.clone())),
                Frame::data(Bytes::from_static(b"tail")),
                Frame::trailers(http::HeaderMap::new()),
            ];
            Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames.map(Ok::<_, Infallible>),
            )))
        };
        let (_, mut sliced) = held(stream(), true);
        let mut sizes = Vec::new();
        let mut data = Vec::new();
        while let Some(frame) = sliced.frame().await {
            match frame.unwrap().into_data() {
                Ok(d) => {
                    sizes.push(d.len());
                    data.extend_from_slice(&d);
                }
                Err(f) => {
                    assert!(f.is_trailers());
                    sizes.push(0);
                }
            }
        }
        assert_eq!(sizes, [SLICE, SLICE, 100, 4, 0]);
        assert_eq!(data, [chunk.as_slice(), b"tail"].concat());

        let (_, mut whole) = held(stream(), false);
        let first = whole.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), chunk.len());
    }

    /// What is left of a sliced chunk counts in the body's size and keeps it from ending.
    #[tokio::test]
    async fn a_slice_left_over_counts_in_the_size() {
        let (_, mut body) = held(Body::from(vec![7u8; SLICE + 10]), true);
        assert_eq!(body.size_hint().exact(), Some(SLICE as u64 + 10));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), SLICE);
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(10));
        let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(rest.len(), 10);
        assert!(body.frame().await.is_none());
    }

    /// An HTTP/2 wait for the client is found once it has spanned `AGES - 1` whole check
    /// intervals ([`IDLE`]), not before; an ended wait, and an HTTP/1.1 one, never are.
    #[test]
    fn an_http2_wait_is_found_after_idle_intervals() {
        let activity = Arc::new(Activity::default());
        let mut timed = ClientWait::new(activity.clone(), true);
        let mut untimed = ClientWait::new(activity.clone(), false);
        let mut short = ClientWait::new(activity.clone(), true);
        assert!(activity.next_interval());
        timed.begin();
        untimed.begin();
        short.begin();
        assert!(activity.waits_on_client());
        for interval in 1..AGES {
            if interval == 3 {
                short.end();
                short.begin();
                short.end();
            }
            assert!(activity.next_interval(), "interval {interval}");
        }
        // The wait began in interval 1; interval 1 + AGES reuses its slot.
        assert!(!activity.next_interval());
        timed.end();
        assert!(activity.next_interval());
        for _ in 0..2 * AGES {
            assert!(activity.next_interval());
        }
        drop(untimed);
        assert!(!activity.waits_on_client());
    }
}
