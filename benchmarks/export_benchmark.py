"""Times the FinalExporter export against `cp -r` and the TFX Pusher on generated SavedModels.

Run with the project's interpreter:

    .venv/bin/python benchmarks/export_benchmark.py [--sizes tiny,100m,1g] [--repeats 3]
        [--out benchmarks/out] [--work-dir DIR] [--workers N] [--component SIZES | --no-component]

SavedModels are generated once with TensorFlow (in a subprocess) and cached
under `--work-dir`. For each model, every repeat runs the methods in the same
order: `cp -r`, the `final-exporter export` CLI process, `run_export` in this
process, and the TFX Pusher executor's `Do` in a subprocess. Destinations are
on the same filesystem as the source, removed after each run (untimed) and
followed by `sync`. The page cache cannot be dropped, so the source is read
once before timing and every method reads it from a warm cache.

Every time is "until the bytes are on disk": each method is followed by
`syncfs` of the destination filesystem, timed with it. The exporter fsyncs
before it publishes (so its `syncfs` finds nothing left to write); `cp -r` and
the Pusher leave their bytes in the page cache, and a copy that is not on disk
has not finished being written. `cp -r (no sync)` is also reported: the
memory-speed copy, which is not a finished export on any machine that can lose
power.

Peak memory is `ru_maxrss` of each child process, read from `os.wait4` on that
child alone (so it is per process, not the maximum over all children).

Writes `<out>/results.json` and `<out>/export_time.png` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / 'out'
PYCACHE = DEFAULT_OUT / 'pycache'  # The timed children's bytecode (child_env).
MIB = 1024 * 1024
GENERATOR_VERSION = 1
EXPORT_NAME = 'bench'
WORKER_COMMAND = '_worker'

CP = 'cp -r'
CP_NO_SYNC = 'cp -r (no sync)'
CLI = 'final-exporter CLI'
CORE = 'run_export in-process'
PUSHER_DO = 'Pusher Do'
PUSHER_PROCESS = 'Pusher process'
METHODS = (CP, CLI, CORE, PUSHER_DO, PUSHER_PROCESS, CP_NO_SYNC)
COMPONENT_FINAL = 'FinalExporter'
COMPONENT_PUSHER = 'Pusher'
TIME = '/usr/bin/time' if os.access('/usr/bin/time', os.X_OK) else None


@dataclasses.dataclass(frozen=True)
class Shape:
    """A SavedModel to generate: variable bytes split evenly over `shards` variables and shards."""

    name: str
    variable_bytes: int
    shards: int
    asset_files: int = 0


SHAPES = {
    s.name: s
    for s in (
        Shape('tiny', 1 * MIB, 1),
        Shape('100m', 100 * MIB, 1),
        Shape('1g', 1024 * MIB, 64),
        Shape('4g', 4096 * MIB, 256),
        Shape('small-files', 1 * MIB, 1, asset_files=2000),
    )
}
ALIASES = {'small': 'small-files'}
DEFAULT_SIZES = 'tiny,100m,1g,small-files'


@dataclasses.dataclass(frozen=True)
class Model:
    """A generated model: `uri` is a Model artifact folder whose `Format-Serving/` is the SavedModel."""

    shape: Shape
    uri: Path
    total_bytes: int
    file_count: int
    variable_shards: int

    @property
    def saved_model_dir(self) -> Path:
        return self.uri / 'Format-Serving'


@dataclasses.dataclass(frozen=True)
class ChildRun:
    """One finished child process."""

    seconds: float
    max_rss_mib: float | None
    stdout: str


# --- child processes ----------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of a timed child: its Python bytecode cached (outside the source
    tree), as a pip-installed package has it.

    The project's editable install under the Makefile's PYTHONDONTWRITEBYTECODE
    would otherwise compile the package's modules from source in every run (about
    90 ms of start-up measured on 2 cores), a cost no installed wheel pays.
    """
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPYCACHEPREFIX': str(PYCACHE)}
    env.pop('PYTHONDONTWRITEBYTECODE', None)
    return env


def run_child(cmd: Sequence[str]) -> ChildRun:
    """Runs `cmd` to completion; wall time from spawn to exit and the command's peak RSS.

    The peak comes from GNU time's `%M` (ru_maxrss of the command, in KiB), not
    from `os.wait4` here: a child spawned by this process starts with this
    process's memory mapped until it execs, and Linux keeps that high-water mark
    in the child's `ru_maxrss`. GNU time is small, so its child starts near zero.
    """
    tmp = Path(os.environ.get('TMPDIR', '/tmp'))
    out_path = tmp / f'export-bench-{os.getpid()}.out'
    err_path = out_path.with_suffix('.err')
    rss_path = out_path.with_suffix('.rss')
    wrapper = [TIME, '-f', '%M', '-o', str(rss_path)] if TIME else []
    try:
        with out_path.open('w+') as out, err_path.open('w+') as err:
            start = time.perf_counter()
            proc = subprocess.run([*wrapper, *cmd], stdout=out, stderr=err, env=child_env())
            seconds = time.perf_counter() - start
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(
                    f'{" ".join(cmd)} exited with {proc.returncode}:\n{err.read()[-4000:]}'
                )
            rss = int(rss_path.read_text().split()[-1]) / 1024 if TIME else None
            return ChildRun(seconds=seconds, max_rss_mib=rss, stdout=out.read())
    finally:
        for path in (out_path, err_path, rss_path):
            path.unlink(missing_ok=True)


def wrapper_overhead() -> float:
    """Median extra wall time GNU time adds to spawning a process (`true`), in seconds."""

    def spawn(cmd: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        return time.perf_counter() - start

    direct = statistics.median(spawn(['true']) for _ in range(20))
    if not TIME:
        return 0.0
    wrapped = statistics.median(
        spawn([TIME, '-f', '%M', '-o', os.devnull, 'true']) for _ in range(20)
    )
    return wrapped - direct


def worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), WORKER_COMMAND, *args]


def last_json_line(stdout: str) -> dict[str, Any]:
    """The JSON object a worker or the CLI prints as its last line."""
    lines = [line for line in stdout.splitlines() if line.startswith('{')]
    if not lines:
        raise RuntimeError(f'no JSON result in the output:\n{stdout[-2000:]}')
    return json.loads(lines[-1])


# --- model generation (worker side: imports TensorFlow) -----------------------


def generate_model(shape: Shape, uri: Path) -> dict[str, Any]:
    """Saves a `tf.Module` of random float32 variables (and assets) to `<uri>/Format-Serving`."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(sum(shape.name.encode()) + shape.variable_bytes)
    floats_per_variable = shape.variable_bytes // shape.shards // 4
    module = tf.Module()
    module.weights = [
        tf.Variable(rng.standard_normal(floats_per_variable, dtype=np.float32), name=f'w{i:03d}')
        for i in range(shape.shards)
    ]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name='x')])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {'y': x + tf.add_n([w[0] for w in module.weights])}

    module.serve = serve
    asset_src = uri.parent / 'asset-src'
    if shape.asset_files:
        asset_src.mkdir(parents=True)
        sizes = rng.integers(256, 16 * 1024, shape.asset_files)
        for i, size in enumerate(sizes):
            (asset_src / f'vocab_{i:04d}.txt').write_bytes(rng.bytes(int(size)))
        module.assets = [tf.saved_model.Asset(str(p)) for p in sorted(asset_src.iterdir())]
    options = None
    if shape.shards > 1:
        # One variable per shard; any slack lets the policy split variables across shards.
        policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=floats_per_variable * 4)
        options = tf.saved_model.SaveOptions(experimental_sharding_callback=policy)
    saved_model_dir = uri / 'Format-Serving'
    tf.saved_model.save(
        module, str(saved_model_dir), signatures={'serving_default': serve}, options=options
    )
    shutil.rmtree(asset_src, ignore_errors=True)

    shard_names = [
        n for n in os.listdir(saved_model_dir / 'variables') if n.startswith('variables.data-')
    ]
    expected = {f'variables.data-{i:05d}-of-{shape.shards:05d}' for i in range(shape.shards)}
    if set(shard_names) != expected:
        raise RuntimeError(
            f'{shape.name}: expected {shape.shards} variable shards, TensorFlow wrote '
            f'{sorted(shard_names)[:5]}... ({len(shard_names)})'
        )
    assets_dir = saved_model_dir / 'assets'
    assets = len(os.listdir(assets_dir)) if assets_dir.is_dir() else 0
    if assets != shape.asset_files:
        raise RuntimeError(f'{shape.name}: expected {shape.asset_files} assets, found {assets}')
    total_bytes, file_count = tree_size(saved_model_dir)
    return {
        'shape': dataclasses.asdict(shape),
        'generator_version': GENERATOR_VERSION,
        'tensorflow_version': tf.__version__,
        'total_bytes': total_bytes,
        'file_count': file_count,
        'variable_shards': len(shard_names),
    }


def worker_generate(args: argparse.Namespace) -> None:
    shape = SHAPES[args.shape]
    root = Path(args.work_dir) / shape.name
    tmp = root.with_name(root.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    info = generate_model(shape, tmp / 'model')
    (tmp / 'info.json').write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    print(json.dumps(info, sort_keys=True))


# --- Pusher and pipelines (worker side: import TFX) ----------------------------


def worker_pusher(args: argparse.Namespace) -> None:
    """Runs the TFX Pusher executor's `Do` on real artifacts and prints how long `Do` took."""
    from tfx.components.pusher.executor import Executor
    from tfx.proto import pusher_pb2
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    model = standard_artifacts.Model()
    model.uri = args.model_uri
    blessing = standard_artifacts.ModelBlessing()
    blessing.uri = args.blessing_uri
    blessing.set_int_custom_property('blessed', 1)
    pushed = standard_artifacts.PushedModel()
    pushed.uri = args.pushed_uri
    destination = pusher_pb2.PushDestination(
        filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=args.base_directory)
    )
    start = time.perf_counter()
    Executor().Do(
        {
            standard_component_specs.MODEL_KEY: [model],
            standard_component_specs.MODEL_BLESSING_KEY: [blessing],
        },
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(destination)},
    )
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                'do_seconds': seconds,
                'pushed': pushed.get_int_custom_property('pushed'),
                'pushed_destination': pushed.get_string_custom_property('pushed_destination'),
            }
        )
    )


def worker_component(args: argparse.Namespace) -> None:
    """Runs Importer(model) + Importer(blessing) -> FinalExporter or Pusher with LocalDagRunner.

    `--runs` times in this process, each in its own folder and followed by
    `syncfs`: the first run pays the lazy imports, the later ones show the
    component's own cost without the noise of a process start.
    """
    do_seconds: list[float] = []
    with _timed_do(args.kind, do_seconds):
        runs = [_component_run(args, Path(args.root) / f'run-{i}') for i in range(args.runs)]
    print(
        json.dumps(
            {
                'run_seconds': [r[0] for r in runs],
                'do_seconds': do_seconds,
                'versions': [r[1] for r in runs],
            }
        )
    )


@contextlib.contextmanager
def _timed_do(kind: str, seconds: list[float]) -> Iterator[None]:
    """Times the executor's `Do` inside the pipeline runs: the component's own work.

    A pipeline run is mostly MLMD (SQLite commits, each a disk flush), whose
    noise here is larger than the difference between the two executors.
    """
    if kind == COMPONENT_FINAL:
        from final_exporter.adapters.tfx.executor import Executor
    else:
        from tfx.components.pusher.executor import Executor
    original = Executor.Do

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    with mock.patch.object(Executor, 'Do', timed):
        yield


def _component_run(args: argparse.Namespace, root: Path) -> tuple[float, list[str]]:
    from tfx import v1 as tfx

    export_base = root / 'export'
    model = tfx.dsl.Importer(
        source_uri=args.model_uri, artifact_type=tfx.types.standard_artifacts.Model
    ).with_id('model_importer')
    blessing = tfx.dsl.Importer(
        source_uri=args.blessing_uri,
        artifact_type=tfx.types.standard_artifacts.ModelBlessing,
        custom_properties={'blessed': 1},
    ).with_id('blessing_importer')
    if args.kind == COMPONENT_FINAL:
        from final_exporter import FinalExporter

        pusher = FinalExporter(
            model=model.outputs['result'],
            model_blessing=blessing.outputs['result'],
            name=EXPORT_NAME,
            export_base=str(export_base),
            smoke_test=False,
        )
        model_base = export_base / EXPORT_NAME
    else:
        model_base = export_base / EXPORT_NAME
        pusher = tfx.components.Pusher(
            model=model.outputs['result'],
            model_blessing=blessing.outputs['result'],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(base_directory=str(model_base))
            ),
        )
    pipeline = tfx.dsl.Pipeline(
        pipeline_name='export-benchmark',
        pipeline_root=str(root / 'pipeline_root'),
        components=[model, blessing, pusher],
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / 'metadata.sqlite')
        ),
    )
    start = time.perf_counter()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    seconds = time.perf_counter() - start + flush_seconds(root)
    versions = [n for n in os.listdir(model_base) if n.isdigit()] if model_base.is_dir() else []
    return seconds, versions


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f'{SCRIPT.name} {WORKER_COMMAND}')
    commands = parser.add_subparsers(dest='command', required=True)
    gen = commands.add_parser('generate')
    gen.add_argument('--shape', required=True, choices=sorted(SHAPES))
    gen.add_argument('--work-dir', required=True)
    gen.set_defaults(func=worker_generate)
    push = commands.add_parser('pusher')
    for name in ('--model-uri', '--blessing-uri', '--base-directory', '--pushed-uri'):
        push.add_argument(name, required=True)
    push.set_defaults(func=worker_pusher)
    comp = commands.add_parser('component')
    comp.add_argument('--kind', required=True, choices=(COMPONENT_FINAL, COMPONENT_PUSHER))
    for name in ('--model-uri', '--blessing-uri', '--root'):
        comp.add_argument(name, required=True)
    comp.add_argument('--runs', type=int, default=1)
    comp.set_defaults(func=worker_component)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


# --- the benchmark (parent side: no TensorFlow) --------------------------------


def tree_size(root: Path) -> tuple[int, int]:
    """(bytes, files) under `root`."""
    total = count = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            total += os.path.getsize(os.path.join(dirpath, name))
            count += 1
    return total, count


def warm_read(root: Path) -> int:
    """Reads every file under `root` once, so the timed runs all start from a warm page cache."""
    buf = bytearray(8 * MIB)
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), 'rb', buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total


def flush_seconds(path: Path) -> float:
    """Writes the filesystem holding `path` to disk (`syncfs`); returns how long that took."""
    from final_exporter.common.fs import syncfs

    start = time.perf_counter()
    if not syncfs(str(path)):
        raise OSError(
            'syncfs(2) is not available: this benchmark times until the bytes are on disk'
        )
    return time.perf_counter() - start


def remove(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    os.sync()


def ensure_model(shape: Shape, work_dir: Path) -> Model:
    """The cached model for `shape`, generated in a subprocess if missing or stale."""
    root = work_dir / shape.name
    info_path = root / 'info.json'
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if (
        info is None
        or info.get('shape') != dataclasses.asdict(shape)
        or info.get('generator_version') != GENERATOR_VERSION
    ):
        print(f'generating {shape.name} under {root} ...', flush=True)
        run = run_child(worker_cmd('generate', '--shape', shape.name, '--work-dir', str(work_dir)))
        print(f'  generated in {run.seconds:.1f} s', flush=True)
        info = json.loads(info_path.read_text())
    return Model(
        shape=shape,
        uri=root / 'model',
        total_bytes=info['total_bytes'],
        file_count=info['file_count'],
        variable_shards=info['variable_shards'],
    )


def ensure_blessing(work_dir: Path) -> Path:
    """A ModelBlessing folder as Evaluator writes it: an empty `BLESSED` file."""
    folder = work_dir / 'blessing'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'BLESSED').touch()
    return folder


def check_copy(dest: Path, model: Model, what: str) -> None:
    total, _ = tree_size(dest)
    if total != model.total_bytes:
        raise RuntimeError(f'{what}: {dest} holds {total} bytes, expected {model.total_bytes}')


def time_cp(model: Model, scratch: Path) -> tuple[float, float, float | None]:
    """(seconds until on disk, seconds of the copy alone, peak RSS)."""
    dest = scratch / 'cp'
    run = run_child(['cp', '-r', str(model.saved_model_dir), str(dest)])
    durable = run.seconds + flush_seconds(scratch)
    check_copy(dest, model, CP)
    remove(dest)
    return durable, run.seconds, run.max_rss_mib


def time_cli(model: Model, scratch: Path, workers: int | None) -> tuple[float, float | None]:
    export_base = scratch / 'cli'
    cmd = [
        str(Path(sys.executable).parent / 'final-exporter'),
        'export',
        '--model',
        str(model.uri),
        '--export-base',
        str(export_base),
        '--name',
        EXPORT_NAME,
        '--no-require-blessing',
        # The copy alone, like the Pusher (which loads nothing); the smoke test adds
        # TensorFlow's start-up and a model load, timed separately in the README.
        '--no-smoke-test',
        '--json',
    ]
    if workers:
        cmd += ['--workers', str(workers)]
    run = run_child(cmd)
    seconds = run.seconds + flush_seconds(scratch)
    result = last_json_line(run.stdout)
    if not result['pushed'] or result['total_bytes'] != model.total_bytes:
        raise RuntimeError(f'{CLI}: unexpected result {result}')
    remove(export_base)
    return seconds, run.max_rss_mib


def time_core(model: Model, scratch: Path, workers: int | None) -> tuple[float, float | None]:
    from final_exporter import ExportConfig, ExportRequest, run_export

    export_base = scratch / 'core'
    request = ExportRequest(
        config=ExportConfig(
            name=EXPORT_NAME,
            export_base=str(export_base),
            require_blessing=False,
            smoke_test=False,
        ),
        model_uri=str(model.uri),
    )
    start = time.perf_counter()
    result = run_export(request, workers=workers)
    seconds = time.perf_counter() - start + flush_seconds(scratch)
    if not result.pushed or result.total_bytes != model.total_bytes:
        raise RuntimeError(f'{CORE}: unexpected result {result.summary()}')
    remove(export_base)
    return seconds, None


def time_pusher(model: Model, scratch: Path, blessing: Path) -> tuple[ChildRun, float, float]:
    """(the process, seconds of `Do`, seconds of the flush after it)."""
    base = scratch / 'pusher' / EXPORT_NAME
    pushed_uri = scratch / 'pusher-pushed-model'
    run = run_child(
        worker_cmd(
            'pusher',
            '--model-uri',
            str(model.uri),
            '--blessing-uri',
            str(blessing),
            '--base-directory',
            str(base),
            '--pushed-uri',
            str(pushed_uri),
        )
    )
    flush = flush_seconds(scratch)
    result = last_json_line(run.stdout)
    if result['pushed'] != 1:
        raise RuntimeError(f'Pusher did not push: {result}')
    check_copy(Path(result['pushed_destination']), model, PUSHER_DO)
    remove(scratch / 'pusher', pushed_uri)
    return run, result['do_seconds'], flush


def summarize(seconds: list[float], rss: list[float]) -> dict[str, Any]:
    return {
        'seconds': seconds,
        'median_s': statistics.median(seconds),
        'min_s': min(seconds),
        'max_rss_mib': rss or None,
        'peak_rss_mib': max(rss) if rss else None,
    }


def bench_model(
    model: Model, blessing: Path, scratch: Path, repeats: int, workers: int | None
) -> dict[str, Any]:
    """Times every method `repeats` times, alternating, on a warm source."""
    warm_read(model.saved_model_dir)
    seconds: dict[str, list[float]] = {m: [] for m in METHODS}
    rss: dict[str, list[float]] = {m: [] for m in METHODS}
    load_before = os.getloadavg()
    for repeat in range(repeats):
        durable, no_sync, peak = time_cp(model, scratch)
        seconds[CP].append(durable)
        seconds[CP_NO_SYNC].append(no_sync)
        if peak is not None:
            rss[CP].append(peak)
        timed: list[tuple[str, Callable[[], tuple[float, float | None]]]] = [
            (CLI, lambda: time_cli(model, scratch, workers)),
            (CORE, lambda: time_core(model, scratch, workers)),
        ]
        for method, fn in timed:
            secs, peak = fn()
            seconds[method].append(secs)
            if peak is not None:
                rss[method].append(peak)
        run, do_seconds, flush = time_pusher(model, scratch, blessing)
        seconds[PUSHER_DO].append(do_seconds + flush)
        seconds[PUSHER_PROCESS].append(run.seconds + flush)
        if run.max_rss_mib is not None:
            rss[PUSHER_PROCESS].append(run.max_rss_mib)
        print(
            f'  {model.shape.name} repeat {repeat + 1}/{repeats}: '
            + ', '.join(f'{m} {seconds[m][-1]:.3f}s' for m in METHODS),
            flush=True,
        )
    methods = {m: summarize(seconds[m], rss[m]) for m in METHODS}
    cp_median = methods[CP]['median_s']
    pusher_median = methods[PUSHER_DO]['median_s']
    for summary in methods.values():
        summary['x_cp'] = summary['median_s'] / cp_median
        summary['x_pusher_do'] = summary['median_s'] / pusher_median
    return {
        'shape': model.shape.name,
        'variable_bytes': model.shape.variable_bytes,
        'asset_files': model.shape.asset_files,
        'total_bytes': model.total_bytes,
        'file_count': model.file_count,
        'variable_shards': model.variable_shards,
        'saved_model_dir': str(model.saved_model_dir),
        'loadavg_before': load_before,
        'loadavg_after': os.getloadavg(),
        'methods': methods,
    }


# Pipeline runs per process: one cold (imports), the rest warm.
COMPONENT_RUNS = 11


def bench_component(model: Model, blessing: Path, scratch: Path, repeats: int) -> dict[str, Any]:
    """Times `LocalDagRunner().run` of Importer -> FinalExporter vs Importer -> Pusher.

    Each repeat starts one process per pipeline, which runs it COMPONENT_RUNS
    times; the medians are over the warm runs (all but each process's first).
    The order of the two alternates between repeats: the disk's state (a
    journal commit due, the other pipeline's deletes) favours neither.
    """
    kinds = (COMPONENT_FINAL, COMPONENT_PUSHER)
    run_s: dict[str, list[float]] = {k: [] for k in kinds}
    cold_s: dict[str, list[float]] = {k: [] for k in kinds}
    process_s: dict[str, list[float]] = {k: [] for k in kinds}
    rss: dict[str, list[float]] = {k: [] for k in kinds}
    do_s: dict[str, list[float]] = {k: [] for k in kinds}
    for repeat in range(repeats):
        for kind in kinds if repeat % 2 == 0 else kinds[::-1]:
            root = scratch / f'component-{kind}'
            remove(root)
            run = run_child(
                worker_cmd(
                    'component',
                    '--kind',
                    kind,
                    '--model-uri',
                    str(model.uri),
                    '--blessing-uri',
                    str(blessing),
                    '--root',
                    str(root),
                    '--runs',
                    str(COMPONENT_RUNS),
                )
            )
            result = last_json_line(run.stdout)
            if any(len(v) != 1 for v in result['versions']):
                raise RuntimeError(f'{kind} pipeline exported {result["versions"]}, one per run')
            cold_s[kind].append(result['run_seconds'][0])
            run_s[kind].extend(result['run_seconds'][1:])
            do_s[kind].extend(result['do_seconds'][1:])
            process_s[kind].append(run.seconds)
            if run.max_rss_mib is not None:
                rss[kind].append(run.max_rss_mib)
            remove(root)
        print(
            f'  component {model.shape.name} repeat {repeat + 1}/{repeats}: '
            + ', '.join(
                f'{k} {statistics.median(run_s[k][-(COMPONENT_RUNS - 1) :]):.3f}s '
                f'(Do {statistics.median(do_s[k][-(COMPONENT_RUNS - 1) :]) * 1000:.1f} ms)'
                for k in kinds
            ),
            flush=True,
        )
    pusher_median = statistics.median(run_s[COMPONENT_PUSHER])
    return {
        'shape': model.shape.name,
        'total_bytes': model.total_bytes,
        'components': {
            k: {
                'run_seconds': run_s[k],
                'median_run_s': statistics.median(run_s[k]),
                'cold_run_seconds': cold_s[k],
                'median_cold_run_s': statistics.median(cold_s[k]),
                'process_seconds': process_s[k],
                'median_process_s': statistics.median(process_s[k]),
                'x_pusher': statistics.median(run_s[k]) / pusher_median,
                'do_seconds': do_s[k],
                'median_do_s': statistics.median(do_s[k]),
                'peak_rss_mib': max(rss[k]) if rss[k] else None,
            }
            for k in kinds
        },
    }


# --- reporting ------------------------------------------------------------------


def machine_info(dest: Path) -> dict[str, Any]:
    cpu = platform.processor() or 'unknown CPU'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    mem_kib = 0
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemTotal:'):
                mem_kib = int(line.split()[1])
    fs_type = (
        subprocess.run(
            ['findmnt', '-n', '-o', 'FSTYPE', '--target', str(dest)], capture_output=True, text=True
        ).stdout.strip()
        or subprocess.run(  # `stat -f` names ext4 "ext2/ext3" (one magic number)
            ['stat', '-f', '-c', '%T', str(dest)], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    from final_exporter import __version__

    return {
        'cpu': cpu,
        'cores': os.cpu_count(),
        'memory_gib': round(mem_kib / MIB, 1),
        'kernel': platform.release(),
        'destination_fs': fs_type,
        'python': platform.python_version(),
        'tfx': importlib.metadata.version('tfx'),
        'tensorflow': importlib.metadata.version('tensorflow'),
        'final_exporter': __version__,
        'cp': subprocess.run(
            ['cp', '--version'], capture_output=True, text=True
        ).stdout.splitlines()[0],
    }


def format_table(models: list[dict[str, Any]], components: list[dict[str, Any]]) -> str:
    header = (
        f'{"model":<12} {"size":>10} {"files":>6} {"method":<22} {"median s":>9} '
        f'{"x cp -r":>8} {"x Pusher Do":>11} {"peak RSS MiB":>12}'
    )
    lines = [header, '-' * len(header)]
    for m in models:
        for method in METHODS:
            s = m['methods'][method]
            rss = f'{s["peak_rss_mib"]:.0f}' if s['peak_rss_mib'] is not None else '-'
            lines.append(
                f'{m["shape"]:<12} {m["total_bytes"] / MIB:>8.1f}Mi {m["file_count"]:>6} '
                f'{method:<22} {s["median_s"]:>9.3f} {s["x_cp"]:>8.2f} '
                f'{s["x_pusher_do"]:>11.2f} {rss:>12}'
            )
    if components:
        lines += [
            '',
            f'{"model":<12} {"pipeline":<15} {"warm run s":>10} {"x Pusher":>8} '
            f'{"Do ms":>7} {"cold run s":>10} {"process s":>9} {"peak RSS MiB":>12}',
        ]
        lines.append('-' * len(lines[-1]))
        for c in components:
            for kind, s in c['components'].items():
                rss = f'{s["peak_rss_mib"]:.0f}' if s['peak_rss_mib'] is not None else '-'
                lines.append(
                    f'{c["shape"]:<12} {kind:<15} {s["median_run_s"]:>10.4f} '
                    f'{s["x_pusher"]:>8.3f} {s["median_do_s"] * 1000:>7.2f} '
                    f'{s["median_cold_run_s"]:>10.3f} '
                    f'{s["median_process_s"]:>9.2f} {rss:>12}'
                )
    return '\n'.join(lines)


def plot(models: list[dict[str, Any]], machine: dict[str, Any], repeats: int, path: Path) -> None:
    """Median time vs model size, log-log; one line per method, small-files as lone markers."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    by_size = sorted((m for m in models if not m['asset_files']), key=lambda m: m['total_bytes'])
    many_files = [m for m in models if m['asset_files']]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for i, method in enumerate(METHODS):
        color = f'C{i}'
        if by_size:
            ax.plot(
                [m['total_bytes'] for m in by_size],
                [m['methods'][method]['median_s'] for m in by_size],
                marker='o',
                color=color,
                # Not a finished copy (still in the page cache): a reference, drawn dashed.
                linestyle='--' if method == CP_NO_SYNC else '-',
                label=method,
            )
        for m in many_files:
            ax.plot(
                m['total_bytes'],
                m['methods'][method]['median_s'],
                marker='x',
                markersize=9,
                linestyle='none',
                color=color,
                label=None if by_size else method,
            )
    for m in many_files:
        ax.annotate(
            f'{m["shape"]} ({m["file_count"]} files)',
            (m['total_bytes'], m['methods'][CP]['median_s']),
            textcoords='offset points',
            xytext=(8, -12),
            fontsize=8,
        )
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('SavedModel size (bytes)')
    ax.set_ylabel('median wall time (s)')
    ax.set_title(
        f'Export time until on disk vs model size (median of {repeats})\n'
        f'{machine["cpu"]}, {machine["cores"]} cores, destination fs {machine["destination_fs"]}',
        fontsize=10,
    )
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line ---------------------------------------------------------------


def parse_sizes(text: str) -> list[Shape]:
    if text.strip().lower() in ('', 'none'):
        return []
    if text.strip() == 'all':
        return list(SHAPES.values())
    shapes = []
    for name in (n.strip() for n in text.split(',') if n.strip()):
        name = ALIASES.get(name, name)
        if name not in SHAPES:
            raise argparse.ArgumentTypeError(
                f'unknown size {name!r}; choose from {", ".join(SHAPES)} or "all"'
            )
        shapes.append(SHAPES[name])
    return shapes


def add_model_arguments(
    parser: argparse.ArgumentParser, default_sizes: str, workers_help: str
) -> None:
    """The options both benchmarks share: which models, how often, where."""
    parser.add_argument(
        '--sizes',
        type=parse_sizes,
        default=parse_sizes(default_sizes),
        help=f'comma-separated models from {", ".join(SHAPES)}, or "all" (default: {default_sizes})',
    )
    parser.add_argument('--repeats', type=int, default=3, help='runs per method (default: 3)')
    parser.add_argument(
        '--out', type=Path, default=DEFAULT_OUT, help='results folder (default: benchmarks/out)'
    )
    parser.add_argument(
        '--work-dir', type=Path, help='generated-model cache (default: <out>/models)'
    )
    parser.add_argument('--workers', type=int, help=workers_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(
        parser, DEFAULT_SIZES, "copy threads for FinalExporter (default: the exporter's)"
    )
    parser.add_argument(
        '--component',
        type=parse_sizes,
        nargs='?',
        const=parse_sizes('tiny'),
        default=parse_sizes('tiny'),
        metavar='SIZES',
        help='also time LocalDagRunner pipelines (Importer -> FinalExporter vs Importer -> '
        'Pusher) on these models (default: tiny)',
    )
    parser.add_argument(
        '--no-component', dest='component', action='store_const', const=[], help='skip them'
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark (or, with `_worker`, one child-process task)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER_COMMAND]:
        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit('--repeats must be at least 1')
    out: Path = args.out.resolve()
    work_dir: Path = (args.work_dir or out / 'models').resolve()
    scratch = out / 'scratch'
    remove(scratch)
    scratch.mkdir(parents=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(scratch).st_dev != os.stat(work_dir).st_dev:
        print(f'warning: {scratch} and {work_dir} are on different filesystems', file=sys.stderr)
    machine = machine_info(scratch)
    print(
        f'{machine["cpu"]}, {machine["cores"]} cores, {machine["memory_gib"]} GiB, '
        f'destination fs {machine["destination_fs"]}; repeats {args.repeats}',
        flush=True,
    )
    blessing = ensure_blessing(work_dir)
    overhead = wrapper_overhead()

    models = []
    for shape in args.sizes:
        model = ensure_model(shape, work_dir)
        print(
            f'{shape.name}: {model.total_bytes} bytes, {model.file_count} files, '
            f'{model.variable_shards} variable shards',
            flush=True,
        )
        models.append(bench_model(model, blessing, scratch, args.repeats, args.workers))
    components = []
    for shape in args.component:
        model = ensure_model(shape, work_dir)
        components.append(bench_component(model, blessing, scratch, args.repeats))
    remove(scratch)

    out.mkdir(parents=True, exist_ok=True)
    results = {
        'machine': machine,
        'settings': {
            'repeats': args.repeats,
            'workers': args.workers,
            'peak_rss_source': 'GNU time %M' if TIME else None,
            'wrapper_overhead_s': overhead,
            'work_dir': str(work_dir),
            'order_per_repeat': [
                f'{CP} / {CP_NO_SYNC}',
                CLI,
                CORE,
                f'{PUSHER_DO} / {PUSHER_PROCESS}',
            ],
            'timed_until': 'syncfs of the destination filesystem after each method',
        },
        'notes': [
            'Page cache not dropped (not permitted); each source is read once before timing.',
            'Every time includes syncfs of the destination filesystem right after the method '
            f'(bytes on disk), but {CP_NO_SYNC}, the same cp run without it.',
            'Destination on the same filesystem; removed and sync()ed after each run, untimed.',
            'max_rss_mib: ru_maxrss of the command as GNU time %M reports it (not os.wait4 '
            'from this process, which would include its own RSS); none in-process.',
            'Process wall times include spawning GNU time (see wrapper_overhead_s).',
            f'{PUSHER_DO}: Executor().Do() timed inside its process; {PUSHER_PROCESS}: '
            'the whole process (Python, TensorFlow and TFX imports included).',
            'The Pusher writes the model twice: to the destination and to the PushedModel uri.',
        ],
        'models': models,
        'component': components,
    }
    (out / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    if models:
        plot(models, machine, args.repeats, out / 'export_time.png')
    print()
    print(format_table(models, components))
    print(f'\nwrote {out / "results.json"}' + (f' and {out / "export_time.png"}' if models else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
