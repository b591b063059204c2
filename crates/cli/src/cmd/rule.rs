//! `scaleset network lb rule`: a load balancer's load-balancing rules.
use super::lb::{child_cmd, put_child, Child, ChildOp};
use super::print;
use crate::client::Client;
use crate::output::{self, Output};
use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum RuleCmd {
    Create {
        #[command(flatten)]
        c: Child,
        #[command(flatten)]
        args: RuleArgs,
    },
    #[command(flatten)]
    Op(ChildOp),
}

// A doc comment here would replace the parent command's help text.
#[derive(Args)]
pub struct RuleArgs {
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
}

pub async fn run(c: &Client, cmd: RuleCmd, out: Output) -> Result<()> {
    match cmd {
        RuleCmd::Create { c: ch, args } => {
            let id = c.lb_path(&ch.rg, &ch.lb_name);
            // The parent is read only to find its one frontend or pool when none is named.
            let parent = match (&args.frontend_ip_name, &args.backend_pool_name) {
                (Some(_), Some(_)) => Value::Null,
                _ => c.call("GET", &id, None).await?,
            };
            let item = rule_item(&id, &parent, &ch.name, args)?;
            let v = put_child(c, (&ch.rg, &ch.lb_name), "loadBalancingRules", item).await?;
            print(&v, out, output::RULE_COLS);
        }
        RuleCmd::Op(op) => child_cmd(c, out, ("loadBalancingRules", output::RULE_COLS), op).await?,
    }
    Ok(())
}

/// The rule `{"name", "properties"}` for load balancer `id`; a frontend or pool not named is
/// the parent's only one.
fn rule_item(id: &str, parent: &Value, name: &str, a: RuleArgs) -> Result<Value> {
    let only = |coll: &str| -> Option<String> {
        let a = parent
            .pointer(&format!("/properties/{coll}"))
            .and_then(Value::as_array)?;
        (a.len() == 1).then(|| {
            a[0].get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        })
    };
    let fe = a
        .frontend_ip_name
        .or_else(|| only("frontendIPConfigurations"))
        .ok_or_else(|| anyhow!("pass --frontend-ip-name"))?;
    let pool = a
        .backend_pool_name
        .or_else(|| only("backendAddressPools"))
        .ok_or_else(|| anyhow!("pass --backend-pool-name"))?;
    let mut props = json!({
        "protocol": a.protocol, "frontendPort": a.frontend_port, "backendPort": a.backend_port,
        "frontendIPConfiguration": {"id": format!("{id}/frontendIPConfigurations/{fe}")},
        "backendAddressPool": {"id": format!("{id}/backendAddressPools/{pool}")},
    });
    if let Some(p) = &a.probe_name {
        props["probe"] = json!({"id": format!("{id}/probes/{p}")});
    }
    if let Some(t) = a.idle_timeout {
        props["idleTimeoutInMinutes"] = json!(t);
    }
    if let Some(d) = &a.load_distribution {
        props["loadDistribution"] = json!(d);
    }
    if let Some(r) = a.enable_tcp_reset {
        props["enableTcpReset"] = json!(r);
    }
    Ok(json!({"name": name, "properties": props}))
}
