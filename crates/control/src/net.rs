//! Address ranges (where load balancer frontends may listen).
use std::net::IpAddr;

/// An address range, `10.0.0.0/8` or `::1/128` (a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> (u128, u8) {
            match a {
                IpAddr::V4(v) => (u32::from(v) as u128, 32),
                IpAddr::V6(v) => (u128::from(v), 128),
            }
        };
        let ((net, w), (x, w2)) = (bits(self.addr), bits(ip));
        if w != w2 {
            return false;
        }
        let shift = u32::from(w - self.prefix);
        let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
        net & mask == x & mask
    }

    /// Whether one of `ranges` contains `ip`.
    pub fn any_contains(ranges: &[Cidr], ip: IpAddr) -> bool {
        ranges.iter().any(|c| c.contains(ip))
    }

    /// `ranges` for messages: "127.0.0.0/8, ::1/128", or "none".
    pub fn describe_list(ranges: &[Cidr]) -> String {
        if ranges.is_empty() {
            return "none".into();
        }
        let v: Vec<String> = ranges.iter().map(Cidr::to_string).collect();
        v.join(", ")
    }

    /// A comma-separated list; empty items are ignored.
    pub fn parse_list(s: &str) -> Result<Vec<Cidr>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an address range (like 127.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
