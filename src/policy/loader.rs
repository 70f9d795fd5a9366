//! Reads a policy directory: `schema.cedarschema` (or `schema.cedarschema.json`), every
//! `*.cedar` file, and the optional `entities.json`. Validates strictly against the schema.
//! Each policy is named by its `@id("…")` annotation, else by `file:line:column`, so the
//! determining policies of a decision read as names admins recognise.
//!
//! INVARIANT: a directory with any problem yields no policy set at all; the caller keeps
//! the last good one.

use super::PolicyProblem;
use crate::config::line_col;
use cedar_policy::{
    Entities, Entity, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const SCHEMA_JSON_FILE: &str = "schema.cedarschema.json";
pub const ENTITIES_FILE: &str = "entities.json";
/// Entity types the gateway builds per request, never loaded from files.
const PRINCIPAL_TYPES: [&str; 2] = ["Twinward::User", "Twinward::ServiceAccount"];

/// Where a policy was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

/// A validated policy directory.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    pub dir: PathBuf,
    pub schema: Schema,
    pub policies: PolicySet,
    /// Entities from `entities.json` (roles, their hierarchy, twin groups, static attributes).
    pub entities: Vec<Entity>,
    pub sources: HashMap<PolicyId, PolicySource>,
    /// File name and SHA-256 of every file the set was built from, for the audit trail.
    pub file_hashes: Vec<(String, String)>,
}

impl PolicyBundle {
    /// The determining-policy name and where it was written.
    pub fn describe(&self, id: &PolicyId) -> String {
        match self.sources.get(id) {
            Some(s) => format!("{id} ({}:{}:{})", s.file, s.line, s.column),
            None => id.to_string(),
        }
    }
}

fn problem(
    file: &str,
    position: Option<(usize, usize)>,
    message: impl Into<String>,
) -> PolicyProblem {
    PolicyProblem {
        file: file.to_owned(),
        position,
        message: message.into(),
    }
}

/// Message and first labelled position of a Cedar diagnostic within `text`.
fn diagnostic(file: &str, text: &str, d: &dyn Diagnostic) -> PolicyProblem {
    let position = d
        .labels()
        .and_then(|mut l| l.next())
        .map(|l| line_col(text, l.offset()));
    let mut message = d.to_string();
    if let Some(help) = d.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    problem(file, position, message)
}

/// Fingerprint of the directory's inputs, used by the watcher to notice changes.
pub fn fingerprint(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in input_files(dir).unwrap_or_default() {
        let hash = std::fs::read(dir.join(&name))
            .map(|b| hex::encode(crate::digest::sha256(&b)))
            .unwrap_or_default();
        out.push((name, hash));
    }
    out
}

fn input_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".cedar")
            || name == SCHEMA_FILE
            || name == SCHEMA_JSON_FILE
            || name == ENTITIES_FILE
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A policy directory that did not load: what is wrong with it, and the files as they were
/// read, so the audit trail records the set that was refused rather than whatever is in the
/// directory a moment later.
#[derive(Debug)]
pub struct Rejection {
    pub problems: Vec<PolicyProblem>,
    pub file_hashes: Vec<(String, String)>,
}

pub fn load_dir(dir: &Path) -> Result<PolicyBundle, Vec<PolicyProblem>> {
    load_dir_hashed(dir).map_err(|r| r.problems)
}

/// [`load_dir`], with a rejection carrying the hashes of the files it read.
pub fn load_dir_hashed(dir: &Path) -> Result<PolicyBundle, Rejection> {
    let names = input_files(dir).map_err(|e| Rejection {
        problems: vec![problem(
            "",
            None,
            format!("cannot read policy directory: {e}"),
        )],
        file_hashes: Vec::new(),
    })?;
    let mut problems = Vec::new();
    let mut file_hashes = Vec::new();
    let mut texts: Vec<(String, String)> = Vec::new();
    for name in &names {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(t) => {
                file_hashes.push((
                    name.clone(),
                    hex::encode(crate::digest::sha256(t.as_bytes())),
                ));
                texts.push((name.clone(), t));
            }
            Err(e) => problems.push(problem(name, None, format!("cannot read: {e}"))),
        }
    }
    let text_of = |n: &str| texts.iter().find(|(f, _)| f == n).map(|(_, t)| t.as_str());

    let schema = match (text_of(SCHEMA_FILE), text_of(SCHEMA_JSON_FILE)) {
        (Some(_), Some(_)) => {
            problems.push(problem(
                "",
                None,
                format!("both {SCHEMA_FILE} and {SCHEMA_JSON_FILE} exist; keep one"),
            ));
            None
        }
        (Some(t), None) => match Schema::from_cedarschema_str(t) {
            Ok((s, _warnings)) => Some(s),
            Err(e) => {
                problems.push(diagnostic(SCHEMA_FILE, t, &e));
                None
            }
        },
        (None, Some(t)) => match Schema::from_json_str(t) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(diagnostic(SCHEMA_JSON_FILE, t, &e));
                None
            }
        },
        (None, None) => {
            problems.push(problem(
                "",
                None,
                format!("no schema: policies are validated strictly, so {SCHEMA_FILE} is required"),
            ));
            None
        }
    };

    let mut policies = PolicySet::new();
    let mut sources = HashMap::new();
    let mut per_file: Vec<(String, PolicySet)> = Vec::new();
    let mut cedar_files = 0;
    for (name, text) in texts.iter().filter(|(n, _)| n.ends_with(".cedar")) {
        cedar_files += 1;
        match parse_file(name, text) {
            Ok(list) => {
                let mut file_set = PolicySet::new();
                for (policy, source) in list {
                    let id = policy.id().clone();
                    if let Some(prev) = sources.get(&id) {
                        let prev: &PolicySource = prev;
                        problems.push(problem(
                            name,
                            Some((source.line, source.column)),
                            format!(
                                "policy id {id:?} is already used at {}:{}:{}",
                                prev.file, prev.line, prev.column
                            ),
                        ));
                        continue;
                    }
                    if policies.add(policy.clone()).is_err() || file_set.add(policy).is_err() {
                        problems.push(problem(
                            name,
                            Some((source.line, source.column)),
                            format!("policy id {id:?} is used twice"),
                        ));
                        continue;
                    }
                    sources.insert(id, source);
                }
                per_file.push((name.clone(), file_set));
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if cedar_files == 0 {
        problems.push(problem(
            "",
            None,
            "no *.cedar policy files (everything would be denied)",
        ));
    }

    let mut entities = Vec::new();
    if let Some(schema) = &schema {
        // Validation is per policy, so validating file by file keeps every error's offsets
        // inside the one file they point into.
        let validator = Validator::new(schema.clone());
        for (name, set) in &per_file {
            let text = text_of(name).unwrap_or_default();
            let result = validator.validate(set, ValidationMode::Strict);
            for e in result.validation_errors() {
                problems.push(diagnostic(name, text, e));
            }
        }
        if let Some(text) = text_of(ENTITIES_FILE) {
            match Entities::from_json_str(text, Some(schema)) {
                Ok(es) => {
                    // The schema's action entities come back from a schema-checked load;
                    // the gateway adds those itself, so keep only the data entities.
                    entities = es
                        .iter()
                        .filter(|e| e.uid().type_name().basename() != "Action")
                        .cloned()
                        .collect();
                    // A principal is built for each request from its token or session; one
                    // declared here would be used by `policy test` but not by the gateway.
                    for e in &entities {
                        let uid = e.uid();
                        if PRINCIPAL_TYPES.contains(&uid.type_name().to_string().as_str()) {
                            let at = text.find(&format!("\"{}\"", uid.id().unescaped()));
                            problems.push(problem(
                                ENTITIES_FILE,
                                at.map(|o| line_col(text, o)),
                                format!(
                                    "declares the principal {uid}: principals come from API tokens and sessions (roles from the token or the sign-in), not from {ENTITIES_FILE}"
                                ),
                            ));
                        }
                    }
                }
                Err(e) => problems.push(diagnostic(ENTITIES_FILE, text, &e)),
            }
        }
    }

    match schema {
        Some(schema) if problems.is_empty() => Ok(PolicyBundle {
            dir: dir.to_path_buf(),
            schema,
            policies,
            entities,
            sources,
            file_hashes,
        }),
        _ => Err(Rejection {
            problems,
            file_hashes,
        }),
    }
}

/// Parses one file and names each policy. Templates are refused: the gateway links none.
fn parse_file(name: &str, text: &str) -> Result<Vec<(Policy, PolicySource)>, Vec<PolicyProblem>> {
    let set: PolicySet = text.parse().map_err(|e: cedar_policy::ParseErrors| {
        e.iter()
            .map(|d| diagnostic(name, text, d))
            .collect::<Vec<_>>()
    })?;
    if set.num_of_templates() > 0 {
        return Err(vec![problem(
            name,
            None,
            "policy templates are not supported; write static policies",
        )]);
    }
    // `from_str` numbers policies policy0, policy1, … in file order and keeps each one's
    // text, so walking them in that order finds each one's place in the file.
    let mut numbered: Vec<&Policy> = set.policies().collect();
    numbered.sort_by_key(|p| {
        p.id()
            .to_string()
            .trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let mut out = Vec::new();
    let mut cursor = 0;
    for p in numbered {
        let offset = p
            .to_cedar()
            .and_then(|src| {
                text.get(cursor..)
                    .and_then(|rest| rest.find(src.trim()))
                    .map(|i| cursor + i)
            })
            .unwrap_or(cursor);
        cursor = offset + 1;
        let (line, column) = line_col(text, offset);
        let source = PolicySource {
            file: name.to_owned(),
            line,
            column,
        };
        let id = match p.annotation("id") {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            Some(_) => {
                return Err(vec![problem(
                    name,
                    Some((line, column)),
                    "@id(\"…\") must not be empty",
                )])
            }
            None => format!("{name}:{line}:{column}"),
        };
        out.push((p.new_id(PolicyId::new(id)), source));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(d.path().join(n), t).unwrap();
        }
        d
    }

    #[test]
    fn names_policies_by_id_or_place() {
        let d = dir_with(&[
            ("schema.cedarschema", SCHEMA),
            ("a.cedar", "@id(\"viewers-read\")\npermit(principal in Twinward::Role::\"twin-viewer\", action == Twinward::Action::\"read\", resource);\n\n  permit(principal, action == Twinward::Action::\"read\", resource) when { context.auth.mfa };\n"),
        ]);
        let b = load_dir(d.path()).unwrap();
        let ids: Vec<String> = b.policies.policies().map(|p| p.id().to_string()).collect();
        assert!(ids.contains(&"viewers-read".to_owned()), "{ids:?}");
        assert!(ids.contains(&"a.cedar:4:3".to_owned()), "{ids:?}");
    }

    /// The audit trail names the refused set by the bytes that were parsed, not by what the
    /// directory holds when someone looks again.
    #[test]
    fn a_rejection_carries_the_hashes_of_the_files_it_read() {
        let bad = "permit(principal, action, resource) when { nonsense };\n";
        let d = dir_with(&[("schema.cedarschema", SCHEMA), ("bad.cedar", bad)]);
        let r = load_dir_hashed(d.path()).unwrap_err();
        assert!(r.problems.iter().any(|p| p.file == "bad.cedar"), "{r:?}");
        let expected = vec![
            ("bad.cedar".to_owned(), hex::encode(Sha256::digest(bad))),
            (
                "schema.cedarschema".to_owned(),
                hex::encode(Sha256::digest(SCHEMA)),
            ),
        ];
        assert_eq!(r.file_hashes, expected);
    }

    #[test]
    fn principals_declared_in_entities_json_are_refused() {
        let d = dir_with(&[
            ("schema.cedarschema", SCHEMA),
            ("ok.cedar", "permit(principal, action, resource);\n"),
            (
                "entities.json",
                "[\n  { \"uid\": { \"type\": \"Twinward::Role\", \"id\": \"ops\" }, \"attrs\": {}, \"parents\": [] },\n  { \"uid\": { \"type\": \"Twinward::ServiceAccount\", \"id\": \"ci\" }, \"attrs\": { \"owner\": \"ops\" },\n    \"parents\": [ { \"type\": \"Twinward::Role\", \"id\": \"ops\" } ] }\n]\n",
            ),
        ]);
        let p = load_dir(d.path()).unwrap_err();
        assert!(
            p.iter().any(|p| p.file == "entities.json"
                && p.position.map(|x| x.0) == Some(3)
                && p.message.contains("Twinward::ServiceAccount::\"ci\"")),
            "{p:?}"
        );
    }

    #[test]
    fn schema_violations_are_refused_with_file_and_position() {
        let d = dir_with(&[
            ("schema.cedarschema", SCHEMA),
            ("ok.cedar", "permit(principal, action, resource);\n"),
            ("bad.cedar", "// comment\npermit(principal, action, resource)\n  when { context.auth.nonexistent == 1 };\n"),
        ]);
        let p = load_dir(d.path()).unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.file == "bad.cedar" && p.position.map(|x| x.0) == Some(3)),
            "{p:?}"
        );
    }

    #[test]
    fn syntax_errors_and_duplicate_ids_are_refused() {
        let d = dir_with(&[
            ("schema.cedarschema", SCHEMA),
            ("a.cedar", "@id(\"x\") permit(principal, action, resource);\n"),
            ("b.cedar", "@id(\"x\") permit(principal, action, resource);\npermit(principal, action resource);"),
        ]);
        let p = load_dir(d.path()).unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.file == "b.cedar" && p.position.map(|x| x.0) == Some(2)),
            "{p:?}"
        );
        let d = dir_with(&[
            ("schema.cedarschema", SCHEMA),
            (
                "a.cedar",
                "@id(\"x\") permit(principal, action, resource);\n",
            ),
            (
                "b.cedar",
                "@id(\"x\") permit(principal, action, resource);\n",
            ),
        ]);
        let p = load_dir(d.path()).unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.message.contains("already used at a.cedar:1:1")),
            "{p:?}"
        );
    }

    #[test]
    fn missing_schema_is_an_error() {
        let d = dir_with(&[("a.cedar", "permit(principal, action, resource);")]);
        let p = &load_dir(d.path()).unwrap_err()[0];
        assert!(p.message.contains("no schema"));
        // Named once, as the directory: not as a file inside itself.
        let shown = p.in_dir(d.path());
        assert!(
            shown.starts_with(&format!("{}: no schema", d.path().display())),
            "{shown}"
        );
    }
}
