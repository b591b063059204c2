//! Which top-level commands of a bake's setup script failed. Like Azure, a bake's result is the
//! script's exit status; a script without `set -e` carries on past a failed `pip3 install`
//! and "succeeds" with an image that cannot serve. For bash scripts an `ERR` trap (installed
//! through `BASH_ENV`, for the top-level script only) prints one marked line per failed
//! command; [`Tracker`] picks those lines out of the script's output, with the output that came
//! just before each, and [`Tracker::summary`] is what the log, the release run and `image show`
//! report. Pure apart from nothing: lines in, summary out.

use std::collections::VecDeque;

/// Output lines kept before each failure.
const CONTEXT_LINES: usize = 5;
/// Failures recorded at most (a loop of failing commands stays bounded).
const MAX_FAILURES: usize = 20;
/// Characters kept of a command or an output line.
const MAX_CHARS: usize = 300;

/// One failed top-level command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub line: u32,
    pub status: i32,
    pub command: String,
    /// The script's last output lines before the failure.
    pub output: Vec<String>,
}

/// Whether `script`'s interpreter is bash (`#!/bin/bash`, `#!/usr/bin/env bash`, ...): only
/// bash reads `BASH_ENV` and has an `ERR` trap.
pub fn is_bash(script: &[u8]) -> bool {
    let first = script.split(|&b| b == b'\n').next().unwrap_or_default();
    let Some(rest) = first.strip_prefix(b"#!") else {
        return false;
    };
    let words: Vec<&[u8]> = rest
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let is = |w: &[u8]| w == b"bash" || w.ends_with(b"/bash");
    match words.as_slice() {
        [interp, ..] if is(interp) => true,
        [env, prog, ..] if env.ends_with(b"/env") => is(prog),
        _ => false,
    }
}

/// The `BASH_ENV` file: an `ERR` trap printing a line marked with `mark` to stderr. It unsets
/// `BASH_ENV` so that the bash processes the script starts don't install it too.
pub fn trap_script(mark: &str) -> String {
    format!(
        "unset BASH_ENV\ntrap '__scaleset_s=$?; printf \"scaleset: [{mark}] line %s exited with %s: %s\\n\" \"$LINENO\" \"$__scaleset_s\" \"$BASH_COMMAND\" >&2' ERR\n"
    )
}

/// Reads the script's output line by line.
#[derive(Debug)]
pub struct Tracker {
    prefix: String,
    recent: VecDeque<String>,
    failed: Vec<Failed>,
    dropped: usize,
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

impl Tracker {
    pub fn new(mark: &str) -> Tracker {
        Tracker {
            prefix: format!("scaleset: [{mark}] line "),
            recent: VecDeque::new(),
            failed: Vec::new(),
            dropped: 0,
        }
    }

    /// One line of output (without its newline).
    pub fn line(&mut self, l: &str) {
        match self.parse(l) {
            Some((line, status, command)) if self.failed.len() < MAX_FAILURES => {
                self.failed.push(Failed {
                    line,
                    status,
                    command: clip(command),
                    output: self.recent.drain(..).collect(),
                })
            }
            Some(_) => self.dropped += 1,
            None => {
                if self.recent.len() == CONTEXT_LINES {
                    self.recent.pop_front();
                }
                self.recent.push_back(clip(l));
            }
        }
    }

    fn parse<'l>(&self, l: &'l str) -> Option<(u32, i32, &'l str)> {
        let rest = l.strip_prefix(&self.prefix)?;
        let (line, rest) = rest.split_once(" exited with ")?;
        let (status, command) = rest.split_once(": ")?;
        Some((line.parse().ok()?, status.parse().ok()?, command))
    }

    pub fn failed(&self) -> &[Failed] {
        &self.failed
    }

    /// One warning per failed command, with the output before it; empty when none failed.
    pub fn summary(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .failed
            .iter()
            .map(|f| {
                let mut s = format!(
                    "setup script line {}: `{}` exited with {}",
                    f.line, f.command, f.status
                );
                for o in &f.output {
                    s.push_str("\n    ");
                    s.push_str(o);
                }
                s
            })
            .collect();
        if self.dropped > 0 {
            out.push(format!("… and {} more failed commands", self.dropped));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_scripts_are_recognised() {
        for (script, want) in [
            ("#!/bin/bash\necho", true),
            ("#!/usr/bin/bash -e\n", true),
            ("#! /bin/bash", true),
            ("#!/usr/bin/env bash\n", true),
            ("#!/usr/bin/env -S bash -e\n", false),
            ("#!/bin/sh\n", false),
            ("#!/usr/bin/env python3\n", false),
            ("#!/bin/bashful\n", false),
            ("echo no shebang\n", false),
            ("", false),
        ] {
            assert_eq!(is_bash(script.as_bytes()), want, "{script:?}");
        }
    }

    #[test]
    fn failures_with_the_output_before_them() {
        let mut t = Tracker::new("m1");
        for l in [
            "Reading package lists...",
            "a",
            "b",
            "c",
            "d",
            "ERROR: Could not find a version that satisfies the requirement uwsgi",
            "scaleset: [m1] line 7 exited with 1: pip3 install uwsgi flask",
            "scaleset: [other] line 8 exited with 1: forged",
            "scaleset: [m1] line x exited with 1: not a number",
            "scaleset: [m1] line 9 exited with 127: cp -r drop /var/www: html",
        ] {
            t.line(l);
        }
        assert_eq!(
            t.failed(),
            &[
                Failed {
                    line: 7,
                    status: 1,
                    command: "pip3 install uwsgi flask".into(),
                    output: vec![
                        "a".into(),
                        "b".into(),
                        "c".into(),
                        "d".into(),
                        "ERROR: Could not find a version that satisfies the requirement uwsgi"
                            .into()
                    ],
                },
                Failed {
                    line: 9,
                    status: 127,
                    command: "cp -r drop /var/www: html".into(),
                    output: vec![
                        "scaleset: [other] line 8 exited with 1: forged".into(),
                        "scaleset: [m1] line x exited with 1: not a number".into()
                    ],
                },
            ]
        );
        let s = t.summary();
        assert_eq!(s.len(), 2);
        assert!(s[0]
            .starts_with("setup script line 7: `pip3 install uwsgi flask` exited with 1\n    a\n"));
    }

    #[test]
    fn bounded() {
        let mut t = Tracker::new("m");
        let long = "x".repeat(1000);
        for i in 0..30 {
            t.line(&long);
            t.line(&format!("scaleset: [m] line {i} exited with 1: {long}"));
        }
        assert_eq!(t.failed().len(), MAX_FAILURES);
        assert_eq!(t.failed()[0].command.chars().count(), MAX_CHARS + 1);
        assert_eq!(t.failed()[0].output[0].chars().count(), MAX_CHARS + 1);
        assert_eq!(t.summary().last().unwrap(), "… and 10 more failed commands");
        assert!(Tracker::new("m").summary().is_empty());
    }

    #[test]
    fn the_trap_prints_what_the_tracker_reads() {
        let trap = trap_script("m2");
        assert!(trap.starts_with("unset BASH_ENV\n"));
        assert!(trap.contains("scaleset: [m2] line %s exited with %s: %s"));
    }

    /// The trap in a real bash: top-level failures are reported with their line and status,
    /// not those inside `if`/`||`, not those of bash scripts the script runs.
    #[test]
    fn real_bash_reports_top_level_failures() {
        let dir = std::env::temp_dir().join(format!("failures-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let trap = dir.join("trap.sh");
        std::fs::write(&trap, trap_script("t9")).unwrap();
        let child = dir.join("child.sh");
        std::fs::write(&child, "false\necho child done\n").unwrap();
        let script = dir.join("setup.sh");
        let body = format!(
            "#!/bin/bash\necho start\nfalse\nif false; then :; fi\nfalse || true\nbash {}\nls /nonexistent-dir\necho end\n",
            child.display()
        );
        std::fs::write(&script, body).unwrap();
        let out = std::process::Command::new("bash")
            .arg(&script)
            .env("BASH_ENV", &trap)
            .output()
            .unwrap();
        let mut t = Tracker::new("t9");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        for l in text.lines() {
            t.line(l);
        }
        let got: Vec<(u32, i32, &str)> = t
            .failed()
            .iter()
            .map(|f| (f.line, f.status, f.command.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(3, 1, "false"), (7, 2, "ls /nonexistent-dir")],
            "{text}"
        );
        assert!(out.status.success(), "the script's own status is unchanged");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
