"""Inputs built from a signature alone, for a smoke test without examples.

Zeros and empty strings of the declared shapes; a string input of rank 1 gets
serialized tf.Examples holding every feature the signature's ParseExample ops
read. TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from final_exporter.checks.signatures import input_specs

if TYPE_CHECKING:
    import tensorflow as tf

logger = logging.getLogger(__name__)

# Rows fed to a signature when no examples are given: more than one, so an output
# that dropped or collapsed the batch dimension is caught.
SYNTHETIC_BATCH_SIZE = 2

_PARSE_OPS = ('ParseExample', 'ParseExampleV2', 'ParseSingleExample')


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
