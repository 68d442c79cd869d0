"""The FinalExporter executor: log, gate, export, record.

The export itself lives in `final_exporter.core.exporter` (no TFX types), shared
with the CLI; this module only turns TFX artifacts into a request and the
result back into the PushedModel artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from final_exporter.adapters.record import write_record
from final_exporter.common import keys
from final_exporter.common.progress import Throttled
from final_exporter.core.blessing import (
    Blessing,
    normalize_id,
    parse_blessed,
    stamped_model_dir,
)
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export


class Executor(base_beam_executor.BaseBeamExecutor):
    """Exports the model once to `<export_base>/<name>/<version>/` if it is blessed."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        """Exports the model if every wired blessing is blessed.

        Args:
            input_dict: `model`, and optionally `model_blessing`, `infra_blessing`,
                `model_evaluation`.
            output_dict: `pushed_model`: the PushedModel to describe the outcome.
            exec_properties: The FinalExporterSpec parameters.
        """
        self._log_startup(input_dict, output_dict, exec_properties)
        pushed_model = artifact_utils.get_single_instance(output_dict[keys.PUSHED_MODEL_KEY])
        request = self._request(input_dict, ExportConfig.from_exec_properties(exec_properties))
        result = run_export(
            request, report_progress=Throttled(lambda line: logging.info('Copy: %s', line))
        )
        if result.pushed:
            logging.info('Model exported to %s (version %s).', result.export_dir, result.version)
        else:
            logging.info('Model not exported: %s.', result.reason)
        record_result(pushed_model, result)

    def _request(
        self, input_dict: dict[str, list[types.Artifact]], config: ExportConfig
    ) -> ExportRequest:
        if input_dict.get(keys.MODEL_KEY):
            model = artifact_utils.get_single_instance(input_dict[keys.MODEL_KEY])
            model_id, model_uri = normalize_id(model.id), model.uri
        else:
            # As the TFX Pusher: export the model InfraValidator stamped with warmup requests.
            infra = artifact_utils.get_single_instance(input_dict[keys.INFRA_BLESSING_KEY])
            model_id = None
            model_uri = stamped_model_dir(
                container_path(infra.uri), _property(infra, keys.HAS_MODEL_PROPERTY) or 0
            )
            logging.info('model not wired: exporting the stamped model %s.', model_uri)
        blessings = [
            same_model_by_runtime_name(
                blessing_from_artifact(kind, artifact_utils.get_single_instance(input_dict[kind])),
                model_id,
            )
            for kind in (keys.MODEL_BLESSING_KEY, keys.INFRA_BLESSING_KEY)
            if input_dict.get(kind)
        ]
        extra: dict[str, Any] = {keys.SOURCE_MODEL_URI_KEY: model_uri}
        if input_dict.get(keys.MODEL_EVALUATION_KEY):
            from final_exporter.core.evaluation import overall_metrics

            evaluation = artifact_utils.get_single_instance(input_dict[keys.MODEL_EVALUATION_KEY])
            extra[keys.MODEL_EVALUATION_URI_KEY] = evaluation.uri
            extra[keys.MODEL_EVALUATION_ID_KEY] = normalize_id(evaluation.id)
            extra[keys.EVAL_RESULT_KEY] = overall_metrics(evaluation.uri)
        idempotency_key = None
        if self._context is not None:
            info = self._context.pipeline_info
            pipeline_name = info.id if info is not None else None
            extra[keys.PIPELINE_NAME_KEY] = pipeline_name
            extra[keys.PIPELINE_RUN_ID_KEY] = self._context.pipeline_run_id
            node = self._context.pipeline_node
            if self._context.pipeline_run_id:
                # Kubeflow and Vertex retry a failed step within the same run.
                node_id = node.node_info.id if node is not None else 'FinalExporter'
                idempotency_key = f'{pipeline_name}/{self._context.pipeline_run_id}/{node_id}'
        examples = input_dict.get(keys.EXAMPLES_KEY)
        return ExportRequest(
            examples_uri=container_path(artifact_utils.get_single_uri(examples))
            if examples
            else None,
            config=config,
            model_uri=container_path(model_uri),
            model_id=model_id,
            blessings=blessings,
            extra_lineage=extra,
            beam_pipeline_args=self._beam_pipeline_args,
            idempotency_key=idempotency_key,
        )


def blessing_from_artifact(kind: str, artifact: types.Artifact) -> Blessing:
    """A ModelBlessing or InfraBlessing artifact as the gate sees it."""
    props = artifact.mlmd_artifact.custom_properties
    return Blessing(
        kind=kind,
        uri=artifact.uri,
        blessed=parse_blessed(
            _property(artifact, keys.BLESSED_PROPERTY), kind=kind, uri=artifact.uri
        ),
        artifact_id=normalize_id(artifact.id),
        model_id=normalize_id(_property(artifact, keys.CURRENT_MODEL_ID_PROPERTY))
        if keys.CURRENT_MODEL_ID_PROPERTY in props
        else None,
        model_uri=container_path(_property(artifact, keys.CURRENT_MODEL_PROPERTY) or '') or None,
    )


# Kubeflow Pipelines v2 and Vertex AI make input artifacts visible in the
# container under these folders (Cloud Storage FUSE on Vertex AI; the launcher's
# downloads on Kubeflow Pipelines), as `kfp.dsl.Artifact.path` maps them.
_CONTAINER_MOUNTS = {'gs://': '/gcs/', 's3://': '/s3/', 'minio://': '/minio/'}


def container_path(uri: str) -> str:
    """`uri` as a local path where the KFP v2 / Vertex AI container has it mounted, else `uri`."""
    for scheme, mount in _CONTAINER_MOUNTS.items():
        if uri.startswith(scheme):
            local = mount + uri[len(scheme) :]
            return local if os.path.exists(local) else uri
    return uri


def kfp_v2_artifact_id(runtime_name: str) -> str:
    """The id the TFX KFP v2 entrypoint gives an artifact with this runtime name.

    Same as `kubeflow_v2_entrypoint_utils._get_hashed_id`: sha256 of the name, mod 2**63.
    """
    digest = hashlib.sha256(runtime_name.encode('utf-8')).hexdigest()
    return str(int(digest, 16) % (1 << 63))


def same_model_by_runtime_name(blessing: Blessing, model_id: str | None) -> Blessing:
    """Reads a KFP v2 / Vertex AI `current_model_id` (the model's runtime name) as its id.

    There, the TFX entrypoint replaces the Evaluator's `current_model_id` by the
    model's runtime artifact name (`"12"`, or `projects/.../artifacts/12` on
    Vertex AI) and gives each input artifact the id `kfp_v2_artifact_id(name)`.
    """
    if (
        blessing.model_id is not None
        and model_id is not None
        and blessing.model_id != model_id
        and kfp_v2_artifact_id(blessing.model_id) == model_id
    ):
        return dataclasses.replace(blessing, model_id=model_id)
    return blessing


def _property(artifact: types.Artifact, key: str) -> Any:
    if not artifact.has_custom_property(key):
        return None
    if artifact.mlmd_artifact.custom_properties[key].HasField('struct_value'):
        # Kubeflow Pipelines v2 / Vertex AI hand artifact metadata back as JSON
        # values, and `get_custom_property` reads a falsy one (blessed: 0.0) as None.
        return artifact.get_json_value_custom_property(key)
    return artifact.get_custom_property(key)


def record_result(pushed_model: types.Artifact, result: ExportResult) -> None:
    """Sets the PushedModel properties and writes the manifest, lineage and report beside it."""
    for key, value in result.properties().items():
        if isinstance(value, int):
            pushed_model.set_int_custom_property(key, value)
        elif isinstance(value, float):
            pushed_model.set_float_custom_property(key, value)
        else:
            pushed_model.set_string_custom_property(key, value)
    fileio.makedirs(pushed_model.uri)

    def write(filename: str, text: str) -> None:
        with fileio.open(f'{pushed_model.uri.rstrip("/")}/{filename}', 'w') as f:
            f.write(text)

    write_record(result, write)
