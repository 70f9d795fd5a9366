//! Route matching: request host and normalized path to the one route that serves them.
//! Runs right after path normalization and before policy; a request that matches no route is
//! a 404 that names no route.

pub mod path;

use crate::config::RouteConfig;
use path::NormalizedPath;
use std::collections::HashMap;
use std::sync::Arc;

/// A route ready to serve: its config plus the index the gateway keys per-route state on.
#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub config: RouteConfig,
    /// The route's name and twin id, shared by every audit event on this route.
    pub name: std::sync::Arc<str>,
    pub twin: std::sync::Arc<str>,
    /// The path prefix, for the decisions the gateway makes on the route as a whole (the
    /// portal's list of twins, the scope of an exchanged credential).
    pub prefix: smol_str::SmolStr,
    /// The upstream's authority as the `Host` header sent to it (built once).
    pub upstream_host: Option<http::HeaderValue>,
}

/// Routes grouped by host, each group sorted longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    by_host: HashMap<String, Vec<Arc<Route>>>,
    any_host: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Self {
        let mut table = RouteTable::default();
        for (index, config) in configs.iter().enumerate() {
            let route = Arc::new(Route {
                index,
                upstream_host: http::HeaderValue::from_str(&config.upstream.authority).ok(),
                name: config.name.as_str().into(),
                twin: config.twin.as_str().into(),
                prefix: config.path_prefix.as_str().into(),
                config: config.clone(),
            });
            match &config.host {
                Some(h) => table
                    .by_host
                    .entry(h.clone())
                    .or_default()
                    .push(route.clone()),
                None => table.any_host.push(route.clone()),
            }
            table.routes.push(route);
        }
        let by_len = |a: &Arc<Route>, b: &Arc<Route>| {
            b.config.path_prefix.len().cmp(&a.config.path_prefix.len())
        };
        for list in table.by_host.values_mut() {
            list.sort_by(by_len);
        }
        table.any_host.sort_by(by_len);
        table
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.config.name == name)
    }

    /// The route for `host` (any case, port allowed) and a normalized path. Routes bound to the
    /// host win over host-less routes; among them the longest segment-wise prefix wins.
    pub fn find(&self, host: Option<&str>, path: &NormalizedPath) -> Option<&Arc<Route>> {
        let host = host.map(host_without_port);
        let hit = |list: &'_ [Arc<Route>]| -> Option<usize> {
            list.iter()
                .position(|r| path.starts_with_segment_prefix(&r.config.path_prefix))
        };
        if let Some(h) = host {
            let list = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&h.to_ascii_lowercase())
            } else {
                self.by_host.get(h)
            };
            if let Some(list) = list {
                if let Some(i) = hit(list) {
                    return list.get(i);
                }
            }
        }
        hit(&self.any_host).and_then(|i| self.any_host.get(i))
    }
}

/// `example.com:8443` → `example.com`; `[::1]:80` → `::1`.
/// The fully qualified form's trailing dot goes too (`example.com.:443` → `example.com`),
/// after the port, as nginx does: otherwise it would miss its host's routes.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    let host = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host.trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RouteConfig, Upstream};
    use std::time::Duration;

    fn route(name: &str, host: Option<&str>, prefix: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host: host.map(Into::into),
            path_prefix: prefix.into(),
            upstream: Upstream {
                authority: "127.0.0.1:1".into(),
                host: "127.0.0.1".into(),
                port: 1,
            },
            twin: name.into(),
            attributes: Default::default(),
            credential_as_bearer: false,
            websocket: true,
            http2: false,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            line: 1,
        }
    }

    fn find<'a>(t: &'a RouteTable, host: &str, p: &str) -> Option<&'a str> {
        let p = path::normalize(p).unwrap();
        t.find(Some(host), &p).map(|r| r.config.name.as_str())
    }

    #[test]
    fn longest_segment_prefix_wins_and_host_routes_first() {
        let t = RouteTable::new(&[
            route("root", None, "/"),
            route("p7", None, "/plant-7"),
            route("p7-hist", None, "/plant-7/history"),
            route("a-host", Some("twins.example.com"), "/plant-7"),
        ]);
        assert_eq!(find(&t, "other", "/plant-7/x"), Some("p7"));
        assert_eq!(find(&t, "other", "/plant-7"), Some("p7"));
        assert_eq!(find(&t, "other", "/plant-70"), Some("root"));
        assert_eq!(find(&t, "other", "/plant-7/history/1"), Some("p7-hist"));
        assert_eq!(
            find(&t, "Twins.Example.com:8443", "/plant-7/x"),
            Some("a-host")
        );
        assert_eq!(find(&t, "twins.example.com", "/elsewhere"), Some("root"));
        // The fully qualified name, with and without a port, is the same host.
        assert_eq!(find(&t, "twins.example.com.", "/plant-7/x"), Some("a-host"));
        assert_eq!(
            find(&t, "twins.example.com.:443", "/plant-7/x"),
            Some("a-host")
        );
    }

    #[test]
    fn host_without_port_forms() {
        for (given, want) in [
            ("example.com", "example.com"),
            ("example.com:8443", "example.com"),
            ("example.com.", "example.com"),
            ("example.com.:443", "example.com"),
            ("[::1]:80", "::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
        ] {
            assert_eq!(host_without_port(given), want, "{given}");
        }
    }

    #[test]
    fn no_route_is_none() {
        let t = RouteTable::new(&[route("p7", Some("a"), "/plant-7")]);
        assert_eq!(find(&t, "a", "/plant-8"), None);
        assert_eq!(find(&t, "b", "/plant-7"), None);
    }
}
