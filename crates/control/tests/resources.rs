//! The commands on resource groups, load balancers and images, over an in-memory store and an
//! image store in a temp dir: what they store, and each refusal's kind, code and message.
use control::{Cidr, CommandError, ControlPlane, InstanceRecord, Put, Res, LB, VMSS};
use serde_json::{json, Value};
use sha2::Digest;

const SUB: &str = "00000000-0000-0000-0000-000000000000";

struct Env {
    cp: ControlPlane,
    images: image::ImageStore,
    dir: std::path::PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn env(tag: &str) -> Env {
    let dir = std::env::temp_dir().join(format!("scaleset-control-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Env {
        cp: ControlPlane::new(store::Store::open_in_memory().unwrap()),
        images: image::ImageStore::new(dir.join("images"), dir.join("bases")),
        dir,
    }
}

fn res(rg: &str, name: &str) -> Res {
    Res {
        sub: SUB.into(),
        rg: rg.into(),
        name: name.into(),
    }
}

fn group(rg: &str) -> Res {
    res(rg, "")
}

fn loopback() -> Vec<Cidr> {
    Cidr::parse_list("127.0.0.0/8,::1/128").unwrap()
}

/// A load balancer `name` in group `rg` with one rule from `ip:port`.
fn lb_body(rg: &str, name: &str, ip: &str, port: u16) -> Value {
    let id = format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/{LB}/{name}");
    json!({"location": "local", "properties": {
        "frontendIPConfigurations": [{"name": "fe", "properties": {"privateIPAddress": ip}}],
        "backendAddressPools": [{"name": "be"}],
        "probes": [{"name": "p", "properties": {"protocol": "Http", "port": 80, "requestPath": "/health"}}],
        "loadBalancingRules": [{"name": "r", "properties": {"protocol": "Tcp", "frontendPort": port, "backendPort": 80,
            "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/fe")},
            "backendAddressPool": {"id": format!("{id}/backendAddressPools/be")},
            "probe": {"id": format!("{id}/probes/p")}}}],
    }})
}

/// A capacity-0 scale set body; `lb` names a load balancer of `rg` whose pool it joins, `image`
/// an image its model uses.
fn vmss_body(rg: &str, lb: Option<&str>, image: Option<&str>) -> Value {
    let mut props = json!({"upgradePolicy": {"mode": "Manual"}, "virtualMachineProfile": {}});
    let vmp = &mut props["virtualMachineProfile"];
    if let Some(lb) = lb {
        let pool = format!(
            "/subscriptions/{SUB}/resourceGroups/{rg}/providers/{LB}/{lb}/backendAddressPools/be"
        );
        vmp["networkProfile"] = json!({"networkInterfaceConfigurations": [{"name": "nic", "properties": {"ipConfigurations": [
            {"name": "ip", "properties": {"loadBalancerBackendAddressPools": [{"id": pool}]}}]}}]});
    }
    if let Some(img) = image {
        vmp["storageProfile"] = json!({"imageReference": {"id": format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/images/{img}")}});
    }
    json!({"sku": {"capacity": 0}, "properties": props})
}

/// Imports a one-file `docker save` archive as image `name`.
fn import_image(e: &Env, name: &str) {
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
    let archive = e.dir.join(format!("{name}.tar"));
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    e.images
        .import(&archive, name, &mut std::io::sink())
        .unwrap();
}

/// A refusal as (HTTP-ish kind, code, message).
fn refusal<T: std::fmt::Debug>(r: Result<T, CommandError>) -> (&'static str, &'static str, String) {
    match r.expect_err("the command should be refused") {
        CommandError::Invalid { code, message } => ("Invalid", code, message),
        CommandError::NotFound { code, message } => ("NotFound", code, message),
        CommandError::Conflict { code, message } => ("Conflict", code, message),
        CommandError::Internal(m) => panic!("internal error: {m}"),
    }
}

#[test]
fn resource_groups_are_created_updated_listed_and_deleted() {
    let e = env("groups");
    let g = group("Web-RG");
    let created =
        e.cp.put_group(&g, Put::Replace(json!({"location": "westeurope"})))
            .unwrap();
    assert!(created.created);
    assert_eq!(
        created.doc,
        json!({"id": format!("/subscriptions/{SUB}/resourceGroups/Web-RG"), "name": "Web-RG",
            "type": "Microsoft.Resources/resourceGroups", "location": "westeurope",
            "properties": {"provisioningState": "Succeeded"}})
    );
    // A body without a location keeps the stored one; PATCH too; a new group gets `local`.
    for put in [Put::Replace(Value::Null), Put::Merge(json!({"tags": {}}))] {
        let s = e.cp.put_group(&g, put).unwrap();
        assert!(!s.created);
        assert_eq!(s.doc["location"], "westeurope");
    }
    let other =
        e.cp.put_group(&group("b"), Put::Replace(json!({})))
            .unwrap();
    assert_eq!(other.doc["location"], "local");
    // Names compare case-insensitively.
    assert_eq!(e.cp.group(&group("web-rg")).unwrap(), created.doc);
    let names: Vec<Value> =
        e.cp.list_groups(SUB)
            .unwrap()
            .into_iter()
            .map(|v| v["name"].clone())
            .collect();
    assert_eq!(names, vec![json!("b"), json!("Web-RG")]);
    assert!(e.cp.list_groups("other-sub").unwrap().is_empty());
    assert!(e.cp.delete_group(&g).unwrap());
    assert!(!e.cp.delete_group(&g).unwrap(), "already gone");

    let missing = "Resource group 'nope' could not be found.".to_string();
    for (name, r, want) in [
        (
            "get a missing group",
            refusal(e.cp.group(&group("nope"))),
            ("NotFound", "ResourceGroupNotFound", missing.clone()),
        ),
        (
            "patch a missing group",
            refusal(e.cp.put_group(&group("nope"), Put::Merge(json!({})))),
            ("NotFound", "ResourceGroupNotFound", missing.clone()),
        ),
        (
            "require a missing group",
            refusal(e.cp.require_group(&res("nope", "x"))),
            ("NotFound", "ResourceGroupNotFound", missing),
        ),
    ] {
        assert_eq!(r, want, "{name}");
    }
    for r in [
        refusal(e.cp.put_group(&group("bad."), Put::Replace(json!({})))),
        refusal(e.cp.group(&group("bad."))),
        refusal(e.cp.delete_group(&group("bad."))),
    ] {
        assert_eq!((r.0, r.1), ("Invalid", "InvalidResourceName"), "{}", r.2);
    }
    assert!(e.cp.require_group(&res("B", "x")).is_ok());
}

#[test]
fn a_group_is_deleted_only_once_it_is_empty() {
    let e = env("group-delete");
    let g = group("rg");
    e.cp.put_group(&g, Put::Replace(json!({}))).unwrap();
    e.cp.put_lb(
        &res("rg", "web"),
        Put::Replace(lb_body("rg", "web", "127.0.0.1", 8080)),
        &loopback(),
    )
    .unwrap();
    e.cp.put_vmss(
        &e.images,
        &res("rg", "Front"),
        Put::Replace(vmss_body("rg", Some("web"), None)),
    )
    .unwrap();
    assert_eq!(
        refusal(e.cp.delete_group(&g)),
        (
            "Conflict",
            "ResourceGroupNotEmpty",
            format!(
                "Resource group 'rg' still contains {VMSS}/front, {LB}/web; delete them first."
            )
        )
    );
    assert!(e.cp.group(&g).is_ok(), "nothing was deleted");
    // Emptied (the engine removes a deleted scale set's record), the group goes.
    e.cp.store.delete(&res("rg", "Front").key(VMSS)).unwrap();
    assert_eq!(
        refusal(e.cp.delete_group(&g)).2,
        format!("Resource group 'rg' still contains {LB}/web; delete them first.")
    );
    assert!(e.cp.delete_lb(&res("rg", "web")).unwrap());
    assert!(e.cp.delete_group(&g).unwrap());
    assert!(e.cp.group(&g).is_err());
}

#[test]
fn load_balancers_are_created_replaced_merged_and_listed() {
    let e = env("lbs");
    e.cp.put_group(&group("Web-RG"), Put::Replace(json!({})))
        .unwrap();
    let r = res("Web-RG", "Front-LB");
    let s =
        e.cp.put_lb(
            &r,
            Put::Replace(lb_body("Web-RG", "Front-LB", "127.0.0.1", 8080)),
            &loopback(),
        )
        .unwrap();
    assert!(s.created);
    // The result is the normalized body (defaults filled); the store adds the identity.
    assert_eq!(
        s.doc["properties"]["probes"][0]["properties"]["intervalInSeconds"],
        5
    );
    assert!(s.doc.get("x-resourceGroup").is_none());
    let stored = e.cp.lb(&res("web-rg", "front-lb")).unwrap();
    assert_eq!(
        (&stored["name"], &stored["x-resourceGroup"]),
        (&json!("Front-LB"), &json!("Web-RG"))
    );

    // Replacing with the same frontend: its own old version is no rival.
    let s =
        e.cp.put_lb(
            &r,
            Put::Replace(lb_body("Web-RG", "Front-LB", "127.0.0.1", 8080)),
            &loopback(),
        )
        .unwrap();
    assert!(!s.created);
    // A merge patch changes what it names and keeps the rest.
    let patch = json!({"properties": {"probes": [{"name": "p", "properties": {"protocol": "Http", "port": 81, "requestPath": "/ready"}}]}});
    let s = e.cp.put_lb(&r, Put::Merge(patch), &loopback()).unwrap();
    assert!(!s.created);
    assert_eq!(s.doc["properties"]["probes"][0]["properties"]["port"], 81);
    assert_eq!(
        s.doc["properties"]["loadBalancingRules"][0]["properties"]["frontendPort"],
        8080
    );
    assert_eq!(
        e.cp.lb(&r).unwrap()["properties"]["probes"][0]["properties"]["requestPath"],
        "/ready"
    );

    // Same port on another address, another port on the same address: both fine.
    for (name, ip, port) in [
        ("other-ip", "127.0.0.2", 8080),
        ("other-port", "127.0.0.1", 8081),
    ] {
        let b = lb_body("Web-RG", name, ip, port);
        e.cp.put_lb(&res("Web-RG", name), Put::Replace(b), &loopback())
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    let listed: Vec<(String, String)> =
        e.cp.list_lbs(SUB, Some("WEB-RG"))
            .unwrap()
            .into_iter()
            .map(|(r, v)| {
                assert_eq!(v["name"], json!(r.name));
                (r.rg, r.name)
            })
            .collect();
    let spelled = |n: &str| ("Web-RG".to_string(), n.to_string());
    assert_eq!(
        listed,
        vec![
            spelled("Front-LB"),
            spelled("other-ip"),
            spelled("other-port")
        ]
    );
    assert_eq!(e.cp.list_lbs(SUB, None).unwrap().len(), 3);
    assert!(e.cp.list_lbs(SUB, Some("elsewhere")).unwrap().is_empty());
}

#[test]
fn load_balancer_puts_are_refused_as_a_whole() {
    let e = env("lb-refusals");
    e.cp.put_group(&group("rg"), Put::Replace(json!({})))
        .unwrap();
    e.cp.put_group(&group("rg2"), Put::Replace(json!({})))
        .unwrap();
    e.cp.put_lb(
        &res("rg", "lb1"),
        Put::Replace(lb_body("rg", "lb1", "127.0.0.1", 8080)),
        &loopback(),
    )
    .unwrap();
    let outside = |ip: &str, list: &str| {
        format!("Frontend IP configuration 'fe': privateIPAddress {ip} is outside the addresses load balancers may listen on ({list}). Use one of them, or start the daemon with --lb-allowed-addresses (SCALESET_LB_ALLOWED_ADDRESSES) including it.")
    };
    let mut bad_probe = lb_body("rg", "lb2", "127.0.0.5", 9000);
    bad_probe["properties"]["probes"][0]["properties"]["probeThreshold"] = json!(0);
    // (what, load balancer, body, allowed addresses, (kind, code, message when checked))
    type Want = (&'static str, &'static str, Option<String>);
    let cases: Vec<(&str, Res, Put, Vec<Cidr>, Want)> = vec![
        (
            "no such group",
            res("nope", "lb2"),
            Put::Replace(lb_body("nope", "lb2", "127.0.0.5", 9000)),
            loopback(),
            (
                "NotFound",
                "ResourceGroupNotFound",
                Some("Resource group 'nope' could not be found.".into()),
            ),
        ),
        (
            "bad name",
            res("rg", "-lb"),
            Put::Replace(lb_body("rg", "-lb", "127.0.0.5", 9000)),
            loopback(),
            ("Invalid", "InvalidResourceName", None),
        ),
        (
            "patch of a missing load balancer",
            res("rg", "lb2"),
            Put::Merge(json!({})),
            loopback(),
            (
                "NotFound",
                "ResourceNotFound",
                Some(format!(
                    "The Resource '{LB}/lb2' under resource group 'rg' was not found."
                )),
            ),
        ),
        (
            "invalid model",
            res("rg", "lb2"),
            Put::Replace(bad_probe),
            loopback(),
            ("Invalid", "InvalidParameter", None),
        ),
        (
            "frontend outside the allowed addresses",
            res("rg", "lb2"),
            Put::Replace(lb_body("rg", "lb2", "10.1.2.3", 9000)),
            loopback(),
            (
                "Invalid",
                "InvalidParameter",
                Some(outside("10.1.2.3", "127.0.0.0/8, ::1/128")),
            ),
        ),
        (
            "every address on the host",
            res("rg", "lb2"),
            Put::Replace(lb_body("rg", "lb2", "0.0.0.0", 9000)),
            loopback(),
            (
                "Invalid",
                "InvalidParameter",
                Some(outside("0.0.0.0", "127.0.0.0/8, ::1/128")),
            ),
        ),
        (
            "no address allowed at all",
            res("rg", "lb2"),
            Put::Replace(lb_body("rg", "lb2", "127.0.0.1", 9000)),
            vec![],
            (
                "Invalid",
                "InvalidParameter",
                Some(outside("127.0.0.1", "none")),
            ),
        ),
        (
            "frontend another load balancer listens on",
            res("rg", "lb2"),
            Put::Replace(lb_body("rg", "lb2", "127.0.0.1", 8080)),
            loopback(),
            (
                "Conflict",
                "FrontendPortInUse",
                Some("Frontend 127.0.0.1:8080 is already used by load balancer 'lb1'.".into()),
            ),
        ),
        (
            "frontend taken across resource groups",
            res("rg2", "lb2"),
            Put::Replace(lb_body("rg2", "lb2", "127.0.0.1", 8080)),
            loopback(),
            (
                "Conflict",
                "FrontendPortInUse",
                Some("Frontend 127.0.0.1:8080 is already used by load balancer 'lb1'.".into()),
            ),
        ),
    ];
    for (name, r, put, allowed, (kind, code, message)) in cases {
        let got = refusal(e.cp.put_lb(&r, put, &allowed));
        assert_eq!((got.0, got.1), (kind, code), "{name}: {}", got.2);
        if let Some(m) = message {
            assert_eq!(got.2, m, "{name}");
        }
        assert!(
            e.cp.store.get(&r.key(LB)).unwrap().is_none(),
            "{name}: nothing stored"
        );
    }
    // A narrower allowed list lets through what it contains.
    let only = Cidr::parse_list("127.0.0.5/32").unwrap();
    e.cp.put_lb(
        &res("rg", "lb2"),
        Put::Replace(lb_body("rg", "lb2", "127.0.0.5", 9000)),
        &only,
    )
    .unwrap();
}

#[test]
fn a_load_balancer_in_use_is_not_deleted() {
    let e = env("lb-delete");
    e.cp.put_group(&group("rg"), Put::Replace(json!({})))
        .unwrap();
    let lb = res("rg", "web");
    e.cp.put_lb(
        &lb,
        Put::Replace(lb_body("rg", "web", "127.0.0.1", 8080)),
        &loopback(),
    )
    .unwrap();
    let vmss = res("rg", "Front");
    e.cp.put_vmss(
        &e.images,
        &vmss,
        Put::Replace(vmss_body("rg", Some("web"), None)),
    )
    .unwrap();
    let want = (
        "Conflict",
        "LoadBalancerInUseByVirtualMachineScaleSet",
        "Cannot delete load balancer 'web': it is in use by virtual machine scale set 'front'."
            .to_string(),
    );
    assert_eq!(refusal(e.cp.delete_lb(&lb)), want);
    // Names compare case-insensitively; a scale set being deleted still holds it.
    assert_eq!(refusal(e.cp.delete_lb(&res("RG", "WEB"))).1, want.1);
    e.cp.delete_vmss(&vmss).unwrap();
    assert_eq!(refusal(e.cp.delete_lb(&lb)), want);
    assert!(e.cp.lb(&lb).is_ok());
    // Gone once the engine has removed the scale set's record.
    e.cp.store.delete(&vmss.key(VMSS)).unwrap();
    assert!(e.cp.delete_lb(&lb).unwrap());
    assert!(!e.cp.delete_lb(&lb).unwrap(), "already gone");
    assert_eq!(
        refusal(e.cp.lb(&lb)),
        (
            "NotFound",
            "ResourceNotFound",
            format!("The Resource '{LB}/web' under resource group 'rg' was not found.")
        )
    );
    assert_eq!(
        refusal(e.cp.delete_lb(&res("rg", "-x"))).1,
        "InvalidResourceName"
    );
}

fn instance(id: u32, image: &str) -> InstanceRecord {
    InstanceRecord {
        instance_id: id,
        created_seq: id.into(),
        model_version: 1,
        image: image.into(),
        ip: std::net::Ipv4Addr::new(10, 0, 0, 4),
        computer_name: format!("web{id:06}"),
        machine: format!("t-web-{id}"),
        time_created: control::now_rfc3339(),
        vm_id: control::uuid(),
        intent: plan::PowerIntent::Running,
        provisioning_state: control::ProvisioningState::Succeeded,
        work: Default::default(),
        draining: false,
        vm_size: None,
        protect_from_scale_in: false,
        protect_from_scale_set_actions: false,
        last_error: None,
        state_changed_at: None,
        repair_attempts: 0,
        deallocated: false,
    }
}

#[test]
fn images_are_read_listed_and_deleted_unless_in_use() {
    let e = env("images");
    for name in ["old", "new", "spare"] {
        import_image(&e, name);
    }
    e.cp.put_group(&group("rg"), Put::Replace(json!({})))
        .unwrap();
    let img = |n: &str| res("rg", n);
    assert_eq!(e.cp.image(&e.images, &img("new")).unwrap().name, "new");
    let names: Vec<String> =
        e.cp.list_images(&e.images)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
    assert_eq!(names, ["new", "old", "spare"]);

    // The model runs `new`; an instance still runs `old`.
    let vmss = res("rg", "Front");
    e.cp.put_vmss(
        &e.images,
        &vmss,
        Put::Replace(vmss_body("rg", None, Some("new"))),
    )
    .unwrap();
    e.cp.put_instance(&vmss.key(VMSS), &instance(0, "old"))
        .unwrap();
    let in_use = |n: &str| {
        (
            "Conflict",
            "ImageInUse",
            format!(
                "Image '{n}' is in use by virtual machine scale set 'front' and cannot be deleted."
            ),
        )
    };
    let baking = "Images are created by baking: `scaleset image bake --base debian:bookworm --package DIR --script setupscript.sh --name NAME`.";
    for (name, r, want) in [
        ("used by the model", refusal(e.cp.delete_image(&e.images, &img("new"))), in_use("new")),
        ("used by an instance", refusal(e.cp.delete_image(&e.images, &img("old"))), in_use("old")),
        (
            "missing",
            refusal(e.cp.image(&e.images, &img("nope"))),
            ("NotFound", "ResourceNotFound", "The Resource 'Microsoft.Compute/images/nope' under resource group 'rg' was not found.".into()),
        ),
        ("put", refusal(Err::<(), _>(e.cp.put_image(&img("x")))), ("Invalid", "OperationNotAllowed", baking.into())),
    ] {
        assert_eq!(r, want, "{name}");
    }
    for r in [
        refusal(e.cp.image(&e.images, &img("-x"))),
        refusal(e.cp.delete_image(&e.images, &img("-x"))),
        refusal(Err::<(), _>(e.cp.put_image(&img("-x")))),
    ] {
        assert_eq!((r.0, r.1), ("Invalid", "InvalidResourceName"), "{}", r.2);
    }
    assert!(e.images.get("new").unwrap().is_some() && e.images.get("old").unwrap().is_some());

    assert!(e.cp.delete_image(&e.images, &img("spare")).unwrap());
    assert!(
        !e.cp.delete_image(&e.images, &img("spare")).unwrap(),
        "already gone"
    );
    assert!(e.images.get("spare").unwrap().is_none());
    // Once the scale set's record is gone, its images are free.
    e.cp.store.delete(&vmss.key(VMSS)).unwrap();
    for n in ["new", "old"] {
        assert!(e.cp.delete_image(&e.images, &img(n)).unwrap(), "{n}");
    }
    assert!(e.cp.list_images(&e.images).unwrap().is_empty());
}

/// An autoscale setting of `vmss` in `rg` (min 1, max 5, default 2, one CPU scale-out rule).
fn autoscale_body(rg: &str, vmss: &str) -> Value {
    let target = format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/{VMSS}/{vmss}");
    json!({"location": "local", "properties": {"enabled": true, "targetResourceUri": target,
        "profiles": [{"name": "p", "capacity": {"minimum": "1", "maximum": "5", "default": "2"},
            "rules": [{"metricTrigger": {"metricName": "Percentage CPU", "metricResourceUri": target,
                "timeGrain": "PT1M", "statistic": "Average", "timeWindow": "PT5M",
                "timeAggregation": "Average", "operator": "GreaterThan", "threshold": 70},
              "scaleAction": {"direction": "Increase", "type": "ChangeCount", "value": "1", "cooldown": "PT5M"}}]}]}})
}

#[test]
fn autoscale_settings_are_stored_patched_listed_and_deleted() {
    use control::AUTOSCALE;
    let e = env("autoscale");
    e.cp.put_group(&group("rg"), Put::Replace(json!({})))
        .unwrap();
    let a = res("rg", "Auto");
    let (kind, code, _) =
        refusal(e.cp.put_autoscale(&res("rg", "a/b"), Put::Replace(autoscale_body("rg", "web"))));
    assert_eq!((kind, code), ("Invalid", "InvalidResourceName"));
    // The target must exist.
    let (kind, code, msg) =
        refusal(e.cp.put_autoscale(&a, Put::Replace(autoscale_body("rg", "web"))));
    assert_eq!((kind, code), ("NotFound", "ResourceNotFound"));
    assert!(msg.contains("virtualMachineScaleSets/web"), "{msg}");
    e.cp.put_vmss(
        &e.images,
        &res("rg", "web"),
        Put::Replace(vmss_body("rg", None, None)),
    )
    .unwrap();
    let stored =
        e.cp.put_autoscale(&a, Put::Replace(autoscale_body("rg", "web")))
            .unwrap();
    assert!(stored.created && stored.doc.enabled);
    // PATCH merges properties.
    let patched =
        e.cp.put_autoscale(&a, Put::Merge(json!({"properties": {"enabled": false}})))
            .unwrap();
    assert!(!patched.created && !patched.doc.enabled);
    assert_eq!(patched.doc.profiles, stored.doc.profiles);
    assert!(!e.cp.autoscale(&res("RG", "auto")).unwrap().enabled);
    // A second setting on the same scale set is refused.
    let (kind, code, _) = refusal(e.cp.put_autoscale(
        &res("rg", "other"),
        Put::Replace(autoscale_body("rg", "web")),
    ));
    assert_eq!((kind, code), ("Conflict", "Conflict"));
    let listed = e.cp.list_autoscale(SUB, None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, a, "listed as spelled");
    assert_eq!(e.cp.list_autoscale(SUB, Some("none")).unwrap().len(), 0);
    // A bad body changes nothing.
    let mut bad = autoscale_body("rg", "web");
    bad["properties"]["profiles"][0]["capacity"]["minimum"] = json!("9");
    assert_eq!(
        refusal(e.cp.put_autoscale(&a, Put::Replace(bad))).0,
        "Invalid"
    );
    assert!(!e.cp.autoscale(&a).unwrap().enabled);
    // State is bounded and goes with the setting; the group is not empty while it exists.
    e.cp.update_autoscale_state(&a, |s| {
        for i in 0..control::ACTIVITY_LOG_MAX + 5 {
            s.log.push(control::ActivityEvent {
                event_timestamp: i.to_string(),
                operation_name: "Autoscale scale up".into(),
                status: "Succeeded".into(),
                old_capacity: 1,
                new_capacity: 2,
                description: String::new(),
            });
        }
        s.last_scale_at = Some(7);
    })
    .unwrap();
    let st = e.cp.autoscale_state(&a).unwrap();
    assert_eq!(st.log.len(), control::ACTIVITY_LOG_MAX);
    assert_eq!(st.log[0].event_timestamp, "5", "the oldest went first");
    assert_eq!(st.history().last_scale.unwrap().at, 7);
    // Deleting the scale set leaves the setting readable and deletable.
    e.cp.store.delete(&res("rg", "web").key(VMSS)).unwrap();
    assert!(refusal(e.cp.delete_group(&group("rg")))
        .2
        .contains(&format!("{AUTOSCALE}/auto")));
    assert!(e.cp.autoscale(&a).is_ok());
    assert!(e.cp.delete_autoscale(&a).unwrap());
    assert!(!e.cp.delete_autoscale(&a).unwrap());
    assert_eq!(e.cp.autoscale_state(&a).unwrap(), Default::default());
    assert_eq!(refusal(e.cp.autoscale(&a)).0, "NotFound");
    assert_eq!(
        refusal(e.cp.put_autoscale(&a, Put::Merge(json!({})))).0,
        "NotFound"
    );
}
