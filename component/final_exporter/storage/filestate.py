"""What a local file is at one moment, and whether it is still that file, unchanged.

A file is the same file, unchanged, while its device and inode, its size, and its
modification and change times (in nanoseconds) stay as they were: every write,
truncation or metadata change through the filesystem sets the change time (ctime),
which no user can set back, and a replacement is a new inode. On Linux 6.13 and
newer (multigrain timestamps: ext4, XFS, btrfs, tmpfs), a change made after the
file was stat'ed gets a ctime that differs from the one seen even within the same
clock tick; on older kernels a write in the very tick of the stat can keep both
times, and only a size or inode change shows it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping

from final_exporter.common.errors import IntegrityError


@dataclasses.dataclass(frozen=True)
class FileState:
    """A local file's identity and change marks."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def difference(self, now: FileState) -> str:
        """How `now` differs from this state ('' when it does not)."""
        if (now.dev, now.ino) != (self.dev, self.ino):
            return 'was replaced by another file'
        changed = [
            f'{name} {getattr(self, name)} -> {getattr(now, name)}'
            for name in ('size', 'mtime_ns', 'ctime_ns')
            if getattr(self, name) != getattr(now, name)
        ]
        return f'changed ({", ".join(changed)})' if changed else ''


def snapshot(paths: Iterable[str]) -> dict[str, FileState]:
    """{path: FileState} of local files (each stat'ed, following symlinks)."""
    return {path: FileState.of(os.stat(path)) for path in paths}


def require_unchanged(before: Mapping[str, FileState], window: str) -> None:
    """Fails unless every file of `before` is still the same file, unchanged.

    Args:
        before: A `snapshot`.
        window: What the files had to stay unchanged for, for the message.

    Raises:
        IntegrityError: naming each file that was replaced, changed or removed.
    """
    problems = []
    for path, state in before.items():
        try:
            how = state.difference(FileState.of(os.stat(path)))
        except FileNotFoundError:
            how = 'was removed'
        if how:
            problems.append(f'{path!r} {how}')
    if problems:
        raise IntegrityError(
            f'source file {"; ".join(problems[:5])}{" ..." if len(problems) > 5 else ""} '
            f'{window}; export a model that is no longer being written'
        )
