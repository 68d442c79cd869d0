"""Version labels in a TensorFlow Serving model config file, on real version folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from final_exporter.common.errors import InvalidInputError
from final_exporter.lifecycle.model_config import (
    CONFIG_FILENAME,
    labels,
    refresh,
    rollback,
    served_versions,
    set_label,
)
from final_exporter.storage.manifest import build_manifest
from final_exporter.storage.types import FileEntry
from final_exporter.storage.verify import hash_file, list_files, write_manifest

from conftest import KERAS_MODEL


def make_version(model_base: str, version: int) -> str:
    """A complete version: the penguin SavedModel plus its export manifest."""
    path = os.path.join(model_base, str(version))
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), path)
    files = [FileEntry(rel, *hash_file(os.path.join(path, rel))) for rel in list_files(path)]
    write_manifest(path, build_manifest(files, {'export_name': 'penguin'}))
    return path


@pytest.fixture
def model_base(tmp_path) -> str:
    base = tmp_path / 'serving' / 'penguin'
    base.mkdir(parents=True)
    for version in (1, 2, 3):
        make_version(str(base), version)
    return str(base)


def parsed(model_base: str) -> model_server_config_pb2.ModelServerConfig:
    """The file as TensorFlow Serving parses it (ParseProtoTextFile: text format)."""
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(model_base, CONFIG_FILENAME)) as f:
        text_format.Parse(f.read(), config)
    return config


def test_label_writes_a_model_server_config_with_the_version_and_its_standby(model_base):
    result = set_label(model_base, 2, 'stable')

    (entry,) = parsed(model_base).model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (
        'penguin',
        os.path.abspath(model_base),
        'tensorflow',
    )
    assert dict(entry.version_labels) == {'stable': 2}
    # Labelled 2, its standby 1 (rollback target), the latest 3.
    assert list(entry.model_version_policy.specific.versions) == [1, 2, 3]
    assert (result.applied, result.previous_version, result.served_versions) == (
        True,
        None,
        (1, 2, 3),
    )
    assert json.loads(json.dumps(result.to_lineage()))['version_labels']['labels'] == {'stable': 2}


def test_labels_read_back_with_the_server_side_name_and_path(model_base):
    set_label(model_base, 3, 'canary', model_name='penguin-prod', base_path='/models/penguin')
    set_label(model_base, 2, 'stable')

    (entry,) = parsed(model_base).model_config_list.config
    assert (entry.name, entry.base_path) == ('penguin-prod', '/models/penguin')
    assert labels(model_base) == {'canary': 3, 'stable': 2}
    assert served_versions(model_base) == [1, 2, 3]


def test_other_models_and_fields_in_the_file_are_kept(model_base):
    with open(os.path.join(model_base, CONFIG_FILENAME), 'w') as f:
        f.write(
            'model_config_list {\n'
            '  config { name: "other" base_path: "/models/other" model_platform: "tensorflow" }\n'
            '  config { name: "penguin" base_path: "/models/penguin" model_platform: "tensorflow"\n'
            '    logging_config { sampling_config { sampling_rate: 0.5 } } }\n'
            '}\n'
        )

    set_label(model_base, 3, 'stable')

    other, penguin = parsed(model_base).model_config_list.config
    assert (other.name, other.base_path, len(other.version_labels)) == ('other', '/models/other', 0)
    assert penguin.logging_config.sampling_config.sampling_rate == 0.5
    assert dict(penguin.version_labels) == {'stable': 3}


def test_moving_a_label_to_a_version_the_server_was_not_told_to_load_takes_two_calls(model_base):
    set_label(model_base, 3, 'stable')
    make_version(model_base, 4)  # Published, config not refreshed.

    first = set_label(model_base, 4, 'stable')

    assert (first.applied, labels(model_base)) == (False, {'stable': 3})
    assert 4 in served_versions(model_base)
    second = set_label(model_base, 4, 'stable')
    assert (second.applied, second.previous_version, labels(model_base)) == (True, 3, {'stable': 4})


def test_force_moves_a_label_at_once(model_base):
    set_label(model_base, 3, 'stable')
    make_version(model_base, 4)

    result = set_label(model_base, 4, 'stable', force=True)

    assert (result.applied, labels(model_base)) == (True, {'stable': 4})


def test_refresh_serves_a_new_latest_version_and_needs_a_config_file(model_base):
    assert refresh(model_base) is None
    assert not os.path.exists(os.path.join(model_base, CONFIG_FILENAME))

    set_label(model_base, 2, 'stable')
    make_version(model_base, 4)
    assert refresh(model_base) == (1, 2, 4)
    assert served_versions(model_base) == [1, 2, 4]


def test_rollback_moves_stable_to_the_standby_at_once(model_base):
    make_version(model_base, 4)
    set_label(model_base, 4, 'stable')

    result = rollback(model_base)

    assert (result.previous_version, result.version, result.applied) == (4, 3, True)
    assert labels(model_base) == {'stable': 3}
    assert served_versions(model_base) == [2, 3, 4]  # New standby 2; 4 is still the latest.


def test_rollback_skips_versions_that_do_not_verify(model_base):
    make_version(model_base, 4)
    set_label(model_base, 4, 'stable')
    with open(os.path.join(model_base, '3', 'variables', 'variables.index'), 'r+b') as f:
        f.write(b'X')

    staged = rollback(model_base)
    assert (staged.version, staged.applied, labels(model_base)) == (2, False, {'stable': 4})
    assert 2 in served_versions(model_base)

    done = rollback(model_base)
    assert (done.previous_version, done.version, done.applied) == (4, 2, True)


def test_rollback_without_an_earlier_verified_version_is_refused(model_base):
    set_label(model_base, 1, 'stable')

    with pytest.raises(InvalidInputError, match=r"cannot roll 'stable' back from version 1"):
        rollback(model_base)
    with pytest.raises(InvalidInputError, match=r"no label 'canary' .*labels \{'stable': 1\}"):
        rollback(model_base, 'canary')
    assert labels(model_base) == {'stable': 1}


def _tamper(model_base: str) -> int:
    with open(os.path.join(model_base, '2', 'saved_model.pb'), 'ab') as f:
        f.write(b'!')
    return 2


def _no_manifest(model_base: str) -> int:
    os.makedirs(os.path.join(model_base, '7'))
    return 7


@pytest.mark.parametrize(
    ('make', 'message'),
    [
        (lambda base: 9, r'version 9 does not exist .*complete versions \[1, 2, 3\]'),
        (_tamper, r'does not match its manifest: changed: saved_model.pb'),
        (_no_manifest, r'has no assets.extra/export_manifest.json'),
    ],
    ids=['missing', 'tampered', 'no-manifest'],
)
def test_labelling_a_version_that_is_missing_or_does_not_verify_is_refused(
    model_base, make, message
):
    version = make(model_base)

    with pytest.raises(InvalidInputError, match=message):
        set_label(model_base, version, 'stable')
    assert not os.path.exists(os.path.join(model_base, CONFIG_FILENAME))


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'label': '1st'}, 'label must be a letter'),
        ({'label': 'has space'}, 'label must be a letter'),
        ({'label': ''}, 'label must be a letter'),
        ({'version': -1}, 'non-negative integer'),
        ({'version': True}, 'non-negative integer'),
        ({'base_path': 'relative/penguin'}, 'absolute path or a URI'),
    ],
)
def test_bad_label_version_or_base_path_is_refused(model_base, kwargs, message):
    args = {'version': 2, 'label': 'stable', **kwargs}

    with pytest.raises(InvalidInputError, match=message):
        set_label(model_base, args.pop('version'), args.pop('label'), **args)
    assert not os.path.exists(os.path.join(model_base, CONFIG_FILENAME))


def test_unparsable_config_file_is_refused_and_left_alone(model_base):
    path = os.path.join(model_base, CONFIG_FILENAME)
    with open(path, 'w') as f:
        f.write('model_config_list { config { name: "penguin" ')

    with pytest.raises(InvalidInputError, match=r'is not a tensorflow\.serving\.ModelServerConfig'):
        set_label(model_base, 2, 'stable')
    with open(path) as f:
        assert f.read() == 'model_config_list { config { name: "penguin" '


def test_config_file_is_readable_by_a_server_running_as_another_user(model_base):
    old = os.umask(0o022)
    try:
        set_label(model_base, 2, 'stable')
    finally:
        os.umask(old)

    assert os.stat(os.path.join(model_base, CONFIG_FILENAME)).st_mode & 0o777 == 0o644


def test_eight_concurrent_label_processes_lose_no_update(model_base):
    code = (
        'import sys\n'
        'from final_exporter.lifecycle.model_config import set_label\n'
        'set_label(sys.argv[1], int(sys.argv[2]), sys.argv[3])\n'
    )
    procs = [
        subprocess.Popen([sys.executable, '-c', code, model_base, str(i % 3 + 1), f'label{i}'])
        for i in range(8)
    ]

    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    assert labels(model_base) == {f'label{i}': i % 3 + 1 for i in range(8)}
    leftovers = [n for n in os.listdir(model_base) if '.tmp-' in n]
    assert leftovers == []


def test_readers_see_a_whole_file_while_labels_change(model_base):
    set_label(model_base, 1, 'stable')
    stop = threading.Event()
    seen: list[dict[str, int]] = []
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(dict(parsed(model_base).model_config_list.config[0].version_labels))
            except BaseException as e:
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            set_label(model_base, i % 3 + 1, 'stable', verify=False, force=True)
    finally:
        stop.set()
        reader.join()

    assert errors == []
    assert seen and all(set(s) == {'stable'} for s in seen)
