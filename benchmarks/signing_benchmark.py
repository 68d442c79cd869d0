"""What signing adds to an export: the sign step beside the copy-only export it signs.

Run with the project's interpreter:

    .venv/bin/python benchmarks/signing_benchmark.py [--sizes 1g,100m] [--repeats 5]
        [--work-dir DIR] [--out benchmarks/out]

Uses export_benchmark.py's generated SavedModels (cached under `--work-dir`). Each
repeat times `run_export` (copy only, until on disk, as export_benchmark.py does),
then the signing the export flow adds after it has written the manifest:
`load_signer` (the key read and checked), `file_digests` over the export's own
manifest entries (reads only files of several chunks), `ExportSigner.sign`
over those digests and the manifest bytes, and the signature's write (flushed
with the staging area in the real flow). The 1 GiB / 64-shard model's files are all at most one manifest
chunk (16 MiB), so signing reads none of their bytes; `100m` is one 100 MiB
variables file (4 chunks), which signing reads again for its whole-file SHA-256.

Also times, in fresh processes, what the first signed export of a process pays
once: importing the signing modules, and the first key load (which imports
`cryptography`'s key and certificate modules).

Prints a table and writes `<out>/signing.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export_benchmark as eb  # beside this script, found through the path above

DEFAULT_SIZES = '1g,100m'


def make_key(folder: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path = folder / 'signer.key'
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def time_export(model: eb.Model, export_base: Path) -> tuple[float, str]:
    """(seconds until on disk, export folder) of a copy-only `run_export`."""
    from final_exporter import ExportConfig, ExportRequest, run_export

    request = ExportRequest(
        config=ExportConfig(
            name=eb.EXPORT_NAME,
            export_base=str(export_base),
            require_blessing=False,
            smoke_test=False,
        ),
        model_uri=str(model.uri),
    )
    start = time.perf_counter()
    result = run_export(request)
    seconds = time.perf_counter() - start + eb.flush_seconds(export_base)
    if not result.pushed or result.total_bytes != model.total_bytes:
        raise RuntimeError(f'unexpected export result {result.summary()}')
    return seconds, str(result.export_dir)


def time_sign(export_dir: str, key: str) -> dict[str, float]:
    """Seconds of `load_signer`, of `file_digests` (reads files of several chunks), of
    `sign`, and of writing the signature (flushed with the rest of the staging area before
    publishing, so no fsync of its own)."""
    from final_exporter.common import keys
    from final_exporter.storage.signing import file_digests, load_signer
    from final_exporter.storage.stores import store_for
    from final_exporter.storage.types import FileEntry

    store = store_for(export_dir)
    data = store.read_bytes(os.path.join(export_dir, *keys.MANIFEST_RELPATH.split('/')))
    files = [
        FileEntry(f['path'], f['size'], f.get('sha256', ''), f.get('chunked_sha256', ''))
        for f in json.loads(data)['files']
    ]
    t0 = time.perf_counter()
    signer = load_signer(key)
    t1 = time.perf_counter()
    digests = file_digests(files, store, export_dir)
    t2 = time.perf_counter()
    signature = signer.sign(digests, data, model_name=eb.EXPORT_NAME)
    t3 = time.perf_counter()
    fd = os.open(
        os.path.join(export_dir, *keys.SIGNATURE_RELPATH.split('/')),
        os.O_WRONLY | os.O_CREAT | os.O_EXCL,
        0o644,
    )
    try:
        os.write(fd, signature)
    finally:
        os.close(fd)
    t4 = time.perf_counter()
    return {
        'load_s': t1 - t0,
        'digests_s': t2 - t1,
        'sign_s': t3 - t2,
        'write_s': t4 - t3,
        'total_s': t4 - t0,
    }


# Run in a fresh interpreter: what the first signed export of a process pays once.
_FIRST_USE = """
import sys, time
import final_exporter.storage.stores
t0 = time.perf_counter()
import final_exporter.storage.signing as signing
t1 = time.perf_counter()
signing.load_signer(sys.argv[1])
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_use_cost(key: str, repeats: int) -> dict[str, float]:
    """Median seconds, in fresh processes, to import the signing modules (cryptography)
    and to load the first key: paid once per process, before the export writes."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, '-c', _FIRST_USE, key], capture_output=True, text=True, check=True
        ).stdout.split()
        runs.append((float(out[0]), float(out[1])))
    return {
        'import_s': statistics.median(i for i, _ in runs),
        'first_load_s': statistics.median(k for _, k in runs),
    }


def bench(model: eb.Model, scratch: Path, key: str, repeats: int) -> dict[str, Any]:
    eb.warm_read(model.saved_model_dir)
    exports, signs = [], []
    for _ in range(repeats):
        base = scratch / 'signing'
        seconds, export_dir = time_export(model, base)
        exports.append(seconds)
        signs.append(time_sign(export_dir, key))
        eb.remove(base)
    export_s = statistics.median(exports)
    parts = {k: statistics.median(s[k] for s in signs) for k in signs[0]}
    return {
        'model': model.shape.name,
        'total_bytes': model.total_bytes,
        'file_count': model.file_count,
        'export_s': export_s,
        **parts,
        'sign_share': parts['total_s'] / export_s,
        'exports_s': exports,
        'signs': signs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default=DEFAULT_SIZES, type=eb.parse_sizes)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', type=Path, default=eb.DEFAULT_OUT)
    parser.add_argument('--work-dir', type=Path, default=None)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    work_dir: Path = (args.work_dir or out / 'models').resolve()
    scratch = out / 'scratch'
    eb.remove(scratch)
    scratch.mkdir(parents=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as keys_dir:
        key = make_key(Path(keys_dir))
        first = first_use_cost(key, args.repeats)
        time_sign_warm_up(key)
        rows = [
            bench(eb.ensure_model(shape, work_dir), scratch, key, args.repeats)
            for shape in args.sizes
        ]
    eb.remove(scratch)
    load_after = os.getloadavg()
    print(f'load average before: {load_before[0]:.2f}, after: {load_after[0]:.2f}')
    print(
        f'{"model":<6} {"files":>5} {"export":>8} {"load key":>9} {"digests":>9} '
        f'{"sign":>8} {"write":>8} {"all":>8} {"all/export":>10}'
    )
    for r in rows:
        print(
            f'{r["model"]:<6} {r["file_count"]:>5} {r["export_s"]:>7.3f}s '
            f'{r["load_s"] * 1e3:>7.2f}ms {r["digests_s"] * 1e3:>7.2f}ms '
            f'{r["sign_s"] * 1e3:>6.2f}ms '
            f'{r["write_s"] * 1e3:>6.2f}ms {r["total_s"] * 1e3:>6.2f}ms {r["sign_share"]:>10.2%}'
        )
    print(
        f'once per process: signing modules {first["import_s"] * 1e3:.1f} ms, first key '
        f'load (imports cryptography) {first["first_load_s"] * 1e3:.1f} ms'
    )
    (out / 'signing.json').write_text(
        json.dumps(
            {
                'models': rows,
                'first_use': first,
                'load_average': {'before': load_before, 'after': load_after},
            },
            indent=2,
        )
    )
    return 0


def time_sign_warm_up(key: str) -> None:
    """Imports the signing modules in this process (their cost is `first_use_cost`'s)."""
    from final_exporter.storage.signing import load_signer

    load_signer(key)


if __name__ == '__main__':
    sys.exit(main())
