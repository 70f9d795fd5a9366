//! Streaming, websockets, upstream failures, HTTP/2, pooling and forwarding headers through
//! the real gateway binary.

use crate::common::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

const MIB: u64 = 1 << 20;
/// Peak resident memory the gateway may reach while streaming far more than that.
const RSS_LIMIT_KIB: u64 = 96 * 1024;

/// Peak resident set size (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

async fn plant7(extra: &'static str) -> (Upstream, Gateway, String) {
    let up = Upstream::start().await;
    let mut route = RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2);
    route.extra = extra;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![route],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    (up, gw, token)
}

/// Reads an HTTP/1.1 response head; returns (status, lowercase headers, bytes already read
/// past the head).
fn read_head(s: &mut TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).expect("read response head");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let (status, headers) = parse_head(&head);
    let headers = headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

// ---------------------------------------------------------------------------------------
// a. Bodies stream both ways, nothing is buffered.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn one_gib_request_body_streams_to_the_upstream_in_bounded_memory() {
    const SIZE: u64 = 1 << 30;
    let (up, gw, token) = plant7("").await;
    let addr = gw.addr;
    let started = Instant::now();
    let (status, body) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let head = format!(
            "POST /plant-7/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let chunk = vec![0x5a_u8; MIB as usize];
        for i in 0..SIZE / MIB {
            if let Err(e) = s.write_all(&chunk) {
                panic!("gateway stopped reading after {i} MiB: {e}");
            }
        }
        let (status, _, mut rest) = read_head(&mut s);
        s.read_to_end(&mut rest).unwrap();
        (status, String::from_utf8_lossy(&rest).into_owned())
    })
    .await;
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(gw.pid());
    eprintln!(
        "1 GiB upload: {elapsed:?}, gateway peak RSS {} MiB",
        peak / 1024
    );
    assert_eq!(status, 200, "{body}");
    let seen = up.last().expect("the upstream saw the upload");
    assert_eq!(
        seen.body_len, SIZE,
        "upstream counted a different body size"
    );
    assert!(body.contains(&format!("\"body_len\":{SIZE}")), "{body}");
    assert!(
        peak < RSS_LIMIT_KIB,
        "gateway peak RSS {peak} KiB while streaming 1 GiB: the body was buffered"
    );
}

/// An upstream whose every response is `size` bytes, produced 1 MiB at a time as the
/// connection accepts them; `produced` counts what it has handed to hyper so far.
struct BigUpstream {
    addr: SocketAddr,
    produced: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BigUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn big_upstream(size: u64) -> BigUpstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let produced = Arc::new(AtomicU64::new(0));
    let p = produced.clone();
    let chunk = Bytes::from(vec![b'x'; MIB as usize]);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let p = p.clone();
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let p = p.clone();
                    let chunk = chunk.clone();
                    async move {
                        let frames = futures_util::stream::unfold(0u64, move |sent| {
                            let p = p.clone();
                            let chunk = chunk.clone();
                            async move {
                                if sent >= size {
                                    return None;
                                }
                                let n = (size - sent).min(chunk.len() as u64);
                                p.fetch_add(n, Ordering::SeqCst);
                                let frame = Frame::data(chunk.slice(..n as usize));
                                Some((Ok::<_, Infallible>(frame), sent + n))
                            }
                        });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/octet-stream")
                                .header("content-length", size)
                                .body(StreamBody::new(frames))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    BigUpstream {
        addr,
        produced,
        task,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_response_streams_to_the_client_with_backpressure() {
    const SIZE: u64 = 256 * MIB;
    let big = big_upstream(SIZE).await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec::new(
            "plant-7", "/plant-7", big.addr, "plant-7", 2,
        )],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let produced = big.produced.clone();
    let (status, length, total, produced_while_paused) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let req = format!(
            "GET /plant-7/history.bin HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let (status, headers, first) = read_head(&mut s);
        let length: Option<u64> = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        let mut total = first.len() as u64;
        let mut buf = vec![0u8; 256 * 1024];
        // Take a little, then stop reading: a streaming gateway stops pulling from the
        // upstream once the socket buffers are full; a buffering one keeps going.
        while total < MIB {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "response ended after {total} bytes");
            total += n as u64;
        }
        std::thread::sleep(Duration::from_millis(1500));
        let produced_while_paused = produced.load(Ordering::SeqCst);
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        (status, length, total, produced_while_paused)
    })
    .await;
    let peak = peak_rss_kib(gw.pid());
    eprintln!(
        "256 MiB download: upstream had produced {} MiB while the client paused; gateway peak RSS {} MiB",
        produced_while_paused / MIB,
        peak / 1024
    );
    assert_eq!(status, 200);
    assert_eq!(length, Some(SIZE), "content-length not passed on");
    assert_eq!(total, SIZE, "the client did not receive the whole body");
    assert!(
        produced_while_paused < 64 * MIB,
        "the gateway kept reading the upstream ({} MiB) while the client read nothing",
        produced_while_paused / MIB
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "gateway peak RSS {peak} KiB while streaming 256 MiB: the body was buffered"
    );
}

/// Client-side stalls: a request that waits for its client (to take more of a response, or
/// to send more of an upload) while no byte moves for 75 s has its connection closed, on
/// either path and in either HTTP version, and so does a websocket whose client takes
/// nothing; an HTTP/2 stream that waits for its client for 75 s has its connection closed
/// even while other bytes move. A client that pauses for less, an HTTP/2 client that reads
/// slowly, a twin that takes its time and a quiet websocket are not cut off. All cases run
/// at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_takes_or_sends_nothing_for_75_s_mid_request_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const STALL: Duration = Duration::from_secs(75);
    const BIG: u64 = 64 * MIB;
    let big = big_upstream(BIG).await;
    let echo = Upstream::start().await;
    // A twin that reads an upload only after 85 s, then answers.
    let lazy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lazy_addr = lazy.local_addr().unwrap();
    // A twin that sends the start of a response, then pauses for 85 s.
    let pausing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pausing_addr = pausing.local_addr().unwrap();
    let ws_up = WsUpstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("big", "/big", big.addr, "plant-7", 2),
            RouteSpec::new("echo", "/echo", echo.addr, "plant-7", 2),
            RouteSpec::new("lazy", "/lazy", lazy_addr, "plant-7", 2),
            RouteSpec::new("pause", "/pause", pausing_addr, "plant-7", 2),
            RouteSpec::new("ws", "/ws", ws_up.addr, "plant-7", 2),
        ],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let auth = format!("Authorization: Bearer {token}");

    // HTTP/1.1 clients that stop reading a 64 MiB response: the fast path serves the GET,
    // hyper the POST (it has a body). After 85 s they read what there is: a gateway that
    // gave up has closed (FIN after what its socket still held, or a reset) well short of
    // the body; one that did not sends the rest and keeps the connection open.
    let mut waits = Vec::new();
    for (case, head) in [
        (
            "fast path, response not read",
            format!("GET /big/a HTTP/1.1\r\nHost: gw\r\n{auth}\r\n\r\n"),
        ),
        (
            "hyper, response not read",
            format!("POST /big/a HTTP/1.1\r\nHost: gw\r\n{auth}\r\nContent-Length: 2\r\n\r\nhi"),
        ),
    ] {
        waits.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(STALL + Duration::from_secs(10)).await;
            let mut got = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            let end = tokio::time::timeout(Duration::from_secs(20), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => return "closed",
                        Ok(n) => got += n as u64,
                        Err(_) => return "reset",
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{case}: still open after 105 s, {got} bytes read"));
            assert!(got < BIG, "{case}: {end} after the whole body");
        }));
    }

    // HTTP/1.1 uploads that stop after their first bytes, to a twin and to the gateway's
    // own token endpoint: closed, without an answer.
    for (case, head) in [
        (
            "HTTP/1.1 upload",
            format!("POST /echo/u HTTP/1.1\r\nHost: gw\r\n{auth}\r\nContent-Length: 1000\r\n\r\n0123456789"),
        ),
        (
            "HTTP/1.1 upload to the token endpoint",
            "POST /.twinward/oauth/token HTTP/1.1\r\nHost: gw\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\ngrant_type="
                .to_owned(),
        ),
    ] {
        waits.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let waiting = Instant::now();
            let mut more = Vec::new();
            let end =
                tokio::time::timeout(STALL + Duration::from_secs(10), s.read_to_end(&mut more))
                    .await
                    .unwrap_or_else(|_| panic!("{case}: still open after 85 s"));
            let waited = waiting.elapsed();
            assert!(
                end.is_err() || more.is_empty(),
                "{case}: {}",
                String::from_utf8_lossy(&more)
            );
            assert!(
                waited >= STALL - Duration::from_secs(1) && waited < STALL + Duration::from_secs(7),
                "{case}: closed after {waited:?}"
            );
        }));
    }

    // HTTP/2: a response whose client grants no more flow-control window than the first
    // 64 KiB, and an upload that stops after its first bytes. The connection ends, also
    // when the client keeps it busy with a PING every 10 s: the stream's own wait counts.
    for (case, method, path, pings) in [
        ("HTTP/2, no window granted", "GET", "/big/a", false),
        ("HTTP/2, upload stopped", "POST", "/echo/u", false),
        ("HTTP/2, no window granted, PINGs", "GET", "/big/a", true),
        ("HTTP/2, upload stopped, PINGs", "POST", "/echo/u", true),
    ] {
        let token = token.clone();
        waits.push(tokio::spawn(async move {
            let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
            let mut builder =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535);
            if pings {
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
            }
            let (mut send, conn) = builder.handshake(io).await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (Ok::<_, Infallible>(f), rx))
            }));
            let tx = if method == "POST" {
                tx.send(Frame::data(Bytes::from_static(b"0123456789")))
                    .await
                    .unwrap();
                Some(tx)
            } else {
                None
            };
            let req = Request::builder()
                .method(method)
                .uri(format!("http://gw{path}"))
                .header("authorization", format!("Bearer {token}"))
                .body(StreamBody::new(frames))
                .unwrap();
            let waiting = Instant::now();
            let client = tokio::spawn(async move {
                // Holds the upload open and the response (its body never read).
                let _upload = tx;
                let _response = send.send_request(req).await;
                std::future::pending::<()>().await
            });
            let ended = tokio::time::timeout(STALL + Duration::from_secs(10), conn).await;
            let waited = waiting.elapsed();
            client.abort();
            assert!(ended.is_ok(), "{case}: still open after 85 s");
            assert!(
                waited >= STALL - Duration::from_secs(1) && waited < STALL + Duration::from_secs(7),
                "{case}: closed after {waited:?}"
            );
        }));
    }

    // HTTP/2 streams that are not cut off: a client that takes a large response slowly
    // (a 4 KiB window, one DATA frame every 5 s, about 800 bytes/s, after a first 2 MiB at
    // full speed), however large the twin's chunks; and a response whose twin pauses
    // 85 s mid-body.
    let slow_reader = {
        let token = token.clone();
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let mut body = h2_get(addr, "/big/slow", &token, 4096).await.into_body();
            let mut got = 0u64;
            let started = Instant::now();
            while got < 2 * MIB {
                let frame = body.frame().await;
                got += frame_len(frame, "HTTP/2 slow reader, fast start", got);
            }
            while started.elapsed() < STALL + Duration::from_secs(15) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("HTTP/2 slow reader: no frame after {got} bytes"));
                got += frame_len(frame, "HTTP/2 slow reader", got);
            }
        })
    };
    let pausing_twin = tokio::spawn(async move {
        let (mut s, _) = pausing.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed before its request head");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfirst")
            .await
            .unwrap();
        tokio::time::sleep(STALL + Duration::from_secs(10)).await;
        // The gateway may have given up on it.
        let _ = s.write_all(b"last").await;
    });
    let h2_twin_pauses = {
        let token = token.clone();
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let response = h2_get(addr, "/pause/x", &token, 65_535).await;
            let body = tokio::time::timeout(STALL + Duration::from_secs(20), response.collect())
                .await
                .expect("HTTP/2, twin pausing: the body in time")
                .map(|b| b.to_bytes());
            assert!(
                matches!(&body, Ok(b) if b.as_ref() == b"firstlast"),
                "HTTP/2, twin pausing: {body:?}"
            );
        })
    };
    // A websocket client that sends to an echoing twin and reads nothing: once the echoes
    // fill the buffers, the gateway waits for room on the client's side, and after 75 s
    // closes the splice. Read after 85 s, the socket gives what it held, then its end.
    let ws = ws_connect(&gw, "/ws/live", Some(&token))
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    waits.push(tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let sender = tokio::spawn(async move {
            let msg = Message::binary(vec![7u8; MIB as usize]);
            for _ in 0..256 {
                if sink.send(msg.clone()).await.is_err() {
                    break;
                }
            }
            sink
        });
        tokio::time::sleep(STALL + Duration::from_secs(10)).await;
        sender.abort();
        let mut echoed = 0u64;
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(m)) = stream.next().await {
                echoed += m.len() as u64;
            }
        })
        .await;
        assert!(
            end.is_ok(),
            "websocket not read: still open after 105 s, {echoed} bytes echoed"
        );
        assert!(echoed < 256 * MIB, "websocket: {echoed} bytes echoed");
    }));

    // A quiet websocket, nothing sent either way for 80 s, stays open.
    let mut quiet = ws_connect(&gw, "/ws/live", Some(&token))
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    waits.push(tokio::spawn(async move {
        for round in 0..2 {
            if round > 0 {
                tokio::time::sleep(STALL + Duration::from_secs(5)).await;
            }
            let msg = Message::text(format!("round {round}"));
            quiet.send(msg.clone()).await.unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(10), quiet.next())
                .await
                .expect("echo in time");
            assert!(
                matches!(&echo, Some(Ok(m)) if *m == msg),
                "quiet websocket, round {round}: {echo:?}"
            );
        }
    }));

    // A client that stops reading for 60 s, then reads on, gets the whole body, and its
    // connection serves the next request.
    let head = format!("GET /big/b HTTP/1.1\r\nHost: gw\r\n{auth}\r\n\r\n");
    let paused = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for round in 0..2 {
            s.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut got: Vec<u8> = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "round {round}: closed before the head");
                got.extend_from_slice(&buf[..n]);
            }
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let mut body = (got.len() - head_end) as u64;
            if round == 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            while body < BIG {
                let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
                    .await
                    .expect("the rest of the body in time")
                    .unwrap();
                assert!(
                    n > 0,
                    "round {round}: closed after {body} bytes of the body"
                );
                body += n as u64;
            }
            assert_eq!(body, BIG, "round {round}");
        }
    });

    // A twin that reads a 64 MiB upload only after 85 s is waited for: the client sent all
    // it could, and it is the twin that takes its time.
    let lazy_twin = tokio::spawn(async move {
        let (mut s, _) = lazy.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        let head_end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut body = (head.len() - head_end) as u64;
        tokio::time::sleep(STALL + Duration::from_secs(10)).await;
        while body < BIG {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the gateway gave up on the upload after {body} bytes"
            );
            body += n as u64;
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntook")
            .await
            .unwrap();
        body
    });
    let head =
        format!("POST /lazy/u HTTP/1.1\r\nHost: gw\r\n{auth}\r\nContent-Length: {BIG}\r\n\r\n");
    let uploader = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'u'; BIG as usize]).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            let mut buf = [0u8; 4096];
            while !answer.ends_with(b"took") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&answer).into_owned()
    });

    // Every case's outcome, not only the first failure's.
    let mut failed = Vec::new();
    for w in waits
        .into_iter()
        .chain([paused, slow_reader, h2_twin_pauses, pausing_twin])
    {
        if let Err(e) = w.await {
            failed.push(panic_text(e));
        }
    }
    match (lazy_twin.await, uploader.await) {
        (Ok(read), Ok(answer)) => {
            if read != BIG || !answer.starts_with("HTTP/1.1 200 ") || !answer.ends_with("took") {
                failed.push(format!("lazy twin: read {read} bytes; answer {answer:?}"));
            }
        }
        (twin, uploader) => failed.extend(
            [twin.err(), uploader.err()]
                .into_iter()
                .flatten()
                .map(panic_text),
        ),
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A GET over a new HTTP/2 connection (prior knowledge) granting `window` bytes per stream.
async fn h2_get(addr: SocketAddr, path: &str, token: &str, window: u32) -> Response<Incoming> {
    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .handshake(io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://gw{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.send_request(req).await.unwrap()
}

/// The length of a response body's next frame, which must be one.
fn frame_len(frame: Option<Result<Frame<Bytes>, hyper::Error>>, case: &str, got: u64) -> u64 {
    match frame {
        Some(Ok(f)) => f.data_ref().map_or(0, |d| d.len() as u64),
        other => panic!("{case}: {other:?} after {got} bytes"),
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// b. Websockets.
// ---------------------------------------------------------------------------------------

pub(crate) async fn ws_connect(
    gw: &Gateway,
    path: &str,
    bearer: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Box<tungstenite::http::Response<Option<Vec<u8>>>>,
> {
    let mut req = format!("ws://{}{path}", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = bearer {
        req.headers_mut().insert(
            "authorization",
            tungstenite::http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
        );
    }
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            // A twin must not plant or end a gateway session through the handshake either.
            let cookies: Vec<&str> = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            assert_eq!(cookies, ["theme=dark"], "cookies the 101 carried");
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(Box::new(resp)),
        Err(e) => panic!("websocket handshake failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_are_authorized_then_spliced_to_the_twin() {
    let ws_up = WsUpstream::start().await;
    let mut off = RouteSpec::new("ws-off", "/ws-off", ws_up.addr, "plant-7", 2);
    off.extra = "websocket = false";
    let gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec::new("ws", "/ws", ws_up.addr, "plant-7", 2), off],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");

    let mut ws = ws_connect(&gw, "/ws/live", Some(&token))
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
    for msg in [
        Message::text("hello, twin"),
        Message::binary(vec![0u8, 1, 2, 0xfe, 0xff]),
        Message::text("ünïcödé ✓"),
        Message::binary(big),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("connection open")
            .expect("valid frame");
        assert_eq!(echo, msg);
    }
    ws.close(None).await.unwrap();

    // No token: refused before any upgrade.
    let r = ws_connect(&gw, "/ws/live", None)
        .await
        .expect_err("upgrade without a token must be refused");
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("upgrade").is_none());
    assert!(r
        .headers()
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")));

    // A route with websockets off refuses the upgrade even for an allowed principal.
    let r = ws_connect(&gw, "/ws-off/live", Some(&token))
        .await
        .expect_err("upgrade on a websocket = false route must be refused");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("upgrade").is_none());
    let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("websockets are not enabled"), "{body}");
}

// ---------------------------------------------------------------------------------------
// c. Upstream failures.
// ---------------------------------------------------------------------------------------

fn assert_problem(r: &RawResponse, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{}",
        r.body
    );
    let body = r.json();
    assert_eq!(body["status"], status);
    let id = body["decision_id"]
        .as_str()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| panic!("no decision_id: {}", r.body))
        .to_owned();
    assert_eq!(r.header("x-twinward-decision-id"), Some(id.as_str()));
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502_problem_with_decision_id() {
    let down = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec::new("plant-7", "/plant-7", down, "plant-7", 2)],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let r = blocking(move || get(addr, "/plant-7/x", Some(&token), &[])).await;
    let id = assert_problem(&r, 502);
    assert!(
        !r.body.contains(&down.to_string()),
        "5xx body names the upstream"
    );
    // The decision behind it was an allow, findable by that id.
    gw.wait_audit(|e| e["event_id"] == id.as_str() && e["outcome"] == "allow");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_after_the_route_timeout() {
    let (up, gw, token) = plant7("timeout = \"1s\"").await;
    let addr = gw.addr;
    let t2 = token.clone();
    let fast = blocking(move || get(addr, "/plant-7/fast", Some(&t2), &[])).await;
    assert_eq!(fast.status, 200, "{}", fast.body);
    let started = Instant::now();
    let r = blocking(move || get(addr, "/plant-7/slow/report", Some(&token), &[])).await;
    let elapsed = started.elapsed();
    assert_problem(&r, 504);
    assert_eq!(up.last().unwrap().target, "/plant-7/slow/report");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2900),
        "504 after {elapsed:?}; the route timeout is 1s and the upstream takes 3s"
    );
}

/// A listener whose accept queue is full, so further connection attempts hang in SYN-SENT
/// (Linux drops SYNs to a listener with a full accept queue). Keeps its fillers alive.
struct Blackhole {
    addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<std::net::TcpStream>,
}

fn blackhole() -> Option<Blackhole> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => {
                return Some(Blackhole {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                })
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_timeout_is_honoured() {
    let hole = blackhole().expect("could not fill a listener's accept queue");
    let mut route = RouteSpec::new("plant-7", "/plant-7", hole.addr, "plant-7", 2);
    route.extra = "connect_timeout = \"500ms\"\ntimeout = \"30s\"";
    let gw = Gateway::start(GatewayOptions {
        routes: vec![route],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let started = Instant::now();
    let r = blocking(move || get(addr, "/plant-7/x", Some(&token), &[])).await;
    let elapsed = started.elapsed();
    assert_problem(&r, 502);
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}; connect_timeout is 500ms, the request timeout 30s"
    );
}

// ---------------------------------------------------------------------------------------
// d. HTTP/2.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn http2_from_clients_and_to_upstreams() {
    let up = Upstream::start().await;
    let mut h2 = RouteSpec::new("h2", "/h2", up.addr, "plant-7", 2);
    h2.extra = "http2 = true";
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2),
            h2,
        ],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    // h2c client, HTTP/1.1 upstream.
    let r = client
        .get(gw.url("/plant-7/x/../sensors?window=5m"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.target, "/plant-7/sensors?window=5m");
    assert!(seen.header("authorization").is_none());
    assert!(seen.header("x-twinward-assertion").is_some());

    // h2c client, h2 upstream, with a streamed body.
    let body = vec![7u8; 3 * MIB as usize];
    let r = client
        .post(gw.url("/h2/ingest"))
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.last().unwrap();
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(seen.target, "/h2/ingest");
    assert_eq!(seen.body_len, 3 * MIB);
    assert!(seen.header("x-twinward-assertion").is_some());

    // HTTP/1.1 client, h2 upstream.
    let addr = gw.addr;
    let t = token.clone();
    let r = blocking(move || get(addr, "/h2/x", Some(&t), &[])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().unwrap().version, "HTTP/2.0");
    assert_eq!(r.json()["version"], "HTTP/2.0");

    // Trailers reach an h2 twin, but never with what the head may not carry upstream.
    let request = format!(
        "POST /h2/ingest HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\n\
         X-Twinward-Assertion: forged\r\nAuthorization: Bearer twt_forged\r\n\
         Cookie: __Host-twinward=stolen\r\nX-Forwarded-For: 192.168.20.5\r\n\
         X-Sim-Checksum: 907d14fb\r\n\r\n"
    );
    let r = blocking(move || raw(addr, &request).unwrap()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last().unwrap();
    assert_eq!(seen.version, "HTTP/2.0");
    assert_eq!(seen.body_len, 5);
    assert_eq!(
        seen.trailers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["x-sim-checksum"],
        "{:?}",
        seen.trailers
    );
}

// ---------------------------------------------------------------------------------------
// e. Pooled keep-alive connections to upstreams.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled_and_reused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let (gw, token) = one_worker_gateway(up_addr);
    let addr = gw.addr;
    const N: usize = 8;
    let statuses = blocking(move || {
        (0..N)
            .map(|i| {
                // A new client connection each time (`Connection: close`): the upstream
                // connection must outlive them.
                let r = get(addr, &format!("/plant-7/item/{i}"), Some(&token), &[]);
                (r.status, r.body)
            })
            .collect::<Vec<_>>()
    })
    .await;
    task.abort();
    for (status, body) in &statuses {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body, "ok");
    }
    let (conns, reqs) = (
        connections.load(Ordering::SeqCst),
        requests.load(Ordering::SeqCst),
    );
    eprintln!("{reqs} requests over {conns} upstream connection(s)");
    assert_eq!(reqs, N);
    assert_eq!(
        conns, 1,
        "{conns} upstream connections for {N} sequential requests on one worker"
    );
}

/// An upstream that answers one request per connection (keep-alive not refused in the
/// response) and then closes it, as a twin with a short idle timeout does. Counts
/// connections.
async fn one_shot_upstream() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if read_head_async(&mut stream).await.is_none() {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // Closed a moment later without `Connection: close`: the gateway has
                // pooled the connection by then and learns of the close only from EOF.
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
        }
    });
    (addr, connections, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_closing_idle_connections_costs_no_request() {
    let (up_addr, connections, task) = one_shot_upstream().await;
    let (gw, token) = one_worker_gateway(up_addr);
    let addr = gw.addr;
    const N: usize = 10;
    let results = blocking(move || {
        (0..N)
            .map(|i| {
                // Long enough for the closed connection's EOF to arrive before the next
                // request, which must then not be sent on it.
                std::thread::sleep(Duration::from_millis(30));
                let r = get(addr, &format!("/plant-7/{i}"), Some(&token), &[]);
                (r.status, r.body)
            })
            .collect::<Vec<_>>()
    })
    .await;
    task.abort();
    for (status, body) in &results {
        assert_eq!((*status, body.as_str()), (200, "ok"), "{results:?}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), N);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_with_an_unread_response_body_is_not_reused() {
    // 64 MiB per response: far more than the socket buffers hold, so the body is still
    // in flight when the client goes away.
    let big = big_upstream(64 * MIB).await;
    let (gw, token) = one_worker_gateway(big.addr);
    let addr = gw.addr;
    let produced = big.produced.clone();
    let (first, second) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /plant-7/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let (status, _, _) = read_head(&mut s);
        drop(s); // abandons the body
        std::thread::sleep(Duration::from_millis(200));
        // The next request must get a whole, fresh response of its own.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            s,
            "GET /plant-7/again HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (status2, headers, mut body) = read_head(&mut s);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        body.extend_from_slice(&rest);
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        (status, (status2, len, body.len(), body.iter().all(|b| *b == b'x')))
    })
    .await;
    assert_eq!(first, 200);
    let (status, declared, got, all_x) = second;
    assert_eq!(status, 200);
    assert_eq!(declared, (64 * MIB) as usize);
    assert_eq!(
        got, declared,
        "the second response was cut or mixed with the first"
    );
    assert!(all_x);
    assert!(produced.load(Ordering::SeqCst) >= 64 * MIB);
}

// ---------------------------------------------------------------------------------------
// f. X-Forwarded-* handling.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_untrusted_peers_are_replaced() {
    let (up, gw, token) = plant7("").await;
    let addr = gw.addr;
    let r = blocking(move || {
        get(
            addr,
            "/plant-7/untrusted",
            Some(&token),
            &[
                ("X-Forwarded-For", "6.6.6.6, 10.9.9.9"),
                ("X-Forwarded-Proto", "https"),
                ("Forwarded", "for=6.6.6.6;proto=https"),
                ("X-Real-IP", "6.6.6.6"),
            ],
        )
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last().unwrap();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.headers.get("x-forwarded-for").map(Vec::len), Some(1));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(seen.header("forwarded").is_none());
    assert!(seen.header("x-real-ip").is_none());
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["detail"]["path"] == "/plant-7/untrusted"
            && e["detail"]["client_ip"] == "127.0.0.1"
    });
}

/// /plant-7 on a gateway that trusts its loopback peer as a proxy.
async fn behind_a_trusted_proxy() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2)],
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        ..Default::default()
    });
    (up, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_from_trusted_proxies_are_kept_and_appended() {
    let (up, gw) = behind_a_trusted_proxy().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let r = blocking(move || {
        get(
            addr,
            "/plant-7/trusted",
            Some(&token),
            &[
                ("X-Forwarded-For", "203.0.113.5, 198.51.100.7"),
                ("X-Forwarded-Proto", "https"),
            ],
        )
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.5, 198.51.100.7, 127.0.0.1"),
        "a trusted proxy's chain must be kept, with the proxy appended"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // The client is the rightmost address that is not a trusted proxy.
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["detail"]["path"] == "/plant-7/trusted"
            && e["detail"]["client_ip"] == "198.51.100.7"
    });
}

/// RFC 9110 §5.3: several `X-Forwarded-For` lines are one comma-separated list, in order.
/// Proxies such as HAProxy (`option forwardfor`) add their hop as a new line after whatever
/// the client sent, so reading only the first line believes the client's own claim.
#[tokio::test(flavor = "multi_thread")]
async fn x_forwarded_for_split_over_several_lines_is_one_chain() {
    let (up, gw) = behind_a_trusted_proxy().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let r = blocking(move || {
        get(
            addr,
            "/plant-7/multi-line",
            Some(&token),
            &[
                // Sent by the client (a spoof) ...
                ("X-Forwarded-For", "10.66.0.1"),
                // ... and the line the trusted proxy added with the address it saw.
                ("X-Forwarded-For", "198.51.100.7"),
            ],
        )
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last().unwrap();
    let event =
        gw.wait_audit(|e| e["kind"] == "access" && e["detail"]["path"] == "/plant-7/multi-line");
    let client_ip = event["detail"]["client_ip"].as_str().unwrap_or_default();
    let xff = seen.header("x-forwarded-for").unwrap_or_default();
    assert!(
        client_ip == "198.51.100.7" && xff == "10.66.0.1, 198.51.100.7, 127.0.0.1",
        "policy saw client {client_ip} (want 198.51.100.7, the hop the trusted proxy added); \
         the upstream got X-Forwarded-For {xff:?} (want \"10.66.0.1, 198.51.100.7, 127.0.0.1\")"
    );
}

/// Only the header the trusted proxies append is walked, and a hop that names no address
/// refuses the request: otherwise the client would take the proxy's own address and zone.
#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxys_chain_names_the_client_or_the_request_is_refused() {
    let (up, gw) = behind_a_trusted_proxy().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let (spoofed_forwarded, unknown, unreadable, hyper_unknown) = blocking(move || {
        (
            // nginx appends X-Forwarded-For and passes the client's Forwarded on.
            get(
                addr,
                "/plant-7/forwarded",
                Some(&token),
                &[
                    ("Forwarded", "for=192.168.20.5"),
                    ("X-Forwarded-For", "198.51.100.7"),
                ],
            ),
            get(
                addr,
                "/plant-7/unknown",
                Some(&token),
                &[("X-Forwarded-For", "192.168.20.5, unknown")],
            ),
            raw_bytes(addr, &{
                let mut req = format!(
                    "GET /plant-7/unreadable HTTP/1.1\r\nHost: gw.test\r\n\
                     Authorization: Bearer {token}\r\nX-Forwarded-For: 198.51.100."
                )
                .into_bytes();
                req.push(0xff);
                req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
                req
            })
            .expect("request with an unreadable header"),
            // A body sends the request down hyper's path instead of the fast path.
            raw(
                addr,
                &format!(
                    "POST /plant-7/unknown HTTP/1.1\r\nHost: gw.test\r\n\
                     Authorization: Bearer {token}\r\nX-Forwarded-For: unknown\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            )
            .expect("request down hyper's path"),
        )
    })
    .await;
    assert_eq!(spoofed_forwarded.status, 200, "{}", spoofed_forwarded.body);
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["detail"]["path"] == "/plant-7/forwarded"
            && e["detail"]["client_ip"] == "198.51.100.7"
    });
    assert!(
        up.last().unwrap().header("forwarded").is_none(),
        "the client's Forwarded must not reach the twin"
    );
    for r in [&unknown, &unreadable, &hyper_unknown] {
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.body.contains("X-Forwarded-For") || r.body.contains("x-forwarded-for"),
            "{}",
            r.body
        );
    }
    assert_eq!(up.count(), 1, "refused requests must not reach the twin");
}
