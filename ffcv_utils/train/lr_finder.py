"""LR range test: raise the LR exponentially over a number of steps on the real model, loader and
recipe, record the (rank-averaged) loss, stop when it diverges, and suggest the LR where the
smoothed loss falls fastest. The sweep and the suggestion are plain functions of their inputs."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..base.atomic import save_figure
from ..base.distributed import DistEnv, all_reduce_sum

SMOOTHING = 0.9      # EMA factor of the loss (bias-corrected)
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this times its best so far


def sweep_lrs(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """``steps`` LRs from ``start_lr`` to ``end_lr``, evenly spaced in log."""
    return np.geomspace(start_lr, end_lr, steps)


def smooth(losses, beta: float = SMOOTHING) -> np.ndarray:
    out, avg = [], 0.0
    for i, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return np.asarray(out)


def diverged(smoothed: np.ndarray) -> bool:
    return (not math.isfinite(smoothed[-1])
            or (len(smoothed) > 1 and smoothed[-1] > DIVERGE_FACTOR * smoothed.min()))


def suggest(lrs, losses) -> float:
    """The LR at the steepest descent of the smoothed loss against log(LR), looked for only up to
    the loss minimum: past it the run is unstable, and a loss falling back after a blow-up (it does
    on small data) would otherwise suggest an LR far too high."""
    s = smooth(losses)
    n = int(np.argmin(s)) + 1
    if n < 3:
        raise ValueError("too few steps before the loss stopped falling to suggest an LR")
    grad = np.gradient(s[:n], np.log(np.asarray(lrs[:n])))
    skip = min(n // 10, n - 2)  # the first points mostly show the EMA warming up
    return float(lrs[skip + int(np.argmin(grad[skip:]))])


def sweep(step, batches, lrs, env: DistEnv) -> tuple[list[float], list[float]]:
    """Run ``step(batch, lr) -> loss tensor`` over ``lrs``, one item of ``batches`` per LR (the
    micro-batches of one optimizer step); every rank sees the same averaged loss, so all stop at
    the same step. Returns (lrs used, losses)."""
    losses = []
    for lr, batch in zip(lrs, batches):
        loss = step(batch, float(lr)).detach().float().reshape(1)
        loss = float(all_reduce_sum(loss, env)) / env.world_size
        losses.append(loss)
        if diverged(smooth(losses)):
            break
    return list(map(float, lrs[:len(losses)])), losses


def plot(curves, suggestions, out: str | Path) -> Path:
    """Loss (smoothed) against LR for each run, the suggestions marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for i, ((lrs, losses), lr) in enumerate(zip(curves, suggestions)):
        line, = ax.plot(lrs, smooth(losses), label=f"seed run {i}: suggests {lr:.3g}")
        ax.axvline(lr, color=line.get_color(), linestyle="--", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (optimizer, actual global batch)")
    ax.set_ylabel("smoothed training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)
