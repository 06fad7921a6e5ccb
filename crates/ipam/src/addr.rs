//! Address arithmetic through u128.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::PoolSpec;

pub fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128_like(like: IpAddr, n: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// `base + n`, in `base`'s family (wrapping is the caller's concern).
pub fn ip_add(base: IpAddr, n: u128) -> IpAddr {
    from_u128_like(base, to_u128(base).wrapping_add(n))
}

/// `addr - base`.
pub fn ip_offset(base: IpAddr, addr: IpAddr) -> u128 {
    to_u128(addr).wrapping_sub(to_u128(base))
}

/// The blocks a pool is cut into: the pool itself when it is no larger than one block.
pub fn block_cidrs(pool: &PoolSpec, block_prefix: u8) -> Box<dyn Iterator<Item = IpNet>> {
    if pool.subnet.prefix_len() >= block_prefix {
        return Box::new(std::iter::once(pool.subnet));
    }
    match pool.subnet.subnets(block_prefix) {
        Ok(it) => Box::new(it),
        Err(_) => Box::new(std::iter::once(pool.subnet)),
    }
}
