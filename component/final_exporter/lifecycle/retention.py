"""Retention: keep the newest N complete versions of a model, as the estimator's LatestExporter did.

Policy (`apply_retention`):

* Only *complete* versions count and are removed: numeric folders holding
  `assets.extra/export_manifest.json` (`model_config.complete_versions`). A numeric
  folder without a manifest was not made by this package (or is being written by
  hand) and is left alone, as are non-numeric entries (staging folders, the model
  config, anything else), numeric files and symlinks.
* The `keep` newest complete versions stay. Of the older ones, these stay too:
  the version this run just published, the versions in `protect`, and every
  version the model config (`models.config`) labels or tells the server to load.
  The rest are removed, oldest first.
* A version is removed in two steps: one atomic `rename` to a hidden, non-numeric
  name (`.final-exporter-trash-<version>-<uuid>`), which TensorFlow Serving never
  loads and unloads the version from, then the deletion of that folder. A server
  polling the model base sees the whole version or nothing, never a half-deleted
  one. Trash left by a run that died is deleted by the next run.
* The choice and the renames happen holding the model config lock, so a label set
  concurrently (`model_config.set_label`, same lock) can never point to a version
  being removed, and two exporters' retention runs do not interleave. A version
  another run removed first is skipped, never an error.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Collection

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.fs import fsync_dir
from final_exporter.lifecycle.model_config import complete_versions, locked, pinned_versions

logger = logging.getLogger(__name__)

TRASH_PREFIX = '.final-exporter-trash-'
RETENTION_LINEAGE_KEY = keys.RETENTION_LINEAGE_KEY


def apply_retention(
    model_base: str,
    keep: int,
    *,
    protect: Collection[int] = (),
    just_published: int,
) -> list[int]:
    """Removes the oldest complete versions beyond the newest `keep`.

    Args:
        model_base: `<export_base>/<name>`, the folder holding the versions.
        keep: How many of the newest complete versions to keep (at least 1).
        protect: Versions never to remove (e.g. labelled elsewhere).
        just_published: The version this run published; never removed.

    Returns:
        The versions this call removed, ascending.

    Raises:
        InvalidInputError: for a bad `keep`, a missing `model_base`, or an unreadable
            model config file (nothing is removed: the pinned versions are unknown).
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInputError(
            f'exports_to_keep must be an integer >= 1 (the newest versions kept), got {keep!r}'
        )
    if not os.path.isdir(model_base):
        raise InvalidInputError(f'model base folder {model_base!r} does not exist')
    _empty_trash(model_base)
    trashed: list[tuple[int, str]] = []
    with locked(model_base):
        complete = complete_versions(model_base)
        kept = set(complete[-keep:]) | {just_published} | set(protect)
        kept |= pinned_versions(model_base)
        for version in complete:
            if version in kept:
                continue
            trash = os.path.join(model_base, f'{TRASH_PREFIX}{version}-{uuid.uuid4().hex}')
            try:
                os.rename(os.path.join(model_base, str(version)), trash)
            except FileNotFoundError:
                logger.info('Version %s was already removed by another run.', version)
                continue
            trashed.append((version, trash))
        if trashed:
            fsync_dir(model_base)
    for version, trash in trashed:
        _remove_tree(trash)
        logger.info('Removed version %s of %s (keeping the newest %s).', version, model_base, keep)
    return [version for version, _ in trashed]


def _empty_trash(model_base: str) -> None:
    """Deletes trash left by earlier runs (one may be deleting it right now: harmless)."""
    for name in os.listdir(model_base):
        if name.startswith(TRASH_PREFIX):
            _remove_tree(os.path.join(model_base, name))


def _remove_tree(path: str) -> None:
    def on_error(function, failed_path, exc_info) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):  # Another run got there first.
            logger.warning('Could not remove %s: %s', failed_path, exc_info[1])

    shutil.rmtree(path, onerror=on_error)
