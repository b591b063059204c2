//! Looking inside a running machine: a command run in all of its namespaces ([`Exec`], the
//! request of [`crate::Machines::exec`], and [`ExecOutput`]), and the pure helpers that build
//! the commands the daemon itself runs there (the journal, the failed units) and read their
//! output. The instance is untrusted: its output is parsed bounded, and unit names it reports
//! are checked before they go back into a command line.
use std::time::Duration;

/// Azure keeps the last 4,096 bytes of each stream of a run command.
pub const RUN_COMMAND_OUTPUT_BYTES: usize = 4096;
/// At most this many failed units are reported per instance.
pub const MAX_FAILED_UNITS: usize = 16;
/// Longest unit name accepted (systemd's own limit is 256).
pub const MAX_UNIT_NAME: usize = 256;

/// Where streamed output goes; `false` back means "stop" (the reader went away).
pub type Sink<'a> = &'a mut (dyn FnMut(&[u8]) -> bool + Send);

/// A command to run inside a running machine, as root of the instance.
pub struct Exec<'a> {
    /// `argv[0]` is looked up in the instance's `PATH`.
    pub argv: Vec<String>,
    /// The environment (nothing of the daemon's is passed on); `PATH`, `HOME`, `LANG` and
    /// `SYSTEMD_PAGER`/`SYSTEMD_COLORS` are always set.
    pub env: Vec<(String, String)>,
    /// The command and everything it started are killed after this long.
    pub timeout: Duration,
    /// Bytes kept of each stream: the last ones (Azure keeps the tail).
    pub keep_bytes: usize,
    /// Where stdout goes as it arrives instead of being kept (a followed journal); returning
    /// `false` (the reader went away) kills the command.
    pub stdout_sink: Option<Sink<'a>>,
    /// Set by the caller to kill the command early (a follower that disconnected while the
    /// command printed nothing).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Exec<'_> {
    pub fn new(argv: Vec<String>, timeout: Duration, keep_bytes: usize) -> Exec<'static> {
        Exec {
            argv,
            env: Vec::new(),
            timeout,
            keep_bytes,
            stdout_sink: None,
            cancel: None,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    Exited(i32),
    Signaled(i32),
    /// Killed at the timeout.
    TimedOut,
    /// The sink stopped wanting output; the command was killed.
    Abandoned,
}

/// What a command printed (the kept tails) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExecStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes dropped from the front of stdout / stderr to keep the tails.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

impl ExecOutput {
    pub fn exited(code: i32, stdout: &str, stderr: &str) -> ExecOutput {
        ExecOutput {
            status: ExecStatus::Exited(code),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
            stdout_dropped: 0,
            stderr_dropped: 0,
        }
    }
    pub fn success(&self) -> bool {
        self.status == ExecStatus::Exited(0)
    }
}

/// The last `keep` bytes of a stream, with a count of what was dropped.
#[derive(Debug, Default)]
pub struct Tail {
    pub buf: Vec<u8>,
    pub dropped: u64,
    keep: usize,
}

impl Tail {
    pub fn new(keep: usize) -> Tail {
        Tail {
            buf: Vec::new(),
            dropped: 0,
            keep,
        }
    }
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.keep {
            let cut = self.buf.len() - self.keep;
            self.buf.drain(..cut);
            self.dropped += cut as u64;
        }
    }
}

/// A unit name systemd could have printed; anything else from the instance is ignored.
pub fn valid_unit_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_UNIT_NAME
        && !s.starts_with('-')
        && s.contains('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@\\".contains(&b))
}

/// `systemctl` listing the failed units, one per line, machine-readable.
pub fn failed_units_argv() -> Vec<String> {
    [
        "systemctl",
        "list-units",
        "--state=failed",
        "--plain",
        "--no-legend",
        "--no-pager",
        "--full",
    ]
    .map(String::from)
    .to_vec()
}

/// `systemctl is-system-running`: whether the machine's boot has finished.
pub fn system_state_argv() -> Vec<String> {
    ["systemctl", "is-system-running"]
        .map(String::from)
        .to_vec()
}

/// Whether `systemctl is-system-running`'s answer says the boot is over (its exit status is
/// non-zero for `degraded`, so only the word counts). Until then a failed unit may be one of
/// systemd's own early ones while the app still comes up; an empty or unknown answer is not
/// an end of boot either.
pub fn boot_finished(text: &str) -> bool {
    matches!(
        text.split_whitespace().next(),
        Some("running" | "degraded" | "maintenance")
    )
}

/// `systemctl show` of what systemd recorded of a unit's end (for a unit whose journal is empty).
pub fn unit_result_argv(unit: &str) -> Vec<String> {
    [
        "systemctl",
        "show",
        "--no-pager",
        "--property=Result,ExecMainCode,ExecMainStatus",
        "--",
        unit,
    ]
    .map(String::from)
    .to_vec()
}

/// `systemctl show`'s `Key=value` lines as one line, e.g. `Result=exit-code ExecMainStatus=1`
/// (at most the three properties asked for, each bounded).
pub fn unit_result_line(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| ["Result", "ExecMainCode", "ExecMainStatus"].contains(k))
        .take(3)
        .map(|(k, v)| format!("{k}={}", v.chars().take(64).collect::<String>()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The unit names of `systemctl list-units --state=failed --plain --no-legend` (first column;
/// a leading `●` is skipped), at most [`MAX_FAILED_UNITS`], invalid names dropped.
pub fn parse_failed_units(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().take(1024) {
        let mut words = line.split_whitespace();
        let mut first = words.next();
        if first == Some("●") || first == Some("*") {
            first = words.next();
        }
        let Some(name) = first else { continue };
        if valid_unit_name(name) && !out.iter().any(|u| u == name) {
            out.push(name.to_string());
            if out.len() == MAX_FAILED_UNITS {
                break;
            }
        }
    }
    out
}

/// What to read of a journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalQuery {
    /// `-u`: a validated unit name.
    pub unit: Option<String>,
    /// `--since`: journalctl's own syntax ("10 min ago", "2024-01-01 10:00"), checked to be
    /// printable and short.
    pub since: Option<String>,
    /// `-n`: the last lines.
    pub lines: u32,
    pub follow: bool,
}

/// Most lines one journal read returns.
pub const MAX_JOURNAL_LINES: u32 = 10_000;

impl JournalQuery {
    /// Checks the fields that reach journalctl's command line.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(u) = &self.unit {
            if !valid_unit_name(u) && !valid_unit_name(&format!("{u}.service")) {
                return Err(format!("{u:?} is not a unit name"));
            }
        }
        if let Some(s) = &self.since {
            let ok = !s.is_empty()
                && s.len() <= 64
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || " :-+.,@".contains(c));
            if !ok {
                return Err(format!(
                    "--since {s:?} is not a time journalctl reads (e.g. \"10 min ago\", \"2024-01-02 10:00:00\")"
                ));
            }
        }
        if self.lines == 0 || self.lines > MAX_JOURNAL_LINES {
            return Err(format!("--lines must be 1..={MAX_JOURNAL_LINES}"));
        }
        Ok(())
    }

    /// journalctl's command line (validate first).
    pub fn argv(&self) -> Vec<String> {
        let mut v: Vec<String> = ["journalctl", "--no-pager", "-o", "short-iso", "-n"]
            .map(String::from)
            .to_vec();
        v.push(self.lines.to_string());
        if let Some(u) = &self.unit {
            v.push(format!("--unit={u}"));
        }
        if let Some(s) = &self.since {
            v.push(format!("--since={s}"));
        }
        if self.follow {
            v.push("--follow".into());
        }
        v
    }
}

/// The last `n` lines of a `short-iso` journal, with runs of the same message (the line after
/// its timestamp and host) folded into their first line and a count: systemd can repeat one
/// line many times as a unit fails, which would push the unit's own last words out of view.
pub fn journal_tail(text: &str, n: usize) -> Vec<String> {
    let message = |l: &str| l.splitn(3, ' ').nth(2).unwrap_or(l).to_string();
    let mut runs: Vec<(String, String, usize)> = Vec::new();
    for line in text.lines() {
        let m = message(line);
        match runs.last_mut() {
            Some((_, last, count)) if *last == m => *count += 1,
            _ => runs.push((line.to_string(), m, 1)),
        }
    }
    let start = runs.len().saturating_sub(n);
    runs.drain(start..)
        .map(|(line, _, count)| match count {
            1 => line,
            c => format!("{line} (×{c})"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_tail_folds_repeats_and_keeps_the_last() {
        let j = "t1 h a: start\nt2 h systemd[1]: cannot kill\nt3 h systemd[1]: cannot kill\nt4 h a: error\nt5 h systemd[1]: cannot kill\n";
        assert_eq!(
            journal_tail(j, 3),
            vec![
                "t2 h systemd[1]: cannot kill (×2)",
                "t4 h a: error",
                "t5 h systemd[1]: cannot kill"
            ]
        );
        assert_eq!(journal_tail(j, 10).len(), 4);
        assert!(journal_tail("", 5).is_empty());
        assert_eq!(journal_tail("odd", 1), vec!["odd"]);
    }

    #[test]
    fn boot_finished_and_unit_result() {
        for (text, want) in [
            ("running\n", true),
            ("degraded\n", true),
            ("maintenance", true),
            ("starting\n", false),
            ("initializing\n", false),
            ("stopping\n", false),
            ("offline\n", false),
            ("", false),
            ("Failed to connect to bus\n", false),
        ] {
            assert_eq!(boot_finished(text), want, "{text:?}");
        }
        assert_eq!(
            unit_result_line("Result=exit-code\nExecMainCode=1\nExecMainStatus=32\nOther=x\n"),
            "Result=exit-code ExecMainCode=1 ExecMainStatus=32"
        );
        assert_eq!(unit_result_line("garbage\n"), "");
        assert_eq!(
            unit_result_line(&format!("Result={}", "x".repeat(500))).len(),
            71
        );
    }

    #[test]
    fn failed_units_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            (
                "my_app.service loaded failed failed my_app: sample app\n",
                &["my_app.service"],
            ),
            (
                "● nginx.service loaded failed failed A high performance web server\n\
                 my_app.service loaded failed failed x\n",
                &["nginx.service", "my_app.service"],
            ),
            // Not unit names: dropped (an instance may print anything).
            (
                "--output=/etc/x loaded failed\n/etc/passwd x\nnodot x\n",
                &[],
            ),
            ("a.service x\na.service y\n", &["a.service"]),
            ("getty@tty1.service loaded failed", &["getty@tty1.service"]),
        ];
        for (text, want) in cases {
            assert_eq!(parse_failed_units(text), *want, "{text:?}");
        }
        let many: String = (0..100).map(|i| format!("u{i}.service x\n")).collect();
        assert_eq!(parse_failed_units(&many).len(), MAX_FAILED_UNITS);
    }

    #[test]
    fn journal_query_table() {
        let q = |unit: Option<&str>, since: Option<&str>, lines: u32| JournalQuery {
            unit: unit.map(String::from),
            since: since.map(String::from),
            lines,
            follow: false,
        };
        assert!(q(Some("nginx"), Some("10 min ago"), 100).validate().is_ok());
        assert!(q(Some("nginx.service"), Some("2024-01-02 10:00:00"), 1)
            .validate()
            .is_ok());
        for bad in [
            q(Some("--root=/"), None, 10),
            q(Some("a b"), None, 10),
            q(None, Some("--until=x"), 10),
            q(None, Some("now; rm"), 10),
            q(None, None, 0),
            q(None, None, MAX_JOURNAL_LINES + 1),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let mut f = q(Some("nginx"), Some("1 h ago"), 5);
        f.follow = true;
        assert_eq!(
            f.argv().join(" "),
            "journalctl --no-pager -o short-iso -n 5 --unit=nginx --since=1 h ago --follow"
        );
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!((t.buf.as_slice(), t.dropped), (&b"cdef"[..], 2));
        t.push(b"g");
        assert_eq!((t.buf.as_slice(), t.dropped), (&b"defg"[..], 3));
    }
}
