//! `scaleset run`: pipeline runs and their logs.
use super::{print_nonempty as print, values};
use crate::client::{enc, home, Client};
use crate::output::{Columns, Output};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

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
    /// Follow a run to its end with live progress (its current step, each finished step and
    /// its duration); fails with the log's tail unless it succeeded.
    Watch {
        id: u64,
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
        RunCmd::Watch { id } => {
            let r = watch(&api, id).await?;
            print(&r, out, RUN_COLS);
        }
    }
    Ok(())
}

/// Waits for run `id` to complete, with live progress from its followed log: the step running
/// as the status line, each finished step as a line with its result and duration. Fails with
/// the tail of the run's log unless it succeeded; the run's record otherwise.
pub async fn watch(c: &Client, id: u64) -> Result<serde_json::Value> {
    use crate::progress::{step_mark, Progress, StepMark};
    let t0 = Instant::now();
    let mut body = c
        .scaleset_stream(&format!("/runs/{id}/logs?follow=true"))
        .await?
        .into_body();
    let mut p = Progress::stderr();
    p.update(&format!("    run {id} · queued"));
    let mut pending = Vec::new();
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut clock = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = clock.tick() => {
                p.tick();
                continue;
            }
        };
        let Some(Ok(frame)) = frame else { break };
        let Some(d) = frame.data_ref() else { continue };
        pending.extend_from_slice(d);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            match step_mark(&line) {
                Some(StepMark::Started(step)) => {
                    // Bounded: one entry per step of the run's own log.
                    if started.len() < 10_000 {
                        started.insert(step.to_string(), Instant::now());
                    }
                    p.update(&format!("    run {id} · {step}"));
                }
                Some(StepMark::Finished { step, result }) => {
                    let secs = started.get(step).map_or(0.0, |t| t.elapsed().as_secs_f64());
                    p.println(&format!("    run {id} · {step}: {result} ({secs:.1}s)"));
                }
                None => {}
            }
        }
    }
    p.finish();
    let r = c.scaleset("GET", &format!("/runs/{id}"), None).await?;
    let state = r["state"].as_str().unwrap_or("unknown").to_string();
    let pipeline = r["pipeline"].as_str().unwrap_or("?").to_string();
    eprintln!(
        "    run {id} of `{pipeline}` {state} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    if state != "succeeded" && state != "succeededwithissues" {
        let log = c
            .scaleset_text(&format!("/runs/{id}/logs"))
            .await
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        for l in tail.into_iter().rev() {
            eprintln!("    | {l}");
        }
        bail!(
            "run {id} of `{pipeline}` ended {state}{} (full log: scaleset run logs {id})",
            r["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
    }
    Ok(r)
}
