"""A user's install: the wheel built from this repository, `pip install`ed into a fresh venv.

No constraints and no flags: pip resolves the declared dependencies on its own (from
the package index; its cache, warm from building the test environment, keeps this
to a couple of minutes). Then `final-exporter export` runs there on TFX's own test
model, as a plain copy and with the smoke test, and `final-exporter verify` checks
each export. Collected on the newest tested Python only (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import KERAS_MODEL

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A user's environment: no path to this checkout's code (scripts/userland.sh runs the
# suite with PYTHONPATH at it), no pip constraints of the test environment.
USER_ENV = {
    k: v for k, v in os.environ.items() if k != 'PYTHONPATH' and not k.startswith('PIP_CONSTRAINT')
}


def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, env=USER_ENV, **kwargs)
    assert done.returncode == 0, f'{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    return done


@pytest.fixture(scope='module')
def installed(tmp_path_factory) -> str:
    """The `bin/` of a fresh venv with only the wheel (and what it pulls in) installed."""
    root = tmp_path_factory.mktemp('wheel')
    # A copy of what the wheel is built from, so the build leaves nothing in the checkout.
    source = root / 'source'
    source.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(os.path.join(REPO_ROOT, name), source)
    shutil.copytree(
        os.path.join(REPO_ROOT, 'component'),
        source / 'component',
        ignore=shutil.ignore_patterns('*.egg-info', '__pycache__'),
    )
    dist = root / 'dist'
    run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-w', str(dist), str(source))
    (wheel,) = dist.glob('tfx_final_exporter-*.whl')

    venv = root / 'venv'
    run(sys.executable, '-m', 'venv', str(venv))
    run(str(venv / 'bin' / 'pip'), 'install', str(wheel), timeout=1800)
    return str(venv / 'bin')


@pytest.mark.parametrize('smoke', ['--no-smoke-test', '--smoke-test'])
def test_the_installed_wheel_exports_and_verifies(installed, tmp_path, smoke):
    cli = os.path.join(installed, 'final-exporter')
    export_base = str(tmp_path / 'serving')

    done = run(
        cli,
        'export',
        '--model',
        KERAS_MODEL,
        '--export-base',
        export_base,
        '--name',
        'penguin',
        '--no-require-blessing',
        smoke,
        '--json',
        timeout=600,
    )
    out = json.loads(done.stdout)
    assert out['pushed'] is True
    assert done.stderr == ''
    run(cli, 'verify', out['export_dir'])
    # The CLI ran from the fresh venv, not from this checkout.
    where = run(
        os.path.join(installed, 'python'),
        '-c',
        'import final_exporter; print(final_exporter.__file__)',
    ).stdout.strip()
    assert where.startswith(os.path.dirname(installed) + os.sep), where
