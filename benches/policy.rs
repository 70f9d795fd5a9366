//! Cedar decision time: the gateway's evaluation path (`Loaded::decide_unmemoized`, which
//! evaluates only the policies whose scope can match, and builds the Cedar context from the
//! typed `RequestContext`) beside the reference (`Loaded::decide_unsliced`, every policy
//! evaluated), for 10, 100 and 1,000 generated policies each scoped to one twin, and for the
//! shipped policy set; plus `memoized`, what the gateway pays when the inputs a decision
//! reads repeat (`Loaded::decide`). `cargo bench --bench policy`; the target is ≤ 20 µs at
//! 1,000 policies, for the evaluation path.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use twinward::clock::Timestamp;
use twinward::config::AttrValue;
use twinward::policy::context::{AuthMethod, RequestInfo, TimeContext};
use twinward::policy::engine::{Loaded, Principal, TwinSpec};
use twinward::policy::{loader, Action, RequestContext};

const ROLES: usize = 7;
const SCHEMA: &str = include_str!("../policies/schema.cedarschema");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `n` policies, each scoped to one twin, plus a few forbids and unscoped permits such as
/// admins write; `entities.json` with the roles (a small hierarchy) and a twin group.
fn write_generated(dir: &Path, n: usize) {
    let mut policies = String::new();
    for i in 0..n {
        let (action, cond) = match i % 3 {
            0 => (
                "read",
                "context.time.hour >= 7 && resource.sensitivity <= 3",
            ),
            1 => (
                "write",
                "context.time.weekday <= 5 && context.time.hour >= 7 && context.time.hour < 19",
            ),
            _ => (
                "read",
                "context.network.zone == \"plant\" || context.network.zone == \"office\"",
            ),
        };
        policies.push_str(&format!(
            "@id(\"p-{i}\")\npermit (\n  principal in Twinward::Role::\"role-{r}\",\n  action == Twinward::Action::\"{action}\",\n  resource == Twinward::Twin::\"twin-{i}\"\n)\nwhen {{ {cond} }};\n\n",
            r = i % ROLES
        ));
    }
    // Unscoped ones: these land in every slice.
    policies.push_str(
        r#"@id("twins-only")
forbid (principal, action, resource)
unless { resource.environment == "twin" || resource.environment == "sandbox" };

@id("sensitive-writes-need-fresh-mfa")
forbid (principal, action == Twinward::Action::"write", resource)
when {
  resource.sensitivity >= 3 &&
  context.auth.method == "browser" &&
  !(context.auth.mfa && context.auth.mfa_age_s <= 300)
};

@id("admins-administer")
permit (principal in Twinward::Role::"twin-admin", action == Twinward::Action::"admin", resource);

@id("auditors-read-group")
permit (
  principal is Twinward::ServiceAccount in Twinward::Role::"auditor",
  action == Twinward::Action::"read",
  resource in Twinward::Twin::"all-twins"
)
when { context has purpose && context.purpose != "" };
"#,
    );
    let mut entities = vec![
        role("twin-admin", &[]),
        role("auditor", &[]),
        serde_json::json!({
            "uid": { "type": "Twinward::Twin", "id": "all-twins" },
            "attrs": { "environment": "twin", "site": "all", "sensitivity": 0 },
            "parents": []
        }),
    ];
    for r in 0..ROLES {
        // role-0 is above role-1 is above … (a chain, as role hierarchies tend to be).
        let parent = if r + 1 < ROLES {
            vec![format!("role-{}", r + 1)]
        } else {
            vec![]
        };
        let parents: Vec<&str> = parent.iter().map(String::as_str).collect();
        entities.push(role(&format!("role-{r}"), &parents));
    }
    for i in 0..n {
        // Half the twins are in the group (declared here, attributes from the route).
        if i % 2 == 0 {
            entities.push(serde_json::json!({
                "uid": { "type": "Twinward::Twin", "id": format!("twin-{i}") },
                "attrs": { "environment": "twin", "site": format!("site-{}", i % 13), "sensitivity": (i % 5) as i64 },
                "parents": [ { "type": "Twinward::Twin", "id": "all-twins" } ]
            }));
        }
    }
    std::fs::write(dir.join(loader::SCHEMA_FILE), SCHEMA).unwrap();
    std::fs::write(dir.join("generated.cedar"), policies).unwrap();
    std::fs::write(
        dir.join(loader::ENTITIES_FILE),
        serde_json::to_string_pretty(&entities).unwrap(),
    )
    .unwrap();
}

fn role(id: &str, parents: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "uid": { "type": "Twinward::Role", "id": id },
        "attrs": {},
        "parents": parents.iter().map(|p| serde_json::json!({ "type": "Twinward::Role", "id": p })).collect::<Vec<_>>()
    })
}

fn twin_spec(id: &str, site: &str, sensitivity: i64) -> TwinSpec {
    TwinSpec {
        id: id.to_owned(),
        attributes: BTreeMap::from([
            (
                "environment".to_owned(),
                AttrValue::String("twin".to_owned()),
            ),
            ("site".to_owned(), AttrValue::String(site.to_owned())),
            ("sensitivity".to_owned(), AttrValue::Long(sensitivity)),
        ]),
        origin: format!("bench route {id:?}"),
    }
}

fn compile(dir: &Path, twins: &[TwinSpec]) -> Loaded {
    let bundle = loader::load_dir(dir).unwrap_or_else(|p| panic!("policies: {p:?}"));
    Loaded::compile(bundle, twins, 1).unwrap_or_else(|p| panic!("compile: {p:?}"))
}

/// Friday 2026-11-20, 10:15 UTC: business hours.
fn context(path: &str) -> RequestContext {
    let mut c = RequestContext::new(
        AuthMethod::ApiToken,
        IpAddr::V4(Ipv4Addr::new(10, 20, 1, 7)),
        TimeContext::at(Timestamp::from_unix_secs(1_795_169_700), &chrono_tz::UTC),
        RequestInfo {
            method: "GET".into(),
            path: path.into(),
        },
    );
    c.network.zone = "plant".into();
    c.network.country = "DE".into();
    c
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    for n in [10usize, 100, 1000] {
        let dir = tempfile::tempdir().unwrap();
        write_generated(dir.path(), n);
        let twins: Vec<TwinSpec> = (0..n)
            .map(|i| {
                twin_spec(
                    &format!("twin-{i}"),
                    &format!("site-{}", i % 13),
                    (i % 5) as i64,
                )
            })
            .collect();
        let loaded = compile(dir.path(), &twins);
        // Policy k = 7j+3 reads twin-k for role-3 (and, through the hierarchy, role-0..3).
        let k = (n / 2) / 21 * 21 + 3;
        let twin = format!("twin-{k}");
        let principal =
            Principal::service_account("bench-sa", "bench", &["role-2".to_owned()]).unwrap();
        let ctx = context(&format!("/{twin}/state"));
        let sliced = loaded.decide(&principal, Action::Read, &twin, &ctx);
        let unsliced = loaded.decide_unsliced(&principal, Action::Read, &twin, &ctx);
        assert!(sliced.allow, "n={n}: {sliced:?}");
        assert_eq!(sliced, unsliced, "n={n}");
        assert_eq!(sliced.determining[..], [format!("p-{k}")]);

        group.bench_with_input(BenchmarkId::new("sliced", n), &n, |b, _| {
            b.iter(|| {
                black_box(loaded.decide_unmemoized(
                    black_box(&principal),
                    Action::Read,
                    black_box(&twin),
                    black_box(&ctx),
                ))
            })
        });
        group.bench_with_input(BenchmarkId::new("unsliced", n), &n, |b, _| {
            b.iter(|| {
                black_box(loaded.decide_unsliced(
                    black_box(&principal),
                    Action::Read,
                    black_box(&twin),
                    black_box(&ctx),
                ))
            })
        });
    }

    // The shipped set, as `bench/proxy.sh` exercises it: a sim-runner reads plant-7.
    let shipped = compile(
        &repo().join("policies"),
        &[twin_spec("plant-7", "plant-7", 2)],
    );
    let principal = Principal::service_account("sim-7", "bench", &["sim-runner".to_owned()])
        .expect("principal");
    let ctx = context("/plant-7/state");
    let d = shipped.decide(&principal, Action::Read, "plant-7", &ctx);
    assert!(d.allow, "{d:?}");
    assert_eq!(
        d,
        shipped.decide_unsliced(&principal, Action::Read, "plant-7", &ctx)
    );
    group.bench_function("shipped/sliced", |b| {
        b.iter(|| {
            black_box(shipped.decide_unmemoized(
                black_box(&principal),
                Action::Read,
                "plant-7",
                &ctx,
            ))
        })
    });
    group.bench_function("shipped/memoized", |b| {
        b.iter(|| black_box(shipped.decide(black_box(&principal), Action::Read, "plant-7", &ctx)))
    });
    group.bench_function("shipped/unsliced", |b| {
        b.iter(|| {
            black_box(shipped.decide_unsliced(black_box(&principal), Action::Read, "plant-7", &ctx))
        })
    });
    // The part of every decision that does not depend on the policy set: the gateway's
    // path (evaluated values, per-thread caches) beside Cedar's public constructors.
    group.bench_function("context/fast", |b| {
        b.iter(|| black_box(black_box(&ctx).to_cedar_fast()))
    });
    group.bench_function("context/reference", |b| {
        b.iter(|| black_box(black_box(&ctx).to_cedar()))
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
