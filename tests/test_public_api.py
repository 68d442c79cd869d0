"""The public API: exactly these names, at these import paths (docs/api.md)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import final_exporter

PUBLIC = {
    'final_exporter': {
        'Blessing',
        'BlessingMismatchError',
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


@pytest.mark.parametrize('module', sorted(PUBLIC))
def test_public_modules_name_exactly_the_public_api(module):
    imported = importlib.import_module(module)

    assert set(imported.__all__) == PUBLIC[module]
    for name in imported.__all__:
        assert getattr(imported, name) is not None, f'{module}.{name}'


def test_every_public_name_is_in_the_api_page():
    page = (Path(__file__).resolve().parent.parent / 'docs' / 'api.md').read_text('utf-8')
    for module, names in PUBLIC.items():
        assert f'## `{module}`' in page
        for name in names:
            assert f'`{name}' in page, f'docs/api.md does not name {module}.{name}'


def test_the_internal_kfp_module_is_the_same_objects_for_compiled_pipelines():
    from final_exporter import kfp
    from final_exporter.adapters import kfp as adapters_kfp

    for name in kfp.__all__:
        assert getattr(kfp, name) is getattr(adapters_kfp, name), name
    # What a compiled component runs in its container (kfp writes these imports).
    assert callable(adapters_kfp.export_for_kfp)
    assert adapters_kfp.VertexModel.__module__ == 'final_exporter.adapters.kfp'


def test_the_lazy_tfx_component_is_the_one_the_pipeline_compiles():
    from final_exporter.adapters.tfx.component import FinalExporter

    assert final_exporter.FinalExporter is FinalExporter
    with pytest.raises(AttributeError, match='no attribute'):
        final_exporter.Executor  # noqa: B018  (internal: final_exporter.adapters.tfx.executor)
