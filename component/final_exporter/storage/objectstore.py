"""Object clients (`gs://`, `s3://`): the few SDK calls the bucket store needs.

The official SDKs (`google-cloud-storage`, `boto3`) are used rather than
`gcsfs`/`s3fs`: the publish protocol needs conditional creates
(`ifGenerationMatch=0`, `If-None-Match: *`), server-side copies and the
server's MD5/ETag of each object, which the SDKs expose directly and the
fsspec layers do not expose uniformly (and recent `gcsfs` probes the bucket
type over gRPC, which hangs against emulators). Both SDKs take credentials
from the usual places (application default credentials; the AWS environment,
profile or instance role) and honour the standard endpoint variables:
`STORAGE_EMULATOR_HOST` for GCS and `AWS_ENDPOINT_URL` for S3 (MinIO, moto).
Nothing here logs credentials or request headers.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import io
import os
from collections.abc import Iterable
from typing import Any, BinaryIO

from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.common.progress import Progress
from final_exporter.storage.manifest import ChunkedHasher
from final_exporter.storage.types import SHA256, FileEntry, Versioned

SCHEMES = ('gs', 's3')
PART_BYTES = 8 * 1024 * 1024
# Uploads: one request for files up to this size, parts of this size above it. Each
# upload thread holds at most one such buffer; fewer, larger requests beat many small
# ones on every backend measured (benchmarks/object_store_benchmark.py).
UPLOAD_PART_BYTES = 32 * 1024 * 1024


_URI_PREFIXES = tuple(f'{s}://' for s in SCHEMES)


def is_object_store_uri(path: str) -> bool:
    return path.startswith(_URI_PREFIXES)  # Asked per file: one C call (20,000 files: 20 ms less).


def split_uri(uri: str) -> tuple[str, str, str]:
    """`gs://bucket/a/b` -> ('gs', 'bucket', 'a/b').

    Raises:
        InvalidInputError: for a URI without a bucket.
    """
    scheme, _, rest = uri.partition('://')
    bucket, _, key = rest.partition('/')
    if scheme not in SCHEMES or not bucket:
        raise InvalidInputError(f'{uri!r} is not a gs://BUCKET/... or s3://BUCKET/... URI')
    return scheme, bucket, key


def join(base: str, *parts: str) -> str:
    return '/'.join([base.rstrip('/'), *(p.strip('/') for p in parts if p)])


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What the server reports about one object.

    Attributes:
        size: Bytes.
        checksum: Its MD5-based checksum (GCS base64 MD5; S3 ETag).
        token: What pins this exact content (GCS generation; S3 ETag).
        portable: Whether a server-side copy reports the same checksum (GCS MD5 of
            a non-composite object; S3 ETag of a single-part object).
    """

    size: int
    checksum: str
    token: Any = None
    portable: bool = False


@dataclasses.dataclass(frozen=True)
class Uploaded:
    """One uploaded file: size and SHA-256 from the single read, and the checksum the
    server must report for it (GCS: base64 MD5; S3: the ETag, multipart form included).

    A file uploaded in parallel parts of the manifest's chunk size has its
    `chunked_sha256` (manifest.py) instead, hashed part by part, and `sha256` ''.
    """

    size: int
    sha256: str
    expected_checksum: str
    chunked_sha256: str = ''


class HashingReader(io.RawIOBase):
    """Reads a file once for an upload, hashing every byte the first time it is read.

    Upload libraries may seek back and re-send a chunk after a transient error;
    bytes already hashed are not hashed twice.
    """

    def __init__(self, f: BinaryIO, progress: Progress | None = None):
        self._f = f
        self._progress = progress
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5()
        self.hashed = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, b) -> int:
        pos = self._f.tell()
        n = self._f.readinto(b)
        if n and pos + n > self.hashed:
            fresh = memoryview(b)[max(0, self.hashed - pos) : n]
            self.sha256.update(fresh)
            self.md5.update(fresh)
            self.hashed = pos + n
            if self._progress is not None:
                self._progress.add_bytes(len(fresh))
        return n


class ObjectClient(abc.ABC):
    """The SDK calls the bucket store needs. Paths are full `scheme://` URIs."""

    scheme: str

    def same_store(self, uri: str) -> bool:
        """Whether `uri` is on this client's store (a server-side copy can reach it)."""
        return uri.startswith(f'{self.scheme}://')

    @abc.abstractmethod
    def upload_file(self, local_path: str, uri: str, progress: Progress | None) -> Uploaded:
        """Uploads a local file, reading it once; returns its hashes."""

    @abc.abstractmethod
    def upload_bytes(self, data: bytes, uri: str, *, overwrite: bool = False) -> Uploaded:
        """Uploads a small object from memory (only where none exists unless `overwrite`)."""

    @abc.abstractmethod
    def read_with_token(self, uri: str) -> Versioned:
        """A small object and the token a conditional write must match (None data if absent)."""

    @abc.abstractmethod
    def put_if_token(self, uri: str, data: bytes, token: Any) -> bool:
        """Writes `uri` only if it still has `token` (None: only if absent); False if not."""

    @abc.abstractmethod
    def list(self, prefix_uri: str) -> dict[str, ObjectInfo]:
        """{uri: info} of every object under `prefix_uri/`."""

    @abc.abstractmethod
    def children(self, prefix_uri: str) -> set[str]:
        """Names of the immediate "folders" and objects under `prefix_uri/`."""

    @abc.abstractmethod
    def copy(self, src_uri: str, dst_uri: str, src_token: Any = None) -> None:
        """Server-side copy (of exactly `src_token`'s content when given); no bytes pass here."""

    @abc.abstractmethod
    def delete(self, uris: Iterable[str]) -> None:
        """Deletes objects; missing ones are ignored."""

    @abc.abstractmethod
    def open_read(self, uri: str, token: Any = None) -> BinaryIO:
        """A streaming reader (of exactly `token`'s content when given)."""

    @abc.abstractmethod
    def stat(self, uri: str) -> ObjectInfo | None:
        """The object's info, or None if there is no object at `uri`."""

    def exists(self, uri: str) -> bool:
        return self.stat(uri) is not None

    def read_bytes(self, uri: str) -> bytes:
        """A small object's bytes (FileNotFoundError if there is none)."""
        data = self.read_with_token(uri).data
        if data is None:
            raise FileNotFoundError(uri)
        return data

    def download(
        self, uri: str, local_path: str | None, progress: Progress | None, token: Any
    ) -> FileEntry:
        """Streams an object once, hashing it as the manifest does, into a new local file
        (or nowhere)."""
        hasher = ChunkedHasher()
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(self.open_read(uri, token))
            out = stack.enter_context(open(local_path, 'xb')) if local_path else None
            while chunk := src.read(PART_BYTES):
                hasher.update(chunk)
                if out is not None:
                    out.write(chunk)
                if progress is not None:
                    progress.add_bytes(len(chunk))
        return hasher.entry(uri)

    def digest(self, uri: str, kind: str, chunk_bytes: int) -> tuple[int, str]:
        """(size, hex) of an object, streamed: `sha256` or `chunked_sha256` (manifest.py)."""
        if kind == SHA256:
            digest, size = hashlib.sha256(), 0
            with self.open_read(uri) as src:
                while chunk := src.read(PART_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            return size, digest.hexdigest()
        hasher = ChunkedHasher(chunk_bytes)
        with self.open_read(uri) as src:
            while chunk := src.read(PART_BYTES):
                hasher.update(chunk)
        entry = hasher.entry(uri)
        return entry.size, entry.digest[1]


def check_unchanged(local_path: str, before: os.stat_result, read: int) -> None:
    after = os.stat(local_path)
    if read != before.st_size or (after.st_size, after.st_mtime_ns) != (
        before.st_size,
        before.st_mtime_ns,
    ):
        raise IntegrityError(
            f'source file {local_path!r} changed while it was uploaded '
            f'(size {before.st_size} -> {after.st_size}, read {read} bytes); '
            'export a model that is no longer being written'
        )
