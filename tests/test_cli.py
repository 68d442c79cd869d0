"""The `final-exporter` command, run as users run it: a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from final_exporter.adapters.cli import GC_YOUNG_THRESHOLD, build_parser, flag
from final_exporter.adapters.tfx.spec import FinalExporterSpec
from final_exporter.common import keys
from final_exporter.storage.manifest import manifest_bytes

from conftest import assert_nothing_written, published_versions

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def export_args(model_uri, export_base, *extra) -> list[str]:
    return [
        'export',
        '--model',
        model_uri,
        '--export-base',
        export_base,
        '--name',
        'penguin',
        *extra,
    ]


def test_export_prints_json_and_exits_0(model_uri, export_base, make_blessing):
    run = cli(*export_args(model_uri, export_base, '--model-blessing', make_blessing(), '--json'))

    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out['pushed'] is True
    assert out['not_pushed_reason'] is None
    assert out['export_dir'] == os.path.join(export_base, 'penguin', str(out['version']))
    assert len(out['manifest_sha256']) == 64
    assert published_versions(os.path.join(export_base, 'penguin')) == [str(out['version'])]


def test_not_blessed_exits_0_and_writes_nothing(model_uri, export_base, make_blessing):
    run = cli(
        *export_args(model_uri, export_base, '--model-blessing', make_blessing(False), '--json')
    )

    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out['pushed'] is False
    assert out['version'] is None
    assert 'not blessed' in out['not_pushed_reason']
    assert_nothing_written(export_base)


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--model', '/nonexistent'], "model path '/nonexistent' does not exist"),
        (['--model', '{empty}'], 'holds no SavedModel'),
        (['--assets-extra', '../x={file}'], "contains '..'"),
        (['--assets-extra', 'x=/nonexistent/src'], 'is missing'),
        (['--assets-extra', 'no-equals-sign'], 'expected DEST=SRC'),
        (['--bogus-option'], 'unrecognized arguments: --bogus-option'),
        (['--name', 'a/b'], 'contains a "/"'),
        (['--model-blessing', '{empty}'], 'verdict files'),
        ([], 'no blessing was given'),
        (
            ['--no-require-blessing', '--signing-key', 'env:FINAL_EXPORTER_TEST_UNSET_KEY'],
            "signing_key='env:FINAL_EXPORTER_TEST_UNSET_KEY' names the environment variable",
        ),
        (
            ['--no-require-blessing', '--signing-key', '{file}'],
            'signing_key is not a PEM private key',
        ),
        (['--no-require-blessing', '--signing-key', '/nonexistent.key'], 'cannot be read'),
        (
            ['--no-require-blessing', '--signing-certificate-chain', '{file}'],
            'signing_certificate_chain given without signing_key',
        ),
    ],
    ids=[
        'missing-model',
        'not-a-savedmodel',
        'assets-escape',
        'assets-missing',
        'assets-syntax',
        'unknown-option',
        'bad-name',
        'bad-blessing',
        'no-blessing',
        'signing-key-in-an-unset-variable',
        'signing-key-not-pem',
        'signing-key-missing',
        'certificate-chain-without-key',
    ],
)
def test_bad_input_exits_2_with_one_line_and_nothing_written(
    model_uri, export_base, tmp_path, args, message, tally
):
    empty = tmp_path / 'empty'
    empty.mkdir()
    afile = tmp_path / 'file.txt'
    afile.write_text('x')
    args = [a.format(empty=empty, file=afile) for a in args]
    base = export_args(model_uri, export_base)
    if '--model' in args:
        i = base.index('--model')
        del base[i : i + 2]
    if '--name' in args:
        i = base.index('--name')
        del base[i : i + 2]

    run = cli(*base, *args)

    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert message in lines[0]
    assert_nothing_written(export_base)
    tally['bad_inputs_refused'] += 1


def test_verify_passes_then_names_changed_missing_and_extra_files(
    model_uri, export_base, make_blessing
):
    out = json.loads(
        cli(
            *export_args(model_uri, export_base, '--model-blessing', make_blessing(), '--json')
        ).stdout
    )
    export_dir = out['export_dir']
    assert cli('verify', export_dir).returncode == 0

    data = os.path.join(export_dir, 'variables', 'variables.data-00000-of-00001')
    with open(data, 'r+b') as f:
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0x01]))
    os.remove(os.path.join(export_dir, 'variables', 'variables.index'))
    with open(os.path.join(export_dir, 'stray.txt'), 'w') as f:
        f.write('x')
    run = cli('verify', export_dir)

    assert run.returncode == 1
    assert 'changed: variables/variables.data-00000-of-00001' in run.stdout
    assert 'missing: variables/variables.index' in run.stdout
    assert 'extra: stray.txt' in run.stdout


def test_list_shows_versions_newest_first_with_lineage(model_uri, export_base):
    for _ in range(2):
        assert cli(*export_args(model_uri, export_base, '--no-require-blessing')).returncode == 0

    run = cli('list', os.path.join(export_base, 'penguin'), '--json')

    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    versions = [r['version'] for r in rows]
    assert versions == sorted(versions, reverse=True) and len(versions) == 2
    assert rows[0]['lineage']['source_model_uri'] == model_uri
    text = cli('list', os.path.join(export_base, 'penguin')).stdout
    assert text.splitlines()[0].startswith(str(versions[0]))


def test_plain_copy_export_imports_neither_tensorflow_nor_tfx(model_uri, export_base):
    code = (
        'import sys\n'
        'from final_exporter.adapters.cli import main\n'
        f'rc = main({export_args(model_uri, export_base, "--no-require-blessing", "--no-smoke-test")!r})\n'
        'heavy = sorted(m for m in ("tensorflow", "tfx", "apache_beam") if m in sys.modules)\n'
        'print(rc, heavy)\n'
    )
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)

    assert run.stdout.strip().splitlines()[-1] == '0 []'


@pytest.mark.parametrize('smoke', [True, False], ids=['smoke-test', 'copy-only'])
def test_the_command_ends_without_the_interpreters_teardown_its_output_complete(
    model_uri, export_base, make_blessing, smoke
):
    # An atexit handler runs in the interpreter's teardown, which the command skips, with
    # and without TensorFlow loaded by a smoke test; the printed result is complete either
    # way (stdout is a pipe, so block-buffered, and must be flushed before the process ends).
    args = export_args(
        model_uri, export_base, '--model-blessing', make_blessing(), '--json',
        *([] if smoke else ['--no-smoke-test']),
    )  # fmt: skip
    code = (
        'import atexit, sys\n'
        "atexit.register(lambda: print('torn down', file=sys.stderr))\n"
        'from final_exporter.adapters.cli import run\n'
        f'sys.argv = ["final-exporter", *{args!r}]\n'
        'run()\n'
    )
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)['pushed'] is True
    assert 'torn down' not in done.stderr


def test_the_command_collects_young_garbage_once_per_100000_allocations(
    model_uri, export_base, make_blessing
):
    # Each collector pass writes the young generation's threshold it ran under; the
    # smoke test's import of TensorFlow allocates enough for several.
    args = export_args(model_uri, export_base, '--model-blessing', make_blessing(), '--json')
    code = (
        'import gc, os, sys\n'
        "gc.callbacks.append(lambda phase, _: phase == 'start' and os.write(2, b'gc %d\\n' "
        '% gc.get_threshold()[0]))\n'
        'from final_exporter.adapters.cli import run\n'
        f'sys.argv = ["final-exporter", *{args!r}]\n'
        "os.write(2, b'run\\n')\n"
        'run()\n'
    )
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    after_start = done.stderr.split('run\n', 1)[1].splitlines()
    passes = [line for line in after_start if line.startswith('gc ')]
    assert passes
    assert set(passes) == {f'gc {GC_YOUNG_THRESHOLD}'}


def test_export_with_the_smoke_test_prints_only_its_result(model_uri, export_base, make_blessing):
    # The smoke test imports TensorFlow (C++ log lines on stderr unless its level is set
    # first) and the object-store SDKs (google-api-core warns about old Pythons).
    environ = {
        k: v for k, v in os.environ.items() if k not in ('TF_CPP_MIN_LOG_LEVEL', 'PYTHONWARNINGS')
    }
    args = export_args(model_uri, export_base, '--model-blessing', make_blessing(), '--smoke-test')
    run = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300, env=environ)

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith('exported version ')
    assert run.stderr == ''
    # With -v the steps are logged, TensorFlow's own lines included.
    verbose = subprocess.run(
        [CLI, '-v', *export_args(model_uri, export_base + '2', '--no-require-blessing')],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
    )
    assert verbose.returncode == 0, verbose.stderr
    assert 'INFO final_exporter' in verbose.stderr


def test_every_component_parameter_and_input_has_a_cli_flag():
    export = build_parser()._subparsers._group_actions[0].choices['export']
    flags = {s for action in export._actions for s in action.option_strings}

    for key in [*FinalExporterSpec.PARAMETERS, *FinalExporterSpec.INPUTS]:
        assert flag(key) in flags, f'component key {key!r} has no CLI flag {flag(key)}'


def test_exports_with_a_format_1_manifest_verify_and_are_found_by_a_retry(model_uri, export_base):
    """Exports written before the chunked digest (format 1) stay first-class."""
    args = export_args(model_uri, export_base, '--no-smoke-test', '--no-require-blessing')
    first = cli(*args, '--idempotency-key', 'run-1', '--json')
    assert first.returncode == 0, first.stderr
    export_dir = json.loads(first.stdout)['export_dir']
    manifest_path = os.path.join(export_dir, keys.MANIFEST_RELPATH)
    with open(manifest_path, 'rb') as f:
        manifest = json.load(f)
    assert manifest['format_version'] == 2
    # As the exporter wrote it before: format 1, no chunk size, every file's whole sha256.
    manifest['format_version'] = 1
    del manifest['chunk_bytes']
    assert all('sha256' in e and 'chunked_sha256' not in e for e in manifest['files'])
    os.chmod(manifest_path, 0o644)
    with open(manifest_path, 'wb') as f:
        f.write(manifest_bytes(manifest))

    verified = cli('verify', export_dir, '--json')
    retry = cli(*args, '--idempotency-key', 'run-1', '--json')

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert retry.returncode == 0, retry.stderr
    assert json.loads(retry.stdout)['export_dir'] == export_dir
    assert published_versions(os.path.join(export_base, 'penguin')) == [
        os.path.basename(export_dir)
    ]
