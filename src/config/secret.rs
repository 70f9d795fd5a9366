//! Secret references. Secrets never sit inline in committed config: a key names a file
//! (`*_file`) or an environment variable (`*_env`) that holds the value.

use std::fmt;
use std::path::PathBuf;

/// Where a secret comes from. Its value is read when needed and never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    File(PathBuf),
    Env(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::File(p) => write!(f, "file {}", p.display()),
            SecretRef::Env(v) => write!(f, "env ${v}"),
        }
    }
}

/// A secret's bytes. `Debug` never shows them.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Missing, unreadable, or readable by others: see [`crate::private_file::read_configured`].
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: String,
        source: crate::private_file::PrivateFileError,
    },
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Reads the secret, trimming trailing newlines (files written by `echo` have one). A
    /// file is read only if nobody else can read it, as for the gateway's own keys.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let mut bytes = match self {
            SecretRef::File(p) => {
                crate::private_file::read_configured(p).map_err(|source| SecretError::File {
                    path: p.display().to_string(),
                    source,
                })?
            }
            SecretRef::Env(v) => std::env::var(v)
                .map_err(|_| SecretError::EnvMissing(v.clone()))?
                .into_bytes(),
        };
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(SecretError::Empty(format!("{self:?}")));
        }
        Ok(Secret(bytes))
    }
}
