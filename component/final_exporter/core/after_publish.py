"""After the publish: label and retention (recorded on failure), then the registry (raised on failure)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from final_exporter.common import keys
from final_exporter.core.config import ExportConfig
from final_exporter.core.plan import Plan
from final_exporter.core.request import ExportResult
from final_exporter.storage.base import ModelBase

logger = logging.getLogger(__name__)


def label_and_retain(config: ExportConfig, base: ModelBase, version: int) -> dict[str, Any]:
    """Label and retention, once the version is public; returns their lineage.

    A failure here is recorded, not raised: the version is already published, and
    failing the step would make Kubeflow or Vertex retry it into a second version.
    """
    if not (config.label or config.exports_to_keep):
        return {}
    from final_exporter.lifecycle import model_config, retention

    done: dict[str, Any] = {}
    try:
        if config.label:
            labelled = model_config.set_label(
                base, version, config.label, model_name=config.name, verify=False
            )
            done.update(labelled.to_lineage())
        if config.exports_to_keep:
            removed = retention.apply_retention(
                base, config.exports_to_keep, just_published=version
            )
            done[keys.RETENTION_LINEAGE_KEY] = {
                'exports_to_keep': config.exports_to_keep,
                'removed_versions': removed,
            }
    except Exception as e:  # Recorded on the PushedModel and in the report.
        logger.warning('Version %s is published, but label/retention failed: %s', version, e)
        done[keys.POST_PUBLISH_ERROR_KEY] = f'{type(e).__name__}: {e}'
    return done


def register(config: ExportConfig, result: ExportResult, plan: Plan) -> ExportResult:
    """Registers the published export in the Vertex AI Model Registry, if asked to.

    Runs on the retry path too, so a retry of an execution whose registration
    failed (or was killed) only registers. A failure fails the execution (unlike
    label and retention): the retry then registers the same export, once.
    """
    target = config.registry_target
    if target is None:
        return result
    from final_exporter.lifecycle import vertex_registry

    try:
        registered = vertex_registry.register_version(
            target,
            export_dir=result.export_dir,
            display_name=config.name,
            manifest_sha256=result.manifest_sha256,
            tensorflow_version=plan.source.tensorflow_version,
        )
    except Exception as e:
        raise vertex_registry.registration_error(result.export_dir, e) from e
    registry_lineage = registered.to_lineage(result.manifest_sha256)
    return dataclasses.replace(result, lineage={**result.lineage, **registry_lineage})
