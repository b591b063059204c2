//! Exclusive `flock(2)` on a lock file, released on drop (or when the process dies).
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct Flock(fs::File);

fn open(path: &Path, create: bool) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(create)
        .truncate(false)
        .write(true)
        .open(path)
}

impl Flock {
    /// Waits for the lock, creating the file if needed.
    pub fn exclusive(path: &Path) -> io::Result<Flock> {
        let f = open(path, true)?;
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Non-blocking, on an existing lock file: `Ok(None)` when held elsewhere, `Err` when the
    /// file cannot be opened.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<Flock>> {
        let f = open(path, false)?;
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((r == 0).then_some(Flock(f)))
    }

    /// Non-blocking, creating the lock file if needed: `Ok(None)` when held elsewhere.
    pub fn try_create_exclusive(path: &Path) -> io::Result<Option<Flock>> {
        open(path, true)?;
        Self::try_exclusive(path)
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: unlocking an fd we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_dropped() {
        let dir = std::env::temp_dir().join(format!("sys-flock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("l");
        assert!(Flock::try_exclusive(&p).is_err(), "no file yet");
        let held = Flock::exclusive(&p).unwrap();
        assert!(Flock::try_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(Flock::try_create_exclusive(&p).unwrap().is_some());
        let _ = fs::remove_dir_all(&dir);
    }
}
