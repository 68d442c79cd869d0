"""SavedModel resolution and structure checks without TensorFlow."""

from __future__ import annotations

import os
import shutil

import pytest

from final_exporter.checks.savedmodel import _outline, inspect_saved_model, resolve_saved_model_dir
from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.stores import store_for

from conftest import ESTIMATOR_MODEL, KERAS_MODEL

LOCAL = store_for('/')  # The local folder tree: where these tests' models are.


def test_resolves_the_keras_layout_and_reads_signatures():
    path = resolve_saved_model_dir(KERAS_MODEL, LOCAL)
    info = inspect_saved_model(path, LOCAL)

    assert path == os.path.join(KERAS_MODEL, 'Format-Serving')
    assert info.tags == ('serve',)
    assert info.signature_names == ('serving_default',)
    assert info.export_format == 'pb'


def test_the_saving_tensorflow_version_is_read_with_the_structure_from_either_graph_form(
    tmp_path,
):
    text = tmp_path / 'text'
    (text / 'variables').mkdir(parents=True)
    (text / 'saved_model.pbtxt').write_text(
        'meta_graphs {\n  meta_info_def {\n    tags: "serve"\n'
        '    tensorflow_version: "2.16.1"\n  }\n}\n'
    )

    binary = inspect_saved_model(os.path.join(KERAS_MODEL, 'Format-Serving'), LOCAL)
    as_text = inspect_saved_model(str(text), LOCAL)

    assert binary.tensorflow_version.startswith('2.3.')  # The test model's TensorFlow.
    assert (as_text.tensorflow_version, as_text.tags) == ('2.16.1', ('serve',))


def _ld(field: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads under 128 bytes)."""
    return bytes([field << 3 | 2, len(payload)]) + payload


def _graph_only_model(tmp_path, saved_model: bytes) -> str:
    (tmp_path / 'variables').mkdir()
    (tmp_path / 'saved_model.pb').write_bytes(saved_model)
    return str(tmp_path)


def test_tags_signatures_and_version_are_read_from_every_meta_graph_of_one_decode(tmp_path):
    def meta_graph(tag: bytes, version: bytes, key: bytes) -> bytes:
        info = _ld(1, _ld(4, tag) + _ld(5, version))
        return _ld(2, info + _ld(5, _ld(1, key) + _ld(2, _ld(3, b'tensorflow/serving/predict'))))

    model = _graph_only_model(
        tmp_path, meta_graph(b'train', b'2.15.0', b'fit') + meta_graph(b'serve', b'2.16.1', b'go')
    )

    info = inspect_saved_model(model, LOCAL)

    assert (info.tags, info.signature_names) == (('serve', 'train'), ('fit', 'go'))
    assert info.tensorflow_version == '2.15.0'  # The first meta graph's.
    assert list(info.serving.signatures) == ['go']  # The meta graph tagged `serve`.
    assert info.serving.signatures['go'].method_name == 'tensorflow/serving/predict'


def test_a_signature_that_does_not_decode_leaves_the_structure_read_and_no_serving_signatures(
    tmp_path,
):
    # The signature's value has wire type 0 (a varint), not a SignatureDef message.
    entry = _ld(1, b'serving_default') + bytes([2 << 3 | 0, 1])
    model = _graph_only_model(tmp_path, _ld(2, _ld(1, _ld(4, b'serve')) + _ld(5, entry)))

    info = inspect_saved_model(model, LOCAL)

    assert (info.tags, info.signature_names) == (('serve',), ('serving_default',))
    assert info.serving is None  # The signature guard says what is wrong, where it reads them.


class _NoLocalPaths(type(LOCAL)):
    """The local folder tree, seen as a bucket is: no local path, whole files read."""

    def local_path(self, path):
        return None


@pytest.mark.parametrize('model', [KERAS_MODEL, ESTIMATOR_MODEL])
def test_a_local_graph_file_read_without_its_graph_gives_what_the_whole_file_gives(model):
    path = resolve_saved_model_dir(model, LOCAL)

    outlined = inspect_saved_model(path, LOCAL)
    whole = inspect_saved_model(path, _NoLocalPaths())

    assert outlined == whole
    assert outlined.serving == whole.serving  # Not part of the equality above.


def test_the_graph_is_not_read_even_when_it_is_not_a_graph(tmp_path):
    info = _ld(1, _ld(4, b'serve') + _ld(5, b'2.16.1'))
    signature = _ld(5, _ld(1, b'serving_default') + _ld(2, _ld(3, b'tensorflow/serving/predict')))
    graph = _ld(2, bytes([0xFF]) * 40)  # No protocol buffer: it would not decode.
    model = _graph_only_model(tmp_path, _ld(2, info + graph + signature))
    with open(os.path.join(model, 'saved_model.pb'), 'rb') as f:
        read = _outline(f.fileno(), os.fstat(f.fileno()).st_size)

    found = inspect_saved_model(model, LOCAL)

    assert read == _ld(2, info + signature)
    assert (found.tags, found.signature_names) == (('serve',), ('serving_default',))
    assert found.tensorflow_version == '2.16.1'


def test_a_graph_file_cut_short_inside_its_graph_is_refused_as_truncated(tmp_path):
    meta_graph = _ld(1, _ld(4, b'serve')) + bytes([2 << 3 | 2, 100]) + b'graph'  # 95 bytes short.
    model = _graph_only_model(tmp_path, _ld(2, meta_graph))

    with pytest.raises(InvalidInputError, match='truncated or corrupt'):
        inspect_saved_model(model, LOCAL)


def test_resolves_the_estimator_layout():
    path = resolve_saved_model_dir(ESTIMATOR_MODEL, LOCAL)

    assert path.endswith(os.path.join('export', 'chicago-taxi', '1646034756'))
    assert 'serving_default' in inspect_saved_model(path, LOCAL).signature_names


def test_a_savedmodel_folder_is_accepted_as_is():
    path = os.path.join(KERAS_MODEL, 'Format-Serving')

    assert resolve_saved_model_dir(path, LOCAL) == path


def test_corrupt_graph_is_refused(tmp_path):
    model = tmp_path / 'm'
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), model)
    (model / 'saved_model.pb').write_bytes(b'\xff' * 64)

    with pytest.raises(InvalidInputError, match='truncated or corrupt'):
        inspect_saved_model(str(model), LOCAL)


def test_empty_graph_is_refused(tmp_path):
    model = tmp_path / 'm'
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), model)
    (model / 'saved_model.pb').write_bytes(b'')

    with pytest.raises(InvalidInputError, match='is empty'):
        inspect_saved_model(str(model), LOCAL)


def test_missing_shard_of_many_is_named(tmp_path):
    model = tmp_path / 'm'
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), model)
    variables = model / 'variables'
    os.rename(
        variables / 'variables.data-00000-of-00001', variables / 'variables.data-00000-of-00003'
    )
    (variables / 'variables.data-00002-of-00003').write_bytes(b'x')

    with pytest.raises(InvalidInputError, match=r'missing variables\.data-00001-of-00003'):
        inspect_saved_model(str(model), LOCAL)


def test_error_lists_what_the_folder_holds(tmp_path):
    (tmp_path / 'checkpoint').write_text('')

    with pytest.raises(InvalidInputError, match='found checkpoint'):
        resolve_saved_model_dir(str(tmp_path), LOCAL)
