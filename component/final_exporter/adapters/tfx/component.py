"""The FinalExporter TFX component."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts

from final_exporter.adapters.tfx.executor import Executor
from final_exporter.adapters.tfx.spec import FinalExporterSpec
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.config import ExportConfig


class FinalExporter(base_beam_component.BaseBeamComponent):
    """Exports a blessed model once, as a SavedModel a model server can load.

    The TFX counterpart of `tf.estimator.FinalExporter`: the export goes to
    `<export_base>/<name>/<version>/`, built in a staging folder, verified
    against a manifest (`assets.extra/export_manifest.json`) and published with
    one atomic rename, only if every wired blessing is blessed.

    Example:
        ```python
        exporter = FinalExporter(
            model=trainer.outputs['model'],
            model_blessing=evaluator.outputs['blessing'],
            model_evaluation=evaluator.outputs['evaluation'],
            name='penguin',
            export_base='/srv/models',
            assets_extra={'labels/classes.txt': '/data/classes.txt'},
        )
        ```

    With Beam pipeline args (pipeline-level `beam_pipeline_args`, or
    `.with_beam_pipeline_args(...)` on the component), the copy fans out as an
    Apache Beam pipeline, so it can run on Dataflow, Flink or Spark.

    Component `outputs` contains:
      - `pushed_model`: a `PushedModel` with `pushed`, `pushed_destination`,
        `pushed_version` (as the TFX Pusher sets them), `not_pushed_reason`,
        the manifest digest and the lineage; its folder holds the manifest,
        `lineage.json` and `report.md` (not a copy of the model).
    """

    SPEC_CLASS = FinalExporterSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        model: types.BaseChannel | None = None,
        name: str = '',
        export_base: str = '',
        model_blessing: types.BaseChannel | None = None,
        infra_blessing: types.BaseChannel | None = None,
        model_evaluation: types.BaseChannel | None = None,
        examples: types.BaseChannel | None = None,
        serving_fn: str | Callable[..., Any] | None = None,
        assets_extra: Mapping[str, str] | None = None,
        as_text: bool = False,
        require_blessing: bool = True,
        copy_method: str = 'auto',
        smoke_test: bool = True,
        signature_name: str = 'serving_default',
        examples_split: str = 'eval',
        parity_sample_size: int = 100,
        parity_tolerance: float = 1e-5,
        warmup_requests: int = 0,
        exports_to_keep: int = 0,
        label: str = '',
        paranoid_verify: bool = False,
        allow_breaking_changes: bool = False,
        signing_key: str = '',
        signing_certificate_chain: str = '',
        vertex_model: str = '',
        vertex_project: str = '',
        vertex_region: str = '',
        vertex_serving_image: str = '',
        vertex_version_aliases: Sequence[str] | None = None,
        vertex_labels: Mapping[str, str] | None = None,
        vertex_version_description: str = '',
        vertex_is_default_version: bool = True,
        vertex_encryption_key: str = '',
    ):
        """Constructs a FinalExporter.

        Every argument but the five channels is an export parameter: a field of
        `final_exporter.ExportConfig`, with the same default (None: the empty
        list or mapping), described there (`help(ExportConfig)`) and in
        docs/parameters.md.

        Args:
            model: Channel of `Model`, usually `trainer.outputs['model']`: the trained
                model, in either layout TFX writes (`Format-Serving/` or the Estimator
                layout `Format-Serving/export/<name>/<timestamp>/`, newest timestamp),
                or a SavedModel folder itself. Without it, the InfraValidator's stamped
                model (`<infra_blessing>/stamped_model/`, with its warmup requests) is
                exported, as the TFX Pusher does; that needs `infra_blessing` from an
                InfraValidator with `request_spec.make_warmup=True`.
            model_blessing: Channel of `ModelBlessing`: the Evaluator's verdict.
            infra_blessing: Channel of `InfraBlessing`: the InfraValidator's verdict.
            model_evaluation: Channel of `ModelEvaluation` (Evaluator); its
                overall-slice metrics are recorded as `eval_result`.
            examples: Channel of `Examples`: real inputs for the smoke test, parity
                and warmup requests (split `examples_split`).

        Raises:
            ValueError: for a parameter that cannot work, saying how to fix it.
        """
        arguments = dict(locals())
        config = _config(arguments)
        super().__init__(
            spec=FinalExporterSpec(
                **{key: arguments[key] for key in FinalExporterSpec.INPUTS},
                pushed_model=types.Channel(type=standard_artifacts.PushedModel),
                **config.to_exec_properties(),
            )
        )


def _config(arguments: Mapping[str, Any]) -> ExportConfig:
    """The export parameters of `FinalExporter(...)`, checked with its channels.

    Raises:
        ValueError: for a parameter that cannot work, saying how to fix it.
    """
    if arguments[keys.MODEL_KEY] is None and arguments[keys.INFRA_BLESSING_KEY] is None:
        raise ValueError(
            'model is required: pass model=trainer.outputs["model"], or '
            'infra_blessing=infra_validator.outputs["blessing"] alone to export the '
            "InfraValidator's stamped model (it needs request_spec.make_warmup=True)"
        )
    blessings = (arguments[keys.MODEL_BLESSING_KEY], arguments[keys.INFRA_BLESSING_KEY])
    if arguments['require_blessing'] and all(b is None for b in blessings):
        raise ValueError(
            'FinalExporter needs a blessing to gate the export: pass '
            'model_blessing=evaluator.outputs["blessing"] and/or '
            'infra_blessing=infra_validator.outputs["blessing"], or set '
            'require_blessing=False to export without validation.'
        )
    try:
        # None stands for the default (the empty list or mapping) here.
        return ExportConfig(
            **{
                key: arguments[key]
                for key in ExportConfig.field_names()
                if arguments[key] is not None
            }
        )
    except InvalidInputError as e:
        raise ValueError(f'FinalExporter: {e}') from None
