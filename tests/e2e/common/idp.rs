//! A real, independent OpenID provider for the end-to-end tests: the certified `oidc-provider`
//! package run by `tests/js/oidc-idp.mjs` on loopback, with its test control endpoints.
//!
//! The provider listens on 127.0.0.1 with the issuer `http://localhost:<port>`. It does the
//! authorization code flow only, with PKCE (S256) required, `client_secret_basic` at the token
//! endpoint and RS256 ID tokens carrying `email`, `name`, `groups` and `amr: ["pwd"]`. Its
//! login page lists one button per user (`name="user" value="<id>"`) and a cancel button;
//! choosing a user also grants consent. Its cookies are named `idp_*`, apart from the
//! gateway's on the shared host `localhost`, and a browser stays signed in to it (SSO) until
//! its context is dropped; `prompt=login` shows the login page again.
//!
//! Everything here is blocking std I/O, usable from sync and async tests alike (wrap calls in
//! [`super::sync`] on a multi-thread runtime).

use super::{js_dir, raw, RawResponse};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// One user the provider can sign in; `id` is the `sub` of their ID tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpUser {
    pub id: String,
    pub email: String,
    pub name: String,
    pub groups: Vec<String>,
}

impl IdpUser {
    pub fn new(id: &str, email: &str, name: &str, groups: &[&str]) -> IdpUser {
        IdpUser {
            id: id.to_owned(),
            email: email.to_owned(),
            name: name.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "email": self.email, "name": self.name, "groups": self.groups,
        })
    }
}

/// A running `oidc-idp.mjs`, killed on drop.
pub struct Idp {
    /// `http://localhost:<port>`, exactly as in its discovery document and ID tokens.
    pub issuer: String,
    /// The one registered client: `twinward`.
    pub client_id: String,
    /// That client's secret, random for each provider.
    pub client_secret: String,
    /// Where it listens: 127.0.0.1 and the issuer's port.
    pub addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the provider may take to print its READY line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

impl Idp {
    /// The client id the provider registers.
    pub const CLIENT_ID: &'static str = "twinward";

    /// alice (`twin-operators`), bob (`twin-viewers`), carol (`marketing`, which maps to no
    /// gateway role) and dave (`contractors`).
    pub fn default_users() -> Vec<IdpUser> {
        vec![
            IdpUser::new(
                "alice",
                "alice@example.com",
                "Alice Anders",
                &["twin-operators"],
            ),
            IdpUser::new("bob", "bob@example.com", "Bob Brandt", &["twin-viewers"]),
            IdpUser::new("carol", "carol@example.com", "Carol Chen", &["marketing"]),
            IdpUser::new("dave", "dave@example.com", "Dave Diaz", &["contractors"]),
        ]
    }

    /// Starts a provider with the client `twinward` (random secret) allowed to redirect to
    /// `redirect_uris`, and `users`. Waits until it serves requests.
    pub fn start(redirect_uris: &[String], users: &[IdpUser]) -> Idp {
        let js = js_dir();
        assert!(
            js.join("node_modules/oidc-provider/package.json").is_file(),
            "tests/js/node_modules has no oidc-provider: run `npm ci --prefix tests/js` \
             (needs Node.js 20+ and npm: apt-get install nodejs npm)"
        );
        let client_secret = hex::encode(rand::random::<[u8; 24]>());
        let config = serde_json::json!({
            "port": 0,
            "clients": [{
                "client_id": Self::CLIENT_ID,
                "client_secret": client_secret,
                "redirect_uris": redirect_uris,
            }],
            "users": users.iter().map(IdpUser::to_json).collect::<Vec<_>>(),
        });
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("idp.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let mut child = Command::new("node")
            .arg("oidc-idp.mjs")
            .arg(&config_path)
            .current_dir(&js)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run node ({e}): install Node.js 20+ and npm (apt-get install nodejs npm), \
                     then `npm ci --prefix tests/js`"
                )
            });

        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("[idp] {line}");
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });

        let (ready_tx, ready_rx) = mpsc::channel();
        let out_pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = ready_tx.send(issuer.trim().to_owned());
                }
            }
        });

        let issuer = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(issuer) => issuer,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Let the reader thread take in the last lines.
                std::thread::sleep(Duration::from_millis(200));
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no READY line in {READY_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => format!("it exited ({status:?})"),
                };
                panic!(
                    "the OpenID provider (node tests/js/oidc-idp.mjs) did not start: {why}.\n\
                     It needs Node.js 20+ and its packages (apt-get install nodejs npm; \
                     npm ci --prefix tests/js). Its stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let port: u16 = issuer
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("READY line without a port: {issuer}"));
        Idp {
            issuer,
            client_id: Self::CLIENT_ID.to_owned(),
            client_secret,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            stderr,
            _dir: dir,
        }
    }

    /// The issuer followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.issuer, path)
    }

    /// What the provider has written to stderr so far (its request log and errors).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends one request with `Host: localhost:<port>`, as a browser would for the issuer.
    /// `headers` are extra header lines; a body gets its `Content-Length`.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> RawResponse {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n",
            self.addr.port()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        raw(self.addr, &req).unwrap_or_else(|e| {
            panic!(
                "request to the OpenID provider failed: {e}; its log:\n{}",
                self.log()
            )
        })
    }

    /// `GET target`.
    pub fn get(&self, target: &str) -> RawResponse {
        self.request("GET", target, &[], None)
    }

    /// The discovery document.
    pub fn discovery(&self) -> serde_json::Value {
        let r = self.get("/.well-known/openid-configuration");
        assert_eq!(r.status, 200, "discovery: {}", r.body);
        r.json()
    }

    /// The JWKS the provider serves.
    pub fn jwks(&self) -> serde_json::Value {
        let r = self.get("/jwks");
        assert_eq!(r.status, 200, "jwks: {}", r.body);
        r.json()
    }

    fn control(&self, method: &str, name: &str, body: Option<serde_json::Value>) -> RawResponse {
        let body = body.map(|b| b.to_string());
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        self.request(
            method,
            &format!("/__control/{name}"),
            headers,
            body.as_deref(),
        )
    }

    /// `GET /__control/state`: `{"tokens_issued", "tamper", "kid", "kids"}`.
    pub fn state(&self) -> serde_json::Value {
        let r = self.control("GET", "state", None);
        assert_eq!(r.status, 200, "control state: {}", r.body);
        r.json()
    }

    /// A new signing key with a new kid, used for every ID token from now on; returns that
    /// kid. The JWKS lists only it, or it and then the previous keys with `keep_old`. Logins
    /// in progress (sessions, codes) survive a rotation.
    pub fn rotate(&self, keep_old: bool) -> String {
        let r = self.control(
            "POST",
            "rotate",
            Some(serde_json::json!({ "keep_old": keep_old })),
        );
        assert_eq!(r.status, 200, "control rotate: {}", r.body);
        r.json()["kid"].as_str().unwrap().to_owned()
    }

    /// Rewrites the ID token of the next successful token response: `none`, `issuer`,
    /// `audience`, `azp`, `nonce`, `expired`, `iat_future` (re-signed with the real key and
    /// kid), `wrong_key` (signed with another key under the same kid) or `alg_none` (unsigned).
    pub fn tamper(&self, mode: &str) {
        let r = self.control("POST", "tamper", Some(serde_json::json!({ "mode": mode })));
        assert_eq!(r.status, 200, "control tamper {mode}: {}", r.body);
    }

    /// How many token responses with an ID token the provider has sent.
    pub fn tokens_issued(&self) -> u64 {
        self.state()["tokens_issued"].as_u64().unwrap()
    }

    /// The kid ID tokens are signed with now.
    pub fn kid(&self) -> String {
        self.state()["kid"].as_str().unwrap().to_owned()
    }
}
