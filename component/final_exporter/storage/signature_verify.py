"""Verifying an export's signature on any store (`final-exporter verify --public-key`).

The check `model_signing verify` makes, through the store: the signature must
verify with the given public key (or chain up to the given certificates), and
every file of the export must be in the signed statement with the SHA-256 of
its bytes, read again here: a manifest in a bucket is no proof until the
signature is checked, so nothing is taken from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.storage.signing import GIT_PATHS, is_ignored, whole_file_sha256
from final_exporter.storage.signing_keys import (
    certificate_identity,
    key_fingerprint,
    load_certificates,
    load_key,
    read_key_material,
)
from final_exporter.storage.stores import store_for


def require_model_signing() -> ModuleType:
    """The seam over the standard's verifiers (storage/model_signing_seam.py).

    Raises:
        InvalidInputError: when the `[signing]` extra is not installed, or cannot run
            here (Python 3.10, TFX 1.16: see pyproject.toml).
    """
    try:
        from final_exporter.storage import model_signing_seam
    except ImportError as e:
        raise InvalidInputError(
            'verifying a signature needs the model-signing package: pip install '
            f"'tfx-final-exporter[signing]' on Python 3.11+ ({type(e).__name__}: {e})"
        ) from None
    return model_signing_seam


@dataclasses.dataclass
class SignatureReport:
    """The outcome of `verify_signature`.

    Attributes:
        export_dir: The export checked.
        error: Why the signature itself does not verify; '' when it does.
        missing: Signed files the export lacks.
        extra: Files of the export the signature does not cover.
        changed: Files whose bytes differ from what was signed.
        signer: The signer as the signature shows it (`SignerIdentity.to_lineage` keys).
        files_checked: Files read again and compared.
        bytes_checked: Their bytes.
    """

    export_dir: str
    error: str = ''
    missing: list[str] = dataclasses.field(default_factory=list)
    extra: list[str] = dataclasses.field(default_factory=list)
    changed: list[str] = dataclasses.field(default_factory=list)
    signer: dict[str, Any] = dataclasses.field(default_factory=dict)
    files_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.error or self.missing or self.extra or self.changed)

    def problems(self) -> list[str]:
        return (
            ([f'signature: {self.error}'] if self.error else [])
            + [f'missing: {p}' for p in self.missing]
            + [f'extra: {p}' for p in self.extra]
            + [f'changed: {p}' for p in self.changed]
        )

    def as_dict(self) -> dict[str, Any]:
        """The report as the CLI's `--json` prints it."""
        return {'ok': self.ok, **dataclasses.asdict(self)}


def verify_signature(
    export_dir: str, *, public_key: str = '', certificate_chain: str = ''
) -> SignatureReport:
    """Checks an export (a folder or a bucket prefix) against its signature.

    Args:
        export_dir: The export (version) folder or prefix.
        public_key: For key signing: the signer's public key (PEM), as a path, a
            gs:// or s3:// object, or env:NAME.
        certificate_chain: For certificate signing: the certificates to trust (PEM,
            the root and any intermediates the signature does not carry), in the
            same forms.

    Returns:
        A SignatureReport; `ok` is True when the signature verifies and covers
        exactly the export's bytes.

    Raises:
        InvalidInputError: if not exactly one of `public_key` and `certificate_chain`
            is given, either is missing or malformed, or model-signing is missing.
    """
    if bool(public_key) == bool(certificate_chain):
        raise InvalidInputError(
            'verifying a signature needs exactly one of --public-key (key signing) and '
            '--certificate-chain (certificate signing)'
        )
    key = roots = None
    if public_key:
        data = read_key_material(public_key, '--public-key')
        key = load_key(data, '--public-key', private=False)
    else:
        data = read_key_material(certificate_chain, '--certificate-chain')
        roots = load_certificates(data, '--certificate-chain')
    seam = require_model_signing()
    report = SignatureReport(export_dir=export_dir)
    store = store_for(export_dir)
    try:
        bundle = store.read_bytes(store.join(export_dir, *keys.SIGNATURE_RELPATH.split('/')))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        report.error = f'{export_dir!r} has no {keys.SIGNATURE_RELPATH}; it was not signed'
        return report
    try:
        signed = seam.verify(bundle, key, roots or [])
    except Exception as e:  # The standard's verifiers raise ValueError, OpenSSL and crypto errors.
        report.error = f'{keys.SIGNATURE_RELPATH} does not verify ({type(e).__name__}: {e})'
        return report
    report.signer = _signer(signed, key)
    if error := _unsupported(signed.serialization, signed.algorithms):
        report.error = error
        return report
    ignored = [keys.SIGNATURE_RELPATH, *GIT_PATHS, *signed.serialization.get('ignore_paths', [])]
    _compare(store, export_dir, signed.digests, ignored, report)
    return report


def _signer(signed: Any, key: Any) -> dict[str, Any]:
    if signed.certificate is not None:
        return {
            'method': 'certificate',
            'key_fingerprint': key_fingerprint(signed.certificate.public_key()),
            'certificate': certificate_identity(signed.certificate),
        }
    return {'method': 'key', 'key_fingerprint': key_fingerprint(key)}


def _unsupported(serialization: Mapping[str, Any], algorithms: frozenset[str]) -> str:
    """Why a verified statement is not one this check can compare; '' when it is."""
    if serialization.get('method') == 'files' and algorithms <= {'sha256'}:
        return ''
    return (
        f'the signature is in the {serialization.get("method")!r} serialization with '
        f'{", ".join(sorted(algorithms))}; expected whole-file sha256 (method "files"), '
        'as final-exporter signs'
    )


def _compare(
    store: Any,
    export_dir: str,
    signed: Mapping[str, str],
    ignored: list[str],
    report: SignatureReport,
) -> None:
    """Fills the report's missing, extra and changed files: every byte read again."""
    found = {p: s for p, s in store.list_files(export_dir).items() if not is_ignored(p, ignored)}
    report.missing = sorted(set(signed) - set(found))
    report.extra = sorted(set(found) - set(signed))
    common = sorted(set(signed) & set(found))
    for path, (size, digest) in whole_file_sha256(store, export_dir, common).items():
        report.files_checked += 1
        report.bytes_checked += size
        if digest != signed[path]:
            report.changed.append(path)
