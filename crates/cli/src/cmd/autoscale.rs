//! `scaleset monitor autoscale` (create, update, show, list, delete, `rule create|list|delete`,
//! `profile create|list`) and `monitor activity-log list`: Azure Monitor autoscale settings with
//! `az monitor autoscale`'s flags. Edits are a GET, a change to the body and a PUT, as az does.
use super::{client, print};
use crate::client::{enc, Client};
use crate::output::{Columns, Output};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// The api-version of `Microsoft.Insights/autoscalesettings`.
const AUTOSCALE: &str = "2022-10-01";
/// az's name for the profile `create` makes.
const DEFAULT_PROFILE: &str = "default";

#[derive(Subcommand)]
pub enum AutoscaleCmd {
    /// Create an autoscale setting for a scale set, with one profile and no rules.
    Create(Box<CreateArgs>),
    /// Update the capacity of a setting's default profile, or enable/disable it.
    Update(UpdateArgs),
    /// Show a setting with its newest activity-log events (scale actions and skips, with why).
    Show(ShowArgs),
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: Option<String>,
    },
    Delete(Named),
    /// Scale rules of a profile.
    #[command(subcommand)]
    Rule(RuleCmd),
    /// Profiles of a setting.
    #[command(subcommand)]
    Profile(ProfileCmd),
}

#[derive(Args)]
pub struct Named {
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    #[arg(long, short = 'n')]
    pub name: String,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub n: Named,
    /// The newest this many activity-log events go with the setting (JSON: as
    /// `recentActivity`; table: a second table). Default 10, and 0 with `-o tsv`, whose scripts
    /// expect az's one row; 0 prints the setting alone, as az does.
    #[arg(long)]
    pub history: Option<usize>,
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    /// The setting's name (default: the resource's name).
    #[arg(long, short = 'n')]
    pub name: Option<String>,
    /// The scale set: its resource id, or its name in --resource-group.
    #[arg(long)]
    pub resource: String,
    /// The number of instances to start with (the profile's default).
    #[arg(long)]
    pub count: Option<u32>,
    #[arg(long)]
    pub min_count: Option<u32>,
    #[arg(long)]
    pub max_count: Option<u32>,
    /// Create it disabled.
    #[arg(long)]
    pub disabled: bool,
    #[arg(long, default_value = "local")]
    pub location: String,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub n: Named,
    #[arg(long)]
    pub count: Option<u32>,
    #[arg(long)]
    pub min_count: Option<u32>,
    #[arg(long)]
    pub max_count: Option<u32>,
    #[arg(long)]
    pub enabled: Option<bool>,
}

#[derive(Args)]
pub struct Parent {
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    #[arg(long)]
    pub autoscale_name: String,
    #[arg(long, default_value = DEFAULT_PROFILE)]
    pub profile_name: String,
}

#[derive(Subcommand)]
pub enum RuleCmd {
    /// Add a rule: --condition "Percentage CPU > 70 avg 5m" --scale out 1.
    Create(Box<RuleArgs>),
    List(Parent),
    /// Delete rules by index (`rule list` shows them; `*` deletes all).
    Delete {
        #[command(flatten)]
        p: Parent,
        #[arg(long, num_args = 1.., required = true)]
        index: Vec<String>,
    },
}

#[derive(Args)]
pub struct RuleArgs {
    #[command(flatten)]
    pub p: Parent,
    /// "<metric> {==,!=,>,>=,<,<=} <threshold> {avg,min,max,total,count} <window>".
    #[arg(long, num_args = 1.., required = true)]
    pub condition: Vec<String>,
    /// "{out,in,to} <count>[%]" (e.g. out 2, in 25%, to 5).
    #[arg(long, num_args = 1.., required = true)]
    pub scale: Vec<String>,
    /// Minutes to wait after this rule scales before scaling again.
    #[arg(long, default_value_t = 5)]
    pub cooldown: u32,
    /// How instances' values are combined per grain: "{avg,min,max,sum,count} <period>".
    #[arg(long, num_args = 1.., default_value = "avg 1m")]
    pub timegrain: Vec<String>,
    /// The metric's resource (default: the setting's target).
    #[arg(long)]
    pub resource: Option<String>,
}

#[derive(Subcommand)]
pub enum ProfileCmd {
    /// Add a profile with a weekly recurrence (e.g. --recurrence week sat sun --start 09:00).
    Create(Box<ProfileArgs>),
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: String,
        #[arg(long)]
        autoscale_name: String,
    },
}

#[derive(Args)]
pub struct ProfileArgs {
    #[arg(long = "resource-group", short = 'g')]
    pub rg: String,
    #[arg(long)]
    pub autoscale_name: String,
    #[arg(long, short = 'n')]
    pub name: String,
    #[arg(long)]
    pub count: u32,
    #[arg(long)]
    pub min_count: Option<u32>,
    #[arg(long)]
    pub max_count: Option<u32>,
    /// `week <day> [<day> ...]`.
    #[arg(long, num_args = 2.., required = true)]
    pub recurrence: Vec<String>,
    /// Start time of day, HH:MM.
    #[arg(long)]
    pub start: String,
    #[arg(long, default_value = "UTC")]
    pub timezone: String,
    /// Copy the rules of the default profile.
    #[arg(long)]
    pub copy_rules: Option<String>,
}

#[derive(Subcommand)]
pub enum ActivityLogCmd {
    /// Autoscale events of the settings of a resource group (or one setting), newest first.
    List {
        #[arg(long = "resource-group", short = 'g')]
        rg: String,
        #[arg(long)]
        autoscale_name: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        max_events: usize,
    },
}

const SETTING_COLS: Columns = &[
    ("Name", "/name"),
    ("Enabled", "/properties/enabled"),
    ("Location", "/location"),
    ("TargetResourceUri", "/properties/targetResourceUri"),
];
const RULE_COLS: Columns = &[
    ("Index", "/index"),
    ("Metric", "/metricTrigger/metricName"),
    ("Operator", "/metricTrigger/operator"),
    ("Threshold", "/metricTrigger/threshold"),
    ("Aggregation", "/metricTrigger/timeAggregation"),
    ("Window", "/metricTrigger/timeWindow"),
    ("Direction", "/scaleAction/direction"),
    ("Type", "/scaleAction/type"),
    ("Value", "/scaleAction/value"),
    ("Cooldown", "/scaleAction/cooldown"),
];
const PROFILE_COLS: Columns = &[
    ("Name", "/name"),
    ("Minimum", "/capacity/minimum"),
    ("Maximum", "/capacity/maximum"),
    ("Default", "/capacity/default"),
];
const EVENT_COLS: Columns = &[
    ("EventTimestamp", "/eventTimestamp"),
    ("Setting", "/x-setting"),
    ("OperationName", "/operationName/localizedValue"),
    ("Status", "/status/value"),
    ("OldInstancesCount", "/properties/OldInstancesCount"),
    ("NewInstancesCount", "/properties/NewInstancesCount"),
    ("Description", "/description"),
];

fn path(c: &Client, rg: &str, name: &str) -> String {
    format!(
        "{}/providers/Microsoft.Insights/autoscalesettings/{}?api-version={AUTOSCALE}",
        c.rg_path(rg),
        enc(name)
    )
}

pub async fn run(cmd: AutoscaleCmd, out: Output) -> Result<()> {
    let c = client()?;
    match cmd {
        AutoscaleCmd::Create(a) => {
            let target = resource_id(&c, &a.rg, &a.resource);
            let name = a.name.clone().unwrap_or_else(|| last_segment(&target));
            let body = create_body(&a, &target)?;
            print(
                &c.call("PUT", &path(&c, &a.rg, &name), Some(&body)).await?,
                out,
                SETTING_COLS,
            );
        }
        AutoscaleCmd::Update(a) => {
            let v = edit(&c, &a.n.rg, &a.n.name, |v| update(v, &a)).await?;
            print(&v, out, SETTING_COLS);
        }
        AutoscaleCmd::Show(a) => show(&c, &a, out).await?,
        AutoscaleCmd::List { rg } => {
            let base = match &rg {
                Some(rg) => c.rg_path(rg),
                None => format!("/subscriptions/{}", enc(&c.sub)),
            };
            let list = format!(
                "{base}/providers/Microsoft.Insights/autoscalesettings?api-version={AUTOSCALE}"
            );
            print(&Value::Array(c.list(&list).await?), out, SETTING_COLS);
        }
        AutoscaleCmd::Delete(n) => print(
            &c.call("DELETE", &path(&c, &n.rg, &n.name), None).await?,
            out,
            &[],
        ),
        AutoscaleCmd::Rule(r) => rule(&c, r, out).await?,
        AutoscaleCmd::Profile(p) => profile(&c, p, out).await?,
    }
    Ok(())
}

/// A GET, `f` on the body, a PUT.
async fn edit(
    c: &Client,
    rg: &str,
    name: &str,
    f: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<Value> {
    let p = path(c, rg, name);
    let mut v = c.call("GET", &p, None).await?;
    f(&mut v)?;
    c.call("PUT", &p, Some(&v)).await
}

fn resource_id(c: &Client, rg: &str, resource: &str) -> String {
    if resource.starts_with('/') {
        resource.trim_end_matches('/').to_string()
    } else {
        c.vmss_path(rg, resource)
    }
}

fn last_segment(id: &str) -> String {
    id.rsplit('/').next().unwrap_or_default().to_string()
}

/// Capacity as az fills it: missing bounds default to the count, the count to the minimum.
fn capacity(count: Option<u32>, min: Option<u32>, max: Option<u32>) -> Result<Value> {
    let count = count
        .or(min)
        .or(max)
        .ok_or_else(|| anyhow!("give --count (or --min-count and --max-count)"))?;
    let (min, max) = (min.unwrap_or(count), max.unwrap_or(count));
    if !(min <= count && count <= max) {
        bail!("the counts must be --min-count <= --count <= --max-count");
    }
    Ok(
        json!({"minimum": min.to_string(), "maximum": max.to_string(), "default": count.to_string()}),
    )
}

fn create_body(a: &CreateArgs, target: &str) -> Result<Value> {
    let profile = json!({"name": DEFAULT_PROFILE, "capacity": capacity(a.count, a.min_count, a.max_count)?, "rules": []});
    Ok(json!({"location": a.location, "properties": {
        "enabled": !a.disabled, "targetResourceUri": target, "profiles": [profile]}}))
}

fn update(v: &mut Value, a: &UpdateArgs) -> Result<()> {
    if let Some(e) = a.enabled {
        v["properties"]["enabled"] = json!(e);
    }
    if a.count.is_none() && a.min_count.is_none() && a.max_count.is_none() {
        return Ok(());
    }
    let p = profile_mut(v, DEFAULT_PROFILE)?;
    let cur = |k: &str| {
        p["capacity"][k]
            .as_str()
            .and_then(|s| s.parse::<u32>().ok())
    };
    let c = capacity(
        a.count.or(cur("default")),
        a.min_count.or(cur("minimum")),
        a.max_count.or(cur("maximum")),
    )?;
    p["capacity"] = c;
    Ok(())
}

/// The profile named `name` (any case), or the only one there is.
fn profile_mut<'a>(v: &'a mut Value, name: &str) -> Result<&'a mut Value> {
    let profiles = v["properties"]["profiles"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("the setting has no profiles"))?;
    let only = profiles.len() == 1 && name == DEFAULT_PROFILE;
    profiles
        .iter_mut()
        .enumerate()
        .find(|(_, p)| {
            only || p["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow!("profile '{name}' not found"))
}

fn rules_mut(p: &mut Value) -> &mut Vec<Value> {
    if !p["rules"].is_array() {
        p["rules"] = json!([]);
    }
    p["rules"].as_array_mut().expect("just made an array")
}

async fn rule(c: &Client, cmd: RuleCmd, out: Output) -> Result<()> {
    match cmd {
        RuleCmd::Create(a) => {
            let trigger = parse_condition(&a.condition.join(" "))?;
            let action = parse_scale(&a.scale.join(" "), a.cooldown)?;
            let (statistic, grain) = parse_timegrain(&a.timegrain.join(" "))?;
            let mut created = Value::Null;
            edit(c, &a.p.rg, &a.p.autoscale_name, |v| {
                let target = v["properties"]["targetResourceUri"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let source = a
                    .resource
                    .as_deref()
                    .map_or(target, |r| resource_id(c, &a.p.rg, r));
                let mut t = trigger;
                t["metricResourceUri"] = json!(source);
                t["statistic"] = json!(statistic);
                t["timeGrain"] = json!(grain);
                created = json!({"metricTrigger": t, "scaleAction": action});
                rules_mut(profile_mut(v, &a.p.profile_name)?).push(created.clone());
                Ok(())
            })
            .await?;
            print(&created, out, RULE_COLS);
        }
        RuleCmd::List(p) => {
            let mut v = c
                .call("GET", &path(c, &p.rg, &p.autoscale_name), None)
                .await?;
            let rules: Vec<Value> = rules_mut(profile_mut(&mut v, &p.profile_name)?)
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let mut r = r.clone();
                    r["index"] = json!(i);
                    r
                })
                .collect();
            print(&Value::Array(rules), out, RULE_COLS);
        }
        RuleCmd::Delete { p, index } => {
            edit(c, &p.rg, &p.autoscale_name, |v| {
                let rules = rules_mut(profile_mut(v, &p.profile_name)?);
                *rules = delete_indexes(rules, &index)?;
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

/// The rules left once `index` (numbers, or `*` for all) are removed.
fn delete_indexes(rules: &[Value], index: &[String]) -> Result<Vec<Value>> {
    if index.iter().any(|i| i == "*") {
        return Ok(Vec::new());
    }
    let mut drop = Vec::new();
    for i in index {
        let n: usize = i
            .parse()
            .map_err(|_| anyhow!("--index '{i}' is not a rule index"))?;
        if n >= rules.len() {
            bail!("--index {n}: the profile has {} rules", rules.len());
        }
        drop.push(n);
    }
    Ok(rules
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, r)| r.clone())
        .collect())
}

async fn profile(c: &Client, cmd: ProfileCmd, out: Output) -> Result<()> {
    match cmd {
        ProfileCmd::List { rg, autoscale_name } => {
            let v = c.call("GET", &path(c, &rg, &autoscale_name), None).await?;
            print(&v["properties"]["profiles"], out, PROFILE_COLS);
        }
        ProfileCmd::Create(a) => {
            let mut p = json!({"name": a.name, "capacity": capacity(Some(a.count), a.min_count, a.max_count)?,
                "recurrence": recurrence(&a.recurrence, &a.start, &a.timezone)?, "rules": []});
            let v = edit(c, &a.rg, &a.autoscale_name, |v| {
                if let Some(from) = &a.copy_rules {
                    p["rules"] = profile_mut(v, from)?["rules"].clone();
                }
                let profiles = v["properties"]["profiles"]
                    .as_array_mut()
                    .ok_or_else(|| anyhow!("the setting has no profiles"))?;
                profiles.push(p);
                Ok(())
            })
            .await?;
            print(&v["properties"]["profiles"], out, PROFILE_COLS);
        }
    }
    Ok(())
}

/// `week sat sun` and `09:30` as the ARM recurrence.
fn recurrence(words: &[String], start: &str, tz: &str) -> Result<Value> {
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    let (freq, days) = words
        .split_first()
        .ok_or_else(|| anyhow!("--recurrence week <days>"))?;
    if !freq.eq_ignore_ascii_case("week") {
        bail!("--recurrence: only 'week' is supported, e.g. week sat sun");
    }
    let days = days
        .iter()
        .map(|d| {
            let d3 = d.get(..3).unwrap_or(d).to_ascii_lowercase();
            DAYS.iter()
                .find(|n| n[..3].eq_ignore_ascii_case(&d3))
                .map(|n| n.to_string())
                .ok_or_else(|| anyhow!("--recurrence: '{d}' is not a day"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (h, m) = start
        .split_once(':')
        .ok_or_else(|| anyhow!("--start '{start}' is not HH:MM"))?;
    let (h, m): (u8, u8) = (h.parse()?, m.parse()?);
    Ok(
        json!({"frequency": "Week", "schedule": {"timeZone": tz, "days": days, "hours": [h], "minutes": [m]}}),
    )
}

/// az's `--condition`: `<metric> <op> <threshold> <aggregation> <window>`; the metric may be
/// quoted and contain spaces. The result is a `metricTrigger` without resource, statistic or
/// grain.
pub fn parse_condition(s: &str) -> Result<Value> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let usage = || {
        anyhow!("--condition '{s}': expected \"<metric> {{==,!=,>,>=,<,<=}} <threshold> {{avg,min,max,total,count}} <window>\", e.g. \"Percentage CPU > 70 avg 5m\"")
    };
    if words.iter().any(|w| w.eq_ignore_ascii_case("where")) {
        bail!("--condition '{s}': dimensions ('where') are not supported: host metrics have none");
    }
    let [metric @ .., op, threshold, agg, window] = words.as_slice() else {
        return Err(usage());
    };
    let metric = metric.join(" ");
    let metric = metric.trim_matches(|c| c == '"' || c == '\'');
    if metric.is_empty() {
        return Err(usage());
    }
    let operator = match *op {
        "==" => "Equals",
        "!=" => "NotEquals",
        ">" => "GreaterThan",
        ">=" => "GreaterThanOrEqual",
        "<" => "LessThan",
        "<=" => "LessThanOrEqual",
        _ => return Err(usage()),
    };
    let threshold: f64 = threshold
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite())
        .ok_or_else(usage)?;
    let aggregation = match agg.to_ascii_lowercase().as_str() {
        "avg" => "Average",
        "min" => "Minimum",
        "max" => "Maximum",
        "total" => "Total",
        "count" => "Count",
        _ => return Err(usage()),
    };
    Ok(
        json!({"metricName": metric, "operator": operator, "threshold": threshold,
        "timeAggregation": aggregation, "timeWindow": period(window)?}),
    )
}

/// az's `--scale`: `out N`, `in N`, `in N%`, `to N`, as a `scaleAction`.
pub fn parse_scale(s: &str, cooldown_min: u32) -> Result<Value> {
    let usage =
        || anyhow!("--scale '{s}': expected {{out,in,to}} <count>[%], e.g. out 2, in 25%, to 5");
    let words: Vec<&str> = s.split_whitespace().collect();
    let [dir, value] = words.as_slice() else {
        return Err(usage());
    };
    let (num, percent) = match value.strip_suffix('%') {
        Some(n) => (n, true),
        None => (*value, false),
    };
    let n: u32 = num.parse().ok().filter(|n| *n >= 1).ok_or_else(usage)?;
    let (direction, kind) = match (dir.to_ascii_lowercase().as_str(), percent) {
        ("out", false) => ("Increase", "ChangeCount"),
        ("out", true) => ("Increase", "PercentChangeCount"),
        ("in", false) => ("Decrease", "ChangeCount"),
        ("in", true) => ("Decrease", "PercentChangeCount"),
        ("to", false) => ("None", "ExactCount"),
        _ => return Err(usage()),
    };
    Ok(
        json!({"direction": direction, "type": kind, "value": n.to_string(), "cooldown": format!("PT{cooldown_min}M")}),
    )
}

/// az's `--timegrain`: `<statistic> <period>` (default `avg 1m`).
pub fn parse_timegrain(s: &str) -> Result<(&'static str, String)> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let [stat, p] = words.as_slice() else {
        bail!("--timegrain '{s}': expected {{avg,min,max,sum,count}} <period>, e.g. avg 1m");
    };
    let statistic = match stat.to_ascii_lowercase().as_str() {
        "avg" => "Average",
        "min" => "Min",
        "max" => "Max",
        "sum" => "Sum",
        "count" => "Count",
        _ => bail!("--timegrain '{s}': the statistic is one of avg, min, max, sum, count"),
    };
    Ok((statistic, period(p)?))
}

/// `5m`, `1h`, `1h30m` (az's periods) or an ISO 8601 duration, as ISO 8601.
fn period(s: &str) -> Result<String> {
    let iso = super::monitor::interval(s)?;
    if iso == "FULL" {
        bail!("'{s}' is not a period like 5m or 1h");
    }
    Ok(iso)
}

/// The setting, then (unless `--history 0`) its newest events.
async fn show(c: &Client, a: &ShowArgs, out: Output) -> Result<()> {
    let mut setting = c.call("GET", &path(c, &a.n.rg, &a.n.name), None).await?;
    let history = a.history.unwrap_or(if out == Output::Tsv { 0 } else { 10 });
    // The history is scaleset's own route (Azure has none): without it, the setting alone.
    let events = match history {
        0 => None,
        _ => events_of(c, &a.n.rg, &a.n.name)
            .await
            .map_err(|e| eprintln!("warning: no activity log for '{}': {e:#}", a.n.name))
            .ok(),
    };
    let Some(mut events) = events else {
        print(&setting, out, SETTING_COLS);
        return Ok(());
    };
    newest(&mut events, history);
    if out == Output::Json {
        setting["recentActivity"] = Value::Array(events);
        print(&setting, out, SETTING_COLS);
    } else {
        for e in &mut events {
            e["x-setting"] = json!(a.n.name);
        }
        print(&setting, out, SETTING_COLS);
        println!("\nRecent activity (newest first):");
        print(&Value::Array(events), out, EVENT_COLS);
    }
    Ok(())
}

/// A setting's activity-log events, as the API returns them.
async fn events_of(c: &Client, rg: &str, name: &str) -> Result<Vec<Value>> {
    let p = format!(
        "{}/providers/Microsoft.Insights/autoscalesettings/{}/activityLog?api-version={AUTOSCALE}",
        c.rg_path(rg),
        enc(name)
    );
    let v = c.call("GET", &p, None).await?;
    Ok(v["value"].as_array().cloned().unwrap_or_default())
}

/// Newest first, at most `max`.
fn newest(events: &mut Vec<Value>, max: usize) {
    // RFC 3339 in UTC sorts as text.
    events.sort_by(|a, b| {
        b["eventTimestamp"]
            .as_str()
            .cmp(&a["eventTimestamp"].as_str())
    });
    events.truncate(max);
}

pub async fn activity_log(cmd: ActivityLogCmd, out: Output) -> Result<()> {
    let c = client()?;
    let ActivityLogCmd::List {
        rg,
        autoscale_name,
        max_events,
    } = cmd;
    let names: Vec<String> = match autoscale_name {
        Some(n) => vec![n],
        None => {
            let list = format!(
                "{}/providers/Microsoft.Insights/autoscalesettings?api-version={AUTOSCALE}",
                c.rg_path(&rg)
            );
            c.list(&list)
                .await?
                .iter()
                .filter_map(|s| s["name"].as_str().map(String::from))
                .collect()
        }
    };
    let mut events = Vec::new();
    for n in names {
        for mut e in events_of(&c, &rg, &n).await? {
            e["x-setting"] = json!(n);
            events.push(e);
        }
    }
    newest(&mut events, max_events);
    if out == Output::Json {
        for e in &mut events {
            e.as_object_mut().map(|o| o.remove("x-setting"));
        }
    }
    print(&Value::Array(events), out, EVENT_COLS);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_as_az_documents_them() {
        let ok = [
            (
                "Percentage CPU > 70 avg 5m",
                "Percentage CPU",
                "GreaterThan",
                70.0,
                "Average",
                "PT5M",
            ),
            (
                "\"Percentage CPU\" <= 25.5 min 1h",
                "Percentage CPU",
                "LessThanOrEqual",
                25.5,
                "Minimum",
                "PT1H",
            ),
            (
                "Network In Total >= 1000000 total 10m",
                "Network In Total",
                "GreaterThanOrEqual",
                1e6,
                "Total",
                "PT10M",
            ),
            (
                "Available Memory Bytes < 100 max 1h30m",
                "Available Memory Bytes",
                "LessThan",
                100.0,
                "Maximum",
                "PT1H30M",
            ),
            ("x == 0 count 5m", "x", "Equals", 0.0, "Count", "PT5M"),
            (
                "x != 1 AVG PT15M",
                "x",
                "NotEquals",
                1.0,
                "Average",
                "PT15M",
            ),
        ];
        for (s, metric, op, threshold, agg, window) in ok {
            let t = parse_condition(s).unwrap();
            assert_eq!(t["metricName"], metric, "{s}");
            assert_eq!(t["operator"], op, "{s}");
            assert_eq!(t["threshold"].as_f64(), Some(threshold), "{s}");
            assert_eq!(t["timeAggregation"], agg, "{s}");
            assert_eq!(t["timeWindow"], window, "{s}");
        }
        for s in [
            "",
            "Percentage CPU > 70 avg",
            "> 70 avg 5m",
            "Percentage CPU => 70 avg 5m",
            "Percentage CPU > high avg 5m",
            "Percentage CPU > NaN avg 5m",
            "Percentage CPU > 70 mean 5m",
            "Percentage CPU > 70 avg 5x",
            "Percentage CPU > 70 avg full",
            "Percentage CPU > 70 avg 5m where VMName == a",
        ] {
            assert!(parse_condition(s).is_err(), "{s}");
        }
    }

    #[test]
    fn scale_actions_and_timegrains() {
        let a = parse_scale("out 2", 5).unwrap();
        assert_eq!(
            a,
            json!({"direction": "Increase", "type": "ChangeCount", "value": "2", "cooldown": "PT5M"})
        );
        assert_eq!(
            parse_scale("in 25%", 10).unwrap()["type"],
            "PercentChangeCount"
        );
        assert_eq!(parse_scale("In 1", 1).unwrap()["direction"], "Decrease");
        assert_eq!(parse_scale("to 5", 5).unwrap()["direction"], "None");
        for s in ["out", "out 0", "to 5%", "up 1", "out -1", "out 1 2"] {
            assert!(parse_scale(s, 5).is_err(), "{s}");
        }
        assert_eq!(
            parse_timegrain("avg 1m").unwrap(),
            ("Average", "PT1M".to_string())
        );
        assert_eq!(parse_timegrain("max 5m").unwrap().0, "Max");
        assert!(parse_timegrain("avg").is_err() && parse_timegrain("median 1m").is_err());
    }

    #[test]
    fn bodies_and_edits() {
        let args = CreateArgs {
            rg: "rg".into(),
            name: None,
            resource: "web".into(),
            count: Some(2),
            min_count: Some(1),
            max_count: Some(5),
            disabled: false,
            location: "local".into(),
        };
        let b = create_body(&args, "/x/web").unwrap();
        assert_eq!(
            b["properties"]["profiles"][0]["capacity"],
            json!({"minimum": "1", "maximum": "5", "default": "2"})
        );
        assert_eq!(b["properties"]["enabled"], true);
        assert_eq!(capacity(Some(3), None, None).unwrap()["maximum"], "3");
        assert!(
            capacity(Some(9), Some(1), Some(5)).is_err() && capacity(None, None, None).is_err()
        );
        let rules: Vec<Value> = (0..3).map(|i| json!(i)).collect();
        assert_eq!(
            delete_indexes(&rules, &["1".into()]).unwrap(),
            [json!(0), json!(2)]
        );
        assert!(delete_indexes(&rules, &["*".into()]).unwrap().is_empty());
        assert!(delete_indexes(&rules, &["3".into()]).is_err());
        let r = recurrence(
            &["week".into(), "sat".into(), "Sunday".into()],
            "09:30",
            "UTC",
        )
        .unwrap();
        assert_eq!(r["schedule"]["days"], json!(["Saturday", "Sunday"]));
        assert_eq!(
            (
                r["schedule"]["hours"][0].as_u64(),
                r["schedule"]["minutes"][0].as_u64()
            ),
            (Some(9), Some(30))
        );
        let mut v = b.clone();
        let up = UpdateArgs {
            n: Named {
                rg: "rg".into(),
                name: "n".into(),
            },
            count: None,
            min_count: None,
            max_count: Some(8),
            enabled: Some(false),
        };
        update(&mut v, &up).unwrap();
        assert_eq!(v["properties"]["profiles"][0]["capacity"]["maximum"], "8");
        assert_eq!(v["properties"]["enabled"], false);
    }
}
