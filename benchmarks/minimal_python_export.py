"""The least a Python export of a local SavedModel folder does: the floor of any exporter
written in Python, measured by `small_files_floor.py` beside `cp -r && sync -f`.

    minimal_python_export.py SOURCE_DIR EXPORT_BASE [--c-helper BINARY] [--phases]

It keeps only what no export may drop: it lists the source and stats each file
(to refuse bad input before writing, and to size the copy), copies every file
into a hidden staging folder in two processes (this one and one helper running
the exporter's own `small_copy.py`, every other small file each, as
`tiny_files.copy_folder_files` deals them out) with each file's SHA-256 taken
from the bytes written, flushes the filesystem while the copy runs (as the
exporter does, `fs.flushing_while`), writes the manifest (`json` text, one
f-string per file), checks the staging folder's listing against it, flushes
what is left and renames the folder to `1/`. No request, blessing, signature,
lineage, lock or error handling: each of those only adds to the exporter's time.

With `--c-helper` (`small_files_floor.c`, built by `small_files_floor.py`), the
largest folder's small files are copied by two processes of that C program
instead (one per core), this process copying the rest meanwhile: the floor of a
Python exporter whose per-file copy is native. With `--phases`, prints on stderr
the seconds from the end of the script's imports to the end of each step.
"""

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'component/final_exporter/storage'))
import small_copy  # The helper's own module: the standard library only.

START = time.perf_counter()  # The interpreter started and the imports done.
HELPER_LIMIT = small_copy.HELPER_BUFFER_BYTES
FLUSH_EVERY_S = 0.15  # TransferConfig.flush_every_s
_syncfs = ctypes.CDLL(None, use_errno=True).syncfs


def syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _syncfs(fd)
    finally:
        os.close(fd)


def plan(root: str, rel: str = '') -> list[tuple[str, str, int]]:
    """(source, destination relative path, size) of every file, sorted by destination."""
    items = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            items += plan(entry.path, f'{rel}{entry.name}/')
        else:
            items.append((entry.path, rel + entry.name, entry.stat(follow_symlinks=False).st_size))
    return items


def listing(root: str, rel: str = '') -> list[str]:
    names = []
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            names += listing(entry.path, f'{rel}{entry.name}/')
        else:
            names.append(rel + entry.name)
    return names


def copy_large(src: str, dest: str) -> tuple[int, str]:
    with open(src, 'rb') as f:
        data = f.read()
    with open(dest, 'xb') as f:
        f.write(data)
    return len(data), hashlib.sha256(data).hexdigest()


def start(cmd: list[str], data: bytes) -> tuple[subprocess.Popen, threading.Thread]:
    """A helper process, its input fed from a thread (the pipe holds 64 KiB)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    feeder = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()))
    feeder.start()
    return proc, feeder


def answers(helper: tuple[subprocess.Popen, threading.Thread]) -> list[tuple[int, str]]:
    proc, feeder = helper
    lines = proc.stdout.read().decode().splitlines()
    if proc.wait() != 0:
        sys.exit(f'minimal_python_export: helper {proc.args} failed')
    feeder.join()
    return [(int(n), h) for n, h in map(str.split, lines)]


def main(source: str, base: str, c_helper: str | None = None) -> list[tuple[str, float]]:
    """Exports `source` under `base` as version 1; (step, seconds since START) per step."""
    marks: list[tuple[str, float]] = []

    def mark(step: str) -> None:
        marks.append((step, time.perf_counter() - START))

    items = plan(source)
    mark('plan')
    os.makedirs(base, exist_ok=True)
    staging = os.path.join(base, '.staging')
    os.mkdir(staging)
    for folder in sorted({d.rpartition('/')[0] for _, d, _ in items} - {''}):
        os.makedirs(os.path.join(staging, folder), exist_ok=True)
    prefix = staging + '/'
    small = [i for i in items if i[2] < HELPER_LIMIT]
    if c_helper:
        folders = [d.rpartition('/')[0] for _, d, _ in small]
        largest = max(set(folders), key=folders.count)
        shared = [i for i, f in zip(small, folders, strict=True) if f == largest]
        mine = [i for i, f in zip(small, folders, strict=True) if f != largest]
        shares = [shared[0::2], shared[1::2]]
        helpers = [
            start(
                [c_helper, prefix + largest, 'lines'],
                b''.join(os.fsencode(s) + b'\0' for s, _, _ in share),
            )
            for share in shares
        ]
    else:
        mine, theirs = small[0::2], small[1::2]
        shares = [theirs]
        helpers = [
            start(
                [sys.executable, '-I', '-S', small_copy.__file__],
                small_copy.helper_input((s, prefix + d) for s, d, _ in theirs),
            )
        ]
    copied = threading.Event()
    flusher = threading.Thread(
        target=lambda: [syncfs(staging) for _ in iter(lambda: copied.wait(FLUSH_EVERY_S), True)],
        daemon=True,
    )
    flusher.start()
    mark('staging folder and helpers')
    results = list(small_copy.copy_all((s, prefix + d) for s, d, _ in mine))
    results += [copy_large(s, prefix + d) for s, d, n in items if n >= HELPER_LIMIT]
    mark('own share')
    theirs = [
        (d, answer)
        for share, helper in zip(shares, helpers, strict=True)
        for (_, d, _), answer in zip(share, answers(helper), strict=True)
    ]
    copied.set()
    mark('helpers answered')
    large = [d for _, d, n in items if n >= HELPER_LIMIT]
    entries = dict(zip([d for _, d, _ in mine] + large, results, strict=True))
    entries.update(theirs)
    quote = json.encoder.encode_basestring
    files = ',\n'.join(
        f'    {{\n      "path": {quote(p)},\n      "sha256": "{h}",\n      "size": {n}\n    }}'
        for p, (n, h) in sorted(entries.items())
    )
    manifest = 'assets.extra/export_manifest.json'
    os.makedirs(prefix + 'assets.extra', exist_ok=True)
    with open(prefix + manifest, 'x') as f:
        f.write('{\n  "files": [\n' + files + '\n  ]\n}\n')
    mark('manifest written')
    if set(listing(staging)) != {*entries, manifest}:
        sys.exit('minimal_python_export: the staging folder differs from its manifest')
    mark('listing checked')
    syncfs(staging)
    os.rename(staging, os.path.join(base, '1'))
    mark('flushed and renamed')
    return marks


if __name__ == '__main__':
    args = sys.argv[1:]
    helper_binary = args[args.index('--c-helper') + 1] if '--c-helper' in args else None
    steps = main(args[0], args[1], helper_binary)
    if '--phases' in args:
        print(' '.join(f'{step}: {at:.3f}' for step, at in steps), file=sys.stderr)
