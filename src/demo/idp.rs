//! The demo OpenID provider: authorization code flow with PKCE (S256) for one confidential
//! client, three built-in users and no passwords. The browser meets it when the gateway
//! sends it to sign in; the gateway meets it at discovery, the token endpoint and the JWKS.
//!
//! It exists so `twinward demo` needs no real identity provider. It must never be used to
//! protect anything: whoever reaches it can sign in as any demo user, which is why it
//! serves loopback only and says so on every page.

use super::pages::{Pages, STRICT_CSP};
use super::{lock, loopback_addr, DemoError};
use crate::clock::{Clock, Timestamp};
use crate::digest::sha256;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, REFERRER_POLICY, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tracing::instrument;

/// How long an authorization code can be redeemed.
const CODE_TTL: Duration = Duration::from_secs(60);
/// How long the sign-in page waits for a choice.
const REQUEST_TTL: Duration = Duration::from_secs(600);
const ID_TOKEN_TTL: Duration = Duration::from_secs(300);
const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Bounds each in-memory map, so a script hammering the endpoints cannot exhaust memory.
const MAX_ENTRIES: usize = 1024;
/// Longest `state` or `nonce` accepted; both are echoed back, so they are bounded.
const MAX_ECHOED_LEN: usize = 512;
const SCOPES_SUPPORTED: [&str; 4] = ["openid", "profile", "email", "groups"];

/// The one client the demo provider knows: the gateway.
#[derive(Clone)]
pub struct DemoClient {
    pub client_id: String,
    pub client_secret: String,
    /// Compared exactly with the `redirect_uri` of every request.
    pub redirect_uri: String,
}

impl fmt::Debug for DemoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// A built-in user of the demo provider.
#[derive(Debug, Serialize)]
pub struct DemoUser {
    /// Also the `sub` of the ID token.
    pub id: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    pub groups: &'static [&'static str],
    /// What the user shows about twinward, on the sign-in page.
    pub about: &'static str,
}

static USERS: [DemoUser; 3] = [
    DemoUser {
        id: "olivia",
        name: "Olivia Operator",
        email: "olivia@example.com",
        groups: &["twin-operators"],
        about: "Can read and change the plant twins during business hours.",
    },
    DemoUser {
        id: "victor",
        name: "Victor Viewer",
        email: "victor@example.com",
        groups: &["twin-viewers"],
        about: "Can read the plant twins, never change them.",
    },
    DemoUser {
        id: "mallory",
        name: "Mallory Marketing",
        email: "mallory@example.com",
        groups: &["marketing"],
        about: "Has no twin role: the gateway shows her its 403 page.",
    },
];

/// The demo provider's users, in the order the sign-in page lists them.
pub fn demo_users() -> &'static [DemoUser] {
    &USERS
}

/// The issuer of a demo provider listening on `port`. `localhost` rather than an address:
/// the gateway's passkeys (WebAuthn) need a domain, and the browser must see the gateway
/// and the provider under the same name for the demo to work.
pub fn issuer_url(port: u16) -> String {
    format!("http://localhost:{port}")
}

/// Serves the demo provider on `listener` until the task is dropped. Refuses a listener that
/// is not on loopback.
pub async fn serve_idp(
    listener: tokio::net::TcpListener,
    client: DemoClient,
    clock: Arc<dyn Clock>,
) -> Result<(), DemoError> {
    let addr = loopback_addr(&listener)?;
    let idp = Idp::new(client, issuer_url(addr.port()), clock)?;
    tracing::warn!(
        issuer = %idp.issuer,
        kid = %idp.key.kid,
        "demo identity provider started: anyone on this computer can sign in as any demo user"
    );
    axum::serve(listener, router(Arc::new(idp))).await?;
    Ok(())
}

/// The P-256 key ID tokens are signed with; generated at start and never stored.
struct IdTokenKey {
    kid: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    jwk: serde_json::Value,
    header_b64: String,
}

impl IdTokenKey {
    fn generate() -> Result<Self, DemoError> {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| DemoError::KeyGeneration)?;
        let pair =
            EcdsaKeyPair::from_pkcs8(alg, doc.as_ref()).map_err(|_| DemoError::KeyGeneration)?;
        let point = pair.public_key().as_ref();
        // Uncompressed point: 0x04 || x (32) || y (32).
        let (x, y) = match (point.get(1..33), point.get(33..65)) {
            (Some(x), Some(y)) if point.len() == 65 => (B64.encode(x), B64.encode(y)),
            _ => return Err(DemoError::KeyGeneration),
        };
        let digest = sha256(point);
        let kid = hex::encode(digest.get(..8).unwrap_or_default());
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "alg": "ES256", "use": "sig",
        });
        let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        Ok(IdTokenKey {
            header_b64: B64.encode(header.to_string()),
            kid,
            pair,
            rng,
            jwk,
        })
    }

    #[instrument(skip_all)]
    fn sign_jwt<C: Serialize>(&self, claims: &C) -> Result<String, OAuthError> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| OAuthError::Server(format!("id token claims: {e}")))?;
        let mut jwt = format!("{}.{}", self.header_b64, B64.encode(payload));
        let sig = self
            .pair
            .sign(&self.rng, jwt.as_bytes())
            .map_err(|_| OAuthError::Server("id token signing failed".into()))?;
        jwt.push('.');
        jwt.push_str(&B64.encode(sig.as_ref()));
        Ok(jwt)
    }
}

/// What the client asked for, kept between the sign-in page and the token request.
#[derive(Debug, Clone)]
struct AuthRequest {
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
}

struct Pending {
    request: AuthRequest,
    expires_at: Timestamp,
}

#[derive(Clone)]
struct IssuedCode {
    user: &'static DemoUser,
    client_id: String,
    redirect_uri: String,
    request: AuthRequest,
    auth_time: Timestamp,
    expires_at: Timestamp,
    used: bool,
}

struct AccessGrant {
    user: &'static DemoUser,
    expires_at: Timestamp,
}

/// The provider's state. Secrets (codes, access tokens) are kept as SHA-256 digests only.
struct Idp {
    client: DemoClient,
    /// The origin the sign-in form may redirect to after submission (CSP `form-action`).
    redirect_origin: String,
    issuer: String,
    clock: Arc<dyn Clock>,
    key: IdTokenKey,
    pages: Pages,
    /// Sign-in pages shown and not yet answered, by their opaque request id.
    pending: Mutex<HashMap<String, Pending>>,
    codes: Mutex<HashMap<[u8; 32], IssuedCode>>,
    tokens: Mutex<HashMap<[u8; 32], AccessGrant>>,
}

/// Why an authorization request is refused.
enum Refusal {
    /// The client or its redirect URI cannot be trusted: show a page, never redirect
    /// (RFC 6749 §4.1.2.1), or the provider would be an open redirector.
    Page { title: &'static str, detail: String },
    /// Reported to the client at its registered redirect URI.
    Redirect {
        error: &'static str,
        description: String,
        state: Option<String>,
    },
}

/// RFC 6749 §5.2 errors of the token endpoint; the message is the `error_description`.
#[derive(Debug, thiserror::Error)]
enum OAuthError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidClient(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    Server(String),
}

impl OAuthError {
    fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::Server(_) => "server_error",
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, description) = match &self {
            OAuthError::InvalidClient(_) => (StatusCode::UNAUTHORIZED, self.to_string()),
            OAuthError::Server(detail) => {
                tracing::error!(detail, "demo identity provider token endpoint failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
            _ => (StatusCode::BAD_REQUEST, self.to_string()),
        };
        let body = serde_json::json!({"error": self.code(), "error_description": description});
        let mut resp = (status, Json(body)).into_response();
        no_store(resp.headers_mut());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"twinward-demo\""),
            );
        }
        resp
    }
}

fn no_store(h: &mut HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(PRAGMA, HeaderValue::from_static("no-cache"));
}

/// Form or query parameters, each at most once (RFC 6749 §3.1); empty values count as absent.
struct Params(HashMap<String, String>);

impl Params {
    /// Fails with the name of a repeated parameter.
    fn parse(raw: &[u8]) -> Result<Params, String> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(raw) {
            if v.is_empty() {
                continue;
            }
            if map.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                return Err(k.into_owned());
            }
        }
        Ok(Params(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fn digest(s: &str) -> [u8; 32] {
    sha256(s.as_bytes())
}

/// 256 random bits, base64url.
fn random_secret() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b)?;
    Ok(B64.encode(b))
}

/// RFC 7636 §4.6: `BASE64URL(SHA256(verifier)) == challenge`, for a well-formed verifier.
fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let computed = B64.encode(sha256(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// A SHA-256 challenge is 32 bytes, so exactly 43 base64url characters.
fn is_s256_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Idp {
    fn new(client: DemoClient, issuer: String, clock: Arc<dyn Clock>) -> Result<Self, DemoError> {
        if client.client_id.is_empty() || client.client_secret.is_empty() {
            return Err(DemoError::Config(
                "client_id and client_secret must not be empty".into(),
            ));
        }
        let redirect = url::Url::parse(&client.redirect_uri).map_err(|e| {
            DemoError::Config(format!("redirect_uri {:?}: {e}", client.redirect_uri))
        })?;
        if !matches!(redirect.scheme(), "http" | "https") || redirect.fragment().is_some() {
            return Err(DemoError::Config(format!(
                "redirect_uri {:?} must be an http(s) URL without a fragment",
                client.redirect_uri
            )));
        }
        Ok(Idp {
            redirect_origin: redirect.origin().ascii_serialization(),
            client,
            issuer,
            clock,
            key: IdTokenKey::generate()?,
            pages: Pages::new()?,
            pending: Mutex::new(HashMap::new()),
            codes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn discovery(&self) -> serde_json::Value {
        let iss = &self.issuer;
        serde_json::json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/authorize"),
            "token_endpoint": format!("{iss}/token"),
            "jwks_uri": format!("{iss}/jwks"),
            "userinfo_endpoint": format!("{iss}/userinfo"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": SCOPES_SUPPORTED,
            "claims_supported": [
                "iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "amr",
                "name", "preferred_username", "email", "email_verified", "groups",
            ],
        })
    }

    /// Checks an authorization request in the order RFC 6749 §4.1.2.1 asks: first whether
    /// the client and redirect URI can be trusted at all, then everything else.
    fn check_request(&self, p: &Params) -> Result<AuthRequest, Refusal> {
        match p.get("client_id") {
            Some(id) if id == self.client.client_id => {}
            Some(_) => {
                return Err(Refusal::Page {
                    title: "Unknown application",
                    detail: "The application that sent you here is not registered with this demo identity provider.".into(),
                })
            }
            None => {
                return Err(Refusal::Page {
                    title: "Invalid sign-in request",
                    detail: "The request names no application (client_id is missing).".into(),
                })
            }
        }
        // INVARIANT: exact string comparison; no prefix, no normalization. Anything looser
        // would let a crafted link send the code elsewhere.
        if p.get("redirect_uri") != Some(self.client.redirect_uri.as_str()) {
            return Err(Refusal::Page {
                title: "Invalid sign-in request",
                detail: "The return address (redirect_uri) is missing or is not the one registered for this application, so you are not sent anywhere.".into(),
            });
        }
        let state = p.get("state").map(str::to_owned);
        if state.as_ref().is_some_and(|s| s.len() > MAX_ECHOED_LEN) {
            return Err(Refusal::Page {
                title: "Invalid sign-in request",
                detail: "The state parameter is too long.".into(),
            });
        }
        let refuse = |error, description: &str| Refusal::Redirect {
            error,
            description: description.to_owned(),
            state: state.clone(),
        };
        if p.get("response_type") != Some("code") {
            return Err(refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let scope = p.get("scope").unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(refuse("invalid_scope", "scope must include openid"));
        }
        if p.get("code_challenge_method") != Some("S256") {
            return Err(refuse(
                "invalid_request",
                "PKCE is required: code_challenge_method must be S256",
            ));
        }
        let challenge = match p.get("code_challenge") {
            Some(c) if is_s256_challenge(c) => c.to_owned(),
            _ => {
                return Err(refuse(
                    "invalid_request",
                    "PKCE is required: code_challenge must be a base64url SHA-256 digest",
                ))
            }
        };
        let nonce = p.get("nonce").map(str::to_owned);
        if nonce.as_ref().is_some_and(|n| n.len() > MAX_ECHOED_LEN) {
            return Err(refuse("invalid_request", "nonce is too long"));
        }
        let granted: Vec<&str> = scope
            .split(' ')
            .filter(|s| SCOPES_SUPPORTED.contains(s))
            .collect();
        Ok(AuthRequest {
            scope: granted.join(" "),
            state,
            nonce,
            code_challenge: challenge,
        })
    }

    fn error_page(&self, status: StatusCode, title: &str, detail: &str) -> Response {
        self.pages.render(
            "error.html",
            status,
            STRICT_CSP,
            minijinja::context! { title, detail, banner => true },
        )
    }

    /// A 303 to the registered redirect URI with `pairs` added to its query.
    fn redirect_to_client(&self, pairs: &[(&str, &str)]) -> Response {
        let Ok(mut url) = url::Url::parse(&self.client.redirect_uri) else {
            // Checked in `new`; kept as a page rather than a panic.
            return self.error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "The registered return address is invalid.",
            );
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in pairs {
                q.append_pair(k, v);
            }
        }
        let mut resp = Redirect::to(url.as_str()).into_response();
        let h = resp.headers_mut();
        no_store(h);
        // The code is in the URL: keep it out of Referer headers.
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        resp
    }

    fn refuse(&self, r: Refusal) -> Response {
        match r {
            Refusal::Page { title, detail } => {
                self.error_page(StatusCode::BAD_REQUEST, title, &detail)
            }
            Refusal::Redirect {
                error,
                description,
                state,
            } => {
                let mut pairs = vec![
                    ("error", error),
                    ("error_description", description.as_str()),
                ];
                if let Some(s) = &state {
                    pairs.push(("state", s));
                }
                self.redirect_to_client(&pairs)
            }
        }
    }

    /// Remembers `request` for the sign-in page; returns its opaque id.
    fn remember(&self, request: AuthRequest, now: Timestamp) -> Option<String> {
        let id = random_secret().ok()?;
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| p.expires_at > now);
        if pending.len() >= MAX_ENTRIES {
            return None;
        }
        pending.insert(
            id.clone(),
            Pending {
                request,
                expires_at: now.saturating_add(REQUEST_TTL),
            },
        );
        Some(id)
    }

    /// Takes the pending request `id` out (a sign-in page is answered once).
    fn take_pending(&self, id: &str, now: Timestamp) -> Option<AuthRequest> {
        let mut pending = lock(&self.pending);
        pending.retain(|_, p| p.expires_at > now);
        pending.remove(id).map(|p| p.request)
    }

    /// Issues a single-use code bound to the client, redirect URI, PKCE challenge, nonce and
    /// user.
    #[instrument(skip_all)]
    fn issue_code(
        &self,
        user: &'static DemoUser,
        request: AuthRequest,
        now: Timestamp,
    ) -> Option<String> {
        let code = random_secret().ok()?;
        let mut codes = lock(&self.codes);
        codes.retain(|_, c| c.expires_at > now);
        if codes.len() >= MAX_ENTRIES {
            return None;
        }
        codes.insert(
            digest(&code),
            IssuedCode {
                user,
                client_id: self.client.client_id.clone(),
                redirect_uri: self.client.redirect_uri.clone(),
                request,
                auth_time: now,
                expires_at: now.saturating_add(CODE_TTL),
                used: false,
            },
        );
        Some(code)
    }

    /// Client authentication by HTTP Basic or by the body (`client_secret_post`), never both.
    #[instrument(skip_all)]
    fn authenticate_client(&self, headers: &HeaderMap, p: &Params) -> Result<(), OAuthError> {
        let (id, secret) =
            match (basic_credentials(headers)?, p.get("client_secret")) {
                (Some(_), Some(_)) => return Err(OAuthError::InvalidRequest(
                    "use one client authentication method, not both HTTP Basic and client_secret"
                        .into(),
                )),
                (Some((id, secret)), None) => {
                    if p.get("client_id").is_some_and(|body_id| body_id != id) {
                        return Err(OAuthError::InvalidRequest(
                            "client_id differs from the HTTP Basic user".into(),
                        ));
                    }
                    (id, secret)
                }
                (None, Some(secret)) => match p.get("client_id") {
                    Some(id) => (id.to_owned(), secret.to_owned()),
                    None => {
                        return Err(OAuthError::InvalidRequest(
                            "client_secret without client_id".into(),
                        ))
                    }
                },
                (None, None) => {
                    return Err(OAuthError::InvalidClient(
                        "client authentication required".into(),
                    ))
                }
            };
        // Constant time over fixed-length digests, so neither value nor length leaks.
        let id_ok = digest(&id).ct_eq(&digest(&self.client.client_id));
        let secret_ok = digest(&secret).ct_eq(&digest(&self.client.client_secret));
        if bool::from(id_ok & secret_ok) {
            Ok(())
        } else {
            Err(OAuthError::InvalidClient(
                "client authentication failed".into(),
            ))
        }
    }

    /// The token endpoint's work: authenticate the client, redeem the code, sign the ID token.
    #[instrument(skip_all)]
    fn exchange(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: Timestamp,
    ) -> Result<serde_json::Value, OAuthError> {
        let p = Params::parse(body)
            .map_err(|name| OAuthError::InvalidRequest(format!("parameter {name} repeated")))?;
        self.authenticate_client(headers, &p)?;
        match p.get("grant_type") {
            Some("authorization_code") => {}
            Some(other) => {
                return Err(OAuthError::UnsupportedGrantType(format!(
                    "grant_type {other} is not supported; use authorization_code"
                )))
            }
            None => return Err(OAuthError::InvalidRequest("grant_type missing".into())),
        }
        let missing = |name: &str| OAuthError::InvalidRequest(format!("{name} missing"));
        let code = p.get("code").ok_or_else(|| missing("code"))?;
        let redirect_uri = p
            .get("redirect_uri")
            .ok_or_else(|| missing("redirect_uri"))?;
        let verifier = p
            .get("code_verifier")
            .ok_or_else(|| missing("code_verifier (PKCE is required)"))?;

        let issued = {
            let mut codes = lock(&self.codes);
            codes.retain(|_, c| c.expires_at > now);
            let Some(c) = codes.get_mut(&digest(code)) else {
                return Err(OAuthError::InvalidGrant(
                    "authorization code unknown or expired".into(),
                ));
            };
            if c.used {
                return Err(OAuthError::InvalidGrant(
                    "authorization code was already used".into(),
                ));
            }
            // INVARIANT: the first redemption attempt spends the code, whatever its outcome,
            // so a stolen code cannot be retried with guessed verifiers.
            c.used = true;
            c.clone()
        };
        if issued.client_id != self.client.client_id {
            return Err(OAuthError::InvalidGrant(
                "authorization code was issued to another client".into(),
            ));
        }
        if issued.redirect_uri != redirect_uri {
            return Err(OAuthError::InvalidGrant(
                "redirect_uri does not match the authorization request".into(),
            ));
        }
        if !pkce_s256_matches(verifier, &issued.request.code_challenge) {
            return Err(OAuthError::InvalidGrant(
                "code_verifier does not match the code_challenge".into(),
            ));
        }

        let user = issued.user;
        let client_id = issued.client_id.as_str();
        let iat = now.unix_secs();
        let claims = IdTokenClaims {
            iss: &self.issuer,
            sub: user.id,
            aud: client_id,
            azp: client_id,
            exp: now.saturating_add(ID_TOKEN_TTL).unix_secs(),
            iat,
            auth_time: issued.auth_time.unix_secs(),
            nonce: issued.request.nonce.as_deref(),
            email: user.email,
            email_verified: true,
            name: user.name,
            preferred_username: user.id,
            groups: user.groups,
            amr: &["pwd"],
        };
        let id_token = self.key.sign_jwt(&claims)?;
        let access_token =
            random_secret().map_err(|_| OAuthError::Server("random access token".into()))?;
        {
            let mut tokens = lock(&self.tokens);
            tokens.retain(|_, t| t.expires_at > now);
            if tokens.len() >= MAX_ENTRIES {
                // Userinfo is optional for the gateway; forget the oldest grants.
                tokens.clear();
            }
            tokens.insert(
                digest(&access_token),
                AccessGrant {
                    user,
                    expires_at: now.saturating_add(ACCESS_TOKEN_TTL),
                },
            );
        }
        Ok(serde_json::json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_TTL.as_secs(),
            "id_token": id_token,
            "scope": issued.request.scope,
        }))
    }

    #[instrument(skip_all)]
    fn userinfo(&self, headers: &HeaderMap, now: Timestamp) -> Option<serde_json::Value> {
        let token = headers
            .get(AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .trim();
        let mut tokens = lock(&self.tokens);
        tokens.retain(|_, t| t.expires_at > now);
        let user = tokens.get(&digest(token))?.user;
        Some(serde_json::json!({
            "sub": user.id,
            "name": user.name,
            "preferred_username": user.id,
            "email": user.email,
            "email_verified": true,
            "groups": user.groups,
        }))
    }
}

#[derive(Serialize)]
struct IdTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    azp: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    email: &'a str,
    email_verified: bool,
    name: &'a str,
    preferred_username: &'a str,
    groups: &'a [&'a str],
    amr: &'a [&'a str],
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::InvalidClient("malformed HTTP Basic credentials".into());
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient(
            "only HTTP Basic client authentication is supported in the Authorization header".into(),
        ));
    }
    let raw = STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Some((form_decode(id), form_decode(secret))))
}

fn form_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn router(idp: Arc<Idp>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize).post(decide))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo).post(userinfo))
        .with_state(idp)
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    Json(idp.discovery()).into_response()
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Response {
    let mut resp = Json(serde_json::json!({ "keys": [idp.key.jwk] })).into_response();
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    resp
}

/// `GET /authorize`: the sign-in page, or a refusal.
#[instrument(skip_all)]
async fn authorize(State(idp): State<Arc<Idp>>, RawQuery(query): RawQuery) -> Response {
    let now = idp.clock.now();
    let params = match Params::parse(query.as_deref().unwrap_or_default().as_bytes()) {
        Ok(p) => p,
        Err(name) => {
            return idp.error_page(
                StatusCode::BAD_REQUEST,
                "Invalid sign-in request",
                &format!("The parameter {name} appears more than once."),
            )
        }
    };
    let request = match idp.check_request(&params) {
        Ok(r) => r,
        Err(refusal) => return idp.refuse(refusal),
    };
    let Some(request_id) = idp.remember(request, now) else {
        return idp.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins in progress",
            "Wait a few minutes and try again.",
        );
    };
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {}; frame-ancestors 'none'; base-uri 'none'",
        idp.redirect_origin
    );
    idp.pages.render(
        "idp_authorize.html",
        StatusCode::OK,
        &csp,
        minijinja::context! {
            client_id => idp.client.client_id,
            redirect_uri => idp.client.redirect_uri,
            request_id,
            users => demo_users(),
        },
    )
}

/// `POST /authorize`: the choice made on the sign-in page.
#[instrument(skip_all)]
async fn decide(State(idp): State<Arc<Idp>>, body: Bytes) -> Response {
    let now = idp.clock.now();
    let Ok(params) = Params::parse(&body) else {
        return idp.error_page(
            StatusCode::BAD_REQUEST,
            "Invalid form",
            "A form field appears more than once.",
        );
    };
    let Some(request) = params
        .get("request_id")
        .and_then(|id| idp.take_pending(id, now))
    else {
        return idp.error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in request expired",
            "This sign-in page has expired or was already answered. Go back to the application and start again.",
        );
    };
    if params.get("cancel").is_some() {
        let mut pairs = vec![
            ("error", "access_denied"),
            ("error_description", "the user cancelled sign-in"),
        ];
        if let Some(s) = &request.state {
            pairs.push(("state", s));
        }
        return idp.redirect_to_client(&pairs);
    }
    let Some(user) = params
        .get("user")
        .and_then(|id| demo_users().iter().find(|u| u.id == id))
    else {
        return idp.error_page(
            StatusCode::BAD_REQUEST,
            "Unknown user",
            "Choose one of the demo users. Go back to the application and start again.",
        );
    };
    let state = request.state.clone();
    let Some(code) = idp.issue_code(user, request, now) else {
        return idp.error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins in progress",
            "Wait a minute and try again.",
        );
    };
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = &state {
        pairs.push(("state", s));
    }
    idp.redirect_to_client(&pairs)
}

async fn token(State(idp): State<Arc<Idp>>, headers: HeaderMap, body: Bytes) -> Response {
    match idp.exchange(&headers, &body, idp.clock.now()) {
        Ok(json) => {
            let mut resp = Json(json).into_response();
            no_store(resp.headers_mut());
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn userinfo(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    match idp.userinfo(&headers, idp.clock.now()) {
        Some(json) => {
            let mut resp = Json(json).into_response();
            no_store(resp.headers_mut());
            resp
        }
        None => {
            let mut resp = StatusCode::UNAUTHORIZED.into_response();
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use axum::body::Body;
    use axum::http::header::{CONTENT_SECURITY_POLICY, LOCATION};
    use axum::http::Request;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    use tower::ServiceExt;

    const REDIRECT: &str = "http://localhost:8443/.twinward/callback";
    const SECRET: &str = "demo secret+/:";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    const ISSUER: &str = "http://localhost:9000";

    fn client() -> DemoClient {
        DemoClient {
            client_id: "twinward".into(),
            client_secret: SECRET.into(),
            redirect_uri: REDIRECT.into(),
        }
    }

    /// A provider whose clock starts at the real time, so `jsonwebtoken` accepts `exp`.
    fn app() -> (Router, Arc<ManualClock>) {
        let now = SystemClock.now().unix_secs() as u64;
        let clock = Arc::new(ManualClock::at(now));
        let idp = Idp::new(client(), ISSUER.into(), clock.clone()).unwrap();
        (router(Arc::new(idp)), clock)
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    impl Reply {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).unwrap()
        }
        fn location(&self) -> url::Url {
            url::Url::parse(self.headers[LOCATION].to_str().unwrap()).unwrap()
        }
    }

    async fn send(app: &Router, req: Request<Body>) -> Reply {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn form(uri: &str, pairs: &[(&str, &str)], basic: Option<(&str, &str)>) -> Request<Body> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        let mut req = Request::post(uri).header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some((id, secret)) = basic {
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let value = STANDARD.encode(format!("{}:{}", enc(id), enc(secret)));
            req = req.header(AUTHORIZATION, format!("Basic {value}"));
        }
        req.body(Body::from(body)).unwrap()
    }

    fn authorize_uri(overrides: &[(&str, Option<&str>)]) -> String {
        let mut params: Vec<(&str, Option<&str>)> = vec![
            ("response_type", Some("code")),
            ("client_id", Some("twinward")),
            ("redirect_uri", Some(REDIRECT)),
            ("scope", Some("openid email groups")),
            ("state", Some("st<&>ate")),
            ("nonce", Some("n-0S6_WzA2Mj")),
            ("code_challenge", Some(CHALLENGE)),
            ("code_challenge_method", Some("S256")),
        ];
        for (k, v) in overrides {
            if let Some(slot) = params.iter_mut().find(|(n, _)| n == k) {
                slot.1 = *v;
            }
        }
        let q = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter().filter_map(|(k, v)| v.map(|v| (*k, v))))
            .finish();
        format!("/authorize?{q}")
    }

    fn request_id(html: &str) -> String {
        let start = html.find(r#"name="request_id" value=""#).unwrap() + 25;
        let len = html[start..].find('"').unwrap();
        html[start..start + len].to_owned()
    }

    /// Shows the sign-in page and picks `user`; returns the code.
    async fn sign_in(app: &Router, user: &str) -> String {
        let page = send(app, get(&authorize_uri(&[]))).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let id = request_id(&page.body);
        let r = send(
            app,
            form("/authorize", &[("request_id", &id), ("user", user)], None),
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let loc = r.location();
        assert_eq!(
            loc.as_str().split('?').next(),
            Some(REDIRECT),
            "back to the registered redirect URI"
        );
        let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
        assert_eq!(q["state"], "st<&>ate");
        q["code"].clone()
    }

    fn redeem<'a>(code: &'a str, verifier: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ]
    }

    #[test]
    fn pkce_s256_follows_rfc_7636() {
        // RFC 7636 appendix B.
        assert!(pkce_s256_matches(VERIFIER, CHALLENGE));
        assert!(!pkce_s256_matches(
            "eBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            CHALLENGE
        ));
        // The challenge itself is no verifier; nor is anything too short or off-alphabet.
        assert!(!pkce_s256_matches(CHALLENGE, CHALLENGE));
        assert!(!pkce_s256_matches("short", CHALLENGE));
        let spaced = format!("{} ", &VERIFIER[..42]);
        assert!(!pkce_s256_matches(&spaced, CHALLENGE));
        assert!(is_s256_challenge(CHALLENGE));
        assert!(!is_s256_challenge("plain-challenge"));
    }

    #[tokio::test]
    async fn full_flow_yields_an_id_token_that_verifies_against_the_jwks() {
        let (app, clock) = app();
        let disco = send(&app, get("/.well-known/openid-configuration"))
            .await
            .json();
        assert_eq!(disco["issuer"], ISSUER);
        assert_eq!(disco["code_challenge_methods_supported"][0], "S256");
        assert_eq!(disco["jwks_uri"], format!("{ISSUER}/jwks"));

        let page = send(&app, get(&authorize_uri(&[]))).await;
        assert!(page.body.contains(
            "Demo identity provider — for trying twinward on this computer only. Never use it in production."
        ));
        for u in demo_users() {
            assert!(page.body.contains(&format!("Sign in as {}", u.name)));
            assert!(page.body.contains(u.about));
        }
        assert!(page.body.contains("Cancel"));
        let csp = page.headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(!csp.contains("script-src"), "{csp}");
        assert!(
            csp.contains("form-action 'self' http://localhost:8443"),
            "{csp}"
        );

        let code = sign_in(&app, "olivia").await;
        let t = send(
            &app,
            form(
                "/token",
                &redeem(&code, VERIFIER),
                Some(("twinward", SECRET)),
            ),
        )
        .await;
        assert_eq!(t.status, StatusCode::OK, "{}", t.body);
        assert_eq!(t.headers[CACHE_CONTROL], "no-store");
        let tokens = t.json();
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["scope"], "openid email groups");
        let id_token = tokens["id_token"].as_str().unwrap();

        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(&send(&app, get("/jwks")).await.body).unwrap();
        let kid = decode_header(id_token).unwrap().kid.unwrap();
        let jwk = set.find(&kid).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["twinward"]);
        v.set_issuer(&[ISSUER]);
        let claims =
            decode::<serde_json::Value>(id_token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                .unwrap()
                .claims;
        assert_eq!(claims["sub"], "olivia");
        assert_eq!(claims["azp"], "twinward");
        assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
        assert_eq!(claims["email_verified"], true);
        assert_eq!(claims["name"], "Olivia Operator");
        assert_eq!(claims["groups"], serde_json::json!(["twin-operators"]));
        assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
        let iat = claims["iat"].as_i64().unwrap();
        assert_eq!(iat, clock.now().unix_secs());
        assert_eq!(claims["exp"].as_i64().unwrap(), iat + 300);
        assert_eq!(claims["auth_time"].as_i64().unwrap(), iat);

        // Userinfo answers for the access token.
        let info = send(
            &app,
            Request::get("/userinfo")
                .header(
                    AUTHORIZATION,
                    format!("Bearer {}", tokens["access_token"].as_str().unwrap()),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(info.json()["groups"], serde_json::json!(["twin-operators"]));

        // The code is spent.
        let again = send(
            &app,
            form(
                "/token",
                &redeem(&code, VERIFIER),
                Some(("twinward", SECRET)),
            ),
        )
        .await;
        assert_eq!(again.status, StatusCode::BAD_REQUEST);
        assert_eq!(again.json()["error"], "invalid_grant");
    }

    #[tokio::test]
    async fn codes_expire_after_sixty_seconds() {
        let (app, clock) = app();
        let code = sign_in(&app, "victor").await;
        clock.advance(Duration::from_secs(60));
        let r = send(
            &app,
            form(
                "/token",
                &redeem(&code, VERIFIER),
                Some(("twinward", SECRET)),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"], "invalid_grant");

        // Within the minute it works, with the client secret in the body this time.
        let code = sign_in(&app, "victor").await;
        clock.advance(Duration::from_secs(59));
        let mut pairs = redeem(&code, VERIFIER);
        pairs.extend([("client_id", "twinward"), ("client_secret", SECRET)]);
        let r = send(&app, form("/token", &pairs, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    #[tokio::test]
    async fn wrong_client_secret_is_invalid_client_and_leaves_the_code_usable() {
        let (app, _clock) = app();
        let code = sign_in(&app, "mallory").await;
        let r = send(
            &app,
            form(
                "/token",
                &redeem(&code, VERIFIER),
                Some(("twinward", "guess")),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"], "invalid_client");
        assert!(r.headers.contains_key(WWW_AUTHENTICATE));

        let mut pairs = redeem(&code, VERIFIER);
        pairs.extend([("client_id", "twinward"), ("client_secret", "guess")]);
        let r = send(&app, form("/token", &pairs, None)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        let r = send(&app, form("/token", &redeem(&code, VERIFIER), None)).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "no client authentication"
        );

        // Both methods at once is refused.
        let r = send(&app, form("/token", &pairs, Some(("twinward", SECRET)))).await;
        assert_eq!(r.json()["error"], "invalid_request");

        let r = send(
            &app,
            form(
                "/token",
                &redeem(&code, VERIFIER),
                Some(("twinward", SECRET)),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }

    #[tokio::test]
    async fn wrong_verifier_or_redirect_uri_spends_the_code() {
        let (app, _clock) = app();
        let basic = Some(("twinward", SECRET));
        let code = sign_in(&app, "olivia").await;
        let wrong = "x".repeat(43);
        let r = send(&app, form("/token", &redeem(&code, &wrong), basic)).await;
        assert_eq!(r.json()["error"], "invalid_grant");
        let r = send(&app, form("/token", &redeem(&code, VERIFIER), basic)).await;
        assert_eq!(
            r.json()["error"],
            "invalid_grant",
            "spent by the first attempt"
        );

        let code = sign_in(&app, "olivia").await;
        let mut pairs = redeem(&code, VERIFIER);
        pairs[2] = ("redirect_uri", "http://localhost:8443/other");
        let r = send(&app, form("/token", &pairs, basic)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"], "invalid_grant");

        let r = send(&app, form("/token", &[("grant_type", "password")], basic)).await;
        assert_eq!(r.json()["error"], "unsupported_grant_type");
    }

    #[tokio::test]
    async fn untrusted_client_or_redirect_uri_gets_a_page_never_a_redirect() {
        let (app, _clock) = app();
        for overrides in [
            vec![("redirect_uri", Some("http://evil.example/cb"))],
            vec![(
                "redirect_uri",
                Some("http://localhost:8443/.twinward/callback/x"),
            )],
            vec![("redirect_uri", None)],
            vec![("client_id", Some("other"))],
            vec![("client_id", None)],
        ] {
            let r = send(&app, get(&authorize_uri(&overrides))).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{overrides:?}");
            assert!(!r.headers.contains_key(LOCATION), "{overrides:?}");
            assert!(r.body.contains("Never use it in production"));
            assert!(!r.body.contains("evil.example"));
        }
        let dup = format!("{}&client_id=twinward", authorize_uri(&[]));
        let r = send(&app, get(&dup)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(!r.headers.contains_key(LOCATION));
    }

    #[tokio::test]
    async fn other_request_errors_are_redirected_with_the_state() {
        let (app, _clock) = app();
        for (overrides, error) in [
            (vec![("code_challenge", None)], "invalid_request"),
            (
                vec![("code_challenge_method", Some("plain"))],
                "invalid_request",
            ),
            (vec![("code_challenge_method", None)], "invalid_request"),
            (vec![("scope", Some("email"))], "invalid_scope"),
            (
                vec![("response_type", Some("token"))],
                "unsupported_response_type",
            ),
        ] {
            let r = send(&app, get(&authorize_uri(&overrides))).await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{overrides:?}");
            let q: HashMap<_, _> = r.location().query_pairs().into_owned().collect();
            assert_eq!(q["error"], error, "{overrides:?}");
            assert_eq!(q["state"], "st<&>ate");
        }
    }

    #[tokio::test]
    async fn cancel_redirects_with_access_denied_and_requests_are_answered_once() {
        let (app, _clock) = app();
        let page = send(&app, get(&authorize_uri(&[]))).await;
        let id = request_id(&page.body);
        let r = send(
            &app,
            form("/authorize", &[("request_id", &id), ("cancel", "1")], None),
        )
        .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let q: HashMap<_, _> = r.location().query_pairs().into_owned().collect();
        assert_eq!(q["error"], "access_denied");
        assert_eq!(q["state"], "st<&>ate");
        assert!(!q.contains_key("code"));

        let r = send(
            &app,
            form(
                "/authorize",
                &[("request_id", &id), ("user", "olivia")],
                None,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(!r.headers.contains_key(LOCATION));
    }

    #[tokio::test]
    async fn sign_in_pages_expire() {
        let (app, clock) = app();
        let page = send(&app, get(&authorize_uri(&[]))).await;
        let id = request_id(&page.body);
        clock.advance(REQUEST_TTL);
        let r = send(
            &app,
            form(
                "/authorize",
                &[("request_id", &id), ("user", "olivia")],
                None,
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(!r.headers.contains_key(LOCATION));
    }

    /// The library the gateway signs in with completes a sign-in over real HTTP.
    #[tokio::test]
    async fn an_openidconnect_client_completes_a_sign_in_over_http() {
        use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
        use openidconnect::{
            AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce,
            PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = issuer_url(listener.local_addr().unwrap().port());
        tokio::spawn(serve_idp(listener, client(), Arc::new(SystemClock)));
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        let meta =
            CoreProviderMetadata::discover_async(IssuerUrl::new(issuer.clone()).unwrap(), &http)
                .await
                .unwrap();
        let oidc = CoreClient::from_provider_metadata(
            meta,
            ClientId::new("twinward".into()),
            Some(ClientSecret::new(SECRET.into())),
        )
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = oidc
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("groups".into()))
            .set_pkce_challenge(challenge)
            .url();

        // The browser's part: show the page, pick a user, follow the redirect by hand.
        let page = http.get(url).send().await.unwrap().text().await.unwrap();
        let id = request_id(&page);
        let resp = http
            .post(format!("{issuer}/authorize"))
            .form(&[("request_id", id.as_str()), ("user", "victor")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let loc = url::Url::parse(resp.headers()[LOCATION].to_str().unwrap()).unwrap();
        let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
        assert_eq!(&q["state"], state.secret());

        let tokens = oidc
            .exchange_code(AuthorizationCode::new(q["code"].clone()))
            .unwrap()
            .set_pkce_verifier(verifier)
            .request_async(&http)
            .await
            .unwrap();
        let claims = tokens
            .id_token()
            .unwrap()
            .claims(&oidc.id_token_verifier(), &nonce)
            .unwrap();
        assert_eq!(claims.subject().as_str(), "victor");
        assert_eq!(
            claims.email().map(|e| e.as_str()),
            Some("victor@example.com")
        );
    }

    #[test]
    fn demo_users_are_the_three_personas() {
        let ids: Vec<_> = demo_users().iter().map(|u| (u.id, u.groups)).collect();
        assert_eq!(
            ids,
            [
                ("olivia", &["twin-operators"][..]),
                ("victor", &["twin-viewers"][..]),
                ("mallory", &["marketing"][..]),
            ]
        );
        assert!(format!("{:?}", client()).contains("[redacted]"));
        assert!(!format!("{:?}", client()).contains(SECRET));
    }
}
