"""The executor with real TFX artifacts on temporary folders."""

from __future__ import annotations

import json
import os

import pytest
from tfx.dsl.components.base import base_beam_executor
from tfx.proto.orchestration import pipeline_pb2
from tfx.types import standard_artifacts

from final_exporter.adapters.tfx.executor import Executor
from final_exporter.common import keys
from final_exporter.common.errors import BlessingMismatchError, InvalidInputError
from final_exporter.core.config import ExportConfig
from final_exporter.storage.verify import verify_export

from conftest import assert_exported_copy, assert_nothing_written, published_versions

MODEL_ID = 7


def model_artifact(uri: str, artifact_id: int = MODEL_ID) -> standard_artifacts.Model:
    model = standard_artifacts.Model()
    model.uri = uri
    model.id = artifact_id
    return model


def blessing_artifact(
    uri: str, blessed=1, model_id=MODEL_ID, infra: bool = False, artifact_id: int = 11
):
    blessing = standard_artifacts.InfraBlessing() if infra else standard_artifacts.ModelBlessing()
    blessing.uri = uri
    blessing.id = artifact_id
    if isinstance(blessed, float):
        blessing.set_float_custom_property(keys.BLESSED_PROPERTY, blessed)
    elif blessed is not None:
        blessing.set_int_custom_property(keys.BLESSED_PROPERTY, blessed)
    if model_id is not None and not infra:
        blessing.set_int_custom_property(keys.CURRENT_MODEL_ID_PROPERTY, model_id)
    return blessing


@pytest.fixture
def run(tmp_path, model_uri, export_base):
    """Runs the executor once; returns the PushedModel artifact."""

    executions = iter(range(1, 1000))

    def do(*, blessings=(), model=None, beam_pipeline_args=None, run_id=None, **params):
        params.setdefault('name', 'penguin')
        params.setdefault('export_base', export_base)
        pushed = standard_artifacts.PushedModel()
        execution = next(executions)
        pushed.uri = str(tmp_path / 'FinalExporter' / 'pushed_model' / str(execution))
        input_dict = {keys.MODEL_KEY: [model or model_artifact(model_uri)]}
        for b in blessings:
            kind = (
                keys.INFRA_BLESSING_KEY
                if isinstance(b, standard_artifacts.InfraBlessing)
                else keys.MODEL_BLESSING_KEY
            )
            input_dict[kind] = [b]
        context = base_beam_executor.BaseBeamExecutor.Context(
            beam_pipeline_args=beam_pipeline_args,
            pipeline_info=pipeline_pb2.PipelineInfo(id='penguin-pipeline'),
            pipeline_run_id=run_id or f'run-{execution}',
        )
        Executor(context).Do(
            input_dict,
            {keys.PUSHED_MODEL_KEY: [pushed]},
            ExportConfig(**params).to_exec_properties(),
        )
        return pushed

    return do


def assert_pushed(pushed, export_base: str) -> str:
    """The PushedModel says pushed and points at a complete, verified export."""
    assert pushed.get_int_custom_property(keys.PUSHED_KEY) == 1
    destination = pushed.get_string_custom_property(keys.PUSHED_DESTINATION_KEY)
    version = pushed.get_string_custom_property(keys.PUSHED_VERSION_KEY)
    assert destination == os.path.join(export_base, 'penguin', version)
    report = verify_export(destination)
    assert report.ok, report.problems()
    assert pushed.get_string_custom_property(keys.MANIFEST_SHA256_KEY) == report.manifest_sha256
    # The PushedModel folder holds the record, not a second copy of the model.
    assert sorted(os.listdir(pushed.uri)) == [
        keys.MANIFEST_FILENAME,
        keys.LINEAGE_FILENAME,
        keys.REPORT_FILENAME,
    ]
    return destination


def assert_not_pushed(pushed, reason_part: str) -> None:
    assert pushed.get_int_custom_property(keys.PUSHED_KEY) == 0
    assert reason_part in pushed.get_string_custom_property(keys.NOT_PUSHED_REASON_KEY)
    assert not pushed.has_custom_property(keys.PUSHED_DESTINATION_KEY)
    with open(os.path.join(pushed.uri, keys.REPORT_FILENAME)) as f:
        assert 'Not exported' in f.read()


def test_blessed_model_is_exported_with_lineage(run, export_base, tmp_path, model_uri):
    blessing = blessing_artifact(str(tmp_path / 'blessing'))

    pushed = run(blessings=[blessing])

    destination = assert_pushed(pushed, export_base)
    assert pushed.get_string_custom_property(keys.SOURCE_MODEL_URI_KEY) == model_uri
    assert pushed.get_string_custom_property(keys.SOURCE_MODEL_ID_KEY) == str(MODEL_ID)
    assert pushed.get_string_custom_property(keys.MODEL_BLESSING_ID_KEY) == '11'
    assert pushed.get_string_custom_property(keys.PIPELINE_NAME_KEY) == 'penguin-pipeline'
    assert pushed.get_string_custom_property(keys.PIPELINE_RUN_ID_KEY).startswith('run-')
    assert pushed.get_string_custom_property(keys.EXPORT_FORMAT_KEY) == 'pb'
    assert json.loads(pushed.get_string_custom_property(keys.SIGNATURE_NAMES_KEY)) == [
        'serving_default'
    ]
    assert pushed.get_int_custom_property(keys.FILE_COUNT_KEY) == 3
    with open(os.path.join(pushed.uri, keys.LINEAGE_FILENAME)) as f:
        assert json.load(f)['export_dir'] == destination


def test_not_blessed_records_reason_and_writes_nothing(run, export_base, tmp_path):
    pushed = run(blessings=[blessing_artifact(str(tmp_path / 'b'), blessed=0)])

    assert_not_pushed(pushed, 'not blessed')
    assert_nothing_written(export_base)


def test_infra_not_blessed_blocks_export(run, export_base, tmp_path):
    pushed = run(
        blessings=[
            blessing_artifact(str(tmp_path / 'b')),
            blessing_artifact(str(tmp_path / 'i'), blessed=0, infra=True, artifact_id=12),
        ]
    )

    assert_not_pushed(pushed, keys.INFRA_BLESSING_KEY)
    assert_nothing_written(export_base)


def test_blessed_as_float_from_vertex_counts_as_blessed(run, export_base, tmp_path):
    pushed = run(blessings=[blessing_artifact(str(tmp_path / 'b'), blessed=1.0)])

    assert_pushed(pushed, export_base)


def test_blessing_made_for_another_model_fails(run, export_base, tmp_path):
    with pytest.raises(BlessingMismatchError, match='made for model id 99'):
        run(blessings=[blessing_artifact(str(tmp_path / 'b'), model_id=99)])
    assert_nothing_written(export_base)


def test_blessing_without_blessed_property_fails(run, export_base, tmp_path):
    with pytest.raises(InvalidInputError, match="no 'blessed' property"):
        run(blessings=[blessing_artifact(str(tmp_path / 'b'), blessed=None)])
    assert_nothing_written(export_base)


def test_no_blessing_exports_only_with_require_blessing_false(run, export_base):
    with pytest.raises(InvalidInputError, match='require_blessing=False'):
        run()
    assert_nothing_written(export_base)

    assert_pushed(run(require_blessing=False), export_base)


def test_as_text_and_assets_extra(run, export_base, tmp_path):
    classes = tmp_path / 'classes.txt'
    classes.write_text('Adelie\nChinstrap\nGentoo\n')

    pushed = run(
        blessings=[blessing_artifact(str(tmp_path / 'b'))],
        as_text=True,
        assets_extra={'labels/classes.txt': str(classes)},
    )

    destination = assert_pushed(pushed, export_base)
    assert os.path.isfile(os.path.join(destination, 'saved_model.pbtxt'))
    assert not os.path.exists(os.path.join(destination, 'saved_model.pb'))
    with open(os.path.join(destination, 'assets.extra', 'labels', 'classes.txt')) as f:
        assert f.read() == classes.read_text()
    assert json.loads(pushed.get_string_custom_property(keys.ASSETS_EXTRA_FILES_KEY)) == [
        'labels/classes.txt'
    ]


def test_serving_fn_reexport(run, export_base, tmp_path):
    module = tmp_path / 'serving.py'
    module.write_text(
        "def serving_fn(loaded):\n    return {'predict': loaded.signatures['serving_default']}\n"
    )

    pushed = run(
        blessings=[blessing_artifact(str(tmp_path / 'b'))],
        serving_fn=f'{module}:serving_fn',
        signature_name='predict',
    )

    assert_pushed(pushed, export_base)
    assert json.loads(pushed.get_string_custom_property(keys.SIGNATURE_NAMES_KEY)) == ['predict']
    smoke = json.loads(pushed.get_string_custom_property(keys.SMOKE_TEST_LINEAGE_KEY))
    assert smoke['passed'] and smoke['signature_name'] == 'predict'


def test_export_without_the_checked_signature_is_not_published(run, export_base, tmp_path):
    module = tmp_path / 'serving.py'
    module.write_text(
        "def serving_fn(loaded):\n    return {'predict': loaded.signatures['serving_default']}\n"
    )

    with pytest.raises(InvalidInputError, match="has no signature 'serving_default'"):
        run(blessings=[blessing_artifact(str(tmp_path / 'b'))], serving_fn=f'{module}:serving_fn')
    assert published_versions(os.path.join(export_base, 'penguin')) == []


def test_bad_model_folder_fails_with_nothing_written(run, export_base, tmp_path):
    empty = tmp_path / 'empty_model'
    empty.mkdir()

    with pytest.raises(InvalidInputError, match='holds no SavedModel'):
        run(
            model=model_artifact(str(empty)),
            blessings=[blessing_artifact(str(tmp_path / 'b'))],
        )
    assert_nothing_written(export_base)


def test_two_exports_in_the_same_second_get_distinct_versions(run, export_base, tmp_path):
    first = run(blessings=[blessing_artifact(str(tmp_path / 'b'))])
    second = run(blessings=[blessing_artifact(str(tmp_path / 'b'))])

    v1 = int(first.get_string_custom_property(keys.PUSHED_VERSION_KEY))
    v2 = int(second.get_string_custom_property(keys.PUSHED_VERSION_KEY))
    assert v2 > v1
    assert published_versions(os.path.join(export_base, 'penguin')) == [str(v1), str(v2)]


def test_beam_pipeline_args_fan_the_copy_out_with_beam(run, export_base, tmp_path, model_uri):
    pushed = run(
        blessings=[blessing_artifact(str(tmp_path / 'b'))],
        beam_pipeline_args=['--runner=DirectRunner', '--direct_num_workers=1'],
    )

    destination = assert_pushed(pushed, export_base)
    assert_exported_copy(destination, os.path.join(model_uri, 'Format-Serving'))
    assert [n for n in os.listdir(os.path.join(export_base, 'penguin')) if '.beam' in n] == []


def test_retry_of_the_same_execution_reports_its_export_instead_of_a_second(
    run, export_base, tmp_path
):
    blessing = blessing_artifact(str(tmp_path / 'b'))
    first = run(blessings=[blessing], run_id='run-7')
    retry = run(blessings=[blessing], run_id='run-7')
    other_run = run(blessings=[blessing], run_id='run-8')

    version = first.get_string_custom_property(keys.PUSHED_VERSION_KEY)
    assert retry.get_string_custom_property(keys.PUSHED_VERSION_KEY) == version
    assert (
        retry.get_string_custom_property(keys.IDEMPOTENCY_KEY_KEY)
        == 'penguin-pipeline/run-7/FinalExporter'
    )
    with open(os.path.join(retry.uri, keys.LINEAGE_FILENAME)) as f:
        assert 'already exported by this execution' in json.load(f)['reason']
    assert other_run.get_string_custom_property(keys.PUSHED_VERSION_KEY) != version
    assert len(published_versions(os.path.join(export_base, 'penguin'))) == 2


def test_bucket_uris_are_read_through_the_container_mount(monkeypatch, tmp_path):
    from final_exporter.adapters.tfx import executor

    mount = tmp_path / 'gcs'
    (mount / 'bucket' / 'model').mkdir(parents=True)
    monkeypatch.setitem(executor._CONTAINER_MOUNTS, 'gs://', f'{mount}/')

    assert executor.container_path('gs://bucket/model') == f'{mount}/bucket/model'
    assert executor.container_path('gs://bucket/missing') == 'gs://bucket/missing'
    assert executor.container_path('/local/model') == '/local/model'
