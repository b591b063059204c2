//! `scaleset network lb`: load balancers, and the show/list/delete shared by their child
//! collections (`probe`, `rule`).
use super::probe::{self, ProbeCmd};
use super::rule::{self, RuleCmd};
use super::{client, print, Target};
use crate::client::Client;
use crate::output::{self, Columns, Output};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum NetworkCmd {
    #[command(subcommand)]
    Lb(LbCmd),
}

#[derive(Subcommand)]
pub enum LbCmd {
    /// Create a Standard load balancer with one frontend and one backend pool. With --provider
    /// azure the frontend is a public IP (--public-ip-address, created if missing; the default)
    /// or a private address on a subnet (--subnet, with --vnet-name or as an id).
    Create {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value = "LoadBalancerFrontEnd")]
        frontend_ip_name: String,
        /// The frontend's address: locally where it listens (default 127.0.0.1); on Azure a
        /// static address on --subnet (default: dynamic).
        #[arg(long)]
        private_ip_address: Option<String>,
        #[arg(long)]
        backend_pool_name: Option<String>,
        /// L7 (HTTP/1.1 proxy with retries and draining; default) or L4 (TCP, Azure's semantics).
        #[arg(long, value_parser = ["L4", "L7"], default_value = "L7")]
        layer: String,
        #[command(flatten)]
        azure: AzureLbArgs,
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

/// Where an Azure load balancer's frontend is (ignored locally).
#[derive(Args, Clone, Default)]
pub struct AzureLbArgs {
    /// Azure: the frontend's public IP (name or id); created (Standard, static) if missing.
    /// Default `{name}-ip` unless --subnet is given.
    #[arg(long)]
    pub public_ip_address: Option<String>,
    /// Azure: a private frontend on this subnet (name in --vnet-name, or an id).
    #[arg(long)]
    pub subnet: Option<String>,
    #[arg(long)]
    pub vnet_name: Option<String>,
    /// Azure: the region (default: the resource group's).
    #[arg(long, short = 'l')]
    pub location: Option<String>,
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

pub(super) async fn edit_lb(
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

/// Creates or replaces `item` (`{"name", "properties"}`) in collection `coll` of load balancer
/// `lb`; the child as stored. Locally through the child's own route (a read-modify-write of the
/// parent in the daemon, under its lock). Azure's network API has no PUT for probes or
/// load-balancing rules (loadBalancer.json 2024-05-01: GET only), so with `--provider azure` the
/// parent is read, edited and written back, as az does.
pub(super) async fn put_child(
    c: &Client,
    (rg, lb): (&str, &str),
    coll: &str,
    item: Value,
) -> Result<Value> {
    let name = item["name"].as_str().unwrap_or_default().to_string();
    if !c.is_azure() {
        let path = c.lb_child_path(rg, lb, coll, &name);
        return c.call("PUT", &path, Some(&item)).await;
    }
    let v = edit_lb(c, rg, lb, |v| {
        let list = children(v, coll);
        list.retain(|i| i.get("name").and_then(Value::as_str) != Some(&name));
        list.push(item);
        Ok(())
    })
    .await?;
    Ok(child_of(&v, coll, &name).cloned().unwrap_or(Value::Null))
}

/// Deletes child `name` of collection `coll`: its own route locally, the parent on Azure (see
/// [`put_child`]). A child that is not there is an error, as in az.
async fn delete_child(c: &Client, (rg, lb): (&str, &str), coll: &str, name: &str) -> Result<()> {
    let not_found = || anyhow!("(NotFound) '{name}' was not found in load balancer '{lb}'.");
    if !c.is_azure() {
        let path = c.lb_child_path(rg, lb, coll, name);
        return match c.delete_existing(&path).await? {
            true => Ok(()),
            false => Err(not_found()),
        };
    }
    edit_lb(c, rg, lb, |v| {
        let list = children(v, coll);
        let before = list.len();
        list.retain(|i| i.get("name").and_then(Value::as_str) != Some(name));
        if list.len() == before {
            return Err(not_found());
        }
        Ok(())
    })
    .await?;
    Ok(())
}

pub(super) fn children<'a>(v: &'a mut Value, coll: &str) -> &'a mut Vec<Value> {
    if !v["properties"][coll].is_array() {
        v["properties"][coll] = json!([]);
    }
    v["properties"][coll]
        .as_array_mut()
        .expect("just made an array")
}

pub(super) async fn child_cmd(
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
        (ChildOp::Delete(_), Some(n)) => delete_child(c, (rg, lb), coll, n).await?,
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

pub async fn run(cmd: NetworkCmd, out: Output) -> Result<()> {
    let c = client()?;
    let NetworkCmd::Lb(cmd) = cmd;
    match cmd {
        LbCmd::Create {
            t,
            frontend_ip_name,
            private_ip_address,
            backend_pool_name,
            layer,
            azure,
        } => {
            let pool = backend_pool_name.unwrap_or_else(|| format!("{}bepool", t.name));
            if let Some(az) = c.azure_ops() {
                let v =
                    create_on_azure(az, &t, &frontend_ip_name, private_ip_address, &pool, azure)
                        .await
                        .map_err(crate::client::arm_error)?;
                print(&v, out, output::LB_COLS);
                return Ok(());
            }
            let private_ip_address = private_ip_address.unwrap_or_else(|| "127.0.0.1".into());
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
        LbCmd::Probe(p) => probe::run(&c, p, out).await?,
        LbCmd::Rule(r) => rule::run(&c, r, out).await?,
    }
    Ok(())
}

/// `network lb create` on Azure: the frontend's public IP (made if missing) or subnet, then the
/// load balancer, in the resource group's location unless one is given.
async fn create_on_azure(
    az: &azure::Azure,
    t: &Target,
    frontend: &str,
    private_ip: Option<String>,
    pool: &str,
    a: AzureLbArgs,
) -> Result<Value, azure::AzureError> {
    use azure::create::{Frontend, LoadBalancerSpec};
    let location = match a.location {
        Some(l) => l,
        None => az.group_location(&t.rg).await?,
    };
    azure::create::check_location(&location).map_err(azure::AzureError::Config)?;
    let frontend_at = match (a.subnet, a.public_ip_address) {
        (Some(_), Some(_)) => {
            return Err(azure::AzureError::Config(
                "pass --public-ip-address or --subnet, not both".into(),
            ))
        }
        (Some(subnet), None) => Frontend::Subnet {
            id: subnet_id(az, &t.rg, a.vnet_name.as_deref(), &subnet)?,
            private_ip,
        },
        (None, pip) => {
            let pip = pip.unwrap_or_else(|| format!("{}-ip", t.name));
            let id = if pip.starts_with("/subscriptions/") {
                pip
            } else {
                az.ensure_public_ip(&t.rg, &pip, &location).await?
            };
            Frontend::PublicIp { id }
        }
    };
    let body = azure::create::load_balancer(&LoadBalancerSpec {
        location,
        frontend_name: frontend.to_string(),
        frontend: frontend_at,
        pool_name: pool.to_string(),
    });
    az.lb_create_or_update(&t.rg, &t.name, &body).await
}

/// A subnet's id from `--subnet` (an id, or a name in `--vnet-name`).
pub(super) fn subnet_id(
    az: &azure::Azure,
    rg: &str,
    vnet: Option<&str>,
    subnet: &str,
) -> Result<String, azure::AzureError> {
    if subnet.starts_with("/subscriptions/") {
        return Ok(subnet.to_string());
    }
    let vnet = vnet.ok_or_else(|| {
        azure::AzureError::Config(
            "--subnet by name needs --vnet-name (or pass the subnet's id)".into(),
        )
    })?;
    Ok(format!(
        "{}/providers/Microsoft.Network/virtualNetworks/{}/subnets/{}",
        az.rg_path(rg),
        azure::ops::seg(vnet),
        azure::ops::seg(subnet)
    ))
}

/// The child `name` of collection `coll` in the load balancer `v`.
fn child_of<'a>(v: &'a Value, coll: &str, name: &str) -> Option<&'a Value> {
    v.pointer(&format!("/properties/{coll}"))
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|i| i["name"] == json!(name)))
}
