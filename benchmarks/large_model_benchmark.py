"""Large models at the floor: the exporter against `cp -r && sync -f`, SHA-256 and a TensorFlow load.

Run with the project's interpreter (`make benchmark` runs it after export_benchmark.py):

    .venv/bin/python benchmarks/large_model_benchmark.py [--repeats 5] [--out benchmarks/out]
        [--work-dir DIR] [--keep] [--plot docs/large_models.png] [--models 4g-1file,1g,20k-files]

Models (real `tf.saved_model.save` outputs, generated once in a subprocess):
- `4g-1file`: 4 GiB of random float32 variables in ONE data file
  (`variables.data-00000-of-00001`, TensorFlow's default), 16 variables of 256 MiB;
- `1g`: 1 GiB in 64 shards (export_benchmark.py's model);
- `20k-files`: a small model with 20,000 asset files of 256 B to 16 KiB, run
  `MANY_FILES_REPEATS_FACTOR` (3) times `--repeats` (its runs are short and vary most).

Every repeat runs each method once, the order reversed every other repeat, each
as a whole process; the copies are followed by `sync -f` of the destination
filesystem (timed with it: a copy is finished when its bytes are on disk).
Destinations are removed, untimed, between runs, followed by `sync`. Before a
model's runs the page cache is emptied (as root), the source read once and
every method run once untimed: every method reads the source from the page
cache, and all start with the same memory free.

- `cp -r && sync -f`: the durable copy.
- `openssl dgst -sha256`: SHA-256 of the same files with the CPU's SHA
  instructions (coreutils' `sha256sum` on Debian 12 does not use them); only
  its CPU seconds count, for the floor.
- floor: max(`cp -r && sync -f`, (CPU-s of `openssl dgst -sha256` + CPU-s of
  `cp -r`) / cores): a copy that hashes every byte can be no faster than the
  durable copy, nor than its CPU work spread perfectly over every core.
- `export, no smoke test`: `final-exporter export --no-smoke-test`.
- `export with smoke test`: `final-exporter export` (imports TensorFlow, loads
  the model and calls its signature while the copy runs).
- `TF import + load`: a fresh Python process that imports TensorFlow and
  `tf.saved_model.load`s the source model: the floor for the smoke test.
- `minimal Python export` (the 20,000 files only): `minimal_python_export.py`,
  the least any export written in Python does; the export's time against it
  is shown, not judged.

Peak RSS is GNU time's %M for each process (the TensorFlow ones included). After
each export run the published files' bytes still in the page cache are counted
(`fincore`): what the export's copy leaves in memory. Also: the copy-only CLI's
start-up (`python -X importtime`: its imports, and that neither TensorFlow nor a
cloud SDK is among them), and the SHA-256 throughput of the 4 GiB file, chunked
(format 2) on 1, 2 and all cores and whole-file (format 1, one stream).

Every model's rows carry the load average before and after its runs. Writes
`<out>/large_results.json`, prints Markdown tables and draws `--plot`.
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
MANY_FILES = 20_000
MANY_FILES_NAME = '20k-files'
# Its runs take about 1.5 s and vary by 0.1-0.3 s with the disk's state: with 5 repeats
# the ratio of medians moved between 1.10x and 1.16x from run to run of the same code,
# so it runs three times the repeats (15 under `make benchmark`, about a minute more).
MANY_FILES_REPEATS_FACTOR = 3
MODELS = (ONE_FILE.name, '1g', MANY_FILES_NAME)
CLI = str(Path(sys.executable).with_name('final-exporter'))
CP, OPENSSL, EXPORT, SMOKE, TF_LOAD, MINIMAL = (
    'cp -r && sync -f',
    'openssl dgst -sha256',
    'export, no smoke test',
    'export with smoke test',
    'TF import + load',
    'minimal Python export',
)
# The least any export written in Python does (its docstring says what), run beside the
# 20,000 files: what the interpreter's start, the plan and the manifest cost there.
MINIMAL_SCRIPT = SCRIPT.with_name('minimal_python_export.py')
LOAD_SCRIPT = 'import sys, tensorflow as tf; tf.saved_model.load(sys.argv[1])'
# Issue 22's targets: each ratio of medians, and the smoke test's peak RSS over the load's.
TARGET_RATIO = 1.10
TARGET_EXTRA_RSS_MIB = 200
# Modules a copy-only export to a local folder must not import.
HEAVY_MODULES = ('tensorflow', 'tfx', 'apache_beam', 'google.cloud', 'boto3', 'botocore')

GENERATE_ONE_FILE = f"""
import sys, numpy as np, tensorflow as tf
rng = np.random.default_rng(4)
module = tf.Module()
n = {ONE_FILE.variable_bytes // ONE_FILE_VARIABLES // 4}
module.weights = [tf.Variable(rng.random(n, dtype=np.float32), name=f'w{{i:02d}}')
                  for i in range({ONE_FILE_VARIABLES})]
@tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='x')])
def serve(x):
    return {{'y': x + tf.add_n([w[0] for w in module.weights])}}
module.serve = serve
tf.saved_model.save(module, sys.argv[1], signatures={{'serving_default': serve}})
"""
GENERATE_MANY_FILES = f"""
import os, sys, numpy as np, tensorflow as tf
rng = np.random.default_rng(20)
out, assets = sys.argv[1], sys.argv[1] + '.assets'
os.makedirs(assets)
for i, size in enumerate(rng.integers(256, 16 * 1024, {MANY_FILES})):
    with open(os.path.join(assets, f'vocab_{{i:05d}}.txt'), 'wb') as f:
        f.write(rng.bytes(int(size)))
module = tf.Module()
module.w = tf.Variable(rng.random(1024, dtype=np.float32))
module.assets = [tf.saved_model.Asset(os.path.join(assets, n)) for n in sorted(os.listdir(assets))]
@tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='x')])
def serve(x):
    return {{'y': x + module.w[0]}}
module.serve = serve
tf.saved_model.save(module, out, signatures={{'serving_default': serve}})
"""


def generate(work_dir: Path, name: str, code: str) -> Path:
    """A model generated once by `code` (given the SavedModel folder); its artifact folder."""
    root = work_dir / name
    if (root / 'info.json').exists():
        return root / 'model'
    saved = root / 'model' / 'Format-Serving'
    shutil.rmtree(root, ignore_errors=True)
    saved.parent.mkdir(parents=True)
    subprocess.run([sys.executable, '-c', code, str(saved)], check=True, env=eb.child_env())
    shutil.rmtree(f'{saved}.assets', ignore_errors=True)
    total, files = eb.tree_size(saved)
    (root / 'info.json').write_text(json.dumps({'total_bytes': total, 'file_count': files}))
    return root / 'model'


def one_file_model(work_dir: Path) -> Path:
    """A real SavedModel whose 4 GiB of variables TensorFlow writes as one data file."""
    model = generate(work_dir, ONE_FILE.name, GENERATE_ONE_FILE)
    data = sorted(p.name for p in (model / 'Format-Serving' / 'variables').iterdir())
    if data != ['variables.data-00000-of-00001', 'variables.index']:
        raise RuntimeError(f'expected one data file, TensorFlow wrote {data}')
    return model


def many_files_model(work_dir: Path) -> Path:
    """A real SavedModel with 20,000 small asset files."""
    model = generate(work_dir, MANY_FILES_NAME, GENERATE_MANY_FILES)
    found = len(os.listdir(model / 'Format-Serving' / 'assets'))
    if found != MANY_FILES:
        raise RuntimeError(f'expected {MANY_FILES} assets, TensorFlow wrote {found}')
    return model


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


def cached_mib(folder: Path) -> float:
    """MiB of the files under `folder` in the page cache (util-linux `fincore`)."""
    files = [str(p) for p in folder.rglob('*') if p.is_file()]
    total = 0
    for start in range(0, len(files), 1000):
        out = subprocess.run(
            [
                'fincore',
                '--bytes',
                '--noheadings',
                '--raw',
                '--output',
                'RES',
                *files[start : start + 1000],
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        total += sum(int(x) for x in out.split())
    return total / MIB


def commands(method: str, model_uri: Path, scratch: Path, run: int = 0) -> str:
    saved = model_uri / 'Format-Serving'
    if method == CP:
        return f'cp -r {saved} {scratch / f"dest-{run}"} && sync -f {scratch}'
    if method == OPENSSL:
        return f'find {saved} -type f -print0 | xargs -0 openssl dgst -sha256 > /dev/null'
    if method == TF_LOAD:
        return f'{sys.executable} -c "{LOAD_SCRIPT}" {saved}'
    if method == MINIMAL:
        return f'{sys.executable} {MINIMAL_SCRIPT} {saved} {scratch / f"min-{run}"} && sync -f {scratch}'
    flags = '' if method == SMOKE else '--no-smoke-test'
    return (
        f'{CLI} export --model {model_uri} --export-base {scratch / f"base-{run}"} --name bench '
        f'--no-require-blessing {flags} --json && sync -f {scratch}'
    )


def bench(
    model_uri: Path, scratch: Path, repeats: int, smoke: bool, many_files: bool = False
) -> dict[str, Any]:
    """Every method on one model, alternating; medians, CPU seconds, peaks, page cache.

    With `many_files`, each run's copy is kept until the model's last run: ext4
    without a journal (as here) checks, for every inode it allocates, whether an
    inode nearby was deleted in the last minute, and after a removal of 20,000
    files that made whichever run came next up to three times slower.
    """
    settle_page_cache()
    eb.warm_read(model_uri / 'Format-Serving')
    methods = [CP, OPENSSL, EXPORT] + ([SMOKE, TF_LOAD] if smoke else [])
    methods += [MINIMAL] if many_files else []
    runs: dict[str, dict[str, list[float]]] = {
        m: {'s': [], 'cpu': [], 'rss': [], 'cached': []} for m in methods
    }
    load_before = load_average()
    count = 0
    for r in range(-1, repeats):  # Round -1 is a warm-up, not counted.
        # Alternate the order between repeats, so none always runs after the same one.
        for method in methods if r % 2 == 0 else methods[::-1]:
            count += 1
            run, cpu_s = timed(commands(method, model_uri, scratch, count))
            cached = None
            if method in (EXPORT, SMOKE):
                cached = cached_mib(scratch / f'base-{count}' / 'bench')
            if not many_files:
                eb.remove(scratch / f'dest-{count}', scratch / f'base-{count}')
            subprocess.run(['sync'], check=True)
            if r < 0:
                continue
            runs[method]['s'].append(run.seconds)
            runs[method]['cpu'].append(cpu_s)
            if run.max_rss_mib is not None:
                runs[method]['rss'].append(run.max_rss_mib)
            if cached is not None:
                runs[method]['cached'].append(cached)
    results: dict[str, Any] = {
        m: {
            'median_s': statistics.median(v['s']),
            'runs_s': v['s'],
            'median_cpu_s': statistics.median(v['cpu']),
            'peak_rss_mib': max(v['rss']) if v['rss'] else None,
            'cached_after_mib': max(v['cached']) if v['cached'] else None,
        }
        for m, v in runs.items()
    }
    cores = os.cpu_count() or 1
    cpu_floor = (results[OPENSSL]['median_cpu_s'] + results[CP]['median_cpu_s']) / cores
    results['floor'] = {
        'seconds': max(results[CP]['median_s'], cpu_floor),
        'cpu_bound_s': cpu_floor,
        'cores': cores,
    }
    results['load_average'] = {'before': load_before, 'after': load_average()}
    results['repeats'] = repeats
    for path in scratch.iterdir():
        eb.remove(path)
    return results


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


def startup(model_uri: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    """The copy-only CLI's start-up on a tiny model: wall time, and its imports."""
    cmd = commands(EXPORT, model_uri, scratch)
    seconds = []
    for _ in range(repeats):
        seconds.append(timed(cmd)[0].seconds)
        eb.remove(scratch / 'base-0')
    trace = subprocess.run(
        [sys.executable, '-X', 'importtime', CLI, *cmd.split(' && ')[0].split()[1:]],
        capture_output=True,
        text=True,
        env=eb.child_env(),
        check=True,
    ).stderr
    eb.remove(scratch / 'base-0')
    imports = []
    for line in trace.splitlines():
        if line.startswith('import time:') and '|' in line and 'self [us]' not in line:
            own, cumulative, name = line[len('import time:') :].split('|')
            imports.append((name.rstrip(), int(own), int(cumulative)))
    top_level = [i for i in imports if not i[0].startswith('  ')]
    heavy = sorted({n.strip() for n, _, _ in imports if n.strip().startswith(HEAVY_MODULES)})
    return {
        'median_s': statistics.median(seconds),
        'imports_ms': sum(c for _, _, c in top_level) / 1000,
        'modules': len(imports),
        'top_self_ms': [
            (n.strip(), own / 1000) for n, own, _ in sorted(imports, key=lambda i: -i[1])[:10]
        ],
        'heavy_modules_imported': heavy,
        'load_average': load_average(),
    }


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
    runs: dict[str, list[tuple[float, float]]] = {}
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


TITLES = {
    ONE_FILE.name: '4 GiB, 1 data file',
    '1g': '1 GiB, 64 shards',
    MANY_FILES_NAME: '20,000 small files',
}


def table(results: dict[str, Any]) -> str:
    rows = [
        '| Model | Method | Median | CPU s | Against | Ratio | Target | Peak RSS '
        '| Cached after | Load avg (before, after) |',
        '|---|---|---:|---:|---|---:|---:|---:|---:|---|',
    ]
    for name in MODELS:
        if name in results:
            rows += model_rows(TITLES[name], results[name], one_file=name == ONE_FILE.name)
    rows += ['', 'Medians of ' + repeats_text(results) + ' alternating repeats.']
    hashing = results.get('hash_gb_s')
    if hashing:
        rows += ['', '| SHA-256 of the 4 GiB file (in process) | GB/s | CPU s |', '|---|---:|---:|']
        rows += [f'| {k} | {v["gb_s"]:.2f} | {v["cpu_s"]:.2f} |' for k, v in hashing.items()]
    start = results.get('startup')
    if start:
        rows += [
            '',
            f'Copy-only CLI start-up (tiny model): {start["median_s"]:.3f} s median, imports '
            f'{start["imports_ms"]:.0f} ms ({start["modules"]} modules; TensorFlow, TFX, Beam, '
            f'cloud SDKs imported: {start["heavy_modules_imported"] or "none"}), load '
            f'{start["load_average"].split()[0]}. Largest own import times: '
            + ', '.join(f'{n} {ms:.1f} ms' for n, ms in start['top_self_ms']),
        ]
    return '\n'.join(rows)


def repeats_text(results: dict[str, Any]) -> str:
    """How many repeats each model's medians are of: `5`, or `5 (20,000 small files: 15)`."""
    base = results['repeats']
    other = [
        f'{TITLES[n]}: {results[n]["repeats"]}'
        for n in MODELS
        if n in results and results[n]['repeats'] != base
    ]
    return f'{base} ({", ".join(other)})' if other else str(base)


def model_rows(title: str, res: dict[str, Any], one_file: bool) -> list[str]:
    """One model's rows: the floor, the copies and loads against their targets."""
    floor = res['floor']['seconds']
    load = ', '.join(res['load_average'][k].split()[0] for k in ('before', 'after'))
    rows = []

    def row(method: str, against: str = '', base: float = 0.0, judged: bool = False) -> None:
        m = res[method]
        # Three decimals and a mark from the unrounded ratio: 1.103x is not "1.10x".
        ratio = f'{m["median_s"] / base:.3f}x' if base else ''
        target = (
            f'≤ {TARGET_RATIO:.2f}x {_mark(m["median_s"] / base <= TARGET_RATIO)}' if judged else ''
        )
        rss = f'{m["peak_rss_mib"]:.0f} MiB' if m['peak_rss_mib'] and method != OPENSSL else ''
        cached = m['cached_after_mib']
        cached_text = f'{cached:.0f} MiB' if cached is not None else ''
        wall = f'{m["median_s"]:.2f} s' if method != OPENSSL else '(CPU only)'
        rows.append(
            f'| {title} | {method} | {wall} | {m["median_cpu_s"]:.2f} | {against} | {ratio} '
            f'| {target} | {rss} | {cached_text} | {load} |'
        )

    row(CP)
    row(OPENSSL)
    rows.append(
        f'| {title} | floor | {floor:.2f} s | | max(cp, (openssl + cp CPU-s) / '
        f'{res["floor"]["cores"]} = {res["floor"]["cpu_bound_s"]:.2f} s) | | | | | {load} |'
    )
    if one_file:
        row(EXPORT, 'floor', floor, judged=True)
    else:
        row(EXPORT, '`cp -r && sync -f`', res[CP]['median_s'], judged=True)
        row(EXPORT, 'floor', floor)
    if MINIMAL in res:
        row(MINIMAL, '`cp -r && sync -f`', res[CP]['median_s'])
        row(EXPORT, MINIMAL, res[MINIMAL]['median_s'])
    if SMOKE in res:
        row(TF_LOAD)
        row(SMOKE, 'TF import + load', res[TF_LOAD]['median_s'], judged=True)
        peak = res[TF_LOAD]['peak_rss_mib']
        if peak:
            extra = res[SMOKE]['peak_rss_mib'] - peak
            rows.append(
                f'| {title} | peak RSS, smoke test against load | {extra:+.0f} MiB | | '
                f'TF import + load | | ≤ +{TARGET_EXTRA_RSS_MIB} MiB {_mark(extra <= TARGET_EXTRA_RSS_MIB)} '
                f'| | | {load} |'
            )
    return rows


def _mark(met: bool) -> str:
    return '✓' if met else '✗'


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not installed: no plot')
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels, values, colors = [], [], []
    palette = {CP: '#888888', EXPORT: '#1f77b4', TF_LOAD: '#bbbbbb', SMOKE: '#ff7f0e'}
    for name in MODELS:
        res = results.get(name)
        if res is None:
            continue
        labels.append(f'{TITLES[name]}\nfloor')
        values.append(res['floor']['seconds'])
        colors.append('#dddddd')
        for method in (CP, EXPORT, TF_LOAD, SMOKE):
            if method in res:
                labels.append(f'{TITLES[name]}\n{method}')
                values.append(res[method]['median_s'])
                colors.append(palette[method])
    left.barh(range(len(values)), values, color=colors)
    left.set_yticks(range(len(values)), labels, fontsize=6)
    left.invert_yaxis()
    left.set_xlabel('seconds until on disk (median)')
    for i, v in enumerate(values):
        left.text(v, i, f' {v:.2f} s', va='center', fontsize=6)
    hashing = results.get('hash_gb_s', {})
    right.bar(range(len(hashing)), [v['gb_s'] for v in hashing.values()], color='#2ca02c')
    right.set_xticks(range(len(hashing)), list(hashing), fontsize=7, rotation=15)
    right.set_ylabel('GB/s')
    right.set_title('SHA-256 of one 4 GiB file', fontsize=9)
    fig.suptitle(
        f'Large models, {results["machine"]["cpus"]} cores (load average before '
        f'{results["machine"]["load_average_before"].split()[0]}), '
        f'medians of {repeats_text(results)}',
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
    parser.add_argument(
        '--models',
        default=','.join(MODELS),
        help=f'comma-separated, from {",".join(MODELS)} (default: all)',
    )
    parser.add_argument('--no-hashing', action='store_true', help='skip the hashing figures')
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.models.split(',') if m.strip()]
    if not chosen or set(chosen) - set(MODELS):
        parser.error(f'--models: choose from {",".join(MODELS)}; got {args.models!r}')
    args.work_dir.mkdir(parents=True, exist_ok=True)
    scratch = args.work_dir / 'scratch'
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    load_before = load_average()
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
    try:
        tiny = eb.ensure_model(eb.SHAPES['tiny'], args.work_dir)
        results['startup'] = startup(tiny.uri, scratch, max(args.repeats, 5))
        if ONE_FILE.name in chosen:
            big = one_file_model(args.work_dir)
            results[ONE_FILE.name] = bench(big, scratch, args.repeats, smoke=True)
            if not args.no_hashing:
                data = big / 'Format-Serving' / 'variables' / 'variables.data-00000-of-00001'
                results['hash_gb_s'] = hash_throughput(data, args.repeats)
        if '1g' in chosen:
            sharded = eb.ensure_model(eb.SHAPES['1g'], args.work_dir)
            results['1g'] = bench(sharded.uri, scratch, args.repeats, smoke=True)
        if MANY_FILES_NAME in chosen:
            many = many_files_model(args.work_dir)
            results[MANY_FILES_NAME] = bench(
                many,
                scratch,
                args.repeats * MANY_FILES_REPEATS_FACTOR,
                smoke=False,
                many_files=True,
            )
        results['machine']['load_average_after'] = load_average()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.work_dir / ONE_FILE.name, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'large_results.json').write_text(json.dumps(results, indent=2) + '\n')
    print(table(results))
    print(f'load average before {load_before}, after {results["machine"]["load_average_after"]}')
    plot(results, args.plot)
    return 0


if __name__ == '__main__':
    sys.exit(main())
