//! `scaleset`: the daemon, the az-compatible CLI, the load balancer process and `up`.
mod az;
mod client;
mod cmd;
mod output;
mod progress;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cmd::{
    dashboard, deploy, down, export, group, image, monitor, pipeline, repo, run, serve, up, vmss,
};
use output::Output;

#[derive(Parser)]
#[command(
    name = "scaleset",
    version,
    about = "Push-to-deploy with Azure VM Scale Set semantics on one Linux machine.\n\nState lives in $SCALESET_HOME (default /var/lib/scaleset). The CLI talks to the daemon started by `scaleset serve` or `scaleset up`."
)]
struct Cli {
    /// Output format, as in az.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Json)]
    output: Output,
    /// Where the verbs act: the local daemon, or a real Azure subscription (see README, "Real Azure").
    #[arg(long, global = true, value_enum, env = "SCALESET_PROVIDER", default_value_t = client::Provider::Local)]
    provider: client::Provider,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the daemon and deploy the example (or DIR) through its own pipelines: push it to a hosted repo, run CI and the release (bake, az vmss update), scale to 3 instances behind the load balancer, and show them live. Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Undo `scaleset up`: stop it (if it runs), its instances and load balancer (`up` restarts them); with --purge remove its resources, repositories, images, mounts, network namespaces and the bridge.
    Down(down::DownArgs),
    /// Run the control-plane daemon (API and web dashboard on 127.0.0.1, state in SQLite); prints the dashboard's one-time sign-in URL.
    Serve(serve::ServeArgs),
    /// Manage resource groups.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// Manage virtual machine scale sets.
    #[command(subcommand)]
    Vmss(vmss::VmssCmd),
    /// Manage network resources.
    #[command(subcommand)]
    Network(cmd::lb::NetworkCmd),
    /// Manage machine images.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Azure Monitor: host metrics of scale sets and their instances.
    #[command(subcommand)]
    Monitor(monitor::MonitorCmd),
    /// Hosted git repositories (push over HTTP to trigger pipelines).
    #[command(subcommand)]
    Repo(repo::RepoCmd),
    /// Pipelines from Azure Pipelines YAML in the hosted repositories.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCmd),
    /// Pipeline runs.
    #[command(subcommand)]
    Run(run::RunCmd),
    /// The web dashboard served by the daemon (`url`: a new one-time sign-in link).
    #[command(subcommand)]
    Dashboard(dashboard::DashboardCmd),
    /// Export the local deployment for another platform (`azure`: ARM template + pipelines).
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// Deploy an ARM template (e.g. `export azure`'s) to a resource group on Azure
    /// (--provider azure), following each resource to Succeeded/Failed.
    Deploy(deploy::DeployArgs),
    /// Internal: run one load balancer's data plane (started by the daemon).
    #[command(hide = true)]
    LbServe {
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long)]
        admin: std::path::PathBuf,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCALESET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn main() {
    // Invoked as `az` (the AzureCLI@2 shim is a symlink named az): speak az's dialect.
    let argv: Vec<String> = std::env::args().collect();
    let is_az = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|f| f == "az");
    let cli = if is_az {
        Cli::parse_from(az::az_args(argv))
    } else {
        Cli::parse()
    };
    if !matches!(
        cli.cmd,
        Cmd::Up(_) | Cmd::Down(_) | Cmd::Serve(_) | Cmd::LbServe { .. }
    ) {
        // A short-lived command piped into `head` ends quietly, like other Unix tools, instead
        // of panicking on EPIPE. The daemons keep Rust's default (ignored) for their sockets
        // and pipes.
        // SAFETY: called before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    client::set_provider(cli.provider);
    // The LB data plane confined to one CPU (taskset, cpuset) gets nothing from
    // work stealing; the current-thread scheduler wakes and schedules tasks with
    // fewer atomics.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if matches!(cli.cmd, Cmd::LbServe { .. }) && one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result: Result<()> = rt.block_on(async move {
        match cli.cmd {
            Cmd::Up(a) => {
                init_tracing("warn");
                up::run(a).await
            }
            Cmd::Down(a) => {
                init_tracing("warn");
                down::run(a).await
            }
            Cmd::Serve(a) => {
                init_tracing("info");
                serve::run(a).await
            }
            Cmd::LbServe { config, admin } => {
                init_tracing("info");
                // Each connection is a descriptor or two: let the frontend cap decide.
                api::limits::raise_nofile_limit();
                lb::serve(&config, &admin)
                    .await
                    .map_err(|e| anyhow::anyhow!(api::error::error_chain(&e)))
            }
            Cmd::Group(c) => group::run(c, cli.output).await,
            Cmd::Vmss(c) => vmss::run(c, cli.output).await,
            Cmd::Network(c) => cmd::lb::run(c, cli.output).await,
            Cmd::Image(c) => image::run(c, cli.output).await,
            Cmd::Monitor(c) => monitor::run(c, cli.output).await,
            Cmd::Repo(c) => repo::run(c, cli.output).await,
            Cmd::Pipeline(c) => pipeline::run(c, cli.output).await,
            Cmd::Run(c) => run::run(c, cli.output).await,
            Cmd::Export(c) => export::run(c).await,
            Cmd::Dashboard(c) => dashboard::run(c).await,
            Cmd::Deploy(a) => deploy::run(a, cli.output).await,
        }
    });
    if let Err(e) = result {
        let msg = e
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": ");
        eprintln!("ERROR: {msg}");
        std::process::exit(1);
    }
}
