#!/usr/bin/env bash
# Installs the package from the image's build context (the Dockerfile's RUN), pinned to
# the tested set of the image's own TFX and Python: constraints/tfx-<X.Y>-py<A.B>.txt.
# tests/test_kubeflow_image.py runs it in each tested environment, offline, with
# `--no-index --no-build-isolation` as extra pip arguments.
set -euo pipefail
tfx=$(python -c 'import importlib.metadata as m; print(m.version("tfx"))')
py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
tfx_minor=$(echo "$tfx" | cut -d. -f1,2)
constraints="constraints/tfx-$tfx_minor-py$py.txt"
if [ ! -f "$constraints" ]; then
  # e.g. the TFX 1.21 image: Python 3.10, with ml-metadata built for it; TFX 1.21 is
  # tested on Python 3.11 and 3.13 only (PyPI has no ml-metadata 1.21 for 3.10).
  echo "image_install: TFX $tfx on Python $py is not a tested environment (no $constraints;" \
    "tested: $(cd constraints && ls tfx-*.txt | sed 's/\.txt$//' | tr '\n' ' '))" >&2
  exit 1
fi
python -m pip install --no-cache-dir -c "$constraints" "$@" .
# The class path the compiled pipeline names, and the KFP components, import.
python -c 'import final_exporter.adapters.tfx.executor, final_exporter.adapters.kfp'
