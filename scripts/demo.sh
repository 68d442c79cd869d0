#!/usr/bin/env bash
# `make demo`: the demo pipeline on the newest tested stack this host runs natively.
# TFX 1.21 needs glibc >= 2.39 (ml-metadata's wheels); elsewhere TFX 1.16 on Python 3.10.
set -euo pipefail
cd "$(dirname "$0")/.."
glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
if [ "$(printf '%s\n2.39\n' "$glibc" | sort -V | head -n 1)" = 2.39 ]; then
  echo "demo: glibc $glibc >= 2.39: TFX 1.21 on Python 3.11 (scripts/userland.sh, native)"
  exec env FINAL_EXPORTER_NATIVE=1 bash scripts/userland.sh run tfx1.21-py3.11 python -m pipelines.local_runner
fi
echo "demo: glibc $glibc < 2.39 (TFX 1.21 needs 2.39): TFX 1.16 on Python 3.10 (.venv)"
bash scripts/bootstrap.sh
exec .venv/bin/python -m pipelines.local_runner
