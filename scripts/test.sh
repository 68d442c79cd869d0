#!/usr/bin/env bash
# `make test`: every tested environment (docs/tested-with.md), one after the other:
#   1. ruff and the layer check (import-linter), once;
#   2. the host suite: .venv, Python 3.10 + TFX 1.16 (scripts/bootstrap.sh);
#   3. the TFX 1.21 suites (scripts/userland.sh): Python 3.11, the whole suite;
#      Python 3.13, everything that does not need kfp.
# The TFX 1.21 environments are built in the background while 1 and 2 run.
set -euo pipefail
cd "$(dirname "$0")/.."

log=$(mktemp -t final-exporter-prepare.XXXXXX)
bash scripts/userland.sh prepare >"$log" 2>&1 &
prepare=$!
# Stop only our background build if we stop early (it resumes from its cache next time).
trap 'kill "$prepare" 2>/dev/null || true' EXIT

bash scripts/bootstrap.sh
.venv/bin/ruff check component pipelines tests scripts
.venv/bin/ruff format --check component pipelines tests scripts
# The layer order of docs/layout.md ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports

printf '\n==== environment host: Python 3.10 + TFX 1.16 (.venv), the whole suite ====\n'
.venv/bin/python -c 'import platform, importlib.metadata as m; print("     Python %s, glibc %s, TFX %s, TF %s, kfp %s, Beam %s, protobuf %s" % (platform.python_version(), platform.libc_ver()[1], *(m.version(p) for p in ("tfx", "tensorflow", "kfp", "apache-beam", "protobuf"))))'
host=0
.venv/bin/python -m pytest -q || host=$?
printf '==== environment host: %s ====\n' "$([ $host = 0 ] && echo passed || echo "FAILED (exit $host)")"

if ! wait "$prepare"; then
  cat "$log" >&2
  echo "test: building the TFX 1.21 environments failed (above)" >&2
  exit 1
fi
trap - EXIT
rm -f "$log"
userland=0
bash scripts/userland.sh test || userland=$?
[ $host = 0 ] && [ $userland = 0 ]
