"""A real I/O error in the middle of reading the model: one line naming the file, exit 1.

The model lies on an ext4 filesystem on a loop device whose backing file is cut
short after the filesystem was written: the loop device keeps its size, and a
read of a block past the end of its backing file fails in the block layer
(`BLK_STS_IOERR`), which the filesystem returns to `read` as EIO. That is the
error a failing disk gives. (A device-mapper `error` or `flakey` target would
give the same EIO, but needs the kernel's device-mapper driver, which this
kernel does not have: `dmsetup version` finds no `/dev/mapper/control`.)

Needs root (losetup, mount). The failing file alone is on that filesystem,
bind-mounted over the model's own file, so every other file of the model
reads; the filesystem is mounted read-only, so nothing writes past the cut and
the read fails every time. Everything is unmounted and the loop device detached
after every test, failed or not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')
MIB = 1024 * 1024
BLOCK = 4096
# Two manifest chunks and a half: the copy reads it in chunks side by side.
SHARD_BYTES = 80 * MIB
SHARD = 'variables/variables.data-00000-of-00001'

GENERATE = f"""
import sys, numpy as np, tensorflow as tf
module = tf.Module()
module.w = tf.Variable(np.random.default_rng(0).random({SHARD_BYTES // 4}, dtype=np.float32))
@tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='x')])
def serve(x):
    return {{'y': x + module.w[0]}}
module.serve = serve
tf.saved_model.save(module, sys.argv[1], signatures={{'serving_default': serve}})
"""


@pytest.fixture(scope='session')
def large_model(tmp_path_factory) -> str:
    """A real SavedModel whose one variables shard is 80 MiB."""
    model = tmp_path_factory.mktemp('large') / 'model'
    subprocess.run(
        [sys.executable, '-c', GENERATE, str(model)],
        check=True,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
        capture_output=True,
    )
    assert os.path.getsize(model / SHARD) >= SHARD_BYTES
    return str(model)


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f'{" ".join(cmd)} failed (root and loop devices needed): {done.stderr.strip()}')
    return done.stdout


@contextlib.contextmanager
def failing_disk(image: str, mount_point: str, file: str) -> Iterator[str]:
    """A copy of `file` alone on an ext4 filesystem (no journal) on a loop device over
    `image`, whose blocks fail from the middle of that file on; yields the copy's path.

    Written read-write, then unmounted (its pages leave the page cache), the image
    cut short in the middle of the file's blocks, and the filesystem mounted again
    read-only: nothing writes past the cut, and every read beyond it fails. The
    loop device keeps its size, so the filesystem still mounts. Unmounted and
    detached on the way out, whatever happened.
    """
    run('truncate', '-s', str(SHARD_BYTES + 48 * MIB), image)
    run('mkfs.ext4', '-q', '-F', '-b', str(BLOCK), '-O', '^has_journal', image)
    device = run('losetup', '--find', '--show', image).strip()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(subprocess.run, ['losetup', '--detach', device], capture_output=True)
        os.makedirs(mount_point, exist_ok=True)
        run('mount', device, mount_point)
        cleanup.callback(unmount, mount_point)
        copy = os.path.join(mount_point, os.path.basename(file))
        run('cp', file, copy)
        run('sync', '-f', mount_point)
        cut = physical_offset(copy, os.path.getsize(copy) // 2)
        unmount(mount_point)
        os.truncate(image, cut)
        run('mount', '-o', 'ro', device, mount_point)
        yield copy


def unmount(mount_point: str) -> None:
    if subprocess.run(['umount', mount_point], capture_output=True).returncode != 0:
        subprocess.run(['umount', '--lazy', mount_point], capture_output=True)


def physical_offset(path: str, logical: int) -> int:
    """Where byte `logical` of `path` lies on its device (`filefrag -v`, in blocks)."""
    for line in run('filefrag', '-b4096', '-v', path).splitlines():
        fields = line.replace(':', ' ').replace('..', ' ').split()
        if len(fields) >= 5 and fields[0].isdigit():
            first, last, physical = int(fields[1]), int(fields[2]), int(fields[3])
            if first <= logical // BLOCK <= last:
                return (physical + logical // BLOCK - first) * BLOCK
    raise AssertionError(f'byte {logical} of {path} is in no extent')


@pytest.fixture
def failing_model(request, large_model, tmp_path) -> Iterator[str]:
    """A copy of `large_model` whose file `request.param` lies on a failing disk (bind-mounted
    over the model's own file), its reads failing from the middle of the file on."""
    model = str(tmp_path / 'model')
    shutil.copytree(large_model, model)
    target = os.path.join(model, request.param)
    image, mount_point = str(tmp_path / 'disk.img'), str(tmp_path / 'disk')
    with failing_disk(image, mount_point, target) as failing:
        run('mount', '--bind', failing, target)
        try:
            yield model
        finally:
            unmount(target)


@pytest.mark.parametrize(
    ('failing_model', 'smoke', 'read_at'),
    [
        (SHARD, True, True),  # the copy's chunked reads; TensorFlow loads it meanwhile
        (SHARD, False, True),
        ('saved_model.pb', False, False),  # read whole when the model is checked
    ],
    ids=['shard-smoke-test', 'shard-no-smoke-test', 'graph'],
    indirect=['failing_model'],
)
def test_an_io_error_mid_read_names_the_file_and_exits_1_with_nothing_published(
    failing_model, tmp_path, smoke, read_at, request
):
    base = tmp_path / 'exports'
    failing = os.path.join(failing_model, request.node.callspec.params['failing_model'])

    done = subprocess.run(
        [CLI, 'export', '--model', failing_model, '--export-base', str(base), '--name', 'm',
         '--no-require-blessing', *([] if smoke else ['--no-smoke-test'])],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert done.returncode == 1, (done.returncode, done.stderr)  # not a signal (< 0)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f'failed: cannot read source file {failing!r}' in lines[0]
    assert 'Input/output error (EIO)' in lines[0]
    if read_at:
        at = int(lines[0].split(' at byte ')[1].split(':')[0])
        size = os.path.getsize(failing)
        assert size // 2 - 8 * MIB <= at < size  # a read in the middle of the file
    # No version, no staging folder, no lock file.
    assert (os.listdir(base / 'm') if (base / 'm').exists() else []) == []
