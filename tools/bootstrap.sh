#!/usr/bin/env bash
# Sourced by tools/run and tools/test: make .venv with the project and its test extra installed.
# Reinstalls only when pyproject.toml changed, so repeated calls cost a second.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "msgprof needs Python 3.11 or newer; $python is $("$python" --version 2>&1)" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating $venv" >&2
  if ! "$python" -m venv "$venv"; then
    # Debian's python3 ships venv without ensurepip; as root, install it and try again.
    if [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
      rm -rf "$venv"
      apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv > /dev/null
      "$python" -m venv "$venv"
    else
      echo "bootstrap: '$python -m venv' failed; install your distribution's venv package" >&2
      exit 1
    fi
  fi
fi
stamp="$venv/.msgprof-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing msgprof and its dependencies into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  echo "$want" > "$stamp"
fi
# A process of one client runs its round trips compiled (msgprof.load.native): a C compiler
# builds them once per host. As root, install one if there is none; then build ahead of the
# first run. Without one, that loop runs in Python (a warning says so).
cc=${CC:-cc}
if ! command -v "${cc%% *}" > /dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get > /dev/null; then
  echo "bootstrap: installing a C compiler (gcc)" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev > /dev/null
fi
"$venv/bin/python" -m msgprof.load.native > /dev/null \
  || echo "bootstrap: the one-client loop will run in Python (see above)" >&2
export PATH="$venv/bin:$PATH"
