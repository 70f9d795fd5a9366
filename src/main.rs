//! The `twinward` command line: parse, load config, call into the library.

use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use twinward::access::tokens::{issue, NewTokenSpec};
use twinward::audit::{verify_chain, GENESIS};
use twinward::clock::{Clock, SystemClock};
use twinward::config::{self, Config};
use twinward::credentials::keys;
use twinward::policy::engine::{Loaded, TwinSpec};
use twinward::policy::{loader, testcases};

#[derive(Parser)]
#[command(
    name = "twinward",
    version,
    about = "Zero-trust, identity-aware access gateway for digital twins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// Config file (also TWINWARD_CONFIG).
    #[arg(long, env = "TWINWARD_CONFIG", default_value = "twinward.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ConfigArg),
    /// Validate config, policies, schema, keys and routes; list every problem.
    Check(ConfigArg),
    /// Validate, test and query policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Service-account API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Twin-credential signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Users' passkeys: list them, or remove one (e.g. a passkey locked after a cloning signal).
    #[command(subcommand)]
    Passkey(PasskeyCmd),
    /// Live browser sessions (asks the running gateway on its admin listener).
    #[command(subcommand)]
    Session(SessionCmd),
    /// Try it: the gateway, a demo identity provider and a demo twin, on this computer only.
    Demo(DemoArgs),
}

#[derive(Subcommand)]
enum PasskeyCmd {
    /// List passkeys (all, or one user's by e-mail or subject).
    List {
        #[command(flatten)]
        cfg: ConfigArg,
        #[arg(long)]
        user: Option<String>,
    },
    /// Remove a passkey by id; its user enrolls a new one at the next sign-in if it was their last.
    Remove {
        #[command(flatten)]
        cfg: ConfigArg,
        id: String,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// List live sessions.
    List(ConfigArg),
    /// End sessions: one (by id or unique prefix), all of a user's, or all.
    Revoke {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Session id (or a unique prefix of it) as `session list` shows it.
        #[arg(conflicts_with_all = ["user", "all"], required_unless_present_any = ["user", "all"])]
        id: Option<String>,
        /// Every session of this user (email or pseudonymous subject).
        #[arg(long, conflicts_with = "all")]
        user: Option<String>,
        /// Every session.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Where the demo keeps its config, database and keys (kept between runs).
    #[arg(long, default_value = "twinward-demo")]
    dir: PathBuf,
    /// The gateway's port; the demo identity provider and twin take the next two.
    #[arg(long, default_value_t = 8400)]
    port: u16,
}

// Parsed once per run; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum PolicyCmd {
    /// Strict validation against the schema.
    Validate { dir: Option<PathBuf> },
    /// Run the test cases under DIR/tests.
    Test { dir: Option<PathBuf> },
    /// What-if: the decision for one request (or a batch of JSON lines).
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// Policy directory (default: the config's policy.dir, else ./policies).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Config whose routes declare twins (optional).
    #[arg(long, env = "TWINWARD_CONFIG")]
    config: Option<PathBuf>,
    /// e.g. 'Twinward::ServiceAccount::"ci"'
    #[arg(long, required_unless_present = "batch")]
    principal: Option<String>,
    /// Roles of the principal (unless --entities gives it).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// read, write or admin.
    #[arg(long, required_unless_present = "batch")]
    action: Option<String>,
    /// e.g. 'Twinward::Twin::"plant-7"'
    #[arg(long, required_unless_present = "batch")]
    resource: Option<String>,
    /// Partial context as JSON; omitted fields take the gateway's defaults.
    #[arg(long)]
    context: Option<String>,
    /// Additional entities in Cedar's JSON format.
    #[arg(long)]
    entities: Option<PathBuf>,
    /// JSON lines of {principal, action, resource, context}; one JSON line out per request.
    #[arg(long)]
    batch: Option<PathBuf>,
    /// Timezone for hour and weekday (default: the config's, else UTC).
    #[arg(long)]
    timezone: Option<String>,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; it is printed once.
    Create {
        #[command(flatten)]
        cfg: ConfigArg,
        #[arg(long)]
        service_account: String,
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long = "twin")]
        twins: Vec<String>,
        /// e.g. 30d
        #[arg(long)]
        ttl: String,
        /// Who asked for it (recorded in the audit trail).
        #[arg(long, default_value_t = default_owner())]
        owner: String,
    },
    List(ConfigArg),
    /// Revoke by token id (or a unique prefix of it, at least 6 characters).
    Revoke {
        #[command(flatten)]
        cfg: ConfigArg,
        id: String,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Generate a new signing key; the previous one stays published for the overlap.
    Rotate(ConfigArg),
    List(ConfigArg),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Print events as JSON lines.
    Export {
        #[command(flatten)]
        cfg: ConfigArg,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
    /// Check the hash chain from the first event to the last.
    Verify(ConfigArg),
}

fn default_owner() -> String {
    std::env::var("USER").unwrap_or_else(|_| "admin".into())
}

/// A failure with its exit code: 2 for usage or invalid input, 1 for runtime failures.
struct Failure(u8, anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}

fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    Failure(1, e.into())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Failure(code, e)) => {
            eprintln!("twinward: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn load_config(path: &Path) -> Result<Config, Failure> {
    config::load(path).map_err(|e| {
        usage(anyhow!(
            "{} problem(s) in the config:\n{e}",
            e.problems.len()
        ))
    })
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cfg.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime_for(cfg: Option<&Config>) -> Result<tokio::runtime::Runtime, Failure> {
    let workers = cfg.map_or(1, |c| c.server.workers);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(runtime)
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Serve(a) => {
            let cfg = load_config(&a.config)?;
            init_logging(&cfg);
            for w in config::advice::warnings(&cfg) {
                tracing::warn!("{w}");
            }
            // Requests are served on per-core worker threads of their own; this runtime runs
            // the audit writer, watchers and the admin listener.
            let rt = runtime_for(None)?;
            rt.block_on(twinward::server::run(cfg, shutdown_signal(), |_| {}))
                .map_err(runtime)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(a) => check(&a.config),
        Command::Policy(p) => policy(p),
        Command::Token(t) => token(t),
        Command::Keys(k) => keys_cmd(k),
        Command::Audit(a) => audit(a),
        Command::Session(c) => session(c),
        Command::Passkey(c) => passkey(c),
        Command::Demo(d) => demo(d),
    }
}

/// Calls the running gateway's admin listener with the admin token from its keys directory.
fn admin_call(
    cfg: &Config,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Failure> {
    let addr = cfg.server.admin_listen.ok_or_else(|| {
        usage(anyhow!(
            "server.admin_listen is not set; the session commands talk to it"
        ))
    })?;
    let token_path = cfg
        .credentials
        .keys_dir
        .join(twinward::access::startup::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| {
            format!(
                "reading {} (is the gateway running with this config?)",
                token_path.display()
            )
        })
        .map_err(runtime)?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let url = format!(
        "http://{}{path}",
        std::net::SocketAddr::new(host.parse().map_err(runtime)?, addr.port())
    );
    let rt = runtime_for(None)?;
    rt.block_on(async move {
        let client = reqwest::Client::new();
        let req = match body {
            Some(b) => client.post(&url).json(&b),
            None => client.get(&url),
        };
        let resp = req
            .bearer_auth(token.trim())
            .send()
            .await
            .with_context(|| {
                format!("the gateway's admin listener at {url} does not answer (is it running?)")
            })
            .map_err(runtime)?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.map_err(runtime)?;
        if !status.is_success() {
            return Err(runtime(anyhow!(
                "{status}: {}",
                v["error"].as_str().unwrap_or("failed")
            )));
        }
        Ok(v)
    })
}

fn passkey(cmd: PasskeyCmd) -> Result<ExitCode, Failure> {
    let (PasskeyCmd::List { cfg, .. } | PasskeyCmd::Remove { cfg, .. }) = &cmd;
    let cfg = load_config(&cfg.config)?;
    let rt = runtime_for(None)?;
    rt.block_on(async move {
        let store = twinward::storage::open_existing(&cfg.storage.url)
            .await
            .map_err(runtime)?;
        match cmd {
            PasskeyCmd::List { user, .. } => {
                let list = store
                    .list_passkeys(user.as_deref())
                    .await
                    .map_err(runtime)?;
                println!(
                    "{:<36}  {:<28}  {:<20}  {:<20}  {:<36}  STATUS",
                    "ID", "USER", "NAME", "CREATED", "AAGUID"
                );
                for (p, email) in &list {
                    let status = if p.sign_count == twinward::mfa::LOCKED_SIGN_COUNT {
                        "locked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<36}  {:<28}  {:<20}  {:<20}  {:<36}  {status}",
                        p.id,
                        email,
                        p.name,
                        twinward::clock::Timestamp::from_unix_secs(p.created_at).to_rfc3339(),
                        p.aaguid
                    );
                }
                eprintln!("{} passkey(s)", list.len());
                Ok(ExitCode::SUCCESS)
            }
            PasskeyCmd::Remove { id, .. } => {
                match store.remove_passkey(&id).await.map_err(runtime)? {
                    Some(p) => {
                        let mut ev =
                            twinward::audit::AuditEvent::new("mfa.remove", "ok", SystemClock.now());
                        ev.actor = Some(default_owner().into());
                        ev.actor_pseudonym = Some(p.user_subject.as_str().into());
                        ev.detail =
                            serde_json::json!({ "passkey": p.id, "name": p.name, "by": "admin" })
                                .into();
                        store.append_audit(&[ev]).await.map_err(runtime)?;
                        println!("removed passkey {} ({})", p.id, p.name);
                        Ok(ExitCode::SUCCESS)
                    }
                    None => Err(usage(anyhow!("no passkey with id {id:?}"))),
                }
            }
        }
    })
}

fn session(cmd: SessionCmd) -> Result<ExitCode, Failure> {
    match cmd {
        SessionCmd::List(a) => {
            let cfg = load_config(&a.config)?;
            let v = admin_call(&cfg, "/sessions", None)?;
            let list = v["sessions"].as_array().cloned().unwrap_or_default();
            println!(
                "{:<16}  {:<28}  {:<20}  {:<20}  {:<4}  ROLES",
                "ID", "USER", "CREATED", "LAST SEEN", "MFA"
            );
            for s in &list {
                println!(
                    "{:<16}  {:<28}  {:<20}  {:<20}  {:<4}  {}",
                    s["id"]
                        .as_str()
                        .unwrap_or_default()
                        .get(..16)
                        .unwrap_or_default(),
                    s["user"].as_str().unwrap_or_default(),
                    s["created"].as_str().unwrap_or_default(),
                    s["last_seen"].as_str().unwrap_or_default(),
                    if s["mfa"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    s["roles"]
                        .as_array()
                        .map(|r| r
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default(),
                );
            }
            eprintln!("{} live session(s)", list.len());
            Ok(ExitCode::SUCCESS)
        }
        SessionCmd::Revoke { cfg, id, user, all } => {
            let c = load_config(&cfg.config)?;
            let body = match (id, user, all) {
                (Some(id), _, _) => serde_json::json!({ "session": id }),
                (None, Some(u), _) => serde_json::json!({ "user": u }),
                (None, None, true) => serde_json::json!({ "all": true }),
                _ => return Err(usage(anyhow!("give a session id, --user or --all"))),
            };
            let v = admin_call(&c, "/sessions/revoke", Some(body))?;
            let n = v["revoked"].as_array().map_or(0, Vec::len);
            println!("revoked {n} session(s)");
            Ok(if n == 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn demo(args: DemoArgs) -> Result<ExitCode, Failure> {
    use twinward::demo::{self, setup};
    let ports = setup::DemoPorts::from_base(args.port);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))
        .map_err(runtime)?;
    let dir = args.dir.canonicalize().map_err(runtime)?;
    let (config_path, secret) = setup::prepare(&dir, ports).map_err(runtime)?;
    let cfg = load_config(&config_path)?;
    init_logging(&cfg);
    let rt = runtime_for(None)?;
    rt.block_on(async move {
        let bind = |port: u16, what: &'static str| async move {
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| format!("port {port} for the {what} is taken; pick other ports with --port"))
                .map_err(runtime)
        };
        let idp = bind(ports.idp, "demo identity provider").await?;
        let twin = bind(ports.twin, "demo twin").await?;
        let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(SystemClock);
        let client = demo::DemoClient {
            client_id: setup::DEMO_CLIENT_ID.to_owned(),
            client_secret: secret,
            redirect_uri: format!("http://localhost:{}/.twinward/callback", ports.gateway),
        };
        let trust = demo::TwinTrust {
            jwks_url: format!("http://127.0.0.1:{}/.well-known/jwks.json", ports.gateway),
            issuer: cfg.credentials.issuer.clone(),
        };
        let c1 = clock.clone();
        tokio::spawn(async move {
            if let Err(e) = demo::serve_idp(idp, client, c1).await {
                tracing::error!(error = %e, "demo identity provider stopped");
            }
        });
        tokio::spawn(async move {
            if let Err(e) = demo::serve_twin(twin, trust, clock).await {
                tracing::error!(error = %e, "demo twin stopped");
            }
        });
        let users = demo::demo_users()
            .iter()
            .map(|u| format!("    {:<8} {:<22} {}", u.id, u.groups.join(","), u.about))
            .collect::<Vec<_>>()
            .join("\n");
        let banner = format!(
            "\n  twinward demo — everything runs on this computer only.\n\n  Open  http://localhost:{gw}/plant-7/  in a browser that supports passkeys.\n\n  The DEMO identity provider (http://localhost:{idp}) signs anyone in as one of:\n{users}\n  It is for trying twinward only; never use it in production.\n\n  Portal: http://localhost:{gw}/.twinward/    Files: {dir}\n  Stop with Ctrl-C.\n",
            gw = ports.gateway,
            idp = ports.idp,
            dir = dir.display(),
        );
        twinward::server::run(cfg, shutdown_signal(), move |_| eprintln!("{banner}"))
            .await
            .map_err(runtime)
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn check(path: &Path) -> Result<ExitCode, Failure> {
    let mut problems: Vec<String> = Vec::new();
    let (cfg, config_problems) = config::load_lenient(path);
    problems.extend(config_problems.iter().map(ToString::to_string));
    if let Some(cfg) = &cfg {
        match loader::load_dir(&cfg.policy.dir) {
            Ok(bundle) => {
                let twins = TwinSpec::from_routes(&cfg.routes, &path.display().to_string());
                match Loaded::compile(bundle, &twins, 0) {
                    Ok(l) => {
                        // A role the IdP mapping names but the policies do not know would
                        // quietly grant nothing.
                        for (claim, role) in cfg.signin.iter().flat_map(|s| &s.oidc.roles) {
                            if !l.knows_role(role) {
                                problems.push(format!(
                                    "{}: oidc.roles maps {claim:?} to {role:?}, which is not a Twinward::Role in the policy entities",
                                    path.display()
                                ));
                            }
                        }
                    }
                    Err(ps) => problems.extend(ps.iter().map(ToString::to_string)),
                }
            }
            Err(ps) => problems.extend(ps.iter().map(|p| p.in_dir(&cfg.policy.dir))),
        }
        let c = &cfg.credentials;
        if c.keys_dir.exists() {
            if let Err(e) = keys::load(
                &c.keys_dir,
                c.algorithm,
                c.timing(),
                SystemClock.now(),
                false,
            ) {
                problems.push(format!("keys: {e}"));
            }
        }
        if let Some(r) = &cfg.identity.pseudonym_key {
            if let Err(e) = r.load() {
                problems.push(format!("identity: {e}"));
            }
        }
        if let Some(s) = &cfg.signin {
            if let Err(e) = s.oidc.client_secret.load() {
                problems.push(format!("oidc client secret: {e}"));
            }
        }
    }
    if problems.is_empty() {
        println!("{}: ok", path.display());
        // Said only of a config that is otherwise fine: a problem list stays a problem list.
        for w in cfg.iter().flat_map(config::advice::warnings) {
            eprintln!("{}", w.as_warning());
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("{} problem(s)", problems.len());
        Ok(ExitCode::from(2))
    }
}

fn policy_dir(dir: Option<PathBuf>, cfg: Option<&Config>) -> PathBuf {
    dir.or_else(|| cfg.map(|c| c.policy.dir.clone()))
        .unwrap_or_else(|| PathBuf::from("policies"))
}

fn compile(dir: &Path, twins: &[TwinSpec]) -> Result<Loaded, Failure> {
    let bundle = loader::load_dir(dir).map_err(|ps| {
        usage(anyhow!(
            "{}",
            ps.iter()
                .map(|p| p.in_dir(dir))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })?;
    Loaded::compile(bundle, twins, 0).map_err(|ps| {
        usage(anyhow!(
            "{}",
            ps.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
}

fn policy(cmd: PolicyCmd) -> Result<ExitCode, Failure> {
    match cmd {
        PolicyCmd::Validate { dir } => {
            let dir = policy_dir(dir, None);
            let l = compile(&dir, &[])?;
            println!(
                "{}: {} policies valid against the schema",
                dir.display(),
                l.bundle.policies.num_of_policies()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Test { dir } => {
            let dir = policy_dir(dir, None);
            let l = compile(&dir, &[])?;
            let results =
                testcases::run_dir(&l, &dir.join("tests")).map_err(|e| usage(anyhow!(e)))?;
            let failed = results.iter().filter(|r| !r.passed).count();
            for r in &results {
                println!(
                    "{} {}: {} — {}",
                    if r.passed { "PASS" } else { "FAIL" },
                    r.file,
                    r.name,
                    r.detail
                );
            }
            println!("{} passed, {} failed", results.len() - failed, failed);
            if results.is_empty() {
                return Err(usage(anyhow!(
                    "no test cases under {}",
                    dir.join("tests").display()
                )));
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        PolicyCmd::Eval(a) => eval(a),
    }
}

fn eval(a: EvalArgs) -> Result<ExitCode, Failure> {
    let cfg = match &a.config {
        Some(p) => Some(load_config(p)?),
        None => None,
    };
    let dir = policy_dir(a.dir.clone(), cfg.as_ref());
    let twins = cfg
        .as_ref()
        .map(|c| TwinSpec::from_routes(&c.routes, &c.file))
        .unwrap_or_default();
    let l = compile(&dir, &twins)?;
    let tz: chrono_tz::Tz = match &a.timezone {
        Some(t) => t
            .parse()
            .map_err(|_| usage(anyhow!("--timezone {t:?} is not an IANA time zone")))?,
        None => cfg.as_ref().map_or(chrono_tz::UTC, |c| c.location.timezone),
    };
    let extra = match &a.entities {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))
                .map_err(usage)?;
            let json: Vec<serde_json::Value> = serde_json::from_str(&text)
                .with_context(|| format!("{}: expected a JSON array of entities", p.display()))
                .map_err(usage)?;
            testcases::parse_entities(&l, &json)
                .map_err(|e| usage(anyhow!("{}: {e}", p.display())))?
        }
        None => Vec::new(),
    };
    if let Some(batch) = &a.batch {
        let text = std::fs::read_to_string(batch)
            .with_context(|| format!("reading {}", batch.display()))
            .map_err(usage)?;
        let mut any_error = false;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let out = match serde_json::from_str::<testcases::BatchLine>(line) {
                Err(e) => serde_json::json!({"line": i + 1, "error": e.to_string()}),
                Ok(q) => match testcases::evaluate(&l, &q.into(), &extra, &tz) {
                    Ok(d) => {
                        serde_json::json!({"line": i + 1, "decision": if d.allow {"allow"} else {"deny"}, "determining": d.determining, "errors": d.errors})
                    }
                    Err(e) => serde_json::json!({"line": i + 1, "error": e}),
                },
            };
            any_error |= out.get("error").is_some();
            println!("{out}");
        }
        return Ok(if any_error {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let (Some(principal), Some(action), Some(resource)) = (a.principal, a.action, a.resource)
    else {
        return Err(usage(anyhow!(
            "--principal, --action and --resource are required without --batch"
        )));
    };
    let mut p: serde_json::Value = principal.clone().into();
    if !a.roles.is_empty() {
        let uid = testcases::parse_uid(&p).map_err(|e| usage(anyhow!(e)))?;
        p = serde_json::json!({"type": uid.type_name().to_string(), "id": uid.id().unescaped(), "roles": a.roles});
    }
    let context = match &a.context {
        Some(c) => Some(
            serde_json::from_str(c)
                .context("--context is not JSON")
                .map_err(usage)?,
        ),
        None => None,
    };
    let q = testcases::Query {
        principal: p,
        action: action.into(),
        resource: resource.into(),
        context,
    };
    let d = testcases::evaluate(&l, &q, &extra, &tz).map_err(|e| usage(anyhow!(e)))?;
    println!("decision: {}", if d.allow { "allow" } else { "deny" });
    if d.determining.is_empty() {
        println!(
            "determining policies: none{}",
            if d.allow { "" } else { " (default deny)" }
        );
    } else {
        println!("determining policies:");
        for id in d.determining.iter() {
            let pid = cedar_policy::PolicyId::new(id);
            println!("  {}", l.bundle.describe(&pid));
        }
    }
    for e in &d.errors {
        println!("error: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

fn token(cmd: TokenCmd) -> Result<ExitCode, Failure> {
    let path = match &cmd {
        TokenCmd::Create { cfg, .. } | TokenCmd::Revoke { cfg, .. } => cfg.config.clone(),
        TokenCmd::List(c) => c.config.clone(),
    };
    let cfg = load_config(&path)?;
    let rt = runtime_for(None)?;
    rt.block_on(async move {
        // A token may be made before the gateway first starts; listing or revoking one
        // needs the database that holds them.
        let store = match &cmd {
            TokenCmd::Create { .. } => twinward::storage::open(&cfg.storage.url).await,
            _ => twinward::storage::open_existing(&cfg.storage.url).await,
        }
        .map_err(runtime)?;
        let now = SystemClock.now();
        match cmd {
            TokenCmd::Create { service_account, roles, twins, ttl, owner, .. } => {
                let ttl = config::duration::parse(&ttl).map_err(|e| usage(anyhow!("--ttl: {e}")))?;
                let specs = TwinSpec::from_routes(&cfg.routes, &path.display().to_string());
                let l = compile(&cfg.policy.dir, &specs)?;
                let spec = NewTokenSpec { service_account, owner, roles, twins, ttl, user_subject: None };
                let mut random = [0u8; 32];
                rand::fill(&mut random);
                let (text, rec, ev) = issue(store.as_ref(), &spec, |r| l.knows_role(r), |t| l.knows_twin(t), cfg.api_tokens.max_ttl, now, random)
                    .await
                    .map_err(|e| match e {
                        twinward::access::tokens::IssueError::Invalid(m) => usage(anyhow!(m)),
                        other => runtime(other),
                    })?;
                // An unaudited token must not exist: without its event, it is revoked again
                // before anyone has seen it.
                if let Err(e) = store.append_audit(&[ev]).await {
                    let undone = store.revoke_token(&rec.id, now.unix_secs()).await;
                    let left = match undone {
                        Ok(_) => String::new(),
                        Err(u) => format!(
                            "; revoking it failed too ({u}): run `twinward token revoke {}`",
                            rec.id
                        ),
                    };
                    return Err(runtime(anyhow!(
                        "no token issued: its audit event could not be written ({e}){left}"
                    )));
                }
                eprintln!("token id {} for service account {:?}, roles {:?}, expires {}", rec.id, rec.service_account, rec.roles, twinward::clock::Timestamp::from_unix_secs(rec.expires_at).to_rfc3339());
                eprintln!("store it now: it is shown only once");
                println!("{text}");
            }
            TokenCmd::List(_) => {
                println!("{:<38} {:<11} {:<20} {:<30} {:<21} status", "id", "prefix", "service account", "roles", "expires");
                for t in store.list_tokens().await.map_err(runtime)? {
                    let status = if t.revoked_at.is_some() { "revoked" } else if t.expires_at <= now.unix_secs() { "expired" } else { "active" };
                    println!("{:<38} {:<11} {:<20} {:<30} {:<21} {status}", t.id, t.display_prefix, t.service_account, t.roles.join(","), twinward::clock::Timestamp::from_unix_secs(t.expires_at).to_rfc3339());
                }
            }
            TokenCmd::Revoke { id, .. } => match store.revoke_token(&id, now.unix_secs()).await {
                Ok(Some(rec)) => {
                    let mut ev = twinward::audit::AuditEvent::new("token.revoke", "ok", now);
                    ev.actor = Some(default_owner().into());
                    ev.detail = serde_json::json!({"token_id": rec.id, "service_account": rec.service_account}).into();
                    if let Err(e) = store.append_audit(&[ev]).await {
                        return Err(runtime(anyhow!(
                            "revoked {} ({}), but its audit event could not be written: {e}",
                            rec.id,
                            rec.service_account
                        )));
                    }
                    println!("revoked {} ({})", rec.id, rec.service_account);
                }
                Ok(None) => {
                    return Err(usage(anyhow!(
                        "no token with id {id:?} (give the id `token list` shows, or a unique prefix of at least 6 characters)"
                    )))
                }
                Err(twinward::storage::StorageError::Conflict(m)) => return Err(usage(anyhow!(m))),
                Err(e) => return Err(runtime(e)),
            },
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn keys_cmd(cmd: KeysCmd) -> Result<ExitCode, Failure> {
    let (KeysCmd::Rotate(a) | KeysCmd::List(a)) = &cmd;
    let cfg = load_config(&a.config)?;
    let c = &cfg.credentials;
    let now = SystemClock.now();
    if let KeysCmd::Rotate(_) = cmd {
        let path = keys::generate(&c.keys_dir, c.algorithm, now).map_err(runtime)?;
        println!("new signing key {}", path.display());
        println!(
            "running gateways publish it within a second and sign with it after {}; the previous key stays in the JWKS for {} after that",
            config::duration::format(c.activation_delay),
            config::duration::format(c.rotation_overlap)
        );
    }
    let ring = keys::load(&c.keys_dir, c.algorithm, c.timing(), now, false).map_err(runtime)?;
    for k in &ring.published {
        let state = if k.kid == ring.current.kid {
            "current (signing)".to_owned()
        } else if k.created > ring.current.created {
            format!(
                "published, signs from {}",
                k.created.saturating_add(c.activation_delay).to_rfc3339()
            )
        } else {
            "published (overlap)".to_owned()
        };
        println!(
            "{}  {}  created {}  {state}",
            k.kid,
            k.alg.jose_name(),
            k.created.to_rfc3339()
        );
    }
    for k in &ring.expired {
        println!(
            "{}  {}  created {}  retired",
            k.kid,
            k.alg.jose_name(),
            k.created.to_rfc3339()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(cmd: AuditCmd) -> Result<ExitCode, Failure> {
    let (AuditCmd::Export { cfg: a, .. } | AuditCmd::Verify(a)) = &cmd;
    let cfg = load_config(&a.config)?;
    let rt = runtime_for(None)?;
    rt.block_on(async move {
        let store = twinward::storage::open_existing(&cfg.storage.url)
            .await
            .map_err(runtime)?;
        const PAGE: i64 = 5000;
        match cmd {
            AuditCmd::Export { after, .. } => {
                let mut cursor = after;
                loop {
                    let page = store.audit_events(cursor, PAGE).await.map_err(runtime)?;
                    let Some(last) = page.last() else { break };
                    cursor = last.seq;
                    for e in &page {
                        println!("{}", e.export_line().map_err(runtime)?);
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            AuditCmd::Verify(_) => {
                let (mut seq, mut hash) = (0i64, GENESIS.to_owned());
                loop {
                    let page = store.audit_events(seq, PAGE).await.map_err(runtime)?;
                    if page.is_empty() {
                        break;
                    }
                    match verify_chain(&page, seq, &hash) {
                        Ok((s, h)) => (seq, hash) = (s, h),
                        Err(e) => {
                            eprintln!("audit chain broken: {e}");
                            return Ok(ExitCode::from(1));
                        }
                    }
                }
                println!("audit chain intact: {seq} events, head {hash}");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
