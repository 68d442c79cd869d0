"""The README and docs/ stay true to the code: parameters, CLI flags, links, names, layout."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from final_exporter.adapters.cli import build_parser
from final_exporter.common import keys
from final_exporter.core.config import ExportConfig

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / 'docs'
PACKAGE = REPO / 'component' / 'final_exporter'
SCRIPTS = REPO / 'scripts'
PAGES = [REPO / 'README.md', *sorted(DOCS.glob('*.md'))]
# The component's inputs, documented in the same table as the parameters.
INPUTS = {
    keys.MODEL_KEY,
    keys.MODEL_BLESSING_KEY,
    keys.INFRA_BLESSING_KEY,
    keys.MODEL_EVALUATION_KEY,
    keys.EXAMPLES_KEY,
}
README_MAX_BYTES = 8 * 1024


def _read(path: Path) -> str:
    return path.read_text(encoding='utf-8')


def _section(text: str, heading: str) -> str:
    """The body of the `## heading` section, up to the next heading of level 1 or 2."""
    match = re.search(rf'^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)', text, re.M | re.S)
    assert match, f'no "## {heading}" section'
    return match.group(1)


def _first_code_block(text: str) -> str:
    match = re.search(r'^```[^\n]*\n(.*?)^```', text, re.M | re.S)
    assert match, 'no code block'
    return match.group(1)


def _without_code(text: str) -> str:
    text = re.sub(r'^```.*?^```', '', text, flags=re.M | re.S)
    return re.sub(r'`[^`\n]*`', '', text)


# The component reference table.


def _parameter_rows() -> dict[str, str]:
    """{documented name: default cell} of the table whose header starts with `| Parameter |`."""
    lines = _section(_read(DOCS / 'parameters.md'), 'Component reference').splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| Parameter |'))
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        name = re.fullmatch(r'`([A-Za-z_][A-Za-z0-9_]*)`', cells[0])
        assert name, f'first cell is not one backticked name: {line!r}'
        assert name.group(1) not in rows, f'{name.group(1)} documented twice'
        rows[name.group(1)] = cells[2]
    return rows


def test_parameter_table_lists_every_export_config_field_and_input():
    documented = set(_parameter_rows())
    fields = {f.name for f in dataclasses.fields(ExportConfig)}
    assert set(ExportConfig.property_types()) == fields
    expected = fields | INPUTS
    assert not expected - documented, f'missing from docs/parameters.md: {expected - documented}'
    assert not documented - expected, f'documented, not in the code: {documented - expected}'


def _parse_default(cell: str):
    text = cell.strip('`')
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # An unquoted string, e.g. `auto`.


def test_documented_defaults_are_the_defaults_of_export_config():
    rows = _parameter_rows()
    for field in dataclasses.fields(ExportConfig):
        cell = rows[field.name]
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            assert cell == 'required', f'{field.name}: documented default {cell}, but required'
            continue
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()
        )
        assert _parse_default(cell) == default, f'{field.name}: documented {cell}, is {default!r}'
    for name in INPUTS:
        # `model` too: FinalExporter takes infra_blessing alone (the stamped model).
        assert rows[name] == '`None`', f'input {name}: documented default {rows[name]}'


def _parameters_doc():
    spec = importlib.util.spec_from_file_location('parameters_doc', SCRIPTS / 'parameters_doc.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_table_is_the_one_the_script_writes():
    page = _read(DOCS / 'parameters.md')

    assert _parameters_doc().page_with_table(page) == page, (
        'docs/parameters.md: the parameter table is out of date; run `make docs`'
    )


def _plain(text: str) -> str:
    return ' '.join(text.replace('`', '').split())


def _string_constants(path: Path) -> list[str]:
    """Every string literal of a module (adjacent ones joined, as Python joins them)."""
    return [
        _plain(node.value)
        for node in ast.walk(ast.parse(_read(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_each_parameter_description_is_written_once_in_the_source():
    strings = {p: _string_constants(p) for p in sorted(PACKAGE.rglob('*.py'))}
    for param in ExportConfig.parameters():
        for sentence in re.split(r'(?<=\.) ', param.description()):
            if len(sentence) < 40:
                continue  # Short phrases may recur, e.g. "Local folders, gs:// and s3://."
            wanted = _plain(sentence)
            found = [(p, n) for p, texts in strings.items() for n in texts if wanted in n]
            assert len(found) <= 1, f'{param.name}: {sentence!r} is written {len(found)} times'
            assert all(p.name == 'config.py' for p, _ in found), (param.name, found)


# The CLI synopsis.


def _synopsis() -> dict[str, str]:
    """{command (or '' for the options before one): its synopsis text}."""
    block = _first_code_block(_section(_read(DOCS / 'parameters.md'), 'Command line'))
    commands: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        if line.startswith('final-exporter'):
            words = line.split()[1:]
            while words and words[0].startswith('['):
                commands[''] = commands.get('', '') + ' ' + words.pop(0)
            if not words or words[0].startswith('-'):
                commands[''] = commands.get('', '') + ' ' + ' '.join(words)
                current = None
                continue
            current = words[0]
            assert current not in commands, f'{current} documented twice'
            commands[current] = ' '.join(words[1:])
        elif line.strip():
            assert current, f'continuation line without a command: {line!r}'
            commands[current] += ' ' + line.strip()
    return commands


def _flags(text: str) -> set[str]:
    return set(re.findall(r'(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*)', text))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _check_against_parser(parser: argparse.ArgumentParser, text: str, where: str) -> None:
    documented = _flags(text)
    known: set[str] = set()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not action.option_strings:
            metavar = action.metavar or action.dest.upper()
            assert metavar in text, f'{where}: positional {metavar} is not documented'
            continue
        known.update(action.option_strings)
        assert documented & set(action.option_strings), (
            f'{where}: {"/".join(action.option_strings)} is not in the docs/parameters.md synopsis'
        )
        if action.choices:
            flag = max(action.option_strings, key=len)
            shown = re.search(rf'{re.escape(flag)} ([\w|]+)', text)
            assert shown, f'{where}: {flag} is documented without its choices'
            assert set(shown.group(1).split('|')) == set(action.choices), (
                f'{where}: {flag} documented as {shown.group(1)}, parser has {action.choices}'
            )
    assert not documented - known, f'{where}: documented, not in the parser: {documented - known}'


def test_cli_synopsis_has_exactly_the_flags_of_the_parser():
    parser = build_parser()
    synopsis = _synopsis()
    subcommands = _subcommands(parser)
    documented_commands = set(synopsis) - {''}
    assert documented_commands == set(subcommands), (
        f'commands: documented {sorted(documented_commands)}, parser {sorted(subcommands)}'
    )
    _check_against_parser(parser, synopsis.get('', ''), 'final-exporter')
    for name, sub in subcommands.items():
        _check_against_parser(sub, synopsis[name], f'final-exporter {name}')


def test_every_export_config_field_has_its_flag_in_the_synopsis():
    export = _flags(_synopsis()['export'])
    for name in [f.name for f in dataclasses.fields(ExportConfig)] + sorted(INPUTS):
        flag = '--' + name.replace('_', '-')
        assert flag in export or f'--no-{flag[2:]}' in export, f'{flag} not documented'


# Links, names and paths the pages mention.


def _slug(heading: str) -> str:
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return text.replace(' ', '-')


def _links(page: Path) -> list[str]:
    text = _without_code(_read(page))
    return re.findall(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text)


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_a_file_that_exists(page):
    for link in _links(page):
        if re.match(r'[a-z][a-z0-9+.-]*:', link) or link.startswith('#'):
            continue
        path, _, fragment = link.partition('#')
        target = (page.parent / path).resolve()
        assert target.exists(), f'{page.relative_to(REPO)}: link to {link}, which does not exist'
        if fragment and target.suffix == '.md':
            headings = re.findall(r'^#+ (.*)$', _read(target), re.M)
            assert fragment in {_slug(h) for h in headings}, f'{link}: no such heading'


def test_readme_is_a_landing_page():
    size = len((REPO / 'README.md').read_bytes())
    assert size < README_MAX_BYTES, f'README.md is {size} bytes; move reference text to docs/'
    readme = _read(REPO / 'README.md')
    assert _links(REPO / 'README.md'), 'no link found in README.md'
    for page in sorted(DOCS.glob('*.md')):
        assert f'docs/{page.name}' in readme, f'README.md does not link docs/{page.name}'


def _module_defines(path: Path, name: str) -> bool:
    tree = ast.parse(_read(path))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, ast.ImportFrom) and any(
            (a.asname or a.name) == name for a in node.names
        ):
            return True
    return False


def _resolves(dotted: str) -> bool:
    parts = dotted.replace(':', '.').split('.')[1:]
    for cut in range(len(parts), -1, -1):
        base = PACKAGE.joinpath(*parts[:cut])
        module = base / '__init__.py' if base.is_dir() else base.with_suffix('.py')
        if module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            if len(rest) == 1 and _module_defines(module, rest[0]):
                return True
            if _module_defines(module, '_LAZY') and len(rest) == 1:
                return rest[0] in _read(module)
            return False
    return False


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_module_class_and_file_exists(page):
    text = _read(page)
    for dotted in sorted(set(re.findall(r'\bfinal_exporter(?:[.:][A-Za-z_]\w*)+', text))):
        assert _resolves(dotted), f'{page.relative_to(REPO)} names {dotted}, which does not exist'
    for path in sorted(set(re.findall(r'\b((?:tests|pipelines|benchmarks)/[\w/]+\.py)\b', text))):
        assert (REPO / path).is_file(), f'{page.relative_to(REPO)} names {path}, which is missing'


def test_the_tests_the_guarantees_name_exist():
    names = re.findall(r'`(test_\w+?)(\*?)`', _read(DOCS / 'guarantees.md'))
    assert names
    defined = set()
    for path in (REPO / 'tests').glob('test_*.py'):
        defined.update(re.findall(r'^\s*def (test_\w+)', _read(path), re.M))
    for name, star in names:
        found = any(d.startswith(name) for d in defined) if star else name in defined
        assert found, f'docs/guarantees.md names {name}{star}, which no test defines'


def test_project_layout_lists_every_module():
    layout = _first_code_block(_read(DOCS / 'layout.md'))
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE)
        if rel.name == '__init__.py' and len(rel.parts) > 1:
            continue
        shown = '/'.join(rel.parts[1:]) if len(rel.parts) > 1 else rel.name
        assert re.search(rf'(?<![\w/]){re.escape(shown)}\b', layout), (
            f'docs/layout.md does not list {rel}'
        )
        if len(rel.parts) > 1:
            assert f'{rel.parts[0]}/' in layout, f'docs/layout.md does not list {rel.parts[0]}/'
