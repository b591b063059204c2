//! Store records, layer seals, verify-on-use, delete and garbage collection.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::bake::chain_id;
use crate::{
    io_err, mountpoints_under, now_secs, remove_tree, rfc3339, tree_digest, unique_suffix,
    write_atomic, Flock, Image, ImageError, ImageStore,
};

/// What [`ImageStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// `sha256:<hex>` of each removed (unreferenced) layer.
    pub removed_layers: Vec<String>,
    /// Leftover temp dirs of crashed bakes / imports / exports.
    pub removed_tmp: Vec<PathBuf>,
    /// Disk blocks freed (bytes).
    pub freed_bytes: u64,
}

/// Written next to a layer once it is completely in the store
/// (`seals/<hex>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Seal {
    pub digest: String,
    pub files: u64,
    pub bytes: u64,
    pub sealed: String,
}

/// Disk usage (allocated blocks) of a tree, not following symlinks.
fn disk_usage(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        total += md.blocks() * 512;
        if md.is_dir() {
            if let Ok(rd) = fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

fn is_mountpoint(p: &Path) -> bool {
    let p = fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    mountpoints_under(&p).contains(&p)
}

fn is_hex_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl ImageStore {
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    fn seals_dir(&self) -> PathBuf {
        self.root.join("seals")
    }

    /// The (always empty) lower dir of bakes on `scratch`.
    pub(crate) fn scratch_dir(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// Store-wide lock: capture + register, delete, gc and imports.
    pub(crate) fn lock(&self) -> Result<Flock, ImageError> {
        fs::create_dir_all(&self.root).map_err(io_err(format!("mkdir {}", self.root.display())))?;
        Flock::exclusive(&self.root.join(".lock"))
    }

    fn read_seal(&self, hexd: &str) -> Option<Seal> {
        let data = fs::read(self.seals_dir().join(format!("{hexd}.json"))).ok()?;
        serde_json::from_slice(&data).ok()
    }

    fn write_seal(&self, layer: &Path, digest: &str) -> Result<(), ImageError> {
        let hexd = digest.trim_start_matches("sha256:");
        let (files, bytes) = crate::bake::tree_count(layer);
        let seal = Seal {
            digest: digest.to_string(),
            files,
            bytes,
            sealed: rfc3339(now_secs()),
        };
        fs::create_dir_all(self.seals_dir())
            .map_err(io_err(format!("mkdir {}", self.seals_dir().display())))?;
        let data = serde_json::to_vec_pretty(&seal).expect("seal serializes");
        write_atomic(&self.seals_dir().join(format!("{hexd}.json")), &data)
    }

    /// Seal a store layer that has none yet (layers of older versions),
    /// after checking its content against `digest`.
    pub(crate) fn ensure_seal(&self, layer: &Path, digest: &str) -> Result<(), ImageError> {
        let Some(hexd) = digest.strip_prefix("sha256:") else {
            return Ok(());
        };
        if self.read_seal(hexd).is_some_and(|s| s.digest == digest) {
            return Ok(());
        }
        let actual = tree_digest(layer)?;
        if actual != digest {
            return Err(ImageError::Tampered {
                image: String::new(),
                layer: layer.to_path_buf(),
                msg: format!("content is {actual}, recorded {digest}"),
            });
        }
        self.write_seal(layer, digest)
    }

    /// Move a finished tree into `layers/<hex>` (or reuse the identical
    /// layer already there) and seal it. The caller holds [`Self::lock`].
    pub(crate) fn install_layer(&self, tree: &Path) -> Result<(String, PathBuf), ImageError> {
        let digest = tree_digest(tree)?;
        let hexd = digest.trim_start_matches("sha256:").to_string();
        let layer = self.layers_dir().join(&hexd);
        if !layer.is_dir() {
            // The content is on disk before the layer appears under its digest, and the
            // rename is on disk before the image naming it is recorded.
            runtime::durable::sync_tree(tree)
                .map_err(io_err(format!("sync layer {}", tree.display())))?;
            match runtime::durable::rename_durable(tree, &layer) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    // tmp/ on another file system: copy, then rename.
                    let part = self
                        .layers_dir()
                        .join(format!(".tmp-{hexd}-{}", unique_suffix()));
                    let ok = Command::new("cp")
                        .arg("-a")
                        .arg(tree)
                        .arg(&part)
                        .status()
                        .is_ok_and(|s| s.success());
                    if !ok {
                        let _ = remove_tree(&part);
                        return Err(io_err(format!(
                            "copy layer {} into {}",
                            tree.display(),
                            layer.display()
                        ))(e));
                    }
                    runtime::durable::sync_tree(&part)
                        .and_then(|()| runtime::durable::rename_durable(&part, &layer))
                        .map_err(io_err(format!("move layer into {}", layer.display())))?;
                }
                Err(e) => {
                    return Err(io_err(format!("move layer into {}", layer.display()))(e));
                }
            }
            self.write_seal(&layer, &digest)?;
        } else {
            self.ensure_seal(&layer, &digest)?;
        }
        Ok((digest, layer))
    }

    /// Register `img` under its name; layers only the replaced record used
    /// are removed. The caller holds [`Self::lock`].
    pub(crate) fn register_locked(&self, img: &Image) -> Result<(), ImageError> {
        self.mkdirs()?;
        let previous = self.get(&img.name).ok().flatten();
        let data = serde_json::to_vec_pretty(img).map_err(|e| ImageError::Corrupt {
            path: self.images_dir(),
            msg: e.to_string(),
        })?;
        write_atomic(&self.images_dir().join(format!("{}.json", img.name)), &data)?;
        if let Some(prev) = previous {
            self.gc_layers(&prev.layers)?;
        }
        Ok(())
    }

    /// Remove those of `layers` (inside the store) that no image uses.
    fn gc_layers(&self, layers: &[PathBuf]) -> Result<(), ImageError> {
        let still_used: HashSet<PathBuf> =
            self.list()?.into_iter().flat_map(|i| i.layers).collect();
        let layers_dir = self.layers_dir();
        for l in layers {
            if l.starts_with(&layers_dir) && !still_used.contains(l) {
                remove_tree(l)?;
                if let Some(n) = l.file_name() {
                    let _ = fs::remove_file(
                        self.seals_dir()
                            .join(format!("{}.json", n.to_string_lossy())),
                    );
                }
            }
        }
        Ok(())
    }

    /// Fill in `layer_digests` / `id` of records written by older versions
    /// (one baked layer on a debian base).
    pub(crate) fn normalize(&self, mut img: Image) -> Image {
        if img.layer_digests.is_empty() && !img.layers.is_empty() {
            let mut d = vec![img.digest.clone()];
            if img.layers.len() == 2 && img.base.starts_with("debian:") {
                let id = self.base_id(&img.base).ok().flatten().unwrap_or_default();
                d.push(format!("{}@{id}", img.base));
            }
            if d.len() == img.layers.len() {
                img.layer_digests = d;
            }
        }
        if img.id.is_empty() && !img.layer_digests.is_empty() {
            img.id = chain_id(&img.layer_digests);
        }
        img
    }

    pub fn get(&self, name: &str) -> Result<Option<Image>, ImageError> {
        if !crate::valid_name(name) {
            return Ok(None);
        }
        let p = self.images_dir().join(format!("{name}.json"));
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("read {}", p.display()))(e)),
        };
        serde_json::from_slice(&data)
            .map(|i| Some(self.normalize(i)))
            .map_err(|e| ImageError::Corrupt {
                path: p,
                msg: e.to_string(),
            })
    }

    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let dir = self.images_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(format!("read {}", dir.display()))(e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(String::from)
            })
            .collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            if let Some(img) = self.get(&n)? {
                out.push(img);
            }
        }
        Ok(out)
    }

    /// Unregister; each layer is removed unless another image uses it
    /// (a parent's layers stay while a layered child exists).
    pub fn delete(&self, name: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let Some(img) = self.get(name)? else {
            return Ok(());
        };
        let p = self.images_dir().join(format!("{name}.json"));
        runtime::durable::remove_durable(&p).map_err(io_err(format!("remove {}", p.display())))?;
        self.gc_layers(&img.layers)
    }

    /// Check one layer of `img`; `Err(msg)` says what is wrong.
    fn check_layer(&self, layer: &Path, digest: &str) -> Result<Result<(), String>, ImageError> {
        if let Some(hexd) = digest.strip_prefix("sha256:") {
            if layer != self.layers_dir().join(hexd) {
                return Ok(Err(format!("is not the store's layer for {digest}")));
            }
            if !layer.is_dir() {
                return Ok(Err("is missing".into()));
            }
            let sealed = match self.read_seal(hexd) {
                Some(s) if s.digest == digest => true,
                Some(_) => return Ok(Err("has a seal for other content".into())),
                // Layers captured by an older scaleset have no seal; they were registered only
                // after their capture completed, so seal them once their content checks out.
                None => false,
            };
            let actual = tree_digest(layer)?;
            if actual != digest {
                return Ok(Err(format!("content is {actual}, recorded {digest}")));
            }
            if !sealed {
                self.write_seal(layer, digest)?;
            }
            Ok(Ok(()))
        } else if let Some((base, id)) = digest.rsplit_once('@') {
            if !layer.is_dir() {
                return Ok(Err(format!("base rootfs of {base} is missing")));
            }
            match self.base_id(base) {
                Ok(Some(cur)) if cur == id => Ok(Ok(())),
                _ => Ok(Err(format!(
                    "base {base} was rebuilt or removed (image built on {id})"
                ))),
            }
        } else {
            Ok(Err(format!("unknown layer digest {digest:?}")))
        }
    }

    /// Re-hash every store layer of `img` (and check the debian base id).
    pub fn verify(&self, img: &Image) -> Result<bool, ImageError> {
        let img = self.normalize(img.clone());
        if img.layers.is_empty() || img.layer_digests.len() != img.layers.len() {
            return Ok(false);
        }
        for (l, d) in img.layers.iter().zip(&img.layer_digests) {
            if self.check_layer(l, d)?.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The image, checked for use: every store layer must be sealed and
    /// re-hash to its recorded digest (a debian base rootfs must still be
    /// the build the image was baked on). Store layers are made read-only
    /// (a read-only bind mount of `layers/<hex>` onto itself, which does
    /// not change the modes the guest sees; re-done after a reboot by the
    /// next call). A tampered layer → [`ImageError::Tampered`] naming it.
    pub fn open_for_use(&self, name: &str) -> Result<Image, ImageError> {
        // A store created by an older version may still be world-traversable.
        crate::private_dir(&self.root)?;
        let img = self
            .get(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        if img.layers.is_empty() || img.layer_digests.len() != img.layers.len() {
            return Err(ImageError::Corrupt {
                path: self.images_dir().join(format!("{name}.json")),
                msg: "layers and layer_digests do not match".into(),
            });
        }
        for (l, d) in img.layers.iter().zip(&img.layer_digests) {
            if d.starts_with("sha256:") && l.is_dir() {
                self.make_read_only(l)?;
            }
            if let Err(msg) = self.check_layer(l, d)? {
                return Err(ImageError::Tampered {
                    image: name.to_string(),
                    layer: l.clone(),
                    msg,
                });
            }
        }
        Ok(img)
    }

    /// Read-only bind mount of a layer onto itself (idempotent).
    fn make_read_only(&self, layer: &Path) -> Result<(), ImageError> {
        if is_mountpoint(layer) {
            return Ok(());
        }
        use nix::mount::{mount, MsFlags};
        let err = |what: &str| {
            let what = format!("{what} {}", layer.display());
            move |e: nix::errno::Errno| ImageError::Io {
                what,
                source: io::Error::from(e),
            }
        };
        mount(
            Some(layer),
            layer,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(err("bind-mount"))?;
        if let Err(e) = mount(
            None::<&str>,
            layer,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        ) {
            let _ = nix::mount::umount2(layer, nix::mount::MntFlags::MNT_DETACH);
            return Err(err("remount read-only")(e));
        }
        Ok(())
    }

    /// Undo the read-only bind mounts of [`Self::open_for_use`] (before
    /// removing a whole store directory with `rm -rf`, e.g. in tests).
    pub fn unmount_layers(&self) {
        crate::unmount_under(&self.layers_dir());
    }

    /// Remove layers no image references, seals without a layer, and temp
    /// dirs of crashed bakes/imports/exports (those whose `lock` is free,
    /// or without one and older than a minute).
    pub fn gc(&self) -> Result<GcReport, ImageError> {
        self.mkdirs()?;
        let _lock = self.lock()?;
        let used: HashSet<PathBuf> = self.list()?.into_iter().flat_map(|i| i.layers).collect();
        let mut rep = GcReport::default();
        let rd = fs::read_dir(self.layers_dir())
            .map_err(io_err(format!("read {}", self.layers_dir().display())))?;
        for e in rd.flatten() {
            let p = e.path();
            if used.contains(&p) {
                continue;
            }
            let n = e.file_name().to_string_lossy().into_owned();
            rep.freed_bytes += disk_usage(&p);
            if p.is_dir() {
                remove_tree(&p)?;
            } else {
                fs::remove_file(&p).map_err(io_err(format!("remove {}", p.display())))?;
            }
            if is_hex_digest(&n) {
                rep.removed_layers.push(format!("sha256:{n}"));
            }
        }
        if let Ok(rd) = fs::read_dir(self.seals_dir()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let hexd = n.strip_suffix(".json").unwrap_or(&n);
                if !self.layers_dir().join(hexd).is_dir() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let tmp = self.root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let p = e.path();
                let stale = match Flock::try_exclusive(&p.join("lock")) {
                    Ok(Some(_)) => true,
                    Ok(None) => false,
                    Err(_) => fs::symlink_metadata(&p)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| SystemTime::now().duration_since(m).ok())
                        .is_some_and(|age| age > Duration::from_secs(60)),
                };
                if stale {
                    rep.freed_bytes += disk_usage(&p);
                    if p.is_dir() {
                        remove_tree(&p)?;
                    } else {
                        let _ = fs::remove_file(&p);
                    }
                    rep.removed_tmp.push(p);
                }
            }
        }
        Ok(rep)
    }
}
