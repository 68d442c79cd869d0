"""The smoke test loads the source while the copy runs, tied to what is published.

When the export's SavedModel is a byte copy of a local source, the checks load
the source beside the copy (`core/serving_checks.py` `ChecksStep`), and every
source file must be the same file, unchanged, from before the copy's first read
until after the checks. Each test changes a real source file at one end of
that window through the `hook` of `stage_and_publish`: deterministic, no timing.
"""

from __future__ import annotations

import os
import shutil

import pytest

from final_exporter.common.errors import IntegrityError
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest
from final_exporter.core.plan import plan_export
from final_exporter.core.serving_checks import AFTER_CHECKS, BEFORE_COPY, ChecksStep
from final_exporter.core.staging import stage_and_publish, store_options
from final_exporter.storage.stores import client_for, resolve_model_base
from final_exporter.storage.verify import verify_export

from conftest import assert_exported_copy, assert_nothing_written

SHARD = os.path.join('variables', 'variables.data-00000-of-00001')


def request_for(model_uri: str, export_base: str, **config) -> ExportRequest:
    config.setdefault('name', 'penguin')
    config.setdefault('require_blessing', False)
    return ExportRequest(ExportConfig(export_base=export_base, **config), model_uri=model_uri)


def export_with_hook(request: ExportRequest, hook=None):
    """`run_export`'s stage-and-publish step with a hook into the source window."""
    plan = plan_export(request)
    base = resolve_model_base(request.config.model_base, store_options(request, None))
    return stage_and_publish(base, request, plan, None, lambda: 1_700_000_000.0, hook=hook)


def saved_model_dir(model_uri: str) -> str:
    return next(d for d, _, files in os.walk(model_uri) if 'saved_model.pb' in files)


def at(moment: str, change):
    """A hook that applies `change` once, at `moment`."""

    def hook(now: str) -> None:
        if now == moment:
            change()

    return hook


def touch(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def replace_with_same_bytes(path: str) -> None:
    shutil.copy2(path, f'{path}.new')  # copy2 keeps the times: only the inode differs
    os.replace(f'{path}.new', path)


def rewrite_in_place_keeping_mtime(path: str) -> None:
    """Same size, same modification time (set back): only the change time tells."""
    st = os.stat(path)
    with open(path, 'r+b') as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_byte_copy_of_a_local_model_is_smoke_tested_on_its_source(model_uri, export_base):
    request = request_for(model_uri, export_base)
    plan = plan_export(request)
    seen = []

    published = export_with_hook(request, hook=seen.append)

    assert ChecksStep(request.config, request, plan, export_base).loads_source
    assert seen == [BEFORE_COPY, AFTER_CHECKS]
    assert published.manifest['lineage']['smoke_test']['passed'] is True
    assert verify_export(published.export_dir, rehash=True).ok
    assert_exported_copy(published.export_dir, saved_model_dir(model_uri))


@pytest.mark.parametrize(
    'config',
    [
        {'as_text': True},  # TensorFlow writes the graph: the staged export is loaded
        {'copy_method': 'hardlink'},  # the export's files are the source's own inodes
        {'smoke_test': False},  # nothing loads
    ],
    ids=['as_text', 'hardlink', 'no-smoke-test'],
)
def test_other_exports_load_what_was_staged_or_nothing(model_uri, export_base, config):
    request = request_for(model_uri, export_base, **config)
    seen = []

    published = export_with_hook(request, hook=seen.append)

    assert not ChecksStep(request.config, request, plan_export(request), export_base).loads_source
    assert seen == []
    assert verify_export(published.export_dir, rehash=True).ok


def test_a_model_in_a_bucket_is_smoke_tested_on_the_bytes_downloaded_for_hashing(
    model_uri, gcs_base
):
    client = client_for(gcs_base)
    source = f'{gcs_base}-trainer/model/7'
    for folder, _, files in os.walk(model_uri):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), model_uri).replace(os.sep, '/')
            client.upload_file(os.path.join(folder, name), f'{source}/{rel}', None)
    request = request_for(source, gcs_base)
    seen = []

    published = export_with_hook(request, hook=seen.append)

    assert not ChecksStep(request.config, request, plan_export(request), '/x').loads_source
    assert seen == []
    assert published.manifest['lineage']['smoke_test']['passed'] is True


@pytest.mark.parametrize(
    'change',
    [touch, replace_with_same_bytes, rewrite_in_place_keeping_mtime],
    ids=['touched', 'replaced', 'rewritten-mtime-kept'],
)
@pytest.mark.parametrize('moment', [BEFORE_COPY, AFTER_CHECKS])
@pytest.mark.parametrize('rel', ['saved_model.pb', SHARD])
def test_a_source_file_changed_between_copy_start_and_load_end_fails_the_export(
    model_uri, export_base, change, moment, rel
):
    path = os.path.join(saved_model_dir(model_uri), rel)

    with pytest.raises(IntegrityError) as raised:
        export_with_hook(request_for(model_uri, export_base), hook=at(moment, lambda: change(path)))

    message = str(raised.value)
    assert repr(path) in message
    assert 'between the start of the copy and the end of the serving checks' in message
    assert_nothing_written(os.path.join(export_base, 'penguin'))


def test_a_load_that_fails_because_the_source_changed_reports_the_change(model_uri, export_base):
    """A shard cut short before the copy read it: the copy copies what is there, TensorFlow
    cannot load it, and the error says the source changed, not that the model is bad."""
    path = os.path.join(saved_model_dir(model_uri), SHARD)

    with pytest.raises(IntegrityError, match='size') as raised:
        export_with_hook(
            request_for(model_uri, export_base),
            hook=at(BEFORE_COPY, lambda: os.truncate(path, 16)),
        )

    assert repr(path) in str(raised.value)
    assert_nothing_written(os.path.join(export_base, 'penguin'))
