//! Signing keys on disk: one PKCS#8 file per key in the keys directory, named
//! `<created unix milliseconds>-<kid>.<alg>.p8`. A new key is published in the JWKS at once
//! but signs only after `activation_delay`, so twins that cache the JWKS learn it before they
//! meet it. The newest active key signs; an older key stays published for `rotation_overlap`
//! after its successor started signing, so credentials it signed verify until they expire.
//!
//! INVARIANT: key files are mode 0600 and the gateway refuses to start when a key file can
//! be read by group or others.

use crate::clock::Timestamp;
use crate::config::SigningAlgorithm;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("keys directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A key file or the keys directory that others can read or write.
    #[error("{path} {source}")]
    Private {
        path: String,
        source: crate::private_file::PrivateFileError,
    },
    #[error("key file {path} is not a valid {alg} PKCS#8 key")]
    BadKey { path: String, alg: &'static str },
    #[error("key generation failed")]
    Generate,
    #[error("signing failed")]
    Sign,
}

enum Signer {
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

/// One signing key with its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: SigningAlgorithm,
    pub created: Timestamp,
    pub path: PathBuf,
    signer: Signer,
    rng: SystemRandom,
    /// The public key as a JWK object (without `kid`, `alg`, `use`).
    pub public_jwk: serde_json::Map<String, serde_json::Value>,
    /// `base64url(header)` for this key, computed once.
    pub header_b64: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl SigningKey {
    fn from_pkcs8(
        alg: SigningAlgorithm,
        der: &[u8],
        created: Timestamp,
        path: PathBuf,
    ) -> Result<Self, KeyStoreError> {
        let bad = || KeyStoreError::BadKey {
            path: path.display().to_string(),
            alg: alg.jose_name(),
        };
        let (signer, jwk) = match alg {
            SigningAlgorithm::EdDsa => {
                let kp = Ed25519KeyPair::from_pkcs8(der).map_err(|_| bad())?;
                let x = B64.encode(kp.public_key().as_ref());
                let jwk = serde_json::json!({"crv": "Ed25519", "kty": "OKP", "x": x});
                (Signer::Ed25519(kp), jwk)
            }
            SigningAlgorithm::Es256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|_| bad())?;
                let pk = kp.public_key().as_ref();
                // Uncompressed point: 0x04 || x (32) || y (32).
                let (x, y) = match (pk.get(1..33), pk.get(33..65)) {
                    (Some(x), Some(y)) if pk.len() == 65 => (B64.encode(x), B64.encode(y)),
                    _ => return Err(bad()),
                };
                let jwk = serde_json::json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
                (Signer::Es256(kp), jwk)
            }
        };
        let public_jwk = match jwk {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let kid = thumbprint(&public_jwk);
        let header = serde_json::json!({"alg": alg.jose_name(), "kid": kid, "typ": "JWT"});
        let header_b64 = B64.encode(header.to_string());
        Ok(SigningKey {
            kid,
            alg,
            created,
            path,
            signer,
            rng: SystemRandom::new(),
            public_jwk,
            header_b64,
        })
    }

    /// Signs `header.payload` and returns the base64url signature.
    pub fn sign(&self, signing_input: &[u8]) -> Result<String, KeyStoreError> {
        match &self.signer {
            Signer::Ed25519(kp) => Ok(B64.encode(kp.sign(signing_input).as_ref())),
            Signer::Es256(kp) => kp
                .sign(&self.rng, signing_input)
                .map(|s| B64.encode(s.as_ref()))
                .map_err(|_| KeyStoreError::Sign),
        }
    }
}

/// RFC 7638 JWK thumbprint: SHA-256 over the required members in lexicographic order.
fn thumbprint(jwk: &serde_json::Map<String, serde_json::Value>) -> String {
    // serde_json's map is ordered by key, and the members are exactly the required ones.
    let canonical = serde_json::Value::Object(jwk.clone()).to_string();
    B64.encode(crate::digest::sha256(canonical.as_bytes()))
}

/// The keys of one directory at one moment: the current signer and the ones still published.
#[derive(Debug)]
pub struct KeyRing {
    pub current: Arc<SigningKey>,
    /// Every key still published, newest first (the current one included).
    pub published: Vec<Arc<SigningKey>>,
    /// Keys past their overlap, listed for `keys list` but no longer published.
    pub expired: Vec<Arc<SigningKey>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn private(
    path: &Path,
) -> impl FnOnce(crate::private_file::PrivateFileError) -> KeyStoreError + '_ {
    move |source| KeyStoreError::Private {
        path: path.display().to_string(),
        source,
    }
}

/// Creates the keys directory (0700) if needed, and checks that nobody else can write it.
pub fn ensure_dir(dir: &Path) -> Result<u32, KeyStoreError> {
    crate::private_file::create_dir(dir).map_err(private(dir))
}

/// Generates a key of `alg` and writes it (0600). Returns its path.
pub fn generate(
    dir: &Path,
    alg: SigningAlgorithm,
    now: Timestamp,
) -> Result<PathBuf, KeyStoreError> {
    ensure_dir(dir)?;
    let rng = SystemRandom::new();
    let doc = match alg {
        SigningAlgorithm::EdDsa => {
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyStoreError::Generate)?
        }
        SigningAlgorithm::Es256 => {
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyStoreError::Generate)?
        }
    };
    let der = doc.as_ref();
    // Creation times order the keys, so they must be strictly increasing even when two
    // rotations fall in the same millisecond.
    let newest = read_keys(dir)?.iter().map(|k| k.created).max();
    let created = match newest {
        Some(n) if n >= now => n.saturating_add(Duration::from_millis(1)),
        _ => now,
    };
    let probe = SigningKey::from_pkcs8(alg, der, created, PathBuf::new())?;
    let name = format!(
        "{}-{}.{}.p8",
        created.unix_millis(),
        probe.kid,
        alg.jose_name()
    );
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(der).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    // Rename is atomic: a replica reading the directory never sees half a key.
    fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(path)
}

/// When keys sign and how long they stay published.
#[derive(Debug, Clone, Copy)]
pub struct KeyTiming {
    /// How long a new key is published before it signs.
    pub activation_delay: Duration,
    /// How long a replaced key stays published after its successor started signing.
    pub overlap: Duration,
}

/// Reads every key in `dir`. With `create_if_empty`, an empty directory gets its first key
/// (which signs at once: there is nothing to be published before).
pub fn load(
    dir: &Path,
    alg: SigningAlgorithm,
    timing: KeyTiming,
    now: Timestamp,
    create_if_empty: bool,
) -> Result<KeyRing, KeyStoreError> {
    if create_if_empty {
        ensure_dir(dir)?;
    }
    let mut keys = read_keys(dir)?;
    if keys.is_empty() && create_if_empty {
        generate(dir, alg, now)?;
        keys = read_keys(dir)?;
    }
    // Newest first.
    keys.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.kid.cmp(&a.kid)));
    let active_at = |k: &SigningKey| k.created.saturating_add(timing.activation_delay);
    let current_index = keys
        .iter()
        .position(|k| active_at(k) <= now)
        .unwrap_or(keys.len().saturating_sub(1));
    let Some(current) = keys.get(current_index).cloned() else {
        return Err(KeyStoreError::Io {
            path: dir.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no signing keys (run `twinward keys rotate`)",
            ),
        });
    };
    let mut published = Vec::new();
    let mut expired = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if i <= current_index {
            // Pending keys and the current one.
            published.push(k.clone());
            continue;
        }
        // Replaced when its successor started signing; published for `overlap` after that.
        let successor = keys.get(i - 1).map_or(now, |s| active_at(s));
        if now.saturating_since(successor) < timing.overlap {
            published.push(k.clone());
        } else {
            expired.push(k.clone());
        }
    }
    Ok(KeyRing {
        current,
        published,
        expired,
    })
}

fn read_keys(dir: &Path) -> Result<Vec<Arc<SigningKey>>, KeyStoreError> {
    // Whoever can add a file here can add a signing key.
    let owner = crate::private_file::check_dir(dir).map_err(private(dir))?;
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".p8") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let (created, rest) = stem.split_once('-').unwrap_or(("0", stem));
        let alg = if rest.ends_with(".EdDSA") {
            SigningAlgorithm::EdDsa
        } else if rest.ends_with(".ES256") {
            SigningAlgorithm::Es256
        } else {
            return Err(KeyStoreError::BadKey {
                path: path.display().to_string(),
                alg: "EdDSA or ES256",
            });
        };
        let der = crate::private_file::read_key(&path, Some(owner)).map_err(private(&path))?;
        let created = Timestamp::from_unix_millis(created.parse().unwrap_or(0));
        out.push(Arc::new(SigningKey::from_pkcs8(alg, &der, created, path)?));
    }
    Ok(out)
}

/// Fingerprint of the key files, for the watcher.
pub fn fingerprint(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".p8") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::private_file::PrivateFileError;
    use std::os::unix::fs::PermissionsExt;

    const T: KeyTiming = KeyTiming {
        activation_delay: Duration::from_secs(120),
        overlap: Duration::from_secs(3600),
    };

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn rotation_publishes_first_then_signs_then_retires_after_the_overlap() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        let t0 = Timestamp::from_unix_secs(1_000_000);
        let ring = load(&dir, SigningAlgorithm::EdDsa, T, t0, true).unwrap();
        assert_eq!(ring.published.len(), 1);
        let first = ring.current.kid.clone();
        assert_eq!(mode(&ring.current.path), 0o600);

        let t1 = t0.saturating_add(Duration::from_secs(60));
        generate(&dir, SigningAlgorithm::EdDsa, t1).unwrap();
        // Published at once, but the old key signs until the activation delay has passed.
        let ring = load(&dir, SigningAlgorithm::EdDsa, T, t1, false).unwrap();
        assert_eq!(ring.current.kid, first);
        assert_eq!(ring.published.len(), 2);
        let ring = load(
            &dir,
            SigningAlgorithm::EdDsa,
            T,
            t1.saturating_add(Duration::from_secs(120)),
            false,
        )
        .unwrap();
        assert_ne!(ring.current.kid, first);
        assert_eq!(
            ring.published.len(),
            2,
            "previous key stays published during the overlap"
        );

        let later = t1.saturating_add(Duration::from_secs(120 + 3600));
        let ring = load(&dir, SigningAlgorithm::EdDsa, T, later, false).unwrap();
        assert_eq!(ring.published.len(), 1);
        assert_eq!(ring.expired.len(), 1);
    }

    #[test]
    fn rotations_in_the_same_millisecond_keep_their_order() {
        let d = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_unix_secs(1_000_000);
        let now = KeyTiming {
            activation_delay: Duration::ZERO,
            overlap: Duration::from_secs(60),
        };
        let mut newest = String::new();
        for _ in 0..5 {
            generate(d.path(), SigningAlgorithm::EdDsa, t0).unwrap();
            let ring = load(
                d.path(),
                SigningAlgorithm::EdDsa,
                now,
                t0.saturating_add(Duration::from_secs(1)),
                false,
            )
            .unwrap();
            assert_ne!(ring.current.kid, newest, "the newest key must sign");
            newest = ring.current.kid.clone();
        }
    }

    #[test]
    fn refuses_group_readable_keys() {
        let d = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_unix_secs(1_000_000);
        let p = generate(d.path(), SigningAlgorithm::Es256, t0).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let err = load(d.path(), SigningAlgorithm::Es256, T, t0, false).unwrap_err();
        assert!(
            matches!(
                err,
                KeyStoreError::Private {
                    source: PrivateFileError::Readable { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_keys_directory_others_can_write() {
        // Anyone who can add a file there could add the newest signing key.
        let d = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_unix_secs(1_000_000);
        generate(d.path(), SigningAlgorithm::EdDsa, t0).unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o775)).unwrap();
        let err = load(d.path(), SigningAlgorithm::EdDsa, T, t0, false).unwrap_err();
        assert!(
            matches!(
                err,
                KeyStoreError::Private {
                    source: PrivateFileError::Writable { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_key_that_is_a_link() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let t0 = Timestamp::from_unix_secs(1_000_000);
        let p = generate(other.path(), SigningAlgorithm::EdDsa, t0).unwrap();
        std::os::unix::fs::symlink(&p, d.path().join(p.file_name().unwrap())).unwrap();
        let err = load(d.path(), SigningAlgorithm::EdDsa, T, t0, false).unwrap_err();
        assert!(
            matches!(
                err,
                KeyStoreError::Private {
                    source: PrivateFileError::Symlink,
                    ..
                }
            ),
            "{err}"
        );
    }
}
