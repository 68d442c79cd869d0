"""TensorFlow imported for the checks without Keras (`checks/tf_import.py`), each case in a
fresh interpreter: the test process has imported TensorFlow (and Keras) already."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ESTIMATOR_MODEL

_KERAS = ('keras', 'tf_keras')


def _fresh(code: str, **env: str) -> dict:
    run = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('legacy', ['0', '1'], ids=['keras-3', 'tf-keras'])
def test_the_checks_import_tensorflow_without_keras_which_imports_as_usual_afterwards(legacy):
    seen = _fresh(
        'import json, os, sys\n'
        'from final_exporter.checks.tf_import import import_tensorflow\n'
        'tf = import_tensorflow()\n'
        f'imported = sorted(m for m in {_KERAS!r} if m in sys.modules)\n'
        'blocked = sorted(k for k, v in sys.modules.items() if v is None and "keras" in k)\n'
        'import importlib.util\n'
        'legacy = os.environ["TF_USE_LEGACY_KERAS"] == "1"\n'
        'name = "tf_keras.src.optimizers" if legacy else "keras.src.optimizers"\n'
        'found = importlib.util.find_spec(name.split(".")[0]) is not None\n'
        'if found:\n'
        '    importlib.import_module(name)\n'
        'print(json.dumps({"tf": tf.__name__, "imported": imported, "blocked": blocked,\n'
        '                  "later": (not found) or name in sys.modules}))\n',
        TF_USE_LEGACY_KERAS=legacy,
    )

    assert seen == {'tf': 'tensorflow', 'imported': [], 'blocked': [], 'later': True}


_DISTUTILS_FOUND = (
    'try:\n'
    '    import distutils\n'
    '    found = distutils.__file__\n'
    'except ImportError:\n'
    '    found = None\n'
)


def test_the_checks_import_tensorflow_without_setuptools_and_distutils_imports_as_usual_after():
    seen = _fresh(
        'import json, sys\n'
        'from final_exporter.checks.tf_import import import_tensorflow\n'
        'import_tensorflow()\n'
        'loaded = sorted(m for m in ("setuptools", "pkg_resources", "distutils") if m in sys.modules)\n'
        + _DISTUTILS_FOUND
        + 'print(json.dumps({"loaded": loaded, "later": found}))\n'
    )
    # What `import distutils` finds in a fresh interpreter of this environment.
    usual = _fresh('import json\n' + _DISTUTILS_FOUND + 'print(json.dumps(found))\n')

    assert seen == {'loaded': [], 'later': usual}


def test_a_tensorflow_imported_already_is_the_one_the_checks_use():
    seen = _fresh(
        'import json, sys\n'
        'import tensorflow\n'
        'from final_exporter.checks.tf_import import import_tensorflow\n'
        'print(json.dumps({"same": import_tensorflow() is tensorflow,\n'
        '                  "keras": "keras" in sys.modules or "tf_keras" in sys.modules}))\n'
    )

    # A plain `import tensorflow` imports Keras: the checks neither undo nor repeat it.
    assert seen == {'same': True, 'keras': True}


def test_an_export_with_the_smoke_test_imports_no_keras_for_a_model_without_one(tmp_path):
    seen = _fresh(
        'import json, sys\n'
        'from final_exporter.adapters.cli import main\n'
        f'rc = main(["export", "--model", {ESTIMATOR_MODEL!r}, "--export-base",\n'
        f'           {str(tmp_path / "serving")!r}, "--name", "taxi", "--no-require-blessing",\n'
        '           "--smoke-test", "--json"])\n'
        f'print(json.dumps({{"rc": rc, "tf": "tensorflow" in sys.modules,\n'
        f'                   "keras": sorted(m for m in {_KERAS!r} if m in sys.modules)}}))\n'
    )

    assert seen == {'rc': 0, 'tf': True, 'keras': []}
