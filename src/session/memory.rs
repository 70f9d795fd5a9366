//! The embedded session store: one process, nothing on disk. Sessions end with the
//! process, which for the embedded default is what admins expect.

use super::{Selector, Session, SessionKey, SessionStore, SessionStoreError};
use crate::clock::Timestamp;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;

/// One-time records by (kind, hashed id): value and expiry.
type OnceMap = HashMap<(&'static str, String), (Vec<u8>, Timestamp)>;

/// The most one-time records (sign-ins and passkey ceremonies in progress) kept at once.
const ONCE_LIMIT: usize = 50_000;

#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<SessionKey, Session>>,
    once: Mutex<OnceMap>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn poisoned() -> SessionStoreError {
    SessionStoreError::Unavailable("session store lock poisoned".into())
}

impl SessionStore for MemoryStore {
    fn get<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Session>, SessionStoreError>> {
        let r = self
            .sessions
            .lock()
            .map(|m| m.get(key).cloned())
            .map_err(|_| poisoned());
        Box::pin(async move { r })
    }

    fn put(&self, session: Session) -> BoxFuture<'_, Result<(), SessionStoreError>> {
        let r = self
            .sessions
            .lock()
            .map(|mut m| {
                m.insert(session.key.clone(), session);
            })
            .map_err(|_| poisoned());
        Box::pin(async move { r })
    }

    fn remove<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Session>, SessionStoreError>> {
        let r = self
            .sessions
            .lock()
            .map(|mut m| m.remove(key))
            .map_err(|_| poisoned());
        Box::pin(async move { r })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Session>, SessionStoreError>> {
        let r = self
            .sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .map_err(|_| poisoned());
        Box::pin(async move { r })
    }

    fn revoke(&self, selector: Selector) -> BoxFuture<'_, Result<Vec<Session>, SessionStoreError>> {
        let r = self
            .sessions
            .lock()
            .map(|mut m| {
                let doomed: Vec<SessionKey> = match &selector {
                    Selector::All => m.keys().cloned().collect(),
                    Selector::Family(f) => m
                        .values()
                        .filter(|s| s.family == *f)
                        .map(|s| s.key.clone())
                        .collect(),
                    Selector::User(u) => m
                        .values()
                        .filter(|s| s.user.subject == *u || s.user.email == *u)
                        .map(|s| s.key.clone())
                        .collect(),
                    Selector::Key(prefix) => {
                        let hits: Vec<SessionKey> = m
                            .keys()
                            .filter(|k| !prefix.is_empty() && k.0.starts_with(prefix.as_str()))
                            .cloned()
                            .collect();
                        // An ambiguous prefix revokes nothing rather than several sessions.
                        if hits.len() == 1 {
                            hits
                        } else {
                            Vec::new()
                        }
                    }
                };
                doomed.iter().filter_map(|k| m.remove(k)).collect()
            })
            .map_err(|_| poisoned());
        Box::pin(async move { r })
    }

    fn put_once<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
        value: Vec<u8>,
        now: Timestamp,
        expires: Timestamp,
    ) -> BoxFuture<'a, Result<(), SessionStoreError>> {
        let r = match self.once.lock() {
            Ok(mut m) => {
                // Anyone can start a sign-in, so the map has a hard bound: expired records go
                // when it is full, and while it is still full of live ones new records are
                // refused (the caller answers 503) rather than memory growing without end.
                if m.len() >= ONCE_LIMIT {
                    m.retain(|_, (_, exp)| *exp > now);
                }
                if m.len() >= ONCE_LIMIT {
                    Err(SessionStoreError::Unavailable(
                        "too many sign-ins and passkey checks in progress".into(),
                    ))
                } else {
                    m.insert((kind, id.to_owned()), (value, expires));
                    Ok(())
                }
            }
            Err(_) => Err(poisoned()),
        };
        Box::pin(async move { r })
    }

    fn take_once<'a>(
        &'a self,
        kind: &'static str,
        id: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, SessionStoreError>> {
        let r = self
            .once
            .lock()
            .map(|mut m| {
                m.remove(&(kind, id.to_owned()))
                    .filter(|(_, exp)| now < *exp)
                    .map(|(v, _)| v)
            })
            .map_err(|_| poisoned());
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{SessionId, SignedInUser};

    fn session(key: SessionKey, email: &str) -> Session {
        Session {
            family: key.clone(),
            key,
            user: SignedInUser {
                subject: format!("sub-{email}"),
                issuer: "https://idp".into(),
                idp_subject: email.into(),
                email: email.into(),
                name: email.into(),
                roles: vec!["twin-viewer".into()],
                idp_amr: vec![],
                webauthn_id: uuid::Uuid::nil(),
            },
            created: Timestamp::from_unix_secs(100),
            last_seen: Timestamp::from_unix_secs(100),
            expires: Timestamp::from_unix_secs(1000),
            mfa_at: None,
            csrf: "c".into(),
            user_agent: String::new(),
            client_ip: String::new(),
        }
    }

    #[tokio::test]
    async fn a_family_is_revoked_together_and_nothing_else() {
        let s = MemoryStore::new();
        let a = SessionId::generate().key();
        let b = SessionId::generate().key();
        let c = SessionId::generate().key();
        s.put(session(a.clone(), "ann@x")).await.unwrap();
        let mut sibling = session(b.clone(), "ann@x");
        sibling.family = a.clone();
        s.put(sibling).await.unwrap();
        s.put(session(c.clone(), "ann@x")).await.unwrap();
        let gone = s.revoke(Selector::Family(a.clone())).await.unwrap();
        assert_eq!(gone.len(), 2);
        assert!(s.get(&c).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn once_records_are_single_use_and_expire() {
        let s = MemoryStore::new();
        let t = Timestamp::from_unix_secs(10);
        s.put_once("login", "a", b"x".to_vec(), Timestamp::EPOCH, t)
            .await
            .unwrap();
        s.put_once("login", "b", b"y".to_vec(), Timestamp::EPOCH, t)
            .await
            .unwrap();
        assert_eq!(
            s.take_once("login", "a", Timestamp::from_unix_secs(9))
                .await
                .unwrap(),
            Some(b"x".to_vec())
        );
        assert_eq!(
            s.take_once("login", "a", Timestamp::from_unix_secs(9))
                .await
                .unwrap(),
            None
        );
        // Another kind never sees it; an expired record is gone.
        assert_eq!(
            s.take_once("webauthn", "b", Timestamp::from_unix_secs(9))
                .await
                .unwrap(),
            None
        );
        assert_eq!(s.take_once("login", "b", t).await.unwrap(), None);
    }

    #[tokio::test]
    async fn once_records_are_bounded() {
        let s = MemoryStore::new();
        let start = Timestamp::from_unix_secs(0);
        let end = Timestamp::from_unix_secs(10);
        for i in 0..ONCE_LIMIT {
            s.put_once("login", &i.to_string(), Vec::new(), start, end)
                .await
                .unwrap();
        }
        // Full of live records: refused, nothing grows.
        assert!(s
            .put_once("login", "one-more", Vec::new(), start, end)
            .await
            .is_err());
        assert_eq!(s.once.lock().unwrap().len(), ONCE_LIMIT);
        // Once they have expired they make room.
        s.put_once(
            "login",
            "later",
            b"v".to_vec(),
            end,
            Timestamp::from_unix_secs(20),
        )
        .await
        .unwrap();
        assert_eq!(s.once.lock().unwrap().len(), 1);
        assert_eq!(
            s.take_once("login", "later", end).await.unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[tokio::test]
    async fn revoke_by_prefix_user_and_all() {
        let s = MemoryStore::new();
        let a = SessionId::generate().key();
        let b = SessionId::generate().key();
        s.put(session(a.clone(), "ann@x")).await.unwrap();
        s.put(session(b.clone(), "bob@x")).await.unwrap();
        assert!(s
            .revoke(Selector::Key(String::new()))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.revoke(Selector::User("bob@x".into()))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(s.get(&b).await.unwrap().is_none());
        let r = s.revoke(Selector::Key(a.short().into())).await.unwrap();
        assert_eq!(r.len(), 1);
        assert!(s.list().await.unwrap().is_empty());
    }

    #[test]
    fn ids_are_256_bit_and_parse_strictly() {
        let id = SessionId::generate();
        assert_eq!(id.cookie_value().len(), 43);
        assert!(SessionId::parse(id.cookie_value()).is_some());
        assert!(SessionId::parse("short").is_none());
        assert!(SessionId::parse(&format!("{}=", &id.cookie_value()[..42])).is_none());
        assert_ne!(id.key().0, id.cookie_value());
    }
}
