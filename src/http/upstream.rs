//! Connections to twin services.
//!
//! HTTP/1.1 upstreams: every worker keeps its own idle connections per route, so no pool is
//! shared between cores and its lock is never contended. A connection goes back to the pool
//! only once its response body has been read to the end (a connection whose body was
//! abandoned is closed, never reused mid-message). A request that a pooled connection could
//! not send, because the twin had closed it meanwhile, is sent again on a new connection:
//! nothing of it reached the twin.
//!
//! HTTP/2 upstreams (prior knowledge) multiplex over one connection and use hyper's pooled
//! client.

use super::deadline::Deadlines;
use super::proxy::UploadBody;
use crate::routing::Route;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How long an idle connection is kept before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per route and worker; more are closed when they come back.
const MAX_IDLE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("connecting to {authority} took longer than {timeout:?}")]
    ConnectTimeout {
        authority: String,
        timeout: Duration,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    #[error("no upstream is configured for this route")]
    NoRoute,
}

/// One worker's clients, indexed like the routes.
pub struct Upstreams {
    routes: Vec<RouteClient>,
    deadlines: Arc<Deadlines>,
}

enum RouteClient {
    /// hyper's HTTP/1.1 client for requests served through hyper, and plain sockets for the
    /// fast path, which writes and reads the messages itself.
    Http1 {
        hyper: Arc<Http1Pool>,
        raw: RawPool,
    },
    Http2(Box<Client<HttpConnector, UploadBody>>),
}

impl Upstreams {
    pub fn new(routes: &[Arc<Route>]) -> Self {
        let routes = routes
            .iter()
            .map(|r| {
                let cfg = &r.config;
                if cfg.http2 {
                    let mut c = HttpConnector::new();
                    c.set_connect_timeout(Some(cfg.connect_timeout));
                    c.set_nodelay(true);
                    c.enforce_http(true);
                    RouteClient::Http2(Box::new(
                        Client::builder(TokioExecutor::new())
                            .pool_idle_timeout(IDLE_TIMEOUT)
                            .http2_only(true)
                            .build(c),
                    ))
                } else {
                    RouteClient::Http1 {
                        hyper: Arc::new(Http1Pool {
                            authority: cfg.upstream.connect_to(),
                            connect_timeout: cfg.connect_timeout,
                            idle: IdleList::default(),
                        }),
                        raw: RawPool {
                            authority: cfg.upstream.connect_to(),
                            connect_timeout: cfg.connect_timeout,
                            idle: IdleList::default(),
                        },
                    }
                }
            })
            .collect();
        Upstreams {
            routes,
            deadlines: Arc::default(),
        }
    }

    /// The worker's request deadlines; [`Deadlines::watch`] must run on the worker.
    pub fn deadlines(&self) -> &Arc<Deadlines> {
        &self.deadlines
    }

    /// Whether `route` talks HTTP/2 to its upstream (its requests then need an absolute URI).
    pub fn is_http2(&self, route: &Route) -> bool {
        matches!(self.routes.get(route.index), Some(RouteClient::Http2(_)))
    }

    /// The plain-socket pool of an HTTP/1.1 route, for the fast path.
    pub fn raw(&self, route: &Route) -> Option<&RawPool> {
        match self.routes.get(route.index) {
            Some(RouteClient::Http1 { raw, .. }) => Some(raw),
            _ => None,
        }
    }

    /// Sends `req` (origin-form target for HTTP/1.1, absolute for HTTP/2) to the route's
    /// upstream and returns its response head; the body streams as the caller reads it.
    pub async fn send(
        &self,
        route: &Route,
        req: Request<UploadBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self.routes.get(route.index) {
            Some(RouteClient::Http1 { hyper, .. }) => hyper.send(req).await,
            Some(RouteClient::Http2(client)) => {
                Ok(client.request(req).await?.map(|b| UpstreamBody {
                    inner: b,
                    back: None,
                }))
            }
            None => Err(UpstreamError::NoRoute),
        }
    }
}

/// Idle connections of one route in one worker, most recently used last: reuse takes the
/// warmest connection, expiry looks at the front. The lock is never contended (one worker
/// thread uses it); it is there because tasks must be `Send`.
pub struct IdleList<T> {
    items: Mutex<Vec<Idle<T>>>,
}

impl<T> Default for IdleList<T> {
    fn default() -> Self {
        IdleList {
            items: Mutex::new(Vec::new()),
        }
    }
}

struct Idle<T> {
    conn: T,
    since: Instant,
}

impl<T> IdleList<T> {
    /// The warmest connection that is still `usable` and not idle for too long.
    fn checkout(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut idle = self.items.lock().ok()?;
        while let Some(i) = idle.pop() {
            if usable(&i.conn) && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.conn);
            }
        }
        None
    }

    fn put_back(&self, conn: T) {
        let Ok(mut idle) = self.items.lock() else {
            return;
        };
        let now = Instant::now();
        let expired = idle
            .iter()
            .take_while(|i| now.saturating_duration_since(i.since) >= IDLE_TIMEOUT)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since: now });
        }
    }
}

async fn connect_tcp(
    authority: &str,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout {
            authority: authority.to_owned(),
            timeout,
        })?
        .map_err(|source| UpstreamError::Connect {
            authority: authority.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A pooled plain connection's read buffer: room for a typical response head and body.
const RAW_BUFFER: usize = 16 * 1024;

/// Whether an idle twin connection has nothing to read. Bytes there (a late body to a HEAD,
/// bytes past a length, an unsolicited 408) would be read as the next request's response,
/// which may be another user's; end-of-stream means the twin closed it.
///
/// The runtime's readiness answers first, without a system call: reading the previous
/// response to its end left the socket marked drained, and any byte or close that came
/// since, up to the worker's last look at its events, marked it readable again. Only then
/// is the socket itself asked. A worker takes in its events before it serves a request
/// that woke it and, while busy, every few dozen tasks, so whatever came while the
/// connection idled is seen; what lands in the
/// last moments before reuse could equally land just after any check, which is why
/// connections that may still carry a late body are never pooled at all.
fn quiet(stream: &tokio::net::TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let peek = || {
        let mut probe = 0u8;
        // SAFETY: a one-byte buffer that lives across the call; MSG_PEEK leaves the byte
        // in the socket and MSG_DONTWAIT keeps the call from blocking.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                std::ptr::addr_of_mut!(probe).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n)
        }
    };
    // A `WouldBlock` from the peek also clears the readiness, so the read of this
    // connection's next response waits for the twin instead of first trying in vain.
    matches!(
        stream.try_io(tokio::io::Interest::READABLE, peek),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// One route's idle HTTP/1.1 connections for the fast path: plain sockets, each with the
/// bytes read from it but not yet used.
pub struct RawPool {
    authority: String,
    connect_timeout: Duration,
    idle: IdleList<RawConn>,
}

pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    pub buf: bytes::BytesMut,
}

impl RawPool {
    pub fn checkout(&self) -> Option<RawConn> {
        self.idle.checkout(|c| quiet(&c.stream))
    }

    pub async fn connect(&self) -> Result<RawConn, UpstreamError> {
        Ok(RawConn {
            stream: connect_tcp(&self.authority, self.connect_timeout).await?,
            buf: bytes::BytesMut::with_capacity(RAW_BUFFER),
        })
    }

    /// Returns a connection whose last response was read to its end, and nothing beyond.
    /// A buffer grown by a large body is not kept while the connection idles.
    pub fn put_back(&self, mut conn: RawConn) {
        debug_assert!(conn.buf.is_empty());
        if conn.buf.capacity() > 2 * RAW_BUFFER {
            conn.buf = bytes::BytesMut::with_capacity(RAW_BUFFER);
        }
        self.idle.put_back(conn);
    }
}

/// One route's idle HTTP/1.1 connections in one worker, for requests served through hyper.
pub struct Http1Pool {
    authority: String,
    connect_timeout: Duration,
    idle: IdleList<SendRequest<UploadBody>>,
}

impl Http1Pool {
    async fn send(
        self: &Arc<Self>,
        mut req: Request<UploadBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        loop {
            let (mut sender, fresh) = match self.idle.checkout(|s| !s.is_closed()) {
                Some(s) => (s, false),
                None => (self.connect().await?, true),
            };
            if let Err(e) = sender.ready().await {
                if fresh {
                    return Err(e.into());
                }
                continue; // the twin closed this idle connection; try another
            }
            let uploaded = req.body().finished();
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.track(resp, sender, uploaded)),
                Err(mut e) => match e.take_message() {
                    // Not a byte of it was written: safe to send again on another connection.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn put_back(&self, sender: SendRequest<UploadBody>) {
        if !sender.is_closed() {
            self.idle.put_back(sender);
        }
    }

    async fn connect(&self) -> Result<SendRequest<UploadBody>, UpstreamError> {
        let stream = connect_tcp(&self.authority, self.connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Wraps the response so its connection returns to the pool when the body is done.
    fn track(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<UploadBody>,
        uploaded: Arc<AtomicBool>,
    ) -> Response<UpstreamBody> {
        // After a protocol switch the connection belongs to the upgraded stream.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(|b| UpstreamBody {
                inner: b,
                back: None,
            });
        }
        let (parts, inner) = resp.into_parts();
        let mut body = UpstreamBody {
            inner,
            back: Some((sender, self.clone(), uploaded)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }
}

/// A response body from an upstream; returns its connection to the pool once read through.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(SendRequest<UploadBody>, Arc<Http1Pool>, Arc<AtomicBool>)>,
}

impl UpstreamBody {
    /// Pools the connection, unless the twin answered before the request body was through:
    /// that connection is still uploading, and the next request would wait on it. It closes
    /// once the upload ends.
    fn release(&mut self) {
        if let Some((sender, pool, uploaded)) = self.back.take() {
            if uploaded.load(Ordering::Acquire) {
                pool.put_back(sender);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // An error leaves the connection in an unknown state: it is dropped, not reused.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_does_not_keep_a_grown_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = RawPool {
            authority: listener.local_addr().unwrap().to_string(),
            connect_timeout: Duration::from_secs(1),
            idle: IdleList::default(),
        };
        let mut conn = pool.connect().await.unwrap();
        conn.buf.reserve(1 << 20); // as after relaying a large body
        pool.put_back(conn);
        let conn = pool.checkout().expect("the connection was pooled");
        assert!(conn.buf.capacity() <= 2 * RAW_BUFFER);
    }
}
