"""Copies files and hashes them in the same read, files in parallel.

One pass over the bytes: each file is read once, and every chunk read is both
fed to SHA-256 and written, so the manifest needs no second read. Files are
copied by a thread pool (file reads, writes and hashlib all release the GIL on
large buffers). Files named in `last` are copied only after every other file
is complete.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import threading
from collections.abc import Collection, Iterable, Sequence

from final_exporter import keys
from final_exporter.errors import IntegrityError, InvalidInputError
from final_exporter.manifest import FileEntry, hash_file
from final_exporter.progress import Progress

CHUNK_BYTES = 8 * 1024 * 1024
# Saved graphs go last: TensorFlow Serving and other loaders treat the presence
# of saved_model.pb as "the SavedModel is complete" (see the TFX Pusher).
PUBLISH_LAST = (keys.SAVED_MODEL_PB, keys.SAVED_MODEL_PBTXT)


def default_workers() -> int:
    # I/O bound: more threads than cores keeps the disk queue full.
    return min(16, 4 * (os.cpu_count() or 1))


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
        InvalidInputError: for a symlink that points outside `src_root`, or a
            file that is neither a regular file nor a folder.
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
    workers: int | None = None,
    progress: Progress | None = None,
    last: Sequence[str] = PUBLISH_LAST,
) -> dict[str, FileEntry]:
    """Copies `items` under `dest_root`, hashing every byte as it is written.

    Destination files are created exclusively: an existing file is an error,
    never overwritten.

    Returns:
        {destination path: FileEntry} with the size and SHA-256 of what was written.

    Raises:
        IntegrityError: if a source file changed while it was copied.
        OSError: on an I/O failure; files already written are left for the
            caller to remove with the staging folder.
    """
    items = list(items)
    first = [i for i in items if i.dest not in last]
    final = [i for i in items if i.dest in last]
    for folder in sorted({os.path.dirname(i.dest) for i in items}):
        os.makedirs(os.path.join(dest_root, folder), exist_ok=True)
    results: dict[str, FileEntry] = {}
    local = threading.local()
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=workers or default_workers(), thread_name_prefix='final-exporter-copy'
    ) as pool:
        for batch in (first, final):
            futures = [pool.submit(_copy_one, i, dest_root, local, progress) for i in batch]
            done, pending = concurrent.futures.wait(
                futures, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()
            for f in done:
                entry = f.result()
                results[entry.path] = entry
    return results


def _copy_one(
    item: CopyItem, dest_root: str, local: threading.local, progress: Progress | None
) -> FileEntry:
    buf = getattr(local, 'buf', None)
    if buf is None:
        buf = local.buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    digest = hashlib.sha256()
    written = 0
    dest = os.path.join(dest_root, item.dest)
    with open(item.src, 'rb', buffering=0) as src, open(dest, 'xb', buffering=0) as out:
        before = os.fstat(src.fileno())
        while n := src.readinto(buf):
            chunk = view[:n]
            digest.update(chunk)
            _write_all(out, chunk)
            written += n
            if progress is not None:
                progress.add_bytes(n)
        after = os.fstat(src.fileno())
    if (
        written != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        raise IntegrityError(
            f'source file {item.src!r} changed while it was copied '
            f'(size {before.st_size} -> {after.st_size}, read {written} bytes); '
            'export a model that is no longer being written'
        )
    if progress is not None:
        progress.file_done(item.dest)
    return FileEntry(path=item.dest, size=written, sha256=digest.hexdigest())


def _write_all(out, chunk: memoryview) -> None:
    while chunk:
        n = out.write(chunk)
        chunk = chunk[n:]


def hash_tree(
    root: str, *, skip: Collection[str] = (), workers: int | None = None
) -> dict[str, FileEntry]:
    """Hashes the files under `root` but `skip` (for files TensorFlow wrote itself)."""
    items = plan_tree(root, exclude=skip)

    def one(item: CopyItem) -> FileEntry:
        size, sha256 = hash_file(item.src)
        return FileEntry(path=item.dest, size=size, sha256=sha256)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return {e.path: e for e in pool.map(one, items)}
