//! The web dashboard in a real browser (Debian's headless chromium through chromedriver),
//! against a real daemon with two machines behind the load balancer: sign in with the one-time
//! URL `serve` printed, see the instances, start a rolling upgrade from the page and watch its
//! progress move without a reload, open a pipeline run and watch its log lines arrive; requests
//! without the cookie, with a forged CSRF token, or with a used sign-in link are refused.
//! Screenshots go to `${SCALESET_CI_LOGS:-target/ci-logs}/screenshots/`.
mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use webdriver::{raw, Browser, Driver};

const PIPELINE: &str = r#"trigger:
  branches:
    include:
      - main
steps:
  - script: for i in 1 2 3 4 5 6 7 8; do echo "dash-line $i"; sleep 1; done
    displayName: Count slowly
  - script: echo dash-done
    displayName: Finish
"#;

fn screenshots() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("SCALESET_CI_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/ci-logs"))
        .join("screenshots")
}

fn missing() -> Option<String> {
    skip_reason().or_else(|| {
        testkit::missing_tools(
            &["chromium", "chromedriver", "git"],
            "chromium chromium-driver git",
        )
    })
}

/// The instances table's rows as the page shows them: (id, latest model, health).
fn rows(b: &Browser) -> Vec<(String, String, String)> {
    let v = b.js(
        "return [...document.querySelectorAll('#instances tbody tr')].map(r => \
         [...r.children].map(c => c.textContent));",
    );
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let c = |i: usize| r[i].as_str().unwrap_or("").to_string();
            (c(1), c(5), c(7))
        })
        .collect()
}

#[test]
fn dashboard_in_a_real_browser() {
    if !testkit::require(missing()) {
        return;
    }
    let mut h = Harness::new(
        "dash",
        "10.213.160.0/24",
        "dsh",
        vec![("SCALESET_PROBE_INTERVAL_MS", "1000".into())],
    );
    let home = h.home.clone();
    let shots = screenshots();
    let lb_port = free_port();
    let app = example_drop(&home);
    let (v2, _) = example_variants(&home, &app);
    h.bake("140", &app);
    h.bake("141", &v2);
    h.start_serve();
    let serve_log = std::fs::read_to_string(home.join("serve.log")).unwrap();
    let login = serve_log
        .lines()
        .find_map(|l| l.split("dashboard: ").nth(1))
        .unwrap_or_else(|| panic!("serve printed no dashboard URL:\n{serve_log}"))
        .trim()
        .to_string();
    assert!(
        login.starts_with(&format!("http://{}/ui/login?once=", h.api)),
        "{login}"
    );

    // Nothing is shown without a session: pages, data, streams, assets.
    for path in [
        "/",
        "/ui/app.js",
        "/ui/api/view?view=overview",
        "/ui/events?view=overview",
    ] {
        let (code, _, body) = raw(h.api, "GET", path, &[], "");
        assert_eq!(code, 401, "GET {path} without a session: {body}");
        assert!(
            !body.contains("Resource group "),
            "{path} leaked the page: {body}"
        );
    }

    h.setup_lb(lb_port, 1);
    h.ok(&[
        "vmss",
        "create",
        "-g",
        "rg",
        "-n",
        "web",
        "--image",
        "140",
        "--instance-count",
        "2",
        "--lb",
        "lb",
        "--health-probe",
        "http",
        "--upgrade-policy-mode",
        "Manual",
    ]);
    wait_until("2 healthy instances", Duration::from_secs(120), || {
        healthy(&h.instances()) == 2
    });

    let driver = Driver::start(free_port(), &home.join("chromedriver.log"));
    let b = Browser::new(&driver, &home.join("chromium-profile"));

    // Sign in: the one-time URL sets the cookie and redirects away from the secret.
    b.goto(&login);
    assert_eq!(
        b.url(),
        format!("http://{}/", h.api),
        "the secret stays in the address bar"
    );
    b.wait("the resource group", Duration::from_secs(20), |b| {
        b.text("#resources")
            .filter(|t| t.contains("web") && t.contains("lb"))
    });
    b.screenshot(&shots.join("dashboard-group.png"));
    let cookies = b.cookies();
    let session = cookies
        .iter()
        .find(|c| c["name"] == format!("scaleset_session_{}", h.api.port()))
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_eq!(session["httpOnly"], true);
    assert_eq!(session["sameSite"], "Strict");
    let cookie = format!(
        "{}={}",
        session["name"].as_str().unwrap(),
        session["value"].as_str().unwrap()
    );
    let csrf = b.js("return document.querySelector('meta[name=csrf-token]').content;");
    let csrf = csrf.as_str().unwrap().to_string();

    // The link worked once.
    let (code, _, _) = raw(
        h.api,
        "GET",
        login.trim_start_matches(&format!("http://{}", h.api)),
        &[],
        "",
    );
    assert_eq!(code, 403, "a used sign-in link is refused");

    // The scale set view: both instances, healthy, on the latest model.
    b.goto(&format!("http://{}/#/vmss/rg/web", h.api));
    b.wait(
        "two healthy instances on the page",
        Duration::from_secs(30),
        |b| {
            let r = rows(b);
            (r.len() == 2
                && r.iter()
                    .all(|(_, latest, health)| latest == "Yes" && health == "healthy"))
            .then_some(())
        },
    );
    b.js("window.__noReload = 42; return null;");

    // A new model (CLI): the page shows the instances stale without a reload. The pause between
    // the two batches holds one state of the progress for longer than the page's 1 s refresh, so
    // a rollout faster than the refresh still shows its progress moving.
    h.ok(&["vmss", "update", "-g", "rg", "-n", "web", "--set",
        "virtualMachineProfile.storageProfile.imageReference.id=/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/images/141",
        "--set", "upgradePolicy.rollingUpgradePolicy.pauseTimeBetweenBatches=PT4S"]);
    b.wait("the instances shown stale", Duration::from_secs(20), |b| {
        let r = rows(b);
        (r.len() == 2 && r.iter().all(|(_, latest, _)| latest == "No")).then_some(())
    });

    // Start the rolling upgrade from the page, under load; its progress moves while we watch.
    let load = Load::start(SocketAddr::from(([127, 0, 0, 1], lb_port)), 2);
    b.click("#btn-rolling-start");
    let mut seen = BTreeSet::new();
    b.wait(
        "the rolling upgrade to complete",
        Duration::from_secs(240),
        |b| {
            let p = b.text("#rolling-progress")?;
            seen.insert(p.clone());
            let status = b.text("#rolling-status").unwrap_or_default();
            (status.contains("Completed")
                && p == "successful 2 · in progress 0 · failed 0 · pending 0")
                .then_some(())
        },
    );
    // One batch done, the other pending (held by the pause), then all done: seen live.
    assert!(
        seen.contains("successful 1 · in progress 0 · failed 0 · pending 1"),
        "the pause between batches was seen on the page: {seen:?}"
    );
    assert!(
        seen.len() >= 2,
        "the progress changed on the page: {seen:?}"
    );
    assert_eq!(
        b.js("return window.__noReload;"),
        42,
        "the page was reloaded"
    );
    b.wait(
        "both instances on the new image",
        Duration::from_secs(30),
        |b| {
            let r = rows(b);
            (r.len() == 2
                && r.iter()
                    .all(|(_, latest, health)| latest == "Yes" && health == "healthy"))
            .then_some(())
        },
    );
    // Host metrics reach the table (the sampler reads every 15 s; CPU needs two readings).
    b.wait("CPU and memory of every instance", Duration::from_secs(60), |b| {
        let v = b.js("return [...document.querySelectorAll('#instances tbody tr')].map(r => r.children[10].textContent + '|' + r.children[11].textContent);");
        let cells: Vec<String> = v.as_array()?.iter().filter_map(|c| c.as_str().map(str::to_string)).collect();
        (cells.len() == 2 && cells.iter().all(|c| c.contains(" %") && c.contains("MiB"))).then_some(())
    });
    let receipt = b.text("#receipt").unwrap_or_default();
    assert!(
        receipt.starts_with("Deploy receipt: model ")
            && receipt.contains(" → ")
            && receipt.contains("0 failed"),
        "deploy receipt: {receipt}"
    );
    b.screenshot(&shots.join("dashboard-vmss.png"));

    // An instance's journal (NGINX's unit starting) and its boot log, from the page.
    // (Clicked from script: the table refreshes every second under load, and a WebDriver click
    // is two calls.)
    let id = rows(&b)[0].0.clone();
    let click = |b: &Browser, css: String| {
        b.js(&format!(
            "document.querySelector({css:?}).click(); return null;"
        ));
    };
    click(&b, format!("button[data-journal='{id}']"));
    b.wait(
        "the instance's whole journal",
        Duration::from_secs(20),
        |b| {
            b.text("#instance-log-text")
                .filter(|t| t.contains("my_app"))
        },
    );
    b.js("document.getElementById('journal-unit').value = 'nginx'; \
          document.getElementById('btn-journal-load').click(); return null;");
    let journal = b.wait(
        "NGINX's unit starting in the journal",
        Duration::from_secs(20),
        |b| {
            b.text("#instance-log-text").filter(|t| {
                t.lines()
                    .any(|l| l.contains("Started") && l.contains("nginx"))
            })
        },
    );
    assert!(
        !journal.contains("my_app.service"),
        "the unit filter kept other units' lines: {journal}"
    );
    b.screenshot(&shots.join("dashboard-journal.png"));
    click(&b, format!("button[data-bootlog='{id}']"));
    b.wait("the boot log", Duration::from_secs(20), |b| {
        b.text("#instance-log-text")
            .filter(|t| t.contains("Reached target") && t.contains("multi-user.target"))
    });
    // The load ran from before the rollout until now (the screenshot shows its rate).
    let (ok, failed) = load.finish();
    assert_eq!(
        failed, 0,
        "failed requests during the rolling upgrade ({ok} ok)"
    );
    assert!(ok > 0, "the load generator sent requests");

    // A request without the cookie, and with a forged or missing CSRF token, changes nothing.
    let start = "/ui/api/arm/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web/osRollingUpgrade?api-version=2024-11-01";
    let forged = format!("{}x", &csrf[..csrf.len() - 1]);
    for (what, headers, want) in [
        ("no cookie", vec![("X-CSRF-Token", csrf.as_str())], 401),
        (
            "forged CSRF token",
            vec![
                ("Cookie", cookie.as_str()),
                ("X-CSRF-Token", forged.as_str()),
            ],
            403,
        ),
        ("no CSRF token", vec![("Cookie", cookie.as_str())], 403),
    ] {
        let (code, _, body) = raw(h.api, "POST", start, &headers, "{}");
        assert_eq!(code, want, "{what}: {body}");
    }
    // The cookie is no credential for the bearer API.
    let (code, _, _) = raw(
        h.api,
        "POST",
        start.trim_start_matches("/ui/api/arm"),
        &[("Cookie", cookie.as_str())],
        "{}",
    );
    assert_eq!(code, 401, "the ARM API took the session cookie");
    let latest = h.json(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        "rg",
        "-n",
        "web",
    ]);
    assert_eq!(
        latest["properties"]["runningStatus"]["code"], "Completed",
        "a refused request started a rollout: {latest}"
    );
    // With the session and its token the same request reaches the API (nothing stale: Azure
    // answers a start with nothing to do like this too).
    let (code, _, body) = raw(
        h.api,
        "GET",
        "/ui/api/view?view=vmss&rg=rg&name=web",
        &[("Cookie", cookie.as_str())],
        "",
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instances"].as_array().map(Vec::len), Some(2));

    // A pipeline run: open it and watch its log lines arrive.
    h.ok(&["repo", "create", "dashci"]);
    let token = std::fs::read_to_string(home.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let work = home.join("work-dashci");
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q", "-b", "main"]).0);
    std::fs::write(work.join("azure-pipelines.yml"), PIPELINE).unwrap();
    assert!(git(&work, &["add", "."]).0);
    assert!(git(&work, &["commit", "-q", "-m", "slow log"]).0);
    let url = format!("http://x:{token}@{}/scaleset/git/dashci.git", h.api);
    let (ok, out) = git(&work, &["push", &url, "main"]);
    assert!(ok, "git push failed: {out}");
    let run = queued_run(&out);
    b.goto(&format!("http://{}/#/run/{run}", h.api));
    let lines = |b: &Browser| {
        b.js("return [...document.querySelectorAll('#log .line')].map(l => l.textContent);")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let mut counts = BTreeSet::new();
    b.wait("the run's log to complete", Duration::from_secs(180), |b| {
        let n = lines(b)
            .iter()
            .filter(|l| l.as_str().is_some_and(|s| s.contains("dash-line")))
            .count();
        counts.insert(n);
        (b.text("#log-state").as_deref() == Some("complete")).then_some(())
    });
    let all = lines(&b);
    let text: String = all.iter().filter_map(Value::as_str).collect();
    for i in 1..=8 {
        assert!(
            text.contains(&format!("dash-line {i}\n")),
            "line {i} missing:\n{text}"
        );
    }
    assert!(text.contains("dash-done"), "{text}");
    assert!(
        counts.iter().filter(|n| **n > 0 && **n < 8).count() >= 2,
        "the log lines arrived while the page was open, not all at once: {counts:?}"
    );
    b.wait("the run's steps", Duration::from_secs(20), |b| {
        b.text("#tree").filter(|t| {
            t.contains("Count slowly") && t.contains("Finish") && t.contains("Succeeded")
        })
    });
    b.screenshot(&shots.join("dashboard-run.png"));
    b.goto(&format!("http://{}/#/images", h.api));
    b.wait("the images", Duration::from_secs(20), |b| {
        b.text("#images")
            .filter(|t| t.contains("140") && t.contains("141") && t.contains("rg/web"))
    });
    b.screenshot(&shots.join("dashboard-images.png"));
    drop(b);
    drop(driver);
    h.kill_serve();
}
