//! Configuration: `twinward.toml` parsed strictly ([`file`]), then validated once into a
//! [`Config`] that the rest of the gateway trusts. Validation collects every problem, with
//! the line and column where it is known, so `twinward check` can list them all at once.
//! No I/O beyond reading the file itself.

pub mod advice;
pub mod duration;
pub mod file;
pub mod secret;
pub mod signin;

use crate::routing::path;
use file::FileConfig;
use ipnet::IpNet;
use secret::SecretRef;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl Problem {
    /// `file:line:col: {label}message`, the place left out where there is none.
    fn write_labelled(&self, f: &mut fmt::Formatter<'_>, label: &str) -> fmt::Result {
        match self.position {
            Some((l, c)) => write!(f, "{}:{}:{}: {label}{}", self.file, l, c, self.message),
            None => write!(f, "{}: {label}{}", self.file, self.message),
        }
    }

    /// The same place, said as a warning: `file:line:col: warning: …`.
    pub fn as_warning(&self) -> impl fmt::Display + '_ {
        struct Warning<'a>(&'a Problem);
        impl fmt::Display for Warning<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_labelled(f, "warning: ")
            }
        }
        Warning(self)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_labelled(f, "")
    }
}

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, as messages name it.
    pub file: String,
    /// Directory that relative paths in the file are resolved against.
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub credentials: CredentialsConfig,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub location: LocationConfig,
    pub api_tokens: ApiTokenConfig,
    pub log: LogConfig,
    pub session: signin::SessionConfig,
    /// Browser sign-in; `None` when `[oidc]` is absent (API tokens only).
    pub signin: Option<signin::SigninConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub public_url: Option<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// The header whose chain the trusted proxies append to.
    pub client_ip_header: crate::signals::network::ForwardingHeader,
    pub production_hosts: Vec<HostPattern>,
    pub tls: Option<TlsConfig>,
    pub workers: usize,
    /// Client connections served at once, before the open-file limit is applied
    /// (`http::limit`).
    pub max_connections: usize,
}

/// `server.max_connections` when the config gives none.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The most `server.max_connections` may be.
const MAX_CONNECTIONS: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// `sqlite://…` with an absolute path, or `postgres://…`.
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    EdDsa,
    Es256,
}

impl SigningAlgorithm {
    pub fn jose_name(self) -> &'static str {
        match self {
            SigningAlgorithm::EdDsa => "EdDSA",
            SigningAlgorithm::Es256 => "ES256",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub issuer: String,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub algorithm: SigningAlgorithm,
    pub keys_dir: PathBuf,
    pub rotation_overlap: Duration,
    pub activation_delay: Duration,
}

impl CredentialsConfig {
    pub fn timing(&self) -> crate::credentials::keys::KeyTiming {
        crate::credentials::keys::KeyTiming {
            activation_delay: self.activation_delay,
            overlap: self.rotation_overlap,
        }
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `None`: a key generated on first run in the keys directory.
    pub pseudonym_key: Option<SecretRef>,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub dir: PathBuf,
    pub watch: bool,
}

#[derive(Debug, Clone)]
pub struct LocationConfig {
    pub timezone: chrono_tz::Tz,
    /// Zones in file order; the first zone containing an address names it.
    pub zones: Vec<(String, Vec<IpNet>)>,
}

#[derive(Debug, Clone)]
pub struct ApiTokenConfig {
    pub max_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
}

/// A twin attribute value from `[[routes]] attributes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    String(String),
    Long(i64),
    Bool(bool),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Lower-case host without port; `None` serves any host.
    pub host: Option<String>,
    /// Normalized, without a trailing slash except for `/` itself.
    pub path_prefix: String,
    pub upstream: Upstream,
    pub twin: String,
    pub attributes: BTreeMap<String, AttrValue>,
    pub credential_as_bearer: bool,
    pub websocket: bool,
    pub http2: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// 1-based line of the route in the config file, for messages.
    pub line: usize,
}

/// The longest `timeout` or `connect_timeout` a route may have.
const MAX_ROUTE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// `host:port` to connect to, the port always present (80 when the URL leaves it out).
    pub fn connect_to(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `erp.example.com` or `*.prod.example.com` (any name below that domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let invalid = |why: String| {
            format!("invalid host pattern {t:?} (use a name, an IP address or *.domain): {why}")
        };
        if let Some(rest) = t.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(invalid("one leading *. only".into()));
            }
            let rest = canonical_host(rest).map_err(invalid)?;
            Ok(HostPattern::Suffix(format!(".{rest}")))
        } else if t.contains('*') {
            Err(invalid("a wildcard only as a leading *.".into()))
        } else {
            canonical_host(t).map(HostPattern::Exact).map_err(invalid)
        }
    }

    /// `host` in the form [`canonical_host`] gives.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Suffix(sfx) => host.ends_with(sfx.as_str()),
        }
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![Problem {
            file: name.clone(),
            position: None,
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    parse(&text, &name, &base_dir_of(path))
}

/// Parses and validates config text. `file` names it in messages; relative paths resolve
/// against `base_dir`.
pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    match parse_lenient(text, file, base_dir) {
        (Some(c), problems) if problems.is_empty() => Ok(c),
        (_, problems) => Err(ConfigError { problems }),
    }
}

/// Like [`load`], but also returns the config as far as it could be validated, so
/// `twinward check` can go on to check policies and keys and report everything at once.
/// Parts with problems take their defaults; invalid routes are left out.
pub fn load_lenient(path: &Path) -> (Option<Config>, Vec<Problem>) {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            return (
                None,
                vec![Problem {
                    file: name,
                    position: None,
                    message: format!("cannot read config file: {e}"),
                }],
            )
        }
    };
    parse_lenient(&text, &name, &base_dir_of(path))
}

fn base_dir_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// How many values of the wrong type (or tables missing a field) one run reports before
/// giving up on the rest.
const MAX_SHAPE_PROBLEMS: usize = 32;

/// Blanks the lines that `span` touches (spaces, newlines kept), so that offsets and line
/// numbers of everything else stay as they are. Returns whether anything changed.
fn blank_lines(work: &mut String, span: std::ops::Range<usize>) -> bool {
    let start = work
        .get(..span.start)
        .and_then(|b| b.rfind('\n'))
        .map_or(0, |i| i + 1);
    let end = work
        .get(span.end.max(span.start + 1)..)
        .and_then(|a| a.find('\n'))
        .map_or(work.len(), |i| span.end.max(span.start + 1) + i);
    let Some(region) = work.get(start..end.min(work.len())) else {
        return false;
    };
    if region.trim().is_empty() {
        return false;
    }
    // Byte for byte: a character of several bytes becomes as many spaces.
    let blanked: String = region
        .chars()
        .flat_map(|c| {
            let (fill, n) = if c == '\n' {
                ('\n', 1)
            } else {
                (' ', c.len_utf8())
            };
            std::iter::repeat_n(fill, n)
        })
        .collect();
    work.replace_range(start..end.min(work.len()), &blanked);
    true
}

fn parse_lenient(text: &str, file: &str, base_dir: &Path) -> (Option<Config>, Vec<Problem>) {
    // Unknown keys are collected rather than fatal, so one run reports all of them (with
    // the rest of the problems). A value of the wrong type stops serde's parse: it is
    // reported, its lines are blanked (a table missing a field goes whole) and the parse
    // runs again, so that one run still reports every problem.
    let mut unknown = Vec::new();
    let mut shape_problems = Vec::new();
    let mut work = text.to_owned();
    let raw = loop {
        unknown.clear();
        let parsed: Result<FileConfig, _> =
            serde_ignored::deserialize(toml::Deserializer::new(&work), |path| {
                unknown.push(key_path(&path.to_string()))
            });
        let e = match parsed {
            Ok(r) => break Some(r),
            Err(e) => e,
        };
        // After blanking, a syntax error is of the blanking's making, not the file's.
        if !shape_problems.is_empty() && work.parse::<toml_edit::DocumentMut>().is_err() {
            break None;
        }
        shape_problems.push(Problem {
            file: file.to_owned(),
            position: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim_end_matches('\n').to_owned(),
        });
        let Some(span) = e.span() else { break None };
        if shape_problems.len() >= MAX_SHAPE_PROBLEMS || !blank_lines(&mut work, span) {
            break None;
        }
    };
    let Some(raw) = raw else {
        return (None, shape_problems);
    };
    // The text as parsed: blanking kept every offset, and a table left out no longer
    // counts when an unknown key's `routes.N` is looked up.
    let doc = toml_edit::ImDocument::parse(work.as_str()).ok();
    let mut v = Validator {
        text,
        file,
        base_dir,
        problems: shape_problems,
    };
    for path in unknown {
        let at = doc.as_ref().and_then(|d| key_offset(d, &path));
        v.problem_at(at, format!("unknown key `{path}`"));
    }
    let config = v.config(raw);
    (Some(config), v.problems)
}

/// The key's path as the file writes it: serde_ignored's path also names the wrappers the
/// parse goes through (`?` for an optional table, serde_spanned's private field for a
/// table read with its position), which are no part of the file.
fn key_path(ignored: &str) -> String {
    ignored
        .split('.')
        .filter(|s| *s != "?" && !s.starts_with("$__serde_spanned"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A place in a parsed TOML document, for finding where an unknown key was written.
enum Node<'a> {
    Table(&'a toml_edit::Table),
    Inline(&'a toml_edit::InlineTable),
    Tables(&'a toml_edit::ArrayOfTables),
    Leaf,
}

impl<'a> Node<'a> {
    fn of(item: &'a toml_edit::Item) -> Node<'a> {
        if let Some(t) = item.as_table() {
            Node::Table(t)
        } else if let Some(a) = item.as_array_of_tables() {
            Node::Tables(a)
        } else if let Some(i) = item.as_inline_table() {
            Node::Inline(i)
        } else {
            Node::Leaf
        }
    }
}

/// Byte offset of the key at a dotted path such as `server.lisen` or `routes.1.upstreem`.
fn key_offset(doc: &toml_edit::ImDocument<&str>, path: &str) -> Option<usize> {
    let mut node = Node::Table(doc.as_table());
    let mut offset = None;
    let span = |k: Option<&toml_edit::Key>| k.and_then(|k| k.span()).map(|r| r.start);
    for seg in path.split('.') {
        node = match node {
            Node::Tables(aot) => match seg.parse::<usize>().ok().and_then(|i| aot.get(i)) {
                Some(t) => Node::Table(t),
                None => return offset,
            },
            Node::Table(t) => {
                offset = span(t.key(seg)).or(offset);
                match t.get(seg) {
                    Some(item) => Node::of(item),
                    None => return offset,
                }
            }
            Node::Inline(t) => {
                offset = span(t.key(seg)).or(offset);
                match t.get(seg).and_then(|v| v.as_inline_table()) {
                    Some(i) => Node::Inline(i),
                    None => Node::Leaf,
                }
            }
            Node::Leaf => return offset,
        };
    }
    offset
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |i| {
        before.get(i + 1..).map_or(0, |s| s.chars().count())
    }) + 1;
    (line, col)
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    base_dir: &'a Path,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem_at(&mut self, offset: Option<usize>, message: impl Into<String>) {
        let position = offset.map(|o| line_col(self.text, o));
        self.problems.push(Problem {
            file: self.file.to_owned(),
            position,
            message: message.into(),
        });
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn config(&mut self, raw: FileConfig) -> Config {
        let server = self.server(raw.server);
        let credentials = self.credentials(raw.credentials, &server);
        let storage = self.storage(raw.storage);
        let identity = self.identity(raw.identity);
        let policy = PolicyConfig {
            dir: self.path(raw.policy.dir.as_ref().map_or("policies", |d| d.get_ref())),
            watch: raw.policy.watch.unwrap_or(true),
        };
        let location = self.location(raw.location);
        let api_tokens = ApiTokenConfig {
            max_ttl: raw
                .api_tokens
                .max_ttl
                .map_or(Duration::from_secs(90 * 86400), |d| d.into_inner().0),
        };
        if let Some(sink) = raw.audit.sink {
            if sink.get_ref() != "storage" {
                self.problem_at(
                    Some(sink.span().start),
                    format!(
                        "audit.sink {:?} is not supported (\"storage\" writes to the storage database)",
                        sink.get_ref()
                    ),
                );
            }
        }
        let log = match raw.log.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                let at = raw.log.format.as_ref().map(|f| f.span().start);
                self.problem_at(
                    at,
                    format!("log.format {other:?} is not one of \"text\", \"json\""),
                );
                false
            }
        };
        let log = LogConfig {
            json: log,
            level: raw.log.level.unwrap_or_else(|| "info".to_owned()),
        };
        let session = self.session(raw.session);
        let signin = self.signin(raw.oidc, raw.webauthn, &server);
        let routes = self.routes(raw.routes, &server.production_hosts);
        Config {
            session,
            signin,
            file: self.file.to_owned(),
            base_dir: self.base_dir.to_path_buf(),
            server,
            storage,
            credentials,
            identity,
            policy,
            location,
            api_tokens,
            log,
            routes,
        }
    }

    fn socket_addr(&mut self, v: Option<Spanned<String>>, default: &str) -> Option<SocketAddr> {
        let (s, at) = match &v {
            Some(s) => (s.get_ref().as_str(), Some(s.span().start)),
            None => (default, None),
        };
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem_at(
                    at,
                    format!("{s:?} is not an address:port such as \"0.0.0.0:8443\""),
                );
                None
            }
        }
    }

    fn server(&mut self, raw: file::ServerFile) -> ServerConfig {
        let listen = self
            .socket_addr(raw.listen, "127.0.0.1:8080")
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let admin_listen = self.socket_addr(raw.admin_listen, "127.0.0.1:9090");
        let public_url = raw.public_url.and_then(|u| {
            let at = u.span().start;
            let s = u.into_inner();
            // Both parsers must take it: sign-in reads it with `url`, which refuses what
            // `http::Uri` lets through (a port above 65535), and would turn itself off.
            match s.parse::<http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("https") | Some("http"))
                        && uri.host().is_some()
                        && url::Url::parse(&s).is_ok() =>
                {
                    Some(s.trim_end_matches('/').to_owned())
                }
                _ => {
                    self.problem_at(
                        Some(at),
                        format!("server.public_url {s:?} is not an http(s) URL"),
                    );
                    None
                }
            }
        });
        let mut trusted_proxies = Vec::new();
        for p in raw.trusted_proxies {
            match parse_net(p.get_ref()) {
                Ok(n) => trusted_proxies.push(n),
                Err(m) => self.problem_at(Some(p.span().start), m),
            }
        }
        let client_ip_header = match raw.client_ip_header {
            None => Default::default(),
            Some(h) => crate::signals::network::ForwardingHeader::parse(h.get_ref())
                .unwrap_or_else(|| {
                    self.problem_at(
                        Some(h.span().start),
                        format!(
                            "server.client_ip_header {:?}: use \"X-Forwarded-For\" or \"Forwarded\", the header your proxies append to",
                            h.get_ref()
                        ),
                    );
                    Default::default()
                }),
        };
        let mut production_hosts = Vec::new();
        for h in raw.production_hosts {
            match HostPattern::parse(h.get_ref()) {
                Ok(p) => production_hosts.push(p),
                Err(m) => self.problem_at(Some(h.span().start), m),
            }
        }
        let tls = raw.tls.map(|t| {
            let at = t.span().start;
            let t = t.into_inner();
            self.problem_at(
                Some(at),
                "server.tls: TLS termination is not available in this version; terminate TLS in front of the gateway",
            );
            TlsConfig {
                cert_file: self.path(&t.cert_file),
                key_file: self.path(&t.key_file),
            }
        });
        let workers = match raw.workers {
            Some(w) if *w.get_ref() == 0 || *w.get_ref() > 1024 => {
                self.problem_at(Some(w.span().start), "server.workers must be 1 to 1024");
                1
            }
            Some(w) => w.into_inner(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_connections = match raw.max_connections {
            Some(m) if *m.get_ref() == 0 || *m.get_ref() > MAX_CONNECTIONS => {
                self.problem_at(
                    Some(m.span().start),
                    format!("server.max_connections must be 1 to {MAX_CONNECTIONS}"),
                );
                DEFAULT_MAX_CONNECTIONS
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MAX_CONNECTIONS,
        };
        ServerConfig {
            listen,
            admin_listen,
            public_url,
            trusted_proxies,
            client_ip_header,
            production_hosts,
            tls,
            workers,
            max_connections,
        }
    }

    fn storage(&mut self, raw: file::StorageFile) -> StorageConfig {
        let url = match (raw.url, raw.url_env) {
            (Some(u), None) => Some((u.get_ref().clone(), Some(u.span().start))),
            (None, Some(e)) => match std::env::var(e.get_ref()) {
                Ok(u) => Some((u, None)),
                Err(_) => {
                    self.problem_at(
                        Some(e.span().start),
                        format!(
                            "storage.url_env: environment variable {} is not set",
                            e.get_ref()
                        ),
                    );
                    None
                }
            },
            (Some(u), Some(_)) => {
                self.problem_at(
                    Some(u.span().start),
                    "set storage.url or storage.url_env, not both",
                );
                None
            }
            (None, None) => Some(("sqlite://twinward.db".to_owned(), None)),
        };
        let Some((url, at)) = url else {
            return StorageConfig { url: String::new() };
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                self.problem_at(at, "storage.url: sqlite:// needs a file path");
            }
            let abs = self.path(path);
            StorageConfig {
                url: format!("sqlite://{}", abs.display()),
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            self.problem_at(
                at,
                "storage.url: PostgreSQL storage is not available in this version; use sqlite://",
            );
            StorageConfig { url }
        } else {
            self.problem_at(at, "storage.url must start with sqlite:// or postgres://");
            StorageConfig { url }
        }
    }

    fn credentials(
        &mut self,
        raw: file::CredentialsFile,
        server: &ServerConfig,
    ) -> CredentialsConfig {
        let issuer = raw
            .issuer
            .map(|i| i.into_inner())
            .or_else(|| server.public_url.clone())
            .unwrap_or_else(|| format!("http://{}", server.listen));
        let max_ttl = raw
            .max_ttl
            .map_or(Duration::from_secs(3600), |d| d.into_inner().0);
        let (ttl, ttl_at) = raw.ttl.map_or((Duration::from_secs(300), None), |d| {
            (d.get_ref().0, Some(d.span().start))
        });
        if ttl > max_ttl {
            self.problem_at(
                ttl_at,
                format!(
                    "credentials.ttl {} is longer than credentials.max_ttl {}",
                    duration::format(ttl),
                    duration::format(max_ttl)
                ),
            );
        }
        if ttl < Duration::from_secs(10) {
            self.problem_at(ttl_at, "credentials.ttl must be at least 10s");
        }
        let algorithm = match raw.algorithm.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("EdDSA") | Some("Ed25519") => SigningAlgorithm::EdDsa,
            Some("ES256") => SigningAlgorithm::Es256,
            Some(other) => {
                let at = raw.algorithm.as_ref().map(|a| a.span().start);
                self.problem_at(
                    at,
                    format!("credentials.algorithm {other:?} is not one of \"EdDSA\", \"ES256\""),
                );
                SigningAlgorithm::EdDsa
            }
        };
        let overlap = raw
            .rotation_overlap
            .map_or(Duration::from_secs(86400), |d| d.into_inner().0);
        if overlap < max_ttl {
            self.problem_at(
                None,
                "credentials.rotation_overlap must be at least credentials.max_ttl, so credentials signed by a rotated key still verify",
            );
        }
        CredentialsConfig {
            issuer,
            ttl,
            max_ttl,
            algorithm,
            keys_dir: self.path(raw.keys_dir.as_ref().map_or("keys", |d| d.get_ref())),
            rotation_overlap: overlap,
            // Twins cache the JWKS (max-age 60s); a new key is published at least that long
            // before it signs.
            activation_delay: raw
                .activation_delay
                .map_or(Duration::from_secs(120), |d| d.into_inner().0),
        }
    }

    fn identity(&mut self, raw: file::IdentityFile) -> IdentityConfig {
        let pseudonym_key = match (raw.pseudonym_key_file, raw.pseudonym_key_env) {
            (Some(f), None) => Some(SecretRef::File(self.path(f.get_ref()))),
            (None, Some(e)) => Some(SecretRef::Env(e.into_inner())),
            (Some(f), Some(_)) => {
                self.problem_at(
                    Some(f.span().start),
                    "set identity.pseudonym_key_file or identity.pseudonym_key_env, not both",
                );
                None
            }
            (None, None) => None,
        };
        IdentityConfig { pseudonym_key }
    }

    fn location(&mut self, raw: file::LocationFile) -> LocationConfig {
        let timezone = match raw.timezone {
            None => chrono_tz::UTC,
            Some(tz) => match tz.get_ref().parse::<chrono_tz::Tz>() {
                Ok(t) => t,
                Err(_) => {
                    self.problem_at(
                        Some(tz.span().start),
                        format!("location.timezone {:?} is not an IANA time zone such as \"Europe/Berlin\"", tz.get_ref()),
                    );
                    chrono_tz::UTC
                }
            },
        };
        let mut zones = Vec::new();
        for (name, nets) in raw.zones {
            let at = nets.span().start;
            if name == "unknown" {
                self.problem_at(
                    Some(at),
                    "zone name \"unknown\" is reserved for addresses in no zone",
                );
            }
            let mut parsed = Vec::new();
            for n in nets.into_inner() {
                match parse_net(&n) {
                    Ok(n) => parsed.push(n),
                    Err(m) => self.problem_at(Some(at), format!("zone {name:?}: {m}")),
                }
            }
            zones.push((name, parsed));
        }
        LocationConfig { timezone, zones }
    }

    fn routes(
        &mut self,
        raw: Vec<Spanned<file::RouteFile>>,
        prod: &[HostPattern],
    ) -> Vec<RouteConfig> {
        let mut out: Vec<RouteConfig> = Vec::new();
        let mut names = BTreeSet::new();
        let mut places: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
        for r in raw {
            let at = r.span().start;
            let line = line_col(self.text, at).0;
            let r = r.into_inner();
            let before = self.problems.len();
            let label = format!("route {:?}", r.name);
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                self.problem_at(
                    Some(at),
                    format!("{label}: name must be letters, digits, '-', '_' or '.'"),
                );
            }
            if !names.insert(r.name.clone()) {
                self.problem_at(
                    Some(at),
                    format!("{label}: another route has the same name"),
                );
            }
            let host = match r.host.as_deref().map(|h| canonical_host(strip_port(h))) {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    self.problem_at(Some(at), format!("{label}: host {e}"));
                    None
                }
            };
            if let Some(h) = &host {
                if let Some(p) = prod.iter().find(|p| p.matches(h)) {
                    self.problem_at(
                        Some(at),
                        format!("{label}: host {h:?} is a production host ({p} in server.production_hosts); routes serve twins only"),
                    );
                }
            }
            let prefix_raw = r.path_prefix.as_deref().unwrap_or("/");
            let path_prefix = match path::normalize(prefix_raw) {
                Ok(p) => {
                    let s = p.as_str();
                    let s = if s.len() > 1 {
                        s.trim_end_matches('/')
                    } else {
                        s
                    };
                    if s.is_empty() {
                        "/".to_owned()
                    } else {
                        s.to_owned()
                    }
                }
                Err(e) => {
                    self.problem_at(
                        Some(at),
                        format!("{label}: path_prefix {prefix_raw:?}: {e}"),
                    );
                    "/".to_owned()
                }
            };
            if path_prefix == "/.twinward"
                || path_prefix.starts_with("/.twinward/")
                || path_prefix.starts_with("/.well-known")
            {
                self.problem_at(
                    Some(at),
                    format!("{label}: path_prefix {path_prefix:?} is reserved for the gateway"),
                );
            }
            let upstream = match parse_upstream(&r.upstream) {
                Ok(u) => {
                    if let Some(p) = prod.iter().find(|p| p.matches(&u.host)) {
                        self.problem_at(
                            Some(at),
                            format!("{label}: upstream {:?} is a production host ({p} in server.production_hosts); routes serve twins only", r.upstream),
                        );
                    }
                    Some(u)
                }
                Err(m) => {
                    self.problem_at(Some(at), format!("{label}: {m}"));
                    None
                }
            };
            let twin = match r.twin.as_deref().map(str::trim) {
                Some(t) if !t.is_empty() => t.to_owned(),
                _ => {
                    self.problem_at(Some(at), format!("{label}: no twin resource (set twin = \"…\", the Twinward::Twin entity id)"));
                    String::new()
                }
            };
            let mut attributes = BTreeMap::new();
            for (k, v) in r.attributes {
                let value = match v {
                    toml::Value::String(s) => AttrValue::String(s),
                    toml::Value::Integer(i) => AttrValue::Long(i),
                    toml::Value::Boolean(b) => AttrValue::Bool(b),
                    other => {
                        self.problem_at(Some(at), format!("{label}: attribute {k:?} must be a string, integer or boolean, not {}", other.type_str()));
                        continue;
                    }
                };
                attributes.insert(k, value);
            }
            let credential_as_bearer = match r
                .credential_header
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("x-twinward-assertion") => false,
                Some("authorization") => true,
                Some(other) => {
                    self.problem_at(Some(at), format!("{label}: credential_header {other:?} is not one of \"x-twinward-assertion\", \"authorization\""));
                    false
                }
            };
            let key = (host.clone(), path_prefix.clone());
            if let Some(other) = places.get(&key) {
                self.problem_at(
                    Some(at),
                    format!("{label}: overlaps route {other:?} (same host and path_prefix); the match would be ambiguous"),
                );
            } else {
                places.insert(key, r.name.clone());
            }
            let connect_timeout = r.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
            let timeout = r.timeout.map_or(Duration::from_secs(60), |d| d.0);
            if connect_timeout.is_zero() || timeout.is_zero() {
                self.problem_at(
                    Some(at),
                    format!("{label}: timeouts must be longer than zero"),
                );
            }
            // A deadline is the request's start plus the timeout: bounded, so it is always a
            // time the clock can name.
            if connect_timeout > MAX_ROUTE_TIMEOUT || timeout > MAX_ROUTE_TIMEOUT {
                self.problem_at(Some(at), format!("{label}: timeouts must be at most 24h"));
            }
            if self.problems.len() == before {
                if let Some(upstream) = upstream {
                    out.push(RouteConfig {
                        name: r.name,
                        host,
                        path_prefix,
                        upstream,
                        twin,
                        attributes,
                        credential_as_bearer,
                        websocket: r.websocket.unwrap_or(true),
                        http2: r.http2.unwrap_or(false),
                        connect_timeout,
                        timeout,
                        line,
                    });
                }
            }
        }
        out
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))
}

/// A host as the gateway compares hosts: lower case, no trailing dot, no brackets, an IP
/// address in its one standard form (an IPv4-mapped IPv6 address as the IPv4 address).
/// Refused: anything but a name or an address (a scheme, a port, a path), and numbers that
/// a resolver reads as an IPv4 address but that are not written as one (`10.0.0.05`,
/// `167772165`, `0x0a000005`): a `production_hosts` entry would not recognize them.
pub fn canonical_host(raw: &str) -> Result<String, String> {
    let h = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = h
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(&h);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(crate::signals::network::canonical(ip).to_string());
    }
    let name_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !name_ok {
        return Err(format!(
            "{raw:?} is not a host name or IP address (no scheme, port or path)"
        ));
    }
    // A name's last label is never all digits (RFC 3696 §2); one that is (or is 0x-hex)
    // makes the whole a number that resolvers read as an IPv4 address.
    let last = bare.rsplit('.').next().unwrap_or_default();
    let numeric = |l: &str| {
        l.bytes().all(|b| b.is_ascii_digit())
            || l.strip_prefix("0x")
                .is_some_and(|x| x.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if numeric(last) {
        return Err(format!(
            "{raw:?} is an IP address in a non-standard form; write it as a.b.c.d"
        ));
    }
    Ok(bare.to_owned())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map_or(host, |h| h.trim_start_matches('['));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("upstream {s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "upstream {s:?}: https upstreams are not available in this version; use http:// on a private network"
            ))
        }
        _ => return Err(format!("upstream {s:?} must be an http:// URL")),
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("upstream {s:?} has no host"))?;
    let host = canonical_host(host).map_err(|e| format!("upstream {s:?}: {e}"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "upstream {s:?} must not have a path or query: the twin receives exactly the path that policy saw"
        ));
    }
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("upstream {s:?} has no host"))?;
    if authority.contains('@') {
        return Err(format!("upstream {s:?} must not carry credentials"));
    }
    // The port as written: `http::Uri` does not check its range.
    let port_text = match authority.rsplit_once(']') {
        Some((_, rest)) => rest.strip_prefix(':'),
        None => authority.rsplit_once(':').map(|(_, p)| p),
    };
    let port = match port_text {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("upstream {s:?}: port {p:?} is not 1 to 65535"))?,
    };
    Ok(Upstream {
        authority,
        host,
        port,
    })
}

#[cfg(test)]
mod tests;
