#!/usr/bin/env bash
# Installs the package into the component image: the Dockerfile's two RUN steps.
#
#   scripts/image_install.sh dependencies [PIP_ARGS...]
#       before the package's code is copied in (its own layer, reused while pyproject.toml,
#       the constraints and this script are unchanged): the requirements pyproject.toml
#       declares, TFX and kfp among them, and its build backend.
#   scripts/image_install.sh package [PIP_ARGS...]
#       the package from the build context (no dependency may be missing), `pip check`, the
#       demo data link, then a real export inside the image: a broken image fails its build.
#
# The base image decides the route:
#   - a base without TFX (the default, python:3.11-slim): the tested set of the base's
#     Python, constraints/tfx-<X.Y>-py<A.B>.txt (docs/tested-with.md);
#   - a base with TFX (gcr.io/tfx-oss-public/tfx:<version>): pinned to what the base has
#     installed (its `pip freeze`), so nothing the base has is replaced, and `pip check` may
#     report nothing the base did not already report.
# tests/test_kubeflow_image.py runs both steps in a venv over a test environment, offline.
set -euo pipefail

# An image is installed as root, by design.
export PIP_ROOT_USER_ACTION=ignore

say() { printf 'image_install: %s\n' "$*" >&2; }
die() { printf 'image_install: error: %s\n' "$*" >&2; exit 1; }

# What this install decided, kept in the image beside its Python for the package step.
STATE="$(python -c 'import sys; print(sys.prefix)')/share/tfx-final-exporter"

base_has_tfx() { python -c 'import importlib.metadata as m; m.version("tfx")' 2>/dev/null; }

pyproject() { # KEY...: the list at that path in pyproject.toml, one item a line
  python - "$@" <<'EOF'
import functools, sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 has no tomllib; pip carries the same parser.
    from pip._vendor import tomli as tomllib
with open('pyproject.toml', 'rb') as f:
    print('\n'.join(functools.reduce(lambda d, k: d[k], sys.argv[1:], tomllib.load(f))))
EOF
}

base_pins() { # what the base has, as constraints: pip freeze's set, as NAME==VERSION
  python - <<'EOF'
import importlib.metadata as m
# pip freeze leaves the installers out; `NAME @ URL` lines (packages built from source)
# cannot be constraints, so every line is NAME==VERSION.
skip = {'pip', 'setuptools', 'wheel', 'distribute', 'tfx-final-exporter'}
seen = set()
for dist in m.distributions():
    name = dist.metadata['Name']
    if name and name.lower() not in skip and name.lower() not in seen:
        seen.add(name.lower())
        print(f'{name}=={dist.version}')
EOF
}

tested_constraints() { # the tested set for the base's Python
  local py found
  py=$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  found=$(ls constraints/tfx-*-py"$py".txt 2>/dev/null | tail -n 1 || true)
  [ -n "$found" ] || die "Python $py is not a tested Python (no constraints/tfx-*-py$py.txt;" \
    "tested: $(cd constraints && ls tfx-*.txt | sed 's/\.txt$//' | tr '\n' ' ')); use a" \
    "python:<tested>-slim base or a TFX image (docs/kubeflow-vertex.md)"
  printf '%s' "$found"
}

with_compiler() { # runs "$@" with g++ present; removes what it installed, as python's own image does
  if command -v g++ >/dev/null || ! command -v apt-get >/dev/null; then "$@"; return; fi
  # pyfarmhash, in the tested set, is published as source only.
  say "installing g++ for the packages published as source only (removed afterwards)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends g++ >/dev/null
  "$@"
  apt-get purge -y -qq --auto-remove -o APT::AutoRemove::RecommendsImportant=false g++ >/dev/null
  # The package lists and the downloaded .debs (apt < 2.7.8 has no dist-clean).
  apt-get dist-clean 2>/dev/null || { apt-get clean && rm -rf /var/lib/apt/lists/*; }
}

install_on_tfx_base() { # PIP_ARGS...: what the base lacks, pinned to what it has
  say "the base has TFX $(python -c 'import importlib.metadata as m; print(m.version("tfx"))'):" \
    "keeping every version it has installed"
  echo base >"$STATE/route"
  base_pins >"$STATE/constraints.txt"
  python -m pip check >"$STATE/pip-check-base.txt" 2>&1 || true
  python -m pip install -q --no-cache-dir -c "$STATE/constraints.txt" -r "$STATE/requirements.txt" "$@" \
    || die "this package's requirements (pyproject.toml) cannot be met without changing what" \
      "the base has installed (pip's reason above); the tested set is the default route," \
      "FROM python:3.11-slim"
}

install_tested_set() { # PIP_ARGS...: the tested set of the base's Python
  local constraints backend
  constraints=$(tested_constraints)
  say "the base has no TFX: installing the tested set, $constraints"
  echo tested >"$STATE/route"
  cp "$constraints" "$STATE/constraints.txt"
  : >"$STATE/pip-check-base.txt"
  # pip and the build backend as the test environments have them (scripts/userland.sh:
  # the newest, unless pinned), whatever the base came with; the package step then
  # builds offline.
  mapfile -t backend < <(pyproject build-system requires)
  python -m pip install -q --no-cache-dir --upgrade -c "$STATE/constraints.txt" 'pip<27' \
    "${backend[@]}" "$@"
  with_compiler python -m pip install -q --no-cache-dir -c "$STATE/constraints.txt" \
    -r "$STATE/requirements.txt" "$@"
}

cmd_dependencies() {
  mkdir -p "$STATE"
  pyproject project dependencies >"$STATE/requirements.txt"
  if base_has_tfx; then install_on_tfx_base "$@"; else install_tested_set "$@"; fi
}

check_pip() { # pip check may report nothing the base did not already report
  local now new
  now=$(python -m pip check 2>&1 || true)
  new=$(grep -vxF -f "$STATE/pip-check-base.txt" <<<"$now" | grep -v '^No broken requirements found' || true)
  [ -z "$new" ] || die "pip check: the install broke requirements: $new"
}

link_demo_data() { # the penguin examples the tfx package ships, where pipelines/kubeflow_v2_runner.py looks
  mkdir -p data
  ln -sfn "$(python -c 'import os, tfx; print(os.path.join(os.path.dirname(tfx.__file__), "components", "testdata", "penguin", "data"))')" \
    data/penguin
}

export_check() { # a real export with the smoke test, verified, in this environment
  local testdata destination
  testdata=$(python -c 'import os, tfx; print(os.path.join(os.path.dirname(tfx.__file__), "components", "testdata"))')
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  # What both kinds of step import: the TFX v2 entrypoint with the class path the compiled
  # pipeline names, and the kfp executor with the components.
  python -c 'import sys
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor
from tfx.utils import import_utils
import kfp.dsl.executor_main, final_exporter.adapters.kfp
import_utils.import_class_by_path("final_exporter.adapters.tfx.executor.Executor")'
  final-exporter export --json --name smoke --export-base "$WORK/serving" \
    --model "$testdata/trainer/keras" --model-blessing "$testdata/model_validator/blessed" \
    --examples "$testdata/penguin/data" --warmup-requests 2 >"$WORK/result.json"
  destination=$(python -c 'import json, sys; r = json.load(open(sys.argv[1])); assert r["pushed"], r; print(r["export_dir"])' "$WORK/result.json")
  final-exporter verify "$destination"
}

cmd_package() {
  [ -f "$STATE/route" ] || die "run 'scripts/image_install.sh dependencies' first"
  # The dependencies are the layer below. The tested route has the build backend there
  # too, so nothing is downloaded; on a TFX image pip builds in an isolated environment,
  # leaving the image's own setuptools as it is.
  local offline=()
  [ "$(cat "$STATE/route")" = base ] || offline=(--no-index --no-build-isolation)
  python -m pip install -q --no-cache-dir --no-deps "${offline[@]}" "$@" .
  rm -rf build component/*.egg-info
  check_pip
  link_demo_data
  export_check
  say "installed $(python -c 'import importlib.metadata as m; print(m.version("tfx-final-exporter"))')" \
    "with TFX $(python -c 'import importlib.metadata as m; print(m.version("tfx"))')" \
    "($(cat "$STATE/route") route): export and verify passed"
}

case "${1:-}" in
  dependencies) shift; cmd_dependencies "$@" ;;
  package) shift; cmd_package "$@" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
