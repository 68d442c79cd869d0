#!/usr/bin/env bash
# Creates .venv/ with Python 3.10 and TFX 1.16 (the environment this host runs
# natively; the TFX 1.21 ones are scripts/userland.sh's) and installs the project with
# the pinned constraints. Re-runs only when pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The reflink test formats a small XFS image (tests/test_transfer.py). As root on
# Debian, install mkfs.xfs when it is missing; elsewhere that test says what is missing.
if ! command -v mkfs.xfs >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  source scripts/apt_install.sh
  apt_install xfsprogs || echo "bootstrap: could not install xfsprogs (mkfs.xfs)" >&2
fi

stamp=.venv/.installed
constraints=constraints/tfx-1.16-py3.10.txt
want=$(cat pyproject.toml "$constraints" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

find_python() {
  # TFX 1.16 publishes wheels for Python 3.9 and 3.10 only; pyenv shims may
  # refuse python3.10 when it is not the selected version, so try real paths.
  local c
  for c in "${PYTHON:-}" python3.10 /root/.pyenv/versions/3.10*/bin/python3.10 \
           /usr/local/bin/python3.10 /usr/bin/python3.10; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  echo "bootstrap: error: no Python 3.10 (TFX 1.16, for glibc < 2.39, needs it): install python3.10 (or: pyenv install 3.10), or set PYTHON=/path/to/python3.10" >&2
  return 1
}

# A venv whose creation failed (no venv module: Debian's python3.10-venv) has a python
# but no pip; it is made anew, not reused.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  python=$(find_python)
  rm -rf .venv
  "$python" -m venv .venv || {
    echo "bootstrap: error: $python could not make .venv: install its venv module (Debian, Ubuntu: apt-get install python3.10-venv)" >&2
    exit 2
  }
fi
.venv/bin/python -m pip install --quiet --upgrade 'pip<27'
# -c pins every transitive package to the set this project is tested with.
.venv/bin/python -m pip install --quiet -c "$constraints" -e '.[test,bench,signing]'
echo "$want" > "$stamp"
