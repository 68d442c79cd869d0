#!/usr/bin/env bash
# `make test`: every tested environment (docs/tested-with.md), one block of results each:
#   1. ruff and the layer check (import-linter), once;
#   2. the host: .venv, Python 3.10 + TFX 1.16 (scripts/bootstrap.sh), the version-dependent tests;
#   3. the component image, built and run on the host (tests/test_image.py);
#   4. the TFX 1.21 environments (scripts/userland.sh): Python 3.11, the default image's
#      environment, the whole suite; Python 3.12 and 3.13, the version-dependent tests.
# Which tests are which is decided in tests/conftest.py (FINAL_EXPORTER_SUITE). The TFX 1.21
# environments are built in the background while 1-3 run. Each block says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
took() { local s=$((SECONDS - $1)); printf '%d min %02d s' $((s / 60)) $((s % 60)); }

bash scripts/userland.sh check # a missing Python: said now, not after the host's tests
log=$(mktemp -t final-exporter-prepare.XXXXXX)
bash scripts/userland.sh prepare >"$log" 2>&1 &
prepare=$!
# The host's tests write their temporary files in one folder, removed at the end: TFX
# leaves one packaging folder (tens of MB) per pipeline it packages (dependency_utils,
# tempfile.mkdtemp, never removed), and pytest keeps its last three runs' folders. (The
# TFX 1.21 environments have a /tmp of their own, removed after each: scripts/userland.sh.)
run_tmp=$(mktemp -d -t final-exporter-test.XXXXXX)
export TMPDIR=$run_tmp
# Stop only our background build if we stop early (it resumes from its cache next time).
trap 'kill "$prepare" 2>/dev/null || true; rm -rf "$run_tmp"' EXIT

bash scripts/bootstrap.sh
.venv/bin/ruff check component pipelines tests scripts
.venv/bin/ruff format --check component pipelines tests scripts
# The layer order of docs/layout.md ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports

printf '\n==== environment host: Python 3.10 + TFX 1.16 (.venv), the version-dependent tests ====\n'
.venv/bin/python -c 'import platform, importlib.metadata as m; print("     Python %s, glibc %s, TFX %s, TF %s, kfp %s, Beam %s, protobuf %s" % (platform.python_version(), platform.libc_ver()[1], *(m.version(p) for p in ("tfx", "tensorflow", "kfp", "apache-beam", "protobuf"))))'
t=$SECONDS host=0
FINAL_EXPORTER_SUITE=versions .venv/bin/python -m pytest -q || host=$?
printf '==== environment host: %s (%s) ====\n' "$([ $host = 0 ] && echo passed || echo "FAILED (exit $host)")" "$(took $t)"

image=0
if [ -f tests/test_image.py ]; then
  printf '\n==== the component image: built and run on the host (tests/test_image.py) ====\n'
  t=$SECONDS
  FINAL_EXPORTER_SUITE=image .venv/bin/python -m pytest -q || image=$?
  printf '==== the component image: %s (%s) ====\n' "$([ $image = 0 ] && echo passed || echo "FAILED (exit $image)")" "$(took $t)"
fi

t=$SECONDS
if ! wait "$prepare"; then
  cat "$log" >&2
  echo "test: building the TFX 1.21 environments failed (above)" >&2
  exit 1
fi
trap 'rm -rf "$run_tmp"' EXIT
rm -f "$log"
printf '\n(waited %s more for the TFX 1.21 environments to be built)\n' "$(took $t)"
userland=0
bash scripts/userland.sh test || userland=$?
printf '\n==== make test: %s in %s ====\n' \
  "$([ $host = 0 ] && [ $image = 0 ] && [ $userland = 0 ] && echo passed || echo FAILED)" "$(took $started)"
[ $host = 0 ] && [ $image = 0 ] && [ $userland = 0 ]
