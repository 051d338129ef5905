#!/usr/bin/env bash
# Installs the project into .venv with Python 3.11. Usage: scripts/install.sh [EXTRAS], e.g. "test".
#
# torch: a GPU machine (nvidia-smi present) gets PyPI's torch==2.13.0, a CUDA build. Any other
# machine gets the CPU build from PyTorch's CPU index, which is much smaller. Set TORCH_INDEX_URL
# to choose another index (for example a CUDA-version-specific one). pip installs torch, so pip's
# own configuration (a mirror, a local wheelhouse) applies to it.
#
# The project itself is installed by uv, with pip where uv cannot (scripts/uv_install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/uv_install.sh
extras="${1:-}"
target=".${extras:+[$extras]}"
python="${PYTHON:-python3.11}"
pip=(.venv/bin/python -m pip install --disable-pip-version-check)
new_venv=0
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
  # Compiled below, on every core. Not skipped altogether: where PYTHONDONTWRITEBYTECODE=1, Python
  # never caches what it compiles at import (a fresh clone's suite ran 510 s slower so).
  new_venv=1
  pip+=(--no-compile)
fi

if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${pip[@]}" "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
elif command -v nvidia-smi >/dev/null 2>&1; then
  "${pip[@]}" "torch==2.13.0"
else
  # The CPU build is "2.13.0+cpu"; pip prefers it over PyPI's CUDA build of the same version.
  # --no-deps: only torch is looked up on that index; its dependencies come from PyPI next.
  "${pip[@]}" "torch==2.13.0" --no-deps --retries 1 --extra-index-url https://download.pytorch.org/whl/cpu
fi

if [ "$new_venv" = 1 ]; then
  # torch's packages (from its top_level.txt), compiled on every core while uv downloads the rest:
  # uv compiles only what it installs itself. A failure is a module pip would not have compiled
  # either (some packages ship files for other Python versions); it is only read from source.
  purelib="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  mapfile -t torch_packages < <(.venv/bin/python -c 'import importlib.metadata as m; print(m.distribution("torch").read_text("top_level.txt").strip())')
  .venv/bin/python -m compileall -q -j 0 "${torch_packages[@]/#/$purelib/}" >/dev/null 2>&1 &
  compiling=$!
fi

# uv keeps the torch installed above: it satisfies the project's torch==2.13.0.
uv_install .venv -e "$target"
if [ "$new_venv" = 1 ]; then
  wait "$compiling" || true
fi
