"""A FinalExporter step served from cache: no second export, and the cached PushedModel still true.

On Kubeflow Pipelines v2 and Vertex AI the backend decides: a step whose
component, inputs and parameters match an earlier successful one is not run,
and the earlier outputs (the PushedModel and its metadata) are reused. TFX's
local orchestrator caches the same way, so this runs the demo pipeline twice
with caching on and checks what a cache hit leaves behind.
"""

from __future__ import annotations

import os

import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from final_exporter.common import keys
from final_exporter.storage.verify import verify_export
from pipelines import local_runner, penguin_pipeline

from conftest import published_versions

pytestmark = pytest.mark.e2e


@pytest.fixture(scope='module')
def store_after_two_runs(tmp_path_factory) -> tuple[metadata_store.MetadataStore, str]:
    """Runs the demo pipeline twice with caching on; returns the MLMD store and the export base."""
    out = tmp_path_factory.mktemp('cached_demo')
    metadata_path = str(out / 'metadata.db')
    export_base = str(out / 'serving')
    for _ in range(2):
        tfx.orchestration.LocalDagRunner().run(
            penguin_pipeline.create_pipeline(
                pipeline_name='penguin-cached',
                pipeline_root=str(out / 'root'),
                data_root=local_runner.tfx_penguin_data_root(),
                module_file=penguin_pipeline.TRAINER_MODULE_FILE,
                export_base=export_base,
                metadata_path=metadata_path,
                enable_cache=True,
            )
        )
    config = tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
    return metadata_store.MetadataStore(config), export_base


def exporter_executions(store) -> list[metadata_store_pb2.Execution]:
    types = [t for t in store.get_execution_types() if t.name.endswith('FinalExporter')]
    (exporter_type,) = types
    return sorted(store.get_executions_by_type(exporter_type.name), key=lambda e: e.id)


def output_artifact_ids(store, execution_id: int) -> set[int]:
    return {
        e.artifact_id
        for e in store.get_events_by_execution_ids([execution_id])
        if e.type == metadata_store_pb2.Event.OUTPUT
    }


def test_second_run_serves_the_exporter_from_cache_without_exporting_again(
    store_after_two_runs,
):
    store, export_base = store_after_two_runs

    first, second = exporter_executions(store)

    assert first.last_known_state == metadata_store_pb2.Execution.COMPLETE
    assert second.last_known_state == metadata_store_pb2.Execution.CACHED
    assert len(published_versions(os.path.join(export_base, 'penguin'))) == 1
    # The cached step reuses the first run's PushedModel; no new one is made.
    assert output_artifact_ids(store, second.id) == output_artifact_ids(store, first.id)
    assert len(store.get_artifacts_by_type('PushedModel')) == 1


def test_cached_pushed_model_still_points_at_a_complete_export(store_after_two_runs):
    store, export_base = store_after_two_runs
    _, second = exporter_executions(store)

    (artifact_id,) = output_artifact_ids(store, second.id)
    (pushed,) = store.get_artifacts_by_id([artifact_id])
    props = {k: getattr(v, v.WhichOneof('value')) for k, v in pushed.custom_properties.items()}

    assert props[keys.PUSHED_KEY] == 1
    destination = props[keys.PUSHED_DESTINATION_KEY]
    assert destination == os.path.join(export_base, 'penguin', props[keys.PUSHED_VERSION_KEY])
    report = verify_export(destination)
    assert report.ok, report.problems()
    assert report.manifest_sha256 == props[keys.MANIFEST_SHA256_KEY]
