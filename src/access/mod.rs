//! The zero-trust check every request goes through, free of HTTP types: authenticate the
//! principal, build the context, decide by policy, mint (or reuse) the twin credential and
//! record the decision. `http` calls [`Gateway::authorize`] from the proxy, forward-auth and
//! token-exchange endpoints alike, so all three decide the same way.

pub mod signin;
pub mod startup;
pub mod tokens;

use crate::audit::{self, AccessDetail, AuditEvent, AuditSink, Detail};
use crate::clock::{Clock, Timestamp};
use crate::config::Config;
use crate::credentials::mint::MintError;
use crate::credentials::{Credential, CredentialRequest, Minter};
use crate::identity::pseudonym::Pseudonymizer;
use crate::metrics::Metrics;
use crate::policy::context::{AuthContext, AuthMethod, RequestInfo, TimeContext};
use crate::policy::engine::Principal;
use crate::policy::{Action, Engine, RequestContext};
use crate::routing::{Route, RouteTable};
use crate::session::SessionStore;
use crate::signals::network::NetworkSignals;
use crate::storage::Store;
use signin::{LiveSession, Signin};
use smol_str::SmolStr;
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use tokens::{AuthError, TokenAuthenticator};

/// Everything the gateway needs at run time, built once at start.
pub struct Gateway {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub engine: Arc<Engine>,
    pub tokens: TokenAuthenticator,
    pub minter: Minter,
    pub audit: AuditSink,
    pub network: NetworkSignals,
    pub clock: Arc<dyn Clock>,
    pub pseudonyms: Pseudonymizer,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    pub sessions: Arc<dyn SessionStore>,
    /// Browser sign-in, when `[oidc]` is configured.
    pub signin: Option<Arc<Signin>>,
    /// The bearer the admin listener's session API wants (see [`startup::ADMIN_TOKEN_FILE`]).
    pub admin_token: String,
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    Token(Arc<tokens::AuthenticatedToken>),
    Browser(Box<LiveSession>),
}

impl Caller {
    pub fn principal(&self) -> &Principal {
        match self {
            Caller::Token(t) => &t.principal,
            Caller::Browser(b) => &b.principal,
        }
    }

    pub fn pseudonym(&self) -> &str {
        match self {
            Caller::Token(t) => &t.pseudonym,
            Caller::Browser(b) => &b.session.user.subject,
        }
    }

    pub fn roles(&self) -> &[String] {
        match self {
            Caller::Token(t) => &t.record.roles,
            Caller::Browser(b) => &b.session.user.roles,
        }
    }

    /// The authentication facts policy sees in `context.auth`.
    pub fn auth_context(&self, now: Timestamp) -> AuthContext {
        match self {
            Caller::Token(_) => AuthContext::api_token(),
            Caller::Browser(b) => {
                let s = &b.session;
                let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                AuthContext {
                    method: AuthMethod::Browser,
                    mfa: s.mfa_at.is_some(),
                    mfa_age_s: s.mfa_age(now).map_or(-1, secs),
                    session_age_s: secs(now.saturating_since(s.created)),
                }
            }
        }
    }
}

/// One request to decide.
#[derive(Debug)]
pub struct AccessRequest<'a> {
    pub route: &'a Arc<Route>,
    pub method: &'a str,
    /// The normalized path: what policy sees and what the upstream receives.
    pub path: &'a SmolStr,
    pub bearer: Option<&'a str>,
    /// The gateway session cookie's value, when the browser sent one.
    pub session_cookie: Option<&'a str>,
    pub client_ip: IpAddr,
    pub purpose: Option<&'a str>,
}

/// An allowed request.
#[derive(Debug)]
pub struct Grant {
    pub decision_id: audit::EventId,
    pub credential: Arc<Credential>,
    pub action: Action,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(AuthError),
    /// Signed in at the IdP, but the passkey check is still to do.
    SecondFactorRequired,
    /// Denied now, but allowed after a fresh passkey check (RFC 9470 step-up).
    StepUp,
    /// Policy denied (or the token is not scoped to this twin).
    Denied {
        reason: String,
    },
    /// A dependency (storage, signing) failed; fail closed.
    Unavailable,
}

#[derive(Debug)]
pub struct Refused {
    pub decision_id: audit::EventId,
    pub refusal: Refusal,
}

impl Gateway {
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Authenticates, decides and mints. Every outcome is audited with its decision id.
    pub async fn authorize(&self, req: &AccessRequest<'_>) -> Result<Grant, Refused> {
        let started = std::time::Instant::now();
        let now = self.clock.now();
        let decision_id = audit::new_id(now);
        if self.audit.is_failing() {
            self.metrics.count_decision("error");
            return Err(Refused {
                decision_id,
                refusal: Refusal::Unavailable,
            });
        }
        let route = &req.route.config;
        let action = Action::from_method(req.method);
        let mut event = AuditEvent::with_id(decision_id, "access", "deny", now);
        event.route = Some(req.route.name.clone());
        event.action = Some(action.name());
        event.detail = Detail::Access(AccessDetail {
            method: audit::method_name(req.method),
            path: req.path.clone(),
            client_ip: req.client_ip,
            twin: req.route.twin.clone(),
            purpose: req.purpose.map(str::to_owned),
            token_id: None,
            session: None,
            errors: Vec::new(),
            reason: None,
        });

        let refuse = |event: AuditEvent, refusal: Refusal| async {
            self.metrics.count_decision(refusal_label(&refusal));
            self.audit.record(event).await;
            Err(Refused {
                decision_id,
                refusal,
            })
        };

        let caller = match self.authenticate(req, &route.twin, now, &mut event).await {
            Ok(c) => c,
            Err(r) => return refuse(event, r).await,
        };
        let mut ctx = self.context(req, now);
        ctx.auth = caller.auth_context(now);
        let principal = caller.principal();

        let loaded = self.engine.current();
        let verdict = loaded.verdict(principal, action, &route.twin, &ctx);
        let decision = &verdict.decision;
        self.metrics
            .decision_seconds
            .observe(started.elapsed().as_secs_f64());
        event.policies = decision.determining.clone();
        if !decision.errors.is_empty() {
            if let Some(d) = event.detail.access_mut() {
                d.errors = decision.errors.clone();
            }
        }
        if !decision.allow {
            // A browser whose request a fresh passkey check would allow is sent to step up
            // (RFC 9470); tools cannot step up, so they only get the denial.
            if let Caller::Browser(_) = caller {
                let mut fresh = ctx.clone();
                fresh.auth.mfa = true;
                fresh.auth.mfa_age_s = 0;
                if loaded.decide(principal, action, &route.twin, &fresh).allow {
                    event.outcome = "step_up";
                    set_reason(&mut event, "a fresh passkey check is required");
                    return refuse(event, Refusal::StepUp).await;
                }
            }
            let reason = "denied by policy".to_owned();
            set_reason(&mut event, &reason);
            return refuse(event, Refusal::Denied { reason }).await;
        }

        let roles = caller.roles();
        // Tokens, the common case on the request path, borrow everything here.
        let session_amr: Vec<String>;
        let (cache_key, amr, not_after): (Cow<str>, Cow<[&str]>, _) = match &caller {
            Caller::Token(t) => (
                Cow::Borrowed(t.cache_key.as_str()),
                Cow::Borrowed(&["api_token"][..]),
                Some(Timestamp::from_unix_secs(t.record.expires_at)),
            ),
            Caller::Browser(b) => {
                session_amr = self
                    .signin
                    .as_ref()
                    .map(|s| s.amr(&b.session))
                    .unwrap_or_default();
                (
                    Cow::Owned(format!("session:{}", b.session.key.0)),
                    Cow::Owned(session_amr.iter().map(String::as_str).collect()),
                    Some(b.session.expires),
                )
            }
        };
        let creq = CredentialRequest {
            cache_key: &cache_key,
            subject: caller.pseudonym(),
            audience: &route.name,
            twin: &route.twin,
            roles,
            amr: &amr,
            generation: decision.generation,
            not_after,
        };
        // The credential's scope lists every action policy allows here now. Known for every
        // request (it is part of the memoized verdict), so a cached credential is reused only
        // while its scope is still exactly true: when a passkey check ages out, the next
        // request gets a credential without `write`.
        let scope = verdict.allowed.scope();
        let (credential, minted) = match self.minter.get_or_mint(&creq, scope, now) {
            Ok(c) => c,
            Err(e) => {
                let e: MintError = e;
                tracing::error!(error = %e, decision_id = %decision_id, "credential signing failed");
                event.outcome = "error";
                set_reason(&mut event, "credential signing failed");
                return refuse(event, Refusal::Unavailable).await;
            }
        };
        event.outcome = "allow";
        if minted {
            self.metrics.credentials_minted.inc();
            let mut m = AuditEvent::new("credential.mint", "ok", now);
            m.actor = event.actor.clone();
            m.actor_pseudonym = event.actor_pseudonym.clone();
            m.route = event.route.clone();
            m.detail = Detail::Json(serde_json::json!({
                "jti": credential.jti,
                "kid": credential.kid,
                "scope": credential.scope,
                "expires_at": credential.expires_at.unix_secs(),
                "decision_id": decision_id,
            }));
            self.audit.record(m).await;
        }
        self.metrics.count_decision("allow");
        self.audit.record(event).await;
        Ok(Grant {
            decision_id,
            credential,
            action,
        })
    }
}

impl Gateway {
    /// Authenticates a request to `twin`: a bearer token if one is sent, else the session
    /// cookie. Notes the actor and any refusal reason on `event`.
    async fn authenticate(
        &self,
        req: &AccessRequest<'_>,
        twin: &str,
        now: Timestamp,
        event: &mut AuditEvent,
    ) -> Result<Caller, Refusal> {
        if let Some(bearer) = req.bearer {
            return self
                .authenticate_token(bearer, Some(twin), now, event)
                .await
                .map(Caller::Token);
        }
        if let (Some(cookie), Some(signin)) = (req.session_cookie, &self.signin) {
            match signin.session(cookie, now).await {
                Ok(Some(live)) => {
                    event.actor = Some(live.session.user.email.as_str().into());
                    event.actor_pseudonym = Some(live.session.user.subject.as_str().into());
                    event.detail.set_session(live.session.key.short());
                    if !signin.second_factor_done(&live.session) {
                        set_reason(event, "passkey check not done");
                        return Err(Refusal::SecondFactorRequired);
                    }
                    return Ok(Caller::Browser(Box::new(live)));
                }
                // A cookie that names no live session is no credential at all.
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "session lookup failed");
                    self.metrics.store_errors.inc();
                    event.outcome = "error";
                    set_reason(event, "session store unavailable");
                    return Err(Refusal::Unavailable);
                }
            }
        }
        set_reason(event, "no credentials");
        Err(Refusal::Unauthenticated(AuthError::Missing))
    }

    /// Authenticates an API token for a request to `twin`.
    /// Authenticates an API token, and if `twin` is named, checks that the token may reach it.
    async fn authenticate_token(
        &self,
        bearer: &str,
        twin: Option<&str>,
        now: Timestamp,
        event: &mut AuditEvent,
    ) -> Result<Arc<tokens::AuthenticatedToken>, Refusal> {
        let token = match self.tokens.authenticate(bearer, now).await {
            Ok(t) => t,
            Err(AuthError::Unavailable) => {
                self.metrics.store_errors.inc();
                event.outcome = "error";
                set_reason(event, "token store unavailable");
                return Err(Refusal::Unavailable);
            }
            Err(e) => {
                set_reason(event, &e.to_string());
                return Err(Refusal::Unauthenticated(e));
            }
        };
        event.actor = Some(token.actor.clone());
        event.actor_pseudonym = Some(token.pseudonym.clone());
        event.detail.set_token_id(&token.id);
        let Some(twin) = twin else {
            return Ok(token);
        };
        if !token.record.twins.is_empty() && !token.record.twins.iter().any(|t| t == twin) {
            let reason = format!("token is not scoped to twin {twin:?}");
            set_reason(event, &reason);
            return Err(Refusal::Denied { reason });
        }
        Ok(token)
    }

    /// Whether policy would allow `caller` to take `action` on `route` now, from
    /// `client_ip` (the portal's list of twins I may open). Not audited: nothing is accessed.
    pub fn allows(
        &self,
        caller: &Caller,
        route: &Arc<Route>,
        action: Action,
        client_ip: IpAddr,
    ) -> bool {
        let now = self.clock.now();
        let req = AccessRequest {
            route,
            method: if action == Action::Read {
                "GET"
            } else {
                "POST"
            },
            path: &route.prefix,
            bearer: None,
            session_cookie: None,
            client_ip,
            purpose: None,
        };
        let mut ctx = self.context(&req, now);
        ctx.auth = caller.auth_context(now);
        self.engine
            .current()
            .decide(caller.principal(), action, &route.config.twin, &ctx)
            .allow
    }

    fn context(&self, req: &AccessRequest<'_>, now: Timestamp) -> RequestContext {
        let mut ctx = RequestContext::new(
            AuthMethod::ApiToken,
            req.client_ip,
            TimeContext::at(now, &self.config.location.timezone),
            RequestInfo {
                method: req.method.into(),
                path: req.path.clone(),
            },
        );
        ctx.network.zone = self.network.zone(req.client_ip).into();
        ctx.purpose = req.purpose.map(str::to_owned);
        ctx
    }

    /// RFC 8693 exchange: an API token for a fresh credential for `route`, scoped to the
    /// actions policy allows there now (read as a GET, write as a POST of the route prefix).
    pub async fn exchange(
        &self,
        bearer: &str,
        audience: &str,
        client_ip: IpAddr,
        purpose: Option<&str>,
    ) -> Result<Arc<Credential>, Refused> {
        let now = self.clock.now();
        let decision_id = audit::new_id(now);
        if self.audit.is_failing() {
            return Err(Refused {
                decision_id,
                refusal: Refusal::Unavailable,
            });
        }
        let route = self.routes.by_name(audience);
        let mut event = AuditEvent::with_id(decision_id, "token.exchange", "deny", now);
        event.route = route.map(|r| r.config.name.as_str().into());
        event.detail = serde_json::json!({
            "client_ip": client_ip.to_string(),
            "twin": route.map(|r| r.config.twin.as_str()),
            "purpose": purpose,
        })
        .into();
        // The token is authenticated before the audience is looked at, so that a caller
        // without a token learns nothing of which route names exist.
        let twin = route.map(|r| r.config.twin.as_str());
        let token = match self.authenticate_token(bearer, twin, now, &mut event).await {
            Ok(t) => t,
            Err(refusal) => {
                self.audit.record(event).await;
                return Err(Refused {
                    decision_id,
                    refusal,
                });
            }
        };
        let Some(route) = route else {
            set_reason(&mut event, "audience names no route");
            self.audit.record(event).await;
            return Err(Refused {
                decision_id,
                refusal: Refusal::Denied {
                    reason: "audience must name a route".into(),
                },
            });
        };
        let cfg = &route.config;
        let loaded = self.engine.current();
        let mut allowed = Vec::new();
        let mut policies = Vec::new();
        for (action, method) in [(Action::Read, "GET"), (Action::Write, "POST")] {
            let req = AccessRequest {
                route,
                method,
                path: &route.prefix,
                bearer: None,
                session_cookie: None,
                client_ip,
                purpose,
            };
            let d = loaded.decide(
                &token.principal,
                action,
                &cfg.twin,
                &self.context(&req, now),
            );
            if d.allow {
                allowed.push(action.name());
            }
            policies.extend(d.determining.iter().cloned());
        }
        policies.sort();
        policies.dedup();
        event.policies = policies.into();
        if allowed.is_empty() {
            set_reason(&mut event, "policy allows no action on this route");
            self.audit.record(event).await;
            return Err(Refused {
                decision_id,
                refusal: Refusal::Denied {
                    reason: "policy allows no action on this route".into(),
                },
            });
        }
        let creq = CredentialRequest {
            cache_key: &token.cache_key,
            subject: &token.pseudonym,
            audience: &cfg.name,
            twin: &cfg.twin,
            roles: &token.record.roles,
            amr: &["api_token"],
            generation: loaded.generation,
            not_after: Some(Timestamp::from_unix_secs(token.record.expires_at)),
        };
        let scope = allowed.join(" ");
        match self.minter.mint(&creq, &scope, now) {
            Ok(c) => {
                self.metrics.credentials_minted.inc();
                event.outcome = "allow";
                if let Some(d) = event.detail.as_object_mut() {
                    d.insert("jti".into(), c.jti.clone().into());
                    d.insert("scope".into(), scope.into());
                    d.insert("expires_at".into(), c.expires_at.unix_secs().into());
                }
                self.audit.record(event).await;
                Ok(Arc::new(c))
            }
            Err(e) => {
                tracing::error!(error = %e, decision_id = %decision_id, "credential signing failed");
                event.outcome = "error";
                self.audit.record(event).await;
                Err(Refused {
                    decision_id,
                    refusal: Refusal::Unavailable,
                })
            }
        }
    }
}

fn set_reason(event: &mut AuditEvent, reason: &str) {
    event.detail.set_reason(reason);
}

fn refusal_label(r: &Refusal) -> &'static str {
    match r {
        Refusal::Unauthenticated(_) | Refusal::SecondFactorRequired => "unauthenticated",
        Refusal::StepUp => "step_up",
        Refusal::Denied { .. } => "deny",
        Refusal::Unavailable => "error",
    }
}
