//! The bake's sandbox: its own network namespace on the instance bridge (outbound through the
//! host's NAT only), the capabilities it runs without, and the mount flags of its overlay.
//!
//! * Network: a networked bake takes one of the two bake slots of its home's bridge
//!   ([`runtime::BAKE_SLOTS`], addresses `.2`/`.3`, never given to instances), held by an
//!   `flock` for the whole bake, and runs in that slot's namespace. The bridge's firewall
//!   ([`runtime::hostnet`]) drops everything from the bridge to the host except replies, so the
//!   bake cannot reach the daemon's API, the host's loopback or any host socket; the bake's
//!   bridge port is cut off from the instances' ports. `127.0.0.1` inside the bake is the
//!   bake's own loopback. A `--no-network` bake gets `--private-network` (loopback only).
//! * Nothing of the host's file system is bound in except its `/etc/resolv.conf`, read-only
//!   (or resolved's upstream list when the host's resolver is on its loopback, which a bake
//!   cannot reach). LB admin sockets and everything else under `$SCALESET_HOME` are outside the
//!   bake's root.
//! * Capabilities: [`DROPPED_CAPS`] are removed from nspawn's default set; what apt, dpkg,
//!   useradd, chown/chmod and the systemctl shim need stays.
//! * The overlay is mounted `nosuid,nodev`: a device node or setuid file in the tree grants
//!   nothing through the bake's mount (the bake already runs as root; setuid files are kept in
//!   the captured layer, for instances, but only root can reach a layer on the host).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use runtime::{NetnsLink, NetworkSpec};

use crate::{Flock, ImageError, ImageStore};

/// Removed from systemd-nspawn's default capability set for bakes: raw and packet sockets,
/// network and interface configuration (the bake could otherwise take an instance's address
/// on the bridge), device nodes, mounts and other kernel-wide knobs no setup script needs.
pub const DROPPED_CAPS: &[&str] = &[
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_MKNOD",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_TTY_CONFIG",
    "CAP_LINUX_IMMUTABLE",
    "CAP_AUDIT_CONTROL",
    "CAP_IPC_OWNER",
    "CAP_LEASE",
    "CAP_NET_BROADCAST",
];

/// A bake's place on the bridge; the veth pair and namespace go (and the slot is free again)
/// on drop.
pub(crate) struct BakeNet {
    pub link: NetnsLink,
    pub net: NetworkSpec,
    _slot: Flock,
}

impl Drop for BakeNet {
    fn drop(&mut self) {
        if let Err(e) = runtime::detach_netns("bake", &self.link) {
            tracing::warn!("cleanup of bake network {} failed: {e}", self.link.netns);
        }
    }
}

impl ImageStore {
    /// `network.json` of the home this store belongs to (`<home>/images` → `<home>`).
    fn network_file(&self) -> PathBuf {
        self.root
            .parent()
            .unwrap_or(Path::new("/"))
            .join("network.json")
    }

    /// The instance network a networked bake joins.
    fn bake_network(&self, name: &str) -> Result<NetworkSpec, ImageError> {
        let path = self.network_file();
        match NetworkSpec::load(&path) {
            Ok(Some(net)) => Ok(net),
            Ok(None) => Err(ImageError::InvalidSpec {
                name: name.into(),
                msg: format!(
                    "a networked bake joins its home's instance network, but {} does not exist (start `scaleset serve` once, or bake with --no-network)",
                    path.display()
                ),
            }),
            Err(msg) => Err(ImageError::InvalidSpec {
                name: name.into(),
                msg,
            }),
        }
    }

    /// Take a free bake slot (waiting for one when both are busy) and set up its namespace.
    pub(crate) fn join_bake_network(&self, name: &str) -> Result<BakeNet, ImageError> {
        let net = self.bake_network(name)?;
        let neterr = |source| ImageError::Network {
            name: name.into(),
            source,
        };
        runtime::ensure_bridge(&net).map_err(neterr)?;
        let lock = |slot: u32| self.root.join(format!(".bakenet-{slot}.lock"));
        let mut taken = None;
        for slot in runtime::BAKE_SLOTS {
            if let Some(l) = Flock::try_create_exclusive(&lock(slot))? {
                taken = Some((slot, l));
                break;
            }
        }
        let (slot, flock) = match taken {
            Some(t) => t,
            None => {
                let slot = runtime::BAKE_SLOTS[0];
                (slot, Flock::exclusive(&lock(slot))?)
            }
        };
        let (link, ip) = runtime::bake_link(&net, slot);
        let ctx = format!("bake {name}");
        let bn = BakeNet {
            link,
            net,
            _slot: flock,
        };
        // A crashed bake may have left the slot's veth behind: start clean.
        runtime::detach_netns(&ctx, &bn.link).map_err(neterr)?;
        runtime::attach_netns(&ctx, &bn.link, ip, &bn.net).map_err(neterr)?;
        Ok(bn)
    }
}

/// Nameservers listed in resolv.conf text.
fn nameservers(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// nspawn's `--resolv-conf=` for a networked bake: the host's file when its nameservers are
/// reachable from another namespace, else resolved's upstream list (`bind-uplink`).
pub(crate) fn resolv_conf_mode(log: &mut dyn Write) -> &'static str {
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ns = nameservers(&host);
    if !ns.is_empty() && !ns.iter().any(|a| is_loopback(a)) {
        return "bind-host";
    }
    let uplink = Path::new("/run/systemd/resolve/resolv.conf");
    if fs::read_to_string(uplink).is_ok_and(|t| !nameservers(&t).is_empty()) {
        return "bind-uplink";
    }
    let _ = writeln!(
        log,
        "scaleset: warning: the host's /etc/resolv.conf names no nameserver a bake can reach ({ns:?}); name lookups in the bake may fail"
    );
    "bind-host"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_parsing() {
        let t = "# x\nnameserver 10.255.255.53\nnameserver 127.0.0.53\nsearch lan\n";
        assert_eq!(nameservers(t), ["10.255.255.53", "127.0.0.53"]);
        assert!(is_loopback("127.0.0.53") && is_loopback("::1"));
        assert!(!is_loopback("10.255.255.53") && !is_loopback("junk"));
    }
}
