"""The 20,000-file copy without the interpreter: how close a hashed copy can come to `cp -r`.

Run with the project's interpreter (not in `make benchmark`: it needs a C
compiler and OpenSSL's headers, e.g. Debian's `gcc` and `libssl-dev`):

    .venv/bin/python benchmarks/small_files_floor.py [--repeats 8] [--work-dir DIR]

On large_model_benchmark.py's `20k-files` model (generated once into
`--work-dir`, shared with it), alternating, each run a whole process followed
by `sync -f` of the destination's filesystem, as there:

- on its `assets/` folder (the 20,000 files): `cp -r`; `small_files_floor.c`
  (the per-file system calls of the exporter's small-file copy, and OpenSSL's
  SHA-256 of each file) in one process and in one per core, each with a share of
  the files as the exporter's helpers have; the same without the hash;
- on the whole model: `cp -r`; `minimal_python_export.py` (the least any export
  written in Python does: plan, two-process hashed copy, manifest, listing
  check, flush, rename), also with the C program above as its two helpers;
  `native_export_floor.c`, the same work as a C program (no interpreter), its
  two workers threads or processes; and the exporter's copy-only export.

Copies are kept until the last run (ext4 slows the runs after a removal of
20,000 files). Prints medians, the ratios to `cp -r` and CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parent))

import export_benchmark as eb  # noqa: E402  (the shared helpers: paths, child environment)
import large_model_benchmark as lb  # noqa: E402  (the 20k-files model, the CLI's path)

SOURCE = SCRIPT.with_suffix('.c')
NATIVE_SOURCE = SCRIPT.with_name('native_export_floor.c')
MINIMAL = SCRIPT.with_name('minimal_python_export.py')


def build(out: Path, source: Path = SOURCE) -> Path:
    """`source` compiled into `out`; exits naming what is missing if it cannot."""
    binary = out / source.stem
    cc = os.environ.get('CC', 'cc')
    cmd = [cc, '-O2', '-o', str(binary), str(source), '-lcrypto', '-lpthread']
    try:
        built = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit(f'small_files_floor: no C compiler {cc!r} (Debian: apt-get install gcc)')
    if built.returncode != 0:
        sys.exit(
            f'small_files_floor: {" ".join(cmd)} failed (OpenSSL headers: Debian '
            f'libssl-dev):\n{built.stderr}'
        )
    return binary


def commands(
    binary: Path, native: Path, model: Path, lists: list[Path], all_list: Path
) -> dict[str, str]:
    """{method: shell command with `{d}` for its fresh destination and `{s}` for the scratch}."""
    assets = model / 'Format-Serving' / 'assets'

    def shared(flag: str = '') -> str:
        each = ' & '.join(f'{binary} {{d}} {flag} < {p} >/dev/null' for p in lists)
        return f'mkdir {{d}} && ({each}; wait)'

    return {
        'assets: cp -r': f'cp -r {assets} {{d}}',
        'assets: C, 1 process': f'mkdir {{d}} && {binary} {{d}} < {all_list} >/dev/null',
        f'assets: C, {len(lists)} processes': shared(),
        f'assets: C, {len(lists)} processes, no hash': shared('nohash'),
        'model: cp -r': f'cp -r {model / "Format-Serving"} {{d}}',
        'model: minimal Python export': (
            f'{sys.executable} {MINIMAL} {model / "Format-Serving"} {{d}}'
        ),
        'model: minimal Python export, C helpers': (
            f'{sys.executable} {MINIMAL} {model / "Format-Serving"} {{d}} --c-helper {binary}'
        ),
        'model: native export (C), 2 threads': (
            f'{native} {model / "Format-Serving"} {{d}} threads'
        ),
        'model: native export (C), 2 processes': (
            f'{native} {model / "Format-Serving"} {{d}} processes'
        ),
        'model: export, no smoke test': (
            f'{lb.CLI} export --model {model} --export-base {{d}} --name bench '
            '--no-require-blessing --no-smoke-test --json >/dev/null'
        ),
    }


def source_lists(model: Path, out: Path, shares: int) -> tuple[Path, list[Path]]:
    """NUL-separated lists of the assets: all of them, and one share per process (every
    `shares`-th file, as `tiny_files.copy_folder_files` deals them out)."""
    assets = model / 'Format-Serving' / 'assets'
    names = sorted(os.listdir(assets))

    def write(path: Path, chosen: list[str]) -> Path:
        path.write_bytes(b''.join(os.fsencode(assets / n) + b'\0' for n in chosen))
        return path

    return write(out / 'all', names), [
        write(out / f'share-{k}', names[k::shares]) for k in range(shares)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=8)
    parser.add_argument('--work-dir', type=Path, default=eb.DEFAULT_OUT / 'large-work')
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = lb.many_files_model(args.work_dir)
    scratch = Path(tempfile.mkdtemp(prefix='floor-', dir=args.work_dir))
    try:
        binary, native = build(scratch), build(scratch, NATIVE_SOURCE)
        all_list, lists = source_lists(model, scratch, os.cpu_count() or 1)
        methods = commands(binary, native, model, lists, all_list)
        seconds: dict[str, list[float]] = {m: [] for m in methods}
        cpu: dict[str, list[float]] = {m: [] for m in methods}
        load_before, count = os.getloadavg(), 0
        for r in range(-1, args.repeats):  # Round -1 is a warm-up, not counted.
            for method in methods if r % 2 == 0 else list(methods)[::-1]:
                count += 1
                cmd = methods[method].format(d=scratch / f'dest-{count}')
                before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run(
                    ['sh', '-c', f'{cmd} && sync -f {scratch}'], check=True, env=eb.child_env()
                )
                took, after = (
                    time.perf_counter() - start,
                    resource.getrusage(resource.RUSAGE_CHILDREN),
                )
                subprocess.run(['sync'], check=True)
                if r >= 0:
                    seconds[method].append(took)
                    cpu[method].append(
                        after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                    )
        print(f'| method (each + `sync -f`) | median | ratio | CPU-s | runs ({args.repeats}) |')
        print('|---|---|---|---|---|')
        for method in methods:
            base = 'model: cp -r' if method.startswith('model') else 'assets: cp -r'
            median = statistics.median(seconds[method])
            print(
                f'| {method} | {median:.3f} s | {median / statistics.median(seconds[base]):.2f}x '
                f'| {statistics.median(cpu[method]):.2f} | '
                f'{" ".join(f"{s:.2f}" for s in seconds[method])} |'
            )
        print(f'load average before {load_before}, after {os.getloadavg()}')
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
