"""Lineage: where an export came from, as stored in the manifest and on the PushedModel."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.core.blessing import Blessing
from final_exporter.version import __version__

_BLESSING_KEYS = {
    keys.MODEL_BLESSING_KEY: (keys.MODEL_BLESSING_URI_KEY, keys.MODEL_BLESSING_ID_KEY),
    keys.INFRA_BLESSING_KEY: (keys.INFRA_BLESSING_URI_KEY, keys.INFRA_BLESSING_ID_KEY),
}


def build_lineage(
    *,
    name: str,
    export_format: str,
    signature_names: Sequence[str],
    assets_extra_files: Sequence[str],
    source_model_uri: str,
    source_model_id: str | None,
    source_saved_model_dir: str,
    blessings: Sequence[Blessing],
    serving_fn: str | None,
    extra: Mapping[str, Any],
    clock: Callable[[], float],
) -> dict[str, Any]:
    """The lineage record; `extra` adds what only the caller knows (pipeline, evaluation)."""
    lineage: dict[str, Any] = {
        keys.EXPORT_NAME_KEY: name,
        keys.EXPORT_FORMAT_KEY: export_format,
        keys.SIGNATURE_NAMES_KEY: list(signature_names),
        keys.ASSETS_EXTRA_FILES_KEY: list(assets_extra_files),
        keys.SOURCE_MODEL_URI_KEY: source_model_uri,
        keys.SOURCE_MODEL_ID_KEY: source_model_id,
        keys.SOURCE_SAVED_MODEL_DIR_KEY: source_saved_model_dir,
        keys.SERVING_FN_LINEAGE_KEY: serving_fn,
        keys.EXPORTER_VERSION_KEY: __version__,
        keys.EXPORTED_AT_KEY: datetime.datetime.fromtimestamp(clock(), datetime.timezone.utc)
        .isoformat(timespec='seconds')
        .replace('+00:00', 'Z'),
    }
    for b in blessings:
        uri_key, id_key = _BLESSING_KEYS[b.kind]
        lineage[uri_key] = b.uri
        lineage[id_key] = b.artifact_id
    lineage.update(extra)
    return lineage


def to_properties(record: Mapping[str, Any]) -> dict[str, int | float | str]:
    """Flattens a record to MLMD custom property values: ints, floats and strings.

    None is dropped; bools become 0/1; lists and dicts become JSON strings.
    """
    props: dict[str, int | float | str] = {}
    for key, value in record.items():
        if value is None:
            continue
        if isinstance(value, bool):
            props[key] = int(value)
        elif isinstance(value, (int, float, str)):
            props[key] = value
        else:
            props[key] = json.dumps(value, sort_keys=True)
    return props
