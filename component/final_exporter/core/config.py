"""The export parameters, validated and parsed in one place.

The TFX component, the executor and the CLI all build an `ExportConfig`, so a
parameter is checked the same way at pipeline construction, at run time and on
the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.keys import LABEL_PATTERN
from final_exporter.core.parameter import (
    FLAG,
    FLOAT,
    INT,
    JSON,
    PROPERTY_TYPES,
    STR,
    Parameter,
    default_of,
    docstring_section,
    param,
)
from final_exporter.lifecycle import vertex_registry
from final_exporter.lifecycle.vertex_registry import RegistryTarget
from final_exporter.storage.types import COPY_AUTO, COPY_METHODS, check_method

# Longest single path component most filesystems (ext4, xfs, GCS object name
# segments in practice) accept.
_MAX_NAME_BYTES = 255


def validate_export_name(name: Any) -> str:
    """Returns `name` if it can be one folder under the export base.

    Raises:
        InvalidInputError: naming what is wrong with `name`.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError(
            f'name must be a non-empty string (one folder name under export_base), got {name!r}'
        )
    _check_component(name, what='name', value=name)
    return name


def validate_assets_extra_dest(dest: Any) -> str:
    """Returns `dest` if it is a relative path that stays inside `assets.extra/`.

    Destinations are relative POSIX paths; subfolders are allowed.

    Raises:
        InvalidInputError: naming the destination and what is wrong with it.
    """
    if not isinstance(dest, str) or not dest:
        raise InvalidInputError(
            f'assets_extra destination must be a non-empty relative path, got {dest!r}'
        )
    if dest.startswith('/') or (len(dest) > 1 and dest[1] == ':'):
        raise InvalidInputError(
            f'assets_extra destination {dest!r} is absolute; expected a path relative to '
            f'{keys.ASSETS_EXTRA_DIR}/, e.g. "labels/classes.txt"'
        )
    for part in dest.split('/'):
        if part == '':
            raise InvalidInputError(
                f'assets_extra destination {dest!r} has an empty path component; '
                'expected e.g. "labels/classes.txt"'
            )
        _check_component(part, what='assets_extra destination', value=dest)
    reserved = {keys.MANIFEST_FILENAME: 'manifest', keys.SIGNATURE_FILENAME: 'signature'}
    if dest in reserved:
        raise InvalidInputError(
            f'assets_extra destination {dest!r} is reserved for the export {reserved[dest]}; '
            'choose another name'
        )
    return dest


def _check_component(part: str, *, what: str, value: str) -> None:
    if part in ('.', '..'):
        raise InvalidInputError(
            f'{what} {value!r} contains {part!r}; it must stay inside its folder'
        )
    hint = (
        'use a single folder name, e.g. "penguin"' if what == 'name' else 'use "/" between folders'
    )
    for bad, label in (('/', 'a "/"'), ('\\', 'a backslash'), ('\x00', 'a NUL byte')):
        if bad in part:
            raise InvalidInputError(f'{what} {value!r} contains {label}; {hint}')
    if any(unicodedata.category(ch) == 'Cc' for ch in part):
        raise InvalidInputError(f'{what} {value!r} contains a control character')
    if len(part.encode('utf-8')) > _MAX_NAME_BYTES:
        raise InvalidInputError(
            f'{what} {value!r} has a path component longer than {_MAX_NAME_BYTES} bytes'
        )


def serving_fn_path(serving_fn: str | Callable[..., Any] | None) -> str | None:
    """Returns the import path of `serving_fn` as the component stores it.

    Accepts `None`, a string (`package.module:function`, `package.module.function`
    or `/path/to/module_file.py:function`) or a module-level function, which is
    turned into its import path so the executor can load it in another process
    or a container.

    Raises:
        InvalidInputError: for lambdas, nested functions or functions defined in
            `__main__`, which another process cannot import.
    """
    if serving_fn is None or serving_fn == '':
        return None
    if isinstance(serving_fn, str):
        if ':' not in serving_fn and '.' not in serving_fn:
            raise InvalidInputError(
                f'serving_fn {serving_fn!r} is not an import path; expected '
                '"package.module:function" or "/path/to/module_file.py:function"'
            )
        return serving_fn
    if callable(serving_fn):
        module = getattr(serving_fn, '__module__', None)
        qualname = getattr(serving_fn, '__qualname__', '')
        if not module or module == '__main__' or '<' in qualname or '.' in qualname:
            raise InvalidInputError(
                f'serving_fn {serving_fn!r} cannot be imported by the executor; define it '
                'at the top level of an importable module, or pass '
                '"/path/to/module_file.py:function"'
            )
        return f'{module}:{qualname}'
    raise InvalidInputError(
        f'serving_fn must be a function or an import path string, got {type(serving_fn).__name__}'
    )


def _as_flag(value: Any, key: str) -> bool:
    # Vertex AI hands integer parameters back as floats (1.0), the CLI as bools.
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip() in ('0', '1', '0.0', '1.0'):
        return bool(float(value))
    raise InvalidInputError(f'{key} must be 0 or 1 (or a bool), got {value!r}')


def _as_count(value: Any, key: str, maximum: int | None = None) -> int:
    # Vertex AI hands integers back as floats (100.0).
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number.is_integer() or number < 0:
        raise InvalidInputError(f'{key} must be a whole number >= 0, got {value!r}')
    if maximum is not None and number > maximum:
        raise InvalidInputError(f'{key} must be at most {maximum}, got {value!r}')
    return int(number)


def _as_float(value: Any, key: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not number >= 0:
        raise InvalidInputError(f'{key} must be a number >= 0, got {value!r}')
    return number


# The most warmup records TensorFlow Serving reads (saved_model_warmup_util.cc).
MAX_WARMUP_REQUESTS = 1000
# The parameters of the Vertex AI Model Registry start with this (`RegistryTarget`).
REGISTRY_PREFIX = 'vertex_'


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The parameters of one export, validated on construction.

    Each parameter is declared once, here: its field carries its description and
    its command-line form. The TFX spec's parameters, the execution properties and
    their parsing, the Kubeflow components' docstrings, the CLI's options and the
    table in docs/parameters.md are generated from these fields, and so is the
    Attributes section below.
    """

    name: str = param(
        STR,
        summary='The model name, one folder: the export goes to `<export_base>/<name>/<version>/`.',
        metavar='NAME',
    )
    export_base: str = param(
        STR,
        summary='Where the versions go: a folder, `gs://bucket/prefix` or `s3://bucket/prefix`.',
        details='`<export_base>/<name>` is the TensorFlow Serving model base path.',
        metavar='PATH',
    )
    serving_fn: str | Callable[..., Any] | None = param(
        STR,
        None,
        summary='Re-export the model with the signatures `fn(loaded_model)` returns, the TF2 '
        'form of `serving_input_receiver_fn`; without it the export is a byte-for-byte copy.',
        details='Given as `package.module:fn`, `/path/to/module_file.py:fn` or a module-level '
        'function (stored as its import path). The model is loaded, the returned signatures '
        '(name -> `tf.function` with an input signature, or concrete function) attached, and '
        'a new SavedModel saved.',
        metavar='MODULE:FUNC',
    )
    assets_extra: Mapping[str, str] = param(
        JSON,
        dict,
        summary='Extra files for `assets.extra/`: destination under it -> source file (local, '
        '`gs://` or `s3://`).',
        details='Absolute destinations, `..`, `.`, backslashes, NUL and control characters, '
        'components over 255 bytes, and `export_manifest.json` and `model.sig` (the manifest '
        'and the signature) are refused when the parameters are checked (a `ValueError` at '
        'pipeline construction) and again at run time. A missing source fails before anything '
        'is written.',
        metavar='DEST=SRC',
    )
    as_text: bool = param(
        FLAG,
        False,
        summary='Write `saved_model.pbtxt` instead of `saved_model.pb`.',
        details='The export still loads with `tf.saved_model.load` and `saved_model_cli`.',
        switch=True,
    )
    require_blessing: bool = param(
        FLAG,
        True,
        summary='Refuse to export without a blessing.',
        details='With no blessing given, the export is refused (at pipeline construction, with '
        'a `ValueError`) unless this is `False`.',
    )
    copy_method: str = param(
        STR,
        COPY_AUTO,
        summary='How the files are copied: `auto`, `copy` or `hardlink`.',
        details='`auto`: reflink where the filesystem can (btrfs, XFS), else each 32 MiB chunk '
        'of a file from 4 MiB is read, hashed and written with `O_DIRECT` where the export base '
        'takes it (else the kernel copies it, `copy_file_range`, and it is hashed through a '
        'read-only mapping of the destination; sources are read, never mapped; smaller files '
        'are read, hashed and written); the chunks of one large file are copied and hashed by '
        'every thread at once. `copy`: plain read-hash-write. `hardlink` (opt-in): link the source files, which '
        'TFX never modifies; falls back to a copy across filesystems.',
        choices=COPY_METHODS,
    )
    smoke_test: bool = param(
        FLAG,
        True,
        summary='Before publishing, load the staged export from its folder alone, as a model '
        'server does, and call `signature_name` on real (or, without `examples`, synthetic) '
        'inputs.',
        details='A model that does not load, lacks the signature, fails or answers NaN or '
        'infinity is not published. It needs TensorFlow.',
    )
    signature_name: str = param(
        STR,
        'serving_default',
        summary='The signature the smoke test, parity and warmup requests use.',
        metavar='SIGNATURE',
    )
    examples_split: str = param(
        STR, 'eval', summary='The split of `examples` to read.', metavar='SPLIT'
    )
    parity_sample_size: int = param(
        INT,
        100,
        summary='With `examples` and a re-export (`serving_fn` or `as_text`), compare this many '
        "predictions of the export with the source model's; `0` turns parity off.",
        details='A mismatch is refused with the worst differences. With Beam pipeline args it '
        'runs as a Beam pipeline.',
        metavar='N',
    )
    parity_tolerance: float = param(
        FLOAT,
        1e-5,
        summary='Absolute and relative tolerance of the parity check.',
        metavar='TOL',
    )
    warmup_requests: int = param(
        INT,
        0,
        summary=f'Write up to this many (at most {MAX_WARMUP_REQUESTS}) TensorFlow Serving '
        'warmup requests (`PredictionLog`) from `examples` to '
        '`assets.extra/tf_serving_warmup_requests`; `0` writes none.',
        details='A warmup file the model or `assets_extra` already has is validated and '
        'replayed instead.',
        metavar='N',
    )
    exports_to_keep: int = param(
        INT,
        0,
        summary='After publishing, remove the oldest complete versions beyond this many; `0` '
        'keeps all.',
        details='Never the new one, never a labelled one, never a non-numeric folder, never one '
        'being published. Local folders, `gs://` and `s3://`.',
        metavar='N',
    )
    label: str = param(
        STR,
        '',
        summary='Point this TensorFlow Serving version label (e.g. `canary`) at the new version '
        'in `<export_base>/<name>/models.config`; empty: no label.',
        details='Local folders, `gs://` and `s3://`.',
        metavar='LABEL',
    )
    paranoid_verify: bool = param(
        FLAG,
        False,
        summary='Before publishing, read every staged byte back and check it against the manifest.',
        details='Locally after flushing the files and dropping them from the page cache '
        '(`posix_fadvise(DONTNEED)`), so the bytes come back from the disk; on a bucket by '
        'downloading the staged objects. Off by default because the copy already hashed every '
        'byte it wrote (the default check compares the listing, sizes and those hashes without '
        're-reading).',
    )
    allow_breaking_changes: bool = param(
        FLAG,
        False,
        summary='Export even when the new serving signatures break the clients of the served '
        'version; off: such an export fails and nothing is published.',
        details='The served version is the one labelled `stable` in `models.config`, else the '
        'newest; only its graph file is read. Breaking: a removed signature, an input added, '
        'removed or renamed, an input dtype changed or shape narrowed, an output removed or its '
        'dtype changed, a changed method name. Either way the comparison is recorded in lineage '
        '(`serving_signature_diff`), and breaks let through under `serving_signature_breaks`.',
        switch=True,
    )
    signing_key: str = param(
        STR,
        '',
        summary='Sign the export (OpenSSF Model Signing) with this elliptic-curve private key '
        '(PEM; P-256, P-384 or P-521): a path, `gs://` or `s3://` object, or `env:NAME`; '
        'empty: unsigned.',
        details='`env:NAME` reads the PEM text from the environment variable `NAME` of the '
        'process that exports, so no secret sits in the pipeline spec. The signature is written '
        'to `assets.extra/model.sig`; `model_signing verify` and `final-exporter verify '
        '--public-key` check it. A missing, unreadable or malformed key fails before anything '
        'is written. Needs the `[signing]` extra.',
        metavar='PEM',
    )
    signing_certificate_chain: str = param(
        STR,
        '',
        summary="For certificate signing: `signing_key`'s certificate first, then its "
        'intermediates (PEM), in any form `signing_key` takes; empty: key signing.',
        details="The signer's certificate identity (subject, SANs, issuer, fingerprint) is "
        'recorded in lineage.',
        metavar='PEM',
    )
    vertex_model: str = param(
        STR,
        '',
        summary='Register each export in the Vertex AI Model Registry as a new version of this '
        'model: a display name or `projects/P/locations/L/models/ID`; empty: no registry.',
        details='A display name is found with `ListModels` and created on the first upload; a '
        'resource name is created with that id if absent. Needs a `gs://` export base.',
        metavar='MODEL',
    )
    vertex_project: str = param(
        STR,
        '',
        summary="The model's project; empty: from `vertex_model`'s resource name, else as the "
        'Vertex SDK resolves it (`aiplatform.init`, `GOOGLE_CLOUD_PROJECT`, credentials).',
        metavar='PROJECT',
    )
    vertex_region: str = param(
        STR,
        '',
        summary="The model's region; empty: from `vertex_model`'s resource name, else as the "
        'Vertex SDK resolves it (`aiplatform.init`, `GOOGLE_CLOUD_REGION`, `CLOUD_ML_REGION`, '
        '`us-central1`).',
        metavar='REGION',
    )
    vertex_serving_image: str = param(
        STR,
        '',
        summary="The version's serving container image; empty: the prebuilt TensorFlow CPU image "
        "of the TensorFlow version that saved the model, in the region's repository.",
        details='For example `us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-16:latest`.',
        metavar='IMAGE',
    )
    vertex_version_aliases: Sequence[str] = param(
        JSON,
        list,
        summary='Aliases the new version takes (e.g. `candidate`), moved from the versions '
        'holding them in one atomic call (`MergeVersionAliases`).',
        details=f"Vertex's rule: `{vertex_registry.VERSION_ALIAS_PATTERN}`; "
        f'`{vertex_registry.DEFAULT_ALIAS}` is refused (use `vertex_is_default_version`).',
        metavar='ALIAS',
    )
    vertex_labels: Mapping[str, str] = param(
        JSON,
        dict,
        summary='Labels of the new version.',
        details=f"Vertex's rules: at most {vertex_registry.MAX_LABELS - 1} (the exporter adds "
        f'`{vertex_registry.MANIFEST_LABEL}`); keys 1-{vertex_registry.MAX_LABEL_CHARS} '
        'lowercase letters, digits, `_` or `-`, starting with a letter; values '
        f'0-{vertex_registry.MAX_LABEL_CHARS} of the same.',
        metavar='KEY=VALUE',
    )
    vertex_version_description: str = param(
        STR,
        '',
        summary="The new version's description; the exporter appends the export folder and the "
        'full manifest SHA-256.',
        metavar='TEXT',
    )
    vertex_is_default_version: bool = param(
        FLAG,
        True,
        summary="The new version takes the `default` alias (the Vertex SDK's default; a new "
        "model's first version always has it).",
    )
    vertex_encryption_key: str = param(
        STR,
        '',
        summary='Cloud KMS key (CMEK) of the model, '
        '`projects/P/locations/L/keyRings/R/cryptoKeys/K`; empty: Google-managed.',
        metavar='KMS_KEY',
    )

    def __post_init__(self) -> None:
        validate_export_name(self.name)
        if not isinstance(self.export_base, str) or not self.export_base:
            raise InvalidInputError(
                f'export_base must be a non-empty folder path, got {self.export_base!r}'
            )
        if '\x00' in self.export_base:
            raise InvalidInputError(f'export_base {self.export_base!r} contains a NUL byte')
        set_ = functools.partial(object.__setattr__, self)
        set_('serving_fn', serving_fn_path(self.serving_fn))
        set_('assets_extra', _checked_assets_extra(self.assets_extra))
        for flag in (p.name for p in self.parameters() if p.is_flag):
            set_(flag, _as_flag(getattr(self, flag), flag))
        check_method(self.copy_method)
        set_('parity_sample_size', _as_count(self.parity_sample_size, 'parity_sample_size'))
        set_('parity_tolerance', _as_float(self.parity_tolerance, 'parity_tolerance'))
        set_(
            'warmup_requests',
            _as_count(self.warmup_requests, 'warmup_requests', MAX_WARMUP_REQUESTS),
        )
        set_('exports_to_keep', _as_count(self.exports_to_keep, 'exports_to_keep'))
        for key in ('signature_name', 'examples_split'):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise InvalidInputError(
                    f'{key} must be a non-empty string, got {getattr(self, key)!r}'
                )
        set_('label', self.label or '')
        if self.label and not re.fullmatch(LABEL_PATTERN, self.label):
            raise InvalidInputError(
                f'label {self.label!r} is not a TensorFlow Serving version label; expected a '
                'letter, then up to 62 letters, digits, "_", "." or "-" (e.g. "canary")'
            )
        self._check_signing()
        self._check_registry()

    def _check_signing(self) -> None:
        """The key sources are strings; a certificate chain signs only with its key."""
        set_ = functools.partial(object.__setattr__, self)
        for key in ('signing_key', 'signing_certificate_chain'):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(
                    f'{key} must be a path, gs:// or s3:// object, or env:NAME, got {value!r}'
                )
            set_(key, (value or '').strip())
        if self.signing_certificate_chain and not self.signing_key:
            raise InvalidInputError(
                'signing_certificate_chain given without signing_key; set signing_key to the '
                "private key of the chain's first certificate"
            )

    def _check_registry(self) -> None:
        """Reads the `vertex_*` parameters; `RegistryTarget` checks them as Vertex AI would."""
        set_ = functools.partial(object.__setattr__, self)
        registry = [p for p in self.parameters() if p.name.startswith(REGISTRY_PREFIX)]
        for setting in registry:
            value = getattr(self, setting.name)
            if setting.kind == STR:
                if value is not None and not isinstance(value, str):
                    raise InvalidInputError(f'{setting.name} must be a string, got {value!r}')
                set_(setting.name, (value or '').strip())
            elif setting.kind == JSON and not value:
                set_(setting.name, setting.default)
        if not self.vertex_model:
            given = [p.name for p in registry if getattr(self, p.name) != p.default]
            if given:
                raise InvalidInputError(
                    f'{", ".join(given)} given without vertex_model; set vertex_model to the '
                    'display name or resource name of the Vertex AI model to register into'
                )
            return
        target = self.registry_target
        set_('vertex_version_aliases', list(target.version_aliases))
        set_('vertex_labels', dict(target.labels))
        if not self.export_base.startswith('gs://'):
            raise InvalidInputError(
                'vertex_model needs a gs:// export_base (Vertex AI serves a version from Cloud '
                f'Storage), got export_base={self.export_base!r}'
            )

    @property
    def registry_target(self) -> RegistryTarget | None:
        """Where to register the export in the Vertex AI Model Registry; None: nowhere.

        Raises:
            InvalidInputError: for a setting Vertex AI would refuse.
        """
        if not self.vertex_model:
            return None
        return RegistryTarget(
            parent_model=self.vertex_model,
            project=self.vertex_project,
            region=self.vertex_region,
            serving_image=self.vertex_serving_image,
            version_aliases=self.vertex_version_aliases,
            labels=self.vertex_labels,
            version_description=self.vertex_version_description,
            is_default_version=self.vertex_is_default_version,
            encryption_key=self.vertex_encryption_key,
        )

    @property
    def model_base(self) -> str:
        """`<export_base>/<name>`: the TensorFlow Serving model base path."""
        return f'{self.export_base.rstrip("/")}/{self.name}'

    @classmethod
    def parameters(cls) -> tuple[Parameter, ...]:
        """Every parameter with its description and command-line form, in declaration order."""
        return tuple(
            Parameter(name=f.name, default=default_of(f), **f.metadata)
            for f in dataclasses.fields(cls)
        )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The parameter names: the TFX parameters, kfp inputs and (kebab-case) CLI flags."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_exec_properties(self) -> dict[str, Any]:
        """The TFX execution parameters (primitive types only, as KFP v2 needs)."""
        props: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.metadata['kind']
            if kind == JSON:
                plain = dict(value) if isinstance(value, Mapping) else list(value)
                value = json.dumps(plain, sort_keys=True)
            elif kind == FLAG:
                value = int(value)
            elif value is None:
                value = ''
            props[field.name] = value
        return props

    @classmethod
    def from_exec_properties(cls, props: Mapping[str, Any]) -> ExportConfig:
        """Parses the execution parameters as TFX or the KFP v2 launcher passes them.

        Missing or empty values take the field's default.
        """
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            value = props.get(field.name)
            if value is None or value == '':
                continue
            if field.metadata['kind'] == JSON and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise InvalidInputError(
                        f'{field.name} must be a JSON '
                        f'{"list" if isinstance(default_of(field), list) else "object"}, '
                        f'got {value!r} ({e})'
                    ) from e
            kwargs[field.name] = value
        return cls(**kwargs)

    @classmethod
    def property_types(cls) -> dict[str, tuple[type, bool]]:
        """{parameter: (execution property type, optional)} for the TFX spec."""
        return {p.name: (PROPERTY_TYPES[p.kind], not p.required) for p in cls.parameters()}


def _checked_assets_extra(assets_extra: Any) -> dict[str, str]:
    """`assets_extra` with every destination checked, sorted by destination."""
    if not isinstance(assets_extra, Mapping):
        raise InvalidInputError(
            'assets_extra must be a mapping of destination (relative to assets.extra/) '
            f'to source file, got {type(assets_extra).__name__}'
        )
    normalised: dict[str, str] = {}
    for dest, src in assets_extra.items():
        clean = validate_assets_extra_dest(dest)
        if not isinstance(src, str) or not src:
            raise InvalidInputError(
                f'assets_extra source for {dest!r} must be a file path, got {src!r}'
            )
        normalised[clean] = src
    return dict(sorted(normalised.items()))


if ExportConfig.__doc__:  # None under `python -OO`.
    ExportConfig.__doc__ = (
        ExportConfig.__doc__.rstrip()
        + '\n\n'
        + docstring_section(
            'Attributes', {p.name: p.description() for p in ExportConfig.parameters()}, '    '
        )
    )
