"""The one seam with `model_signing` 1.1 (OpenSSF Model Signing): its signature verifiers.

`final-exporter verify --public-key/--certificate-chain` checks a signature with
the standard's own verifiers (not with the code that signed it): the
elliptic-key and certificate verifiers behind `model_signing verify`, given
loaded keys instead of files, since keys and exports may sit in buckets. They
are internal to `model_signing`, so the `[signing]` extra admits 1.1.x only.

Imported only to verify: `import model_signing` needs the `[signing]` extra on
Python 3.11+ (`storage.signature_verify.require_model_signing` says so).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb
from OpenSSL import crypto
from sigstore_models.bundle import v1 as bundle_v1


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
