//! Bounding a scope's download cache (`images/download-cache/<scope>`): bakes fill it (apt's
//! archives, pip's wheels) and nothing else would ever empty it. After each bake that used it,
//! the oldest files go until it is back under its cap. The choice is a pure function
//! ([`to_remove`]); the walk never follows a link, since a bake wrote the cache's contents.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The cap when the daemon sets none: 4 GiB per scope.
pub const DEFAULT_CAP_BYTES: u64 = 4 << 30;

/// A regular file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// Which files to remove so the cache holds at most `cap` bytes: none while it is within the
/// cap; once over, the least recently modified first, down to 3/4 of the cap, so that the
/// next bakes do not each trim a little.
pub fn to_remove(mut entries: Vec<Entry>, cap: u64) -> Vec<PathBuf> {
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    if total <= cap {
        return Vec::new();
    }
    let goal = cap / 4 * 3;
    entries.sort_by(|a, b| a.modified.cmp(&b.modified).then(a.path.cmp(&b.path)));
    let mut out = Vec::new();
    for e in entries {
        if total <= goal {
            break;
        }
        total -= e.bytes;
        out.push(e.path);
    }
    out
}

/// The regular files below `dir`, without following links (at most `limit` of them).
fn walk(dir: &Path, limit: usize, out: &mut Vec<Entry>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        if out.len() >= limit {
            return Ok(());
        }
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&e.path(), limit, out)?;
        } else if ft.is_file() {
            let md = e.metadata()?;
            let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(Entry {
                path: e.path(),
                bytes: md.len(),
                modified,
            });
        }
    }
    Ok(())
}

/// Trims the cache at `dir` to `cap` bytes; returns (files removed, bytes before).
pub fn trim(dir: &Path, cap: u64) -> io::Result<(usize, u64)> {
    let mut entries = Vec::new();
    walk(dir, 1_000_000, &mut entries)?;
    let before = entries.iter().map(|e| e.bytes).sum();
    let gone = to_remove(entries, cap);
    for p in &gone {
        // A file, never a directory or a link's target: the walk saw a regular file here.
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((gone.len(), before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn e(name: &str, bytes: u64, age: u64) -> Entry {
        Entry {
            path: PathBuf::from(name),
            bytes,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age),
        }
    }

    #[test]
    fn oldest_go_first_down_to_three_quarters() {
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter().map(|p| p.display().to_string()).collect()
        };
        type Case = (Vec<Entry>, u64, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (vec![], 100, vec![]),
            (vec![e("a", 60, 5), e("b", 40, 1)], 100, vec![]),
            // 101 > 100: down to 75, oldest first.
            (vec![e("new", 40, 1), e("old", 61, 9)], 100, vec!["old"]),
            (
                vec![e("a", 30, 3), e("b", 30, 2), e("c", 30, 1), e("d", 30, 4)],
                100,
                vec!["d", "a"],
            ),
            // One file bigger than the cap goes, even if it is the newest.
            (vec![e("big", 500, 0), e("x", 10, 8)], 100, vec!["x", "big"]),
            // Ties in age: by path, so the choice is the same every time.
            (vec![e("b", 60, 2), e("a", 60, 2)], 100, vec!["a"]),
            (vec![e("a", 1, 1)], 0, vec!["a"]),
        ];
        for (entries, cap, want) in cases {
            let got = names(to_remove(entries.clone(), cap));
            assert_eq!(got, want, "{entries:?} cap {cap}");
        }
    }

    #[test]
    fn trim_removes_files_and_never_follows_links() {
        let t = std::env::temp_dir().join(format!("scaleset-cache-trim-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        let (cache, outside) = (t.join("cache"), t.join("outside"));
        fs::create_dir_all(cache.join("apt/partial")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("precious"), vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink(&outside, cache.join("apt/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious"), cache.join("f")).unwrap();
        fs::write(cache.join("apt/a.deb"), vec![0u8; 3000]).unwrap();
        fs::write(cache.join("apt/partial/b.deb"), vec![0u8; 3000]).unwrap();
        let (gone, before) = trim(&cache, 4000).unwrap();
        assert_eq!((gone, before), (1, 6000));
        assert!(outside.join("precious").exists());
        assert_eq!(trim(&cache, 4000).unwrap(), (0, 3000));
        let _ = fs::remove_dir_all(&t);
    }
}
