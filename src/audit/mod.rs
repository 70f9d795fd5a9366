//! The audit trail: every decision, token event, credential mint and policy reload, appended
//! to a hash chain in storage (each event carries the hash of the one before it), so an
//! edit, deletion or truncation in the middle shows up on verification.
//!
//! Events are handed to [`AuditSink`], whose single writer batches them into transactions;
//! the request path never waits on the database unless the queue is full.

pub mod chain;
mod json;
pub mod sink;

pub use chain::{verify_chain, ChainError, GENESIS};
pub use sink::AuditSink;

use crate::clock::Timestamp;
use serde::Serialize;
use std::borrow::Cow;
use std::sync::Arc;

/// A request method as the audit log names it: the standard ones without an allocation.
pub fn method_name(method: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_owned()),
    }
}

/// An event before it is chained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// The decision id for access events (shown to the refused client), else an event id.
    pub event_id: EventId,
    pub at_ms: i64,
    pub kind: &'static str,
    pub outcome: &'static str,
    /// The production identity (service account name, user e-mail); the audit log is admin-only.
    ///
    /// Names the gateway already holds (route, twin, token and its principal) are shared
    /// (`Arc<str>`) rather than copied: an access event is built for every request on a
    /// worker and dropped by the writer thread.
    pub actor: Option<Arc<str>>,
    pub actor_pseudonym: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
    pub action: Option<&'static str>,
    pub policies: Arc<[String]>,
    pub detail: Detail,
}

/// What an event says beyond its fixed fields. Access decisions, one per proxied request,
/// have a typed detail (no map to build on the request path); rarer events carry JSON.
/// Both serialize to a JSON object, which is what is stored and hashed.
///
/// The access detail is held inline, not boxed: a box would be allocated on a worker for
/// every request and freed on the audit writer's thread, which costs more than moving the
/// larger event through the queue.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum Detail {
    Json(serde_json::Value),
    Access(AccessDetail),
}

impl Default for Detail {
    fn default() -> Self {
        Detail::Json(serde_json::Value::Object(Default::default()))
    }
}

impl From<serde_json::Value> for Detail {
    fn from(v: serde_json::Value) -> Self {
        Detail::Json(v)
    }
}

impl Detail {
    /// Sets `reason` (why a request was refused or failed).
    pub fn set_reason(&mut self, reason: &str) {
        match self {
            Detail::Access(a) => a.reason = Some(reason.to_owned()),
            Detail::Json(v) => json_insert(v, "reason", reason),
        }
    }

    /// Notes the API token a request was made with.
    pub fn set_token_id(&mut self, id: &Arc<str>) {
        match self {
            Detail::Access(a) => a.token_id = Some(id.clone()),
            Detail::Json(v) => json_insert(v, "token_id", id),
        }
    }

    /// Notes the session (its short form) a request was made in.
    pub fn set_session(&mut self, short: &str) {
        match self {
            Detail::Access(a) => a.session = Some(short.to_owned()),
            Detail::Json(v) => json_insert(v, "session", short),
        }
    }

    /// The access detail, when this is an access event.
    pub fn access_mut(&mut self) -> Option<&mut AccessDetail> {
        match self {
            Detail::Access(a) => Some(a),
            Detail::Json(_) => None,
        }
    }

    /// The JSON object of a non-access event.
    pub fn as_object_mut(&mut self) -> Option<&mut serde_json::Map<String, serde_json::Value>> {
        match self {
            Detail::Json(v) => v.as_object_mut(),
            Detail::Access(_) => None,
        }
    }
}

fn json_insert(v: &mut serde_json::Value, key: &str, value: &str) {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.into(), value.into());
    }
}

/// The detail of an access decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessDetail {
    /// Standard methods are static names; see [`method_name`].
    pub method: Cow<'static, str>,
    pub path: smol_str::SmolStr,
    /// Serialized as text ("192.0.2.1"), like every address in the audit log.
    pub client_ip: std::net::IpAddr,
    pub twin: Arc<str>,
    pub purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditEvent {
    pub fn new(kind: &'static str, outcome: &'static str, at: Timestamp) -> Self {
        Self::with_id(new_id(at), kind, outcome, at)
    }

    /// An event whose id is already known (a decision id the client was given).
    pub fn with_id(
        event_id: EventId,
        kind: &'static str,
        outcome: &'static str,
        at: Timestamp,
    ) -> Self {
        AuditEvent {
            event_id,
            at_ms: i64::try_from(at.since_epoch().as_millis()).unwrap_or(i64::MAX),
            kind,
            outcome,
            actor: None,
            actor_pseudonym: None,
            route: None,
            action: None,
            policies: Default::default(),
            detail: Detail::default(),
        }
    }
}

thread_local! {
    /// One UUIDv7 context per thread: `Uuid::now_v7` shares one behind a process-wide mutex,
    /// which every request took. Ids stay unique across threads by their random bits (a
    /// counter seeded at random each millisecond, then 32 random bits).
    static ID_CONTEXT: uuid::ContextV7 = const { uuid::ContextV7::new() };
}

/// A time-ordered unique id (UUIDv7) for an event at `at`, used for decision ids. Its time
/// is the event's own, read from the gateway's clock like every other time: an admin
/// matching a decision id to its event finds the same millisecond in both, and the request
/// path reads the clock once for the two. Ids made at one timestamp stay ordered (within a
/// thread) and unique by the context's counter; after the clock steps back, a thread's ids
/// keep the latest time it saw until the clock passes it again, so they never go backwards.
pub fn new_id(at: Timestamp) -> EventId {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let since = at.since_epoch();
    ID_CONTEXT
        .with(|context| {
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                context,
                since.as_secs(),
                since.subsec_nanos(),
            ))
        })
        .hyphenated()
        .encode_lower(&mut text);
    EventId(text)
}

/// An event id (a decision id for access events) in its hyphenated text form, held inline:
/// one is made for every request and goes to the audit event, the client's refusal and the
/// log, and a heap string for it would be allocated on a worker and freed on the audit
/// writer's thread, which costs more than copying 36 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId([u8; uuid::fmt::Hyphenated::LENGTH]);

impl EventId {
    pub fn as_str(&self) -> &str {
        // Only `new_id` makes one, from the ASCII `encode_lower` writes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for EventId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An event as stored: its text (the JSON the chain hashed, as it was hashed) and its place
/// in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub text: String,
    pub prev_hash: String,
    pub hash: String,
}

/// A stored event whose text is not an event: it was written by hand.
#[derive(Debug, thiserror::Error)]
#[error(
    "audit event {seq}: the stored text is not an event ({source}); run `twinward audit verify`"
)]
pub struct UnreadableEvent {
    pub seq: i64,
    source: serde_json::Error,
}

impl StoredEvent {
    pub fn event(&self) -> Result<OwnedEvent, UnreadableEvent> {
        serde_json::from_str(&self.text).map_err(|source| UnreadableEvent {
            seq: self.seq,
            source,
        })
    }

    /// The event as `twinward audit export` prints it: one JSON object with its seq, its
    /// fields, `prev_hash` and `hash`.
    pub fn export_line(&self) -> Result<String, UnreadableEvent> {
        #[derive(Serialize)]
        struct Line<'a> {
            seq: i64,
            #[serde(flatten)]
            event: OwnedEvent,
            prev_hash: &'a str,
            hash: &'a str,
        }
        let line = Line {
            seq: self.seq,
            event: self.event()?,
            prev_hash: &self.prev_hash,
            hash: &self.hash,
        };
        serde_json::to_string(&line).map_err(|source| UnreadableEvent {
            seq: self.seq,
            source,
        })
    }
}

/// [`AuditEvent`] as read back (kinds and outcomes as owned strings).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct OwnedEvent {
    pub event_id: String,
    pub at_ms: i64,
    pub kind: String,
    pub outcome: String,
    pub actor: Option<String>,
    pub actor_pseudonym: Option<String>,
    pub route: Option<String>,
    pub action: Option<String>,
    pub policies: Vec<String>,
    pub detail: serde_json::Value,
}

impl From<&AuditEvent> for OwnedEvent {
    fn from(e: &AuditEvent) -> Self {
        OwnedEvent {
            event_id: e.event_id.to_string(),
            at_ms: e.at_ms,
            kind: e.kind.to_owned(),
            outcome: e.outcome.to_owned(),
            actor: e.actor.as_deref().map(str::to_owned),
            actor_pseudonym: e.actor_pseudonym.as_deref().map(str::to_owned),
            route: e.route.as_deref().map(str::to_owned),
            action: e.action.map(str::to_owned),
            policies: e.policies.to_vec(),
            detail: serde_json::to_value(&e.detail).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::chain::hash_event;
    use super::*;

    /// An access detail with text that needs escaping and an IPv6 address.
    pub(crate) fn sample_detail(reason: Option<&str>) -> AccessDetail {
        AccessDetail {
            method: "GET".into(),
            path: "/plant-7/\"q\"".into(),
            client_ip: "2001:db8::1".parse().unwrap(),
            twin: "plant-7".into(),
            purpose: None,
            token_id: Some("tok".into()),
            session: None,
            errors: vec!["e".into()],
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn ids_are_unique_across_threads_and_ordered_within_one() {
        // One timestamp for all: a fixed clock (or a burst within one millisecond) must not
        // make two ids alike.
        let at = Timestamp::from_unix_millis(1_795_000_000_123);
        let per_thread: Vec<Vec<EventId>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(move || (0..20_000).map(|_| new_id(at)).collect::<Vec<_>>()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut all = std::collections::HashSet::new();
        for ids in &per_thread {
            assert!(
                ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
                "ids of one thread out of order"
            );
            for id in ids {
                let parsed = uuid::Uuid::parse_str(id).unwrap();
                assert_eq!(parsed.get_version_num(), 7);
                assert!(all.insert(*id), "duplicate id {id}");
            }
        }
    }

    #[test]
    fn a_decision_id_carries_its_events_time() {
        let at = Timestamp::from_unix_millis(1_795_000_000_123);
        // A thread of its own: the id context is per thread, and one that has seen a later
        // time keeps its ids after that time.
        let id = std::thread::spawn(move || AuditEvent::new("access", "allow", at).event_id)
            .join()
            .unwrap();
        let (secs, nanos) = uuid::Uuid::parse_str(id.as_str())
            .unwrap()
            .get_timestamp()
            .unwrap()
            .to_unix();
        assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), at.unix_millis());
    }

    #[test]
    fn an_event_hashes_like_its_stored_form() {
        let mut e = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(1_000));
        e.actor = Some("ci \"runner\"".into());
        e.route = Some("plant-7".into());
        e.policies = vec!["b".into(), "a".into()].into();
        e.detail =
            serde_json::json!({ "z": 1, "a": { "y": [1, "ü"], "b": null }, "m": "x\ny" }).into();
        let owned = OwnedEvent::from(&e);
        assert_eq!(hash_event("prev", 7, &e), hash_event("prev", 7, &owned));
        assert_eq!(Detail::from(owned.detail.clone()), e.detail);
    }

    #[test]
    fn an_export_line_is_the_event_with_its_place_and_a_hand_written_text_is_named() {
        let mut e = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(1_000));
        e.route = Some("plant-7".into());
        e.detail = Detail::Access(sample_detail(None));
        let stored = StoredEvent {
            seq: 7,
            text: serde_json::to_string(&e).unwrap(),
            prev_hash: GENESIS.into(),
            hash: "ab".repeat(32),
        };
        let line: serde_json::Value = serde_json::from_str(&stored.export_line().unwrap()).unwrap();
        assert_eq!(line["seq"], 7);
        assert_eq!(line["route"], "plant-7");
        assert_eq!(line["detail"]["path"], "/plant-7/\"q\"");
        assert_eq!(line["prev_hash"], GENESIS);
        assert_eq!(line["hash"], "ab".repeat(32));
        for bad in ["{oops", "[]", r#"{"seq":1}"#] {
            let broken = StoredEvent {
                text: bad.into(),
                ..stored.clone()
            };
            let err = broken.export_line().unwrap_err().to_string();
            assert!(err.contains("audit event 7"), "{err}");
        }
    }

    #[test]
    fn a_typed_access_detail_reads_back_as_its_json() {
        let mut e = AuditEvent::new("access", "deny", Timestamp::from_unix_secs(1_000));
        e.detail = Detail::Access(sample_detail(None));
        e.detail.set_reason("denied by policy");
        let read_back = OwnedEvent::from(&e).detail;
        assert_eq!(read_back["client_ip"], "2001:db8::1");
        assert_eq!(read_back["purpose"], serde_json::Value::Null);
        assert_eq!(read_back["reason"], "denied by policy");
        assert!(read_back.get("session").is_none());
        assert_eq!(
            hash_event("prev", 3, &e),
            hash_event("prev", 3, &OwnedEvent::from(&e))
        );
    }
}
