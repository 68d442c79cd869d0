"""Digests of local files as a manifest records them (whole-file or chunked SHA-256)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os

from final_exporter.common.errors import IntegrityError
from final_exporter.storage import manifest
from final_exporter.storage.manifest import entry_from_chunks
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER
from final_exporter.storage.types import FileEntry

# One read of a file being hashed: the copy engine's buffer size.
_READ_BYTES = DEFAULT_TRANSFER.buffer_bytes


def sha256_file(path: str) -> tuple[int, str]:
    """(size, whole-file SHA-256 hex) of a local file, read in fixed-size pieces."""
    digest = hashlib.sha256()
    buf = bytearray(_READ_BYTES)
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
            buf = bytearray(min(_READ_BYTES, chunk_bytes))
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
