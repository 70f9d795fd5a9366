//! Forward-auth: a real nginx in front (`auth_request` to `/.twinward/verify`), and the
//! endpoint itself with Traefik-style headers and from an untrusted peer.

use crate::common::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const HOST: &str = "twins.test";

/// An nginx running in the foreground with everything in its own temp directory.
struct Nginx {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn start(gateway: SocketAddr, upstream: SocketAddr) -> Nginx {
        let bin = nginx_bin();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let port = free_port();
        // One process (no master/worker split), so killing the child stops nginx entirely.
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    server_name {HOST};
    location / {{
      auth_request /_twinward;
      auth_request_set $assertion $upstream_http_x_twinward_assertion;
      proxy_set_header X-Twinward-Assertion $assertion;
      # The client's API token is for the gateway, not for the twin.
      proxy_set_header Authorization "";
      proxy_pass http://{upstream};
    }}
    location = /_twinward {{
      internal;
      proxy_pass http://{gateway}/.twinward/verify;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
  }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut n = Nginx {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            child,
        };
        n.wait_ready();
        n
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nginx exited with {status}:\n{}", self.error_log());
            }
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "nginx did not listen on {}:\n{}",
            self.addr,
            self.error_log()
        );
    }

    fn get(&self, path: &str, bearer: Option<&str>, extra: &[(&str, &str)]) -> RawResponse {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
        if let Some(t) = bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        raw(self.addr, &req).expect("request through nginx")
    }
}

fn route(
    name: &'static str,
    prefix: &'static str,
    up: &Upstream,
    twin: &'static str,
    s: i64,
) -> RouteSpec {
    let mut r = RouteSpec::new(name, prefix, up.addr, twin, s);
    r.host = Some(HOST);
    r
}

fn trusted_gateway(up: &Upstream) -> Gateway {
    Gateway::start(GatewayOptions {
        routes: vec![
            route("plant-7", "/plant-7", up, "plant-7", 2),
            route("plant-9", "/plant-9", up, "plant-9", 3),
        ],
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_lets_allowed_requests_through_with_a_verifiable_assertion() {
    let up = Upstream::start().await;
    let gw = trusted_gateway(&up);
    let nginx = sync(|| Nginx::start(gw.addr, up.addr));
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");

    let ok = sync(|| {
        nginx.get(
            "/plant-7/sensors?window=5m",
            Some(&token),
            &[("X-Twinward-Assertion", "forged-by-client")],
        )
    });
    assert_eq!(ok.status, 200, "{}\n{}", ok.body, nginx.error_log());
    assert_eq!(up.count(), 1);
    let seen = up.last().unwrap();
    assert_eq!(seen.target, "/plant-7/sensors?window=5m");
    let assertion = seen
        .header("x-twinward-assertion")
        .expect("the twin gets an assertion")
        .to_owned();
    assert_ne!(assertion, "forged-by-client");
    assert!(seen.header("authorization").is_none());
    let jwks = gw.url("/.well-known/jwks.json");
    let claims = sync(|| jose_verify(&jwks, &assertion, "https://gw.test", "plant-7"))
        .unwrap_or_else(|e| panic!("jose refused the forward-auth assertion: {e}"));
    assert_eq!(claims["twin"], "plant-7");
    assert!(claims["scope"].as_str().unwrap().contains("read"));
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["outcome"] == "allow"
            && e["route"] == "plant-7"
            && e["detail"]["path"] == "/plant-7/sensors"
    });

    // No token: 401 with the challenge; denied by policy: 403. The twin sees neither.
    let (none, denied, sneaky) = sync(|| {
        (
            nginx.get("/plant-7/sensors", None, &[]),
            nginx.get("/plant-9/sensors", Some(&token), &[]),
            // nginx passes the raw URI on; the gateway normalizes it before deciding.
            nginx.get("/plant-7/%2e%2e/plant-9/sensors", Some(&token), &[]),
        )
    });
    assert_eq!(none.status, 401, "{}", nginx.error_log());
    assert!(none
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    assert_eq!(denied.status, 403, "{}", nginx.error_log());
    assert_eq!(sneaky.status, 403, "{}\n{}", sneaky.body, nginx.error_log());
    // nginx overwrites its own X-Original-* but passes a client's Traefik-style set on.
    let spoofed = sync(|| {
        nginx.get(
            "/plant-7/sensors",
            Some(&token),
            &[("X-Forwarded-Uri", "/plant-7/elsewhere")],
        )
    });
    assert_eq!(
        spoofed.status,
        403,
        "{}\n{}",
        spoofed.body,
        nginx.error_log()
    );
    assert_eq!(up.count(), 1, "refused requests must not reach the twin");
}

fn verify_request(gw: &Gateway, bearer: Option<&str>, headers: &[(&str, &str)]) -> RawResponse {
    get(gw.addr, "/.twinward/verify", bearer, headers)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_answers_only_trusted_proxies() {
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![route("plant-7", "/plant-7", &up, "plant-7", 2)],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let url = format!("http://{HOST}/plant-7/x");
    let rs = sync(|| {
        [
            verify_request(
                &gw,
                Some(&token),
                &[("X-Original-URL", &url), ("X-Original-Method", "GET")],
            ),
            verify_request(
                &gw,
                Some(&token),
                &[
                    ("X-Forwarded-Method", "GET"),
                    ("X-Forwarded-Proto", "http"),
                    ("X-Forwarded-Host", HOST),
                    ("X-Forwarded-Uri", "/plant-7/x"),
                ],
            ),
            verify_request(&gw, Some(&token), &[]),
        ]
    });
    for r in &rs {
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("trusted proxies"), "{}", r.body);
        assert!(r.header("x-twinward-assertion").is_none());
    }
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_understands_traefik_style_headers_from_a_trusted_peer() {
    let up = Upstream::start().await;
    let gw = trusted_gateway(&up);
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let etl = gw.token("etl", &["data-pipeline"], &[], "1d");
    let traefik = |method: &'static str, host: &'static str, uri: &'static str| {
        vec![
            ("X-Forwarded-Method", method),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", host),
            ("X-Forwarded-Uri", uri),
        ]
    };
    // Traefik copies the client's own headers onto the auth request: a client-written nginx
    // set claiming a read must not stand in for the write Traefik reports.
    let url = format!("http://{HOST}/plant-7/x");
    let mut spoofed_read = traefik("POST", HOST, "/plant-7/x");
    spoofed_read.extend([
        ("X-Original-URL", url.as_str()),
        ("X-Original-Method", "GET"),
    ]);
    let (ok, etl_read, etl_write, other_route, other_host, traversal, none, no_original) =
        sync(|| {
            (
                verify_request(&gw, Some(&sim), &traefik("GET", HOST, "/plant-7/x?y=1")),
                verify_request(&gw, Some(&etl), &traefik("GET", HOST, "/plant-7/x")),
                verify_request(&gw, Some(&etl), &traefik("POST", HOST, "/plant-7/x")),
                verify_request(&gw, Some(&sim), &traefik("GET", HOST, "/plant-9/x")),
                verify_request(
                    &gw,
                    Some(&sim),
                    &traefik("GET", "elsewhere.test", "/plant-7/x"),
                ),
                verify_request(
                    &gw,
                    Some(&sim),
                    &traefik("GET", HOST, "/plant-7/../plant-9/x"),
                ),
                verify_request(&gw, None, &traefik("GET", HOST, "/plant-7/x")),
                verify_request(&gw, Some(&sim), &[]),
            )
        });
    let spoofed = sync(|| verify_request(&gw, Some(&etl), &spoofed_read));
    assert_eq!(spoofed.status, 403, "{}", spoofed.body);
    assert!(spoofed.body.contains("disagrees"), "{}", spoofed.body);
    assert!(spoofed.header("x-twinward-assertion").is_none());
    assert_eq!(ok.status, 200, "{}", ok.body);
    let assertion = ok.header("x-twinward-assertion").expect("assertion header");
    assert!(ok.header("x-twinward-decision-id").is_some());
    let (_, claims) = jwt_parts(assertion);
    assert_eq!(claims["aud"], "plant-7");
    let jwks = gw.url("/.twinward/jwks.json");
    sync(|| jose_verify(&jwks, assertion, "https://gw.test", "plant-7"))
        .unwrap_or_else(|e| panic!("{e}"));

    // The method in X-Forwarded-Method is what policy decides on: pipelines only read.
    assert_eq!(etl_read.status, 200, "{}", etl_read.body);
    assert_eq!(etl_write.status, 403, "{}", etl_write.body);
    assert!(etl_write.header("x-twinward-assertion").is_none());
    assert_eq!(other_route.status, 403, "{}", other_route.body);
    assert_eq!(other_host.status, 403, "{}", other_host.body);
    assert_eq!(traversal.status, 403, "{}", traversal.body);
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(no_original.status, 400, "{}", no_original.body);
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["outcome"] == "deny"
            && e["action"] == "write"
            && e["actor"] == "etl"
    });
    assert_eq!(up.count(), 0, "forward-auth never proxies");
}
