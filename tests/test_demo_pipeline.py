"""End to end: the demo pipeline on LocalDagRunner, then the export, served and traced."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from final_exporter.common import keys
from final_exporter.storage.verify import verify_export
from pipelines import local_runner

from conftest import penguin_examples

pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """Runs `python -m pipelines.local_runner` in-process once; returns its output folder."""
    out = tmp_path_factory.mktemp('demo')
    assert local_runner.main(['--output-dir', str(out)]) == 0
    return out


@pytest.fixture(scope='module')
def store(demo):
    config = metadata.sqlite_metadata_connection_config(str(demo / 'metadata.db'))
    return metadata_store.MetadataStore(config)


def only(items):
    items = list(items)
    assert len(items) == 1, items
    return items[0]


def props(artifact) -> dict:
    out = {}
    for name, value in artifact.custom_properties.items():
        out[name] = getattr(value, value.WhichOneof('value'))
    return out


def test_export_loads_and_predicts_on_real_examples(demo, store):
    import tensorflow as tf

    pushed = props(only(store.get_artifacts_by_type('PushedModel')))
    assert pushed[keys.PUSHED_KEY] == 1
    export_dir = pushed[keys.PUSHED_DESTINATION_KEY]
    assert export_dir == str(demo / 'serving' / 'penguin' / pushed[keys.PUSHED_VERSION_KEY])

    loaded = tf.saved_model.load(export_dir)
    predict = loaded.signatures['serving_default']
    outputs = predict(examples=tf.constant(penguin_examples(8)))
    (scores,) = outputs.values()
    assert scores.shape == (8, 3)
    tf.debugging.assert_near(tf.reduce_sum(scores, axis=1), tf.ones(8), atol=1e-4)
    labels = loaded.signatures['classify'](examples=tf.constant(penguin_examples(8)))['label']
    assert set(labels.numpy().astype(str)) <= {'Adelie', 'Chinstrap', 'Gentoo'}
    warmup = os.path.join(export_dir, 'assets.extra', 'tf_serving_warmup_requests')
    assert os.path.getsize(warmup) > 0

    assert verify_export(export_dir).ok
    with open(os.path.join(export_dir, 'assets.extra', 'labels', 'classes.txt')) as f:
        assert f.read().split() == ['Adelie', 'Chinstrap', 'Gentoo']


def test_mlmd_links_model_to_execution_to_pushed_model(store):
    pushed = only(store.get_artifacts_by_type('PushedModel'))
    model = only(store.get_artifacts_by_type('Model'))
    blessing = only(store.get_artifacts_by_type('ModelBlessing'))
    evaluation = only(store.get_artifacts_by_type('ModelEvaluation'))

    output_event = only(
        e
        for e in store.get_events_by_artifact_ids([pushed.id])
        if e.type == metadata_store_pb2.Event.OUTPUT
    )
    execution = only(store.get_executions_by_id([output_event.execution_id]))
    execution_type = only(store.get_execution_types_by_id([execution.type_id]))
    assert execution_type.name.endswith('FinalExporter')
    inputs = {
        e.path.steps[0].key: e.artifact_id
        for e in store.get_events_by_execution_ids([execution.id])
        if e.type == metadata_store_pb2.Event.INPUT
    }
    examples = only(store.get_artifacts_by_type('Examples'))
    assert inputs == {
        keys.MODEL_KEY: model.id,
        keys.MODEL_BLESSING_KEY: blessing.id,
        keys.MODEL_EVALUATION_KEY: evaluation.id,
        keys.EXAMPLES_KEY: examples.id,
    }

    p = props(pushed)
    assert p[keys.SOURCE_MODEL_URI_KEY] == model.uri
    assert p[keys.SOURCE_MODEL_ID_KEY] == str(model.id)
    assert p[keys.MODEL_BLESSING_ID_KEY] == str(blessing.id)
    assert p[keys.MODEL_EVALUATION_ID_KEY] == str(evaluation.id)
    assert p[keys.PIPELINE_NAME_KEY] == local_runner.PIPELINE_NAME
    assert p[keys.PIPELINE_RUN_ID_KEY]
    assert p[keys.EXPORT_NAME_KEY] == 'penguin'
    assert p[keys.EXPORT_FORMAT_KEY] == 'pb'
    assert json.loads(p[keys.SIGNATURE_NAMES_KEY]) == ['classify', 'serving_default']
    assert json.loads(p[keys.SMOKE_TEST_LINEAGE_KEY])['passed']
    assert json.loads(p[keys.PARITY_LINEAGE_KEY])['ok']
    assert json.loads(p[keys.PARITY_LINEAGE_KEY])['examples'] == 50
    assert json.loads(p[keys.WARMUP_LINEAGE_KEY]) == {'count': 100, 'source': 'written'}
    assert json.loads(p[keys.RETENTION_LINEAGE_KEY])['exports_to_keep'] == 3
    assert json.loads(p[keys.ASSETS_EXTRA_FILES_KEY]) == [
        'labels/classes.txt',
        'tf_serving_warmup_requests',
    ]
    eval_result = json.loads(p[keys.EVAL_RESULT_KEY])
    assert eval_result['sparse_categorical_accuracy'] >= 0.6
    assert eval_result['example_count'] > 0
    assert p[keys.FILE_COUNT_KEY] > 0 and p[keys.TOTAL_BYTES_KEY] > 0

    with open(os.path.join(pushed.uri, keys.MANIFEST_FILENAME), 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == p[keys.MANIFEST_SHA256_KEY]
    assert (
        verify_export(p[keys.PUSHED_DESTINATION_KEY]).manifest_sha256 == p[keys.MANIFEST_SHA256_KEY]
    )


def test_runner_describes_the_push(demo, capsys):
    description = local_runner.describe_latest_push(str(demo / 'metadata.db'))

    assert description[keys.PUSHED_KEY] == 1
    assert description['producer'].endswith('FinalExporter')
    assert any(
        'Exported model' in line for line in local_runner.format_push_description(description)
    )
