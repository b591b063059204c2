//! `scaleset repo`: hosted git repositories (the daemon's `/scaleset/repos`).
use super::{print_nonempty as print, values};
use crate::client::{enc, home, Client};
use crate::output::{Columns, Output};
use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Create a hosted git repository (push to the URL it prints, token as the password), or
    /// with --mirror a read-only mirror of an external repository (GitHub, Azure Repos...)
    /// that its push webhook updates: point the webhook at the printed webhookUrl.
    Create {
        name: String,
        /// URL of the external repository to mirror.
        #[arg(long, requires = "webhook_secret")]
        mirror: Option<String>,
        /// Secret of the push webhook: GitHub's webhook secret (HMAC-SHA256 signature), or the
        /// HTTP Basic password of an Azure Repos service hook. At least 16 characters.
        #[arg(long, env = "SCALESET_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: Option<String>,
    },
    List,
    Show {
        name: String,
    },
    Delete {
        name: String,
    },
}

const REPO_COLS: Columns = &[
    ("Name", "/name"),
    ("DefaultBranch", "/defaultBranch"),
    ("Url", "/url"),
    ("Pipelines", "/x-pipelines"),
];

fn decorate_repo(mut v: Value) -> Value {
    let p = v["pipelines"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    v["x-pipelines"] = Value::String(p);
    v
}

pub async fn run(cmd: RepoCmd, out: Output) -> Result<()> {
    let api = Client::from_home(&home())?;
    match cmd {
        RepoCmd::Create {
            name,
            mirror,
            webhook_secret,
        } => {
            let body = mirror.map(|m| json!({"mirror": m, "webhookSecret": webhook_secret}));
            let v = api
                .scaleset("PUT", &format!("/repos/{}", enc(&name)), body.as_ref())
                .await?;
            print(&decorate_repo(v), out, REPO_COLS);
        }
        RepoCmd::List => {
            let v = values(api.scaleset("GET", "/repos", None).await?);
            let v = Value::Array(
                v.as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(decorate_repo)
                    .collect(),
            );
            print(&v, out, REPO_COLS);
        }
        RepoCmd::Show { name } => {
            let v = api
                .scaleset("GET", &format!("/repos/{}", enc(&name)), None)
                .await?;
            print(&decorate_repo(v), out, REPO_COLS);
        }
        RepoCmd::Delete { name } => {
            api.scaleset("DELETE", &format!("/repos/{}", enc(&name)), None)
                .await?;
        }
    }
    Ok(())
}
