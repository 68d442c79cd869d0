"""The FinalExporter component: spec, channels, parameters and construction errors."""

from __future__ import annotations

import json

import pytest
from tfx import types
from tfx.types import standard_artifacts

from final_exporter import FinalExporter, FinalExporterSpec
from final_exporter.common import keys


def channel(artifact_type) -> types.Channel:
    return types.Channel(type=artifact_type)


def make(**overrides) -> FinalExporter:
    args = dict(
        model=channel(standard_artifacts.Model),
        model_blessing=channel(standard_artifacts.ModelBlessing),
        name='penguin',
        export_base='/srv/models',
    )
    args.update(overrides)
    return FinalExporter(**args)


def module_level_serving_fn(loaded):
    return loaded.signatures


def test_spec_declares_inputs_outputs_and_parameters():
    assert set(FinalExporterSpec.INPUTS) == {
        keys.MODEL_KEY,
        keys.MODEL_BLESSING_KEY,
        keys.INFRA_BLESSING_KEY,
        keys.MODEL_EVALUATION_KEY,
        keys.EXAMPLES_KEY,
    }
    assert set(FinalExporterSpec.OUTPUTS) == {keys.PUSHED_MODEL_KEY}
    assert set(FinalExporterSpec.PARAMETERS) == {
        keys.NAME_KEY,
        keys.EXPORT_BASE_KEY,
        keys.SERVING_FN_KEY,
        keys.ASSETS_EXTRA_KEY,
        keys.AS_TEXT_KEY,
        keys.REQUIRE_BLESSING_KEY,
        keys.COPY_METHOD_KEY,
        keys.SMOKE_TEST_KEY,
        keys.SIGNATURE_NAME_KEY,
        keys.EXAMPLES_SPLIT_KEY,
        keys.PARITY_SAMPLE_SIZE_KEY,
        keys.PARITY_TOLERANCE_KEY,
        keys.WARMUP_REQUESTS_KEY,
        keys.EXPORTS_TO_KEEP_KEY,
        keys.LABEL_KEY,
        keys.PARANOID_VERIFY_KEY,
        keys.VERTEX_MODEL_KEY,
        keys.VERTEX_PROJECT_KEY,
        keys.VERTEX_REGION_KEY,
        keys.VERTEX_SERVING_IMAGE_KEY,
        keys.VERTEX_VERSION_ALIASES_KEY,
        keys.VERTEX_LABELS_KEY,
        keys.VERTEX_VERSION_DESCRIPTION_KEY,
        keys.VERTEX_IS_DEFAULT_VERSION_KEY,
        keys.VERTEX_ENCRYPTION_KEY_KEY,
    }


def test_output_is_a_pushed_model_channel():
    exporter = make(
        infra_blessing=channel(standard_artifacts.InfraBlessing),
        model_evaluation=channel(standard_artifacts.ModelEvaluation),
    )

    assert exporter.outputs[keys.PUSHED_MODEL_KEY].type == standard_artifacts.PushedModel
    assert exporter.inputs[keys.MODEL_EVALUATION_KEY].type == standard_artifacts.ModelEvaluation


def test_parameters_are_stored_as_primitives():
    exporter = make(
        assets_extra={'labels/classes.txt': '/data/classes.txt'},
        as_text=True,
        serving_fn=module_level_serving_fn,
    )

    props = exporter.exec_properties
    assert props[keys.NAME_KEY] == 'penguin'
    assert props[keys.EXPORT_BASE_KEY] == '/srv/models'
    assert json.loads(props[keys.ASSETS_EXTRA_KEY]) == {'labels/classes.txt': '/data/classes.txt'}
    assert props[keys.AS_TEXT_KEY] == 1
    assert props[keys.REQUIRE_BLESSING_KEY] == 1
    assert props[keys.SERVING_FN_KEY] == 'test_component:module_level_serving_fn'


def test_no_blessing_needs_explicit_opt_out():
    with pytest.raises(ValueError, match='require_blessing=False'):
        make(model_blessing=None)

    exporter = make(model_blessing=None, require_blessing=False)
    assert exporter.exec_properties[keys.REQUIRE_BLESSING_KEY] == 0


def test_infra_blessing_alone_is_enough():
    make(model_blessing=None, infra_blessing=channel(standard_artifacts.InfraBlessing))


@pytest.mark.parametrize(
    ('dest', 'message'),
    [
        ('/etc/passwd', 'is absolute'),
        ('../escape.txt', "contains '..'"),
        ('a/../../b', "contains '..'"),
        ('a\\b', 'backslash'),
        ('a//b', 'empty path component'),
        ('export_manifest.json', 'reserved'),
    ],
)
def test_assets_extra_destination_outside_assets_extra_is_refused(dest, message):
    with pytest.raises(ValueError, match=message):
        make(assets_extra={dest: '/data/x'})


@pytest.mark.parametrize('name', ['', '.', '..', 'a/b', 'a\\b', 'a\x00b'])
def test_bad_name_is_refused(name):
    with pytest.raises(ValueError, match='name'):
        make(name=name)


def test_lambda_serving_fn_is_refused_with_how_to_fix():
    with pytest.raises(ValueError, match='top level of an importable module'):
        make(serving_fn=lambda loaded: loaded.signatures)
