"""The prediction-parity comparison as an Apache Beam pipeline, for samples that outgrow one machine.

Each element is one batch of serialized examples with the index of its first
example. A worker loads the source model and the export once per DoFn instance
(`setup`), runs each batch through both (`parity.BatchComparer`, the same
code as the in-process path) and emits the batch's summary; the summaries are
merged by a CombineFn (`parity.merge_summaries`). The merged summary comes
back to the driver through a results folder beside the export, which must
therefore be on storage every worker can reach, as must both model folders (as
for `beam_copy`).
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam

from final_exporter.checks import parity
from final_exporter.common.errors import InvalidInputError

logger = logging.getLogger(__name__)

# A worker's traceback names the error class by its full module path.
_INVALID_INPUT_IN_TRACEBACK = re.compile(
    re.escape(f'{InvalidInputError.__module__}.{InvalidInputError.__qualname__}') + ': (.+)'
)
_BEAM_STEP_SUFFIX = re.compile(r" \[while running '[^']*'\]$")


def _strip_step(message: str) -> str:
    """The error message without the step name Beam appends."""
    return _BEAM_STEP_SUFFIX.sub('', message.strip())


class _CompareBatches(beam.DoFn):
    """Compares batches; loads both models once per DoFn instance."""

    def __init__(self, spec: parity.ParitySpec) -> None:
        self._spec = spec
        self._comparer: parity.BatchComparer | None = None

    def setup(self) -> None:
        self._comparer = parity.BatchComparer(self._spec)

    def process(self, element: tuple[int, list[bytes]]):
        offset, batch = element
        yield self._comparer.compare(offset, batch)


class _MergeSummaries(beam.CombineFn):
    def create_accumulator(self) -> dict[str, Any]:
        return parity.empty_summary()

    def add_input(self, accumulator: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        return parity.merge_summaries(accumulator, summary)

    def merge_accumulators(self, accumulators) -> dict[str, Any]:
        merged = parity.empty_summary()
        for accumulator in accumulators:
            merged = parity.merge_summaries(merged, accumulator)
        return merged

    def extract_output(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator


def compare_with_beam(
    spec: parity.ParitySpec,
    batches: Sequence[tuple[int, list[bytes]]],
    beam_pipeline_args: Sequence[str],
) -> dict[str, Any]:
    """Runs the batch comparison as a Beam pipeline and returns the merged summary.

    Args:
        spec: What to compare.
        batches: (index of the first example, serialized examples) per element.
        beam_pipeline_args: Beam options, e.g. `--runner=DirectRunner
            --direct_running_mode=multi_processing --direct_num_workers=2`.

    Returns:
        The merged summary, as `parity.merge_summaries` builds it.
    """
    results_dir = f'{spec.export_dir.rstrip("/")}.parity-{uuid.uuid4().hex}'
    os.makedirs(results_dir)
    try:
        logger.info(
            'Comparing %s batches with Beam (%s).', len(batches), ' '.join(beam_pipeline_args)
        )
        try:
            with beam.Pipeline(argv=list(beam_pipeline_args)) as pipeline:
                _ = (
                    pipeline
                    | 'Batches' >> beam.Create(list(batches))
                    | 'Spread' >> beam.Reshuffle()
                    | 'Compare' >> beam.ParDo(_CompareBatches(spec))
                    | 'Merge' >> beam.CombineGlobally(_MergeSummaries())
                    | 'Encode' >> beam.Map(json.dumps, sort_keys=True)
                    | 'Write' >> beam.io.WriteToText(os.path.join(results_dir, 'summary'))
                )
        except InvalidInputError as e:
            raise InvalidInputError(_strip_step(str(e))) from None
        except Exception as e:
            # Runners with worker processes report a worker's error as text.
            found = _INVALID_INPUT_IN_TRACEBACK.findall(str(e))
            if found:
                raise InvalidInputError(_strip_step(found[-1])) from None
            raise
        lines = []
        for path in sorted(glob.glob(os.path.join(results_dir, 'summary*'))):
            with open(path, encoding='utf-8') as f:
                lines.extend(line for line in f if line.strip())
    finally:
        shutil.rmtree(results_dir, ignore_errors=True)
    if len(lines) != 1:
        raise RuntimeError(f'the Beam parity pipeline returned {len(lines)} summaries, expected 1')
    return json.loads(lines[0])


def beam_comparer(
    beam_pipeline_args: Sequence[str],
) -> Callable[[parity.ParitySpec, Sequence[tuple[int, list[bytes]]]], dict[str, Any]]:
    """A `compare_batches` for `parity.prediction_parity` that runs on Beam."""
    return functools.partial(compare_with_beam, beam_pipeline_args=list(beam_pipeline_args))
