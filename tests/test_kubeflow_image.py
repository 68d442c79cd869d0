"""The component image: Dockerfile, build.yaml and .dockerignore, checked without a Docker engine.

The image itself cannot be built here, so these tests check what decides
whether it works: its base is the TFX image of a tested TFX version (by default
the newest; this environment's through the TFX_VERSION build argument), the
compiled pipeline names the image build.yaml builds, and the package installs
from the build context the way the Dockerfile installs it (a real `pip install`
into a fresh virtual environment, then the executor class path the compiled
spec names is imported from it). Each tested environment with kfp checks its
own TFX version's image.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest
import tfx
import yaml
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from final_exporter.adapters import kfp as final_exporter_kfp
from final_exporter.adapters.tfx.component import FinalExporter
from kfp_support import docker_context, launcher
from pipelines import kubeflow_v2_runner

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO_ROOT, 'Dockerfile')
BUILD_YAML = os.path.join(REPO_ROOT, 'build.yaml')
DOCKERIGNORE = os.path.join(REPO_ROOT, '.dockerignore')
# This environment's pins: one constraints file per tested TFX and Python.
CONSTRAINTS_NAME = 'constraints/tfx-{}-py{}.{}.txt'.format(
    tfx.__version__.rpartition('.')[0], *sys.version_info[:2]
)
CONSTRAINTS = os.path.join(REPO_ROOT, CONSTRAINTS_NAME)
TFX_IMAGE = 'gcr.io/tfx-oss-public/tfx:{}'
SKAFFOLD_ENV = {
    'SKAFFOLD_DEFAULT_REPO': 'us-docker.pkg.dev/test-project/test-repo',
    'IMAGE_TAG': '0.1.0-test',
}


def pinned_version(package: str, constraints: str = CONSTRAINTS) -> str:
    with open(constraints, encoding='utf-8') as f:
        for line in f:
            name, sep, version = line.strip().partition('==')
            if sep and name.lower() == package:
                return version
    raise AssertionError(f'{package} is not pinned in {constraints}')


def tested_tfx_versions() -> set[str]:
    files = glob.glob(os.path.join(REPO_ROOT, 'constraints', 'tfx-*.txt'))
    return {pinned_version('tfx', f) for f in files}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split('.'))


def build_spec() -> dict:
    with open(BUILD_YAML, encoding='utf-8') as f:
        return yaml.safe_load(f)


def skaffold_image(spec: dict, environ: dict[str, str]) -> str:
    """The image `skaffold build -f build.yaml` pushes in `environ`.

    The envTemplate tag is rendered from the environment; `--default-repo`
    ($SKAFFOLD_DEFAULT_REPO) prefixes a bare image name with `<repo>/`.
    """
    (artifact,) = spec['build']['artifacts']
    tag = re.sub(
        r'\{\{\s*\.(\w+)\s*\}\}',
        lambda m: environ[m.group(1)],
        spec['build']['tagPolicy']['envTemplate']['template'],
    )
    return f'{environ["SKAFFOLD_DEFAULT_REPO"]}/{artifact["image"]}:{tag}'


def test_dockerfile_starts_from_the_tfx_image_of_a_tested_tfx_version():
    (base,) = [args for name, args in docker_context.instructions(DOCKERFILE) if name == 'FROM']
    default = docker_context.arg_defaults(DOCKERFILE)['TFX_VERSION']

    # By default the newest tested TFX; this environment's through the build argument.
    assert default == max(tested_tfx_versions(), key=version_key)
    assert docker_context.substitute(base, {'TFX_VERSION': default}) == TFX_IMAGE.format(default)
    assert pinned_version('tfx') == tfx.__version__
    mine = docker_context.substitute(base, {'TFX_VERSION': tfx.__version__})
    # The image KubeflowV2DagRunner uses when none is given: the same release.
    assert mine == kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig().default_image


def test_build_yaml_builds_every_tested_tfx_version():
    spec = build_spec()
    default = docker_context.arg_defaults(DOCKERFILE)['TFX_VERSION']

    profiles = {
        patch['value']['TFX_VERSION']
        for profile in spec.get('profiles', [])
        for patch in profile['patches']
        if patch['path'] == '/build/artifacts/0/docker/buildArgs'
    }
    assert {default, *profiles} == tested_tfx_versions()


def test_build_yaml_is_one_docker_artifact_built_from_the_dockerfile_tagged_from_env():
    spec = build_spec()

    assert spec['apiVersion'].startswith('skaffold/')
    assert spec['kind'] == 'Config'
    (artifact,) = spec['build']['artifacts']
    assert artifact['context'] == '.'
    dockerfile = os.path.join(REPO_ROOT, artifact['context'], artifact['docker']['dockerfile'])
    assert os.path.normpath(dockerfile) == DOCKERFILE
    assert artifact['image'] == final_exporter_kfp.IMAGE_REPOSITORY
    assert '.IMAGE_TAG' in spec['build']['tagPolicy']['envTemplate']['template']


@pytest.fixture(scope='module')
def compiled(tmp_path_factory) -> str:
    """The demo pipeline compiled by the runner with only the skaffold environment set."""
    root = tmp_path_factory.mktemp('compiled')
    output = str(root / 'pipeline.json')
    code = kubeflow_v2_runner.main(
        ['--output', output], environ={**SKAFFOLD_ENV, 'PIPELINE_ROOT': str(root / 'root')}
    )
    assert code == 0
    return output


def test_compiled_pipeline_and_kfp_components_name_the_image_build_yaml_builds(compiled):
    expected = skaffold_image(build_spec(), SKAFFOLD_ENV)

    executors = launcher.load_pipeline_spec(compiled)['deploymentSpec']['executors']
    assert {e['container']['image'] for e in executors.values()} == {expected}
    assert final_exporter_kfp.component_image(SKAFFOLD_ENV) == expected
    components = final_exporter_kfp.make_components(expected)
    assert {c.component_spec.implementation.container.image for c in components} == {expected}


def test_dockerfile_lays_out_the_paths_the_runner_compiles_into_the_pipeline():
    dockerfile = dict(docker_context.instructions(DOCKERFILE))

    assert dockerfile['WORKDIR'] == kubeflow_v2_runner.IMAGE_WORKDIR
    assert dockerfile['COPY'] == './ ./'
    runs = ' '.join(args for name, args in docker_context.instructions(DOCKERFILE) if name == 'RUN')
    assert kubeflow_v2_runner.IMAGE_DATA_ROOT in runs


@pytest.fixture(scope='module')
def build_context(tmp_path_factory) -> tuple[str, list[str]]:
    """The build context `docker build .` sends, copied to a temporary folder."""
    dest = str(tmp_path_factory.mktemp('build_context'))
    files = docker_context.copy_build_context(
        REPO_ROOT, dest, docker_context.read_dockerignore(DOCKERIGNORE)
    )
    return dest, files


def test_build_context_holds_what_the_image_needs_and_nothing_else(build_context, compiled):
    _, files = build_context
    step = launcher.step(launcher.load_pipeline_spec(compiled), 'FinalExporter')
    parameters = launcher.constant_parameters(step['task'])
    # Every file the compiled FinalExporter names under /pipeline is in the context.
    named = [
        *json.loads(parameters['assets_extra']).values(),
        parameters['serving_fn'].rpartition(':')[0],
    ]
    prefix = kubeflow_v2_runner.IMAGE_WORKDIR + '/'
    assert named and all(path.startswith(prefix) for path in named), named

    for needed in (
        'pyproject.toml',
        'README.md',
        CONSTRAINTS_NAME,
        'scripts/image_install.sh',
        'component/final_exporter/adapters/tfx/executor.py',
        'component/final_exporter/adapters/kfp.py',
        *(path.removeprefix(prefix) for path in named),
    ):
        assert needed in files
    assert not [
        f
        for f in files
        if f.startswith(('.venv/', '.git/', 'tests/', 'demo_output/')) or '__pycache__' in f
    ]


def test_package_installs_from_the_build_context_as_the_dockerfile_does(
    build_context, compiled, tmp_path
):
    context, _ = build_context
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    site_packages = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The new environment sees this one's packages (TF, TFX: what the TFX image
    # has) after its own, as a plain path: this checkout's editable install of
    # final_exporter (a .pth file here) is not picked up.
    with open(os.path.join(site_packages, 'parent_environment.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')

    # The Dockerfile's own install step, offline: every dependency must already be
    # satisfied by this environment's pinned set, and the build backend is this one's.
    runs = [args for name, args in docker_context.instructions(DOCKERFILE) if name == 'RUN']
    assert runs[0] == 'bash scripts/image_install.sh'
    install = subprocess.run(
        ['bash', 'scripts/image_install.sh', '--no-index', '--no-build-isolation'],
        cwd=context,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            'PATH': str(venv / 'bin') + os.pathsep + os.environ['PATH'],
            'TF_CPP_MIN_LOG_LEVEL': '2',
        },
    )
    assert install.returncode == 0, install.stdout + install.stderr

    args = launcher.step(launcher.load_pipeline_spec(compiled), 'FinalExporter')['executor'][
        'container'
    ]['args']
    class_path = args[args.index('--executor_class_path') + 1]
    executor = FinalExporter.EXECUTOR_SPEC.executor_class
    assert class_path == f'{executor.__module__}.{executor.__name__}'
    probe = subprocess.run(
        [
            python,
            '-c',
            'import json, sys\n'
            'from tfx.utils import import_utils\n'
            'import final_exporter, final_exporter.adapters.kfp\n'
            'import_utils.import_class_by_path(sys.argv[1])\n'
            'print(json.dumps({"package": final_exporter.__file__, '
            '"kfp": final_exporter.adapters.kfp.__file__}))',
            class_path,
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    for path in found.values():
        assert path.startswith(site_packages + os.sep), found
