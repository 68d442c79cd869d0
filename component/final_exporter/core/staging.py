"""The build step: stage beside the versions, run the checks, write and verify the manifest, publish.

The store keeps each step's promise: a local store stages in a hidden folder and
publishes with one rename; a bucket stages under a hidden prefix and publishes
with a claim and server-side copies, the SavedModel's graph file last
(storage/bucket.py). This module tells the store how to copy (`store_options`)
and what to copy; it never asks which kind of store it is.

Before anything is staged, the serving-signature guard compares the export's
signatures with the served version's (lifecycle/serving_contract.py); with a
signing key, the signature is staged after the manifest (core/signature.py), so
both are verified and published with the version, or neither is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from final_exporter.checks.savedmodel import GRAPH_FILES
from final_exporter.checks.signature_defs import ServingSignatures
from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError
from final_exporter.common.keys import WARMUP_RELPATH
from final_exporter.common.progress import Progress
from final_exporter.core.config import ExportConfig
from final_exporter.core.plan import Plan, lineage_maker, rewrites, with_local_source
from final_exporter.core.request import ExportRequest
from final_exporter.core.serving_checks import ChecksStep, beam_requested, wants_checks
from final_exporter.core.signature import SigningStep
from final_exporter.lifecycle.serving_contract import guard_serving_signatures
from final_exporter.storage.base import ModelBase, Staging, Store
from final_exporter.storage.local import list_local_files
from final_exporter.storage.manifest import build_manifest, manifest_bytes
from final_exporter.storage.stores import StoreOptions, store_for
from final_exporter.storage.transfer_config import TransferConfig
from final_exporter.storage.types import FileEntry, StageRequest
from final_exporter.storage.verify import verify_export

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Published:
    """A version this run published: where, and its manifest with the manifest's SHA-256."""

    version: int
    export_dir: str
    manifest: dict[str, Any]
    manifest_sha256: str


def store_options(request: ExportRequest, workers: int | None) -> StoreOptions:
    """How the export's store copies: the method and threads asked for, a Beam fan-out of
    the local copy when the Beam args ask for one, the SavedModel's graph file last."""
    transfer = TransferConfig(method=request.config.copy_method, workers=workers)
    copier = None
    if beam_requested(request.beam_pipeline_args):
        from final_exporter.storage.beam_copy import BeamCopier

        copier = BeamCopier(request.beam_pipeline_args, transfer)
    return StoreOptions(publish_last=GRAPH_FILES, transfer=transfer, copier=copier)


def stage_and_publish(
    base: ModelBase,
    request: ExportRequest,
    plan: Plan,
    report_progress: Callable[[str], None] | None,
    clock: Callable[[], float],
    *,
    hook: Callable[[str], None] | None = None,
) -> Published:
    """Builds the export in a fresh staging area of `base` and publishes it as the next version.

    On any failure the staging area is removed and no version appears.

    Args:
        base: Where to publish.
        request: What to export.
        plan: The source and files (`plan.plan_export`).
        report_progress: Called with one-line progress updates on long copies.
        clock: Time source for versions and the lineage timestamp.
        hook: Passed to `ChecksStep` (a test's hook into the window in which a
            source the checks load must not change).
    """
    config = request.config
    with contextlib.ExitStack() as cleanup:
        plan = with_local_source(plan, config, cleanup)
        staging = base.store.begin_staging(base.path, local_view=_needs_local_view(request, plan))
        try:
            signing = SigningStep(plan.signer, base.store, staging) if plan.signer else None
            checks = None
            if staging.local_dir is not None:  # Without a local view there is nothing to check.
                checks = ChecksStep(config, request, plan, staging.local_dir, hook=hook)
            with signing or contextlib.nullcontext():
                manifest, data = _build_verified(
                    base, staging, request, plan, report_progress, clock, signing, checks
                )
            version, export_dir = base.store.publish(staging, clock)
        finally:
            # Unpublished: removed. Published: only what the store kept aside (a lease, a
            # local build folder) is released.
            base.store.discard(staging)
    digest = hashlib.sha256(data).hexdigest()
    logger.info(
        'Exported %s files (%s bytes) to %s (manifest sha256 %s).',
        manifest['file_count'],
        manifest['total_bytes'],
        export_dir,
        digest,
    )
    return Published(version, export_dir, manifest, digest)


def _build_verified(
    base: ModelBase,
    staging: Staging,
    request: ExportRequest,
    plan: Plan,
    report_progress: Callable[[str], None] | None,
    clock: Callable[[], float],
    signing: SigningStep | None,
    checks: ChecksStep | None,
) -> tuple[dict[str, Any], bytes]:
    """Fills the staging area, checks it, writes (and signs) and verifies its manifest:
    (manifest, bytes)."""
    config, store, items = request.config, base.store, plan.items
    progress = Progress(
        total_bytes=sum(i.size for i in items), total_files=len(items), report=report_progress
    )
    results: dict[str, Any] = {}

    def guard(model_dir: str, signatures: ServingSignatures | None) -> None:
        results.update(
            guard_serving_signatures(
                model_dir,
                store_for(model_dir),
                base.path,
                store,
                allow_breaking_changes=config.allow_breaking_changes,
                model_name=config.name,
                new=signatures,
            )
        )

    def when_final(sizes: Mapping[str, int]) -> None:
        if signing is not None:  # Beside the checks, not after them.
            signing.start_reading(sizes)
        if checks is not None:
            checks.run()
            results.update(checks.results)

    files, signatures = _build(base, staging, request, plan, progress, checks, guard, when_final)
    warmup = checks.warmup_path if checks is not None else None
    if warmup is not None and os.path.exists(warmup) and WARMUP_RELPATH not in files:
        files.update(store.stage_local_files(staging, [WARMUP_RELPATH]))
    if signing is not None:  # Known once the key is loaded, beside the copy.
        results = {**signing.lineage(), **results}
    make_lineage = lineage_maker(request, plan, clock)
    manifest = build_manifest(files.values(), make_lineage(signatures, files, results))
    data = manifest_bytes(manifest)
    store.write_export_file(staging, keys.MANIFEST_RELPATH, data)
    if signing is not None:
        signing.sign(files, data, config.name)
    store.verify_staged(staging, manifest, known=files)
    if config.paranoid_verify:
        store.flush_for_reread(staging)
        reread_staging(staging.path, manifest, store=store)
    return manifest, data


def reread_staging(
    staging: str, manifest: Mapping[str, Any], *, store: Store | None = None
) -> None:
    """The paranoid verify: reads every staged byte back and checks it against the manifest.

    The store has flushed a local staging folder and dropped it from the page
    cache first, so the bytes come back from the disk rather than from the memory
    they were written from; a bucket's are downloaded.

    Raises:
        IntegrityError: naming the files that differ; nothing was published.
    """
    check = verify_export(staging, manifest, rehash=True, store=store)
    if not check.ok:
        raise IntegrityError(
            f'paranoid verify: staged export {staging!r} read back differs from its manifest: '
            f'{"; ".join(check.problems())}'
        )
    logger.info(
        'Paranoid verify: read back %s files (%s bytes) of %s; all match the manifest.',
        check.files_checked,
        check.bytes_checked,
        staging,
    )


def _build(
    base: ModelBase,
    staging: Staging,
    request: ExportRequest,
    plan: Plan,
    progress: Progress,
    checks: ChecksStep | None,
    guard: Callable[[str, ServingSignatures | None], None],
    when_final: Callable[[Mapping[str, int]], None],
) -> tuple[dict[str, FileEntry], tuple[str, ...]]:
    """Fills the staging area and runs the serving checks beside the copy; returns its
    files' entries and signature names.

    `guard` compares the new serving signatures with the served version's before
    anything is staged: those TensorFlow wrote for a re-export, else the source's (as
    the plan read them, when they parsed). `when_final` (the serving checks, and the
    signature's reads) gets the staged files' sizes once they hold their final bytes:
    a copied model's as soon as its bytes are in place, while they may still be
    hashed; one that TensorFlow rewrites, once it has. Which model the checks load, and when, is `ChecksStep`'s
    decision: a copied local model's source is loaded while it is copied.
    """
    config, source = request.config, plan.source
    rewritten = rewrites(config)
    if config.serving_fn:
        from final_exporter.core import tf_export  # TensorFlow only when needed.

        tf_export.reexport(source.path, staging.local_dir, config.serving_fn)
        # The graph TensorFlow wrote, before any as_text conversion.
        guard(staging.local_dir, None)
    else:
        # A copy (or its text form): the source's own signatures, as the plan read them.
        guard(source.path, source.serving)
    copied = functools.partial(when_final, {i.dest: i.size for i in plan.items})
    if checks is not None:
        checks.begin()
    staged = base.store.stage(
        staging,
        StageRequest(
            plan.items,
            progress=progress,
            meanwhile=checks.meanwhile if checks is not None and checks.wanted else None,
            when_complete=None if rewritten else copied,
        ),
    )
    if not rewritten:
        return staged, source.signature_names
    signatures = _rewrite(staging.local_dir, source.path, config)
    # Stage only what TensorFlow wrote; the copy already hashed the rest.
    written = sorted(set(list_local_files(staging.local_dir)) - set(staged))
    staged.update(base.store.stage_local_files(staging, written))
    when_final({p: e.size for p, e in staged.items()})
    return staged, signatures


def _rewrite(local: str, source_path: str, config: ExportConfig) -> tuple[str, ...]:
    """Has TensorFlow write the text graph (`as_text`) and load the result; its signatures."""
    from final_exporter.core import tf_export  # TensorFlow only when needed.

    if config.serving_fn and config.as_text:
        tf_export.convert_in_place_to_pbtxt(local)
    elif config.as_text:
        tf_export.write_pbtxt(
            os.path.join(source_path, keys.SAVED_MODEL_PB),
            os.path.join(local, keys.SAVED_MODEL_PBTXT),
        )
    return tf_export.check_loads(local)


def _needs_local_view(request: ExportRequest, plan: Plan) -> bool:
    """Whether TensorFlow or a serving check reads the staged export."""
    return bool(
        wants_checks(request.config, request)
        or rewrites(request.config)
        or any(i.dest == WARMUP_RELPATH for i in plan.items)
    )
