"""tfx-final-exporter: the single, final, gated, verified, atomic SavedModel export for TFX.

The public API is what this module and `final_exporter.kfp` name (docs/api.md);
every other module is internal and may change. `FinalExporter` is imported on
first use, so `import final_exporter` and the CLI's plain-copy path start
without TensorFlow or TFX.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from final_exporter.common.errors import (
    BlessingMismatchError,
    BreakingChangeError,
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
# Names this module exported before the public API was drawn (0.x): they still resolve,
# with a warning naming where they live now, so code written against them keeps working
# for one more release instead of breaking without notice.
_MOVED = {
    'Executor': 'final_exporter.adapters.tfx.executor',
    'FinalExporterSpec': 'final_exporter.adapters.tfx.spec',
    'GateDecision': 'final_exporter.core.blessing',
    'check_blessings': 'final_exporter.core.blessing',
}

__all__ = [
    'Blessing',
    'BlessingMismatchError',
    'BreakingChangeError',
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
    if name in _MOVED:
        warnings.warn(
            f'final_exporter.{name} is internal and leaves the public API in the next release; '
            f'import it from {_MOVED[name]} (docs/api.md)',
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
