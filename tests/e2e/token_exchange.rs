//! RFC 8693 token exchange at `/.twinward/oauth/token`: an API token in, a short-lived twin
//! credential out; refusals as RFC 6749 error JSON.

use crate::common::*;
use std::net::SocketAddr;

const TOKEN_PATH: &str = "/.twinward/oauth/token";
const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

fn gateway() -> Gateway {
    // Exchange never contacts the twin; nothing needs to listen upstream.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("plant-7", "/plant-7", nowhere, "plant-7", 2),
            RouteSpec::new("plant-9", "/plant-9", nowhere, "plant-9", 3),
        ],
        ..Default::default()
    })
}

fn exchange(gw: &Gateway, subject: &str, audience: &str) -> RawResponse {
    post_form(
        gw.addr,
        TOKEN_PATH,
        &[
            ("grant_type", GRANT),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", audience),
        ],
    )
}

/// Asserts an RFC 6749 §5.2 error response and returns its JSON.
fn oauth_error(r: &RawResponse, code: &str) -> serde_json::Value {
    assert_eq!(r.status, 400, "{code}: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["error"], code, "{}", r.body);
    assert!(v["error_description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
    assert!(v.get("access_token").is_none());
    v
}

#[test]
fn an_api_token_is_exchanged_for_a_short_lived_twin_credential() {
    let gw = gateway();
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let r = exchange(&gw, &sim, "plant-7");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["issued_token_type"], JWT);
    assert!(v["token_type"]
        .as_str()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer")));
    let expires_in = v["expires_in"].as_u64().unwrap();
    assert!((1..=300).contains(&expires_in), "{expires_in}");
    let jwt = v["access_token"].as_str().unwrap();
    assert!(!jwt.contains(&sim));

    let jwks = gw.url("/.well-known/jwks.json");
    let claims = jose_verify(&jwks, jwt, "https://gw.test", "plant-7")
        .unwrap_or_else(|e| panic!("jose refused the exchanged credential: {e}"));
    assert_eq!(claims["aud"], "plant-7");
    assert_eq!(claims["twin"], "plant-7");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(v["scope"], "read write");
    assert!(!claims["sub"].as_str().unwrap().contains("sim-7"));
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);
    assert!(jose_verify(&jwks, jwt, "https://gw.test", "plant-9").is_err());

    // A read-only principal gets a read-only credential.
    let etl = gw.token("etl", &["data-pipeline"], &[], "1d");
    let r = exchange(&gw, &etl, "plant-9");
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, claims) = jwt_parts(r.json()["access_token"].as_str().unwrap());
    assert_eq!(claims["scope"], "read");
    assert_eq!(claims["aud"], "plant-9");

    // The credential never outlives the API token it came from.
    let short = gw.token("sim-short", &["sim-runner"], &[], "60s");
    let r = exchange(&gw, &short, "plant-7");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["expires_in"].as_u64().unwrap() <= 60, "{}", r.body);

    let ev = gw.wait_audit(|e| e["kind"] == "token.exchange" && e["outcome"] == "allow");
    assert_eq!(ev["actor"], "sim-7");
    assert_eq!(ev["detail"]["jti"], claims_jti(jwt));
}

fn claims_jti(jwt: &str) -> serde_json::Value {
    jwt_parts(jwt).1["jti"].clone()
}

#[test]
fn malformed_requests_get_rfc6749_errors() {
    let gw = gateway();
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let post = |fields: &[(&str, &str)]| post_form(gw.addr, TOKEN_PATH, fields);

    oauth_error(
        &post(&[
            ("grant_type", "client_credentials"),
            ("subject_token", &sim),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "plant-7"),
        ]),
        "unsupported_grant_type",
    );
    oauth_error(
        &post(&[
            ("grant_type", GRANT),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "plant-7"),
        ]),
        "invalid_request",
    );
    oauth_error(
        &post(&[
            ("grant_type", GRANT),
            ("subject_token", &sim),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ),
            ("audience", "plant-7"),
        ]),
        "invalid_request",
    );
    oauth_error(&exchange(&gw, &sim, "plant-8"), "invalid_target");
    oauth_error(
        &post(&[
            ("grant_type", GRANT),
            ("subject_token", &sim),
            ("subject_token_type", ACCESS_TOKEN),
        ]),
        "invalid_target",
    );
    // A JSON body is not a form.
    let body = serde_json::json!({"grant_type": GRANT, "subject_token": sim, "subject_token_type": ACCESS_TOKEN, "audience": "plant-7"}).to_string();
    let r = raw(
        gw.addr,
        &format!(
            "POST {TOKEN_PATH} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    oauth_error(&r, "invalid_request");
    // Nothing was minted for any of these.
    assert!(!gw
        .audit()
        .iter()
        .any(|e| e["kind"] == "token.exchange" && e["outcome"] == "allow"));
}

#[test]
fn policy_and_token_refusals_are_invalid_target_or_invalid_request() {
    let gw = gateway();
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let scoped = gw.token("etl", &["data-pipeline"], &["plant-9"], "1d");
    let revoked = gw.token("sim-9", &["sim-runner"], &[], "1d");
    let id = gw.last_token_id();
    assert!(gw.cli(&["token", "revoke", &id]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // Policy allows a sim-runner nothing on plant-9 (sensitivity 3).
    let v = oauth_error(&exchange(&gw, &sim, "plant-9"), "invalid_target");
    let decision = v["decision_id"].as_str().expect("decision_id").to_owned();
    let ev = gw.wait_audit(|e| e["event_id"] == decision.as_str());
    assert_eq!(ev["kind"], "token.exchange");
    assert_eq!(ev["outcome"], "deny");
    assert_eq!(ev["route"], "plant-9");

    // A token scoped to another twin.
    let v = oauth_error(&exchange(&gw, &scoped, "plant-7"), "invalid_target");
    assert!(v["decision_id"].is_string());

    // Revoked, foreign JWT, garbage: the subject token is the problem.
    let foreign = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlzcyI6Imh0dHBzOi8vaWRwIn0.c2lnbmF0dXJl";
    let v = oauth_error(&exchange(&gw, &revoked, "plant-7"), "invalid_request");
    assert!(v["error_description"].as_str().unwrap().contains("revoked"));
    let v = oauth_error(&exchange(&gw, foreign, "plant-7"), "invalid_request");
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("only twinward API tokens"));
    oauth_error(&exchange(&gw, "twt_nonsense", "plant-7"), "invalid_request");

    // A twin credential is not an API token either: no chaining exchanges.
    let ok = exchange(&gw, &sim, "plant-7");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let credential = ok.json()["access_token"].as_str().unwrap().to_owned();
    oauth_error(&exchange(&gw, &credential, "plant-7"), "invalid_request");
}

#[test]
fn without_a_valid_token_the_endpoint_tells_no_route_name_from_another() {
    let gw = gateway();
    let sim = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let revoked = gw.token("sim-9", &["sim-runner"], &[], "1d");
    let id = gw.last_token_id();
    assert!(gw.cli(&["token", "revoke", &id]).status.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));

    // The answer to a probe depends on the token only, never on whether the audience is a
    // route: the route's name appears nowhere in it.
    for subject in ["twt_nonsense", "not-a-token", revoked.as_str()] {
        let answers: Vec<String> = ["plant-7", "no-such-route", ""]
            .iter()
            .map(|audience| {
                let v = oauth_error(&exchange(&gw, subject, audience), "invalid_request");
                v["error_description"].as_str().unwrap().to_owned()
            })
            .collect();
        assert!(
            answers
                .iter()
                .all(|a| a == &answers[0] && a.starts_with("subject_token")),
            "{subject}: {answers:?}"
        );
    }
    // Once the token is good, an unknown audience is named as the problem, and audited.
    let v = oauth_error(&exchange(&gw, &sim, "no-such-route"), "invalid_target");
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .contains("audience must name a route"));
    let decision = v["decision_id"].as_str().expect("decision_id").to_owned();
    let ev = gw.wait_audit(|e| e["event_id"] == decision.as_str());
    assert_eq!(
        (&ev["kind"], &ev["outcome"]),
        (&"token.exchange".into(), &"deny".into())
    );
    assert!(ev["route"].is_null(), "{ev}");
}
