//! Prometheus metrics. Counters and histograms are plain atomics; the request path finds
//! its labelled series in a small per-worker cache instead of the families' locked maps.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

pub struct Metrics {
    /// Tells apart the caches of several instances in one process (tests).
    id: u64,
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub decisions: Family<Outcome, Counter>,
    pub decision_seconds: Histogram,
    pub upstream_seconds: Family<RouteLabel, Histogram>,
    pub reloads: Family<Outcome, Counter>,
    pub credentials_minted: Counter,
    pub store_errors: Counter,
    pub audit: AuditMetrics,
    pub connections: ConnectionMetrics,
}

/// Client connections and the gateway-wide limit on them.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    /// Client connections being served.
    pub open: Gauge,
    /// HTTP/2 streams in flight beyond the first of their connection, each holding a place
    /// under the limit as a connection does.
    pub streams: Gauge,
    /// Connections that found the limit reached and waited to be accepted.
    pub limited: Counter,
}

/// The audit writer's progress, shared with its thread.
#[derive(Clone, Debug, Default)]
pub struct AuditMetrics {
    /// Events handed to the writer and not yet committed.
    pub queued: Gauge,
    /// Events committed to the chain.
    pub appended: Counter,
    /// Times the queue passed a quarter full and the writer took a core at normal priority.
    pub takeovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("twinward");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "requests",
            "Requests by route and response status",
            requests.clone(),
        );
        let decisions = Family::<Outcome, Counter>::default();
        registry.register(
            "decisions",
            "Authorization decisions by outcome",
            decisions.clone(),
        );
        let decision_seconds = Histogram::new(exponential_buckets(1e-6, 2.0, 20));
        registry.register(
            "decision_duration_seconds",
            "Time to authenticate and decide a request",
            decision_seconds.clone(),
        );
        let upstream_seconds = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1e-4, 2.0, 20))
        });
        registry.register(
            "upstream_duration_seconds",
            "Time to the upstream's response headers",
            upstream_seconds.clone(),
        );
        let reloads = Family::<Outcome, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reload attempts by result",
            reloads.clone(),
        );
        let credentials_minted = Counter::default();
        registry.register(
            "credentials_minted",
            "Twin credentials signed",
            credentials_minted.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Storage operations that failed",
            store_errors.clone(),
        );
        let audit = AuditMetrics::default();
        registry.register(
            "audit_queued_events",
            "Audit events waiting for the writer (requests wait when the queue is full)",
            audit.queued.clone(),
        );
        registry.register(
            "audit_events",
            "Audit events committed to the chain",
            audit.appended.clone(),
        );
        registry.register(
            "audit_takeovers",
            "Times the audit queue passed a quarter full and the writer ran at normal priority (no idle CPU was left for it)",
            audit.takeovers.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "client_connections",
            "Client connections being served",
            connections.open.clone(),
        );
        registry.register(
            "client_http2_extra_streams",
            "HTTP/2 streams in flight beyond the first of their connection, each counted against server.max_connections as a connection is",
            connections.streams.clone(),
        );
        registry.register(
            "connection_limit_waits",
            "Connections that found server.max_connections reached and waited, and HTTP/2 streams refused for it",
            connections.limited.clone(),
        );
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Metrics {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            registry,
            requests,
            decisions,
            decision_seconds,
            upstream_seconds,
            reloads,
            credentials_minted,
            store_errors,
            audit,
            connections,
        }
    }

    /// Counts a response on `route` (its index and name) with `status`.
    pub fn count_request(&self, route_index: usize, route: &str, status: u16) {
        let key = (self.id, route_index, status);
        let counter = REQUESTS.with(|c| c.borrow().get(&key).cloned());
        let counter = counter.unwrap_or_else(|| {
            let c = self
                .requests
                .get_or_create(&RouteStatus {
                    route: route.to_owned(),
                    status,
                })
                .clone();
            REQUESTS.with(|m| bounded_insert(&mut m.borrow_mut(), key, c.clone()));
            c
        });
        counter.inc();
    }

    /// Counts a decision by its outcome.
    pub fn count_decision(&self, outcome: &'static str) {
        let key = (self.id, outcome);
        let counter = DECISIONS.with(|c| c.borrow().get(&key).cloned());
        let counter = counter.unwrap_or_else(|| {
            let c = self.decisions.get_or_create(&Outcome { outcome }).clone();
            DECISIONS.with(|m| bounded_insert(&mut m.borrow_mut(), key, c.clone()));
            c
        });
        counter.inc();
    }

    /// Records the time to an upstream's response headers on `route`.
    pub fn observe_upstream(&self, route_index: usize, route: &str, seconds: f64) {
        let key = (self.id, route_index);
        let h = UPSTREAM.with(|c| c.borrow().get(&key).cloned());
        let h = h.unwrap_or_else(|| {
            let h = self
                .upstream_seconds
                .get_or_create(&RouteLabel {
                    route: route.to_owned(),
                })
                .clone();
            UPSTREAM.with(|m| bounded_insert(&mut m.borrow_mut(), key, h.clone()));
            h
        });
        h.observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

type Cache<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

thread_local! {
    static REQUESTS: std::cell::RefCell<Cache<(u64, usize, u16), Counter>> = Default::default();
    static DECISIONS: std::cell::RefCell<Cache<(u64, &'static str), Counter>> = Default::default();
    static UPSTREAM: std::cell::RefCell<Cache<(u64, usize), Histogram>> = Default::default();
}

/// Series handles are cheap to look up again, so a full cache is simply emptied.
fn bounded_insert<K: std::hash::Hash + Eq, V>(m: &mut Cache<K, V>, k: K, v: V) {
    if m.len() >= 4096 {
        m.clear();
    }
    m.insert(k, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_series_count_into_their_own_instance() {
        let a = Metrics::new();
        let b = Metrics::new();
        for _ in 0..3 {
            a.count_request(0, "r", 200);
            a.count_decision("allow");
        }
        b.count_request(0, "r", 200);
        a.observe_upstream(0, "r", 0.01);
        let (ta, tb) = (a.encode(), b.encode());
        assert!(
            ta.contains(r#"twinward_requests_total{route="r",status="200"} 3"#),
            "{ta}"
        );
        assert!(
            ta.contains(r#"twinward_decisions_total{outcome="allow"} 3"#),
            "{ta}"
        );
        assert!(
            ta.contains(r#"twinward_upstream_duration_seconds_count{route="r"} 1"#),
            "{ta}"
        );
        assert!(
            tb.contains(r#"twinward_requests_total{route="r",status="200"} 1"#),
            "{tb}"
        );
    }
}
