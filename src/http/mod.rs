//! The only place HTTP types live. [`serve`] accepts connections (HTTP/1.1 and HTTP/2),
//! normalizes each request's path once, and sends it either to the gateway's own endpoints
//! (an axum router under `/.twinward/`) or to the proxy. The admin listener serves
//! `/healthz`, `/readyz` and `/metrics`, never on the public listener.

pub mod admin;
pub mod browser;
pub mod cookies;
pub mod deadline;
pub mod endpoints;
pub mod error;
pub mod fastpath;
pub mod framing;
pub mod headers;
pub mod idle;
pub mod limit;
pub mod proxy;
pub mod splice;
pub mod ui;
pub mod upstream;
pub mod watched;

use crate::access::Gateway;
use crate::routing::path;
use axum::body::Body;
use axum::routing::{delete, get, post};
use axum::Router;
use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use idle::ClientBody;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The client's socket address, as an extension for the gateway's own endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub upstreams: Arc<upstream::Upstreams>,
    /// The fast path's waits for its clients, watched per worker: for a request head
    /// ([`HEAD_TIMEOUT`]) and for a client to take more of a response (`idle::IDLE`).
    /// hyper's connections have their own (`idle`).
    pub heads: Arc<deadline::Deadlines>,
}

/// How long a client connection may take to send a request head, counted from when the
/// gateway starts waiting for it: the connection's opening or the previous response. It
/// bounds an idle keep-alive connection and a head sent a byte at a time alike, so
/// neither holds a connection (a file descriptor, buffers) for good. Both paths count it
/// the same way: the fast path here, hyper by its `header_read_timeout`.
///
/// It is also the keep-alive time, so it must outlast what the proxies and load balancers
/// in front keep an idle connection to the gateway (AWS ALB's and nginx's upstream
/// keep-alive default to 60 s): one that sends a request just as the gateway closes the
/// connection gets an error, and does not retry a POST. Hence nginx's keep-alive default
/// of 75 s, not less.
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(75);
/// How late a [`HEAD_TIMEOUT`] may fire: its watchdog wakes this often while connections
/// wait, where the upstream deadlines' ticks every 10 ms would buy nothing.
const HEAD_TICK: std::time::Duration = std::time::Duration::from_millis(500);

pub const RESERVED_PREFIX: &str = "/.twinward/";

fn gateway_router(state: AppState) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(endpoints::jwks))
        .route("/.twinward/jwks.json", get(endpoints::jwks))
        .route(
            "/.twinward/verify",
            get(endpoints::verify)
                .head(endpoints::verify)
                .post(endpoints::verify),
        )
        .route("/.twinward/oauth/token", post(endpoints::token_exchange))
        .route("/.twinward/static/{name}", get(ui::static_file))
        .route("/.twinward/login", get(browser::auth::login))
        .route("/.twinward/callback", get(browser::auth::callback))
        .route("/.twinward/logout", post(browser::auth::logout))
        .route("/.twinward/session", get(browser::auth::session_handoff))
        .route(
            "/.twinward/session/confirm",
            get(browser::auth::session_confirm),
        )
        .route("/.twinward/mfa", get(browser::passkey::page))
        .route(
            "/.twinward/api/webauthn/register/start",
            post(browser::passkey::register_start),
        )
        .route(
            "/.twinward/api/webauthn/register/finish",
            post(browser::passkey::register_finish),
        )
        .route(
            "/.twinward/api/webauthn/authenticate/start",
            post(browser::passkey::authenticate_start),
        )
        .route(
            "/.twinward/api/webauthn/authenticate/finish",
            post(browser::passkey::authenticate_finish),
        )
        .route("/.twinward/", get(browser::portal::portal))
        .route("/.twinward/api/me", get(browser::portal::me))
        .route(
            "/.twinward/api/tokens",
            get(browser::portal::api_tokens_list).post(browser::portal::api_tokens_create),
        )
        .route(
            "/.twinward/api/tokens/{id}",
            delete(browser::portal::api_tokens_delete),
        )
        .route(
            "/.twinward/portal/tokens",
            post(browser::portal::form_token_create),
        )
        .route(
            "/.twinward/portal/tokens/{id}/revoke",
            post(browser::portal::form_token_revoke),
        )
        .route(
            "/.twinward/portal/passkeys/{id}/delete",
            post(browser::portal::form_passkey_delete),
        )
        .route(
            "/.twinward/portal/sessions/{id}/revoke",
            post(browser::portal::form_session_revoke),
        )
        .fallback(
            |req: Request<Body>| async move { error::not_found(error::wants_html(req.headers())) },
        )
        .with_state(state)
}

/// Rewrites the request target to its normalized path (query kept as sent), or says why
/// the target is refused.
fn normalize_target(req: &mut Request<ClientBody>) -> Result<path::NormalizedPath, String> {
    let normalized = path::normalize(req.uri().path()).map_err(|e| format!("refused path: {e}"))?;
    if normalized.as_str() != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{}?{}", normalized.as_str(), q),
            None => normalized.as_str().to_owned(),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = pq.parse().ok();
        *req.uri_mut() =
            http::Uri::from_parts(parts).map_err(|_| "invalid request target".to_owned())?;
    }
    Ok(normalized)
}

async fn dispatch(
    state: AppState,
    router: Router,
    peer: SocketAddr,
    mut req: Request<ClientBody>,
) -> Response<Body> {
    let target_authority = req.uri().authority().map(|a| a.as_str());
    let http11 = req.version() == http::Version::HTTP_11;
    if let Err(e) = framing::check(http11, target_authority, req.headers()) {
        let html = error::wants_html(req.headers());
        let status = e.status();
        let title = status.canonical_reason().unwrap_or("Bad Request");
        let mut resp = error::problem(status, title, &e.to_string(), None, html);
        if req.version() <= http::Version::HTTP_11 {
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        return resp;
    }
    framing::settle_host(&mut req);
    let normalized = match normalize_target(&mut req) {
        Ok(p) => p,
        Err(why) => {
            let html = error::wants_html(req.headers());
            return error::problem(StatusCode::BAD_REQUEST, "Bad Request", &why, None, html);
        }
    };
    let p = normalized.as_str();
    if p.starts_with(RESERVED_PREFIX) || p == "/.twinward" || p == "/.well-known/jwks.json" {
        req.extensions_mut().insert(Peer(peer));
        return match router.oneshot(req.map(Body::new)).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    proxy::handle(state, peer, req, normalized).await
}

/// How hyper serves a client connection of either listener: HTTP/1.1 or HTTP/2 as the
/// client speaks, and an HTTP/1.1 head due within [`HEAD_TIMEOUT`] (hyper enforces its
/// `header_read_timeout` only when given a timer).
pub fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    builder
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Serves `addr` with one single-threaded runtime per worker, each with its own
/// `SO_REUSEPORT` listener and its own upstream connection pools: the kernel spreads
/// connections over the workers, and the request path has no work stealing and no pool lock
/// shared between cores. Returns the bound address once every worker listens.
pub fn spawn_workers(
    gateway: Arc<Gateway>,
    addr: SocketAddr,
    workers: usize,
    limit: Arc<limit::ConnectionLimit>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, Vec<std::thread::JoinHandle<()>>)> {
    // Reserve the port (and learn it when the config asks for port 0) without listening,
    // so no connection is queued on a socket nobody accepts from.
    let reserve = reuseport_socket(addr)?;
    reserve.bind(addr)?;
    let bound = reserve.local_addr()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let mut handles = Vec::new();
    for i in 0..workers.max(1) {
        let gateway = gateway.clone();
        let limit = limit.clone();
        let mut shutdown = shutdown.clone();
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("twinward-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match reuseport_socket(bound).and_then(|s| {
                        s.bind(bound)?;
                        s.listen(4096)
                    }) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    serve(gateway, listener, limit, async move {
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    })
                    .await;
                });
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..handles.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(std::io::Error::other(
                    "a worker thread stopped while starting",
                ))
            }
        }
    }
    drop(reserve);
    Ok((bound, handles))
}

/// An HTTP/2 stream refused because every place under `server.max_connections` is taken.
fn at_the_limit() -> Response<Body> {
    let mut response = error::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "the gateway is at its connection limit; retry shortly or on this connection once its other requests are done",
        None,
        false,
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}

/// Serves one listener until `shutdown` resolves, then drains open connections. Accepts
/// only while `limit` has room.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    limit: Arc<limit::ConnectionLimit>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let upstreams = Arc::new(upstream::Upstreams::new(gateway.routes.routes()));
    let watchdog = tokio::spawn(upstreams.deadlines().clone().watch());
    let heads = Arc::new(deadline::Deadlines::with_tick(HEAD_TICK));
    let heads_watchdog = tokio::spawn(heads.clone().watch());
    let state = AppState {
        gateway,
        upstreams,
        heads,
    };
    let router = gateway_router(state.clone());
    let builder = connection_builder();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Waits with the connection accepted, not before accepting: a worker holding a
        // place while it waited on its own listener would leave a connection queued on
        // another's with a place free. So each worker holds at most one connection beyond
        // the limit, unserved.
        let admitted = tokio::select! {
            a = limit.admit() => a,
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let router = router.clone();
        let builder = builder.clone();
        let connection_limit = limit.clone();
        // Held while the fast path serves the connection too, so shutdown waits for it.
        let watcher = graceful.watcher();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let (stream, read) = match fastpath::serve(&state, stream, peer, &mut stopping).await {
                fastpath::Served::Done => return,
                fastpath::Served::Handoff(stream, read) => (stream, read),
            };
            // A websocket outlives the connection's HTTP serving: it takes the slot over.
            let admitted = Arc::new(admitted);
            let held = admitted.clone();
            let streams = limit::StreamPlaces::new(connection_limit);
            let handle = move |mut req: Request<ClientBody>| {
                if req.headers().contains_key(http::header::UPGRADE) {
                    req.extensions_mut()
                        .insert(limit::ConnectionSlot(held.clone()));
                }
                let place = if req.version() == http::Version::HTTP_2 {
                    match streams.take() {
                        Some(place) => Some(place),
                        None => {
                            return futures_util::future::Either::Left(std::future::ready(
                                at_the_limit(),
                            ))
                        }
                    }
                } else {
                    None
                };
                let served = dispatch(state.clone(), router.clone(), peer, req);
                futures_util::future::Either::Right(async move {
                    let response = served.await;
                    match place {
                        Some(place) => response.map(|body| place.hold(body)),
                        None => response,
                    }
                })
            };
            let io = fastpath::Rewind::new(stream, read);
            idle::serve_http(&builder, io, stopping, handle).await;
            drop(admitted);
            drop(watcher);
        });
    }
    let _ = stopping_tx.send(true);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => tracing::warn!("connections still open after 30s; closing"),
    }
    watchdog.abort();
    heads_watchdog.abort();
}
