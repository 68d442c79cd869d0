"""How an export parameter is declared: its kind, its description and its command-line form.

`ExportConfig` (core/config.py) declares each parameter once, as a dataclass field
made by `param()`; the adapters read the declarations back as `Parameter`s to
generate the CLI options, the kfp component docstrings and the reference table.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

# How each parameter travels as a TFX execution property: Kubeflow Pipelines v2 and
# Vertex AI take only str, int and float, so flags are 0/1 ints and mappings JSON.
STR, FLAG, INT, FLOAT, JSON = 'str', 'flag', 'int', 'float', 'json'
PROPERTY_TYPES = {STR: str, FLAG: int, INT: int, FLOAT: float, JSON: str}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One export parameter as the adapters present it: an `ExportConfig` field and its metadata.

    Attributes:
        name: The field's name: the TFX parameter, the kfp component input and, in
            kebab-case, the CLI flag.
        kind: How it travels as an execution property: str, flag, int, float or json.
        default: Its default value; `dataclasses.MISSING` when it must be given.
        summary: One sentence: what it does.
        details: The rest of its description; empty when the summary says it all.
        metavar: Its value on the command line, e.g. `N`.
        choices: The values it takes, when they are few.
        switch: On the command line a flag that only turns it on (`--as-text`),
            not a `--x/--no-x` pair.
    """

    name: str
    kind: str
    default: Any
    summary: str
    details: str = ''
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    switch: bool = False

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def is_flag(self) -> bool:
        return self.kind == FLAG

    @property
    def number_type(self) -> type | None:
        """`int` or `float` for a number, else None."""
        return PROPERTY_TYPES[self.kind] if self.kind in (INT, FLOAT) else None

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, list)

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.default, dict)

    def description(self, *, markdown: bool = True) -> str:
        """The whole description; `markdown=False` drops the backticks (help texts, kfp specs)."""
        text = f'{self.summary} {self.details}'.strip()
        return text if markdown else text.replace('`', '')


def docstring_section(title: str, entries: Mapping[str, str], indent: str = '') -> str:
    """A Google-style docstring section (`Args:`, `Attributes:`), one wrapped entry a name."""
    lines = [f'{indent}{title}:']
    for name, text in entries.items():
        lines += textwrap.wrap(
            f'{name}: {text}',
            width=88,
            initial_indent=f'{indent}    ',
            subsequent_indent=f'{indent}        ',
            break_long_words=False,
            break_on_hyphens=False,
        )
    return '\n'.join(lines) + '\n'


def default_of(field: dataclasses.Field) -> Any:
    """The field's default value (a fresh one from its factory); `MISSING` when required."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def param(
    kind: str,
    default: Any = dataclasses.MISSING,
    *,
    summary: str,
    details: str = '',
    metavar: str | None = None,
    choices: Sequence[str] = (),
    switch: bool = False,
) -> Any:
    """A field of `ExportConfig` that declares a parameter: its default, description and CLI form.

    Args:
        kind: How it travels as an execution property: `STR`, `FLAG`, `INT`, `FLOAT`, `JSON`.
        default: Its default; a callable (`list`, `dict`) makes a fresh one each time.
            Left out: the parameter is required.
        summary: One sentence; the CLI's help shows it alone.
        details: The rest; the docs, docstrings and kfp specs show both.
        metavar: As `Parameter.metavar`.
        choices: As `Parameter.choices`.
        switch: As `Parameter.switch`.
    """
    metadata = {
        'kind': kind,
        'summary': summary,
        'details': details,
        'metavar': metavar,
        'choices': tuple(choices),
        'switch': switch,
    }
    if callable(default) and not isinstance(default, (str, int, float)):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
