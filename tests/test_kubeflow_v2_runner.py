"""`python -m pipelines.kubeflow_v2_runner`: compile for Vertex AI / KFP v2, submit on request.

The golden file pins the FinalExporter's compiled interface (component spec,
executor spec and task). After an intended change, regenerate it with
`UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_kubeflow_v2_runner.py`
and review the diff. TFX 1.16's and 1.21's compilers write no timestamps, so
nothing has to be frozen for the output to be stable, and they compile the same
interface: one golden file serves both (only `sdkVersion` differs, checked apart).
"""

from __future__ import annotations

import json
import os
from unittest import mock

import pytest
import tfx
from google.cloud import aiplatform

from kfp_support import launcher
from pipelines import kubeflow_v2_runner

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'final_exporter_v2_spec.json')
TEST_IMAGE = 'us-docker.pkg.dev/test-project/test-repo/tfx-final-exporter:test'


@pytest.fixture
def environ(tmp_path) -> dict[str, str]:
    """The environment a user sets instead of flags."""
    return {
        'FINAL_EXPORTER_IMAGE': TEST_IMAGE,
        'PIPELINE_ROOT': str(tmp_path / 'pipeline_root'),
        'GOOGLE_CLOUD_PROJECT': 'test-project',
        'GOOGLE_CLOUD_REGION': 'europe-west4',
    }


@pytest.fixture
def pipeline_job():
    """Vertex AI's PipelineJob, the one cloud API the runner calls."""
    with mock.patch.object(aiplatform, 'PipelineJob', autospec=True) as job_class:
        yield job_class


def test_compiles_from_environment_without_submitting(environ, pipeline_job, tmp_path, capsys):
    output = str(tmp_path / 'pipeline.json')

    assert kubeflow_v2_runner.main(['--output', output], environ=environ) == 0

    pipeline_job.assert_not_called()
    with open(output) as f:
        job = json.load(f)
    assert job['runtimeConfig']['gcsOutputDirectory'] == environ['PIPELINE_ROOT']
    spec = job['pipelineSpec']
    assert spec['schemaVersion'] == '2.1.0'
    assert {e['container']['image'] for e in spec['deploymentSpec']['executors'].values()} == {
        TEST_IMAGE
    }
    exporter = launcher.step(spec, 'FinalExporter')
    parameters = launcher.constant_parameters(exporter['task'])
    assert parameters['export_base'] == environ['PIPELINE_ROOT'] + '/serving'
    # The demo's files at their paths in the image (the Dockerfile copies the checkout there).
    assert json.loads(parameters['assets_extra']) == {
        'labels/classes.txt': '/pipeline/pipelines/data/classes.txt'
    }
    assert parameters['serving_fn'] == '/pipeline/pipelines/penguin_serving.py:serving_fn'
    assert parameters['exports_to_keep'] == 3
    assert exporter['task']['cachingOptions'] == {'enableCache': True}
    assert 'Compiled' in capsys.readouterr().out


def test_flags_override_environment(environ, pipeline_job, tmp_path):
    output = str(tmp_path / 'pipeline.json')

    kubeflow_v2_runner.main(
        [
            '--output',
            output,
            '--image',
            'gcr.io/other/image:1',
            '--export-base',
            'gs://serving-bucket/models',
            '--schema-version',
            '2.0.0',
            '--no-cache',
        ],
        environ=environ,
    )

    spec = launcher.load_pipeline_spec(output)
    exporter = launcher.step(spec, 'FinalExporter')
    assert exporter['executor']['container']['image'] == 'gcr.io/other/image:1'
    parameters = launcher.constant_parameters(exporter['task'])
    assert parameters['export_base'] == 'gs://serving-bucket/models'
    # Retention holds on a bucket as on a local folder: the demo's setting is kept.
    assert parameters['exports_to_keep'] == 3
    assert spec['schemaVersion'] == '2.0.0'
    assert 'cachingOptions' not in exporter['task']


def test_registry_options_reach_the_final_exporter_step(environ, pipeline_job, tmp_path):
    output = str(tmp_path / 'pipeline.json')

    registry = (
        '--vertex-model penguin --vertex-region europe-west4 --vertex-version-aliases candidate '
        '--vertex-labels team=fraud-ml stage=demo --no-vertex-is-default-version'
    )

    kubeflow_v2_runner.main(
        ['--output', output, '--export-base', 'gs://serving-bucket/models', *registry.split()],
        environ=environ,
    )

    exporter = launcher.step(launcher.load_pipeline_spec(output), 'FinalExporter')
    parameters = launcher.constant_parameters(exporter['task'])
    assert parameters['vertex_model'] == 'penguin'
    assert parameters['vertex_region'] == 'europe-west4'
    assert json.loads(parameters['vertex_version_aliases']) == ['candidate']
    assert json.loads(parameters['vertex_labels']) == {'stage': 'demo', 'team': 'fraud-ml'}
    assert parameters['vertex_is_default_version'] == 0
    # The demo's own settings stay.
    assert parameters['exports_to_keep'] == 3


@pytest.mark.parametrize(
    ('argv', 'message'),
    [
        (['--vertex-model', 'penguin'], 'vertex_model needs a gs:// export_base'),
        (['--vertex-labels', 'team=ml'], 'vertex_labels given without vertex_model'),
        (
            ['--export-base', 'gs://b/m', '--vertex-model', 'penguin', '--vertex-labels', 'Team=x'],
            "key 'Team' is not a Vertex AI label key",
        ),
    ],
)
def test_refused_registry_options_are_a_usage_error_naming_them(
    environ, pipeline_job, capsys, tmp_path, argv, message
):
    with pytest.raises(SystemExit) as exit_info:
        kubeflow_v2_runner.main(['--output', str(tmp_path / 'p.json'), *argv], environ=environ)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'p.json')


def test_submit_sends_the_compiled_file_to_vertex_pipelines(environ, pipeline_job, tmp_path):
    output = str(tmp_path / 'pipeline.json')

    kubeflow_v2_runner.main(
        ['--output', output, '--submit', '--service-account', 'runner@test-project.iam'],
        environ=environ,
    )

    pipeline_job.assert_called_once_with(
        display_name=kubeflow_v2_runner.PIPELINE_NAME,
        template_path=output,
        pipeline_root=environ['PIPELINE_ROOT'],
        enable_caching=None,
        project='test-project',
        location='europe-west4',
    )
    pipeline_job.return_value.submit.assert_called_once_with(
        service_account='runner@test-project.iam'
    )


@pytest.mark.parametrize(
    ('argv', 'unset', 'message'),
    [
        ([], 'FINAL_EXPORTER_IMAGE', 'no image'),
        ([], 'PIPELINE_ROOT', 'no pipeline root'),
        (['--submit'], 'GOOGLE_CLOUD_PROJECT', '--submit needs --project'),
    ],
)
def test_missing_setting_is_a_usage_error_naming_it(
    environ, pipeline_job, capsys, argv, unset, message
):
    del environ[unset]

    with pytest.raises(SystemExit) as exit_info:
        kubeflow_v2_runner.main(argv, environ=environ)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    pipeline_job.assert_not_called()


def final_exporter_interface(compiled_file: str) -> dict:
    spec = launcher.load_pipeline_spec(compiled_file)
    step = launcher.step(spec, 'FinalExporter')
    # The one line that differs between the tested TFX versions is checked on its own.
    assert spec['sdkVersion'] == f'tfx-{tfx.__version__}'
    return {
        'schemaVersion': spec['schemaVersion'],
        'component': step['component'],
        'executor': step['executor'],
        'task': step['task'],
    }


def test_compiled_final_exporter_matches_golden_file(tmp_path):
    output = str(tmp_path / 'pipeline.json')
    kubeflow_v2_runner.compile_pipeline(
        output_file=output,
        image=TEST_IMAGE,
        pipeline_root=str(tmp_path / 'pipeline_root'),
        export_base='gs://golden-bucket/serving',
    )
    actual = json.dumps(final_exporter_interface(output), indent=2, sort_keys=True) + '\n'

    if os.environ.get('UPDATE_GOLDEN') == '1':
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, 'w') as f:
            f.write(actual)
    with open(GOLDEN) as f:
        expected = f.read()
    assert actual == expected, (
        'the compiled FinalExporter changed; if intended, regenerate with UPDATE_GOLDEN=1 '
        f'and review the diff of {GOLDEN}'
    )
