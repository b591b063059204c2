//! Load balancer configuration (the document `PUT /config` accepts and that is
//! persisted to the config file). JSON is camelCase; enum values are the Azure
//! spellings (`"L4"`, `"SourceIP"`, `"Tcp"`, `"AllProbedDown"`, ...).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::LbError;

/// Azure's minimum probe interval in seconds.
pub const MIN_PROBE_INTERVAL_SECS: u32 = 5;
/// Azure's maximum probe interval in seconds.
pub const MAX_PROBE_INTERVAL_SECS: u32 = 2_147_483_646;

/// Whole configuration of one load balancer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LbConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub no_healthy_backends_behavior: NoHealthyBackendsBehavior,
    /// Per-frontend limits against clients that hold connections (slowloris).
    #[serde(default)]
    pub frontend_limits: FrontendLimits,
}

/// Default open connections per frontend (L7 client connections or L4 flows).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default time for a request head on an L7 frontend.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;

/// Limits of every frontend of one load balancer. Not Azure's (a Standard LB has no such
/// knobs): the daemon sets them from `scaleset serve`'s flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendLimits {
    /// Open connections per frontend; further ones wait in the listen backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// L7: a connection must deliver a complete request head within this time of its first
    /// byte (or of being accepted); idle keep-alive connections get the rule's idle timeout.
    #[serde(default = "default_header_timeout_ms")]
    pub header_timeout_ms: u64,
}

fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}
fn default_header_timeout_ms() -> u64 {
    DEFAULT_HEADER_TIMEOUT_MS
}

impl Default for FrontendLimits {
    fn default() -> Self {
        FrontendLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
        }
    }
}

impl FrontendLimits {
    pub fn header_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_timeout_ms)
    }
}

/// What to do with a new flow when no backend of a rule is healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum NoHealthyBackendsBehavior {
    /// Refuse new flows (L4: RST; L7: 503).
    #[default]
    AllProbedDown,
    /// Treat every (non-draining) backend as healthy.
    AllProbedUp,
}

/// Load-balancing rule: one frontend socket mapped onto the backend pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub name: String,
    pub frontend: SocketAddr,
    pub backend_port: u16,
    #[serde(default)]
    pub layer: Layer,
    #[serde(default)]
    pub load_distribution: LoadDistribution,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_in_minutes: u32,
    #[serde(default)]
    pub enable_tcp_reset: bool,
    #[serde(default)]
    pub probe: Option<String>,
}

fn default_idle_timeout() -> u32 {
    4
}

/// Proxy layer of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Layer {
    /// TCP pass-through (Azure Standard LB semantics).
    #[default]
    L4,
    /// HTTP/1.1 reverse proxy with per-request balancing and retries.
    L7,
}

/// Azure `loadDistribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LoadDistribution {
    /// 5-tuple hash (L4) / per-request rotation (L7).
    #[default]
    Default,
    /// Client IP affinity (2-tuple).
    #[serde(rename = "SourceIP")]
    SourceIp,
    /// Client IP + protocol affinity (3-tuple).
    #[serde(rename = "SourceIPProtocol")]
    SourceIpProtocol,
}

/// Health probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub name: String,
    pub protocol: ProbeProtocol,
    pub port: u16,
    #[serde(default)]
    pub request_path: Option<String>,
    #[serde(default = "default_interval")]
    pub interval_in_seconds: u32,
    #[serde(default = "default_threshold")]
    pub probe_threshold: u32,
    /// INTERNAL (tests only): overrides `interval_in_seconds` with a
    /// millisecond interval and bypasses Azure's 5 s minimum. Not part of the
    /// Azure model; the control plane must leave it unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

fn default_interval() -> u32 {
    5
}
fn default_threshold() -> u32 {
    2
}

impl Probe {
    /// Effective probe interval.
    pub fn interval(&self) -> std::time::Duration {
        match self.interval_ms {
            Some(ms) => std::time::Duration::from_millis(ms.max(1)),
            None => std::time::Duration::from_secs(u64::from(self.interval_in_seconds.max(1))),
        }
    }

    /// Probe timeout: min(interval, 30 s).
    pub fn timeout(&self) -> std::time::Duration {
        self.interval().min(std::time::Duration::from_secs(30))
    }
}

/// Probe protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeProtocol {
    /// Healthy when a TCP connect succeeds.
    Tcp,
    /// Healthy when `GET requestPath` answers 200.
    Http,
}

/// Backend pool member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub id: String,
    pub ip: IpAddr,
    #[serde(default)]
    pub draining: bool,
    /// The image the instance runs (the daemon's label for metrics). A backend whose image
    /// changes is a new backend: its counters start again, so they count for one image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Longest backend image label accepted.
pub const MAX_IMAGE_LABEL: usize = 256;

impl LbConfig {
    /// Parses and validates a JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<LbConfig, LbError> {
        let cfg: LbConfig = serde_json::from_slice(bytes).map_err(LbError::ConfigJson)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Validates the configuration against Azure's rules.
    pub fn validate(&self) -> Result<(), LbError> {
        let bad = |m: String| Err(LbError::InvalidConfig(m));
        let fl = &self.frontend_limits;
        if !(1..=1_000_000).contains(&fl.max_connections) {
            return bad("frontendLimits.maxConnections must be 1..=1000000".into());
        }
        if !(100..=3_600_000).contains(&fl.header_timeout_ms) {
            return bad("frontendLimits.headerTimeoutMs must be 100..=3600000".into());
        }
        let mut probe_names = HashSet::new();
        for p in &self.probes {
            if p.name.is_empty() {
                return bad("probe name must not be empty".into());
            }
            if !probe_names.insert(p.name.as_str()) {
                return bad(format!("duplicate probe name {:?}", p.name));
            }
            if p.port == 0 {
                return bad(format!("probe {:?}: port must be 1..=65535", p.name));
            }
            if p.probe_threshold == 0 {
                return bad(format!("probe {:?}: probeThreshold must be >= 1", p.name));
            }
            match p.interval_ms {
                Some(0) => return bad(format!("probe {:?}: intervalMs must be >= 1", p.name)),
                Some(_) => {}
                None => {
                    if !(MIN_PROBE_INTERVAL_SECS..=MAX_PROBE_INTERVAL_SECS)
                        .contains(&p.interval_in_seconds)
                    {
                        return bad(format!(
                            "probe {:?}: intervalInSeconds must be {MIN_PROBE_INTERVAL_SECS}..={MAX_PROBE_INTERVAL_SECS}",
                            p.name
                        ));
                    }
                }
            }
            match (p.protocol, &p.request_path) {
                (ProbeProtocol::Http, None) => {
                    return bad(format!("probe {:?}: Http probe needs requestPath", p.name))
                }
                (ProbeProtocol::Http, Some(path)) if !path.starts_with('/') => {
                    return bad(format!(
                        "probe {:?}: requestPath must start with '/'",
                        p.name
                    ))
                }
                (ProbeProtocol::Http, Some(path))
                    if path.parse::<hyper::Uri>().is_err() || path.contains(' ') =>
                {
                    return bad(format!(
                        "probe {:?}: requestPath is not a valid path",
                        p.name
                    ))
                }
                (ProbeProtocol::Tcp, Some(_)) => {
                    return bad(format!(
                        "probe {:?}: Tcp probe takes no requestPath",
                        p.name
                    ))
                }
                _ => {}
            }
        }
        let mut rule_names = HashSet::new();
        let mut frontends = HashSet::new();
        for r in &self.rules {
            if r.name.is_empty() {
                return bad("rule name must not be empty".into());
            }
            if !rule_names.insert(r.name.as_str()) {
                return bad(format!("duplicate rule name {:?}", r.name));
            }
            if r.frontend.port() == 0 {
                return bad(format!(
                    "rule {:?}: frontend port must be 1..=65535",
                    r.name
                ));
            }
            if !frontends.insert(r.frontend) {
                return bad(format!(
                    "rule {:?}: frontend {} is used by another rule",
                    r.name, r.frontend
                ));
            }
            if r.backend_port == 0 {
                return bad(format!("rule {:?}: backendPort must be 1..=65535", r.name));
            }
            if !(4..=30).contains(&r.idle_timeout_in_minutes) {
                return bad(format!(
                    "rule {:?}: idleTimeoutInMinutes must be 4..=30",
                    r.name
                ));
            }
            if let Some(p) = &r.probe {
                if !probe_names.contains(p.as_str()) {
                    return bad(format!("rule {:?}: unknown probe {:?}", r.name, p));
                }
            }
        }
        let mut ids = HashSet::new();
        for b in &self.backends {
            if b.id.is_empty() {
                return bad("backend id must not be empty".into());
            }
            if !ids.insert(b.id.as_str()) {
                return bad(format!("duplicate backend id {:?}", b.id));
            }
            if b.image.as_ref().is_some_and(|i| i.len() > MAX_IMAGE_LABEL) {
                return bad(format!(
                    "backend {:?}: image longer than {MAX_IMAGE_LABEL} bytes",
                    b.id
                ));
            }
            if b.ip.is_unspecified() || b.ip.is_multicast() {
                return bad(format!(
                    "backend {:?}: ip {} is not a unicast address",
                    b.id, b.ip
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> LbConfig {
        LbConfig::from_json(
            br#"{
            "name": "lb1",
            "rules": [{"name": "http", "frontend": "127.0.0.1:8080", "backendPort": 80,
                       "layer": "L7", "loadDistribution": "SourceIP", "probe": "hp"}],
            "probes": [{"name": "hp", "protocol": "Http", "port": 80, "requestPath": "/health",
                        "intervalInSeconds": 5, "probeThreshold": 2}],
            "backends": [{"id": "vmss_0", "ip": "10.0.0.4"}, {"id": "vmss_1", "ip": "10.0.0.5", "draining": true}]
        }"#,
        )
        .expect("valid")
    }

    #[test]
    fn parses_with_defaults() {
        let c = base();
        assert_eq!(c.rules[0].idle_timeout_in_minutes, 4);
        assert!(!c.rules[0].enable_tcp_reset);
        assert_eq!(c.rules[0].load_distribution, LoadDistribution::SourceIp);
        assert_eq!(
            c.no_healthy_backends_behavior,
            NoHealthyBackendsBehavior::AllProbedDown
        );
        assert!(c.backends[1].draining);
        let back = LbConfig::from_json(serde_json::to_string(&c).unwrap().as_bytes()).unwrap();
        assert_eq!(back, c);
        assert!(!serde_json::to_string(&c).unwrap().contains("intervalMs"));
        assert_eq!(LbConfig::from_json(b"{}").unwrap(), LbConfig::default());
    }

    #[test]
    fn validation_table() {
        type Mutate = fn(&mut LbConfig);
        let cases: &[(&str, Mutate)] = &[
            ("backendPort", |c| c.rules[0].backend_port = 0),
            ("frontend port", |c| c.rules[0].frontend.set_port(0)),
            ("probe \"hp\": port", |c| c.probes[0].port = 0),
            ("probeThreshold", |c| c.probes[0].probe_threshold = 0),
            ("intervalInSeconds", |c| c.probes[0].interval_in_seconds = 4),
            ("intervalInSeconds", |c| c.probes[0].interval_in_seconds = 0),
            ("intervalMs", |c| c.probes[0].interval_ms = Some(0)),
            ("idleTimeoutInMinutes", |c| {
                c.rules[0].idle_timeout_in_minutes = 3
            }),
            ("idleTimeoutInMinutes", |c| {
                c.rules[0].idle_timeout_in_minutes = 31
            }),
            ("unknown probe", |c| c.rules[0].probe = Some("nope".into())),
            ("duplicate rule name", |c| {
                let mut r = c.rules[0].clone();
                r.frontend.set_port(9999);
                c.rules.push(r)
            }),
            ("used by another rule", |c| {
                let mut r = c.rules[0].clone();
                r.name = "other".into();
                c.rules.push(r)
            }),
            ("duplicate probe name", |c| {
                c.probes.push(c.probes[0].clone())
            }),
            ("duplicate backend id", |c| {
                c.backends[1].id = "vmss_0".into()
            }),
            ("needs requestPath", |c| c.probes[0].request_path = None),
            ("start with '/'", |c| {
                c.probes[0].request_path = Some("health".into())
            }),
            ("no requestPath", |c| {
                c.probes[0].protocol = ProbeProtocol::Tcp
            }),
            ("unicast", |c| c.backends[0].ip = "0.0.0.0".parse().unwrap()),
            ("name must not be empty", |c| c.rules[0].name.clear()),
            ("maxConnections", |c| c.frontend_limits.max_connections = 0),
            ("headerTimeoutMs", |c| {
                c.frontend_limits.header_timeout_ms = 99
            }),
        ];
        for (want, mutate) in cases {
            let mut c = base();
            mutate(&mut c);
            let err = c.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // Boundaries that are valid.
        let mut c = base();
        c.rules[0].idle_timeout_in_minutes = 30;
        c.probes[0].interval_in_seconds = MAX_PROBE_INTERVAL_SECS;
        c.validate().unwrap();
        c.probes[0].interval_in_seconds = 1;
        c.probes[0].interval_ms = Some(50);
        c.validate().unwrap();
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for doc in [
            &b"nope"[..],
            b"{\"rules\": 3}",
            b"{\"backends\":[{\"id\":\"a\",\"ip\":\"x\"}]}",
            b"",
        ] {
            assert!(matches!(
                LbConfig::from_json(doc),
                Err(LbError::ConfigJson(_))
            ));
        }
    }
}
