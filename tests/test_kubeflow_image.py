"""The component image's recipe: Dockerfile, build.yaml, .dockerignore and the install script.

`tests/test_image.py` builds the image and runs it (on the host, with podman).
These tests check, in every environment with kfp, what decides whether the
image works for its users: the default base is a Python whose tested set has kfp;
`docker build .` and `skaffold build -f build.yaml` need no build argument; the
TFX-image route's base is the TFX image of the compiling release; the compiled
pipeline names the image build.yaml builds; the dependency layer does not depend
on the package's code; the build context holds what the image needs and nothing
else. The TFX-image route's install runs here for real: this environment stands in
for the TFX image of its TFX version (a fresh venv that sees this environment's
packages, as a TFX image's Python has TFX installed), and the install script's two
steps run in it offline, export and verify included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
INSTALL_SCRIPT = 'scripts/image_install.sh'
SKAFFOLD_ENV = {
    'SKAFFOLD_DEFAULT_REPO': 'us-docker.pkg.dev/test-project/test-repo',
    'IMAGE_TAG': '0.1.0-test',
}


def pins(constraints: str) -> dict[str, str]:
    found = {}
    with open(constraints, encoding='utf-8') as f:
        for line in f:
            name, sep, version = line.strip().partition('==')
            if sep:
                found[name.lower()] = version
    return found


def default_base() -> str:
    return docker_context.arg_defaults(DOCKERFILE)['BASE_IMAGE']


def build_spec() -> dict:
    with open(BUILD_YAML, encoding='utf-8') as f:
        return yaml.safe_load(f)


def render(template: str, environ: dict[str, str]) -> str:
    """A skaffold template field: `{{.VAR}}` and `{{default "x" .VAR}}` (Sprig), from `environ`."""

    def field(m: re.Match) -> str:
        default, name = m.group(1), m.group(2)
        return environ.get(name) or (default or '')

    return re.sub(r'\{\{\s*(?:default\s+"([^"]*)"\s+)?\.(\w+)\s*\}\}', field, template)


def skaffold_image(spec: dict, environ: dict[str, str]) -> str:
    """The image `skaffold build -f build.yaml` pushes in `environ`.

    The envTemplate tag is rendered from the environment; `--default-repo`
    ($SKAFFOLD_DEFAULT_REPO) prefixes a bare image name with `<repo>/`.
    """
    (artifact,) = spec['build']['artifacts']
    tag = render(spec['build']['tagPolicy']['envTemplate']['template'], environ)
    return f'{environ["SKAFFOLD_DEFAULT_REPO"]}/{artifact["image"]}:{tag}'


def test_default_base_is_python_slim_whose_tested_set_has_tfx_and_kfp():
    (base,) = [args for name, args in docker_context.instructions(DOCKERFILE) if name == 'FROM']
    assert base == '${BASE_IMAGE}'
    match = re.fullmatch(r'python:(\d+\.\d+)-slim', default_base())
    assert match, default_base()

    # The default route installs the tested set of the base's Python: one file, with kfp,
    # so the image runs the kfp-native components as well as the TFX steps.
    tested = [
        f
        for f in os.listdir(os.path.join(REPO_ROOT, 'constraints'))
        if f.endswith(f'-py{match.group(1)}.txt')
    ]
    assert len(tested) == 1, tested
    pinned = pins(os.path.join(REPO_ROOT, 'constraints', tested[0]))
    assert {'tfx', 'kfp', 'tensorflow'} <= set(pinned)


def test_build_yaml_default_needs_no_build_argument_and_tfx_image_profile_sets_the_base():
    spec = build_spec()
    (artifact,) = spec['build']['artifacts']
    assert 'buildArgs' not in artifact['docker']

    (profile,) = [p for p in spec['profiles'] if p['name'] == 'tfx-image']
    (patch,) = profile['patches']
    assert patch['path'] == '/build/artifacts/0/docker/buildArgs'
    template = patch['value']['BASE_IMAGE']
    # The TFX-image route for this environment's TFX: the image KubeflowV2DagRunner uses
    # when none is given, that of the compiling release.
    assert (
        render(template, {'TFX_VERSION': tfx.__version__})
        == kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig().default_image
    )
    # Without TFX_VERSION, a TFX image whose TFX and Python have a tested set.
    tfx_version = render(template, {}).rpartition(':')[2]
    assert tfx_version in {
        pins(os.path.join(REPO_ROOT, 'constraints', f))['tfx']
        for f in os.listdir(os.path.join(REPO_ROOT, 'constraints'))
        if f.endswith('-py3.10.txt')
    }


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


def test_dependency_layer_is_reused_when_the_package_code_changes():
    steps = docker_context.instructions(DOCKERFILE)
    runs = [args for name, args in steps if name == 'RUN']
    assert runs == [f'bash {INSTALL_SCRIPT} dependencies', f'bash {INSTALL_SCRIPT} package']
    dependencies = steps.index(('RUN', runs[0]))
    # Before the dependencies' RUN, only what decides them is copied: no package code.
    copied_before = [
        source
        for name, args in steps[:dependencies]
        if name == 'COPY'
        for source in args.split()[:-1]
    ]
    assert copied_before, 'nothing copied before the dependencies are installed'
    for source in copied_before:
        assert source not in ('.', './') and not source.startswith(('component', 'pipelines'))
    assert ('WORKDIR', kubeflow_v2_runner.IMAGE_WORKDIR) in steps
    assert steps.index(('COPY', './ ./')) > dependencies


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
        *(
            f'constraints/{f}'
            for f in os.listdir(os.path.join(REPO_ROOT, 'constraints'))
            if f.endswith('.txt')
        ),
        INSTALL_SCRIPT,
        'component/final_exporter/adapters/tfx/executor.py',
        'component/final_exporter/adapters/kfp.py',
        *(path.removeprefix(prefix) for path in named),
    ):
        assert needed in files
    assert not [
        f
        for f in files
        if f.startswith(('.venv/', '.git/', 'tests/', 'docs/', 'benchmarks/', 'demo_output/'))
        or '__pycache__' in f
        or f.endswith('.new')
    ]


# The environment of the image's build and of its steps: no path to this checkout's code
# (scripts/userland.sh runs the suite with PYTHONPATH at it); only what is installed counts.
IMAGE_ENV = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}


def run_install_step(step: str, context: str, venv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['bash', INSTALL_SCRIPT, step, '--no-index', '--no-build-isolation'],
        cwd=context,
        capture_output=True,
        text=True,
        env={
            **IMAGE_ENV,
            'PATH': os.path.join(venv, 'bin') + os.pathsep + os.environ['PATH'],
            'TF_CPP_MIN_LOG_LEVEL': '2',
        },
    )


def tfx_base_venv(path: str) -> str:
    """A venv standing in for a TFX image: it sees this environment's packages (TF, TFX).

    They come after the venv's own, as a plain path, so this checkout's editable
    final_exporter is not seen. Returns the venv's site-packages.
    """
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', path], check=True)
    site_packages = subprocess.run(
        [
            os.path.join(path, 'bin', 'python'),
            '-c',
            'import sysconfig; print(sysconfig.get_paths()["purelib"])',
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(site_packages, 'parent_environment.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return site_packages


def test_tfx_image_route_installs_pinned_to_what_the_base_has_and_exports(
    build_context, compiled, tmp_path
):
    context, _ = build_context
    venv = str(tmp_path / 'venv')
    site_packages = tfx_base_venv(venv)
    python = os.path.join(venv, 'bin', 'python')

    # Offline: every requirement must already be met by what the base has.
    for step in ('dependencies', 'package'):
        done = run_install_step(step, context, venv)
        assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert 'export and verify passed' in done.stderr

    state = os.path.join(venv, 'share', 'tfx-final-exporter')
    with open(os.path.join(state, 'route')) as f:
        assert f.read().strip() == 'base'
    base_pins = pins(os.path.join(state, 'constraints.txt'))
    assert base_pins['tfx'] == tfx.__version__
    assert 'tfx-final-exporter' not in base_pins
    # The demo data where the runner compiles it into the pipeline.
    assert os.path.realpath(os.path.join(context, 'data', 'penguin')).endswith(
        os.path.join('tfx', 'components', 'testdata', 'penguin', 'data')
    )
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
        env={**IMAGE_ENV, 'TF_CPP_MIN_LOG_LEVEL': '2'},
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    for path in found.values():
        assert path.startswith(site_packages + os.sep), found


def test_tfx_image_whose_tfx_the_package_does_not_admit_stops_the_build_saying_so(
    build_context, tmp_path
):
    # As a TFX 1.21 image (Python 3.10) meets this package's TFX 1.16 requirement for
    # Python 3.10: here the base has this environment's TFX, the package asks another.
    source, _ = build_context
    context = str(tmp_path / 'context')
    shutil.copytree(source, context)
    pyproject = os.path.join(context, 'pyproject.toml')
    with open(pyproject, encoding='utf-8') as f:
        text = f.read()
    other = '1.16.*' if tfx.__version__.startswith('1.21.') else '1.21.*'
    text, count = re.subn(r'"tfx\[kfp\][^";]*;', f'"tfx[kfp]=={other};', text)
    assert count == 2
    with open(pyproject, 'w', encoding='utf-8') as f:
        f.write(text)
    venv = str(tmp_path / 'venv')
    tfx_base_venv(venv)

    done = run_install_step('dependencies', context, venv)

    assert done.returncode == 1
    assert f'Cannot install tfx=={other}' in done.stderr
    assert "this package's requirements (pyproject.toml) cannot be met without changing" in (
        done.stderr
    )
