//! The JWKS document twins verify credentials with: the current key and every key still in
//! its rotation overlap.

use super::keys::KeyRing;

pub fn document(ring: &KeyRing) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = ring
        .published
        .iter()
        .map(|k| {
            let mut jwk = k.public_jwk.clone();
            jwk.insert("kid".into(), k.kid.clone().into());
            jwk.insert("alg".into(), k.alg.jose_name().into());
            jwk.insert("use".into(), "sig".into());
            serde_json::Value::Object(jwk)
        })
        .collect();
    serde_json::json!({ "keys": keys })
}
