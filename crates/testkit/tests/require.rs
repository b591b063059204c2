//! `require` as the suite sees it: each test re-runs itself (as a child test process, with the
//! environment under test) and checks the child's exit status, output and the skips file.
use std::path::PathBuf;
use std::process::{Command, Output};

const CHILD: &str = "TESTKIT_CHILD";
const REASON: &str = "the widget is not installed";

/// In the child: asks for a missing prerequisite and returns if told to skip.
fn child_body() {
    assert!(
        !testkit::require(Some(REASON)),
        "a missing prerequisite cannot pass"
    );
}

/// Runs test `name` of this binary again with `CI` set to `ci` (or unset) and the skips file.
fn rerun(name: &str, ci: Option<&str>, skips: &PathBuf) -> Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env(testkit::SKIPS_ENV, skips)
        .env_remove("CI");
    if let Some(v) = ci {
        c.env("CI", v);
    }
    c.output().unwrap()
}

fn skips_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("testkit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_present_prerequisite_passes() {
    assert!(testkit::require(None::<String>));
    assert!(testkit::require(testkit::missing_tools(&["sh"], "dash")));
    assert!(testkit::missing_tools(&["no-such-tool-xyz"], "nothing")
        .unwrap()
        .contains("no-such-tool-xyz is not installed"));
    assert!(testkit::missing_user("root").is_none());
    assert!(testkit::missing_user("no-such-user-xyz").is_some());
}

#[test]
fn under_ci_a_missing_prerequisite_fails_the_test() {
    if std::env::var_os(CHILD).is_some() {
        return child_body();
    }
    for ci in ["true", "1", "yes"] {
        let skips = skips_file("ci");
        let out = rerun(
            "under_ci_a_missing_prerequisite_fails_the_test",
            Some(ci),
            &skips,
        );
        let all = text(&out);
        assert!(!out.status.success(), "CI={ci}: the child passed:\n{all}");
        assert!(
            all.contains(&format!(
                "under_ci_a_missing_prerequisite_fails_the_test: prerequisite missing under CI={ci}: {REASON}"
            )),
            "{all}"
        );
        assert!(
            !skips.exists(),
            "CI={ci}: a failure is not recorded as a skip"
        );
    }
}

#[test]
fn outside_ci_a_missing_prerequisite_is_a_recorded_skip() {
    if std::env::var_os(CHILD).is_some() {
        return child_body();
    }
    for ci in [None, Some(""), Some("0"), Some("false")] {
        let skips = skips_file("noci");
        let out = rerun(
            "outside_ci_a_missing_prerequisite_is_a_recorded_skip",
            ci,
            &skips,
        );
        let all = text(&out);
        assert!(out.status.success(), "CI={ci:?}:\n{all}");
        assert!(
            all.contains(&format!(
                "SKIPPED outside_ci_a_missing_prerequisite_is_a_recorded_skip: {REASON}"
            )),
            "{all}"
        );
        let exe = std::env::current_exe().unwrap();
        let bin = exe.file_name().unwrap().to_string_lossy();
        assert_eq!(
            std::fs::read_to_string(&skips).unwrap(),
            format!("{bin}\toutside_ci_a_missing_prerequisite_is_a_recorded_skip\t{REASON}\n")
        );
        std::fs::remove_file(&skips).unwrap();
    }
}
