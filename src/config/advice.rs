//! What a valid config does that its admin should still hear about. None of it stops the
//! gateway (the spec's own example serves a twin on the auth host); `twinward check` prints
//! it under the result and `twinward serve` logs it once at start.

use super::{canonical_host, Config, Problem};

/// Warnings about `cfg`, in the order of the file, each with the line it is about.
pub fn warnings(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(auth) = auth_host(cfg) {
        for r in &cfg.routes {
            let served_there = match &r.host {
                None => {
                    format!("has no host, so it is served on every host, the auth host {auth} too")
                }
                Some(h) if *h == auth => format!("is served on the auth host {auth}"),
                Some(_) => continue,
            };
            out.push(Problem {
                file: cfg.file.clone(),
                position: Some((r.line, 1)),
                message: format!(
                    "route {:?} {served_there}, where browsers sign in: a page of that twin shares \
                     an origin with the gateway's own pages, so a script in it could read them and \
                     act with the user's session; give the route a host of its own (host = \"…\")",
                    r.name
                ),
            });
        }
    }
    out
}

/// The host of `server.public_url` when browsers sign in there; without `[oidc]` there is
/// no session for a twin's page to act with.
fn auth_host(cfg: &Config) -> Option<String> {
    let signin = cfg.signin.as_ref()?;
    canonical_host(signin.public_url.host_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const SIGNIN: &str = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "https://Twins.Example.com"

[oidc]
issuer = "https://idp.example.com"
client_id = "twinward"
client_secret_file = "secret"
roles = { "twin-operators" = "twin-operator" }

[[routes]]
name = "own-host"
host = "plant-7.twins.example.com"
upstream = "http://10.0.0.7:8080"
twin = "plant-7"

[[routes]]
name = "auth-host"
host = "twins.example.com."
path_prefix = "/plant-8"
upstream = "http://10.0.0.8:8080"
twin = "plant-8"

[[routes]]
name = "any-host"
path_prefix = "/plant-9"
upstream = "http://10.0.0.9:8080"
twin = "plant-9"
"#;

    fn warnings_of(text: &str) -> Vec<Problem> {
        let cfg = parse(text, "twinward.toml", std::path::Path::new("/")).unwrap();
        warnings(&cfg)
    }

    #[test]
    fn a_route_on_the_auth_host_or_on_every_host_is_named_with_its_line() {
        let w = warnings_of(SIGNIN);
        let named: Vec<_> = w.iter().map(|p| (p.position, &p.message)).collect();
        assert_eq!(w.len(), 2, "{named:?}");
        assert_eq!(w[0].position, Some((18, 1)));
        assert!(w[0]
            .message
            .contains("\"auth-host\" is served on the auth host twins.example.com"));
        assert_eq!(w[1].position, Some((25, 1)));
        assert!(w[1].message.contains("\"any-host\" has no host"));
        assert!(w.iter().all(|p| p.message.contains("host of its own")));
    }

    #[test]
    fn without_browser_sign_in_nothing_is_said() {
        // The same routes with the [oidc] table cut out.
        let (head, rest) = SIGNIN.split_once("[oidc]").unwrap();
        let api_only = format!("{head}{}", &rest[rest.find("[[routes]]").unwrap()..]);
        assert!(!api_only.contains("[oidc]"));
        assert_eq!(warnings_of(&api_only), []);
    }
}
