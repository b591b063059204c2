//! `scaleset dashboard url`: a new one-time sign-in URL for the web dashboard (the daemon may
//! outlive the one `serve` or `up` printed; each works once, for an hour).
use anyhow::{anyhow, Result};
use clap::Subcommand;

#[derive(Subcommand, Clone)]
pub enum DashboardCmd {
    /// Print a one-time sign-in URL of the dashboard (valid for one sign-in, within an hour).
    Url,
}

pub async fn run(cmd: DashboardCmd) -> Result<()> {
    match cmd {
        DashboardCmd::Url => {
            let c = super::client()?;
            let v = c.daemon("POST", "/ui/login-url", None).await?;
            let url = v["url"]
                .as_str()
                .ok_or_else(|| anyhow!("the daemon answered without a URL: {v}"))?;
            println!("{url}");
            Ok(())
        }
    }
}
