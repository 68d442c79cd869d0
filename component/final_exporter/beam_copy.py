"""The copy-and-hash fan-out as an Apache Beam pipeline, for models that outgrow one machine.

Each file is one element: a worker copies it into the staging folder, hashing
it in the same read (`transfer.copy_file`, the same code as the threaded path),
and emits its manifest entry. The entries come back to the driver through a
results folder beside the staging folder, which must therefore be on storage
every worker can reach (the case for Dataflow, Flink or Spark with a shared
filesystem or, later, an object store). The files in `last` are copied by the
driver after the pipeline has finished, so `saved_model.pb` still comes last.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence

from final_exporter.manifest import FileEntry
from final_exporter.transfer import (
    PUBLISH_LAST,
    CopyItem,
    check_method,
    copy_and_hash,
    copy_file,
    make_dest_folders,
)

logger = logging.getLogger(__name__)


def copy_and_hash_beam(
    items: Iterable[CopyItem],
    dest_root: str,
    beam_pipeline_args: Sequence[str],
    *,
    method: str,
    last: Sequence[str] = PUBLISH_LAST,
) -> dict[str, FileEntry]:
    """Like `transfer.copy_and_hash`, with the files fanned out by a Beam pipeline.

    Args:
        items: The files to copy.
        dest_root: The staging folder.
        beam_pipeline_args: Beam options, e.g. `--runner=DirectRunner
            --direct_running_mode=multi_processing --direct_num_workers=2`.
        method: As for `transfer.copy_and_hash`.
        last: Destinations the driver copies after the pipeline.

    Returns:
        {destination path: FileEntry}, the same as the threaded path gives.
    """
    import apache_beam as beam

    check_method(method)
    items = list(items)
    make_dest_folders(items, dest_root)
    fan_out = [i for i in items if i.dest not in last]
    results_dir = f'{dest_root.rstrip("/")}.beam-results'
    os.makedirs(results_dir)
    try:
        logger.info('Copying %s files with Beam (%s).', len(fan_out), ' '.join(beam_pipeline_args))
        with beam.Pipeline(argv=list(beam_pipeline_args)) as pipeline:
            _ = (
                pipeline
                | 'Files' >> beam.Create([dataclasses.astuple(i) for i in fan_out])
                | 'Spread' >> beam.Reshuffle()
                | 'CopyAndHash' >> beam.Map(_copy_element, dest_root=dest_root, method=method)
                | 'Write' >> beam.io.WriteToText(os.path.join(results_dir, 'entries'))
            )
        entries = {}
        for path in glob.glob(os.path.join(results_dir, 'entries*')):
            with open(path, encoding='utf-8') as f:
                for line in f:
                    entry = FileEntry(**json.loads(line))
                    entries[entry.path] = entry
    finally:
        shutil.rmtree(results_dir, ignore_errors=True)
    missing = sorted({i.dest for i in fan_out} - set(entries))
    if missing:
        raise RuntimeError(f'the Beam copy returned no entry for {missing[:5]}')
    entries.update(
        copy_and_hash([i for i in items if i.dest in last], dest_root, method=method, last=())
    )
    return entries


def _copy_element(element: tuple[str, str, int], dest_root: str, method: str) -> str:
    entry = copy_file(CopyItem(*element), dest_root, method=method, replace=True)
    return json.dumps(dataclasses.asdict(entry))
