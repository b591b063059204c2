//! Hosted repositories and pipelines end to end through the real daemon: `git push` over HTTP
//! triggers CI (script + PublishPipelineArtifact@1), whose success triggers a release pipeline
//! (download + AzureCLI@2 running our `az`), and a push without a pipeline file is accepted.
mod common;

use common::{daemon_harness, git, wait_run};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const CI: &str = r#"trigger:
  branches:
    include:
    - main
steps:
- script: |
    echo "building $(Build.BuildId) on $(Build.SourceBranch)"
    echo hello-from-ci > $(Build.ArtifactStagingDirectory)/hello.txt
  displayName: Build
- task: PublishPipelineArtifact@1
  inputs:
    targetPath: $(Build.ArtifactStagingDirectory)
    artifact: drop
"#;

/// The release: also checks that jobs run as the unprivileged runner user (who cannot read the
/// daemon's token but reaches the toolchain), and that the `az` shim's credential is the run's
/// own (ARM only). `HOME_DIR` and `TOKEN_FILE` are filled in by the test.
const RELEASE: &str = r#"trigger: none
resources:
  pipelines:
  - pipeline: ci
    source: app
    trigger:
      branches:
        include:
        - main
steps:
- download: ci
  artifact: drop
- script: find $(Pipeline.Workspace) -name hello.txt -exec cat {} +
  displayName: Show artifact
- script: |
    set -eu
    echo "job user: $(id -un)"
    test "$(id -un)" = scaleset-runner
    if cat HOME_DIR/token; then echo "the daemon token is readable"; exit 1; fi
    cargo --version
  displayName: Unprivileged
- task: AzureCLI@2
  displayName: Azure CLI
  inputs:
    azureSubscription: local
    scriptType: bash
    scriptLocation: inlineScript
    inlineScript: |
      set -eu
      az group list --output table
      az image list -o json
      if az repo list; then echo "the run credential reached /scaleset"; exit 1; fi
      echo "$SCALESET_TOKEN" > TOKEN_FILE
"#;

#[test]
fn push_triggers_ci_then_release_with_az() {
    if !testkit::require(testkit::missing_root()) {
        return;
    }
    let mut h = daemon_harness("scaleset-pipelines", "10.213.203.0/24", "pip");
    let home = h.home.clone();
    h.start_serve();
    h.ok(&["group", "create", "-n", "pipe-rg"]);
    let token = std::fs::read_to_string(home.join("token"))
        .unwrap()
        .trim()
        .to_string();

    // Repository management and errors.
    let repo = h.json(&["repo", "create", "app"]);
    assert_eq!(repo["name"], "app");
    assert!(repo["url"]
        .as_str()
        .unwrap()
        .ends_with("/scaleset/git/app.git"));
    let (ok, _, err) = h.run(&["repo", "create", "bad name"]);
    assert!(!ok && err.contains("ERROR"), "{err}");
    let (ok, _, err) = h.run(&["repo", "show", "nope"]);
    assert!(!ok && err.contains("RepositoryNotFound"), "{err}");
    h.ok(&["repo", "create", "plain"]);
    let list = h.json(&["repo", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Wrong credentials are refused.
    let work = home.join("work-app");
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q"]).0);
    std::fs::write(work.join("azure-pipelines.yml"), CI).unwrap();
    let token_file =
        std::env::temp_dir().join(format!("scaleset-run-token-{}", std::process::id()));
    let _ = std::fs::remove_file(&token_file);
    std::fs::write(
        work.join("release-pipeline.yml"),
        RELEASE
            .replace("HOME_DIR", &home.display().to_string())
            .replace("TOKEN_FILE", &token_file.display().to_string()),
    )
    .unwrap();
    std::fs::write(work.join("README.md"), "app\n").unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "first"]).0);
    let bad = format!("http://x:wrong@{}/scaleset/git/app.git", h.api);
    let (ok, out) = git(&work, &["push", &bad, "main"]);
    assert!(!ok, "push with a wrong token succeeded: {out}");

    // The real push triggers CI; its success triggers the release.
    let url = format!("http://x:{token}@{}/scaleset/git/app.git", h.api);
    let (ok, out) = git(&work, &["push", &url, "main"]);
    assert!(ok, "git push failed: {out}");
    assert!(out.contains("queued run"), "push output: {out}");

    let pipes = h.json(&["pipeline", "list"]);
    let names: Vec<&str> = pipes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        names.contains(&"app") && names.contains(&"app-release-pipeline"),
        "{names:?}"
    );

    let ci = wait_run(&h, 1);
    assert_eq!(ci["pipeline"], "app");
    assert_eq!(
        ci["state"],
        "succeeded",
        "CI failed: {ci}\n{}",
        h.ok(&["run", "logs", "1"])
    );
    assert_eq!(ci["artifacts"][0]["name"], "drop", "{ci}");
    let ci_log = h.ok(&["pipeline", "logs", "1"]);
    assert!(ci_log.contains("building 1 on refs/heads/main"), "{ci_log}");

    // The release is queued by the CI run's completion.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rel_id = loop {
        let runs = h.json(&["run", "list", "--pipeline", "app-release-pipeline"]);
        if let Some(id) = runs
            .as_array()
            .and_then(|a| a.first())
            .and_then(|r| r["id"].as_u64())
        {
            break id;
        }
        assert!(Instant::now() < deadline, "no release run was queued");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Follow streams the log until the run ends.
    let followed = h.ok(&["pipeline", "logs", &rel_id.to_string(), "--follow"]);
    let rel = wait_run(&h, rel_id);
    assert_eq!(
        rel["state"], "succeeded",
        "release failed: {rel}\n{followed}"
    );
    assert!(followed.contains("hello-from-ci"), "{followed}");
    assert!(
        followed.contains("pipe-rg"),
        "az output missing: {followed}"
    );
    assert!(followed.contains("finished"), "{followed}");
    assert!(!followed.contains(&token), "the token leaked into the log");
    assert!(followed.contains("job user: scaleset-runner"), "{followed}");
    // The state is the daemon's alone; the home is traversable, not listable.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o711);
    assert_eq!(mode(&home.join("state.db")), 0o600);
    assert_eq!(mode(&home.join("token")), 0o600);
    assert_eq!(mode(&home.join("repos")), 0o700);
    assert_eq!(mode(&home.join("pipelines/runs")), 0o700);
    // The run's credential was its own, and it died with the run.
    let run_token = std::fs::read_to_string(&token_file).unwrap();
    let _ = std::fs::remove_file(&token_file);
    let run_token = run_token.trim();
    assert!(!run_token.is_empty() && run_token != token);
    let out = h
        .cmd()
        .env("SCALESET_TOKEN", run_token)
        .args(["group", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("InvalidAuthenticationToken"),
        "a finished run's credential still works: {err}"
    );

    // Table output of runs.
    let table = h.ok(&["run", "list", "-o", "table"]);
    assert!(
        table.contains("app-release-pipeline") && table.contains("succeeded"),
        "{table}"
    );

    // A push without a pipeline file is accepted and says no pipeline matched.
    let plain = home.join("work-plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert!(git(&plain, &["init", "-q"]).0);
    std::fs::write(plain.join("README.md"), "plain\n").unwrap();
    assert!(git(&plain, &["add", "."]).0);
    assert!(git(&plain, &["commit", "-q", "-m", "first"]).0);
    let url = format!("http://x:{token}@{}/scaleset/git/plain.git", h.api);
    let (ok, out) = git(&plain, &["push", &url, "main"]);
    assert!(ok, "git push failed: {out}");
    assert!(out.contains("no pipeline matched"), "push output: {out}");
    let shown = h.json(&["repo", "show", "plain"]);
    assert!(
        shown["lastPush"]["notes"]
            .to_string()
            .contains("no pipeline matched"),
        "{shown}"
    );

    // Manual run and unknown pipeline.
    let run = h.json(&["pipeline", "run", "app"]);
    let id = run["id"].as_u64().unwrap();
    assert_eq!(wait_run(&h, id)["state"], "succeeded");
    let (ok, _, err) = h.run(&["pipeline", "run", "nope"]);
    assert!(!ok && err.contains("PipelineNotFound"), "{err}");

    // A pipeline under pipelines/ is named <repo>-<stem>; a running run can be canceled.
    std::fs::create_dir_all(work.join("pipelines")).unwrap();
    std::fs::write(
        work.join("pipelines/slow.yml"),
        "trigger: none\nsteps:\n- script: echo started; sleep 120\n",
    )
    .unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "slow"]).0);
    let url = format!("http://x:{token}@{}/scaleset/git/app.git", h.api);
    let (ok, out) = git(&work, &["push", &url, "main"]);
    assert!(ok, "git push failed: {out}");
    // The push runs CI again (the release follows); wait for both before the slow run.
    let deadline = Instant::now() + Duration::from_secs(120);
    while h
        .json(&["run", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["status"] != "completed")
    {
        assert!(Instant::now() < deadline, "runs did not settle");
        std::thread::sleep(Duration::from_millis(200));
    }
    let slow = h.json(&["pipeline", "run", "app-slow", "--branch", "main"]);
    let slow_id = slow["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h
        .ok(&["run", "logs", &slow_id.to_string()])
        .contains("started")
    {
        assert!(Instant::now() < deadline, "slow run did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    h.ok(&["run", "cancel", &slow_id.to_string()]);
    let r = wait_run(&h, slow_id);
    assert_eq!(r["state"], "canceled", "{r}");

    // Runs survive a daemon restart.
    h.kill_serve();
    h.start_serve();
    let r = h.json(&["run", "show", "1"]);
    assert_eq!(r["state"], "succeeded");

    // A pipeline keeps its build directory between runs; deleting the repository removes it.
    let build_dir = home.join("pipelines/work/p-app");
    assert!(build_dir.join("s/azure-pipelines.yml").is_file());
    h.ok(&["repo", "delete", "app"]);
    assert!(!build_dir.exists());
}

const DEPLOY: &str = r###"trigger:
  branches:
    include:
    - main
steps:
- script: |
    echo "##vso[task.setvariable variable=imageUrlVariable]$(Build.BuildId)"
    mkdir -p $(Build.ArtifactStagingDirectory)/pkg
    printf '#!/bin/sh\necho built-$(Build.BuildId) > /etc/scaleset-build\n' > $(Build.ArtifactStagingDirectory)/pkg/setupscript.sh
    chmod +x $(Build.ArtifactStagingDirectory)/pkg/setupscript.sh
  displayName: Package
- task: PackerBuild@1
  inputs:
    templateType: builtin
    baseImage: debian:bookworm
    packagePath: $(Build.ArtifactStagingDirectory)/pkg
    deployScriptPath: setupscript.sh
    managedImageName: $(Build.BuildId)
- task: AzureCLI@2
  inputs:
    azureSubscription: local
    scriptType: bash
    scriptLocation: inlineScript
    inlineScript: |
      az vmss update --resource-group vmssdevops2-rg --name vmssdevops2 --set virtualMachineProfile.storageProfile.imageReference.id="/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/vmssdevops2-rg/providers/Microsoft.Compute/images/$(imageUrlVariable)"
      az vmss list-instances -g vmssdevops2-rg -n vmssdevops2 -o table
"###;

/// Boots a machine: the pipeline bakes an image named by the build id (PackerBuild@1) and the
/// seed's inline script points the scale set at it (az vmss update).
#[test]
fn pipeline_bakes_and_updates_scale_set() {
    if !testkit::require(common::skip_reason()) {
        return;
    }
    let mut h = daemon_harness("scaleset-pipedeploy", "10.213.204.0/24", "ppd");
    let home = h.home.clone();
    let pkg = home.join("pkg0");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("setupscript.sh"),
        "#!/bin/sh\necho v0 > /etc/scaleset-build\n",
    )
    .unwrap();
    h.ok(&[
        "image",
        "bake",
        "--base",
        "debian:bookworm",
        "--package",
        pkg.to_str().unwrap(),
        "--script",
        "setupscript.sh",
        "--name",
        "v0",
    ]);
    h.start_serve();
    h.ok(&["group", "create", "-n", "vmssdevops2-rg"]);
    h.ok(&[
        "vmss",
        "create",
        "-g",
        "vmssdevops2-rg",
        "-n",
        "vmssdevops2",
        "--image",
        "v0",
        "--instance-count",
        "1",
        "--upgrade-policy-mode",
        "Automatic",
    ]);
    let token = std::fs::read_to_string(home.join("token"))
        .unwrap()
        .trim()
        .to_string();
    h.ok(&["repo", "create", "deploy"]);
    let work = home.join("work");
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q"]).0);
    std::fs::write(work.join("azure-pipelines.yml"), DEPLOY).unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "deploy"]).0);
    let url = format!("http://x:{token}@{}/scaleset/git/deploy.git", h.api);
    let (ok, out) = git(&work, &["push", &url, "main"]);
    assert!(ok, "git push failed: {out}");
    let deadline = Instant::now() + Duration::from_secs(600);
    let r = loop {
        let r = h.json(&["run", "show", "1"]);
        if r["status"] == "completed" {
            break r;
        }
        assert!(Instant::now() < deadline, "run did not finish: {r}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = h.ok(&["run", "logs", "1"]);
    assert_eq!(r["state"], "succeeded", "{r}\n{log}");
    let v = h.json(&["vmss", "show", "-g", "vmssdevops2-rg", "-n", "vmssdevops2"]);
    assert!(
        v.to_string().contains("/images/1\""),
        "scale set not pointed at image 1: {v}\n{log}"
    );
    let images = h.json(&["image", "list"]);
    assert!(images.to_string().contains("\"name\":\"1\""), "{images}");
}

/// POSTs `body` to the daemon; returns (status, body).
fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// A mirror of an external repository is updated by its push webhook: GitHub's (HMAC-SHA256
/// signature) and Azure Repos' (HTTP Basic with the secret), each triggering CI for the commit
/// the mirror fetched; bad signatures change nothing; the mirror refuses pushes.
#[test]
fn webhooks_from_github_and_azure_repos_trigger_runs() {
    if !testkit::require(testkit::missing_root()) {
        return;
    }
    let mut h = daemon_harness("scaleset-webhooks", "10.213.206.0/24", "whk");
    let home = h.home.clone();
    h.start_serve();

    // The "external" repository (GitHub or Azure Repos in real life).
    let ext = home.join("ext.git");
    assert!(git(&home, &["init", "-q", "--bare", ext.to_str().unwrap()]).0);
    let work = home.join("ext-work");
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q"]).0);
    std::fs::write(
        work.join("azure-pipelines.yml"),
        "trigger:\n- main\nsteps:\n- script: echo \"built $(Build.SourceVersion) ($(Build.Reason))\"\n",
    )
    .unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "one"]).0);
    assert!(git(&work, &["push", "-q", ext.to_str().unwrap(), "main"]).0);

    let secret = "a-webhook-secret-0123";
    let url = format!("file://{}", ext.display());
    let (ok, _, err) = h.run(&[
        "repo",
        "create",
        "mir",
        "--mirror",
        &url,
        "--webhook-secret",
        "short",
    ]);
    assert!(!ok && err.contains("at least 16"), "{err}");
    let (ok, _, err) = h.run(&[
        "repo",
        "create",
        "mir",
        "--mirror=-x",
        "--webhook-secret",
        secret,
    ]);
    assert!(!ok && err.contains("InvalidMirror"), "{err}");
    let repo = h.json(&[
        "repo",
        "create",
        "mir",
        "--mirror",
        &url,
        "--webhook-secret",
        secret,
    ]);
    assert_eq!(repo["mirror"], url.as_str());
    let hook_url = repo["webhookUrl"].as_str().unwrap().to_string();
    let hook_path = hook_url
        .split_once(&h.api.to_string())
        .unwrap()
        .1
        .to_string();
    assert_eq!(hook_path, "/scaleset/hooks/mir");
    assert!(repo["branches"]["refs/heads/main"].is_string(), "{repo}");
    // Creating the mirror fetched it but ran nothing.
    assert_eq!(h.json(&["run", "list"]).as_array().unwrap().len(), 0);

    // A new commit upstream, announced by GitHub.
    std::fs::write(work.join("README.md"), "two\n").unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "two"]).0);
    assert!(git(&work, &["push", "-q", ext.to_str().unwrap(), "main"]).0);
    let (_, head) = git(&work, &["rev-parse", "HEAD"]);
    let head = head.trim().to_string();
    let (_, prev) = git(&work, &["rev-parse", "HEAD~1"]);
    let payload = format!(
        r#"{{"ref":"refs/heads/main","before":"{}","after":"{head}","repository":{{"clone_url":"{url}"}}}}"#,
        prev.trim()
    );
    let sign = |body: &str| {
        format!(
            "sha256={}",
            hex::encode(pipeline::webhook::hmac_sha256(
                secret.as_bytes(),
                body.as_bytes()
            ))
        )
    };
    let gh = |sig: String| {
        vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-Hub-Signature-256", sig),
        ]
    };
    let (status, body) = post(h.api, &hook_path, &gh("sha256=00".into()), &payload);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");
    let (status, _) = post(h.api, "/scaleset/hooks/nope", &gh(sign(&payload)), &payload);
    assert_eq!(status, 401, "an unknown repository looks like a bad secret");
    assert_eq!(h.json(&["run", "list"]).as_array().unwrap().len(), 0);
    let (status, body) = post(h.api, &hook_path, &gh(sign(&payload)), &payload);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("queued run 1"), "{body}");
    let r = wait_run(&h, 1);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["source_version"], head.as_str());
    assert!(h
        .ok(&["run", "logs", "1"])
        .contains(&format!("built {head} (IndividualCI)")));
    // Replaying the same delivery changes nothing.
    let (status, body) = post(h.api, &hook_path, &gh(sign(&payload)), &payload);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("queued run"), "{body}");
    let (status, body) = post(
        h.api,
        &hook_path,
        &[
            ("X-GitHub-Event", "ping".into()),
            ("X-Hub-Signature-256", sign("{}")),
        ],
        "{}",
    );
    assert_eq!((status, body.contains("pong")), (200, true), "{body}");

    // Then Azure Repos (service hook with Basic auth).
    std::fs::write(work.join("README.md"), "three\n").unwrap();
    assert!(git(&work, &["commit", "-q", "-am", "three"]).0);
    assert!(git(&work, &["push", "-q", ext.to_str().unwrap(), "main"]).0);
    let (_, head3) = git(&work, &["rev-parse", "HEAD"]);
    let head3 = head3.trim().to_string();
    let az = format!(
        r#"{{"eventType":"git.push","resource":{{"refUpdates":[{{"name":"refs/heads/main","oldObjectId":"{head}","newObjectId":"{head3}"}}],"repository":{{"remoteUrl":"{url}"}}}}}}"#
    );
    let basic = |pw: &str| {
        use base64_like::encode;
        vec![(
            "Authorization",
            format!("Basic {}", encode(&format!("azure:{pw}"))),
        )]
    };
    let (status, _) = post(h.api, &hook_path, &basic("wrong-secret-0123456"), &az);
    assert_eq!(status, 401);
    let (status, body) = post(h.api, &hook_path, &basic(secret), &az);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("queued run 2"), "{body}");
    let r = wait_run(&h, 2);
    assert_eq!(r["state"], "succeeded", "{r}");
    assert_eq!(r["source_version"], head3.as_str());

    // The mirror is read-only.
    let token = std::fs::read_to_string(home.join("token")).unwrap();
    let push_url = format!("http://x:{}@{}/scaleset/git/mir.git", token.trim(), h.api);
    let (ok, out) = git(&work, &["push", &push_url, "main"]);
    assert!(!ok, "a push to a mirror was accepted: {out}");
}

/// Just enough base64 for an HTTP Basic header in a test.
mod base64_like {
    pub fn encode(s: &str) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
