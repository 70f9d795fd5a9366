//! The client's address and network zone. The socket peer is the client unless the peer is
//! a trusted proxy; only then are `X-Forwarded-For` / `Forwarded` read, right to left,
//! skipping further trusted hops.
//!
//! INVARIANT: a header from an untrusted peer never changes the client address.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct NetworkSignals {
    trusted: Vec<IpNet>,
    zones: Vec<(String, Vec<IpNet>)>,
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl NetworkSignals {
    pub fn new(trusted: Vec<IpNet>, zones: Vec<(String, Vec<IpNet>)>) -> Self {
        NetworkSignals { trusted, zones }
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The client address for a request from `peer` with these forwarding headers.
    pub fn client_ip(
        &self,
        peer: IpAddr,
        x_forwarded_for: Option<&str>,
        forwarded: Option<&str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        let hops: Vec<IpAddr> = match (forwarded, x_forwarded_for) {
            (Some(f), _) => parse_forwarded(f),
            (None, Some(x)) => x.split(',').filter_map(|h| parse_hop(h.trim())).collect(),
            (None, None) => Vec::new(),
        };
        let mut client = peer;
        for hop in hops.iter().rev() {
            client = canonical(*hop);
            if !self.is_trusted(client) {
                break;
            }
        }
        client
    }

    /// The first configured zone containing `ip`, else `"unknown"`.
    pub fn zone(&self, ip: IpAddr) -> &str {
        let ip = canonical(ip);
        self.zones
            .iter()
            .find(|(_, nets)| nets.iter().any(|n| n.contains(&ip)))
            .map_or("unknown", |(name, _)| name.as_str())
    }
}

/// `for=` values of an RFC 7239 `Forwarded` header, in order.
fn parse_forwarded(h: &str) -> Vec<IpAddr> {
    h.split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                if !k.trim().eq_ignore_ascii_case("for") {
                    return None;
                }
                parse_hop(v.trim().trim_matches('"'))
            })
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`, `::1`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals() -> NetworkSignals {
        NetworkSignals::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            vec![("plant".into(), vec!["192.168.20.0/24".parse().unwrap()])],
        )
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let s = signals();
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(s.client_ip(peer, Some("192.168.20.5"), None), peer);
        assert_eq!(s.client_ip(peer, None, Some("for=192.168.20.5")), peer);
    }

    #[test]
    fn trusted_proxies_are_skipped_right_to_left() {
        let s = signals();
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        // A client-supplied leftmost value is not believed past an untrusted hop.
        assert_eq!(
            s.client_ip(peer, Some("6.6.6.6, 192.168.20.5, 10.2.2.2"), None),
            "192.168.20.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.client_ip(peer, None, Some("for=\"[2001:db8::1]:4711\", for=10.3.3.3")),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(s.client_ip(peer, None, None), peer);
        assert_eq!(
            s.client_ip(
                "::ffff:10.1.1.1".parse().unwrap(),
                Some("192.168.20.7"),
                None
            ),
            "192.168.20.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn zones() {
        let s = signals();
        assert_eq!(s.zone("192.168.20.9".parse().unwrap()), "plant");
        assert_eq!(s.zone("8.8.8.8".parse().unwrap()), "unknown");
    }
}
