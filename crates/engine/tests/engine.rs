//! The engine's behaviour without root: the real engine in-process over
//! `runtime::fake::FakeMachines` and the control plane's typed commands, a manual clock, and the
//! test as the health source (it writes the verdicts the load balancer's `/status` would; the LB
//! process cannot start, so the engine's own LB sync reports nothing). Each pass is awaited, so
//! every test is deterministic and takes milliseconds.
use control::{InstanceRecord, ProvisioningState, Put, Res, Stored, LB, VMSS};
use engine::{Clock, Core, Engine, EngineConfig};
use plan::rolling::RunningStatus;
use runtime::fake::{FakeMachines, Op};
use runtime::Machines;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SUB: &str = "/subscriptions/00000000-0000-0000-0000-000000000000";

struct Env {
    st: Arc<Core>,
    eng: Arc<Engine>,
    fake: Arc<FakeMachines>,
    dir: std::path::PathBuf,
    /// Machines the "load balancer" reports down whatever their image.
    sick: Mutex<BTreeSet<String>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let subnet: runtime::Ipv4Net = "10.213.251.0/24".parse().unwrap();
    EngineConfig {
        home: dir.to_path_buf(),
        network: runtime::NetworkSpec {
            bridge: "ssbrtest".into(),
            gateway: subnet.host(1),
            subnet,
        },
        prefix: "t".into(),
        // No LB process can start: the engine's LB sync fails fast and the test reports health.
        exe: dir.join("no-such-scaleset"),
        probe_interval_ms: None,
        rolling_health_timeout_secs: 30,
        repair_grace_secs: Some(0),
        lb_allowed: control::Cidr::parse_list("127.0.0.0/8").unwrap(),
        lb_frontend: Default::default(),
        metrics_interval_ms: None,
        autoscale_interval_ms: None,
    }
}

fn open(dir: &std::path::Path, fake: &Arc<FakeMachines>) -> Arc<Core> {
    Arc::new(Core {
        cfg: config(dir),
        cp: control::ControlPlane::new(store::Store::open(&dir.join("state.db")).unwrap()),
        machines: fake.clone(),
        images: image::ImageStore::new(dir.join("images"), dir.join("bases")),
        metrics: Default::default(),
    })
}

fn env(tag: &str) -> Env {
    let dir = std::env::temp_dir().join(format!("scaleset-engine-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fake = Arc::new(FakeMachines::new());
    let st = open(&dir, &fake);
    for name in ["good", "good2", "bad"] {
        import_image(&st, &dir, name);
    }
    Env {
        st,
        eng: Arc::new(Engine::new(Clock::manual())),
        fake,
        dir,
        sick: Default::default(),
    }
}

/// The daemon restarted: new state and engine over the same home, the same machines.
fn restart(e: &mut Env) {
    e.st = open(&e.dir, &e.fake);
    e.eng = Arc::new(Engine::new(Clock::manual()));
}

/// An image in the store without baking: a one-file `docker save` archive, imported.
fn import_image(st: &Core, dir: &std::path::Path, name: &str) {
    let entry = |h: &mut tar::Header, len: usize| {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(len as u64);
    };
    let mut layer = tar::Builder::new(Vec::new());
    let data = format!("image {name}\n");
    let mut h = tar::Header::new_gnu();
    entry(&mut h, data.len());
    layer
        .append_data(&mut h, "etc/scaleset-image", data.as_bytes())
        .unwrap();
    let layer = layer.into_inner().unwrap();
    let diff = hex::encode(sha2::Sha256::digest(&layer));
    let cfg = json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]}});
    let manifest = json!([{"Config": "cfg.json", "RepoTags": [format!("{name}:1")], "Layers": ["l/layer.tar"]}]);
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in [
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ("cfg.json", serde_json::to_vec(&cfg).unwrap()),
        ("l/layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        entry(&mut h, d.len());
        b.append_data(&mut h, p, d.as_slice()).unwrap();
    }
    let archive = dir.join(format!("{name}.tar"));
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    st.images
        .import(&archive, name, &mut std::io::sink())
        .unwrap();
}

fn rg() -> String {
    format!("{SUB}/resourceGroups/rg")
}

fn lb_id() -> String {
    format!("{}/providers/Microsoft.Network/loadBalancers/lb", rg())
}

fn lb_body() -> Value {
    let id = lb_id();
    json!({"location": "local", "properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": "127.0.0.1"}}],
        "backendAddressPools": [{"name": "be"}],
        "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 80, "requestPath": "/health"}}],
        "loadBalancingRules": [{"name": "r", "properties": {"protocol": "Tcp", "frontendPort": 18080, "backendPort": 80,
            "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/fe")},
            "backendAddressPool": {"id": format!("{id}/backendAddressPools/be")},
            "probe": {"id": format!("{id}/probes/p")}}}],
    }})
}

/// A scale set body: `extra` is merged into `properties` (upgrade and repair policies).
fn vmss_body(image: &str, capacity: u32, extra: Value) -> Value {
    let lb = lb_id();
    let mut props = json!({
        "upgradePolicy": {"mode": "Manual"},
        "virtualMachineProfile": {
            "osProfile": {"computerNamePrefix": "web", "adminUsername": "azureuser"},
            "storageProfile": {"imageReference": {"id": format!("{}/providers/Microsoft.Compute/images/{image}", rg())}},
            "networkProfile": {
                "healthProbe": {"id": format!("{lb}/probes/p")},
                "networkInterfaceConfigurations": [{"name": "nic", "properties": {"primary": true, "ipConfigurations": [
                    {"name": "ip", "properties": {"loadBalancerBackendAddressPools": [{"id": format!("{lb}/backendAddressPools/be")}]}}]}}]
            }
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        props[k] = v.clone();
    }
    json!({"location": "local", "sku": {"name": "Standard_B1s", "capacity": capacity}, "properties": props})
}

fn res() -> Res {
    Res {
        sub: SUB[15..].into(),
        rg: "rg".into(),
        name: "web".into(),
    }
}

/// The load balancer (stored as the API stores it), then the scale set.
fn create(e: &Env, body: Value) {
    let lb = Res {
        name: "lb".into(),
        ..res()
    };
    let (_, arm) = model::lb::parse(&lb_body()).unwrap();
    e.st.store.put(&lb.key(LB), &arm).unwrap();
    let stored = put(e, body);
    assert!(stored.created);
}

fn put(e: &Env, body: Value) -> Stored {
    e.st.cp
        .put_vmss(&e.st.images, &res(), Put::Replace(body))
        .unwrap()
}

/// The image a fake machine was created or reimaged with (from its instance.env).
fn image_of(e: &Env, machine: &str) -> Option<String> {
    let m = e.fake.machine(machine)?;
    let env = &m.spec.files.first()?.1;
    env.lines()
        .find_map(|l| l.strip_prefix("SCALESET_IMAGE="))
        .map(str::to_string)
}

/// What the load balancer's probe would report: machines that run an image other than `bad`
/// answer, sick ones do not.
fn report_health(e: &Env) {
    let running = e.fake.running();
    let sick = e.sick.lock().unwrap().clone();
    let mut obs = e.st.observed.lock().unwrap();
    for m in running {
        let up = image_of(e, &m).is_some_and(|i| i != "bad") && !sick.contains(&m);
        obs.entry(m).or_default().healthy = Some(up);
    }
}

/// One engine pass, awaited, then the health verdicts it will see next.
async fn pass(e: &Env) {
    engine::tick(&e.st, &e.eng).await;
    e.eng.settle().await;
    report_health(e);
}

const ACTING: [Op; 6] = [
    Op::Create,
    Op::Start,
    Op::Stop,
    Op::Kill,
    Op::Reimage,
    Op::Delete,
];

fn acting_calls(e: &Env) -> usize {
    e.fake
        .calls()
        .iter()
        .filter(|c| ACTING.contains(&c.op))
        .count()
}

/// Passes until one acts on no machine (at most `max`); returns how many passes it took.
async fn settle(e: &Env, max: usize) -> usize {
    for n in 1..=max {
        let before = acting_calls(e);
        pass(e).await;
        if acting_calls(e) == before {
            return n;
        }
    }
    panic!("the engine still acts after {max} passes");
}

fn records(e: &Env) -> Vec<InstanceRecord> {
    e.st.instances(&res().key(VMSS)).unwrap()
}

fn provisioning(r: &InstanceRecord) -> &'static str {
    r.provisioning_state.as_str()
}

fn ids_of(e: &Env) -> Vec<u32> {
    records(e).iter().map(|r| r.instance_id).collect()
}

fn rollout(e: &Env) -> plan::rolling::RolloutState {
    e.st.rollout(&res()).unwrap().expect("a rollout").state
}

#[tokio::test]
async fn scale_out_and_in() {
    let e = env("scale");
    let scale_in = json!({"scaleInPolicy": {"rules": ["OldestVM"]}});
    create(&e, vmss_body("good", 3, scale_in.clone()));
    settle(&e, 10).await;
    assert_eq!(ids_of(&e), vec![0, 1, 2]);
    assert_eq!(e.fake.calls_of(Op::Create).len(), 3);
    assert_eq!(e.fake.running().len(), 3);
    for r in records(&e) {
        assert_eq!(provisioning(&r), "Succeeded");
        assert_eq!(image_of(&e, &r.machine).as_deref(), Some("good"));
    }
    let doc = e.st.vmss_doc(&res()).unwrap().unwrap();
    assert_eq!(
        e.st.vmss_provisioning(&res(), &doc).unwrap(),
        ProvisioningState::Succeeded
    );

    // Scale in to 1: OldestVM removes 0 and 1, each stopped (drained) and deleted.
    put(&e, vmss_body("good", 1, scale_in.clone()));
    settle(&e, 10).await;
    assert_eq!(ids_of(&e), vec![2]);
    assert_eq!(e.fake.calls_of(Op::Delete).len(), 2);
    assert_eq!(e.fake.running(), vec![records(&e)[0].machine.clone()]);

    // Out again: new ids, never reused.
    put(&e, vmss_body("good", 3, scale_in));
    settle(&e, 10).await;
    assert_eq!(ids_of(&e), vec![2, 3, 4]);
    assert_eq!(e.fake.running().len(), 3);
}

#[tokio::test]
async fn one_pass_per_scale_set_at_a_time() {
    let e = env("busy");
    create(&e, vmss_body("good", 2, json!({})));
    // Slow boots: ticks while the first pass runs must not start a second one.
    e.fake.delay(Op::Start, None, Duration::from_millis(50));
    engine::tick(&e.st, &e.eng).await;
    engine::tick(&e.st, &e.eng).await;
    engine::tick(&e.st, &e.eng).await;
    e.eng.settle().await;
    assert_eq!(e.fake.calls_of(Op::Create).len(), 2);
    assert_eq!(ids_of(&e), vec![0, 1]);
}

#[tokio::test]
async fn a_machine_that_dies_is_restarted() {
    let e = env("crash");
    create(&e, vmss_body("good", 2, json!({})));
    settle(&e, 10).await;
    let victim = records(&e)[1].machine.clone();
    e.fake.clear_calls();
    assert!(e.fake.die(&victim));
    settle(&e, 10).await;
    // Healed in place: the same machine (create is idempotent and keeps its disk) booted again.
    assert_eq!(e.fake.calls_of(Op::Start), vec![victim.clone()]);
    assert_eq!(e.fake.calls_of(Op::Create), vec![victim.clone()]);
    assert_eq!(e.fake.calls_of(Op::Delete), Vec::<String>::new());
    assert_eq!(e.fake.running().len(), 2);

    // A start that fails is recorded on the instance and retried only after a pause.
    e.fake.clear_calls();
    e.fake.fail(Op::Start, Some(&victim), 1, "nspawn exited");
    assert!(e.fake.die(&victim));
    pass(&e).await;
    let rec = records(&e)
        .into_iter()
        .find(|r| r.machine == victim)
        .unwrap();
    assert_eq!(provisioning(&rec), "Failed");
    assert!(rec.last_error.as_deref().unwrap().contains("nspawn exited"));
    pass(&e).await;
    assert_eq!(
        e.fake.calls_of(Op::Start).len(),
        1,
        "held back right after a failure"
    );
    e.eng.clock().advance(Duration::from_secs(6));
    settle(&e, 10).await;
    assert_eq!(e.fake.calls_of(Op::Start).len(), 2);
    let rec = records(&e)
        .into_iter()
        .find(|r| r.machine == victim)
        .unwrap();
    assert_eq!(provisioning(&rec), "Succeeded");
    assert_eq!(rec.last_error, None);
}

#[tokio::test]
async fn daemon_restart_adopts_running_machines() {
    let mut e = env("adopt");
    create(&e, vmss_body("good", 2, json!({})));
    settle(&e, 10).await;
    let before = records(&e);
    // A rollout's mark from before the restart: nothing is in flight any more.
    let key = res().key(VMSS);
    e.st.update_instance(&key, 0, |r| r.work.begin(control::Actor::Rollout))
        .unwrap();
    restart(&mut e);
    engine::clear_interrupted(&e.st);
    e.fake.clear_calls();
    report_health(&e);
    assert_eq!(settle(&e, 10).await, 1, "the first pass acts on nothing");
    assert_eq!(acting_calls(&e), 0, "{:?}", e.fake.calls());
    assert_eq!(records(&e), before);
}

fn rolling(rollback: bool) -> Value {
    json!({"upgradePolicy": {"mode": "Rolling", "rollingUpgradePolicy": {
        "maxBatchInstancePercent": 20, "maxUnhealthyInstancePercent": 50,
        "maxUnhealthyUpgradedInstancePercent": 20, "pauseTimeBetweenBatches": "PT0S",
        "rollbackFailedInstancesOnPolicyBreach": rollback}}})
}

/// Passes until the rollout is no longer RollingForward, advancing the clock 10 s a pass.
async fn run_rollout(e: &Env) -> plan::rolling::RolloutState {
    for _ in 0..60 {
        pass(e).await;
        e.eng.clock().advance(Duration::from_secs(10));
        if rollout(e).status != RunningStatus::RollingForward {
            settle(e, 10).await;
            return rollout(e);
        }
    }
    panic!("the rollout did not finish: {:?}", rollout(e));
}

/// Azure's progress counts of the rollout now.
fn progress(e: &Env) -> plan::rolling::Progress {
    let insts = engine::roll_instances(&e.st, &records(e));
    plan::rolling::progress(&rollout(e), &insts)
}

#[tokio::test]
async fn rolling_upgrade_goes_one_instance_at_a_time() {
    let e = env("roll");
    create(&e, vmss_body("good", 3, rolling(true)));
    settle(&e, 10).await;
    e.fake.clear_calls();
    put(&e, vmss_body("good2", 3, rolling(true)));
    let v = run_rollout(&e).await;
    assert_eq!(v.status, RunningStatus::Completed, "{v:?}");
    assert_eq!(progress(&e).successful, 3);
    let recs = records(&e);
    for r in &recs {
        assert_eq!(image_of(&e, &r.machine).as_deref(), Some("good2"));
        assert_eq!(r.model_version, 2);
    }
    // One at a time (3 instances): each machine stopped, reimaged and started before the next.
    let order: Vec<(Op, String)> = e
        .fake
        .calls()
        .into_iter()
        .filter(|c| ACTING.contains(&c.op))
        .map(|c| (c.op, c.machine))
        .collect();
    let expected: Vec<(Op, String)> = recs
        .iter()
        .flat_map(|r| [Op::Stop, Op::Reimage, Op::Start].map(|op| (op, r.machine.clone())))
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn rolling_upgrade_to_a_bad_image_rolls_back() {
    let e = env("rollback");
    create(&e, vmss_body("good", 3, rolling(true)));
    settle(&e, 10).await;
    e.fake.clear_calls();
    put(&e, vmss_body("bad", 3, rolling(true)));
    let v = run_rollout(&e).await;
    assert_eq!(v.status, RunningStatus::Faulted, "{v:?}");
    assert_eq!(
        v.error.as_ref().map(|e| e.code.as_str()),
        Some(plan::rolling::CODE_MAX_UNHEALTHY_UPGRADED)
    );
    assert_eq!(v.rolled_back, vec![0]);
    // The first batch (instance 0) broke the policy and went back; 1 and 2 were never touched.
    let recs = records(&e);
    let first = recs[0].machine.clone();
    assert_eq!(e.fake.calls_of(Op::Reimage), vec![first.clone(), first]);
    for r in &recs {
        assert_eq!(image_of(&e, &r.machine).as_deref(), Some("good"), "{r:?}");
    }
    assert_eq!(e.fake.running().len(), 3);
}

/// A bad deploy says why, fast: the upgraded instance's app unit failed after its boot, so its
/// batch fails once the unit has stayed failed for the grace (the clock moves 1 s a pass, the
/// fault comes well before the 30 s health timeout) and the error carries the unit and its
/// journal lines, read inside the machine.
#[tokio::test]
async fn a_failed_unit_faults_the_rollout_at_once() {
    let e = env("unitfail");
    create(&e, vmss_body("good", 3, rolling(false)));
    settle(&e, 10).await;
    let first = records(&e)[0].machine.clone();
    e.fake.set_failed_units(&first, &["my_app.service"]);
    e.fake.set_journal(
        &first,
        "my_app[7]: cannot bind\nsystemd[1]: my_app.service: Failed.\n",
    );
    put(&e, vmss_body("bad", 3, rolling(false)));
    let mut passes = 0;
    while rollout(&e).status == RunningStatus::RollingForward {
        passes += 1;
        // Grace (15 s) plus a few passes, far below the health timeout's 30.
        assert!(passes < 20, "still rolling: {:?}", rollout(&e));
        pass(&e).await;
        e.eng.clock().advance(Duration::from_secs(1));
    }
    let grace = plan::rolling::UNIT_FAILED_GRACE_MS / 1000;
    assert!(
        passes as u64 > grace,
        "faulted after {passes} passes, before the grace"
    );
    let v = rollout(&e);
    assert_eq!(v.status, RunningStatus::Faulted, "{v:?}");
    let err = v.error.unwrap();
    assert!(
        err.message
            .contains("Unit my_app.service failed on instance 0. First failed instance ID is: 0."),
        "{}",
        err.message
    );
    assert_eq!(err.details.len(), 1);
    assert_eq!(err.details[0].target, "instances/0/units/my_app.service");
    assert!(err.details[0]
        .message
        .ends_with("my_app[7]: cannot bind\nsystemd[1]: my_app.service: Failed."));
    // Only the upgraded, unhealthy instance was looked into: the boot's state, the failed
    // units, then the unit's journal and systemd's record of its end, once a second.
    let seen: Vec<String> = e
        .fake
        .execs(&first)
        .iter()
        .map(|a| a[..2].join(" "))
        .collect();
    let one_look = [
        "systemctl is-system-running",
        "systemctl list-units",
        "journalctl --no-pager",
        "systemctl show",
    ];
    assert!(seen.len() >= 4 * grace as usize, "{seen:?}");
    for (i, w) in seen.iter().enumerate() {
        assert_eq!(w, one_look[i % 4], "exec {i} of {seen:?}");
    }
    for r in &records(&e)[1..] {
        assert!(e.fake.execs(&r.machine).is_empty(), "{}", r.machine);
    }
}

#[tokio::test]
async fn automatic_repairs_replace_an_unhealthy_instance() {
    let e = env("repair");
    let repairs = json!({"automaticRepairsPolicy": {"enabled": true, "gracePeriod": "PT10M", "repairAction": "Replace"}});
    create(&e, vmss_body("good", 3, repairs));
    settle(&e, 10).await;
    assert_eq!(ids_of(&e), vec![0, 1, 2]);
    let sick = records(&e)[1].machine.clone();
    e.sick.lock().unwrap().insert(sick.clone());
    report_health(&e);
    e.fake.clear_calls();
    pass(&e).await;
    // Replaced as Azure does: deleted, and a new instance (new id) on the latest model.
    assert_eq!(ids_of(&e), vec![0, 2, 3]);
    assert_eq!(e.fake.calls_of(Op::Delete), vec![sick]);
    assert_eq!(e.fake.calls_of(Op::Create).len(), 1);
    let new = records(&e)
        .into_iter()
        .find(|r| r.instance_id == 3)
        .unwrap();
    assert_eq!(
        new.repair_attempts, 1,
        "the replacement carries the attempt"
    );
    assert!(!new.work.by(control::Actor::Repair));
    assert_eq!(e.fake.running().len(), 3);
    // Healthy on the next pass: the attempts are forgotten and nothing else is repaired.
    settle(&e, 10).await;
    let new = records(&e)
        .into_iter()
        .find(|r| r.instance_id == 3)
        .unwrap();
    assert_eq!(new.repair_attempts, 0);
    assert_eq!(ids_of(&e), vec![0, 2, 3]);
    assert_eq!(e.fake.calls_of(Op::Delete).len(), 1);
}

/// AzureVmssDeployment@1's command: the CI service sets the image through the control plane
/// (no ARM URL), which is a model change like `az vmss update --set ...imageReference.id`.
#[tokio::test]
async fn set_image_is_a_model_change_that_rolls_out() {
    let e = env("setimage");
    create(&e, vmss_body("good", 2, rolling(true)));
    settle(&e, 10).await;
    let sub = &SUB[15..];
    assert_eq!(
        e.st.cp.find_vmss_group(sub, "WEB").unwrap().as_deref(),
        Some("rg")
    );
    assert_eq!(e.st.cp.find_vmss_group(sub, "nope").unwrap(), None);
    let res = res();
    let image = |name: &str| format!("{}/providers/Microsoft.Compute/images/{name}", rg());
    let err = e.st.cp.set_image(&e.st.images, &res, &image("missing"));
    assert!(
        matches!(
            &err,
            Err(control::CommandError::NotFound {
                code: "ImageNotFound",
                ..
            })
        ),
        "{err:?}"
    );
    let other = Res {
        name: "other".into(),
        ..res.clone()
    };
    let err = e.st.cp.set_image(&e.st.images, &other, &image("good2"));
    assert_eq!(
        err.unwrap_err().to_string(),
        "The Resource 'Microsoft.Compute/virtualMachineScaleSets/other' under resource group 'rg' was not found."
    );
    let stored =
        e.st.cp
            .set_image(&e.st.images, &res, &image("good2"))
            .unwrap();
    assert!(!stored.created);
    assert_eq!(stored.doc.model_version, 2);
    assert_eq!(
        stored.doc.versions.get(&2).map(String::as_str),
        Some("good2")
    );
    let v = run_rollout(&e).await;
    assert_eq!(v.status, RunningStatus::Completed, "{v:?}");
    for r in records(&e) {
        assert_eq!(image_of(&e, &r.machine).as_deref(), Some("good2"));
    }
    // The same image again changes nothing.
    let again =
        e.st.cp
            .set_image(&e.st.images, &res, &image("good2"))
            .unwrap();
    assert_eq!(again.doc.model_version, 2);
}

/// A VM size is each instance's CPU and memory cap; a new size is a model change that rolls
/// out like a new image (instances get the size they were made or upgraded with).
#[tokio::test]
async fn a_new_vm_size_rolls_out_with_its_caps() {
    let e = env("resize");
    create(&e, vmss_body("good", 2, rolling(false)));
    settle(&e, 10).await;
    let size_of = |e: &Env, machine: &str| e.fake.machine(machine).and_then(|m| m.spec.size);
    let b1s = runtime::MachineSize {
        vcpus: 1,
        memory_mib: 1024,
    };
    for r in records(&e) {
        assert_eq!(r.vm_size.as_deref(), Some("Standard_B1s"));
        assert_eq!(size_of(&e, &r.machine), Some(b1s));
    }
    let mut body = vmss_body("good", 2, rolling(false));
    body["sku"]["name"] = json!("standard_b2s");
    let stored = put(&e, body);
    assert_eq!(stored.doc.model_version, 2);
    assert_eq!(stored.doc.arm["sku"]["name"], "Standard_B2s");
    let v = run_rollout(&e).await;
    assert_eq!(v.status, RunningStatus::Completed, "{v:?}");
    for r in records(&e) {
        assert_eq!(r.vm_size.as_deref(), Some("Standard_B2s"));
        assert_eq!(r.model_version, 2);
        let want = runtime::MachineSize {
            vcpus: 2,
            memory_mib: 4096,
        };
        assert_eq!(size_of(&e, &r.machine), Some(want));
    }
    // A size Azure doesn't offer is refused and changes nothing.
    let mut body = vmss_body("good", 2, rolling(false));
    body["sku"]["name"] = json!("Standard_Z9");
    let err = e.st.cp.put_vmss(&e.st.images, &res(), Put::Replace(body));
    assert!(
        matches!(&err, Err(control::CommandError::Invalid { code: "InvalidParameter", message }) if message.contains("VM size is not valid")),
        "{err:?}"
    );
    assert_eq!(
        put(&e, vmss_body("good", 2, rolling(false)))
            .doc
            .model_version,
        3
    );
}

/// Power actions and deletion are intent the engine carries out: stop (drained first), start,
/// reimage onto the latest model, delete instances (capacity lowered), delete the scale set.
#[tokio::test]
async fn power_actions_reimage_and_deletion() {
    let e = env("power");
    create(&e, vmss_body("good", 3, json!({})));
    settle(&e, 10).await;
    let m = |i: usize| records(&e)[i].machine.clone();
    let (m0, m1) = (m(0), m(1));
    let ids = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    e.fake.clear_calls();
    e.st.cp
        .power(&res(), control::PowerAction::PowerOff, ids(&["1"]))
        .unwrap();
    settle(&e, 10).await;
    assert_eq!(e.fake.calls_of(Op::Stop), vec![m1.clone()]);
    assert!(!e.fake.running().contains(&m1));
    assert_eq!(records(&e)[1].intent, plan::PowerIntent::Stopped);
    e.st.cp
        .power(&res(), control::PowerAction::Start, ids(&["1"]))
        .unwrap();
    settle(&e, 10).await;
    assert!(e.fake.running().contains(&m1));

    // Manual mode: a new model applies to instance 0 only when it is reimaged.
    put(&e, vmss_body("good2", 3, json!({})));
    settle(&e, 10).await;
    assert_eq!(image_of(&e, &m0).as_deref(), Some("good"));
    e.fake.clear_calls();
    e.st.cp
        .power(&res(), control::PowerAction::Reimage, ids(&["0"]))
        .unwrap();
    settle(&e, 10).await;
    assert_eq!(e.fake.calls_of(Op::Reimage), vec![m0.clone()]);
    assert_eq!(image_of(&e, &m0).as_deref(), Some("good2"));
    assert_eq!(records(&e)[0].model_version, 2);

    let err =
        e.st.cp
            .power(&res(), control::PowerAction::DeleteInstances, ids(&["7"]))
            .unwrap_err();
    assert!(matches!(
        err,
        control::CommandError::Invalid {
            code: "InvalidParameter",
            ..
        }
    ));
    e.st.cp
        .power(&res(), control::PowerAction::DeleteInstances, ids(&["2"]))
        .unwrap();
    settle(&e, 10).await;
    assert_eq!(ids_of(&e), vec![0, 1]);
    let doc = e.st.vmss_doc(&res()).unwrap().unwrap();
    assert_eq!(doc.arm["sku"]["capacity"], 2);

    assert!(e.st.cp.delete_vmss(&res()).unwrap());
    settle(&e, 10).await;
    assert!(e.st.vmss_doc(&res()).unwrap().is_none());
    assert_eq!(e.fake.list().unwrap(), Vec::<String>::new());
    assert!(!e.st.cp.delete_vmss(&res()).unwrap());
}

/// Host metrics from the machines' usage: the sampler reads each instance's (injected) usage,
/// CPU is relative to the size's vCPUs (Standard_B1s: one), and a query reads them back.
#[tokio::test]
async fn metrics_from_machine_usage() {
    use model::metrics::{parse_query, Aggregation, Params};
    use runtime::MachineUsage;
    let e = env("metrics");
    create(&e, vmss_body("good", 2, json!({})));
    settle(&e, 10).await;
    let recs = records(&e);
    assert_eq!(recs[0].vm_size.as_deref(), Some("Standard_B1s"));
    let mib = 1u64 << 20;
    let usage = |cpu_ms: u64, used_mib: u64, net_in: u64| MachineUsage {
        cpu: Some(Duration::from_millis(cpu_ms)),
        memory_bytes: Some(used_mib * mib),
        memory_limit_bytes: Some(1024 * mib),
        net_in_bytes: Some(net_in),
        net_out_bytes: Some(net_in / 2),
    };
    let t0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
                                     // 30 s apart: instance 0 uses 15 s of CPU (50 %), instance 1 7.5 s (25 %).
    for (at, k) in [(t0, 0), (t0 + 30_000, 1)] {
        e.fake
            .set_usage(&recs[0].machine, usage(k * 15_000, 256, k * 6000));
        e.fake
            .set_usage(&recs[1].machine, usage(k * 7_500, 512, k * 2000));
        engine::sample_metrics(&e.st, at).await;
    }
    assert_eq!(e.fake.calls_of(Op::Usage).len(), 4);
    let ask = |names: &str, agg: &str, filter: Option<&'static str>| {
        let p = Params {
            metricnames: Some(names),
            aggregation: Some(agg),
            timespan: Some("2026-01-01T00:00:00Z/2026-01-01T00:01:00Z"),
            filter,
            ..Default::default()
        };
        let q = parse_query(&p, t0 / 1000).unwrap();
        e.st.query_metrics(&res().key(VMSS), &q).unwrap()
    };
    let first = |r: &plan::metrics::MetricResult, a| r.series[0].points[0].agg.value(a);
    let r = ask(
        "Percentage CPU,Network In Total,Available Memory Bytes",
        "average,total",
        None,
    );
    assert_eq!(first(&r[0], Aggregation::Average), Some(37.5));
    assert_eq!(first(&r[1], Aggregation::Total), Some(8000.0));
    assert_eq!(first(&r[2], Aggregation::Average), Some(640.0 * mib as f64));
    let r = ask("Percentage CPU", "maximum", Some("VMName eq '*'"));
    let per_vm: Vec<(Option<String>, Option<f64>)> = r[0]
        .series
        .iter()
        .map(|s| (s.vm.clone(), s.points[0].agg.value(Aggregation::Maximum)))
        .collect();
    assert_eq!(
        per_vm,
        [
            (Some("web_0".into()), Some(50.0)),
            (Some("web_1".into()), Some(25.0))
        ]
    );
    // A machine that stops reports nothing: its next reading after a restart starts afresh.
    assert!(e.fake.die(&recs[1].machine));
    engine::sample_metrics(&e.st, t0 + 45_000).await;
    let r = ask("Percentage CPU", "count", Some("VMName eq 'web_1'"));
    assert_eq!(first(&r[0], Aggregation::Count), Some(1.0));
    assert!(e.st.metrics.memory_bytes() > 0);
}

/// Injected CPU at `pct` percent (one vCPU) on every instance for `minutes`, sampled every 15 s
/// from `*at` (which moves on); `cpu` carries each machine's cumulative CPU time.
async fn load(
    e: &Env,
    cpu: &mut std::collections::HashMap<String, u64>,
    at: &mut u64,
    minutes: u64,
    pct: u64,
) {
    for _ in 0..minutes * 4 {
        *at += 15_000;
        for r in records(e) {
            let used = cpu.entry(r.machine.clone()).or_insert(0);
            *used += 15_000 * pct / 100;
            e.fake.set_usage(
                &r.machine,
                runtime::MachineUsage {
                    cpu: Some(Duration::from_millis(*used)),
                    ..Default::default()
                },
            );
        }
        engine::sample_metrics(&e.st, *at).await;
    }
}

fn autoscale_log(e: &Env, a: &Res) -> Vec<(String, String, u32, u32)> {
    let st = e.st.cp.autoscale_state(a).unwrap();
    st.log
        .iter()
        .map(|l| {
            (
                l.operation_name.clone(),
                l.status.clone(),
                l.old_capacity,
                l.new_capacity,
            )
        })
        .collect()
}

fn capacity(e: &Env) -> u64 {
    let doc = e.st.vmss_doc(&res()).unwrap().unwrap();
    doc.arm["sku"]["capacity"].as_u64().unwrap()
}

/// Autoscale over injected CPU: 90 % for 5 minutes scales out by one (a merge put of the
/// capacity, carried out by the engine), the cooldown holds the next action back (logged once),
/// 10 % scales back in after the cooldown, then the minimum holds; a rolling upgrade waits.
#[tokio::test]
async fn autoscale_scales_out_and_in_with_injected_cpu() {
    let e = env("autoscale");
    e.st.cp
        .put_group(
            &Res {
                name: String::new(),
                ..res()
            },
            Put::Replace(json!({})),
        )
        .unwrap();
    create(&e, vmss_body("good", 2, json!({})));
    settle(&e, 10).await;
    let target = format!(
        "{}/providers/Microsoft.Compute/virtualMachineScaleSets/web",
        rg()
    );
    let rule = |op: &str, threshold: u32, direction: &str| {
        json!({
        "metricTrigger": {"metricName": "Percentage CPU", "metricResourceUri": target, "timeGrain": "PT1M",
            "statistic": "Average", "timeWindow": "PT5M", "timeAggregation": "Average", "operator": op, "threshold": threshold},
        "scaleAction": {"direction": direction, "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}})
    };
    let a = Res {
        name: "auto".into(),
        ..res()
    };
    e.st.cp.put_autoscale(&a, Put::Replace(json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": target,
        "profiles": [{"name": "cpu", "capacity": {"minimum": "2", "maximum": "4", "default": "2"},
            "rules": [rule("GreaterThan", 70, "Increase"), rule("LessThan", 30, "Decrease")]}]}}))).unwrap();
    let t0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let (mut at, mut cpu) = (t0, Default::default());
    // No metrics yet: at the default already, nothing to show but the missing metrics (once).
    engine::evaluate_autoscale(&e.st, at / 1000);
    engine::evaluate_autoscale(&e.st, at / 1000 + 30);
    let skipped = |from: u32| {
        (
            "Autoscale evaluation".to_string(),
            "Skipped".to_string(),
            from,
            from,
        )
    };
    assert_eq!(autoscale_log(&e, &a), [skipped(2)]);

    load(&e, &mut cpu, &mut at, 6, 90).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 3);
    let up = (
        "Autoscale scale up".to_string(),
        "Succeeded".to_string(),
        2,
        3,
    );
    assert_eq!(autoscale_log(&e, &a)[1..], [up]);
    let last = e.st.cp.autoscale_state(&a).unwrap();
    assert_eq!(last.last_scale_at, Some(at / 1000));
    assert_eq!(last.last_scale_cooldown_secs, 300);
    settle(&e, 10).await;
    assert_eq!(e.fake.running().len(), 3);

    // Still hot, within the cooldown: one skip for two evaluations.
    load(&e, &mut cpu, &mut at, 2, 90).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    engine::evaluate_autoscale(&e.st, at / 1000 + 30);
    assert_eq!(capacity(&e), 3);
    let log = e.st.cp.autoscale_state(&a).unwrap().log;
    assert_eq!(log.len(), 3);
    assert!(
        log[2].description.contains("cooldown"),
        "{}",
        log[2].description
    );

    // Cool: once the cooldown is over, in by one to the minimum, then held there.
    load(&e, &mut cpu, &mut at, 6, 10).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 2);
    let down = (
        "Autoscale scale down".to_string(),
        "Succeeded".to_string(),
        3,
        2,
    );
    assert_eq!(autoscale_log(&e, &a)[3..], [down]);
    settle(&e, 10).await;
    assert_eq!(e.fake.running().len(), 2);
    load(&e, &mut cpu, &mut at, 6, 10).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    engine::evaluate_autoscale(&e.st, at / 1000 + 30);
    let log = e.st.cp.autoscale_state(&a).unwrap().log;
    assert_eq!(log.len(), 5);
    assert!(
        log[4].description.contains("minimum"),
        "{}",
        log[4].description
    );

    // Hot again during a rolling upgrade: autoscale waits and says so.
    e.st.cp
        .update_rollout(&res(), |r| {
            *r = Some(control::RolloutDoc {
                state: Default::default(),
                receipt: Default::default(),
                last_completed_version: None,
            });
            true
        })
        .unwrap();
    load(&e, &mut cpu, &mut at, 6, 90).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 2);
    let log = e.st.cp.autoscale_state(&a).unwrap().log;
    assert!(
        log[5].description.contains("rolling upgrade"),
        "{}",
        log[5].description
    );
    // A disabled setting is not evaluated; deleting the scale set leaves it deletable.
    e.st.cp
        .put_autoscale(&a, Put::Merge(json!({"properties": {"enabled": false}})))
        .unwrap();
    e.st.cp
        .update_rollout(&res(), |r| {
            *r = None;
            true
        })
        .unwrap();
    engine::evaluate_autoscale(&e.st, at / 1000 + 60);
    assert_eq!(capacity(&e), 2);
    assert!(e.st.cp.delete_autoscale(&a).unwrap());
}

/// Autoscale's history is durable and its scale-in is the scale set's own: a manual capacity
/// above the maximum is moved back at once, scale-in spares the instance protected from it, and
/// a daemon restart keeps the cooldown of the last action.
#[tokio::test]
async fn autoscale_history_survives_a_restart_and_scale_in_spares_protected_instances() {
    let mut e = env("autoscale-restart");
    e.st.cp
        .put_group(
            &Res {
                name: String::new(),
                ..res()
            },
            Put::Replace(json!({})),
        )
        .unwrap();
    create(&e, vmss_body("good", 2, json!({})));
    settle(&e, 10).await;
    let key = res().key(VMSS);
    assert!(e
        .st
        .update_instance(&key, 0, |r| r.protect_from_scale_in = true)
        .unwrap());
    let target = format!(
        "{}/providers/Microsoft.Compute/virtualMachineScaleSets/web",
        rg()
    );
    let rule = |op: &str, threshold: u32, direction: &str| {
        json!({
        "metricTrigger": {"metricName": "Percentage CPU", "metricResourceUri": target, "timeGrain": "PT1M",
            "statistic": "Average", "timeWindow": "PT5M", "timeAggregation": "Average", "operator": op, "threshold": threshold},
        "scaleAction": {"direction": direction, "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}})
    };
    let a = Res {
        name: "auto".into(),
        ..res()
    };
    e.st.cp.put_autoscale(&a, Put::Replace(json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": target,
        "profiles": [{"name": "cpu", "capacity": {"minimum": "1", "maximum": "3", "default": "1"},
            "rules": [rule("GreaterThan", 70, "Increase"), rule("LessThan", 30, "Decrease")]}]}}))).unwrap();
    let t0: u64 = 1_767_225_600_000;
    let (mut at, mut cpu) = (t0, Default::default());

    // Above the maximum by hand: back to it on the next run, no cooldown recorded.
    put(&e, vmss_body("good", 5, json!({})));
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 3);
    let st = e.st.cp.autoscale_state(&a).unwrap();
    assert_eq!(st.last_scale_at, None);
    assert!(
        st.log[0].description.contains("outside the limits"),
        "{}",
        st.log[0].description
    );
    settle(&e, 10).await;
    assert_eq!(records(&e).len(), 3);

    // Idle: in by one (the protected instance stays), then a restart within the cooldown.
    load(&e, &mut cpu, &mut at, 6, 10).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 2);
    settle(&e, 10).await;
    assert!(ids_of(&e).contains(&0));
    restart(&mut e);
    load(&e, &mut cpu, &mut at, 2, 10).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 2);
    let log = e.st.cp.autoscale_state(&a).unwrap().log;
    assert!(
        log.last().unwrap().description.contains("cooldown"),
        "{log:?}"
    );

    // After the cooldown: in to the minimum, which is the protected instance.
    load(&e, &mut cpu, &mut at, 4, 10).await;
    engine::evaluate_autoscale(&e.st, at / 1000);
    assert_eq!(capacity(&e), 1);
    settle(&e, 10).await;
    assert_eq!(ids_of(&e), [0]);
    let ops: Vec<(String, u32, u32)> =
        e.st.cp
            .autoscale_state(&a)
            .unwrap()
            .log
            .iter()
            .filter(|l| l.status == "Succeeded")
            .map(|l| (l.operation_name.clone(), l.old_capacity, l.new_capacity))
            .collect();
    let down = |from, to| ("Autoscale scale down".to_string(), from, to);
    assert_eq!(ops, [down(5, 3), down(3, 2), down(2, 1)]);
}
