//! `scaleset up` converges from any state and `scaleset down [--purge]` undoes it, for real:
//! the example through its pipelines on one instance; then, while `up` serves, what is
//! refusable is refused with a clear message, and everything else `up` owns is deleted at once
//! (scale set, load balancer, group, every image, the hosted repository with its pipelines)
//! and up's clone is damaged; `down` stops that `up`; a second `up` (detached) repairs all of
//! it and serves. `down`
//! stops the instances and the load balancer (no machine process, mount or netns left);
//! `down --purge` leaves no mount under the home, no netns, no bridge and no process, and a
//! daemon started afterwards has none of up's resources; `down` refuses under `serve`.
mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const RG: &str = "vmssdevops2-rg";
const LB: &str = "vmssdevops2-lb";
const VMSS: &str = "vmssdevops2";

fn refused(h: &Harness, args: &[&str], code: &str) -> String {
    let (ok, out, err) = h.run(args);
    assert!(!ok, "scaleset {args:?} was not refused: {out}");
    assert!(err.contains(code), "scaleset {args:?}: {err}");
    err
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["name"].as_str().map(str::to_string))
        .collect()
}

/// Processes whose command line names `needle` (the home: nspawn's `-D`, lb-serve's config).
fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(needle)
                .then(|| format!("{}: {c}", e.file_name().to_string_lossy()))
        })
        .collect()
}

fn mounts_under(home: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home = home.to_string_lossy().into_owned();
    info.lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&home)))
        .map(str::to_string)
        .collect()
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn serves(frontend: SocketAddr) {
    let (status, body) = get(frontend, "/");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("You are currently on the Home page."),
        "{body}"
    );
}

/// What an operator opens on the deployment `up` made: the dashboard's scale set view (signed in
/// with a fresh one-time link; the browser test covers the page itself), the instance's journal
/// and a command run inside it.
fn operator_views_of_what_up_made(h: &Harness) {
    let url = h.ok(&["dashboard", "url"]);
    let link = url.trim().trim_start_matches(&format!("http://{}", h.api));
    let (code, head, _) = webdriver::raw(h.api, "GET", link, &[], "");
    assert_eq!(code, 303, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {head}"))
        .to_string();
    let view = format!("/ui/api/view?view=vmss&rg={RG}&name={VMSS}");
    let (code, _, body) = webdriver::raw(h.api, "GET", &view, &[("Cookie", &cookie)], "");
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let rows = v["instances"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["health"], "healthy", "{v}");
    assert_eq!(rows[0]["latestModelApplied"], true, "{v}");
    let id = rows[0]["instanceId"].as_str().unwrap().to_string();
    let target = ["-g", RG, "-n", VMSS, "--instance-id", &id];
    let journal = h.ok(&[&["vmss", "logs"][..], &target, &["--unit", "nginx"]].concat());
    assert!(
        journal
            .lines()
            .any(|l| l.contains("Started") && l.contains("nginx")),
        "{journal}"
    );
    let run = h.json(
        &[
            &["vmss", "run-command", "invoke"][..],
            &target,
            &[
                "--command-id",
                "RunShellScript",
                "--scripts",
                "systemctl is-active my_app",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        run["value"][0]["code"], "ProvisioningState/succeeded",
        "{run}"
    );
    assert!(
        run["value"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("[stdout]\nactive\n")),
        "{run}"
    );
}

#[test]
fn up_repairs_what_was_deleted_and_down_purge_leaves_nothing() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let h = daemon_harness("updown", "10.213.190.0/24", "ud");
    let frontend: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/my_app");
    let example = example.canonicalize().unwrap();

    // Round 1: from nothing.
    let up = h.up(&example, 1, frontend, Duration::from_secs(1200));
    serves(frontend);
    operator_views_of_what_up_made(&h);
    let vmss = h.json(&["vmss", "show", "-g", RG, "-n", VMSS]);
    let image = vmss["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]
        ["id"]
        .as_str()
        .and_then(|id| id.rsplit('/').next())
        .unwrap()
        .to_string();

    // What is in use stays refused, with the reason (and `image delete` needs no -g).
    let err = refused(&h, &["image", "delete", "-n", &image], "ImageInUse");
    assert!(err.contains(VMSS), "{err}");
    refused(
        &h,
        &["network", "lb", "delete", "-g", RG, "-n", LB],
        "LoadBalancerInUseByVirtualMachineScaleSet",
    );

    // Everything else up owns, gone at once (each is independent of the others once the
    // scale set is gone), and up's clone damaged.
    h.ok(&["vmss", "delete", "-g", RG, "-n", VMSS]);
    h.ok(&["network", "lb", "delete", "-g", RG, "-n", LB]);
    h.ok(&["group", "delete", "-n", RG]);
    let images = names(&h.json(&["image", "list"]));
    assert!(
        images.contains(&image) && images.contains(&"debian-12".to_string()),
        "{images:?}"
    );
    for i in &images {
        h.ok(&["image", "delete", "-n", i]);
    }
    assert_eq!(names(&h.json(&["image", "list"])), Vec::<String>::new());
    h.ok(&["repo", "delete", "my_app"]);
    assert_eq!(names(&h.json(&["pipeline", "list"])), Vec::<String>::new());
    let clone = h.home.join("up/my_app/src/.git");
    assert!(clone.is_dir(), "up's clone is at {}", clone.display());
    std::fs::write(clone.join("HEAD"), "not a ref\n").unwrap();
    // `down` while `up` serves stops `up` itself (as Ctrl-C would) and its daemon.
    let down = h.run(&["down"]);
    assert!(down.0, "{}", down.2);
    assert!(down.2.contains("stopping `scaleset up`"), "{}", down.2);
    assert!(
        h.run(&["group", "list"]).2.contains("cannot reach"),
        "up's daemon still answers"
    );
    drop(up);

    // Round 2: `up --detach` repairs all of it and serves, then leaves the data plane running.
    let log2 = h.home.join("up2.log");
    let st = h
        .cmd()
        .args(["up", "--detach", "--no-live", "--capacity", "1"])
        .arg("--frontend")
        .arg(frontend.to_string())
        .arg(&example)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log2).unwrap())
        .status()
        .unwrap();
    let up2 = std::fs::read_to_string(&log2).unwrap();
    assert!(st.success(), "{up2}");
    for step in [
        "creating the resource group",
        "load balancer",
        "preparing the base image",
        "creating vmssdevops2",
        "creating the hosted repository `my_app`",
        "unusable",
        "CI: run",
        "release: run",
    ] {
        assert!(up2.contains(step), "no `{step}` in:\n{up2}");
    }
    serves(frontend);

    // `down`: the instances and the load balancer stop; a stopped machine keeps no mount,
    // netns or process.
    let machines: Vec<String> = h.machine_pids().into_iter().map(|(n, _)| n).collect();
    assert_eq!(machines.len(), 1, "{machines:?}");
    let rt = runtime::NspawnMachines::new(runtime::RuntimeConfig {
        state_dir: h.home.join("machines"),
        prefix: h.prefix.into(),
    })
    .unwrap();
    let netns: Vec<String> = machines.iter().map(|m| rt.netns_name(m)).collect();
    h.ok(&["down"]);
    assert!(
        std::net::TcpStream::connect(frontend).is_err(),
        "the LB still listens"
    );
    for m in &machines {
        assert_eq!(h.machine_processes(m), vec![], "machine {m} still runs");
        assert!(
            !sys::mounts::is_mountpoint(&rt.root_path(m)),
            "{m} still mounted"
        );
    }
    let listed = ip(&["netns", "list"]);
    for n in &netns {
        assert!(!listed.contains(n.as_str()), "netns {n} left: {listed}");
    }
    let home = h.home.to_string_lossy().into_owned();
    assert_eq!(processes_mentioning(&home), Vec::<String>::new());

    // `down --purge`: the machine as it was found.
    let bridge = serde_json::from_str::<Value>(
        &std::fs::read_to_string(h.home.join("network.json")).unwrap(),
    )
    .unwrap()["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ip(&["link", "show"]).contains(&bridge));
    let purged = h.ok(&["down", "--purge"]);
    assert_eq!(mounts_under(&h.home), Vec::<String>::new());
    let listed = ip(&["netns", "list"]);
    for n in &netns {
        assert!(!listed.contains(n.as_str()), "netns {n} left: {listed}");
    }
    assert!(
        !ip(&["link", "show"]).contains(&bridge),
        "bridge {bridge} left"
    );
    assert_eq!(processes_mentioning(&home), Vec::<String>::new());
    for m in &machines {
        assert_eq!(h.machine_processes(m), vec![]);
        assert!(
            !h.home.join("machines").join(m).exists(),
            "{m} left: {purged}"
        );
    }
    assert!(!h.home.join("up").exists());
    let repos: Vec<_> = std::fs::read_dir(h.home.join("repos"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(repos, Vec::<std::ffi::OsString>::new());

    // What the daemon sees afterwards: none of up's resources; and `down` refuses to act
    // under a `scaleset serve` (it would restart what `down` stops).
    let mut h = h;
    h.start_serve();
    assert!(!names(&h.json(&["group", "list"])).contains(&RG.to_string()));
    assert_eq!(names(&h.json(&["image", "list"])), Vec::<String>::new());
    assert_eq!(names(&h.json(&["repo", "list"])), Vec::<String>::new());
    refused(&h, &["down"], "stop it first");
    h.kill_serve();
}
