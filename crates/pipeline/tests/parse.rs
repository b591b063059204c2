use pipeline::{compile, parse_pipeline, ParamType, StepKind, DEFAULT_NAME};
use std::collections::BTreeMap;

const CI: &str = include_str!("fixtures/azure-pipelines.yml");
const RELEASE: &str = include_str!("fixtures/release-pipeline.yml");

#[test]
fn ci_example() {
    let p = parse_pipeline("azure-pipelines.yml", CI).unwrap();
    assert!(p.trigger.enabled);
    assert_eq!(p.trigger.branches.include, vec!["main"]);
    assert_eq!(p.variables.get("appDir"), Some("examples/my_app"));
    assert_eq!(p.stages.len(), 1);
    assert_eq!(p.stages[0].name, DEFAULT_NAME);
    let job = &p.stages[0].jobs[0];
    assert_eq!(job.steps.len(), 3);
    assert!(
        matches!(&job.steps[0].kind, StepKind::Script { script, .. } if script.starts_with("cargo build"))
    );
    assert!(
        matches!(&job.steps[1].kind, StepKind::Bash { script, .. } if script.contains("setupscript.sh"))
    );
    match &job.steps[2].kind {
        StepKind::Task {
            name,
            version,
            inputs,
        } => {
            assert_eq!((name.as_str(), *version), ("PublishPipelineArtifact", 1));
            assert!(inputs.contains(&("artifact".into(), "drop".into())));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn release_example() {
    let p = parse_pipeline("release-pipeline.yml", RELEASE).unwrap();
    assert!(!p.trigger.enabled);
    let r = &p.resources.pipelines[0];
    assert_eq!((r.alias.as_str(), r.source.as_str()), ("ci", "my_app-ci"));
    assert!(r.trigger.enabled);
    assert_eq!(r.trigger.branches.include, vec!["main"]);
    let job = &p.stages[0].jobs[0];
    assert!(
        matches!(&job.steps[0].kind, StepKind::Download { source, artifact, .. } if source == "ci" && artifact.as_deref() == Some("drop"))
    );
    let StepKind::Task { name, inputs, .. } = &job.steps[1].kind else {
        panic!()
    };
    assert_eq!(name, "PackerBuild");
    let get = |k: &str| inputs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("managedImageName"), Some("$(Build.BuildId)"));
    assert_eq!(get("isManagedImage"), Some("true"));
    let StepKind::Task { name, inputs, .. } = &job.steps[2].kind else {
        panic!()
    };
    assert_eq!(name, "AzureCLI");
    let script = &inputs.iter().find(|(k, _)| k == "inlineScript").unwrap().1;
    assert_eq!(
        script,
        "az vmss update --resource-group vmssdevops2-rg --name vmssdevops2 --set virtualMachineProfile.storageProfile.imageReference.id=\"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/vmssdevops2-rg/providers/Microsoft.Compute/images/$(imageUrlVariable)\""
    );
}

#[test]
fn implicit_forms_and_depends_on() {
    let p = parse_pipeline(
        "f.yml",
        "jobs:\n- job: A\n  steps:\n  - bash: echo a\n- job: B\n  dependsOn: A\n  steps:\n  - bash: echo b\n- job: C\n  steps:\n  - bash: echo c\n",
    )
    .unwrap();
    assert_eq!(p.stages.len(), 1);
    let jobs = &p.stages[0].jobs;
    assert_eq!(jobs[0].depends_on, Vec::<String>::new());
    assert_eq!(jobs[1].depends_on, vec!["A"]);
    // Jobs without dependsOn run in parallel.
    assert_eq!(jobs[2].depends_on, Vec::<String>::new());

    let p = parse_pipeline(
        "f.yml",
        "stages:\n- stage: Build\n  jobs:\n  - job: J\n    steps:\n    - script: x\n- stage: Test\n  jobs:\n  - job: J\n    steps:\n    - script: x\n- stage: Deploy\n  dependsOn: [Build, Test]\n  condition: and(succeeded(), eq(variables['Build.SourceBranch'], 'refs/heads/main'))\n  jobs:\n  - job: J\n    steps:\n    - script: x\n- stage: Other\n  dependsOn: []\n  jobs:\n  - job: J\n    steps:\n    - script: x\n",
    )
    .unwrap();
    let deps: Vec<Vec<String>> = p.stages.iter().map(|s| s.depends_on.clone()).collect();
    assert_eq!(
        deps,
        vec![
            vec![],
            vec!["Build".to_string()],
            vec!["Build".into(), "Test".into()],
            vec![]
        ]
    );
    assert!(p.stages[2].condition.is_some());
}

#[test]
fn variables_parameters_and_templates() {
    let text = r#"
parameters:
  - name: env
    type: string
    default: staging
    values: [staging, prod]
  - name: count
    type: number
    default: 2
  - name: dryRun
    type: boolean
    default: false
variables:
  - name: region
    value: west-${{ parameters.env }}
  - name: full
    value: ${{ variables.region }}/x
    readonly: true
steps:
  - bash: echo ${{ parameters.env }} ${{ parameters.count }} $(region)
    displayName: Deploy to ${{ parameters.env }}
    env:
      DRY: ${{ parameters.dryRun }}
      TOKEN: $(secretToken)
    workingDirectory: $(Build.SourcesDirectory)/app
    continueOnError: true
    timeoutInMinutes: 5
    retryCountOnTaskFailure: 2
    condition: succeededOrFailed()
    enabled: false
    name: deploy
"#;
    let p = parse_pipeline("f.yml", text).unwrap();
    assert_eq!(p.parameters[0].value, "staging");
    assert_eq!(p.parameters[1].ty, ParamType::Number);
    assert_eq!(p.variables.get("region"), Some("west-staging"));
    assert_eq!(p.variables.get("full"), Some("west-staging/x"));
    assert!(p.variables.get_var("full").unwrap().readonly);
    let s = &p.stages[0].jobs[0].steps[0];
    assert!(
        matches!(&s.kind, StepKind::Bash { script, .. } if script == "echo staging 2 $(region)")
    );
    assert_eq!(s.display_name.as_deref(), Some("Deploy to staging"));
    assert_eq!(
        s.env,
        vec![
            ("DRY".into(), "false".into()),
            ("TOKEN".into(), "$(secretToken)".into())
        ]
    );
    assert_eq!(
        s.working_directory.as_deref(),
        Some("$(Build.SourcesDirectory)/app")
    );
    assert!(s.continue_on_error && !s.enabled);
    assert_eq!(
        (s.timeout_in_minutes, s.retry_count_on_task_failure),
        (5, 2)
    );
    assert_eq!(s.name.as_deref(), Some("deploy"));

    let mut given = BTreeMap::new();
    given.insert("ENV".to_string(), "prod".to_string());
    let p = compile("f.yml", text, &given).unwrap();
    assert_eq!(p.variables.get("region"), Some("west-prod"));
    given.clear();
    given.insert("env".to_string(), "qa".to_string());
    let e = compile("f.yml", text, &given).unwrap_err();
    assert!(e.message.contains("must be one of staging, prod"), "{e}");
    let mut bad = BTreeMap::new();
    bad.insert("nope".to_string(), "1".to_string());
    let e = compile("f.yml", text, &bad).unwrap_err();
    assert!(e.message.contains("`nope` is not declared"), "{e}");
}

#[test]
fn triggers() {
    let t = |y: &str| {
        parse_pipeline("f", &format!("{y}\nsteps:\n- script: x\n"))
            .unwrap()
            .trigger
    };
    assert!(t("").enabled && t("").branches.is_empty());
    assert!(!t("trigger: none").enabled);
    assert_eq!(
        t("trigger: [main, 'releases/*']").branches.include,
        vec!["main", "releases/*"]
    );
    let full = t("trigger:\n  batch: true\n  branches:\n    include: [main]\n    exclude: [old]\n  paths:\n    include: [src]\n    exclude: [docs/*]\n  tags:\n    include: ['v*']");
    assert!(full.batch);
    assert_eq!(full.branches.exclude, vec!["old"]);
    assert_eq!(full.paths.include, vec!["src"]);
    assert_eq!(full.paths.exclude, vec!["docs/*"]);
    assert_eq!(full.tags.include, vec!["v*"]);
    let p = parse_pipeline(
        "f",
        "pr:\n  branches:\n    include: [main]\nsteps:\n- script: x\n",
    )
    .unwrap();
    assert!(p.trigger.enabled);
}

/// (yaml, line, column, message fragment)
#[test]
fn errors_have_positions_and_rules() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("", 1, 1, "the pipeline file is empty"),
        ("trigger: none\n", 1, 1, "needs one of `stages`, `jobs` or `steps`"),
        ("steps:\n- script: x\nfoo: 1\n", 3, 1, "unknown key `foo` in the pipeline"),
        ("steps:\n- script: x\n  displayname: y\n", 3, 3, "did you mean `displayName`?"),
        ("steps:\n- script: x\njobs:\n- job: A\n  steps: [{script: y}]\n", 3, 1, "use only one of"),
        ("stages:\n- stage: Build\n  jobs:\n  - job: A\n    steps:\n    - script: x\n- stage: Deploy\n  dependsOn: Bild\n  jobs:\n  - job: A\n    steps:\n    - script: x\n", 7, 3, "`dependsOn` refers to stage `Bild` which does not exist"),
        ("stages:\n- stage: A\n  dependsOn: B\n  jobs:\n  - job: J\n    steps: [{script: x}]\n- stage: B\n  jobs:\n  - job: J\n    steps: [{script: x}]\n", 2, 3, "cycle: A, B"),
        ("jobs:\n- job: A\n  dependsOn: A\n  steps: [{script: x}]\n", 2, 3, "depends on itself"),
        ("jobs:\n- job: A\n  steps: [{script: x}]\n- job: a\n  steps: [{script: x}]\n", 4, 3, "used twice"),
        ("jobs:\n- job: 1A\n  steps: [{script: x}]\n", 2, 8, "must start with a letter"),
        ("variables:\n- group: secrets\nsteps:\n- script: x\n", 2, 3, "variable groups (`group`) are not supported"),
        ("steps:\n- script: x\n  condition: eq(1,\n", 3, 14, "invalid condition"),
        ("steps:\n- script: x\n  timeoutInMinutes: soon\n", 3, 21, "whole number"),
        ("steps:\n- script: x\n  continueOnError: maybe\n", 3, 20, "true or false"),
        ("steps:\n- task: Foo\n", 2, 9, "needs a major version"),
        ("steps:\n- task: Foo@x\n", 2, 9, "major version number"),
        ("steps:\n- pwsh: Get-Item\n", 2, 3, "`pwsh` steps are not supported"),
        ("steps:\n- displayName: nothing\n", 2, 3, "a step needs one of"),
        ("steps:\n- script: x\n  inputs: {a: 1}\n", 3, 3, "unknown key `inputs` in a `script` step"),
        ("trigger: sometimes\nsteps:\n- script: x\n", 1, 10, "`trigger` must be"),
        ("steps:\n- script: ${{ parameters.nope.x }}\n", 2, 11, "template expression"),
        ("steps:\n- script: ${{ bogus }}\n", 2, 11, "unrecognized value"),
        ("steps:\n- ${{ if true }}:\n  - script: x\n", 2, 3, "template directives"),
        ("extends:\n  template: x.yml\n", 1, 1, "`extends` is not supported"),
        ("jobs:\n- deployment: D\n  environment: prod\n", 2, 3, "deployment jobs are not supported"),
        ("resources:\n  repositories:\n  - repository: r\n", 2, 3, "only `resources.pipelines`"),
        ("resources:\n  pipelines:\n  - pipeline: ci\nsteps:\n- script: x\n", 3, 5, "needs `source:"),
        ("steps:\n- script: x\n  name: a\n- script: y\n  name: A\n", 4, 3, "used twice"),
        ("steps:\n- script: [a]\n", 2, 11, "must be a string"),
        ("steps:\n  script: x\n", 2, 3, "must be a list"),
        ("parameters:\n- name: n\n  type: number\n  default: abc\nsteps:\n- script: x\n", 2, 3, "must be a number"),
        ("parameters:\n- name: o\n  type: object\nsteps:\n- script: x\n", 3, 9, "type `object` is not supported"),
        ("steps:\n- checkout: other\n", 2, 13, "only `self` and `none`"),
        ("a: [\n", 2, 1, "invalid YAML"),
    ];
    for (yaml, line, col, frag) in cases {
        let e = parse_pipeline("azure-pipelines.yml", yaml).expect_err(yaml);
        assert!(e.message.contains(frag), "{yaml:?}: {e}");
        assert_eq!((e.pos.line, e.pos.column), (*line, *col), "{yaml:?}: {e}");
        assert!(e
            .to_string()
            .starts_with(&format!("azure-pipelines.yml:{line}:{col}: ")));
    }
}

/// Runs tests/validate_examples.py (Microsoft's JSON schema in ../shared) with a python3 that has
/// PyYAML and jsonschema (Debian's python3-yaml and python3-jsonschema, scripts/install-deps.sh).
#[test]
fn examples_validate_against_microsoft_schema() {
    const SCHEMA: &str = "specs/azure-pipelines/service-schema.json";
    let missing = testkit::missing_shared(SCHEMA)
        .or_else(|| testkit::missing_python_modules(&["yaml", "jsonschema"]));
    if !testkit::require(missing) {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = testkit::shared_dir().join(SCHEMA);
    let python = testkit::find_tool("python3").unwrap();
    let out = std::process::Command::new(python)
        .arg(dir.join("tests/validate_examples.py"))
        .env("SCHEMA", &schema)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Property-style: mangled versions of the examples never panic the parser.
#[test]
fn mangled_files_never_panic() {
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let junk = [
        "${{",
        "}}",
        ":",
        "- ",
        "\n",
        "  ",
        "'",
        "\"",
        "[",
        "]",
        "{",
        "}",
        "&a",
        "*a",
        "!!str",
        "dependsOn: x\n",
        "$(",
        "é",
    ];
    for base in [CI, RELEASE] {
        for _ in 0..400 {
            let mut s: Vec<char> = base.chars().collect();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() as usize) % (s.len() + 1);
                if next() % 2 == 0 && at < s.len() {
                    let n = ((next() % 20) as usize).min(s.len() - at);
                    s.drain(at..at + n);
                } else {
                    let j = junk[(next() as usize) % junk.len()];
                    for (k, c) in j.chars().enumerate() {
                        s.insert(at + k, c);
                    }
                }
            }
            let text: String = s.into_iter().collect();
            let _ = parse_pipeline("m.yml", &text);
        }
    }
}
