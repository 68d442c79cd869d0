"""The record of an export beside its outcome artifact, as every pipeline adapter writes it.

The TFX executor (the PushedModel's folder, through TFX's `fileio`) and the
Kubeflow-native components (the `pushed_model` artifact's local path) write the
same three files; only how a file is written differs, so they pass that in.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from final_exporter.common import keys
from final_exporter.core.exporter import ExportResult
from final_exporter.core.report import render_report
from final_exporter.storage.manifest import manifest_bytes


def write_record(result: ExportResult, write: Callable[[str, str], None]) -> str:
    """Writes `lineage.json`, `report.md` and, when exported, `export_manifest.json`.

    Args:
        result: The outcome of the export.
        write: Writes one file: `write(filename, text)`, into the artifact's folder.

    Returns:
        The Markdown report, for an adapter that shows it elsewhere too.
    """
    report = render_report(result)
    files = {
        keys.LINEAGE_FILENAME: json.dumps(result.summary(), indent=2, sort_keys=True) + '\n',
        keys.REPORT_FILENAME: report,
    }
    if result.manifest is not None:
        files[keys.MANIFEST_FILENAME] = manifest_bytes(result.manifest).decode()
    for filename, text in files.items():
        write(filename, text)
    return report
