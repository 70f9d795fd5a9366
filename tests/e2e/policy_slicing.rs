//! Scope slicing never changes a decision: for random (strictly valid) policy sets over a small
//! universe of roles (with a hierarchy), twins (with groups) and principals, and random
//! requests, `Loaded::decide` (sliced) and `Loaded::decide_unsliced` (every policy) agree on
//! allow, the determining policies and the evaluation errors.
//!
//! So that the property cannot hold vacuously, the run also counts allows, denies, non-empty
//! determining sets and errors, and checks that the generated cases would catch a broken
//! slicer: three deliberately wrong slices (resource ancestors forgotten, wrong principal
//! type, wrong action), built with the engine's own `Scope` and evaluated with Cedar
//! directly, must each disagree with the full set somewhere in the run.

use cedar_policy::{
    Authorizer, Decision as CedarDecision, Entities, Entity, EntityTypeName, EntityUid, PolicySet,
    Request, RestrictedExpression,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use twinward::clock::Timestamp;
use twinward::config::AttrValue;
use twinward::policy::context::{AuthMethod, RequestInfo, TimeContext};
use twinward::policy::engine::{self, Decision, Loaded, Principal, TwinSpec};
use twinward::policy::slice::Scope;
use twinward::policy::{loader, Action, RequestContext};

const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

/// Roles; `operator` is in `viewer`, `admin` in `operator`, `runner` in `viewer`.
const ROLES: [&str; 5] = ["viewer", "operator", "admin", "contractor", "runner"];
/// Requests may carry a role no entity declares: it must simply never match.
const REQUEST_ROLES: [&str; 6] = [
    "viewer",
    "operator",
    "admin",
    "contractor",
    "runner",
    "ghost",
];
/// Twins and twin groups. t0 and t1 are in g-north, t2 in g-south, t3 in no group; g-north
/// and g-south are in g-all. All are declared in entities.json but t4, which only a route
/// (a `TwinSpec`) declares; a route declares t1 too.
const RESOURCES: [&str; 8] = ["t0", "t1", "t2", "t3", "t4", "g-all", "g-north", "g-south"];
const ACTIONS: [&str; 3] = ["read", "write", "admin"];
const ENVIRONMENTS: [&str; 3] = ["twin", "sandbox", "prod"];
const SITES: [&str; 3] = ["north", "south", "lab"];
/// 1000 makes `resource.sensitivity + 9223372036854775000` overflow.
const SENSITIVITIES: [i64; 6] = [0, 1, 2, 3, 4, 1000];
const ZONES: [&str; 3] = ["unknown", "plant", "office"];
const COUNTRIES: [&str; 2] = ["ZZ", "DE"];
const IPS: [&str; 3] = ["10.1.2.3", "192.168.7.9", "::1"];
const PATHS: [&str; 3] = ["/t0/state", "/t1/cmd", "/"];
const PURPOSES: [&str; 3] = ["", "maintenance", "audit"];
/// |x| >= 2 makes `x * 4611686018427387904` overflow.
const MFA_AGES: [i64; 6] = [-1, 0, 1, 299, 301, 100_000];
/// < -1 makes `x - 9223372036854775807` overflow.
const SESSION_AGES: [i64; 3] = [-5, 0, 10];

// ---------------------------------------------------------------- policies

#[derive(Debug, Clone)]
enum PrincipalC {
    Any,
    EqUser(usize),
    EqSa(usize),
    In(usize),
    IsUser,
    IsSa,
    IsInUser(usize),
    IsInSa(usize),
}

impl PrincipalC {
    fn render(&self) -> String {
        match self {
            PrincipalC::Any => "principal".into(),
            PrincipalC::EqUser(i) => format!("principal == Twinward::User::\"u{i}\""),
            PrincipalC::EqSa(i) => format!("principal == Twinward::ServiceAccount::\"sa{i}\""),
            PrincipalC::In(r) => format!("principal in Twinward::Role::\"{}\"", ROLES[*r]),
            PrincipalC::IsUser => "principal is Twinward::User".into(),
            PrincipalC::IsSa => "principal is Twinward::ServiceAccount".into(),
            PrincipalC::IsInUser(r) => {
                format!(
                    "principal is Twinward::User in Twinward::Role::\"{}\"",
                    ROLES[*r]
                )
            }
            PrincipalC::IsInSa(r) => format!(
                "principal is Twinward::ServiceAccount in Twinward::Role::\"{}\"",
                ROLES[*r]
            ),
        }
    }

    fn service_account_only(&self) -> bool {
        matches!(
            self,
            PrincipalC::EqSa(_) | PrincipalC::IsSa | PrincipalC::IsInSa(_)
        )
    }

    fn user_only(&self) -> bool {
        matches!(
            self,
            PrincipalC::EqUser(_) | PrincipalC::IsUser | PrincipalC::IsInUser(_)
        )
    }
}

#[derive(Debug, Clone)]
enum ActionC {
    Any,
    Eq(usize),
    /// Bits over `ACTIONS`; never zero.
    In(u8),
}

#[derive(Debug, Clone)]
enum ResourceC {
    Any,
    Eq(usize),
    In(usize),
    Is,
    IsIn(usize),
}

impl ResourceC {
    fn render(&self) -> String {
        match self {
            ResourceC::Any => "resource".into(),
            ResourceC::Eq(t) => format!("resource == Twinward::Twin::\"{}\"", RESOURCES[*t]),
            ResourceC::In(t) => format!("resource in Twinward::Twin::\"{}\"", RESOURCES[*t]),
            ResourceC::Is => "resource is Twinward::Twin".into(),
            ResourceC::IsIn(t) => format!(
                "resource is Twinward::Twin in Twinward::Twin::\"{}\"",
                RESOURCES[*t]
            ),
        }
    }
}

/// One clause: `when`/`unless` over atoms joined by `&&` or `||`, each maybe negated.
#[derive(Debug, Clone)]
struct Clause {
    unless: bool,
    any: bool,
    atoms: Vec<(bool, usize, usize)>,
}

const ATOM_KINDS: usize = 24;

/// Atom `kind` with parameter `p`. Kinds 21–23 can fail at run time (integer overflow);
/// every atom validates strictly for any principal type the scope admits.
fn atom(kind: usize, p: usize, principal: &PrincipalC) -> String {
    match kind {
        0 => format!("context.time.hour >= {}", [0, 7, 8, 18, 23][p % 5]),
        1 => format!("context.time.hour < {}", [7, 12, 19][p % 3]),
        2 => format!("context.time.weekday <= {}", [1, 5, 7][p % 3]),
        3 => "context.auth.mfa".into(),
        4 => format!("context.auth.mfa_age_s <= {}", [0, 300][p % 2]),
        5 => format!(
            "context.auth.method == \"{}\"",
            ["browser", "api_token"][p % 2]
        ),
        6 => "context.device.managed".into(),
        7 => "context.device.compliant".into(),
        8 => format!("context.network.zone == \"{}\"", ZONES[p % ZONES.len()]),
        9 => format!("context.network.country == \"{}\"", COUNTRIES[p % 2]),
        10 => format!(
            "context.network.ip.isInRange(ip(\"{}\"))",
            ["10.0.0.0/8", "192.168.0.0/16", "::1/128"][p % 3]
        ),
        11 => format!(
            "context.request.path like \"{}\"",
            ["/t0/*", "*/cmd", "/"][p % 3]
        ),
        12 => format!("context.request.method == \"{}\"", ["GET", "POST"][p % 2]),
        13 => "context has purpose".into(),
        14 => format!(
            "(context has purpose && context.purpose == \"{}\")",
            PURPOSES[p % PURPOSES.len()]
        ),
        15 => format!("resource.sensitivity <= {}", [0, 1, 2, 3][p % 4]),
        16 => format!(
            "resource.environment == \"{}\"",
            ENVIRONMENTS[p % ENVIRONMENTS.len()]
        ),
        17 => format!("resource.site == \"{}\"", SITES[p % SITES.len()]),
        18 => format!("resource in Twinward::Twin::\"{}\"", RESOURCES[p % 8]),
        19 => format!(
            "principal in Twinward::Role::\"{}\"",
            ROLES[p % ROLES.len()]
        ),
        20 => {
            // A principal attribute: direct when the scope fixes the type, else guarded.
            if principal.user_only() {
                format!(
                    "principal.email like \"*@{}\"",
                    ["a.example", "b.example"][p % 2]
                )
            } else if principal.service_account_only() {
                format!("principal.owner == \"{}\"", ["ops", "dev"][p % 2])
            } else if p % 2 == 0 {
                "(principal is Twinward::User && principal.email like \"*@a.example\")".into()
            } else {
                "(principal is Twinward::ServiceAccount && principal.owner == \"ops\")".into()
            }
        }
        21 => "context.auth.mfa_age_s * 4611686018427387904 > 0".into(),
        22 => "resource.sensitivity + 9223372036854775000 > 0".into(),
        _ => "context.auth.session_age_s - 9223372036854775807 < -1".into(),
    }
}

#[derive(Debug, Clone)]
struct Pol {
    permit: bool,
    principal: PrincipalC,
    action: ActionC,
    resource: ResourceC,
    clauses: Vec<Clause>,
}

impl Pol {
    fn render(&self, id: usize) -> String {
        // `admin` applies to users only: a service-account-only scope that names nothing but
        // `admin` would fail strict validation, so it reads instead.
        let sa = self.principal.service_account_only();
        let action = match &self.action {
            ActionC::Any => "action".to_owned(),
            ActionC::Eq(a) => {
                let a = if sa && *a == 2 { 0 } else { *a };
                format!("action == Twinward::Action::\"{}\"", ACTIONS[a])
            }
            ActionC::In(bits) => {
                let bits = if sa && *bits == 0b100 { 0b101 } else { *bits };
                let list: Vec<String> = (0..3)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| format!("Twinward::Action::\"{}\"", ACTIONS[i]))
                    .collect();
                format!("action in [{}]", list.join(", "))
            }
        };
        let mut s = format!(
            "@id(\"pol-{id}\")\n{} (\n  {},\n  {action},\n  {}\n)",
            if self.permit { "permit" } else { "forbid" },
            self.principal.render(),
            self.resource.render()
        );
        for c in &self.clauses {
            let joined: Vec<String> = c
                .atoms
                .iter()
                .map(|(neg, k, p)| {
                    let a = atom(*k, *p, &self.principal);
                    if *neg {
                        format!("!({a})")
                    } else {
                        a
                    }
                })
                .collect();
            s.push_str(&format!(
                "\n{} {{ {} }}",
                if c.unless { "unless" } else { "when" },
                joined.join(if c.any { " || " } else { " && " })
            ));
        }
        s.push_str(";\n");
        s
    }
}

fn principal_c() -> impl Strategy<Value = PrincipalC> {
    prop_oneof![
        3 => Just(PrincipalC::Any),
        1 => (0..3usize).prop_map(PrincipalC::EqUser),
        1 => (0..3usize).prop_map(PrincipalC::EqSa),
        4 => (0..ROLES.len()).prop_map(PrincipalC::In),
        1 => Just(PrincipalC::IsUser),
        1 => Just(PrincipalC::IsSa),
        1 => (0..ROLES.len()).prop_map(PrincipalC::IsInUser),
        2 => (0..ROLES.len()).prop_map(PrincipalC::IsInSa),
    ]
}

fn action_c() -> impl Strategy<Value = ActionC> {
    prop_oneof![
        1 => Just(ActionC::Any),
        3 => (0..3usize).prop_map(ActionC::Eq),
        2 => (1..8u8).prop_map(ActionC::In),
    ]
}

fn resource_c() -> impl Strategy<Value = ResourceC> {
    prop_oneof![
        3 => Just(ResourceC::Any),
        3 => (0..RESOURCES.len()).prop_map(ResourceC::Eq),
        3 => (0..RESOURCES.len()).prop_map(ResourceC::In),
        1 => Just(ResourceC::Is),
        2 => (0..RESOURCES.len()).prop_map(ResourceC::IsIn),
    ]
}

fn clause() -> impl Strategy<Value = Clause> {
    (
        prop::bool::weighted(0.25),
        any::<bool>(),
        prop::collection::vec(
            (prop::bool::weighted(0.2), 0..ATOM_KINDS, 0..12usize),
            1..=3,
        ),
    )
        .prop_map(|(unless, any, atoms)| Clause { unless, any, atoms })
}

fn pol() -> impl Strategy<Value = Pol> {
    (
        prop::bool::weighted(0.7),
        principal_c(),
        action_c(),
        resource_c(),
        prop::collection::vec(clause(), 0..=2),
    )
        .prop_map(|(permit, principal, action, resource, clauses)| Pol {
            permit,
            principal,
            action,
            resource,
            clauses,
        })
}

// ---------------------------------------------------------------- requests

#[derive(Debug, Clone)]
struct Req {
    user: bool,
    id: usize,
    roles: Vec<usize>,
    action: usize,
    /// Index into `RESOURCES`, or `RESOURCES.len()` for a twin nobody declared.
    resource: usize,
    browser: bool,
    mfa: bool,
    mfa_age: usize,
    session_age: usize,
    managed: bool,
    compliant: bool,
    zone: usize,
    country: usize,
    ip: usize,
    hour: i64,
    weekday: i64,
    path: usize,
    post: bool,
    purpose: Option<usize>,
}

prop_compose! {
    fn req()(
        (user, id, roles, action, resource) in (
            any::<bool>(),
            0..3usize,
            prop::collection::vec(0..REQUEST_ROLES.len(), 0..=2),
            0..3usize,
            prop_oneof![20 => 0..RESOURCES.len(), 1 => Just(RESOURCES.len())],
        ),
        (browser, mfa, mfa_age, session_age, managed, compliant) in (
            any::<bool>(),
            any::<bool>(),
            0..MFA_AGES.len(),
            0..SESSION_AGES.len(),
            any::<bool>(),
            any::<bool>(),
        ),
        (zone, country, ip, hour, weekday, path, post, purpose) in (
            0..ZONES.len(),
            0..COUNTRIES.len(),
            0..IPS.len(),
            0..24i64,
            1..=7i64,
            0..PATHS.len(),
            any::<bool>(),
            prop::option::of(0..PURPOSES.len()),
        ),
    ) -> Req {
        Req {
            user, id, roles, action, resource, browser, mfa, mfa_age, session_age, managed,
            compliant, zone, country, ip, hour, weekday, path, post, purpose,
        }
    }
}

impl Req {
    fn action(&self) -> Action {
        Action::ALL[self.action]
    }

    fn twin(&self) -> &'static str {
        RESOURCES.get(self.resource).copied().unwrap_or("nowhere")
    }

    fn roles(&self) -> Vec<String> {
        self.roles
            .iter()
            .map(|r| REQUEST_ROLES[*r].to_owned())
            .collect()
    }

    fn email(&self) -> String {
        format!(
            "u{}@{}",
            self.id,
            if self.id == 0 {
                "a.example"
            } else {
                "b.example"
            }
        )
    }

    fn owner(&self) -> &'static str {
        if self.id == 0 {
            "ops"
        } else {
            "dev"
        }
    }

    fn principal(&self) -> Principal {
        if self.user {
            Principal::user(
                &format!("u{}", self.id),
                &self.email(),
                "idp",
                &self.roles(),
            )
        } else {
            Principal::service_account(&format!("sa{}", self.id), self.owner(), &self.roles())
        }
        .expect("principal")
    }

    /// The same principal as a Cedar entity, built here independently of the engine.
    fn entity(&self) -> Entity {
        let (t, id, attrs) = if self.user {
            (
                "Twinward::User",
                format!("u{}", self.id),
                HashMap::from([
                    (
                        "email".to_owned(),
                        RestrictedExpression::new_string(self.email()),
                    ),
                    (
                        "idp".to_owned(),
                        RestrictedExpression::new_string("idp".into()),
                    ),
                ]),
            )
        } else {
            (
                "Twinward::ServiceAccount",
                format!("sa{}", self.id),
                HashMap::from([(
                    "owner".to_owned(),
                    RestrictedExpression::new_string(self.owner().into()),
                )]),
            )
        };
        let parents = self
            .roles
            .iter()
            .map(|r| engine::uid("Twinward::Role", REQUEST_ROLES[*r]).unwrap())
            .collect();
        Entity::new(engine::uid(t, &id).unwrap(), attrs, parents).unwrap()
    }

    fn context(&self) -> RequestContext {
        let mut c = RequestContext::new(
            if self.browser {
                AuthMethod::Browser
            } else {
                AuthMethod::ApiToken
            },
            IpAddr::from_str(IPS[self.ip]).unwrap(),
            TimeContext::at(Timestamp::from_unix_secs(1_795_645_800), &chrono_tz::UTC),
            RequestInfo {
                method: if self.post { "POST" } else { "GET" }.into(),
                path: PATHS[self.path].into(),
            },
        );
        c.auth.mfa = self.mfa;
        c.auth.mfa_age_s = MFA_AGES[self.mfa_age];
        c.auth.session_age_s = SESSION_AGES[self.session_age];
        c.device.managed = self.managed;
        c.device.compliant = self.compliant;
        c.device.id = if self.managed {
            "dev-1".into()
        } else {
            "".into()
        };
        c.network.zone = ZONES[self.zone].into();
        c.network.country = COUNTRIES[self.country].into();
        c.time.hour = self.hour;
        c.time.weekday = self.weekday;
        c.purpose = self.purpose.map(|p| PURPOSES[p].to_owned());
        c
    }
}

// ---------------------------------------------------------------- universe

/// Attributes of each entry of `RESOURCES`: (environment, site, sensitivity) indices.
type Attrs = [(usize, usize, usize); 8];

fn attrs() -> impl Strategy<Value = Attrs> {
    prop::array::uniform8((
        0..ENVIRONMENTS.len(),
        0..SITES.len(),
        0..SENSITIVITIES.len(),
    ))
}

fn attr_json(a: (usize, usize, usize)) -> serde_json::Value {
    serde_json::json!({
        "environment": ENVIRONMENTS[a.0], "site": SITES[a.1], "sensitivity": SENSITIVITIES[a.2]
    })
}

fn twin_spec(i: usize, a: (usize, usize, usize)) -> TwinSpec {
    TwinSpec {
        id: RESOURCES[i].to_owned(),
        attributes: BTreeMap::from([
            (
                "environment".to_owned(),
                AttrValue::String(ENVIRONMENTS[a.0].into()),
            ),
            ("site".to_owned(), AttrValue::String(SITES[a.1].into())),
            (
                "sensitivity".to_owned(),
                AttrValue::Long(SENSITIVITIES[a.2]),
            ),
        ]),
        origin: format!("test route {}", RESOURCES[i]),
    }
}

fn entities_json(a: &Attrs) -> String {
    let role_parent = |r: &str| match r {
        "operator" | "runner" => vec!["viewer"],
        "admin" => vec!["operator"],
        _ => vec![],
    };
    let twin_parent = |t: &str| match t {
        "t0" | "t1" => vec!["g-north"],
        "t2" => vec!["g-south"],
        "g-north" | "g-south" => vec!["g-all"],
        _ => vec![],
    };
    let mut out = Vec::new();
    for r in ROLES {
        out.push(serde_json::json!({
            "uid": { "type": "Twinward::Role", "id": r },
            "attrs": {},
            "parents": role_parent(r).iter().map(|p| serde_json::json!({"type": "Twinward::Role", "id": p})).collect::<Vec<_>>(),
        }));
    }
    for (i, t) in RESOURCES.iter().enumerate() {
        if *t == "t4" {
            continue; // known from its route only
        }
        out.push(serde_json::json!({
            "uid": { "type": "Twinward::Twin", "id": t },
            "attrs": attr_json(a[i]),
            "parents": twin_parent(t).iter().map(|p| serde_json::json!({"type": "Twinward::Twin", "id": p})).collect::<Vec<_>>(),
        }));
    }
    serde_json::to_string_pretty(&out).unwrap()
}

// ---------------------------------------------------------------- the property

#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    allowed: usize,
    denied: usize,
    determining: usize,
    forbid_determining: usize,
    errors: usize,
    /// Per deliberately wrong slice: how many requests it decided differently.
    mutants_caught: [usize; 3],
}

const MUTANTS: [&str; 3] = [
    "resource ancestors ignored",
    "wrong principal type",
    "wrong action",
];

fn outcome(d: &Decision) -> (bool, Vec<String>, Vec<String>) {
    let mut errors = d.errors.clone();
    errors.sort();
    (d.allow, d.determining.to_vec(), errors)
}

fn cedar_outcome(
    request: &Request,
    set: &PolicySet,
    entities: &Entities,
) -> (bool, Vec<String>, Vec<String>) {
    let r = Authorizer::new().is_authorized(request, set, entities);
    let mut determining: Vec<String> = r.diagnostics().reason().map(|p| p.to_string()).collect();
    determining.sort();
    let mut errors: Vec<String> = r.diagnostics().errors().map(|e| e.to_string()).collect();
    errors.sort();
    (r.decision() == CedarDecision::Allow, determining, errors)
}

fn check_case(
    policies: &[Pol],
    attrs: &Attrs,
    requests: &[Req],
    tally: &RefCell<Tally>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(loader::SCHEMA_FILE), SCHEMA).unwrap();
    std::fs::write(dir.path().join(loader::ENTITIES_FILE), entities_json(attrs)).unwrap();
    // Two files, so file boundaries play no part.
    let (a, b) = policies.split_at(policies.len() / 2);
    for (name, part, offset) in [("a.cedar", a, 0), ("b.cedar", b, a.len())] {
        let text: String = part
            .iter()
            .enumerate()
            .map(|(i, p)| p.render(offset + i) + "\n")
            .collect();
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let bundle = match loader::load_dir(dir.path()) {
        Ok(b) => b,
        Err(p) => {
            let a = std::fs::read_to_string(dir.path().join("a.cedar")).unwrap();
            let b = std::fs::read_to_string(dir.path().join("b.cedar")).unwrap();
            panic!("generated policies must validate strictly: {p:#?}\n{a}\n{b}");
        }
    };
    let specs = vec![twin_spec(1, attrs[1]), twin_spec(4, attrs[4])];
    let schema = bundle.schema.clone();
    let all_policies = bundle.policies.clone();
    let loaded = Loaded::compile(bundle.clone(), &specs, 7).expect("compile");

    // The entities, rebuilt independently for the deliberately wrong slices.
    let t4 = Entity::new(
        engine::uid("Twinward::Twin", "t4").unwrap(),
        HashMap::from([
            (
                "environment".to_owned(),
                RestrictedExpression::new_string(ENVIRONMENTS[attrs[4].0].into()),
            ),
            (
                "site".to_owned(),
                RestrictedExpression::new_string(SITES[attrs[4].1].into()),
            ),
            (
                "sensitivity".to_owned(),
                RestrictedExpression::new_long(SENSITIVITIES[attrs[4].2]),
            ),
        ]),
        HashSet::new(),
    )
    .unwrap();
    let base = Entities::from_entities(
        bundle
            .entities
            .iter()
            .cloned()
            .chain([t4])
            .chain(schema.action_entities().unwrap()),
        Some(&schema),
    )
    .unwrap();
    let action_uid = |a: Action| engine::uid("Twinward::Action", a.name()).unwrap();
    let scopes: Vec<_> = all_policies
        .policies()
        .map(|p| (p.clone(), Scope::of(p, action_uid, |_| HashSet::new())))
        .collect();
    let user_t = EntityTypeName::from_str("Twinward::User").unwrap();
    let sa_t = EntityTypeName::from_str("Twinward::ServiceAccount").unwrap();

    for r in requests {
        let principal = r.principal();
        let ctx = r.context();
        let sliced = loaded.decide(&principal, r.action(), r.twin(), &ctx);
        let unsliced = loaded.decide_unsliced(&principal, r.action(), r.twin(), &ctx);
        prop_assert_eq!(
            outcome(&sliced),
            outcome(&unsliced),
            "sliced and unsliced disagree on {:?}\npolicies:\n{}",
            r,
            policies
                .iter()
                .enumerate()
                .map(|(i, p)| p.render(i))
                .collect::<String>()
        );
        prop_assert_eq!(sliced.generation, unsliced.generation);
        // The memoized verdict's action set is what each action decides unsliced: it is
        // the credential's scope.
        let verdict = loaded.verdict(&principal, r.action(), r.twin(), &ctx);
        prop_assert_eq!(outcome(&verdict.decision), outcome(&unsliced));
        for a in Action::ALL {
            let want = loaded.decide_unsliced(&principal, a, r.twin(), &ctx).allow;
            prop_assert_eq!(
                verdict.allowed.contains(a),
                want,
                "allowed set wrong for {:?} on {:?}",
                a,
                r
            );
        }
        {
            let mut t = tally.borrow_mut();
            t.requests += 1;
            if sliced.allow {
                t.allowed += 1;
            } else {
                t.denied += 1;
            }
            if !sliced.determining.is_empty() {
                t.determining += 1;
                if !sliced.allow {
                    t.forbid_determining += 1;
                }
            }
            if !sliced.errors.is_empty() {
                t.errors += 1;
            }
        }
        if r.resource >= RESOURCES.len() {
            continue; // unknown twin: denied before any policy
        }

        // Cedar directly over the full set must match the engine (so the entities rebuilt
        // here are the engine's), then each wrong slice is checked against it.
        let resource = engine::uid("Twinward::Twin", r.twin()).unwrap();
        let entities = base.clone().add_entities([r.entity()], None).unwrap();
        let request = Request::new(
            principal.uid(),
            action_uid(r.action()),
            resource.clone(),
            ctx.to_cedar().map_err(TestCaseError::fail)?,
            None,
        )
        .unwrap();
        let full = cedar_outcome(&request, &all_policies, &entities);
        prop_assert_eq!(
            &full,
            &outcome(&unsliced),
            "direct Cedar vs engine on {:?}",
            r
        );

        let ancestors: HashSet<EntityUid> = entities
            .ancestors(&resource)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let (ptype, other_ptype) = if r.user {
            (&user_t, &sa_t)
        } else {
            (&sa_t, &user_t)
        };
        let other_action = match r.action() {
            Action::Read => Action::Write,
            Action::Write => Action::Read,
            Action::Admin => Action::Read,
        };
        let none = HashSet::new();
        let mutants: [&dyn Fn(&Scope) -> bool; 3] = [
            &|s| s.may_apply(ptype, r.action(), &resource, &none),
            &|s| s.may_apply(other_ptype, r.action(), &resource, &ancestors),
            &|s| s.may_apply(ptype, other_action, &resource, &ancestors),
        ];
        for (m, keep) in mutants.iter().enumerate() {
            let mut set = PolicySet::new();
            for (p, s) in &scopes {
                if keep(s) {
                    set.add(p.clone()).unwrap();
                }
            }
            if cedar_outcome(&request, &set, &entities) != full {
                tally.borrow_mut().mutants_caught[m] += 1;
            }
        }
    }
    Ok(())
}

#[test]
fn sliced_and_unsliced_decisions_agree() {
    let tally = RefCell::new(Tally::default());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(pol(), 1..=14),
        attrs(),
        prop::collection::vec(req(), 50),
    );
    let result = runner.run(&strategy, |(policies, attrs, requests)| {
        check_case(&policies, &attrs, &requests, &tally)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = tally.into_inner();
    eprintln!("policy slicing: {t:?}");
    // The property is only as good as the cases: enough of every outcome, and every
    // deliberately wrong slice caught.
    assert!(t.requests >= 64 * 50, "{t:?}");
    assert!(t.allowed >= t.requests / 20, "too few allows: {t:?}");
    assert!(t.denied >= t.requests / 5, "too few denies: {t:?}");
    assert!(
        t.determining >= t.requests / 10,
        "too few determining sets: {t:?}"
    );
    assert!(t.forbid_determining >= 20, "too few forbids decide: {t:?}");
    assert!(t.errors >= 20, "too few evaluation errors: {t:?}");
    for (m, caught) in t.mutants_caught.iter().enumerate() {
        assert!(
            *caught > 0,
            "a slice with {} was never caught: the cases are too weak ({t:?})",
            MUTANTS[m]
        );
    }
}
