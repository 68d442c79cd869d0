"""A small file's copy (one read, one write, its SHA-256), and the helper process that
copies a share of a folder's tiny files.

A model of many small files is bound by Python's per-file work, which holds the
GIL: threads cannot share it, processes can. The helper runs this file as a
script (`python -I -S`): standard library only, no site-packages, so it starts in
about 15 ms and imports nothing of the exporter's. Its protocol:

- in (stdin): `source NUL destination NUL` per file, then end of file;
- out (stdout): a line per file, in order: `size sha256-hex`, `L` for a file
  too large for the buffer (the caller copies it), or `E` and the fields of a
  `SmallCopyError`, after which the helper stops.

What a failure means, and its message, is the caller's (`filecopy.py`): this
module only says what failed, on which file, where.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator

_READ = os.O_RDONLY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
# A file's content is one line of the protocol at most: larger ones are the caller's.
HELPER_BUFFER_BYTES = 1024 * 1024


class SmallCopyError(Exception):
    """What went wrong with one file.

    Attributes:
        kind: `open`, `read` (the source), `create`, `write` (the destination),
            `changed` (the source changed while copied; `how` says how) or
            `too_large` (it does not fit the buffer: copy it another way).
        errno: The OSError's number (0 for `changed` and `too_large`).
        at: The byte a read or write failed at.
        before_size: The source's size when opened.
        size_now: Its size after the copy (-1 when unknown).
        how: For `changed`: `replaced`, or empty for a size or time that changed.
    """

    FIELDS = ('kind', 'errno', 'at', 'before_size', 'size_now', 'how')

    def __init__(
        self,
        kind: str,
        errno: int = 0,
        at: int = 0,
        before_size: int = 0,
        size_now: int = -1,
        how: str = '',
    ) -> None:
        super().__init__(kind, errno)
        self.kind, self.errno, self.at = kind, errno, at
        self.before_size, self.size_now, self.how = before_size, size_now, how

    def line(self, index: int) -> str:
        """This error as the helper's output line for file `index`."""
        fields = [str(getattr(self, f)) for f in self.FIELDS[:-1]]
        return ' '.join(['E', str(index), *fields, self.how or '-']) + '\n'

    @classmethod
    def from_line(cls, line: str) -> tuple[int, SmallCopyError]:
        """(file index, error) from a helper's `E` line."""
        _, index, kind, err, at, before, now, how = line.split()
        error = cls(kind, int(err), int(at), int(before), int(now), '' if how == '-' else how)
        return int(index), error


def copy_small(
    src: str, dest: str, view: memoryview, written: Callable[[int, int], None] | None = None
) -> tuple[os.stat_result, int, str]:
    """Copies `src` to a new `dest` with one read of one byte more than its size (which
    must come back short), one write, and a stat after: the source must be the same
    file, unchanged (inode, size, mtime), from before the read until after it.

    Files are opened with `os.open`, not `open()`, which stats each file once more:
    a model of 20,000 small files spends its time in these calls. `written` is called
    with the destination's descriptor and size once the bytes are written, before the
    source is checked.

    Returns:
        (the source's stat when opened, the bytes copied, their SHA-256 in hex).

    Raises:
        SmallCopyError: what failed (nothing else: every OSError is one).
    """
    try:
        src_fd = os.open(src, _READ)
    except OSError as e:
        raise SmallCopyError('open', e.errno or 0) from None
    try:
        before = os.fstat(src_fd)
        if before.st_size >= len(view):
            raise SmallCopyError('too_large', before_size=before.st_size)
        data = view[: before.st_size + 1]
        try:
            n = os.preadv(src_fd, [data], 0)
        except OSError as e:
            raise SmallCopyError('read', e.errno or 0, 0, before.st_size) from None
    finally:
        os.close(src_fd)
    if n != before.st_size:
        raise SmallCopyError('changed', 0, n, before.st_size, n)
    try:
        out = os.open(dest, _CREATE, 0o666)
    except OSError as e:
        raise SmallCopyError('create', e.errno or 0, 0, before.st_size) from None
    try:
        done = 0
        while done < n:
            done += os.write(out, data[done:n])
        if written is not None:
            written(out, n)
    except OSError as e:
        raise SmallCopyError('write', e.errno or 0, done, before.st_size) from None
    finally:
        os.close(out)
    unchanged(src, before, n)
    return before, n, hashlib.sha256(data[:n]).hexdigest()


def unchanged(src: str, before: os.stat_result, read: int) -> None:
    """Fails unless `src` is still the file `before` describes and `read` is all of it."""
    try:
        after = os.stat(src)
    except OSError as e:
        raise SmallCopyError('open', e.errno or 0, 0, before.st_size) from None
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        raise SmallCopyError('changed', 0, read, before.st_size, after.st_size, 'replaced')
    if (
        read != before.st_size
        or after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
    ):
        raise SmallCopyError('changed', 0, read, before.st_size, after.st_size)


def copy_all(pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[int, str] | SmallCopyError]:
    """Copies each (source, destination) pair with `copy_small`: (size, SHA-256 hex) per
    file, or its `SmallCopyError`; the first error other than `too_large` is the last."""
    view = memoryview(bytearray(HELPER_BUFFER_BYTES))
    for src, dest in pairs:
        try:
            _, n, digest = copy_small(src, dest, view)
        except SmallCopyError as e:
            yield e
            if e.kind != 'too_large':
                return
            continue
        yield n, digest


def helper_input(pairs: Iterable[tuple[str, str]]) -> bytes:
    """The helper's stdin for these (source, destination) pairs."""
    return os.fsencode(''.join(f'{s}\0{d}\0' for s, d in pairs))  # One encode, not two a file.


def main() -> int:
    """The helper: copies the files named on stdin, a line of output each."""
    # Ctrl-C reaches the whole process group: the exporter stops its helpers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    names = [os.fsdecode(n) for n in sys.stdin.buffer.read().split(b'\0')[:-1]]
    # Answered once, at the end: the caller reads only once its own share is copied, and
    # a pipe that filled up meanwhile would stop this copy.
    lines = []
    pairs = list(zip(names[::2], names[1::2], strict=True))
    for index, result in enumerate(copy_all(pairs)):
        if isinstance(result, SmallCopyError):
            lines.append('L\n' if result.kind == 'too_large' else result.line(index))
        else:
            lines.append(f'{result[0]} {result[1]}\n')
    sys.stdout.write(''.join(lines))
    sys.stdout.flush()
    return 0


if __name__ == '__main__':
    sys.exit(main())
