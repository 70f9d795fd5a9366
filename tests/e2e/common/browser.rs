//! A minimal Chrome DevTools Protocol driver for browser end-to-end tests: Debian's real
//! Chromium, headless, driven over one websocket with flattened page sessions.
//!
//! Every page gets a fresh browser context (its own cookie jar) unless a test asks to share
//! one. The helpers are test assertions: they panic with a message naming the page URL and
//! its recent console output, which is usually all one needs to see why a sign-in failed.

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long page operations wait unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

type Reply = oneshot::Sender<Result<Value, String>>;

/// A string field of a CDP message, or "" when absent.
fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The websocket shared by the browser and all its pages. A writer task owns the socket
/// sink, so sending is synchronous (and works from `Drop`); the reader task routes replies
/// by `id` to `pending` and events by `sessionId` to page state and subscribers.
struct Conn {
    out: mpsc::UnboundedSender<String>,
    next_id: AtomicU64,
    /// Set when the websocket closed: later calls fail at once instead of timing out.
    closed: AtomicBool,
    pending: Mutex<HashMap<u64, (String, Reply)>>,
    pages: Mutex<HashMap<String, Arc<Mutex<PageState>>>>,
    subscribers: Mutex<Vec<(String, String, mpsc::UnboundedSender<Value>)>>,
}

impl Conn {
    fn send(&self, session: Option<&str>, method: &str, params: Value, reply: Option<Reply>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            msg["sessionId"] = json!(session);
        }
        // Register before sending so that a fast reply cannot miss its waiter.
        if let Some(reply) = reply {
            let mut pending = self.pending.lock().unwrap();
            pending.insert(id, (method.to_string(), reply));
            if self.closed.load(Ordering::SeqCst) {
                pending.clear();
            }
        }
        let _ = self.out.send(msg.to_string());
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, String> {
        let (tx, rx) = oneshot::channel();
        self.send(session, method, params, Some(tx));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(format!("{method}: browser connection closed")),
            Err(_) => Err(format!("{method}: no reply within {timeout:?}")),
        }
    }

    /// A browser-level command that must succeed.
    async fn browser(&self, method: &str, params: Value) -> Value {
        let result = self.call(None, method, params, DEFAULT_TIMEOUT).await;
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    fn dispatch(&self, msg: Value) {
        if let Some(id) = msg["id"].as_u64() {
            if let Some((method, reply)) = self.pending.lock().unwrap().remove(&id) {
                let _ = reply.send(match msg.get("error") {
                    Some(e) => {
                        let data = e["data"].as_str().map(|d| format!(" ({d})"));
                        let message = str_of(&e["message"]);
                        Err(format!("{method}: {message}{}", data.unwrap_or_default()))
                    }
                    None => Ok(msg["result"].clone()),
                });
            }
            return;
        }
        let (Some(method), Some(session)) = (msg["method"].as_str(), msg["sessionId"].as_str())
        else {
            return;
        };
        let page = self.pages.lock().unwrap().get(session).cloned();
        if let Some(state) = page {
            state.lock().unwrap().apply(method, &msg["params"]);
        }
        self.subscribers.lock().unwrap().retain(|(s, m, tx)| {
            s != session || m != method || tx.send(msg["params"].clone()).is_ok()
        });
    }
}

/// What a page's events told us so far.
#[derive(Default)]
struct PageState {
    /// The main frame id, which for a page target is its target id.
    frame_id: String,
    /// Navigations (loader ids) whose main-frame `load` lifecycle event fired.
    loaded: HashSet<String>,
    /// Navigations whose document was committed in the main frame, in order.
    committed: Vec<String>,
    /// Status of the final (post-redirect) main document response, per navigation.
    status: HashMap<String, u16>,
    last_status: Option<u16>,
    console: Vec<String>,
}

impl PageState {
    fn apply(&mut self, method: &str, p: &Value) {
        let main_frame = p["frameId"] == self.frame_id.as_str();
        let loader = str_of(&p["loaderId"]);
        match method {
            "Page.lifecycleEvent" if main_frame && p["name"] == "load" => {
                self.loaded.insert(loader);
            }
            "Page.frameNavigated" if p["frame"]["parentId"].is_null() => {
                self.committed.push(str_of(&p["frame"]["loaderId"]));
            }
            "Network.responseReceived" if main_frame && p["type"] == "Document" => {
                let status = p["response"]["status"].as_u64();
                let status = status.and_then(|s| s.try_into().ok());
                if let Some(status) = status {
                    self.status.insert(loader, status);
                }
                self.last_status = status;
            }
            "Runtime.consoleAPICalled" => {
                let args = p["args"].as_array().into_iter().flatten();
                let args = args.map(console_arg).collect::<Vec<_>>().join(" ");
                let line = format!("console.{}: {args}", str_of(&p["type"]));
                self.console.push(line);
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str());
                let line = format!("exception: {}", text.unwrap_or("?"));
                self.console.push(line);
            }
            "Log.entryAdded" => {
                let e = &p["entry"];
                let (level, text) = (str_of(&e["level"]), str_of(&e["text"]));
                let line = format!("log.{level}: {text} {}", str_of(&e["url"]));
                self.console.push(line);
            }
            "Inspector.targetCrashed" => self.console.push("renderer crashed".into()),
            _ => {}
        }
    }
}

impl PageState {
    /// `Some(status)` once navigation `loader` has loaded, or has been replaced by a later
    /// document that loaded (a script or meta redirect may leave before `load`).
    fn finished(&self, loader: &str) -> Option<Option<u16>> {
        let mut after = self.committed.iter().skip_while(|l| *l != loader).skip(1);
        let replaced = after.any(|l| self.loaded.contains(l));
        let done = self.loaded.contains(loader) || replaced;
        done.then(|| self.status.get(loader).copied())
    }
}

/// One console argument as text; objects are shown by their preview, e.g. `{a: 2}`.
fn console_arg(arg: &Value) -> String {
    if let Some(props) = arg["preview"]["properties"].as_array() {
        let array = arg["subtype"] == "array";
        let props = props.iter().map(|p| {
            let (name, value) = (p["name"].as_str(), p["value"].as_str());
            let value = value.unwrap_or_default();
            match (array, p["type"] == "string") {
                (true, _) => value.to_string(),
                (false, true) => format!("{}: {value:?}", name.unwrap_or_default()),
                (false, false) => format!("{}: {value}", name.unwrap_or_default()),
            }
        });
        let props = props.collect::<Vec<_>>().join(", ");
        let (open, close) = if array { ("[", "]") } else { ("{", "}") };
        return format!("{open}{props}{close}");
    }
    match &arg["value"] {
        Value::String(s) => s.clone(),
        Value::Null => arg["description"].as_str().unwrap_or("undefined").into(),
        v => v.to_string(),
    }
}

/// A headless Chromium process, killed (and its profile directory removed) on drop.
pub struct Browser {
    conn: Arc<Conn>,
    child: Child,
    tasks: Vec<JoinHandle<()>>,
    // Declared last: removed only after `Drop::drop` has killed and reaped the process.
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        let helpers = descendants(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Renderer, GPU and network processes exit once they notice the browser is gone;
        // wait for that so none writes into the profile directory while it is removed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while helpers.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// (pid, parent pid, state) of a process, from /proc.
fn proc_stat(pid: u32) -> Option<(u32, u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((pid, fields.next()?.parse().ok()?, state))
}

fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(_, _, state)| state != 'Z' && state != 'X')
}

/// All processes descending from `root`.
fn descendants(root: u32) -> Vec<u32> {
    let procs: Vec<_> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| proc_stat(e.ok()?.file_name().to_str()?.parse().ok()?))
        .collect();
    let mut family = vec![root];
    let mut i = 0;
    while let Some(&parent) = family.get(i) {
        family.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    family.split_off(1)
}

fn find_chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|dir| dir.join("chromium"));
    let mut candidates = std::iter::once(PathBuf::from("/usr/bin/chromium")).chain(on_path);
    candidates.find(|p| p.is_file()).expect(
        "no Chromium ($CHROMIUM, /usr/bin/chromium or `chromium` on PATH): \
             install Debian's chromium package (apt-get install chromium)",
    )
}

/// Chromium refuses to run its sandbox as root (as in CI containers).
fn running_as_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"));
    uids.and_then(|ids| ids.split_whitespace().nth(1)) == Some("0")
}

impl Browser {
    pub async fn launch() -> Browser {
        let bin = find_chromium();
        let profile = tempfile::Builder::new().prefix("chromium-").tempdir();
        let profile = profile.expect("temporary Chromium profile directory");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--password-store=basic",
            "--use-mock-keychain",
        ]);
        cmd.arg(format!("--user-data-dir={}", profile.path().display()));
        if running_as_root() {
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));

        // Chromium prints its websocket URL on stderr; keep draining stderr afterwards so a
        // chatty browser never blocks on a full pipe.
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let (url_tx, url_rx) = oneshot::channel();
        let seen = lines.clone();
        std::thread::spawn(move || {
            let mut url_tx = Some(url_tx);
            let mut stderr = BufReader::new(stderr);
            let mut buf = Vec::new();
            while matches!(stderr.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                buf.clear();
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(url.to_string());
                    }
                }
                let mut seen = seen.lock().unwrap();
                if seen.len() < 200 {
                    seen.push(line);
                }
            }
        });
        let ws_url = match tokio::time::timeout(LAUNCH_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => url,
            outcome => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let why = match outcome {
                    Err(_) => format!("printed no DevTools URL within {LAUNCH_TIMEOUT:?}"),
                    _ => format!("closed stderr without a DevTools URL ({status})"),
                };
                let stderr = lines.lock().unwrap().join("\n");
                panic!("{} {why}; its stderr said:\n{stderr}", bin.display());
            }
        };

        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Chromium at {ws_url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let conn = Arc::new(Conn {
            out,
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            pending: Mutex::default(),
            pages: Mutex::default(),
            subscribers: Mutex::default(),
        });
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn({
            let conn = conn.clone();
            async move {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Ok(v) = serde_json::from_str(msg.to_text().unwrap_or_default()) {
                        conn.dispatch(v);
                    }
                }
                // The browser is gone: fail every waiter now rather than at its timeout.
                conn.closed.store(true, Ordering::SeqCst);
                conn.pending.lock().unwrap().clear();
            }
        });
        let tasks = vec![writer, reader];
        Browser {
            conn,
            child,
            tasks,
            _profile: profile,
        }
    }

    /// A fresh page in a fresh browser context: no cookies or storage shared with any
    /// other page.
    pub async fn new_page(&self) -> Page {
        let ctx = self
            .conn
            .browser("Target.createBrowserContext", json!({}))
            .await;
        let (id, conn) = (str_of(&ctx["browserContextId"]), self.conn.clone());
        open_page(&self.conn, Arc::new(Context { id, conn })).await
    }

    /// A new page sharing `other`'s browser context (cookies, storage), like a second tab.
    pub async fn new_page_in_same_context(&self, other: &Page) -> Page {
        open_page(&self.conn, other.context.clone()).await
    }
}

/// A browser context, disposed (with any pages left in it) when its last page is dropped.
struct Context {
    id: String,
    conn: Arc<Conn>,
}

impl Drop for Context {
    fn drop(&mut self) {
        let params = json!({ "browserContextId": self.id });
        let conn = &self.conn;
        conn.send(None, "Target.disposeBrowserContext", params, None);
    }
}

async fn open_page(conn: &Arc<Conn>, context: Arc<Context>) -> Page {
    let params = json!({ "url": "about:blank", "browserContextId": context.id });
    let target_id = str_of(&conn.browser("Target.createTarget", params).await["targetId"]);
    let params = json!({ "targetId": target_id, "flatten": true });
    let session = str_of(&conn.browser("Target.attachToTarget", params).await["sessionId"]);
    let frame_id = target_id.clone();
    let state = Arc::new(Mutex::new(PageState {
        frame_id,
        ..PageState::default()
    }));
    conn.pages
        .lock()
        .unwrap()
        .insert(session.clone(), state.clone());
    let page = Page {
        conn: conn.clone(),
        session,
        target_id,
        context,
        state,
        webauthn_enabled: AtomicBool::new(false),
        timeout: DEFAULT_TIMEOUT,
    };
    for domain in ["Page", "Runtime", "Network", "Log"] {
        page.cdp(&format!("{domain}.enable"), json!({})).await;
    }
    let params = json!({ "enabled": true });
    page.cdp("Page.setLifecycleEventsEnabled", params).await;
    page
}

/// Options of a WebAuthn virtual authenticator; the default is a platform passkey
/// provider that verifies the user and simulates their presence automatically.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticatorOptions {
    /// "ctap2" or "u2f".
    pub protocol: &'static str,
    /// "internal", "usb", "nfc", "ble" or "hybrid".
    pub transport: &'static str,
    pub has_resident_key: bool,
    pub has_user_verification: bool,
    pub is_user_verified: bool,
    pub automatic_presence_simulation: bool,
}

impl Default for AuthenticatorOptions {
    fn default() -> Self {
        AuthenticatorOptions {
            protocol: "ctap2",
            transport: "internal",
            has_resident_key: true,
            has_user_verification: true,
            is_user_verified: true,
            automatic_presence_simulation: true,
        }
    }
}

/// One tab, attached through its own CDP session. Closed on drop.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target_id: String,
    context: Arc<Context>,
    state: Arc<Mutex<PageState>>,
    webauthn_enabled: AtomicBool,
    /// Timeout of every operation that takes no explicit one.
    pub timeout: Duration,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.conn.pages.lock().unwrap().remove(&self.session);
        let params = json!({ "targetId": self.target_id });
        self.conn.send(None, "Target.closeTarget", params, None);
    }
}

/// JavaScript truthiness of a value returned by value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

impl Page {
    /// Any CDP command on this page's session; panics on a protocol error.
    pub async fn cdp(&self, method: &str, params: Value) -> Value {
        match self.try_cdp(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{e}; {}", self.describe().await),
        }
    }

    pub async fn try_cdp(&self, method: &str, params: Value) -> Result<Value, String> {
        let session = Some(self.session.as_str());
        self.conn.call(session, method, params, self.timeout).await
    }

    /// The URL as the browser (not the renderer, which may be busy or gone) sees it.
    async fn target_url(&self) -> Result<String, String> {
        let params = json!({ "targetId": self.target_id });
        let info = self
            .conn
            .call(None, "Target.getTargetInfo", params, POLL * 20);
        Ok(str_of(&info.await?["targetInfo"]["url"]))
    }

    /// Every future `method` event of this page, e.g. "Network.requestWillBeSent".
    pub fn events(&self, method: &str) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = (self.session.clone(), method.to_string(), tx);
        self.conn.subscribers.lock().unwrap().push(sub);
        rx
    }

    /// The URL and recent console output, for failure messages.
    async fn describe(&self) -> String {
        let url = self.target_url().await.unwrap_or_else(|e| e);
        let console = self.console_log();
        let recent = &console[console.len().saturating_sub(15)..];
        match recent {
            [] => format!("page at {url}; no console output"),
            _ => format!("page at {url}; recent console:\n  {}", recent.join("\n  ")),
        }
    }

    /// Navigates and waits for the load event of the new document; returns the HTTP status
    /// of the final main document response (after redirects), if there was one.
    pub async fn goto(&self, url: &str) -> Option<u16> {
        match self.try_goto(url).await {
            Ok(status) => status,
            Err(e) => panic!("{e}; {}", self.describe().await),
        }
    }

    pub async fn try_goto(&self, url: &str) -> Result<Option<u16>, String> {
        let nav = self.try_cdp("Page.navigate", json!({ "url": url })).await;
        // Chromium answers once the response has started (or the navigation failed).
        let nav = nav.map_err(|e| format!("navigating to {url}: {e}"))?;
        let error = nav["errorText"].as_str().unwrap_or_default();
        // Chromium reports an error status with an empty body as a failed navigation, but
        // still shows (and loads) an error page: that is a status, not a failure.
        if !error.is_empty() && error != "net::ERR_HTTP_RESPONSE_CODE_FAILURE" {
            return Err(format!("navigation to {url} failed: {error}"));
        }
        let Some(loader) = nav["loaderId"].as_str() else {
            return Ok(None); // same-document navigation (fragment change)
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = self.state.lock().unwrap().finished(loader) {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{url} did not load within {:?}", self.timeout));
            }
            tokio::time::sleep(POLL / 2).await;
        }
    }

    /// Status of the latest main document response, whichever way the page navigated.
    pub fn last_document_status(&self) -> Option<u16> {
        self.state.lock().unwrap().last_status
    }

    /// Console messages, uncaught exceptions and browser log entries (blocked requests,
    /// CSP violations), oldest first.
    pub fn console_log(&self) -> Vec<String> {
        self.state.lock().unwrap().console.clone()
    }

    pub async fn url(&self) -> String {
        match self.try_eval("location.href").await {
            Ok(Value::String(url)) => url,
            _ => self.target_url().await.expect("page URL"),
        }
    }

    /// Evaluates an expression in the page, awaiting it if it is a promise (so use an async
    /// arrow function to `await`); panics with the exception text if it throws or rejects.
    pub async fn eval(&self, js: &str) -> Value {
        match self.try_eval(js).await {
            Ok(v) => v,
            Err(e) => panic!("`{js}` threw: {e}; {}", self.describe().await),
        }
    }

    pub async fn try_eval(&self, js: &str) -> Result<Value, String> {
        let params = json!({
            "expression": js,
            "awaitPromise": true,
            "returnByValue": true,
            "userGesture": true,
        });
        let r = self.try_cdp("Runtime.evaluate", params).await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let e = &ex["exception"];
            let text = e["description"].as_str().map(str::to_string);
            let text = text.or(e.get("value").map(Value::to_string));
            return Err(text.unwrap_or_else(|| str_of(&ex["text"])));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `js` until it is truthy and returns its value. Exceptions count as falsy:
    /// the page may be between documents.
    pub async fn wait_for(&self, js: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_eval(js).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => format!("last value {v}"),
                Err(e) => format!("last error {e}"),
            };
            if Instant::now() > deadline {
                let page = self.describe().await;
                panic!("`{js}` not truthy within {timeout:?} ({last}); {page}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the URL contains `part` and that document has finished loading; returns
    /// the URL.
    pub async fn wait_for_url(&self, part: &str, timeout: Duration) -> String {
        let matches = |url: &str| url.contains(part);
        self.wait_for_url_matching(matches, timeout).await
    }

    /// Waits until `pred` holds for the URL and that document has finished loading.
    pub async fn wait_for_url_matching(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.try_eval("[location.href, document.readyState]").await;
            if let Ok(Value::Array(v)) = &now {
                if pred(&str_of(&v[0])) && v[1] == "complete" {
                    return str_of(&v[0]);
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching URL within {timeout:?}; {}",
                    self.describe().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the first element matching a CSS selector (a submit button submits its form).
    pub async fn click(&self, selector: &str) {
        let sel = json!(selector);
        let js = format!(
            "(() => {{ const el = document.querySelector({sel}); \
             if (!el) return false; el.click(); return true; }})()"
        );
        if self.eval(&js).await != json!(true) {
            panic!("click: nothing matches {sel}; {}", self.describe().await);
        }
    }

    /// Sets a form control's value and fires `input` and `change` as typing would.
    pub async fn fill(&self, selector: &str, value: &str) {
        let (sel, val) = (json!(selector), json!(value));
        let js = format!(
            "(() => {{ const el = document.querySelector({sel}); if (!el) return false; \
             el.value = {val}; \
             for (const t of ['input', 'change']) el.dispatchEvent(new Event(t, {{ bubbles: true }})); \
             return true; }})()"
        );
        if self.eval(&js).await != json!(true) {
            panic!("fill: nothing matches {sel}; {}", self.describe().await);
        }
    }

    pub async fn text(&self) -> String {
        str_of(
            &self
                .eval("document.body ? document.body.innerText : ''")
                .await,
        )
    }

    pub async fn html(&self) -> String {
        str_of(&self.eval("document.documentElement.outerHTML").await)
    }

    pub async fn title(&self) -> String {
        str_of(&self.eval("document.title").await)
    }

    /// Cookies the browser would send to the current page URL (HttpOnly ones included).
    pub async fn cookies(&self) -> Vec<Value> {
        let r = self.cdp("Network.getCookies", json!({})).await;
        r["cookies"].as_array().cloned().unwrap_or_default()
    }

    pub async fn set_cookie(&self, name: &str, value: &str, url: &str) {
        let params = json!({ "name": name, "value": value, "url": url });
        let r = self.cdp("Network.setCookie", params).await;
        assert!(
            r["success"] != false,
            "Network.setCookie {name} for {url} refused"
        );
    }

    /// Clears every cookie of this page's browser context (other contexts keep theirs).
    pub async fn clear_cookies(&self) {
        let params = json!({ "browserContextId": self.context.id });
        self.conn.browser("Storage.clearCookies", params).await;
    }

    /// Runs `js` in every new document before its own scripts; returns the script id.
    pub async fn add_init_script(&self, js: &str) -> String {
        let params = json!({ "source": js });
        str_of(
            &self
                .cdp("Page.addScriptToEvaluateOnNewDocument", params)
                .await["identifier"],
        )
    }

    /// Adds a virtual authenticator that answers this page's WebAuthn calls; returns its id.
    pub async fn add_virtual_authenticator(&self, opts: AuthenticatorOptions) -> String {
        if !self.webauthn_enabled.swap(true, Ordering::SeqCst) {
            let params = json!({ "enableUI": false });
            self.cdp("WebAuthn.enable", params).await;
        }
        let params = json!({ "options": opts });
        str_of(&self.cdp("WebAuthn.addVirtualAuthenticator", params).await["authenticatorId"])
    }

    pub async fn remove_virtual_authenticator(&self, id: &str) {
        let params = json!({ "authenticatorId": id });
        self.cdp("WebAuthn.removeVirtualAuthenticator", params)
            .await;
    }

    /// The authenticator's credentials, each with `credentialId`, `rpId`, `userHandle`,
    /// `signCount` and `privateKey` (so [`Page::add_credential`] can copy it elsewhere).
    pub async fn credentials(&self, authenticator_id: &str) -> Vec<Value> {
        let params = json!({ "authenticatorId": authenticator_id });
        let r = self.cdp("WebAuthn.getCredentials", params).await;
        r["credentials"].as_array().cloned().unwrap_or_default()
    }

    pub async fn add_credential(&self, authenticator_id: &str, credential: Value) {
        let params = json!({ "authenticatorId": authenticator_id, "credential": credential });
        self.cdp("WebAuthn.addCredential", params).await;
    }

    pub async fn clear_credentials(&self, authenticator_id: &str) {
        let params = json!({ "authenticatorId": authenticator_id });
        self.cdp("WebAuthn.clearCredentials", params).await;
    }

    /// Whether the authenticator's user verification (biometric, PIN) succeeds.
    pub async fn set_user_verified(&self, authenticator_id: &str, verified: bool) {
        let params = json!({ "authenticatorId": authenticator_id, "isUserVerified": verified });
        self.cdp("WebAuthn.setUserVerified", params).await;
    }
}
