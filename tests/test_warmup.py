"""TensorFlow Serving warmup files, written and checked with the tensorflow-serving-api protos."""

from __future__ import annotations

import glob
import gzip
import os
import shutil

import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
)

from final_exporter.checks.synthetic import synthetic_example
from final_exporter.checks.warmup import (
    WARMUP_RELPATH,
    read_warmup_requests,
    replay_warmup_requests,
    validate_warmup_requests,
    write_warmup_requests,
)
from final_exporter.common.errors import InvalidInputError

from conftest import ESTIMATOR_MODEL, penguin_examples


@pytest.fixture
def export_dir(model_uri) -> str:
    return os.path.join(model_uri, 'Format-Serving')


def warmup_path(export_dir: str) -> str:
    return os.path.join(export_dir, WARMUP_RELPATH)


def write_records(path: str, records: list[bytes]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def predict_log(signature: str = 'serving_default', inputs: dict | None = None) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = signature
    for name, values in (inputs or {'examples': penguin_examples(1)}).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )
    return log.SerializeToString()


def classify_log(examples: list[bytes], signature: str = 'serving_default') -> bytes:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.signature_name = signature
    for serialized in examples:
        request.input.example_list.examples.add().ParseFromString(serialized)
    log = prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )
    return log.SerializeToString()


def test_written_file_reads_back_as_one_prediction_log_per_example(export_dir):
    path = warmup_path(export_dir)
    examples = penguin_examples(5)

    count = write_warmup_requests(path, examples, model_name='penguin')

    assert count == 5
    # Read as TensorFlow Serving does: an uncompressed TFRecord of PredictionLog.
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert len(records) == 5
    for record, example in zip(records, examples, strict=True):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == (
            'penguin',
            'serving_default',
        )
        assert list(request.inputs) == ['examples']
        assert tf.make_ndarray(request.inputs['examples']).tolist() == [example]
    assert os.listdir(os.path.dirname(path)) == ['tf_serving_warmup_requests']


def test_written_requests_answer_through_the_models_signature(export_dir):
    path = warmup_path(export_dir)
    write_warmup_requests(path, penguin_examples(4), batch_size=2)
    serving = tf.saved_model.load(export_dir).signatures['serving_default']

    for log in read_warmup_requests(path):
        feed = {
            k: tf.constant(tf.make_ndarray(v)) for k, v in log.predict_log.request.inputs.items()
        }
        assert serving(**feed)['output_0'].shape == (2, 3)
    assert replay_warmup_requests(export_dir) == 2


def test_batches_and_the_record_limit_bound_what_is_written(tmp_path):
    examples = penguin_examples(10)

    assert write_warmup_requests(str(tmp_path / 'a'), examples, batch_size=3, limit=2) == 2
    sizes = [
        len(tf.make_ndarray(log.predict_log.request.inputs['examples']))
        for log in read_warmup_requests(str(tmp_path / 'a'))
    ]
    assert sizes == [3, 3]
    assert write_warmup_requests(str(tmp_path / 'b'), examples, batch_size=4) == 3
    assert write_warmup_requests(str(tmp_path / 'c'), examples * 101) == 1000


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'examples': []}, 'no examples'),
        ({'limit': 0}, 'from 1 to 1000'),
        ({'limit': 1001}, 'from 1 to 1000'),
        ({'batch_size': 0}, 'batch_size must be a positive integer'),
        ({'input_name': ''}, 'input_name'),
    ],
)
def test_bad_write_arguments_are_refused(tmp_path, kwargs, message):
    args = {'examples': penguin_examples(2), **kwargs}

    with pytest.raises(InvalidInputError, match=message):
        write_warmup_requests(str(tmp_path / 'w'), **args)
    assert os.listdir(tmp_path) == []


def test_existing_warmup_file_is_never_replaced(tmp_path):
    path = tmp_path / 'tf_serving_warmup_requests'
    path.write_bytes(b'user supplied')

    with pytest.raises(InvalidInputError, match='already exists; validate it'):
        write_warmup_requests(str(path), penguin_examples(2))
    assert path.read_bytes() == b'user supplied'


def test_validate_counts_requests_and_checks_their_inputs(tmp_path):
    path = write_records(str(tmp_path / 'w'), [predict_log(), predict_log('')])

    assert validate_warmup_requests(path, ['serving_default']) == 2
    assert (
        validate_warmup_requests(
            path, ['serving_default'], signature_inputs={'serving_default': ['examples']}
        )
        == 2
    )
    with pytest.raises(
        InvalidInputError, match=r"feeds inputs \['examples'\] .* takes \['inputs'\]"
    ):
        validate_warmup_requests(
            path, ['serving_default'], signature_inputs={'serving_default': ['inputs']}
        )


def test_exactly_1000_records_are_accepted_and_1001_refused(tmp_path):
    record = predict_log()
    ok = write_records(str(tmp_path / 'ok'), [record] * 1000)
    too_many = write_records(str(tmp_path / 'too_many'), [record] * 1001)

    assert validate_warmup_requests(ok, ['serving_default']) == 1000
    with pytest.raises(InvalidInputError, match='more than 1000 records'):
        validate_warmup_requests(too_many, ['serving_default'])


def _gzip_tfrecord(path: str) -> None:
    write_records(path + '.plain', [predict_log()])
    with open(path + '.plain', 'rb') as src, gzip.open(path, 'wb') as dst:
        dst.write(src.read())
    os.remove(path + '.plain')


def _truncated(path: str) -> None:
    write_records(path, [predict_log(), predict_log()])
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) - 7)


def _session_run(path: str) -> None:
    log = prediction_log_pb2.PredictionLog()
    log.session_run_log.request.feed.add()
    write_records(path, [log.SerializeToString()])


@pytest.mark.parametrize(
    ('make', 'message'),
    [
        (lambda p: None, 'does not exist'),
        (lambda p: open(p, 'wb').close(), 'is empty'),
        (_gzip_tfrecord, 'not an uncompressed TFRecord file'),
        (_truncated, r'not an uncompressed TFRecord file .*reading record 1'),
        (lambda p: write_records(p, [predict_log(), b'not a proto']), 'record 1 is not a'),
        (lambda p: write_records(p, [b'']), 'record 0 holds no request'),
        (_session_run, 'record 0 holds a session_run_log'),
        (
            lambda p: write_records(p, [predict_log('predict')]),
            r"calls signature 'predict'; the model has \['serving_default'\]",
        ),
    ],
    ids=[
        'missing',
        'empty',
        'gzip',
        'truncated',
        'not-a-prediction-log',
        'no-request',
        'session-run',
        'unknown-signature',
    ],
)
def test_invalid_warmup_files_are_refused(tmp_path, make, message):
    path = str(tmp_path / 'tf_serving_warmup_requests')
    make(path)

    with pytest.raises(InvalidInputError, match=message):
        validate_warmup_requests(path, ['serving_default', '__saved_model_init_op'])


def test_replay_refuses_a_request_the_model_cannot_answer(export_dir):
    path = write_records(
        warmup_path(export_dir), [predict_log(), predict_log(inputs={'examples': [b'garbage']})]
    )

    with pytest.raises(InvalidInputError, match=r'record 1 \(predict_log.*failed on its inputs'):
        replay_warmup_requests(export_dir, path)


def test_replay_runs_classify_requests_only_against_classify_signatures(tmp_path, export_dir):
    (source,) = glob.glob(os.path.join(ESTIMATOR_MODEL, 'Format-Serving', 'export', '*', '*'))
    estimator = str(tmp_path / 'estimator')
    shutil.copytree(source, estimator)
    serving = tf.saved_model.load(estimator).signatures['serving_default']
    examples = [synthetic_example(serving)] * 3
    write_records(warmup_path(estimator), [classify_log(examples), predict_log('predict')])

    assert replay_warmup_requests(estimator) == 2

    keras_path = write_records(warmup_path(export_dir), [classify_log(penguin_examples(2))])
    with pytest.raises(
        InvalidInputError, match=r"needs a signature of method 'tensorflow/serving/classify'"
    ):
        replay_warmup_requests(export_dir, keras_path)


def test_predict_request_filtering_on_an_unknown_output_is_refused(export_dir):
    log = prediction_log_pb2.PredictionLog.FromString(predict_log())
    log.predict_log.request.output_filter.append('scores')
    write_records(warmup_path(export_dir), [log.SerializeToString()])

    with pytest.raises(InvalidInputError, match=r"outputs \['scores'\] .*answers \['output_0'\]"):
        replay_warmup_requests(export_dir)
