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
        LbCmd::Probe(p) => probe::run(&c, p, out).await?,
        LbCmd::Rule(r) => rule::run(&c, r, out).await?,
    }
    Ok(())
}

/// Prints the child `name` of collection `coll` in the load balancer `v` (as PUT returned it).
pub(super) fn print_child(v: &Value, coll: &str, name: &str, out: Output, cols: Columns) {
    print(
        v.pointer(&format!("/properties/{coll}"))
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|i| i["name"] == json!(name)))
            .unwrap_or(&Value::Null),
        out,
        cols,
    );
}
