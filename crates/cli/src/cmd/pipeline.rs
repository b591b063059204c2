//! `scaleset pipeline`: pipelines found in the hosted repositories, and manual runs.
use super::run::{finish_follow, logs, RUN_COLS};
use super::{print_nonempty as print, values};
use crate::client::{enc, home, Client};
use crate::output::{Columns, Output};
use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::json;

#[derive(Subcommand)]
pub enum PipelineCmd {
    /// Pipelines found in the hosted repositories (azure-pipelines.yml, *pipeline*.yml).
    List,
    /// Queue a manual run of a pipeline on a branch (default: the repository's default branch).
    Run {
        name: String,
        #[arg(long)]
        branch: Option<String>,
        /// Wait for the run and stream its log.
        #[arg(long)]
        follow: bool,
        /// Wait for the run with live progress (steps, not the log); fails unless it succeeds.
        #[arg(long, conflicts_with = "follow")]
        wait: bool,
    },
    /// A pipeline and its runs.
    Show { name: String },
    /// A run's log (`--follow` streams until the run ends).
    Logs {
        /// Run id.
        id: u64,
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

const PIPELINE_COLS: Columns = &[
    ("Name", "/name"),
    ("Repository", "/repository"),
    ("YamlPath", "/yamlPath"),
    ("LastRun", "/lastRun"),
    ("LastResult", "/lastResult"),
];

pub async fn run(cmd: PipelineCmd, out: Output) -> Result<()> {
    let api = Client::from_home(&home())?;
    match cmd {
        PipelineCmd::List => {
            let v = values(api.scaleset("GET", "/pipelines", None).await?);
            print(&v, out, PIPELINE_COLS);
        }
        PipelineCmd::Run {
            name,
            branch,
            follow,
            wait,
        } => {
            let body = match branch {
                Some(b) => json!({ "branch": b }),
                None => json!({}),
            };
            let v = api
                .scaleset(
                    "POST",
                    &format!("/pipelines/{}/runs", enc(&name)),
                    Some(&body),
                )
                .await?;
            if follow || wait {
                let id = v["id"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no run id in {v}"))?;
                if wait {
                    let r = super::run::watch(&api, id).await?;
                    print(&r, out, RUN_COLS);
                    return Ok(());
                }
                return finish_follow(&api, id).await;
            }
            print(&v, out, RUN_COLS);
        }
        PipelineCmd::Show { name } => {
            let mut v = api
                .scaleset("GET", &format!("/pipelines/{}", enc(&name)), None)
                .await?;
            if out == Output::Json {
                let runs = values(
                    api.scaleset("GET", &format!("/pipelines/{}/runs", enc(&name)), None)
                        .await?,
                );
                v["runs"] = runs;
            }
            print(&v, out, PIPELINE_COLS);
        }
        PipelineCmd::Logs { id, follow } => logs(&api, id, follow).await?,
    }
    Ok(())
}
