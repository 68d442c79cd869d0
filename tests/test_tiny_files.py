"""A folder of many tiny files: copied by this process and a helper process side by side."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import threading
import time

import pytest

from final_exporter.common.errors import IntegrityError
from final_exporter.common.fs import flushing_while
from final_exporter.common.progress import Progress
from final_exporter.storage import small_copy
from final_exporter.storage.tiny_files import copy_folder_files
from final_exporter.storage.transfer import copy_and_hash, plan_tree, read_permission
from final_exporter.storage.transfer_config import TransferConfig
from final_exporter.storage.types import FileEntry

# A helper per 10 files: 60 files take one on any machine of two cores or more.
WITH_HELPERS = TransferConfig(method='copy', tiny_files_per_helper=10)
WITHOUT_HELPERS = TransferConfig(method='copy', tiny_files_per_helper=0)

needs_two_cores = pytest.mark.skipif(
    (os.cpu_count() or 1) < 2, reason='helpers are one less than the cores: none on one core'
)


def tiny_folder(root, n: int = 60) -> dict[str, bytes]:
    files = {f'assets/f{i:03d}': os.urandom(1 + i * 37 % 3000) for i in range(n)}
    files['saved_model.pb'] = b'graph'
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def children_page_faults() -> int:
    """Page faults of the waited-for child processes: a Python that started adds thousands."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


@needs_two_cores
def test_a_helper_process_copies_a_share_of_a_folders_tiny_files(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = tiny_folder(src)
    before = children_page_faults()

    entries = copy_and_hash(plan_tree(str(src)), str(dst), config=WITH_HELPERS)

    assert children_page_faults() - before > 500  # A helper ran (and was waited for).
    assert entries == {
        rel: FileEntry(rel, len(data), hashlib.sha256(data).hexdigest())
        for rel, data in files.items()
    }
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data


def test_without_helpers_no_process_is_started_and_the_entries_are_the_same(tmp_path):
    src = tmp_path / 'src'
    tiny_folder(src)
    before = children_page_faults()

    alone = copy_and_hash(plan_tree(str(src)), str(tmp_path / 'a'), config=WITHOUT_HELPERS)

    assert children_page_faults() == before
    shared = copy_and_hash(plan_tree(str(src)), str(tmp_path / 'b'), config=WITH_HELPERS)
    assert alone == shared


def test_beside_the_checks_no_helper_is_started(tmp_path):
    src = tmp_path / 'src'
    tiny_folder(src)
    before = children_page_faults()

    copy_and_hash(
        plan_tree(str(src)), str(tmp_path / 'dst'), config=WITH_HELPERS, meanwhile=lambda: None
    )

    assert children_page_faults() == before


# This process and the helpers take a folder's files interleaved: on 2 cores, of the
# folder's last two files one is this process's and one the helper's.
EITHER_SHARE = pytest.mark.parametrize('index', [-2, -3])


def planned(tmp_path, index: int):
    """(the plan of a tiny folder under tmp_path/src, its item `index`, tmp_path/dst)."""
    tiny_folder(tmp_path / 'src')
    items = plan_tree(str(tmp_path / 'src'))
    return items, items[index], tmp_path / 'dst'


@needs_two_cores
@EITHER_SHARE
def test_a_file_removed_before_it_is_read_is_named_in_one_error(tmp_path, index):
    items, gone, dst = planned(tmp_path, index)
    os.remove(gone.src)

    with pytest.raises(IntegrityError, match='was removed') as e:
        copy_and_hash(items, str(dst), config=WITH_HELPERS)

    assert repr(gone.src) in str(e.value)


@needs_two_cores
def test_a_folder_is_reported_placed_with_every_byte_in_place_before_the_helpers_answers_are_read(
    tmp_path,
):
    files = tiny_folder(tmp_path / 'src')
    folder = [i for i in plan_tree(str(tmp_path / 'src')) if i.dest.startswith('assets/')]
    dst = tmp_path / 'dst'
    (dst / 'assets').mkdir(parents=True)
    progress = Progress(total_bytes=0, total_files=len(folder))
    seen = []

    def placed() -> None:
        seen.append(({i.dest: (dst / i.dest).read_bytes() for i in folder}, progress.files_done))

    entries = copy_folder_files(folder, str(dst), WITH_HELPERS, progress, placed)

    ((in_place, counted),) = seen
    assert in_place == {i.dest: files[i.dest] for i in folder}
    assert counted < len(folder)  # The helper's files are counted as its answer is read.
    assert progress.files_done == len(entries) == len(folder)


@needs_two_cores
@EITHER_SHARE
def test_a_folder_is_reported_placed_only_with_a_file_that_outgrew_a_helpers_buffer_in_place(
    tmp_path, index
):
    items, grown, dst = planned(tmp_path, index)
    data = os.urandom(small_copy.HELPER_BUFFER_BYTES + 10)
    with open(grown.src, 'wb') as f:
        f.write(data)
    (dst / 'assets').mkdir(parents=True)
    target = dst / grown.dest
    seen = []

    def placed() -> None:
        seen.append(target.read_bytes() if target.exists() else None)

    copy_folder_files(items[:-1], str(dst), WITH_HELPERS, None, placed)

    assert seen in ([], [data])  # Not called at all where the helper left it to this thread.
    assert target.read_bytes() == data


@needs_two_cores
@EITHER_SHARE
def test_a_folder_whose_copy_failed_is_never_reported_placed(tmp_path, index):
    items, gone, dst = planned(tmp_path, index)
    os.remove(gone.src)
    (dst / 'assets').mkdir(parents=True)
    placed = []

    with pytest.raises(IntegrityError, match='was removed'):
        copy_folder_files(items[:-1], str(dst), WITH_HELPERS, None, lambda: placed.append(1))

    assert placed == []


@needs_two_cores
@EITHER_SHARE
def test_an_existing_destination_is_never_overwritten_by_either_process(tmp_path, index):
    items, item, dst = planned(tmp_path, index)
    taken = dst / item.dest
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b'old')

    with pytest.raises(FileExistsError) as e:
        copy_and_hash(items, str(dst), config=WITH_HELPERS)

    assert e.value.filename == str(taken)
    assert taken.read_bytes() == b'old'


@needs_two_cores
@EITHER_SHARE
def test_a_file_that_outgrew_a_helpers_buffer_is_copied_whole(tmp_path, index):
    items, grown, dst = planned(tmp_path, index)  # Planned tiny; larger than a buffer when copied.
    data = os.urandom(small_copy.HELPER_BUFFER_BYTES + 10)
    with open(grown.src, 'wb') as f:
        f.write(data)

    entries = copy_and_hash(items, str(dst), config=WITH_HELPERS)

    assert entries[grown.dest] == FileEntry(grown.dest, len(data), hashlib.sha256(data).hexdigest())
    assert (dst / grown.dest).read_bytes() == data


@needs_two_cores
def test_names_with_newlines_and_undecodable_bytes_pass_through_the_helper(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    tiny_folder(src)
    odd = os.fsdecode(b'assets/z-new\nline-\xff')
    (src / odd).write_bytes(b'odd')

    entries = copy_and_hash(plan_tree(str(src)), str(dst), config=WITH_HELPERS)

    assert entries[odd] == FileEntry(odd, 3, hashlib.sha256(b'odd').hexdigest())
    assert (dst / odd).read_bytes() == b'odd'


@needs_two_cores
def test_a_helper_that_cannot_start_leaves_its_share_to_this_process(tmp_path):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    files = tiny_folder(src)
    # In a process of its own, whose interpreter path names nothing: starting a helper fails.
    script = f"""
import sys
sys.executable = {str(tmp_path / 'no-such-python')!r}
from final_exporter.storage.transfer import copy_and_hash, plan_tree
from final_exporter.storage.transfer_config import TransferConfig
entries = copy_and_hash(plan_tree({str(src)!r}), {str(dst)!r},
                        config=TransferConfig(method='copy', tiny_files_per_helper=10))
print(len(entries))
"""
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True)

    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(len(files))]
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data


@pytest.mark.parametrize(
    'error',
    [
        small_copy.SmallCopyError('open', 13),
        small_copy.SmallCopyError('write', 28, 4096, 9000),
        small_copy.SmallCopyError('changed', 0, 10, 20, 30, 'replaced'),
        small_copy.SmallCopyError('changed', 0, 10, 20, -1),
    ],
)
def test_a_helpers_error_line_reads_back_as_the_same_error(error):
    index, back = small_copy.SmallCopyError.from_line(error.line(7))

    assert index == 7
    assert [getattr(back, f) for f in back.FIELDS] == [getattr(error, f) for f in error.FIELDS]


def test_the_filesystem_is_flushed_while_a_block_runs_and_not_after(tmp_path):
    flushed = []

    with flushing_while(str(tmp_path), 0.01, flush=flushed.append):
        time.sleep(0.2)
    count = len(flushed)
    time.sleep(0.1)

    assert count >= 3
    assert set(flushed) == {str(tmp_path)}
    assert len(flushed) <= count + 1  # At most the flush under way as the block ended.
    assert not any(t.name == 'final-exporter-flush' for t in threading.enumerate())


class FlushSeen(Progress):
    """Notes, as each file is done, whether the copy's flush thread is running."""

    def __init__(self) -> None:
        super().__init__(total_bytes=0, total_files=0)
        self.seen: list[bool] = []

    def file_done(self, path: str) -> None:
        super().file_done(path)
        self.seen.append(any(t.name == 'final-exporter-flush' for t in threading.enumerate()))


@pytest.mark.parametrize(
    ('files', 'beside_checks', 'flushes'),
    [(40, False, True), (20, False, False), (40, True, False)],
    ids=['many-files', 'few-files', 'beside-the-checks'],
)
def test_a_copy_of_many_files_flushes_while_it_runs_unless_beside_the_checks(
    tmp_path, files, beside_checks, flushes
):
    src = tmp_path / 'src'
    tiny_folder(src, n=files - 1)  # And saved_model.pb.
    progress = FlushSeen()
    config = TransferConfig(method='copy', flush_min_files=files if flushes else 32)

    copy_and_hash(
        plan_tree(str(src)),
        str(tmp_path / 'dst'),
        config=config,
        progress=progress,
        meanwhile=(lambda: None) if beside_checks else None,
    )

    assert len(progress.seen) == files
    assert any(progress.seen) == flushes


@pytest.mark.parametrize(
    ('mode', 'readable'), [(0o600, True), (0o400, True), (0o200, False), (0o044, False)]
)
def test_an_owners_read_permission_is_read_from_the_owner_bits(tmp_path, mode, readable):
    path = tmp_path / 'f'
    path.write_bytes(b'x')
    path.chmod(mode)

    assert read_permission()(os.stat(path)) is readable
