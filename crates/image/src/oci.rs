//! Import of OCI image layouts and `docker save` archives as images, and
//! export of an image as an OCI image layout tarball.
//!
//! Store layers are kept in overlayfs form (the form a bake's upper dir
//! has): a deleted path is a 0/0 character device, an opaque directory has
//! `trusted.overlay.opaque=y`. OCI layers use `.wh.<name>` files and
//! `.wh..wh..opq` markers instead; import and export convert between them.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bake::chain_id;
use crate::{
    io_err, lgetxattr, now_secs, rfc3339, unique_suffix, valid_name, BakeDir, Flock, Image,
    ImageError, ImageStore, SCRATCH,
};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A plain, gzip'ed or (refused) zstd'ed stream, told apart by magic.
fn open_maybe_compressed(path: &Path) -> Result<Box<dyn Read>, String> {
    let f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut r = BufReader::with_capacity(256 * 1024, f);
    let head = r
        .fill_buf()
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(format!(
            "{} is zstd-compressed, which is not supported (re-save it with gzip or uncompressed layers)",
            path.display()
        ))
    } else {
        Ok(Box::new(r))
    }
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let mut f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| format!("read {}: {e}", path.display()))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// The normal form of an archive path (`./a/b` → `a/b`); `None` for the root. Absolute paths
/// and `..` components are refused, naming the entry: nothing in an archive may point
/// anywhere but below the directory it is unpacked into.
fn sanitize(p: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "entry {:?} has an absolute path: refused",
                    p.display().to_string()
                ))
            }
            Component::ParentDir => {
                return Err(format!(
                    "entry {:?} has a '..' component: refused",
                    p.display().to_string()
                ))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

/// Refuse a relative symlink target that climbs above the archive root from entry `rel`
/// (`a/l -> ../../x`). Absolute targets stay: they resolve inside the image's own root, as
/// `/usr/bin/foo -> /etc/alternatives/foo` must.
fn check_symlink(rel: &Path, target: &Path) -> Result<(), String> {
    if target.as_os_str().is_empty() {
        return Err(format!(
            "entry {:?} is a symlink without a target",
            rel.display().to_string()
        ));
    }
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth = rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return Err(format!(
                "entry {:?} is a symlink to {:?}, which points outside the image: refused",
                rel.display().to_string(),
                target.display().to_string()
            ));
        }
    }
    Ok(())
}

fn device_refused(raw: &Path, kind: &str, h: &tar::Header) -> String {
    format!(
        "entry {:?} is a {kind} device node ({}:{}): device nodes are refused",
        raw.display().to_string(),
        h.device_major().ok().flatten().unwrap_or(0),
        h.device_minor().ok().flatten().unwrap_or(0)
    )
}

/// Unpack the outer archive (an OCI layout or a `docker save`) into `dest`: directories,
/// regular files, hard links to earlier files and symlinks that stay inside (docker's legacy
/// format links shared layers); any other entry type, or a path or link leaving `dest`, is
/// refused naming the entry.
fn unpack_archive(r: impl Read, dest: &Path) -> Result<(), String> {
    use tar::EntryType as T;
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries().map_err(|e| format!("read archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("read archive: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("bad path: {e}"))?
            .into_owned();
        let kind = entry.header().entry_type();
        let Some(rel) = sanitize(&raw)? else { continue };
        let parent = ensure_dirs(dest, rel.parent().unwrap_or(Path::new("")))?;
        let full = parent.join(rel.file_name().unwrap_or_default());
        match kind {
            T::Directory => {
                ensure_dirs(dest, &rel)?;
            }
            T::Regular | T::Continuous => {
                remove_any(&full)?;
                let mut f = fs::File::create(&full)
                    .map_err(|e| format!("create {}: {e}", full.display()))?;
                io::copy(&mut entry, &mut f)
                    .map_err(|e| format!("write {}: {e}", full.display()))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("bad link name: {e}"))?
                    .unwrap_or_default()
                    .into_owned();
                check_symlink(&rel, &target)?;
                if target.is_absolute() {
                    return Err(format!(
                        "entry {:?} is a symlink to the absolute path {:?}: refused in an archive",
                        raw.display().to_string(),
                        target.display().to_string()
                    ));
                }
                remove_any(&full)?;
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(|e| format!("symlink {}: {e}", full.display()))?;
            }
            T::Link => {
                let src = hard_link_source(&entry, &rel, dest)?;
                remove_any(&full)?;
                fs::hard_link(&src, &full).map_err(|e| format!("link {}: {e}", full.display()))?;
            }
            T::Char => return Err(device_refused(&raw, "character", entry.header())),
            T::Block => return Err(device_refused(&raw, "block", entry.header())),
            T::Fifo => {
                return Err(format!(
                    "entry {:?} is a fifo: refused in an archive",
                    raw.display().to_string()
                ))
            }
            _ => {} // pax/gnu extension headers are consumed by `tar`
        }
    }
    Ok(())
}

/// The existing regular file of `dest` that hard link entry `rel` names.
fn hard_link_source<R: Read>(
    entry: &tar::Entry<R>,
    rel: &Path,
    dest: &Path,
) -> Result<PathBuf, String> {
    let target = entry
        .link_name()
        .map_err(|e| format!("bad link name: {e}"))?
        .ok_or_else(|| format!("hard link {:?} without target", rel.display().to_string()))?;
    let t = sanitize(&target)
        .map_err(|m| {
            format!(
                "hard link {:?} to {:?}: {m}",
                rel.display().to_string(),
                target.display().to_string()
            )
        })?
        .ok_or_else(|| format!("hard link {:?} to the root", rel.display().to_string()))?;
    let tparent = ensure_dirs(dest, t.parent().unwrap_or(Path::new("")))?;
    let src = tparent.join(t.file_name().unwrap_or_default());
    if !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "hard link {:?} to {:?}, which is not an earlier file of the archive: refused",
            rel.display().to_string(),
            t.display().to_string()
        ));
    }
    Ok(src)
}

/// `layout/rel`, resolved, if it stays inside `layout` (a symlink in a layout must not make
/// the import read a host file).
fn layout_file(layout: &Path, rel: &Path) -> Result<PathBuf, String> {
    let root = fs::canonicalize(layout).map_err(|e| format!("{}: {e}", layout.display()))?;
    let p = fs::canonicalize(layout.join(rel)).map_err(|e| format!("{}: {e}", rel.display()))?;
    if !p.starts_with(&root) {
        return Err(format!(
            "{} resolves to {}, outside the image: refused",
            rel.display(),
            p.display()
        ));
    }
    Ok(p)
}

/// `dest/rel`, creating missing directories, never through a symlink.
pub(crate) fn ensure_dirs(dest: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "entry below {} goes through a non-directory (symlink?)",
                    rel.display()
                ))
            }
            Err(_) => fs::create_dir(&cur).map_err(|e| format!("mkdir {}: {e}", cur.display()))?,
        }
    }
    Ok(cur)
}

/// Remove whatever is at `p` (a directory recursively), never following it.
fn remove_any(p: &Path) -> Result<(), String> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            fs::remove_dir_all(p).map_err(|e| format!("remove {}: {e}", p.display()))
        }
        Ok(_) => fs::remove_file(p).map_err(|e| format!("remove {}: {e}", p.display())),
        Err(_) => Ok(()),
    }
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let cn = std::ffi::CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(format!(
            "set {name} on {}: {}",
            p.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mknod(p: &Path, kind: nix::sys::stat::SFlag, mode: u32, dev: u64) -> Result<(), String> {
    nix::sys::stat::mknod(p, kind, nix::sys::stat::Mode::from_bits_truncate(mode), dev)
        .map_err(|e| format!("mknod {}: {e}", p.display()))
}

fn set_mtime(p: &Path, secs: u64) {
    let t = nix::sys::time::TimeSpec::new(secs as i64, 0);
    let _ = nix::sys::stat::utimensat(
        None,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

/// Unpack one OCI/docker layer tar into `dest` in overlayfs form.
pub(crate) fn apply_layer_tar(r: impl Read, dest: &Path) -> Result<(), String> {
    use tar::EntryType as T;
    let mut ar = tar::Archive::new(r);
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    for entry in ar.entries().map_err(|e| format!("read tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("read tar: {e}"))?;
        let raw = entry
            .path()
            .map_err(|e| format!("bad path: {e}"))?
            .into_owned();
        let h = entry.header();
        let kind = h.entry_type();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32);
        let mtime = h.mtime().unwrap_or(0);
        let Some(rel) = sanitize(&raw)? else {
            if kind == T::Directory {
                std::os::unix::fs::lchown(dest, Some(uid), Some(gid))
                    .map_err(|e| format!("chown {}: {e}", dest.display()))?;
                fs::set_permissions(dest, fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", dest.display()))?;
                dirs.push((dest.to_path_buf(), mtime));
            }
            continue;
        };
        let fname = rel
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let fname_s = fname.to_string_lossy().into_owned();
        let parent = ensure_dirs(dest, rel.parent().unwrap_or(Path::new("")))?;
        if fname_s == ".wh..wh..opq" {
            set_xattr(&parent, OPAQUE_XATTR, b"y")?;
            continue;
        }
        if let Some(hidden) = fname_s.strip_prefix(".wh.") {
            let t = parent.join(hidden);
            remove_any(&t)?;
            mknod(&t, nix::sys::stat::SFlag::S_IFCHR, 0, 0)?;
            continue;
        }
        let full = parent.join(&fname);
        match kind {
            T::Directory => {
                if !fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                    remove_any(&full)?;
                    fs::create_dir(&full).map_err(|e| format!("mkdir {}: {e}", full.display()))?;
                }
                dirs.push((full.clone(), mtime));
            }
            T::Regular | T::Continuous => {
                remove_any(&full)?;
                let mut f = fs::File::create(&full)
                    .map_err(|e| format!("create {}: {e}", full.display()))?;
                io::copy(&mut entry, &mut f)
                    .map_err(|e| format!("write {}: {e}", full.display()))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("bad link name: {e}"))?
                    .unwrap_or_default();
                check_symlink(&rel, &target)?;
                remove_any(&full)?;
                std::os::unix::fs::symlink(&target, &full)
                    .map_err(|e| format!("symlink {}: {e}", full.display()))?;
            }
            T::Link => {
                let src = hard_link_source(&entry, &rel, dest)?;
                remove_any(&full)?;
                fs::hard_link(&src, &full).map_err(|e| format!("link {}: {e}", full.display()))?;
                continue;
            }
            // No layer may carry a device node (whiteouts come as `.wh.` files).
            T::Char => return Err(device_refused(&raw, "character", h)),
            T::Block => return Err(device_refused(&raw, "block", h)),
            T::Fifo => {
                remove_any(&full)?;
                mknod(&full, nix::sys::stat::SFlag::S_IFIFO, mode, 0)?;
            }
            _ => continue, // pax/gnu extension headers are consumed by `tar`
        }
        std::os::unix::fs::lchown(&full, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", full.display()))?;
        if kind != T::Symlink {
            // After chown, which clears set-id bits.
            fs::set_permissions(&full, fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod {}: {e}", full.display()))?;
        }
        if kind != T::Directory {
            set_mtime(&full, mtime);
        }
    }
    for (d, m) in dirs.iter().rev() {
        set_mtime(d, *m);
    }
    Ok(())
}

/// Write the overlayfs-form tree `root` as an OCI layer tar (whiteouts
/// back to `.wh.` files, opaque dirs to `.wh..wh..opq` markers).
pub(crate) fn write_layer_tar<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
) -> io::Result<()> {
    use tar::EntryType as T;
    let full = root.join(rel);
    let md = fs::symlink_metadata(&full)?;
    let ft = md.file_type();
    let mut h = tar::Header::new_gnu();
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(md.uid().into());
    h.set_gid(md.gid().into());
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    let name: PathBuf = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_path_buf()
    };
    if ft.is_dir() {
        h.set_entry_type(T::Directory);
        b.append_data(&mut h, &name, io::empty())?;
        if lgetxattr(&full, OPAQUE_XATTR).is_some_and(|v| v == b"y") {
            let mut w = tar::Header::new_gnu();
            w.set_entry_type(T::Regular);
            w.set_mode(0o644);
            w.set_size(0);
            w.set_mtime(md.mtime().max(0) as u64);
            b.append_data(&mut w, name.join(".wh..wh..opq"), io::empty())?;
        }
        let mut names: Vec<_> = fs::read_dir(&full)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for n in names {
            write_layer_tar(b, root, &rel.join(n))?;
        }
    } else if ft.is_file() {
        h.set_entry_type(T::Regular);
        h.set_size(md.len());
        let f = fs::File::open(&full)?;
        b.append_data(&mut h, &name, f)?;
    } else if ft.is_symlink() {
        h.set_entry_type(T::Symlink);
        let target = fs::read_link(&full)?;
        b.append_link(&mut h, &name, target)?;
    } else if ft.is_char_device() && md.rdev() == 0 {
        // overlayfs whiteout
        let wh = name.with_file_name(format!(
            ".wh.{}",
            name.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut w = tar::Header::new_gnu();
        w.set_entry_type(T::Regular);
        w.set_mode(0o644);
        w.set_size(0);
        w.set_mtime(md.mtime().max(0) as u64);
        b.append_data(&mut w, wh, io::empty())?;
    } else if ft.is_fifo() {
        h.set_entry_type(T::Fifo);
        b.append_data(&mut h, &name, io::empty())?;
    }
    // Sockets and device nodes are not archived: import refuses devices, and instances get
    // their /dev from nspawn (bases built by older versions still carry debootstrap's).
    Ok(())
}

struct HashWriter<W: Write> {
    inner: W,
    h: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn json_blob(blobs: &Path, v: &Value) -> Result<(String, u64), ImageError> {
    let data = serde_json::to_vec(v).expect("json serializes");
    let hexd = hex::encode(Sha256::digest(&data));
    let p = blobs.join(&hexd);
    fs::write(&p, &data).map_err(io_err(format!("write {}", p.display())))?;
    Ok((format!("sha256:{hexd}"), data.len() as u64))
}

impl ImageStore {
    /// Import an OCI image layout (directory, or a tarball of one, plain or
    /// gzip'ed) or a `docker save` tarball as image `name` — usable as a
    /// bake base (`BakeSpec::base = name`). Each layer becomes a store
    /// layer in overlayfs form; blob digests of an OCI layout are checked.
    /// For an index with several manifests the one for this host's
    /// architecture (else the first) is taken.
    pub fn import(&self, src: &Path, name: &str, log: &mut dyn Write) -> Result<Image, ImageError> {
        let ierr = |msg: String| ImageError::Import {
            src: src.to_path_buf(),
            msg,
        };
        if !valid_name(name) || name == SCRATCH {
            return Err(ImageError::InvalidSpec {
                name: name.into(),
                msg: "name must be 1..=128 chars of [A-Za-z0-9_.-] and not \"scratch\"".into(),
            });
        }
        self.mkdirs()?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("import-{}", unique_suffix()));
        let guard = BakeDir { dir: tmp.clone() };
        fs::create_dir_all(&tmp).map_err(io_err(format!("mkdir {}", tmp.display())))?;
        let _busy = Flock::exclusive(&tmp.join("lock"))?;
        let layout = if src.is_dir() {
            src.to_path_buf()
        } else if src.is_file() {
            let dir = tmp.join("archive");
            fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
            let r = open_maybe_compressed(src).map_err(ierr)?;
            unpack_archive(r, &dir).map_err(|m| ierr(format!("{m}; nothing was imported")))?;
            dir
        } else {
            return Err(ierr("no such file or directory".into()));
        };
        let blobs: Vec<(PathBuf, Option<String>)> = if layout.join("index.json").is_file() {
            oci_layers(&layout).map_err(ierr)?
        } else if layout.join("manifest.json").is_file() {
            docker_layers(&layout).map_err(ierr)?
        } else {
            return Err(ierr(
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)"
                    .into(),
            ));
        };
        if blobs.is_empty() {
            return Err(ierr("the image has no layers".into()));
        }
        let mut trees = Vec::new();
        for (i, (blob, expect)) in blobs.iter().enumerate() {
            if let Some(d) = expect {
                let actual = sha256_file(blob).map_err(ierr)?;
                if &actual != d {
                    return Err(ierr(format!("blob {d} is corrupt (content is {actual})")));
                }
            }
            let dir = tmp.join(format!("layer-{i}"));
            fs::create_dir_all(&dir).map_err(io_err(format!("mkdir {}", dir.display())))?;
            let r = open_maybe_compressed(blob).map_err(ierr)?;
            apply_layer_tar(r, &dir).map_err(|m| {
                let at = fs::canonicalize(&layout)
                    .ok()
                    .and_then(|l| blob.strip_prefix(l).ok().map(Path::to_path_buf))
                    .unwrap_or_else(|| blob.clone());
                ierr(format!(
                    "layer {} ({}): {m}; nothing was imported",
                    i + 1,
                    at.display()
                ))
            })?;
            let _ = writeln!(
                log,
                "scaleset: import {name}: layer {}/{} unpacked",
                i + 1,
                blobs.len()
            );
            trees.push(dir);
        }
        let _lock = self.lock()?;
        let mut layers = Vec::new();
        let mut layer_digests = Vec::new();
        for t in trees.iter().rev() {
            let (d, p) = self.install_layer(t)?;
            layers.push(p);
            layer_digests.push(d);
        }
        drop(guard);
        let img = Image {
            warnings: vec![],
            bake_ms: None,
            name: name.to_string(),
            digest: layer_digests[0].clone(),
            base: format!(
                "import:{}",
                src.file_name().unwrap_or_default().to_string_lossy()
            ),
            layers,
            id: chain_id(&layer_digests),
            layer_digests,
            created: rfc3339(now_secs()),
            log: PathBuf::new(),
            cache_key: String::new(),
        };
        self.register_locked(&img)?;
        let _ = writeln!(log, "scaleset: imported {name} as {}", img.id);
        Ok(img)
    }

    /// Write image `name` (verified first, see [`Self::open_for_use`]) as an
    /// OCI image layout tarball at `dest`: `oci-layout`, `index.json`
    /// (ref name = the image name) and `blobs/sha256/` with a config, a
    /// manifest and one uncompressed tar layer per image layer (a debian
    /// base rootfs included), whiteouts in OCI form. Returns the manifest
    /// digest.
    pub fn export(&self, name: &str, dest: &Path) -> Result<String, ImageError> {
        let img = self.open_for_use(name)?;
        self.mkdirs()?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("export-{}", unique_suffix()));
        let _guard = BakeDir { dir: tmp.clone() };
        fs::create_dir_all(&tmp).map_err(io_err(format!("mkdir {}", tmp.display())))?;
        let _busy = Flock::exclusive(&tmp.join("lock"))?;
        let layout = tmp.join("layout");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(format!("mkdir {}", blobs.display())))?;
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, layer) in img.layers.iter().rev().enumerate() {
            let part = tmp.join(format!("layer-{i}.tar"));
            let f =
                fs::File::create(&part).map_err(io_err(format!("create {}", part.display())))?;
            let mut b = tar::Builder::new(HashWriter {
                inner: io::BufWriter::new(f),
                h: Sha256::new(),
                n: 0,
            });
            write_layer_tar(&mut b, layer, Path::new(""))
                .and_then(|_| b.finish())
                .map_err(io_err(format!("write layer tar of {}", layer.display())))?;
            let mut hw = b
                .into_inner()
                .map_err(io_err(format!("write {}", part.display())))?;
            hw.flush()
                .map_err(io_err(format!("write {}", part.display())))?;
            let digest = format!("sha256:{}", hex::encode(hw.h.finalize()));
            let blob = blobs.join(digest.trim_start_matches("sha256:"));
            fs::rename(&part, &blob).map_err(io_err(format!("rename {}", blob.display())))?;
            descs.push(json!({"mediaType": MT_LAYER, "digest": digest, "size": hw.n}));
            diff_ids.push(digest);
        }
        let config = json!({
            "created": img.created,
            "architecture": host_arch(),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": img.created, "created_by": format!("scaleset image {} (base {})", img.name, img.base)}],
        });
        let (cfg_digest, cfg_size) = json_blob(&blobs, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": descs,
            "annotations": {"org.opencontainers.image.ref.name": img.name},
        });
        let (man_digest, man_size) = json_blob(&blobs, &manifest)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [{
                "mediaType": MT_MANIFEST, "digest": man_digest, "size": man_size,
                "platform": {"architecture": host_arch(), "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": img.name},
            }],
        });
        let write =
            |p: &Path, v: &[u8]| fs::write(p, v).map_err(io_err(format!("write {}", p.display())));
        write(
            &layout.join("index.json"),
            &serde_json::to_vec(&index).expect("json"),
        )?;
        write(
            &layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        // The tarball: written next to dest, renamed into place.
        let part = dest.with_file_name(format!(
            ".{}.part-{}",
            dest.file_name().unwrap_or_default().to_string_lossy(),
            unique_suffix()
        ));
        let r = (|| -> io::Result<()> {
            let f = fs::File::create(&part)?;
            let mut b = tar::Builder::new(io::BufWriter::new(f));
            b.mode(tar::HeaderMode::Deterministic);
            b.append_path_with_name(layout.join("oci-layout"), "oci-layout")?;
            b.append_path_with_name(layout.join("index.json"), "index.json")?;
            b.append_dir("blobs", &layout)?;
            b.append_dir("blobs/sha256", &layout)?;
            let mut names: Vec<_> = fs::read_dir(&blobs)?
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            names.sort();
            for n in names {
                b.append_path_with_name(blobs.join(&n), Path::new("blobs/sha256").join(&n))?;
            }
            let f = b.into_inner()?.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&part);
            return Err(io_err(format!("write {}", dest.display()))(e));
        }
        runtime::durable::rename_durable(&part, dest)
            .map_err(io_err(format!("rename to {}", dest.display())))?;
        Ok(man_digest)
    }
}

fn read_json(p: &Path) -> Result<Value, String> {
    let data = fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("parse {}: {e}", p.display()))
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            layout_file(layout, &Path::new("blobs/sha256").join(h))
        }
        _ => Err(format!("unsupported blob digest {digest:?}")),
    }
}

/// Layer blobs (bottom first, with their expected digests) of the image an
/// OCI layout's index points at.
fn oci_layers(layout: &Path) -> Result<Vec<(PathBuf, Option<String>)>, String> {
    let mut v = read_json(&layout_file(layout, Path::new("index.json"))?)?;
    for _ in 0..8 {
        if let Some(layers) = v.get("layers").and_then(Value::as_array) {
            return layers
                .iter()
                .map(|l| {
                    let d = l
                        .get("digest")
                        .and_then(Value::as_str)
                        .ok_or("layer without digest")?;
                    Ok((blob_path(layout, d)?, Some(d.to_string())))
                })
                .collect();
        }
        let ms = v
            .get("manifests")
            .and_then(Value::as_array)
            .filter(|m| !m.is_empty())
            .ok_or("index without manifests")?;
        let pick = ms
            .iter()
            .find(|m| {
                m.pointer("/platform/architecture").and_then(Value::as_str) == Some(host_arch())
                    && m.pointer("/platform/os").and_then(Value::as_str) == Some("linux")
            })
            .unwrap_or(&ms[0]);
        let d = pick
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("manifest descriptor without digest")?;
        let p = blob_path(layout, d)?;
        let actual = sha256_file(&p)?;
        if actual != d {
            return Err(format!("blob {d} is corrupt (content is {actual})"));
        }
        v = read_json(&p)?;
    }
    Err("index nesting too deep".into())
}

/// Layer tarballs (bottom first) of the first image of a `docker save`.
fn docker_layers(layout: &Path) -> Result<Vec<(PathBuf, Option<String>)>, String> {
    let m = read_json(&layout_file(layout, Path::new("manifest.json"))?)?;
    let layers = m
        .get(0)
        .and_then(|e| e.get("Layers"))
        .and_then(Value::as_array)
        .ok_or("manifest.json has no Layers")?;
    layers
        .iter()
        .map(|l| {
            let s = l.as_str().ok_or("layer entry is not a string")?;
            let rel = sanitize(Path::new(s))?.ok_or("empty layer path")?;
            Ok((layout_file(layout, &rel)?, None))
        })
        .collect()
}
