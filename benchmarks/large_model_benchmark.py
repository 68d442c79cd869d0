"""Large models at disk speed: the exporter against `cp -r && sync -f` and a TensorFlow load.

Run with the project's interpreter (`make benchmark` runs it after export_benchmark.py):

    .venv/bin/python benchmarks/large_model_benchmark.py [--repeats 5] [--out benchmarks/out]
        [--work-dir DIR] [--keep] [--plot docs/large_models.png]

Models (real `tf.saved_model.save` outputs, generated once in a subprocess):
- `4g-1file`: 4 GiB of random float32 variables in ONE data file
  (`variables.data-00000-of-00001`, TensorFlow's default), 16 variables of 256 MiB;
- `1g`: 1 GiB in 64 shards (export_benchmark.py's model).

Every repeat runs each method once, in the same alternating order, each as a
whole process and each followed by `sync -f` of the destination filesystem
(timed with it: a copy is finished when its bytes are on disk). Destinations
are removed, untimed, between runs, followed by `sync`. Before a model's runs
the page cache is emptied (as root), the source read once and every method run
once untimed: every method reads the source from the page cache, and all start
with the same memory free.

- `cp -r && sync -f`: the durable copy, the floor for the copy.
- `export, no smoke test`: `final-exporter export --no-smoke-test`.
- `export with smoke test`: `final-exporter export` (loads and calls the staged export).
- `TF import + load`: a fresh Python process that imports TensorFlow and
  `tf.saved_model.load`s the source model: the floor for the smoke test.

Also: peak RSS of the copy-only export (GNU time's %M), and the SHA-256
throughput of the 4 GiB file: chunked (format 2) with 1, 2 and all cores, and
the whole-file digest (format 1, one stream). Writes `<out>/large_results.json`,
prints a Markdown table and draws `--plot`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
sys.path.insert(0, str(SCRIPT.parent))

import export_benchmark as eb  # noqa: E402  (the shared helpers: model cache, child runs)

MIB = 1024 * 1024
GIB = 1024 * MIB
ONE_FILE = eb.Shape('4g-1file', 4 * GIB, 1)
ONE_FILE_VARIABLES = 16
CLI = str(Path(sys.executable).with_name('final-exporter'))
CP, EXPORT, SMOKE, TF_LOAD = (
    'cp -r && sync -f',
    'export, no smoke test',
    'export with smoke test',
    'TF import + load',
)
LOAD_SCRIPT = 'import sys, tensorflow as tf; tf.saved_model.load(sys.argv[1])'


def generate_one_file_model(work_dir: Path) -> Path:
    """A real SavedModel whose 4 GiB of variables TensorFlow writes as one data file."""
    root = work_dir / ONE_FILE.name
    saved = root / 'model' / 'Format-Serving'
    if (root / 'info.json').exists():
        return root / 'model'
    code = f"""
import numpy as np, tensorflow as tf
rng = np.random.default_rng(4)
module = tf.Module()
n = {ONE_FILE.variable_bytes // ONE_FILE_VARIABLES // 4}
module.weights = [tf.Variable(rng.random(n, dtype=np.float32), name=f'w{{i:02d}}')
                  for i in range({ONE_FILE_VARIABLES})]
@tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='x')])
def serve(x):
    return {{'y': x + tf.add_n([w[0] for w in module.weights])}}
module.serve = serve
tf.saved_model.save(module, {str(saved)!r}, signatures={{'serving_default': serve}})
"""
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, '-c', code], check=True, env=eb.child_env())
    data = sorted(p.name for p in (saved / 'variables').iterdir())
    if data != ['variables.data-00000-of-00001', 'variables.index']:
        raise RuntimeError(f'expected one data file, TensorFlow wrote {data}')
    total, files = eb.tree_size(saved)
    (root / 'info.json').write_text(json.dumps({'total_bytes': total, 'file_count': files}))
    return root / 'model'


def timed(cmd: str) -> tuple[eb.ChildRun, float]:
    """Runs one shell command line as a whole process: wall time, peak RSS and CPU seconds.

    CPU seconds (user + system of the whole process tree) show where a method is
    bound by the CPU: on a shared machine, CPU others use is time it waits.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = eb.run_child(['sh', '-c', cmd])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run, cpu


def bench(model_uri: Path, scratch: Path, repeats: int, smoke: bool) -> dict[str, Any]:
    saved = model_uri / 'Format-Serving'
    settle_page_cache()
    eb.warm_read(saved)
    methods = [CP, EXPORT] + ([SMOKE, TF_LOAD] if smoke else [])
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(-1, repeats):  # Round -1 is a warm-up, not counted.
        # Alternate the order between repeats, so none always runs after the same one.
        order = methods if r % 2 == 0 else methods[::-1]
        for method in order:
            dest = scratch / 'dest'
            base = scratch / 'base'
            if method == CP:
                cmd = f'cp -r {saved} {dest} && sync -f {scratch}'
            elif method == TF_LOAD:
                cmd = f'{sys.executable} -c "{LOAD_SCRIPT}" {saved}'
            else:
                flags = '' if method == SMOKE else '--no-smoke-test'
                cmd = (
                    f'{CLI} export --model {model_uri} --export-base {base} --name bench '
                    f'--no-require-blessing {flags} --json && sync -f {scratch}'
                )
            run, cpu_s = timed(cmd)
            eb.remove(dest, base)
            subprocess.run(['sync'], check=True)
            if r < 0:
                continue
            seconds[method].append(run.seconds)
            cpu[method].append(cpu_s)
            if run.max_rss_mib is not None:
                rss[method].append(run.max_rss_mib)
    return {
        m: {
            'median_s': statistics.median(seconds[m]),
            'runs_s': seconds[m],
            'median_cpu_s': statistics.median(cpu[m]),
            'peak_rss_mib': max(rss[m]) if rss[m] else None,
        }
        for m in methods
    }


def settle_page_cache() -> None:
    """Starts a model's runs with the page cache emptied (as root; else left as it is).

    What earlier work left cached decides how much memory is free, and with little
    free every page a run writes or allocates must first be reclaimed: the same
    command then takes up to twice as long. Emptied once, then refilled by the
    source read and a warm-up round, every method starts from the same state.
    """
    os.sync()
    try:
        with open('/proc/sys/vm/drop_caches', 'w') as f:
            f.write('1\n')
    except OSError as e:
        print(f'page cache left as it is ({e.strerror}): figures depend on what is cached')


def hash_throughput(path: Path, repeats: int) -> dict[str, dict[str, float]]:
    """Hashing one file: chunked digest with 1, 2 and all cores; whole-file SHA-256.

    GB/s of wall time, and the CPU seconds it took (equal CPU seconds at more
    cores means the work spreads without overhead; the wall time then depends
    on the cores free).
    """
    from final_exporter.storage.hashing import hash_local_chunks
    from final_exporter.storage.hashing import sha256_file as hash_file

    size = path.stat().st_size
    cores = os.cpu_count() or 1
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        methods = [
            (
                f'chunked, {n} core{"s" * (n > 1)}',
                lambda n=n: hash_local_chunks(str(path), workers=n),
            )
            for n in sorted({1, 2, cores})
        ]
        methods.append(('whole-file (format 1)', lambda: hash_file(str(path))))
        for label, fn in methods:
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            runs.setdefault(label, []).append((size / wall / 1e9, cpu))
    return {
        label: {
            'gb_s': statistics.median(r[0] for r in v),
            'cpu_s': statistics.median(r[1] for r in v),
        }
        for label, v in runs.items()
    }


def load_average() -> str:
    return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def table(results: dict[str, Any]) -> str:
    big, sharded, hashing = results['4g-1file'], results['1g'], results['hash_gb_s']
    rows = [
        '| Model | Method | Median | Against | Ratio | Target | CPU s | Peak RSS |',
        '|---|---|---:|---|---:|---:|---:|---:|',
    ]

    def row(model: str, res: dict, method: str, base: str | None, target: str) -> None:
        m = res[method]['median_s']
        ratio = f'{m / res[base]["median_s"]:.2f}x' if base else ''
        rss = res[method]['peak_rss_mib']
        rss_text = f'{rss:.0f} MiB' if rss and method == EXPORT else ''
        cpu_s = res[method]['median_cpu_s']
        rows.append(
            f'| {model} | {method} | {m:.2f} s | {base or ""} | {ratio} | {target} '
            f'| {cpu_s:.2f} | {rss_text} |'
        )

    row('4 GiB, 1 data file', big, CP, None, '')
    row('4 GiB, 1 data file', big, EXPORT, CP, '≤ 1.10x')
    row('4 GiB, 1 data file', big, TF_LOAD, None, '')
    row('4 GiB, 1 data file', big, SMOKE, TF_LOAD, '≤ 1.10x')
    row('1 GiB, 64 shards', sharded, CP, None, '')
    row('1 GiB, 64 shards', sharded, EXPORT, CP, '≤ 1.10x')
    rows += ['', '| SHA-256 of the 4 GiB file | GB/s | CPU s |', '|---|---:|---:|']
    rows += [f'| {label} | {v["gb_s"]:.2f} | {v["cpu_s"]:.2f} |' for label, v in hashing.items()]
    return '\n'.join(rows)


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plot')
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    groups = [('4 GiB, 1 file', results['4g-1file']), ('1 GiB, 64 shards', results['1g'])]
    labels, values, colors = [], [], []
    palette = {CP: '#888888', EXPORT: '#1f77b4', TF_LOAD: '#bbbbbb', SMOKE: '#ff7f0e'}
    for name, res in groups:
        for method in (CP, EXPORT, TF_LOAD, SMOKE):
            if method in res:
                labels.append(f'{name}\n{method}')
                values.append(res[method]['median_s'])
                colors.append(palette[method])
    left.barh(range(len(values)), values, color=colors)
    left.set_yticks(range(len(values)), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel('seconds until on disk (median)')
    for i, v in enumerate(values):
        left.text(v, i, f' {v:.2f} s', va='center', fontsize=7)
    hashing = results['hash_gb_s']
    right.bar(range(len(hashing)), [v['gb_s'] for v in hashing.values()], color='#2ca02c')
    right.set_xticks(range(len(hashing)), list(hashing), fontsize=7, rotation=15)
    right.set_ylabel('GB/s')
    right.set_title('SHA-256 of one 4 GiB file', fontsize=9)
    fig.suptitle(
        f'Large models, {results["machine"]["cpus"]} cores (load average before '
        f'{results["machine"]["load_average_before"].split()[0]}), '
        f'medians of {results["repeats"]}',
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', type=Path, default=eb.DEFAULT_OUT)
    parser.add_argument('--work-dir', type=Path, default=eb.DEFAULT_OUT / 'large-work')
    parser.add_argument('--plot', type=Path, default=eb.DEFAULT_OUT / 'large_models.png')
    parser.add_argument('--keep', action='store_true', help='keep the generated models')
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    scratch = args.work_dir / 'scratch'
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    load_before = load_average()
    try:
        big = generate_one_file_model(args.work_dir)
        sharded = eb.ensure_model(eb.SHAPES['1g'], args.work_dir)
        results: dict[str, Any] = {
            'machine': {
                'cpus': os.cpu_count(),
                'platform': platform.platform(),
                'load_average_before': load_before,
            },
            'repeats': args.repeats,
            'command': ' '.join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            'date': time.strftime('%Y-%m-%d %H:%M'),
        }
        results['4g-1file'] = bench(big, scratch, args.repeats, smoke=True)
        results['1g'] = bench(sharded.uri, scratch, args.repeats, smoke=False)
        data_file = big / 'Format-Serving' / 'variables' / 'variables.data-00000-of-00001'
        results['hash_gb_s'] = hash_throughput(data_file, args.repeats)
        results['machine']['load_average_after'] = load_average()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.work_dir / ONE_FILE.name, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'large_results.json').write_text(json.dumps(results, indent=2) + '\n')
    text = table(results)
    print(text)
    print(f'load average before {load_before}, after {results["machine"]["load_average_after"]}')
    plot(results, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
