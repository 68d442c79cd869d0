"""`final_exporter.kfp`: the export as Kubeflow Pipelines v2 components, for kfp-only pipelines.

`kfp.local` (2.5, SubprocessRunner) runs single components whose inputs are
parameters only, so it runs `final_export_from_uri` on a real model. The
`Input[Model]` component is compiled to YAML and its container command run the
way the KFP launcher runs it (see tests/kfp_support/launcher.py), with model,
blessing and metrics artifacts on local disk.

No `from __future__ import annotations` here: kfp 2.5 reads the annotations of
the test's own component as objects.
"""

import dataclasses
import json
import os
import shutil

import pytest
import yaml
from kfp import compiler, dsl, local
from kfp.local import config as local_config
from tfx.dsl.components.base import base_beam_executor
from tfx.types import standard_artifacts

from final_exporter import kfp as public_kfp
from final_exporter.adapters import kfp as final_exporter_kfp
from final_exporter.adapters.tfx.executor import Executor
from final_exporter.adapters.tfx.spec import FinalExporterSpec
from final_exporter.common import keys
from final_exporter.core.config import ExportConfig
from final_exporter.kfp import final_export, final_export_from_uri
from final_exporter.storage.verify import verify_export
from kfp_support import launcher
from test_public_api import PUBLIC
from test_stamped_model import infra_blessing_as_written

from conftest import KERAS_MODEL, PENGUIN_EVAL, assert_nothing_written, tree_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES_FILE = os.path.join(REPO_ROOT, 'pipelines', 'data', 'classes.txt')
ASSETS_EXTRA = {'labels/classes.txt': CLASSES_FILE}
# The TFX Examples layout: Split-eval/, Split-train/.
PENGUIN_EXAMPLES = os.path.dirname(PENGUIN_EVAL)

# kfp.local warns that the component's image is not a Python image; the
# subprocess runs in this environment, which has the package the image has.
pytestmark = pytest.mark.filterwarnings('ignore:You may be attemping:RuntimeWarning')


@pytest.fixture
def kfp_local(tmp_path):
    """A kfp.local session running components as subprocesses of this Python."""
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / 'kfp_root')
    )
    yield
    # kfp 2.5 has no call to end a session; later tests must not run components locally.
    local_config.LocalExecutionConfig.instance = None


def read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def tfx_pushed_model(tmp_path, model_uri: str, export_base: str) -> standard_artifacts.PushedModel:
    """The TFX executor's PushedModel for the same model and a blessed blessing."""
    model = standard_artifacts.Model()
    model.uri = model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = str(tmp_path / 'tfx_blessing')
    blessing.set_int_custom_property(keys.BLESSED_PROPERTY, 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(tmp_path / 'tfx_pushed_model')
    Executor(base_beam_executor.BaseBeamExecutor.Context()).Do(
        {keys.MODEL_KEY: [model], keys.MODEL_BLESSING_KEY: [blessing]},
        {keys.PUSHED_MODEL_KEY: [pushed]},
        {
            'name': 'penguin',
            'export_base': export_base,
            'assets_extra': json.dumps(ASSETS_EXTRA),
        },
    )
    return pushed


def test_local_run_exports_a_real_model_like_the_tfx_component(
    kfp_local, model_uri, export_base, tmp_path
):
    task = final_export_from_uri(
        model_uri=model_uri,
        blessed=True,
        name='penguin',
        export_base=export_base,
        assets_extra=ASSETS_EXTRA,
    )

    assert task.outputs['pushed'] is True
    destination = task.outputs['destination']
    assert destination == os.path.join(export_base, 'penguin', task.outputs['version'])
    assert verify_export(destination).ok
    meta = task.outputs['pushed_model'].metadata
    assert meta[keys.PUSHED_KEY] == 1
    assert meta[keys.PUSHED_DESTINATION_KEY] == destination
    assert meta[keys.PUSHED_VERSION_KEY] == task.outputs['version']
    assert meta[keys.MODEL_BLESSING_URI_KEY] == final_exporter_kfp.BLESSED_PARAMETER_URI

    # The same PushedModel properties and record files as the TFX component writes.
    tfx_pushed = tfx_pushed_model(tmp_path, model_uri, str(tmp_path / 'tfx_serving'))
    tfx_props = {
        k: tfx_pushed.get_custom_property(k) for k in tfx_pushed.mlmd_artifact.custom_properties
    }
    assert set(meta) - {final_exporter_kfp.DISPLAY_NAME_KEY} == set(tfx_props)
    for key in (keys.SIGNATURE_NAMES_KEY, keys.ASSETS_EXTRA_FILES_KEY, keys.FILE_COUNT_KEY):
        assert meta[key] == tfx_props[key]
    assert sorted(os.listdir(task.outputs['pushed_model'].path)) == sorted(
        os.listdir(tfx_pushed.uri)
    )


def test_local_run_report_is_markdown_with_decision_files_and_hashes(
    kfp_local, model_uri, export_base
):
    task = final_export_from_uri(
        model_uri=model_uri,
        blessed=True,
        name='penguin',
        export_base=export_base,
        assets_extra=ASSETS_EXTRA,
    )

    report = task.outputs['report']
    text = read(report.path)
    assert report.metadata[final_exporter_kfp.DISPLAY_NAME_KEY] == 'Final export report: penguin'
    assert text == read(os.path.join(task.outputs['pushed_model'].path, keys.REPORT_FILENAME))
    assert f'**Exported** version **{task.outputs["version"]}**' in text
    manifest = json.loads(
        read(os.path.join(task.outputs['destination'], 'assets.extra', 'export_manifest.json'))
    )
    for entry in manifest['files']:
        assert f'| {entry["size"]} | `{entry["sha256"][:16]}' in text
    assert '## assets.extra' in text
    assert 'serving\\_default' in text


def test_local_run_not_blessed_by_upstream_step_writes_nothing(kfp_local, model_uri, export_base):
    task = final_export_from_uri(
        model_uri=model_uri, blessed=False, name='penguin', export_base=export_base
    )

    assert task.outputs['pushed'] is False
    assert task.outputs['version'] == task.outputs['destination'] == ''
    meta = task.outputs['pushed_model'].metadata
    assert meta[keys.PUSHED_KEY] == 0
    assert 'not blessed' in meta[keys.NOT_PUSHED_REASON_KEY]
    assert meta[final_exporter_kfp.DISPLAY_NAME_KEY] == 'penguin (not exported)'
    assert '**Not exported**' in read(task.outputs['report'].path)
    assert_nothing_written(export_base)


def test_local_run_without_any_blessing_fails_with_nothing_written(
    kfp_local, model_uri, export_base
):
    with pytest.raises(RuntimeError, match='FAILURE'):
        final_export_from_uri(model_uri=model_uri, name='penguin', export_base=export_base)

    assert_nothing_written(export_base)


def test_components_take_the_tfx_component_parameters_with_the_same_defaults():
    # Empty and None mean "the default" to ExportConfig.from_exec_properties.
    defaults = {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(ExportConfig)
    }
    for component in (final_export, final_export_from_uri):
        inputs = component.component_spec.inputs
        assert set(FinalExporterSpec.PARAMETERS) <= set(inputs)
        for name, default in defaults.items():
            if default is dataclasses.MISSING:
                assert not inputs[name].optional, name
            else:
                assert (inputs[name].default or None) == (default or None), name
    outputs = final_export.component_spec.outputs
    assert outputs['pushed_model'].type == 'system.Artifact@0.0.1'
    assert outputs['report'].type == 'system.Markdown@0.0.1'
    assert {'pushed', 'version', 'destination'} <= set(outputs)


def test_public_module_names_exactly_the_components_and_the_internal_path_the_same_objects():
    assert set(public_kfp.__all__) == PUBLIC['final_exporter.kfp']
    for name in public_kfp.__all__:
        assert getattr(public_kfp, name) is getattr(final_exporter_kfp, name), name
    # What compiled components run in their containers (kfp writes these imports).
    assert callable(final_exporter_kfp.export_for_kfp)
    assert final_exporter_kfp.VertexModel.__module__ == 'final_exporter.adapters.kfp'


def test_component_specs_describe_each_parameter_as_export_config_does():
    for component in (final_export, final_export_from_uri):
        spec = component.component_spec
        for param in ExportConfig.parameters():
            described = ' '.join(spec.inputs[param.name].description.split())
            assert described == param.description(markdown=False), (component.name, param.name)
        for name, io in [*spec.inputs.items(), *spec.outputs.items()]:
            assert io.description, f'{component.name}: {name} has no description'


@pytest.fixture
def compiled_component(tmp_path) -> str:
    path = str(tmp_path / 'final_export.yaml')
    compiler.Compiler().compile(final_export, path)
    return path


def test_compiled_component_runs_on_model_blessing_metrics_and_examples_artifacts(
    compiled_component, model_uri, export_base, make_blessing, tmp_path
):
    spec = launcher.load_pipeline_spec(compiled_component)
    step = launcher.step(spec, 'final-export')
    assert (
        step['executor']['container']['image']
        == final_export.component_spec.implementation.container.image
    )
    inputs = step['component']['inputDefinitions']
    invocation = launcher.executor_input(
        step['component'],
        input_artifacts={
            'model': launcher.runtime_artifact(inputs, 'model', model_uri, artifact_id=7),
            # A blessing folder as the TFX Evaluator writes it, no metadata.
            'model_blessing': launcher.runtime_artifact(
                inputs, 'model_blessing', make_blessing(blessed=True), artifact_id=9
            ),
            'metrics': launcher.runtime_artifact(
                inputs,
                'metrics',
                str(tmp_path / 'metrics'),
                artifact_id=11,
                metadata={'accuracy': 0.975, 'example_count': 40},
            ),
            'examples': launcher.runtime_artifact(
                inputs, 'examples', PENGUIN_EXAMPLES, artifact_id=13
            ),
        },
        parameters={
            'name': 'penguin',
            'export_base': export_base,
            'assets_extra': ASSETS_EXTRA,
            'warmup_requests': 3,
        },
        output_root=str(tmp_path / 'final_export'),
    )

    process, output = launcher.run_step(step['executor'], invocation, cwd=str(tmp_path))

    assert process.returncode == 0, launcher.failure_message(process)
    assert output['parameterValues']['pushed'] is True
    pushed = launcher.output_artifact(output, 'pushed_model')
    meta = pushed['metadata']
    assert meta[keys.PUSHED_DESTINATION_KEY] == output['parameterValues']['destination']
    assert verify_export(meta[keys.PUSHED_DESTINATION_KEY]).ok
    assert meta[keys.SOURCE_MODEL_ID_KEY] == launcher.ARTIFACT_NAME.format(7)
    assert json.loads(meta[keys.EVAL_RESULT_KEY]) == {'accuracy': 0.975, 'example_count': 40.0}
    report = launcher.output_artifact(output, 'report')
    assert report['metadata'][final_exporter_kfp.DISPLAY_NAME_KEY] == (
        'Final export report: penguin'
    )
    assert os.path.isfile(os.path.join(meta[keys.PUSHED_DESTINATION_KEY], keys.WARMUP_RELPATH))
    text = read(report['uri'])
    assert '## Evaluation (overall slice)' in text
    assert '| accuracy | 0\\.975 |' in text


def test_not_blessed_blessing_artifact_metadata_gates_the_compiled_component(
    compiled_component, model_uri, export_base, tmp_path
):
    step = launcher.step(launcher.load_pipeline_spec(compiled_component), 'final-export')
    inputs = step['component']['inputDefinitions']
    blessing_dir = tmp_path / 'blessing'
    blessing_dir.mkdir()
    invocation = launcher.executor_input(
        step['component'],
        input_artifacts={
            'model': launcher.runtime_artifact(inputs, 'model', model_uri, artifact_id=7),
            # Vertex AI hands the upstream step's blessed=0 back as 0.0.
            'model_blessing': launcher.runtime_artifact(
                inputs,
                'model_blessing',
                str(blessing_dir),
                artifact_id=9,
                metadata={keys.BLESSED_PROPERTY: 0.0},
            ),
        },
        parameters={'name': 'penguin', 'export_base': export_base},
        output_root=str(tmp_path / 'final_export'),
    )

    process, output = launcher.run_step(step['executor'], invocation, cwd=str(tmp_path))

    assert process.returncode == 0, launcher.failure_message(process)
    assert output['parameterValues'] == {'pushed': False, 'version': '', 'destination': ''}
    assert launcher.output_artifact(output, 'pushed_model')['metadata'][keys.PUSHED_KEY] == 0
    assert_nothing_written(export_base)


def test_pipeline_with_blessing_from_an_upstream_step_compiles_to_yaml(tmp_path):
    @dsl.component(base_image='python:3.10')
    def evaluate(threshold: float) -> bool:
        return threshold < 1.0

    @dsl.pipeline(name='serve-penguin')
    def serve(model_uri: str, export_base: str):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
        verdict = evaluate(threshold=0.6)
        final_export(
            model=model.output, blessed=verdict.output, name='penguin', export_base=export_base
        )

    path = str(tmp_path / 'serve.yaml')
    compiler.Compiler().compile(serve, path)

    with open(path) as f:
        spec = yaml.safe_load(f)
    task = spec['root']['dag']['tasks']['final-export']
    assert task['inputs']['parameters']['blessed'] == {
        'taskOutputParameter': {'outputParameterKey': 'Output', 'producerTask': 'evaluate'}
    }
    assert task['inputs']['artifacts']['model'] == {
        'taskOutputArtifact': {'outputArtifactKey': 'artifact', 'producerTask': 'importer'}
    }
    component = spec['components']['comp-final-export']
    assert component['outputDefinitions']['artifacts']['report']['artifactType'] == {
        'schemaTitle': 'system.Markdown',
        'schemaVersion': '0.0.1',
    }
    assert component['inputDefinitions']['artifacts']['model_blessing']['isOptional'] is True
    executor = spec['deploymentSpec']['executors']['exec-final-export']['container']
    assert executor['image'] == final_export.component_spec.implementation.container.image
    # The image has kfp installed (tfx[kfp]): nothing is pip-installed when the step starts.
    assert 'pip install' not in ' '.join(executor['command'])


def test_model_folder_given_as_a_plain_saved_model_works_too(kfp_local, export_base, tmp_path):
    saved_model = str(tmp_path / 'saved_model')
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), saved_model)

    task = final_export_from_uri(
        model_uri=saved_model, blessed=True, name='penguin', export_base=export_base
    )

    assert verify_export(task.outputs['destination']).ok


def test_compiled_component_without_model_exports_the_stamped_model_of_the_infra_blessing(
    compiled_component, export_base, tmp_path
):
    blessing = infra_blessing_as_written(str(tmp_path / 'InfraValidator' / 'blessing' / '5'), True)
    step = launcher.step(launcher.load_pipeline_spec(compiled_component), 'final-export')
    inputs = step['component']['inputDefinitions']
    assert inputs['artifacts']['model']['isOptional'] is True
    # As the KFP launcher hands over a TFX InfraBlessing: its custom properties as metadata.
    metadata = {keys.BLESSED_PROPERTY: 1, keys.HAS_MODEL_PROPERTY: 1}
    invocation = launcher.executor_input(
        step['component'],
        input_artifacts={
            'infra_blessing': launcher.runtime_artifact(
                inputs, 'infra_blessing', blessing.uri, artifact_id=21, metadata=metadata
            ),
        },
        parameters={'name': 'penguin', 'export_base': export_base},
        output_root=str(tmp_path / 'final_export'),
    )

    process, output = launcher.run_step(step['executor'], invocation, cwd=str(tmp_path))

    assert process.returncode == 0, launcher.failure_message(process)
    export_dir = output['parameterValues']['destination']
    assert verify_export(export_dir).ok
    stamped = os.path.join(blessing.uri, keys.STAMPED_MODEL_DIR)
    exported = tree_files(export_dir)
    exported.pop(keys.MANIFEST_RELPATH)
    assert exported == tree_files(stamped)
    meta = launcher.output_artifact(output, 'pushed_model')['metadata']
    assert meta[keys.SOURCE_MODEL_URI_KEY] == stamped
    # The smoke test replayed InfraValidator's warmup requests, as in the TFX component.
    assert json.loads(meta[keys.WARMUP_LINEAGE_KEY]) == {'count': 1, 'source': 'supplied'}


def test_compiled_component_without_model_and_no_stamped_model_fails_naming_what_to_wire(
    compiled_component, export_base, make_blessing, tmp_path
):
    step = launcher.step(launcher.load_pipeline_spec(compiled_component), 'final-export')
    inputs = step['component']['inputDefinitions']
    invocation = launcher.executor_input(
        step['component'],
        input_artifacts={
            'infra_blessing': launcher.runtime_artifact(
                inputs, 'infra_blessing', make_blessing(infra=True), artifact_id=21
            ),
        },
        parameters={'name': 'penguin', 'export_base': export_base},
        output_root=str(tmp_path / 'final_export'),
    )

    process, _ = launcher.run_step(step['executor'], invocation, cwd=str(tmp_path))

    assert process.returncode != 0
    assert 'no stamped_model folder' in process.stderr
    assert 'make_warmup' in process.stderr
    assert_nothing_written(export_base)
