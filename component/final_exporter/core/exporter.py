"""The export itself, with no TFX types: plan, gate, stage and check, publish, register.

Used by the TFX executor, the kfp component and the CLI, so all of them export
the same way. Each step is its own module: `plan` (check the inputs, plan the
files), `blessing` (the gate), `retry` (a retried execution's own export),
`staging` (build, check, verify and publish), `serving_checks`, and
`after_publish` (label, retention, registry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from final_exporter.core.after_publish import label_and_retain, register
from final_exporter.core.blessing import GateDecision, check_blessings
from final_exporter.core.plan import Plan, lineage_maker, plan_export
from final_exporter.core.request import ExportRequest, ExportResult
from final_exporter.core.retry import previous_export
from final_exporter.core.staging import Published, stage_and_publish, store_options
from final_exporter.storage.stores import resolve_model_base
from final_exporter.storage.types import FileEntry

__all__ = ['ExportRequest', 'ExportResult', 'run_export']

logger = logging.getLogger(__name__)


def run_export(
    request: ExportRequest,
    *,
    report_progress: Callable[[str], None] | None = None,
    workers: int | None = None,
    clock: Callable[[], float] = time.time,
) -> ExportResult:
    """Checks the inputs, gates on the blessings, and exports atomically.

    Everything the user can get wrong is checked before anything is written.
    The export is built and verified in a staging folder under
    `<export_base>/<name>/` and published with one rename; on any failure the
    staging folder is removed and no version appears.

    Args:
        request: What to export.
        report_progress: Called with one-line progress updates on long copies.
        workers: Copy threads; a default sized for I/O when None.
        clock: Time source for versions and the lineage timestamp.

    Returns:
        The ExportResult (pushed or gated).

    Raises:
        InvalidInputError: for bad input; nothing was written.
        IntegrityError: if bytes changed under the copy; nothing was published.
    """
    plan = plan_export(request)
    decision = _gate(request)
    if not decision.export:
        return _not_pushed(request, plan, decision, clock)
    base = resolve_model_base(request.config.model_base, store_options(request, workers))
    base.store.remove_abandoned_staging(base.path)
    result = previous_export(base, request.idempotency_key)
    if result is None:
        published = stage_and_publish(base, request, plan, report_progress, clock)
        after = label_and_retain(request.config, base, published.version)
        result = _pushed(request, decision, published, after)
    return register(request.config, result, plan)


def _gate(request: ExportRequest) -> GateDecision:
    """Blessed, and made for this model?"""
    decision = check_blessings(
        request.blessings,
        model_id=request.model_id,
        model_uri=request.model_uri,
        require_blessing=request.config.require_blessing,
    )
    logger.info('Gate: %s.', decision.reason)
    return decision


def _not_pushed(
    request: ExportRequest, plan: Plan, decision: GateDecision, clock: Callable[[], float]
) -> ExportResult:
    """The gated outcome, with the lineage the export would have had (no digests)."""
    planned = {i.dest: FileEntry(i.dest, i.size, '') for i in plan.items}
    return ExportResult(
        pushed=False,
        reason=decision.reason,
        model_base=request.config.model_base,
        lineage=lineage_maker(request, plan, clock)(plan.source.signature_names, planned, {}),
    )


def _pushed(
    request: ExportRequest, decision: GateDecision, published: Published, after: dict
) -> ExportResult:
    """The outcome of this run's publish, with what label and retention did."""
    return ExportResult(
        pushed=True,
        reason=decision.reason,
        model_base=request.config.model_base,
        lineage={**published.manifest['lineage'], **after},
        version=published.version,
        export_dir=published.export_dir,
        manifest=published.manifest,
        manifest_sha256=published.manifest_sha256,
    )
