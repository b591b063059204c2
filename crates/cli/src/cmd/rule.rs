//! `scaleset network lb rule`: a load balancer's load-balancing rules.
use super::lb::{child_cmd, children, edit_lb, print_child, Child, ChildOp};
use crate::client::Client;
use crate::output::{self, Output};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::{json, Value};

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

pub async fn run(c: &Client, cmd: RuleCmd, out: Output) -> Result<()> {
    match cmd {
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
            let v = edit_lb(c, &ch.rg, &ch.lb_name, |v| {
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
            print_child(&v, "loadBalancingRules", &ch.name, out, output::RULE_COLS);
        }
        RuleCmd::Op(op) => child_cmd(c, out, ("loadBalancingRules", output::RULE_COLS), op).await?,
    }
    Ok(())
}
