//! Passkeys (WebAuthn, via webauthn-rs) as the second factor. Ceremony state lives
//! server-side in the session store: single use, bound to the session that started it, and
//! gone after five minutes. User verification is always required (webauthn-rs passkeys).
//! A passkey whose signature counter goes backwards (a copy of its key is in use) is locked.

use crate::clock::Timestamp;
use crate::config::signin::WebauthnConfig;
use crate::session::{put_json, random_token, take_json, Session, SessionKey, SessionStore};
use crate::storage::{PasskeyRecord, StorageError, Store, UserRecord};
use base64::Engine as _;
use std::sync::Arc;
use std::time::Duration;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Webauthn, WebauthnBuilder, WebauthnError,
};

/// How long a started ceremony may take.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);

/// The stored signature counter of a passkey whose counter once went backwards: a copy of
/// its private key may exist, so neither copy may sign in with it again (an administrator
/// removes it, or the user does with another passkey). No authenticator counts this high,
/// so the value cannot be reached by use.
pub const LOCKED_SIGN_COUNT: u32 = u32::MAX;

const CEREMONY_KIND: &str = "webauthn";

#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error("this passkey request has expired or was already used; start again")]
    NoCeremony,
    #[error("the passkey response was not accepted: {0}")]
    Rejected(String),
    #[error("this kind of authenticator ({0}) is not allowed here")]
    UntrustedAuthenticator(uuid::Uuid),
    #[error("the passkey's signature counter went backwards; it may have been cloned")]
    CounterRegression { passkey_id: String },
    #[error("this passkey is locked because it may have been cloned; ask your administrator to reset it")]
    Locked { passkey_id: String },
    #[error("you have no passkey yet")]
    NoPasskeys,
    #[error("your passkeys are locked because one may have been cloned; ask your administrator to reset them")]
    AllLocked,
    #[error("the response names a passkey that is not yours")]
    UnknownPasskey,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("session store: {0}")]
    Sessions(#[from] crate::session::SessionStoreError),
    #[error("webauthn setup: {0}")]
    Setup(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Kind {
    Register,
    Authenticate,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Ceremony {
    kind: Kind,
    session: SessionKey,
    user: String,
    name: String,
    return_to: String,
    state: serde_json::Value,
}

/// What a finished authentication changed, for the audit log.
#[derive(Debug, Default)]
pub struct AuthNotes {
    pub backup_state_changed: Option<(bool, bool)>,
}

pub struct Passkeys {
    webauthn: Webauthn,
    cfg: WebauthnConfig,
    store: Arc<dyn Store>,
    sessions: Arc<dyn SessionStore>,
}

impl Passkeys {
    pub fn new(
        cfg: &WebauthnConfig,
        store: Arc<dyn Store>,
        sessions: Arc<dyn SessionStore>,
    ) -> Result<Self, MfaError> {
        let first = cfg
            .origins
            .first()
            .ok_or_else(|| MfaError::Setup("no webauthn origin".into()))?;
        let mut b = WebauthnBuilder::new(&cfg.rp_id, first)
            .map_err(|e| MfaError::Setup(e.to_string()))?
            .rp_name(&cfg.rp_name);
        for o in cfg.origins.iter().skip(1) {
            b = b.append_allowed_origin(o);
        }
        Ok(Passkeys {
            webauthn: b.build().map_err(|e| MfaError::Setup(e.to_string()))?,
            cfg: cfg.clone(),
            store,
            sessions,
        })
    }

    pub async fn passkeys_of(&self, subject: &str) -> Result<Vec<PasskeyRecord>, MfaError> {
        Ok(self.store.passkeys_of(subject).await?)
    }

    async fn save(&self, c: &Ceremony, now: Timestamp) -> Result<String, MfaError> {
        let id = random_token();
        put_json(
            self.sessions.as_ref(),
            CEREMONY_KIND,
            &id,
            c,
            now,
            CEREMONY_TTL,
        )
        .await?;
        Ok(id)
    }

    /// Takes the ceremony (single use) and checks it belongs to this session and kind.
    async fn take(
        &self,
        id: &str,
        kind: Kind,
        session: &Session,
        now: Timestamp,
    ) -> Result<Ceremony, MfaError> {
        let c: Ceremony = take_json(self.sessions.as_ref(), CEREMONY_KIND, id, now)
            .await?
            .ok_or(MfaError::NoCeremony)?;
        if c.kind != kind || c.session != session.key || c.user != session.user.subject {
            return Err(MfaError::NoCeremony);
        }
        Ok(c)
    }

    pub async fn start_registration(
        &self,
        session: &Session,
        user: &UserRecord,
        name: &str,
        return_to: &str,
        now: Timestamp,
    ) -> Result<(String, serde_json::Value), MfaError> {
        let existing = self.store.passkeys_of(&user.subject).await?;
        let exclude = existing
            .iter()
            .filter_map(|p| serde_json::from_str::<Passkey>(&p.passkey).ok())
            .map(|p| p.cred_id().clone())
            .collect::<Vec<_>>();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user.webauthn_id, &user.email, &user.name, Some(exclude))
            .map_err(|e| MfaError::Rejected(e.to_string()))?;
        let c = Ceremony {
            kind: Kind::Register,
            session: session.key.clone(),
            user: user.subject.clone(),
            name: clean_name(name),
            return_to: return_to.to_owned(),
            state: serde_json::to_value(&state).map_err(|e| MfaError::Setup(e.to_string()))?,
        };
        let id = self.save(&c, now).await?;
        Ok((
            id,
            serde_json::to_value(options).map_err(|e| MfaError::Setup(e.to_string()))?,
        ))
    }

    pub async fn finish_registration(
        &self,
        session: &Session,
        ceremony: &str,
        credential: &serde_json::Value,
        now: Timestamp,
    ) -> Result<(PasskeyRecord, String), MfaError> {
        let c = self.take(ceremony, Kind::Register, session, now).await?;
        let state: PasskeyRegistration =
            serde_json::from_value(c.state).map_err(|_| MfaError::NoCeremony)?;
        let reg: RegisterPublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|e| MfaError::Rejected(format!("malformed credential: {e}")))?;
        let aaguid = aaguid_of(credential)
            .ok_or_else(|| MfaError::Rejected("no authenticator data in the attestation".into()))?;
        if !self.cfg.trusted_aaguids.is_empty() && !self.cfg.trusted_aaguids.contains(&aaguid) {
            return Err(MfaError::UntrustedAuthenticator(aaguid));
        }
        let passkey = self
            .webauthn
            .finish_passkey_registration(&reg, &state)
            .map_err(|e| MfaError::Rejected(e.to_string()))?;
        let flags = flags_of(credential).unwrap_or_default();
        let record = PasskeyRecord {
            id: uuid::Uuid::now_v7().to_string(),
            user_subject: c.user.clone(),
            credential_id: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(passkey.cred_id().as_ref()),
            name: c.name,
            aaguid,
            passkey: serde_json::to_string(&passkey).map_err(|e| MfaError::Setup(e.to_string()))?,
            backup_eligible: flags.backup_eligible,
            backup_state: flags.backup_state,
            sign_count: flags.counter,
            created_at: now.unix_secs(),
            last_used_at: Some(now.unix_secs()),
        };
        self.store.insert_passkey(&record).await?;
        Ok((record, c.return_to))
    }

    pub async fn start_authentication(
        &self,
        session: &Session,
        return_to: &str,
        now: Timestamp,
    ) -> Result<(String, serde_json::Value), MfaError> {
        let records = self.store.passkeys_of(&session.user.subject).await?;
        if records.is_empty() {
            return Err(MfaError::NoPasskeys);
        }
        let keys: Vec<Passkey> = records
            .iter()
            .filter(|p| !is_locked(p))
            .filter_map(|p| serde_json::from_str(&p.passkey).ok())
            .collect();
        if keys.is_empty() {
            return Err(MfaError::AllLocked);
        }
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&keys)
            .map_err(|e| MfaError::Rejected(e.to_string()))?;
        let c = Ceremony {
            kind: Kind::Authenticate,
            session: session.key.clone(),
            user: session.user.subject.clone(),
            name: String::new(),
            return_to: return_to.to_owned(),
            state: serde_json::to_value(&state).map_err(|e| MfaError::Setup(e.to_string()))?,
        };
        let id = self.save(&c, now).await?;
        Ok((
            id,
            serde_json::to_value(options).map_err(|e| MfaError::Setup(e.to_string()))?,
        ))
    }

    pub async fn finish_authentication(
        &self,
        session: &Session,
        ceremony: &str,
        credential: &serde_json::Value,
        now: Timestamp,
    ) -> Result<(PasskeyRecord, String, AuthNotes), MfaError> {
        let c = self
            .take(ceremony, Kind::Authenticate, session, now)
            .await?;
        let state: PasskeyAuthentication =
            serde_json::from_value(c.state).map_err(|_| MfaError::NoCeremony)?;
        let cred: PublicKeyCredential = serde_json::from_value(credential.clone())
            .map_err(|e| MfaError::Rejected(format!("malformed credential: {e}")))?;
        let mut records = self.store.passkeys_of(&c.user).await?;
        let presented =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cred.raw_id.as_ref());
        let record = records
            .iter_mut()
            .find(|p| p.credential_id == presented)
            .ok_or(MfaError::UnknownPasskey)?;
        if is_locked(record) {
            return Err(MfaError::Locked {
                passkey_id: record.id.clone(),
            });
        }
        let result = match self.webauthn.finish_passkey_authentication(&cred, &state) {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                // Two copies of the key are in use. Whichever signed last, the other would
                // pass on its next try (its counter moves on too): lock the passkey for both.
                record.sign_count = LOCKED_SIGN_COUNT;
                self.store.update_passkey(record).await?;
                return Err(MfaError::CounterRegression {
                    passkey_id: record.id.clone(),
                });
            }
            Err(e) => return Err(MfaError::Rejected(e.to_string())),
        };
        let mut notes = AuthNotes::default();
        if result.backup_state() != record.backup_state {
            // A passkey that became synced (or stopped being) is still the same key; record
            // the change for the audit trail, as webauthn-rs advises, and keep the new state.
            notes.backup_state_changed = Some((record.backup_state, result.backup_state()));
        }
        let mut passkey: Passkey =
            serde_json::from_str(&record.passkey).map_err(|e| MfaError::Setup(e.to_string()))?;
        passkey.update_credential(&result);
        record.passkey =
            serde_json::to_string(&passkey).map_err(|e| MfaError::Setup(e.to_string()))?;
        record.backup_state = result.backup_state();
        record.sign_count = result.counter().min(LOCKED_SIGN_COUNT - 1);
        record.last_used_at = Some(now.unix_secs());
        self.store.update_passkey(record).await?;
        Ok((record.clone(), c.return_to, notes))
    }
}

/// Whether a passkey was locked after its counter went backwards.
pub fn is_locked(p: &PasskeyRecord) -> bool {
    p.sign_count == LOCKED_SIGN_COUNT
}

fn clean_name(name: &str) -> String {
    let n: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect::<String>()
        .trim()
        .to_owned();
    if n.is_empty() {
        "Passkey".to_owned()
    } else {
        n
    }
}

#[derive(Debug, Default)]
struct AuthDataFlags {
    backup_eligible: bool,
    backup_state: bool,
    counter: u32,
}

/// The authenticator data inside a registration's attestation object (CBOR map, key
/// "authData").
fn auth_data(credential: &serde_json::Value) -> Option<Vec<u8>> {
    let b64 = credential
        .pointer("/response/attestationObject")?
        .as_str()?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()?;
    let value: ciborium::Value = ciborium::from_reader(raw.as_slice()).ok()?;
    let map = value.as_map()?;
    map.iter()
        .find(|(k, _)| k.as_text() == Some("authData"))
        .and_then(|(_, v)| v.as_bytes().cloned())
}

/// The authenticator model (AAGUID) from attested credential data: rpIdHash (32), flags
/// (1), counter (4), then the AAGUID (16) when the AT flag is set.
fn aaguid_of(credential: &serde_json::Value) -> Option<uuid::Uuid> {
    let d = auth_data(credential)?;
    let flags = *d.get(32)?;
    if flags & 0x40 == 0 {
        return None;
    }
    uuid::Uuid::from_slice(d.get(37..53)?).ok()
}

fn flags_of(credential: &serde_json::Value) -> Option<AuthDataFlags> {
    let d = auth_data(credential)?;
    let flags = *d.get(32)?;
    let counter = u32::from_be_bytes(d.get(33..37)?.try_into().ok()?);
    Some(AuthDataFlags {
        backup_eligible: flags & 0x08 != 0,
        backup_state: flags & 0x10 != 0,
        counter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attestation(flags: u8, aaguid: [u8; 16]) -> serde_json::Value {
        let mut auth = vec![0u8; 32];
        auth.push(flags);
        auth.extend_from_slice(&7u32.to_be_bytes());
        auth.extend_from_slice(&aaguid);
        let map = ciborium::Value::Map(vec![
            (
                ciborium::Value::Text("fmt".into()),
                ciborium::Value::Text("none".into()),
            ),
            (
                ciborium::Value::Text("authData".into()),
                ciborium::Value::Bytes(auth),
            ),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&map, &mut out).unwrap();
        serde_json::json!({"response": {"attestationObject": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)}})
    }

    #[test]
    fn reads_aaguid_and_flags_from_attestation() {
        let c = attestation(0x45 | 0x08 | 0x10, [7; 16]);
        assert_eq!(aaguid_of(&c), Some(uuid::Uuid::from_bytes([7; 16])));
        let f = flags_of(&c).unwrap();
        assert!(f.backup_eligible && f.backup_state);
        assert_eq!(f.counter, 7);
        // Without attested credential data there is no AAGUID.
        assert_eq!(aaguid_of(&attestation(0x05, [7; 16])), None);
        assert_eq!(aaguid_of(&serde_json::json!({})), None);
    }

    #[test]
    fn names_are_cleaned() {
        assert_eq!(clean_name("  "), "Passkey");
        assert_eq!(clean_name("Work\u{0}laptop"), "Worklaptop");
        assert_eq!(clean_name(&"x".repeat(100)).len(), 64);
    }
}
