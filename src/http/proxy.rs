//! The proxy: authorize → mint → forward. Bodies stream both ways (nothing is buffered),
//! connections to upstreams are pooled and kept alive, websockets are spliced after the
//! upgrade.
//!
//! INVARIANT: the upstream receives exactly the normalized path that policy decided on, and
//! never the client's `Authorization`, the gateway cookie, or any inbound `X-Twinward-*`.

use super::error;
use super::headers::{visible_ascii, HeaderLines};
use super::idle::ClientBody;
use super::AppState;
use crate::access::AccessRequest;
use crate::routing::path::NormalizedPath;
use crate::routing::Route;
use crate::signals::network::{ForwardingHeader, UnattestedClient};
use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub const ASSERTION_HEADER: &str = "x-twinward-assertion";
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const ASSERTION: HeaderName = HeaderName::from_static(ASSERTION_HEADER);

/// Forwarding and forward-auth headers a client may send, and the other names frameworks
/// read a client address, scheme, port, prefix or original URL from: the twin trusts the
/// gateway as its proxy, so none of them reaches it as the client wrote it. The gateway
/// sets its own `X-Forwarded-For/Proto/Host`.
pub const INBOUND_FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-protocol",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-original-host",
    "x-original-forwarded-for",
    "x-rewrite-url",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "x-url-scheme",
    "front-end-https",
    "forwarded",
];

/// Connection-specific fields (RFC 9110 §7.6.1), never passed on in either direction.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];
pub const PURPOSE_HEADER: &str = "x-twinward-purpose";
pub use super::cookies::GATEWAY_COOKIES;

/// The request body on its way upstream, which says when it has been sent completely.
pub struct UploadBody {
    inner: ClientBody,
    done: Option<tokio::sync::oneshot::Sender<()>>,
    /// The same, for the connection pool: a connection whose twin answered before the
    /// body was through is still uploading and must not serve another request.
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl UploadBody {
    pub(super) fn new(inner: ClientBody) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut b = UploadBody {
            inner,
            done: Some(tx),
            finished: Arc::default(),
        };
        if hyper::body::Body::is_end_stream(&b.inner) {
            b.finish();
        }
        (b, rx)
    }

    fn finish(&mut self) {
        self.finished
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }

    /// Turns true once the body has been sent completely.
    pub fn finished(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.finished.clone()
    }
}

impl hyper::body::Body for UploadBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                strip_from_trailers(trailers);
            }
        }
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Request trailers reach an HTTP/2 twin as they came (hyper's HTTP/1 client drops them):
/// whatever the head may not carry upstream, the trailers may not either.
fn strip_from_trailers(trailers: &mut HeaderMap) {
    let banned: Vec<HeaderName> = trailers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k == "authorization"
                || k == "cookie"
                || k == "host"
                || k.starts_with("x-twinward-")
                || HOP_BY_HOP.contains(&k)
                || INBOUND_FORWARDING.contains(&k)
                || METHOD_OVERRIDE.contains(&k)
        })
        .cloned()
        .collect();
    for k in banned {
        trailers.remove(k);
    }
}

/// Every line of a list header joined into one value: several `X-Forwarded-For` lines are
/// one list in order (a proxy may append its own line after the client's).
pub fn joined<H: HeaderLines + ?Sized>(headers: &H, name: &'static str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.lines(name) {
        let v = visible_ascii(v)?;
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

/// The client address: the socket peer, or from the configured forwarding header when the
/// peer is a trusted proxy.
pub fn client_ip<H: HeaderLines + ?Sized>(
    gw: &crate::access::Gateway,
    peer: std::net::IpAddr,
    headers: &H,
) -> Result<std::net::IpAddr, UnattestedClient> {
    if !gw.network.is_trusted(peer) {
        return Ok(crate::signals::network::canonical(peer));
    }
    let name = gw.network.header().name();
    let chain = joined(headers, name);
    if chain.is_none() && headers.has(name) {
        return Err(UnattestedClient::Unreadable(name));
    }
    gw.network.client_ip(peer, chain.as_deref())
}

/// Headers some frameworks take as the request's real method.
pub const METHOD_OVERRIDE: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method-override header, if any, that names a method of another action than
/// `method`'s: the twin would do what policy did not decide on (a GET that the twin's
/// framework runs as a DELETE). One of the same action (a PATCH tunnelled through a POST)
/// passes.
pub fn method_override_conflict<H: HeaderLines + ?Sized>(
    method: &str,
    headers: &H,
) -> Option<&'static str> {
    let action = crate::policy::Action::from_method(method);
    METHOD_OVERRIDE.into_iter().find(|name| {
        headers.lines(name).any(|v| {
            visible_ascii(v).is_none_or(|m| crate::policy::Action::from_method(m.trim()) != action)
        })
    })
}

/// The 400 for a request whose trusted proxy did not say who the client is.
pub fn unattested(e: UnattestedClient, html: bool) -> Response<Body> {
    error::problem(
        StatusCode::BAD_REQUEST,
        "Bad Request",
        &e.to_string(),
        None,
        html,
    )
}

/// What authorization reads from a proxied request, read alike on both paths.
pub fn access_request<'a, H: HeaderLines + ?Sized>(
    gw: &'a crate::access::Gateway,
    route: &'a Arc<Route>,
    method: &'a str,
    path: &'a NormalizedPath,
    headers: &'a H,
    client_ip: std::net::IpAddr,
) -> AccessRequest<'a> {
    AccessRequest {
        route,
        method,
        path: path.shared(),
        bearer: bearer(headers),
        session_cookie: gw
            .signin
            .as_ref()
            .and_then(|s| super::cookies::get(headers, s.cfg.cookie_name)),
        client_ip,
        purpose: purpose(headers),
    }
}

/// The answer to a refused request (`target`: the normalized target it was made for): a
/// problem, or with browser sign-in a way back to it after signing in.
pub fn refusal(
    gw: &crate::access::Gateway,
    refused: &crate::access::Refused,
    html: bool,
    host: Option<&str>,
    target: &Uri,
) -> Response<Body> {
    let back = gw
        .signin
        .as_ref()
        .map(|s| (s, error::return_url(&s.cfg, host, target)));
    error::refusal(
        refused,
        html,
        back.as_ref().map(|(s, b)| (&s.cfg, b.as_str())),
    )
}

/// `X-Forwarded-For` and `X-Forwarded-Proto` as sent upstream: the client's address, or
/// the list a trusted proxy sent with that proxy's address appended; `https` only when a
/// trusted proxy says so.
pub fn forwarding<H: HeaderLines + ?Sized>(
    gw: &crate::access::Gateway,
    peer: SocketAddr,
    client_ip: std::net::IpAddr,
    headers: &H,
) -> (String, &'static str) {
    let trusted = gw.network.is_trusted(peer.ip());
    let proto = if trusted && headers.lines("x-forwarded-proto").next() == Some(b"https") {
        "https"
    } else {
        "http"
    };
    // A trusted proxy's chain goes on with its address appended, so the twin can walk it as
    // the gateway did; when the proxies append `Forwarded` instead, an inbound
    // `X-Forwarded-For` is the client's writing and the twin gets the address the walk found.
    let prior = if trusted && gw.network.header() == ForwardingHeader::XForwardedFor {
        joined(headers, "x-forwarded-for")
    } else {
        None
    };
    let xff = match prior {
        Some(p) => format!("{p}, {}", peer.ip()),
        None => client_ip.to_string(),
    };
    (xff, proto)
}

/// `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer<H: HeaderLines + ?Sized>(headers: &H) -> Option<&str> {
    let v = headers.text("authorization")?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The `X-Twinward-Purpose` header when it is short printable text.
pub fn purpose<H: HeaderLines + ?Sized>(headers: &H) -> Option<&str> {
    let v = headers.text(PURPOSE_HEADER)?;
    (v.len() <= 256 && v.chars().all(|c| !c.is_control())).then_some(v)
}

fn is_websocket(req: &Request<ClientBody>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && req
            .headers()
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those the `Connection` header
/// names. With `upgrade`, keeps `Connection: upgrade` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of these: one pass over the names instead of a removal
    // (hash and probe) per hop-by-hop name.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(upgrade && n == header::UPGRADE) {
            headers.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        if !(upgrade && (n == header::UPGRADE || n == header::CONNECTION)) {
            headers.remove(n);
        }
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Removes the client's credentials and anything that claims to come from the gateway.
pub fn strip_client_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    let inbound: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-twinward-"))
        .cloned()
        .collect();
    for k in inbound {
        headers.remove(k);
    }
    let cookies = forwardable_cookies(headers.lines("cookie"));
    headers.remove(header::COOKIE);
    if let Some(v) = cookies.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::COOKIE, v);
    }
}

/// The client's cookies without the gateway's own, as one `Cookie` value; `None` when
/// nothing is left. An unreadable (not visible ASCII) cookie line is not passed on.
pub fn forwardable_cookies<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    let mut out: Option<String> = None;
    let pairs = lines
        .filter_map(visible_ascii)
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .filter(|c| {
            let name = c.split('=').next().unwrap_or_default().trim();
            !GATEWAY_COOKIES.contains(&name)
        });
    for c in pairs {
        match &mut out {
            Some(s) => {
                s.push_str("; ");
                s.push_str(c);
            }
            None => out = Some(c.to_owned()),
        }
    }
    out
}

/// The target sent upstream: the path policy decided on (and the query as sent), origin-form
/// for HTTP/1.1, absolute for HTTP/2. `None` if the request's own target is not that path,
/// which normalization guarantees it is.
fn upstream_target(
    upstreams: &super::upstream::Upstreams,
    route: &Route,
    target: &Uri,
    path: &NormalizedPath,
) -> Option<Uri> {
    if target.path() != path.as_str() {
        return None;
    }
    if upstreams.is_http2(route) {
        let uri = match target.query() {
            Some(q) => format!(
                "http://{}{}?{}",
                route.config.upstream.authority,
                path.as_str(),
                q
            ),
            None => format!(
                "http://{}{}",
                route.config.upstream.authority,
                path.as_str()
            ),
        };
        return uri.parse().ok();
    }
    if target.scheme().is_none() && target.authority().is_none() {
        return Some(target.clone());
    }
    let pq = target.path_and_query()?.clone();
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).ok()
}

pub async fn handle(
    state: AppState,
    peer: SocketAddr,
    req: Request<ClientBody>,
    path: NormalizedPath,
) -> Response<Body> {
    let gw = &state.gateway;
    let html = error::wants_html(req.headers());
    // `dispatch` settled `Host` with the target's authority (`framing::settle_host`).
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let Some(route) = gw.routes.find(host.as_deref(), &path) else {
        return error::not_found(html);
    };
    let route = route.clone();
    let headers = req.headers();
    if let Some(name) = method_override_conflict(req.method().as_str(), headers) {
        return error::problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            &format!(
                "{name} names a method other than the request's; send the request with that method"
            ),
            None,
            html,
        );
    }
    let client_ip = match client_ip(gw, peer.ip(), headers) {
        Ok(ip) => ip,
        Err(e) => return unattested(e, html),
    };
    let access = access_request(gw, &route, req.method().as_str(), &path, headers, client_ip);
    let resp = match gw.authorize(&access).await {
        Err(refused) => refusal(gw, &refused, html, host.as_deref(), req.uri()),
        Ok(grant) => {
            forward(
                &state,
                &route,
                peer,
                client_ip,
                host.as_deref(),
                req,
                &path,
                &grant.credential,
                &grant.decision_id,
            )
            .await
        }
    };
    gw.metrics
        .count_request(route.index, &route.config.name, resp.status().as_u16());
    resp
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    state: &AppState,
    route: &Arc<Route>,
    peer: SocketAddr,
    client_ip: std::net::IpAddr,
    host: Option<&str>,
    mut req: Request<ClientBody>,
    path: &NormalizedPath,
    credential: &crate::credentials::Credential,
    decision_id: &str,
) -> Response<Body> {
    let gw = &state.gateway;
    let cfg = &route.config;
    let html = error::wants_html(req.headers());
    let websocket = is_websocket(&req);
    if websocket && !cfg.websocket {
        return error::problem(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "websockets are not enabled on this route",
            Some(decision_id),
            html,
        );
    }
    let Some(uri) = upstream_target(&state.upstreams, route, req.uri(), path) else {
        return error::problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "the request target cannot be forwarded",
            Some(decision_id),
            html,
        );
    };
    let client_upgrade = if websocket {
        let slot = req
            .extensions()
            .get::<super::limit::ConnectionSlot>()
            .cloned();
        Some((hyper::upgrade::on(&mut req), slot))
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    let (xff, proto) = forwarding(gw, peer, client_ip, &parts.headers);
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers, websocket);
    strip_client_credentials(headers);
    // Most requests carry none of these: one pass over the names instead of a removal
    // (hash and probe) per name.
    if headers
        .keys()
        .any(|k| INBOUND_FORWARDING.contains(&k.as_str()))
    {
        for h in INBOUND_FORWARDING {
            headers.remove(*h);
        }
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(X_FORWARDED_HOST, h);
    }
    if let Some(h) = &route.upstream_host {
        headers.insert(header::HOST, h.clone());
    }
    let Some(cred) = credential.header.clone() else {
        return error::credential_unattached(decision_id, html);
    };
    if cfg.credential_as_bearer {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", credential.token)) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    headers.insert(ASSERTION, cred);
    parts.uri = uri;
    parts.version = if cfg.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let (body, sent) = UploadBody::new(body);
    let up_req = Request::from_parts(parts, body);

    let started = Instant::now();
    // The route timeout runs from the end of the request body to the response headers, so
    // a long upload to a working twin is not cut off.
    let response = state.upstreams.send(route, up_req);
    tokio::pin!(response);
    let result = tokio::select! {
        r = &mut response => Ok(r),
        _ = async {
            let _ = sent.await;
            tokio::time::sleep(cfg.timeout).await;
        } => Err(()),
    };
    gw.metrics
        .observe_upstream(route.index, &cfg.name, started.elapsed().as_secs_f64());
    let mut resp = match result {
        Err(_) => {
            tracing::warn!(route = %cfg.name, decision_id, "upstream timed out");
            return error::upstream_timeout(decision_id);
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %cfg.name, decision_id, error = %e, "upstream unreachable");
            return error::bad_gateway(error::UNREACHABLE, decision_id);
        }
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some((client_upgrade, slot)) = client_upgrade else {
            return error::bad_gateway(error::SWITCHED_UNASKED, decision_id);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let route_name = cfg.name.clone();
        tokio::spawn(async move {
            // Counts against the connection limit until the websocket closes.
            let _slot = slot;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    if let Err(e) = super::splice::splice(TokioIo::new(c), TokioIo::new(u)).await {
                        tracing::debug!(route = %route_name, error = %e, "websocket closed");
                    }
                }
                Err(e) => {
                    tracing::warn!(route = %route_name, error = %e, "websocket upgrade failed")
                }
            }
        });
        let (mut parts, _) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, true);
        strip_gateway_set_cookies(&mut parts.headers);
        return Response::from_parts(parts, Body::empty());
    }

    // Both framings at once: the twin and the gateway may end the body in different places
    // (RFC 9112 §6.3). hyper's client reads it as chunked but keeps the length, by which
    // the client would then be answered. Refused, as on the fast path.
    if resp.headers().contains_key(header::TRANSFER_ENCODING)
        && resp.headers().contains_key(header::CONTENT_LENGTH)
    {
        tracing::warn!(route = %cfg.name, decision_id, "twin response with both Transfer-Encoding and Content-Length");
        return error::bad_gateway(error::CANNOT_PASS_ON, decision_id);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    strip_gateway_set_cookies(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// Removes `Set-Cookie` headers from a twin's response that would set (or clear) the
/// gateway's own cookie: a twin must never be able to plant or end a gateway session.
pub fn strip_gateway_set_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let keep: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !is_gateway_set_cookie(v.as_bytes()))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in keep {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Whether a twin's `Set-Cookie` value must be dropped: it names a gateway cookie, or its
/// name cannot be read (an unreadable name cannot be checked, so it is not passed on).
pub fn is_gateway_set_cookie(value: &[u8]) -> bool {
    let name = visible_ascii(value)
        .and_then(|s| s.split('=').next())
        .map(str::trim);
    name.is_none_or(|n| GATEWAY_COOKIES.iter().any(|g| g.eq_ignore_ascii_case(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_override_of_another_action_is_found() {
        let h = |name: &'static str, v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(v));
            h
        };
        assert_eq!(method_override_conflict("GET", &HeaderMap::new()), None);
        assert_eq!(
            method_override_conflict("GET", &h("x-http-method-override", "DELETE")),
            Some("x-http-method-override")
        );
        assert_eq!(
            method_override_conflict("HEAD", &h("x-http-method", "POST")),
            Some("x-http-method")
        );
        assert_eq!(
            method_override_conflict("POST", &h("x-method-override", "GET")),
            Some("x-method-override")
        );
        assert_eq!(
            method_override_conflict("POST", &h("x-http-method-override", "PATCH")),
            None
        );
        assert_eq!(
            method_override_conflict("GET", &h("x-http-method-override", " HEAD ")),
            None
        );
    }

    #[test]
    fn trailers_lose_what_the_head_may_not_carry_upstream() {
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer twt_x"),
            ("cookie", "__Host-twinward=s"),
            ("x-twinward-assertion", "forged"),
            ("x-forwarded-for", "192.168.20.5"),
            ("x-http-method-override", "DELETE"),
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
        ] {
            t.insert(k, HeaderValue::from_static(v));
        }
        strip_from_trailers(&mut t);
        let mut left: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn twins_cannot_set_the_gateway_cookie() {
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("__Host-twinward=evil; Path=/; Secure"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("twinward=; Max-Age=0"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("theme=dark; Path=/"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("sid=1; HttpOnly"),
        );
        strip_gateway_set_cookies(&mut h);
        let left: Vec<&str> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(left, ["theme=dark; Path=/", "sid=1; HttpOnly"]);
    }

    #[test]
    fn client_credentials_and_gateway_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer twt_x"),
        );
        h.insert("x-twinward-assertion", HeaderValue::from_static("forged"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-twinward=s; b=2"),
        );
        strip_client_credentials(&mut h);
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert!(h.get("x-twinward-assertion").is_none());
        assert_eq!(
            h.get(header::COOKIE).and_then(|v| v.to_str().ok()),
            Some("a=1; b=2")
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret-hop").is_none() && h.get(header::UPGRADE).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none() && h.get(header::CONNECTION).is_none());
        assert!(h.get("x-keep").is_some());
        // Each hop-by-hop name alone, without a Connection header, is still removed.
        for name in HOP_BY_HOP.into_iter().filter(|n| *n != "connection") {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} survived");
            assert_eq!(h.len(), 1);
        }
    }
}
