//! One cgroup per pipeline run, so that everything a run started can be found and killed
//! when it ends — a `setsid` or double-forked child included.
//!
//! cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): one directory, `cgroup.kill`.
//! cgroup v1: a directory in the `freezer` hierarchy (freeze, SIGKILL every member, thaw, so
//! nothing can fork away meanwhile) and one in `pids` (a cap on processes, so a fork bomb
//! stays inside its run).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// At most this many processes (and threads) in one run.
pub const PIDS_MAX: u32 = 4096;

/// Where run cgroups are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy's directory for our runs.
    V2(PathBuf),
    /// The freezer and pids hierarchies' directories for our runs.
    V1 { freezer: PathBuf, pids: PathBuf },
}

/// A run's cgroup.
#[derive(Debug, Clone)]
pub struct RunCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Hierarchy {
    /// Detects the host's cgroup layout under `/sys/fs/cgroup`; `group` names our folder.
    pub fn detect(group: &str) -> io::Result<Hierarchy> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return Ok(Hierarchy::V2(root.join(group)));
        }
        let (f, p) = (root.join("freezer"), root.join("pids"));
        if f.join("cgroup.procs").exists() && p.join("cgroup.procs").exists() {
            return Ok(Hierarchy::V1 {
                freezer: f.join(group),
                pids: p.join(group),
            });
        }
        Err(io::Error::other(
            "no cgroup v2 hierarchy and no cgroup v1 freezer and pids controllers under /sys/fs/cgroup",
        ))
    }

    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2(d) => vec![d.clone()],
            Hierarchy::V1 { freezer, pids } => vec![freezer.clone(), pids.clone()],
        }
    }

    /// The cgroup of run `name`, created empty.
    pub fn create(&self, name: &str) -> io::Result<RunCgroup> {
        let cg = self.get(name);
        // A leftover of the same name (a daemon that died mid-run) is emptied first.
        cg.kill_all()?;
        for d in &cg.dirs {
            std::fs::create_dir_all(d)?;
        }
        if let Hierarchy::V2(parent) = self {
            // Best effort: the pids controller may not be delegated here.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+pids");
        }
        let pids_dir = if cg.v2 { &cg.dirs[0] } else { &cg.dirs[1] };
        let max = pids_dir.join("pids.max");
        if max.exists() {
            std::fs::write(max, PIDS_MAX.to_string())?;
        }
        Ok(cg)
    }

    /// The cgroup of run `name`, whether or not it exists.
    pub fn get(&self, name: &str) -> RunCgroup {
        RunCgroup {
            dirs: self.parents().iter().map(|p| p.join(name)).collect(),
            v2: matches!(self, Hierarchy::V2(_)),
        }
    }

    /// Names of the run cgroups that exist (leftovers after a crash, at start).
    pub fn existing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.parents().first() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }
}

fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_for(what: impl Fn() -> bool, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if what() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl RunCgroup {
    /// The `cgroup.procs` files a process writes to join the run.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in the run's cgroup.
    pub fn members(&self) -> Vec<i32> {
        self.dirs.first().map(|d| pids(d)).unwrap_or_default()
    }

    /// Kills every process of the run and waits until the cgroup is empty. Missing is empty.
    pub fn kill_all(&self) -> io::Result<()> {
        let Some(first) = self.dirs.first() else {
            return Ok(());
        };
        if !first.exists() {
            return Ok(());
        }
        if self.v2 {
            std::fs::write(first.join("cgroup.kill"), "1")?;
        } else {
            // Frozen, nothing can fork while we kill; SIGKILL is delivered on thaw.
            for _ in 0..100 {
                std::fs::write(first.join("freezer.state"), "FROZEN")?;
                let frozen = wait_for(
                    || {
                        std::fs::read_to_string(first.join("freezer.state"))
                            .is_ok_and(|s| s.trim() == "FROZEN")
                    },
                    Duration::from_millis(500),
                );
                for pid in pids(first) {
                    // SAFETY: kill(2) has no memory effects.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::fs::write(first.join("freezer.state"), "THAWED")?;
                if frozen && wait_for(|| pids(first).is_empty(), Duration::from_millis(500)) {
                    break;
                }
            }
        }
        if !wait_for(|| pids(first).is_empty(), Duration::from_secs(10)) {
            return Err(io::Error::other(format!(
                "processes {:?} survived SIGKILL in {}",
                pids(first),
                first.display()
            )));
        }
        Ok(())
    }

    /// Kills what is left and removes the cgroup.
    pub fn remove(&self) -> io::Result<()> {
        self.kill_all()?;
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}
