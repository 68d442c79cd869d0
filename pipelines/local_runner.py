"""Runs the penguin demo pipeline locally and describes the exported model.

Usage: python -m pipelines.local_runner [--output-dir DIR]
"""

import argparse
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

from absl import logging

from pipelines import penguin_pipeline

PIPELINE_NAME = 'penguin_final_exporter'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT_DIR = os.path.join(REPO_ROOT, 'demo_output')
_DESCRIPTION_KEYS = ('artifact_id', 'artifact_uri', 'producer', 'lineage')


def tfx_penguin_data_root() -> str:
    """Returns the penguin TFRecords directory shipped inside the installed tfx package.

    Raises:
        FileNotFoundError: If tfx is not installed or does not ship the penguin test data.
    """
    spec = importlib.util.find_spec('tfx')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('tfx is not installed')
    for location in spec.submodule_search_locations:
        data_root = os.path.join(location, 'components', 'testdata', 'penguin', 'data')
        if os.path.isdir(os.path.join(data_root, 'Split-train')):
            return data_root
    raise FileNotFoundError('the installed tfx package ships no penguin test data')


def _value_to_python(value: Any) -> Any:
    """Converts an MLMD `Value` proto to a plain Python value."""
    kind = value.WhichOneof('value')
    if kind == 'struct_value':
        from google.protobuf import json_format

        return json_format.MessageToDict(value.struct_value)
    if kind == 'proto_value':
        return str(value.proto_value)
    return getattr(value, kind) if kind else None


def describe_latest_push(metadata_path: str) -> dict[str, Any]:
    """Describes the latest live `PushedModel` artifact in a SQLite ML Metadata store.

    Args:
        metadata_path: Path of the SQLite MLMD file.

    Returns:
        An empty dict if the store does not exist or holds no live PushedModel. Otherwise the
        artifact's custom properties (e.g. `pushed`, `pushed_destination`, `pushed_version`) as
        plain Python values, plus `artifact_id`, `artifact_uri`, `producer` (the type of the
        execution that wrote it) and `lineage`, which maps each input key of that execution to
        the URIs of its input artifacts.
    """
    if not os.path.isfile(metadata_path):
        return {}
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    artifacts = [
        a
        for a in store.get_artifacts_by_type('PushedModel')
        if a.state == metadata_store_pb2.Artifact.LIVE
    ]
    if not artifacts:
        return {}
    artifact = max(artifacts, key=lambda a: (a.create_time_since_epoch, a.id))

    description: dict[str, Any] = {
        'artifact_id': artifact.id,
        'artifact_uri': artifact.uri,
        'producer': None,
        'lineage': {},
    }
    output_events = [
        e
        for e in store.get_events_by_artifact_ids([artifact.id])
        if e.type == metadata_store_pb2.Event.OUTPUT
    ]
    if output_events:
        execution_id = output_events[0].execution_id
        [execution] = store.get_executions_by_id([execution_id])
        [execution_type] = store.get_execution_types_by_id([execution.type_id])
        description['producer'] = execution_type.name
        input_events = [
            e
            for e in store.get_events_by_execution_ids([execution_id])
            if e.type == metadata_store_pb2.Event.INPUT
        ]
        uris = {
            a.id: a.uri for a in store.get_artifacts_by_id([e.artifact_id for e in input_events])
        }
        lineage: dict[str, list[str]] = {}
        for event in input_events:
            key = event.path.steps[0].key if event.path.steps else ''
            lineage.setdefault(key, []).append(uris.get(event.artifact_id, ''))
        description['lineage'] = lineage

    for name, value in sorted(artifact.custom_properties.items()):
        description[name] = _value_to_python(value)
    return description


def format_push_description(description: dict[str, Any]) -> list[str]:
    """Returns readable lines for the output of `describe_latest_push`."""
    if not description:
        return ['No model was exported (no live PushedModel artifact in ML Metadata).']
    if description.get('pushed') == 1:
        headline = f'Exported model: {description.get("pushed_destination")}'
    else:
        reason = description.get('not_pushed_reason') or 'no reason recorded'
        headline = f'Model NOT exported: {reason}'
    lines = [
        headline,
        f'  version:  {description.get("pushed_version", "(none)")}',
        f'  artifact: #{description["artifact_id"]} {description["artifact_uri"]}',
        f'  producer: {description["producer"]}',
        '  lineage:',
    ]
    for key, uris in sorted(description['lineage'].items()):
        lines.extend(f'    {key}: {uri}' for uri in uris)
    lines.append('  custom properties:')
    lines.extend(
        f'    {name} = {value}'
        for name, value in description.items()
        if name not in _DESCRIPTION_KEYS
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the pipeline with LocalDagRunner and prints where the model went.

    Args:
        argv: Command-line arguments without the program name; None reads `sys.argv`.

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--output-dir',
        default=DEFAULT_OUTPUT_DIR,
        help='directory for the pipeline root, the MLMD store and the exports '
        '(default: %(default)s)',
    )
    parser.add_argument(
        '--accuracy-threshold',
        type=float,
        default=0.6,
        help='minimum eval accuracy for the Evaluator to bless the model (default: %(default)s)',
    )
    args = parser.parse_args(argv)

    logging.set_verbosity(logging.INFO)
    output_dir = os.path.abspath(args.output_dir)
    metadata_path = os.path.join(output_dir, 'metadata.db')
    export_base = os.path.join(output_dir, 'serving')
    os.makedirs(output_dir, exist_ok=True)

    from tfx import v1 as tfx

    pipeline = penguin_pipeline.create_pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=os.path.join(output_dir, 'root'),
        data_root=tfx_penguin_data_root(),
        module_file=penguin_pipeline.TRAINER_MODULE_FILE,
        export_base=export_base,
        metadata_path=metadata_path,
        accuracy_threshold=args.accuracy_threshold,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)

    for line in format_push_description(describe_latest_push(metadata_path)):
        print(line)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
