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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
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
    #[error("{0}: symbolic links pointing outside the artifact are not supported")]
    Symlink(PathBuf),
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        n += r as u64;
        h.update(&buf[..r]);
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Regular files below `dir` (symlinks to files inside `dir` are followed), relative paths.
fn walk(dir: &Path) -> Result<Vec<(String, PathBuf)>, ArtifactError> {
    let root = dir.canonicalize()?;
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((rel, p)) = stack.pop() {
        for e in std::fs::read_dir(&p)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let path = e.path();
            let ft = e.file_type()?;
            if ft.is_symlink() {
                let target = path
                    .canonicalize()
                    .map_err(|_| ArtifactError::Symlink(path.clone()))?;
                if !target.starts_with(&root) || !target.is_file() {
                    return Err(ArtifactError::Symlink(path));
                }
                out.push((rel, target));
            } else if ft.is_dir() {
                stack.push((rel, path));
            } else if ft.is_file() {
                out.push((rel, path));
            }
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
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

    /// Publish the files below `dir` (or the single file `dir`) as artifact `name` of a run.
    /// File contents are stored once by sha256; a name can be published once per run.
    pub fn publish(
        &self,
        run_id: u64,
        pipeline: &str,
        name: &str,
        dir: &Path,
    ) -> Result<ArtifactRef, ArtifactError> {
        validate_artifact_name(name)?;
        let mpath = self.manifest_path(run_id, name);
        if mpath.exists() {
            return Err(ArtifactError::Exists {
                run_id,
                name: name.to_string(),
            });
        }
        let files = if dir.is_dir() {
            walk(dir)?
        } else if dir.is_file() {
            let n = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            vec![(n, dir.to_path_buf())]
        } else {
            return Err(ArtifactError::Missing(dir.to_path_buf()));
        };
        std::fs::create_dir_all(self.root.join("blobs"))?;
        let mut entries = Vec::new();
        for (rel, path) in files {
            let (sha, size) = sha256_file(&path)?;
            let executable = std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0;
            let blob = self.blob(&sha);
            if !blob.exists() {
                let tmp = self.root.join("blobs").join(format!(
                    ".tmp-{sha}-{}-{}",
                    std::process::id(),
                    now_ms()
                ));
                std::fs::copy(&path, &tmp)?;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
                // The content was hashed before the copy; check the copy is what was hashed.
                let (sha2, _) = sha256_file(&tmp)?;
                if sha2 != sha {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(ArtifactError::Io(std::io::Error::other(format!(
                        "{} changed while it was being published",
                        path.display()
                    ))));
                }
                std::fs::rename(&tmp, &blob)?;
            }
            entries.push(FileEntry {
                path: rel,
                sha256: sha,
                size,
                executable,
            });
        }
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
        std::fs::create_dir_all(self.run_dir(run_id))?;
        let tmp = mpath.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&m).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &mpath)?;
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
    /// below `dest`. `pipeline`, when given, must be the pipeline of the run. Returns the
    /// number of files written.
    pub fn download(
        &self,
        pipeline: Option<&str>,
        run_id: u64,
        name: &str,
        dest: &Path,
        patterns: Option<&str>,
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
        std::fs::create_dir_all(dest)?;
        let mut n = 0;
        for e in &m.entries {
            if e.path.split('/').any(|s| s == ".." || s.is_empty()) {
                return Err(ArtifactError::Corrupt(
                    self.manifest_path(run_id, name),
                    format!("bad path `{}`", e.path),
                ));
            }
            if !patterns.is_none_or(|p| patterns_match(p, &e.path)) {
                continue;
            }
            let to = dest.join(&e.path);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let _ = std::fs::remove_file(&to);
            std::fs::copy(self.blob(&e.sha256), &to)?;
            let mode = if e.executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
            n += 1;
        }
        Ok(n)
    }

    /// Download by [`ArtifactRef`].
    pub fn download_ref(&self, r: &ArtifactRef, dest: &Path) -> Result<usize, ArtifactError> {
        self.download(Some(&r.pipeline), r.run_id, &r.name, dest, None)
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
        let a = store.publish(1, "ci", "drop", &src).unwrap();
        assert_eq!((a.files, a.bytes), (3, 6 + 9 + 6));
        assert!(matches!(
            store.publish(1, "ci", "drop", &src),
            Err(ArtifactError::Exists { .. })
        ));
        let b = store.publish(2, "ci", "drop", &src).unwrap();
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
        let only = base.join("only");
        assert_eq!(
            store
                .download(None, 1, "drop", &only, Some("nginx/**"))
                .unwrap(),
            1
        );
        assert!(matches!(
            store.download(Some("other"), 1, "drop", &only, None),
            Err(ArtifactError::WrongPipeline { .. })
        ));
        assert_eq!(store.list(1).unwrap(), vec![a.clone()]);
        std::fs::write(src.join("copy"), b"changed").unwrap();
        let c = store.publish(3, "ci", "drop", &src).unwrap();
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
