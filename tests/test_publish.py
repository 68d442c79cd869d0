"""Versions and the atomic, no-replace publish on a real filesystem."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from unittest import mock

import pytest

from final_exporter.common import fs as fs_module
from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError
from final_exporter.common.fs import (
    SYNCFS_MIN_FILES,
    flush_tree,
    rename_no_replace,
    rename_via_claim,
)
from final_exporter.storage import local as publish_module
from final_exporter.storage.local import (
    STAGING_PREFIX,
    LocalStore,
    list_versions,
    make_staging_dir,
    next_version,
    publish,
)
from final_exporter.storage.manifest import build_manifest, manifest_bytes
from final_exporter.storage.transfer import ThreadedCopier, plan_tree
from final_exporter.storage.transfer_config import TransferConfig
from final_exporter.storage.types import StageRequest
from final_exporter.storage.verify import verify_export

from conftest import published_versions


def staged(model_base: str, content: str = 'x') -> str:
    staging = make_staging_dir(model_base)
    with open(os.path.join(staging, 'saved_model.pb'), 'w') as f:
        f.write(content)
    return staging


def test_next_version_is_now_or_one_past_the_highest(tmp_path):
    base = str(tmp_path)
    assert next_version(base, clock=lambda: 100.7) == 100
    os.mkdir(tmp_path / '250')
    (tmp_path / '300').write_text('a file still takes the name')
    os.mkdir(tmp_path / 'not-a-version')
    os.mkdir(tmp_path / (STAGING_PREFIX + 'abc'))

    assert next_version(base, clock=lambda: 100.0) == 301
    assert next_version(base, clock=lambda: 1000.0) == 1000
    assert list_versions(base) == [250]


@pytest.mark.parametrize('rename', [rename_no_replace, rename_via_claim])
def test_rename_never_replaces_an_existing_version(tmp_path, rename):
    base = str(tmp_path)
    staging = staged(base, 'new')
    os.mkdir(tmp_path / '5')  # Even an empty folder is never replaced.

    with pytest.raises(FileExistsError):
        rename(staging, str(tmp_path / '5'))
    assert os.listdir(tmp_path / '5') == []
    assert os.path.isdir(staging)


def test_publish_moves_past_a_taken_version(tmp_path):
    base = str(tmp_path)
    first = publish(staged(base, 'a'), base, clock=lambda: 10.0)
    second = publish(staged(base, 'b'), base, clock=lambda: 10.0)

    assert [first[0], second[0]] == [10, 11]
    assert (tmp_path / '10' / 'saved_model.pb').read_text() == 'a'
    assert (tmp_path / '11' / 'saved_model.pb').read_text() == 'b'
    assert sorted(os.listdir(base)) == ['10', '11']


def test_eight_concurrent_cli_exports_publish_eight_distinct_complete_versions(
    model_uri, export_base
):
    cli = os.path.join(os.path.dirname(sys.executable), 'final-exporter')
    args = [cli, 'export', '--model', model_uri, '--export-base', export_base, '--name', 'penguin',
            '--no-require-blessing', '--json']  # fmt: skip
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(8)]
    outputs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]

    assert all(p.returncode == 0 for p in procs)
    versions = sorted(o['version'] for o in outputs)
    assert len(set(versions)) == 8
    model_base = os.path.join(export_base, 'penguin')
    assert published_versions(model_base) == [str(v) for v in versions]
    assert sorted(os.listdir(model_base)) == [str(v) for v in versions]  # No staging left.
    for v in versions:
        assert verify_export(os.path.join(model_base, str(v))).ok


def test_staging_folder_is_hidden_from_model_servers(tmp_path):
    staging = make_staging_dir(str(tmp_path / 'm'))

    assert not os.path.basename(staging).isdigit()
    assert list_versions(str(tmp_path / 'm')) == []


def test_a_discarded_staging_area_takes_the_folders_it_made_and_no_other(tmp_path):
    store = LocalStore()
    fresh = store.begin_staging(str(tmp_path / 'base' / 'm'), local_view=True)
    store.discard(fresh)
    assert os.listdir(tmp_path) == []

    os.mkdir(tmp_path / 'kept')  # A user's folder, empty.
    store.discard(store.begin_staging(str(tmp_path / 'kept' / 'm'), local_view=True))
    assert os.listdir(tmp_path) == ['kept']
    assert os.listdir(tmp_path / 'kept') == []


def test_a_folder_made_by_two_exports_stays_while_the_other_stages_in_it(tmp_path):
    store = LocalStore()
    model_base = str(tmp_path / 'base' / 'm')
    first = store.begin_staging(model_base, local_view=True)
    second = store.begin_staging(model_base, local_view=True)
    store.discard(first)
    name = os.path.basename(second.path)
    assert sorted(os.listdir(model_base)) == [name, name + '.lock']
    store.discard(second)  # The folders are the first's, which could not take them.
    assert os.listdir(model_base) == []


def _begin_and_fail(export_base: str, rounds: int) -> str:
    """Begins and discards a staging area under a new folder of `export_base` each round;
    '' or the error."""
    store = LocalStore()
    try:
        for r in range(rounds):
            store.discard(store.begin_staging(os.path.join(export_base, str(r)), local_view=True))
    except Exception as e:  # Reported in the test's process.
        return f'{type(e).__name__}: {e}'
    return ''


def test_exports_that_fail_while_others_begin_in_the_same_new_folder_never_collide(tmp_path):
    """Processes whose exports fail remove the folder they made while the others' begin in
    it: every staging area is begun, whatever the interleaving."""
    with multiprocessing.get_context('fork').Pool(4) as pool:
        errors = pool.starmap(_begin_and_fail, [(str(tmp_path), 1000)] * 4)
    assert [e for e in errors if e] == []
    # A folder stays only where its maker failed while another export staged in it.
    assert [f for d in os.listdir(tmp_path) for f in os.listdir(tmp_path / d)] == []


class FsyncRecorder:
    """Records, in order, the paths fsync'ed and the renames that publish a version."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def fsync(self, fd: int) -> None:
        self.events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}')))
        real_fsync(fd)

    def rename(self, src: str, dst: str) -> None:
        self.events.append(('rename', dst))
        real_rename_no_replace(src, dst)

    def syncfs(self, path: str) -> bool:
        self.events.append(('syncfs', path))
        return real_syncfs(path)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Records every fsync, syncfs and publishing rename made while the block runs."""
        with (
            mock.patch.object(os, 'fsync', autospec=True, side_effect=self.fsync),
            mock.patch.object(fs_module, 'syncfs', autospec=True, side_effect=self.syncfs),
            mock.patch.object(
                publish_module, 'rename_no_replace', autospec=True, side_effect=self.rename
            ),
        ):
            yield


real_fsync = os.fsync
real_rename_no_replace = rename_no_replace
real_syncfs = fs_module.syncfs


def test_every_staged_file_and_folder_is_on_disk_before_the_rename(tmp_path):
    # A power loss cannot be staged here; what makes a version survive one is
    # that each of its files and folders was fsync'ed before the rename.
    base = str(tmp_path / 'model')
    staging = staged(base)
    os.makedirs(os.path.join(staging, 'variables', 'deep'))
    for rel in ('variables/variables.index', 'variables/deep/shard', 'fingerprint.pb'):
        with open(os.path.join(staging, rel), 'wb') as f:
            f.write(os.urandom(3000))
    recorder = FsyncRecorder()

    with (
        mock.patch.object(os, 'fsync', autospec=True, side_effect=recorder.fsync),
        mock.patch.object(
            publish_module, 'rename_no_replace', autospec=True, side_effect=recorder.rename
        ),
    ):
        _, final_dir = publish(staging, base)

    renamed_at = recorder.events.index(('rename', final_dir))
    flushed_before = {path for kind, path in recorder.events[:renamed_at] if kind == 'fsync'}
    staged_paths = {staging} | {
        os.path.join(staging, rel)
        for rel in (
            'saved_model.pb',
            'fingerprint.pb',
            'variables',
            'variables/variables.index',
            'variables/deep',
            'variables/deep/shard',
        )
    }
    assert staged_paths <= flushed_before
    assert ('fsync', base) in recorder.events[renamed_at:]


def test_a_many_file_tree_is_flushed_with_one_syncfs_before_the_rename(tmp_path):
    base = str(tmp_path / 'model')
    staging = staged(base)
    os.makedirs(os.path.join(staging, 'assets'))
    for i in range(SYNCFS_MIN_FILES):
        with open(os.path.join(staging, 'assets', f'vocab_{i:04d}.txt'), 'wb') as f:
            f.write(b'token\n' * 100)
    recorder = FsyncRecorder()

    with (
        mock.patch.object(os, 'fsync', autospec=True, side_effect=recorder.fsync),
        mock.patch.object(
            fs_module, 'syncfs', autospec=True, side_effect=recorder.syncfs
        ) as syncfs,
        mock.patch.object(
            publish_module, 'rename_no_replace', autospec=True, side_effect=recorder.rename
        ),
    ):
        _, final_dir = publish(staging, base)

    syncfs.assert_called_once_with(staging)
    assert recorder.events[:2] == [('syncfs', staging), ('rename', final_dir)]
    assert recorder.events[2:] == [('fsync', base)]
    assert (
        sorted(os.listdir(os.path.join(final_dir, 'assets')))[-1]
        == f'vocab_{SYNCFS_MIN_FILES - 1:04d}.txt'
    )


@pytest.mark.parametrize('files', [3, SYNCFS_MIN_FILES])
def test_through_the_store_the_staged_tree_is_flushed_once_beside_its_check_before_the_rename(
    tmp_path, files
):
    store = LocalStore()
    base = str(tmp_path / 'model')
    staging = store.begin_staging(base, local_view=True)
    for i in range(files):
        store.write_export_file(staging, f'assets/vocab_{i:04d}.txt', b'token\n' * 100)
    known = store.stage_local_files(staging, [f'assets/vocab_{i:04d}.txt' for i in range(files)])
    manifest = build_manifest(known.values(), {})
    store.write_export_file(staging, keys.MANIFEST_RELPATH, manifest_bytes(manifest))
    recorder = FsyncRecorder()

    with recorder.recording():
        store.verify_staged(staging, manifest, known)
        recorder.events.append(('verified', staging.path))
        _, final_dir = store.publish(staging, time.time)

    verified_at = recorder.events.index(('verified', staging.path))
    assert recorder.events[verified_at + 1] == ('rename', final_dir)
    renamed_at = verified_at + 1
    flushes = recorder.events[:verified_at]
    staged_files = {
        os.path.join(staging.path, 'assets', f'vocab_{i:04d}.txt') for i in range(files)
    } | {os.path.join(staging.path, *keys.MANIFEST_RELPATH.split('/'))}
    if files >= SYNCFS_MIN_FILES:
        assert flushes == [('syncfs', staging.path)]
    else:
        fsynced = [path for _, path in flushes]
        assert staged_files <= set(fsynced)
        assert len(fsynced) == len(set(fsynced))  # Each once: publish flushed nothing again.
    assert recorder.events[renamed_at + 1 :] == [('fsync', base)]


def test_the_staged_check_names_a_missing_an_extra_and_a_misstated_file_and_publishes_nothing(
    tmp_path,
):
    store = LocalStore()
    base = str(tmp_path / 'model')
    staging = store.begin_staging(base, local_view=True)
    paths = [f'assets/vocab_{i}.txt' for i in range(3)]
    for path in paths:
        store.write_export_file(staging, path, b'token\n')
    known = store.stage_local_files(staging, paths)
    manifest = build_manifest(known.values(), {})
    manifest['files'][2]['size'] += 1  # The manifest says otherwise than the copy hashed.
    store.write_export_file(staging, keys.MANIFEST_RELPATH, manifest_bytes(manifest))
    os.remove(os.path.join(staging.path, 'assets', 'vocab_0.txt'))
    store.write_export_file(staging, 'assets/stray.txt', b'?')

    with pytest.raises(IntegrityError) as raised:
        store.verify_staged(staging, manifest, known)

    assert str(raised.value).endswith(
        'does not match its manifest: missing: assets/vocab_0.txt; extra: assets/stray.txt; '
        f'changed: assets/vocab_2.txt (hashed 6 bytes, {known[paths[2]].sha256} while staging)'
    )
    store.discard(staging)
    assert not os.path.exists(base)


@pytest.mark.parametrize('files', [3, 40])
def test_flush_tree_flushes_files_before_their_folders(tmp_path, files):
    root = tmp_path / 'staging'
    for i in range(files):
        path = root / f'd{i % 3}' / f'f{i}'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'x' * i)
    recorder = FsyncRecorder()

    with mock.patch.object(os, 'fsync', autospec=True, side_effect=recorder.fsync):
        flushed = flush_tree(str(root))

    order = [path for _, path in recorder.events]
    assert flushed == files
    assert sorted(order[:files]) == sorted(str(p) for p in root.rglob('f*'))
    assert set(order[files:]) == {str(root), *(str(root / f'd{i}') for i in range(3))}
    assert order[-1] == str(root)


@pytest.mark.parametrize('files', [3, SYNCFS_MIN_FILES])
def test_a_staged_tree_of_many_files_begins_its_flush_once_copied_and_flushes_the_manifest_too(
    tmp_path, files
):
    src = tmp_path / 'src'
    src.mkdir()
    for i in range(files):
        (src / f'vocab_{i:04d}.txt').write_bytes(b'token\n' * 100)
    store = LocalStore(copier=ThreadedCopier(TransferConfig(flush_min_files=0)))
    base = str(tmp_path / 'model')
    staging = store.begin_staging(base, local_view=True)
    recorder = FsyncRecorder()

    with recorder.recording():
        known = store.stage(staging, StageRequest(plan_tree(str(src), 'assets/')))
        began = staging.handle.flushing
        if began is not None:
            began.result()
        recorder.events.append(('manifest', staging.path))
        manifest = build_manifest(known.values(), {})
        store.write_export_file(staging, keys.MANIFEST_RELPATH, manifest_bytes(manifest))
        store.verify_staged(staging, manifest, known)
        _, final_dir = store.publish(staging, time.time)

    manifest_at = recorder.events.index(('manifest', staging.path))
    if files >= SYNCFS_MIN_FILES:
        assert recorder.events[:manifest_at] == [('syncfs', staging.path)]
        assert recorder.events[manifest_at + 1 :] == [
            ('syncfs', staging.path),
            ('rename', final_dir),
            ('fsync', base),
        ]
    else:
        assert began is None
        assert recorder.events[:manifest_at] == []
        assert ('syncfs', staging.path) not in recorder.events
    assert verify_export(final_dir).ok
