//! One module per command noun: each holds its clap definitions next to their handlers.
//! `group`, `vmss` (+ `rolling` for `vmss rolling-upgrade`), `lb` (`network lb`, + `probe`
//! and `rule` for its children), `image`, `monitor` (`monitor metrics`) and `autoscale` (`monitor autoscale`,
//! `monitor activity-log`) speak ARM to the
//! daemon (or Azure); `repo`, `pipeline`, `run` use the daemon's `/scaleset/...` endpoints;
//! `dashboard` mints the web dashboard's sign-in URLs; `deploy` submits ARM templates to Azure;
//! `export`, `up` and `serve` are the rest of the binary's commands.
pub mod autoscale;
pub mod dashboard;
pub mod deploy;
pub mod down;
pub mod export;
pub mod group;
pub mod image;
pub mod inspect;
pub mod lb;
pub mod monitor;
pub mod pipeline;
pub mod probe;
pub mod repo;
pub mod rolling;
pub mod rule;
pub mod run;
pub mod serve;
pub mod up;
pub mod vmss;

use crate::client::{self, Client};
use crate::output::{render, Columns, Output};
use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Clone)]
pub struct Target {
    /// Resource group.
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    /// Resource name.
    #[arg(long, short = 'n')]
    pub name: String,
}

/// Prints an ARM resource (nothing for a null body, e.g. a DELETE's).
fn print(v: &Value, out: Output, cols: Columns) {
    if v.is_null() {
        return;
    }
    println!("{}", render(v, out, cols));
}

/// Prints a `/scaleset/...` answer (nothing when it renders empty, e.g. an empty table).
fn print_nonempty(v: &Value, out: Output, cols: Columns) {
    let s = render(v, out, cols);
    if !s.is_empty() {
        println!("{s}");
    }
}

/// The `value` of a `/scaleset/...` list answer.
fn values(v: Value) -> Value {
    match v.get("value") {
        Some(x) => x.clone(),
        None => v,
    }
}

/// Adds `x-rg`, the resource group taken from the id, for the table columns.
fn with_rg(mut v: Value) -> Value {
    if let Some(rg) = v
        .get("id")
        .and_then(Value::as_str)
        .and_then(|id| id.split('/').nth(4))
        .map(str::to_string)
    {
        v["x-rg"] = json!(rg);
    }
    v
}

fn client() -> Result<Client> {
    Client::from_home(&client::home())
}
