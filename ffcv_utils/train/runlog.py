"""Run logs: one JSON object per line (appendable, greppable, loads with pandas.read_json(lines=True))
and metric sums that are reduced across processes, so every process's images count once."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..base.atomic import atomic_write_text
from ..base.distributed import DistEnv, all_reduce_sum


class JsonlLogger:
    """Appends one JSON line per record; only the main process writes."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_epochs_before(self, epoch: int) -> None:
        """On resume: drop lines for epochs that will be run again, so each epoch appears once."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_jsonl(self.path)
                if r.get("eval_only") or r.get("epoch", -1) < epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class SumMeter:
    """Named running sums kept on the device (no host sync per step), summed across ranks once."""

    def __init__(self, names: tuple[str, ...], device: torch.device):
        self.names = names
        # float64: exact image counts, no drift when summing many per-batch losses
        dtype = torch.float64 if device.type != "mps" else torch.float32
        self.sums = torch.zeros(len(names), dtype=dtype, device=device)

    def add(self, **values) -> None:
        for name, v in values.items():
            i = self.names.index(name)
            self.sums[i] += v.detach().to(self.sums.dtype) if torch.is_tensor(v) else v

    def reduce(self, env: DistEnv) -> dict:
        total = all_reduce_sum(self.sums.clone(), env)
        return dict(zip(self.names, total.tolist()))
