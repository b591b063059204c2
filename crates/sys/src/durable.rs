//! Durable file writes outside SQLite: a file (or directory rename) is reported done only once
//! its data and the directory entry naming it are on disk, so a host crash right after an
//! acknowledgement cannot lose it or leave a half-written file under the real name.
//!
//! Process crashes alone never lose written data (the page cache survives them); these calls
//! matter for power loss and kernel crashes.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `fsync` a directory, making the entries created, renamed or removed in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `data` to `path` atomically and durably with mode 0644: a temp file in the same
/// directory, `fsync`, `rename` over `path`, `fsync` of the directory. Readers see the old
/// content or the new one, never a mix; after return the new content survives a host crash.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    atomic_write_mode(path, data, 0o644)
}

/// [`atomic_write`] with the file created with `mode` (e.g. 0o600 for secrets: the temp file
/// has the mode from its creation on, so the content is never readable by others).
pub fn atomic_write_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let dir = parent_of(path);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        unique()
    ));
    let r = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r?;
    fsync_dir(dir)
}

/// `rename(from, to)` made durable: both parent directories are synced afterwards. The caller
/// makes the content durable first (see [`sync_tree`]) when `from` is a directory tree.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    fsync_dir(parent_of(to))?;
    let (a, b) = (parent_of(from), parent_of(to));
    if a != b {
        fsync_dir(a)?;
    }
    Ok(())
}

/// Remove a file and make the removal durable (a deleted record does not come back).
pub fn remove_durable(path: &Path) -> io::Result<()> {
    fs::remove_file(path)?;
    fsync_dir(parent_of(path))
}

/// Make everything written below `root` durable before it is published (e.g. renamed into a
/// store): one `syncfs` of its file system, which costs far less than an `fsync` per file of
/// a tree with thousands of entries (it also flushes other dirty data of that file system).
pub fn sync_tree(root: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(root)?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let d =
            std::env::temp_dir().join(format!("ss-durable-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&d).unwrap();
        let p = d.join("rec.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        atomic_write_mode(&d.join("secret"), b"s", 0o600).unwrap();
        let mode = fs::metadata(d.join("secret")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A failed write (no such directory) leaves nothing behind and says why.
        let err = atomic_write(&d.join("missing/x"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        rename_durable(&p, &d.join("moved.json")).unwrap();
        assert_eq!(fs::read(d.join("moved.json")).unwrap(), b"two");
        remove_durable(&d.join("moved.json")).unwrap();
        sync_tree(&d).unwrap();
        fs::remove_dir_all(&d).unwrap();
    }
}
