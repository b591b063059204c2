//! The dashboard's views as JSON: what each page shows, built from the same ARM answers the API
//! gives (`handlers::execute`), the CI service's records, the LB's counters and the engine's
//! host metrics. Lists are bounded.
use crate::error::ApiError;
use crate::handlers;
use crate::route::{Method, Res, Route, IMAGE, LB, VMSS};
use crate::state::AppState;
use serde_json::{json, Value};
use std::collections::HashMap;

/// The subscription the CLI uses by default (`scaleset` has one).
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";
/// Runs a list shows at most (newest first).
pub const MAX_RUNS: usize = 50;
/// Rows any other list shows at most.
pub const MAX_ROWS: usize = 500;
const MAX_NAME: usize = 128;

/// One page's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Resource groups and the resources of one (or of the first).
    Overview {
        rg: Option<String>,
    },
    Vmss(Res),
    Runs {
        pipeline: Option<String>,
    },
    Run(u64),
    Images,
}

impl View {
    /// From the query `view=overview|vmss|runs|run|images` with `rg`, `name`, `pipeline`, `id`.
    pub fn parse(q: &HashMap<String, String>) -> Result<View, ApiError> {
        let name = |k: &str| -> Result<Option<String>, ApiError> {
            match q.get(k) {
                Some(v) if v.is_empty() || v.len() > MAX_NAME => Err(ApiError::bad_request(
                    "InvalidParameter",
                    format!("`{k}` must be 1 to {MAX_NAME} characters"),
                )),
                v => Ok(v.cloned()),
            }
        };
        let need = |k: &str| {
            name(k)?.ok_or_else(|| {
                ApiError::bad_request("InvalidParameter", format!("the view needs `{k}`"))
            })
        };
        Ok(match q.get("view").map(String::as_str) {
            Some("overview") | None => View::Overview { rg: name("rg")? },
            Some("vmss") => View::Vmss(Res {
                sub: SUBSCRIPTION.into(),
                rg: need("rg")?,
                name: need("name")?,
            }),
            Some("runs") => View::Runs {
                pipeline: name("pipeline")?,
            },
            Some("run") => View::Run(
                need("id")?
                    .parse()
                    .map_err(|_| ApiError::bad_request("InvalidRunId", "`id` must be a run id"))?,
            ),
            Some("images") => View::Images,
            Some(v) => {
                return Err(ApiError::bad_request(
                    "InvalidParameter",
                    format!("unknown view `{}`", truncate(v, MAX_NAME)),
                ))
            }
        })
    }
}

/// Each backend's last request counter reading `(at_ms, requests)`, per stream.
pub type Rates = HashMap<String, (u64, u64)>;

/// The view's data; a failure becomes `{"error": …}` so the page can say it.
pub async fn render(st: &AppState, v: &View, rates: &mut Rates) -> Value {
    let r = match v {
        View::Overview { rg } => overview(st, rg.as_deref()).await,
        View::Vmss(res) => vmss(st, res, rates).await,
        View::Runs { pipeline } => runs(st, pipeline.as_deref()),
        View::Run(id) => run(st, *id),
        View::Images => images(st),
    };
    r.unwrap_or_else(|e| json!({"error": {"message": e.to_string()}}))
}

/// `s` cut to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The last segment of a resource id (`…/images/130` → `130`).
fn last_segment(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn image_of(arm: &Value) -> String {
    arm.pointer("/properties/virtualMachineProfile/storageProfile/imageReference/id")
        .and_then(Value::as_str)
        .map(|id| last_segment(id).to_string())
        .unwrap_or_default()
}

async fn get(st: &AppState, route: Route, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    Ok(handlers::execute(st, route, q, b"").await?.1)
}

async fn overview(st: &AppState, rg: Option<&str>) -> Result<Value, ApiError> {
    let groups = st.cp.list_groups(SUBSCRIPTION)?;
    let names: Vec<String> = groups
        .iter()
        .filter_map(|g| g["name"].as_str().map(str::to_string))
        .collect();
    let Some(rg) = rg.map(str::to_string).or_else(|| names.first().cloned()) else {
        return Ok(json!({"groups": names, "group": null, "resources": []}));
    };
    let mut resources = vec![];
    for (res, doc) in st.cp.list_vmss(SUBSCRIPTION, Some(&rg))? {
        let state = st.cp.vmss_provisioning(&res, &doc)?;
        let rollout = st
            .cp
            .rollout(&res)?
            .map(|d| format!("{:?}", d.state.status));
        let n = st.instances(&res.key(VMSS))?.len();
        resources.push(json!({
            "kind": "Scale set", "name": res.name, "state": state.to_string(),
            "detail": format!("{n} of {} instances · image {} · upgrade {}",
                doc.arm.pointer("/sku/capacity").and_then(Value::as_u64).unwrap_or(0),
                image_of(&doc.arm),
                rollout.unwrap_or_else(|| "none yet".into())),
        }));
    }
    for (res, arm) in st.cp.list_lbs(SUBSCRIPTION, Some(&rg))? {
        resources.push(lb_row(st, &res, &arm).await);
    }
    if let Some(svc) = &st.pipelines {
        for r in svc.list_repos()?.iter().take(MAX_ROWS) {
            let v = crate::pipelines::repo_json(svc, r);
            resources.push(json!({
                "kind": "Repository", "name": r.name, "state": if r.mirror.is_some() { "Mirror" } else { "Hosted" },
                "detail": format!("branches: {}", r.branches.keys().map(|b| b.trim_start_matches("refs/heads/")).collect::<Vec<_>>().join(", ")),
                "url": v["url"],
            }));
        }
        for d in svc.all_definitions().iter().take(MAX_ROWS) {
            let v = crate::pipelines::def_json(svc, d);
            resources.push(json!({
                "kind": "Pipeline", "name": d.name,
                "state": v["lastResult"].as_str().unwrap_or("never run"),
                "detail": format!("{} · {}", d.repo, d.yaml_path), "lastRun": v["lastRun"],
            }));
        }
    }
    for img in st.cp.list_images(&st.images)?.iter().take(MAX_ROWS) {
        resources.push(json!({
            "kind": "Image", "name": img.name,
            "state": if img.warnings.is_empty() { "Succeeded" } else { "Succeeded with warnings" },
            "detail": format!("on {} · {}", img.base, truncate(&img.id, 19)),
        }));
    }
    Ok(json!({"groups": names, "group": rg, "resources": resources}))
}

/// A load balancer's row: its frontends and rules, and its backends' health.
async fn lb_row(st: &AppState, res: &Res, arm: &Value) -> Value {
    let list = |k: &str| {
        arm.pointer(&format!("/properties/{k}"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let frontends: Vec<String> = list("frontendIPConfigurations")
        .iter()
        .map(|f| {
            let ip = f
                .pointer("/properties/privateIPAddress")
                .and_then(Value::as_str)
                .unwrap_or("127.0.0.1");
            format!("{} {ip}", f["name"].as_str().unwrap_or(""))
        })
        .collect();
    let ports: Vec<String> = list("loadBalancingRules")
        .iter()
        .map(|r| {
            let p = |k: &str| {
                r.pointer(&format!("/properties/{k}"))
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            format!(
                "{} :{}→{}",
                r["name"].as_str().unwrap_or(""),
                p("frontendPort"),
                p("backendPort")
            )
        })
        .collect();
    let (state, health) = match st.lb_status(&res.key(LB)).await {
        Ok(s) => {
            let up = s.backends.iter().filter(|b| b.healthy).count();
            (
                "Running".to_string(),
                format!("{up} of {} backends healthy", s.backends.len()),
            )
        }
        Err(_) => ("Not answering".to_string(), String::new()),
    };
    json!({
        "kind": "Load balancer", "name": res.name, "state": state,
        "detail": format!("frontends: {} · rules: {} · {health}", frontends.join(", "), ports.join(", ")),
        "frontends": frontends,
    })
}

/// One row of the instances table from the VM's ARM JSON (with its instance view), its LB
/// counters, its last minute of host metrics and its request rate.
pub fn instance_row(
    vm: &Value,
    requests: Option<u64>,
    rps: Option<f64>,
    usage: Option<[Option<f64>; 4]>,
) -> Value {
    let status = |prefix: &str| {
        vm.pointer("/properties/instanceView/statuses")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .filter_map(|s| s["code"].as_str())
                    .find_map(|c| c.strip_prefix(prefix).map(str::to_string))
            })
    };
    let health = vm
        .pointer("/properties/instanceView/vmHealth/status/code")
        .and_then(Value::as_str)
        .and_then(|c| c.strip_prefix("HealthState/"));
    let u = |m: model::metrics::Metric| usage.and_then(|u| u[m.index()]);
    json!({
        "instanceId": vm["instanceId"],
        "name": vm["name"],
        "ip": vm.pointer("/tags/scaleset.privateIPAddress"),
        "image": vm.pointer("/tags/scaleset.image"),
        "latestModelApplied": vm.pointer("/properties/latestModelApplied"),
        "provisioningState": vm.pointer("/properties/provisioningState"),
        "powerState": status("PowerState/"),
        "health": health,
        "requests": requests,
        "requestsPerSecond": rps.map(|r| (r * 10.0).round() / 10.0),
        "cpuPercent": u(model::metrics::Metric::PercentageCpu).map(|c| (c * 10.0).round() / 10.0),
        "availableMemoryBytes": u(model::metrics::Metric::AvailableMemoryBytes).map(|m| m.round() as u64),
    })
}

async fn vmss(st: &AppState, res: &Res, rates: &mut Rates) -> Result<Value, ApiError> {
    let none = HashMap::new();
    let get_vmss = Route::Resource {
        kind: VMSS,
        method: Method::GET,
        res: res.clone(),
    };
    let arm = get(st, get_vmss, &none).await?;
    let expand = HashMap::from([("$expand".to_string(), "instanceView".to_string())]);
    let vms = get(st, Route::Vms(res.clone()), &expand).await?;
    let rolling = get(st, Route::RollingLatest(res.clone()), &none).await.ok();
    let key = res.key(VMSS);
    let recs = st.instances(&key)?;
    let doc = st
        .vmss_doc(res)?
        .ok_or_else(|| ApiError::not_found("ResourceNotFound", "scale set not found"))?;
    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut lbs = vec![];
    if let Ok((m, _)) = model::vmss::parse(&doc.arm, &doc.name) {
        let mut seen = std::collections::BTreeSet::new();
        for p in &m.backend_pools {
            let lb = Res {
                sub: p.subscription.clone(),
                rg: p.resource_group.clone(),
                name: p.name.clone(),
            };
            if !seen.insert(lb.name.clone()) {
                continue;
            }
            if let Ok(s) = st.lb_status(&lb.key(LB)).await {
                for b in &s.backends {
                    *counters.entry(b.id.clone()).or_default() += b.requests;
                }
                lbs.push(json!({"name": lb.name, "requests": s.totals.requests, "failed": s.totals.failed, "non2xx": s.totals.responses_non_2xx}));
            }
        }
    }
    let now = control::now_ms();
    let mut rows = vec![];
    for vm in vms["value"].as_array().into_iter().flatten().take(MAX_ROWS) {
        let id = vm["instanceId"]
            .as_str()
            .and_then(|i| i.parse::<u32>().ok());
        let rec = recs.iter().find(|r| Some(r.instance_id) == id);
        let requests = rec.and_then(|r| counters.get(&r.machine).copied());
        let rps = rec.zip(requests).and_then(|(r, n)| {
            let rate = super::sse::rate(rates.get(&r.machine).copied(), (now, n));
            rates.insert(r.machine.clone(), (now, n));
            rate
        });
        let usage = vm["name"].as_str().and_then(|n| st.latest_usage(&key, n));
        rows.push(instance_row(vm, requests, rps, usage));
    }
    Ok(json!({
        "vmss": arm,
        "image": image_of(&doc.arm),
        "instances": rows,
        "rolling": rolling,
        "loadBalancers": lbs,
    }))
}

fn svc(st: &AppState) -> Result<&std::sync::Arc<ci::PipelineService>, ApiError> {
    st.pipelines
        .as_ref()
        .ok_or_else(|| ApiError::not_found("PipelinesUnavailable", "pipelines are not enabled"))
}

fn runs(st: &AppState, pipeline: Option<&str>) -> Result<Value, ApiError> {
    let svc = svc(st)?;
    let list: Vec<Value> = svc
        .list_runs(pipeline)?
        .iter()
        .take(MAX_RUNS)
        .map(crate::pipelines::run_json)
        .collect();
    let defs: Vec<Value> = svc
        .all_definitions()
        .iter()
        .take(MAX_ROWS)
        .map(|d| crate::pipelines::def_json(svc, d))
        .collect();
    Ok(json!({"runs": list, "pipelines": defs, "pipeline": pipeline}))
}

fn run(st: &AppState, id: u64) -> Result<Value, ApiError> {
    Ok(json!({"run": crate::pipelines::run_json(&svc(st)?.run(id)?)}))
}

/// An image's lineage, base first: its base (and the base's own chain when the base is another
/// image), its layers, its id.
pub fn lineage(img: &image::Image, all: &[image::Image]) -> Vec<Value> {
    let mut chain = vec![];
    let mut base = img.base.clone();
    for _ in 0..16 {
        let Some(parent) = all.iter().find(|i| i.name == base) else {
            break;
        };
        chain.push(json!({"kind": "image", "name": parent.name}));
        base = parent.base.clone();
    }
    chain.push(json!({"kind": "base", "name": base}));
    chain.reverse();
    for d in img.layer_digests.iter().rev() {
        chain.push(json!({"kind": "layer", "name": d}));
    }
    chain.push(json!({"kind": "build", "name": img.id}));
    chain
}

fn images(st: &AppState) -> Result<Value, ApiError> {
    let all = st.cp.list_images(&st.images)?;
    let mut users: HashMap<String, Vec<String>> = HashMap::new();
    for g in st.cp.list_groups(SUBSCRIPTION)? {
        let Some(rg) = g["name"].as_str() else {
            continue;
        };
        for (res, doc) in st.cp.list_vmss(SUBSCRIPTION, Some(rg))? {
            let mut names: Vec<String> = st
                .instances(&res.key(VMSS))?
                .into_iter()
                .map(|r| r.image)
                .collect();
            names.push(image_of(&doc.arm));
            names.sort();
            names.dedup();
            for n in names {
                users
                    .entry(n)
                    .or_default()
                    .push(format!("{}/{}", res.rg, res.name));
            }
        }
    }
    let rows: Vec<Value> = all
        .iter()
        .take(MAX_ROWS)
        .map(|img| {
            // The release pipeline names its image by the build id: a run of that id made it.
            let made_by = img.name.parse::<u64>().ok().and_then(|id| {
                let r = st.pipelines.as_ref()?.run(id).ok()?;
                let commit = r.resources.first().map(|x| x.commit.clone()).unwrap_or(r.source_version.clone());
                Some(json!({"run": r.id, "pipeline": r.pipeline, "commit": commit,
                    "ciRun": r.resources.first().map(|x| x.run_id)}))
            });
            json!({
                "name": img.name, "id": img.id, "created": img.created, "base": img.base,
                "armId": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/-/providers/{IMAGE}/{}", img.name),
                "lineage": lineage(img, &all), "warnings": img.warnings.len(),
                "usedBy": users.get(&img.name).cloned().unwrap_or_default(),
                "madeBy": made_by,
            })
        })
        .collect();
    Ok(json!({"images": rows}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn views_are_parsed_and_bounded() {
        assert_eq!(View::parse(&q(&[])).unwrap(), View::Overview { rg: None });
        assert_eq!(
            View::parse(&q(&[("view", "vmss"), ("rg", "rg"), ("name", "web")])).unwrap(),
            View::Vmss(Res {
                sub: SUBSCRIPTION.into(),
                rg: "rg".into(),
                name: "web".into()
            })
        );
        assert_eq!(
            View::parse(&q(&[("view", "run"), ("id", "7")])).unwrap(),
            View::Run(7)
        );
        let long = "x".repeat(MAX_NAME + 1);
        for bad in [
            q(&[("view", "vmss"), ("rg", "rg")]),
            q(&[("view", "run"), ("id", "x")]),
            q(&[("view", "nope")]),
            q(&[("view", "overview"), ("rg", &long)]),
            q(&[("view", "overview"), ("rg", "")]),
        ] {
            assert!(View::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_instance_row_takes_the_vms_statuses() {
        let vm = json!({
            "instanceId": "3", "name": "web_3",
            "tags": {"scaleset.privateIPAddress": "10.0.0.5", "scaleset.image": "130"},
            "properties": {"latestModelApplied": false, "provisioningState": "Succeeded",
                "instanceView": {"statuses": [{"code": "ProvisioningState/succeeded"}, {"code": "PowerState/running"}],
                    "vmHealth": {"status": {"code": "HealthState/healthy"}}}},
        });
        let r = instance_row(
            &vm,
            Some(40),
            Some(12.345),
            Some([Some(3.21), Some(1e9), None, None]),
        );
        assert_eq!(
            r,
            json!({
                "instanceId": "3", "name": "web_3", "ip": "10.0.0.5", "image": "130",
                "latestModelApplied": false, "provisioningState": "Succeeded", "powerState": "running",
                "health": "healthy", "requests": 40, "requestsPerSecond": 12.3, "cpuPercent": 3.2,
                "availableMemoryBytes": 1000000000u64,
            })
        );
        let bare = instance_row(&json!({"instanceId": "0"}), None, None, None);
        assert_eq!(bare["powerState"], Value::Null);
        assert_eq!(bare["health"], Value::Null);
    }

    fn img(name: &str, base: &str, layers: &[&str]) -> image::Image {
        image::Image {
            name: name.into(),
            digest: String::new(),
            base: base.into(),
            layers: vec![],
            layer_digests: layers.iter().map(|s| s.to_string()).collect(),
            id: format!("id-{name}"),
            created: String::new(),
            log: Default::default(),
            cache_key: String::new(),
            warnings: vec![],
            bake_ms: None,
        }
    }

    #[test]
    fn lineage_runs_from_the_base_to_the_build() {
        let base = img(
            "app",
            "debian:bookworm",
            &["sha256:a", "debian:bookworm@b1"],
        );
        let top = img(
            "app2",
            "app",
            &["sha256:c", "sha256:a", "debian:bookworm@b1"],
        );
        let all = vec![base.clone(), top.clone()];
        let names: Vec<String> = lineage(&top, &all)
            .iter()
            .map(|v| {
                format!(
                    "{}:{}",
                    v["kind"].as_str().unwrap(),
                    v["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "base:debian:bookworm",
                "image:app",
                "layer:debian:bookworm@b1",
                "layer:sha256:a",
                "layer:sha256:c",
                "build:id-app2",
            ]
        );
        // A cycle of bases ends.
        let a = img("a", "b", &[]);
        let b = img("b", "a", &[]);
        assert!(lineage(&a, &[a.clone(), b]).len() <= 20);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
