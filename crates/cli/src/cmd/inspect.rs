//! Looking inside an instance: `vmss run-command invoke` (Azure's runCommand), `vmss logs` (the
//! instance's journal, read by journalctl inside it; our route `…/virtualMachines/{id}/journal`)
//! and `vmss boot-diagnostics` (the console log: our `…/serialConsoleLog`, and Azure's
//! `retrieveBootDiagnosticsData`).
use super::Target;
use crate::client::{enc, Client};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::io::Write;

#[derive(Subcommand)]
pub enum RunCommandCmd {
    /// Run a script as root inside an instance (RunShellScript; `ifconfig` also works) and
    /// print Azure's RunCommandResult: `value[0].message` holds the last 4,096 bytes of stdout
    /// and stderr. The script is killed after the daemon's --run-command-timeout-secs.
    Invoke(InvokeArgs),
}

#[derive(Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub t: Target,
    #[arg(long = "instance-id")]
    pub instance_id: String,
    /// RunShellScript (or ifconfig).
    #[arg(long = "command-id")]
    pub command_id: String,
    /// Script lines (joined with newlines, run by /bin/sh).
    #[arg(long, num_args = 1..)]
    pub scripts: Vec<String>,
    /// `name=value` (exported to the script's environment) or `value` (positional: $1, $2, …).
    #[arg(long, num_args = 1..)]
    pub parameters: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub t: Target,
    #[arg(long = "instance-id")]
    pub instance_id: String,
    /// Only this unit's lines (e.g. nginx, my_app.service).
    #[arg(long)]
    pub unit: Option<String>,
    /// Keep printing new lines until interrupted (Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Lines since this time, in journalctl's syntax ("10 min ago", "2024-01-02 10:00:00").
    #[arg(long)]
    pub since: Option<String>,
    /// The last N lines (1–10000; `-n` is the scale set name, as in az).
    #[arg(long, default_value_t = 100)]
    pub lines: u32,
}

#[derive(Subcommand)]
pub enum BootDiagnosticsCmd {
    /// Print the tail of the instance's console log (systemd's boot messages; appended across
    /// boots).
    GetBootLog {
        #[command(flatten)]
        t: Target,
        #[arg(long = "instance-id")]
        instance_id: String,
    },
    /// Azure's retrieveBootDiagnosticsData: the URI of the serial console log.
    GetBootLogUris {
        #[command(flatten)]
        t: Target,
        #[arg(long = "instance-id")]
        instance_id: String,
    },
}

fn vm_path(c: &Client, t: &Target, id: &str) -> String {
    format!(
        "{}/virtualMachines/{}",
        c.vmss_path(&t.rg, &t.name),
        enc(id)
    )
}

/// az's `--parameters`: `name=value`, or a value that gets the name `argN` (positional).
pub fn parameters(list: &[String]) -> Vec<Value> {
    let mut n = 0;
    list.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => json!({"name": k, "value": v}),
            None => {
                n += 1;
                json!({"name": format!("arg{n}"), "value": p})
            }
        })
        .collect()
}

pub async fn run_command(c: &Client, cmd: RunCommandCmd) -> Result<()> {
    let RunCommandCmd::Invoke(a) = cmd;
    let body = json!({
        "commandId": a.command_id,
        "script": a.scripts,
        "parameters": parameters(&a.parameters),
    });
    let path = format!("{}/runCommand", vm_path(c, &a.t, &a.instance_id));
    let v = c.call("POST", &path, Some(&body)).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Copies a text response to stdout as it arrives.
async fn copy_text(c: &Client, path: &str) -> Result<()> {
    let mut body = c.arm_stream(path).await?.into_body();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the daemon's answer")?;
        if let Some(d) = frame.data_ref() {
            out.write_all(d)?;
            out.flush()?;
        }
    }
    Ok(())
}

pub async fn logs(c: &Client, a: LogsArgs) -> Result<()> {
    let mut q = format!("lines={}", a.lines);
    if let Some(u) = &a.unit {
        q.push_str(&format!("&unit={}", enc(u)));
    }
    if let Some(s) = &a.since {
        q.push_str(&format!("&since={}", enc(s)));
    }
    if a.follow {
        q.push_str("&follow=true");
    }
    copy_text(
        c,
        &format!("{}/journal?{q}", vm_path(c, &a.t, &a.instance_id)),
    )
    .await
}

pub async fn boot_diagnostics(c: &Client, cmd: BootDiagnosticsCmd) -> Result<()> {
    match cmd {
        BootDiagnosticsCmd::GetBootLog { t, instance_id } => {
            copy_text(
                c,
                &format!("{}/serialConsoleLog", vm_path(c, &t, &instance_id)),
            )
            .await
        }
        BootDiagnosticsCmd::GetBootLogUris { t, instance_id } => {
            let path = format!(
                "{}/retrieveBootDiagnosticsData",
                vm_path(c, &t, &instance_id)
            );
            let v = c.call("POST", &path, None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameters_like_az() {
        let v = super::parameters(&["a=b".into(), "x".into(), "c=d=e".into(), "y".into()]);
        assert_eq!(
            serde_json::Value::Array(v),
            serde_json::json!([
                {"name": "a", "value": "b"},
                {"name": "arg1", "value": "x"},
                {"name": "c", "value": "d=e"},
                {"name": "arg2", "value": "y"}
            ])
        );
    }
}
