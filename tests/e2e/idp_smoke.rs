//! The OpenID provider the sign-in tests run against (`tests/js/oidc-idp.mjs`), checked on
//! its own: the code flow with PKCE done by hand over plain HTTP, its refusals, and its test
//! controls (ID token tampering, key rotation).

use crate::common::idp::Idp;
use crate::common::signin::Agent;
use crate::common::*;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::process::Command;
use twinward::clock::{Clock, SystemClock};

const REDIRECT: &str = "http://localhost:9/callback";
const SCOPE: &str = "openid email profile groups";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn random_b64url() -> String {
    b64url(&rand::random::<[u8; 32]>())
}

fn start() -> Idp {
    Idp::start(&[REDIRECT.to_owned()], &Idp::default_users())
}

/// A cookie jar and the one-request helpers a browser would use against the provider.
struct Browser<'a> {
    idp: &'a Idp,
    agent: Agent,
}

impl<'a> Browser<'a> {
    fn new(idp: &'a Idp) -> Self {
        Browser {
            idp,
            agent: Agent::new(),
        }
    }

    /// One request to the provider with the jar's cookies (the shared test cookie jar).
    fn send(&mut self, method: &str, target: &str, form: Option<&[(&str, &str)]>) -> RawResponse {
        let body = form.map(form_encode);
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/x-www-form-urlencoded")]
        } else {
            &[]
        };
        self.agent
            .request(method, &self.idp.url(target), headers, body.as_deref())
    }

    /// `Location` of a redirect, as a request target when it points at the provider.
    fn location(&self, r: &RawResponse) -> String {
        let loc = r
            .header("location")
            .unwrap_or_else(|| panic!("no Location in {} {}", r.status, r.body))
            .to_owned();
        loc.strip_prefix(&self.idp.issuer)
            .map(str::to_owned)
            .unwrap_or(loc)
    }
}

/// One authorization request's secrets.
struct Login {
    state: String,
    nonce: String,
    verifier: String,
}

impl Login {
    fn new() -> Login {
        Login {
            state: random_b64url(),
            nonce: random_b64url(),
            verifier: random_b64url(),
        }
    }

    fn authorize_target(&self, idp: &Idp, extra: &[(&str, &str)]) -> String {
        let challenge = b64url(&Sha256::digest(self.verifier.as_bytes()));
        let mut fields = vec![
            ("response_type", "code"),
            ("client_id", idp.client_id.as_str()),
            ("redirect_uri", REDIRECT),
            ("scope", SCOPE),
            ("state", self.state.as_str()),
            ("nonce", self.nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        fields.extend_from_slice(extra);
        format!("/auth?{}", form_encode(&fields))
    }
}

/// Query parameters of a redirect to the client, after checking it goes there.
fn callback_params(location: &str) -> std::collections::HashMap<String, String> {
    assert!(
        location.starts_with(REDIRECT),
        "expected a redirect to the client, got {location}"
    );
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Sends the authorization request and returns the login page's path (`/interaction/<uid>`).
fn begin(b: &mut Browser, login: &Login) -> String {
    let r = b.send("GET", &login.authorize_target(b.idp, &[]), None);
    assert_eq!(r.status, 303, "authorization request: {}", r.body);
    let interaction = b.location(&r);
    assert!(
        interaction.starts_with("/interaction/"),
        "not the login page: {interaction}"
    );
    interaction
}

/// Posts the login form with `field` (`user=<id>` or `cancel=1`) and follows the provider's
/// redirects back to the client; returns the callback's query parameters.
fn submit(b: &mut Browser, interaction: &str, field: (&str, &str)) -> Vec<(String, String)> {
    let r = b.send("POST", &format!("{interaction}/login"), Some(&[field]));
    assert_eq!(r.status, 303, "login form: {}", r.body);
    let resume = b.location(&r);
    assert!(
        resume.starts_with("/auth/"),
        "not the resume step: {resume}"
    );
    let r = b.send("GET", &resume, None);
    assert_eq!(r.status, 303, "resume: {}", r.body);
    callback_params(&b.location(&r)).into_iter().collect()
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Signs `user` in and returns the authorization code, checking state and iss on the way.
fn code_for(idp: &Idp, login: &Login, user: &str) -> String {
    let mut b = Browser::new(idp);
    let interaction = begin(&mut b, login);
    let page = b.send("GET", &interaction, None);
    assert_eq!(page.status, 200, "login page: {}", page.body);
    let params = submit(&mut b, &interaction, ("user", user));
    assert_eq!(param(&params, "state"), Some(login.state.as_str()));
    assert_eq!(param(&params, "iss"), Some(idp.issuer.as_str()));
    param(&params, "code")
        .unwrap_or_else(|| panic!("no code in {params:?}"))
        .to_owned()
}

/// The token request as the gateway sends it: client_secret_basic and the PKCE verifier.
fn exchange(idp: &Idp, code: &str, verifier: &str) -> RawResponse {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        enc(&idp.client_id),
        enc(&idp.client_secret)
    ));
    let auth = format!("Basic {basic}");
    let body = form_encode(&[
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier),
    ]);
    idp.request(
        "POST",
        "/token",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Accept", "application/json"),
        ],
        Some(&body),
    )
}

/// A full sign-in of `user`; returns the ID token.
fn id_token_for(idp: &Idp, user: &str) -> (Login, String) {
    let login = Login::new();
    let code = code_for(idp, &login, user);
    let r = exchange(idp, &code, &login.verifier);
    assert_eq!(r.status, 200, "token: {}\n{}", r.body, idp.log());
    let token = r.json()["id_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no id_token: {}", r.body))
        .to_owned();
    (login, token)
}

/// Checks the RS256 signature against the provider's JWKS (by kid) with the jsonwebtoken
/// crate, ignoring the claims.
fn signature_ok(idp: &Idp, token: &str) -> bool {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let Ok(header) = decode_header(token) else {
        return false;
    };
    let jwks = idp.jwks();
    let Some(jwk) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"].as_str() == header.kid.as_deref())
    else {
        return false;
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims = HashSet::new();
    decode::<serde_json::Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &v).is_ok()
}

fn now() -> i64 {
    SystemClock.now().unix_secs()
}

#[test]
fn discovery_advertises_the_code_flow_with_s256_on_a_localhost_issuer() {
    let idp = start();
    assert!(
        idp.issuer.starts_with("http://localhost:"),
        "{}",
        idp.issuer
    );
    assert_eq!(idp.client_id, "twinward");
    let d = idp.discovery();
    assert_eq!(d["issuer"], idp.issuer.as_str());
    assert_eq!(d["authorization_endpoint"], idp.url("/auth").as_str());
    assert_eq!(d["token_endpoint"], idp.url("/token").as_str());
    assert_eq!(d["jwks_uri"], idp.url("/jwks").as_str());
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic"])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    for s in ["openid", "email", "profile", "groups"] {
        assert!(
            d["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&s.into()),
            "{s} missing: {d}"
        );
    }
    let jwks = idp.jwks();
    assert_eq!(kids(&jwks), vec![idp.kid()]);
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(jwks["keys"][0].get("d").is_none(), "private key published");
    // Only loopback.
    assert!(idp.addr.ip().is_loopback());
}

#[test]
fn code_flow_yields_an_id_token_with_email_groups_nonce_and_amr() {
    let idp = start();
    assert_eq!(idp.tokens_issued(), 0);
    let mut b = Browser::new(&idp);
    let login = Login::new();
    let interaction = begin(&mut b, &login);
    let page = b.send("GET", &interaction, None);
    assert_eq!(page.status, 200);
    let uid = interaction.trim_start_matches("/interaction/");
    assert!(
        page.body.contains(&format!(
            "<form method=\"post\" action=\"/interaction/{uid}/login\">"
        )),
        "{}",
        page.body
    );
    for u in Idp::default_users() {
        assert!(
            page.body.contains(&format!(
                "<button type=\"submit\" name=\"user\" value=\"{}\">",
                u.id
            )),
            "no button for {}: {}",
            u.id,
            page.body
        );
    }
    assert!(page
        .body
        .contains("<button type=\"submit\" name=\"cancel\" value=\"1\">"));

    let params = submit(&mut b, &interaction, ("user", "alice"));
    assert_eq!(param(&params, "state"), Some(login.state.as_str()));
    let code = param(&params, "code").unwrap().to_owned();
    let r = exchange(&idp, &code, &login.verifier);
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["access_token"].is_string());
    assert!(body.get("refresh_token").is_none(), "{body}");
    let token = body["id_token"].as_str().unwrap();

    let auth = format!("Bearer {}", body["access_token"].as_str().unwrap());
    let me = idp.request("GET", "/me", &[("Authorization", &auth)], None);
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["sub"], "alice");
    assert_eq!(me.json()["groups"], serde_json::json!(["twin-operators"]));

    let (header, claims) = jwt_parts(token);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], idp.kid().as_str());
    assert!(signature_ok(&idp, token));
    assert_eq!(claims["iss"], idp.issuer.as_str());
    assert_eq!(claims["aud"], "twinward");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Anders");
    assert_eq!(claims["groups"], serde_json::json!(["twin-operators"]));
    assert_eq!(claims["nonce"], login.nonce.as_str());
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    let iat = claims["iat"].as_i64().unwrap();
    assert!((iat - now()).abs() < 60, "{claims}");
    assert!(claims["exp"].as_i64().unwrap() > now());
    assert_eq!(idp.tokens_issued(), 1);

    // Another user, another browser: their own claims.
    let (_, token) = id_token_for(&idp, "carol");
    let (_, claims) = jwt_parts(&token);
    assert_eq!(claims["sub"], "carol");
    assert_eq!(claims["groups"], serde_json::json!(["marketing"]));
    assert_eq!(idp.tokens_issued(), 2);
}

#[test]
fn a_replayed_code_and_a_wrong_verifier_are_refused() {
    let idp = start();
    let login = Login::new();
    let code = code_for(&idp, &login, "bob");
    let r = exchange(&idp, &code, &login.verifier);
    assert_eq!(r.status, 200, "{}", r.body);
    let replay = exchange(&idp, &code, &login.verifier);
    assert_eq!(replay.status, 400, "{}", replay.body);
    assert_eq!(replay.json()["error"], "invalid_grant");

    let login = Login::new();
    let code = code_for(&idp, &login, "bob");
    let wrong = exchange(&idp, &code, &random_b64url());
    assert_eq!(wrong.status, 400, "{}", wrong.body);
    assert_eq!(wrong.json()["error"], "invalid_grant");
    assert_eq!(idp.tokens_issued(), 1);
}

#[test]
fn pkce_is_required_and_only_s256() {
    let idp = start();
    let login = Login::new();
    let base = [
        ("response_type", "code"),
        ("client_id", idp.client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("scope", SCOPE),
        ("state", login.state.as_str()),
        ("nonce", login.nonce.as_str()),
    ];
    let plain = [
        ("code_challenge", login.verifier.as_str()),
        ("code_challenge_method", "plain"),
    ];
    for extra in [&[][..], &plain[..]] {
        let mut fields = base.to_vec();
        fields.extend_from_slice(extra);
        let r = idp.get(&format!("/auth?{}", form_encode(&fields)));
        assert_eq!(r.status, 303, "{extra:?}: {}", r.body);
        let params = callback_params(r.header("location").unwrap());
        assert_eq!(
            params.get("error").map(String::as_str),
            Some("invalid_request"),
            "{extra:?}: {params:?}"
        );
    }
}

#[test]
fn cancel_ends_the_request_with_access_denied() {
    let idp = start();
    let mut b = Browser::new(&idp);
    let login = Login::new();
    let interaction = begin(&mut b, &login);
    let params = submit(&mut b, &interaction, ("cancel", "1"));
    assert_eq!(param(&params, "error"), Some("access_denied"));
    assert_eq!(param(&params, "state"), Some(login.state.as_str()));
    assert_eq!(param(&params, "code"), None);
}

#[test]
fn a_signed_in_browser_is_signed_in_again_silently_unless_prompt_login() {
    let idp = start();
    let mut b = Browser::new(&idp);
    let first = Login::new();
    let interaction = begin(&mut b, &first);
    submit(&mut b, &interaction, ("user", "dave"));

    // Cookie names of its own: the gateway under test shares the host `localhost`.
    let names: Vec<&str> = b.agent.cookies.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(names.contains(&"idp_session"), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("idp_")), "{names:?}");

    let again = Login::new();
    let r = b.send("GET", &again.authorize_target(&idp, &[]), None);
    assert_eq!(r.status, 303, "{}", r.body);
    let params = callback_params(&b.location(&r));
    assert!(params.contains_key("code"), "{params:?}");

    let r = b.send(
        "GET",
        &again.authorize_target(&idp, &[("prompt", "login")]),
        None,
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(b.location(&r).starts_with("/interaction/"));
}

#[test]
fn tamper_audience_changes_only_the_next_id_token() {
    let idp = start();
    idp.tamper("audience");
    let (_, token) = id_token_for(&idp, "alice");
    let (header, claims) = jwt_parts(&token);
    assert_eq!(claims["aud"], serde_json::json!(["other-client"]));
    assert_eq!(header["kid"], idp.kid().as_str());
    assert!(signature_ok(&idp, &token), "re-signed with the real key");
    assert_eq!(idp.state()["tamper"], "none");

    let (_, token) = id_token_for(&idp, "alice");
    let (_, claims) = jwt_parts(&token);
    assert_eq!(claims["aud"], "twinward");
    assert_eq!(idp.tokens_issued(), 2);
}

#[test]
fn every_tamper_mode_rewrites_its_claim_and_nothing_else() {
    let idp = start();
    let (_, plain) = id_token_for(&idp, "alice");
    let (_, base) = jwt_parts(&plain);
    let ttl = base["exp"].as_i64().unwrap() - base["iat"].as_i64().unwrap();
    let names = |v: &serde_json::Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "azp")
            .cloned()
            .collect()
    };
    for mode in [
        "none",
        "issuer",
        "audience",
        "azp",
        "nonce",
        "expired",
        "iat_future",
        "wrong_key",
        "alg_none",
    ] {
        idp.tamper(mode);
        let (login, token) = id_token_for(&idp, "alice");
        let (header, claims) = jwt_parts(&token);

        // The named claim changed...
        match mode {
            "issuer" => assert_eq!(claims["iss"], "http://evil.localhost:1"),
            "audience" => assert_eq!(claims["aud"], serde_json::json!(["other-client"])),
            "azp" => {
                assert_eq!(
                    claims["aud"],
                    serde_json::json!(["twinward", "other-client"])
                );
                assert_eq!(claims["azp"], "other-client");
            }
            "nonce" => {
                assert!(claims["nonce"].is_string());
                assert_ne!(claims["nonce"], login.nonce.as_str());
            }
            "expired" => {
                let exp = claims["exp"].as_i64().unwrap();
                assert!((exp - (now() - 7200)).abs() < 60, "{claims}");
                assert_eq!(exp - claims["iat"].as_i64().unwrap(), ttl);
            }
            "iat_future" => {
                let iat = claims["iat"].as_i64().unwrap();
                assert!((iat - (now() + 3600)).abs() < 60, "{claims}");
                assert_eq!(claims["exp"].as_i64().unwrap() - iat, ttl);
            }
            _ => {}
        }
        // ...and nothing else did.
        assert_eq!(names(&claims), names(&base), "{mode}: {claims}");
        for k in [
            "sub",
            "email",
            "email_verified",
            "name",
            "preferred_username",
            "groups",
            "amr",
        ] {
            assert_eq!(claims[k], base[k], "{mode}: {k}");
        }
        if mode != "issuer" {
            assert_eq!(claims["iss"], idp.issuer.as_str(), "{mode}");
        }
        if mode != "audience" && mode != "azp" {
            assert_eq!(claims["aud"], "twinward", "{mode}");
        }
        if mode != "azp" {
            assert!(claims.get("azp").is_none(), "{mode}: {claims}");
        }
        if mode != "nonce" {
            assert_eq!(claims["nonce"], login.nonce.as_str(), "{mode}");
        }
        if mode != "expired" && mode != "iat_future" {
            let iat = claims["iat"].as_i64().unwrap();
            assert!((iat - now()).abs() < 60, "{mode}: {claims}");
            assert_eq!(claims["exp"].as_i64().unwrap() - iat, ttl, "{mode}");
        }

        // Signed with the provider's key and kid, except for the two signature attacks.
        assert_eq!(header["kid"], idp.kid().as_str(), "{mode}");
        match mode {
            "wrong_key" => {
                assert_eq!(header["alg"], "RS256");
                assert!(!signature_ok(&idp, &token), "{mode} must not verify");
            }
            "alg_none" => {
                assert_eq!(header["alg"], "none");
                assert!(token.ends_with('.'), "{token}");
                assert!(!signature_ok(&idp, &token));
            }
            _ => {
                assert_eq!(header["alg"], "RS256");
                assert!(signature_ok(&idp, &token), "{mode} must verify");
            }
        }
    }
    assert_eq!(idp.tokens_issued(), 10);
    assert_eq!(idp.state()["tamper"], "none");

    let r = idp.request(
        "POST",
        "/__control/tamper",
        &[("Content-Type", "application/json")],
        Some(r#"{"mode":"sideways"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(idp.state()["tamper"], "none");
}

#[test]
fn rotation_without_the_old_key_serves_only_the_new_kid() {
    let idp = start();
    let (_, before) = id_token_for(&idp, "alice");
    let old = jwt_parts(&before).0["kid"].as_str().unwrap().to_owned();

    // A login that began before the rotation finishes after it.
    let mut b = Browser::new(&idp);
    let login = Login::new();
    let interaction = begin(&mut b, &login);
    let new = idp.rotate(false);
    assert_ne!(new, old);
    assert_eq!(kids(&idp.jwks()), vec![new.clone()]);
    let params = submit(&mut b, &interaction, ("user", "bob"));
    let r = exchange(&idp, param(&params, "code").unwrap(), &login.verifier);
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["id_token"].as_str().unwrap().to_owned();
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["kid"], new.as_str());
    assert_eq!(claims["sub"], "bob");
    assert!(signature_ok(&idp, &token));
    assert!(
        !signature_ok(&idp, &before),
        "the old kid is gone from the JWKS"
    );

    let (_, token) = id_token_for(&idp, "alice");
    assert_eq!(jwt_parts(&token).0["kid"], new.as_str());
}

#[test]
fn rotation_keeping_the_old_key_lists_both_and_signs_with_the_new() {
    let idp = start();
    let old = idp.kid();
    let new = idp.rotate(true);
    assert_eq!(kids(&idp.jwks()), vec![new.clone(), old]);
    let (_, token) = id_token_for(&idp, "alice");
    assert_eq!(jwt_parts(&token).0["kid"], new.as_str());
    assert!(signature_ok(&idp, &token));
}

#[test]
fn a_bad_config_exits_non_zero_with_a_message() {
    let js = js_dir();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"port": 0, "clients": [], "users": []}"#).unwrap();
    for (config, expect) in [(&missing, "cannot read config"), (&bad, "config.clients")] {
        let out = Command::new("node")
            .arg("oidc-idp.mjs")
            .arg(config)
            .current_dir(&js)
            .output()
            .expect("run node");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}
