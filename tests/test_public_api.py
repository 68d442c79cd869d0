"""The public API: exactly these names, at these import paths (docs/api.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

import final_exporter

PUBLIC = {
    'final_exporter': {
        'Blessing',
        'BlessingMismatchError',
        'BreakingChangeError',
        'ExportConfig',
        'ExportRequest',
        'ExportResult',
        'FinalExporter',
        'FinalExporterError',
        'IntegrityError',
        'InvalidInputError',
        'VerifyReport',
        '__version__',
        'blessing_from_folder',
        'list_versions',
        'read_manifest',
        'run_export',
        'verify_export',
    },
    'final_exporter.kfp': {
        'VertexModel',
        'component_image',
        'final_export',
        'final_export_from_uri',
        'make_components',
    },
}


def test_the_package_names_exactly_the_public_api():
    # final_exporter.kfp is pinned where kfp is installed (test_kubeflow_native.py).
    assert set(final_exporter.__all__) == PUBLIC['final_exporter']
    for name in final_exporter.__all__:
        assert getattr(final_exporter, name) is not None, name


def test_every_public_name_is_in_the_api_page():
    page = (Path(__file__).resolve().parent.parent / 'docs' / 'api.md').read_text('utf-8')
    for module, names in PUBLIC.items():
        assert f'## `{module}`' in page
        for name in names:
            assert f'`{name}' in page, f'docs/api.md does not name {module}.{name}'


def test_the_lazy_tfx_component_is_the_one_the_pipeline_compiles():
    from final_exporter.adapters.tfx.component import FinalExporter

    assert final_exporter.FinalExporter is FinalExporter
    with pytest.raises(AttributeError, match='no attribute'):
        final_exporter.not_a_name  # noqa: B018


def test_names_that_left_the_public_api_still_resolve_with_a_warning_naming_their_path():
    from final_exporter.adapters.tfx.executor import Executor

    with pytest.warns(DeprecationWarning, match=r'final_exporter\.adapters\.tfx\.executor'):
        assert final_exporter.Executor is Executor
    assert 'Executor' not in final_exporter.__all__
