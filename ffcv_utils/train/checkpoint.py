"""Checkpoints that survive preemption: written to a temporary file and renamed into place, so a
kill at any moment leaves the previous complete file, never a truncated one.

Checkpoints are untrusted input: they are read with ``torch.load(weights_only=True)``, which
refuses any pickled object but tensors, numbers, strings, lists and dicts, so a crafted file
cannot run code. They hold only such plain data. Checkpoints of earlier versions also held the
learning rates as numpy float64 scalars: exactly those numpy globals are allowed (``OLD_NUMPY``).
A ``.safetensors`` file (export.py's weights) never goes through pickle. A trusted file with
other objects is converted once, explicitly: ``main`` (ffcv-convert-checkpoint)."""
from __future__ import annotations

import errno
import io
import pickle
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.atomic import WriteError, atomic_path
from ..base.cli import ArgParser, UserError

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
FINAL = "final_weights.pt"
FINAL_EMA = "final_ema_weights.pt"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CONVERT = "ffcv-convert-checkpoint"  # the explicit opt-in for a trusted file (``main``)


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


class CheckpointError(UserError):
    """A weights file that is unreadable, or that would need more than plain data to load."""


# What checkpoints of earlier versions pickled for their numpy float64 learning rates: numpy's
# scalar constructor (under its numpy 2 and numpy 1 names), numpy.dtype and the float64 dtype
# class (a dtype is only built for an allowlisted class), nothing else. numpy refuses an object
# scalar; other scalars are data, turned into Python values by _plain.
OLD_NUMPY = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
             "numpy.dtypes.Float64DType")


def _old_numpy_globals() -> list:
    """``OLD_NUMPY`` as torch.serialization.safe_globals takes them."""
    import numpy as np
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import scalar
    return [(scalar, OLD_NUMPY[0]), (scalar, OLD_NUMPY[1]), (np.dtype, OLD_NUMPY[2]),
            (np.dtypes.Float64DType, OLD_NUMPY[3])]


def _plain(obj):
    """``obj`` with numpy scalars turned into Python numbers, in place (a state_dict keeps its
    type and ``_metadata``): what an old checkpoint loads as is saved plain again."""
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _plain(v)
    elif isinstance(obj, list):
        obj[:] = [_plain(v) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(map(_plain, obj))
    return obj


def _first_line(e: BaseException) -> str:
    """The first sentence of an error: torch's zip reader appends a paragraph of advice."""
    text = str(e).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(e).__name__


def _wanted_globals(path: Path | None, e: BaseException) -> str:
    """The globals (functions, classes) a refused pickle at ``path`` names: what loading it
    would call (without ``path``, or for a legacy file, the one torch's message names)."""
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                 if n not in OLD_NUMPY]
    except Exception:  # no path, or not a zip checkpoint
        names = re.findall(r"GLOBAL (\S+)", str(e))[:1]
    return ", ".join(names)


def _unpickler_reason(e: BaseException) -> str:
    """torch's reason for a refused pickle, without its advice to load with full pickle."""
    text = str(e).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unreadable"


def _refusal(path: Path, e: BaseException) -> str:
    names = _wanted_globals(path, e)
    why = (f"loading it would run code named in the file ({names}), not just read weights"
           if names else f"it is not plain data ({_unpickler_reason(e)})")
    return (f"{path}: refused: {why}; if you trust the file, convert it once: "
            f"{CONVERT} {path} SAFE.pt --i-trust-this-file")


def load(path: str | Path):
    """A checkpoint's contents, read without running anything it pickled: tensors, numbers,
    strings, lists, dicts (and an old checkpoint's numpy float64s, returned as floats). A
    ``.safetensors`` file never goes through pickle. Anything else is one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        with torch.serialization.safe_globals(_old_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") \
                from None
        raise CheckpointError(_refusal(path, e)) from None
    except Exception as e:  # not a checkpoint at all: a zip error, a truncated file
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)})") from None
    return _plain(obj)


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError for a bad header, OSError for an unreadable file
        raise CheckpointError(f"{path}: not a readable safetensors file "
                              f"({_first_line(e)})") from None


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
    raise CheckpointError(f"{path} holds neither a state_dict nor a training checkpoint")


def load_weights(model, path, what: str, ema: bool = False) -> tuple[dict, str]:
    """Load ``path`` (a state_dict, a checkpoint or a .safetensors file) into ``model``;
    ``(checkpoint or {}, which weights were loaded in words)``. A file that cannot be read
    safely or does not fit is one UserError naming ``what``."""
    try:
        state, checkpoint = weights_from_file(path, ema=ema)
    except CheckpointError as e:
        raise UserError(f"{what}: {e}") from None
    try:
        model.load_state_dict(state)
    except Exception as e:  # a foreign model: wrong keys or shapes
        raise UserError(f"{what}: cannot load {path} into this model: {_first_line(e)}") from None
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


def convert(src: Path, dst: Path) -> None:
    """Load ``src`` with full pickle (runs any code it holds: only for trusted files) and write
    its plain contents to ``dst`` atomically; refused when they are not plain data."""
    try:
        obj = _plain(torch.load(src, map_location="cpu", weights_only=False))
    except Exception as e:
        raise UserError(f"{src}: cannot load: {_first_line(e)}") from None
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    try:  # what every tool here will read back, without the old-format allowance
        torch.load(buf, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = _wanted_globals(None, e) or _unpickler_reason(e)
        raise UserError(f"{src}: cannot convert: it holds objects beyond tensors, numbers, "
                        f"strings, lists and dicts ({why})") from None
    atomic_save(obj, dst)


def main(argv=None) -> int:
    """ffcv-convert-checkpoint IN OUT --i-trust-this-file: the one, explicit way to load a
    checkpoint with full pickle."""
    ap = ArgParser(prog=CONVERT, description="Rewrite a checkpoint you trust, which the tools "
                   "here refuse because its pickle names functions or classes, as plain data "
                   "(tensors, numbers, strings, lists, dicts) that loads without running code. "
                   "Loading IN runs any code it holds.")
    ap.add_argument("src", metavar="IN")
    ap.add_argument("dst", metavar="OUT")
    ap.add_argument("--i-trust-this-file", action="store_true",
                    help="required: loading IN runs any code it holds")
    a = ap.parse_args(argv)
    if not a.i_trust_this_file:
        raise UserError(f"refusing to load {a.src} with full pickle, which runs any code it "
                        "holds; add --i-trust-this-file only if you made the file or trust its "
                        "source")
    if not Path(a.src).is_file():
        raise UserError(f"{a.src}: no such file")
    print(f"warning: loading {a.src} with full pickle: any code in it runs now", file=sys.stderr)
    convert(Path(a.src), Path(a.dst))
    print(f"wrote {a.dst}: plain data, loads without running code")
    return 0


if __name__ == "__main__":
    from ..base.cli import run_main
    run_main(main, prog=CONVERT)
def periodic_checkpoint_name(epoch_done: int, every: int) -> str | None:
    """``checkpoint_epoch_N.pt`` after every ``every``-th completed epoch (kept beside last/best)."""
    if every > 0 and epoch_done % every == 0:
        return f"checkpoint_epoch_{epoch_done}.pt"
    return None
