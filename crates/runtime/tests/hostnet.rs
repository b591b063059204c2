//! The instance bridge's firewall with real namespaces (no machines booted): an instance's or a
//! bake's namespace cannot open a connection to the host, while the host still reaches
//! instances (the LB's probes and relays go that way), and a bake's port cannot reach an
//! instance. Needs root, iproute2 and nftables. Subnet 10.213.232.0/24.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use runtime::{
    attach_netns, bake_link, detach_netns, ensure_bridge, hostnet, teardown_network, NetnsLink,
    NetworkSpec,
};

/// Why the test cannot run here (root, iproute2, nftables).
fn skip_reason() -> Option<String> {
    testkit::missing_root().or_else(|| testkit::missing_tools(&["ip", "nft"], "iproute2 nftables"))
}

/// Removes the namespaces and the bridge (with its firewall), even on panic.
struct Cleanup(NetworkSpec, Vec<NetnsLink>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.1 {
            let _ = detach_netns("test", l);
        }
        let _ = teardown_network(&self.0);
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn can_connect(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// The host's first global IPv4 address outside `net` (its LAN address).
fn host_address(net: &NetworkSpec) -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|a| !net.subnet.contains(*a))
}

#[test]
fn bridge_namespaces_cannot_reach_the_host_but_the_host_reaches_instances() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let tag = format!("{:04x}", std::process::id() & 0xffff);
    let subnet: runtime::Ipv4Net = "10.213.232.0/24".parse().unwrap();
    let net = NetworkSpec {
        bridge: format!("ssfw{tag}"),
        subnet,
        gateway: subnet.host(1),
    };
    let inst = NetnsLink {
        netns: format!("ssfw-inst-{tag}"),
        veth_host: format!("fwih{tag}"),
        veth_guest: format!("fwig{tag}"),
    };
    let (bake, bake_ip) = bake_link(&net, 2);
    let _guard = Cleanup(net.clone(), vec![inst.clone(), bake.clone()]);
    ensure_bridge(&net).unwrap();
    let inst_ip = subnet.host(10);
    attach_netns("inst", &inst, inst_ip, &net).unwrap();
    attach_netns("bake", &bake, bake_ip, &net).unwrap();

    // A host service on every address (as a daemon started with --listen 0.0.0.0 would be).
    let host_srv = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = host_srv.local_addr().unwrap().port();
    let mut targets = vec![SocketAddr::from((net.gateway, port))];
    targets.extend(host_address(&net).map(|a| SocketAddr::from((a, port))));

    // A service inside the instance, answering one byte per connection.
    let inst_srv = in_netns(&inst.netns, || TcpListener::bind("0.0.0.0:8080").unwrap());
    std::thread::spawn(move || {
        for mut c in inst_srv.incoming().flatten() {
            let mut b = [0u8; 1];
            if c.read_exact(&mut b).is_ok() {
                let _ = c.write_all(&[b[0] + 1]);
            }
        }
    });

    // Host → instance works, replies included (the LB's probes and relays).
    let mut c =
        TcpStream::connect_timeout(&SocketAddr::from((inst_ip, 8080)), Duration::from_secs(5))
            .expect("host reaches the instance");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&[41]).unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 42);

    // Nothing on the bridge opens a connection to the host.
    for ns in [inst.netns.clone(), bake.netns.clone()] {
        for t in targets.clone() {
            let ok = in_netns(&ns, move || can_connect(t));
            assert!(!ok, "{ns} reached the host at {t}");
        }
    }
    // A bake's port is cut off from the instances.
    let ok = in_netns(&bake.netns, move || {
        can_connect(SocketAddr::from((inst_ip, 8080)))
    });
    assert!(!ok, "the bake reached the instance");

    // Control: without the firewall the same attempts succeed, so the rules are what blocks.
    hostnet::remove_firewall(&net).unwrap();
    let t = targets[0];
    assert!(
        in_netns(&inst.netns, move || can_connect(t)),
        "without the firewall the instance should reach {t}"
    );
    assert!(in_netns(&bake.netns, move || can_connect(
        SocketAddr::from((inst_ip, 8080))
    )));
    drop(host_srv);
}
