//! `scaleset vmss rolling-upgrade`, and following a rollout for the commands that start one.
use super::{print, Target};
use crate::client::Client;
use crate::output::Output;
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;
use std::time::Duration;

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

pub async fn run(c: &Client, cmd: RollingCmd) -> Result<()> {
    match cmd {
        RollingCmd::Start { t, no_wait } => {
            c.call_wait(
                "POST",
                &format!("{}/osRollingUpgrade", c.vmss_path(&t.rg, &t.name)),
                None,
                !no_wait,
            )
            .await?;
            if !no_wait {
                let v = follow_rollout(c, &t.rg, &t.name).await?;
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
    }
    Ok(())
}

fn rolling_line(v: &Value) -> String {
    let p = |k: &str| {
        v.pointer(&format!("/properties/progress/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    crate::progress::rollout_line(
        v.pointer("/properties/runningStatus/code")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        p("successfulInstanceCount"),
        p("failedInstanceCount"),
        p("inProgressInstanceCount"),
        p("pendingInstanceCount"),
    )
}

/// Follows the latest rolling upgrade until it ends, printing progress; fails if it faulted.
pub async fn follow_rollout(c: &Client, rg: &str, name: &str) -> Result<Value> {
    let path = format!("{}/rollingUpgrades/latest", c.vmss_path(rg, name));
    let mut p = crate::progress::Progress::stderr();
    let deadline = std::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let v = c.call("GET", &path, None).await?;
        p.update(&rolling_line(&v));
        let code = v
            .pointer("/properties/runningStatus/code")
            .and_then(Value::as_str)
            .unwrap_or("");
        if code != "RollingForward" {
            p.finish();
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
                bail!("({code}) {msg}{}", error_details(&v));
            }
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out following the rolling upgrade of '{name}'");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `UnitFailed` details of a faulted rollout (the failed unit and its journal lines),
/// indented under the error.
pub fn error_details(v: &Value) -> String {
    let details = v
        .pointer("/properties/error/details")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    details
        .iter()
        .map(|d| {
            let msg = d["message"].as_str().unwrap_or("").replace('\n', "\n    ");
            format!("\n  {}: {msg}", d["target"].as_str().unwrap_or(""))
        })
        .collect()
}

pub async fn rolling_in_progress(c: &Client, rg: &str, name: &str) -> Result<bool> {
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
