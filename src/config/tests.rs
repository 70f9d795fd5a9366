use super::*;

fn parse_str(s: &str) -> Result<Config, ConfigError> {
    parse(s, "twinward.toml", Path::new("/etc/twinward"))
}

const ROUTE: &str = r#"
[[routes]]
name = "plant-7"
path_prefix = "/plant-7"
upstream = "http://127.0.0.1:9000"
twin = "plant-7"
attributes = { environment = "twin", site = "plant-7", sensitivity = 2 }
"#;

#[test]
fn small_config_gets_defaults() {
    let c = parse_str(ROUTE).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.credentials.ttl, Duration::from_secs(300));
    assert_eq!(c.storage.url, "sqlite:///etc/twinward/twinward.db");
    assert_eq!(c.policy.dir, PathBuf::from("/etc/twinward/policies"));
    assert_eq!(c.routes[0].path_prefix, "/plant-7");
    assert_eq!(c.routes[0].upstream.authority, "127.0.0.1:9000");
    assert_eq!(c.location.timezone, chrono_tz::UTC);
}

#[test]
fn spec_example_parses() {
    let text = r#"
[server]
listen = "0.0.0.0:8443"
admin_listen = "127.0.0.1:9090"
public_url = "https://twins.example.com"
trusted_proxies = ["10.0.0.0/8"]
production_hosts = ["*.prod.example.com", "erp.example.com"]

[storage]
url = "sqlite:///var/lib/twinward/twinward.db"

[credentials]
issuer = "https://twins.example.com"
ttl = "5m"
keys_dir = "/var/lib/twinward/keys"

[identity]
pseudonym_key_file = "/run/secrets/pseudonym_key"

[policy]
dir = "/etc/twinward/policies"

[location]
timezone = "Europe/Berlin"
zones = { plant = ["10.20.0.0/16"], office = ["10.30.0.0/16"] }

[[routes]]
name = "plant-7-telemetry"
host = "twins.example.com"
path_prefix = "/plant-7"
upstream = "http://10.40.0.7:8080"
twin = "plant-7"
attributes = { environment = "twin", site = "plant-7", sensitivity = 2 }
"#;
    let c = parse_str(text).unwrap();
    assert_eq!(
        c.server.client_ip_header,
        crate::signals::network::ForwardingHeader::XForwardedFor
    );
    assert_eq!(c.credentials.issuer, "https://twins.example.com");
    assert_eq!(c.location.zones.len(), 2);
    assert_eq!(c.routes[0].host.as_deref(), Some("twins.example.com"));
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let e = parse_str("[server]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n").unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].position.map(|p| p.0), Some(3));
    assert!(
        e.problems[0].message.contains("lisen"),
        "{}",
        e.problems[0].message
    );
}

#[test]
fn every_problem_is_listed_at_once() {
    let text = r#"
[server]
listen_port = 1
production_hosts = ["*.prod.example.com"]
trusted_proxies = ["not-a-net"]

[credentials]
ttl = "2h"
max_ttl = "1h"

[location]
timezone = "Mars/Olympus"

[[routes]]
name = "a"
upstream = "http://db.prod.example.com:5432"
twin = "a"

[[routes]]
name = "b"
colour = "red"
path_prefix = "/x"
upstream = "http://127.0.0.1:1"

[[routes]]
name = "c"
path_prefix = "/x/"
upstream = "http://127.0.0.1:2"
twin = "c"

[[routes]]
name = "d"
path_prefix = "/x"
upstream = "http://127.0.0.1:3"
twin = "d"
"#;
    let e = parse_str(text).unwrap_err();
    let all = e.to_string();
    for needle in [
        "not-a-net",
        "longer than credentials.max_ttl",
        "Mars/Olympus",
        "production host",
        "no twin resource",
        "overlaps route",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    // Route problems point at the route's line.
    assert!(
        e.problems
            .iter()
            .any(|p| p.message.contains("production host") && p.position.map(|x| x.0) == Some(14)),
        "{all}"
    );
}

#[test]
fn production_host_patterns() {
    let p = HostPattern::parse("*.prod.example.com").unwrap();
    assert!(p.matches("db.prod.example.com"));
    assert!(p.matches("A.B.PROD.example.com."));
    assert!(!p.matches("prod.example.com"));
    assert!(!p.matches("evilprod.example.com"));
    let e = HostPattern::parse("erp.example.com").unwrap();
    assert!(e.matches("ERP.example.com"));
    assert!(!e.matches("x.erp.example.com"));
    let t = parse_str(
        "[server]\nproduction_hosts = [\"erp.example.com\"]\n[[routes]]\nname = \"x\"\nhost = \"ERP.example.com:443\"\nupstream = \"http://127.0.0.1:1\"\ntwin = \"x\"\n",
    );
    assert!(t.unwrap_err().to_string().contains("production host"));
}

#[test]
fn secrets_are_refs_and_durations_have_units() {
    assert!(parse_str("[identity]\npseudonym_key = \"inline\"\n")
        .unwrap_err()
        .to_string()
        .contains("pseudonym_key"));
    assert!(parse_str("[credentials]\nttl = \"300\"\n")
        .unwrap_err()
        .to_string()
        .contains("no unit"));
}

#[test]
fn upstreams_must_be_plain_origins() {
    for (u, msg) in [
        ("http://127.0.0.1:1/base", "must not have a path"),
        ("ftp://x", "http:// URL"),
        ("http://user:pw@127.0.0.1:1", "credentials"),
    ] {
        let text = format!("[[routes]]\nname = \"x\"\nupstream = \"{u}\"\ntwin = \"x\"\n");
        let e = parse_str(&text).unwrap_err().to_string();
        assert!(e.contains(msg), "{u}: {e}");
    }
}

#[test]
fn reserved_prefixes_are_refused() {
    let text = "[[routes]]\nname = \"x\"\npath_prefix = \"/.twinward/x\"\nupstream = \"http://127.0.0.1:1\"\ntwin = \"x\"\n";
    assert!(parse_str(text)
        .unwrap_err()
        .to_string()
        .contains("reserved"));
}

const SIGNIN: &str = r#"
[server]
public_url = "https://twins.example.com"

[oidc]
issuer = "https://idp.example.com/realms/corp"
client_id = "twinward"
client_secret_file = "/run/secrets/oidc_client_secret"
scopes = ["openid", "email", "profile", "groups"]
roles_claim = "groups"
roles = { "twin-operators" = "twin-operator", "twin-viewers" = "twin-viewer", "contractors" = "contractor" }

[webauthn]
rp_id = "twins.example.com"
rp_name = "Plant twins"
required = true

[session]
store = "memory"
idle_timeout = "30m"
max_lifetime = "8h"
"#;

#[test]
fn spec_signin_sections_parse_with_a_host_cookie() {
    let c = parse_str(&format!("{SIGNIN}{ROUTE}")).unwrap();
    let s = c.signin.unwrap();
    assert_eq!(s.cookie_name, "__Host-twinward");
    assert!(s.secure_cookies);
    assert_eq!(
        s.redirect_uri(),
        "https://twins.example.com/.twinward/callback"
    );
    assert_eq!(s.origin(), "https://twins.example.com");
    assert_eq!(
        s.oidc.roles.get("twin-viewers").map(String::as_str),
        Some("twin-viewer")
    );
    assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.session.mfa_max_age, Duration::from_secs(300));
}

#[test]
fn localhost_gets_the_plain_cookie_and_ips_cannot_be_rp_ids() {
    let local = SIGNIN
        .replace("https://twins.example.com", "http://localhost:8400")
        .replace("rp_id = \"twins.example.com\"\n", "");
    let c = parse_str(&format!("{local}{ROUTE}")).unwrap();
    let s = c.signin.unwrap();
    assert_eq!((s.cookie_name, s.secure_cookies), ("twinward", false));
    assert_eq!(s.webauthn.rp_id, "localhost");

    let ip = local.replace("http://localhost:8400", "http://127.0.0.1:8400");
    let e = parse_str(&format!("{ip}{ROUTE}")).unwrap_err().to_string();
    assert!(e.contains("passkeys need a domain name"), "{e}");
}

#[test]
fn signin_problems_are_all_listed() {
    let bad = SIGNIN
        .replace(
            "public_url = \"https://twins.example.com\"",
            "public_url = \"http://twins.example.com\"",
        )
        .replace(
            "https://idp.example.com/realms/corp",
            "http://idp.example.com",
        )
        .replace("rp_id = \"twins.example.com\"", "rp_id = \"example.org\"")
        .replace("store = \"memory\"", "store = \"redis://127.0.0.1:6379/0\"")
        .replace(
            "required = true",
            "required = true\ntrusted_aaguids = [\"ee882879-721c-4913-9775-3dfcce97072a\"]",
        )
        .replace(
            "roles_claim = \"groups\"",
            "roles_claim = \"groups\"\nprompt = \"login\"",
        );
    let e = parse_str(&format!("{bad}{ROUTE}")).unwrap_err().to_string();
    for want in [
        "server.public_url must be https",
        "oidc.issuer \"http://idp.example.com\" must be an https URL",
        "webauthn.rp_id \"example.org\" is neither the host",
        "Redis sessions are not available",
        "trusted_aaguids needs verified attestation",
        "prompt",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let no_url = SIGNIN.replace("public_url = \"https://twins.example.com\"", "");
    let e = parse_str(&format!("{no_url}{ROUTE}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[oidc] needs server.public_url"), "{e}");
    let no_roles = SIGNIN.replace(
        "roles = { \"twin-operators\" = \"twin-operator\", \"twin-viewers\" = \"twin-viewer\", \"contractors\" = \"contractor\" }",
        "",
    );
    let e = parse_str(&format!("{no_roles}{ROUTE}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("oidc.roles is empty"), "{e}");
}

#[test]
fn client_ip_header_is_one_of_the_two_forwarding_headers() {
    let c = parse_str("[server]\nclient_ip_header = \"Forwarded\"\n").unwrap();
    assert_eq!(
        c.server.client_ip_header,
        crate::signals::network::ForwardingHeader::Forwarded
    );
    let e = parse_str("[server]\nclient_ip_header = \"X-Real-IP\"\n").unwrap_err();
    assert_eq!(e.problems.len(), 1);
    assert_eq!(e.problems[0].position.map(|p| p.0), Some(2));
    assert!(
        e.problems[0].message.contains("X-Forwarded-For"),
        "{}",
        e.problems[0].message
    );
}

#[test]
fn upstream_ports_default_to_80_and_must_be_in_range() {
    let route = |upstream: &str| {
        format!(
            "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"{upstream}\"\ntwin = \"a\"\n"
        )
    };
    let c = parse_str(&route("http://twin-svc")).unwrap();
    let u = &c.routes[0].upstream;
    assert_eq!(
        (u.authority.as_str(), u.connect_to()),
        ("twin-svc", "twin-svc:80".into())
    );
    let c = parse_str(&route("http://[fd00::7]")).unwrap();
    assert_eq!(c.routes[0].upstream.connect_to(), "[fd00::7]:80");
    let c = parse_str(&route("http://[fd00::7]:8080")).unwrap();
    assert_eq!(c.routes[0].upstream.connect_to(), "[fd00::7]:8080");
    for bad in [
        "http://twin-svc:99999",
        "http://twin-svc:0",
        "http://[fd00::7]:70000",
    ] {
        let e = parse_str(&route(bad)).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.message.contains("is not 1 to 65535")),
            "{bad}: {:?}",
            e.problems
        );
    }
}

#[test]
fn route_timeouts_are_bounded() {
    let e = parse_str(
        "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\ntwin = \"a\"\ntimeout = \"500000000000y\"\n",
    )
    .unwrap_err();
    assert!(
        e.problems.iter().any(|p| p.message.contains("at most 24h")),
        "{:?}",
        e.problems
    );
}

#[test]
fn production_hosts_catch_every_spelling_of_an_address() {
    let cfg = |prod: &str, upstream: &str| {
        format!(
            "[server]\nproduction_hosts = [{prod}]\n\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"{upstream}\"\ntwin = \"a\"\n"
        )
    };
    for (prod, upstream) in [
        (r#""10.0.0.5""#, "http://[::ffff:10.0.0.5]:8080"),
        (r#""[fd00::1]""#, "http://[fd00::1]:8080"),
        (r#""fd00::1""#, "http://[FD00:0::1]:8080"),
        (r#""ERP.example.com.""#, "http://erp.example.com:8080"),
        (
            r#""*.prod.example.com""#,
            "http://db.PROD.example.com.:5432",
        ),
    ] {
        let e = parse_str(&cfg(prod, upstream)).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.message.contains("production host")),
            "{prod} / {upstream}: {:?}",
            e.problems
        );
    }
    // Numbers a resolver reads as an address, written otherwise, are refused outright.
    for upstream in [
        "http://10.0.0.05:8080",
        "http://167772165:8080",
        "http://0x0a000005:8080",
    ] {
        let e = parse_str(&cfg(r#""10.0.0.5""#, upstream)).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.message.contains("non-standard form")),
            "{upstream}: {:?}",
            e.problems
        );
    }
    // An entry that can never match a host is an error, not a silent no-op.
    for prod in [
        r#""erp.example.com:443""#,
        r#""https://erp.example.com""#,
        r#""*.""#,
    ] {
        let e = parse_str(&cfg(prod, "http://127.0.0.1:1")).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.message.contains("invalid host pattern")),
            "{prod}: {:?}",
            e.problems
        );
    }
}

#[test]
fn route_hosts_are_compared_in_one_form() {
    let two = |a: &str, b: &str| {
        format!(
            "[[routes]]\nname = \"a\"\nhost = \"{a}\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\ntwin = \"a\"\n\n\
             [[routes]]\nname = \"b\"\nhost = \"{b}\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:2\"\ntwin = \"b\"\n"
        )
    };
    // The same host twice with the same prefix overlaps, however it is spelled.
    let e = parse_str(&two("twins.example.com.", "Twins.Example.com")).unwrap_err();
    assert_eq!(e.problems.len(), 1, "{:?}", e.problems);
    let c = parse_str(&two("twins.example.com.", "b.example.com")).unwrap();
    assert_eq!(c.routes[0].host.as_deref(), Some("twins.example.com"));
    for bad in [
        "https://twins.example.com",
        "*.example.com",
        "twins example",
    ] {
        let e = parse_str(&two(bad, "b.example.com")).unwrap_err();
        assert!(
            e.problems
                .iter()
                .any(|p| p.message.contains("not a host name")),
            "{bad}: {:?}",
            e.problems
        );
    }
}

#[test]
fn unknown_keys_in_routes_and_sign_in_name_the_key_and_its_line() {
    let text = "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\ntwin = \"a\"\n\n\
                [[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nupstream = \"http://127.0.0.1:2\"\ntwin = \"b\"\ncolour = \"red\"\n\n\
                [oidc]\nissuer = \"https://idp.example.com\"\nprompt = \"login\"\n";
    let e = parse_str(text).unwrap_err();
    let found = |key: &str| {
        e.problems
            .iter()
            .find(|p| p.message == format!("unknown key `{key}`"))
            .and_then(|p| p.position)
            .map(|p| p.0)
    };
    assert_eq!(found("routes.1.colour"), Some(12), "{:?}", e.problems);
    assert_eq!(found("oidc.prompt"), Some(16), "{:?}", e.problems);
}

#[test]
fn a_public_url_sign_in_cannot_read_is_refused() {
    let e = parse_str("[server]\npublic_url = \"https://twins.example.com:99999\"\n").unwrap_err();
    assert!(
        e.problems.iter().any(|p| p.message.contains("public_url")),
        "{:?}",
        e.problems
    );
}

#[test]
fn values_of_the_wrong_type_do_not_hide_the_other_problems() {
    let text = "[server]\nproduction_hosts = [\"*.prod.example.com\"]\nworkers = \"two\"\n\n\
                [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\ntwin = \"a\"\ntimeout = \"30\"\n\n\
                [[routes]]\nname = \"b\"\npath_prefix = \"/b\"\ntwin = \"b\"\n\n\
                [[routes]]\nname = \"c\"\npath_prefix = \"/c\"\nupstream = \"http://db.prod.example.com:5432\"\ntwin = \"c\"\nflavour = 1\n";
    let e = parse_str(text).unwrap_err();
    let lines: Vec<(usize, &str)> = e
        .problems
        .iter()
        .map(|p| (p.position.map_or(0, |p| p.0), p.message.as_str()))
        .collect();
    let at =
        |line: usize, needle: &str| lines.iter().any(|(l, m)| *l == line && m.contains(needle));
    assert!(at(3, ""), "workers: {lines:?}");
    assert!(at(10, ""), "timeout without a unit: {lines:?}");
    assert!(
        lines.iter().any(|(_, m)| m.contains("upstream")),
        "route b: {lines:?}"
    );
    assert!(at(17, "production host"), "route c: {lines:?}");
    assert!(at(22, "flavour"), "route c's unknown key: {lines:?}");

    // Offsets hold after a blanked line of multi-byte characters.
    let e = parse_str("[server]\nworkers = \"zwei Wörter ✓\"\nlisen = 1\n").unwrap_err();
    let found: Vec<(Option<(usize, usize)>, &str)> = e
        .problems
        .iter()
        .map(|p| (p.position, p.message.as_str()))
        .collect();
    assert!(
        found
            .iter()
            .any(|(p, m)| *p == Some((3, 1)) && m.contains("lisen")),
        "{found:?}"
    );
}

#[test]
fn max_connections_defaults_and_is_bounded() {
    let ok = |text: &str| parse_str(text).unwrap().server.max_connections;
    assert_eq!(ok(""), DEFAULT_MAX_CONNECTIONS);
    assert_eq!(ok("[server]\nmax_connections = 64\n"), 64);
    for bad in ["0", "1000001"] {
        let e =
            parse_str(&format!("[server]\nworkers = 2\nmax_connections = {bad}\n")).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.position.map(|p| p.0) == Some(3)
                && p.message
                    .contains("server.max_connections must be 1 to 1000000")),
            "{bad}: {:?}",
            e.problems
        );
    }
}
