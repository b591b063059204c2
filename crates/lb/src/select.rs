//! Pure backend selection (no I/O, no locks, no allocation).
//!
//! * L4 `Default` hashes the 5-tuple (src ip, src port, dst ip, dst port,
//!   proto); `SourceIP` the 2-tuple (src ip, dst ip); `SourceIPProtocol` the
//!   3-tuple (src ip, dst ip, proto).
//! * L7 `Default` is per-request rotation: every HTTP request is its own flow
//!   and goes to the next healthy backend (round robin via a shared counter),
//!   independently of the client connection it arrived on. L7 `SourceIP` /
//!   `SourceIPProtocol` are sticky by the same hashes as L4.
//! * Hash modes use rendezvous (highest-random-weight) hashing over the
//!   members' keys, so when the healthy set changes only flows of the
//!   affected backend move.

use std::net::{IpAddr, SocketAddr};

use crate::config::{Layer, LoadDistribution};

/// IANA protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// Identifies a flow (a TCP connection, or for L7 the connection a request
/// arrived on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: u8,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fnv_ip(h: u64, ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => fnv(h, &v4.octets()),
        IpAddr::V6(v6) => fnv(h, &v6.octets()),
    }
}

/// splitmix64 finalizer: good avalanche for cheap inputs.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Stable 64-bit key for a pool member (hash of its id).
pub fn member_key(id: &str) -> u64 {
    mix(fnv(FNV_OFFSET, id.as_bytes()))
}

/// Hash of the tuple selected by `dist`.
pub fn flow_hash(key: &FlowKey, dist: LoadDistribution) -> u64 {
    let mut h = fnv_ip(FNV_OFFSET, key.src.ip());
    h = fnv_ip(h, key.dst.ip());
    match dist {
        LoadDistribution::Default => {
            h = fnv(h, &key.src.port().to_be_bytes());
            h = fnv(h, &key.dst.port().to_be_bytes());
            h = fnv(h, &[key.proto]);
        }
        LoadDistribution::SourceIp => {}
        LoadDistribution::SourceIpProtocol => h = fnv(h, &[key.proto]),
    }
    mix(h)
}

/// Picks the index of a backend among `n` candidates.
///
/// * `keys(i)` is the stable member key of candidate `i` (see [`member_key`]).
/// * `skip(i)` excludes candidates (e.g. ones already tried by a retry).
/// * `rotation` is a per-rule request counter, used by L7 `Default` only.
///
/// Returns `None` when every candidate is skipped or `n == 0`.
pub fn pick(
    n: usize,
    layer: Layer,
    dist: LoadDistribution,
    key: &FlowKey,
    rotation: u64,
    keys: impl Fn(usize) -> u64,
    skip: impl Fn(usize) -> bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    if layer == Layer::L7 && dist == LoadDistribution::Default {
        let start = (rotation % n as u64) as usize;
        return (0..n).map(|k| (start + k) % n).find(|&i| !skip(i));
    }
    let h = flow_hash(key, dist);
    let mut best: Option<(u64, usize)> = None;
    for i in 0..n {
        if skip(i) {
            continue;
        }
        let w = mix(h ^ keys(i));
        if best.is_none_or(|(bw, _)| w > bw) {
            best = Some((w, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: PROTO_TCP,
        }
    }

    fn ids(n: usize) -> Vec<u64> {
        (0..n).map(|i| member_key(&format!("vmss_{i}"))).collect()
    }

    fn pick_in(
        members: &[u64],
        layer: Layer,
        dist: LoadDistribution,
        k: &FlowKey,
        rot: u64,
    ) -> u64 {
        let i = pick(
            members.len(),
            layer,
            dist,
            k,
            rot,
            |i| members[i],
            |_| false,
        )
        .unwrap();
        members[i]
    }

    #[test]
    fn empty_and_all_skipped() {
        let k = key("10.0.0.1:1000", "10.1.0.1:80");
        for layer in [Layer::L4, Layer::L7] {
            for dist in [
                LoadDistribution::Default,
                LoadDistribution::SourceIp,
                LoadDistribution::SourceIpProtocol,
            ] {
                assert_eq!(pick(0, layer, dist, &k, 0, |_| 0, |_| false), None);
                assert_eq!(pick(3, layer, dist, &k, 0, |i| i as u64, |_| true), None);
            }
        }
    }

    #[test]
    fn l7_default_rotates_and_skips() {
        let k = key("10.0.0.1:1000", "10.1.0.1:80");
        let got: Vec<usize> = (0..7)
            .map(|r| {
                pick(
                    3,
                    Layer::L7,
                    LoadDistribution::Default,
                    &k,
                    r,
                    |i| i as u64,
                    |_| false,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
        let got: Vec<usize> = (0..4)
            .map(|r| {
                pick(
                    3,
                    Layer::L7,
                    LoadDistribution::Default,
                    &k,
                    r,
                    |i| i as u64,
                    |i| i == 1,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(got, vec![0, 2, 2, 0]);
    }

    /// Which tuple members influence the choice, per mode (table).
    #[test]
    fn tuple_sensitivity_table() {
        use LoadDistribution::*;
        let members = ids(16);
        // (dist, changes src port matter?, changes dst port matter?, proto matters?)
        let table = [
            (Default, true, true, true),
            (SourceIp, false, false, false),
            (SourceIpProtocol, false, false, true),
        ];
        for (dist, src_port, dst_port, proto) in table {
            for layer in [Layer::L4, Layer::L7] {
                if layer == Layer::L7 && dist == Default {
                    continue;
                }
                let mut moved_src = false;
                let mut moved_dst = false;
                let mut moved_proto = false;
                for c in 0..200u16 {
                    let base = key(
                        &format!("10.0.{}.{}:{}", c / 250, c % 250 + 1, 1000 + c),
                        "10.1.0.1:80",
                    );
                    let b = pick_in(&members, layer, dist, &base, 0);
                    let mut k2 = base;
                    k2.src.set_port(base.src.port() + 1);
                    moved_src |= pick_in(&members, layer, dist, &k2, 0) != b;
                    let mut k3 = base;
                    k3.dst.set_port(81);
                    moved_dst |= pick_in(&members, layer, dist, &k3, 0) != b;
                    let mut k4 = base;
                    k4.proto = 17;
                    moved_proto |= pick_in(&members, layer, dist, &k4, 0) != b;
                    // Same key is always the same backend (stickiness), whatever the rotation.
                    assert_eq!(pick_in(&members, layer, dist, &base, c as u64), b);
                }
                assert_eq!(moved_src, src_port, "{dist:?} src port");
                assert_eq!(moved_dst, dst_port, "{dist:?} dst port");
                assert_eq!(moved_proto, proto, "{dist:?} proto");
            }
        }
    }

    #[test]
    fn distribution_is_even() {
        for (dist, n) in [
            (LoadDistribution::Default, 3usize),
            (LoadDistribution::SourceIp, 4),
            (LoadDistribution::SourceIpProtocol, 5),
        ] {
            let members = ids(n);
            let mut counts = vec![0u32; n];
            let flows = 30_000u32;
            for f in 0..flows {
                let k = key(
                    &format!(
                        "10.{}.{}.{}:{}",
                        (f >> 16) & 255,
                        (f >> 8) & 255,
                        f & 255,
                        1024 + (f % 50_000)
                    ),
                    "10.1.0.1:80",
                );
                let i = pick(n, Layer::L4, dist, &k, 0, |i| members[i], |_| false).unwrap();
                counts[i] += 1;
            }
            let expected = flows / n as u32;
            for c in &counts {
                let dev = (*c as f64 - expected as f64).abs() / expected as f64;
                assert!(dev < 0.05, "{dist:?}: {counts:?} not even");
            }
        }
    }

    #[test]
    fn minimal_disruption_when_a_member_leaves() {
        let members = ids(4);
        let without: Vec<u64> = members
            .iter()
            .copied()
            .filter(|m| *m != members[2])
            .collect();
        for f in 0..2000u32 {
            let k = key(&format!("10.2.{}.{}:5000", f / 250, f % 250), "10.1.0.1:80");
            let before = pick_in(&members, Layer::L4, LoadDistribution::SourceIp, &k, 0);
            let after = pick_in(&without, Layer::L4, LoadDistribution::SourceIp, &k, 0);
            if before != members[2] {
                assert_eq!(before, after, "flows of remaining members must not move");
            }
        }
        // Skipping by index is equivalent to removing.
        for f in 0..500u32 {
            let k = key(&format!("10.3.{}.{}:5000", f / 250, f % 250), "10.1.0.1:80");
            let i = pick(
                4,
                Layer::L4,
                LoadDistribution::Default,
                &k,
                0,
                |i| members[i],
                |i| i == 2,
            )
            .unwrap();
            assert_eq!(
                members[i],
                pick_in(&without, Layer::L4, LoadDistribution::Default, &k, 0)
            );
        }
    }
}
