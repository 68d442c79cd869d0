"""Which object store serves a URI: one client per scheme, created on first use.

A new kind of bucket is one module implementing `ObjectStore` plus its line in
`_STORES`; no other module looks at the scheme.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

from final_exporter.storage.objectstore import SCHEMES, ObjectStore, split_uri

# scheme -> (module, class); imported on first use, so a local export loads no SDK.
_STORES = {
    'gs': ('final_exporter.storage.gcs', 'GCSStore'),
    's3': ('final_exporter.storage.s3', 'S3Store'),
}
assert set(_STORES) == set(SCHEMES)

_stores: dict[str, ObjectStore] = {}


def store_for(uri: str) -> ObjectStore:
    """The store for `uri`'s scheme, created once per process."""
    scheme, _, _ = split_uri(uri)
    if scheme not in _stores:
        module, name = _STORES[scheme]
        _stores[scheme] = getattr(importlib.import_module(module), name)()
    return _stores[scheme]


@contextlib.contextmanager
def override_store(scheme: str, store: ObjectStore) -> Iterator[ObjectStore]:
    """Uses `store` for `scheme://` URIs within the block (a custom backend, or a test's
    fault-injecting wrapper)."""
    previous = _stores.get(scheme)
    _stores[scheme] = store
    try:
        yield store
    finally:
        if previous is None:
            _stores.pop(scheme, None)
        else:
            _stores[scheme] = previous


def reset_stores() -> None:
    """Forgets the cached clients (after the endpoint environment changed)."""
    _stores.clear()
