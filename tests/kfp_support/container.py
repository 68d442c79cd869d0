"""Runs a command in a built image the way Kubeflow Pipelines and Vertex AI run a step's container.

No container daemon is needed: each run is a fresh working container made with
`buildah from`, the command run in it with `buildah run --isolation chroot`
(the image's own environment and working directory, plus the step's
environment, as a pod adds its env to the image's; the command replaces the
image's CMD as a pod's `command` does), and removed with `buildah rm` whatever
happens. Host folders are bind-mounted at their own paths, and the run shares
the host's network namespace, so servers on 127.0.0.1 are reachable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from kfp_support import launcher


def _buildah(*args: str, timeout: float = 120) -> str:
    process = subprocess.run(
        ['buildah', *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if process.returncode != 0:
        raise RuntimeError(f'buildah {" ".join(args)}: {process.stderr.strip()}')
    return process.stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    """The image's OCI config (`Env`, `WorkingDir`, `Cmd`, `Labels`...)."""
    inspected = json.loads(_buildah('inspect', '--type', 'image', image))
    return inspected['OCIv1']['config']


def working_containers() -> set[str]:
    """The names of the working containers buildah knows of."""
    listing = json.loads(_buildah('containers', '--all', '--json') or 'null')
    return {c['containername'] for c in listing or []}


@contextlib.contextmanager
def working_container(image: str) -> Iterator[str]:
    """A fresh working container of `image`, removed on the way out, even on failure."""
    name = _buildah('from', '--pull=never', '--quiet', image)
    try:
        yield name
    finally:
        _buildah('rm', name)


def run_in_image(
    image: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    mounts: Iterable[str] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Runs `argv` in a fresh working container of `image`; returns the finished process.

    Args:
        image: Image name or id.
        argv: The command and its arguments, as a pod's `command` + `args`.
        env: Environment added to the image's own.
        mounts: Host folders, each bind-mounted at the same path.
        timeout: Seconds before the run is killed (it then raises TimeoutExpired).
    """
    with working_container(image) as name:
        command = ['buildah', 'run', '--isolation', 'chroot']
        for key, value in (env or {}).items():
            command += ['--env', f'{key}={value}']
        for folder in mounts:
            command += ['--volume', f'{folder}:{folder}']
        command += [name, '--', *argv]
        # Its own process group: a timeout kills the command in the container too.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def run_step_in_image(
    image: str,
    executor: Mapping[str, Any],
    invocation: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    mounts: Iterable[str] = (),
    timeout: float = 600,
) -> tuple[subprocess.CompletedProcess, dict[str, Any] | None]:
    """Runs a compiled step's container command in `image` with the launcher's executor input.

    The command and args are the compiled ones, `{{$}}` replaced by the
    executor input, `python` left to the image's. Returns the process and the
    executor output it wrote (None if none).
    """
    argv = launcher.command_line(executor, invocation, python=None)
    process = run_in_image(image, argv, env=env, mounts=mounts, timeout=timeout)
    output_file = invocation['outputs']['outputFile']
    if not os.path.isfile(output_file):
        return process, None
    with open(output_file, encoding='utf-8') as f:
        return process, json.load(f)
