"""TensorFlow Serving warmup requests: `assets.extra/tf_serving_warmup_requests`.

TensorFlow Serving replays this file when it loads a version, before the version
takes traffic, so the first real requests do not pay for graph initialisation.
What the server does with it (`saved_model_warmup_util.cc`), and so what this
module writes and checks:

* the file is an *uncompressed* TFRecord file; each record is a serialized
  `tensorflow.serving.PredictionLog`;
* more than 1000 records, an unreadable TFRecord frame or a record that does not
  parse fails the load of the version;
* each record's request (`predict_log`, `classify_log`, `regress_log` or
  `multi_inference_log`; `session_run_log` is refused) is run against the named
  signature (empty name: `serving_default`) and a failing request fails the load.

The protos are the `tensorflow-serving-api` package's own.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from final_exporter.checks.signatures import (
    DEFAULT_SIGNATURE,
    call_signature,
    example_input_name,
    input_specs,
    load_export,
)
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.fs import rename_no_replace

if TYPE_CHECKING:
    from tensorflow_serving.apis import prediction_log_pb2

logger = logging.getLogger(__name__)

WARMUP_FILENAME = keys.WARMUP_FILENAME
WARMUP_RELPATH = keys.WARMUP_RELPATH
# TensorFlow Serving's WarmupConsts::kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000
WARMUP_LINEAGE_KEY = keys.WARMUP_LINEAGE_KEY

_CLASSIFY_METHOD = 'tensorflow/serving/classify'
_REGRESS_METHOD = 'tensorflow/serving/regress'
_INIT_OP_SIGNATURE = '__saved_model_init_op'


def write_warmup_requests(
    path: str,
    examples: Sequence[bytes],
    signature_name: str = DEFAULT_SIGNATURE,
    model_name: str = '',
    input_name: str = 'examples',
    limit: int = MAX_WARMUP_RECORDS,
    *,
    batch_size: int = 1,
) -> int:
    """Writes a warmup file of `PredictRequest`s built from serialized examples.

    Each record is a `PredictionLog` whose `predict_log.request` names the model and
    the signature and holds `batch_size` examples as the string tensor
    `inputs[input_name]` of shape [batch_size] (the last record may hold fewer).
    Examples beyond `limit` records are left out. The file is written beside `path`
    and renamed into place, and an existing file is never replaced.

    Args:
        path: Where to write, usually `<export>/assets.extra/tf_serving_warmup_requests`.
        examples: Serialized tf.Examples.
        signature_name: The signature the requests call.
        model_name: `model_spec.name` (TensorFlow Serving ignores it for warmup; set it
            to the served model name for readers of the file).
        input_name: The signature input that takes the serialized examples.
        limit: The most records to write, 1 to 1000.
        batch_size: Examples per request.

    Returns:
        The number of records written.

    Raises:
        InvalidInputError: for no examples, a bad limit or batch size, or if `path`
            exists.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    examples = list(examples)
    _check_write_arguments(path, examples, input_name, limit, batch_size)
    examples = examples[: limit * batch_size]
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    tmp = os.path.join(os.path.dirname(path) or '.', f'.{WARMUP_FILENAME}.tmp-{uuid.uuid4().hex}')
    count = 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for start in range(0, len(examples), batch_size):
                batch = examples[start : start + batch_size]
                request = predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = signature_name
                request.inputs[input_name].CopyFrom(
                    tf.make_tensor_proto(batch, dtype=tf.string, shape=[len(batch)])
                )
                log = prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                )
                writer.write(log.SerializeToString())
                count += 1
        rename_no_replace(tmp, path)
    except FileExistsError:
        raise InvalidInputError(f'warmup file {path!r} already exists') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    logger.info('Wrote %s warmup requests (%s examples) to %s.', count, len(examples), path)
    return count


def _check_write_arguments(
    path: str, examples: list[bytes], input_name: str, limit: int, batch_size: int
) -> None:
    if not examples:
        raise InvalidInputError(f'no examples to write warmup requests to {path!r} from')
    if (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= MAX_WARMUP_RECORDS
    ):
        raise InvalidInputError(
            f'warmup limit must be an integer from 1 to {MAX_WARMUP_RECORDS} (the most '
            f'TensorFlow Serving reads), got {limit!r}'
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f'warmup batch_size must be a positive integer, got {batch_size!r}')
    if not input_name:
        raise InvalidInputError('warmup input_name must name the signature input for the examples')
    if os.path.lexists(path):
        raise InvalidInputError(
            f'warmup file {path!r} already exists; validate it with validate_warmup_requests '
            'instead of writing a new one'
        )


def read_warmup_requests(path: str) -> list[prediction_log_pb2.PredictionLog]:
    """Reads a warmup file as TensorFlow Serving does.

    Raises:
        InvalidInputError: if the file is missing or empty, is not an uncompressed
            TFRecord file, holds more than 1000 records, or a record is not a
            `PredictionLog`.
    """
    return list(_read(path))


def _read(path: str) -> Iterator[prediction_log_pb2.PredictionLog]:
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    if not os.path.isfile(path):
        raise InvalidInputError(f'warmup file {path!r} does not exist or is not a file')
    if os.path.getsize(path) == 0:
        raise InvalidInputError(f'warmup file {path!r} is empty; expected 1 to 1000 requests')
    index = -1
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if index >= MAX_WARMUP_RECORDS:
                raise InvalidInputError(
                    f'warmup file {path!r} holds more than {MAX_WARMUP_RECORDS} records, the '
                    'most TensorFlow Serving accepts; the version would fail to load'
                )
            try:
                yield prediction_log_pb2.PredictionLog.FromString(record)
            except DecodeError:
                raise InvalidInputError(
                    f'warmup file {path!r}: record {index} is not a tensorflow.serving.'
                    'PredictionLog'
                ) from None
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise InvalidInputError(
            f'warmup file {path!r} is not an uncompressed TFRecord file (what TensorFlow '
            f'Serving reads); reading record {index + 1} failed: {e.message.splitlines()[0]}'
        ) from None


def validate_warmup_requests(
    path: str,
    signature_names: Collection[str],
    *,
    signature_inputs: Mapping[str, Collection[str]] | None = None,
) -> int:
    """Checks a warmup file against what TensorFlow Serving accepts, without running it.

    Args:
        path: The warmup file.
        signature_names: The signatures the model has.
        signature_inputs: {signature: its input names}; when given, each predict
            request must feed exactly those inputs.

    Returns:
        The number of requests.

    Raises:
        InvalidInputError: for an empty, unreadable or over-long file, a record that
            is not a PredictionLog or holds no supported request, or a request naming
            an unknown signature or the wrong inputs.
    """
    count = 0
    for index, log in enumerate(_read(path)):
        for signature, request in _requests(log, path, index):
            _check_signature(signature, signature_names, path, index)
            expected = (signature_inputs or {}).get(signature)
            if expected is not None and log.WhichOneof('log_type') == 'predict_log':
                _check_inputs(request, expected, path, index, signature)
        count += 1
    logger.info('Warmup file %s holds %s valid requests.', path, count)
    return count


def replay_warmup_requests(export_dir: str, path: str | None = None, *, loaded: Any = None) -> int:
    """Runs every warmup request against the export, as TensorFlow Serving does at load.

    Predict requests feed their tensors (`tf.make_ndarray`) to the signature.
    Classify and regress requests need a signature of that method (as the server
    does) and feed their examples, serialized, to its one string input; context
    features are merged into each example. Multi-inference requests run each task.

    Args:
        export_dir: The export folder.
        path: The warmup file; `<export_dir>/assets.extra/tf_serving_warmup_requests`
            when None.
        loaded: The export loaded already (`signatures.load_export`), or a model
            with the same SavedModel bytes; loaded from `export_dir` when None.

    Returns:
        The number of requests run.

    Raises:
        InvalidInputError: if `validate_warmup_requests` fails, or a request fails or
            does not fit its signature.
    """
    import tensorflow as tf

    path = path or os.path.join(export_dir, WARMUP_RELPATH)
    if loaded is None:
        loaded = load_export(export_dir)
    methods = _signature_methods(export_dir)
    signatures = {name: loaded.signatures[name] for name in loaded.signatures}
    inputs = {name: set(input_specs(fn)) for name, fn in signatures.items()}
    count = validate_warmup_requests(path, signatures, signature_inputs=inputs)
    for index, log in enumerate(_read(path)):
        kind = log.WhichOneof('log_type')
        for signature, request in _requests(log, path, index):
            fn = signatures[signature]
            where = f'warmup file {path!r}: record {index} ({kind}, signature {signature!r})'
            if kind == 'predict_log':
                feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
                outputs = call_signature(fn, feed, where, 'its inputs')
                unknown = set(request.output_filter) - set(outputs)
                if unknown:
                    raise InvalidInputError(
                        f'{where} filters on outputs {sorted(unknown)} the signature does not '
                        f'answer; it answers {sorted(outputs)}'
                    )
                continue
            method = _CLASSIFY_METHOD if kind == 'classify_log' else _REGRESS_METHOD
            if kind == 'multi_inference_log':
                method = (
                    _CLASSIFY_METHOD if request.method_name == _CLASSIFY_METHOD else _REGRESS_METHOD
                )
            if methods.get(signature) != method:
                raise InvalidInputError(
                    f'{where} needs a signature of method {method!r}; {signature!r} has '
                    f'{methods.get(signature)!r}'
                )
            examples = _serialized_examples(log, request, where)
            input_name = example_input_name(fn)
            call_signature(
                fn, {input_name: tf.constant(examples, dtype=tf.string)}, where, 'its examples'
            )
    logger.info('Replayed %s warmup requests against %s.', count, export_dir)
    return count


def _signature_methods(export_dir: str) -> dict[str, str]:
    """{signature: method_name} from the serve MetaGraph, as the server sees them."""
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(export_dir)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == {'serve'}:
            return {k: v.method_name for k, v in meta_graph.signature_def.items()}
    return {}


def _requests(
    log: prediction_log_pb2.PredictionLog, path: str, index: int
) -> list[tuple[str, Any]]:
    """[(signature name, request or task)] of one record; empty names mean serving_default."""
    kind = log.WhichOneof('log_type')
    if kind in ('predict_log', 'classify_log', 'regress_log'):
        request = getattr(log, kind).request
        return [(request.model_spec.signature_name or DEFAULT_SIGNATURE, request)]
    if kind == 'multi_inference_log':
        tasks = log.multi_inference_log.request.tasks
        if not tasks:
            raise InvalidInputError(f'warmup file {path!r}: record {index} has no inference tasks')
        return [(t.model_spec.signature_name or DEFAULT_SIGNATURE, t) for t in tasks]
    found = 'no request' if kind is None else f'a {kind}'
    raise InvalidInputError(
        f'warmup file {path!r}: record {index} holds {found}; TensorFlow Serving warms up '
        'with predict_log, classify_log, regress_log or multi_inference_log'
    )


def _check_signature(signature: str, known: Collection[str], path: str, index: int) -> None:
    names = sorted(n for n in known if n != _INIT_OP_SIGNATURE)
    if signature not in names:
        raise InvalidInputError(
            f'warmup file {path!r}: record {index} calls signature {signature!r}; the model '
            f'has {names}'
        )


def _check_inputs(
    request: Any, expected: Collection[str], path: str, index: int, signature: str
) -> None:
    sent, wanted = set(request.inputs), set(expected)
    if sent != wanted:
        raise InvalidInputError(
            f'warmup file {path!r}: record {index} feeds inputs {sorted(sent)} to signature '
            f'{signature!r}, which takes {sorted(wanted)}'
        )


def _serialized_examples(log: Any, request: Any, where: str) -> list[bytes]:
    from tensorflow.core.example import example_pb2

    if log.WhichOneof('log_type') == 'multi_inference_log':
        request_input = log.multi_inference_log.request.input
    else:
        request_input = request.input
    kind = request_input.WhichOneof('kind')
    if kind == 'example_list':
        examples = list(request_input.example_list.examples)
    elif kind == 'example_list_with_context':
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)  # The example's own features win.
            examples.append(merged)
    else:
        raise InvalidInputError(f'{where} holds no examples')
    if not examples:
        raise InvalidInputError(f'{where} holds no examples')
    return [e.SerializeToString() for e in examples]
