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
copies that put last the files its caller named (`StoreOptions.publish_last`:
a SavedModel's graph file); a local store serialises label writers with `flock`,
a bucket with a leased lock object and compare-and-swap writes.

A caller resolves the store of a path once (`stores.store_for`, or
`stores.resolve_model_base` for a `ModelBase`) and passes it down.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from final_exporter.common.progress import Progress
from final_exporter.storage.types import CopyItem, FileEntry, StageRequest, Versioned


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
            published, for TensorFlow and the serving checks: the staging folder
            itself on a local store, a private temporary folder on a bucket. None
            when the staging was begun without `local_view`.
        handle: The store's hold on the area (a lock, a lease).
        staged: The store's record of each staged file (what the server must report).
    """

    path: str
    model_base: str
    local_dir: str | None
    handle: Any = None
    staged: dict[str, Any] = dataclasses.field(default_factory=dict)


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

    def local_path(self, path: str) -> str | None:
        """`path` as a file path of this machine that TensorFlow can open; None when it has
        none (an object in a bucket)."""
        return None

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
    def begin_staging(self, model_base: str, *, local_view: bool) -> Staging:
        """Creates a fresh staging area beside the versions, owned by this process.

        Args:
            model_base: Where the export will be published.
            local_view: Whether TensorFlow or the checks read the staged files:
                then `Staging.local_dir` holds them, else it is None.

        Raises:
            InvalidInputError: if `model_base` cannot be written to.
        """

    @abc.abstractmethod
    def remove_abandoned_staging(self, model_base: str) -> list[str]:
        """Removes what exporters that are provably gone left behind; never a live one's."""

    @abc.abstractmethod
    def stage(self, staging: Staging, request: StageRequest) -> dict[str, FileEntry]:
        """Copies (or uploads) files into the staging area, hashing every byte once.

        Every staged file is also readable under `staging.local_dir`, when the
        staging has one. How local files are copied (the method, the threads, a
        Beam fan-out) and which files go last is the store's own configuration
        (`stores.StoreOptions`).

        Returns:
            {destination: FileEntry} with the size and SHA-256 of what was staged.
        """

    @abc.abstractmethod
    def stage_local_files(self, staging: Staging, paths: Sequence[str]) -> dict[str, FileEntry]:
        """Stages files TensorFlow or the checks wrote under `staging.local_dir` (which the
        staging must have: begun with `local_view`)."""

    @abc.abstractmethod
    def write_export_file(self, staging: Staging, relpath: str, data: bytes) -> None:
        """Writes a file the exporter makes itself (the manifest, the signature) into the
        staging area, at `relpath` (POSIX, relative to the export root); never replaces one."""

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
        where a version stops loading once its `publish_last` files are gone)."""
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


@dataclasses.dataclass(frozen=True)
class ModelBase:
    """`<export_base>/<name>` and the store that holds it: resolved once, passed down.

    Attributes:
        store: The store (`stores.resolve_model_base` picks it).
        path: The model base in the store's own path form.
    """

    store: Store
    path: str

    def join(self, *parts: str) -> str:
        """`<model_base>/part/...` in the store's path form."""
        return self.store.join(self.path, *parts)

    def version_dir(self, version: int) -> str:
        """Where version `version` is (or would be) published."""
        return self.store.join(self.path, str(version))

    def list_versions(self) -> list[int]:
        """The numeric versions, ascending."""
        return self.store.list_versions(self.path)


@contextlib.contextmanager
def _downloaded_tree(store: Store, root: str) -> Iterator[str]:
    import tempfile  # Only for a model in a bucket: kept out of every command's start-up.

    with tempfile.TemporaryDirectory(prefix='final-exporter-source-') as folder:
        for rel in store.list_files(root):
            local = os.path.join(folder, *rel.split('/'))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            store.download(store.join(root, *rel.split('/')), local)
        yield folder
