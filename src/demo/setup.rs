//! Lays out a demo installation: the shipped policies, a client secret for the demo
//! provider and a `twinward.toml` wiring the gateway, the demo provider and the demo twin
//! together on loopback. Everything else `twinward demo` runs is the real gateway.

use super::DemoError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The shipped example policy set, embedded so the demo runs from any directory.
const SHIPPED_POLICIES: &[(&str, &str)] = &[
    (
        "schema.cedarschema",
        include_str!("../../policies/schema.cedarschema"),
    ),
    (
        "entities.json",
        include_str!("../../policies/entities.json"),
    ),
    (
        "viewers.cedar",
        include_str!("../../policies/viewers.cedar"),
    ),
    (
        "operators.cedar",
        include_str!("../../policies/operators.cedar"),
    ),
    (
        "contractors.cedar",
        include_str!("../../policies/contractors.cedar"),
    ),
    (
        "service-accounts.cedar",
        include_str!("../../policies/service-accounts.cedar"),
    ),
];

/// The loopback ports of the three demo servers.
#[derive(Debug, Clone, Copy)]
pub struct DemoPorts {
    pub gateway: u16,
    pub idp: u16,
    pub twin: u16,
    pub admin: u16,
}

impl DemoPorts {
    pub fn from_base(base: u16) -> Self {
        DemoPorts {
            gateway: base,
            idp: base.saturating_add(1),
            twin: base.saturating_add(2),
            admin: base.saturating_add(9),
        }
    }
}

pub const DEMO_CLIENT_ID: &str = "twinward-demo";

/// Writes the demo's files under `dir` and returns the config path and the client secret.
pub fn prepare(dir: &Path, ports: DemoPorts) -> Result<(PathBuf, String), DemoError> {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies)?;
    for (name, text) in SHIPPED_POLICIES {
        std::fs::write(policies.join(name), text)?;
    }
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let secret = hex::encode(secret);
    let secret_path = dir.join("oidc-client-secret");
    let _ = std::fs::remove_file(&secret_path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)?
        .write_all(secret.as_bytes())?;
    let config = format!(
        r#"# Written by `twinward demo`: the gateway, a demo identity provider and a demo twin,
# all on this computer only. Rewritten on every start.

[server]
listen = "127.0.0.1:{gw}"
admin_listen = "127.0.0.1:{admin}"
public_url = "http://localhost:{gw}"
workers = 1

[oidc]
issuer = "http://localhost:{idp}"
client_id = "{client}"
client_secret_file = "oidc-client-secret"
scopes = ["openid", "email", "profile", "groups"]
roles_claim = "groups"
roles = {{ "twin-operators" = "twin-operator", "twin-viewers" = "twin-viewer", "contractors" = "contractor" }}
display_name = "the demo identity provider"

[webauthn]
rp_name = "twinward demo"
required = true

[session]
idle_timeout = "30m"
max_lifetime = "8h"
mfa_max_age = "5m"

[storage]
url = "sqlite://twinward.db"

[credentials]
keys_dir = "keys"
activation_delay = "0s"

[policy]
dir = "policies"

[[routes]]
name = "plant-7-telemetry"
path_prefix = "/plant-7"
upstream = "http://127.0.0.1:{twin}"
twin = "plant-7"

[[routes]]
name = "plant-9-telemetry"
path_prefix = "/plant-9"
upstream = "http://127.0.0.1:{twin}"
twin = "plant-9"
"#,
        gw = ports.gateway,
        admin = ports.admin,
        idp = ports.idp,
        twin = ports.twin,
        client = DEMO_CLIENT_ID,
    );
    let path = dir.join("twinward.toml");
    std::fs::write(&path, config)?;
    Ok((path, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid_and_uses_the_shipped_policies() {
        let d = tempfile::tempdir().unwrap();
        let (path, secret) = prepare(d.path(), DemoPorts::from_base(18400)).unwrap();
        assert_eq!(secret.len(), 64);
        let cfg = crate::config::load(&path).unwrap();
        let signin = cfg.signin.as_ref().unwrap();
        assert_eq!(signin.cookie_name, "twinward");
        assert_eq!(signin.webauthn.rp_id, "localhost");
        assert!(signin.webauthn.required);
        assert_eq!(cfg.routes.len(), 2);
        // Prepared twice (a second start), it still works and rotates the secret.
        let (_, again) = prepare(d.path(), DemoPorts::from_base(18400)).unwrap();
        assert_ne!(secret, again);
        crate::policy::Engine::load(
            &cfg.policy.dir,
            crate::policy::engine::TwinSpec::from_routes(&cfg.routes, &cfg.file),
        )
        .unwrap();
    }
}
