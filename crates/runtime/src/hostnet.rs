//! Network namespaces on the instance bridge (instances and bakes) and the host firewall that
//! keeps them off the host.
//!
//! Every instance and every networked bake lives in its own network namespace, joined to the
//! bridge of its [`NetworkSpec`] by a veth pair. The bridge gets one nftables table
//! (`inet scaleset_<bridge>`), replaced atomically on every [`ensure_firewall`]:
//! * input: from the bridge to the host itself only replies to connections the host opened
//!   (LB probes, L4/L7 relays, health probes all go host → instance) and IPv6 neighbour
//!   discovery; everything else is dropped, so nothing on the bridge reaches the daemon's
//!   API, the host's loopback services or any other host socket, whatever it listens on;
//! * forward: traffic leaving the bridge is routed (outbound), traffic routed *into* the
//!   bridge only as replies (no one can route to instances past the load balancer);
//! * postrouting: the bridge subnet is masqueraded behind the host's address on the way out;
//! * bridge forward: a bake's port exchanges frames with no other port of the bridge (a bake
//!   reaches the outside through the host's NAT, never an instance).
//!
//! `net.ipv4.ip_forward` is switched on for the NAT (a host-wide setting, as Docker does).

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::{link_exists, netns_exists, run, NetworkSpec, RuntimeError};

/// A network namespace and the two ends of the veth pair joining it to a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsLink {
    /// `/run/netns/<netns>`.
    pub netns: String,
    /// The end on the bridge.
    pub veth_host: String,
    /// The other end, renamed to `eth0` inside the namespace.
    pub veth_guest: String,
}

impl NetnsLink {
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

/// Host offsets of the addresses bakes use on a bridge: .2 and .3, which Azure reserves in
/// every subnet and `plan::naming::allocate_ip` never gives to an instance.
pub const BAKE_SLOTS: [u32; 2] = [2, 3];

/// The namespace, veth names and address of bake slot `slot` (one of [`BAKE_SLOTS`]) on `net`.
/// Names derive from the bridge, so two homes never share them.
pub fn bake_link(net: &NetworkSpec, slot: u32) -> (NetnsLink, Ipv4Addr) {
    let h = hex::encode(Sha256::digest(net.bridge.as_bytes()));
    let h8 = &h[..8];
    (
        NetnsLink {
            netns: format!("ssbake-{h8}-{slot}"),
            veth_host: format!("bake{slot}h{h8}"),
            veth_guest: format!("bake{slot}g{h8}"),
        },
        net.subnet.host(slot),
    )
}

/// Create (idempotently) `link`'s namespace and veth pair, put the host end on the bridge and
/// give the namespace `ip` with a default route through the gateway. `ctx` names the machine or
/// bake in errors.
pub fn attach_netns(
    ctx: &str,
    link: &NetnsLink,
    ip: Ipv4Addr,
    net: &NetworkSpec,
) -> Result<(), RuntimeError> {
    let ns = link.netns.as_str();
    if !netns_exists(ns) {
        run(ctx, "ip", &["netns", "add", ns])?;
    }
    if !link_exists(&link.veth_host) {
        // A half-created pair might linger inside the netns: drop it.
        let _ = run(ctx, "ip", &["-n", ns, "link", "del", "eth0"]);
        let (h, g) = (link.veth_host.as_str(), link.veth_guest.as_str());
        run(
            ctx,
            "ip",
            &["link", "add", h, "type", "veth", "peer", "name", g],
        )?;
        run(ctx, "ip", &["link", "set", g, "netns", ns])?;
        run(ctx, "ip", &["-n", ns, "link", "set", g, "name", "eth0"])?;
    }
    run(
        ctx,
        "ip",
        &["link", "set", &link.veth_host, "master", &net.bridge],
    )?;
    run(ctx, "ip", &["link", "set", &link.veth_host, "up"])?;
    let addr = format!("{ip}/{}", net.subnet.prefix_len);
    // Replace any address left over from a previous spec.
    run(ctx, "ip", &["-n", ns, "addr", "flush", "dev", "eth0"])?;
    run(ctx, "ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
    // The MAC follows the IP: an address reused by a new instance keeps its MAC, so the
    // host's ARP cache is never stale (a stale entry blackholed new instances for ~30 s).
    let o = ip.octets();
    let mac = format!("02:5c:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    run(
        ctx,
        "ip",
        &["-n", ns, "link", "set", "eth0", "address", &mac],
    )?;
    let _ = run(
        ctx,
        "ip",
        &["neigh", "del", &ip.to_string(), "dev", &net.bridge],
    );
    run(ctx, "ip", &["-n", ns, "link", "set", "eth0", "up"])?;
    run(ctx, "ip", &["-n", ns, "link", "set", "lo", "up"])?;
    let gw = net.gateway.to_string();
    run(
        ctx,
        "ip",
        &["-n", ns, "route", "replace", "default", "via", &gw],
    )?;
    Ok(())
}

/// Remove `link`'s veth pair and namespace (idempotent).
pub fn detach_netns(ctx: &str, link: &NetnsLink) -> Result<(), RuntimeError> {
    if link_exists(&link.veth_host) {
        if let Err(e) = run(ctx, "ip", &["link", "del", &link.veth_host]) {
            if link_exists(&link.veth_host) {
                return Err(e);
            }
        }
    }
    if netns_exists(&link.netns) {
        if let Err(e) = run(ctx, "ip", &["netns", "del", &link.netns]) {
            if netns_exists(&link.netns) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Bridges whose firewall this process already installed (an `nft` run per machine start
/// would be wasted work; a teardown forgets the bridge).
static INSTALLED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn installed(bridge: &str) -> bool {
    let g = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref().is_some_and(|s| s.contains(bridge))
}

fn mark_installed(bridge: &str, on: bool) {
    let mut g = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    let s = g.get_or_insert_with(HashSet::new);
    if on {
        s.insert(bridge.to_string());
    } else {
        s.remove(bridge);
    }
}

/// The nftables table name of a bridge (nft identifiers: letters, digits, `_`).
pub fn firewall_table(bridge: &str) -> String {
    let clean: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("scaleset_{clean}")
}

/// The nft script that (re)creates the bridge's tables in one transaction.
pub fn firewall_script(net: &NetworkSpec) -> String {
    let t = firewall_table(&net.bridge);
    let br = &net.bridge;
    let subnet = format!("{}/{}", net.subnet.network(), net.subnet.prefix_len);
    let bakes: Vec<String> = BAKE_SLOTS
        .iter()
        .map(|&s| format!("\"{}\"", bake_link(net, s).0.veth_host))
        .collect();
    let bakes = bakes.join(", ");
    format!(
        "table inet {t} {{}}\ndelete table inet {t}\n\
table inet {t} {{\n\
  chain input {{\n\
    type filter hook input priority filter; policy accept;\n\
    iifname \"{br}\" ct state established,related accept\n\
    iifname \"{br}\" icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept\n\
    iifname \"{br}\" drop\n\
  }}\n\
  chain forward {{\n\
    type filter hook forward priority filter; policy accept;\n\
    oifname \"{br}\" ct state established,related accept\n\
    oifname \"{br}\" drop\n\
  }}\n\
  chain postrouting {{\n\
    type nat hook postrouting priority srcnat; policy accept;\n\
    ip saddr {subnet} oifname != \"{br}\" masquerade\n\
  }}\n\
}}\n\
table bridge {t} {{}}\ndelete table bridge {t}\n\
table bridge {t} {{\n\
  chain forward {{\n\
    type filter hook forward priority filter; policy accept;\n\
    iifname {{ {bakes} }} drop\n\
    oifname {{ {bakes} }} drop\n\
  }}\n\
}}\n"
    )
}

fn nft(ctx: &str, script: &str) -> Result<(), RuntimeError> {
    let cmd = "nft -f -";
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Io {
            machine: ctx.into(),
            what: format!("cannot run `{cmd}` (apt-get install nftables)"),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| RuntimeError::Io {
            machine: ctx.into(),
            what: format!("wait for `{cmd}`"),
            source,
        })?;
    if !out.status.success() {
        return Err(RuntimeError::Command {
            machine: ctx.into(),
            cmd: cmd.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Install (or replace) the bridge's firewall and NAT and turn on IPv4 forwarding. Idempotent;
/// done once per bridge per process.
pub fn ensure_firewall(net: &NetworkSpec) -> Result<(), RuntimeError> {
    if installed(&net.bridge) {
        return Ok(());
    }
    let ctx = format!("bridge {}", net.bridge);
    nft(&ctx, &firewall_script(net))?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| RuntimeError::Io {
        machine: ctx.clone(),
        what: "enable net.ipv4.ip_forward (NAT for the bridge)".into(),
        source,
    })?;
    mark_installed(&net.bridge, true);
    Ok(())
}

/// Remove the bridge's firewall tables (ip_forward is left as it is: other bridges may need it).
pub fn remove_firewall(net: &NetworkSpec) -> Result<(), RuntimeError> {
    mark_installed(&net.bridge, false);
    let t = firewall_table(&net.bridge);
    let script = format!(
        "table inet {t} {{}}\ndelete table inet {t}\ntable bridge {t} {{}}\ndelete table bridge {t}\n"
    );
    nft(&format!("bridge {}", net.bridge), &script)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkSpec {
        NetworkSpec {
            bridge: "ssbr1a2b".into(),
            subnet: "10.213.9.0/24".parse().unwrap(),
            gateway: "10.213.9.1".parse().unwrap(),
        }
    }

    #[test]
    fn bake_links_fit_and_differ() {
        let n = net();
        let (a, ipa) = bake_link(&n, 2);
        let (b, ipb) = bake_link(&n, 3);
        assert_eq!(ipa, Ipv4Addr::new(10, 213, 9, 2));
        assert_eq!(ipb, Ipv4Addr::new(10, 213, 9, 3));
        for s in [&a.veth_host, &a.veth_guest, &b.veth_host, &b.veth_guest] {
            assert!(s.len() <= 15, "{s}");
            crate::validate_ifname(s).unwrap();
        }
        assert_ne!(a, b);
        let other = NetworkSpec {
            bridge: "ssbr9999".into(),
            ..n
        };
        assert_ne!(bake_link(&other, 2).0.netns, a.netns);
    }

    #[test]
    fn firewall_script_names_the_bridge_subnet_and_bakes() {
        let n = net();
        let s = firewall_script(&n);
        assert!(s.contains("table inet scaleset_ssbr1a2b {"), "{s}");
        assert!(s.contains("ip saddr 10.213.9.0/24 oifname != \"ssbr1a2b\" masquerade"));
        // Replies first, then the drop of everything else from the bridge.
        let input = "iifname \"ssbr1a2b\" ct state established,related accept\n\
iifname \"ssbr1a2b\" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept\n\
iifname \"ssbr1a2b\" drop\n";
        assert!(s.contains(input), "{s}");
        assert!(s.contains(&format!("\"{}\"", bake_link(&n, 3).0.veth_host)));
        assert_eq!(firewall_table("br-x.1"), "scaleset_br_x_1");
    }
}
