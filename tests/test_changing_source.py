"""A source that changes under the copy, or cannot be read: an error naming it, never a signal.

The copy reads sources with `pread` (it once mapped them, and a mapped file
truncated mid-copy ended the process with SIGBUS). Each change is made from the
copy's own progress callback, after the first bytes were read: deterministic,
with no timing involved.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from final_exporter.common.errors import IntegrityError
from final_exporter.common.progress import Progress
from final_exporter.storage.transfer import copy_and_hash, plan_tree
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER, TransferConfig

from conftest import assert_nothing_written

KERNEL_COPY_MIN_BYTES = DEFAULT_TRANSFER.kernel_copy_min_bytes
SPLIT_MIN_BYTES = DEFAULT_TRANSFER.split_min_bytes

SHARD = 'variables/variables.data-00000-of-00001'
CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


def truncate(path: str) -> None:
    os.truncate(path, 10)


def replace(path: str) -> None:
    with open(f'{path}.new', 'wb') as f:
        f.write(b'another file')
    os.replace(f'{path}.new', path)


def remove(path: str) -> None:
    os.remove(path)


class ChangesSourceAfterFirstRead(Progress):
    """Applies `change` to a source file once the copy has copied or read its first bytes.

    A hard link copies nothing: its first bytes read are its first bytes hashed.
    """

    def __init__(self, path: str, change) -> None:
        super().__init__(0, 0)
        self.path = path
        self.change = change
        self.done = False

    def add_copied(self, n: int) -> None:
        super().add_copied(n)
        self._first_bytes()

    def add_bytes(self, n: int) -> None:
        super().add_bytes(n)
        self._first_bytes()

    def _first_bytes(self) -> None:
        if not self.done:
            self.done = True
            self.change(self.path)


@pytest.mark.parametrize('change', [truncate, replace, remove])
@pytest.mark.parametrize('method', ['auto', 'copy', 'hardlink'])
@pytest.mark.parametrize(
    'size', [3 * 1024 * 1024 + 1, KERNEL_COPY_MIN_BYTES + 5, SPLIT_MIN_BYTES + 5]
)  # one read; chunks in one thread; chunks in parallel
def test_source_truncated_replaced_or_removed_mid_copy_is_an_error_naming_it(
    tmp_path, change, method, size
):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    (src / 'variables').mkdir(parents=True)
    dst.mkdir()
    shard = src / SHARD
    with open(shard, 'wb') as f:
        f.truncate(size)  # sparse: the bytes do not matter, only that the file is large
    # The shard alone: the first bytes counted, at which the source changes, are its own.

    with pytest.raises(IntegrityError) as raised:
        copy_and_hash(
            plan_tree(str(src)),
            str(dst),
            config=TransferConfig(method=method, workers=4),
            progress=ChangesSourceAfterFirstRead(str(shard), change),
        )

    message = str(raised.value)
    assert repr(str(shard)) in message
    assert 'while it was copied' in message


def run_without_root_file_access(*args: str) -> subprocess.CompletedProcess:
    """Runs the CLI as root stripped of the capabilities that bypass file permissions.

    The suite runs as root, who reads a mode-000 file; without CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH the kernel checks the mode bits as for any user.
    (Switching to uid 65534 is not possible here: this Python lives under /root,
    mode 0700.)
    """
    return subprocess.run(
        ['setpriv', '--bounding-set=-dac_override,-dac_read_search', CLI, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize('unreadable', ['saved_model.pb', SHARD, 'variables'])
@pytest.mark.parametrize('method', ['auto', 'copy', 'hardlink'])
def test_unreadable_source_exits_2_naming_it_with_nothing_written(
    model_uri, export_base, unreadable, method
):
    model, base = model_uri, export_base
    saved_model = next(dirpath for dirpath, _, files in os.walk(model) if 'saved_model.pb' in files)
    path = os.path.join(saved_model, unreadable)
    os.chmod(path, 0)

    try:
        run = run_without_root_file_access(
            'export', '--model', model, '--export-base', base, '--name', 'penguin',
            '--no-smoke-test', '--no-require-blessing', '--copy-method', method,
        )  # fmt: skip
    finally:
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)

    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert repr(path) in lines[0] or path in lines[0], lines[0]
    assert_nothing_written(base)
