"""The Kubeflow-native components behind `final_exporter.kfp`, and what their bodies call.

Compiled components import `export_for_kfp` (and `VertexModel`) from this
module in the container, so its path stays stable; users import the
components from `final_exporter.kfp`, which names the same objects.
"""

# No `from __future__ import annotations`: kfp 2.5 reads the annotations as
# objects, and only `typing.Optional` (not `X | None`) as optional.
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from final_exporter.adapters.record import write_record
from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.progress import Throttled
from final_exporter.core.blessing import (
    Blessing,
    blessing_from_folder,
    normalize_id,
    parse_blessed,
    stamped_model_dir,
)
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.core.parameter import docstring_section
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
MODEL_URI_INPUT = 'model_uri'
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
            `registered_model`, `model_blessing`, `infra_blessing`, `metrics`,
            `examples` or `examples_uri`), `blessed`, and the `ExportConfig` parameters.

    Returns:
        Whether the model was exported, its version and destination ('' when not).

    Raises:
        InvalidInputError: for bad input; nothing was written.
    """
    args = dict(arguments)
    pushed_model, report = args.pop(PUSHED_MODEL_OUTPUT), args.pop(REPORT_OUTPUT)
    registered_model = args.pop(REGISTERED_MODEL_OUTPUT, None)
    result = run_export(
        request_for_kfp(args),
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


def request_for_kfp(arguments: Mapping[str, Any]) -> ExportRequest:
    """The `ExportRequest` of the component's input artifacts, `blessed` and parameters.

    Without `model` (and `model_uri`), the InfraValidator's stamped model in
    `infra_blessing` is exported, as the TFX component and the Pusher do.
    """
    args = dict(arguments)
    model, model_uri = args.pop('model', None), args.pop(MODEL_URI_INPUT, None)
    model_blessing = args.pop(keys.MODEL_BLESSING_KEY, None)
    infra_blessing = args.pop(keys.INFRA_BLESSING_KEY, None)
    metrics, examples = args.pop(METRICS_INPUT, None), args.pop(keys.EXAMPLES_KEY, None)
    examples_uri = examples.path if examples is not None else args.pop(keys.EXAMPLES_URI_KEY, '')
    blessed = args.pop(BLESSED_INPUT, None)
    unknown = set(args) - set(ExportConfig.field_names())
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
    path, uri, model_id = model_to_export(model, model_uri, infra_blessing)
    extra: dict[str, Any] = {keys.SOURCE_MODEL_URI_KEY: uri}
    if metrics is not None:
        extra[keys.MODEL_EVALUATION_URI_KEY] = metrics.uri
        extra[keys.MODEL_EVALUATION_ID_KEY] = normalize_id(metrics.name)
        extra[keys.EVAL_RESULT_KEY] = scalar_metrics(metrics.metadata)
    return ExportRequest(
        config=config,
        model_uri=path,
        model_id=model_id,
        blessings=blessings,
        extra_lineage=extra,
        examples_uri=examples_uri or None,
    )


def model_to_export(
    model: Artifact | None, model_uri: str | None, infra_blessing: Artifact | None
) -> tuple[str, str, str | None]:
    """(folder to read, URI for the lineage, artifact id) of the model to export.

    The `model` artifact, else the `model_uri` parameter, else the stamped model
    of an InfraValidator blessing (`has_model` = 1 in its metadata, or, without
    that metadata, a `stamped_model/` folder in it).

    Raises:
        InvalidInputError: when none of them gives a model, saying what to wire.
    """
    if model is not None:
        return model.path, model.uri, normalize_id(model.name)
    if model_uri:
        return model_uri, model_uri, None
    if infra_blessing is None:
        raise InvalidInputError(
            'model is required, unless infra_blessing is an InfraValidator blessing holding '
            'a stamped model (request_spec.make_warmup=True)'
        )
    has_model = (infra_blessing.metadata or {}).get(keys.HAS_MODEL_PROPERTY)
    path = stamped_model_dir(infra_blessing.path, has_model)
    logger.info('model not wired: exporting the stamped model %s.', path)
    return path, f'{infra_blessing.uri.rstrip("/")}/{keys.STAMPED_MODEL_DIR}', None


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
    export_name = result.lineage.get(keys.EXPORT_NAME_KEY, '')
    pushed_model.metadata.update(result.properties())
    pushed_model.metadata[DISPLAY_NAME_KEY] = (
        f'{export_name} version {result.version}'
        if result.pushed
        else f'{export_name} (not exported)'
    )
    os.makedirs(pushed_model.path, exist_ok=True)

    def write(filename: str, text: str) -> None:
        with open(os.path.join(pushed_model.path, filename), 'w', encoding='utf-8') as f:
            f.write(text)

    text = write_record(result, write)
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


# What kfp compiles into the component spec for the inputs and outputs that are
# not `ExportConfig` parameters (those take their description from ExportConfig).
_INPUT_DOCS = {
    'model': 'The trained model: a TFX Model artifact (either layout) or a SavedModel folder. '
    'Without it, the stamped model of infra_blessing is exported, as the TFX Pusher does: '
    '<infra_blessing>/stamped_model/ with its warmup requests (InfraValidator with '
    'request_spec.make_warmup=True; metadata has_model=1).',
    MODEL_URI_INPUT: 'The model folder as the container sees it (on Vertex AI, /gcs/BUCKET/... '
    'for gs://BUCKET/...): a TFX Model artifact folder or a SavedModel folder.',
    keys.MODEL_BLESSING_KEY: 'Blessing artifact: metadata blessed=1/0, or a folder holding '
    'BLESSED / NOT_BLESSED as the TFX Evaluator writes it.',
    keys.INFRA_BLESSING_KEY: 'Infra blessing artifact: metadata blessed=1/0, or a folder holding '
    'INFRA_BLESSED / INFRA_NOT_BLESSED as the TFX InfraValidator writes it.',
    METRICS_INPUT: 'Evaluation metrics; recorded as eval_result and shown in the report.',
    keys.EXAMPLES_KEY: 'tf.Example records in the TFX Examples layout (Split-<split>/), for the '
    'smoke test, parity and warmup requests.',
    keys.EXAMPLES_URI_KEY: 'A folder of tf.Example records in the TFX Examples layout '
    '(Split-<split>/), for the smoke test, parity and warmup requests; empty: none.',
    BLESSED_INPUT: 'The verdict of an upstream step, instead of a model_blessing artifact.',
}
_OUTPUT_DOCS = {
    PUSHED_MODEL_OUTPUT: 'The outcome: metadata pushed, pushed_destination, pushed_version and '
    'the lineage (the PushedModel properties of the TFX component); its folder holds '
    'export_manifest.json, lineage.json and report.md.',
    REPORT_OUTPUT: 'The export report (Markdown), which the Kubeflow Pipelines UI and Vertex AI '
    'Pipelines render.',
    REGISTERED_MODEL_OUTPUT: 'The registered model version (google.VertexModel, metadata '
    'resourceName MODEL@VERSION) for ModelDeployOp; unset without vertex_model.',
    'pushed': 'Whether the model was exported.',
    'version': 'The new version; empty when not exported.',
    'destination': 'The export folder <export_base>/<name>/<version>; empty when not exported.',
}


def component_docstring(func: Callable[..., Any]) -> str:
    """The function's own summary, then the Args and Returns sections kfp compiles into its spec."""
    parameters = {p.name: p.description(markdown=False) for p in ExportConfig.parameters()}
    args: dict[str, str] = {}
    returns = {name: _OUTPUT_DOCS[name] for name in ExportOutputs._fields}
    for name in inspect.signature(func).parameters:
        if name in _OUTPUT_DOCS:
            returns[name] = _OUTPUT_DOCS[name]
        else:
            args[name] = parameters[name] if name in parameters else _INPUT_DOCS[name]
    return '\n\n'.join(
        [
            inspect.cleandoc(func.__doc__ or ''),
            docstring_section('Args', args).rstrip(),
            docstring_section('Returns', returns).rstrip(),
        ]
    )


# The component functions. KFP ships each one's source to the container and
# runs it there with `from kfp.dsl import *` and `from typing import *`, so the
# bodies only import this installed module and call `export_for_kfp`. Their
# Args and Returns are generated (component_docstring) before kfp reads them.


def final_export(
    name: str,
    export_base: str,
    pushed_model: Output[Artifact],
    report: Output[Markdown],
    registered_model: Output[VertexModel],
    model: Optional[Input[Model]] = None,  # noqa: UP045
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
    allow_breaking_changes: bool = False,
    signing_key: str = '',
    signing_certificate_chain: str = '',
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
    """Exports a blessed model once, as a SavedModel a model server can load (FinalExporter)."""
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
    allow_breaking_changes: bool = False,
    signing_key: str = '',
    signing_certificate_chain: str = '',
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
    """Exports a blessed model given by its path once (FinalExporter, model as a parameter)."""
    arguments = dict(locals())
    from final_exporter.adapters.kfp import export_for_kfp

    return export_for_kfp(arguments)


_FUNCTIONS = (final_export, final_export_from_uri)
for _function in _FUNCTIONS:
    _function.__doc__ = component_docstring(_function)
del _function


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
