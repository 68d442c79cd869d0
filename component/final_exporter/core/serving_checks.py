"""The serving checks step: smoke test, prediction parity and warmup requests, and which
model they load.

Which model the checks load is decided here, once (`ChecksStep`):

- When the export's SavedModel is a byte copy of a local source (no `serving_fn`,
  no `as_text`, copied rather than hard-linked), the checks load the *source*
  while the copy runs: TensorFlow's import and `tf.saved_model.load` in the
  exporter's own thread, the copy's threads beside it. The load reads the
  source from the page cache the copy reads it through, instead of waiting for
  the copy and then reading the staged copy. What was loaded is tied to what is
  published: every source file is stat'ed before the copy's first read, and
  must be the same file, unchanged (`storage.filestate`), after the copy and
  the checks; the published digests are those of the bytes copied.
- Otherwise they load the staged export once its bytes are in place: TensorFlow
  rewrote it (`serving_fn`, `as_text`), the source is in a bucket (the local
  view then holds the bytes downloaded for hashing, so the loaded bytes are the
  hashed ones), or the export hard-links the source's files.

TensorFlow (and Beam) are imported only when an export asks for a check, so a
plain-copy export starts without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from final_exporter.checks import tf_import
from final_exporter.common import keys
from final_exporter.common.keys import WARMUP_RELPATH
from final_exporter.core.config import ExportConfig
from final_exporter.core.plan import Plan, rewrites
from final_exporter.core.request import ExportRequest
from final_exporter.storage.filestate import FileState, require_unchanged, snapshot
from final_exporter.storage.types import COPY_HARDLINK

# Rows fed to the smoke test: enough to show the batch dimension, quick to run.
SMOKE_EXAMPLES = 16
# Flags that ask Beam for a runner or for parallelism. TFX hands every Beam component
# its dependency flags (and the KFP v2 entrypoint its leftover arguments), which alone
# are no reason to start a Beam pipeline for a copy a thread pool does faster.
_BEAM_RUNNER_FLAGS = ('--runner', '--direct_running_mode', '--direct_num_workers')


def beam_requested(beam_pipeline_args: Sequence[str]) -> bool:
    """True when the Beam args name a runner or direct-runner parallelism."""
    return any(a.startswith(_BEAM_RUNNER_FLAGS) for a in beam_pipeline_args)


def wants_checks(config: ExportConfig, request: ExportRequest) -> bool:
    """Whether the checks will load the export (and so need TensorFlow)."""
    return bool(config.smoke_test or request.examples_uri)


def import_tensorflow() -> None:
    """Imports TensorFlow for the checks (`checks.tf_import`: without Keras); the copy
    calls it while its threads copy.

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
        tf_import.import_tensorflow()


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model loaded already, whose SavedModel bytes are the export's, and its folder."""

    model: Any
    folder: str


# The ends of the window in which a source the checks load must not change (`ChecksStep`).
BEFORE_COPY, AFTER_CHECKS = 'before_copy', 'after_checks'
# What the source's files stay unchanged for when the checks load the source.
_SOURCE_WINDOW = (
    'between the start of the copy and the end of the serving checks, which loaded it '
    'while it was copied'
)


class ChecksStep:
    """The serving checks of one export, run beside its copy (see the module docstring).

    The staging step calls `begin` before the copy, passes `meanwhile` and `run`
    to the store as the copy's `meanwhile` and `when_complete` (or calls `run`
    itself once TensorFlow has rewritten the export), then reads `results`.

    Args:
        config: The export's settings.
        request: The export's inputs (examples, Beam args).
        plan: What is exported, from where.
        model_dir: The staged export's local view (`Staging.local_dir`).
        hook: Called with `BEFORE_COPY` once the source files are stat'ed (the
            copy has not read them yet) and with `AFTER_CHECKS` once the checks
            on the loaded source have run, just before its files are checked
            unchanged: the two ends of the window, for tests to change a source
            file in.
    """

    def __init__(
        self,
        config: ExportConfig,
        request: ExportRequest,
        plan: Plan,
        model_dir: str,
        *,
        hook: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.request, self.model_dir = config, request, model_dir
        self.warmup_path = os.path.join(model_dir, *WARMUP_RELPATH.split('/'))
        self.wanted = wants_checks(config, request)
        source = plan.source_store.local_path(plan.source.path)
        self.source_dir = source or plan.source.path
        self.loads_source = bool(
            self.wanted
            and source is not None
            and not rewrites(config)
            and config.copy_method != COPY_HARDLINK
        )
        # The SavedModel's own files: what TensorFlow reads (assets_extra is not loaded).
        self._files = [i.src for i in plan.items if i not in plan.assets]
        self._hook = hook or (lambda moment: None)
        self._before: dict[str, FileState] = {}
        self._loaded: Loaded | None = None
        self._load_error: Exception | None = None
        self.results: dict[str, Any] = {}

    def begin(self) -> None:
        """Before the copy's first read: the source files as they are."""
        if self.loads_source:
            self._before = snapshot(self._files)
            self._hook(BEFORE_COPY)

    def meanwhile(self) -> None:
        """While the copy runs, in the exporter's own thread: TensorFlow's import and, when
        the checks load the source, its load (a failure is kept for `run`)."""
        import_tensorflow()
        if self.loads_source:
            from final_exporter.checks.signatures import load_export

            try:
                self._loaded = Loaded(load_export(self.source_dir), self.source_dir)
            except Exception as e:  # Reported by `run`, after the copy's own errors.
                self._load_error = e

    def run(self) -> None:
        """Once the export's bytes are in place: the checks, on the model loaded meanwhile
        or on the staged export; then, for the source, that it did not change."""
        try:
            if not self.loads_source:
                self.results = serving_checks(
                    self.model_dir, self.source_dir, self.config, self.request, self.warmup_path
                )
                return
            try:
                if self._load_error is not None:
                    raise self._load_error
                self.results = serving_checks(
                    self.model_dir,
                    self.source_dir,
                    self.config,
                    self.request,
                    self.warmup_path,
                    loaded=self._loaded,
                )
            except Exception:
                # A source that changed under the load explains its failure best.
                require_unchanged(self._before, _SOURCE_WINDOW)
                raise
            self._hook(AFTER_CHECKS)
            require_unchanged(self._before, _SOURCE_WINDOW)
        finally:
            self._loaded = None  # The checks are done: the model's memory goes.


def serving_checks(
    model_dir: str,
    source_dir: str,
    config: ExportConfig,
    request: ExportRequest,
    warmup_path: str,
    loaded: Loaded | None = None,
) -> dict[str, Any]:
    """Smoke test, prediction parity and warmup requests; returns their lineage.

    `model_dir` is the staged export (or the local bytes an object-store export
    uploads). A warmup file is written to `warmup_path` when asked for. With
    `loaded`, the smoke test and the warmup requests use that model, whose
    SavedModel bytes are the export's, instead of loading `model_dir`.

    Raises:
        InvalidInputError: if the model does not load or answer, its predictions
            differ from the source model's, or a supplied warmup file is invalid.
    """
    supplied = os.path.join(model_dir, *WARMUP_RELPATH.split('/'))
    if not (config.smoke_test or request.examples_uri or os.path.exists(supplied)):
        return {}
    from final_exporter.checks.examples import read_examples  # TensorFlow only when needed.
    from final_exporter.checks.smoke import smoke_test_loaded

    checks: dict[str, Any] = {}
    examples = None
    if request.examples_uri:
        limit = max(config.parity_sample_size, config.warmup_requests, SMOKE_EXAMPLES)
        examples = read_examples(request.examples_uri, config.examples_split, limit)
    input_name = None

    def get_loaded() -> Loaded:  # The staged export, loaded once, when a check needs it.
        nonlocal loaded
        if loaded is None:
            from final_exporter.checks.signatures import load_export

            loaded = Loaded(load_export(model_dir), model_dir)
        return loaded

    if config.smoke_test:
        model = get_loaded()
        smoke = smoke_test_loaded(
            model.model,
            model.folder,
            config.signature_name,
            examples[:SMOKE_EXAMPLES] if examples else None,
        )
        input_name = smoke.example_input
        checks.update(smoke.to_lineage())
    if examples and rewrites(config) and config.parity_sample_size:
        # The rewritten export against its source: the export side is the staged one,
        # loaded once for the smoke test and parity both.
        export = loaded.model if loaded is not None else None
        checks.update(_parity(model_dir, source_dir, config, request, examples, export))
    if os.path.exists(supplied):
        checks.update(_supplied_warmup(get_loaded(), model_dir, supplied, config))
    elif config.warmup_requests:
        checks.update(_written_warmup(get_loaded, warmup_path, config, examples, input_name))
    return checks


def _parity(
    model_dir: str,
    source_dir: str,
    config: ExportConfig,
    request: ExportRequest,
    examples: list[bytes],
    export_model: Any = None,
) -> dict[str, Any]:
    """Prediction parity of a rewritten export with its source; refuses a mismatch."""
    from final_exporter.checks.parity import prediction_parity, require_parity

    compare_batches = None
    if beam_requested(request.beam_pipeline_args):
        from final_exporter.checks.parity_beam import beam_comparer  # Beam only when asked.

        compare_batches = beam_comparer(request.beam_pipeline_args)
    parity = prediction_parity(
        source_dir,
        model_dir,
        examples[: config.parity_sample_size],
        config.signature_name,
        atol=config.parity_tolerance,
        rtol=config.parity_tolerance,
        compare_batches=compare_batches,
        export_model=export_model,
    )
    require_parity(parity)
    return parity.to_lineage()


def _supplied_warmup(
    loaded: Loaded, model_dir: str, supplied: str, config: ExportConfig
) -> dict[str, Any]:
    """Validates the warmup file the model or `assets_extra` brought (and replays it)."""
    from final_exporter.checks import warmup

    count = warmup.validate_warmup_requests(supplied, list(loaded.model.signatures.keys()))
    if config.smoke_test:
        warmup.replay_warmup_requests(model_dir, supplied, loaded=loaded.model)
    return {keys.WARMUP_LINEAGE_KEY: {'count': count, 'source': 'supplied'}}


def _written_warmup(
    get_loaded: Callable[[], Loaded],
    warmup_path: str,
    config: ExportConfig,
    examples: list[bytes] | None,
    input_name: str | None,
) -> dict[str, Any]:
    """Writes warmup requests from the examples to `warmup_path`."""
    from final_exporter.checks import warmup
    from final_exporter.checks.signatures import example_input_name, get_signature

    if input_name is None:
        model = get_loaded()
        input_name = example_input_name(
            get_signature(model.model, config.signature_name, model.folder)
        )
    count = warmup.write_warmup_requests(
        warmup_path,
        examples[: config.warmup_requests],
        config.signature_name,
        model_name=config.name,
        input_name=input_name,
    )
    return {keys.WARMUP_LINEAGE_KEY: {'count': count, 'source': 'written'}}
