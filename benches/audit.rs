//! What the audit writer pays per event: `AuditAppender::append` on SQLite (the event's
//! JSON, chain hashing, the insert, the commit and the WAL checkpoints it triggers) for
//! transactions of 512 typical access events, as the writer commits them, and of 128 for
//! comparison; linking one event into the chain alone (its JSON and hash); and SHA-256
//! over one event's chained bytes by the gateway's implementation (aws-lc) beside the
//! portable `sha2` crate it replaced, the baseline of that choice.
//! `cargo bench --bench audit`; throughput is in events.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use twinward::audit::chain::ChainWriter;
use twinward::audit::{AccessDetail, AuditEvent, Detail};
use twinward::clock::Timestamp;
use twinward::storage::sqlite::SqliteStore;
use twinward::storage::Store;

/// An allowed request as the gateway records it.
fn access_event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new("access", "allow", Timestamp::from_unix_secs(1_795_000_000));
    e.actor = Some("sim-7".into());
    e.actor_pseudonym = Some("cYPHAKddsKx2Ux_4B5axZBuBmwwMgdN-yCM5C9m7i0Q".into());
    e.route = Some("plant-7".into());
    e.action = Some("read");
    e.policies = vec!["sim-runners-sandbox".into()].into();
    e.detail = Detail::Access(AccessDetail {
        method: "GET".into(),
        path: format!("/plant-7/sensors/{i}").into(),
        client_ip: "192.0.2.7".parse().unwrap(),
        twin: "plant-7".into(),
        purpose: None,
        token_id: Some("01a216c0-6b40-74d3-9a17-bae1cacfb354".into()),
        session: None,
        errors: Vec::new(),
        reason: None,
    });
    e
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/audit.db", dir.path().display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(SqliteStore::open(&url)).unwrap();
    let mut appender = store.audit_appender().unwrap().unwrap();
    let mut g = c.benchmark_group("audit");
    let mut n = 0u64;
    for size in [512u64, 128] {
        g.throughput(Throughput::Elements(size));
        g.bench_function(format!("append_{size}_events"), |b| {
            b.iter_batched(
                || {
                    n += size;
                    (n..n + size).map(access_event).collect::<Vec<_>>()
                },
                |events| appender.append(&events).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    let e = access_event(1);
    let mut chain = ChainWriter::new();
    g.bench_function("chain_hash_one_event", |b| {
        b.iter(|| black_box(chain.link(black_box(&e)).hash))
    });
    g.finish();

    // What the chain hashes per event: the previous hash, the seq and the event's text.
    let chained = {
        let linked = ChainWriter::new().link(&e).text.to_owned();
        format!("{}\n1\n{linked}", "0".repeat(64)).into_bytes()
    };
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(chained.len() as u64));
    g.bench_function("aws_lc", |b| {
        b.iter(|| black_box(twinward::digest::sha256(black_box(&chained))))
    });
    g.bench_function("sha2_crate", |b| {
        use sha2::Digest;
        b.iter(|| black_box(sha2::Sha256::digest(black_box(&chained))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
