"""Smoke test, parity, warmup, labels and retention, through run_export and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.storage.verify import verify_export

from conftest import TFX_TESTDATA, assert_no_staging_left, published_versions

# The penguin data the tfx package ships is laid out as an Examples artifact.
EXAMPLES = os.path.join(TFX_TESTDATA, 'penguin', 'data')
CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')

SCALED_SERVING_FN = """
import tensorflow as tf


def serving_fn(loaded):
    predict = loaded.signatures['serving_default']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def scaled(examples):
        return {'output_0': predict(examples=examples)['output_0'] * 1.5}

    return {'serving_default': scaled}
"""


def export(model_uri, export_base, examples=EXAMPLES, **config) -> ExportResult:
    return run_export(
        ExportRequest(
            config=ExportConfig(
                name='penguin', export_base=export_base, require_blessing=False, **config
            ),
            model_uri=model_uri,
            examples_uri=examples,
        )
    )


def test_smoke_test_on_real_examples_is_recorded(model_uri, export_base):
    result = export(model_uri, export_base)

    smoke = result.lineage[keys.SMOKE_TEST_LINEAGE_KEY]
    assert smoke['passed'] and smoke['inputs'] == 'examples'
    assert smoke['outputs']['output_0']['shape'][1] == 3


def test_model_that_does_not_answer_is_not_published(model_uri, export_base, tmp_path):
    module = tmp_path / 'nan_serving.py'
    module.write_text(
        'import tensorflow as tf\n'
        'def serving_fn(loaded):\n'
        "    predict = loaded.signatures['serving_default']\n"
        "    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])\n"
        '    def nan(examples):\n'
        "        return {'output_0': predict(examples=examples)['output_0'] * float('nan')}\n"
        "    return {'serving_default': nan}\n"
    )

    with pytest.raises(InvalidInputError, match='NaN'):
        export(model_uri, export_base, serving_fn=f'{module}:serving_fn')
    assert published_versions(os.path.join(export_base, 'penguin')) == []
    assert_no_staging_left(os.path.join(export_base, 'penguin'))


def test_parity_catches_a_reexport_that_changes_predictions(model_uri, export_base, tmp_path):
    module = tmp_path / 'scaled.py'
    module.write_text(SCALED_SERVING_FN)

    with pytest.raises(InvalidInputError, match='output_0'):
        export(model_uri, export_base, serving_fn=f'{module}:serving_fn', parity_sample_size=20)
    assert published_versions(os.path.join(export_base, 'penguin')) == []


def test_parity_passes_for_an_as_text_export_and_is_recorded(model_uri, export_base):
    result = export(model_uri, export_base, as_text=True, parity_sample_size=20)

    parity = result.lineage[keys.PARITY_LINEAGE_KEY]
    assert parity['ok'] and parity['examples'] == 20


def test_warmup_requests_are_written_and_listed_in_the_manifest(model_uri, export_base):
    from final_exporter.checks.warmup import validate_warmup_requests

    result = export(model_uri, export_base, warmup_requests=25)

    path = os.path.join(result.export_dir, keys.ASSETS_EXTRA_DIR, keys.WARMUP_FILENAME)
    assert validate_warmup_requests(path, ['serving_default']) == 25
    assert keys.WARMUP_RELPATH in {f['path'] for f in result.manifest['files']}
    assert result.lineage[keys.WARMUP_LINEAGE_KEY] == {'count': 25, 'source': 'written'}
    assert verify_export(result.export_dir).ok


def test_warmup_without_examples_is_refused_before_writing(model_uri, export_base):
    with pytest.raises(InvalidInputError, match='needs the examples input'):
        export(model_uri, export_base, examples=None, warmup_requests=5)
    assert not os.path.exists(export_base)


def test_supplied_warmup_file_is_validated(model_uri, export_base, tmp_path):
    bad = tmp_path / 'warmup'
    bad.write_bytes(b'not a tfrecord')

    with pytest.raises(InvalidInputError, match='warmup'):
        export(model_uri, export_base, assets_extra={keys.WARMUP_FILENAME: str(bad)})
    assert published_versions(os.path.join(export_base, 'penguin')) == []


def test_retention_keeps_the_newest_and_records_what_it_removed(model_uri, export_base):
    versions = [export(model_uri, export_base, examples=None).version for _ in range(3)]

    result = export(model_uri, export_base, examples=None, exports_to_keep=2)

    assert published_versions(os.path.join(export_base, 'penguin')) == [
        str(versions[-1]),
        str(result.version),
    ]
    assert result.lineage[keys.RETENTION_LINEAGE_KEY]['removed_versions'] == versions[:2]


def test_label_on_publish_protects_the_version_from_retention(model_uri, export_base):
    stable = export(model_uri, export_base, examples=None, label='stable')
    for _ in range(2):
        newest = export(model_uri, export_base, examples=None, exports_to_keep=1)

    assert stable.lineage[keys.LABELS_LINEAGE_KEY]['labels'] == {'stable': stable.version}
    assert published_versions(os.path.join(export_base, 'penguin')) == [
        str(stable.version),
        str(newest.version),
    ]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_label_and_rollback_commands(model_uri, export_base):
    versions = [
        export(model_uri, export_base, examples=None, smoke_test=False).version for _ in range(3)
    ]
    model_base = os.path.join(export_base, 'penguin')

    first = cli('label', model_base, str(versions[1]), 'stable', '--json')
    moved = cli('label', model_base, str(versions[2]), 'stable', '--force', '--json')
    back = cli('rollback', model_base, '--json')

    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)['labels'] == {'stable': versions[1]}
    assert json.loads(moved.stdout)['labels'] == {'stable': versions[2]}
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)['labels'] == {'stable': versions[1]}
    assert os.path.isfile(os.path.join(model_base, 'models.config'))


def test_label_of_a_missing_version_exits_2(model_uri, export_base):
    export(model_uri, export_base, examples=None, smoke_test=False)

    run = cli('label', os.path.join(export_base, 'penguin'), '12345', 'stable')

    assert run.returncode == 2
    assert '12345' in run.stderr and len(run.stderr.strip().splitlines()) == 1
