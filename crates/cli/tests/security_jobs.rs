//! Adversarial pipelines: each attack is a real pipeline pushed to a hosted repository of the
//! real daemon and run as the runner user. Every attempt must fail with a clear message, the
//! daemon's token must never reach a log, a record, an artifact or a workspace, and nothing a
//! run starts may outlive it.
mod common;

use common::{daemon_harness, git, Harness};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Each step is one attempt; `continueOnError` lets the run go on to the next one.
const THIEF: &str = r#"trigger:
  branches:
    include: [main]
steps:
- script: cat HOME_DIR/token
  displayName: read the token
  continueOnError: true
- task: PublishPipelineArtifact@1
  displayName: publish the token by absolute path
  continueOnError: true
  inputs:
    targetPath: HOME_DIR/token
    artifact: abs
- script: ln -s HOME_DIR/token $(Build.ArtifactStagingDirectory)/token
  displayName: plant a symlink
- task: PublishPipelineArtifact@1
  displayName: publish through the symlink
  continueOnError: true
  inputs:
    targetPath: $(Build.ArtifactStagingDirectory)
    artifact: link
- task: PublishBuildArtifacts@1
  displayName: publish with dot-dot
  continueOnError: true
  inputs:
    PathtoPublish: ../../../../../../HOME_DIR/token
    ArtifactName: dots
- task: DownloadPipelineArtifact@2
  displayName: download outside the workspace
  continueOnError: true
  inputs:
    buildType: specific
    runId: '1'
    artifact: drop
    path: VICTIM_DIR
- script: |
    for i in $(seq 0 400); do ln -sf VICTIM_FILE "$(Agent.TempDirectory)/step-DAEMON_PID-$i.sh"; done
  displayName: plant symlinks where the next scripts go
- script: echo next-step-ran
  displayName: the next step
- script: |
    ls WORK_ROOT
    echo pwned > WORK_ROOT/p-other/s/README.md
  displayName: write another pipeline's build directory
  continueOnError: true
- script: ln -s HOME_DIR/repos/other.git "$(Pipeline.Workspace)/repolink"
  displayName: link to a private repository
- script: cat HEAD config
  displayName: read a private repository through workingDirectory
  workingDirectory: $(Pipeline.Workspace)/repolink
  continueOnError: true
- script: |
    setsid bash -c 'while true; do grep -ah SCALESET_TOKEN /proc/[0-9]*/environ >> "$HOME/stolen" 2>/dev/null; sleep 0.05; done' </dev/null >/dev/null 2>&1 &
    echo "left a spy behind"
  displayName: leave a spy process
- script: rm -rf "$(Agent.TempDirectory)" && ln -s VICTIM_DIR "$(Agent.TempDirectory)"
  displayName: replace _temp with a symlink
- script: echo after-the-swap
  displayName: a step after the swap
  continueOnError: true
"#;

const OTHER: &str = r#"trigger:
  branches:
    include: [main]
steps:
- script: echo other > $(Build.ArtifactStagingDirectory)/other.txt
- task: PublishPipelineArtifact@1
  inputs:
    targetPath: $(Build.ArtifactStagingDirectory)
    artifact: drop
- task: AzureCLI@2
  displayName: release credential
  inputs:
    azureSubscription: local
    scriptType: bash
    scriptLocation: inlineScript
    inlineScript: |
      set -u
      echo "$SCALESET_TOKEN" > "$(Pipeline.Workspace)/runtoken"
      az group list -o table
      if az group delete -n sec-rg; then echo "the run credential deleted a group"; exit 1; fi
"#;

/// Root and the runner user are prerequisites: under CI their absence fails the test.
fn prerequisites() -> bool {
    testkit::require(testkit::missing_root().or_else(|| testkit::missing_user("scaleset-runner")))
}

/// Creates repo `name` with `files`, pushes it, returns the push output.
fn push_repo(h: &Harness, token: &str, name: &str, files: &[(&str, String)]) -> String {
    h.ok(&["repo", "create", name]);
    let work = h.home.join(format!("src-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q"]).0);
    for (f, text) in files {
        std::fs::write(work.join(f), text).unwrap();
    }
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "attack"]).0);
    let url = format!("http://x:{token}@{}/scaleset/git/{name}.git", h.api);
    let (ok, out) = git(&work, &["push", &url, "main"]);
    assert!(ok, "push of {name} failed: {out}");
    out
}

fn latest_run(h: &Harness, pipeline: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let runs = h.json(&["run", "list", "--pipeline", pipeline]);
        if let Some(r) = runs.as_array().and_then(|a| a.first()) {
            if r["status"] == "completed" {
                return h.json(&["run", "show", &r["id"].to_string()]);
            }
        }
        assert!(Instant::now() < deadline, "no completed run of {pipeline}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `(label, result, message)` of every step of a run.
fn steps(run: &Value) -> Vec<(String, String, String)> {
    let mut out = vec![];
    for s in run["stages"].as_array().into_iter().flatten() {
        for j in s["jobs"].as_array().into_iter().flatten() {
            for st in j["steps"].as_array().into_iter().flatten() {
                out.push((
                    st["label"].as_str().unwrap_or("").to_string(),
                    st["result"].as_str().unwrap_or("").to_string(),
                    st["message"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out
}

fn step<'a>(all: &'a [(String, String, String)], label: &str) -> &'a (String, String, String) {
    all.iter()
        .find(|s| s.0 == label)
        .unwrap_or_else(|| panic!("no step `{label}` in {all:#?}"))
}

/// Every file below `dir` whose content contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let out = Command::new("grep")
        .args(["-rlsF", needle])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// Live processes of the runner user working under `home` (zombies are dead: they wait for
/// PID 1 to reap them; other tests' daemons have other homes).
fn runner_processes(home: &Path) -> Vec<String> {
    let uid = Command::new("id")
        .args(["-u", "scaleset-runner"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
        let owner = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("");
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        let cwd = std::fs::read_link(p.join("cwd")).unwrap_or_default();
        let cmd = std::fs::read(p.join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let ours = cwd.starts_with(home) || cmd.contains(&*home.to_string_lossy());
        if owner == uid && !zombie && ours {
            out.push(format!("{} {cmd} (in {})", p.display(), cwd.display()));
        }
    }
    out
}

#[test]
fn pushed_pipelines_cannot_reach_the_daemon_or_outlive_their_runs() {
    if !prerequisites() {
        return;
    }
    let mut h = daemon_harness("scaleset-sec-jobs", "10.213.240.0/24", "sec");
    h.start_serve();
    let home = h.home.clone();
    let token = std::fs::read_to_string(home.join("token"))
        .unwrap()
        .trim()
        .to_string();
    h.ok(&["group", "create", "-n", "sec-rg"]);
    let daemon_pid = h.serve.as_ref().unwrap().id();
    let pid = std::process::id();
    // Root-owned victims the runner user can read but not write.
    let victim_file = std::env::temp_dir().join(format!("scaleset-victim-{pid}"));
    std::fs::write(&victim_file, "original\n").unwrap();
    let victim_dir = std::env::temp_dir().join(format!("scaleset-victim-dir-{pid}"));
    let _ = std::fs::remove_dir_all(&victim_dir);
    std::fs::create_dir_all(&victim_dir).unwrap();
    let work_root = home.join("pipelines/work");

    // Another pipeline first, so that its build directory exists.
    push_repo(
        &h,
        &token,
        "other",
        &[
            ("azure-pipelines.yml", OTHER.into()),
            ("README.md", "other\n".into()),
        ],
    );
    let other = latest_run(&h, "other");
    assert_eq!(
        other["state"],
        "succeeded",
        "{other}\n{}",
        h.ok(&["run", "logs", &other["id"].to_string()])
    );
    let first_token = std::fs::read_to_string(work_root.join("p-other/runtoken")).unwrap();
    assert_ne!(first_token.trim(), token, "a run got the daemon's token");

    let yaml = THIEF
        .replace("HOME_DIR", &home.display().to_string())
        .replace("VICTIM_FILE", &victim_file.display().to_string())
        .replace("VICTIM_DIR", &victim_dir.display().to_string())
        .replace("DAEMON_PID", &daemon_pid.to_string())
        .replace("WORK_ROOT", &work_root.display().to_string());
    push_repo(&h, &token, "thief", &[("azure-pipelines.yml", yaml)]);
    let run = latest_run(&h, "thief");
    let id = run["id"].to_string();
    let log = h.ok(&["run", "logs", &id]);
    let all = steps(&run);
    let failed = |label: &str, why: &str| {
        let s = step(&all, label);
        // continueOnError: a failed step is recorded as SucceededWithIssues, like Azure's.
        assert_eq!(
            s.1, "SucceededWithIssues",
            "`{label}` should fail: {s:?}\n{log}"
        );
        assert!(
            s.2.contains(why) || log.contains(why),
            "`{label}`: no `{why}` in {s:?}\n{log}"
        );
    };
    failed("read the token", "bash exited with code 1");
    assert!(log.contains("Permission denied"), "{log}");
    failed(
        "publish the token by absolute path",
        "is outside the run's workspace",
    );
    failed(
        "publish through the symlink",
        "leads out of the run's workspace",
    );
    failed("publish with dot-dot", "leads out of the run's workspace");
    failed(
        "download outside the workspace",
        "is outside the run's workspace",
    );
    assert_eq!(step(&all, "the next step").1, "Succeeded", "{log}");
    assert!(log.contains("next-step-ran"), "{log}");
    failed("a step after the swap", "leads out of the run's workspace");
    failed(
        "write another pipeline's build directory",
        "bash exited with code 1",
    );
    assert!(log.contains("No such file or directory"), "{log}");
    // The work root the job sees is an empty, unlistable tmpfs with its own build dir only.
    let listed: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("write another pipeline's build directory | "))
        .map(|(_, t)| t)
        .filter(|t| !t.starts_with("##["))
        .collect();
    assert!(listed.is_empty(), "{log}");
    assert!(log.contains("cannot open directory"), "{log}");
    // The daemon does not enter a job's working directory as root: the private repository
    // behind the link stays out of reach.
    failed(
        "read a private repository through workingDirectory",
        "does not exist",
    );
    assert!(!log.contains("repositoryformatversion"), "{log}");
    assert_eq!(step(&all, "leave a spy process").1, "Succeeded", "{log}");
    assert_eq!(run["state"], "succeededwithissues", "{run}");
    // Nothing was written through the planted links, and the run's processes are all gone.
    assert_eq!(std::fs::read_to_string(&victim_file).unwrap(), "original\n");
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(work_root.join("p-other/s/README.md")).unwrap(),
        "other\n"
    );
    assert!(run["artifacts"].as_array().unwrap().is_empty(), "{run}");
    assert_eq!(
        runner_processes(&home),
        Vec::<String>::new(),
        "a process outlived its run"
    );

    // The next run's credential: the spy is dead, so it never sees it.
    let (ok, out) = {
        let work = home.join("src-other");
        std::fs::write(work.join("README.md"), "again\n").unwrap();
        assert!(git(&work, &["commit", "-qam", "again"]).0);
        let url = format!("http://x:{token}@{}/scaleset/git/other.git", h.api);
        git(&work, &["push", &url, "main"])
    };
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(240);
    let second = loop {
        let r = latest_run(&h, "other");
        if r["id"] != other["id"] {
            break r;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    };
    let slog = h.ok(&["run", "logs", &second["id"].to_string()]);
    assert_eq!(second["state"], "succeeded", "{second}\n{slog}");
    let run_token = std::fs::read_to_string(work_root.join("p-other/runtoken")).unwrap();
    let run_token = run_token.trim();
    assert!(run_token.len() >= 32 && run_token != first_token.trim());
    let stolen = home.join("pipelines/homes/p-thief/stolen");
    let spied = std::fs::read_to_string(&stolen).unwrap_or_default();
    assert!(
        !spied.contains(run_token),
        "the spy read the next run's credential"
    );
    // The run credential is narrow: the group is still there.
    assert!(h.run(&["group", "show", "-n", "sec-rg"]).0, "{slog}");
    assert!(slog.contains("AuthorizationFailed"), "{slog}");

    // The daemon's token is nowhere a job or a reader of runs could see it.
    for dir in [
        "pipelines/work",
        "pipelines/homes",
        "pipelines/runs",
        "pipelines/artifacts",
    ] {
        let hits = files_containing(&home.join(dir), &token);
        assert!(hits.is_empty(), "the token is in {hits:?}");
    }
    assert!(!log.contains(&token) && !slog.contains(&token));
    h.kill_serve();
    let _ = std::fs::remove_file(&victim_file);
    let _ = std::fs::remove_dir_all(&victim_dir);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn without_the_runner_user_jobs_do_not_run() {
    if !prerequisites() {
        return;
    }
    let mut h = daemon_harness("scaleset-sec-nouser", "10.213.241.0/24", "sec");
    h.env
        .push(("SCALESET_RUNNER_USER", "scaleset-no-such-user".into()));
    h.start_serve();
    let token = std::fs::read_to_string(h.home.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let marker = h.home.join("ran-as-root");
    let yaml = format!("steps:\n- script: touch {}\n", marker.display());
    push_repo(&h, &token, "app", &[("azure-pipelines.yml", yaml)]);
    let run = latest_run(&h, "app");
    assert_eq!(run["state"], "failed", "{run}");
    let msg = run["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("`scaleset-no-such-user`, which does not exist"),
        "{run}"
    );
    assert!(!marker.exists(), "a job ran without the runner user");
    h.kill_serve();
    let _ = std::fs::remove_dir_all(&h.home);
}

/// Nothing acknowledged is lost: a run acknowledged as queued survives a daemon crash, a run
/// cut off by it fails (and its processes die), and a push whose refs moved while the daemon
/// was not there to queue its runs (the crash window between git and the queue) still runs.
#[test]
fn queued_runs_and_unprocessed_pushes_survive_a_daemon_crash() {
    if !prerequisites() {
        return;
    }
    let mut h = daemon_harness("scaleset-sec-durable", "10.213.242.0/24", "sec");
    h.start_serve();
    let token = std::fs::read_to_string(h.home.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let yaml = "trigger:\n  branches:\n    include: [main]\nsteps:\n- script: |\n    echo commit $(Build.SourceVersion)\n    test -e slow && sleep 600\n    true\n";
    let out = push_repo(
        &h,
        &token,
        "dur",
        &[
            ("azure-pipelines.yml", yaml.into()),
            ("slow", String::new()),
        ],
    );
    assert!(out.contains("queued run 1"), "{out}");
    let work = h.home.join("src-dur");
    let url = format!("http://x:{token}@{}/scaleset/git/dur.git", h.api);
    std::fs::remove_file(work.join("slow")).unwrap();
    assert!(git(&work, &["commit", "-qam", "fast"]).0);
    let (ok, out) = git(&work, &["push", &url, "main"]);
    assert!(ok && out.contains("queued run 2"), "{out}");
    // Run 1 sleeps; run 2 waits behind it. The daemon dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.json(&["run", "show", "1"])["status"] != "running" {
        assert!(Instant::now() < deadline, "run 1 did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    h.kill_serve();
    // A ref moves while nobody is there to match it.
    std::fs::write(work.join("third.txt"), "3\n").unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-qm", "third"]).0);
    let bare = format!("file://{}", h.home.join("repos/dur.git").display());
    let (ok, out) = git(&work, &["push", &bare, "main"]);
    assert!(ok, "{out}");
    let (_, head) = git(&work, &["rev-parse", "HEAD"]);
    h.start_serve();
    let wait = |id: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = h.json(&["run", "show", id]);
            if r["status"] == "completed" {
                return r;
            }
            assert!(Instant::now() < deadline, "run {id} did not complete: {r}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let r1 = wait("1");
    assert_eq!(r1["state"], "failed", "{r1}");
    assert!(r1["message"]
        .as_str()
        .unwrap_or("")
        .contains("daemon stopped"));
    let r2 = wait("2");
    assert_eq!(
        r2["state"], "succeeded",
        "the queued run was not resumed: {r2}"
    );
    let r3 = wait("3");
    assert_eq!(r3["state"], "succeeded", "{r3}");
    assert_eq!(r3["source_version"], head.trim(), "{r3}");
    assert_eq!(h.json(&["run", "list"]).as_array().unwrap().len(), 3);
    assert_eq!(
        runner_processes(&h.home),
        Vec::<String>::new(),
        "run 1's sleep survived"
    );
    h.kill_serve();
    let _ = std::fs::remove_dir_all(&h.home);
}
