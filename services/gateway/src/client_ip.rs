//! Who the client is: the socket peer, or — only when the peer is a configured trusted proxy — the
//! rightmost address of `X-Forwarded-For` that is not itself a trusted proxy. A client cannot spoof
//! its address by sending `X-Forwarded-For` directly: from an untrusted peer the header is ignored.

use std::net::IpAddr;

use http::HeaderMap;

/// The client's address, as a request extension (rate limits, upstream `x-forwarded-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientIp(pub(crate) IpAddr);

/// The trusted proxies: IP addresses and CIDR blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.7`, `fd00::/8`.
    pub(crate) fn parse(entries: &[String]) -> Result<Self, String> {
        let mut blocks = Vec::with_capacity(entries.len());
        for entry in entries {
            let (addr, prefix) = match entry.split_once('/') {
                Some((addr, prefix)) => (addr, Some(prefix)),
                None => (entry.as_str(), None),
            };
            let addr: IpAddr =
                addr.trim().parse().map_err(|_| format!("{entry:?} is not an IP address or CIDR block"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("{entry:?}: the prefix length must be 0..={max}"))?,
            };
            blocks.push((addr, prefix));
        }
        Ok(Self(blocks))
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(block, prefix)| match (canonical(*block), ip) {
            (IpAddr::V4(block), IpAddr::V4(ip)) => {
                masked(u128::from(block.to_bits()), *prefix, 32)
                    == masked(u128::from(ip.to_bits()), *prefix, 32)
            }
            (IpAddr::V6(block), IpAddr::V6(ip)) => {
                masked(block.to_bits(), *prefix, 128) == masked(ip.to_bits(), *prefix, 128)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => false,
        })
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

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as IPv4, so one client has one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = u32::from(width - prefix);
    (bits >> shift) << shift
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

    #[test]
    fn mapped_addresses_and_blocks() {
        let proxies = trusted(&["127.0.0.1", "fd00::/8"]);
        assert!(proxies.contains(ip("::ffff:127.0.0.1")));
        assert!(proxies.contains(ip("fd12::1")));
        assert!(!proxies.contains(ip("fe80::1")));
        assert!(!proxies.contains(ip("127.0.0.2")));
        assert!(trusted(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".to_owned()]).is_err());
        assert!(TrustedProxies::parse(&["example.com".to_owned()]).is_err());
    }
}
