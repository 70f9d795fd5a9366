//! Twin credentials: short-lived JWTs signed by the gateway's own issuer key, never a
//! production key. [`keys`] keeps the signing keys on disk, [`mint`] signs and caches
//! credentials, [`jwks`] publishes the public keys twins verify with.

pub mod jwks;
pub mod keys;
pub mod mint;

pub use keys::{KeyRing, KeyStoreError};
pub use mint::{Credential, CredentialRequest, Minter};
