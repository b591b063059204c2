//! Real machines: root, systemd-nspawn, iproute2, debootstrap and access to
//! a Debian mirror (the bake installs nginx-light). The base is shared
//! across runs: `$SCALESET_BASE_CACHE`, else `/var/tmp/scaleset-test-base`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::{BakeSpec, ImageStore};
use runtime::{
    host_routes, pick_subnet, preflight, teardown_network, MachineSize, MachineSpec, MachineState,
    Machines, NetworkSpec, NspawnMachines, RuntimeConfig,
};

fn base_cache() -> PathBuf {
    std::env::var_os("SCALESET_BASE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-test-base"))
}

/// Cleans up everything the test may have created, even on panic:
/// nspawn processes under the test dir, mounts, netns, veths, the bridge.
struct Cleanup {
    dir: PathBuf,
    cfg: RuntimeConfig,
    net: Option<NetworkSpec>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(m) = NspawnMachines::new(self.cfg.clone()) {
            for name in m.list().unwrap_or_default() {
                let _ = m.kill(&name);
                if let Err(e) = m.delete(&name) {
                    eprintln!("cleanup: delete {name}: {e}");
                }
            }
        }
        // Anything still running from our dir (e.g. a half-started machine).
        let needle = self.dir.to_string_lossy().into_owned();
        if let Ok(rd) = fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains(&needle) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mps: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mps {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
        if let Some(net) = &self.net {
            let _ = teardown_network(net);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn http_get(ip: Ipv4Addr, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from((ip, 80));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad response {buf:?}"))?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

fn wait_http(ip: Ipv4Addr, path: &str, timeout: Duration) -> Result<(String, Duration), String> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < timeout {
        match http_get(ip, path) {
            Ok((200, body)) => return Ok((body, t0.elapsed())),
            Ok((c, _)) => last = format!("status {c}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "no HTTP 200 from {ip}{path} in {timeout:?}: {last}"
    ))
}

const SETUP: &str = r#"#!/bin/sh
set -e
apt-get update -q
apt-get install -y -q --no-install-recommends nginx-light
echo "hello from $1" > /var/www/html/index.html
ln -sf /etc/scaleset/instance.env /var/www/html/instance.txt
systemctl enable nginx
"#;

#[test]
fn boot_serve_stop_start_reimage_delete() {
    let missing = preflight()
        .err()
        .map(|e| e.to_string())
        .or_else(|| testkit::missing_tools(&["debootstrap"], "debootstrap"));
    if !testkit::require(missing) {
        return;
    }
    let tag = format!("t{:x}", std::process::id() % 0xfff);
    let dir = PathBuf::from(format!(
        "/var/tmp/ss-rttest-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let cfg = RuntimeConfig {
        state_dir: dir.join("machines"),
        prefix: tag.clone(),
    };
    let mut guard = Cleanup {
        dir: dir.clone(),
        cfg: cfg.clone(),
        net: None,
    };

    // Network (a networked bake joins it: `network.json` of the store's home).
    let subnet = pick_subnet(&host_routes().unwrap()).expect("a free /24");
    let net = NetworkSpec {
        bridge: format!("ssbr{tag}"),
        subnet,
        gateway: subnet.host(1),
    };
    guard.net = Some(net.clone());
    fs::create_dir_all(&dir).unwrap();
    net.save(&dir.join("network.json")).unwrap();

    // Bake the web image.
    let pkg = dir.join("pkg/webapp");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join("setup.sh"), SETUP).unwrap();
    let store = ImageStore::new(dir.join("images"), base_cache());
    let t0 = Instant::now();
    let img = store
        .bake(
            &BakeSpec {
                name: "web".into(),
                base: "debian:bookworm".into(),
                package_dir: pkg.clone(),
                script: "setup.sh".into(),
                args: vec!["scaleset".into()],
                network: true,
                mirror: None,
                host_network: true,
                cache: None,
            },
            &mut std::io::stderr(),
        )
        .unwrap();
    eprintln!(
        "TIMING bake(nginx-light): {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let m = NspawnMachines::new(cfg.clone()).unwrap();
    m.ensure_network(&net).unwrap();
    m.ensure_network(&net).unwrap(); // idempotent

    let spec = |i: u32| MachineSpec {
        name: format!("vmsstest_{i}"),
        hostname: format!("vmsstest{i:06}"),
        layers: img.layers.clone(),
        ip: subnet.host(10 + i),
        network: net.clone(),
        files: vec![(
            PathBuf::from("/etc/scaleset/instance.env"),
            format!("INSTANCE=vmsstest_{i}\n"),
        )],
        // vm0 is capped (one CPU, 256 MiB); vm1 is not.
        size: (i == 0).then_some(MachineSize {
            vcpus: 1,
            memory_mib: 256,
        }),
    };
    let (s0, s1) = (spec(0), spec(1));
    for s in [&s0, &s1] {
        m.create(s).unwrap();
        m.create(s).unwrap(); // idempotent
        assert_eq!(m.state(&s.name).unwrap(), MachineState::Stopped);
    }
    assert_eq!(m.list().unwrap(), ["vmsstest_0", "vmsstest_1"]);

    let t0 = Instant::now();
    let pid0 = m.start(&s0.name).unwrap();
    // vm1 is started by a separate short-lived process (a "daemon" that
    // exits right after): the machine must survive it and be adopted.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_machine",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SS_HELPER_STATE_DIR", &cfg.state_dir)
        .env("SS_HELPER_PREFIX", &cfg.prefix)
        .env("SS_HELPER_MACHINE", &s1.name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let MachineState::Running { pid: pid1 } = m.state(&s1.name).unwrap() else {
        panic!("vm1 not running after its starter exited");
    };
    assert_ne!(
        std::fs::read_to_string(format!("/proc/{pid1}/stat"))
            .unwrap()
            .rsplit(") ")
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap(),
        std::process::id().to_string(),
        "vm1's nspawn must not be our child"
    );
    assert_eq!(m.start(&s0.name).unwrap(), pid0); // already running
                                                  // Detached: own session, so it survives the daemon (and its terminal).
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid0 as i32)))
            .unwrap()
            .as_raw(),
        pid0 as i32
    );
    for s in [&s0, &s1] {
        let (body, _) = wait_http(s.ip, "/", Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", console(&m, &s.name)));
        assert_eq!(body, "hello from scaleset\n");
        let (env, _) = wait_http(s.ip, "/instance.txt", Duration::from_secs(5)).unwrap();
        assert_eq!(env, format!("INSTANCE={}\n", s.name));
    }
    eprintln!(
        "TIMING boot-to-HTTP (2 machines): {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    machine_cgroups_hold_and_cap_the_machines(&m, (&s0.name, s0.ip, pid0), &s1.name);
    machine_cpu_is_capped(&m, &s0.name);
    usage_of_a_running_machine(&m, &s0.name, s0.ip);
    let hn = fs::read_to_string(m.root_path(&s0.name).join("etc/hostname")).unwrap();
    assert_eq!(hn, "vmsstest000000\n");
    let mid = fs::read_to_string(m.root_path(&s0.name).join("etc/machine-id")).unwrap();
    assert_eq!(mid.trim().len(), 32);

    // Adoption by a fresh NspawnMachines (daemon restart).
    drop(m);
    let m = NspawnMachines::new(cfg.clone()).unwrap();
    assert_eq!(
        m.state(&s0.name).unwrap(),
        MachineState::Running { pid: pid0 }
    );
    assert_eq!(
        m.state(&s1.name).unwrap(),
        MachineState::Running { pid: pid1 }
    );
    assert_eq!(m.state("nope").unwrap(), MachineState::Missing);

    // Stop / start keeps the writable layer.
    fs::write(m.root_path(&s0.name).join("marker"), "x").unwrap();
    let t0 = Instant::now();
    m.stop(&s0.name, Duration::from_secs(30)).unwrap();
    eprintln!("TIMING clean stop: {:.1}s", t0.elapsed().as_secs_f64());
    let log = console(&m, &s0.name);

    assert!(
        log.contains("System Shutdown") && log.contains("Halting system"),
        "{log}"
    );
    assert_eq!(m.state(&s0.name).unwrap(), MachineState::Stopped);
    assert_eq!(
        m.usage(&s0.name).unwrap(),
        None,
        "a stopped machine uses nothing"
    );
    assert!(http_get(s0.ip, "/").is_err());
    // A stopped machine leaves nothing on the host but its files.
    assert!(!sys::mounts::is_mountpoint(&m.root_path(&s0.name)));
    assert!(!Path::new("/run/netns")
        .join(m.netns_name(&s0.name))
        .exists());
    let t0 = Instant::now();
    m.start(&s0.name).unwrap();
    wait_http(s0.ip, "/", Duration::from_secs(60)).unwrap();
    eprintln!("TIMING restart-to-HTTP: {:.1}s", t0.elapsed().as_secs_f64());
    assert!(m.upper_path(&s0.name).join("marker").exists());

    // Reimage wipes it; must be stopped first.
    assert!(m.reimage(&s0).is_err());
    m.stop(&s0.name, Duration::from_secs(30)).unwrap();
    m.reimage(&s0).unwrap();
    assert!(!m.root_path(&s0.name).join("marker").exists());
    assert!(m
        .root_path(&s0.name)
        .join("etc/scaleset/instance.env")
        .exists());
    m.start(&s0.name).unwrap();
    wait_http(s0.ip, "/", Duration::from_secs(60)).unwrap();

    // nspawn itself killed (a crash): what it left running dies before the machine starts again.
    let MachineState::Running { pid: nspawn1 } = m.state(&s1.name).unwrap() else {
        panic!("vm1 not running");
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nspawn1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.state(&s1.name).unwrap() != MachineState::Stopped && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(m.state(&s1.name).unwrap(), MachineState::Stopped);
    // The container's init and services outlive nspawn (reparented to the host's init).
    let orphans = with_start_times(&m.cgroup(&s1.name).members());
    assert!(!orphans.is_empty(), "nothing of vm1 outlived its nspawn");
    m.start(&s1.name).unwrap();
    assert_eq!(
        still_alive(&orphans),
        vec![],
        "the crashed machine's processes survived its restart"
    );
    wait_http(s1.ip, "/", Duration::from_secs(60)).unwrap();

    // Hard kill (crash simulation): no container process survives.
    let root1 = m.root_path(&s1.name).to_string_lossy().into_owned();
    m.kill(&s1.name).unwrap();
    assert_eq!(m.state(&s1.name).unwrap(), MachineState::Stopped);
    assert!(http_get(s1.ip, "/").is_err());
    assert!(!any_process_mentions(&root1));

    // Delete (one running, one stopped); idempotent.
    for s in [&s0, &s1] {
        let ns = m.netns_name(&s.name);
        m.delete(&s.name).unwrap();
        m.delete(&s.name).unwrap();
        assert_eq!(m.state(&s.name).unwrap(), MachineState::Missing);
        assert!(!Path::new("/run/netns").join(&ns).exists());
    }
    assert!(m.list().unwrap().is_empty());
    teardown_network(&net).unwrap();
    assert!(!Path::new("/sys/class/net").join(&net.bridge).exists());
}

fn console(m: &NspawnMachines, name: &str) -> String {
    fs::read_to_string(m.log_path(name)).unwrap_or_default()
}

fn any_process_mentions(needle: &str) -> bool {
    fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().any(|e| {
                fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// Not a test on its own: used by the main test as a short-lived starter
/// process (does nothing unless `SS_HELPER_STATE_DIR` is set).
#[test]
fn helper_start_machine() {
    let (Some(dir), Some(prefix), Some(name)) = (
        std::env::var_os("SS_HELPER_STATE_DIR"),
        std::env::var("SS_HELPER_PREFIX").ok(),
        std::env::var("SS_HELPER_MACHINE").ok(),
    ) else {
        return;
    };
    let m = NspawnMachines::new(RuntimeConfig {
        state_dir: dir.into(),
        prefix,
    })
    .unwrap();
    let pid = m.start(&name).unwrap();
    eprintln!("helper started {name} as pid {pid}");
}

/// `pids` with their start times, so that a pid reused later is not mistaken for them.
fn with_start_times(pids: &[i32]) -> Vec<(i32, u64)> {
    pids.iter()
        .filter_map(|&p| Some((p, sys::proc::starttime(p as u32)?)))
        .collect()
}

/// Those of `procs` still alive.
fn still_alive(procs: &[(i32, u64)]) -> Vec<(i32, u64)> {
    procs
        .iter()
        .copied()
        .filter(|&(p, t)| sys::proc::starttime(p as u32) == Some(t))
        .collect()
}

/// Each machine's processes are in its own cgroup, and vm0's size caps it: a process of vm0
/// that allocates more than 256 MiB is killed while vm0 and this test carry on.
fn machine_cgroups_hold_and_cap_the_machines(
    m: &NspawnMachines,
    (vm0, ip0, pid0): (&str, Ipv4Addr, u32),
    vm1: &str,
) {
    let (cg0, cg1) = (m.cgroup(vm0), m.cgroup(vm1));
    assert!(
        cg0.members().contains(&(pid0 as i32)),
        "{:?}",
        cg0.members()
    );
    assert!(
        cg0.members().len() > 3,
        "systemd, journald, nginx: {:?}",
        cg0.members()
    );
    assert!(cg0.members().iter().all(|p| !cg1.members().contains(p)));
    let hog = format!(
        "for f in {}; do echo $$ > $f; done; head -c 400M /dev/zero | tail > /dev/null",
        cg0.procs_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&hog)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "400 MiB in a 256 MiB machine: {out:?}"
    );
    let (body, _) = wait_http(ip0, "/", Duration::from_secs(10)).unwrap();
    assert_eq!(body, "hello from scaleset\n");
}

/// vm0's one vCPU is a CFS quota of one period per 100 ms period: two busy loops in its cgroup
/// (the host has two cores or more) get about one CPU between them, never much more.
fn machine_cpu_is_capped(m: &NspawnMachines, vm0: &str) {
    let cg = m.cgroup(vm0);
    let quotas: Vec<String> = cg
        .procs_files()
        .iter()
        .filter_map(|p| {
            let d = p.parent()?;
            fs::read_to_string(d.join("cpu.max"))
                .or_else(|_| fs::read_to_string(d.join("cpu.cfs_quota_us")))
                .ok()
        })
        .map(|q| q.trim().to_string())
        .collect();
    assert!(
        quotas.iter().any(|q| q == "100000 100000" || q == "100000"),
        "one vCPU as the cgroup's quota: {quotas:?}"
    );
    let join = cg
        .procs_files()
        .iter()
        .map(|p| format!("echo $$ > {} && ", p.display()))
        .collect::<String>();
    let spin = "timeout 2 sh -c 'while :; do :; done'";
    let before = cg.cpu_usage().expect("CPU accounting");
    let t = Instant::now();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("set -e; {join} {{ {spin} & {spin} & wait; }}"))
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let used = (cg.cpu_usage().unwrap() - before).as_secs_f64();
    eprintln!("MEASURE two busy loops in a 1-vCPU machine: {used:.2} s of CPU in {wall:.2} s");
    assert!(
        out.status.success(),
        "joining the machine's cgroup: {out:?}"
    );
    // The loops ran in the machine's cgroup: about one CPU of the two or more here (half of
    // one, to leave room for a busy host).
    assert!(
        std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        "the cap test needs two CPUs"
    );
    assert!(used >= wall * 0.5, "{used:.2} s of CPU in {wall:.2} s");
    assert!(
        used <= wall * 1.3,
        "1 vCPU: {used:.2} s of CPU in {wall:.2} s"
    );
}

/// What metrics read of a running machine: CPU time and memory from its cgroup (vm0's 256 MiB
/// cap as its limit), and veth counters that grow with an HTTP request to it.
fn usage_of_a_running_machine(m: &NspawnMachines, name: &str, ip: Ipv4Addr) {
    let u = m
        .usage(name)
        .unwrap()
        .expect("a running machine reports usage");
    eprintln!("usage of {name}: {u:?}");
    assert!(u.cpu.is_some_and(|c| !c.is_zero()), "{u:?}");
    assert!(u.memory_bytes.is_some_and(|b| b > 0), "{u:?}");
    assert_eq!(u.memory_limit_bytes, Some(256 << 20), "{u:?}");
    let (rx, tx) = (u.net_in_bytes.unwrap(), u.net_out_bytes.unwrap());
    let (body, _) = wait_http(ip, "/", Duration::from_secs(5)).unwrap();
    assert_eq!(body, "hello from scaleset\n");
    let v = m.usage(name).unwrap().unwrap();
    assert!(
        v.net_in_bytes.unwrap() > rx,
        "request bytes in: {u:?} then {v:?}"
    );
    assert!(
        v.net_out_bytes.unwrap() > tx,
        "response bytes out: {u:?} then {v:?}"
    );
    assert!(v.cpu >= u.cpu, "{u:?} then {v:?}");
    assert_eq!(m.usage("vmsstest_none").unwrap(), None);
}
