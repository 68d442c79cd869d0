#!/usr/bin/env bash
# `make demo`: the demo pipeline on a tested stack this host runs natively; it says which.
# glibc >= 2.39: TFX 1.21 on the first tested Python the host has (3.11, 3.12, 3.13: the
# order of scripts/userland.sh's ENVS), in a venv of scripts/userland.sh. Older glibc
# (ml-metadata 1.21 needs 2.39): TFX 1.16 on Python 3.10, in .venv (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n2.39\n' "$glibc" | sort -V | head -n 1)" = 2.39 ]; then
  env=$(FINAL_EXPORTER_NATIVE=1 bash scripts/userland.sh available | head -n 1)
  if [ -z "$env" ]; then
    echo "demo: error: no tested Python on this host (glibc $glibc): install Python 3.11, 3.12 or 3.13 with its venv module (Debian, Ubuntu: apt-get install python3 python3-venv)" >&2
    exit 2
  fi
  echo "demo: glibc $glibc >= 2.39: TFX 1.21 on Python ${env##*-py} ($env, scripts/userland.sh, native)"
  exec env FINAL_EXPORTER_NATIVE=1 bash scripts/userland.sh run "$env" python -m pipelines.local_runner
fi
echo "demo: glibc $glibc < 2.39 (TFX 1.21 needs 2.39): TFX 1.16 on Python 3.10 (.venv)"
bash scripts/bootstrap.sh
exec .venv/bin/python -m pipelines.local_runner
