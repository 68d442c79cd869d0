"""Vertex AI Model Registry: each published export becomes a version of a parent model.

After an export is published to a `gs://` export base, `register_version` uploads
the version folder as a new version of the parent model through the real
`google.cloud.aiplatform_v1.ModelServiceClient` (UploadModel, a long-running
operation), and moves the requested aliases to it with `MergeVersionAliases`.

A retry never registers twice: every version this module uploads carries the
label `final_exporter_manifest` = the first 63 hex digits of the export's manifest
SHA-256 (Vertex label values hold at most 63 characters); the full digest is in
the version description. A retried execution reports the earlier export
(core/exporter.py), whose digest finds the version it registered.

`RegistryTarget` checks the settings when it is made (`ExportConfig` makes it
on construction), so a bad alias or label is refused before anything is written. The client library is imported
only when a registration runs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import FinalExporterError, InvalidInputError

logger = logging.getLogger(__name__)

# Points the client at another ModelService endpoint (`host:port`). A loopback
# endpoint (an emulator, the tests' server) is reached without TLS or credentials;
# any other with TLS and Application Default Credentials.
ENDPOINT_ENV = 'FINAL_EXPORTER_VERTEX_ENDPOINT'
_LOOPBACK_HOSTS = ('localhost', '127.0.0.1', '[::1]')

# The label that lets a retry find the version it registered.
MANIFEST_LABEL = 'final_exporter_manifest'
# google.cloud.aiplatform_v1.types.Model.version_aliases: "[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]
# to distinguish from version_id" (at most 128 characters).
VERSION_ALIAS_PATTERN = r'[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]'
# Vertex keeps `default` on exactly one version; it moves with is_default_version.
DEFAULT_ALIAS = 'default'
# Vertex (and Google Cloud) label rules: at most 64 labels; keys 1-63 characters,
# values 0-63; lowercase letters (international ones too), digits, "_" and "-";
# keys start with a lowercase letter.
MAX_LABELS = 64
MAX_LABEL_CHARS = 63
_MODEL_NAME_RE = re.compile(
    r'projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/models/(?P<model>[^/@]+)'
)
# UploadModelRequest.model_id: "[a-z0-9_-]", first character not a digit or "-",
# at most 63 characters; numeric ids are the ones Vertex assigns.
_MODEL_ID_RE = re.compile(r'[a-z_][a-z0-9_-]{0,62}|[0-9]{1,63}')
_KMS_KEY_RE = re.compile(r'projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+')
_REGION_RE = re.compile(r'[a-z]+(-[a-z0-9]+)+')
_PROJECT_RE = re.compile(r'[a-z0-9][a-z0-9.:-]{2,62}')
MAX_DISPLAY_NAME_CHARS = 128
# The prebuilt TensorFlow serving images Vertex publishes, per multi-region.
_IMAGE_REPOSITORIES = ('us', 'europe', 'asia')
# For a model whose saved_model.pb names no TensorFlow version.
FALLBACK_TF_VERSION = '2.15'
UPLOAD_TIMEOUT_SECONDS = 1800


def validate_version_alias(alias: Any) -> str:
    """Returns `alias` if Vertex accepts it as a model version alias.

    Raises:
        InvalidInputError: naming the alias and the rule it breaks.
    """
    if not isinstance(alias, str) or not re.fullmatch(VERSION_ALIAS_PATTERN, alias):
        raise InvalidInputError(
            f'vertex_version_aliases: {alias!r} is not a Vertex AI version alias; expected a '
            'lowercase letter, then up to 126 letters, digits or "-", ending in a lowercase '
            'letter or digit (2-128 characters, e.g. "candidate" or "prod-v2")'
        )
    if alias == DEFAULT_ALIAS:
        raise InvalidInputError(
            'vertex_version_aliases: "default" is managed by Vertex AI; set '
            'vertex_is_default_version instead'
        )
    return alias


def validate_version_aliases(aliases: Any) -> list[str]:
    """Returns the aliases, each checked, in order and without duplicates."""
    if isinstance(aliases, str) or not isinstance(aliases, Sequence):
        raise InvalidInputError(
            f'vertex_version_aliases must be a list of aliases, got {aliases!r}'
        )
    return list(dict.fromkeys(validate_version_alias(a) for a in aliases))


def _label_chars_ok(text: str) -> bool:
    return all(ch.isdigit() or ch in '_-' or (ch.isalpha() and not ch.isupper()) for ch in text)


def validate_labels(labels: Any) -> dict[str, str]:
    """Returns `labels` if Vertex accepts them on a model; keys sorted.

    Raises:
        InvalidInputError: naming the label and the rule it breaks.
    """
    if not isinstance(labels, Mapping):
        raise InvalidInputError(
            f'vertex_labels must be a mapping of label key to value, got {labels!r}'
        )
    if len(labels) > MAX_LABELS - 1:
        raise InvalidInputError(
            f'vertex_labels: {len(labels)} labels; Vertex AI allows {MAX_LABELS} per model and '
            f'the exporter adds {MANIFEST_LABEL!r}, so at most {MAX_LABELS - 1}'
        )
    for key, value in labels.items():
        if not (
            isinstance(key, str)
            and 1 <= len(key) <= MAX_LABEL_CHARS
            and key[0].isalpha()
            and not key[0].isupper()
            and _label_chars_ok(key)
        ):
            raise InvalidInputError(
                f'vertex_labels: key {key!r} is not a Vertex AI label key; expected 1-63 '
                'lowercase letters, digits, "_" or "-", starting with a lowercase letter '
                '(e.g. "team")'
            )
        if key == MANIFEST_LABEL:
            raise InvalidInputError(
                f'vertex_labels: {MANIFEST_LABEL!r} is set by the exporter (the manifest '
                'digest that lets a retry find its version); choose another key'
            )
        if not (
            isinstance(value, str) and len(value) <= MAX_LABEL_CHARS and _label_chars_ok(value)
        ):
            raise InvalidInputError(
                f'vertex_labels: value {value!r} of {key!r} is not a Vertex AI label value; '
                'expected 0-63 lowercase letters, digits, "_" or "-" (e.g. "fraud-team")'
            )
    return dict(sorted(labels.items()))


def validate_parent_model(parent: Any) -> str:
    """Returns `parent`: a display name or `projects/P/locations/L/models/ID`.

    Raises:
        InvalidInputError: for an empty, over-long or malformed name.
    """
    if not isinstance(parent, str) or not parent.strip():
        raise InvalidInputError(
            f'vertex_model must be a model display name or resource name, got {parent!r}'
        )
    if parent.startswith('projects/'):
        match = _MODEL_NAME_RE.fullmatch(parent)
        if not match or not _MODEL_ID_RE.fullmatch(match['model']):
            raise InvalidInputError(
                f'vertex_model {parent!r} is not a model resource name; expected '
                '"projects/PROJECT/locations/REGION/models/MODEL_ID" (no "@version"), or a '
                'display name such as "penguin"'
            )
        return parent
    if len(parent) > MAX_DISPLAY_NAME_CHARS or any(ch in parent for ch in '\x00\n\r"'):
        raise InvalidInputError(
            f'vertex_model display name {parent!r} must be 1-{MAX_DISPLAY_NAME_CHARS} '
            'characters without quotes or line breaks'
        )
    return parent


def validate_encryption_key(key: str) -> str:
    """Returns `key` if it is a Cloud KMS key resource name (or empty)."""
    if key and not _KMS_KEY_RE.fullmatch(key):
        raise InvalidInputError(
            f'vertex_encryption_key {key!r} is not a Cloud KMS key name; expected '
            '"projects/P/locations/L/keyRings/R/cryptoKeys/K"'
        )
    return key


def validate_location(project: str, region: str, parent: str) -> None:
    """Checks the project and region, and that they agree with a parent resource name."""
    if project and not _PROJECT_RE.fullmatch(project):
        raise InvalidInputError(
            f'vertex_project {project!r} is not a Google Cloud project id or number'
        )
    if region and not _REGION_RE.fullmatch(region):
        raise InvalidInputError(
            f'vertex_region {region!r} is not a Google Cloud region; expected e.g. "us-central1"'
        )
    match = _MODEL_NAME_RE.fullmatch(parent) if parent.startswith('projects/') else None
    for what, given in (('project', project), ('region', region)):
        if match and given and match[what] != given:
            raise InvalidInputError(
                f'vertex_{what} {given!r} differs from the {what} of vertex_model {parent!r} '
                f'({match[what]!r}); leave vertex_{what} empty or make them agree'
            )


@dataclasses.dataclass(frozen=True)
class RegistryTarget:
    """Where and how to register an export: the `vertex_*` parameters, checked on construction.

    Attributes:
        parent_model: `vertex_model`.
        project: `vertex_project`.
        region: `vertex_region`.
        serving_image: `vertex_serving_image`.
        version_aliases: `vertex_version_aliases`, each once.
        labels: `vertex_labels`, sorted by key.
        version_description: `vertex_version_description`.
        is_default_version: `vertex_is_default_version`.
        encryption_key: `vertex_encryption_key`.

    Raises:
        InvalidInputError: for a setting Vertex AI would refuse, naming its parameter.
    """

    parent_model: str
    project: str = ''
    region: str = ''
    serving_image: str = ''
    version_aliases: Sequence[str] = ()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    version_description: str = ''
    is_default_version: bool = True
    encryption_key: str = ''

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_('version_aliases', tuple(validate_version_aliases(self.version_aliases)))
        set_('labels', validate_labels(self.labels))
        validate_parent_model(self.parent_model)
        validate_location(self.project, self.region, self.parent_model)
        validate_encryption_key(self.encryption_key)
        if any(ch.isspace() for ch in self.serving_image):
            raise InvalidInputError(
                f'vertex_serving_image {self.serving_image!r} contains whitespace; expected an '
                'image URI, e.g. us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest'
            )


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """A model version in the registry.

    Attributes:
        model: The model's resource name, `projects/P/locations/L/models/ID`.
        version_id: The version id Vertex assigned (`1`, `2`, ...).
        aliases: The aliases the version holds.
        already_registered: True when a retry found the version an earlier
            attempt registered.
    """

    model: str
    version_id: str
    aliases: tuple[str, ...]
    already_registered: bool = False

    @property
    def version_name(self) -> str:
        """`projects/P/locations/L/models/ID@VERSION`."""
        return f'{self.model}@{self.version_id}'

    @property
    def console_url(self) -> str:
        """The version's page in the Google Cloud console."""
        match = _MODEL_NAME_RE.fullmatch(self.model)
        assert match, self.model
        return (
            f'https://console.cloud.google.com/vertex-ai/models/locations/{match["region"]}'
            f'/models/{match["model"]}/versions/{self.version_id}?project={match["project"]}'
        )

    def to_lineage(self, manifest_sha256: str) -> dict[str, Any]:
        """The PushedModel properties this registration adds."""
        return {
            keys.VERTEX_MODEL_RESOURCE_KEY: self.model,
            keys.VERTEX_MODEL_VERSION_ID_KEY: self.version_id,
            keys.VERTEX_MODEL_VERSION_ALIASES_KEY: list(self.aliases),
            keys.VERTEX_MANIFEST_LABEL_KEY: manifest_label(manifest_sha256),
            keys.VERTEX_CONSOLE_URL_KEY: self.console_url,
        }


def manifest_label(manifest_sha256: str) -> str:
    """The label value carrying the manifest digest (63 of its 64 hex digits)."""
    return manifest_sha256[:MAX_LABEL_CHARS]


def default_serving_image(tensorflow_version: str | None, region: str) -> str:
    """The prebuilt Vertex AI TensorFlow CPU serving image for this model and region.

    E.g. `us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-16:latest` for a model
    saved by TensorFlow 2.16.x, served from `us-central1`.
    """
    match = re.match(r'(\d+)\.(\d+)', tensorflow_version or '')
    major, minor = match.groups() if match else FALLBACK_TF_VERSION.split('.')
    repository = region.split('-', 1)[0]
    if repository not in _IMAGE_REPOSITORIES:
        repository = 'us'
    framework = 'tf2' if major == '2' else 'tf'
    return (
        f'{repository}-docker.pkg.dev/vertex-ai/prediction/{framework}-cpu.{major}-{minor}:latest'
    )


def resolve_project_and_region(target: RegistryTarget) -> tuple[str, str]:
    """Project and region: given, from the parent's resource name, else as the Vertex SDK does.

    The SDK reads `aiplatform.init(...)`, then `GOOGLE_CLOUD_PROJECT` /
    `CLOUD_ML_PROJECT_ID` and Application Default Credentials for the project,
    `GOOGLE_CLOUD_REGION` / `CLOUD_ML_REGION` or `us-central1` for the region.

    Raises:
        InvalidInputError: if no project can be found.
    """
    match = (
        _MODEL_NAME_RE.fullmatch(target.parent_model)
        if target.parent_model.startswith('projects/')
        else None
    )
    project = target.project or (match['project'] if match else '')
    region = target.region or (match['region'] if match else '')
    if project and region:
        return project, region
    from google.cloud.aiplatform import initializer  # The SDK only when it must resolve.

    if not region:
        region = initializer.global_config.location
    if not project:
        try:
            project = initializer.global_config.project
        except Exception as e:  # GoogleAuthError or ValueError, as the SDK raises them.
            raise InvalidInputError(
                'vertex_project is empty and the Vertex SDK found no project '
                f'({type(e).__name__}); set vertex_project or GOOGLE_CLOUD_PROJECT'
            ) from None
    return project, region


def model_service_client(region: str) -> Any:
    """A `ModelServiceClient` for `region`, or for `$FINAL_EXPORTER_VERTEX_ENDPOINT`."""
    from google.cloud import aiplatform_v1

    endpoint = os.environ.get(ENDPOINT_ENV, '')
    if endpoint and endpoint.rsplit(':', 1)[0] in _LOOPBACK_HOSTS:
        import grpc
        from google.cloud.aiplatform_v1.services.model_service.transports import (
            ModelServiceGrpcTransport,
        )

        transport = ModelServiceGrpcTransport(channel=grpc.insecure_channel(endpoint))
        return aiplatform_v1.ModelServiceClient(transport=transport)
    return aiplatform_v1.ModelServiceClient(
        client_options={'api_endpoint': endpoint or f'{region}-aiplatform.googleapis.com'}
    )


def register_version(
    target: RegistryTarget,
    *,
    export_dir: str,
    display_name: str,
    manifest_sha256: str,
    tensorflow_version: str | None = None,
    client: Any = None,
) -> RegisteredVersion:
    """Registers the published export as a new version of the parent model, once.

    Args:
        target: The parent model and the version's settings.
        export_dir: The published version folder (`gs://...`), the artifact URI.
        display_name: Display name of a model this call creates (when the parent
            is given by resource name and does not exist yet).
        manifest_sha256: The export's manifest digest: labels the version, so a
            retry finds it instead of uploading again.
        tensorflow_version: TensorFlow version that saved the model, for the
            default serving image.
        client: A `ModelServiceClient`; by default one for the target's region.

    Returns:
        The version, with the aliases it holds.

    Raises:
        InvalidInputError: for a parent display name shared by several models.
        google.api_core.exceptions.GoogleAPICallError: for a failed call or operation.
    """
    from google.cloud.aiplatform_v1 import types

    project, region = resolve_project_and_region(target)
    client = client or model_service_client(region)
    location = f'projects/{project}/locations/{region}'
    label = manifest_label(manifest_sha256)
    wanted_aliases = [
        *target.version_aliases,
        *([DEFAULT_ALIAS] if target.is_default_version else []),
    ]

    parent = _find_parent(client, types, target, location)
    if parent is not None:
        existing = _registered_version(client, types, parent.name, label, export_dir)
        if existing is not None:
            logger.info(
                '%s@%s already holds this export; reporting it.', parent.name, existing.version_id
            )
            version = RegisteredVersion(
                parent.name, existing.version_id, tuple(existing.version_aliases), True
            )
            return _move_aliases(client, types, version, wanted_aliases)

    request = _upload_request(
        types,
        target,
        parent,
        location=location,
        export_dir=export_dir,
        display_name=display_name,
        manifest_sha256=manifest_sha256,
        serving_image=target.serving_image or default_serving_image(tensorflow_version, region),
        aliases=wanted_aliases,
    )
    logger.info('Uploading %s to the Vertex AI Model Registry (%s).', export_dir, location)
    operation = client.upload_model(request=request)
    response = operation.result(timeout=UPLOAD_TIMEOUT_SECONDS)
    uploaded = client.get_model(name=f'{response.model}@{response.model_version_id}')
    version = RegisteredVersion(
        response.model, response.model_version_id, tuple(uploaded.version_aliases)
    )
    return _move_aliases(client, types, version, wanted_aliases)


def _upload_request(
    types: Any,
    target: RegistryTarget,
    parent: Any,
    *,
    location: str,
    export_dir: str,
    display_name: str,
    manifest_sha256: str,
    serving_image: str,
    aliases: Sequence[str],
) -> Any:
    """The `UploadModelRequest`: a new version of `parent`, or a new model when it is None."""
    if parent is not None:
        # The API requires a display name on every upload; a new version takes its
        # parent's, as the Vertex SDK sends it.
        display_name = parent.display_name
    elif not target.parent_model.startswith('projects/'):
        display_name = target.parent_model
    description = f'{target.version_description}\n\n' if target.version_description else ''
    model = types.Model(
        display_name=display_name,
        artifact_uri=export_dir,
        container_spec=types.ModelContainerSpec(image_uri=serving_image),
        labels={**target.labels, MANIFEST_LABEL: manifest_label(manifest_sha256)},
        # A new model's first version takes every alias at once; on an existing parent
        # they move afterwards with MergeVersionAliases, one atomic call, from the
        # versions that hold them. `default` goes with the upload, as the SDK sends it.
        version_aliases=aliases if parent is None else [a for a in aliases if a == DEFAULT_ALIAS],
        version_description=(
            f'{description}FinalExporter export {export_dir}, manifest sha256 {manifest_sha256}'
        ),
    )
    if target.encryption_key:
        model.encryption_spec = types.EncryptionSpec(kms_key_name=target.encryption_key)
    request = types.UploadModelRequest(parent=location, model=model)
    if parent is not None:
        request.parent_model = parent.name
    elif target.parent_model.startswith('projects/'):
        request.model_id = _MODEL_NAME_RE.fullmatch(target.parent_model)['model']
    return request


def _find_parent(client: Any, types: Any, target: RegistryTarget, location: str) -> Any:
    """The parent model (its default version), or None when it does not exist yet."""
    from google.api_core import exceptions

    if target.parent_model.startswith('projects/'):
        try:
            return client.get_model(name=target.parent_model)
        except exceptions.NotFound:
            return None
    found = list(
        client.list_models(
            request=types.ListModelsRequest(
                parent=location, filter=f'display_name="{target.parent_model}"'
            )
        )
    )
    if len(found) > 1:
        raise InvalidInputError(
            f'vertex_model {target.parent_model!r} is the display name of {len(found)} models '
            f'({", ".join(m.name for m in found)}); pass the resource name of the one to add '
            'versions to'
        )
    return found[0] if found else None


def _registered_version(client: Any, types: Any, model: str, label: str, export_dir: str) -> Any:
    """The version of `model` that already holds this export, or None."""
    request = types.ListModelVersionsRequest(
        name=model, filter=f'labels.{MANIFEST_LABEL}="{label}"'
    )
    for version in client.list_model_versions(request=request):
        # Two identical exports in the same second share a manifest digest; the
        # version folder tells them apart.
        if version.labels.get(MANIFEST_LABEL) == label and version.artifact_uri == export_dir:
            return version
    return None


def _move_aliases(
    client: Any, types: Any, version: RegisteredVersion, aliases: Sequence[str]
) -> RegisteredVersion:
    """Moves each alias the version does not hold yet to it, in one atomic call."""
    missing = [a for a in aliases if a not in version.aliases]
    if not missing:
        return version
    merged = client.merge_version_aliases(
        request=types.MergeVersionAliasesRequest(name=version.version_name, version_aliases=missing)
    )
    return dataclasses.replace(version, aliases=tuple(merged.version_aliases))


def registration_error(export_dir: str, error: BaseException) -> FinalExporterError:
    """The error a failed registration fails the execution with."""
    return FinalExporterError(
        f'the export is published and safe at {export_dir}, but registering it in the Vertex '
        f'AI Model Registry failed: {type(error).__name__}: {error}. Retry the step (same '
        'idempotency key): it reports this export and only registers it'
    )
