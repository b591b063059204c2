//! The seed's whole flow, for real: `scaleset up` pushes the example to a hosted repository
//! whose own pipelines deploy it (CI builds with cargo and publishes `drop`; the release bakes
//! the image named by the build id and runs the seed's `az vmss update` inline script); then a
//! developer clones the repository, edits a page and `git push`es, and the change rolls out to
//! every instance under load with 0 failed requests.
mod common;
#[path = "../../api/tests/support/swagger.rs"]
mod swagger;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .expect("git");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "git {args:?}: {text}");
    text
}

#[test]
fn up_deploys_through_pipelines_and_git_push_rolls_out_a_change() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let h = Harness::new("gitpush", "10.213.205.0/24", "gp", vec![]);
    let port = free_port();
    let frontend: SocketAddr = ([127, 0, 0, 1], port).into();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/my_app");
    let up = h.up(&example, 2, frontend, Duration::from_secs(1200));
    let up_log = || h.up_log();

    // The first deploy went through the example's own pipelines.
    let all = h.runs();
    let ci1 = all
        .iter()
        .find(|r| r["pipeline"] == "my_app")
        .unwrap_or_else(|| panic!("no CI run: {all:#?}\n{}", up_log()));
    assert_eq!(ci1["state"], "succeeded");
    let ci1 = ci1["id"].as_u64().unwrap();
    // CI ran the app's own tests before it published the drop.
    let log1 = h.ok(&["run", "logs", &ci1.to_string()]);
    let (tested, published) = (
        log1.find("##[section]Starting: Test my_app"),
        log1.find("##[section]Starting: Publish the drop"),
    );
    assert!(
        tested.is_some() && tested < published && log1.contains("test result: ok."),
        "{log1}"
    );
    let rel1 = h.release_of(ci1);
    assert_eq!(rel1["pipeline"], "my_app-release-pipeline");
    assert_eq!(rel1["state"], "succeeded");
    let (status, home) = get(frontend, "/");
    assert_eq!(status, 200);
    assert!(
        home.contains("You are currently on the Home page."),
        "{home}"
    );
    assert!(
        home.contains(&format!("<span id=\"image\">{ci1}</span>")),
        "the image is named by the CI build id {ci1}: {home}"
    );

    // A developer's change, pushed with git, under load.
    let load = Load::start(frontend, 8);
    let token = std::fs::read_to_string(h.home.join("token")).unwrap();
    let work = h.home.join("dev");
    std::fs::create_dir_all(&work).unwrap();
    let url = format!(
        "http://dev:{}@{}/scaleset/git/my_app.git",
        token.trim(),
        h.api
    );
    git(&work, &["clone", "-q", &url, "app"]);
    let app = work.join("app");
    // The page and the app's tests that check it: CI runs them before it publishes.
    for file in ["src/app.rs", "tests/http.rs"] {
        let src = app.join(file);
        let text = std::fs::read_to_string(&src).unwrap();
        assert!(text.contains("the Home page"), "{file}");
        std::fs::write(
            &src,
            text.replace("the Home page", "the Home page, pushed with git"),
        )
        .unwrap();
    }
    git(&app, &["commit", "-q", "-am", "Home page wording"]);
    let pushed = git(&app, &["push", "origin", "main"]);
    let ci2 = queued_run(&pushed);
    let rel2 = h.release_of(ci2);
    assert_eq!(
        rel2["state"],
        "succeeded",
        "{}",
        h.ok(&["run", "logs", &rel2["id"].to_string()])
    );

    // Every instance serves the change from the image named by the new build id.
    let vms = h.json(&[
        "vmss",
        "list-instances",
        "-g",
        "vmssdevops2-rg",
        "-n",
        "vmssdevops2",
        "-o",
        "json",
    ]);
    let vms = vms.as_array().unwrap();
    assert_eq!(vms.len(), 2);
    for vm in vms {
        assert_eq!(vm["tags"]["scaleset.image"], ci2.to_string(), "{vm:#}");
    }
    for _ in 0..8 {
        let (status, home) = get(frontend, "/");
        assert_eq!(status, 200);
        assert!(
            home.contains("You are currently on the Home page, pushed with git."),
            "{home}"
        );
    }
    let latest = h.json(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        "vmssdevops2-rg",
        "-n",
        "vmssdevops2",
    ]);
    assert_eq!(latest["properties"]["runningStatus"]["code"], "Completed");
    assert_eq!(latest["properties"]["receipt"]["failedRequests"], 0);
    assert_eq!(latest["properties"]["receipt"]["non2xxResponses"], 0);
    let (ok, failed) = load.finish();
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed during the git-push rollout");

    // The artifact and the image are visible through the CLI.
    let images = h.json(&["image", "list", "-o", "json"]);
    assert!(
        images.as_array().is_some_and(|a| a
            .iter()
            .any(|i| i["name"].as_str() == Some(ci2.to_string().as_str()))),
        "{images:#}"
    );
    let run = h.json(&["run", "show", &ci2.to_string(), "-o", "json"]);
    assert_eq!(run["artifacts"][0]["name"], "drop", "{run:#}");

    // The example's deployment exported for real Azure: the ARM template validates against
    // Microsoft's specs, the pipelines against the Azure Pipelines schema.
    let out = h.home.join("azure-export");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = h
        .cmd()
        .current_dir(&root)
        .args(["export", "azure", "-g", "vmssdevops2-rg", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "export: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("azuredeploy.json")).unwrap())
            .unwrap();
    const SPECS: &str = "specs/azure-rest-api/specification";
    if testkit::require(testkit::missing_shared(SPECS)) {
        let v = swagger::Specs::new(testkit::shared_dir().join(SPECS)).check_arm_template(&t);
        assert!(v.is_empty(), "exported template:\n{}", v.join("\n"));
    }
    validate_pipeline_yaml(&[
        &out.join("azure-pipelines.yml"),
        &out.join("release-pipeline.yml"),
    ]);
    drop(up);
}
