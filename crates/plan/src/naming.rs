//! Names and addresses of instances.
use std::net::Ipv4Addr;

/// Azure's Uniform computer name: the prefix followed by the instance id in base 36, zero-padded
/// to six characters (`vmssdevops2` + id 10 → `vmssdevops200000a`).
pub fn computer_name(prefix: &str, instance_id: u32) -> String {
    let mut digits = Vec::new();
    let mut n = instance_id;
    loop {
        digits.push(std::char::from_digit(n % 36, 36).unwrap_or('0'));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    while digits.len() < 6 {
        digits.push('0');
    }
    let id: String = digits.into_iter().rev().collect();
    format!("{prefix}{id}")
}

/// The VM's resource name inside the scale set: `{vmss}_{instanceId}`.
pub fn vm_name(vmss: &str, instance_id: u32) -> String {
    format!("{vmss}_{instance_id}")
}

/// Picks the lowest free address in the subnet, skipping what Azure reserves in every subnet: the
/// network address, .1 (gateway, our bridge), .2 and .3 (Azure DNS), and the broadcast address.
pub fn allocate_ip(network: Ipv4Addr, prefix_len: u8, used: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    if prefix_len > 29 {
        return None;
    }
    let base = u32::from(network) & (u32::MAX << (32 - prefix_len));
    let size = 1u64 << (32 - prefix_len);
    (4..size - 1)
        .map(|off| Ipv4Addr::from(base + off as u32))
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(computer_name("vmssdevops2", 0), "vmssdevops2000000");
        assert_eq!(computer_name("vm", 10), "vm00000a");
        assert_eq!(computer_name("vm", 36), "vm000010");
        assert_eq!(computer_name("vm", u32::MAX), "vm1z141z3");
        assert_eq!(vm_name("vmssdevops2", 3), "vmssdevops2_3");
    }

    #[test]
    fn ips() {
        let net = Ipv4Addr::new(10, 213, 0, 0);
        assert_eq!(
            allocate_ip(net, 24, &[]),
            Some(Ipv4Addr::new(10, 213, 0, 4))
        );
        assert_eq!(
            allocate_ip(
                Ipv4Addr::new(10, 213, 0, 77),
                24,
                &[Ipv4Addr::new(10, 213, 0, 4)]
            ),
            Some(Ipv4Addr::new(10, 213, 0, 5))
        );
        let all: Vec<_> = (4..255).map(|i| Ipv4Addr::new(10, 213, 0, i)).collect();
        assert_eq!(allocate_ip(net, 24, &all), None);
        assert_eq!(
            allocate_ip(net, 29, &[]),
            Some(Ipv4Addr::new(10, 213, 0, 4))
        );
        assert_eq!(
            allocate_ip(
                net,
                29,
                &[
                    Ipv4Addr::new(10, 213, 0, 4),
                    Ipv4Addr::new(10, 213, 0, 5),
                    Ipv4Addr::new(10, 213, 0, 6)
                ]
            ),
            None
        );
        assert_eq!(allocate_ip(net, 30, &[]), None);
    }
}
