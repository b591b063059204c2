//! The in-process daemon state the API tests run against: a home in the temp folder (removed
//! when the `Env` goes), the default limits, no engine.
#![allow(dead_code)]

use api::state::AppState;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Env {
    pub st: Arc<AppState>,
    pub dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What differs between the test files: the home's name, the subnet, the listen address and
/// the machine-name prefix.
pub struct Setup<'a> {
    pub kind: &'a str,
    pub subnet: &'a str,
    pub listen: &'a str,
    pub prefix: &'a str,
}

/// A daemon state over the machines `machines` makes for the home.
pub fn env_with(
    s: &Setup,
    tag: &str,
    machines: impl FnOnce(&Path) -> Arc<dyn runtime::Machines>,
) -> Env {
    let dir =
        std::env::temp_dir().join(format!("scaleset-{}-{tag}-{}", s.kind, std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let subnet: runtime::Ipv4Net = s.subnet.parse().unwrap();
    let cfg = api::DaemonConfig {
        home: dir.clone(),
        listen: s.listen.parse().unwrap(),
        network: api::DaemonConfig::network_for(&dir, subnet, None),
        prefix: s.prefix.into(),
        exe: "/bin/false".into(),
        base_cache: dir.join("bases"),
        probe_interval_ms: None,
        rolling_health_timeout_secs: 300,
        repair_grace_secs: None,
        autoscale_interval_ms: None,
        limits: Default::default(),
        metrics_anonymous_loopback: false,
    };
    let st = api::open_state(cfg, machines(&dir)).unwrap();
    Env { st, dir }
}

/// Real nspawn machines (never booted by these tests) under the home.
pub fn nspawn(prefix: &str) -> impl FnOnce(&Path) -> Arc<dyn runtime::Machines> + '_ {
    move |dir| {
        let m = runtime::NspawnMachines::new(runtime::RuntimeConfig {
            state_dir: dir.join("machines"),
            prefix: prefix.into(),
        })
        .unwrap();
        Arc::new(m)
    }
}
