//! `scaleset group`: resource groups.
use super::{client, print};
use crate::output::{self, Output};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a resource group (with --provider azure, in an Azure region: --location).
    Create {
        #[arg(long, short = 'n')]
        name: String,
        /// `local` for the daemon; an Azure region (e.g. westeurope) with --provider azure.
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

pub async fn run(cmd: GroupCmd, out: Output) -> Result<()> {
    let c = client()?;
    match cmd {
        GroupCmd::Create { name, location } => {
            let v = match c.azure_ops() {
                Some(az) => az
                    .group_create(&name, &location)
                    .await
                    .map_err(crate::client::arm_error)?,
                None => {
                    let body = json!({"location": location});
                    c.call("PUT", &c.rg_path(&name), Some(&body)).await?
                }
            };
            print(&v, out, output::GROUP_COLS)
        }
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
