//! `scaleset serve`: configuration, preflight, and the daemon's lifetime.
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// State directory.
    #[arg(long, env = "SCALESET_HOME", default_value = "/var/lib/scaleset")]
    pub home: PathBuf,
    /// API listen address (loopback).
    #[arg(long, env = "SCALESET_LISTEN", default_value = "127.0.0.1:7150")]
    pub listen: SocketAddr,
    /// Virtual network for instances (default: a free /24 in 10.213.0.0/16, chosen once and kept).
    #[arg(long, env = "SCALESET_SUBNET")]
    pub subnet: Option<String>,
    /// Seconds a client has to send a request's headers (also closes idle keep-alive connections).
    #[arg(long, env = "SCALESET_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request body (ARM, webhook); for a push, the longest pause.
    #[arg(long, env = "SCALESET_BODY_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_timeout_secs: u64,
    /// Open API connections at most; more wait until one closes.
    #[arg(long, env = "SCALESET_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// Largest git push (request body, bytes); a larger push fails and changes nothing.
    #[arg(long, env = "SCALESET_MAX_PUSH_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_push_bytes: u64,
    /// Address ranges load balancer frontends may listen on (privateIPAddress), comma-separated.
    #[arg(long, env = "SCALESET_LB_ALLOWED_ADDRESSES", default_value = api::limits::DEFAULT_LB_ALLOWED)]
    pub lb_allowed_addresses: String,
    /// Open connections per load balancer frontend; more wait until one closes.
    #[arg(long, env = "SCALESET_LB_MAX_CONNECTIONS", default_value_t = lb::config::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub lb_max_connections: u32,
    /// Milliseconds an L7 frontend's client has to send a request's headers.
    #[arg(long, env = "SCALESET_LB_HEADER_TIMEOUT_MS", default_value_t = lb::config::DEFAULT_HEADER_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub lb_header_timeout_ms: u64,
    /// MiB each repository's bake download cache (apt archives, pip wheels) keeps at most;
    /// after a bake the oldest files go.
    #[arg(long, env = "SCALESET_DOWNLOAD_CACHE_MAX_MB", default_value_t = image::cache::DEFAULT_CAP_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    pub download_cache_max_mb: u64,
    /// Seconds a run command (`vmss run-command invoke`) may run before it and everything it
    /// started are killed (Azure: 90 minutes).
    #[arg(long, env = "SCALESET_RUN_COMMAND_TIMEOUT_SECS", default_value_t = 5400, value_parser = clap::value_parser!(u64).range(1..=5400))]
    pub run_command_timeout_secs: u64,
    /// Serve `GET /metrics` (Prometheus) without a token to clients on a loopback address.
    /// Without it a scrape needs the daemon token as a bearer token (`$SCALESET_HOME/token`).
    /// Anyone on this machine, pipeline jobs included, can then read the metrics.
    #[arg(long, env = "SCALESET_METRICS_ANONYMOUS_LOOPBACK")]
    pub metrics_anonymous_loopback: bool,
}

impl ServeArgs {
    fn limits(&self) -> Result<api::limits::Limits> {
        let lb_allowed = api::limits::Cidr::parse_list(&self.lb_allowed_addresses)
            .map_err(|e| anyhow!("invalid --lb-allowed-addresses: {e}"))?;
        Ok(api::limits::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            max_connections: self.max_connections as usize,
            max_push_bytes: self.max_push_bytes,
            lb_allowed,
            lb_frontend: lb::FrontendLimits {
                max_connections: self.lb_max_connections,
                header_timeout_ms: self.lb_header_timeout_ms,
            },
            download_cache_bytes: self.download_cache_max_mb << 20,
            run_command_timeout: Duration::from_secs(self.run_command_timeout_secs),
        })
    }
}

/// Loads or chooses the instance network of `home` (`network.json`: chosen once and kept, so
/// restarts keep instance addresses; `subnet` overrides the saved one). Bakes join it too.
pub fn network(home: &std::path::Path, subnet: Option<&str>) -> Result<runtime::NetworkSpec> {
    std::fs::create_dir_all(home).with_context(|| format!("cannot create {}", home.display()))?;
    let netfile = home.join("network.json");
    let saved: Option<serde_json::Value> = std::fs::read_to_string(&netfile)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    let subnet: runtime::Ipv4Net = match (
        subnet,
        saved
            .as_ref()
            .and_then(|v| v.get("subnet"))
            .and_then(|s| s.as_str()),
    ) {
        (Some(s), _) => s
            .parse()
            .map_err(|e| anyhow!("invalid --subnet '{s}': {e}"))?,
        (None, Some(s)) => s
            .parse()
            .map_err(|e| anyhow!("invalid subnet in {}: {e}", netfile.display()))?,
        (None, None) => {
            let routes =
                runtime::host_routes().map_err(|e| anyhow!(api::error::error_chain(&e)))?;
            runtime::pick_subnet(&routes).ok_or_else(|| {
                anyhow!("no free /24 in 10.213.0.0/16 for the virtual network; pass --subnet")
            })?
        }
    };
    if subnet.prefix_len > 29 || subnet.prefix_len < 16 {
        return Err(anyhow!(
            "--subnet must be between a /16 and a /29, got /{}",
            subnet.prefix_len
        ));
    }
    let bridge = saved
        .as_ref()
        .and_then(|v| v.get("bridge"))
        .and_then(|s| s.as_str())
        .map(str::to_string);
    let network = api::DaemonConfig::network_for(home, subnet, bridge);
    network
        .save(&netfile)
        .with_context(|| format!("cannot write {}", netfile.display()))?;
    Ok(network)
}

/// Loads or chooses the daemon configuration for `home`.
pub fn config(args: &ServeArgs) -> Result<api::DaemonConfig> {
    let network = network(&args.home, args.subnet.as_deref())?;
    let prefix = std::env::var("SCALESET_PREFIX")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "ss".into());
    Ok(api::DaemonConfig {
        home: args.home.clone(),
        listen: args.listen,
        network,
        prefix,
        exe: std::env::current_exe().context("cannot find the scaleset executable")?,
        base_cache: image::default_base_cache(&args.home),
        probe_interval_ms: std::env::var("SCALESET_PROBE_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok()),
        rolling_health_timeout_secs: std::env::var("SCALESET_ROLLING_HEALTH_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(plan::rolling::DEFAULT_HEALTH_TIMEOUT_SECS),
        repair_grace_secs: std::env::var("SCALESET_REPAIR_GRACE_SECS")
            .ok()
            .and_then(|v| v.parse().ok()),
        autoscale_interval_ms: std::env::var("SCALESET_AUTOSCALE_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok()),
        limits: args.limits()?,
        metrics_anonymous_loopback: args.metrics_anonymous_loopback,
    })
}

pub fn preflight() -> Result<()> {
    runtime::preflight().map_err(|e| anyhow!(api::error::error_chain(&e)))
}

pub fn open(cfg: api::DaemonConfig) -> Result<Arc<api::state::AppState>> {
    let machines = runtime::NspawnMachines::new(runtime::RuntimeConfig {
        state_dir: cfg.home.join("machines"),
        prefix: cfg.prefix.clone(),
    })
    .map_err(|e| anyhow!(api::error::error_chain(&e)))?;
    api::open_state(cfg, Arc::new(machines)).map_err(|e| anyhow!(e))
}

pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    preflight()?;
    let st = open(config(&args)?)?;
    // The sign-in link of the web dashboard (one use; `scaleset dashboard url` mints more).
    eprintln!(
        "dashboard: {}",
        api::ui::login_url(&format!("http://{}", args.listen), &st.dashboard.mint())
    );
    // The daemon exits on SIGTERM/SIGINT; machines and load balancers keep serving and are
    // adopted by the next start.
    api::serve(st, shutdown_signal())
        .await
        .map_err(|e| anyhow!(e))
}
