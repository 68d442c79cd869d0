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
* A version is removed by its store so that a server polling the model base never
  loads part of it: locally one atomic `rename` to a hidden, non-numeric trash
  name, then the deletion of that folder; on a bucket `saved_model.pb` first (a
  server then no longer loads what remains), then the rest.
* The choice and the removals happen holding the model config lock (a local
  `flock`, or a bucket's leased lock object), so a label set
  concurrently (`model_config.set_label`, same lock) can never point to a version
  being removed, and two exporters' retention runs do not interleave. A version
  another run removed first is skipped, never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from final_exporter.checks.savedmodel import GRAPH_FILES
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.lifecycle.model_config import complete_versions, locked, pinned_versions
from final_exporter.storage.base import ModelBase
from final_exporter.storage.stores import StoreOptions, resolve_model_base

logger = logging.getLogger(__name__)

RETENTION_LINEAGE_KEY = keys.RETENTION_LINEAGE_KEY


def apply_retention(
    model_base: str | ModelBase,
    keep: int,
    *,
    protect: Collection[int] = (),
    just_published: int,
) -> list[int]:
    """Removes the oldest complete versions beyond the newest `keep`.

    Args:
        model_base: `<export_base>/<name>`, the folder holding the versions (or
            its `ModelBase`, resolved already: then its store removes versions
            with the caller's `publish_last`).
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
    base = resolve_model_base(model_base, StoreOptions(publish_last=GRAPH_FILES))
    store = base.store
    if not store.children(base.path):
        raise InvalidInputError(f'model base {base.path!r} does not exist')
    store.finish_removals(base.path)
    removed: list[int] = []
    with locked(base):
        complete = complete_versions(base)
        kept = set(complete[-keep:]) | {just_published} | set(protect)
        kept |= pinned_versions(base)
        for version in complete:
            if version in kept:
                continue
            if not store.remove_version(base.path, version):
                logger.info('Version %s was already removed by another run.', version)
                continue
            removed.append(version)
            logger.info(
                'Removed version %s of %s (keeping the newest %s).', version, base.path, keep
            )
    return removed
