//! What `GET /metrics` shows: the engine's [`Scrape`] and the pipeline runs as Prometheus
//! families (`prom`), pure.
//!
//! Names: one prefix, `scaleset_`; base units (`_seconds`, `_bytes`); counters end in
//! `_total`. Labels are bounded by what the user created (resource groups, load balancers,
//! rules, scale sets, instances, images in use, pipelines), and status codes come as classes
//! (`code="2xx"`, as HAProxy counts them). States are state-sets (one 0/1 series per state).
//! A backend's counters carry the instance's scale set and VM name, which the engine knows from
//! the instance records, and its image, which the engine gives the load balancer with each
//! backend (a reimaged backend's counters start again, so each series counts for one image).
use crate::prom::{Family, Hist, Kind, Labels};
use engine::{InstanceScrape, Scrape};
use lb::StatusClass;
use std::collections::HashMap;

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub engine: Scrape,
    pub runs: Vec<RunScrape>,
}

/// A completed pipeline run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunScrape {
    pub pipeline: String,
    /// `Succeeded`, `Failed`, `Canceled`, ...
    pub result: String,
    pub duration_secs: f64,
}

/// Buckets of bake and run durations (seconds): 1 s to 1 h.
pub const LONG_BOUNDS: [f64; 11] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// The families, in a stable order.
pub fn families(s: &Snapshot) -> Vec<Family> {
    let mut out = vec![build_info()];
    out.extend(lb_families(&s.engine));
    out.extend(vmss_families(&s.engine));
    out.extend(instance_families(&s.engine));
    out.push(bake_durations(&s.engine));
    out.push(run_durations(&s.runs));
    out
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

fn with(base: &Labels, more: &[(&'static str, &str)]) -> Labels {
    let mut v = base.clone();
    v.extend(more.iter().map(|(k, x)| (*k, (*x).to_owned())));
    v
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn build_info() -> Family {
    let mut f = Family::new(
        "scaleset_build_info",
        Kind::Gauge,
        "The daemon's version (always 1).",
    );
    f.push(l(&[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    f
}

/// Where each load balancer backend (a machine) belongs.
fn backend_owners(s: &Scrape) -> HashMap<&str, (&str, &InstanceScrape)> {
    let mut m = HashMap::new();
    for v in &s.scale_sets {
        for i in &v.instances {
            m.insert(i.machine.as_str(), (v.name.as_str(), i));
        }
    }
    m
}

fn lb_families(s: &Scrape) -> Vec<Family> {
    let mut out = frontend_families(s);
    out.extend(backend_families(s));
    out
}

fn lb_labels(x: &engine::LbScrape) -> Labels {
    l(&[("resource_group", &x.resource_group), ("lb", &x.name)])
}

/// Each load balancer's reachability and its frontends' counters.
fn frontend_families(s: &Scrape) -> Vec<Family> {
    use Kind::*;
    let mut up = Family::new(
        "scaleset_lb_up",
        Gauge,
        "Whether the load balancer's process answered on its admin socket.",
    );
    let mut conns = Family::new(
        "scaleset_lb_frontend_connections_total",
        Counter,
        "Client connections (L7) or flows (L4) a frontend accepted.",
    );
    let mut open = Family::new(
        "scaleset_lb_frontend_open_connections",
        Gauge,
        "Client connections (L7) or flows (L4) open on a frontend.",
    );
    let mut reqs = Family::new(
        "scaleset_lb_requests_total",
        Counter,
        "HTTP responses a frontend sent to clients, its own 502 and 503 included, by status class.",
    );
    let mut dur = Family::new(
        "scaleset_lb_request_duration_seconds",
        Histogram,
        "Time from a request's head to the end of its response (body sent), per frontend.",
    );
    let mut retries = Family::new(
        "scaleset_lb_retries_total",
        Counter,
        "Tries after a failed try (another backend), per frontend.",
    );
    let mut failed = Family::new(
        "scaleset_lb_failed_requests_total",
        Counter,
        "Requests (L7) or flows (L4) the load balancer could not serve: no_backend (503, reset) or tries_exhausted (502, reset).",
    );
    for x in &s.lbs {
        let base = lb_labels(x);
        up.push(base.clone(), flag(x.status.is_some()));
        let Some(st) = &x.status else { continue };
        for f in &st.frontends {
            let addr = f.frontend.to_string();
            let fl = with(&base, &[("rule", &f.rule), ("frontend", &addr)]);
            conns.push(fl.clone(), f.connections as f64);
            open.push(fl.clone(), f.open_connections as f64);
            retries.push(fl.clone(), f.retries as f64);
            failed.push(with(&fl, &[("reason", "no_backend")]), f.no_backend as f64);
            let exhausted = f.tries_exhausted as f64;
            failed.push(with(&fl, &[("reason", "tries_exhausted")]), exhausted);
            if f.layer != lb::Layer::L7 {
                continue;
            }
            for c in StatusClass::ALL {
                let n = f.responses[c as usize] as f64;
                reqs.push(with(&fl, &[("code", c.label())]), n);
            }
            dur.push_histogram(fl, latency(&f.latency));
        }
    }
    vec![up, conns, open, reqs, dur, retries, failed]
}

/// Each backend's counters and state, labelled with the instance it is.
fn backend_families(s: &Scrape) -> Vec<Family> {
    use Kind::*;
    let mut b_resp = Family::new(
        "scaleset_lb_backend_responses_total",
        Counter,
        "HTTP responses a backend instance sent, by status class.",
    );
    let mut b_tries = Family::new(
        "scaleset_lb_backend_tries_total",
        Counter,
        "Requests (L7) and flows (L4) sent to a backend instance, failed tries included.",
    );
    let mut b_err = Family::new(
        "scaleset_lb_backend_errors_total",
        Counter,
        "Failed tries against a backend instance: connect (refused, unreachable), connect_timeout, exchange (the connection broke).",
    );
    let mut b_active = Family::new(
        "scaleset_lb_backend_active_requests",
        Gauge,
        "Requests (L7) and flows (L4) in progress on a backend instance.",
    );
    let mut b_up = Family::new(
        "scaleset_lb_backend_up",
        Gauge,
        "Whether a backend instance passes every probe of the load balancer's rules.",
    );
    let mut b_drain = Family::new(
        "scaleset_lb_backend_draining",
        Gauge,
        "Whether a backend instance is out of rotation, finishing what it has.",
    );
    let mut b_suspect = Family::new(
        "scaleset_lb_backend_suspect",
        Gauge,
        "Whether a connect to a backend instance failed since its last successful probe (new requests prefer the others).",
    );
    let owners = backend_owners(s);
    for x in &s.lbs {
        let base = lb_labels(x);
        let Some(st) = &x.status else { continue };
        for b in &st.backends {
            let (vmss, vm, record_image) = match owners.get(b.id.as_str()) {
                Some((vmss, i)) => (*vmss, i.vm.as_str(), i.image.as_str()),
                None => ("", b.id.as_str(), ""),
            };
            // The LB's own label is the one its counters go with (an LB process of an older
            // version has none: the record's then).
            let image = b.image.as_deref().unwrap_or(record_image);
            let bl = with(&base, &[("vmss", vmss), ("vm", vm), ("image", image)]);
            for c in StatusClass::ALL {
                let n = b.responses[c as usize] as f64;
                b_resp.push(with(&bl, &[("code", c.label())]), n);
            }
            b_tries.push(bl.clone(), b.requests as f64);
            for (kind, n) in [
                ("connect", b.connect_errors),
                ("connect_timeout", b.connect_timeouts),
                ("exchange", b.exchange_errors),
            ] {
                b_err.push(with(&bl, &[("kind", kind)]), n as f64);
            }
            b_active.push(bl.clone(), b.active_connections as f64);
            b_up.push(bl.clone(), flag(b.healthy));
            b_drain.push(bl.clone(), flag(b.draining));
            b_suspect.push(bl, flag(b.suspect));
        }
    }
    vec![b_resp, b_tries, b_err, b_active, b_up, b_drain, b_suspect]
}

fn latency(h: &lb::Histogram) -> Hist {
    let bounds: Vec<f64> = lb::LATENCY_BOUNDS_NS
        .iter()
        .map(|b| *b as f64 / 1e9)
        .collect();
    let mut counts = h.buckets.clone();
    // An LB of another version may report other buckets: only these bounds are known.
    counts.resize(bounds.len() + 1, 0);
    Hist {
        bounds,
        counts,
        sum: h.sum_ns as f64 / 1e9,
    }
}

fn vmss_families(s: &Scrape) -> Vec<Family> {
    use Kind::*;
    let mut cap = Family::new(
        "scaleset_vmss_capacity",
        Gauge,
        "A scale set's capacity (sku.capacity).",
    );
    let mut insts = Family::new(
        "scaleset_vmss_instances",
        Gauge,
        "Instances a scale set has (any state).",
    );
    let mut model = Family::new(
        "scaleset_vmss_model_version",
        Gauge,
        "A scale set's model version (bumped by each model change).",
    );
    let mut status = Family::new(
        "scaleset_rollout_status",
        Gauge,
        "A scale set's latest rolling upgrade, one series per Azure runningStatus code (1: current).",
    );
    let mut phase = Family::new(
        "scaleset_rollout_phase",
        Gauge,
        "The latest rolling upgrade's phase, one series per phase (1: current).",
    );
    let mut progress = Family::new(
        "scaleset_rollout_instances",
        Gauge,
        "The latest rolling upgrade's progress: instances successful, failed, in_progress, pending.",
    );
    let mut target = Family::new(
        "scaleset_rollout_target_model_version",
        Gauge,
        "The model version the latest rolling upgrade moves to.",
    );
    let mut started = Family::new(
        "scaleset_rollout_start_time_seconds",
        Gauge,
        "When the latest rolling upgrade started (Unix time).",
    );
    let mut repairs = Family::new(
        "scaleset_repairs_state",
        Gauge,
        "Automatic repairs service state, one series per state (1: current); only where enabled.",
    );
    let mut repair_failures = Family::new(
        "scaleset_repairs_consecutive_failures",
        Gauge,
        "Failed automatic repairs since the last one that worked.",
    );
    use plan::repairs::ServiceState;
    use plan::rolling::{Phase, RunningStatus};
    for v in &s.scale_sets {
        let base = l(&[("resource_group", &v.resource_group), ("vmss", &v.name)]);
        cap.push(base.clone(), f64::from(v.capacity));
        insts.push(base.clone(), v.instances.len() as f64);
        model.push(base.clone(), v.model_version as f64);
        if let Some(r) = &v.rollout {
            for c in [
                RunningStatus::RollingForward,
                RunningStatus::Cancelled,
                RunningStatus::Completed,
                RunningStatus::Faulted,
            ] {
                let name = format!("{c:?}");
                status.push(with(&base, &[("status", &name)]), flag(r.status == c));
            }
            for p in [
                Phase::Select,
                Phase::Surging,
                Phase::Upgrading,
                Phase::Removing,
                Phase::RollingBack,
                Phase::Done,
            ] {
                let name = format!("{p:?}");
                phase.push(with(&base, &[("phase", &name)]), flag(r.phase == p));
            }
            let p = r.progress;
            for (k, n) in [
                ("successful", p.successful),
                ("failed", p.failed),
                ("in_progress", p.in_progress),
                ("pending", p.pending),
            ] {
                progress.push(with(&base, &[("progress", k)]), f64::from(n));
            }
            target.push(base.clone(), r.target_version as f64);
            started.push(base.clone(), r.start_time as f64);
        }
        if let Some(r) = &v.repairs {
            for st in [ServiceState::Running, ServiceState::Suspended] {
                let name = format!("{st:?}");
                repairs.push(
                    with(&base, &[("state", &name)]),
                    flag(r.service_state == st),
                );
            }
            repair_failures.push(base.clone(), f64::from(r.consecutive_failures));
        }
    }
    vec![
        cap,
        insts,
        model,
        status,
        phase,
        progress,
        target,
        started,
        repairs,
        repair_failures,
    ]
}

fn instance_families(s: &Scrape) -> Vec<Family> {
    use Kind::*;
    let mut info = Family::new(
        "scaleset_instance_info",
        Gauge,
        "An instance's image and model version (always 1).",
    );
    let mut health = Family::new(
        "scaleset_instance_health",
        Gauge,
        "An instance's health (Application Health extension, else the load balancer probe), one series per state (1: current).",
    );
    let mut cpu = Family::new(
        "scaleset_instance_cpu_seconds_total",
        Counter,
        "CPU time an instance's cgroup used (resets when its machine is recreated).",
    );
    let mut mem = Family::new(
        "scaleset_instance_memory_used_bytes",
        Gauge,
        "Memory an instance's cgroup uses.",
    );
    let mut mem_max = Family::new(
        "scaleset_instance_memory_limit_bytes",
        Gauge,
        "Memory an instance's cgroup may use (its VM size's).",
    );
    let mut rx = Family::new(
        "scaleset_instance_network_receive_bytes_total",
        Counter,
        "Bytes an instance received (its veth).",
    );
    let mut tx = Family::new(
        "scaleset_instance_network_transmit_bytes_total",
        Counter,
        "Bytes an instance sent (its veth).",
    );
    use plan::repairs::Health;
    for v in &s.scale_sets {
        for i in &v.instances {
            let base = l(&[
                ("resource_group", &v.resource_group),
                ("vmss", &v.name),
                ("vm", &i.vm),
            ]);
            let version = i.model_version.to_string();
            info.push(
                with(&base, &[("image", &i.image), ("model_version", &version)]),
                1.0,
            );
            let current = i.health.unwrap_or(Health::Unknown);
            for h in [
                Health::Healthy,
                Health::Unhealthy,
                Health::Initializing,
                Health::Unknown,
            ] {
                let name = format!("{h:?}");
                health.push(with(&base, &[("state", &name)]), flag(current == h));
            }
            let Some(u) = &i.usage else { continue };
            let gauges = [
                (&mut cpu, u.cpu_ns.map(|ns| ns as f64 / 1e9)),
                (&mut mem, u.memory_used.map(|b| b as f64)),
                (&mut mem_max, u.memory_limit.map(|b| b as f64)),
                (&mut rx, u.net_in.map(|b| b as f64)),
                (&mut tx, u.net_out.map(|b| b as f64)),
            ];
            for (f, v) in gauges {
                if let Some(v) = v {
                    f.push(base.clone(), v);
                }
            }
        }
    }
    vec![info, health, cpu, mem, mem_max, rx, tx]
}

fn bake_durations(s: &Scrape) -> Family {
    let mut f = Family::new(
        "scaleset_image_bake_duration_seconds",
        Kind::Histogram,
        "How long the bakes of the images in the store took (cache hits: the lookup).",
    );
    let values = s
        .images
        .iter()
        .filter_map(|i| i.bake_ms)
        .map(|ms| ms as f64 / 1000.0);
    f.push_histogram(vec![], Hist::of(&LONG_BOUNDS, values));
    f
}

fn run_durations(runs: &[RunScrape]) -> Family {
    let mut f = Family::new(
        "scaleset_pipeline_run_duration_seconds",
        Kind::Histogram,
        "How long completed pipeline runs took, from start to finish, by pipeline and result.",
    );
    let mut groups: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    for r in runs {
        groups
            .entry((&r.pipeline, &r.result))
            .or_default()
            .push(r.duration_secs);
    }
    for ((pipeline, result), v) in groups {
        let labels = l(&[("pipeline", pipeline), ("result", result)]);
        f.push_histogram(labels, Hist::of(&LONG_BOUNDS, v));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{LbScrape, VmssScrape};

    fn snapshot() -> Snapshot {
        let mut f = lb::FrontendStatus {
            rule: "http".into(),
            frontend: "127.0.0.1:8080".parse().unwrap(),
            layer: lb::Layer::L7,
            connections: 3,
            open_connections: 1,
            responses: [0, 137, 0, 2, 1, 0],
            retries: 1,
            no_backend: 0,
            tries_exhausted: 0,
            latency: lb::Histogram {
                buckets: vec![0; lb::LATENCY_BOUNDS_NS.len() + 1],
                sum_ns: 1_500_000_000,
            },
        };
        f.latency.buckets[0] = 140;
        let backend = |id: &str, n: u64| lb::BackendStatus {
            id: id.into(),
            ip: "10.0.0.4".parse().unwrap(),
            image: None,
            healthy: true,
            draining: false,
            suspect: false,
            active_connections: 0,
            requests: n,
            failures: 0,
            responses: [0, n, 0, 0, 0, 0],
            connect_errors: 0,
            connect_timeouts: 0,
            exchange_errors: 0,
        };
        let inst = |vm: &str, machine: &str| engine::InstanceScrape {
            vm: vm.into(),
            machine: machine.into(),
            image: "my_app-7".into(),
            model_version: 2,
            health: Some(plan::repairs::Health::Healthy),
            usage: None,
        };
        Snapshot {
            engine: Scrape {
                lbs: vec![LbScrape {
                    resource_group: "rg".into(),
                    name: "web-lb".into(),
                    status: Some(lb::LbStatus {
                        name: "web-lb".into(),
                        backends: vec![backend("m0", 100), backend("stray", 37)],
                        totals: Default::default(),
                        frontends: vec![f],
                    }),
                }],
                scale_sets: vec![VmssScrape {
                    resource_group: "rg".into(),
                    name: "web".into(),
                    capacity: 1,
                    model_version: 2,
                    instances: vec![inst("web_0", "m0")],
                    rollout: None,
                    repairs: None,
                }],
                images: vec![],
            },
            runs: vec![RunScrape {
                pipeline: "ci".into(),
                result: "Succeeded".into(),
                duration_secs: 42.0,
            }],
        }
    }

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn backends_carry_their_instance_and_image() {
        let text = crate::prom::render(&families(&snapshot()));
        let b = "scaleset_lb_backend_responses_total{";
        assert_eq!(
            lines(&text, b)
                .into_iter()
                .filter(|l| l.contains("code=\"2xx\""))
                .collect::<Vec<_>>(),
            [
                "scaleset_lb_backend_responses_total{resource_group=\"rg\",lb=\"web-lb\",vmss=\"web\",vm=\"web_0\",image=\"my_app-7\",code=\"2xx\"} 100",
                // A backend no instance record names keeps its id and no image.
                "scaleset_lb_backend_responses_total{resource_group=\"rg\",lb=\"web-lb\",vmss=\"\",vm=\"stray\",image=\"\",code=\"2xx\"} 37",
            ]
        );
        let fl = "resource_group=\"rg\",lb=\"web-lb\",rule=\"http\",frontend=\"127.0.0.1:8080\"";
        assert!(text.contains(&format!(
            "scaleset_lb_requests_total{{{fl},code=\"2xx\"}} 137\n"
        )));
        assert!(text.contains(&format!(
            "scaleset_lb_request_duration_seconds_bucket{{{fl},le=\"+Inf\"}} 140\n"
        )));
        assert!(text.contains(&format!(
            "scaleset_lb_request_duration_seconds_sum{{{fl}}} 1.5\n"
        )));
        assert!(text.contains("scaleset_instance_health{resource_group=\"rg\",vmss=\"web\",vm=\"web_0\",state=\"Healthy\"} 1\n"));
        assert!(text.contains("scaleset_pipeline_run_duration_seconds_bucket{pipeline=\"ci\",result=\"Succeeded\",le=\"60\"} 1\n"));
        // Every family's HELP and TYPE come once, and every name has the prefix.
        let types = lines(&text, "# TYPE ");
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(lines(&text, "# HELP ").len(), n);
        assert!(names.iter().all(|n| n.starts_with("scaleset_")));
    }

    #[test]
    fn l4_frontends_have_no_http_series() {
        let mut s = snapshot();
        if let Some(st) = &mut s.engine.lbs[0].status {
            st.frontends[0].layer = lb::Layer::L4;
        }
        let text = crate::prom::render(&families(&s));
        assert!(lines(&text, "scaleset_lb_requests_total{").is_empty());
        assert!(lines(&text, "scaleset_lb_request_duration_seconds_bucket{").is_empty());
        assert_eq!(
            lines(&text, "scaleset_lb_frontend_connections_total{").len(),
            1
        );
    }
}
