//! `scaleset vmss`: scale sets, their instances and power actions (`vmss rolling-upgrade` is
//! in `rolling`).
use super::rolling::{self, follow_rollout, rolling_in_progress, RollingCmd};
use super::{client, print, with_rg, Target};
use crate::client::Client;
use crate::output::{self, Output};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::time::Duration;

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
pub enum VmssCmd {
    /// Create a scale set (waits until its instances are provisioned unless --no-wait).
    Create(Box<CreateArgs>),
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
    Update(UpdateArgs),
    Delete {
        #[command(flatten)]
        t: Target,
        #[arg(long)]
        no_wait: bool,
    },
    ListInstances(Target),
    /// The VM sizes (`sku.name`) the scale set can use, with its capacity range.
    ListSkus(Target),
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
    /// Run a script inside an instance (Azure's runCommand).
    #[command(subcommand)]
    RunCommand(super::inspect::RunCommandCmd),
    /// An instance's journal (journalctl inside it): the last lines, or --follow.
    Logs(super::inspect::LogsArgs),
    /// An instance's console log (Azure's boot diagnostics).
    #[command(subcommand)]
    BootDiagnostics(super::inspect::BootDiagnosticsCmd),
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

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub t: Target,
    /// Image name or full id (Microsoft.Compute/images).
    #[arg(long)]
    pub image: String,
    #[arg(long, default_value_t = 2)]
    pub instance_count: u32,
    /// Load balancer (name or id) whose backend pool the instances join.
    #[arg(long)]
    pub lb: Option<String>,
    /// Backend pool of --lb (default: its only pool).
    #[arg(long)]
    pub backend_pool_name: Option<String>,
    /// Health probe of --lb used as the scale set's health source (name or id).
    #[arg(long)]
    pub health_probe: Option<String>,
    #[arg(long, value_parser = ["Automatic", "Manual", "Rolling"], default_value = "Manual")]
    pub upgrade_policy_mode: String,
    #[arg(long, value_parser = ["Default", "NewestVM", "OldestVM"])]
    pub scale_in_policy: Option<String>,
    #[arg(long)]
    pub computer_name_prefix: Option<String>,
    /// Enable automatic repairs with this grace period in minutes (10-90).
    #[arg(long)]
    pub automatic_repairs_grace_period: Option<u32>,
    /// Repair action for automatic repairs (enables them; default Replace).
    #[arg(long, value_parser = ["Replace", "Restart", "Reimage"])]
    pub automatic_repairs_action: Option<String>,
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub azure: AzureVmssArgs,
}

/// What a scale set on Azure needs beyond the local one (ignored locally).
#[derive(Args)]
pub struct AzureVmssArgs {
    /// Azure: the subnet the instances' NICs join (a name in --vnet-name, or an id).
    #[arg(long)]
    pub subnet: Option<String>,
    /// Azure: the virtual network of --subnet; created (10.0.0.0/16, the subnet 10.0.0.0/24)
    /// when it does not exist.
    #[arg(long)]
    pub vnet_name: Option<String>,
    /// The VM size (sku.name; locally it caps each machine's CPU and memory).
    #[arg(long, default_value = "Standard_B1s")]
    pub vm_sku: String,
    #[arg(long, default_value = "azureuser")]
    pub admin_username: String,
    /// Azure: the OpenSSH public key, or a file holding it (default ~/.ssh/id_ed25519.pub, then
    /// ~/.ssh/id_rsa.pub). Password login is disabled.
    #[arg(long)]
    pub ssh_key_value: Option<String>,
    /// Azure: the region (default: the resource group's).
    #[arg(long, short = 'l')]
    pub location: Option<String>,
    /// Azure: an existing network security group for the instances' NICs (a name in the
    /// resource group, or an id); "" for none. Default with --lb: `<name>NSG`, created to let
    /// clients reach the backend port of each of the load balancer's rules, or used as it is
    /// when it exists (a Standard load balancer is closed to inbound traffic unless an NSG
    /// opens it).
    #[arg(long)]
    pub nsg: Option<String>,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub t: Target,
    #[arg(long, num_args = 1..)]
    pub set: Vec<String>,
    /// Turn automatic repairs on or off.
    #[arg(long)]
    pub enable_automatic_repairs: Option<bool>,
    /// Automatic repairs grace period in minutes (10-90).
    #[arg(long)]
    pub automatic_repairs_grace_period: Option<u32>,
    #[arg(long, value_parser = ["Replace", "Restart", "Reimage"])]
    pub automatic_repairs_action: Option<String>,
    #[arg(long)]
    pub no_wait: bool,
}

fn lb_id(c: &Client, rg: &str, lb: &str) -> String {
    if lb.starts_with("/subscriptions/") {
        lb.to_string()
    } else {
        c.lb_path(rg, lb)
    }
}

/// The status of a scale set being waited on: its provisioning state and instances.
fn wait_line(name: &str, v: &Value, deleting: bool) -> String {
    let state = v
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let capacity = v
        .pointer("/sku/capacity")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if deleting {
        format!("scale set {name}: {state}, waiting for it to go")
    } else {
        format!("scale set {name}: {state} (capacity {capacity})")
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
    let mut p = crate::progress::Progress::stderr();
    loop {
        let v = c.get_opt(&c.vmss_path(rg, name)).await?;
        if let Some(x) = &v {
            p.update(&wait_line(name, x, gone));
        }
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

pub async fn run(cmd: VmssCmd, out: Output) -> Result<()> {
    let c = client()?;
    match cmd {
        VmssCmd::Create(a) => create(&c, *a, out).await?,
        VmssCmd::Show(t) => print(
            &with_rg(c.call("GET", &c.vmss_path(&t.rg, &t.name), None).await?),
            out,
            output::VMSS_COLS,
        ),
        VmssCmd::List { rg } => list(&c, rg.as_deref(), out).await?,
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
            let v = settle(&c, &t, v, no_wait, false).await?;
            print(&with_rg(v), out, output::VMSS_COLS);
        }
        VmssCmd::Update(a) => update(&c, a, out).await?,
        VmssCmd::Delete { t, no_wait } => delete(&c, &t, no_wait).await?,
        VmssCmd::ListInstances(t) => print(
            &Value::Array(list_instances(&c, &t.rg, &t.name).await?),
            out,
            output::VM_COLS,
        ),
        VmssCmd::ListSkus(t) => {
            let path = format!("{}/skus", c.vmss_path(&t.rg, &t.name));
            let v = c.call("GET", &path, None).await?;
            print(&v["value"], out, output::SKU_COLS);
        }
        VmssCmd::GetInstanceView { t, instance_id } => {
            instance_view(&c, &t, instance_id.as_deref()).await?
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
            let v = settle(&c, &t, v, no_wait, true).await?;
            print(&with_rg(v), out, output::VMSS_COLS);
        }
        VmssCmd::RollingUpgrade(r) => rolling::run(&c, r).await?,
        VmssCmd::RunCommand(r) => super::inspect::run_command(&c, r).await?,
        VmssCmd::Logs(a) => super::inspect::logs(&c, a).await?,
        VmssCmd::BootDiagnostics(b) => super::inspect::boot_diagnostics(&c, b).await?,
        VmssCmd::DeleteInstances(i) => {
            if i.ids.is_none() {
                bail!("--instance-ids is required");
            }
            power(&c, i, "delete").await?
        }
    }
    Ok(())
}

async fn create(c: &Client, a: CreateArgs, out: Output) -> Result<()> {
    if let Some(az) = c.azure_ops() {
        let v = create_on_azure(c, az, &a).await?;
        print(&with_rg(v), out, output::VMSS_COLS);
        return Ok(());
    }
    let t = &a.t;
    let lbref = match &a.lb {
        None => None,
        Some(lb) => Some((
            lb.clone(),
            backend_pool(c, &t.rg, lb, &a.backend_pool_name).await?,
        )),
    };
    let mut body = vmss_body(
        c,
        &t.rg,
        &a.image,
        a.instance_count,
        lbref
            .as_ref()
            .map(|(l, p)| (l.as_str(), p.as_str(), a.health_probe.as_deref())),
        (
            &a.upgrade_policy_mode,
            a.scale_in_policy.as_deref(),
            a.computer_name_prefix.as_deref(),
        ),
    );
    body["sku"]["name"] = serde_json::json!(a.azure.vm_sku);
    if a.automatic_repairs_grace_period.is_some() || a.automatic_repairs_action.is_some() {
        body["properties"]["automaticRepairsPolicy"] = serde_json::json!({
            "enabled": true,
            "gracePeriod": format!("PT{}M", a.automatic_repairs_grace_period.unwrap_or(10)),
            "repairAction": a.automatic_repairs_action.as_deref().unwrap_or("Replace"),
        });
    }
    let v = c
        .call_wait("PUT", &c.vmss_path(&t.rg, &t.name), Some(&body), !a.no_wait)
        .await?;
    let v = settle(c, t, v, a.no_wait, true).await?;
    print(&with_rg(v), out, output::VMSS_COLS);
    Ok(())
}

/// `vmss create` on Azure: the subnet (its virtual network made if missing), then an
/// Azure-shaped scale set (`azure::create::scale_set`) in the resource group's location; the
/// call waits for ARM's long-running operation.
async fn create_on_azure(c: &Client, az: &azure::Azure, a: &CreateArgs) -> Result<Value> {
    let (t, x) = (&a.t, &a.azure);
    let arm = crate::client::arm_error;
    let location = match &x.location {
        Some(l) => l.clone(),
        None => az.group_location(&t.rg).await.map_err(arm)?,
    };
    azure::create::check_location(&location).map_err(|e| anyhow!(e))?;
    let subnet = x.subnet.as_deref().ok_or_else(|| {
        anyhow!("--subnet is required with --provider azure (a name in --vnet-name, or an id)")
    })?;
    let subnet_id = match (&x.vnet_name, subnet.starts_with("/subscriptions/")) {
        (Some(vnet), false) => az
            .ensure_subnet(&t.rg, vnet, subnet, &location)
            .await
            .map_err(arm)?,
        _ => super::lb::subnet_id(az, &t.rg, x.vnet_name.as_deref(), subnet).map_err(arm)?,
    };
    // The load balancer's name and body, read once for its pool, probe and rules.
    let lb = match a.lb.as_deref() {
        Some(name) => Some((name, c.call("GET", &lb_id(c, &t.rg, name), None).await?)),
        None => None,
    };
    let (pools, probe) = match &lb {
        None => (Vec::new(), None),
        Some((lb, lbv)) => {
            let id = lb_id(c, &t.rg, lb);
            let pool = pool_of(lbv, lb, &a.backend_pool_name)?;
            let probe = a
                .health_probe
                .as_ref()
                .map(|p| match p.starts_with("/subscriptions/") {
                    true => p.clone(),
                    false => format!("{id}/probes/{p}"),
                });
            (vec![format!("{id}/backendAddressPools/{pool}")], probe)
        }
    };
    let nsg = nsg_on_azure(az, a, lb.as_ref().map(|(n, v)| (*n, v)), &location).await?;
    let spec = azure::create::ScaleSetSpec {
        name: t.name.clone(),
        location,
        vm_size: x.vm_sku.clone(),
        capacity: a.instance_count,
        image_id: match a.image.starts_with("/subscriptions/") {
            true => a.image.clone(),
            false => c.image_path(&t.rg, &a.image),
        },
        subnet_id,
        pools,
        health_probe: probe,
        admin_username: x.admin_username.clone(),
        ssh_public_key: ssh_public_key(x.ssh_key_value.as_deref())?,
        computer_name_prefix: a.computer_name_prefix.clone(),
        upgrade_mode: a.upgrade_policy_mode.clone(),
        scale_in: a.scale_in_policy.clone(),
        repairs: (a.automatic_repairs_grace_period.is_some()
            || a.automatic_repairs_action.is_some())
        .then(|| {
            (
                a.automatic_repairs_grace_period.unwrap_or(10),
                a.automatic_repairs_action
                    .clone()
                    .unwrap_or_else(|| "Replace".into()),
            )
        }),
        nsg,
    };
    let body = azure::create::scale_set(&spec).map_err(|e| anyhow!(e))?;
    c.call_wait("PUT", &c.vmss_path(&t.rg, &t.name), Some(&body), !a.no_wait)
        .await
}

/// `--ssh-key-value`: the key itself, or a file holding it; default the user's own public key.
fn ssh_public_key(given: Option<&str>) -> Result<String> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .ok()
            .map(|k| k.trim().to_string())
    };
    let key = match given {
        Some(k) if azure::create::looks_like_ssh_key(k) => Some(k.trim().to_string()),
        Some(path) => Some(read(std::path::Path::new(path)).ok_or_else(|| {
            anyhow!("--ssh-key-value '{path}' is neither an OpenSSH public key nor a readable file")
        })?),
        None => {
            let home = std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .unwrap_or_default();
            ["id_ed25519.pub", "id_rsa.pub"]
                .iter()
                .find_map(|f| read(&home.join(".ssh").join(f)))
        }
    };
    key.ok_or_else(|| anyhow!("no SSH public key: pass --ssh-key-value (the key or its file)"))
}

/// The NICs' network security group on Azure: the one `--nsg` names, none for `--nsg ""`,
/// else (with a load balancer) `<name>NSG`: made to open its rules' backend ports, or, when
/// it exists already, used as it is (a PUT would replace the rules someone added to it).
async fn nsg_on_azure(
    az: &azure::Azure,
    a: &CreateArgs,
    lb: Option<(&str, &Value)>,
    location: &str,
) -> Result<Option<String>> {
    let rg = &a.t.rg;
    match a.azure.nsg.as_deref() {
        Some("") => return Ok(None),
        Some(id) if id.starts_with("/subscriptions/") => return Ok(Some(id.to_string())),
        Some(name) => return Ok(Some(az.nsg_path(rg, name))),
        None => {}
    }
    let Some((lb_name, lb)) = lb else {
        return Ok(None);
    };
    let name = format!("{}NSG", a.t.name);
    let arm = crate::client::arm_error;
    if az.nsg_exists(rg, &name).await.map_err(arm)? {
        eprintln!("network security group '{name}' exists: used as it is");
        return Ok(Some(az.nsg_path(rg, &name)));
    }
    let ports = azure::create::open_ports(lb);
    if ports.is_empty() {
        eprintln!(
            "warning: load balancer '{lb_name}' has no rules yet, so {name} opens no port: create the rules first (network lb rule create), or pass --nsg"
        );
    }
    let body = azure::create::network_security_group(location, lb_name, &ports);
    Ok(Some(az.put_nsg(rg, &name, &body).await.map_err(arm)?))
}

/// The backend pool of `lb` the instances join: `--backend-pool-name`, else its only pool.
async fn backend_pool(c: &Client, rg: &str, lb: &str, named: &Option<String>) -> Result<String> {
    pool_of(&c.call("GET", &lb_id(c, rg, lb), None).await?, lb, named)
}

/// The backend pool the instances join: the named one, or the load balancer's only one.
fn pool_of(lbv: &Value, lb: &str, named: &Option<String>) -> Result<String> {
    let pools: Vec<String> = lbv
        .pointer("/properties/backendAddressPools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    Ok(match (named, pools.as_slice()) {
        (Some(p), _) => p.clone(),
        (None, [one]) => one.clone(),
        (None, []) => bail!("load balancer '{lb}' has no backend pool"),
        (None, _) => {
            bail!("load balancer '{lb}' has several backend pools; pass --backend-pool-name")
        }
    })
}

/// After a model change: unless --no-wait, follows the rolling upgrade it started (in Rolling
/// mode, when `follow`) and waits for the scale set; returns its latest state.
async fn settle(c: &Client, t: &Target, v: Value, no_wait: bool, follow: bool) -> Result<Value> {
    if no_wait {
        return Ok(v);
    }
    // In Rolling mode a model change starts a rolling upgrade: show its live progress.
    if follow && rolling_in_progress(c, &t.rg, &t.name).await? {
        follow_rollout(c, &t.rg, &t.name).await?;
    }
    Ok(wait_vmss(c, &t.rg, &t.name, false, WAIT)
        .await?
        .unwrap_or(v))
}

async fn list(c: &Client, rg: Option<&str>, out: Output) -> Result<()> {
    let path = match rg {
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
    Ok(())
}

/// `vmss update --set path=value...`: read, edit, put back.
async fn update(c: &Client, a: UpdateArgs, out: Output) -> Result<()> {
    let (t, mut set) = (&a.t, a.set.clone());
    // az's automatic repairs flags are shorthands for --set.
    let repairs = "properties.automaticRepairsPolicy";
    if let Some(e) = a.enable_automatic_repairs {
        set.push(format!("{repairs}.enabled={e}"));
    }
    if let Some(m) = a.automatic_repairs_grace_period {
        set.push(format!("{repairs}.gracePeriod=PT{m}M"));
    }
    if let Some(x) = &a.automatic_repairs_action {
        set.push(format!("{repairs}.repairAction={x}"));
    }
    if set.is_empty() {
        bail!("nothing to update: pass --set path=value");
    }
    let mut body = c.call("GET", &c.vmss_path(&t.rg, &t.name), None).await?;
    for s in &set {
        let (path, value) = model::setpath::parse_assignment(s).map_err(|e| anyhow!(e.message))?;
        model::setpath::set(&mut body, &path, value).map_err(|e| anyhow!(e.message))?;
    }
    let v = c
        .call_wait("PUT", &c.vmss_path(&t.rg, &t.name), Some(&body), !a.no_wait)
        .await?;
    let v = settle(c, t, v, a.no_wait, true).await?;
    print(&with_rg(v), out, output::VMSS_COLS);
    Ok(())
}

async fn delete(c: &Client, t: &Target, no_wait: bool) -> Result<()> {
    if c.get_opt(&c.vmss_path(&t.rg, &t.name)).await?.is_none() {
        bail!("(ResourceNotFound) The Resource 'Microsoft.Compute/virtualMachineScaleSets/{}' under resource group '{}' was not found.", t.name, t.rg);
    }
    c.call_wait("DELETE", &c.vmss_path(&t.rg, &t.name), None, !no_wait)
        .await?;
    if !no_wait {
        wait_vmss(c, &t.rg, &t.name, true, WAIT).await?;
    }
    Ok(())
}

/// `get-instance-view`: the scale set's, one instance's, or (`--instance-id '*'`) all of them.
async fn instance_view(c: &Client, t: &Target, instance_id: Option<&str>) -> Result<()> {
    let path = match instance_id {
        Some(id) if id != "*" => format!(
            "{}/virtualMachines/{id}/instanceView",
            c.vmss_path(&t.rg, &t.name)
        ),
        Some(_) => {
            print(
                &Value::Array(
                    list_instances(c, &t.rg, &t.name)
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
    Ok(())
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
