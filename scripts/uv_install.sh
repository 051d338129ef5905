# Sourced by scripts/install.sh and scripts/test.sh. `uv_install VENV ARGS...` installs ARGS (pip
# install's arguments) into VENV with uv, pinned here and put into VENV by pip. uv downloads, unpacks
# and byte-compiles what it installs in parallel: a fresh `install.sh test` took 205 s with pip alone
# and about 100 s so; .venv-tools 77 s and 16 s. uv does not read pip's configuration: where it
# cannot install (say, only a mirror that pip is configured for is reachable), pip installs the same.
uv_install() {
  local venv="$1"
  shift
  local pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  "${pip[@]}" --quiet "uv==0.13.9"
  if ! "$venv/bin/uv" pip install --python "$venv/bin/python" --compile-bytecode "$@"; then
    echo "uv could not install into $venv; installing with pip instead" >&2
    "${pip[@]}" "$@"
  fi
}
