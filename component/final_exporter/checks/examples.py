"""Real inputs for the serving checks: serialized examples from a TFX `Examples` artifact."""

from __future__ import annotations

import glob
import logging
import os

from final_exporter.checks.signatures import first_line
from final_exporter.common.errors import InvalidInputError

logger = logging.getLogger(__name__)


def read_examples(examples_uri: str, split: str = 'eval', limit: int = 100) -> list[bytes]:
    """Reads serialized examples from a TFX `Examples` artifact folder.

    Files are read in name order from `<examples_uri>/Split-<split>/`; `*.gz` files as
    GZIP TFRecord (what ExampleGen writes), other files as uncompressed TFRecord. The
    first `limit` records are returned, so the same artifact always gives the same
    sample.

    Args:
        examples_uri: The artifact folder (holding `Split-train/`, `Split-eval/`, ...).
        split: The split to read.
        limit: The most records to return (at least 1).

    Returns:
        Up to `limit` serialized records (tf.Example or tf.SequenceExample).

    Raises:
        InvalidInputError: if the folder or split is missing or empty, or a file is
            not a readable TFRecord file.
    """
    import tensorflow as tf

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f'examples limit must be a positive integer, got {limit!r}')
    if not os.path.isdir(examples_uri):
        raise InvalidInputError(
            f'examples artifact folder {examples_uri!r} does not exist; expected the URI of '
            'an Examples artifact (a folder holding Split-<name>/ folders)'
        )
    split_dir = os.path.join(examples_uri, f'Split-{split}')
    if not os.path.isdir(split_dir):
        found = sorted(
            n.removeprefix('Split-') for n in os.listdir(examples_uri) if n.startswith('Split-')
        )
        raise InvalidInputError(
            f'examples artifact {examples_uri!r} has no split {split!r} '
            f'(no Split-{split}/ folder); it has splits {found}'
        )
    files = sorted(
        p for p in glob.glob(os.path.join(split_dir, '*')) if os.path.isfile(p)
    )  # glob skips dot files (partial writes, checksums).
    if not files:
        raise InvalidInputError(f'examples split folder {split_dir!r} holds no files')
    records: list[bytes] = []
    for path in files:
        compression = 'GZIP' if path.endswith('.gz') else ''
        try:
            for record in tf.data.TFRecordDataset(path, compression_type=compression).take(
                limit - len(records)
            ):
                records.append(record.numpy())
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            kind = 'GZIP TFRecord' if compression else 'uncompressed TFRecord'
            raise InvalidInputError(
                f'examples file {path!r} is not a readable {kind} file: {first_line(e)}'
            ) from None
        if len(records) >= limit:
            break
    if not records:
        raise InvalidInputError(f'examples split folder {split_dir!r} holds no records')
    logger.info('Read %s examples from %s.', len(records), split_dir)
    return records
