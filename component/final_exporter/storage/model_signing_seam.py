"""The one seam with `model_signing` 1.1 (OpenSSF Model Signing): its statement and bundle.

`model_signing`'s public API signs and verifies a folder by hashing it itself. An
export has already hashed every byte, and may sit in a bucket, so this module
uses the classes behind that API instead: the in-toto payload, the elliptic-key
and certificate signers and verifiers, and the Sigstore bundle. They are
internal to `model_signing`, so the `[signing]` extra admits 1.1.x only, and the
tests run the standard `model_signing verify` command on what is signed here.

Imported only to sign or verify: `import model_signing` needs the `[signing]`
extra (`storage.signing.require_model_signing` says so when it is missing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import manifest as ms_manifest
from model_signing._hashing import hashing as ms_hashing
from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb
from model_signing._signing import signing as ms_signing
from OpenSSL import crypto
from sigstore_models.bundle import v1 as bundle_v1

# The serialization `model_signing sign` uses by default and the one `model_signing
# verify` recomputes whatever a signature says: one whole-file SHA-256 per file.
FILES_SERIALIZATION = {'method': 'files', 'hash_type': 'sha256', 'allow_symlinks': False}


def statement(model_name: str, digests: Mapping[str, str], ignore_paths: Sequence[str]) -> Any:
    """The in-toto statement over `digests` ({relative path: whole-file SHA-256 hex})."""
    serialization = ms_manifest.SerializationType.from_args(
        {**FILES_SERIALIZATION, 'ignore_paths': list(ignore_paths)}
    )
    items = [
        serialization.new_item(path, ms_hashing.Digest('sha256', bytes.fromhex(hex_digest)))
        for path, hex_digest in digests.items()
    ]
    return ms_signing.Payload(ms_manifest.Manifest(model_name, items, serialization))


class _KeySigner(sign_ec_key.Signer):
    """The standard's elliptic-key signer, given a loaded key rather than a key file."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        sign_ec_key._check_supported_ec_key(private_key.public_key())
        self._private_key = private_key


class _CertificateSigner(sign_certificate.Signer):
    """The standard's certificate signer, given loaded objects rather than files."""

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate]
    ) -> None:
        sign_ec_key._check_supported_ec_key(private_key.public_key())
        self._private_key = private_key
        self._signing_certificate = chain[0]
        self._trust_chain = list(chain[1:])


def sign(
    private_key: ec.EllipticCurvePrivateKey, chain: Sequence[x509.Certificate], payload: Any
) -> bytes:
    """The Sigstore bundle (JSON) over `payload`: key signing, or certificate signing when
    `chain` (signing certificate first) is given."""
    signer = _CertificateSigner(private_key, chain) if chain else _KeySigner(private_key)
    return signer.sign(payload).bundle.to_json().encode()


class _KeyVerifier(sign_ec_key.Verifier):
    def __init__(self, public_key: ec.EllipticCurvePublicKey) -> None:
        sign_ec_key._check_supported_ec_key(public_key)
        self._public_key = public_key


class _CertificateVerifier(sign_certificate.Verifier):
    def __init__(self, roots: Sequence[x509.Certificate]) -> None:
        self._log_fingerprints = False
        self._store = crypto.X509Store()
        for certificate in roots:
            self._store.add_cert(crypto.X509.from_cryptography(certificate))


class VerifiedStatement(NamedTuple):
    """What a bundle whose signature verified says.

    Attributes:
        digests: {relative path: signed whole-file SHA-256 hex}.
        serialization: The statement's serialization (method, hash type, ignored paths).
        algorithms: The digest algorithms its resources name.
        certificate: The signing certificate (certificate signing), else None.
    """

    digests: dict[str, str]
    serialization: dict[str, Any]
    algorithms: frozenset[str]
    certificate: x509.Certificate | None


def verify(
    bundle: bytes, public_key: ec.EllipticCurvePublicKey | None, roots: Sequence[x509.Certificate]
) -> VerifiedStatement:
    """Checks a bundle's signature with `public_key`, or its certificate chain up to `roots`.

    Raises:
        ValueError: if the bundle is malformed or its signature does not verify.
    """
    parsed = sign_sigstore_pb.Signature(bundle_v1.Bundle.from_dict(json.loads(bundle)))
    verifier = _KeyVerifier(public_key) if public_key is not None else _CertificateVerifier(roots)
    signed = verifier.verify(parsed)
    resources = list(signed.resource_descriptors())
    chain = parsed.bundle.verification_material.x509_certificate_chain
    return VerifiedStatement(
        digests={r.identifier: r.digest.digest_hex for r in resources},
        serialization=dict(signed.serialization_type),
        algorithms=frozenset(r.digest.algorithm for r in resources),
        certificate=(
            x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
            if chain is not None and chain.certificates
            else None
        ),
    )
