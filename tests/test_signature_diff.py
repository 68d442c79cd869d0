"""What breaks a client of the served version, on real SavedModels (tests/conftest.py)."""

from __future__ import annotations

import json

import pytest

from final_exporter.checks.signature_defs import Signature, TensorSpec, read_serving_signatures
from final_exporter.checks.signature_diff import (
    BREAKING_KINDS,
    COMPATIBLE_KINDS,
    SignatureChange,
    compare_shapes,
    diff_signatures,
)
from final_exporter.storage.stores import store_for

LOCAL = store_for('/')


@pytest.fixture(scope='session')
def diff(signature_models):
    """The diff from the `served` model to the `changed` one."""
    served, changed = (
        read_serving_signatures(signature_models[name], LOCAL).signatures
        for name in ('served', 'changed')
    )
    return diff_signatures(served, changed)


def changes(diff, signature: str) -> list[tuple[str, str | None]]:
    """(kind, input or output) of the changes to one signature, breaking and compatible."""
    return [(c.kind, c.name) for c in diff.breaks + diff.compatible if c.signature == signature]


def test_a_new_signature_is_compatible(diff):
    assert changes(diff, 'new') == [('signature_added', None)]
    assert not any(c.signature == 'new' for c in diff.breaks)


def test_a_removed_signature_breaks(diff):
    (removed,) = [c for c in diff.breaks if c.signature == 'gone']

    assert removed.kind == 'signature_removed'
    assert removed.text() == "signature 'gone' removed (method 'tensorflow/serving/predict')"


def test_a_renamed_input_breaks_as_one_rename(diff):
    (renamed,) = [c for c in diff.breaks if c.signature == 'rename']

    assert renamed.kind == 'input_renamed'
    assert (renamed.name, renamed.new_name) == ('x', 'features')
    assert renamed.text() == (
        "signature 'rename': input 'x' renamed to 'features' (float32 (None, 3))"
    )


def test_an_added_or_removed_input_breaks(diff):
    assert changes(diff, 'add_input') == [('input_added', 'w')]
    assert changes(diff, 'remove_input') == [('input_removed', 'w')]
    assert all(c.breaking for c in diff.breaks if c.signature in ('add_input', 'remove_input'))


def test_a_changed_input_dtype_breaks_naming_both_dtypes(diff):
    (changed,) = [c for c in diff.breaks if c.signature == 'dtype']

    assert changed.kind == 'input_dtype_changed'
    assert changed.text() == (
        "signature 'dtype': input 'ids' dtype changed int64 -> int32 (shape (None,))"
    )
    assert changed.to_dict()['old'] == {'dtype': 'int64', 'shape': [-1], 'encoding': 'dense'}
    assert changed.to_dict()['new']['dtype'] == 'int32'


@pytest.mark.parametrize(
    ('signature', 'kind', 'text'),
    [
        ('narrow', 'input_shape_narrowed', '(None, None) -> (None, 3)'),
        ('unknown_rank', 'input_shape_narrowed', '<unknown> -> (None,)'),
        ('fixed', 'input_shape_changed', '(None, 3) -> (None, 4)'),
        ('rank', 'input_shape_changed', '(None, 3) -> (None, 3, 1)'),
    ],
)
def test_a_narrowed_or_changed_input_shape_breaks(diff, signature, kind, text):
    (change,) = [c for c in diff.breaks if c.signature == signature]

    assert change.kind == kind
    assert text in change.text()


def test_a_relaxed_input_shape_is_compatible(diff):
    assert changes(diff, 'relax') == [('input_shape_relaxed', 'x')]
    assert not any(c.signature == 'relax' for c in diff.breaks)


def test_outputs_removed_or_retyped_break_and_new_outputs_do_not(diff):
    breaks = [(c.kind, c.name) for c in diff.breaks if c.signature == 'outputs']
    compatible = [(c.kind, c.name) for c in diff.compatible if c.signature == 'outputs']

    assert breaks == [('output_removed', 'label'), ('output_dtype_changed', 'score')]
    assert compatible == [('output_added', 'prob')]


def test_an_unchanged_signature_has_no_changes(diff, signature_models):
    served = read_serving_signatures(signature_models['served'], LOCAL).signatures

    assert changes(diff, 'same') == []
    assert diff_signatures(served, served).breaks == ()
    assert diff_signatures(served, served).compatible == ()


def test_a_changed_method_name_and_input_encoding_break(signature_models):
    predict, regress = (
        read_serving_signatures(signature_models[name], LOCAL).signatures
        for name in ('tf1_predict', 'tf1_regress')
    )

    found = diff_signatures(predict, regress)

    assert [(c.kind, c.name) for c in found.breaks] == [
        ('method_name_changed', None),
        ('input_encoding_changed', 'ids'),
    ]
    assert found.breaks[0].text() == (
        "signature 'serving_default': method name changed 'tensorflow/serving/predict' -> "
        "'tensorflow/serving/regress'"
    )
    assert 'encoding changed sparse -> dense' in found.breaks[1].text()


def test_every_change_is_listed_once_and_lineage_is_json(diff):
    record = json.loads(json.dumps(diff.to_lineage()))

    assert len(record['breaks']) == 11 and len(record['compatible_changes']) == 3
    assert {b['kind'] for b in record['breaks']} <= BREAKING_KINDS
    assert {c['kind'] for c in record['compatible_changes']} <= COMPATIBLE_KINDS
    assert all(b['text'] for b in record['breaks'])


@pytest.mark.parametrize(
    ('old', 'new', 'expected'),
    [
        (None, None, 'same'),
        (None, (-1, 3), 'narrowed'),  # unknown rank -> known rank
        ((-1, 3), None, 'relaxed'),
        ((-1, -1), (-1, 3), 'narrowed'),  # -1 -> fixed
        ((-1, 3), (-1, -1), 'relaxed'),  # fixed -> -1
        ((-1, 3), (-1, 4), 'changed'),  # fixed a -> fixed b
        ((-1, 3), (-1, 3, 1), 'changed'),  # a different rank
        ((), (-1,), 'changed'),
        ((3, -1), (-1, 3), 'changed'),  # relaxed in one dimension, narrowed in another
        ((-1, 3), (-1, 3), 'same'),
    ],
)
def test_shape_rules(old, new, expected):
    assert compare_shapes(old, new) == expected


def test_an_output_shape_change_is_recorded_as_compatible():
    old = {'y': TensorSpec('float32', (-1, 3))}
    new = {'y': TensorSpec('float32', (-1, 4))}

    found = diff_signatures(
        {'s': Signature('tensorflow/serving/predict', {}, old)},
        {'s': Signature('tensorflow/serving/predict', {}, new)},
    )

    assert found.breaks == ()
    assert found.compatible == (
        SignatureChange('output_shape_changed', 's', 'output', 'y', old=old['y'], new=new['y']),
    )
