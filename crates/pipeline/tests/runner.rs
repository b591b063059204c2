//! Runner behaviour on bad input, failures, secrets, cancel and log following.

use pipeline::artifacts::ArtifactStore;
use pipeline::plan::RunResult;
use pipeline::runner::*;
use pipeline::tasks::StdTasks;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

fn setup(tag: &str, yaml: &str) -> (PathBuf, Runner, StdTasks) {
    let base = std::env::temp_dir().join(format!("pipeline-runner-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("src")).unwrap();
    std::fs::write(base.join("src/azure-pipelines.yml"), yaml).unwrap();
    let mut cfg = RunnerConfig::new(base.join("work"));
    cfg.kill_grace = Duration::from_millis(300);
    cfg.minute = Duration::from_secs(2);
    let runner = Runner::new(cfg, RunStore::new(base.join("runs")));
    let tasks = StdTasks::new(ArtifactStore::new(base.join("artifacts")));
    (base, runner, tasks)
}

fn request(base: &Path, id: u64) -> RunRequest {
    RunRequest::new(
        id,
        "p",
        SourceSpec::Dir(base.join("src")),
        "azure-pipelines.yml",
    )
}

#[tokio::test]
async fn yaml_error_fails_the_run_before_any_step() {
    let yaml = "steps:\n- script: touch $(Build.SourcesDirectory)/../../ran\n  displayName: one\n- script: echo two\n  bogusKey: 1\n";
    let (base, runner, tasks) = setup("yaml", yaml);
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(request(&base, 1), &tasks, rx).await;
    assert_eq!(rec.status, RunStatus::Completed);
    assert_eq!(rec.result, Some(RunResult::Failed));
    let msg = rec.message.clone().unwrap();
    assert!(
        msg.starts_with("azure-pipelines.yml:5:3: "),
        "file:line:column expected: {msg}"
    );
    assert!(rec.stages.is_empty());
    assert!(!base.join("ran").exists());
    assert!(runner.store.logs(1).unwrap().contains(&msg));

    // Unknown tasks are caught the same way.
    std::fs::write(
        base.join("src/azure-pipelines.yml"),
        "steps:\n- script: echo hi\n- task: NuGetCommand@2\n",
    )
    .unwrap();
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(request(&base, 2), &tasks, rx).await;
    let msg = rec.message.unwrap();
    assert!(msg.starts_with("azure-pipelines.yml:3:3: unknown task `NuGetCommand@2`; supported tasks: AzureCLI@2, AzureVmssDeployment@1, DownloadPipelineArtifact@2, PackerBuild@1, PublishBuildArtifacts@1, PublishPipelineArtifact@1"), "{msg}");

    // A missing file.
    let mut req = request(&base, 3);
    req.yaml_path = "nope.yml".into();
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(req, &tasks, rx).await;
    assert_eq!(rec.result, Some(RunResult::Failed));
    assert!(rec.message.unwrap().contains("nope.yml"));
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn failing_step_fails_the_job_and_later_steps_follow_conditions() {
    let yaml = r#"
stages:
- stage: Build
  jobs:
  - job: A
    steps:
    - script: echo before; exit 3
      displayName: fails
    - script: echo should-not-run
      displayName: skipped
    - script: echo cleanup-ran
      displayName: cleanup
      condition: always()
- stage: Deploy
  jobs:
  - job: B
    steps:
    - script: echo deploy
"#;
    let (base, runner, tasks) = setup("fail", yaml);
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(request(&base, 1), &tasks, rx).await;
    let log = runner.store.logs(1).unwrap();
    assert_eq!(rec.result, Some(RunResult::Failed), "{log}");
    let a = &rec.stages[0].jobs[0];
    assert_eq!(a.result, Some(RunResult::Failed));
    let steps: Vec<_> = a
        .steps
        .iter()
        .map(|s| (s.label.as_str(), s.result))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("fails", Some(RunResult::Failed)),
            ("skipped", Some(RunResult::Skipped)),
            ("cleanup", Some(RunResult::Succeeded)),
        ]
    );
    assert_eq!(a.steps[0].exit_code, Some(3));
    assert!(a.steps[0].message.as_deref().unwrap().contains("code 3"));
    assert_eq!(rec.stages[1].result, Some(RunResult::Skipped));
    assert_eq!(
        rec.stages[1].jobs[0].steps[0].result,
        Some(RunResult::Skipped)
    );
    assert!(log.contains("[Build/A] fails | before"), "{log}");
    assert!(log.contains("[Build/A] cleanup | cleanup-ran"), "{log}");
    assert!(!log.contains("should-not-run\n"));
    assert!(!log.contains("deploy\n"));
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn secrets_are_masked_in_the_log_file() {
    let yaml = r###"
steps:
- script: |
    echo "queue-time secret: $(mySecret)"
    echo "env has it: $MAPPED"
    echo "not exported: [$MYSECRET]"
    echo "##vso[task.setvariable variable=later;issecret=true]s3cr3t-later"
  env:
    MAPPED: $(mySecret)
- script: echo "later is $(later)"
"###;
    let (base, runner, tasks) = setup("mask", yaml);
    let mut req = request(&base, 1);
    req.variables.set_secret("mySecret", "hunter2-xyz");
    req.variables.set("plain", "visible");
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(req, &tasks, rx).await;
    let log = runner.store.logs(1).unwrap();
    assert_eq!(rec.result, Some(RunResult::Succeeded), "{log}");
    assert!(log.contains("queue-time secret: ***"), "{log}");
    assert!(log.contains("env has it: ***"), "{log}");
    assert!(log.contains("not exported: []"), "{log}");
    assert!(log.contains("later is ***"), "{log}");
    assert!(!log.contains("hunter2-xyz"), "{log}");
    assert!(!log.contains("s3cr3t-later"));
    let json = serde_json::to_string(&runner.store.get(1).unwrap()).unwrap();
    assert!(!json.contains("hunter2-xyz"));
    // Nor is it anywhere in the database files (runs.db and its WAL).
    for e in std::fs::read_dir(runner.store.root()).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            let bytes = std::fs::read(e.path()).unwrap();
            assert!(
                !bytes.windows(11).any(|w| w == b"hunter2-xyz"),
                "{}",
                e.path().display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_follow() {
    let yaml = r#"
jobs:
- job: Long
  steps:
  - script: echo started; sleep 30; echo never
  - script: echo always-after-cancel
    condition: always()
- job: Next
  dependsOn: Long
  steps:
  - script: echo next
"#;
    let (base, runner, tasks) = setup("cancel", yaml);
    let store = runner.store.clone();
    let id = store.next_id().unwrap();
    let req = request(&base, id);
    store.queue(&req).unwrap();
    assert_eq!(store.get(id).unwrap().unwrap().status, RunStatus::Queued);
    let (tx, rx) = watch::channel(false);
    let h = tokio::spawn(async move { runner.run(req, &tasks, rx).await });
    let mut lines = Vec::new();
    let follow = store.follow(id, |l| {
        lines.push(l.to_string());
        if l.contains("| started") {
            let _ = tx.send(true);
        }
        true
    });
    let fin = tokio::time::timeout(Duration::from_secs(20), follow)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The follow's 20 s guard is shorter than the step's `sleep 30`: it ends because the step was
    // killed, which the results and the missing "never" line below say exactly.
    let rec = h.await.unwrap();
    assert_eq!(fin.status, RunStatus::Completed);
    assert_eq!(rec.result, Some(RunResult::Canceled));
    let steps = &rec.stages[0].jobs[0].steps;
    assert_eq!(steps[0].result, Some(RunResult::Canceled));
    assert_eq!(steps[1].result, Some(RunResult::Succeeded));
    assert_eq!(rec.stages[0].jobs[1].result, Some(RunResult::Canceled));
    let all = lines.join("\n");
    assert!(all.contains("always-after-cancel"), "{all}");
    assert!(!all.contains("| never"));
    assert!(
        lines.last().unwrap().contains("finished: Canceled"),
        "{all}"
    );
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.latest_successful("p", None).unwrap().is_none());
    // A queued run can be canceled before it starts; interrupted runs are failed at restart.
    let id2 = store.next_id().unwrap();
    assert_eq!(id2, id + 1);
    store.queue(&request(&base, id2)).unwrap();
    assert!(store.cancel_queued(id2).unwrap());
    assert_eq!(
        store.get(id2).unwrap().unwrap().result,
        Some(RunResult::Canceled)
    );
    assert!(store.fail_interrupted().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&base);
}

/// Self-hosted agent semantics: one build directory per pipeline; tracked files follow the
/// commit exactly, untracked build outputs survive, the staging directory starts empty.
#[tokio::test]
async fn reused_sources_keep_build_outputs_between_runs() {
    use pipeline::git::{commit_dir, RepoStore};
    let yaml = "steps:\n- script: |\n    ls $(Build.ArtifactStagingDirectory) | wc -l > count\n    cat count >> $(Build.SourcesDirectory)/../../history\n    touch $(Build.ArtifactStagingDirectory)/leftover\n    mkdir -p target && echo $(Build.BuildId) >> target/builds\n    ls\n";
    let (base, mut runner, tasks) = setup("reuse", yaml);
    runner.config.reuse_sources = true;
    let repos = RepoStore::new(base.join("repos"));
    let info = repos.create("app").unwrap();
    let tree = base.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("azure-pipelines.yml"), yaml).unwrap();
    std::fs::write(tree.join("old.txt"), "old").unwrap();
    let c1 = commit_dir(&info.path, &tree, "main", "one").unwrap();
    std::fs::remove_file(tree.join("old.txt")).unwrap();
    std::fs::write(tree.join("new.txt"), "new").unwrap();
    let c2 = commit_dir(&info.path, &tree, "main", "two").unwrap();
    let req = |id: u64, commit: &str| {
        RunRequest::new(
            id,
            "app",
            SourceSpec::Repo {
                name: "app".into(),
                path: info.path.clone(),
                commit: commit.into(),
            },
            "azure-pipelines.yml",
        )
    };
    for (id, c) in [(1, &c1), (2, &c2)] {
        let (_c, rx) = watch::channel(false);
        let rec = runner.run(req(id, c), &tasks, rx).await;
        assert_eq!(
            rec.result,
            Some(RunResult::Succeeded),
            "{}",
            runner.store.logs(id).unwrap()
        );
    }
    let s = base.join("work/p-app/s");
    assert!(!s.join("old.txt").exists(), "deleted file removed");
    assert_eq!(std::fs::read_to_string(s.join("new.txt")).unwrap(), "new");
    assert_eq!(
        std::fs::read_to_string(s.join("target/builds")).unwrap(),
        "1\n2\n",
        "build outputs kept"
    );
    // The staging directory was empty at the start of both runs.
    assert_eq!(
        std::fs::read_to_string(base.join("work/history")).unwrap(),
        "0\n0\n"
    );
    assert!(!base.join("work/p-app/a").exists());

    // workspace.clean: all starts from empty sources.
    std::fs::write(
        tree.join("azure-pipelines.yml"),
        "jobs:\n- job: b\n  workspace:\n    clean: all\n  steps:\n  - script: test ! -e target/builds\n",
    )
    .unwrap();
    let c3 = commit_dir(&info.path, &tree, "main", "three").unwrap();
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(req(3, &c3), &tasks, rx).await;
    assert_eq!(
        rec.result,
        Some(RunResult::Succeeded),
        "{}",
        runner.store.logs(3).unwrap()
    );
}

/// Records live in SQLite; a store written before that (`<id>/run.json`) is imported once.
#[tokio::test]
async fn run_records_are_in_sqlite_and_legacy_files_are_imported() {
    let (base, runner, tasks) = setup("sqlite", "steps:\n- script: echo hi\n");
    let (_c, rx) = watch::channel(false);
    let rec = runner
        .run(request(&base, runner.store.next_id().unwrap()), &tasks, rx)
        .await;
    assert_eq!(rec.id, 1);
    assert!(base.join("runs/runs.db").is_file());
    assert!(!base.join("runs/1/run.json").exists());
    assert_eq!(runner.store.next_id().unwrap(), 2, "ids are not reused");
    assert_eq!(
        runner.store.next_id().unwrap(),
        3,
        "reserved ids are not reused"
    );

    // A legacy store: one record as a file, no database.
    let legacy = base.join("legacy");
    std::fs::create_dir_all(legacy.join("7")).unwrap();
    let mut old = rec.clone();
    old.id = 7;
    old.pipeline = "old".into();
    std::fs::write(legacy.join("7/run.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    let store = RunStore::new(&legacy);
    assert_eq!(store.get(7).unwrap(), Some(old.clone()));
    assert_eq!(store.list_pipeline("OLD").unwrap(), vec![old]);
    assert_eq!(store.next_id().unwrap(), 8);
}

/// Variables may reference other variables (expanded when the job starts), in macros and in
/// the environment.
#[tokio::test]
async fn variables_reference_other_variables() {
    let yaml = "variables:\n  base: $(Build.BuildId)-x\n  full: $(base)/y\nsteps:\n- script: echo \"macro=$(full) env=$FULL\"\n";
    let (base, runner, tasks) = setup("nested", yaml);
    let (_c, rx) = watch::channel(false);
    let rec = runner.run(request(&base, 4), &tasks, rx).await;
    let log = runner.store.logs(4).unwrap();
    assert_eq!(rec.result, Some(RunResult::Succeeded), "{log}");
    assert!(log.contains("macro=4-x/y env=4-x/y"), "{log}");
}

/// `trigger.batch`: queued push runs of the same pipeline and branch are folded into the newest.
#[test]
fn batch_folds_queued_push_runs_into_the_newest() {
    let base = std::env::temp_dir().join(format!("pipeline-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let store = RunStore::new(&base);
    let push = |id: u64, pipeline: &str, branch: &str, reason: RunReason| {
        let mut r = request(&base, id);
        r.pipeline_name = pipeline.into();
        r.branch = branch.into();
        r.reason = reason;
        store.queue(&r).unwrap();
    };
    let pushed = RunReason::Push { batched: true };
    push(1, "app", "refs/heads/main", pushed.clone());
    push(2, "app", "refs/heads/dev", pushed.clone());
    push(3, "other", "refs/heads/main", pushed.clone());
    push(4, "app", "refs/heads/main", RunReason::Manual);
    push(5, "app", "refs/heads/main", pushed);
    assert_eq!(
        store.batch_into("app", "refs/heads/main", 5).unwrap(),
        vec![1]
    );
    let r1 = store.get(1).unwrap().unwrap();
    assert_eq!(r1.result, Some(RunResult::Canceled));
    assert_eq!(r1.message.as_deref(), Some("batched into run 5"));
    for id in [2, 3, 4, 5] {
        assert_eq!(
            store.get(id).unwrap().unwrap().status,
            RunStatus::Queued,
            "{id}"
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
