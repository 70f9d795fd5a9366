//! Scope slicing. `Authorizer::is_authorized` evaluates every policy it is given, which costs
//! about a microsecond a policy. A policy whose scope (principal type, action, resource) does
//! not match a request can neither be satisfied nor error, because Cedar checks the scope
//! before the conditions; so evaluating only the matching policies gives the same decision,
//! the same determining policies and the same errors. Slices are cut twice: by principal
//! type, action and resource when the policy set loads, and by the principal's own roles
//! the first time a principal meets a twin. The property test in
//! `tests/e2e/policy_slicing.rs` holds the engine to that.

use super::Action;
use cedar_policy::{
    ActionConstraint, EntityTypeName, EntityUid, Policy, PrincipalConstraint, ResourceConstraint,
};
use std::collections::HashSet;

/// The parts of a policy's scope that a request is sliced on.
#[derive(Debug, Clone)]
pub struct Scope {
    principal_type: Option<EntityTypeName>,
    principal: PrincipalConstraint,
    /// Bit `i` set: the policy applies to `Action::ALL[i]`.
    actions: u8,
    resource: ResourceConstraint,
}

impl Scope {
    /// `action_ancestors(a)` lists the action groups `a` is in (none in the shipped schema).
    pub fn of(
        policy: &Policy,
        action_uid: impl Fn(Action) -> EntityUid,
        action_ancestors: impl Fn(&EntityUid) -> HashSet<EntityUid>,
    ) -> Self {
        let principal_type = match policy.principal_constraint() {
            PrincipalConstraint::Eq(uid) => Some(uid.type_name().clone()),
            PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => Some(t),
            // `in` a role may hold users and service accounts alike.
            PrincipalConstraint::Any | PrincipalConstraint::In(_) => None,
        };
        let mut actions = 0u8;
        for (i, a) in Action::ALL.iter().enumerate() {
            let uid = action_uid(*a);
            let hit = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(x) => x == uid,
                ActionConstraint::In(list) => {
                    let ancestors = action_ancestors(&uid);
                    list.iter().any(|x| *x == uid || ancestors.contains(x))
                }
            };
            if hit {
                actions |= 1 << i;
            }
        }
        Scope {
            principal_type,
            principal: policy.principal_constraint(),
            actions,
            resource: policy.resource_constraint(),
        }
    }

    /// Whether the policy can apply to this principal type, action and resource (with the
    /// resource's ancestors). Over-approximating is safe; under-approximating is a bug.
    pub fn may_apply(
        &self,
        principal: &EntityTypeName,
        action: Action,
        resource: &EntityUid,
        resource_ancestors: &HashSet<EntityUid>,
    ) -> bool {
        let action_bit = Action::ALL
            .iter()
            .position(|a| *a == action)
            .map_or(0, |i| 1u8 << i);
        if self.actions & action_bit == 0 {
            return false;
        }
        if let Some(t) = &self.principal_type {
            if t != principal {
                return false;
            }
        }
        let in_ = |uid: &EntityUid| uid == resource || resource_ancestors.contains(uid);
        match &self.resource {
            ResourceConstraint::Any => true,
            ResourceConstraint::Eq(uid) => uid == resource,
            ResourceConstraint::In(uid) => in_(uid),
            ResourceConstraint::Is(t) => t == resource.type_name(),
            ResourceConstraint::IsIn(t, uid) => t == resource.type_name() && in_(uid),
        }
    }

    /// Whether the policy's principal constraint can hold for this principal, given all its
    /// ancestors (roles, transitively). Exact, like `may_apply`.
    pub fn may_apply_to_principal(
        &self,
        principal: &EntityUid,
        ancestors: &HashSet<EntityUid>,
    ) -> bool {
        let in_ = |uid: &EntityUid| uid == principal || ancestors.contains(uid);
        match &self.principal {
            PrincipalConstraint::Any => true,
            PrincipalConstraint::Eq(uid) => uid == principal,
            PrincipalConstraint::In(uid) => in_(uid),
            PrincipalConstraint::Is(t) => t == principal.type_name(),
            PrincipalConstraint::IsIn(t, uid) => t == principal.type_name() && in_(uid),
        }
    }
}
