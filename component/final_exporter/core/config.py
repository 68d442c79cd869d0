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
from typing import TYPE_CHECKING, Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.common.keys import LABEL_PATTERN
from final_exporter.storage.types import COPY_AUTO, check_method

if TYPE_CHECKING:
    from final_exporter.lifecycle.vertex_registry import RegistryTarget

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
    if dest == keys.MANIFEST_FILENAME:
        raise InvalidInputError(
            f'assets_extra destination {dest!r} is reserved for the export manifest; '
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


# How each parameter travels as a TFX execution property: Kubeflow Pipelines v2 and
# Vertex AI take only str, int and float, so flags are 0/1 ints and mappings JSON.
_STR, _FLAG, _INT, _FLOAT, _JSON = 'str', 'flag', 'int', 'float', 'json'
PROPERTY_TYPES = {_STR: str, _FLAG: int, _INT: int, _FLOAT: float, _JSON: str}
# The most warmup records TensorFlow Serving reads (saved_model_warmup_util.cc).
MAX_WARMUP_REQUESTS = 1000


# The free-text registry parameters (trimmed; empty means unset or the SDK's default).
_REGISTRY_STRINGS = (
    'vertex_model',
    'vertex_project',
    'vertex_region',
    'vertex_serving_image',
    'vertex_version_description',
    'vertex_encryption_key',
)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _param(kind: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if callable(default) and not isinstance(default, (str, int, float)):
        return dataclasses.field(default_factory=default, metadata={'kind': kind}, **kw)
    return dataclasses.field(default=default, metadata={'kind': kind}, **kw)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The parameters of one export, validated on construction.

    The TFX spec's PARAMETERS, the execution properties and their parsing are all
    derived from these fields, so a new parameter is declared once.

    Attributes:
        name: The model name; the export goes to `<export_base>/<name>/<version>/`.
        export_base: The base folder (or gs:// / s3:// prefix) holding one folder per name.
        serving_fn: Import path of a function `fn(loaded_model) -> signatures`, or
            None to copy the source SavedModel byte for byte.
        assets_extra: Destination (relative to `assets.extra/`) -> source file.
        as_text: Write `saved_model.pbtxt` instead of `saved_model.pb`.
        require_blessing: Refuse to run without any blessing input.
        copy_method: `auto` (reflink where the filesystem can, else a kernel copy),
            `copy`, or `hardlink` (opt-in: link the immutable source files).
        smoke_test: Load the staged export and call its signature before publishing.
        signature_name: The serving signature the smoke test, parity and warmup use.
        examples_split: The split of the `examples` input to read examples from.
        parity_sample_size: Examples compared between the source model and a
            re-exported one (`serving_fn` or `as_text`); 0 turns parity off.
        parity_tolerance: Absolute and relative tolerance of the parity check.
        warmup_requests: Write this many TensorFlow Serving warmup requests (at most
            1000) from the examples to `assets.extra/tf_serving_warmup_requests`; 0: none.
        exports_to_keep: Keep this many newest versions, removing older ones after a
            publish (never labelled ones); 0 keeps all.
        label: Point this TensorFlow Serving version label (e.g. `canary`) at the new
            version in `<export_base>/<name>/models.config`; empty: no label.
        paranoid_verify: Before publishing, read every staged byte back (locally from
            disk: the flushed pages are dropped from the cache first) and check it
            against the manifest. Off by default: the copy hashed every byte it wrote.
        vertex_model: Register each export in the Vertex AI Model Registry as a new
            version of this model: a display name or
            `projects/P/locations/L/models/ID`, created if absent. Empty: no
            registry. Needs a `gs://` export base.
        vertex_project: The model's project; empty: as the Vertex SDK resolves it.
        vertex_region: The model's region; empty: as the Vertex SDK resolves it.
        vertex_serving_image: Serving container image of the version; empty: the
            prebuilt TensorFlow CPU image of the model's TensorFlow version.
        vertex_version_aliases: Aliases the new version takes (moved from the
            versions holding them), e.g. `['candidate']`.
        vertex_labels: Labels of the new version.
        vertex_version_description: Description of the new version.
        vertex_is_default_version: The new version takes the `default` alias.
        vertex_encryption_key: Cloud KMS key name (CMEK) of the model.
    """

    name: str = _param(_STR)
    export_base: str = _param(_STR)
    serving_fn: str | None = _param(_STR, None)
    assets_extra: Mapping[str, str] = _param(_JSON, dict)
    as_text: bool = _param(_FLAG, False)
    require_blessing: bool = _param(_FLAG, True)
    copy_method: str = _param(_STR, COPY_AUTO)
    smoke_test: bool = _param(_FLAG, True)
    signature_name: str = _param(_STR, 'serving_default')
    examples_split: str = _param(_STR, 'eval')
    parity_sample_size: int = _param(_INT, 100)
    parity_tolerance: float = _param(_FLOAT, 1e-5)
    warmup_requests: int = _param(_INT, 0)
    exports_to_keep: int = _param(_INT, 0)
    label: str = _param(_STR, '')
    paranoid_verify: bool = _param(_FLAG, False)
    vertex_model: str = _param(_STR, '')
    vertex_project: str = _param(_STR, '')
    vertex_region: str = _param(_STR, '')
    vertex_serving_image: str = _param(_STR, '')
    vertex_version_aliases: Sequence[str] = _param(_JSON, list)
    vertex_labels: Mapping[str, str] = _param(_JSON, dict)
    vertex_version_description: str = _param(_STR, '')
    vertex_is_default_version: bool = _param(_FLAG, True)
    vertex_encryption_key: str = _param(_STR, '')

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
        if not isinstance(self.assets_extra, Mapping):
            raise InvalidInputError(
                'assets_extra must be a mapping of destination (relative to assets.extra/) '
                f'to source file, got {type(self.assets_extra).__name__}'
            )
        normalised: dict[str, str] = {}
        for dest, src in self.assets_extra.items():
            clean = validate_assets_extra_dest(dest)
            if not isinstance(src, str) or not src:
                raise InvalidInputError(
                    f'assets_extra source for {dest!r} must be a file path, got {src!r}'
                )
            normalised[clean] = src
        set_('assets_extra', dict(sorted(normalised.items())))
        for key in ('as_text', 'require_blessing', 'smoke_test', 'paranoid_verify'):
            set_(key, _as_flag(getattr(self, key), key))
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
        self._check_registry()

    def _check_registry(self) -> None:
        """Validates the `vertex_*` parameters as Vertex AI would, before anything is written."""
        from final_exporter.lifecycle import vertex_registry as registry

        set_ = functools.partial(object.__setattr__, self)
        for key in _REGISTRY_STRINGS:
            value = getattr(self, key)
            if value is None:
                value = ''
            if not isinstance(value, str):
                raise InvalidInputError(f'{key} must be a string, got {value!r}')
            set_(key, value.strip())
        set_(
            'vertex_is_default_version',
            _as_flag(self.vertex_is_default_version, 'vertex_is_default_version'),
        )
        set_(
            'vertex_version_aliases', registry.validate_version_aliases(self.vertex_version_aliases)
        )
        set_('vertex_labels', registry.validate_labels(self.vertex_labels))
        if not self.vertex_model:
            given = [
                f.name
                for f in dataclasses.fields(self)
                if f.name.startswith('vertex_') and getattr(self, f.name) != _default_of(f)
            ]
            if given:
                raise InvalidInputError(
                    f'{", ".join(given)} given without vertex_model; set vertex_model to the '
                    'display name or resource name of the Vertex AI model to register into'
                )
            return
        registry.validate_parent_model(self.vertex_model)
        registry.validate_location(self.vertex_project, self.vertex_region, self.vertex_model)
        registry.validate_encryption_key(self.vertex_encryption_key)
        if any(ch.isspace() for ch in self.vertex_serving_image):
            raise InvalidInputError(
                f'vertex_serving_image {self.vertex_serving_image!r} contains whitespace; '
                'expected an image URI, e.g. us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest'
            )
        if not self.export_base.startswith('gs://'):
            raise InvalidInputError(
                'vertex_model needs a gs:// export_base (Vertex AI serves a version from Cloud '
                f'Storage), got export_base={self.export_base!r}'
            )

    @property
    def registry_target(self) -> RegistryTarget | None:
        """Where to register the export in the Vertex AI Model Registry; None: nowhere."""
        from final_exporter.lifecycle.vertex_registry import RegistryTarget

        if not self.vertex_model:
            return None
        return RegistryTarget(
            parent_model=self.vertex_model,
            project=self.vertex_project,
            region=self.vertex_region,
            serving_image=self.vertex_serving_image,
            version_aliases=tuple(self.vertex_version_aliases),
            labels=dict(self.vertex_labels),
            version_description=self.vertex_version_description,
            is_default_version=self.vertex_is_default_version,
            encryption_key=self.vertex_encryption_key,
        )

    @property
    def model_base(self) -> str:
        """`<export_base>/<name>`: the TensorFlow Serving model base path."""
        return f'{self.export_base.rstrip("/")}/{self.name}'

    def to_exec_properties(self) -> dict[str, Any]:
        """The TFX execution parameters (primitive types only, as KFP v2 needs)."""
        props: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), field.metadata['kind']
            if kind == _JSON:
                plain = dict(value) if isinstance(value, Mapping) else list(value)
                value = json.dumps(plain, sort_keys=True)
            elif kind == _FLAG:
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
            if field.metadata['kind'] == _JSON and isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise InvalidInputError(
                        f'{field.name} must be a JSON '
                        f'{"list" if isinstance(_default_of(field), list) else "object"}, '
                        f'got {value!r} ({e})'
                    ) from e
            kwargs[field.name] = value
        return cls(**kwargs)

    @classmethod
    def property_types(cls) -> dict[str, tuple[type, bool]]:
        """{parameter: (execution property type, optional)} for the TFX spec."""
        return {
            f.name: (
                PROPERTY_TYPES[f.metadata['kind']],
                f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        }
