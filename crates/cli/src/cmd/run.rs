//! `scaleset run`: pipeline runs and their logs.
use super::{print_nonempty as print, values};
use crate::client::{enc, home, Client};
use crate::output::{Columns, Output};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use http_body_util::BodyExt;
use std::io::Write;

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

pub(super) const RUN_COLS: Columns = &[
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

pub(super) async fn finish_follow(api: &Client, id: u64) -> Result<()> {
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

pub(super) async fn logs(api: &Client, id: u64, follow: bool) -> Result<()> {
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
