//! Live progress for the CLI's long waits (bakes, base builds, CI runs, rolling upgrades,
//! scale set operations): on a terminal one status line redrawn in place; in a pipe or a log
//! plain lines, one per change. The formatting is pure (`frame`, `count_line`, ...); only
//! `Progress::stderr` looks at the terminal.
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A terminal: one line, rewritten in place.
    Redraw { width: usize },
    /// A pipe or a file: a line whenever the status changes.
    Lines,
}

/// Redraw on a terminal of known width unless `TERM` is dumb; lines otherwise.
pub fn mode_for(is_tty: bool, term: Option<&str>, columns: Option<usize>) -> Mode {
    match (is_tty, term) {
        (true, Some(t)) if t != "dumb" => Mode::Redraw {
            width: columns.filter(|&c| c >= 20).unwrap_or(80),
        },
        _ => Mode::Lines,
    }
}

/// `12s`, `3m05s`, `1h02m`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// At most `width` characters (a redrawn line must not wrap, or the next redraw leaves it).
pub fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut s: String = line.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// What to write for status `text` after `last`, `since` being how long this status has
/// held: in Redraw mode the line again with that time (even unchanged: the clock moves); in
/// Lines mode only a changed status, without a clock (a log gets one line per change).
pub fn frame(mode: Mode, last: &str, text: &str, since: Duration) -> Option<String> {
    match mode {
        Mode::Redraw { width } => Some(format!(
            "\r\x1b[2K{}",
            fit(&format!("{text} ({})", elapsed(since)), width)
        )),
        Mode::Lines if text == last => None,
        Mode::Lines => Some(format!("{text}\n")),
    }
}

/// What ends a redrawn line before other output or at the end.
pub fn clear(mode: Mode, drawn: bool) -> &'static str {
    match mode {
        Mode::Redraw { .. } if drawn => "\n",
        _ => "",
    }
}

/// `label: 2/3 healthy`.
pub fn count_line(label: &str, done: usize, of: usize, what: &str) -> String {
    format!("{label}: {done}/{of} {what}")
}

/// A rolling upgrade's status (Azure's progress counts).
pub fn rollout_line(code: &str, ok: u64, failed: u64, in_progress: u64, pending: u64) -> String {
    let total = ok + failed + in_progress + pending;
    format!(
        "rolling upgrade {code}: {ok}/{total} upgraded, {failed} failed, {in_progress} in progress, {pending} pending"
    )
}

/// The stage a bake event starts (None: not a stage, e.g. a script line).
pub fn bake_stage(e: &image::BakeEvent) -> Option<String> {
    use image::BakeEvent::*;
    Some(match e {
        BaseReady { base, cached, .. } => {
            format!("base {base} {}", if *cached { "cached" } else { "built" })
        }
        Copying { files, bytes } => {
            format!("copying the package ({files} files, {} KiB)", bytes / 1024)
        }
        ScriptStarted { command } => format!("running {command}"),
        ScriptLine(_) => return None,
        Deprovisioning => "deprovisioning".into(),
        Capturing => "capturing the layer".into(),
        Done { cache_hit, .. } => {
            if *cache_hit {
                "done (cache hit)".into()
            } else {
                "done".into()
            }
        }
    })
}

/// A run's step marker in its log (`##[section]Starting: X` / `Finishing: X (result)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMark<'a> {
    Started(&'a str),
    Finished { step: &'a str, result: &'a str },
}

/// The step marker of a run log line (`<time> | <text>`), if it is one.
pub fn step_mark(line: &str) -> Option<StepMark<'_>> {
    let (_, text) = line.trim_end().split_once(" | ")?;
    if let Some(step) = text.strip_prefix("##[section]Starting: ") {
        return Some(StepMark::Started(step));
    }
    let rest = text.strip_prefix("##[section]Finishing: ")?;
    let (step, result) = rest.rsplit_once(" (").unwrap_or((rest, "?)"));
    Some(StepMark::Finished {
        step,
        result: result.trim_end_matches(')'),
    })
}

/// One status line on stderr (see the module docs).
pub struct Progress {
    mode: Mode,
    last: String,
    drawn: bool,
    /// When the current status began.
    since: Instant,
}

impl Progress {
    pub fn stderr() -> Progress {
        use std::io::IsTerminal;
        let columns = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
        Progress::new(mode_for(
            std::io::stderr().is_terminal(),
            std::env::var("TERM").ok().as_deref(),
            columns,
        ))
    }

    pub fn new(mode: Mode) -> Progress {
        Progress {
            mode,
            last: String::new(),
            drawn: false,
            since: Instant::now(),
        }
    }

    /// The current status.
    pub fn update(&mut self, text: &str) {
        if text != self.last {
            self.since = Instant::now();
        }
        if let Some(f) = frame(self.mode, &self.last, text, self.since.elapsed()) {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(f.as_bytes());
            let _ = e.flush();
            self.drawn = matches!(self.mode, Mode::Redraw { .. });
        }
        self.last = text.to_string();
    }

    /// Redraws the current status (its clock moves); nothing in Lines mode.
    pub fn tick(&mut self) {
        if !self.last.is_empty() {
            let last = self.last.clone();
            self.update(&last);
        }
    }

    /// A line that stays (a step that finished), printed above the status line.
    pub fn println(&mut self, line: &str) {
        let mut e = std::io::stderr().lock();
        if let Mode::Redraw { .. } = self.mode {
            let _ = e.write_all(b"\r\x1b[2K");
        }
        let _ = writeln!(e, "{line}");
        self.drawn = false;
        if !self.last.is_empty() {
            if let Some(f) = frame(self.mode, "", &self.last, self.since.elapsed()) {
                if matches!(self.mode, Mode::Redraw { .. }) {
                    let _ = e.write_all(f.as_bytes());
                    self.drawn = true;
                }
            }
        }
        let _ = e.flush();
    }

    /// Ends the status line (a terminal keeps its last state).
    pub fn finish(&mut self) {
        let _ = std::io::stderr().write_all(clear(self.mode, self.drawn).as_bytes());
        self.drawn = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_from_the_terminal() {
        assert_eq!(mode_for(false, Some("xterm"), None), Mode::Lines);
        assert_eq!(mode_for(true, Some("dumb"), None), Mode::Lines);
        assert_eq!(mode_for(true, None, None), Mode::Lines);
        assert_eq!(
            mode_for(true, Some("xterm"), Some(120)),
            Mode::Redraw { width: 120 }
        );
        assert_eq!(
            mode_for(true, Some("xterm"), Some(3)),
            Mode::Redraw { width: 80 }
        );
    }

    #[test]
    fn elapsed_formats() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (185, "3m05s"),
            (3720, "1h02m"),
        ];
        for (s, want) in cases {
            assert_eq!(elapsed(Duration::from_secs(s)), want);
        }
    }

    #[test]
    fn lines_print_changes_only_and_redraw_always() {
        let t = Duration::from_secs(5);
        assert_eq!(frame(Mode::Lines, "a", "a", t), None);
        assert_eq!(frame(Mode::Lines, "a", "b", t).as_deref(), Some("b\n"));
        let r = Mode::Redraw { width: 80 };
        assert_eq!(frame(r, "a", "a", t).as_deref(), Some("\r\x1b[2Ka (5s)"));
        assert_eq!(
            frame(Mode::Redraw { width: 6 }, "", "abcdefgh", t).as_deref(),
            Some("\r\x1b[2Kabcde…")
        );
        assert_eq!(clear(r, true), "\n");
        assert_eq!(clear(r, false), "");
        assert_eq!(clear(Mode::Lines, true), "");
    }

    #[test]
    fn fit_keeps_short_lines() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcd", 3), "ab…");
        assert_eq!(fit("ééé", 3), "ééé");
    }

    #[test]
    fn status_lines() {
        assert_eq!(count_line("web", 2, 3, "healthy"), "web: 2/3 healthy");
        assert_eq!(
            rollout_line("RollingForward", 1, 0, 1, 1),
            "rolling upgrade RollingForward: 1/3 upgraded, 0 failed, 1 in progress, 1 pending"
        );
    }

    #[test]
    fn bake_stages() {
        use image::BakeEvent::*;
        assert_eq!(bake_stage(&ScriptLine("x".into())), None);
        assert_eq!(
            bake_stage(&ScriptStarted {
                command: "sh setupscript.sh".into()
            })
            .as_deref(),
            Some("running sh setupscript.sh")
        );
        assert_eq!(
            bake_stage(&Capturing).as_deref(),
            Some("capturing the layer")
        );
    }

    #[test]
    fn step_marks() {
        assert_eq!(
            step_mark("12:00:01 | ##[section]Starting: Build\n"),
            Some(StepMark::Started("Build"))
        );
        assert_eq!(
            step_mark("12:00:09 | ##[section]Finishing: Build (succeeded)"),
            Some(StepMark::Finished {
                step: "Build",
                result: "succeeded"
            })
        );
        assert_eq!(
            step_mark("t | ##[section]Finishing: odd"),
            Some(StepMark::Finished {
                step: "odd",
                result: "?"
            })
        );
        assert_eq!(step_mark("no separator"), None);
        assert_eq!(step_mark("t | plain output"), None);
    }
}
