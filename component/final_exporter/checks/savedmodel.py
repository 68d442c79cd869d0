"""Finds and checks a SavedModel without importing TensorFlow.

Importing TensorFlow costs seconds of start-up, and the plain-copy export needs
none of it. This module resolves the SavedModel folder inside a TFX `Model`
artifact (both layouts TFX produces) and checks the SavedModel's structure:
the graph file is present and parses as a `SavedModel` protocol buffer (read at
the wire level, which also catches truncation), and the variables checkpoint
has its index and every data shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator
from typing import Any

from final_exporter.checks.protowire import LEN as _LEN
from final_exporter.checks.protowire import WireError as _WireError
from final_exporter.checks.protowire import field_at as _field_at
from final_exporter.checks.protowire import fields as _fields
from final_exporter.checks.protowire import len_field as _len_field
from final_exporter.checks.signature_defs import (
    ServingSignatures,
    decode_saved_model_pb,
    parse_serving_signatures,
    serving_signatures_of,
)
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError

# Folder names inside a TFX Model artifact (tfx/utils/path_constants.py and the
# pre-0.21 name kept by tfx/utils/path_utils.py).
SERVING_MODEL_DIRS = ('Format-Serving', 'serving_model_dir')
ESTIMATOR_EXPORT_DIR = 'export'
# The graph file. Loaders (TensorFlow Serving; see the TFX Pusher) take its presence
# as "the SavedModel is complete": an export publishes it last and a removal deletes
# it first (`stores.StoreOptions.publish_last`).
GRAPH_FILES = (keys.SAVED_MODEL_PB, keys.SAVED_MODEL_PBTXT)

_VARIABLES_DIR = 'variables'
_VARIABLES_INDEX = 'variables.index'
_SHARD_RE = re.compile(r'^variables\.data-(\d{5})-of-(\d{5})$')
_PBTXT_SIGNATURE_RE = re.compile(r'^\s*signature_def\s*\{\s*key:\s*"((?:[^"\\]|\\.)*)"', re.M)
_PBTXT_TAG_RE = re.compile(r'^\s{2,4}tags:\s*"((?:[^"\\]|\\.)*)"', re.M)


@dataclasses.dataclass(frozen=True)
class SavedModelInfo:
    """What the structure check found.

    Attributes:
        path: The SavedModel folder.
        graph_file: `saved_model.pb` or `saved_model.pbtxt`.
        tags: Tags of the meta graphs, e.g. ['serve'].
        signature_names: Signature keys of all meta graphs, sorted, without the
            internal ones (`__saved_model_init_op`).
        serving: The serving signatures, read from the same bytes, so the signature
            guard need not read the graph file again (for a model in a bucket, a
            second download); None where they do not parse.
        tensorflow_version: The TensorFlow version that saved the model (`2.16.1`: the
            first meta graph's `meta_info_def.tensorflow_version`), if recorded.
    """

    path: str
    graph_file: str
    tags: tuple[str, ...]
    signature_names: tuple[str, ...]
    serving: ServingSignatures | None = dataclasses.field(default=None, compare=False)
    tensorflow_version: str | None = None

    @property
    def export_format(self) -> str:
        return 'pbtxt' if self.graph_file == keys.SAVED_MODEL_PBTXT else 'pb'


def is_saved_model_dir(path: str, store: Any) -> bool:
    names = store.children(path)
    return any(name in names for name in GRAPH_FILES)


def resolve_saved_model_dir(path: str, store: Any) -> str:
    """Returns the SavedModel folder for a Model artifact folder or a SavedModel.

    Accepts, like `tfx.utils.path_utils.serving_model_path`:
      * a SavedModel folder itself;
      * `<uri>/Format-Serving/` (TFX >= 0.21 layout) or `<uri>/serving_model_dir/`;
      * the Estimator layout `<uri>/Format-Serving/export/<name>/<timestamp>/`, where
        the newest numeric timestamp wins.

    `store` (a `storage.base.Store`) is where `path` lives: a local folder tree or
    a bucket; only its listings and the graph file are read.

    Raises:
        InvalidInputError: naming the path and what is missing.
    """
    names = store.children(path)
    if not names:
        raise InvalidInputError(
            f'model path {path!r} does not exist, is not a folder or is empty: it holds no '
            'SavedModel'
        )
    if is_saved_model_dir(path, store):
        return path
    for name in SERVING_MODEL_DIRS:
        serving_dir = store.join(path, name)
        if name in names and store.children(serving_dir):
            export_dir = store.join(serving_dir, ESTIMATOR_EXPORT_DIR)
            if not is_saved_model_dir(serving_dir, store) and store.children(export_dir):
                return _newest_estimator_export(export_dir, store)
            return serving_dir
    raise InvalidInputError(
        f'model path {path!r} holds no SavedModel: expected {keys.SAVED_MODEL_PB} (or '
        f'{keys.SAVED_MODEL_PBTXT}) in it or in its {SERVING_MODEL_DIRS[0]}/ subfolder, found '
        f'{_listing(path, store)}'
    )


def _newest_estimator_export(export_dir: str, store: Any) -> str:
    names = [
        n for n in sorted(store.children(export_dir)) if store.children(store.join(export_dir, n))
    ]
    if len(names) != 1:
        raise InvalidInputError(
            f'Estimator export folder {export_dir!r} must hold exactly one exporter folder, '
            f'found {names or "none"}'
        )
    exporter_dir = store.join(export_dir, names[0])
    stamps = [n for n in store.children(exporter_dir) if n.isdigit()]
    if not stamps:
        raise InvalidInputError(
            f'Estimator exporter folder {exporter_dir!r} holds no numeric timestamp folder'
        )
    return store.join(exporter_dir, max(stamps, key=int))


def inspect_saved_model(path: str, store: Any) -> SavedModelInfo:
    """Checks the SavedModel structure in `path` (on `store`) and returns what it holds.

    Raises:
        InvalidInputError: naming the file that is missing, truncated or corrupt.
    """
    pb = store.join(path, keys.SAVED_MODEL_PB)
    pbtxt = store.join(path, keys.SAVED_MODEL_PBTXT)
    if store.is_file(pb):
        graph_file, data = keys.SAVED_MODEL_PB, _read_graph_file(pb, store)
        tags, signatures, version, serving = _read_saved_model_pb(path, pb, data)
    elif store.is_file(pbtxt):
        graph_file, data = keys.SAVED_MODEL_PBTXT, store.read_bytes(pbtxt)
        tags, signatures, version = _parse_saved_model_pbtxt(pbtxt, data)
        serving = _serving_or_none(path, graph_file, data, pbtxt)
    else:
        raise InvalidInputError(
            f'{path!r} is not a SavedModel: {keys.SAVED_MODEL_PB} is missing '
            f'(found {_listing(path, store)})'
        )
    _check_variables(path, store)
    return SavedModelInfo(
        path=path,
        graph_file=graph_file,
        tags=tuple(sorted(set(tags))),
        signature_names=tuple(sorted({s for s in signatures if not s.startswith('__')})),
        serving=serving,
        tensorflow_version=version,
    )


def _listing(path: str, store: Any, limit: int = 8) -> str:
    try:
        names = sorted(store.children(path))
    except OSError as e:
        return f'an unreadable folder ({e.strerror})'
    if not names:
        return 'an empty folder'
    shown = ', '.join(names[:limit])
    return f'{shown}, ... ({len(names)} entries)' if len(names) > limit else shown


def _check_variables(path: str, store: Any) -> None:
    names = store.children(store.join(path, _VARIABLES_DIR))
    if not names:
        return  # A SavedModel without variables (constants only) is valid.
    shards = [m for m in map(_SHARD_RE.match, names) if m]
    if not shards and _VARIABLES_INDEX not in names:
        return  # TF writes an empty variables/ folder for variable-free models.
    if _VARIABLES_INDEX not in names:
        raise InvalidInputError(
            f'SavedModel {path!r} is incomplete: {_VARIABLES_DIR}/{_VARIABLES_INDEX} is missing'
        )
    if not shards:
        raise InvalidInputError(
            f'SavedModel {path!r} is incomplete: {_VARIABLES_DIR}/ has {_VARIABLES_INDEX} but '
            'no variables.data-00000-of-NNNNN shard'
        )
    counts = {int(m.group(2)) for m in shards}
    if len(counts) > 1:
        raise InvalidInputError(
            f'SavedModel {path!r} mixes variable shard sets: {sorted(m.group(0) for m in shards)}'
        )
    total = counts.pop()
    present = {int(m.group(1)) for m in shards}
    missing = [f'variables.data-{i:05d}-of-{total:05d}' for i in range(total) if i not in present]
    if missing:
        raise InvalidInputError(
            f'SavedModel {path!r} is incomplete: {_VARIABLES_DIR}/ is missing '
            f'{", ".join(missing[:5])}'
            + (f' and {len(missing) - 5} more' if len(missing) > 5 else '')
        )


# --- protobuf wire format (checks/protowire.py) -----------------------------
# SavedModel:   1 saved_model_schema_version (varint), 2 meta_graphs (MetaGraphDef)
# MetaGraphDef: 1 meta_info_def (MetaInfoDef: 4 tags, 5 tensorflow_version),
#               5 signature_def (map entry: 1 key)


def _read_graph_file(pb_path: str, store: Any) -> bytes:
    """What the checks read of a `saved_model.pb`: a local file in outline (`_outline`),
    else (or where the outline does not add up) the whole file, whose parse says what is
    wrong with it.

    The outline leaves out the graph, which no check reads (13.4 of the 14.8 MB of a
    model of 20,000 assets), so it is read into little new memory: on a virtual machine
    that hands free memory back to its host, reading that whole file took 22-183 ms
    (docs/measured.md).
    """
    local = store.local_path(pb_path)
    if local is not None:
        with (
            contextlib.suppress(OSError, _WireError),
            open(local, 'rb', buffering=0) as f,
        ):
            return _outline(f.fileno(), os.fstat(f.fileno()).st_size)
    return store.read_bytes(pb_path)


def _outline(fd: int, size: int) -> bytes:
    """The SavedModel in the file `fd` (`size` bytes) with each meta graph's first
    `graph_def` (MetaGraphDef field 2) left out: to the checks, the same message.

    Raises:
        WireError: where the fields' lengths do not add up.
    """
    out = bytearray()
    for field, wire, header, start, end in _fields_at(fd, 0, size):
        if field == 2 and wire == _LEN:
            out += _len_field(2, _without_graph(fd, start, end))
        else:
            out += _pread(fd, header, end)
    return bytes(out)


def _without_graph(fd: int, start: int, end: int) -> bytes:
    """The meta graph in [start, end) of `fd` without its first `graph_def`; TensorFlow
    writes it second, so only the fields before it are walked here."""
    for field, wire, header, _, value_end in _fields_at(fd, start, end):
        if field == 2 and wire == _LEN:
            return _pread(fd, start, header) + _pread(fd, value_end, end)
    return _pread(fd, start, end)


_HEADER_BYTES = 20  # A field's tag and length: two varints of at most 10 bytes each.


def _fields_at(fd: int, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field, wire type, header start, value start, value end) of the message in
    [start, end) of `fd`, each read with one `pread` of its header."""
    pos = start
    while pos < end:
        head = os.pread(fd, _HEADER_BYTES, pos)
        field, wire, value_start, value_end = _field_at(head, 0, len(head))
        if pos + value_end > end:
            raise _WireError('message truncated')
        yield field, wire, pos, pos + value_start, pos + value_end
        pos += value_end


def _pread(fd: int, start: int, end: int) -> bytes:
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:  # The file shrank meanwhile.
        raise _WireError('message truncated')
    return data


def _read_saved_model_pb(
    path: str, pb_path: str, data: bytes
) -> tuple[list[str], list[str], str | None, ServingSignatures | None]:
    """(tags, signature keys, TensorFlow version, serving signatures) of a `saved_model.pb`.

    One decode gives all four where the serving signatures read; otherwise the
    wire-level walk names what is wrong with the file, or gives the first three
    (a graph of 20,000 asset files takes 7 ms a pass).
    """
    try:
        saved_model = decode_saved_model_pb(data, pb_path)
        serving = ServingSignatures(
            path, keys.SAVED_MODEL_PB, serving_signatures_of(saved_model, pb_path)
        )
    except InvalidInputError:  # Said by the signature guard, where it reads them.
        return (*_parse_saved_model_pb(pb_path, data), None)
    metas = saved_model['meta_graphs']
    infos = [info for meta in metas for info in meta.get('meta_info_def', [])]
    versions = [
        v for info in metas[0].get('meta_info_def', []) for v in info.get('tensorflow_version', [])
    ]
    return (
        [tag for info in infos for tag in info.get('tags', [])],
        [
            key
            for meta in metas
            for entry in meta.get('signature_def', [])
            for key in entry.get('key', [])
        ],
        versions[-1] if versions else None,
        serving,
    )


def _serving_or_none(
    path: str, graph_file: str, data: bytes, where: str
) -> ServingSignatures | None:
    try:
        return parse_serving_signatures(path, graph_file, data, where)
    except InvalidInputError:  # Said by the signature guard, where it reads them.
        return None


def _parse_saved_model_pb(pb_path: str, data: bytes) -> tuple[list[str], list[str], str | None]:
    size = len(data)
    if size == 0:
        raise InvalidInputError(f'{pb_path!r} is empty; the SavedModel is incomplete')
    tags: list[str] = []
    signatures: list[str] = []
    meta_graphs = 0
    version = None
    buf = memoryview(data)
    try:
        for field, wire, s, e in _fields(buf, 0, size):
            if field == 2 and wire == _LEN:
                meta_graphs += 1
                found = _parse_meta_graph(buf, s, e, tags, signatures)
                if meta_graphs == 1:
                    version = found
    except (_WireError, UnicodeDecodeError) as err:
        raise InvalidInputError(
            f'{pb_path!r} is not a valid SavedModel protocol buffer ({err}); '
            'the file is truncated or corrupt'
        ) from None
    if meta_graphs == 0:
        raise InvalidInputError(f'{pb_path!r} holds no meta graph; it is not a SavedModel')
    return tags, signatures, version


def _parse_meta_graph(
    buf, start: int, end: int, tags: list[str], signatures: list[str]
) -> str | None:
    """Adds a meta graph's tags and signature keys; returns the TensorFlow version that
    saved it, if recorded."""
    version = None
    for field, wire, s, e in _fields(buf, start, end):
        if field == 1 and wire == _LEN:
            for f2, w2, s2, e2 in _fields(buf, s, e):
                if f2 == 4 and w2 == _LEN:
                    tags.append(bytes(buf[s2:e2]).decode('utf-8'))
                elif f2 == 5 and w2 == _LEN:  # Lineage only: an odd byte is no reason to fail.
                    version = bytes(buf[s2:e2]).decode('utf-8', errors='replace')
        elif field == 5 and wire == _LEN:
            for f2, w2, s2, e2 in _fields(buf, s, e):
                if f2 == 1 and w2 == _LEN:
                    signatures.append(bytes(buf[s2:e2]).decode('utf-8'))
    return version


_PBTXT_TF_VERSION_RE = re.compile(r'tensorflow_version:\s*"([^"]*)"')


def _parse_saved_model_pbtxt(
    pbtxt_path: str, data: bytes
) -> tuple[list[str], list[str], str | None]:
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        raise InvalidInputError(f'{pbtxt_path!r} is not a text protocol buffer') from None
    if 'meta_graphs' not in text:
        raise InvalidInputError(f'{pbtxt_path!r} holds no meta graph; it is not a SavedModel')
    version = _PBTXT_TF_VERSION_RE.search(text)
    return (
        _PBTXT_TAG_RE.findall(text),
        _PBTXT_SIGNATURE_RE.findall(text),
        version.group(1) if version else None,
    )
