//! The daemon can't be starved: the real `scaleset serve` with real sockets. Bodies are read
//! only after authentication and only up to the route's limit (ARM 4 MiB, webhooks 25 MiB,
//! pushes streamed with a cap); idle and slow connections are closed after the header timeout;
//! a connection cap holds; load balancer frontends listen only where the daemon allows.
//! No machines boot; each test's daemon still sets up its own bridge, hence its own subnet.
//!
//! Needs root, systemd-nspawn, ip and git. Without them the tests are counted as skipped, except
//! under CI, where they fail.
mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000";

/// Whether the tests can run here ([`testkit::require`]: under CI a missing one is a failure).
fn prerequisites() -> bool {
    testkit::require(testkit::missing_root().or_else(|| {
        testkit::missing_tools(
            &["systemd-nspawn", "ip", "git"],
            "systemd-container iproute2 git",
        )
    }))
}

fn token(h: &Harness) -> String {
    std::fs::read_to_string(h.home.join("token"))
        .unwrap()
        .trim()
        .to_string()
}

/// The `scaleset serve` process's pid (the harness's child).
fn daemon_pid(h: &Harness) -> u32 {
    h.serve.as_ref().expect("daemon started").id()
}

/// A `/proc/<pid>/status` field in KiB (VmHWM: peak resident set; VmRSS: now).
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A response as the test reads it.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    /// Body bytes the client got out before the daemon answered and closed.
    sent: u64,
}

impl Reply {
    fn json(&self) -> Value {
        let body = self.body.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `head` then up to `len` body bytes (as `Content-Length`, or chunked when
/// `chunked`), from one reused 64 KiB buffer, while another thread reads the answer. Stops
/// writing when the daemon stops reading.
fn stream(api: SocketAddr, head: &str, len: u64, chunked: bool) -> Reply {
    let mut s = TcpStream::connect(api).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        r.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {len}\r\n")
    };
    let mut sent = 0u64;
    if s.write_all(format!("{head}{framing}Connection: close\r\n\r\n").as_bytes())
        .is_ok()
    {
        let buf = vec![b'{'; 64 << 10];
        while sent < len {
            let n = (len - sent).min(buf.len() as u64) as usize;
            let ok = if chunked {
                s.write_all(format!("{n:x}\r\n").as_bytes())
                    .and_then(|_| s.write_all(&buf[..n]))
                    .and_then(|_| s.write_all(b"\r\n"))
            } else {
                s.write_all(&buf[..n])
            };
            if ok.is_err() {
                break;
            }
            sent += n as u64;
        }
        if sent == len && chunked {
            let _ = s.write_all(b"0\r\n\r\n");
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let body = reader.join().unwrap();
    let status = body
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {body:?} (sent {sent})"));
    Reply { status, body, sent }
}

/// One small request on its own connection.
fn request(api: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> Reply {
    let auth = auth
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\n{auth}Content-Type: application/json\r\n"
    );
    let mut s = TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    Reply {
        status,
        body: text,
        sent: body.len() as u64,
    }
}

fn git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
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

/// The daemon must not have read what it refused: the client got `allowed` through, plus what
/// the daemon drops while the client reads the answer (32 MiB at most) and the kernel's socket
/// buffers (a few MiB on loopback).
fn assert_not_read(what: &str, r: &Reply, allowed: u64) {
    assert!(
        r.sent < allowed + 64 * MIB,
        "{what}: the client sent {} bytes before the answer",
        r.sent
    );
}

#[test]
fn gigabyte_bodies_are_refused_before_they_are_buffered() {
    if !prerequisites() {
        return;
    }
    let mut h = Harness::new(
        "sec-bodies",
        "10.213.220.0/24",
        "sb",
        vec![("SCALESET_MAX_PUSH_BYTES", (8 * MIB).to_string())],
    );
    h.start_serve();
    let (api, tok, pid) = (h.api, token(&h), daemon_pid(&h));
    let before = status_kib(pid, "VmHWM");

    // A mirror with a webhook secret, so that a signed webhook is worth reading.
    let ext = h.home.join("ext.git");
    assert!(git(&h.home, &["init", "-q", "--bare", ext.to_str().unwrap()]).0);
    let url = format!("file://{}", ext.display());
    h.ok(&[
        "repo",
        "create",
        "mir",
        "--mirror",
        &url,
        "--webhook-secret",
        "a-webhook-secret-0123",
    ]);
    h.ok(&["repo", "create", "app"]);

    let arm = format!("PUT {SUB}/resourceGroups/rg?api-version=2024-11-01 HTTP/1.1\r\nHost: x\r\n");
    let hook = |repo: &str, extra: &str| {
        format!(
            "POST /scaleset/hooks/{repo} HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n{extra}"
        )
    };
    let push = |auth: &str| {
        format!("POST /scaleset/git/app.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-git-receive-pack-request\r\n{auth}")
    };
    let bearer = format!("Authorization: Bearer {tok}\r\n");
    let signed = "X-Hub-Signature-256: sha256=00\r\n";
    // (what, request head, chunked, status, code, bytes the daemon may read)
    let cases: Vec<(&str, String, bool, u16, &str, u64)> = vec![
        (
            "ARM, no token",
            arm.clone(),
            false,
            401,
            "AuthenticationFailed",
            0,
        ),
        (
            "ARM, no token, chunked",
            arm.clone(),
            true,
            401,
            "AuthenticationFailed",
            0,
        ),
        (
            "webhook, unknown repo",
            hook("nope", signed),
            false,
            401,
            "AuthenticationFailed",
            0,
        ),
        (
            "webhook, no signature",
            hook("mir", ""),
            true,
            401,
            "AuthenticationFailed",
            0,
        ),
        (
            "webhook, signed, too long",
            hook("mir", signed),
            false,
            413,
            "RequestContentTooLarge",
            0,
        ),
        (
            "webhook, signed, chunked",
            hook("mir", signed),
            true,
            413,
            "RequestContentTooLarge",
            25 * MIB,
        ),
        (
            "push, no token",
            push(""),
            false,
            401,
            "AuthenticationFailed",
            0,
        ),
        (
            "push, no token, chunked",
            push(""),
            true,
            401,
            "AuthenticationFailed",
            0,
        ),
        // A push that declares more than the cap (a chunked one: the next test, with git).
        (
            "push over the cap",
            push(&bearer),
            false,
            413,
            "PushTooLarge",
            0,
        ),
    ];
    for (what, head, chunked, status, code, allowed) in &cases {
        let r = stream(api, head, GIB, *chunked);
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], *code, "{what}: {}", r.body);
        assert_not_read(what, &r, *allowed);
    }

    // An authenticated ARM body over 4 MiB: Azure's 413, whether sized or chunked.
    for chunked in [false, true] {
        let r = stream(api, &format!("{arm}{bearer}"), 5 * MIB, chunked);
        assert_eq!(r.status, 413, "{}", r.body);
        assert_eq!(
            r.json(),
            json!({"error": {"code": "RequestContentTooLarge",
                "message": "The request content size exceeds the maximum size of 4 MB."}})
        );
    }
    // Nothing was stored, and the daemon still answers.
    let r = request(
        api,
        "GET",
        &format!("{SUB}/resourceGroups/rg?api-version=2024-11-01"),
        Some(&tok),
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = request(
        api,
        "PUT",
        &format!("{SUB}/resourceGroups/rg?api-version=2024-11-01"),
        Some(&tok),
        r#"{"location":"local"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);

    let peak = status_kib(pid, "VmHWM");
    eprintln!("daemon VmHWM: {before} KiB at start, {peak} KiB after the 1 GiB bodies");
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn a_push_over_the_cap_fails_and_moves_no_ref() {
    if !prerequisites() {
        return;
    }
    let mut h = Harness::new(
        "sec-push",
        "10.213.221.0/24",
        "sp",
        vec![("SCALESET_MAX_PUSH_BYTES", (2 * MIB).to_string())],
    );
    h.start_serve();
    h.ok(&["repo", "create", "app"]);
    let remote = format!("http://x:{}@{}/scaleset/git/app.git", token(&h), h.api);
    let work = h.home.join("work");
    std::fs::create_dir_all(&work).unwrap();
    assert!(git(&work, &["init", "-q", "-b", "main"]).0);
    std::fs::write(work.join("a"), "small\n").unwrap();
    assert!(git(&work, &["add", "a"]).0);
    assert!(git(&work, &["commit", "-q", "-m", "small"]).0);
    let (ok, out) = git(&work, &["push", &remote, "main"]);
    assert!(ok, "{out}");
    let small = git(&work, &["rev-parse", "HEAD"]).1.trim().to_string();

    // 6 MB that does not compress: the pack is over the 2 MiB cap (git sends it chunked).
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..6_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(work.join("big"), noise).unwrap();
    assert!(git(&work, &["add", "big"]).0);
    assert!(git(&work, &["commit", "-q", "-m", "big"]).0);
    let (ok, out) = git(&work, &["push", &remote, "main"]);
    assert!(!ok, "a push over the cap was accepted: {out}");
    assert!(out.contains("413"), "{out}");
    let (_, refs) = git(&work, &["ls-remote", &remote, "refs/heads/main"]);
    assert_eq!(
        refs.split_whitespace().next(),
        Some(small.as_str()),
        "{refs}"
    );
    let log = std::fs::read_to_string(h.home.join("serve.log")).unwrap();
    assert!(
        log.contains("larger than this daemon's limit of 2097152 bytes"),
        "{log}"
    );
}

/// `/proc/<pid>/limits`' "Max open files" (soft, hard).
fn nofile(pid: u32) -> (String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let l = s.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let f: Vec<&str> = l.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

fn raise_own_nofile(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill and then to read.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
    assert!(
        r.rlim_cur >= want,
        "RLIMIT_NOFILE hard limit {} < {want}",
        r.rlim_cur
    );
}

/// Whether the daemon still holds `s` open: a read would block (no data, no EOF).
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let open = matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).unwrap();
    open
}

/// Waits until the daemon closed every connection (EOF or reset); returns how many it closed.
fn wait_closed(conns: &[TcpStream], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut closed = vec![false; conns.len()];
    while Instant::now() < deadline && closed.iter().any(|c| !c) {
        for (i, s) in conns.iter().enumerate() {
            if !closed[i] && !still_open(s) {
                closed[i] = true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    closed.iter().filter(|c| **c).count()
}

#[test]
fn a_thousand_idle_connections_do_not_starve_the_daemon() {
    if !prerequisites() {
        return;
    }
    raise_own_nofile(4096);
    let mut h = Harness::new(
        "sec-idle",
        "10.213.222.0/24",
        "si",
        vec![("SCALESET_HEADER_TIMEOUT_SECS", "6".into())],
    );
    h.start_serve();
    let (api, tok, pid) = (h.api, token(&h), daemon_pid(&h));
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "the daemon raises its soft limit of open files");

    // 1,000 connections that never send a byte, below the default cap of 1024.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(api).unwrap())
        .collect();
    let r = request(
        api,
        "GET",
        &format!("{SUB}/resourcegroups?api-version=2024-11-01"),
        Some(&tok),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let open = idle.iter().filter(|s| still_open(s)).count();
    assert_eq!(
        open, 1000,
        "the idle connections were open while the daemon answered"
    );
    let rss = status_kib(pid, "VmRSS");
    eprintln!("daemon VmRSS with 1,000 idle connections: {rss} KiB");
    assert!(rss < 100 * 1024, "RSS {rss} KiB");
    // The header timeout closes every one of them.
    assert_eq!(wait_closed(&idle, Duration::from_secs(60)), 1000);
    drop(idle);
    let peak = status_kib(pid, "VmHWM");
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");

    // Over the cap: with room for 100, 300 idle connections delay a client until the header
    // timeout frees slots; they do not shut it out.
    h.kill_serve();
    h.env = vec![
        ("SCALESET_HEADER_TIMEOUT_SECS", "2".into()),
        ("SCALESET_MAX_CONNECTIONS", "100".into()),
    ];
    h.start_serve();
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(api).unwrap()).collect();
    let r = request(
        api,
        "GET",
        &format!("{SUB}/resourcegroups?api-version=2024-11-01"),
        Some(&tok),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(wait_closed(&idle, Duration::from_secs(60)), 300);
}

fn lb_body(ip: &str) -> String {
    json!({
        "location": "local",
        "sku": {"name": "Standard"},
        "properties": {
            "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": ip}}],
            "backendAddressPools": [{"name": "be"}],
        }
    })
    .to_string()
}

/// An L7 load balancer (no backends) with one rule on `ip:port`.
fn lb_with_rule(ip: &str, port: u16) -> String {
    let mut v: Value = serde_json::from_str(&lb_body(ip)).unwrap();
    v["properties"]["loadBalancingRules"] = json!([{"name": "web", "properties":
        {"protocol": "Tcp", "frontendPort": port, "backendPort": 80}}]);
    v.to_string()
}

#[test]
fn lb_frontends_listen_only_on_allowed_addresses() {
    if !prerequisites() {
        return;
    }
    let mut h = Harness::new("sec-lb", "10.213.223.0/24", "sl", vec![]);
    h.start_serve();
    let (api, tok) = (h.api, token(&h));
    h.ok(&["group", "create", "-n", "rg"]);
    let lb = |name: &str| {
        format!("{SUB}/resourceGroups/rg/providers/Microsoft.Network/loadBalancers/{name}?api-version=2024-05-01")
    };
    for ip in ["0.0.0.0", "10.1.2.3", "::"] {
        let r = request(api, "PUT", &lb("open"), Some(&tok), &lb_body(ip));
        assert_eq!(r.status, 400, "{ip}: {}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["code"], "InvalidParameter", "{ip}: {}", r.body);
        let want = format!("Frontend IP configuration 'fe': privateIPAddress {ip} is outside the addresses load balancers may listen on (127.0.0.0/8, ::1/128).");
        assert!(
            e["message"].as_str().unwrap().starts_with(&want),
            "{ip}: {e}"
        );
        let r = request(api, "GET", &lb("open"), Some(&tok), "");
        assert_eq!(r.status, 404, "{ip}: nothing stored: {}", r.body);
    }
    let r = request(api, "PUT", &lb("local"), Some(&tok), &lb_body("127.0.0.1"));
    assert_eq!(r.status, 201, "{}", r.body);

    // The allowed ranges come from the daemon's configuration.
    h.kill_serve();
    h.env = vec![
        ("SCALESET_LB_ALLOWED_ADDRESSES", "127.0.0.5/32".into()),
        ("SCALESET_LB_MAX_CONNECTIONS", "7".into()),
        ("SCALESET_LB_HEADER_TIMEOUT_MS", "1500".into()),
    ];
    h.start_serve();
    let port = free_port();
    let r = request(
        api,
        "PUT",
        &lb("other"),
        Some(&tok),
        &lb_with_rule("127.0.0.1", port),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("(127.0.0.5/32)"), "{}", r.body);
    let r = request(
        api,
        "PUT",
        &lb("other"),
        Some(&tok),
        &lb_with_rule("127.0.0.5", port),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // The daemon hands its frontend limits to the LB process, whose frontend then cuts a
    // half-sent request head at the header timeout.
    let front = SocketAddr::from(([127, 0, 0, 5], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut slow = loop {
        if let Ok(s) = TcpStream::connect(front) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the LB frontend {front} never listened"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The listener is bound just before the config file is written: wait for the file.
    let limits = loop {
        let config = std::fs::read_dir(h.home.join("lb"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("config.json")).ok())
            .filter_map(|s| serde_json::from_str::<Value>(&s).ok())
            .find(|c| c["name"] == "other" && c["rules"].as_array().is_some_and(|r| r.len() == 1));
        if let Some(c) = config {
            break c["frontendLimits"].clone();
        }
        assert!(Instant::now() < deadline, "no config file for LB other");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        limits,
        json!({"maxConnections": 7, "headerTimeoutMs": 1500})
    );
    slow.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let r = slow.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    let list = h.json(&["network", "lb", "list", "-g", "rg"]);
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["local", "other"]);

    // A bad range is refused at start.
    h.kill_serve();
    let mut serve = h
        .cmd()
        .arg("serve")
        .env("SCALESET_LB_ALLOWED_ADDRESSES", "127.0.0.0/8,nope")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = serve.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            panic!("serve started with a bad --lb-allowed-addresses");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    serve
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("invalid --lb-allowed-addresses: `nope` is not an address range"),
        "{err}"
    );
}
