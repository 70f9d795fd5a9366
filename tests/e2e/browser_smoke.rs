//! The CDP driver against real Chromium and a tiny local site: navigation and statuses,
//! redirects, DOM helpers, passkeys with the virtual authenticator, cookie isolation.

use crate::common::browser::{AuthenticatorOptions, Browser};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A tiny site on 127.0.0.1, addressed as `localhost` (a secure context and a valid
/// WebAuthn RP id). `/redirect` hops through 127.0.0.1, another site, and back.
struct Site {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    async fn start() -> Site {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = hyper::service::service_fn(move |req| async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    Ok::<_, Infallible>(route(port, &req))
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    let _ = conn.await;
                });
            }
        });
        Site { port, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.port)
    }
}

fn route(port: u16, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let cookie = req.headers().get("cookie").and_then(|v| v.to_str().ok());
    let cookie = cookie.unwrap_or("none");
    let page = |status: u16, title: &str, body: &str| {
        let html = format!(
            "<!doctype html><title>{title}</title><h1>{body}</h1><p id=cookie>cookie: {cookie}</p>"
        );
        Response::builder()
            .status(status)
            .header("content-type", "text/html; charset=utf-8")
            .body(Full::new(Bytes::from(html)))
            .unwrap()
    };
    let redirect = |to: String| {
        let r = Response::builder().status(302).header("location", to);
        r.body(Full::new(Bytes::new())).unwrap()
    };
    match req.uri().path() {
        "/" | "/hello" => page(200, "Hello", "Hello from the test site"),
        "/form" => page(
            200,
            "Form",
            "<form action=/hello><input name=name><button id=go>Go</button></form>",
        ),
        "/login" => {
            let mut r = page(200, "Signed in", "Signed in");
            let cookie = "sid=s3cret; Path=/; HttpOnly; SameSite=Lax"
                .parse()
                .unwrap();
            r.headers_mut().insert("set-cookie", cookie);
            r
        }
        // Leaves by script while its `load` is held back by a slow image.
        "/bounce" => page(
            200,
            "Bounce",
            "<script>location.replace('/hello?via=script')</script><img src=/slow>",
        ),
        "/redirect" => redirect(format!("http://127.0.0.1:{port}/hop")),
        "/hop" => redirect(format!("http://localhost:{port}/hello?via=hop")),
        "/forbidden-empty" => {
            let r = Response::builder().status(403);
            r.body(Full::new(Bytes::new())).unwrap()
        }
        _ => page(404, "Not found", "Nothing here"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigates_reports_statuses_follows_redirects_and_drives_forms() {
    let site = Site::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;

    assert_eq!(page.goto(&site.url("/")).await, Some(200));
    assert_eq!(page.title().await, "Hello");
    assert!(page.text().await.contains("Hello from the test site"));
    let html = page.html().await;
    assert!(html.contains("<h1>Hello from the test site</h1>"), "{html}");
    assert_eq!(page.url().await, site.url("/"));

    assert_eq!(page.goto(&site.url("/missing")).await, Some(404));
    assert_eq!(page.last_document_status(), Some(404));
    assert!(page.text().await.contains("Nothing here"));
    // Chromium shows its own error page for an error status without a body.
    assert_eq!(page.goto(&site.url("/forbidden-empty")).await, Some(403));

    // 302 to another site, 302 back: the status is the final document's.
    assert_eq!(page.goto(&site.url("/redirect")).await, Some(200));
    assert_eq!(page.url().await, site.url("/hello?via=hop"));
    assert!(page.try_goto("http://localhost:1/").await.is_err());
    // A document replaced before its `load` counts as loaded once its successor has.
    assert_eq!(page.goto(&site.url("/bounce")).await, Some(200));
    assert_eq!(page.url().await, site.url("/hello?via=script"));

    // Forms, scripts and the console.
    page.add_init_script("window.initMarker = 42").await;
    assert_eq!(page.goto(&site.url("/form")).await, Some(200));
    assert_eq!(page.eval("window.initMarker").await, json!(42));
    page.fill("input[name=name]", "alice & bob").await;
    page.click("#go").await;
    let url = page.wait_for_url("/hello?name=", WAIT).await;
    assert_eq!(url, site.url("/hello?name=alice+%26+bob"));
    assert_eq!(page.last_document_status(), Some(200));
    assert_eq!(page.eval("Promise.resolve(6 * 7)").await, json!(42));
    let later = page.eval("new Promise(r => setTimeout(() => r('later'), 10))");
    assert_eq!(later.await, "later");
    let refused = page.try_eval("(async () => { throw new Error('refused') })()");
    let err = refused.await.unwrap_err();
    assert!(err.starts_with("Error: refused"), "{err}");
    let err = page.try_eval("null.boom").await.unwrap_err();
    assert!(err.contains("TypeError"), "{err}");
    let js = "console.log('hello', 1, {a: 2, b: 'x'}, [3]); \
              setTimeout(() => { throw new Error('late') })";
    page.eval(js).await;
    for _ in 0..100 {
        if page.console_log().iter().any(|l| l.contains("late")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = page.console_log();
    let logged = |line: &str| log.iter().any(|l| l.starts_with(line));
    assert!(
        logged("console.log: hello 1 {a: 2, b: \"x\"} [3]"),
        "{log:?}"
    );
    assert!(logged("exception: Error: late"), "{log:?}");
}

/// Registers a passkey for `localhost` and returns its id (base64url).
const CREATE: &str = r#"(async () => {
  const rand = n => crypto.getRandomValues(new Uint8Array(n));
  const cred = await navigator.credentials.create({ publicKey: {
    rp: { id: 'localhost', name: 'twinward test' },
    user: { id: rand(16), name: 'alice', displayName: 'Alice' },
    challenge: rand(32),
    pubKeyCredParams: [{ type: 'public-key', alg: -7 }],
    authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
  }});
  return cred.id;
})()"#;

/// Signs in with a discoverable passkey; returns its id and the authenticator data flags.
const GET: &str = r#"(async () => {
  const cred = await navigator.credentials.get({ publicKey: {
    rpId: 'localhost',
    challenge: crypto.getRandomValues(new Uint8Array(32)),
    userVerification: 'required',
    timeout: 5000,
  }});
  return { id: cred.id, flags: new Uint8Array(cred.response.authenticatorData)[32] };
})()"#;

/// CDP encodes binary as standard base64; WebAuthn ids are base64url without padding.
fn base64url(b64: &Value) -> String {
    let s = b64.as_str().unwrap().trim_end_matches('=');
    s.replace('+', "-").replace('/', "_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkey_round_trip_with_the_virtual_authenticator() {
    let site = Site::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.goto(&site.url("/")).await;
    let auth = page
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;

    let created = page.eval(CREATE).await;
    let creds = page.credentials(&auth).await;
    assert_eq!(creds.len(), 1, "{creds:?}");
    assert_eq!(creds[0]["rpId"], "localhost");
    assert_eq!(creds[0]["isResidentCredential"], true);
    let id = base64url(&creds[0]["credentialId"]);
    assert_eq!(id, created.as_str().unwrap());
    let count_after_create = creds[0]["signCount"].as_u64().unwrap();

    let got = page.eval(GET).await;
    assert_eq!(got["id"], created);
    let flags = got["flags"].as_u64().unwrap();
    assert_eq!(flags & 0x05, 0x05, "user present and verified: {flags:#x}");
    let creds = page.credentials(&auth).await;
    assert_eq!(creds.len(), 1, "{creds:?}");
    let count_after_get = creds[0]["signCount"].as_u64().unwrap();
    assert!(count_after_get > count_after_create, "{creds:?}");

    // A failed user verification makes the ceremony fail.
    page.set_user_verified(&auth, false).await;
    let err = page.try_eval(GET).await.unwrap_err();
    assert!(err.contains("NotAllowedError"), "{err}");
    page.set_user_verified(&auth, true).await;

    // The same passkey, copied into another browser's authenticator, signs in there too.
    let other = browser.new_page().await;
    other.goto(&site.url("/")).await;
    let other_auth = other
        .add_virtual_authenticator(AuthenticatorOptions::default())
        .await;
    other.add_credential(&other_auth, creds[0].clone()).await;
    assert_eq!(other.eval(GET).await["id"], created);

    // Without credentials there is nothing to sign in with.
    other.clear_credentials(&other_auth).await;
    assert!(other.credentials(&other_auth).await.is_empty());
    other.remove_virtual_authenticator(&other_auth).await;
    let params = json!({ "authenticatorId": other_auth });
    let gone = other.try_cdp("WebAuthn.getCredentials", params).await;
    assert!(gone.is_err(), "{gone:?}");
}

fn names(cookies: &[Value]) -> Vec<&str> {
    cookies
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_stay_in_their_browser_context() {
    let site = Site::start().await;
    let browser = Browser::launch().await;
    let page = browser.new_page().await;
    page.goto(&site.url("/login")).await;
    let cookies = page.cookies().await;
    assert_eq!(names(&cookies), ["sid"], "{cookies:?}");
    assert_eq!(cookies[0]["value"], "s3cret");
    assert_eq!(cookies[0]["httpOnly"], true);

    // A second tab of the same context sends it; a page in a new context does not.
    let tab = browser.new_page_in_same_context(&page).await;
    tab.goto(&site.url("/")).await;
    assert!(tab.text().await.contains("cookie: sid=s3cret"));
    let stranger = browser.new_page().await;
    stranger.goto(&site.url("/")).await;
    assert!(stranger.cookies().await.is_empty());
    assert!(stranger.text().await.contains("cookie: none"));

    stranger.set_cookie("pref", "dark", &site.url("/")).await;
    stranger.goto(&site.url("/")).await;
    assert!(stranger.text().await.contains("cookie: pref=dark"));

    // Clearing is per context too.
    page.clear_cookies().await;
    assert!(page.cookies().await.is_empty());
    assert!(tab.cookies().await.is_empty());
    assert_eq!(names(&stranger.cookies().await), ["pref"]);
}
