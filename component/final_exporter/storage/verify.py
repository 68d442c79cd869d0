"""Reading and verifying exports on any store (`final-exporter verify`, retries, labels)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.base import Store
from final_exporter.storage.manifest import (
    CHUNK_BYTES,
    VerifyReport,
    manifest_bytes,
    parse_manifest,
    verify_tree,
)
from final_exporter.storage.stores import store_for
from final_exporter.storage.types import SHA256, FileEntry


def read_manifest(export_dir: str, *, store: Store | None = None) -> tuple[dict[str, Any], str]:
    """Returns the manifest of an export (a folder or a bucket prefix) and its SHA-256.

    Args:
        export_dir: The export (version) folder or prefix.
        store: The store holding it, when the caller has resolved it already.

    Raises:
        InvalidInputError: if the export has no manifest.
        IntegrityError: if it is not a valid one.
    """
    store = store or store_for(export_dir)
    path = store.join(export_dir, *keys.MANIFEST_RELPATH.split('/'))
    try:
        data = store.read_bytes(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise InvalidInputError(
            f'{export_dir!r} has no {keys.MANIFEST_RELPATH}; it was not made by final-exporter'
        ) from None
    return parse_manifest(data, path), hashlib.sha256(data).hexdigest()


def verify_export(
    export_dir: str,
    manifest: Mapping[str, Any] | None = None,
    *,
    rehash: bool = True,
    known: Mapping[str, FileEntry] | None = None,
    store: Store | None = None,
) -> VerifyReport:
    """Checks an export (a folder or a bucket prefix) against its manifest.

    Args:
        export_dir: The export (version) folder or prefix.
        manifest: The manifest to check against; read from the export when None.
        rehash: Re-read every file and compare SHA-256. When False, compare the
            listing and sizes only, and the hashes in `known`.
        known: Hashes computed while the files were written (copy and hash in one
            read), compared with the manifest instead of re-reading the bytes.
        store: The store holding it, when the caller has resolved it already.

    Returns:
        A VerifyReport; `ok` is True when the export matches exactly.
    """
    store = store or store_for(export_dir)
    report = VerifyReport(export_dir=export_dir)
    if manifest is None:
        manifest, report.manifest_sha256 = read_manifest(export_dir, store=store)
    return verify_tree(store, export_dir, manifest, rehash=rehash, known=known, report=report)


def write_manifest(export_dir: str, manifest: Mapping[str, Any]) -> str:
    """Writes (or replaces) the manifest of an export folder or prefix; returns its SHA-256."""
    store = store_for(export_dir)
    data = manifest_bytes(manifest)
    path = store.join(export_dir, *keys.MANIFEST_RELPATH.split('/'))
    store.write_versioned(path, data, store.read_versioned(path).token)
    return hashlib.sha256(data).hexdigest()


def hash_file(path: str) -> tuple[int, str]:
    """(size, whole-file SHA-256 hex) of a file or object, streamed."""
    return store_for(path).digest_file(path, SHA256, CHUNK_BYTES)


def list_files(root: str) -> dict[str, int]:
    """{relative POSIX path: size} of the files (or objects) under `root`."""
    return store_for(root).list_files(root)
