"""tfx-final-exporter: the single, final, gated, verified, atomic SavedModel export for TFX.

The public API is what this module and `final_exporter.kfp` name (docs/api.md);
every other module is internal and may change. `FinalExporter` is imported on
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
from final_exporter.core.blessing import Blessing, blessing_from_folder
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.storage.manifest import VerifyReport
from final_exporter.storage.stores import list_versions
from final_exporter.storage.verify import read_manifest, verify_export
from final_exporter.version import __version__

_LAZY = {'FinalExporter': 'final_exporter.adapters.tfx.component'}

__all__ = [
    'Blessing',
    'BlessingMismatchError',
    'ExportConfig',
    'ExportRequest',
    'ExportResult',
    'FinalExporter',
    'FinalExporterError',
    'IntegrityError',
    'InvalidInputError',
    'VerifyReport',
    '__version__',
    'blessing_from_folder',
    'list_versions',
    'read_manifest',
    'run_export',
    'verify_export',
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
