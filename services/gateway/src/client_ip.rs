//! Who the client is: the socket peer, or — only when the peer is a configured trusted proxy — the
//! rightmost address of `X-Forwarded-For` that is not itself a trusted proxy. A client cannot spoof
//! its address by sending `X-Forwarded-For` directly: from an untrusted peer the header is ignored.

use std::net::IpAddr;

use bank_platform::net::{AddressBlocks, canonical};
use http::HeaderMap;

/// The client's address, as a request extension (rate limits, upstream `x-forwarded-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

/// The trusted proxies: IP addresses and CIDR blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(AddressBlocks);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, String> {
        AddressBlocks::parse(entries).map(Self)
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// Whether the peer's forwarding headers are believed.
    pub(crate) fn trusts(&self, peer: IpAddr) -> bool {
        !self.0.is_empty() && self.contains(peer)
    }

    /// The client's address for a request that arrived from `peer`.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Every X-Forwarded-For line, in order, as one list; walk it from the right.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: stop at the last address we could trust.
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[::1]:5678`, `::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|addr| canonical(addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in xff {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = trusted(&["10.0.0.0/8"]);
        assert_eq!(proxies.client_ip(ip("203.0.113.9"), &headers(&["1.1.1.1"])), ip("203.0.113.9"));
        let none = trusted(&[]);
        assert_eq!(none.client_ip(ip("10.0.0.1"), &headers(&["1.1.1.1"])), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_forwards_the_rightmost_untrusted_hop() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.7"]);
        // client spoofs 6.6.6.6; the real chain is client 198.51.100.4 -> 192.168.1.7 -> 10.1.2.3 (peer)
        let h = headers(&["6.6.6.6, 198.51.100.4", "192.168.1.7"]);
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &h), ip("198.51.100.4"));
        // No header: the proxy itself.
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"));
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &headers(&["nonsense"])), ip("10.1.2.3"));
        // Ports and brackets are fine.
        assert_eq!(proxies.client_ip(ip("10.1.2.3"), &headers(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
    }
}
