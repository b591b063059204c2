//! A cgroup per pipeline run and per machine, so that everything one started can be found and
//! killed as a whole — a `setsid` or double-forked child, or a container whose `systemd-nspawn`
//! died, included — and so that its CPU, memory and process count can be capped.
//!
//! cgroup v2 (`/sys/fs/cgroup/cgroup.controllers` exists): one directory, `cgroup.kill`,
//! `cpu.max`, `memory.max`, `pids.max`.
//! cgroup v1: a directory in the `freezer` hierarchy (freeze, SIGKILL every member, thaw, so
//! nothing can fork away meanwhile), one in `pids` (a cap on processes, so a fork bomb stays
//! inside), and, where the host mounts them, one in `cpu` (CFS quota), one in `cpuacct` (CPU
//! time used; a hierarchy of its own on some hosts) and one in `memory`.
//!
//! Usage is read back for metrics: [`Cgroup::cpu_usage`], [`Cgroup::memory_current`] and
//! [`Cgroup::memory_limit`].

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
    /// The v1 hierarchies' directories for our cgroups; `cpu`, `cpuacct` and `memory` when
    /// mounted (`cpuacct` is `None` when it shares `cpu`'s hierarchy: `cpu,cpuacct`).
    V1 {
        freezer: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
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
    /// Where `cpuacct.usage` is (v1; `cpu`'s directory when the two share a hierarchy).
    cpuacct: Option<PathBuf>,
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
            // `cpu` and `cpuacct` are often links to one `cpu,cpuacct` hierarchy.
            let same = |a: &str, b: &str| {
                let c = |x: &str| std::fs::canonicalize(root.join(x)).ok();
                c(a).is_some() && c(a) == c(b)
            };
            return Ok(Hierarchy::V1 {
                freezer: f.join(group),
                pids: p.join(group),
                cpu: mounted("cpu"),
                cpuacct: mounted("cpuacct").filter(|_| !same("cpu", "cpuacct")),
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
                cpuacct,
                memory,
            } => [
                Some(freezer),
                Some(pids),
                cpu.as_ref(),
                cpuacct.as_ref(),
                memory.as_ref(),
            ]
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
                cpuacct: None,
                memory: Some(at(d)),
                pids: at(d),
            },
            Hierarchy::V1 {
                pids,
                cpu,
                cpuacct,
                memory,
                ..
            } => Cgroup {
                dirs: self.parents().iter().map(at).collect(),
                v2: false,
                cpu: cpu.as_ref().map(at),
                cpuacct: cpuacct.as_ref().or(cpu.as_ref()).map(at),
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

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// The value of `key` in a `key value` per line file (`cpu.stat`, `memory.stat`).
fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
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

    /// CPU time its processes have used since the cgroup was created; `None` without a CPU
    /// accounting controller (or before it exists).
    pub fn cpu_usage(&self) -> Option<Duration> {
        if self.v2 {
            let stat = read(self.cpu.as_ref()?, "cpu.stat")?;
            return stat_field(&stat, "usage_usec").map(Duration::from_micros);
        }
        let ns = read(self.cpuacct.as_ref()?, "cpuacct.usage")?;
        ns.trim().parse().ok().map(Duration::from_nanos)
    }

    /// Memory in use, without the inactive page cache the kernel reclaims first (the "working
    /// set", as the kernel's memory docs suggest for what is really used); `None` without a
    /// memory controller.
    pub fn memory_current(&self) -> Option<u64> {
        let d = self.memory.as_ref()?;
        let (usage, inactive) = if self.v2 {
            ("memory.current", "inactive_file")
        } else {
            ("memory.usage_in_bytes", "total_inactive_file")
        };
        let used: u64 = read(d, usage)?.trim().parse().ok()?;
        let cache = read(d, "memory.stat").and_then(|s| stat_field(&s, inactive));
        Some(used.saturating_sub(cache.unwrap_or(0)))
    }

    /// The memory cap; `None` when uncapped or without a memory controller.
    pub fn memory_limit(&self) -> Option<u64> {
        let d = self.memory.as_ref()?;
        let file = if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        // v1 says "unlimited" with a huge page-aligned number, v2 with `max`.
        read(d, file)?
            .trim()
            .parse()
            .ok()
            .filter(|&b: &u64| b < 1 << 62)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sys-cg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    /// v1: CPU time from the cpuacct hierarchy (or cpu's, when they share one), memory without
    /// the inactive page cache, the "unlimited" number as no cap.
    #[test]
    fn usage_v1() {
        let d = tmp("v1");
        let h = |cpuacct: Option<PathBuf>| Hierarchy::V1 {
            freezer: d.join("freezer/g"),
            pids: d.join("pids/g"),
            cpu: Some(d.join("cpu/g")),
            cpuacct,
            memory: Some(d.join("memory/g")),
        };
        let cg = h(Some(d.join("cpuacct/g"))).get("m");
        assert_eq!(cg.cpu_usage(), None);
        assert_eq!(cg.memory_current(), None);
        write(&d.join("cpuacct/g/m"), "cpuacct.usage", "2500000000\n");
        assert_eq!(cg.cpu_usage(), Some(Duration::from_millis(2500)));
        assert!(cg
            .procs_files()
            .contains(&d.join("cpuacct/g/m/cgroup.procs")));
        write(&d.join("cpu/g/m"), "cpuacct.usage", "7000\n");
        assert_eq!(h(None).get("m").cpu_usage(), Some(Duration::from_micros(7)));
        let mem = d.join("memory/g/m");
        write(&mem, "memory.usage_in_bytes", "1000000\n");
        write(
            &mem,
            "memory.stat",
            "cache 5\ninactive_file 9\ntotal_inactive_file 400000\n",
        );
        write(&mem, "memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(cg.memory_current(), Some(600000));
        assert_eq!(cg.memory_limit(), None);
        write(&mem, "memory.limit_in_bytes", "268435456\n");
        assert_eq!(cg.memory_limit(), Some(256 << 20));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn usage_v2() {
        let d = tmp("v2");
        let cg = Hierarchy::V2(d.join("g")).get("m");
        let dir = d.join("g/m");
        write(&dir, "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\n");
        write(&dir, "memory.current", "2048\n");
        write(&dir, "memory.stat", "anon 100\ninactive_file 48\n");
        write(&dir, "memory.max", "max\n");
        assert_eq!(cg.cpu_usage(), Some(Duration::from_millis(1500)));
        assert_eq!(cg.memory_current(), Some(2000));
        assert_eq!(cg.memory_limit(), None);
        write(&dir, "memory.max", "1073741824\n");
        assert_eq!(cg.memory_limit(), Some(1 << 30));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
