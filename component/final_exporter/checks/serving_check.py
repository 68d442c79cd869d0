"""Serving checks on an export: load it as a model server does, call it, compare it with its source.

* `smoke_test` loads the export from its folder alone (`tf.saved_model.load` with the
  `serve` tag set, the one TensorFlow Serving loads) and calls one signature on real
  examples or, without them, on inputs built from the signature. A model that does not
  load, has no such signature, fails, answers without the batch dimension or answers
  NaN/inf is refused with an `InvalidInputError`.
* `prediction_parity` calls the same signature of the source model and of the export on
  the same examples and compares every output within a tolerance; `require_parity`
  refuses a mismatch, naming the worst examples. With `beam_pipeline_args`, the batches
  are compared by an Apache Beam pipeline (`parity_beam.py`); both paths compute and
  merge the same per-batch summaries, so they give the same figures.
* `read_examples` reads serialized examples from a TFX `Examples` artifact folder.

TensorFlow is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

logger = logging.getLogger(__name__)

# The tag set TensorFlow Serving loads (its `--saved_model_tags` default).
SERVE_TAGS = ('serve',)
DEFAULT_SIGNATURE = 'serving_default'
# Rows fed to a signature when no examples are given: more than one, so an output
# that dropped or collapsed the batch dimension is caught.
SYNTHETIC_BATCH_SIZE = 2
DEFAULT_PARITY_BATCH_SIZE = 64
# How many of the worst examples each output's summary keeps.
WORST_COUNT = 5

SMOKE_TEST_LINEAGE_KEY = keys.SMOKE_TEST_LINEAGE_KEY
PARITY_LINEAGE_KEY = keys.PARITY_LINEAGE_KEY

_PARSE_OPS = ('ParseExample', 'ParseExampleV2', 'ParseSingleExample')


# --------------------------------------------------------------------------- examples


def read_examples(examples_uri: str, split: str = 'eval', limit: int = 100) -> list[bytes]:
    """Reads serialized examples from a TFX `Examples` artifact folder.

    Files are read in name order from `<examples_uri>/Split-<split>/`; `*.gz` files as
    GZIP TFRecord (what ExampleGen writes), other files as uncompressed TFRecord. The
    first `limit` records are returned, so the same artifact always gives the same
    sample.

    Args:
        examples_uri: The artifact folder (holding `Split-train/`, `Split-eval/`, ...).
        split: The split to read.
        limit: The most records to return (at least 1).

    Returns:
        Up to `limit` serialized records (tf.Example or tf.SequenceExample).

    Raises:
        InvalidInputError: if the folder or split is missing or empty, or a file is
            not a readable TFRecord file.
    """
    import tensorflow as tf

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f'examples limit must be a positive integer, got {limit!r}')
    if not os.path.isdir(examples_uri):
        raise InvalidInputError(
            f'examples artifact folder {examples_uri!r} does not exist; expected the URI of '
            'an Examples artifact (a folder holding Split-<name>/ folders)'
        )
    split_dir = os.path.join(examples_uri, f'Split-{split}')
    if not os.path.isdir(split_dir):
        found = sorted(
            n.removeprefix('Split-') for n in os.listdir(examples_uri) if n.startswith('Split-')
        )
        raise InvalidInputError(
            f'examples artifact {examples_uri!r} has no split {split!r} '
            f'(no Split-{split}/ folder); it has splits {found}'
        )
    files = sorted(
        p for p in glob.glob(os.path.join(split_dir, '*')) if os.path.isfile(p)
    )  # glob skips dot files (partial writes, checksums).
    if not files:
        raise InvalidInputError(f'examples split folder {split_dir!r} holds no files')
    records: list[bytes] = []
    for path in files:
        compression = 'GZIP' if path.endswith('.gz') else ''
        try:
            for record in tf.data.TFRecordDataset(path, compression_type=compression).take(
                limit - len(records)
            ):
                records.append(record.numpy())
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            kind = 'GZIP TFRecord' if compression else 'uncompressed TFRecord'
            raise InvalidInputError(
                f'examples file {path!r} is not a readable {kind} file: {_first_line(e)}'
            ) from None
        if len(records) >= limit:
            break
    if not records:
        raise InvalidInputError(f'examples split folder {split_dir!r} holds no records')
    logger.info('Read %s examples from %s.', len(records), split_dir)
    return records


def example_input_name(signature: Any) -> str:
    """The name of the signature's one input that takes a batch of serialized examples.

    Raises:
        InvalidInputError: unless the signature has exactly one input and it is a
            string tensor of shape [None].
    """
    import tensorflow as tf

    specs = input_specs(signature)
    if len(specs) == 1:
        ((name, spec),) = specs.items()
        if spec.dtype == tf.string and spec.shape.rank == 1:
            return name
    described = {n: f'{s.dtype.name}{s.shape}' for n, s in specs.items()}
    raise InvalidInputError(
        f'signature takes inputs {described}; serialized examples can only be fed to a '
        'signature with exactly one input, a string tensor of shape [None]'
    )


def synthetic_inputs(
    signature: Any, batch_size: int = SYNTHETIC_BATCH_SIZE
) -> dict[str, tf.Tensor]:
    """Inputs for a signature built from its input specs alone.

    Unknown dimensions become `batch_size` (the first) or 1 (the others). Numeric
    and bool inputs are zeros. A string input of rank 1 gets serialized tf.Examples
    holding every feature the signature's ParseExample ops read, as zeros or empty
    strings (an empty tf.Example is not enough: Keras and Estimator models declare
    their features required). Other string inputs are empty strings.

    Args:
        signature: A concrete function, e.g. `loaded.signatures['serving_default']`.
        batch_size: The size given to the first unknown dimension.

    Returns:
        {input name: tensor}, ready for `signature(**inputs)`.
    """
    import numpy as np
    import tensorflow as tf

    example: bytes | None = None
    inputs = {}
    for name, spec in input_specs(signature).items():
        if spec.shape.rank is None:
            shape: list[int] = [batch_size]
        else:
            shape = [
                (batch_size if i == 0 else 1) if d is None else d
                for i, d in enumerate(spec.shape.as_list())
            ]
        if spec.dtype == tf.string:
            if len(shape) == 1:
                if example is None:
                    example = synthetic_example(signature)
                # A list, not np.full: numpy's bytes dtype would strip trailing NULs.
                value = [example] * shape[0]
            else:
                value = np.full(shape, b'', dtype=object)
            inputs[name] = tf.constant(value, dtype=tf.string)
        else:
            inputs[name] = tf.zeros(shape, dtype=spec.dtype)
    return inputs


def synthetic_example(signature: Any) -> bytes:
    """A serialized tf.Example with a zero or empty value for each feature the signature parses.

    The features are read from the ParseExample ops in the signature's graph and the
    functions it calls. Dense features get the declared shape (unknown dimensions as
    1); sparse and ragged features get one value. Without any ParseExample op, this is
    an empty tf.Example.
    """
    import tensorflow as tf

    example = tf.train.Example()
    for key, (dtype, size) in sorted(_parsed_features(signature).items()):
        feature = example.features.feature[key]
        if dtype == tf.float32 or dtype == tf.float64:
            feature.float_list.value.extend([0.0] * size)
        elif dtype.is_integer:
            feature.int64_list.value.extend([0] * size)
        else:
            feature.bytes_list.value.extend([b''] * size)
    return example.SerializeToString()


def input_specs(signature: Any) -> dict[str, Any]:
    """{input name: tf.TensorSpec} of a signature (a concrete function).

    Raises:
        InvalidInputError: if it takes positional inputs.
    """
    args, kwargs = signature.structured_input_signature
    if args:
        raise InvalidInputError(
            'signature takes positional inputs; a serving signature takes named inputs only'
        )
    return dict(kwargs)


def _parsed_features(signature: Any) -> dict[str, tuple[Any, int]]:
    """{feature key: (dtype, values to write)} from every ParseExample op the signature runs."""
    import tensorflow as tf

    graph_def = signature.graph.as_graph_def()
    scopes = [list(graph_def.node)] + [list(f.node_def) for f in graph_def.library.function]
    features: dict[str, tuple[Any, int]] = {}
    for nodes in scopes:
        by_name = {n.name: n for n in nodes}
        for node in nodes:
            if node.op not in _PARSE_OPS:
                continue
            try:
                found = _features_of_parse_op(node, by_name)
            except (KeyError, ValueError) as e:
                logger.info('Skipping %s %s: cannot read its keys (%s).', node.op, node.name, e)
                continue
            for key, (dtype_enum, size) in found.items():
                features.setdefault(key, (tf.dtypes.as_dtype(dtype_enum), size))
    return features


def _features_of_parse_op(node: Any, by_name: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    attr = node.attr
    dense_sizes = [_static_size(s) for s in attr['dense_shapes'].list.shape]
    dense_types = list(attr['Tdense'].list.type)
    if node.op == 'ParseSingleExample':
        sparse_keys = [k.decode() for k in attr['sparse_keys'].list.s]
        dense_keys = [k.decode() for k in attr['dense_keys'].list.s]
        sparse_types = list(attr['sparse_types'].list.type)
        ragged_keys: list[str] = []
        ragged_types: list[int] = []
    elif node.op == 'ParseExample':
        # Inputs: serialized, names, sparse_keys x Nsparse, dense_keys x Ndense, defaults.
        n_sparse, n_dense = attr['Nsparse'].i, attr['Ndense'].i
        refs = list(node.input)
        sparse_keys = [_const_strings(r, by_name)[0] for r in refs[2 : 2 + n_sparse]]
        dense_keys = [
            _const_strings(r, by_name)[0] for r in refs[2 + n_sparse : 2 + n_sparse + n_dense]
        ]
        sparse_types = list(attr['sparse_types'].list.type)
        ragged_keys, ragged_types = [], []
    else:  # ParseExampleV2: serialized, names, sparse_keys, dense_keys, ragged_keys, defaults.
        refs = list(node.input)
        sparse_keys = _const_strings(refs[2], by_name)
        dense_keys = _const_strings(refs[3], by_name)
        ragged_keys = _const_strings(refs[4], by_name)
        sparse_types = list(attr['sparse_types'].list.type)
        ragged_types = list(attr['ragged_value_types'].list.type)
    # zip(strict=True) raises ValueError when keys and types do not line up.
    found = {k: (t, n) for k, t, n in zip(dense_keys, dense_types, dense_sizes, strict=True)}
    others = [
        *zip(sparse_keys, sparse_types, strict=True),
        *zip(ragged_keys, ragged_types, strict=True),
    ]
    for key, dtype in others:
        found.setdefault(key, (dtype, 1))
    return found


def _static_size(shape_proto: Any) -> int:
    size = 1
    for dim in shape_proto.dim:
        size *= dim.size if dim.size > 0 else 1
    return size


def _const_strings(ref: str, by_name: Mapping[str, Any]) -> list[str]:
    """The string values of the Const node behind an input reference (through Identity ops)."""
    import tensorflow as tf

    node = by_name[ref.lstrip('^').split(':')[0]]
    for _ in range(10):
        if node.op != 'Identity':
            break
        node = by_name[node.input[0].lstrip('^').split(':')[0]]
    if node.op != 'Const':
        raise ValueError(f'{node.name} is a {node.op}, not a Const')
    values = tf.make_ndarray(node.attr['value'].tensor).reshape(-1)
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


# --------------------------------------------------------------------------- smoke test


@dataclasses.dataclass(frozen=True)
class SmokeResult:
    """A passed smoke test.

    Attributes:
        export_dir: The folder that was loaded.
        signature_name: The signature that was called.
        inputs: `examples` (real examples were fed) or `synthetic`.
        batch_size: Rows fed.
        example_input: The input the examples were fed to (None for synthetic inputs).
        outputs: {output name: (dtype name, shape)} of the answer.
        batch_checked: Whether every output was checked for the batch dimension (False
            when an input has no unknown leading dimension, so there is no batch).
    """

    export_dir: str
    signature_name: str
    inputs: str
    batch_size: int
    example_input: str | None
    outputs: Mapping[str, tuple[str, tuple[int, ...]]]
    batch_checked: bool = True

    def to_lineage(self) -> dict[str, Any]:
        """`{'smoke_test': {...}}` for the lineage (JSON-able)."""
        return {
            SMOKE_TEST_LINEAGE_KEY: {
                'passed': True,
                'signature_name': self.signature_name,
                'inputs': self.inputs,
                'batch_size': self.batch_size,
                'batch_checked': self.batch_checked,
                'outputs': {
                    name: {'dtype': dtype, 'shape': list(shape)}
                    for name, (dtype, shape) in sorted(self.outputs.items())
                },
            }
        }


def load_export(export_dir: str) -> Any:
    """Loads a SavedModel from its folder alone, with the tag set TensorFlow Serving loads.

    Works for `saved_model.pb` and `saved_model.pbtxt` exports.

    Raises:
        InvalidInputError: naming the folder and why it does not load.
    """
    import tensorflow as tf

    try:
        return tf.saved_model.load(export_dir, tags=list(SERVE_TAGS))
    except Exception as e:  # TensorFlow raises many types; all mean "does not load".
        raise InvalidInputError(
            f'the export in {export_dir!r} does not load as a SavedModel with tags '
            f'{list(SERVE_TAGS)}: {_first_line(e)}'
        ) from None


def get_signature(loaded: Any, signature_name: str, export_dir: str) -> Any:
    """The named signature of a loaded SavedModel.

    Raises:
        InvalidInputError: naming the signatures the model has.
    """
    signatures = loaded.signatures
    if signature_name not in signatures:
        raise InvalidInputError(
            f'the export in {export_dir!r} has no signature {signature_name!r}; '
            f'it has {sorted(signatures.keys())}'
        )
    return signatures[signature_name]


def smoke_test(
    export_dir: str,
    signature_name: str = DEFAULT_SIGNATURE,
    examples: Sequence[bytes] | None = None,
) -> SmokeResult:
    """Loads an export as a model server does and checks that its signature answers.

    Args:
        export_dir: The export (or staging) folder.
        signature_name: The signature to call.
        examples: Serialized examples, fed to the signature's one string input as one
            batch; None to use `synthetic_inputs`.

    Returns:
        The SmokeResult.

    Raises:
        InvalidInputError: naming the export and the reason if it does not load, has
            no such signature, cannot take the examples, fails, answers without the
            batch dimension or answers NaN or infinity.
    """
    import numpy as np
    import tensorflow as tf

    loaded = load_export(export_dir)
    signature = get_signature(loaded, signature_name, export_dir)
    where = f'signature {signature_name!r} of the export in {export_dir!r}'
    if examples is not None:
        examples = list(examples)
        if not examples:
            raise InvalidInputError(
                f'no examples to smoke-test {where} with; pass None for synthetic inputs'
            )
        try:
            input_name = example_input_name(signature)
        except InvalidInputError as e:
            raise InvalidInputError(f'{where}: {e}') from None
        inputs = {input_name: tf.constant(examples, dtype=tf.string)}
        batch: int | None = len(examples)
        source = 'examples'
    else:
        input_name = None
        inputs = synthetic_inputs(signature)
        batch = SYNTHETIC_BATCH_SIZE if _is_batched(signature) else None
        source = 'synthetic'
    outputs = call_signature(
        signature, inputs, where, f'{len(examples)} examples' if examples else source
    )
    shapes = {}
    for name, value in sorted(outputs.items()):
        array = value.numpy()
        if batch is not None and (array.ndim == 0 or array.shape[0] != batch):
            raise InvalidInputError(
                f'{where} answered output {name!r} with shape {list(array.shape)} for a batch '
                f'of {batch}; expected the batch dimension first'
            )
        if value.dtype.is_floating or value.dtype.is_complex:
            bad = ~np.isfinite(array)
            if bad.any():
                rows = bad.reshape(len(array), -1).any(axis=1) if array.ndim else bad.reshape(1)
                raise InvalidInputError(
                    f'{where} answered NaN or infinity in output {name!r} ({int(bad.sum())} '
                    f'values, rows {rows.nonzero()[0][:10].tolist()}); expected finite values'
                )
        shapes[name] = (value.dtype.name, tuple(int(d) for d in array.shape))
    logger.info('Smoke test of %s passed with %s inputs (batch %s).', where, source, batch)
    return SmokeResult(
        export_dir=export_dir,
        signature_name=signature_name,
        inputs=source,
        batch_size=batch if batch is not None else 1,
        example_input=input_name,
        outputs=shapes,
        batch_checked=batch is not None,
    )


def _is_batched(signature: Any) -> bool:
    specs = input_specs(signature).values()
    return bool(specs) and all(
        s.shape.rank is None or (s.shape.rank >= 1 and s.shape[0] is None) for s in specs
    )


def call_signature(
    signature: Any, inputs: Mapping[str, Any], where: str, what: str
) -> dict[str, Any]:
    """Calls a signature; returns {output name: tensor}.

    Raises:
        InvalidInputError: `"<where> failed on <what>: <first telling line>"`.
    """
    try:
        outputs = signature(**inputs)
    except Exception as e:  # Any failure of the model call refuses the export.
        raise InvalidInputError(f'{where} failed on {what}: {_first_line(e)}') from None
    if not isinstance(outputs, Mapping):
        outputs = {'output_0': outputs}
    return dict(outputs)


# Lines of TensorFlow's error messages that say nothing about the cause.
_TF_NOISE = (
    'Graph execution error',
    'Detected at node',
    '<stack traces unavailable>',
    '[[',
    'File ',
)


def _first_line(error: BaseException) -> str:
    """The first telling line of an error (TensorFlow's messages run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(_TF_NOISE)]
    chosen = (telling or lines or [''])[0]
    return f'{type(error).__name__}: {chosen}' if chosen else type(error).__name__


# --------------------------------------------------------------------------- parity


@dataclasses.dataclass(frozen=True)
class OutputParity:
    """How one output of the export compares with the source's.

    Attributes:
        name: The output name.
        max_abs_diff: The largest absolute difference over all values; `inf` where
            shapes differ, a value is NaN on one side only, or non-numeric values
            (strings) differ.
        mismatched: Examples with at least one value outside the tolerance.
        worst: Up to WORST_COUNT (example index, largest difference in that example),
            worst first, only differences above zero.
    """

    name: str
    max_abs_diff: float
    mismatched: int
    worst: tuple[tuple[int, float], ...]


@dataclasses.dataclass(frozen=True)
class ParityResult:
    """Predictions of the export compared with the source model's.

    Attributes:
        signature_name: The signature called on both.
        examples: How many examples were compared.
        atol, rtol: The tolerance: `|export - source| <= atol + rtol * |source|`.
        outputs: One OutputParity per output both models have, by name.
        missing_outputs: Outputs the source answers and the export does not.
        runner: `in_process`, or `beam` when compared by a Beam pipeline.
    """

    signature_name: str
    examples: int
    atol: float
    rtol: float
    outputs: tuple[OutputParity, ...]
    missing_outputs: tuple[str, ...] = ()
    runner: str = 'in_process'

    @property
    def ok(self) -> bool:
        return not self.missing_outputs and all(o.mismatched == 0 for o in self.outputs)

    def problems(self) -> list[str]:
        """One line per output that does not match, worst examples first."""
        lines = [f'output {name!r} is missing from the export' for name in self.missing_outputs]
        for o in self.outputs:
            if o.mismatched:
                worst = ', '.join(f'example {i}: {_fmt(d)}' for i, d in o.worst)
                lines.append(
                    f'output {o.name!r}: {o.mismatched} of {self.examples} examples out of '
                    f'tolerance, max abs diff {_fmt(o.max_abs_diff)} (worst: {worst})'
                )
        return lines

    def to_lineage(self) -> dict[str, Any]:
        """`{'prediction_parity': {...}}` for the lineage; inf/NaN become strings."""
        return {
            PARITY_LINEAGE_KEY: {
                'ok': self.ok,
                'signature_name': self.signature_name,
                'examples': self.examples,
                'atol': self.atol,
                'rtol': self.rtol,
                'runner': self.runner,
                'missing_outputs': list(self.missing_outputs),
                'outputs': {
                    o.name: {
                        'max_abs_diff': _json_float(o.max_abs_diff),
                        'mismatched_examples': o.mismatched,
                        'worst': [[i, _json_float(d)] for i, d in o.worst],
                    }
                    for o in self.outputs
                },
            }
        }


def prediction_parity(
    source_dir: str,
    export_dir: str,
    examples: Sequence[bytes],
    signature_name: str = DEFAULT_SIGNATURE,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    compare_batches: Callable[[ParitySpec, list[tuple[int, list[bytes]]]], dict[str, Any]]
    | None = None,
    *,
    source_signature_name: str | None = None,
    batch_size: int = DEFAULT_PARITY_BATCH_SIZE,
) -> ParityResult:
    """Compares the export's predictions with the source model's on the same examples.

    The examples are cut into batches of `batch_size`; each batch goes through both
    models and every output the source answers is compared value by value with
    `numpy.isclose(export, source, atol, rtol, equal_nan=True)`. Non-numeric outputs
    (strings, bools) must be equal.

    Args:
        source_dir: The source SavedModel folder.
        export_dir: The export (or staging) folder.
        examples: Serialized examples, fed to the signature's one string input.
        signature_name: The export's signature to call.
        atol: Absolute tolerance.
        rtol: Relative tolerance (relative to the source's value).
        compare_batches: Compares the batches elsewhere and returns the merged
            summary, e.g. `parity_beam.beam_comparer(args)`: an Apache Beam pipeline
            where each worker loads both models once (both folders must be
            readable by every worker). In this process when None.
        source_signature_name: The source's signature, when it differs.
        batch_size: Examples per batch (per Beam element).

    Returns:
        The ParityResult; check `ok`, or call `require_parity`.

    Raises:
        InvalidInputError: for bad arguments, or if either model does not load, lacks
            the signature or fails on the examples.
    """
    examples = list(examples)
    if not examples:
        raise InvalidInputError('prediction parity needs at least one example; got none')
    for name, value in (('atol', atol), ('rtol', rtol)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value >= 0
            or math.isinf(value)
        ):
            raise InvalidInputError(f'parity {name} must be a finite number >= 0, got {value!r}')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f'parity batch_size must be a positive integer, got {batch_size!r}')
    spec = ParitySpec(
        source_dir=source_dir,
        export_dir=export_dir,
        source_signature=source_signature_name or signature_name,
        export_signature=signature_name,
        atol=float(atol),
        rtol=float(rtol),
    )
    batches = list(_batches(examples, batch_size))
    if compare_batches is not None:
        summary = compare_batches(spec, batches)
        runner = 'beam'
    else:
        comparer = BatchComparer(spec)
        summary = empty_summary()
        for offset, batch in batches:
            summary = merge_summaries(summary, comparer.compare(offset, batch))
        runner = 'in_process'
    result = summary_to_result(summary, signature_name, spec, runner)
    logger.info(
        'Prediction parity of %s against %s on %s examples: %s.',
        export_dir,
        source_dir,
        result.examples,
        'ok' if result.ok else '; '.join(result.problems()),
    )
    return result


def require_parity(result: ParityResult) -> None:
    """Raises unless the export's predictions matched the source's.

    Raises:
        InvalidInputError: listing each mismatched output with its worst examples.
    """
    if not result.ok:
        raise InvalidInputError(
            f"the export's predictions differ from the source model's on signature "
            f'{result.signature_name!r} ({result.examples} examples, atol {result.atol:g}, '
            f'rtol {result.rtol:g}): ' + '; '.join(result.problems())
        )


@dataclasses.dataclass(frozen=True)
class ParitySpec:
    """What to compare; picklable, so Beam workers get it."""

    source_dir: str
    export_dir: str
    source_signature: str
    export_signature: str
    atol: float
    rtol: float


class BatchComparer:
    """Loads both models once and compares batches; what each Beam worker holds."""

    def __init__(self, spec: ParitySpec) -> None:
        self.spec = spec
        self._source = get_signature(
            load_export(spec.source_dir), spec.source_signature, spec.source_dir
        )
        self._export = get_signature(
            load_export(spec.export_dir), spec.export_signature, spec.export_dir
        )
        self._source_input = _example_input(self._source, spec.source_signature, spec.source_dir)
        self._export_input = _example_input(self._export, spec.export_signature, spec.export_dir)

    def compare(self, offset: int, batch: Sequence[bytes]) -> dict[str, Any]:
        """The summary of one batch whose first example has index `offset`."""
        import tensorflow as tf

        what = f'examples {offset}..{offset + len(batch) - 1}'
        tensor = tf.constant(list(batch), dtype=tf.string)
        spec = self.spec
        source = call_signature(
            self._source,
            {self._source_input: tensor},
            f'signature {spec.source_signature!r} of the source model in {spec.source_dir!r}',
            what,
        )
        export = call_signature(
            self._export,
            {self._export_input: tensor},
            f'signature {spec.export_signature!r} of the export in {spec.export_dir!r}',
            what,
        )
        return compare_outputs(
            offset,
            len(batch),
            {k: v.numpy() for k, v in source.items()},
            {k: v.numpy() for k, v in export.items()},
            spec.atol,
            spec.rtol,
        )


def _example_input(signature: Any, name: str, folder: str) -> str:
    try:
        return example_input_name(signature)
    except InvalidInputError as e:
        raise InvalidInputError(f'signature {name!r} of the model in {folder!r}: {e}') from None


def _batches(examples: list[bytes], size: int) -> Iterator[tuple[int, list[bytes]]]:
    for start in range(0, len(examples), size):
        yield start, examples[start : start + size]


# Summaries are plain dicts of JSON-able values, so Beam can move and merge them:
# {'examples': n, 'missing': [...], 'outputs': {name: {'max': f, 'mismatched': k,
#  'worst': [[index, diff], ...]}}}.


def empty_summary() -> dict[str, Any]:
    """The summary of no examples; the identity of `merge_summaries`."""
    return {'examples': 0, 'missing': [], 'outputs': {}}


def compare_outputs(
    offset: int,
    count: int,
    source: Mapping[str, np.ndarray],
    export: Mapping[str, np.ndarray],
    atol: float,
    rtol: float,
) -> dict[str, Any]:
    """The summary of one batch: per output, the worst differences and the mismatches."""
    import numpy as np

    summary = {'examples': count, 'missing': sorted(set(source) - set(export)), 'outputs': {}}
    for name in sorted(set(source) & set(export)):
        diffs, close = _example_diffs(
            np.asarray(source[name]), np.asarray(export[name]), count, atol, rtol
        )
        order = sorted((i for i in range(count) if diffs[i] > 0), key=lambda i: (-diffs[i], i))
        summary['outputs'][name] = {
            'max': float(diffs.max()) if count else 0.0,
            'mismatched': int((~close).sum()),
            'worst': [[offset + i, float(diffs[i])] for i in order[:WORST_COUNT]],
        }
    return summary


def _example_diffs(
    source: np.ndarray, export: np.ndarray, count: int, atol: float, rtol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per example: the largest absolute difference, and whether every value is close."""
    import numpy as np

    if source.shape != export.shape:
        return np.full(count, np.inf), np.zeros(count, dtype=bool)
    if source.ndim == 0 or source.shape[0] != count:  # No batch dimension: all or nothing.
        diffs, close = _example_diffs(source.reshape(1, -1), export.reshape(1, -1), 1, atol, rtol)
        return np.full(count, diffs[0]), np.full(count, close[0])
    rows_src = source.reshape(count, -1)
    rows_exp = export.reshape(count, -1)
    if rows_src.shape[1] == 0:
        return np.zeros(count), np.ones(count, dtype=bool)
    if np.issubdtype(source.dtype, np.number) and np.issubdtype(export.dtype, np.number):
        a = rows_src.astype(np.float64)
        b = rows_exp.astype(np.float64)
        with np.errstate(invalid='ignore'):
            diff = np.abs(b - a)
        both_nan = np.isnan(a) & np.isnan(b)
        diff[both_nan] = 0.0
        diff[np.isnan(diff)] = np.inf  # NaN on one side only, or inf - inf.
        close = np.isclose(b, a, atol=atol, rtol=rtol, equal_nan=True)
        return diff.max(axis=1), close.all(axis=1)
    equal = (rows_src == rows_exp).all(axis=1)
    return np.where(equal, 0.0, np.inf), equal


def merge_summaries(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Merges two batch summaries; order does not change the result."""
    outputs = {name: dict(v) for name, v in a['outputs'].items()}
    for name, theirs in b['outputs'].items():
        ours = outputs.get(name)
        if ours is None:
            outputs[name] = dict(theirs)
            continue
        worst = sorted([*ours['worst'], *theirs['worst']], key=lambda w: (-w[1], w[0]))
        outputs[name] = {
            'max': max(ours['max'], theirs['max']),
            'mismatched': ours['mismatched'] + theirs['mismatched'],
            'worst': [list(w) for w in worst[:WORST_COUNT]],
        }
    return {
        'examples': a['examples'] + b['examples'],
        'missing': sorted(set(a['missing']) | set(b['missing'])),
        'outputs': outputs,
    }


def summary_to_result(
    summary: Mapping[str, Any], signature_name: str, spec: ParitySpec, runner: str
) -> ParityResult:
    """The ParityResult of a merged summary."""
    return ParityResult(
        signature_name=signature_name,
        examples=summary['examples'],
        atol=spec.atol,
        rtol=spec.rtol,
        outputs=tuple(
            OutputParity(
                name=name,
                max_abs_diff=float(o['max']),
                mismatched=int(o['mismatched']),
                worst=tuple((int(i), float(d)) for i, d in o['worst']),
            )
            for name, o in sorted(summary['outputs'].items())
        ),
        missing_outputs=tuple(summary['missing']),
        runner=runner,
    )


def _fmt(value: float) -> str:
    return f'{value:.6g}'


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
