//! runtime — booted instances ("machines") on one Linux host.
//!
//! Every machine is a `systemd-nspawn -b` container whose root is an overlayfs
//! (read-only image layers + a per-machine writable upper dir) and whose
//! network is a dedicated network namespace connected to a host bridge by a
//! veth pair. The nspawn process is started detached (own session, own log
//! file, pidfile) so it survives the death of the daemon that started it; a
//! later [`NspawnMachines`] value adopts it through the pidfile.
//!
//! State layout, per machine, under `RuntimeConfig::state_dir/<name>/`:
//! `spec.json` (the last [`MachineSpec`]), `upper/`, `work/`, `root/`
//! (overlay mount point), `pid` (`<pid> <starttime>`), `console.log`.
//!
//! The state dir is mode 0700 (machine roots hold setuid files). The bridge's
//! nftables firewall and NAT ([`hostnet`]) keep instances (and bakes, which
//! join the same bridge) from opening connections to the host, while the host
//! reaches them. [`durable`] is the one helper for durable file writes outside
//! SQLite (specs, pid files, image records, ...).
//!
//! The API is blocking; async callers should use `spawn_blocking`.
//!
//! Each machine's processes live in a cgroup of their own (`sys::cgroup`:
//! freezer, pids, cpu and memory on v1 hosts, one directory on v2), joined by
//! nspawn before it execs and capped by the spec's [`MachineSize`]. A machine
//! whose nspawn died (a `kill -9`, an OOM kill) may leave its container's init
//! and services running: everything left in the cgroup is killed before the
//! machine starts again, is reimaged or deleted, and by `kill`. The cgroup and
//! the host end of the veth pair are also what [`Machines::usage`] reads.
//!
//! Survival caveat: nspawn runs with `--keep-unit`, i.e. in the caller's
//! systemd unit. If the daemon itself runs as a systemd service, give it
//! `KillMode=process` (or machines die with a `systemctl stop` of the daemon).

use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod fake;
pub mod inspect;
mod nsexec;
pub use inspect::{Exec, ExecOutput, ExecStatus};
pub use nsexec::{exec_available, MAX_CONSOLE_TAIL};
/// Durable file writes (one implementation, in `sys`).
pub use sys::durable;
pub mod hostnet;
pub use hostnet::{attach_netns, bake_link, detach_netns, NetnsLink, BAKE_SLOTS};

/// Errors of this crate. Messages name the machine / command and include the
/// command's stderr; they do not repeat the wrapped source.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("preflight failed: {0}")]
    Preflight(String),
    #[error("machine {0:?} does not exist")]
    NotFound(String),
    #[error("invalid machine spec for {machine:?}: {msg}")]
    InvalidSpec { machine: String, msg: String },
    #[error("machine {machine:?}: `{cmd}` failed: {stderr}")]
    Command {
        machine: String,
        cmd: String,
        stderr: String,
    },
    #[error("machine {machine:?}: {what}")]
    Io {
        machine: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("machine {machine:?}: {msg}")]
    State { machine: String, msg: String },
}

fn io_err(machine: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let machine = machine.to_string();
    let what = what.into();
    move |source| RuntimeError::Io {
        machine,
        what,
        source,
    }
}

// ---------------------------------------------------------------------------
// Network types
// ---------------------------------------------------------------------------

/// Tiny IPv4 network type (`addr/prefix_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Net {
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 32).then_some(Ipv4Net { addr, prefix_len })
    }
    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len))
        }
    }
    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let m = self.mask() & other.mask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
    /// `network + n` (e.g. `.1` for the gateway).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()).wrapping_add(n))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected a.b.c.d/len"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let len: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
        Ipv4Net::new(addr, len).ok_or_else(|| format!("{s:?}: prefix length > 32"))
    }
}

/// A host bridge that instances attach to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Bridge interface name (≤ 15 chars).
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Address of the bridge itself (usually `.1`); default route of instances.
    pub gateway: Ipv4Addr,
}

impl NetworkSpec {
    /// The network of a home as `network.json` records it (`{"subnet", "bridge"}`, the
    /// gateway is the subnet's `.1`); `Ok(None)` when the file does not exist.
    pub fn load(path: &Path) -> Result<Option<NetworkSpec>, String> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let bad = |what: &str| format!("{}: {what}", path.display());
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let subnet: Ipv4Net = v["subnet"]
            .as_str()
            .ok_or_else(|| bad("no \"subnet\""))?
            .parse()
            .map_err(|e: String| bad(&e))?;
        let bridge = v["bridge"]
            .as_str()
            .ok_or_else(|| bad("no \"bridge\""))?
            .to_string();
        let net = NetworkSpec {
            bridge,
            gateway: subnet.host(1),
            subnet,
        };
        net.validate().map_err(|e| bad(&e))?;
        Ok(Some(net))
    }

    /// Write `network.json` (durably: instance addresses depend on it across restarts).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let v = serde_json::json!({"subnet": self.subnet.to_string(), "bridge": self.bridge});
        durable::atomic_write(path, v.to_string().as_bytes())
    }

    fn validate(&self) -> Result<(), String> {
        validate_ifname(&self.bridge)?;
        if !self.subnet.contains(self.gateway) {
            return Err(format!(
                "gateway {} is not inside subnet {}",
                self.gateway, self.subnet
            ));
        }
        Ok(())
    }
}

fn validate_ifname(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 15 {
        return Err(format!("interface name {n:?} must be 1..=15 characters"));
    }
    if !n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!("interface name {n:?} has invalid characters"));
    }
    Ok(())
}

/// Choose a /24 inside 10.213.0.0/16 that overlaps none of `host_routes`
/// (`(destination, prefix_len)`). Default routes (prefix 0) are ignored.
/// Prefers 10.213.7.0/24, then ascending third octet.
pub fn pick_subnet(host_routes: &[(Ipv4Addr, u8)]) -> Option<Ipv4Net> {
    let routes: Vec<Ipv4Net> = host_routes
        .iter()
        .filter(|(_, len)| *len > 0 && *len <= 32)
        .map(|&(a, len)| Ipv4Net {
            addr: a,
            prefix_len: len,
        })
        .collect();
    std::iter::once(7u8)
        .chain((0u8..=255).filter(|&o| o != 7))
        .map(|o| Ipv4Net {
            addr: Ipv4Addr::new(10, 213, o, 0),
            prefix_len: 24,
        })
        .find(|cand| !routes.iter().any(|r| r.overlaps(cand)))
}

/// IPv4 routes of the host, from `/proc/net/route` (all tables' main view).
pub fn host_routes() -> Result<Vec<(Ipv4Addr, u8)>, RuntimeError> {
    let text =
        fs::read_to_string("/proc/net/route").map_err(io_err("-", "read /proc/net/route"))?;
    Ok(parse_proc_net_route(&text))
}

/// Parse the text of `/proc/net/route` (hex, host byte order little-endian).
pub fn parse_proc_net_route(text: &str) -> Vec<(Ipv4Addr, u8)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let dst = u32::from_str_radix(f[1], 16).ok()?;
            let mask = u32::from_str_radix(f[7], 16).ok()?;
            Some((Ipv4Addr::from(dst.to_ne_bytes()), mask.count_ones() as u8))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Machine types
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// e.g. `$SCALESET_HOME/machines`.
    pub state_dir: PathBuf,
    /// Short tag used in netns / interface / machine names (so parallel
    /// runs don't clash). Only `[a-z0-9]` are used, at most 4 of them in
    /// interface names.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSpec {
    /// Unique name, e.g. `vmssdevops2_0` (interface names derive from a hash).
    pub name: String,
    /// e.g. `vmssdevops2000000`.
    pub hostname: String,
    /// Read-only lower dirs, top-most first (image layers, then base rootfs).
    pub layers: Vec<PathBuf>,
    pub ip: Ipv4Addr,
    pub network: NetworkSpec,
    /// Absolute in-guest path → content, written into the writable layer
    /// before boot (e.g. `/etc/scaleset/instance.env`).
    pub files: Vec<(PathBuf, String)>,
    /// CPU and memory caps (the VM size); none: uncapped.
    #[serde(default)]
    pub size: Option<MachineSize>,
}

/// A machine's share of the host: CPU time and memory, applied to its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSize {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Processes (and threads) one machine may have: systemd, journald, NGINX and an app server fit
/// many times over; a fork bomb inside stays inside.
pub const MACHINE_PIDS_MAX: u32 = 16384;

impl MachineSize {
    fn limits(size: Option<MachineSize>) -> sys::cgroup::Limits {
        sys::cgroup::Limits {
            pids_max: MACHINE_PIDS_MAX,
            cpu_millis: size.map(|s| s.vcpus.saturating_mul(1000)),
            memory_bytes: size.map(|s| s.memory_mib.saturating_mul(1024 * 1024)),
        }
    }
}

/// What a running machine uses, read from its cgroup and the host side of its veth pair.
/// Counters are cumulative (since the machine's cgroup was created, or its link); `None`
/// where the host does not account it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineUsage {
    pub cpu: Option<Duration>,
    /// Memory in use, without the inactive page cache.
    pub memory_bytes: Option<u64>,
    /// The machine's memory cap, or the host's memory when uncapped.
    pub memory_limit_bytes: Option<u64>,
    /// Bytes received by the instance (sent by the host's end of its veth).
    pub net_in_bytes: Option<u64>,
    /// Bytes sent by the instance.
    pub net_out_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    Running { pid: u32 },
    Stopped,
    Missing,
}

pub trait Machines: Send + Sync {
    /// Idempotent: bridge exists, has the gateway address, is up.
    fn ensure_network(&self, net: &NetworkSpec) -> Result<(), RuntimeError>;
    /// Dirs, overlay mount, netns + veth, files. Does not start. Idempotent.
    fn create(&self, spec: &MachineSpec) -> Result<(), RuntimeError>;
    /// Boot detached; returns the nspawn pid. Returns the existing pid if
    /// already running.
    fn start(&self, name: &str) -> Result<u32, RuntimeError>;
    /// SIGTERM (clean systemd shutdown), SIGKILL after `timeout`; then unmount the root and
    /// remove the netns (a stopped machine holds no mount or netns; `start` restores them).
    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Hard kill (crash simulation).
    fn kill(&self, name: &str) -> Result<(), RuntimeError>;
    /// Must be stopped: wipe the writable layer, remount with `spec.layers`.
    fn reimage(&self, spec: &MachineSpec) -> Result<(), RuntimeError>;
    /// Stop if needed, unmount, remove netns/veth and dirs. Idempotent.
    fn delete(&self, name: &str) -> Result<(), RuntimeError>;
    fn state(&self, name: &str) -> Result<MachineState, RuntimeError>;
    /// Machines present in the state dir.
    fn list(&self) -> Result<Vec<String>, RuntimeError>;
    /// What a running machine uses (metrics); `None` when it does not run.
    fn usage(&self, name: &str) -> Result<Option<MachineUsage>, RuntimeError>;
    /// Runs a command inside the running machine (all its namespaces, its cgroup, root of
    /// the instance), killed at `req.timeout`; see [`inspect`].
    fn exec(&self, name: &str, req: Exec) -> Result<ExecOutput, RuntimeError>;
    /// The last `max` bytes of the machine's console (boot diagnostics); empty before its
    /// first boot.
    fn console_tail(&self, name: &str, max: usize) -> Result<Vec<u8>, RuntimeError>;
}

// ---------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------

fn run(machine: &str, prog: &str, args: &[&str]) -> Result<String, RuntimeError> {
    let cmdline = format!("{prog} {}", args.join(" "));
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(machine, format!("cannot run `{cmdline}`")))?;
    if !out.status.success() {
        return Err(RuntimeError::Command {
            machine: machine.to_string(),
            cmd: cmdline,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A number in a sysfs/procfs file of one line.
fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The host's memory (`MemTotal`), what an uncapped machine may use.
fn host_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    kib.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(1024)
}

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Checks: root, `systemd-nspawn`, `ip`, overlayfs. One clear message.
pub fn preflight() -> Result<(), RuntimeError> {
    let mut problems = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        problems.push("must run as root".to_string());
    }
    let mut missing = Vec::new();
    if which("systemd-nspawn").is_none() {
        missing.push("systemd-container");
    }
    if which("ip").is_none() {
        missing.push("iproute2");
    }
    if which("nft").is_none() {
        missing.push("nftables");
    }
    if !missing.is_empty() {
        problems.push(format!(
            "missing tools: run `apt-get install {}`",
            missing.join(" ")
        ));
    }
    let has_overlay = fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.trim_end().ends_with("overlay")))
        .unwrap_or(false);
    if !has_overlay {
        // It may be a module that is loaded on first mount; try modprobe.
        let _ = Command::new("modprobe")
            .arg("overlay")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let ok = fs::read_to_string("/proc/filesystems")
            .map(|s| s.lines().any(|l| l.trim_end().ends_with("overlay")))
            .unwrap_or(false);
        if !ok {
            problems.push("kernel has no overlayfs support (`modprobe overlay` failed)".into());
        }
    }
    if problems.is_empty() {
        raise_inotify_limits();
        Ok(())
    } else {
        Err(RuntimeError::Preflight(problems.join("; ")))
    }
}

/// Each instance's systemd takes several inotify instances, all counted against root: Debian's
/// default of 128 per user stops new machines after a few dozen ("Failed to create control
/// group inotify object: Too many open files"). Raise the limits (never lower them), as
/// container hosts such as LXD document.
fn raise_inotify_limits() {
    for (knob, min) in [
        ("/proc/sys/fs/inotify/max_user_instances", 8192u64),
        ("/proc/sys/fs/inotify/max_user_watches", 524_288),
    ] {
        let cur = fs::read_to_string(knob)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        if cur.is_some_and(|c| c < min) {
            let _ = fs::write(knob, min.to_string());
        }
    }
}

/// Idempotent: the bridge exists, has the gateway address, is up, and has its firewall and
/// NAT ([`hostnet::ensure_firewall`]).
pub fn ensure_bridge(net: &NetworkSpec) -> Result<(), RuntimeError> {
    net.validate().map_err(|msg| RuntimeError::InvalidSpec {
        machine: "-".into(),
        msg,
    })?;
    let ctx = format!("bridge {}", net.bridge);
    if !link_exists(&net.bridge) {
        if let Err(e) = run(&ctx, "ip", &["link", "add", &net.bridge, "type", "bridge"]) {
            // Lost a race with a concurrent creator?
            if !link_exists(&net.bridge) {
                return Err(e);
            }
        }
    }
    let addr = format!("{}/{}", net.gateway, net.subnet.prefix_len);
    run(&ctx, "ip", &["addr", "replace", &addr, "dev", &net.bridge])?;
    run(&ctx, "ip", &["link", "set", &net.bridge, "up"])?;
    hostnet::ensure_firewall(net)
}

/// Remove the bridge (instances' veths are detached by the kernel) and its firewall.
pub fn teardown_network(net: &NetworkSpec) -> Result<(), RuntimeError> {
    if which("nft").is_some() {
        hostnet::remove_firewall(net)?;
    }
    if link_exists(&net.bridge) {
        let ctx = format!("bridge {}", net.bridge);
        if let Err(e) = run(&ctx, "ip", &["link", "del", &net.bridge]) {
            if link_exists(&net.bridge) {
                return Err(e);
            }
        }
    }
    Ok(())
}

use sys::mounts::is_mountpoint;

fn unmount(machine: &str, p: &Path) -> Result<(), RuntimeError> {
    for _ in 0..50 {
        if !is_mountpoint(p) {
            return Ok(());
        }
        match nix::mount::umount2(p, nix::mount::MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(100)),
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(RuntimeError::Io {
                    machine: machine.into(),
                    what: format!("umount {}", p.display()),
                    source: io::Error::from(e),
                })
            }
        }
    }
    // Still busy after 5 s: detach lazily so the dir can be removed.
    nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH).map_err(|e| RuntimeError::Io {
        machine: machine.into(),
        what: format!("umount -l {}", p.display()),
        source: io::Error::from(e),
    })
}

/// Host path for the in-guest path `rel` under `root`, resolving symlinks
/// of the parent directories inside `root` (an absolute link target is
/// re-rooted, `..` cannot climb above `root`). Missing parents are created
/// when `create`. The final component is not resolved.
pub fn resolve_in_root(root: &Path, rel: &Path, create: bool) -> io::Result<PathBuf> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    let comps: Vec<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    if last == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path ends in ..",
        ));
    }
    let mut queue: VecDeque<OsString> = parents.iter().cloned().collect();
    let mut cur = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            if depth > 0 {
                cur.pop();
                depth -= 1;
            }
            continue;
        }
        let next = cur.join(&c);
        match fs::symlink_metadata(&next) {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                let target = fs::read_link(&next)?;
                if target.is_absolute() {
                    cur = root.to_path_buf();
                    depth = 0;
                }
                let mut t: Vec<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                t.extend(queue.drain(..));
                queue = t.into();
            }
            Ok(md) if md.is_dir() => {
                cur = next;
                depth += 1;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a directory", next.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&next)?;
                cur = next;
                depth += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur.join(last))
}

fn random_hex16() -> String {
    let mut buf = [0u8; 16];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let h = Sha256::digest(format!("{t}-{}", std::process::id()));
        buf.copy_from_slice(&h[..16]);
    }
    hex::encode(buf)
}

use sys::proc::{children_of, cmdline as proc_cmdline, starttime as proc_starttime};

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

// ---------------------------------------------------------------------------
// NspawnMachines
// ---------------------------------------------------------------------------

/// Derived, length-safe names for one machine.
#[derive(Debug, Clone)]
struct Names {
    netns: String,
    veth_host: String,
    veth_guest: String,
    machine: String,
}

pub struct NspawnMachines {
    cfg: RuntimeConfig,
    short_prefix: String,
    /// Where machines' cgroups live (one folder per state dir, so test daemons don't collide).
    cgroups: sys::cgroup::Hierarchy,
}

/// Exclusive per-machine `flock`, released on drop.
type MachineLock = sys::flock::Flock;

/// Durable (see [`durable::atomic_write`]): a machine's spec must survive a host crash.
fn write_atomic(machine: &str, path: &Path, data: &[u8]) -> Result<(), RuntimeError> {
    durable::atomic_write(path, data).map_err(io_err(machine, format!("write {}", path.display())))
}

/// A console log over this size is cut to its last [`CONSOLE_LOG_KEEP`] bytes before a boot.
pub const CONSOLE_LOG_MAX: u64 = 8 << 20;
/// What is kept of a long console log.
pub const CONSOLE_LOG_KEEP: u64 = 1 << 20;

/// Keeps the console log (appended across boots) bounded: cut to its tail before a boot.
fn trim_console_log(machine: &str, path: &Path) -> Result<(), RuntimeError> {
    use std::io::{Seek, SeekFrom};
    let Ok(md) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if md.len() <= CONSOLE_LOG_MAX {
        return Ok(());
    }
    let mut f = fs::File::open(path).map_err(io_err(machine, "open the console log"))?;
    f.seek(SeekFrom::Start(md.len() - CONSOLE_LOG_KEEP))
        .map_err(io_err(machine, "seek the console log"))?;
    let mut tail = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(f, CONSOLE_LOG_KEEP), &mut tail)
        .map_err(io_err(machine, "read the console log"))?;
    write_atomic(machine, path, &tail)
}

/// The cgroup's `cgroup.procs` files, open for the child to join before exec.
fn open_procs(name: &str, cg: &sys::cgroup::Cgroup) -> Result<Vec<fs::File>, RuntimeError> {
    cg.procs_files()
        .iter()
        .map(|p| {
            fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(io_err(name, format!("open {}", p.display())))
        })
        .collect()
}

/// Make `dir` (created if missing) enterable by root only: machine roots hold setuid files and
/// device-less but still privileged trees that no other host user may reach.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

impl NspawnMachines {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let short_prefix: String = cfg
            .prefix
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .take(4)
            .collect();
        if short_prefix.is_empty() {
            return Err(RuntimeError::Preflight(format!(
                "runtime prefix {:?} must contain at least one [a-z0-9]",
                cfg.prefix
            )));
        }
        private_dir(&cfg.state_dir).map_err(io_err(
            "-",
            format!("create state dir {} (mode 0700)", cfg.state_dir.display()),
        ))?;
        let h = Sha256::digest(cfg.state_dir.as_os_str().as_encoded_bytes());
        let group = format!("scaleset-machines-{}", hex::encode(&h[..6]));
        let cgroups = sys::cgroup::Hierarchy::detect(&group).map_err(|e| {
            RuntimeError::Preflight(format!(
                "machines need cgroups of their own so that a crashed machine leaves nothing running: {e}"
            ))
        })?;
        Ok(NspawnMachines {
            cfg,
            short_prefix,
            cgroups,
        })
    }

    /// The cgroup of machine `name` (whether or not it exists).
    pub fn cgroup(&self, name: &str) -> sys::cgroup::Cgroup {
        self.cgroups.get(&self.names(name).machine)
    }

    /// Kills whatever is left in the machine's cgroup (its nspawn is gone or being killed).
    fn kill_leftovers(&self, name: &str) -> Result<(), RuntimeError> {
        let cg = self.cgroup(name);
        let left = cg.members();
        if !left.is_empty() {
            tracing::warn!(
                machine = name,
                processes = left.len(),
                "killing what the machine left running"
            );
        }
        cg.kill_all()
            .map_err(io_err(name, "kill the machine's leftover processes"))
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    fn names(&self, name: &str) -> Names {
        let h = hex::encode(Sha256::digest(format!("{}/{}", self.cfg.prefix, name)));
        let h8 = &h[..8];
        let p = &self.short_prefix;
        Names {
            netns: format!("{p}-{h8}"),
            veth_host: format!("{p}h{h8}"),
            veth_guest: format!("{p}g{h8}"),
            machine: format!("{p}-{h8}"),
        }
    }

    /// Serializes mutating operations on one machine (across processes).
    fn lock(&self, name: &str) -> Result<MachineLock, RuntimeError> {
        let dir = self.cfg.state_dir.join(".locks");
        fs::create_dir_all(&dir).map_err(io_err(name, format!("mkdir {}", dir.display())))?;
        let p = dir.join(format!("{name}.lock"));
        sys::flock::Flock::exclusive(&p).map_err(io_err(name, format!("flock {}", p.display())))
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.cfg.state_dir.join(name)
    }

    /// Overlay mount point (the machine's `/`), e.g. for inspection in tests.
    pub fn root_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("root")
    }

    /// Writable layer of the machine.
    pub fn upper_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("upper")
    }

    /// Console log of the machine (appended across boots).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }

    /// Network namespace name of the machine (`/run/netns/<ns>`).
    pub fn netns_name(&self, name: &str) -> String {
        self.names(name).netns
    }

    fn validate_name(name: &str) -> Result<(), RuntimeError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(())
        } else {
            Err(RuntimeError::InvalidSpec {
                machine: name.into(),
                msg: "name must be 1..=128 chars of [A-Za-z0-9_.-], not starting with '.'".into(),
            })
        }
    }

    fn validate_spec(spec: &MachineSpec) -> Result<(), RuntimeError> {
        Self::validate_name(&spec.name)?;
        let bad = |msg: String| RuntimeError::InvalidSpec {
            machine: spec.name.clone(),
            msg,
        };
        spec.network.validate().map_err(bad)?;
        if spec.layers.is_empty() {
            return Err(bad("no layers".into()));
        }
        for l in &spec.layers {
            if !l.is_absolute() || !l.is_dir() {
                return Err(bad(format!(
                    "layer {} is not an existing absolute directory",
                    l.display()
                )));
            }
            if l.to_string_lossy().contains([':', ',', '\n']) {
                return Err(bad(format!(
                    "layer path {} contains ':' or ','",
                    l.display()
                )));
            }
        }
        let h = &spec.hostname;
        if h.is_empty() || h.len() > 63 || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad(format!("hostname {h:?} is not a valid host name")));
        }
        if !spec.network.subnet.contains(spec.ip) || spec.ip == spec.network.gateway {
            return Err(bad(format!(
                "ip {} is not a free address of subnet {}",
                spec.ip, spec.network.subnet
            )));
        }
        for (p, _) in &spec.files {
            if !p.is_absolute()
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad(format!(
                    "file path {} must be absolute without '..'",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    fn load_spec(&self, name: &str) -> Result<MachineSpec, RuntimeError> {
        Self::validate_name(name)?;
        let p = self.dir(name).join("spec.json");
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(name.into()))
            }
            Err(e) => return Err(io_err(name, format!("read {}", p.display()))(e)),
        };
        serde_json::from_slice(&data).map_err(|e| RuntimeError::State {
            machine: name.into(),
            msg: format!("corrupt {}: {e}", p.display()),
        })
    }

    fn mount_overlay(&self, spec: &MachineSpec) -> Result<(), RuntimeError> {
        let dir = self.dir(&spec.name);
        let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        for d in [&upper, &work, &root] {
            fs::create_dir_all(d).map_err(io_err(&spec.name, format!("mkdir {}", d.display())))?;
        }
        if is_mountpoint(&root) {
            return Ok(());
        }
        let lower: Vec<String> = spec
            .layers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| RuntimeError::Io {
            machine: spec.name.clone(),
            what: format!("mount overlay on {} ({data})", root.display()),
            source: io::Error::from(e),
        })
    }

    fn link(&self, name: &str) -> NetnsLink {
        let n = self.names(name);
        NetnsLink {
            netns: n.netns,
            veth_host: n.veth_host,
            veth_guest: n.veth_guest,
        }
    }

    fn setup_netns(&self, spec: &MachineSpec) -> Result<(), RuntimeError> {
        attach_netns(&spec.name, &self.link(&spec.name), spec.ip, &spec.network)
    }

    fn teardown_netns(&self, name: &str) -> Result<(), RuntimeError> {
        detach_netns(name, &self.link(name))
    }

    /// A stopped machine holds nothing on the host: its overlay root is unmounted and its
    /// netns and veth removed (the upper layer stays; `start` mounts and links them again).
    fn release_host(&self, name: &str) -> Result<(), RuntimeError> {
        unmount(name, &self.root_path(name))?;
        self.teardown_netns(name)
    }

    /// Write hostname, machine-id and the spec's files through the overlay.
    fn write_files(&self, spec: &MachineSpec, fresh_machine_id: bool) -> Result<(), RuntimeError> {
        let root = self.root_path(&spec.name);
        let m = spec.name.as_str();
        let put = |rel: &Path, data: &[u8], mode: u32| -> Result<(), RuntimeError> {
            // Symlinks in the image are resolved inside the machine root
            // (chroot semantics), never on the host.
            let p = resolve_in_root(&root, rel, true).map_err(io_err(
                m,
                format!("resolve {} in {}", rel.display(), root.display()),
            ))?;
            if fs::symlink_metadata(&p).is_ok_and(|md| md.file_type().is_symlink()) {
                fs::remove_file(&p).map_err(io_err(m, format!("remove {}", p.display())))?;
            }
            fs::write(&p, data).map_err(io_err(m, format!("write {}", p.display())))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                .map_err(io_err(m, format!("chmod {}", p.display())))
        };
        put(
            Path::new("etc/hostname"),
            format!("{}\n", spec.hostname).as_bytes(),
            0o644,
        )?;
        let has_mid = resolve_in_root(&root, Path::new("etc/machine-id"), false)
            .ok()
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|md| md.is_file()))
            .and_then(|p| fs::read_to_string(p).ok())
            .is_some_and(|s| s.trim().len() == 32);
        if fresh_machine_id || !has_mid {
            put(
                Path::new("etc/machine-id"),
                format!("{}\n", random_hex16()).as_bytes(),
                0o444,
            )?;
        }
        put(
            Path::new("etc/hosts"),
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{h}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{h}\n",
                h = spec.hostname,
                ip = spec.ip
            )
            .as_bytes(),
            0o644,
        )?;
        for (p, content) in &spec.files {
            put(p, content.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    /// Reads the pidfile and checks that the pid is really our nspawn.
    fn running_pid(&self, name: &str) -> Option<u32> {
        let text = fs::read_to_string(self.dir(name).join("pid")).ok()?;
        let mut it = text.split_whitespace();
        let pid: u32 = it.next()?.parse().ok()?;
        let start: u64 = it.next()?.parse().ok()?;
        if proc_starttime(pid)? != start {
            return None;
        }
        let cmd = proc_cmdline(pid);
        let root = self.root_path(name).to_string_lossy().into_owned();
        let is_nspawn = cmd.first().is_some_and(|a| a.ends_with("systemd-nspawn"));
        (is_nspawn && cmd.contains(&root)).then_some(pid)
    }

    fn wait_gone(&self, name: &str, pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.running_pid(name) != Some(pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn hard_kill(&self, name: &str, pid: u32) {
        // The container's init is a child of nspawn (in its own pid
        // namespace); killing it kills the whole container even if nspawn
        // itself would not take it down.
        let mut victims = vec![pid];
        let mut i = 0;
        while i < victims.len() && victims.len() < 64 {
            let kids = children_of(victims[i]);
            victims.extend(kids);
            i += 1;
        }
        for v in victims.iter().rev() {
            signal(*v, nix::sys::signal::Signal::SIGKILL);
        }
        // Whatever escaped the process tree (reparented to the host's init) is still in the cgroup.
        if let Err(e) = self.kill_leftovers(name) {
            tracing::warn!(machine = name, error = %e, "cannot empty the machine's cgroup");
        }
        self.wait_gone(name, pid, Duration::from_secs(10));
        // Give the kernel a moment to tear down the pid namespace so the
        // overlay is not busy.
        for v in &victims {
            let deadline = Instant::now() + Duration::from_secs(5);
            while proc_starttime(*v).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Machines for NspawnMachines {
    fn ensure_network(&self, net: &NetworkSpec) -> Result<(), RuntimeError> {
        ensure_bridge(net)
    }

    fn create(&self, spec: &MachineSpec) -> Result<(), RuntimeError> {
        Self::validate_spec(spec)?;
        let _lock = self.lock(&spec.name)?;
        let dir = self.dir(&spec.name);
        let existed = dir.join("spec.json").exists();
        if existed {
            let old = self.load_spec(&spec.name)?;
            if old.layers != spec.layers && is_mountpoint(&self.root_path(&spec.name)) {
                return Err(RuntimeError::State {
                    machine: spec.name.clone(),
                    msg: "already exists with different layers; use reimage".into(),
                });
            }
        }
        fs::create_dir_all(&dir).map_err(io_err(&spec.name, format!("mkdir {}", dir.display())))?;
        write_atomic(
            &spec.name,
            &dir.join("spec.json"),
            &serde_json::to_vec_pretty(spec).map_err(|e| RuntimeError::State {
                machine: spec.name.clone(),
                msg: format!("serialize spec: {e}"),
            })?,
        )?;
        ensure_bridge(&spec.network)?;
        self.mount_overlay(spec)?;
        self.setup_netns(spec)?;
        self.write_files(spec, false)?;
        tracing::debug!(machine = %spec.name, "created");
        Ok(())
    }

    fn start(&self, name: &str) -> Result<u32, RuntimeError> {
        Self::validate_name(name)?;
        let _lock = self.lock(name)?;
        let spec = self.load_spec(name)?;
        if let Some(pid) = self.running_pid(name) {
            return Ok(pid);
        }
        // After a host reboot mounts / netns are gone: re-establish them.
        ensure_bridge(&spec.network)?;
        self.mount_overlay(&spec)?;
        self.setup_netns(&spec)?;
        self.write_files(&spec, false)?;

        let n = self.names(name);
        let root = self.root_path(name);
        let log_path = self.log_path(name);
        trim_console_log(name, &log_path)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(name, format!("open {}", log_path.display())))?;
        let log_offset = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let log2 = log
            .try_clone()
            .map_err(io_err(name, "dup console log fd"))?;
        let netns_path = format!("/run/netns/{}", n.netns);
        let mut cmd =
            Command::new(which("systemd-nspawn").unwrap_or_else(|| "systemd-nspawn".into()));
        cmd.arg("-D")
            .arg(&root)
            .args([
                "-b",
                "--register=no",
                "--keep-unit",
                // The container's console (systemd's boot and shutdown lines) goes to
                // console.log: the boot diagnostics. No input is read.
                "--console=read-only",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
                "--kill-signal=SIGRTMIN+3",
            ])
            .arg(format!("--machine={}", n.machine))
            .arg(format!("--hostname={}", spec.hostname))
            .arg(format!("--network-namespace-path={netns_path}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Don't let nspawn talk to the daemon's own service manager.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        // Empties a crashed run's leftovers, then caps the machine at its size.
        let cg = self
            .cgroups
            .create_with(&n.machine, &MachineSize::limits(spec.size))
            .map_err(io_err(name, "create the machine's cgroup"))?;
        let join = open_procs(name, &cg)?;
        // SAFETY: setsid and write(2) are async-signal-safe; the files were opened before fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(io::Error::from)?;
                for f in &join {
                    // "0": the writing process itself, before it execs nspawn.
                    if libc::write(std::os::fd::AsRawFd::as_raw_fd(f), b"0".as_ptr().cast(), 1) != 1
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io_err(name, "spawn systemd-nspawn"))?;
        let pid = child.id();
        // Reap it when it exits (while we live); after our death init does.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let start = proc_starttime(pid).ok_or_else(|| RuntimeError::State {
            machine: name.into(),
            msg: format!(
                "systemd-nspawn exited immediately; see {}",
                log_path.display()
            ),
        })?;
        write_atomic(
            name,
            &self.dir(name).join("pid"),
            format!("{pid} {start}\n").as_bytes(),
        )?;
        // Catch immediate failures (bad root, bad flags) with their reason.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(300) {
            if proc_starttime(pid) != Some(start) {
                let _ = fs::remove_file(self.dir(name).join("pid"));
                let text = fs::read(&log_path).unwrap_or_default();
                let since =
                    String::from_utf8_lossy(&text[log_offset.min(text.len())..]).into_owned();
                let lines: Vec<&str> = since.lines().collect();
                let tail = lines[lines.len().saturating_sub(8)..].join("\n");
                return Err(RuntimeError::Command {
                    machine: name.into(),
                    cmd: "systemd-nspawn -b".into(),
                    stderr: format!("exited right after start: {tail}"),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::info!(machine = name, pid, "started");
        Ok(pid)
    }

    fn stop(&self, name: &str, timeout: Duration) -> Result<(), RuntimeError> {
        Self::validate_name(name)?;
        let _lock = self.lock(name)?;
        if let Some(pid) = self.running_pid(name) {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            if !self.wait_gone(name, pid, timeout) {
                tracing::warn!(machine = name, pid, "did not stop in time; killing");
                self.hard_kill(name, pid);
            }
            let _ = fs::remove_file(self.dir(name).join("pid"));
        }
        self.kill_leftovers(name)?;
        self.release_host(name)
    }

    fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        Self::validate_name(name)?;
        let _lock = self.lock(name)?;
        if let Some(pid) = self.running_pid(name) {
            self.hard_kill(name, pid);
        }
        self.kill_leftovers(name)
    }

    fn reimage(&self, spec: &MachineSpec) -> Result<(), RuntimeError> {
        Self::validate_spec(spec)?;
        let _lock = self.lock(&spec.name)?;
        let _ = self.load_spec(&spec.name)?;
        if self.running_pid(&spec.name).is_some() {
            return Err(RuntimeError::State {
                machine: spec.name.clone(),
                msg: "must be stopped before reimage".into(),
            });
        }
        // A crashed machine's processes would keep the old root busy.
        self.kill_leftovers(&spec.name)?;
        let dir = self.dir(&spec.name);
        unmount(&spec.name, &self.root_path(&spec.name))?;
        for d in ["upper", "work"] {
            let p = dir.join(d);
            if p.exists() {
                fs::remove_dir_all(&p)
                    .map_err(io_err(&spec.name, format!("wipe {}", p.display())))?;
            }
        }
        let _ = fs::remove_file(dir.join("pid"));
        write_atomic(
            &spec.name,
            &dir.join("spec.json"),
            &serde_json::to_vec_pretty(spec).map_err(|e| RuntimeError::State {
                machine: spec.name.clone(),
                msg: format!("serialize spec: {e}"),
            })?,
        )?;
        ensure_bridge(&spec.network)?;
        self.mount_overlay(spec)?;
        self.setup_netns(spec)?;
        self.write_files(spec, true)?;
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), RuntimeError> {
        Self::validate_name(name)?;
        let _lock = self.lock(name)?;
        if let Some(pid) = self.running_pid(name) {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            if !self.wait_gone(name, pid, Duration::from_secs(10)) {
                self.hard_kill(name, pid);
            }
        }
        self.cgroup(name)
            .remove()
            .map_err(io_err(name, "remove the machine's cgroup"))?;
        let dir = self.dir(name);
        unmount(name, &self.root_path(name))?;
        self.teardown_netns(name)?;
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(name, format!("remove {}", dir.display())))?;
        }
        let _ = fs::remove_file(
            self.cfg
                .state_dir
                .join(".locks")
                .join(format!("{name}.lock")),
        );
        Ok(())
    }

    fn state(&self, name: &str) -> Result<MachineState, RuntimeError> {
        Self::validate_name(name)?;
        if !self.dir(name).join("spec.json").exists() {
            return Ok(MachineState::Missing);
        }
        Ok(match self.running_pid(name) {
            Some(pid) => MachineState::Running { pid },
            None => MachineState::Stopped,
        })
    }

    fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let rd = fs::read_dir(&self.cfg.state_dir).map_err(io_err(
            "-",
            format!("read {}", self.cfg.state_dir.display()),
        ))?;
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("spec.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        Ok(v)
    }

    fn usage(&self, name: &str) -> Result<Option<MachineUsage>, RuntimeError> {
        Self::validate_name(name)?;
        if self.running_pid(name).is_none() {
            return Ok(None);
        }
        let cg = self.cgroup(name);
        let stats = Path::new("/sys/class/net")
            .join(self.names(name).veth_host)
            .join("statistics");
        let host = host_memory();
        let limit = match (cg.memory_limit(), host) {
            (Some(l), Some(h)) => Some(l.min(h)),
            (l, h) => l.or(h),
        };
        Ok(Some(MachineUsage {
            cpu: cg.cpu_usage(),
            memory_bytes: cg.memory_current(),
            memory_limit_bytes: limit,
            // The host's end transmits what the instance receives.
            net_in_bytes: read_u64(&stats.join("tx_bytes")),
            net_out_bytes: read_u64(&stats.join("rx_bytes")),
        }))
    }

    fn exec(&self, name: &str, req: Exec) -> Result<ExecOutput, RuntimeError> {
        self.exec_in(name, req)
    }

    fn console_tail(&self, name: &str, max: usize) -> Result<Vec<u8>, RuntimeError> {
        self.console_tail_of(name, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn pick_subnet_table() {
        type Case = (Vec<(Ipv4Addr, u8)>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![], Some("10.213.7.0/24")),
            (vec![(ip("0.0.0.0"), 0)], Some("10.213.7.0/24")),
            (
                vec![(ip("0.0.0.0"), 0), (ip("192.0.2.0"), 24)],
                Some("10.213.7.0/24"),
            ),
            (vec![(ip("10.213.7.0"), 24)], Some("10.213.0.0/24")),
            (
                vec![(ip("10.213.7.0"), 24), (ip("10.213.0.0"), 23)],
                Some("10.213.2.0/24"),
            ),
            (vec![(ip("10.0.0.0"), 8)], None),
            (vec![(ip("10.213.0.0"), 16)], None),
            (vec![(ip("10.213.0.0"), 17)], Some("10.213.128.0/24")),
            (vec![(ip("10.213.7.5"), 32)], Some("10.213.0.0/24")),
        ];
        for (routes, want) in cases {
            let got = pick_subnet(&routes).map(|n| n.to_string());
            assert_eq!(got.as_deref(), want, "routes {routes:?}");
        }
    }

    #[test]
    fn parse_route_table() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
br0\t0007D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let r = parse_proc_net_route(text);
        assert_eq!(
            r,
            vec![
                (ip("0.0.0.0"), 0),
                (ip("192.0.2.0"), 24),
                (ip("10.213.7.0"), 16)
            ]
        );
    }

    #[test]
    fn ipv4net_basics() {
        let n: Ipv4Net = "10.213.7.0/24".parse().unwrap();
        assert!(n.contains(ip("10.213.7.200")));
        assert!(!n.contains(ip("10.213.8.1")));
        assert_eq!(n.host(1), ip("10.213.7.1"));
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("x/3".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn names_fit_interface_limit() {
        let m = NspawnMachines {
            cfg: RuntimeConfig {
                state_dir: "/nonexistent".into(),
                prefix: "Test-Run-1234567".into(),
            },
            short_prefix: "test".into(),
            cgroups: sys::cgroup::Hierarchy::V2("/nonexistent".into()),
        };
        let n = m.names("vmssdevops2_0-with-a-very-long-name-indeed");
        for s in [&n.veth_host, &n.veth_guest] {
            assert!(s.len() <= 15, "{s}");
            validate_ifname(s).unwrap();
        }
        assert_ne!(m.names("a").veth_host, m.names("b").veth_host);
    }

    #[test]
    fn resolve_in_root_stays_inside() {
        let d = std::env::temp_dir().join(format!("ss-rir-{}", random_hex16()));
        let root = d.join("root");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(d.join("outside")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/up")).unwrap();
        std::os::unix::fs::symlink(d.join("outside"), root.join("abs")).unwrap();
        let r = |p: &str| resolve_in_root(&root, Path::new(p), true).unwrap();
        assert_eq!(r("/lib/x.conf"), root.join("usr/lib/x.conf"));
        assert_eq!(r("usr/up/etc/f"), root.join("etc/f"));
        assert!(root.join("etc").is_dir());
        // An absolute link to a host path is re-rooted.
        let abs = d.join("outside").to_string_lossy().into_owned();
        assert_eq!(r("abs/f"), root.join(&abs[1..]).join("f"));
        assert_eq!(r("../../etc/g"), root.join("etc/g"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(sys::mounts::unescape("/a\\040b"), "/a b");
        assert_eq!(sys::mounts::unescape("/plain"), "/plain");
    }
}
