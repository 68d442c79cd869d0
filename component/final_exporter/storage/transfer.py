"""Copies files and hashes them in the same read, files and chunks in parallel.

One pass over the bytes: each file is read once, and every block read is both
fed to SHA-256 and written, so the manifest needs no second read, and the bytes
hashed are the bytes written. Files are copied by a thread pool (file I/O and
hashlib release the GIL on large buffers); a file larger than one manifest
chunk (`manifest.CHUNK_BYTES`) is copied and hashed chunk by chunk in parallel,
so one multi-GiB variables file uses every core, not one.

The source is read with `pread`, never mapped: a mapped source that another
process truncates mid-copy makes the kernel raise SIGBUS and end the process.
A source that shrinks, grows, is replaced or removed, or cannot be read is an
error naming the file (IntegrityError; InvalidInputError when it is unreadable),
and nothing is published.

Methods: `auto` tries a reflink (btrfs, XFS), else copies; `copy` always
copies; `hardlink` links the immutable source files and only reads them to hash.

Copied bytes are handed to the disk as they are written (`start_writeback`),
so the flush before publishing (`publish.flush_tree`) waits for little: the
disk writes while the next bytes are hashed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import hashlib
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

from final_exporter.common import keys, libc
from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.common.progress import Progress
from final_exporter.storage import manifest
from final_exporter.storage.manifest import ChunkedHasher, FileEntry, entry_from_chunks

# One read or write of a file copied through a buffer (files under KERNEL_COPY_MIN_BYTES,
# or where the kernel cannot copy).
CHUNK_BYTES = 8 * 1024 * 1024
# Files from this size are copied in the kernel and hashed through a mapping of the
# copy, chunk by chunk; smaller ones take one read and one write.
KERNEL_COPY_MIN_BYTES = 4 * 1024 * 1024
# Smaller files are left for the fsync before publishing: nothing to overlap with.
WRITEBACK_MIN_BYTES = 1024 * 1024
# Writeback is started per this many bytes written (one call per read would be 1 per MiB).
WRITEBACK_BATCH_BYTES = 8 * 1024 * 1024
# Files larger than one manifest chunk are copied and hashed in chunk-sized pieces,
# one task each: the chunk digests are the manifest's, so nothing is hashed twice.
SPLIT_CHUNK_BYTES = manifest.CHUNK_BYTES
SPLIT_MIN_BYTES = SPLIT_CHUNK_BYTES + 1
# A thread per this many bytes at most: starting one costs about as much as copying
# and hashing 100 KiB, so a small model is copied inline.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024
# The staged copy is hashed through read-only mappings of this size: what a thread
# holds mapped (and counts in its RSS) stays small whatever the file size.
MAP_WINDOW_BYTES = 8 * 1024 * 1024
# MAP_POPULATE faults a window in with one call, not page by page.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, 'MAP_POPULATE', 0)
COPY_AUTO, COPY_PLAIN, COPY_HARDLINK = 'auto', 'copy', 'hardlink'
COPY_METHODS = (COPY_AUTO, COPY_PLAIN, COPY_HARDLINK)
# Saved graphs go last: TensorFlow Serving and other loaders treat the presence
# of saved_model.pb as "the SavedModel is complete" (see the TFX Pusher).
PUBLISH_LAST = (keys.SAVED_MODEL_PB, keys.SAVED_MODEL_PBTXT)

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Threads for object-store transfers: network bound, so many more than cores."""
    return min(16, 4 * (os.cpu_count() or 1))


def local_copy_workers() -> int:
    """Threads for a local copy: hashing keeps a core busy and the disk writes in the
    background (`start_writeback`), so two per core cover page faults and waits;
    more only contend (measured: 4 threads on 2 cores beat 2 and 8)."""
    return min(16, 2 * (os.cpu_count() or 1))


@dataclasses.dataclass(frozen=True)
class CopyItem:
    """One file to copy: absolute source and POSIX destination relative to the root."""

    src: str
    dest: str
    size: int


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

    def visit(folder: str, rel: str, seen: frozenset[str]) -> None:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel_path = f'{rel}{entry.name}'
            if rel_path in exclude:
                continue
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if os.path.commonpath([root_real, target]) != root_real:
                    raise InvalidInputError(
                        f'{entry.path!r} is a symlink to {target!r}, outside {src_root!r}; '
                        'refusing to follow it'
                    )
            if entry.is_dir():
                real = os.path.realpath(entry.path)
                if real in seen:
                    raise InvalidInputError(f'{entry.path!r} is a symlink loop')
                visit(entry.path, f'{rel_path}/', seen | {real})
            elif entry.is_file():
                if not os.access(entry.path, os.R_OK):
                    # Found now, before anything is written; the copy still turns a file
                    # made unreadable later into the same error.
                    raise InvalidInputError(
                        f'cannot read source file {entry.path!r} (permission denied); expected '
                        f'a file readable by the user running the export (uid {os.geteuid()})'
                    )
                dest = f'{dest_prefix}{rel_path}'
                items.append(CopyItem(src=entry.path, dest=dest, size=entry.stat().st_size))
            else:
                raise InvalidInputError(
                    f'{entry.path!r} is not a regular file or folder; a SavedModel holds only files'
                )

    visit(src_root, '', frozenset({root_real}))
    return items


def copy_and_hash(
    items: Iterable[CopyItem],
    dest_root: str,
    *,
    method: str = COPY_AUTO,
    workers: int | None = None,
    progress: Progress | None = None,
    last: Sequence[str] = PUBLISH_LAST,
    meanwhile: Callable[[], None] | None = None,
    when_copied: Callable[[], None] | None = None,
) -> dict[str, FileEntry]:
    """Copies `items` under `dest_root`, hashing every byte once.

    Destination files are created exclusively: an existing file is an error,
    never overwritten. Each chunk of a large file is copied by the kernel, then
    hashed from the staged copy (`_FileCopy`); a small file is read once, hashed
    and written. The staged files are complete, and `when_copied` runs, while
    the last chunks are still being hashed.

    Args:
        items: The files to copy.
        dest_root: The (staging) folder to copy into.
        method: `auto` (reflink where the filesystem can, else copy), `copy`, or
            `hardlink` (link the source files; for immutable sources such as TFX
            artifacts; falls back to a copy across filesystems).
        workers: Copy threads; `local_copy_workers()` when None.
        progress: Counts bytes and files.
        last: Destinations copied only after every other file is complete.
        meanwhile: Called once, in this thread, while the copy threads work
            (they import nothing, so this may import: TensorFlow for the checks).
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
    check_method(method)
    items = list(items)
    make_dest_folders(items, dest_root)
    first = [i for i in items if i.dest not in last]
    final = [i for i in items if i.dest in last]
    tasks = sum(len(split_pieces(i.size)) if _in_pieces(i) else 1 for i in items)
    threads = min(
        workers or local_copy_workers(),
        tasks,
        max(1, -(-sum(i.size for i in items) // PARALLEL_MIN_BYTES)),
    )
    if threads <= 1:
        if meanwhile is not None:
            meanwhile()
        results = {}
        for item in first + final:
            entry = copy_file(item, dest_root, method=method, progress=progress)
            results[entry.path] = entry
        if when_copied is not None:
            when_copied()
        return results
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=threads, thread_name_prefix='final-exporter-copy'
    ) as pool:
        files: list[_FileCopy] = []
        try:
            # `last` waits until every other file's bytes are in place.
            for batch in (first, final):
                started = [_FileCopy(pool, item, dest_root, method, progress) for item in batch]
                files += started
                if meanwhile is not None:
                    meanwhile()
                    meanwhile = None
                _wait([f for c in started for f in c.placed])
                for c in started:
                    c.check_copied()
            if when_copied is not None:
                when_copied()
            _wait([f for c in files for f in c.tasks])
            entries = [c.entry() for c in files]
        except BaseException:
            for c in files:
                for f in c.tasks:
                    f.cancel()
            raise
    return {e.path: e for e in entries}


def _wait(futures: Sequence[concurrent.futures.Future]) -> None:
    """Waits for every future; raises the first exception (the others are not run)."""
    _, pending = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
    for f in pending:
        f.cancel()
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            raise f.exception()


def _in_pieces(item: CopyItem) -> bool:
    """Whether a file is copied by the kernel chunk by chunk, then hashed (else in one pass)."""
    return item.size >= KERNEL_COPY_MIN_BYTES


class _FileCopy:
    """One file in flight on a pool: a task per manifest chunk places its bytes, then hashes them.

    A small file is one task that reads, hashes and writes it. A large one has a
    task per chunk that has the kernel copy the chunk, then hashes it from the
    staged copy: the digest is of the bytes the export holds. Placing and hashing
    in the same task keeps every core busy while the kernel holds a writer back
    for the disk to catch up (dirty-page throttling). `placed` completes per
    chunk once its bytes are in place, so the checks can start before the last
    hash. The source is stat'ed before and after, so a file written to,
    replaced or removed meanwhile is an IntegrityError.
    """

    def __init__(
        self,
        pool: concurrent.futures.ThreadPoolExecutor,
        item: CopyItem,
        dest_root: str,
        method: str,
        progress: Progress | None,
    ) -> None:
        self.item, self.progress = item, progress
        self.dest = os.path.join(dest_root, item.dest)
        if not _in_pieces(item):
            task = pool.submit(copy_file, item, dest_root, method=method, progress=progress)
            self.tasks, self.placed = [task], [task]
            return
        with _source_errors(item):
            self.before = os.stat(item.src)
            self.hardlinked = method == COPY_HARDLINK and _try_hardlink(item.src, self.dest)
            self.reflinked = (
                not self.hardlinked and method == COPY_AUTO and _try_reflink(item.src, self.dest)
            )
        if not (self.hardlinked or self.reflinked):
            with open(self.dest, 'xb'):
                pass
        self.placed, self.tasks = [], []
        for offset, length in split_pieces(self.before.st_size):
            placed: concurrent.futures.Future = concurrent.futures.Future()
            self.placed.append(placed)
            self.tasks.append(pool.submit(self._piece, offset, length, placed))

    def _piece(self, offset: int, length: int, placed: concurrent.futures.Future) -> bytes:
        try:
            if self.hardlinked:
                # The source's own inode, which others may still write: in place only once
                # hashed, and read, never mapped (a mapped file cut short is a SIGBUS).
                digest = hash_range(
                    self.item, self.dest, offset, length, self.progress, mapped=False
                )
            elif self.reflinked:  # An independent copy sharing the blocks: only to hash.
                digest = None
            else:
                digest = place_piece(
                    self.item, self.dest, self.before, offset, length, self.progress
                )
        except BaseException as e:
            placed.set_exception(e)
            raise
        placed.set_result(None)
        if digest is None:  # This export's own copy: mapped, as nothing else writes it.
            digest = hash_range(self.item, self.dest, offset, length, self.progress, mapped=True)
        return digest

    def check_copied(self) -> None:
        """Fails unless the source is unchanged since its copy began (a small file's: checked)."""
        if _in_pieces(self.item):
            _check_same(self.item, self.before, self.before.st_size)

    def entry(self) -> FileEntry:
        if not _in_pieces(self.item):
            return self.tasks[0].result()
        digests = [f.result() for f in self.tasks]
        entry = entry_from_chunks(self.item.dest, self.before.st_size, digests)
        entry = finish_split(self.item, self.dest, self.before, entry)
        if self.progress is not None:
            self.progress.file_done(self.item.dest)
        return entry


def is_split(item: CopyItem, method: str, min_bytes: int = SPLIT_MIN_BYTES) -> bool:
    """Whether `item` is copied in pieces (never when linked: nothing is copied)."""
    return item.size >= min_bytes and method != COPY_HARDLINK


def split_pieces(size: int, piece_bytes: int = SPLIT_CHUNK_BYTES) -> list[tuple[int, int]]:
    """The (offset, length) pieces a large file is copied in (an empty file is one empty piece)."""
    return [(o, min(piece_bytes, size - o)) for o in range(0, size, piece_bytes)] or [(0, 0)]


def finish_split(item: CopyItem, dest: str, before: os.stat_result, entry: FileEntry) -> FileEntry:
    """Checks a file copied in pieces: the source unchanged since `before`, `dest` its full size."""
    _check_same(item, before, entry.size)
    written = os.path.getsize(dest)
    if written != entry.size:
        raise IntegrityError(
            f'{dest!r} holds {written} bytes after the copy of {item.src!r}, expected {entry.size}'
        )
    return entry


def hash_only(item: CopyItem, method: str) -> FileEntry:
    """Hashes `item.src` (the entry it would have as a copy) without writing anything."""
    return _hash_unchanged(item, None, out=None)


def place_piece(
    item: CopyItem,
    dest: str,
    before: os.stat_result,
    offset: int,
    length: int,
    progress: Progress | None = None,
) -> bytes | None:
    """Copies [offset, offset+length) of `item.src` into the existing `dest`.

    The kernel copies the range (`copy_file_range`): no byte passes through
    user space, and the call releases the GIL for the whole range, so a thread
    importing TensorFlow meanwhile is not held up. The range is then hashed
    from the staged copy (`hash_range`). Where the kernel cannot copy this pair
    of files, the source is read with `pread`, hashed and written in one pass.

    Returns:
        The range's SHA-256 digest where it was hashed while copied, else None.

    Raises:
        IntegrityError: if the source was replaced since `before` or ends early.
    """
    with contextlib.ExitStack() as stack:
        with _source_errors(item):
            src = stack.enter_context(open(item.src, 'rb', buffering=0))
        now = os.fstat(src.fileno())
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise _changed(item, before, now.st_size, offset, 'was replaced')
        out = stack.enter_context(open(dest, 'r+b', buffering=0))
        digest = None
        if not (length and _copy_range(item, src.fileno(), out.fileno(), offset, length)):
            digest = hashlib.sha256()
            _read_chunk(item, before, src.fileno(), out, offset, length, digest, progress)
        elif progress is not None:
            progress.add_copied(length)
        start_writeback(out.fileno(), offset, length)
    return digest.digest() if digest is not None else None


def hash_range(
    item: CopyItem,
    path: str,
    offset: int,
    length: int,
    progress: Progress | None = None,
    *,
    mapped: bool,
) -> bytes:
    """The SHA-256 of [offset, offset+length) of `path`, a staged file.

    `mapped` hashes through read-only mappings of `MAP_WINDOW_BYTES`: each byte
    is touched once in user space, with no copy into a buffer. Only this
    export's own staged copies are mapped: a file another process can truncate
    (a hard link to the source) is read with `pread`, since a mapped file cut
    short kills the process with SIGBUS.
    """
    digest = hashlib.sha256()
    with open(path, 'rb', buffering=0) as f:
        if mapped and length:
            for start in range(offset, offset + length, MAP_WINDOW_BYTES):
                size = min(MAP_WINDOW_BYTES, offset + length - start)
                with (
                    mmap.mmap(f.fileno(), size, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=start)
                    as window,
                    memoryview(window) as view,
                ):  # fmt: skip
                    digest.update(view)
            if progress is not None:
                progress.add_bytes(length)
        else:
            before = os.fstat(f.fileno())
            _read_chunk(item, before, f.fileno(), None, offset, length, digest, progress)
    return digest.digest()


def _read_chunk(item, before, src_fd, out, offset, length, digest, progress) -> None:
    """Reads a range with `pread`, hashing it and writing it to `out` (if any)."""
    buf = _buffer()
    view = memoryview(buf)
    done = 0
    while done < length:
        with _source_errors(item):
            n = os.preadv(src_fd, [view[: min(len(buf), length - done)]], offset + done)
        if n == 0:
            raise _changed(item, before, os.fstat(src_fd).st_size, offset + done)
        digest.update(view[:n])
        if out is not None:
            _pwrite_all(out.fileno(), view[:n], offset + done)
        done += n
        if progress is not None:
            if out is not None:
                progress.add_copied(n)
            progress.add_bytes(n)


def copy_piece(
    item: CopyItem, dest: str, offset: int, length: int, progress: Progress | None = None
) -> None:
    """Copies [offset, offset+length) of `item.src` into the existing `dest` (a Beam element)."""
    with _source_errors(item):
        before = os.stat(item.src)
    place_piece(item, dest, before, offset, length, progress)


def _pwrite_all(fd: int, chunk: memoryview, offset: int) -> None:
    while chunk:
        n = os.pwrite(fd, chunk, offset)
        chunk, offset = chunk[n:], offset + n


def check_method(method: str) -> None:
    if method not in COPY_METHODS:
        raise InvalidInputError(
            f'copy_method must be one of {", ".join(COPY_METHODS)}, got {method!r}'
        )


def make_dest_folders(items: Iterable[CopyItem], dest_root: str) -> None:
    for folder in sorted({os.path.dirname(i.dest) for i in items}):
        os.makedirs(os.path.join(dest_root, folder), exist_ok=True)


_local = threading.local()


def _buffer() -> bytearray:
    # One buffer per thread, reused across files: memory stays flat whatever the model size.
    buf = getattr(_local, 'buf', None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK_BYTES)
    return buf


@contextlib.contextmanager
def _source_errors(item: CopyItem) -> Iterator[None]:
    """Turns "cannot read / no longer there" errors about `item.src` into one clear message."""
    try:
        yield
    except PermissionError as e:
        if e.filename not in (None, item.src):
            raise
        raise InvalidInputError(
            f'cannot read source file {item.src!r} ({e.strerror}); expected a file readable by '
            f'the user running the export (uid {os.geteuid()})'
        ) from None
    except FileNotFoundError as e:
        if e.filename not in (None, item.src):
            raise
        raise IntegrityError(
            f'source file {item.src!r} was removed (or renamed) while it was copied; '
            'export a model that is no longer being written'
        ) from None


def _changed(
    item: CopyItem, before: os.stat_result, size_now: int | None, read: int, how: str = ''
) -> IntegrityError:
    now = f' -> {size_now}' if size_now is not None else ''
    what = how or ('shrank' if size_now is not None and size_now < before.st_size else 'changed')
    return IntegrityError(
        f'source file {item.src!r} {what} while it was copied '
        f'(size {before.st_size}{now}, read {read} bytes); '
        'export a model that is no longer being written'
    )


def copy_file(
    item: CopyItem,
    dest_root: str,
    *,
    method: str = COPY_AUTO,
    progress: Progress | None = None,
    replace: bool = False,
) -> FileEntry:
    """Copies (or links) one file and returns its entry; the bytes are read once.

    `replace` removes what an earlier attempt left at the destination (a Beam
    retry); the destination is inside this export's own staging folder.
    """
    dest = os.path.join(dest_root, item.dest)
    if replace and os.path.lexists(dest):
        os.remove(dest)
    with _source_errors(item):
        linked = (method == COPY_HARDLINK and _try_hardlink(item.src, dest)) or (
            method == COPY_AUTO and _try_reflink(item.src, dest)
        )
    if linked:
        # The blocks are shared, not copied: one read of the source gives the hash.
        entry = _hash_unchanged(item, progress, out=None)
    elif item.size >= KERNEL_COPY_MIN_BYTES:
        entry = _copy_in_chunks(item, dest, progress)
    else:
        with open(dest, 'xb', buffering=0) as out:
            entry = _hash_unchanged(item, progress, out=out)
    if progress is not None:
        progress.file_done(item.dest)
    return entry


def _copy_in_chunks(item: CopyItem, dest: str, progress: Progress | None) -> FileEntry:
    """Copies a large file piece by piece in this thread: the same entry as the pool gives."""
    with _source_errors(item):
        before = os.stat(item.src)
    with open(dest, 'xb'):
        pass
    digests = []
    for offset, length in split_pieces(before.st_size):
        digest = place_piece(item, dest, before, offset, length, progress)
        if digest is None:
            digest = hash_range(item, dest, offset, length, progress, mapped=True)
        digests.append(digest)
    entry = entry_from_chunks(item.dest, before.st_size, digests)
    return finish_split(item, dest, before, entry)


def _copy_range(item: CopyItem, src_fd: int, out_fd: int, offset: int, length: int) -> bool:
    """Copies [offset, offset+length) in the kernel; False if this filesystem pair cannot."""
    copied = 0
    while copied < length:
        try:
            n = os.copy_file_range(
                src_fd, out_fd, length - copied, offset + copied, offset + copied
            )
        except (OSError, AttributeError) as e:
            if copied == 0 and (isinstance(e, AttributeError) or e.errno in _UNSUPPORTED):
                return False
            raise
        if n == 0:
            raise _changed(item, os.fstat(src_fd), os.fstat(src_fd).st_size, offset + copied)
        copied += n
    return True


def _hash_unchanged(item: CopyItem, progress: Progress | None, out) -> FileEntry:
    """Reads `item.src` once, hashing it (and writing it to `out`); fails if it changes."""
    buf = _buffer()
    view = memoryview(buf)
    hasher = ChunkedHasher()
    flushed = 0
    with contextlib.ExitStack() as stack:
        with _source_errors(item):
            src = stack.enter_context(open(item.src, 'rb', buffering=0))
        before = os.fstat(src.fileno())
        while True:
            with _source_errors(item):
                n = src.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            hasher.update(chunk)
            if out is not None:
                _write_all(out, chunk)
                if hasher.size - flushed >= WRITEBACK_BATCH_BYTES:
                    start_writeback(out.fileno(), flushed, hasher.size - flushed)
                    flushed = hasher.size
            if progress is not None:
                if out is not None:
                    progress.add_copied(n)
                progress.add_bytes(n)
        if out is not None and hasher.size >= WRITEBACK_MIN_BYTES and hasher.size > flushed:
            start_writeback(out.fileno(), flushed, hasher.size - flushed)
    _check_same(item, before, hasher.size)
    return hasher.entry(item.dest)


def _check_same(item: CopyItem, before: os.stat_result, read: int) -> None:
    """Fails unless `item.src` is still the file `before` describes and `read` is all of it."""
    with _source_errors(item):
        after = os.stat(item.src)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        raise _changed(item, before, after.st_size, read, 'was replaced')
    if (
        read != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        raise _changed(item, before, after.st_size, read)


def _write_all(out, chunk: memoryview) -> None:
    while chunk:
        n = out.write(chunk)
        chunk = chunk[n:]


_sync_file_range = (
    libc.function('sync_file_range', [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if sys.platform == 'linux'
    else None
)
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages, do not wait.


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Starts writing [offset, offset+length) of `fd` to disk, without waiting for it.

    Left to the kernel, dirty pages are written only once they pile up or age
    (or at the fsync before publishing), after the copy; started now, the disk
    writes while the copy goes on. Best effort: the fsync before publishing is
    what makes the bytes durable, so a failure here (or no such call) is ignored.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


# Errors meaning "this filesystem (pair) cannot do that": fall back to a copy.
_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS,
     errno.EPERM, errno.EMLINK}
)  # fmt: skip
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_reflink_unsupported: set[int] = set()  # st_dev of filesystems that refused a reflink


def _try_hardlink(src: str, dest: str) -> bool:
    try:
        os.link(src, dest, follow_symlinks=True)
        return True
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            logger.info('Cannot hard-link %s (%s); copying instead.', src, e.strerror)
            return False
        raise


def _try_reflink(src: str, dest: str) -> bool:
    """Clones `src` into a new `dest` sharing its blocks (btrfs, XFS); False if unsupported."""
    if sys.platform != 'linux':
        return False
    dev = os.stat(os.path.dirname(dest)).st_dev
    if dev in _reflink_unsupported:
        return False
    with open(src, 'rb') as s, open(dest, 'xb') as d:
        try:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
            return True
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            _reflink_unsupported.add(dev)
    os.remove(dest)
    return False


def hash_tree(
    root: str, *, skip: Collection[str] = (), workers: int | None = None
) -> dict[str, FileEntry]:
    """Hashes the files under `root` but `skip` (for files TensorFlow wrote itself)."""
    items = plan_tree(root, exclude=skip)

    def one(item: CopyItem) -> FileEntry:
        return _hash_unchanged(item, None, out=None)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or local_copy_workers()) as pool:
        return {e.path: e for e in pool.map(one, items)}


def sha256_file(path: str) -> tuple[int, str]:
    """(size, whole-file SHA-256 hex) of a local file, read in fixed-size pieces."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    size = 0
    with open(path, 'rb', buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
    return size, digest.hexdigest()


def hash_local_chunks(
    path: str, chunk_bytes: int = manifest.CHUNK_BYTES, workers: int | None = None
) -> FileEntry:
    """Hashes a local file's chunks in parallel (hashlib releases the GIL on large buffers).

    Args:
        path: The file.
        chunk_bytes: The manifest's chunk size.
        workers: Threads; one per core when None.
    """
    with open(path, 'rb', buffering=0) as f:
        size = os.fstat(f.fileno()).st_size

        def one(offset: int) -> bytes:
            digest = hashlib.sha256()
            buf = bytearray(min(CHUNK_BYTES, chunk_bytes))
            view = memoryview(buf)
            done = 0
            length = min(chunk_bytes, size - offset)
            while done < length:
                n = os.preadv(f.fileno(), [view[: min(len(buf), length - done)]], offset + done)
                if n == 0:
                    raise IntegrityError(f'{path!r} shrank while it was hashed')
                digest.update(view[:n])
                done += n
            return digest.digest()

        offsets = [i * chunk_bytes for i in range(manifest.chunk_count(size, chunk_bytes))]
        if len(offsets) == 1:
            digests = [one(0)]
        else:
            with concurrent.futures.ThreadPoolExecutor(
                max_workers=min(len(offsets), workers or os.cpu_count() or 1)
            ) as pool:
                digests = list(pool.map(one, offsets))
    return entry_from_chunks(path, size, digests)
