//! Error type of the load balancer.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the LB library.
///
/// Messages describe what we were doing; the underlying cause is exposed via
/// `source()` and is never repeated in the message itself.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The configuration failed validation.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The configuration could not be parsed as JSON.
    #[error("malformed config JSON")]
    ConfigJson(#[source] serde_json::Error),
    /// Reading or writing the persisted config file failed.
    #[error("config file {path}")]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Binding a frontend listener failed.
    #[error("binding frontend {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Binding or connecting the admin unix socket failed.
    #[error("admin socket {path}")]
    AdminSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// HTTP-level failure talking to the admin API.
    #[error("admin HTTP exchange")]
    AdminHttp(#[source] hyper::Error),
    /// The admin API answered with an error.
    #[error("admin API error {status} {code}: {message}")]
    AdminApi {
        status: u16,
        code: String,
        message: String,
    },
    /// The admin API answered something we could not decode.
    #[error("decoding admin API response")]
    AdminDecode(#[source] serde_json::Error),
    /// Installing the signal handler failed.
    #[error("installing signal handler")]
    Signal(#[source] std::io::Error),
}

impl LbError {
    /// Stable machine-readable code used in admin API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            LbError::InvalidConfig(_) => "InvalidConfig",
            LbError::ConfigJson(_) => "MalformedJson",
            LbError::ConfigFile { .. } => "ConfigPersistFailed",
            LbError::Bind { .. } => "FrontendBindFailed",
            LbError::AdminSocket { .. } => "AdminSocket",
            LbError::AdminHttp(_) => "AdminHttp",
            LbError::AdminApi { .. } => "AdminApi",
            LbError::AdminDecode(_) => "AdminDecode",
            LbError::Signal(_) => "Signal",
        }
    }

    /// Full message including the source chain (for logs and API bodies).
    pub fn full_message(&self) -> String {
        let mut s = self.to_string();
        let mut cur = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}
