//! The decision engine: the current policy set (swapped atomically on reload), the entities
//! the gateway knows (roles, twins), and `decide`, which evaluates only the policies whose
//! scope can match (see [`super::slice`]).

use super::loader::{self, PolicyBundle};
use super::slice::Scope;
use super::{memo, Action, PolicyError, PolicyProblem, PrincipalKind, RequestContext};
use crate::config::{AttrValue, RouteConfig};
use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Maps looked up on every request (keys from config and verified principals).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The outcome of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Ids of the policies that determined the decision (empty for a default deny). Shared:
    /// a memoized decision's ids go into an audit event on every request.
    pub determining: std::sync::Arc<[String]>,
    /// Evaluation errors; a policy that errors is skipped, as Cedar specifies.
    pub errors: Vec<String>,
    /// Which policy set decided.
    pub generation: u64,
}

/// A decision and, under the same inputs, every action policy allows on the same twin:
/// what a twin credential's `scope` lists. Memoized per worker as one unit, so a request
/// costs one memo lookup for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    pub allowed: ActionSet,
}

/// A set of [`Action`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ActionSet(u8);

impl ActionSet {
    pub fn contains(self, a: Action) -> bool {
        self.0 & (1 << a as u8) != 0
    }

    pub fn insert(&mut self, a: Action) {
        self.0 |= 1 << a as u8;
    }

    /// The credential scope: the allowed actions a twin acts on (`admin` is the gateway's
    /// own and never listed), space-separated in [`Action::ALL`] order.
    pub fn scope(self) -> &'static str {
        match (self.contains(Action::Read), self.contains(Action::Write)) {
            (true, true) => "read write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "",
        }
    }
}

/// A twin as routes describe it.
#[derive(Debug, Clone)]
pub struct TwinSpec {
    pub id: String,
    pub attributes: BTreeMap<String, AttrValue>,
    /// Where it was declared, for messages.
    pub origin: String,
}

impl TwinSpec {
    pub fn from_routes(routes: &[RouteConfig], config_file: &str) -> Vec<TwinSpec> {
        routes
            .iter()
            .map(|r| TwinSpec {
                id: r.twin.clone(),
                attributes: r.attributes.clone(),
                origin: format!("{config_file}:{}: route {:?}", r.line, r.name),
            })
            .collect()
    }
}

/// A principal ready for decisions: its Cedar entity is built once (when the token or
/// session is loaded) and reused for every request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: PrincipalKind,
    pub id: String,
    pub roles: Vec<String>,
    entity: Entity,
    /// Identifies the entity's content, for the per-generation entity cache.
    key: Arc<str>,
}

impl Principal {
    pub fn service_account(id: &str, owner: &str, roles: &[String]) -> Result<Self, PolicyError> {
        let attrs = HashMap::from([(
            "owner".to_owned(),
            RestrictedExpression::new_string(owner.to_owned()),
        )]);
        Self::build(PrincipalKind::ServiceAccount, id, roles, attrs)
    }

    pub fn user(id: &str, email: &str, idp: &str, roles: &[String]) -> Result<Self, PolicyError> {
        let attrs = HashMap::from([
            (
                "email".to_owned(),
                RestrictedExpression::new_string(email.to_owned()),
            ),
            (
                "idp".to_owned(),
                RestrictedExpression::new_string(idp.to_owned()),
            ),
        ]);
        Self::build(PrincipalKind::User, id, roles, attrs)
    }

    fn build(
        kind: PrincipalKind,
        id: &str,
        roles: &[String],
        attrs: HashMap<String, RestrictedExpression>,
    ) -> Result<Self, PolicyError> {
        let me = uid(kind.type_name(), id)?;
        let parents = roles
            .iter()
            .map(|r| uid("Twinward::Role", r))
            .collect::<Result<HashSet<_>, _>>()?;
        let entity =
            Entity::new(me, attrs, parents).map_err(|e| PolicyError::Request(e.to_string()))?;
        Ok(Principal {
            kind,
            id: id.to_owned(),
            roles: roles.to_vec(),
            key: entity_key(&entity),
            entity,
        })
    }

    pub fn uid(&self) -> EntityUid {
        self.entity.uid()
    }

    /// The entity as given, for callers (policy tests) that supply their own.
    pub fn from_entity(kind: PrincipalKind, entity: Entity) -> Self {
        let uid = entity.uid();
        Principal {
            kind,
            id: uid.id().unescaped().to_owned(),
            roles: Vec::new(),
            key: entity_key(&entity),
            entity,
        }
    }
}

fn entity_key(e: &Entity) -> Arc<str> {
    e.to_json_value()
        .map(|v| v.to_string())
        .unwrap_or_else(|_| e.uid().to_string())
        .into()
}

/// Entity stores per principal are cached for one generation; this bounds the cache.
const MAX_CACHED_PRINCIPALS: usize = 10_000;

pub fn uid(type_name: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let t = EntityTypeName::from_str(type_name)
        .map_err(|e| PolicyError::Request(format!("entity type {type_name:?}: {e}")))?;
    Ok(EntityUid::from_type_name_and_id(t, EntityId::new(id)))
}

/// Everything one policy generation needs to decide, built once per (re)load.
pub struct Loaded {
    pub generation: u64,
    pub bundle: PolicyBundle,
    authorizer: Authorizer,
    scopes: Vec<(cedar_policy::Policy, Scope)>,
    /// Per policy (same order as `scopes`): the context fields it reads.
    context_paths: Vec<memo::ContextPaths>,
    /// Unique per compiled set in this process (generations repeat across engines).
    memo_id: u64,
    /// Entities every decision sees: roles, twins and their ancestors, actions.
    base_entities: Entities,
    twins: FastMap<String, TwinEntry>,
    roles: HashSet<String>,
    action_uids: [EntityUid; 3],
    principal_types: [EntityTypeName; 2],
    /// Per principal: entities and slices, built once per principal and generation instead
    /// of on every request.
    principals: RwLock<FastMap<Arc<str>, Arc<PrincipalView>>>,
}

struct TwinEntry {
    index: usize,
    uid: EntityUid,
    /// Indices into `scopes` of the policies that can apply, by principal kind and action.
    members: [[Vec<usize>; 3]; 2],
}

/// What one principal needs for decisions under one generation: its entity store (with
/// the transitive closure computed) and its policy slices per twin and action.
struct PrincipalView {
    entities: Arc<Entities>,
    uid: EntityUid,
    ancestors: HashSet<EntityUid>,
    slices: RwLock<FastMap<(usize, Action), Arc<Slice>>>,
    /// Per twin: the slices of every action and the context fields any of them reads.
    twin_slices: RwLock<FastMap<usize, Arc<TwinSlices>>>,
}

/// The slices of all actions on one twin for one principal.
struct TwinSlices {
    by_action: [Arc<Slice>; 3],
    /// The context fields any of them reads; `None` when they are not all known (then the
    /// verdict is not memoized).
    fields: Option<Vec<super::context::ContextField>>,
}

/// The policies that can apply to one principal, twin and action, and the context fields
/// they read (for the decision memo).
struct Slice {
    set: PolicySet,
    paths: memo::ContextPaths,
}

impl Loaded {
    pub fn compile(
        bundle: PolicyBundle,
        twins: &[TwinSpec],
        generation: u64,
    ) -> Result<Loaded, Vec<PolicyProblem>> {
        let mut problems = Vec::new();
        let p = |origin: &str, m: String| PolicyProblem {
            file: origin.to_owned(),
            position: None,
            message: m,
        };
        let action_uids = [Action::Read, Action::Write, Action::Admin].map(|a| {
            uid("Twinward::Action", a.name()).map_err(|e| vec![p("schema", e.to_string())])
        });
        let [Ok(r), Ok(w), Ok(a)] = action_uids else {
            return Err(vec![p("schema", "cannot name the actions".to_owned())]);
        };
        let action_uids = [r, w, a];
        let (Ok(user_t), Ok(sa_t)) = (
            EntityTypeName::from_str("Twinward::User"),
            EntityTypeName::from_str("Twinward::ServiceAccount"),
        ) else {
            return Err(vec![p(
                "schema",
                "cannot name the principal types".to_owned(),
            )]);
        };

        // Twins: entities.json may declare them (with group parents and attributes); a route
        // supplies or overrides attributes. Routes that share a twin must agree.
        let mut by_id: HashMap<EntityUid, Entity> = bundle
            .entities
            .iter()
            .map(|e| (e.uid(), e.clone()))
            .collect();
        let mut seen_specs: HashMap<&str, &TwinSpec> = HashMap::new();
        for spec in twins {
            if let Some(prev) = seen_specs.get(spec.id.as_str()) {
                if prev.attributes != spec.attributes {
                    problems.push(p(
                        &spec.origin,
                        format!(
                            "twin {:?} has different attributes at {}",
                            spec.id, prev.origin
                        ),
                    ));
                }
                continue;
            }
            seen_specs.insert(&spec.id, spec);
            let Ok(tuid) = uid("Twinward::Twin", &spec.id) else {
                problems.push(p(
                    &spec.origin,
                    format!("twin id {:?} is not a valid entity id", spec.id),
                ));
                continue;
            };
            // Merged in Cedar's own JSON form, so whatever entities.json gives the twin
            // (sets, records, entity references, extension values, tags) is kept as it is
            // and the route's attributes are laid over it.
            let mut json = match by_id.get(&tuid) {
                Some(existing) => match existing.to_json_value() {
                    Ok(j) => j,
                    Err(err) => {
                        problems.push(p(&spec.origin, format!("twin {:?}: {err}", spec.id)));
                        continue;
                    }
                },
                None => serde_json::json!({
                    "uid": { "type": "Twinward::Twin", "id": spec.id },
                    "attrs": {},
                    "parents": [],
                }),
            };
            if let Some(obj) = json.as_object_mut() {
                let attrs = obj.entry("attrs").or_insert_with(|| serde_json::json!({}));
                if let Some(attrs) = attrs.as_object_mut() {
                    for (k, v) in &spec.attributes {
                        let v = match v {
                            AttrValue::String(s) => serde_json::Value::from(s.as_str()),
                            AttrValue::Long(i) => serde_json::Value::from(*i),
                            AttrValue::Bool(b) => serde_json::Value::from(*b),
                        };
                        attrs.insert(k.clone(), v);
                    }
                }
            }
            // Checked against the schema twin by twin, so a message names the route.
            match Entity::from_json_value(json, Some(&bundle.schema)) {
                Ok(e) => {
                    by_id.insert(tuid, e);
                }
                Err(err) => problems.push(p(
                    &spec.origin,
                    format!("twin {:?} does not fit the schema: {err}", spec.id),
                )),
            }
        }
        let action_entities = bundle
            .schema
            .action_entities()
            .map_err(|e| vec![p("schema", e.to_string())])?;
        let base_entities = Entities::from_entities(
            by_id
                .values()
                .cloned()
                .chain(action_entities.iter().cloned()),
            Some(&bundle.schema),
        )
        .map_err(|e| vec![p("entities", e.to_string())]);
        let base_entities = match base_entities {
            Ok(b) => b,
            Err(mut e) => {
                problems.append(&mut e);
                return Err(problems);
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }

        let action_ancestors = |a: &EntityUid| -> HashSet<EntityUid> {
            base_entities
                .ancestors(a)
                .map(|it| it.cloned().collect())
                .unwrap_or_default()
        };
        let scopes: Vec<_> = bundle
            .policies
            .policies()
            .map(|pol| {
                let s = Scope::of(pol, |a| action_uids[a as usize].clone(), action_ancestors);
                (pol.clone(), s)
            })
            .collect();
        let context_paths = scopes
            .iter()
            .map(|(pol, _)| memo::context_paths(pol))
            .collect();
        let roles = base_entities
            .iter()
            .filter(|e| e.uid().type_name().to_string() == "Twinward::Role")
            .map(|e| e.uid().id().unescaped().to_owned())
            .collect();
        let mut loaded = Loaded {
            generation,
            bundle,
            authorizer: Authorizer::new(),
            scopes,
            context_paths,
            memo_id: memo::next_id(),
            base_entities,
            twins: FastMap::default(),
            roles,
            action_uids,
            principal_types: [user_t, sa_t],
            principals: RwLock::new(FastMap::default()),
        };
        let twin_uids: Vec<EntityUid> = loaded
            .base_entities
            .iter()
            .filter(|e| e.uid().type_name().to_string() == "Twinward::Twin")
            .map(|e| e.uid())
            .collect();
        for (index, tuid) in twin_uids.into_iter().enumerate() {
            let members =
                [0, 1].map(|k| [0, 1, 2].map(|a| loaded.members(k, Action::ALL[a], &tuid)));
            loaded.twins.insert(
                tuid.id().unescaped().to_owned(),
                TwinEntry {
                    index,
                    uid: tuid,
                    members,
                },
            );
        }
        Ok(loaded)
    }

    /// Indices of the policies whose scope can match this principal type, action and twin.
    fn members(&self, kind_index: usize, action: Action, resource: &EntityUid) -> Vec<usize> {
        let ancestors: HashSet<EntityUid> = self
            .base_entities
            .ancestors(resource)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let ptype = &self.principal_types[kind_index];
        self.scopes
            .iter()
            .enumerate()
            .filter(|(_, (_, scope))| scope.may_apply(ptype, action, resource, &ancestors))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn knows_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }

    pub fn roles(&self) -> impl Iterator<Item = &String> {
        self.roles.iter()
    }

    pub fn knows_twin(&self, twin: &str) -> bool {
        self.twins.contains_key(twin)
    }

    fn kind_index(kind: PrincipalKind) -> usize {
        match kind {
            PrincipalKind::User => 0,
            PrincipalKind::ServiceAccount => 1,
        }
    }

    /// Decides with the sliced set. An unknown twin, an invalid context or an entity error is
    /// a deny that names the error.
    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        twin: &str,
        ctx: &RequestContext,
    ) -> Decision {
        self.verdict(principal, action, twin, ctx).decision.clone()
    }

    /// The decision for `action` and the set of all actions allowed under the same inputs,
    /// memoized per worker thread under exactly the context fields the twin's slices read.
    pub fn verdict(
        &self,
        principal: &Principal,
        action: Action,
        twin: &str,
        ctx: &RequestContext,
    ) -> Arc<Verdict> {
        let denied = |d: Decision| {
            Arc::new(Verdict {
                decision: d,
                allowed: ActionSet::default(),
            })
        };
        let Some(entry) = self.twins.get(twin) else {
            return denied(self.deny_with(format!("unknown twin {twin:?}")));
        };
        let view = match self.view_for(principal) {
            Ok(v) => v,
            Err(e) => return denied(self.deny_with(e)),
        };
        let slices = self.twin_slices(&view, principal.kind, entry);
        let compute = || {
            let mut allowed = ActionSet::default();
            let mut decision = None;
            for a in Action::ALL {
                let d = match ctx.to_cedar_fast() {
                    Ok(context) => self.evaluate(
                        &view,
                        a,
                        entry.uid.clone(),
                        context,
                        &slices.by_action[a as usize].set,
                    ),
                    Err(e) => self.deny_with(format!("context: {e}")),
                };
                if d.allow {
                    allowed.insert(a);
                }
                if a == action {
                    decision = Some(d);
                }
            }
            Arc::new(Verdict {
                decision: decision.unwrap_or_else(|| self.deny_with("no such action".into())),
                allowed,
            })
        };
        let Some(fields) = slices.fields.as_deref() else {
            return compute();
        };
        let mut rendered = memo::scratch();
        ctx.render_fields(fields, &mut rendered);
        let key = memo::MemoKey {
            policy_set: self.memo_id,
            principal: principal.key.clone(),
            twin: entry.index,
            action,
            context: rendered,
        };
        memo::verdict(key, compute)
    }

    /// [`Self::decide`] without the memo: every call evaluates the slice (benchmarks).
    pub fn decide_unmemoized(
        &self,
        principal: &Principal,
        action: Action,
        twin: &str,
        ctx: &RequestContext,
    ) -> Decision {
        self.decide_sliced(principal, action, twin, ctx)
    }

    fn decide_sliced(
        &self,
        principal: &Principal,
        action: Action,
        twin: &str,
        ctx: &RequestContext,
    ) -> Decision {
        let Some(entry) = self.twins.get(twin) else {
            return self.deny_with(format!("unknown twin {twin:?}"));
        };
        let view = match self.view_for(principal) {
            Ok(v) => v,
            Err(e) => return self.deny_with(e),
        };
        let slice = self.principal_slice(&view, principal.kind, entry, action);
        match ctx.to_cedar_fast() {
            Ok(context) => self.evaluate(&view, action, entry.uid.clone(), context, &slice.set),
            Err(e) => self.deny_with(format!("context: {e}")),
        }
    }

    /// Every action's slice for this principal and twin, cut once and kept with the view.
    fn twin_slices(
        &self,
        view: &PrincipalView,
        kind: PrincipalKind,
        entry: &TwinEntry,
    ) -> Arc<TwinSlices> {
        if let Ok(cache) = view.twin_slices.read() {
            if let Some(t) = cache.get(&entry.index) {
                return t.clone();
            }
        }
        let by_action = Action::ALL.map(|a| self.principal_slice(view, kind, entry, a));
        let fields = memo::union(by_action.iter().map(|s| &s.paths))
            .and_then(|p| super::context::ContextField::compile(&p));
        let t = Arc::new(TwinSlices { by_action, fields });
        if let Ok(mut cache) = view.twin_slices.write() {
            cache.insert(entry.index, t.clone());
        }
        t
    }

    /// The twin, the principal's view and the Cedar context of a request, or the deny that
    /// names why one of them cannot be had.
    fn prepare(
        &self,
        principal: &Principal,
        twin: &str,
        ctx: &RequestContext,
    ) -> Result<(&TwinEntry, Arc<PrincipalView>, cedar_policy::Context), Decision> {
        let entry = self
            .twins
            .get(twin)
            .ok_or_else(|| self.deny_with(format!("unknown twin {twin:?}")))?;
        let context = ctx
            .to_cedar_fast()
            .map_err(|e| self.deny_with(format!("context: {e}")))?;
        let view = self.view_for(principal).map_err(|e| self.deny_with(e))?;
        Ok((entry, view, context))
    }

    /// The policies that can apply to this principal, twin and action: the load-time slice
    /// narrowed by the principal's own roles, cut once and kept with the principal.
    fn principal_slice(
        &self,
        view: &PrincipalView,
        kind: PrincipalKind,
        entry: &TwinEntry,
        action: Action,
    ) -> Arc<Slice> {
        let key = (entry.index, action);
        if let Ok(slices) = view.slices.read() {
            if let Some(slice) = slices.get(&key) {
                return slice.clone();
            }
        }
        let mut set = PolicySet::new();
        let mut members = Vec::new();
        for i in &entry.members[Self::kind_index(kind)][action as usize] {
            if let Some((pol, scope)) = self.scopes.get(*i) {
                if scope.may_apply_to_principal(&view.uid, &view.ancestors) {
                    // Ids are unique in the full set, so adding to a subset cannot collide.
                    let _ = set.add(pol.clone());
                    members.push(*i);
                }
            }
        }
        let paths = memo::union(
            members
                .iter()
                .map(|i| self.context_paths.get(*i).unwrap_or(&None)),
        );
        let slice = Arc::new(Slice { set, paths });
        if let Ok(mut slices) = view.slices.write() {
            slices.insert(key, slice.clone());
        }
        slice
    }

    /// Decides over the full, unsliced set: the reference `decide` must agree with.
    pub fn decide_unsliced(
        &self,
        principal: &Principal,
        action: Action,
        twin: &str,
        ctx: &RequestContext,
    ) -> Decision {
        match self.prepare(principal, twin, ctx) {
            Ok((entry, view, context)) => self.evaluate(
                &view,
                action,
                entry.uid.clone(),
                context,
                &self.bundle.policies,
            ),
            Err(denied) => denied,
        }
    }

    /// Decides for any resource, known or given by the caller (`policy eval`, policy tests),
    /// slicing on the fly. `extra` entities are added to the ones the gateway knows.
    pub fn decide_with(
        &self,
        principal: &Principal,
        action: Action,
        resource: &EntityUid,
        context: cedar_policy::Context,
        extra: &[Entity],
    ) -> Decision {
        let mut entities = vec![principal.entity.clone()];
        entities.extend(extra.iter().cloned());
        let all = match self
            .base_entities
            .clone()
            .upsert_entities(entities, Some(&self.bundle.schema))
        {
            Ok(e) => e,
            Err(e) => return self.deny_with(format!("entities: {e}")),
        };
        let ancestors: HashSet<EntityUid> = all
            .ancestors(resource)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let ptype = principal.entity.uid().type_name().clone();
        let mut set = PolicySet::new();
        for (pol, scope) in &self.scopes {
            if scope.may_apply(&ptype, action, resource, &ancestors) {
                let _ = set.add(pol.clone());
            }
        }
        let request = match Request::new(
            principal.uid(),
            self.action_uids[action as usize].clone(),
            resource.clone(),
            context,
            Some(&self.bundle.schema),
        ) {
            Ok(r) => r,
            Err(e) => return self.deny_with(format!("request: {e}")),
        };
        self.respond(&request, &set, &all)
    }

    /// The principal's view (entity store, ancestors, slices), built on first use.
    fn view_for(&self, principal: &Principal) -> Result<Arc<PrincipalView>, String> {
        if let Ok(cache) = self.principals.read() {
            if let Some(v) = cache.get(&principal.key) {
                return Ok(v.clone());
            }
        }
        let uid = principal.uid();
        let entities = self
            .base_entities
            .clone()
            .add_entities([principal.entity.clone()], None)
            .map_err(|e| format!("entities: {e}"))?;
        let ancestors: HashSet<EntityUid> = entities
            .ancestors(&uid)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        let view = Arc::new(PrincipalView {
            entities: Arc::new(entities),
            uid,
            ancestors,
            slices: RwLock::new(FastMap::default()),
            twin_slices: RwLock::new(FastMap::default()),
        });
        if let Ok(mut cache) = self.principals.write() {
            if cache.len() >= MAX_CACHED_PRINCIPALS {
                cache.clear();
            }
            cache.insert(principal.key.clone(), view.clone());
        }
        Ok(view)
    }

    fn evaluate(
        &self,
        view: &PrincipalView,
        action: Action,
        resource: EntityUid,
        context: cedar_policy::Context,
        set: &PolicySet,
    ) -> Decision {
        // INVARIANT: the context is built from typed values that match the schema (checked
        // by a unit test against the schema), so request validation is skipped here.
        let request = match Request::new(
            view.uid.clone(),
            self.action_uids[action as usize].clone(),
            resource,
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return self.deny_with(format!("request: {e}")),
        };
        self.respond(&request, set, &view.entities)
    }

    fn respond(&self, request: &Request, set: &PolicySet, entities: &Entities) -> Decision {
        let response = self.authorizer.is_authorized(request, set, entities);
        let mut determining: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        determining.sort();
        Decision {
            allow: response.decision() == CedarDecision::Allow,
            determining: determining.into(),
            errors: {
                // Cedar leaves the order of errors open; sorted, the audit record is stable.
                let mut e: Vec<String> = response
                    .diagnostics()
                    .errors()
                    .map(ToString::to_string)
                    .collect();
                e.sort();
                e
            },
            generation: self.generation,
        }
    }

    fn deny_with(&self, error: String) -> Decision {
        Decision {
            allow: false,
            determining: Default::default(),
            errors: vec![error],
            generation: self.generation,
        }
    }
}

/// The engine the gateway holds: the current generation, swapped whole on reload.
pub struct Engine {
    current: ArcSwap<Loaded>,
    twins: Vec<TwinSpec>,
    next_generation: AtomicU64,
}

impl Engine {
    pub fn load(dir: &Path, twins: Vec<TwinSpec>) -> Result<Engine, PolicyError> {
        let bundle = loader::load_dir(dir).map_err(PolicyError::Invalid)?;
        let loaded = Loaded::compile(bundle, &twins, 1).map_err(PolicyError::Invalid)?;
        Ok(Engine {
            current: ArcSwap::from_pointee(loaded),
            twins,
            next_generation: AtomicU64::new(2),
        })
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Loaded>> {
        self.current.load()
    }

    /// Loads `dir` anew. On any problem the current set stays in force and the problems are
    /// returned, with the hashes of the files that were read.
    pub fn reload(&self, dir: &Path) -> Result<Arc<Loaded>, loader::Rejection> {
        let bundle = loader::load_dir_hashed(dir)?;
        let file_hashes = bundle.file_hashes.clone();
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst);
        let loaded = Loaded::compile(bundle, &self.twins, generation).map_err(|problems| {
            loader::Rejection {
                problems,
                file_hashes,
            }
        })?;
        let loaded = Arc::new(loaded);
        self.current.store(loaded.clone());
        Ok(loaded)
    }

    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        twin: &str,
        ctx: &RequestContext,
    ) -> Decision {
        self.current.load().decide(principal, action, twin, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::policy::context::{AuthMethod, RequestInfo, TimeContext};

    fn shipped() -> Loaded {
        let bundle =
            loader::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap();
        Loaded::compile(bundle, &[], 1).unwrap()
    }

    fn ctx() -> RequestContext {
        RequestContext::new(
            AuthMethod::ApiToken,
            "10.30.0.9".parse().unwrap(),
            TimeContext::at(Timestamp::from_unix_secs(1_767_607_200), &chrono_tz::UTC),
            RequestInfo {
                method: "GET".into(),
                path: "/plant-7/x".into(),
            },
        )
    }

    /// A twin's attributes from entities.json, whatever their kind, stay when a route lays
    /// its own over them: `policy test` (no routes) and the gateway see the same twin.
    #[test]
    fn a_routes_attributes_join_the_twins_own_of_every_kind() {
        let d = tempfile::tempdir().unwrap();
        let schema = include_str!("../../policies/schema.cedarschema").replace(
            "entity Twin in [Twin] = { environment: String, site: String, sensitivity: Long };",
            "entity Twin in [Twin] = { environment: String, site: String, sensitivity: Long, \
             tags?: Set<String>, owner?: { team: String } };",
        );
        assert!(
            schema.contains("tags?"),
            "the test's schema edit no longer applies"
        );
        std::fs::write(d.path().join("schema.cedarschema"), schema).unwrap();
        std::fs::write(
            d.path().join("entities.json"),
            r#"[{ "uid": { "type": "Twinward::Twin", "id": "plant-7" },
                  "attrs": { "environment": "twin", "site": "old", "sensitivity": 9,
                             "tags": ["hot"], "owner": { "team": "ops" } },
                  "parents": [] }]"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("p.cedar"),
            "@id(\"hot-ops\")\npermit(principal, action == Twinward::Action::\"read\", resource)\n\
             when { resource has tags && resource.tags.contains(\"hot\") && resource has owner \
             && resource.owner.team == \"ops\" && resource.sensitivity == 2 };\n",
        )
        .unwrap();
        let bundle = loader::load_dir(d.path()).unwrap();
        let spec = TwinSpec {
            id: "plant-7".into(),
            attributes: [
                ("environment".to_owned(), AttrValue::String("twin".into())),
                ("site".to_owned(), AttrValue::String("plant-7".into())),
                ("sensitivity".to_owned(), AttrValue::Long(2)),
            ]
            .into_iter()
            .collect(),
            origin: "twinward.toml:9: route \"plant-7\"".into(),
        };
        let l = Loaded::compile(bundle, &[spec], 1).unwrap();
        let p = Principal::service_account("ci", "ops", &["sim-runner".into()]).unwrap();
        let d = l.decide(&p, Action::Read, "plant-7", &ctx());
        assert!(d.allow, "{d:?}");
        assert_eq!(&d.determining[..], ["hot-ops".to_owned()]);
    }

    // INVARIANT check behind skipping request validation on the hot path: the typed context
    // must always satisfy the schema's RequestContext, with and without `purpose`.
    #[test]
    fn typed_context_matches_the_schema() {
        let l = shipped();
        let p = Principal::service_account("ci", "ops", &["sim-runner".into()]).unwrap();
        for purpose in [None, Some("ticket 42".to_owned())] {
            let mut c = ctx();
            c.purpose = purpose;
            for a in Action::ALL {
                let r = Request::new(
                    p.uid(),
                    l.action_uids[a as usize].clone(),
                    uid("Twinward::Twin", "plant-7").unwrap(),
                    c.to_cedar().unwrap(),
                    Some(&l.bundle.schema),
                );
                // `admin` does not apply to service accounts; the context itself must fit.
                if a != Action::Admin {
                    r.unwrap();
                }
            }
        }
    }

    #[test]
    fn sliced_and_unsliced_agree_on_the_shipped_set() {
        let l = shipped();
        let principals = [
            Principal::service_account("sim", "ops", &["sim-runner".into()]).unwrap(),
            Principal::service_account("etl", "ops", &["data-pipeline".into()]).unwrap(),
            Principal::user("u1", "u@x", "idp", &["twin-operator".into()]).unwrap(),
            Principal::user("u2", "v@x", "idp", &["contractor".into()]).unwrap(),
            Principal::user("u3", "w@x", "idp", &[]).unwrap(),
        ];
        let mut allowed = 0;
        for p in &principals {
            for twin in ["plant-7", "plant-9", "sandbox", "all-plants"] {
                for a in Action::ALL {
                    let c = ctx();
                    let sliced = l.decide(p, a, twin, &c);
                    assert_eq!(sliced.allow, l.decide_unsliced(p, a, twin, &c).allow);
                    assert_eq!(
                        sliced.determining,
                        l.decide_unsliced(p, a, twin, &c).determining
                    );
                    allowed += usize::from(sliced.allow);
                }
            }
        }
        assert!(
            allowed > 5,
            "the comparison must cover allowed requests too"
        );
    }

    #[test]
    fn unknown_twins_and_roles_deny() {
        let l = shipped();
        let p = Principal::service_account("sim", "ops", &["no-such-role".into()]).unwrap();
        assert!(!l.decide(&p, Action::Read, "sandbox", &ctx()).allow);
        let d = l.decide(&p, Action::Read, "no-such-twin", &ctx());
        assert!(!d.allow && d.errors[0].contains("unknown twin"));
        assert!(l.knows_role("twin-viewer") && !l.knows_role("no-such-role"));
    }
}
