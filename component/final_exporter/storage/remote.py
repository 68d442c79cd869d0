"""The publish protocol on object stores, where a folder rename is not atomic.

TensorFlow Serving polls `<model_base>/` and may load any numeric "folder" it
lists, so on `gs://` and `s3://` an export goes through these steps:

1. **Upload** every file under `<model_base>/.final-exporter-staging-<id>/`
   (not numeric: never loaded), hashing each byte as it is read, files in
   parallel, then the manifest.
2. **Verify** the staging prefix: exactly the manifest's objects, each with the
   size sent and the MD5/ETag the server computed over what it received.
3. **Claim** the version with a conditional create of
   `<model_base>/.final-exporter-claims/<version>` (GCS `ifGenerationMatch=0`,
   S3 `If-None-Match: *`): two exporters never take the same version; a lost
   race moves on to the next one. Claiming after the upload means a failed
   upload uses up no version number.
4. **Publish** with server-side copies into `<model_base>/<version>/` (no bytes
   through the exporter), every object but `saved_model.pb` first, in
   parallel, then `saved_model.pb` alone: a server that lists the version
   before it is complete finds no `saved_model.pb` and does not load it.
5. **Clean up** the staging prefix and the claim: the version prefix now holds
   the number. A claim that remains names an exporter that died after claiming;
   `remove_abandoned_staging` clears its half-published version.

On failure before step 4 nothing numeric exists; on failure during step 4 the
objects copied so far are deleted again. A killed process leaves them (without
`saved_model.pb`, so never loadable) and its claim, which a later run clears.

Who clears what a dead exporter left: while it works, an exporter keeps a lease,
`<model_base>/.final-exporter-leases/<staging name>`, a timestamp it rewrites
every third of `LEASE_SECONDS`. A later run removes a staging prefix (and the
half-published version its claim names) when its owner provably died on this host
(its pid is gone or reused), or when its lease has run out by
`EXPIRY_MARGIN_SECONDS`, whichever host the owner ran on: the margin covers clock
skew between hosts and refreshes that stalled. A live exporter refreshes its lease,
so its staging is never removed.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError
from final_exporter.common.progress import Progress
from final_exporter.storage.local import STAGING_PREFIX, is_version_name
from final_exporter.storage.manifest import FileEntry, manifest_bytes
from final_exporter.storage.objectstore import ObjectStore, Uploaded, join
from final_exporter.storage.transfer import PUBLISH_LAST, CopyItem, default_workers

logger = logging.getLogger(__name__)

CLAIMS_DIR = '.final-exporter-claims'
LEASES_DIR = '.final-exporter-leases'
# A lease holds this long without a refresh; the owner refreshes it every third of it.
# FINAL_EXPORTER_LEASE_SECONDS shortens it (how soon a crash on another host is noticed).
LEASE_SECONDS = 60.0
LEASE_ENV = 'FINAL_EXPORTER_LEASE_SECONDS'
# How long past its end a lease must be before another host treats its owner as gone:
# generous against clock skew and a refresh that stalled on a slow network.
EXPIRY_MARGIN_SECONDS = 600.0
_MAX_CLAIM_ATTEMPTS = 1000


# The staging prefix names its owner: `<STAGING_PREFIX><id>~<host>~<pid>~<start>`,
# where <start> is the process's start time in clock ticks since boot. A later run on
# the same host can then prove the owner dead (no such pid, or a pid reused by a
# process that started at another time) and remove the leftovers. Nothing can be
# proved about another host's exporter, so its leftovers are never touched.
_OWNER_SEP = '~'


def _process_start(pid: int) -> str | None:
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii') as f:
            # Field 22; the command name (field 2) may hold spaces, so split after ')'.
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def new_staging_uri(model_base: str) -> str:
    owner = _OWNER_SEP.join(
        [socket.gethostname(), str(os.getpid()), _process_start(os.getpid()) or '?']
    )
    return join(model_base, f'{STAGING_PREFIX}{uuid.uuid4().hex}{_OWNER_SEP}{owner}')


def lease_seconds() -> float:
    return float(os.environ.get(LEASE_ENV) or LEASE_SECONDS)


def lease_uri(model_base: str, staging: str) -> str:
    return join(model_base, LEASES_DIR, staging.rstrip('/').rsplit('/', 1)[-1])


class Lease:
    """The timestamp an exporter keeps fresh while it owns a staging prefix.

    Args:
        store: The bucket.
        uri: The lease object (`lease_uri`).
        seconds: How long one refresh holds.
        clock: Seconds since the epoch.
    """

    def __init__(
        self,
        store: ObjectStore,
        uri: str,
        seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.uri = uri
        self.seconds = lease_seconds() if seconds is None else seconds
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        record = {'renewed_at': self._clock(), 'lease_seconds': self.seconds}
        self._store.upload_bytes(json.dumps(record).encode(), self.uri, overwrite=True)

    def start(self) -> Lease:
        """Writes the lease and refreshes it in the background until `stop`."""
        self._write()
        self._thread = threading.Thread(
            target=self._refresh, name='final-exporter-lease', daemon=True
        )
        self._thread.start()
        return self

    def _refresh(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self._write()
            except Exception:  # The next refresh tries again; the margin covers a few misses.
                logger.warning('Could not refresh the lease %s.', self.uri, exc_info=True)

    def stop(self, *, release: bool = True) -> None:
        """Stops refreshing; deletes the lease unless `release` is False (as a crash would)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if release:
            try:
                self._store.delete([self.uri])
            except Exception:  # Without its staging prefix, a later run removes it.
                logger.warning('Could not remove the lease %s.', self.uri, exc_info=True)


def lease_expired(
    store: ObjectStore, uri: str, now: float, margin: float = EXPIRY_MARGIN_SECONDS
) -> bool:
    """True when the lease at `uri` ran out more than `margin` seconds before `now`.

    A missing or unreadable lease proves nothing (an exporter of an earlier release,
    or one between writing its staging name and its lease): False.
    """
    try:
        record = json.loads(store.read_bytes(uri))
        return now > float(record['renewed_at']) + float(record['lease_seconds']) + margin
    except Exception:
        return False


def remove_abandoned_staging(
    store: ObjectStore,
    model_base: str,
    *,
    now: float | None = None,
    margin: float = EXPIRY_MARGIN_SECONDS,
) -> list[str]:
    """Removes what exporters that are gone left behind; returns the names removed.

    Gone means: died on this host (pid gone or reused), or its lease ran out more
    than `margin` seconds before `now`. Never a live exporter's: it refreshes its lease.
    """
    now = time.time() if now is None else now

    def abandoned(staging_name: str) -> bool:
        return _owner_is_dead(staging_name) or lease_expired(
            store, join(model_base, LEASES_DIR, staging_name), now, margin
        )

    removed = []
    names = store.children(model_base)
    for name in sorted(names):
        if name.startswith(STAGING_PREFIX) and abandoned(name):
            remove_prefix(store, join(model_base, name))
            store.delete([join(model_base, LEASES_DIR, name)])
            removed.append(name)
            logger.info('Removed abandoned staging prefix %s/%s.', model_base, name)
    # A claim left behind names an exporter that died after claiming, perhaps halfway
    # through its copies: its <version>/ prefix has no saved_model.pb and never will.
    for name in store.children(join(model_base, CLAIMS_DIR)):
        if not is_version_name(name):
            continue
        claim = claim_uri(model_base, int(name))
        try:
            staging = json.loads(store.read_bytes(claim))['staging']
        except Exception:  # Gone meanwhile (its owner finished) or unreadable: leave it.
            continue
        staging_name = staging.rstrip('/').rsplit('/', 1)[-1]
        if staging_name in removed or abandoned(staging_name):
            version_dir = join(model_base, name)
            if not any(store.exists(join(version_dir, f)) for f in PUBLISH_LAST):
                # saved_model.pb goes last: without it the publish never finished.
                remove_prefix(store, version_dir)
            store.delete([claim, join(model_base, LEASES_DIR, staging_name)])
            removed.append(name)
            logger.info(
                'Removed version %s/%s, left half-published by a dead exporter.', model_base, name
            )
    # Leases whose exporter died before it staged anything (or between the two deletes).
    for name in store.children(join(model_base, LEASES_DIR)):
        if name not in names and abandoned(name):
            store.delete([join(model_base, LEASES_DIR, name)])
    return removed


def _owner_is_dead(staging_name: str) -> bool:
    """True only when the staging name's owner provably died (same host, pid gone or reused)."""
    try:
        _, host, pid, start = staging_name.split(_OWNER_SEP)
    except ValueError:
        return False
    if host != socket.gethostname() or start == '?':
        return False
    return _process_start(int(pid)) != start


def upload_items(
    store: ObjectStore,
    items: Sequence[CopyItem],
    staging: str,
    *,
    workers: int | None,
    progress: Progress | None,
) -> dict[str, tuple[FileEntry, Uploaded]]:
    """Uploads files in parallel under `staging`; each is read once."""

    def one(item: CopyItem) -> tuple[FileEntry, Uploaded]:
        up = store.upload_file(item.src, join(staging, item.dest), progress)
        if progress is not None:
            progress.file_done(item.dest)
        return FileEntry(item.dest, up.size, up.sha256, up.chunked_sha256), up

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return {entry.path: (entry, up) for entry, up in pool.map(one, items)}


def upload_manifest(store: ObjectStore, staging: str, manifest: dict) -> tuple[str, Uploaded]:
    data = manifest_bytes(manifest)
    up = store.upload_bytes(data, join(staging, keys.MANIFEST_RELPATH))
    return up.sha256, up


def verify_staging(store: ObjectStore, staging: str, expected: dict[str, Uploaded]) -> None:
    """Checks the staging prefix holds exactly the expected objects, as the server stored them.

    Raises:
        IntegrityError: naming every missing, extra or different object.
    """
    found = {uri[len(staging) + 1 :]: info for uri, info in store.list(staging).items()}
    problems = [f'missing: {p}' for p in sorted(set(expected) - set(found))]
    problems += [f'extra: {p}' for p in sorted(set(found) - set(expected))]
    for path in sorted(set(expected) & set(found)):
        want, got = expected[path], found[path]
        if got.size != want.size or (got.checksum and got.checksum != want.expected_checksum):
            problems.append(
                f'changed: {path} (sent {want.size} bytes, checksum {want.expected_checksum}; '
                f'stored {got.size} bytes, checksum {got.checksum})'
            )
    if problems:
        raise IntegrityError(f'staged upload {staging} is not intact: {"; ".join(problems)}')


def claim_version(
    store: ObjectStore, model_base: str, staging: str, clock: Callable[[], float]
) -> int:
    """Takes the next free version with a conditional create; returns it."""
    claims = join(model_base, CLAIMS_DIR)
    record = json.dumps(
        {'staging': staging, 'host': socket.gethostname(), 'pid': os.getpid(), 'time': clock()}
    ).encode()
    for _ in range(_MAX_CLAIM_ATTEMPTS):
        taken = [int(n) for n in store.children(model_base) if is_version_name(n)]
        taken += [int(n) for n in store.children(claims) if is_version_name(n)]
        version = max(int(clock()), max(taken) + 1) if taken else int(clock())
        if store.put_if_absent(claim_uri(model_base, version), record):
            return version
        logger.info('Version %s was claimed by another export; trying the next one.', version)
    raise RuntimeError(
        f'could not claim a version under {model_base} after {_MAX_CLAIM_ATTEMPTS} tries'
    )


def claim_uri(model_base: str, version: int) -> str:
    return join(model_base, CLAIMS_DIR, str(version))


def release_claim(store: ObjectStore, model_base: str, version: int) -> None:
    """Deletes a claim once its version is published (the prefix now holds the number) or
    abandoned with its copies removed. Only claims of exporters that died remain."""
    try:
        store.delete([claim_uri(model_base, version)])
    except Exception:  # The claim is only bookkeeping; a later run removes it.
        logger.warning('Could not remove the claim of version %s.', version, exc_info=True)


def publish_copies(
    store: ObjectStore, staging: str, final: str, paths: Sequence[str], workers: int | None
) -> None:
    """Server-side copies staging -> final, `saved_model.pb` (and .pbtxt) after all others."""
    first = [p for p in paths if p not in PUBLISH_LAST]
    last = [p for p in paths if p in PUBLISH_LAST]
    try:
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=workers or default_workers()
        ) as pool:
            for batch in (first, last):
                list(pool.map(lambda p: _copy(store, staging, final, p), batch))
    except BaseException:
        # The pool has finished every copy it started by now; any of them may have
        # landed, so remove them all (missing ones are ignored).
        store.delete(join(final, p) for p in paths)
        raise


def _copy(store: ObjectStore, staging: str, final: str, path: str) -> str:
    store.copy(join(staging, path), join(final, path))
    return path


def remove_prefix(store: ObjectStore, prefix: str) -> None:
    try:
        store.delete(store.list(prefix))
    except Exception:  # Cleanup must not hide the error that caused it.
        logger.warning('Could not remove %s; a later run can delete it.', prefix, exc_info=True)
