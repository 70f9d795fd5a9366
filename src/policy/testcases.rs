//! Policy test cases kept beside the policies (`policies/tests/*.json`) and the shared code
//! of `twinward policy test`, `policy eval` and `policy eval --batch`.
//!
//! A test file:
//! ```json
//! {
//!   "description": "what these cases pin down",
//!   "timezone": "Europe/Berlin",
//!   "entities": [ { "uid": {"type": "Twinward::Twin", "id": "plant-7"},
//!                   "attrs": {"environment": "twin", "site": "plant-7", "sensitivity": 2},
//!                   "parents": [] } ],
//!   "cases": [
//!     { "name": "operator writes in business hours",
//!       "principal": {"type": "Twinward::User", "id": "alice", "roles": ["twin-operator"]},
//!       "action": "write",
//!       "resource": "Twinward::Twin::\"plant-7\"",
//!       "context": {"auth": {"method": "browser", "mfa": true, "mfa_age_s": 60},
//!                   "time": {"now": "2026-01-05T10:00:00Z"}},
//!       "expect": "allow",
//!       "determining": ["operators-write-business-hours"] }
//!   ]
//! }
//! ```
//! Context fields left out take the gateway's defaults for an unknown signal; `time.now`
//! defaults to Monday 2026-01-05 10:00 UTC so cases never depend on when they run.

use super::context::{AuthMethod, ContextOverrides, RequestContext, RequestInfo, TimeContext};
use super::engine::{Decision, Loaded, Principal};
use super::{Action, PrincipalKind};
use crate::clock::Timestamp;
use cedar_policy::{Entities, Entity, EntityUid};
use serde::Deserialize;
use std::path::Path;
use std::str::FromStr;

/// Monday 2026-01-05T10:00:00Z.
pub const DEFAULT_NOW: i64 = 1_767_607_200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    #[serde(default)]
    pub description: String,
    pub timezone: Option<String>,
    #[serde(default)]
    pub entities: Vec<serde_json::Value>,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    #[serde(flatten)]
    pub query: Query,
    pub expect: Expect,
    pub determining: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

/// One authorization question, as admins write it.
#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    pub principal: serde_json::Value,
    /// `"read"`, `"Twinward::Action::\"read\""` or `{"type": "Twinward::Action", "id": "read"}`.
    pub action: serde_json::Value,
    pub resource: serde_json::Value,
    #[serde(default)]
    pub context: Option<serde_json::Value>,
}

/// One line of `policy eval --batch`: these four fields and no other, so a misspelled one
/// (`"contxt"`) is an error rather than a question asked with the default context.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchLine {
    principal: serde_json::Value,
    action: serde_json::Value,
    resource: serde_json::Value,
    #[serde(default)]
    context: Option<serde_json::Value>,
}

impl From<BatchLine> for Query {
    fn from(b: BatchLine) -> Query {
        Query {
            principal: b.principal,
            action: b.action,
            resource: b.resource,
            context: b.context,
        }
    }
}

/// The action of a query, in any of the forms [`Query::action`] names.
pub fn parse_action(v: &serde_json::Value) -> Result<Action, String> {
    let name = match v {
        serde_json::Value::String(s) => match EntityUid::from_str(s) {
            Ok(uid) if uid.type_name().to_string() == format!("{}::Action", super::NAMESPACE) => {
                uid.id().unescaped().to_owned()
            }
            _ => s.clone(),
        },
        serde_json::Value::Object(_) => {
            let uid = parse_uid(v)?;
            if uid.type_name().basename() != "Action" {
                return Err(format!("action {uid} is not a Twinward::Action"));
            }
            uid.id().unescaped().to_owned()
        }
        other => return Err(format!("action {other} is not a name or an entity")),
    };
    Action::parse(&name).ok_or_else(|| format!("action {name:?} is not read, write or admin"))
}

/// `"Twinward::User::\"alice\""` or `{"type": "Twinward::User", "id": "alice"}`
/// (`__entity` wrapping allowed). A bare type without namespace gets `Twinward::`.
pub fn parse_uid(v: &serde_json::Value) -> Result<EntityUid, String> {
    match v {
        serde_json::Value::String(s) => {
            EntityUid::from_str(s).map_err(|e| format!("entity {s:?}: {e}"))
        }
        serde_json::Value::Object(o) => {
            let o = o.get("__entity").and_then(|e| e.as_object()).unwrap_or(o);
            let t = o
                .get("type")
                .and_then(|t| t.as_str())
                .ok_or("entity needs \"type\"")?;
            let id = o
                .get("id")
                .and_then(|t| t.as_str())
                .ok_or("entity needs \"id\"")?;
            let t = if t.contains("::") {
                t.to_owned()
            } else {
                format!("{}::{t}", super::NAMESPACE)
            };
            super::engine::uid(&t, id).map_err(|e| e.to_string())
        }
        other => Err(format!("entity must be a string or an object, not {other}")),
    }
}

/// Answers one query. `extra` holds entities given by the caller, which may include the
/// principal itself (with its parents); otherwise the principal gets `roles` as parents.
pub fn evaluate(
    loaded: &Loaded,
    q: &Query,
    extra: &[Entity],
    tz: &chrono_tz::Tz,
) -> Result<Decision, String> {
    let puid = parse_uid(&q.principal)?;
    let kind = match puid.type_name().to_string().as_str() {
        "Twinward::User" => PrincipalKind::User,
        "Twinward::ServiceAccount" => PrincipalKind::ServiceAccount,
        other => {
            return Err(format!(
                "principal type {other} is not Twinward::User or Twinward::ServiceAccount"
            ))
        }
    };
    let action = parse_action(&q.action)?;
    let resource = parse_uid(&q.resource)?;
    let id = puid.id().unescaped().to_owned();
    let principal = match extra.iter().find(|e| e.uid() == puid) {
        Some(e) => Principal::from_entity(kind, e.clone()),
        None => {
            let roles: Vec<String> = q
                .principal
                .get("roles")
                .and_then(|r| r.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let attr = |k: &str| {
                q.principal
                    .get("attrs")
                    .and_then(|a| a.get(k))
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            match kind {
                PrincipalKind::User => Principal::user(&id, &attr("email"), &attr("idp"), &roles),
                PrincipalKind::ServiceAccount => {
                    Principal::service_account(&id, &attr("owner"), &roles)
                }
            }
            .map_err(|e| e.to_string())?
        }
    };
    let method = match kind {
        PrincipalKind::User => AuthMethod::Browser,
        PrincipalKind::ServiceAccount => AuthMethod::ApiToken,
    };
    let http_method = if action == Action::Read {
        "GET"
    } else {
        "POST"
    };
    let mut ctx = RequestContext::new(
        method,
        std::net::IpAddr::from([127, 0, 0, 1]),
        TimeContext::at(Timestamp::from_unix_secs(DEFAULT_NOW), tz),
        RequestInfo {
            method: http_method.into(),
            path: "/".into(),
        },
    );
    if let Some(c) = &q.context {
        let o: ContextOverrides =
            serde_json::from_value(c.clone()).map_err(|e| format!("context: {e}"))?;
        ctx.apply(o, tz)?;
    }
    let context = ctx.to_cedar()?;
    Ok(loaded.decide_with(&principal, action, &resource, context, extra))
}

/// Entities in Cedar's JSON format, checked against the schema.
pub fn parse_entities(loaded: &Loaded, json: &[serde_json::Value]) -> Result<Vec<Entity>, String> {
    let es = Entities::from_json_value(
        serde_json::Value::Array(json.to_vec()),
        Some(&loaded.bundle.schema),
    )
    .map_err(|e| e.to_string())?;
    Ok(es
        .iter()
        .filter(|e| e.uid().type_name().basename() != "Action")
        .cloned()
        .collect())
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Runs every `*.json` test file in `tests_dir` against `loaded`.
pub fn run_dir(loaded: &Loaded, tests_dir: &Path) -> Result<Vec<CaseResult>, String> {
    let mut files: Vec<_> = std::fs::read_dir(tests_dir)
        .map_err(|e| format!("{}: {e}", tests_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut results = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let file: TestFile = serde_json::from_str(&text)
            .map_err(|e| format!("{name}:{}:{}: {e}", e.line(), e.column()))?;
        let tz: chrono_tz::Tz = match &file.timezone {
            Some(t) => t
                .parse()
                .map_err(|_| format!("{name}: timezone {t:?} is not an IANA time zone"))?,
            None => chrono_tz::UTC,
        };
        let extra =
            parse_entities(loaded, &file.entities).map_err(|e| format!("{name}: entities: {e}"))?;
        for case in &file.cases {
            let (passed, detail) = match evaluate(loaded, &case.query, &extra, &tz) {
                Err(e) => (false, format!("error: {e}")),
                Ok(d) => {
                    let got = if d.allow { Expect::Allow } else { Expect::Deny };
                    let mut ok = got == case.expect;
                    let mut detail = format!(
                        "{} (determining: [{}]{})",
                        if d.allow { "allow" } else { "deny" },
                        d.determining.join(", "),
                        if d.errors.is_empty() {
                            String::new()
                        } else {
                            format!("; errors: {}", d.errors.join("; "))
                        }
                    );
                    if let Some(want) = &case.determining {
                        let mut want = want.clone();
                        want.sort();
                        if want[..] != d.determining[..] {
                            ok = false;
                            detail
                                .push_str(&format!("; expected determining [{}]", want.join(", ")));
                        }
                    }
                    if got != case.expect {
                        let want = if case.expect == Expect::Allow {
                            "allow"
                        } else {
                            "deny"
                        };
                        detail = format!("expected {want}, got {detail}");
                    }
                    (ok, detail)
                }
            };
            results.push(CaseResult {
                file: name.clone(),
                name: case.name.clone(),
                passed,
                detail,
            });
        }
    }
    Ok(results)
}
