//! Bakes and imports written the way an attacker would (issue #11, "Bakes are sandboxed"): real
//! bakes on the shared debootstrap base through `scaleset image bake` / `image import`.
//! Each attempt records what it got into a file of the image it bakes; the test asserts on it.
//! Subnets: 10.213.230.0/24 (network probes), 10.213.231.0/24 (capabilities + apt),
//! 10.213.233.0/24 and 10.213.234.0/24 (no network used), 10.213.235.0/24 (HTTPS with the host's trust),
//! 10.213.236.0/24 (download caches).
mod common;

use common::{base_cache, skip_reason, Harness};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Root, nspawn, debootstrap, ip and nft ([`testkit::require`]: under CI a missing one fails).
fn can_run() -> bool {
    testkit::require(skip_reason().or_else(|| testkit::missing_tools(&["nft"], "nftables")))
}

fn write_script(pkg: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(pkg).unwrap();
    std::fs::write(pkg.join(name), body).unwrap();
    std::fs::set_permissions(pkg.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn bake(h: &Harness, name: &str, pkg: &Path, script: &str, extra: &[&str]) {
    let mut args = vec![
        "image",
        "bake",
        "--package",
        pkg.to_str().unwrap(),
        "--script",
        script,
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    h.ok(&args);
}

/// The top layer of image `name` in the harness's store.
fn top_layer(h: &Harness, name: &str) -> PathBuf {
    let store = image::ImageStore::new(h.home.join("images"), base_cache());
    store.get(name).unwrap().expect("image registered").layers[0].clone()
}

/// `key → trimmed content` of every file in `dir`.
fn results(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            let v = std::fs::read_to_string(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                v.trim().to_string(),
            )
        })
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The host's first global IPv4 address outside the scaleset ranges (its LAN address).
fn host_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next().map(str::to_string))
        .find(|a| !a.starts_with("10.213."))
}

/// A listener that counts the connections it accepts.
fn counting_listener(addr: &str) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind(addr).unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                n2.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, n)
}

const PROBE: &str = r#"#!/bin/bash
# args: loopback-port any-port daemon-port gateway host-ip home
out=/etc/sectest
mkdir -p "$out"
try() { if timeout 5 bash -c "echo > /dev/tcp/$1/$2" 2>/dev/null; then echo open; else echo blocked; fi; }
try 127.0.0.1 "$1" > "$out/host-loopback"
try 127.0.0.1 "$3" > "$out/daemon-loopback"
try "$4" "$3" > "$out/daemon-gateway"
try "$4" "$2" > "$out/host-gateway"
try "$5" "$2" > "$out/host-lan"
if [ -e "$6" ]; then echo visible; else echo absent; fi > "$out/home"
if getent hosts deb.debian.org > /dev/null; then echo ok; else echo failed; fi > "$out/dns"
try deb.debian.org 80 > "$out/outbound"
exit 0
"#;

/// (a) A bake script cannot reach the daemon, the host's loopback or any host address, and
/// sees none of `$SCALESET_HOME`; name lookups and outbound TCP work (through the NAT).
#[test]
fn bake_cannot_reach_the_host_but_reaches_out() {
    if !can_run() {
        return;
    }
    let mut h = Harness::new("secbake-net", "10.213.230.0/24", "sbn", vec![]);
    h.start_serve();
    assert_eq!(mode(&h.home.join("machines")), 0o700);
    let (loop_port, loop_hits) = counting_listener("127.0.0.1:0");
    let (any_port, any_hits) = counting_listener("0.0.0.0:0");
    let host_ip = host_address().expect("the host has a LAN address");
    let pkg = h.home.join("pkg-probe");
    write_script(&pkg, "probe.sh", PROBE);
    let home = h.home.to_string_lossy().into_owned();
    let (lp, ap, dp) = (
        loop_port.to_string(),
        any_port.to_string(),
        h.api.port().to_string(),
    );
    bake(
        &h,
        "probe",
        &pkg,
        "probe.sh",
        &["--args", &lp, &ap, &dp, "10.213.230.1", &host_ip, &home],
    );
    let r = results(&top_layer(&h, "probe").join("etc/sectest"));
    eprintln!("bake network probes: {r:?}");
    let want: BTreeMap<String, String> = [
        ("host-loopback", "blocked"),
        ("daemon-loopback", "blocked"),
        ("daemon-gateway", "blocked"),
        ("host-gateway", "blocked"),
        ("host-lan", "blocked"),
        ("home", "absent"),
        ("dns", "ok"),
        ("outbound", "open"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(r, want);
    assert_eq!(loop_hits.load(Ordering::SeqCst), 0);
    assert_eq!(any_hits.load(Ordering::SeqCst), 0);
    // The listeners were live: the host itself gets through.
    std::net::TcpStream::connect(("127.0.0.1", loop_port)).unwrap();
    std::net::TcpStream::connect((host_ip.as_str(), any_port)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while loop_hits.load(Ordering::SeqCst) + any_hits.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "listeners not live");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The bake's namespace and veth are gone with it.
    let ns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    // This home's bake slots only: other tests bake at the same time.
    let net = runtime::NetworkSpec::load(&h.home.join("network.json"))
        .unwrap()
        .expect("the daemon saved its network");
    for slot in runtime::BAKE_SLOTS {
        let (link, _) = runtime::bake_link(&net, slot);
        let left = ns
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&link.netns));
        assert!(!left, "bake netns {} left behind: {ns}", link.netns);
    }
}

const SUID: &str = r#"#!/bin/sh
set -e
cp /bin/bash /usr/local/bin/rootsh
chmod 4755 /usr/local/bin/rootsh
"#;

/// (b) A bake leaves a setuid-root bash in its layer; the runner user cannot execute it (or
/// even reach it) from the host, because the store, the base cache and the machines are 0700.
#[test]
fn setuid_shell_from_a_bake_is_out_of_the_runners_reach() {
    if !can_run() {
        return;
    }
    if !testkit::require(testkit::missing_user("scaleset-runner")) {
        return;
    }
    let h = Harness::new("secbake-suid", "10.213.233.0/24", "sbs", vec![]);
    let pkg = h.home.join("pkg-suid");
    write_script(&pkg, "suid.sh", SUID);
    bake(&h, "suid", &pkg, "suid.sh", &["--no-network"]);
    let shell = top_layer(&h, "suid").join("usr/local/bin/rootsh");
    let md = std::fs::symlink_metadata(&shell).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid()),
        (0o4755, 0),
        "the setuid shell is in the layer"
    );
    assert_eq!(mode(&h.home.join("images")), 0o700);
    assert_eq!(mode(&base_cache()), 0o700);
    // runuser, not setpriv: setpriv keeps root's capabilities until the exec, so its path
    // lookup would still pass the 0700 directories.
    let out = Command::new("runuser")
        .args(["-u", "scaleset-runner", "--"])
        .arg(&shell)
        .args(["-p", "-c", "id -u"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the runner ran the setuid shell: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert!(out.stdout.is_empty());
}

// ---------------------------------------------------------------------------------------------
// (c) imports
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Entry<'a> {
    File(&'a str),
    Dir(&'a str),
    Char(&'a str, u32, u32),
    Block(&'a str, u32, u32),
    Symlink(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

/// A header whose name and link name are written raw: the tar crate refuses to build `..` or
/// absolute names, which is exactly what an attacker's archive has.
fn raw_header(kind: tar::EntryType, name: &str, link: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Symlink {
        0o777
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = match e {
            Entry::File(p) => raw_header(T::Regular, p, "", 4),
            Entry::Dir(p) => raw_header(T::Directory, p, "", 0),
            Entry::Char(p, ..) => raw_header(T::Char, p, "", 0),
            Entry::Block(p, ..) => raw_header(T::Block, p, "", 0),
            Entry::Symlink(p, t) => raw_header(T::Symlink, p, t, 0),
            Entry::Hard(p, t) => raw_header(T::Link, p, t, 0),
        };
        if let Entry::Char(_, ma, mi) | Entry::Block(_, ma, mi) = e {
            h.set_device_major(*ma).unwrap();
            h.set_device_minor(*mi).unwrap();
            h.set_cksum();
        }
        let data: &[u8] = if matches!(e, Entry::File(_)) {
            b"evil"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A `docker save` archive whose only layer is `layer`; `outer` adds raw outer entries.
fn docker_save(dest: &Path, layer: &[u8], outer: &[(&str, tar::EntryType, &str)]) {
    let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["evil:1"],
        "Layers": ["l1/layer.tar"]}]);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let mut b = tar::Builder::new(Vec::new());
    let mut files: Vec<(&str, Vec<u8>)> = vec![("manifest.json", manifest), ("cfg.json", cfg)];
    if outer.is_empty() {
        files.push(("l1/layer.tar", layer.to_vec()));
    }
    for (p, data) in &files {
        let h = raw_header(tar::EntryType::Regular, p, "", data.len() as u64);
        b.append(&h, data.as_slice()).unwrap();
    }
    for (p, kind, link) in outer {
        b.append(&raw_header(*kind, p, link, 0), &b""[..]).unwrap();
    }
    std::fs::write(dest, b.into_inner().unwrap()).unwrap();
}

/// (c) `docker save` tarballs with device nodes, `..` and absolute entries, escaping links:
/// each import fails naming the entry, nothing is imported, nothing is written outside.
#[test]
fn import_refuses_device_nodes_and_escaping_entries() {
    if !can_run() {
        return;
    }
    let h = Harness::new("secbake-imp", "10.213.234.0/24", "sbi", vec![]);
    let work = h.home.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let ok_entries = [Entry::Dir("etc"), Entry::File("etc/motd")];
    type Case<'a> = (
        &'a str,
        Vec<Entry<'a>>,
        Vec<(&'a str, tar::EntryType, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("chardev", vec![Entry::Dir("dev"), Entry::Char("dev/mem", 1, 1)], vec![], "\"dev/mem\" is a character device node (1:1)"),
        ("blockdev", vec![Entry::Block("sda", 8, 0)], vec![], "\"sda\" is a block device node (8:0)"),
        ("dotdot", vec![Entry::File("../escape")], vec![], "\"../escape\" has a '..' component"),
        ("deepdotdot", vec![Entry::Dir("etc"), Entry::File("etc/../../escape")], vec![], "\"etc/../../escape\" has a '..' component"),
        ("absolute", vec![Entry::File("/escape-abs")], vec![], "\"/escape-abs\" has an absolute path"),
        ("symlink", vec![Entry::Dir("etc"), Entry::Symlink("etc/shadow-link", "../../../../etc/shadow")], vec![], "\"etc/shadow-link\" is a symlink to \"../../../../etc/shadow\", which points outside the image"),
        ("hardlink", vec![Entry::Hard("passwd", "../../etc/passwd")], vec![], "hard link \"passwd\" to \"../../etc/passwd\""),
        ("outer-symlink", vec![], vec![("l1", tar::EntryType::Directory, ""), ("l1/layer.tar", tar::EntryType::Symlink, "/etc/passwd")], "\"l1/layer.tar\" is a symlink to the absolute path \"/etc/passwd\""),
        ("outer-dotdot", vec![], vec![("../escape-outer", tar::EntryType::Regular, "")], "\"../escape-outer\" has a '..' component"),
    ];
    // Control: the same archive shape with harmless entries imports.
    let good = work.join("good.tar");
    docker_save(&good, &layer_tar(&ok_entries), &[]);
    h.ok(&[
        "image",
        "import",
        "--source",
        good.to_str().unwrap(),
        "--name",
        "good",
    ]);
    let store_dir = h.home.join("images");
    let count = |d: &str| {
        std::fs::read_dir(store_dir.join(d))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let (images0, layers0) = (count("images"), count("layers"));
    assert_eq!((images0, layers0), (1, 1));
    for (tag, entries, outer, want) in &cases {
        let src = work.join(format!("{tag}.tar"));
        let mut all = ok_entries.to_vec();
        all.extend(entries.iter().copied());
        docker_save(&src, &layer_tar(&all), outer);
        let (ok, out, err) = h.run(&[
            "image",
            "import",
            "--source",
            src.to_str().unwrap(),
            "--name",
            "evil",
        ]);
        assert!(!ok, "{tag}: import succeeded: {out}");
        assert!(
            err.contains(want),
            "{tag}: error does not name the entry: {err}"
        );
        assert!(err.contains("nothing was imported"), "{tag}: {err}");
        eprintln!("{tag}: {}", err.trim());
        assert_eq!(
            (count("images"), count("layers"), count("tmp")),
            (images0, layers0, 0),
            "{tag}"
        );
    }
    // Nothing landed outside the store (or anywhere an escaping entry would have put it).
    for p in [
        h.home.join("escape"),
        h.home.join("escape-outer"),
        store_dir.join("escape"),
        store_dir.join("tmp/escape"),
        work.join("escape"),
        PathBuf::from("/escape-abs"),
        PathBuf::from("/tmp/escape"),
    ] {
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{} was written",
            p.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (d) capabilities
// ---------------------------------------------------------------------------------------------

const RAWSOCK_C: &str = r#"#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/if_ether.h>
int main(void) {
  int a = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
  printf("inet-raw %s\n", a < 0 ? strerror(errno) : "ok");
  int b = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  printf("packet-raw %s\n", b < 0 ? strerror(errno) : "ok");
  return 0;
}
"#;

const CAPS: &str = r#"#!/bin/bash
set -e
out=/etc/sectest
mkdir -p "$out"
/deployTemp/pkg-caps/rawsock > "$out/rawsock"
grep CapEff /proc/self/status | awk '{print $2}' > "$out/capeff"
if mknod /tmp/null c 1 3 2>/dev/null; then echo created; else echo denied; fi > "$out/mknod-char"
if mknod /root/sda b 8 0 2>/dev/null; then echo created; else echo denied; fi > "$out/mknod-block"
# What setup scripts do: apt, a service user, ownership, units.
apt-get update -qq
apt-get install -y -qq --no-install-recommends iputils-ping > /dev/null
cat /proc/sys/net/ipv4/ping_group_range | tr '\t' ' ' > "$out/ping-range"
if ping -c1 -W2 127.0.0.1 > /dev/null 2>&1; then echo ok; else echo failed; fi > "$out/ping"
useradd --system --no-create-home --shell /usr/sbin/nologin svcuser
install -d -o svcuser -g svcuser /var/lib/svc
stat -c %U /var/lib/svc > "$out/chown"
printf '[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/svc.service
systemctl enable svc.service
test -L /etc/systemd/system/multi-user.target.wants/svc.service && echo enabled > "$out/unit"
"#;

/// (d) No raw or packet sockets and no device nodes inside a bake, while apt installs, useradd,
/// chown and unit enabling work as setup scripts need them.
#[test]
fn bake_has_no_raw_sockets_or_mknod_and_apt_still_works() {
    if !can_run() {
        return;
    }
    let h = Harness::new("secbake-caps", "10.213.231.0/24", "sbc", vec![]);
    let pkg = h.home.join("pkg-caps");
    write_script(&pkg, "caps.sh", CAPS);
    std::fs::write(h.home.join("rawsock.c"), RAWSOCK_C).unwrap();
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(pkg.join("rawsock"))
        .arg(h.home.join("rawsock.c"))
        .status();
    let no_cc =
        "no static C toolchain (cc -static; scripts/install-deps.sh installs gcc libc6-dev)";
    if !testkit::require((!cc.is_ok_and(|s| s.success())).then_some(no_cc)) {
        return;
    }
    // Control: as root on the host the same program gets both sockets.
    let host = Command::new(pkg.join("rawsock")).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&host.stdout),
        "inet-raw ok\npacket-raw ok\n"
    );
    bake(&h, "caps", &pkg, "caps.sh", &[]);
    let layer = top_layer(&h, "caps");
    let r = results(&layer.join("etc/sectest"));
    eprintln!("bake capability probes: {r:?}");
    assert_eq!(
        r["rawsock"],
        "inet-raw Operation not permitted\npacket-raw Operation not permitted"
    );
    let capeff = u64::from_str_radix(&r["capeff"], 16).unwrap();
    for (bit, name) in [
        (13, "CAP_NET_RAW"),
        (27, "CAP_MKNOD"),
        (12, "CAP_NET_ADMIN"),
        (21, "CAP_SYS_ADMIN"),
    ] {
        assert_eq!(
            capeff & (1 << bit),
            0,
            "{name} is in the bake's set {capeff:x}"
        );
    }
    for (bit, name) in [
        (0, "CAP_CHOWN"),
        (1, "CAP_DAC_OVERRIDE"),
        (3, "CAP_FOWNER"),
        (6, "CAP_SETGID"),
        (7, "CAP_SETUID"),
    ] {
        assert_ne!(capeff & (1 << bit), 0, "{name} is missing from {capeff:x}");
    }
    assert_eq!(
        (r["mknod-char"].as_str(), r["mknod-block"].as_str()),
        ("denied", "denied")
    );
    // Ping has neither a raw socket nor (with the namespace's default range "1 0") an ICMP one.
    assert_eq!(r["ping-range"], "1 0");
    assert_eq!(r["ping"], "failed");
    assert_eq!(
        (r["chown"].as_str(), r["unit"].as_str()),
        ("svcuser", "enabled")
    );
    assert!(
        layer.join("usr/bin/ping").is_file(),
        "apt installed iputils-ping"
    );
    for dev in ["tmp/null", "root/sda"] {
        assert!(
            std::fs::symlink_metadata(layer.join(dev)).is_err(),
            "{dev} in the layer"
        );
    }
}

const HTTPS: &str = r#"#!/bin/bash
out=/etc/httpstest
mkdir -p "$out"
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates > /dev/null
curl -sS -o /dev/null -w '%{http_code}' https://pypi.org/simple/flask/ > "$out/pypi" 2> "$out/pypi-error"
echo "exit $?" >> "$out/pypi"
env | grep -c '^PIP_CERT=' > "$out/pip-cert-var" || true
"#;

/// Bakes reach HTTPS the way the host does (#13): a networked bake gets the host's CA bundle and
/// proxy settings for its script only, never in the image; `--no-host-network` opts out.
#[test]
fn bake_reaches_https_with_the_hosts_trust_and_keeps_none_of_it() {
    if !can_run() {
        return;
    }
    let h = Harness::new("secbake-https", "10.213.235.0/24", "sbh", vec![]);
    let pkg = h.home.join("pkg-https");
    write_script(&pkg, "https.sh", HTTPS);
    bake(&h, "https", &pkg, "https.sh", &[]);
    let layer = top_layer(&h, "https");
    let r = results(&layer.join("etc/httpstest"));
    assert_eq!(r["pypi"], "200exit 0", "{r:?}");
    assert_eq!(r["pip-cert-var"], "1");
    // Neither the bundle nor the settings are in the image.
    assert!(!layer.join("deployTemp").exists());
    let grep = Command::new("grep")
        .args(["-rlI", "--", image::hostenv::GUEST_CA])
        .arg(&layer)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
    // Opted out: the guest trusts only Debian's CAs. Where the host's outbound HTTPS is
    // inspected by a CA of its own (this kind of machine), that fails verification.
    let pkg = h.home.join("pkg-https-off");
    write_script(&pkg, "https.sh", &format!("{HTTPS}# opted out\n"));
    bake(&h, "https-off", &pkg, "https.sh", &["--no-host-network"]);
    let r = results(&top_layer(&h, "https-off").join("etc/httpstest"));
    assert_eq!(r["pip-cert-var"], "0", "{r:?}");
    if host_has_own_cas() {
        assert_eq!(r["pypi"], "000exit 60", "{r:?}");
    }
}

/// CAs the host added to its trust store beyond the distribution's (an inspecting proxy's).
fn host_has_own_cas() -> bool {
    std::fs::read_dir("/usr/local/share/ca-certificates")
        .map(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "crt"))
        })
        .unwrap_or(false)
}

const CACHED: &str = r#"#!/bin/bash
apt-get update
apt-get install -y --no-install-recommends tree
echo "$PIP_CACHE_DIR" > /etc/pip-cache-dir
touch "$PIP_CACHE_DIR/seen-by-$1"
"#;

/// A download cache per scope (#13): a rebake of the same scope downloads nothing apt already
/// fetched (packages, and the package lists: `apt-get update` fetches only the release file),
/// another scope starts empty, and nothing of the cache is in the images.
#[test]
fn download_cache_is_shared_within_a_scope_only() {
    if !can_run() {
        return;
    }
    let h = Harness::new("secbake-cache", "10.213.236.0/24", "sbd", vec![]);
    let bake_as = |name: &str, scope: &str| -> String {
        let pkg = h.home.join(format!("pkg-{name}"));
        // A different package each time: a rebake, not a cache hit.
        write_script(&pkg, "cached.sh", &format!("{CACHED}# {name}\n"));
        bake(
            &h,
            name,
            &pkg,
            "cached.sh",
            &["--download-cache", scope, "--args", name],
        );
        let store = image::ImageStore::new(h.home.join("images"), base_cache());
        std::fs::read_to_string(store.get(name).unwrap().unwrap().log).unwrap()
    };
    let first = bake_as("one", "repo:a");
    assert!(!first.contains("Need to get 0 B"), "{first}");
    assert!(first.contains("Translation-en"), "{first}");
    let again = bake_as("two", "repo:a");
    assert!(again.contains("Need to get 0 B"), "{again}");
    // The lists the first bake fetched are kept: only the release file is checked again.
    assert!(!again.contains("Translation-en"), "{again}");
    assert!(!again.contains("Packages ["), "{again}");
    let other = bake_as("three", "repo:b");
    assert!(!other.contains("Need to get 0 B"), "{other}");
    assert!(other.contains("Translation-en"), "{other}");
    // One folder per scope (each with its lock file beside it).
    let caches: Vec<PathBuf> = std::fs::read_dir(h.home.join("images/download-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(caches.len(), 2, "{caches:?}");
    let seen: Vec<Vec<String>> = caches
        .iter()
        .map(|c| {
            let mut v: Vec<String> = std::fs::read_dir(c.join("pip"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        })
        .collect();
    assert!(
        seen.contains(&vec!["seen-by-one".to_string(), "seen-by-two".into()]),
        "{seen:?}"
    );
    assert!(
        seen.contains(&vec!["seen-by-three".to_string()]),
        "{seen:?}"
    );
    // An image whose apt config folder points at the host: a bake on it with a cache must not
    // write the cache's drop-in through the link.
    let canary = h.home.join("canary-apt");
    std::fs::create_dir_all(&canary).unwrap();
    let pkg = h.home.join("pkg-planter");
    write_script(
        &pkg,
        "plant.sh",
        &format!(
            "#!/bin/bash\nrm -rf /etc/apt/apt.conf.d\nln -s {} /etc/apt/apt.conf.d\n",
            canary.display()
        ),
    );
    bake(&h, "planter", &pkg, "plant.sh", &[]);
    let pkg = h.home.join("pkg-on-planter");
    write_script(&pkg, "noop.sh", "#!/bin/bash\ntrue\n");
    bake(
        &h,
        "on-planter",
        &pkg,
        "noop.sh",
        &["--base", "planter", "--download-cache", "repo:a"],
    );
    assert_eq!(
        std::fs::read_dir(&canary).unwrap().count(),
        0,
        "written through the link"
    );
    for name in ["one", "two", "three"] {
        let layer = top_layer(&h, name);
        assert_eq!(
            std::fs::read_to_string(layer.join("etc/pip-cache-dir")).unwrap(),
            "/var/cache/scaleset-pip\n"
        );
        assert!(!layer.join("var/cache/scaleset-pip").exists(), "{name}");
        assert!(
            !layer
                .join("etc/apt/apt.conf.d/zz-scaleset-download-cache")
                .exists(),
            "{name}"
        );
        let debs = std::fs::read_dir(layer.join("var/cache/apt/archives"))
            // Regular files only: deprovisioning leaves whiteouts for the base's own archives.
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(debs, 0, "{name}");
        let lists = std::fs::read_dir(layer.join("var/lib/apt/lists"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(lists, 0, "{name}: the package lists are in the layer");
    }
    // A bake that leaves a link to a host folder in its scope's cache (where the next bake's
    // folders are made): the next bake of the scope makes nothing through it and starts the
    // cache afresh.
    let canary = h.home.join("canary-archives");
    std::fs::create_dir_all(&canary).unwrap();
    let pkg = h.home.join("pkg-link-archives");
    write_script(
        &pkg,
        "link.sh",
        &format!(
            "#!/bin/bash\nrm -rf /var/cache/apt/archives\nln -s {} /var/cache/apt/archives\n",
            canary.display()
        ),
    );
    bake(
        &h,
        "link-archives",
        &pkg,
        "link.sh",
        &["--download-cache", "repo:b"],
    );
    let after = bake_as("four", "repo:b");
    assert!(
        after.contains("download cache of `repo:b` emptied"),
        "{after}"
    );
    assert_eq!(
        std::fs::read_dir(&canary).unwrap().count(),
        0,
        "made through the link"
    );
}

/// The daemon's own writes into a bake's root (the package copied to `/deployTemp`, the bake-time
/// shims) never go through a link the image planted: an imported image whose `/deployTemp` is
/// an absolute link to a host folder, and a baked image whose `/usr/local/sbin` (where the
/// `systemctl` shim goes) is one.
#[test]
fn bake_writes_never_follow_links_the_image_planted() {
    if !can_run() {
        return;
    }
    let h = Harness::new("secbake-links", "10.213.237.0/24", "sbl", vec![]);
    let canary = h.home.join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    let empty = |d: &Path| std::fs::read_dir(d).unwrap().count() == 0;
    // (1) Imported: `deployTemp -> <canary>` (absolute links are normal in images).
    let src = h.home.join("linked.tar");
    let link = canary.to_str().unwrap();
    let entries = [Entry::Dir("etc"), Entry::Symlink("deployTemp", link)];
    docker_save(&src, &layer_tar(&entries), &[]);
    h.ok(&[
        "image",
        "import",
        "--source",
        src.to_str().unwrap(),
        "--name",
        "linked",
    ]);
    let pkg = h.home.join("pkg-static");
    write_script(&pkg, "run.sh", "#!/bin/sh\ntrue\n");
    let (ok, _, err) = h.run(&[
        "image",
        "bake",
        "--package",
        pkg.to_str().unwrap(),
        "--script",
        "run.sh",
        "--name",
        "on-linked",
        "--base",
        "linked",
    ]);
    // The base has no /bin/sh, so the bake is refused, but only after the copy.
    assert!(!ok && err.contains("has no /bin/sh"), "{err}");
    assert!(
        empty(&canary),
        "the package was copied through the image's link"
    );
    // (2) Baked: a script that points `/usr/local/sbin` at the canary.
    let pkg = h.home.join("pkg-planter");
    let plant = format!("#!/bin/bash\nrm -rf /usr/local/sbin\nln -s {link} /usr/local/sbin\n");
    write_script(&pkg, "plant.sh", &plant);
    bake(&h, "planter", &pkg, "plant.sh", &[]);
    let pkg = h.home.join("pkg-on-planter");
    write_script(
        &pkg,
        "noop.sh",
        "#!/bin/bash\nsystemctl --version >/dev/null || true\n",
    );
    bake(&h, "on-planter", &pkg, "noop.sh", &["--base", "planter"]);
    assert!(
        empty(&canary),
        "a shim was written through the image's link"
    );
}
