//! Microsoft's own Python SDK (azure-mgmt-compute, azure-mgmt-network, azure-mgmt-resource,
//! pinned in tests/sdk/requirements.txt) against the real daemon: `tests/sdk/test_sdk.py` creates
//! resource groups and checks their existence, creates a load balancer and reads its child
//! resources, creates a scale set with one real instance (a machine booted from an image baked
//! on the shared base), calls every per-instance action on it and checks the instance's state
//! after each, deletes it, updates the scale set's image, runs a rolling upgrade, reads its
//! status, is refused an api-version and deletes everything, waiting on our long-running
//! operations the way the SDK waits on Azure's. The venv is built once under
//! /var/tmp/scaleset-sdk-venv (PyPI is needed the first time) and rebuilt when the requirements
//! change. The SDK's traffic, our own CLI's traffic (through a recording proxy) and `scaleset
//! export azure`'s template are checked against Microsoft's specs, and that template is what
//! `scaleset --provider azure deploy` sends (against a replay of ARM: no Azure here).
mod common;
#[path = "../../azure/tests/support/replay.rs"]
mod replay;
#[path = "../../api/tests/support/swagger.rs"]
mod swagger;

use common::{free_port, Harness, EXE};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

fn venv_dir() -> PathBuf {
    std::env::var_os("SCALESET_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-sdk-venv"))
}

/// The venv with the pinned SDK, built under a lock (tests and engineers share it); `Err` says
/// why it could not be built (no python3-venv, or PyPI out of reach the first time).
fn ensure_venv(requirements: &Path) -> Result<PathBuf, String> {
    let dir = venv_dir();
    // The venv is tied to the interpreter that made it, so its version is part of the marker.
    let python = Command::new("python3").arg("--version").output().unwrap();
    let want = format!(
        "{}{}",
        String::from_utf8_lossy(&python.stdout),
        std::fs::read_to_string(requirements).unwrap()
    );
    let lock = std::fs::File::create(format!("{}.lock", dir.display())).unwrap();
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let marker = dir.join("scaleset-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(want.as_str()) {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let run = |c: &mut Command| -> Result<(), String> {
        let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{c:?} failed (Debian needs python3-venv: scripts/install-deps.sh; pip needs PyPI):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements))?;
    std::fs::File::create(&marker)
        .unwrap()
        .write_all(want.as_bytes())
        .unwrap();
    Ok(dir)
}

#[test]
fn microsofts_python_sdk_drives_the_api() {
    // python3 with venv and ensurepip: Debian's python3-venv (scripts/install-deps.sh).
    let python = testkit::missing_python_modules(&["venv", "ensurepip"]);
    if !testkit::require(python.or_else(common::skip_reason)) {
        return;
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    // Building the venv needs PyPI the first time: without it the SDK cannot be had.
    let venv = match ensure_venv(&here.join("requirements.txt")) {
        Ok(venv) => venv,
        Err(why) => {
            testkit::require(Some(format!("the SDK venv cannot be built: {why}")));
            return;
        }
    };
    let mut h = Harness::new("sdk", "10.213.209.0/24", "sdk", vec![]);
    // The instance's image: the shared Debian base, booted as it is (nothing listens on the
    // probe's port; health plays no part in what the instance test checks).
    let pkg = h.home.join("boot-pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("setupscript.sh"), "#!/bin/sh\ntrue\n").unwrap();
    h.bake("sdk-boot", &pkg);
    h.start_serve();
    let exchanges = h.home.join("exchanges.json");
    let log = h.home.join("sdk.log");
    let mut child = Command::new(venv.join("bin/python"))
        .arg(here.join("test_sdk.py"))
        .env("SCALESET_ENDPOINT", format!("http://{}", h.api))
        .env("SCALESET_HOME", &h.home)
        .env("SCALESET_EXE", EXE)
        .env("SCALESET_BASE_CACHE", common::base_cache())
        .env("LB_PORT", free_port().to_string())
        .env("BOOT_IMAGE", "sdk-boot")
        .env("SDK_EXCHANGES", &exchanges)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(h.home.join("sdk.err")).unwrap())
        .spawn()
        .expect("run the SDK test");
    // An LRO that never completes would make the SDK poll forever: bound the whole run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(480);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = std::fs::read_to_string(h.home.join("sdk.err")).unwrap_or_default();
    eprintln!("{stdout}{stderr}");
    assert!(status.is_some(), "the SDK test did not finish within 480 s");
    assert!(
        status.is_some_and(|s| s.success()) && stdout.contains("SDK OK"),
        "the SDK test failed; daemon log:\n{}",
        std::fs::read_to_string(h.home.join("serve.log")).unwrap_or_default()
    );
    check_exchanges(&exchanges, 20);
    check_export(&h.home.join("export"));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(exported_template_deploys(&h.home.join("export")));
}

/// README's "Moving to Azure" steps 2 and 4 with the exported template: `deploy` with
/// `deployScaleSet=false`, then with the image and the SSH key. Each sends the template as
/// written, with exactly those parameters (all of them declared by it), in a deployment body
/// that validates against Microsoft's deployments spec.
async fn exported_template_deploys(dir: &Path) {
    let r = replay::Replay::start().await;
    let ex = "resources/resource-manager/Microsoft.Resources/deployments/stable/2025-04-01/examples/PutDeploymentResourceGroup.json";
    let ops = json!({"value": []});
    let done = replay::response(ex, "200");
    let created = replay::response(ex, "201");
    let template = dir.join("azuredeploy.json").display().to_string();
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0 me@host";
    let image = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/1";
    let runs: [(Vec<String>, Value); 2] = [
        (
            vec!["deployScaleSet=false".into()],
            json!({"deployScaleSet": {"value": false}}),
        ),
        (
            vec![
                format!("imageId={image}"),
                format!("adminSshPublicKey={key}"),
            ],
            json!({"imageId": {"value": image}, "adminSshPublicKey": {"value": key}}),
        ),
    ];
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&template).unwrap()).unwrap();
    let specs =
        swagger::Specs::new(testkit::shared_dir().join("specs/azure-rest-api/specification"));
    let files = ["resources/resource-manager/Microsoft.Resources/deployments/stable/2025-04-01/deployments.json"];
    for (i, (params, want)) in runs.iter().enumerate() {
        for (status, body) in [(201, &created), (200, &ops), (200, &done), (200, &ops)] {
            r.push(status, &[], Some(body));
        }
        let mut args = vec![
            "--provider",
            "azure",
            "deploy",
            "-g",
            "rg",
            "--template",
            &template,
        ];
        for p in params {
            args.extend(["--parameters", p.as_str()]);
        }
        let out = tokio::process::Command::new(EXE)
            .args(&args)
            .env(
                "AZURE_SUBSCRIPTION_ID",
                "00000000-0000-0000-0000-0000000000bb",
            )
            .env("SCALESET_AZURE_ENDPOINT", &r.base)
            .env("AZURE_ACCESS_TOKEN", "tok")
            .env("SCALESET_AZURE_POLL_MS", "10")
            .env("SCALESET_HOME", "/nonexistent/scaleset-home")
            .env_remove("SCALESET_ENDPOINT")
            .env_remove("SCALESET_TOKEN")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "deploy {params:?}: {err}");
        let put = r.seen()[4 * i].clone();
        assert_eq!(put.method, "PUT");
        let body = put.body.clone().unwrap();
        assert_eq!(body["properties"]["template"], written);
        assert_eq!(body["properties"]["parameters"], *want);
        for name in want.as_object().unwrap().keys() {
            assert!(
                written["parameters"].get(name).is_some(),
                "{name} is declared"
            );
        }
        let path = put.path.split('?').next().unwrap().to_string();
        let v = specs.check_exchange(&files, "PUT", &path, Some(&body), 201, &created, &|_| false);
        assert!(v.is_empty(), "{}", v.join("\n"));
    }
    assert!(r.exhausted());
}

/// A recording HTTP/1.1 proxy in front of the daemon: one request per connection (it answers
/// `Connection: close`), every exchange kept as the SDK test's recorder keeps them.
fn recording_proxy(upstream: std::net::SocketAddr) -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Value>>> = Default::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let _ = relay(conn, upstream, &seen);
            });
        }
    });
    (url, log)
}

/// Reads one HTTP message (head + Content-Length body, or to EOF without one).
fn read_message(r: &mut impl BufRead, to_eof: bool) -> std::io::Result<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None if to_eof => {
            r.read_to_end(&mut body)?;
        }
        None => {}
    }
    Ok((head, body))
}

fn relay(
    client: TcpStream,
    upstream: std::net::SocketAddr,
    seen: &Mutex<Vec<Value>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let (head, body) = read_message(&mut reader, false)?;
    let request_line = head.lines().next().unwrap_or_default().to_string();
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut fwd = String::new();
    for l in head.lines() {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            fwd.push_str(l);
            fwd.push_str("\r\n");
        }
    }
    fwd.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(fwd.as_bytes())?;
    up.write_all(&body)?;
    let (rhead, rbody) = read_message(&mut BufReader::new(up), true)?;
    let status: u16 = rhead
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut out = String::new();
    for l in rhead.lines() {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut client = client;
    client.write_all(out.as_bytes())?;
    client.write_all(&rbody)?;
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null);
    seen.lock().unwrap().push(json!({
        "method": method, "url": target, "status": status,
        "request": parse(&body), "response": parse(&rbody),
    }));
    Ok(())
}

/// Our CLI's requests (the bodies the e2e tests send) and the daemon's answers, recorded by a
/// proxy, against Microsoft's specs.
#[test]
fn cli_traffic_matches_the_specs() {
    if !testkit::require(common::skip_reason()) {
        return;
    }
    let mut h = Harness::new("sdk-cli", "10.213.207.0/24", "sdkc", vec![]);
    h.start_serve();
    let (proxy, log) = recording_proxy(h.api);
    // Arguments are split on whitespace (none contains a space).
    let cli = |line: &str| {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = h
            .cmd()
            .env("SCALESET_ENDPOINT", &proxy)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scaleset {line}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    };
    let dir = h.home.join("img");
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("img.tar");
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sys; sys.path.insert(0, {:?}); import scaleset_images; scaleset_images.docker_save({:?}, 'cli-img')",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk").display().to_string(),
            archive.display().to_string()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cli(&format!(
        "image import --source {} -n cli-img",
        archive.display()
    ));
    let port = free_port();
    for line in [
        "group create -n rg".to_string(),
        "network lb create -g rg -n lb --backend-pool-name be".into(),
        "network lb probe create -g rg --lb-name lb -n http --protocol Http --port 80 --path /health --interval 5 --probe-threshold 2".into(),
        format!("network lb rule create -g rg --lb-name lb -n web --protocol Tcp --frontend-port {port} --backend-port 80 --probe-name http --idle-timeout 5 --load-distribution SourceIP"),
        "network lb show -g rg -n lb".into(),
        "network lb probe list -g rg --lb-name lb".into(),
        "vmss create -g rg -n web --image cli-img --instance-count 0 --lb lb --health-probe http --upgrade-policy-mode Rolling --scale-in-policy OldestVM".into(),
        "vmss show -g rg -n web".into(),
        "vmss list -g rg".into(),
        "vmss list-instances -g rg -n web".into(),
        "vmss get-instance-view -g rg -n web".into(),
        "vmss update -g rg -n web --set upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent=50".into(),
        "vmss scale -g rg -n web --new-capacity 0".into(),
        "vmss rolling-upgrade start -g rg -n web".into(),
        "vmss rolling-upgrade get-latest -g rg -n web".into(),
        "vmss delete -g rg -n web".into(),
        "network lb rule delete -g rg --lb-name lb -n web".into(),
        "network lb probe delete -g rg --lb-name lb -n http".into(),
    ] {
        cli(&line);
    }
    let out = h
        .cmd()
        .env("SCALESET_ENDPOINT", &proxy)
        .args([
            "network",
            "lb",
            "probe",
            "delete",
            "-g",
            "rg",
            "--lb-name",
            "lb",
            "-n",
            "http",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("'http' was not found in load balancer 'lb'"),
        "deleting a missing probe: {err}"
    );
    cli("network lb delete -g rg -n lb");
    let all = std::mem::take(&mut *log.lock().unwrap());
    // Probes and rules are written on their own routes, the parent only by `network lb create`.
    let writes: Vec<String> = all
        .iter()
        .filter(|x| x["method"] == "PUT" || x["method"] == "DELETE")
        .filter(|x| x["url"].as_str().unwrap_or("").contains("/loadBalancers/"))
        .map(|x| {
            let url = x["url"].as_str().unwrap_or("");
            let path = url.split('?').next().unwrap_or(url);
            let tail = &path[path.find("/loadBalancers/").unwrap_or(0)..];
            format!(
                "{} {tail} {}",
                x["method"].as_str().unwrap_or(""),
                x["status"]
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            "PUT /loadBalancers/lb 201",
            "PUT /loadBalancers/lb/probes/http 201",
            "PUT /loadBalancers/lb/loadBalancingRules/web 201",
            "DELETE /loadBalancers/lb/loadBalancingRules/web 200",
            "DELETE /loadBalancers/lb/probes/http 200",
            "DELETE /loadBalancers/lb/probes/http 204",
            "DELETE /loadBalancers/lb 200",
        ],
        "{writes:#?}"
    );
    let file = h.home.join("cli-exchanges.json");
    std::fs::write(&file, serde_json::to_string(&all).unwrap()).unwrap();
    check_exchanges(&file, 15);
}

/// Microsoft's specs from the shared folder, or None (a counted skip; under CI a failure).
fn specs() -> Option<swagger::Specs> {
    const SPECS: &str = "specs/azure-rest-api/specification";
    testkit::require(testkit::missing_shared(SPECS))
        .then(|| swagger::Specs::new(testkit::shared_dir().join(SPECS)))
}

/// Recorded exchanges (at least `min`) against the specs of the operations they hit.
fn check_exchanges(file: &Path, min: usize) {
    let Some(specs) = specs() else { return };
    let compute = "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-11-01";
    let files = [
        format!("{compute}/virtualMachineScaleSet.json"),
        format!("{compute}/image.json"),
        "network/resource-manager/Microsoft.Network/stable/2024-05-01/loadBalancer.json".into(),
        "resources/resource-manager/Microsoft.Resources/resources/stable/2025-04-01/resources.json"
            .into(),
    ];
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert!(all.len() >= min, "only {} exchanges recorded", all.len());
    let mut violations = Vec::new();
    for x in &all {
        let url = x["url"].as_str().unwrap();
        let path = &url[url.find("/subscriptions").unwrap_or(0)..];
        let bare = path.split('?').next().unwrap_or(path);
        // A resource's HEAD is `Resources_CheckExistenceById` (`/{resourceId}`, which the
        // validator's templates cannot match): 204 or 404, never a body.
        if x["method"] == "HEAD" && bare.trim_matches('/').split('/').count() > 4 {
            let status = x["status"].as_u64().unwrap();
            if !matches!(status, 204 | 404) || !x["response"].is_null() {
                violations.push(format!("HEAD {bare}: {status} {}", x["response"]));
            }
            continue;
        }
        let (method, request) = (
            x["method"].as_str().unwrap(),
            x.get("request").filter(|r| !r.is_null()),
        );
        let status = x["status"].as_u64().unwrap() as u16;
        // Probe and rule writes on their own path: scaleset's extension (Azure has GET only).
        if let Some(def) = swagger::lb_child_write(method, path) {
            let lb_file = files[2];
            let found = specs.check_lb_child(
                lb_file,
                def,
                (method, path),
                request,
                status,
                &x["response"],
            );
            violations.extend(found);
            continue;
        }
        let found = specs.check_exchange(
            &files,
            method,
            path,
            request,
            status,
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
    assert!(
        violations.is_empty(),
        "{} violations in {}:\n{}",
        violations.len(),
        file.display(),
        violations.join("\n")
    );
}

/// `scaleset export azure` of the SDK's resource group (written while it existed).
fn check_export(dir: &Path) {
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("azuredeploy.json")).unwrap())
            .unwrap();
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
    let ci = std::fs::read_to_string(dir.join("azure-pipelines.yml")).unwrap();
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
    let release = std::fs::read_to_string(dir.join("release-pipeline.yml")).unwrap();
    assert!(
        release.contains("resourceGroup: sdk-rg") && release.contains("source: my-app"),
        "{release}"
    );
    // Both pipeline files against Microsoft's Azure Pipelines JSON schema.
    common::validate_pipeline_yaml(&[
        &dir.join("azure-pipelines.yml"),
        &dir.join("release-pipeline.yml"),
    ]);
    if let Some(specs) = specs() {
        let v = specs.check_arm_template(&t);
        assert!(
            v.is_empty(),
            "{} problems in the exported template:\n{}",
            v.len(),
            v.join("\n")
        );
    }
}
