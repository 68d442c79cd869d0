"""Thread-safe progress of a copy: bytes, files, rate and time left."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
        interval: Seconds between two reports. Exports that finish sooner
            print nothing.
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
        self.files_done = 0
        self._report = report
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._last = self._start
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

    def file_done(self, path: str) -> None:
        """Counts one more complete file (`path` is for subclasses that track order)."""
        with self._lock:
            self.files_done += 1

    def status(self) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.bytes_done / elapsed
        left = (self.total_bytes - self.bytes_done) / rate if rate > 0 else float('inf')
        eta = f'{left:.0f} s left' if left != float('inf') else 'time left unknown'
        return (
            f'{human_bytes(self.bytes_done)} of {human_bytes(self.total_bytes)}, '
            f'{self.files_done} of {self.total_files} files, '
            f'{human_bytes(rate)}/s, {eta}'
        )
