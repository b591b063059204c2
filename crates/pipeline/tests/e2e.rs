//! End to end with real git (smart HTTP through `git http-backend`) and bash: push → CI run →
//! artifact `drop` → release pipeline triggered by it → PackerBuild@1 (fake Baker) →
//! AzureCLI@2 running the seed's inline script against an `az` shim.

use pipeline::artifacts::ArtifactStore;
use pipeline::git::{self, CgiRequest, RefUpdate, RepoStore};
use pipeline::plan::RunResult;
use pipeline::runner::*;
use pipeline::tasks::{BakeRequest, BakedImage, Baker, EnvVar, ScaleSets, StdTasks};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pipeline-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A one-request-per-connection HTTP/1.1 server forwarding to `git::http_backend`, reporting
/// ref updates of pushes like the daemon would.
async fn serve(
    root: PathBuf,
    repos: RepoStore,
    updates: mpsc::UnboundedSender<Vec<RefUpdate>>,
) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let push_lock = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (root, repos, updates, push_lock) = (
                root.clone(),
                repos.clone(),
                updates.clone(),
                push_lock.clone(),
            );
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let head_end = loop {
                    let mut b = [0u8; 8192];
                    let n = s.read(&mut b).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&b[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut rest = buf[head_end + 4..].to_vec();
                let mut lines = head.lines();
                let req_line = lines.next().unwrap_or("");
                let mut parts = req_line.split_whitespace();
                let method = parts.next().unwrap_or("GET").to_string();
                let target = parts.next().unwrap_or("/").to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let h = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                let body = if let Some(len) = h("content-length") {
                    let len: usize = len.parse().unwrap();
                    while rest.len() < len {
                        let mut b = vec![0u8; 65536];
                        let n = s.read(&mut b).await.unwrap();
                        assert!(n > 0);
                        rest.extend_from_slice(&b[..n]);
                    }
                    rest
                } else if h("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                    let mut out = Vec::new();
                    loop {
                        // Need a full size line.
                        let pos = loop {
                            if let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
                                break p;
                            }
                            let mut b = vec![0u8; 65536];
                            let n = s.read(&mut b).await.unwrap();
                            rest.extend_from_slice(&b[..n]);
                        };
                        let size = usize::from_str_radix(
                            String::from_utf8_lossy(&rest[..pos])
                                .split(';')
                                .next()
                                .unwrap()
                                .trim(),
                            16,
                        )
                        .unwrap();
                        while rest.len() < pos + 2 + size + 2 {
                            let mut b = vec![0u8; 65536];
                            let n = s.read(&mut b).await.unwrap();
                            rest.extend_from_slice(&b[..n]);
                        }
                        out.extend_from_slice(&rest[pos + 2..pos + 2 + size]);
                        rest.drain(..pos + 2 + size + 2);
                        if size == 0 {
                            break;
                        }
                    }
                    out
                } else {
                    vec![]
                };
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let gp = git::parse_path_info(&method, path, query);
                let _guard = if gp.as_ref().is_some_and(|g| g.is_push_post) {
                    Some(push_lock.lock().await)
                } else {
                    None
                };
                let before = gp
                    .as_ref()
                    .filter(|g| g.is_push_post)
                    .and_then(|g| repos.refs(&g.repo).ok());
                let (ct, ce, gpr) = (h("content-type"), h("content-encoding"), h("git-protocol"));
                let req = CgiRequest {
                    method: &method,
                    path_info: path,
                    query,
                    content_type: ct.as_deref(),
                    content_encoding: ce.as_deref(),
                    git_protocol: gpr.as_deref(),
                    body: &body,
                    remote_user: Some("tester"),
                    remote_addr: Some("127.0.0.1"),
                };
                let resp = git::http_backend(&root, &req).await.unwrap();
                if let (Some(before), Some(g)) = (before, gp) {
                    let after = repos.refs(&g.repo).unwrap();
                    let _ = updates.send(git::diff_refs(&before, &after));
                }
                let mut out = format!("HTTP/1.1 {} X\r\n", resp.status);
                for (k, v) in &resp.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str(&format!(
                    "Content-Length: {}\r\nConnection: close\r\n\r\n",
                    resp.body.len()
                ));
                let _ = s.write_all(out.as_bytes()).await;
                let _ = s.write_all(&resp.body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

fn git_client(dir: &Path, home: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("https_proxy")
        .env_remove("all_proxy")
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[derive(Default)]
struct FakeBaker {
    calls: Mutex<Vec<(BakeRequest, Vec<String>)>>,
    /// What the bake reports about its script's failed commands.
    warnings: Vec<String>,
}
impl Baker for FakeBaker {
    fn bake(&self, req: BakeRequest, log: &mut dyn FnMut(&str)) -> Result<BakedImage, String> {
        log("fake bake: copying the package");
        let mut files: Vec<String> = walk(&req.package_dir);
        files.sort();
        let name = req.name.clone();
        self.calls.lock().unwrap().push((req, files));
        Ok(BakedImage {
            id: format!("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/vmssdevops2-rg/providers/Microsoft.Compute/images/{name}"),
            name,
            warnings: self.warnings.clone(),
        })
    }
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(
                walk(&p)
                    .into_iter()
                    .map(|x| format!("{}/{x}", e.file_name().to_string_lossy())),
            );
        } else {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[derive(Default)]
struct FakeScaleSets {
    calls: Mutex<Vec<(Option<String>, String, String)>>,
}
impl ScaleSets for FakeScaleSets {
    fn update_image(
        &self,
        rg: Option<&str>,
        vmss: &str,
        image: &str,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), String> {
        log("fake update");
        self.calls
            .lock()
            .unwrap()
            .push((rg.map(str::to_string), vmss.into(), image.into()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_ci_artifact_release_bake_and_az() {
    let base = tmp("flow");
    let repos = RepoStore::new(base.join("repos"));
    let info = repos.create("my_app").unwrap();
    assert_eq!(info.head.as_deref(), Some("refs/heads/main"));
    assert!(repos.create("my_app").is_err());
    assert!(repos.create("../evil").is_err());
    let (tx, mut updates) = mpsc::unbounded_channel();
    let port = serve(repos.root().to_path_buf(), repos.clone(), tx).await;

    // The developer's repository: the fixtures with the cargo build replaced by a fast stand-in.
    let home = base.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let work = base.join("clone");
    std::fs::create_dir_all(&work).unwrap();
    let ci = include_str!("fixtures/azure-pipelines.yml").replace(
        "cargo build --$(cargoProfile) --locked --manifest-path $(appDir)/Cargo.toml",
        "mkdir -p target/$(cargoProfile) && printf '#!/bin/sh\\necho my_app\\n' > target/$(cargoProfile)/my_app",
    );
    assert!(ci.contains("printf"));
    write(&work.join("azure-pipelines.yml"), &ci);
    write(
        &work.join("release-pipeline.yml"),
        include_str!("fixtures/release-pipeline.yml"),
    );
    write(
        &work.join("examples/my_app/nginx/my_app"),
        "server { listen 80; }\n",
    );
    write(
        &work.join("examples/my_app/my_app.service"),
        "[Service]\nExecStart=/opt/my_app\n",
    );
    write(
        &work.join("examples/my_app/setupscript.sh"),
        "#!/bin/bash\necho setup\n",
    );
    git_client(&work, &home, &["init", "-q"]);
    git_client(&work, &home, &["add", "-A"]);
    git_client(&work, &home, &["commit", "-qm", "first"]);
    let url = format!("http://127.0.0.1:{port}/my_app.git");
    git_client(&work, &home, &["push", "-q", &url, "main"]);
    let ups = updates.recv().await.unwrap();
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(ups[0].name, "refs/heads/main");
    assert!(ups[0].is_create());
    let head = git_client(&work, &home, &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    assert_eq!(ups[0].new, head);
    let repo_path = repos.path("my_app");
    let mut all = git::changed_paths(&repo_path, &ups[0].old, &ups[0].new).unwrap();
    all.sort();
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(
        git::read_file_at(&repo_path, &head, "azure-pipelines.yml")
            .unwrap()
            .unwrap(),
        ci.as_bytes()
    );
    assert_eq!(
        git::read_file_at(&repo_path, &head, "nope.yml").unwrap(),
        None
    );
    assert_eq!(repos.list().unwrap().len(), 1);

    // Clone back over HTTP (upload-pack).
    let clone2 = base.join("clone2");
    git_client(
        &base,
        &home,
        &["clone", "-q", &url, clone2.to_str().unwrap()],
    );
    assert!(clone2.join("examples/my_app/setupscript.sh").is_file());

    // Definitions and the push trigger.
    let defs = vec![
        PipelineDefinition {
            name: "my_app-ci".into(),
            repo: "my_app".into(),
            yaml_path: "azure-pipelines.yml".into(),
            default_branch: "main".into(),
        },
        PipelineDefinition {
            name: "my_app-release".into(),
            repo: "my_app".into(),
            yaml_path: "release-pipeline.yml".into(),
            default_branch: "main".into(),
        },
    ];
    let m = pipelines_for_push(&defs, &repos, "my_app", &ups[0]).unwrap();
    assert_eq!(m.runs.len(), 1, "{m:?}");
    assert_eq!(m.runs[0].definition.name, "my_app-ci");

    let store = RunStore::new(base.join("runs"));
    let artifacts = ArtifactStore::new(base.join("artifacts"));
    let mut cfg = RunnerConfig::new(base.join("work"));
    cfg.kill_grace = std::time::Duration::from_millis(300);
    let runner = Runner::new(cfg, store.clone()).with_artifacts(artifacts.clone());
    let ci_id = store.next_id().unwrap();
    let req = m.runs[0].request(ci_id, &repos);
    let queued = store.queue(&req).unwrap();
    assert_eq!(queued.status, RunStatus::Queued);
    let (_ctx, crx) = watch::channel(false);
    let ci_rec = runner
        .run(req, &StdTasks::new(artifacts.clone()), crx)
        .await;
    let ci_log = store.logs(ci_id).unwrap();
    assert_eq!(
        ci_rec.result,
        Some(RunResult::Succeeded),
        "{ci_rec:#?}\n{ci_log}"
    );
    assert_eq!(ci_rec.status, RunStatus::Completed);
    assert_eq!(ci_rec.source_version, head);
    assert_eq!(ci_rec.artifacts.len(), 1);
    assert_eq!(ci_rec.artifacts[0].name, "drop");
    assert_eq!(ci_rec.artifacts[0].files, 4, "{ci_log}");
    assert!(
        ci_log.contains("Publish the drop | Published `drop`"),
        "{ci_log}"
    );
    assert!(
        !base.join("work").join(ci_id.to_string()).exists(),
        "workspace cleaned"
    );
    assert_eq!(store.get(ci_id).unwrap().unwrap(), ci_rec);

    // The release pipeline is triggered by the completed CI run.
    let m = pipelines_for_completed_run(&defs, &repos, &ci_rec);
    assert_eq!(m.runs.len(), 1, "{m:?}");
    assert_eq!(m.runs[0].definition.name, "my_app-release");
    assert_eq!(m.runs[0].reason, RunReason::Resource { alias: "ci".into() });

    let shim = base.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let argv_file = base.join("az-argv.txt");
    let env_file = base.join("az-env.txt");
    write(
        &shim.join("az"),
        &format!(
            "#!/bin/bash\nprintf '%s\\n' \"$@\" > '{}'\nenv > '{}'\necho \"az shim called with token $SCALESET_TOKEN\"\n",
            argv_file.display(),
            env_file.display()
        ),
    );
    std::fs::set_permissions(shim.join("az"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let baker = Arc::new(FakeBaker::default());
    let sets = Arc::new(FakeScaleSets::default());
    let tasks = StdTasks {
        artifacts: artifacts.clone(),
        baker: Some(baker.clone()),
        scale_sets: Some(sets.clone()),
        az_shim_dir: Some(shim.clone()),
        az_env: vec![
            EnvVar::plain("SCALESET_ENDPOINT", "http://127.0.0.1:1"),
            EnvVar::secret("SCALESET_TOKEN", "tok-very-secret-123"),
        ],
    };
    let rel_id = store.next_id().unwrap();
    let req = m.runs[0].request(rel_id, &repos);
    let (_ctx, crx) = watch::channel(false);
    let rel = runner.run(req, &tasks, crx).await;
    let rel_log = store.logs(rel_id).unwrap();
    assert_eq!(
        rel.result,
        Some(RunResult::Succeeded),
        "{rel:#?}\n{rel_log}"
    );
    let calls = baker.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    let (breq, files) = &calls[0];
    assert_eq!(breq.name, ci_id.to_string(), "named by the CI build id");
    assert_eq!(breq.base, "debian:bookworm");
    assert_eq!(breq.script, "setupscript.sh");
    // Its downloads are shared with the repository's other bakes only.
    assert_eq!(breq.cache_scope.as_deref(), Some("repo:my_app"));
    // The bake reads the daemon's private copy of $(Pipeline.Workspace)/ci/drop, not the
    // job's folder.
    assert!(
        breq.package_dir.ends_with("drop") && breq.package_dir.starts_with(artifacts.root()),
        "{}",
        breq.package_dir.display()
    );
    assert_eq!(
        files,
        &vec![
            "my_app".to_string(),
            "my_app.service".into(),
            "nginx/my_app".into(),
            "setupscript.sh".into()
        ]
    );
    assert!(
        rel_log.contains("is mapped to `debian:bookworm`"),
        "{rel_log}"
    );
    let argv = std::fs::read_to_string(&argv_file).unwrap();
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        vec![
            "vmss",
            "update",
            "--resource-group",
            "vmssdevops2-rg",
            "--name",
            "vmssdevops2",
            "--set",
            &format!("virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/vmssdevops2-rg/providers/Microsoft.Compute/images/{ci_id}"),
        ]
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(env.contains("SCALESET_TOKEN=tok-very-secret-123"));
    assert!(env.contains(&format!("PATH={}:", shim.display())));
    assert!(
        !env.contains("CARGO_MANIFEST_DIR="),
        "daemon env leaked: {env}"
    );
    assert!(
        rel_log.contains("az shim called with token ***"),
        "{rel_log}"
    );
    assert!(!rel_log.contains("tok-very-secret-123"));
    assert!(sets.calls.lock().unwrap().is_empty());
    assert_eq!(rel.resources.len(), 1);
    assert_eq!(rel.resources[0].run_id, ci_id);
    // The release run publishes nothing and is not itself a trigger for the CI pipeline.
    assert!(pipelines_for_completed_run(&defs, &repos, &rel)
        .runs
        .is_empty());

    // A bake whose script had failing commands: the release succeeds with issues and its log
    // shows each as a warning (with the output before it).
    let warned = Arc::new(FakeBaker {
        warnings: vec![
            "setup script line 7: `pip3 install uwsgi` exited with 1\n    ERROR: no".into(),
        ],
        ..Default::default()
    });
    let tasks = StdTasks {
        baker: Some(warned),
        ..tasks
    };
    let rel_id = store.next_id().unwrap();
    let (_ctx, crx) = watch::channel(false);
    let again = runner
        .run(m.runs[0].request(rel_id, &repos), &tasks, crx)
        .await;
    let again_log = store.logs(rel_id).unwrap();
    assert_eq!(
        again.result,
        Some(RunResult::SucceededWithIssues),
        "{again_log}"
    );
    assert!(
        again_log
            .contains("| ##[warning]setup script line 7: `pip3 install uwsgi` exited with 1\n")
            && again_log.contains("|     ERROR: no\n"),
        "{again_log}"
    );

    // A page change: an incremental push lists only the changed file.
    write(
        &work.join("examples/my_app/nginx/my_app"),
        "server { listen 8080; }\n",
    );
    git_client(&work, &home, &["commit", "-qam", "page"]);
    git_client(&work, &home, &["push", "-q", &url, "main"]);
    let ups = updates.recv().await.unwrap();
    assert_eq!(ups[0].old, head);
    assert_eq!(
        git::changed_paths(&repo_path, &ups[0].old, &ups[0].new).unwrap(),
        vec!["examples/my_app/nginx/my_app".to_string()]
    );
    let m = pipelines_for_push(&defs, &repos, "my_app", &ups[0]).unwrap();
    assert_eq!(m.runs.len(), 1);
    // A push to another branch matches nothing (trigger: main only).
    git_client(&work, &home, &["push", "-q", &url, "main:feature"]);
    let ups = updates.recv().await.unwrap();
    let m = pipelines_for_push(&defs, &repos, "my_app", &ups[0]).unwrap();
    assert!(m.runs.is_empty());
    assert!(
        m.notes.iter().any(|n| n.contains("no pipeline matched")),
        "{m:?}"
    );

    repos.delete("my_app").unwrap();
    assert!(repos.list().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn vmss_deployment_task_calls_scale_sets() {
    let base = tmp("vmss");
    let src = base.join("src");
    write(
        &src.join("p.yml"),
        "steps:\n- task: AzureVmssDeployment@1\n  inputs:\n    azureSubscription: local\n    action: Update image\n    vmssName: web\n    vmssOsType: Linux\n    imageUrl: img-7\n",
    );
    let sets = Arc::new(FakeScaleSets::default());
    let mut tasks = StdTasks::new(ArtifactStore::new(base.join("a")));
    tasks.scale_sets = Some(sets.clone());
    let store = RunStore::new(base.join("runs"));
    let runner = Runner::new(RunnerConfig::new(base.join("work")), store.clone());
    let (_c, rx) = watch::channel(false);
    let rec = runner
        .run(
            RunRequest::new(1, "p", SourceSpec::Dir(src), "p.yml"),
            &tasks,
            rx,
        )
        .await;
    assert_eq!(
        rec.result,
        Some(RunResult::Succeeded),
        "{}",
        store.logs(1).unwrap()
    );
    assert_eq!(
        sets.calls.lock().unwrap().clone(),
        vec![(None, "web".to_string(), "img-7".to_string())]
    );
    let _ = std::fs::remove_dir_all(&base);
}
