"""The FinalExporter executor: log, gate, export, record.

The export itself lives in `final_exporter.exporter` (no TFX types), shared
with the CLI; this module only turns TFX artifacts into a request and the
result back into the PushedModel artifact.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from final_exporter import keys
from final_exporter.blessing import Blessing, normalize_id, parse_blessed
from final_exporter.config import ExportConfig
from final_exporter.exporter import ExportRequest, ExportResult, run_export
from final_exporter.manifest import manifest_bytes
from final_exporter.report import render_report


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
        result = run_export(request, report_progress=lambda line: logging.info('Copy: %s', line))
        if result.pushed:
            logging.info('Model exported to %s (version %s).', result.export_dir, result.version)
        else:
            logging.info('Model not exported: %s.', result.reason)
        record_result(pushed_model, result)

    def _request(
        self, input_dict: dict[str, list[types.Artifact]], config: ExportConfig
    ) -> ExportRequest:
        model = artifact_utils.get_single_instance(input_dict[keys.MODEL_KEY])
        blessings = [
            blessing_from_artifact(kind, artifact_utils.get_single_instance(input_dict[kind]))
            for kind in (keys.MODEL_BLESSING_KEY, keys.INFRA_BLESSING_KEY)
            if input_dict.get(kind)
        ]
        extra: dict[str, Any] = {}
        if input_dict.get(keys.MODEL_EVALUATION_KEY):
            from final_exporter.evaluation import overall_metrics

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
            examples_uri=artifact_utils.get_single_uri(examples) if examples else None,
            config=config,
            model_uri=model.uri,
            model_id=normalize_id(model.id),
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
        model_uri=_property(artifact, keys.CURRENT_MODEL_PROPERTY) or None,
    )


def _property(artifact: types.Artifact, key: str) -> Any:
    if not artifact.has_custom_property(key):
        return None
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
    files = {
        keys.LINEAGE_FILENAME: json.dumps(result.summary(), indent=2, sort_keys=True) + '\n',
        keys.REPORT_FILENAME: render_report(result),
    }
    if result.manifest is not None:
        files[keys.MANIFEST_FILENAME] = manifest_bytes(result.manifest).decode()
    for filename, text in files.items():
        with fileio.open(f'{pushed_model.uri.rstrip("/")}/{filename}', 'w') as f:
            f.write(text)
