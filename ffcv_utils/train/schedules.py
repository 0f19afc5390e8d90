"""Learning-rate and resolution schedules as pure functions of the training position.

Pure (no optimizer, no loader, no config object) so that a resumed run recomputes exactly the
LRs an uninterrupted run used, and so that tests can pin values at known epochs.
Epochs are floats: ``epoch + i / iters_per_epoch`` is iteration ``i`` of ``epoch``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# ffcv-imagenet starts its triangle at 1e-4 * lr rather than 0, so the first step is not wasted.
START_FRACTION = 1e-4
# One-cycle starts (and warm-ups rise) from lr / ONECYCLE_DIV, as in Smith's recipe.
ONECYCLE_DIV = 25.0


def cyclic_lr(epoch: float, *, lr: float, epochs: int, peak_epoch: float) -> float:
    """ffcv-imagenet's triangle: linear from ~0 to ``lr`` at ``peak_epoch``, then to 0 at the end."""
    return float(np.interp(epoch, [0, peak_epoch, epochs], [START_FRACTION * lr, lr, 0.0]))


def _warmup(epoch: float, lr: float, warmup_epochs: float) -> float:
    return lr * (START_FRACTION + (1 - START_FRACTION) * epoch / warmup_epochs)


def step_lr(epoch: float, *, lr: float, epochs: int, step_ratio: float, step_length: int,
            warmup_epochs: float = 0.0) -> float:
    """``lr * step_ratio ** (epoch // step_length)``, after an optional linear warm-up."""
    if epoch >= epochs:
        return 0.0
    if epoch < warmup_epochs:
        return _warmup(epoch, lr, warmup_epochs)
    return lr * step_ratio ** math.floor(epoch / step_length)


def cosine_lr(epoch: float, *, lr: float, epochs: int, warmup_epochs: float = 0.0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_epochs``, then half a cosine down to 0."""
    if epoch >= epochs:
        return 0.0
    if epoch < warmup_epochs:
        return _warmup(epoch, lr, warmup_epochs)
    progress = (epoch - warmup_epochs) / (epochs - warmup_epochs)
    return 0.5 * lr * (1 + math.cos(math.pi * progress))


def onecycle_lr(epoch: float, *, lr: float, epochs: int, pct_start: float = 0.3) -> float:
    """One cycle: cosine rise from ``lr/25`` to ``lr`` over ``pct_start`` of training, cosine to 0."""
    if epoch >= epochs:
        return 0.0
    peak = pct_start * epochs
    low = lr / ONECYCLE_DIV
    if epoch < peak:
        return low + (lr - low) * 0.5 * (1 - math.cos(math.pi * epoch / peak))
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch - peak) / (epochs - peak)))


@dataclass(frozen=True)
class LrKey:
    """An ``lr.*`` key that schedules take: the function's keyword, its type, help and default;
    ``check(value, epochs)`` says what is wrong with a value (None: fine); ``shrink``: scaled with
    a shortened run once it reaches training.epochs, as ``(as_int, minimum)``."""

    keyword: str
    kind: type
    help: str
    default: float
    check: Callable[[float, int], str | None] | None = None
    shrink: tuple[bool, int | None] | None = None


@dataclass(frozen=True)
class Schedule:
    """An LR schedule: ``fn(epoch, *, lr, epochs, **its keys)``, the ``lr.*`` keys it reads
    (``LR_KEYS``), and a check of those keys that only matters for this schedule."""

    fn: Callable[..., float]
    keys: tuple[str, ...]
    check: Callable[[object, int], tuple[str, str] | None] | None = None


def _peak_within(lr, epochs: int) -> tuple[str, str] | None:
    if 0 <= lr.lr_peak_epoch <= epochs:
        return None
    return ("lr.lr_peak_epoch",
            f"must be between 0 and training.epochs ({epochs}), got {lr.lr_peak_epoch}")


# The lr section's schedule keys (config name -> LrKey): help text, config check and shrink rule.
LR_KEYS = {
    "lr_peak_epoch": LrKey("peak_epoch", float, "epoch at which the LR peaks", 2,
                           shrink=(False, None)),
    "step_ratio": LrKey("step_ratio", float, "LR multiplier at each step", 0.1,
                        check=lambda v, _: None if 0 < v <= 1 else f"must be in (0, 1], got {v}"),
    "step_length": LrKey("step_length", int, "epochs between steps", 30,
                         check=lambda v, _: None if v >= 1 else f"must be at least 1, got {v}",
                         shrink=(True, 1)),
    "warmup_epochs": LrKey("warmup_epochs", float, "linear warm-up epochs", 0,
                           check=lambda v, epochs: None if 0 <= v < epochs
                           else f"must be in [0, training.epochs), got {v}",
                           shrink=(False, None)),
    "pct_start": LrKey("pct_start", float, "fraction of training spent warming up", 0.3,
                       check=lambda v, _: None if 0 < v < 1 else f"must be in (0, 1), got {v}"),
}
# lr.lr_schedule_type -> Schedule: the one place to add a schedule
SCHEDULES = {
    "cyclic": Schedule(cyclic_lr, ("lr_peak_epoch",), check=_peak_within),
    "step": Schedule(step_lr, ("step_ratio", "warmup_epochs", "step_length")),
    "cosine": Schedule(cosine_lr, ("warmup_epochs",)),
    "onecycle": Schedule(onecycle_lr, ("pct_start",)),
}


def key_users(key: str) -> list[str]:
    """The schedules that read ``lr.<key>`` (for its help text)."""
    return [name for name, s in SCHEDULES.items() if key in s.keys]


def schedule_keywords(lr) -> dict:
    """The keyword arguments ``lr.lr_schedule_type``'s function takes, from the lr section."""
    return {LR_KEYS[k].keyword: getattr(lr, k) for k in SCHEDULES[lr.lr_schedule_type].keys}


def lr_at(epoch: float, *, schedule: str, lr: float, epochs: int, **keywords) -> float:
    """The learning rate at a (fractional) epoch for any schedule type; keywords the schedule
    does not take are ignored."""
    entry = SCHEDULES.get(schedule)
    if entry is None:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {tuple(SCHEDULES)}")
    taken = {LR_KEYS[k].keyword for k in entry.keys}
    return entry.fn(epoch, lr=lr, epochs=epochs,
                    **{k: v for k, v in keywords.items() if k in taken})


def epoch_lrs(epoch: int, iters: int, **schedule) -> np.ndarray:
    """The LR of each of the ``iters`` iterations of ``epoch`` (per-iteration interpolation).

    For the cyclic schedule this equals ffcv-imagenet's linear interpolation between the values
    at ``epoch`` and ``epoch + 1`` (its knots are whole epochs); cosine and one-cycle are
    followed exactly; step keeps its hard drops at epoch boundaries.
    """
    return np.array([lr_at(epoch + i / iters, **schedule) for i in range(iters)])


def resolution_at(epoch: int, *, min_res: int, max_res: int, start_ramp: int,
                  end_ramp: int) -> int:
    """ffcv-imagenet's progressive resizing: ``min_res`` until ``start_ramp``, ``max_res`` from
    ``end_ramp``, linear in between rounded to a multiple of 32 (kept within the bounds)."""
    if epoch <= start_ramp:
        return int(min_res)
    if epoch >= end_ramp:
        return int(max_res)
    interp = np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res])
    return int(min(max(int(np.round(interp / 32)) * 32, min_res), max_res))


def scaled_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    """Linear scaling rule (Goyal et al.): LR proportional to the global batch size."""
    return lr * global_batch / reference_batch


def parse_stages(text: str, default_batch: int) -> list[tuple[int, int, int]]:
    """``"epoch,size[,batch];..."`` (seed 000's form) as ``[(epoch, size, batch), ...]``.

    Raises ValueError naming the problem. The first stage starts at epoch 0; a missing batch is
    ``default_batch``. FixRes fine-tuning is a last stage at a higher size, e.g.
    ``"0,160,512;85,224,256"``.
    """
    stages = []
    for part in text.replace(" ", "").strip(";").split(";"):
        fields = part.split(",")
        if len(fields) not in (2, 3) or not all(f.isdigit() for f in fields):
            raise ValueError(f"stage {part!r} is not epoch,size[,batch] in whole numbers")
        epoch, size = int(fields[0]), int(fields[1])
        batch = int(fields[2]) if len(fields) == 3 else default_batch
        if size < 8 or batch < 1:
            raise ValueError(f"stage {part!r}: size must be >= 8 pixels and batch >= 1")
        if stages and epoch <= stages[-1][0]:
            raise ValueError(f"stage {part!r}: epochs must increase")
        stages.append((epoch, size, batch))
    if not stages or stages[0][0] != 0:
        raise ValueError("the first stage must start at epoch 0")
    return stages


def stage_at(stages: list[tuple[int, int, int]], epoch: int) -> tuple[int, int, int]:
    """The stage in force during ``epoch`` (the last one that started at or before it)."""
    return [s for s in stages if s[0] <= epoch][-1]


def stage_epoch_lrs(epoch: int, iters: int, *, batch: int, base_batch: int,
                    **schedule) -> np.ndarray:
    """``epoch_lrs`` for a stage whose batch differs from the one the LR is set for: the
    linear scaling rule applied per stage (iterations per epoch change with the batch)."""
    return epoch_lrs(epoch, iters, **schedule) * (batch / base_batch)
