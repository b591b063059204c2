//! Real bakes: needs root, systemd-nspawn and debootstrap. The debootstrap
//! base is shared across tests and runs: `$SCALESET_BASE_CACHE`, else
//! `/var/tmp/scaleset-test-base`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{BakeSpec, ImageError, ImageStore};

fn base_cache() -> PathBuf {
    std::env::var_os("SCALESET_BASE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-test-base"))
}

/// Why the test cannot run here.
fn skip_reason() -> Option<String> {
    testkit::missing_root().or_else(|| {
        testkit::missing_tools(
            &["systemd-nspawn", "debootstrap"],
            "systemd-container debootstrap",
        )
    })
}

/// Temp dir removed (after unmounting anything below it) on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = PathBuf::from(format!(
            "/var/tmp/ss-imgtest-{tag}-{}-{n}",
            std::process::id()
        ));
        fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mps: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.0))
            .collect();
        mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mps {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_exec(p: &Path, content: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap(); // bake must chmod +x
}

const SCRIPT: &str = r#"#!/bin/sh
set -e
echo "hello $1 $2" > /etc/scaleset-test.txt
pwd > /etc/bake-pwd
test -f /deployTemp/pkg1/data/payload.txt
printf '[Unit]\nDescription=t\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n' > /etc/systemd/system/sstest.service
systemctl daemon-reload
systemctl enable sstest.service
systemctl start sstest.service
sudo touch /etc/sudo-worked
[ "$PIP_BREAK_SYSTEM_PACKAGES" = 1 ]
echo done
"#;

#[test]
fn bake_cache_failure_and_escape() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let t = TestDir::new("bake");
    let store = ImageStore::new(t.0.join("images"), base_cache());
    let t0 = Instant::now();
    let base = store
        .ensure_base("debian:bookworm", None, &mut std::io::stderr())
        .unwrap();
    eprintln!(
        "ensure_base: {:?} ({:.1}s)",
        base,
        t0.elapsed().as_secs_f64()
    );

    let pkg = t.0.join("src/pkg1");
    write_exec(&pkg.join("setupscript.sh"), SCRIPT);
    fs::create_dir_all(pkg.join("data")).unwrap();
    fs::write(pkg.join("data/payload.txt"), "payload").unwrap();
    let spec = BakeSpec {
        name: "first".into(),
        base: "debian:bookworm".into(),
        package_dir: pkg.clone(),
        script: "setupscript.sh".into(),
        args: vec!["big world".into(), "x".into()],
        network: false,
        mirror: None,
        host_network: true,
        cache: None,
    };
    let mut out = Vec::new();
    let t0 = Instant::now();
    let img = store.bake(&spec, &mut out).unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    eprintln!("bake: {:.1}s\n{out}", t0.elapsed().as_secs_f64());
    assert!(out.contains("done"), "{out}");
    assert!(
        out.contains("skipped: no running systemd during bake"),
        "{out}"
    );
    assert!(img.digest.starts_with("sha256:"));
    assert_eq!(img.layers.len(), 2);
    assert_eq!(img.layers[1], base);
    assert!(img.log.is_file());

    let layer = &img.layers[0];
    assert_eq!(
        fs::read_to_string(layer.join("etc/scaleset-test.txt")).unwrap(),
        "hello big world x\n"
    );
    assert_eq!(
        fs::read_to_string(layer.join("etc/bake-pwd")).unwrap(),
        "/deployTemp\n"
    );
    let wants = layer.join("etc/systemd/system/multi-user.target.wants/sstest.service");
    assert!(fs::symlink_metadata(&wants)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(layer.join("etc/sudo-worked").exists());
    assert_eq!(
        fs::read(layer.join("etc/machine-id")).unwrap_or_default(),
        b""
    );
    for gone in [
        "deployTemp",
        "usr/local/sbin/systemctl",
        "usr/sbin/policy-rc.d",
        "etc/sudoers.d/zz-scaleset-bake",
    ] {
        assert!(
            fs::symlink_metadata(layer.join(gone)).is_err(),
            "{gone} left in layer"
        );
    }
    assert!(store.verify(&img).unwrap());
    // Its bake's duration is recorded with it (for `/metrics`).
    assert!(img.bake_ms.is_some());
    assert_eq!(store.get("first").unwrap().as_ref(), Some(&img));

    // Same key → cache hit: the script does not run again (its log is only the hit), and the
    // new name is registered on the same layers. (Its speed is in bench/, not asserted here.)
    let mut log = Vec::new();
    let again = store
        .bake(
            &BakeSpec {
                name: "second".into(),
                ..spec.clone()
            },
            &mut log,
        )
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&log),
        format!(
            "scaleset: cache hit: second reuses layer {} of image first\n",
            img.digest
        )
    );
    assert_eq!(again.digest, img.digest);
    assert_eq!(again.layers, img.layers);
    assert!(again.bake_ms.is_some(), "a hit records its lookup's time");
    let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["first", "second"]);

    // Failing script: error, nothing registered, log kept.
    write_exec(
        &pkg.join("fail.sh"),
        "#!/bin/sh\necho about to fail\nexit 3\n",
    );
    let err = store
        .bake(
            &BakeSpec {
                name: "bad".into(),
                script: "fail.sh".into(),
                ..spec.clone()
            },
            &mut std::io::sink(),
        )
        .unwrap_err();
    match &err {
        ImageError::ScriptFailed { log, .. } => {
            assert!(fs::read_to_string(log).unwrap().contains("about to fail"))
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(store.get("bad").unwrap().is_none());
    eprintln!("failure message: {err}");

    // Script escaping the package.
    fs::write(t.0.join("src/x"), "#!/bin/sh\n").unwrap();
    for bad in ["../x", "/etc/passwd", "", "nope.sh"] {
        let err = store
            .bake(
                &BakeSpec {
                    name: "esc".into(),
                    script: bad.into(),
                    ..spec.clone()
                },
                &mut std::io::sink(),
            )
            .unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidSpec { .. }),
            "{bad}: {err}"
        );
    }
    // Symlink pointing out of the package.
    std::os::unix::fs::symlink("../x", pkg.join("link.sh")).unwrap();
    let err = store
        .bake(
            &BakeSpec {
                name: "esc".into(),
                script: "link.sh".into(),
                ..spec.clone()
            },
            &mut std::io::sink(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidSpec { .. }), "{err}");
    assert!(store.get("esc").unwrap().is_none());
    fs::remove_file(pkg.join("link.sh")).unwrap();
    // Any symlink in the package that leaves it is refused, naming it.
    for (link, target) in [("data/abs", "/etc/shadow"), ("data/up", "../../x")] {
        std::os::unix::fs::symlink(target, pkg.join(link)).unwrap();
        let err = store
            .bake(
                &BakeSpec {
                    name: "esc".into(),
                    ..spec.clone()
                },
                &mut std::io::sink(),
            )
            .unwrap_err();
        assert!(
            matches!(&err, ImageError::InvalidSpec { msg, .. } if msg.contains(link) && msg.contains("outside the package")),
            "{err}"
        );
        fs::remove_file(pkg.join(link)).unwrap();
    }
    // A link that stays inside the package is fine (checked by the bakes below).
    std::os::unix::fs::symlink("../setupscript.sh", pkg.join("data/inside")).unwrap();
    assert!(store.get("esc").unwrap().is_none());

    // A script that turns deprovisioned paths into links to host paths must
    // not make the host-side deprovision touch the host.
    let canary = t.0.join("canary");
    fs::create_dir_all(canary.join("apt")).unwrap();
    fs::write(canary.join("keep.log"), "k").unwrap();
    fs::write(canary.join("apt/keep.bin"), "k").unwrap();
    let evil = format!(
        "#!/bin/sh\nset -e\nrm -rf /var/log /var/cache/apt /root\nln -s {c} /var/log\nln -s {c}/apt /var/cache/apt\nln -s {c} /root\nrm -f /usr/local/sbin/systemctl\nln -s {c} /usr/local/sbin/systemctl\n",
        c = canary.display()
    );
    write_exec(&pkg.join("evil.sh"), &evil);
    let img_evil = store
        .bake(
            &BakeSpec {
                name: "evil".into(),
                script: "evil.sh".into(),
                ..spec.clone()
            },
            &mut std::io::sink(),
        )
        .unwrap();
    assert!(canary.join("keep.log").exists() && canary.join("apt/keep.bin").exists());
    store.delete(&img_evil.name).unwrap();

    // Re-baking a name with different content replaces its record; the old
    // layer goes when no image uses it any more.
    let evil2 = store
        .bake(
            &BakeSpec {
                name: "evil2".into(),
                script: "evil.sh".into(),
                ..spec.clone()
            },
            &mut std::io::sink(),
        )
        .unwrap();
    let replaced = store
        .bake(
            &BakeSpec {
                name: "evil2".into(),
                ..spec.clone()
            },
            &mut std::io::sink(),
        )
        .unwrap();
    assert_eq!(replaced.digest, img.digest);
    assert!(!evil2.layers[0].exists());
    store.delete("evil2").unwrap();
    assert!(layer.is_dir());

    // A bash script without `set -e` whose commands fail still bakes (its exit status is the
    // result, as in Azure), and the image keeps which top-level commands failed.
    write_exec(
        &pkg.join("sloppy.sh"),
        "#!/bin/bash\necho installing\nls /no-such-dir\nif false; then :; fi\ntrue\n",
    );
    let mut out = Vec::new();
    let sloppy = store
        .bake(
            &BakeSpec {
                name: "sloppy".into(),
                script: "sloppy.sh".into(),
                ..spec.clone()
            },
            &mut out,
        )
        .unwrap();
    assert_eq!(sloppy.warnings.len(), 1, "{:?}", sloppy.warnings);
    assert!(
        sloppy.warnings[0]
            .starts_with("setup script line 3: `ls /no-such-dir` exited with 2\n    installing"),
        "{:?}",
        sloppy.warnings
    );
    assert_eq!(
        store.get("sloppy").unwrap().unwrap().warnings,
        sloppy.warnings
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("WARNING: 1 top-level command(s) of the setup script failed"),
        "{out}"
    );
    let kept = fs::read_to_string(&sloppy.log).unwrap();
    assert!(
        kept.contains("  setup script line 3: `ls /no-such-dir` exited with 2"),
        "{kept}"
    );
    assert!(!sloppy.layers[0].join("deployTemp").exists());
    store.delete("sloppy").unwrap();

    // Delete: the layer survives while another image uses it.
    store.delete("second").unwrap();
    assert!(layer.is_dir());
    store.delete("first").unwrap();
    assert!(!layer.exists());
    assert!(store.list().unwrap().is_empty());
    store.delete("first").unwrap(); // idempotent
                                    // No bake leftovers.
    assert_eq!(fs::read_dir(t.0.join("images/tmp")).unwrap().count(), 0);
}

/// Builds a base from scratch (debootstrap, ~1 min, needs a Debian mirror)
/// with two concurrent callers: one builds, the other waits on the lock and
/// gets the same rootfs. Run with `cargo test -p image -- --ignored`.
#[test]
#[ignore]
fn ensure_base_from_scratch_concurrently() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let t = TestDir::new("base");
    let cache = t.0.join("bases");
    let t0 = Instant::now();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let cache = cache.clone();
            let root = t.0.join(format!("store{i}"));
            std::thread::spawn(move || {
                let store = ImageStore::new(root, cache);
                let mut log = Vec::new();
                let r = store.ensure_base("debian:bookworm", None, &mut log);
                (r.map_err(|e| e.to_string()), log.len())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("TIMING base build: {:.1}s", t0.elapsed().as_secs_f64());
    let a = results[0].0.clone().unwrap();
    let b = results[1].0.clone().unwrap();
    assert_eq!(a, b);
    // Exactly one of them ran debootstrap (and logged its output).
    assert!(
        results.iter().filter(|r| r.1 > 1000).count() == 1,
        "{results:?}"
    );
    for f in [
        "usr/bin/systemctl",
        "usr/bin/sudo",
        "sbin/ip",
        "etc/hosts",
        "sbin/init",
    ] {
        assert!(
            fs::symlink_metadata(a.join(f)).is_ok(),
            "{f} missing in base"
        );
    }
    assert_eq!(fs::read(a.join("etc/machine-id")).unwrap(), b"");
    assert!(fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp-")));
}

/// A networked bake joins its home's instance network; without `network.json` it is refused
/// before the script runs, saying what to do, and nothing is registered or left behind.
#[test]
fn networked_bake_without_a_home_network_is_refused() {
    if !testkit::require(skip_reason()) {
        return;
    }
    let t = TestDir::new("nonet");
    let store = ImageStore::new(t.0.join("images"), base_cache());
    let pkg = t.0.join("src/pkg");
    write_exec(&pkg.join("s.sh"), "#!/bin/sh\ntouch /etc/ran\n");
    let err = store
        .bake(
            &BakeSpec {
                name: "n".into(),
                base: "debian:bookworm".into(),
                package_dir: pkg,
                script: "s.sh".into(),
                args: vec![],
                network: true,
                host_network: true,
                cache: None,
                mirror: None,
            },
            &mut std::io::sink(),
        )
        .unwrap_err();
    let msg = err.to_string();
    let want = t.0.join("network.json").display().to_string();
    assert!(
        matches!(err, ImageError::InvalidSpec { .. })
            && msg.contains(&want)
            && msg.contains("--no-network"),
        "{msg}"
    );
    assert!(store.get("n").unwrap().is_none());
    assert_eq!(fs::read_dir(t.0.join("images/tmp")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(t.0.join("images/layers")).unwrap().count(), 0);
    // The store is root's alone.
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(t.0.join("images"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}
