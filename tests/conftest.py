"""Shared fixtures: real SavedModels and blessings from the installed TFX test data."""

from __future__ import annotations

import collections
import glob
import gzip
import importlib.metadata
import importlib.util
import json
import os
import shutil
import struct
import sys
import uuid
from collections.abc import Callable

import pytest

from final_exporter.common import keys
from final_exporter.storage.stores import reset_stores

from loopback_servers import fake_gcs_server, moto_s3_server

# What runs where (docs/tested-with.md): the runner (scripts/test.sh, scripts/userland.sh)
# sets FINAL_EXPORTER_SUITE. `full` (the default) collects every test file; `make test`
# runs it once, on the default image's environment (TFX 1.21, Python 3.11). `versions`
# collects the files below: what depends on what differs between the tested environments
# (Python, TFX, TensorFlow, kfp, Beam, protobuf and the client libraries each TFX pins);
# it runs on every other environment. `image` collects the built-image test alone: it
# runs once per `make test`, on the host, where the OCI builder is.
VERSION_DEPENDENT = {
    # pip's resolve of the wheel's declared dependencies for this Python (see below)
    'test_wheel_install.py',
    # TFX: components, artifacts, executors, orchestration
    'test_component.py',  # component spec, channels, parameters
    'test_executor.py',  # artifacts, executor, serving_fn re-export, as_text, Beam copy
    'test_stamped_model.py',  # InfraValidator's own code writes the stamped model
    'test_demo_pipeline.py',  # the demo on LocalDagRunner, MLMD lineage
    'test_kubeflow_caching.py',  # LocalDagRunner's cache of the component
    # kfp (collected only where kfp is declared, below)
    'test_kubeflow_v2_runner.py',  # KubeflowV2 compile and the golden spec
    'test_kubeflow_container_contract.py',  # TFX's KubeflowV2 container entrypoint
    'test_kubeflow_native.py',  # kfp.local, the kfp compiler
    'test_kubeflow_image.py',  # the Dockerfile's install with this TFX's pins
    'test_vertex_registry_kfp.py',  # kfp.local with the registry
    # TensorFlow, tensorflow-serving-api, Beam: load and export paths
    'test_serving_check.py',  # smoke test, parity (in process, Beam in memory, processes)
    'test_load_while_copying.py',  # TensorFlow loads the source while the copy runs
    'test_tf_import.py',  # TensorFlow's eager import of Keras, skipped (TF 2.16 and 2.21)
    'test_warmup.py',  # warmup files: TF records, serving protos, replay
    'test_cli.py',  # TensorFlow's log lines on stderr; a plain copy imports no TF
    'test_model_config.py',  # TF Serving's config protos on protobuf 3 and 6
    'test_signature_defs.py',  # signatures read without TF agree with TF's own reading
    'test_signing.py',  # signing with cryptography 47 (beside TFX 1.16) and 50 (1.21)
    'test_store_lifecycle.py',  # every store, through the client libraries each TFX pins
}
# Not repeated: our own code on the standard library and the OS, the same wherever it runs
# (copy and hashing, publish, retention, manifest, faults, leases, the object-store and
# Vertex AI registry matrices on their loopback servers, progress line, config, report,
# docs, the public API, the SavedModel structure check read at the wire level, the
# export core, the serving-signature guard and diff on the signatures test_signature_defs.py
# checks, model-signing's verifiers: one release, on Python 3.11+ only), and
# test_release_checks.py: the TensorFlow-bound checks it drives through run_export are the
# ones test_serving_check.py and test_warmup.py run directly.
RUN_APART = {'test_image.py'}
SUITES = ('full', 'versions', 'image')
SUITE = os.environ.get('FINAL_EXPORTER_SUITE', 'full')
if SUITE not in SUITES:
    raise pytest.UsageError(f'FINAL_EXPORTER_SUITE must be one of {SUITES}, not {SUITE!r}')
TEST_FILES = {
    os.path.basename(p) for p in glob.glob(os.path.join(os.path.dirname(__file__), 'test_*.py'))
}
if VERSION_DEPENDENT - TEST_FILES:
    raise pytest.UsageError(f'no such test files: {sorted(VERSION_DEPENDENT - TEST_FILES)}')
SUITE_FILES = {
    'full': TEST_FILES - RUN_APART,
    'versions': VERSION_DEPENDENT,
    'image': RUN_APART,
}[SUITE]
# The wheel install resolves unpinned, as a user's `pip install` does. On Python 3.10
# (TFX 1.16) pip did not finish that resolve: 30 min with the venv's pip 23.0.1, over
# 15 with pip 26.3 (docs/tested-with.md); there it is not run.
if sys.version_info < (3, 11):
    SUITE_FILES = SUITE_FILES - {'test_wheel_install.py'}

# kfp and what needs it. pyproject.toml asks for tfx[kfp]; TFX 1.16 and TFX 1.21 on
# Python < 3.12 bring kfp, TFX 1.21 on 3.12+ declares no kfp (docs/tested-with.md).
# Where kfp is declared absent these files are not collected; where it should be
# there but does not import, the run stops instead of passing without them.
NEEDS_KFP = {
    'test_kubeflow_container_contract.py',
    'test_kubeflow_image.py',
    'test_kubeflow_native.py',
    'test_kubeflow_v2_runner.py',
    'test_vertex_registry_kfp.py',
}
KFP_DECLARED = sys.version_info < (3, 12) or not importlib.metadata.version('tfx').startswith(
    '1.21.'
)
KFP_INSTALLED = importlib.util.find_spec('kfp') is not None
if KFP_DECLARED and not KFP_INSTALLED:
    raise pytest.UsageError(
        f'kfp is missing: tfx[kfp] {importlib.metadata.version("tfx")} on Python '
        f'{sys.version_info.major}.{sys.version_info.minor} brings it; reinstall the environment'
    )
# model-signing (the standard's verifiers and `model_signing` command): the [signing]
# extra installs it on Python 3.11+ only (pyproject.toml says why not beside TFX 1.16).
NEEDS_MODEL_SIGNING = {'test_signature_verify.py'}
MODEL_SIGNING_DECLARED = sys.version_info >= (3, 11)
if MODEL_SIGNING_DECLARED and importlib.util.find_spec('model_signing') is None:
    raise pytest.UsageError(
        'model-signing is missing: the [signing] extra brings it on Python '
        f'{sys.version_info.major}.{sys.version_info.minor}; reinstall the environment'
    )
COLLECTED = SUITE_FILES
if not KFP_DECLARED:
    COLLECTED = COLLECTED - NEEDS_KFP
if not MODEL_SIGNING_DECLARED:
    COLLECTED = COLLECTED - NEEDS_MODEL_SIGNING
collect_ignore = sorted(TEST_FILES - COLLECTED)


def pytest_report_header(config) -> list[str]:
    kfp = (
        'kfp: installed; the Kubeflow tests run'
        if KFP_DECLARED
        else 'kfp: not in this environment (TFX 1.21 on Python 3.12+); the Kubeflow tests do not run'
    )
    return [
        f'FINAL_EXPORTER_SUITE={SUITE}: {len(COLLECTED)} of {len(TEST_FILES)} test files',
        kfp,
        f'not collected here: {collect_ignore}' if collect_ignore else 'every test file',
    ]


# The `tfx` package ships trained models, blessings and penguin examples.
TFX_TESTDATA = os.path.join(
    os.path.dirname(importlib.util.find_spec('tfx').origin), 'components', 'testdata'
)
KERAS_MODEL = os.path.join(TFX_TESTDATA, 'trainer', 'keras')  # <uri>/Format-Serving/
ESTIMATOR_MODEL = os.path.join(TFX_TESTDATA, 'trainer', 'previous')  # .../export/<name>/<ts>/
PENGUIN_EVAL = os.path.join(TFX_TESTDATA, 'penguin', 'data', 'Split-eval')


@pytest.fixture
def model_uri(tmp_path) -> str:
    """A private copy of a trained Keras penguin Model artifact folder."""
    dest = tmp_path / 'Trainer' / 'model' / '7'
    shutil.copytree(KERAS_MODEL, dest)
    return str(dest)


@pytest.fixture
def export_base(tmp_path) -> str:
    return str(tmp_path / 'serving')


@pytest.fixture
def make_blessing(tmp_path) -> Callable[..., str]:
    """Writes a blessing folder as Evaluator (or InfraValidator) does."""

    def make(blessed: bool = True, infra: bool = False, name: str | None = None) -> str:
        marker = ('INFRA_' if infra else '') + ('BLESSED' if blessed else 'NOT_BLESSED')
        folder = tmp_path / (name or f'{"infra" if infra else "model"}_{marker.lower()}')
        folder.mkdir(parents=True, exist_ok=True)
        (folder / marker).write_text('')
        return str(folder)

    return make


def penguin_examples(n: int = 5) -> list[bytes]:
    """Real serialized tf.Examples from the penguin eval split, read without TensorFlow."""
    (path,) = glob.glob(os.path.join(PENGUIN_EVAL, '*.gz'))
    records = []
    with gzip.open(path, 'rb') as f:
        while len(records) < n:
            header = f.read(12)  # TFRecord: uint64 length, uint32 masked crc.
            if len(header) < 12:
                break
            (length,) = struct.unpack('<Q', header[:8])
            records.append(f.read(length))
            f.read(4)
    return records


def tree_files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, 'rb') as f:
                out[os.path.relpath(full, root)] = f.read()
    return out


def published_versions(model_base: str) -> list[str]:
    if not os.path.isdir(model_base):
        return []
    return sorted(n for n in os.listdir(model_base) if n.isdigit())


def assert_nothing_written(export_base: str) -> None:
    """Nothing at all under the export base: no version, no staging folder."""
    if os.path.exists(export_base):
        leftovers = [os.path.join(d, n) for d, ds, fs in os.walk(export_base) for n in ds + fs]
        assert not leftovers, f'expected nothing under {export_base}, found {leftovers}'


def assert_no_staging_left(model_base: str) -> None:
    if os.path.isdir(model_base):
        staging = [n for n in os.listdir(model_base) if not n.isdigit()]
        assert not staging, f'staging folders left behind: {staging}'


def assert_exported_copy(export_dir: str, source_saved_model: str, extra: dict | None = None):
    """The export holds the source SavedModel byte for byte, plus assets.extra files."""
    exported = tree_files(export_dir)
    manifest = exported.pop(keys.MANIFEST_RELPATH.replace('/', os.sep))
    assert manifest, 'manifest is empty'
    expected = tree_files(source_saved_model)
    for dest, content in (extra or {}).items():
        expected[os.path.join(keys.ASSETS_EXTRA_DIR, dest)] = content
    assert exported == expected


# --- Object-store servers on loopback, started and stopped by the tests ---------------


@pytest.fixture(scope='session')
def gcs_server():
    """fake-gcs-server (a real GCS JSON API server); sets STORAGE_EMULATOR_HOST."""
    with fake_gcs_server() as url:
        reset_stores()
        yield {'STORAGE_EMULATOR_HOST': url}
    reset_stores()


@pytest.fixture(scope='session')
def s3_server():
    """moto's S3 server on a loopback port; sets AWS_ENDPOINT_URL and dummy credentials."""
    with moto_s3_server() as env, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        reset_stores()
        yield env
    reset_stores()


@pytest.fixture(params=['gs', 's3'])
def bucket_base(request) -> tuple[str, dict[str, str]]:
    """A fresh bucket on each object-store server: ('scheme://bucket/models', server env)."""
    scheme = request.param
    env = request.getfixturevalue('gcs_server' if scheme == 'gs' else 's3_server')
    bucket = f'models-{uuid.uuid4().hex[:12]}'
    if scheme == 'gs':
        from google.cloud import storage

        storage.Client().create_bucket(bucket)
    else:
        import boto3

        boto3.client('s3').create_bucket(Bucket=bucket)
    return f'{scheme}://{bucket}/models', env


@pytest.fixture
def gcs_base(gcs_server) -> str:
    """A fresh bucket on fake-gcs-server: 'gs://bucket/serving'."""
    from google.cloud import storage

    bucket = f'models-{uuid.uuid4().hex[:12]}'
    storage.Client().create_bucket(bucket)
    return f'gs://{bucket}/serving'


@pytest.fixture
def vertex(monkeypatch):
    """The loopback Vertex AI ModelService (tests/vertex_server.py), set as the exporter's endpoint."""
    from final_exporter.lifecycle.vertex_registry import ENDPOINT_ENV
    from vertex_server import vertex_model_service

    with vertex_model_service() as service:
        monkeypatch.setenv(ENDPOINT_ENV, service.endpoint)
        yield service


# --- The tally behind the README's "What the exporter guarantees" figures -------------

_TALLY: collections.Counter = collections.Counter()


@pytest.fixture
def tally() -> collections.Counter:
    """Counts what the fault tests did; written to $FINAL_EXPORTER_TALLY at the end."""
    return _TALLY


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get('FINAL_EXPORTER_TALLY')
    if path and _TALLY:
        summary = dict(sorted(_TALLY.items()))
        summary['tests_failed'] = session.testsfailed
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(summary, f, indent=2, sort_keys=True)


# --- Real SavedModels whose serving signatures differ in known ways -------------------


def _signature_fn(inputs: dict, outputs=None):
    """A tf.function whose signature has `inputs` ({key: (shape, dtype)}), returning
    `outputs(tensors)` or one float32 scalar `y`."""
    import tensorflow as tf

    names = list(inputs)
    specs = [tf.TensorSpec(shape, dtype, name=name) for name, (shape, dtype) in inputs.items()]

    @tf.function(input_signature=specs)
    def fn(*tensors):
        if outputs:
            return outputs(dict(zip(names, tensors, strict=True)))
        return {'y': tf.cast(tf.size(tensors[0]), tf.float32)}

    return fn


def _save_tf1_model(path: str, method_name: str, sparse_ids: bool) -> str:
    """A graph-mode SavedModel (SavedModelBuilder), as Estimators wrote: any method name,
    and sparse inputs as coo_sparse TensorInfos."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        x = v1.placeholder(tf.float32, [None, 3], name='x')
        ids = (v1.sparse_placeholder if sparse_ids else v1.placeholder)(tf.int64, [None, 5], 'ids')
        info = v1.saved_model.utils.build_tensor_info
        signature = v1.saved_model.signature_def_utils.build_signature_def(
            {'x': info(x), 'ids': info(ids)}, {'y': info(tf.reduce_sum(x, axis=1))}, method_name
        )
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ['serve'], {'serving_default': signature})
        builder.save()
    return path


@pytest.fixture(scope='session')
def signature_models(tmp_path_factory) -> dict[str, str]:
    """Small real SavedModels for the serving-signature guard, by name.

    `served` and `changed` (tf.saved_model.save) differ signature by signature as
    the key says: `relax` x (None, 3) -> (None, None); `narrow` x (None, None) ->
    (None, 3); `unknown_rank` x <unknown> -> (None,); `fixed` x (None, 3) -> (None, 4);
    `rank` x (None, 3) -> (None, 3, 1); `dtype` ids int64 -> int32; `rename` x ->
    features; `add_input` + w; `remove_input` - w; `outputs`: score float32 -> float64,
    label removed, prob added; `gone` removed; `new` added; `same` unchanged.
    `tf1_predict` and `tf1_regress` (SavedModelBuilder) differ in method name and in
    `ids`, sparse in the first and dense in the second.
    """
    import tensorflow as tf

    f32, vec, mat = tf.float32, [None], [None, 3]

    def outputs(score_dtype, extra):
        return lambda t: {'score': tf.cast(tf.reduce_sum(t['x']), score_dtype), **extra()}

    served = {
        'relax': {'x': (mat, f32)}, 'narrow': {'x': ([None, None], f32)},
        'unknown_rank': {'x': (None, f32)}, 'fixed': {'x': (mat, f32)},
        'rank': {'x': (mat, f32)}, 'dtype': {'ids': (vec, tf.int64)},
        'rename': {'x': (mat, f32)}, 'add_input': {'x': (vec, f32)},
        'remove_input': {'x': (vec, f32), 'w': (vec, f32)}, 'gone': {'x': (vec, f32)},
        'same': {'x': (vec, f32)},
    }  # fmt: skip
    changed = {
        **served,
        'relax': {'x': ([None, None], f32)}, 'narrow': {'x': (mat, f32)},
        'unknown_rank': {'x': (vec, f32)}, 'fixed': {'x': ([None, 4], f32)},
        'rank': {'x': ([None, 3, 1], f32)}, 'dtype': {'ids': (vec, tf.int32)},
        'rename': {'features': (mat, f32)}, 'add_input': {'x': (vec, f32), 'w': (vec, f32)},
        'remove_input': {'x': (vec, f32)}, 'new': {'x': (vec, f32)},
    }  # fmt: skip
    del changed['gone']
    root = tmp_path_factory.mktemp('signature_models')
    models = {}
    for name, signatures, score in (
        ('served', served, outputs(f32, lambda: {'label': tf.constant('a')})),
        ('changed', changed, outputs(tf.float64, lambda: {'prob': tf.constant(0.5)})),
    ):
        functions = {key: _signature_fn(inputs) for key, inputs in signatures.items()}
        functions['outputs'] = _signature_fn({'x': (vec, f32)}, score)
        models[name] = str(root / name)
        tf.saved_model.save(tf.Module(), models[name], signatures=functions)
    models['tf1_predict'] = _save_tf1_model(
        str(root / 'tf1_predict'), 'tensorflow/serving/predict', True
    )
    models['tf1_regress'] = _save_tf1_model(
        str(root / 'tf1_regress'), 'tensorflow/serving/regress', False
    )
    return models
