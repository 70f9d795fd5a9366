//! Authorization by Cedar policy. Loads and strictly validates the policy directory
//! ([`loader`]), slices the set by scope so a decision evaluates only the policies that can
//! apply ([`slice`]), builds the request context from typed values ([`context`]), reloads
//! on change without ever dropping the last good set ([`reload`]), and runs the policy test
//! cases admins keep beside their policies ([`testcases`]).
//!
//! INVARIANT: default deny. A request is allowed only when Cedar says `Allow`; any error in
//! building the request (unknown twin, bad context) is a deny with the error recorded.

pub mod context;
pub mod engine;
pub mod loader;
pub mod memo;
pub mod reload;
pub mod slice;
pub mod testcases;

pub use context::RequestContext;
pub use engine::{ActionSet, Decision, Engine, Verdict};

use std::fmt;

pub const NAMESPACE: &str = "Twinward";

/// The actions of the schema contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Read,
    Write,
    Admin,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Read, Action::Write, Action::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Admin => "admin",
        }
    }

    /// GET, HEAD and OPTIONS read; every other method writes.
    pub fn from_method(method: &str) -> Action {
        match method {
            "GET" | "HEAD" | "OPTIONS" => Action::Read,
            _ => Action::Write,
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        let s = s
            .strip_prefix("Twinward::Action::")
            .map(|q| q.trim_matches('"'))
            .unwrap_or(s);
        match s {
            "read" => Some(Action::Read),
            "write" => Some(Action::Write),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalKind {
    User,
    ServiceAccount,
}

impl PrincipalKind {
    pub fn type_name(self) -> &'static str {
        match self {
            PrincipalKind::User => "Twinward::User",
            PrincipalKind::ServiceAccount => "Twinward::ServiceAccount",
        }
    }
}

/// One problem in a policy directory, with its place when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file inside the policy directory; empty for a problem of the directory itself.
    pub file: String,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.as_str(), self.position) {
            ("", _) => f.write_str(&self.message),
            (file, Some((l, c))) => write!(f, "{file}:{l}:{c}: {}", self.message),
            (file, None) => write!(f, "{file}: {}", self.message),
        }
    }
}

impl PolicyProblem {
    /// The problem with its file named inside `dir` (`policies/ops.cedar:3:1: …`), or the
    /// directory itself for a problem of the directory (`policies: no schema …`).
    pub fn in_dir(&self, dir: &std::path::Path) -> String {
        if self.file.is_empty() {
            format!("{}: {self}", dir.display())
        } else {
            format!("{}/{self}", dir.display())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}", join_problems(.0))]
    Invalid(Vec<PolicyProblem>),
    #[error("policy request: {0}")]
    Request(String),
}

fn join_problems(p: &[PolicyProblem]) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
