//! The per-request work of the gateway in user space, without the sockets: what a worker
//! spends deciding one proxied request. `cargo bench --bench request`.
//!
//! - `authorize`: `Gateway::authorize` for an API-token request on the shipped policy set,
//!   as a tool repeating requests sees it: the token from the local cache, the decision
//!   memoized, the twin credential reused, the audit event queued. Requests are timed in
//!   bursts of 2,000 (an eighth of the audit queue), and between bursts, untimed, the audit
//!   writer catches up: appending costs about as much as deciding, and timing both would
//!   time the writer, which `cargo bench --bench audit` measures on its own.
//! - `normalize`: the request path's normal form, for a path already in normal form (what
//!   tools send; one pass) beside the same path with one escape (the full pass).
//! - `host`: the fast path's reading of `Host` as a host with an optional port, beside the
//!   visible-ASCII check it replaced (the least any reading of a header value costs).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use twinward::access::tokens::{issue, NewTokenSpec};
use twinward::access::{AccessRequest, Gateway};
use twinward::clock::{Clock, SystemClock};
use twinward::routing::path::normalize;

// The allocator the gateway binary runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BURST: u64 = 2_000;

fn config(dir: &std::path::Path) -> twinward::config::Config {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[storage]
url = "sqlite://{dir}/twinward.db"

[credentials]
keys_dir = "{dir}/keys"

[policy]
dir = "{policies}"

[[routes]]
name = "plant-7"
path_prefix = "/plant-7"
upstream = "http://127.0.0.1:9"
twin = "plant-7"
attributes = {{ environment = "twin", site = "plant-7", sensitivity = 2 }}
"#,
        dir = dir.display()
    );
    twinward::config::parse(&text, "bench.toml", dir).expect("bench config")
}

fn authorize(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (gw, _audit) = rt
        .block_on(Gateway::start(config(dir.path()), clock.clone()))
        .expect("gateway");
    let spec = NewTokenSpec {
        service_account: "bench-sim".into(),
        owner: "bench".into(),
        roles: vec!["sim-runner".into()],
        twins: Vec::new(),
        ttl: Duration::from_secs(86_400),
        user_subject: None,
    };
    let (token, _, _) = rt
        .block_on(issue(
            gw.store.as_ref(),
            &spec,
            |_| true,
            |_| true,
            Duration::from_secs(86_400 * 30),
            clock.now(),
            [7u8; 32],
        ))
        .expect("token");
    let path = normalize("/plant-7/state").unwrap();
    let route = gw.routes.find(None, &path).expect("route").clone();
    let req = AccessRequest {
        route: &route,
        method: "GET",
        path: path.shared(),
        bearer: Some(&token),
        session_cookie: None,
        client_ip: IpAddr::from([192, 0, 2, 7]),
        purpose: None,
    };
    // Allowed, or the bench measures a refusal.
    rt.block_on(gw.authorize(&req))
        .expect("the sim-runner token is allowed");
    // Everything recorded so far (start-up, the first mint, that request) is appended
    // within the writer's 20 ms linger.
    std::thread::sleep(Duration::from_millis(300));
    let appended = &gw.metrics.audit.appended;
    let mut recorded = appended.get();
    c.bench_function("authorize/api_token_memoized", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BURST);
                let started = Instant::now();
                for _ in 0..n {
                    black_box(rt.block_on(gw.authorize(black_box(&req))).is_ok());
                }
                timed += started.elapsed();
                left -= n;
                recorded += n;
                while appended.get() < recorded {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            timed
        })
    });
}

fn paths(c: &mut Criterion) {
    let mut g = c.benchmark_group("normalize");
    g.bench_function("normal_form", |b| {
        b.iter(|| normalize(black_box("/plant-7/sensors/temperature/latest")))
    });
    g.bench_function("one_escape", |b| {
        b.iter(|| normalize(black_box("/plant-7/sensors/temperature/l%61test")))
    });
    g.finish();
}

fn hosts(c: &mut Criterion) {
    let mut g = c.benchmark_group("host");
    let host: &[u8] = b"plant-7.twins.example.com:8443";
    g.bench_function("valid_host", |b| {
        b.iter(|| twinward::http::framing::valid_host(black_box(host)))
    });
    g.bench_function("visible_ascii", |b| {
        b.iter(|| twinward::http::headers::visible_ascii(black_box(host)))
    });
    g.finish();
}

criterion_group!(benches, authorize, paths, hosts);
criterion_main!(benches);
