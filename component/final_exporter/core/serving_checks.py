"""The serving checks step: smoke test, prediction parity and warmup requests on the staged export.

TensorFlow (and Beam) are imported only when an export asks for a check, so a
plain-copy export starts without them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.keys import WARMUP_RELPATH
from final_exporter.core.config import ExportConfig
from final_exporter.core.request import ExportRequest

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


def serving_checks(
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
    from final_exporter.checks.examples import read_examples  # TensorFlow only when needed.
    from final_exporter.checks.smoke import smoke_test

    checks: dict[str, Any] = {}
    examples = None
    if request.examples_uri:
        limit = max(config.parity_sample_size, config.warmup_requests, SMOKE_EXAMPLES)
        examples = read_examples(request.examples_uri, config.examples_split, limit)
    input_name = None
    if config.smoke_test:
        smoke = smoke_test(
            model_dir, config.signature_name, examples[:SMOKE_EXAMPLES] if examples else None
        )
        input_name = smoke.example_input
        checks.update(smoke.to_lineage())
    if examples and (config.serving_fn or config.as_text) and config.parity_sample_size:
        checks.update(_parity(model_dir, source_dir, config, request, examples))
    if os.path.exists(supplied):
        checks.update(_supplied_warmup(model_dir, supplied, config))
    elif config.warmup_requests:
        checks.update(_written_warmup(model_dir, warmup_path, config, examples, input_name))
    return checks


def _parity(
    model_dir: str,
    source_dir: str,
    config: ExportConfig,
    request: ExportRequest,
    examples: list[bytes],
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
    )
    require_parity(parity)
    return parity.to_lineage()


def _supplied_warmup(model_dir: str, supplied: str, config: ExportConfig) -> dict[str, Any]:
    """Validates the warmup file the model or `assets_extra` brought (and replays it)."""
    from final_exporter.checks import warmup
    from final_exporter.checks.signatures import load_export

    loaded = load_export(model_dir)
    count = warmup.validate_warmup_requests(supplied, list(loaded.signatures.keys()))
    if config.smoke_test:
        warmup.replay_warmup_requests(model_dir, supplied)
    return {keys.WARMUP_LINEAGE_KEY: {'count': count, 'source': 'supplied'}}


def _written_warmup(
    model_dir: str,
    warmup_path: str,
    config: ExportConfig,
    examples: list[bytes] | None,
    input_name: str | None,
) -> dict[str, Any]:
    """Writes warmup requests from the examples to `warmup_path`."""
    from final_exporter.checks import warmup
    from final_exporter.checks.signatures import example_input_name, get_signature, load_export

    if input_name is None:
        signature = get_signature(load_export(model_dir), config.signature_name, model_dir)
        input_name = example_input_name(signature)
    count = warmup.write_warmup_requests(
        warmup_path,
        examples[: config.warmup_requests],
        config.signature_name,
        model_name=config.name,
        input_name=input_name,
    )
    return {keys.WARMUP_LINEAGE_KEY: {'count': count, 'source': 'written'}}
