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

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from final_exporter.common import fs, keys
from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.common.fs import (
    SYNCFS_MIN_FILES,
    flush_tree,
    fsync_dir,
    rename_no_replace,
    syncfs_in_background,
)
from final_exporter.common.progress import Progress
from final_exporter.storage.base import Staging, Store, is_version_name
from final_exporter.storage.filecopy import copy_file, hash_only, read_failed
from final_exporter.storage.hashing import hash_local_chunks, sha256_file
from final_exporter.storage.manifest import staged_problems
from final_exporter.storage.objectstore import is_object_store_uri
from final_exporter.storage.transfer import ThreadedCopier, plan_tree
from final_exporter.storage.transfer_config import TransferConfig
from final_exporter.storage.types import (
    COPY_PLAIN,
    SHA256,
    Copier,
    CopyItem,
    FileEntry,
    StageRequest,
    Versioned,
)

logger = logging.getLogger(__name__)

STAGING_PREFIX = keys.STAGING_PREFIX
# Each retry moves past a version another exporter published in the meantime;
# running out means something keeps creating numeric folders under us.
_MAX_PUBLISH_ATTEMPTS = 1000
# A model in a bucket is downloaded into fresh files: nothing to link or clone.
_DOWNLOAD = TransferConfig(method=COPY_PLAIN)


def list_versions(model_base: str) -> list[int]:
    """The numeric version folders under `model_base`, ascending."""
    try:
        names = os.listdir(model_base)
    except FileNotFoundError:
        return []
    # Symlinks are left out: they are not folders this package made.
    return sorted(
        int(n)
        for n in names
        if is_version_name(n)
        and os.path.isdir(os.path.join(model_base, n))
        and not os.path.islink(os.path.join(model_base, n))
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
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            os.makedirs(model_base, exist_ok=True)
            path = os.path.join(model_base, f'{STAGING_PREFIX}{_unique()}')
            fd = os.open(path + _LOCK_SUFFIX, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except (FileNotFoundError, FileExistsError):
            # Another export's failure removed the empty folder it had made, within our
            # makedirs or before our lock file (`remove_staging_dir`): make it again.
            if attempt + 1 == _CREATE_ATTEMPTS:
                raise InvalidInputError(
                    f'cannot write to the export folder {model_base!r}: it was removed '
                    f'{_CREATE_ATTEMPTS} times while this export created its staging folder'
                ) from None
        except OSError as e:
            raise _cannot_write(model_base, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held_locks[path] = fd
        # Not tempfile.mkdtemp: its 0700 mode would lock a model server running
        # as another user out of the published version; mkdir honours the umask.
        os.mkdir(path)
        return path
    except OSError as e:
        raise _cannot_write(model_base, e) from None


_CREATE_ATTEMPTS = 5
# {staging folder: the fd holding its lock}, for as long as this process owns it.
_held_locks: dict[str, int] = {}


def _cannot_write(model_base: str, e: OSError) -> InvalidInputError:
    return InvalidInputError(f'cannot write to the export folder {model_base!r}: {e.strerror or e}')


def _unique() -> str:
    """32 random hex digits, as `uuid.uuid4().hex` (the `uuid` module imports `platform`:
    6 ms of every command's start-up)."""
    return os.urandom(16).hex()


def missing_folders(path: str) -> list[str]:
    """The folders of `path` (itself included) that do not exist yet, deepest first."""
    missing = []
    while path and not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def remove_staging_dir(staging_dir: str, made: Sequence[str] = ()) -> None:
    """Removes a staging folder (if it was not published) and releases its lock; then the
    folders of `made` (deepest first) that are empty, so an export that fails leaves
    nothing, not even the folders it created for itself."""
    shutil.rmtree(staging_dir, ignore_errors=True)
    _release(staging_dir)
    for folder in made:
        try:
            os.rmdir(folder)  # Only an empty folder: another export's, or a version, stays.
        except OSError:
            break


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
    staging_dir: str,
    model_base: str,
    clock: Callable[[], float] = time.time,
    *,
    flushed: bool = False,
) -> tuple[int, str]:
    """Flushes a complete staging folder to disk (unless `flushed` already, whole) and moves it
    into place as the next free version.

    Returns:
        (version, final path).
    """
    if not flushed:
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


def _flush_staged(staging: Staging) -> None:
    """Flushes the complete staged tree: once the flush `stage` began is done, one more
    `syncfs` for what was written since (the manifest); else `flush_tree`."""
    began = staging.handle.flushing
    if began is not None and began.result() and fs.syncfs(staging.path):
        return
    flush_tree(staging.path)


def list_local_files(root: str) -> dict[str, int]:
    """{POSIX path relative to `root`: size} of every file under the local folder `root`
    (symlinks as themselves: a link to a folder is not walked)."""
    return _listed(root, sized=True)


def list_local_names(root: str) -> set[str]:
    """The POSIX paths relative to `root` of the files `list_local_files` lists, from the
    folders' listings alone: no stat per file (20,000 files: 0.01 s, against 0.04 s)."""
    return set(_listed(root, sized=False))


def _listed(root: str, *, sized: bool) -> dict[str, int]:
    """{relative path: size, or 0 unless `sized`} of every file under `root`."""
    found: dict[str, int] = {}

    # scandir's entries carry their kind, and their lstat when asked: 20,000 files listed
    # with sizes in 0.08 s, where os.walk with a join and an lstat per file took 0.13 s.
    def visit(folder: str, rel: str) -> None:
        scan = contextlib.ExitStack()
        try:
            prefix, it = scan.enter_context(fs.scan_folder(folder))
        except OSError:  # As os.walk: an unreadable folder's files are then missing, by name.
            return
        with scan:
            for entry in it:
                if entry.is_dir():
                    if not entry.is_symlink():
                        visit(f'{prefix}{entry.name}', f'{rel}{entry.name}/')
                else:
                    found[f'{rel}{entry.name}'] = (
                        entry.stat(follow_symlinks=False).st_size if sized else 0
                    )

    visit(os.path.normpath(root), '')
    return found


@dataclasses.dataclass
class _Hold:
    """A local store's hold on a staging folder (`Staging.handle`).

    Attributes:
        made: The folders the export made for it (removed with it if unpublished).
        flushed: Whether the complete staged tree is on disk (`verify_staged`).
        flushing: A flush of the staged files started as soon as they were copied
            (`stage`), before the manifest; None when none was.
    """

    made: list[str]
    flushed: bool = False
    flushing: concurrent.futures.Future | None = None


class LocalStore(Store):
    """A local folder tree (or a FUSE mount such as `/gcs/`): the `Store` of plain paths.

    Args:
        source_clients: The object client for a source URI (a model in a bucket).
        copier: Copies local files into a staging folder; a thread pool with the
            default `TransferConfig` when None.

    A local store copies in no particular order: nothing in a staging folder is
    visible to a loader until the one rename that publishes the whole folder, so
    a graph file copied last (a bucket's `publish_last`) would only keep the copy
    waiting (20,000 files: 20-30 ms).
    """

    def __init__(
        self,
        source_clients: Callable[[str], Any] | None = None,
        *,
        copier: Copier | None = None,
    ) -> None:
        self._source_clients = source_clients
        self._copier = copier or ThreadedCopier()

    # --- Paths and reading ------------------------------------------------

    def join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *parts)

    def list_files(self, root: str) -> dict[str, int]:
        return list_local_files(root)

    def children(self, folder: str) -> set[str]:
        try:
            return set(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def is_file(self, path: str) -> bool:
        return os.path.isfile(path)

    def absolute(self, path: str) -> str:
        return os.path.abspath(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def is_readable(self, path: str) -> bool:
        return os.path.isfile(path) and os.access(path, os.R_OK)

    def local_path(self, path: str) -> str | None:
        return os.path.abspath(path)

    @contextlib.contextmanager
    def local_tree(self, root: str) -> Iterator[str]:
        yield root

    def read_bytes(self, path: str) -> bytes:
        """Raises FileNotFoundError and PermissionError as they are; another failed read
        (EIO) is a StorageIOError naming the file."""
        try:
            with open(path, 'rb') as f:
                return f.read()
        except (FileNotFoundError, PermissionError):
            raise
        except OSError as e:
            raise read_failed(path, e) from None

    def digest_file(self, path: str, kind: str, chunk_bytes: int) -> tuple[int, str]:
        if kind == SHA256:
            return sha256_file(path)
        entry = hash_local_chunks(path, chunk_bytes)
        return entry.size, entry.digest[1]

    def download(self, path: str, local_path: str, progress: Progress | None = None) -> FileEntry:
        item = CopyItem(path, os.path.basename(local_path), os.path.getsize(path))
        return copy_file(item, os.path.dirname(local_path), config=_DOWNLOAD, progress=progress)

    def plan_tree(self, root: str, exclude: Sequence[str] = ()) -> list[CopyItem]:
        """Refuses special files and links that leave the tree (transfer.plan_tree)."""
        return plan_tree(root, exclude=exclude)

    def list_versions(self, model_base: str) -> list[int]:
        """Numeric folders only (not symlinks, not numeric files)."""
        return list_versions(model_base)

    # --- Staging and publishing ----------------------------------------------

    def begin_staging(self, model_base: str, *, local_view: bool) -> Staging:
        made = missing_folders(model_base)
        path = make_staging_dir(model_base)
        return Staging(path, model_base, local_dir=path if local_view else None, handle=_Hold(made))

    def remove_abandoned_staging(self, model_base: str) -> list[str]:
        return remove_abandoned_staging(model_base)

    def finish_removals(self, model_base: str) -> None:
        """Deletes the trash of versions whose removal a dead run left unfinished."""
        with contextlib.suppress(FileNotFoundError):
            _empty_trash(model_base)

    def stage(self, staging: Staging, request: StageRequest) -> dict[str, FileEntry]:
        """Local sources through the copier; sources in a bucket downloaded, hashed in the
        same read. The staging folder is the local view."""
        remote = [i for i in request.items if is_object_store_uri(i.src)]
        local = (
            [i for i in request.items if not is_object_store_uri(i.src)]
            if remote
            else request.items
        )
        # With every source local, the checks overlap the hashing of the copies.
        copy = dataclasses.replace(
            request, items=local, when_complete=None if remote else request.when_complete
        )
        staged = self._copier.copy(copy, staging.path)
        if len(staged) >= SYNCFS_MIN_FILES:
            # Flushed whole in any case (`flush_tree`): begun now, the disk writes while
            # the manifest is made and checked, and the flush before publishing finds
            # only the manifest left (20,000 files: ~0.1 s sooner).
            staging.handle.flushing = syncfs_in_background(staging.path)
        for item in remote:
            staged[item.dest] = self._download_source(item, staging.path, request.progress)
        if remote and request.when_complete is not None:
            request.when_complete()
        return staged

    def _download_source(self, item: CopyItem, root: str, progress: Progress | None) -> FileEntry:
        if self._source_clients is None:
            raise InvalidInputError(f'{item.src} is in a bucket, which this store cannot read')
        dest = os.path.join(root, *item.dest.split('/'))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        entry = self._source_clients(item.src).download(item.src, dest, progress, None)
        return FileEntry(item.dest, entry.size, entry.sha256, entry.chunked_sha256)

    def stage_local_files(self, staging: Staging, paths: Sequence[str]) -> dict[str, FileEntry]:
        """The files are in the staging folder already: hashes them."""
        items = [
            CopyItem(local, p, os.path.getsize(local))
            for p in paths
            for local in [os.path.join(staging.path, *p.split('/'))]
        ]
        return {e.path: e for e in (hash_only(i) for i in items)}

    def write_export_file(self, staging: Staging, relpath: str, data: bytes) -> None:
        path = os.path.join(staging.path, *relpath.split('/'))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'xb') as f:
            f.write(data)

    def verify_staged(
        self, staging: Staging, manifest: Mapping[str, Any], known: Mapping[str, FileEntry]
    ) -> None:
        """Checks the staged tree's listing: its files' sizes and digests are those the copy
        wrote and hashed (`known`), as the staging folder is this export's own (made by it,
        hidden, held under its lock, every file created exclusively). Also flushes the
        tree, complete here (its manifest is its last file), to disk meanwhile (the check
        is CPU work, the flush waits on the disk); `publish` then has nothing left to flush.
        """
        with concurrent.futures.ThreadPoolExecutor(1, 'final-exporter-flush') as pool:
            flushing = pool.submit(_flush_staged, staging)
            problems = staged_problems(list_local_names(staging.path), manifest, known)
            flushing.result()
        staging.handle.flushed = True
        if problems:
            raise IntegrityError(
                f'staged export {staging.path!r} does not match its manifest: {"; ".join(problems)}'
            )

    def flush_for_reread(self, staging: Staging) -> None:
        flush_tree(staging.path, drop_cache=True)

    def publish(self, staging: Staging, clock: Callable[[], float]) -> tuple[int, str]:
        return publish(staging.path, staging.model_base, clock, flushed=staging.handle.flushed)

    def discard(self, staging: Staging) -> None:
        remove_staging_dir(staging.path, staging.handle.made)

    def remove_version(self, model_base: str, version: int) -> bool:
        """One atomic rename to a hidden trash name (a server sees all or nothing), then delete."""
        _empty_trash(model_base)
        trash = os.path.join(model_base, f'{TRASH_PREFIX}{version}-{_unique()}')
        try:
            os.rename(os.path.join(model_base, str(version)), trash)
        except FileNotFoundError:
            return False
        fsync_dir(model_base)
        _remove_tree(trash)
        return True

    def remove_incomplete_version(self, model_base: str, version: int) -> None:
        """A local version is whole from its rename on; one that fails to verify was changed
        afterwards, and is left for a person to look at."""
        logger.warning('Version %s/%s does not verify; leaving it as it is.', model_base, version)

    # --- The label file -------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, model_base: str) -> Iterator[None]:
        """An `flock` on `<model_base>/.models.config.lock`: excludes other processes and
        threads (each opens the file anew); the kernel drops it if the holder dies."""
        path = os.path.join(model_base, LOCK_FILENAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise InvalidInputError(
                    f'model base folder {model_base!r} does not exist'
                ) from None
            raise InvalidInputError(
                f'cannot create the lock file {path!r}: {e.strerror or e}'
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # Closing the last descriptor releases the flock.

    def read_versioned(self, path: str) -> Versioned:
        try:
            with open(path, 'rb') as f:
                st = os.fstat(f.fileno())
                return Versioned(f.read(), (st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            return Versioned(None, None)

    def write_versioned(self, path: str, data: bytes, token: Any) -> bool:
        """Under `lock`: compares the file with `token`, then replaces it with a rename."""
        if self.read_versioned(path).token != token:
            return False
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{_unique()}')
        # Not tempfile: its 0600 mode would hide the file from a server running as
        # another user; O_CREAT with 0666 honours the umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        fsync_dir(folder)
        return True


LOCK_FILENAME = '.models.config.lock'
TRASH_PREFIX = '.final-exporter-trash-'


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
