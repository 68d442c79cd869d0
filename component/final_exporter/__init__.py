"""tfx-final-exporter: the single, final, gated, verified, atomic SavedModel export for TFX.

The TFX pieces (`FinalExporter`, `Executor`, `FinalExporterSpec`) are imported on
first use, so `import final_exporter` and the CLI's plain-copy path start
without TensorFlow or TFX.
"""

from __future__ import annotations

import importlib
from typing import Any

from final_exporter.common.errors import (
    BlessingMismatchError,
    FinalExporterError,
    IntegrityError,
    InvalidInputError,
)
from final_exporter.core.blessing import (
    Blessing,
    GateDecision,
    blessing_from_folder,
    check_blessings,
)
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.storage.manifest import VerifyReport
from final_exporter.storage.stores import list_versions
from final_exporter.storage.verify import read_manifest, verify_export
from final_exporter.version import __version__

_LAZY = {
    'FinalExporter': 'final_exporter.adapters.tfx.component',
    'FinalExporterSpec': 'final_exporter.adapters.tfx.spec',
    'Executor': 'final_exporter.adapters.tfx.executor',
}

__all__ = [
    'Blessing',
    'BlessingMismatchError',
    'Executor',
    'ExportConfig',
    'ExportRequest',
    'ExportResult',
    'FinalExporter',
    'FinalExporterError',
    'FinalExporterSpec',
    'GateDecision',
    'IntegrityError',
    'InvalidInputError',
    'VerifyReport',
    '__version__',
    'blessing_from_folder',
    'check_blessings',
    'list_versions',
    'read_manifest',
    'run_export',
    'verify_export',
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
