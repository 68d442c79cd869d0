"""The signing step: the digests a signature needs, read beside the serving checks; the
signature written into the staging area before it is verified and published.

The signature is OpenSSF Model Signing's `files` serialization, every file's
whole-file SHA-256 (storage/signing.py says why not `shards`). A file of at most
one manifest chunk has that digest in its manifest entry already. A larger one is
read once more, from its staged copy (on a local store from the disk: the copy
writes large files with O_DIRECT), never from the source: in a thread started as
soon as the staged files hold their final bytes, so the read overlaps the copy's
last hashing and the serving checks instead of following them.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping
from typing import Any

from final_exporter.common import keys
from final_exporter.storage.base import Staging, Store
from final_exporter.storage.signing import (
    SignerLoading,
    file_digests,
    read_for_signing,
    whole_file_sha256,
)
from final_exporter.storage.types import FileEntry


class SigningStep:
    """Signs one staged export with the signer `plan.plan_export` checked and began loading.

    Use as a context manager: leaving it waits for the reading thread, so a failed
    export's staging area is removed only once nothing reads it.
    """

    def __init__(self, signer: SignerLoading, store: Store, staging: Staging) -> None:
        self._signer, self._store, self._staging = signer, store, staging
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._read: concurrent.futures.Future | None = None

    def __enter__(self) -> SigningStep:
        # The key's load holds the GIL: started now, it runs while this thread waits for
        # the copy (SignerLoading says why not earlier).
        self._signer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def lineage(self) -> dict[str, Any]:
        """Who signs, for the sealed manifest's lineage (so the signature covers it too).

        Raises:
            InvalidInputError: for what the signer's full load found wrong with the key.
        """
        return {keys.SIGNING_LINEAGE_KEY: self._signer.result().identity.to_lineage()}

    def start_reading(self, sizes: Mapping[str, int]) -> None:
        """Starts reading the staged files of several chunks for their whole-file SHA-256,
        in a thread of its own; called once every file in `sizes` holds its final bytes,
        while the copy may still be hashing them.

        Raises:
            InvalidInputError: for what the signer's full load found wrong with the key,
                before the serving checks load the model for nothing.
        """
        self._signer.result()
        paths = read_for_signing(sizes)
        if not paths:
            return
        # The thread only hashes, through the store that staged the files: it imports
        # nothing beside the checks' TensorFlow import (see serving_checks.import_tensorflow).
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix='final-exporter-sign'
        )
        self._read = self._pool.submit(whole_file_sha256, self._store, self._staging.path, paths)

    def sign(self, files: Mapping[str, FileEntry], manifest_data: bytes, model_name: str) -> None:
        """Writes the signature over `files` and the manifest into the staging area.

        Raises:
            IntegrityError: if a staged file changed size before it was read.
            OSError: if reading or writing fails; nothing may be published.
        """
        read = self._read.result() if self._read is not None else None
        digests = file_digests(files.values(), self._store, self._staging.path, read)
        signature = self._signer.result().sign(digests, manifest_data, model_name=model_name)
        self._store.write_export_file(self._staging, keys.SIGNATURE_RELPATH, signature)
