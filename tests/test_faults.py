"""The promises under attack: kills, races, injected I/O faults, full disks, leaks.

Default runs are sized for CI; `FINAL_EXPORTER_SOAK=N` multiplies the kill and
fault loops by N for a longer soak.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, run_export
from final_exporter.storage.local import STAGING_PREFIX
from final_exporter.storage.objectstore import ObjectClient, split_uri
from final_exporter.storage.stores import client_for, list_versions, override_client
from final_exporter.storage.verify import verify_export

from conftest import KERAS_MODEL, published_versions

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')
SOAK = int(os.environ.get('FINAL_EXPORTER_SOAK', '1'))


@pytest.fixture(scope='module')
def medium_model(tmp_path_factory) -> str:
    """The penguin model plus 48 MB of variables-like data, so a copy takes a while."""
    model = tmp_path_factory.mktemp('medium') / 'model'
    shutil.copytree(os.path.join(KERAS_MODEL, 'Format-Serving'), model)
    os.makedirs(model / 'assets', exist_ok=True)
    for i in range(6):
        with open(model / 'assets' / f'table-{i}.bin', 'wb') as f:
            f.write(os.urandom(8 * 1024 * 1024))
    return str(model)


def export_cmd(model: str, base: str, *extra: str) -> list[str]:
    return [CLI, 'export', '--model', model, '--export-base', base, '--name', 'm',
            '--no-require-blessing', '--no-smoke-test', '--json', *extra]  # fmt: skip


def assert_only_complete_versions(model_base: str, tally=None) -> None:
    """Every version a server could load is complete: all local ones verify; on object
    stores every version holding saved_model.pb verifies (one without it is not loadable)."""
    remote = model_base.startswith(('gs://', 's3://'))
    for v in list_versions(model_base):
        export_dir = f'{model_base}/{v}'
        if remote and not client_for(export_dir).exists(f'{export_dir}/saved_model.pb'):
            continue
        report = verify_export(export_dir)
        assert report.ok, f'version {v} is visible but incomplete: {report.problems()}'
        if tally is not None:
            tally['version_checks_after_faults'] += 1


def kill_during_exports(cmd, env, model_base, kills: int, span: float, tally) -> None:
    """Starts the export `kills` times, each killed (SIGKILL) at a different moment."""
    for i in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(span * (i + 0.5) / kills)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tally['sigkills' + ('_object_store' if '://' in model_base else '_local')] += 1
        assert_only_complete_versions(model_base, tally)


def timed_run(cmd, env) -> tuple[float, dict]:
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return time.monotonic() - start, json.loads(out)


def test_sigkill_at_any_moment_leaves_only_complete_versions_locally(medium_model, tmp_path, tally):
    base = str(tmp_path / 'serving')
    model_base = f'{base}/m'
    cmd = export_cmd(medium_model, base)
    span, _ = timed_run(cmd, dict(os.environ))

    kill_during_exports(
        cmd, dict(os.environ), model_base, kills=8 * SOAK, span=span * 1.2, tally=tally
    )

    before = published_versions(model_base)
    _, result = timed_run(cmd, dict(os.environ))
    assert published_versions(model_base) == sorted([*before, str(result['version'])])
    assert_only_complete_versions(model_base)
    # The next run removed every staging folder the killed exporters left.
    assert [n for n in os.listdir(model_base) if n.startswith(STAGING_PREFIX)] == []


def test_sigkill_then_retry_on_object_stores(bucket_base, medium_model, tally):
    base, server_env = bucket_base
    env = {**os.environ, **server_env}
    model_base = f'{base}/m'
    cmd = export_cmd(medium_model, base, '--idempotency-key', 'pipeline/run-1/FinalExporter')
    span, first = timed_run(export_cmd(medium_model, base), env)

    kill_during_exports(cmd, env, model_base, kills=4 * SOAK, span=span * 1.2, tally=tally)
    _, retried = timed_run(cmd, env)
    _, again = timed_run(cmd, env)

    assert again['version'] == retried['version'], 'a retry published a second version'
    assert not any('staging' in o for o in client_for(model_base).list(model_base))
    tally['retries_deduplicated'] += 1
    versions = list_versions(model_base)
    assert versions[0] == first['version'] and retried['version'] in versions
    for v in versions:
        assert verify_export(f'{model_base}/{v}').ok


def test_retry_after_a_completed_export_publishes_nothing_new(medium_model, tmp_path):
    base = str(tmp_path / 'serving')
    cmd = export_cmd(medium_model, base, '--idempotency-key', 'p/run-9/FinalExporter')

    _, first = timed_run(cmd, dict(os.environ))
    _, retry = timed_run(cmd, dict(os.environ))

    assert retry['version'] == first['version']
    assert 'already exported by this execution' in retry['reason']
    assert published_versions(f'{base}/m') == [str(first['version'])]


def test_eight_racing_exporters_and_a_lister_never_see_a_partial_version(
    medium_model, tmp_path, tally
):
    base = str(tmp_path / 'serving')
    model_base = f'{base}/m'
    seen: list[int] = []
    stop = threading.Event()

    def lister():
        while not stop.is_set():
            for v in list_versions(model_base):
                assert verify_export(f'{model_base}/{v}', rehash=False).ok
                seen.append(v)

    watcher = threading.Thread(target=lister)
    watcher.start()
    procs = [subprocess.Popen(export_cmd(medium_model, base), stdout=subprocess.PIPE, text=True)
             for _ in range(8)]  # fmt: skip
    versions = [json.loads(p.communicate(timeout=600)[0])['version'] for p in procs]
    stop.set()
    watcher.join()

    assert len(set(versions)) == 8
    assert list_versions(model_base) == sorted(versions)
    assert seen, 'the lister never ran while versions were published'
    tally['racing_exporters'] += 8
    tally['listings_during_races'] += len(seen)


def test_eight_racing_exporters_on_object_stores(bucket_base, model_uri, tally):
    base, server_env = bucket_base
    env = {**os.environ, **server_env}
    procs = [
        subprocess.Popen(export_cmd(model_uri, base), stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(8)
    ]
    versions = [json.loads(p.communicate(timeout=600)[0])['version'] for p in procs]

    assert len(set(versions)) == 8
    assert list_versions(f'{base}/m') == sorted(versions)
    assert_only_complete_versions(f'{base}/m', tally)
    tally['racing_exporters'] += 8


class FaultyClient(ObjectClient):
    """Delegates to a real client, failing exactly the `fail_at`-th call (1-based)."""

    def __init__(self, real: ObjectClient, fail_at: int):
        self.scheme = real.scheme
        self._real = real
        self._fail_at = fail_at
        self.calls = 0
        self._lock = threading.Lock()

    def _call(self, name, *args, **kwargs):
        with self._lock:
            self.calls += 1
            fail = self.calls == self._fail_at
        if fail:
            raise OSError(f'injected fault in {name} (call {self._fail_at})')
        return getattr(self._real, name)(*args, **kwargs)

    def read_with_token(self, uri):
        return self._call('read_with_token', uri)

    def put_if_token(self, uri, data, token):
        return self._call('put_if_token', uri, data, token)

    def upload_file(self, local_path, uri, progress):
        return self._call('upload_file', local_path, uri, progress)

    def upload_bytes(self, data, uri, *, overwrite=False):
        return self._call('upload_bytes', data, uri, overwrite=overwrite)

    def list(self, prefix_uri):
        return self._call('list', prefix_uri)

    def children(self, prefix_uri):
        return self._call('children', prefix_uri)

    def copy(self, src_uri, dst_uri, src_token=None):
        return self._call('copy', src_uri, dst_uri, src_token)

    def delete(self, uris):
        return self._call('delete', list(uris))

    def open_read(self, uri, token=None):
        return self._call('open_read', uri, token)

    def stat(self, uri):
        return self._call('stat', uri)


def test_failing_each_object_store_call_in_turn_never_publishes_a_partial_version(
    bucket_base, model_uri, tally
):
    base, _ = bucket_base
    scheme, _, _ = split_uri(base)
    real = client_for(base)
    failed = 0
    for fail_at in range(1, 200):
        name = f'm{fail_at}'  # A fresh model base per attempt keeps the checks independent.
        request = ExportRequest(
            config=ExportConfig(
                name=name, export_base=base, require_blessing=False, smoke_test=False
            ),
            model_uri=model_uri,
        )
        with override_client(scheme, FaultyClient(real, fail_at)) as faulty:
            try:
                result = run_export(request, workers=1)
            except OSError as e:
                assert 'injected fault' in str(e)
                failed += 1
                tally['io_faults_injected'] += 1
                with override_client(scheme, real):
                    assert list_versions(f'{base}/{name}') == [], f'a version after fault {fail_at}'
                continue
        # Succeeded: either no call failed (done), or the fault hit the best-effort
        # cleanup after publishing; the published version must be whole either way.
        with override_client(scheme, real):
            assert list_versions(f'{base}/{name}') == [result.version]
            assert verify_export(result.export_dir).ok
        if faulty.calls < fail_at:
            break
    else:
        pytest.fail('the export never completed')
    assert failed >= 10


@contextlib.contextmanager
def small_filesystem(path, size_kb: int):
    """A tiny tmpfs at `path`; where mounting is not allowed, RLIMIT_FSIZE plays the full disk."""
    os.makedirs(path)
    mounted = subprocess.run(
        ['mount', '-t', 'tmpfs', '-o', f'size={size_kb}k', 'tmpfs', str(path)],
        capture_output=True,
    )
    if mounted.returncode == 0:
        try:
            yield None
        finally:
            subprocess.run(['umount', str(path)], check=True)
    else:

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, size_kb * 1024))

        yield limit


def test_full_export_base_fails_cleanly_with_nothing_published(medium_model, tmp_path):
    base = tmp_path / 'full'
    with small_filesystem(base, size_kb=4096) as preexec:
        run = subprocess.run(
            export_cmd(medium_model, str(base)), capture_output=True, text=True, preexec_fn=preexec
        )
        assert run.returncode == 1, run.stdout + run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and 'failed' in lines[0], run.stderr
        # Nothing left: no version, no staging, not even the folder the export made.
        assert not (base / 'm').exists()


def test_export_base_that_cannot_be_a_folder_is_refused(model_uri, tmp_path):
    afile = tmp_path / 'not-a-folder'
    afile.write_text('x')

    run = subprocess.run(export_cmd(model_uri, str(afile / 'base')), capture_output=True, text=True)

    assert run.returncode == 2
    assert 'cannot write to the export folder' in run.stderr


LEAK_CHECK = """
import contextlib, json, os, sys, threading
from final_exporter import ExportConfig, ExportRequest, run_export
request = ExportRequest(
    config=ExportConfig(name='m', export_base=sys.argv[2], require_blessing=False,
                        serving_fn=sys.argv[3]),
    model_uri=sys.argv[1],
)
def failing_export():
    with contextlib.suppress(RuntimeError):
        run_export(request)
failing_export()  # Warms up TensorFlow's own threads and handles once.
before = (len(os.listdir('/proc/self/fd')), threading.active_count())
for _ in range(5):
    failing_export()
print(json.dumps([before, (len(os.listdir('/proc/self/fd')), threading.active_count())]))
"""


def test_failed_exports_release_file_handles_and_threads(model_uri, tmp_path):
    bad = tmp_path / 'bad_serving.py'
    bad.write_text('def serving_fn(loaded):\n    raise RuntimeError("boom")\n')

    # A fresh process: no other test's clients or servers add threads meanwhile.
    run = subprocess.run(
        [sys.executable, '-c', LEAK_CHECK, model_uri, str(tmp_path / 's'), f'{bad}:serving_fn'],
        capture_output=True,
        text=True,
        check=True,
    )

    before, after = json.loads(run.stdout.strip().splitlines()[-1])
    assert after == before, 'open files and threads grew over failed exports'


@pytest.mark.parametrize(
    'name', ['', '.', '..', 'a/b', 'a\\b', 'a\x00b', 'x' * 256, 'tab\tname', 'new\nline']
)
def test_hostile_names_are_refused_before_anything_is_written(tmp_path, name, tally):
    with pytest.raises(InvalidInputError):
        ExportConfig(name=name, export_base=str(tmp_path))
    assert os.listdir(tmp_path) == []
    tally['bad_inputs_refused'] += 1


def test_odd_but_valid_unicode_name_stays_one_folder(model_uri, tmp_path):
    name = 'modèle-ß-模型'
    base = tmp_path / 'serving'
    result = run_export(
        ExportRequest(
            config=ExportConfig(
                name=name, export_base=str(base), require_blessing=False, smoke_test=False
            ),
            model_uri=model_uri,
        )
    )

    assert os.listdir(base) == [name]
    assert result.export_dir == os.path.join(str(base), name, str(result.version))
    assert keys.MANIFEST_FILENAME in os.listdir(os.path.join(result.export_dir, 'assets.extra'))
