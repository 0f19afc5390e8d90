"""LR finder: pure suggestion logic, and a real sweep in-process on the digits betons."""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from helpers import args_for

from ffcv_utils.train import lr_finder
from ffcv_utils.base.cli import UserError
from ffcv_utils.train.schedules import scaled_lr
from ffcv_utils.train import find_lr

pytestmark = pytest.mark.timeout(240)


def test_suggest_picks_steepest_descent_and_divergence_stops():
    lrs = lr_finder.sweep_lrs(1e-4, 1.0, 50)
    # loss flat, falls fastest around lr 1e-2, then flat again
    losses = 2 - np.tanh((np.log10(lrs) + 2) * 3)
    lr = lr_finder.suggest(lrs, losses)
    assert 3e-3 < lr < 3e-2
    # a blow-up that falls back (as on the digits data): the fall after the peak is not a suggestion
    bump = losses + 8 * np.exp(-((np.log10(lrs) + 0.6) / 0.3) ** 2) * (lrs > 0.05)
    assert 3e-3 < lr_finder.suggest(lrs, bump) < 3e-2
    s = lr_finder.smooth([1.0] * 10 + [10.0] * 20)
    assert lr_finder.diverged(s)
    assert not lr_finder.diverged(lr_finder.smooth([1.0, 0.9, 0.8]))


@pytest.mark.slow
def test_finder_on_digits_gives_finite_lr_inside_the_sweep(digits_betons, tmp_path):
    out = tmp_path / "lr.png"
    # lr.lr is for a global batch of 256; the sweep runs at 64
    args = args_for(digits_betons, tmp_path, "--lr.batch_size_for_lr", "256")
    result = find_lr.main(["--runs", "2", "--steps", "40", "--start-lr", "1e-4",
                           "--end-lr", "20", "--out", str(out), *args])
    gc.collect()  # let numba's finalizer noise surface here, under this test's filter
    assert len(result["suggestions"]) == 2
    for lr in result["suggestions"]:
        assert math.isfinite(lr) and 1e-4 <= lr <= 20
    assert result["median"] == pytest.approx(np.median(result["suggestions"]))
    # the lr.lr to put in the config is 4x the LR found at batch 64: the trainer's linear
    # scaling brings it back to the found LR at this global batch
    assert result["global_batch"] == 64
    assert result["lr_lr"] == pytest.approx(4 * result["median"])
    assert scaled_lr(result["lr_lr"], 64, 256) == pytest.approx(result["median"])
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_finder_steps_like_the_trainer_with_accumulation(digits_betons, tmp_path, monkeypatch):
    """With training.accum_steps 2 at half the batch, each LR is one optimizer step over two
    micro-batches: the same global batch (64), so the same lr.lr, as without accumulation."""
    from ffcv_utils.train import optim as recipe

    seen, swept = [], []
    real_step = recipe.optimizer_step  # what Recipe.optimizer_step calls, once per step
    monkeypatch.setattr(recipe, "optimizer_step", lambda *a: seen.append(1) or real_step(*a))
    # where the loss falls fastest over 8 steps is not this test's subject (a short sweep may
    # have no clear descent): take the middle LR, and note how many LRs were stepped
    monkeypatch.setattr(lr_finder, "suggest",
                        lambda lrs, losses: swept.append(len(lrs)) or float(lrs[len(lrs) // 2]))
    args = args_for(digits_betons, tmp_path)
    result = find_lr.main(["--runs", "1", "--steps", "8", "--start-lr", "1e-4", "--end-lr", "1e-2",
                           "--out", str(tmp_path / "lr.png"), *args,
                           "--training.batch_size", "32", "--training.accum_steps", "2",
                           "--lr.batch_size_for_lr", "128"])
    gc.collect()
    assert result["global_batch"] == 64  # 32 x 2 micro-batches, not 32
    assert result["lr_lr"] == pytest.approx(2 * result["median"])
    assert swept and len(seen) == swept[0]  # one optimizer step per LR, not one per micro-batch


@pytest.mark.parametrize("bad, why", [(["--runs", "0"], "--runs"),
                                      (["--start-lr", "1", "--end-lr", "0.1"], "--start-lr")])
def test_finder_refuses_bad_options(bad, why):
    with pytest.raises(UserError, match=why):
        find_lr.finder_args(bad)
