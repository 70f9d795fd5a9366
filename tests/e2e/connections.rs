//! The gateway-wide limit on client connections, and the open-file limit it is fitted to.

use crate::common::*;
use crate::streaming::ws_connect;
use futures_util::SinkExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads what `s` answers within `wait`: `None` if it answers nothing in that time.
async fn answer_within(s: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, s.read(&mut buf)).await {
        Err(_) => None,
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(e)) => Some(format!("error: {e}")),
    }
}

/// The request sent on `s` is answered with 200 within 5 s.
async fn assert_served(s: &mut tokio::net::TcpStream, when: &str) {
    let answer = answer_within(s, Duration::from_secs(5)).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200 ")),
        "{when}: {answer:?}"
    );
}

fn metric(gw: &Gateway, name: &str) -> Option<f64> {
    let m = admin_get(gw, "/metrics").body;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// With `max_connections = 3` taken by two idle connections and a websocket, a fourth
/// connection's request is not answered until one of them closes; the websocket holds its
/// place after the upgrade, until it closes.
#[tokio::test(flavor = "multi_thread")]
async fn past_max_connections_a_connection_waits_until_one_closes() {
    let up = Upstream::start().await;
    let ws_up = WsUpstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("plant", "/plant", up.addr, "plant-7", 2),
            RouteSpec::new("ws", "/ws", ws_up.addr, "plant-7", 2),
        ],
        server_extra: "max_connections = 3".into(),
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let request =
        format!("GET /plant/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");

    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let mut ws = ws_connect(&gw, "/ws/live", Some(&token))
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    // The websocket's connection has been served (its upgrade answered): three places
    // are taken.
    let mut fourth = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    fourth.write_all(request.as_bytes()).await.unwrap();
    let early = answer_within(&mut fourth, Duration::from_millis(1500)).await;
    assert_eq!(early, None, "a fourth connection was served at the limit");
    assert_eq!(metric(&gw, "twinward_client_connections"), Some(3.0));
    assert_eq!(
        metric(&gw, "twinward_connection_limit_waits_total"),
        Some(1.0)
    );

    ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .unwrap();
    drop(ws);
    assert_served(&mut fourth, "once the websocket closed").await;

    // The idle ones hold theirs until they close too.
    let mut fifth = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    fifth.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        answer_within(&mut fifth, Duration::from_millis(1500)).await,
        None,
        "a fifth connection was served at the limit"
    );
    idle.clear();
    assert_served(&mut fifth, "once the idle ones closed").await;
}

/// A twin that answers each request with the start of its body at once and the rest 3 s
/// later.
async fn pausing_twin() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head_async(&mut s).await.is_none() {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfirst")
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _ = s.write_all(b"last").await;
            });
        }
    });
    addr
}

/// An HTTP/2 connection's streams beyond the first in flight take places of their own
/// (each may hold a twin connection), until their responses are done; one that finds none
/// free is refused with 503 rather than made to wait; the connection's own place serves
/// its next stream once the first is done. With `max_connections = 3`: one HTTP/2
/// connection with three responses still streaming holds all three places.
#[tokio::test(flavor = "multi_thread")]
async fn http2_streams_beyond_the_first_take_places_of_their_own() {
    use http_body_util::{BodyExt, Full};
    let up = Upstream::start().await;
    let pausing = pausing_twin().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("plant", "/plant", up.addr, "plant-7", 2),
            RouteSpec::new("pause", "/pause", pausing, "plant-7", 2),
        ],
        server_extra: "max_connections = 3".into(),
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        let mut send = send.clone();
        let req = hyper::Request::get(format!("http://gw{path}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        async move {
            let r = send.send_request(req).await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (status, retry, body)
        }
    };
    // Their heads come at once, the ends of their bodies 3 s later.
    let slow: Vec<_> = (0..3)
        .map(|i| tokio::spawn(get(&format!("/pause/{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(&gw, "twinward_client_http2_extra_streams"),
        Some(2.0)
    );

    // A fourth stream finds no place: refused at once, to be retried.
    let (status, retry, _) = tokio::time::timeout(Duration::from_secs(2), get("/plant/x"))
        .await
        .expect("a stream past the limit is answered at once");
    assert_eq!(status, 503);
    assert_eq!(retry.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));

    // A new connection waits for a place.
    let mut other = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request =
        format!("GET /plant/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");
    other.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(
        answer_within(&mut other, Duration::from_millis(1500)).await,
        None,
        "a connection was served while three streams held every place"
    );
    for s in slow {
        let (status, _, body) = s.await.unwrap();
        assert_eq!((status, body.as_ref()), (200, &b"firstlast"[..]));
    }
    assert_served(&mut other, "once the streams were done").await;
    assert_eq!(
        metric(&gw, "twinward_client_http2_extra_streams"),
        Some(0.0)
    );

    // With the last place taken by another connection, the HTTP/2 connection's own place
    // still serves its next stream.
    let mut filler = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    filler.write_all(request.as_bytes()).await.unwrap();
    assert_served(&mut filler, "a third connection").await;
    let (status, _, _) = get("/plant/y").await;
    assert_eq!(
        status, 200,
        "the HTTP/2 connection's own place was not freed"
    );
}

/// The gateway raises its soft open-file limit to the hard one, and serves no more
/// connections than that limit covers (two descriptors each, 256 kept for the rest),
/// saying so when that is fewer than configured.
#[test]
fn the_open_file_limit_is_raised_and_bounds_the_connections() {
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    let hard = own.rlim_max.min(4096);
    assert!(
        hard >= 1024,
        "this test needs a hard open-file limit of 1024 or more"
    );

    let raised = Gateway::start(GatewayOptions {
        open_files: Some((512, hard)),
        ..Default::default()
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", raised.pid())).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        open_files[3..5],
        [hard.to_string(), hard.to_string()],
        "{limits}"
    );
    let expected = (hard - 256) / 2;
    let log = raised.log();
    assert!(
        log.contains(&format!("max_connections={expected}")),
        "{log}"
    );
    assert!(
        log.contains("serving fewer connections than server.max_connections"),
        "{log}"
    );

    let ample = Gateway::start(GatewayOptions {
        open_files: Some((512, hard)),
        server_extra: "max_connections = 100".into(),
        ..Default::default()
    });
    let log = ample.log();
    assert!(log.contains("max_connections=100"), "{log}");
    assert!(!log.contains("serving fewer connections"), "{log}");
}
