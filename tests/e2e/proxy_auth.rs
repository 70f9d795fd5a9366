//! Tokens, policy decisions and header hygiene through the real proxy.

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn allowed_request_reaches_the_twin_with_a_credential_and_nothing_of_the_client() {
    let (up, gw) = two_plants().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let r = tokio::task::spawn_blocking({
        let addr = gw.addr;
        let token = token.clone();
        move || {
            get(
                addr,
                "/plant-7/sensors?window=5m",
                Some(&token),
                &[
                    ("X-Twinward-Assertion", "forged"),
                    ("X-Twinward-Anything", "x"),
                    ("Cookie", "__Host-twinward=stolen; theme=dark"),
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("X-Forwarded-Port", "8443"),
                    ("True-Client-IP", "192.168.20.5"),
                    ("X-Rewrite-URL", "/plant-9/admin"),
                    ("Connection", "close, X-Hop"),
                    ("X-Hop", "must-not-pass"),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = up.last().unwrap();
    assert_eq!(seen.target, "/plant-7/sensors?window=5m");
    assert!(
        seen.header("authorization").is_none(),
        "client token leaked upstream"
    );
    assert!(seen.header("x-twinward-anything").is_none());
    assert_ne!(seen.header("x-twinward-assertion"), Some("forged"));
    assert_eq!(
        seen.headers.get("x-twinward-assertion").map(Vec::len),
        Some(1)
    );
    assert_eq!(seen.header("cookie"), Some("theme=dark"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "untrusted peer's X-Forwarded-For must be replaced"
    );
    for name in ["x-forwarded-port", "true-client-ip", "x-rewrite-url"] {
        assert!(
            seen.header(name).is_none(),
            "the client's {name} must not reach the twin"
        );
    }
    assert!(
        seen.header("x-hop").is_none(),
        "header named by Connection must be removed"
    );
    assert!(seen.header("connection").is_none() || seen.header("connection") == Some("keep-alive"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(
        !token.is_empty()
            && !serde_json::to_string(&seen.headers)
                .unwrap()
                .contains(&token)
    );
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["outcome"] == "allow"
            && e["policies"][0] == "sim-runners-sandbox"
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_and_unauthenticated_requests_never_reach_the_twin() {
    let (up, gw) = two_plants().await;
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let r = tokio::task::spawn_blocking(move || {
        let deny = get(
            addr,
            "/plant-9/x",
            Some(&sim),
            &[("Accept", "application/json")],
        );
        let none = get(addr, "/plant-7/x", None, &[]);
        (deny, none)
    })
    .await
    .unwrap();
    let (deny, none) = r;
    assert_eq!(deny.status, 403);
    assert_eq!(
        deny.header("content-type"),
        Some("application/problem+json")
    );
    let id = deny.json()["decision_id"].as_str().unwrap().to_owned();
    assert_eq!(none.status, 401);
    assert!(none
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        up.count(),
        0,
        "refused requests must not reach the upstream"
    );
    gw.wait_audit(|e| e["event_id"] == id.as_str() && e["outcome"] == "deny");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_revoked_bad_checksum_and_foreign_tokens_are_refused() {
    let (up, gw) = two_plants().await;
    let good = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let short = gw.token("sim-8", &["sim-runner"], &[], "1s");
    let revoked = gw.token("sim-9", &["sim-runner"], &[], "1d");
    let revoked_id = gw.last_token_id();
    let out = gw.cli(&["token", "revoke", &revoked_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tampered = good.clone().into_bytes();
    let i = 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let addr = gw.addr;
    let results = tokio::task::spawn_blocking(move || {
        let jwt = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlzcyI6Imh0dHBzOi8vaWRwIn0.c2lnbmF0dXJl";
        vec![
            ("expired", get(addr, "/plant-7/x", Some(&short), &[])),
            ("revoked", get(addr, "/plant-7/x", Some(&revoked), &[])),
            ("checksum", get(addr, "/plant-7/x", Some(&tampered), &[])),
            ("jwt", get(addr, "/plant-7/x", Some(jwt), &[])),
            ("other", get(addr, "/plant-7/x", Some("ghp_abcdef"), &[])),
            ("good", get(addr, "/plant-7/x", Some(&good), &[])),
        ]
    })
    .await
    .unwrap();
    for (name, r) in &results {
        if *name == "good" {
            assert_eq!(r.status, 200, "{name}: {}", r.body);
        } else {
            assert_eq!(r.status, 401, "{name}: {}", r.body);
        }
    }
    let body = |n: &str| {
        results
            .iter()
            .find(|(k, _)| *k == n)
            .unwrap()
            .1
            .body
            .clone()
    };
    assert!(body("expired").contains("expired"));
    assert!(body("revoked").contains("revoked"));
    assert!(body("checksum").contains("checksum"));
    assert!(body("jwt").contains("only twinward API tokens"));
    assert!(body("other").contains("only twinward API tokens"));
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_a_running_gateway_within_a_second() {
    let (_up, gw) = two_plants().await;
    let t = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let t2 = t.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || get(addr, "/plant-7/a", Some(&t2), &[]))
            .await
            .unwrap()
            .status,
        200
    );
    let id = gw.last_token_id();
    assert!(gw.cli(&["token", "revoke", &id]).status.success());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = tokio::task::spawn_blocking(move || get(addr, "/plant-7/a", Some(&t), &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_scoped_to_one_twin_cannot_reach_another() {
    let (_up, gw) = two_plants().await;
    let t = gw.token("etl", &["data-pipeline"], &["plant-9"], "1d");
    let addr = gw.addr;
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            get(addr, "/plant-9/x", Some(&t), &[]),
            get(addr, "/plant-7/x", Some(&t), &[]),
        )
    })
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(b.status, 403, "{}", b.body);
    assert!(b.body.contains("not scoped"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_are_404_without_route_names() {
    let (_up, gw) = two_plants().await;
    let addr = gw.addr;
    let r = tokio::task::spawn_blocking(move || get(addr, "/plant-8/x", None, &[]))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(!r.body.contains("plant-7") && !r.body.contains("plant-9"));
}

/// A method-override header makes some frameworks run another method than the one policy
/// decided on: one naming a method of another action is refused, on either path.
#[tokio::test(flavor = "multi_thread")]
async fn a_method_override_cannot_turn_a_read_into_a_write() {
    let (up, gw) = two_plants().await;
    let etl = gw.token("etl", &["data-pipeline"], &[], "1d");
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let (get_as_delete, lower_case, post_as_patch) = tokio::task::spawn_blocking(move || {
        (
            get(
                addr,
                "/plant-7/x",
                Some(&etl),
                &[("X-HTTP-Method-Override", "DELETE")],
            ),
            get(addr, "/plant-7/x", Some(&etl), &[("x-method-override", "PUT")]),
            raw(
                addr,
                &format!(
                    "POST /plant-7/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {sim}\r\n\
                     X-HTTP-Method-Override: PATCH\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            )
            .unwrap(),
        )
    })
    .await
    .unwrap();
    for r in [&get_as_delete, &lower_case] {
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("method"), "{}", r.body);
    }
    // Of the same action (both writes): passed on as sent.
    assert_eq!(post_as_patch.status, 200, "{}", post_as_patch.body);
    let seen = up.last().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("x-http-method-override"), Some("PATCH"));
    assert_eq!(up.count(), 1, "refused requests must not reach the twin");
}
