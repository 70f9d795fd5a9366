//! Test harness: a real upstream (hyper, HTTP/1.1 and HTTP/2), a real websocket upstream,
//! and the real `twinward` binary started on free ports with files in a temp directory.

#![allow(dead_code)]

pub mod browser;
pub mod idp;
pub mod signin;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_twinward")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port nobody listens on right now, from below the ephemeral range: a port the kernel
/// hands out for `:0` is as likely to be taken next as the local end of some test's
/// outgoing connection, before the gateway (started later, on a port fixed in its config)
/// binds it. nextest runs each test in a process of its own, so a port is also reserved
/// across processes: by a lock on a file named after it, held until this process exits
/// (and released by the kernel then, however it exits).
pub fn free_port() -> u16 {
    static HELD: std::sync::Mutex<Vec<(u16, std::fs::File)>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = if ephemeral_low > 11_000 {
        10_000
    } else {
        ephemeral_low / 2
    };
    let locks = std::env::temp_dir().join("twinward-test-ports");
    std::fs::create_dir_all(&locks).expect("a directory for port reservations");
    let mut held = HELD.lock().unwrap();
    for _ in 0..1000 {
        let candidate = low + (rand::random::<u16>() % (ephemeral_low - low));
        if held.iter().any(|(p, _)| *p == candidate) {
            continue;
        }
        let Ok(lock) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(locks.join(candidate.to_string()))
        else {
            continue;
        };
        // Another test process holds it.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
        // SAFETY: `fd` is the open file `lock`, which outlives the call.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            held.push((candidate, lock));
            return candidate;
        }
    }
    panic!("no free port below {ephemeral_low}")
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
    pub version: String,
    /// Trailer fields that came after the body.
    pub trailers: BTreeMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// An upstream that records every request and answers with a JSON echo. Paths containing
/// `/slow` answer after 3 seconds. Bodies are counted as they stream, never buffered.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = s2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, std::convert::Infallible>(echo(req, seen).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn echo(req: Request<Incoming>, seen: Arc<Mutex<Vec<Seen>>>) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let slow = target.contains("/slow");
    let mut body = req.into_body();
    let mut body_len = 0u64;
    let mut trailers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
                for (k, v) in f.trailers_ref().into_iter().flatten() {
                    trailers
                        .entry(k.as_str().to_owned())
                        .or_default()
                        .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
            }
            Err(_) => break,
        }
    }
    let s = Seen {
        method,
        target,
        headers,
        body_len,
        version,
        trailers,
    };
    let json = serde_json::json!({
        "method": s.method, "target": s.target, "headers": s.headers, "body_len": s.body_len, "version": s.version,
    });
    seen.lock().unwrap().push(s);
    if slow {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(json.to_string())))
        .unwrap()
}

/// The websocket twin's handshake answer, with a try at planting the gateway's cookie.
// The error type is tungstenite's, fixed by its callback trait.
#[allow(clippy::result_large_err)]
fn plant_cookies(
    _: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut resp: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    for c in ["__Host-twinward=planted; Path=/; Secure", "theme=dark"] {
        resp.headers_mut().append(
            "set-cookie",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(c),
        );
    }
    Ok(resp)
}

/// A websocket server that echoes every message. Its handshake answer tries to plant the
/// gateway's session cookie, next to a cookie of its own.
pub struct WsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        use futures_util::{SinkExt, StreamExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut ws) =
                        tokio_tungstenite::accept_hdr_async(stream, plant_cookies).await
                    else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsUpstream { addr, task }
    }
}

/// One route for the gateway config.
pub struct RouteSpec {
    pub name: &'static str,
    pub host: Option<&'static str>,
    pub prefix: &'static str,
    pub upstream: String,
    pub twin: &'static str,
    pub sensitivity: i64,
    /// Extra TOML lines for this route.
    pub extra: &'static str,
}

impl RouteSpec {
    pub fn new(
        name: &'static str,
        prefix: &'static str,
        upstream: SocketAddr,
        twin: &'static str,
        sensitivity: i64,
    ) -> Self {
        RouteSpec {
            name,
            host: None,
            prefix,
            upstream: format!("http://{upstream}"),
            twin,
            sensitivity,
            extra: "",
        }
    }
}

/// A running gateway binary with its own directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
pub struct GatewayOptions {
    pub routes: Vec<RouteSpec>,
    /// Extra TOML lines inside `[server]`.
    pub server_extra: String,
    /// Extra top-level TOML (other sections).
    pub extra: String,
    /// The public port, when a test must know it before the gateway starts (an IdP's
    /// redirect URI); a free port otherwise.
    pub port: Option<u16>,
    /// Policy files (name, Cedar text) that replace the shipped `*.cedar` files; the
    /// shipped schema and entities stay.
    pub policies: Option<Vec<(String, String)>>,
    /// Files (path relative to the gateway's directory, content) written before it starts.
    pub files: Vec<(String, String)>,
    /// The open-file limit (soft, hard) the gateway starts with; the test's own otherwise.
    pub open_files: Option<(u64, u64)>,
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

impl Gateway {
    pub fn start(opts: GatewayOptions) -> Gateway {
        // A port picked free can be taken by a parallel test before the gateway binds it:
        // such a start is tried again on other ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let gw = Gateway::launch(&opts);
            match gw.wait_ready() {
                Ok(()) => return gw,
                Err(log)
                    if attempts < 3
                        && opts.port.is_none()
                        && log.contains("Address already in use") =>
                {
                    drop(gw);
                }
                Err(log) => panic!("gateway did not become ready; log:\n{log}"),
            }
        }
    }

    /// Prepares a directory with the policies, files and config (on fresh ports unless
    /// `opts.port` fixes one) and starts the gateway there.
    fn launch(opts: &GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("policies"), &dir.path().join("policies"));
        if let Some(policies) = &opts.policies {
            let pdir = dir.path().join("policies");
            for e in std::fs::read_dir(&pdir).unwrap() {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "cedar") {
                    std::fs::remove_file(path).unwrap();
                }
            }
            for (name, text) in policies {
                std::fs::write(pdir.join(name), text).unwrap();
            }
        }
        for (name, content) in &opts.files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            // Secret files among them must be private: the gateway refuses others.
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        let port = opts.port.unwrap_or_else(free_port);
        let admin_port = free_port();
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n{}\n\n[credentials]\nissuer = \"https://gw.test\"\nactivation_delay = \"0s\"\n\n{}\n",
            opts.server_extra, opts.extra
        );
        for r in &opts.routes {
            toml.push_str(&format!(
                "[[routes]]\nname = \"{}\"\n{}path_prefix = \"{}\"\nupstream = \"{}\"\ntwin = \"{}\"\nattributes = {{ environment = \"twin\", site = \"{}\", sensitivity = {} }}\n{}\n",
                r.name,
                r.host.map(|h| format!("host = \"{h}\"\n")).unwrap_or_default(),
                r.prefix,
                r.upstream,
                r.twin,
                r.twin,
                r.sensitivity,
                r.extra
            ));
        }
        let config = dir.path().join("twinward.toml");
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut command = Command::new(bin());
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((soft, hard)) = opts.open_files {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: only setrlimit runs between fork and exec, on a struct of its own.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().expect("start twinward");
        Gateway {
            dir,
            config,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            child,
        }
    }

    /// Waits for `/readyz`; the gateway's log if it never answers, or exits first.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if raw(
                self.admin,
                "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
            )
            .is_ok_and(|r| r.status == 200)
            {
                return Ok(());
            }
            if self.log().contains("Address already in use") {
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// Runs the CLI against this gateway's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run twinward")
    }

    /// Creates a token with the CLI and returns its text.
    pub fn token(
        &self,
        service_account: &str,
        roles: &[&str],
        twins: &[&str],
        ttl: &str,
    ) -> String {
        let mut args = vec![
            "token",
            "create",
            "--service-account",
            service_account,
            "--ttl",
            ttl,
        ];
        for r in roles {
            args.extend(["--role", r]);
        }
        for t in twins {
            args.extend(["--twin", t]);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Id of the most recently created token (from `token list`).
    pub fn last_token_id(&self) -> String {
        let out = self.cli(&["token", "list"]);
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .last()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// Audit events as JSON values.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["audit", "export"]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (up to 5 s) until the audit log holds an event matching `pred`.
    pub fn wait_audit(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(e) = self.audit().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no matching audit event; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Runs one of the blocking helpers below from an async test.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Sends bytes exactly as given (no client-side normalization) and reads the response.
/// The request should carry `Connection: close`.
pub fn raw(addr: SocketAddr, request: &str) -> std::io::Result<RawResponse> {
    raw_bytes(addr, request.as_bytes())
}

/// [`raw`] for a request that is not valid UTF-8 (raw bytes in the target).
/// Reads from `s` until a request or response head has come whole; `None` if the peer
/// closes (or fails) first. What came after the head is in the returned bytes too.
pub async fn read_head_async(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

pub fn raw_bytes(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head);
    let body = if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Status code and headers (names as sent) of an HTTP/1.1 response head.
pub fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(rest.get(..n).unwrap_or(rest));
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// `GET target` with an optional bearer and extra header lines, sent byte for byte.
pub fn get(
    addr: SocketAddr,
    target: &str,
    bearer: Option<&str>,
    extra: &[(&str, &str)],
) -> RawResponse {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, &req).expect("request")
}

/// Runs a command and fails with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---- Helpers for the credential, forward-auth, token-exchange, reload and CLI tests ----

/// Runs blocking test code (child processes, raw sockets) on a multi-thread runtime without
/// stalling the upstreams that share it.
pub fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Polls `check` every 100 ms until it returns true; fails after `timeout` naming `what`.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tests/js`, with its node packages installed; fails naming what to install otherwise.
pub fn js_dir() -> PathBuf {
    let dir = repo().join("tests/js");
    assert!(
        dir.join("node_modules/jose/package.json").is_file(),
        "tests/js/node_modules is missing: run `npm ci --prefix tests/js` \
         (needs Node.js 20+ and npm: apt-get install nodejs npm)"
    );
    dir
}

/// Verifies a JWT with jose, an implementation independent of the gateway's, against the
/// JWKS served at `jwks_url`, requiring `issuer` and `audience`. Returns the verified
/// payload, or jose's error message.
pub fn jose_verify(
    jwks_url: &str,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<serde_json::Value, String> {
    let dir = js_dir();
    let out = Command::new("node")
        .arg(dir.join("verify-jwt.mjs"))
        .args([jwks_url, token, issuer, audience])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): install Node.js 20+ (apt-get install nodejs npm)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => serde_json::from_str(stdout.trim())
            .map_err(|e| format!("verify-jwt.mjs printed no JSON ({e}): {stdout}")),
        Some(1) => Err(stderr.trim().to_owned()),
        _ => panic!("verify-jwt.mjs failed to run: {stdout}\n{stderr}"),
    }
}

/// Header and claims of a JWT, decoded without verification.
pub fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    use base64::Engine;
    let part = |i: usize| -> serde_json::Value {
        let seg = token
            .split('.')
            .nth(i)
            .unwrap_or_else(|| panic!("not a JWT: {token}"));
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(seg)
            .unwrap_or_else(|e| panic!("JWT segment {i} is not base64url ({e}): {token}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT segment {i}: {e}"))
    };
    (part(0), part(1))
}

/// The JWKS a gateway serves at `path`, as JSON.
pub fn jwks_of(gw: &Gateway, path: &str) -> serde_json::Value {
    let r = get(gw.addr, path, None, &[]);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.json()
}

/// The `kid`s a JWKS lists.
pub fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .map(|ks| {
            ks.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `application/x-www-form-urlencoded` encoding of `fields`.
pub fn form_encode(fields: &[(&str, &str)]) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `POST target` with a form body, sent byte for byte.
pub fn post_form(addr: SocketAddr, target: &str, fields: &[(&str, &str)]) -> RawResponse {
    let body = form_encode(fields);
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(addr, &req).expect("request")
}

/// `GET path` on the admin listener.
pub fn admin_get(gw: &Gateway, path: &str) -> RawResponse {
    raw(
        gw.admin,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
    )
    .expect("admin request")
}

/// The SQLite database of a harness gateway (the default `sqlite://twinward.db` beside its config).
pub fn gateway_db(gw: &Gateway) -> PathBuf {
    gw.dir.path().join("twinward.db")
}

/// Runs SQL against a SQLite file the way an attacker with file access would: with the
/// `sqlite3` CLI, or Python's sqlite3 module when the CLI is not installed.
pub fn sqlite_exec(db: &Path, sql: &str) {
    let cli = Command::new("sqlite3")
        .arg("-bail")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(sql)
        .output();
    let out = match cli {
        Ok(out) => out,
        Err(_) => Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=5)\nc.executescript(sys.argv[2])\nc.commit()\n",
            ])
            .arg(db)
            .arg(sql)
            .output()
            .expect("neither the sqlite3 CLI nor python3 is installed (apt-get install sqlite3)"),
    };
    assert!(
        out.status.success(),
        "SQL failed: {sql}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The nginx binary; fails naming the package to install when there is none.
pub fn nginx_bin() -> PathBuf {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nginx",
                "/usr/local/sbin/nginx",
                "/usr/local/nginx/sbin/nginx",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
        .expect("nginx is not installed: apt-get install nginx (the forward-auth tests run a real nginx)")
}

/// Runs the `twinward` binary with exactly `args` in `dir`.
pub fn twinward_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run twinward")
}

/// An echo upstream behind a gateway with two routes: `/plant-7` (twin plant-7,
/// sensitivity 2) and `/plant-9` (twin plant-9, sensitivity 3).
pub async fn two_plants() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2),
            RouteSpec::new("plant-9", "/plant-9", up.addr, "plant-9", 3),
        ],
        ..Default::default()
    });
    (up, gw)
}

/// A gateway with one worker (so every client connection shares the one upstream pool)
/// routing /plant-7 to `upstream`, and a sim-runner token for it.
pub fn one_worker_gateway(upstream: SocketAddr) -> (Gateway, String) {
    let gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec::new(
            "plant-7", "/plant-7", upstream, "plant-7", 2,
        )],
        server_extra: "workers = 1".into(),
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    (gw, token)
}
