"""The `Store` of object stores (`gs://`, `s3://`): the publish protocol where no rename is atomic.

TensorFlow Serving polls `<model_base>/` and may load any numeric "folder" it
lists, so on a bucket an export goes through these steps:

1. **Stage** every file under `<model_base>/.final-exporter-staging-<id>/` (not
   numeric: never loaded). Local files are uploaded, each byte read once and
   hashed; files already in a bucket of the same store are copied server-side
   (GCS rewrite, S3 CopyObject / UploadPartCopy), pinned to the generation
   (ETag) whose bytes this process reads and hashes meanwhile.
2. **Verify** the staging prefix: exactly the manifest's objects, each with the
   size and the MD5/ETag the server reports for what it stored.
3. **Claim** the version with a conditional create of
   `<model_base>/.final-exporter-claims/<version>`: two exporters never take the
   same version. Claiming after the upload means a failed upload uses no number.
4. **Publish** with server-side copies into `<model_base>/<version>/`, every
   object but those the caller names last (`publish_last`; for a SavedModel,
   `saved_model.pb`) first, then those alone: a server that lists the version
   before it is complete does not load it.
5. **Clean up** the staging prefix and the claim.

Leftovers of exporters that died are cleared by later runs: a staging prefix (and
a claim naming it) is removed when its owner provably died on this host (its
pid is gone or reused), or when the owner's lease, a timestamp it refreshes while
it works, has expired by a clear margin, whichever host it ran on.

Label writers and retention take a lock object (`.final-exporter-lock`, same
lease rule) and change `models.config` with compare-and-swap writes (GCS
generation preconditions, S3 conditional writes on the ETag).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.common.progress import Progress
from final_exporter.storage.base import Staging, Store, is_version_name
from final_exporter.storage.manifest import (
    exporter_files,
    hashed_problems,
    listing_problems,
)
from final_exporter.storage.objectstore import ObjectClient, Uploaded, is_object_store_uri, join
from final_exporter.storage.types import CopyItem, FileEntry, StageRequest, Versioned

logger = logging.getLogger(__name__)

STAGING_PREFIX = keys.STAGING_PREFIX
CLAIMS_DIR = '.final-exporter-claims'
LEASES_DIR = '.final-exporter-leases'
LOCK_NAME = '.final-exporter-lock'
_MAX_CLAIM_ATTEMPTS = 1000
# The owner refreshes its lease every third of this; another host treats it as gone
# only after the lease has run out by the margin (clock skew, a stalled refresh).
LEASE_SECONDS = 60.0
EXPIRY_MARGIN_SECONDS = 600.0
_OWNER_SEP = '~'


def default_workers() -> int:
    """Threads for object-store transfers: network bound, so many more than cores."""
    return min(16, 4 * (os.cpu_count() or 1))


def _process_start(pid: int) -> str | None:
    try:
        with open(f'/proc/{pid}/stat', encoding='ascii') as f:
            # Field 22; the command name (field 2) may hold spaces, so split after ')'.
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lease_uri(model_base: str, staging: str) -> str:
    """Where the lease of the staging prefix `staging` lives."""
    return join(model_base, LEASES_DIR, staging.rstrip('/').rsplit('/', 1)[-1])


def _owner() -> str:
    """`<host>~<pid>~<process start in clock ticks>`: enough to prove this process dead later."""
    return _OWNER_SEP.join(
        [socket.gethostname(), str(os.getpid()), _process_start(os.getpid()) or '?']
    )


def _owner_died_here(owner: str) -> bool:
    """True only when the owner ran on this host and its pid is gone or reused."""
    try:
        host, pid, start = owner.split(_OWNER_SEP)
    except ValueError:
        return False
    if host != socket.gethostname() or start == '?':
        return False
    return _process_start(int(pid)) != start


class Lease:
    """A timestamp in a small object that its owner refreshes while it works."""

    def __init__(self, store: BucketStore, uri: str) -> None:
        self._store = store
        self.uri = uri
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> bytes:
        return json.dumps(
            {
                'owner': _owner(),
                'renewed_at': self._store.clock(),
                'lease_seconds': self._store.lease_seconds,
            }
        ).encode()

    def start(self, *, write: bool = True) -> None:
        """Writes the lease (unless the caller just did) and keeps it fresh until `stop`."""
        if write:
            self._store.client.upload_bytes(self.record(), self.uri, overwrite=True)
        self._thread = threading.Thread(
            target=self._refresh, name='final-exporter-lease', daemon=True
        )
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self._store.lease_seconds / 3):
            try:
                self._store.client.upload_bytes(self.record(), self.uri, overwrite=True)
            except Exception:  # The next refresh tries again; the margin covers a few misses.
                logger.warning('Could not refresh the lease %s.', self.uri, exc_info=True)

    def stop(self, *, delete: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if delete:
            with contextlib.suppress(Exception):
                self._store.client.delete([self.uri])


class BucketStore(Store):
    """A bucket store over one object client (GCS or S3).

    Args:
        client: The SDK client of this scheme.
        lease_seconds: How long a lease holds without a refresh.
        expiry_margin_seconds: How long past its expiry a lease must be before
            another host treats its owner as gone.
        clock: Seconds since the epoch (leases and lock expiry).
        source_clients: The client for a source URI of another store.
        workers: Transfer threads; `default_workers()` when None.
        publish_last: Files published after every other and removed before them:
            the caller's rule for what marks a version complete (for a SavedModel,
            its graph file). Without one, a claimed version a dead exporter left
            is kept, since nothing tells whether its publish finished.
    """

    def __init__(
        self,
        client: ObjectClient,
        *,
        source_clients: Callable[[str], ObjectClient] | None = None,
        lease_seconds: float = LEASE_SECONDS,
        expiry_margin_seconds: float = EXPIRY_MARGIN_SECONDS,
        clock: Callable[[], float] = time.time,
        workers: int | None = None,
        publish_last: Collection[str] = (),
    ) -> None:
        self.client = client
        self.lease_seconds = lease_seconds
        self.expiry_margin_seconds = expiry_margin_seconds
        self.clock = clock
        self._source_clients = source_clients
        self._workers = workers or default_workers()
        self.publish_last = tuple(publish_last)

    # --- Paths and reading ------------------------------------------------

    def join(self, base: str, *parts: str) -> str:
        return join(base, *parts)

    def list_files(self, root: str) -> dict[str, int]:
        prefix = root.rstrip('/') + '/'
        return {uri[len(prefix) :]: info.size for uri, info in self.client.list(root).items()}

    def children(self, folder: str) -> set[str]:
        return self.client.children(folder)

    def is_file(self, path: str) -> bool:
        return self.client.stat(path) is not None

    def size(self, path: str) -> int:
        info = self.client.stat(path)
        if info is None:
            raise FileNotFoundError(path)
        return info.size

    def read_bytes(self, path: str) -> bytes:
        data = self.client.read_with_token(path).data
        if data is None:
            raise FileNotFoundError(path)
        return data

    def digest_file(self, path: str, kind: str, chunk_bytes: int) -> tuple[int, str]:
        return self.client.digest(path, kind, chunk_bytes)

    def download(self, path: str, local_path: str, progress: Progress | None = None) -> FileEntry:
        return self.client.download(path, local_path, progress, None)

    # --- Staging and publishing ----------------------------------------------

    def begin_staging(self, model_base: str, *, local_view: bool) -> Staging:
        name = f'{STAGING_PREFIX}{uuid.uuid4().hex}{_OWNER_SEP}{_owner()}'
        lease = Lease(self, lease_uri(model_base, name))
        lease.start()
        local_dir = tempfile.mkdtemp(prefix='final-exporter-build-') if local_view else None
        return Staging(join(model_base, name), model_base, local_dir, handle=lease)

    def _expired(self, lease_uri: str) -> bool:
        try:
            record = json.loads(self.read_bytes(lease_uri))
            renewed, lease = float(record['renewed_at']), float(record['lease_seconds'])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            # An owner writes its lease before it stages anything: a staging area without a
            # (readable) lease is not this protocol's, and is no proof of anything.
            return False
        return self.clock() > renewed + lease + self.expiry_margin_seconds

    def _abandoned(self, model_base: str, staging_name: str) -> bool:
        owner = staging_name.split(_OWNER_SEP, 1)[1] if _OWNER_SEP in staging_name else ''
        if _owner_died_here(owner):
            return True
        return self._expired(join(model_base, LEASES_DIR, staging_name))

    def remove_abandoned_staging(self, model_base: str) -> list[str]:
        removed = []
        names = self.children(model_base)
        for name in sorted(names):
            if name.startswith(STAGING_PREFIX) and self._abandoned(model_base, name):
                self._remove_prefix(join(model_base, name))
                self.client.delete([join(model_base, LEASES_DIR, name)])
                removed.append(name)
                logger.info('Removed abandoned staging prefix %s/%s.', model_base, name)
        # A claim left behind names an exporter that died after claiming, perhaps halfway
        # through its copies: its <version>/ prefix lacks the `publish_last` files for good.
        for name in sorted(self.children(join(model_base, CLAIMS_DIR))):
            if not is_version_name(name):
                continue
            claim = join(model_base, CLAIMS_DIR, name)
            try:
                staging = json.loads(self.read_bytes(claim))['staging']
            except Exception:  # Gone meanwhile (its owner finished) or unreadable: leave it.
                continue
            staging_name = staging.rstrip('/').rsplit('/', 1)[-1]
            if staging_name in removed:
                pass  # Its owner was just found gone.
            elif staging_name in names or not self._abandoned(model_base, staging_name):
                continue  # Its owner's staging is alive, or its lease says it may be.
            version_dir = join(model_base, name)
            if self.publish_last and not any(
                self.is_file(join(version_dir, f)) for f in self.publish_last
            ):
                # These go last (saved_model.pb): without them the publish never finished.
                self._remove_prefix(version_dir)
            self.client.delete([claim])
            removed.append(name)
            logger.info(
                'Removed version %s/%s, left half-published by a dead exporter.', model_base, name
            )
        # Leases whose staging is gone (a kill between the two deletes of a cleanup).
        for name in self.children(join(model_base, LEASES_DIR)):
            if name not in names and self._abandoned(model_base, name):
                self.client.delete([join(model_base, LEASES_DIR, name)])
        return removed

    def stage(self, staging: Staging, request: StageRequest) -> dict[str, FileEntry]:
        """Uploads local sources and copies same-store objects server-side, on a pool; a
        source on another store goes through a local copy."""
        if request.meanwhile is not None:
            # Before the uploads, not beside them: the client libraries may import
            # on first use, and two threads importing at once can deadlock (see
            # core/serving_checks.py `import_tensorflow`).
            request.meanwhile()
        with concurrent.futures.ThreadPoolExecutor(max_workers=self._workers) as pool:
            staged = {
                e.path: e
                for e in pool.map(
                    lambda item: self._stage_one(staging, item, request.progress), request.items
                )
            }
        if request.when_complete is not None:
            request.when_complete()
        return staged

    def _stage_one(self, staging: Staging, item: CopyItem, progress: Progress | None) -> FileEntry:
        dest_uri = join(staging.path, item.dest)
        local = None
        if staging.local_dir is not None:
            local = os.path.join(staging.local_dir, *item.dest.split('/'))
            os.makedirs(os.path.dirname(local), exist_ok=True)
        if is_object_store_uri(item.src) and self.client.same_store(item.src):
            up = self._copy_server_side(item.src, dest_uri, local, progress)
        elif is_object_store_uri(item.src):
            up = self._copy_from_other_store(item.src, dest_uri, local, progress)
        else:
            if local is not None and not os.path.exists(local):
                os.symlink(os.path.abspath(item.src), local)
            up = self.client.upload_file(item.src, dest_uri, progress)
        staging.staged[item.dest] = up
        if progress is not None:
            progress.file_done(item.dest)
        return FileEntry(item.dest, up.size, up.sha256, up.chunked_sha256)

    def _copy_server_side(
        self, src: str, dest_uri: str, local: str | None, progress: Progress | None
    ) -> Uploaded:
        """Copies exactly the generation (ETag) this process reads and hashes meanwhile."""
        info = self.client.stat(src)
        if info is None:
            raise InvalidInputError(f'source object {src} is missing')
        with concurrent.futures.ThreadPoolExecutor(1) as side:
            copied = side.submit(self.client.copy, src, dest_uri, info.token)
            entry = self.client.download(src, local, progress, info.token)
            copied.result()
        return Uploaded(
            entry.size,
            entry.sha256,
            info.checksum if info.portable else '',
            entry.chunked_sha256,
        )

    def _copy_from_other_store(
        self, src: str, dest_uri: str, local: str | None, progress: Progress | None
    ) -> Uploaded:
        """Downloads `src` (into the local view, else a temporary file), then uploads it."""
        with contextlib.ExitStack() as stack:
            if local is None:
                transit = tempfile.TemporaryDirectory(prefix='final-exporter-transit-')
                local = os.path.join(stack.enter_context(transit), 'object')
            self._source_client(src).download(src, local, None, None)
            return self.client.upload_file(local, dest_uri, progress)

    def _source_client(self, uri: str) -> ObjectClient:
        if self._source_clients is None:
            raise InvalidInputError(f'{uri} is on another store, which this store cannot read')
        return self._source_clients(uri)

    def stage_local_files(self, staging: Staging, paths: Sequence[str]) -> dict[str, FileEntry]:
        items = [
            CopyItem(
                os.path.join(staging.local_dir, *p.split('/')),
                p,
                os.path.getsize(os.path.join(staging.local_dir, *p.split('/'))),
            )
            for p in paths
        ]
        return self.stage(staging, StageRequest(items))

    def write_export_file(self, staging: Staging, relpath: str, data: bytes) -> None:
        staging.staged[relpath] = self.client.upload_bytes(data, join(staging.path, relpath))

    def verify_staged(
        self, staging: Staging, manifest: Mapping[str, Any], known: Mapping[str, FileEntry]
    ) -> None:
        expected: dict[str, Uploaded] = staging.staged
        prefix = staging.path.rstrip('/') + '/'
        found = {uri[len(prefix) :]: info for uri, info in self.client.list(staging.path).items()}
        problems = listing_problems(found, manifest)
        sizes = {f['path']: f['size'] for f in manifest['files']}
        for path in sorted(found.keys() & (sizes.keys() | set(exporter_files(manifest)))):
            got, want = found[path], expected.get(path)
            if want is None:
                problems.append(f'changed: {path} (never staged by this export)')
                continue
            size = sizes.get(path, want.size)
            if (
                got.size != size
                or got.size != want.size
                or (want.expected_checksum and got.checksum != want.expected_checksum)
            ):
                problems.append(
                    f'changed: {path} (sent {want.size} bytes, checksum {want.expected_checksum}; '
                    f'stored {got.size} bytes, checksum {got.checksum})'
                )
        problems += hashed_problems(manifest, known, every_file=False)
        if problems:
            raise IntegrityError(
                f'staged upload {staging.path} is not intact: {"; ".join(problems)}'
            )

    def flush_for_reread(self, staging: Staging) -> None:
        """Nothing to flush: a re-read downloads the objects from the server."""

    def publish(self, staging: Staging, clock: Callable[[], float]) -> tuple[int, str]:
        paths = sorted(staging.staged)
        version = self._claim_version(staging, clock)
        export_dir = join(staging.model_base, str(version))
        try:
            self._publish_copies(staging.path, export_dir, paths)
        finally:
            # Published, or failed with its copies removed: the claim has done its job.
            self._release_claim(staging.model_base, version)
        return version, export_dir

    def _claim_version(self, staging: Staging, clock: Callable[[], float]) -> int:
        model_base = staging.model_base
        claims = join(model_base, CLAIMS_DIR)
        record = json.dumps(
            {'staging': staging.path, 'host': socket.gethostname(), 'pid': os.getpid()}
        ).encode()
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            taken = [int(n) for n in self.children(model_base) if is_version_name(n)]
            taken += [int(n) for n in self.children(claims) if is_version_name(n)]
            version = max(int(clock()), max(taken) + 1) if taken else int(clock())
            if self.client.put_if_token(join(claims, str(version)), record, None):
                return version
            logger.info('Version %s was claimed by another export; trying the next one.', version)
        raise RuntimeError(
            f'could not claim a version under {model_base} after {_MAX_CLAIM_ATTEMPTS} tries'
        )

    def _release_claim(self, model_base: str, version: int) -> None:
        try:
            self.client.delete([join(model_base, CLAIMS_DIR, str(version))])
        except Exception:  # The claim is only bookkeeping; a later run removes it.
            logger.warning('Could not remove the claim of version %s.', version, exc_info=True)

    def _publish_copies(self, staging: str, final: str, paths: Sequence[str]) -> None:
        """Server-side copies staging -> final, the `publish_last` files after all others."""
        first = [p for p in paths if p not in self.publish_last]
        last = [p for p in paths if p in self.publish_last]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=default_workers()) as pool:
                for batch in (first, last):
                    list(
                        pool.map(
                            lambda p: self.client.copy(join(staging, p), join(final, p)), batch
                        )
                    )
        except BaseException:
            # The pool has finished every copy it started by now; any of them may have
            # landed, so remove them all (missing ones are ignored).
            self.client.delete(join(final, p) for p in paths)
            raise

    def discard(self, staging: Staging) -> None:
        self._remove_prefix(staging.path)
        if staging.local_dir is not None:
            shutil.rmtree(staging.local_dir, ignore_errors=True)
        staging.handle.stop()

    def remove_version(self, model_base: str, version: int) -> bool:
        version_dir = join(model_base, str(version))
        objects = self.client.list(version_dir)
        if not objects:
            return False
        # The `publish_last` files first (saved_model.pb): then no server loads what remains.
        first = [u for u in objects if u.rsplit('/', 1)[-1] in self.publish_last]
        self.client.delete(first)
        self.client.delete(u for u in objects if u not in first)
        return True

    def remove_incomplete_version(self, model_base: str, version: int) -> None:
        self._remove_prefix(join(model_base, str(version)))

    def _remove_prefix(self, prefix: str) -> None:
        try:
            self.client.delete(self.client.list(prefix))
        except Exception:  # Cleanup must not hide the error that caused it.
            logger.warning('Could not remove %s; a later run can delete it.', prefix, exc_info=True)

    # --- The label file -------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, model_base: str) -> Iterator[None]:
        uri = join(model_base, LOCK_NAME)
        lease = Lease(self, uri)
        delay = 0.05
        while True:
            current = self.client.read_with_token(uri)
            if current.data is None:
                taken = self.client.put_if_token(uri, lease.record(), None)
            elif self._lock_expired(current.data):
                logger.warning('Taking over the expired lock %s.', uri)
                taken = self.client.put_if_token(uri, lease.record(), current.token)
            else:
                taken = False
            if taken:
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        lease.start(write=False)
        try:
            yield
        finally:
            lease.stop()

    def _lock_expired(self, data: bytes) -> bool:
        try:
            record = json.loads(data)
            owner = record.get('owner', '')
            expires = float(record['renewed_at']) + float(record['lease_seconds'])
        except (ValueError, KeyError, TypeError):
            return True  # Not a lock this package wrote in full (a cut-short write).
        return _owner_died_here(owner) or self.clock() > expires + self.expiry_margin_seconds

    def read_versioned(self, path: str) -> Versioned:
        return self.client.read_with_token(path)

    def write_versioned(self, path: str, data: bytes, token: Any) -> bool:
        return self.client.put_if_token(path, data, token)
