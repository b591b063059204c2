use pipeline::exec::*;
use pipeline::plan::RunResult;
use pipeline::vars::{predefined_variables, Masker, RunInfo, Variables};
use pipeline::{parse_pipeline, Job};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn workspace(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let ws = std::env::temp_dir().join(format!(
        "pipeline-exec-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&ws);
    for d in ["s", "a", "b", "_temp"] {
        std::fs::create_dir_all(ws.join(d)).unwrap();
    }
    ws
}

fn job(yaml: &str) -> Job {
    parse_pipeline("t.yml", yaml).unwrap().stages[0].jobs[0].clone()
}

fn config(ws: &Path, extra: &[(&str, &str)], secrets: &[(&str, &str)]) -> ExecConfig {
    let mut v = predefined_variables(&RunInfo {
        build_id: 42,
        workspace: ws.to_path_buf(),
        source_branch: "main".into(),
        ..Default::default()
    });
    for (k, val) in extra {
        v.set(k, *val);
    }
    for (k, val) in secrets {
        v.set_secret(k, *val);
    }
    let mut c = ExecConfig::new(ws, v);
    c.retry_delay = Duration::from_millis(10);
    c.kill_grace = Duration::from_millis(500);
    c
}

async fn run(yaml: &str, cfg: &ExecConfig, tasks: &dyn TaskRunner) -> (JobOutcome, Vec<LogLine>) {
    let (sink, mut rx) = LogSink::channel(Masker::default());
    let out = run_job(&job(yaml), cfg, tasks, &sink).await;
    drop(sink);
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l);
    }
    (out, lines)
}

fn texts(lines: &[LogLine], step: usize) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.step == Some(step) && l.stream == Stream::Stdout)
        .map(|l| l.text.clone())
        .collect()
}

#[tokio::test]
async fn env_macros_workdir_and_setvariable() {
    let ws = workspace("env");
    std::fs::create_dir_all(ws.join("s/app")).unwrap();
    let cfg = config(&ws, &[("greeting", "hello"), ("my.var", "v1")], &[]);
    let yaml = r###"
steps:
- script: |
    echo "id=$(Build.BuildId) env=$BUILD_BUILDID branch=$BUILD_SOURCEBRANCHNAME"
    echo "greet=$(greeting) $GREETING myvar=$MY_VAR step=$STEP_ENV"
    echo "pwd=$(pwd)"
    echo 'unknown=$(nope.nope)'
    echo "##vso[task.setvariable variable=later]set-by-1"
    echo "##vso[task.setvariable variable=out;isOutput=true]o1"
  name: first
  displayName: First $(greeting)
  workingDirectory: app
  env:
    STEP_ENV: from-$(greeting)
- bash: echo "later=$(later) $LATER out=$(first.out) $FIRST_OUT"
- bash: echo "dir=$PWD"
  workingDirectory: $(Build.ArtifactStagingDirectory)
"###;
    let (out, lines) = run(yaml, &cfg, &NoTasks).await;
    assert_eq!(out.result, RunResult::Succeeded, "{lines:?}");
    let t0 = texts(&lines, 0);
    assert_eq!(t0[0], "id=42 env=42 branch=main");
    assert_eq!(t0[1], "greet=hello hello myvar=v1 step=from-hello");
    assert_eq!(t0[2], format!("pwd={}", ws.join("s/app").display()));
    assert_eq!(
        t0[3], "unknown=$(nope.nope)",
        "unknown macros are left as written"
    );
    assert_eq!(texts(&lines, 1), vec!["later=set-by-1 set-by-1 out=o1 o1"]);
    assert_eq!(
        texts(&lines, 2),
        vec![format!("dir={}", ws.join("a").display())]
    );
    assert_eq!(out.outputs.get("first.out").map(String::as_str), Some("o1"));
    assert_eq!(out.steps[0].label, "First hello");
    assert!(lines
        .iter()
        .any(|l| l.stream == Stream::System && l.text == "##[section]Starting: First hello"));
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn secrets_are_masked_and_not_exported() {
    let ws = workspace("secret");
    let cfg = config(&ws, &[], &[("token", "s3cr3t-value")]);
    let yaml = r###"
steps:
- bash: |
    echo "macro=$(token) env=${TOKEN:-unset} mapped=$MAPPED"
    echo "##vso[task.setvariable variable=pw;issecret=true]dyn-pass"
    echo "after: dyn-pass"
  env:
    MAPPED: $(token)
- bash: echo "pw=$(pw) env=${PW:-unset}"
"###;
    let (out, lines) = run(yaml, &cfg, &NoTasks).await;
    assert_eq!(out.result, RunResult::Succeeded);
    let t0 = texts(&lines, 0);
    assert_eq!(t0[0], "macro=*** env=unset mapped=***");
    assert_eq!(
        t0[1],
        "##vso[task.setvariable variable=pw;issecret=true]***"
    );
    assert_eq!(t0[2], "after: ***");
    assert_eq!(texts(&lines, 1), vec!["pw=*** env=unset"]);
    assert!(lines
        .iter()
        .all(|l| !l.text.contains("s3cr3t") && !l.text.contains("dyn-pass")));
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn failure_conditions_and_continue_on_error() {
    let ws = workspace("fail");
    let cfg = config(&ws, &[], &[]);
    let yaml = r###"
steps:
- bash: echo warn; exit 3
  continueOnError: true
- bash: echo after-issues
- bash: exit 7
- bash: echo should-not-run
- bash: echo on-failure
  condition: failed()
- bash: echo always
  condition: always()
- bash: echo disabled
  enabled: false
- bash: echo branch
  condition: and(succeededOrFailed(), eq(variables['Build.SourceBranch'], 'refs/heads/main'))
"###;
    let (out, lines) = run(yaml, &cfg, &NoTasks).await;
    let r: Vec<RunResult> = out.steps.iter().map(|s| s.result).collect();
    use RunResult::*;
    assert_eq!(
        r,
        [
            SucceededWithIssues,
            Succeeded,
            Failed,
            Skipped,
            Succeeded,
            Succeeded,
            Skipped,
            Succeeded
        ]
    );
    assert_eq!(out.steps[0].exit_code, Some(3));
    assert_eq!(out.steps[2].exit_code, Some(7));
    assert_eq!(
        out.steps[2].message.as_deref(),
        Some("bash exited with code 7")
    );
    assert_eq!(out.result, Failed);
    assert!(texts(&lines, 3).is_empty());
    assert!(lines
        .iter()
        .any(|l| l.text == "##[error]bash exited with code 7"));
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn retries_until_success() {
    let ws = workspace("retry");
    let cfg = config(&ws, &[], &[]);
    let counter = ws.join("count");
    let yaml = format!(
        "steps:\n- bash: |\n    n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n    echo attempt $n\n    [ $n -ge 3 ]\n  retryCountOnTaskFailure: 4\n- bash: exit 1\n  retryCountOnTaskFailure: 1\n  continueOnError: true\n",
        c = counter.display()
    );
    let (out, lines) = run(&yaml, &cfg, &NoTasks).await;
    assert_eq!(out.steps[0].result, RunResult::Succeeded);
    assert_eq!(out.steps[0].attempts, 3);
    assert_eq!(
        texts(&lines, 0),
        vec!["attempt 1", "attempt 2", "attempt 3"]
    );
    assert_eq!(out.steps[1].attempts, 2);
    assert_eq!(out.steps[1].result, RunResult::SucceededWithIssues);
    assert_eq!(out.result, RunResult::SucceededWithIssues);
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let ws = workspace("timeout");
    let mut cfg = config(&ws, &[], &[]);
    cfg.minute = Duration::from_millis(300);
    let marker = ws.join("child-alive");
    let yaml = format!(
        "steps:\n- bash: |\n    (sleep 2; touch {m}) &\n    echo started\n    sleep 30\n  timeoutInMinutes: 1\n- bash: echo next\n- bash: echo cleanup\n  condition: always()\n",
        m = marker.display()
    );
    // A guard shorter than the step's `sleep 30`, not a speed check: the step is killed.
    let (out, lines) = tokio::time::timeout(Duration::from_secs(25), run(&yaml, &cfg, &NoTasks))
        .await
        .expect("the timed-out step is killed, not waited for");
    assert_eq!(out.steps[0].result, RunResult::Failed);
    assert!(
        out.steps[0]
            .message
            .as_deref()
            .unwrap()
            .contains("timed out"),
        "{:?}",
        out.steps[0]
    );
    assert_eq!(texts(&lines, 0), vec!["started"]);
    assert_eq!(out.steps[1].result, RunResult::Skipped);
    assert_eq!(out.steps[2].result, RunResult::Succeeded);
    assert_eq!(out.result, RunResult::Failed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "background child survived the timeout");
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn cancel_stops_the_running_step() {
    let ws = workspace("cancel");
    let mut cfg = config(&ws, &[], &[]);
    let (tx, rx) = tokio::sync::watch::channel(false);
    cfg.cancel = Some(rx);
    let yaml = "steps:\n- bash: echo go; sleep 30\n- bash: echo no\n- bash: echo yes\n  condition: always()\n- bash: echo c\n  condition: canceled()\n";
    let h = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(true).unwrap();
        tx
    });
    // A guard shorter than the step's `sleep 30`, not a speed check: the step is killed.
    let (out, lines) = tokio::time::timeout(Duration::from_secs(25), run(yaml, &cfg, &NoTasks))
        .await
        .expect("the canceled step is killed, not waited for");
    let _tx = h.await.unwrap();
    use RunResult::*;
    let r: Vec<RunResult> = out.steps.iter().map(|s| s.result).collect();
    assert_eq!(r, [Canceled, Skipped, Succeeded, Succeeded], "{lines:?}");
    assert_eq!(out.result, Canceled);
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn job_timeout_cancels_the_job() {
    let ws = workspace("jobtimeout");
    let mut cfg = config(&ws, &[], &[]);
    cfg.minute = Duration::from_millis(300);
    let yaml =
        "jobs:\n- job: J\n  timeoutInMinutes: 1\n  steps:\n  - bash: sleep 20\n  - bash: echo no\n";
    let (out, _) = run(yaml, &cfg, &NoTasks).await;
    assert_eq!(out.steps[0].result, RunResult::Canceled);
    assert!(out.steps[0]
        .message
        .as_deref()
        .unwrap()
        .contains("timeout of 1 minutes"));
    assert_eq!(out.steps[1].result, RunResult::Skipped);
    assert_eq!(out.result, RunResult::Canceled);
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn fail_on_stderr_and_missing_workdir() {
    let ws = workspace("stderr");
    let cfg = config(&ws, &[], &[]);
    let yaml = "steps:\n- bash: echo oops >&2\n  failOnStderr: true\n  continueOnError: true\n- bash: echo x\n  workingDirectory: does/not/exist\n";
    let (out, lines) = run(yaml, &cfg, &NoTasks).await;
    assert_eq!(out.steps[0].result, RunResult::SucceededWithIssues);
    assert!(lines
        .iter()
        .any(|l| l.stream == Stream::Stderr && l.text == "oops"));
    assert_eq!(out.steps[1].result, RunResult::Failed);
    assert!(out.steps[1]
        .message
        .as_deref()
        .unwrap()
        .contains("does not exist"));
    let _ = std::fs::remove_dir_all(&ws);
}

struct FakeTasks;
impl TaskRunner for FakeTasks {
    fn supported(&self) -> Vec<String> {
        vec!["PackerBuild@1".into(), "DownloadPipelineArtifact@2".into()]
    }
    fn run<'a>(&'a self, inv: TaskInvocation<'a>) -> BoxFuture<'a, TaskOutcome> {
        Box::pin(async move {
            inv.log.line(
                Stream::Stdout,
                &format!("{}@{} {:?}", inv.name, inv.version, inv.inputs),
            );
            if inv.name == "PackerBuild" {
                let var = inv.input("imageUri").unwrap_or("imageUri").to_string();
                let mut o = TaskOutcome::succeeded();
                o.set_variables.push(pipeline::vars::SetVariable {
                    name: var,
                    value: inv.input("managedImageName").unwrap_or("").to_string(),
                    is_output: false,
                    is_secret: false,
                    is_readonly: false,
                });
                o
            } else {
                TaskOutcome::succeeded()
            }
        })
    }
}

#[tokio::test]
async fn tasks_are_dispatched_and_unknown_tasks_fail_clearly() {
    let ws = workspace("tasks");
    let cfg = config(&ws, &[], &[]);
    let text = include_str!("fixtures/release-pipeline.yml");
    let p = parse_pipeline("release-pipeline.yml", text).unwrap();
    let err = check_tasks("release-pipeline.yml", &p, &FakeTasks).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "release-pipeline.yml:{}:{}: unknown task `AzureCLI@2`; supported tasks: DownloadPipelineArtifact@2, PackerBuild@1",
            err.pos.line, err.pos.column
        )
    );
    assert!(err.pos.line > 40);
    let (sink, mut rx) = LogSink::channel(Masker::default());
    let out = run_job(&p.stages[0].jobs[0], &cfg, &FakeTasks, &sink).await;
    drop(sink);
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l);
    }
    let t0 = texts(&lines, 0);
    assert!(t0[0].starts_with("DownloadPipelineArtifact@2 "), "{t0:?}");
    assert!(
        t0[0].contains(&format!(
            "(\"path\", \"{}\")",
            ws.join("ci").join("drop").display()
        )),
        "{t0:?}"
    );
    let t1 = texts(&lines, 1);
    assert!(t1[0].contains("(\"managedImageName\", \"42\")"), "{t1:?}");
    assert_eq!(out.variables.get("imageUrlVariable"), Some("42"));
    assert_eq!(out.steps[2].result, RunResult::Failed);
    assert_eq!(
        out.steps[2].message.as_deref(),
        Some(
            "unknown task `AzureCLI@2`; supported tasks: DownloadPipelineArtifact@2, PackerBuild@1"
        )
    );
    assert_eq!(out.result, RunResult::Failed);
    let _ = std::fs::remove_dir_all(&ws);
}

#[tokio::test]
async fn run_script_for_tasks() {
    let ws = workspace("script");
    let cfg = config(&ws, &[], &[]);
    let (sink, mut rx) = LogSink::channel(Masker::new(["hide".to_string()]));
    let env = vec![
        ("PATH".to_string(), std::env::var("PATH").unwrap()),
        ("X".to_string(), "1".to_string()),
    ];
    let o = run_script(
        ScriptSpec {
            script: "echo x=$X hide\necho '##vso[task.setvariable variable=a]b'\nexit 4\n",
            working_directory: &ws,
            env: &env,
            timeout: None,
        },
        &cfg,
        &sink,
    )
    .await
    .unwrap();
    drop(sink);
    assert_eq!(o.exit_code, Some(4));
    assert_eq!(o.set_variables.len(), 1);
    assert_eq!(rx.recv().await.unwrap().text, "x=1 ***");
    assert!(
        std::fs::read_dir(ws.join("_temp"))
            .unwrap()
            .next()
            .is_none(),
        "script file removed"
    );
    let _ = std::fs::remove_dir_all(&ws);
}

#[test]
fn variables_are_case_insensitive_for_exec() {
    let mut v = Variables::new();
    v.set("Build.BuildId", "1");
    assert_eq!(v.expand("$(BUILD.BUILDID)"), "1");
}
