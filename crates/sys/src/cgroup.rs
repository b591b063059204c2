//! A cgroup per pipeline run and per machine, so that everything one started can be found and
//! killed as a whole — a `setsid` or double-forked child, or a container whose `systemd-nspawn`
//! died, included — and so that its CPU, memory and process count can be capped.
//!
//! cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): one directory, `cgroup.kill`,
//! `cpu.max`, `memory.max`, `pids.max`.
//! cgroup v1: a directory in the `freezer` hierarchy (freeze, SIGKILL every member, thaw, so
//! nothing can fork away meanwhile), one in `pids` (a cap on processes, so a fork bomb stays
//! inside), and, where the host mounts them, one in `cpu` (CFS quota) and one in `memory`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// At most this many processes (and threads) in one cgroup unless [`Limits`] say otherwise.
pub const PIDS_MAX: u32 = 4096;

/// The CFS period cpu quotas are expressed in (100 ms, the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Where our cgroups are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy's directory for our cgroups.
    V2(PathBuf),
    /// The v1 hierarchies' directories for our cgroups; `cpu` and `memory` when mounted.
    V1 {
        freezer: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
        memory: Option<PathBuf>,
    },
}

/// Caps applied to one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub pids_max: u32,
    /// CPU time per wall-clock time in thousandths of a CPU (2000 = two CPUs); `None`: no cap.
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pids_max: PIDS_MAX,
            cpu_millis: None,
            memory_bytes: None,
        }
    }
}

/// One cgroup (a directory per hierarchy; the freezer's, or the unified one, first).
#[derive(Debug, Clone)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    pids: PathBuf,
}

/// The name pipeline runs know it by.
pub type RunCgroup = Cgroup;

impl Hierarchy {
    /// Detects the host's cgroup layout under `/sys/fs/cgroup`; `group` names our folder.
    pub fn detect(group: &str) -> io::Result<Hierarchy> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return Ok(Hierarchy::V2(root.join(group)));
        }
        let (f, p) = (root.join("freezer"), root.join("pids"));
        let mounted = |c: &str| {
            let d = root.join(c);
            d.join("cgroup.procs").exists().then(|| d.join(group))
        };
        if f.join("cgroup.procs").exists() && p.join("cgroup.procs").exists() {
            return Ok(Hierarchy::V1 {
                freezer: f.join(group),
                pids: p.join(group),
                cpu: mounted("cpu"),
                memory: mounted("memory"),
            });
        }
        Err(io::Error::other(
            "no cgroup v2 hierarchy and no cgroup v1 freezer and pids controllers under /sys/fs/cgroup",
        ))
    }

    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Hierarchy::V2(d) => vec![d.clone()],
            Hierarchy::V1 {
                freezer,
                pids,
                cpu,
                memory,
            } => [Some(freezer), Some(pids), cpu.as_ref(), memory.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        }
    }

    /// The cgroup `name`, created empty, with the default [`Limits`] (a pids cap).
    pub fn create(&self, name: &str) -> io::Result<Cgroup> {
        self.create_with(name, &Limits::default())
    }

    /// The cgroup `name`, created empty, with `limits` applied. A leftover of the same name (a
    /// daemon that died mid-run, a machine whose nspawn was killed) is emptied first.
    pub fn create_with(&self, name: &str, limits: &Limits) -> io::Result<Cgroup> {
        let cg = self.get(name);
        cg.kill_all()?;
        for d in &cg.dirs {
            std::fs::create_dir_all(d)?;
        }
        if let Hierarchy::V2(parent) = self {
            // Best effort: the controllers may not be delegated here.
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+pids +cpu +memory");
        }
        cg.apply(limits)?;
        Ok(cg)
    }

    /// The cgroup `name`, whether or not it exists.
    pub fn get(&self, name: &str) -> Cgroup {
        let at = |d: &PathBuf| d.join(name);
        match self {
            Hierarchy::V2(d) => Cgroup {
                dirs: vec![at(d)],
                v2: true,
                cpu: Some(at(d)),
                memory: Some(at(d)),
                pids: at(d),
            },
            Hierarchy::V1 {
                pids, cpu, memory, ..
            } => Cgroup {
                dirs: self.parents().iter().map(at).collect(),
                v2: false,
                cpu: cpu.as_ref().map(at),
                memory: memory.as_ref().map(at),
                pids: at(pids),
            },
        }
    }

    /// Removes our (empty) folders in each hierarchy; a folder still holding cgroups stays.
    pub fn remove_empty(&self) {
        for d in self.parents() {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Names of the cgroups that exist (leftovers after a crash, at start).
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

/// Writes `value` to a control file the host may not offer (a controller not delegated).
fn write_if_present(file: PathBuf, value: &str) -> io::Result<()> {
    if file.exists() {
        std::fs::write(&file, value)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    }
    Ok(())
}

impl Cgroup {
    /// The `cgroup.procs` files a process writes to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The processes in the cgroup.
    pub fn members(&self) -> Vec<i32> {
        self.dirs.first().map(|d| pids(d)).unwrap_or_default()
    }

    /// Sets the caps; `None` lifts a CPU or memory cap.
    pub fn apply(&self, l: &Limits) -> io::Result<()> {
        write_if_present(self.pids.join("pids.max"), &l.pids_max.to_string())?;
        let quota = l.cpu_millis.map(|m| u64::from(m) * CPU_PERIOD_US / 1000);
        if let Some(d) = &self.cpu {
            if self.v2 {
                let q = quota.map_or("max".to_string(), |q| q.to_string());
                write_if_present(d.join("cpu.max"), &format!("{q} {CPU_PERIOD_US}"))?;
            } else {
                write_if_present(d.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                let q = quota.map_or("-1".to_string(), |q| q.to_string());
                write_if_present(d.join("cpu.cfs_quota_us"), &q)?;
            }
        }
        if let Some(d) = &self.memory {
            let (file, unlimited) = if self.v2 {
                ("memory.max", "max")
            } else {
                ("memory.limit_in_bytes", "-1")
            };
            let v = l
                .memory_bytes
                .map_or(unlimited.to_string(), |b| b.to_string());
            write_if_present(d.join(file), &v)?;
        }
        Ok(())
    }

    /// Kills every process in the cgroup and waits until it is empty. Missing is empty.
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
