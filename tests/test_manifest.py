"""The manifest: round trip and tamper detection (property-based)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from final_exporter.common import keys
from final_exporter.storage.manifest import FileEntry, build_manifest
from final_exporter.storage.verify import hash_file, read_manifest, verify_export, write_manifest

file_names = st.text(alphabet='abcdefghijklmnopqrstuvwxyz0123456789_-.é', min_size=1, max_size=12)
trees = st.dictionaries(
    st.lists(file_names, min_size=1, max_size=3)
    .map('/'.join)
    .filter(lambda p: all(part not in ('.', '..') for part in p.split('/'))),
    st.binary(max_size=2048),
    min_size=1,
    max_size=6,
)


def write_tree(root: str, files: dict[str, bytes]) -> dict[str, FileEntry] | None:
    entries = {}
    for rel, data in files.items():
        path = os.path.join(root, rel)
        if any(
            os.path.isfile(os.path.join(root, *rel.split('/')[:i]))
            for i in range(1, rel.count('/') + 1)
        ):
            return None  # A file where a folder is needed: not a tree.
        if os.path.isdir(path):
            return None
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        size, sha = hash_file(path)
        entries[rel] = FileEntry(rel, size, sha)
    return entries


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=trees, lineage=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3))
def test_manifest_round_trips_and_verifies(tmp_path_factory, files, lineage):
    root = str(tmp_path_factory.mktemp('export'))
    entries = write_tree(root, files)
    if entries is None:
        return
    manifest = build_manifest(entries.values(), lineage)

    digest = write_manifest(root, manifest)
    read, read_digest = read_manifest(root)

    assert read == manifest and read_digest == digest
    report = verify_export(root)
    assert report.ok, report.problems()
    assert report.files_checked == len(entries)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=trees, data=st.data())
def test_any_single_byte_flip_is_detected(tmp_path_factory, files, data):
    root = str(tmp_path_factory.mktemp('export'))
    entries = write_tree(root, files)
    if entries is None:
        return
    write_manifest(root, build_manifest(entries.values(), {}))
    candidates = [p for p, e in entries.items() if e.size > 0]
    if not candidates:
        return
    victim = data.draw(st.sampled_from(sorted(candidates)))
    offset = data.draw(st.integers(0, entries[victim].size - 1))
    with open(os.path.join(root, victim), 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x80]))

    report = verify_export(root)

    assert report.changed == [victim]


def test_fast_verify_trusts_hashes_computed_during_copy(tmp_path):
    root = str(tmp_path)
    entries = write_tree(root, {'a.bin': b'abc'})
    manifest = build_manifest(entries.values(), {})
    lying = {'a.bin': FileEntry('a.bin', 3, '0' * 64)}

    assert verify_export(root, manifest, rehash=False, known=entries).ok
    assert verify_export(root, manifest, rehash=False, known=lying).changed == ['a.bin']


def test_manifest_is_not_listed_in_itself(tmp_path):
    root = str(tmp_path)
    entries = write_tree(root, {'x': b'1'})
    write_manifest(root, build_manifest(entries.values(), {}))

    manifest, _ = read_manifest(root)

    assert keys.MANIFEST_RELPATH not in [f['path'] for f in manifest['files']]
