//! Running the gateway: build it, bind the listeners, watch policy and keys, stop cleanly.

use crate::access::startup::StartError;
use crate::access::Gateway;
use crate::audit::AuditEvent;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::credentials::keys;
use crate::http::limit::{self, ConnectionLimit};
use crate::metrics::Outcome;
use crate::policy::reload::{self, ReloadOutcome};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Addresses actually bound (useful when the config asks for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub public: SocketAddr,
    pub admin: Option<SocketAddr>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Runs until `shutdown` resolves. `on_bound` learns the bound addresses once listening.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (gw, audit_task) = Gateway::start(config, clock).await?;
    let admin = match gw.config.server.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listen = gw.config.server.listen;
    let limit = Arc::new(connection_limit(&gw));
    let max_connections = limit.max();
    let (public, workers) =
        crate::http::spawn_workers(gw.clone(), listen, gw.config.server.workers, limit, stop_rx)
            .map_err(|source| ServeError::Bind {
                addr: listen,
                source,
            })?;
    let bound = Bound {
        public,
        admin: admin.as_ref().and_then(|a| a.local_addr().ok()),
    };
    tracing::info!(listen = %bound.public, admin = ?bound.admin, routes = gw.routes.routes().len(), policy_generation = gw.engine.current().generation, max_connections, "twinward is serving");
    on_bound(bound);

    let watcher = {
        let gw2 = gw.clone();
        let rt = tokio::runtime::Handle::current();
        reload::spawn_watcher(
            gw.engine.clone(),
            gw.config.policy.dir.clone(),
            gw.config.policy.watch,
            move |outcome| {
                let gw = gw2.clone();
                rt.spawn(async move { report_reload(&gw, outcome).await });
            },
        )
    };
    let key_watcher = tokio::spawn(watch_keys(gw.clone()));
    let admin_task = admin.map(|l| tokio::spawn(crate::http::admin::serve(l, gw.clone())));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    watcher.abort();
    key_watcher.abort();
    if let Some(t) = admin_task {
        t.abort();
    }
    // Give the audit writer the queued events before exiting.
    let audit = gw.audit.clone();
    drop(gw);
    audit.shutdown(audit_task).await;
    Ok(())
}

/// The gateway-wide connection limit: `server.max_connections`, or fewer where the
/// open-file limit, raised first as far as allowed, would not cover them.
fn connection_limit(gw: &Gateway) -> ConnectionLimit {
    let configured = gw.config.server.max_connections;
    let max = match limit::raise_open_file_limit() {
        Ok(open_files) => {
            let max = limit::budget(configured, open_files);
            if max < configured {
                tracing::warn!(
                    max_connections = max,
                    configured,
                    open_files,
                    "serving fewer connections than server.max_connections: the open-file limit covers only these; raise it (LimitNOFILE=, ulimit -n)"
                );
            }
            max
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            configured
        }
    };
    ConnectionLimit::new(max, gw.metrics.connections.clone())
}

async fn report_reload(gw: &Gateway, outcome: ReloadOutcome) {
    let now = gw.now();
    match outcome {
        ReloadOutcome::Loaded {
            generation,
            policies,
            file_hashes,
        } => {
            tracing::info!(generation, policies, "policy set reloaded");
            gw.metrics
                .reloads
                .get_or_create(&Outcome { outcome: "loaded" })
                .inc();
            let mut ev = AuditEvent::new("policy.reload", "ok", now);
            ev.detail = serde_json::json!({ "generation": generation, "policies": policies, "files": file_hashes }).into();
            gw.audit.record(ev).await;
        }
        ReloadOutcome::Rejected {
            problems,
            file_hashes,
        } => {
            for p in &problems {
                tracing::error!(dir = %gw.config.policy.dir.display(), problem = %p, "policy change rejected; the last good set stays in force");
            }
            gw.metrics
                .reloads
                .get_or_create(&Outcome {
                    outcome: "rejected",
                })
                .inc();
            let mut ev = AuditEvent::new("policy.reject", "error", now);
            ev.detail = serde_json::json!({
                "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "files": file_hashes,
                "in_force_generation": gw.engine.current().generation,
            })
            .into();
            gw.audit.record(ev).await;
        }
    }
}

/// Picks up keys added by `twinward keys rotate` (and retires old ones after their overlap).
async fn watch_keys(gw: Arc<Gateway>) {
    let cfg = &gw.config.credentials;
    let mut last = keys::fingerprint(&cfg.keys_dir);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut since_refresh = 0u32;
    loop {
        tick.tick().await;
        since_refresh += 1;
        let now_fp = keys::fingerprint(&cfg.keys_dir);
        if now_fp == last && since_refresh < 5 {
            continue;
        }
        since_refresh = 0;
        match keys::load(&cfg.keys_dir, cfg.algorithm, cfg.timing(), gw.now(), false) {
            Ok(ring) => {
                if now_fp != last {
                    tracing::info!(kid = %ring.current.kid, published = ring.published.len(), "signing keys reloaded");
                }
                gw.minter.set_keys(ring);
                last = now_fp;
            }
            Err(e) => {
                tracing::error!(error = %e, "signing keys not reloaded; the current keys stay in use")
            }
        }
    }
}
