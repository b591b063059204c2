//! Bakes: base resolution (debian / scratch / image), the nspawn run,
//! deprovision, capture, progress events.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::sandbox::{resolv_conf_mode, DROPPED_CAPS};
use crate::{
    deprovision, io_err, now_secs, parse_base, remove_entry, remove_tree, rfc3339, run_streaming,
    sudoers_dropin, tree_digest, unique_suffix, BakeDir, BakeSpec, Flock, Image, ImageError,
    ImageStore, POLICY_RC_D, SCRATCH, SUDO_SHIM, SYSTEMCTL_SHIM,
};

/// What a bake reports while it runs, in this order (a cache hit reports
/// `BaseReady` then `Done { cache_hit: true }`).
#[derive(Debug, Clone, PartialEq)]
pub enum BakeEvent {
    /// The base stack is available; `cached`: no debootstrap was needed.
    BaseReady {
        base: String,
        cached: bool,
        secs: f64,
    },
    /// The package is being copied to `/deployTemp/<package folder>`.
    Copying {
        files: u64,
        bytes: u64,
    },
    /// The setup script starts (`command` as run inside the container).
    ScriptStarted {
        command: String,
    },
    /// One line of the script's merged stdout+stderr, without the newline.
    ScriptLine(String),
    Deprovisioning,
    /// Hashing the upper dir and moving it into the store.
    Capturing,
    Done {
        digest: String,
        cache_hit: bool,
        secs: f64,
    },
}

/// The layers a bake runs on.
pub(crate) struct BaseStack {
    /// Top-most first (overlay lowerdir order); empty for scratch.
    pub lowers: Vec<PathBuf>,
    pub digests: Vec<String>,
    /// What goes into the cache key for the base.
    pub identity: String,
    pub cached: bool,
}

/// `sha256:<hex>` over a stack's layer digests.
pub fn chain_id(layer_digests: &[String]) -> String {
    let mut h = Sha256::new();
    for d in layer_digests {
        h.update(d.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Splits written bytes into lines for `BakeEvent::ScriptLine`.
struct LineSink<'a> {
    buf: Vec<u8>,
    on_event: &'a mut dyn FnMut(BakeEvent),
    failures: Option<crate::failures::Tracker>,
}

impl Write for LineSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if let Some(t) = &mut self.failures {
                t.line(&text);
            }
            (self.on_event)(BakeEvent::ScriptLine(text));
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl LineSink<'_> {
    fn finish(&mut self) {
        if !self.buf.is_empty() {
            let text = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            if let Some(t) = &mut self.failures {
                t.line(&text);
            }
            (self.on_event)(BakeEvent::ScriptLine(text));
        }
    }
}

/// `e` with its sources, "a: b: c" (the kept log says why, not only what).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

fn is_enospc(e: &ImageError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::ENOSPC) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

pub(crate) fn tree_count(p: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        files += 1;
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if md.is_file() {
            bytes += md.len();
        }
    }
    (files, bytes)
}

/// Entry exists in the (merged) root without following a final symlink.
fn exists_in(root: &Path, abs: &str) -> bool {
    fs::symlink_metadata(root.join(abs.trim_start_matches('/'))).is_ok()
}

impl ImageStore {
    /// Resolve `base` (`debian:<suite>`, `scratch` or an image name) to the
    /// layer stack a bake runs on. An image base is verified
    /// ([`ImageStore::open_for_use`]) first.
    pub(crate) fn resolve_base(
        &self,
        base: &str,
        mirror: Option<&str>,
        log: &mut dyn Write,
    ) -> Result<BaseStack, ImageError> {
        if base == SCRATCH {
            return Ok(BaseStack {
                lowers: vec![],
                digests: vec![],
                identity: SCRATCH.into(),
                cached: true,
            });
        }
        if base.starts_with("debian:") {
            parse_base(base)?;
            let cached = self.base_id(base)?.is_some();
            let rootfs = self.ensure_base(base, mirror, log)?;
            let id = self.base_id(base)?.unwrap_or_default();
            return Ok(BaseStack {
                lowers: vec![rootfs],
                digests: vec![format!("{base}@{id}")],
                identity: id,
                cached,
            });
        }
        if !crate::valid_name(base) {
            return Err(ImageError::UnsupportedBase(base.into()));
        }
        match self.open_for_use(base) {
            Ok(img) => Ok(BaseStack {
                identity: chain_id(&img.layer_digests),
                lowers: img.layers,
                digests: img.layer_digests,
                cached: true,
            }),
            Err(ImageError::NotFound(_)) => Err(ImageError::UnsupportedBase(base.into())),
            Err(e) => Err(e),
        }
    }

    /// Bake an image (or return the cached one with the same key).
    pub fn bake(&self, spec: &BakeSpec, log: &mut dyn Write) -> Result<Image, ImageError> {
        self.bake_with_progress(spec, log, &mut |_| {})
    }

    /// [`ImageStore::bake`] reporting [`BakeEvent`]s as it goes (the full
    /// output still goes to `log` and to the kept log file).
    pub fn bake_with_progress(
        &self,
        spec: &BakeSpec,
        log: &mut dyn Write,
        on_event: &mut dyn FnMut(BakeEvent),
    ) -> Result<Image, ImageError> {
        let started = Instant::now();
        let (pkg, script, pkg_name) = self.validate_bake(spec)?;
        self.mkdirs()?;
        let t0 = Instant::now();
        let stack = self.resolve_base(&spec.base, spec.mirror.as_deref(), log)?;
        on_event(BakeEvent::BaseReady {
            base: spec.base.clone(),
            cached: stack.cached,
            secs: t0.elapsed().as_secs_f64(),
        });
        let pkg_digest = tree_digest(&pkg)?;
        let script_rel = script
            .strip_prefix(&pkg)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| spec.script.clone());
        // The cache key (unchanged format for debian bases, so old caches
        // stay valid): base name + base identity (debian base id, `scratch`,
        // or the parent image's chain id) + package + script + args + net.
        let mut kh = Sha256::new();
        kh.update(format!(
            "base={}\0{}\0pkg={pkg_name}\0{pkg_digest}\0script={script_rel}\0net={}\0",
            spec.base, stack.identity, spec.network
        ));
        for a in &spec.args {
            kh.update(b"arg=");
            kh.update(a.as_bytes());
            kh.update(b"\0");
        }
        let key = hex::encode(kh.finalize());

        // Cache hit?
        {
            let _lock = self.lock()?;
            for img in self.list()? {
                if img.cache_key == key && img.layers.iter().all(|l| l.is_dir()) {
                    let img = self.normalize(img);
                    if let Some(top) = img.layers.first() {
                        self.ensure_seal(top, &img.digest)?;
                    }
                    let _ = writeln!(
                        log,
                        "scaleset: cache hit: {} reuses layer {} of image {}",
                        spec.name, img.digest, img.name
                    );
                    let new = Image {
                        name: spec.name.clone(),
                        created: rfc3339(now_secs()),
                        bake_ms: Some(elapsed_ms(started)),
                        ..img
                    };
                    self.register_locked(&new)?;
                    on_event(BakeEvent::Done {
                        digest: new.digest.clone(),
                        cache_hit: true,
                        secs: started.elapsed().as_secs_f64(),
                    });
                    return Ok(new);
                }
            }
        }

        let log_path = self.root.join("logs").join(format!(
            "{}-{}.log",
            spec.name,
            rfc3339(now_secs()).replace(':', "")
        ));
        let mut log_file = fs::File::create(&log_path)
            .map_err(io_err(format!("create {}", log_path.display())))?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("bake-{}", unique_suffix()));
        let r = self.bake_fresh(
            spec,
            &pkg,
            &pkg_name,
            &script_rel,
            &stack,
            key,
            &tmp,
            (log, &mut log_file, &log_path),
            on_event,
            started,
        );
        let img = match r {
            Ok(img) => img,
            Err(e) if is_enospc(&e) => {
                let _ = writeln!(log_file, "scaleset: bake failed: {}", chain(&e));
                return Err(ImageError::DiskFull {
                    name: spec.name.clone(),
                    path: self.root.join("tmp"),
                    log: log_path,
                });
            }
            Err(e) => {
                let _ = writeln!(log_file, "scaleset: bake failed: {}", chain(&e));
                return Err(e);
            }
        };
        on_event(BakeEvent::Done {
            digest: img.digest.clone(),
            cache_hit: false,
            secs: started.elapsed().as_secs_f64(),
        });
        Ok(img)
    }

    #[allow(clippy::too_many_arguments)]
    fn bake_fresh(
        &self,
        spec: &BakeSpec,
        pkg: &Path,
        pkg_name: &str,
        script_rel: &str,
        stack: &BaseStack,
        key: String,
        tmp: &Path,
        (log, log_file, log_path): (&mut dyn Write, &mut fs::File, &Path),
        on_event: &mut dyn FnMut(BakeEvent),
        bake_started: Instant,
    ) -> Result<Image, ImageError> {
        let guard = BakeDir {
            dir: tmp.to_path_buf(),
        };
        fs::create_dir_all(tmp).map_err(io_err(format!("mkdir {}", tmp.display())))?;
        // Held for the whole bake: `gc` removes only unlocked tmp dirs.
        let _busy = Flock::exclusive(&tmp.join("lock"))?;
        let (upper, work, merged) = self.mount_bake_overlay(tmp, stack)?;
        // Top-level entries of the base: nspawn creates its skeleton
        // (/proc, /sys, /dev, /run, /tmp, ...) in a root that lacks them;
        // those are removed again if they stay empty.
        let before: HashSet<OsString> = fs::read_dir(&merged)
            .map_err(io_err(format!("read {}", merged.display())))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        // nspawn refuses a root without /usr.
        let usr = merged.join("usr");
        if fs::symlink_metadata(&usr).is_err() {
            fs::create_dir(&usr).map_err(io_err(format!("mkdir {}", usr.display())))?;
        }

        // Package + bake-time shims.
        let (files, bytes) = tree_count(pkg);
        on_event(BakeEvent::Copying { files, bytes });
        let deploy = merged.join("deployTemp");
        let in_guest_script = copy_package(pkg, &deploy, pkg_name, script_rel)?;

        let has_sh = check_runnable(spec, &merged, &in_guest_script, pkg_name, script_rel)?;
        let shims = put_shims(&merged, has_sh)?;

        let _ = writeln!(
            log_file,
            "scaleset: baking {} from {} (package {pkg_name}, script {script_rel}, network {})",
            spec.name, spec.base, spec.network
        );
        // Held until the script has finished: the namespace goes with it.
        let bake_net = if spec.network {
            let bn = self.join_bake_network(&spec.name)?;
            let _ = writeln!(
                log_file,
                "scaleset: bake network: namespace {} on bridge {} (outbound through NAT only; the host is not reachable)",
                bn.link.netns, bn.net.bridge
            );
            Some(bn)
        } else {
            None
        };
        let mut env = self.lend_host_network(spec, &deploy, log_file)?.vars;
        let failures = watch_failures(&in_guest_script, &deploy, &mut env)?;
        let cache = self.download_cache(spec, &merged, &mut env, log_file)?;
        let binds = cache.as_ref().map(DownloadCache::binds).unwrap_or_default();
        let (cmd, in_guest) = nspawn_command(
            spec,
            &merged,
            (bake_net.as_ref(), &env, &binds),
            &format!("{pkg_name}/{script_rel}"),
            has_sh,
            log_file,
        );
        on_event(BakeEvent::ScriptStarted {
            command: std::iter::once(format!("/deployTemp/{in_guest}"))
                .chain(spec.args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" "),
        });
        let started = Instant::now();
        let mut lines = LineSink {
            buf: Vec::new(),
            on_event,
            failures,
        };
        let status = run_streaming(cmd, &mut [log, log_file, &mut lines]).map_err(io_err(
            "cannot run systemd-nspawn (apt-get install systemd-container)",
        ))?;
        lines.finish();
        drop(bake_net);
        let on_event = lines.on_event;
        let _ = writeln!(
            log_file,
            "scaleset: setup script finished with {status} after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let warnings = lines.failures.map(|t| t.summary()).unwrap_or_default();
        if let Some(c) = &cache {
            c.unbind(&merged)?;
            c.trim(self.cache_cap, log_file);
        }
        report_failures(&warnings, &mut [log, log_file]);
        self.check_outcome(spec, &upper, status, log_file, log_path)?;

        on_event(BakeEvent::Deprovisioning);
        deprovision_tree(&merged, &shims, &before, &work)?;

        on_event(BakeEvent::Capturing);
        let img = self.capture(
            spec,
            stack,
            (&upper, guard),
            key,
            log_path,
            (warnings, bake_started),
        )?;
        let _ = writeln!(
            log_file,
            "scaleset: registered {} as {}",
            img.name, img.digest
        );
        Ok(img)
    }

    /// What a networked bake borrows from the host (see [`crate::hostenv`]): the CA bundle is
    /// copied under `deploy` (removed with it before capture). Nothing for an offline bake.
    fn lend_host_network(
        &self,
        spec: &BakeSpec,
        deploy: &Path,
        log_file: &mut fs::File,
    ) -> Result<crate::hostenv::HostNetwork, ImageError> {
        if !spec.network || !spec.host_network {
            return Ok(Default::default());
        }
        let host = crate::hostenv::host_network(&|k| std::env::var(k).ok(), &|p| p.is_file());
        if let Some(src) = &host.ca_bundle {
            let data = fs::read(src).map_err(io_err(format!("read {}", src.display())))?;
            write_beneath(deploy, ".scaleset-host", "ca-certificates.crt", &data)?;
        }
        let _ = writeln!(
            log_file,
            "scaleset: host network settings for the script: CA bundle {} at {}; variables {}",
            host.ca_bundle
                .as_deref()
                .map_or("(none)".into(), |p| p.display().to_string()),
            crate::hostenv::GUEST_CA,
            if host.vars.is_empty() {
                "(none)".to_string()
            } else {
                host.names().join(" ")
            }
        );
        Ok(host)
    }

    /// The bake's share of the download cache of its scope, if any: apt keeps what it
    /// downloads (a drop-in, removed with the shims), its package lists (so `apt-get update`
    /// revalidates them instead of fetching them again) and the binary caches built from them,
    /// and pip caches under [`PIP_CACHE`].
    fn download_cache(
        &self,
        spec: &BakeSpec,
        merged: &Path,
        env: &mut Vec<(String, String)>,
        log_file: &mut fs::File,
    ) -> Result<Option<DownloadCache>, ImageError> {
        let Some(scope) = spec.cache.as_deref().filter(|_| spec.network) else {
            return Ok(None);
        };
        let caches = self.root.join("download-cache");
        let name = &hex::encode(Sha256::digest(scope.as_bytes()))[..16];
        let dir = caches.join(name);
        crate::private_dir(&caches)?;
        // One bake of a scope at a time: the trim after a bake must not race another's downloads.
        // The lock file sits beside the folder the bake sees, out of its reach.
        let lock = Flock::exclusive(&dir.with_extension("lock"))?;
        // Earlier bakes of the scope wrote inside these folders (`archives` is one of theirs):
        // made without following a link they planted; a cache with one is started afresh.
        let made = |d: &Path| {
            ["apt-cache/archives/partial", "apt-lists", "pip"]
                .iter()
                .try_for_each(|rel| {
                    crate::oci::ensure_dirs(d, &Path::new(name).join(rel)).map(drop)
                })
        };
        if let Err(e) = made(&caches) {
            let _ = writeln!(
                log_file,
                "scaleset: download cache of `{scope}` emptied: {e}"
            );
            fs::remove_dir_all(&dir).map_err(io_err(format!("remove {}", dir.display())))?;
            made(&caches)
                .map_err(|e| io_err(format!("mkdir in {}", dir.display()))(io::Error::other(e)))?;
        }
        let real = |rel: &str| crate::real_dir(merged, rel).is_some();
        let c = DownloadCache {
            dir: dir.clone(),
            _lock: lock,
            apt: real("var/cache/apt").then(|| dir.join("apt-cache")),
            // Deprovisioning empties the layer's lists after the bake; with the bind, the layer
            // never held them.
            apt_lists: real("var/lib/apt/lists").then(|| dir.join("apt-lists")),
            pip: dir.join("pip"),
            made_pip_dir: fs::symlink_metadata(merged.join(PIP_CACHE.trim_start_matches('/')))
                .is_err(),
            drop_in: real("etc/apt/apt.conf.d").then(|| merged.join(APT_KEEP)),
        };
        c.prepare(merged)?;
        env.push(("PIP_CACHE_DIR".into(), PIP_CACHE.into()));
        let _ = writeln!(
            log_file,
            "scaleset: download cache of `{scope}`: {}",
            dir.display()
        );
        Ok(Some(c))
    }

    /// The bake's overlay on `tmp`: the base's layers below, the new layer in `upper`.
    fn mount_bake_overlay(
        &self,
        tmp: &Path,
        stack: &BaseStack,
    ) -> Result<(PathBuf, PathBuf, PathBuf), ImageError> {
        let (upper, work, merged) = (tmp.join("upper"), tmp.join("work"), tmp.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(io_err(format!("mkdir {}", d.display())))?;
        }
        let lowers: Vec<PathBuf> = if stack.lowers.is_empty() {
            vec![self.scratch_dir()]
        } else {
            stack.lowers.clone()
        };
        let lowerdir: Vec<String> = lowers
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        // nosuid,nodev: nothing in the tree is a working setuid file or device through this
        // mount (see `sandbox`).
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|e| ImageError::Io {
            what: format!("mount bake overlay ({data})"),
            source: io::Error::from(e),
        })?;
        Ok((upper, work, merged))
    }

    /// After the script: a full scratch file system or a failed script fails the bake.
    fn check_outcome(
        &self,
        spec: &BakeSpec,
        upper: &Path,
        status: std::process::ExitStatus,
        log_file: &mut fs::File,
        log_path: &Path,
    ) -> Result<(), ImageError> {
        // A full scratch file system: the script may have ignored a failed
        // write (no `set -e`), so the layer could be incomplete.
        if let Ok(st) = nix::sys::statvfs::statvfs(upper) {
            if st.blocks_available() == 0 {
                let _ = writeln!(
                    log_file,
                    "scaleset: no space left on the bake's file system ({})",
                    upper.display()
                );
                return Err(ImageError::DiskFull {
                    name: spec.name.clone(),
                    path: self.root.join("tmp"),
                    log: log_path.to_path_buf(),
                });
            }
        }
        if !status.success() {
            return Err(ImageError::ScriptFailed {
                name: spec.name.clone(),
                status: status.to_string(),
                log: log_path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Installs `upper` as a layer and registers the image (under the store lock); the bake
    /// directory goes once the layer is installed.
    fn capture(
        &self,
        spec: &BakeSpec,
        stack: &BaseStack,
        (upper, guard): (&Path, BakeDir),
        key: String,
        log_path: &Path,
        (warnings, started): (Vec<String>, Instant),
    ) -> Result<Image, ImageError> {
        let _lock = self.lock()?;
        if let Some(gone) = stack.lowers.iter().find(|l| !l.is_dir()) {
            return Err(ImageError::InvalidSpec {
                name: spec.name.clone(),
                msg: format!(
                    "base layer {} was removed during the bake (base image deleted?)",
                    gone.display()
                ),
            });
        }
        let (digest, layer) = self.install_layer(upper)?;
        drop(guard);
        let mut layers = vec![layer];
        layers.extend(stack.lowers.iter().cloned());
        let mut layer_digests = vec![digest.clone()];
        layer_digests.extend(stack.digests.iter().cloned());
        let img = Image {
            name: spec.name.clone(),
            digest,
            base: spec.base.clone(),
            layers,
            id: chain_id(&layer_digests),
            layer_digests,
            created: rfc3339(now_secs()),
            log: log_path.to_path_buf(),
            cache_key: key,
            warnings,
            bake_ms: Some(elapsed_ms(started)),
        };
        self.register_locked(&img)?;
        Ok(img)
    }
}

/// Copies the package to a fresh `deploy/pkg_name` (`/deployTemp`, replacing whatever the image
/// had there, which may be a link to anywhere on the host) and makes the script executable;
/// returns the script's path there.
fn copy_package(
    pkg: &Path,
    deploy: &Path,
    pkg_name: &str,
    script_rel: &str,
) -> Result<PathBuf, ImageError> {
    let root = deploy.parent().unwrap_or(deploy);
    match fs::symlink_metadata(deploy) {
        Ok(md) if md.is_dir() => crate::remove_tree(deploy)?,
        Ok(_) => crate::remove_entry(root, "", "deployTemp")?,
        Err(_) => {}
    }
    fs::create_dir(deploy).map_err(io_err(format!("mkdir {}", deploy.display())))?;
    // Everything below is new: nothing the copy writes can be an existing link.
    crate::copy_tree(pkg, &deploy.join(pkg_name))?;
    let script = package_script(deploy, pkg_name, script_rel)?;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&script)
        .map_err(io_err(format!("open {}", script.display())))?;
    let mode = f
        .metadata()
        .map_err(io_err(format!("stat {}", script.display())))?
        .permissions()
        .mode();
    f.set_permissions(fs::Permissions::from_mode(mode | 0o111))
        .map_err(io_err(format!("chmod {}", script.display())))?;
    Ok(script)
}

/// The script's path in the copied package: a regular file reached through real directories
/// (a package's symlink could otherwise point the daemon's chmod and reads at a host file).
fn package_script(deploy: &Path, pkg_name: &str, script_rel: &str) -> Result<PathBuf, ImageError> {
    let rel = Path::new(pkg_name).join(script_rel);
    let parent = rel.parent().and_then(|p| p.to_str()).unwrap_or("");
    let file = rel.file_name().unwrap_or_default();
    let regular = crate::real_dir(deploy, parent)
        .map(|d| d.join(file))
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
    regular.ok_or_else(|| {
        let what = format!("setup script {script_rel:?} in the copied package");
        io_err(what)(io::Error::other(
            "not a regular file reached through real directories",
        ))
    })
}

/// For a bash script: an `ERR` trap through `BASH_ENV` (in `deploy`, removed before capture)
/// whose marked lines the returned tracker picks out of the output. Other scripts: none.
fn watch_failures(
    script: &Path,
    deploy: &Path,
    env: &mut Vec<(String, String)>,
) -> Result<Option<crate::failures::Tracker>, ImageError> {
    let mut head = [0u8; 256];
    let n = fs::File::open(script)
        .and_then(|mut f| io::Read::read(&mut f, &mut head))
        .map_err(io_err(format!("read {}", script.display())))?;
    if !crate::failures::is_bash(&head[..n]) {
        return Ok(None);
    }
    let mark = hex::encode(&Sha256::digest(unique_suffix())[..8]);
    let trap = crate::failures::trap_script(&mark);
    write_beneath(deploy, ".scaleset-host", "errtrap.sh", trap.as_bytes())?;
    env.push((
        "BASH_ENV".into(),
        "/deployTemp/.scaleset-host/errtrap.sh".into(),
    ));
    Ok(Some(crate::failures::Tracker::new(&mark)))
}

/// Writes a new file `name` in the real directory `root/dir` (made if missing): no component is
/// followed if it is a symlink, so an image (the output of an untrusted bake) cannot point the
/// daemon's write at the host. Returns the file's path.
fn write_beneath(root: &Path, dir: &str, name: &str, data: &[u8]) -> Result<PathBuf, ImageError> {
    if crate::real_dir(root, dir).is_none() {
        let d = root.join(dir);
        // Only the last component may be missing; the rest must already be real directories.
        let parent = Path::new(dir)
            .parent()
            .and_then(|p| p.to_str())
            .unwrap_or("");
        if crate::real_dir(root, parent).is_none() || fs::symlink_metadata(&d).is_ok() {
            return Err(io_err(format!("write {}", d.display()))(io::Error::other(
                "not a real directory in the bake's root",
            )));
        }
        fs::create_dir(&d).map_err(io_err(format!("mkdir {}", d.display())))?;
    }
    let p = root.join(dir).join(name);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(&p)
        .map_err(io_err(format!("create {}", p.display())))?;
    io::Write::write_all(&mut f, data).map_err(io_err(format!("write {}", p.display())))?;
    Ok(p)
}

/// pip's cache inside a bake (bound from the host; the empty mount point is removed after).
const PIP_CACHE: &str = "/var/cache/scaleset-pip";
/// apt drop-in that keeps downloaded packages in the (bound) archives; removed after.
const APT_KEEP: &str = "etc/apt/apt.conf.d/zz-scaleset-download-cache";

/// A bake's view of its scope's download cache on the host.
struct DownloadCache {
    dir: PathBuf,
    _lock: Flock,
    /// Bound over `/var/cache/apt` (packages in `archives`, `pkgcache.bin`) when the base has apt.
    apt: Option<PathBuf>,
    /// Bound over `/var/lib/apt/lists` when the base has apt.
    apt_lists: Option<PathBuf>,
    pip: PathBuf,
    /// The mount point was made for the bake (and goes after it).
    made_pip_dir: bool,
    drop_in: Option<PathBuf>,
}

impl DownloadCache {
    fn prepare(&self, merged: &Path) -> Result<(), ImageError> {
        // The mount point: nspawn resolves the bind's target inside the container's root.
        let pip = merged.join(PIP_CACHE.trim_start_matches('/'));
        if self.made_pip_dir {
            if crate::real_dir(merged, "var/cache").is_none() {
                return Err(io_err(format!("mkdir {}", pip.display()))(
                    io::Error::other("/var/cache is not a real directory in the bake's root"),
                ));
            }
            fs::create_dir(&pip).map_err(io_err(format!("mkdir {}", pip.display())))?;
        }
        if self.drop_in.is_some() {
            let keep = "Binary::apt::APT::Keep-Downloaded-Packages \"true\";\nAPT::Keep-Downloaded-Packages \"true\";\n";
            let (dir, name) = APT_KEEP.rsplit_once('/').unwrap_or(("", APT_KEEP));
            write_beneath(merged, dir, name, keep.as_bytes())?;
        }
        Ok(())
    }

    /// nspawn options binding the cache into the bake.
    fn binds(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .apt
            .iter()
            .map(|apt| format!("--bind={}:/var/cache/apt", apt.display()))
            .chain(
                self.apt_lists
                    .iter()
                    .map(|l| format!("--bind={}:/var/lib/apt/lists", l.display())),
            )
            .collect();
        out.push(format!("--bind={}:{PIP_CACHE}", self.pip.display()));
        out
    }

    /// Keeps the cache within `cap` bytes (oldest files first); a failure is only logged.
    fn trim(&self, cap: u64, log_file: &mut fs::File) {
        match crate::cache::trim(&self.dir, cap) {
            Ok((0, _)) => {}
            Ok((n, before)) => {
                let _ = writeln!(
                    log_file,
                    "scaleset: download cache over {} MiB ({} MiB): removed its {n} oldest files",
                    cap >> 20,
                    before >> 20
                );
            }
            Err(e) => {
                let _ = writeln!(log_file, "scaleset: download cache trim failed: {e}");
            }
        }
    }

    /// Removes what the bake's root got for the cache: the drop-in and an empty mount point.
    fn unbind(&self, merged: &Path) -> Result<(), ImageError> {
        if let Some(f) = &self.drop_in {
            let _ = fs::remove_file(f);
        }
        if self.made_pip_dir {
            let _ = fs::remove_dir(merged.join(PIP_CACHE.trim_start_matches('/')));
        }
        Ok(())
    }
}

/// The summary at the end of the bake's logs.
fn report_failures(warnings: &[String], logs: &mut [&mut dyn Write]) {
    if warnings.is_empty() {
        return;
    }
    for l in logs.iter_mut() {
        let _ = writeln!(
            l,
            "scaleset: WARNING: {} top-level command(s) of the setup script failed; the bake's result is the script's exit status, as in Azure, but the image may not serve:",
            warnings.len()
        );
        for w in warnings {
            let _ = writeln!(l, "  {w}");
        }
    }
}

/// How the script starts: through /bin/sh when the image has one (returns true), else exec'd
/// directly, which needs a static executable or an interpreter the image or package has.
fn check_runnable(
    spec: &BakeSpec,
    merged: &Path,
    in_guest_script: &Path,
    pkg_name: &str,
    script_rel: &str,
) -> Result<bool, ImageError> {
    let has_sh = exists_in(merged, "/bin/sh") || exists_in(merged, "/usr/bin/sh");
    if !has_sh {
        let mut head = [0u8; 256];
        let n = fs::File::open(in_guest_script)
            .and_then(|mut f| f.read(&mut head))
            .map_err(io_err(format!("read {}", in_guest_script.display())))?;
        let head = &head[..n];
        if let Some(rest) = head.strip_prefix(b"#!") {
            let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
            let interp = String::from_utf8_lossy(line)
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if interp.is_empty() || !interp.starts_with('/') || !exists_in(merged, &interp) {
                return Err(ImageError::InvalidSpec {
                    name: spec.name.clone(),
                    msg: format!(
                        "base {:?} has no /bin/sh and no {interp:?} to run script {script_rel:?}: on an empty base (scratch) the script must be a static executable, or name an interpreter the package ships (e.g. #!/deployTemp/{pkg_name}/busybox sh)",
                        spec.base
                    ),
                });
            }
        } else if !head.starts_with(b"\x7fELF") {
            return Err(ImageError::InvalidSpec {
                name: spec.name.clone(),
                msg: format!(
                    "base {:?} has no /bin/sh and script {script_rel:?} is neither an ELF executable nor a #! script",
                    spec.base
                ),
            });
        }
    }
    Ok(has_sh)
}

/// Bake-time shims (systemctl, policy-rc.d, sudo) where the image has none; returns them
/// (directory, name) so deprovisioning removes them.
fn put_shims(merged: &Path, has_sh: bool) -> Result<Vec<(String, String)>, ImageError> {
    let mut shims: Vec<(String, String)> = Vec::new();
    let mut put_shim = |rel: &str, content: &str, mode: u32| -> Result<(), ImageError> {
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        // Only into a real directory of the image, never through a link it planted.
        let Some(d) = crate::real_dir(merged, dir) else {
            return Ok(());
        };
        let p = d.join(name);
        if fs::symlink_metadata(&p).is_ok() {
            return Ok(()); // the image has its own; leave it alone
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&p)
            .map_err(io_err(format!("create {}", p.display())))?;
        io::Write::write_all(&mut f, content.as_bytes())
            .map_err(io_err(format!("write {}", p.display())))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", p.display())))?;
        shims.push((dir.to_string(), name.to_string()));
        Ok(())
    };
    if has_sh {
        put_shim("usr/local/sbin/systemctl", SYSTEMCTL_SHIM, 0o755)?;
        put_shim("usr/sbin/policy-rc.d", POLICY_RC_D, 0o755)?;
        put_shim("etc/sudoers.d/zz-scaleset-bake", &sudoers_dropin(), 0o440)?;
        if fs::symlink_metadata(merged.join("usr/bin/sudo")).is_err() {
            put_shim("usr/local/bin/sudo", SUDO_SHIM, 0o755)?;
        }
    }
    Ok(shims)
}

/// The systemd-nspawn command running `in_guest` (package/script) in the bake's root.
fn nspawn_command(
    spec: &BakeSpec,
    merged: &Path,
    (bake_net, host_vars, binds): (
        Option<&crate::sandbox::BakeNet>,
        &[(String, String)],
        &[String],
    ),
    in_guest: &str,
    has_sh: bool,
    log_file: &mut fs::File,
) -> (Command, String) {
    let mut cmd = Command::new("systemd-nspawn");
    cmd.args([
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--pipe",
        "--as-pid2",
        "--timezone=off",
        "--link-journal=no",
        // A resolvable host name (sudo looks it up on every call).
        "--hostname=localhost",
    ])
    .arg(format!(
        "--machine=ssbake-{}",
        &hex::encode(Sha256::digest(unique_suffix()))[..12]
    ))
    .arg("-D")
    .arg(merged)
    .arg(format!("--drop-capability={}", DROPPED_CAPS.join(",")));
    match bake_net {
        Some(bn) => {
            cmd.arg(format!("--network-namespace-path={}", bn.link.netns_path()))
                .arg(format!("--resolv-conf={}", resolv_conf_mode(log_file)));
        }
        None => {
            cmd.args(["--private-network", "--resolv-conf=off"]);
        }
    }
    for env in [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "USER=root",
        "LANG=C.UTF-8",
        "DEBIAN_FRONTEND=noninteractive",
        "PIP_BREAK_SYSTEM_PACKAGES=1",
        "SYSTEMD_OFFLINE=1",
        "SCALESET_BAKE=1",
    ] {
        cmd.arg(format!("--setenv={env}"));
    }
    for (k, v) in host_vars {
        cmd.arg(format!("--setenv={k}={v}"));
    }
    cmd.args(binds);
    cmd.arg("--chdir=/deployTemp").arg("--");
    if has_sh {
        cmd.arg("/bin/sh")
            .arg("-c")
            .arg("cd /deployTemp && exec \"$0\" \"$@\"")
            .arg(in_guest);
    } else {
        cmd.arg(format!("/deployTemp/{in_guest}"));
    }
    cmd.args(&spec.args);
    (cmd, in_guest.to_string())
}

/// Deprovisioning: the shims and the guest's machine identity go, and so do the skeleton
/// directories nspawn created (`before` is the base's top level) if they stayed empty.
fn deprovision_tree(
    merged: &Path,
    shims: &[(String, String)],
    before: &HashSet<OsString>,
    work: &Path,
) -> Result<(), ImageError> {
    for (dir, name) in shims {
        remove_entry(merged, dir, name)?;
    }
    deprovision(merged)?;
    for e in fs::read_dir(merged)
        .map_err(io_err(format!("read {}", merged.display())))?
        .flatten()
    {
        if !before.contains(&e.file_name())
            && e.file_type().is_ok_and(|t| t.is_dir())
            && fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_none())
        {
            let _ = fs::remove_dir(e.path());
        }
    }
    remove_tree(merged)?; // unmounts the overlay
    let _ = fs::remove_dir_all(work);
    Ok(())
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
