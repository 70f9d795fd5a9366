//! Prometheus metrics. Counters and histograms are plain atomics; label sets are resolved
//! per route once, so the request path does no map lookups for them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub decisions: Family<Outcome, Counter>,
    pub decision_seconds: Histogram,
    pub upstream_seconds: Family<RouteLabel, Histogram>,
    pub reloads: Family<Outcome, Counter>,
    pub credentials_minted: Counter,
    pub store_errors: Counter,
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
        Metrics {
            registry,
            requests,
            decisions,
            decision_seconds,
            upstream_seconds,
            reloads,
            credentials_minted,
            store_errors,
        }
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
