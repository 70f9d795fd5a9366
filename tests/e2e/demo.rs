//! `twinward demo` end to end over plain HTTP: the demo provider signs a demo user in, the
//! real gateway makes a session that still needs its passkey, and `twinward session
//! list|revoke` see and end it through the admin listener.

use crate::common::{bin, free_port, raw, RawResponse};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    dir: tempfile::TempDir,
    base: u16,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("demo.log")).unwrap_or_default()
    }
    fn addr(&self, offset: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + offset))
    }
    fn cli(&self, args: &[&str]) -> std::process::Output {
        let config = self.dir.path().join("demo/twinward.toml");
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    }
}

/// A base port whose +1, +2 and +9 neighbours are free too.
fn free_base() -> u16 {
    loop {
        let base = free_port();
        if base > 65000 {
            continue;
        }
        let free = [1u16, 2, 9]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
}

fn start() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let log = std::fs::File::create(dir.path().join("demo.log")).unwrap();
    let child = Command::new(bin())
        .args(["demo", "--port", &base.to_string(), "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let demo = Demo { child, dir, base };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !demo.log().contains("Stop with Ctrl-C") {
        assert!(
            Instant::now() < deadline,
            "demo did not start:\n{}",
            demo.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    demo
}

fn get(addr: SocketAddr, host: &str, target: &str, headers: &str) -> RawResponse {
    raw(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"),
    )
    .unwrap()
}

fn cookie<'a>(r: &'a RawResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .filter_map(|c| c.split_once('='))
        .find(|(n, v)| *n == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// Splits `http://host:port/path?query` into the host:port and the target.
fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_owned(), format!("/{path}"))
}

#[test]
fn demo_signs_a_user_in_and_the_session_commands_see_and_end_the_session() {
    let demo = start();
    let gw = demo.addr(0);
    let host = format!("localhost:{}", demo.base);
    assert!(demo.log().contains("never use it in production"));

    // A browser on a twin page is sent to sign in, and sign-in to the demo provider.
    let r = get(gw, &host, "/plant-7/", "Accept: text/html\r\n");
    assert_eq!(r.status, 302, "{r:?}");
    let login = r.header("location").unwrap().to_owned();
    assert!(login.contains("/.twinward/login?return_to="), "{login}");
    let (_, target) = split(&login);
    let r = get(gw, &host, &target, "Accept: text/html\r\n");
    assert_eq!(r.status, 302);
    let binding = cookie(&r, "twinward-login").unwrap().to_owned();
    let authorize = r.header("location").unwrap().to_owned();
    assert!(
        authorize.starts_with(&format!("http://localhost:{}/authorize?", demo.base + 1)),
        "{authorize}"
    );

    // The demo provider's page says loudly what it is, and signs victor in.
    let (idp_host, idp_target) = split(&authorize);
    let page = get(demo.addr(1), &idp_host, &idp_target, "");
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("Never use it in production"),
        "{}",
        page.body
    );
    let request_id = page
        .body
        .split("name=\"request_id\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_owned();
    let form = format!("request_id={request_id}&user=victor");
    let r = raw(
        demo.addr(1),
        &format!(
            "POST /authorize HTTP/1.1\r\nHost: {idp_host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ),
    )
    .unwrap();
    assert_eq!(r.status, 303, "{r:?}");
    let callback = r.header("location").unwrap().to_owned();
    assert!(callback.contains("/.twinward/callback?"), "{callback}");

    // The callback makes a session; the passkey is still to come.
    let (_, cb_target) = split(&callback);
    let r = get(
        gw,
        &host,
        &cb_target,
        &format!("Cookie: twinward-login={binding}\r\n"),
    );
    assert_eq!(r.status, 302, "{r:?}\n{}", demo.log());
    assert!(r.header("location").unwrap().contains("/.twinward/mfa?"));
    let session = cookie(&r, "twinward").unwrap().to_owned();
    let with_session = format!("Cookie: twinward={session}\r\n");
    let r = get(
        gw,
        &host,
        "/plant-7/",
        &format!("Accept: text/html\r\n{with_session}"),
    );
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("/.twinward/mfa?"));
    let r = get(
        gw,
        &host,
        "/plant-7/api/telemetry",
        &format!("Accept: application/json\r\n{with_session}"),
    );
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_user_authentication"));

    // The admin listener's session API wants the admin token from the keys directory.
    for auth in ["", "Authorization: Bearer not-the-admin-token\r\n"] {
        let r = get(demo.addr(9), "127.0.0.1", "/sessions", auth);
        assert_eq!(r.status, 401, "{r:?}");
        assert!(!r.body.contains("victor"), "{}", r.body);
        let r = raw(
            demo.addr(9),
            &format!("POST /sessions/revoke HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{{\"all\":true}}"),
        )
        .unwrap();
        assert_eq!(r.status, 401, "{r:?}");
    }

    // The admin sees the session and ends it; the cookie then counts for nothing.
    let out = demo.cli(&["session", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listed.contains("victor@"), "{listed}");
    let out = demo.cli(&["session", "revoke", "--user", "victor@example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 1"));
    let r = get(
        gw,
        &host,
        "/plant-7/",
        &format!("Accept: text/html\r\n{with_session}"),
    );
    assert_eq!(r.status, 302);
    assert!(r.header("location").unwrap().contains("/.twinward/login?"));
    let out = demo.cli(&["session", "revoke", "--all"]);
    assert_eq!(out.status.code(), Some(1), "nothing left to revoke");

    // The twin itself trusts only gateway credentials.
    let r = get(demo.addr(2), "127.0.0.1", "/plant-7/api/telemetry", "");
    assert_eq!(r.status, 401);

    // Sign-in and the revocation are in the audit trail (the writer commits in the
    // background, so give it a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let audit = loop {
        let out = demo.cli(&["audit", "export"]);
        let audit = String::from_utf8_lossy(&out.stdout).into_owned();
        if audit.contains("\"kind\":\"session.revoke\"") || std::time::Instant::now() > deadline {
            break audit;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        audit.contains("\"kind\":\"signin\"") && audit.contains("victor@"),
        "{audit}"
    );
    assert!(audit.contains("\"kind\":\"session.revoke\""), "{audit}");
}

/// What the README tells a new user to do, in a real browser: open the twin, sign in as
/// Olivia at the demo provider, create a passkey, and see the twin page show the
/// pseudonymous subject the gateway gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_in_a_browser_from_twin_link_to_twin_page_with_a_passkey() {
    use crate::common::browser::{AuthenticatorOptions, Browser};
    let demo = crate::common::sync(start);
    let base = format!("http://localhost:{}", demo.base);
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    let wait = Duration::from_secs(20);

    page.goto(&format!("{base}/plant-7/")).await;
    page.wait_for_url(
        &format!("http://localhost:{}/authorize", demo.base + 1),
        wait,
    )
    .await;
    assert!(page.text().await.contains("Never use it in production"));
    page.click("button[name=user][value=olivia]").await;
    page.wait_for_url(&format!("{base}/.twinward/mfa"), wait)
        .await;
    page.fill("#passkey-name", "demo laptop").await;
    page.click("#passkey-go").await;
    let landed = page
        .wait_for_url_matching(|u| !u.contains("/.twinward/"), wait)
        .await;
    assert_eq!(landed, format!("{base}/plant-7/"));

    // The twin shows the subject from its credential: the gateway's pseudonym, not Olivia.
    let text = page.text().await;
    page.goto(&format!("{base}/.twinward/api/me")).await;
    let me: serde_json::Value = serde_json::from_str(&page.text().await).unwrap();
    let subject = me["subject"].as_str().unwrap().to_owned();
    assert!(
        text.contains(&subject),
        "twin page does not show {subject}:\n{text}"
    );
    assert!(!text.contains("olivia@example.com"), "{text}");
    assert_eq!(me["roles"], serde_json::json!(["twin-operator"]));
}
