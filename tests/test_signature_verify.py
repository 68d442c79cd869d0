"""Signed exports checked by the standard's own tools and by `final-exporter verify`.

Every signature here is made by storage/signing.py on a real published export,
then checked by the unchanged `model_signing verify key` / `verify certificate`
commands and by `verify_signature` (the standard's verifiers, every byte read
again through the store). Needs model-signing: collected where the `[signing]`
extra installs it (Python 3.11+, conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from final_exporter.common import keys
from final_exporter.storage.manifest import manifest_bytes
from final_exporter.storage.signature_verify import verify_signature
from final_exporter.storage.signing import load_signer
from final_exporter.storage.stores import store_for
from final_exporter.storage.verify import read_manifest, verify_export

from signing_support import (
    Pki,
    export,
    new_key,
    private_pem,
    public_pem,
    sign_published,
    write,
    write_object,
)

BIN = os.path.dirname(sys.executable)
VARIABLES = 'variables/variables.data-00000-of-00001'


def model_signing_verify(export_dir: str, *how: str) -> subprocess.CompletedProcess:
    """The standard command, unchanged: `model_signing verify key|certificate ...`."""
    signature = os.path.join(export_dir, *keys.SIGNATURE_RELPATH.split('/'))
    return subprocess.run(
        [
            os.path.join(BIN, 'model_signing'),
            'verify',
            *how[:1],
            export_dir,
            '--signature',
            signature,
            *how[1:],
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def keypair(tmp_path) -> tuple[str, str]:
    """(private key file, public key file) of a fresh P-256 key."""
    key = new_key()
    return (
        write(tmp_path / 'signer.key', private_pem(key)),
        write(tmp_path / 'signer.pub', public_pem(key)),
    )


def test_a_key_signed_export_verifies_with_model_signing_and_final_exporter(
    model_uri, export_base, tmp_path, keypair
):
    key, public = keypair
    # Two manifest chunks (read again when signing), an empty file, and a git file
    # that both tools leave out.
    large = write(tmp_path / 'vocab.bin', os.urandom(40 * 1024 * 1024))
    empty = write(tmp_path / 'empty', b'')
    with open(os.path.join(model_uri, 'Format-Serving', '.gitignore'), 'w') as f:
        f.write('*.tmp\n')
    export_dir = export(
        model_uri, export_base, assets_extra={'vocab.bin': large, 'empty': empty}, signing_key=key
    )
    signer = load_signer(key)

    standard = model_signing_verify(export_dir, 'key', '--public_key', public)
    assert standard.returncode == 0, standard.stderr
    assert 'Verification succeeded' in standard.stdout

    report = verify_signature(export_dir, public_key=public)
    assert report.ok, report.problems()
    manifest, _ = read_manifest(export_dir)
    assert report.files_checked == len(manifest['files'])  # every file but .gitignore, + manifest
    assert report.signer == {'method': 'key', 'key_fingerprint': signer.identity.key_fingerprint}
    assert verify_export(export_dir).ok


def test_a_certificate_signed_export_verifies_with_model_signing_and_final_exporter(
    model_uri, export_base, tmp_path
):
    key, chain, root = Pki().write(tmp_path / 'pki')
    export_dir = export(model_uri, export_base, signing_key=key, signing_certificate_chain=chain)
    signer = load_signer(key, chain)

    standard = model_signing_verify(export_dir, 'certificate', '--certificate_chain', root)
    assert standard.returncode == 0, standard.stderr

    report = verify_signature(export_dir, certificate_chain=root)
    assert report.ok, report.problems()
    assert report.signer['certificate'] == dict(signer.identity.certificate)
    assert report.signer['certificate']['subject'] == 'CN=ml-platform model signer'


def _change_a_variables_byte(export_dir: str, tmp_path) -> str:
    path = os.path.join(export_dir, *VARIABLES.split('/'))
    with open(path, 'r+b') as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    return [VARIABLES]


def _add_a_file(export_dir: str, tmp_path) -> str:
    write(os.path.join(export_dir, 'assets.extra', 'backdoor.txt'), b'not signed')
    return ['assets.extra/backdoor.txt']


def _replace_the_manifest(export_dir: str, tmp_path) -> str:
    """What someone who can write to the bucket does: change a file, rewrite its manifest."""
    _change_a_variables_byte(export_dir, tmp_path)
    manifest, _ = read_manifest(export_dir)
    _, digest = store_for(export_dir).digest_file(
        os.path.join(export_dir, *VARIABLES.split('/')), 'sha256', 1 << 25
    )
    for entry in manifest['files']:
        if entry['path'] == VARIABLES:
            entry['sha256'] = digest
    write_object(export_dir, keys.MANIFEST_RELPATH, manifest_bytes(manifest))
    assert verify_export(export_dir).ok  # the manifest alone no longer tells
    return [keys.MANIFEST_RELPATH, VARIABLES]


def _sign_with_another_key(export_dir: str, tmp_path) -> str:
    other = write(tmp_path / 'other.key', private_pem(new_key()))
    sign_published(export_dir, load_signer(other))
    return []


TAMPERING = {
    'a changed byte in a variables shard': (_change_a_variables_byte, 'changed'),
    'an added file': (_add_a_file, 'extra'),
    'a replaced manifest': (_replace_the_manifest, 'changed'),
    'a signature by another key': (_sign_with_another_key, 'error'),
}


@pytest.mark.parametrize('tampering', list(TAMPERING))
def test_tampering_is_caught_by_model_signing_and_final_exporter(
    tampering, model_uri, export_base, tmp_path, keypair
):
    key, public = keypair
    export_dir = export(model_uri, export_base, signing_key=key)
    tamper, where = TAMPERING[tampering]
    paths = tamper(export_dir, tmp_path)

    standard = model_signing_verify(export_dir, 'key', '--public_key', public)
    assert standard.returncode == 1
    assert 'Verification failed' in standard.stderr

    report = verify_signature(export_dir, public_key=public)
    assert not report.ok
    if where == 'error':
        assert 'does not verify' in report.error and 'Key mismatch' in report.error
    else:
        assert getattr(report, where) == paths, report.problems()


def test_a_certificate_from_another_authority_is_refused_by_both(model_uri, export_base, tmp_path):
    key, chain, _ = Pki('intruder').write(tmp_path / 'intruder')
    _, _, trusted_root = Pki().write(tmp_path / 'trusted')
    export_dir = export(model_uri, export_base, signing_key=key, signing_certificate_chain=chain)

    standard = model_signing_verify(export_dir, 'certificate', '--certificate_chain', trusted_root)
    assert standard.returncode == 1

    report = verify_signature(export_dir, certificate_chain=trusted_root)
    assert 'does not verify' in report.error and not report.ok


def test_an_unsigned_export_fails_signature_verification(model_uri, export_base, keypair):
    _, public = keypair
    export_dir = export(model_uri, export_base)
    report = verify_signature(export_dir, public_key=public)
    assert not report.ok
    assert report.error == f'{export_dir!r} has no {keys.SIGNATURE_RELPATH}; it was not signed'


def test_a_bucket_exports_signature_verifies_and_a_replaced_object_is_caught(
    bucket_base, model_uri, keypair
):
    base, _ = bucket_base
    key, public = keypair
    export_dir = export(model_uri, base, signing_key=key)

    report = verify_signature(export_dir, public_key=public)
    assert report.ok, report.problems()
    assert report.bytes_checked > 0

    store = store_for(export_dir)
    path = store.join(export_dir, *VARIABLES.split('/'))
    data = bytearray(store.read_bytes(path))
    data[len(data) // 2] ^= 0x01
    write_object(export_dir, VARIABLES, bytes(data))
    assert verify_signature(export_dir, public_key=public).changed == [VARIABLES]


def test_final_exporter_verify_checks_the_signature_with_its_flags(model_uri, export_base, keypair):
    key, public = keypair
    cli = os.path.join(BIN, 'final-exporter')
    with open(key) as f:  # The key from the environment, as a pipeline step would get it.
        environ = {**os.environ, 'PENGUIN_SIGNING_KEY': f.read()}
    exported = subprocess.run(
        [cli, 'export', '--model', model_uri, '--export-base', export_base, '--name', 'penguin',
         '--no-require-blessing', '--no-smoke-test', '--signing-key', 'env:PENGUIN_SIGNING_KEY',
         '--json'],
        capture_output=True, text=True, timeout=300, env=environ,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    export_dir = json.loads(exported.stdout)['export_dir']
    standard = model_signing_verify(export_dir, 'key', '--public_key', public)
    assert standard.returncode == 0, standard.stderr

    run = subprocess.run(
        [cli, 'verify', export_dir, '--public-key', public, '--json'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result['ok'] and result['signer']['method'] == 'key'

    _add_a_file(export_dir, None)
    run = subprocess.run(
        [cli, 'verify', export_dir, '--public-key', public], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert 'extra: assets.extra/backdoor.txt' in run.stdout

    run = subprocess.run(
        [cli, 'verify', export_dir, '--public-key', export_dir], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert run.stderr.count('\n') == 1 and '--public-key' in run.stderr


def test_a_signed_export_still_loads_and_answers(model_uri, export_base, keypair):
    """The signature sits in assets.extra, which TensorFlow's loader and TF Serving skip."""
    from final_exporter.checks import smoke

    key, _ = keypair
    export_dir = export(model_uri, export_base, signing_key=key)
    result = smoke.smoke_test(export_dir, 'serving_default', None)
    assert result.outputs
