"""Prediction parity: the export's predictions compared with its source model's.

`prediction_parity` calls the same signature of the source model and of the export
on the same examples and compares every output within a tolerance;
`require_parity` refuses a mismatch, naming the worst examples. With a
`compare_batches` (`parity_beam.beam_comparer`), the batches are compared by an
Apache Beam pipeline; both paths compute and merge the same per-batch summaries,
so they give the same figures. TensorFlow and numpy are imported inside the
functions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from final_exporter.checks.signatures import (
    DEFAULT_SIGNATURE,
    call_signature,
    example_input_name,
    get_signature,
    load_export,
)
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_PARITY_BATCH_SIZE = 64
# How many of the worst examples each output's summary keeps.
WORST_COUNT = 5

PARITY_LINEAGE_KEY = keys.PARITY_LINEAGE_KEY


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
    export_model: Any = None,
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
        export_model: The export loaded already (`signatures.load_export`), for the
            comparison in this process; loaded from `export_dir` when None.

    Returns:
        The ParityResult; check `ok`, or call `require_parity`.

    Raises:
        InvalidInputError: for bad arguments, or if either model does not load, lacks
            the signature or fails on the examples.
    """
    examples = list(examples)
    _check_arguments(examples, atol, rtol, batch_size)
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
        comparer = BatchComparer(spec, export_model=export_model)
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


def _check_arguments(examples: list[bytes], atol: float, rtol: float, batch_size: int) -> None:
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
    """Loads both models once and compares batches; what each Beam worker holds.

    Args:
        spec: What to compare.
        export_model: The export loaded already; loaded from `spec.export_dir` when None.
    """

    def __init__(self, spec: ParitySpec, export_model: Any = None) -> None:
        self.spec = spec
        self._source = get_signature(
            load_export(spec.source_dir), spec.source_signature, spec.source_dir
        )
        if export_model is None:
            export_model = load_export(spec.export_dir)
        self._export = get_signature(export_model, spec.export_signature, spec.export_dir)
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
