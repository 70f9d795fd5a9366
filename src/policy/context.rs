//! The Cedar request context of the schema contract, built from typed values (building it
//! from JSON costs about 17 µs a request; from typed values a fraction of that).
//! Fields that no signal has filled carry the documented "unknown" values.

use crate::clock::Timestamp;
use cedar_policy::{Context, RestrictedExpression};
use cedar_policy_core::ast::{Context as CoreContext, Value};
use chrono::{Datelike, TimeZone, Timelike};
use serde::Deserialize;
use smol_str::SmolStr;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Browser,
    ApiToken,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Browser => "browser",
            AuthMethod::ApiToken => "api_token",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthContext {
    pub method: AuthMethod,
    pub mfa: bool,
    pub mfa_age_s: i64,
    pub session_age_s: i64,
}

impl AuthContext {
    /// A tool with an API token: no session, no second factor.
    pub fn api_token() -> Self {
        AuthContext {
            method: AuthMethod::ApiToken,
            mfa: false,
            mfa_age_s: -1,
            session_age_s: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceContext {
    pub id: String,
    pub managed: bool,
    pub compliant: bool,
    pub os: String,
    pub posture_age_s: i64,
}

impl DeviceContext {
    /// No posture signal: id `""`, unmanaged, non-compliant, posture age -1.
    pub fn unknown() -> Self {
        DeviceContext {
            id: String::new(),
            managed: false,
            compliant: false,
            os: String::new(),
            posture_age_s: -1,
        }
    }
}

/// Zone, country, method and path are built for every request: `SmolStr` holds the short
/// strings they nearly always are inline, and the defaults are static, so building a
/// context allocates nothing in the common case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkContext {
    pub ip: IpAddr,
    pub zone: SmolStr,
    pub country: SmolStr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimeContext {
    pub now: Timestamp,
    /// 0–23 in the configured timezone.
    pub hour: i64,
    /// 1 (Monday) … 7 in the configured timezone.
    pub weekday: i64,
}

impl TimeContext {
    pub fn at(now: Timestamp, tz: &chrono_tz::Tz) -> Self {
        // A UTC instant always has exactly one local time; the fallback is unreachable.
        let (hour, weekday) = match tz.timestamp_opt(now.unix_secs(), 0) {
            chrono::LocalResult::Single(t) => (t.hour(), t.weekday().number_from_monday()),
            _ => (0, 1),
        };
        TimeContext {
            // Cedar's datetime here has second precision; truncating also lets the context
            // builder reuse the time record for a whole second.
            now: Timestamp::from_unix_secs(now.unix_secs()),
            hour: i64::from(hour),
            weekday: i64::from(weekday),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub method: SmolStr,
    pub path: SmolStr,
}

/// A context field (or record) a policy reads, resolved from its attribute path once when
/// a slice is cut, so rendering a memo key is a match per field, not a path comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextField {
    Auth,
    AuthMethod,
    AuthMfa,
    AuthMfaAge,
    AuthSessionAge,
    Device,
    DeviceId,
    DeviceManaged,
    DeviceCompliant,
    DeviceOs,
    DevicePostureAge,
    Network,
    NetworkIp,
    NetworkZone,
    NetworkCountry,
    Time,
    TimeNow,
    TimeHour,
    TimeWeekday,
    Request,
    RequestMethod,
    RequestPath,
    Purpose,
}

impl ContextField {
    /// The field at `path` (from `context`), if the memo knows how to render it.
    pub fn of(path: &[String]) -> Option<ContextField> {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        Some(match segs.as_slice() {
            ["auth"] => ContextField::Auth,
            ["auth", "method"] => ContextField::AuthMethod,
            ["auth", "mfa"] => ContextField::AuthMfa,
            ["auth", "mfa_age_s"] => ContextField::AuthMfaAge,
            ["auth", "session_age_s"] => ContextField::AuthSessionAge,
            ["device"] => ContextField::Device,
            ["device", "id"] => ContextField::DeviceId,
            ["device", "managed"] => ContextField::DeviceManaged,
            ["device", "compliant"] => ContextField::DeviceCompliant,
            ["device", "os"] => ContextField::DeviceOs,
            ["device", "posture_age_s"] => ContextField::DevicePostureAge,
            ["network"] => ContextField::Network,
            ["network", "ip"] => ContextField::NetworkIp,
            ["network", "zone"] => ContextField::NetworkZone,
            ["network", "country"] => ContextField::NetworkCountry,
            ["time"] => ContextField::Time,
            ["time", "now"] => ContextField::TimeNow,
            ["time", "hour"] => ContextField::TimeHour,
            ["time", "weekday"] => ContextField::TimeWeekday,
            ["request"] => ContextField::Request,
            ["request", "method"] => ContextField::RequestMethod,
            ["request", "path"] => ContextField::RequestPath,
            ["purpose"] => ContextField::Purpose,
            _ => return None,
        })
    }

    /// Every path resolved, or `None` if one is not known (the decision is then not memoized).
    pub fn compile(paths: &[Vec<String>]) -> Option<Vec<ContextField>> {
        paths.iter().map(|p| ContextField::of(p)).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestContext {
    pub auth: AuthContext,
    pub device: DeviceContext,
    pub network: NetworkContext,
    pub time: TimeContext,
    pub request: RequestInfo,
    pub purpose: Option<String>,
}

impl RequestContext {
    /// The context of a request about which nothing but these facts is known.
    pub fn new(method: AuthMethod, ip: IpAddr, time: TimeContext, request: RequestInfo) -> Self {
        RequestContext {
            auth: AuthContext {
                method,
                mfa: false,
                mfa_age_s: -1,
                session_age_s: 0,
            },
            device: DeviceContext::unknown(),
            network: NetworkContext {
                ip,
                zone: SmolStr::new_static("unknown"),
                country: SmolStr::new_static("ZZ"),
            },
            time,
            request,
            purpose: None,
        }
    }

    /// Appends the values at `paths` (attribute paths from `context`) to `out`, for the
    /// decision memo. False when a path names nothing this type knows: then nothing may be
    /// memoized.
    pub fn render(&self, paths: &[Vec<String>], out: &mut String) -> bool {
        match ContextField::compile(paths) {
            Some(fields) => {
                self.render_fields(&fields, out);
                true
            }
            None => false,
        }
    }

    /// [`Self::render`] for fields resolved once with [`ContextField::compile`].
    pub fn render_fields(&self, fields: &[ContextField], out: &mut String) {
        use std::fmt::Write as _;
        let (a, d, n, t, r) = (
            &self.auth,
            &self.device,
            &self.network,
            &self.time,
            &self.request,
        );
        for f in fields {
            let _ = match f {
                ContextField::AuthMethod => write!(out, "{}", a.method.as_str()),
                ContextField::AuthMfa => write!(out, "{}", a.mfa),
                ContextField::AuthMfaAge => write!(out, "{}", a.mfa_age_s),
                ContextField::AuthSessionAge => write!(out, "{}", a.session_age_s),
                ContextField::Auth => write!(
                    out,
                    "{}|{}|{}|{}",
                    a.method.as_str(),
                    a.mfa,
                    a.mfa_age_s,
                    a.session_age_s
                ),
                ContextField::DeviceId => write!(out, "{:?}", d.id),
                ContextField::DeviceManaged => write!(out, "{}", d.managed),
                ContextField::DeviceCompliant => write!(out, "{}", d.compliant),
                ContextField::DeviceOs => write!(out, "{:?}", d.os),
                ContextField::DevicePostureAge => write!(out, "{}", d.posture_age_s),
                ContextField::Device => write!(
                    out,
                    "{:?}|{}|{}|{:?}|{}",
                    d.id, d.managed, d.compliant, d.os, d.posture_age_s
                ),
                ContextField::NetworkIp => write!(out, "{}", n.ip),
                ContextField::NetworkZone => write!(out, "{:?}", n.zone),
                ContextField::NetworkCountry => write!(out, "{:?}", n.country),
                ContextField::Network => write!(out, "{}|{:?}|{:?}", n.ip, n.zone, n.country),
                ContextField::TimeNow => write!(out, "{}", t.now.unix_secs()),
                ContextField::TimeHour => write!(out, "{}", t.hour),
                ContextField::TimeWeekday => write!(out, "{}", t.weekday),
                ContextField::Time => {
                    write!(out, "{}|{}|{}", t.now.unix_secs(), t.hour, t.weekday)
                }
                ContextField::RequestMethod => write!(out, "{:?}", r.method),
                ContextField::RequestPath => write!(out, "{:?}", r.path),
                ContextField::Request => write!(out, "{:?}|{:?}", r.method, r.path),
                ContextField::Purpose => write!(out, "{:?}", self.purpose),
            };
            out.push('\u{1f}');
        }
    }

    /// The Cedar context, built from already-evaluated values. The parts that change slowly
    /// (time per second, network per client address, auth and device per state) are cached
    /// per thread; only `request` and `purpose` are built for every request. Equal to
    /// [`Self::to_cedar`], which the tests hold it to.
    pub fn to_cedar_fast(&self) -> Result<Context, String> {
        let auth = cached(&AUTH, &self.auth, || {
            Ok(Value::record(
                [
                    ("method", Value::from(self.auth.method.as_str())),
                    ("mfa", Value::from(self.auth.mfa)),
                    ("mfa_age_s", Value::from(self.auth.mfa_age_s)),
                    ("session_age_s", Value::from(self.auth.session_age_s)),
                ],
                None,
            ))
        })?;
        let device = cached(&DEVICE, &self.device, || {
            Ok(Value::record(
                [
                    ("id", Value::from(self.device.id.as_str())),
                    ("managed", Value::from(self.device.managed)),
                    ("compliant", Value::from(self.device.compliant)),
                    ("os", Value::from(self.device.os.as_str())),
                    ("posture_age_s", Value::from(self.device.posture_age_s)),
                ],
                None,
            ))
        })?;
        let network = NETWORK.with(|cell| -> Result<Value, String> {
            let mut map = cell.borrow_mut();
            if let Some(v) = map.get(&self.network) {
                return Ok(v.clone());
            }
            let ip = evaluated(RestrictedExpression::new_ip(self.network.ip.to_string()))?;
            let v = Value::record(
                [
                    ("ip", ip),
                    ("zone", Value::from(self.network.zone.as_str())),
                    ("country", Value::from(self.network.country.as_str())),
                ],
                None,
            );
            if map.len() >= 4096 {
                map.clear();
            }
            map.insert(self.network.clone(), v.clone());
            Ok(v)
        })?;
        let time = cached(&TIME, &self.time, || {
            let now = evaluated(RestrictedExpression::new_datetime(
                self.time.now.to_rfc3339(),
            ))?;
            Ok(Value::record(
                [
                    ("now", now),
                    ("hour", Value::from(self.time.hour)),
                    ("weekday", Value::from(self.time.weekday)),
                ],
                None,
            ))
        })?;
        let request = Value::record(
            [
                ("method", Value::from(self.request.method.as_str())),
                ("path", Value::from(self.request.path.as_str())),
            ],
            None,
        );
        let mut map: BTreeMap<SmolStr, Value> = BTreeMap::new();
        map.insert(SmolStr::new_static("auth"), auth);
        map.insert(SmolStr::new_static("device"), device);
        map.insert(SmolStr::new_static("network"), network);
        map.insert(SmolStr::new_static("time"), time);
        map.insert(SmolStr::new_static("request"), request);
        if let Some(p) = &self.purpose {
            map.insert(SmolStr::new_static("purpose"), Value::from(p.as_str()));
        }
        Ok(Context::from(CoreContext::Value(Arc::new(map))))
    }

    /// The Cedar context through Cedar's public constructors: the reference for
    /// [`Self::to_cedar_fast`].
    pub fn to_cedar(&self) -> Result<Context, String> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let rec = |pairs: Vec<(&str, RestrictedExpression)>| {
            RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
                .map_err(|e| e.to_string())
        };
        let auth = rec(vec![
            ("method", s(self.auth.method.as_str())),
            ("mfa", RestrictedExpression::new_bool(self.auth.mfa)),
            (
                "mfa_age_s",
                RestrictedExpression::new_long(self.auth.mfa_age_s),
            ),
            (
                "session_age_s",
                RestrictedExpression::new_long(self.auth.session_age_s),
            ),
        ])?;
        let device = rec(vec![
            ("id", s(&self.device.id)),
            (
                "managed",
                RestrictedExpression::new_bool(self.device.managed),
            ),
            (
                "compliant",
                RestrictedExpression::new_bool(self.device.compliant),
            ),
            ("os", s(&self.device.os)),
            (
                "posture_age_s",
                RestrictedExpression::new_long(self.device.posture_age_s),
            ),
        ])?;
        let network = rec(vec![
            (
                "ip",
                RestrictedExpression::new_ip(self.network.ip.to_string()),
            ),
            ("zone", s(&self.network.zone)),
            ("country", s(&self.network.country)),
        ])?;
        let time = rec(vec![
            (
                "now",
                RestrictedExpression::new_datetime(self.time.now.to_rfc3339()),
            ),
            ("hour", RestrictedExpression::new_long(self.time.hour)),
            ("weekday", RestrictedExpression::new_long(self.time.weekday)),
        ])?;
        let request = rec(vec![
            ("method", s(&self.request.method)),
            ("path", s(&self.request.path)),
        ])?;
        let mut pairs = vec![
            ("auth".to_owned(), auth),
            ("device".to_owned(), device),
            ("network".to_owned(), network),
            ("time".to_owned(), time),
            ("request".to_owned(), request),
        ];
        if let Some(p) = &self.purpose {
            pairs.push(("purpose".to_owned(), s(p)));
        }
        Context::from_pairs(pairs).map_err(|e| e.to_string())
    }

    /// Applies a partial context written by an admin (policy tests, `policy eval`) on top
    /// of this one. `time.now` also sets hour and weekday in `tz` unless they are given.
    pub fn apply(&mut self, o: ContextOverrides, tz: &chrono_tz::Tz) -> Result<(), String> {
        if let Some(a) = o.auth {
            if let Some(m) = a.method {
                self.auth.method = match m.as_str() {
                    "browser" => AuthMethod::Browser,
                    "api_token" => AuthMethod::ApiToken,
                    other => {
                        return Err(format!(
                            "auth.method {other:?} is not \"browser\" or \"api_token\""
                        ))
                    }
                };
            }
            set(&mut self.auth.mfa, a.mfa);
            set(&mut self.auth.mfa_age_s, a.mfa_age_s);
            set(&mut self.auth.session_age_s, a.session_age_s);
        }
        if let Some(d) = o.device {
            set(&mut self.device.id, d.id);
            set(&mut self.device.managed, d.managed);
            set(&mut self.device.compliant, d.compliant);
            set(&mut self.device.os, d.os);
            set(&mut self.device.posture_age_s, d.posture_age_s);
        }
        if let Some(n) = o.network {
            if let Some(ip) = n.ip {
                self.network.ip = ip
                    .parse()
                    .map_err(|_| format!("network.ip {ip:?} is not an IP address"))?;
            }
            set(&mut self.network.zone, n.zone);
            set(&mut self.network.country, n.country);
        }
        if let Some(t) = o.time {
            if let Some(now) = t.now {
                let parsed = chrono::DateTime::parse_from_rfc3339(&now)
                    .map_err(|e| format!("time.now {now:?} is not an RFC 3339 time: {e}"))?;
                self.time = TimeContext::at(Timestamp::from_unix_secs(parsed.timestamp()), tz);
            }
            if let Some(h) = t.hour {
                if !(0..=23).contains(&h) {
                    return Err(format!("time.hour {h} is not 0–23"));
                }
                self.time.hour = h;
            }
            if let Some(w) = t.weekday {
                if !(1..=7).contains(&w) {
                    return Err(format!("time.weekday {w} is not 1 (Monday) – 7"));
                }
                self.time.weekday = w;
            }
        }
        if let Some(r) = o.request {
            set(&mut self.request.method, r.method);
            set(&mut self.request.path, r.path);
        }
        if o.purpose.is_some() {
            self.purpose = o.purpose;
        }
        Ok(())
    }
}

thread_local! {
    static AUTH: RefCell<Option<(AuthContext, Value)>> = const { RefCell::new(None) };
    static DEVICE: RefCell<Option<(DeviceContext, Value)>> = const { RefCell::new(None) };
    static TIME: RefCell<Option<(TimeContext, Value)>> = const { RefCell::new(None) };
    static NETWORK: RefCell<HashMap<NetworkContext, Value>> = RefCell::new(HashMap::new());
}

/// A one-entry per-thread cache: the value for `key`, built when the key changed.
fn cached<K: Clone + PartialEq + 'static>(
    slot: &'static std::thread::LocalKey<RefCell<Option<(K, Value)>>>,
    key: &K,
    build: impl FnOnce() -> Result<Value, String>,
) -> Result<Value, String> {
    slot.with(|cell| {
        if let Some((k, v)) = cell.borrow().as_ref() {
            if k == key {
                return Ok(v.clone());
            }
        }
        let v = build()?;
        *cell.borrow_mut() = Some((key.clone(), v.clone()));
        Ok(v)
    })
}

/// Evaluates an extension constructor (`ip(…)`, `datetime(…)`) through Cedar's public API
/// and returns the resulting value.
fn evaluated(e: RestrictedExpression) -> Result<Value, String> {
    let ctx = Context::from_pairs([("v".to_owned(), e)]).map_err(|e| e.to_string())?;
    match ctx.as_ref() {
        CoreContext::Value(map) => map.get("v").cloned().ok_or_else(|| "no value".to_owned()),
        CoreContext::RestrictedResidual(_) => Err("context value is not concrete".to_owned()),
    }
}

fn set<T, V: Into<T>>(slot: &mut T, v: Option<V>) {
    if let Some(v) = v {
        *slot = v.into();
    }
}

/// A partial context as admins write it in policy tests and `policy eval --context`:
/// plain JSON, IPs and times as strings, anything left out keeps its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextOverrides {
    pub auth: Option<AuthOverrides>,
    pub device: Option<DeviceOverrides>,
    pub network: Option<NetworkOverrides>,
    pub time: Option<TimeOverrides>,
    pub request: Option<RequestOverrides>,
    pub purpose: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthOverrides {
    pub method: Option<String>,
    pub mfa: Option<bool>,
    pub mfa_age_s: Option<i64>,
    pub session_age_s: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOverrides {
    pub id: Option<String>,
    pub managed: Option<bool>,
    pub compliant: Option<bool>,
    pub os: Option<String>,
    pub posture_age_s: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverrides {
    pub ip: Option<String>,
    pub zone: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeOverrides {
    pub now: Option<String>,
    pub hour: Option<i64>,
    pub weekday: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestOverrides {
    pub method: Option<String>,
    pub path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_and_weekday_follow_the_timezone() {
        // 2026-11-25T22:30:00Z is a Wednesday; in Berlin (UTC+1) it is 23:30.
        let now = Timestamp::from_unix_secs(1_795_645_800);
        let utc = TimeContext::at(now, &chrono_tz::UTC);
        assert_eq!((utc.hour, utc.weekday), (22, 3));
        let berlin = TimeContext::at(now, &chrono_tz::Europe::Berlin);
        assert_eq!((berlin.hour, berlin.weekday), (23, 3));
        let tokyo = TimeContext::at(now, &chrono_tz::Asia::Tokyo);
        assert_eq!((tokyo.hour, tokyo.weekday), (7, 4));
    }

    // The fast path must build exactly what Cedar's constructors build, for every part that
    // can change, including after the per-thread caches hold other values.
    #[test]
    fn fast_context_equals_the_reference_context() {
        let base = RequestContext::new(
            AuthMethod::ApiToken,
            "10.20.1.1".parse().unwrap(),
            TimeContext::at(Timestamp::from_unix_secs(1_795_645_800), &chrono_tz::UTC),
            RequestInfo {
                method: "GET".into(),
                path: "/plant-7/x".into(),
            },
        );
        let mut variants = vec![base.clone()];
        let mut v = base.clone();
        v.auth = AuthContext {
            method: AuthMethod::Browser,
            mfa: true,
            mfa_age_s: 12,
            session_age_s: 99,
        };
        variants.push(v);
        let mut v = base.clone();
        v.device = DeviceContext {
            id: "d1".into(),
            managed: true,
            compliant: true,
            os: "linux".into(),
            posture_age_s: 5,
        };
        variants.push(v);
        let mut v = base.clone();
        v.network = NetworkContext {
            ip: "2001:db8::7".parse().unwrap(),
            zone: "office".into(),
            country: "DE".into(),
        };
        variants.push(v);
        let mut v = base.clone();
        v.time = TimeContext::at(
            Timestamp::from_unix_secs(1_795_645_801),
            &chrono_tz::Europe::Berlin,
        );
        variants.push(v);
        let mut v = base.clone();
        v.request = RequestInfo {
            method: "DELETE".into(),
            path: "/plant-9/a%20b".into(),
        };
        v.purpose = Some("ticket 7".into());
        variants.push(v);
        for round in 0..2 {
            for (i, c) in variants.iter().enumerate() {
                assert_eq!(
                    c.to_cedar_fast().unwrap(),
                    c.to_cedar().unwrap(),
                    "variant {i}, round {round}"
                );
            }
        }
    }

    #[test]
    fn overrides_apply_and_refuse_nonsense() {
        let mut c = RequestContext::new(
            AuthMethod::ApiToken,
            "127.0.0.1".parse().unwrap(),
            TimeContext::at(Timestamp::EPOCH, &chrono_tz::UTC),
            RequestInfo {
                method: "GET".into(),
                path: "/".into(),
            },
        );
        let o: ContextOverrides = serde_json::from_str(
            r#"{"network":{"ip":"10.20.1.1","zone":"plant"},"time":{"now":"2026-11-23T09:15:00Z"}}"#,
        )
        .unwrap();
        c.apply(o, &chrono_tz::UTC).unwrap();
        assert_eq!(c.network.zone, "plant");
        assert_eq!((c.time.hour, c.time.weekday), (9, 1));
        let bad: ContextOverrides = serde_json::from_str(r#"{"time":{"hour":25}}"#).unwrap();
        assert!(c.apply(bad, &chrono_tz::UTC).is_err());
        assert!(serde_json::from_str::<ContextOverrides>(r#"{"nope":1}"#).is_err());
    }
}
