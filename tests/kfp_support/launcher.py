"""What the Kubeflow Pipelines v2 / Vertex AI launcher does for one step, done locally.

The launcher resolves a task's inputs into an `ExecutorInput` message, puts it
in place of the `{{$}}` placeholder in the container's command line and runs
the container; the step writes an `ExecutorOutput` JSON file to
`outputs.outputFile`. Here the "container" is a subprocess of this Python, so
the compiled command runs exactly as written, but on local paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

EXECUTOR_INPUT_PLACEHOLDER = '{{$}}'
# Resource names as Vertex AI gives them to runtime artifacts.
ARTIFACT_NAME = 'projects/123456789/locations/us-central1/metadataStores/default/artifacts/{}'


def load_pipeline_spec(path: str) -> dict[str, Any]:
    """The `pipelineSpec` of a compiled pipeline job JSON (TFX) or a pipeline YAML (kfp)."""
    with open(path, encoding='utf-8') as f:
        if path.endswith(('.yaml', '.yml')):
            import yaml

            return yaml.safe_load(f)
        return json.load(f)['pipelineSpec']


def step(pipeline_spec: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The task, its component spec and its executor spec, as the launcher reads them."""
    task_spec = pipeline_spec['root']['dag']['tasks'][task]
    component = pipeline_spec['components'][task_spec['componentRef']['name']]
    executor = pipeline_spec['deploymentSpec']['executors'][component['executorLabel']]
    return {'task': task_spec, 'component': component, 'executor': executor}


def constant_parameters(task_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The task's constant parameter values as JSON values (ints in 2.0.0 specs become ints).

    Schema 2.1.0 specs hold `runtimeValue.constant` (integers as floats, as
    Vertex AI hands them back); 2.0.0 specs hold `runtimeValue.constantValue`
    with `intValue` / `doubleValue` / `stringValue`.
    """
    values = {}
    for name, spec in task_spec.get('inputs', {}).get('parameters', {}).items():
        runtime = spec['runtimeValue']
        if 'constant' in runtime:
            values[name] = runtime['constant']
        else:
            ((kind, value),) = runtime['constantValue'].items()
            values[name] = int(value) if kind == 'intValue' else value
    return values


def runtime_artifact(
    component_io: Mapping[str, Any],
    key: str,
    uri: str,
    *,
    artifact_id: int,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One `RuntimeArtifact` for input or output `key`, typed as the component declares it."""
    return {
        'name': ARTIFACT_NAME.format(artifact_id),
        'uri': uri,
        'type': component_io['artifacts'][key]['artifactType'],
        'metadata': dict(metadata or {}),
    }


def executor_input(
    component: Mapping[str, Any],
    *,
    input_artifacts: Mapping[str, Mapping[str, Any]],
    parameters: Mapping[str, Any],
    output_root: str,
    legacy_parameters: bool = False,
) -> dict[str, Any]:
    """The `ExecutorInput` the launcher passes to the step.

    Args:
        component: The component spec (input and output definitions).
        input_artifacts: Input key -> `runtime_artifact(...)`.
        parameters: Parameter name -> JSON value (`parameterValues`).
        output_root: Folder for the output artifacts and the executor output file.
        legacy_parameters: Also fill the deprecated `parameters` field (typed
            `intValue` / `stringValue`), as Vertex AI does for 2.0.0 specs.
    """
    outputs = {}
    for offset, key in enumerate(
        sorted(component.get('outputDefinitions', {}).get('artifacts', {}))
    ):
        outputs[key] = {
            'artifacts': [
                runtime_artifact(
                    component['outputDefinitions'],
                    key,
                    os.path.join(output_root, key),
                    artifact_id=900 + offset,
                )
            ]
        }
    inputs: dict[str, Any] = {
        'artifacts': {key: {'artifacts': [a]} for key, a in input_artifacts.items()},
        'parameterValues': dict(parameters),
    }
    if legacy_parameters:
        inputs['parameters'] = {
            name: {'intValue': str(int(v))} if isinstance(v, (int, float)) else {'stringValue': v}
            for name, v in parameters.items()
        }
    return {
        'inputs': inputs,
        'outputs': {
            'artifacts': outputs,
            'outputFile': os.path.join(output_root, 'executor_output.json'),
        },
    }


def command_line(
    executor: Mapping[str, Any],
    invocation: Mapping[str, Any],
    *,
    python: str | None = sys.executable,
) -> list[str]:
    """The container's command and args with the executor input in place.

    `python` / `python3` become `python` (by default this interpreter, as
    `kfp.local.SubprocessRunner` does it; None keeps them, for a run in the
    image); any placeholder other than `{{$}}` is an error, because this
    helper does not resolve it.
    """
    container = executor['container']
    payload = json.dumps(invocation)
    parts = []
    for part in [*container.get('command', []), *container.get('args', [])]:
        if python is not None:
            if part in ('python', 'python3'):
                part = python
            part = part.replace('python3 -m ', f'{python} -m ')
        part = part.replace(EXECUTOR_INPUT_PLACEHOLDER, payload)
        if '{{$' in part.replace(payload, ''):
            raise ValueError(f'unresolved placeholder in {part!r}')
        parts.append(part)
    return parts


def run_step(
    executor: Mapping[str, Any],
    invocation: Mapping[str, Any],
    *,
    cwd: str,
    timeout: float = 300,
) -> tuple[subprocess.CompletedProcess, dict[str, Any] | None]:
    """Runs the step; returns the process and its executor output (None if none was written)."""
    process = subprocess.run(
        command_line(executor, invocation),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    )
    output_file = invocation['outputs']['outputFile']
    if not os.path.isfile(output_file):
        return process, None
    with open(output_file, encoding='utf-8') as f:
        return process, json.load(f)


def output_artifact(executor_output: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The single output artifact `key` of an executor output."""
    (artifact,) = executor_output['artifacts'][key]['artifacts']
    return artifact


def failure_message(process: subprocess.CompletedProcess, tail: int = 40) -> str:
    lines: Sequence[str] = (process.stdout + process.stderr).splitlines()
    return f'exit code {process.returncode}; last lines:\n' + '\n'.join(lines[-tail:])
