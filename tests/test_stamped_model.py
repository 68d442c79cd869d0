"""Parity with the Pusher: without `model`, export the InfraValidator's stamped model.

The blessing is made by the real InfraValidator executor's own code
(`_CreateWarmupModel`, `_mark_blessed`): `<blessing>/stamped_model/` holds the
validated SavedModel plus `assets.extra/tf_serving_warmup_requests`, and the
blessing has `blessed` = 1 and `has_model` = 1.
"""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tfx import types
from tfx.components.infra_validator import executor as infra_validator
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts

from final_exporter import FinalExporter
from final_exporter.adapters import cli
from final_exporter.adapters.tfx.executor import Executor
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.verify import verify_export

from conftest import KERAS_MODEL, assert_nothing_written, penguin_examples, tree_files


def infra_blessing_as_written(uri: str, make_warmup: bool) -> standard_artifacts.InfraBlessing:
    """An InfraBlessing as InfraValidator writes it after a successful validation."""
    blessing = standard_artifacts.InfraBlessing()
    blessing.uri = uri
    blessing.id = 21
    os.makedirs(uri, exist_ok=True)
    if make_warmup:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = 'serving_default'
        request.inputs['examples'].CopyFrom(
            tf.make_tensor_proto(penguin_examples(2), dtype=tf.string)
        )
        infra_validator.Executor()._CreateWarmupModel(
            blessing, os.path.join(KERAS_MODEL, 'Format-Serving'), warmup_requests=[request]
        )
    infra_validator._mark_blessed(blessing)
    return blessing


@pytest.fixture
def stamped_blessing(tmp_path) -> standard_artifacts.InfraBlessing:
    return infra_blessing_as_written(
        str(tmp_path / 'InfraValidator' / 'blessing' / '5'), make_warmup=True
    )


def _run_executor(tmp_path, blessing, export_base, **params):
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / 'FinalExporter' / 'pushed_model' / '1')
    Executor(base_beam_executor.BaseBeamExecutor.Context()).Do(
        {keys.INFRA_BLESSING_KEY: [blessing]},
        {keys.PUSHED_MODEL_KEY: [pushed]},
        {'name': 'penguin', 'export_base': export_base, **params},
    )
    return pushed


def test_stamped_model_is_exported_with_its_warmup_requests(
    tmp_path, stamped_blessing, export_base
):
    pushed = _run_executor(tmp_path, stamped_blessing, export_base)

    stamped = os.path.join(stamped_blessing.uri, keys.STAMPED_MODEL_DIR)
    export_dir = pushed.get_string_custom_property(keys.PUSHED_DESTINATION_KEY)
    assert verify_export(export_dir).ok
    exported = tree_files(export_dir)
    exported.pop(keys.MANIFEST_RELPATH)
    assert exported == tree_files(stamped)
    assert keys.WARMUP_RELPATH in exported
    assert pushed.get_string_custom_property(keys.SOURCE_MODEL_URI_KEY) == stamped
    # The smoke test replayed InfraValidator's warmup requests and the lineage says so.
    warmup = json.loads(pushed.get_string_custom_property(keys.WARMUP_LINEAGE_KEY))
    assert warmup == {'count': 1, 'source': 'supplied'}


def test_infra_blessing_without_a_stamped_model_is_refused_with_the_reason(tmp_path, export_base):
    blessing = infra_blessing_as_written(str(tmp_path / 'InfraValidator' / 'blessing' / '6'), False)

    with pytest.raises(InvalidInputError, match=r'holds no model \(has_model=0\).*make_warmup'):
        _run_executor(tmp_path, blessing, export_base)

    assert_nothing_written(export_base)


def test_component_takes_the_infra_blessing_alone_and_explains_when_both_are_missing():
    channel = types.Channel(type=standard_artifacts.InfraBlessing)

    exporter = FinalExporter(infra_blessing=channel, name='penguin', export_base='/srv/models')

    assert exporter.spec.inputs[keys.INFRA_BLESSING_KEY] is channel
    with pytest.raises(ValueError, match='stamped model'):
        FinalExporter(name='penguin', export_base='/srv/models', require_blessing=False)


def test_cli_exports_the_stamped_model_of_an_infra_blessing_folder(
    stamped_blessing, export_base, capsys
):
    code = cli.main(
        [
            'export',
            '--infra-blessing',
            stamped_blessing.uri,
            '--name',
            'penguin',
            '--export-base',
            export_base,
            '--no-smoke-test',
            '--json',
        ]
    )

    assert code == cli.EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary['lineage'][keys.SOURCE_MODEL_URI_KEY] == os.path.join(
        stamped_blessing.uri, keys.STAMPED_MODEL_DIR
    )
    assert os.path.isfile(os.path.join(summary['export_dir'], keys.WARMUP_RELPATH))


def test_cli_without_model_names_what_is_missing(tmp_path, make_blessing, export_base, capsys):
    infra = make_blessing(infra=True)

    assert cli.main(['export', '--name', 'p', '--export-base', export_base]) == cli.EXIT_BAD_INPUT
    assert '--model is required' in capsys.readouterr().err
    code = cli.main(
        ['export', '--infra-blessing', infra, '--name', 'p', '--export-base', export_base]
    )
    assert code == cli.EXIT_BAD_INPUT
    assert 'no stamped_model folder' in capsys.readouterr().err
    assert_nothing_written(export_base)
