//! Content-addressed pipeline artifacts.
//!
//! # For the daemon
//!
//! [`ArtifactStore::new`]`(root)`; the runner's tasks publish into it and download from it.
//! Layout: `root/blobs/<sha256>` (each distinct file content once) and
//! `root/runs/<run_id>/<name>.json` ([`Manifest`]). [`ArtifactStore::list`] gives the artifacts
//! of a run (for `scaleset run show`), [`ArtifactStore::download`] restores one into a directory
//! (the release pipeline's `download:` step; also usable for a CLI `artifact download`),
//! [`ArtifactStore::delete_run`] + [`ArtifactStore::gc`] reclaim space for pruned runs.
//!
//! The artifact digest ([`ArtifactRef::digest`]) is the sha256 of the canonical tree walk:
//! for every file in byte order of its `/`-separated relative path, the line
//! `<path>\0<mode>\0<sha256 of content>\n` where mode is `755` for executables, else `644`.
//! Two artifacts with the same files, contents and executable bits have the same digest.

use crate::sandbox::{self, Identity, PathError, Workspace};
use runtime::durable::{atomic_write, fsync_dir};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A published artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    /// The run that published it.
    pub run_id: u64,
    /// The pipeline of that run.
    pub pipeline: String,
    /// `sha256:<hex>` of the canonical tree walk (see the module docs).
    pub digest: String,
    /// Number of files.
    pub files: usize,
    /// Total size of the files.
    pub bytes: u64,
}

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub executable: bool,
}

/// `runs/<run_id>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub artifact: ArtifactRef,
    /// Unix time in milliseconds.
    pub created_ms: u64,
    pub entries: Vec<FileEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid artifact name `{0}`: use letters, digits, `.`, `_`, `-` and spaces")]
    InvalidName(String),
    #[error("artifact `{name}` already exists in run {run_id}")]
    Exists { run_id: u64, name: String },
    #[error("artifact `{name}` was not found in run {run_id}")]
    NotFound { run_id: u64, name: String },
    #[error("run {run_id} belongs to pipeline `{actual}`, not `{expected}`")]
    WrongPipeline {
        run_id: u64,
        expected: String,
        actual: String,
    },
    #[error("nothing to publish: {0} does not exist")]
    Missing(PathBuf),
    #[error(transparent)]
    Path(crate::sandbox::PathError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt manifest {0}: {1}")]
    Corrupt(PathBuf, String),
}

/// The store.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

use sys::clock::now_ms;

/// Artifact names: 1–100 of letters, digits, `.`, `_`, `-`, space; not `.`/`..`.
pub fn validate_artifact_name(name: &str) -> Result<(), ArtifactError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ' '));
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::InvalidName(name.to_string()))
    }
}

impl From<PathError> for ArtifactError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                ArtifactError::Missing(PathBuf::from(path))
            }
            e => ArtifactError::Path(e),
        }
    }
}

/// Copies `src` into a new file `tmp`, hashing what was copied; fsynced.
fn copy_hashed(src: &mut std::fs::File, tmp: &Path) -> std::io::Result<(String, u64)> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(tmp)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let r = src.read(&mut buf)?;
        if r == 0 {
            break;
        }
        n += r as u64;
        h.update(&buf[..r]);
        out.write_all(&buf[..r])?;
    }
    out.sync_all()?;
    Ok((hex::encode(h.finalize()), n))
}

/// The digest of a list of entries (see the module docs).
pub fn tree_digest(entries: &[FileEntry]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        let mode = if e.executable { "755" } else { "644" };
        h.update(format!("{}\0{mode}\0{}\n", e.path, e.sha256).as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Minimal glob for download `patterns`: `**` any number of path segments, `*` within a
/// segment, `?` one character. Case-sensitive.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn segs(p: &[&str], t: &[&str]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((&"**", rest)) => (0..=t.len()).any(|i| segs(rest, &t[i..])),
            Some((first, rest)) => {
                !t.is_empty() && seg_match(first, t[0]) && !t[0].is_empty() && segs(rest, &t[1..])
            }
        }
    }
    fn seg_match(p: &str, t: &str) -> bool {
        !t.contains('/') && crate::trigger::wildcard_match(p, t)
    }
    let p: Vec<&str> = pattern.trim().trim_start_matches("./").split('/').collect();
    let t: Vec<&str> = path.split('/').collect();
    segs(&p, &t)
}

/// Download patterns (one per line or comma-separated; `!pattern` excludes): does `path` pass?
/// Empty patterns match everything.
pub fn patterns_match(patterns: &str, path: &str) -> bool {
    let pats: Vec<&str> = patterns
        .split(['\n', ','])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if pats.is_empty() {
        return true;
    }
    let mut included = pats.iter().all(|p| p.starts_with('!'));
    for p in pats {
        if let Some(ex) = p.strip_prefix('!') {
            if glob_match(ex, path) {
                included = false;
            }
        } else if glob_match(p, path) {
            included = true;
        }
    }
    included
}

impl ArtifactStore {
    pub fn new(root: impl Into<PathBuf>) -> ArtifactStore {
        ArtifactStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob(&self, sha: &str) -> PathBuf {
        self.root.join("blobs").join(sha)
    }

    fn run_dir(&self, run_id: u64) -> PathBuf {
        self.root.join("runs").join(run_id.to_string())
    }

    fn manifest_path(&self, run_id: u64, name: &str) -> PathBuf {
        self.run_dir(run_id).join(format!("{name}.json"))
    }

    /// Publish the files below `rel` (a directory or a single file) of the job's workspace
    /// `ws` as artifact `name` of a run. The files are found and opened as `id` (the runner
    /// user) beneath `ws` ([`crate::sandbox::Workspace::walk`]): no path or symlink leads out.
    /// File contents are stored once by sha256; a name can be published once per run. Blobs
    /// and the manifest are on disk (fsynced) before this returns.
    pub fn publish(
        &self,
        run_id: u64,
        pipeline: &str,
        name: &str,
        ws: &Path,
        rel: &Path,
        id: Option<Identity>,
    ) -> Result<ArtifactRef, ArtifactError> {
        validate_artifact_name(name)?;
        let mpath = self.manifest_path(run_id, name);
        if mpath.exists() {
            return Err(ArtifactError::Exists {
                run_id,
                name: name.to_string(),
            });
        }
        let (ws, rel) = (ws.to_path_buf(), rel.to_path_buf());
        let files = sandbox::as_user(id, move || -> Result<_, ArtifactError> {
            Ok(Workspace::open(&ws)?.walk(&rel)?)
        })??;
        let blobs = self.root.join("blobs");
        std::fs::create_dir_all(&blobs)?;
        let mut entries = Vec::new();
        for mut f in files {
            let tmp = blobs.join(format!(".tmp-{}-{}", std::process::id(), now_ms()));
            let copied = copy_hashed(&mut f.file, &tmp);
            let (sha, size) = match copied {
                Ok(x) => x,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e.into());
                }
            };
            let blob = self.blob(&sha);
            if blob.exists() {
                std::fs::remove_file(&tmp)?;
            } else {
                std::fs::rename(&tmp, &blob)?;
            }
            entries.push(FileEntry {
                path: f.rel,
                sha256: sha,
                size,
                executable: f.executable,
            });
        }
        fsync_dir(&blobs)?;
        let artifact = ArtifactRef {
            name: name.to_string(),
            run_id,
            pipeline: pipeline.to_string(),
            digest: tree_digest(&entries),
            files: entries.len(),
            bytes: entries.iter().map(|e| e.size).sum(),
        };
        let m = Manifest {
            artifact: artifact.clone(),
            created_ms: now_ms(),
            entries,
        };
        let run_dir = self.run_dir(run_id);
        if !run_dir.exists() {
            std::fs::create_dir_all(&run_dir)?;
            fsync_dir(run_dir.parent().unwrap_or(&self.root))?;
        }
        atomic_write(
            &mpath,
            &serde_json::to_vec_pretty(&m).map_err(std::io::Error::other)?,
        )?;
        Ok(artifact)
    }

    /// The manifest of an artifact, `Ok(None)` if the run has no artifact of that name.
    pub fn manifest(&self, run_id: u64, name: &str) -> Result<Option<Manifest>, ArtifactError> {
        validate_artifact_name(name)?;
        let p = self.manifest_path(run_id, name);
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| ArtifactError::Corrupt(p, e.to_string()))
    }

    /// The artifacts of a run, by name.
    pub fn list(&self, run_id: u64) -> Result<Vec<ArtifactRef>, ArtifactError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(self.run_dir(run_id)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = f.strip_suffix(".json") {
                if let Some(m) = self.manifest(run_id, name)? {
                    out.push(m.artifact);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Write an artifact's files (those passing `patterns`, see [`patterns_match`]; `None` = all)
    /// below `rel` of the job's workspace `ws`, as `id` (the runner user) beneath `ws`: a
    /// symlink the job planted on the way is replaced or refused, never followed out.
    /// `pipeline`, when given, must be the pipeline of the run. Returns the number of files
    /// written.
    #[allow(clippy::too_many_arguments)]
    pub fn download(
        &self,
        pipeline: Option<&str>,
        run_id: u64,
        name: &str,
        ws: &Path,
        rel: &Path,
        patterns: Option<&str>,
        id: Option<Identity>,
    ) -> Result<usize, ArtifactError> {
        let m = self
            .manifest(run_id, name)?
            .ok_or_else(|| ArtifactError::NotFound {
                run_id,
                name: name.to_string(),
            })?;
        if let Some(p) = pipeline {
            if !m.artifact.pipeline.eq_ignore_ascii_case(p) {
                return Err(ArtifactError::WrongPipeline {
                    run_id,
                    expected: p.to_string(),
                    actual: m.artifact.pipeline,
                });
            }
        }
        // Blobs are the daemon's: opened here, written out by the runner user's thread.
        let mut files = Vec::new();
        for e in &m.entries {
            if e.path
                .split('/')
                .any(|s| s == ".." || s == "." || s.is_empty())
            {
                return Err(ArtifactError::Corrupt(
                    self.manifest_path(run_id, name),
                    format!("bad path `{}`", e.path),
                ));
            }
            if patterns.is_none_or(|p| patterns_match(p, &e.path)) {
                let mode = if e.executable { 0o755 } else { 0o644 };
                files.push((
                    e.path.clone(),
                    std::fs::File::open(self.blob(&e.sha256))?,
                    mode,
                ));
            }
        }
        let n = files.len();
        let (ws, rel) = (ws.to_path_buf(), rel.to_path_buf());
        sandbox::as_user(id, move || -> Result<(), ArtifactError> {
            let w = Workspace::open(&ws)?;
            w.create_dirs(&rel)?;
            for (path, mut src, mode) in files {
                let mut f = w.create_file(&rel.join(path), mode)?;
                std::io::copy(&mut src, &mut f)?;
            }
            Ok(())
        })??;
        Ok(n)
    }

    /// A private copy of the folder `rel` of the job's workspace `ws` (read as `id` beneath
    /// `ws`, like [`publish`](Self::publish)), at `<returned dir>/<last component of rel>`,
    /// in a folder only the daemon can enter. Modes keep only the executable bit (no setuid).
    /// Remove the returned directory when done.
    pub fn stage(
        &self,
        ws: &Path,
        rel: &Path,
        id: Option<Identity>,
    ) -> Result<PathBuf, ArtifactError> {
        let (w, r) = (ws.to_path_buf(), rel.to_path_buf());
        let (files, is_dir) = sandbox::as_user(id, move || -> Result<_, ArtifactError> {
            let w = Workspace::open(&w)?;
            let is_dir = w.kind(&r)?.is_some_and(|k| k.is_dir());
            Ok((w.walk(&r)?, is_dir))
        })??;
        if !is_dir {
            return Err(ArtifactError::Io(std::io::Error::other(format!(
                "{} is not a directory",
                ws.join(rel).display()
            ))));
        }
        let stage = self
            .root
            .join("stage")
            .join(format!("{}-{}", std::process::id(), now_ms()));
        let top = stage.join(rel.file_name().unwrap_or("package".as_ref()));
        std::fs::create_dir_all(&top)?;
        let copy = || -> std::io::Result<()> {
            for mut f in files {
                let to = top.join(&f.rel);
                if let Some(p) = to.parent() {
                    std::fs::create_dir_all(p)?;
                }
                let mode = if f.executable { 0o755 } else { 0o644 };
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&to)?;
                std::io::copy(&mut f.file, &mut out)?;
            }
            Ok(())
        };
        if let Err(e) = copy() {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e.into());
        }
        Ok(stage)
    }

    /// Download by [`ArtifactRef`] into `dest` (a directory the caller owns).
    pub fn download_ref(&self, r: &ArtifactRef, dest: &Path) -> Result<usize, ArtifactError> {
        std::fs::create_dir_all(dest)?;
        self.download(
            Some(&r.pipeline),
            r.run_id,
            &r.name,
            dest,
            Path::new(""),
            None,
            None,
        )
    }

    /// Forget a run's artifacts (blobs stay until [`gc`](Self::gc)).
    pub fn delete_run(&self, run_id: u64) -> Result<(), ArtifactError> {
        match std::fs::remove_dir_all(self.run_dir(run_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Remove blobs no manifest refers to; returns how many were removed.
    pub fn gc(&self) -> Result<usize, ArtifactError> {
        let mut live = std::collections::HashSet::new();
        if let Ok(runs) = std::fs::read_dir(self.root.join("runs")) {
            for r in runs.flatten() {
                for m in std::fs::read_dir(r.path())?.flatten() {
                    let p = m.path();
                    if p.extension().is_some_and(|e| e == "json") {
                        let data = std::fs::read(&p)?;
                        let man: Manifest = serde_json::from_slice(&data)
                            .map_err(|e| ArtifactError::Corrupt(p.clone(), e.to_string()))?;
                        live.extend(man.entries.into_iter().map(|e| e.sha256));
                    }
                }
            }
        }
        let mut n = 0;
        if let Ok(blobs) = std::fs::read_dir(self.root.join("blobs")) {
            for b in blobs.flatten() {
                let f = b.file_name().to_string_lossy().into_owned();
                if !f.starts_with('.') && !live.contains(&f) {
                    std::fs::remove_file(b.path())?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("**", "a/b/c", true),
            ("**/*.sh", "setupscript.sh", true),
            ("**/*.sh", "x/y/setupscript.sh", true),
            ("*.sh", "x/setupscript.sh", false),
            ("nginx/*", "nginx/my_app", true),
            ("nginx/*", "nginx/a/b", false),
            ("nginx/**", "nginx/a/b", true),
            ("my_app", "my_app", true),
            ("m?_app", "my_app", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
        assert!(patterns_match("**\n!**/*.md", "a/b.sh"));
        assert!(!patterns_match("**\n!**/*.md", "a/b.md"));
        assert!(patterns_match("!*.md", "x.sh"));
        assert!(patterns_match("", "x"));
    }

    #[test]
    fn publish_dedup_download() {
        let base = std::env::temp_dir().join(format!("artifacts-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let src = base.join("src");
        std::fs::create_dir_all(src.join("nginx")).unwrap();
        std::fs::write(src.join("my_app"), b"binary").unwrap();
        std::fs::set_permissions(src.join("my_app"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(src.join("nginx/my_app"), b"server {}").unwrap();
        std::fs::write(src.join("copy"), b"binary").unwrap();
        let store = ArtifactStore::new(base.join("store"));
        let a = store
            .publish(1, "ci", "drop", &base, Path::new("src"), None)
            .unwrap();
        assert_eq!((a.files, a.bytes), (3, 6 + 9 + 6));
        assert!(matches!(
            store.publish(1, "ci", "drop", &base, Path::new("src"), None),
            Err(ArtifactError::Exists { .. })
        ));
        let b = store
            .publish(2, "ci", "drop", &base, Path::new("src"), None)
            .unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(
            std::fs::read_dir(base.join("store/blobs")).unwrap().count(),
            2
        );
        let dest = base.join("dest");
        assert_eq!(store.download_ref(&a, &dest).unwrap(), 3);
        assert_eq!(
            std::fs::read(dest.join("nginx/my_app")).unwrap(),
            b"server {}"
        );
        let mode = std::fs::metadata(dest.join("my_app"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            store
                .download(
                    None,
                    1,
                    "drop",
                    &base,
                    Path::new("only"),
                    Some("nginx/**"),
                    None
                )
                .unwrap(),
            1
        );
        assert!(base.join("only/nginx/my_app").is_file() && !base.join("only/my_app").exists());
        assert!(matches!(
            store.download(
                Some("other"),
                1,
                "drop",
                &base,
                Path::new("only"),
                None,
                None
            ),
            Err(ArtifactError::WrongPipeline { .. })
        ));
        assert_eq!(store.list(1).unwrap(), vec![a.clone()]);
        std::fs::write(src.join("copy"), b"changed").unwrap();
        let c = store
            .publish(3, "ci", "drop", &base, Path::new("src"), None)
            .unwrap();
        assert_ne!(c.digest, a.digest);
        store.delete_run(1).unwrap();
        store.delete_run(2).unwrap();
        assert_eq!(store.gc().unwrap(), 0);
        store.delete_run(3).unwrap();
        assert_eq!(store.gc().unwrap(), 3);
        assert!(store.list(1).unwrap().is_empty());
        assert!(validate_artifact_name("../x").is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
