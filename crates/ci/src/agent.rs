//! Who jobs run as and what they see: the runner user, per-pipeline homes, the tool mounts and
//! the runs' cgroups.
use pipeline::runner::RunnerConfig;
use std::path::{Path, PathBuf};

/// Jobs run as the unprivileged user `$SCALESET_RUNNER_USER` (default `scaleset-runner`, which
/// scripts/install-deps.sh creates), never as root: without that user every run fails with a
/// message saying how to create it. Each pipeline has its own home `root/homes/p-<pipeline>`
/// (HOME and CARGO_HOME); a job's mount namespace shows it only its own build directory and
/// home, and the daemon's rustup toolchains and cargo binaries read-only at
/// `root/agent/{rustup,cargo-bin}` (like an agent's tool cache). Each run has its own cgroup.
pub(crate) fn agent_identity(root: &Path, rc: &mut RunnerConfig) {
    let name = std::env::var("SCALESET_RUNNER_USER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "scaleset-runner".into());
    let (uid, gid) = match passwd_ids(&name) {
        Some((0, _)) | Some((_, 0)) => {
            rc.unavailable = Some(format!(
                "the runner user `{name}` is root: pipeline jobs never run as root"
            ));
            return;
        }
        Some(x) => x,
        None => {
            tracing::error!(user = %name, "no such user: pipeline runs will fail (create it with scripts/install-deps.sh)");
            rc.unavailable = Some(format!(
                "pipeline jobs run as the unprivileged user `{name}`, which does not exist on this machine: create it (scripts/install-deps.sh does) or set SCALESET_RUNNER_USER"
            ));
            return;
        }
    };
    let agent = root.join("agent");
    let mut env = vec![
        ("USER".to_string(), name.clone()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
    ];
    let path = tool_mounts(&agent, rc, &mut env);
    env.push(("PATH".into(), path));
    rc.base_env = env;
    rc.identity = Some(pipeline::sandbox::Identity { uid, gid });
    rc.homes_root = Some(root.join("homes"));
    rc.isolate = true;
    let repo_mount = agent.join("repo");
    if std::fs::create_dir_all(&repo_mount).is_ok() {
        rc.repo_mount = Some(repo_mount);
    }
    match pipeline::cgroup::Hierarchy::detect(&cgroup_group(root)) {
        Ok(h) => rc.cgroups = Some(h),
        Err(e) => {
            rc.unavailable = Some(format!(
                "pipeline runs need a cgroup of their own so that nothing they start outlives them: {e}"
            ))
        }
    }
    tracing::info!(user = %name, uid, "pipeline jobs run as an unprivileged user");
}

/// The uid and gid of user `name` in /etc/passwd.
fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6 && f[0] == name)
            .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
            .flatten()
    })
}

/// The daemon's rustup toolchains and cargo binaries, mounted read-only under `agent`
/// (RUSTUP_HOME goes into `env`); returns the jobs' PATH.
fn tool_mounts(agent: &Path, rc: &mut RunnerConfig, env: &mut Vec<(String, String)>) -> String {
    let own_home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let rustup = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| own_home.join(".rustup"));
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| own_home.join(".cargo"))
        .join("bin");
    let mut path = String::new();
    for (src, mnt) in [(&rustup, "rustup"), (&cargo_bin, "cargo-bin")] {
        let dst = agent.join(mnt);
        if src.is_dir() && std::fs::create_dir_all(&dst).is_ok() {
            rc.bind_ro.push((src.clone(), dst.clone()));
            if mnt == "rustup" {
                env.push(("RUSTUP_HOME".into(), dst.to_string_lossy().into_owned()));
            } else {
                path = format!("{}:", dst.display());
            }
        }
    }
    path.push_str("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path
}

/// The cgroup folder of this daemon's runs: one per home, so test daemons don't collide.
fn cgroup_group(root: &Path) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
    format!("scaleset-runs-{}", hex::encode(&h[..6]))
}
