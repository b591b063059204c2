//! The seed's own Python stack, for real: `scaleset up examples/flask_uwsgi` pushes the Flask
//! example to its hosted repository, whose CI runs the app's tests and publishes the folder as
//! `drop`, and whose release bakes it (NGINX, uWSGI compiled from PyPI, the app) into the image
//! named by the build id and runs the guide's `az vmss update`. Then: the three pages through the
//! load balancer from every instance and from each instance's own address, byte for byte; uWSGI's
//! master and its 10 workers in every instance; a developer's `git push` of a page change rolled
//! out under load with 0 failed requests; and a push whose test fails: a failed CI run naming the
//! test, no release, nothing deployed.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const RG: &str = "vmssdevops2-rg";
const VMSS: &str = "vmssdevops2";

/// A page exactly as the example (and the Rust port) renders it.
fn page(title: &str, location: &str, links: &[(&str, &str)], vm: &str, image: &str) -> String {
    let mut html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n</head>\n<body>\n<p>Sample app to demo Azure DevOps for VMSS. You are currently on {location}.</p>\n"
    );
    for (href, text) in links {
        html.push_str(&format!("<p><a href=\"{href}\">{text}</a></p>\n"));
    }
    html.push_str(&format!("<footer>Served by instance <span id=\"instance\">{vm}</span> from image <span id=\"image\">{image}</span></footer>\n</body>\n</html>\n"));
    html
}

/// The three pages (path, expected body) as instance `vm` of image `image` serves them.
fn pages(home: &str, vm: &str, image: &str) -> [(&'static str, String); 3] {
    [
        (
            "/",
            page(
                "Home",
                home,
                &[
                    ("/page1", "Navigate to page1"),
                    ("/page2", "Navigate to Page2"),
                ],
                vm,
                image,
            ),
        ),
        (
            "/page1",
            page(
                "Page1",
                "Page1",
                &[("/", "Navigate to Home"), ("/page2", "Navigate to Page2")],
                vm,
                image,
            ),
        ),
        (
            "/page2",
            page(
                "Page2",
                "Page2",
                &[("/", "Navigate to Home"), ("/page1", "Navigate to Page1")],
                vm,
                image,
            ),
        ),
    ]
}

/// The instance named in a page's footer.
fn served_by(body: &str) -> String {
    body.split("<span id=\"instance\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap_or_default()
        .to_string()
}

/// (VM name, private IP, image) of each instance.
fn instances(h: &Harness) -> Vec<(String, String, String)> {
    let vms = h.json(&["vmss", "list-instances", "-g", RG, "-n", VMSS, "-o", "json"]);
    vms.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let tag = |k: &str| v["tags"][k].as_str().unwrap_or_default().to_string();
            (
                v["name"].as_str().unwrap().to_string(),
                tag("scaleset.privateIPAddress"),
                tag("scaleset.image"),
            )
        })
        .collect()
}

/// Every page through the load balancer (with the `Host` a browser of the frontend sends) until
/// each instance has served each page; every body is exactly the expected one.
fn check_pages_through_lb(h: &Harness, frontend: SocketAddr, home: &str, image: &str) {
    let host = frontend.to_string();
    let vms = instances(h);
    let want: BTreeSet<String> = vms.iter().map(|v| v.0.clone()).collect();
    for vm in &vms {
        assert_eq!(vm.2, image, "{vm:?}");
    }
    for (path, _) in pages(home, "", image) {
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let (status, body) = get_host(frontend, path, &host);
            assert_eq!(status, 200, "{path}: {body}");
            let vm = served_by(&body);
            let expected = pages(home, &vm, image)
                .into_iter()
                .find(|p| p.0 == path)
                .unwrap()
                .1;
            assert_eq!(body, expected, "{path} from {vm}");
            seen.insert(vm);
            if seen == want {
                break;
            }
        }
        assert_eq!(seen, want, "{path}: every instance answers through the LB");
    }
    // Each instance at its own address, as the LB's probe reaches it (Host: its address).
    for (vm, ip, _) in &vms {
        let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
        for (path, expected) in pages(home, vm, image) {
            let (status, body) = get_host(addr, path, &addr.to_string());
            assert_eq!((status, body), (200, expected), "{path} at {vm} ({ip})");
        }
    }
}

/// uWSGI's master and its 10 workers (`/usr/local/bin/uwsgi --ini .../app.ini`, the binary pip
/// compiled in the bake) in each running machine's cgroup, the workers children of the master;
/// and nothing else serving Python.
fn check_uwsgi(h: &Harness) {
    let machines = runtime::NspawnMachines::new(runtime::RuntimeConfig {
        state_dir: h.home.join("machines"),
        prefix: h.prefix.into(),
    })
    .unwrap();
    let running = h.machine_pids();
    assert!(!running.is_empty());
    for (name, _) in running {
        let procs: Vec<(i32, i32, String, String)> = machines
            .cgroup(&name)
            .members()
            .into_iter()
            .filter_map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let ppid = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
                let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                Some((pid, ppid, cmdline.trim().to_string(), exe))
            })
            .collect();
        let uwsgi: Vec<_> = procs
            .iter()
            .filter(|p| p.2 == "/usr/local/bin/uwsgi --ini /var/www/html/my_app/app.ini")
            .collect();
        assert_eq!(
            uwsgi.len(),
            11,
            "{name}: uWSGI master + 10 workers: {procs:#?}"
        );
        let pids: BTreeSet<i32> = uwsgi.iter().map(|p| p.0).collect();
        let masters: Vec<_> = uwsgi.iter().filter(|p| !pids.contains(&p.1)).collect();
        assert_eq!(masters.len(), 1, "{name}: one master: {uwsgi:#?}");
        let master = masters[0].0;
        assert_eq!(
            uwsgi.iter().filter(|p| p.1 == master).count(),
            10,
            "{name}: 10 workers of the master: {uwsgi:#?}"
        );
        for p in &uwsgi {
            assert!(p.3.ends_with("/usr/local/bin/uwsgi"), "{name}: {p:?}");
        }
        assert!(
            procs.iter().any(|p| p.2.starts_with("nginx: master")),
            "{name}: NGINX in front: {procs:#?}"
        );
        assert!(
            !procs.iter().any(|p| p.3.contains("python")),
            "{name}: no other Python server: {procs:#?}"
        );
    }
}

/// Why the Flask CI job cannot make its virtual environment: it runs as the runner user with
/// Debian's python3.
fn missing_venv() -> Option<String> {
    let dir = std::env::temp_dir().join(format!("scaleset-venv-probe-{}", std::process::id()));
    let ok = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    (!ok).then(|| {
        "/usr/bin/python3 -m venv does not work (scripts/install-deps.sh installs python3-venv)"
            .to_string()
    })
}

/// Clones the hosted repository, applies `edit` to each file, commits and pushes; the queued
/// CI run.
fn push_change(h: &Harness, dir: &str, msg: &str, edits: &[(&str, &str, &str)]) -> u64 {
    let token = std::fs::read_to_string(h.home.join("token")).unwrap();
    let work = h.home.join(dir);
    std::fs::create_dir_all(&work).unwrap();
    let url = format!(
        "http://dev:{}@{}/scaleset/git/flask_uwsgi.git",
        token.trim(),
        h.api
    );
    let (ok, out) = git(&work, &["clone", "-q", &url, "app"]);
    assert!(ok, "{out}");
    let app = work.join("app");
    for (file, from, to) in edits {
        let p = app.join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} has {from:?}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    }
    let (ok, out) = git(&app, &["commit", "-q", "-am", msg]);
    assert!(ok, "{out}");
    let (ok, pushed) = git(&app, &["push", "origin", "main"]);
    assert!(ok, "{pushed}");
    queued_run(&pushed)
}

/// How long step `step` of run `id` took, from the timestamps of its log's section lines.
fn step_secs(h: &Harness, id: u64, step: &str) -> f64 {
    let log = h.ok(&["run", "logs", &id.to_string()]);
    let at = |marker: String| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(&marker))?;
        // 2026-12-03T07:15:41.979Z: seconds of the day are enough for a step.
        let t = line.split_whitespace().next()?.split('T').nth(1)?;
        let t = t.trim_end_matches('Z');
        let mut parts = t.split(':').map(|x| x.parse::<f64>().unwrap_or(0.0));
        Some(parts.next()? * 3600.0 + parts.next()? * 60.0 + parts.next()?)
    };
    let start = at(format!("##[section]Starting: {step}"));
    let end = at(format!("##[section]Finishing: {step} ("));
    match (start, end) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    }
}

#[test]
fn flask_uwsgi_example_through_the_pipelines() {
    let missing = skip_reason()
        .or_else(|| testkit::missing_user("scaleset-runner"))
        .or_else(missing_venv);
    if !testkit::require(missing) {
        return;
    }
    let t0 = Instant::now();
    let h = Harness::new("flask", "10.213.208.0/24", "fl", vec![]);
    let frontend: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/flask_uwsgi");
    let up = h.up(&example, 2, frontend, Duration::from_secs(1800));
    let up_log = h.up_log();
    eprintln!(
        "flask: `scaleset up` served after {:.0}s",
        t0.elapsed().as_secs_f64()
    );

    // The first deploy went through the example's own pipelines; CI ran the tests first.
    let all = h.runs();
    let ci1 = all
        .iter()
        .find(|r| r["pipeline"] == "flask_uwsgi")
        .unwrap_or_else(|| panic!("no CI run: {all:#?}\n{up_log}"));
    assert_eq!(ci1["state"], "succeeded");
    let ci1 = ci1["id"].as_u64().unwrap();
    let log1 = h.ok(&["run", "logs", &ci1.to_string()]);
    assert!(log1.contains("Ran 6 tests"), "{log1}");
    let rel1 = h.release_of(ci1);
    assert_eq!(rel1["pipeline"], "flask_uwsgi-release-pipeline");
    assert_eq!(rel1["state"], "succeeded");
    let bake = "Build immutable machine image";
    let rel1_id = rel1["id"].as_u64().unwrap();
    eprintln!(
        "flask: CI tests {:.1}s, bake (apt, uWSGI compiled by pip) {:.1}s",
        step_secs(&h, ci1, "Run the app's tests"),
        step_secs(&h, rel1_id, bake)
    );
    let image1 = ci1.to_string();
    check_pages_through_lb(&h, frontend, "the Home page", &image1);
    // A Host the site does not list gets Debian's default site, left in place.
    let (status, body) = get_host(frontend, "/", "lb");
    assert_eq!(status, 200);
    assert!(body.contains("Welcome to nginx!"), "{body}");
    check_uwsgi(&h);

    // A developer's page change (and the test that checks it), pushed with git, rolled out
    // under load.
    let load = Load::start_host(frontend, 8, &frontend.to_string());
    let t = Instant::now();
    let from = "\"the Home page\"";
    let to = "\"the Home page, pushed with git\"";
    let ci2 = push_change(
        &h,
        "dev",
        "Home page wording",
        &[("app.py", from, to), ("tests/test_app.py", from, to)],
    );
    let rel2 = h.release_of(ci2);
    assert_eq!(
        rel2["state"],
        "succeeded",
        "{}",
        h.ok(&["run", "logs", &rel2["id"].to_string()])
    );
    let latest = h.json(&[
        "vmss",
        "rolling-upgrade",
        "get-latest",
        "-g",
        RG,
        "-n",
        VMSS,
    ]);
    assert_eq!(latest["properties"]["runningStatus"]["code"], "Completed");
    assert_eq!(latest["properties"]["receipt"]["failedRequests"], 0);
    assert_eq!(latest["properties"]["receipt"]["non2xxResponses"], 0);
    let (ok, failed) = load.finish();
    assert!(ok > 0);
    assert_eq!(failed, 0, "requests failed during the rollout");
    eprintln!(
        "flask: git push to every instance on image {ci2}: {:.0}s (bake {:.1}s), {ok} requests, 0 failed",
        t.elapsed().as_secs_f64(),
        step_secs(&h, rel2["id"].as_u64().unwrap(), bake)
    );
    let image2 = ci2.to_string();
    check_pages_through_lb(&h, frontend, "the Home page, pushed with git", &image2);
    check_uwsgi(&h);

    // A push whose test fails: the CI run fails naming the test, publishes nothing, and no
    // release runs; the instances keep serving the last good image.
    let ci3 = push_change(
        &h,
        "dev-broken",
        "Page2 links to page1 with other words",
        &[("app.py", "\"Navigate to Page1\"", "\"Go to Page1\"")],
    );
    let run3 = wait_run(&h, ci3);
    assert_eq!(run3["state"], "failed", "{run3:#}");
    assert!(
        run3["artifacts"].as_array().is_none_or(Vec::is_empty),
        "{run3:#}"
    );
    let log3 = h.ok(&["run", "logs", &ci3.to_string()]);
    assert!(
        log3.contains("FAIL: test_page2 (tests.test_app.PagesTest.test_page2)"),
        "{log3}"
    );
    assert!(log3.contains("FAILED (failures=1)"), "{log3}");
    assert!(log3.contains("Skipping: Publish the drop"), "{log3}");
    std::thread::sleep(Duration::from_secs(3));
    let all = h.runs();
    assert!(
        !all.iter().any(|r| r["resources"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["run_id"] == ci3))),
        "a release ran for the failed CI run {ci3}: {all:#?}"
    );
    assert_eq!(all.iter().map(|r| r["id"].as_u64()).max(), Some(Some(ci3)));
    check_pages_through_lb(&h, frontend, "the Home page, pushed with git", &image2);
    drop(up);
    eprintln!("flask: whole test {:.0}s", t0.elapsed().as_secs_f64());
}
