#!/usr/bin/env bash
# Installs the project into .venv with Python 3.11. Usage: scripts/install.sh [EXTRAS], e.g. "test".
#
# torch: a GPU machine (nvidia-smi present) gets PyPI's torch==2.13.0, a CUDA build. Any other
# machine gets the CPU build from PyTorch's CPU index, which is much smaller. Set TORCH_INDEX_URL
# to choose another index (for example a CUDA-version-specific one). pip installs torch, so pip's
# own configuration (a mirror, a local wheelhouse) applies to it.
#
# The rest is installed by uv (pinned below, put into .venv by pip): it downloads, unpacks and
# byte-compiles in parallel. A fresh `install.sh test` on 2 cores took 205 s with pip alone and
# about 100 s so. uv does not read pip's configuration; where it cannot install (say, only a
# mirror that pip is configured for is reachable), pip installs the same instead.
set -euo pipefail
cd "$(dirname "$0")/.."
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

purelib="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# compileall -j 0: on every core. A failure is a module pip would not have compiled either (some
# packages ship files for other Python versions); it is only read from source.
compile_all() { .venv/bin/python -m compileall -q -j 0 "$@" >/dev/null 2>&1 || true; }
if [ "$new_venv" = 1 ]; then
  # torch's packages (from its top_level.txt), compiled while uv downloads the rest: uv compiles
  # only what it installs itself.
  mapfile -t torch_packages < <(.venv/bin/python -c 'import importlib.metadata as m; print(m.distribution("torch").read_text("top_level.txt").strip())')
  compile_all "${torch_packages[@]/#/$purelib/}" &
  compiling=$!
fi

# uv keeps the torch installed above: it satisfies the project's torch==2.13.0. It byte-compiles
# what it installs, on every core; pip does so into an existing .venv.
"${pip[@]}" --quiet "uv==0.13.9"
if ! .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode -e "$target"; then
  echo "scripts/install.sh: uv could not install the project; installing it with pip" >&2
  "${pip[@]}" -e "$target"
  if [ "$new_venv" = 1 ]; then
    compile_all "$purelib"
  fi
fi
if [ "$new_venv" = 1 ]; then
  wait "$compiling"
fi
