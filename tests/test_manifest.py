"""The manifest: round trip and tamper detection (property-based)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError
from final_exporter.storage.hashing import hash_local_chunks
from final_exporter.storage.manifest import (
    CHUNK_BYTES,
    ChunkedHasher,
    build_manifest,
    manifest_bytes,
)
from final_exporter.storage.types import FileEntry
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
        if rel in (keys.ASSETS_EXTRA_DIR, keys.MANIFEST_RELPATH):
            return None  # Where the manifest goes: an export has a folder there.
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


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
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


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
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


def chunked(data: bytes, chunk_bytes: int) -> str:
    """The format-2 digest, computed here from its definition."""
    parts = [data[o : o + chunk_bytes] for o in range(0, len(data), chunk_bytes)]
    return hashlib.sha256(b''.join(hashlib.sha256(p).digest() for p in parts)).hexdigest()


def flip(path: str, offset: int) -> None:
    with open(path, 'r+b') as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 1]))


@pytest.mark.parametrize('form', ['format 1, whole-file sha256', 'format 2, chunked_sha256'])
def test_both_manifest_formats_verify_and_name_a_flipped_byte(tmp_path, form):
    root = str(tmp_path)
    data = random.Random(7).randbytes(5000)
    with open(os.path.join(root, 'variables.data'), 'wb') as f:
        f.write(data)
    if form.startswith('format 1'):
        entry = {'path': 'variables.data', 'size': 5000, 'sha256': hashlib.sha256(data).hexdigest()}
        manifest = {'format_version': 1, 'files': [entry], 'file_count': 1, 'lineage': {}}
    else:
        entry = {'path': 'variables.data', 'size': 5000, 'chunked_sha256': chunked(data, 1000)}
        manifest = {
            'format_version': 2, 'chunk_bytes': 1000, 'files': [entry], 'file_count': 1,
            'lineage': {},
        }  # fmt: skip
    write_manifest(root, manifest)

    assert verify_export(root).ok
    flip(os.path.join(root, 'variables.data'), 3456)
    assert verify_export(root).changed == ['variables.data']


def test_large_files_get_the_chunked_digest_and_small_ones_their_sha256(tmp_path):
    data = random.Random(8).randbytes(2 * CHUNK_BYTES + 1)
    hasher = ChunkedHasher()
    for o in range(0, len(data), 7 * 1024 * 1024):  # fed in reads unaligned with the chunks
        hasher.update(data[o : o + 7 * 1024 * 1024])
    path = tmp_path / 'big'
    path.write_bytes(data)

    assert hasher.entry('big') == FileEntry('big', len(data), '', chunked(data, CHUNK_BYTES))
    assert hash_local_chunks(str(path)) == FileEntry(
        str(path), len(data), '', chunked(data, CHUNK_BYTES)
    )
    small = ChunkedHasher()
    small.update(data[:CHUNK_BYTES])
    assert small.entry('s') == FileEntry(
        's', CHUNK_BYTES, hashlib.sha256(data[:CHUNK_BYTES]).hexdigest()
    )
    assert ChunkedHasher().entry('e') == FileEntry('e', 0, hashlib.sha256(b'').hexdigest())


@pytest.mark.parametrize(
    'change, message',
    [
        (
            {'format_version': 3},
            'format_version 3; this final-exporter reads format_version 1 and 2',
        ),
        ({'chunk_bytes': 0}, 'chunk_bytes 0; expected a positive number of bytes'),
    ],
)
def test_a_manifest_this_version_cannot_read_is_refused_naming_what_it_found(
    tmp_path, change, message
):
    root = str(tmp_path)
    entries = write_tree(root, {'x': b'1'})
    write_manifest(root, {**build_manifest(entries.values(), {}), **change})

    with pytest.raises(IntegrityError, match=re.escape(message)):
        verify_export(root)


json_leaves = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none())
entries = st.fixed_dictionaries(
    {'path': st.text(min_size=1, max_size=12), 'size': st.integers(min_value=0)},
    optional={'sha256': st.text(max_size=8), 'chunked_sha256': st.text(max_size=8)},
)


@settings(max_examples=200, deadline=None)
@given(
    files=st.lists(
        st.one_of(entries, st.dictionaries(st.text(max_size=4), json_leaves)), max_size=5
    ),
    lineage=st.recursive(
        json_leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(['files', 'x']), inner)
        ),
        max_leaves=6,
    ),
)
def test_manifest_bytes_are_the_canonical_json_whatever_the_entries(files, lineage):
    """The file list is written entry by entry (fast); the bytes are still exactly
    json.dumps(indent=2, sort_keys=True, ensure_ascii=False), which the digest is over."""
    manifest = {
        'format_version': 2,
        'chunk_bytes': CHUNK_BYTES,
        'files': files,
        'file_count': len(files),
        'total_bytes': 0,
        'lineage': lineage,
    }

    canonical = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + '\n'

    assert manifest_bytes(manifest) == canonical.encode()


def test_a_manifest_of_whole_file_entries_is_the_canonical_json_with_any_path():
    """The common manifest (every entry a whole-file SHA-256, as the copy makes them) takes
    the one-f-string-per-entry path: its bytes are still exactly json.dumps'."""
    paths = ['a"b\\c', 'é/ü\n', '\u2028x', 'plain/path.txt', '\x00']
    files = [FileEntry(p, n * 1000, f'{n:064x}') for n, p in enumerate(paths)]
    for manifest in (
        build_manifest(files, {'k': 'v'}),
        build_manifest([*files, FileEntry('big', 7, '', 'ab' * 32)], {}),
    ):
        canonical = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + '\n'

        assert manifest_bytes(manifest) == canonical.encode()
