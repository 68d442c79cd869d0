"""Real keys and certificates for the signing tests, and signing a published export.

Keys and certificates are made with `cryptography` as an operator's PKI would
make them: a root CA, an intermediate CA, and a code-signing certificate.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from final_exporter.common import keys
from final_exporter.core.config import ExportConfig
from final_exporter.core.exporter import ExportRequest, run_export
from final_exporter.storage.manifest import manifest_bytes
from final_exporter.storage.signing import ExportSigner, file_digests
from final_exporter.storage.stores import store_for
from final_exporter.storage.types import FileEntry
from final_exporter.storage.verify import read_manifest


def export(model_uri: str, export_base: str, **config) -> str:
    """Publishes a copy of `model_uri` under `export_base` (no blessing asked); its folder."""
    result = run_export(
        ExportRequest(
            config=ExportConfig(
                name='penguin', export_base=export_base, require_blessing=False, **config
            ),
            model_uri=model_uri,
        )
    )
    assert result.pushed, result.reason
    return result.export_dir


def new_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def private_pem(key, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certificate_pem(*certificates: x509.Certificate) -> bytes:
    return b''.join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def write(path, data: bytes) -> str:
    with open(path, 'wb') as f:
        f.write(data)
    return str(path)


def _certificate(
    subject: str,
    key,
    issuer: x509.Certificate | None,
    issuer_key,
    *,
    ca: bool,
    sans: Sequence[x509.GeneralName] = (),
    code_signing: bool = True,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca and code_signing,
                content_commitment=False,
                key_encipherment=not ca and not code_signing,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca and code_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """A root CA, an intermediate CA under it, and a code-signing leaf under that."""

    def __init__(self, name: str = 'ml-platform', code_signing: bool = True) -> None:
        self.root_key, self.intermediate_key, self.leaf_key = new_key(), new_key(), new_key()
        self.root = _certificate(f'{name} root CA', self.root_key, None, self.root_key, ca=True)
        self.intermediate = _certificate(
            f'{name} intermediate CA', self.intermediate_key, self.root, self.root_key, ca=True
        )
        self.leaf = _certificate(
            f'{name} model signer',
            self.leaf_key,
            self.intermediate,
            self.intermediate_key,
            ca=False,
            sans=[
                x509.RFC822Name('signer@example.com'),
                x509.UniformResourceIdentifier('https://ci.example.com/pipelines/penguin'),
            ],
            code_signing=code_signing,
        )

    def write(self, folder) -> tuple[str, str, str]:
        """(signing key, signing certificate chain, root) PEM files in `folder`."""
        os.makedirs(folder, exist_ok=True)
        return (
            write(os.path.join(folder, 'signer.key'), private_pem(self.leaf_key)),
            write(os.path.join(folder, 'chain.pem'), certificate_pem(self.leaf, self.intermediate)),
            write(os.path.join(folder, 'root.pem'), certificate_pem(self.root)),
        )


def manifest_entries(manifest) -> list[FileEntry]:
    return [
        FileEntry(f['path'], f['size'], f.get('sha256', ''), f.get('chunked_sha256', ''))
        for f in manifest['files']
    ]


def sign_published(export_dir: str, signer: ExportSigner, model_name: str = 'penguin') -> bytes:
    """Signs a published export as the export flow will: the signer's identity goes into the
    manifest's lineage, then the signature over the files and that manifest is written."""
    store = store_for(export_dir)
    manifest, _ = read_manifest(export_dir)
    manifest['lineage'][keys.SIGNING_LINEAGE_KEY] = signer.identity.to_lineage()
    data = manifest_bytes(manifest)
    write_object(export_dir, keys.MANIFEST_RELPATH, data)
    digests = file_digests(manifest_entries(manifest), store, export_dir)
    signature = signer.sign(digests, data, model_name=model_name)
    write_object(export_dir, keys.SIGNATURE_RELPATH, signature)
    return signature


def write_object(export_dir: str, relpath: str, data: bytes) -> None:
    """Writes (or replaces) one file of an export, on any store."""
    store = store_for(export_dir)
    path = store.join(export_dir, *relpath.split('/'))
    store.write_versioned(path, data, store.read_versioned(path).token)
