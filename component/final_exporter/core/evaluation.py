"""Reads the overall-slice metrics of a TFX ModelEvaluation (TFMA output)."""

from __future__ import annotations

import os

from final_exporter.common.errors import InvalidInputError


def overall_metrics(uri: str) -> dict[str, float]:
    """Returns {metric name: value} for the overall slice of the evaluation in `uri`.

    Metric keys with a model, output or sub key get it in the name
    (`candidate/accuracy`, `precision@class_id=1`); diffs against a baseline
    are left out. Imports TensorFlow Model Analysis, so call it only when an
    evaluation is given.

    Raises:
        InvalidInputError: if `uri` holds no TFMA metrics.
    """
    import tensorflow_model_analysis as tfma

    if not os.path.isdir(uri):
        raise InvalidInputError(f'model evaluation folder {uri!r} does not exist')
    metrics: dict[str, float] = {}
    try:
        records = list(tfma.load_metrics(uri))
    except Exception as e:  # TFMA raises several types for unreadable output.
        raise InvalidInputError(f'cannot read TFMA metrics in {uri!r}: {e}') from e
    for record in records:
        if record.slice_key.single_slice_keys:
            continue
        for kv in record.metric_keys_and_values:
            if kv.key.is_diff:
                continue
            value = _as_float(kv.value)
            if value is not None:
                metrics[_metric_name(kv.key)] = value
        for name, value in record.metrics.items():
            number = _as_float(value)
            if number is not None:
                metrics.setdefault(name, number)
    return dict(sorted(metrics.items()))


def _metric_name(key) -> str:
    name = key.name
    if key.output_name:
        name = f'{key.output_name}/{name}'
    if key.model_name:
        name = f'{key.model_name}/{name}'
    if key.HasField('sub_key'):
        sub = key.sub_key
        for field in ('class_id', 'k', 'top_k'):
            if sub.HasField(field):
                name = f'{name}@{field}={getattr(sub, field).value}'
    return name


def _as_float(value) -> float | None:
    kind = value.WhichOneof('type')
    if kind == 'double_value':
        return value.double_value.value
    if kind == 'bounded_value':
        return value.bounded_value.value.value
    return None
