//! Test prerequisites that cannot be skipped in CI.
//!
//! Every test that needs something from the machine (root, systemd-nspawn, debootstrap, nft,
//! Microsoft's specs in `../shared`, python3 modules, the runner user…) asks [`require`] first.
//! Under CI (`CI` set to anything but empty, `0` or `false`) a missing prerequisite panics, so the
//! test fails with the reason. Elsewhere the skip is printed on the terminal (past libtest's
//! output capture) and, when `SCALESET_TEST_SKIPS` names a file, appended to it as
//! `binary<TAB>test<TAB>reason`; `scripts/test.sh` counts those lines so a skipping test is
//! reported as skipped, not passed.
//!
//! The `missing_*` functions return `Some(reason)` when a prerequisite is absent, for use as
//! `if !testkit::require(testkit::missing_root()) { return; }`.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment variable `scripts/test.sh` sets to the file that collects skips.
pub const SKIPS_ENV: &str = "SCALESET_TEST_SKIPS";

/// Whether the tests run under CI, where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `true` when the prerequisite is there (`missing` is `None`). Otherwise, under CI, panics with
/// the reason; elsewhere records the skip and returns `false` (the caller returns, or leaves out
/// the part of the test that needs it).
#[track_caller]
pub fn require(missing: Option<impl Display>) -> bool {
    let Some(why) = missing else { return true };
    let test = test_name();
    if under_ci() {
        panic!(
            "{test}: prerequisite missing under CI={}: {why}",
            std::env::var("CI").unwrap_or_default()
        );
    }
    record_skip(&test, &why.to_string());
    false
}

/// libtest runs each test on a thread named after it.
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("<unnamed test thread>")
        .to_string()
}

/// The test binary's file name (`machines-0123abcd`), as cargo's `Running …` line shows it.
fn binary_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

fn record_skip(test: &str, why: &str) {
    let why = why.replace(['\n', '\t'], " ");
    // Straight to the terminal: libtest captures only the print macros, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    let Some(file) = std::env::var_os(SKIPS_ENV) else {
        return;
    };
    let line = format!("{}\t{test}\t{why}\n", binary_name());
    // One short O_APPEND write per skip, so parallel tests and binaries never interleave.
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = res {
        panic!(
            "cannot record a skip in {}: {e}",
            PathBuf::from(file).display()
        );
    }
}

/// `Some` unless the tests run as root.
pub fn missing_root() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { geteuid() };
    (euid != 0).then(|| "not running as root".to_string())
}

extern "C" {
    fn geteuid() -> u32;
}

/// Where `tool` is installed, searching the system directories (tests may run with a bare PATH).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ]
    .iter()
    .map(|d| Path::new(d).join(tool))
    .find(|p| p.is_file())
}

/// `Some` naming the first of `tools` that is not installed, with the Debian packages to install.
pub fn missing_tools(tools: &[&str], packages: &str) -> Option<String> {
    let absent = tools.iter().find(|t| find_tool(t).is_none())?;
    Some(format!(
        "{absent} is not installed (scripts/install-deps.sh installs {packages})"
    ))
}

/// `Some` unless `path` exists; `what` says what it is and where it comes from.
pub fn missing_path(path: &Path, what: &str) -> Option<String> {
    (!path.exists()).then(|| format!("{what} is not at {}", path.display()))
}

/// The workspace's `../shared` folder (Microsoft's specs and examples; CI has it beside the
/// project).
pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// `Some` unless `../shared/<rel>` exists.
pub fn missing_shared(rel: &str) -> Option<String> {
    let p = shared_dir().join(rel);
    (!p.exists()).then(|| {
        format!(
            "{} is not here (the shared folder sits beside the project in CI)",
            p.display()
        )
    })
}

/// `Some` unless a python3 can import every module in `modules`.
pub fn missing_python_modules(modules: &[&str]) -> Option<String> {
    let Some(py) = find_tool("python3") else {
        return Some("python3 is not installed (scripts/install-deps.sh installs it)".into());
    };
    let ok = Command::new(py)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    (!ok).then(|| {
        format!(
            "python3 cannot import {} (scripts/install-deps.sh installs them)",
            modules.join(", ")
        )
    })
}

/// `Some` unless the user `name` exists (as `id` sees it, the way the daemon's lookups do).
pub fn missing_user(name: &str) -> Option<String> {
    let found = Command::new("id")
        .args(["-u", name])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    (!found).then(|| format!("no user {name} (scripts/install-deps.sh creates it)"))
}
