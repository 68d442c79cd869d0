"""Leases: staging left on a bucket by an exporter on another host is cleared, a live one's never.

Both halves run against the real servers (fake-gcs-server, moto). The other host is
a staging name whose owner is not this machine, so only its lease can tell whether
it is alive.
"""

from __future__ import annotations

import json
import time
import uuid

from final_exporter.checks.savedmodel import GRAPH_FILES
from final_exporter.storage.bucket import CLAIMS_DIR, LEASES_DIR, BucketStore, Lease, lease_uri
from final_exporter.storage.stores import client_for

OTHER_HOST_OWNER = 'build-host-elsewhere~4242~987654'


def other_hosts_staging(model_base: str) -> tuple[str, str]:
    """A staging upload (with one object) as an exporter on another host leaves it."""
    name = f'.final-exporter-staging-{uuid.uuid4().hex}~{OTHER_HOST_OWNER}'
    staging = f'{model_base}/{name}'
    client_for(model_base).upload_bytes(b'shard', f'{staging}/variables/variables.index')
    return name, staging


def names_under(model_base: str) -> set[str]:
    return client_for(model_base).children(model_base)


def test_another_hosts_staging_is_removed_only_after_its_lease_expired_by_the_margin(
    bucket_base,
):
    base, _ = bucket_base
    model_base = f'{base}/penguin'
    store = client_for(model_base)
    name, staging = other_hosts_staging(model_base)
    renewed_at = 1_800_000_000.0
    store.upload_bytes(
        json.dumps({'renewed_at': renewed_at, 'lease_seconds': 60.0}).encode(),
        lease_uri(model_base, staging),
    )
    # A claim of the same exporter, whose publish left a version without saved_model.pb.
    store.upload_bytes(b'x', f'{model_base}/1799999999/variables/variables.index')
    store.upload_bytes(
        json.dumps({'staging': staging}).encode(), f'{model_base}/{CLAIMS_DIR}/1799999999'
    )

    within = renewed_at + 60.0 + 600.0  # The lease ran out, but not by the margin yet.
    # The store as an export resolves it: it knows which files mark a version complete.
    at_the_margin = BucketStore(
        store, clock=lambda: within, expiry_margin_seconds=600.0, publish_last=GRAPH_FILES
    )
    assert at_the_margin.remove_abandoned_staging(model_base) == []
    assert name in names_under(model_base)
    assert '1799999999' in names_under(model_base)

    past_it = BucketStore(
        store, clock=lambda: within + 1, expiry_margin_seconds=600.0, publish_last=GRAPH_FILES
    )
    removed = past_it.remove_abandoned_staging(model_base)

    assert set(removed) == {name, '1799999999'}
    left = names_under(model_base)
    assert name not in left and '1799999999' not in left
    assert not store.list(f'{model_base}/{CLAIMS_DIR}')
    assert not store.list(f'{model_base}/{LEASES_DIR}')


def test_a_dead_exporters_claimed_version_is_kept_by_a_store_not_told_what_completes_it(
    bucket_base,
):
    base, _ = bucket_base
    model_base = f'{base}/penguin'
    store = client_for(model_base)
    name, staging = other_hosts_staging(model_base)
    store.upload_bytes(  # Its lease ran out long ago.
        json.dumps({'renewed_at': 1_800_000_000.0, 'lease_seconds': 60.0}).encode(),
        lease_uri(model_base, staging),
    )
    # A dead exporter's claim on a version whose publish may have finished.
    store.upload_bytes(b'x', f'{model_base}/1799999999/variables/variables.index')
    store.upload_bytes(
        json.dumps({'staging': staging}).encode(), f'{model_base}/{CLAIMS_DIR}/1799999999'
    )

    removed = BucketStore(store, clock=lambda: 4e9).remove_abandoned_staging(model_base)

    assert set(removed) == {name, '1799999999'}  # its staging and its claim
    assert store.list(f'{model_base}/1799999999')  # the version itself: kept
    assert not store.list(f'{model_base}/{CLAIMS_DIR}')


def test_a_live_exporters_staging_survives_while_it_refreshes_and_goes_once_it_stops(
    bucket_base,
):
    base, _ = bucket_base
    model_base = f'{base}/penguin'
    store = BucketStore(client_for(model_base), lease_seconds=0.6, expiry_margin_seconds=0.3)
    name, staging = other_hosts_staging(model_base)
    lease = Lease(store, lease_uri(model_base, staging))
    lease.start()
    try:
        # Several lease lengths (and margins) pass; the refreshes keep it alive.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert store.remove_abandoned_staging(model_base) == []
            assert name in names_under(model_base)
            time.sleep(0.2)
    finally:
        lease.stop(delete=False)  # The owner dies: its lease stays, no longer refreshed.

    time.sleep(0.6 + 0.3 + 0.3)
    assert store.remove_abandoned_staging(model_base) == [name]
    assert name not in names_under(model_base)


def test_staging_without_a_lease_from_another_host_is_left_alone(bucket_base):
    base, _ = bucket_base
    model_base = f'{base}/penguin'
    name, _ = other_hosts_staging(model_base)

    store = BucketStore(client_for(model_base), clock=lambda: 4e9, expiry_margin_seconds=0)
    assert store.remove_abandoned_staging(model_base) == []
    assert name in names_under(model_base)
