//! Shared harness for the tests that boot real machines: the real `scaleset` binary, a load
//! generator, LB status, cleanup guards.
#![allow(dead_code)]
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_scaleset");

pub struct Harness {
    pub home: PathBuf,
    pub api: SocketAddr,
    pub serve: Option<Child>,
    /// Virtual network of this test (distinct per test file so runs never clash).
    pub subnet: &'static str,
    pub prefix: &'static str,
    /// Extra environment for `scaleset serve`.
    pub env: Vec<(&'static str, String)>,
}

impl Harness {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(EXE);
        c.env("SCALESET_HOME", &self.home)
            .env("SCALESET_LISTEN", self.api.to_string())
            .env("SCALESET_SUBNET", self.subnet)
            .env("SCALESET_PREFIX", self.prefix)
            .env("SCALESET_BASE_CACHE", base_cache())
            .env_remove("SCALESET_ENDPOINT")
            .env_remove("SCALESET_TOKEN");
        c
    }

    /// Runs the CLI; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scaleset");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "scaleset {args:?} failed:\n{err}\n{out}");
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("scaleset {args:?}: not JSON ({e}): {out}"))
    }

    pub fn start_serve(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("serve.log"))
            .unwrap();
        let mut cmd = self.cmd();
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start serve");
        self.serve = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.run(&["group", "list"]).0 {
            assert!(
                Instant::now() < deadline,
                "daemon did not come up; log:\n{}",
                std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill_serve(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn instances(&self) -> Vec<Value> {
        self.json(&[
            "vmss",
            "list-instances",
            "-g",
            "rg",
            "-n",
            "web",
            "-o",
            "json",
        ])
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    /// The processes in machine `name`'s cgroup, with their start times (a reused pid is not
    /// mistaken for them later).
    pub fn machine_processes(&self, name: &str) -> Vec<(i32, u64)> {
        let m = runtime::NspawnMachines::new(runtime::RuntimeConfig {
            state_dir: self.home.join("machines"),
            prefix: self.prefix.into(),
        })
        .expect("the harness's machines");
        m.cgroup(name)
            .members()
            .into_iter()
            .filter_map(|p| Some((p, sys::proc::starttime(p as u32)?)))
            .collect()
    }

    pub fn machine_pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = std::fs::read_dir(self.home.join("machines"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let pid = std::fs::read_to_string(e.path().join("pid"))
                            .ok()?
                            .split_whitespace()
                            .next()?
                            .parse()
                            .ok()?;
                        Some((e.file_name().to_string_lossy().into_owned(), pid))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Harness {
    /// A harness with a fresh home under the temp dir (not started yet).
    pub fn new(
        tag: &str,
        subnet: &'static str,
        prefix: &'static str,
        env: Vec<(&'static str, String)>,
    ) -> Harness {
        let home = std::env::temp_dir().join(format!("scaleset-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).unwrap();
        Harness {
            home,
            api: SocketAddr::from(([127, 0, 0, 1], free_port())),
            serve: None,
            subnet,
            prefix,
            env,
        }
    }

    /// Resource group `rg` with load balancer `lb`: pool `be`, HTTP probe `http` on `/health`
    /// (interval 5 s, the given threshold) and rule `web` from 127.0.0.1:`port` to port 80.
    pub fn setup_lb(&self, port: u16, threshold: u32) {
        self.ok(&["group", "create", "-n", "rg"]);
        self.ok(&[
            "network",
            "lb",
            "create",
            "-g",
            "rg",
            "-n",
            "lb",
            "--backend-pool-name",
            "be",
        ]);
        let threshold = threshold.to_string();
        let probe = [
            "--protocol",
            "Http",
            "--port",
            "80",
            "--path",
            "/health",
            "--interval",
            "5",
            "--probe-threshold",
            &threshold,
        ];
        let mut args = vec![
            "network",
            "lb",
            "probe",
            "create",
            "-g",
            "rg",
            "--lb-name",
            "lb",
            "-n",
            "http",
        ];
        args.extend(probe);
        self.ok(&args);
        let port = port.to_string();
        self.ok(&[
            "network",
            "lb",
            "rule",
            "create",
            "-g",
            "rg",
            "--lb-name",
            "lb",
            "-n",
            "web",
            "--protocol",
            "Tcp",
            "--frontend-port",
            &port,
            "--backend-port",
            "80",
            "--probe-name",
            "http",
        ]);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill_serve();
        // Load balancer processes.
        if let Ok(rd) = std::fs::read_dir(self.home.join("lb")) {
            for e in rd.flatten() {
                if let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    // SAFETY: kill(2) on the LB process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Machines, their mounts and namespaces, then the bridge.
        if let Ok(m) = runtime::NspawnMachines::new(runtime::RuntimeConfig {
            state_dir: self.home.join("machines"),
            prefix: self.prefix.into(),
        }) {
            use runtime::Machines;
            for name in m.list().unwrap_or_default() {
                let _ = m.delete(&name);
            }
        }
        if let Some(net) = std::fs::read_to_string(self.home.join("network.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        {
            if let (Some(bridge), Ok(subnet)) = (
                net["bridge"].as_str(),
                self.subnet.parse::<runtime::Ipv4Net>(),
            ) {
                let _ = runtime::teardown_network(&runtime::NetworkSpec {
                    bridge: bridge.into(),
                    gateway: subnet.host(1),
                    subnet,
                });
            }
        }
        // Images in use are read-only bind mounts of their layers: undo them before removal.
        image::ImageStore::new(self.home.join("images"), base_cache()).unmount_layers();
        if std::env::var_os("SCALESET_KEEP_TEST_HOME").is_none() {
            let _ = std::fs::remove_dir_all(&self.home);
        }
    }
}

pub fn base_cache() -> PathBuf {
    std::env::var_os("SCALESET_BASE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-test-base"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Why the daemon cannot run machines here (root, systemd-nspawn, debootstrap, iproute2), for
/// [`testkit::require`]: under CI a reason fails the test, elsewhere it is a counted skip.
pub fn skip_reason() -> Option<String> {
    testkit::missing_root().or_else(|| {
        testkit::missing_tools(
            &["systemd-nspawn", "debootstrap", "ip"],
            "systemd-container debootstrap iproute2",
        )
    })
}

/// The example's drop: the release-built my_app binary plus its deployment files.
pub fn example_drop(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "my_app"])
        .current_dir(&root)
        .status()
        .expect("cargo build my_app");
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let drop = dir.join("drop");
    std::fs::create_dir_all(drop.join("nginx")).unwrap();
    let ex = root.join("examples/my_app");
    std::fs::copy(target.join("release/my_app"), drop.join("my_app")).unwrap();
    for f in ["setupscript.sh", "my_app.service", "nginx/my_app"] {
        std::fs::copy(ex.join(f), drop.join(f)).unwrap();
    }
    drop
}

/// Validates pipeline YAML files against Microsoft's Azure Pipelines JSON schema (through
/// crates/pipeline/tests/validate_examples.py and a python3 with PyYAML and jsonschema, which
/// scripts/install-deps.sh installs). Without them (or the schema in ../shared) this check is a
/// counted skip, and a failure under CI.
pub fn validate_pipeline_yaml(files: &[&Path]) {
    const SCHEMA: &str = "specs/azure-pipelines/service-schema.json";
    let missing = testkit::missing_shared(SCHEMA)
        .or_else(|| testkit::missing_python_modules(&["yaml", "jsonschema"]));
    if !testkit::require(missing) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema = testkit::shared_dir().join(SCHEMA);
    let py = testkit::find_tool("python3").unwrap();
    let out = Command::new(py)
        .arg(root.join("crates/pipeline/tests/validate_examples.py"))
        .args(files)
        .env("SCHEMA", &schema)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pipelines do not validate against the schema:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Variants of the example's drop under `home`: `drop-v2` (one more file, so another image)
/// and `drop-bad` (its setup script leaves NGINX without a site: nothing answers on port 80).
pub fn example_variants(home: &Path, drop: &Path) -> (PathBuf, PathBuf) {
    let v2 = home.join("drop-v2");
    copy_dir(drop, &v2);
    std::fs::write(v2.join("VERSION"), "2\n").unwrap();
    let bad = home.join("drop-bad");
    copy_dir(drop, &bad);
    let mut script = std::fs::read_to_string(bad.join("setupscript.sh")).unwrap();
    script.push_str("\nsudo rm -f /etc/nginx/sites-enabled/my_app\n");
    std::fs::write(bad.join("setupscript.sh"), script).unwrap();
    (v2, bad)
}

impl Harness {
    /// Bakes `dir` (with its setupscript.sh) on the cached Debian base as image `name`.
    pub fn bake(&self, name: &str, dir: &Path) {
        self.ok(&[
            "image",
            "bake",
            "--package",
            dir.to_str().unwrap(),
            "--script",
            "setupscript.sh",
            "--name",
            name,
        ]);
    }
}

/// A minimal HTTP/1.1 GET over a kept-alive connection; returns (status, body).
pub fn http_get(stream: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<(u16, String)> {
    http_get_host(stream, path, "lb")
}

/// [`http_get`] with the given `Host` header.
pub fn http_get_host(
    stream: &mut BufReader<TcpStream>,
    path: &str,
    host: &str,
) -> std::io::Result<(u16, String)> {
    write!(
        stream.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"
    )?;
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    get_host(addr, path, "lb")
}

/// [`get`] with the given `Host` header.
pub fn get_host(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to LB");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    http_get_host(&mut BufReader::new(s), path, host).expect("GET through the LB")
}

/// Keep-alive clients hammering the LB until stopped; counts successes and failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Load::start_host(addr, clients, "lb")
    }

    /// [`Load::start`] with the given `Host` header on every request.
    pub fn start_host(addr: SocketAddr, clients: usize, host: &str) -> Load {
        Load::start_with(
            addr,
            clients,
            host,
            "/page1",
            "You are currently on Page1.",
            2,
        )
    }

    /// Clients each sending `GET path` in a loop (a pause of `pause_ms` after each); an answer
    /// is ok when it is 200 and its body contains `expect`.
    pub fn start_with(
        addr: SocketAddr,
        clients: usize,
        host: &str,
        path: &str,
        expect: &str,
        pause_ms: u64,
    ) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (host, path, expect) = (host.to_string(), path.to_string(), expect.to_string());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(300);
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        if conn.is_none() {
                            match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                                    conn = Some(BufReader::new(s));
                                }
                                Err(_) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            }
                        }
                        match http_get_host(conn.as_mut().unwrap(), &path, &host) {
                            Ok((200, body)) if body.contains(&expect) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, _)) => {
                                eprintln!(
                                    "load: HTTP {status} at {:?}",
                                    std::time::SystemTime::now()
                                );
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                            Err(e) => {
                                eprintln!("load: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(pause_ms));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients; returns (ok, failed).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// SIGKILLs every process named `comm` inside the machine whose nspawn pid is given (processes
/// in the same pid namespace as the machine's init). Returns how many were killed.
pub fn kill_in_machine(nspawn_pid: u32, comm: &str) -> usize {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
            .unwrap_or_default();
    let init: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("machine init pid");
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).expect("pid namespace");
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let same_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|p| p == ns);
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if same_ns && name.trim() == comm {
            // SAFETY: kill(2) on a process inside a machine this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            n += 1;
        }
    }
    n
}

/// GET /status from the load balancer's admin socket (HTTP/1.1 over a unix socket).
pub fn lb_status(home: &Path) -> Value {
    let dir = std::fs::read_dir(home.join("lb"))
        .unwrap()
        .flatten()
        .next()
        .expect("an LB dir")
        .path();
    let mut s =
        std::os::unix::net::UnixStream::connect(dir.join("admin.sock")).expect("LB admin socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Tolerate chunked encoding: take the JSON object.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map(|i| i + 1).unwrap_or(body.len());
    serde_json::from_str(&body[start..end])
        .unwrap_or_else(|e| panic!("LB status not JSON ({e}): {resp}"))
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn healthy(vms: &[Value]) -> usize {
    vms.iter()
        .filter(|v| {
            v.pointer("/properties/instanceView/vmHealth/status/code")
                .and_then(Value::as_str)
                == Some("HealthState/healthy")
        })
        .count()
}

/// `git` in `dir` with a test identity and `main` as the default branch; (success, output).
pub fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("run git");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A harness whose home is `tag-<pid>` under the temp dir, mode 0700 like a home from mkdtemp
/// (the daemon must still let its jobs reach their build dirs); not started.
pub fn daemon_harness(tag: &str, subnet: &'static str, prefix: &'static str) -> Harness {
    use std::os::unix::fs::PermissionsExt;
    let home = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    Harness {
        home,
        api: SocketAddr::from(([127, 0, 0, 1], free_port())),
        serve: None,
        subnet,
        prefix,
        env: vec![],
    }
}

/// Waits (at most 120 s) for run `id` to complete; its record.
pub fn wait_run(h: &Harness, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = h.json(&["run", "show", &id.to_string()]);
        if r["status"] == "completed" {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} did not finish: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `scaleset up` running in the background; SIGINT (stop everything) when dropped.
pub struct Up(pub Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Harness {
    /// `scaleset up --no-live --capacity N --frontend F DIR` in the background (its stderr in
    /// `up.log` of the home); returns once it prints `Serving at`, panicking with the log if it
    /// does not within `timeout`.
    pub fn up(&self, dir: &Path, capacity: u32, frontend: SocketAddr, timeout: Duration) -> Up {
        let log = std::fs::File::create(self.home.join("up.log")).unwrap();
        let mut child = self
            .cmd()
            .args(["up", "--no-live", "--capacity", &capacity.to_string()])
            .arg("--frontend")
            .arg(frontend.to_string())
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("scaleset up");
        let stdout = child.stdout.take().unwrap();
        let up = Up(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Serving at") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("`scaleset up` did not serve:\n{}", self.up_log()));
        up
    }

    /// What `scaleset up` wrote to its stderr so far.
    pub fn up_log(&self) -> String {
        std::fs::read_to_string(self.home.join("up.log")).unwrap_or_default()
    }

    /// Every pipeline run, as `scaleset run list` shows them.
    pub fn runs(&self) -> Vec<Value> {
        self.json(&["run", "list", "-o", "json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for the release run triggered by CI run `ci` to complete; returns it. Panics with
    /// the CI run's log if that run fails.
    pub fn release_of(&self, ci: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let all = self.runs();
            let ci_run = all.iter().find(|r| r["id"] == ci).cloned();
            if let Some(r) = &ci_run {
                assert!(
                    r["status"] != "completed" || r["state"] == "succeeded",
                    "CI run {ci} failed:\n{}",
                    self.ok(&["run", "logs", &ci.to_string()])
                );
            }
            let rel = all.iter().find(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["run_id"] == ci))
            });
            if let Some(rel) = rel.filter(|r| r["status"] == "completed") {
                return rel.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no completed release for CI run {ci}: {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The run id in `git push`'s output (`remote: scaleset: queued run N ...`).
pub fn queued_run(pushed: &str) -> u64 {
    pushed
        .split("queued run ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the push names the queued run: {pushed}"))
}
