"""What signing adds to an export: the real CLI export with and without `--signing-key`, side by side.

Run with the project's interpreter (`make benchmark` runs it):

    .venv/bin/python benchmarks/signing_benchmark.py [--repeats 5] [--out benchmarks/out]
        [--work-dir DIR] [--cases 1g,4g-1file,4g-1file-smoke]

Cases (models generated once with TensorFlow and cached under `--work-dir`, shared
with export_benchmark.py and large_model_benchmark.py):
- `1g`: 1 GiB of variables in 64 shards of 16 MiB: every file is at most one
  manifest chunk (32 MiB), so signing reads none of its bytes again; the target
  (signing adds at most 2 %) is measured here.
- `1g-memory`: the same, exported into memory (`/dev/shm`, tmpfs): no disk, whose
  writes spread whole runs by 20 % and more on a virtual machine's disk, so the
  export is bound by the CPU, where the signing thread's CPU shows.
- `4g-1file`: 4 GiB in one variables file (128 chunks): the `files` serialization
  needs its whole-file SHA-256, one more read of the staged copy (docs/signing.md).
- `4g-1file-smoke`: the same with the smoke test, which that read runs beside.

Each repeat runs `final-exporter export --no-require-blessing [--no-smoke-test]
--json` twice, unsigned and signed (P-256 key from a file), in an order that
alternates between repeats, each a whole process timed until its bytes are on
disk (`syncfs` of the destination, as export_benchmark.py does), with the CPU
seconds it used. A first round is a warm-up, not counted; the source is read once
before it, so every run reads it from the page cache. Destinations are removed
(untimed) after each run. Prints the medians, the ratio of the medians, the median
of the paired ratios, and the load average beside each case.

On a shared machine the spread of whole exports hides a few milliseconds, so it
also times, in fresh processes on the `1g` export, signing's steps: on the
export's critical path, the key read and its PEM checked (before the copy) and
the signature over that export's manifest entries, written and fsync'ed (after
it); beside the copy, in a thread of its own, the key's full load (with the
`cryptography` import) and the ECDSA warm-up. Writes `<out>/signing.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import export_benchmark as eb  # beside this script: model cache, child runs
import large_model_benchmark as lm  # beside this script: the 4 GiB one-file model

CLI = str(Path(sys.executable).with_name('final-exporter'))
# {case: (model, smoke test, destination in memory)}
CASES = {
    '1g': ('1g', False, False),
    '1g-memory': ('1g', False, True),
    '4g-1file': ('4g-1file', False, False),
    '4g-1file-smoke': ('4g-1file', True, False),
}
MEMORY = Path('/dev/shm')
UNSIGNED, SIGNED = 'unsigned', 'signed'


def make_key(folder: Path) -> str:
    """A P-256 private key in PEM, as `openssl ecparam -name prime256v1 -genkey` writes one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = folder / 'signer.key'
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def model_uri(name: str, work_dir: Path) -> Path:
    if name == '4g-1file':
        return lm.generate_one_file_model(work_dir)
    return eb.ensure_model(eb.SHAPES[name], work_dir).uri


def time_export(uri: Path, scratch: Path, smoke: bool, key: str | None) -> tuple[float, float]:
    """(seconds until its bytes are on disk, CPU seconds) of one CLI export; checks it was
    signed as asked."""
    base = scratch / 'signing'
    cmd = [CLI, 'export', '--model', str(uri), '--export-base', str(base), '--name',
           eb.EXPORT_NAME, '--no-require-blessing', '--json']  # fmt: skip
    cmd += [] if smoke else ['--no-smoke-test']
    cmd += ['--signing-key', key] if key else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = eb.run_child(cmd)
    seconds = run.seconds + eb.flush_seconds(scratch)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = eb.last_json_line(run.stdout)
    if not result['pushed'] or bool(result['lineage'].get('signing')) != bool(key):
        raise RuntimeError(f'unexpected export result {result}')
    eb.remove(base)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


# Run in a fresh interpreter that has imported the export (as the CLI has): signing's steps.
_SIGN_STEPS = """
import json, os, sys, tempfile, time
import final_exporter.core.exporter
from final_exporter.storage.signing import SignerLoading
key, manifest_path = sys.argv[1:]
data = open(manifest_path, 'rb').read()
files = {f['path']: f['sha256'] for f in json.loads(data)['files']}
t0 = time.perf_counter()
loading = SignerLoading(key)
t1 = time.perf_counter()
signer = loading.result()
t2 = time.perf_counter()
signature = signer.sign(files, data, model_name='bench')
with tempfile.NamedTemporaryFile(dir=os.path.dirname(manifest_path)) as f:
    f.write(signature)
    f.flush()
    os.fsync(f.fileno())
t3 = time.perf_counter()
print(json.dumps({'check_ms': 1e3 * (t1 - t0), 'load_ms': 1e3 * (t2 - t1),
                  'sign_and_write_ms': 1e3 * (t3 - t2)}))
"""


def sign_steps(uri: Path, scratch: Path, key: str, repeats: int) -> dict[str, float]:
    """Median milliseconds of signing's own steps, each process fresh, on `uri`'s export."""
    base = scratch / 'steps'
    run = eb.run_child([CLI, 'export', '--model', str(uri), '--export-base', str(base),
                        '--name', eb.EXPORT_NAME, '--no-require-blessing', '--no-smoke-test',
                        '--json'])  # fmt: skip
    manifest = Path(eb.last_json_line(run.stdout)['export_dir']) / 'assets.extra'
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, '-c', _SIGN_STEPS, key, str(manifest / 'export_manifest.json')],
                capture_output=True, text=True, check=True, env=eb.child_env(),
            ).stdout
        )
        for _ in range(repeats)
    ]  # fmt: skip
    eb.remove(base)
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench(case: str, work_dir: Path, scratch: Path, key: str, repeats: int) -> dict[str, Any]:
    name, smoke, in_memory = CASES[case]
    uri = model_uri(name, work_dir)
    if in_memory:
        scratch = Path(tempfile.mkdtemp(prefix='signing-bench-', dir=MEMORY))
        try:
            return _bench(case, uri, scratch, key, repeats, smoke)
        finally:
            eb.remove(scratch)
    return _bench(case, uri, scratch, key, repeats, smoke)


def _bench(
    case: str, uri: Path, scratch: Path, key: str, repeats: int, smoke: bool
) -> dict[str, Any]:
    eb.warm_read(uri / 'Format-Serving')
    runs: dict[str, list[float]] = {UNSIGNED: [], SIGNED: []}
    cpu: dict[str, list[float]] = {UNSIGNED: [], SIGNED: []}
    loads = []
    for r in range(-1, repeats):  # Round -1 is a warm-up, not counted.
        order = (UNSIGNED, SIGNED) if r % 2 == 0 else (SIGNED, UNSIGNED)
        load = os.getloadavg()[0]
        timed = {v: time_export(uri, scratch, smoke, key if v == SIGNED else None) for v in order}
        if r >= 0:
            loads.append(load)
            for variant, (seconds, cpu_s) in timed.items():
                runs[variant].append(seconds)
                cpu[variant].append(cpu_s)
    unsigned, signed = (statistics.median(runs[v]) for v in (UNSIGNED, SIGNED))
    paired = [s / u - 1 for u, s in zip(runs[UNSIGNED], runs[SIGNED], strict=True)]
    row = {
        'case': case,
        'smoke_test': smoke,
        'unsigned_median_s': unsigned,
        'signed_median_s': signed,
        'added': signed / unsigned - 1,
        'added_paired_median': statistics.median(paired),
        'cpu_median_s': {v: statistics.median(cpu[v]) for v in cpu},
        'runs_s': runs,
        'cpu_s': cpu,
        'load_average_1min': loads,
    }
    if case == '1g':
        row['sign_steps_ms'] = sign_steps(uri, scratch, key, repeats)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cases', default=','.join(CASES), help=f'of {", ".join(CASES)}')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', type=Path, default=eb.DEFAULT_OUT)
    parser.add_argument('--work-dir', type=Path, default=None)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(',') if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f'unknown cases {unknown}; expected some of {", ".join(CASES)}')
    out: Path = args.out.resolve()
    work_dir: Path = (args.work_dir or out / 'models').resolve()
    scratch = out / 'scratch'
    eb.remove(scratch)
    scratch.mkdir(parents=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as keys_dir:
        key = make_key(Path(keys_dir))
        rows = [bench(c, work_dir, scratch, key, args.repeats) for c in cases]
    eb.remove(scratch)
    print(
        f'{"case":<15} {"unsigned":>9} {"signed":>9} {"added":>7} {"paired":>7} '
        f'{"CPU unsigned":>13} {"CPU signed":>11}  load (1 min)'
    )
    for r in rows:
        loads, cpu = r['load_average_1min'], r['cpu_median_s']
        print(
            f'{r["case"]:<15} {r["unsigned_median_s"]:>8.2f}s {r["signed_median_s"]:>8.2f}s '
            f'{r["added"]:>7.1%} {r["added_paired_median"]:>7.1%} {cpu[UNSIGNED]:>12.2f}s '
            f'{cpu[SIGNED]:>10.2f}s  {min(loads):.1f}-{max(loads):.1f}'
        )
        if 'sign_steps_ms' in r:
            steps = r['sign_steps_ms']
            critical = steps['check_ms'] + steps['sign_and_write_ms']
            print(
                f'  {r["case"]} signing steps (fresh processes, medians): key read + PEM check '
                f'{steps["check_ms"]:.1f} ms, key load + ECDSA warm-up {steps["load_ms"]:.1f} ms '
                f'(in a thread beside the copy), signature + write '
                f'{steps["sign_and_write_ms"]:.1f} ms: {critical:.1f} ms on the critical path, '
                f'{critical / 1e3 / r["unsigned_median_s"]:.2%} of the unsigned median'
            )
    print(f'medians of {args.repeats} alternating runs each; "paired": median of signed/unsigned')
    (out / 'signing.json').write_text(json.dumps({'cases': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
