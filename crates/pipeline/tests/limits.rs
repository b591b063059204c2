//! Limits on what one pipeline file can make the compiler and the runner do: expansion bombs
//! fail with a position, large but legal structures compile, duplicate and graph checks stay
//! exact, and a run reads its file from git or refuses a symbolic link.

use pipeline::artifacts::ArtifactStore;
use pipeline::plan::RunResult;
use pipeline::runner::*;
use pipeline::tasks::StdTasks;
use pipeline::{compile, parse_pipeline};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tokio::sync::watch;

fn err(yaml: &str) -> String {
    parse_pipeline("p.yml", yaml).unwrap_err().to_string()
}

#[test]
fn template_expressions_that_double_fail_at_the_value() {
    // v0 is 16 bytes; v(i) is v(i-1) twice: v17 would be 2 MiB (and v34 256 GiB).
    let mut y = String::from("variables:\n  v0: xxxxxxxxxxxxxxxx\n");
    for i in 1..=34 {
        let p = i - 1;
        y.push_str(&format!(
            "  v{i}: ${{{{ variables.v{p} }}}}${{{{ variables.v{p} }}}}\n"
        ));
    }
    y.push_str("steps:\n- script: echo\n");
    assert_eq!(
        err(&y),
        "p.yml:19:8: `${{ variables.v16 }}` makes this value longer than 1 MiB, the limit for one value"
    );
}

#[test]
fn template_output_of_a_file_is_capped() {
    // Each copy is exactly 1 MiB (allowed); 16 MiB in all is the cap, so the 17th fails.
    let big = "x".repeat(1024 * 1024);
    let mut y = format!("variables:\n  big: {big}\n");
    for i in 0..20 {
        y.push_str(&format!("  c{i}: ${{{{ variables.big }}}}\n"));
    }
    y.push_str("steps:\n- script: echo\n");
    assert_eq!(
        err(&y),
        "p.yml:19:8: `${{ }}` expressions in this file produce more than 16 MiB together; that is the limit"
    );
}

#[test]
fn macro_references_that_multiply_fail_at_compile_time() {
    // 10 references per level: 10^8 copies at the resolution depth.
    let mut y = String::from("variables:\n  v0: xxxxxxxxxx\n");
    for i in 1..=30 {
        y.push_str(&format!(
            "  v{i}: '{}'\n",
            format!("$(v{})", i - 1).repeat(10)
        ));
    }
    y.push_str("steps:\n- script: echo $(v30)\n");
    assert_eq!(
        err(&y),
        "p.yml:12:3: variable `v10`: expanding its `$(...)` references makes it longer than 1 MiB, the limit for one value (do variables refer to each other many times over?)"
    );
    // The list form points at the variable's name.
    let mut y = String::from("variables:\n- name: v0\n  value: xxxxxxxxxx\n");
    for i in 1..=12 {
        let refs = format!("$(v{})", i - 1).repeat(10);
        y.push_str(&format!("- name: v{i}\n  value: '{refs}'\n"));
    }
    y.push_str("steps:\n- script: echo\n");
    assert_eq!(err(&y).split(": variable").next(), Some("p.yml:22:9"));
    // Ordinary nesting still compiles and resolves at run time.
    let p = parse_pipeline(
        "p.yml",
        "variables:\n  a: x\n  b: $(a)/$(a)\nsteps:\n- script: echo\n",
    )
    .unwrap();
    assert_eq!(p.variables.get("b"), Some("$(a)/$(a)"));
}

#[test]
fn block_variables_see_their_own_and_the_pipelines_not_other_blocks() {
    let y = "variables:\n  a: top\njobs:\n- job: one\n  variables:\n    b: ${{ variables.a }}-1\n    c: ${{ variables.b }}+\n  steps:\n  - script: x\n- job: two\n  variables:\n    d: ${{ variables.b }}|${{ variables.a }}\n  steps:\n  - script: x\n";
    let p = parse_pipeline("p.yml", y).unwrap();
    let jobs = &p.stages[0].jobs;
    assert_eq!(jobs[0].variables.get("b"), Some("top-1"));
    assert_eq!(jobs[0].variables.get("c"), Some("top-1+"));
    assert_eq!(jobs[1].variables.get("d"), Some("|top"));
    assert_eq!(p.variables.len(), 1);
}

#[test]
fn many_jobs_and_steps_compile_and_duplicates_are_exact() {
    // 10,000 jobs in a dependency chain (the graph check is linear).
    let mut y = String::from("jobs:\n");
    for i in 0..10_000 {
        let dep = if i == 0 {
            String::new()
        } else {
            format!("j{}", i - 1)
        };
        y.push_str(&format!(
            "- job: j{i}\n  dependsOn: [{dep}]\n  steps: [{{script: x}}]\n"
        ));
    }
    let p = parse_pipeline("p.yml", &y).unwrap();
    assert_eq!(p.stages[0].jobs.len(), 10_000);
    assert_eq!(p.stages[0].jobs[9_999].depends_on, vec!["j9998"]);

    // A cycle among them: every job from the cycle on waits, and the list is shortened.
    let cyc = y.replacen(
        "- job: j0\n  dependsOn: []",
        "- job: j0\n  dependsOn: [j9999]",
        1,
    );
    let e = err(&cyc);
    assert!(
        e.starts_with("p.yml:2:3: jobs depend on each other in a cycle: j0, j1, j2,"),
        "{e}"
    );
    assert!(e.ends_with(", j19, ... (10000 in all)"), "{e}");
    let unknown = y.replacen("dependsOn: [j0]", "dependsOn: [nope]", 1);
    let e = err(&unknown);
    assert!(
        e.starts_with(
            "p.yml:5:3: `dependsOn` refers to job `nope` which does not exist (known: j0, j1,"
        ),
        "{e}"
    );
    assert!(e.ends_with("... (10000 in all))"), "{e}");
    let dup = y.replacen("- job: j5000\n", "- job: J17\n", 1);
    assert_eq!(err(&dup), "p.yml:15002:3: job name `J17` is used twice");

    // 30,000 named steps, the last one repeating a name (case-insensitively).
    let mut y = String::from("steps:\n");
    for i in 0..30_000 {
        y.push_str(&format!("- {{script: x, name: s{i}}}\n"));
    }
    assert_eq!(
        parse_pipeline("p.yml", &y).unwrap().stages[0].jobs[0]
            .steps
            .len(),
        30_000
    );
    y.push_str("- {script: x, name: S29999}\n");
    assert_eq!(
        err(&y),
        "p.yml:30002:4: step name `S29999` is used twice in this job"
    );
}

#[test]
fn parameters_are_matched_case_insensitively_and_once() {
    let mut y = String::from("parameters:\n");
    for i in 0..5_000 {
        y.push_str(&format!("- name: p{i}\n  default: d{i}\n"));
    }
    y.push_str("steps:\n- script: echo ${{ parameters.p4999 }}\n");
    let given = BTreeMap::from([("P4999".to_string(), "given".to_string())]);
    let p = compile("p.yml", &y, &given).unwrap();
    assert_eq!(p.parameters.len(), 5_000);
    assert_eq!(p.parameters[4_999].value, "given");
    let twice = y.replacen("- name: p7\n", "- name: P3\n", 1);
    assert_eq!(err(&twice), "p.yml:16:3: parameter `P3` is declared twice");
    let unknown = BTreeMap::from([("nope".to_string(), "x".to_string())]);
    let e = compile("p.yml", &y, &unknown).unwrap_err().to_string();
    assert_eq!(
        e,
        "p.yml:2:3: parameter `nope` is not declared by this pipeline"
    );
}

fn runner(tag: &str) -> (PathBuf, Runner, StdTasks) {
    let base = std::env::temp_dir().join(format!("pipeline-limits-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("src")).unwrap();
    let runner = Runner::new(
        RunnerConfig::new(base.join("work")),
        RunStore::new(base.join("runs")),
    );
    let tasks = StdTasks::new(ArtifactStore::new(base.join("artifacts")));
    (base, runner, tasks)
}

async fn run_dir(base: &std::path::Path, runner: &Runner, tasks: &StdTasks, id: u64) -> RunRecord {
    let req = RunRequest::new(
        id,
        "p",
        SourceSpec::Dir(base.join("src")),
        "azure-pipelines.yml",
    );
    let (_c, rx) = watch::channel(false);
    runner.run(req, tasks, rx).await
}

#[tokio::test]
async fn a_symlinked_or_oversized_pipeline_file_fails_the_run() {
    let (base, runner, tasks) = runner("files");
    let secret = base.join("secret");
    std::fs::write(&secret, "steps:\n- script: echo SECRET-VALUE\n").unwrap();
    std::os::unix::fs::symlink(&secret, base.join("src/azure-pipelines.yml")).unwrap();
    let rec = run_dir(&base, &runner, &tasks, 1).await;
    assert_eq!(rec.result, Some(RunResult::Failed));
    assert_eq!(
        rec.message.as_deref(),
        Some("azure-pipelines.yml: cannot read the pipeline file: it is a symbolic link; a pipeline file must be a regular file")
    );
    assert!(rec.stages.is_empty());
    assert!(!runner.store.logs(1).unwrap().contains("SECRET-VALUE"));

    std::fs::remove_file(base.join("src/azure-pipelines.yml")).unwrap();
    std::fs::write(base.join("src/azure-pipelines.yml"), vec![b'#'; 3 << 20]).unwrap();
    let rec = run_dir(&base, &runner, &tasks, 2).await;
    assert_eq!(
        rec.message.as_deref(),
        Some("azure-pipelines.yml: cannot read the pipeline file: it is 3145728 bytes; the limit is 2 MiB")
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn job_variables_that_multiply_fail_the_job_with_the_variable_named() {
    let (base, runner, tasks) = runner("laughs");
    let mut y = String::from("jobs:\n- job: bomb\n  variables:\n    v0: xxxxxxxxxx\n");
    for i in 1..=30 {
        y.push_str(&format!(
            "    v{i}: '{}'\n",
            format!("$(v{})", i - 1).repeat(10)
        ));
    }
    y.push_str("  steps:\n  - script: echo $(v30)\n");
    std::fs::write(base.join("src/azure-pipelines.yml"), y).unwrap();
    let rec = run_dir(&base, &runner, &tasks, 1).await;
    assert_eq!(rec.result, Some(RunResult::Failed));
    let job = &rec.stages[0].jobs[0];
    let want = "job bomb: variable `v10`: expanding its `$(...)` references makes it longer than 1 MiB, the limit for one value (do variables refer to each other many times over?)";
    assert_eq!(job.message.as_deref(), Some(want));
    assert_eq!(job.steps[0].result, Some(RunResult::Skipped));
    assert!(runner
        .store
        .logs(1)
        .unwrap()
        .contains(&format!("##[error]{want}")));
    let _ = std::fs::remove_dir_all(&base);
}
