"""The serving signatures of a SavedModel, read without TensorFlow.

What a client of TensorFlow Serving relies on: each `SignatureDef` of the meta
graph a model server loads (the one tagged `serve`), with its method name and the
dtype and shape of every input and output, keyed as requests name them. Read from
`saved_model.pb` at the wire level (checks/protowire.py) or from
`saved_model.pbtxt` (an `as_text` export; checks/textproto.py), both against
one small schema of the few messages involved, so both forms of one model give
equal results. The graph itself is skipped: a `.pb` without decoding
it, a `.pbtxt` without keeping it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from final_exporter.checks import protowire, textproto
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError

SERVE_TAG = 'serve'

# The messages read (field numbers from tensorflow/core/protobuf/{saved_model,meta_graph,
# struct}.proto and tensorflow/core/framework/tensor_shape.proto).
SCHEMA: protowire.Schema = {
    'SavedModel': {'meta_graphs': (2, 'MetaGraphDef')},
    'MetaGraphDef': {'meta_info_def': (1, 'MetaInfoDef'), 'signature_def': (5, 'SignatureEntry')},
    'MetaInfoDef': {'tags': (4, 'string'), 'tensorflow_version': (5, 'string')},
    'SignatureEntry': {'key': (1, 'string'), 'value': (2, 'SignatureDef')},
    'SignatureDef': {
        'inputs': (1, 'TensorInfoEntry'),
        'outputs': (2, 'TensorInfoEntry'),
        'method_name': (3, 'string'),
    },
    'TensorInfoEntry': {'key': (1, 'string'), 'value': (2, 'TensorInfo')},
    'TensorInfo': {
        'name': (1, 'string'),
        'dtype': (2, 'enum'),
        'tensor_shape': (3, 'TensorShapeProto'),
        'coo_sparse': (4, 'CooSparse'),
        'composite_tensor': (5, 'CompositeTensor'),
    },
    'CooSparse': {'values_tensor_name': (1, 'string')},
    'CompositeTensor': {'type_spec': (1, 'TypeSpecProto')},
    'TypeSpecProto': {'type_spec_class': (1, 'enum'), 'type_spec_class_name': (3, 'string')},
    'TensorShapeProto': {'dim': (2, 'Dim'), 'unknown_rank': (3, 'bool')},
    'Dim': {'size': (1, 'int')},
}

# tensorflow.DataType (types.proto) by number; the reference types (+100) never
# appear in a signature.
DATA_TYPES = {
    0: 'DT_INVALID', 1: 'DT_FLOAT', 2: 'DT_DOUBLE', 3: 'DT_INT32', 4: 'DT_UINT8',
    5: 'DT_INT16', 6: 'DT_INT8', 7: 'DT_STRING', 8: 'DT_COMPLEX64', 9: 'DT_INT64',
    10: 'DT_BOOL', 11: 'DT_QINT8', 12: 'DT_QUINT8', 13: 'DT_QINT32', 14: 'DT_BFLOAT16',
    15: 'DT_QINT16', 16: 'DT_QUINT16', 17: 'DT_UINT16', 18: 'DT_COMPLEX128', 19: 'DT_HALF',
    20: 'DT_RESOURCE', 21: 'DT_VARIANT', 22: 'DT_UINT32', 23: 'DT_UINT64',
    24: 'DT_FLOAT8_E5M2', 25: 'DT_FLOAT8_E4M3FN', 29: 'DT_INT4', 30: 'DT_UINT4',
}  # fmt: skip
# The `tf.DType.name` of the three whose enum name is not it, lower-cased.
_TF_NAMES = {'DT_FLOAT': 'float32', 'DT_DOUBLE': 'float64', 'DT_HALF': 'float16'}
# tensorflow.TypeSpecProto.TypeSpecClass (struct.proto): the kind of a composite tensor.
TYPE_SPEC_CLASSES = {
    0: 'UNKNOWN', 1: 'SPARSE_TENSOR_SPEC', 2: 'INDEXED_SLICES_SPEC', 3: 'RAGGED_TENSOR_SPEC',
    4: 'TENSOR_ARRAY_SPEC', 5: 'DATA_DATASET_SPEC', 6: 'DATA_ITERATOR_SPEC', 7: 'OPTIONAL_SPEC',
    8: 'PER_REPLICA_SPEC', 9: 'VARIABLE_SPEC', 10: 'ROW_PARTITION_SPEC',
    12: 'REGISTERED_TYPE_SPEC', 13: 'EXTENSION_TYPE_SPEC',
}  # fmt: skip

Message = protowire.Message


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature, as a client sees it.

    Attributes:
        dtype: The `tf.DType` name (`float32`, `string`); `DataType(<n>)` for a
            number this reader does not know.
        shape: One size per dimension, -1 where any size is accepted; None when
            even the rank is unknown (or no shape is recorded).
        encoding: `dense`; `sparse` (a `tf.SparseTensor` fed as its three parts);
            `composite:<kind>` (e.g. `composite:RAGGED_TENSOR_SPEC`).
    """

    dtype: str
    shape: tuple[int, ...] | None
    encoding: str = 'dense'

    def shape_text(self) -> str:
        """The shape as TensorFlow prints it: `(None, 3)`, `()`, `<unknown>`."""
        if self.shape is None:
            return '<unknown>'
        dims = ['None' if d < 0 else str(d) for d in self.shape]
        return f'({dims[0]},)' if len(dims) == 1 else f'({", ".join(dims)})'

    def text(self) -> str:
        """`float32 (None, 3)`, with the encoding when it is not dense."""
        kind = '' if self.encoding == 'dense' else f' {self.encoding}'
        return f'{self.dtype}{kind} {self.shape_text()}'

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: dtype, shape (a list, -1 for any size; None for an unknown rank), encoding."""
        shape = None if self.shape is None else list(self.shape)
        return {'dtype': self.dtype, 'shape': shape, 'encoding': self.encoding}


@dataclasses.dataclass(frozen=True)
class Signature:
    """One `SignatureDef`: method name, and inputs and outputs by the keys requests use."""

    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


@dataclasses.dataclass(frozen=True)
class ServingSignatures:
    """The signatures a model server offers from one SavedModel.

    Attributes:
        path: The SavedModel folder.
        graph_file: The file read: `saved_model.pb` or `saved_model.pbtxt`.
        signatures: By signature key, without the internal ones (`__saved_model_init_op`).
    """

    path: str
    graph_file: str
    signatures: Mapping[str, Signature]


def read_serving_signatures(path: str, store: Any) -> ServingSignatures:
    """Reads the serving signatures of the SavedModel in `path` (on `store`, a `Store`).

    Reads the graph file only (`saved_model.pb`, else `saved_model.pbtxt`), never
    the variables.

    Raises:
        InvalidInputError: if there is no graph file, or it does not parse.
    """
    for graph_file in (keys.SAVED_MODEL_PB, keys.SAVED_MODEL_PBTXT):
        file = store.join(path, graph_file)
        if store.is_file(file):
            return parse_serving_signatures(path, graph_file, store.read_bytes(file), file)
    raise InvalidInputError(
        f'{path!r} holds neither {keys.SAVED_MODEL_PB} nor {keys.SAVED_MODEL_PBTXT}: it is not '
        'a SavedModel'
    )


def parse_serving_signatures(
    path: str, graph_file: str, data: bytes, where: str
) -> ServingSignatures:
    """The serving signatures in `data`, the bytes of `graph_file` (`saved_model.pb` or
    `saved_model.pbtxt`) of the SavedModel in `path`; `where` names the file in errors.

    Raises:
        InvalidInputError: if the bytes do not parse.
    """
    parse = signatures_from_pb if graph_file == keys.SAVED_MODEL_PB else signatures_from_pbtxt
    return ServingSignatures(path, graph_file, parse(data, where))


def signatures_from_pb(data: bytes, where: str) -> dict[str, Signature]:
    """The serving signatures in the bytes of a `saved_model.pb` (`where` names it in errors).

    Raises:
        InvalidInputError: if the bytes are not a SavedModel protocol buffer.
    """
    return serving_signatures_of(decode_saved_model_pb(data, where), where)


def decode_saved_model_pb(data: bytes, where: str) -> Message:
    """The bytes of a `saved_model.pb` decoded against `SCHEMA` (`where` names it in errors).

    Raises:
        InvalidInputError: if the bytes are not a SavedModel protocol buffer.
    """
    try:
        return protowire.decode(memoryview(data), 0, len(data), 'SavedModel', SCHEMA)
    except (protowire.WireError, UnicodeDecodeError) as err:
        raise InvalidInputError(
            f'{where!r} cannot be read as a SavedModel protocol buffer ({err}); it is '
            'truncated or corrupt'
        ) from None


def signatures_from_pbtxt(data: bytes, where: str) -> dict[str, Signature]:
    """The serving signatures in the bytes of a `saved_model.pbtxt` (`where` names it in errors).

    Raises:
        InvalidInputError: if the text is not a SavedModel in protobuf text format.
    """
    try:
        saved_model = textproto.decode(data.decode('utf-8'), 'SavedModel', SCHEMA)
    except (textproto.TextFormatError, UnicodeDecodeError, ValueError) as err:
        raise InvalidInputError(
            f'{where!r} cannot be read as a SavedModel in protobuf text format ({err})'
        ) from None
    return serving_signatures_of(saved_model, where)


def dtype_name(value: int | str) -> str:
    """The `tf.DType` name of a `DataType` number (wire) or enum name (text)."""
    name = DATA_TYPES.get(value, f'DataType({value})') if isinstance(value, int) else value
    if not name.startswith('DT_'):
        return name
    return _TF_NAMES.get(name, name[3:].lower())


# --- from the decoded messages to signatures ---------------------------------


def serving_signatures_of(saved_model: Message, where: str) -> dict[str, Signature]:
    """The signatures of the meta graph tagged `serve` (else the first), as TF Serving loads,
    in a decoded SavedModel (`where` names its file in errors).

    Raises:
        InvalidInputError: if it holds no meta graph.
    """
    metas = saved_model.get('meta_graphs', [])
    if not metas:
        raise InvalidInputError(f'{where!r} holds no meta graph; it is not a SavedModel')
    meta = next((m for m in metas if SERVE_TAG in _tags(m)), metas[0])
    signatures = {}
    for entry in meta.get('signature_def', []):
        key = _one(entry, 'key', '')
        if not key.startswith('__'):  # Internal: `__saved_model_init_op`.
            signatures[key] = _signature(_one(entry, 'value', {}))
    return dict(sorted(signatures.items()))


def _tags(meta: Message) -> list[str]:
    return _one(meta, 'meta_info_def', {}).get('tags', [])


def _one(message: Message, field: str, default: Any) -> Any:
    """A singular field's value: the last one given, as protobuf merges repeats."""
    values = message.get(field)
    return values[-1] if values else default


def _signature(message: Message) -> Signature:
    return Signature(
        method_name=_one(message, 'method_name', ''),
        inputs=_tensors(message.get('inputs', [])),
        outputs=_tensors(message.get('outputs', [])),
    )


def _tensors(entries: list[Message]) -> dict[str, TensorSpec]:
    tensors = {_one(e, 'key', ''): _tensor(_one(e, 'value', {})) for e in entries}
    return dict(sorted(tensors.items()))


def _tensor(info: Message) -> TensorSpec:
    return TensorSpec(
        dtype=dtype_name(_one(info, 'dtype', 0)),
        shape=_shape(info['tensor_shape'][-1]) if 'tensor_shape' in info else None,
        encoding=_encoding(info),
    )


def _shape(shape: Message) -> tuple[int, ...] | None:
    # No shape at all (a composite tensor's) is read as an unknown rank, as TF writes
    # a scalar's as an empty TensorShapeProto.
    if _one(shape, 'unknown_rank', False):
        return None
    return tuple(max(-1, _one(d, 'size', 0)) for d in shape.get('dim', []))


def _encoding(info: Message) -> str:
    if 'coo_sparse' in info:
        return 'sparse'
    if 'composite_tensor' not in info:
        return 'dense'
    spec = _one(_one(info, 'composite_tensor', {}), 'type_spec', {})
    kind = _one(spec, 'type_spec_class_name', '') or _one(spec, 'type_spec_class', 0)
    return f'composite:{TYPE_SPEC_CLASSES.get(kind, kind) if isinstance(kind, int) else kind}'
