"""One file's copy: placed by the kernel (or a link) and hashed, or read once, hashed and written.

The pieces the copy engines (`transfer.py` threads, `beam_copy.py` workers) are
made of. The source is read with `pread`, never mapped: a mapped source that
another process truncates mid-copy makes the kernel raise SIGBUS and end the
process. A source that shrinks, grows, is replaced or removed, or cannot be
read is an error naming the file (IntegrityError; InvalidInputError when it is
unreadable), and nothing is published.

A large file's chunks are copied by the kernel (`copy_file_range`, no byte
through user space) and hashed from the staged copy. Bytes written through the
page cache are handed to the disk as they are written (`start_writeback`), so
the flush before publishing (`fs.flush_tree`) waits for little; beside the
checks each chunk, once hashed, is written and dropped from the page cache
(`drop_written`, `TransferConfig.drop_staged_pages`), so the staged copy does not
double the model's footprint in memory while TensorFlow loads it. With
`TransferConfig.direct_io` the chunks are instead read with `pread`, hashed, and
written with `O_DIRECT` where the destination takes it.

A read that fails (EIO from a failing disk, a lost network mount) is a
`StorageIOError` naming the file and the byte where the read failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import logging
import mmap
import os
import sys
import threading
from collections.abc import Iterable, Iterator

from final_exporter.common import libc
from final_exporter.common.errors import IntegrityError, InvalidInputError, StorageIOError
from final_exporter.common.progress import Progress
from final_exporter.storage.manifest import CHUNK_BYTES as MANIFEST_CHUNK_BYTES
from final_exporter.storage.manifest import ChunkedHasher, entry_from_chunks
from final_exporter.storage.small_copy import SmallCopyError, copy_small, unchanged
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER, TransferConfig
from final_exporter.storage.types import COPY_AUTO, COPY_HARDLINK, CopyItem, FileEntry

# MAP_POPULATE faults a window in with one call, not page by page.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, 'MAP_POPULATE', 0)

logger = logging.getLogger(__name__)


def in_pieces(item: CopyItem, config: TransferConfig) -> bool:
    """Whether a file is copied by the kernel chunk by chunk, then hashed (else in one pass)."""
    return item.size >= config.kernel_copy_min_bytes


def is_split(item: CopyItem, config: TransferConfig) -> bool:
    """Whether the Beam copy copies `item` in pieces (never when linked: nothing is copied)."""
    return item.size >= config.split_min_bytes and config.method != COPY_HARDLINK


def split_pieces(size: int) -> list[tuple[int, int]]:
    """The (offset, length) pieces a large file is copied in, its manifest chunks (an empty
    file is one empty piece)."""
    chunk = MANIFEST_CHUNK_BYTES
    return [(o, min(chunk, size - o)) for o in range(0, size, chunk)] or [(0, 0)]


def create_dest(dest: str, size: int, config: TransferConfig) -> None:
    """Creates the (new) file a large file's chunks are written into, at its full size.

    Allocated up front (`fallocate`), chunks written with `O_DIRECT` by several
    threads at once overwrite allocated blocks, which the filesystem lets them
    do side by side (ext4 and XFS serialise writes that allocate). Best effort:
    without `fallocate` the writes allocate as they go.
    """
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        if size and config.direct_io and _fallocate is not None:
            _fallocate(fd, 0, 0, size)
    finally:
        os.close(fd)


def make_dest_folders(items: Iterable[CopyItem], dest_root: str) -> None:
    # Destinations are POSIX paths: rpartition is dirname at a sixth of its cost.
    for folder in sorted({i.dest.rpartition('/')[0] for i in items}):
        os.makedirs(os.path.join(dest_root, folder), exist_ok=True)


def copy_file(
    item: CopyItem,
    dest_root: str,
    *,
    config: TransferConfig = DEFAULT_TRANSFER,
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
    method = config.method
    try:
        linked = (method == COPY_HARDLINK and try_hardlink(item.src, dest)) or (
            method == COPY_AUTO and try_reflink(item.src, dest)
        )
    except OSError as e:
        raise source_error(item, e) from None
    if linked:
        # The blocks are shared, not copied: one read of the source gives the hash.
        entry = _hash_unchanged(item, progress, None, config)
    elif in_pieces(item, config):
        entry = _copy_in_chunks(item, dest, progress, config)
    else:
        entry = _copy_whole(item, dest, progress, config)
    if progress is not None:
        progress.file_done(item.dest)
    return entry


def _copy_in_chunks(
    item: CopyItem, dest: str, progress: Progress | None, config: TransferConfig
) -> FileEntry:
    """Copies a large file piece by piece in this thread: the same entry as the pool gives."""
    with source_errors(item):
        before = os.stat(item.src)
    create_dest(dest, before.st_size, config)
    digests = []
    for offset, length in split_pieces(before.st_size):
        digest = place_piece(item, dest, before, offset, length, progress, config)
        if digest is None:
            digest = hash_range(item, dest, offset, length, progress, mapped=True, config=config)
        digests.append(digest)
    entry = entry_from_chunks(item.dest, before.st_size, digests)
    return finish_split(item, dest, before, entry)


def finish_split(item: CopyItem, dest: str, before: os.stat_result, entry: FileEntry) -> FileEntry:
    """Checks a file copied in pieces: the source unchanged since `before`, `dest` its full size."""
    check_unchanged(item, before, entry.size)
    written = os.path.getsize(dest)
    if written != entry.size:
        raise IntegrityError(
            f'{dest!r} holds {written} bytes after the copy of {item.src!r}, expected {entry.size}'
        )
    return entry


def hash_only(item: CopyItem, config: TransferConfig = DEFAULT_TRANSFER) -> FileEntry:
    """Hashes `item.src` (the entry it would have as a copy) without writing anything."""
    return _hash_unchanged(item, None, None, config)


def place_piece(
    item: CopyItem,
    dest: str,
    before: os.stat_result,
    offset: int,
    length: int,
    progress: Progress | None = None,
    config: TransferConfig = DEFAULT_TRANSFER,
) -> bytes | None:
    """Copies [offset, offset+length) of `item.src` into the existing `dest`.

    With `config.direct_io`, where the destination's filesystem takes it, the
    range is read with `pread`, hashed and written with `O_DIRECT` (its last
    unaligned bytes through the page cache). Else the kernel copies the range
    (`copy_file_range`), with no byte through user space, and the caller hashes
    it from the staged copy (`hash_range`); where the kernel cannot copy this
    pair of files, the range is read, hashed and written in one pass.

    Returns:
        The range's SHA-256 digest where it was hashed while copied, else None.

    Raises:
        IntegrityError: if the source was replaced since `before` or ends early.
        StorageIOError: if a read or write fails, naming the file and the byte.
    """
    with contextlib.ExitStack() as stack:
        with source_errors(item):
            src = stack.enter_context(open(item.src, 'rb', buffering=0))
        now = os.fstat(src.fileno())
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise _changed(item, before.st_size, now.st_size, offset, 'was replaced')
        out = stack.enter_context(open(dest, 'r+b', buffering=0))
        direct = _open_direct(dest, now) if length and config.direct_io else None
        if direct is not None:
            stack.callback(os.close, direct)
        digest = None
        if direct is not None or not (
            length
            and _copy_range(
                item,
                dest,
                (src.fileno(), out.fileno()),
                (offset, length),
                config.kernel_copy_head_bytes,
            )
        ):
            digest = hashlib.sha256()
            _read_chunk(
                item, before, src.fileno(), out, (offset, length), digest, progress, config, direct
            )
        elif progress is not None:
            progress.add_copied(length)
        if direct is None:
            start_writeback(out.fileno(), offset, length)
    return digest.digest() if digest is not None else None


def copy_piece(item: CopyItem, dest: str, span: tuple[int, int], config: TransferConfig) -> bytes:
    """Copies the range `span` (offset, length) of `item.src` into the existing `dest` and
    returns its SHA-256 digest (a Beam element)."""
    with source_errors(item):
        before = os.stat(item.src)
    digest = place_piece(item, dest, before, *span, None, config)
    if digest is None:
        digest = hash_range(item, dest, *span, None, mapped=True, config=config)
    return digest


def hash_range(
    item: CopyItem,
    path: str,
    offset: int,
    length: int,
    progress: Progress | None = None,
    *,
    mapped: bool,
    config: TransferConfig = DEFAULT_TRANSFER,
) -> bytes:
    """The SHA-256 of [offset, offset+length) of `path`, a staged file.

    `mapped` hashes through read-only mappings of `config.map_window_bytes`:
    each byte is touched once in user space, with no copy into a buffer. Only
    this export's own staged copies are mapped: a file another process can
    truncate (a hard link to the source) is read with `pread`, since a mapped
    file cut short kills the process with SIGBUS.
    """
    digest = hashlib.sha256()
    window = config.map_window_bytes
    with open(path, 'rb', buffering=0) as f:
        if mapped and length:
            for start in range(offset, offset + length, window):
                size = min(window, offset + length - start)
                with (
                    mmap.mmap(f.fileno(), size, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=start)
                    as mapping,
                    memoryview(mapping) as view,
                ):  # fmt: skip
                    digest.update(view)
            if progress is not None:
                progress.add_bytes(length)
        else:
            before = os.fstat(f.fileno())
            _read_chunk(item, before, f.fileno(), None, (offset, length), digest, progress, config)
    return digest.digest()


def _read_chunk(item, before, src_fd, out, span, digest, progress, config, direct=None) -> None:
    """Reads the range `span` (offset, length) with `pread`, hashing it and writing it to
    `out` (if any): through `direct` (an `O_DIRECT` descriptor of the same file) where a
    read is aligned, the rest through `out`."""
    offset, length = span
    buf = _buffer(config.buffer_bytes)
    view = memoryview(buf)
    done = 0
    while done < length:
        at = offset + done
        with source_errors(item, at):
            n = os.preadv(src_fd, [view[: min(len(buf), length - done)]], at)
        if n == 0:
            raise _changed(item, before.st_size, os.fstat(src_fd).st_size, at)
        digest.update(view[:n])
        if out is not None:
            aligned = n - n % DIRECT_ALIGN if direct is not None and at % DIRECT_ALIGN == 0 else 0
            if aligned:
                _pwrite_all(direct, view[:aligned], at, out.name)
            if aligned < n:
                _pwrite_all(out.fileno(), view[aligned:n], at + aligned, out.name)
        done += n
        if progress is not None:
            if out is not None:
                progress.add_copied(n)
            progress.add_bytes(n)


def _pwrite_all(fd: int, chunk: memoryview, offset: int, path: str) -> None:
    while chunk:
        try:
            n = os.pwrite(fd, chunk, offset)
        except OSError as e:
            raise _write_failed(path, offset, e) from None
        chunk, offset = chunk[n:], offset + n


def _write_failed(path: str, offset: int, e: OSError) -> StorageIOError:
    return StorageIOError(f'cannot write the staged copy {path!r} at byte {offset}: {_describe(e)}')


def _describe(e: OSError) -> str:
    """`Input/output error (EIO)`: the reason and its errno name."""
    name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else ''
    return f'{e.strerror or e} ({name})' if name else str(e.strerror or e)


# O_DIRECT transfers must start at, and span, multiples of the device's logical block
# size (512 or 4096 bytes); 4096 suits both. The buffers are page-aligned mappings.
DIRECT_ALIGN = 4096
_direct_unsupported: set[int] = set()  # st_dev of filesystems that refused O_DIRECT


def _open_direct(dest: str, src_stat: os.stat_result) -> int | None:
    """An `O_DIRECT` write descriptor of `dest`, or None where its filesystem refuses one."""
    dev = os.stat(dest).st_dev
    if dev in _direct_unsupported or not hasattr(os, 'O_DIRECT'):
        return None
    try:
        return os.open(dest, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
        _direct_unsupported.add(dev)
        return None


_local = threading.local()


def _buffer(size: int) -> mmap.mmap:
    # One buffer per thread, reused across files: memory stays flat whatever the model
    # size. An anonymous mapping is page-aligned, as O_DIRECT writes need.
    buf = getattr(_local, 'buf', None)
    if buf is None or len(buf) != size:
        buf = _local.buf = mmap.mmap(-1, size)
    return buf


@contextlib.contextmanager
def source_errors(item: CopyItem, at: int | None = None) -> Iterator[None]:
    """Turns errors about `item.src` into one clear message (`source_error`)."""
    try:
        yield
    except OSError as e:
        raise source_error(item, e, at) from None


def source_error(item: CopyItem, e: OSError, at: int | None = None) -> Exception:
    """What an error about `item.src` means: unreadable (InvalidInputError), gone
    (IntegrityError), or a failed read at byte `at` (StorageIOError); `e` itself when it
    is about another file.

    A function as well as `source_errors`: a context manager costs microseconds a
    file, which a model of 20,000 small files pays three times over.
    """
    if e.filename not in (None, item.src):
        return e
    if isinstance(e, PermissionError):
        return InvalidInputError(
            f'cannot read source file {item.src!r} ({e.strerror}); expected a file readable by '
            f'the user running the export (uid {os.geteuid()})'
        )
    if isinstance(e, FileNotFoundError):
        return IntegrityError(
            f'source file {item.src!r} was removed (or renamed) while it was copied; '
            'export a model that is no longer being written'
        )
    return read_failed(item.src, e, at)


def read_failed(path: str, e: OSError, at: int | None = None) -> StorageIOError:
    """The error for a read of the model file `path` that failed with `e` (at byte `at`)."""
    where = f' at byte {at}' if at is not None else ''
    return StorageIOError(
        f'cannot read source file {path!r}{where}: {_describe(e)}; the storage holding the '
        'model failed to read it'
    )


def _changed(
    item: CopyItem, before_size: int, size_now: int | None, read: int, how: str = ''
) -> IntegrityError:
    now = f' -> {size_now}' if size_now is not None else ''
    what = how or ('shrank' if size_now is not None and size_now < before_size else 'changed')
    return IntegrityError(
        f'source file {item.src!r} {what} while it was copied '
        f'(size {before_size}{now}, read {read} bytes); '
        'export a model that is no longer being written'
    )


def _copy_range(
    item: CopyItem, dest: str, fds: tuple[int, int], span: tuple[int, int], head: int
) -> bool:
    """Copies the range `span` (offset, length) between the descriptors `fds` (source,
    destination) in the kernel, its first `head` bytes in a call of their own
    (`TransferConfig.kernel_copy_head_bytes`); False if this filesystem pair cannot."""
    (src_fd, out_fd), (offset, length) = fds, span
    copied = 0
    while copied < length:
        try:
            n = os.copy_file_range(
                src_fd,
                out_fd,
                min(head, length) if copied == 0 and head else length - copied,
                offset + copied,
                offset + copied,
            )
        except (OSError, AttributeError) as e:
            if copied == 0 and (isinstance(e, AttributeError) or e.errno in _UNSUPPORTED):
                return False
            raise StorageIOError(
                f'copying source file {item.src!r} to {dest!r} failed at byte '
                f'{offset + copied}: {_describe(e)}'
            ) from None
        if n == 0:
            raise _changed(
                item, os.fstat(src_fd).st_size, os.fstat(src_fd).st_size, offset + copied
            )
        copied += n
    return True


def _hash_unchanged(
    item: CopyItem, progress: Progress | None, out, config: TransferConfig
) -> FileEntry:
    """Reads `item.src` once, hashing it (and writing it to `out`); fails if it changes."""
    buf = _buffer(config.buffer_bytes)
    view = memoryview(buf)
    hasher = ChunkedHasher()
    flushed = 0
    with contextlib.ExitStack() as stack:
        with source_errors(item):
            src = stack.enter_context(open(item.src, 'rb', buffering=0))
        before = os.fstat(src.fileno())
        while True:
            with source_errors(item, hasher.size):
                n = src.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            hasher.update(chunk)
            if out is not None:
                _pwrite_all(out.fileno(), chunk, hasher.size - n, out.name)
                if hasher.size - flushed >= config.writeback_batch_bytes:
                    start_writeback(out.fileno(), flushed, hasher.size - flushed)
                    flushed = hasher.size
            if progress is not None:
                if out is not None:
                    progress.add_copied(n)
                progress.add_bytes(n)
        if out is not None and hasher.size >= config.writeback_min_bytes and hasher.size > flushed:
            start_writeback(out.fileno(), flushed, hasher.size - flushed)
    check_unchanged(item, before, hasher.size)
    return hasher.entry(item.dest)


def _copy_whole(
    item: CopyItem, dest: str, progress: Progress | None, config: TransferConfig
) -> FileEntry:
    """A file under `kernel_copy_min_bytes`: `small_copy.copy_small`, one read and one write."""

    def written(fd: int, n: int) -> None:
        if n >= config.writeback_min_bytes:
            start_writeback(fd, 0, n)
        if progress is not None:
            progress.add_copied(n)
            progress.add_bytes(n)

    try:
        _, n, digest = copy_small(item.src, dest, memoryview(_buffer(config.buffer_bytes)), written)
    except SmallCopyError as e:
        if e.kind != 'too_large':
            raise small_copy_error(item, dest, e) from None
        with open(dest, 'xb', buffering=0) as out:  # It grew since it was planned.
            return _hash_unchanged(item, progress, out, config)
    return FileEntry(item.dest, n, digest)


def small_copy_error(item: CopyItem, dest: str, e: SmallCopyError) -> Exception:
    """The error a `SmallCopyError` of `item` means (`source_error` for its source)."""
    if e.kind in ('open', 'read'):
        at = 0 if e.kind == 'read' else None
        return source_error(item, OSError(e.errno, os.strerror(e.errno), item.src), at)
    if e.kind == 'create':
        return OSError(e.errno, os.strerror(e.errno), dest)
    if e.kind == 'write':
        return _write_failed(dest, e.at, OSError(e.errno, os.strerror(e.errno)))
    how = 'was replaced' if e.how == 'replaced' else ''
    return _changed(item, e.before_size, None if e.size_now < 0 else e.size_now, e.at, how)


def check_unchanged(item: CopyItem, before: os.stat_result, read: int) -> None:
    """Fails unless `item.src` is still the file `before` describes and `read` is all of it."""
    try:
        unchanged(item.src, before, read)
    except SmallCopyError as e:
        raise small_copy_error(item, '', e) from None


_sync_file_range = (
    libc.function('sync_file_range', [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
    if sys.platform == 'linux'
    else None
)
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages, do not wait.
_fallocate = (
    libc.function('fallocate', [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
    if sys.platform == 'linux'
    else None
)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Starts writing [offset, offset+length) of `fd` to disk, without waiting for it.

    Left to the kernel, dirty pages are written only once they pile up or age
    (or at the fsync before publishing), after the copy; started now, the disk
    writes while the copy goes on. Best effort: the fsync before publishing is
    what makes the bytes durable, so a failure here (or no such call) is ignored.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_SYNC_FILE_RANGE_WAIT_ALL = 1 | 2 | 4  # linux/fs.h: wait for, start, and wait for writeback.


def drop_written(path: str, offset: int, length: int) -> None:
    """Writes [offset, offset+length) of the staged `path` to disk, waiting for it, then drops
    those pages from the page cache (`posix_fadvise(DONTNEED)`, which drops only clean
    pages): a staged copy hashed already is read again by nobody, and beside the checks
    its pages would take the memory TensorFlow's load of the model needs. Best effort,
    like `start_writeback`: the flush before publishing makes the bytes durable."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if _sync_file_range is not None:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WAIT_ALL)
        if hasattr(os, 'posix_fadvise'):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# Errors meaning "this filesystem (pair) cannot do that": fall back to a copy.
_UNSUPPORTED = frozenset(
    {errno.EXDEV, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS,
     errno.EPERM, errno.EMLINK}
)  # fmt: skip
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_reflink_unsupported: set[int] = set()  # st_dev of filesystems that refused a reflink


@functools.lru_cache(maxsize=256)
def _device_of(folder: str) -> int:
    # One stat per folder, not per file: the folders are the export's own staging folder's.
    return os.stat(folder).st_dev


def reflink_refused(folder: str) -> bool:
    """Whether the filesystem of `folder` refused a reflink already (so files there are copied)."""
    return _device_of(folder) in _reflink_unsupported


def try_hardlink(src: str, dest: str) -> bool:
    """Links `src` at `dest`; False where the filesystem (pair) cannot."""
    try:
        os.link(src, dest, follow_symlinks=True)
        return True
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            logger.info('Cannot hard-link %s (%s); copying instead.', src, e.strerror)
            return False
        raise


def try_reflink(src: str, dest: str) -> bool:
    """Clones `src` into a new `dest` sharing its blocks (btrfs, XFS); False if unsupported."""
    if sys.platform != 'linux':
        return False
    dev = _device_of(os.path.dirname(dest))
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
