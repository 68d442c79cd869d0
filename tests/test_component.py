"""The FinalExporter component: spec, channels, parameters and construction errors."""

from __future__ import annotations

import inspect
import json

import pytest
from tfx import types
from tfx.types import standard_artifacts

from final_exporter import ExportConfig, FinalExporter
from final_exporter.adapters.tfx.spec import FinalExporterSpec
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
    assert set(FinalExporterSpec.PARAMETERS) == set(ExportConfig.field_names())


def test_constructor_takes_every_export_config_field_with_its_default():
    # Written out for TFX users and IDEs; kept equal to ExportConfig here.
    signature = dict(inspect.signature(FinalExporter.__init__).parameters)
    del signature['self']
    assert set(signature) == set(ExportConfig.field_names()) | set(FinalExporterSpec.INPUTS)
    for name in FinalExporterSpec.INPUTS:
        assert signature[name].default is None, name
    for param in ExportConfig.parameters():
        default = signature[param.name].default
        if param.required:
            assert default == '', f'{param.name}: required, so "" (refused) by default'
        elif param.is_list or param.is_mapping:
            assert default is None, f'{param.name}: None stands for the empty default'
        else:
            assert default == param.default and type(default) is type(param.default), param.name
    # Python 3.13 strips docstrings' indentation when it compiles them; 3.10-3.12 keep it.
    doc = inspect.cleandoc(FinalExporter.__init__.__doc__)
    assert '\nArgs:\n' in doc
    for name in ExportConfig.field_names():
        # Described in ExportConfig alone.
        assert f'\n    {name}:' not in doc, name


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
    assert props['name'] == 'penguin'
    assert props['export_base'] == '/srv/models'
    assert json.loads(props['assets_extra']) == {'labels/classes.txt': '/data/classes.txt'}
    assert props['as_text'] == 1
    assert props['require_blessing'] == 1
    assert props['serving_fn'] == 'test_component:module_level_serving_fn'


def test_no_blessing_needs_explicit_opt_out():
    with pytest.raises(ValueError, match='require_blessing=False'):
        make(model_blessing=None)

    exporter = make(model_blessing=None, require_blessing=False)
    assert exporter.exec_properties['require_blessing'] == 0


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
