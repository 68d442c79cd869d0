"""The copy-and-hash fan-out as an Apache Beam pipeline, for models that outgrow one machine.

The elements are files and chunks of large files, as in the threaded path
(`transfer.copy_and_hash`, whose functions the workers run): a file under
`split_min_bytes` is one element that a worker copies while hashing it; a
larger file becomes one element per manifest chunk (`manifest.CHUNK_BYTES`)
that copies that chunk into the file the driver created and hashes it, so its
manifest entry (format 2: the digest of its chunks' digests) is built from
the workers' chunk digests, and no worker reads the whole file. The entries
and chunk digests come back to the driver through a results folder beside the
staging folder, which must therefore be on storage every worker can reach
(the case for Dataflow, Flink or Spark with a shared filesystem). The driver
then checks each split source is unchanged and each copy complete.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence

from final_exporter.storage.filecopy import (
    copy_file,
    copy_piece,
    create_dest,
    finish_split,
    is_split,
    make_dest_folders,
    split_pieces,
)
from final_exporter.storage.manifest import entry_from_chunks
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER, TransferConfig
from final_exporter.storage.types import CopyItem, FileEntry, StageRequest

logger = logging.getLogger(__name__)

# Element kinds: (kind, src, dest, size, offset, length).
_FILE, _PIECE = 'file', 'piece'
Element = tuple[str, str, str, int, int, int]


def copy_and_hash_beam(
    items: Iterable[CopyItem],
    dest_root: str,
    beam_pipeline_args: Sequence[str],
    *,
    config: TransferConfig = DEFAULT_TRANSFER,
) -> dict[str, FileEntry]:
    """Like `transfer.copy_and_hash`, with files and pieces fanned out by a Beam pipeline.

    Args:
        items: The files to copy.
        dest_root: The staging folder.
        beam_pipeline_args: Beam options, e.g. `--runner=DirectRunner
            --direct_running_mode=multi_processing --direct_num_workers=2`.
        config: The copy method; files of `split_min_bytes` or more are copied in
            manifest chunks (not with `hardlink`, which copies nothing).

    Returns:
        {destination path: FileEntry}, the same as the threaded path gives.

    Raises:
        IntegrityError: if a source file changed while it was copied.
    """
    items = list(items)
    make_dest_folders(items, dest_root)
    elements, split = _elements(items, dest_root, config)
    logger.info(
        'Copying %s files (%s elements) with Beam (%s).',
        len(items), len(elements), ' '.join(beam_pipeline_args),
    )  # fmt: skip
    entries, chunks = _run_pipeline(elements, dest_root, beam_pipeline_args, config)
    for dest, (item, before) in split.items():
        digests = [chunks.get((dest, offset)) for offset, _ in split_pieces(before.st_size)]
        if None in digests:
            break  # Reported below as a file without an entry.
        entry = entry_from_chunks(dest, before.st_size, digests)
        entries[dest] = finish_split(item, os.path.join(dest_root, dest), before, entry)
    missing = sorted({i.dest for i in items} - set(entries))
    if missing:
        raise RuntimeError(f'the Beam copy returned no entry for {missing[:5]}')
    return entries


def _elements(
    items: Sequence[CopyItem], dest_root: str, config: TransferConfig
) -> tuple[list[Element], dict[str, tuple[CopyItem, os.stat_result]]]:
    """The pipeline's elements, and the split files with their sources' stat before the copy."""
    elements: list[Element] = []
    split: dict[str, tuple[CopyItem, os.stat_result]] = {}
    for item in items:
        if is_split(item, config):
            # The driver creates the file; the chunk elements write into it.
            before = os.stat(item.src)
            create_dest(os.path.join(dest_root, item.dest), before.st_size, config)
            split[item.dest] = (item, before)
            for offset, length in split_pieces(before.st_size):
                elements.append((_PIECE, item.src, item.dest, before.st_size, offset, length))
        else:
            elements.append((_FILE, item.src, item.dest, item.size, 0, item.size))
    return elements, split


def _run_pipeline(
    elements: list[Element], dest_root: str, args: Sequence[str], config: TransferConfig
) -> tuple[dict[str, FileEntry], dict[tuple[str, int], bytes]]:
    """Runs the elements on Beam: the whole files' entries and the chunks' digests
    ({(destination, offset): digest}), back through a results folder."""
    import apache_beam as beam

    results_dir = f'{dest_root.rstrip("/")}.beam-results'
    os.makedirs(results_dir)
    try:
        with beam.Pipeline(argv=list(args)) as pipeline:
            _ = (
                pipeline
                | 'FilesAndPieces' >> beam.Create(elements)
                | 'Spread' >> beam.Reshuffle()
                | 'CopyAndHash' >> beam.FlatMap(_run_element, dest_root=dest_root, config=config)
                | 'Write' >> beam.io.WriteToText(os.path.join(results_dir, 'entries'))
            )
        entries, chunks = {}, {}
        for path in glob.glob(os.path.join(results_dir, 'entries*')):
            with open(path, encoding='utf-8') as f:
                for line in f:
                    record = json.loads(line)
                    if 'chunk' in record:
                        chunks[record['path'], record['offset']] = bytes.fromhex(record['chunk'])
                    else:
                        entry = FileEntry(**record)
                        entries[entry.path] = entry
    finally:
        shutil.rmtree(results_dir, ignore_errors=True)
    return entries, chunks


def _run_element(element: Element, dest_root: str, config: TransferConfig) -> list[str]:
    """Copies a file (its entry) or one chunk of a split file (the chunk's digest)."""
    kind, src, dest, size, offset, length = element
    item = CopyItem(src, dest, size)
    if kind == _PIECE:
        # A retried chunk rewrites the same range of the same file: idempotent.
        digest = copy_piece(item, os.path.join(dest_root, dest), (offset, length), config)
        return [json.dumps({'path': dest, 'offset': offset, 'chunk': digest.hex()})]
    entry = copy_file(item, dest_root, config=config, replace=True)
    return [json.dumps(entry.as_dict())]


class BeamCopier:
    """The Beam fan-out as a local store's copier (`types.Copier`).

    Args:
        beam_pipeline_args: The Beam options (a runner, or direct-runner parallelism).
        config: The copy method and piece sizes.
    """

    def __init__(
        self, beam_pipeline_args: Sequence[str], config: TransferConfig = DEFAULT_TRANSFER
    ) -> None:
        self.beam_pipeline_args = tuple(beam_pipeline_args)
        self.config = config

    def copy(self, request: StageRequest, dest_root: str) -> dict[str, FileEntry]:
        """Runs `meanwhile` first (Beam's workers may import), the pipeline, then
        `when_complete`. The workers count no progress: they may run in other
        processes or on other hosts."""
        if request.meanwhile is not None:
            request.meanwhile()
        entries = copy_and_hash_beam(
            request.items, dest_root, self.beam_pipeline_args, config=self.config
        )
        if request.when_complete is not None:
            request.when_complete()
        return entries
