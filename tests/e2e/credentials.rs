//! Twin credentials as a twin sees them: verified by an independent JOSE implementation
//! (jose, in Node) against the gateway's JWKS, key rotation with overlap, and key files
//! that stay private.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twinward::clock::{Clock, SystemClock};

const ISSUER: &str = "https://gw.test";

/// Sends `GET path` with `token` and returns the assertion the twin received.
fn assertion_for(gw: &Gateway, up: &Upstream, path: &str, token: &str) -> String {
    let before = up.count();
    let r = get(gw.addr, path, Some(token), &[]);
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    assert_eq!(up.count(), before + 1, "the request must reach the twin");
    let seen = up.last().unwrap();
    let values = seen
        .headers
        .get("x-twinward-assertion")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        values.len(),
        1,
        "exactly one X-Twinward-Assertion: {values:?}"
    );
    values[0].clone()
}

fn unix_now() -> i64 {
    SystemClock.now().unix_secs()
}

/// The key id in a key file name (`<created>-<kid>.<alg>.p8`).
fn kid_of(p: &Path) -> String {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let rest = name.split_once('-').unwrap().1;
    rest.split('.').next().unwrap().to_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn key_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "p8"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn the_assertion_a_twin_receives_verifies_with_jose_and_carries_the_contract_claims() {
    let (up, gw) = two_plants().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let before = unix_now();
    let jwt = sync(|| assertion_for(&gw, &up, "/plant-7/sensors", &token));
    let after = unix_now();

    let well_known = gw.url("/.well-known/jwks.json");
    let twinward = gw.url("/.twinward/jwks.json");
    let claims = sync(|| jose_verify(&well_known, &jwt, ISSUER, "plant-7"))
        .unwrap_or_else(|e| panic!("jose refused the credential: {e}\n{jwt}"));
    let again = sync(|| jose_verify(&twinward, &jwt, ISSUER, "plant-7"))
        .unwrap_or_else(|e| panic!("jose refused it against /.twinward/jwks.json: {e}"));
    assert_eq!(claims, again);

    // Verification is real: the wrong audience or issuer, or a flipped signature, fails.
    let wrong_aud = sync(|| jose_verify(&well_known, &jwt, ISSUER, "plant-9"));
    assert!(
        wrong_aud.as_ref().is_err_and(|e| e.contains("aud")),
        "{wrong_aud:?}"
    );
    assert!(sync(|| jose_verify(&well_known, &jwt, "https://other.test", "plant-7")).is_err());
    let mut forged = jwt.clone().into_bytes();
    let i = jwt.rfind('.').unwrap() + 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let forged_result = sync(|| jose_verify(&well_known, &forged, ISSUER, "plant-7"));
    assert!(
        forged_result
            .as_ref()
            .is_err_and(|e| e.contains("signature")),
        "{forged_result:?}"
    );

    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "plant-7", "aud is the route name");
    assert_eq!(claims["twin"], "plant-7");
    let sub = claims["sub"].as_str().unwrap();
    assert!(
        !sub.is_empty() && !sub.contains("sim-7"),
        "sub must be a pseudonym, not the service account: {sub}"
    );
    let scope: Vec<&str> = claims["scope"].as_str().unwrap().split(' ').collect();
    assert!(
        scope.contains(&"read") && scope.contains(&"write"),
        "sim-runners may read and write plant-7: {scope:?}"
    );
    assert!(!scope.contains(&"admin"), "{scope:?}");
    assert_eq!(claims["roles"], serde_json::json!(["sim-runner"]));
    assert_eq!(claims["amr"], serde_json::json!(["api_token"]));
    let (iat, exp, nbf) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 300, "default lifetime is 5 minutes");
    // Issued while the request was made (whole seconds), not at some other time: the
    // checks above run node five times, so "now" at this point is seconds later.
    assert!(
        nbf <= iat && before - 1 <= iat && iat <= after + 1,
        "{claims}"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    let (header, _) = jwt_parts(&jwt);
    assert_eq!(header["alg"], "EdDSA");
    let jwks = sync(|| jwks_of(&gw, "/.well-known/jwks.json"));
    assert_eq!(
        kids(&jwks),
        vec![header["kid"].as_str().unwrap().to_owned()]
    );
    for k in jwks["keys"].as_array().unwrap() {
        assert!(
            k.get("d").is_none(),
            "private key material in the JWKS: {k}"
        );
        assert_eq!(k["use"], "sig");
    }

    // The pseudonym is stable for the service account and differs between accounts.
    let token2 = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let other = gw.token("sim-8", &["sim-runner"], &[], "1d");
    let (same, different) = sync(|| {
        (
            jwt_parts(&assertion_for(&gw, &up, "/plant-7/a", &token2)).1,
            jwt_parts(&assertion_for(&gw, &up, "/plant-7/b", &other)).1,
        )
    });
    assert_eq!(same["sub"], claims["sub"]);
    assert_ne!(different["sub"], claims["sub"]);
    assert_ne!(
        same["jti"], claims["jti"],
        "another token gets its own credential"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_publishes_both_keys_and_old_credentials_keep_verifying() {
    let (up, gw) = two_plants().await;
    let keys_dir = gw.dir.path().join("keys");
    let first = key_files(&keys_dir);
    assert_eq!(first.len(), 1, "{first:?}");
    let jwks_url = gw.url("/.well-known/jwks.json");

    let t1 = gw.token("sim-1", &["sim-runner"], &[], "1d");
    let old = sync(|| assertion_for(&gw, &up, "/plant-7/x", &t1));
    let old_kid = jwt_parts(&old).0["kid"].as_str().unwrap().to_owned();

    let out = gw.cli(&["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = key_files(&keys_dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let new_file = files.iter().find(|f| **f != first[0]).unwrap();
    let new_kid = kid_of(new_file);
    assert_ne!(new_kid, old_kid);
    assert_eq!(mode(new_file), 0o600, "a rotated key file is private");

    // The running gateway publishes both within ~2 s, on both JWKS paths.
    let started = Instant::now();
    sync(|| {
        wait_for(Duration::from_secs(3), "the JWKS to list both keys", || {
            let a = kids(&jwks_of(&gw, "/.well-known/jwks.json"));
            let b = kids(&jwks_of(&gw, "/.twinward/jwks.json"));
            a.len() == 2 && a.contains(&old_kid) && a.contains(&new_kid) && a == b
        })
    });
    assert!(started.elapsed() < Duration::from_millis(2500));

    let listing = String::from_utf8(gw.cli(&["keys", "list"]).stdout).unwrap();
    let line_of = |kid: &str| {
        listing
            .lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_else(|| panic!("{kid} not in:\n{listing}"))
            .to_owned()
    };
    assert!(
        line_of(&new_kid).ends_with("current (signing)"),
        "{listing}"
    );
    assert!(line_of(&old_kid).contains("overlap"), "{listing}");

    // A new principal gets a credential signed with the new key; it verifies.
    let t2 = gw.token("sim-2", &["sim-runner"], &[], "1d");
    let fresh = sync(|| assertion_for(&gw, &up, "/plant-7/y", &t2));
    assert_eq!(jwt_parts(&fresh).0["kid"], new_kid.as_str());
    let claims = sync(|| jose_verify(&jwks_url, &fresh, ISSUER, "plant-7"))
        .unwrap_or_else(|e| panic!("new-key credential refused: {e}"));
    assert_eq!(claims["aud"], "plant-7");

    // The credential signed before the rotation still verifies: its key stays published.
    sync(|| jose_verify(&jwks_url, &old, ISSUER, "plant-7"))
        .unwrap_or_else(|e| panic!("old credential refused during the overlap: {e}"));
}

#[test]
fn rotation_makes_the_new_key_current_even_within_the_same_second() {
    // `keys rotate` several times in quick succession: each time the key it just wrote must
    // be the one that signs (with no activation delay), whatever the key ids.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("twinward.toml");
    std::fs::write(
        &config,
        "[credentials]\nissuer = \"https://gw.test\"\nactivation_delay = \"0s\"\n",
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    for round in 0..6 {
        let out = twinward_in(dir.path(), &["keys", "rotate", "--config", cfg]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("new signing key "))
            .unwrap_or_else(|| panic!("no key path in:\n{text}"));
        let kid = kid_of(Path::new(path));
        let current = text
            .lines()
            .find(|l| l.ends_with("current (signing)"))
            .unwrap_or_else(|| panic!("no current key in:\n{text}"));
        assert!(
            current.starts_with(&kid),
            "round {round}: the key just rotated in ({kid}) is not the current one:\n{text}"
        );
    }
}

#[test]
fn a_rotated_key_is_published_before_it_signs() {
    // Twins cache the JWKS; by default a new key is published two minutes before it signs.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("twinward.toml");
    std::fs::write(&config, "[credentials]\nissuer = \"https://gw.test\"\n").unwrap();
    let cfg = config.to_str().unwrap();
    let first = twinward_in(dir.path(), &["keys", "rotate", "--config", cfg]);
    assert!(first.status.success());
    let out = twinward_in(dir.path(), &["keys", "rotate", "--config", cfg]);
    let text = String::from_utf8(out.stdout).unwrap();
    let signing: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with("current (signing)"))
        .collect();
    let pending: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("published, signs from"))
        .collect();
    assert_eq!((signing.len(), pending.len()), (1, 1), "{text}");
}

#[test]
fn key_files_are_private_and_a_readable_key_file_stops_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("policies"), &dir.path().join("policies"));
    let config = dir.path().join("twinward.toml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\n[credentials]\nissuer = \"https://gw.test\"\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = twinward_in(dir.path(), &["keys", "rotate", "--config", cfg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys_dir = dir.path().join("keys");
    let key = key_files(&keys_dir).pop().expect("a key file");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&keys_dir) & 0o077, 0, "keys directory is private");

    let serve = |expect_ready: bool| -> (Option<i32>, String) {
        let log = dir.path().join("serve.log");
        let mut child = Command::new(bin())
            .args(["serve", "--config", cfg])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if expect_ready
                && raw(
                    std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
                    "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
                )
                .is_ok_and(|r| r.status == 200)
            {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gateway neither exited nor became ready:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (code, std::fs::read_to_string(&log).unwrap_or_default())
    };

    // The generated pseudonym key is private too.
    let (code, log) = serve(true);
    assert_eq!(code, None, "a gateway with private keys serves:\n{log}");
    let pseudonym = keys_dir.join("pseudonym.key");
    assert_eq!(mode(&pseudonym), 0o600);

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, log) = serve(false);
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?} for a world-readable key:\n{log}"
    );
    assert!(
        log.contains(&key.display().to_string()),
        "the refusal must name the file:\n{log}"
    );
    assert!(log.contains("chmod 600"), "{log}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&pseudonym, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, log) = serve(false);
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?} for a group-readable pseudonym key:\n{log}"
    );
    assert!(log.contains(&pseudonym.display().to_string()), "{log}");

    // A secret the config names is held to the same rule: here, a pseudonym key left
    // world-readable by `echo … > file` under the usual umask.
    std::fs::set_permissions(&pseudonym, std::fs::Permissions::from_mode(0o600)).unwrap();
    let configured = dir.path().join("pseudonym-from-config");
    std::fs::write(&configured, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(&configured, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[identity]\npseudonym_key_file = \"pseudonym-from-config\"\n"),
    )
    .unwrap();
    let (code, log) = serve(false);
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?} for a world-readable configured secret:\n{log}"
    );
    assert!(log.contains(&configured.display().to_string()), "{log}");
    assert!(
        log.contains("mode 644") && log.contains("chmod 600"),
        "{log}"
    );
    let out = twinward_in(dir.path(), &["check", "--config", cfg]);
    assert_eq!(out.status.code(), Some(2), "check finds it too");

    std::fs::set_permissions(&configured, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, log) = serve(true);
    assert_eq!(code, None, "a private configured secret is read:\n{log}");
}
