//! `scaleset monitor metrics list|list-definitions`: Azure Monitor's host metrics of a scale set
//! (`{id}/providers/Microsoft.Insights/metrics`), with `az monitor metrics`' flags;
//! `monitor autoscale` and `monitor activity-log` are in `autoscale.rs`.
use super::{client, print};
use crate::client::enc;
use crate::output::{self, Output};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

/// The Azure Monitor api-version these calls use.
const MONITOR: &str = "2023-10-01";

#[derive(Subcommand)]
pub enum MonitorCmd {
    /// Azure Monitor metrics.
    #[command(subcommand)]
    Metrics(MetricsCmd),
    /// Autoscale settings of scale sets: profiles, rules, and what they did.
    #[command(subcommand)]
    Autoscale(super::autoscale::AutoscaleCmd),
    /// The activity log of autoscale settings (scale actions and skips).
    #[command(subcommand)]
    ActivityLog(super::autoscale::ActivityLogCmd),
}

#[derive(Subcommand)]
pub enum MetricsCmd {
    /// List the metric values of a scale set (Percentage CPU, Available Memory Bytes, Network In
    /// Total, Network Out Total), across its instances or per instance (--dimension VMName).
    List(Box<ListArgs>),
    /// List the metrics a scale set has: names, units, aggregations, the VMName dimension.
    ListDefinitions(Resource),
}

#[derive(Args)]
pub struct Resource {
    /// The scale set: its resource id, or its name with --resource-group.
    #[arg(long)]
    pub resource: String,
    /// Resource group of --resource when it is a name.
    #[arg(long = "resource-group", short = 'g')]
    pub rg: Option<String>,
    /// The resource's type when --resource is a name.
    #[arg(long, default_value = "Microsoft.Compute/virtualMachineScaleSets")]
    pub resource_type: String,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub r: Resource,
    /// Metric names, space-separated (quote each), e.g. "Percentage CPU" "Network In Total".
    #[arg(long = "metrics", visible_alias = "metric", num_args = 1..)]
    pub metrics: Vec<String>,
    /// Time grain: 1m, 5m, 15m, 30m, 1h, 6h, 12h, 1d (or PT1M, ..., FULL).
    #[arg(long, default_value = "1m")]
    pub interval: String,
    /// Aggregations, space-separated: Average, Minimum, Maximum, Total, Count (default: each
    /// metric's primary one).
    #[arg(long, num_args = 1..)]
    pub aggregation: Vec<String>,
    /// Start of the query (e.g. 2024-01-01T00:00:00Z); default: the end minus --offset.
    #[arg(long)]
    pub start_time: Option<String>,
    /// End of the query; default: now (or the start plus --offset).
    #[arg(long)]
    pub end_time: Option<String>,
    /// The timespan when only one end (or neither) is given.
    #[arg(long, default_value = "1h")]
    pub offset: String,
    /// A $filter on the dimension, e.g. "VMName eq '*'" (one series per instance).
    #[arg(long)]
    pub filter: Option<String>,
    /// Dimensions to split by (VMName), when there is no --filter.
    #[arg(long, num_args = 1..)]
    pub dimension: Vec<String>,
    /// Series per metric with a filter (default 10).
    #[arg(long)]
    pub top: Option<u32>,
    /// Aggregation and direction that rank the series for --top, e.g. "Average desc".
    #[arg(long)]
    pub orderby: Option<String>,
    /// The metrics' namespace (Microsoft.Compute/virtualMachineScaleSets).
    #[arg(long)]
    pub namespace: Option<String>,
}

const DEFINITION_COLS: output::Columns = &[
    ("Name", "/name/value"),
    ("Unit", "/unit"),
    ("PrimaryAggregationType", "/primaryAggregationType"),
];

pub async fn run(cmd: MonitorCmd, out: Output) -> Result<()> {
    let cmd = match cmd {
        MonitorCmd::Metrics(m) => m,
        MonitorCmd::Autoscale(a) => return super::autoscale::run(a, out).await,
        MonitorCmd::ActivityLog(a) => return super::autoscale::activity_log(a, out).await,
    };
    let c = client()?;
    match cmd {
        MetricsCmd::List(a) => {
            let path = format!(
                "{}/providers/Microsoft.Insights/metrics?{}",
                resource_id(&c, &a.r)?,
                query(&a, model::metrics::format_datetime(unix_now()).as_str())?
            );
            let v = c.call("GET", &path, None).await?;
            match out {
                Output::Json => print(&v, out, &[]),
                _ => println!("{}", output::table(&metric_rows(&v), out)),
            }
        }
        MetricsCmd::ListDefinitions(r) => {
            let path = format!(
                "{}/providers/Microsoft.Insights/metricDefinitions?api-version={MONITOR}",
                resource_id(&c, &r)?
            );
            let v = c.call("GET", &path, None).await?;
            print(&v["value"], out, DEFINITION_COLS);
        }
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn resource_id(c: &crate::client::Client, r: &Resource) -> Result<String> {
    if r.resource.starts_with('/') {
        return Ok(r.resource.trim_end_matches('/').to_string());
    }
    let rg = r.rg.as_deref().ok_or_else(|| {
        anyhow!("--resource is a name: give its --resource-group (or the full resource id)")
    })?;
    Ok(format!(
        "{}/providers/{}/{}",
        c.rg_path(rg),
        r.resource_type,
        enc(&r.resource)
    ))
}

/// The query string of `metrics list` (`now` ends the default timespan).
fn query(a: &ListArgs, now: &str) -> Result<String> {
    let mut q = vec![
        format!("api-version={MONITOR}"),
        format!("timespan={}", enc(&timespan(a, now)?)),
        format!("interval={}", enc(&interval(&a.interval)?)),
    ];
    if !a.metrics.is_empty() {
        let names: Vec<String> = a.metrics.iter().map(|m| enc(m)).collect();
        q.push(format!("metricnames={}", names.join(",")));
    }
    if !a.aggregation.is_empty() {
        q.push(format!("aggregation={}", enc(&a.aggregation.join(","))));
    }
    let split: Vec<String> = a.dimension.iter().map(|d| format!("{d} eq '*'")).collect();
    match (&a.filter, split.is_empty()) {
        (Some(f), _) => q.push(format!("$filter={}", enc(f))),
        (None, false) => q.push(format!("$filter={}", enc(&split.join(" and ")))),
        (None, true) => {}
    }
    let opt = [
        ("top", a.top.map(|t| t.to_string())),
        ("orderby", a.orderby.clone()),
        ("metricnamespace", a.namespace.clone()),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(&v)));
        }
    }
    Ok(q.join("&"))
}

/// `start/end` from --start-time, --end-time and --offset, as az builds it.
fn timespan(a: &ListArgs, now: &str) -> Result<String> {
    use model::metrics::{format_datetime, parse_datetime};
    let time = |flag: &str, s: &str| {
        parse_datetime(s)
            .ok_or_else(|| anyhow!("{flag} '{s}' is not a date and time like 2024-01-01T00:00:00Z"))
    };
    let offset = model::vmss::parse_iso8601_duration(&interval(&a.offset)?)
        .ok_or_else(|| anyhow!("--offset '{}' is not a duration like 1h", a.offset))?;
    let (start, end) = match (&a.start_time, &a.end_time) {
        (Some(s), Some(e)) => (time("--start-time", s)?, time("--end-time", e)?),
        (Some(s), None) => {
            let s = time("--start-time", s)?;
            (s, s + offset)
        }
        (None, e) => {
            let e = time("--end-time", e.as_deref().unwrap_or(now))?;
            (e.saturating_sub(offset), e)
        }
    };
    Ok(format!(
        "{}/{}",
        format_datetime(start),
        format_datetime(end)
    ))
}

/// az's `##d##h##m##s` periods (`1m`, `1h30m`) as ISO 8601; ISO durations and FULL pass.
pub(super) fn interval(s: &str) -> Result<String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("FULL") || t.starts_with(['P', 'p']) {
        return Ok(t.to_ascii_uppercase());
    }
    let mut secs = 0u64;
    let mut num = String::new();
    for ch in t.chars() {
        match ch {
            '0'..='9' => num.push(ch),
            'd' | 'h' | 'm' | 's' if !num.is_empty() => {
                let unit = [('d', 86_400), ('h', 3600), ('m', 60), ('s', 1)];
                let mult = unit.iter().find(|(u, _)| *u == ch).map_or(1, |u| u.1);
                secs = secs.saturating_add(num.parse::<u64>()?.saturating_mul(mult));
                num.clear();
            }
            _ => bail!("'{s}' is not a period like 1m, 1h30m or PT1M"),
        }
    }
    if !num.is_empty() || secs == 0 {
        bail!("'{s}' is not a period like 1m, 1h30m or PT1M");
    }
    Ok(model::metrics::iso_duration(secs))
}

fn arr(x: &Value) -> &[Value] {
    x.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Every data point with its metric's name and, with a split, its instance.
fn points(v: &Value) -> Vec<(&str, Option<&str>, &Value)> {
    let mut out = Vec::new();
    for m in arr(&v["value"]) {
        let name = m["name"]["value"].as_str().unwrap_or("");
        for t in arr(&m["timeseries"]) {
            let vm = t
                .get("metadatavalues")
                .map(|md| md[0]["value"].as_str().unwrap_or(""));
            out.extend(arr(&t["data"]).iter().map(|d| (name, vm, d)));
        }
    }
    out
}

/// One row per data point: timestamp, metric, the instance (with a split), the values.
fn metric_rows(v: &Value) -> (Vec<String>, Vec<Vec<String>>) {
    let points = points(v);
    let split = points.iter().any(|p| p.1.is_some());
    let used: Vec<&str> = ["average", "minimum", "maximum", "total", "count"]
        .into_iter()
        .filter(|a| points.iter().any(|p| p.2.get(*a).is_some()))
        .collect();
    let mut headers = vec!["Timestamp".to_string(), "Name".into()];
    if split {
        headers.push("VMName".into());
    }
    headers.extend(used.iter().map(|a| capitalize(a)));
    let row = |(name, vm, d): &(&str, Option<&str>, &Value)| {
        let at = d["timeStamp"].as_str().unwrap_or("");
        let mut r = vec![at.replace('T', " ").replace('Z', ""), name.to_string()];
        r.extend(vm.map(str::to_string));
        r.extend(
            used.iter()
                .map(|a| d.get(*a).map(number).unwrap_or_default()),
        );
        r
    };
    (headers, points.iter().map(row).collect())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// A value as az's table prints it: whole numbers without a fraction.
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => format!("{x}"),
        None => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(extra: &[&str]) -> ListArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            a: ListArgs,
        }
        let mut argv = vec!["x", "--resource", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web"];
        argv.extend(extra);
        P::parse_from(argv).a
    }

    #[test]
    fn periods() {
        for (s, want) in [
            ("1m", "PT1M"),
            ("1h30m", "PT1H30M"),
            ("1d", "P1D"),
            ("PT5M", "PT5M"),
            ("full", "FULL"),
            ("90s", "PT1M30S"),
        ] {
            assert_eq!(interval(s).unwrap(), want, "{s}");
        }
        for s in ["", "m", "5x", "0m", "1m5"] {
            assert!(interval(s).is_err(), "{s}");
        }
    }

    #[test]
    fn queries_as_az_builds_them() {
        let now = "2024-01-01T01:00:00Z";
        let q = query(
            &args(&[
                "--metrics",
                "Percentage CPU",
                "Network In Total",
                "--aggregation",
                "Average",
                "Total",
                "--dimension",
                "VMName",
            ]),
            now,
        )
        .unwrap();
        assert_eq!(q, "api-version=2023-10-01&timespan=2024-01-01T00%3A00%3A00Z%2F2024-01-01T01%3A00%3A00Z&interval=PT1M&metricnames=Percentage%20CPU,Network%20In%20Total&aggregation=Average%2CTotal&$filter=VMName%20eq%20%27%2A%27");
        let q = query(
            &args(&[
                "--metric",
                "Percentage CPU",
                "--start-time",
                "2024-01-01T00:00:00Z",
                "--offset",
                "30m",
                "--interval",
                "5m",
                "--filter",
                "VMName eq 'web_1'",
                "--top",
                "3",
            ]),
            now,
        )
        .unwrap();
        assert!(
            q.contains(
                "timespan=2024-01-01T00%3A00%3A00Z%2F2024-01-01T00%3A30%3A00Z&interval=PT5M"
            ),
            "{q}"
        );
        assert!(
            q.ends_with("&$filter=VMName%20eq%20%27web_1%27&top=3"),
            "{q}"
        );
        assert!(query(&args(&["--start-time", "noon"]), now).is_err());
    }

    #[test]
    fn table_rows() {
        let v = json!({"value": [{"name": {"value": "Percentage CPU"}, "timeseries": [
            {"metadatavalues": [{"name": {"value": "vmname"}, "value": "web_0"}], "data": [
                {"timeStamp": "2024-01-01T00:00:00Z", "average": 37.5, "count": 4.0},
                {"timeStamp": "2024-01-01T00:01:00Z"}]}]}]});
        let (h, rows) = metric_rows(&v);
        assert_eq!(h, ["Timestamp", "Name", "VMName", "Average", "Count"]);
        assert_eq!(
            rows[0],
            [
                "2024-01-01 00:00:00",
                "Percentage CPU",
                "web_0",
                "37.5",
                "4"
            ]
        );
        assert_eq!(
            rows[1],
            ["2024-01-01 00:01:00", "Percentage CPU", "web_0", "", ""]
        );
    }
}
