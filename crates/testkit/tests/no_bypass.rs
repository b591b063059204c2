//! Every prerequisite check goes through `testkit::require`: a test that prints its own skip or
//! reads `CI` itself is one the summary cannot count and CI cannot refuse. This scans the
//! workspace's Rust sources for the patterns such checks use.
use std::path::{Path, PathBuf};

/// Checks that predate the helper and already fail under CI. Remove an entry when its file
/// moves to `testkit::require`.
const KNOWN: &[&str] = &[];

const PATTERNS: &[&str] = &[
    "eprintln!(\"SKIPPED",
    "eprintln!(\"skipped",
    "var_os(\"CI\")",
    "var(\"CI\")",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_test_skips_or_reads_ci_on_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for e in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        if e.file_name() != "testkit" && e.path().is_dir() {
            rust_files(&e.path(), &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} sources", files.len());
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if KNOWN.contains(&rel.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if PATTERNS.iter().any(|p| line.contains(p)) {
                found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use testkit::require(reason) instead (it fails under CI and counts the skip):\n{}",
        found.join("\n")
    );
}
