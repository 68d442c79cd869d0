"""The container contract on Kubeflow Pipelines v2 / Vertex AI, run for real.

The demo pipeline is compiled with `KubeflowV2DagRunner`; each test builds the
`ExecutorInput` the launcher passes to the FinalExporter step (a real trained
model and a blessing on local disk, output URIs, the parameters the compiled
spec holds) and runs the step's exact command line from the compiled JSON
(`python -m tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor
--executor_class_path final_exporter.adapters.tfx.executor.Executor ...`) in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from final_exporter.common import keys
from final_exporter.storage.verify import verify_export
from kfp_support import launcher
from pipelines import kubeflow_v2_runner

from conftest import KERAS_MODEL, PENGUIN_EVAL, assert_nothing_written

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_IMAGE = 'us-docker.pkg.dev/test-project/test-repo/tfx-final-exporter:test'
MODEL_ID, BLESSING_ID, EXAMPLES_ID = 7, 9, 3
TFX_EXECUTOR_COMMAND = [
    'python',
    '-m',
    'tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor',
]


@pytest.fixture(scope='module')
def compiled(tmp_path_factory) -> dict[str, str]:
    """Schema version -> the compiled pipeline JSON file."""
    root = tmp_path_factory.mktemp('kfp_v2_compile')
    files = {}
    for version in kubeflow_v2_runner.SCHEMA_VERSIONS:
        files[version] = str(root / f'pipeline-{version}.json')
        kubeflow_v2_runner.compile_pipeline(
            output_file=files[version],
            image=TEST_IMAGE,
            pipeline_root=str(root / 'pipeline_root'),
            export_base='/unused/export/base',
            schema_version=version,
        )
    return files


def in_this_checkout(value):
    """A parameter as the container sees it, mapped to this checkout.

    The Dockerfile copies the build context (this repository) to /pipeline.
    """
    if isinstance(value, str):
        return value.replace(kubeflow_v2_runner.IMAGE_WORKDIR + '/', REPO_ROOT + '/')
    return value


@pytest.fixture
def run_exporter_step(compiled, tmp_path):
    """Runs the compiled FinalExporter step; returns (executor output, export base)."""

    def run(
        *, blessing_metadata, schema_version='2.1.0', with_current_model=True, **parameter_overrides
    ):
        step = launcher.step(launcher.load_pipeline_spec(compiled[schema_version]), 'FinalExporter')
        assert step['executor']['container']['command'] == TFX_EXECUTOR_COMMAND
        assert step['executor']['container']['image'] == TEST_IMAGE
        model_uri = str(tmp_path / 'Trainer' / 'model' / str(MODEL_ID))
        shutil.copytree(KERAS_MODEL, model_uri)
        blessing_uri = tmp_path / 'Evaluator' / 'blessing' / str(BLESSING_ID)
        blessing_uri.mkdir(parents=True)
        (blessing_uri / ('BLESSED' if blessing_metadata['blessed'] else 'NOT_BLESSED')).touch()
        export_base = str(tmp_path / 'serving')
        parameters = {
            name: in_this_checkout(value)
            for name, value in launcher.constant_parameters(step['task']).items()
        }
        parameters.update(export_base=export_base, **parameter_overrides)
        inputs = step['component']['inputDefinitions']
        invocation = launcher.executor_input(
            step['component'],
            input_artifacts={
                keys.MODEL_KEY: launcher.runtime_artifact(
                    inputs, keys.MODEL_KEY, model_uri, artifact_id=MODEL_ID
                ),
                # ImportExampleGen's output: the penguin examples the tfx package ships.
                keys.EXAMPLES_KEY: launcher.runtime_artifact(
                    inputs,
                    keys.EXAMPLES_KEY,
                    os.path.dirname(PENGUIN_EVAL),
                    artifact_id=EXAMPLES_ID,
                    metadata={'split_names': '["train", "eval"]'},
                ),
                keys.MODEL_BLESSING_KEY: launcher.runtime_artifact(
                    inputs,
                    keys.MODEL_BLESSING_KEY,
                    str(blessing_uri),
                    artifact_id=BLESSING_ID,
                    metadata={
                        **blessing_metadata,
                        **({keys.CURRENT_MODEL_PROPERTY: model_uri} if with_current_model else {}),
                    },
                ),
            },
            parameters=parameters,
            output_root=str(tmp_path / 'FinalExporter'),
            legacy_parameters=schema_version == '2.0.0',
        )
        process, output = launcher.run_step(step['executor'], invocation, cwd=str(tmp_path))
        assert process.returncode == 0, launcher.failure_message(process)
        assert output is not None, launcher.failure_message(process)
        return output, export_base, model_uri

    return run


def assert_record_files(pushed: dict, *, exported: bool) -> None:
    expected = [keys.LINEAGE_FILENAME, keys.REPORT_FILENAME]
    if exported:
        expected.append(keys.MANIFEST_FILENAME)
    assert sorted(os.listdir(pushed['uri'])) == sorted(expected)


@pytest.mark.parametrize('schema_version', kubeflow_v2_runner.SCHEMA_VERSIONS)
def test_blessed_model_is_exported_and_executor_output_describes_it(
    run_exporter_step, schema_version
):
    output, export_base, model_uri = run_exporter_step(
        blessing_metadata={keys.BLESSED_PROPERTY: 1.0}, schema_version=schema_version
    )

    pushed = launcher.output_artifact(output, keys.PUSHED_MODEL_KEY)
    meta = pushed['metadata']
    # Integers come back from the step as JSON numbers (1.0), as Vertex AI stores them.
    assert meta[keys.PUSHED_KEY] == 1
    destination = meta[keys.PUSHED_DESTINATION_KEY]
    assert destination == os.path.join(export_base, 'penguin', meta[keys.PUSHED_VERSION_KEY])
    report = verify_export(destination)
    assert report.ok, report.problems()
    assert meta[keys.MANIFEST_SHA256_KEY] == report.manifest_sha256
    assert meta[keys.SOURCE_MODEL_URI_KEY] == model_uri
    assert meta[keys.MODEL_BLESSING_URI_KEY].endswith(f'blessing/{BLESSING_ID}')
    assert json.loads(meta[keys.ASSETS_EXTRA_FILES_KEY]) == [
        'labels/classes.txt',
        keys.WARMUP_FILENAME,
    ]
    with open(os.path.join(destination, 'assets.extra', 'labels', 'classes.txt')) as f:
        assert f.read().split() == ['Adelie', 'Chinstrap', 'Gentoo']
    # The output artifact keeps the name the launcher gave it, so the backend can match it.
    assert pushed['name'] == launcher.ARTIFACT_NAME.format(900)
    assert_record_files(pushed, exported=True)
    with open(os.path.join(pushed['uri'], keys.REPORT_FILENAME)) as f:
        assert f'**Exported** version **{meta[keys.PUSHED_VERSION_KEY]}**' in f.read()


def test_not_blessed_writes_nothing_and_says_why(run_exporter_step):
    output, export_base, _ = run_exporter_step(blessing_metadata={keys.BLESSED_PROPERTY: 0.0})

    pushed = launcher.output_artifact(output, keys.PUSHED_MODEL_KEY)
    assert pushed['metadata'][keys.PUSHED_KEY] == 0
    assert 'not blessed' in pushed['metadata'][keys.NOT_PUSHED_REASON_KEY]
    assert keys.PUSHED_DESTINATION_KEY not in pushed['metadata']
    assert_nothing_written(export_base)
    assert_record_files(pushed, exported=False)


def test_integer_parameters_given_as_floats_are_honoured(run_exporter_step):
    # Vertex AI hands integer parameters back as numbers: as_text=1.0, require_blessing=1.0.
    output, _, _ = run_exporter_step(
        blessing_metadata={keys.BLESSED_PROPERTY: 1.0},
        as_text=1.0,
        require_blessing=1.0,
    )

    meta = launcher.output_artifact(output, keys.PUSHED_MODEL_KEY)['metadata']
    assert meta[keys.EXPORT_FORMAT_KEY] == 'pbtxt'
    destination = meta[keys.PUSHED_DESTINATION_KEY]
    assert os.path.isfile(os.path.join(destination, keys.SAVED_MODEL_PBTXT))
    assert not os.path.exists(os.path.join(destination, keys.SAVED_MODEL_PB))
    assert verify_export(destination).ok


def entrypoint_artifact_id(runtime_name: str) -> str:
    """The id TFX's KFP v2 entrypoint gives an input artifact: sha256(name) mod 2**63."""
    return str(int(hashlib.sha256(runtime_name.encode()).hexdigest(), 16) % (1 << 63))


def test_evaluator_blessing_that_names_the_model_by_its_runtime_name_is_accepted(
    run_exporter_step,
):
    # On Vertex AI the Evaluator step's entrypoint replaces current_model_id by the
    # model's runtime name (kubeflow_v2_entrypoint_utils.refactor_model_blessing), and
    # this step's entrypoint gives the model the id sha256(name) % 2**63.
    model_name = launcher.ARTIFACT_NAME.format(MODEL_ID)
    output, _, _ = run_exporter_step(
        blessing_metadata={keys.BLESSED_PROPERTY: 1.0, keys.CURRENT_MODEL_ID_PROPERTY: model_name},
        with_current_model=False,
    )

    meta = launcher.output_artifact(output, keys.PUSHED_MODEL_KEY)['metadata']
    assert meta[keys.PUSHED_KEY] == 1
    # 63-bit ids are recorded exactly, not rounded through a float.
    assert meta[keys.SOURCE_MODEL_ID_KEY] == entrypoint_artifact_id(model_name)
    assert meta[keys.MODEL_BLESSING_ID_KEY] == entrypoint_artifact_id(
        launcher.ARTIFACT_NAME.format(BLESSING_ID)
    )
