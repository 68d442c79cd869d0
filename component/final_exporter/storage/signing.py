"""Signed exports: an OpenSSF Model Signing signature over every file of an export.

Where: a Sigstore bundle at `assets.extra/model.sig` (`keys.SIGNATURE_RELPATH`)
inside the export. TensorFlow Serving reads nothing in `assets.extra` but its
warmup file, and `model_signing verify` leaves out the signature file it is
given (and the paths the statement lists as ignored).

What: the standard's in-toto statement (predicate
`https://model_signing/signature/v1.0`) in its `files` serialization: every
file's whole-file SHA-256, the manifest included, in a DSSE envelope signed
with ECDSA, in a bundle with the public key's hint (key signing) or the
certificate chain (certificate signing): what `model_signing sign key` and
`sign certificate` write. `files` is the one serialization the standard
`model_signing verify` command checks: it hashes file by file whatever a
signature says, so a `shards` signature fails there (and model-signing 1.1.1's
own guess of a shard signature's settings fails on the shard size it reads
back as a float).

Two steps: `file_digests` once the files are staged (a file of at most one
manifest chunk, 32 MiB, has its whole-file SHA-256 in its entry, so none of its
bytes is read; a file of several chunks, whose entry holds the digest of its
chunk digests, is read again), then `ExportSigner.sign` once the manifest is
written (its digest, the statement and the bundle: milliseconds).

Written here with `cryptography` alone, not with `model_signing`'s signer: that
package imports Sigstore's TUF client and cloud KMS SDKs (seconds, once per
process), and cannot be imported beside TFX 1.16 (pyproject.toml). The tests
check every signature made here with the standard's own verifier and its
`model_signing verify` command.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import IntegrityError, InvalidInputError
from final_exporter.storage.manifest import CHUNK_BYTES, chunk_count
from final_exporter.storage.pem_check import check_certificates_pem, check_private_key_pem
from final_exporter.storage.signing_keys import (
    SignerIdentity,
    certificate_identity,
    key_encoding,
    key_fingerprint,
    load_certificates,
    load_key,
    read_key_material,
    require_signing_certificate,
)
from final_exporter.storage.types import SHA256, FileEntry

# What `model_signing` leaves out of a model by default when it signs and verifies
# (its hashing.Config); left out here too, so its default `verify` agrees.
GIT_PATHS = ('.git', '.gitattributes', '.github', '.gitignore')
IN_TOTO_STATEMENT = 'https://in-toto.io/Statement/v1'
PREDICATE_TYPE = 'https://model_signing/signature/v1.0'
PAYLOAD_TYPE = 'application/vnd.in-toto+json'
BUNDLE_MEDIA_TYPE = 'application/vnd.dev.sigstore.bundle.v0.3+json'
# Files hashed at once when a signature needs whole-file digests; hashlib releases the GIL.
_HASH_THREADS = 4


def is_ignored(path: str, ignore_paths: Iterable[str]) -> bool:
    """Whether `path` is, or lies under, one of `ignore_paths` (as `model_signing` ignores)."""
    return any(path == p or path.startswith(p.rstrip('/') + '/') for p in ignore_paths)


def whole_file_sha256(store: Any, root: str, paths: Iterable[str]) -> dict[str, tuple[int, str]]:
    """{path: (size, whole-file SHA-256 hex)} of files under `root` on `store`, read in parallel."""
    paths = list(paths)

    def digest(path: str) -> tuple[int, str]:
        return store.digest_file(store.join(root, *path.split('/')), SHA256, CHUNK_BYTES)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(_HASH_THREADS, len(paths)))) as pool:
        return dict(zip(paths, pool.map(digest, paths), strict=True))


def statement(model_name: str, digests: Mapping[str, str], ignore_paths: Sequence[str]) -> bytes:
    """The in-toto statement over `digests` ({relative path: whole-file SHA-256 hex}), JSON.

    Resources are in `model_signing`'s order (by path components), so the subject's
    digest, the SHA-256 over their digests in that order, is what `model_signing
    digest` prints for the same files.
    """
    ordered = sorted(digests, key=lambda p: p.split('/'))
    root = hashlib.sha256(b''.join(bytes.fromhex(digests[p]) for p in ordered)).hexdigest()
    return json.dumps(
        {
            '_type': IN_TOTO_STATEMENT,
            'subject': [{'name': model_name, 'digest': {'sha256': root}}],
            'predicateType': PREDICATE_TYPE,
            'predicate': {
                'serialization': {
                    'method': 'files',
                    'hash_type': 'sha256',
                    'allow_symlinks': False,
                    'ignore_paths': list(ignore_paths),
                },
                'resources': [
                    {'name': p, 'algorithm': 'sha256', 'digest': digests[p]} for p in ordered
                ],
            },
        },
        indent=2,
    ).encode()


def pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature is over."""
    header = f'DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} '
    return header.encode() + payload


def _ecdsa(private_key: Any) -> Any:
    """ECDSA with the digest the standard pairs with the key's curve: SHA-256, -384 or -512."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    digest = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}
    return ec.ECDSA(digest[private_key.curve.key_size]())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bundle(private_key: Any, chain: Sequence[Any], payload: bytes) -> bytes:
    """The Sigstore bundle signing `payload`: key signing, or certificate signing when
    `chain` (signing certificate first) is given."""
    encoding = key_encoding()
    signature = private_key.sign(pae(payload), _ecdsa(private_key))
    if chain:
        material: dict[str, Any] = {
            'x509CertificateChain': {
                'certificates': [
                    {'rawBytes': _b64(c.public_bytes(encoding.Encoding.DER))} for c in chain
                ]
            }
        }
    else:
        pem = private_key.public_key().public_bytes(
            encoding.Encoding.PEM, encoding.PublicFormat.SubjectPublicKeyInfo
        )
        material = {'publicKey': {'hint': hashlib.sha256(pem).hexdigest()}}
    material['tlogEntries'] = []
    return json.dumps(
        {
            'mediaType': BUNDLE_MEDIA_TYPE,
            'verificationMaterial': material,
            'dsseEnvelope': {
                'payload': _b64(payload),
                'payloadType': PAYLOAD_TYPE,
                'signatures': [{'sig': _b64(signature), 'keyid': ''}],
            },
        }
    ).encode()


def read_for_signing(sizes: Mapping[str, int]) -> list[str]:
    """The files a signature must read: those of several manifest chunks, whose entry holds
    the digest of their chunk digests rather than their whole-file SHA-256."""
    return sorted(p for p, size in sizes.items() if chunk_count(size) > 1)


def file_digests(
    files: Iterable[FileEntry],
    store: Any,
    root: str,
    read_already: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, str]:
    """{path: whole-file SHA-256 hex} of the export's files a signature covers.

    Reads only files of several manifest chunks, in parallel, from `root` on `store`
    (the staging area): every other entry already holds its whole-file SHA-256.
    Those `read_already` holds (`whole_file_sha256` of them, run earlier beside the
    serving checks) are not read again.

    Args:
        files: The export's files as the export hashed them (every file but the
            manifest and the signature).
        store: The `storage.base.Store` holding them.
        root: Where they are staged on it.
        read_already: {path: (size, whole-file SHA-256 hex)} already read there.

    Raises:
        InvalidInputError: if the export has a file of its own at the signature's path.
        IntegrityError: if a file read for its digest has another size than when it
            was staged.
    """
    entries = {f.path: f for f in files if not is_ignored(f.path, GIT_PATHS)}
    if keys.SIGNATURE_RELPATH in entries:
        raise InvalidInputError(
            f'the export already has {keys.SIGNATURE_RELPATH} (from the model or '
            'assets_extra); that path is reserved for the export signature'
        )
    digests = {p: f.sha256 for p, f in entries.items() if f.sha256}
    several_chunks = [p for p, f in entries.items() if not f.sha256]
    read = {p: v for p, v in (read_already or {}).items() if p in several_chunks}
    read.update(whole_file_sha256(store, root, [p for p in several_chunks if p not in read]))
    for path, (size, digest) in read.items():
        if size != entries[path].size:
            raise IntegrityError(
                f'{store.join(root, *path.split("/"))} holds {size} bytes when read for its '
                f'signature digest; it held {entries[path].size} when it was staged'
            )
        digests[path] = digest
    return digests


@dataclasses.dataclass(frozen=True)
class ExportSigner:
    """A loaded signing key (and certificate chain), made by `load_signer`."""

    private_key: Any
    chain: tuple[Any, ...]
    identity: SignerIdentity

    def warm_up(self) -> None:
        """Makes (and drops) one signature: a process's first ECDSA signature initialises
        OpenSSL's random generator and curve tables (milliseconds), paid here, beside the
        copy, rather than after the manifest is written."""
        self.private_key.sign(b'', _ecdsa(self.private_key))

    def sign(self, digests: Mapping[str, str], manifest_data: bytes, *, model_name: str) -> bytes:
        """The signature to stage at `keys.SIGNATURE_RELPATH`: over the files and the manifest.

        Args:
            digests: The files' whole-file SHA-256 (`file_digests`).
            manifest_data: The manifest's bytes as written.
            model_name: The model's name, the statement's subject (informative only).

        Returns:
            The Sigstore bundle, JSON.
        """
        signed = {**digests, keys.MANIFEST_RELPATH: hashlib.sha256(manifest_data).hexdigest()}
        payload = statement(model_name, signed, [keys.SIGNATURE_RELPATH, *GIT_PATHS])
        return bundle(self.private_key, self.chain, payload)


def load_signer(signing_key: str, signing_certificate_chain: str = '') -> ExportSigner:
    """Reads and checks the signing key (and chain), in full, in this thread.

    Args:
        signing_key: The private key: a path, gs:// or s3:// object, or env:NAME.
        signing_certificate_chain: For certificate signing, the signing certificate and
            its intermediates (PEM), in any of the same forms; '' for key signing.

    Raises:
        InvalidInputError: if a key or certificate is missing, unreadable or malformed,
            or the certificate is not the key's or may not sign.
    """
    return signer_from_pem(*_read_pem(signing_key, signing_certificate_chain))


class SignerLoading:
    """`load_signer`, in two steps: what a user can get wrong about the key files is found
    now, in microseconds; the rest in a thread of its own, from `start`.

    Now: the key (and chain) read, and their PEM checked without `cryptography`
    (`pem_check`). In the thread: `cryptography` imported, the key and certificates
    loaded and checked (`signer_from_pem`: the key's numbers, the certificate's key
    and usage) and the first signature's warm-up, which sets up OpenSSL's random
    generator and curve tables. That work holds the GIL (imports, and `cryptography`'s
    calls into OpenSSL), so the export starts it once its copy threads work and its
    own thread waits for them (`core.signature.SigningStep`): begun beside the plan's
    Python, it cost the export about as much as it took. What the thread finds is
    raised by `result`.

    Args:
        signing_key: As `load_signer`'s.
        signing_certificate_chain: As `load_signer`'s.

    Raises:
        InvalidInputError: if a key or certificate is missing, unreadable or not what
            `pem_check` expects.
    """

    def __init__(self, signing_key: str, signing_certificate_chain: str = '') -> None:
        key_data, chain_data = _read_pem(signing_key, signing_certificate_chain)
        check_private_key_pem(key_data, 'signing_key')
        if chain_data:
            check_certificates_pem(chain_data, 'signing_certificate_chain')
        self._pem = (key_data, chain_data)
        self._loaded: concurrent.futures.Future[ExportSigner] = concurrent.futures.Future()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Starts loading the signer in a thread of its own (once)."""
        with self._started:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._load, args=self._pem, name='final-exporter-signing-key'
                )
                self._thread.start()

    def _load(self, key_data: bytes, chain_data: bytes) -> None:
        try:
            signer = signer_from_pem(key_data, chain_data)
            signer.warm_up()
        except BaseException as e:  # Raised by `result`, in the export's thread.
            self._loaded.set_exception(e)
        else:
            self._loaded.set_result(signer)

    def result(self) -> ExportSigner:
        """The signer, once loaded (started now if it was not).

        Raises:
            InvalidInputError: for what only the full load finds wrong with the key or chain.
        """
        self.start()
        return self._loaded.result()


def _read_pem(signing_key: str, signing_certificate_chain: str) -> tuple[bytes, bytes]:
    key = read_key_material(signing_key, 'signing_key')
    if not signing_certificate_chain:
        return key, b''
    return key, read_key_material(signing_certificate_chain, 'signing_certificate_chain')


def signer_from_pem(key_data: bytes, chain_data: bytes = b'') -> ExportSigner:
    """The signer of a PEM private key and, for certificate signing, its PEM chain.

    Raises:
        InvalidInputError: if the key or a certificate is malformed, or the certificate
            is not the key's or may not sign.
    """
    key = load_key(key_data, 'signing_key', private=True)
    fingerprint = key_fingerprint(key.public_key())
    if not chain_data:
        return ExportSigner(key, (), SignerIdentity('key', fingerprint))
    chain = load_certificates(chain_data, 'signing_certificate_chain')
    require_signing_certificate(chain, key)
    identity = SignerIdentity('certificate', fingerprint, certificate_identity(chain[0]))
    return ExportSigner(key, tuple(chain), identity)
