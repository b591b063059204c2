//! Load balancers: one detached `scaleset lb-serve` process per resource, configured over its
//! admin socket; their `/status` is the LB probe's health of each instance.
use super::*;

/// A call to a load balancer's admin socket, bounded so a wedged LB cannot stall the engine.
pub(crate) async fn lb_call<T>(
    f: impl std::future::Future<Output = Result<T, lb::LbError>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err("the load balancer's admin socket did not answer within 5 s".into()),
    }
}

pub(crate) fn lb_dir(st: &Core, key: &Key) -> PathBuf {
    st.cfg.home.join("lb").join(short_hash(&key.path(), 12))
}

pub(crate) fn lb_sockets(st: &Core) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(st.cfg.home.join("lb")) else {
        return vec![];
    };
    rd.flatten()
        .map(|e| e.path().join("admin.sock"))
        .filter(|p| p.exists())
        .collect()
}

pub(crate) fn pid_alive(pid: i32, needle: &str) -> bool {
    pid > 0 && sys::proc::cmdline_contains(pid as u32, needle)
}

/// Starts the LB process for `dir` unless one is already running (adoption).
pub(crate) fn ensure_lb_process(st: &Core, dir: &std::path::Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let sock = dir.join("admin.sock");
    let pidfile = dir.join("pid");
    let needle = sock.to_string_lossy().to_string();
    if let Some(pid) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        if pid_alive(pid, &needle) {
            return Ok(sock);
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("lb.log"))
        .map_err(|e| format!("cannot open LB log: {e}"))?;
    let log2 = log.try_clone().map_err(|e| error_chain(&e))?;
    let _ = std::fs::remove_file(&sock);
    let mut cmd = std::process::Command::new(&st.cfg.exe);
    cmd.arg("lb-serve")
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--admin")
        .arg(&sock);
    cmd.stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // Own session: the LB must outlive the daemon (and not get its terminal's SIGINT).
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start load balancer process {}: {e}",
            st.cfg.exe.display()
        )
    })?;
    std::fs::write(&pidfile, child.id().to_string()).map_err(|e| error_chain(&e))?;
    info!(pid = child.id(), dir = %dir.display(), "load balancer process started");
    // The child is reaped by nobody when the daemon dies; while it lives, a thread reaps it.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(sock)
}

/// The LB's data-plane config from its ARM model and the scale sets in its pools.
pub fn lb_config(st: &Core, key: &Key, arm: &Value) -> Result<lb::LbConfig, String> {
    let (m, _) = model::lb::parse(arm).map_err(|e| error_chain(&e))?;
    let mut backends = Vec::new();
    for (vk, v) in st
        .store
        .list(VMSS, None, None)
        .map_err(|e| error_chain(&e))?
    {
        let Ok(doc) = serde_json::from_value::<VmssDoc>(v) else {
            continue;
        };
        let Ok((vm, _)) = model::vmss::parse(&doc.arm, &doc.name) else {
            continue;
        };
        let member = vm.backend_pools.iter().any(|p| {
            p.name.eq_ignore_ascii_case(&key.name) && p.resource_group.eq_ignore_ascii_case(&key.rg)
        });
        if !member {
            continue;
        }
        for r in st.instances(&vk).map_err(|e| error_chain(&e))? {
            backends.push(lb::Backend {
                id: r.machine.clone(),
                ip: r.ip.into(),
                image: Some(r.image.clone()),
                draining: r.draining || r.work.is_deleting() || r.intent == PowerIntent::Stopped,
            });
        }
    }
    let probes = m
        .probes
        .iter()
        .map(|p| lb::Probe {
            name: p.name.clone(),
            protocol: match p.protocol {
                model::lb::ProbeProtocol::Tcp => lb::ProbeProtocol::Tcp,
                model::lb::ProbeProtocol::Http => lb::ProbeProtocol::Http,
            },
            port: p.port,
            request_path: p.request_path.clone(),
            interval_in_seconds: p.interval_in_seconds,
            probe_threshold: p.probe_threshold,
            interval_ms: st.cfg.probe_interval_ms,
        })
        .collect();
    let rules = m
        .rules
        .iter()
        .filter_map(|r| {
            let ip = m
                .frontends
                .iter()
                .find(|f| f.0 == r.frontend)
                .map(|f| f.1)
                .unwrap_or([127, 0, 0, 1].into());
            // Stored before `--lb-allowed-addresses` was narrowed: not served.
            if !st.cfg.lb_address_allowed(ip) {
                tracing::debug!(lb = %key.name, rule = %r.name, %ip, "frontend address not allowed; rule not served");
                return None;
            }
            Some(lb::Rule {
                name: r.name.clone(),
                frontend: std::net::SocketAddr::new(ip, r.frontend_port),
                backend_port: r.backend_port,
                layer: if m.l7 { lb::Layer::L7 } else { lb::Layer::L4 },
                load_distribution: match r.load_distribution {
                    model::lb::Distribution::Default => lb::LoadDistribution::Default,
                    model::lb::Distribution::SourceIP => lb::LoadDistribution::SourceIp,
                    model::lb::Distribution::SourceIPProtocol => {
                        lb::LoadDistribution::SourceIpProtocol
                    }
                },
                idle_timeout_in_minutes: r.idle_timeout_in_minutes,
                enable_tcp_reset: r.enable_tcp_reset,
                probe: r.probe.clone(),
            })
        })
        .collect();
    Ok(lb::LbConfig {
        name: key.name.clone(),
        rules,
        probes,
        backends,
        no_healthy_backends_behavior: if m.probes.iter().any(|p| p.all_probed_up) {
            lb::NoHealthyBackendsBehavior::AllProbedUp
        } else {
            lb::NoHealthyBackendsBehavior::AllProbedDown
        },
        frontend_limits: st.cfg.lb_frontend,
    })
}

/// Makes the LB processes match the LB resources, pushes changed configs, reads health.
pub async fn sync_lbs(st: &Arc<Core>, eng: &Arc<Engine>) -> Result<(), String> {
    let mut pushed = eng.pushed.lock().await;
    let lbs = st.store.list(LB, None, None).map_err(|e| error_chain(&e))?;
    let mut live = HashSet::new();
    let mut health: HashMap<String, bool> = HashMap::new();
    for (key, arm) in lbs {
        let dir = lb_dir(st, &key);
        live.insert(dir.clone());
        let cfg = lb_config(st, &key, &arm)?;
        let (st2, dir2) = (st.clone(), dir.clone());
        let sock = tokio::task::spawn_blocking(move || ensure_lb_process(&st2, &dir2))
            .await
            .map_err(|e| error_chain(&e))??;
        let _ = std::fs::write(dir.join("key"), key.path());
        // Wait briefly for a freshly started process to open its socket.
        for _ in 0..50 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let path = key.path();
        match lb_call(lb::client::get_status(&sock)).await {
            Ok(mut status) => {
                let current: HashSet<(String, bool)> = status
                    .backends
                    .iter()
                    .map(|b| (b.id.clone(), b.draining))
                    .collect();
                let wanted: HashSet<(String, bool)> = cfg
                    .backends
                    .iter()
                    .map(|b| (b.id.clone(), b.draining))
                    .collect();
                if pushed.get(&path) != Some(&cfg) || current != wanted {
                    lb_call(lb::client::put_config(&sock, &cfg))
                        .await
                        .map_err(|e| {
                            format!("cannot configure load balancer '{}': {e}", key.name)
                        })?;
                    pushed.insert(path, cfg);
                    // Health as of the new config: a backend back from draining is down until
                    // probed up again.
                    if let Ok(fresh) = lb_call(lb::client::get_status(&sock)).await {
                        status = fresh;
                    }
                }
                for b in status.backends {
                    health.insert(b.id, b.healthy);
                }
            }
            Err(e) => {
                warn!(lb = %key.name, error = %e, "load balancer not answering")
            }
        }
    }
    {
        let mut obs = st.observed.lock().unwrap_or_else(|e| e.into_inner());
        for (id, h) in health {
            obs.entry(id).or_default().healthy = Some(h);
        }
    }
    // Load balancers whose resource is gone: stop their process and forget them.
    if let Ok(rd) = std::fs::read_dir(st.cfg.home.join("lb")) {
        for e in rd.flatten() {
            let dir = e.path();
            if live.contains(&dir) {
                continue;
            }
            stop_lb_dir(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

pub(crate) fn stop_lb_dir(dir: &std::path::Path) {
    let needle = dir.join("admin.sock").to_string_lossy().to_string();
    if let Some(pid) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        if pid_alive(pid, &needle) {
            // SAFETY: plain kill(2) on a pid we verified is our LB process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..200 {
                if !pid_alive(pid, &needle) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Core {
    /// The load balancer `key`'s `/status` (health and counters per backend), read from its
    /// admin socket; for views (the dashboard), bounded like every admin call.
    pub async fn lb_status(&self, key: &Key) -> Result<lb::LbStatus, String> {
        lb_call(lb::client::get_status(
            &lb_dir(self, key).join("admin.sock"),
        ))
        .await
    }
}
