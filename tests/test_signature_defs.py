"""Serving signatures read without TensorFlow agree with TensorFlow's own reading."""

from __future__ import annotations

import os

import pytest

from final_exporter.checks import signature_defs
from final_exporter.checks.signature_defs import (
    Signature,
    TensorSpec,
    read_serving_signatures,
    signatures_from_pb,
    signatures_from_pbtxt,
)
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.tf_export import write_pbtxt
from final_exporter.storage.stores import store_for

from conftest import ESTIMATOR_MODEL, KERAS_MODEL

LOCAL = store_for('/')
ESTIMATOR_SAVED_MODEL = os.path.join(
    ESTIMATOR_MODEL, 'Format-Serving', 'export', 'chicago-taxi', '1646034756'
)
KERAS_SAVED_MODEL = os.path.join(KERAS_MODEL, 'Format-Serving')


def tensorflow_reading(path: str) -> dict[str, Signature]:
    """The serve meta graph's signatures as TensorFlow's generated classes parse them."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, 'saved_model.pb'), 'rb') as f:
        saved_model.ParseFromString(f.read())
    meta = next(m for m in saved_model.meta_graphs if 'serve' in m.meta_info_def.tags)

    def spec(info) -> TensorSpec:
        encoding = info.WhichOneof('encoding')
        if encoding == 'composite_tensor':
            kind = f'composite:{info.composite_tensor.type_spec.type_spec_class_name}'
        else:
            kind = {'name': 'dense', 'coo_sparse': 'sparse'}[encoding]
        shape = tf.TensorShape(info.tensor_shape) if info.HasField('tensor_shape') else None
        dims = (
            None
            if shape is None or shape.rank is None
            else tuple(d if d is not None else -1 for d in shape.as_list())
        )
        dtype = tf.as_dtype(info.dtype).name if info.dtype else 'invalid'  # DT_INVALID: composites
        return TensorSpec(dtype, dims, kind)

    return {
        key: Signature(
            sig.method_name,
            {k: spec(v) for k, v in sorted(sig.inputs.items())},
            {k: spec(v) for k, v in sorted(sig.outputs.items())},
        )
        for key, sig in sorted(meta.signature_def.items())
        if not key.startswith('__')
    }


@pytest.fixture(scope='session')
def all_models(signature_models) -> dict[str, str]:
    return {**signature_models, 'keras': KERAS_SAVED_MODEL, 'estimator': ESTIMATOR_SAVED_MODEL}


@pytest.mark.parametrize(
    'name', ['keras', 'estimator', 'served', 'changed', 'tf1_predict', 'tf1_regress']
)
def test_pb_reading_equals_tensorflows(all_models, name):
    path = all_models[name]

    read = read_serving_signatures(path, LOCAL)

    assert read.graph_file == 'saved_model.pb'
    assert read.signatures == tensorflow_reading(path)


@pytest.mark.parametrize('name', ['keras', 'estimator', 'served', 'tf1_predict'])
def test_pbtxt_reading_equals_pb_reading(all_models, name, tmp_path):
    path = all_models[name]
    write_pbtxt(os.path.join(path, 'saved_model.pb'), str(tmp_path / 'saved_model.pbtxt'))

    as_text = read_serving_signatures(str(tmp_path), LOCAL)

    assert as_text.graph_file == 'saved_model.pbtxt'
    assert as_text.signatures == read_serving_signatures(path, LOCAL).signatures


@pytest.mark.parametrize(
    'options',
    [
        {'as_one_line': True},
        {'pointy_brackets': True},
        {'use_short_repeated_primitives': True, 'as_utf8': True},
        {'force_colon': True, 'use_index_order': True},
    ],
    ids=['one_line', 'pointy_brackets', 'short_lists_utf8', 'colons_index_order'],
)
def test_every_text_format_variant_protobuf_writes_is_read(signature_models, options):
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    path = signature_models['tf1_predict']
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, 'saved_model.pb'), 'rb') as f:
        saved_model.ParseFromString(f.read())
    text = text_format.MessageToString(saved_model, **options).encode('utf-8')

    as_text = signatures_from_pbtxt(b'# written by protobuf\n' + text, 'saved_model.pbtxt')

    assert as_text == read_serving_signatures(path, LOCAL).signatures


def test_any_fields_in_the_skipped_graph_are_read_past(signature_models):
    from google.protobuf import text_format
    from tensorflow.core.framework import tensor_shape_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    path = signature_models['tf1_predict']
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, 'saved_model.pb'), 'rb') as f:
        saved_model.ParseFromString(f.read())
    shape = tensor_shape_pb2.TensorShapeProto(dim=[{'size': 7}])
    saved_model.meta_graphs[0].collection_def['shapes'].any_list.value.add().Pack(shape)
    text = text_format.MessageToString(saved_model)
    assert '[type.googleapis.com/tensorflow.TensorShapeProto] {' in text

    as_text = signatures_from_pbtxt(text.encode('utf-8'), 'saved_model.pbtxt')

    assert as_text == read_serving_signatures(path, LOCAL).signatures


def test_shapes_dtypes_methods_and_encodings_are_read(signature_models):
    served = read_serving_signatures(signature_models['served'], LOCAL).signatures
    tf1 = read_serving_signatures(signature_models['tf1_predict'], LOCAL).signatures

    assert served['relax'].inputs == {'x': TensorSpec('float32', (-1, 3))}
    assert served['unknown_rank'].inputs['x'].shape is None
    assert served['dtype'].inputs['ids'].dtype == 'int64'
    assert served['outputs'].outputs == {
        'label': TensorSpec('string', ()),
        'score': TensorSpec('float32', ()),
    }
    assert tf1['serving_default'].method_name == 'tensorflow/serving/predict'
    assert tf1['serving_default'].inputs['ids'] == TensorSpec('int64', (-1, 5), 'sparse')
    assert '__saved_model_init_op' not in served


def test_a_composite_output_is_read_as_composite(tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.int64)])
    def lengths(values):
        return {'lengths': values.row_lengths(), 'doubled': values * 2}

    tf.saved_model.save(tf.Module(), str(tmp_path), signatures={'serving_default': lengths})

    read = read_serving_signatures(str(tmp_path), LOCAL).signatures['serving_default']

    assert read.outputs['doubled'].encoding == 'composite:RaggedTensorSpec'
    assert read.outputs['lengths'] == TensorSpec('int64', (-1,))
    assert read == tensorflow_reading(str(tmp_path))['serving_default']


def test_the_schema_field_numbers_are_tensorflows():
    from tensorflow.core.framework import tensor_shape_pb2
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2, struct_pb2

    meta = meta_graph_pb2.MetaGraphDef
    info = meta_graph_pb2.TensorInfo
    messages = {
        'SavedModel': saved_model_pb2.SavedModel, 'MetaGraphDef': meta,
        'MetaInfoDef': meta.MetaInfoDef, 'SignatureEntry': meta.SignatureDefEntry,
        'SignatureDef': meta_graph_pb2.SignatureDef,
        'TensorInfoEntry': meta_graph_pb2.SignatureDef.InputsEntry, 'TensorInfo': info,
        'CooSparse': info.CooSparse, 'CompositeTensor': info.CompositeTensor,
        'TypeSpecProto': struct_pb2.TypeSpecProto,
        'TensorShapeProto': tensor_shape_pb2.TensorShapeProto,
        'Dim': tensor_shape_pb2.TensorShapeProto.Dim,
    }  # fmt: skip

    assert set(messages) == set(signature_defs.SCHEMA)
    for name, fields in signature_defs.SCHEMA.items():
        declared = messages[name].DESCRIPTOR.fields_by_name
        assert {f: n for f, (n, _) in fields.items()} == {f: declared[f].number for f in fields}


def test_the_enum_tables_are_tensorflows():
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import struct_pb2

    tensorflows = {n: types_pb2.DataType.Name(n) for n in signature_defs.DATA_TYPES}
    assert tensorflows == signature_defs.DATA_TYPES
    for number in signature_defs.DATA_TYPES:
        if number:
            assert signature_defs.dtype_name(number) == tf.as_dtype(number).name
    classes = struct_pb2.TypeSpecProto.TypeSpecClass
    tensorflows = {n: classes.Name(n) for n in signature_defs.TYPE_SPEC_CLASSES}
    assert tensorflows == signature_defs.TYPE_SPEC_CLASSES


def test_a_truncated_graph_file_is_refused_naming_it():
    with open(os.path.join(KERAS_SAVED_MODEL, 'saved_model.pb'), 'rb') as f:
        data = f.read()

    with pytest.raises(InvalidInputError, match=r"'v/saved_model\.pb' cannot be read.*truncated"):
        signatures_from_pb(data[: len(data) // 2], 'v/saved_model.pb')


def test_a_folder_without_a_graph_file_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match=r'neither saved_model\.pb nor saved_model\.pbtxt'):
        read_serving_signatures(str(tmp_path), LOCAL)
