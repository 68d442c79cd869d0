"""The serving-signature guard against the served version: real models, every store.

The served versions are published by real exports (or copied in, as another tool
would publish them); the new exports are the penguin model re-exported the way
the exporter does it (`tf_export.reexport`) with real `serving_fn`s.
"""

from __future__ import annotations

import collections
import io
import json
import os
import shutil
from typing import Any, BinaryIO

import pytest

from final_exporter.common import keys
from final_exporter.common.errors import BreakingChangeError, InvalidInputError
from final_exporter.core import tf_export
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, ExportResult, run_export
from final_exporter.lifecycle import model_config
from final_exporter.lifecycle.serving_contract import (
    ServedVersion,
    guard_serving_signatures,
    served_version,
)
from final_exporter.storage.base import Versioned
from final_exporter.storage.local import LocalStore
from final_exporter.storage.objectstore import ObjectClient
from final_exporter.storage.stores import client_for, override_client, store_for

from conftest import KERAS_MODEL

LOCAL = store_for('/')
KERAS_SAVED_MODEL = os.path.join(KERAS_MODEL, 'Format-Serving')
DEMO_SERVING_FN = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), 'pipelines', 'penguin_serving.py'
)
RENAMED_INPUT = """
import tensorflow as tf


def serving_fn(loaded):
    predict = loaded.signatures['serving_default']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='serialized')])
    def serving_default(serialized):
        return predict(examples=serialized)

    return {'serving_default': serving_default}
"""
FLOAT64_SCORES = """
import tensorflow as tf


def serving_fn(loaded):
    predict = loaded.signatures['serving_default']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def serving_default(examples):
        return {'output_0': tf.cast(predict(examples=examples)['output_0'], tf.float64)}

    return {'serving_default': serving_default}
"""


@pytest.fixture(scope='session')
def reexports(tmp_path_factory) -> dict[str, str]:
    """The Keras penguin model re-exported as the exporter does, by serving_fn: `classify`
    (the demo's, which adds a `classify` signature), `renamed` (input `examples` ->
    `serialized`), `float64` (scores float32 -> float64)."""
    root = tmp_path_factory.mktemp('reexports')
    (root / 'renamed.py').write_text(RENAMED_INPUT)
    (root / 'float64.py').write_text(FLOAT64_SCORES)
    modules = {
        'classify': DEMO_SERVING_FN,
        'renamed': str(root / 'renamed.py'),
        'float64': str(root / 'float64.py'),
    }
    for name, module in modules.items():
        tf_export.reexport(KERAS_SAVED_MODEL, str(root / name), f'{module}:serving_fn')
    return {name: str(root / name) for name in modules}


def publish(model: str, export_base: str, **config: Any) -> ExportResult:
    """A real export of `model` to `<export_base>/penguin` (copy only, no blessing needed)."""
    result = run_export(
        ExportRequest(
            config=ExportConfig(
                name='penguin',
                export_base=export_base,
                require_blessing=False,
                smoke_test=False,
                **config,
            ),
            model_uri=model,
        )
    )
    assert result.pushed, result.reason
    return result


def guard(new_dir: str, model_base: str, store=None, allow: bool = False) -> dict[str, Any]:
    return guard_serving_signatures(
        new_dir, LOCAL, model_base, store, allow_breaking_changes=allow, model_name='penguin'
    )


def test_the_demo_serving_fn_reexport_is_compatible_with_the_plain_export(export_base, reexports):
    served = publish(KERAS_MODEL, export_base)

    lineage = guard(reexports['classify'], served.model_base)

    record = lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['status'] == 'compatible'
    assert record['compared_with'] == {
        'version': served.version,
        'label': None,
        'path': served.export_dir,
        'graph_file': 'saved_model.pb',
    }
    assert [(c['kind'], c['signature']) for c in record['compatible_changes']] == [
        ('signature_added', 'classify')
    ]
    assert record['breaks'] == []
    assert keys.SIGNATURE_BREAKS_LINEAGE_KEY not in lineage


def test_exporting_the_same_model_again_is_unchanged(export_base):
    served = publish(KERAS_MODEL, export_base)

    record = guard(KERAS_SAVED_MODEL, served.model_base)[keys.SIGNATURE_DIFF_LINEAGE_KEY]

    assert record['status'] == 'unchanged'
    assert record['breaks'] == record['compatible_changes'] == []


def test_a_reexport_with_a_renamed_input_fails_naming_the_input(export_base, reexports):
    served = publish(KERAS_MODEL, export_base)

    with pytest.raises(BreakingChangeError) as failed:
        guard(reexports['renamed'], served.model_base)

    message = str(failed.value)
    assert f'version {served.version} (the newest)' in message
    assert "input 'examples' renamed to 'serialized' (string (None,))" in message
    assert 'allow_breaking_changes=True' in message and 'Nothing was published' in message
    assert isinstance(failed.value, InvalidInputError)  # Exit code 2, like any bad input.
    refused = failed.value.lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]  # For --json and the logs.
    assert refused['status'] == 'breaking' and refused['allow_breaking_changes'] is False
    assert failed.value.lineage[keys.SIGNATURE_BREAKS_LINEAGE_KEY] == refused['breaks']


def test_a_reexport_with_a_changed_dtype_fails_naming_both_dtypes(export_base, reexports):
    served = publish(KERAS_MODEL, export_base)

    with pytest.raises(BreakingChangeError, match='1 breaking change to') as failed:
        guard(reexports['float64'], served.model_base)

    assert (
        "signature 'serving_default': output 'output_0' dtype changed float32 -> float64 "
        '(shape (None, 3))'
    ) in str(failed.value)


def test_allowed_breaking_changes_are_recorded_under_a_break_key(export_base, reexports):
    served = publish(KERAS_MODEL, export_base)

    lineage = guard(reexports['renamed'], served.model_base, allow=True)

    breaks = lineage[keys.SIGNATURE_BREAKS_LINEAGE_KEY]
    assert [(b['kind'], b['name'], b['new_name']) for b in breaks] == [
        ('input_renamed', 'examples', 'serialized')
    ]
    record = lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['status'] == 'breaking' and record['allow_breaking_changes'] is True
    assert record['breaks'] == breaks
    assert json.loads(json.dumps(lineage)) == lineage  # As MLMD properties and --json carry it.


def test_the_first_export_to_an_empty_base_has_nothing_to_compare(export_base, reexports):
    model_base = os.path.join(export_base, 'penguin')

    lineage = guard(reexports['renamed'], model_base)

    record = lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['status'] == 'nothing_to_compare'
    assert record['compared_with'] is None
    assert record['reason'] == f'no version under {model_base!r} yet'
    assert keys.SIGNATURE_BREAKS_LINEAGE_KEY not in lineage
    assert not os.path.exists(export_base)  # The guard writes nothing.


def test_the_stable_label_wins_over_the_newest_version(export_base, reexports):
    plain = publish(KERAS_MODEL, export_base)
    # A break the export guard lets through only when allowed (test_signature_guard_export.py).
    renamed = publish(reexports['renamed'], export_base, allow_breaking_changes=True)
    model_base = plain.model_base

    assert served_version(model_base) == ServedVersion(renamed.version, renamed.export_dir, None)
    model_config.set_label(model_base, plain.version, 'stable', force=True)
    assert served_version(model_base) == ServedVersion(plain.version, plain.export_dir, 'stable')

    # Clients of `stable` send `examples`: the re-export that renames it breaks them,
    # though the newest version already has `serialized`.
    with pytest.raises(BreakingChangeError, match=rf'version {plain.version} \(labelled stable\)'):
        guard(reexports['renamed'], model_base)


def test_an_as_text_served_version_is_compared_through_its_pbtxt(export_base, reexports):
    served = publish(KERAS_MODEL, export_base, as_text=True)

    with pytest.raises(BreakingChangeError, match="input 'examples' renamed"):
        guard(reexports['renamed'], served.model_base)
    record = guard(reexports['classify'], served.model_base)[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert record['compared_with']['graph_file'] == 'saved_model.pbtxt'
    assert record['status'] == 'compatible'


def test_a_version_another_tool_published_is_compared_and_every_break_named(
    export_base, signature_models
):
    # A Pusher-style version: the SavedModel alone, no manifest; a server loads it.
    model_base = os.path.join(export_base, 'penguin')
    shutil.copytree(signature_models['served'], os.path.join(model_base, '5'))

    with pytest.raises(BreakingChangeError) as failed:
        guard(signature_models['changed'], model_base)

    message = str(failed.value)
    assert '11 breaking changes' in message
    for expected in (
        "signature 'gone' removed",
        "input 'x' renamed to 'features'",
        "input 'ids' dtype changed int64 -> int32",
        "input 'x' shape narrowed (None, None) -> (None, 3)",
        "output 'label' removed",
        "output 'score' dtype changed float32 -> float64",
    ):
        assert expected in message
    assert 'relax' not in message and "'new'" not in message  # Compatible: not named.


def test_an_unreadable_served_graph_is_recorded_not_compared(export_base, reexports):
    served = publish(KERAS_MODEL, export_base)
    with open(os.path.join(served.export_dir, keys.SAVED_MODEL_PB), 'r+b') as f:
        f.truncate(100)

    record = guard(reexports['renamed'], served.model_base)[keys.SIGNATURE_DIFF_LINEAGE_KEY]

    assert record['status'] == 'not_compared'
    assert record['compared_with']['version'] == served.version
    assert 'truncated or corrupt' in record['reason']


# --- Only the served version's graph file is read -------------------------------------


class CountingLocalStore(LocalStore):
    """The real local store, counting the bytes each read takes from each file."""

    def __init__(self) -> None:
        super().__init__(source_clients=client_for)
        self.read: collections.Counter = collections.Counter()

    def read_bytes(self, path: str) -> bytes:
        data = super().read_bytes(path)
        self.read[path] += len(data)
        return data

    def read_versioned(self, path: str) -> Versioned:
        current = super().read_versioned(path)
        self.read[path] += len(current.data or b'')
        return current

    def digest_file(self, path, kind, chunk_bytes):
        size, digest = super().digest_file(path, kind, chunk_bytes)
        self.read[path] += size
        return size, digest

    def download(self, path, local_path, progress=None):
        entry = super().download(path, local_path, progress)
        self.read[path] += entry.size
        return entry

    def local_tree(self, root):
        for rel, size in self.list_files(root).items():  # Handed over whole.
            self.read[os.path.join(root, rel)] += size
        return super().local_tree(root)


class _CountingReader(io.RawIOBase):
    def __init__(self, inner: BinaryIO, count) -> None:
        self._inner, self._count = inner, count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._count(len(data))
        return data

    def close(self) -> None:
        self._inner.close()
        super().close()


class CountingClient(ObjectClient):
    """A fault-free wrapper around a real object client: counts the bytes read per object."""

    def __init__(self, real: ObjectClient) -> None:
        self._real = real
        self.scheme = real.scheme
        self.read: collections.Counter = collections.Counter()

    def read_with_token(self, uri):
        current = self._real.read_with_token(uri)
        self.read[uri] += len(current.data or b'')
        return current

    def open_read(self, uri, token=None):
        def count(n: int) -> None:
            self.read[uri] += n

        return _CountingReader(self._real.open_read(uri, token), count)

    def put_if_token(self, uri, data, token):
        return self._real.put_if_token(uri, data, token)

    def upload_file(self, local_path, uri, progress):
        return self._real.upload_file(local_path, uri, progress)

    def upload_bytes(self, data, uri, *, overwrite=False):
        return self._real.upload_bytes(data, uri, overwrite=overwrite)

    def list(self, prefix_uri):
        return self._real.list(prefix_uri)

    def children(self, prefix_uri):
        return self._real.children(prefix_uri)

    def copy(self, src_uri, dst_uri, src_token=None):
        return self._real.copy(src_uri, dst_uri, src_token)

    def delete(self, uris):
        return self._real.delete(uris)

    def stat(self, uri):
        return self._real.stat(uri)


def test_only_the_served_saved_model_pb_is_read_locally(export_base, reexports):
    served = publish(KERAS_MODEL, export_base)
    store = CountingLocalStore()

    guard(reexports['classify'], served.model_base, store)

    graph = os.path.join(served.export_dir, keys.SAVED_MODEL_PB)
    assert dict(store.read) == {graph: os.path.getsize(graph)}
    variables = store.list_files(os.path.join(served.export_dir, 'variables'))
    assert sum(variables.values()) > 0  # There were variables not to read.


def test_only_the_served_saved_model_pb_is_read_on_buckets(bucket_base, reexports):
    base, _ = bucket_base
    first = guard(reexports['classify'], f'{base}/penguin')[keys.SIGNATURE_DIFF_LINEAGE_KEY]
    assert first['status'] == 'nothing_to_compare'
    served = publish(KERAS_MODEL, base)
    scheme = base.split('://')[0]
    counting = CountingClient(client_for(base))

    with override_client(scheme, counting):
        lineage = guard(reexports['classify'], served.model_base, store_for(served.model_base))

    assert lineage[keys.SIGNATURE_DIFF_LINEAGE_KEY]['status'] == 'compatible'
    graph = f'{served.export_dir}/{keys.SAVED_MODEL_PB}'
    in_version = {u: n for u, n in counting.read.items() if u.startswith(served.export_dir + '/')}
    assert in_version == {graph: store_for(base).size(graph)}
    others = set(counting.read) - set(in_version)
    assert others <= {f'{served.model_base}/{model_config.CONFIG_FILENAME}'}
