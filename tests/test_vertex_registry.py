"""Vertex AI Model Registry: the real ModelServiceClient against tests/vertex_server.py.

Exports go to fake-gcs-server (a gs:// export base, fixture `gcs_base`); the
registry step talks gRPC to the loopback ModelService (fixture `vertex`) through
`FINAL_EXPORTER_VERTEX_ENDPOINT`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from final_exporter.common import keys
from final_exporter.common.errors import FinalExporterError, InvalidInputError
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, run_export
from final_exporter.lifecycle import vertex_registry
from final_exporter.storage.stores import list_versions
from final_exporter.storage.verify import verify_export

PROJECT, REGION = 'test-project', 'europe-west4'
LOCATION = f'projects/{PROJECT}/locations/{REGION}'
KMS_KEY = f'projects/{PROJECT}/locations/{REGION}/keyRings/ring/cryptoKeys/models'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(model_uri: str, base: str, key: str | None = None, **vertex):
    config = ExportConfig(
        name='penguin',
        export_base=base,
        smoke_test=False,
        require_blessing=False,
        **{'vertex_project': PROJECT, 'vertex_region': REGION, **vertex},
    )
    return run_export(ExportRequest(config=config, model_uri=model_uri, idempotency_key=key))


def test_first_export_creates_the_model_and_records_the_version(vertex, gcs_base, model_uri):
    result = export(
        model_uri,
        gcs_base,
        vertex_model='penguin',
        vertex_version_aliases=['candidate'],
        vertex_labels={'team': 'fraud-ml'},
        vertex_version_description='nightly',
    )

    ((name, versions),) = vertex.models.items()
    (version,) = versions
    assert name.startswith(f'{LOCATION}/models/')
    assert version.display_name == 'penguin'
    assert version.artifact_uri == result.export_dir
    assert sorted(version.version_aliases) == ['candidate', 'default']
    # The Keras test model was saved by TensorFlow 2.3: its prebuilt image, in Europe.
    assert (
        version.container_spec.image_uri
        == 'europe-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-3:latest'
    )
    assert dict(version.labels) == {
        'team': 'fraud-ml',
        vertex_registry.MANIFEST_LABEL: result.manifest_sha256[:63],
    }
    assert version.version_description.startswith('nightly\n')
    assert result.manifest_sha256 in version.version_description
    props = result.properties()
    assert props[keys.VERTEX_MODEL_RESOURCE_KEY] == name
    assert props[keys.VERTEX_MODEL_VERSION_ID_KEY] == '1'
    assert sorted(json.loads(props[keys.VERTEX_MODEL_VERSION_ALIASES_KEY])) == [
        'candidate',
        'default',
    ]
    assert props[keys.VERTEX_MANIFEST_LABEL_KEY] == result.manifest_sha256[:63]
    model_id = name.rsplit('/', 1)[1]
    assert props[keys.VERTEX_CONSOLE_URL_KEY] == (
        f'https://console.cloud.google.com/vertex-ai/models/locations/{REGION}/models/'
        f'{model_id}/versions/1?project={PROJECT}'
    )


def test_export_becomes_a_new_version_of_an_existing_parent_and_aliases_move(
    vertex, gcs_base, model_uri
):
    parent = vertex.add_model(LOCATION, 'penguin')

    second = export(
        model_uri,
        gcs_base,
        vertex_model='penguin',
        vertex_version_aliases=['candidate'],
        vertex_is_default_version=False,
    )
    third = export(
        model_uri, gcs_base, vertex_model='penguin', vertex_version_aliases=['candidate']
    )

    uploads = [r for m, r in vertex.calls if m == 'UploadModel']
    assert [u.parent_model for u in uploads] == [parent, parent]
    # The API requires a display name on a new version too: the parent's, as the SDK sends.
    assert [u.model.display_name for u in uploads] == ['penguin', 'penguin']
    v1, v2, v3 = vertex.models[parent]
    assert second.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY] == '2'
    assert third.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY] == '3'
    # candidate moved from version 2 to 3 with MergeVersionAliases; default went to 3.
    assert list(v1.version_aliases) == []
    assert list(v2.version_aliases) == []
    assert sorted(v3.version_aliases) == ['candidate', 'default']
    assert vertex.count('MergeVersionAliases') == 2
    assert v3.artifact_uri == third.export_dir


def test_parent_given_by_resource_name_is_created_with_that_id(vertex, gcs_base, model_uri):
    parent = f'{LOCATION}/models/penguin-prod'

    first = export(model_uri, gcs_base, vertex_model=parent, vertex_project='', vertex_region='')
    second = export(model_uri, gcs_base, vertex_model=parent, vertex_project='', vertex_region='')

    assert [v.version_id for v in vertex.models[parent]] == ['1', '2']
    # Created with the export's name, which the new version then takes from its parent.
    assert [v.display_name for v in vertex.models[parent]] == ['penguin', 'penguin']
    assert first.lineage[keys.VERTEX_MODEL_RESOURCE_KEY] == parent
    assert second.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY] == '2'


def test_cmek_key_and_serving_image_are_passed_through(vertex, gcs_base, model_uri):
    image = 'us-docker.pkg.dev/my-project/serving/penguin:1'

    export(
        model_uri,
        gcs_base,
        vertex_model='penguin',
        vertex_encryption_key=KMS_KEY,
        vertex_serving_image=image,
    )

    (request,) = [r for m, r in vertex.calls if m == 'UploadModel']
    assert request.model.encryption_spec.kms_key_name == KMS_KEY
    assert request.model.container_spec.image_uri == image
    (version,) = vertex.versions('penguin')
    assert version.encryption_spec.kms_key_name == KMS_KEY


@pytest.mark.parametrize(
    'vertex_params, message',
    [
        ({'vertex_version_aliases': ['Candidate']}, "'Candidate' is not a Vertex AI version alias"),
        ({'vertex_version_aliases': ['1']}, "'1' is not a Vertex AI version alias"),
        ({'vertex_version_aliases': ['canary-']}, "'canary-' is not a Vertex AI version alias"),
        ({'vertex_version_aliases': ['default']}, 'set vertex_is_default_version'),
        ({'vertex_labels': {'Team': 'ml'}}, "key 'Team' is not a Vertex AI label key"),
        ({'vertex_labels': {'team': 'ML'}}, "value 'ML' of 'team' is not a Vertex AI label value"),
        ({'vertex_labels': {'team': 'x' * 64}}, 'is not a Vertex AI label value'),
        ({'vertex_labels': {vertex_registry.MANIFEST_LABEL: 'x'}}, 'is set by the exporter'),
        ({'vertex_encryption_key': 'my-key'}, 'is not a Cloud KMS key name'),
        ({'vertex_region': 'europe-west1', 'vertex_model': f'{LOCATION}/models/m'}, 'differs'),
    ],
)
def test_invalid_registry_parameters_are_refused_before_anything_is_written(
    vertex, gcs_base, model_uri, vertex_params, message
):
    with pytest.raises(InvalidInputError, match=message):
        export(model_uri, gcs_base, **{'vertex_model': 'penguin', **vertex_params})

    assert list_versions(f'{gcs_base}/penguin') == []
    assert vertex.calls == []


@pytest.mark.parametrize('base', ['/srv/models', 's3://bucket/models'])
def test_registry_parameters_need_a_gs_export_base(base):
    with pytest.raises(InvalidInputError, match='vertex_model needs a gs:// export_base'):
        ExportConfig(name='penguin', export_base=base, vertex_model='penguin')
    with pytest.raises(InvalidInputError, match='vertex_labels given without vertex_model'):
        ExportConfig(name='penguin', export_base=base, vertex_labels={'team': 'ml'})


def test_failed_operation_fails_naming_the_safe_export_and_the_retry_only_registers(
    vertex, gcs_base, model_uri
):
    vertex.fail_next_operation(message='quota exceeded')

    with pytest.raises(FinalExporterError) as failed:
        export(model_uri, gcs_base, key='run-1/FinalExporter', vertex_model='penguin')

    (published,) = list_versions(f'{gcs_base}/penguin')
    export_dir = f'{gcs_base}/penguin/{published}'
    assert f'published and safe at {export_dir}' in str(failed.value)
    assert 'quota exceeded' in str(failed.value)
    assert verify_export(export_dir).ok
    assert vertex.versions('penguin') == []

    retry = export(model_uri, gcs_base, key='run-1/FinalExporter', vertex_model='penguin')

    assert retry.export_dir == export_dir
    assert list_versions(f'{gcs_base}/penguin') == [published]
    (version,) = vertex.versions('penguin')
    assert version.artifact_uri == export_dir
    assert retry.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY] == '1'


def test_a_failed_call_fails_the_execution_and_the_retry_registers_once(
    vertex, gcs_base, model_uri
):
    vertex.fail_next('MergeVersionAliases', grpc.StatusCode.UNAVAILABLE, 'backend down')
    vertex.add_model(LOCATION, 'penguin')

    with pytest.raises(FinalExporterError, match='backend down'):
        export(
            model_uri, gcs_base, key='k', vertex_model='penguin', vertex_version_aliases=['prod']
        )
    retry = export(
        model_uri, gcs_base, key='k', vertex_model='penguin', vertex_version_aliases=['prod']
    )

    # The upload went through before the alias move failed: the retry finds that
    # version by its manifest label and only moves the alias.
    assert vertex.count('UploadModel') == 1
    _, version = vertex.versions('penguin')
    assert sorted(version.version_aliases) == ['default', 'prod']
    assert retry.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY] == '2'


def test_retry_after_a_registered_export_registers_nothing_new(vertex, gcs_base, model_uri):
    first = export(model_uri, gcs_base, key='run-2/FinalExporter', vertex_model='penguin')
    retry = export(model_uri, gcs_base, key='run-2/FinalExporter', vertex_model='penguin')

    assert vertex.count('UploadModel') == 1
    assert retry.export_dir == first.export_dir
    assert retry.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY] == '1'


def test_display_name_shared_by_two_models_is_refused_with_their_names(vertex, gcs_base, model_uri):
    names = [vertex.add_model(LOCATION, 'penguin') for _ in range(2)]

    with pytest.raises(FinalExporterError) as failed:
        export(model_uri, gcs_base, vertex_model='penguin')

    assert all(n in str(failed.value) for n in names)
    assert 'pass the resource name' in str(failed.value)


def test_project_and_region_default_as_the_vertex_sdk_resolves_them(
    vertex, gcs_base, model_uri, monkeypatch
):
    from google.cloud import aiplatform
    from google.cloud.aiplatform import initializer

    # aiplatform.init's state, put back after the test; no location from an earlier test
    # (the Vertex runner's tests set one), so the environment's region applies.
    monkeypatch.setattr(initializer.global_config, '_project', initializer.global_config._project)
    monkeypatch.setattr(initializer.global_config, '_location', None)
    aiplatform.init(project='env-project')
    monkeypatch.setenv('GOOGLE_CLOUD_REGION', 'asia-east1')

    result = export(
        model_uri, gcs_base, vertex_model='penguin', vertex_project='', vertex_region=''
    )

    assert result.lineage[keys.VERTEX_MODEL_RESOURCE_KEY].startswith(
        'projects/env-project/locations/asia-east1/models/'
    )
    (version,) = vertex.versions('penguin')
    assert version.container_spec.image_uri.startswith('asia-docker.pkg.dev/')


# --- SIGKILL of a CLI export around the upload, then the retry -------------------------


def _cli_export(model_uri: str, base: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            '-m',
            'final_exporter.adapters.cli',
            'export',
            '--model',
            model_uri,
            '--no-require-blessing',
            '--no-smoke-test',
            '--name',
            'penguin',
            '--export-base',
            base,
            '--idempotency-key',
            'run-3/FinalExporter',
            '--vertex-model',
            'penguin',
            '--vertex-project',
            PROJECT,
            '--vertex-region',
            REGION,
            '--vertex-version-aliases',
            'candidate',
            '--json',
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    'held, uploads',
    [
        ('ListModels', 1),  # killed after the publish, before the upload
        ('GetModel', 1),  # killed after the upload
    ],
)
def test_sigkill_around_the_upload_then_the_retry_registers_exactly_once(
    vertex, gcs_base, model_uri, held, uploads
):
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join(
            [os.path.join(REPO, 'component'), os.environ.get('PYTHONPATH', '')]
        ),
    }
    hold = vertex.hold(held)
    proc = _cli_export(model_uri, gcs_base, env)
    try:
        assert hold.reached.wait(120), proc.stderr.read() if proc.poll() is not None else ''
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        hold.release.set()
        if proc.poll() is None:
            proc.kill()
    (published,) = list_versions(f'{gcs_base}/penguin')

    retry = _cli_export(model_uri, gcs_base, env)
    out, err = retry.communicate(timeout=300)

    assert retry.returncode == 0, err
    summary = json.loads(out)
    assert summary['version'] == published
    assert list_versions(f'{gcs_base}/penguin') == [published]
    assert vertex.count('UploadModel') == uploads
    (version,) = vertex.versions('penguin')
    assert sorted(version.version_aliases) == ['candidate', 'default']
    assert summary['lineage'][keys.VERTEX_MODEL_VERSION_ID_KEY] == version.version_id
