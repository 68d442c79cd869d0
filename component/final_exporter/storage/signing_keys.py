"""Signing keys and certificates: where they are read from, what is accepted, who they name.

`signing_key` is an unencrypted elliptic-curve private key in PEM on one of the
curves OpenSSF Model Signing accepts (P-256, P-384, P-521);
`signing_certificate_chain` is its certificate first, then the intermediates, in
PEM. Each is read from a local path, a `gs://` or `s3://` object (through the
store), or, written `env:NAME`, from the environment variable NAME, so no secret
sits in a pipeline spec. Anything missing, unreadable or malformed is bad input
(`InvalidInputError`), found before the export writes anything.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.stores import store_for

ENV_PREFIX = 'env:'
# The curves the standard's signers and verifiers accept (model_signing sign_ec_key).
CURVES = ('secp256r1', 'secp384r1', 'secp521r1')


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
            'format': 'OpenSSF Model Signing v1.0 (Sigstore bundle v0.3, DSSE in-toto statement)',
        }
        if self.certificate is not None:
            out['certificate'] = dict(self.certificate)
        return out


@functools.cache
def key_encoding() -> Any:
    """`cryptography`'s key encodings and PEM key loaders, imported without its
    `serialization` package.

    That package imports its SSH key support with it: about 20 ms of CPU, half of
    a key's first load (`python -X importtime`), which the signing thread spends
    beside the copy on a machine whose cores the copy keeps busy. `serialization`
    re-exports these same objects from the modules imported here (cryptography
    42 to 47); where they have moved, the package itself is used.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl
        from cryptography.hazmat.primitives import _serialization

        return types.SimpleNamespace(
            Encoding=_serialization.Encoding,
            PublicFormat=_serialization.PublicFormat,
            load_pem_private_key=rust_openssl.keys.load_pem_private_key,
            load_pem_public_key=rust_openssl.keys.load_pem_public_key,
        )
    except (ImportError, AttributeError):
        from cryptography.hazmat.primitives import serialization

        return serialization


def key_fingerprint(public_key: Any) -> str:
    """'sha256:<hex>' of a public key's DER SubjectPublicKeyInfo."""
    encoding = key_encoding()
    der = public_key.public_bytes(encoding.Encoding.DER, encoding.PublicFormat.SubjectPublicKeyInfo)
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


# What each kind of key file should be, for the messages.
_EXPECTED_KEY = {
    'private': "an elliptic-curve key such as 'openssl ecparam -name prime256v1 -genkey "
    "-noout' writes",
    'public': "the signer's elliptic-curve public key, as 'openssl ec -pubout' writes it",
}


def not_a_pem_key(parameter: str, kind: str, why: str) -> str:
    """The message for a `kind` ('private' or 'public') key file that holds no such key."""
    return f'{parameter} is not a PEM {kind} key ({why}); expected {_EXPECTED_KEY[kind]}'


def encrypted_key(parameter: str) -> str:
    """The message for a private key encrypted with a password."""
    return (
        f'{parameter} is an encrypted private key; expected an unencrypted PEM key '
        '(keep it secret with env:NAME or a private bucket object instead)'
    )


def unsupported_key(parameter: str, found: str) -> str:
    """The message for a key that is `found` rather than one on a curve the standard takes."""
    return (
        f'{parameter} is {found}; expected an elliptic-curve key on one of '
        f'{", ".join(CURVES)} (the curves OpenSSF Model Signing accepts)'
    )


def no_certificate(parameter: str, why: str) -> str:
    """The message for a certificate chain file with no certificate in it."""
    return (
        f'{parameter} holds no PEM certificate ({why}); expected PEM certificates '
        '(-----BEGIN CERTIFICATE-----)'
    )


def load_key(data: bytes, parameter: str, *, private: bool) -> Any:
    """An elliptic-curve private (or public) key on a curve the standard accepts, from PEM.

    Raises:
        InvalidInputError: naming `parameter` and what is wrong with the key.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    kind = 'private' if private else 'public'
    encoding = key_encoding()
    try:
        if private:
            key = encoding.load_pem_private_key(data, None)
        else:
            key = encoding.load_pem_public_key(data)
    except TypeError:  # A private key encrypted with a password.
        raise InvalidInputError(encrypted_key(parameter)) from None
    except Exception as e:
        raise InvalidInputError(not_a_pem_key(parameter, kind, str(e))) from None
    expected = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
    return _require_supported_curve(key, expected, parameter)


def _require_supported_curve(key: Any, kind: type, parameter: str) -> Any:
    curve = getattr(getattr(key, 'curve', None), 'name', None)
    if not isinstance(key, kind) or curve not in CURVES:
        found = f'an elliptic-curve key on {curve}' if curve else f'of type {type(key).__name__}'
        raise InvalidInputError(unsupported_key(parameter, found))
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
        raise InvalidInputError(no_certificate(parameter, str(e))) from None
    return certificates


def require_signing_certificate(chain: Sequence[Any], private_key: Any) -> None:
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
            "signing_certificate_chain's first certificate "
            f'({leaf.subject.rfc4514_string()}) allows neither digital signatures (KeyUsage) '
            'nor code signing (ExtendedKeyUsage); expected one that may sign, as '
            '`model_signing verify` refuses signatures made with any other'
        )
