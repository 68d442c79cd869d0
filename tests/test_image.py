"""The component image, built from the Dockerfile and run as Kubeflow Pipelines and Vertex AI run it.

The image is built with podman (`scripts/image.sh build`; where the Dockerfile's
base cannot be pulled, a local stand-in of it: docs/kubeflow-vertex.md). Inside
the image, the demo pipeline is compiled with `python -m pipelines.kubeflow_v2_runner`
(KubeflowV2DagRunner) and both kfp-native components with kfp's compiler: the
compilers of the TFX and kfp releases whose entrypoints run the steps, as TFX
pairs them (its default image is the TFX image of the compiling release). Each
compiled step's command then runs in the image with the executor input the KFP v2
launcher passes: a trained model and a blessing from TFX's test data, exports to a
folder and to a gs:// bucket on fake-gcs-server, versions registered with the
loopback Vertex AI ModelService. Every export is verified from outside the image,
by this environment's `final-exporter verify`.

Runs on the host (podman runs there, not in the test userland).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from final_exporter.common import keys
from final_exporter.lifecycle.vertex_registry import ENDPOINT_ENV
from kfp_support import container, launcher
from pipelines import kubeflow_v2_runner

from conftest import KERAS_MODEL, PENGUIN_EVAL, TFX_TESTDATA

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = 'tfx-final-exporter:test'
# The image's Python and TFX: the Dockerfile's default base, with the tested set.
IMAGE_CONSTRAINTS = os.path.join(REPO_ROOT, 'constraints', 'tfx-1.21-py3.11.txt')
BLESSING = os.path.join(TFX_TESTDATA, 'model_validator', 'blessed')  # holds BLESSED
PROJECT, REGION = 'test-project', 'europe-west4'
MODEL_ID, BLESSING_ID, EXAMPLES_ID = 7, 9, 3
FINAL_EXPORTER_CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


@pytest.fixture(scope='module')
def image(tmp_path_factory) -> str:
    """The image built from this checkout's Dockerfile; no working container is left behind."""
    log = tmp_path_factory.mktemp('image_build') / 'build.log'
    with open(log, 'w') as f:
        build = subprocess.run(
            ['bash', 'scripts/image.sh', 'build', IMAGE],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
        )
    if build.returncode != 0:
        with open(log) as f:
            tail = ''.join(f.readlines()[-60:])
        pytest.fail(f'building the image failed (scripts/image.sh build):\n{tail}')
    before = container.working_containers()
    yield IMAGE
    assert container.working_containers() <= before, 'working containers left behind'


@pytest.fixture(scope='module')
def compiled(image, tmp_path_factory) -> dict[str, str]:
    """The demo pipeline and both kfp-native components, compiled inside the image."""
    out = str(tmp_path_factory.mktemp('compiled'))
    env = {'FINAL_EXPORTER_IMAGE': image}
    runner = container.run_in_image(
        image,
        [
            'python',
            '-m',
            'pipelines.kubeflow_v2_runner',
            '--pipeline-root',
            f'{out}/pipeline_root',
            '--output',
            f'{out}/pipeline.json',
        ],
        env=env,
        mounts=[out],
    )
    assert runner.returncode == 0, runner.stderr[-3000:]
    components = container.run_in_image(
        image,
        [
            'python',
            '-c',
            'import sys\n'
            'from kfp import compiler\n'
            'from final_exporter.adapters.kfp import final_export, final_export_from_uri\n'
            'for c in (final_export, final_export_from_uri):\n'
            '    compiler.Compiler().compile(c, f"{sys.argv[1]}/{c.name}.yaml")\n',
            out,
        ],
        env=env,
        mounts=[out],
    )
    assert components.returncode == 0, components.stderr[-3000:]
    return {
        'FinalExporter': f'{out}/pipeline.json',
        'final-export': f'{out}/final-export.yaml',
        'final-export-from-uri': f'{out}/final-export-from-uri.yaml',
    }


def compiled_step(compiled: dict[str, str], task: str, image: str) -> dict:
    step = launcher.step(launcher.load_pipeline_spec(compiled[task]), task)
    assert step['executor']['container']['image'] == image
    return step


@pytest.fixture
def inputs(tmp_path) -> dict[str, str]:
    """A trained model, its blessing and examples from TFX's test data, as a pipeline root holds them."""
    paths = {
        'model': str(tmp_path / 'Trainer' / 'model' / str(MODEL_ID)),
        'blessing': str(tmp_path / 'Evaluator' / 'blessing' / str(BLESSING_ID)),
        'examples': str(tmp_path / 'ExampleGen' / 'examples' / str(EXAMPLES_ID)),
    }
    shutil.copytree(KERAS_MODEL, paths['model'])
    shutil.copytree(BLESSING, paths['blessing'])
    shutil.copytree(os.path.dirname(PENGUIN_EVAL), paths['examples'])
    return paths


def verify_outside(destination: str, env: dict[str, str]) -> dict:
    """`final-exporter verify --json` run by this environment, not the image."""
    process = subprocess.run(
        [FINAL_EXPORTER_CLI, 'verify', '--json', destination],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return json.loads(process.stdout)


def read(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def run_tfx_step(image, compiled, inputs, tmp_path, *, export_base, env, **parameters):
    step = compiled_step(compiled, 'FinalExporter', image)
    assert step['executor']['container']['command'] == [
        'python',
        '-m',
        'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor',
    ]
    defs = step['component']['inputDefinitions']
    invocation = launcher.executor_input(
        step['component'],
        input_artifacts={
            keys.MODEL_KEY: launcher.runtime_artifact(
                defs, keys.MODEL_KEY, inputs['model'], artifact_id=MODEL_ID
            ),
            keys.EXAMPLES_KEY: launcher.runtime_artifact(
                defs,
                keys.EXAMPLES_KEY,
                inputs['examples'],
                artifact_id=EXAMPLES_ID,
                metadata={'split_names': '["train", "eval"]'},
            ),
            # As the Evaluator's blessing reaches the step: blessed and the model it judged.
            keys.MODEL_BLESSING_KEY: launcher.runtime_artifact(
                defs,
                keys.MODEL_BLESSING_KEY,
                inputs['blessing'],
                artifact_id=BLESSING_ID,
                metadata={keys.BLESSED_PROPERTY: 1.0, keys.CURRENT_MODEL_PROPERTY: inputs['model']},
            ),
        },
        # The compiled parameters name the demo's files by their paths in the image.
        parameters={
            **launcher.constant_parameters(step['task']),
            'export_base': export_base,
            **parameters,
        },
        output_root=str(tmp_path / 'FinalExporter'),
    )
    process, output = container.run_step_in_image(
        image, step['executor'], invocation, env=env, mounts=[str(tmp_path)]
    )
    assert process.returncode == 0, launcher.failure_message(process)
    assert output is not None, launcher.failure_message(process)
    return output


def assert_tfx_pushed_model(output: dict, export_base: str, env: dict[str, str]) -> dict:
    pushed = launcher.output_artifact(output, keys.PUSHED_MODEL_KEY)
    assert pushed['name'] == launcher.ARTIFACT_NAME.format(900)
    meta = pushed['metadata']
    assert meta[keys.PUSHED_KEY] == 1
    destination = meta[keys.PUSHED_DESTINATION_KEY]
    assert destination == f'{export_base}/penguin/{meta[keys.PUSHED_VERSION_KEY]}'
    # The demo's assets_extra file, compiled as its path in the image (/pipeline/...).
    assert json.loads(meta[keys.ASSETS_EXTRA_FILES_KEY]) == [
        'labels/classes.txt',
        keys.WARMUP_FILENAME,
    ]
    verified = verify_outside(destination, env)
    assert verified['ok'] and verified['manifest_sha256'] == meta[keys.MANIFEST_SHA256_KEY]
    assert sorted(os.listdir(pushed['uri'])) == sorted(
        [keys.LINEAGE_FILENAME, keys.REPORT_FILENAME, keys.MANIFEST_FILENAME]
    )
    report = read(os.path.join(pushed['uri'], keys.REPORT_FILENAME))
    assert f'**Exported** version **{meta[keys.PUSHED_VERSION_KEY]}**' in report
    return meta


def test_image_holds_the_tested_set_and_runs_steps_in_its_working_dir(image):
    config = container.image_config(image)
    assert config['WorkingDir'] == kubeflow_v2_runner.IMAGE_WORKDIR
    process = container.run_in_image(
        image,
        [
            'python',
            '-c',
            'import importlib.metadata as m, json, os, sys\n'
            'print(json.dumps({"cwd": os.getcwd(), "python": "%d.%d" % sys.version_info[:2],\n'
            '  "data": os.path.realpath("data/penguin"),\n'
            '  "installed": {d.metadata["Name"].lower(): d.version for d in m.distributions()}}))',
        ],
    )
    assert process.returncode == 0, process.stderr
    found = json.loads(process.stdout)
    assert found['cwd'] == kubeflow_v2_runner.IMAGE_WORKDIR
    assert found['python'] == '3.11'
    # The penguin examples the runner compiles into the pipeline, from the image's tfx.
    assert found['data'].endswith('/tfx/components/testdata/penguin/data')
    pins = {}
    with open(IMAGE_CONSTRAINTS) as f:
        for line in f:
            name, sep, version = line.strip().partition('==')
            if sep:
                pins[name.lower()] = version
    installed = found['installed']
    for package in ('tfx', 'tensorflow', 'kfp', 'apache-beam', 'ml-metadata', 'pyfarmhash'):
        assert installed[package] == pins[package], package
    differing = {
        name: (version, pins[name])
        for name, version in installed.items()
        if name in pins and version != pins[name]
    }
    assert not differing, f'installed differently from {IMAGE_CONSTRAINTS}: {differing}'


def test_tfx_step_in_the_image_exports_to_a_folder_that_verifies_outside(
    image, compiled, inputs, tmp_path
):
    export_base = str(tmp_path / 'serving')

    output = run_tfx_step(image, compiled, inputs, tmp_path, export_base=export_base, env={})

    meta = assert_tfx_pushed_model(output, export_base, env={})
    assert meta[keys.SOURCE_MODEL_URI_KEY] == inputs['model']
    with open(
        os.path.join(meta[keys.PUSHED_DESTINATION_KEY], 'assets.extra', 'labels', 'classes.txt')
    ) as f:
        assert f.read().split() == ['Adelie', 'Chinstrap', 'Gentoo']


def test_tfx_step_in_the_image_exports_to_a_bucket_and_registers_a_vertex_version(
    image, compiled, inputs, tmp_path, gcs_server, gcs_base, vertex
):
    env = {**gcs_server, ENDPOINT_ENV: vertex.endpoint}

    output = run_tfx_step(
        image,
        compiled,
        inputs,
        tmp_path,
        export_base=gcs_base,
        env=env,
        vertex_model='penguin',
        vertex_project=PROJECT,
        vertex_region=REGION,
    )

    meta = assert_tfx_pushed_model(output, gcs_base, env)
    (version,) = vertex.versions('penguin')
    assert version.artifact_uri == meta[keys.PUSHED_DESTINATION_KEY]
    assert meta[keys.VERTEX_MODEL_RESOURCE_KEY] == version.name
    assert meta[keys.VERTEX_MODEL_VERSION_ID_KEY] == '1'


def kfp_invocation(step: dict, tmp_path, *, input_artifacts=None, parameters) -> dict:
    return launcher.executor_input(
        step['component'],
        input_artifacts=input_artifacts or {},
        parameters=parameters,
        output_root=str(tmp_path / 'final_export'),
    )


def assert_kfp_outputs(output: dict, export_base: str, env: dict[str, str]) -> dict:
    values = output['parameterValues']
    assert values['pushed'] is True
    assert values['destination'] == f'{export_base}/penguin/{values["version"]}'
    meta = launcher.output_artifact(output, 'pushed_model')['metadata']
    assert meta[keys.PUSHED_KEY] == 1
    assert meta[keys.PUSHED_DESTINATION_KEY] == values['destination']
    verified = verify_outside(values['destination'], env)
    assert verified['ok'] and verified['manifest_sha256'] == meta[keys.MANIFEST_SHA256_KEY]
    report = launcher.output_artifact(output, 'report')
    assert report['metadata']['display_name'] == 'Final export report: penguin'
    text = read(report['uri'])
    assert f'**Exported** version **{values["version"]}**' in text
    return {'values': values, 'pushed': meta, 'report': text}


def test_kfp_final_export_in_the_image_exports_to_a_bucket_and_outputs_a_vertex_model(
    image, compiled, inputs, tmp_path, gcs_server, gcs_base, vertex
):
    step = compiled_step(compiled, 'final-export', image)
    defs = step['component']['inputDefinitions']
    outputs = step['component']['outputDefinitions']['artifacts']
    assert outputs['registered_model']['artifactType']['schemaTitle'] == 'google.VertexModel'
    invocation = kfp_invocation(
        step,
        tmp_path,
        input_artifacts={
            'model': launcher.runtime_artifact(
                defs, 'model', inputs['model'], artifact_id=MODEL_ID
            ),
            # The blessing folder as the TFX Evaluator writes it.
            'model_blessing': launcher.runtime_artifact(
                defs, 'model_blessing', inputs['blessing'], artifact_id=BLESSING_ID
            ),
            'examples': launcher.runtime_artifact(
                defs, 'examples', inputs['examples'], artifact_id=EXAMPLES_ID
            ),
        },
        parameters={
            'name': 'penguin',
            'export_base': gcs_base,
            'vertex_model': 'penguin',
            'vertex_project': PROJECT,
            'vertex_region': REGION,
            'vertex_version_aliases': ['candidate'],
        },
    )
    env = {**gcs_server, ENDPOINT_ENV: vertex.endpoint}

    process, output = container.run_step_in_image(
        image, step['executor'], invocation, env=env, mounts=[str(tmp_path)]
    )

    assert process.returncode == 0, launcher.failure_message(process)
    found = assert_kfp_outputs(output, gcs_base, env)
    (version,) = vertex.versions('penguin')
    assert version.artifact_uri == found['values']['destination']
    assert sorted(version.version_aliases) == ['candidate', 'default']
    registered = launcher.output_artifact(output, 'registered_model')
    assert registered['metadata']['resourceName'] == f'{version.name}@1'
    assert registered['uri'] == f'https://{REGION}-aiplatform.googleapis.com/v1/{version.name}@1'
    assert found['pushed'][keys.SOURCE_MODEL_ID_KEY] == launcher.ARTIFACT_NAME.format(MODEL_ID)
    assert '/versions/1?project=' in found['report']


def test_kfp_final_export_from_uri_in_the_image_exports_to_a_folder_with_its_report(
    image, compiled, inputs, tmp_path
):
    step = compiled_step(compiled, 'final-export-from-uri', image)
    export_base = str(tmp_path / 'serving')
    invocation = kfp_invocation(
        step,
        tmp_path,
        parameters={
            'model_uri': inputs['model'],
            'blessed': True,
            'examples_uri': inputs['examples'],
            'name': 'penguin',
            'export_base': export_base,
            'warmup_requests': 3,
        },
    )

    process, output = container.run_step_in_image(
        image, step['executor'], invocation, mounts=[str(tmp_path)]
    )

    assert process.returncode == 0, launcher.failure_message(process)
    found = assert_kfp_outputs(output, export_base, env={})
    destination = found['values']['destination']
    assert os.path.isfile(os.path.join(destination, keys.WARMUP_RELPATH))
    assert '## assets.extra' in found['report']
    registered = launcher.output_artifact(output, 'registered_model')
    assert registered['metadata']['display_name'] == 'not registered'
