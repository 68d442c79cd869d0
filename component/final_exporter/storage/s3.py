"""Amazon S3 and S3-compatible stores (MinIO) through `boto3` (see objectstore.py for why)."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import threading
from collections.abc import Iterable
from typing import Any, BinaryIO

from final_exporter.common.errors import IntegrityError
from final_exporter.common.progress import Progress
from final_exporter.storage.manifest import CHUNK_BYTES
from final_exporter.storage.objectstore import (
    UPLOAD_PART_BYTES,
    ObjectClient,
    ObjectInfo,
    Uploaded,
    check_unchanged,
    split_uri,
)
from final_exporter.storage.types import Versioned

# Parts of one large file in flight at once, and across all files: each holds an
# UPLOAD_PART_BYTES buffer, so this bounds the upload memory (8 x 32 MiB).
_PARTS_PER_FILE = 4
_PART_SLOTS = threading.BoundedSemaphore(8)
# S3's own limit for one CopyObject; above it the managed copy uses UploadPartCopy. Below
# it one CopyObject keeps a single-part object's ETag (its MD5) comparable with the copy's.
_COPY_OBJECT_MAX = 5 * 1024**3
# A part's SHA-256 is a manifest chunk's digest only if the sizes agree.
assert UPLOAD_PART_BYTES == CHUNK_BYTES, 'S3 parts must be manifest chunks'


class S3Client(ObjectClient):
    """S3; `AWS_ENDPOINT_URL` points it at MinIO or a local server.

    Tokens are ETags: conditional writes (`If-Match`, `If-None-Match: *`), pinned
    reads (`If-Match`) and pinned copies (`x-amz-copy-source-if-match`).
    """

    scheme = 's3'

    def __init__(self) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        # boto3 clients are thread-safe; one is shared by the copy threads.
        self._s3 = boto3.client('s3')
        self._copy_config = TransferConfig(
            multipart_threshold=_COPY_OBJECT_MAX, multipart_chunksize=512 * 1024**2
        )

    def read_with_token(self, uri: str) -> Versioned:
        from botocore.exceptions import ClientError

        _, bucket, key = split_uri(uri)
        try:
            got = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get('Error', {}).get('Code') in ('NoSuchKey', '404'):
                return Versioned(None, None)
            raise
        return Versioned(got['Body'].read(), got['ETag'])

    def put_if_token(self, uri: str, data: bytes, token: Any) -> bool:
        from botocore.exceptions import ClientError

        _, bucket, key = split_uri(uri)
        condition = {'IfMatch': token} if token else {'IfNoneMatch': '*'}
        try:
            self._s3.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        except ClientError as e:
            if e.response.get('ResponseMetadata', {}).get('HTTPStatusCode') in (409, 412):
                return False
            raise
        return True

    def upload_file(self, local_path: str, uri: str, progress: Progress | None) -> Uploaded:
        _, bucket, key = split_uri(uri)
        before = os.stat(local_path)
        sha = hashlib.sha256()
        part_md5s: list[bytes] = []
        read = 0
        with open(local_path, 'rb') as f:
            first = f.read(UPLOAD_PART_BYTES + 1)
            if len(first) <= UPLOAD_PART_BYTES:
                sha.update(first)
                read = len(first)
                md5 = hashlib.md5(first).digest()
                etag = self._put(bucket, key, first, md5)
                expected = md5.hex()
            else:
                first = b''  # Parts are read again one at a time: bounded memory.
                f.seek(0)
                upload_id = self._s3.create_multipart_upload(Bucket=bucket, Key=key)['UploadId']
                try:
                    futures = []
                    # Parts are read in order, and hashed and uploaded in parallel: each
                    # part is one manifest chunk, so its SHA-256 is that chunk's digest.
                    with concurrent.futures.ThreadPoolExecutor(_PARTS_PER_FILE) as pool:
                        while chunk := f.read(UPLOAD_PART_BYTES):
                            read += len(chunk)
                            _PART_SLOTS.acquire()
                            futures.append(
                                pool.submit(
                                    self._upload_part,
                                    bucket,
                                    key,
                                    upload_id,
                                    len(futures) + 1,
                                    chunk,
                                    progress,
                                )
                            )
                    done = [fut.result() for fut in futures]
                    parts = [
                        {'ETag': etag, 'PartNumber': number}
                        for number, (etag, _, _) in enumerate(done, start=1)
                    ]
                    part_md5s = [md5 for _, md5, _ in done]
                    chunked = hashlib.sha256(b''.join(digest for _, _, digest in done))
                    etag = self._s3.complete_multipart_upload(
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload_id,
                        MultipartUpload={'Parts': parts},
                    )['ETag']
                except BaseException:
                    self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
                    raise
                expected = f'{hashlib.md5(b"".join(part_md5s)).hexdigest()}-{len(part_md5s)}'
        if progress is not None and not part_md5s:
            progress.add_bytes(read)
        check_unchanged(local_path, before, read)
        if etag.strip('"') != expected:
            raise IntegrityError(f'{uri} was stored with ETag {etag}, but {expected} was expected')
        if part_md5s:
            return Uploaded(read, '', expected, chunked_sha256=chunked.hexdigest())
        return Uploaded(read, sha.hexdigest(), expected)

    def _upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        data: bytes,
        progress: Progress | None,
    ) -> tuple[str, bytes, bytes]:
        """Uploads one part; returns its ETag, MD5 and SHA-256 (hashed in this thread)."""
        try:
            md5 = hashlib.md5(data).digest()
            digest = hashlib.sha256(data).digest()
            etag = self._s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=base64.b64encode(md5).decode(),
            )['ETag']
        finally:
            _PART_SLOTS.release()
        if progress is not None:
            progress.add_bytes(len(data))
        return etag, md5, digest

    def _put(self, bucket: str, key: str, data: bytes, md5: bytes) -> str:
        return self._s3.put_object(
            Bucket=bucket, Key=key, Body=data, ContentMD5=base64.b64encode(md5).decode()
        )['ETag']

    def upload_bytes(self, data: bytes, uri: str, *, overwrite: bool = False) -> Uploaded:
        del overwrite  # Staging keys are fresh; a PUT replaces only the refreshed lease.
        _, bucket, key = split_uri(uri)
        md5 = hashlib.md5(data).digest()
        self._put(bucket, key, data, md5)
        return Uploaded(len(data), hashlib.sha256(data).hexdigest(), md5.hex())

    def _pages(self, bucket: str, prefix: str, **kwargs):
        return self._s3.get_paginator('list_objects_v2').paginate(
            Bucket=bucket, Prefix=prefix, **kwargs
        )

    def list(self, prefix_uri: str) -> dict[str, ObjectInfo]:
        scheme, bucket, key = split_uri(prefix_uri.rstrip('/') + '/')
        return {
            f'{scheme}://{bucket}/{o["Key"]}': _info(o['Size'], o['ETag'])
            for page in self._pages(bucket, key)
            for o in page.get('Contents', [])
        }

    def children(self, prefix_uri: str) -> set[str]:
        _, bucket, key = split_uri(prefix_uri.rstrip('/') + '/')
        names: set[str] = set()
        for page in self._pages(bucket, key, Delimiter='/'):
            names |= {o['Key'][len(key) :] for o in page.get('Contents', [])}
            names |= {p['Prefix'][len(key) :].rstrip('/') for p in page.get('CommonPrefixes', [])}
        return names

    def copy(self, src_uri: str, dst_uri: str, src_token: Any = None) -> None:
        _, src_bucket, src_key = split_uri(src_uri)
        _, bucket, key = split_uri(dst_uri)
        # Managed copy: CopyObject, or UploadPartCopy above 5 GiB; server-side either way.
        self._s3.copy(
            {'Bucket': src_bucket, 'Key': src_key},
            bucket,
            key,
            ExtraArgs={'CopySourceIfMatch': src_token} if src_token else None,
            Config=self._copy_config,
        )

    def delete(self, uris: Iterable[str]) -> None:
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            _, bucket, key = split_uri(uri)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys.
                self._s3.delete_objects(
                    Bucket=bucket,
                    Delete={'Objects': [{'Key': k} for k in keys[i : i + 1000]], 'Quiet': True},
                )

    def open_read(self, uri: str, token: Any = None) -> BinaryIO:
        _, bucket, key = split_uri(uri)
        pinned = {'IfMatch': token} if token else {}
        return self._s3.get_object(Bucket=bucket, Key=key, **pinned)['Body']

    def stat(self, uri: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        _, bucket, key = split_uri(uri)
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get('ResponseMetadata', {}).get('HTTPStatusCode') == 404:
                return None
            raise
        return _info(head['ContentLength'], head['ETag'])


def _info(size: int, etag: str) -> ObjectInfo:
    # A multipart ETag ("<md5 of part md5s>-<parts>") depends on the part sizes, so a
    # copy made with other parts (or none) reports another one.
    plain = etag.strip('"')
    return ObjectInfo(size, plain, token=etag, portable='-' not in plain)
