//! `scaleset network lb probe`: a load balancer's health probes.
use super::lb::{child_cmd, children, edit_lb, print_child, Child, ChildOp};
use crate::client::Client;
use crate::output::{self, Output};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

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

pub async fn run(c: &Client, cmd: ProbeCmd, out: Output) -> Result<()> {
    match cmd {
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
            let v = edit_lb(c, &ch.rg, &ch.lb_name, |v| {
                let list = children(v, "probes");
                list.retain(|i| i.get("name").and_then(Value::as_str) != Some(&name));
                list.push(json!({"name": name, "properties": props}));
                Ok(())
            })
            .await?;
            print_child(&v, "probes", &ch.name, out, output::PROBE_COLS);
        }
        ProbeCmd::Op(op) => child_cmd(c, out, ("probes", output::PROBE_COLS), op).await?,
    }
    Ok(())
}
