//! Bases as images (scratch, OCI layout / docker save import), layered
//! bakes, verify on use, gc, export, failure cases, progress, timings.
//! Needs root and systemd-nspawn; the debian tests share the cached base
//! (`$SCALESET_BASE_CACHE`, else `/var/tmp/scaleset-test-base`). No network.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::{BakeEvent, BakeSpec, ImageError, ImageStore};
use sha2::{Digest, Sha256};

fn base_cache() -> PathBuf {
    std::env::var_os("SCALESET_BASE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/scaleset-test-base"))
}

/// Why the test cannot run here (root, systemd-nspawn and, for Debian bakes, debootstrap).
fn skip_reason(debian: bool) -> Option<String> {
    let tools: &[&str] = if debian {
        &["systemd-nspawn", "debootstrap"]
    } else {
        &["systemd-nspawn"]
    };
    testkit::missing_root()
        .or_else(|| testkit::missing_tools(tools, "systemd-container debootstrap"))
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
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// building test archives
// ---------------------------------------------------------------------------

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            E::File(p, c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, p, c.as_bytes()).unwrap();
            }
            E::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn layers() -> (Vec<u8>, Vec<u8>) {
    let l1 = layer_tar(&[
        E::Dir("etc"),
        E::File("etc/a", "a"),
        E::File("etc/b", "b"),
        E::Link("etc/l", "a"),
        E::Hard("etc/a2", "etc/a"),
        E::Dir("opt"),
        E::Dir("opt/gone"),
        E::File("opt/gone/y", "y"),
    ]);
    let l2 = layer_tar(&[
        E::File("etc/.wh.b", ""),
        E::File("etc/c", "c"),
        E::Dir("opt/gone"),
        E::File("opt/gone/.wh..wh..opq", ""),
        E::File("opt/gone/new", "n"),
    ]);
    (l1, l2)
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A `docker save` style archive of the two layers.
fn docker_save(dest: &Path) {
    let (l1, l2) = layers();
    let cfg = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&l1)), format!("sha256:{}", sha(&l2))]}});
    let cfg = serde_json::to_vec(&cfg).unwrap();
    let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["tiny:1"],
        "Layers": ["l1/layer.tar", "l2/layer.tar"]}]);
    fs::write(
        dest,
        tar_of(&[
            ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
            ("cfg.json", cfg),
            ("l1/layer.tar", l1),
            ("l2/layer.tar", l2),
        ]),
    )
    .unwrap();
}

/// An OCI image layout (nested index → manifest), second layer gzip'ed,
/// as a directory and as a tarball.
fn oci_layout(dir: &Path, tarball: &Path) {
    let (l1, l2) = layers();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&l2).unwrap();
    let l2gz = gz.finish().unwrap();
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut put = |data: Vec<u8>| -> (String, usize) {
        let h = sha(&data);
        fs::write(blobs.join(&h), &data).unwrap();
        files.push((format!("blobs/sha256/{h}"), data.clone()));
        (format!("sha256:{h}"), data.len())
    };
    let (d1, s1) = put(l1.clone());
    let (d2, s2) = put(l2gz);
    let (dc, sc) = put(br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": sc},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d1, "size": s1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d2, "size": s2}]});
    let (dm, sm) = put(serde_json::to_vec(&manifest).unwrap());
    let inner = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dm, "size": sm,
         "platform": {"architecture": "amd64", "os": "linux"}}]});
    let (di, si) = put(serde_json::to_vec(&inner).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": di, "size": si}]});
    let index = serde_json::to_vec(&index).unwrap();
    fs::write(dir.join("index.json"), &index).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut all: Vec<(&str, Vec<u8>)> = vec![
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index),
    ];
    for (p, d) in &files {
        all.push((p.as_str(), d.clone()));
    }
    fs::write(tarball, tar_of(&all)).unwrap();
}

/// A static executable (no /bin/sh needed) that writes argv[1] to /hello
/// and prints a line; `None` when there is no static C toolchain.
fn static_setup(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("setup.c");
    fs::write(
        &src,
        "#include <fcntl.h>\n#include <string.h>\n#include <unistd.h>\n\
         int main(int c, char **v) {\n\
           const char *m = c > 1 ? v[1] : \"none\";\n\
           int f = open(\"/hello\", O_CREAT | O_WRONLY | O_TRUNC, 0644);\n\
           if (f < 0 || write(f, m, strlen(m)) < 0) return 2;\n\
           char cwd[256]; if (!getcwd(cwd, sizeof cwd)) return 3;\n\
           write(1, \"static setup in \", 16); write(1, cwd, strlen(cwd)); write(1, \"\\n\", 1);\n\
           return 0;\n}\n",
    )
    .unwrap();
    let out = dir.join("setup");
    let ok = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(out)
}

fn mount_view(layers: &[PathBuf], at: &Path) {
    fs::create_dir_all(at).unwrap();
    let lower: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={}", lower.join(":")))
        .arg(at)
        .status()
        .unwrap();
    assert!(st.success());
}

fn spec(name: &str, base: &str, pkg: &Path, script: &str) -> BakeSpec {
    BakeSpec {
        name: name.into(),
        base: base.into(),
        package_dir: pkg.to_path_buf(),
        script: script.into(),
        args: vec!["from-bake".into()],
        network: false,
        mirror: None,
        host_network: true,
        cache: None,
    }
}

#[test]
fn import_scratch_layered_verify_export_gc() {
    if !testkit::require(skip_reason(false)) {
        return;
    }
    let t = TestDir::new("oci");
    let store = ImageStore::new(t.0.join("store"), t.0.join("no-bases"));

    // --- import: docker save, OCI layout dir and tarball -------------------
    docker_save(&t.0.join("tiny-docker.tar"));
    oci_layout(&t.0.join("oci"), &t.0.join("tiny-oci.tar"));
    let mut log = Vec::new();
    let dk = store
        .import(&t.0.join("tiny-docker.tar"), "tiny", &mut log)
        .unwrap();
    let od = store
        .import(&t.0.join("oci"), "tiny-oci", &mut log)
        .unwrap();
    let ot = store
        .import(&t.0.join("tiny-oci.tar"), "tiny-ocitar", &mut log)
        .unwrap();
    assert_eq!(dk.layers.len(), 2);
    assert_eq!(dk.layer_digests, od.layer_digests);
    assert_eq!(dk.layer_digests, ot.layer_digests);
    assert_eq!(dk.layers, od.layers, "identical layers are stored once");
    assert_eq!(dk.base, "import:tiny-docker.tar");
    let (top, bottom) = (&dk.layers[0], &dk.layers[1]);
    // Whiteouts in overlayfs form.
    let wb = fs::symlink_metadata(top.join("etc/b")).unwrap();
    assert!(wb.file_type().is_char_device() && wb.rdev() == 0);
    assert!(fs::symlink_metadata(top.join("etc/.wh.b")).is_err());
    let opq = Command::new("getfattr")
        .args([
            "--absolute-names",
            "-n",
            "trusted.overlay.opaque",
            "--only-values",
        ])
        .arg(top.join("opt/gone"))
        .output();
    if let Ok(o) = opq {
        if o.status.success() {
            assert_eq!(o.stdout, b"y");
        }
    }
    assert_eq!(
        fs::metadata(bottom.join("etc/a")).unwrap().ino(),
        fs::metadata(bottom.join("etc/a2")).unwrap().ino()
    );
    // What an instance sees.
    let view = t.0.join("view");
    mount_view(&dk.layers, &view);
    assert_eq!(fs::read_to_string(view.join("etc/a")).unwrap(), "a");
    assert_eq!(fs::read_to_string(view.join("etc/l")).unwrap(), "a");
    assert_eq!(fs::read_to_string(view.join("etc/c")).unwrap(), "c");
    assert!(!view.join("etc/b").exists());
    let mut gone: Vec<String> = fs::read_dir(view.join("opt/gone"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    gone.sort();
    assert_eq!(gone, ["new"]);
    nix::mount::umount(&view).unwrap();

    // Bad imports: corrupt blob, not an image, zstd, nothing registered.
    let bad = t.0.join("oci-bad");
    Command::new("cp")
        .arg("-a")
        .arg(t.0.join("oci"))
        .arg(&bad)
        .status()
        .unwrap();
    let (l1, _) = layers();
    fs::write(bad.join("blobs/sha256").join(sha(&l1)), b"tampered").unwrap();
    let err = store.import(&bad, "bad", &mut log).unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    let err = store
        .import(&t.0.join("oci/oci-layout"), "bad", &mut log)
        .unwrap_err();
    assert!(matches!(err, ImageError::Import { .. }), "{err}");
    assert!(store.get("bad").unwrap().is_none());
    assert_eq!(fs::read_dir(t.0.join("store/tmp")).unwrap().count(), 0);

    // --- export → re-import: same tree digests -----------------------------
    let exported = t.0.join("tiny-export.tar");
    let t0 = Instant::now();
    let man = store.export("tiny", &exported).unwrap();
    eprintln!("TIMING export (2 tiny layers): {:?} → {man}", t0.elapsed());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&exported)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(listing.contains("index.json") && listing.contains("oci-layout"));
    // Look inside the top layer blob for the OCI whiteouts.
    let un = t.0.join("unpacked");
    fs::create_dir_all(&un).unwrap();
    assert!(Command::new("tar")
        .arg("-xf")
        .arg(&exported)
        .arg("-C")
        .arg(&un)
        .status()
        .unwrap()
        .success());
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(un.join("index.json")).unwrap()).unwrap();
    let md = idx["manifests"][0]["digest"].as_str().unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(un.join("blobs/sha256").join(&md[7..])).unwrap()).unwrap();
    let top_blob = m["layers"][1]["digest"].as_str().unwrap();
    let tl = Command::new("tar")
        .arg("-tf")
        .arg(un.join("blobs/sha256").join(&top_blob[7..]))
        .output()
        .unwrap();
    let tl = String::from_utf8_lossy(&tl.stdout).into_owned();
    assert!(tl.contains("etc/.wh.b"), "{tl}");
    assert!(tl.contains("opt/gone/.wh..wh..opq"), "{tl}");
    let back = store.import(&exported, "tiny-back", &mut log).unwrap();
    assert_eq!(back.layer_digests, dk.layer_digests);

    // --- verify on use -------------------------------------------------------
    let t0 = Instant::now();
    let used = store.open_for_use("tiny").unwrap();
    eprintln!("TIMING open_for_use(tiny): {:?}", t0.elapsed());
    assert_eq!(used.layers, dk.layers);
    // Layers are read-only once used.
    let w = fs::write(top.join("etc/c"), "evil").unwrap_err();
    assert_eq!(w.raw_os_error(), Some(libc::EROFS), "{w}");
    assert!(matches!(
        store.open_for_use("nope"),
        Err(ImageError::NotFound(_))
    ));

    // --- scratch -------------------------------------------------------------
    let pkg = t.0.join("src/pkg");
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join("setup.sh"), "#!/bin/sh\necho hi\n").unwrap();
    let err = store
        .bake(&spec("s-sh", "scratch", &pkg, "setup.sh"), &mut log)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ImageError::InvalidSpec { .. }) && msg.contains("static executable"),
        "{msg}"
    );
    assert!(store.get("s-sh").unwrap().is_none());
    match static_setup(&t.0) {
        None => {
            // Only the scratch-bake part needs it; the rest of the test still runs.
            testkit::require(Some(
                "no static C toolchain for the scratch bakes (cc -static; scripts/install-deps.sh installs gcc libc6-dev)",
            ));
        }
        Some(bin) => {
            fs::copy(&bin, pkg.join("setup")).unwrap();
            fs::set_permissions(pkg.join("setup"), fs::Permissions::from_mode(0o644)).unwrap();
            let mut out = Vec::new();
            let s = store
                .bake(&spec("on-scratch", "scratch", &pkg, "setup"), &mut out)
                .unwrap();
            let out = String::from_utf8_lossy(&out).into_owned();
            assert!(out.contains("static setup in /deployTemp"), "{out}");
            assert_eq!(s.layers.len(), 1);
            let l = &s.layers[0];
            assert_eq!(fs::read_to_string(l.join("hello")).unwrap(), "from-bake");
            let mut top_names: Vec<String> = fs::read_dir(l)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            top_names.sort();
            assert_eq!(top_names, ["hello"], "nspawn skeleton/deployTemp left");
            store.open_for_use("on-scratch").unwrap();

            // Layered on an imported image (which has no /bin/sh either).
            let child = store
                .bake(&spec("on-tiny", "tiny", &pkg, "setup"), &mut log)
                .unwrap();
            assert_eq!(child.layers.len(), 3);
            assert_eq!(&child.layers[1..], &dk.layers[..]);
            assert_eq!(&child.layer_digests[1..], &dk.layer_digests[..]);
            assert_eq!(child.base, "tiny");
            // Same package+script on another parent: a different key.
            assert_ne!(child.cache_key, s.cache_key);
            let view2 = t.0.join("view2");
            mount_view(&child.layers, &view2);
            assert_eq!(
                fs::read_to_string(view2.join("hello")).unwrap(),
                "from-bake"
            );
            assert_eq!(fs::read_to_string(view2.join("etc/a")).unwrap(), "a");
            nix::mount::umount(&view2).unwrap();

            // Parent deleted: its layers stay for the child.
            for n in ["tiny", "tiny-oci", "tiny-ocitar", "tiny-back"] {
                store.delete(n).unwrap();
            }
            assert!(dk.layers.iter().all(|l| l.is_dir()));
            store.open_for_use("on-tiny").unwrap();
            let err = store
                .bake(&spec("x", "tiny", &pkg, "setup"), &mut log)
                .unwrap_err();
            assert!(matches!(err, ImageError::UnsupportedBase(_)), "{err}");
        }
    }

    // --- tamper → refused, naming the layer -------------------------------
    let victim_img = if store.get("on-tiny").unwrap().is_some() {
        "on-tiny"
    } else {
        "tiny"
    };
    let victim = store.get(victim_img).unwrap().unwrap().layers[1].clone();
    store.unmount_layers(); // e.g. after a reboot, or a tamperer
    fs::write(victim.join("etc/c"), "evil").unwrap();
    let err = store.open_for_use(victim_img).unwrap_err();
    match &err {
        ImageError::Tampered { layer, .. } => assert_eq!(layer, &victim),
        other => panic!("expected Tampered, got {other}"),
    }
    assert!(err.to_string().contains(&victim.display().to_string()));
    assert!(!store
        .verify(&store.get(victim_img).unwrap().unwrap())
        .unwrap());
    eprintln!("tamper message: {err}");

    // --- gc -------------------------------------------------------------------
    let orphan = t.0.join("store/layers").join("ab".repeat(32));
    fs::create_dir_all(orphan.join("d")).unwrap();
    fs::write(orphan.join("d/f"), vec![7u8; 100_000]).unwrap();
    let stale = t.0.join("store/tmp/bake-crashed");
    fs::create_dir_all(stale.join("upper")).unwrap();
    fs::write(stale.join("lock"), "").unwrap();
    fs::write(stale.join("upper/x"), vec![1u8; 50_000]).unwrap();
    let busy = t.0.join("store/tmp/bake-running");
    fs::create_dir_all(&busy).unwrap();
    let held = fs::File::create(busy.join("lock")).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let images_before = store.list().unwrap();
    let rep = store.gc().unwrap();
    eprintln!("gc: {rep:?}");
    assert_eq!(rep.removed_layers, [format!("sha256:{}", "ab".repeat(32))]);
    assert_eq!(rep.removed_tmp, std::slice::from_ref(&stale));
    assert!(rep.freed_bytes >= 150_000, "{rep:?}");
    assert!(!orphan.exists() && !stale.exists() && busy.exists());
    assert_eq!(store.list().unwrap(), images_before);
    for img in &images_before {
        assert!(img.layers.iter().all(|l| l.is_dir()));
    }
    drop(held);
    let rep = store.gc().unwrap();
    assert_eq!(rep.removed_tmp, [busy]);
    assert!(rep.removed_layers.is_empty());
    // Delete everything → gc has nothing left; the layers went with delete.
    for img in store.list().unwrap() {
        store.delete(&img.name).unwrap();
    }
    assert_eq!(fs::read_dir(t.0.join("store/layers")).unwrap().count(), 0);
    assert!(store.gc().unwrap().removed_layers.is_empty());
    store.unmount_layers();
}

const SETUP_A: &str = r#"#!/bin/sh
echo "step one"
mkdir -p /opt/a && echo "layer a $1" > /opt/a/version
echo "step two"
"#;

const SETUP_B: &str = r#"#!/bin/sh
set -e
test "$(cat /opt/a/version)" = "layer a from-bake"
echo "on top of a" > /opt/b
rm /opt/a/version
sudo echo sudo-ok
"#;

#[test]
fn layered_bake_progress_disk_full_and_timings() {
    if !testkit::require(skip_reason(true)) {
        return;
    }
    let t = TestDir::new("layered");
    let store = ImageStore::new(t.0.join("store"), base_cache());
    let pkg_a = t.0.join("src/a");
    let pkg_b = t.0.join("src/b");
    for (p, s) in [(&pkg_a, SETUP_A), (&pkg_b, SETUP_B)] {
        fs::create_dir_all(p).unwrap();
        fs::write(p.join("setup.sh"), s).unwrap();
        fs::write(p.join("payload.bin"), vec![3u8; 2 << 20]).unwrap();
    }

    // Progress events.
    let mut events = Vec::new();
    let t0 = Instant::now();
    let a = store
        .bake_with_progress(
            &spec("a", "debian:bookworm", &pkg_a, "setup.sh"),
            &mut std::io::sink(),
            &mut |e| events.push(e),
        )
        .unwrap();
    let bake_secs = t0.elapsed().as_secs_f64();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            BakeEvent::BaseReady { .. } => "base",
            BakeEvent::Copying { .. } => "copy",
            BakeEvent::ScriptStarted { .. } => "start",
            BakeEvent::ScriptLine(_) => "line",
            BakeEvent::Deprovisioning => "deprov",
            BakeEvent::Capturing => "capture",
            BakeEvent::Done { .. } => "done",
        })
        .filter(|k| *k != "line")
        .collect();
    assert_eq!(
        kinds,
        ["base", "copy", "start", "deprov", "capture", "done"]
    );
    let lines: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            BakeEvent::ScriptLine(l) => Some(l),
            _ => None,
        })
        .collect();
    assert!(lines.iter().any(|l| *l == "step one") && lines.iter().any(|l| *l == "step two"));
    assert!(matches!(
        &events[0],
        BakeEvent::BaseReady { cached: true, .. }
    ));
    assert!(
        matches!(events.last(), Some(BakeEvent::Done { cache_hit: false, digest, .. }) if *digest == a.digest)
    );
    assert!(
        matches!(&events[1], BakeEvent::Copying { files, bytes } if *files >= 3 && *bytes >= 2 << 20)
    );

    // Cache hit.
    let mut events = Vec::new();
    let t0 = Instant::now();
    let a2 = store
        .bake_with_progress(
            &spec("a2", "debian:bookworm", &pkg_a, "setup.sh"),
            &mut std::io::sink(),
            &mut |e| events.push(e),
        )
        .unwrap();
    let hit = t0.elapsed();
    assert_eq!(a2.layers, a.layers);
    assert!(matches!(
        events.last(),
        Some(BakeEvent::Done {
            cache_hit: true,
            ..
        })
    ));
    // A hit runs nothing (no copy, script or capture): the base is ready, the bake is done.
    // Its speed is reported below and in bench/, not asserted.
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(&events[0], BakeEvent::BaseReady { cached: true, .. }),
        "{events:?}"
    );

    // Verify on use (full re-hash of the baked layer; base id check).
    let t0 = Instant::now();
    let used = store.open_for_use("a").unwrap();
    let verify = t0.elapsed();
    let (files, bytes) = {
        let out = Command::new("du")
            .args(["-sb"])
            .arg(&used.layers[0])
            .output()
            .unwrap();
        let b = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .to_string();
        let n = Command::new("find")
            .arg(&used.layers[0])
            .output()
            .unwrap()
            .stdout
            .iter()
            .filter(|&&c| c == b'\n')
            .count();
        (n, b)
    };

    // Layered: b on a.
    let t0 = Instant::now();
    let b = store
        .bake(&spec("b", "a", &pkg_b, "setup.sh"), &mut std::io::sink())
        .unwrap();
    let layered_secs = t0.elapsed().as_secs_f64();
    assert_eq!(b.layers.len(), 3);
    assert_eq!(&b.layers[1..], &a.layers[..]);
    assert_eq!(b.base, "a");
    assert_eq!(
        fs::read_to_string(b.layers[0].join("opt/b")).unwrap(),
        "on top of a\n"
    );
    let wh = fs::symlink_metadata(b.layers[0].join("opt/a/version")).unwrap();
    assert!(wh.file_type().is_char_device(), "deletion is a whiteout");
    store.open_for_use("b").unwrap();
    // Re-baking b on an a with other content is not a cache hit.
    let b_hit = store
        .bake(
            &spec("b-again", "a", &pkg_b, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap();
    assert_eq!(b_hit.digest, b.digest);
    // A package change that does not change the captured layer: same
    // parent digest, so b on it is still a cache hit.
    fs::write(pkg_a.join("extra"), "changes the package only").unwrap();
    let a3 = store
        .bake(
            &spec("a", "debian:bookworm", &pkg_a, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap();
    assert_eq!(a3.digest, a.digest, "same content, same layer");
    let b_same = store
        .bake(
            &spec("b-same", "a", &pkg_b, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap();
    assert_eq!(b_same.cache_key, b.cache_key);
    // A new a (other content) → b on it is a new bake; the old a layer
    // stays while b uses it.
    fs::write(
        pkg_a.join("setup.sh"),
        format!("{SETUP_A}echo more > /opt/a/more\n"),
    )
    .unwrap();
    let a4 = store
        .bake(
            &spec("a", "debian:bookworm", &pkg_a, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap();
    assert_ne!(a4.digest, a.digest);
    assert!(a.layers[0].is_dir(), "old a layer kept for b");
    let b2 = store
        .bake(&spec("b2", "a", &pkg_b, "setup.sh"), &mut std::io::sink())
        .unwrap();
    assert_ne!(b2.cache_key, b.cache_key);
    assert_eq!(&b2.layers[1..], &a4.layers[..]);
    fs::write(pkg_a.join("setup.sh"), SETUP_A).unwrap();

    // Bad input: unknown base, missing package.
    for base in ["nope", "ubuntu:jammy", "../x"] {
        let err = store
            .bake(&spec("u", base, &pkg_a, "setup.sh"), &mut std::io::sink())
            .unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedBase(_)), "{err}");
    }
    let err = store
        .bake(
            &spec("u", "debian:bookworm", &t.0.join("missing"), "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidSpec { .. }), "{err}");
    assert!(store.get("u").unwrap().is_none());

    // Disk full: a 3 MiB tmpfs as the store's tmp dir.
    let tmp = t.0.join("store/tmp");
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&tmp)
        .status()
        .unwrap()
        .success());
    let pkg_f = t.0.join("src/full");
    fs::create_dir_all(&pkg_f).unwrap();
    // No `set -e`: the failed write is ignored by the script, as real
    // scripts do; the bake still fails.
    fs::write(
        pkg_f.join("setup.sh"),
        "#!/bin/sh\ndd if=/dev/zero of=/big bs=1M count=16\necho after\n",
    )
    .unwrap();
    let layers_before: Vec<_> = fs::read_dir(t.0.join("store/layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let err = store
        .bake(
            &spec("full", "debian:bookworm", &pkg_f, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap_err();
    eprintln!("disk full message: {err}");
    match &err {
        ImageError::DiskFull { log, .. } => {
            assert!(fs::read_to_string(log).unwrap().contains("No space left"))
        }
        other => panic!("expected DiskFull, got {other}"),
    }
    assert!(store.get("full").unwrap().is_none());
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "partial bake removed"
    );
    let layers_after: Vec<_> = fs::read_dir(t.0.join("store/layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(layers_before.len(), layers_after.len());
    // A bake that fits still works with tmp on another file system (the
    // capture copies across).
    let small = store
        .bake(
            &spec("small", "b", &pkg_a, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap();
    store.open_for_use("small").unwrap();
    nix::mount::umount(&tmp).unwrap();
    store.open_for_use("a").unwrap();
    store.open_for_use("b").unwrap();
    assert!(small.layers.len() == 4);

    // Verify cost on a layer of the size of a real app image (nginx + app:
    // a few MB): 8 MiB of incompressible data.
    let pkg_big = t.0.join("src/big");
    fs::create_dir_all(&pkg_big).unwrap();
    fs::write(
        pkg_big.join("setup.sh"),
        "#!/bin/sh\nhead -c 8388608 /dev/urandom > /opt/blob\n",
    )
    .unwrap();
    store
        .bake(
            &spec("big", "debian:bookworm", &pkg_big, "setup.sh"),
            &mut std::io::sink(),
        )
        .unwrap();
    let t0 = Instant::now();
    store.open_for_use("big").unwrap();
    let verify_big = t0.elapsed();
    eprintln!(
        "TIMING open_for_use (verify) of an 8 MiB layer: {:.1} ms",
        verify_big.as_secs_f64() * 1e3
    );
    eprintln!(
        "TIMING bake (2 MiB package, cached debian base, no network): {bake_secs:.2}s\n\
         TIMING cache hit: {:.1} ms\n\
         TIMING open_for_use (verify) of a: {:.1} ms for a {files}-entry {bytes}-byte layer + base id\n\
         TIMING layered bake b on a: {layered_secs:.2}s",
        hit.as_secs_f64() * 1e3,
        verify.as_secs_f64() * 1e3
    );
    store.unmount_layers();
}
