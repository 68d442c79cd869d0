"""The human-readable Markdown report of one export (PushedModel folder, Kubeflow UI)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from final_exporter.common import keys
from final_exporter.common.progress import human_bytes
from final_exporter.core.request import ExportResult
from final_exporter.storage.manifest import CHUNKED_SHA256, entry_digest

_MARKDOWN_SPECIAL = re.compile(r'([\\`*_{}\[\]()#+\-.!|>~])')


def escape(text: Any) -> str:
    """Escapes text from artifacts and metrics so it renders as text, never as markup."""
    text = str(text).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
    text = text.replace('\r', ' ').replace('\n', ' ')
    return _MARKDOWN_SPECIAL.sub(r'\\\1', text)


def render_report(result: ExportResult) -> str:
    lin: Mapping[str, Any] = result.lineage
    lines = [f'# Final export of {escape(lin.get(keys.EXPORT_NAME_KEY, "?"))}', '']
    if result.pushed:
        lines += [
            f'**Exported** version **{result.version}** ({escape(result.reason)}).',
            '',
            '| | |',
            '|---|---|',
            f'| Destination | {escape(result.export_dir)} |',
            f'| Version | {result.version} |',
            f'| Format | {escape(lin.get(keys.EXPORT_FORMAT_KEY))} |',
            f'| Files | {result.file_count} ({escape(human_bytes(result.total_bytes))}) |',
            f'| Manifest SHA\\-256 | `{result.manifest_sha256}` |',
        ]
    else:
        lines += [f'**Not exported**: {escape(result.reason)}.', '', '| | |', '|---|---|']
    lines += [
        f'| Signatures | {", ".join(escape(s) for s in lin.get(keys.SIGNATURE_NAMES_KEY, [])) or "none"} |',
        f'| Source model | {escape(lin.get(keys.SOURCE_MODEL_URI_KEY))} |',
    ]
    for label, key in (
        ('Model blessing', keys.MODEL_BLESSING_URI_KEY),
        ('Infra blessing', keys.INFRA_BLESSING_URI_KEY),
        ('Pipeline', keys.PIPELINE_NAME_KEY),
        ('Run', keys.PIPELINE_RUN_ID_KEY),
        ('serving_fn', keys.SERVING_FN_LINEAGE_KEY),
    ):
        if lin.get(key):
            lines.append(f'| {escape(label)} | {escape(lin[key])} |')
    lines += _signed_by(lin)
    lines += _release_checks(lin)
    lines += _signature_diff_section(lin)
    assets = lin.get(keys.ASSETS_EXTRA_FILES_KEY) or []
    if assets:
        lines += ['', '## assets.extra', ''] + [f'- {escape(a)}' for a in assets]
    metrics = lin.get(keys.EVAL_RESULT_KEY) or {}
    if metrics:
        lines += ['', '## Evaluation (overall slice)', '', '| Metric | Value |', '|---|---|']
        lines += [f'| {escape(k)} | {escape(_fmt(v))} |' for k, v in sorted(metrics.items())]
    if result.manifest:
        lines += ['', '## Files', '', '| File | Bytes | SHA\\-256 |', '|---|---:|---|']
        lines += [
            f'| {escape(f["path"])} | {f["size"]} | `{digest[:16]}…`{" (of chunks)" * chunked} |'
            for f in result.manifest['files']
            for kind, digest in [entry_digest(f)]
            for chunked in [kind == CHUNKED_SHA256]
        ]
    return '\n'.join(lines) + '\n'


def _release_checks(lin: Mapping[str, Any]) -> list[str]:
    rows = []
    smoke = lin.get(keys.SMOKE_TEST_LINEAGE_KEY)
    if smoke:
        rows.append(
            f'| Smoke test | passed: {escape(smoke.get("signature_name"))} answered '
            f'{smoke.get("batch_size")} {escape(smoke.get("inputs"))} inputs |'
        )
    parity = lin.get(keys.PARITY_LINEAGE_KEY)
    if parity:
        diffs = [float(o.get('max_abs_diff', 0)) for o in parity.get('outputs', {}).values()]
        worst = max(diffs, default=0.0)
        rows.append(
            f'| Prediction parity | {"passed" if parity.get("ok") else "FAILED"} on '
            f'{parity.get("examples")} examples, max abs diff {escape(_fmt(worst))} |'
        )
    warmup = lin.get(keys.WARMUP_LINEAGE_KEY)
    if warmup:
        rows.append(f'| Warmup requests | {warmup.get("count")} ({escape(warmup.get("source"))}) |')
    labels = lin.get(keys.LABELS_LINEAGE_KEY)
    if labels:
        shown = ', '.join(f'{escape(k)} → {v}' for k, v in sorted(labels.get('labels', {}).items()))
        rows.append(f'| Version labels | {shown} |')
    retention = lin.get(keys.RETENTION_LINEAGE_KEY)
    if retention:
        removed = ', '.join(str(v) for v in retention.get('removed_versions', [])) or 'none'
        rows.append(f'| Retention | keep {retention.get("exports_to_keep")}; removed {removed} |')
    if lin.get(keys.VERTEX_MODEL_RESOURCE_KEY):
        # The URL is built by lifecycle/vertex_registry.py from validated resource names.
        aliases = ', '.join(escape(a) for a in lin.get(keys.VERTEX_MODEL_VERSION_ALIASES_KEY, []))
        rows.append(
            f'| Vertex AI Model Registry | [{escape(lin[keys.VERTEX_MODEL_RESOURCE_KEY])} version '
            f'{escape(lin.get(keys.VERTEX_MODEL_VERSION_ID_KEY))}]'
            f'({lin.get(keys.VERTEX_CONSOLE_URL_KEY)}); aliases: {aliases or "none"} |'
        )
    if lin.get(keys.POST_PUBLISH_ERROR_KEY):
        rows.append(f'| After publish | **failed**: {escape(lin[keys.POST_PUBLISH_ERROR_KEY])} |')
    return rows


def signer_text(signing: Mapping[str, Any]) -> str:
    """Who signed, in one line: the certificate (subject, issuer) or the key; its fingerprint."""
    certificate = signing.get('certificate')
    if certificate:
        who = f'certificate {certificate.get("subject")} (issued by {certificate.get("issuer")})'
    else:
        who = 'key'
    return f'{who}, key fingerprint {signing.get("key_fingerprint")}'


def _signed_by(lin: Mapping[str, Any]) -> list[str]:
    """The "Signed by" row of a signed export (OpenSSF Model Signing, docs/signing.md)."""
    signing = lin.get(keys.SIGNING_LINEAGE_KEY)
    if not signing:
        return []
    return [
        f'| Signed by | {escape(signer_text(signing))}; signature '
        f'{escape(signing.get("signature"))} |'
    ]


def _signature_diff_section(lin: Mapping[str, Any]) -> list[str]:
    """The serving-signature guard's outcome (lifecycle/serving_contract.py), with every change."""
    record = lin.get(keys.SIGNATURE_DIFF_LINEAGE_KEY)
    if not record:
        return []
    served = record.get('compared_with') or {}
    label = served.get('label')
    against = f'version {served.get("version")} ' + (
        f'(labelled {escape(label)})' if label else '(the newest)'
    )
    status = record.get('status')
    summary = {
        'nothing_to_compare': f'Nothing to compare: {escape(record.get("reason"))}.',
        'not_compared': f'Not compared with {against}: {escape(record.get("reason"))}.',
        'unchanged': f'Unchanged from {against}.',
        'compatible': f'Compatible with {against}.',
        'breaking': f'**Breaking** for the clients of {against}; exported with '
        'allow\\_breaking\\_changes.',
    }.get(status, escape(status))
    lines = ['', '## Serving signatures', '', summary]
    for title, changes in (
        ('Breaking changes', record.get('breaks') or []),
        ('Compatible changes', record.get('compatible_changes') or []),
    ):
        if changes:
            lines += ['', f'{title}:', ''] + [f'- {escape(c.get("text"))}' for c in changes]
    return lines


def _fmt(value: Any) -> str:
    return f'{value:.6g}' if isinstance(value, float) else json.dumps(value)
