//! Processes as `/proc` shows them.
use std::fs;

/// The start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) of a live,
/// non-zombie process: with the pid it identifies the process across pid reuse.
pub fn starttime(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // f[0] = state (field 3), starttime = field 22 → f[19]
    if f.first().is_some_and(|s| *s == "Z" || *s == "X") {
        return None;
    }
    f.get(19)?.parse().ok()
}

pub fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// The arguments of a process (empty when it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` runs and its command line contains `needle` (how the daemon recognizes
/// the processes it started, after a restart).
pub fn cmdline_contains(pid: u32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// The direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| ppid(p) == Some(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process() {
        let me = std::process::id();
        assert!(super::starttime(me).is_some());
        assert_eq!(super::ppid(me), Some(std::os::unix::process::parent_id()));
        let args = super::cmdline(me);
        assert!(!args.is_empty());
        assert!(super::cmdline_contains(me, &args[0]));
        assert!(!super::cmdline_contains(me, "no such argument \u{1}"));
        assert!(super::cmdline(u32::MAX).is_empty());
    }
}
