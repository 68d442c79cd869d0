"""A signing key's and certificate chain's PEM, checked without importing `cryptography`.

Loading a key with `cryptography` starts with importing its serialization
modules: about 35 ms of CPU, which an export would wait for before its copy
starts. The plan checks here, in microseconds, what a user can get wrong about
a key file: not PEM, no private key in it, encrypted, not an elliptic-curve
key, a curve OpenSSF Model Signing does not accept, a chain with no
certificate. `signing.SignerLoading` then loads the key in full beside the copy
(`signing_keys`: the key's numbers, the certificate's key and usage).

Lenient where the full load decides: what this reads as a supported named curve,
or as explicit curve parameters, passes; `cryptography` has the last word.
"""

from __future__ import annotations

import base64
import binascii
import re

from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.signing_keys import (
    CURVES,
    encrypted_key,
    no_certificate,
    not_a_pem_key,
    unsupported_key,
)

# The PEM blocks `cryptography.load_pem_private_key` takes a key from: the first of these.
_KEY_LABELS = (
    'PRIVATE KEY',
    'ENCRYPTED PRIVATE KEY',
    'RSA PRIVATE KEY',
    'EC PRIVATE KEY',
    'DSA PRIVATE KEY',
)
_CERTIFICATE_LABELS = ('CERTIFICATE', 'X509 CERTIFICATE')
_BLOCK = re.compile(rb'-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----', re.S)

_EC_PUBLIC_KEY = '1.2.840.10045.2.1'
# Algorithm and named-curve OIDs a key file may name (RFC 5480, RFC 8410, RFC 3279).
_OID_NAMES = {
    '1.2.840.10045.3.1.7': 'secp256r1',
    '1.3.132.0.34': 'secp384r1',
    '1.3.132.0.35': 'secp521r1',
    '1.3.132.0.10': 'secp256k1',
    '1.2.840.10045.3.1.1': 'secp192r1',
    '1.3.132.0.33': 'secp224r1',
    '1.2.840.113549.1.1.1': 'RSA',
    '1.2.840.113549.1.1.10': 'RSA-PSS',
    '1.2.840.10040.4.1': 'DSA',
    '1.3.101.110': 'X25519',
    '1.3.101.111': 'X448',
    '1.3.101.112': 'Ed25519',
    '1.3.101.113': 'Ed448',
}
_SEQUENCE, _INTEGER, _OCTET_STRING, _OID, _CURVE_TAG = 0x30, 0x02, 0x04, 0x06, 0xA0


def check_private_key_pem(data: bytes, parameter: str) -> None:
    """Fails unless `data` holds an unencrypted elliptic-curve private key in PEM that may
    be on a curve the standard accepts.

    Raises:
        InvalidInputError: naming `parameter` and what the file holds instead.
    """
    blocks = [(label, body) for label, body in _blocks(data) if label in _KEY_LABELS]
    if not blocks:
        raise InvalidInputError(not_a_pem_key(parameter, 'private', 'no private key block'))
    label, body = blocks[0]
    if label == 'ENCRYPTED PRIVATE KEY' or b'Proc-Type: 4,ENCRYPTED' in body:
        raise InvalidInputError(encrypted_key(parameter))
    if label in ('RSA PRIVATE KEY', 'DSA PRIVATE KEY'):
        raise InvalidInputError(unsupported_key(parameter, f'a private key for {label[:3]}'))
    try:
        found = _unsupported(_der(body), pkcs8=label == 'PRIVATE KEY')
    except ValueError as e:
        raise InvalidInputError(not_a_pem_key(parameter, 'private', str(e))) from None
    if found:
        raise InvalidInputError(unsupported_key(parameter, found))


def check_certificates_pem(data: bytes, parameter: str) -> None:
    """Fails unless `data` holds at least one PEM certificate.

    Raises:
        InvalidInputError: naming `parameter`.
    """
    for label, body in _blocks(data):
        if label in _CERTIFICATE_LABELS:
            try:
                _expect(_der(body), 0, _SEQUENCE)
            except ValueError as e:
                raise InvalidInputError(no_certificate(parameter, str(e))) from None
            return
    raise InvalidInputError(no_certificate(parameter, 'no CERTIFICATE block'))


def _blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(2)) for m in _BLOCK.finditer(data)]


def _der(body: bytes) -> bytes:
    """The DER inside a PEM block's body (after any RFC 1421 headers)."""
    lines = [line.strip() for line in body.strip().splitlines()]
    text = b''.join(line for line in lines if line and b':' not in line)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as e:
        raise ValueError(f'its base64 does not decode: {e}') from None


def _unsupported(der: bytes, *, pkcs8: bool) -> str | None:
    """What a key's DER is when it is not a key on a curve the standard accepts; None when
    it is, or when its explicit curve parameters leave it to the full load."""
    body, _ = _expect(der, 0, _SEQUENCE)
    _, at = _expect(der, body, _INTEGER)  # The version.
    if pkcs8:  # PrivateKeyInfo (RFC 5208): the algorithm, then its parameters.
        algorithm, _ = _expect(der, at, _SEQUENCE)
        oid_body, at = _expect(der, algorithm, _OID)
        oid = _oid(der[oid_body:at])
        if oid != _EC_PUBLIC_KEY:
            return f'a private key for {_OID_NAMES.get(oid, f"the algorithm of OID {oid}")}'
        return _named_curve(der, at)
    _, at = _expect(der, at, _OCTET_STRING)  # ECPrivateKey (RFC 5915): the key, then [0]
    tag, parameters, _ = _tlv(der, at)  # its parameters.
    if tag != _CURVE_TAG:
        raise ValueError('the EC private key names no curve')
    return _named_curve(der, parameters)


def _named_curve(der: bytes, at: int) -> str | None:
    tag, body, end = _tlv(der, at)
    if tag != _OID:
        return None  # Explicit parameters.
    oid = _oid(der[body:end])
    curve = _OID_NAMES.get(oid, f'the curve of OID {oid}')
    return None if curve in CURVES else f'an elliptic-curve key on {curve}'


def _expect(der: bytes, at: int, tag: int) -> tuple[int, int]:
    """(body start, end) of the DER element at `at`, which must have `tag`."""
    found, body, end = _tlv(der, at)
    if found != tag:
        raise ValueError(f'unexpected DER tag 0x{found:02x} at byte {at}')
    return body, end


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of the DER element at `at`."""
    if at + 2 > len(der):
        raise ValueError('its DER ends early')
    tag, length, at = der[at], der[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or at + count > len(der):
            raise ValueError('its DER has a bad length')
        length, at = int.from_bytes(der[at : at + count], 'big'), at + count
    if at + length > len(der):
        raise ValueError('its DER ends early')
    return tag, at, at + length


def _oid(body: bytes) -> str:
    if not body:
        raise ValueError('its DER has an empty OID')
    arcs, value = [], 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return '.'.join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])
