"""Signing an export (storage/signing.py), in every tested environment.

Signing needs `cryptography` alone, so it runs beside TFX 1.16 too. These tests
check the bundle with `cryptography` and `hashlib`; test_signature_verify.py
checks it with the standard's own verifier and `model_signing verify` command,
where model-signing installs (Python 3.11+).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519

from final_exporter.common import keys
from final_exporter.common.errors import InvalidInputError
from final_exporter.core.config import ExportConfig
from final_exporter.core.report import render_report
from final_exporter.storage import signature_verify
from final_exporter.storage.manifest import manifest_bytes
from final_exporter.storage.objectstore import split_uri
from final_exporter.storage.pem_check import check_private_key_pem
from final_exporter.storage.signing import GIT_PATHS, SignerLoading, load_signer, pae
from final_exporter.storage.stores import client_for, list_versions, override_client, store_for
from final_exporter.storage.verify import read_manifest, verify_export
from test_faults import FaultyClient
from test_serving_contract import publish

from conftest import assert_nothing_written, tree_files
from signing_support import (
    Pki,
    certificate_pem,
    export,
    new_key,
    private_pem,
    public_pem,
    sign_published,
    write,
    write_object,
)

CLI = os.path.join(os.path.dirname(sys.executable), 'final-exporter')


@pytest.fixture
def key_file(tmp_path):
    key = new_key()
    return key, write(tmp_path / 'signer.key', private_pem(key))


def signature_of(export_dir: str) -> bytes:
    with open(os.path.join(export_dir, *keys.SIGNATURE_RELPATH.split('/')), 'rb') as f:
        return f.read()


def statement_of(signature: bytes, public_key) -> dict:
    """The statement in a key-signed bundle, after checking its ECDSA signature over DSSE's PAE."""
    bundle = json.loads(signature)
    envelope = bundle['dsseEnvelope']
    payload = base64.b64decode(envelope['payload'])
    public_key.verify(
        base64.b64decode(envelope['signatures'][0]['sig']),
        pae(payload),
        ec.ECDSA(hashes.SHA256()),
    )
    return json.loads(payload)


def test_signature_covers_every_files_bytes_and_the_manifest(
    model_uri, export_base, tmp_path, key_file
):
    key, key_path = key_file
    # 40 MiB: two manifest chunks, so signing reads this file again for its whole-file SHA-256.
    large = write(tmp_path / 'vocabulary.bin', os.urandom(40 * 1024 * 1024))
    empty = write(tmp_path / 'empty', b'')
    export_dir = export(
        model_uri,
        export_base,
        assets_extra={'vocab.bin': large, 'empty': empty},
        signing_key=key_path,
    )
    manifest, _ = read_manifest(export_dir)
    assert any(
        f['path'] == 'assets.extra/vocab.bin' and 'chunked_sha256' in f for f in manifest['files']
    )
    assert (
        manifest['lineage'][keys.SIGNING_LINEAGE_KEY] == load_signer(key_path).identity.to_lineage()
    )

    signature = signature_of(export_dir)

    statement = statement_of(signature, key.public_key())
    on_disk = {
        p.replace(os.sep, '/'): hashlib.sha256(data).hexdigest()
        for p, data in tree_files(export_dir).items()
        if p.replace(os.sep, '/') != keys.SIGNATURE_RELPATH
    }
    signed = {r['name']: r['digest'] for r in statement['predicate']['resources']}
    assert signed == on_disk
    assert keys.MANIFEST_RELPATH in signed and 'assets.extra/empty' in signed
    assert statement['predicate']['serialization'] == {
        'method': 'files',
        'hash_type': 'sha256',
        'allow_symlinks': False,
        'ignore_paths': [keys.SIGNATURE_RELPATH, *GIT_PATHS],
    }
    # The subject: SHA-256 over the resources' digests in model_signing's order.
    names = [r['name'] for r in statement['predicate']['resources']]
    assert names == sorted(names, key=lambda n: n.split('/'))
    root = hashlib.sha256(b''.join(bytes.fromhex(signed[n]) for n in names)).hexdigest()
    assert statement['subject'] == [{'name': 'penguin', 'digest': {'sha256': root}}]
    bundle = json.loads(signature)
    assert bundle['mediaType'] == 'application/vnd.dev.sigstore.bundle.v0.3+json'
    pem_hint = hashlib.sha256(public_pem(key)).hexdigest()
    assert bundle['verificationMaterial'] == {'publicKey': {'hint': pem_hint}, 'tlogEntries': []}
    assert verify_export(export_dir).ok


def test_the_recorded_fingerprint_is_what_openssl_computes(tmp_path, key_file):
    _, key_path = key_file
    der = subprocess.run(
        ['openssl', 'pkey', '-in', key_path, '-pubout', '-outform', 'DER'],
        capture_output=True,
        check=True,
    ).stdout
    identity = load_signer(key_path).identity.to_lineage()
    assert identity['key_fingerprint'] == 'sha256:' + hashlib.sha256(der).hexdigest()
    assert identity['method'] == 'key'
    assert identity['signature'] == keys.SIGNATURE_RELPATH


def test_certificate_signing_records_the_signers_identity_and_carries_the_chain(tmp_path):
    pki = Pki()
    key_path, chain_path, _ = pki.write(tmp_path / 'pki')
    signer = load_signer(key_path, chain_path)
    certificate = signer.identity.to_lineage()['certificate']
    assert certificate['subject'] == 'CN=ml-platform model signer'
    assert certificate['issuer'] == 'CN=ml-platform intermediate CA'
    assert certificate['subject_alternative_names'] == [
        'signer@example.com',
        'https://ci.example.com/pipelines/penguin',
    ]
    bundle = json.loads(signer.sign({}, b'{}\n', model_name='m'))
    carried = bundle['verificationMaterial']['x509CertificateChain']['certificates']
    assert [base64.b64decode(c['rawBytes']) for c in carried] == [
        pki.leaf.public_bytes(encoding=_der()),
        pki.intermediate.public_bytes(encoding=_der()),
    ]


def _der():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


def test_the_key_can_come_from_an_environment_variable(monkeypatch, key_file):
    _, key_path = key_file
    with open(key_path) as f:
        monkeypatch.setenv('PENGUIN_SIGNING_KEY', f.read())
    signer = load_signer('env:PENGUIN_SIGNING_KEY')
    assert signer.identity == load_signer(key_path).identity


def test_the_key_and_chain_can_be_bucket_objects(gcs_base, tmp_path):
    pki = Pki()
    key_path, chain_path, _ = pki.write(tmp_path / 'pki')
    for name, path in (('signer.key', key_path), ('chain.pem', chain_path)):
        with open(path, 'rb') as f:
            write_object(f'{gcs_base}/keys', name, f.read())
    signer = load_signer(f'{gcs_base}/keys/signer.key', f'{gcs_base}/keys/chain.pem')
    assert signer.identity == load_signer(key_path, chain_path).identity


def _bad_key_inputs(tmp_path, monkeypatch) -> dict[str, tuple[dict, str]]:
    """{case: (load_signer arguments, what the message must say)}."""
    pki, stranger = Pki(), Pki('other')
    good_key, _, _ = pki.write(tmp_path / 'pki')
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    monkeypatch.setenv('GARBAGE_KEY', 'not a key')
    monkeypatch.delenv('UNSET_KEY', raising=False)
    no_signing = Pki('encipher-only', code_signing=False)
    return {
        'missing file': ({'signing_key': str(tmp_path / 'nope.key')}, 'cannot be read'),
        'a folder': ({'signing_key': str(tmp_path)}, 'cannot be read'),
        'not PEM': ({'signing_key': write(tmp_path / 'x.key', b'hello')}, 'not a PEM private key'),
        'RSA key': (
            {'signing_key': write(tmp_path / 'rsa.key', private_pem(rsa_key))},
            'RSA',
        ),
        'secp256k1': (
            {'signing_key': write(tmp_path / 'k1.key', private_pem(new_key(ec.SECP256K1())))},
            'on secp256k1',
        ),
        'encrypted': (
            {'signing_key': write(tmp_path / 'enc.key', private_pem(new_key(), b'secret'))},
            'encrypted private key',
        ),
        'unset variable': ({'signing_key': 'env:UNSET_KEY'}, "variable 'UNSET_KEY'"),
        'garbage variable': ({'signing_key': 'env:GARBAGE_KEY'}, 'not a PEM private key'),
        'missing bucket object': (
            {'signing_key': 'gs://no-such-bucket-for-keys/signer.key'},
            'cannot be read',
        ),
        'chain not PEM': (
            {'signing_key': good_key, 'signing_certificate_chain': write(tmp_path / 'c', b'x')},
            'holds no PEM certificate',
        ),
        "another key's certificate": (
            {
                'signing_key': good_key,
                'signing_certificate_chain': write(
                    tmp_path / 'stranger.pem', certificate_pem(stranger.leaf)
                ),
            },
            'is not for signing_key',
        ),
        'certificate that may not sign': (
            {
                'signing_key': write(tmp_path / 'ns.key', private_pem(no_signing.leaf_key)),
                'signing_certificate_chain': write(
                    tmp_path / 'ns.pem', certificate_pem(no_signing.leaf)
                ),
            },
            'allows neither digital signatures',
        ),
        'chain in the wrong order': (
            {
                'signing_key': good_key,
                'signing_certificate_chain': write(
                    tmp_path / 'reversed.pem', certificate_pem(pki.intermediate, pki.leaf)
                ),
            },
            'is not for signing_key',
        ),
    }


BAD_KEY_CASES = [
    'missing file',
    'a folder',
    'not PEM',
    'RSA key',
    'secp256k1',
    'encrypted',
    'unset variable',
    'garbage variable',
    'missing bucket object',
    'chain not PEM',
    "another key's certificate",
    'certificate that may not sign',
    'chain in the wrong order',
]


@pytest.mark.parametrize('case', BAD_KEY_CASES)
def test_a_bad_key_or_chain_is_bad_input_with_one_message(case, tmp_path, monkeypatch, request):
    if case == 'missing bucket object':
        request.getfixturevalue('gcs_server')
    arguments, expected = _bad_key_inputs(tmp_path, monkeypatch)[case]
    with pytest.raises(InvalidInputError) as raised:
        load_signer(**arguments)
    message = str(raised.value)
    assert expected in message
    assert '\n' not in message
    named = (
        'signing_certificate_chain' if 'chain' in case or 'certificate' in case else 'signing_key'
    )
    assert named in message


# What only `cryptography` can tell: found by the full load, beside the copy.
FOUND_BY_THE_FULL_LOAD = {
    "another key's certificate",
    'certificate that may not sign',
    'chain in the wrong order',
}


@pytest.mark.parametrize('case', BAD_KEY_CASES)
def test_the_plan_finds_a_bad_key_file_before_loading_it_and_the_full_load_the_rest(
    case, tmp_path, monkeypatch, request
):
    if case == 'missing bucket object':
        request.getfixturevalue('gcs_server')
    arguments, expected = _bad_key_inputs(tmp_path, monkeypatch)[case]
    if case in FOUND_BY_THE_FULL_LOAD:
        loading = SignerLoading(**arguments)
        with pytest.raises(InvalidInputError, match=expected):
            loading.result()
    else:
        with pytest.raises(InvalidInputError, match=expected):
            SignerLoading(**arguments)


@pytest.mark.parametrize('case', BAD_KEY_CASES)
def test_an_export_with_a_bad_key_or_chain_fails_with_its_message_and_nothing_written(
    case, model_uri, export_base, tmp_path, monkeypatch, request
):
    if case == 'missing bucket object':
        request.getfixturevalue('gcs_server')
    arguments, expected = _bad_key_inputs(tmp_path, monkeypatch)[case]
    with pytest.raises(InvalidInputError, match=expected):
        export(model_uri, export_base, **arguments)
    assert_nothing_written(export_base)


def _key_files() -> dict[str, bytes]:
    """Private keys of every kind and PEM form `cryptography` writes."""
    formats = {
        'PKCS#8': serialization.PrivateFormat.PKCS8,
        'traditional': serialization.PrivateFormat.TraditionalOpenSSL,
    }
    curves = (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1(), ec.SECP224R1())
    keys_ = {
        **{c.name: ec.generate_private_key(c) for c in curves},
        'RSA': rsa.generate_private_key(public_exponent=65537, key_size=1024),
        'DSA': dsa.generate_private_key(key_size=1024),
        'Ed25519': ed25519.Ed25519PrivateKey.generate(),
        'X25519': x25519.X25519PrivateKey.generate(),
    }
    encryptions = {
        '': serialization.NoEncryption(),
        ' encrypted': serialization.BestAvailableEncryption(b'secret'),
    }
    files = {}
    for name, key in keys_.items():
        for form, fmt in formats.items():
            for encrypted, encryption in encryptions.items():
                with contextlib.suppress(ValueError):  # A form this kind of key has not.
                    pem = key.private_bytes(serialization.Encoding.PEM, fmt, encryption)
                    files[f'{name} {form}{encrypted}'] = pem
    p256 = keys_['secp256r1']
    traditional = files['secp256r1 traditional']
    files['EC PARAMETERS block first'] = (
        b'-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n'
        + traditional
    )
    files['public key'] = public_pem(p256)
    files['certificate'] = certificate_pem(Pki().leaf)
    files['truncated'] = traditional[: len(traditional) // 2] + traditional[-30:]
    files['bad base64'] = traditional.replace(traditional.splitlines()[1][:8], b'!!!!!!!!')
    return files


def test_the_plans_key_check_refuses_a_key_file_exactly_when_the_full_load_does(tmp_path):
    verdicts = {}
    for kind, data in _key_files().items():
        try:
            check_private_key_pem(data, 'signing_key')
            plan = 'accepted'
        except InvalidInputError:
            plan = 'refused'
        try:
            load_signer(write(tmp_path / 'key.pem', data))
            full = 'accepted'
        except InvalidInputError:
            full = 'refused'
        verdicts[kind] = (plan, full)
    assert {k: v for k, v in verdicts.items() if v[0] != v[1]} == {}
    accepted = sorted(k for k, (plan, _) in verdicts.items() if plan == 'accepted')
    assert accepted == sorted(
        [
            f'{curve} {form}'
            for curve in ('secp256r1', 'secp384r1', 'secp521r1')
            for form in ('PKCS#8', 'traditional')
        ]
        + ['EC PARAMETERS block first']
    )


def test_loading_a_key_and_signing_leave_cryptographys_ssh_support_unimported(key_file):
    """The signing thread's CPU is what signing costs an export whose copy keeps every core
    busy: half of it was importing `cryptography.hazmat.primitives.serialization`, which
    imports its SSH key support too."""
    _, key_path = key_file
    code = (
        'import sys\n'
        'from final_exporter.storage.signing import load_signer\n'
        f'load_signer({key_path!r}).sign({{"a": "00" * 32}}, b"{{}}", model_name="m")\n'
        'print(sorted(m for m in sys.modules if m.startswith("cryptography.hazmat.primitives.serialization")))\n'
    )
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == '[]'


def test_a_file_of_the_export_at_the_signatures_path_is_refused(
    model_uri, export_base, tmp_path, key_file
):
    _, key_path = key_file
    planted = write(tmp_path / 'model.sig', b'{}')
    with pytest.raises(InvalidInputError, match='reserved for the export signature'):
        ExportConfig(
            name='penguin', export_base=export_base, assets_extra={keys.SIGNATURE_FILENAME: planted}
        )
    # An export another tool changed: a file of its own listed at the signature's path.
    export_dir = export(model_uri, export_base)
    manifest, _ = read_manifest(export_dir)
    write_object(export_dir, keys.SIGNATURE_RELPATH, b'{}')
    manifest['files'].append({'path': keys.SIGNATURE_RELPATH, 'size': 2, 'sha256': '0' * 64})
    write_object(export_dir, keys.MANIFEST_RELPATH, manifest_bytes(manifest))
    with pytest.raises(InvalidInputError, match='reserved for the export signature'):
        sign_published(export_dir, load_signer(key_path))


def test_git_files_are_left_out_as_model_signing_leaves_them_out(model_uri, export_base, key_file):
    key, key_path = key_file
    with open(os.path.join(model_uri, 'Format-Serving', '.gitignore'), 'w') as f:
        f.write('*.tmp\n')
    export_dir = export(model_uri, export_base, signing_key=key_path)
    assert os.path.exists(os.path.join(export_dir, '.gitignore'))
    statement = statement_of(signature_of(export_dir), key.public_key())
    assert '.gitignore' not in {r['name'] for r in statement['predicate']['resources']}


def test_the_manifest_check_reports_a_signed_exports_removed_signature(
    model_uri, export_base, key_file
):
    _, key_path = key_file
    export_dir = export(model_uri, export_base, signing_key=key_path)
    assert verify_export(export_dir).ok
    os.remove(os.path.join(export_dir, *keys.SIGNATURE_RELPATH.split('/')))
    assert verify_export(export_dir).missing == [keys.SIGNATURE_RELPATH]


def test_verifying_needs_exactly_one_of_a_public_key_and_a_chain(tmp_path):
    with pytest.raises(InvalidInputError, match='exactly one of --public-key'):
        signature_verify.verify_signature(str(tmp_path))
    with pytest.raises(InvalidInputError, match='exactly one of --public-key'):
        signature_verify.verify_signature(str(tmp_path), public_key='a', certificate_chain='b')


def test_verifying_says_how_to_get_model_signing_where_it_is_absent():
    if sys.version_info >= (3, 11):
        # The [signing] extra installs model-signing here: the standard's verifiers load.
        assert signature_verify.require_model_signing().verify
        return
    with pytest.raises(InvalidInputError, match=r"pip install 'tfx-final-exporter\[signing\]'"):
        signature_verify.require_model_signing()


# --- Signing inside the export ------------------------------------------------------


def signed_files(statement: dict) -> dict[str, str]:
    return {r['name']: r['digest'] for r in statement['predicate']['resources']}


def test_a_key_from_an_environment_variable_signs_the_export_and_the_signer_is_recorded(
    model_uri, export_base, monkeypatch, key_file
):
    key, key_path = key_file
    with open(key_path) as f:
        monkeypatch.setenv('PENGUIN_SIGNING_KEY', f.read())

    result = publish(model_uri, export_base, signing_key='env:PENGUIN_SIGNING_KEY')

    identity = load_signer(key_path).identity.to_lineage()
    assert result.lineage[keys.SIGNING_LINEAGE_KEY] == identity
    sealed, _ = read_manifest(result.export_dir)
    assert sealed['lineage'][keys.SIGNING_LINEAGE_KEY] == identity  # Signed with the rest.
    assert json.loads(result.properties()[keys.SIGNING_LINEAGE_KEY]) == identity
    assert (
        f'| Signed by | key, key fingerprint {identity["key_fingerprint"]}; signature '
        'assets.extra/model.sig |'
    ) in render_report(result).replace('\\', '')
    statement = statement_of(signature_of(result.export_dir), key.public_key())
    on_disk = {
        p.replace(os.sep, '/'): hashlib.sha256(data).hexdigest()
        for p, data in tree_files(result.export_dir).items()
        if p.replace(os.sep, '/') != keys.SIGNATURE_RELPATH
    }
    assert signed_files(statement) == on_disk
    assert verify_export(result.export_dir).ok


def test_certificate_signing_inside_the_export_records_the_certificate(
    model_uri, export_base, tmp_path
):
    pki = Pki()
    key_path, chain_path, _ = pki.write(tmp_path / 'pki')

    result = publish(
        model_uri, export_base, signing_key=key_path, signing_certificate_chain=chain_path
    )

    signing = result.lineage[keys.SIGNING_LINEAGE_KEY]
    assert signing['method'] == 'certificate'
    assert signing['certificate']['subject'] == 'CN=ml-platform model signer'
    assert (
        'certificate CN=ml-platform model signer (issued by CN=ml-platform intermediate CA)'
        in render_report(result).replace('\\', '')
    )
    bundle = json.loads(signature_of(result.export_dir))
    assert len(bundle['verificationMaterial']['x509CertificateChain']['certificates']) == 2


def test_a_certificate_chain_without_its_key_is_refused():
    with pytest.raises(InvalidInputError, match='signing_certificate_chain given without'):
        ExportConfig(name='m', export_base='/tmp/x', signing_certificate_chain='chain.pem')


def test_the_cli_signs_with_its_flags_and_names_the_signer(model_uri, export_base, key_file):
    _, key_path = key_file
    fingerprint = load_signer(key_path).identity.key_fingerprint
    args = ['export', '--model', model_uri, '--export-base', export_base, '--name', 'penguin',
            '--no-require-blessing', '--no-smoke-test', '--signing-key', key_path]  # fmt: skip

    as_json = subprocess.run([CLI, *args, '--json'], capture_output=True, text=True, timeout=300)
    text = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)

    assert as_json.returncode == 0, as_json.stderr
    signing = json.loads(as_json.stdout)['lineage'][keys.SIGNING_LINEAGE_KEY]
    assert signing['method'] == 'key' and signing['key_fingerprint'] == fingerprint
    assert text.returncode == 0, text.stderr
    assert f'; signed by key, key fingerprint {fingerprint}' in text.stdout


def test_a_signed_export_of_a_signed_export_signs_its_own_files(
    model_uri, export_base, tmp_path, key_file
):
    _, key_path = key_file
    first = publish(model_uri, export_base, signing_key=key_path)
    other = write(tmp_path / 'other.key', private_pem(new_key()))

    again = publish(first.export_dir, str(tmp_path / 'again'), signing_key=other)
    unsigned = publish(first.export_dir, str(tmp_path / 'unsigned'))

    # The earlier signature (over the earlier manifest) is not carried over.
    assert keys.SIGNATURE_RELPATH not in {f['path'] for f in again.manifest['files']}
    assert again.lineage[keys.SIGNING_LINEAGE_KEY] == load_signer(other).identity.to_lineage()
    statement = statement_of(
        signature_of(again.export_dir), load_signer(other).private_key.public_key()
    )
    _, manifest_sha256 = read_manifest(again.export_dir)
    assert signed_files(statement)[keys.MANIFEST_RELPATH] == manifest_sha256
    assert not os.path.exists(os.path.join(unsigned.export_dir, *keys.SIGNATURE_RELPATH.split('/')))
    assert keys.SIGNING_LINEAGE_KEY not in unsigned.lineage
    assert verify_export(again.export_dir).ok and verify_export(unsigned.export_dir).ok


def test_a_bucket_export_is_signed_through_the_store(bucket_base, model_uri, tmp_path, key_file):
    base, _ = bucket_base
    key, key_path = key_file
    # Two manifest chunks: its whole-file digest is read from the staged object.
    large = write(tmp_path / 'vocab.bin', os.urandom(40 * 1024 * 1024))

    result = publish(model_uri, base, signing_key=key_path, assets_extra={'v.bin': large})

    store = store_for(result.export_dir)
    signature = store.read_bytes(f'{result.export_dir}/{keys.SIGNATURE_RELPATH}')
    signed = signed_files(statement_of(signature, key.public_key()))
    listed = {p for p in store.list_files(result.export_dir) if p != keys.SIGNATURE_RELPATH}
    assert set(signed) == listed
    for path in ('assets.extra/v.bin', keys.MANIFEST_RELPATH, 'saved_model.pb'):
        data = store.read_bytes(f'{result.export_dir}/{path}')
        assert signed[path] == hashlib.sha256(data).hexdigest(), path
    assert verify_export(result.export_dir).ok


class SignatureUploadRefused(FaultyClient):
    """A real bucket client whose bucket refuses the signature's upload (and nothing else)."""

    def __init__(self, real) -> None:
        super().__init__(real, fail_at=0)  # No call is the 0th: only the signature fails.

    def upload_bytes(self, data, uri, *, overwrite=False):
        if uri.endswith('/' + keys.SIGNATURE_RELPATH):
            raise OSError(f'injected fault: the bucket refused {uri}')
        return super().upload_bytes(data, uri, overwrite=overwrite)


def test_when_signing_fails_nothing_is_published(bucket_base, model_uri, key_file):
    base, _ = bucket_base
    _, key_path = key_file
    scheme, _, _ = split_uri(base)
    real = client_for(base)

    with (
        override_client(scheme, SignatureUploadRefused(real)),
        pytest.raises(OSError, match='the bucket refused'),
    ):
        publish(model_uri, base, signing_key=key_path)

    model_base = f'{base}/penguin'
    assert list_versions(model_base) == []
    left = {uri for uri in real.list(model_base)}
    assert not any(keys.STAGING_PREFIX in uri for uri in left), left
