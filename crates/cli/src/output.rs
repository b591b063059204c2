//! `--output json|table|tsv`, like az.
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    #[default]
    Json,
    Table,
    Tsv,
}

/// Columns for table/tsv: (header, JSON pointer).
pub type Columns = &'static [(&'static str, &'static str)];

pub const VMSS_COLS: Columns = &[
    ("Name", "/name"),
    ("ResourceGroup", "/x-rg"),
    ("Location", "/location"),
    ("Capacity", "/sku/capacity"),
    ("UpgradePolicy", "/properties/upgradePolicy/mode"),
    ("ProvisioningState", "/properties/provisioningState"),
];
pub const VM_COLS: Columns = &[
    ("InstanceId", "/instanceId"),
    ("Name", "/name"),
    ("ComputerName", "/properties/osProfile/computerName"),
    ("PrivateIp", "/tags/scaleset.privateIPAddress"),
    ("Image", "/tags/scaleset.image"),
    ("LatestModelApplied", "/properties/latestModelApplied"),
    ("ProvisioningState", "/properties/provisioningState"),
    ("PowerState", "/x-power"),
    ("Health", "/x-health"),
];
/// `vmss list-skus`: Azure's `VirtualMachineScaleSetSku`.
pub const SKU_COLS: Columns = &[
    ("ResourceType", "/resourceType"),
    ("Name", "/sku/name"),
    ("Tier", "/sku/tier"),
    ("Minimum", "/capacity/minimum"),
    ("Maximum", "/capacity/maximum"),
    ("DefaultCapacity", "/capacity/defaultCapacity"),
    ("ScaleType", "/capacity/scaleType"),
];
pub const LB_COLS: Columns = &[
    ("Name", "/name"),
    ("Location", "/location"),
    ("ProvisioningState", "/properties/provisioningState"),
];
pub const IMAGE_COLS: Columns = &[
    ("Name", "/name"),
    ("Digest", "/tags/scaleset.digest"),
    ("Base", "/tags/scaleset.base"),
    ("ProvisioningState", "/properties/provisioningState"),
];
pub const PROBE_COLS: Columns = &[
    ("Name", "/name"),
    ("Protocol", "/properties/protocol"),
    ("Port", "/properties/port"),
    ("RequestPath", "/properties/requestPath"),
    ("IntervalInSeconds", "/properties/intervalInSeconds"),
    ("ProbeThreshold", "/properties/probeThreshold"),
];
pub const RULE_COLS: Columns = &[
    ("Name", "/name"),
    ("Protocol", "/properties/protocol"),
    ("FrontendPort", "/properties/frontendPort"),
    ("BackendPort", "/properties/backendPort"),
    ("LoadDistribution", "/properties/loadDistribution"),
    ("IdleTimeoutInMinutes", "/properties/idleTimeoutInMinutes"),
];
pub const GROUP_COLS: Columns = &[
    ("Name", "/name"),
    ("Location", "/location"),
    ("ProvisioningState", "/properties/provisioningState"),
];

fn cell(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    }
}

/// Adds derived columns (power state, health) from an expanded instance view.
pub fn decorate_vm(mut v: Value) -> Value {
    let statuses = v
        .pointer("/properties/instanceView/statuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let power = statuses
        .iter()
        .filter_map(|s| s.get("code").and_then(Value::as_str))
        .find_map(|c| c.strip_prefix("PowerState/"))
        .unwrap_or("")
        .to_string();
    let health = v
        .pointer("/properties/instanceView/vmHealth/status/code")
        .and_then(Value::as_str)
        .and_then(|c| c.strip_prefix("HealthState/"))
        .unwrap_or("")
        .to_string();
    v["x-power"] = Value::String(power);
    v["x-health"] = Value::String(health);
    v
}

pub fn render(v: &Value, out: Output, cols: Columns) -> String {
    match out {
        Output::Json => {
            let clean = strip_x(v.clone());
            serde_json::to_string_pretty(&clean).unwrap_or_default()
        }
        Output::Table | Output::Tsv => {
            let rows: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                Value::Null => vec![],
                x => vec![x],
            };
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| cols.iter().map(|(_, p)| cell(r, p)).collect())
                .collect();
            let headers = cols.iter().map(|(h, _)| h.to_string()).collect();
            table(&(headers, cells), out)
        }
    }
}

/// Rows under headers, as az's table (aligned columns) or tsv (no headers).
pub fn table((headers, cells): &(Vec<String>, Vec<Vec<String>>), out: Output) -> String {
    if out == Output::Tsv {
        return cells
            .iter()
            .map(|r| r.join("\t"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in cells {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        r.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let mut s = vec![line(headers), line(&rule)];
    s.extend(cells.iter().map(|r| line(r)));
    s.join("\n")
}

fn strip_x(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| !k.starts_with("x-"))
                .map(|(k, v)| (k, strip_x(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_x).collect()),
        x => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        let v = json!([{"name": "a", "location": "local", "properties": {"provisioningState": "Succeeded"}, "x-rg": "rg"}]);
        assert_eq!(render(&v, Output::Tsv, LB_COLS), "a\tlocal\tSucceeded");
        let t = render(&v, Output::Table, LB_COLS);
        assert!(
            t.starts_with("Name  Location  ProvisioningState\n----"),
            "{t}"
        );
        assert!(!render(&v, Output::Json, LB_COLS).contains("x-rg"));
    }
}
