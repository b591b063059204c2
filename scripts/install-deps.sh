#!/usr/bin/env bash
# Installs the system packages scaleset needs on Debian/Ubuntu (run as root).
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
  echo "scaleset needs root (it boots machines with systemd-nspawn): run with sudo" >&2
  exit 1
fi
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
# The instance bridge's firewall and NAT (bakes and instances reach out, never into the host).
command -v nft >/dev/null || need+=(nftables)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v git >/dev/null || need+=(git)
# The azure provider speaks HTTPS through the system curl (no TLS stack compiled in).
command -v curl >/dev/null || need+=(curl ca-certificates)
# Debian's python3 with venv: the SDK test (crates/cli/tests/sdk.rs) runs Microsoft's Python SDK
# in a venv (crates/cli/tests/metrics.rs too: Prometheus' prometheus_client parser), and the
# Flask example's CI job (run as the runner user, whose PATH has no pyenv or
# other python) makes one for its tests.
[ -x /usr/bin/python3 ] || need+=(python3)
venv_probe=$(mktemp -d)
/usr/bin/python3 -m venv "$venv_probe/v" >/dev/null 2>&1 || need+=(python3-venv)
rm -rf "$venv_probe"
# Pipeline YAML examples are validated against Microsoft's JSON schema (crates/pipeline/tests).
/usr/bin/python3 -c "import yaml, jsonschema" >/dev/null 2>&1 || need+=(python3-yaml python3-jsonschema)
# The dashboard's browser test (crates/cli/tests/dashboard.rs) drives Debian's headless
# chromium through chromedriver (one source package, so browser and driver versions match).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
# Pipeline jobs run as this unprivileged user (never as root, never with the daemon's token).
if ! id scaleset-runner >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/scaleset-runner --create-home \
    --shell /usr/sbin/nologin scaleset-runner
fi
if ! command -v cargo >/dev/null; then
  echo "Rust is missing: install it with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi
