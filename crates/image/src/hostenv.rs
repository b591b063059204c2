//! What a networked bake borrows from the host so that it reaches the network the way the host
//! does: the host's CA bundle (corporate networks inspect HTTPS with a CA only the host trusts)
//! and its proxy settings. Pure: the caller passes the host's environment and a file test.
//!
//! The bundle is copied to [`GUEST_CA`] under `/deployTemp`, which deprovisioning removes, and
//! the variables are set for the script only, so neither is captured into the layer. A
//! `BakeSpec { host_network: false, .. }` bake gets neither.

use std::path::{Path, PathBuf};

/// Where the host's CA bundle appears inside the bake.
pub const GUEST_CA: &str = "/deployTemp/.scaleset-host/ca-certificates.crt";

/// Variables that name a CA bundle, for the tools a setup script typically runs (OpenSSL and
/// Python's ssl, requests, pip, curl, git, Node, npm, cargo).
const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
    "NPM_CONFIG_CAFILE",
    "CARGO_HTTP_CAINFO",
];

/// Proxy and package-index settings passed through as the host has them.
const PASSED: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_PROXY",
    "npm_config_proxy",
    "npm_config_https_proxy",
    "npm_config_registry",
    "NPM_CONFIG_PROXY",
    "NPM_CONFIG_HTTPS_PROXY",
    "NPM_CONFIG_REGISTRY",
    "CARGO_HTTP_PROXY",
];

/// Every variable [`host_network`] may set for the script (the bake's sudoers drop-in keeps them
/// across `sudo`).
pub fn script_variables() -> impl Iterator<Item = &'static str> {
    CA_VARS.iter().chain(PASSED).copied()
}

/// Host bundles, in the order they are looked for after `SSL_CERT_FILE`.
const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// What a bake gets from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNetwork {
    /// The host's CA bundle, copied to [`GUEST_CA`].
    pub ca_bundle: Option<PathBuf>,
    /// `NAME=value` pairs for the script's environment.
    pub vars: Vec<(String, String)>,
}

impl HostNetwork {
    /// The names of the variables set (values may hold proxy credentials: never logged).
    pub fn names(&self) -> Vec<&str> {
        self.vars.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Reads the host's trust anchors and proxy settings from `env` (the daemon's environment).
pub fn host_network(
    env: &dyn Fn(&str) -> Option<String>,
    is_file: &dyn Fn(&Path) -> bool,
) -> HostNetwork {
    let ca_bundle = env("SSL_CERT_FILE")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && is_file(p))
        .or_else(|| BUNDLES.iter().map(PathBuf::from).find(|p| is_file(p)));
    let mut vars = Vec::new();
    if ca_bundle.is_some() {
        vars.extend(
            CA_VARS
                .iter()
                .map(|k| (k.to_string(), GUEST_CA.to_string())),
        );
    }
    for k in PASSED {
        // One line per value: nspawn's --setenv takes no newline, and NUL can't be passed.
        if let Some(v) = env(k).filter(|v| !v.is_empty() && !v.contains(['\n', '\r', '\0'])) {
            vars.push((k.to_string(), v));
        }
    }
    HostNetwork { ca_bundle, vars }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(env: &[(&str, &str)], files: &[&str]) -> HostNetwork {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host_network(&|k| env.get(k).cloned(), &|p| {
            files.iter().any(|f| Path::new(f) == p)
        })
    }

    #[test]
    fn bundle_and_proxies_from_the_host() {
        let debian = "/etc/ssl/certs/ca-certificates.crt";
        // (environment, files present, bundle found, variable names set)
        type Case<'a> = (
            Vec<(&'a str, &'a str)>,
            Vec<&'a str>,
            Option<&'a str>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            (vec![], vec![], None, vec![]),
            (vec![], vec![debian], Some(debian), CA_VARS.to_vec()),
            (
                vec![("SSL_CERT_FILE", "/opt/corp.pem")],
                vec!["/opt/corp.pem", debian],
                Some("/opt/corp.pem"),
                CA_VARS.to_vec(),
            ),
            // A relative or missing SSL_CERT_FILE falls back to the distribution's bundle.
            (
                vec![("SSL_CERT_FILE", "corp.pem")],
                vec!["corp.pem", debian],
                Some(debian),
                CA_VARS.to_vec(),
            ),
            (
                vec![("SSL_CERT_FILE", "/gone.pem")],
                vec!["/etc/pki/tls/certs/ca-bundle.crt"],
                Some("/etc/pki/tls/certs/ca-bundle.crt"),
                CA_VARS.to_vec(),
            ),
            (
                vec![
                    ("https_proxy", "http://user:pw@proxy.corp:3128"),
                    ("no_proxy", "localhost,.corp"),
                    ("PIP_INDEX_URL", "https://pypi.corp/simple"),
                    ("HTTP_PROXY", ""),
                    ("npm_config_registry", "bad\nvalue"),
                    ("UNRELATED", "x"),
                ],
                vec![],
                None,
                vec!["https_proxy", "no_proxy", "PIP_INDEX_URL"],
            ),
        ];
        for (env, files, bundle, names) in cases {
            let got = run(&env, &files);
            assert_eq!(got.ca_bundle.as_deref(), bundle.map(Path::new), "{env:?}");
            assert_eq!(got.names(), names, "{env:?}");
        }
    }

    #[test]
    fn tools_are_pointed_at_the_copy_and_proxies_keep_their_values() {
        let got = run(
            &[("https_proxy", "http://proxy:3128")],
            &["/etc/ssl/certs/ca-certificates.crt"],
        );
        for (k, v) in &got.vars {
            let want = if k == "https_proxy" {
                "http://proxy:3128"
            } else {
                GUEST_CA
            };
            assert_eq!(v, want, "{k}");
        }
        assert!(
            GUEST_CA.starts_with("/deployTemp/"),
            "removed with /deployTemp"
        );
    }
}
