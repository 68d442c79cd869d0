"""`final-exporter`: the export, verify and list commands outside a pipeline.

The plain-copy export imports neither TensorFlow nor TFX; they are imported
only for `--serving-fn`, `--as-text` and `--model-evaluation`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from final_exporter.common import compat, keys
from final_exporter.common.errors import BreakingChangeError, FinalExporterError, InvalidInputError
from final_exporter.common.progress import TerminalLine, human_bytes
from final_exporter.core.blessing import blessing_from_folder, stamped_model_dir
from final_exporter.core.config import REGISTRY_PREFIX, ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.core.parameter import Parameter
from final_exporter.core.report import signer_text
from final_exporter.storage.stores import store_for
from final_exporter.storage.verify import read_manifest, verify_export
from final_exporter.version import __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def flag(key: str) -> str:
    """The CLI flag of a component parameter or input: `export_base` -> `--export-base`."""
    return '--' + key.replace('_', '-')


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: scripts and pipelines log it whole.
        self.exit(EXIT_BAD_INPUT, f'{self.prog}: error: {message} (see --help)\n')


def build_parser() -> argparse.ArgumentParser:
    """The `final-exporter` command line; `export`'s parameter options come from `ExportConfig`."""
    parser = _Parser(prog='final-exporter', description=__doc__.splitlines()[0])
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log each step')
    commands = parser.add_subparsers(dest='command', required=True, parser_class=_Parser)
    _add_export(commands)
    _add_maintenance(commands)
    return parser


# The inputs of the export, as artifact folders (or a SavedModel folder for --model).
_INPUT_HELP = {
    keys.MODEL_KEY: 'a TFX Model artifact folder (either layout) or a SavedModel folder; '
    "without it, the stamped model (with its warmup requests) in --infra-blessing's folder",
    keys.MODEL_BLESSING_KEY: 'Evaluator blessing artifact folder',
    keys.INFRA_BLESSING_KEY: 'InfraValidator blessing artifact folder',
    keys.EXAMPLES_KEY: 'an Examples artifact folder (Split-*/ TFRecords): inputs for the smoke '
    'test, parity and warmup requests',
    keys.MODEL_EVALUATION_KEY: 'Evaluator evaluation artifact folder; its overall metrics go '
    'into the lineage',
}


def _add_export(commands: Any) -> None:
    export = commands.add_parser(
        'export',
        help='export a blessed SavedModel to <export-base>/<name>/<version>/',
        description='Export a blessed SavedModel to <export-base>/<name>/<version>/. Each '
        'parameter is described in full in docs/parameters.md and help(final_exporter.ExportConfig).',
    )
    for key, text in _INPUT_HELP.items():
        export.add_argument(flag(key), metavar='PATH', help=text)
    params = ExportConfig.parameters()
    add_parameter_options(export, [p for p in params if not p.name.startswith(REGISTRY_PREFIX)])
    add_parameter_options(
        export.add_argument_group(
            'Vertex AI Model Registry', 'register the export (gs:// export base) as a model version'
        ),
        [p for p in params if p.name.startswith(REGISTRY_PREFIX)],
    )
    export.add_argument(
        '--beam-pipeline-args',
        metavar='ARGS',
        type=shlex.split,
        default=[],
        help='copy with an Apache Beam pipeline with these options, e.g. '
        '"--runner=DirectRunner --direct_running_mode=multi_processing"',
    )
    export.add_argument(
        '--idempotency-key',
        metavar='KEY',
        help='identifies this export job: a re-run with the same key that finds its own '
        'complete export reports it instead of publishing another version',
    )
    export.add_argument('--workers', type=int, default=None, help='copy threads')
    export.add_argument('--json', action='store_true', help='print the result as one JSON object')
    export.set_defaults(func=_export)


def add_parameter_options(parser: Any, params: Iterable[Parameter]) -> None:
    """Adds each parameter's option, as its `ExportConfig` field declares it, to `parser`.

    Args:
        parser: An `argparse.ArgumentParser` or argument group.
        params: Parameters from `ExportConfig.parameters()`.
    """
    for param in params:
        parser.add_argument(flag(param.name), **_option(param))


def parameter_values(args: argparse.Namespace, params: Iterable[Parameter]) -> dict[str, Any]:
    """The parsed values of `add_parameter_options`, as `ExportConfig` takes them.

    Raises:
        InvalidInputError: for a repeated key of a `KEY=VALUE` option.
    """
    return {
        p.name: _mapping(p, getattr(args, p.name)) if p.is_mapping else getattr(args, p.name)
        for p in params
    }


def _option(param: Parameter) -> dict[str, Any]:
    """The `add_argument` keywords of a parameter: its form on the command line."""
    # argparse formats help with %-style: a literal % must be doubled.
    option: dict[str, Any] = {'help': param.summary.replace('`', '').replace('%', '%%')}
    if param.required:
        option['required'] = True
    else:
        option['default'] = param.default
    if param.metavar:
        option['metavar'] = param.metavar
    if param.choices:
        option['choices'] = param.choices
    if param.switch:
        option['action'] = 'store_true'
    elif param.is_flag:
        option['action'] = argparse.BooleanOptionalAction
    elif param.is_list or param.is_mapping:
        option.update(nargs='+', action='extend', default=[])
        option['help'] = option['help'].rstrip('.') + ' (repeatable).'
        if param.is_mapping:
            option['type'] = functools.partial(_pair, metavar=param.metavar)
    elif param.number_type:
        option['type'] = param.number_type
    return option


def _pair(text: str, *, metavar: str) -> tuple[str, str]:
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'expected {metavar}, got {text!r}')
    return key, value


def _add_maintenance(commands: Any) -> None:
    """verify, label, rollback and list: the commands on exports already published."""

    def command(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text)
        parser.set_defaults(func=func)
        return parser

    verify = command(
        'verify', 'check an export against its manifest, or against its signature', _verify
    )
    verify.add_argument('export_dir', metavar='EXPORT_DIR')
    key_help = 'a path, gs:// or s3:// object, or env:NAME'
    verify.add_argument(
        '--public-key',
        metavar='PEM',
        default='',
        help=f'check the signature of a key-signed export with this public key ({key_help})',
    )
    verify.add_argument(
        '--certificate-chain',
        metavar='PEM',
        default='',
        help='check the signature of a certificate-signed export up to these trusted '
        f'certificates: the root, and intermediates the signature lacks ({key_help})',
    )
    label = command(
        'label', 'point a TensorFlow Serving version label at a version (models.config)', _label
    )
    label.add_argument('model_base', metavar='BASE/NAME')
    label.add_argument('version', type=int, metavar='VERSION')
    label.add_argument('label', metavar='LABEL', help='e.g. stable or canary')
    label.add_argument(
        '--force',
        action='store_true',
        help='move the label even to a version the server was not yet asked to load',
    )
    rollback = command(
        'rollback', 'move a label (default: stable) to the previous verified version', _rollback
    )
    rollback.add_argument('model_base', metavar='BASE/NAME')
    rollback.add_argument('--label', default='stable')
    rollback.add_argument('--force', action='store_true')
    listing = command('list', 'list the versions under BASE/NAME, newest first', _list)
    listing.add_argument('model_base', metavar='BASE/NAME')
    for parser in (verify, label, rollback, listing):
        parser.add_argument('--json', action='store_true')


def _export(args: argparse.Namespace) -> int:
    config = ExportConfig(**parameter_values(args, ExportConfig.parameters()))
    blessings = [
        blessing_from_folder(kind, path)
        for kind, path in (
            (keys.MODEL_BLESSING_KEY, args.model_blessing),
            (keys.INFRA_BLESSING_KEY, args.infra_blessing),
        )
        if path
    ]
    extra: dict[str, Any] = {}
    if args.model_evaluation:
        from final_exporter.core.evaluation import overall_metrics

        extra[keys.MODEL_EVALUATION_URI_KEY] = args.model_evaluation
        extra[keys.EVAL_RESULT_KEY] = overall_metrics(args.model_evaluation)
    model_uri = args.model
    if not model_uri:
        if not args.infra_blessing:
            raise InvalidInputError(
                f'{flag(keys.MODEL_KEY)} is required, unless {flag(keys.INFRA_BLESSING_KEY)} '
                'names an InfraValidator blessing holding a stamped model (make_warmup=True)'
            )
        model_uri = stamped_model_dir(args.infra_blessing, None)
    request = ExportRequest(
        config=config,
        model_uri=model_uri,
        blessings=blessings,
        extra_lineage=extra,
        beam_pipeline_args=args.beam_pipeline_args,
        examples_uri=args.examples,
        idempotency_key=args.idempotency_key,
    )
    # A progress line only for a person watching a terminal: never in --json output,
    # never in a log file or a pipe.
    line = None if args.json else args.terminal
    try:
        result = run_export(request, report_progress=line, workers=args.workers)
    except BreakingChangeError as e:
        if args.json:  # The refused diff, for the caller that reads the outcome.
            print(
                json.dumps({'pushed': False, 'error': str(e), 'lineage': e.lineage}, sort_keys=True)
            )
        raise
    finally:
        if args.terminal is not None:
            args.terminal.close()
            args.terminal.stream.close()
    if args.json:
        print(json.dumps(result.summary(), sort_keys=True))
    else:
        print(_describe(result))
    return EXIT_OK


def _mapping(param: Parameter, pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidInputError(f'{flag(param.name)} names {key!r} twice')
        result[key] = value
    return result


def _describe(result: ExportResult) -> str:
    if not result.pushed:
        return f'not exported: {result.reason}'
    text = (
        f'exported version {result.version} to {result.export_dir} '
        f'({result.file_count} files, {human_bytes(result.total_bytes)}, '
        f'manifest sha256 {result.manifest_sha256})'
    )
    signing = result.lineage.get(keys.SIGNING_LINEAGE_KEY)
    if signing:
        text += f'; signed by {signer_text(signing)}'
    registered = result.lineage.get(keys.VERTEX_MODEL_RESOURCE_KEY)
    if registered:
        text += (
            f'; registered as {registered}@{result.lineage[keys.VERTEX_MODEL_VERSION_ID_KEY]} '
            f'(aliases: {", ".join(result.lineage[keys.VERTEX_MODEL_VERSION_ALIASES_KEY])}): '
            f'{result.lineage[keys.VERTEX_CONSOLE_URL_KEY]}'
        )
    return text


def _verify(args: argparse.Namespace) -> int:
    if args.public_key or args.certificate_chain:
        return _verify_signature(args)
    report = verify_export(args.export_dir)
    as_json = {
        'ok': report.ok,
        'export_dir': report.export_dir,
        'manifest_sha256': report.manifest_sha256,
        'missing': report.missing,
        'extra': report.extra,
        'changed': report.changed,
        'files_checked': report.files_checked,
    }
    return _print_check(args, report, as_json, 'manifest', f'sha256 {report.manifest_sha256}')


def _verify_signature(args: argparse.Namespace) -> int:
    from final_exporter.storage.signature_verify import verify_signature

    report = verify_signature(
        args.export_dir, public_key=args.public_key, certificate_chain=args.certificate_chain
    )
    certificate = report.signer.get('certificate')
    signer = f'certificate {certificate["subject"]}' if certificate else 'key'
    detail = f'{signer}, {report.signer.get("key_fingerprint")}'
    return _print_check(args, report, report.as_dict(), 'signature', detail)


def _print_check(
    args: argparse.Namespace, report: Any, as_json: dict[str, Any], what: str, detail: str
) -> int:
    """Prints a `verify` outcome (JSON, one ok line, or the problems); its exit code."""
    if args.json:
        print(json.dumps(as_json, sort_keys=True))
    elif report.ok:
        print(
            f'ok: {report.files_checked} files, {human_bytes(report.bytes_checked)} match '
            f'the {what} ({detail})'
        )
    else:
        print(f'{report.export_dir} does not match its {what}:')
        for line in report.problems():
            print(f'  {line}')
    return EXIT_OK if report.ok else EXIT_FAILED


def _label(args: argparse.Namespace) -> int:
    from final_exporter.lifecycle import model_config

    result = model_config.set_label(args.model_base, args.version, args.label, force=args.force)
    return _print_label(result, args.json)


def _rollback(args: argparse.Namespace) -> int:
    from final_exporter.lifecycle import model_config

    result = model_config.rollback(args.model_base, args.label, force=args.force)
    return _print_label(result, args.json)


def _print_label(result, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_lineage()[keys.LABELS_LINEAGE_KEY], sort_keys=True))
    elif result.applied:
        print(
            f'{result.label} -> {result.version} (was {result.previous_version}) '
            f'in {result.config_path}'
        )
    else:
        print(
            f'{result.label} stays at {result.previous_version}: version {result.version} was '
            f'added to the versions the server loads ({result.config_path}); run the command '
            'again once the server has loaded it, or pass --force'
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store = store_for(args.model_base)
    if not store.children(args.model_base):
        raise InvalidInputError(
            f'{args.model_base!r} is not a folder or bucket prefix with versions in it'
        )
    rows = []
    for version in reversed(store.list_versions(args.model_base)):
        export_dir = store.join(args.model_base, str(version))
        try:
            manifest, digest = read_manifest(export_dir, store=store)
        except FinalExporterError as e:
            rows.append({'version': version, 'export_dir': export_dir, 'error': str(e)})
            continue
        rows.append(
            {
                'version': version,
                'export_dir': export_dir,
                'manifest_sha256': digest,
                'file_count': manifest.get('file_count'),
                'total_bytes': manifest.get('total_bytes'),
                'lineage': manifest.get('lineage', {}),
            }
        )
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return EXIT_OK
    if not rows:
        print(f'no versions under {args.model_base}')
    for row in rows:
        if 'error' in row:
            print(f'{row["version"]}  (no manifest: {row["error"]})')
            continue
        lin = row['lineage']
        print(
            f'{row["version"]}  {lin.get(keys.EXPORTED_AT_KEY, "?")}  '
            f'{human_bytes(row["total_bytes"] or 0)}  {row["file_count"]} files  '
            f'from {lin.get(keys.SOURCE_MODEL_URI_KEY, "?")}'
            + (
                f'  run {lin[keys.PIPELINE_RUN_ID_KEY]}'
                if lin.get(keys.PIPELINE_RUN_ID_KEY)
                else ''
            )
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (0 ok or not blessed, 1 failed, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # None of the dependencies' warnings about the interpreter (google-api-core's
        # Python EOL notice), and no TensorFlow C++ log lines (compat.py).
        warnings.filterwarnings('ignore', category=FutureWarning)
        warnings.filterwarnings('ignore', category=DeprecationWarning)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format='%(levelname)s %(name)s: %(message)s',
    )
    # Taken before stderr is routed through the log filter, which is no terminal.
    args.terminal = TerminalLine.for_stderr() if args.func is _export else None
    with contextlib.nullcontext() if args.verbose else compat.tensorflow_logs_dropped():
        try:
            return args.func(args)
        except InvalidInputError as e:
            print(f'{parser.prog}: error: {e}', file=sys.stderr)
            return EXIT_BAD_INPUT
        except (FinalExporterError, OSError) as e:
            print(f'{parser.prog}: failed: {e}', file=sys.stderr)
            return EXIT_FAILED


# The command's process makes one export, then ends: its cyclic garbage collector looks at
# young objects once per this many allocations, not Python's 700. TensorFlow's import and the
# load of the 4 GiB benchmark model (large_model_benchmark.py) took 1068 collector passes,
# 486 ms, at 700; 7 passes, 139-146 ms, at 100,000; the same peak RSS, 4795 MiB. A copy of
# 20,000 files: 145 passes, 21-34 ms, at 700; 1 at 50,000.
GC_YOUNG_THRESHOLD = 100_000


def run() -> NoReturn:
    """The `final-exporter` command: `main()`, then the process exits with its code.

    The command's process collects garbage less often (`GC_YOUNG_THRESHOLD`).

    The process ends without the interpreter's teardown: by then the export is
    published and on disk (or nothing is), the stderr filter (when on) has passed
    on every line, and what remains buffered is flushed here. The teardown only
    unwinds what the export loaded, on the export's clock: TensorFlow's runtime
    for about 0.9 s after loading a 4 GiB model, `cryptography`'s and OpenSSL's
    for about 40 ms after signing, the package's own for about 10 ms
    (docs/measured.md). `main()` is the entry point for callers that go on.
    """
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream
            stream.flush()
    os._exit(code)


if __name__ == '__main__':
    run()
