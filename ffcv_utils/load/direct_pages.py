"""Page reads for the page-aware order (``data.in_memory 0``) that bypass the page cache.

ffcv's process cache reads each 8 MiB page with a buffered ``pread``: the kernel first puts the
page in its cache (under a memory limit, evicting other pages to make room, which costs CPU),
then copies it into ffcv's buffer, on the same cores the decoder needs. A beton read this way is
bigger than memory by definition, so the cache gains nothing: here the pages are read with
``O_DIRECT`` straight into ffcv's buffer (aligned for it). A file system that refuses
``O_DIRECT`` (tmpfs) is read as before.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from ffcv.memory_managers.process_cache.context import ProcessCacheContext
from ffcv.memory_managers.process_cache.manager import ProcessCacheManager
from ffcv.memory_managers.process_cache.schedule import ScheduleExecutor, compute_schedule

ALIGN = 4096  # O_DIRECT wants buffer, offset and length aligned to the logical block size


def aligned_slots(num_slots: int, page_size: int) -> np.ndarray:
    """Zeroed ``(num_slots, page_size)`` bytes whose rows start on ``ALIGN`` boundaries."""
    raw = np.zeros(num_slots * page_size + ALIGN, np.uint8)
    start = (-raw.ctypes.data) % ALIGN
    return raw[start:start + num_slots * page_size].reshape(num_slots, page_size)


def _open_direct(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except (OSError, AttributeError):  # EINVAL on tmpfs; no O_DIRECT outside Linux
        return None


def _read_into(fd: int, row: np.ndarray, offset: int) -> None:
    """Fill ``row`` from ``offset`` (short only at the end of the file)."""
    view, done = memoryview(row), 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            return
        done += n


class DirectPageReader(threading.Thread):
    """Takes ``(page, slot)`` queries until ``None``; reads the page into its slot and reports
    it. Without O_DIRECT, or when a direct read fails (an unaligned tail, a file system that
    changed its mind), the page is read buffered."""

    def __init__(self, path: str, queries, loaded, memory: np.ndarray):
        super().__init__(daemon=True)
        self.path, self.queries, self.loaded, self.memory = path, queries, loaded, memory

    def run(self):
        direct, buffered = _open_direct(self.path), os.open(self.path, os.O_RDONLY)
        try:
            while (query := self.queries.get()) is not None:
                page, slot = query
                row = self.memory[slot]
                offset = int(page) * row.size
                try:
                    _read_into(buffered if direct is None else direct, row, offset)
                except OSError:
                    _read_into(buffered, row, offset)
                self.loaded.put(page)
        finally:
            for fd in (direct, buffered):
                if fd is not None:
                    os.close(fd)


class DirectExecutor(ScheduleExecutor):
    def __enter__(self):
        if self.entered:
            raise RuntimeError("a ScheduleExecutor is entered once")
        self.entered = True
        self.threads = [DirectPageReader(self.fname, self.queries, self.loaded_queue,
                                         self.memory) for _ in range(self.num_workers)]
        for t in self.threads:
            t.start()


class DirectContext(ProcessCacheContext):
    """ffcv's process-cache epoch (the same schedule and state) with aligned slots and
    ``DirectPageReader`` threads."""

    def __enter__(self):
        pages_at_batch = [set().union(*(self.manager.sample_to_pages[s] for s in batch))
                          for batch in self.batches]
        self.schedule = compute_schedule(pages_at_batch)
        self.memory = aligned_slots(self.schedule.num_slots, self.page_size)
        self.executor = DirectExecutor(self.fname, self.schedule, self.memory)
        max_page = max(self.schedule.page_to_slot, default=-1)
        self.page_to_slot = np.zeros(max_page + 1, dtype=np.uint32)
        for page, slot in self.schedule.page_to_slot.items():
            self.page_to_slot[page] = slot
        self.executor.__enter__()


class DirectProcessCacheManager(ProcessCacheManager):
    def schedule_epoch(self, batches):
        return DirectContext(self, batches)


def read_pages_directly(loader) -> None:
    """Make an ffcv ``Loader`` built with ``os_cache=False`` read its pages with ``O_DIRECT``.
    The manager's class is swapped rather than rebuilt: its per-sample page table (seconds to
    build at ImageNet's size) and the reader ffcv compiled from it stay as they are."""
    if type(loader.memory_manager) is ProcessCacheManager:
        loader.memory_manager.__class__ = DirectProcessCacheManager
