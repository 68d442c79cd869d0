"""Thread-safe progress of a copy: bytes, files, rate and time left; and where it is shown.

`Progress` counts and calls a report function; `TerminalLine` shows the status
as one line rewritten in place on a terminal; `Throttled` lets a log line
through at most every few seconds. A report function may carry its own pacing
(`delay` before the first report, `interval` between two), which `Progress` uses.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TextIO


def human_bytes(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    raise AssertionError('unreachable')


class Progress:
    """Counts bytes and files done and reports them every `interval` seconds.

    Args:
        total_bytes: Bytes expected in all.
        total_files: Files expected in all.
        report: Called with a one-line status; None to count silently.
        interval: Seconds between two reports (the report's own `interval`
            attribute wins). Exports that finish sooner than the first
            report (after the report's `delay`, else `interval`) print nothing.
    """

    def __init__(
        self,
        total_bytes: int,
        total_files: int,
        report: Callable[[str], None] | None = None,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.bytes_done = 0
        self.bytes_copied = 0
        self.files_done = 0
        self._report = report
        self._interval = getattr(report, 'interval', interval)
        self._clock = clock
        self._start = clock()
        # The first report comes `delay` after the start, the next ones every `interval`.
        self._last = self._start + getattr(report, 'delay', self._interval) - self._interval
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_done += n
            now = self._clock()
            due = self._report is not None and now - self._last >= self._interval
            if due:
                self._last = now
        if due:
            self._report(self.status())

    def add_copied(self, n: int) -> None:
        """Counts n more bytes in place in the copy (done once also hashed: `add_bytes`)."""
        with self._lock:
            self.bytes_copied += n

    def file_done(self, path: str) -> None:
        """Counts one more complete file (`path` is for subclasses that track order)."""
        with self._lock:
            self.files_done += 1

    def status(self) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.bytes_done / elapsed
        left = (self.total_bytes - self.bytes_done) / rate if rate > 0 else float('inf')
        eta = f'{left:.0f} s left' if left != float('inf') else 'time left unknown'
        # The kernel copies a large file's chunks before they are hashed: both are shown.
        copied = (
            f' ({human_bytes(self.bytes_copied)} copied)'
            if self.bytes_copied > self.bytes_done
            else ''
        )
        return (
            f'{human_bytes(self.bytes_done)} of {human_bytes(self.total_bytes)}{copied}, '
            f'{self.files_done} of {self.total_files} files, '
            f'{human_bytes(rate)}/s, {eta}'
        )


class TerminalLine:
    """Shows a status as one line on a terminal, rewritten in place; `close` clears it.

    Args:
        stream: The terminal (stderr, or a duplicate of its descriptor taken before
            anything redirected it).
        delay: Seconds before the first line: short exports show nothing.
        interval: Seconds between two updates.
    """

    def __init__(self, stream: TextIO, delay: float = 2.0, interval: float = 0.5) -> None:
        self.stream = stream
        self.delay = delay
        self.interval = interval
        self._shown = False
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            # \r back to the start, \x1b[K erases what a longer earlier line left.
            self.stream.write(f'\r{line}\x1b[K')
            self.stream.flush()
            self._shown = True

    def close(self) -> None:
        """Erases the line (if one was shown), so what is printed next starts clean."""
        with self._lock:
            if self._shown:
                self.stream.write('\r\x1b[K')
                self.stream.flush()
                self._shown = False

    @classmethod
    def for_stderr(cls) -> TerminalLine | None:
        """A line on the terminal behind file descriptor 2, or None when it is not a terminal."""
        if not os.isatty(2):
            return None
        # FINAL_EXPORTER_PROGRESS_DELAY: seconds before the first line (docs/parameters.md),
        # so that a test or a demo sees the line on a copy shorter than the default 2 s.
        delay = float(os.environ.get('FINAL_EXPORTER_PROGRESS_DELAY', '2'))
        # A duplicate: the CLI later routes fd 2 through a filter that passes whole lines only.
        return cls(os.fdopen(os.dup(2), 'w', encoding='utf-8', errors='replace'), delay=delay)


class Throttled:
    """Passes a status on to `report` at most every `interval` seconds (for logs).

    Args:
        report: Where the status goes (e.g. a logger).
        interval: Seconds between two reports, and before the first.
    """

    def __init__(self, report: Callable[[str], None], interval: float = 5.0) -> None:
        self._report = report
        self.interval = interval
        self.delay = interval

    def __call__(self, line: str) -> None:
        self._report(line)
