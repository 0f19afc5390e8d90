"""Checkpoints that survive preemption: written to a temporary file and renamed into place, so a
kill at any moment leaves the previous complete file, never a truncated one."""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.atomic import WriteError, atomic_path
from ..base.cli import UserError

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
FINAL = "final_weights.pt"
FINAL_EMA = "final_ema_weights.pt"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _why(e: BaseException, folder: Path) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    # torch's zip writer reports a failed write() as a RuntimeError without the OS's reason
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = "the folder is unreadable"
    return f"the write failed: disk full or file size limit? ({free})"


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed, then renamed over it.

    A failed write (disk full, read-only or vanished folder) raises WriteError naming ``path``;
    the file previously at ``path`` is untouched and the temporary file removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        kept = " (the previous one is intact)" if path.exists() else ""
        raise WriteError(f"cannot write {path}: {_why(e, path.parent)}{kept}") from None
    return path


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                 errno.EFBIG}


def write_error(e: OSError) -> WriteError | None:
    """The one line for a failed write of run outputs (None: not a write problem)."""
    if e.errno not in _WRITE_ERRNOS:
        return None
    return WriteError(f"cannot write {e.filename or 'the run folder'}: {e.strerror}")


@dataclass
class Progress:
    """Where a run stands: completed epochs, the best top-1 so far, the per-epoch history, and
    ``step``: None at an epoch's end, else how far into epoch ``epoch`` a step checkpoint was
    taken (``position``: the data order's resume point, ``step``: the global step, ``loss`` and
    ``images``: the epoch's loss and image sums so far, over all ranks)."""

    epoch: int = 0
    best_top1: float = -1.0
    history: list = field(default_factory=list)
    step: dict | None = None


def training_state(recipe, progress: Progress, *, params: dict, run_id: str) -> dict:
    """Everything a resumed run needs: the weights, the optimizer, the scaler, the EMA and the
    optimizer step count (EMA every-k) of ``recipe``, and ``progress``."""
    state = {"model": recipe.model.state_dict(), "optimizer": recipe.optimizer.state_dict(),
             "scaler": recipe.scaler.state_dict(), "optimizer_steps": recipe.steps,
             "epoch": progress.epoch, "best_top1": progress.best_top1,
             "history": list(progress.history), "step": progress.step, "params": params,
             "run_id": run_id}
    if recipe.ema is not None:
        state["ema"] = recipe.ema.module.state_dict()
    return state


def restore_training(checkpoint: dict, recipe) -> tuple[Progress, list[str]]:
    """Load a checkpoint's optimizer, scaler, EMA and step count into ``recipe`` (whose model
    already holds its weights, see :func:`load_weights`); ``(progress, warnings)``."""
    recipe.optimizer.load_state_dict(checkpoint["optimizer"])
    recipe.scaler.load_state_dict(checkpoint["scaler"])
    recipe.steps = checkpoint.get("optimizer_steps", 0)
    warnings = []
    if recipe.ema is not None and isinstance(checkpoint.get("ema"), dict):
        recipe.ema.module.load_state_dict(strip_wrappers(checkpoint["ema"]))
    elif recipe.ema is not None:
        recipe.ema.module.load_state_dict(recipe.model.state_dict())
        warnings.append("the checkpoint has no EMA weights; the EMA restarts from the resumed "
                        "weights")
    progress = Progress(checkpoint["epoch"], checkpoint["best_top1"],
                        list(checkpoint.get("history", [])), checkpoint.get("step"))
    return progress, warnings


def changed_settings(checkpoint: dict, params: dict) -> list[str]:
    """Keys of the schedule (lr, training, resolution) that differ from the checkpointed run's."""
    old = checkpoint.get("params", {})
    return [k for k, v in params.items()
            if k.split(".")[0] in ("lr", "training", "resolution")
            and k != "training.resume" and k in old and old[k] != v]


def save_epoch(state: dict, run_dir: Path, *, is_best: bool, backup: str | None) -> None:
    """The end-of-epoch checkpoint as LAST, also as BEST and as a periodic ``backup`` name."""
    atomic_save(state, run_dir / LAST)
    if is_best:
        atomic_save(state, run_dir / BEST)
    if backup:
        atomic_save(state, run_dir / backup)


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def strip_wrappers(state_dict: dict) -> dict:
    """Drop DDP's ``module.`` and torch.compile's ``_orig_mod.`` key prefixes."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix):], True
        out[k] = v
    return out


def weights_from_file(path: str | Path, ema: bool = False) -> tuple[dict, dict]:
    """``(state_dict, checkpoint or {})`` from either a training checkpoint or a plain state_dict.
    ``ema``: a checkpoint's EMA weights when it carries them (see :func:`which_weights`)."""
    obj = load(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        if ema and isinstance(obj.get("ema"), dict):
            return strip_wrappers(obj["ema"]), obj
        return strip_wrappers(obj["model"]), obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return strip_wrappers(obj), {}
    raise ValueError(f"{path} holds neither a state_dict nor a training checkpoint")


def load_weights(model, path, what: str, ema: bool = False) -> tuple[dict, str]:
    """Load ``path`` (a state_dict or a checkpoint) into ``model``; ``(checkpoint or {}, which
    weights were loaded in words)``. A file that does not fit is one UserError naming ``what``."""
    try:
        state, checkpoint = weights_from_file(path, ema=ema)
        model.load_state_dict(state)
    except Exception as e:  # a foreign file: pickle errors, wrong keys or shapes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot load {path} into this model: {first}") from None
    return checkpoint, which_weights(checkpoint, ema)


def find_last(run_dir: str | Path) -> Path | None:
    path = Path(run_dir) / LAST
    return path if path.is_file() else None


def which_weights(checkpoint: dict, ema: bool) -> str:
    """Words for what weights_from_file returned: users must know whether EMA weights were used."""
    if not checkpoint:
        return "a plain state_dict"
    has = isinstance(checkpoint.get("ema"), dict)
    if ema and has:
        return "the checkpoint's EMA weights"
    return "the checkpoint's raw weights" + (" (it also holds EMA weights)" if has else
                                            " (it holds no EMA weights)")


def periodic_checkpoint_name(epoch_done: int, every: int) -> str | None:
    """``checkpoint_epoch_N.pt`` after every ``every``-th completed epoch (kept beside last/best)."""
    if every > 0 and epoch_done % every == 0:
        return f"checkpoint_epoch_{epoch_done}.pt"
    return None
