//! The `twinward` command line as admins use it: `check`, `policy validate|test|eval`,
//! `token create|list`, `audit verify`, and the admin listener next to the public one.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn both(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

/// A temp directory holding `twinward.toml` with `text` and a copy of the shipped policies.
fn config_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("policies"), &dir.path().join("policies"));
    std::fs::write(dir.path().join("twinward.toml"), text).unwrap();
    dir
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let cfg = dir.join("twinward.toml");
    let cfg = cfg.to_str().unwrap();
    all.extend(["--config", cfg]);
    twinward_in(dir, &all)
}

const GOOD: &str = r#"[server]
listen = "127.0.0.1:8080"
production_hosts = ["*.prod.example.com"]

[location]
timezone = "Europe/Berlin"

[[routes]]
name = "plant-7"
path_prefix = "/plant-7"
upstream = "http://10.40.0.7:8080"
twin = "plant-7"
attributes = { environment = "twin", site = "plant-7", sensitivity = 2 }
"#;

/// Several problems, each on a known line: a bad timezone (line 6), a production upstream
/// (route at line 10), overlapping routes (line 22), a route without a twin (line 28).
const SEVERAL: &str = r#"[server]
listen = "127.0.0.1:8080"
production_hosts = ["*.prod.example.com"]

[location]
timezone = "Mars/Olympus"

[policy]
dir = "policies"
[[routes]]
name = "erp"
path_prefix = "/erp"
upstream = "http://erp.prod.example.com:8080"
twin = "plant-7"

[[routes]]
name = "a"
path_prefix = "/x"
upstream = "http://127.0.0.1:1"
twin = "plant-7"

[[routes]]
name = "b"
path_prefix = "/x/"
upstream = "http://127.0.0.1:2"
twin = "plant-9"

[[routes]]
name = "no-twin"
path_prefix = "/y"
upstream = "http://127.0.0.1:3"
"#;

fn assert_lists(out: &Output, needles: &[&str]) {
    let text = both(out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for n in needles {
        assert!(text.contains(n), "missing {n:?} in:\n{text}");
    }
}

#[test]
fn check_passes_a_good_config_and_lists_every_problem_of_a_bad_one() {
    let good = config_dir(GOOD);
    let out = run(good.path(), &["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(stdout(&out).contains("ok"));

    let bad = config_dir(SEVERAL);
    let out = run(bad.path(), &["check"]);
    assert_lists(
        &out,
        &[
            "twinward.toml:6:",
            "Mars/Olympus",
            "twinward.toml:10:",
            "production host",
            "twinward.toml:22:",
            "overlaps route",
            "twinward.toml:28:",
            "no twin",
            "4 problem(s)",
        ],
    );
}

#[test]
fn check_lists_an_unknown_key_together_with_the_other_problems() {
    // An unknown key is a strict-parsing error; it must not hide everything else.
    let text = SEVERAL.replacen(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nlisen = \"127.0.0.1:8081\"",
        1,
    );
    let bad = config_dir(&text);
    let out = run(bad.path(), &["check"]);
    assert_lists(
        &out,
        &[
            "twinward.toml:3:",
            "lisen",
            "Mars/Olympus",
            "production host",
            "overlaps route",
            "no twin",
            "5 problem(s)",
        ],
    );
}

#[test]
fn check_also_validates_policies_and_keys() {
    let dir = config_dir(GOOD);
    std::fs::write(
        dir.path().join("policies/broken.cedar"),
        "// one\n@id(\"broken\")\npermit (principal, action resource);\n",
    )
    .unwrap();
    let out = run(dir.path(), &["keys", "rotate"]);
    assert!(out.status.success(), "{}", both(&out));
    let key = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "p8"))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(dir.path(), &["check"]);
    assert_lists(
        &out,
        &[
            "broken.cedar:3:",
            &key.file_name().unwrap().to_string_lossy(),
            "2 problem(s)",
        ],
    );
}

#[test]
fn check_lists_policy_problems_even_when_the_config_has_problems_too() {
    let dir = config_dir(&GOOD.replace("Europe/Berlin", "Mars/Olympus"));
    std::fs::write(
        dir.path().join("policies/broken.cedar"),
        "// one\n@id(\"broken\")\npermit (principal, action resource);\n",
    )
    .unwrap();
    let out = run(dir.path(), &["check"]);
    assert_lists(&out, &["Mars/Olympus", "broken.cedar:3:"]);
}

#[test]
fn policy_validate_accepts_the_shipped_set_and_points_at_errors() {
    let out = twinward_in(&repo(), &["policy", "validate", "policies"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(stdout(&out).contains("valid"), "{}", stdout(&out));

    // A syntax error and, separately, a schema violation: each is refused with file:line:col.
    for (name, text, at) in [
        (
            "syntax.cedar",
            "// one\n// two\n@id(\"syntax\")\npermit (principal, action resource);\n",
            "syntax.cedar:4:",
        ),
        (
            "schema.cedar",
            "@id(\"schema\")\npermit (principal, action, resource)\nwhen { context.auth.nope };\n",
            "schema.cedar:3:",
        ),
        (
            "viewers.cedar",
            "@id(\"viewers-read\")\npermit (principal in Twinward::Role::\"twin-viewer\", action == Twinward::Action::\"read\", resource)\nwhen { resource.sensitivity <= \"2\" };\n",
            "viewers.cedar:3:",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&repo().join("policies"), dir.path());
        std::fs::write(dir.path().join(name), text).unwrap();
        let out = twinward_in(dir.path(), &["policy", "validate", "."]);
        let text = both(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {text}");
        assert!(text.contains(at), "{name}: missing {at:?} in:\n{text}");
    }
}

#[test]
fn policy_test_passes_the_shipped_cases_and_fails_a_wrong_one() {
    let out = twinward_in(&repo(), &["policy", "test", "policies"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let lines: Vec<&str> = text.lines().collect();
    let (summary, cases) = lines.split_last().unwrap();
    assert!(cases.len() >= 10, "{text}");
    for l in cases {
        assert!(l.starts_with("PASS "), "{l}");
    }
    assert_eq!(*summary, format!("{} passed, 0 failed", cases.len()));

    // Flip one expectation: the run fails, names the case, and counts it.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("policies"), dir.path());
    let roles = dir.path().join("tests/roles.json");
    let original = std::fs::read_to_string(&roles).unwrap();
    let changed = original.replacen(
        "\"expect\": \"deny\", \"determining\": [] }",
        "\"expect\": \"allow\", \"determining\": [] }",
        1,
    );
    assert_ne!(original, changed);
    std::fs::write(&roles, changed).unwrap();
    let out = twinward_in(dir.path(), &["policy", "test", "."]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let failed: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert!(
        failed[0].contains("viewer cannot read plant-9"),
        "{}",
        failed[0]
    );
    assert!(text.trim_end().ends_with(", 1 failed"), "{text}");
}

#[test]
fn policy_eval_explains_single_requests_and_batches() {
    let root = repo();
    let eval = |args: &[&str]| {
        let mut all = vec!["policy", "eval", "--dir", "policies"];
        all.extend_from_slice(args);
        twinward_in(&root, &all)
    };
    let out = eval(&[
        "--principal",
        "Twinward::ServiceAccount::\"sim-7\"",
        "--role",
        "sim-runner",
        "--action",
        "write",
        "--resource",
        "Twinward::Twin::\"sandbox\"",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(text.contains("decision: allow"), "{text}");
    assert!(
        text.contains("sim-runners-sandbox (service-accounts.cedar:"),
        "{text}"
    );

    // The same principal without the role: default deny. With a forbidding role: the forbid.
    let out = eval(&[
        "--principal",
        "Twinward::ServiceAccount::\"sim-7\"",
        "--role",
        "data-pipeline",
        "--action",
        "write",
        "--resource",
        "Twinward::Twin::\"sandbox\"",
    ]);
    let text = stdout(&out);
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("default deny"), "{text}");
    let out = eval(&[
        "--principal",
        "Twinward::User::\"cora\"",
        "--role",
        "contractor",
        "--role",
        "twin-operator",
        "--action",
        "write",
        "--resource",
        "Twinward::Twin::\"plant-7\"",
    ]);
    let text = stdout(&out);
    assert!(
        text.contains("decision: deny") && text.contains("contractors-never-write"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let batch = dir.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        [
            r#"{"principal": {"type": "Twinward::ServiceAccount", "id": "etl", "roles": ["data-pipeline"]}, "action": "read", "resource": "Twinward::Twin::\"plant-9\""}"#,
            r#"{"principal": {"type": "Twinward::User", "id": "vera", "roles": ["twin-viewer"]}, "action": "read", "resource": "Twinward::Twin::\"plant-9\""}"#,
            r#"{"principal": {"type": "Twinward::User", "id": "otto", "roles": ["twin-operator"]}, "action": "write", "resource": "Twinward::Twin::\"plant-7\"", "context": {"time": {"now": "2026-01-06T10:00:00Z"}}}"#,
            r#"{"principal": {"type": "Twinward::User", "id": "otto", "roles": ["twin-operator"]}, "action": "write", "resource": "Twinward::Twin::\"plant-7\"", "context": {"time": {"now": "2026-01-10T10:00:00Z"}}}"#,
            // Cedar's JSON forms for the action: an entity reference, and the entity's name.
            r#"{"principal": {"type": "Twinward::ServiceAccount", "id": "etl", "roles": ["data-pipeline"]}, "action": {"type": "Twinward::Action", "id": "read"}, "resource": {"type": "Twinward::Twin", "id": "plant-9"}}"#,
            r#"{"principal": {"type": "Twinward::ServiceAccount", "id": "etl", "roles": ["data-pipeline"]}, "action": "Twinward::Action::\"write\"", "resource": "Twinward::Twin::\"plant-9\""}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = eval(&["--batch", batch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let results: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(results.len(), 6, "one JSON line per request");
    let expect = [
        ("allow", Some("pipelines-read-plants")),
        ("deny", None),
        ("allow", Some("operators-write-business-hours")),
        ("deny", None), // a Saturday
        ("allow", Some("pipelines-read-plants")),
        ("deny", None),
    ];
    for (i, (r, (decision, policy))) in results.iter().zip(expect).enumerate() {
        assert_eq!(r["decision"], decision, "line {}: {r}", i + 1);
        match policy {
            Some(p) => assert_eq!(r["determining"], serde_json::json!([p]), "{r}"),
            None => assert_eq!(r["determining"], serde_json::json!([]), "{r}"),
        }
    }

    // A malformed line is reported on its own line, and the run exits 2.
    std::fs::write(
        &batch,
        format!(
            "{}\nnot json\n{}\n",
            r#"{"principal": "Twinward::User::\"x\"", "action": "read", "resource": "Twinward::Twin::\"plant-7\""}"#,
            // A misspelled field is an error, not a question asked without it.
            r#"{"principal": "Twinward::User::\"x\"", "action": "read", "resource": "Twinward::Twin::\"plant-7\"", "contxt": {}}"#
        ),
    )
    .unwrap();
    let out = eval(&["--batch", batch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[1]["line"], 2);
    assert!(lines[1]["error"].is_string());
    assert_eq!(lines[2]["line"], 3);
    assert!(
        lines[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("contxt")),
        "{}",
        lines[2]
    );
}

#[test]
fn tokens_are_listed_by_prefix_and_bad_requests_are_refused() {
    let dir = config_dir(GOOD);
    // Before the database exists, reading commands say so instead of making an empty one
    // (which `audit verify` would call intact).
    for args in [
        &["token", "list"][..],
        &["token", "revoke", "0193a0b1"],
        &["audit", "verify"],
        &["audit", "export"],
    ] {
        let out = run(dir.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", both(&out));
        assert!(
            stderr(&out).contains("no database at"),
            "{args:?}: {}",
            both(&out)
        );
        assert!(!stdout(&out).contains("intact"), "{args:?}");
    }
    assert!(!dir.path().join("twinward.db").exists());
    let out = run(
        dir.path(),
        &[
            "token",
            "create",
            "--service-account",
            "sim-7",
            "--role",
            "sim-runner",
            "--ttl",
            "1d",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.starts_with("twt_") && token.len() >= 36, "{token}");
    assert!(!stderr(&out).contains(&token), "shown once, on stdout only");

    let out = run(dir.path(), &["token", "list"]);
    let list = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(list.contains(&token[..10]), "prefix listed:\n{list}");
    assert!(!list.contains(&token), "the token itself is never listed");
    assert!(
        !list.contains(&token[..20]),
        "no more than a prefix:\n{list}"
    );
    let row = list.lines().find(|l| l.contains("sim-7")).unwrap();
    assert!(
        row.contains("sim-runner") && row.ends_with("active"),
        "{row}"
    );
    let db = std::fs::read(dir.path().join("twinward.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(&token),
        "the token is stored only as a hash"
    );

    for (args, needle) in [
        (vec!["--role", "wizard", "--ttl", "1d"], "wizard"),
        (vec!["--role", "sim-runner", "--ttl", "91d"], "max_ttl"),
        (
            vec!["--role", "sim-runner", "--ttl", "1d", "--twin", "plant-0"],
            "plant-0",
        ),
        (vec!["--role", "sim-runner", "--ttl", "soon"], "--ttl"),
    ] {
        let mut all = vec!["token", "create", "--service-account", "ci"];
        all.extend(args);
        let out = run(dir.path(), &all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", both(&out));
        assert!(stderr(&out).contains(needle), "{all:?}: {}", stderr(&out));
        assert!(!stdout(&out).contains("twt_"), "{all:?}");
    }
    let list = stdout(&run(dir.path(), &["token", "list"]));
    assert_eq!(list.lines().count(), 2, "only the one good token:\n{list}");
    // With the audit log refusing events, no token is issued (the one stored is revoked
    // again) and a revocation says its event is missing.
    let db = dir.path().join("twinward.db");
    sqlite_exec(
        &db,
        "CREATE TRIGGER audit_blocked BEFORE INSERT ON audit_events \
         BEGIN SELECT RAISE(ABORT, 'blocked'); END;",
    );
    let out = run(
        dir.path(),
        &[
            "token",
            "create",
            "--service-account",
            "unaudited",
            "--role",
            "sim-runner",
            "--ttl",
            "1d",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(!stdout(&out).contains("twt_"), "{}", both(&out));
    assert!(stderr(&out).contains("no token issued"), "{}", both(&out));
    let list = stdout(&run(dir.path(), &["token", "list"]));
    let row = list
        .lines()
        .find(|l| l.contains("unaudited"))
        .unwrap_or_default();
    assert!(row.ends_with("revoked"), "{list}");
    let active = list
        .lines()
        .find(|l| l.contains("sim-7"))
        .unwrap()
        .to_owned();
    let id = active.split_whitespace().next().unwrap().to_owned();
    let out = run(dir.path(), &["token", "revoke", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        stderr(&out).contains("audit event could not be written"),
        "{}",
        both(&out)
    );
    sqlite_exec(&db, "DROP TRIGGER audit_blocked;");
    let list = stdout(&run(dir.path(), &["token", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains("sim-7") && l.ends_with("revoked")),
        "{list}"
    );
    let out = run(
        dir.path(),
        &[
            "token",
            "create",
            "--service-account",
            "sim-8",
            "--role",
            "sim-runner",
            "--ttl",
            "1d",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));

    // A prefix too short to name one token revokes nothing, even when only one exists.
    for short in ["", "%"] {
        let out = run(dir.path(), &["token", "revoke", short]);
        assert_ne!(out.status.code(), Some(0), "{short:?}: {}", both(&out));
    }
    let list = stdout(&run(dir.path(), &["token", "list"]));
    assert!(
        list.lines()
            .any(|l| l.contains("sim-8") && l.ends_with("active")),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_finds_edits_and_deletions_made_behind_the_gateways_back() {
    let (_up, gw) = two_plants().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    sync(|| {
        for p in ["/plant-7/a", "/plant-9/b", "/plant-7/c", "/plant-9/d"] {
            get(gw.addr, p, Some(&token), &[]);
        }
    });
    gw.wait_audit(|e| e["kind"] == "access" && e["detail"]["path"] == "/plant-9/d");
    let events = gw.audit();
    assert!(events.len() >= 5, "{events:?}");

    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    assert!(stdout(&out).contains("intact"), "{}", stdout(&out));

    // The table refuses in-place changes...
    let db = gateway_db(&gw);
    let refused = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE audit_events SET event = replace(event, '\"deny\"', '\"allow\"') WHERE seq = 3;")
        .output();
    if let Ok(o) = refused {
        assert!(!o.status.success(), "the no-update trigger must refuse");
    }
    // ...so an attacker drops the trigger first and turns a deny into an allow.
    let deny_seq = events
        .iter()
        .find(|e| e["kind"] == "access" && e["outcome"] == "deny")
        .and_then(|e| e["seq"].as_i64())
        .expect("a deny event");
    sqlite_exec(
        &db,
        &format!(
            "DROP TRIGGER audit_events_no_update; UPDATE audit_events SET event = replace(event, '\"outcome\":\"deny\"', '\"outcome\":\"allow\"') WHERE seq = {deny_seq};"
        ),
    );
    let out = gw.cli(&["audit", "verify"]);
    let text = both(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(!stdout(&out).contains("intact"), "{text}");
    assert!(
        text.contains(&format!("seq {deny_seq}")) && text.contains("edited"),
        "{text}"
    );

    // Deleting an earlier event is found too (the first break in the chain is reported).
    sqlite_exec(
        &db,
        "DROP TRIGGER audit_events_no_delete; DELETE FROM audit_events WHERE seq = 2;",
    );
    let out = gw.cli(&["audit", "verify"]);
    let text = both(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("seq 3") && text.contains("gap"), "{text}");
}

/// While the audit log takes no events, no decision is made (503, not ready); once it takes
/// them again, the events queued meanwhile are in it, in one intact chain.
#[tokio::test(flavor = "multi_thread")]
async fn decisions_stop_while_the_audit_log_takes_no_events() {
    let (_up, gw) = two_plants().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let db = gateway_db(&gw);
    let poll = |want: u16, path: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = get(gw.addr, path, Some(&token), &[]);
            if r.status == want || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    sync(|| {
        assert_eq!(
            get(gw.addr, "/plant-7/before", Some(&token), &[]).status,
            200
        );
        sqlite_exec(
            &db,
            "CREATE TRIGGER audit_blocked BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'blocked'); END;",
        );
        // Decided before the writer meets the failure: queued, not lost.
        get(gw.addr, "/plant-7/queued", Some(&token), &[]);
        let refused = poll(503, "/plant-7/during");
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert!(refused.body.contains("decision_id"), "{}", refused.body);
        let ready = admin_get(&gw, "/readyz");
        assert_eq!(ready.status, 503, "{}", ready.body);
        assert!(ready.body.contains("audit"), "{}", ready.body);
        sqlite_exec(&db, "DROP TRIGGER audit_blocked;");
        let back = poll(200, "/plant-7/after");
        assert_eq!(back.status, 200, "{}", back.body);
        assert_eq!(admin_get(&gw, "/readyz").status, 200);
    });
    gw.wait_audit(|e| e["detail"]["path"] == "/plant-7/after");
    let paths: Vec<String> = gw
        .audit()
        .iter()
        .filter(|e| e["kind"] == "access")
        .filter_map(|e| e["detail"]["path"].as_str().map(str::to_owned))
        .collect();
    assert!(paths.contains(&"/plant-7/queued".to_owned()), "{paths:?}");
    let out = gw.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_are_on_the_admin_listener_only() {
    let (up, gw) = two_plants().await;
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    let (health, ready, metrics, public) = sync(|| {
        assert_eq!(get(gw.addr, "/plant-7/a", Some(&token), &[]).status, 200);
        assert_eq!(get(gw.addr, "/plant-9/a", Some(&token), &[]).status, 403);
        assert_eq!(get(gw.addr, "/plant-7/a", None, &[]).status, 401);
        let public: Vec<(String, RawResponse)> = ["/healthz", "/readyz", "/metrics"]
            .iter()
            .map(|p| (p.to_string(), get(gw.addr, p, None, &[])))
            .collect();
        (
            admin_get(&gw, "/healthz"),
            admin_get(&gw, "/readyz"),
            admin_get(&gw, "/metrics"),
            public,
        )
    });
    assert_eq!(health.status, 200);
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("ready"), "{}", ready.body);
    assert_eq!(metrics.status, 200);
    let m = &metrics.body;
    for needle in [
        "twinward_requests_total",
        "twinward_decisions_total",
        "outcome=\"allow\"",
        "outcome=\"deny\"",
        "route=\"plant-7\"",
        "status=\"200\"",
    ] {
        assert!(m.contains(needle), "missing {needle} in /metrics:\n{m}");
    }
    let sample = |prefix: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {prefix} in:\n{m}"))
    };
    assert!(sample("twinward_decisions_total{outcome=\"allow\"}") >= 1.0);
    assert!(sample("twinward_decisions_total{outcome=\"deny\"}") >= 1.0);
    for (p, r) in &public {
        assert_eq!(r.status, 404, "{p} on the public listener: {}", r.body);
        assert!(!r.body.contains("twinward_"), "{p}: {}", r.body);
    }
    assert_eq!(up.count(), 1, "only the allowed request reached the twin");
}

#[test]
fn check_finds_a_missing_client_secret_and_an_unknown_mapped_role() {
    let text = format!(
        "{GOOD}\n[oidc]\nissuer = \"https://idp.example.com\"\nclient_id = \"twinward\"\nclient_secret_file = \"nowhere/secret\"\nroles = {{ \"twin-viewers\" = \"twin-viewer\", \"ops\" = \"twin-operatr\" }}\n"
    )
    .replace(
        "[server]\n",
        "[server]\npublic_url = \"https://twins.example.com\"\n",
    );
    let dir = config_dir(&text);
    let out = run(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert_lists(
        &out,
        &[
            "oidc client secret: cannot read secret file",
            "maps \"ops\" to \"twin-operatr\", which is not a Twinward::Role",
            "2 problem(s)",
        ],
    );
    std::fs::create_dir_all(dir.path().join("nowhere")).unwrap();
    let secret = dir.path().join("nowhere/secret");
    std::fs::write(&secret, "s").unwrap();
    let fixed = text.replace("twin-operatr", "twin-operator");
    std::fs::write(dir.path().join("twinward.toml"), &fixed).unwrap();
    // Written under the usual umask, the secret is readable by everyone: refused.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(dir.path(), &["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", both(&out));
    assert_lists(
        &out,
        &[
            "oidc client secret: cannot read secret file",
            "nowhere/secret: can be read or changed by others (mode 644); run chmod 600",
            "1 problem(s)",
        ],
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", both(&out));
    // Browsers sign in on this config's auth host, and the route, having no host, is served
    // there too: valid, but said.
    let warning = "twinward.toml:9:1: warning: route \"plant-7\" has no host";
    assert!(both(&out).contains(warning), "{}", both(&out));

    let own_host = fixed.replace(
        "path_prefix = \"/plant-7\"",
        "host = \"plant-7.example.com\"\npath_prefix = \"/plant-7\"",
    );
    std::fs::write(dir.path().join("twinward.toml"), own_host).unwrap();
    let out = run(dir.path(), &["check"]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(!both(&out).contains("warning"), "{}", both(&out));
}
