//! Hot policy reload on a running gateway: a valid change takes effect within seconds and is
//! audited; an invalid change is rejected as a whole, logged with its file and line, audited,
//! and the last good set stays in force; SIGHUP reloads even when file watching is off.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

const FORBID_SIMS_ON_PLANT_7: &str = r#"// Added by the reload test.
@id("no-sims-on-plant-7")
forbid (
  principal in Twinward::Role::"sim-runner",
  action,
  resource == Twinward::Twin::"plant-7"
);
"#;

async fn setup(extra: &str) -> (Upstream, Gateway, String) {
    let up = Upstream::start().await;
    let gw = Gateway::start(GatewayOptions {
        routes: vec![RouteSpec::new("plant-7", "/plant-7", up.addr, "plant-7", 2)],
        extra: extra.to_owned(),
        ..Default::default()
    });
    let token = gw.token("sim-7", &["sim-runner"], &[], "1d");
    (up, gw, token)
}

fn status(gw: &Gateway, token: &str) -> u16 {
    get(
        gw.addr,
        "/plant-7/x",
        Some(token),
        &[("Accept", "application/json")],
    )
    .status
}

/// The policy generation `/readyz` reports.
fn generation(gw: &Gateway) -> u64 {
    let r = admin_get(gw, "/readyz");
    r.body
        .split("generation ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no generation in /readyz: {}", r.body))
}

fn names_file(e: &serde_json::Value, file: &str) -> bool {
    e["detail"]["files"]
        .as_array()
        .is_some_and(|fs| fs.iter().any(|f| f[0] == file))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_change_flips_the_decision_within_seconds_and_is_audited() {
    let (_up, gw, token) = setup("").await;
    assert_eq!(sync(|| status(&gw, &token)), 200);
    let gen0 = sync(|| generation(&gw));

    std::fs::write(
        gw.policies().join("zz-reload.cedar"),
        FORBID_SIMS_ON_PLANT_7,
    )
    .unwrap();
    sync(|| {
        wait_for(
            Duration::from_secs(3),
            "the new forbid to take effect",
            || status(&gw, &token) == 403,
        )
    });
    assert!(sync(|| generation(&gw)) > gen0);
    let ev = gw.wait_audit(|e| e["kind"] == "policy.reload" && names_file(e, "zz-reload.cedar"));
    assert_eq!(ev["outcome"], "ok");
    gw.wait_audit(|e| {
        e["kind"] == "access"
            && e["outcome"] == "deny"
            && e["policies"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p == "no-sims-on-plant-7"))
    });

    // Removing the file restores the previous decision.
    std::fs::remove_file(gw.policies().join("zz-reload.cedar")).unwrap();
    sync(|| {
        wait_for(Duration::from_secs(3), "the forbid to be gone", || {
            status(&gw, &token) == 200
        })
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_change_is_rejected_whole_and_the_last_good_set_stays() {
    let (_up, gw, token) = setup("").await;
    assert_eq!(sync(|| status(&gw, &token)), 200);
    let gen0 = sync(|| generation(&gw));

    // 1. A syntax error (line 4), written before a valid forbid in another file: were the
    //    valid part loaded on its own, or the set dropped, the request would turn into a 403.
    std::fs::write(
        gw.policies().join("broken.cedar"),
        "// line 1\n// line 2\n@id(\"broken\")\npermit (principal, action resource);\n",
    )
    .unwrap();
    std::fs::write(
        gw.policies().join("zz-forbid.cedar"),
        FORBID_SIMS_ON_PLANT_7,
    )
    .unwrap();
    let ev = gw.wait_audit(|e| e["kind"] == "policy.reject" && names_file(e, "zz-forbid.cedar"));
    assert_eq!(ev["outcome"], "error");
    let problems = ev["detail"]["problems"].to_string();
    assert!(problems.contains("broken.cedar:4:"), "{problems}");
    assert_eq!(ev["detail"]["in_force_generation"], gen0);
    sync(|| {
        for _ in 0..5 {
            assert_eq!(
                status(&gw, &token),
                200,
                "the previous set must stay in force"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(sync(|| generation(&gw)), gen0);
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("broken.cedar")
            && (l.contains("((4,") || l.contains(":4:") || l.contains("line=4"))),
        "the log must name the file and line:\n{log}"
    );

    // 2. A schema violation (an attribute the context does not have), line 3 of its file.
    std::fs::remove_file(gw.policies().join("broken.cedar")).unwrap();
    std::fs::write(
        gw.policies().join("schema-bad.cedar"),
        "@id(\"uses-nope\")\npermit (principal, action, resource)\nwhen { context.auth.nope };\n",
    )
    .unwrap();
    let ev = gw.wait_audit(|e| e["kind"] == "policy.reject" && names_file(e, "schema-bad.cedar"));
    let problems = ev["detail"]["problems"].to_string();
    assert!(
        problems.contains("schema-bad.cedar:3:") && problems.contains("nope"),
        "{problems}"
    );
    sync(|| {
        for _ in 0..5 {
            assert_eq!(status(&gw, &token), 200);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(sync(|| generation(&gw)), gen0);
    let log = gw.log();
    assert!(
        log.lines().any(|l| l.contains("schema-bad.cedar")
            && (l.contains("((3,") || l.contains(":3:") || l.contains("line=3"))),
        "the log must name the file and line:\n{log}"
    );

    // 3. Fixing the set loads it, including the forbid that waited beside the bad files.
    std::fs::remove_file(gw.policies().join("schema-bad.cedar")).unwrap();
    sync(|| {
        wait_for(Duration::from_secs(3), "the fixed set to load", || {
            status(&gw, &token) == 403
        })
    });
    gw.wait_audit(|e| e["kind"] == "policy.reload" && names_file(e, "zz-forbid.cedar"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_when_file_watching_is_off() {
    let (_up, gw, token) = setup("[policy]\nwatch = false\n").await;
    assert_eq!(sync(|| status(&gw, &token)), 200);
    std::fs::write(
        gw.policies().join("zz-reload.cedar"),
        FORBID_SIMS_ON_PLANT_7,
    )
    .unwrap();
    // Not watched: the change waits for the signal.
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        sync(|| status(&gw, &token)),
        200,
        "watch = false must not reload on change"
    );
    assert!(!gw.audit().iter().any(|e| e["kind"] == "policy.reload"));

    let out = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .output()
        .expect("run kill");
    assert!(out.status.success());
    sync(|| {
        wait_for(
            Duration::from_secs(3),
            "SIGHUP to reload the policy",
            || status(&gw, &token) == 403,
        )
    });
    gw.wait_audit(|e| e["kind"] == "policy.reload" && names_file(e, "zz-reload.cedar"));
    // Still running after the signal.
    assert_eq!(sync(|| admin_get(&gw, "/healthz")).status, 200);
}
