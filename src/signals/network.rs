//! The client's address and network zone. The socket peer is the client unless the peer is
//! a trusted proxy; only then is the forwarding header the proxies append
//! (`X-Forwarded-For`, or `Forwarded` when configured) read, right to left, skipping
//! further trusted hops.
//!
//! INVARIANT: a header from an untrusted peer never changes the client address, and a
//! trusted proxy's header that names no address where the walk needs one refuses the
//! request rather than leaving the proxy's own address (and zone) to the client.

use ipnet::IpNet;
use std::net::IpAddr;

/// The forwarding header the trusted proxies append to. Only that one can be walked: a
/// proxy passes any other forwarding header on as the client wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardingHeader {
    /// nginx `$proxy_add_x_forwarded_for`, Traefik, Caddy, HAProxy `forwardfor`, Envoy.
    #[default]
    XForwardedFor,
    /// RFC 7239.
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name in lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardingHeader::XForwardedFor => "x-forwarded-for",
            ForwardingHeader::Forwarded => "forwarded",
        }
    }

    /// The configured name, any case.
    pub fn parse(s: &str) -> Option<ForwardingHeader> {
        [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded]
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(s))
    }
}

/// A trusted proxy's forwarding header that does not attest a client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnattestedClient {
    #[error("{0} from a trusted proxy is not readable text")]
    Unreadable(&'static str),
    /// `unknown`, an obfuscated name, or no address at all where the walk reached it.
    #[error("{0} from a trusted proxy names no client address")]
    NoAddress(&'static str),
}

#[derive(Debug, Clone, Default)]
pub struct NetworkSignals {
    trusted: Vec<IpNet>,
    header: ForwardingHeader,
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
    pub fn new(
        trusted: Vec<IpNet>,
        header: ForwardingHeader,
        zones: Vec<(String, Vec<IpNet>)>,
    ) -> Self {
        NetworkSignals {
            trusted,
            header,
            zones,
        }
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The header the trusted proxies append to.
    pub fn header(&self) -> ForwardingHeader {
        self.header
    }

    /// The client address for a request from `peer` whose forwarding header (the
    /// configured one, every line joined) is `chain`.
    pub fn client_ip(&self, peer: IpAddr, chain: Option<&str>) -> Result<IpAddr, UnattestedClient> {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let Some(chain) = chain else {
            // The proxy speaking for itself (a health check, say).
            return Ok(peer);
        };
        let no_address = UnattestedClient::NoAddress(self.header.name());
        let mut client = peer;
        // Right to left: each hop was appended by the one before it in the walk, which is
        // trusted; the first untrusted hop is the client and whatever lies left of it is
        // the client's own writing, never read.
        for element in chain.rsplit(',') {
            let hop = match self.header {
                ForwardingHeader::XForwardedFor => parse_hop(element.trim()),
                ForwardingHeader::Forwarded => forwarded_for(element),
            };
            client = canonical(hop.ok_or(no_address)?);
            if !self.is_trusted(client) {
                return Ok(client);
            }
        }
        Ok(client)
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

/// The `for=` address of one element of an RFC 7239 `Forwarded` header; none when the
/// element has no `for`, or more than one (§4: each parameter at most once).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let mut values = element.split(';').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v)
    });
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_hop(value.trim().trim_matches('"'))
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

    fn signals(header: ForwardingHeader) -> NetworkSignals {
        NetworkSignals::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            header,
            vec![("plant".into(), vec!["192.168.20.0/24".parse().unwrap()])],
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let peer = ip("203.0.113.9");
        for h in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
            let s = signals(h);
            assert_eq!(s.client_ip(peer, Some("192.168.20.5")), Ok(peer));
            assert_eq!(s.client_ip(peer, Some("for=192.168.20.5")), Ok(peer));
            assert_eq!(s.client_ip(peer, Some("unknown")), Ok(peer));
        }
    }

    #[test]
    fn trusted_proxies_are_skipped_right_to_left() {
        let s = signals(ForwardingHeader::XForwardedFor);
        let peer = ip("10.1.1.1");
        // A client-supplied leftmost value is not believed past an untrusted hop, nor read.
        assert_eq!(
            s.client_ip(peer, Some("6.6.6.6, 192.168.20.5, 10.2.2.2")),
            Ok(ip("192.168.20.5"))
        );
        assert_eq!(
            s.client_ip(peer, Some("garbage, 192.168.20.5:4711")),
            Ok(ip("192.168.20.5"))
        );
        assert_eq!(s.client_ip(peer, None), Ok(peer));
        assert_eq!(
            s.client_ip(ip("::ffff:10.1.1.1"), Some("192.168.20.7")),
            Ok(ip("192.168.20.7"))
        );
        // Every hop trusted: the leftmost is the client.
        assert_eq!(
            s.client_ip(peer, Some("10.9.9.9, 10.2.2.2")),
            Ok(ip("10.9.9.9"))
        );

        let s = signals(ForwardingHeader::Forwarded);
        assert_eq!(
            s.client_ip(
                peer,
                Some("for=\"[2001:db8::1]:4711\", for=10.3.3.3;proto=https")
            ),
            Ok(ip("2001:db8::1"))
        );
    }

    #[test]
    fn only_the_configured_header_is_walked() {
        // The proxy appends X-Forwarded-For; a Forwarded header is the client's writing,
        // and the caller passes only the configured header's chain.
        assert_eq!(
            ForwardingHeader::default().name(),
            "x-forwarded-for",
            "the default is what nginx, Traefik and Caddy append"
        );
        assert_eq!(
            ForwardingHeader::parse("Forwarded"),
            Some(ForwardingHeader::Forwarded)
        );
        assert_eq!(ForwardingHeader::parse("x-real-ip"), None);
        // An X-Forwarded-For chain read as Forwarded names no `for=`: refused, not guessed.
        let s = signals(ForwardingHeader::Forwarded);
        assert_eq!(
            s.client_ip(ip("10.1.1.1"), Some("192.168.20.5")),
            Err(UnattestedClient::NoAddress("forwarded"))
        );
    }

    #[test]
    fn a_hop_without_an_address_refuses_instead_of_handing_over_the_proxys_zone() {
        let peer = ip("10.1.1.1");
        let s = signals(ForwardingHeader::XForwardedFor);
        for chain in [
            "unknown",
            "192.168.20.5, unknown",
            "",
            "192.168.20.5, ",
            "x",
        ] {
            assert_eq!(
                s.client_ip(peer, Some(chain)),
                Err(UnattestedClient::NoAddress("x-forwarded-for")),
                "{chain:?}"
            );
        }
        let s = signals(ForwardingHeader::Forwarded);
        for chain in [
            "for=unknown",
            "for=_hidden",
            "for=192.168.20.5, for=unknown",
            "by=10.1.1.1;proto=https",
            "for=6.6.6.6;for=192.168.20.5",
            "x",
        ] {
            assert_eq!(
                s.client_ip(peer, Some(chain)),
                Err(UnattestedClient::NoAddress("forwarded")),
                "{chain:?}"
            );
        }
    }

    #[test]
    fn zones() {
        let s = signals(ForwardingHeader::XForwardedFor);
        assert_eq!(s.zone(ip("192.168.20.9")), "plant");
        assert_eq!(s.zone(ip("8.8.8.8")), "unknown");
    }
}
