"""The retry lookup: a retried execution finds the export its earlier attempt published."""

from __future__ import annotations

import logging

from final_exporter.common import keys
from final_exporter.common.errors import FinalExporterError
from final_exporter.core.request import ExportResult
from final_exporter.storage.base import ModelBase
from final_exporter.storage.verify import read_manifest, verify_export

logger = logging.getLogger(__name__)

# Retries come soon after the failed attempt; looking further back costs reads for nothing.
_RETRY_LOOKBACK_VERSIONS = 20


def previous_export(base: ModelBase, idempotency_key: str | None) -> ExportResult | None:
    """The complete export an earlier attempt of this execution published, if any.

    A version this execution's earlier attempt left half-published is removed, so
    that the export runs again.
    """
    if not idempotency_key:
        return None
    store = base.store
    for version in reversed(base.list_versions()[-_RETRY_LOOKBACK_VERSIONS:]):
        export_dir = base.version_dir(version)
        try:
            manifest, digest = read_manifest(export_dir, store=store)
        except FinalExporterError:
            continue
        if manifest.get('lineage', {}).get(keys.IDEMPOTENCY_KEY_KEY) != idempotency_key:
            continue
        if not verify_export(export_dir, manifest, rehash=False, store=store).ok:
            # This execution's earlier attempt died mid-publish (on a bucket: copies cut
            # short, so no saved_model.pb): the store removes what it can, and the
            # export runs again.
            store.remove_incomplete_version(base.path, version)
            continue
        logger.info(
            'Execution %s already exported version %s; reporting it.', idempotency_key, version
        )
        return ExportResult(
            pushed=True,
            reason=f'already exported by this execution (retry of {idempotency_key})',
            model_base=base.path,
            lineage=manifest['lineage'],
            version=version,
            export_dir=export_dir,
            manifest=manifest,
            manifest_sha256=digest,
        )
    return None
