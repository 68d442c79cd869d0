"""Signed exports: an OpenSSF Model Signing signature over every file of an export.

The signature is a Sigstore bundle at `assets.extra/model.sig` inside the
export (`keys.SIGNATURE_RELPATH`): TensorFlow Serving reads nothing in
`assets.extra` but its warmup file, and `model_signing verify` leaves out the
signature file it is given. It signs the standard's in-toto statement in the
`files` serialization: each file's whole-file SHA-256, the manifest included.
That is the one serialization the standard `model_signing verify` command
checks: it hashes file by file whatever a signature says, so a signature in
the `shards` serialization fails there (and `model_signing` 1.1.1's own
guess of a shard signature's settings fails on the shard size it reads back).

Hash once: a file of at most one manifest chunk (32 MiB) has its whole-file
SHA-256 in its manifest entry already, so signing reads none of its bytes; only
a file of several chunks (whose entry holds the digest of its chunk digests) is
read again for its whole-file SHA-256.

Keys: `signing_key` is an unencrypted elliptic-curve private key in PEM (P-256,
P-384 or P-521), `signing_certificate_chain` its certificate first and then the
intermediates, in PEM. Each is read from a local path, a `gs://` or `s3://`
object, or, written `env:NAME`, the environment variable NAME, so no secret sits
in a pipeline spec.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.metadata
import os
from collections.abc import Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.manifest import CHUNK_BYTES, SHA256, FileEntry
from final_exporter.storage.stores import store_for

ENV_PREFIX = 'env:'
# What `model_signing` leaves out of a model by default when it signs and verifies
# (its hashing.Config); left out here too, so its default `verify` agrees.
GIT_PATHS = ('.git', '.gitattributes', '.github', '.gitignore')
# The curves the standard's signers and verifiers accept (model_signing sign_ec_key).
CURVES = ('secp256r1', 'secp384r1', 'secp521r1')
# Files hashed at once when a signature needs whole-file digests; hashlib releases the GIL.
_HASH_THREADS = 4


def require_model_signing() -> ModuleType:
    """The seam over `model_signing` (storage/model_signing_seam.py).

    Raises:
        InvalidInputError: when the `[signing]` extra is not installed (or cannot
            run in this environment).
    """
    try:
        from final_exporter.storage import model_signing_seam
    except ImportError as e:
        raise InvalidInputError(
            'signed exports need the model-signing package: pip install '
            f"'tfx-final-exporter[signing]' (Python 3.11+ with TFX 1.21; {e})"
        ) from None
    return model_signing_seam


def read_key_material(source: str, parameter: str) -> bytes:
    """The bytes of a key or certificate file: a path, a gs:// or s3:// object, or env:NAME.

    Raises:
        InvalidInputError: naming `parameter`, if the source is missing or unreadable.
    """
    if source.startswith(ENV_PREFIX):
        name = source[len(ENV_PREFIX) :]
        value = os.environ.get(name, '')
        if not value.strip():
            raise InvalidInputError(
                f'{parameter}={source!r} names the environment variable {name!r}, which is '
                'not set or empty; expected it to hold the PEM text'
            )
        return value.encode()
    try:
        return store_for(source).read_bytes(source)
    except Exception as e:  # Any store's not-found, permission or folder error alike.
        raise InvalidInputError(
            f'{parameter} {source!r} cannot be read ({type(e).__name__}: {e}); expected a '
            'readable PEM file, gs:// or s3:// object, or env:NAME'
        ) from None


@dataclasses.dataclass(frozen=True)
class SignerIdentity:
    """Who signed: recorded in the lineage, the report and the CLI's JSON.

    Attributes:
        method: 'key' or 'certificate'.
        key_fingerprint: 'sha256:' and the SHA-256 of the public key's DER
            SubjectPublicKeyInfo (`openssl pkey -pubin -outform DER | sha256sum`).
        certificate: For certificate signing: the signing certificate's subject,
            subject alternative names, issuer, SHA-256 fingerprint and expiry.
    """

    method: str
    key_fingerprint: str
    certificate: Mapping[str, Any] | None = None

    def to_lineage(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            'method': self.method,
            'signature': keys.SIGNATURE_RELPATH,
            'key_fingerprint': self.key_fingerprint,
            'standard': f'OpenSSF Model Signing (model-signing {_model_signing_version()})',
        }
        if self.certificate is not None:
            out['certificate'] = dict(self.certificate)
        return out


def _model_signing_version() -> str:
    try:
        return importlib.metadata.version('model-signing')
    except importlib.metadata.PackageNotFoundError:
        return 'not installed'


def key_fingerprint(public_key: Any) -> str:
    """'sha256:<hex>' of a public key's DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return 'sha256:' + hashlib.sha256(der).hexdigest()


def certificate_identity(certificate: Any) -> dict[str, Any]:
    """Subject, subject alternative names, issuer, fingerprint and expiry of a certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [
            str(v)
            for t in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName)
            for v in names.get_values_for_type(t)
        ]
    except x509.ExtensionNotFound:
        sans = []
    return {
        'subject': certificate.subject.rfc4514_string(),
        'subject_alternative_names': sans,
        'issuer': certificate.issuer.rfc4514_string(),
        'fingerprint': 'sha256:' + certificate.fingerprint(hashes.SHA256()).hex(),
        'not_valid_after': certificate.not_valid_after_utc.isoformat(),
    }


def load_private_key(data: bytes, parameter: str) -> Any:
    """An elliptic-curve private key on a curve the standard accepts, from PEM bytes.

    Raises:
        InvalidInputError: naming `parameter` and what is wrong with the key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidInputError(
            f'{parameter} is an encrypted private key; expected an unencrypted PEM key '
            '(keep it secret with env:NAME or a private bucket object instead)'
        ) from None
    except Exception as e:
        raise InvalidInputError(
            f'{parameter} is not a PEM private key ({e}); expected an elliptic-curve key '
            "such as 'openssl ecparam -name prime256v1 -genkey -noout' writes"
        ) from None
    return _require_supported_curve(key, ec.EllipticCurvePrivateKey, parameter)


def load_public_key(data: bytes, parameter: str) -> Any:
    """An elliptic-curve public key on a curve the standard accepts, from PEM bytes.

    Raises:
        InvalidInputError: naming `parameter` and what is wrong with the key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(data)
    except Exception as e:
        raise InvalidInputError(
            f"{parameter} is not a PEM public key ({e}); expected the signer's "
            "elliptic-curve public key, as 'openssl ec -pubout' writes it"
        ) from None
    return _require_supported_curve(key, ec.EllipticCurvePublicKey, parameter)


def _require_supported_curve(key: Any, kind: type, parameter: str) -> Any:
    curve = getattr(getattr(key, 'curve', None), 'name', None)
    if not isinstance(key, kind) or curve not in CURVES:
        found = f'an elliptic-curve key on {curve}' if curve else f'a {type(key).__name__}'
        raise InvalidInputError(
            f'{parameter} is {found}; expected an elliptic-curve key on one of '
            f'{", ".join(CURVES)} (the curves OpenSSF Model Signing accepts)'
        )
    return key


def load_certificates(data: bytes, parameter: str) -> list[Any]:
    """The X.509 certificates in PEM bytes, in order.

    Raises:
        InvalidInputError: naming `parameter`, if there is no PEM certificate.
    """
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except Exception as e:
        raise InvalidInputError(
            f'{parameter} holds no PEM certificate ({e}); expected PEM certificates '
            '(-----BEGIN CERTIFICATE-----)'
        ) from None
    return certificates


def _require_signing_certificate(chain: Sequence[Any], private_key: Any) -> None:
    """The chain's first certificate must be the key's and allowed to sign."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    leaf = chain[0]
    if key_fingerprint(leaf.public_key()) != key_fingerprint(private_key.public_key()):
        raise InvalidInputError(
            "signing_certificate_chain's first certificate "
            f'({leaf.subject.rfc4514_string()}) is not for signing_key; expected the '
            "signing key's certificate first, then its intermediates"
        )
    extensions = leaf.extensions
    try:
        can_sign = extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    except x509.ExtensionNotFound:
        can_sign = False
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        can_sign = can_sign or ExtendedKeyUsageOID.CODE_SIGNING in usages
    except x509.ExtensionNotFound:
        pass
    if not can_sign:
        raise InvalidInputError(
            f'signing certificate {leaf.subject.rfc4514_string()} allows neither digital '
            'signatures (KeyUsage) nor code signing (ExtendedKeyUsage); `model_signing '
            'verify` refuses signatures made with it'
        )


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


@dataclasses.dataclass(frozen=True)
class ExportSigner:
    """A loaded signing key (and certificate chain): signs staged exports.

    Made by `load_signer`, before anything is written.
    """

    private_key: Any
    chain: tuple[Any, ...]
    identity: SignerIdentity

    def sign(
        self,
        files: Iterable[FileEntry],
        manifest_data: bytes,
        *,
        store: Any,
        root: str,
        model_name: str,
    ) -> bytes:
        """The signature to stage at `keys.SIGNATURE_RELPATH`, over the files and the manifest.

        Args:
            files: The export's files as the export hashed them (every file but the
                manifest and the signature).
            manifest_data: The manifest's bytes as written.
            store: The `storage.base.Store` holding the staged files.
            root: Where they are staged on it: read only for files of several chunks.
            model_name: The model's name, recorded in the statement (informative only).

        Returns:
            The Sigstore bundle, JSON.

        Raises:
            InvalidInputError: if the export already has a file at the signature's path.
        """
        seam = require_model_signing()
        digests = signed_digests(files, manifest_data, store, root)
        payload = seam.statement(model_name, digests, [keys.SIGNATURE_RELPATH, *GIT_PATHS])
        return seam.sign(self.private_key, self.chain, payload)


def signed_digests(
    files: Iterable[FileEntry], manifest_data: bytes, store: Any, root: str
) -> dict[str, str]:
    """{path: whole-file SHA-256 hex} of every file a signature covers."""
    entries = {f.path: f for f in files if not is_ignored(f.path, GIT_PATHS)}
    if keys.SIGNATURE_RELPATH in entries:
        raise InvalidInputError(
            f'the export already has {keys.SIGNATURE_RELPATH} (from the model or '
            'assets_extra); that path is reserved for the export signature'
        )
    digests = {p: f.sha256 for p, f in entries.items() if f.sha256}
    several_chunks = [p for p, f in entries.items() if not f.sha256]
    digests.update({p: d for p, (_, d) in whole_file_sha256(store, root, several_chunks).items()})
    digests[keys.MANIFEST_RELPATH] = hashlib.sha256(manifest_data).hexdigest()
    return digests


def load_signer(signing_key: str, signing_certificate_chain: str = '') -> ExportSigner:
    """Reads and checks the signing key (and chain): call before anything is written.

    Args:
        signing_key: The private key: a path, gs:// or s3:// object, or env:NAME.
        signing_certificate_chain: For certificate signing, the signing certificate and
            its intermediates (PEM), in any of the same forms; '' for key signing.

    Raises:
        InvalidInputError: if `model-signing` is missing, or a key or certificate is
            missing, unreadable or malformed.
    """
    require_model_signing()
    key = load_private_key(read_key_material(signing_key, 'signing_key'), 'signing_key')
    fingerprint = key_fingerprint(key.public_key())
    if not signing_certificate_chain:
        return ExportSigner(key, (), SignerIdentity('key', fingerprint))
    parameter = 'signing_certificate_chain'
    chain = load_certificates(read_key_material(signing_certificate_chain, parameter), parameter)
    _require_signing_certificate(chain, key)
    identity = SignerIdentity('certificate', fingerprint, certificate_identity(chain[0]))
    return ExportSigner(key, tuple(chain), identity)
