"""The export parameters, validated and parsed in one place.

The TFX component, the executor and the CLI all build an `ExportConfig`, so a
parameter is checked the same way at pipeline construction, at run time and on
the command line.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from final_exporter import keys
from final_exporter.errors import InvalidInputError
from final_exporter.transfer import COPY_AUTO, check_method

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


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The parameters of one export, validated on construction.

    Attributes:
        name: The model name; the export goes to `<export_base>/<name>/<version>/`.
        export_base: The base folder that holds one folder per model name.
        serving_fn: Import path of a function `fn(loaded_model) -> signatures`, or
            None to copy the source SavedModel byte for byte.
        assets_extra: Destination (relative to `assets.extra/`) -> source file.
        as_text: Write `saved_model.pbtxt` instead of `saved_model.pb`.
        require_blessing: Refuse to run without any blessing input.
        copy_method: `auto` (reflink where the filesystem can, else copy),
            `copy`, or `hardlink` (opt-in: link the immutable source files).
    """

    name: str
    export_base: str
    serving_fn: str | None = None
    assets_extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
    as_text: bool = False
    require_blessing: bool = True
    copy_method: str = COPY_AUTO

    def __post_init__(self) -> None:
        validate_export_name(self.name)
        if not isinstance(self.export_base, str) or not self.export_base:
            raise InvalidInputError(
                f'export_base must be a non-empty folder path, got {self.export_base!r}'
            )
        if '\x00' in self.export_base:
            raise InvalidInputError(f'export_base {self.export_base!r} contains a NUL byte')
        object.__setattr__(self, 'serving_fn', serving_fn_path(self.serving_fn))
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
        object.__setattr__(self, 'assets_extra', dict(sorted(normalised.items())))
        object.__setattr__(self, 'as_text', _as_flag(self.as_text, keys.AS_TEXT_KEY))
        object.__setattr__(
            self, 'require_blessing', _as_flag(self.require_blessing, keys.REQUIRE_BLESSING_KEY)
        )
        check_method(self.copy_method)

    @property
    def model_base(self) -> str:
        """`<export_base>/<name>`: the TensorFlow Serving model base path."""
        return f'{self.export_base.rstrip("/")}/{self.name}'

    def to_exec_properties(self) -> dict[str, Any]:
        """The TFX execution parameters (primitive types only, as KFP v2 needs)."""
        return {
            keys.NAME_KEY: self.name,
            keys.EXPORT_BASE_KEY: self.export_base,
            keys.SERVING_FN_KEY: self.serving_fn or '',
            keys.ASSETS_EXTRA_KEY: json.dumps(dict(self.assets_extra), sort_keys=True),
            keys.AS_TEXT_KEY: int(self.as_text),
            keys.REQUIRE_BLESSING_KEY: int(self.require_blessing),
            keys.COPY_METHOD_KEY: self.copy_method,
        }

    @classmethod
    def from_exec_properties(cls, props: Mapping[str, Any]) -> ExportConfig:
        """Parses the execution parameters as TFX or the KFP v2 launcher passes them."""
        raw_assets = props.get(keys.ASSETS_EXTRA_KEY) or '{}'
        if isinstance(raw_assets, str):
            try:
                raw_assets = json.loads(raw_assets)
            except json.JSONDecodeError as e:
                raise InvalidInputError(
                    f'assets_extra must be a JSON object of destination -> source, got '
                    f'{raw_assets!r} ({e})'
                ) from e
        return cls(
            name=props.get(keys.NAME_KEY),
            export_base=props.get(keys.EXPORT_BASE_KEY),
            serving_fn=props.get(keys.SERVING_FN_KEY) or None,
            assets_extra=raw_assets,
            as_text=props.get(keys.AS_TEXT_KEY, 0),
            require_blessing=props.get(keys.REQUIRE_BLESSING_KEY, 1),
            copy_method=props.get(keys.COPY_METHOD_KEY) or COPY_AUTO,
        )
