"""Retention (`exports_to_keep`) on real version folders, alone and under concurrency."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.lifecycle.model_config import CONFIG_FILENAME, labels, set_label
from final_exporter.lifecycle.retention import apply_retention
from final_exporter.storage.local import STAGING_PREFIX, TRASH_PREFIX
from final_exporter.storage.manifest import build_manifest
from final_exporter.storage.types import FileEntry
from final_exporter.storage.verify import hash_file, list_files, write_manifest

from conftest import KERAS_MODEL


def make_version(model_base: str, version: int, extra_files: int = 0) -> str:
    """A complete version: the penguin SavedModel (plus small extra files) and its manifest."""
    path = os.path.join(model_base, str(version))
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), path)
    if extra_files:
        extra = os.path.join(path, keys.ASSETS_EXTRA_DIR, 'vocab')
        os.makedirs(extra)
        for i in range(extra_files):
            with open(os.path.join(extra, f'{i:04d}.txt'), 'w') as f:
                f.write(f'token {i}\n')
    files = [FileEntry(rel, *hash_file(os.path.join(path, rel))) for rel in list_files(path)]
    write_manifest(path, build_manifest(files, {'export_name': 'penguin'}))
    return path


def make_versions(model_base: str, versions, extra_files: int = 0) -> None:
    os.makedirs(model_base, exist_ok=True)
    for version in versions:
        make_version(model_base, version, extra_files)


def numeric(model_base: str) -> list[int]:
    return sorted(int(n) for n in os.listdir(model_base) if n.isdigit())


@pytest.fixture
def model_base(tmp_path) -> str:
    return str(tmp_path / 'serving' / 'penguin')


def test_keeps_the_newest_complete_versions_and_removes_the_oldest(model_base):
    make_versions(model_base, range(1, 7))

    removed = apply_retention(model_base, 2, just_published=6)

    assert removed == [1, 2, 3, 4]
    assert numeric(model_base) == [5, 6]
    assert not [n for n in os.listdir(model_base) if n.startswith(TRASH_PREFIX)]


def test_never_removes_the_just_published_protected_or_labelled_versions(model_base):
    make_versions(model_base, range(1, 7))
    set_label(model_base, 2, 'stable')  # Pins 2, its standby 1 and the latest, 6.

    # Another exporter published 4..6 after this run published 3.
    removed = apply_retention(model_base, 1, protect={4}, just_published=3)

    assert removed == [5]
    assert numeric(model_base) == [1, 2, 3, 4, 6]
    assert labels(model_base) == {'stable': 2}


def test_leaves_non_numeric_incomplete_and_foreign_entries_alone(model_base):
    make_versions(model_base, [10, 11, 12])
    os.makedirs(os.path.join(model_base, '5', 'variables'))  # Numeric, no manifest.
    with open(os.path.join(model_base, '6'), 'w') as f:  # Numeric file.
        f.write('not a version')
    os.symlink(os.path.join(model_base, '10'), os.path.join(model_base, '7'))
    os.makedirs(os.path.join(model_base, STAGING_PREFIX + 'abc'))
    os.makedirs(os.path.join(model_base, 'notes'))
    with open(os.path.join(model_base, CONFIG_FILENAME), 'w') as f:
        f.write('')
    before = set(os.listdir(model_base))

    removed = apply_retention(model_base, 1, just_published=12)

    assert removed == [10, 11]
    assert set(os.listdir(model_base)) == before - {'10', '11'} | {'.models.config.lock'}


@pytest.mark.parametrize('keep', [0, -1, True, 1.5, '2'])
def test_bad_keep_is_refused_and_nothing_is_removed(model_base, keep):
    make_versions(model_base, [1, 2])

    with pytest.raises(InvalidInputError, match='exports_to_keep must be an integer >= 1'):
        apply_retention(model_base, keep, just_published=2)
    assert numeric(model_base) == [1, 2]


def test_missing_model_base_or_broken_model_config_is_refused(model_base, tmp_path):
    with pytest.raises(InvalidInputError, match='does not exist'):
        apply_retention(str(tmp_path / 'nowhere'), 1, just_published=1)

    make_versions(model_base, [1, 2, 3])
    with open(os.path.join(model_base, CONFIG_FILENAME), 'w') as f:
        f.write('model_config_list {')
    with pytest.raises(InvalidInputError, match='is not a tensorflow'):
        apply_retention(model_base, 1, just_published=3)
    assert numeric(model_base) == [1, 2, 3]


def test_trash_left_by_a_dead_run_is_removed(model_base):
    make_versions(model_base, [1, 2])
    trash = os.path.join(model_base, f'{TRASH_PREFIX}0-deadbeef')
    shutil.copytree(os.path.join(model_base, '1'), trash)

    assert apply_retention(model_base, 5, just_published=2) == []
    assert sorted(os.listdir(model_base)) == ['.models.config.lock', '1', '2']


def test_eight_concurrent_threads_remove_each_version_exactly_once(model_base):
    make_versions(model_base, range(1, 21))
    barrier = threading.Barrier(8)
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(apply_retention(model_base, 3, just_published=20))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert sorted(v for r in results for v in r) == list(range(1, 18))
    assert sorted(os.listdir(model_base)) == ['.models.config.lock', '18', '19', '20']


def test_concurrent_retention_processes_do_not_fail_or_remove_twice(model_base):
    make_versions(model_base, range(1, 16))
    code = (
        'import json, sys\n'
        'from final_exporter.lifecycle.retention import apply_retention\n'
        'print(json.dumps(apply_retention(sys.argv[1], 2, just_published=int(sys.argv[2]))))\n'
    )
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', code, model_base, str(v)], stdout=subprocess.PIPE, text=True
        )
        for v in (15, 14, 13, 12)
    ]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    removed = sorted(v for out in outputs for v in out)
    assert len(removed) == len(set(removed))
    # What is left: the newest 2, plus whichever just-published versions a run kept.
    assert set(numeric(model_base)) == set(range(1, 16)) - set(removed)
    assert set(numeric(model_base)) >= {14, 15}
    assert set(removed) >= set(range(1, 12))


def test_a_polling_server_never_sees_a_partly_deleted_version(model_base):
    make_versions(model_base, range(1, 13), extra_files=300)
    stop = threading.Event()
    partial: list[str] = []
    polls = [0]

    def poll() -> None:
        # What TensorFlow Serving does: list the numeric folders, then read one.
        while not stop.is_set():
            polls[0] += 1
            for name in os.listdir(model_base):
                if not name.isdigit():
                    continue
                manifest = os.path.join(model_base, name, keys.MANIFEST_RELPATH)
                try:
                    with open(manifest) as f:
                        wanted = [e['path'] for e in json.load(f)['files']]
                    missing = [
                        p for p in wanted if not os.path.exists(os.path.join(model_base, name, p))
                    ]
                except FileNotFoundError:
                    missing = ['manifest']
                # A version that vanished whole (renamed away) is fine; a folder that is
                # still there with files gone is what a server must never see.
                if missing and os.path.isdir(os.path.join(model_base, name)):
                    partial.append(f'{name}: {missing[:3]}')

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        removed = apply_retention(model_base, 1, just_published=12)
    finally:
        stop.set()
        poller.join()

    assert removed == list(range(1, 12))
    assert partial == []
    assert polls[0] > 0


def test_a_label_set_during_retention_never_points_to_a_removed_version(model_base):
    make_versions(model_base, range(1, 13))
    removed: list[int] = []
    refused: list[int] = []

    def retain() -> None:
        removed.extend(apply_retention(model_base, 1, just_published=12))

    def label() -> None:
        for version in range(2, 12):
            try:
                set_label(model_base, version, f'v{version}', verify=False)
            except InvalidInputError:
                refused.append(version)  # Already removed: refused, not dangling.

    threads = [threading.Thread(target=retain), threading.Thread(target=label)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    labelled = labels(model_base)
    assert set(labelled.values()).isdisjoint(removed)
    for version in labelled.values():
        assert os.path.isfile(os.path.join(model_base, str(version), keys.MANIFEST_RELPATH))
    assert sorted(set(labelled.values()) | set(refused)) == list(range(2, 12))
