//! Hot reload: on SIGHUP, on a change in the policy directory (polled once a second, which
//! also catches editors that replace files by rename), and on demand. A rejected set is
//! logged with each problem's file and position; the last good set stays in force.

use super::{Engine, PolicyProblem};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// What a reload attempt came to, for logs, metrics and the audit trail.
#[derive(Debug, Clone)]
pub enum ReloadOutcome {
    Loaded {
        generation: u64,
        policies: usize,
        file_hashes: Vec<(String, String)>,
    },
    Rejected {
        problems: Vec<PolicyProblem>,
        file_hashes: Vec<(String, String)>,
    },
}

pub fn reload(engine: &Engine, dir: &Path) -> ReloadOutcome {
    match engine.reload(dir) {
        Ok(l) => ReloadOutcome::Loaded {
            generation: l.generation,
            policies: l.bundle.policies.num_of_policies(),
            file_hashes: l.bundle.file_hashes.clone(),
        },
        Err(problems) => ReloadOutcome::Rejected {
            problems,
            file_hashes: super::loader::fingerprint(dir),
        },
    }
}

/// Watches `dir` and listens for SIGHUP until the process ends; each attempt's outcome goes
/// to `report`.
pub fn spawn_watcher(
    engine: Arc<Engine>,
    dir: PathBuf,
    watch_files: bool,
    report: impl Fn(ReloadOutcome) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = super::loader::fingerprint(&dir);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let by_signal = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => true,
                _ = tick.tick() => false,
            };
            if !by_signal {
                if !watch_files {
                    continue;
                }
                let now = super::loader::fingerprint(&dir);
                if now == last {
                    continue;
                }
                // Let an editor finish writing a batch of files before reading them.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            last = super::loader::fingerprint(&dir);
            let engine = engine.clone();
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || reload(&engine, &d)).await {
                Ok(outcome) => report(outcome),
                Err(e) => tracing::error!(error = %e, "policy reload task failed"),
            }
        }
    })
}
