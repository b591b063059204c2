//! `scaleset network lb probe`: a load balancer's health probes.
use super::lb::{child_cmd, put_child, Child, ChildOp};
use super::print;
use crate::client::Client;
use crate::output::{self, Output};
use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

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
            let item = json!({"name": ch.name, "properties": props});
            let v = put_child(c, (&ch.rg, &ch.lb_name), "probes", item).await?;
            print(&v, out, output::PROBE_COLS);
        }
        ProbeCmd::Op(op) => child_cmd(c, out, ("probes", output::PROBE_COLS), op).await?,
    }
    Ok(())
}
