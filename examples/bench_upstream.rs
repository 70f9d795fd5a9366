//! A minimal, fast upstream for `bench/proxy.sh`: HTTP/1.1 with keep-alive, answering every
//! request with the same 64-byte 200 body. Only a path ending in `/__headers` answers
//! differently: with the names of the request headers it received, one a line, so the
//! script can check what a proxy forwarded (the twin credential, no client token).
//!
//! `cargo run --release --example bench_upstream -- 127.0.0.1:18081 1` (address, worker
//! threads; default 1).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;

/// 64 bytes, newline included.
const BODY: &[u8; 64] =
    b"{\"twin\":\"bench\",\"state\":\"ok\",\"padding\":\".....................\"}\n";

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path().ends_with("/__headers") {
        let names: String = req
            .headers()
            .keys()
            .map(|k| format!("{}\n", k.as_str()))
            .collect();
        return Ok(Response::new(Full::new(Bytes::from(names))));
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned())
        .parse()?;
    let workers: usize = match args.next() {
        Some(w) => w.parse()?,
        None => 1,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        eprintln!("bench_upstream listening on {addr} with {workers} worker(s)");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: keep serving the open connections.
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}
