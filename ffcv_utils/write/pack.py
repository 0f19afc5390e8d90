"""Packing samples into a ``.beton``: ffcv's ``DatasetWriter`` processes, driven so that a failed or
killed process stops the write with an error instead of hanging it, and no process outlives the
writer. The packer never knows the data layout: it takes an iterator of items (whatever the
caller's ``convert`` turns into field values in a writer process) and their count.

Memory: the items are fed to the writer processes through a queue of at most ``2 x num_workers``
chunks of ``chunk_size`` items, and each process holds one chunk, so at most
``3 x num_workers x chunk_size`` items are in flight: for a streamed source (bytes from an
archive) that many encoded images, whatever the size of the data set.

The beton is written to a hidden temporary file beside the target, ``.NAME.PID.tmp``, which the
caller renames into place when complete (``atomic.publish``); a temporary left by a writer that
was killed is removed by the next write to that path.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import queue
import time
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable

from ..base.processes import child_setup
from ..base.atomic import WriteError

PAGE_MIN = 1 << 23  # ffcv's default page size (8 MiB)


def page_size_for(raw_sizes: list[int]) -> int:
    """A page must hold the largest image (JPEG can exceed raw, hence 2x). ffcv's 8 MiB default
    for real data sets; 2 MiB pages for small ones, whose file would otherwise be mostly the
    zero padding of each writer process's last page."""
    floor = PAGE_MIN if sum(raw_sizes) > 32 * PAGE_MIN else PAGE_MIN // 4
    return max(floor, 1 << max(0, int(2 * max(raw_sizes) - 1).bit_length()))


class _Jobs:
    """What ffcv's worker loop indexes: each "index" is a ``(destination, item)`` job, turned
    into field values by ``convert``; a failure is reported to the parent before it is raised."""

    def __init__(self, convert: Callable, errors):
        self.convert = convert
        self.errors = errors

    def __getitem__(self, job):
        try:
            return self.convert(*job)
        except Exception as e:
            self.errors.put(str(e) or type(e).__name__)
            raise


def _report_encode_errors(field, errors) -> None:
    """Make ``field.encode`` report real failures before ffcv's allocator can block on them."""
    encode = field.encode

    def reporting_encode(destination, value, malloc):
        try:
            return encode(destination, value, malloc)
        except MemoryError:  # ffcv's own signal to retry the sample on a fresh page
            raise
        except Exception as e:
            errors.put(f"{type(field).__name__}.encode failed: {type(e).__name__}: {e}")
            raise

    field.encode = reporting_encode  # instance attribute: type(field) stays the ffcv class


def _writer_process(parent_pid, errors, args):
    child_setup(parent_pid)
    from ffcv.writer import worker_job_indexed_dataset

    try:
        worker_job_indexed_dataset(*args)
    except BaseException as e:
        errors.put(f"writer process failed: {type(e).__name__}: {e}")
        errors.close()
        errors.join_thread()
        os._exit(1)


class _Watch:
    """The parent's view of the writer processes: raises WriteError as soon as one reports a
    failure or dies, and moves the progress bar."""

    def __init__(self, procs: list, errors, done, bar):
        self.procs, self.errors, self.done, self.bar = procs, errors, done, bar
        self.seen = 0

    def __call__(self) -> None:
        try:
            raise WriteError(self.errors.get_nowait())
        except queue.Empty:
            pass
        dead = [p for p in self.procs if p.exitcode not in (None, 0)]
        if dead:
            time.sleep(0.2)  # give its message a moment to arrive
            try:
                msg = self.errors.get_nowait()
            except queue.Empty:
                msg = f"a writer process died (exit code {dead[0].exitcode})"
            raise WriteError(msg)
        now = int(self.done.value)
        self.bar.update(now - self.seen)
        self.seen = now

    def put(self, work, chunk) -> None:
        """``work.put(chunk)``, watching while the queue is full."""
        while True:
            try:
                return work.put(chunk, timeout=0.1)
            except queue.Full:
                self()


def _feed(work, items: Iterable, n: int, chunk_size: int, num_workers: int,
          watch: _Watch) -> None:
    """Chunks of ``(destination, (destination, item))`` jobs, then one stop mark per process."""
    it, dest = iter(items), 0
    while chunk := list(islice(it, chunk_size)):
        if dest + len(chunk) > n:
            raise WriteError(f"the source yielded more than the {n} samples it announced")
        watch.put(work, [(dest + k, (dest + k, item)) for k, item in enumerate(chunk)])
        dest += len(chunk)
    if dest != n:
        raise WriteError(f"the source yielded {dest} samples, not the {n} it announced "
                         "(did it change during the write?)")
    for _ in range(num_workers):
        watch.put(work, None)


def _collect(procs: list, allocations, watch: _Watch, n: int) -> list:
    while watch.seen < n:
        watch()
        time.sleep(0.05)
    allocation_list = []
    for _ in procs:
        while True:
            try:
                allocation_list.extend(allocations.get(timeout=0.2))
                break
            except queue.Empty:
                watch()
    for p in procs:
        p.join()
    return allocation_list


def _stop(procs: list, queues: tuple) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    for q in queues:
        q.cancel_join_thread()  # never block interpreter exit on undelivered chunks
        q.close()


def write_beton(path: Path, fields: dict, items: Iterable, n: int, convert: Callable, *,
                num_workers: int, chunk_size: int, page_size: int, progress: bool) -> None:
    """Pack ``n`` items into the beton at ``path``: ``convert(destination, item)`` returns a
    sample's field values in a writer process (``destination`` is its index in the beton)."""
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    ctx = mp.get_context("fork")
    writer = DatasetWriter(str(path), fields, page_size=page_size, num_workers=num_workers)
    writer.num_samples = n
    work, allocations, errors = ctx.Queue(2 * num_workers), ctx.Queue(), ctx.Queue()
    procs: list = []
    writer.metadata_sm = None
    try:
        writer.prepare()  # header, field descriptors; metadata in shared memory
        for field in fields.values():
            _report_encode_errors(field, errors)
        done = ctx.Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(str(path), writer.data_region_start, page_size)
        args = (work, writer.metadata_sm, writer.metadata_type, fields, allocator, done,
                allocations, _Jobs(convert, errors))
        for _ in range(num_workers):
            p = ctx.Process(target=_writer_process, args=(os.getpid(), errors, args),
                            daemon=True)
            p.start()
            procs.append(p)
        with tqdm(total=n, desc="writing", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            watch = _Watch(procs, errors, done, bar)
            _feed(work, items, n, chunk_size, num_workers, watch)
            allocation_list = _collect(procs, allocations, watch, n)
        writer.finalize(allocation_list)
    finally:
        _stop(procs, (work, allocations, errors))
        if writer.metadata_sm is not None:
            writer.metadata_sm.close()
            writer.metadata_sm.unlink()
