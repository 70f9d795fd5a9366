//! The HTTP/1.1 fast path (plain bodiless requests read and forwarded from the sockets)
//! against a twin that speaks raw HTTP/1.1, so the tests control every byte of the twin's
//! answers and see every byte of what it receives, header case included. Header case is
//! how a test knows which path served a request: the fast path passes names as sent,
//! hyper sends them in lower case.

use crate::common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A twin speaking raw HTTP/1.1: records each request head as received and answers with
/// the bytes `answer(path)` gives, closing the connection after them when it says so.
struct RawTwin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawTwin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = fn(&str) -> (Vec<u8>, bool);

impl RawTwin {
    async fn start(answer: Answer) -> RawTwin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (heads.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let heads = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = read_until_head_end(&mut s, &mut buf).await else {
                            return;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        // Bodies are skipped (by Content-Length: the tests send no chunked ones).
                        let body_len: usize = header_of(&head, "content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        while buf.len() < body_len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..body_len);
                        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                        heads.lock().unwrap().push(head);
                        let (bytes, close) = answer(&path);
                        if s.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawTwin {
            addr,
            heads,
            connections,
            task,
        }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn read_until_head_end(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// A head's header lines as (lower-case name → values); the names as sent in `cased`.
fn header_set(head: &str) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let mut set: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cased = Vec::new();
    for (k, v) in head.split("\r\n").skip(1).filter_map(|l| l.split_once(':')) {
        cased.push(k.to_owned());
        set.entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.trim().to_owned());
    }
    (set, cased)
}

/// A response read off a client connection, body decoded.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads more of a response into `buf`.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 8192];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
        .await
        .expect("body in time")
        .unwrap();
    assert!(n > 0, "connection closed mid-body");
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads one response from `s` (after request method `method`), keeping any bytes after it
/// in `buf` for the next.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Got {
    let end = tokio::time::timeout(Duration::from_secs(10), read_until_head_end(s, buf))
        .await
        .expect("response head in time")
        .expect("a response head");
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    buf.drain(..end);
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut got = Got {
        status,
        headers,
        body: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 {
        return got;
    }
    if got
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await;
            };
            let size_line = String::from_utf8(buf[..line_end].to_vec()).unwrap();
            let size = usize::from_str_radix(size_line.trim(), 16)
                .unwrap_or_else(|_| panic!("gateway sent chunk size line {size_line:?}"));
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await;
            }
            assert_eq!(&buf[size..size + 2], b"\r\n", "chunk not ended by CRLF");
            if size == 0 {
                buf.drain(..2);
                return got;
            }
            got.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    let len: usize = got
        .header("content-length")
        .expect("a framed response")
        .parse()
        .unwrap();
    while buf.len() < len {
        fill(s, buf).await;
    }
    got.body = buf.drain(..len).collect();
    got
}

fn ok_with_path(path: &str) -> (Vec<u8>, bool) {
    let body = format!("you asked for {path}");
    (
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Twin: raw\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
        false,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn both_paths_forward_the_same_request_to_the_twin() {
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    // The same request, once plain (fast path) and once with an empty body (hyper).
    let request = |extra: &str| {
        format!(
            "GET /plant-7/a/../sensors?window=5m HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             X-Custom-Case: kept\r\nX-Twinward-Assertion: forged\r\nx-twinward-anything: x\r\n\
             X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n\
             X-Real-IP: 6.6.6.6\r\nX-Original-URL: /admin\r\nCookie: __Host-twinward=stolen; theme=dark\r\n\
             Cookie: twinward-login=x; lang=en\r\nAccept: */*\r\n{extra}\r\n",
            gw.addr
        )
    };
    let mut heads = Vec::new();
    for extra in ["", "Content-Length: 0\r\n"] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(request(extra).as_bytes()).await.unwrap();
        let got = read_response(&mut s, &mut Vec::new(), "GET").await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.body, b"you asked for /plant-7/sensors?window=5m");
        assert_eq!(got.header("x-twin"), Some("raw"));
        heads.push(twin.heads().last().unwrap().clone());
    }
    let (fast, fast_names) = header_set(&heads[0]);
    let (slow, slow_names) = header_set(&heads[1]);
    // Which path served which: the fast path keeps header case, hyper lower-cases.
    assert!(
        fast_names.iter().any(|n| n == "X-Custom-Case"),
        "{}",
        heads[0]
    );
    assert!(
        slow_names.iter().all(|n| *n == n.to_ascii_lowercase()),
        "{}",
        heads[1]
    );
    for head in &heads {
        assert!(
            head.starts_with("GET /plant-7/sensors?window=5m HTTP/1.1\r\n"),
            "{head}"
        );
    }
    for set in [&fast, &slow] {
        assert!(set.get("authorization").is_none(), "client token leaked");
        assert!(!heads.iter().any(|h| h.contains(&token)));
        assert_eq!(set["x-twinward-assertion"].len(), 1);
        assert_ne!(set["x-twinward-assertion"][0], "forged");
        assert!(set.get("x-twinward-anything").is_none());
        assert_eq!(set["x-forwarded-for"], ["127.0.0.1"]);
        assert_eq!(set["x-forwarded-host"], [gw.addr.to_string()]);
        assert_eq!(set["x-forwarded-proto"], ["http"]);
        for gone in ["forwarded", "x-real-ip", "x-original-url"] {
            assert!(set.get(gone).is_none(), "{gone} passed on");
        }
        assert_eq!(set["cookie"], ["theme=dark; lang=en"]);
    }
    // Apart from the empty body's length, the twin received the same headers either way.
    let mut slow = slow;
    slow.remove("content-length");
    let without_assertion = |m: &BTreeMap<String, Vec<String>>| {
        let mut m = m.clone();
        m.remove("x-twinward-assertion");
        m
    };
    assert_eq!(without_assertion(&fast), without_assertion(&slow));
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut all = String::new();
    for p in ["one", "two", "three"] {
        all.push_str(&format!(
            "GET /plant-7/{p} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
        ));
    }
    s.write_all(all.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for p in ["one", "two", "three"] {
        let got = read_response(&mut s, &mut buf, "GET").await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, format!("you asked for /plant-7/{p}").as_bytes());
    }
    assert_eq!(twin.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_split_over_many_writes_is_read_whole() {
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!(
        "GET /plant-7/slowly HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    for piece in req.as_bytes().chunks(7) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = read_response(&mut s, &mut Vec::new(), "GET").await;
    assert_eq!(got.body, b"you asked for /plant-7/slowly");
}

fn framed_answers(path: &str) -> (Vec<u8>, bool) {
    let bytes: &[u8] = match path {
        "/plant-7/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nSet-Cookie: __Host-twinward=planted\r\nSet-Cookie: theme=dark\r\n\r\n5;ext=x\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        "/plant-7/until-close" => {
            return (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close".to_vec(), true)
        }
        "/plant-7/interim" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        "/plant-7/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        // A twin that names its framing header as hop-by-hop.
        "/plant-7/names-its-length" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\nok",
        "/plant-7/smuggle" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "/plant-7/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "/plant-7/switch" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        // A bare LF inside a chunk extension: a lenient reader takes "5;a\nb" as the size
        // line and relays "hello" as a whole body.
        "/plant-7/lf-in-extension" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
        // A size line without digits: a lenient reader takes it for the last chunk.
        "/plant-7/no-digits" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n\r\n\r\n",
        _ => return ok_with_path(path),
    };
    (bytes.to_vec(), false)
}

#[tokio::test(flavor = "multi_thread")]
async fn twin_bodies_of_every_framing_reach_the_client_and_the_connection_goes_on() {
    let twin = RawTwin::start(framed_answers).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let ask = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    let req = ask("GET", "/plant-7/chunked");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(got.body, b"hello world");
    // Chunk extensions and trailers stay behind; so does a cookie in the gateway's name.
    let cookies: Vec<&str> = got
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cookies, ["theme=dark"]);
    assert!(got.header("x-trailer").is_none());

    let req = ask("GET", "/plant-7/until-close");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, b"body until close");
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));

    let req = ask("GET", "/plant-7/interim");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"ok"[..]));

    let req = ask("HEAD", "/plant-7/head");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "HEAD").await;
    assert_eq!(
        (got.status, got.header("content-length")),
        (200, Some("10"))
    );

    // The client's framing is the gateway's own, whatever the twin's Connection names.
    let req = ask("GET", "/plant-7/names-its-length");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(
        (got.header("content-length"), got.body.as_slice()),
        (Some("2"), &b"ok"[..])
    );

    let req = ask("GET", "/plant-7/after");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(got.body, b"you asked for /plant-7/after");
    assert!(buf.is_empty(), "bytes after the last response: {buf:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_twin_responses_are_502_and_never_relayed() {
    let twin = RawTwin::start(framed_answers).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let paths = [
        "/plant-7/smuggle",
        "/plant-7/two-lengths",
        "/plant-7/switch",
    ];
    // GET on the fast path; POST with a body on hyper's: both refuse alike.
    for (method, path) in paths
        .iter()
        .map(|p| ("GET", *p))
        .chain(paths.iter().map(|p| ("POST", *p)))
    {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let body = if method == "POST" {
            "Content-Length: 2\r\n\r\nhi"
        } else {
            "\r\n"
        };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n{body}"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let got = read_response(&mut s, &mut Vec::new(), method).await;
        assert_eq!(got.status, 502, "{method} {path}: {got:?}");
        assert_eq!(got.header("content-type"), Some("application/problem+json"));
        let problem: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        assert!(problem["decision_id"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hyper_too_frames_a_response_whose_twin_names_its_length_as_hop_by_hop() {
    let twin = RawTwin::start(framed_answers).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    // A body sends the request, and the rest of the connection, to hyper.
    let req = format!(
        "POST /plant-7/names-its-length HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Length: 3\r\n\r\nabc"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!((got.status, got.body.as_slice()), (200, &b"ok"[..]));
    let req =
        format!("GET /plant-7/after HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(got.body, b"you asked for /plant-7/after");
    assert!(
        twin.heads()[0].contains("content-length: 3"),
        "{:?}",
        twin.heads()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_outside_the_grammar_is_refused_and_its_twin_connection_dropped() {
    let twin = RawTwin::start(framed_answers).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let ask = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    for path in ["/plant-7/lf-in-extension", "/plant-7/no-digits"] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(ask(path).as_bytes()).await.unwrap();
        // The body came with the head and went wrong before anything reached the client:
        // it gets a 502, not a body a lenient reader would have made of those bytes.
        let got = read_response(&mut s, &mut Vec::new(), "GET").await;
        assert_eq!(got.status, 502, "{path}: {got:?}");
        assert_eq!(got.header("content-type"), Some("application/problem+json"));
        // The twin's connection is not reused: the next request needs a new one.
        let before = twin.connections.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(ask("/plant-7/after").as_bytes()).await.unwrap();
        let next = read_response(&mut s, &mut Vec::new(), "GET").await;
        assert_eq!(next.body, b"you asked for /plant-7/after");
        assert_eq!(
            twin.connections.load(Ordering::SeqCst),
            before + 1,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_moves_to_hyper_at_its_first_request_with_a_body() {
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let auth = format!("Authorization: Bearer {token}\r\n");
    s.write_all(
        format!("GET /plant-7/first HTTP/1.1\r\nHost: gw\r\n{auth}X-Case: A\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 200);
    s.write_all(
        format!("GET /plant-7/second HTTP/1.1\r\nHost: gw\r\n{auth}Content-Length: 3\r\nX-Case: B\r\n\r\nabc").as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(read_response(&mut s, &mut buf, "GET").await.status, 200);
    s.write_all(
        format!("GET /plant-7/third HTTP/1.1\r\nHost: gw\r\n{auth}X-Case: C\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let third = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(third.status, 200);
    let heads = twin.heads();
    assert!(
        heads[0].contains("X-Case: A"),
        "first: fast path\n{}",
        heads[0]
    );
    assert_eq!(heads.len(), 3);
    assert!(
        heads[1].contains("x-case: B") && heads[1].contains("content-length: 3"),
        "second: hyper, with its body\n{}",
        heads[1]
    );
    assert!(
        heads[2].contains("x-case: C"),
        "third: hyper keeps the connection\n{}",
        heads[2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_the_request_in_flight_then_closes_the_connection() {
    let up = Upstream::start().await; // answers paths with /slow after 3 s
    let (gw, token) = one_worker_gateway(up.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!("GET /plant-7/slow HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    while up.count() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "request never reached the twin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .output()
        .expect("run kill");
    assert!(out.status.success());
    let mut buf = Vec::new();
    let got = read_response(&mut s, &mut buf, "GET").await;
    assert_eq!(got.status, 200, "the request in flight is answered");
    let mut rest = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest))
        .await
        .expect("the connection closes after the answer")
        .unwrap_or(0);
    assert_eq!(n, 0, "no more bytes, then the connection closes");
}

/// A twin that sends bytes after its answer, while the connection idles: a body to a HEAD,
/// or bytes past a Content-Length, shaped like a response. Whatever request takes that
/// connection next would read them as its answer, and that may be another user's request.
#[tokio::test(flavor = "multi_thread")]
async fn late_bytes_from_a_twin_never_answer_the_next_request() {
    const LATE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninjected";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(end) = read_until_head_end(&mut s, &mut buf).await {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let (now, later): (&[u8], &[u8]) = match path.as_str() {
                        "/plant-7/late-head-body" => {
                            (b"HTTP/1.1 200 OK\r\nContent-Length: 43\r\n\r\n", LATE)
                        }
                        "/plant-7/late-extra" => {
                            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", LATE)
                        }
                        _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal", b""),
                    };
                    if s.write_all(now).await.is_err() {
                        return;
                    }
                    if !later.is_empty() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if s.write_all(later).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let (gw, token) = one_worker_gateway(addr);
    let ask = |method: &str, path: &str| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    // Asked at once, the next request would meet the late bytes on a connection that
    // looked quiet when taken: a HEAD's connection is not pooled at all. Asked later, the
    // idle connection is found with bytes on it and dropped.
    for (method, path, wait) in [
        ("HEAD", "/plant-7/late-head-body", 0),
        ("HEAD", "/plant-7/late-head-body", 300),
        ("GET", "/plant-7/late-extra", 300),
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(ask(method, path).as_bytes()).await.unwrap();
        let first = read_response(&mut s, &mut Vec::new(), method).await;
        assert_eq!(first.status, 200, "{path}: {first:?}");
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let before = connections.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(ask("GET", "/plant-7/next").as_bytes())
            .await
            .unwrap();
        let next = read_response(&mut s, &mut Vec::new(), "GET").await;
        assert_eq!(
            String::from_utf8_lossy(&next.body),
            "real",
            "after {path} ({wait} ms) the next request read the twin's late bytes"
        );
        assert_eq!(connections.load(Ordering::SeqCst), before + 1, "{path}");
        // Let the twin's late write land before the next round.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    task.abort();
}

/// A twin may answer before the request body is through (a 413 to an upload, say). That
/// connection is still uploading: handed to the next request, it would keep that request
/// waiting for as long as the first client cares to trickle its body.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_still_uploading_is_not_handed_to_the_next_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(end) = read_until_head_end(&mut s, &mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                if head.starts_with("POST /plant-7/upload ") {
                    // Answer at once, then drain whatever body comes, for as long as it comes.
                    let _ = s
                        .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let mut sink = [0u8; 8192];
                    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
                        .await;
                }
            });
        }
    });
    let (gw, token) = one_worker_gateway(addr);
    let mut uploader = TcpStream::connect(gw.addr).await.unwrap();
    uploader
        .write_all(
            format!(
                "POST /plant-7/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 1000000\r\n\r\n0123456789"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let early = read_response(&mut uploader, &mut Vec::new(), "POST").await;
    assert_eq!(early.status, 413, "{early:?}");
    // The uploader keeps its connection open and sends nothing more. The next request with
    // a body (so hyper's pool serves it) must not wait for that upload.
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            format!(
                "POST /plant-7/next HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\nhi"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        read_response(&mut s, &mut Vec::new(), "POST").await
    })
    .await
    .expect("the next request waited on a connection still uploading");
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.body, b"next");
    drop(uploader);
    task.abort();
}

/// After a response that ended its connection: nothing follows it (`buf` holds what was
/// read past the response), so the request pipelined behind it was never answered.
async fn closes_with_nothing_more(s: &mut TcpStream, buf: &[u8], case: &str) {
    let mut more = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut more))
        .await
        .expect("connection closed in time")
        .unwrap_or(0);
    assert_eq!(
        (buf.len(), n),
        (0, 0),
        "{case:?}: the pipelined request was answered: {:?}",
        String::from_utf8_lossy(&more[..n])
    );
}

/// Requests two parsers could read differently (RFC 9112 §3.2, §6.1) never reach the
/// twin on either path: each is refused, with its connection closed so the bytes after it
/// (here a pipelined request) are never read as a request.
#[tokio::test(flavor = "multi_thread")]
async fn requests_with_doubtful_host_or_framing_are_refused_and_their_connection_closed() {
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let cases = [
        (
            "GET",
            "Host: gw\r\nHost: other\r\n\r\n",
            400,
            "more than one Host",
        ),
        ("GET", "\r\n", 400, "must carry a Host"),
        // Plain otherwise, so the fast path would take it if it let the host through.
        ("GET", "Host: gw@evil\r\n\r\n", 400, "not a host"),
        ("GET", "Host: gw/x\r\n\r\n", 400, "not a host"),
        (
            "POST",
            "Host: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            501,
            "\\\"gzip\\\"",
        ),
        (
            "POST",
            "Host: gw\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            "\\\"gzip\\\"",
        ),
        (
            "POST",
            "Host: gw\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
            "chunked more than once",
        ),
    ];
    for (method, rest, status, says) in cases {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "{method} /plant-7/doubtful HTTP/1.1\r\n{auth}{rest}\
             GET /plant-7/pipelined HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let got = read_response(&mut s, &mut buf, method).await;
        let body = String::from_utf8_lossy(&got.body);
        assert_eq!(got.status, status, "{rest:?}: {got:?}");
        assert!(body.contains(says), "{rest:?}: {body}");
        assert_eq!(got.header("connection"), Some("close"), "{rest:?}");
        closes_with_nothing_more(&mut s, &buf, rest).await;
    }
    // The framing errors hyper refuses while parsing, before the gateway sees the request.
    for doubtful in [
        "POST /plant-7/doubtful HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "POST /plant-7/doubtful HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let req = format!(
            "{doubtful}GET /plant-7/pipelined HTTP/1.1\r\nHost: gw\r\n{auth}\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
            .await
            .expect("connection closed in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{doubtful:?}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{doubtful:?}: {answer}");
    }
    assert_eq!(twin.heads(), Vec::<String>::new());
    // The route itself is open to this token: the refusals above were the requests'.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let req = format!("GET /plant-7/fine HTTP/1.1\r\nHost: gw\r\n{auth}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let got = read_response(&mut s, &mut Vec::new(), "GET").await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, &b"you asked for /plant-7/fine"[..])
    );
}

/// A request with both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3): the body
/// is read as chunked, the twin gets no length beside it, and the connection closes after
/// the response, so bytes a length-reading hop would have taken as the body are never
/// read as a request.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_length_and_chunked_is_read_as_chunked_and_ends_its_connection() {
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Read by the length, the body would be "0\r\n\r\nG" and the pipelined request
    // would start at "ET"; read as chunked, it is empty and the GET is whole.
    let req = format!(
        "POST /plant-7/both HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /plant-7/pipelined HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let got = read_response(&mut s, &mut buf, "POST").await;
    assert_eq!(got.body, b"you asked for /plant-7/both");
    assert_eq!(got.header("connection"), Some("close"));
    closes_with_nothing_more(&mut s, &buf, "length and chunked").await;
    let heads = twin.heads();
    assert!(heads[0].starts_with("POST /plant-7/both "), "{heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("content-length"),
        "{heads:?}"
    );
    assert!(!heads.iter().any(|h| h.contains("pipelined")), "{heads:?}");
}

/// A client connection that does not send a whole request head within 75 s of the gateway
/// starting to wait for one (at the connection's opening or after a response) is closed,
/// on either path: idle keep-alive connections and heads sent a piece at a time would
/// otherwise hold a connection for good. Each request starts the count anew. An HTTP/2
/// connection with no request in flight on which nothing moved for 75 s is closed too.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_no_whole_head_for_75_s_is_closed_on_either_path() {
    const TIMEOUT: Duration = Duration::from_secs(75);
    let twin = RawTwin::start(ok_with_path).await;
    let (gw, token) = one_worker_gateway(twin.addr);
    let get =
        format!("GET /plant-7/a HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");
    // Has a body, so hyper serves it and the rest of its connection.
    let post = format!(
        "POST /plant-7/a HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 2\r\n\r\nhi"
    );
    let half = "GET /plant-7/b HTTP/1.1\r\nHost: gw\r\n";
    // (case, a request answered first (its method and bytes), then what is sent and left
    // unfinished); the public listener's unless the case names the admin listener.
    type Case = (&'static str, Option<(&'static str, String)>, &'static str);
    let cases: Vec<Case> = vec![
        ("opened, nothing sent", None, ""),
        ("half a head", None, half),
        ("admin listener: opened, nothing sent", None, ""),
        (
            "admin listener: half a head",
            None,
            "GET /healthz HTTP/1.1\r\n",
        ),
        (
            "idle after a fast-path answer",
            Some(("GET", get.clone())),
            "",
        ),
        (
            "half a head after a fast-path answer",
            Some(("GET", get.clone())),
            half,
        ),
        (
            "idle after hyper's answer",
            Some(("POST", post.clone())),
            "",
        ),
        (
            "half a head after hyper's answer",
            Some(("POST", post.clone())),
            half,
        ),
    ];
    let mut waits = Vec::new();
    for (case, first, rest) in cases {
        let addr = if case.starts_with("admin") {
            gw.admin
        } else {
            gw.addr
        };
        waits.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            if let Some((method, req)) = first {
                s.write_all(req.as_bytes()).await.unwrap();
                let got = read_response(&mut s, &mut buf, method).await;
                assert_eq!(got.status, 200, "{case}");
            }
            s.write_all(rest.as_bytes()).await.unwrap();
            let waiting = tokio::time::Instant::now();
            let mut more = Vec::new();
            let end =
                tokio::time::timeout(TIMEOUT + Duration::from_secs(10), s.read_to_end(&mut more))
                    .await
                    .unwrap_or_else(|_| panic!("{case}: still open after 85 s"));
            let waited = waiting.elapsed();
            // Closed, perhaps with a 408 first; reset is a close too.
            let more = String::from_utf8_lossy(&more);
            assert!(
                end.is_err() || more.is_empty() || more.starts_with("HTTP/1.1 408 "),
                "{case}: {more}"
            );
            // The admin listener has no fast path reading the first head: until a client
            // has sent enough to tell HTTP/1.1 from HTTP/2, the quiet-connection rule
            // ends it, looked at every 5 s.
            let slack = if case.starts_with("admin") { 7 } else { 5 };
            assert!(
                waited >= TIMEOUT - Duration::from_secs(1)
                    && waited < TIMEOUT + Duration::from_secs(slack),
                "{case}: closed after {waited:?}"
            );
        }));
    }
    // HTTP/2 has no request head to wait for: a connection on which no byte moved for
    // 75 s gets GOAWAY and is closed (within the 5 s its activity is looked at).
    let addr = gw.addr;
    let h2 = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The preface and an empty SETTINGS frame.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let waiting = tokio::time::Instant::now();
        let mut frames = Vec::new();
        tokio::time::timeout(
            TIMEOUT + Duration::from_secs(15),
            s.read_to_end(&mut frames),
        )
        .await
        .expect("HTTP/2: still open after 90 s")
        .unwrap();
        let waited = waiting.elapsed();
        let mut types = Vec::new();
        let mut at = 0;
        while at + 9 <= frames.len() {
            let len = usize::from(frames[at]) << 16
                | usize::from(frames[at + 1]) << 8
                | usize::from(frames[at + 2]);
            types.push(frames[at + 3]);
            at += 9 + len;
        }
        assert!(
            types.contains(&0x7),
            "HTTP/2: no GOAWAY among frame types {types:?}"
        );
        assert!(
            waited >= TIMEOUT - Duration::from_secs(1) && waited < TIMEOUT + Duration::from_secs(7),
            "HTTP/2: closed after {waited:?}"
        );
    });
    // Nor does that cut off a request in flight, however long its twin takes: here an
    // HTTP/2 request whose twin answers after 85 s, no byte moving meanwhile.
    let slow_twin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow_twin.local_addr().unwrap();
    let slow_gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec {
            extra: "timeout = \"2m\"",
            ..RouteSpec::new("slow", "/slow", slow_addr, "plant-7", 2)
        }],
        ..Default::default()
    });
    let slow_token = slow_gw.token("sim-7", &["sim-runner"], &[], "1d");
    let slow_url = slow_gw.url("/slow/report");
    let slow = tokio::spawn(async move {
        let twin = tokio::spawn(async move {
            let (mut s, _) = slow_twin.accept().await.unwrap();
            let mut buf = Vec::new();
            read_until_head_end(&mut s, &mut buf).await.unwrap();
            tokio::time::sleep(TIMEOUT + Duration::from_secs(10)).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
                .await
                .unwrap();
        });
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let r = client
            .get(&slow_url)
            .bearer_auth(&slow_token)
            .send()
            .await
            .expect("the slow answer, on the connection it was asked on");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "slow");
        twin.await.unwrap();
        drop(slow_gw);
    });
    // A connection whose requests come 40 s apart stays open: the count restarts with each.
    let addr = gw.addr;
    let steady = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        for (i, method) in ["GET", "POST", "GET"].into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_secs(40)).await;
            }
            let req = if method == "GET" { &get } else { &post };
            s.write_all(req.as_bytes()).await.unwrap();
            let got = read_response(&mut s, &mut buf, method).await;
            assert_eq!(
                got.status, 200,
                "request {i}, {method}, 40 s after the one before"
            );
        }
    });
    for w in waits {
        w.await.unwrap();
    }
    h2.await.unwrap();
    steady.await.unwrap();
    slow.await.unwrap();
}
