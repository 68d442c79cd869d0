"""The serving-signature guard inside real exports (run_export and the CLI): a break fails
the export with nothing published; compatible changes go through; every outcome is recorded.

The served versions are published by real exports; the new ones are the penguin model
copied again or re-exported by real `serving_fn`s (test_serving_contract.py has the
module-level cases).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import BreakingChangeError
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, run_export
from final_exporter.core.report import render_report
from final_exporter.storage.objectstore import split_uri
from final_exporter.storage.stores import client_for, list_versions, override_client
from final_exporter.storage.verify import read_manifest
from test_serving_contract import DEMO_SERVING_FN, FLOAT64_SCORES, RENAMED_INPUT, CountingClient

from conftest import KERAS_MODEL, assert_no_staging_left, published_versions

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


def export(model_uri, export_base, **config):
    return run_export(
        ExportRequest(
            config=ExportConfig(
                name='penguin', export_base=export_base, require_blessing=False, **config
            ),
            model_uri=model_uri,
        )
    )


@pytest.fixture
def serving_fns(tmp_path) -> dict[str, str]:
    """`serving_fn` import paths: the demo's (adds `classify`), a renamed input, float64 scores."""
    (tmp_path / 'renamed.py').write_text(RENAMED_INPUT)
    (tmp_path / 'float64.py').write_text(FLOAT64_SCORES)
    return {
        'classify': f'{DEMO_SERVING_FN}:serving_fn',
        'renamed': f'{tmp_path / "renamed.py"}:serving_fn',
        'float64': f'{tmp_path / "float64.py"}:serving_fn',
    }


def test_first_copy_has_nothing_to_compare_and_the_next_is_unchanged(export_base):
    first = export(KERAS_MODEL, export_base, smoke_test=False)
    second = export(KERAS_MODEL, export_base, smoke_test=False)

    assert first.lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]['status'] == 'nothing_to_compare'
    record = second.lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['status'] == 'unchanged'
    assert record['compared_with']['version'] == first.version
    sealed, _ = read_manifest(second.export_dir)
    assert sealed['lineage'][keys.SIGNATURE_DIFF_LINEAGE_KEY] == record


def test_the_demo_serving_fn_reexport_adding_classify_is_compatible(export_base, serving_fns):
    served = export(KERAS_MODEL, export_base, smoke_test=False)

    result = export(KERAS_MODEL, export_base, serving_fn=serving_fns['classify'])

    record = result.lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['status'] == 'compatible'
    assert record['compared_with']['version'] == served.version
    assert [(c['kind'], c['signature']) for c in record['compatible_changes']] == [
        ('signature_added', 'classify')
    ]
    assert keys.SIGNATURE_BREAKS_LINEAGE_KEY not in result.lineage
    report = render_report(result)
    assert '## Serving signatures' in report and 'Compatible with version' in report


def test_a_breaking_reexport_fails_and_publishes_nothing(export_base, serving_fns):
    served = export(KERAS_MODEL, export_base, smoke_test=False)

    with pytest.raises(BreakingChangeError, match="input 'examples' renamed to 'serialized'"):
        export(KERAS_MODEL, export_base, serving_fn=serving_fns['renamed'], smoke_test=False)

    assert published_versions(served.model_base) == [str(served.version)]
    assert_no_staging_left(served.model_base)


def test_a_changed_dtype_fails_the_export_naming_both_dtypes(export_base, serving_fns):
    served = export(KERAS_MODEL, export_base, smoke_test=False)

    with pytest.raises(BreakingChangeError) as failed:
        export(KERAS_MODEL, export_base, serving_fn=serving_fns['float64'], smoke_test=False)

    assert "output 'output_0' dtype changed float32 -> float64" in str(failed.value)
    assert published_versions(served.model_base) == [str(served.version)]


def test_an_allowed_breaking_reexport_is_published_with_its_breaks(export_base, serving_fns):
    export(KERAS_MODEL, export_base, smoke_test=False)

    result = export(
        KERAS_MODEL,
        export_base,
        serving_fn=serving_fns['renamed'],
        smoke_test=False,
        allow_breaking_changes=True,
    )

    assert result.pushed
    breaks = result.lineage[keys.SIGNATURE_BREAKS_LINEAGE_KEY]
    assert [b['kind'] for b in breaks] == ['input_renamed']
    assert keys.SIGNATURE_BREAKS_LINEAGE_KEY in result.properties()
    assert '**Breaking** for the clients of version' in render_report(result)
    assert os.path.isdir(result.export_dir)


def test_the_cli_refuses_a_break_with_exit_2_and_prints_the_refused_diff(export_base, serving_fns):
    served = export(KERAS_MODEL, export_base, smoke_test=False)
    args = ['export', '--model', KERAS_MODEL, '--export-base', export_base, '--name', 'penguin',
            '--no-require-blessing', '--no-smoke-test',
            '--serving-fn', serving_fns['renamed']]  # fmt: skip

    refused = subprocess.run([CLI, *args, '--json'], capture_output=True, text=True, timeout=600)
    allowed = subprocess.run(
        [CLI, *args, '--json', '--allow-breaking-changes'],
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "input 'examples' renamed to 'serialized'" in refused.stderr
    out = json.loads(refused.stdout)
    assert out['pushed'] is False and "renamed to 'serialized'" in out['error']
    record = out['lineage'][keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['status'] == 'breaking' and record['allow_breaking_changes'] is False
    assert out['lineage'][keys.SIGNATURE_BREAKS_LINEAGE_KEY] == record['breaks']
    assert allowed.returncode == 0, allowed.stderr
    pushed = json.loads(allowed.stdout)
    assert pushed['lineage'][keys.SIGNATURE_DIFF_LINEAGE_KEY]['allow_breaking_changes'] is True
    assert published_versions(served.model_base) == sorted(
        [str(served.version), str(pushed['version'])]
    )


def test_on_buckets_the_guard_reads_only_the_served_graph_file(bucket_base, serving_fns):
    base, _ = bucket_base
    first = export(KERAS_MODEL, base, smoke_test=False)
    assert first.lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]['status'] == 'nothing_to_compare'
    scheme, _, _ = split_uri(base)
    counting = CountingClient(client_for(base))

    with override_client(scheme, counting):
        result = export(KERAS_MODEL, base, serving_fn=serving_fns['classify'], smoke_test=False)
        with pytest.raises(BreakingChangeError):
            export(KERAS_MODEL, base, serving_fn=serving_fns['renamed'], smoke_test=False)

    assert result.lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]['status'] == 'compatible'
    in_served = {u for u in counting.read if u.startswith(first.export_dir + '/')}
    assert in_served == {f'{first.export_dir}/{keys.SAVED_MODEL_PB}'}  # Never its variables.
    assert list_versions(first.model_base) == [first.version, result.version]
