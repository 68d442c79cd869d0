"""The export itself, with no TFX types: check, gate, stage, verify, publish.

Used by the TFX executor, the CLI and (later) the Kubeflow-native component, so
all of them export the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from final_exporter.checks.savedmodel import (
    SavedModelInfo,
    inspect_saved_model,
    resolve_saved_model_dir,
)
from final_exporter.common import keys
from final_exporter.common.errors import FinalExporterError, IntegrityError, InvalidInputError
from final_exporter.common.keys import WARMUP_RELPATH
from final_exporter.common.progress import Progress
from final_exporter.core import lineage
from final_exporter.core.blessing import Blessing, check_blessings
from final_exporter.core.config import ExportConfig
from final_exporter.storage.base import Staging, Store
from final_exporter.storage.manifest import FileEntry, build_manifest, manifest_bytes
from final_exporter.storage.stores import store_for
from final_exporter.storage.transfer import CopyItem
from final_exporter.storage.verify import read_manifest, verify_export

logger = logging.getLogger(__name__)

# Rows fed to the smoke test: enough to show the batch dimension, quick to run.
_SMOKE_EXAMPLES = 16


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What to export and what is known about it.

    Attributes:
        config: The export parameters.
        model_uri: A TFX Model artifact folder (either layout) or a SavedModel folder.
        model_id: MLMD id of the Model artifact, if known.
        blessings: The wired blessings.
        extra_lineage: Lineage only the caller knows: evaluation metrics, pipeline
            name and run id.
        beam_pipeline_args: When they name a runner (`--runner=...`) or direct-runner
            parallelism, the copy (and the parity check) fan out as Apache Beam
            pipelines with these options instead of a thread pool.
        examples_uri: A TFX Examples artifact folder: real inputs for the smoke
            test, parity and warmup requests.
        idempotency_key: Identifies the execution (pipeline, run, node). A retry
            with the same key that finds its own complete export reports it
            instead of publishing a second version.
    """

    config: ExportConfig
    model_uri: str
    model_id: str | None = None
    blessings: Sequence[Blessing] = ()
    extra_lineage: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    beam_pipeline_args: Sequence[str] = ()
    examples_uri: str | None = None
    idempotency_key: str | None = None


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """The outcome of an export; `pushed` False means gated, not failed."""

    pushed: bool
    reason: str
    model_base: str
    lineage: Mapping[str, Any]
    version: int | None = None
    export_dir: str | None = None
    manifest: Mapping[str, Any] | None = None
    manifest_sha256: str | None = None

    @property
    def total_bytes(self) -> int:
        return self.manifest['total_bytes'] if self.manifest else 0

    @property
    def file_count(self) -> int:
        return self.manifest['file_count'] if self.manifest else 0

    def summary(self) -> dict[str, Any]:
        """The outcome as the CLI's `--json` prints it."""
        return {
            'pushed': self.pushed,
            'version': self.version,
            'export_dir': self.export_dir,
            'manifest_sha256': self.manifest_sha256,
            'not_pushed_reason': None if self.pushed else self.reason,
            'reason': self.reason,
            'model_base': self.model_base,
            'total_bytes': self.total_bytes,
            'file_count': self.file_count,
            'lineage': dict(self.lineage),
        }

    def properties(self) -> dict[str, int | float | str]:
        """PushedModel custom properties: the Pusher's keys, then the lineage."""
        props = lineage.to_properties(self.lineage)
        props[keys.PUSHED_KEY] = int(self.pushed)
        if self.pushed:
            props[keys.PUSHED_DESTINATION_KEY] = self.export_dir
            props[keys.PUSHED_VERSION_KEY] = str(self.version)
            props[keys.MANIFEST_SHA256_KEY] = self.manifest_sha256
            props[keys.TOTAL_BYTES_KEY] = self.total_bytes
            props[keys.FILE_COUNT_KEY] = self.file_count
        else:
            props[keys.NOT_PUSHED_REASON_KEY] = self.reason
        return props


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
    config = request.config
    with _unreadable_is_bad_input():
        source_store = store_for(request.model_uri)
        source_dir = resolve_saved_model_dir(request.model_uri, source_store)
        source = inspect_saved_model(source_dir, source_store)
        assets = _check_assets_extra_sources(config.assets_extra)
        items = _plan_copy(source_store, source, config, assets)
    _check_serving_inputs(config, request, items)
    decision = check_blessings(
        request.blessings,
        model_id=request.model_id,
        model_uri=request.model_uri,
        require_blessing=config.require_blessing,
    )
    logger.info('Gate: %s.', decision.reason)

    def make_lineage(
        signatures: Sequence[str], files: Mapping[str, FileEntry], checks: Mapping[str, Any]
    ) -> dict[str, Any]:
        return lineage.build_lineage(
            name=config.name,
            export_format='pbtxt' if config.as_text else 'pb',
            signature_names=signatures,
            assets_extra_files=sorted(
                p.removeprefix(keys.ASSETS_EXTRA_DIR + '/')
                for p in files
                if p.startswith(keys.ASSETS_EXTRA_DIR + '/')
            ),
            source_model_uri=request.model_uri,
            source_model_id=request.model_id,
            source_saved_model_dir=source_dir,
            blessings=request.blessings,
            serving_fn=config.serving_fn,
            extra={
                **request.extra_lineage,
                keys.EXAMPLES_URI_KEY: request.examples_uri,
                keys.IDEMPOTENCY_KEY_KEY: request.idempotency_key,
                **checks,
            },
            clock=clock,
        )

    if not decision.export:
        planned = {i.dest: FileEntry(i.dest, i.size, '') for i in items}
        return ExportResult(
            pushed=False,
            reason=decision.reason,
            model_base=config.model_base,
            lineage=make_lineage(source.signature_names, planned, {}),
        )

    store = store_for(config.model_base)
    store.remove_abandoned_staging(config.model_base)
    if request.idempotency_key:
        previous = _previous_export(store, config.model_base, request.idempotency_key)
        if previous is not None:
            return _register(config, previous, source_dir)
    with contextlib.ExitStack() as cleanup:
        if config.serving_fn or config.as_text:
            # TensorFlow rewrites the graph, so it needs the source model as files: a
            # model in a bucket is downloaded once (a local one is used where it is).
            local_source = cleanup.enter_context(source_store.local_tree(source.path))
            source = dataclasses.replace(source, path=local_source)
            items = _plan_copy(store_for(local_source), source, config, assets)
        version, export_dir, manifest, digest = _export(
            store, request, source, items, make_lineage, report_progress, workers, clock
        )
    after = _after_publish(config, version)
    logger.info(
        'Exported %s files (%s bytes) to %s (manifest sha256 %s).',
        manifest['file_count'],
        manifest['total_bytes'],
        export_dir,
        digest,
    )
    result = ExportResult(
        pushed=True,
        reason=decision.reason,
        model_base=config.model_base,
        lineage={**manifest['lineage'], **after},
        version=version,
        export_dir=export_dir,
        manifest=manifest,
        manifest_sha256=digest,
    )
    return _register(config, result, source_dir)


def _import_tensorflow() -> None:
    """Imports TensorFlow for the checks; the copy calls it while its threads copy.

    The import is seconds of mostly single-threaded CPU, and the copy's threads
    mostly wait on the kernel and the disk: side by side, the checks start with
    TensorFlow ready. It runs in the exporter's own thread, never in a thread of
    its own: an import in a second thread can deadlock with one in this thread
    (CPython before 3.12 holds its global import lock while a meta-path finder
    runs, and setuptools' distutils finder, which TensorFlow's import reaches,
    imports modules from there). An import that fails is left for the checks
    to report.
    """
    with contextlib.suppress(Exception):
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def _unreadable_is_bad_input() -> Iterator[None]:
    """A model file or folder this user cannot read is the input's fault (exit 2), not an I/O failure."""
    try:
        yield
    except PermissionError as e:
        raise InvalidInputError(
            f'cannot read {e.filename!r} ({e.strerror}); expected the model to be readable by '
            f'the user running the export (uid {os.geteuid()})'
        ) from None


LineageFn = Callable[[Sequence[str], Mapping[str, FileEntry], Mapping[str, Any]], dict[str, Any]]
Outcome = tuple[int, str, dict[str, Any], str]


def _export(
    store: Store,
    request: ExportRequest,
    source: SavedModelInfo,
    items: list[CopyItem],
    make_lineage: LineageFn,
    report_progress: Callable[[str], None] | None,
    workers: int | None,
    clock: Callable[[], float],
) -> Outcome:
    """Stage beside the versions, check, verify, publish; the store keeps each step's promise.

    A local store stages in a hidden folder and publishes with one rename; a bucket
    stages under a hidden prefix and publishes with a claim and server-side copies,
    `saved_model.pb` last (storage/bucket.py).
    """
    config = request.config
    staging = store.begin_staging(config.model_base)
    try:
        progress = Progress(
            total_bytes=sum(i.size for i in items), total_files=len(items), report=report_progress
        )
        warmup = os.path.join(staging.local_dir, *WARMUP_RELPATH.split('/'))
        checks: dict[str, Any] = {}

        def run_checks() -> None:
            checks.update(_serving_checks(staging.local_dir, source.path, config, request, warmup))

        files, signatures = _build(
            store, staging, source, config, items, request, progress, workers, run_checks
        )
        if os.path.exists(warmup) and WARMUP_RELPATH not in files:
            files.update(store.stage_local_files(staging, [WARMUP_RELPATH]))
        manifest = build_manifest(files.values(), make_lineage(signatures, files, checks))
        data = manifest_bytes(manifest)
        store.write_manifest(staging, data)
        store.verify_staged(staging, manifest, known=files)
        if config.paranoid_verify:
            store.flush_for_reread(staging)
            reread_staging(staging.path, manifest)
        version, export_dir = store.publish(staging, clock)
    finally:
        # Unpublished: removed. Published: only what the store kept aside (a lease, a
        # local build folder) is released.
        store.discard(staging)
    return version, export_dir, manifest, hashlib.sha256(data).hexdigest()


def reread_staging(staging: str, manifest: Mapping[str, Any]) -> None:
    """The paranoid verify: reads every staged byte back and checks it against the manifest.

    The store has flushed a local staging folder and dropped it from the page
    cache first, so the bytes come back from the disk rather than from the memory
    they were written from; a bucket's are downloaded.

    Raises:
        IntegrityError: naming the files that differ; nothing was published.
    """
    check = verify_export(staging, manifest, rehash=True)
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


def _check_assets_extra_sources(assets_extra: Mapping[str, str]) -> list[CopyItem]:
    items = []
    for dest, src in assets_extra.items():
        store = store_for(src)
        if not store.is_file(src):
            what = 'a folder' if store.children(src) else 'missing'
            raise InvalidInputError(
                f'assets_extra source for {dest!r} is {what}: {src!r}; expected a readable file'
            )
        if not store.is_readable(src):
            raise InvalidInputError(f'assets_extra source for {dest!r} is not readable: {src!r}')
        items.append(
            CopyItem(src=src, dest=f'{keys.ASSETS_EXTRA_DIR}/{dest}', size=store.size(src))
        )
    return items


# Retries come soon after the failed attempt; looking further back costs reads for nothing.
_RETRY_LOOKBACK_VERSIONS = 20


def _previous_export(store: Store, model_base: str, idempotency_key: str) -> ExportResult | None:
    """The complete export an earlier attempt of this execution published, if any."""
    for version in reversed(store.list_versions(model_base)[-_RETRY_LOOKBACK_VERSIONS:]):
        export_dir = store.join(model_base, str(version))
        try:
            manifest, digest = read_manifest(export_dir)
        except FinalExporterError:
            continue
        if manifest.get('lineage', {}).get(keys.IDEMPOTENCY_KEY_KEY) != idempotency_key:
            continue
        if not verify_export(export_dir, manifest, rehash=False).ok:
            # This execution's earlier attempt died mid-publish (on a bucket: copies cut
            # short, so no saved_model.pb): the store removes what it can, and the
            # export runs again.
            store.remove_incomplete_version(model_base, version)
            continue
        logger.info(
            'Execution %s already exported version %s; reporting it.', idempotency_key, version
        )
        return ExportResult(
            pushed=True,
            reason=f'already exported by this execution (retry of {idempotency_key})',
            model_base=model_base,
            lineage=manifest['lineage'],
            version=version,
            export_dir=export_dir,
            manifest=manifest,
            manifest_sha256=digest,
        )
    return None


# Flags that ask Beam for a runner or for parallelism. TFX hands every Beam component
# its dependency flags (and the KFP v2 entrypoint its leftover arguments), which alone
# are no reason to start a Beam pipeline for a copy a thread pool does faster.
_BEAM_RUNNER_FLAGS = ('--runner', '--direct_running_mode', '--direct_num_workers')


def beam_requested(beam_pipeline_args: Sequence[str]) -> bool:
    """True when the Beam args name a runner or direct-runner parallelism."""
    return any(a.startswith(_BEAM_RUNNER_FLAGS) for a in beam_pipeline_args)


def _check_serving_inputs(
    config: ExportConfig, request: ExportRequest, items: list[CopyItem]
) -> None:
    """Refuses, before anything is written, serving options that cannot work together."""
    if request.examples_uri and not os.path.isdir(request.examples_uri):
        raise InvalidInputError(f'examples folder {request.examples_uri!r} does not exist')
    if config.warmup_requests and not request.examples_uri:
        raise InvalidInputError(
            f'warmup_requests={config.warmup_requests} needs the examples input '
            '(an Examples artifact) to build the requests from'
        )
    if config.warmup_requests and any(i.dest == WARMUP_RELPATH for i in items):
        raise InvalidInputError(
            f'warmup_requests={config.warmup_requests}, but the export already has '
            f'{WARMUP_RELPATH} (from the model or assets_extra); set warmup_requests=0 to '
            'keep (and validate) that file'
        )


def _serving_checks(
    model_dir: str,
    source_dir: str,
    config: ExportConfig,
    request: ExportRequest,
    warmup_path: str,
) -> dict[str, Any]:
    """Smoke test, prediction parity and warmup requests; returns their lineage.

    `model_dir` is the staged export (or the local bytes an object-store export
    uploads). A warmup file is written to `warmup_path` when asked for.

    Raises:
        InvalidInputError: if the model does not load or answer, its predictions
            differ from the source model's, or a supplied warmup file is invalid.
    """
    supplied = os.path.join(model_dir, *WARMUP_RELPATH.split('/'))
    if not (config.smoke_test or request.examples_uri or os.path.exists(supplied)):
        return {}
    from final_exporter.checks import serving_check, warmup  # TensorFlow only when needed.

    checks: dict[str, Any] = {}
    examples = None
    if request.examples_uri:
        limit = max(config.parity_sample_size, config.warmup_requests, _SMOKE_EXAMPLES)
        examples = serving_check.read_examples(request.examples_uri, config.examples_split, limit)
    input_name = None
    if config.smoke_test:
        smoke = serving_check.smoke_test(
            model_dir, config.signature_name, examples[:_SMOKE_EXAMPLES] if examples else None
        )
        input_name = smoke.example_input
        checks.update(smoke.to_lineage())
    if examples and (config.serving_fn or config.as_text) and config.parity_sample_size:
        parity = serving_check.prediction_parity(
            source_dir,
            model_dir,
            examples[: config.parity_sample_size],
            config.signature_name,
            atol=config.parity_tolerance,
            rtol=config.parity_tolerance,
            compare_batches=(
                _beam_comparer(request.beam_pipeline_args)
                if beam_requested(request.beam_pipeline_args)
                else None
            ),
        )
        serving_check.require_parity(parity)
        checks.update(parity.to_lineage())
    if os.path.exists(supplied):
        loaded = serving_check.load_export(model_dir)
        count = warmup.validate_warmup_requests(supplied, list(loaded.signatures.keys()))
        if config.smoke_test:
            warmup.replay_warmup_requests(model_dir, supplied)
        checks[keys.WARMUP_LINEAGE_KEY] = {'count': count, 'source': 'supplied'}
    elif config.warmup_requests:
        if input_name is None:
            signature = serving_check.get_signature(
                serving_check.load_export(model_dir), config.signature_name, model_dir
            )
            input_name = serving_check.example_input_name(signature)
        count = warmup.write_warmup_requests(
            warmup_path,
            examples[: config.warmup_requests],
            config.signature_name,
            model_name=config.name,
            input_name=input_name,
        )
        checks[keys.WARMUP_LINEAGE_KEY] = {'count': count, 'source': 'written'}
    return checks


def _beam_comparer(beam_pipeline_args: Sequence[str]):
    from final_exporter.checks.parity_beam import beam_comparer  # Beam only when asked for.

    return beam_comparer(beam_pipeline_args)


def _after_publish(config: ExportConfig, version: int) -> dict[str, Any]:
    """Label and retention, once the version is public.

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
                config.model_base, version, config.label, model_name=config.name, verify=False
            )
            done.update(labelled.to_lineage())
        if config.exports_to_keep:
            removed = retention.apply_retention(
                config.model_base, config.exports_to_keep, just_published=version
            )
            done[keys.RETENTION_LINEAGE_KEY] = {
                'exports_to_keep': config.exports_to_keep,
                'removed_versions': removed,
            }
    except Exception as e:  # Recorded on the PushedModel and in the report.
        logger.warning('Version %s is published, but label/retention failed: %s', version, e)
        done[keys.POST_PUBLISH_ERROR_KEY] = f'{type(e).__name__}: {e}'
    return done


def _register(config: ExportConfig, result: ExportResult, source_dir: str) -> ExportResult:
    """Registers the published export in the Vertex AI Model Registry, if asked to.

    Runs on the retry path too, so a retry of an execution whose registration
    failed (or was killed) only registers. A failure fails the execution (unlike
    label and retention): the retry then registers the same export, once.
    """
    target = config.registry_target
    if target is None:
        return result
    from final_exporter.checks.savedmodel import tensorflow_version
    from final_exporter.lifecycle import vertex_registry

    try:
        registered = vertex_registry.register_version(
            target,
            export_dir=result.export_dir,
            display_name=config.name,
            manifest_sha256=result.manifest_sha256,
            tensorflow_version=tensorflow_version(source_dir, store_for(source_dir)),
        )
    except Exception as e:
        raise vertex_registry.registration_error(result.export_dir, e) from e
    registry_lineage = registered.to_lineage(result.manifest_sha256)
    return dataclasses.replace(result, lineage={**result.lineage, **registry_lineage})


def _plan_copy(
    store: Store, source: SavedModelInfo, config: ExportConfig, assets: list[CopyItem]
) -> list[CopyItem]:
    """All files the export will hold (but the manifest), with their sources."""
    # A re-export of an export carries an old manifest; the new one replaces it.
    exclude = [keys.MANIFEST_RELPATH]
    if config.serving_fn:
        # TensorFlow writes the SavedModel itself; only assets.extra is copied.
        planned = [
            i
            for i in store.plan_tree(source.path, exclude=exclude)
            if i.dest.startswith(keys.ASSETS_EXTRA_DIR + '/')
        ]
    else:
        if config.as_text:
            exclude.append(keys.SAVED_MODEL_PB)
        planned = store.plan_tree(source.path, exclude=exclude)
    taken = {i.dest for i in planned}
    for item in assets:
        if item.dest in taken:
            raise InvalidInputError(
                f'assets_extra destination {item.dest!r} is already in the source SavedModel; '
                'choose another destination'
            )
    return planned + assets


def _copier(
    request: ExportRequest,
) -> Callable[[list[CopyItem], str], dict[str, FileEntry]] | None:
    """The Beam fan-out of the local copy when the Beam args ask for one; else the store's own."""
    if not beam_requested(request.beam_pipeline_args):
        return None
    from final_exporter.storage.beam_copy import copy_and_hash_beam

    method = request.config.copy_method
    return lambda items, dest: copy_and_hash_beam(
        items, dest, request.beam_pipeline_args, method=method
    )


def _build(
    store: Store,
    staging: Staging,
    source: SavedModelInfo,
    config: ExportConfig,
    items: list[CopyItem],
    request: ExportRequest,
    progress: Progress,
    workers: int | None,
    run_checks: Callable[[], None],
) -> tuple[dict[str, FileEntry], tuple[str, ...]]:
    """Fills the staging area and runs the serving checks on it; returns its files' entries
    and signature names.

    The checks load `staging.local_dir`, the export as it will be served. A copied
    model is checked as soon as its bytes are in place, while they are still being
    hashed; one that TensorFlow rewrites, once it has.
    """
    rewritten = bool(config.serving_fn or config.as_text)
    if config.serving_fn:
        from final_exporter.core import tf_export  # TensorFlow only when needed.

        tf_export.reexport(source.path, staging.local_dir, config.serving_fn)
    staged = store.stage(
        staging,
        items,
        method=config.copy_method,
        workers=workers,
        progress=progress,
        keep_local=_needs_local_tree(config, request, items),
        copier=_copier(request),
        meanwhile=_import_tensorflow if config.smoke_test or request.examples_uri else None,
        when_complete=None if rewritten else run_checks,
    )
    if not rewritten:
        return staged, source.signature_names
    from final_exporter.core import tf_export  # TensorFlow only when needed.

    local = staging.local_dir
    if config.serving_fn and config.as_text:
        tf_export.convert_in_place_to_pbtxt(local)
    elif config.as_text:
        tf_export.write_pbtxt(
            os.path.join(source.path, keys.SAVED_MODEL_PB),
            os.path.join(local, keys.SAVED_MODEL_PBTXT),
        )
    signatures = tf_export.check_loads(local)
    # Stage only what TensorFlow wrote; the copy already hashed the rest.
    written = sorted(set(store_for(local).list_files(local)) - set(staged))
    staged.update(store.stage_local_files(staging, written))
    run_checks()
    return staged, signatures


def _needs_local_tree(config: ExportConfig, request: ExportRequest, items: list[CopyItem]) -> bool:
    """Whether TensorFlow or a serving check reads the staged export."""
    return bool(
        config.smoke_test
        or request.examples_uri
        or config.serving_fn
        or config.as_text
        or any(i.dest == WARMUP_RELPATH for i in items)
    )
