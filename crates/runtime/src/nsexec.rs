//! [`Machines::exec`](crate::Machines::exec) for nspawn machines: `nsenter --all` into the
//! namespaces of the container's init (mount, pid, net, uts, ipc, cgroup), from a child cgroup
//! of the machine's (so it counts against the machine's size and dies with it, and a timeout
//! kills everything it started), with the capability bounding set of the container's init (root
//! of the instance, not root of the host: the instance's binaries run with no more than its own
//! init could give them) and no environment of the daemon's. Nothing inside the machine's root
//! is resolved from the host: `argv[0]` is found by the instance's own `PATH`, after `nsenter`
//! has entered its mount namespace.
use crate::inspect::{Exec, ExecOutput, ExecStatus, Tail};
use crate::{io_err, open_procs, random_hex16, which, NspawnMachines, RuntimeError};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The environment every command gets (the daemon's own is never passed on).
const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
    ("SYSTEMD_PAGER", "cat"),
    ("SYSTEMD_COLORS", "0"),
];

/// Most bytes of the console log read at once.
pub const MAX_CONSOLE_TAIL: usize = 1 << 20;

fn state(machine: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::State {
        machine: machine.into(),
        msg: msg.into(),
    }
}

/// The container's init: the first descendant of nspawn in another pid namespace.
fn leader_of(nspawn: u32) -> Option<u32> {
    let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let own = ns(nspawn)?;
    let mut level = vec![nspawn];
    for _ in 0..3 {
        let kids: Vec<u32> = level
            .iter()
            .flat_map(|p| sys::proc::children_of(*p))
            .collect();
        if let Some(k) = kids.iter().find(|k| ns(**k).is_some_and(|n| n != own)) {
            return Some(*k);
        }
        level = kids;
    }
    None
}

/// `CapBnd` of a process (hex in `/proc/<pid>/status`).
fn cap_bounding(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = text.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn status_of(s: std::process::ExitStatus) -> ExecStatus {
    match (s.code(), s.signal()) {
        (Some(c), _) => ExecStatus::Exited(c),
        (None, Some(sig)) => ExecStatus::Signaled(sig),
        (None, None) => ExecStatus::Signaled(0),
    }
}

/// Reads a stream to its end, into the tail or the sink; a sink that says stop sets `stop`.
fn pump(
    mut r: impl Read,
    keep: usize,
    mut sink: Option<crate::inspect::Sink<'_>>,
    stop: &AtomicBool,
) -> Tail {
    let mut tail = Tail::new(keep);
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => return tail,
            Ok(n) => match sink.as_mut() {
                Some(s) if !stop.load(Ordering::Relaxed) => {
                    if !s(&buf[..n]) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Some(_) => {}
                None => tail.push(&buf[..n]),
            },
        }
    }
}

impl NspawnMachines {
    pub(crate) fn exec_in(&self, name: &str, req: Exec) -> Result<ExecOutput, RuntimeError> {
        Self::validate_name(name)?;
        if req.argv.is_empty() {
            return Err(state(name, "exec: empty command"));
        }
        let pid = self
            .running_pid(name)
            .ok_or_else(|| state(name, "is not running"))?;
        let leader = leader_of(pid).ok_or_else(|| state(name, "has no container init yet"))?;
        let bounding = cap_bounding(leader)
            .ok_or_else(|| state(name, "cannot read its init's capabilities"))?;
        let nsenter = which("nsenter").ok_or_else(|| {
            RuntimeError::Preflight("nsenter not found: run `apt-get install util-linux`".into())
        })?;
        let cg_name = format!(
            "{}/exec-{}",
            self.names(name).machine,
            &random_hex16()[..12]
        );
        let limits = sys::cgroup::Limits {
            pids_max: crate::MACHINE_PIDS_MAX,
            cpu_millis: None,
            memory_bytes: None,
        };
        let cg = self
            .cgroups
            .create_with(&cg_name, &limits)
            .map_err(io_err(name, "create the command's cgroup"))?;
        let join = open_procs(name, &cg)?;
        let mut cmd = Command::new(nsenter);
        cmd.arg(format!("--target={leader}"))
            .args(["--all", "--root", "--wd", "--"])
            .args(&req.argv)
            .env_clear()
            .envs(BASE_ENV.iter().copied())
            .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setsid, write(2) and prctl(2) are async-signal-safe; the files were opened
        // before fork.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                for f in &join {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(f);
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // What the container's init may not have, nsenter and the command lose too.
                for cap in 0..64u64 {
                    if bounding & (1 << cap) == 0 {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                    }
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let result = self.run_bounded(name, cmd, req, &cg);
        if let Err(e) = cg.remove() {
            tracing::warn!(machine = name, error = %e, "cannot remove a command's cgroup");
        }
        result
    }

    fn run_bounded(
        &self,
        name: &str,
        mut cmd: Command,
        req: Exec,
        cg: &sys::cgroup::Cgroup,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut child = cmd.spawn().map_err(io_err(name, "spawn nsenter"))?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let stop = AtomicBool::new(false);
        let keep = req.keep_bytes;
        let deadline = Instant::now() + req.timeout;
        let sink = req.stdout_sink;
        let cancel = req.cancel;
        std::thread::scope(|s| {
            let stop = &stop;
            let o = s.spawn(move || out.map(|r| pump(r, keep, sink, stop)).unwrap_or_default());
            let e = s.spawn(move || err.map(|r| pump(r, keep, None, stop)).unwrap_or_default());
            let status = loop {
                match child.try_wait() {
                    Ok(Some(st)) => break status_of(st),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(machine = name, error = %e, "wait for a command");
                        break ExecStatus::Signaled(0);
                    }
                }
                let abandoned = stop.load(Ordering::Relaxed)
                    || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
                if abandoned || Instant::now() >= deadline {
                    let _ = cg.kill_all();
                    let _ = child.wait();
                    break if abandoned {
                        ExecStatus::Abandoned
                    } else {
                        ExecStatus::TimedOut
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            // What it left behind (a `cmd &`) would hold the pipes open: it ends with it.
            let _ = cg.kill_all();
            let (o, e) = (o.join().unwrap_or_default(), e.join().unwrap_or_default());
            Ok(ExecOutput {
                status,
                stdout: o.buf,
                stderr: e.buf,
                stdout_dropped: o.dropped,
                stderr_dropped: e.dropped,
            })
        })
    }

    /// The last `max` bytes (at most [`MAX_CONSOLE_TAIL`]) of the machine's console log.
    pub(crate) fn console_tail_of(&self, name: &str, max: usize) -> Result<Vec<u8>, RuntimeError> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::OpenOptionsExt;
        Self::validate_name(name)?;
        if !self.dir(name).join("spec.json").exists() {
            return Err(RuntimeError::NotFound(name.into()));
        }
        let p = self.log_path(name);
        let mut f = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(name, format!("open {}", p.display()))(e)),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let max = max.min(MAX_CONSOLE_TAIL) as u64;
        f.seek(SeekFrom::Start(len.saturating_sub(max)))
            .map_err(io_err(name, "seek the console log"))?;
        let mut buf = Vec::new();
        f.take(max)
            .read_to_end(&mut buf)
            .map_err(io_err(name, "read the console log"))?;
        Ok(buf)
    }
}

/// Whether the host can run commands in machines (`nsenter`, util-linux).
pub fn exec_available() -> bool {
    which("nsenter").is_some() && Path::new("/proc/self/ns/pid").exists()
}
