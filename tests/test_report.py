"""The Markdown report: complete, and nothing from artifacts renders as markup."""

from __future__ import annotations

from final_exporter.checks.signature_defs import TensorSpec
from final_exporter.checks.signature_diff import SignatureChange, SignatureDiff
from final_exporter.common import keys
from final_exporter.core.exporter import ExportResult
from final_exporter.core.report import escape, render_report
from final_exporter.lifecycle.serving_contract import ContractCheck, ServedVersion


def result(**lineage) -> ExportResult:
    base = {
        keys.EXPORT_NAME_KEY: 'penguin',
        keys.EXPORT_FORMAT_KEY: 'pb',
        keys.SIGNATURE_NAMES_KEY: ['serving_default'],
        keys.SOURCE_MODEL_URI_KEY: '/pipeline/Trainer/model/4',
    }
    return ExportResult(
        pushed=True,
        reason='blessed by model_blessing',
        model_base='/srv/models/penguin',
        lineage={**base, **lineage},
        version=1700000000,
        export_dir='/srv/models/penguin/1700000000',
        manifest={
            'files': [{'path': 'saved_model.pb', 'size': 10, 'sha256': 'ab' * 32}],
            'file_count': 1,
            'total_bytes': 10,
        },
        manifest_sha256='cd' * 32,
    )


def test_report_shows_decision_version_files_metrics_and_checks():
    text = render_report(
        result(
            **{
                keys.EVAL_RESULT_KEY: {'sparse_categorical_accuracy': 0.97},
                keys.SMOKE_TEST_LINEAGE_KEY: {
                    'signature_name': 'serving_default',
                    'batch_size': 16,
                    'inputs': 'examples',
                },
                keys.PARITY_LINEAGE_KEY: {
                    'ok': True,
                    'examples': 20,
                    'outputs': {'output_0': {'max_abs_diff': 'inf'}},
                },
                keys.WARMUP_LINEAGE_KEY: {'count': 25, 'source': 'written'},
                keys.RETENTION_LINEAGE_KEY: {'exports_to_keep': 2, 'removed_versions': [1, 2]},
                keys.ASSETS_EXTRA_FILES_KEY: ['labels/classes.txt'],
            }
        )
    )

    for expected in [
        '**Exported** version **1700000000**',
        'sparse\\_categorical\\_accuracy | 0\\.97',
        '| Smoke test | passed',
        '| Prediction parity | passed on 20 examples',
        '| Warmup requests | 25 (written) |',
        'removed 1, 2',
        'labels/classes\\.txt',
        'saved\\_model\\.pb | 10 |',
    ]:
        assert expected in text, expected


def test_injected_markup_is_escaped():
    hostile = '<img src=x onerror=alert(1)> **bold** [link](http://evil) | cell'
    text = render_report(
        result(**{keys.EVAL_RESULT_KEY: {hostile: 1.0}, keys.PIPELINE_NAME_KEY: hostile})
    )

    assert '<img' not in text
    assert '**bold**' not in text
    assert '[link](http' not in text
    assert escape(hostile) in text
    assert '\\|' in escape('a | b')


def signature_check(status: str, diff=None, reason=None):
    served = ServedVersion(1699999999, '/srv/models/penguin/1699999999', 'stable')
    return ContractCheck(status, '/srv/models/penguin', served, 'saved_model.pb', diff, reason)


def test_report_names_every_serving_signature_change_an_allowed_export_let_through():
    strings = TensorSpec('string', (-1,))
    diff = SignatureDiff(
        breaks=(
            SignatureChange('input_renamed', 'serving_default', 'input', 'examples', 'serialized',
                            old=strings, new=strings),
        ),
        compatible=(SignatureChange('signature_added', 'classify', new_method='tensorflow/serving/predict'),),
    )  # fmt: skip
    check = signature_check('breaking', diff)

    text = render_report(result(**check.to_lineage(allow_breaking_changes=True)))

    assert '## Serving signatures' in text
    assert '**Breaking** for the clients of version 1699999999 (labelled stable)' in text
    assert 'allow\\_breaking\\_changes' in text
    assert f'- {escape(diff.breaks[0].text())}' in text
    assert f'- {escape(diff.compatible[0].text())}' in text


def test_report_says_when_there_was_nothing_to_compare():
    check = ContractCheck('nothing_to_compare', '/srv/m', reason="no version under '/srv/m' yet")

    text = render_report(result(**check.to_lineage(allow_breaking_changes=False)))

    assert f'Nothing to compare: {escape(check.reason)}.' in text
    assert 'Breaking' not in text
