//! The audit writer: a bounded queue and one task that appends events in batches.

use super::AuditEvent;
use crate::storage::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const QUEUE: usize = 65_536;
const BATCH: usize = 2048;
const LINGER: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
}

impl AuditSink {
    /// Starts the writer. It retries a failed batch until storage returns, so events are
    /// delayed, not lost, while the database is briefly unavailable.
    pub fn start(store: Arc<dyn Store>) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(QUEUE);
        let handle = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                // Linger briefly so a trickle of events shares one transaction instead of
                // paying a commit each.
                if batch.len() < BATCH {
                    tokio::time::sleep(LINGER).await;
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                }
                let events = std::mem::take(&mut batch);
                let mut delay = Duration::from_millis(50);
                loop {
                    match store.append_audit(&events).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::error!(error = %e, pending = events.len(), "audit append failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            }
        });
        (AuditSink { tx }, handle)
    }

    /// Queues an event; waits only when the queue is full (backpressure, never loss).
    pub async fn record(&self, event: AuditEvent) {
        if let Err(e) = self.tx.try_send(event) {
            match e {
                mpsc::error::TrySendError::Full(ev) => {
                    if self.tx.send(ev).await.is_err() {
                        tracing::error!("audit writer has stopped; event dropped");
                    }
                }
                mpsc::error::TrySendError::Closed(_) => {
                    tracing::error!("audit writer has stopped; event dropped")
                }
            }
        }
    }

    /// Closes the queue and waits for the writer to drain it.
    pub async fn shutdown(self, handle: tokio::task::JoinHandle<()>) {
        drop(self.tx);
        let _ = handle.await;
    }
}
