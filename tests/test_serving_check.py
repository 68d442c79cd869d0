"""Serving smoke test and prediction parity on real SavedModels and real examples."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from final_exporter.checks.examples import read_examples
from final_exporter.checks.parity import (
    compare_outputs,
    merge_summaries,
    prediction_parity,
    require_parity,
)
from final_exporter.checks.parity_beam import beam_comparer
from final_exporter.checks.smoke import smoke_test
from final_exporter.checks.synthetic import synthetic_inputs
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.tf_export import write_pbtxt

from conftest import ESTIMATOR_MODEL, KERAS_MODEL, PENGUIN_EVAL, penguin_examples

PENGUIN_FEATURES = {'body_mass_g', 'culmen_depth_mm', 'culmen_length_mm', 'flipper_length_mm'}
MULTI_PROCESS = [
    '--runner=DirectRunner',
    '--direct_running_mode=multi_processing',
    '--direct_num_workers=2',
]


def save_reexport(source_dir: str, dest: str, transform) -> str:
    """A `serving_fn`-style re-export whose serving_default returns transform(output_0)."""
    loaded = tf.saved_model.load(source_dir)
    predict = loaded.signatures['serving_default']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def serving(examples):
        return transform(predict(examples=examples)['output_0'])

    tf.saved_model.save(loaded, dest, signatures={'serving_default': serving})
    return dest


@pytest.fixture(scope='module')
def models(tmp_path_factory) -> dict[str, str]:
    """The source model and re-exports of it, built once for this module."""
    root = tmp_path_factory.mktemp('models')
    source = str(root / 'source')
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), source)
    copy = str(root / 'copy')
    shutil.copytree(source, copy)
    return {
        'source': source,
        'copy': copy,
        'scaled': save_reexport(source, str(root / 'scaled'), lambda o: {'output_0': o * 1.5}),
        'nan': save_reexport(source, str(root / 'nan'), lambda o: {'output_0': o * np.nan}),
        'renamed': save_reexport(source, str(root / 'renamed'), lambda o: {'scores': o}),
        'no_batch': save_reexport(
            source, str(root / 'no_batch'), lambda o: {'output_0': tf.reduce_sum(o, axis=0)}
        ),
    }


def source_predictions(source_dir: str, examples: list[bytes]) -> np.ndarray:
    loaded = tf.saved_model.load(source_dir)
    return loaded.signatures['serving_default'](examples=tf.constant(examples))['output_0'].numpy()


# ----------------------------------------------------------------------------- examples


@pytest.fixture
def examples_uri(tmp_path) -> str:
    """An Examples artifact folder as ExampleGen writes it (GZIP TFRecord per split)."""
    uri = tmp_path / 'ExampleGen' / 'examples' / '3'
    shutil.copytree(PENGUIN_EVAL, uri / 'Split-eval')
    return str(uri)


def test_read_examples_returns_the_first_records_of_the_split(examples_uri):
    assert read_examples(examples_uri, 'eval', limit=7) == penguin_examples(7)


def test_read_examples_reads_uncompressed_files_in_name_order(tmp_path):
    records = penguin_examples(6)
    split = tmp_path / 'examples' / 'Split-train'
    split.mkdir(parents=True)
    for name, chunk in (('part-1', records[3:]), ('part-0', records[:3])):
        with tf.io.TFRecordWriter(str(split / name)) as writer:
            for r in chunk:
                writer.write(r)

    assert read_examples(str(tmp_path / 'examples'), 'train', limit=5) == records[:5]
    assert read_examples(str(tmp_path / 'examples'), 'train', limit=100) == records


def test_missing_split_is_refused_naming_the_splits_there_are(examples_uri):
    with pytest.raises(InvalidInputError, match=r"no split 'train' .*it has splits \['eval'\]"):
        read_examples(examples_uri, 'train')


@pytest.mark.parametrize(
    ('setup', 'limit', 'message'),
    [
        (lambda p: None, 10, 'does not exist'),
        (lambda p: os.makedirs(os.path.join(p, 'Split-eval')), 10, 'holds no files'),
        (lambda p: _write(os.path.join(p, 'Split-eval', 'a.gz'), b'not gzip'), 10, 'GZIP TFRecord'),
        (lambda p: _write(os.path.join(p, 'Split-eval', 'a'), b'\x01' * 20), 10, 'uncompressed'),
        (lambda p: _write(os.path.join(p, 'Split-eval', 'a'), b''), 10, 'holds no records'),
        (lambda p: os.makedirs(p), 0, 'positive integer'),
    ],
    ids=['no-folder', 'empty-split', 'not-gzip', 'not-tfrecord', 'no-records', 'zero-limit'],
)
def test_unreadable_examples_are_refused(tmp_path, setup, limit, message):
    uri = str(tmp_path / 'examples')
    setup(uri)

    with pytest.raises(InvalidInputError, match=message):
        read_examples(uri, 'eval', limit=limit)


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)


# ----------------------------------------------------------------------------- smoke test


def test_smoke_test_feeds_real_examples_and_records_the_answer(models):
    result = smoke_test(models['source'], examples=penguin_examples(5))

    assert (result.inputs, result.batch_size, result.example_input) == ('examples', 5, 'examples')
    assert result.outputs == {'output_0': ('float32', (5, 3))}
    lineage = json.loads(json.dumps(result.to_lineage()))
    assert lineage['smoke_test']['outputs'] == {'output_0': {'dtype': 'float32', 'shape': [5, 3]}}


def test_synthetic_examples_hold_every_feature_the_model_parses(models):
    signature = tf.saved_model.load(models['source']).signatures['serving_default']

    inputs = synthetic_inputs(signature)

    assert list(inputs) == ['examples']
    assert inputs['examples'].shape == (2,)
    example = tf.train.Example.FromString(inputs['examples'].numpy()[0])
    assert set(example.features.feature) == PENGUIN_FEATURES
    result = smoke_test(models['source'])
    assert (result.inputs, result.outputs) == ('synthetic', {'output_0': ('float32', (2, 3))})


@pytest.mark.parametrize('signature', ['serving_default', 'predict', 'regression'])
def test_estimator_export_answers_synthetic_examples_of_its_sparse_features(signature):
    (export_dir,) = glob.glob(os.path.join(ESTIMATOR_MODEL, 'Format-Serving', 'export', '*', '*'))

    result = smoke_test(export_dir, signature)

    assert result.inputs == 'synthetic'
    assert all(shape[0] == 2 for _, shape in result.outputs.values())


def test_smoke_test_loads_an_as_text_export(models, tmp_path):
    export_dir = tmp_path / 'pbtxt'
    shutil.copytree(models['source'], export_dir, ignore=shutil.ignore_patterns('*.pb'))
    write_pbtxt(
        os.path.join(models['source'], keys.SAVED_MODEL_PB), str(export_dir / 'saved_model.pbtxt')
    )

    result = smoke_test(str(export_dir), examples=penguin_examples(3))

    assert result.outputs == {'output_0': ('float32', (3, 3))}


@pytest.mark.parametrize(
    'damage',
    [
        lambda d: os.remove(os.path.join(d, 'saved_model.pb')),
        lambda d: _truncate(os.path.join(d, 'variables', 'variables.data-00000-of-00001')),
    ],
    ids=['no-graph', 'truncated-variables'],
)
def test_export_that_does_not_load_is_refused(models, tmp_path, damage):
    export_dir = str(tmp_path / 'broken')
    shutil.copytree(models['source'], export_dir)
    damage(export_dir)

    with pytest.raises(InvalidInputError, match=r"the export in '.*broken' does not load"):
        smoke_test(export_dir, examples=penguin_examples(2))


def _truncate(path: str) -> None:
    with open(path, 'r+b') as f:
        f.truncate(100)


def test_unknown_signature_is_refused_naming_the_ones_there_are(models):
    with pytest.raises(
        InvalidInputError, match=r"no signature 'predict'; it has \['serving_default'\]"
    ):
        smoke_test(models['source'], 'predict')


def test_examples_the_model_cannot_parse_fail_the_smoke_test(models):
    with pytest.raises(
        InvalidInputError, match=r'failed on 1 examples: InvalidArgumentError: Could not parse'
    ):
        smoke_test(models['source'], examples=[b'not a tf.Example'])


def test_nan_answer_is_refused(models):
    with pytest.raises(InvalidInputError, match=r"NaN or infinity in output 'output_0' \(6 values"):
        smoke_test(models['nan'], examples=penguin_examples(2))


def test_answer_without_the_batch_dimension_is_refused(models):
    with pytest.raises(
        InvalidInputError, match=r"output 'output_0' with shape \[3\] for a batch of 2"
    ):
        smoke_test(models['no_batch'])


def test_examples_need_a_signature_with_one_string_input(tmp_path):
    module = tf.Module()
    module.scale = tf.Variable(2.0)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.float32, name='a'),
            tf.TensorSpec([None, 4], tf.float32, name='b'),
        ]
    )
    def serving(a, b):
        return {'sum': a * module.scale + tf.reduce_sum(b, axis=1)}

    export_dir = str(tmp_path / 'two_inputs')
    tf.saved_model.save(module, export_dir, signatures={'serving_default': serving})

    assert smoke_test(export_dir).outputs == {'sum': ('float32', (2,))}
    with pytest.raises(InvalidInputError, match=r'takes inputs .*exactly one input'):
        smoke_test(export_dir, examples=penguin_examples(2))


# ----------------------------------------------------------------------------- parity


def test_identical_copy_has_parity(models):
    result = prediction_parity(models['source'], models['copy'], penguin_examples(20))

    assert result.ok
    assert result.examples == 20
    assert [(o.name, o.max_abs_diff, o.mismatched) for o in result.outputs] == [
        ('output_0', 0.0, 0)
    ]
    require_parity(result)
    lineage = json.loads(json.dumps(result.to_lineage()))
    assert lineage['prediction_parity']['ok'] is True


def test_reexport_that_scales_outputs_is_caught_with_its_worst_examples(models):
    examples = penguin_examples(20)
    want = source_predictions(models['source'], examples)
    per_example = np.abs(want * 0.5).max(axis=1)  # |1.5 x - x|
    worst = sorted(range(20), key=lambda i: (-per_example[i], i))[:5]

    result = prediction_parity(models['source'], models['scaled'], examples, batch_size=6)

    assert not result.ok
    (output,) = result.outputs
    assert output.mismatched == 20
    assert [i for i, _ in output.worst] == worst
    assert output.max_abs_diff == pytest.approx(per_example.max(), rel=1e-6)
    with pytest.raises(
        InvalidInputError, match=r"output 'output_0': 20 of 20 examples out of tol"
    ) as e:
        require_parity(result)
    assert f'example {worst[0]}: ' in str(e.value)


def test_tolerance_decides_what_counts_as_a_mismatch(models):
    result = prediction_parity(models['source'], models['scaled'], penguin_examples(10), atol=0.5)

    assert result.ok
    assert result.outputs[0].max_abs_diff > 0


def test_output_missing_from_the_export_fails_parity(models):
    result = prediction_parity(models['source'], models['renamed'], penguin_examples(4))

    assert not result.ok
    assert result.missing_outputs == ('output_0',)
    with pytest.raises(InvalidInputError, match="output 'output_0' is missing from the export"):
        require_parity(result)


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'examples': []}, 'at least one example'),
        ({'atol': -1.0}, 'atol must be a finite number'),
        ({'rtol': float('nan')}, 'rtol must be a finite number'),
        ({'batch_size': 0}, 'batch_size must be a positive integer'),
    ],
)
def test_bad_parity_arguments_are_refused(models, kwargs, message):
    args = {'examples': penguin_examples(2), **kwargs}

    with pytest.raises(InvalidInputError, match=message):
        prediction_parity(models['source'], models['copy'], **args)


@pytest.mark.parametrize(
    'beam_args',
    [['--runner=DirectRunner'], MULTI_PROCESS],
    ids=['in-memory', 'multi-processing'],
)
def test_beam_comparison_gives_the_in_process_figures(models, beam_args):
    examples = penguin_examples(23)
    local = prediction_parity(models['source'], models['scaled'], examples, batch_size=5)

    beam = prediction_parity(
        models['source'],
        models['scaled'],
        examples,
        compare_batches=beam_comparer(beam_args),
        batch_size=5,
    )

    assert (local.runner, beam.runner) == ('in_process', 'beam')
    assert beam.outputs == local.outputs
    assert (beam.examples, beam.ok, beam.missing_outputs) == (23, False, ())


@pytest.mark.parametrize(
    'beam_args',
    [['--runner=DirectRunner'], MULTI_PROCESS],
    ids=['in-memory', 'multi-processing'],
)
def test_beam_worker_failure_is_reported_as_invalid_input(models, beam_args):
    with pytest.raises(
        InvalidInputError, match=r'failed on examples 2\.\.2: .*Could not parse'
    ) as e:
        prediction_parity(
            models['source'],
            models['copy'],
            [*penguin_examples(2), b'not a tf.Example'],
            compare_batches=beam_comparer(beam_args),
            batch_size=1,
        )
    assert 'while running' not in str(e.value)


# ----------------------------------------------------------------------------- summaries


def test_comparison_treats_nan_shapes_and_strings_as_documented():
    source = {
        'both_nan': np.array([[np.nan], [1.0]]),
        'one_nan': np.array([[np.nan], [1.0]]),
        'shape': np.zeros((2, 3)),
        'labels': np.array([[b'a'], [b'b']], dtype=object),
    }
    export = {
        'both_nan': np.array([[np.nan], [1.0]]),
        'one_nan': np.array([[0.0], [1.0]]),
        'shape': np.zeros((2, 4)),
        'labels': np.array([[b'a'], [b'c']], dtype=object),
    }

    summary = compare_outputs(10, 2, source, export, atol=1e-5, rtol=1e-5)

    outputs = summary['outputs']
    assert outputs['both_nan'] == {'max': 0.0, 'mismatched': 0, 'worst': []}
    assert outputs['one_nan'] == {'max': np.inf, 'mismatched': 1, 'worst': [[10, np.inf]]}
    assert outputs['shape']['mismatched'] == 2
    assert outputs['labels'] == {'max': np.inf, 'mismatched': 1, 'worst': [[11, np.inf]]}


def test_merging_summaries_does_not_depend_on_order():
    parts = [
        compare_outputs(
            i * 3, 3, {'y': np.arange(3.0)[:, None]}, {'y': (np.arange(3.0) * i)[:, None]}, 0, 0
        )
        for i in range(4)
    ]

    forward = parts[0]
    for part in parts[1:]:
        forward = merge_summaries(forward, part)
    backward = parts[-1]
    for part in reversed(parts[:-1]):
        backward = merge_summaries(part, backward)

    assert forward == backward
    assert forward['examples'] == 12
    assert forward['outputs']['y']['worst'][0] == [11, 4.0]
