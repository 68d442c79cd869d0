"""The copy-and-hash fan-out as an Apache Beam pipeline, for models that outgrow one machine.

The elements are files and pieces of large files, as in the threaded path
(`transfer.copy_and_hash`, whose functions the workers run): a file under
`split_min_bytes` is one element that a worker copies while hashing it; a
larger file becomes one element that hashes it whole (SHA-256 is one
sequential pass) and one element per `piece_bytes` range that copies that
range into the file the driver created. The manifest entries come back to the
driver through a results folder beside the staging folder, which must
therefore be on storage every worker can reach (the case for Dataflow, Flink
or Spark with a shared filesystem). The driver then checks each split source
is unchanged and each copy complete, and copies the files in `last` itself, so
`saved_model.pb` still comes last.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence

from final_exporter.storage.manifest import FileEntry
from final_exporter.storage.transfer import (
    PUBLISH_LAST,
    SPLIT_CHUNK_BYTES,
    SPLIT_MIN_BYTES,
    CopyItem,
    check_method,
    copy_and_hash,
    copy_file,
    copy_piece,
    finish_split,
    hash_only,
    is_split,
    make_dest_folders,
    split_pieces,
)

logger = logging.getLogger(__name__)

# Element kinds: (kind, src, dest, size, offset, length).
_FILE, _HASH, _PIECE = 'file', 'hash', 'piece'


def copy_and_hash_beam(
    items: Iterable[CopyItem],
    dest_root: str,
    beam_pipeline_args: Sequence[str],
    *,
    method: str,
    last: Sequence[str] = PUBLISH_LAST,
    split_min_bytes: int = SPLIT_MIN_BYTES,
    piece_bytes: int = SPLIT_CHUNK_BYTES,
) -> dict[str, FileEntry]:
    """Like `transfer.copy_and_hash`, with files and pieces fanned out by a Beam pipeline.

    Args:
        items: The files to copy.
        dest_root: The staging folder.
        beam_pipeline_args: Beam options, e.g. `--runner=DirectRunner
            --direct_running_mode=multi_processing --direct_num_workers=2`.
        method: As for `transfer.copy_and_hash`.
        last: Destinations the driver copies after the pipeline.
        split_min_bytes: Files of this size or more are copied in pieces
            (not with `hardlink`, which copies nothing).
        piece_bytes: The size of those pieces.

    Returns:
        {destination path: FileEntry}, the same as the threaded path gives.

    Raises:
        IntegrityError: if a source file changed while it was copied.
    """
    import apache_beam as beam

    check_method(method)
    items = list(items)
    make_dest_folders(items, dest_root)
    fan_out = [i for i in items if i.dest not in last]
    elements: list[tuple[str, str, str, int, int, int]] = []
    split: dict[str, tuple[CopyItem, os.stat_result]] = {}
    for item in fan_out:
        if is_split(item, method, split_min_bytes):
            # The driver creates the file; the piece elements write into it.
            with open(os.path.join(dest_root, item.dest), 'xb'):
                pass
            split[item.dest] = (item, os.stat(item.src))
            elements.append((_HASH, item.src, item.dest, item.size, 0, item.size))
            for offset, length in split_pieces(item.size, piece_bytes):
                elements.append((_PIECE, item.src, item.dest, item.size, offset, length))
        else:
            elements.append((_FILE, item.src, item.dest, item.size, 0, item.size))
    results_dir = f'{dest_root.rstrip("/")}.beam-results'
    os.makedirs(results_dir)
    try:
        logger.info(
            'Copying %s files (%s elements) with Beam (%s).',
            len(fan_out), len(elements), ' '.join(beam_pipeline_args),
        )  # fmt: skip
        with beam.Pipeline(argv=list(beam_pipeline_args)) as pipeline:
            _ = (
                pipeline
                | 'FilesAndPieces' >> beam.Create(elements)
                | 'Spread' >> beam.Reshuffle()
                | 'CopyAndHash' >> beam.FlatMap(_run_element, dest_root=dest_root, method=method)
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
    for dest, (item, before) in split.items():
        finish_split(item, os.path.join(dest_root, dest), before, entries[dest])
    entries.update(
        copy_and_hash([i for i in items if i.dest in last], dest_root, method=method, last=())
    )
    return entries


def _run_element(
    element: tuple[str, str, str, int, int, int], dest_root: str, method: str
) -> list[str]:
    """Copies a file (its entry), hashes a split file (its entry) or copies a piece (nothing)."""
    kind, src, dest, size, offset, length = element
    item = CopyItem(src, dest, size)
    if kind == _PIECE:
        # A retried piece rewrites the same range of the same file: idempotent.
        copy_piece(item, os.path.join(dest_root, dest), offset, length)
        return []
    if kind == _HASH:
        entry = hash_only(item, method)
    else:
        entry = copy_file(item, dest_root, method=method, replace=True)
    return [json.dumps(entry.as_dict())]
