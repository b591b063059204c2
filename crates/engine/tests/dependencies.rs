//! The dependency invariants of ARCHITECTURE.md, read from `cargo metadata`: only the binary
//! depends on the HTTP crate, neither the engine, the control plane nor the CI service depends
//! on an HTTP framework, and the OS helpers (`sys`) sit below every workspace crate.
use serde_json::Value;
use std::collections::BTreeMap;

/// The HTTP crate (router, handlers, rendering, auth, server).
const HTTP_CRATE: &str = "api";
/// The one crate allowed to depend on it: the `scaleset` binary.
const BINARY: &str = "scaleset";
/// HTTP frameworks and their plumbing.
const HTTP_FRAMEWORKS: [&str; 4] = ["axum", "hyper", "hyper-util", "http-body-util"];

/// Each workspace package's direct dependencies (normal, dev and build), by package name.
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut deps = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let names = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .map(|d| d["name"].as_str().expect("dependency name").to_string())
            .collect();
        deps.insert(p["name"].as_str().expect("name").to_string(), names);
    }
    deps
}

#[test]
fn only_the_binary_depends_on_the_http_crate() {
    let deps = workspace_dependencies();
    assert!(deps.contains_key(HTTP_CRATE) && deps.contains_key(BINARY));
    let users: Vec<&String> = deps
        .iter()
        .filter(|(_, d)| d.iter().any(|n| n == HTTP_CRATE))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(users, vec![BINARY], "crates depending on `{HTTP_CRATE}`");
}

/// Direct dependencies only: the CI service reaches hyper through `azure`, whose ARM client
/// uses it as an HTTP *client*; what is forbidden is serving HTTP (the framework, the `api`
/// crate), which the service leaves to its front end in `api`.
#[test]
fn the_engine_control_plane_and_ci_service_know_no_http_framework() {
    let deps = workspace_dependencies();
    for krate in ["engine", "control", "ci"] {
        let d = deps
            .get(krate)
            .unwrap_or_else(|| panic!("no `{krate}` crate"));
        let http: Vec<&String> = d
            .iter()
            .filter(|n| HTTP_FRAMEWORKS.contains(&n.as_str()) || *n == HTTP_CRATE)
            .collect();
        assert!(http.is_empty(), "`{krate}` depends on {http:?}");
        // Their real dependencies, so a rename cannot make this test pass vacuously.
        let musts: &[&str] = match krate {
            "engine" => &["control", "plan", "runtime", "image", "lb"],
            "ci" => &["pipeline", "engine", "control", "image"],
            _ => &[],
        };
        for must in musts {
            assert!(d.iter().any(|n| n == must), "`{krate}` should use `{must}`");
        }
    }
}

#[test]
fn the_os_helpers_depend_on_no_workspace_crate() {
    let deps = workspace_dependencies();
    let sys = deps.get("sys").expect("no `sys` crate");
    let inner: Vec<&String> = sys.iter().filter(|n| deps.contains_key(*n)).collect();
    assert!(inner.is_empty(), "`sys` depends on {inner:?}");
    // Everything that touches the OS shares it.
    for user in ["runtime", "image", "pipeline", "control", "engine"] {
        assert!(
            deps[user].iter().any(|n| n == "sys"),
            "`{user}` should use `sys`"
        );
    }
}
