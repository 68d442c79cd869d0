"""The whole lifecycle on every store: a local folder, gs:// and s3:// (real servers on loopback).

One suite, parametrised over the stores, for what the storage interface promises:
export, retention, labels, rollback, list and verify, concurrent label writers,
and models read straight from a bucket (server-side copies on the same store).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid

import pytest

from final_exporter.common import keys
from final_exporter.core.blessing import blessing_from_folder
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.lifecycle import model_config
from final_exporter.storage.bucket import LEASES_DIR
from final_exporter.storage.manifest import CHUNK_BYTES, entry_from_chunks
from final_exporter.storage.stores import client_for, list_versions, override_client, store_for
from final_exporter.storage.verify import verify_export

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


def new_bucket(request, scheme: str) -> tuple[str, dict[str, str]]:
    """A fresh bucket on the loopback server of `scheme`: ('scheme://bucket/models', env)."""
    env = request.getfixturevalue('gcs_server' if scheme == 'gs' else 's3_server')
    bucket = f'models-{uuid.uuid4().hex[:12]}'
    if scheme == 'gs':
        from google.cloud import storage

        storage.Client().create_bucket(bucket)
    else:
        import boto3

        boto3.client('s3').create_bucket(Bucket=bucket)
    return f'{scheme}://{bucket}/models', env


@pytest.fixture(params=['local', 'gs', 's3'])
def any_base(request, tmp_path) -> tuple[str, dict[str, str]]:
    """An empty export base on each store: (base, the environment that reaches it)."""
    if request.param == 'local':
        return str(tmp_path / 'serving'), {}
    return new_bucket(request, request.param)


def export(model_uri, base, make_blessing, **config) -> ExportResult:
    blessing = blessing_from_folder(keys.MODEL_BLESSING_KEY, make_blessing(blessed=True))
    return run_export(
        ExportRequest(
            config=ExportConfig(name='penguin', export_base=base, **config),
            model_uri=model_uri,
            blessings=[blessing],
        )
    )


def upload_tree(local_dir: str, prefix: str) -> str:
    """Puts a local model folder into a bucket, as a trainer writing to gs:// would."""
    client = client_for(prefix)
    for dirpath, _, filenames in os.walk(local_dir):
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, '/')
            client.upload_file(path, f'{prefix}/{rel}', None)
    return prefix


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )


def test_retention_keeps_the_newest_and_the_labelled_version_on_every_store(
    any_base, model_uri, make_blessing
):
    base, _ = any_base
    model_base = f'{base.rstrip("/")}/penguin'
    first = export(model_uri, base, make_blessing, smoke_test=False, label='stable')
    versions = [first.version]
    for _ in range(3):
        versions.append(
            export(model_uri, base, make_blessing, smoke_test=False, exports_to_keep=2).version
        )

    # The newest two stay, and so does the labelled first one; the rest are gone whole.
    assert list_versions(model_base) == [versions[0], *versions[-2:]]
    assert model_config.labels(model_base) == {'stable': versions[0]}
    store = store_for(model_base)
    assert not store.list_files(store.join(model_base, str(versions[1])))
    for version in list_versions(model_base):
        assert verify_export(store.join(model_base, str(version))).ok


def test_label_and_rollback_write_models_config_beside_the_versions_on_every_store(
    any_base, model_uri, make_blessing
):
    base, env = any_base
    model_base = f'{base.rstrip("/")}/penguin'
    old, new = (export(model_uri, base, make_blessing, smoke_test=False) for _ in range(2))

    labelled = cli(env, 'label', model_base, str(new.version), 'stable', '--force')
    assert labelled.returncode == 0, labelled.stderr
    store = store_for(model_base)
    text = store.read_bytes(store.join(model_base, model_config.CONFIG_FILENAME)).decode()
    assert f'value: {new.version}' in text and 'base_path: "' + store.absolute(model_base) in text

    rolled = cli(env, 'rollback', model_base, '--label', 'stable', '--force')
    assert rolled.returncode == 0, rolled.stderr
    assert model_config.labels(model_base) == {'stable': old.version}


def test_two_concurrent_label_writers_never_lose_an_update_on_every_store(
    any_base, model_uri, make_blessing
):
    base, _ = any_base
    model_base = f'{base.rstrip("/")}/penguin'
    version = export(model_uri, base, make_blessing, smoke_test=False).version
    labels = [f'team{i}' for i in range(8)]
    start = threading.Barrier(len(labels))

    def label(name: str) -> None:
        start.wait()
        model_config.set_label(model_base, version, name, verify=False, force=True)

    with concurrent.futures.ThreadPoolExecutor(len(labels)) as pool:
        list(pool.map(label, labels))

    assert model_config.labels(model_base) == dict.fromkeys(labels, version)


def test_list_and_verify_take_every_store(any_base, model_uri, make_blessing):
    base, env = any_base
    model_base = f'{base.rstrip("/")}/penguin'
    result = export(model_uri, base, make_blessing, smoke_test=False)

    listed = cli(env, 'list', model_base, '--json')
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert (row['version'], row['manifest_sha256']) == (result.version, result.manifest_sha256)
    verified = cli(env, 'verify', result.export_dir)
    assert verified.returncode == 0, verified.stderr


@pytest.mark.parametrize('smoke_test', [False, True])
def test_a_model_in_a_bucket_is_exported_without_a_mount_to_every_store(
    bucket_base, any_base, model_uri, make_blessing, smoke_test
):
    source_bucket, _ = bucket_base
    source = upload_tree(model_uri, f'{source_bucket}-trainer/model/7')
    base, _ = any_base

    result = export(source, base, make_blessing, smoke_test=smoke_test)

    assert result.pushed, result.reason
    report = verify_export(result.export_dir)
    assert report.ok, report.problems()
    local = export(model_uri, f'{base}-from-local', make_blessing, smoke_test=False)
    files = {f['path']: f['sha256'] for f in result.manifest['files']}
    assert files == {f['path']: f['sha256'] for f in local.manifest['files']}
    if smoke_test:
        assert result.lineage['smoke_test']['passed'] is True


def test_a_file_over_one_chunk_in_a_bucket_model_keeps_its_chunked_digest_in_a_local_export(
    bucket_base, model_uri, make_blessing, tmp_path
):
    source_bucket, _ = bucket_base
    model = tmp_path / 'model'
    shutil.copytree(model_uri, model)
    saved_model = next(p.parent for p in model.rglob('saved_model.pb'))
    big = os.urandom(CHUNK_BYTES + 5)
    (saved_model / 'assets' / 'big.bin').parent.mkdir(exist_ok=True)
    (saved_model / 'assets' / 'big.bin').write_bytes(big)
    source = upload_tree(str(model), f'{source_bucket}-trainer/model/8')

    result = export(source, str(tmp_path / 'serving'), make_blessing, smoke_test=False)

    entry = next(f for f in result.manifest['files'] if f['path'] == 'assets/big.bin')
    assert entry['chunked_sha256'] == entry_from_chunks(
        'assets/big.bin', len(big), [hashlib.sha256(big[:CHUNK_BYTES]).digest(),
                                     hashlib.sha256(big[CHUNK_BYTES:]).digest()],
    ).chunked_sha256  # fmt: skip
    report = verify_export(result.export_dir, rehash=True)
    assert report.ok, report.problems()


class CountingClient:
    """Wraps a real client and counts the bytes this process uploads through it, its
    server-side copies and the objects it reads whole."""

    def __init__(self, real) -> None:
        self._real = real
        self.uploaded = 0
        self.copies = 0
        self.read: list[str] = []

    def read_with_token(self, uri):
        self.read.append(uri)
        return self._real.read_with_token(uri)

    def upload_file(self, local_path, uri, progress):
        self.uploaded += os.path.getsize(local_path)
        return self._real.upload_file(local_path, uri, progress)

    def upload_bytes(self, data, uri, **kwargs):
        if LEASES_DIR not in uri:  # Leases are bookkeeping, refreshed while the export runs.
            self.uploaded += len(data)
        return self._real.upload_bytes(data, uri, **kwargs)

    def copy(self, src, dst, src_token=None):
        self.copies += 1
        return self._real.copy(src, dst, src_token)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_bucket_models_graph_is_downloaded_once_for_its_structure_and_its_signatures(
    bucket_base, model_uri, make_blessing
):
    base, _ = bucket_base
    scheme = base.split('://')[0]
    source = upload_tree(model_uri, f'{base}-trainer/model/7')
    served = export(source, base, make_blessing, smoke_test=False)
    counting = CountingClient(client_for(base))

    with override_client(scheme, counting):
        result = export(source, base, make_blessing, smoke_test=False)

    assert result.pushed, result.reason
    assert result.lineage['serving_signature_diff']['status'] == 'unchanged'
    graphs = [u for u in counting.read if u.endswith(f'/{keys.SAVED_MODEL_PB}')]
    # The served version's, to compare with, and the source's, once.
    assert sorted(graphs) == sorted([
        f'{served.export_dir}/{keys.SAVED_MODEL_PB}',
        f'{source}/Format-Serving/{keys.SAVED_MODEL_PB}',
    ])  # fmt: skip


def test_same_store_exports_copy_server_side_and_upload_only_the_manifest(
    bucket_base, model_uri, make_blessing
):
    base, _ = bucket_base
    scheme = base.split('://')[0]
    source = upload_tree(model_uri, f'{base}-trainer/model/7')
    counting = CountingClient(client_for(base))

    with override_client(scheme, counting):
        result = export(source, base, make_blessing, smoke_test=False)

    assert result.pushed, result.reason
    manifest_size = len(store_for(base).read_bytes(f'{result.export_dir}/{keys.MANIFEST_RELPATH}'))
    assert counting.uploaded == manifest_size  # No model byte was sent by this process.
    assert counting.copies >= 2 * result.file_count  # Into staging, then into the version.
    assert verify_export(result.export_dir).ok
