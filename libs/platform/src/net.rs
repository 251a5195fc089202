//! Address blocks whose forwarding headers are believed: the gateway's trusted proxies
//! (`edge.trusted_proxies`) and the services' trusted forwarders (`server.trusted_forwarders`).

use std::net::IpAddr;

/// IP addresses and CIDR blocks (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressBlocks(Vec<(IpAddr, u8)>);

impl AddressBlocks {
    /// Parses each entry.
    ///
    /// # Errors
    /// An entry that is not an address or a block, naming it.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
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

    /// Whether no block is listed (nobody is trusted).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is in one of the blocks (IPv4-mapped IPv6 counts as IPv4).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
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
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as IPv4, so one client has one address.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
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

    fn blocks(list: &[&str]) -> AddressBlocks {
        AddressBlocks::parse(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn mapped_addresses_and_blocks() {
        let list = blocks(&["127.0.0.1", "fd00::/8"]);
        assert!(list.contains(ip("::ffff:127.0.0.1")));
        assert!(list.contains(ip("fd12::1")));
        assert!(!list.contains(ip("fe80::1")));
        assert!(!list.contains(ip("127.0.0.2")));
        assert!(blocks(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
        assert!(blocks(&[]).is_empty());
        assert!(AddressBlocks::parse(&["10.0.0.0/33".to_owned()]).is_err());
        assert!(AddressBlocks::parse(&["example.com".to_owned()]).is_err());
    }
}
