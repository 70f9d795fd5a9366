//! Path confusion through the real gateway: every request target is sent byte for byte, and
//! each one is either refused with 400 before anything reaches an upstream, or routed with the
//! upstream receiving exactly the normalized path that routing and policy decided on.
//!
//! Three routes, each with its own recording upstream so the test sees which route a request
//! really went to: `/plant-7` (sensitivity 2, the token may use it), `/plant-9` (sensitivity 3,
//! the token may not) and `/other` (sensitivity 1, allowed). Confusions that climb out of
//! `/plant-7` must be decided for wherever they land, never proxied to plant-7.

use crate::common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    Plant7,
    Plant9,
    Other,
}

impl Up {
    fn route(self) -> &'static str {
        match self {
            Up::Plant7 => "plant-7",
            Up::Plant9 => "plant-9",
            Up::Other => "other",
        }
    }
}

#[derive(Debug, Clone)]
enum Expect {
    /// Refused before routing (by the path normalizer or the HTTP parser): 400, no upstream
    /// saw anything.
    BadRequest,
    /// The normalized path matches no route: 404, nothing proxied.
    NotFound,
    /// Routed to plant-9 and denied by policy there: 403 problem+json whose decision is
    /// audited for route plant-9; nothing proxied.
    DeniedPlant9,
    /// Allowed and proxied to this route's upstream, which received exactly this target
    /// (normalized path plus the query as sent).
    Routed(Up, String),
}

struct Case {
    name: &'static str,
    method: &'static str,
    /// Sent byte for byte (so it may hold bytes that are not UTF-8).
    target: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, target: &str, expect: Expect) -> Case {
    Case {
        name,
        method: "GET",
        target: target.as_bytes().to_vec(),
        expect,
    }
}

fn bad(name: &'static str, target: &str) -> Case {
    case(name, target, Expect::BadRequest)
}

fn p7(name: &'static str, target: &str, upstream_sees: &str) -> Case {
    case(
        name,
        target,
        Expect::Routed(Up::Plant7, upstream_sees.to_owned()),
    )
}

fn denied(name: &'static str, target: &str) -> Case {
    case(name, target, Expect::DeniedPlant9)
}

fn not_found(name: &'static str, target: &str) -> Case {
    case(name, target, Expect::NotFound)
}

fn cases() -> Vec<Case> {
    let long_ok = format!("/plant-7/{}", "a".repeat(8192 - "/plant-7/".len()));
    let too_long = format!("/plant-7/{}", "a".repeat(9000));
    vec![
        // Baseline.
        p7("plain", "/plant-7/sensors", "/plant-7/sensors"),
        p7("exact prefix", "/plant-7", "/plant-7"),
        p7("trailing slash kept", "/plant-7/", "/plant-7/"),
        // Dot segments are resolved, and the result is what gets routed and decided.
        p7("single dots", "/plant-7/./a/./b", "/plant-7/a/b"),
        p7("dotdot inside the route", "/plant-7/a/../b", "/plant-7/b"),
        p7("trailing dotdot", "/plant-7/a/b/..", "/plant-7/a/"),
        p7("trailing dot", "/plant-7/.", "/plant-7/"),
        denied("dotdot into plant-9", "/plant-7/../plant-9/x"),
        denied("deeper dotdot into plant-9", "/plant-7/a/../../plant-9/x"),
        denied("double slashes", "//plant-9//x"),
        denied("double slashes before a dotdot", "//plant-7/..//plant-9//x"),
        // `..` after an empty segment: RFC 3986 readers remove the empty segment
        // (`/plant-7/plant-9/x`), slash-merging ones remove `plant-7` (`/plant-9/x`).
        bad("dotdot after a double slash", "//plant-7//..//plant-9//x"),
        bad(
            "dotdot after a dot and a double slash",
            "/plant-7/.//../plant-9/x",
        ),
        p7(
            "double slash, then a dotdot inside",
            "/plant-7//a/../b",
            "/plant-7/b",
        ),
        case(
            "dotdot into the other route",
            "/plant-7/../other/x",
            Expect::Routed(Up::Other, "/other/x".into()),
        ),
        p7(
            "dotdot out of plant-9",
            "/plant-9/../plant-7/x",
            "/plant-7/x",
        ),
        not_found("dotdot to the root", "/plant-7/.."),
        not_found("dotdot to the root, trailing slash", "/plant-7/../"),
        bad("dotdot above the root", "/../plant-7/x"),
        bad("dotdot above the root later", "/plant-7/../../plant-9/x"),
        // Encoded dots forming dot segments are refused, never resolved.
        bad("%2e%2e", "/plant-7/%2e%2e/plant-9/x"),
        bad("%2E%2E", "/plant-7/%2E%2E/plant-9/x"),
        bad("%2e%2E mixed case", "/plant-7/%2e%2E/plant-9/x"),
        bad(".%2e", "/plant-7/.%2e/plant-9/x"),
        bad("%2e.", "/plant-7/%2e./plant-9/x"),
        bad("single %2e", "/plant-7/%2e/x"),
        bad("%2e%2e above the root", "/%2e%2e/plant-7/x"),
        p7(
            "three encoded dots are a name",
            "/plant-7/%2e%2e%2e",
            "/plant-7/...",
        ),
        p7(
            "encoded dot inside a name",
            "/plant-7/file%2Ejson",
            "/plant-7/file.json",
        ),
        // Encoded slashes and backslashes.
        bad("..%2f out of plant-9", "/plant-9/..%2fplant-7"),
        bad("..%2F out of plant-7", "/plant-7/..%2Fplant-9/x"),
        bad("%2f in the prefix", "/plant-7%2f..%2fplant-9"),
        bad("trailing %2F", "/plant-7/x%2F"),
        bad("..%5c", "/plant-7/..%5cplant-9/x"),
        bad("..%5C", "/plant-7/..%5Cplant-9/x"),
        bad("raw backslash", "/plant-7/..\\plant-9\\x"),
        // Path parameters.
        bad("/..;/ into plant-9", "/plant-7/..;/plant-9/x"),
        bad("/..;/ out of plant-9", "/plant-9/..;/plant-7/x"),
        bad(";jsessionid", "/plant-7/x;jsessionid=0123ABCD"),
        bad("%3Bjsessionid", "/plant-7/x%3Bjsessionid=1"),
        // Duplicate slashes.
        p7(
            "double slashes collapse",
            "//plant-7///x//y",
            "/plant-7/x/y",
        ),
        // NUL and control characters (raw ones cannot be sent in an HTTP/1 request line).
        bad("%00", "/plant-7/x%00.json"),
        bad("encoded CRLF", "/plant-7/x%0d%0aX-Injected:%20yes"),
        bad("encoded LF", "/plant-7/x%0A"),
        // Overlong and invalid UTF-8.
        bad("overlong dots %c0%ae", "/plant-7/%c0%ae%c0%ae/plant-9/x"),
        bad("overlong slash %c0%af", "/plant-7/..%c0%afplant-9"),
        bad("overlong slash %e0%80%af", "/plant-7/..%e0%80%afplant-9"),
        bad("invalid byte %ff", "/plant-7/%ff"),
        p7(
            "raw UTF-8 is encoded",
            "/plant-7/caf\u{e9}",
            "/plant-7/caf%C3%A9",
        ),
        Case {
            name: "raw overlong UTF-8 dots",
            method: "GET",
            target: b"/plant-7/\xc0\xae\xc0\xae/plant-9/x".to_vec(),
            expect: Expect::BadRequest,
        },
        Case {
            name: "raw invalid byte 0xff",
            method: "GET",
            target: b"/plant-7/\xff".to_vec(),
            expect: Expect::BadRequest,
        },
        bad("raw DEL", "/plant-7/a\x7fb"),
        // Invalid and double encoding.
        bad("double-encoded dots", "/plant-7/%252e%252e/plant-9"),
        bad("lone %", "/plant-7/%"),
        bad("non-hex escape", "/plant-7/%zz"),
        bad("%u escape", "/plant-7/%u002e%u002e/x"),
        // Canonical encoding: unreserved decoded, reserved kept with uppercase hex.
        p7("%41 decoded", "/plant-7/%41%42c", "/plant-7/ABc"),
        p7(
            "%7e decoded",
            "/plant-7/%7euser/%2D%5f",
            "/plant-7/~user/-_",
        ),
        p7("encoded prefix %37", "/plant-%37/x", "/plant-7/x"),
        denied("encoded prefix %39 is plant-9", "/plant-%39/x"),
        p7("%3a uppercased", "/plant-7/a%3ab", "/plant-7/a%3Ab"),
        p7(
            "reserved escapes kept",
            "/plant-7/a%2c%40%3f",
            "/plant-7/a%2C%40%3F",
        ),
        p7(
            "UTF-8 escapes uppercased",
            "/plant-7/caf%c3%a9",
            "/plant-7/caf%C3%A9",
        ),
        p7(
            "raw characters needing encoding",
            "/plant-7/a\"b{c}|d^e[f]",
            "/plant-7/a%22b%7Bc%7D%7Cd%5Ee%5Bf%5D",
        ),
        bad("raw < refused by the parser", "/plant-7/a<b"),
        // Queries pass untouched, whatever they contain.
        p7(
            "query untouched",
            "/plant-7/x?a=%2e%2e/../plant-9&b=%2f;c=%zz",
            "/plant-7/x?a=%2e%2e/../plant-9&b=%2f;c=%zz",
        ),
        p7(
            "path normalized, query not",
            "/plant-7/./x?q=%41",
            "/plant-7/x?q=%41",
        ),
        // A fragment never reaches the upstream (the HTTP parser drops it before routing).
        p7(
            "fragment dropped",
            "/plant-7/x#/../../plant-9/y",
            "/plant-7/x",
        ),
        // Segment-wise, case-sensitive prefixes.
        not_found("/plant-70 is not /plant-7", "/plant-70/x"),
        not_found("/plant-7x is not /plant-7", "/plant-7x"),
        not_found("uppercase prefix", "/PLANT-7/x"),
        // Request-target forms.
        p7(
            "absolute-form",
            "http://twins.test/plant-7/x?y=1",
            "/plant-7/x?y=1",
        ),
        denied(
            "absolute-form with dotdot",
            "http://twins.test/plant-7/../plant-9/x",
        ),
        // Every request of this table says `Host: twins.test`.
        bad(
            "absolute-form naming another host",
            "http://elsewhere.test/plant-7/x",
        ),
        Case {
            name: "asterisk-form",
            method: "OPTIONS",
            target: b"*".to_vec(),
            expect: Expect::BadRequest,
        },
        bad("asterisk with GET", "*"),
        Case {
            name: "authority-form CONNECT",
            method: "CONNECT",
            target: b"127.0.0.1:80".to_vec(),
            expect: Expect::BadRequest,
        },
        // Length.
        bad("longer than 8192", &too_long),
        p7("exactly 8192", &long_ok, &long_ok),
        // The reserved prefix cannot be used as a stepping stone.
        p7("out of /.twinward", "/.twinward/../plant-7/x", "/plant-7/x"),
        p7(
            "out of a gateway endpoint",
            "/.twinward/jwks.json/../../plant-7/x",
            "/plant-7/x",
        ),
    ]
}

struct Setup {
    up7: Upstream,
    up9: Upstream,
    other: Upstream,
    gw: Gateway,
    token: String,
}

async fn setup() -> Setup {
    let up7 = Upstream::start().await;
    let up9 = Upstream::start().await;
    let other = Upstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            RouteSpec::new("plant-7", "/plant-7", up7.addr, "plant-7", 2),
            RouteSpec::new("plant-9", "/plant-9", up9.addr, "plant-9", 3),
            RouteSpec::new("other", "/other", other.addr, "other", 1),
        ],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    Setup {
        up7,
        up9,
        other,
        gw,
        token,
    }
}

/// Like the harness's `raw`, but the request target is bytes.
fn request(addr: SocketAddr, method: &str, target: &[u8], token: &str) -> RawResponse {
    let mut req = format!("{method} ").into_bytes();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: twins.test\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    let r = raw_bytes(addr, &req).expect("request");
    assert!(
        !r.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")),
        "unexpected chunked response"
    );
    r
}

/// Access audit events the gateway recorded so far.
fn access_events(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.audit()
        .into_iter()
        .filter(|e| e["kind"] == "access")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn path_confusion_table() {
    let s = setup().await;
    let cases = cases();
    assert!(cases.len() >= 35);
    let addr = s.gw.addr;
    let token = s.token.clone();
    let ups = [
        (Up::Plant7, s.up7.seen.clone()),
        (Up::Plant9, s.up9.seen.clone()),
        (Up::Other, s.other.seen.clone()),
    ];
    // (case name, route, path policy must have seen) for allowed requests; (case name,
    // decision id) for denied ones; checked against the audit log afterwards.
    let (failures, allowed, denials) = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        let mut allowed: Vec<(&'static str, &'static str, String)> = Vec::new();
        let mut denials: Vec<(&'static str, String)> = Vec::new();
        for c in &cases {
            let before: Vec<usize> = ups.iter().map(|(_, s)| s.lock().unwrap().len()).collect();
            let r = request(addr, c.method, &c.target, &token);
            let mut new_seen = Vec::new();
            for ((up, seen), n) in ups.iter().zip(&before) {
                for s in seen.lock().unwrap().iter().skip(*n) {
                    new_seen.push((*up, s.target.clone()));
                }
            }
            let shown_target: String = String::from_utf8_lossy(&c.target).chars().take(120).collect();
            let mut fail = |why: String| {
                failures.push(format!(
                    "case {:?}: {} {:?}\n    expected {:?}\n    {why}\n    got {} {:?}; upstreams saw {:?}",
                    c.name,
                    c.method,
                    shown_target,
                    c.expect,
                    r.status,
                    r.body.chars().take(300).collect::<String>(),
                    new_seen
                        .iter()
                        .map(|(u, t)| (u, t.chars().take(120).collect::<String>()))
                        .collect::<Vec<_>>(),
                ))
            };
            match &c.expect {
                Expect::BadRequest | Expect::NotFound | Expect::DeniedPlant9 => {
                    let status = match c.expect {
                        Expect::BadRequest => 400,
                        Expect::NotFound => 404,
                        _ => 403,
                    };
                    if r.status != status {
                        fail(format!("status {} instead of {status}", r.status));
                    } else if !new_seen.is_empty() {
                        fail("an upstream received a refused request".into());
                    } else if r.header("x-upstream").is_some() {
                        fail("the response came from an upstream".into());
                    } else if matches!(c.expect, Expect::DeniedPlant9) {
                        match (r.header("content-type"), r.json()["decision_id"].as_str()) {
                            (Some("application/problem+json"), Some(id)) => {
                                denials.push((c.name, id.to_owned()))
                            }
                            other => fail(format!("not problem+json with a decision_id: {other:?}")),
                        }
                    }
                }
                Expect::Routed(up, target) => {
                    let want = vec![(*up, target.clone())];
                    if r.status != 200 {
                        fail(format!("status {} instead of 200", r.status));
                    } else if new_seen != want {
                        fail(format!(
                            "the {:?} upstream should have received exactly {:?}",
                            up,
                            target.chars().take(120).collect::<String>()
                        ));
                    } else if r.json()["target"] != target.as_str() {
                        fail("the echoed target differs".into());
                    } else {
                        let path = target.split('?').next().unwrap_or_default().to_owned();
                        allowed.push((c.name, up.route(), path));
                    }
                }
            }
        }
        (failures, allowed, denials)
    })
    .await
    .unwrap();
    assert!(
        failures.is_empty(),
        "{} path case(s) failed:\n{}\ngateway log tail:\n{}",
        failures.len(),
        failures.join("\n"),
        s.gw.log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The decision was made for the normalized path and route the upstream received: every
    // allowed case has an audited allow on that route for that exact path, and every denial
    // was decided on plant-9.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = access_events(&s.gw);
        let missing_allow: Vec<_> = allowed
            .iter()
            .filter(|(_, route, path)| {
                !events.iter().any(|e| {
                    e["outcome"] == "allow"
                        && e["route"] == *route
                        && e["detail"]["path"] == path.as_str()
                })
            })
            .map(|(name, route, path)| {
                format!(
                    "{name}: no allow on {route} for {}",
                    path.chars().take(80).collect::<String>()
                )
            })
            .collect();
        let bad_denials: Vec<_> = denials
            .iter()
            .filter(|(_, id)| {
                !events.iter().any(|e| {
                    e["event_id"] == id.as_str()
                        && e["outcome"] == "deny"
                        && e["route"] == "plant-9"
                })
            })
            .map(|(name, id)| format!("{name}: decision {id} is not a plant-9 deny"))
            .collect();
        if missing_allow.is_empty() && bad_denials.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit does not match what was proxied:\n{}\n{}",
            missing_allow.join("\n"),
            bad_denials.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_normalizing_into_the_reserved_prefix_are_served_by_the_gateway() {
    let s = setup().await;
    let addr = s.gw.addr;
    let token = s.token.clone();
    let results = tokio::task::spawn_blocking(move || {
        [
            "/plant-7/../.twinward/jwks.json",
            "/plant-7/x/../../.twinward/./jwks.json",
            "//plant-9/..//.twinward//jwks.json",
            "/other/../.well-known/jwks.json",
        ]
        .map(|t| {
            (
                t,
                request(addr, "GET", t.as_bytes(), &token),
                get(addr, t, None, &[]),
            )
        })
    })
    .await
    .unwrap();
    for (target, with_token, without) in &results {
        for r in [with_token, without] {
            assert_eq!(r.status, 200, "{target}: {}", r.body);
            assert!(r.header("x-upstream").is_none(), "{target} was proxied");
            let keys = r.json()["keys"].as_array().cloned().unwrap_or_default();
            assert!(
                !keys.is_empty() && keys.iter().all(|k| k["kid"].is_string()),
                "{target}: not the gateway's JWKS: {}",
                r.body
            );
        }
    }
    // Other gateway endpoints too: forward-auth answers itself (an untrusted peer gets its
    // own 403), even when the path started inside a route.
    let r = tokio::task::spawn_blocking(move || {
        get(
            addr,
            "/plant-7/../.twinward/verify",
            None,
            &[("Accept", "application/json")],
        )
    })
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("forward-auth"), "{}", r.body);
    assert!(r.header("x-upstream").is_none());
    assert_eq!(
        s.up7.count() + s.up9.count() + s.other.count(),
        0,
        "a request for the gateway's own endpoints reached an upstream"
    );
}

/// Host confusion: a request names its host in `Host`, and may name it again in an
/// absolute-form target (HTTP/1.1) or `:authority` (HTTP/2). Where it does, the two must
/// agree, or the request is refused before routing: a hop that reads the other one would
/// route or authorize another request. Where the target alone names it (HTTP/2 without
/// `Host`), that is the host routing, policy and forwarding use.
///
/// `/plant-7` is routed by host: on `twins.test` to one upstream, on any other host to
/// another, so the test sees which host a request was routed by.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_is_read_from_one_place_and_two_that_disagree_are_refused() {
    let on_host = Upstream::start().await;
    let elsewhere = Upstream::start().await;
    let mut bound = RouteSpec::new("plant-7-twins", "/plant-7", on_host.addr, "plant-7", 2);
    bound.host = Some("twins.test");
    let gw = Gateway::start(GatewayOptions {
        routes: vec![
            bound,
            RouteSpec::new("plant-7", "/plant-7", elsewhere.addr, "plant-7", 2),
        ],
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let addr = gw.addr;
    let port = addr.port();
    let send = |target: String, host: String| {
        let t = token.clone();
        blocking(move || {
            raw(
                addr,
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\n\
                     Accept: application/json\r\nConnection: close\r\n\r\n"
                ),
            )
            .expect("request")
        })
    };

    // An absolute-form target whose authority is the Host: routed by that host.
    let r = send(
        format!("http://twins.test:{port}/plant-7/a"),
        format!("twins.test:{port}"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = on_host.last().expect("the twins.test upstream was reached");
    assert_eq!(seen.target, "/plant-7/a");
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(&*format!("twins.test:{port}"))
    );

    for (target, host, says) in [
        // Routed by the target, the request would reach twins.test's twin; a hop
        // reading `Host` would have taken it for a request to another host.
        (
            format!("http://twins.test:{port}/plant-7/b"),
            format!("elsewhere.test:{port}"),
            "another host",
        ),
        (
            format!("http://elsewhere.test:{port}/plant-7/b"),
            format!("twins.test:{port}"),
            "another host",
        ),
        (
            "http://twins.test/plant-7/b".to_owned(),
            format!("twins.test:{port}"),
            "another host",
        ),
        (
            format!("http://gw@twins.test:{port}/plant-7/b"),
            format!("twins.test:{port}"),
            "authority is not a host",
        ),
    ] {
        let r = send(target.clone(), host.clone()).await;
        assert_eq!(r.status, 400, "{target} with Host {host}: {}", r.body);
        assert!(
            r.body.contains(says),
            "{target} with Host {host}: {}",
            r.body
        );
        assert_eq!(r.header("connection"), Some("close"), "{target}");
    }

    // HTTP/2: the host comes in `:authority`, with no `Host` beside it.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("twins.test", addr)
        .build()
        .unwrap();
    let url = format!("http://twins.test:{port}/plant-7/c");
    let r = h2.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = on_host.last().unwrap();
    assert_eq!(seen.target, "/plant-7/c");
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(&*format!("twins.test:{port}"))
    );
    // And with a `Host` that names another.
    let r = h2
        .get(&url)
        .bearer_auth(&token)
        .header("host", format!("elsewhere.test:{port}"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("another host"));

    assert_eq!(
        on_host.count(),
        2,
        "only the two agreeing requests on twins.test"
    );
    assert_eq!(elsewhere.count(), 0, "nothing was routed by the other host");
}
