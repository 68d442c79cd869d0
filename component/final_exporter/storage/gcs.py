"""Google Cloud Storage through `google-cloud-storage` (see objectstore.py for why)."""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from collections.abc import Iterable
from typing import Any, BinaryIO

from final_exporter.common.errors import IntegrityError
from final_exporter.common.progress import Progress
from final_exporter.storage.objectstore import (
    PART_BYTES,
    UPLOAD_PART_BYTES,
    HashingReader,
    ObjectClient,
    ObjectInfo,
    Uploaded,
    check_unchanged,
    split_uri,
)
from final_exporter.storage.types import Versioned

# How many reads in a row may fail their checksum before the read is an error.
CORRUPT_READ_ATTEMPTS = 3


class GCSClient(ObjectClient):
    """GCS; `STORAGE_EMULATOR_HOST` points it at an emulator (fake-gcs-server).

    Tokens are object generations: a conditional write or a pinned read or copy
    names the exact content it expects.
    """

    scheme = 'gs'

    def __init__(self) -> None:
        self._local = threading.local()

    def _client(self):
        # One client per thread: the client's HTTP session is not documented as thread-safe.
        client = getattr(self._local, 'client', None)
        if client is None:
            from google.cloud import storage

            client = self._local.client = storage.Client()
        return client

    def _blob(self, uri: str):
        _, bucket, key = split_uri(uri)
        return self._client().bucket(bucket).blob(key, chunk_size=UPLOAD_PART_BYTES)

    def read_with_token(self, uri: str) -> Versioned:
        from google.api_core import exceptions

        _, bucket, key = split_uri(uri)
        corrupt = 0
        while True:
            blob = self._client().bucket(bucket).get_blob(key)
            if blob is None:
                return Versioned(None, None)
            try:
                # The bytes of exactly the generation the token names.
                return Versioned(
                    blob.download_as_bytes(if_generation_match=blob.generation), blob.generation
                )
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                continue  # Replaced between the two calls: read the new one.
            except _data_corruption():
                # Bytes that fail the server's checksum: a damaged transfer, or (seen with
                # fake-gcs-server) an object replaced while it was read. A small record, so
                # read it again; only a fault that persists is an error.
                corrupt += 1
                if corrupt == CORRUPT_READ_ATTEMPTS:
                    raise IntegrityError(
                        f'{uri}: the bytes read failed the checksum the server sent, '
                        f'{corrupt} times in a row; expected bytes matching it'
                    ) from None

    def put_if_token(self, uri: str, data: bytes, token: Any) -> bool:
        from google.api_core import exceptions

        try:
            self._blob(uri).upload_from_string(data, if_generation_match=token or 0)
        except exceptions.PreconditionFailed:
            return False
        return True

    def upload_file(self, local_path: str, uri: str, progress: Progress | None) -> Uploaded:
        before = os.stat(local_path)
        blob = self._blob(uri)
        with open(local_path, 'rb') as f:
            reader = HashingReader(f, progress)
            blob.upload_from_file(reader, size=before.st_size, if_generation_match=0)
        check_unchanged(local_path, before, reader.hashed)
        expected = base64.b64encode(reader.md5.digest()).decode()
        if blob.md5_hash is not None and blob.md5_hash != expected:
            raise IntegrityError(
                f'{uri} was stored with MD5 {blob.md5_hash}, but {expected} was sent'
            )
        return Uploaded(before.st_size, reader.sha256.hexdigest(), expected)

    def upload_bytes(self, data: bytes, uri: str, *, overwrite: bool = False) -> Uploaded:
        import hashlib

        self._blob(uri).upload_from_string(data, if_generation_match=None if overwrite else 0)
        return Uploaded(
            len(data),
            hashlib.sha256(data).hexdigest(),
            base64.b64encode(hashlib.md5(data).digest()).decode(),
        )

    def list(self, prefix_uri: str) -> dict[str, ObjectInfo]:
        scheme, bucket, key = split_uri(prefix_uri.rstrip('/') + '/')
        return {
            f'{scheme}://{bucket}/{b.name}': _info(b)
            for b in self._client().list_blobs(bucket, prefix=key)
        }

    def children(self, prefix_uri: str) -> set[str]:
        _, bucket, key = split_uri(prefix_uri.rstrip('/') + '/')
        pages = self._client().list_blobs(bucket, prefix=key, delimiter='/')
        names = {b.name[len(key) :] for b in pages}  # Consumes the pages, filling prefixes.
        names |= {p[len(key) :].rstrip('/') for p in pages.prefixes}
        return names

    def copy(self, src_uri: str, dst_uri: str, src_token: Any = None) -> None:
        _, bucket, key = split_uri(src_uri)
        src = self._client().bucket(bucket).blob(key, generation=src_token)
        dst = self._blob(dst_uri)
        # rewrite (not copyTo) works for any size and across locations; loop until done.
        token, _, _ = dst.rewrite(src)
        while token is not None:
            token, _, _ = dst.rewrite(src, token=token)

    def delete(self, uris: Iterable[str]) -> None:
        from google.api_core import exceptions

        for uri in uris:
            with contextlib.suppress(exceptions.NotFound):
                self._blob(uri).delete()

    def open_read(self, uri: str, token: Any = None) -> BinaryIO:
        _, bucket, key = split_uri(uri)
        blob = self._client().bucket(bucket).blob(key, generation=token)
        return blob.open('rb', chunk_size=PART_BYTES)

    def stat(self, uri: str) -> ObjectInfo | None:
        _, bucket, key = split_uri(uri)
        blob = self._client().bucket(bucket).get_blob(key)
        return None if blob is None else _info(blob)


def _data_corruption() -> type[Exception]:
    """The client library's checksum-failure error, which moved in google-cloud-storage 3."""
    try:
        from google.cloud.storage.exceptions import DataCorruption
    except ImportError:  # google-cloud-storage 2.x
        from google.resumable_media import DataCorruption
    return DataCorruption


def _info(blob) -> ObjectInfo:
    # A composite object (parallel composite upload) has a CRC32C but no MD5; its
    # checksum then says nothing, and a copy's cannot be compared with it.
    return ObjectInfo(
        blob.size, blob.md5_hash or '', token=blob.generation, portable=bool(blob.md5_hash)
    )
