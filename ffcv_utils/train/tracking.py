"""Experiment tracking sinks (TensorBoard, Weights & Biases) behind one small interface.

Off by default and only on the main process. Each library is imported only when asked for; a missing
library or a failed login prints one line and training goes on with log.jsonl and the plot."""
from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

WANDB_ID_FILE = "wandb_id.txt"
# keys of a log.jsonl record that are sent to the trackers as per-epoch scalars
EPOCH_KEYS = ("train_loss", "top_1", "top_5", "val_loss", "lr", "lr_end", "train_res",
              "train_images_per_s", "peak_gpu_mem_gb", "data_wait_s", "data_wait_fraction",
              "epoch_seconds")


def _warn(msg: str) -> None:
    print(f"warning: {msg}; training goes on without it", file=sys.stderr, flush=True)


class Trackers:
    """Fan-out to the enabled sinks: ``step(step, loss, lr)``, ``epoch(record)``, ``close()``."""

    def __init__(self, p, run_dir: str | Path, params: dict, enabled: bool = True):
        self.sinks = []
        self.every = p.logging.step_interval
        if not enabled:
            return
        run_dir = Path(run_dir)
        if p.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.sinks.append(_TensorBoard(SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
            except Exception as e:  # ImportError when tensorboard is missing
                _warn(f"logging.tensorboard: cannot start TensorBoard ({_first(e)})")
        if p.logging.wandb_project and p.logging.wandb_mode != "disabled":
            try:
                self.sinks.append(_WandB.start(p, run_dir, params))
            except Exception as e:
                _warn(f"logging.wandb_project: cannot start Weights & Biases ({_first(e)})")

    def step(self, step: int, loss, lr: float) -> None:
        """Per-step loss and LR, every ``logging.step_interval`` steps (loss.item() syncs)."""
        if not self.sinks or step % self.every:
            return
        loss = float(loss)
        for s in self.sinks:
            s.scalars({"step/loss": loss, "step/lr": float(lr)}, step)

    def epoch(self, record: dict, step: int) -> None:
        values = {f"epoch/{k}": float(record[k]) for k in EPOCH_KEYS
                  if isinstance(record.get(k), (int, float)) and not isinstance(record[k], bool)}
        values["epoch/epoch"] = float(record["epoch"])
        for s in self.sinks:
            s.scalars(values, step)

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:
                _warn(f"closing a tracker failed ({_first(e)})")
        self.sinks = []


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class _TensorBoard:
    def __init__(self, writer):
        self.w = writer

    def scalars(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.w.flush()

    def close(self) -> None:
        self.w.close()


class _WandB:
    """A resumed run continues the same W&B run: its id is kept in RUN_DIR/wandb_id.txt."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, p, run_dir: Path, params: dict):
        import wandb
        # wandb.init would otherwise ask for a key on a terminal and block rank 0 while the others wait
        if p.logging.wandb_mode == "online" and not wandb.login(verify=False, prompt=False):
            raise RuntimeError("no W&B login: run `wandb login`, set WANDB_API_KEY, "
                               "or use --logging.wandb_mode offline")
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        if not id_file.exists():
            from ..base.atomic import atomic_write_text
            atomic_write_text(id_file, run_id + "\n")
        run = wandb.init(project=p.logging.wandb_project, name=p.logging.wandb_name or None,
                         mode=p.logging.wandb_mode, id=run_id, resume="allow",
                         dir=str(run_dir), config=json.loads(json.dumps(params, default=str)))
        return cls(run)

    def scalars(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
