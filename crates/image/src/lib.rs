//! image — base root filesystems, image bakes and the image store.
//!
//! * A **base** (`debian:<suite>`) is a `debootstrap --variant=minbase` root
//!   filesystem with systemd, dbus, iproute2, ca-certificates and sudo,
//!   built once into `<base_cache>/debian-<suite>/rootfs` (temp dir +
//!   rename, serialized by an `flock`) and cached forever. Its identity is
//!   the random-salted id in `<base_cache>/debian-<suite>/id`.
//! * A **bake** follows Packer's builtin-template semantics: the package is
//!   copied to `/deployTemp/<package folder>` of an overlay (base lower,
//!   fresh upper), the script is run as root in a non-booted
//!   `systemd-nspawn --pipe`, the result is deprovisioned and the upper dir
//!   becomes a content-addressed, read-only layer.
//!
//! Bake environment (documented contract for setup scripts):
//! * `cd /deployTemp && <pkg>/<script> <args...>`, as root, `HOME=/root`,
//!   `DEBIAN_FRONTEND=noninteractive`.
//! * With `BakeSpec::network`: its own network namespace on the instance
//!   bridge of the store's home (`<home>/network.json`), outbound through the
//!   host's NAT only; the host (daemon, loopback, LB sockets) is unreachable
//!   (see `sandbox.rs`). The host's resolv.conf is bind-mounted read-only.
//!   Otherwise a private network namespace with only loopback.
//! * Without `CAP_NET_RAW`, `CAP_NET_ADMIN`, `CAP_MKNOD`, `CAP_SYS_ADMIN` and
//!   a few more ([`DROPPED_CAPS`]): no raw sockets, no device nodes.
//! * `systemctl`: a shim at `/usr/local/sbin/systemctl` forwards
//!   `enable|disable|mask|unmask|preset|is-enabled|...` to the real
//!   systemctl in offline mode (`SYSTEMD_OFFLINE=1`) and logs
//!   `skipped: no running systemd during bake` for
//!   `start|stop|restart|reload|status|daemon-reload|...` (exit 0).
//!   `enable --now` enables only. Package maintainer scripts cannot start
//!   services either (`/usr/sbin/policy-rc.d` returns 101 during the bake).
//! * `sudo` is installed in the base (root may sudo without a password);
//!   a drop-in keeps `PIP_BREAK_SYSTEM_PACKAGES`, `DEBIAN_FRONTEND`,
//!   `SYSTEMD_OFFLINE` and the host network variables ([`hostenv`]) across
//!   sudo. If a base has no sudo, a tiny shim that strips sudo's options and
//!   runs the command is used.
//! * `PIP_BREAK_SYSTEM_PACKAGES=1` so `pip install` works despite Debian's
//!   PEP 668 marker (system-wide installs are what an image bake wants).
//! * All shims / policy files are removed before capture.
//!
//! Store layout under `root`: `images/<name>.json`, `layers/<hex>/`
//! (overlayfs-form trees), `seals/<hex>.json` (written once a layer is
//! completely in the store: digest, files, bytes), `logs/<name>-<time>.log`,
//! `tmp/` (bakes, imports, exports in progress; each holds a `lock`),
//! `scratch/` (the empty lower dir of bakes on `scratch`), `.lock`,
//! `.bakenet-<slot>.lock` (the bake network slots).
//!
//! # Host safety
//! * The store root and the base cache are mode 0700 (narrowed on every use,
//!   also when an older version created them wider), like the runtime's
//!   `machines/`: no host user but root can reach a layer, a base or a
//!   machine root.
//! * Setuid files are kept in layers as baked or imported (instances need
//!   `sudo`, `su`, `mount`, ...). They are only ever executed inside
//!   containers: the daemon runs nothing from a layer, the 0700 directories
//!   keep other host users from executing them, and the bake's host-side
//!   overlay is mounted `nosuid,nodev`.
//! * No device nodes: imports refuse character and block devices, bakes run
//!   without `CAP_MKNOD`, a new debootstrap base loses debootstrap's `/dev`
//!   nodes (nspawn mounts its own `/dev`), exports skip device nodes. The one
//!   exception is overlayfs's whiteout (a 0/0 character device, which no
//!   driver backs).
//! * Imports refuse entries with `..` components or absolute paths, symlinks
//!   whose relative target climbs out of the image (absolute targets resolve
//!   inside the image's root and stay), hard links to anything but an earlier
//!   file of the same layer, and in the outer archive any symlink that leaves
//!   it; the error names the entry and nothing is stored.
//!
//! # Durability
//! Image records, seals and deletions are written with
//! [`runtime::durable`]; a layer tree and a new base are synced (`syncfs`)
//! before their rename into place, and the rename is synced before the image
//! naming them is recorded.
//!
//! # Bases (`BakeSpec::base`)
//! * `debian:<suite>` — the debootstrap base above (outside the store, in
//!   the base cache; its layer digest is `debian:<suite>@<base id>`).
//! * `scratch` — the empty base. A bake on it runs in an empty root: there
//!   is no `/bin/sh`, so the setup script is exec'd directly and must be a
//!   static executable or a `#!` script whose interpreter the package ships
//!   (`#!/deployTemp/<pkg>/busybox sh`); anything else is refused before
//!   the run with [`ImageError::InvalidSpec`] ("... must be a static
//!   executable ..."). No systemctl/sudo shims. The directories nspawn
//!   creates in a root that lacks them (`/usr`, `/proc`, `/dev`, ...) are
//!   removed again if empty.
//! * the name of an image in the store (imported or baked) — a layered
//!   bake: the new image's layers are its own layer + the parent's layers;
//!   the cache key includes the parent's chain id (sha256 over its layer
//!   digests), so a parent with other content means a new bake. The parent
//!   is verified ([`ImageStore::open_for_use`]) first. Deleting the parent
//!   keeps the layers a child uses.
//! * Anything else → [`ImageError::UnsupportedBase`].
//!
//! [`ImageStore::import`] registers an OCI image layout (dir or tarball,
//! plain or gzip; nested indexes; blob digests checked) or a `docker save`
//! tarball as an image; each OCI layer becomes a store layer with
//! whiteouts converted to overlayfs form (`.wh.x` → 0/0 char device `x`,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y`). zstd layers are refused.
//! [`ImageStore::export`] writes an OCI image layout tarball (whiteouts back
//! in OCI form, a debian base rootfs exported as the bottom layer).
//!
//! # Integrity
//! [`ImageStore::open_for_use`] is the call to make before handing an
//! image's layers to a machine: every store layer must be sealed and
//! re-hash to its digest (full re-hash: ~2 ms for a 80 kB layer, ~20 ms
//! for 8 MiB, measured in `tests/images.rs`), a debian base must still have
//! the id it was baked on; a mismatch is [`ImageError::Tampered`] naming
//! the layer path. It also makes each store layer read-only with a
//! read-only bind mount onto itself (chmod a-w would change the modes the
//! guest sees; `chattr +i` would make the guest's copies immutable). Those
//! mounts live until reboot (the next `open_for_use` re-creates them) or
//! until the layer is deleted; call [`ImageStore::unmount_layers`] before
//! `rm -rf` of a whole store. Plain [`ImageStore::get`] does no checks.
//!
//! # Failures
//! A failed bake registers nothing, removes its temp dir (overlay, partial
//! upper) and keeps the log: bad spec / unknown base / package symlinks
//! leaving the package → [`ImageError::InvalidSpec`] or
//! [`ImageError::UnsupportedBase`] before anything runs; non-zero script →
//! [`ImageError::ScriptFailed`]; a full file system under `tmp/` (ENOSPC
//! anywhere, or no free blocks left after the script — scripts without
//! `set -e` ignore failed writes) → [`ImageError::DiskFull`]. Existing
//! images and layers are never touched by a failed bake. [`ImageStore::gc`]
//! removes unreferenced layers and temp dirs of crashed bakes (whose
//! `lock` is free). `tmp/` may be another file system (capture copies).
//!
//! # Progress
//! [`ImageStore::bake_with_progress`] calls back with [`BakeEvent`]s:
//! `BaseReady`, `Copying`, `ScriptStarted`, `ScriptLine`* ,
//! `Deprovisioning`, `Capturing`, `Done` (a cache hit: `BaseReady`, `Done`).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod bake;
pub mod cache;
pub mod failures;
pub mod hostenv;
mod oci;
mod sandbox;
mod store;

pub use bake::BakeEvent;
pub use sandbox::DROPPED_CAPS;
pub use store::GcReport;

/// The empty base.
pub const SCRATCH: &str = "scratch";

/// Packages added to the minbase debootstrap.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "ca-certificates",
    "sudo",
];

/// `/etc/hosts` of a base (debootstrap creates none).
pub const BASE_HOSTS: &str =
    "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n";

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("preflight failed: {0}")]
    Preflight(String),
    #[error(
        "unknown base {0:?}: expected debian:<suite> (e.g. debian:bookworm), scratch, or the name of an image in the store"
    )]
    UnsupportedBase(String),
    #[error("image {0:?} not found")]
    NotFound(String),
    /// A layer failed its integrity check when the image was used.
    #[error("image {image:?}: layer {layer} is tampered or damaged: {msg}; refusing to use it (delete and re-bake/re-import the image)")]
    Tampered {
        image: String,
        layer: PathBuf,
        msg: String,
    },
    /// The bake's scratch space (`<store>/tmp`) filled up.
    #[error("bake of image {name:?}: no space left on the device of {path} during the bake; nothing registered, partial layer removed; log kept at {log}")]
    DiskFull {
        name: String,
        path: PathBuf,
        log: PathBuf,
    },
    #[error("import of {src}: {msg}")]
    Import { src: PathBuf, msg: String },
    #[error("invalid bake spec for image {name:?}: {msg}")]
    InvalidSpec { name: String, msg: String },
    #[error("`{cmd}` failed ({status}); see log {log}")]
    Command {
        cmd: String,
        status: String,
        log: String,
    },
    #[error("bake of image {name:?}: setup script exited with {status}; log kept at {log}")]
    ScriptFailed {
        name: String,
        status: String,
        log: PathBuf,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt image record {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// The bake's network namespace or the bridge/firewall it joins could not be set up.
    #[error("bake of image {name:?}: network setup failed")]
    Network {
        name: String,
        #[source]
        source: runtime::RuntimeError,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

/// A baked image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// `sha256:<hex>` of the image's top layer's canonical content (see
    /// [`tree_digest`]).
    pub digest: String,
    /// What the image was made from: `debian:bookworm`, `scratch`, the name
    /// of the parent image (layered bake) or `import:<file name>`.
    pub base: String,
    /// Top-most first, ending with the base rootfs: pass straight to
    /// `MachineSpec::layers` (overlay lowerdirs). An image on `scratch` may
    /// have a single layer.
    pub layers: Vec<PathBuf>,
    /// One per entry of `layers`: `sha256:<hex>` for a store layer,
    /// `debian:<suite>@<base id>` for a debootstrap base rootfs.
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// Identity of the whole stack: sha256 over `layer_digests`.
    #[serde(default)]
    pub id: String,
    /// RFC 3339 (UTC).
    pub created: String,
    /// Bake log (for a cache hit: the log of the bake that built the layer).
    pub log: PathBuf,
    /// Bake cache key (sha256 of base id, package digest, script, args,
    /// network flag).
    #[serde(default)]
    pub cache_key: String,
    /// Top-level commands of the setup script that failed although the bake succeeded (see
    /// [`failures`]): one entry per command, with the output before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How long its bake took, in milliseconds (a cache hit: the lookup); `None` for an import
    /// or an image baked before this was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeSpec {
    pub name: String,
    pub base: String,
    pub package_dir: PathBuf,
    /// Relative to `package_dir`, e.g. `setupscript.sh`.
    pub script: String,
    pub args: Vec<String>,
    pub network: bool,
    pub mirror: Option<String>,
    /// A networked bake gets the host's CA bundle and proxy settings ([`hostenv`]), never
    /// captured into the layer; `false` opts out.
    pub host_network: bool,
    /// Who shares a download cache (apt's cache and lists, pip's cache) across bakes, e.g. the hosted
    /// repository; `None`: no cache. Bakes of different scopes never see each other's cache
    /// (a bake is untrusted and pip does not verify cached wheels).
    pub cache: Option<String>,
}

/// Base cache dir: `$SCALESET_BASE_CACHE` if set, else `<home>/bases`.
pub fn default_base_cache(home: &Path) -> PathBuf {
    match std::env::var_os("SCALESET_BASE_CACHE") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => home.join("bases"),
    }
}

/// Checks what bakes need: root, `debootstrap`, `systemd-nspawn`.
pub fn preflight() -> Result<(), ImageError> {
    let mut problems = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        problems.push("must run as root".to_string());
    }
    let has = |p: &str| {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(p).is_file())
    };
    let missing: Vec<&str> = [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
    ]
    .iter()
    .filter(|(bin, _)| !has(bin))
    .map(|(_, pkg)| *pkg)
    .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "missing tools: run `apt-get install {}`",
            missing.join(" ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ImageError::Preflight(problems.join("; ")))
    }
}

pub struct ImageStore {
    root: PathBuf,
    base_cache: PathBuf,
    /// The most a scope's download cache keeps (bytes); trimmed after each bake.
    cache_cap: u64,
}

// ---------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------

/// RFC 3339 UTC timestamp for a unix time.
pub fn rfc3339(secs: u64) -> String {
    sys::clock::rfc3339(secs as i64)
}

fn now_secs() -> u64 {
    sys::clock::unix_now()
}

fn unique_suffix() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut salt = [0u8; 8];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut salt));
    format!("{}-{n}-{}", std::process::id(), hex::encode(salt))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Records and seals are written durably ([`runtime::durable::atomic_write`]): an image
/// reported baked or imported survives a host crash.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    runtime::durable::atomic_write(path, data).map_err(io_err(format!("write {}", path.display())))
}

/// `dir` (created if missing) with mode 0700, also when it already existed with a wider mode:
/// layers and bases hold setuid binaries, and only root may reach them on the host.
fn private_dir(dir: &Path) -> Result<(), ImageError> {
    runtime::private_dir(dir).map_err(io_err(format!("create {} with mode 0700", dir.display())))
}

use sys::mounts::mountpoints_under;

/// Unmount everything at or below `p` (lazy as a last resort).
fn unmount_under(p: &Path) {
    for mp in mountpoints_under(p) {
        let mut ok = false;
        for _ in 0..30 {
            match nix::mount::umount2(&mp, nix::mount::MntFlags::empty()) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(nix::errno::Errno::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(_) => break,
            }
        }
        if !ok {
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Remove a directory tree, never descending into mounts below it.
fn remove_tree(p: &Path) -> Result<(), ImageError> {
    let canon = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let p = canon.as_path();
    unmount_under(p);
    if !mountpoints_under(p).is_empty() {
        return Err(ImageError::Io {
            what: format!("refusing to remove {}: still has mounts", p.display()),
            source: io::Error::from(io::ErrorKind::ResourceBusy),
        });
    }
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", p.display()))(e)),
    }
}

/// Run `cmd`, streaming merged stdout+stderr to `sinks`.
fn run_streaming(mut cmd: Command, sinks: &mut [&mut dyn Write]) -> io::Result<ExitStatus> {
    let (mut reader, writer) = io::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    let mut child = cmd.spawn()?;
    drop(cmd); // closes our copies of the write end
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for s in sinks.iter_mut() {
                    let _ = s.write_all(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    for s in sinks.iter_mut() {
        let _ = s.flush();
    }
    child.wait()
}

fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe {
        libc::lgetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// sha256 over the canonical content of a tree: entries walked in sorted
/// order, each as path, type, mode, uid, gid and size + content hash
/// (files), target (symlinks), rdev (devices — overlay whiteouts are char
/// devices 0/0) or the overlay opaque flag (dirs). Returns `sha256:<hex>`.
pub fn tree_digest(root: &Path) -> Result<String, ImageError> {
    let mut h = Sha256::new();
    walk_digest(root, Path::new(""), &mut h)?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn walk_digest(root: &Path, rel: &Path, h: &mut Sha256) -> Result<(), ImageError> {
    let full = root.join(rel);
    let md = fs::symlink_metadata(&full).map_err(io_err(format!("stat {}", full.display())))?;
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_fifo() {
        'p'
    } else {
        's'
    };
    h.update(rel.as_os_str().as_bytes());
    h.update(
        format!(
            "\0{kind}\0{:o}\0{}\0{}\0",
            md.mode() & 0o7777,
            md.uid(),
            md.gid()
        )
        .as_bytes(),
    );
    match kind {
        'f' => {
            h.update(format!("{}\0", md.len()).as_bytes());
            let mut f =
                fs::File::open(&full).map_err(io_err(format!("open {}", full.display())))?;
            let mut fh = Sha256::new();
            io::copy(&mut f, &mut fh).map_err(io_err(format!("read {}", full.display())))?;
            h.update(fh.finalize());
        }
        'l' => {
            let t = fs::read_link(&full).map_err(io_err(format!("readlink {}", full.display())))?;
            h.update(t.as_os_str().as_bytes());
        }
        'c' | 'b' => h.update(format!("{}", md.rdev()).as_bytes()),
        'd' => {
            if let Some(v) = lgetxattr(&full, "trusted.overlay.opaque") {
                h.update(b"opaque=");
                h.update(&v);
            }
        }
        _ => {}
    }
    h.update(b"\n");
    if kind == 'd' {
        let mut names: Vec<_> = fs::read_dir(&full)
            .map_err(io_err(format!("read dir {}", full.display())))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            walk_digest(root, &rel.join(n), h)?;
        }
    }
    Ok(())
}

/// Recursive copy preserving modes and symlinks (owner: the caller, root).
fn copy_tree(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let md = fs::symlink_metadata(src).map_err(io_err(format!("stat {}", src.display())))?;
    let ft = md.file_type();
    if ft.is_dir() {
        fs::create_dir_all(dst).map_err(io_err(format!("mkdir {}", dst.display())))?;
        for e in fs::read_dir(src).map_err(io_err(format!("read dir {}", src.display())))? {
            let e = e.map_err(io_err(format!("read dir {}", src.display())))?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(io_err(format!("chmod {}", dst.display())))?;
    } else if ft.is_symlink() {
        let t = fs::read_link(src).map_err(io_err(format!("readlink {}", src.display())))?;
        std::os::unix::fs::symlink(&t, dst)
            .map_err(io_err(format!("symlink {}", dst.display())))?;
    } else if ft.is_file() {
        fs::copy(src, dst).map_err(io_err(format!("copy {}", src.display())))?;
    }
    // sockets / fifos / devices in a package are skipped.
    Ok(())
}

fn parse_base(base: &str) -> Result<&str, ImageError> {
    match base.split_once(':') {
        Some(("debian", suite))
            if !suite.is_empty() && suite.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Ok(suite)
        }
        _ => Err(ImageError::UnsupportedBase(base.to_string())),
    }
}

/// An exclusive lock file (`sys::flock`), with this crate's errors.
struct Flock(#[allow(dead_code)] sys::flock::Flock);

fn lock_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    io_err(format!("lock {}", path.display()))
}

impl Flock {
    fn exclusive(path: &Path) -> Result<Self, ImageError> {
        sys::flock::Flock::exclusive(path)
            .map(Flock)
            .map_err(lock_err(path))
    }

    /// Non-blocking attempt on an existing lock file: `Ok(None)` when held
    /// elsewhere, `Err` when the file does not exist.
    fn try_exclusive(path: &Path) -> Result<Option<Self>, ImageError> {
        Ok(sys::flock::Flock::try_exclusive(path)
            .map_err(lock_err(path))?
            .map(Flock))
    }

    /// Non-blocking attempt, creating the lock file if needed: `Ok(None)` when held elsewhere.
    fn try_create_exclusive(path: &Path) -> Result<Option<Self>, ImageError> {
        Ok(sys::flock::Flock::try_create_exclusive(path)
            .map_err(lock_err(path))?
            .map(Flock))
    }
}

/// Unmounts the bake overlay and removes the bake's temp dir on drop.
struct BakeDir {
    dir: PathBuf,
}

impl Drop for BakeDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.dir) {
            tracing::warn!("cleanup of bake dir failed: {e}");
        }
    }
}

const SYSTEMCTL_SHIM: &str = r#"#!/bin/sh
# scaleset bake shim: no systemd is running during an image bake.
verb=
for a in "$@"; do case "$a" in -*) ;; *) verb="$a"; break ;; esac; done
case "$verb" in
  enable|disable|reenable|mask|unmask|preset|preset-all|is-enabled|cat|list-unit-files|\
  set-default|get-default|revert|add-wants|add-requires|link|help|"")
    for a; do
      shift
      if [ "$a" = "--now" ]; then
        echo "scaleset-bake: systemctl --now: start/stop skipped: no running systemd during bake" >&2
        continue
      fi
      set -- "$@" "$a"
    done
    SYSTEMD_OFFLINE=1 exec /usr/bin/systemctl "$@" ;;
  *)
    echo "scaleset-bake: 'systemctl $*' skipped: no running systemd during bake" >&2
    exit 0 ;;
esac
"#;

const SUDO_SHIM: &str = r#"#!/bin/sh
# scaleset bake shim: the bake already runs as root; drop sudo's options.
while [ $# -gt 0 ]; do
  case "$1" in
    -u|-g|-C|-D|-h|-p|-r|-t|-T|-U) shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"#;

const POLICY_RC_D: &str = "#!/bin/sh\n# scaleset bake: no service starts during a bake\nexit 101\n";

/// Keeps the bake's variables across `sudo` (whose `env_reset` would drop them): scripts written
/// for a plain VM run `sudo pip3 install ...`, which needs `PIP_BREAK_SYSTEM_PACKAGES` and, over
/// an inspecting egress, the host's CA bundle and proxy settings ([`hostenv`]).
fn sudoers_dropin() -> String {
    let keep: Vec<&str> = [
        "PIP_BREAK_SYSTEM_PACKAGES",
        "DEBIAN_FRONTEND",
        "SYSTEMD_OFFLINE",
        // The download cache: without it `sudo pip3 install` caches into /root (captured).
        "PIP_CACHE_DIR",
    ]
    .into_iter()
    .chain(hostenv::script_variables())
    .collect();
    format!("Defaults env_keep += \"{}\"\n", keep.join(" "))
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>, base_cache: impl Into<PathBuf>) -> Self {
        ImageStore {
            root: root.into(),
            base_cache: base_cache.into(),
            cache_cap: cache::DEFAULT_CAP_BYTES,
        }
    }

    /// Sets the most each scope's download cache keeps.
    pub fn with_download_cache_cap(mut self, bytes: u64) -> Self {
        self.cache_cap = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn base_cache(&self) -> &Path {
        &self.base_cache
    }

    fn mkdirs(&self) -> Result<(), ImageError> {
        // The store root is the one gate: nothing below it is reachable by other host users.
        private_dir(&self.root)?;
        if self.base_cache.is_dir() {
            private_dir(&self.base_cache)?;
        }
        for d in ["images", "layers", "logs", "tmp", "seals", "scratch"] {
            let p = self.root.join(d);
            fs::create_dir_all(&p).map_err(io_err(format!("mkdir {}", p.display())))?;
        }
        Ok(())
    }

    /// Path of the cached base (may not exist yet).
    fn base_dir(&self, base: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .base_cache
            .join(format!("debian-{}", parse_base(base)?)))
    }

    /// Identity of a built base (changes when the base is rebuilt).
    pub fn base_id(&self, base: &str) -> Result<Option<String>, ImageError> {
        let p = self.base_dir(base)?.join("id");
        match fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("read {}", p.display()))(e)),
        }
    }

    /// Build (once) and return the base rootfs.
    pub fn ensure_base(
        &self,
        base: &str,
        mirror: Option<&str>,
        log: &mut dyn Write,
    ) -> Result<PathBuf, ImageError> {
        let suite = parse_base(base)?;
        let dir = self.base_dir(base)?;
        let rootfs = dir.join("rootfs");
        // Also narrows a cache created wider by an older scaleset.
        private_dir(&self.base_cache)?;
        if rootfs.is_dir() && dir.join("id").is_file() {
            return Ok(rootfs);
        }
        let _lock = Flock::exclusive(&self.base_cache.join(format!(".debian-{suite}.lock")))?;
        if rootfs.is_dir() && dir.join("id").is_file() {
            return Ok(rootfs);
        }
        // Leftovers of crashed builders (we hold the lock, so they are stale).
        let stale_prefix = format!(".tmp-debian-{suite}-");
        if let Ok(rd) = fs::read_dir(&self.base_cache) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&stale_prefix) {
                    remove_tree(&e.path())?;
                }
            }
        }
        let tmp = self
            .base_cache
            .join(format!("{stale_prefix}{}", unique_suffix()));
        let guard = BakeDir { dir: tmp.clone() };
        fs::create_dir_all(&tmp).map_err(io_err(format!("mkdir {}", tmp.display())))?;
        let mirror = mirror.unwrap_or(DEFAULT_MIRROR);
        let _ = writeln!(
            log,
            "scaleset: building base {base} (debootstrap from {mirror})"
        );
        let mut cmd = Command::new("debootstrap");
        cmd.arg("--variant=minbase")
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            .arg(suite)
            .arg(tmp.join("rootfs"))
            .arg(mirror);
        let status = run_streaming(cmd, &mut [log]).map_err(io_err(
            "cannot run debootstrap (apt-get install debootstrap)",
        ))?;
        if !status.success() {
            return Err(ImageError::Command {
                cmd: format!("debootstrap {suite}"),
                status: status.to_string(),
                log: "(streamed to caller)".into(),
            });
        }
        // Instances get a fresh machine-id; the base carries none.
        let mid = tmp.join("rootfs/etc/machine-id");
        fs::write(&mid, b"").map_err(io_err(format!("truncate {}", mid.display())))?;
        let hosts = tmp.join("rootfs/etc/hosts");
        if !hosts.exists() {
            fs::write(&hosts, BASE_HOSTS).map_err(io_err(format!("write {}", hosts.display())))?;
        }
        // debootstrap leaves /dev/{null,console,...}: nspawn mounts its own /dev in bakes and
        // machines, so a layer never needs device nodes (and none are kept on the host).
        remove_device_nodes(&tmp.join("rootfs/dev"))?;
        let id = hex::encode(Sha256::digest(format!(
            "{base}\0{}\0{mirror}\0{}",
            BASE_PACKAGES.join(","),
            unique_suffix()
        )));
        fs::write(tmp.join("id"), format!("{id}\n"))
            .map_err(io_err(format!("write {}", tmp.join("id").display())))?;
        // The rootfs and its id are on disk before the base is published under its name.
        runtime::durable::sync_tree(&tmp)
            .and_then(|()| runtime::durable::rename_durable(&tmp, &dir))
            .map_err(io_err(format!("rename base into {}", dir.display())))?;
        drop(guard);
        let _ = writeln!(log, "scaleset: base {base} ready at {}", rootfs.display());
        Ok(rootfs)
    }

    fn validate_bake(&self, spec: &BakeSpec) -> Result<(PathBuf, PathBuf, String), ImageError> {
        let bad = |msg: String| ImageError::InvalidSpec {
            name: spec.name.clone(),
            msg,
        };
        if !valid_name(&spec.name) {
            return Err(bad("name must be 1..=128 chars of [A-Za-z0-9_.-]".into()));
        }
        let pkg = fs::canonicalize(&spec.package_dir)
            .map_err(|e| bad(format!("package dir {}: {e}", spec.package_dir.display())))?;
        if !pkg.is_dir() {
            return Err(bad(format!("package {} is not a directory", pkg.display())));
        }
        let pkg_name = pkg
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| bad("package dir has no folder name".into()))?;
        let script_rel = Path::new(&spec.script);
        if spec.script.is_empty()
            || !script_rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(format!(
                "script {:?} must be a relative path inside the package",
                spec.script
            )));
        }
        let script = fs::canonicalize(pkg.join(script_rel))
            .map_err(|e| bad(format!("script {:?}: {e}", spec.script)))?;
        if !script.starts_with(&pkg) || !script.is_file() {
            return Err(bad(format!(
                "script {:?} is not a file inside the package",
                spec.script
            )));
        }
        if spec.args.iter().any(|a| a.contains('\0')) {
            return Err(bad("arguments may not contain NUL".into()));
        }
        if spec.name == SCRATCH {
            return Err(bad(format!("{SCRATCH:?} is reserved for the empty base")));
        }
        check_package_links(&pkg, Path::new("")).map_err(bad)?;
        Ok((pkg, script, pkg_name))
    }
}

/// Remove the character and block devices directly in `dev` (a fresh debootstrap's `/dev`).
fn remove_device_nodes(dev: &Path) -> Result<(), ImageError> {
    let Ok(rd) = fs::read_dir(dev) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_char_device() || ft.is_block_device() {
            fs::remove_file(e.path()).map_err(io_err(format!("remove {}", e.path().display())))?;
        }
    }
    Ok(())
}

/// Refuse symlinks in the package whose target is absolute or climbs out
/// of the package (they would resolve against the image, not the package).
fn check_package_links(pkg: &Path, rel: &Path) -> Result<(), String> {
    let full = pkg.join(rel);
    let rd = fs::read_dir(&full).map_err(|e| format!("read {}: {e}", full.display()))?;
    for e in rd.flatten() {
        let r = rel.join(e.file_name());
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            check_package_links(pkg, &r)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(e.path()).map_err(|e| format!("readlink: {e}"))?;
            let mut depth: i64 = r.components().count() as i64 - 1;
            let mut escapes = t.is_absolute();
            for c in t.components() {
                match c {
                    Component::ParentDir => depth -= 1,
                    Component::Normal(_) => depth += 1,
                    _ => {}
                }
                if depth < 0 {
                    escapes = true;
                }
            }
            if escapes {
                return Err(format!(
                    "package entry {} is a symlink to {} which points outside the package",
                    r.display(),
                    t.display()
                ));
            }
        }
    }
    Ok(())
}

/// `root/rel` if every component of `rel` is a real directory (no
/// symlink): a setup script may have replaced e.g. `/var/log` by a link to
/// `/`, which on the host side would point at the host's root.
fn real_dir(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in Path::new(rel).components() {
        if let Component::Normal(n) = c {
            cur.push(n);
            let md = fs::symlink_metadata(&cur).ok()?;
            if !md.is_dir() {
                return None;
            }
        }
    }
    Some(cur)
}

/// Remove a non-directory entry `dir/name` (a symlink itself, never its target).
fn remove_entry(root: &Path, dir: &str, name: &str) -> Result<(), ImageError> {
    let Some(d) = real_dir(root, dir) else {
        return Ok(());
    };
    let p = d.join(name);
    match fs::symlink_metadata(&p) {
        Ok(md) if !md.is_dir() => {
            fs::remove_file(&p).map_err(io_err(format!("remove {}", p.display())))
        }
        _ => Ok(()),
    }
}

/// Remove per-bake state from the merged root (Azure-style deprovision).
fn deprovision(merged: &Path) -> Result<(), ImageError> {
    if let Some(etc) = real_dir(merged, "etc") {
        let mid = etc.join("machine-id");
        if fs::symlink_metadata(&mid).is_ok() {
            remove_entry(merged, "etc", "machine-id")?;
            fs::write(&mid, b"").map_err(io_err(format!("truncate {}", mid.display())))?;
        }
    }
    if fs::symlink_metadata(merged.join("deployTemp")).is_ok_and(|m| m.is_dir()) {
        remove_tree(&merged.join("deployTemp"))?;
    } else {
        remove_entry(merged, "", "deployTemp")?;
    }
    remove_entry(merged, "root", ".bash_history")?;
    remove_files_in(merged, "var/lib/apt/lists", &|n| n != "lock", true)?;
    remove_files_in(merged, "var/cache/apt", &|n| n.ends_with(".bin"), false)?;
    remove_files_in(merged, "var/cache/apt/archives", &|n| n != "lock", true)?;
    remove_files_in(merged, "var/log", &|_| true, true)?;
    Ok(())
}

/// Remove non-directory entries matching `pred` below `root/rel`, never
/// following symlinks.
fn remove_files_in(
    root: &Path,
    rel: &str,
    pred: &dyn Fn(&str) -> bool,
    recurse: bool,
) -> Result<(), ImageError> {
    let Some(dir) = real_dir(root, rel) else {
        return Ok(());
    };
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if recurse {
                let sub = format!("{rel}/{}", e.file_name().to_string_lossy());
                remove_files_in(root, &sub, pred, true)?;
            }
        } else if pred(&e.file_name().to_string_lossy()) {
            fs::remove_file(&p).map_err(io_err(format!("remove {}", p.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_keeps_the_bake_and_host_network_variables() {
        let d = sudoers_dropin();
        assert!(d.starts_with("Defaults env_keep += \"PIP_BREAK_SYSTEM_PACKAGES "));
        assert!(d.ends_with("\"\n") && d.lines().count() == 1, "{d}");
        for v in [
            "DEBIAN_FRONTEND",
            "SYSTEMD_OFFLINE",
            "PIP_CERT",
            "SSL_CERT_FILE",
            "PIP_CACHE_DIR",
        ] {
            assert!(d.contains(&format!(" {v} ")), "{v}: {d}");
        }
        for v in hostenv::script_variables() {
            assert!(d.contains(&format!(" {v}")), "{v}: {d}");
        }
    }

    #[test]
    fn base_parsing() {
        assert_eq!(parse_base("debian:bookworm").unwrap(), "bookworm");
        assert!(parse_base("ubuntu:jammy").is_err());
        assert!(parse_base("debian:../x").is_err());
        assert!(parse_base("debian:").is_err());
    }

    #[test]
    fn digest_is_canonical_and_content_sensitive() {
        let d = std::env::temp_dir().join(format!("ss-digest-{}", unique_suffix()));
        let a = d.join("a");
        let b = d.join("b");
        for r in [&a, &b] {
            fs::create_dir_all(r.join("sub")).unwrap();
            fs::write(r.join("sub/f"), "x").unwrap();
            fs::write(r.join("z"), "y").unwrap();
            std::os::unix::fs::symlink("sub/f", r.join("l")).unwrap();
        }
        assert_eq!(tree_digest(&a).unwrap(), tree_digest(&b).unwrap());
        fs::write(b.join("z"), "Y").unwrap();
        assert_ne!(tree_digest(&a).unwrap(), tree_digest(&b).unwrap());
        fs::write(b.join("z"), "y").unwrap();
        fs::set_permissions(b.join("z"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(tree_digest(&a).unwrap(), tree_digest(&b).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
