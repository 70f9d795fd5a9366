//! The servers behind `twinward demo`: a demo OpenID provider ([`idp`]) and a demo twin
//! service ([`twin`]). They sit beside the gateway, never in its request path: the browser
//! signs in at the demo provider, and the gateway proxies to the demo twin.
//!
//! INVARIANT: both servers refuse to listen anywhere but on loopback. The provider signs
//! anyone in as anyone, so it must never be reachable from another computer.

pub mod idp;
mod pages;
pub mod setup;
pub mod twin;

pub use idp::{demo_users, issuer_url, serve_idp, DemoClient, DemoUser};
pub use twin::{serve_twin, TwinTrust};

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

/// Why a demo server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo servers listen on loopback only, not on {addr}")]
    NotLoopback { addr: SocketAddr },
    #[error("demo server socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo identity provider: {0}")]
    Config(String),
    #[error("demo identity provider key generation failed")]
    KeyGeneration,
    #[error("demo page templates: {0}")]
    Template(#[from] minijinja::Error),
    #[error("demo twin http client: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// The listener's address, if it is a loopback one.
fn loopback_addr(listener: &tokio::net::TcpListener) -> Result<SocketAddr, DemoError> {
    let addr = listener.local_addr()?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(DemoError::NotLoopback { addr })
    }
}

/// Locks `m`, recovering the data from a poisoned lock: every critical section leaves the
/// maps consistent, so a panic elsewhere is no reason to stop the demo.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    #[tokio::test]
    async fn both_servers_refuse_a_non_loopback_listener() {
        // Any non-loopback address will do; skip where the machine has none to bind.
        let Ok(listener) = tokio::net::TcpListener::bind("0.0.0.0:0").await else {
            return;
        };
        let client = DemoClient {
            client_id: "twinward".into(),
            client_secret: "s".into(),
            redirect_uri: "http://localhost:8443/cb".into(),
        };
        let err = serve_idp(listener, client, Arc::new(ManualClock::at(0)))
            .await
            .unwrap_err();
        assert!(matches!(err, DemoError::NotLoopback { .. }), "{err}");

        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let trust = TwinTrust {
            jwks_url: "http://127.0.0.1:1/.well-known/jwks.json".into(),
            issuer: "http://localhost:8443".into(),
        };
        let err = serve_twin(listener, trust, Arc::new(ManualClock::at(0)))
            .await
            .unwrap_err();
        assert!(matches!(err, DemoError::NotLoopback { .. }), "{err}");
    }
}
