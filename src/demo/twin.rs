//! The demo twin service: two plants (`plant-7`, `plant-9`) behind the gateway. It is the
//! far end of the request flow and shows what a twin learns from twinward: only the
//! credential the gateway signed, verified against the gateway's JWKS.
//!
//! INVARIANT: nothing here trusts the caller's network address or any header but a
//! verified credential. The twin must never learn the user's company identity; the page
//! says so, and it can only show what the credential carries.

use super::pages::{Pages, STRICT_CSP};
use super::{lock, loopback_addr, DemoError};
use crate::clock::{Clock, Timestamp};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::Router;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::f64::consts::TAU;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tracing::instrument;

/// The header the gateway puts its credential in.
const ASSERTION_HEADER: &str = "x-twinward-assertion";
/// An unknown key id triggers a JWKS fetch at most this often, so forged tokens with random
/// key ids cannot make the twin hammer the gateway.
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Tolerated clock difference between gateway and twin for `exp` and `nbf`.
const CLOCK_SKEW_SECS: i64 = 30;
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted setpoints, in °C.
const SETPOINT_RANGE: std::ops::RangeInclusive<f64> = 20.0..=120.0;
/// Time constant of the temperature's approach to a new setpoint.
const THERMAL_LAG_SECS: f64 = 30.0;

/// Whom the twin trusts: the gateway's JWKS and credential issuer.
#[derive(Debug, Clone)]
pub struct TwinTrust {
    /// e.g. `http://127.0.0.1:8443/.well-known/jwks.json`
    pub jwks_url: String,
    /// The `iss` of the gateway's credentials.
    pub issuer: String,
}

/// Serves the demo twin on `listener` until the task is dropped. Refuses a listener that is
/// not on loopback.
pub async fn serve_twin(
    listener: tokio::net::TcpListener,
    gateway: TwinTrust,
    clock: Arc<dyn Clock>,
) -> Result<(), DemoError> {
    loopback_addr(&listener)?;
    let twin = Twin::new(gateway, clock)?;
    axum::serve(listener, router(Arc::new(twin))).await?;
    Ok(())
}

struct Plant {
    name: &'static str,
    title: &'static str,
    base_rpm: f64,
    default_setpoint: f64,
    /// Offsets the plants' waves so they do not move in lockstep.
    phase: f64,
}

static PLANTS: [Plant; 2] = [
    Plant {
        name: "plant-7",
        title: "Plant 7",
        base_rpm: 1500.0,
        default_setpoint: 72.0,
        phase: 0.0,
    },
    Plant {
        name: "plant-9",
        title: "Plant 9",
        base_rpm: 3000.0,
        default_setpoint: 65.0,
        phase: 1.7,
    },
];

fn find_plant(name: &str) -> Option<&'static Plant> {
    PLANTS.iter().find(|p| p.name == name)
}

#[derive(Debug, Clone)]
struct Setpoint {
    value: f64,
    /// Temperature when the setpoint last changed; the reading moves from it to `value`.
    previous: f64,
    changed_at: Timestamp,
    changed_by: Option<String>,
}

impl Setpoint {
    fn initial(plant: &Plant) -> Self {
        Setpoint {
            value: plant.default_setpoint,
            previous: plant.default_setpoint,
            changed_at: Timestamp::EPOCH,
            changed_by: None,
        }
    }

    /// First-order lag towards the setpoint, as a heated vessel approaches its target.
    fn temperature_trend(&self, now: Timestamp) -> f64 {
        let since = now.saturating_since(self.changed_at).as_secs_f64();
        self.value + (self.previous - self.value) * (-since / THERMAL_LAG_SECS).exp()
    }
}

#[derive(Debug, Serialize)]
struct Telemetry {
    plant: &'static str,
    time: String,
    turbine_rpm: f64,
    temperature_c: f64,
    pressure_bar: f64,
    setpoint_c: f64,
    setpoint_changed_by: Option<String>,
    /// The pseudonymous subject of the credential: all the twin knows of the caller.
    seen_subject: String,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Readings as a smooth, deterministic function of time and the setpoint.
fn readings(plant: &'static Plant, sp: &Setpoint, now: Timestamp, subject: &str) -> Telemetry {
    let t = now.since_epoch().as_secs_f64();
    let wave = |period: f64| (t / period * TAU + plant.phase).sin();
    let trend = sp.temperature_trend(now);
    Telemetry {
        plant: plant.name,
        time: now.to_rfc3339(),
        turbine_rpm: round_to(plant.base_rpm + 35.0 * wave(47.0) + 8.0 * wave(13.0), 0),
        temperature_c: round_to(trend + 0.4 * wave(90.0), 1),
        pressure_bar: round_to(4.2 + 0.15 * wave(120.0) + 0.02 * (trend - 70.0), 2),
        setpoint_c: sp.value,
        setpoint_changed_by: sp.changed_by.clone(),
        seen_subject: subject.to_owned(),
    }
}

/// Why a request carries no usable credential. Shown to the caller: the demo explains itself.
#[derive(Debug, thiserror::Error)]
enum AssertionError {
    #[error(
        "the request has no X-Twinward-Assertion header, so it did not come through the gateway"
    )]
    Missing,
    #[error("the assertion is not a well-formed JWT")]
    Malformed,
    #[error("the assertion names no signing key (kid)")]
    NoKeyId,
    #[error("the assertion was signed with key {kid:?}, which the gateway does not publish")]
    UnknownKey { kid: String },
    #[error("the gateway's keys could not be fetched: {0}")]
    KeyFetch(String),
    #[error("the assertion's algorithm is not the one of the gateway key it names")]
    AlgorithmMismatch,
    #[error("the assertion does not verify: {0}")]
    Invalid(String),
    #[error("the assertion was issued by {0:?}, not by the gateway")]
    WrongIssuer(String),
    #[error("the assertion is for {0:?}, not for this plant")]
    WrongAudience(String),
    #[error("the assertion has expired")]
    Expired,
    #[error("the assertion is not valid yet")]
    NotYetValid,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn values(&self) -> &[String] {
        match self {
            Audience::One(a) => std::slice::from_ref(a),
            Audience::Many(v) => v,
        }
    }
}

/// The claims of a gateway credential the twin uses.
#[derive(Debug, Deserialize)]
struct Assertion {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    nbf: Option<i64>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    amr: Vec<String>,
    twin: Option<String>,
}

impl Assertion {
    fn allows(&self, action: &str) -> bool {
        self.scope.split(' ').any(|s| s == action)
    }
}

/// The route names a plant answers to: the plant itself or `<plant>-<anything>`
/// (`plant-7-telemetry`), but not `plant-70`.
fn audience_matches(aud: &str, plant: &str) -> bool {
    aud.strip_prefix(plant)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The gateway's public keys by kid, fetched on demand.
struct GatewayKeys {
    url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Arc<VerifyKey>>>,
    /// When the JWKS was last fetched. Held across a fetch, so concurrent requests with an
    /// unknown kid wait for one fetch instead of each starting their own.
    last_fetch: tokio::sync::Mutex<Option<Timestamp>>,
}

impl GatewayKeys {
    fn new(url: String) -> Result<Self, DemoError> {
        // The gateway is on loopback: a proxy from the environment must not be asked.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(JWKS_TIMEOUT)
            .build()?;
        Ok(GatewayKeys {
            url,
            http,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    fn cached(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(kid)
            .cloned()
    }

    async fn key(&self, kid: &str, now: Timestamp) -> Result<Arc<VerifyKey>, AssertionError> {
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        let mut last = self.last_fetch.lock().await;
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        let unknown = || AssertionError::UnknownKey {
            kid: kid.to_owned(),
        };
        if last.is_some_and(|t| now.saturating_since(t) < REFETCH_INTERVAL) {
            return Err(unknown());
        }
        *last = Some(now);
        let doc = self.fetch().await?;
        // Replaced, not merged: a key the gateway stopped publishing stops verifying.
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = parse_jwks(&doc);
        self.cached(kid).ok_or_else(unknown)
    }

    async fn fetch(&self) -> Result<serde_json::Value, AssertionError> {
        let fail = |e: reqwest::Error| AssertionError::KeyFetch(e.to_string());
        self.http
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fail)?
            .json()
            .await
            .map_err(fail)
    }
}

/// The Ed25519 and P-256 signing keys of a JWKS; anything else is skipped.
fn parse_jwks(doc: &serde_json::Value) -> HashMap<String, Arc<VerifyKey>> {
    let mut out = HashMap::new();
    let Some(keys) = doc.get("keys").and_then(serde_json::Value::as_array) else {
        return out;
    };
    for k in keys {
        let s = |name: &str| k.get(name).and_then(serde_json::Value::as_str);
        let Some(kid) = s("kid") else { continue };
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let parsed = match (s("kty"), s("crv"), s("x"), s("y")) {
            (Some("OKP"), Some("Ed25519"), Some(x), _) => {
                DecodingKey::from_ed_components(x).map(|key| (Algorithm::EdDSA, "EdDSA", key))
            }
            (Some("EC"), Some("P-256"), Some(x), Some(y)) => {
                DecodingKey::from_ec_components(x, y).map(|key| (Algorithm::ES256, "ES256", key))
            }
            _ => continue,
        };
        let Ok((alg, alg_name, key)) = parsed else {
            continue;
        };
        if s("alg").is_some_and(|a| a != alg_name) {
            continue;
        }
        out.insert(kid.to_owned(), Arc::new(VerifyKey { alg, key }));
    }
    out
}

/// The credential the request presents: the gateway's header, or a bearer token when the
/// route is configured to send it as `Authorization`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(ASSERTION_HEADER) {
        // A header that is not text is not a credential; it fails as malformed.
        return Some(v.to_str().unwrap_or_default());
    }
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

struct Twin {
    trust: TwinTrust,
    keys: GatewayKeys,
    clock: Arc<dyn Clock>,
    pages: Pages,
    setpoints: Mutex<HashMap<&'static str, Setpoint>>,
}

impl Twin {
    fn new(trust: TwinTrust, clock: Arc<dyn Clock>) -> Result<Self, DemoError> {
        Ok(Twin {
            keys: GatewayKeys::new(trust.jwks_url.clone())?,
            trust,
            clock,
            pages: Pages::new()?,
            setpoints: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies the request's credential for `plant`: signature by a gateway key, issuer,
    /// audience, lifetime.
    #[instrument(skip_all, fields(plant = %plant))]
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        plant: &str,
    ) -> Result<Assertion, AssertionError> {
        let token = presented(headers).ok_or(AssertionError::Missing)?;
        let now = self.clock.now();
        let header = jsonwebtoken::decode_header(token).map_err(|_| AssertionError::Malformed)?;
        let kid = header.kid.ok_or(AssertionError::NoKeyId)?;
        let key = self.keys.key(&kid, now).await?;
        // INVARIANT: the algorithm comes from the gateway's key, never from the token alone.
        if header.alg != key.alg {
            return Err(AssertionError::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.alg);
        // Lifetime is checked below against the injected clock, the audience by prefix.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Assertion>(token, &key.key, &validation)
            .map_err(|e| AssertionError::Invalid(e.to_string()))?
            .claims;
        if claims.iss != self.trust.issuer {
            return Err(AssertionError::WrongIssuer(claims.iss));
        }
        if !claims
            .aud
            .values()
            .iter()
            .any(|a| audience_matches(a, plant))
        {
            return Err(AssertionError::WrongAudience(claims.aud.values().join(" ")));
        }
        let now = now.unix_secs();
        if now >= claims.exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(AssertionError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECS))
        {
            return Err(AssertionError::NotYetValid);
        }
        Ok(claims)
    }

    fn telemetry(&self, plant: &'static Plant, subject: &str, now: Timestamp) -> Telemetry {
        let sp = lock(&self.setpoints)
            .get(plant.name)
            .cloned()
            .unwrap_or_else(|| Setpoint::initial(plant));
        readings(plant, &sp, now, subject)
    }

    fn set_setpoint(&self, plant: &'static Plant, value: f64, subject: &str, now: Timestamp) {
        let mut map = lock(&self.setpoints);
        let sp = map
            .entry(plant.name)
            .or_insert_with(|| Setpoint::initial(plant));
        // The new approach starts where the temperature is now, so the curve stays smooth.
        *sp = Setpoint {
            value,
            previous: sp.temperature_trend(now),
            changed_at: now,
            changed_by: Some(subject.to_owned()),
        };
    }
}

fn router(twin: Arc<Twin>) -> Router {
    Router::new()
        .route("/{plant}", get(page))
        .route("/{plant}/", get(page))
        .route("/{plant}/api/telemetry", get(telemetry))
        .route("/{plant}/api/setpoint", post(setpoint))
        .fallback(not_found)
        .with_state(twin)
}

fn json_error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"error": error, "message": message.into()})),
    )
        .into_response()
}

async fn not_found(State(twin): State<Arc<Twin>>) -> Response {
    twin.pages.render(
        "error.html",
        StatusCode::NOT_FOUND,
        STRICT_CSP,
        minijinja::context! {
            title => "No such twin",
            detail => "This demo twin serves /plant-7/ and /plant-9/ only.",
            banner => false,
        },
    )
}

/// What the page shows of a verified credential.
#[derive(Serialize)]
struct ClaimsView {
    sub: String,
    roles: Vec<String>,
    scope: String,
    amr: Vec<String>,
    twin: String,
    aud: String,
    iss: String,
    exp: String,
    expires_in: i64,
}

/// `GET /<plant>/`: who the twin thinks you are.
async fn page(
    State(twin): State<Arc<Twin>>,
    Path(plant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(plant) = find_plant(&plant) else {
        return not_found(State(twin)).await;
    };
    let (status, claims, telemetry, reason) = match twin.authenticate(&headers, plant.name).await {
        Ok(a) => {
            let now = twin.clock.now();
            let telemetry = twin.telemetry(plant, &a.sub, now);
            let view = ClaimsView {
                expires_in: a.exp.saturating_sub(now.unix_secs()).max(0),
                exp: Timestamp::from_unix_secs(a.exp).to_rfc3339(),
                aud: a.aud.values().join(" "),
                twin: a.twin.unwrap_or_default(),
                sub: a.sub,
                roles: a.roles,
                scope: a.scope,
                amr: a.amr,
                iss: a.iss,
            };
            (StatusCode::OK, Some(view), Some(telemetry), None)
        }
        Err(e) => (StatusCode::UNAUTHORIZED, None, None, Some(e.to_string())),
    };
    twin.pages.render(
        "twin.html",
        status,
        STRICT_CSP,
        minijinja::context! {
            plant => plant.name,
            plant_title => plant.title,
            claims,
            telemetry,
            reason,
        },
    )
}

/// `GET /<plant>/api/telemetry`
async fn telemetry(
    State(twin): State<Arc<Twin>>,
    Path(plant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(plant) = find_plant(&plant) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such plant");
    };
    match twin.authenticate(&headers, plant.name).await {
        Ok(a) => Json(twin.telemetry(plant, &a.sub, twin.clock.now())).into_response(),
        Err(e) => json_error(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetpointBody {
    value: f64,
}

/// `POST /<plant>/api/setpoint` with `{"value": <°C>}`.
async fn setpoint(
    State(twin): State<Arc<Twin>>,
    Path(plant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(plant) = find_plant(&plant) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "no such plant");
    };
    let a = match twin.authenticate(&headers, plant.name).await {
        Ok(a) => a,
        Err(e) => return json_error(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
    };
    // Policy at the gateway decides; the twin still refuses a credential that does not say so.
    if !a.allows("write") {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the gateway's credential does not allow write on this twin",
        );
    }
    let value = match serde_json::from_slice::<SetpointBody>(&body) {
        Ok(b) => b.value,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_setpoint",
                format!("expected a JSON object {{\"value\": <number>}}: {e}"),
            )
        }
    };
    if !SETPOINT_RANGE.contains(&value) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_setpoint",
            format!(
                "value {value} is outside {} to {} °C",
                SETPOINT_RANGE.start(),
                SETPOINT_RANGE.end()
            ),
        );
    }
    twin.set_setpoint(plant, value, &a.sub, twin.clock.now());
    Json(serde_json::json!({
        "plant": plant.name,
        "setpoint_c": value,
        "changed_by": a.sub,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use axum::body::Body;
    use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
    use axum::http::Request;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    const ISSUER: &str = "http://localhost:8443";
    const T0: u64 = 1_700_000_000;

    struct TestKey {
        kid: String,
        pair: Ed25519KeyPair,
    }

    impl TestKey {
        fn new(kid: &str) -> Self {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            TestKey {
                kid: kid.to_owned(),
                pair: Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
            }
        }

        fn jwk(&self) -> serde_json::Value {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "kid": self.kid, "alg": "EdDSA", "use": "sig",
                "x": B64.encode(self.pair.public_key().as_ref()),
            })
        }

        fn sign(&self, claims: &serde_json::Value) -> String {
            let header = serde_json::json!({"alg": "EdDSA", "kid": self.kid, "typ": "JWT"});
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let sig = self.pair.sign(input.as_bytes());
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }
    }

    fn claims(aud: &str, scope: &str) -> serde_json::Value {
        let now = T0 as i64;
        serde_json::json!({
            "iss": ISSUER, "sub": "pseudo-7f3a", "aud": aud, "exp": now + 300, "iat": now,
            "nbf": now, "jti": "j1", "scope": scope, "roles": ["twin-operator"],
            "amr": ["oidc", "webauthn"], "twin": "plant-7",
        })
    }

    /// A JWKS stub on loopback that counts its fetches.
    async fn jwks_stub(keys: Vec<serde_json::Value>) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let doc = serde_json::json!({ "keys": keys });
        let app = Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/.well-known/jwks.json"), hits)
    }

    async fn twin_app(key: &TestKey) -> (Router, Arc<ManualClock>, Arc<AtomicUsize>) {
        let (url, hits) = jwks_stub(vec![key.jwk()]).await;
        let clock = Arc::new(ManualClock::at(T0));
        let trust = TwinTrust {
            jwks_url: url,
            issuer: ISSUER.into(),
        };
        let twin = Twin::new(trust, clock.clone()).unwrap();
        (router(Arc::new(twin)), clock, hits)
    }

    async fn send(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(ASSERTION_HEADER, t);
        }
        let req = req
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn page_shows_the_subject_of_a_valid_assertion() {
        let key = TestKey::new("gw-1");
        let (app, _clock, _hits) = twin_app(&key).await;
        let token = key.sign(&claims("plant-7-telemetry", "read"));
        for path in ["/plant-7/", "/plant-7"] {
            let (status, headers, body) = send(&app, "GET", path, Some(&token), "").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body.contains("Plant 7 digital twin"));
            assert!(body.contains("pseudo-7f3a"));
            assert!(body.contains("never sees your company identity"));
            assert!(body.contains("twin-operator"));
            assert!(body.contains("webauthn"));
            assert!(body.contains("Turbine speed"));
            assert!(body.contains(r#"name="viewport""#));
            assert!(!body.contains("<script"));
            let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.starts_with("default-src 'none'"), "{csp}");
        }

        let (status, _, body) = send(&app, "GET", "/plant-7/api/telemetry", Some(&token), "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let t: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(t["seen_subject"], "pseudo-7f3a");
        assert_eq!(t["plant"], "plant-7");
        assert_eq!(t["setpoint_c"], 72.0);

        // The bearer form is accepted too.
        let req = Request::get("/plant-7/api/telemetry")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            app.clone().oneshot(req).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn forged_missing_and_misdirected_assertions_get_401() {
        let key = TestKey::new("gw-1");
        let (app, clock, _hits) = twin_app(&key).await;

        let (status, _, body) = send(&app, "GET", "/plant-7/", None, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("did not come through the gateway"), "{body}");
        assert!(!body.contains("pseudo-7f3a"));

        // Same kid, another key: the signature does not verify.
        let forger = TestKey::new("gw-1");
        let forged = forger.sign(&claims("plant-7", "read write"));
        let (status, _, body) = send(&app, "GET", "/plant-7/", Some(&forged), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!body.contains("pseudo-7f3a"), "{body}");
        let (status, _, _) = send(&app, "GET", "/plant-7/api/telemetry", Some(&forged), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let mut wrong_iss = claims("plant-7", "read");
        wrong_iss["iss"] = "http://evil.example".into();
        let other_plant = claims("plant-9", "read");
        let lookalike = claims("plant-70", "read");
        for (case, c) in [
            ("issuer", wrong_iss),
            ("other plant", other_plant),
            ("lookalike", lookalike),
        ] {
            let (status, _, body) = send(&app, "GET", "/plant-7/", Some(&key.sign(&c)), "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        }
        let (status, _, _) = send(&app, "GET", "/plant-7/", Some("not.a.jwt"), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Valid now, expired after its lifetime (and the skew).
        let token = key.sign(&claims("plant-7", "read"));
        assert_eq!(
            send(&app, "GET", "/plant-7/", Some(&token), "").await.0,
            StatusCode::OK
        );
        clock.advance(Duration::from_secs(330));
        let (status, _, body) = send(&app, "GET", "/plant-7/", Some(&token), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("expired"), "{body}");
    }

    #[tokio::test]
    async fn unknown_key_ids_refetch_the_jwks_at_most_every_ten_seconds() {
        let key = TestKey::new("gw-1");
        let (app, clock, hits) = twin_app(&key).await;
        let token = key.sign(&claims("plant-7", "read"));
        assert_eq!(
            send(&app, "GET", "/plant-7/", Some(&token), "").await.0,
            StatusCode::OK
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Cached: no fetch for a known kid.
        send(&app, "GET", "/plant-7/", Some(&token), "").await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        let stranger = TestKey::new("gw-2").sign(&claims("plant-7", "read"));
        for _ in 0..3 {
            let (status, _, body) = send(&app, "GET", "/plant-7/", Some(&stranger), "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(body.contains("does not publish"), "{body}");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "within ten seconds of the last fetch"
        );
        clock.advance(REFETCH_INTERVAL);
        send(&app, "GET", "/plant-7/", Some(&stranger), "").await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn setpoint_writes_are_validated_and_reflected_in_telemetry() {
        let key = TestKey::new("gw-1");
        let (app, clock, _hits) = twin_app(&key).await;
        let writer = key.sign(&claims("plant-9", "read write"));
        let reader = key.sign(&claims("plant-9", "read"));
        let uri = "/plant-9/api/setpoint";

        let (status, _, body) = send(&app, "POST", uri, Some(&reader), r#"{"value": 70}"#).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _, _) = send(&app, "POST", uri, None, r#"{"value": 70}"#).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        for bad in [
            "",
            "70",
            "{}",
            r#"{"value": "70"}"#,
            r#"{"value": 70, "unit": "F"}"#,
            r#"{"value": 500}"#,
            r#"{"value": -1e308}"#,
        ] {
            let (status, _, body) = send(&app, "POST", uri, Some(&writer), bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            let e: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(e["error"], "invalid_setpoint", "{bad}");
            assert!(!e["message"].as_str().unwrap().is_empty());
        }

        let (status, _, body) = send(&app, "POST", uri, Some(&writer), r#"{"value": 80.5}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let before = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap() };
        let t = before(
            &send(&app, "GET", "/plant-9/api/telemetry", Some(&reader), "")
                .await
                .2,
        );
        assert_eq!(t["setpoint_c"], 80.5);
        assert_eq!(t["setpoint_changed_by"], "pseudo-7f3a");
        let start = t["temperature_c"].as_f64().unwrap();
        assert!(
            (start - 65.0).abs() < 1.0,
            "starts near the old setpoint: {start}"
        );
        clock.advance(Duration::from_secs(300));
        let t = before(
            &send(&app, "GET", "/plant-9/api/telemetry", Some(&reader), "")
                .await
                .2,
        );
        let later = t["temperature_c"].as_f64().unwrap();
        assert!(
            (later - 80.5).abs() < 1.0,
            "settles near the new one: {later}"
        );

        // The other plant is untouched.
        let other = key.sign(&claims("plant-7", "read"));
        let t = before(
            &send(&app, "GET", "/plant-7/api/telemetry", Some(&other), "")
                .await
                .2,
        );
        assert_eq!(t["setpoint_c"], 72.0);
    }

    #[tokio::test]
    async fn unknown_plants_are_404() {
        let key = TestKey::new("gw-1");
        let (app, _clock, _hits) = twin_app(&key).await;
        let token = key.sign(&claims("plant-8", "read write"));
        for (method, uri) in [
            ("GET", "/plant-8/"),
            ("GET", "/plant-8/api/telemetry"),
            ("POST", "/plant-8/api/setpoint"),
            ("GET", "/"),
            ("GET", "/plant-7/other"),
        ] {
            let (status, _, _) = send(&app, method, uri, Some(&token), r#"{"value": 70}"#).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}");
        }
    }

    #[test]
    fn telemetry_is_a_smooth_function_of_time() {
        let plant = find_plant("plant-7").unwrap();
        let sp = Setpoint::initial(plant);
        let t = Timestamp::from_unix_secs(T0 as i64);
        let a = readings(plant, &sp, t, "s");
        let b = readings(plant, &sp, t, "s");
        assert_eq!(a.turbine_rpm, b.turbine_rpm, "deterministic");
        let c = readings(plant, &sp, t.saturating_add(Duration::from_secs(1)), "s");
        assert!((a.turbine_rpm - c.turbine_rpm).abs() < 15.0);
        assert!((a.temperature_c - c.temperature_c).abs() < 0.2);
        assert!((a.temperature_c - 72.0).abs() <= 0.5);
    }

    /// Credentials from the gateway's own minter, for both of its algorithms, verify here.
    #[tokio::test]
    async fn credentials_minted_by_the_gateway_verify() {
        use crate::config::SigningAlgorithm;
        use crate::credentials::{jwks, keys, CredentialRequest, Minter};
        for alg in [SigningAlgorithm::EdDsa, SigningAlgorithm::Es256] {
            let dir = tempfile::tempdir().unwrap();
            let t0 = Timestamp::from_unix_secs(T0 as i64);
            let timing = keys::KeyTiming {
                activation_delay: Duration::ZERO,
                overlap: Duration::from_secs(3600),
            };
            let ring = keys::load(dir.path(), alg, timing, t0, true).unwrap();
            let minter = Minter::new(ISSUER.into(), Duration::from_secs(300), ring);
            let doc = jwks::document(&minter.keys());
            let (url, _hits) = jwks_stub(doc["keys"].as_array().unwrap().clone()).await;
            let trust = TwinTrust {
                jwks_url: url,
                issuer: ISSUER.into(),
            };
            let app = router(Arc::new(
                Twin::new(trust, Arc::new(ManualClock::at(T0))).unwrap(),
            ));
            let roles = vec!["twin-viewer".to_owned()];
            let req = CredentialRequest {
                cache_key: "s1",
                subject: "pseudo-minted",
                audience: "plant-9",
                twin: "plant-9",
                roles: &roles,
                amr: &["oidc"],
                generation: 1,
                not_after: None,
            };
            let cred = minter.mint(&req, "read", t0).unwrap();
            let (status, _, body) = send(&app, "GET", "/plant-9/", Some(&cred.token), "").await;
            assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
            assert!(body.contains("pseudo-minted"), "{alg:?}");
        }
    }

    #[test]
    fn audience_prefix_rule() {
        assert!(audience_matches("plant-7", "plant-7"));
        assert!(audience_matches("plant-7-telemetry", "plant-7"));
        assert!(!audience_matches("plant-70", "plant-7"));
        assert!(!audience_matches("xplant-7", "plant-7"));
        assert!(!audience_matches("plant", "plant-7"));
    }
}
