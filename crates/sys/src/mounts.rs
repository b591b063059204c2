//! The mount table (`/proc/self/mountinfo`).
use std::fs;
use std::path::{Path, PathBuf};

/// Every mount point, unescaped (`\040` is a space, as in any octal escape).
pub fn mountpoints() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .collect()
}

pub fn is_mountpoint(p: &Path) -> bool {
    mountpoints().iter().any(|mp| mp == p)
}

/// Mount points at or below `p`, deepest first (the order to unmount them in).
pub fn mountpoints_under(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountpoints()
        .into_iter()
        .filter(|mp| mp.starts_with(p))
        .collect();
    v.sort_by_key(|b| std::cmp::Reverse(b.as_os_str().len()));
    v
}

/// Lazily unmounts `p` (MNT_DETACH: gone from the tree now, released when no longer busy).
pub fn detach(p: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path; umount2 does not keep it.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|t| u8::from_str_radix(t, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape_and_root() {
        assert_eq!(super::unescape("/a\\040b"), "/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
        assert!(super::is_mountpoint(std::path::Path::new("/")));
        let under = super::mountpoints_under(std::path::Path::new("/"));
        assert_eq!(
            under.last().map(|p| p.as_path()),
            Some(std::path::Path::new("/"))
        );
    }
}
