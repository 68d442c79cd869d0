"""Which store serves a path: the local store for a path, the bucket store of a URI's scheme.

The only place that looks at the kind of a path. A new kind of bucket is one
client module plus its line in `_CLIENTS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading
from collections.abc import Iterator

from final_exporter.storage.base import ModelBase, Store
from final_exporter.storage.local import LocalStore
from final_exporter.storage.objectstore import SCHEMES, ObjectClient, is_object_store_uri, split_uri
from final_exporter.storage.transfer import ThreadedCopier
from final_exporter.storage.transfer_config import DEFAULT_TRANSFER, TransferConfig
from final_exporter.storage.types import Copier

# scheme -> (module, class) of its client; imported on first use, so a local export
# loads neither SDK.
_CLIENTS = {
    'gs': ('final_exporter.storage.gcs', 'GCSClient'),
    's3': ('final_exporter.storage.s3', 'S3Client'),
}
assert set(_CLIENTS) == set(SCHEMES)
# Operators can shorten the lease (and so how soon another host may clear a dead
# exporter's leftovers); the margin after it is the bucket store's.
LEASE_ENV = 'FINAL_EXPORTER_LEASE_SECONDS'

_clients: dict[str, ObjectClient] = {}
_clients_lock = threading.Lock()


def client_for(uri: str) -> ObjectClient:
    """The SDK client for `uri`'s scheme, created once per process."""
    scheme, _, _ = split_uri(uri)
    with _clients_lock:
        if scheme not in _clients:
            module, name = _CLIENTS[scheme]
            _clients[scheme] = getattr(importlib.import_module(module), name)()
        return _clients[scheme]


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """What only the caller knows about how a store it writes an export to should work.

    Attributes:
        publish_last: Relative paths copied and published after every other file
            and removed before them: the files whose presence tells a loader a
            version is complete (the core passes a SavedModel's graph files).
        transfer: The local copy's method, threads and tuning; its `workers` also
            sizes a bucket's transfer pool.
        copier: Makes a local store's copies (the Beam fan-out); a thread pool
            with `transfer` when None.
    """

    publish_last: tuple[str, ...] = ()
    transfer: TransferConfig = DEFAULT_TRANSFER
    copier: Copier | None = None


def store_for(path: str, options: StoreOptions | None = None) -> Store:
    """The store holding `path`: a local folder tree, or the bucket store of its scheme.

    Without `options`, a store to read with (and to label, list or verify).
    """
    if not is_object_store_uri(path):
        if options is None:
            return _LOCAL
        return LocalStore(
            source_clients=client_for,
            copier=options.copier or ThreadedCopier(options.transfer),
        )
    # Only for a bucket: a local export's start-up loads none of the bucket protocol.
    from final_exporter.storage.bucket import LEASE_SECONDS, BucketStore

    options = options or StoreOptions()
    return BucketStore(
        client_for(path),
        lease_seconds=float(os.environ.get(LEASE_ENV) or LEASE_SECONDS),
        source_clients=client_for,
        workers=options.transfer.workers,
        publish_last=options.publish_last,
    )


def resolve_model_base(
    model_base: str | ModelBase, options: StoreOptions | None = None
) -> ModelBase:
    """`model_base` with its store, resolved here once (as it is when already a ModelBase)."""
    if isinstance(model_base, ModelBase):
        return model_base
    return ModelBase(store_for(model_base, options), model_base)


_LOCAL = LocalStore(source_clients=client_for)


def same_store(a: str, b: str) -> bool:
    """Whether two paths are on one store (a server-side copy or a rename can join them)."""
    if is_object_store_uri(a) != is_object_store_uri(b):
        return False
    return not is_object_store_uri(a) or split_uri(a)[0] == split_uri(b)[0]


@contextlib.contextmanager
def override_client(scheme: str, client: ObjectClient) -> Iterator[ObjectClient]:
    """Uses `client` for `scheme://` URIs within the block (a custom backend, or a test's
    fault-injecting wrapper)."""
    with _clients_lock:
        previous = _clients.get(scheme)
        _clients[scheme] = client
    try:
        yield client
    finally:
        with _clients_lock:
            if previous is None:
                _clients.pop(scheme, None)
            else:
                _clients[scheme] = previous


def reset_stores() -> None:
    """Forgets the cached clients (after the endpoint environment changed)."""
    with _clients_lock:
        _clients.clear()


def list_versions(model_base: str) -> list[int]:
    """The numeric versions under `model_base` (a folder or a bucket prefix), ascending."""
    return store_for(model_base).list_versions(model_base)
