"""The export manifest: every file's path, size and digest, plus the lineage.

The manifest is written to `assets.extra/export_manifest.json` inside the export,
so a served model carries the proof of what it is and where it came from. It
lists every file of the export except itself. Its own SHA-256 (the digest
recorded in the PushedModel artifact) pins the whole export.

A file's digest is one of two (format 2; format 1 has only the first):
`sha256`, the whole-file SHA-256, for files of at most one chunk; and
`chunked_sha256` for larger ones: the SHA-256 of the concatenated raw SHA-256
digests of its `chunk_bytes`-sized chunks (the last one shorter). SHA-256 is
sequential, so a whole-file digest caps one file at one core's hash speed;
chunks are hashed by every core at once. A one-chunk file's chunk digest is
its whole-file SHA-256, so `sha256sum` still checks every small file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import operator
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError
from final_exporter.storage.types import CHUNKED_SHA256, SHA256, FileEntry

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
# 32 MiB: the piece size of a split local copy and of an S3 multipart upload, large
# enough that a chunk's digest costs nothing next to its bytes (32 bytes per 32 MiB).
CHUNK_BYTES = 32 * 1024 * 1024


def entry_digest(entry: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, hex) of a manifest's file entry, format 1 or 2."""
    if CHUNKED_SHA256 in entry:
        return CHUNKED_SHA256, str(entry[CHUNKED_SHA256])
    return SHA256, str(entry.get(SHA256, ''))


def entry_from_chunks(path: str, size: int, digests: Sequence[bytes]) -> FileEntry:
    """The entry of a file whose chunks (in order, at least one) have these SHA-256 digests."""
    if len(digests) == 1:
        return FileEntry(path, size, digests[0].hex())
    return FileEntry(path, size, '', hashlib.sha256(b''.join(digests)).hexdigest())


def chunk_count(size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Chunks a file of `size` bytes is hashed in (an empty file is one empty chunk)."""
    return max(1, -(-size // chunk_bytes))


class ChunkedHasher:
    """Hashes bytes fed in order into the digest `entry_from_chunks` defines.

    Args:
        chunk_bytes: The chunk size.
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._chunk_bytes = chunk_bytes
        self._current = hashlib.sha256()
        self._in_current = 0
        self.digests: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self._chunk_bytes - self._in_current)
            self._current.update(view[:take])
            self._in_current += take
            self.size += take
            view = view[take:]
            if self._in_current == self._chunk_bytes:
                self.digests.append(self._current.digest())
                self._current, self._in_current = hashlib.sha256(), 0

    def entry(self, path: str) -> FileEntry:
        digests = list(self.digests)
        if self._in_current or not digests:
            digests.append(self._current.digest())
        return entry_from_chunks(path, self.size, digests)


def build_manifest(
    files: Iterable[FileEntry], lineage: Mapping[str, Any], chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Any]:
    entries = sorted(files, key=lambda f: f.path)
    return {
        'format_version': FORMAT_VERSION,
        'chunk_bytes': chunk_bytes,
        'files': [f.as_dict() for f in entries],
        'file_count': len(entries),
        'total_bytes': sum(f.size for f in entries),
        'lineage': dict(lineage),
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical encoding: what is written and what the digest is taken over.

    `json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)` plus a
    newline. The file list is written entry by entry with the same text: with
    `indent`, `json` encodes in Python, and for a model of 20,000 files that
    took a tenth of the export.
    """
    files = manifest.get('files')
    if not (isinstance(files, list) and files and set(map(type, files)) == {dict}):
        return _canonical(manifest)
    text = _sha256_entries_text(files)
    if text is None:
        if not _plain_entries(files):
            return _canonical(manifest)
        text = _entries_text(files)
    rest = _canonical_text({**manifest, 'files': []})
    placeholder = '\n  "files": [],\n'
    if rest.count(placeholder) != 1:
        return _canonical(manifest)
    return rest.replace(placeholder, f'\n  "files": [\n{text}\n  ],\n').encode()


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    return _canonical_text(manifest).encode()


def _canonical_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + '\n'


_ENTRY_KEYS = frozenset({'path', 'size', SHA256, CHUNKED_SHA256})


# A whole-file entry as `FileEntry.as_dict` makes it: its keys in that order, and the
# fields in the order `sort_keys` writes them.
_SHA256_ENTRY_KEYS = ('path', 'size', SHA256)
_SHA256_ENTRY_FIELDS = operator.itemgetter('path', SHA256, 'size')
_SIZE = operator.itemgetter('size')


def _sha256_entries_text(files: list[dict[str, Any]]) -> str | None:
    """Entries that are all whole-file entries (`_SHA256_ENTRY_KEYS`: path and digest
    strings, an integer size) as `_entries_text` writes them, an f-string each (20,000
    entries: 13 ms, against 20 ms checked and encoded by `json`); None for any other list."""
    if set(map(tuple, files)) != {_SHA256_ENTRY_KEYS} or set(map(type, map(_SIZE, files))) != {int}:
        return None
    quote, key = _json_string, _json_string(SHA256)
    try:  # `quote` refuses anything but a string (a path or digest of another type).
        return ',\n'.join(
            [
                f'    {{\n      "path": {quote(path)},\n      {key}: {quote(digest)},\n'
                f'      "size": {size}\n    }}'
                for path, digest, size in map(_SHA256_ENTRY_FIELDS, files)
            ]
        )
    except TypeError:
        return None


def _plain_entries(files: list[dict[str, Any]]) -> bool:
    """Every entry (each a dict) maps entry keys to strings and integers only (what
    `_entries_text` writes as json does). Iterated in C, not per entry in Python (20,000
    entries: 30 ms)."""
    names = itertools.chain.from_iterable(files)
    values = itertools.chain.from_iterable(map(dict.values, files))
    return set(names) <= _ENTRY_KEYS and set(map(type, values)) <= {str, int}


# Encodes a list of file entries in C, with the field separator `indent=2` puts between
# two fields of an entry at the list's depth (`_entries_text` fixes up the rest).
_ENTRIES_ENCODER = json.JSONEncoder(
    separators=(',\n      ', ': '), sort_keys=True, ensure_ascii=False
)
# Between two entries in that encoding, and as `indent=2` writes it. A string's newline is
# escaped, so a raw newline is always the encoder's own: this occurs nowhere else.
_BETWEEN, _INDENTED_BETWEEN = '},\n      {', '\n    },\n    {\n      '


def _entries_text(files: list[dict[str, Any]]) -> str:
    """Plain, non-empty entries as `json.dumps(..., indent=2, sort_keys=True)` writes them
    in the list: one C encoding and one replace (a fifth of the time of an entry at a time)."""
    if not all(files):
        return ',\n'.join(map(_entry_text, files))
    body = _ENTRIES_ENCODER.encode(files)[2:-2].replace(_BETWEEN, _INDENTED_BETWEEN)
    return f'    {{\n      {body}\n    }}'


def _entry_text(entry: Mapping[str, Any]) -> str:
    """One file entry as `json.dumps(..., indent=2, sort_keys=True)` writes it in the list."""
    fields = ',\n'.join(
        f'      {_json_string(key)}: '
        f'{_json_string(value) if type(value) is str else int.__repr__(value)}'
        for key, value in sorted(entry.items())
    )
    return f'    {{\n{fields}\n    }}' if entry else '    {}'


_json_string = json.encoder.encode_basestring  # ensure_ascii=False's string encoder (C)


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """The manifest in `data` (read from `where`), format 1 or 2.

    Raises:
        IntegrityError: if it is not a manifest this release reads.
    """
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict) or not isinstance(manifest.get('files'), list):
            raise ValueError('no "files" list')
    except ValueError as e:
        raise IntegrityError(f'{where!r} is not a valid export manifest ({e})') from None
    found = manifest.get('format_version')
    if found not in READABLE_FORMATS:
        raise IntegrityError(
            f'{where!r} has manifest format_version {found!r}; this final-exporter reads '
            f'format_version {" and ".join(map(str, READABLE_FORMATS))} (a newer one wrote it?)'
        )
    chunk_bytes = manifest.get('chunk_bytes', CHUNK_BYTES)
    if type(chunk_bytes) is not int or chunk_bytes <= 0:
        raise IntegrityError(
            f'{where!r} has chunk_bytes {chunk_bytes!r}; expected a positive number of bytes'
        )
    return manifest


@dataclasses.dataclass
class VerifyReport:
    """Differences between an export folder and its manifest."""

    export_dir: str
    manifest_sha256: str = ''
    missing: list[str] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)
    files_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.changed)

    def problems(self) -> list[str]:
        return (
            [f'missing: {p}' for p in self.missing]
            + [f'extra: {p}' for p in self.extra]
            + [f'changed: {p}' for p in self.changed]
        )


def is_signed(manifest: Mapping[str, Any]) -> bool:
    """Whether the manifest's lineage says the export was signed (and so has a signature)."""
    return bool(manifest.get('lineage', {}).get(keys.SIGNING_LINEAGE_KEY))


def exporter_files(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The files an export holds beside those its manifest lists: the manifest, and the
    signature when the export was signed (it signs the manifest, which cannot list it)."""
    if is_signed(manifest):
        return (keys.MANIFEST_RELPATH, keys.SIGNATURE_RELPATH)
    return (keys.MANIFEST_RELPATH,)


def staged_problems(
    found: Collection[str], manifest: Mapping[str, Any], known: Mapping[str, FileEntry]
) -> list[str]:
    """What a staged export whose files are `found` (relative paths) has against its
    manifest: `listing_problems`, then `hashed_problems` for every file it lists."""
    return listing_problems(found, manifest) + hashed_problems(manifest, known, every_file=True)


def hashed_problems(
    manifest: Mapping[str, Any], known: Mapping[str, FileEntry], *, every_file: bool
) -> list[str]:
    """`changed:` for each file the manifest lists otherwise than it was hashed while
    staging (`known`); with `every_file`, also for each it lists that was not staged."""
    problems = []
    for f in manifest['files']:
        entry = known.get(f['path'])
        if entry is None:
            if every_file:
                problems.append(f'changed: {f["path"]} (never staged by this export)')
        elif (entry.size, entry.digest) != (f['size'], entry_digest(f)):
            problems.append(
                f'changed: {f["path"]} (hashed {entry.size} bytes, {entry.digest[1]} while staging)'
            )
    return problems


def listing_problems(found: Collection[str], manifest: Mapping[str, Any]) -> list[str]:
    """`missing:` and `extra:` for a staged export's files `found` (relative paths) against
    those its manifest lists and the exporter's own (`exporter_files`)."""
    listed = {f['path'] for f in manifest['files']} | set(exporter_files(manifest))
    found = set(found)
    return [f'missing: {p}' for p in sorted(listed - found)] + [
        f'extra: {p}' for p in sorted(found - listed)
    ]


def verify_tree(
    store: Any,
    root: str,
    manifest: Mapping[str, Any],
    *,
    rehash: bool = True,
    known: Mapping[str, FileEntry] | None = None,
    report: VerifyReport | None = None,
) -> VerifyReport:
    """Compares the files under `root` on `store` (a `storage.base.Store`) with a manifest.

    See `storage.verify.verify_export` for the arguments.
    """
    report = report or VerifyReport(export_dir=root)
    expected = {f['path']: f for f in manifest['files']}
    found = store.list_files(root)
    found.pop(keys.MANIFEST_RELPATH, None)
    # The signature signs the manifest, so the manifest cannot list it; the lineage
    # says whether there must be one (storage/signing.py checks what it says).
    signed = keys.SIGNATURE_RELPATH not in expected and (
        found.pop(keys.SIGNATURE_RELPATH, None) is not None
    )
    report.missing = sorted(set(expected) - set(found))
    if is_signed(manifest) and not signed:
        report.missing.append(keys.SIGNATURE_RELPATH)
    report.extra = sorted(set(found) - set(expected))
    chunk_bytes = int(manifest.get('chunk_bytes', CHUNK_BYTES))
    known = known or {}
    changed = []
    both = expected.keys() & found.keys()
    report.files_checked += len(both)
    for path in sorted(both) if rehash else both:  # Files read in order; sizes in any.
        want = expected[path]
        if found[path] != want['size']:
            changed.append(path)
            continue
        if rehash:
            kind, expected_hex = entry_digest(want)
            _, got = store.digest_file(store.join(root, *path.split('/')), kind, chunk_bytes)
            report.bytes_checked += want['size']
            if got != expected_hex:
                changed.append(path)
        elif path in known and known[path].digest != entry_digest(want):
            changed.append(path)
    report.changed += sorted(changed)
    return report
