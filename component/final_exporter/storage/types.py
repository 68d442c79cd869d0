"""The storage floor: the data types the `Store` interface and the copy engines share.

Nothing here imports from the rest of `storage/`, so the interface (`base.py`),
the stores, the copy engines (`transfer.py`, `beam_copy.py`) and the export core
can all use these types without pulling in any of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from final_exporter.common.errors import InvalidInputError
from final_exporter.common.progress import Progress

# A file's digest in a manifest (manifest.py): the whole-file SHA-256, or the SHA-256
# of its chunks' SHA-256 digests.
SHA256, CHUNKED_SHA256 = 'sha256', 'chunked_sha256'

# How a local copy places a file: `auto` tries a reflink (btrfs, XFS), else copies;
# `copy` always copies; `hardlink` links the immutable source files and only reads
# them to hash.
COPY_AUTO, COPY_PLAIN, COPY_HARDLINK = 'auto', 'copy', 'hardlink'
COPY_METHODS = (COPY_AUTO, COPY_PLAIN, COPY_HARDLINK)


def check_method(method: str) -> None:
    """Refuses a copy method that is not one of `COPY_METHODS`.

    Raises:
        InvalidInputError: naming the methods there are.
    """
    if method not in COPY_METHODS:
        raise InvalidInputError(
            f'copy_method must be one of {", ".join(COPY_METHODS)}, got {method!r}'
        )


# CopyItem and FileEntry are named tuples, not frozen dataclasses: one of each per file,
# and a frozen dataclass takes 0.8-1.6 us to make, a named tuple 0.35-0.5 (20,000
# FileEntry: 31 -> 10 ms).
class CopyItem(NamedTuple):
    """One file to copy: absolute source and POSIX destination relative to the root."""

    src: str
    dest: str
    size: int


class FileEntry(NamedTuple):
    """One file of an export: POSIX path relative to the export root, size, digest.

    Exactly one of `sha256` (whole file) and `chunked_sha256` (see manifest.py) is
    set; `sha256` is '' for a chunked entry.
    """

    path: str
    size: int
    sha256: str
    chunked_sha256: str = ''

    def as_dict(self) -> dict[str, Any]:
        # dataclasses.asdict deep-copies each field: a tenth of the export of a 2000-file model.
        if self.chunked_sha256:
            return {'path': self.path, 'size': self.size, CHUNKED_SHA256: self.chunked_sha256}
        return {'path': self.path, 'size': self.size, SHA256: self.sha256}

    @property
    def digest(self) -> tuple[str, str]:
        """(kind, hex): what a manifest entry's digest is compared with."""
        if self.chunked_sha256:
            return CHUNKED_SHA256, self.chunked_sha256
        return SHA256, self.sha256


@dataclasses.dataclass(frozen=True)
class Versioned:
    """A small file's bytes with the token a compare-and-swap write must match.

    `data` is None when the file does not exist; writing with that token then
    means "create only if still absent".
    """

    data: bytes | None
    token: Any


@dataclasses.dataclass(frozen=True)
class StageRequest:
    """What `Store.stage` copies into a staging area, and what runs while it does.

    Attributes:
        items: Sources (local paths or URIs of any store) and destinations.
        progress: Counts bytes and files.
        meanwhile: Called once, in the staging thread, while the transfer's own
            threads (which import nothing) move the bytes: the TensorFlow import
            of the checks.
        when_complete: Called once, in the staging thread, when every staged file
            holds its final bytes (under `Staging.local_dir` when the staging has
            one), possibly while they are still being hashed: the serving checks
            run there, overlapping the hashing. What it raises fails the staging.
    """

    items: Sequence[CopyItem]
    progress: Progress | None = None
    meanwhile: Callable[[], None] | None = None
    when_complete: Callable[[], None] | None = None


class Copier(Protocol):
    """A copy engine a local store copies local files with (`transfer.ThreadedCopier`,
    `beam_copy.BeamCopier`)."""

    def copy(self, request: StageRequest, dest_root: str) -> dict[str, FileEntry]:
        """Copies `request.items` (local files) under `dest_root`, hashing every byte once;
        runs the request's `meanwhile` while the engine works and its `when_complete`
        once every file holds its final bytes."""
