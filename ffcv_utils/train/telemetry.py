"""Per-epoch resource telemetry for log.jsonl: time spent waiting for the loader, peak GPU memory.

An epoch is *loader-bound* when the training step spent more than ``LOADER_BOUND_FRACTION`` of
the epoch's wall time blocked in ``next(loader)``: the model could have gone faster with faster data."""
from __future__ import annotations

import time

import torch

LOADER_BOUND_FRACTION = 0.10


class DataWait:
    """Wraps a loader iterator and adds up the seconds each ``next()`` blocked."""

    def __init__(self):
        self.seconds = 0.0

    def timed(self, iterator):
        while True:
            t = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                self.seconds += time.perf_counter() - t
                return
            self.seconds += time.perf_counter() - t
            yield batch


def start_epoch(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def epoch_stats(device: torch.device, wait_s: float, train_s: float) -> dict:
    """``peak_gpu_mem_gb`` is None on CPU/MPS (no allocator statistics there)."""
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)
    frac = wait_s / train_s if train_s > 0 else 0.0
    return {"peak_gpu_mem_gb": peak, "data_wait_s": wait_s, "data_wait_fraction": frac,
            "loader_bound": frac > LOADER_BOUND_FRACTION}
