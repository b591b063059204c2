//! `my_app`: Rust port of the seed's three-page Flask sample app.
//!
//! It plays uWSGI's role on a VMSS instance: NGINX proxies to it over a unix
//! socket (`--socket`, default `/run/my_app/my_app.sock`). It can also listen
//! on TCP (`--http ADDR:PORT`), on both at once. SIGTERM/SIGINT stop the
//! listeners and drain in-flight requests before exiting 0.

mod app;

use std::future::IntoFuture;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use axum::serve::ListenerExt;
use clap::Parser;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

const DEFAULT_SOCKET: &str = "/run/my_app/my_app.sock";

#[derive(Debug, Parser)]
#[command(
    name = "my_app",
    version,
    about = "Sample app to demo Azure DevOps for VMSS"
)]
struct Cli {
    /// Unix socket to serve HTTP on (NGINX proxies here). A stale socket
    /// file is removed first; the socket is made mode 0666.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Don't listen on the unix socket (only valid together with --http).
    #[arg(long, requires = "http")]
    no_socket: bool,

    /// Also serve HTTP on this TCP address, e.g. 127.0.0.1:8080 (port 0 picks
    /// a free port; the bound address is printed in the start log line).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("my_app: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> io::Result<()> {
    // Install signal handlers before binding so an early SIGTERM still drains.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let instance = std::env::var("SCALESET_INSTANCE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(hostname);
    let image = std::env::var("SCALESET_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let router = app::router(app::Pages::new(&instance, &image));

    let unix = if cli.no_socket {
        None
    } else {
        Some(bind_unix(&cli.socket)?)
    };
    let tcp = match &cli.http {
        Some(addr) => Some(
            TcpListener::bind(addr.as_str())
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("bind tcp {addr}: {e}")))?,
        ),
        None => None,
    };

    let mut endpoints = Vec::new();
    if unix.is_some() {
        endpoints.push(format!("unix:{}", cli.socket.display()));
    }
    if let Some(tcp) = &tcp {
        endpoints.push(format!("http://{}", tcp.local_addr()?));
    }
    eprintln!(
        "my_app: started pid={} listening on {} instance={instance:?} image={image:?}",
        std::process::id(),
        endpoints.join(" "),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut servers = Vec::new();
    if let Some(listener) = unix {
        let serve =
            axum::serve(listener, router.clone()).with_graceful_shutdown(stopped(stop_rx.clone()));
        servers.push(tokio::spawn(serve.into_future()));
    }
    if let Some(listener) = tcp {
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let serve = axum::serve(listener, router).with_graceful_shutdown(stopped(stop_rx.clone()));
        servers.push(tokio::spawn(serve.into_future()));
    }
    drop(stop_rx);

    let signal_name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    let _ = stop_tx.send(true);

    let mut result = Ok(());
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(io::Error::other(e)),
        }
    }
    if !cli.no_socket {
        let _ = std::fs::remove_file(&cli.socket);
    }
    eprintln!("my_app: stopped on {signal_name} after draining in-flight requests");
    result
}

/// Binds the unix socket, removing a stale socket file first, and makes it
/// connectable by the NGINX worker user (mode 0666).
fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    let ctx = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by another process", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(|e| ctx(e, "remove stale socket"))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ctx(e, "stat")),
    }
    let listener = UnixListener::bind(path).map_err(|e| ctx(e, "bind unix socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| ctx(e, "chmod"))?;
    Ok(listener)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `buf.len()` bytes; gethostname writes
    // at most that many and we stop at the first NUL (or the buffer end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}
