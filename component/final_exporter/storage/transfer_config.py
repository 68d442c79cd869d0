"""The local copy engine's settings in one object (as s3transfer's `TransferConfig`).

The copy method and thread count are the export's choice; the sizes are
tuning measured on the benchmarks (`make benchmark`). A copy engine
(`transfer.py`, `beam_copy.py`) takes one `TransferConfig`; the stores and the
core hand it on without looking inside.
"""

from __future__ import annotations

import dataclasses
import os

from final_exporter.storage.manifest import CHUNK_BYTES as MANIFEST_CHUNK_BYTES
from final_exporter.storage.types import COPY_AUTO, check_method

_MIB = 1024 * 1024


def local_copy_workers(beside_checks: bool = False) -> int:
    """Threads for a local copy: hashing keeps a core busy and the disk writes in the
    background (`start_writeback`) or, with `O_DIRECT`, while the thread waits, so two
    per core cover page faults and waits; more only contend (measured: 4 threads on 2
    cores beat 2 and 8). `beside_checks`: beside the exporter's own thread importing and
    loading TensorFlow, with writes through the page cache, one per core (at least 2):
    those threads barely wait, and more only take from that thread, which the export
    waits for (measured, 4 GiB with the smoke test on 2 cores: 2 threads 1.03-1.04x a
    bare TensorFlow import and load, 4 threads 1.05-1.13x). With `O_DIRECT` the copy
    waits on the disk, so beside the checks it keeps two per core too
    (`TransferConfig.threads`; 4 GiB with the smoke test on the Intel Xeon machine of
    `TransferConfig.direct_io`, the last 3 of 4 alternating rounds: 2 threads
    5.71-5.99 s, 3 threads 5.59-5.81 s, 4 threads 5.49-5.57 s, TensorFlow's import and
    load alone 5.14-5.37 s)."""
    cores = os.cpu_count() or 1
    return max(2, cores) if beside_checks else min(16, 2 * cores)


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """How local files are copied and hashed.

    Attributes:
        method: `auto` (reflink where the filesystem can, else copy), `copy`, or
            `hardlink` (link the source files; for immutable sources such as TFX
            artifacts; falls back to a copy across filesystems).
        workers: Copy threads; `local_copy_workers()` when None. A bucket store
            sizes its transfer pool with it too (its own default when None).
        buffer_bytes: One read or write of a file copied through a buffer (files
            under `kernel_copy_min_bytes`, or where the kernel cannot copy).
        kernel_copy_min_bytes: Files from this size are copied in the kernel and
            hashed through a mapping of the copy, chunk by chunk; smaller ones
            take one read and one write.
        kernel_copy_head_bytes: A kernel copy of a range copies its first this many
            bytes in a call of their own (0: one call for the whole range). On a
            virtual machine whose free memory goes back to the host (here: Linux 6.18,
            Firecracker, free page reporting), the kernel spent twice the system time
            on 32 MiB ranges each copied from its aligned start (4 GiB in one file,
            alternating: 7.9-8.4 s against 4.1-4.4 s with a 4 KiB first call, 2 runs
            each; a 64 KiB first call 9.4 s), where the exporter's whole copy took
            8.4-10.6 s against 6.4-7.5 s (3 runs each, `cp -r && sync -f` 5.6-8.7 s).
        parallel_min_bytes: A thread per this many bytes at most: starting one
            costs about as much as copying and hashing 100 KiB, so a small model
            is copied inline.
        batch_bytes: Files under `kernel_copy_min_bytes` are copied a folder
            at a time, one task per this many bytes of them (`transfer._batches`).
        tiny_file_bytes: Files under this size are copied a folder at a time, one
            task per folder: their copy is Python's per-file work, which threads
            would only contend for (`transfer._batches`).
        tiny_files_per_helper: A folder's tiny files are shared with a helper
            process per this many of them, up to one less than the cores
            (`tiny_files.py`: processes, unlike threads, do not wait for each
            other's GIL); 0 for none. Never beside the checks, whose load of the
            model is what the export waits for.
        map_window_bytes: The staged copy is hashed through read-only mappings of
            this size: what a thread holds mapped (and counts in its RSS) stays
            bounded whatever the file size. One manifest chunk: smaller windows,
            mapped and unmapped in the process that imports and loads TensorFlow
            beside the copy, slowed that down (4 GiB with the smoke test, 3
            alternating runs: 8 MiB windows 9.86 s, 32 MiB 9.09 s, 64 MiB 9.05 s;
            TF import + load alone 7.32 s); 32 MiB a thread add 48 MiB to the peak RSS.
        writeback_min_bytes: Smaller files are left for the fsync before
            publishing: nothing to overlap with.
        writeback_batch_bytes: Writeback is started per this many bytes written
            (one call per read would be 1 per MiB).
        split_min_bytes: The Beam copy copies files of this size or more in
            manifest chunks, one element each (never with `hardlink`, which
            copies nothing); the threaded copy always works in manifest chunks.
        flush_min_files: A copy of this many files or more flushes its
            destination's filesystem every `flush_every_s` while it runs
            (`fs.flushing_while`), so the disk writes (and a virtual disk's host
            flushes its cache) during the copy, not after; 0 never. By files, not
            bytes: what a flush finds complete stays written, while a large file
            still being written only slows down (measured on a virtual disk, median
            of 7 alternating runs: 1 GiB in 64 files 1.61 s without, 1.43 s with,
            `cp -r && sync -f` 1.40 s; 4 GiB in 1 file 5.98 s without, 6.56 s with,
            `cp -r && sync -f` 5.96 s).
            Not beside the checks, whose load reads the disk.
        flush_every_s: See `flush_min_files`.
        background_nice: How much lower (a nice value) the copy threads' CPU
            priority is while the exporter's own thread imports and loads
            TensorFlow beside the copy: that thread is what the export waits for,
            but a copy starved of the CPU ends, and is flushed, after the load
            (4 GiB with the smoke test, 4 alternating runs: nice 0 9.40 s, 4 8.53 s,
            10 8.92 s; TF import + load alone 7.46 s).
        direct_io: Files from `kernel_copy_min_bytes` are read, hashed and
            written with `O_DIRECT` where the destination's filesystem takes it:
            the staged copy never enters the page cache, and each byte is hashed
            from the buffer it is written from. Else the kernel copies them
            (`copy_file_range`) and the staged copy is hashed through mappings.
            Which is faster depends on the machine. On the Intel Xeon virtual
            machine of 2026-12-06 (Firecracker, free page reporting: every page
            the page cache takes anew costs the host's fault), `O_DIRECT` won
            everywhere (alternating; load average 1.9-3.3 after the rounds).
            4 GiB in one file, 6 rounds: 2.37-2.63 s against 3.12-3.29 s
            (`cp -r && sync -f` 2.35-2.61 s), 3.1-3.9 CPU-s against 5.7-6.0.
            1 GiB in 64 files, 4 rounds: 0.64-0.93 s against 0.75-6.03 s (`cp`
            0.66-7.41 s; the last round fell in a slow spell of the machine).
            4 GiB with the smoke test, the last 2 of 3 rounds: 5.90-5.94 s
            against 6.33-6.44 s (TensorFlow's import and load alone 5.40-5.41 s).
            On the AMD EPYC virtual machine before it, `O_DIRECT` was the slower
            (1 GiB, the copy alone: 2.65 s against 1.70 s, `cp` 1.57 s).
        drop_staged_pages: Each chunk of a large file, once copied and hashed, is
            written to disk and dropped from the page cache (`filecopy.drop_written`):
            the staged copy does not take the memory the checks' load of the model
            needs. None (the default): only beside the checks; a copy alone leaves
            the writing to the kernel, as `cp` does.
    """

    method: str = COPY_AUTO
    workers: int | None = None
    buffer_bytes: int = 8 * _MIB
    kernel_copy_min_bytes: int = 4 * _MIB
    kernel_copy_head_bytes: int = 4096
    parallel_min_bytes: int = 8 * _MIB
    batch_bytes: int = 32 * _MIB
    tiny_file_bytes: int = 64 * 1024
    tiny_files_per_helper: int = 4000
    map_window_bytes: int = MANIFEST_CHUNK_BYTES
    writeback_min_bytes: int = 1 * _MIB
    writeback_batch_bytes: int = 8 * _MIB
    split_min_bytes: int = MANIFEST_CHUNK_BYTES + 1
    flush_min_files: int = 32
    flush_every_s: float = 0.15
    background_nice: int = 4
    direct_io: bool = True
    drop_staged_pages: bool | None = None

    def __post_init__(self) -> None:
        check_method(self.method)

    def threads(self, beside_checks: bool = False) -> int:
        """The copy threads to use at most (`local_copy_workers` says why these)."""
        return self.workers or local_copy_workers(beside_checks and not self.direct_io)

    def resolved(self, beside_checks: bool) -> TransferConfig:
        """This config with `drop_staged_pages` decided (as set, or when None only beside
        the checks), and beside the checks no helper processes and no flushing while
        copying."""
        drop = beside_checks if self.drop_staged_pages is None else self.drop_staged_pages
        if beside_checks:
            return dataclasses.replace(
                self, drop_staged_pages=drop, tiny_files_per_helper=0, flush_min_files=0
            )
        return dataclasses.replace(self, drop_staged_pages=drop)


DEFAULT_TRANSFER = TransferConfig()
