//! The job sandbox: how the daemon (root) touches a job's files and starts its processes.
//!
//! A job controls everything below its workspace (it can plant symlinks, hard links and
//! renamed directories at any moment), so the daemon never resolves a path there the usual
//! way. [`Workspace`] does every file operation the daemon performs for a job (script files,
//! artifact publish and download, directory resets, package staging):
//! - on a thread of its own whose filesystem credentials are the runner user's
//!   (`setfsuid`/`setfsgid`, no supplementary groups), so the kernel checks each access as the
//!   job's own: nothing the job could not read or write itself is reachable;
//! - through `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` relative to the workspace, so
//!   no path (absolute, `..`, or a symlink) leads out of it — not even to files the runner
//!   user may read, such as another pipeline's build directory.
//!
//! [`Jail`] is what a job's processes get between fork and exec: a mount namespace where the
//! toolchains are read-only and the other pipelines' build directories are hidden, the run's
//! cgroup ([`crate::cgroup`]), `no_new_privs` (a setuid binary cannot raise it back to root),
//! then the runner's uid and gid with no supplementary groups.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The unprivileged user jobs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Why a path given by a job was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("`{0}` is outside the run's workspace {1}")]
    Outside(String, PathBuf),
    #[error("`{0}` leads out of the run's workspace through a symlink or `..`")]
    Escapes(String),
    #[error("`{path}`: {source}")]
    Io { path: String, source: io::Error },
}

impl PathError {
    fn io(path: &str, source: io::Error) -> PathError {
        if source.raw_os_error() == Some(libc::EXDEV) || source.raw_os_error() == Some(libc::ELOOP)
        {
            return PathError::Escapes(path.to_string());
        }
        PathError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// `p` (absolute, or relative to `base`) as a path relative to `root`, lexically: no `..`
/// may climb above `root`. Symlinks are checked later, when the path is opened beneath root.
pub fn relative_to(root: &Path, base: &Path, p: &str) -> Result<PathBuf, PathError> {
    let full = if Path::new(p).is_absolute() {
        PathBuf::from(p)
    } else {
        base.join(p)
    };
    let mut out = PathBuf::new();
    let rest = full
        .strip_prefix(root)
        .map_err(|_| PathError::Outside(p.to_string(), root.to_path_buf()))?;
    for c in rest.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(PathError::Escapes(p.to_string()));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Escapes(p.to_string()))
            }
        }
    }
    Ok(out)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat2(dir, rel, flags | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`.
fn open_beneath(dir: RawFd, rel: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = cstr(rel)?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: c and how outlive the call; the kernel writes nothing through them.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this descriptor to us.
            return Ok(unsafe { File::from_raw_fd(fd as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Sets this thread's filesystem credentials (raw syscalls: per thread, unlike glibc's
/// process-wide wrappers for setgroups). Returns whether the switch took effect.
fn set_fs_creds(id: Identity) -> bool {
    // SAFETY: these syscalls change only the calling thread's credentials.
    unsafe {
        libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
        libc::setfsgid(id.gid);
        libc::setfsuid(id.uid);
        // setfsuid reports the previous value; asking again returns the current one.
        libc::setfsuid(id.uid) as u32 == id.uid && libc::setfsgid(id.gid) as u32 == id.gid
    }
}

/// Runs `f` on a new thread with `id`'s filesystem credentials (the current ones when
/// `None`). The thread ends with `f`, so the credentials never leak into other work.
pub fn as_user<T: Send + 'static>(
    id: Option<Identity>,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    std::thread::Builder::new()
        .name("job-fs".into())
        .spawn(move || {
            if let Some(id) = id {
                if !set_fs_creds(id) {
                    return Err(io::Error::other(
                        "cannot take the runner user's credentials",
                    ));
                }
            }
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("the job file thread panicked"))?
}

/// Whether `p` is a directory (`dir`) or a regular file, as `id` sees it: a job's path is
/// never looked up with root's permissions, even to answer a question.
pub fn is_kind_as(id: Option<Identity>, p: &Path, dir: bool) -> bool {
    let p = p.to_path_buf();
    as_user(id, move || if dir { p.is_dir() } else { p.is_file() }).unwrap_or(false)
}

/// A job's workspace, opened once; every path below is resolved beneath it.
pub struct Workspace {
    root: PathBuf,
    fd: OwnedFd,
}

/// A regular file found by [`Workspace::walk`]: its path relative to the walked directory and
/// its open descriptor (read from the fd, so a later rename changes nothing).
pub struct WalkedFile {
    pub rel: String,
    pub file: File,
    pub executable: bool,
}

impl Workspace {
    /// Opens `root` (a directory the daemon created; its parents are the daemon's).
    pub fn open(root: &Path) -> io::Result<Workspace> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(root)?;
        Ok(Workspace {
            root: root.to_path_buf(),
            fd: f.into(),
        })
    }

    /// A path a job gave (absolute, or relative to `base`), relative to the workspace.
    pub fn relative(&self, base: &Path, p: &str) -> Result<PathBuf, PathError> {
        relative_to(&self.root, base, p)
    }

    fn err(&self, rel: &Path, e: io::Error) -> PathError {
        PathError::io(&self.root.join(rel).to_string_lossy(), e)
    }

    /// Opens `rel` (symlinks inside the workspace are followed).
    pub fn open_file(&self, rel: &Path) -> Result<File, PathError> {
        open_beneath(self.fd.as_raw_fd(), rel, libc::O_RDONLY, 0).map_err(|e| self.err(rel, e))
    }

    /// Whether `rel` is a directory, a file, or missing.
    pub fn kind(&self, rel: &Path) -> Result<Option<std::fs::FileType>, PathError> {
        match open_beneath(self.fd.as_raw_fd(), rel, libc::O_PATH, 0) {
            Ok(f) => Ok(Some(
                f.metadata().map_err(|e| self.err(rel, e))?.file_type(),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(rel, e)),
        }
    }

    /// `mkdir -p rel` beneath the workspace; returns the directory.
    pub fn create_dirs(&self, rel: &Path) -> Result<File, PathError> {
        let mut cur = PathBuf::new();
        let mut dir = open_beneath(self.fd.as_raw_fd(), &cur, libc::O_DIRECTORY, 0)
            .map_err(|e| self.err(&cur, e))?;
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(PathError::Escapes(rel.to_string_lossy().into_owned()));
            };
            cur.push(name);
            let cname = cstr(Path::new(name)).map_err(|e| self.err(&cur, e))?;
            // SAFETY: a valid fd and NUL-terminated name.
            let r = unsafe { libc::mkdirat(dir.as_raw_fd(), cname.as_ptr(), 0o755) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(self.err(&cur, e));
                }
            }
            dir = open_beneath(self.fd.as_raw_fd(), &cur, libc::O_DIRECTORY, 0)
                .map_err(|e| self.err(&cur, e))?;
        }
        Ok(dir)
    }

    /// Creates (or truncates) the file `rel` with `mode`, its parents as needed.
    pub fn create_file(&self, rel: &Path, mode: u32) -> Result<File, PathError> {
        if let Some(parent) = rel.parent() {
            self.create_dirs(parent)?;
        }
        // Replace rather than write through: a symlink at rel is removed, not followed.
        let _ = self.remove(rel);
        let f = open_beneath(
            self.fd.as_raw_fd(),
            rel,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            mode,
        )
        .map_err(|e| self.err(rel, e))?;
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| self.err(rel, e))?;
        Ok(f)
    }

    /// Removes the file or the whole tree at `rel` (never following a symlink); missing is fine.
    pub fn remove(&self, rel: &Path) -> Result<(), PathError> {
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => return Err(PathError::Escapes(rel.to_string_lossy().into_owned())),
        };
        let dir = match open_beneath(self.fd.as_raw_fd(), parent, libc::O_DIRECTORY, 0) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(parent, e)),
        };
        remove_at(&dir, name).map_err(|e| self.err(rel, e))
    }

    /// The regular files below `rel` (a directory, or a single file), in byte order of their
    /// paths. Symlinks are followed only to files inside the workspace; other entries (fifos,
    /// sockets, devices) are skipped.
    pub fn walk(&self, rel: &Path) -> Result<Vec<WalkedFile>, PathError> {
        let top = self.open_file(rel)?;
        let meta = top.metadata().map_err(|e| self.err(rel, e))?;
        if meta.is_file() {
            let name = rel
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".into());
            return Ok(vec![walked(name, top, &meta)]);
        }
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), rel.to_path_buf())];
        while let Some((prefix, dir_rel)) = stack.pop() {
            let dir = open_beneath(self.fd.as_raw_fd(), &dir_rel, libc::O_DIRECTORY, 0)
                .map_err(|e| self.err(&dir_rel, e))?;
            // The directory's own descriptor, listed through /proc: no path is re-resolved.
            let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .map_err(|e| self.err(&dir_rel, e))?;
            for e in listing {
                let e = e.map_err(|e| self.err(&dir_rel, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let child_rel = dir_rel.join(e.file_name());
                let child = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let ft = e.file_type().map_err(|e| self.err(&child_rel, e))?;
                if ft.is_dir() {
                    stack.push((child, child_rel));
                } else if ft.is_file() || ft.is_symlink() {
                    let f = self.open_file(&child_rel)?;
                    let m = f.metadata().map_err(|e| self.err(&child_rel, e))?;
                    if ft.is_symlink() && !m.is_file() {
                        return Err(PathError::Escapes(
                            self.root.join(&child_rel).to_string_lossy().into_owned(),
                        ));
                    }
                    if m.is_file() {
                        out.push(walked(child, f, &m));
                    }
                }
            }
        }
        out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
        Ok(out)
    }
}

fn walked(rel: String, file: File, m: &std::fs::Metadata) -> WalkedFile {
    use std::os::unix::fs::PermissionsExt;
    WalkedFile {
        rel,
        file,
        executable: m.permissions().mode() & 0o111 != 0,
    }
}

/// `rm -rf dir/name` without following symlinks: everything is opened with O_NOFOLLOW
/// relative to its parent's descriptor.
fn remove_at(dir: &File, name: &std::ffi::OsStr) -> io::Result<()> {
    let c =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid fd and name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => return Ok(()),
        Some(libc::EISDIR) | Some(libc::EPERM) => {}
        _ => return Err(e),
    }
    // SAFETY: valid fd and name; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by openat.
    let sub = unsafe { File::from_raw_fd(fd) };
    for e in std::fs::read_dir(format!("/proc/self/fd/{fd}"))? {
        remove_at(&sub, &e?.file_name())?;
    }
    // SAFETY: valid fd and name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

/// What a job's processes get between fork and exec (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Jail {
    pub identity: Option<Identity>,
    /// Read-only bind mounts `(source, mount point)` (toolchains under a private home).
    pub bind_ro: Vec<(PathBuf, PathBuf)>,
    /// `(cover, keep)` pairs: an empty tmpfs covers `cover` and only `keep` (a directory
    /// directly in it) is mounted back, so one pipeline's job cannot reach another pipeline's
    /// build directory or home.
    pub private: Vec<(PathBuf, PathBuf)>,
    /// `cgroup.procs` files the process joins before exec.
    pub cgroup_procs: Vec<PathBuf>,
    /// The working directory, entered last, as the runner user: a job-controlled path is never
    /// resolved with root's permissions (unlike `Command::current_dir`, which runs before
    /// `pre_exec`).
    pub cwd: Option<PathBuf>,
}

/// The parts of a [`Jail`] prepared for the child: C strings and open descriptors, so the
/// code between fork and exec only makes system calls.
pub struct PreparedJail {
    identity: Option<Identity>,
    binds_ro: Vec<(CString, CString)>,
    hide: Vec<(CString, CString)>,
    procs: Vec<OwnedFd>,
    cwd: Option<CString>,
}

impl Jail {
    /// Opens what the child needs. Call in the parent, then hand [`PreparedJail::enter`] to
    /// `pre_exec`.
    pub fn prepare(&self) -> io::Result<PreparedJail> {
        let mut binds_ro = Vec::new();
        for (src, dst) in &self.bind_ro {
            binds_ro.push((cstr(src)?, cstr(dst)?));
        }
        let mut hide = Vec::new();
        for (cover, keep) in &self.private {
            hide.push((cstr(cover)?, cstr(keep)?));
        }
        let mut procs = Vec::new();
        for p in &self.cgroup_procs {
            procs.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(p)?
                    .into(),
            );
        }
        Ok(PreparedJail {
            identity: self.identity,
            binds_ro,
            hide,
            procs,
            cwd: self.cwd.as_deref().map(cstr).transpose()?,
        })
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PreparedJail {
    /// Runs in the child between fork and exec: only async-signal-safe system calls.
    ///
    /// # Safety
    /// Call only from `pre_exec`.
    pub unsafe fn enter(&self) -> io::Result<()> {
        for fd in &self.procs {
            // "0" moves the writing process.
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        if !self.binds_ro.is_empty() || !self.hide.is_empty() {
            let null = std::ptr::null();
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (cover, keep) in &self.hide {
                // A detached copy of `keep`, taken in the new namespace, goes back on top of
                // the tmpfs that covers its parent.
                const OPEN_TREE_CLONE: libc::c_uint = 1;
                const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
                let tree = libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    keep.as_ptr(),
                    OPEN_TREE_CLONE
                        | libc::O_CLOEXEC as libc::c_uint
                        | libc::AT_RECURSIVE as libc::c_uint,
                );
                if tree < 0 {
                    return Err(io::Error::last_os_error());
                }
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    cover.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=0711,size=1m".as_ptr().cast(),
                ))?;
                check(libc::mkdir(keep.as_ptr(), 0o700))?;
                let moved = libc::syscall(
                    libc::SYS_move_mount,
                    tree as libc::c_int,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    keep.as_ptr(),
                    MOVE_MOUNT_F_EMPTY_PATH,
                );
                libc::close(tree as libc::c_int);
                if moved != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (src, dst) in &self.binds_ro {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    null,
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
        }
        if let Some(id) = self.identity {
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(id.gid))?;
            check(libc::setuid(id.uid))?;
        }
        if let Some(cwd) = &self.cwd {
            check(libc::chdir(cwd.as_ptr()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_stay_beneath() {
        let root = Path::new("/w/p-app");
        let base = Path::new("/w/p-app/s");
        let ok = |p: &str| relative_to(root, base, p).unwrap();
        assert_eq!(ok("drop"), PathBuf::from("s/drop"));
        assert_eq!(ok("/w/p-app/a/x"), PathBuf::from("a/x"));
        assert_eq!(ok("../b/./y"), PathBuf::from("b/y"));
        assert_eq!(ok("/w/p-app"), PathBuf::new());
        for bad in ["/etc/passwd", "/w/p-other/s", "/w/p-app2"] {
            assert!(
                matches!(relative_to(root, base, bad), Err(PathError::Outside(..))),
                "{bad}"
            );
        }
        for bad in ["../../x", "../../p-app/../../etc"] {
            assert!(
                matches!(relative_to(root, base, bad), Err(PathError::Escapes(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn symlinks_out_of_the_workspace_are_refused() {
        let t = std::env::temp_dir().join(format!("sandbox-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("ws/s/sub")).unwrap();
        std::fs::write(t.join("secret"), "s3cret").unwrap();
        std::fs::write(t.join("ws/s/sub/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink(t.join("secret"), t.join("ws/s/abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", t.join("ws/s/rel")).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", t.join("ws/s/inside")).unwrap();
        std::os::unix::fs::symlink("/", t.join("ws/root")).unwrap();
        let ws = Workspace::open(&t.join("ws")).unwrap();
        for p in ["s/abs", "s/rel", "root/etc/passwd"] {
            let e = ws.open_file(Path::new(p)).expect_err(p);
            assert!(matches!(e, PathError::Escapes(_)), "{p}: {e}");
        }
        assert!(ws.open_file(Path::new("s/inside")).is_ok());
        // A walk over a tree with an escaping symlink fails as a whole.
        assert!(matches!(
            ws.walk(Path::new("s")),
            Err(PathError::Escapes(_))
        ));
        std::fs::remove_file(t.join("ws/s/abs")).unwrap();
        std::fs::remove_file(t.join("ws/s/rel")).unwrap();
        let files: Vec<String> = ws
            .walk(Path::new("s"))
            .unwrap()
            .into_iter()
            .map(|f| f.rel)
            .collect();
        assert_eq!(files, ["inside", "sub/a.txt"]);
        // Writing through a planted symlink replaces the link instead.
        std::os::unix::fs::symlink(t.join("secret"), t.join("ws/s/planted")).unwrap();
        use std::io::Write;
        ws.create_file(Path::new("s/planted"), 0o644)
            .unwrap()
            .write_all(b"new")
            .unwrap();
        assert_eq!(std::fs::read_to_string(t.join("secret")).unwrap(), "s3cret");
        // Removal never follows a symlink to a directory.
        std::fs::create_dir_all(t.join("outside/keep")).unwrap();
        std::os::unix::fs::symlink(t.join("outside"), t.join("ws/s/sub/link")).unwrap();
        ws.remove(Path::new("s")).unwrap();
        assert!(t.join("outside/keep").is_dir());
        assert!(!t.join("ws/s").exists());
        let _ = std::fs::remove_dir_all(&t);
    }

    /// Root only (mount namespaces, cgroups): fails under CI without root.
    fn root_or_skip() -> bool {
        testkit::require(testkit::missing_root())
    }

    #[test]
    fn a_jailed_process_sees_only_its_build_dir_and_dies_with_its_cgroup() {
        if !root_or_skip() {
            return;
        }
        let t = std::env::temp_dir().join(format!("jail-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        for d in ["work/p-a", "work/p-b"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        std::fs::write(t.join("work/p-b/secret"), "b").unwrap();
        let h = crate::cgroup::Hierarchy::detect(&format!("scaleset-test-{}", std::process::id()))
            .unwrap();
        let cg = h.create("run-1").unwrap();
        let jail = Jail {
            private: vec![(t.join("work"), t.join("work/p-a"))],
            cgroup_procs: cg.procs_files(),
            ..Jail::default()
        };
        let prepared = jail.prepare().unwrap();
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(format!(
            "ls {w}; touch {w}/p-a/mine; setsid sleep 600 >/dev/null 2>&1 & echo started",
            w = t.join("work").display()
        ));
        // SAFETY: enter makes only async-signal-safe calls.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || prepared.enter());
        }
        let out = c.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(stdout, "p-a\nstarted\n");
        assert!(
            t.join("work/p-a/mine").exists(),
            "writes reach the real build dir"
        );
        // The setsid'd sleep outlived its parent; the cgroup finds and kills it.
        assert_eq!(cg.members().len(), 1, "{:?}", cg.members());
        cg.remove().unwrap();
        assert!(cg.members().is_empty());
        assert!(h.existing().is_empty());
        for d in h.existing() {
            let _ = h.get(&d).remove();
        }
        h.remove_empty();
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn as_user_takes_the_users_file_permissions() {
        if !root_or_skip() {
            return;
        }
        let t = std::env::temp_dir().join(format!("as-user-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(&t).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secret = t.join("secret");
        std::fs::write(&secret, "root only").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let nobody = Some(Identity {
            uid: 65534,
            gid: 65534,
        });
        let s2 = secret.clone();
        let denied = as_user(nobody, move || std::fs::read(&s2)).unwrap();
        assert_eq!(denied.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let s2 = secret.clone();
        assert!(as_user(None, move || std::fs::read(&s2)).unwrap().is_ok());
        // The daemon's own thread keeps root's credentials.
        assert!(std::fs::read(&secret).is_ok());
        let made = t.join("made-by-nobody");
        let m2 = made.clone();
        let created = as_user(nobody, move || std::fs::write(&m2, "x")).unwrap();
        assert_eq!(created.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let _ = std::fs::remove_dir_all(&t);
    }
}
