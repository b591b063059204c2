//! az-compatible verbs over the local ARM API.
use crate::client::{self, Client};
use crate::output::{self, render, Columns, Output};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::time::Duration;

#[derive(Args, Clone)]
pub struct Target {
    /// Resource group.
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    /// Resource name.
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Args, Clone)]
pub struct Instances {
    #[command(flatten)]
    pub t: Target,
    /// Instance ids (space-separated); all instances when omitted, where the operation allows it.
    #[arg(long = "instance-ids", num_args = 1..)]
    pub ids: Option<Vec<String>>,
    /// Return without waiting for the operation to finish.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a resource group.
    Create {
        #[arg(long, short = 'n')]
        name: String,
        #[arg(long, short = 'l', default_value = "local")]
        location: String,
    },
    Show {
        #[arg(long, short = 'n')]
        name: String,
    },
    List,
    /// Delete an empty resource group.
    Delete {
        #[arg(long, short = 'n')]
        name: String,
    },
}

#[derive(Subcommand)]
pub enum VmssCmd {
    /// Create a scale set (waits until its instances are provisioned unless --no-wait).
    Create {
        #[command(flatten)]
        t: Target,
        /// Image name or full id (Microsoft.Compute/images).
        #[arg(long)]
        image: String,
        #[arg(long, default_value_t = 2)]
        instance_count: u32,
        /// Load balancer (name or id) whose backend pool the instances join.
        #[arg(long)]
        lb: Option<String>,
        /// Backend pool of --lb (default: its only pool).
        #[arg(long)]
        backend_pool_name: Option<String>,
        /// Health probe of --lb used as the scale set's health source (name or id).
        #[arg(long)]
        health_probe: Option<String>,
        #[arg(long, value_parser = ["Automatic", "Manual", "Rolling"], default_value = "Manual")]
        upgrade_policy_mode: String,
        #[arg(long, value_parser = ["Default", "NewestVM", "OldestVM"])]
        scale_in_policy: Option<String>,
        #[arg(long)]
        computer_name_prefix: Option<String>,
        /// Enable automatic repairs with this grace period in minutes (10-90).
        #[arg(long)]
        automatic_repairs_grace_period: Option<u32>,
        /// Repair action for automatic repairs (enables them; default Replace).
        #[arg(long, value_parser = ["Replace", "Restart", "Reimage"])]
        automatic_repairs_action: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    Show(Target),
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: Option<String>,
    },
    /// Change the capacity.
    Scale {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        new_capacity: u32,
        #[arg(long)]
        no_wait: bool,
    },
    /// Generic update: --set path.to.field=value (repeatable).
    Update {
        #[command(flatten)]
        t: Target,
        #[arg(long, num_args = 1..)]
        set: Vec<String>,
        /// Turn automatic repairs on or off.
        #[arg(long)]
        enable_automatic_repairs: Option<bool>,
        /// Automatic repairs grace period in minutes (10-90).
        #[arg(long)]
        automatic_repairs_grace_period: Option<u32>,
        #[arg(long, value_parser = ["Replace", "Restart", "Reimage"])]
        automatic_repairs_action: Option<String>,
        #[arg(long)]
        no_wait: bool,
    },
    Delete {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        no_wait: bool,
    },
    ListInstances(Target),
    GetInstanceView {
        #[command(flatten)]
        t: Target,
        #[arg(long = "instance-id")]
        instance_id: Option<String>,
    },
    Start(Instances),
    Stop(Instances),
    Deallocate(Instances),
    Restart(Instances),
    Reimage(Instances),
    /// Apply the latest model to instances (Manual upgrade mode).
    UpdateInstances(Instances),
    DeleteInstances(Instances),
    /// Rolling upgrades (Azure's rollingUpgrades).
    #[command(subcommand)]
    RollingUpgrade(RollingCmd),
    /// Return the model to the last one whose rollout completed (rolls out like any model change).
    Rollback {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        no_wait: bool,
    },
    /// Suspend or resume an orchestration service (automatic repairs); its state is in
    /// `get-instance-view`'s orchestrationServices.
    SetOrchestrationServiceState {
        #[command(flatten)]
        t: Target,
        /// The service: AutomaticRepairs.
        #[arg(long)]
        service_name: String,
        /// Resume or Suspend.
        #[arg(long)]
        action: String,
    },
}

#[derive(Subcommand)]
pub enum RollingCmd {
    /// Start a rolling upgrade to the latest model and follow it.
    Start {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        no_wait: bool,
    },
    /// Cancel the rolling upgrade in progress (the batch in flight finishes).
    Cancel(Target),
    /// The latest rolling upgrade's status, progress and deploy receipt.
    GetLatest(Target),
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    #[command(subcommand)]
    Lb(LbCmd),
}

#[derive(Subcommand)]
pub enum LbCmd {
    /// Create a Standard load balancer with one frontend and one backend pool.
    Create {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value = "LoadBalancerFrontEnd")]
        frontend_ip_name: String,
        #[arg(long, default_value = "127.0.0.1")]
        private_ip_address: String,
        #[arg(long)]
        backend_pool_name: Option<String>,
        /// L7 (HTTP/1.1 proxy with retries and draining; default) or L4 (TCP, Azure's semantics).
        #[arg(long, value_parser = ["L4", "L7"], default_value = "L7")]
        layer: String,
    },
    Show(Target),
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: Option<String>,
    },
    Delete(Target),
    #[command(subcommand)]
    Probe(ProbeCmd),
    #[command(subcommand)]
    Rule(RuleCmd),
}

#[derive(Args, Clone)]
pub struct Child {
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    #[arg(long)]
    pub lb_name: String,
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Args, Clone)]
pub struct ChildList {
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    #[arg(long)]
    pub lb_name: String,
}

// show, list and delete of a load balancer's child collection (probes, rules); a doc comment
// here would replace the parent command's help text.
#[derive(Subcommand)]
pub enum ChildOp {
    Show(Child),
    List(ChildList),
    Delete(Child),
}

#[derive(Subcommand)]
pub enum ProbeCmd {
    Create {
        #[command(flatten)]
        c: Child,
        #[arg(long, value_parser = ["Tcp", "Http", "Https"])]
        protocol: String,
        #[arg(long)]
        port: u32,
        #[arg(long)]
        path: Option<String>,
        #[arg(long)]
        interval: Option<u32>,
        #[arg(long)]
        probe_threshold: Option<u32>,
        #[arg(long, value_parser = ["AllProbedDown", "AllProbedUp"])]
        no_healthy_backends_behavior: Option<String>,
    },
    #[command(flatten)]
    Op(ChildOp),
}

#[derive(Subcommand)]
pub enum RuleCmd {
    Create {
        #[command(flatten)]
        c: Child,
        #[arg(long, value_parser = ["Tcp", "Udp", "All"])]
        protocol: String,
        #[arg(long)]
        frontend_port: u32,
        #[arg(long)]
        backend_port: u32,
        #[arg(long)]
        frontend_ip_name: Option<String>,
        #[arg(long)]
        backend_pool_name: Option<String>,
        #[arg(long)]
        probe_name: Option<String>,
        #[arg(long)]
        idle_timeout: Option<u32>,
        #[arg(long, value_parser = ["Default", "SourceIP", "SourceIPProtocol"])]
        load_distribution: Option<String>,
        #[arg(long)]
        enable_tcp_reset: Option<bool>,
    },
    #[command(flatten)]
    Op(ChildOp),
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Bake an image: base + package folder + deployment script (PackerBuild@1's builtin template).
    Bake {
        /// Base image, e.g. debian:bookworm.
        #[arg(long, default_value = "debian:bookworm")]
        base: String,
        /// The deployment package folder (the CI's drop).
        #[arg(long)]
        package: std::path::PathBuf,
        /// Deployment script, relative to the package folder.
        #[arg(long)]
        script: String,
        /// Arguments passed to the script.
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
        /// Image name (the seed names images by build id).
        #[arg(long, short = 'n')]
        name: String,
        /// Bake without network access.
        #[arg(long)]
        no_network: bool,
        /// Debian mirror for the base image.
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Import a base from an OCI image layout (directory or tarball) or a `docker save` tarball.
    Import {
        /// The OCI layout or tarball.
        #[arg(long)]
        source: std::path::PathBuf,
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Export an image as an OCI image layout tarball.
    Export {
        #[arg(long, short = 'n')]
        name: String,
        /// Destination tarball.
        #[arg(long)]
        file: std::path::PathBuf,
    },
    /// Remove layers no image references (and leftovers of crashed bakes).
    Gc,
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: Option<String>,
    },
    Show(Target),
    Delete(Target),
}

fn print(v: &Value, out: Output, cols: Columns) {
    if v.is_null() {
        return;
    }
    println!("{}", render(v, out, cols));
}

fn with_rg(mut v: Value) -> Value {
    if let Some(rg) = v
        .get("id")
        .and_then(Value::as_str)
        .and_then(|id| id.split('/').nth(4))
        .map(str::to_string)
    {
        v["x-rg"] = json!(rg);
    }
    v
}

fn client() -> Result<Client> {
    Client::from_home(&client::home())
}

pub async fn group(cmd: GroupCmd, out: Output) -> Result<()> {
    let c = client()?;
    match cmd {
        GroupCmd::Create { name, location } => print(
            &c.call(
                "PUT",
                &c.rg_path(&name),
                Some(&json!({"location": location})),
            )
            .await?,
            out,
            output::GROUP_COLS,
        ),
        GroupCmd::Show { name } => print(
            &c.call("GET", &c.rg_path(&name), None).await?,
            out,
            output::GROUP_COLS,
        ),
        GroupCmd::List => print(
            &Value::Array(
                c.list(&format!("/subscriptions/{}/resourceGroups", c.sub))
                    .await?,
            ),
            out,
            output::GROUP_COLS,
        ),
        GroupCmd::Delete { name } => {
            c.call("DELETE", &c.rg_path(&name), None).await?;
        }
    }
    Ok(())
}

fn lb_id(c: &Client, rg: &str, lb: &str) -> String {
    if lb.starts_with("/subscriptions/") {
        lb.to_string()
    } else {
        c.lb_path(rg, lb)
    }
}

/// Waits until the scale set's provisioning state is Succeeded (or it is gone, for deletes),
/// the way az waits on a long-running operation.
pub async fn wait_vmss(
    c: &Client,
    rg: &str,
    name: &str,
    gone: bool,
    timeout: Duration,
) -> Result<Option<Value>> {
    if c.is_azure() {
        // The call itself waited for ARM's long-running operation.
        return if gone {
            Ok(None)
        } else {
            c.get_opt(&c.vmss_path(rg, name)).await
        };
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let v = c.get_opt(&c.vmss_path(rg, name)).await?;
        match (&v, gone) {
            (None, true) => return Ok(None),
            (Some(x), false)
                if x.pointer("/properties/provisioningState")
                    .and_then(Value::as_str)
                    == Some("Succeeded") =>
            {
                return Ok(v)
            }
            (None, false) => bail!("scale set '{name}' disappeared while waiting"),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {}s waiting for scale set '{name}' (see `scaleset vmss list-instances -g {rg} -n {name} -o table`)", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const WAIT: Duration = Duration::from_secs(600);

pub async fn list_instances(c: &Client, rg: &str, name: &str) -> Result<Vec<Value>> {
    Ok(c.list(&format!(
        "{}/virtualMachines?$expand=instanceView",
        c.vmss_path(rg, name)
    ))
    .await?
    .into_iter()
    .map(output::decorate_vm)
    .collect())
}

pub fn vmss_body(
    c: &Client,
    rg: &str,
    image: &str,
    count: u32,
    lb: Option<(&str, &str, Option<&str>)>,
    (mode, scale_in, prefix): (&str, Option<&str>, Option<&str>),
) -> Value {
    let image_id = if image.starts_with("/subscriptions/") {
        image.to_string()
    } else {
        c.image_path(rg, image)
    };
    let mut props = json!({
        "upgradePolicy": {"mode": mode},
        "virtualMachineProfile": {
            "storageProfile": {"imageReference": {"id": image_id}},
        },
    });
    if let Some(p) = prefix {
        props["virtualMachineProfile"]["osProfile"] = json!({"computerNamePrefix": p});
    }
    if let Some(s) = scale_in {
        props["scaleInPolicy"] = json!({"rules": [s]});
    }
    if let Some((lb, pool, probe)) = lb {
        let id = lb_id(c, rg, lb);
        props["virtualMachineProfile"]["networkProfile"] = json!({
            "networkInterfaceConfigurations": [{"name": "nic", "properties": {"primary": true, "ipConfigurations": [{"name": "ipconfig", "properties": {
                "loadBalancerBackendAddressPools": [{"id": format!("{id}/backendAddressPools/{pool}")}]
            }}]}}],
        });
        if let Some(p) = probe {
            let pid = if p.starts_with("/subscriptions/") {
                p.to_string()
            } else {
                format!("{id}/probes/{p}")
            };
            props["virtualMachineProfile"]["networkProfile"]["healthProbe"] = json!({"id": pid});
        }
    }
    json!({"location": "local", "sku": {"name": "Standard_B1s", "tier": "Standard", "capacity": count}, "properties": props})
}

pub async fn vmss(cmd: VmssCmd, out: Output) -> Result<()> {
    let c = client()?;
    match cmd {
        VmssCmd::Create {
            t,
            image,
            instance_count,
            lb,
            backend_pool_name,
            health_probe,
            upgrade_policy_mode,
            scale_in_policy,
            computer_name_prefix,
            automatic_repairs_grace_period,
            automatic_repairs_action,
            no_wait,
        } => {
            let lbref = match &lb {
                None => None,
                Some(lb) => {
                    let lbv = c.call("GET", &lb_id(&c, &t.rg, lb), None).await?;
                    let pools: Vec<String> = lbv
                        .pointer("/properties/backendAddressPools")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
                        .collect();
                    let pool = match (&backend_pool_name, pools.as_slice()) {
                        (Some(p), _) => p.clone(),
                        (None, [one]) => one.clone(),
                        (None, []) => bail!("load balancer '{lb}' has no backend pool"),
                        (None, _) => bail!("load balancer '{lb}' has several backend pools; pass --backend-pool-name"),
                    };
                    Some((lb.clone(), pool))
                }
            };
            let body = vmss_body(
                &c,
                &t.rg,
                &image,
                instance_count,
                lbref
                    .as_ref()
                    .map(|(l, p)| (l.as_str(), p.as_str(), health_probe.as_deref())),
                (
                    &upgrade_policy_mode,
                    scale_in_policy.as_deref(),
                    computer_name_prefix.as_deref(),
                ),
            );
            let mut body = body;
            if automatic_repairs_grace_period.is_some() || automatic_repairs_action.is_some() {
                body["properties"]["automaticRepairsPolicy"] = serde_json::json!({
                    "enabled": true,
                    "gracePeriod": format!("PT{}M", automatic_repairs_grace_period.unwrap_or(10)),
                    "repairAction": automatic_repairs_action.as_deref().unwrap_or("Replace"),
                });
            }
            let v = c
                .call_wait("PUT", &c.vmss_path(&t.rg, &t.name), Some(&body), !no_wait)
                .await?;
            // In Rolling mode a model change starts a rolling upgrade: show its live progress.
            if !no_wait && rolling_in_progress(&c, &t.rg, &t.name).await? {
                follow_rollout(&c, &t.rg, &t.name).await?;
            }
            let v = if no_wait {
                v
            } else {
                wait_vmss(&c, &t.rg, &t.name, false, WAIT)
                    .await?
                    .unwrap_or(v)
            };
            print(&with_rg(v), out, output::VMSS_COLS);
        }
        VmssCmd::Show(t) => print(
            &with_rg(c.call("GET", &c.vmss_path(&t.rg, &t.name), None).await?),
            out,
            output::VMSS_COLS,
        ),
        VmssCmd::List { rg } => {
            let path = match &rg {
                Some(rg) => format!(
                    "{}/providers/Microsoft.Compute/virtualMachineScaleSets",
                    c.rg_path(rg)
                ),
                None => format!(
                    "/subscriptions/{}/providers/Microsoft.Compute/virtualMachineScaleSets",
                    c.sub
                ),
            };
            print(
                &Value::Array(c.list(&path).await?.into_iter().map(with_rg).collect()),
                out,
                output::VMSS_COLS,
            );
        }
        VmssCmd::Scale {
            t,
            new_capacity,
            no_wait,
        } => {
            let v = c
                .call_wait(
                    "PATCH",
                    &c.vmss_path(&t.rg, &t.name),
                    Some(&json!({"sku": {"capacity": new_capacity}})),
                    !no_wait,
                )
                .await?;
            let v = if no_wait {
                v
            } else {
                wait_vmss(&c, &t.rg, &t.name, false, WAIT)
                    .await?
                    .unwrap_or(v)
            };
            print(&with_rg(v), out, output::VMSS_COLS);
        }
        VmssCmd::Update {
            t,
            mut set,
            enable_automatic_repairs,
            automatic_repairs_grace_period,
            automatic_repairs_action,
            no_wait,
        } => {
            // az's automatic repairs flags are shorthands for --set.
            let repairs = "properties.automaticRepairsPolicy";
            if let Some(e) = enable_automatic_repairs {
                set.push(format!("{repairs}.enabled={e}"));
            }
            if let Some(m) = automatic_repairs_grace_period {
                set.push(format!("{repairs}.gracePeriod=PT{m}M"));
            }
            if let Some(a) = &automatic_repairs_action {
                set.push(format!("{repairs}.repairAction={a}"));
            }
            if set.is_empty() {
                bail!("nothing to update: pass --set path=value");
            }
            let mut body = c.call("GET", &c.vmss_path(&t.rg, &t.name), None).await?;
            for s in &set {
                let (path, value) =
                    model::setpath::parse_assignment(s).map_err(|e| anyhow!(e.message))?;
                model::setpath::set(&mut body, &path, value).map_err(|e| anyhow!(e.message))?;
            }
            let v = c
                .call_wait("PUT", &c.vmss_path(&t.rg, &t.name), Some(&body), !no_wait)
                .await?;
            // In Rolling mode a model change starts a rolling upgrade: show its live progress.
            if !no_wait && rolling_in_progress(&c, &t.rg, &t.name).await? {
                follow_rollout(&c, &t.rg, &t.name).await?;
            }
            let v = if no_wait {
                v
            } else {
                wait_vmss(&c, &t.rg, &t.name, false, WAIT)
                    .await?
                    .unwrap_or(v)
            };
            print(&with_rg(v), out, output::VMSS_COLS);
        }
        VmssCmd::Delete { t, no_wait } => {
            if c.get_opt(&c.vmss_path(&t.rg, &t.name)).await?.is_none() {
                bail!("(ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachineScaleSets/{}' under resource group '{}' was not found.", t.name, t.rg);
            }
            c.call_wait("DELETE", &c.vmss_path(&t.rg, &t.name), None, !no_wait)
                .await?;
            if !no_wait {
                wait_vmss(&c, &t.rg, &t.name, true, WAIT).await?;
            }
        }
        VmssCmd::ListInstances(t) => print(
            &Value::Array(list_instances(&c, &t.rg, &t.name).await?),
            out,
            output::VM_COLS,
        ),
        VmssCmd::GetInstanceView { t, instance_id } => {
            let path = match &instance_id {
                Some(id) if id != "*" => format!(
                    "{}/virtualMachines/{id}/instanceView",
                    c.vmss_path(&t.rg, &t.name)
                ),
                Some(_) => {
                    print(
                        &Value::Array(
                            list_instances(&c, &t.rg, &t.name)
                                .await?
                                .into_iter()
                                .map(|v| {
                                    v.pointer("/properties/instanceView")
                                        .cloned()
                                        .unwrap_or(Value::Null)
                                })
                                .collect(),
                        ),
                        Output::Json,
                        &[],
                    );
                    return Ok(());
                }
                None => format!("{}/instanceView", c.vmss_path(&t.rg, &t.name)),
            };
            print(&c.call("GET", &path, None).await?, Output::Json, &[]);
        }
        VmssCmd::Start(i) => power(&c, i, "start").await?,
        VmssCmd::Stop(i) => power(&c, i, "powerOff").await?,
        VmssCmd::Deallocate(i) => power(&c, i, "deallocate").await?,
        VmssCmd::Restart(i) => power(&c, i, "restart").await?,
        VmssCmd::Reimage(i) => power(&c, i, "reimage").await?,
        VmssCmd::UpdateInstances(i) => {
            if i.ids.is_none() {
                bail!("--instance-ids is required (use '*' for all instances)");
            }
            power(&c, i, "manualupgrade").await?
        }
        VmssCmd::SetOrchestrationServiceState {
            t,
            service_name,
            action,
        } => {
            c.call(
                "POST",
                &format!(
                    "{}/setOrchestrationServiceState",
                    c.vmss_path(&t.rg, &t.name)
                ),
                Some(&serde_json::json!({"serviceName": service_name, "action": action})),
            )
            .await?;
        }
        VmssCmd::Rollback { t, no_wait } => {
            let v = c
                .call_wait(
                    "POST",
                    &format!("{}/rollback", c.vmss_path(&t.rg, &t.name)),
                    None,
                    !no_wait,
                )
                .await?;
            if !no_wait && rolling_in_progress(&c, &t.rg, &t.name).await? {
                follow_rollout(&c, &t.rg, &t.name).await?;
            }
            let v = if no_wait {
                v
            } else {
                wait_vmss(&c, &t.rg, &t.name, false, WAIT)
                    .await?
                    .unwrap_or(v)
            };
            print(&with_rg(v), out, output::VMSS_COLS);
        }
        VmssCmd::RollingUpgrade(r) => match r {
            RollingCmd::Start { t, no_wait } => {
                c.call_wait(
                    "POST",
                    &format!("{}/osRollingUpgrade", c.vmss_path(&t.rg, &t.name)),
                    None,
                    !no_wait,
                )
                .await?;
                if !no_wait {
                    let v = follow_rollout(&c, &t.rg, &t.name).await?;
                    print(&v, Output::Json, &[]);
                }
            }
            RollingCmd::Cancel(t) => {
                c.call(
                    "POST",
                    &format!("{}/rollingUpgrades/cancel", c.vmss_path(&t.rg, &t.name)),
                    None,
                )
                .await?;
            }
            RollingCmd::GetLatest(t) => {
                let v = c
                    .call(
                        "GET",
                        &format!("{}/rollingUpgrades/latest", c.vmss_path(&t.rg, &t.name)),
                        None,
                    )
                    .await?;
                print(&v, Output::Json, &[]);
            }
        },
        VmssCmd::DeleteInstances(i) => {
            if i.ids.is_none() {
                bail!("--instance-ids is required");
            }
            power(&c, i, "delete").await?
        }
    }
    Ok(())
}

fn rolling_line(v: &Value) -> String {
    let p = |k: &str| {
        v.pointer(&format!("/properties/progress/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    format!(
        "rolling upgrade {}: {} succeeded, {} failed, {} in progress, {} pending",
        v.pointer("/properties/runningStatus/code")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        p("successfulInstanceCount"),
        p("failedInstanceCount"),
        p("inProgressInstanceCount"),
        p("pendingInstanceCount")
    )
}

/// Follows the latest rolling upgrade until it ends, printing progress; fails if it faulted.
pub async fn follow_rollout(c: &Client, rg: &str, name: &str) -> Result<Value> {
    let path = format!("{}/rollingUpgrades/latest", c.vmss_path(rg, name));
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let v = c.call("GET", &path, None).await?;
        let line = rolling_line(&v);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        let code = v
            .pointer("/properties/runningStatus/code")
            .and_then(Value::as_str)
            .unwrap_or("");
        if code != "RollingForward" {
            let r = |k: &str| {
                v.pointer(&format!("/properties/receipt/{k}"))
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            // Only the local daemon writes a deploy receipt (Azure has none).
            if v.pointer("/properties/receipt").is_some() {
                eprintln!(
                    "receipt: {} requests during the rollout, {} failed, {} non-2xx; per image: {}",
                    r("requests"),
                    r("failedRequests"),
                    r("non2xxResponses"),
                    r("requestsPerImage")
                );
            }
            if code == "Faulted" {
                let code = v
                    .pointer("/properties/error/code")
                    .and_then(Value::as_str)
                    .unwrap_or("Faulted");
                let msg = v
                    .pointer("/properties/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("the rolling upgrade faulted");
                bail!("({code}) {msg}");
            }
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out following the rolling upgrade of '{name}'");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn rolling_in_progress(c: &Client, rg: &str, name: &str) -> Result<bool> {
    let v = c
        .get_opt(&format!("{}/rollingUpgrades/latest", c.vmss_path(rg, name)))
        .await?;
    Ok(v.and_then(|v| {
        v.pointer("/properties/runningStatus/code")
            .and_then(Value::as_str)
            .map(|c| c == "RollingForward")
    })
    .unwrap_or(false))
}

async fn power(c: &Client, i: Instances, action: &str) -> Result<()> {
    let mut ids = i.ids.clone();
    if ids.as_ref().is_some_and(|v| v.iter().any(|x| x == "*")) {
        ids = Some(
            list_instances(c, &i.t.rg, &i.t.name)
                .await?
                .iter()
                .filter_map(|v| {
                    v.get("instanceId")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect(),
        );
    }
    let body = ids.map(|ids| json!({"instanceIds": ids}));
    c.call_wait(
        "POST",
        &format!("{}/{action}", c.vmss_path(&i.t.rg, &i.t.name)),
        body.as_ref(),
        !i.no_wait,
    )
    .await?;
    if !i.no_wait {
        wait_vmss(c, &i.t.rg, &i.t.name, false, WAIT).await?;
        if matches!(action, "start" | "powerOff" | "deallocate") {
            wait_power(
                c,
                &i,
                if action == "start" {
                    "running"
                } else {
                    "stopped"
                },
            )
            .await?;
        }
    }
    Ok(())
}

async fn wait_power(c: &Client, i: &Instances, want: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let all = list_instances(c, &i.t.rg, &i.t.name).await?;
        let targets: Vec<&Value> = all
            .iter()
            .filter(|v| {
                i.ids.as_ref().is_none_or(|ids| {
                    ids.iter().any(|x| {
                        x == "*" || Some(x.as_str()) == v.get("instanceId").and_then(Value::as_str)
                    })
                })
            })
            .collect();
        if targets
            .iter()
            .all(|v| v.get("x-power").and_then(Value::as_str) == Some(want))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out waiting for instances to be {want}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn lb_body(frontend: &str, ip: &str, pool: &str, layer: &str) -> Value {
    json!({
        "location": "local",
        "sku": {"name": "Standard"},
        "tags": {"scaleset.layer": layer},
        "properties": {
            "frontendIPConfigurations": [{"name": frontend, "properties": {"privateIPAddress": ip}}],
            "backendAddressPools": [{"name": pool}],
            "probes": [],
            "loadBalancingRules": [],
        },
    })
}

async fn edit_lb(
    c: &Client,
    rg: &str,
    lb: &str,
    f: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<Value> {
    let path = c.lb_path(rg, lb);
    let mut v = c.call("GET", &path, None).await?;
    f(&mut v)?;
    c.call("PUT", &path, Some(&v)).await
}

fn children<'a>(v: &'a mut Value, coll: &str) -> &'a mut Vec<Value> {
    if !v["properties"][coll].is_array() {
        v["properties"][coll] = json!([]);
    }
    v["properties"][coll]
        .as_array_mut()
        .expect("just made an array")
}

async fn child_cmd(
    c: &Client,
    out: Output,
    (coll, cols): (&str, Columns),
    op: ChildOp,
) -> Result<()> {
    let (rg, lb, name) = match &op {
        ChildOp::Show(ch) | ChildOp::Delete(ch) => (&ch.rg, &ch.lb_name, Some(ch.name.as_str())),
        ChildOp::List(l) => (&l.rg, &l.lb_name, None),
    };
    let not_found = |n: &str| anyhow!("(NotFound) '{n}' was not found in load balancer '{lb}'.");
    match (&op, name) {
        (ChildOp::Delete(_), Some(n)) => {
            edit_lb(c, rg, lb, |v| {
                let list = children(v, coll);
                let before = list.len();
                list.retain(|i| i.get("name").and_then(Value::as_str) != Some(n));
                if list.len() == before {
                    return Err(not_found(n));
                }
                Ok(())
            })
            .await?;
        }
        (op, name) => {
            let v = c.call("GET", &c.lb_path(rg, lb), None).await?;
            let items = v
                .pointer(&format!("/properties/{coll}"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            match (op, name) {
                (ChildOp::Show(_), Some(n)) => print(
                    items
                        .iter()
                        .find(|i| i.get("name").and_then(Value::as_str) == Some(n))
                        .ok_or_else(|| not_found(n))?,
                    out,
                    cols,
                ),
                _ => print(&Value::Array(items), out, cols),
            }
        }
    }
    Ok(())
}

pub async fn network(cmd: NetworkCmd, out: Output) -> Result<()> {
    let c = client()?;
    let NetworkCmd::Lb(cmd) = cmd;
    match cmd {
        LbCmd::Create {
            t,
            frontend_ip_name,
            private_ip_address,
            backend_pool_name,
            layer,
        } => {
            let pool = backend_pool_name.unwrap_or_else(|| format!("{}bepool", t.name));
            let v = c
                .call(
                    "PUT",
                    &c.lb_path(&t.rg, &t.name),
                    Some(&lb_body(
                        &frontend_ip_name,
                        &private_ip_address,
                        &pool,
                        &layer,
                    )),
                )
                .await?;
            print(&v, out, output::LB_COLS);
        }
        LbCmd::Show(t) => print(
            &c.call("GET", &c.lb_path(&t.rg, &t.name), None).await?,
            out,
            output::LB_COLS,
        ),
        LbCmd::List { rg } => {
            let path = match &rg {
                Some(rg) => format!(
                    "{}/providers/Microsoft.Network/loadBalancers",
                    c.rg_path(rg)
                ),
                None => format!(
                    "/subscriptions/{}/providers/Microsoft.Network/loadBalancers",
                    c.sub
                ),
            };
            print(&Value::Array(c.list(&path).await?), out, output::LB_COLS);
        }
        LbCmd::Delete(t) => {
            c.call("DELETE", &c.lb_path(&t.rg, &t.name), None).await?;
        }
        LbCmd::Probe(p) => match p {
            ProbeCmd::Create {
                c: ch,
                protocol,
                port,
                path,
                interval,
                probe_threshold,
                no_healthy_backends_behavior,
            } => {
                let mut props = json!({"protocol": protocol, "port": port});
                if let Some(p) = path {
                    props["requestPath"] = json!(p);
                }
                if let Some(i) = interval {
                    props["intervalInSeconds"] = json!(i);
                }
                if let Some(t) = probe_threshold {
                    props["probeThreshold"] = json!(t);
                }
                if let Some(n) = no_healthy_backends_behavior {
                    props["noHealthyBackendsBehavior"] = json!(n);
                }
                let name = ch.name.clone();
                let v = edit_lb(&c, &ch.rg, &ch.lb_name, |v| {
                    let list = children(v, "probes");
                    list.retain(|i| i.get("name").and_then(Value::as_str) != Some(&name));
                    list.push(json!({"name": name, "properties": props}));
                    Ok(())
                })
                .await?;
                print(
                    v.pointer("/properties/probes")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|i| i["name"] == json!(ch.name)))
                        .unwrap_or(&Value::Null),
                    out,
                    output::PROBE_COLS,
                );
            }
            ProbeCmd::Op(op) => child_cmd(&c, out, ("probes", output::PROBE_COLS), op).await?,
        },
        LbCmd::Rule(r) => match r {
            RuleCmd::Create {
                c: ch,
                protocol,
                frontend_port,
                backend_port,
                frontend_ip_name,
                backend_pool_name,
                probe_name,
                idle_timeout,
                load_distribution,
                enable_tcp_reset,
            } => {
                let id = c.lb_path(&ch.rg, &ch.lb_name);
                let name = ch.name.clone();
                let v = edit_lb(&c, &ch.rg, &ch.lb_name, |v| {
                    let only = |coll: &str| -> Option<String> {
                        let a = v.pointer(&format!("/properties/{coll}")).and_then(Value::as_array)?;
                        (a.len() == 1).then(|| a[0].get("name").and_then(Value::as_str).unwrap_or_default().to_string())
                    };
                    let fe = frontend_ip_name.clone().or_else(|| only("frontendIPConfigurations")).ok_or_else(|| anyhow!("pass --frontend-ip-name"))?;
                    let pool = backend_pool_name.clone().or_else(|| only("backendAddressPools")).ok_or_else(|| anyhow!("pass --backend-pool-name"))?;
                    let mut props = json!({
                        "protocol": protocol, "frontendPort": frontend_port, "backendPort": backend_port,
                        "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/{fe}")},
                        "backendAddressPool": {"id": format!("{id}/backendAddressPools/{pool}")},
                    });
                    if let Some(p) = &probe_name {
                        props["probe"] = json!({"id": format!("{id}/probes/{p}")});
                    }
                    if let Some(t) = idle_timeout {
                        props["idleTimeoutInMinutes"] = json!(t);
                    }
                    if let Some(d) = &load_distribution {
                        props["loadDistribution"] = json!(d);
                    }
                    if let Some(r) = enable_tcp_reset {
                        props["enableTcpReset"] = json!(r);
                    }
                    let list = children(v, "loadBalancingRules");
                    list.retain(|i| i.get("name").and_then(Value::as_str) != Some(&name));
                    list.push(json!({"name": name, "properties": props}));
                    Ok(())
                })
                .await?;
                print(
                    v.pointer("/properties/loadBalancingRules")
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().find(|i| i["name"] == json!(ch.name)))
                        .unwrap_or(&Value::Null),
                    out,
                    output::RULE_COLS,
                );
            }
            RuleCmd::Op(op) => {
                child_cmd(&c, out, ("loadBalancingRules", output::RULE_COLS), op).await?
            }
        },
    }
    Ok(())
}

pub async fn image(cmd: ImageCmd, out: Output) -> Result<()> {
    match cmd {
        ImageCmd::Bake {
            base,
            package,
            script,
            args,
            name,
            no_network,
            mirror,
        } => {
            crate::daemon::preflight()?;
            model::names::network_or_image("image", &name).map_err(|e| anyhow!(e.message))?;
            let home = client::home();
            if !no_network {
                // The bake joins the home's instance network (outbound NAT only): choose it now
                // if no daemon has yet, as `scaleset serve` would.
                let subnet = std::env::var("SCALESET_SUBNET")
                    .ok()
                    .filter(|s| !s.is_empty());
                crate::daemon::network(&home, subnet.as_deref())?;
            }
            let store =
                image::ImageStore::new(home.join("images"), image::default_base_cache(&home));
            let spec = image::BakeSpec {
                name,
                base,
                package_dir: package,
                script,
                args,
                network: !no_network,
                mirror,
            };
            let img = tokio::task::spawn_blocking(move || {
                // The full log is kept with the image (or the failed bake); the terminal gets
                // the stages and the script's output live.
                let mut on_event = |e: image::BakeEvent| match e {
                    image::BakeEvent::BaseReady { base, cached, secs } => eprintln!(
                        "==> base {base} ready ({}, {secs:.1}s)",
                        if cached { "cached" } else { "built" }
                    ),
                    image::BakeEvent::Copying { files, bytes } => eprintln!(
                        "==> copying the package to /deployTemp ({files} files, {} KiB)",
                        bytes / 1024
                    ),
                    image::BakeEvent::ScriptStarted { command } => {
                        eprintln!("==> running {command}")
                    }
                    image::BakeEvent::ScriptLine(l) => eprintln!("    {l}"),
                    image::BakeEvent::Deprovisioning => eprintln!("==> deprovisioning"),
                    image::BakeEvent::Capturing => eprintln!("==> capturing the layer"),
                    image::BakeEvent::Done {
                        digest,
                        cache_hit,
                        secs,
                    } => eprintln!(
                        "==> {digest}{} in {secs:.2}s",
                        if cache_hit { " (cache hit)" } else { "" }
                    ),
                };
                store.bake_with_progress(&spec, &mut std::io::sink(), &mut on_event)
            })
            .await?
            .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"name": img.name, "digest": img.digest, "base": img.base, "created": img.created, "log": img.log}),
                out,
                &[("Name", "/name"), ("Digest", "/digest"), ("Base", "/base")],
            );
        }
        ImageCmd::Import { source, name } => {
            crate::daemon::preflight()?;
            model::names::network_or_image("image", &name).map_err(|e| anyhow!(e.message))?;
            let home = client::home();
            let store =
                image::ImageStore::new(home.join("images"), image::default_base_cache(&home));
            let img = tokio::task::spawn_blocking(move || {
                store.import(&source, &name, &mut std::io::stderr())
            })
            .await?
            .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"name": img.name, "digest": img.digest, "base": img.base}),
                out,
                &[("Name", "/name"), ("Digest", "/digest"), ("Base", "/base")],
            );
        }
        ImageCmd::Export { name, file } => {
            let home = client::home();
            let store =
                image::ImageStore::new(home.join("images"), image::default_base_cache(&home));
            let f = file.clone();
            let digest = tokio::task::spawn_blocking(move || store.export(&name, &f))
                .await?
                .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"file": file, "manifestDigest": digest}),
                out,
                &[("File", "/file"), ("ManifestDigest", "/manifestDigest")],
            );
        }
        ImageCmd::Gc => {
            let home = client::home();
            let store =
                image::ImageStore::new(home.join("images"), image::default_base_cache(&home));
            let r = tokio::task::spawn_blocking(move || store.gc())
                .await?
                .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            print(
                &json!({"removedLayers": r.removed_layers, "freedBytes": r.freed_bytes}),
                out,
                &[
                    ("RemovedLayers", "/removedLayers"),
                    ("FreedBytes", "/freedBytes"),
                ],
            );
        }
        ImageCmd::List { rg } => {
            let c = client()?;
            let path = format!(
                "{}/providers/Microsoft.Compute/images",
                c.rg_path(rg.as_deref().unwrap_or("images"))
            );
            print(&Value::Array(c.list(&path).await?), out, output::IMAGE_COLS);
        }
        ImageCmd::Show(t) => {
            let c = client()?;
            print(
                &c.call("GET", &c.image_path(&t.rg, &t.name), None).await?,
                out,
                output::IMAGE_COLS,
            );
        }
        ImageCmd::Delete(t) => {
            let c = client()?;
            c.call("DELETE", &c.image_path(&t.rg, &t.name), None)
                .await?;
        }
    }
    Ok(())
}
