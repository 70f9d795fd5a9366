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
        Err(rejection) => ReloadOutcome::Rejected {
            problems: rejection.problems,
            file_hashes: rejection.file_hashes,
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
        // The files as they were when the set in force was read, not as they are now: an
        // edit made between the load at start and this task would otherwise go unnoticed.
        let mut last = engine.current().bundle.file_hashes.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_shipped(to: &Path) {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// An edit made after the set was loaded but before the watcher started is still seen.
    #[tokio::test]
    async fn an_edit_before_the_watcher_starts_is_loaded() {
        let d = tempfile::tempdir().unwrap();
        copy_shipped(d.path());
        let engine = Arc::new(Engine::load(d.path(), Vec::new()).unwrap());
        let before = engine.current().generation;
        std::fs::write(
            d.path().join("added.cedar"),
            "@id(\"added\")\npermit(principal, action == Twinward::Action::\"read\", resource) when { false };\n",
        )
        .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = spawn_watcher(engine.clone(), d.path().to_owned(), true, move |o| {
            let _ = tx.send(o);
        });
        let outcome = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the edit was never loaded")
            .unwrap();
        watcher.abort();
        assert!(
            matches!(outcome, ReloadOutcome::Loaded { generation, .. } if generation > before),
            "{outcome:?}"
        );
    }
}
