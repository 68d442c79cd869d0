"""Parameter validation, including property-based checks of path safety."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.config import (
    ExportConfig,
    validate_assets_extra_dest,
    validate_export_name,
)

from conftest import _TALLY


@given(st.text(min_size=1, max_size=80))
def test_any_accepted_destination_stays_inside_assets_extra(dest):
    _TALLY['fuzzed_paths'] += 1
    try:
        clean = validate_assets_extra_dest(dest)
    except InvalidInputError:
        return
    joined = posixpath.normpath(posixpath.join('/export/assets.extra', clean))
    assert joined.startswith('/export/assets.extra/')
    assert '\\' not in clean and '\x00' not in clean
    assert clean != keys.MANIFEST_FILENAME


@given(st.text(max_size=300))
def test_any_accepted_name_is_exactly_one_folder(name):
    _TALLY['fuzzed_names'] += 1
    try:
        validate_export_name(name)
    except InvalidInputError:
        return
    assert posixpath.basename(name) == name
    assert name not in ('', '.', '..')
    assert len(name.encode()) <= 255


@pytest.mark.parametrize('dest', ['a' * 256, 'x/' + 'é' * 128, 'tab\there', 'nul\x00'])
def test_long_or_odd_destinations_are_refused(dest):
    with pytest.raises(InvalidInputError):
        validate_assets_extra_dest(dest)


def test_unicode_destinations_are_accepted():
    assert validate_assets_extra_dest('labels/クラス.txt') == 'labels/クラス.txt'


def test_exec_properties_round_trip():
    config = ExportConfig(
        name='penguin',
        export_base='/srv/models',
        serving_fn='pkg.mod:fn',
        assets_extra={'b.txt': '/b', 'a/c.txt': '/c'},
        as_text=True,
        require_blessing=False,
    )

    assert ExportConfig.from_exec_properties(config.to_exec_properties()) == config


@pytest.mark.parametrize(('raw', 'expected'), [(1.0, True), (0.0, False), ('1', True), (0, False)])
def test_flags_accept_the_float_form_vertex_returns(raw, expected):
    props = {'name': 'm', 'export_base': '/b', 'as_text': raw}

    assert ExportConfig.from_exec_properties(props).as_text is expected


def test_bad_flag_value_names_the_parameter():
    with pytest.raises(InvalidInputError, match='as_text must be 0 or 1'):
        ExportConfig(name='m', export_base='/b', as_text=2)


def test_assets_extra_that_is_not_json_is_refused():
    props = {'name': 'm', 'export_base': '/b', 'assets_extra': '{not json'}

    with pytest.raises(InvalidInputError, match='assets_extra must be a JSON object'):
        ExportConfig.from_exec_properties(props)
