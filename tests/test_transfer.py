"""The parallel copy that hashes as it copies, on real files."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import subprocess
import threading
from unittest import mock

import pytest

from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.common.progress import Progress
from final_exporter.storage import filecopy
from final_exporter.storage.beam_copy import copy_and_hash_beam
from final_exporter.storage.filecopy import hash_only
from final_exporter.storage.manifest import CHUNK_BYTES as DIGEST_CHUNK_BYTES
from final_exporter.storage.transfer import copy_and_hash, plan_tree
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER, TransferConfig
from final_exporter.storage.types import FileEntry

from conftest import tree_files

CHUNK_BYTES = DEFAULT_TRANSFER.buffer_bytes
WRITEBACK_MIN_BYTES = DEFAULT_TRANSFER.writeback_min_bytes
WRITEBACK_BATCH_BYTES = DEFAULT_TRANSFER.writeback_batch_bytes
SPLIT_CHUNK_BYTES = DIGEST_CHUNK_BYTES
SPLIT_MIN_BYTES = DEFAULT_TRANSFER.split_min_bytes


def want_entry(rel: str, data: bytes) -> FileEntry:
    """The manifest entry of `data`, computed here from the format's definition."""
    if len(data) <= DIGEST_CHUNK_BYTES:
        return FileEntry(rel, len(data), hashlib.sha256(data).hexdigest())
    chunks = [data[o : o + DIGEST_CHUNK_BYTES] for o in range(0, len(data), DIGEST_CHUNK_BYTES)]
    tree = hashlib.sha256(b''.join(hashlib.sha256(c).digest() for c in chunks)).hexdigest()
    return FileEntry(rel, len(data), '', tree)


class GrowsSourceOnFirstChunk(Progress):
    """Appends to a source file once its first chunk was copied: a file still being written."""

    def __init__(self, path: str):
        super().__init__(0, 0)
        self.path = path
        self.done = False

    def add_copied(self, n: int) -> None:
        super().add_copied(n)
        if not self.done:
            self.done = True
            with open(self.path, 'ab') as f:
                f.write(b'late bytes')


def make_model_tree(root, n_files=40, seed=0) -> dict[str, bytes]:
    rng = random.Random(seed)
    files = {'saved_model.pb': rng.randbytes(5000)}
    for i in range(n_files):
        size = rng.choice([0, 1, 4096, CHUNK_BYTES - 1, CHUNK_BYTES + 17, 3 * CHUNK_BYTES // 2])
        files[f'variables/variables.data-{i:05d}-of-{n_files:05d}'] = rng.randbytes(size)
    files['assets/vocab.txt'] = b'a\nb\n'
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
    return files


@pytest.mark.parametrize('workers', [1, 8])
@pytest.mark.parametrize('method', ['auto', 'copy'])
def test_copy_is_byte_identical_and_hashes_match(tmp_path, workers, method):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = make_model_tree(src)
    dst.mkdir()

    entries = copy_and_hash(
        plan_tree(str(src)), str(dst), config=TransferConfig(workers=workers, method=method)
    )

    assert set(entries) == set(files)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data
        assert entries[rel].sha256 == hashlib.sha256(data).hexdigest()
        assert entries[rel].size == len(data)


def test_progress_counts_every_file_and_byte_split_files_included(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = make_model_tree(src)
    files['variables/variables.data-00000-of-00040'] = write_random(
        src / 'variables/variables.data-00000-of-00040', SPLIT_MIN_BYTES + 5
    )  # also a file copied in pieces
    dst.mkdir()
    items = plan_tree(str(src))
    progress = Progress(sum(i.size for i in items), len(items))

    copy_and_hash(items, str(dst), config=TransferConfig(workers=8), progress=progress)

    assert {rel: (dst / rel).stat().st_size for rel in files} == {
        rel: len(data) for rel, data in files.items()
    }
    assert progress.files_done == len(items)
    assert progress.bytes_done == sum(i.size for i in items)


@pytest.mark.parametrize('size', [1000, 4 * CHUNK_BYTES])  # one read; several
@pytest.mark.parametrize('method', ['auto', 'copy'])
def test_source_that_changes_during_copy_is_detected(tmp_path, method, size):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    src.mkdir()
    dst.mkdir()
    (src / 'saved_model.pb').write_bytes(b'x' * size)

    with pytest.raises(IntegrityError, match='changed while it was copied'):
        copy_and_hash(
            plan_tree(str(src)),
            str(dst),
            progress=GrowsSourceOnFirstChunk(str(src / 'saved_model.pb')),
            config=TransferConfig(method=method),
        )


def test_existing_destination_file_is_never_overwritten(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    src.mkdir()
    dst.mkdir()
    (src / 'a').write_bytes(b'new')
    (dst / 'a').write_bytes(b'old')

    with pytest.raises(FileExistsError):
        copy_and_hash(plan_tree(str(src)), str(dst))
    assert (dst / 'a').read_bytes() == b'old'


def test_symlink_inside_the_model_is_followed(tmp_path):
    src = tmp_path / 'src'
    (src / 'assets').mkdir(parents=True)
    (src / 'assets' / 'real.txt').write_text('vocab')
    os.symlink('real.txt', src / 'assets' / 'link.txt')

    items = {i.dest: i for i in plan_tree(str(src))}

    assert set(items) == {'assets/link.txt', 'assets/real.txt'}


@pytest.mark.parametrize('target_is_dir', [False, True])
def test_symlink_pointing_outside_the_model_is_refused(tmp_path, target_is_dir):
    src = tmp_path / 'src'
    src.mkdir()
    outside = tmp_path / 'secret'
    if target_is_dir:
        outside.mkdir()
        (outside / 'key').write_text('k')
    else:
        outside.write_text('k')
    os.symlink(outside, src / 'escape')

    with pytest.raises(InvalidInputError, match=r'outside .* refusing to follow'):
        plan_tree(str(src))


def test_special_files_are_refused(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    os.mkfifo(src / 'pipe')

    with pytest.raises(InvalidInputError, match='not a regular file'):
        plan_tree(str(src))


def test_hardlink_shares_the_source_inode_and_hashes_it(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = make_model_tree(src, n_files=4)
    dst.mkdir()

    entries = copy_and_hash(plan_tree(str(src)), str(dst), config=TransferConfig(method='hardlink'))

    for rel, data in files.items():
        assert os.stat(dst / rel).st_ino == os.stat(src / rel).st_ino
        assert entries[rel].sha256 == hashlib.sha256(data).hexdigest()


def test_auto_falls_back_to_a_copy_where_reflink_is_unsupported(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = make_model_tree(src, n_files=4)
    dst.mkdir()

    entries = copy_and_hash(plan_tree(str(src)), str(dst), config=TransferConfig(method='auto'))

    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data
        assert entries[rel].sha256 == hashlib.sha256(data).hexdigest()


def test_unknown_copy_method_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match='copy_method must be one of auto, copy, hardlink'):
        copy_and_hash([], str(tmp_path), config=TransferConfig(method='teleport'))


@pytest.mark.parametrize('method', ['auto', 'copy'])
def test_beam_copy_hashes_large_files_by_chunks_like_the_threaded_copy(tmp_path, caplog, method):
    src = tmp_path / 'src'
    make_model_tree(src, n_files=12)
    # A shard of several manifest chunks: one element per chunk, its entry chunked.
    big = write_random(src / 'variables' / 'variables.data-big', 2 * SPLIT_CHUNK_BYTES + 7)
    threaded, beamed = tmp_path / 'threaded', tmp_path / 'beam'
    threaded.mkdir()
    beamed.mkdir()
    # A low threshold, so that this tree's larger files are split into elements too.
    split_min = CHUNK_BYTES
    items = plan_tree(str(src))
    n_split = sum(1 for i in items if i.size >= split_min)
    n_elements = sum(-(-i.size // SPLIT_CHUNK_BYTES) if i.size >= split_min else 1 for i in items)

    want = copy_and_hash(items, str(threaded), config=TransferConfig(method=method))
    with caplog.at_level(logging.INFO, logger='final_exporter.storage.beam_copy'):
        got = copy_and_hash_beam(
            plan_tree(str(src)),
            str(beamed),
            ['--runner=DirectRunner', '--direct_running_mode=multi_processing',
             '--direct_num_workers=2'],
            config=TransferConfig(method=method, split_min_bytes=split_min),
        )  # fmt: skip

    assert n_split >= 3
    assert f'Copying {len(items)} files ({n_elements} elements) with Beam' in caplog.text
    assert got == want
    assert got['variables/variables.data-big'] == want_entry('variables/variables.data-big', big)
    assert got['variables/variables.data-big'].chunked_sha256
    assert tree_files(str(beamed)) == tree_files(str(threaded))
    assert not os.path.exists(f'{beamed}.beam-results')


@pytest.mark.parametrize('method', ['auto', 'copy', 'hardlink'])
def test_file_of_several_chunks_gets_the_chunked_digest_under_every_method(tmp_path, method):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    src.mkdir()
    dst.mkdir()
    data = random.Random(1).randbytes(2 * DIGEST_CHUNK_BYTES + 12345)
    (src / 'variables.data-00000-of-00001').write_bytes(data)

    entries = copy_and_hash(
        plan_tree(str(src)), str(dst), config=TransferConfig(method=method, workers=4)
    )

    assert (dst / 'variables.data-00000-of-00001').read_bytes() == data
    want = want_entry('variables.data-00000-of-00001', data)
    assert want.chunked_sha256 and not want.sha256
    assert entries['variables.data-00000-of-00001'] == want
    # The one-thread path (read in order) and the parallel chunks agree.
    assert hash_only(plan_tree(str(src))[0], TransferConfig(method=method)) == want


class RecordingIncrements(Progress):
    """Records each byte count the copy reports: one per window, chunk or piece."""

    def __init__(self):
        super().__init__(0, 0)
        self.increments: list[int] = []

    def add_bytes(self, n: int) -> None:
        super().add_bytes(n)
        self.increments.append(n)


def write_random(path, size: int, seed: int = 3) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize('direct_io', [True, False])
@pytest.mark.parametrize('method', ['auto', 'copy'])
def test_large_file_is_copied_and_hashed_in_parallel_chunks(tmp_path, method, direct_io):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    size = SPLIT_MIN_BYTES + SPLIT_CHUNK_BYTES // 2 + 11
    data = write_random(src / 'variables' / 'variables.data-00000-of-00001', size)
    pb = write_random(src / 'saved_model.pb', 4000, seed=4)
    dst.mkdir()
    progress = RecordingIncrements()

    entries = copy_and_hash(
        plan_tree(str(src)),
        str(dst),
        config=TransferConfig(workers=4, method=method, direct_io=direct_io),
        progress=progress,
    )

    shard = 'variables/variables.data-00000-of-00001'
    assert (dst / shard).read_bytes() == data
    assert entries[shard] == want_entry(shard, data)
    assert entries['saved_model.pb'] == want_entry('saved_model.pb', pb)
    # Every byte hashed once, in pieces of at most one chunk.
    assert sum(progress.increments) == size + len(pb)
    assert max(progress.increments) <= SPLIT_CHUNK_BYTES


@pytest.mark.parametrize('head', [0, 1, 4096, 2 * SPLIT_CHUNK_BYTES])
def test_every_kernel_copy_head_gives_the_same_bytes_and_digests(tmp_path, head):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    size = SPLIT_CHUNK_BYTES + SPLIT_CHUNK_BYTES // 3 + 7  # A whole chunk and a part.
    data = write_random(src / 'variables' / 'variables.data-00000-of-00001', size)
    dst.mkdir()

    entries = copy_and_hash(
        plan_tree(str(src)),
        str(dst),
        config=TransferConfig(workers=2, method='copy', kernel_copy_head_bytes=head),
    )

    shard = 'variables/variables.data-00000-of-00001'
    assert (dst / shard).read_bytes() == data
    assert entries == {shard: want_entry(shard, data)}


def test_large_file_written_to_during_a_split_copy_is_detected(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    write_random(src / 'variables.data-00000-of-00001', SPLIT_MIN_BYTES + 5)
    dst.mkdir()

    with pytest.raises(IntegrityError, match='changed while it was copied'):
        copy_and_hash(
            plan_tree(str(src)),
            str(dst),
            config=TransferConfig(workers=4),
            progress=GrowsSourceOnFirstChunk(str(src / 'variables.data-00000-of-00001')),
        )


@pytest.mark.parametrize(
    'size',
    [WRITEBACK_MIN_BYTES, 4 * CHUNK_BYTES - 1, 3 * WRITEBACK_BATCH_BYTES + 5, SPLIT_MIN_BYTES + 7],
)
@pytest.mark.parametrize('workers', [1, 4])
def test_writeback_is_started_for_every_byte_copied_through_the_page_cache(tmp_path, size, workers):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    data = write_random(src / 'variables.data-00000-of-00001', size)
    dst.mkdir()

    with mock.patch.object(
        filecopy, 'start_writeback', autospec=True, side_effect=filecopy.start_writeback
    ) as writeback:
        copy_and_hash(
            plan_tree(str(src)), str(dst), config=TransferConfig(workers=workers, direct_io=False)
        )

    ranges = sorted((c.args[1], c.args[1] + c.args[2]) for c in writeback.call_args_list)
    covered = 0
    for start, end in ranges:
        assert start == covered
        covered = end
    assert covered == len(data)


def resident_bytes(path) -> int:
    """Bytes of `path` in the page cache (util-linux `fincore`)."""
    out = subprocess.run(
        ['fincore', '--bytes', '--noheadings', '--raw', '--output', 'RES', str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout.split()[0])


@pytest.mark.parametrize('workers', [1, 4])
def test_by_default_a_large_copy_is_written_with_o_direct_out_of_the_page_cache(tmp_path, workers):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    size = 3 * SPLIT_CHUNK_BYTES + 5  # the last 5 bytes cannot go through O_DIRECT
    data = write_random(src / 'variables.data-00000-of-00001', size)
    dst.mkdir()
    fs = subprocess.run(['stat', '-f', '-c', '%T', str(dst)], capture_output=True, text=True)
    assert fs.stdout.strip() != 'tmpfs', 'a disk filesystem is needed: tmpfs is the page cache'

    entries = copy_and_hash(plan_tree(str(src)), str(dst), config=TransferConfig(workers=workers))

    staged = dst / 'variables.data-00000-of-00001'
    assert resident_bytes(staged) <= 4096  # at most the page of the unaligned tail
    assert staged.read_bytes() == data
    assert entries['variables.data-00000-of-00001'] == want_entry(
        'variables.data-00000-of-00001', data
    )


@pytest.mark.parametrize('beside_checks', [True, False])
def test_through_the_page_cache_only_a_copy_beside_the_checks_drops_its_bytes_from_it(
    tmp_path, beside_checks
):
    """The checks' load of the model needs the memory; a copy alone writes as `cp` does."""
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    size = 3 * SPLIT_CHUNK_BYTES
    data = write_random(src / 'variables.data-00000-of-00001', size)
    dst.mkdir()
    ran = []

    copy_and_hash(
        plan_tree(str(src)),
        str(dst),
        config=TransferConfig(workers=2, direct_io=False),
        meanwhile=(lambda: ran.append(True)) if beside_checks else None,
    )

    staged = dst / 'variables.data-00000-of-00001'
    if beside_checks:
        assert resident_bytes(staged) == 0
    else:  # Written through the page cache, which the kernel may already be trimming.
        assert resident_bytes(staged) > size // 2
    assert ran == ([True] if beside_checks else [])
    assert staged.read_bytes() == data


def test_small_model_is_copied_inline_in_this_thread(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = make_model_tree(src, n_files=3, seed=5)
    dst.mkdir()
    items = [i for i in plan_tree(str(src)) if i.size < CHUNK_BYTES]
    progress = Progress(sum(i.size for i in items), len(items))
    before = threading.active_count()

    entries = copy_and_hash(items, str(dst), progress=progress)

    assert threading.active_count() == before
    assert progress.files_done == len(items)
    for item in items:
        assert entries[item.dest] == want_entry(item.dest, files[item.dest])


@pytest.fixture(scope='module')
def xfs_dir(tmp_path_factory):
    """A folder on a real XFS filesystem with reflink, in a loop-mounted image file.

    Needs root, loop devices and mkfs.xfs (scripts/bootstrap.sh installs
    xfsprogs on Debian as root).
    """
    mkfs = shutil.which('mkfs.xfs')
    if mkfs is None:
        pytest.fail('mkfs.xfs not found: install xfsprogs to test the reflink path')
    root = tmp_path_factory.mktemp('xfs')
    image, mount_point = root / 'xfs.img', root / 'mnt'
    mount_point.mkdir()
    with open(image, 'wb') as f:
        f.truncate(320 * 1024 * 1024)  # sparse; XFS's minimum is 300 MB
    subprocess.run([mkfs, '-q', '-m', 'reflink=1', str(image)], check=True)
    mounted = subprocess.run(
        ['mount', '-o', 'loop', str(image), str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.fail(f'cannot loop-mount an XFS image (root needed): {mounted.stderr.strip()}')
    try:
        yield mount_point
    finally:
        subprocess.run(['umount', str(mount_point)], check=True)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.parametrize('workers', [1, 4])
def test_auto_reflinks_on_xfs_sharing_blocks_and_hashing_every_file(xfs_dir, workers):
    src, dst = xfs_dir / f'src-{workers}', xfs_dir / f'dst-{workers}'
    files = make_model_tree(src, n_files=6)
    big = 'variables/variables.data-big'
    files[big] = write_random(src / big, SPLIT_MIN_BYTES + 3)  # the split path's reflink branch
    dst.mkdir()
    items = plan_tree(str(src))
    progress = Progress(sum(i.size for i in items), len(items))
    os.sync()
    free_before = free_bytes(xfs_dir)

    entries = copy_and_hash(
        items, str(dst), config=TransferConfig(method='auto', workers=workers), progress=progress
    )
    os.sync()

    copied = sum(len(d) for d in files.values())
    # Reflinked files share the source's blocks: the copy takes (almost) no space.
    assert free_before - free_bytes(xfs_dir) < copied // 10
    assert tree_files(str(dst)) == tree_files(str(src))
    for rel, data in files.items():
        assert entries[rel] == want_entry(rel, data)
    assert progress.files_done == len(items)
    shutil.rmtree(src)
    shutil.rmtree(dst)


class RecordingThreads(Progress):
    """Records which threads reported copied bytes."""

    def __init__(self):
        super().__init__(0, 0)
        self.threads: set[str] = set()

    def add_bytes(self, n: int) -> None:
        super().add_bytes(n)
        self.threads.add(threading.current_thread().name)


def test_one_large_file_alone_is_copied_and_hashed_by_several_threads(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    data = write_random(src / 'variables.data-00000-of-00001', 4 * SPLIT_CHUNK_BYTES + 1)
    dst.mkdir()
    progress = RecordingThreads()

    entries = copy_and_hash(
        plan_tree(str(src)), str(dst), config=TransferConfig(workers=4), progress=progress
    )

    assert entries['variables.data-00000-of-00001'] == want_entry(
        'variables.data-00000-of-00001', data
    )
    assert len(progress.threads) > 1, progress.threads


@pytest.mark.parametrize('direct_io', [False, True])
def test_beside_the_checks_a_copy_through_the_page_cache_takes_one_thread_per_core_not_two(
    tmp_path, direct_io
):
    # Beside the exporter's thread importing and loading TensorFlow, more copy threads
    # only take from what the export waits for, unless they wait on O_DIRECT writes
    # (transfer_config.local_copy_workers).
    src = tmp_path / 'src'
    write_random(src / 'variables.data-00000-of-00001', 4 * SPLIT_CHUNK_BYTES + 1)
    cores = os.cpu_count() or 1
    config = TransferConfig(direct_io=direct_io)
    beside_threads = min(16, 2 * cores) if direct_io else max(2, cores)
    started = {}
    for beside in (False, True):
        dst = tmp_path / f'dst-{beside}'
        dst.mkdir()
        progress = RecordingThreads()
        copy_and_hash(
            plan_tree(str(src)), str(dst), config=config, progress=progress,
            meanwhile=(lambda: None) if beside else None,
        )  # fmt: skip
        started[beside] = {t for t in progress.threads if t.startswith('final-exporter-copy')}

    assert config.threads() == min(16, 2 * cores)
    assert config.threads(beside_checks=True) == beside_threads
    assert TransferConfig(workers=3).threads(beside_checks=True) == 3  # what a user set
    assert 1 < len(started[True]) <= beside_threads
    assert len(started[False]) <= min(16, 2 * cores)


def copy_thread_nice_values() -> dict[int, int]:
    return {
        t.native_id: os.getpriority(os.PRIO_PROCESS, t.native_id)
        for t in threading.enumerate()
        if t.name.startswith('final-exporter-copy')
    }


def test_copy_threads_yield_the_cpu_to_the_exporters_own_thread_while_it_works(tmp_path):
    """TensorFlow's import and load in the exporter's own thread are what the export waits
    for last: meanwhile the copy threads run at a lower priority, and after it as before."""
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    write_random(src / 'variables.data-00000-of-00001', 4 * SPLIT_CHUNK_BYTES)
    dst.mkdir()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    during, after = {}, {}

    copy_and_hash(
        plan_tree(str(src)),
        str(dst),
        config=TransferConfig(workers=4),
        meanwhile=lambda: during.update(copy_thread_nice_values()),
        when_copied=lambda: after.update(copy_thread_nice_values()),
    )

    nice = DEFAULT_TRANSFER.background_nice
    assert nice > 0
    assert during and set(during.values()) == {base + nice}
    if os.geteuid() == 0:  # raising a priority back needs CAP_SYS_NICE
        assert after and set(after.values()) == {base}
