use pipeline::parse_pipeline;
use pipeline::plan::{dependency_order, execution_order, JobRef, RunResult, RunState, Status};
use pipeline::vars::Variables;
use std::collections::BTreeMap;

const P: &str = r#"
stages:
- stage: Build
  jobs:
  - job: Compile
    steps: [{script: x}]
  - job: Lint
    steps: [{script: x}]
  - job: Package
    dependsOn: [Compile, Lint]
    steps: [{script: x}]
- stage: Deploy
  condition: and(succeeded(), eq(variables['Build.SourceBranch'], 'refs/heads/main'))
  jobs:
  - job: Rollout
    steps: [{script: x}]
  - job: Notify
    dependsOn: Rollout
    condition: eq(dependencies.Rollout.outputs['set.ok'], 'yes')
    steps: [{script: x}]
- stage: Cleanup
  dependsOn: [Build, Deploy]
  condition: always()
  jobs:
  - job: Clean
    steps: [{script: x}]
- stage: OnFailure
  dependsOn: Build
  condition: failed()
  jobs:
  - job: Report
    steps: [{script: x}]
"#;

fn jr(s: &str, j: &str) -> JobRef {
    JobRef {
        stage: s.into(),
        job: j.into(),
    }
}

fn names(v: &[JobRef]) -> Vec<String> {
    v.iter().map(|r| format!("{}.{}", r.stage, r.job)).collect()
}

fn vars(branch: &str) -> Variables {
    let mut v = Variables::new();
    v.set("Build.SourceBranch", branch);
    v
}

#[test]
fn order() {
    let p = parse_pipeline("f", P).unwrap();
    let o = execution_order(&p).unwrap();
    assert_eq!(
        o[0],
        (
            "Build".to_string(),
            vec!["Compile".to_string(), "Lint".into(), "Package".into()]
        )
    );
    assert_eq!(
        o.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["Build", "Deploy", "Cleanup", "OnFailure"]
    );
    let cyc = dependency_order(&[
        ("a".into(), vec!["b".into()]),
        ("b".into(), vec!["a".into()]),
        ("c".into(), vec![]),
    ]);
    assert_eq!(cyc.unwrap_err(), "dependency cycle among: a, b");
    assert!(dependency_order(&[("a".into(), vec!["zz".into()])])
        .unwrap_err()
        .contains("zz"));
    assert_eq!(
        dependency_order(&[("b".into(), vec!["a".into()]), ("a".into(), vec![])]).unwrap(),
        vec![1, 0]
    );
}

#[test]
fn happy_path_on_main() {
    let p = parse_pipeline("f", P).unwrap();
    let v = vars("refs/heads/main");
    let mut st = RunState::new(&p);
    let a = st.advance(&p, &v);
    assert_eq!(names(&a.start), ["Build.Compile", "Build.Lint"]);
    assert!(
        st.advance(&p, &v).start.is_empty(),
        "nothing new until jobs complete"
    );
    st.complete_job(
        &jr("Build", "Compile"),
        RunResult::Succeeded,
        BTreeMap::new(),
    );
    assert!(st.advance(&p, &v).start.is_empty());
    st.complete_job(
        &jr("Build", "Lint"),
        RunResult::SucceededWithIssues,
        BTreeMap::new(),
    );
    assert_eq!(names(&st.advance(&p, &v).start), ["Build.Package"]);
    st.complete_job(
        &jr("Build", "Package"),
        RunResult::Succeeded,
        BTreeMap::new(),
    );
    let a = st.advance(&p, &v);
    assert_eq!(
        st.stage("Build").unwrap().status,
        Status::Completed(RunResult::SucceededWithIssues)
    );
    assert_eq!(names(&a.start), ["Deploy.Rollout"]);
    assert_eq!(a.skipped_stages, ["OnFailure"]);
    let mut outs = BTreeMap::new();
    outs.insert("set.ok".to_string(), "yes".to_string());
    st.complete_job(&jr("Deploy", "Rollout"), RunResult::Succeeded, outs);
    assert_eq!(names(&st.advance(&p, &v).start), ["Deploy.Notify"]);
    st.complete_job(
        &jr("Deploy", "Notify"),
        RunResult::Succeeded,
        BTreeMap::new(),
    );
    assert_eq!(names(&st.advance(&p, &v).start), ["Cleanup.Clean"]);
    assert_eq!(st.result(), None);
    st.complete_job(
        &jr("Cleanup", "Clean"),
        RunResult::Succeeded,
        BTreeMap::new(),
    );
    st.advance(&p, &v);
    assert_eq!(st.result(), Some(RunResult::SucceededWithIssues));
}

#[test]
fn failure_and_branch_conditions() {
    let p = parse_pipeline("f", P).unwrap();
    // Not main: Deploy is skipped by its condition, Cleanup still runs (always()).
    let v = vars("refs/heads/dev");
    let mut st = RunState::new(&p);
    st.advance(&p, &v);
    for j in ["Compile", "Lint"] {
        st.complete_job(&jr("Build", j), RunResult::Succeeded, BTreeMap::new());
    }
    st.advance(&p, &v);
    st.complete_job(
        &jr("Build", "Package"),
        RunResult::Succeeded,
        BTreeMap::new(),
    );
    let a = st.advance(&p, &v);
    assert_eq!(a.skipped_stages, ["Deploy", "OnFailure"]);
    assert_eq!(names(&a.start), ["Cleanup.Clean"]);
    assert_eq!(
        st.job(&jr("Deploy", "Notify")).unwrap().status,
        Status::Completed(RunResult::Skipped)
    );

    // Compile fails: Package is skipped, Deploy skipped, OnFailure and Cleanup run.
    let v = vars("refs/heads/main");
    let mut st = RunState::new(&p);
    st.advance(&p, &v);
    st.complete_job(&jr("Build", "Compile"), RunResult::Failed, BTreeMap::new());
    st.complete_job(&jr("Build", "Lint"), RunResult::Succeeded, BTreeMap::new());
    let a = st.advance(&p, &v);
    assert_eq!(
        st.stage("Build").unwrap().status,
        Status::Completed(RunResult::Failed)
    );
    assert_eq!(
        names(&a.skipped),
        ["Build.Package", "Deploy.Rollout", "Deploy.Notify"]
    );
    assert_eq!(names(&a.start), ["Cleanup.Clean", "OnFailure.Report"]);
    for (s, j) in [("Cleanup", "Clean"), ("OnFailure", "Report")] {
        st.complete_job(&jr(s, j), RunResult::Succeeded, BTreeMap::new());
    }
    st.advance(&p, &v);
    assert_eq!(st.result(), Some(RunResult::Failed));
}

#[test]
fn continue_on_error_and_cancel() {
    let p = parse_pipeline(
        "f",
        "jobs:\n- job: A\n  continueOnError: true\n  steps: [{script: x}]\n- job: B\n  dependsOn: A\n  steps: [{script: x}]\n- job: C\n  dependsOn: B\n  steps: [{script: x}]\n- job: D\n  dependsOn: B\n  condition: always()\n  steps: [{script: x}]\n",
    )
    .unwrap();
    let v = Variables::new();
    let mut st = RunState::new(&p);
    assert_eq!(names(&st.advance(&p, &v).start), ["__default.A"]);
    st.complete_job(&jr("__default", "A"), RunResult::Failed, BTreeMap::new());
    assert_eq!(
        st.job(&jr("__default", "A")).unwrap().status,
        Status::Completed(RunResult::SucceededWithIssues)
    );
    assert_eq!(names(&st.advance(&p, &v).start), ["__default.B"]);
    st.cancel();
    st.complete_job(&jr("__default", "B"), RunResult::Canceled, BTreeMap::new());
    let a = st.advance(&p, &v);
    assert_eq!(names(&a.skipped), ["__default.C"]);
    assert_eq!(
        st.job(&jr("__default", "C")).unwrap().status,
        Status::Completed(RunResult::Canceled)
    );
    assert_eq!(names(&a.start), ["__default.D"]);
    st.complete_job(&jr("__default", "D"), RunResult::Succeeded, BTreeMap::new());
    st.advance(&p, &v);
    assert_eq!(st.result(), Some(RunResult::Canceled));
}

#[test]
fn condition_errors_fail_the_job() {
    let p = parse_pipeline(
        "f",
        "jobs:\n- job: A\n  condition: succeeded('Nope')\n  steps: [{script: x}]\n",
    )
    .unwrap();
    let mut st = RunState::new(&p);
    let a = st.advance(&p, &Variables::new());
    assert!(a.start.is_empty());
    assert_eq!(a.errors.len(), 1);
    assert!(a.errors[0].2.contains("Nope"), "{:?}", a.errors);
    assert_eq!(st.result(), Some(RunResult::Failed));
}

#[test]
fn aggregate() {
    use RunResult::*;
    assert_eq!(RunResult::aggregate([]), Skipped);
    assert_eq!(RunResult::aggregate([Skipped, Succeeded]), Succeeded);
    assert_eq!(
        RunResult::aggregate([SucceededWithIssues, Succeeded]),
        SucceededWithIssues
    );
    assert_eq!(RunResult::aggregate([Canceled, Failed, Succeeded]), Failed);
    assert_eq!(
        RunResult::parse("succeededwithissues"),
        Some(SucceededWithIssues)
    );
    assert_eq!(RunResult::parse("x"), None);
}
