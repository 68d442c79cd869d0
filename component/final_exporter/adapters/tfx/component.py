"""The FinalExporter TFX component."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import standard_artifacts

from final_exporter.adapters.tfx.executor import Executor
from final_exporter.adapters.tfx.spec import FinalExporterSpec
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

        Args:
            model: Channel of `Model`, usually `trainer.outputs['model']`. Without it,
                the InfraValidator's stamped model (`<infra_blessing>/stamped_model/`,
                with its warmup requests) is exported, as the TFX Pusher does; that
                needs `infra_blessing` from an InfraValidator with
                `request_spec.make_warmup=True`.
            name: Model name, one folder: the export goes to `<export_base>/<name>/<version>/`.
            export_base: Base folder; `<export_base>/<name>` is a TensorFlow Serving base path.
            model_blessing: Optional channel of `ModelBlessing` (Evaluator).
            infra_blessing: Optional channel of `InfraBlessing` (InfraValidator).
            model_evaluation: Optional channel of `ModelEvaluation` (Evaluator); its
                overall-slice metrics go into the lineage as `eval_result`.
            serving_fn: Optional `fn(loaded_model) -> signatures`, as an import path
                (`package.module:fn` or `/path/to/module_file.py:fn`) or a module-level
                function. When given, the model is re-exported with those signatures;
                otherwise it is copied byte for byte.
            assets_extra: Optional {destination under `assets.extra/`: source file}.
            as_text: Write `saved_model.pbtxt` instead of `saved_model.pb`.
            require_blessing: With no blessing wired, construction fails unless this
                is explicitly False.
            copy_method: `auto` (reflink where the filesystem supports it, else a
                parallel copy), `copy`, or `hardlink` (opt-in: hard-link the source
                files, which TFX never modifies; falls back to a copy across
                filesystems).
            examples: Optional channel of `Examples`: real inputs for the smoke test,
                parity and warmup requests (split `examples_split`).
            smoke_test: Load the staged export from its folder, as a model server
                does, and call `signature_name` on real (or synthetic) examples; a
                model that does not load or answer is not published.
            signature_name: The serving signature to check and warm up.
            examples_split: The split of `examples` to read.
            parity_sample_size: With `examples` and a re-export (`serving_fn` or
                `as_text`), compare this many predictions of the export with the
                source model's and refuse to publish on a mismatch; 0 turns it off.
            parity_tolerance: Absolute and relative tolerance of the comparison.
            warmup_requests: Write up to this many (at most 1000) TensorFlow Serving
                warmup requests from `examples` to
                `assets.extra/tf_serving_warmup_requests`; 0 writes none. A warmup
                file the model or `assets_extra` already has is validated instead.
            exports_to_keep: After publishing, remove the oldest complete versions
                beyond this many (never labelled ones, never the new one); 0 keeps all.
            label: Point this TensorFlow Serving version label at the new version in
                `<export_base>/<name>/models.config`.
            paranoid_verify: Before publishing, read every staged byte back (from
                disk, not the page cache, where the OS allows) and check it against
                the manifest. Off by default: the copy hashed every byte it wrote.
            vertex_model: Register each export (on a `gs://` export base) in the
                Vertex AI Model Registry as a new version of this model: a display
                name or `projects/P/locations/L/models/ID`, created if absent.
            vertex_project: The model's project; empty: as the Vertex SDK resolves it
                (`aiplatform.init`, `GOOGLE_CLOUD_PROJECT`, credentials).
            vertex_region: The model's region; empty: as the Vertex SDK resolves it
                (`aiplatform.init`, `GOOGLE_CLOUD_REGION`, `us-central1`).
            vertex_serving_image: The version's serving container; empty: the
                prebuilt TensorFlow CPU image of the model's TensorFlow version.
            vertex_version_aliases: Aliases the new version takes, moved from the
                versions that hold them (e.g. `['candidate']`).
            vertex_labels: Labels of the new version (Vertex AI label rules).
            vertex_version_description: Description of the new version.
            vertex_is_default_version: The new version takes the `default` alias.
            vertex_encryption_key: Cloud KMS key (CMEK) of the model.

        Raises:
            ValueError: for a parameter that cannot work, saying how to fix it.
        """
        if model is None and infra_blessing is None:
            raise ValueError(
                'model is required: pass model=trainer.outputs["model"], or '
                'infra_blessing=infra_validator.outputs["blessing"] alone to export the '
                "InfraValidator's stamped model (it needs request_spec.make_warmup=True)"
            )
        if require_blessing and model_blessing is None and infra_blessing is None:
            raise ValueError(
                'FinalExporter needs a blessing to gate the export: pass '
                'model_blessing=evaluator.outputs["blessing"] and/or '
                'infra_blessing=infra_validator.outputs["blessing"], or set '
                'require_blessing=False to export without validation.'
            )
        try:
            config = ExportConfig(
                name=name,
                export_base=export_base,
                serving_fn=serving_fn,
                assets_extra=assets_extra or {},
                as_text=as_text,
                require_blessing=require_blessing,
                copy_method=copy_method,
                smoke_test=smoke_test,
                signature_name=signature_name,
                examples_split=examples_split,
                parity_sample_size=parity_sample_size,
                parity_tolerance=parity_tolerance,
                warmup_requests=warmup_requests,
                exports_to_keep=exports_to_keep,
                label=label,
                paranoid_verify=paranoid_verify,
                vertex_model=vertex_model,
                vertex_project=vertex_project,
                vertex_region=vertex_region,
                vertex_serving_image=vertex_serving_image,
                vertex_version_aliases=list(vertex_version_aliases or []),
                vertex_labels=dict(vertex_labels or {}),
                vertex_version_description=vertex_version_description,
                vertex_is_default_version=vertex_is_default_version,
                vertex_encryption_key=vertex_encryption_key,
            )
        except InvalidInputError as e:
            raise ValueError(f'FinalExporter: {e}') from None
        spec = FinalExporterSpec(
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            model_evaluation=model_evaluation,
            examples=examples,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
            **config.to_exec_properties(),
        )
        super().__init__(spec=spec)
