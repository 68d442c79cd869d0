"""Versions, staging folders and the atomic publish on a local filesystem.

A model server (TensorFlow Serving) polls `<export_base>/<name>/` and loads
any folder whose name is an integer. So an export is built in a staging folder
whose name is not a number (it starts with a dot), and becomes visible in one
step: a rename to `<version>/` that refuses to replace anything
(`renameat2(RENAME_NOREPLACE)` on Linux). If another exporter took that
version first, the next free version is tried; nothing is ever overwritten or
silently skipped.

Before the rename, every file and folder of the staging folder is flushed to
disk (`flush_tree`): a rename can reach the disk before the file data it
points at, and after a power loss or host crash a published version would
then hold empty or truncated files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable

from final_exporter.common.errors import InvalidInputError
from final_exporter.common.fs import flush_tree, fsync_dir, rename_no_replace
from final_exporter.storage.objectstore import is_object_store_uri
from final_exporter.storage.stores import store_for

logger = logging.getLogger(__name__)

STAGING_PREFIX = '.final-exporter-staging-'
# Each retry moves past a version another exporter published in the meantime;
# running out means something keeps creating numeric folders under us.
_MAX_PUBLISH_ATTEMPTS = 1000


def is_version_name(name: str) -> bool:
    """True for the folder names TensorFlow Serving loads: decimal integers."""
    return name.isascii() and name.isdigit()


def list_versions(model_base: str) -> list[int]:
    """The numeric versions under `model_base` (a folder or gs:// / s3:// prefix), ascending."""
    if is_object_store_uri(model_base):
        names = store_for(model_base).children(model_base)
        return sorted(int(n) for n in names if is_version_name(n))
    try:
        names = os.listdir(model_base)
    except FileNotFoundError:
        return []
    return sorted(
        int(n) for n in names if is_version_name(n) and os.path.isdir(os.path.join(model_base, n))
    )


def next_version(model_base: str, clock: Callable[[], float] = time.time) -> int:
    """The Unix time in seconds, or one more than the highest version if that is not larger.

    Numeric files count too: a version name is never reused for anything.
    """
    try:
        taken = [int(n) for n in os.listdir(model_base) if is_version_name(n)]
    except FileNotFoundError:
        taken = []
    now = int(clock())
    return max(now, max(taken) + 1) if taken else now


_LOCK_SUFFIX = '.lock'


def make_staging_dir(model_base: str) -> str:
    """Creates a fresh, uniquely named staging folder beside the versions.

    The folder is owned through an exclusive `flock` on `<staging>.lock`, taken
    before the folder exists and held until `remove_staging_dir` (or the
    process's death, when the kernel drops it). So a staging folder whose lock
    can be taken is provably abandoned (see `remove_abandoned_staging`).

    Raises:
        InvalidInputError: if `model_base` cannot be created or written to.
    """
    try:
        os.makedirs(model_base, exist_ok=True)
        path = os.path.join(model_base, f'{STAGING_PREFIX}{uuid.uuid4().hex}')
        fd = os.open(path + _LOCK_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held_locks[path] = fd
        # Not tempfile.mkdtemp: its 0700 mode would lock a model server running
        # as another user out of the published version; mkdir honours the umask.
        os.mkdir(path)
        return path
    except OSError as e:
        raise InvalidInputError(
            f'cannot write to the export folder {model_base!r}: {e.strerror or e}'
        ) from None


_held_locks: dict[str, int] = {}


def remove_staging_dir(staging_dir: str) -> None:
    """Removes a staging folder (if it was not published) and releases its lock."""
    shutil.rmtree(staging_dir, ignore_errors=True)
    _release(staging_dir)


def _release(staging_dir: str) -> None:
    fd = _held_locks.pop(staging_dir, None)
    with contextlib.suppress(FileNotFoundError):
        os.remove(staging_dir + _LOCK_SUFFIX)
    if fd is not None:
        os.close(fd)


def remove_abandoned_staging(model_base: str) -> list[str]:
    """Removes staging folders whose exporter is gone; returns their names.

    A live exporter holds its staging folder's lock, so only folders whose lock
    this process can take (or that have no lock file at all, left by a crash
    between two steps of cleanup) are removed; never another live exporter's.
    """
    removed: list[str] = []
    try:
        names = os.listdir(model_base)
    except OSError:
        return removed  # Missing or unusable: make_staging_dir reports it clearly.
    for name in names:
        if not name.startswith(STAGING_PREFIX) or name.endswith(_LOCK_SUFFIX):
            continue
        path = os.path.join(model_base, name)
        try:
            fd = os.open(path + _LOCK_SUFFIX, os.O_WRONLY)
        except FileNotFoundError:
            fd = None  # Its owner removed the lock last: it is gone.
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # A live exporter's.
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + _LOCK_SUFFIX)
        if fd is not None:
            os.close(fd)
        removed.append(name)
        logger.info('Removed abandoned staging folder %s.', path)
    return removed


def publish(
    staging_dir: str, model_base: str, clock: Callable[[], float] = time.time
) -> tuple[int, str]:
    """Flushes a complete staging folder to disk and moves it into place as the next free version.

    Returns:
        (version, final path).
    """
    flush_tree(staging_dir)
    for _ in range(_MAX_PUBLISH_ATTEMPTS):
        version = next_version(model_base, clock)
        final_dir = os.path.join(model_base, str(version))
        try:
            rename_no_replace(staging_dir, final_dir)
        except FileExistsError:
            logger.info('Version %s was taken by another export; trying the next one.', version)
            continue
        fsync_dir(model_base)
        _release(staging_dir)
        return version, final_dir
    raise RuntimeError(
        f'could not find a free version under {model_base!r} after {_MAX_PUBLISH_ATTEMPTS} attempts'
    )
