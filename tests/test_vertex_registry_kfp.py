"""The Kubeflow-native component with the Vertex AI Model Registry: kfp.local and the compiled spec.

No `from __future__ import annotations` here: kfp 2.5 reads the annotations of
the test's own component as objects.
"""

import os

import pytest

from final_exporter.common import keys
from test_vertex_registry import PROJECT, REGION, REPO


@pytest.fixture
def kfp_local(tmp_path):
    from kfp import local
    from kfp.local import config as local_config

    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / 'kfp_root')
    )
    yield
    # kfp 2.5 has no call to end a session; later tests must not run components locally.
    local_config.LocalExecutionConfig.instance = None


@pytest.mark.filterwarnings('ignore:You may be attemping:RuntimeWarning')
def test_kfp_local_run_registers_and_outputs_a_vertex_model(
    vertex, gcs_base, model_uri, kfp_local, monkeypatch
):
    from final_exporter.adapters.kfp import final_export_from_uri

    monkeypatch.setenv(
        'PYTHONPATH',
        os.pathsep.join([os.path.join(REPO, 'component'), os.environ.get('PYTHONPATH', '')]),
    )

    task = final_export_from_uri(
        model_uri=model_uri,
        blessed=True,
        name='penguin',
        export_base=gcs_base,
        smoke_test=False,
        vertex_model='penguin',
        vertex_project=PROJECT,
        vertex_region=REGION,
        vertex_version_aliases=['candidate'],
        vertex_labels={'team': 'ml'},
    )

    (version,) = vertex.versions('penguin')
    assert version.artifact_uri == task.outputs['destination']
    registered = task.outputs['registered_model']
    # kfp.local hands back types it does not know as system.Artifact; the spec says which.
    outputs = final_export_from_uri.component_spec.outputs
    assert outputs['registered_model'].type == 'google.VertexModel@0.0.1'
    assert registered.metadata['resourceName'] == f'{version.name}@1'
    assert registered.uri == f'https://{REGION}-aiplatform.googleapis.com/v1/{version.name}@1'
    with open(task.outputs['report'].path, encoding='utf-8') as f:
        report = f.read()
    model_id = version.name.rsplit('/', 1)[1]
    assert (
        f'(https://console.cloud.google.com/vertex-ai/models/locations/{REGION}/models/{model_id}'
        f'/versions/1?project={PROJECT})' in report
    )
    assert task.outputs['pushed_model'].metadata[keys.VERTEX_MODEL_VERSION_ID_KEY] == '1'


def test_compiled_pipeline_has_the_vertex_model_output_for_model_deploy_op(tmp_path):
    import yaml
    from kfp import compiler, dsl

    from final_exporter.adapters.kfp import VertexModel, final_export

    @dsl.component(base_image='python:3.10')
    def deploy(model: dsl.Input[VertexModel]) -> str:  # Stands in for GCPC's ModelDeployOp.
        return model.metadata['resourceName']

    @dsl.pipeline(name='register-penguin')
    def register(model_uri: str):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
        export = final_export(
            model=model.output,
            blessed=True,
            name='penguin',
            export_base='gs://bucket/serving',
            vertex_model='penguin',
            vertex_version_aliases=['candidate'],
        )
        deploy(model=export.outputs['registered_model'])

    path = str(tmp_path / 'register.yaml')
    compiler.Compiler().compile(register, path)

    with open(path) as f:
        spec = yaml.safe_load(f)
    outputs = spec['components']['comp-final-export']['outputDefinitions']['artifacts']
    assert outputs['registered_model']['artifactType'] == {
        'schemaTitle': 'google.VertexModel',
        'schemaVersion': '0.0.1',
    }
    deploy_input = spec['root']['dag']['tasks']['deploy']['inputs']['artifacts']['model']
    assert deploy_input == {
        'taskOutputArtifact': {
            'outputArtifactKey': 'registered_model',
            'producerTask': 'final-export',
        }
    }
    command = spec['deploymentSpec']['executors']['exec-final-export']['container']['command']
    assert 'from final_exporter.adapters.kfp import VertexModel' in ' '.join(command)
