"""The threaded copy engine: files copied and hashed in the same read, files and chunks in parallel.

One pass over the bytes: each file is read once, and every block read is both
fed to SHA-256 and written, so the manifest needs no second read, and the bytes
hashed are the bytes written. Files are copied by a thread pool (file I/O and
hashlib release the GIL on large buffers); a file larger than one manifest
chunk (`manifest.CHUNK_BYTES`) is copied and hashed chunk by chunk in parallel,
so one multi-GiB variables file uses every core, not one; a folder of many tiny
files is shared with helper processes (`tiny_files.py`), as threads would only
wait for each other's GIL. How one file or one chunk is copied, and what a source
that changes meanwhile does: `filecopy.py`.
The settings: `transfer_config.TransferConfig`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import operator
import os
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Sequence

from final_exporter.common.errors import InvalidInputError
from final_exporter.common.fs import flushing_while, scan_folder
from final_exporter.common.progress import Progress
from final_exporter.storage.filecopy import (
    check_unchanged,
    create_dest,
    drop_written,
    finish_split,
    hash_range,
    in_pieces,
    make_dest_folders,
    place_piece,
    source_errors,
    split_pieces,
    try_hardlink,
    try_reflink,
)
from final_exporter.storage.manifest import entry_from_chunks
from final_exporter.storage.tiny_files import copy_folder_files
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER, TransferConfig
from final_exporter.storage.types import COPY_AUTO, COPY_HARDLINK, CopyItem, FileEntry, StageRequest


def plan_tree(
    src_root: str, dest_prefix: str = '', exclude: Collection[str] = ()
) -> list[CopyItem]:
    """Lists the files under `src_root` as CopyItems.

    Symlinks are followed only when they point inside `src_root`.

    Args:
        src_root: The folder to copy.
        dest_prefix: POSIX folder prefix for the destinations.
        exclude: Relative paths (from `src_root`) to leave out.

    Raises:
        InvalidInputError: for a symlink that points outside `src_root`, a file
            that is neither a regular file nor a folder, or one this user cannot read.
    """
    root_real = os.path.realpath(src_root)
    items: list[CopyItem] = []
    readable = read_permission()
    exclude = frozenset(exclude)

    def check_readable(path: str, stat: os.stat_result) -> None:
        if not readable(stat) and not os.access(path, os.R_OK):
            # Found now, before anything is written; the copy still turns a file made
            # unreadable later into the same error.
            raise InvalidInputError(
                f'cannot read source file {path!r} (permission denied); expected a file '
                f'readable by the user running the export (uid {os.geteuid()})'
            )

    def visit(folder: str, rel: str, seen: frozenset[str]) -> None:
        with scan_folder(folder) as (prefix, it):
            entries = sorted(it, key=_NAME)
            for entry in entries:
                rel_path = rel + entry.name
                if rel_path in exclude:
                    continue
                # Most entries are plain files: their kind comes with the listing, and
                # one lstat gives size and mode (20,000 files: 15 alternating walks,
                # median 183 -> 160 ms).
                if entry.is_file(follow_symlinks=False):
                    stat, src = entry.stat(follow_symlinks=False), prefix + entry.name
                    if stat.st_mode & 0o444 != 0o444:  # Readable by all needs no more.
                        check_readable(src, stat)
                    items.append(CopyItem(src, dest_prefix + rel_path, stat.st_size))
                    continue
                path = prefix + entry.name
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if os.path.commonpath([root_real, target]) != root_real:
                        raise InvalidInputError(
                            f'{path!r} is a symlink to {target!r}, outside {src_root!r}; '
                            'refusing to follow it'
                        )
                if entry.is_dir():
                    real = os.path.realpath(path)
                    if real in seen:
                        raise InvalidInputError(f'{path!r} is a symlink loop')
                    visit(path, f'{rel_path}/', seen | {real})
                elif entry.is_file():  # A symlink to a file inside the folder.
                    stat = entry.stat()
                    if stat.st_mode & 0o444 != 0o444:
                        check_readable(path, stat)
                    items.append(CopyItem(path, dest_prefix + rel_path, stat.st_size))
                else:
                    raise InvalidInputError(
                        f'{path!r} is not a regular file or folder; a SavedModel holds only files'
                    )

    visit(src_root, '', frozenset({root_real}))
    return items


_NAME = operator.attrgetter('name')


def read_permission() -> Callable[[os.stat_result], bool]:
    """Whether a file's permission bits let this process read it, as a function of its stat.

    The plan stats every file anyway, where `os.access` costs a second path lookup
    per file (a model of 20,000 files spent ~70 ms in it); `os.access` then only
    confirms a refusal, which a capability (root's) or an ACL may overrule. An ACL
    that refuses what the bits allow is found by the copy, with the same message.
    """
    uid, groups = os.geteuid(), {os.getegid(), *os.getgroups()}

    def readable(stat: os.stat_result) -> bool:
        if stat.st_uid == uid:
            return bool(stat.st_mode & 0o400)
        if stat.st_gid in groups:
            return bool(stat.st_mode & 0o040)
        return bool(stat.st_mode & 0o004)

    return readable


def copy_and_hash(
    items: Iterable[CopyItem],
    dest_root: str,
    *,
    config: TransferConfig = DEFAULT_TRANSFER,
    progress: Progress | None = None,
    meanwhile: Callable[[], None] | None = None,
    when_copied: Callable[[], None] | None = None,
) -> dict[str, FileEntry]:
    """Copies `items` under `dest_root`, hashing every byte once.

    Destination files are created exclusively: an existing file is an error,
    never overwritten. Each chunk of a large file is read, hashed and written
    by a task of its own (`_FileCopy`; `filecopy.place_piece` says how); small
    files are read once, hashed and written, a batch of them per task
    (`_SmallFiles`). The staged files are complete, and `when_copied` runs,
    while chunks the kernel copied may still be hashed.

    Args:
        items: The files to copy.
        dest_root: The (staging) folder to copy into.
        config: The copy method, threads and tuning.
        progress: Counts bytes and files.
        meanwhile: Called once, in this thread, while the copy threads work
            (they import nothing, so this may import: TensorFlow for the checks).
            Meanwhile the copy threads run at a lower CPU priority
            (`TransferConfig.background_nice`): this thread's work is what the
            export waits for last, and the copy takes the CPU it leaves.
        when_copied: Called once, in this thread, as soon as every file under
            `dest_root` holds its final bytes and every copied source was found
            unchanged; the hashing goes on meanwhile. The serving checks run
            here, so loading the export overlaps its hashing. What it raises
            is raised, once the running hashes have stopped.

    Returns:
        {destination path: FileEntry} with the size and SHA-256 of what was written.

    Raises:
        IntegrityError: if a source file changed while it was copied.
        OSError: on an I/O failure; files already written are left for the
            caller to remove with the staging folder.
    """
    items = list(items)
    config = config.resolved(beside_checks=meanwhile is not None)
    make_dest_folders(items, dest_root)
    large, small = _tasks(items, config)
    tasks = sum(len(split_pieces(i.size)) for i in large) + len(small)
    threads = min(
        config.threads(beside_checks=meanwhile is not None),
        tasks,
        max(1, -(-sum(i.size for i in items) // config.parallel_min_bytes)),
    )
    flushing = (
        flushing_while(dest_root, config.flush_every_s)
        if config.flush_min_files and len(items) >= config.flush_min_files
        else contextlib.nullcontext()
    )
    with flushing:
        if threads <= 1:
            return _copy_inline(items, dest_root, config, progress, meanwhile, when_copied)
        priority = _Priority(config.background_nice if meanwhile is not None else 0)
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix='final-exporter-copy',
            initializer=priority.thread_started,
        ) as pool:
            if meanwhile is not None:
                meanwhile = priority.lowered_during(meanwhile)
            return _copy_in_pool(
                pool, large, small, dest_root, config, progress, meanwhile, when_copied
            )


class _Priority:
    """The copy threads' CPU priority, lowered (a higher nice value, which Linux keeps per
    thread) while the exporter's own thread runs `meanwhile`.

    Raising it back needs CAP_SYS_NICE: without it, the threads stay at the lower
    priority, which only matters against other processes.
    """

    def __init__(self, nice: int) -> None:
        self._nice = nice if sys.platform == 'linux' else 0
        self._lock = threading.Lock()
        self._threads: list[tuple[int, int]] = []  # (thread id, its nice value at start)
        self._active = False

    def thread_started(self) -> None:
        """Each copy thread, as it starts (the pool's initializer)."""
        if not self._nice:
            return
        thread = threading.get_native_id()
        with self._lock:
            self._threads.append((thread, os.getpriority(os.PRIO_PROCESS, thread)))
            if self._active:
                _set_nice(thread, self._threads[-1][1] + self._nice)

    def lowered_during(self, fn: Callable[[], None]) -> Callable[[], None]:
        """`fn`, run with the copy threads' priority lowered."""
        if not self._nice:
            return fn

        def run() -> None:
            self._set_all(True)
            try:
                fn()
            finally:
                self._set_all(False)

        return run

    def _set_all(self, lowered: bool) -> None:
        with self._lock:
            self._active = lowered
            for thread, base in self._threads:
                _set_nice(thread, base + self._nice if lowered else base)


def _set_nice(thread: int, nice: int) -> None:
    with contextlib.suppress(OSError):  # A thread gone, or no right to raise it back.
        os.setpriority(os.PRIO_PROCESS, thread, nice)


def _copy_inline(items, dest_root, config, progress, meanwhile, when_copied):
    """`copy_and_hash` in this thread, folder after folder (helper processes may share a
    folder of many tiny files): for a model too small for threads."""
    if meanwhile is not None:
        meanwhile()
    results = {}
    for folder in _batches(items, dataclasses.replace(config, batch_bytes=sys.maxsize)):
        for entry in copy_folder_files(folder, dest_root, config, progress):
            results[entry.path] = entry
    if when_copied is not None:
        when_copied()
    return results


def _copy_in_pool(pool, large, small, dest_root, config, progress, meanwhile, when_copied):
    """`copy_and_hash` on a pool: the tasks (`_tasks`) placed, then all hashed."""
    files: list[_FileCopy | _SmallFiles] = []
    try:
        files = _start(pool, large, small, dest_root, config, progress)
        if meanwhile is not None:
            meanwhile()
        _wait([f for c in files for f in c.placed])
        for c in files:
            c.check_copied()
        if when_copied is not None:
            when_copied()
        _wait([f for c in files for f in c.tasks])
        entries = [e for c in files for e in c.entries()]
    except BaseException:
        for c in files:
            for f in c.tasks:
                f.cancel()
        raise
    return {e.path: e for e in entries}


def _tasks(
    items: Sequence[CopyItem], config: TransferConfig
) -> tuple[list[CopyItem], list[list[CopyItem]]]:
    """`items` as tasks: (the large files, copied a task per chunk; the others in batches
    of a task each, `_batches`)."""
    large: list[CopyItem] = []
    other: list[CopyItem] = []
    for item in items:
        (large if in_pieces(item, config) else other).append(item)
    return large, _batches(other, config)


def _start(pool, large, small, dest_root, config, progress) -> list[_FileCopy | _SmallFiles]:
    """Starts copying on the pool: a task per chunk of each `large` file, and a task per
    batch of `small` files."""
    started: list[_FileCopy | _SmallFiles] = [
        _FileCopy(pool, i, dest_root, config, progress) for i in large
    ]
    return started + [_SmallFiles(pool, b, dest_root, config, progress) for b in small]


def _batches(items: Sequence[CopyItem], config: TransferConfig) -> list[list[CopyItem]]:
    """The files under `kernel_copy_min_bytes` in batches, each copied by one task: all of a
    folder's tiny files (under `TransferConfig.tiny_file_bytes`) in one, its other files
    one batch per `TransferConfig.batch_bytes`.

    The kernel creates the files of a folder one at a time (under the folder's
    lock), and a tiny file's copy is Python's per-file work, which holds the GIL:
    threads copying a folder's tiny files only wait for each other (measured: 4
    threads on 20,000 files of a few KiB spent most of their time in futex calls).
    Larger files are mostly hashing and I/O, which release the GIL, so their
    batches run in parallel.
    """
    tiny: collections.defaultdict[str, list[CopyItem]] = collections.defaultdict(list)
    batches: list[list[CopyItem]] = []
    open_batches: dict[str, tuple[list[CopyItem], int]] = {}
    tiny_bytes, batch_bytes = config.tiny_file_bytes, config.batch_bytes
    for item in items:
        folder = item.dest.rpartition('/')[0]
        if item.size < tiny_bytes:
            tiny[folder].append(item)
            continue
        batch, size = open_batches.get(folder) or ([], 0)
        batch.append(item)
        open_batches[folder] = (batch, size + item.size)
        if size + item.size >= batch_bytes:
            batches.append(batch)
            del open_batches[folder]
    # The tiny files first: a folder of them is the longest task (shared with helpers).
    return [*tiny.values(), *batches, *(b for b, _ in open_batches.values())]


class _SmallFiles:
    """Small files of one folder, copied one after another by one task (and its helper
    processes, `copy_folder_files`); `placed` completes once their bytes are in place."""

    def __init__(self, pool, items, dest_root, config, progress) -> None:
        placed: concurrent.futures.Future = concurrent.futures.Future()

        def set_placed() -> None:
            placed.set_result(None)

        task = pool.submit(copy_folder_files, items, dest_root, config, progress, set_placed)
        task.add_done_callback(functools.partial(_settle, placed))
        self.tasks, self.placed = [task], [placed]

    def check_copied(self) -> None:
        """Each file was checked unchanged as it was copied."""

    def entries(self) -> list[FileEntry]:
        return self.tasks[0].result()


def _settle(placed: concurrent.futures.Future, task: concurrent.futures.Future) -> None:
    """Completes `placed` as `task` ended, unless the task completed it first."""
    if placed.done():
        return
    if task.cancelled():
        placed.cancel()
    elif task.exception() is not None:
        placed.set_exception(task.exception())
    else:
        placed.set_result(None)


class ThreadedCopier:
    """The thread-pool copy engine as a local store's copier (`types.Copier`).

    Args:
        config: The copy method, threads and tuning.
    """

    def __init__(self, config: TransferConfig = DEFAULT_TRANSFER) -> None:
        self.config = config

    def copy(self, request: StageRequest, dest_root: str) -> dict[str, FileEntry]:
        """`copy_and_hash` with this copier's config."""
        return copy_and_hash(
            request.items,
            dest_root,
            config=self.config,
            progress=request.progress,
            meanwhile=request.meanwhile,
            when_copied=request.when_complete,
        )


def _wait(futures: Sequence[concurrent.futures.Future]) -> None:
    """Waits for every future; raises the first exception (the others are not run)."""
    _, pending = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for f in pending:
        f.cancel()
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            raise f.exception()


class _FileCopy:
    """One large file in flight on a pool: a task per manifest chunk places its bytes and
    hashes them.

    A chunk is read, hashed and written with O_DIRECT, or (where the
    destination refuses O_DIRECT) copied by the kernel and then hashed from the
    staged copy: either way the digest is of the bytes the export holds.
    Placing and hashing in the same task keeps every core busy while the disk
    catches up. `placed` completes per chunk once its bytes are in place, so
    the checks can start before the last hash of a kernel copy. The source is
    stat'ed before and after, so a file written to, replaced or removed
    meanwhile is an IntegrityError.
    """

    def __init__(
        self,
        pool: concurrent.futures.ThreadPoolExecutor,
        item: CopyItem,
        dest_root: str,
        config: TransferConfig,
        progress: Progress | None,
    ) -> None:
        self.item, self.progress, self.config = item, progress, config
        self.dest = os.path.join(dest_root, item.dest)
        method = config.method
        with source_errors(item):
            self.before = os.stat(item.src)
            self.hardlinked = method == COPY_HARDLINK and try_hardlink(item.src, self.dest)
            self.reflinked = (
                not self.hardlinked and method == COPY_AUTO and try_reflink(item.src, self.dest)
            )
        if not (self.hardlinked or self.reflinked):
            create_dest(self.dest, self.before.st_size, config)
        self.placed, self.tasks = [], []
        for offset, length in split_pieces(self.before.st_size):
            placed: concurrent.futures.Future = concurrent.futures.Future()
            self.placed.append(placed)
            self.tasks.append(pool.submit(self._piece, offset, length, placed))

    def _piece(self, offset: int, length: int, placed: concurrent.futures.Future) -> bytes:
        item, dest, progress, config = self.item, self.dest, self.progress, self.config
        try:
            if self.hardlinked:
                # The source's own inode, which others may still write: in place only once
                # hashed, and read, never mapped (a mapped file cut short is a SIGBUS).
                digest = hash_range(
                    item, dest, offset, length, progress, mapped=False, config=config
                )
            elif self.reflinked:  # An independent copy sharing the blocks: only to hash.
                digest = None
            else:
                digest = place_piece(item, dest, self.before, offset, length, progress, config)
        except BaseException as e:
            placed.set_exception(e)
            raise
        placed.set_result(None)
        if digest is None:  # This export's own copy: mapped, as nothing else writes it.
            digest = hash_range(item, dest, offset, length, progress, mapped=True, config=config)
        if config.drop_staged_pages and not (self.hardlinked or self.reflinked):
            drop_written(dest, offset, length)
        return digest

    def check_copied(self) -> None:
        """Fails unless the source is unchanged since its copy began."""
        check_unchanged(self.item, self.before, self.before.st_size)

    def entries(self) -> list[FileEntry]:
        digests = [f.result() for f in self.tasks]
        entry = entry_from_chunks(self.item.dest, self.before.st_size, digests)
        entry = finish_split(self.item, self.dest, self.before, entry)
        if self.progress is not None:
            self.progress.file_done(self.item.dest)
        return [entry]
