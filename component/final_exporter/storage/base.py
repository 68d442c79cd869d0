"""The storage interface: every operation the exporter and the lifecycle need from a store.

A store holds export bases: `<export_base>/<name>/` with numeric version folders
(or prefixes) that TensorFlow Serving loads, staging areas beside them that it
never loads, and the `models.config` label file. The export core, retention,
labels, `list`, `verify` and `rollback` are written once against `Store`; a
local folder tree (`local.py`), GCS and S3 (`bucket.py` over `gcs.py` /
`s3.py`) implement it. Paths are strings in the store's own form: a local path,
or a full `gs://` / `s3://` URI.

How each store keeps the promises is its own business: a local store publishes
with one `renameat2(RENAME_NOREPLACE)`, a bucket with a claim and server-side
copies that put `saved_model.pb` last; a local store serialises label writers
with `flock`, a bucket with a leased lock object and compare-and-swap writes.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from final_exporter.common.progress import Progress
from final_exporter.storage.manifest import FileEntry
from final_exporter.storage.transfer import CopyItem


def is_version_name(name: str) -> bool:
    """True for the folder names TensorFlow Serving loads: decimal integers."""
    return name.isascii() and name.isdigit()


@dataclasses.dataclass
class Staging:
    """A staging area one exporter owns while it builds one export.

    Attributes:
        path: Where the export's files are staged (a hidden folder or prefix beside
            the versions, never loaded by a server).
        model_base: `<export_base>/<name>`, where the export is published.
        local_dir: A local folder holding the export's bytes as they will be
            published, for TensorFlow and the serving checks. The staging folder
            itself on a local store; a private temporary folder on a bucket.
        handle: The store's hold on the area (a lock, a lease).
        staged: The store's record of each staged file (what the server must report).
    """

    path: str
    model_base: str
    local_dir: str
    handle: Any = None
    staged: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Versioned:
    """A small file's bytes with the token a compare-and-swap write must match.

    `data` is None when the file does not exist; writing with that token then
    means "create only if still absent".
    """

    data: bytes | None
    token: Any


class Store(abc.ABC):
    """One kind of storage. See the module docstring."""

    # --- Paths and reading ------------------------------------------------

    @abc.abstractmethod
    def join(self, base: str, *parts: str) -> str:
        """`base/part/...` in this store's path form."""

    @abc.abstractmethod
    def list_files(self, root: str) -> dict[str, int]:
        """{POSIX path relative to `root`: size} of every file under `root`."""

    @abc.abstractmethod
    def children(self, folder: str) -> set[str]:
        """Names of the entries directly under `folder` (empty when it is missing)."""

    @abc.abstractmethod
    def is_file(self, path: str) -> bool:
        """True when a file (object) exists at `path`."""

    def absolute(self, path: str) -> str:
        """`path` as a server elsewhere names it (a local path made absolute; a URI as it is)."""
        return path

    @abc.abstractmethod
    def size(self, path: str) -> int:
        """A file's size in bytes."""

    def is_readable(self, path: str) -> bool:
        """Whether this process may read the file at `path` (a bucket's say so by listing it)."""
        return self.is_file(path)

    def local_tree(self, root: str) -> contextlib.AbstractContextManager[str]:
        """A local folder with the files under `root` for the duration of the block.

        A bucket downloads them into a temporary folder, removed afterwards.
        """
        return _downloaded_tree(self, root)

    @abc.abstractmethod
    def read_bytes(self, path: str) -> bytes:
        """A small file's bytes.

        Raises:
            FileNotFoundError: if there is none.
        """

    @abc.abstractmethod
    def digest_file(self, path: str, kind: str, chunk_bytes: int) -> tuple[int, str]:
        """(size, hex digest) of a file, streamed: the manifest's `kind` of digest
        (`sha256`, or `chunked_sha256` over `chunk_bytes` chunks)."""

    @abc.abstractmethod
    def download(self, path: str, local_path: str, progress: Progress | None = None) -> FileEntry:
        """Copies one file to a new local file, hashing it in the same read."""

    def plan_tree(self, root: str, exclude: Sequence[str] = ()) -> list[CopyItem]:
        """Every file under `root` as a copy source (its path here) and destination."""
        return [
            CopyItem(self.join(root, *rel.split('/')), rel, size)
            for rel, size in sorted(self.list_files(root).items())
            if rel not in exclude
        ]

    def list_versions(self, model_base: str) -> list[int]:
        """The numeric versions under `model_base`, ascending."""
        return sorted(int(n) for n in self.children(model_base) if is_version_name(n))

    # --- Staging and publishing ----------------------------------------------

    @abc.abstractmethod
    def begin_staging(self, model_base: str) -> Staging:
        """Creates a fresh staging area beside the versions, owned by this process.

        Raises:
            InvalidInputError: if `model_base` cannot be written to.
        """

    @abc.abstractmethod
    def remove_abandoned_staging(self, model_base: str) -> list[str]:
        """Removes what exporters that are provably gone left behind; never a live one's."""

    @abc.abstractmethod
    def stage(
        self,
        staging: Staging,
        items: Sequence[CopyItem],
        *,
        method: str,
        workers: int | None,
        progress: Progress | None,
        keep_local: bool,
        copier: Callable[[list[CopyItem], str], dict[str, FileEntry]] | None = None,
        meanwhile: Callable[[], None] | None = None,
        when_complete: Callable[[], None] | None = None,
    ) -> dict[str, FileEntry]:
        """Copies (or uploads) files into the staging area, hashing every byte once.

        Args:
            staging: The staging area.
            items: Sources (local paths or URIs of any store) and destinations.
            method: The local copy method (`auto`, `copy`, `hardlink`).
            workers: Transfer threads; a default when None.
            progress: Counts bytes and files.
            keep_local: Also make every staged file readable under
                `staging.local_dir` (for the serving checks).
            copier: Replaces the local thread-pool copy (the Beam fan-out).
            meanwhile: Called once, in this thread, while the transfer's own
                threads (which import nothing) move the bytes: the TensorFlow
                import of the checks.
            when_complete: Called once, in this thread, when every staged file
                holds its final bytes (under `staging.local_dir` with
                `keep_local`), possibly while they are still being hashed: the
                serving checks run there, overlapping the hashing. What it
                raises fails the staging.

        Returns:
            {destination: FileEntry} with the size and SHA-256 of what was staged.
        """

    @abc.abstractmethod
    def stage_local_files(self, staging: Staging, paths: Sequence[str]) -> dict[str, FileEntry]:
        """Stages files TensorFlow or the checks wrote under `staging.local_dir`."""

    @abc.abstractmethod
    def write_manifest(self, staging: Staging, data: bytes) -> None:
        """Writes the manifest's bytes into the staging area."""

    @abc.abstractmethod
    def verify_staged(
        self, staging: Staging, manifest: Mapping[str, Any], known: Mapping[str, FileEntry]
    ) -> None:
        """Checks the staging area holds exactly the manifest's files, as hashed while staging.

        Raises:
            IntegrityError: naming every missing, extra or different file.
        """

    @abc.abstractmethod
    def flush_for_reread(self, staging: Staging) -> None:
        """Makes a re-read of the staged files come from the storage, not from memory."""

    @abc.abstractmethod
    def publish(self, staging: Staging, clock: Callable[[], float]) -> tuple[int, str]:
        """Makes the staged export the next free version; returns (version, its path)."""

    @abc.abstractmethod
    def discard(self, staging: Staging) -> None:
        """Removes a staging area that was not published, and releases it."""

    @abc.abstractmethod
    def remove_version(self, model_base: str, version: int) -> bool:
        """Removes a published version so that no server loads a part of it.

        Returns:
            False when it was already gone.
        """

    def finish_removals(self, model_base: str) -> None:
        """Completes version removals a dead run left unfinished (nothing to do on a bucket,
        where a version stops loading once its `saved_model.pb` is gone)."""
        return None

    @abc.abstractmethod
    def remove_incomplete_version(self, model_base: str, version: int) -> None:
        """Removes a version whose publishing was cut short (its own retry's leftovers)."""

    # --- The label file -------------------------------------------------------

    @abc.abstractmethod
    def lock(self, model_base: str) -> contextlib.AbstractContextManager[None]:
        """Serialises label writers and retention on one model base."""

    @abc.abstractmethod
    def read_versioned(self, path: str) -> Versioned:
        """A small file and its compare-and-swap token."""

    @abc.abstractmethod
    def write_versioned(self, path: str, data: bytes, token: Any) -> bool:
        """Replaces a small file only if it is still as read with `token`; False if not."""


@contextlib.contextmanager
def _downloaded_tree(store: Store, root: str) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix='final-exporter-source-') as folder:
        for rel in store.list_files(root):
            local = os.path.join(folder, *rel.split('/'))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            store.download(store.join(root, *rel.split('/')), local)
        yield folder
