"""A folder's tiny files, copied by this thread and by helper processes side by side.

A tiny file's copy is Python's per-file work (`small_copy.copy_small`: a few
system calls and the interpreter's work between them), which holds the GIL:
threads copying them only wait for each other, processes do not. So a folder
of many tiny files is shared: this thread copies one share, and each helper
process (`small_copy.py` run as a script) another (measured on 2 cores, 20,000
files of 256 B to 16 KiB into tmpfs: 0.79-0.99 s in one process, 0.43-0.45 s
in two).

Helpers copy, never link: they are used where the copy method is a plain copy,
or `auto` on a filesystem that refused a reflink (the folder's first file,
copied here, finds out). Each helper reads its whole share before it starts and
answers once it is done; this thread stops and waits for every helper before it
returns or raises, so nothing writes into the staging folder afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

from final_exporter.common.errors import StorageIOError
from final_exporter.common.progress import Progress
from final_exporter.storage import small_copy
from final_exporter.storage.filecopy import copy_file, reflink_refused, small_copy_error
from final_exporter.storage.transfer_config import TransferConfig
from final_exporter.storage.types import COPY_AUTO, COPY_PLAIN, CopyItem, FileEntry


def copy_folder_files(
    items: Sequence[CopyItem],
    dest_root: str,
    config: TransferConfig,
    progress: Progress | None,
    placed: Callable[[], None] | None = None,
) -> list[FileEntry]:
    """Copies `items` (files of one folder) under `dest_root`; helpers share the work
    where there are enough tiny files (`TransferConfig.tiny_files_per_helper`).

    `placed` is called once every helper has copied its whole share without a
    failure, before their answers are read (10,000 lines: 30 ms), so the caller's next copy
    can start meanwhile.
    """
    if not items:
        return []
    entries = [copy_file(items[0], dest_root, config=config, progress=progress)]
    helpers = _helper_count(items, dest_root, config)
    own, *theirs = [list(items[1 + k :: helpers + 1]) for k in range(helpers + 1)]
    started: list[_Helper] = []
    try:
        for share in theirs:
            try:
                started.append(_Helper(share, dest_root))
            except OSError:  # No process to be had (EAGAIN, ENOMEM, no interpreter): copied here.
                own += share
        if helpers:  # A plain copy, so this thread's share takes the helpers' way too.
            entries += _copy_plain(own, dest_root, config, progress)
        else:
            entries += [copy_file(i, dest_root, config=config, progress=progress) for i in own]
        answers = [helper.wait() for helper in started]
        if placed is not None and all(a.ok for a in answers):
            placed()
        for answer in answers:
            entries += answer.entries(dest_root, config, progress)
    finally:
        for helper in started:
            helper.stop()
    return entries


def _copy_plain(
    items: Sequence[CopyItem], dest_root: str, config: TransferConfig, progress: Progress | None
) -> list[FileEntry]:
    """Copies `items` as a helper does (`small_copy.copy_all`), in this thread."""
    pairs = _pairs(items, dest_root)
    return _entries(items, small_copy.copy_all(pairs), dest_root, config, progress)


def _pairs(items: Sequence[CopyItem], dest_root: str) -> Iterator[tuple[str, str]]:
    """(source, destination path) of each item, as it is used; joined by hand, as
    `os.path.join` per file costs more than the helper's start."""
    prefix = os.path.join(dest_root, '')
    return ((i.src, f'{prefix}{i.dest}') for i in items)


def _entries(
    items: Sequence[CopyItem],
    results: Iterable[tuple[int, str] | small_copy.SmallCopyError],
    dest_root: str,
    config: TransferConfig,
    progress: Progress | None,
) -> list[FileEntry]:
    """The entries of `items` from their copies' `results`: a file too large for the buffer
    copied here, the first error raised."""
    entries: list[FileEntry] = []
    pending = 0  # Bytes not yet counted: counted a few hundred files at a time, not per file.
    for item, result in zip(items, results, strict=False):
        if isinstance(result, small_copy.SmallCopyError):
            if result.kind != 'too_large':
                raise small_copy_error(item, os.path.join(dest_root, item.dest), result)
            entries.append(copy_file(item, dest_root, config=config, progress=progress))
            continue
        entries.append(FileEntry(item.dest, result[0], result[1]))
        if progress is not None:
            pending += result[0]
            progress.file_done(item.dest)
            if len(entries) % _COUNT_EVERY == 0:
                _count(progress, pending)
                pending = 0
    if progress is not None:
        _count(progress, pending)
    return entries


_COUNT_EVERY = 256


def _count(progress: Progress, n: int) -> None:
    progress.add_copied(n)
    progress.add_bytes(n)


def _helper_count(items: Sequence[CopyItem], dest_root: str, config: TransferConfig) -> int:
    per_helper = config.tiny_files_per_helper
    if not per_helper or not sys.executable or items[-1].size >= config.tiny_file_bytes:
        return 0
    first_dest = os.path.dirname(os.path.join(dest_root, items[0].dest))
    plain = config.method == COPY_PLAIN or (
        config.method == COPY_AUTO and reflink_refused(first_dest)
    )
    if not plain:
        return 0
    return max(0, min((os.cpu_count() or 1) - 1, len(items) // per_helper))


class _Helper:
    """One helper process copying `items` (`small_copy.main` says how)."""

    def __init__(self, items: Sequence[CopyItem], dest_root: str) -> None:
        self.items = items
        self.proc = subprocess.Popen(
            # -I: no environment, user site-packages or script folder on the path; -S:
            # no site-packages. The helper imports only the standard library.
            [sys.executable, '-I', '-S', small_copy.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Its only output on success is its answer: anything else is why it failed.
            stderr=subprocess.STDOUT,
        )
        pairs = _pairs(items, dest_root)
        # Fed from a thread: the pipe takes 64 KiB before the helper, still starting, reads
        # it, and this thread meanwhile copies its own share.
        self._feeder = threading.Thread(
            target=self._feed,
            args=(small_copy.helper_input(pairs),),
            name='final-exporter-helper-input',
            daemon=True,
        )
        self._feeder.start()

    def _feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            with self.proc.stdin:
                self.proc.stdin.write(data)
        except OSError:  # It ended early (EPIPE): `entries` reports how.
            pass

    def wait(self) -> _Answer:
        """Waits for the helper to end; its answer."""
        out = self._wait()
        return _Answer(self.items, self.proc.returncode, out.decode(errors='replace'))

    def stop(self) -> None:
        """Ends the helper (if it still runs) and waits for it."""
        if self.proc.returncode is None:
            self.proc.kill()
            self._wait()

    def _wait(self) -> bytes:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            out = self.proc.stdout.read()
        self.proc.wait()
        self._feeder.join()
        return out


class _Answer:
    """What a helper answered: a line per file of `items`, or why it failed."""

    def __init__(self, items: Sequence[CopyItem], returncode: int, out: str) -> None:
        self.items, self.returncode, self.out = items, returncode, out
        self.lines = out.splitlines()
        # Every file copied by the helper: none failed, none left to copy here (`L`).
        self.ok = (
            returncode == 0
            and len(self.lines) == len(items)
            and not _failed(self.lines)
            and 'L' not in self.lines
        )

    def entries(
        self, dest_root: str, config: TransferConfig, progress: Progress | None
    ) -> list[FileEntry]:
        """The entries of the helper's files, or the error of the first that failed."""
        if self.returncode != 0 or (len(self.lines) < len(self.items) and not _failed(self.lines)):
            raise StorageIOError(
                f'the helper process copying {len(self.items)} files into {dest_root!r} '
                f'ended with exit status {self.returncode}, expected 0 and a line per '
                f'file: {self.out.strip()[-500:] or "no output"}'
            )
        return _entries(self.items, map(_result, self.lines), dest_root, config, progress)


def _result(line: str) -> tuple[int, str] | small_copy.SmallCopyError:
    """One line of a helper's answer as `small_copy.copy_all` gave it."""
    if line == 'L':
        return small_copy.SmallCopyError('too_large')
    if line.startswith('E '):
        return small_copy.SmallCopyError.from_line(line)[1]
    size, digest = line.split()
    return int(size), digest


def _failed(lines: list[str]) -> bool:
    return bool(lines) and lines[-1].startswith('E ')
