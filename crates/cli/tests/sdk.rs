//! Microsoft's own Python SDK (azure-mgmt-compute, azure-mgmt-network, pinned in
//! tests/sdk/requirements.txt) against the real daemon: `tests/sdk/test_sdk.py` creates a load
//! balancer and a scale set, reads it, updates its image, lists its instances, runs a rolling
//! upgrade, reads its status and deletes everything, waiting on our long-running operations the
//! way the SDK waits on Azure's. The venv is built once under /var/tmp/scaleset-sdk-venv (PyPI
//! is needed the first time) and rebuilt when the requirements change.
mod common;
#[path = "../../api/tests/support/swagger.rs"]
mod swagger;

use common::{free_port, Harness, EXE};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv_dir() -> PathBuf {
    std::env::var_os("SCALESET_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-sdk-venv"))
}

/// The venv with the pinned SDK, built under a lock (tests and engineers share it).
fn ensure_venv(requirements: &Path) -> PathBuf {
    let dir = venv_dir();
    let want = std::fs::read_to_string(requirements).unwrap();
    let lock = std::fs::File::create(format!("{}.lock", dir.display())).unwrap();
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let marker = dir.join("scaleset-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let run = |c: &mut Command| {
        let out = c.output().expect("run python3");
        assert!(
            out.status.success(),
            "{c:?} failed (Debian needs python3-venv: scripts/install-deps.sh):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir));
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements));
    std::fs::File::create(&marker)
        .unwrap()
        .write_all(want.as_bytes())
        .unwrap();
    dir
}

#[test]
fn microsofts_python_sdk_drives_the_api() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!(
            "\n*** SKIPPED microsofts_python_sdk_drives_the_api: python3 is not installed \
             (scripts/install-deps.sh installs python3 and python3-venv; CI has them) ***\n"
        );
        return;
    }
    if let Some(why) = common::skip_reason() {
        eprintln!("SKIPPED microsofts_python_sdk_drives_the_api: the daemon cannot run: {why}");
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let venv = ensure_venv(&here.join("requirements.txt"));
    let mut h = Harness::new("sdk", "10.213.206.0/24", "sdk", vec![]);
    h.start_serve();
    let exchanges = h.home.join("exchanges.json");
    let out = Command::new(venv.join("bin/python"))
        .arg(here.join("test_sdk.py"))
        .env("SCALESET_ENDPOINT", format!("http://{}", h.api))
        .env("SCALESET_HOME", &h.home)
        .env("SCALESET_EXE", EXE)
        .env("SCALESET_BASE_CACHE", common::base_cache())
        .env("LB_PORT", free_port().to_string())
        .env("SDK_EXCHANGES", &exchanges)
        .output()
        .expect("run the SDK test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success() && stdout.contains("SDK OK"),
        "the SDK test failed; daemon log:\n{}",
        std::fs::read_to_string(h.home.join("serve.log")).unwrap_or_default()
    );
    check_against_specs(&exchanges, &h.home.join("export"));
}

/// What the SDK sent and what the daemon answered, against Microsoft's specs (as the API's
/// contract tests do for their own traffic).
fn check_against_specs(exchanges: &Path, export: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/specs/azure-rest-api/specification");
    if !root.is_dir() {
        eprintln!(
            "SKIPPED the spec check of the SDK's traffic: {} is not here",
            root.display()
        );
        return;
    }
    let compute = "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01";
    let files = [
        format!("{compute}/virtualMachineScaleSet.json"),
        format!("{compute}/image.json"),
        "network/resource-manager/Microsoft.Network/stable/2024-05-01/loadBalancer.json".into(),
    ];
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let specs = swagger::Specs::new(root);
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(exchanges).unwrap()).unwrap();
    let mut violations = Vec::new();
    for x in &all {
        let url = x["url"].as_str().unwrap();
        let path = &url[url.find("/subscriptions").unwrap_or(0)..];
        let found = specs.check_exchange(
            &files,
            x["method"].as_str().unwrap(),
            path,
            x.get("request").filter(|r| !r.is_null()),
            x["status"].as_u64().unwrap() as u16,
            &x["response"],
            &swagger::scaleset_extension,
        );
        // A streamed first LRO response was not read by the recorder: its request counts.
        let streamed = x["streamed"] == true;
        violations.extend(
            found
                .into_iter()
                .filter(|v| !streamed || v.contains(") request ")),
        );
    }
    assert!(all.len() > 20, "only {} exchanges recorded", all.len());
    // `scaleset export azure` of the SDK's resource group, written while it existed.
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("azuredeploy.json")).unwrap())
            .unwrap();
    violations.extend(specs.check_arm_template(&t));
    let vmss = t["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Microsoft.Compute/virtualMachineScaleSets")
        .expect("the scale set is exported");
    assert_eq!(vmss["name"], "sdk");
    assert_eq!(
        vmss["properties"]["upgradePolicy"]["mode"], "Rolling",
        "{vmss}"
    );
    // The example app, found from the repository root where the pipelines run.
    let ci = std::fs::read_to_string(export.join("azure-pipelines.yml")).unwrap();
    for want in [
        "--manifest-path 'examples/my_app/Cargo.toml'",
        "cp -r 'examples/my_app/setupscript.sh'",
        "cp -r 'examples/my_app/nginx'",
        "/release/my_app\"",
    ] {
        assert!(
            ci.contains(want),
            "{want} not in azure-pipelines.yml:\n{ci}"
        );
    }
    let release = std::fs::read_to_string(export.join("release-pipeline.yml")).unwrap();
    assert!(
        release.contains("resourceGroup: sdk-rg") && release.contains("source: my-app"),
        "{release}"
    );
    assert!(
        violations.is_empty(),
        "{} violations in the SDK's traffic:\n{}",
        violations.len(),
        violations.join("\n")
    );
}
