//! `scaleset repo|pipeline|run`: hosted repositories and pipeline runs (the daemon's
//! `/scaleset/...` endpoints), and the `az` personality (argv[0] = `az`).
use crate::client::{enc, home, Client};
use crate::output::{render, Columns, Output};
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::io::Write;

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

#[derive(Subcommand)]
pub enum RunCmd {
    List {
        #[arg(long)]
        pipeline: Option<String>,
    },
    Show {
        id: u64,
    },
    Cancel {
        id: u64,
    },
    Logs {
        id: u64,
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

const REPO_COLS: Columns = &[
    ("Name", "/name"),
    ("DefaultBranch", "/defaultBranch"),
    ("Url", "/url"),
    ("Pipelines", "/x-pipelines"),
];
const PIPELINE_COLS: Columns = &[
    ("Name", "/name"),
    ("Repository", "/repository"),
    ("YamlPath", "/yamlPath"),
    ("LastRun", "/lastRun"),
    ("LastResult", "/lastResult"),
];
const RUN_COLS: Columns = &[
    ("Id", "/id"),
    ("Pipeline", "/pipeline"),
    ("RunNumber", "/run_number"),
    ("State", "/state"),
    ("Branch", "/source_branch"),
    ("Queued", "/queued"),
];

/// Streams a followed log to stdout; returns when the run ends.
async fn stream_logs(api: &Client, id: u64) -> Result<()> {
    let mut body = api
        .scaleset_stream(&format!("/runs/{id}/logs?follow=true"))
        .await?
        .into_body();
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the log stream")?;
        if let Some(d) = frame.data_ref() {
            out.write_all(d)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn values(v: Value) -> Value {
    match v.get("value") {
        Some(x) => x.clone(),
        None => v,
    }
}

fn print(v: &Value, out: Output, cols: Columns) {
    let s = render(v, out, cols);
    if !s.is_empty() {
        println!("{s}");
    }
}

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

pub async fn repo(cmd: RepoCmd, out: Output) -> Result<()> {
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

async fn finish_follow(api: &Client, id: u64) -> Result<()> {
    stream_logs(api, id).await?;
    let r = api.scaleset("GET", &format!("/runs/{id}"), None).await?;
    let state = r["state"].as_str().unwrap_or("unknown");
    if state != "succeeded" && state != "succeededwithissues" {
        bail!(
            "run {id} of `{}` ended {state}{}",
            r["pipeline"].as_str().unwrap_or("?"),
            r["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

pub async fn pipeline(cmd: PipelineCmd, out: Output) -> Result<()> {
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
            if follow {
                let id = v["id"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no run id in {v}"))?;
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

async fn logs(api: &Client, id: u64, follow: bool) -> Result<()> {
    if follow {
        stream_logs(api, id).await
    } else {
        print!("{}", api.scaleset_text(&format!("/runs/{id}/logs")).await?);
        Ok(())
    }
}

pub async fn run(cmd: RunCmd, out: Output) -> Result<()> {
    let api = Client::from_home(&home())?;
    match cmd {
        RunCmd::List { pipeline } => {
            let path = match pipeline {
                Some(p) => format!("/runs?pipeline={}", enc(&p)),
                None => "/runs".into(),
            };
            print(
                &values(api.scaleset("GET", &path, None).await?),
                out,
                RUN_COLS,
            );
        }
        RunCmd::Show { id } => {
            print(
                &api.scaleset("GET", &format!("/runs/{id}"), None).await?,
                out,
                RUN_COLS,
            );
        }
        RunCmd::Cancel { id } => {
            print(
                &api.scaleset("POST", &format!("/runs/{id}/cancel"), None)
                    .await?,
                out,
                RUN_COLS,
            );
        }
        RunCmd::Logs { id, follow } => logs(&api, id, follow).await?,
    }
    Ok(())
}

/// Translates `az ...` arguments to `scaleset ...` arguments. Our commands already use az's
/// names and flags (`vmss update|show|list-instances|scale`, `network lb show`, `image list`,
/// `group list`, `-g/--resource-group`, `-n/--name`, `--set`, `-o/--output`); this drops the
/// global az flags we have no use for and maps `--output jsonc|yaml|none`.
pub fn az_args(args: Vec<String>) -> Vec<String> {
    let mut out = vec!["scaleset".to_string()];
    let mut it = args.into_iter().skip(1).peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--only-show-errors" | "--verbose" | "--debug" | "--yes" | "-y" => {}
            "--subscription" => {
                it.next();
            }
            "--query" => {
                it.next();
            }
            "-o" | "--output" => {
                let v = it.next().unwrap_or_default();
                out.push("--output".into());
                out.push(match v.as_str() {
                    "table" | "tsv" => v,
                    _ => "json".into(),
                });
            }
            _ if a.starts_with("--output=") => {
                let v = &a["--output=".len()..];
                out.push(format!(
                    "--output={}",
                    if v == "table" || v == "tsv" {
                        v
                    } else {
                        "json"
                    }
                ));
            }
            _ => out.push(a),
        }
    }
    out
}
