//! Names and addresses derived from an attachment, so DEL and GC find what ADD made without
//! entering the pod or reading state.
use std::net::IpAddr;

/// FNV-1a, 64 bits: stable across releases (never change it: names on live hosts depend on it).
fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The 4 hex digits that mark a network's host-side links.
pub fn network_tag(network: &str) -> String {
    format!("{:04x}", fnv1a(network.as_bytes()) & 0xffff)
}

/// Host-side veth: `w` + network tag + 10 hex digits of (container, interface) = 15 bytes.
pub fn host_veth(network: &str, container_id: &str, ifname: &str) -> String {
    let h = fnv1a(format!("{container_id}:{ifname}").as_bytes()) & 0xff_ffff_ffff;
    format!("w{}{:010x}", network_tag(network), h)
}

/// The alias on the host veth: whose it is, for GC and for people reading `ip link`.
pub fn host_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("weft:{network}:{container_id}:{ifname}")
}

/// The pod's MAC: 0a:58 + its IPv4 address when it has one (a new owner of an address gets the
/// same MAC, so stale neighbour entries stay right), else derived from the attachment.
pub fn pod_mac(ipv4: Option<IpAddr>, network: &str, container_id: &str, ifname: &str) -> [u8; 6] {
    if let Some(IpAddr::V4(a)) = ipv4 {
        let o = a.octets();
        return [0x0a, 0x58, o[0], o[1], o[2], o[3]];
    }
    let h = fnv1a(format!("{network}:{container_id}:{ifname}").as_bytes()).to_be_bytes();
    [0x0a, 0x59, h[0], h[1], h[2], h[3]]
}

pub use weft_dataplane::mac_string;

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    (parts.len() == 6 && s.split(':').count() == 6)
        .then(|| [parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_fit_and_differ() {
        let a = host_veth("net", "c1", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(&format!("w{}", network_tag("net"))));
        assert_ne!(a, host_veth("net", "c1", "eth1"));
        assert_ne!(a, host_veth("net", "c2", "eth0"));
        assert_eq!(a, host_veth("net", "c1", "eth0"));
    }

    #[test]
    fn macs() {
        let m = pod_mac(Some("198.18.0.7".parse().unwrap()), "n", "c", "eth0");
        assert_eq!(mac_string(&m), "0a:58:c6:12:00:07");
        assert_eq!(parse_mac("0a:58:c6:12:00:07"), Some(m));
        assert_eq!(parse_mac("0a:58:c6:12:00"), None);
    }
}
