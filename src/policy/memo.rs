//! Decision memo: a decision depends only on the principal (its entity and ancestors), the
//! action, the twin, the policy set, and the context fields the applicable policies read.
//! Each slice knows which context fields its policies read (found in their JSON form), so
//! a decision is kept per worker thread under exactly those inputs and reused while they
//! repeat. Any policy that uses the context as a whole makes its slice unmemoized.
//!
//! INVARIANT: the memo key holds every input a decision can depend on; the slicing property
//! test compares memoized decisions with unsliced, unmemoized ones.

use super::engine::Verdict;
use super::Action;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

/// The context fields a set of policies reads, as attribute paths from `context`; `None`
/// when a policy reads the context whole (or in a form this analysis does not follow).
pub type ContextPaths = Option<Vec<Vec<String>>>;

/// Bounded per thread; cleared whole when full (entries are cheap to recompute).
const MAX_ENTRIES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemoKey {
    /// The compiled policy set ([`next_id`]), not its generation: several engines (tests,
    /// the CLI) may each have a generation 1.
    pub policy_set: u64,
    pub principal: Arc<str>,
    pub twin: usize,
    pub action: Action,
    /// The rendered values of the slice's context paths.
    pub context: String,
}

/// A process-unique id for a compiled policy set.
pub fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

type Memo = HashMap<MemoKey, Arc<Verdict>, foldhash::fast::RandomState>;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::default());
    /// The buffer keys' contexts are rendered into: a key that is found gives its buffer
    /// back, so a repeat decision allocates nothing.
    static SCRATCH: Cell<String> = const { Cell::new(String::new()) };
}

/// An empty buffer to render a key's context into (see [`verdict`]).
pub fn scratch() -> String {
    let mut buf = SCRATCH.take();
    buf.clear();
    buf
}

/// The verdict for `key`, computed once per thread while the key repeats. A key that is
/// found returns its context buffer for the next [`scratch`].
pub fn verdict(key: MemoKey, compute: impl FnOnce() -> Arc<Verdict>) -> Arc<Verdict> {
    if let Some(v) = MEMO.with(|m| m.borrow().get(&key).cloned()) {
        SCRATCH.set(key.context);
        return v;
    }
    let v = compute();
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        m.insert(key, v.clone());
    });
    v
}

/// The context paths one policy reads.
pub fn context_paths(policy: &cedar_policy::Policy) -> ContextPaths {
    let json = policy.to_json().ok()?;
    let mut out = Vec::new();
    walk(&json, &mut out).then_some(out)
}

/// Unions the paths of several policies (`None` wins).
pub fn union<'a>(all: impl IntoIterator<Item = &'a ContextPaths>) -> ContextPaths {
    let mut out: Vec<Vec<String>> = Vec::new();
    for p in all {
        for path in p.as_ref()? {
            if !out.contains(path) {
                out.push(path.clone());
            }
        }
    }
    out.sort();
    Some(out)
}

fn is_context(v: &serde_json::Value) -> bool {
    v.get("Var").and_then(|x| x.as_str()) == Some("context")
}

/// `context.a.b…` as a path, or `None` when `v` is not such a chain.
fn path_of(v: &serde_json::Value) -> Option<Vec<String>> {
    if is_context(v) {
        return Some(Vec::new());
    }
    let inner = v.get(".")?;
    let mut p = path_of(inner.get("left")?)?;
    p.push(inner.get("attr")?.as_str()?.to_owned());
    Some(p)
}

/// Collects the context paths in `v`; false when the context is used whole.
fn walk(v: &serde_json::Value, out: &mut Vec<Vec<String>>) -> bool {
    match v {
        serde_json::Value::Object(o) => {
            if is_context(v) {
                return false;
            }
            for op in [".", "has"] {
                if let Some(inner) = o.get(op) {
                    if let Some(mut p) = inner.get("left").and_then(path_of) {
                        match inner.get("attr").and_then(|a| a.as_str()) {
                            Some(a) => p.push(a.to_owned()),
                            // A form of `has` this does not follow: keep the whole prefix.
                            None if p.is_empty() => return false,
                            None => {}
                        }
                        out.push(p);
                        return true;
                    }
                }
            }
            o.values().all(|x| walk(x, out))
        }
        serde_json::Value::Array(a) => a.iter().all(|x| walk(x, out)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn paths(src: &str) -> ContextPaths {
        context_paths(&cedar_policy::Policy::from_str(src).unwrap())
    }

    #[test]
    fn finds_the_fields_a_policy_reads() {
        let p = paths(
            r#"permit(principal, action, resource) when {
                context.time.hour >= 7 && context.network.ip.isInRange(ip("10.0.0.0/8"))
                && (context has purpose && context.purpose == "x") && resource.sensitivity < 3
            };"#,
        )
        .unwrap();
        let want: Vec<Vec<String>> = vec![
            vec!["time".into(), "hour".into()],
            vec!["network".into(), "ip".into()],
            vec!["purpose".into()],
        ];
        for w in &want {
            assert!(p.contains(w), "{w:?} missing from {p:?}");
        }
        assert_eq!(paths("permit(principal, action, resource);"), Some(vec![]));
    }

    #[test]
    fn the_whole_context_is_not_memoized() {
        assert_eq!(
            paths(r#"permit(principal, action, resource) when { context == {} };"#),
            None
        );
        assert_eq!(
            paths(r#"permit(principal, action, resource) when { context.auth == context.auth };"#)
                .unwrap(),
            vec![vec!["auth".to_owned()], vec!["auth".to_owned()]]
        );
        let u = union([&Some(vec![vec!["a".to_owned()]]), &None]);
        assert_eq!(u, None);
    }
}
