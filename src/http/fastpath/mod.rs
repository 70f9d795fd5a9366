//! The HTTP/1.1 fast path. A plain keep-alive request without a body, for an HTTP/1.1
//! twin, is read, decided and forwarded straight from the sockets: the head parsed in
//! place, the upstream head written in one piece to a pooled plain connection, the
//! response head rewritten in one piece, no header maps, body channels or connection
//! tasks per request.
//!
//! Everything else goes to hyper together with the bytes read so far, and hyper serves the
//! rest of that connection: a request with a body, an upgrade, HTTP/1.0, HTTP/2, the
//! gateway's own endpoints, a path normalization refuses, an unknown route, and any head
//! the fast path does not fully understand. So hyper stays the judge of unusual input, and
//! the fast path decides nothing hyper would not: it hands over before authorization, or
//! not at all.
//!
//! Both paths keep the proxy's invariants (tests send the same requests down both and
//! compare what the twin receives): the twin gets the normalized path policy decided on,
//! never the client's `Authorization`, the gateway cookies or any `X-Twinward-*` header,
//! and only the gateway's forwarding headers.

mod chunked;
mod request;
mod response;
mod rewind;
mod send;
mod write;

pub use rewind::Rewind;

use super::deadline::Deadlines;
use super::upstream::{RawConn, RawPool, UpstreamError};
use super::{error, proxy, AppState, HEAD_TIMEOUT, RESERVED_PREFIX};
use crate::access::Grant;
use crate::clock::Timestamp;
use crate::routing::path::{self, NormalizedPath};
use crate::routing::Route;
use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use chunked::Dechunk;
use http::Response;
use http_body_util::BodyExt;
use request::Plain;
use response::{BadResponse, Framing, Parsed};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A longer request head goes to hyper, which applies its own limit.
const MAX_HEAD: usize = 16 * 1024;
/// More header lines than this: hyper's business.
const MAX_HEADERS: usize = 64;
/// Twin response heads longer than this are refused (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Body bytes read from the twin per read while relaying.
const RELAY_CHUNK: usize = 64 * 1024;
/// The most output buffer a connection keeps between requests.
const MAX_KEPT_OUT: usize = 64 * 1024;

/// How the fast path left a connection.
pub enum Served {
    /// Closed (by either side, or at shutdown).
    Done,
    /// For hyper to serve from here on, with the bytes already read from it.
    Handoff(TcpStream, Bytes),
}

/// The client connection's peer.
struct Peer {
    addr: SocketAddr,
    /// For a peer that is not a trusted proxy: the client address and the
    /// `X-Forwarded-For` sent for it, the same for every request on the connection (what
    /// `proxy::client_ip` and `proxy::forwarding` give for such a peer).
    direct: Option<(IpAddr, String)>,
}

impl Peer {
    /// `None` when a trusted proxy's header names no client: hyper's path refuses that.
    fn client_ip(
        &self,
        gw: &crate::access::Gateway,
        headers: &[httparse::Header<'_>],
    ) -> Option<IpAddr> {
        match &self.direct {
            Some((ip, _)) => Some(*ip),
            None => proxy::client_ip(gw, self.addr.ip(), headers).ok(),
        }
    }

    /// `X-Forwarded-For` and `-Proto` for a request on this connection.
    fn forwarding<'s>(
        &'s self,
        gw: &crate::access::Gateway,
        client_ip: IpAddr,
        headers: &[httparse::Header<'_>],
    ) -> (Cow<'s, str>, &'static str) {
        match &self.direct {
            Some((_, text)) => (Cow::Borrowed(text.as_str()), "http"),
            None => {
                let (xff, proto) = proxy::forwarding(gw, self.addr, client_ip, headers);
                (Cow::Owned(xff), proto)
            }
        }
    }

    fn new(state: &AppState, addr: SocketAddr) -> Peer {
        let direct = (!state.gateway.network.is_trusted(addr.ip())).then(|| {
            let ip = crate::signals::network::canonical(addr.ip());
            (ip, ip.to_string())
        });
        Peer { addr, direct }
    }
}

/// Buffers one client connection reuses for all its requests.
struct Buffers {
    /// Bytes read from the client and not yet answered.
    client: BytesMut,
    /// The head sent upstream.
    upstream_head: Vec<u8>,
    /// What is written to the client next.
    out: Vec<u8>,
}

/// Serves `stream` while its requests are plain; `stopping` turns true at shutdown, after
/// which the connection closes once its current request is answered.
pub async fn serve(
    state: &AppState,
    mut stream: TcpStream,
    peer: SocketAddr,
    stopping: &mut watch::Receiver<bool>,
) -> Served {
    let peer = Peer::new(state, peer);
    let mut bufs = Buffers {
        client: BytesMut::with_capacity(4096),
        upstream_head: Vec::with_capacity(1024),
        out: Vec::with_capacity(4096),
    };
    loop {
        let head_len = match read_head(&state.heads, &mut stream, &mut bufs.client, stopping).await
        {
            HeadRead::Complete(n) => n,
            HeadRead::Closed => return Served::Done,
            HeadRead::Unusual => return Served::Handoff(stream, bufs.client.freeze()),
        };
        let keep_open = {
            let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut lines);
            let complete = matches!(parsed.parse(&bufs.client[..head_len]), Ok(httparse::Status::Complete(n)) if n == head_len);
            let plan = match (complete, parsed.method, parsed.path, parsed.version) {
                (true, Some(m), Some(t), Some(v)) => {
                    request::classify(m, t, v, parsed.headers).and_then(|p| plan(state, &peer, p))
                }
                _ => None,
            };
            match plan {
                None => None,
                Some(plan) => {
                    let stop_after = *stopping.borrow();
                    Some(
                        answer(
                            state,
                            &mut stream,
                            &mut bufs.upstream_head,
                            &mut bufs.out,
                            &peer,
                            plan,
                            stop_after,
                        )
                        .await,
                    )
                }
            }
        };
        match keep_open {
            None => return Served::Handoff(stream, bufs.client.freeze()),
            Some(false) => return Served::Done,
            Some(true) => bufs.client.advance(head_len),
        }
        // A large response leaves `out` grown; an open connection does not keep that.
        if bufs.out.capacity() > MAX_KEPT_OUT {
            bufs.out = Vec::with_capacity(4096);
        }
        if *stopping.borrow() {
            return Served::Done;
        }
    }
}

enum HeadRead {
    Complete(usize),
    Closed,
    /// Too long, ended early, or otherwise not for the fast path.
    Unusual,
}

/// Reads until `buf` holds a whole request head, within [`HEAD_TIMEOUT`] (else the
/// connection closes, as hyper closes one whose head is late). The deadline sits in the
/// worker's list, `heads`, not in a tokio timer: most keep-alive waits register one.
async fn read_head(
    heads: &Deadlines,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    stopping: &mut watch::Receiver<bool>,
) -> HeadRead {
    // Taken at the first read: a pipelined head already in `buf` waits for nothing.
    let mut deadline = None;
    loop {
        if let Some(n) = head_end(buf) {
            return HeadRead::Complete(n);
        }
        if buf.len() >= MAX_HEAD {
            return HeadRead::Unusual;
        }
        buf.reserve(4096);
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + HEAD_TIMEOUT);
        let read = if buf.is_empty() {
            // Between requests: wait for the next one, or for shutdown.
            tokio::select! {
                biased;
                r = heads.within(deadline, stream.read_buf(buf)) => r,
                _ = stopping.wait_for(|s| *s) => return HeadRead::Closed,
            }
        } else {
            heads.within(deadline, stream.read_buf(buf)).await
        };
        let Ok(read) = read else {
            return HeadRead::Closed;
        };
        match read {
            Ok(0) if buf.is_empty() => return HeadRead::Closed,
            // A head cut short: hyper answers it as it answers any malformed request.
            Ok(0) => return HeadRead::Unusual,
            Ok(_) => {}
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// The length of the request head at the start of `buf` (through its empty line, CRLF or
/// bare LF), if it is all there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[from..]) {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        from = at + 1;
    }
    None
}

/// A plain request for a route the fast path serves.
struct Plan<'a> {
    req: Plain<'a>,
    client_ip: IpAddr,
    path: NormalizedPath,
    route: Arc<Route>,
    pool: &'a RawPool,
}

/// Everything that would send the request elsewhere (a refused path, the gateway's own
/// endpoints, no route, an HTTP/2 twin, a trusted proxy's header naming no client) is found
/// here, before anything is decided.
fn plan<'a>(state: &'a AppState, peer: &Peer, req: Plain<'a>) -> Option<Plan<'a>> {
    let path = path::normalize(req.path).ok()?;
    let p = path.as_str();
    if p.starts_with(RESERVED_PREFIX) || p == "/.twinward" || p == "/.well-known/jwks.json" {
        return None;
    }
    let route = state.gateway.routes.find(Some(req.host), &path)?.clone();
    let pool = state.upstreams.raw(&route)?;
    let client_ip = peer.client_ip(&state.gateway, req.headers)?;
    Some(Plan {
        req,
        client_ip,
        path,
        route,
        pool,
    })
}

/// Decides and answers one request; returns whether the connection stays open.
async fn answer(
    state: &AppState,
    stream: &mut TcpStream,
    upstream_head: &mut Vec<u8>,
    out: &mut Vec<u8>,
    peer: &Peer,
    plan: Plan<'_>,
    stopping: bool,
) -> bool {
    let gw = &state.gateway;
    let headers = plan.req.headers;
    let html = error::wants_html(headers);
    let client_ip = plan.client_ip;
    let access = proxy::access_request(
        gw,
        &plan.route,
        plan.req.method,
        &plan.path,
        headers,
        client_ip,
    );
    let close = plan.req.close || stopping;
    let (status, keep) = match gw.authorize(&access).await {
        Err(refused) => {
            let target = format!("{}{}", plan.path.as_str(), plan.req.query);
            let uri = target.parse::<http::Uri>().unwrap_or_default();
            let resp = proxy::refusal(gw, &refused, html, Some(plan.req.host), &uri);
            let status = resp.status().as_u16();
            let sent = write_response(state, stream, out, resp, plan.req.is_head(), close).await;
            (status, sent)
        }
        Ok(grant) => {
            forward(
                state,
                stream,
                upstream_head,
                out,
                peer,
                client_ip,
                &plan,
                &grant,
                close,
            )
            .await
        }
    };
    gw.metrics
        .count_request(plan.route.index, &plan.route.config.name, status);
    keep && !close
}

/// Why a request could not be forwarded; answered with 502 or 504.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Connect(#[from] UpstreamError),
    #[error("the twin closed the connection or failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the twin closed the connection before answering")]
    Closed,
    #[error(transparent)]
    Response(#[from] BadResponse),
    #[error("the twin's response head is too long")]
    HeadTooLong,
    #[error("timed out")]
    Timeout,
}

/// Forwards an allowed request and relays the answer; returns the status the client got
/// and whether the client connection is still usable.
#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &AppState,
    stream: &mut TcpStream,
    upstream_head: &mut Vec<u8>,
    out: &mut Vec<u8>,
    peer: &Peer,
    client_ip: IpAddr,
    plan: &Plan<'_>,
    grant: &Grant,
    close: bool,
) -> (u16, bool) {
    let gw = &state.gateway;
    let cfg = &plan.route.config;
    let head_request = plan.req.is_head();
    let Some(assertion) = grant.credential.header.as_ref() else {
        let resp = error::credential_unattached(&grant.decision_id, false);
        return (
            500,
            write_response(state, stream, out, resp, head_request, close).await,
        );
    };
    let (xff, proto) = peer.forwarding(gw, client_ip, plan.req.headers);
    let bearer = cfg.credential_as_bearer.then_some(&*grant.credential.token);
    upstream_head.clear();
    request::write_upstream_head(
        upstream_head,
        &plan.req,
        plan.path.as_str(),
        &request::Additions {
            upstream_host: plan.route.upstream_host.as_ref().map(|h| h.as_bytes()),
            forwarded_for: &xff,
            forwarded_proto: proto,
            assertion: assertion.as_bytes(),
            bearer,
        },
    );

    let started = Instant::now();
    out.clear();
    let exchanged = exchange(
        plan.pool,
        state.upstreams.deadlines(),
        upstream_head,
        head_request,
        close,
        started + cfg.timeout,
        gw.now(),
        out,
    )
    .await;
    gw.metrics
        .observe_upstream(plan.route.index, &cfg.name, started.elapsed().as_secs_f64());
    let (mut conn, head) = match exchanged {
        Ok(x) => x,
        Err(failure) => {
            let decision_id = grant.decision_id.as_str();
            let resp = if matches!(failure, Failure::Timeout) {
                tracing::warn!(route = %cfg.name, decision_id, "upstream timed out");
                error::upstream_timeout(decision_id)
            } else {
                tracing::warn!(route = %cfg.name, decision_id, error = %failure, "upstream unreachable");
                let detail = match failure {
                    Failure::Response(BadResponse::Switched) => error::SWITCHED_UNASKED,
                    Failure::Response(_) | Failure::HeadTooLong => error::CANNOT_PASS_ON,
                    _ => error::UNREACHABLE,
                };
                error::bad_gateway(detail, decision_id)
            };
            let status = resp.status().as_u16();
            return (
                status,
                write_response(state, stream, out, resp, head_request, close).await,
            );
        }
    };
    let mut sent = false;
    match relay_body(
        &mut conn,
        head.framing,
        &state.heads,
        stream,
        out,
        &mut sent,
    )
    .await
    {
        Ok(()) => {
            // After a bodiless answer to a HEAD, or a 204/304 that announced a body, a naive
            // twin may still send that body later, on a connection another request would
            // take: those are not pooled.
            let body_may_follow =
                head.framing == Framing::Empty && (head_request || head.body_announced);
            if head.keep_alive && conn.buf.is_empty() && !body_may_follow {
                plan.pool.put_back(conn);
            }
            (head.status, true)
        }
        Err(Failure::Response(e)) if !sent => {
            // The body went wrong in the bytes that came with the head, before anything
            // reached the client: it gets a 502 instead.
            tracing::warn!(route = %cfg.name, decision_id = %grant.decision_id, error = %e, "bad twin response");
            out.clear();
            let resp = error::bad_gateway(error::CANNOT_PASS_ON, &grant.decision_id);
            (
                502,
                write_response(state, stream, out, resp, head_request, close).await,
            )
        }
        Err(e) => {
            // The head is out: the only way left to tell the client is to close.
            tracing::debug!(route = %cfg.name, error = %e, "response relay ended early");
            (head.status, false)
        }
    }
}

/// Sends the request head on a pooled connection (or a new one) and reads the response
/// head, writing the client's head into `out`. A pooled connection the twin closed before
/// answering is replaced by a new one and the request sent again: the methods the fast
/// path serves are idempotent.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    pool: &RawPool,
    deadlines: &Deadlines,
    upstream_head: &[u8],
    head_request: bool,
    close: bool,
    deadline: Instant,
    now: Timestamp,
    out: &mut Vec<u8>,
) -> Result<(RawConn, response::Head), Failure> {
    loop {
        let (mut conn, pooled) = match pool.checkout() {
            Some(c) => (c, true),
            None => (pool.connect().await?, false),
        };
        let attempt = deadlines
            .within(
                deadline,
                send_and_read_head(&mut conn, upstream_head, head_request, close, now, out),
            )
            .await;
        match attempt {
            Err(_) => return Err(Failure::Timeout),
            Ok(Ok(head)) => return Ok((conn, head)),
            Ok(Err(Failure::Closed | Failure::Io(_))) if pooled && conn.buf.is_empty() => {
                out.clear();
                continue;
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

async fn send_and_read_head(
    conn: &mut RawConn,
    upstream_head: &[u8],
    head_request: bool,
    close: bool,
    now: Timestamp,
    out: &mut Vec<u8>,
) -> Result<response::Head, Failure> {
    conn.stream.write_all(upstream_head).await?;
    loop {
        if !conn.buf.is_empty() {
            match response::translate_head(&conn.buf, head_request, close, now, out)? {
                Parsed::Final(n, head) => {
                    conn.buf.advance(n);
                    return Ok(head);
                }
                Parsed::Interim(n) => {
                    conn.buf.advance(n);
                    continue;
                }
                Parsed::Partial if conn.buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(Failure::HeadTooLong)
                }
                Parsed::Partial => {}
            }
        }
        conn.buf.reserve(8192);
        if conn.stream.read_buf(&mut conn.buf).await? == 0 {
            return Err(Failure::Closed);
        }
    }
}

/// Relays the response body after its head (already in `out`) to the client. `sent`
/// becomes true once anything has been written to the client: until then a failure can
/// still be answered with an error response.
async fn relay_body(
    conn: &mut RawConn,
    framing: Framing,
    stalls: &Deadlines,
    client: &mut TcpStream,
    out: &mut Vec<u8>,
    sent: &mut bool,
) -> Result<(), Failure> {
    match framing {
        Framing::Empty => {
            *sent = true;
            send::all(stalls, client, out).await?
        }
        Framing::Length(mut left) => {
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(conn.buf.len());
            out.extend_from_slice(&conn.buf[..take]);
            conn.buf.advance(take);
            left -= take as u64;
            *sent = true;
            send::all(stalls, client, out).await?;
            while left > 0 {
                conn.buf.clear();
                conn.buf.reserve(RELAY_CHUNK);
                if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                    return Err(Failure::Closed);
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(conn.buf.len());
                send::all(stalls, client, &conn.buf[..take]).await?;
                conn.buf.advance(take);
                left -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut chunks = Dechunk::default();
            loop {
                let used = chunks.feed(&conn.buf, out)?;
                conn.buf.advance(used);
                if !out.is_empty() {
                    *sent = true;
                    send::all(stalls, client, out).await?;
                    out.clear();
                }
                if chunks.is_done() {
                    break;
                }
                conn.buf.reserve(RELAY_CHUNK);
                if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                    return Err(Failure::Closed);
                }
            }
        }
        Framing::UntilClose => {
            loop {
                if !conn.buf.is_empty() {
                    write::push_chunk(out, &conn.buf);
                    conn.buf.clear();
                }
                if !out.is_empty() {
                    *sent = true;
                    send::all(stalls, client, out).await?;
                    out.clear();
                }
                conn.buf.reserve(RELAY_CHUNK);
                if conn.stream.read_buf(&mut conn.buf).await? == 0 {
                    break;
                }
            }
            send::all(stalls, client, write::LAST_CHUNK).await?;
        }
    }
    Ok(())
}

/// Writes one of the gateway's own responses (a refusal, 502, 504); their bodies are small
/// and whole. Returns whether it was written.
async fn write_response(
    state: &AppState,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
) -> bool {
    let now = state.gateway.now();
    let (parts, body) = resp.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    out.clear();
    write::push(out, b"HTTP/1.1 ");
    write::push_decimal(out, u64::from(parts.status.as_u16()));
    write::push(out, b" ");
    write::push(
        out,
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    write::push(out, b"\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        write::push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(http::header::DATE) {
        write::push_date(out, now);
    }
    write::push_content_length(out, body.len() as u64);
    if close {
        write::push_header(out, b"connection", b"close");
    }
    write::push(out, b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
    send::all(&state.heads, stream, out).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nGET"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }
}
