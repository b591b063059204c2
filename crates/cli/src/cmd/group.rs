//! `scaleset group`: resource groups.
use super::{client, print};
use crate::output::{self, Output};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a resource group.
    Create {
        #[arg(long, short = 'n')]
        name: String,
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
        GroupCmd::Create { name, location } => print(
            &c.call(
                "PUT",
                &c.rg_path(&name),
                Some(&json!({"location": location})),
            )
            .await?,
            out,
            output::GROUP_COLS,
        ),
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
