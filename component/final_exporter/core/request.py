"""What an export is asked to do (`ExportRequest`) and what it did (`ExportResult`).

Plain values shared by the adapters (TFX executor, kfp component, CLI) and the
export steps; `core.exporter` re-exports them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.core import lineage
from final_exporter.core.blessing import Blessing
from final_exporter.core.config import ExportConfig


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What to export and what is known about it.

    Attributes:
        config: The export parameters.
        model_uri: A TFX Model artifact folder (either layout) or a SavedModel folder.
        model_id: MLMD id of the Model artifact, if known.
        blessings: The wired blessings.
        extra_lineage: Lineage only the caller knows: evaluation metrics, pipeline
            name and run id.
        beam_pipeline_args: When they name a runner (`--runner=...`) or direct-runner
            parallelism, the copy (and the parity check) fan out as Apache Beam
            pipelines with these options instead of a thread pool.
        examples_uri: A TFX Examples artifact folder: real inputs for the smoke
            test, parity and warmup requests.
        idempotency_key: Identifies the execution (pipeline, run, node). A retry
            with the same key that finds its own complete export reports it
            instead of publishing a second version.
    """

    config: ExportConfig
    model_uri: str
    model_id: str | None = None
    blessings: Sequence[Blessing] = ()
    extra_lineage: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    beam_pipeline_args: Sequence[str] = ()
    examples_uri: str | None = None
    idempotency_key: str | None = None


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """The outcome of an export; `pushed` False means gated, not failed."""

    pushed: bool
    reason: str
    model_base: str
    lineage: Mapping[str, Any]
    version: int | None = None
    export_dir: str | None = None
    manifest: Mapping[str, Any] | None = None
    manifest_sha256: str | None = None

    @property
    def total_bytes(self) -> int:
        return self.manifest['total_bytes'] if self.manifest else 0

    @property
    def file_count(self) -> int:
        return self.manifest['file_count'] if self.manifest else 0

    def summary(self) -> dict[str, Any]:
        """The outcome as the CLI's `--json` prints it."""
        return {
            'pushed': self.pushed,
            'version': self.version,
            'export_dir': self.export_dir,
            'manifest_sha256': self.manifest_sha256,
            'not_pushed_reason': None if self.pushed else self.reason,
            'reason': self.reason,
            'model_base': self.model_base,
            'total_bytes': self.total_bytes,
            'file_count': self.file_count,
            'lineage': dict(self.lineage),
        }

    def properties(self) -> dict[str, int | float | str]:
        """PushedModel custom properties: the Pusher's keys, then the lineage."""
        props = lineage.to_properties(self.lineage)
        props[keys.PUSHED_KEY] = int(self.pushed)
        if self.pushed:
            props[keys.PUSHED_DESTINATION_KEY] = self.export_dir
            props[keys.PUSHED_VERSION_KEY] = str(self.version)
            props[keys.MANIFEST_SHA256_KEY] = self.manifest_sha256
            props[keys.TOTAL_BYTES_KEY] = self.total_bytes
            props[keys.FILE_COUNT_KEY] = self.file_count
        else:
            props[keys.NOT_PUSHED_REASON_KEY] = self.reason
        return props
