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
