"""The one seam for what differs between the tested stacks (docs/tested-with.md).

TFX 1.16 / TensorFlow 2.16 on Python 3.10, and TFX 1.21 / TensorFlow 2.21 on
Python 3.11-3.13. Everything else the package uses behaves the same on both.

- TensorFlow's C++ log lines. TF 2.16 drops them all once TF_CPP_MIN_LOG_LEVEL is
  set before TensorFlow loads. TF 2.21 logs through absl, and what its libraries
  log while loading (before absl::InitializeLog) goes to stderr whatever that
  level says: "oneDNN custom operations are on", "Could not find cuda drivers".
  `tensorflow_logs_dropped` sets the level and drops those lines from stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

# A C++ log line: absl's (TF 2.21: `I0000 00:00:1796143285.977047    6585 port.cc:153] ...`),
# TF's own (TF 2.16: `2026-12-01 16:27:42.109232: I tensorflow/core/...cc:113] ...`), absl's
# notice before the first of them, and the second line of TF's CPU-feature notice.
_TF_CPP_LOG_LINE = re.compile(
    rb'[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] '
    rb'|\d{4}-\d\d-\d\d [\d:.]+: [IWEF] [\w./-]+:\d+\] '
    rb'|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR'
    rb'|To enable the following instructions: .* rebuild TensorFlow'
)


@contextlib.contextmanager
def tensorflow_logs_dropped() -> Iterator[None]:
    """While open, TensorFlow's C++ log lines do not reach stderr; every other line does.

    Works on the process's file descriptor 2, where C++ writes: stderr goes
    through a pipe, and a thread passes on each line that is not a C++ log line.
    """
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    sys.stderr.flush()
    stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pass_on() -> None:
        with os.fdopen(read_end, 'rb') as lines:
            for line in lines:
                if not _TF_CPP_LOG_LINE.match(line):
                    os.write(stderr, line)

    thread = threading.Thread(target=pass_on, name='stderr-filter', daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)  # closes the pipe's last write end: the thread sees its end
        thread.join(timeout=10)
        os.close(stderr)
