"""Checkpoints that survive preemption: written to a temporary file and renamed into place, so a
kill at any moment leaves the previous complete file, never a truncated one."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

from .atomic import atomic_path
from .cli import UserError

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
FINAL = "final_weights.pt"
FINAL_EMA = "final_ema_weights.pt"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WriteError(UserError):
    """A checkpoint could not be written (disk full, read-only folder); the old one is kept."""


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


def training_state(*, model, optimizer, scaler, epoch: int, best_top1: float, params: dict,
                   run_id: str, history: list | None = None) -> dict:
    """Everything a resumed run needs. ``epoch`` is the number of completed epochs."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "best_top1": best_top1,
            "params": params, "run_id": run_id, "history": history or []}


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
