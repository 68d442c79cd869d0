"""The export core (`run_export`) on real SavedModels and real folders."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from unittest import mock

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import BlessingMismatchError, IntegrityError, InvalidInputError
from final_exporter.core.blessing import Blessing, blessing_from_folder
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.core.staging import reread_staging
from final_exporter.storage.manifest import CHUNK_BYTES, build_manifest
from final_exporter.storage.types import FileEntry
from final_exporter.storage.verify import verify_export

from conftest import (
    ESTIMATOR_MODEL,
    assert_exported_copy,
    assert_no_staging_left,
    assert_nothing_written,
    penguin_examples,
    published_versions,
)

FIXED_NOW = 1_700_000_000.0


def fixed_clock() -> float:
    return FIXED_NOW


def export(model_uri, export_base, blessings=(), **config) -> ExportResult:
    config.setdefault('name', 'penguin')
    return run_export(
        ExportRequest(
            config=ExportConfig(export_base=export_base, **config),
            model_uri=model_uri,
            blessings=blessings,
        ),
        clock=fixed_clock,
    )


def assert_pushed(result: ExportResult, export_base: str, version: int | None = None) -> None:
    assert result.pushed, result.reason
    assert result.export_dir == os.path.join(export_base, 'penguin', str(result.version))
    if version is not None:
        assert result.version == version
    assert os.path.isdir(result.export_dir)
    report = verify_export(result.export_dir)
    assert report.ok, report.problems()
    assert report.manifest_sha256 == result.manifest_sha256
    assert_no_staging_left(os.path.dirname(result.export_dir))


def blessed(make_blessing, ok=True, infra=False) -> Blessing:
    kind = keys.INFRA_BLESSING_KEY if infra else keys.MODEL_BLESSING_KEY
    return blessing_from_folder(kind, make_blessing(blessed=ok, infra=infra))


def test_blessed_model_is_copied_byte_for_byte(model_uri, export_base, make_blessing):
    result = export(model_uri, export_base, [blessed(make_blessing)])

    assert_pushed(result, export_base, version=int(FIXED_NOW))
    assert_exported_copy(result.export_dir, os.path.join(model_uri, 'Format-Serving'))
    assert result.lineage[keys.SIGNATURE_NAMES_KEY] == ['serving_default']
    assert result.lineage[keys.EXPORT_FORMAT_KEY] == 'pb'


def test_published_version_is_readable_by_other_users(model_uri, export_base, make_blessing):
    old = os.umask(0o022)
    try:
        result = export(model_uri, export_base, [blessed(make_blessing)])
    finally:
        os.umask(old)

    assert os.stat(result.export_dir).st_mode & 0o755 == 0o755


def test_not_blessed_writes_nothing_and_says_why(model_uri, export_base, make_blessing):
    result = export(model_uri, export_base, [blessed(make_blessing, ok=False)])

    assert not result.pushed
    assert 'not blessed' in result.reason
    assert result.properties()[keys.PUSHED_KEY] == 0
    assert result.properties()[keys.NOT_PUSHED_REASON_KEY] == result.reason
    assert_nothing_written(export_base)


def test_infra_not_blessed_blocks_a_blessed_model(model_uri, export_base, make_blessing):
    result = export(
        model_uri,
        export_base,
        [blessed(make_blessing), blessed(make_blessing, ok=False, infra=True)],
    )

    assert not result.pushed
    assert keys.INFRA_BLESSING_KEY in result.reason
    assert_nothing_written(export_base)


def test_blessing_for_another_model_fails_before_writing(model_uri, export_base):
    other = Blessing(keys.MODEL_BLESSING_KEY, '/b', blessed=True, model_id='41')
    request = ExportRequest(
        config=ExportConfig(name='penguin', export_base=export_base),
        model_uri=model_uri,
        model_id='42',
        blessings=[other],
    )

    with pytest.raises(BlessingMismatchError, match=r'model id 41.*has id 42'):
        run_export(request)
    assert_nothing_written(export_base)


def test_no_blessing_requires_explicit_opt_out(model_uri, export_base):
    with pytest.raises(InvalidInputError, match='require_blessing=False'):
        export(model_uri, export_base)
    assert_nothing_written(export_base)

    result = export(model_uri, export_base, require_blessing=False)
    assert_pushed(result, export_base)
    assert 'without a blessing' in result.reason


def test_two_exports_in_the_same_second_get_two_versions(model_uri, export_base, make_blessing):
    first = export(model_uri, export_base, [blessed(make_blessing)])
    second = export(model_uri, export_base, [blessed(make_blessing)])

    assert (first.version, second.version) == (int(FIXED_NOW), int(FIXED_NOW) + 1)
    assert_pushed(second, export_base)
    assert published_versions(os.path.join(export_base, 'penguin')) == [
        str(first.version),
        str(second.version),
    ]


def test_version_goes_past_a_newer_existing_version(model_uri, export_base, make_blessing):
    os.makedirs(os.path.join(export_base, 'penguin', str(int(FIXED_NOW) + 100)))

    result = export(model_uri, export_base, [blessed(make_blessing)])

    assert result.version == int(FIXED_NOW) + 101


def test_assets_extra_land_in_assets_extra(model_uri, export_base, make_blessing, tmp_path):
    classes = tmp_path / 'classes.txt'
    classes.write_text('Adelie\nChinstrap\nGentoo\n')
    vocab = tmp_path / 'vocab.txt'
    vocab.write_bytes(b'\x00\x01binary')

    result = export(
        model_uri,
        export_base,
        [blessed(make_blessing)],
        assets_extra={'labels/classes.txt': str(classes), 'vocab.txt': str(vocab)},
    )

    assert_pushed(result, export_base)
    assert_exported_copy(
        result.export_dir,
        os.path.join(model_uri, 'Format-Serving'),
        extra={
            os.path.join('labels', 'classes.txt'): classes.read_bytes(),
            'vocab.txt': vocab.read_bytes(),
        },
    )
    assert result.lineage[keys.ASSETS_EXTRA_FILES_KEY] == ['labels/classes.txt', 'vocab.txt']


def test_missing_assets_extra_source_fails_before_writing(model_uri, export_base, make_blessing):
    with pytest.raises(
        InvalidInputError, match=re.escape("'labels.txt' is missing: '/nonexistent/x'")
    ):
        export(
            model_uri,
            export_base,
            [blessed(make_blessing)],
            assets_extra={'labels.txt': '/nonexistent/x'},
        )
    assert_nothing_written(export_base)


def test_assets_extra_cannot_overwrite_a_source_file(
    model_uri, export_base, make_blessing, tmp_path
):
    src_extra = os.path.join(model_uri, 'Format-Serving', 'assets.extra')
    os.makedirs(src_extra)
    with open(os.path.join(src_extra, 'tf_serving_warmup_requests'), 'wb') as f:
        f.write(b'warmup')
    other = tmp_path / 'w'
    other.write_text('x')

    with pytest.raises(InvalidInputError, match='already in the source SavedModel'):
        export(
            model_uri,
            export_base,
            [blessed(make_blessing)],
            assets_extra={'tf_serving_warmup_requests': str(other)},
        )
    assert_nothing_written(export_base)


def test_estimator_layout_exports_the_newest_timestamp(export_base, make_blessing, tmp_path):
    model_uri = str(tmp_path / 'model')
    shutil.copytree(ESTIMATOR_MODEL, model_uri)
    saved_model = os.path.join(model_uri, 'Format-Serving', 'export', 'chicago-taxi', '1646034756')
    older = os.path.join(os.path.dirname(saved_model), '1000')
    shutil.copytree(saved_model, older)

    result = export(model_uri, export_base, [blessed(make_blessing)])

    assert_pushed(result, export_base)
    assert result.lineage[keys.SOURCE_SAVED_MODEL_DIR_KEY] == saved_model
    assert_exported_copy(result.export_dir, saved_model)
    assert 'predict' in result.lineage[keys.SIGNATURE_NAMES_KEY]


@pytest.mark.parametrize(
    ('damage', 'message'),
    [
        (lambda d: os.remove(os.path.join(d, 'saved_model.pb')), 'saved_model.pb is missing'),
        (lambda d: _truncate(os.path.join(d, 'saved_model.pb')), 'truncated or corrupt'),
        (lambda d: os.remove(os.path.join(d, 'variables', 'variables.index')), 'variables.index'),
        (
            lambda d: os.remove(os.path.join(d, 'variables', 'variables.data-00000-of-00001')),
            'no variables.data-00000-of-NNNNN shard',
        ),
    ],
    ids=['no-graph', 'truncated-graph', 'no-index', 'missing-shard'],
)
def test_broken_saved_model_is_refused_with_nothing_written(
    model_uri, export_base, make_blessing, damage, message
):
    damage(os.path.join(model_uri, 'Format-Serving'))

    with pytest.raises(InvalidInputError, match=message):
        export(model_uri, export_base, [blessed(make_blessing)])
    assert_nothing_written(export_base)


def _truncate(path: str) -> None:
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def test_failure_after_staging_leaves_no_version(model_uri, export_base, make_blessing, tmp_path):
    module = tmp_path / 'broken_serving.py'
    module.write_text('def serving_fn(loaded):\n    raise RuntimeError("boom in serving_fn")\n')

    with pytest.raises(RuntimeError, match='boom in serving_fn'):
        export(model_uri, export_base, [blessed(make_blessing)], serving_fn=f'{module}:serving_fn')
    model_base = os.path.join(export_base, 'penguin')
    assert published_versions(model_base) == []
    assert_no_staging_left(model_base)


def test_as_text_writes_pbtxt_that_loads(model_uri, export_base, make_blessing):
    import tensorflow as tf

    result = export(model_uri, export_base, [blessed(make_blessing)], as_text=True)

    assert_pushed(result, export_base)
    names = os.listdir(result.export_dir)
    assert 'saved_model.pbtxt' in names
    assert 'saved_model.pb' not in names
    assert result.lineage[keys.EXPORT_FORMAT_KEY] == 'pbtxt'
    loaded = tf.saved_model.load(result.export_dir)
    out = loaded.signatures['serving_default'](examples=tf.constant(penguin_examples(3)))
    assert out['output_0'].shape == (3, 3)
    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'saved_model_cli'), 'show', '--dir',
         result.export_dir, '--tag_set', 'serve', '--signature_def', 'serving_default'],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "inputs['examples']" in cli.stdout


SERVING_FN_MODULE = """
import tensorflow as tf


def serving_fn(loaded):
    predict = loaded.signatures['serving_default']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def doubled(examples):
        return {'doubled': predict(examples=examples)['output_0'] * 2.0}

    return {'serving_default': predict, 'doubled': doubled}
"""


@pytest.mark.parametrize('as_text', [False, True], ids=['pb', 'pbtxt'])
def test_serving_fn_reexports_with_new_signatures(
    model_uri, export_base, make_blessing, tmp_path, as_text
):
    import tensorflow as tf

    module = tmp_path / 'my_serving.py'
    module.write_text(SERVING_FN_MODULE)

    result = export(
        model_uri,
        export_base,
        [blessed(make_blessing)],
        serving_fn=f'{module}:serving_fn',
        as_text=as_text,
    )

    assert_pushed(result, export_base)
    assert result.lineage[keys.SIGNATURE_NAMES_KEY] == ['doubled', 'serving_default']
    assert result.lineage[keys.SERVING_FN_LINEAGE_KEY] == f'{module}:serving_fn'
    examples = tf.constant(penguin_examples(4))
    exported = tf.saved_model.load(result.export_dir)
    source = tf.saved_model.load(os.path.join(model_uri, 'Format-Serving'))
    want = source.signatures['serving_default'](examples=examples)['output_0']
    got = exported.signatures['doubled'](examples=examples)['doubled']
    tf.debugging.assert_near(got, want * 2.0)


def test_serving_fn_that_cannot_be_found_fails_cleanly(model_uri, export_base, make_blessing):
    with pytest.raises(InvalidInputError, match='no_such_module'):
        export(model_uri, export_base, [blessed(make_blessing)], serving_fn='no_such_module:fn')
    assert_no_staging_left(os.path.join(export_base, 'penguin'))
    assert published_versions(os.path.join(export_base, 'penguin')) == []


def test_manifest_records_every_file_and_the_lineage(model_uri, export_base, make_blessing):
    result = run_export(
        ExportRequest(
            config=ExportConfig(name='penguin', export_base=export_base),
            model_uri=model_uri,
            model_id='7',
            blessings=[blessed(make_blessing)],
            extra_lineage={keys.PIPELINE_NAME_KEY: 'p', keys.EVAL_RESULT_KEY: {'accuracy': 0.9}},
        ),
        clock=fixed_clock,
    )

    with open(os.path.join(result.export_dir, keys.MANIFEST_RELPATH)) as f:
        manifest = json.load(f)
    assert manifest == result.manifest
    assert {f['path'] for f in manifest['files']} == {
        'saved_model.pb',
        'variables/variables.index',
        'variables/variables.data-00000-of-00001',
    }
    lineage = manifest['lineage']
    assert lineage[keys.SOURCE_MODEL_ID_KEY] == '7'
    assert lineage[keys.PIPELINE_NAME_KEY] == 'p'
    assert lineage[keys.EVAL_RESULT_KEY] == {'accuracy': 0.9}
    assert lineage[keys.EXPORTED_AT_KEY] == '2023-11-14T22:13:20Z'
    props = result.properties()
    assert props[keys.PUSHED_KEY] == 1
    assert props[keys.PUSHED_VERSION_KEY] == str(result.version)
    assert props[keys.PUSHED_DESTINATION_KEY] == result.export_dir
    assert props[keys.EVAL_RESULT_KEY] == '{"accuracy": 0.9}'
    assert props[keys.FILE_COUNT_KEY] == 3


def test_beam_runs_only_when_the_args_ask_for_a_runner():
    from final_exporter.core.serving_checks import beam_requested

    assert beam_requested(['--runner=DataflowRunner', '--project=p'])
    assert beam_requested(['--direct_running_mode=multi_processing'])
    assert not beam_requested([])
    # What TFX and the KFP v2 entrypoint add on their own.
    assert not beam_requested(['--extra_package=/tmp/tfx.tar.gz', '/path/to/entrypoint.py'])


def test_paranoid_verify_reads_every_staged_file_back_from_disk(
    model_uri, export_base, make_blessing, caplog
):
    caplog.set_level(logging.INFO, logger='final_exporter.core')
    with mock.patch.object(
        os, 'posix_fadvise', autospec=True, side_effect=os.posix_fadvise
    ) as fadvise:
        result = export(
            model_uri, export_base, [blessed(make_blessing)], paranoid_verify=True, smoke_test=False
        )

    assert_pushed(result, export_base)
    dropped = [c.args for c in fadvise.call_args_list if c.args[3] == os.POSIX_FADV_DONTNEED]
    assert len(dropped) == result.file_count + 1  # and the manifest
    read_back = [r.getMessage() for r in caplog.records if 'Paranoid verify' in r.getMessage()]
    assert len(read_back) == 1
    assert f'read back {result.file_count} files ({result.total_bytes} bytes)' in read_back[0]


def test_paranoid_verify_names_a_file_that_reads_back_different(tmp_path):
    staging = tmp_path / 'staging'
    (staging / 'variables').mkdir(parents=True)
    data = {'saved_model.pb': b'graph' * 100, 'variables/variables.index': b'index' * 7}
    for rel, content in data.items():
        (staging / rel).write_bytes(content)
    manifest = build_manifest(
        [FileEntry(rel, len(c), hashlib.sha256(c).hexdigest()) for rel, c in data.items()], {}
    )
    with open(staging / 'variables' / 'variables.index', 'r+b') as f:
        f.write(b'X')  # what a bad disk or a stray writer would do between write and publish

    with pytest.raises(IntegrityError, match=r'paranoid verify.*variables/variables\.index'):
        reread_staging(str(staging), manifest)


def test_paranoid_verify_rereads_a_chunked_file_and_names_it_when_a_chunk_differs(tmp_path):
    staging = tmp_path / 'staging'
    (staging / 'variables').mkdir(parents=True)
    data = os.urandom(2 * CHUNK_BYTES + 5)
    rel = 'variables/variables.data-00000-of-00001'
    (staging / rel).write_bytes(data)
    parts = [data[o : o + CHUNK_BYTES] for o in range(0, len(data), CHUNK_BYTES)]
    chunked = hashlib.sha256(b''.join(hashlib.sha256(p).digest() for p in parts)).hexdigest()
    manifest = build_manifest([FileEntry(rel, len(data), '', chunked)], {})

    reread_staging(str(staging), manifest)  # intact: passes
    with open(staging / rel, 'r+b') as f:
        f.seek(CHUNK_BYTES + 3)  # the second chunk
        f.write(bytes([data[CHUNK_BYTES + 3] ^ 1]))

    with pytest.raises(IntegrityError, match=r'paranoid verify.*variables\.data-00000-of-00001'):
        reread_staging(str(staging), manifest)
