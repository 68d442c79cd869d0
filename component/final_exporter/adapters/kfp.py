"""FinalExporter as Kubeflow Pipelines v2 components, for pipelines written with the kfp DSL alone.

Two lightweight Python components run the export core the TFX executor runs
(`final_exporter.core.exporter.run_export`) and write the same record:

* `final_export`: the model as an `Input[Model]` artifact.
* `final_export_from_uri`: the model as a path parameter, for models that are
  not KFP artifacts (and the form `kfp.local` 2.5 can run: it refuses input
  artifacts).

Both take the blessing as artifacts (`model_blessing`, `infra_blessing`: a
blessing folder as TFX writes it, or any artifact whose metadata has
`blessed`) or as a boolean parameter produced by an upstream step (`blessed`),
optional `metrics` (a `Metrics` artifact: `eval_result` and the report's
metrics) and `examples`, the parameters of the TFX component, and output:

* `pushed_model`: an artifact whose metadata holds the PushedModel properties
  (`pushed`, `pushed_destination`, `pushed_version`, lineage: the keys of
  `ExportResult.properties()`); its folder holds `export_manifest.json`,
  `lineage.json` and `report.md`, as the TFX component writes them.
* `report`: the same report as a `Markdown` artifact, which the Kubeflow
  Pipelines UI and Vertex AI Pipelines render.
* parameters `pushed`, `version` and `destination`, for `dsl.If` downstream.

The components run in the FinalExporter image (`Dockerfile`, `build.yaml`),
which has this package installed; `component_image()` says which image.

Example:
    ```python
    from kfp import dsl
    from final_exporter.adapters.kfp import final_export

    @dsl.pipeline
    def serve(model_uri: str):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        verdict = evaluate(model=model.output)  # any step returning a bool
        final_export(
            model=model.output,
            blessed=verdict.output,
            name='penguin',
            export_base='gs://my-bucket/serving',
        )
    ```
"""

# No `from __future__ import annotations`: kfp 2.5 reads the annotations as
# objects, and only `typing.Optional` (not `X | None`) as optional.
import json
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.progress import Throttled
from final_exporter.core.blessing import Blessing, blessing_from_folder, normalize_id, parse_blessed
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.core.report import render_report
from final_exporter.storage.manifest import manifest_bytes
from final_exporter.version import __version__

if TYPE_CHECKING:
    from kfp.dsl.python_component import PythonComponent

logger = logging.getLogger(__name__)

# The image `build.yaml` builds (before skaffold's --default-repo prefix) and
# the environment variables that name it.
IMAGE_REPOSITORY = 'tfx-final-exporter'
IMAGE_ENV = 'FINAL_EXPORTER_IMAGE'
DEFAULT_REPO_ENV = 'SKAFFOLD_DEFAULT_REPO'
IMAGE_TAG_ENV = 'IMAGE_TAG'
# What `docker build -t tfx-final-exporter:<version> .` tags, when nothing is set.
LOCAL_IMAGE = f'{IMAGE_REPOSITORY}:{__version__}'

# Where the `blessed` parameter is recorded as a blessing (lineage, reasons).
BLESSED_PARAMETER_URI = 'parameter:blessed'
PUSHED_MODEL_OUTPUT = keys.PUSHED_MODEL_KEY
REPORT_OUTPUT = 'report'
REGISTERED_MODEL_OUTPUT = 'registered_model'
METRICS_INPUT = 'metrics'
BLESSED_INPUT = 'blessed'
DISPLAY_NAME_KEY = 'display_name'


class VertexModel(Artifact):
    """A Vertex AI model version, as Google Cloud Pipeline Components type it.

    The same schema as `google_cloud_pipeline_components.types.artifact_types.VertexModel`
    (`google.VertexModel`, metadata `resourceName`), so GCPC's `ModelDeployOp` and
    `EndpointCreateOp` chain after the export without that package installed here.
    """

    schema_title = 'google.VertexModel'
    schema_version = '0.0.1'


class ExportOutputs(NamedTuple):
    """The output parameters of the components."""

    pushed: bool
    version: str
    destination: str


def component_image(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:  # noqa: UP045
    """The FinalExporter image named by the environment, or None.

    `$FINAL_EXPORTER_IMAGE` if set; otherwise the image `skaffold build -f
    build.yaml` tags with the same environment:
    `$SKAFFOLD_DEFAULT_REPO/tfx-final-exporter:$IMAGE_TAG` (both must be set).

    Args:
        environ: The environment; `os.environ` when None.
    """
    env = os.environ if environ is None else environ
    if env.get(IMAGE_ENV):
        return env[IMAGE_ENV]
    repo, tag = env.get(DEFAULT_REPO_ENV, '').rstrip('/'), env.get(IMAGE_TAG_ENV, '')
    if repo and tag:
        return f'{repo}/{IMAGE_REPOSITORY}:{tag}'
    return None


def export_for_kfp(arguments: Mapping[str, Any]) -> ExportOutputs:
    """The body of both components: gate, export with `run_export`, record.

    Args:
        arguments: The component's arguments as KFP passes them: the artifacts
            (`model` or `model_uri`, `pushed_model`, `report`, and optionally
            `model_blessing`, `infra_blessing`, `metrics`, `examples` or
            `examples_uri`), `blessed`, and the `ExportConfig` parameters.

    Returns:
        Whether the model was exported, its version and destination ('' when not).

    Raises:
        InvalidInputError: for bad input; nothing was written.
    """
    args = dict(arguments)
    model = args.pop('model', None)
    if model is not None:
        model_path, model_uri, model_name = model.path, model.uri, model.name
    else:
        model_path = model_uri = args.pop('model_uri')
        model_name = None
    pushed_model, report = args.pop(PUSHED_MODEL_OUTPUT), args.pop(REPORT_OUTPUT)
    registered_model = args.pop(REGISTERED_MODEL_OUTPUT, None)
    model_blessing = args.pop(keys.MODEL_BLESSING_KEY, None)
    infra_blessing = args.pop(keys.INFRA_BLESSING_KEY, None)
    metrics = args.pop(METRICS_INPUT, None)
    examples = args.pop(keys.EXAMPLES_KEY, None)
    examples_uri = examples.path if examples is not None else args.pop(keys.EXAMPLES_URI_KEY, '')
    blessed = args.pop(BLESSED_INPUT, None)
    unknown = set(args) - set(ExportConfig.property_types())
    if unknown:
        raise TypeError(f'unexpected component arguments: {sorted(unknown)}')
    config = ExportConfig.from_exec_properties(args)

    if blessed is not None and model_blessing is not None:
        raise InvalidInputError(
            'both model_blessing and blessed were given; wire the blessing artifact or the '
            'boolean from the upstream step, not both'
        )
    blessings = [
        blessing_from_kfp_artifact(kind, artifact)
        for kind, artifact in (
            (keys.MODEL_BLESSING_KEY, model_blessing),
            (keys.INFRA_BLESSING_KEY, infra_blessing),
        )
        if artifact is not None
    ]
    if blessed is not None:
        verdict = parse_blessed(blessed, kind=keys.MODEL_BLESSING_KEY, uri=BLESSED_PARAMETER_URI)
        blessings.insert(
            0, Blessing(kind=keys.MODEL_BLESSING_KEY, uri=BLESSED_PARAMETER_URI, blessed=verdict)
        )
    extra: dict[str, Any] = {keys.SOURCE_MODEL_URI_KEY: model_uri}
    if metrics is not None:
        extra[keys.MODEL_EVALUATION_URI_KEY] = metrics.uri
        extra[keys.MODEL_EVALUATION_ID_KEY] = normalize_id(metrics.name)
        extra[keys.EVAL_RESULT_KEY] = scalar_metrics(metrics.metadata)
    result = run_export(
        ExportRequest(
            config=config,
            model_uri=model_path,
            model_id=normalize_id(model_name),
            blessings=blessings,
            extra_lineage=extra,
            examples_uri=examples_uri or None,
        ),
        report_progress=Throttled(lambda line: logger.info('Copy: %s', line)),
    )
    if result.pushed:
        logger.info('Model exported to %s (version %s).', result.export_dir, result.version)
    else:
        logger.info('Model not exported: %s.', result.reason)
    record_for_kfp(pushed_model, report, result)
    if registered_model is not None:
        record_vertex_model(registered_model, result)
    return ExportOutputs(
        pushed=result.pushed,
        version='' if result.version is None else str(result.version),
        destination=result.export_dir or '',
    )


def blessing_from_kfp_artifact(kind: str, artifact: Artifact) -> Blessing:
    """A blessing artifact as the gate sees it.

    The verdict is the artifact's `blessed` metadata (1/0, 1.0/0.0 or a bool), or,
    without it, the marker file in its folder (`BLESSED`, `NOT_BLESSED`,
    `INFRA_BLESSED`, `INFRA_NOT_BLESSED`) as TFX writes it. `current_model_id`
    and `current_model` metadata (set by the TFX Evaluator) are checked against
    the model.

    Raises:
        InvalidInputError: if the artifact holds no verdict.
    """
    metadata = artifact.metadata or {}
    if keys.BLESSED_PROPERTY in metadata:
        verdict = parse_blessed(metadata[keys.BLESSED_PROPERTY], kind=kind, uri=artifact.uri)
    else:
        verdict = blessing_from_folder(kind, artifact.path).blessed
    current_model = metadata.get(keys.CURRENT_MODEL_PROPERTY)
    return Blessing(
        kind=kind,
        uri=artifact.uri,
        blessed=verdict,
        artifact_id=normalize_id(artifact.name),
        model_id=normalize_id(metadata.get(keys.CURRENT_MODEL_ID_PROPERTY)),
        model_uri=Artifact(uri=current_model).path if current_model else None,
    )


def scalar_metrics(metadata: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a `Metrics` artifact's metadata, sorted by name."""
    return {
        key: float(value)
        for key, value in sorted(metadata.items())
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def record_for_kfp(pushed_model: Artifact, report: Artifact, result: ExportResult) -> None:
    """Writes the outcome as the TFX executor records it, plus the Markdown artifact.

    `pushed_model.metadata` gets `ExportResult.properties()` (the PushedModel
    custom properties of the TFX component) and a `display_name`; its folder
    gets the manifest, `lineage.json` and `report.md`.
    """
    text = render_report(result)
    export_name = result.lineage.get(keys.EXPORT_NAME_KEY, '')
    pushed_model.metadata.update(result.properties())
    pushed_model.metadata[DISPLAY_NAME_KEY] = (
        f'{export_name} version {result.version}'
        if result.pushed
        else f'{export_name} (not exported)'
    )
    os.makedirs(pushed_model.path, exist_ok=True)
    files = {
        keys.LINEAGE_FILENAME: json.dumps(result.summary(), indent=2, sort_keys=True) + '\n',
        keys.REPORT_FILENAME: text,
    }
    if result.manifest is not None:
        files[keys.MANIFEST_FILENAME] = manifest_bytes(result.manifest).decode()
    for filename, content in files.items():
        with open(os.path.join(pushed_model.path, filename), 'w', encoding='utf-8') as f:
            f.write(content)
    os.makedirs(os.path.dirname(report.path) or '.', exist_ok=True)
    with open(report.path, 'w', encoding='utf-8') as f:
        f.write(text)
    report.metadata[DISPLAY_NAME_KEY] = f'Final export report: {export_name}'


def record_vertex_model(artifact: Artifact, result: ExportResult) -> None:
    """Describes the registered version as GCPC's `VertexModel` does.

    `resourceName` is `projects/P/locations/L/models/ID@VERSION`, so a deploy step
    deploys exactly this version; the URI is the version's API URL. Without a
    registration (no `vertex_model`, or not exported) the metadata says so.
    """
    model = result.lineage.get(keys.VERTEX_MODEL_RESOURCE_KEY)
    if not model:
        artifact.metadata[DISPLAY_NAME_KEY] = 'not registered'
        return
    version = result.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY]
    region = model.split('/')[3]
    artifact.metadata['resourceName'] = f'{model}@{version}'
    artifact.metadata[keys.VERTEX_MODEL_VERSION_ALIASES_KEY] = list(
        result.lineage.get(keys.VERTEX_MODEL_VERSION_ALIASES_KEY, [])
    )
    artifact.metadata[keys.VERTEX_CONSOLE_URL_KEY] = result.lineage[keys.VERTEX_CONSOLE_URL_KEY]
    artifact.metadata[DISPLAY_NAME_KEY] = (
        f'{result.lineage.get(keys.EXPORT_NAME_KEY, "")} version {version} (Vertex AI)'
    )
    artifact.uri = f'https://{region}-aiplatform.googleapis.com/v1/{model}@{version}'


# The component functions. KFP ships each one's source to the container and
# runs it there with `from kfp.dsl import *` and `from typing import *`, so the
# bodies only import this installed module and call `export_for_kfp`.


def final_export(
    model: Input[Model],
    name: str,
    export_base: str,
    pushed_model: Output[Artifact],
    report: Output[Markdown],
    registered_model: Output[VertexModel],
    model_blessing: Optional[Input[Artifact]] = None,  # noqa: UP045
    infra_blessing: Optional[Input[Artifact]] = None,  # noqa: UP045
    metrics: Optional[Input[Metrics]] = None,  # noqa: UP045
    examples: Optional[Input[Dataset]] = None,  # noqa: UP045
    blessed: Optional[bool] = None,  # noqa: UP045
    serving_fn: str = '',
    assets_extra: Optional[dict] = None,  # noqa: UP045
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
    vertex_version_aliases: Optional[list] = None,  # noqa: UP045
    vertex_labels: Optional[dict] = None,  # noqa: UP045
    vertex_version_description: str = '',
    vertex_is_default_version: bool = True,
    vertex_encryption_key: str = '',
) -> NamedTuple('Outputs', [('pushed', bool), ('version', str), ('destination', str)]):
    """Exports a blessed model once, as a SavedModel a model server can load (FinalExporter).

    Args:
        model: The trained model: a TFX Model artifact folder or a SavedModel folder.
        name: Model name, one folder: the export goes to <export_base>/<name>/<version>/.
        export_base: Base folder or gs:// / s3:// prefix; <export_base>/<name> is the
            model base path.
        pushed_model: Describes the outcome: metadata pushed, pushed_destination,
            pushed_version and the lineage.
        report: The export report (Markdown).
        registered_model: The registered model version (google.VertexModel, metadata
            resourceName MODEL@VERSION) for ModelDeployOp; unset without vertex_model.
        model_blessing: Blessing artifact: metadata blessed=1/0, or a BLESSED / NOT_BLESSED file.
        infra_blessing: Infra blessing artifact: metadata blessed=1/0, or an INFRA_BLESSED file.
        metrics: Evaluation metrics; recorded as eval_result and shown in the report.
        examples: tf.Example records in the TFX Examples layout (Split-<split>/), for the
            smoke test, parity and warmup requests.
        blessed: The verdict of an upstream step, instead of model_blessing.
        serving_fn: Import path of fn(loaded_model) -> signatures, to re-export with
            those signatures.
        assets_extra: {destination under assets.extra/: source file}.
        as_text: Write saved_model.pbtxt instead of saved_model.pb.
        require_blessing: Refuse to export without any blessing.
        copy_method: auto, copy or hardlink.
        smoke_test: Load the staged export and call its signature before publishing.
        signature_name: The signature the smoke test, parity and warmup use.
        examples_split: The split of examples to read.
        parity_sample_size: Examples compared between source and re-exported model; 0: off.
        parity_tolerance: Absolute and relative tolerance of the parity check.
        warmup_requests: TensorFlow Serving warmup requests to write (at most 1000).
        exports_to_keep: Keep this many newest versions; 0 keeps all.
        label: TensorFlow Serving version label to point at the new version; empty: none.
        paranoid_verify: Read every staged byte back and check it before publishing.
        vertex_model: Register the export (gs:// export base) in the Vertex AI Model
            Registry as a new version of this model: display name or
            projects/P/locations/L/models/ID, created if absent; empty: no registry.
        vertex_project: The model's project; empty: as the Vertex SDK resolves it.
        vertex_region: The model's region; empty: as the Vertex SDK resolves it.
        vertex_serving_image: Serving container; empty: the prebuilt TensorFlow CPU image.
        vertex_version_aliases: Aliases the new version takes, e.g. ["candidate"].
        vertex_labels: Labels of the new version.
        vertex_version_description: Description of the new version.
        vertex_is_default_version: The new version takes the default alias.
        vertex_encryption_key: Cloud KMS key (CMEK) of the model.
    """
    arguments = dict(locals())
    from final_exporter.adapters.kfp import export_for_kfp

    return export_for_kfp(arguments)


def final_export_from_uri(
    model_uri: str,
    name: str,
    export_base: str,
    pushed_model: Output[Artifact],
    report: Output[Markdown],
    registered_model: Output[VertexModel],
    blessed: Optional[bool] = None,  # noqa: UP045
    examples_uri: str = '',
    serving_fn: str = '',
    assets_extra: Optional[dict] = None,  # noqa: UP045
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
    vertex_version_aliases: Optional[list] = None,  # noqa: UP045
    vertex_labels: Optional[dict] = None,  # noqa: UP045
    vertex_version_description: str = '',
    vertex_is_default_version: bool = True,
    vertex_encryption_key: str = '',
) -> NamedTuple('Outputs', [('pushed', bool), ('version', str), ('destination', str)]):
    """Exports a blessed model given by its path once (FinalExporter, model as a parameter).

    Args:
        model_uri: The model folder as the container sees it (on Vertex AI,
            /gcs/BUCKET/... for gs://BUCKET/...).
        name: Model name, one folder: the export goes to <export_base>/<name>/<version>/.
        export_base: Base folder or gs:// / s3:// prefix; <export_base>/<name> is the
            model base path.
        pushed_model: Describes the outcome: metadata pushed, pushed_destination,
            pushed_version and the lineage.
        report: The export report (Markdown).
        registered_model: The registered model version (google.VertexModel, metadata
            resourceName MODEL@VERSION) for ModelDeployOp; unset without vertex_model.
        blessed: The verdict of an upstream step.
        examples_uri: Folder of tf.Example records in the TFX Examples layout; empty: none.
        serving_fn: Import path of fn(loaded_model) -> signatures, to re-export with
            those signatures.
        assets_extra: {destination under assets.extra/: source file}.
        as_text: Write saved_model.pbtxt instead of saved_model.pb.
        require_blessing: Refuse to export without a blessing.
        copy_method: auto, copy or hardlink.
        smoke_test: Load the staged export and call its signature before publishing.
        signature_name: The signature the smoke test, parity and warmup use.
        examples_split: The split of examples to read.
        parity_sample_size: Examples compared between source and re-exported model; 0: off.
        parity_tolerance: Absolute and relative tolerance of the parity check.
        warmup_requests: TensorFlow Serving warmup requests to write (at most 1000).
        exports_to_keep: Keep this many newest versions; 0 keeps all.
        label: TensorFlow Serving version label to point at the new version; empty: none.
        paranoid_verify: Read every staged byte back and check it before publishing.
        vertex_model: Register the export (gs:// export base) in the Vertex AI Model
            Registry as a new version of this model: display name or
            projects/P/locations/L/models/ID, created if absent; empty: no registry.
        vertex_project: The model's project; empty: as the Vertex SDK resolves it.
        vertex_region: The model's region; empty: as the Vertex SDK resolves it.
        vertex_serving_image: Serving container; empty: the prebuilt TensorFlow CPU image.
        vertex_version_aliases: Aliases the new version takes, e.g. ["candidate"].
        vertex_labels: Labels of the new version.
        vertex_version_description: Description of the new version.
        vertex_is_default_version: The new version takes the default alias.
        vertex_encryption_key: Cloud KMS key (CMEK) of the model.
    """
    arguments = dict(locals())
    from final_exporter.adapters.kfp import export_for_kfp

    return export_for_kfp(arguments)


_FUNCTIONS = (final_export, final_export_from_uri)


def make_components(image: str) -> tuple['PythonComponent', 'PythonComponent']:
    """The two components, `final_export` and `final_export_from_uri`, running in `image`.

    The module-level components run in `component_image()`, or `LOCAL_IMAGE`
    when the environment names none; use this for another image.

    Args:
        image: A FinalExporter image (built from this repository's Dockerfile).
    """
    first, second = (
        dsl.component(func, base_image=image, install_kfp_package=False) for func in _FUNCTIONS
    )
    return first, second


# Like kfp.dsl itself, define the components only when authoring pipelines: in
# a running component KFP sets _KFP_RUNTIME=true and kfp.dsl has no `component`.
if os.environ.get('_KFP_RUNTIME', 'false') != 'true':
    final_export, final_export_from_uri = make_components(component_image() or LOCAL_IMAGE)
